//! Log records: one per invocation, the captured output between `START` and `REPORT`.

use serde::{Deserialize, Serialize};

use crate::codec::{current_version, versioned};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    #[serde(default = "current_version")]
    pub v: u16,
    pub function: String,
    pub request_id: String,
    pub timestamp_ms: u64,
    /// `START …`, the function's output, `END …`, `REPORT …`.
    pub text: String,
}
versioned!(LogRecord);
