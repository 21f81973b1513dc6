//! `anomalyd serve` (the service until SIGINT/SIGTERM) and `anomalyd healthcheck`
//! (its readiness probe for containers, which then need no shell or curl).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::config::ServeSettings;
use crate::metrics::Metrics;
use crate::registry::Registry;

/// Runs the service with `flags` over the config file.
pub fn run(flags: ServeSettings) -> Result<()> {
    let cfg = crate::config::load(flags).map_err(anyhow::Error::msg)?;
    init_logging(&cfg.log_format);
    tokio::runtime::Runtime::new()?.block_on(async move {
        let metrics = Arc::new(Metrics::new());
        let registry = Registry::open(cfg.registry.clone(), metrics).map_err(anyhow::Error::msg)?;
        let listener = tokio::net::TcpListener::bind(&cfg.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.listen))?;
        tracing::info!(
            addr = %listener.local_addr()?,
            data_dir = ?cfg.registry.data_dir,
            streams = registry.len(),
            kernels = %super::kernels_shown(),
            "anomalyd listening"
        );
        crate::server::run(
            listener,
            registry,
            cfg.server,
            cfg.snapshot_interval,
            std::future::pending(),
        )
        .await?;
        Ok(())
    })
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Colours only on a terminal: a log file or a collector gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Tunes glibc's malloc. Must run before threads start.
/// - Arenas capped at one per core (glibc's default is eight per core): with
///   many request threads, per-thread arenas let freed memory pile up in each,
///   so resident memory grew by a fifth under a 10× overload; capped, it stays
///   within a few percent (BENCHMARKS.md).
/// - Fixed thresholds: blocks under 4 MiB come from the heap
///   (`M_MMAP_THRESHOLD`), and an arena gives memory back once 8 MiB are free
///   at its top (`M_TRIM_THRESHOLD`). glibc's own start at 128 KiB and rise
///   only after a large block is freed, so a training step's activations (a
///   few MiB for a model of 32–64 hidden units) were mapped, or trimmed, and
///   faulted in again on every step until something large had been freed:
///   the same training ran at 18k or 26k windows a second (`bench model`, S)
///   by what the process had done before. At most 8 MiB an arena stays
///   resident after a burst.
pub fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2);
        // SAFETY: mallopt only changes allocator tuning; called once, before any
        // other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, cores as libc::c_int);
            libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
        }
    }
}

/// The arguments of `anomalyd healthcheck`.
#[derive(clap::Args, Debug)]
pub struct HealthcheckArgs {
    /// Address of the service.
    #[arg(long, env = "ANOMALYD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3.0)]
    pub timeout: f64,
}

/// Runs `anomalyd healthcheck`: fails unless `GET /readyz` answers 200.
pub fn healthcheck(a: &HealthcheckArgs) -> Result<()> {
    let status = readyz(&a.listen, Duration::from_secs_f64(a.timeout.clamp(0.1, 60.0)))?;
    if status != 200 {
        bail!("GET /readyz answered {status}");
    }
    Ok(())
}

/// `GET /readyz` over a plain TCP connection; returns the status code.
fn readyz(listen: &str, timeout: Duration) -> Result<u16> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    // A wildcard listen address is reached on loopback.
    let target = listen.replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]");
    let addr = target
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow::anyhow!("no address for {target}"))?;
    let mut conn = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    write!(conn, "GET /readyz HTTP/1.0\r\nHost: {target}\r\n\r\n")?;
    let mut head = [0u8; 12];
    conn.read_exact(&mut head)?;
    let text = std::str::from_utf8(&head)?;
    Ok(text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0))
}
