//! anomalyd: streaming anomaly detection with a recurrent autoencoder per stream.
//!
//! # Layout (read in this order)
//! - [`nn`]: the recurrent network core — cells, sequences, BPTT, optimisers. A leaf:
//!   no I/O, no async.
//! - [`storage`]: the only place that serialises model state (safetensors with
//!   PyTorch's names).
//! - [`bench`]: the `anomalyd bench` command's measurements.
//!
//! See ARCHITECTURE.md for the invariants each module keeps.

pub mod bench;
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
pub mod storage;
pub mod timestamp;
