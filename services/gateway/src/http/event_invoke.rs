//! `Put/Update/Get/DeleteFunctionEventInvokeConfig`: how asynchronous invocations of a
//! function are retried and where their records go. Stored inside the function's
//! configuration (one KV entry), so schedulers see it through the same watch.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use nimbus_proto::function::{DEFAULT_MAX_EVENT_AGE_SECS, DEFAULT_MAX_RETRIES};
use nimbus_proto::{Destination, EventInvokeConfig, FunctionConfig};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{check_qualifier, parse_function_name, parse_json, read_body};
use crate::AppState;
use crate::error::ApiError;
use crate::shapes::function_arn;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DestinationInput {
    destination: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DestinationConfigInput {
    on_success: Option<DestinationInput>,
    on_failure: Option<DestinationInput>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EventInvokeInput {
    maximum_retry_attempts: Option<u32>,
    maximum_event_age_in_seconds: Option<u32>,
    destination_config: Option<DestinationConfigInput>,
}

fn shape(cfg: &FunctionConfig, e: &EventInvokeConfig, region: &str) -> Value {
    let dest = |d: &Option<String>| match d {
        Some(d) => json!({ "Destination": d }),
        None => json!({}),
    };
    json!({
        "LastModified": e.last_modified_ms as f64 / 1000.0,
        "FunctionArn": format!("{}:$LATEST", function_arn(region, &cfg.name)),
        "MaximumRetryAttempts": e.maximum_retry_attempts,
        "MaximumEventAgeInSeconds": e.maximum_event_age_secs,
        "DestinationConfig": { "OnSuccess": dest(&e.on_success), "OnFailure": dest(&e.on_failure) },
    })
}

fn validate(e: &EventInvokeConfig) -> Result<(), ApiError> {
    if e.maximum_retry_attempts > 2 {
        return Err(ApiError::InvalidParameter(format!(
            "1 validation error detected: Value '{}' at 'maximumRetryAttempts' failed to satisfy constraint: Member must have value less than or equal to 2",
            e.maximum_retry_attempts
        )));
    }
    if !(60..=21_600).contains(&e.maximum_event_age_secs) {
        return Err(ApiError::InvalidParameter(format!(
            "1 validation error detected: Value '{}' at 'maximumEventAgeInSeconds' failed to satisfy constraint: Member must have value between 60 and 21600",
            e.maximum_event_age_secs
        )));
    }
    for d in [&e.on_success, &e.on_failure].into_iter().flatten() {
        Destination::parse(d).map_err(|err| ApiError::InvalidParameter(err.to_string()))?;
    }
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

async fn write(
    state: Arc<AppState>,
    raw: String,
    q: HashMap<String, String>,
    body: Body,
    merge: bool,
) -> Result<Json<Value>, ApiError> {
    let (name, inline) = parse_function_name(&raw)?;
    check_qualifier(
        &name,
        q.get("Qualifier").map(String::as_str).or(inline.as_deref()),
    )?;
    let body = read_body(
        body,
        64 * 1024,
        ApiError::EntityTooLarge("Request too large".into()),
    )
    .await?;
    let input: EventInvokeInput = parse_json(&body)?;
    if merge
        && super::functions::current(&state, &name)
            .await?
            .event_invoke
            .is_none()
    {
        return Err(ApiError::NotFound(format!(
            "The function {} doesn't have an EventInvokeConfig",
            function_arn(&state.region, &name)
        )));
    }
    let cfg = super::functions::update(&state, &name, None, |c| {
        let base = match (&c.event_invoke, merge) {
            (Some(existing), true) => existing.clone(),
            _ => EventInvokeConfig {
                maximum_retry_attempts: DEFAULT_MAX_RETRIES,
                maximum_event_age_secs: DEFAULT_MAX_EVENT_AGE_SECS,
                on_success: None,
                on_failure: None,
                last_modified_ms: 0,
            },
        };
        let mut e = base;
        if let Some(r) = input.maximum_retry_attempts {
            e.maximum_retry_attempts = r;
        }
        if let Some(a) = input.maximum_event_age_in_seconds {
            e.maximum_event_age_secs = a;
        }
        if let Some(d) = &input.destination_config {
            if let Some(s) = &d.on_success {
                e.on_success = s.destination.clone().filter(|s| !s.is_empty());
            }
            if let Some(f) = &d.on_failure {
                e.on_failure = f.destination.clone().filter(|s| !s.is_empty());
            }
        }
        e.last_modified_ms = now_ms();
        validate(&e)?;
        c.event_invoke = Some(e);
        Ok(())
    })
    .await?;
    let e = cfg.event_invoke.as_ref().expect("just written");
    Ok(Json(shape(&cfg, e, &state.region)))
}

pub async fn put(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    write(state, raw, q, body, false).await
}

pub async fn update(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    write(state, raw, q, body, true).await
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let (name, inline) = parse_function_name(&raw)?;
    check_qualifier(
        &name,
        q.get("Qualifier").map(String::as_str).or(inline.as_deref()),
    )?;
    let cfg = super::functions::current(&state, &name).await?;
    match &cfg.event_invoke {
        Some(e) => Ok(Json(shape(&cfg, e, &state.region))),
        None => Err(ApiError::NotFound(format!(
            "The function {} doesn't have an EventInvokeConfig",
            function_arn(&state.region, &name)
        ))),
    }
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (name, _) = parse_function_name(&raw)?;
    let cfg = super::functions::current(&state, &name).await?;
    let items: Vec<Value> = cfg
        .event_invoke
        .iter()
        .map(|e| shape(&cfg, e, &state.region))
        .collect();
    Ok(Json(json!({ "FunctionEventInvokeConfigs": items })))
}

pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<StatusCode, ApiError> {
    let (name, inline) = parse_function_name(&raw)?;
    check_qualifier(
        &name,
        q.get("Qualifier").map(String::as_str).or(inline.as_deref()),
    )?;
    let current = super::functions::current(&state, &name).await?;
    if current.event_invoke.is_none() {
        return Err(ApiError::NotFound(format!(
            "The function {} doesn't have an EventInvokeConfig",
            function_arn(&state.region, &name)
        )));
    }
    super::functions::update(&state, &name, None, |c| {
        c.event_invoke = None;
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
