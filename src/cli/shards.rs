//! `anomalyd shards config`: the routers' side of a sharded deployment, written
//! from the same owner function the nodes use.

use anyhow::Result;
use clap::{Args, ValueEnum};

use crate::shard::{self, ShardFunction};

/// Which router's config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Router {
    /// Prometheus `remote_write` blocks, one per node, each keeping its shards.
    Prometheus,
    /// nginx upstreams and maps routing `/v1/streams/{id}/...` to the owner.
    Nginx,
}

/// The arguments of `anomalyd shards config`.
#[derive(Args, Debug)]
pub struct ConfigArgs {
    /// Which router.
    #[arg(value_enum)]
    pub router: Router,
    /// Shards in the deployment (must divide 10000).
    #[arg(long)]
    pub shard_count: u32,
    /// The nodes in ordinal order: base URLs for Prometheus
    /// (`http://anomalyd-0.anomalyd:8080`), host:port for nginx.
    #[arg(long, value_delimiter = ',', required = true)]
    pub nodes: Vec<String>,
    /// The labels that place a remote_write series (the nodes' --shard-labels).
    #[arg(long, value_delimiter = ',', default_value = "__name__,instance,job")]
    pub shard_labels: Vec<String>,
    /// Which node owns which shards, `;` between nodes in the order of
    /// --nodes (`0-4;5-10;11-15`); by default each node its ordinal's share.
    /// After `shards move`, the layout the moves left.
    #[arg(long)]
    pub layout: Option<String>,
    /// nginx: the address its server listens on.
    #[arg(long, default_value = "8080")]
    pub listen: String,
}

/// Prints the router's config.
pub fn config(a: &ConfigArgs) -> Result<()> {
    let f = ShardFunction::new(a.shard_count, a.shard_labels.clone()).map_err(anyhow::Error::msg)?;
    if a.nodes.len() as u32 > a.shard_count {
        anyhow::bail!(
            "{} nodes for {} shards: a node would own none",
            a.nodes.len(),
            a.shard_count
        );
    }
    let layout = match &a.layout {
        Some(text) => shard::parse_layout(text, a.shard_count).map_err(anyhow::Error::msg)?,
        None => shard::ordinal_layout(a.nodes.len() as u32, a.shard_count),
    };
    if layout.len() != a.nodes.len() {
        anyhow::bail!(
            "--layout gives {} nodes' shards, --nodes lists {}",
            layout.len(),
            a.nodes.len()
        );
    }
    let text = match a.router {
        Router::Prometheus => shard::prometheus_remote_write_layout(&f, &a.nodes, &layout),
        Router::Nginx => shard::nginx_conf_layout(&f, &a.nodes, &layout, &a.listen),
    };
    print!("{text}");
    Ok(())
}
