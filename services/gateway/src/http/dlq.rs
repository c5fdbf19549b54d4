//! Dead letters (`/nimbus/v1/functions/{name}/dlq…`): records of asynchronous
//! invocations that failed without an on-failure destination. List, show, redrive
//! (re-enqueue with the original payload; Lambda has no such call) and purge.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use nimbus_proto::{AsyncInvocation, WIRE_VERSION, encode};
use serde_json::{Value, json};

use super::parse_function_name;
use crate::AppState;
use crate::error::ApiError;

async fn records(state: &AppState, name: &str) -> Result<Vec<(u64, Value)>, ApiError> {
    let subject = state
        .subjects
        .dlq(name)
        .map_err(|e| ApiError::InvalidParameter(e.to_string()))?;
    let raw =
        super::native::read_subject(state, &state.names.dlq_stream(), &subject, 100_000).await?;
    Ok(raw
        .into_iter()
        .map(|(seq, body)| (seq, serde_json::from_slice(&body).unwrap_or(Value::Null)))
        .collect())
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (name, _) = parse_function_name(&raw)?;
    let items: Vec<Value> = records(&state, &name)
        .await?
        .into_iter()
        .map(|(seq, r)| {
            json!({
                "seq": seq,
                "requestId": r["requestContext"]["requestId"],
                "condition": r["requestContext"]["condition"],
                "approximateInvokeCount": r["requestContext"]["approximateInvokeCount"],
                "timestamp": r["timestamp"],
                "errorType": r["responsePayload"]["errorType"],
                "errorMessage": r["responsePayload"]["errorMessage"],
            })
        })
        .collect();
    Ok(Json(json!({ "function": name, "records": items })))
}

pub async fn show(
    State(state): State<Arc<AppState>>,
    Path((raw, seq)): Path<(String, u64)>,
) -> Result<Json<Value>, ApiError> {
    let (name, _) = parse_function_name(&raw)?;
    records(&state, &name)
        .await?
        .into_iter()
        .find(|(s, _)| *s == seq)
        .map(|(_, r)| Json(r))
        .ok_or_else(|| ApiError::NotFound(format!("No dead letter {seq} for {name}")))
}

pub async fn redrive(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (name, _) = parse_function_name(&raw)?;
    let (revision, _) = state
        .functions
        .get(&name)
        .ok_or_else(|| ApiError::not_found(&name))?;
    let stream = state
        .js
        .get_stream(state.names.dlq_stream())
        .await
        .map_err(|e| ApiError::Service(format!("opening the dead-letter stream: {e}")))?;
    let subject = state
        .subjects
        .async_invoke(&name)
        .map_err(|e| ApiError::InvalidParameter(e.to_string()))?;
    let mut count = 0;
    for (seq, rec) in records(&state, &name).await? {
        let payload = match &rec["requestPayload"] {
            Value::Null => bytes::Bytes::new(),
            v => bytes::Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
        };
        let inv = AsyncInvocation {
            v: WIRE_VERSION,
            request_id: uuid::Uuid::new_v4().to_string(),
            function: name.clone(),
            min_revision: revision,
            payload,
            enqueued_at_ms: now_ms(),
            attempt: 0,
            not_before_ms: 0,
        };
        let mut headers = async_nats::HeaderMap::new();
        // A redrive interrupted and repeated enqueues each dead letter once.
        headers.insert("Nats-Msg-Id", format!("redrive:{name}:{seq}").as_str());
        let ack = state
            .js
            .publish_with_headers(subject.clone(), headers, encode(&inv))
            .await
            .map_err(|e| ApiError::Service(format!("re-enqueueing: {e}")))?;
        ack.await
            .map_err(|e| ApiError::Service(format!("re-enqueueing: {e}")))?;
        // Only once the invocation is safely queued does the dead letter go.
        stream
            .delete_message(seq)
            .await
            .map_err(|e| ApiError::Service(format!("removing dead letter {seq}: {e}")))?;
        count += 1;
    }
    tracing::info!(function = %name, count, "dead letters redriven");
    Ok(Json(json!({ "function": name, "redriven": count })))
}

pub async fn purge(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (name, _) = parse_function_name(&raw)?;
    let subject = state
        .subjects
        .dlq(&name)
        .map_err(|e| ApiError::InvalidParameter(e.to_string()))?;
    let stream = state
        .js
        .get_stream(state.names.dlq_stream())
        .await
        .map_err(|e| ApiError::Service(format!("opening the dead-letter stream: {e}")))?;
    let resp = stream
        .purge()
        .filter(subject)
        .await
        .map_err(|e| ApiError::Service(format!("purging: {e}")))?;
    Ok(Json(json!({ "function": name, "purged": resp.purged })))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
