//! Helpers shared by the integration tests: fixture loading and tolerance checks.
#![allow(dead_code)]

use std::path::PathBuf;

use ndarray::{ArrayD, IxDyn};
use serde_json::Value;

/// `tests/fixtures/<rel>` parsed as JSON.
pub fn fixture(rel: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture is JSON")
}

fn flatten(v: &Value, out: &mut Vec<f64>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        Value::Number(n) => out.push(n.as_f64().expect("number")),
        other => panic!("not a number: {other}"),
    }
}

/// A `{"shape": [...], "data": nested}` tensor, or a flat list, as an array.
pub fn tensor(v: &Value) -> ArrayD<f64> {
    let mut data = Vec::new();
    if let Some(shape) = v.get("shape") {
        let shape: Vec<usize> = shape
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        flatten(&v["data"], &mut data);
        ArrayD::from_shape_vec(IxDyn(&shape), data).expect("shape matches data")
    } else {
        flatten(v, &mut data);
        let n = data.len();
        ArrayD::from_shape_vec(IxDyn(&[n]), data).unwrap()
    }
}

/// Elementwise `|a − e| ≤ atol + rtol·|e|`; panics naming the worst element.
pub fn assert_close<'a, 'b>(
    actual: impl IntoIterator<Item = &'a f64>,
    expected: impl IntoIterator<Item = &'b f64>,
    rtol: f64,
    atol: f64,
    what: &str,
) {
    let a: Vec<f64> = actual.into_iter().copied().collect();
    let e: Vec<f64> = expected.into_iter().copied().collect();
    assert_eq!(a.len(), e.len(), "{what}: {} values, expected {}", a.len(), e.len());
    let mut worst = (0.0, 0usize);
    for (i, (x, y)) in a.iter().zip(&e).enumerate() {
        let excess = (x - y).abs() - (atol + rtol * y.abs());
        // NaN counts as the worst possible mismatch.
        let excess = if excess.is_nan() { f64::INFINITY } else { excess };
        if excess > worst.0 {
            worst = (excess, i);
        }
    }
    let i = worst.1;
    assert!(
        worst.0 <= 0.0,
        "{what}: element {i} is {} but expected {} (|diff| {:.3e}, rtol {rtol}, atol {atol})",
        a[i],
        e[i],
        (a[i] - e[i]).abs()
    );
}

/// Same as [`assert_close`] for f32 values compared to f64 references.
pub fn assert_close_f32<'a, 'b>(
    actual: impl IntoIterator<Item = &'a f32>,
    expected: impl IntoIterator<Item = &'b f64>,
    rtol: f64,
    atol: f64,
    what: &str,
) {
    let a: Vec<f64> = actual.into_iter().map(|&v| v as f64).collect();
    assert_close(a.iter(), expected, rtol, atol, what);
}

/// A service on 127.0.0.1:0 in this process, stopped (gracefully) by `stop`.
pub struct TestServer {
    /// Its address.
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    /// Starts `registry` behind `config`.
    pub async fn start(
        registry: std::sync::Arc<anomalyd::registry::Registry>,
        config: anomalyd::server::ServerConfig,
    ) -> TestServer {
        Self::start_on(0, registry, config).await
    }

    /// Starts `registry` behind `config` on 127.0.0.1:`port` (0: any).
    pub async fn start_on(
        port: u16,
        registry: std::sync::Arc<anomalyd::registry::Registry>,
        config: anomalyd::server::ServerConfig,
    ) -> TestServer {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(anomalyd::server::run(
            listener,
            registry,
            config,
            std::time::Duration::from_secs(3600),
            async move {
                let _ = stopped.await;
            },
        ));
        TestServer {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// Stops it and waits for the final snapshot.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The binary, or None where it is absent and CI is not set (in CI its absence
/// fails the test: `.ci/run` installs every peer).
pub fn peer(bin: &str) -> Option<&str> {
    let found = std::process::Command::new(bin).arg("--version").output().is_ok();
    assert!(
        found || std::env::var_os("CI").is_none(),
        "{bin} is required in CI (.ci/run installs it)"
    );
    if !found {
        eprintln!("skipped: {bin} not installed");
    }
    found.then_some(bin)
}

/// A fresh directory under the system's temporary one, named for the test.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("anomalyd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A child process, killed (and reaped) when dropped.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `f` every 200 ms until it gives a value; fails after `timeout`.
pub async fn eventually<T>(what: &str, timeout: std::time::Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// GET `url` as JSON (`Null` when the body is not JSON), with its status.
pub async fn get_json(c: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = c.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// GET `url`'s body as text.
pub async fn get_text(c: &reqwest::Client, url: &str) -> String {
    c.get(url).send().await.unwrap().text().await.unwrap()
}

/// Prometheus (`bin`) on 127.0.0.1:`port` with `config` as its prometheus.yml
/// and its TSDB, both in `dir`.
pub fn prometheus(bin: &str, dir: &std::path::Path, port: u16, config: &str) -> Killed {
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    Killed(
        std::process::Command::new(bin)
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// nginx (Debian's, one process: a kill leaves no workers behind) on a free port
/// with `http(port)` as the inside of its `http` block; its files in a fresh
/// directory named for `name`. None where nginx is absent and CI is not set.
pub fn nginx(name: &str, http: impl FnOnce(u16) -> String) -> Option<(Killed, u16)> {
    let bin = peer("nginx")?;
    let dir = temp_dir(name);
    let port = free_port();
    let d = dir.display();
    let conf = format!(
        "daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n{}\n}}\n",
        http(port)
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = std::process::Command::new(bin)
        .args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf")])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "nginx did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Some((Killed(child), port))
}

/// A real Alertmanager (Debian's `prometheus-alertmanager`) on a free port, its
/// config and storage under `dir` named `name`; None where it is absent outside CI.
#[allow(dead_code)]
pub fn alertmanager(dir: &std::path::Path, name: &str) -> Option<(Killed, u16)> {
    peer("prometheus-alertmanager")?;
    let config = dir.join(format!("{name}.yml"));
    std::fs::write(&config, "route:\n  receiver: none\nreceivers:\n  - name: none\n").unwrap();
    let port = free_port();
    let child = std::process::Command::new("prometheus-alertmanager")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", dir.join(name).display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    Some((Killed(child), port))
}

/// An exporter of `n` gauges `load{instance="10.<net>.<i/50>.<i%50>:9100",job}`
/// (jobs in turn from `jobs`), each its own series; its port.
#[allow(dead_code)]
pub async fn load_exporter(n: usize, net: u8, jobs: &'static [&'static str]) -> u16 {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route(
        "/metrics",
        get(move || async move {
            let mut text = String::from("# TYPE load gauge\n");
            for i in 0..n {
                let job = jobs[i % jobs.len()];
                let instance = format!("10.{net}.{}.{}:9100", i / 50, i % 50);
                text.push_str(&format!("load{{instance=\"{instance}\",job=\"{job}\"}} {}\n", i % 7));
            }
            text
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}
