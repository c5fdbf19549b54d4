//! Schedules (`/nimbus/v1/schedules`): invoke a function on a cron, rate or at
//! expression (see `nimbus-schedule` for the grammar). Stored in the schedules KV
//! bucket; schedulers fire them. `GET /nimbus/v1/schedule-preview` lists the next
//! fire times of any expression.

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::jetstream::kv;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use nimbus_proto::{Misfire, ScheduleConfig, WIRE_VERSION, decode, encode, validate_function_name};
use nimbus_schedule::Schedule;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{parse_function_name, parse_json, read_body};
use crate::AppState;
use crate::error::ApiError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSchedule {
    name: String,
    function: String,
    expression: String,
    timezone: Option<String>,
    payload: Option<Value>,
    /// RFC 3339.
    start: Option<String>,
    end: Option<String>,
    misfire: Option<String>,
}

fn now_ms() -> u64 {
    Utc::now().timestamp_millis() as u64
}

fn rfc3339_ms(field: &str, s: &str) -> Result<u64, ApiError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis() as u64)
        .map_err(|_| {
            ApiError::InvalidParameter(format!(
                "{field} {s:?} is not an RFC 3339 time (2027-01-01T00:00:00Z)"
            ))
        })
}

fn iso(ms: u64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms as i64)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

fn shape(s: &ScheduleConfig) -> Value {
    let next =
        Schedule::parse(&s.expression, s.timezone.as_deref(), s.start_ms as i64)
            .ok()
            .and_then(|sch| {
                sch.next_after(Utc::now().max(
                    DateTime::from_timestamp_millis(s.start_ms as i64 - 1).unwrap_or_default(),
                ))
            })
            .filter(|n| s.end_ms.is_none_or(|e| n.timestamp_millis() <= e as i64))
            .map(|n| n.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    json!({
        "name": s.name,
        "function": s.function,
        "expression": s.expression,
        "timezone": s.timezone.clone().unwrap_or_else(|| "UTC".into()),
        "payload": s.payload.as_ref().and_then(|p| serde_json::from_str::<Value>(p).ok()),
        "start": iso(s.start_ms),
        "end": s.end_ms.map(iso),
        "misfire": s.misfire.as_string(),
        "next": next,
    })
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = read_body(
        body,
        256 * 1024,
        ApiError::EntityTooLarge("Request too large".into()),
    )
    .await?;
    let req: NewSchedule = parse_json(&body)?;
    validate_function_name(&req.name)
        .map_err(|e| ApiError::InvalidParameter(format!("schedule name {:?}: {e}", req.name)))?;
    let (function, _) = parse_function_name(&req.function)?;
    super::functions::current(&state, &function).await?;
    let created = now_ms();
    let start_ms = match &req.start {
        Some(s) => rfc3339_ms("start", s)?,
        None => created,
    };
    let end_ms = req
        .end
        .as_deref()
        .map(|e| rfc3339_ms("end", e))
        .transpose()?;
    if end_ms.is_some_and(|e| e <= start_ms) {
        return Err(ApiError::InvalidParameter("end must be after start".into()));
    }
    Schedule::parse(&req.expression, req.timezone.as_deref(), start_ms as i64)
        .map_err(|e| ApiError::InvalidParameter(e.to_string()))?;
    let misfire = match req.misfire.as_deref() {
        None => Misfire::default(),
        Some(m) => Misfire::parse(m).ok_or_else(|| {
            ApiError::InvalidParameter(format!(
                "misfire {m:?} is not skip, fire_once or catch_up:N (1-1000)"
            ))
        })?,
    };
    let payload = req.payload.map(|p| p.to_string());
    if payload
        .as_ref()
        .is_some_and(|p| p.len() > nimbus_proto::MAX_ASYNC_PAYLOAD)
    {
        return Err(ApiError::RequestTooLarge(
            "the payload is larger than 1 MB".into(),
        ));
    }
    let cfg = ScheduleConfig {
        v: WIRE_VERSION,
        name: req.name.clone(),
        function,
        expression: req.expression.trim().to_string(),
        timezone: req.timezone.filter(|t| !t.is_empty()),
        payload,
        start_ms,
        end_ms,
        misfire,
        created_ms: created,
    };
    state
        .schedules
        .create(&cfg.name, encode(&cfg))
        .await
        .map_err(|e| match e.kind() {
            kv::CreateErrorKind::AlreadyExists => {
                ApiError::Conflict(format!("schedule {} already exists", cfg.name))
            }
            _ => ApiError::Service(format!("storing the schedule: {e}")),
        })?;
    tracing::info!(schedule = %cfg.name, function = %cfg.function, expression = %cfg.expression, "schedule created");
    Ok((StatusCode::CREATED, Json(shape(&cfg))))
}

pub async fn list(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let kv = &state.schedules;
    let mut out: Vec<ScheduleConfig> = super::bucket_values(kv).await;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(
        json!({ "schedules": out.iter().map(shape).collect::<Vec<_>>() }),
    ))
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    validate_function_name(&name).map_err(|_| ApiError::NotFound(format!("No schedule {name}")))?;
    match state.schedules.entry(&name).await {
        Ok(Some(e)) if e.operation == kv::Operation::Put => {
            let s: ScheduleConfig =
                decode(&e.value).map_err(|e| ApiError::Service(e.to_string()))?;
            Ok(Json(shape(&s)))
        }
        _ => Err(ApiError::NotFound(format!("No schedule {name}"))),
    }
}

pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let _ = get(State(state.clone()), Path(name.clone())).await?;
    state
        .schedules
        .delete(&name)
        .await
        .map_err(|e| ApiError::Service(format!("deleting the schedule: {e}")))?;
    // Its firing record goes too, so a new schedule of the same name starts fresh.
    let _ = state.schedule_state.purge(&name).await;
    tracing::info!(schedule = %name, "schedule deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /nimbus/v1/schedule-preview?expression=E&timezone=TZ&after=RFC3339&count=N`.
pub async fn preview(Query(q): Query<HashMap<String, String>>) -> Result<Json<Value>, ApiError> {
    let expression = q
        .get("expression")
        .ok_or_else(|| ApiError::InvalidParameter("expression is required".into()))?;
    let after = match q.get("after") {
        Some(a) => DateTime::<Utc>::from_timestamp_millis(rfc3339_ms("after", a)? as i64)
            .unwrap_or_default(),
        None => Utc::now(),
    };
    let count: usize = match q.get("count") {
        Some(c) => c
            .parse()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::InvalidParameter(format!("count {c:?} must be 1-1000")))?,
        None => 10,
    };
    let schedule = Schedule::parse(
        expression,
        q.get("timezone").map(String::as_str),
        after.timestamp_millis(),
    )
    .map_err(|e| ApiError::InvalidParameter(e.to_string()))?;
    let times: Vec<String> = schedule
        .preview(after, count)
        .iter()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .collect();
    Ok(Json(json!({ "expression": expression, "times": times })))
}
