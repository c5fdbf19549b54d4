//! `Invoke`: `RequestResponse` goes straight to a worker holding a warm instance, or
//! to a scheduler over NATS, and the worker answers this gateway's inbox directly;
//! `Event` is stored in the async stream (202 only after JetStream acknowledged it);
//! `DryRun` checks and answers 204.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use nimbus_proto::{
    AsyncInvocation, FunctionConfig, InvokeOutcome, InvokeReply, InvokeRequest, MAX_ASYNC_PAYLOAD,
    MAX_SYNC_PAYLOAD, WIRE_VERSION, decode, encode,
};

use super::{check_qualifier, parse_function_name, read_body};
use crate::AppState;
use crate::direct::{self, Direct, Dispatching, Placed};
use crate::error::ApiError;

/// Slack on top of the function's timeout for placement and a cold start.
const PLATFORM_SLACK: Duration = Duration::from_secs(30);

enum Kind {
    RequestResponse,
    Event,
    DryRun,
}

pub async fn invoke(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (name, inline_qualifier) = parse_function_name(&raw)?;
    let qualifier = q.get("Qualifier").cloned().or(inline_qualifier);
    check_qualifier(&name, qualifier.as_deref())?;
    let kind = match headers
        .get("X-Amz-Invocation-Type")
        .map(|v| v.to_str().unwrap_or_default())
    {
        None | Some("RequestResponse") => Kind::RequestResponse,
        Some("Event") => Kind::Event,
        Some("DryRun") => Kind::DryRun,
        Some(other) => {
            return Err(ApiError::InvalidParameter(format!(
                "1 validation error detected: Value '{other}' at 'invocationType' failed to satisfy constraint: Member must satisfy enum value set: [Event, RequestResponse, DryRun]"
            )));
        }
    };
    let limit = match kind {
        Kind::Event => MAX_ASYNC_PAYLOAD,
        _ => MAX_SYNC_PAYLOAD,
    };
    let too_large = ApiError::RequestTooLarge(format!(
        "Request must be smaller than {limit} bytes for the InvokeFunction operation"
    ));
    let payload = read_body(body, limit, too_large).await?;
    if !payload.is_empty() && serde_json::from_slice::<serde::de::IgnoredAny>(&payload).is_err() {
        return Err(ApiError::InvalidRequestContent(
            "Could not parse request body into json: the payload is not valid JSON".into(),
        ));
    }
    let (revision, cfg) = lookup(&state, &name).await?;
    let request_id = uuid::Uuid::new_v4().to_string();
    let log_tail = headers
        .get("X-Amz-Log-Type")
        .is_some_and(|v| v.as_bytes() == b"Tail");
    match kind {
        Kind::DryRun => {
            let mut resp = StatusCode::NO_CONTENT.into_response();
            set(&mut resp, "x-amzn-RequestId", &request_id);
            Ok(resp)
        }
        Kind::Event => {
            let inv = AsyncInvocation {
                v: WIRE_VERSION,
                request_id: request_id.clone(),
                function: name.clone(),
                min_revision: revision,
                payload,
                enqueued_at_ms: unix_ms(),
                attempt: 0,
                not_before_ms: 0,
            };
            let subject = state
                .subjects
                .async_invoke(&name)
                .map_err(|e| ApiError::Service(e.to_string()))?;
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", request_id.as_str());
            let ack = state
                .js
                .publish_with_headers(subject, h, encode(&inv))
                .await
                .map_err(|e| ApiError::Service(format!("queueing the invocation: {e}")))?;
            ack.await
                .map_err(|e| ApiError::Service(format!("queueing the invocation: {e}")))?;
            metrics::counter!("nimbus_gateway_invocations_total", "type" => "Event", "outcome" => "queued").increment(1);
            let mut resp = StatusCode::ACCEPTED.into_response();
            set(&mut resp, "x-amzn-RequestId", &request_id);
            Ok(resp)
        }
        Kind::RequestResponse => {
            let reply =
                invoke_sync(&state, &name, revision, &cfg, request_id, payload, log_tail).await?;
            respond(reply)
        }
    }
}

/// Runs a synchronous invocation: straight to a worker known to hold a warm instance
/// of `revision`, else — none known, or it refused — to the worker this gateway's
/// heartbeats show best placed for a cold start ([`crate::direct`]), else — that
/// worker refused or is gone — through a scheduler over NATS; the worker's reply
/// comes back to this gateway's inbox.
/// Shared by `Invoke`, function URLs and routes.
pub async fn invoke_sync(
    state: &AppState,
    name: &str,
    revision: u64,
    cfg: &FunctionConfig,
    request_id: String,
    payload: bytes::Bytes,
    log_tail: bool,
) -> Result<InvokeReply, ApiError> {
    let timeout = Duration::from_secs(u64::from(cfg.timeout_secs)) + PLATFORM_SLACK;
    let warm = match state.dispatch {
        Dispatching::Scheduler => None,
        Dispatching::Direct | Dispatching::WarmOnly => state
            .warm
            .pick(name, revision, |w| direct::usable(state, w))
            .map(|w| (w, Placed::Warm)),
    };
    let cold_to = || match state.dispatch {
        Dispatching::Direct => state
            .workers
            .candidates(name, revision)
            .into_iter()
            .next()
            .map(|w| (w, Placed::Any)),
        Dispatching::WarmOnly | Dispatching::Scheduler => None,
    };
    let mut direct_to = warm.or_else(&cold_to);
    while let Some((worker, placed)) = direct_to.take() {
        // A cold start counts against the worker's free slots until its next
        // heartbeat, so a burst of them spreads. Warm calls do not: they hold a
        // slot for a moment, and thousands a second would read as a full worker.
        if placed == Placed::Any {
            state.workers.dispatched(&worker, name, revision);
        }
        let sent = direct::invoke(
            state,
            &worker,
            placed,
            cfg,
            revision,
            &request_id,
            payload.clone(),
            log_tail,
            timeout,
        )
        .await?;
        match sent {
            Direct::Ran(reply) => {
                if placed == Placed::Any {
                    state.warm.learn(name, revision, &reply.worker_id);
                }
                return Ok(reply);
            }
            // Its instances all busy: a cold start, placed here as well.
            Direct::Refused if placed == Placed::Warm => {
                state.warm.forget(name, &worker);
                direct_to = cold_to();
            }
            Direct::Refused => state.workers.refused(&worker),
            Direct::Unreachable => {
                state.warm.forget_worker(&worker);
                state.workers.refused(&worker);
            }
        }
    }
    let reply = via_scheduler(
        state, name, revision, timeout, request_id, payload, log_tail,
    )
    .await?;
    state.warm.learn(name, revision, &reply.worker_id);
    Ok(reply)
}

async fn via_scheduler(
    state: &AppState,
    name: &str,
    revision: u64,
    timeout: Duration,
    request_id: String,
    payload: bytes::Bytes,
    log_tail: bool,
) -> Result<InvokeReply, ApiError> {
    let req = InvokeRequest {
        v: WIRE_VERSION,
        request_id: request_id.clone(),
        function: name.to_string(),
        min_revision: revision,
        payload,
        log_tail,
    };
    let request = async_nats::Request::new()
        .payload(encode(&req))
        .timeout(Some(timeout));
    let msg = state
        .nats
        .send_request(state.subjects.invoke(), request)
        .await
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => ApiError::Unavailable(
                "No scheduler is running: the invocation cannot be placed".into(),
            ),
            async_nats::RequestErrorKind::TimedOut => ApiError::Service(format!(
                "The invocation {request_id} did not complete within {} s (its worker may have stopped)",
                timeout.as_secs()
            )),
            _ => ApiError::Service(format!("invocation failed: {e}")),
        })?;
    decode(&msg.payload).map_err(|e| ApiError::Service(format!("unreadable invocation reply: {e}")))
}

fn respond(reply: InvokeReply) -> Result<Response, ApiError> {
    let init_duration = reply.init_duration_us;
    let (payload, log_tail, function_error) = match reply.outcome {
        InvokeOutcome::Success { payload, log_tail } => (payload, log_tail, false),
        InvokeOutcome::FunctionError { payload, log_tail } => (payload, log_tail, true),
        InvokeOutcome::Failed(err) => {
            metrics::counter!("nimbus_gateway_invocations_total", "type" => "RequestResponse", "outcome" => "platform_error").increment(1);
            return Err(ApiError::from_wire(err));
        }
    };
    let outcome = if function_error {
        "function_error"
    } else {
        "success"
    };
    metrics::counter!("nimbus_gateway_invocations_total", "type" => "RequestResponse", "outcome" => outcome).increment(1);
    let mut resp = (StatusCode::OK, payload).into_response();
    set(&mut resp, "Content-Type", "application/json");
    set(&mut resp, "x-amzn-RequestId", &reply.request_id);
    set(&mut resp, "X-Amz-Executed-Version", &reply.executed_version);
    if function_error {
        set(&mut resp, "X-Amz-Function-Error", "Unhandled");
    }
    if let Some(init) = init_duration {
        // Not Lambda's: tells load generators (nimbus bench) a call was a cold start.
        set(
            &mut resp,
            "X-Nimbus-Init-Duration-Ms",
            &format!("{:.2}", init as f64 / 1000.0),
        );
    }
    if let Some(tail) = log_tail {
        let b64 = base64::engine::general_purpose::STANDARD.encode(tail.as_bytes());
        set(&mut resp, "X-Amz-Log-Result", &b64);
    }
    Ok(resp)
}

fn set(resp: &mut Response, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// The function's configuration from the mirror; on a miss (created through another
/// gateway a moment ago, or absent) one read of the bucket decides.
pub async fn lookup(
    state: &AppState,
    name: &str,
) -> Result<(u64, std::sync::Arc<nimbus_proto::FunctionConfig>), ApiError> {
    if let Some(found) = state.functions.get(name) {
        return Ok(found);
    }
    super::functions::current(state, name).await?;
    state
        .functions
        .get(name)
        .ok_or_else(|| ApiError::not_found(name))
}
