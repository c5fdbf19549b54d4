//! Log records: one per invocation, the captured output between `START` and `REPORT`.
//!
//! A worker publishes them in batches ([`LogBatch`]), one message per function per
//! flush: with JetStream syncing every write to disk, a message per invocation was a
//! disk sync per invocation. Readers accept both a batch and a lone [`LogRecord`]
//! (what workers before batching published).

use serde::{Deserialize, Serialize};

use crate::codec::{DecodeError, current_version, decode, versioned};

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

/// Records of one function, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogBatch {
    #[serde(default = "current_version")]
    pub v: u16,
    pub records: Vec<LogRecord>,
}
versioned!(LogRecord, LogBatch);

/// The records in one message of the logs stream: a batch, or a lone record.
pub fn decode_log_message(bytes: &[u8]) -> Result<Vec<LogRecord>, DecodeError> {
    match decode::<LogBatch>(bytes) {
        Ok(batch) => Ok(batch.records),
        Err(batch_err) => match decode::<LogRecord>(bytes) {
            Ok(rec) => Ok(vec![rec]),
            Err(_) => Err(batch_err),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode;

    fn rec(id: &str) -> LogRecord {
        LogRecord {
            v: crate::WIRE_VERSION,
            function: "f".into(),
            request_id: id.into(),
            timestamp_ms: 1,
            text: format!("START RequestId: {id}\n"),
        }
    }

    #[test]
    fn batches_and_lone_records_decode() {
        let batch = LogBatch {
            v: crate::WIRE_VERSION,
            records: vec![rec("a"), rec("b")],
        };
        let got = decode_log_message(&encode(&batch)).unwrap();
        assert_eq!(got, vec![rec("a"), rec("b")]);
        assert_eq!(
            decode_log_message(&encode(&rec("c"))).unwrap(),
            vec![rec("c")]
        );
        assert!(decode_log_message(b"\x92\x01\x02").is_err());
    }
}
