//! `anomalyd shards move`: moves shards from one node to another with their
//! models, through the nodes' own endpoints. Per shard: the source releases it
//! (from then on its streams answer 421 `shard_moving`, and Prometheus'
//! samples of it 503, which Prometheus sends again), exports it, the target
//! imports it (durable there before it answers) and owns it, and the source
//! forgets it and passes what still reaches it on to the target. If the import
//! fails, the source takes the shard back.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

/// The arguments of `anomalyd shards move`.
#[derive(Args, Debug)]
pub struct MoveArgs {
    /// Base URL of the node that has the shards (`http://anomalyd-0.anomalyd:8080`).
    #[arg(long)]
    pub from: String,
    /// Base URL of the node that takes them.
    #[arg(long)]
    pub to: String,
    /// The shards, e.g. `3,7` or `12-15`.
    #[arg(long)]
    pub shards: String,
    /// Bearer token of the nodes' API (or ANOMALYD_AUTH_TOKEN).
    #[arg(long, env = "ANOMALYD_AUTH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Longest one step (an export, an import) may take, in seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
}

struct Nodes {
    client: reqwest::Client,
    from: String,
    to: String,
    token: Option<String>,
}

impl Nodes {
    fn request(&self, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        let r = self.client.request(method, url);
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Sends `req` and returns the body of a 2xx answer, or the node's error.
    async fn call(&self, what: &str, req: reqwest::RequestBuilder) -> Result<Vec<u8>> {
        let resp = req.send().await.with_context(|| format!("{what}: no answer"))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .with_context(|| format!("{what}: answer cut short"))?;
        if !status.is_success() {
            bail!("{what}: {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(body.to_vec())
    }

    /// Moves one shard; returns (streams, archive bytes, time the shard was unavailable).
    async fn move_shard(&self, shard: u32) -> Result<(u64, usize, Duration)> {
        use reqwest::Method;
        let (from, to) = (&self.from, &self.to);
        let start = Instant::now();
        let body = serde_json::json!({ "to": to });
        self.call(
            "release",
            self.request(Method::POST, format!("{from}/v1/shards/{shard}/release"))
                .json(&body),
        )
        .await?;
        let archive = self
            .call(
                "export",
                self.request(Method::GET, format!("{from}/v1/shards/{shard}/export")),
            )
            .await;
        let imported = match archive {
            Ok(bytes) => {
                let size = bytes.len();
                let url = format!("{to}/v1/shards/{shard}/import");
                self.call("import", self.request(Method::POST, url).body(bytes))
                    .await
                    .map(|answer| (answer, size))
            }
            Err(e) => Err(e),
        };
        let (answer, size) = match imported {
            Ok(x) => x,
            Err(e) => {
                let url = format!("{from}/v1/shards/{shard}/reclaim");
                let back = self.call("reclaim", self.request(Method::POST, url)).await;
                return Err(e.context(match back {
                    Ok(_) => format!("shard {shard} stays on {from}"),
                    Err(b) => format!("shard {shard} is released on {from} and could not be taken back ({b:#}): run `shards move` again"),
                }));
            }
        };
        let unavailable = start.elapsed();
        let streams = serde_json::from_slice::<serde_json::Value>(&answer)
            .ok()
            .and_then(|v| v["streams"].as_u64())
            .unwrap_or(0);
        self.call(
            "forget",
            self.request(Method::POST, format!("{from}/v1/shards/{shard}/forget"))
                .json(&body),
        )
        .await?;
        Ok((streams, size, unavailable))
    }
}

/// Moves the shards one at a time, printing a line for each.
pub fn run(a: &MoveArgs) -> Result<()> {
    let trim = |u: &str| u.trim_end_matches('/').to_string();
    let shards = crate::shard::parse_list(&a.shards, u32::MAX).map_err(anyhow::Error::msg)?;
    if shards.is_empty() {
        bail!("--shards: no shard given");
    }
    let nodes = Nodes {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(a.timeout_secs.max(1)))
            .build()?,
        from: trim(&a.from),
        to: trim(&a.to),
        token: a.token.clone(),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        for shard in shards {
            let (streams, size, unavailable) = nodes.move_shard(shard).await?;
            println!(
                "shard {shard}: {streams} streams ({:.1} MiB) moved from {} to {}; unavailable for {:.2} s",
                size as f64 / (1 << 20) as f64,
                nodes.from,
                nodes.to,
                unavailable.as_secs_f64()
            );
        }
        println!(
            "done: regenerate the routers' configs (`anomalyd shards config ... --layout`) so they send these shards to {}",
            nodes.to
        );
        Ok(())
    })
}
