//! The one error type on the wire. Codes are stable; the gateway maps them to AWS error
//! types and HTTP statuses in one place.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The function (or the requested revision of it) does not exist.
    FunctionNotFound,
    /// Every worker is full, or the function's concurrency is exhausted.
    TooManyRequests,
    /// The code package did not match its recorded SHA-256.
    CodeChecksumMismatch,
    /// The code package could not be fetched or unpacked.
    CodeUnavailable,
    /// The runtime is not one this worker can run.
    UnsupportedRuntime,
    /// The request was malformed.
    InvalidRequest,
    /// Anything else that went wrong inside the platform.
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The error of a call whose worker stopped (stopped sending heartbeats) while
    /// running it — whoever watched it, a scheduler or a gateway.
    pub fn worker_lost(worker: &str) -> Self {
        Self::new(
            ErrorCode::Internal,
            format!("the worker running this invocation ({worker}) stopped before it finished"),
        )
    }
}
