//! The structural invariants of ARCHITECTURE.md, read off the source: which module
//! may use what, how large a file or a function may grow, and that the code map
//! names every module and test file. Comments and each file's `#[cfg(test)]` part
//! are not read (tests may do what the code may not).

use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// `path` relative to the crate root, with `/`.
fn rel(path: &Path) -> String {
    path.strip_prefix(root()).unwrap().to_string_lossy().replace('\\', "/")
}

/// The file's code lines (comments dropped), before its `#[cfg(test)]` part, with
/// their line numbers.
fn code_lines(path: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .enumerate()
        .take_while(|(_, l)| l.trim() != "#[cfg(test)]")
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .map(|(i, l)| (i + 1, l.to_string()))
        .collect()
}

/// Every code line under `dir` (skipping files under the `skip` prefixes) that
/// `hit` picks, as `path:line: text`.
fn scan(dir: &str, skip: &[&str], hit: impl Fn(&str) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    for path in rust_files(&root().join(dir)) {
        let name = rel(&path);
        if skip.iter().any(|a| name.starts_with(a)) {
            continue;
        }
        for (n, line) in code_lines(&path) {
            if hit(&line) {
                found.push(format!("{name}:{n}: {}", line.trim()));
            }
        }
    }
    found
}

/// Every place in `src/` (outside the `allowed` prefixes) whose code contains one
/// of `needles`.
fn uses_outside(needles: &[&str], allowed: &[&str]) -> Vec<String> {
    scan("src", allowed, |line| needles.iter().any(|w| line.contains(w)))
}

#[test]
fn nn_is_a_leaf() {
    let io = [
        "serde",
        "tokio",
        "tracing",
        "std::fs",
        "std::io",
        "std::net",
        "std::thread",
        "std::time",
    ];
    let found = scan("src/nn", &[], |line| {
        (line.contains("crate::") && !line.contains("crate::nn")) || io.iter().any(|w| line.contains(w))
    });
    assert!(
        found.is_empty(),
        "nn imports the crate or does I/O:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_detector_never_reads_the_clock_nor_does_io() {
    let needles = [
        "Instant",
        "SystemTime",
        "std::fs",
        "std::net",
        "tokio",
        "tracing",
        "std::thread",
    ];
    let found = scan("src/detector", &[], |line| needles.iter().any(|w| line.contains(w)));
    assert!(
        found.is_empty(),
        "the detector reads the clock or does I/O:\n{}",
        found.join("\n")
    );
}

#[test]
fn only_server_knows_http() {
    let found = uses_outside(&["axum"], &["src/server/"]);
    assert!(found.is_empty(), "HTTP served outside server:\n{}", found.join("\n"));
    // The HTTP clients: Alertmanager's and Prometheus' (server), and the load
    // generator and the console's measurement (bench).
    let clients = [
        "src/server/alertmanager.rs",
        "src/server/backfill.rs",
        "src/server/forward.rs",
        "src/bench/loadgen.rs",
        "src/bench/console.rs",
        "src/cli/shard_move.rs",
    ];
    let found = uses_outside(&["reqwest"], &clients);
    assert!(found.is_empty(), "HTTP clients elsewhere:\n{}", found.join("\n"));
}

#[test]
fn threads_are_spawned_only_by_the_service_and_the_runners() {
    let spawns = [
        "thread::spawn",
        "thread::Builder",
        "thread::scope",
        "tokio::spawn",
        "spawn_blocking",
    ];
    // The registry's training pool, the server's request tasks, the offline
    // runners' parallel files, the benchmarks' clients.
    let allowed = ["src/registry/", "src/server/", "src/eval/", "src/bench/", "src/cli/"];
    let found = uses_outside(&spawns, &allowed);
    assert!(
        found.is_empty(),
        "threads spawned outside their owners:\n{}",
        found.join("\n")
    );
}

#[test]
fn storage_is_the_only_module_that_serialises_weights() {
    let found = uses_outside(&["safetensors::", "use safetensors"], &["src/storage/"]);
    assert!(
        found.is_empty(),
        "weights serialised outside storage:\n{}",
        found.join("\n")
    );
}

/// Functions longer than `limit` lines in `path`'s code (its tests included).
fn long_functions(path: &Path, limit: usize) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let is_fn = ["", "pub ", "pub(super) ", "pub(crate) "]
            .iter()
            .any(|vis| t.starts_with(&format!("{vis}fn ")) || t.starts_with(&format!("{vis}async fn ")));
        if !is_fn {
            continue;
        }
        // From the line that opens its body to the line that closes it.
        let (mut depth, mut opened, mut end) = (0i64, false, None);
        for (j, l) in lines.iter().enumerate().skip(i) {
            if !opened && l.trim_end().ends_with(';') && !l.contains('{') {
                break;
            }
            for c in l.chars() {
                match c {
                    '{' => (depth, opened) = (depth + 1, true),
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if opened && depth == 0 {
                end = Some(j);
                break;
            }
        }
        if let Some(end) = end
            && end - i + 1 > limit
        {
            found.push(format!("{}:{}: {} lines", rel(path), i + 1, end - i + 1));
        }
    }
    found
}

#[test]
fn files_and_functions_fit_a_reader() {
    let mut found = Vec::new();
    for path in rust_files(&root().join("src")) {
        let n = std::fs::read_to_string(&path).unwrap().lines().count();
        if n >= 800 {
            found.push(format!("{}: {n} lines", rel(&path)));
        }
        // The numeric kernels may keep a longer loop whole.
        if !rel(&path).starts_with("src/nn/") {
            found.extend(long_functions(&path, 85));
        }
    }
    assert!(found.is_empty(), "split these along their steps:\n{}", found.join("\n"));
}

#[test]
fn the_code_map_names_every_module_and_test_file() {
    let map = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let mut missing = Vec::new();
    let files = rust_files(&root().join("src")).into_iter().chain(
        std::fs::read_dir(root().join("tests"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "rs")),
    );
    for path in files {
        let name = rel(&path);
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        // A module is named by its path, or by its file name under its folder's entry.
        if !map.contains(&format!("`{name}`")) && !map.contains(&format!("`{file}`")) {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md's code map misses:\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_invariant_names_a_test_that_exists() {
    let doc = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let invariants = &doc[doc.find("## Invariants").expect("an invariants section")..];
    let code: String = rust_files(&root().join("src"))
        .into_iter()
        .chain(rust_files(&root().join("tests")))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let mut problems = Vec::new();
    for bullet in invariants.split("\n- **").skip(1) {
        let text = bullet.split_whitespace().collect::<Vec<_>>().join(" ");
        let title = text.split("**").next().unwrap_or("").to_string();
        if !text.contains("Kept by") {
            problems.push(format!("names no test: {title}"));
        }
        // Every `module::name` it cites is a function or module of the code.
        for cited in text.split('`').skip(1).step_by(2) {
            let is_path = cited.contains("::")
                && cited
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == ':');
            let last = cited.rsplit("::").next().unwrap_or("");
            let found = [format!("fn {last}("), format!("fn {last}<"), format!("mod {last}")]
                .iter()
                .any(|needle| code.contains(needle.as_str()));
            if is_path && !found {
                problems.push(format!("{title}: `{cited}` is no test"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "ARCHITECTURE.md's invariants:\n{}",
        problems.join("\n")
    );
}
