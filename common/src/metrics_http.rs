//! `/metrics` (Prometheus text) and `/healthz` for services without an HTTP API of
//! their own (scheduler, worker). Off unless an address is given.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

/// Installs the Prometheus recorder and serves it on `addr`; returns the bound
/// address (logged as `metrics listening`).
/// `/healthz` answers `health` (JSON) with 200.
pub async fn serve(
    addr: &str,
    shutdown: CancellationToken,
    health: serde_json::Value,
) -> anyhow::Result<SocketAddr> {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        tracing::debug!("a metrics recorder was already installed");
    }
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let h = handle.clone();
                async move { h.render() }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let h = health.clone();
                async move { axum::Json(h) }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
    });
    tracing::info!(addr = %bound, "metrics listening");
    Ok(bound)
}
