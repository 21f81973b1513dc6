//! The Docker image and the compose stack, where a Docker engine runs (skipped
//! with a message elsewhere; `.ci/run` runs them where one does). The base images
//! the Dockerfile names are built locally first (deploy/images/build-base-images.sh)
//! because the machine reaches no registry; the Dockerfile stays the one users build.
//!
//! One test, in order: the image builds and is small; the container becomes healthy,
//! runs as non-root, keeps a stream across `docker restart` with its volume and stops
//! cleanly on SIGTERM; then the compose stack (anomalyd, Prometheus, Alertmanager,
//! node-exporter) scores node-exporter's series and Prometheus has the scores.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn docker(args: &[&str]) -> String {
    String::from_utf8(run(Command::new("docker").args(args)).stdout)
        .unwrap()
        .trim()
        .to_string()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn http(method: &str, url: &str, body: Option<&Value>) -> Option<(u16, Value)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut req = c.request(method.parse().unwrap(), url);
        if let Some(b) = body {
            req = req.json(b);
        }
        let r = req.send().await.ok()?;
        let status = r.status().as_u16();
        Some((status, r.json().await.unwrap_or(Value::Null)))
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn image_and_compose_stack() {
    if !Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("skipped: no Docker engine runs here");
        return;
    }
    run(&mut Command::new(root().join("deploy/images/build-base-images.sh")));
    // The legacy builder works offline with local base images; the build reaches
    // crates.io through the host's network.
    run(Command::new("docker")
        .args(["build", "--network", "host", "-t", "anomalyd:test", "."])
        .env("DOCKER_BUILDKIT", "0")
        .current_dir(root()));
    let size: u64 = docker(&["image", "inspect", "-f", "{{.Size}}", "anomalyd:test"])
        .parse()
        .unwrap();
    assert!(size <= 50 << 20, "image is {} MB", size >> 20);
    assert_eq!(
        docker(&["image", "inspect", "-f", "{{.Config.User}}", "anomalyd:test"]),
        "65532:65532"
    );

    let name = format!("anomalyd-test-{}", std::process::id());
    let volume = format!("{name}-data");
    let port = free_port();
    let _ = Command::new("docker").args(["rm", "-f", &name]).output();
    docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "-v",
        &format!("{volume}:/data"),
        "-p",
        &format!("127.0.0.1:{port}:8080"),
        "anomalyd:test",
    ]);
    let cleanup = Cleanup(vec![
        vec!["rm".into(), "-f".into(), name.clone()],
        vec!["volume".into(), "rm".into(), "-f".into(), volume.clone()],
    ]);
    wait_for("the container to be healthy", Duration::from_secs(90), || {
        docker(&["inspect", "-f", "{{.State.Health.Status}}", &name]) == "healthy"
    });
    // Runs as the non-root user.
    let top = docker(&["top", &name, "-o", "pid,uid,comm"]);
    let uids: Vec<&str> = top
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert!(!uids.is_empty() && uids.iter().all(|u| *u == "65532"), "{top}");
    let base = format!("http://127.0.0.1:{port}");
    let readings: Vec<Value> = (0..50)
        .map(|t| json!({"timestamp": 1_700_000_000 + t * 60, "value": (t as f64 / 5.0).sin()}))
        .collect();
    let (status, _) = http(
        "POST",
        &format!("{base}/v1/streams/box/readings"),
        Some(&json!({"readings": readings})),
    )
    .unwrap();
    assert_eq!(status, 200);
    // SIGTERM: a final checkpoint and a clean exit well within docker's 10 s.
    docker(&["stop", "-t", "10", &name]);
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.ExitCode}}", &name]),
        "0",
        "exited on SIGTERM, not killed"
    );
    docker(&["start", &name]);
    wait_for("the restarted service", Duration::from_secs(60), || {
        http("GET", &format!("{base}/readyz"), None).is_some_and(|(s, _)| s == 200)
    });
    let (_, info) = http("GET", &format!("{base}/v1/streams/box"), None).unwrap();
    assert_eq!(info["readings_seen"], 50, "the stream survived the restart: {info}");
    drop(cleanup);

    compose_stack();
}

struct Cleanup(Vec<Vec<String>>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for args in &self.0 {
            let _ = Command::new("docker").args(args).output();
        }
    }
}

/// The compose stack with locally built images (no Grafana: Debian has no package
/// for it): Prometheus scrapes node-exporter, remote-writes into anomalyd and
/// scrapes the scores back.
fn compose_stack() {
    docker(&["tag", "anomalyd:test", "anomalyd:latest"]);
    let project = format!("anomalyd-e2e-{}", std::process::id());
    let compose = |args: &[&str]| {
        run(Command::new("docker-compose")
            .args(["-p", &project, "-f", "deploy/compose.yaml"])
            .args(args)
            .current_dir(root()))
    };
    let _down = ComposeDown(project.clone());
    let start = Instant::now();
    compose(&[
        "up",
        "-d",
        "--no-build",
        "anomalyd",
        "node-exporter",
        "prometheus",
        "alertmanager",
    ]);
    // The stream's warm-up state (its score follows once it judges, 64 readings
    // at the 5 s scrape).
    let query = "http://127.0.0.1:9090/api/v1/query?query=anomalyd_stream_readings_needed%7Bfor%3D%22node_load1%22%7D";
    wait_for("node_load1's stream in Prometheus", Duration::from_secs(120), || {
        http("GET", query, None).is_some_and(|(_, v)| {
            v["data"]["result"]
                .as_array()
                .is_some_and(|r| r.iter().any(|s| s["metric"]["job"] == "node"))
        })
    });
    eprintln!(
        "compose up to the stream in Prometheus: {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

struct ComposeDown(String);

impl Drop for ComposeDown {
    fn drop(&mut self) {
        let _ = Command::new("docker-compose")
            .args(["-p", &self.0, "-f", "deploy/compose.yaml", "down", "-v"])
            .current_dir(root())
            .output();
    }
}
