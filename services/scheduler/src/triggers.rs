//! Event triggers run by the scheduler. The triggers KV bucket is mirrored; every
//! scheduler runs every trigger, and shares its events with the others (a queue
//! group per trigger), so each event is taken once.
//!
//! NATS triggers: each message on the subject becomes one asynchronous invocation,
//! published to the async stream (acknowledged) and then run under the async delivery
//! contract. The event is an envelope:
//!
//! ```json
//! {"source": "nimbus:nats", "triggerId": "…", "subject": "orders.new",
//!  "headers": {"Name": "value"}, "data": <the body, if it is JSON>,
//!  "dataBase64": "<the body, if it is not JSON>"}
//! ```
//!
//! Core NATS is at most once up to that publish: a message that arrives while no
//! scheduler is subscribed, or while the publish fails, is lost (logged and counted).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures::StreamExt;
use nimbus_common::KvCache;
use nimbus_proto::{
    AsyncInvocation, MAX_ASYNC_PAYLOAD, Subjects, TriggerConfig, TriggerSource, WIRE_VERSION,
    encode,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::destinations::{Deliverer, now_ms};

pub struct TriggerRunner {
    pub nats: async_nats::Client,
    pub subjects: Subjects,
    pub deliverer: Arc<Deliverer>,
}

impl TriggerRunner {
    /// Keeps one task per trigger running, following the triggers bucket's mirror.
    pub async fn run(self: Arc<Self>, cache: Arc<KvCache<TriggerConfig>>, stop: CancellationToken) {
        let changes = cache.subscribe();
        crate::tasks::reconcile(
            "trigger",
            changes,
            stop,
            || {
                cache
                    .list()
                    .into_iter()
                    .map(|(id, _, t)| (id, (*t).clone()))
                    .collect()
            },
            |cfg, token| {
                let me = self.clone();
                async move { me.run_trigger(cfg, token).await }
            },
        )
        .await;
    }

    async fn run_trigger(&self, cfg: TriggerConfig, stop: CancellationToken) {
        match &cfg.source {
            // Notification-driven: the object-event router matches them; watchers
            // (for stores without notifications) come with the bucket watcher.
            TriggerSource::S3 { .. } => stop.cancelled().await,
            TriggerSource::Stream {
                stream,
                batch_size,
                batch_window_ms,
            } => {
                while !stop.is_cancelled() {
                    if let Err(e) = self
                        .stream_trigger(&cfg, stream, *batch_size, *batch_window_ms, &stop)
                        .await
                    {
                        tracing::warn!(trigger = %cfg.id, %stream, error = %e, "stream trigger failed; restarting");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.cancelled() => {}
                    }
                }
            }
            TriggerSource::Nats { subject } => {
                // Resubscribe if the subscription ends (e.g. a reconnect).
                while !stop.is_cancelled() {
                    if let Err(e) = self.nats_trigger(&cfg, subject, &stop).await {
                        tracing::warn!(trigger = %cfg.id, %subject, error = %e, "NATS trigger failed; restarting");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.cancelled() => {}
                    }
                }
            }
        }
    }

    async fn nats_trigger(
        &self,
        cfg: &TriggerConfig,
        subject: &str,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut sub = self
            .nats
            .queue_subscribe(subject.to_string(), self.subjects.trigger_queue(&cfg.id))
            .await?;
        tracing::info!(trigger = %cfg.id, function = %cfg.function, %subject, "NATS trigger running");
        loop {
            let msg = tokio::select! {
                m = sub.next() => m,
                _ = stop.cancelled() => break,
            };
            let Some(msg) = msg else { break };
            let event = envelope(&cfg.id, &msg);
            let payload = bytes::Bytes::from(serde_json::to_vec(&event).unwrap_or_default());
            if payload.len() > MAX_ASYNC_PAYLOAD {
                tracing::warn!(trigger = %cfg.id, subject = %msg.subject, size = payload.len(), "NATS message too large for an async invocation; dropped");
                metrics::counter!("nimbus_trigger_events_dropped_total", "reason" => "too_large")
                    .increment(1);
                continue;
            }
            let request_id = uuid::Uuid::now_v7().to_string();
            let inv = AsyncInvocation {
                v: WIRE_VERSION,
                request_id: request_id.clone(),
                function: cfg.function.clone(),
                min_revision: 0,
                payload,
                enqueued_at_ms: now_ms(),
                attempt: 0,
                not_before_ms: 0,
            };
            let Ok(target) = self.subjects.async_invoke(&cfg.function) else {
                continue;
            };
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", request_id.as_str());
            if let Err(e) = self
                .deliverer
                .js_publish(target, headers, encode(&inv))
                .await
            {
                tracing::warn!(trigger = %cfg.id, subject = %msg.subject, error = %e, "event not queued; dropped (core NATS is at most once)");
                metrics::counter!("nimbus_trigger_events_dropped_total", "reason" => "queue_failed").increment(1);
            }
        }
        let _ = sub.unsubscribe().await;
        Ok(())
    }
}

impl TriggerRunner {
    /// Consumes a stream durably in batches: each batch is queued as one invocation
    /// (acknowledged by JetStream, deduplicated by its sequence range) before its
    /// messages are acked, so nothing is lost and a redelivered batch queues once
    /// (within the duplicate window).
    async fn stream_trigger(
        &self,
        cfg: &TriggerConfig,
        stream: &str,
        batch_size: u32,
        window_ms: u64,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        use async_nats::jetstream::consumer;
        let js = self.deliverer.js.clone();
        let consumer: consumer::PullConsumer = js
            .get_stream(stream)
            .await?
            .get_or_create_consumer(
                &format!("nimbus-trigger-{}", cfg.id),
                consumer::pull::Config {
                    durable_name: Some(format!("nimbus-trigger-{}", cfg.id)),
                    description: Some(format!("Nimbus trigger {} -> {}", cfg.id, cfg.function)),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(60),
                    max_ack_pending: 10_000,
                    ..Default::default()
                },
            )
            .await?;
        tracing::info!(trigger = %cfg.id, function = %cfg.function, %stream, "stream trigger running");
        while !stop.is_cancelled() {
            let mut batch = consumer
                .batch()
                .max_messages(batch_size as usize)
                .expires(Duration::from_millis(window_ms.max(100)))
                .messages()
                .await?;
            let mut msgs = Vec::new();
            loop {
                let next = tokio::select! {
                    m = batch.next() => m,
                    _ = stop.cancelled() => return Ok(()),
                };
                match next {
                    Some(Ok(m)) => msgs.push(m),
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "batch ended");
                        break;
                    }
                    None => break,
                }
            }
            if msgs.is_empty() {
                continue;
            }
            let mut records = Vec::with_capacity(msgs.len());
            let (mut first, mut last) = (u64::MAX, 0);
            for m in &msgs {
                let info = m.info().map_err(|e| anyhow::anyhow!("{e}"))?;
                first = first.min(info.stream_sequence);
                last = last.max(info.stream_sequence);
                let mut rec = envelope(&cfg.id, &m.message);
                rec["source"] = json!("nimbus:jetstream");
                rec["stream"] = json!(stream);
                rec["sequence"] = json!(info.stream_sequence);
                rec["timestamp"] = json!(info.published.unix_timestamp_nanos() / 1_000_000);
                records.push(rec);
            }
            let payload = bytes::Bytes::from(
                serde_json::to_vec(&json!({ "Records": records })).unwrap_or_default(),
            );
            if payload.len() > MAX_ASYNC_PAYLOAD {
                tracing::warn!(trigger = %cfg.id, size = payload.len(), "batch larger than 1 MB; lower --batch-size. Left unacknowledged");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
            let request_id = uuid::Uuid::now_v7().to_string();
            let inv = AsyncInvocation {
                v: WIRE_VERSION,
                request_id,
                function: cfg.function.clone(),
                min_revision: 0,
                payload,
                enqueued_at_ms: now_ms(),
                attempt: 0,
                not_before_ms: 0,
            };
            let target = self.subjects.async_invoke(&cfg.function)?;
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                "Nats-Msg-Id",
                format!("stream:{}:{first}-{last}", cfg.id).as_str(),
            );
            self.deliverer
                .js_publish(target, headers, encode(&inv))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            for m in &msgs {
                let _ = m.double_ack().await;
            }
            tracing::debug!(trigger = %cfg.id, records = msgs.len(), first, last, "stream batch queued");
        }
        Ok(())
    }
}

/// The event a NATS message becomes.
pub fn envelope(trigger_id: &str, msg: &async_nats::Message) -> Value {
    let mut headers = serde_json::Map::new();
    if let Some(h) = &msg.headers {
        for (name, values) in h.iter() {
            let joined = values
                .iter()
                .map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            headers.insert(name.to_string(), Value::String(joined));
        }
    }
    let mut event = json!({
        "source": "nimbus:nats",
        "triggerId": trigger_id,
        "subject": msg.subject.to_string(),
        "headers": headers,
    });
    match serde_json::from_slice::<Value>(&msg.payload) {
        Ok(v) if !msg.payload.is_empty() => event["data"] = v,
        _ => {
            event["data"] = Value::Null;
            event["dataBase64"] =
                Value::String(base64::engine::general_purpose::STANDARD.encode(&msg.payload));
        }
    }
    event
}
