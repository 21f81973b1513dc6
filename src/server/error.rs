//! API errors: every failure a client can cause becomes `{"error": {"code",
//! "message"}}` with a fitting status, never a panic.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::protocol::{ErrorDetail, ErrorOut};
use crate::registry::RegistryError;

/// An error response.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code.
    pub code: &'static str,
    /// Human message.
    pub message: String,
    /// Seconds for `Retry-After` (overload answers).
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 503 with Retry-After.
    pub fn overloaded(message: impl Into<String>) -> Self {
        ApiError {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorOut {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let msg = e.to_string();
        match e {
            RegistryError::Reading {
                source: crate::detector::ReadingError::OutOfOrder { .. },
                ..
            } => ApiError::new(StatusCode::CONFLICT, "out_of_order", msg),
            RegistryError::Reading { .. } => ApiError::bad_request("invalid_reading", msg),
            RegistryError::StreamId(_) => ApiError::bad_request("invalid_stream_id", msg),
            RegistryError::TooManyStreams(_) => ApiError::new(StatusCode::CONFLICT, "stream_limit", msg),
            RegistryError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", msg),
            RegistryError::NotOwned { .. } => ApiError::new(StatusCode::MISDIRECTED_REQUEST, "misdirected", msg),
            RegistryError::Moving { .. } => ApiError {
                retry_after: Some(1),
                ..ApiError::new(StatusCode::MISDIRECTED_REQUEST, "shard_moving", msg)
            },
            RegistryError::ShardState(_) => ApiError::new(StatusCode::CONFLICT, "shard_state", msg),
            RegistryError::ShardArchive(_) => ApiError::bad_request("invalid_archive", msg),
            RegistryError::Config(_) => ApiError::bad_request("invalid_config", msg),
            RegistryError::NotEnoughData(_) => ApiError::new(StatusCode::CONFLICT, "not_enough_data", msg),
            RegistryError::TrainingBusy | RegistryError::Contended => ApiError::overloaded(msg),
            RegistryError::ResetRequired(_) => ApiError::new(StatusCode::CONFLICT, "reset_required", msg),
            RegistryError::Storage(_) => ApiError {
                retry_after: Some(5),
                ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", msg)
            },
        }
    }
}
