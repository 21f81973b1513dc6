//! The web console in a real headless browser (Debian's chromium, driven through
//! chromium-driver's WebDriver API; `.ci/run` installs both) against a running
//! anomalyd: the streams page lists the streams, a stream page draws its chart
//! with the incident shaded, an incident appears live once a fault is posted, and
//! with a token set the console asks for it first; behind nginx under a path
//! prefix it works the same, WebSocket included. Screenshots go to
//! `target/tmp/console/`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

mod common;
use common::{Killed, TestServer, free_port, peer};

use anomalyd::metrics::Metrics;
use anomalyd::registry::{Registry, RegistryConfig};
use anomalyd::server::ServerConfig;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const TOKEN: &str = "console-test-token-0123456789";

/// chromedriver and chromium, or None where they are absent and CI is not set.
fn browser() -> Option<(&'static str, &'static str)> {
    Some((peer("chromedriver")?, peer("chromium")?))
}

/// A WebDriver session on a headless browser.
struct Browser {
    http: reqwest::Client,
    base: String,
    _driver: Killed,
}

impl Browser {
    async fn start(driver: &str, chromium: &str) -> Browser {
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let http = reqwest::Client::new();
        let root = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        while http.get(format!("{root}/status")).send().await.is_err() {
            assert!(start.elapsed() < Duration::from_secs(20), "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let binary = which(chromium);
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": binary,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"]
        }}}});
        let session: Value = http
            .post(format!("{root}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = session["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {session}"))
            .to_string();
        Browser {
            http,
            base: format!("{root}/session/{id}"),
            _driver: Killed(child),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        v["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    /// The text of every element `css` selects.
    async fn texts(&self, css: &str) -> Vec<String> {
        // One script, so the texts are of one rendering (an element read one by one
        // may be replaced by a refresh in between).
        let js = format!("return [...document.querySelectorAll({css:?})].map(e => e.innerText)");
        let found = self.script(&js).await;
        found
            .as_array()
            .map(|a| a.iter().map(|t| t.as_str().unwrap_or_default().to_string()).collect())
            .unwrap_or_default()
    }

    /// Waits until `css` selects something whose text `ok` accepts; returns the texts.
    async fn wait_for(&self, css: &str, ok: impl Fn(&[String]) -> bool) -> Vec<String> {
        let start = Instant::now();
        loop {
            let t = self.texts(css).await;
            if !t.is_empty() && ok(&t) {
                return t;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out waiting for {css}; saw {t:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn script(&self, js: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": js, "args": []})),
        )
        .await
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        let id = e[ELEMENT].as_str().expect("element").to_string();
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    async fn screenshot(&self, name: &str) {
        let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), bytes).unwrap();
    }

    async fn quit(self) {
        let _ = self.http.delete(&self.base).send().await;
    }
}

fn which(bin: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {bin}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `n` readings of a slow cycle from `from`, 15 s apart, `shift` added to the
/// readings in `fault`.
fn readings(from: usize, n: usize, fault: std::ops::Range<usize>, shift: f64) -> Value {
    let rs: Vec<Value> = (from..from + n)
        .map(|i| {
            let v = 50.0 + 10.0 * (i as f64 / 10.0).sin() + ((i * 7919) % 13) as f64 / 13.0;
            let v = if fault.contains(&i) { v + shift } else { v };
            json!({"timestamp": 1_700_000_000 + 15 * i as i64, "values": [v]})
        })
        .collect();
    json!({ "readings": rs })
}

async fn post(http: &reqwest::Client, url: &str, token: Option<&str>, body: &Value) {
    let mut req = http.post(url).json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
}

async fn service(token: Option<&str>) -> TestServer {
    let registry = Registry::open(RegistryConfig::default(), Arc::new(Metrics::new())).unwrap();
    let config = ServerConfig {
        auth_token: token.map(String::from),
        ..Default::default()
    };
    TestServer::start(registry, config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_lists_streams_draws_incidents_and_shows_new_ones_live() {
    let Some((driver, chromium)) = browser() else { return };
    let server = service(None).await;
    let api = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    for (stream, fault) in [("web-1", 560..575), ("web-2", 0..0), ("db-1", 0..0)] {
        for k in (0..600).step_by(200) {
            let url = format!("{api}/v1/streams/{stream}/readings");
            post(&http, &url, None, &readings(k, 200, fault.clone(), 40.0)).await;
        }
    }
    let b = Browser::start(driver, chromium).await;

    b.go(&format!("{api}/ui")).await;
    let listed = b.wait_for("#streams td:first-child", |t| t.len() == 3).await;
    assert_eq!(listed, ["db-1", "web-1", "web-2"]);
    assert_eq!(b.texts("#total").await, ["3 streams"]);
    b.type_into("#search", "web-*").await;
    b.wait_for("#streams td:first-child", |t| t == ["web-1", "web-2"]).await;
    b.screenshot("streams").await;

    b.go(&format!("{api}/ui/#/stream/web-1")).await;
    b.wait_for("#chart svg .scoreline", |_| true).await;
    let shaded = b
        .script("return [...document.querySelectorAll('#chart rect.incident, #chart rect.anomaly')].length")
        .await;
    assert!(
        shaded.as_u64().unwrap() >= 2,
        "the incident and its anomalous readings are shaded"
    );
    let rows = b.wait_for("#stream-incidents tr", |_| true).await;
    assert!(
        rows[0].contains("opened") && rows[0].contains("feature 0 100%"),
        "{rows:?}"
    );
    b.screenshot("stream").await;

    b.go(&format!("{api}/ui/#/incidents")).await;
    b.wait_for("#live", |t| t[0].contains("live")).await;
    let before = b.texts("#incidents tr").await;
    assert!(before.iter().all(|r| !r.contains("db-1")), "{before:?}");
    let url = format!("{api}/v1/streams/db-1/readings");
    post(&http, &url, None, &readings(600, 20, 600..620, 60.0)).await;
    let after = b
        .wait_for("#incidents tr", |t| t.iter().any(|r| r.contains("db-1")))
        .await;
    assert!(
        after[0].contains("db-1") && after[0].contains("opened"),
        "newest first: {after:?}"
    );
    b.screenshot("incidents").await;
    b.quit().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_set_the_console_asks_for_it_and_keeps_it_out_of_urls() {
    let Some((driver, chromium)) = browser() else { return };
    let server = service(Some(TOKEN)).await;
    let api = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    let url = format!("{api}/v1/streams/guarded/readings");
    post(&http, &url, Some(TOKEN), &readings(0, 100, 0..0, 0.0)).await;
    let b = Browser::start(driver, chromium).await;

    b.go(&format!("{api}/ui/")).await;
    b.wait_for("#login h2", |t| t[0] == "Sign in").await;
    assert!(b.texts("#streams td").await.iter().all(|t| t != "guarded"));
    b.type_into("#token", "not-the-token").await;
    b.script("document.querySelector('#login-form').requestSubmit()").await;
    b.wait_for("#login-error", |t| t[0].contains("not accepted")).await;
    b.type_into("#token", TOKEN).await;
    b.script("document.querySelector('#login-form').requestSubmit()").await;
    b.wait_for("#streams td:first-child", |t| t == ["guarded"]).await;
    b.screenshot("signed-in").await;

    // The live view authenticates its WebSocket without the token in the URL.
    b.go(&format!("{api}/ui/#/incidents")).await;
    b.wait_for("#live", |t| t[0].contains("live")).await;
    let urls = b
        .script("return performance.getEntries().map(e => e.name).join(' ')")
        .await;
    assert!(!urls.as_str().unwrap().contains(TOKEN), "{urls}");
    b.quit().await;
    server.stop().await;
}

/// nginx serving anomalyd under `/anomalyd/` (the prefix stripped, WebSockets
/// upgraded), as a reverse proxy in front of the console would.
fn nginx_in_front(upstream: std::net::SocketAddr) -> Option<(Killed, u16)> {
    common::nginx("console-nginx", |port| {
        format!(
            r#"  server {{
    listen 127.0.0.1:{port};
    location /anomalyd/ {{
      proxy_pass http://{upstream}/;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
    }}
  }}"#
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_reverse_proxy_under_a_path_prefix_the_console_works_the_same() {
    let Some((driver, chromium)) = browser() else { return };
    let server = service(Some(TOKEN)).await;
    let Some((_nginx, port)) = nginx_in_front(server.addr) else {
        return;
    };
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/streams/proxied/readings", server.addr);
    post(&http, &url, Some(TOKEN), &readings(0, 100, 0..0, 0.0)).await;
    let b = Browser::start(driver, chromium).await;

    b.go(&format!("http://127.0.0.1:{port}/anomalyd/ui")).await;
    b.wait_for("#login h2", |t| t[0] == "Sign in").await;
    b.type_into("#token", TOKEN).await;
    b.script("document.querySelector('#login-form').requestSubmit()").await;
    b.wait_for("#streams td:first-child", |t| t == ["proxied"]).await;
    let here = b.script("return location.pathname").await;
    assert_eq!(here, "/anomalyd/ui/");
    b.go(&format!("http://127.0.0.1:{port}/anomalyd/ui/#/stream/proxied"))
        .await;
    b.wait_for("#chart svg .scoreline", |_| true).await;
    b.go(&format!("http://127.0.0.1:{port}/anomalyd/ui/#/incidents")).await;
    b.wait_for("#live", |t| t[0].contains("live")).await;
    b.quit().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_streams_page_and_search_in_the_console() {
    let Some((driver, chromium)) = browser() else { return };
    const N: usize = 100_000;
    let registry = Registry::open(
        RegistryConfig {
            max_streams: N,
            ..Default::default()
        },
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let fresh = anomalyd::detector::Detector::new(Default::default()).unwrap();
    for i in 0..N {
        registry.adopt(&format!("host-{i:06}"), fresh.clone()).unwrap();
    }
    let server = TestServer::start(registry, ServerConfig::default()).await;
    let b = Browser::start(driver, chromium).await;
    b.go(&format!("http://{}/ui/", server.addr)).await;
    let rows = b.wait_for("#streams td:first-child", |t| t.len() == 50).await;
    assert_eq!((rows[0].as_str(), rows[49].as_str()), ("host-000000", "host-000049"));
    assert_eq!(b.texts("#total").await, ["100000 streams"]);
    b.script("document.querySelector('#next').click()").await;
    b.wait_for("#streams td:first-child", |t| t[0] == "host-000050").await;
    b.type_into("#search", "host-09999").await;
    let found = b.wait_for("#streams td:first-child", |t| t.len() == 10).await;
    assert_eq!(found[9], "host-099999");
    assert_eq!(b.texts("#total").await, ["10 streams"]);
    b.quit().await;
    server.stop().await;
}
