//! Event triggers (`/nimbus/v1/triggers`): bind a function to a source of events.
//! Written to the triggers KV bucket; schedulers watch it and run the sources.
//!
//! `POST {"type": "nats", "function": "F", "subject": "orders.>"}` → 201 the trigger;
//! `GET` lists (optionally `?function=F`); `DELETE /nimbus/v1/triggers/{id}`.

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::jetstream::kv;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use nimbus_proto::trigger::validate_trigger_subject;
use nimbus_proto::{TriggerConfig, TriggerSource, WIRE_VERSION, decode, encode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{parse_function_name, parse_json, read_body};
use crate::AppState;
use crate::error::ApiError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTrigger {
    #[serde(rename = "type")]
    kind: String,
    function: String,
    subject: Option<String>,
    bucket: Option<String>,
    prefix: Option<String>,
    suffix: Option<String>,
    events: Option<Vec<String>>,
    watch: Option<String>,
    stream: Option<String>,
    batch_size: Option<u32>,
    batch_window_ms: Option<u64>,
}

fn shape(t: &TriggerConfig) -> Value {
    let mut v = json!({ "id": t.id, "function": t.function, "createdMs": t.created_ms });
    match &t.source {
        TriggerSource::Nats { subject } => {
            v["type"] = json!("nats");
            v["subject"] = json!(subject);
        }
        TriggerSource::Stream {
            stream,
            batch_size,
            batch_window_ms,
        } => {
            v["type"] = json!("stream");
            v["stream"] = json!(stream);
            v["batchSize"] = json!(batch_size);
            v["batchWindowMs"] = json!(batch_window_ms);
        }
        TriggerSource::S3 {
            bucket,
            prefix,
            suffix,
            events,
            watch,
        } => {
            v["type"] = json!("s3");
            v["bucket"] = json!(bucket);
            v["prefix"] = json!(prefix);
            v["suffix"] = json!(suffix);
            v["events"] = json!(events);
            v["watch"] = json!(watch);
        }
    }
    v
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = read_body(
        body,
        64 * 1024,
        ApiError::EntityTooLarge("Request too large".into()),
    )
    .await?;
    let req: NewTrigger = parse_json(&body)?;
    let (function, _) = parse_function_name(&req.function)?;
    super::functions::current(&state, &function).await?;
    let source = match req.kind.as_str() {
        "nats" => {
            let subject = req.subject.ok_or_else(|| {
                ApiError::InvalidParameter("a nats trigger needs a subject".into())
            })?;
            validate_trigger_subject(&subject, state.subjects.prefix())
                .map_err(|e| ApiError::InvalidParameter(e.to_string()))?;
            TriggerSource::Nats { subject }
        }
        "stream" => {
            let stream = req.stream.ok_or_else(|| {
                ApiError::InvalidParameter("a stream trigger needs a stream".into())
            })?;
            if state.js.get_stream(&stream).await.is_err() {
                return Err(ApiError::InvalidParameter(format!(
                    "stream {stream:?} does not exist"
                )));
            }
            let batch_size = req.batch_size.unwrap_or(10);
            if !(1..=10_000).contains(&batch_size) {
                return Err(ApiError::InvalidParameter(
                    "batch size must be 1-10000".into(),
                ));
            }
            let batch_window_ms = req.batch_window_ms.unwrap_or(1000);
            if !(100..=300_000).contains(&batch_window_ms) {
                return Err(ApiError::InvalidParameter(
                    "batch window must be 100 ms - 300 s".into(),
                ));
            }
            TriggerSource::Stream {
                stream,
                batch_size,
                batch_window_ms,
            }
        }
        "s3" => {
            let bucket = req
                .bucket
                .filter(|b| !b.is_empty())
                .ok_or_else(|| ApiError::InvalidParameter("an s3 trigger needs a bucket".into()))?;
            let valid_bucket = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                });
            if !valid_bucket {
                return Err(ApiError::InvalidParameter(format!(
                    "bucket {bucket:?} is not a valid bucket name (3-63 of a-z, 0-9, -, .)"
                )));
            }
            let events = req.events.unwrap_or_default();
            if let Some(bad) = events
                .iter()
                .find(|e| !nimbus_proto::trigger::valid_event_pattern(e))
            {
                return Err(ApiError::InvalidParameter(format!(
                    "event {bad:?} is not an S3 event name (e.g. s3:ObjectCreated:*, s3:ObjectRemoved:Delete)"
                )));
            }
            if let Some(w) = &req.watch {
                nimbus_common::CodeStore::from_url(w)
                    .map_err(|e| ApiError::InvalidParameter(format!("watch: {e}")))?;
            }
            TriggerSource::S3 {
                bucket,
                prefix: req.prefix.unwrap_or_default(),
                suffix: req.suffix.unwrap_or_default(),
                events,
                watch: req.watch,
            }
        }
        other => {
            return Err(ApiError::InvalidParameter(format!(
                "trigger type {other:?} is not supported (supported: nats, s3, stream)"
            )));
        }
    };
    let id = format!("t-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let trigger = TriggerConfig {
        v: WIRE_VERSION,
        id: id.clone(),
        function,
        source,
        created_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default(),
    };
    state
        .triggers
        .create(&id, encode(&trigger))
        .await
        .map_err(|e| ApiError::Service(format!("storing the trigger: {e}")))?;
    tracing::info!(trigger = %id, function = %trigger.function, "trigger created");
    Ok((StatusCode::CREATED, Json(shape(&trigger))))
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let kv = &state.triggers;
    let mut out: Vec<TriggerConfig> = super::bucket_values::<TriggerConfig>(kv)
        .await
        .into_iter()
        .filter(|t| q.get("function").is_none_or(|f| *f == t.function))
        .collect();
    out.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
    Ok(Json(
        json!({ "triggers": out.iter().map(shape).collect::<Vec<_>>() }),
    ))
}

pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let kv = &state.triggers;
    let exists = kv
        .entry(&id)
        .await
        .ok()
        .flatten()
        .is_some_and(|e| e.operation == kv::Operation::Put);
    if !exists
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ApiError::NotFound(format!("No trigger {id}")));
    }
    if let Ok(Some(e)) = kv.entry(&id).await
        && let Ok(t) = decode::<TriggerConfig>(&e.value)
        && let TriggerSource::Stream { stream, .. } = &t.source
        && let Ok(st) = state.js.get_stream(stream).await
    {
        let _ = st.delete_consumer(&format!("nimbus-trigger-{id}")).await;
    }
    kv.delete(&id)
        .await
        .map_err(|e| ApiError::Service(format!("deleting the trigger: {e}")))?;
    tracing::info!(trigger = %id, "trigger deleted");
    Ok(StatusCode::NO_CONTENT)
}
