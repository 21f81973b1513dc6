//! Compiles proto/anomalyd/v1/*.proto and proto/prometheus/remote.proto with protox (pure Rust), so building needs no
//! system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["anomalyd/v1/anomalyd.proto", "prometheus/remote.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
