//! S3-style object events. Notifications arrive on the object-event subject (MinIO's
//! NATS target, either its envelope `{"EventName","Key","Records":[…]}` or the plain
//! AWS `{"Records":[…]}`), through the gateway's webhook (a request on the same
//! subject, answered once the invocations are queued), or from a bucket watcher.
//! Each record is matched against every S3 trigger as S3 filters: bucket, prefix and
//! suffix on the *decoded* key (`%2F` → `/`, `+` → space), event-name patterns. Each
//! (record, trigger) match becomes one asynchronous invocation with the event
//! `{"Records":[record]}`.
//!
//! A malformed notification is logged with the reason and counted; it never stops
//! the events behind it.

use std::sync::Arc;

use futures::StreamExt;
use nimbus_common::KvCache;
use nimbus_proto::trigger::event_name_matches;
use nimbus_proto::{AsyncInvocation, TriggerConfig, TriggerSource, WIRE_VERSION, encode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::destinations::{Deliverer, now_ms};

/// Queue group in which schedulers share object-event notifications.
pub const S3_QUEUE: &str = "nimbus-s3-events";

pub struct S3Router {
    pub deliverer: Arc<Deliverer>,
    pub triggers: Arc<KvCache<TriggerConfig>>,
}

/// The records of a notification document, or why it is not one.
pub fn parse_notification(body: &[u8]) -> Result<Vec<Value>, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let records = doc
        .get("Records")
        .and_then(Value::as_array)
        .ok_or("no Records array")?;
    for (i, r) in records.iter().enumerate() {
        if r["s3"]["bucket"]["name"].as_str().is_none() {
            return Err(format!("record {i} has no s3.bucket.name"));
        }
        if r["s3"]["object"]["key"].as_str().is_none() {
            return Err(format!("record {i} has no s3.object.key"));
        }
        if r["eventName"].as_str().is_none() {
            return Err(format!("record {i} has no eventName"));
        }
    }
    Ok(records.clone())
}

/// S3 notification keys are URL-encoded, with `+` for spaces.
pub fn decode_key(key: &str) -> String {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `record` is one `source` (an S3 trigger) wants.
pub fn matches(source: &TriggerSource, record: &Value) -> bool {
    let TriggerSource::S3 {
        bucket,
        prefix,
        suffix,
        events,
        ..
    } = source
    else {
        return false;
    };
    let rec_bucket = record["s3"]["bucket"]["name"].as_str().unwrap_or("");
    let key = decode_key(record["s3"]["object"]["key"].as_str().unwrap_or(""));
    let name = record["eventName"].as_str().unwrap_or("");
    rec_bucket == bucket
        && key.starts_with(prefix.as_str())
        && key.ends_with(suffix.as_str())
        && (events.is_empty() || events.iter().any(|p| event_name_matches(p, name)))
}

impl S3Router {
    /// Queues one invocation per matching (record, trigger); returns how many.
    pub async fn route(&self, records: &[Value], dedupe: &str) -> Result<usize, String> {
        let triggers = self.triggers.list();
        let mut queued = 0;
        for (i, record) in records.iter().enumerate() {
            for (_, _, t) in &triggers {
                if !matches(&t.source, record) {
                    continue;
                }
                let payload = bytes::Bytes::from(
                    serde_json::to_vec(&json!({ "Records": [record] })).unwrap_or_default(),
                );
                let request_id = uuid::Uuid::now_v7().to_string();
                let inv = AsyncInvocation {
                    v: WIRE_VERSION,
                    request_id: request_id.clone(),
                    function: t.function.clone(),
                    min_revision: 0,
                    payload,
                    enqueued_at_ms: now_ms(),
                    attempt: 0,
                    not_before_ms: 0,
                };
                let subject = self
                    .deliverer
                    .subjects
                    .async_invoke(&t.function)
                    .map_err(|e| e.to_string())?;
                let mut headers = async_nats::HeaderMap::new();
                let id = if dedupe.is_empty() {
                    request_id
                } else {
                    format!("s3:{}:{dedupe}:{i}", t.id)
                };
                headers.insert("Nats-Msg-Id", id.as_str());
                self.deliverer
                    .js_publish(subject, headers, encode(&inv))
                    .await
                    .map_err(|e| e.to_string())?;
                queued += 1;
            }
        }
        Ok(queued)
    }

    /// Serves the object-event subject.
    pub async fn run_subject(
        self: Arc<Self>,
        nats: async_nats::Client,
        subject: String,
        stop: CancellationToken,
    ) {
        let mut sub = match nats.queue_subscribe(subject.clone(), S3_QUEUE.into()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(%subject, error = %e, "cannot subscribe to object events");
                return;
            }
        };
        tracing::info!(%subject, "object events subscribed");
        loop {
            let msg = tokio::select! {
                m = sub.next() => m,
                _ = stop.cancelled() => break,
            };
            let Some(msg) = msg else { break };
            let outcome = match parse_notification(&msg.payload) {
                Err(reason) => {
                    tracing::warn!(%subject, %reason, "malformed object event discarded");
                    metrics::counter!("nimbus_s3_events_malformed_total").increment(1);
                    Err(reason)
                }
                Ok(records) => {
                    // A webhook request carries its own id for deduplication of retries.
                    let dedupe = msg
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("Nimbus-Event-Id"))
                        .map(|v| v.to_string())
                        .unwrap_or_default();
                    match self.route(&records, &dedupe).await {
                        Ok(n) => {
                            metrics::counter!("nimbus_s3_events_total")
                                .increment(records.len() as u64);
                            tracing::debug!(
                                records = records.len(),
                                queued = n,
                                "object event routed"
                            );
                            Ok(n)
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "object event not queued");
                            Err(format!("not queued: {e}"))
                        }
                    }
                }
            };
            if let Some(reply) = msg.reply {
                let body = match outcome {
                    Ok(n) => json!({ "queued": n }),
                    Err(e) => json!({ "error": e }),
                };
                let _ = nats
                    .publish(reply, serde_json::to_vec(&body).unwrap_or_default().into())
                    .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(bucket: &str, key: &str, event: &str) -> Value {
        json!({"eventName": event, "s3": {"bucket": {"name": bucket}, "object": {"key": key}}})
    }

    fn s3(prefix: &str, suffix: &str, events: &[&str]) -> TriggerSource {
        TriggerSource::S3 {
            bucket: "photos".into(),
            prefix: prefix.into(),
            suffix: suffix.into(),
            events: events.iter().map(|s| s.to_string()).collect(),
            watch: None,
        }
    }

    #[test]
    fn keys_are_decoded_before_matching() {
        assert_eq!(decode_key("uploads%2Fmy+cat.jpg"), "uploads/my cat.jpg");
        assert_eq!(decode_key("a%20b%"), "a b%");
        let t = s3("uploads/", ".jpg", &["s3:ObjectCreated:*"]);
        assert!(matches(
            &t,
            &record("photos", "uploads%2Fmy+cat.jpg", "s3:ObjectCreated:Put")
        ));
        assert!(!matches(
            &t,
            &record("photos", "uploads%2Fmy+cat.png", "s3:ObjectCreated:Put")
        ));
        assert!(!matches(
            &t,
            &record("photos", "other%2Fcat.jpg", "s3:ObjectCreated:Put")
        ));
        assert!(!matches(
            &t,
            &record("videos", "uploads%2Fcat.jpg", "s3:ObjectCreated:Put")
        ));
        assert!(!matches(
            &t,
            &record("photos", "uploads%2Fcat.jpg", "s3:ObjectRemoved:Delete")
        ));
        assert!(matches(
            &s3("", "", &[]),
            &record("photos", "x", "ObjectRemoved:Delete")
        ));
    }

    #[test]
    fn notifications_parse_or_say_why() {
        let minio = br#"{"EventName":"s3:ObjectCreated:Put","Key":"photos/a.jpg","Records":[{"eventName":"s3:ObjectCreated:Put","s3":{"bucket":{"name":"photos"},"object":{"key":"a.jpg"}}}]}"#;
        assert_eq!(parse_notification(minio).unwrap().len(), 1);
        assert!(
            parse_notification(b"nope")
                .unwrap_err()
                .contains("not JSON")
        );
        assert!(parse_notification(b"{}").unwrap_err().contains("Records"));
        assert!(
            parse_notification(br#"{"Records":[{"eventName":"x","s3":{"bucket":{}}}]}"#)
                .unwrap_err()
                .contains("bucket")
        );
    }
}
