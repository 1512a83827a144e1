//! Prometheus `/metrics` over plain HTTP on its own port, from a prometheus-client registry that the
//! service fills before it starts serving (or swaps when its role changes), and `/healthz` for
//! liveness probes.

use std::sync::Arc;

use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::RuntimeError;
use crate::shutdown::Shutdown;

/// The text exposition content type Prometheus expects.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `GET /metrics` until shutdown, and `GET /healthz` (200 `ok` while the process serves:
/// a liveness probe's target).
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: Shutdown,
) -> Result<(), RuntimeError> {
    serve_switching(listener, watch::channel(registry).1, shutdown).await
}

/// As [`serve`], from whichever registry `registry` holds now: a process that changes role (an
/// IPAM standby that comes to lead) keeps one listener and swaps what it exposes.
pub async fn serve_switching(
    listener: TcpListener,
    registry: watch::Receiver<Arc<Registry>>,
    shutdown: Shutdown,
) -> Result<(), RuntimeError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics listening");
    }
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.borrow().clone();
                async move {
                    let mut body = String::new();
                    match prometheus_client::encoding::text::encode(&mut body, &registry) {
                        Ok(()) => (
                            axum::http::StatusCode::OK,
                            [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
                            body,
                        ),
                        Err(e) => (
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                            [(axum::http::header::CONTENT_TYPE, "text/plain")],
                            format!("encoding metrics failed: {e}"),
                        ),
                    }
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await
        .map_err(RuntimeError::Metrics)
}
