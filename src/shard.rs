//! Which of a deployment's fixed shards a stream belongs to: one owner function,
//! written so the routers in front compute the same.
//!
//! - A stream that remote_write created (its id is a label set,
//!   `name{a="x",...}`): Prometheus' `hashmod` over the values of the shard
//!   labels (`__name__`, `instance`, `job` by default; a missing one counts as
//!   empty) joined by `;`, modulo the shard count: the low 8 bytes of their MD5,
//!   big-endian. A `write_relabel_configs` block with the same `source_labels`,
//!   `modulus` and a `keep` of a node's shards sends each node its own series.
//! - Any other stream: nginx's `split_clients` on its id: MurmurHash2 of the id
//!   into equal parts of 10,000 (so the count must divide 10,000: 16, 20, 25, 40,
//!   50, 80, 100, ...), as `split_clients "$stream" $shard { 6.25% 0; ... * 15; }`
//!   routes a POST to `/v1/streams/{stream}/...`.
//!
//! Pure: no I/O.

use md5::{Digest, Md5};

/// Prometheus' `hashmod`: the low 8 bytes of the MD5 of `joined`, big-endian,
/// modulo `modulus`.
pub fn hashmod(joined: &str, modulus: u64) -> u64 {
    let sum = Md5::digest(joined.as_bytes());
    let mut low = [0u8; 8];
    low.copy_from_slice(&sum[8..16]);
    u64::from_be_bytes(low) % modulus.max(1)
}

/// nginx's `ngx_murmur_hash2` (MurmurHash2, seed 0, little-endian words).
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h = data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, &b) in tail.iter().enumerate().rev() {
            h ^= u32::from(b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// The part of `split_clients` with `count` equal parts (`10000 / count`
/// hundredths of a percent each, the last `*`) that `key` falls in.
pub fn split_clients(key: &str, count: u32) -> u32 {
    let hash = murmur2(key.as_bytes());
    let part = 10_000 / u64::from(count.max(1));
    // nginx adds each part's share of 0xffffffff, rounded down, to a running bound.
    let mut bound: u64 = 0;
    for i in 0..count.saturating_sub(1) {
        bound += part * 0xffff_ffff / 10_000;
        if u64::from(hash) < bound {
            return i;
        }
    }
    count.saturating_sub(1)
}

/// Labels hashed for a remote_write stream unless configured otherwise.
pub const DEFAULT_LABELS: [&str; 3] = ["__name__", "instance", "job"];

/// A deployment's shards: how many, which labels place a remote_write stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardFunction {
    /// Shards in the deployment (fixed for its life).
    pub count: u32,
    /// The `source_labels` of the Prometheus `hashmod`.
    pub labels: Vec<String>,
}

impl ShardFunction {
    /// `count` shards (it must divide 10,000, for nginx) placed by `labels`.
    ///
    /// # Errors
    /// If `count` is 0 or does not divide 10,000, or no label is given.
    pub fn new(count: u32, labels: Vec<String>) -> Result<Self, String> {
        if count == 0 || 10_000 % count != 0 {
            return Err(format!(
                "shard count {count} must divide 10000 (nginx's split_clients parts): 16, 20, 25, 40, 50, 80, 100, ..."
            ));
        }
        if labels.is_empty() {
            return Err("at least one shard label".into());
        }
        Ok(ShardFunction { count, labels })
    }

    /// The shard of a remote_write stream with these labels.
    pub fn of_labels(&self, labels: &[(String, String)]) -> u32 {
        let value = |name: &str| labels.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str());
        let joined: Vec<&str> = self.labels.iter().map(|l| value(l)).collect();
        hashmod(&joined.join(";"), u64::from(self.count)) as u32
    }

    /// The shard of stream `id`: by its labels when it is a label set (as
    /// remote_write names streams), else by the id.
    pub fn of_id(&self, id: &str) -> u32 {
        match parse_label_set(id) {
            Some(labels) => self.of_labels(&labels),
            None => split_clients(id, self.count),
        }
    }
}

/// The labels of a remote_write stream id (`name{a="x",b="y\"z"}`, as
/// `server::prom::stream_id` writes it), `__name__` included; None for any
/// other id.
pub fn parse_label_set(id: &str) -> Option<Vec<(String, String)>> {
    let open = id.find('{')?;
    let body = id.strip_suffix('}')?.get(open + 1..)?;
    let mut labels = vec![("__name__".to_string(), id[..open].to_string())];
    let mut rest = body;
    while !rest.is_empty() {
        let eq = rest.find("=\"")?;
        let name = &rest[..eq];
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return None;
        }
        let mut value = String::new();
        let mut chars = rest[eq + 2..].char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((name.to_string(), value));
        rest = &rest[eq + 2 + end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Some(labels)
}

/// Shard numbers from a list like `0-15,32`.
///
/// # Errors
/// If a part is not a number or a range, or reaches `count`.
pub fn parse_list(list: &str, count: u32) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |s: &str| {
            s.trim()
                .parse::<u32>()
                .map_err(|_| format!("shards: {part:?} is not a shard or a range"))
        };
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(part)?, num(part)?),
        };
        if lo > hi || hi >= count {
            return Err(format!("shards: {part:?} is not within 0-{}", count - 1));
        }
        out.extend(lo..=hi);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The shards node `ordinal` of `nodes` owns: contiguous ranges, the first
/// `count % nodes` nodes one more.
pub fn of_node(ordinal: u32, nodes: u32, count: u32) -> Vec<u32> {
    let (per, extra) = (count / nodes.max(1), count % nodes.max(1));
    let start = ordinal * per + ordinal.min(extra);
    let len = per + u32::from(ordinal < extra);
    (start..(start + len).min(count)).collect()
}

/// The shards of each of `nodes` nodes under [`of_node`]'s layout.
pub fn ordinal_layout(nodes: u32, count: u32) -> Vec<Vec<u32>> {
    (0..nodes).map(|n| of_node(n, nodes, count)).collect()
}

/// A layout from `--layout`: each node's shard list, `;` between nodes
/// (`0-4;5-10;11-15`).
///
/// # Errors
/// If a list is invalid, a shard is listed twice or not at all.
pub fn parse_layout(text: &str, count: u32) -> Result<Vec<Vec<u32>>, String> {
    let layout: Vec<Vec<u32>> = text
        .split(';')
        .map(|l| parse_list(l, count))
        .collect::<Result<_, _>>()?;
    let mut seen = vec![0u32; count as usize];
    for s in layout.iter().flatten() {
        seen[*s as usize] += 1;
    }
    match seen.iter().position(|&n| n != 1) {
        Some(s) => Err(format!(
            "layout: shard {s} is listed {} times, it needs one node",
            seen[s]
        )),
        None => Ok(layout),
    }
}

/// Prometheus `remote_write` blocks, one per node (`urls[i]` is node i's base
/// URL), each keeping the series of node i's shards (`of_node`).
pub fn prometheus_remote_write(f: &ShardFunction, urls: &[String]) -> String {
    prometheus_remote_write_layout(f, urls, &ordinal_layout(urls.len() as u32, f.count))
}

/// Prometheus `remote_write` blocks, one per node, node i keeping `layout[i]`.
pub fn prometheus_remote_write_layout(f: &ShardFunction, urls: &[String], layout: &[Vec<u32>]) -> String {
    let labels = f.labels.join(", ");
    let mut out = String::from("remote_write:\n");
    for (i, (url, shards)) in urls.iter().zip(layout).enumerate() {
        let shards: Vec<String> = shards.iter().map(u32::to_string).collect();
        out.push_str(&format!(
            "  - url: {}/api/v1/write\n    name: anomalyd-{i}\n    write_relabel_configs:\n      \
             - {{source_labels: [{labels}], modulus: {}, target_label: __tmp_anomalyd_shard, action: hashmod}}\n      \
             - {{source_labels: [__tmp_anomalyd_shard], regex: \"{}\", action: keep}}\n      \
             - {{regex: __tmp_anomalyd_shard, action: labeldrop}}\n",
            url.trim_end_matches('/'),
            f.count,
            shards.join("|"),
        ));
    }
    out
}

/// An nginx `http` block part: each node an upstream, `split_clients` on the
/// stream id in `/v1/streams/{id}/...` to its shard, the shard to its node, and
/// a server on `listen` proxying there (never retrying another node: a stream
/// lives on one). Requests without a stream id (`/v1/readings`, `/v1/alerts`,
/// `/ui/`) go to node 0.
pub fn nginx_conf(f: &ShardFunction, nodes: &[String], listen: &str) -> String {
    nginx_conf_layout(f, nodes, &ordinal_layout(nodes.len() as u32, f.count), listen)
}

/// [`nginx_conf`] with node i owning `layout[i]`.
pub fn nginx_conf_layout(f: &ShardFunction, nodes: &[String], layout: &[Vec<u32>], listen: &str) -> String {
    let mut out = String::new();
    for (i, addr) in nodes.iter().enumerate() {
        out.push_str(&format!("upstream anomalyd_{i} {{ server {addr}; keepalive 16; }}\n"));
    }
    out.push_str("map $uri $anomalyd_stream { ~^/v1/streams/(?<id>[^/]+) $id; default \"\"; }\n");
    out.push_str("split_clients \"$anomalyd_stream\" $anomalyd_shard {");
    let part = 100.0 / f64::from(f.count);
    for s in 0..f.count - 1 {
        out.push_str(&format!(" {part}% {s};"));
    }
    out.push_str(&format!(" * {}; }}\n", f.count - 1));
    out.push_str("map $anomalyd_shard $anomalyd_owner {\n");
    for (node, shards) in layout.iter().enumerate().take(nodes.len()) {
        for s in shards {
            out.push_str(&format!("  {s} anomalyd_{node};\n"));
        }
    }
    out.push_str("}\nmap $anomalyd_stream $anomalyd_node { \"\" anomalyd_0; default $anomalyd_owner; }\n");
    out.push_str(&format!(
        "server {{\n  listen {listen};\n  location / {{\n    proxy_pass http://$anomalyd_node;\n    \
         proxy_http_version 1.1;\n    proxy_set_header Connection \"\";\n    proxy_next_upstream off;\n  }}\n}}\n"
    ));
    out
}

/// The node of `nodes` that owns `shard` under [`of_node`]'s layout.
pub fn node_of(shard: u32, nodes: u32, count: u32) -> u32 {
    let (per, extra) = (count / nodes.max(1), count % nodes.max(1));
    // The first `extra` nodes own `per + 1` shards each, the rest `per`.
    let big = extra * (per + 1);
    if shard < big {
        shard / (per + 1)
    } else {
        extra + (shard - big) / per.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashmod_is_prometheus_md5_of_the_joined_values() {
        // Reference: Python's hashlib, low 8 bytes of the digest, big-endian.
        assert_eq!(hashmod("", 1 << 63), 16_825_458_760_271_544_958 % (1 << 63));
        assert_eq!(hashmod("node_load1;127.0.0.1:9100;node", 16), 1);
        assert_eq!(hashmod("a", u64::MAX), 3_585_878_926_028_121_697);
        let f = ShardFunction::new(16, DEFAULT_LABELS.map(String::from).to_vec()).unwrap();
        let labels = parse_label_set(r#"node_load1{instance="127.0.0.1:9100",job="node"}"#).unwrap();
        assert_eq!(f.of_labels(&labels), 1);
        assert_eq!(f.of_id(r#"node_load1{instance="127.0.0.1:9100",job="node"}"#), 1);
    }

    #[test]
    fn label_sets_parse_back_from_their_ids_and_other_ids_do_not() {
        let id = r#"up{job="a\"b",path="x\\y\nz"}"#;
        let l = parse_label_set(id).unwrap();
        assert_eq!(l[1], ("job".to_string(), "a\"b".to_string()));
        assert_eq!(l[2], ("path".to_string(), "x\\y\nz".to_string()));
        assert_eq!(
            parse_label_set("up{}").unwrap(),
            vec![("__name__".to_string(), "up".to_string())]
        );
        for other in ["cpu.web-1", "a{b}", "a{b=\"c\"", "a{=\"c\"}", "a{b=\"c\"x}"] {
            assert_eq!(parse_label_set(other), None, "{other}");
        }
    }

    #[test]
    fn shard_lists_and_node_ranges_cover_every_shard_once() {
        assert_eq!(parse_list("0-3, 9,2", 16).unwrap(), vec![0, 1, 2, 3, 9]);
        assert!(parse_list("15-16", 16).is_err() && parse_list("x", 16).is_err() && parse_list("3-1", 16).is_err());
        let mut all: Vec<u32> = (0..3).flat_map(|n| of_node(n, 3, 16)).collect();
        assert_eq!(of_node(0, 3, 16), (0..6).collect::<Vec<_>>());
        all.sort_unstable();
        assert_eq!(all, (0..16).collect::<Vec<_>>());
        for (nodes, count) in [(3, 16), (5, 80), (7, 16), (16, 16), (1, 25)] {
            for n in 0..nodes {
                assert!(of_node(n, nodes, count).iter().all(|&s| node_of(s, nodes, count) == n));
            }
        }
        assert!(
            ShardFunction::new(64, vec!["job".into()]).is_err(),
            "64 does not divide 10000"
        );
    }

    #[test]
    fn split_clients_spreads_ids_evenly() {
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            counts[split_clients(&format!("stream-{i}"), 16) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (850..1150).contains(&c)), "{counts:?}");
    }
}
