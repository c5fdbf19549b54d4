//! The web front: function URLs and HTTP routes. A request becomes an API Gateway
//! HTTP API v2 event (`version: "2.0"`), the function runs synchronously, and its
//! result maps back: `{statusCode, headers, body, isBase64Encoded, cookies}`, or any
//! other JSON value as a 200 `application/json` body. A function error is a 502.
//!
//! URL scheme (nothing here can shadow the gateway's own API):
//! - function URLs: `http://<gateway>/fn/<function>/<anything>` — `rawPath` is the
//!   part after `/fn/<function>` (Lambda's URLs are hostnames; ours are a prefix);
//! - routes: the path as given (`/hello/{name}`), at the gateway's root; paths under
//!   `/2015-03-31`, `/2019-09-25`, `/2021-10-31`, `/nimbus`, `/fn`, `/healthz` and
//!   `/metrics` are refused when the route is added.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use chrono::Utc;
use nimbus_proto::route::{match_path, validate_route};
use nimbus_proto::{InvokeOutcome, RouteConfig, WIRE_VERSION, encode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::invocations::{invoke_sync, lookup};
use super::{parse_function_name, parse_json, read_body};
use crate::AppState;
use crate::error::ApiError;
use crate::shapes::function_arn;

fn message(status: StatusCode, text: &str) -> Response {
    (status, Json(json!({ "message": text }))).into_response()
}

/// `/fn/{name}` and `/fn/{name}/{*rest}`.
pub async fn function_url(
    State(state): State<Arc<AppState>>,
    Path(params): Path<Vec<(String, String)>>,
    req: Request,
) -> Response {
    let name = params
        .iter()
        .find(|(k, _)| k == "name")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let rest = params
        .iter()
        .find(|(k, _)| k == "rest")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let Ok((revision, cfg)) = lookup(&state, &name).await else {
        return message(StatusCode::NOT_FOUND, "Not Found");
    };
    let Some(url) = &cfg.url else {
        return message(StatusCode::NOT_FOUND, "Not Found");
    };
    // AWS_IAM: a SigV4-signed caller only (and none at all when no keys are set).
    let req = if url.auth_type == "AWS_IAM" {
        let Some(keys) = &state.access_keys else {
            return message(StatusCode::FORBIDDEN, "Forbidden");
        };
        match crate::auth::check(keys, req).await {
            Ok(req) => req,
            Err(_) => return message(StatusCode::FORBIDDEN, "Forbidden"),
        }
    } else {
        req
    };
    let raw_path = format!("/{rest}");
    serve(
        &state, &name, revision, &cfg, "$default", raw_path, None, req,
    )
    .await
}

/// Everything no other route took: the HTTP routes.
pub async fn routes_fallback(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let method = req.method().as_str().to_string();
    let mut candidates: Vec<(RouteConfig, Vec<(String, String)>)> = state
        .routes
        .list()
        .into_iter()
        .filter(|(_, _, r)| r.method == method || r.method == "ANY")
        .filter_map(|(_, _, r)| match_path(&r.path, &path).map(|p| ((*r).clone(), p)))
        .collect();
    // Most specific first: an exact method over ANY, fewer parameters over more.
    candidates.sort_by_key(|(r, p)| (r.method == "ANY", p.len(), r.path.contains('+')));
    let Some((route, params)) = candidates.into_iter().next() else {
        return ApiError::NotFound(format!("No route for {method} {path}")).into_response();
    };
    let Ok((revision, cfg)) = lookup(&state, &route.function).await else {
        return message(StatusCode::BAD_GATEWAY, "Internal Server Error");
    };
    let route_key = format!("{} {}", route.method, route.path);
    let params: BTreeMap<String, String> = params.into_iter().collect();
    serve(
        &state,
        &route.function,
        revision,
        &cfg,
        &route_key,
        path,
        Some(params),
        req,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    state: &AppState,
    function: &str,
    revision: u64,
    cfg: &nimbus_proto::FunctionConfig,
    route_key: &str,
    raw_path: String,
    path_params: Option<BTreeMap<String, String>>,
    req: Request,
) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let event = match to_event(req, route_key, &raw_path, path_params, &request_id).await {
        Ok(e) => e,
        Err(e) => return e.into_response(),
    };
    let payload = Bytes::from(serde_json::to_vec(&event).unwrap_or_default());
    if payload.len() > nimbus_proto::MAX_SYNC_PAYLOAD {
        return message(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large");
    }
    let reply = match invoke_sync(
        state,
        function,
        revision,
        cfg,
        request_id.clone(),
        payload,
        false,
    )
    .await
    {
        Ok(r) => r,
        Err(ApiError::TooManyRequests(_)) => {
            return message(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests");
        }
        Err(e) => {
            tracing::warn!(%function, %request_id, error = %e, "web invocation failed");
            return message(StatusCode::BAD_GATEWAY, "Internal Server Error");
        }
    };
    let mut resp = match reply.outcome {
        InvokeOutcome::Success { payload, .. } => from_result(&payload),
        InvokeOutcome::FunctionError { .. } => {
            message(StatusCode::BAD_GATEWAY, "Internal Server Error")
        }
        InvokeOutcome::Failed(e) => match ApiError::from_wire(e) {
            ApiError::TooManyRequests(_) => {
                message(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests")
            }
            _ => message(StatusCode::BAD_GATEWAY, "Internal Server Error"),
        },
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-amzn-RequestId", v);
    }
    resp
}

fn is_text(content_type: &str) -> bool {
    let ct = content_type.to_ascii_lowercase();
    ct.is_empty()
        || ct.starts_with("text/")
        || ct.contains("json")
        || ct.contains("xml")
        || ct.contains("javascript")
        || ct.starts_with("application/x-www-form-urlencoded")
}

async fn to_event(
    req: Request,
    route_key: &str,
    raw_path: &str,
    path_params: Option<BTreeMap<String, String>>,
    request_id: &str,
) -> Result<Value, ApiError> {
    let (parts, body) = req.into_parts();
    let source_ip = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "127.0.0.1".into());
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &parts.headers {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_ascii_lowercase())
            .and_modify(|e| {
                e.push(',');
                e.push_str(&v);
            })
            .or_insert(v);
    }
    let cookies: Vec<String> = headers
        .remove("cookie")
        .map(|c| {
            c.split(';')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let raw_query = parts.uri.query().unwrap_or("").to_string();
    let mut query: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in url::form_urlencoded::parse(raw_query.as_bytes()) {
        query
            .entry(k.into_owned())
            .and_modify(|e| {
                e.push(',');
                e.push_str(&v);
            })
            .or_insert_with(|| v.into_owned());
    }
    let too_large = ApiError::RequestTooLarge("Request must be smaller than 6291456 bytes".into());
    let body = read_body(Body::new(body), nimbus_proto::MAX_SYNC_PAYLOAD, too_large).await?;
    let content_type = headers.get("content-type").cloned().unwrap_or_default();
    let (body_value, b64) = if body.is_empty() {
        (Value::Null, false)
    } else {
        match std::str::from_utf8(&body) {
            Ok(text) if is_text(&content_type) => (Value::String(text.to_string()), false),
            _ => (
                Value::String(base64::engine::general_purpose::STANDARD.encode(&body)),
                true,
            ),
        }
    };
    let now = Utc::now();
    let host = headers.get("host").cloned().unwrap_or_default();
    let mut event = json!({
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": raw_path,
        "rawQueryString": raw_query,
        "headers": headers,
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "nimbus",
            "domainName": host,
            "domainPrefix": host.split('.').next().unwrap_or(""),
            "http": {
                "method": parts.method.as_str(),
                "path": raw_path,
                "protocol": format!("{:?}", parts.version),
                "sourceIp": source_ip,
                "userAgent": headers.get("user-agent").cloned().unwrap_or_default(),
            },
            "requestId": request_id,
            "routeKey": route_key,
            "stage": "$default",
            "time": now.format("%d/%b/%Y:%H:%M:%S +0000").to_string(),
            "timeEpoch": now.timestamp_millis(),
        },
        "isBase64Encoded": b64,
    });
    if !cookies.is_empty() {
        event["cookies"] = json!(cookies);
    }
    if !query.is_empty() {
        event["queryStringParameters"] = json!(query);
    }
    if let Some(p) = path_params.filter(|p| !p.is_empty()) {
        event["pathParameters"] = json!(p);
    }
    if !body_value.is_null() {
        event["body"] = body_value;
    }
    Ok(event)
}

/// Maps a function's result to an HTTP response (API Gateway's payload format 2.0).
fn from_result(payload: &[u8]) -> Response {
    let json_response = |body: Vec<u8>| {
        let mut r = (StatusCode::OK, body).into_response();
        r.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        r
    };
    let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(payload) else {
        return json_response(payload.to_vec());
    };
    if !doc.contains_key("statusCode") {
        return json_response(payload.to_vec());
    }
    let status = doc["statusCode"]
        .as_u64()
        .and_then(|s| StatusCode::from_u16(s as u16).ok())
        .unwrap_or(StatusCode::OK);
    let body = match &doc.get("body") {
        Some(Value::String(s)) if doc.get("isBase64Encoded") == Some(&Value::Bool(true)) => {
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .unwrap_or_default()
        }
        Some(Value::String(s)) => s.clone().into_bytes(),
        Some(Value::Null) | None => vec![],
        Some(other) => other.to_string().into_bytes(),
    };
    let mut resp = (status, body).into_response();
    if let Some(Value::Object(h)) = doc.get("headers") {
        for (k, v) in h {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if let (Ok(name), Ok(value)) = (
                axum::http::HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(&v),
            ) {
                resp.headers_mut().insert(name, value);
            }
        }
    }
    if let Some(Value::Array(cookies)) = doc.get("cookies") {
        for c in cookies.iter().filter_map(Value::as_str) {
            if let Ok(v) = HeaderValue::from_str(c) {
                resp.headers_mut().append("set-cookie", v);
            }
        }
    }
    resp
}

// ---- routes: /nimbus/v1/routes ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRoute {
    method: String,
    path: String,
    function: String,
}

fn route_shape(r: &RouteConfig) -> Value {
    json!({ "id": r.id, "method": r.method, "path": r.path, "function": r.function, "routeKey": format!("{} {}", r.method, r.path) })
}

pub async fn create_route(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = read_body(
        body,
        64 * 1024,
        ApiError::EntityTooLarge("Request too large".into()),
    )
    .await?;
    let req: NewRoute = parse_json(&body)?;
    let method = req.method.to_ascii_uppercase();
    validate_route(&method, &req.path).map_err(|e| ApiError::InvalidParameter(e.to_string()))?;
    let (function, _) = parse_function_name(&req.function)?;
    super::functions::current(&state, &function).await?;
    let kv = state.routes.kv.clone();
    if let Some(r) = super::bucket_values::<RouteConfig>(&kv)
        .await
        .into_iter()
        .find(|r| r.method == method && r.path == req.path)
    {
        return Err(ApiError::Conflict(format!(
            "route {method} {} exists ({})",
            r.path, r.id
        )));
    }
    let route = RouteConfig {
        v: WIRE_VERSION,
        id: format!("r-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        method,
        path: req.path,
        function,
        created_ms: Utc::now().timestamp_millis() as u64,
    };
    let revision = kv
        .create(&route.id, encode(&route))
        .await
        .map_err(|e| ApiError::Service(format!("storing the route: {e}")))?;
    state.routes.insert(&route.id, revision, route.clone());
    tracing::info!(route = %route.id, method = %route.method, path = %route.path, function = %route.function, "route created");
    Ok((StatusCode::CREATED, Json(route_shape(&route))))
}

pub async fn list_routes(State(state): State<Arc<AppState>>) -> Json<Value> {
    let mut all: Vec<_> = state.routes.list().into_iter().map(|(_, _, r)| r).collect();
    all.sort_by(|a, b| a.path.cmp(&b.path).then(a.method.cmp(&b.method)));
    Json(json!({ "routes": all.iter().map(|r| route_shape(r)).collect::<Vec<_>>() }))
}

pub async fn delete_route(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let exists = state
        .routes
        .kv
        .entry(&id)
        .await
        .ok()
        .flatten()
        .is_some_and(|e| e.operation == async_nats::jetstream::kv::Operation::Put);
    if !exists {
        return Err(ApiError::NotFound(format!("No route {id}")));
    }
    state
        .routes
        .kv
        .delete(&id)
        .await
        .map_err(|e| ApiError::Service(format!("deleting the route: {e}")))?;
    state.routes.remove(&id);
    Ok(StatusCode::NO_CONTENT)
}

// ---- function URLs: /2021-10-31/functions/{name}/url ----

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UrlInput {
    auth_type: Option<String>,
}

fn url_shape(
    state: &AppState,
    host: &str,
    name: &str,
    u: &nimbus_proto::FunctionUrlConfig,
) -> Value {
    let iso = |ms: u64| {
        chrono::DateTime::<Utc>::from_timestamp_millis(ms as i64)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default()
    };
    json!({
        "FunctionUrl": format!("http://{host}/fn/{name}/"),
        "FunctionArn": function_arn(&state.region, name),
        "AuthType": u.auth_type,
        "CreationTime": iso(u.created_ms),
        "LastModifiedTime": iso(u.modified_ms),
        "InvokeMode": "BUFFERED",
    })
}

fn host_of(headers: &axum::http::HeaderMap) -> String {
    headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1:8080")
        .to_string()
}

fn auth_type(input: &UrlInput) -> Result<String, ApiError> {
    match input.auth_type.as_deref() {
        Some("NONE") => Ok("NONE".into()),
        Some("AWS_IAM") => Ok("AWS_IAM".into()),
        Some(other) => Err(ApiError::InvalidParameter(format!(
            "1 validation error detected: Value '{other}' at 'authType' failed to satisfy constraint: Member must satisfy enum value set: [NONE, AWS_IAM]"
        ))),
        None => Err(ApiError::InvalidParameter("AuthType is required".into())),
    }
}

pub async fn create_url(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (name, _) = parse_function_name(&raw)?;
    let body = read_body(
        body,
        64 * 1024,
        ApiError::EntityTooLarge("Request too large".into()),
    )
    .await?;
    let input: UrlInput = parse_json(&body)?;
    let auth = auth_type(&input)?;
    let now = Utc::now().timestamp_millis() as u64;
    let cfg = super::functions::update(&state, &name, None, |c| {
        if c.url.is_some() {
            return Err(ApiError::Conflict(format!(
                "Failed to create function url config for [functionArn = {}]. Error message:  FunctionUrlConfig exists for this Lambda function",
                function_arn(&state.region, &name)
            )));
        }
        c.url = Some(nimbus_proto::FunctionUrlConfig { auth_type: auth.clone(), created_ms: now, modified_ms: now });
        Ok(())
    })
    .await?;
    let u = cfg.url.as_ref().expect("just set");
    Ok((
        StatusCode::CREATED,
        Json(url_shape(&state, &host_of(&headers), &name, u)),
    ))
}

pub async fn update_url(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (name, _) = parse_function_name(&raw)?;
    let body = read_body(
        body,
        64 * 1024,
        ApiError::EntityTooLarge("Request too large".into()),
    )
    .await?;
    let input: UrlInput = parse_json(&body)?;
    let cfg = super::functions::update(&state, &name, None, |c| {
        let Some(u) = c.url.as_mut() else {
            return Err(ApiError::NotFound(
                "The resource you requested does not exist.".into(),
            ));
        };
        if input.auth_type.is_some() {
            u.auth_type = auth_type(&input)?;
        }
        u.modified_ms = Utc::now().timestamp_millis() as u64;
        Ok(())
    })
    .await?;
    Ok(Json(url_shape(
        &state,
        &host_of(&headers),
        &name,
        cfg.url.as_ref().expect("present"),
    )))
}

pub async fn get_url(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (name, _) = parse_function_name(&raw)?;
    let cfg = super::functions::current(&state, &name).await?;
    let u = cfg
        .url
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("The resource you requested does not exist.".into()))?;
    Ok(Json(url_shape(&state, &host_of(&headers), &name, u)))
}

pub async fn delete_url(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (name, _) = parse_function_name(&raw)?;
    super::functions::update(&state, &name, None, |c| {
        if c.url.take().is_none() {
            return Err(ApiError::NotFound(
                "The resource you requested does not exist.".into(),
            ));
        }
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
