//! anomalyd: streaming anomaly detection with a recurrent autoencoder per stream.
//!
//! # Layout (read in this order; ARCHITECTURE.md has the full map and invariants)
//! - [`cli`]: the command line, one module per command (`main.rs` only calls it).
//! - [`config`]: the service's settings, each defined once (flags, environment,
//!   file), checked into a `ServeConfig`.
//! - [`protocol`]: wire types only (JSON, WebSocket, protobuf).
//! - [`server`]: the only module that serves HTTP: router, handlers, admission,
//!   WebSocket, remote_write, Alertmanager.
//! - [`registry`]: the streams of a running service: ingest, the training pool,
//!   checkpoints and recovery, the alert journal.
//! - [`metrics`]: every Prometheus metric of the service.
//! - [`detector`]: one stream's detector, synchronous and clock-free: baselines,
//!   the model, the anomaly state, incidents, training.
//! - [`nn`]: the network core: cells, sequences, BPTT, optimisers, the compiled
//!   scorer. A leaf: no I/O, no async.
//! - [`storage`]: the only place that serialises model state (safetensors with
//!   PyTorch's names, snapshots, the write-ahead log).
//! - [`eval`]: offline runners: replay, NAB, Tennessee Eastman.
//! - [`shard`]: which of a deployment's fixed shards a stream belongs to (the
//!   owner function Prometheus' `hashmod` and nginx's `split_clients` share).
//! - [`chart`]: a stream's chart as SVG (the console and `replay --plot`).
//! - [`bench`]: the `anomalyd bench` measurements and the HTTP load generator.
//! - [`timestamp`]: timestamps and their parsing; [`fuzz`]: the fuzz targets'
//!   entry points.

pub mod bench;
pub mod chart;
pub mod cli;
pub mod config;
pub mod detector;
pub mod eval;
pub mod fuzz;
pub mod metrics;
pub mod nn;
pub mod protocol;
pub mod registry;
pub mod server;
pub mod shard;
pub mod storage;
pub mod timestamp;
