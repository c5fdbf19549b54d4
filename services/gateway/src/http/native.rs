//! The native API (`/nimbus/v1/…`): what Lambda's API has no call for. Code download
//! (`get_function`'s `Code.Location`), logs, health and metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use futures::StreamExt;
use nimbus_proto::LogRecord;
use serde_json::json;

use super::parse_function_name;
use crate::AppState;
use crate::code;
use crate::error::ApiError;

pub async fn healthz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    match state.nats.connection_state() {
        async_nats::connection::State::Connected => {
            (axum::http::StatusCode::OK, Json(json!({"status": "ok"})))
        }
        other => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "degraded", "nats": other.to_string()})),
        ),
    }
}

/// `GET /nimbus/v1/cluster`: workers heard from in the last 3 s.
pub async fn cluster(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let mut workers: Vec<_> = state
        .workers
        .snapshot()
        .into_iter()
        .map(|(age, hb)| {
            json!({
                "id": hb.worker_id,
                "slots": hb.slots,
                "busy": hb.busy,
                "draining": hb.draining,
                "warm": hb.warm.iter().map(|x| x.idle).sum::<u32>(),
                "last_seen_ms": age.as_millis() as u64,
                "sandbox": hb.sandbox,
            })
        })
        .collect();
    workers.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Json(json!({ "workers": workers }))
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

pub async fn download_code(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let (name, _) = parse_function_name(&raw)?;
    let cfg = super::functions::current(&state, &name).await?;
    let bytes = code::read_package(&state.code, &cfg.code).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/zip".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}.zip\""),
            ),
        ],
        bytes,
    ))
}

/// `GET /nimbus/v1/functions/{name}/logs?limit=N`: the last N invocation records
/// (default 20, at most 1000 — the logs stream keeps the last 1000 messages per
/// function, each holding one or more records).
pub async fn logs(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (name, _) = parse_function_name(&raw)?;
    let limit: usize = q
        .get("limit")
        .map(|l| {
            l.parse()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| ApiError::InvalidParameter(format!("limit {l:?} must be 1-1000")))
        })
        .transpose()?
        .unwrap_or(20);
    let subject = state
        .subjects
        .logs(&name)
        .map_err(|e| ApiError::InvalidParameter(e.to_string()))?;
    // Every message holds at least one record: the last `limit` messages hold the
    // last `limit` records.
    let raw = read_subject(&state, &state.names.logs_stream(), &subject, limit).await?;
    let all: Vec<LogRecord> = raw
        .into_iter()
        .filter_map(|(_, body)| nimbus_proto::decode_log_message(&body).ok())
        .flatten()
        .collect();
    let records: Vec<serde_json::Value> = all[all.len().saturating_sub(limit)..]
        .iter()
        .map(|rec| {
            json!({
                "timestamp": rec.timestamp_ms,
                "requestId": rec.request_id,
                "message": rec.text,
            })
        })
        .collect();
    Ok(Json(json!({ "function": name, "events": records })))
}

/// The last `limit` messages on `subject` in `stream`, with their sequence numbers,
/// read through an ordered consumer up to the subject's last message.
pub async fn read_subject(
    state: &AppState,
    stream: &str,
    subject: &str,
    limit: usize,
) -> Result<Vec<(u64, bytes::Bytes)>, ApiError> {
    let stream = state
        .js
        .get_stream(stream)
        .await
        .map_err(|e| ApiError::Service(format!("opening stream {stream}: {e}")))?;
    let last = match stream.get_last_raw_message_by_subject(subject).await {
        Ok(m) => m.sequence,
        Err(_) => return Ok(vec![]),
    };
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.to_string(),
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| ApiError::Service(format!("reading {subject}: {e}")))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| ApiError::Service(format!("reading {subject}: {e}")))?;
    let mut out: std::collections::VecDeque<(u64, bytes::Bytes)> = Default::default();
    while let Ok(Some(Ok(msg))) =
        tokio::time::timeout(Duration::from_secs(2), messages.next()).await
    {
        let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(last);
        out.push_back((seq, msg.payload.clone()));
        if out.len() > limit {
            out.pop_front();
        }
        if seq >= last {
            break;
        }
    }
    Ok(out.into())
}

/// `POST /nimbus/v1/events/s3`: a webhook for S3-style notifications (MinIO's and
/// Ceph's webhook targets). Answered once a scheduler has queued the invocations
/// (200 `{"queued": n}`); a malformed document is a 400 naming the problem; with no
/// scheduler running, 503 so the sender retries.
pub async fn s3_webhook(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body = super::read_body(
        body,
        nimbus_proto::MAX_SYNC_PAYLOAD,
        ApiError::RequestTooLarge("notification larger than 6 MB".into()),
    )
    .await?;
    let doc: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::InvalidRequestContent(format!("notification is not JSON: {e}")))?;
    if !doc.get("Records").is_some_and(serde_json::Value::is_array) {
        return Err(ApiError::InvalidRequestContent(
            "notification has no Records array".into(),
        ));
    }
    let mut h = async_nats::HeaderMap::new();
    // Senders retry: the same body (or their request id) queues once.
    let id = headers
        .get("x-amz-request-id")
        .or(headers.get("x-request-id"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| {
            use sha2::Digest;
            format!("{:x}", sha2::Sha256::digest(&body))
        });
    h.insert("Nimbus-Event-Id", id.as_str());
    let request = async_nats::Request::new()
        .headers(h)
        .payload(body)
        .timeout(Some(Duration::from_secs(30)));
    let reply = state
        .nats
        .send_request(state.s3_events_subject.clone(), request)
        .await
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => {
                ApiError::Unavailable("No scheduler is running to take the event".into())
            }
            _ => ApiError::Service(format!("routing the event: {e}")),
        })?;
    let answer: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
    if let Some(err) = answer.get("error").and_then(|e| e.as_str()) {
        return Err(ApiError::InvalidRequestContent(format!(
            "notification rejected: {err}"
        )));
    }
    Ok(Json(answer))
}
