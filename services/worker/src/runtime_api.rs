//! The Lambda Runtime API, one loopback server per instance.
//!
//! The instance's runtime polls `GET /2018-06-01/runtime/invocation/next`; the worker
//! hands it an [`Invocation`] through a channel and gets the outcome back on the
//! invocation's oneshot when the runtime posts `/response` or `/error`. An
//! `/init/error` is reported on [`RuntimeApi::init_error`]. The port identifies the
//! instance, so no request can answer for another instance's invocation.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// One invocation handed to the runtime.
pub struct Invocation {
    pub request_id: String,
    pub payload: Bytes,
    pub deadline_unix_ms: u64,
    pub function_arn: String,
    pub result: oneshot::Sender<RuntimeResult>,
}

/// What the runtime answered.
#[derive(Debug)]
pub enum RuntimeResult {
    Response(Bytes),
    /// `/error`: Lambda's error document and the runtime's error type header.
    Error(Bytes),
}

struct ApiState {
    next: Mutex<mpsc::Receiver<Invocation>>,
    current: std::sync::Mutex<Option<(String, oneshot::Sender<RuntimeResult>)>>,
    init_error: watch::Sender<Option<Bytes>>,
    first_next: watch::Sender<Option<Instant>>,
}

/// Handle to one instance's Runtime API server.
pub struct RuntimeApi {
    /// The TCP address, when it listens on one (see [`RuntimeApi::start`]).
    pub addr: Option<SocketAddr>,
    pub next_tx: mpsc::Sender<Invocation>,
    /// Set when the runtime posts `/init/error`.
    pub init_error: watch::Receiver<Option<Bytes>>,
    /// Set when the runtime first asks for work: the end of its init phase.
    pub ready: watch::Receiver<Option<Instant>>,
    stop: CancellationToken,
    socket: Option<std::path::PathBuf>,
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

const MAX_BODY: usize = nimbus_proto::MAX_SYNC_PAYLOAD + 1;

impl RuntimeApi {
    /// Serves on an ephemeral loopback port, or on the Unix socket `unix` (for a box
    /// with its own network namespace, whose init relays the runtime's loopback
    /// connections to it).
    pub async fn start(unix: Option<&std::path::Path>) -> std::io::Result<Self> {
        let (next_tx, next_rx) = mpsc::channel(1);
        let (init_tx, init_rx) = watch::channel(None);
        let (ready_tx, ready_rx) = watch::channel(None);
        let state = Arc::new(ApiState {
            next: Mutex::new(next_rx),
            current: std::sync::Mutex::new(None),
            init_error: init_tx,
            first_next: ready_tx,
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(response),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(state);
        let stop = CancellationToken::new();
        let addr = match unix {
            Some(path) => {
                serve(tokio::net::UnixListener::bind(path)?, app, &stop);
                None
            }
            None => {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let addr = listener.local_addr()?;
                // No Nagle: a runtime that pipelines its result with its next
                // `/next` sends nothing that would carry the ACK of our 202, and
                // the next event's response waited for its delayed ACK — 40 ms a
                // call (seen with a pipelining Python bootstrap, which gained
                // nothing measurable and was not kept).
                let listener = listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                serve(listener, app, &stop);
                Some(addr)
            }
        };
        Ok(Self {
            addr,
            socket: unix.map(std::path::Path::to_path_buf),
            next_tx,
            init_error: init_rx,
            ready: ready_rx,
            stop,
        })
    }
}

/// Serves `app` on `listener` until `stop`.
fn serve<L: axum::serve::Listener>(listener: L, app: Router, stop: &CancellationToken)
where
    L::Addr: std::fmt::Debug,
{
    let stop = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
}

fn runtime_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = serde_json::json!({ "errorMessage": message, "errorType": kind });
    (status, axum::Json(body)).into_response()
}

async fn next(State(state): State<Arc<ApiState>>) -> Response {
    state.first_next.send_if_modified(|t| {
        if t.is_none() {
            *t = Some(Instant::now());
            true
        } else {
            false
        }
    });
    let inv = {
        let mut rx = state.next.lock().await;
        match rx.recv().await {
            Some(inv) => inv,
            None => {
                return runtime_error(StatusCode::GONE, "Runtime.Shutdown", "instance stopping");
            }
        }
    };
    let mut headers = HeaderMap::new();
    let hv = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""));
    headers.insert("Lambda-Runtime-Aws-Request-Id", hv(&inv.request_id));
    headers.insert(
        "Lambda-Runtime-Deadline-Ms",
        hv(&inv.deadline_unix_ms.to_string()),
    );
    headers.insert("Lambda-Runtime-Invoked-Function-Arn", hv(&inv.function_arn));
    headers.insert(
        "Lambda-Runtime-Trace-Id",
        hv(&format!(
            "Root=1-00000000-{}",
            inv.request_id.replace('-', "")
        )),
    );
    headers.insert("Content-Type", HeaderValue::from_static("application/json"));
    *state.current.lock().expect("lock poisoned") = Some((inv.request_id, inv.result));
    (StatusCode::OK, headers, inv.payload).into_response()
}

fn finish(state: &ApiState, id: &str, result: RuntimeResult) -> Response {
    let mut current = state.current.lock().expect("lock poisoned");
    match current.take() {
        Some((current_id, tx)) if current_id == id => {
            let _ = tx.send(result);
            (
                StatusCode::ACCEPTED,
                axum::Json(serde_json::json!({"status": "OK"})),
            )
                .into_response()
        }
        other => {
            *current = other;
            runtime_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestID",
                &format!("{id} is not the invocation in progress"),
            )
        }
    }
}

async fn response(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    if body.len() > nimbus_proto::MAX_SYNC_PAYLOAD {
        let doc = serde_json::json!({
            "errorMessage": format!("Response payload size ({} bytes) exceeded maximum allowed payload size ({} bytes).", body.len(), nimbus_proto::MAX_SYNC_PAYLOAD),
            "errorType": "Function.ResponseSizeTooLarge",
        });
        finish(
            &state,
            &id,
            RuntimeResult::Error(serde_json::to_vec(&doc).unwrap_or_default().into()),
        );
        return runtime_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            "response too large",
        );
    }
    finish(&state, &id, RuntimeResult::Response(body))
}

async fn error(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    finish(
        &state,
        &id,
        RuntimeResult::Error(error_document(&headers, body)),
    )
}

async fn init_error(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state
        .init_error
        .send_replace(Some(error_document(&headers, body)));
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({"status": "OK"})),
    )
        .into_response()
}

/// Normalises what a runtime posted into Lambda's `{errorMessage, errorType,
/// stackTrace}` document: a runtime may post anything, or nothing.
fn error_document(headers: &HeaderMap, body: Bytes) -> Bytes {
    let header_type = headers
        .get("Lambda-Runtime-Function-Error-Type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(mut doc)) => {
            if !doc.contains_key("errorType") {
                doc.insert(
                    "errorType".into(),
                    header_type.unwrap_or_else(|| "Unhandled".into()).into(),
                );
            }
            serde_json::to_vec(&doc).unwrap_or_default().into()
        }
        _ => {
            let doc = serde_json::json!({
                "errorMessage": String::from_utf8_lossy(&body),
                "errorType": header_type.unwrap_or_else(|| "Unhandled".into()),
            });
            serde_json::to_vec(&doc).unwrap_or_default().into()
        }
    }
}
