//! Function management: create, get, list, update code, update configuration,
//! delete. Writes go to the functions KV bucket with compare-and-set; the local
//! mirror is updated at once so the next invoke through this gateway sees the write.

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::jetstream::kv;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use nimbus_proto::{CodeRef, FunctionConfig, WIRE_VERSION, encode, is_supported_runtime};
use serde_json::json;

use super::{parse_function_name, parse_json, read_body};
use crate::AppState;
use crate::code;
use crate::error::ApiError;
use crate::shapes::{self, CodeInput, CreateFunction, UpdateCode, UpdateConfiguration};

/// Base64 of a 50 MB zip plus the JSON around it.
const MAX_CODE_REQUEST: usize = code::MAX_ZIP_BYTES / 3 * 4 + 64 * 1024;

fn too_large() -> ApiError {
    ApiError::EntityTooLarge(format!(
        "Request must be smaller than {} bytes for the CreateFunction/UpdateFunctionCode operation",
        MAX_CODE_REQUEST
    ))
}

fn validate_limits(
    timeout: u32,
    memory: u32,
    runtime: &str,
    handler: &str,
) -> Result<(), ApiError> {
    if !(1..=900).contains(&timeout) {
        return Err(ApiError::InvalidParameter(format!(
            "1 validation error detected: Value '{timeout}' at 'timeout' failed to satisfy constraint: Member must have value between 1 and 900"
        )));
    }
    if !(128..=10240).contains(&memory) {
        return Err(ApiError::InvalidParameter(format!(
            "1 validation error detected: Value '{memory}' at 'memorySize' failed to satisfy constraint: Member must have value between 128 and 10240"
        )));
    }
    if !is_supported_runtime(runtime) {
        return Err(ApiError::InvalidParameter(format!(
            "Value {runtime} at 'runtime' is not supported. Supported runtimes: provided, provided.al2, provided.al2023, python3.x, nodejs18.x, nodejs20.x, nodejs22.x"
        )));
    }
    if handler.is_empty() && (runtime.starts_with("python") || runtime.starts_with("nodejs")) {
        return Err(ApiError::InvalidParameter(format!(
            "Handler is required for the {runtime} runtime"
        )));
    }
    if handler.len() > 128 {
        return Err(ApiError::InvalidParameter(
            "Handler must be at most 128 characters".into(),
        ));
    }
    Ok(())
}

fn validate_environment(env: &std::collections::BTreeMap<String, String>) -> Result<(), ApiError> {
    let total: usize = env.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > 4096 {
        return Err(ApiError::InvalidParameter(
            "Lambda was unable to configure your environment variables because the environment variables you have provided exceeded the 4KB limit".into(),
        ));
    }
    for k in env.keys() {
        let ok = k.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(ApiError::InvalidParameter(format!(
                "Environment variable name {k:?} is invalid: use letters, digits and underscores, starting with a letter"
            )));
        }
    }
    Ok(())
}

/// Turns `Code` (inline zip or a reference to an object in the store) into a stored
/// content-addressed package.
async fn ingest_code(
    state: &AppState,
    function: &str,
    input: CodeInput,
) -> Result<CodeRef, ApiError> {
    if input.image_uri.is_some() {
        return Err(ApiError::InvalidParameter(
            "Container images are not supported; upload a .zip package".into(),
        ));
    }
    let bytes = match (input.zip_file, input.s3_key) {
        (Some(b64), _) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| {
                    ApiError::InvalidParameter(format!("Code.ZipFile is not valid base64: {e}"))
                })?;
            if bytes.len() > code::MAX_ZIP_BYTES {
                return Err(too_large());
            }
            Bytes::from(bytes)
        }
        (None, Some(key)) => {
            if let Some(bucket) = &input.s3_bucket
                && let Some(store_bucket) = store_bucket(state.code.url())
                && bucket != &store_bucket
            {
                return Err(ApiError::InvalidParameter(format!(
                    "S3Bucket {bucket} is not this cluster's code store bucket ({store_bucket})"
                )));
            }
            code::read_existing(&state.code, &key).await?
        }
        (None, None) => {
            return Err(ApiError::InvalidParameter(
                "Please provide a source for function code: Code.ZipFile or Code.S3Bucket/S3Key"
                    .into(),
            ));
        }
    };
    code::store_package(&state.code, function, bytes).await
}

fn store_bucket(url: &str) -> Option<String> {
    let rest = url.strip_prefix("s3://")?;
    Some(rest.split('/').next().unwrap_or_default().to_string())
}

pub async fn create(State(state): State<Arc<AppState>>, body: Body) -> Result<Response, ApiError> {
    let body = read_body(body, MAX_CODE_REQUEST, too_large()).await?;
    let req: CreateFunction = parse_json(&body)?;
    let (name, _) = parse_function_name(&req.function_name)?;
    if req.package_type.as_deref().is_some_and(|p| p != "Zip") {
        return Err(ApiError::InvalidParameter(
            "Only PackageType Zip is supported".into(),
        ));
    }
    let runtime = req.runtime.ok_or_else(|| {
        ApiError::InvalidParameter("Runtime is required for .zip packages".into())
    })?;
    let handler = req.handler.unwrap_or_default();
    let timeout = req.timeout.unwrap_or(3);
    let memory = req.memory_size.unwrap_or(128);
    validate_limits(timeout, memory, &runtime, &handler)?;
    let environment = req.environment.map(|e| e.variables).unwrap_or_default();
    validate_environment(&environment)?;
    if state.functions.get(&name).is_some() {
        return Err(ApiError::Conflict(format!(
            "Function already exist: {name}"
        )));
    }
    let code = ingest_code(&state, &name, req.code).await?;
    let cfg = FunctionConfig {
        v: WIRE_VERSION,
        name: name.clone(),
        runtime,
        handler,
        role: req.role.unwrap_or_default(),
        description: req.description.unwrap_or_default(),
        timeout_secs: timeout,
        memory_mb: memory,
        environment,
        code,
        last_modified: shapes::last_modified_now(),
        revision_id: uuid::Uuid::new_v4().to_string(),
        ephemeral_storage_mb: req.ephemeral_storage.map(|e| e.size).unwrap_or(512),
        event_invoke: None,
        url: None,
    };
    let revision = state
        .functions
        .kv
        .create(&name, encode(&cfg))
        .await
        .map_err(|e| match e.kind() {
            kv::CreateErrorKind::AlreadyExists => {
                ApiError::Conflict(format!("Function already exist: {name}"))
            }
            _ => ApiError::Service(format!("storing the function: {e}")),
        })?;
    state.functions.insert(&name, revision, cfg.clone());
    tracing::info!(function = %name, revision, "function created");
    Ok((
        StatusCode::CREATED,
        Json(shapes::configuration(&cfg, &state.region)),
    )
        .into_response())
}

/// Applies `change` to the current configuration with compare-and-set, retrying
/// when another writer got there first.
pub(crate) async fn update<F>(
    state: &AppState,
    name: &str,
    expect_revision_id: Option<&str>,
    mut change: F,
) -> Result<FunctionConfig, ApiError>
where
    F: FnMut(&mut FunctionConfig) -> Result<(), ApiError>,
{
    for _ in 0..5 {
        let entry = state
            .functions
            .kv
            .entry(name)
            .await
            .map_err(|e| ApiError::Service(format!("reading the function: {e}")))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Err(ApiError::not_found(name));
        };
        let mut cfg: FunctionConfig = nimbus_proto::decode(&entry.value)
            .map_err(|e| ApiError::Service(format!("stored configuration unreadable: {e}")))?;
        if let Some(expected) = expect_revision_id
            && expected != cfg.revision_id
        {
            return Err(ApiError::PreconditionFailed(
                "The Revision Id provided does not match the latest Revision Id. Call the GetFunction/GetAlias API to retrieve the latest Revision Id".into(),
            ));
        }
        change(&mut cfg)?;
        cfg.last_modified = shapes::last_modified_now();
        cfg.revision_id = uuid::Uuid::new_v4().to_string();
        match state
            .functions
            .kv
            .update(name, encode(&cfg), entry.revision)
            .await
        {
            Ok(revision) => {
                state.functions.insert(name, revision, cfg.clone());
                tracing::info!(function = %name, revision, "function updated");
                return Ok(cfg);
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
            Err(e) => return Err(ApiError::Service(format!("storing the function: {e}"))),
        }
    }
    Err(ApiError::Conflict(format!(
        "The function {name} is being updated by another request; try again"
    )))
}

pub async fn update_code(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (name, _) = parse_function_name(&raw)?;
    let body = read_body(body, MAX_CODE_REQUEST, too_large()).await?;
    let req: UpdateCode = parse_json(&body)?;
    if state.functions.get(&name).is_none()
        && state
            .functions
            .kv
            .entry(&name)
            .await
            .ok()
            .flatten()
            .is_none()
    {
        return Err(ApiError::not_found(&name));
    }
    let code = ingest_code(
        &state,
        &name,
        CodeInput {
            zip_file: req.zip_file,
            s3_bucket: req.s3_bucket,
            s3_key: req.s3_key,
            image_uri: req.image_uri,
        },
    )
    .await?;
    if req.dry_run {
        let (_, cfg) = state
            .functions
            .get(&name)
            .ok_or_else(|| ApiError::not_found(&name))?;
        let mut cfg = (*cfg).clone();
        cfg.code = code;
        return Ok(Json(shapes::configuration(&cfg, &state.region)));
    }
    let cfg = update(&state, &name, req.revision_id.as_deref(), |c| {
        c.code = code.clone();
        Ok(())
    })
    .await?;
    Ok(Json(shapes::configuration(&cfg, &state.region)))
}

pub async fn update_configuration(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (name, _) = parse_function_name(&raw)?;
    let body = read_body(
        body,
        1024 * 1024,
        ApiError::EntityTooLarge("Request too large".into()),
    )
    .await?;
    let req: UpdateConfiguration = parse_json(&body)?;
    if let Some(env) = req.environment.as_ref() {
        validate_environment(&env.variables)?;
    }
    let cfg = update(&state, &name, req.revision_id.as_deref(), |c| {
        if let Some(r) = &req.runtime {
            c.runtime = r.clone();
        }
        if let Some(h) = &req.handler {
            c.handler = h.clone();
        }
        if let Some(r) = &req.role {
            c.role = r.clone();
        }
        if let Some(d) = &req.description {
            c.description = d.clone();
        }
        if let Some(t) = req.timeout {
            c.timeout_secs = t;
        }
        if let Some(m) = req.memory_size {
            c.memory_mb = m;
        }
        if let Some(e) = &req.environment {
            c.environment = e.variables.clone();
        }
        if let Some(e) = &req.ephemeral_storage {
            c.ephemeral_storage_mb = e.size;
        }
        // Validated on the merged configuration; nothing is written if it fails.
        validate_limits(c.timeout_secs, c.memory_mb, &c.runtime, &c.handler)
    })
    .await?;
    Ok(Json(shapes::configuration(&cfg, &state.region)))
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (name, qualifier) = parse_function_name(&raw)?;
    super::check_qualifier(&name, qualifier.as_deref())?;
    let cfg = current(&state, &name).await?;
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1:8080");
    let path = format!("/nimbus/v1/functions/{name}/code");
    // Like Lambda's presigned S3 URL: works without credentials for a while.
    let location = match &state.access_keys {
        Some(keys) => format!(
            "http://{host}{path}?{}",
            keys.presign(
                &path,
                chrono::Utc::now().timestamp() + crate::auth::LINK_SECS
            )
        ),
        None => format!("http://{host}{path}"),
    };
    Ok(Json(json!({
        "Configuration": shapes::configuration(&cfg, &state.region),
        "Code": {
            "RepositoryType": "S3",
            "Location": location,
        },
        "Tags": {},
    })))
}

pub async fn get_configuration(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (name, qualifier) = parse_function_name(&raw)?;
    super::check_qualifier(&name, qualifier.as_deref())?;
    let cfg = current(&state, &name).await?;
    Ok(Json(shapes::configuration(&cfg, &state.region)))
}

/// The current configuration; control-plane reads go to the bucket, so a read
/// after a write through another gateway is never stale.
pub async fn current(state: &AppState, name: &str) -> Result<FunctionConfig, ApiError> {
    let entry = state
        .functions
        .kv
        .entry(name)
        .await
        .map_err(|e| ApiError::Service(format!("reading the function: {e}")))?;
    match entry {
        Some(e) if e.operation == kv::Operation::Put => {
            state.functions.apply(&e);
            nimbus_proto::decode(&e.value)
                .map_err(|e| ApiError::Service(format!("stored configuration unreadable: {e}")))
        }
        _ => Err(ApiError::not_found(name)),
    }
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let max: usize = match q.get("MaxItems") {
        Some(m) => m
            .parse()
            .ok()
            .filter(|m| (1..=10_000).contains(m))
            .ok_or_else(|| ApiError::InvalidParameter(format!("MaxItems {m:?} must be 1-10000")))?,
        None => 50,
    };
    let marker = q.get("Marker").cloned().unwrap_or_default();
    let all = state.functions.list();
    let page: Vec<_> = all
        .iter()
        .filter(|(name, _, _)| marker.is_empty() || name.as_str() > marker.as_str())
        .take(max + 1)
        .collect();
    let more = page.len() > max;
    let functions: Vec<_> = page
        .iter()
        .take(max)
        .map(|(_, _, cfg)| shapes::configuration(cfg, &state.region))
        .collect();
    let mut doc = json!({ "Functions": functions });
    if more && let Some((last, _, _)) = page.get(max - 1) {
        doc["NextMarker"] = json!(last);
    }
    Ok(Json(doc))
}

pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (name, qualifier) = parse_function_name(&raw)?;
    super::check_qualifier(&name, qualifier.as_deref())?;
    current(&state, &name).await?;
    state
        .functions
        .kv
        .delete(&name)
        .await
        .map_err(|e| ApiError::Service(format!("deleting the function: {e}")))?;
    state.functions.remove(&name);
    state.warm.forget_function(&name);
    tracing::info!(function = %name, "function deleted");
    Ok(StatusCode::NO_CONTENT)
}
