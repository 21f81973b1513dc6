//! The `anomalyd` command line; the commands live in [`anomalyd::cli`].

fn main() -> anyhow::Result<()> {
    anomalyd::cli::run()
}
