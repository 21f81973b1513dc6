//! Evaluation: the NAB scoring rules and corpus runner. Offline, file-based; nothing
//! here is used by the service.

pub mod nab;
pub mod replay;
