//! Invocation records and where they go: Lambda's destination record format, sent to
//! an on-success / on-failure destination (`nats:SUBJECT` or another function), or to
//! the dead-letter stream when a failed invocation has no on-failure destination.
//!
//! Every delivery here is acknowledged (JetStream publish ack, or a flushed core
//! publish for a `nats:` subject no stream captures) before the scheduler acks the
//! invocation, so a record is never lost between the two.

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use nimbus_proto::{AsyncInvocation, Destination, Subjects, WIRE_VERSION, encode};
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Success,
    RetriesExhausted,
    EventAgeExceeded,
}

impl Condition {
    fn as_str(self) -> &'static str {
        match self {
            Self::Success => "Success",
            Self::RetriesExhausted => "RetriesExhausted",
            Self::EventAgeExceeded => "EventAgeExceeded",
        }
    }
}

/// What the last attempt returned, if anything ran.
pub struct LastResponse {
    pub payload: Bytes,
    pub function_error: bool,
}

/// Lambda's invocation record.
pub fn record(
    inv: &AsyncInvocation,
    region: &str,
    condition: Condition,
    invoke_count: u32,
    response: Option<&LastResponse>,
) -> Value {
    let request_payload = json_or_string(&inv.payload);
    let mut rec = json!({
        "version": "1.0",
        "timestamp": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        "requestContext": {
            "requestId": inv.request_id,
            "functionArn": format!("arn:aws:lambda:{region}:000000000000:function:{}:$LATEST", inv.function),
            "condition": condition.as_str(),
            "approximateInvokeCount": invoke_count,
        },
        "requestPayload": request_payload,
    });
    if let Some(resp) = response {
        let mut ctx = json!({ "statusCode": 200, "executedVersion": "$LATEST" });
        if resp.function_error {
            ctx["functionError"] = json!("Unhandled");
        }
        rec["responseContext"] = ctx;
        rec["responsePayload"] = json_or_string(&resp.payload);
    }
    rec
}

fn json_or_string(b: &[u8]) -> Value {
    if b.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(b).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into()))
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("publishing the record to {subject}: {reason}")]
    Publish { subject: String, reason: String },
}

pub struct Deliverer {
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    /// Whether a stream captures a user's subject, and when that was looked up.
    pub captured: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, bool)>>,
}

/// How long whether a stream captures a subject is remembered: a stream made later
/// is used within this.
const CAPTURED_TTL: Duration = Duration::from_secs(5);

impl Deliverer {
    /// Sends `record` to `destination`, or to the DLQ when there is none.
    pub async fn deliver(
        &self,
        function: &str,
        request_id: &str,
        destination: Option<&str>,
        record: &Value,
    ) -> Result<(), DeliveryError> {
        let body = Bytes::from(serde_json::to_vec(record).unwrap_or_default());
        match destination.map(Destination::parse) {
            Some(Ok(Destination::Nats(subject))) => {
                self.publish_user(&subject, request_id, body).await
            }
            Some(Ok(Destination::Function(target))) => {
                let inv = AsyncInvocation {
                    v: WIRE_VERSION,
                    request_id: uuid::Uuid::new_v4().to_string(),
                    function: target.clone(),
                    min_revision: 0,
                    payload: body,
                    enqueued_at_ms: now_ms(),
                    attempt: 0,
                    not_before_ms: 0,
                };
                let subject =
                    self.subjects
                        .async_invoke(&target)
                        .map_err(|e| DeliveryError::Publish {
                            subject: target.clone(),
                            reason: e.to_string(),
                        })?;
                let mut headers = async_nats::HeaderMap::new();
                // Deduplicated: a redelivered source record enqueues the target once.
                headers.insert("Nats-Msg-Id", format!("{request_id}->{target}").as_str());
                self.js_publish(subject, headers, encode(&inv)).await
            }
            // A destination stored before validation existed, or none: the DLQ.
            Some(Err(_)) | None => {
                let subject = self
                    .subjects
                    .dlq(function)
                    .map_err(|e| DeliveryError::Publish {
                        subject: function.into(),
                        reason: e.to_string(),
                    })?;
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("dlq:{request_id}").as_str());
                headers.insert("Nimbus-Request-Id", request_id);
                self.js_publish(subject, headers, body).await
            }
        }
    }

    /// A user's subject: through JetStream when a stream captures it (acknowledged),
    /// else a core publish flushed to the server (at most once, as core NATS is).
    ///
    /// Which one is looked up, not inferred from a JetStream publish: with no stream
    /// but a core subscriber on the subject, that subscriber receives the publish as
    /// a request it never answers, so no "no responders" comes back — the publish
    /// timed out, the record counted as undelivered, and it was sent again and again.
    async fn publish_user(
        &self,
        subject: &str,
        request_id: &str,
        body: Bytes,
    ) -> Result<(), DeliveryError> {
        let err = |reason: String| DeliveryError::Publish {
            subject: subject.into(),
            reason,
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("dest:{request_id}").as_str());
        headers.insert("Nimbus-Request-Id", request_id);
        if self.stream_captures(subject).await.map_err(err)? {
            return self.js_publish(subject.to_string(), headers, body).await;
        }
        self.nats
            .publish_with_headers(subject.to_string(), headers, body)
            .await
            .map_err(|e| err(e.to_string()))?;
        tokio::time::timeout(Duration::from_secs(5), self.nats.flush())
            .await
            .map_err(|_| err("the server did not take it".into()))?
            .map_err(|e| err(e.to_string()))
    }

    /// Whether a stream captures `subject` (remembered for [`CAPTURED_TTL`]).
    async fn stream_captures(&self, subject: &str) -> Result<bool, String> {
        let now = std::time::Instant::now();
        if let Some((at, yes)) = self.captured.lock().expect("lock poisoned").get(subject)
            && now.duration_since(*at) < CAPTURED_TTL
        {
            return Ok(*yes);
        }
        let yes = match self.js.stream_by_subject(subject).await {
            Ok(_) => true,
            Err(e) if e.kind() == jetstream::context::GetStreamByNameErrorKind::NotFound => false,
            Err(e) => return Err(format!("which stream captures it: {e}")),
        };
        let mut captured = self.captured.lock().expect("lock poisoned");
        captured.retain(|_, (at, _)| now.duration_since(*at) < CAPTURED_TTL);
        captured.insert(subject.to_string(), (now, yes));
        Ok(yes)
    }

    pub async fn js_publish(
        &self,
        subject: String,
        headers: async_nats::HeaderMap,
        body: Bytes,
    ) -> Result<(), DeliveryError> {
        let err = |reason: String| DeliveryError::Publish {
            subject: subject.clone(),
            reason,
        };
        let ack = self
            .js
            .publish_with_headers(subject.clone(), headers, body)
            .await
            .map_err(|e| err(e.to_string()))?;
        tokio::time::timeout(Duration::from_secs(10), ack)
            .await
            .map_err(|_| err("no acknowledgement".into()))?
            .map_err(|e| err(e.to_string()))?;
        Ok(())
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_has_lambdas_shape() {
        let inv = AsyncInvocation {
            v: WIRE_VERSION,
            request_id: "r-1".into(),
            function: "f".into(),
            min_revision: 1,
            payload: Bytes::from_static(b"{\"a\":1}"),
            enqueued_at_ms: 0,
            attempt: 2,
            not_before_ms: 0,
        };
        let resp = LastResponse {
            payload: Bytes::from_static(
                b"{\"errorMessage\":\"boom\",\"errorType\":\"ValueError\"}",
            ),
            function_error: true,
        };
        let r = record(
            &inv,
            "us-east-1",
            Condition::RetriesExhausted,
            3,
            Some(&resp),
        );
        assert_eq!(r["version"], "1.0");
        assert_eq!(r["requestContext"]["condition"], "RetriesExhausted");
        assert_eq!(r["requestContext"]["approximateInvokeCount"], 3);
        assert_eq!(r["requestContext"]["requestId"], "r-1");
        assert_eq!(r["requestPayload"]["a"], 1);
        assert_eq!(r["responseContext"]["functionError"], "Unhandled");
        assert_eq!(r["responsePayload"]["errorType"], "ValueError");
        let ok = record(&inv, "us-east-1", Condition::EventAgeExceeded, 1, None);
        assert!(ok.get("responseContext").is_none());
    }
}
