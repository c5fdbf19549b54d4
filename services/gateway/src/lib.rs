//! The Nimbus gateway: the HTTP front door.
//!
//! # Layout
//! - [`http`]: the router; one file per group of operations
//!   ([`http::functions`], [`http::invocations`], [`http::native`]);
//! - [`error`]: `ApiError`, the one place AWS error types and statuses are chosen;
//! - [`shapes`]: Lambda's JSON request and response shapes;
//! - [`code`]: validating and storing code packages.
//!
//! The gateway is the writer of function configurations (KV compare-and-set) and
//! keeps a mirror of them for invocations; it holds no other state.

pub mod auth;
pub mod code;
pub mod direct;
pub mod error;
pub mod http;
pub mod shapes;

use std::sync::Arc;

use anyhow::Context;
use nimbus_common::{CodeStore, KvCache};
use nimbus_proto::{FunctionConfig, Names, Subjects};
use tokio_util::sync::CancellationToken;

pub struct GatewayConfig {
    pub region: String,
    /// Subject of S3-style object event notifications (default `<prefix>.events.s3`).
    pub s3_events_subject: Option<String>,
    /// Duplicate window of the async stream, if this gateway creates it.
    pub duplicate_window: std::time::Duration,
    /// `None`: no signature checks (NIMBUS_AUTH=off).
    pub access_keys: Option<auth::AccessKeys>,
    /// Which synchronous calls this gateway sends to a worker itself ([`direct`]).
    pub dispatch: direct::Dispatching,
}

/// Shared by every handler.
pub struct AppState {
    pub nats: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub subjects: Subjects,
    pub names: Names,
    pub functions: Arc<KvCache<FunctionConfig>>,
    pub routes: Arc<KvCache<nimbus_proto::RouteConfig>>,
    /// Buckets opened once at start (the native API writes and lists them).
    pub triggers: async_nats::jetstream::kv::Store,
    pub schedules: async_nats::jetstream::kv::Store,
    pub schedule_state: async_nats::jetstream::kv::Store,
    pub code: CodeStore,
    pub region: String,
    pub s3_events_subject: String,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Keys that may sign requests; `None`: the APIs are open.
    pub access_keys: Option<auth::AccessKeys>,
    /// Every worker's last heartbeat: for `GET /nimbus/v1/cluster`, the liveness of
    /// workers called directly, and where a cold start goes.
    pub workers: nimbus_placement::WorkerTable,
    /// Workers that ran each function's current revision: warm calls go to them.
    pub warm: direct::WarmRoutes,
    pub dispatch: direct::Dispatching,
    /// The acks and results of direct calls.
    pub replies: Arc<direct::Replies>,
}

pub async fn run(
    cfg: GatewayConfig,
    listener: tokio::net::TcpListener,
    nats: async_nats::Client,
    subjects: Subjects,
    names: Names,
    code: CodeStore,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topology =
        nimbus_common::topology::ensure(&nats, &names, &subjects, cfg.duplicate_window).await?;
    let stop = CancellationToken::new();
    let functions = KvCache::start(topology.functions.clone(), stop.clone()).await;
    let routes = KvCache::start(topology.routes.clone(), stop.clone()).await;
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        tracing::debug!("a metrics recorder was already installed");
    }
    let s3_events_subject = cfg
        .s3_events_subject
        .clone()
        .unwrap_or_else(|| subjects.s3_events());
    let state = Arc::new(AppState {
        nats: nats.clone(),
        js: topology.js,
        subjects,
        names,
        functions,
        routes,
        triggers: topology.triggers.clone(),
        schedules: topology.schedules.clone(),
        schedule_state: topology.schedule_state.clone(),
        code,
        region: cfg.region,
        s3_events_subject,
        metrics,
        access_keys: cfg.access_keys,
        workers: Default::default(),
        warm: Default::default(),
        dispatch: cfg.dispatch,
        replies: direct::Replies::start(&nats).await?,
    });
    // Worker heartbeats: for the cluster status call, the liveness of workers called
    // directly, their idle instances as routes for warm calls, their free slots for
    // cold starts.
    let mut heartbeats = nats.subscribe(state.subjects.heartbeat()).await?;
    let hb_state = state.clone();
    let hb_stop = stop.clone();
    tokio::spawn(async move {
        use futures::StreamExt;
        loop {
            let msg = tokio::select! {
                m = heartbeats.next() => m,
                _ = hb_stop.cancelled() => break,
            };
            let Some(msg) = msg else { break };
            if let Ok(hb) = nimbus_proto::decode::<nimbus_proto::Heartbeat>(&msg.payload) {
                hb_state.warm.heard(&hb);
                hb_state.workers.update(hb);
            }
        }
    });
    let app = http::router(state);
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "gateway listening");
    // No Nagle: a write made while an earlier one is unacknowledged (a body sent in
    // parts, a client pipelining its requests) would wait for the client's delayed
    // ACK, up to 40 ms.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
    .context("serving HTTP")?;
    stop.cancel();
    nimbus_common::flush_before_exit(&nats).await;
    tracing::info!("gateway stopped");
    Ok(())
}
