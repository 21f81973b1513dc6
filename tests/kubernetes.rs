//! `deploy/kubernetes/` checked offline: the manifests against the Kubernetes
//! API schema (`kubernetes-validate` from PyPI, which `.ci/run` installs; no
//! cluster runs here), the Prometheus remote_write blocks are what `anomalyd
//! shards config prometheus` writes and pass `promtool`, and every setting the
//! StatefulSet gives is one `anomalyd serve` knows.

use std::path::PathBuf;
use std::process::Command;

mod common;
use common::{peer, temp_dir};

use anomalyd::shard::{self, DEFAULT_LABELS, ShardFunction};

fn deploy(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kubernetes")
        .join(file)
}

#[test]
fn the_manifests_pass_the_kubernetes_schema() {
    let Some(validate) = peer("kubernetes-validate") else {
        return;
    };
    let out = Command::new(validate)
        .args(["--strict", "-k", "1.30.0"])
        .arg(deploy("anomalyd.yaml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    for kind in [
        "service/anomalyd",
        "statefulset/anomalyd",
        "poddisruptionbudget/anomalyd",
    ] {
        assert!(text.contains(&format!("passed for resource {kind}")), "{kind}: {text}");
    }
}

#[test]
fn the_remote_write_blocks_are_the_owner_functions_and_pass_promtool() {
    let text = std::fs::read_to_string(deploy("prometheus-remote-write.yaml")).unwrap();
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let f = ShardFunction::new(16, DEFAULT_LABELS.map(String::from).to_vec()).unwrap();
    let urls: Vec<String> = (0..3).map(|i| format!("http://anomalyd-{i}.anomalyd:8080")).collect();
    assert_eq!(
        body,
        shard::prometheus_remote_write(&f, &urls),
        "regenerate it with the command in its header"
    );
    let Some(promtool) = peer("promtool") else { return };
    let dir = temp_dir("k8s-promtool");
    std::fs::write(dir.join("prometheus.yml"), format!("global: {{}}\n{body}")).unwrap();
    let out = Command::new(promtool)
        .args(["check", "config"])
        .arg(dir.join("prometheus.yml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn every_setting_the_statefulset_gives_is_one_anomalyd_knows() {
    let manifest = std::fs::read_to_string(deploy("anomalyd.yaml")).unwrap();
    let help = Command::new(env!("CARGO_BIN_EXE_anomalyd"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let names: Vec<&str> = manifest
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("ANOMALYD_"))
        .collect();
    assert!(names.len() >= 6, "{names:?}");
    for name in names {
        assert!(
            help.contains(&format!("env: {name}=")),
            "{name} is not a setting of anomalyd serve"
        );
    }
}

#[test]
fn the_sharded_compose_stack_uses_the_generated_routing_and_parses() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let f = ShardFunction::new(16, DEFAULT_LABELS.map(String::from).to_vec()).unwrap();
    let nodes: Vec<String> = (0..3).map(|i| format!("anomalyd-{i}:8080")).collect();
    let conf = std::fs::read_to_string(root.join("sharded/nginx.conf")).unwrap();
    let part: String = shard::nginx_conf(&f, &nodes, "8080")
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect();
    assert!(
        conf.contains(&part),
        "regenerate deploy/sharded/nginx.conf's marked part"
    );
    let prom = std::fs::read_to_string(root.join("sharded/prometheus.yml")).unwrap();
    let urls: Vec<String> = nodes.iter().map(|n| format!("http://{n}")).collect();
    for line in shard::prometheus_remote_write(&f, &urls)
        .lines()
        .filter(|l| l.contains("hashmod") || l.contains("keep}"))
    {
        assert!(prom.contains(line), "{line} in deploy/sharded/prometheus.yml");
    }
    if let Some(promtool) = peer("promtool") {
        let out = Command::new(promtool)
            .args(["check", "config"])
            .arg(root.join("sharded/prometheus.yml"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    }
    // docker-compose comes with the Docker engine where there is one (tests/docker.rs).
    if Command::new("docker-compose").arg("version").output().is_ok() {
        let out = Command::new("docker-compose")
            .args(["-f", "deploy/compose-sharded.yaml", "config", "-q"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}
