//! Evaluation: the NAB scoring rules and corpus runner, and the Tennessee Eastman
//! benchmark. Offline, file-based; nothing here is used by the service.

pub mod nab;
pub mod replay;
pub mod tep;
