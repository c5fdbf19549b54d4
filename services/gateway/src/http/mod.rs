//! The gateway's router. Lambda API paths (`/2015-03-31/functions…`), the native API
//! (`/nimbus/v1/…`), `/healthz` and `/metrics`.
//!
//! Bodies are read by the handlers with explicit limits (Lambda's 6 MB invoke
//! payload, 50 MB inline zip) so an oversized request gets Lambda's error, not the
//! framework's.

pub mod dlq;
pub mod event_invoke;
pub mod functions;
pub mod invocations;
pub mod native;
pub mod schedules;
pub mod triggers;
pub mod web;

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};

use crate::AppState;
use crate::error::ApiError;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/2015-03-31/functions",
            post(functions::create).get(functions::list),
        )
        .route(
            "/2015-03-31/functions/",
            post(functions::create).get(functions::list),
        )
        .route(
            "/2015-03-31/functions/{name}",
            get(functions::get).delete(functions::delete),
        )
        .route(
            "/2015-03-31/functions/{name}/configuration",
            get(functions::get_configuration).put(functions::update_configuration),
        )
        .route(
            "/2015-03-31/functions/{name}/code",
            axum::routing::put(functions::update_code),
        )
        .route(
            "/2015-03-31/functions/{name}/invocations",
            post(invocations::invoke),
        )
        .route(
            "/nimbus/v1/functions/{name}/code",
            get(native::download_code),
        )
        .route("/nimbus/v1/functions/{name}/logs", get(native::logs))
        .route(
            "/2019-09-25/functions/{name}/event-invoke-config",
            get(event_invoke::get)
                .put(event_invoke::put)
                .post(event_invoke::update)
                .delete(event_invoke::delete),
        )
        .route(
            "/2019-09-25/functions/{name}/event-invoke-config/list",
            get(event_invoke::list),
        )
        .route(
            "/nimbus/v1/functions/{name}/dlq",
            get(dlq::list).delete(dlq::purge),
        )
        .route(
            "/nimbus/v1/functions/{name}/dlq/redrive",
            post(dlq::redrive),
        )
        .route("/nimbus/v1/functions/{name}/dlq/{seq}", get(dlq::show))
        .route(
            "/nimbus/v1/triggers",
            post(triggers::create).get(triggers::list),
        )
        .route(
            "/nimbus/v1/triggers/{id}",
            axum::routing::delete(triggers::delete),
        )
        .route(
            "/nimbus/v1/schedules",
            post(schedules::create).get(schedules::list),
        )
        .route(
            "/nimbus/v1/schedules/{name}",
            get(schedules::get).delete(schedules::delete),
        )
        .route("/nimbus/v1/schedule-preview", get(schedules::preview))
        .route(
            "/2021-10-31/functions/{name}/url",
            get(web::get_url)
                .post(web::create_url)
                .put(web::update_url)
                .delete(web::delete_url),
        )
        .route(
            "/nimbus/v1/routes",
            post(web::create_route).get(web::list_routes),
        )
        .route(
            "/nimbus/v1/routes/{id}",
            axum::routing::delete(web::delete_route),
        )
        .route("/fn/{name}", axum::routing::any(web::function_url))
        .route("/fn/{name}/", axum::routing::any(web::function_url))
        .route("/fn/{name}/{*rest}", axum::routing::any(web::function_url))
        .route("/nimbus/v1/events/s3", post(native::s3_webhook))
        .route("/nimbus/v1/cluster", get(native::cluster))
        .route("/healthz", get(native::healthz))
        .route("/metrics", get(native::metrics))
        .fallback(web::routes_fallback)
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::auth::authenticate,
        ))
        .layer(middleware::from_fn(track))
        .with_state(state)
}

/// Counts requests by route and status.
async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("nimbus_gateway_requests_total", "route" => route.clone(), "method" => method, "status" => status).increment(1);
    metrics::histogram!("nimbus_gateway_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// Reads a body of at most `limit` bytes; beyond it, `too_large` is the error.
pub async fn read_body(body: Body, limit: usize, too_large: ApiError) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        // to_bytes fails with a length-limit error or a transport error.
        let msg = e.to_string();
        if msg.contains("length limit") {
            too_large
        } else {
            ApiError::InvalidRequestContent(format!("Could not read the request body: {msg}"))
        }
    })
}

/// Every live value of a KV bucket, decoded (control-plane listings; undecodable
/// values are skipped).
pub async fn bucket_values<T>(kv: &async_nats::jetstream::kv::Store) -> Vec<T>
where
    T: serde::de::DeserializeOwned + nimbus_proto::codec::Versioned,
{
    use futures::TryStreamExt;
    let keys: Vec<String> = match kv.keys().await {
        Ok(k) => k.try_collect().await.unwrap_or_default(),
        Err(_) => vec![],
    };
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        if let Ok(Some(e)) = kv.entry(&key).await
            && e.operation == async_nats::jetstream::kv::Operation::Put
            && let Ok(v) = nimbus_proto::decode::<T>(&e.value)
        {
            out.push(v);
        }
    }
    out
}

/// Parses a JSON request document.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidRequestContent(format!("Could not parse request body: {e}")))
}

/// Accepts `name`, `name:qualifier`, or a full or partial function ARN; returns the
/// name and qualifier.
pub fn parse_function_name(raw: &str) -> Result<(String, Option<String>), ApiError> {
    let rest = match raw.find("function:") {
        Some(i) if raw.starts_with("arn:") || raw.contains(':') => &raw[i + "function:".len()..],
        _ => raw,
    };
    let (name, qualifier) = match rest.split_once(':') {
        Some((n, q)) => (n, Some(q.to_string())),
        None => (rest, None),
    };
    nimbus_proto::validate_function_name(name).map_err(|e| {
        ApiError::Validation(format!(
            "1 validation error detected: Value '{raw}' at 'functionName' failed to satisfy constraint: {e}"
        ))
    })?;
    Ok((name.to_string(), qualifier))
}

/// The qualifier of a request: only `$LATEST` exists until versions land.
pub fn check_qualifier(name: &str, qualifier: Option<&str>) -> Result<(), ApiError> {
    match qualifier {
        None | Some("$LATEST") => Ok(()),
        Some(q) => Err(ApiError::NotFound(format!(
            "Function not found: arn:aws:lambda:us-east-1:000000000000:function:{name}:{q}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_arns() {
        assert_eq!(
            parse_function_name("hello").unwrap(),
            ("hello".into(), None)
        );
        assert_eq!(
            parse_function_name("arn:aws:lambda:us-east-1:123456789012:function:hello").unwrap(),
            ("hello".into(), None)
        );
        assert_eq!(
            parse_function_name("hello:$LATEST").unwrap(),
            ("hello".into(), Some("$LATEST".into()))
        );
        assert_eq!(
            parse_function_name("123456789012:function:hi:prod").unwrap(),
            ("hi".into(), Some("prod".into()))
        );
        assert!(matches!(
            parse_function_name("bad name!"),
            Err(ApiError::Validation(_))
        ));
    }
}
