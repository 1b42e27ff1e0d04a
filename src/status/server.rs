//! The local HTTP server: `/metrics`, `/healthz`, `/readyz`, `/status`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{metrics, Status};

#[derive(Clone)]
struct App {
    status: Arc<Status>,
    registry: Arc<Registry>,
}

async fn metrics_page(State(app): State<App>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics::encode(&app.registry),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready only when what this node should hold is really there.
async fn readyz(State(app): State<App>) -> Response {
    let r = app.status.readiness();
    if r.ready {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", r.missing.join("; ")),
        )
            .into_response()
    }
}

async fn status_doc(State(app): State<App>) -> Json<super::StatusDoc> {
    Json(app.status.document())
}

fn router(status: Arc<Status>) -> Router {
    let registry = Arc::new(metrics::registry(status.clone()));
    Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status_doc))
        .with_state(App { status, registry })
}

/// Serves until `shutdown`. A port that is taken is logged, not fatal: the
/// VIP matters more than its dashboard.
pub async fn serve(addr: SocketAddr, status: Arc<Status>, mut shutdown: watch::Receiver<bool>) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            warn!(%addr, error = %e, "cannot serve /metrics, /healthz, /readyz, /status (prometheus_server)");
            return;
        }
    };
    info!(%addr, "serving /metrics /healthz /readyz /status");
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, router(status))
        .with_graceful_shutdown(stop)
        .await
    {
        warn!(error = %e, "status server stopped");
    }
}

/// kube-vip's `health_check_port`: `/healthz` alone on its own port.
pub async fn serve_health(port: u16, mut shutdown: watch::Receiver<bool>) {
    let addr = SocketAddr::from(([0, 0, 0, 0], port));
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            warn!(%addr, error = %e, "cannot serve /healthz (health_check_port)");
            return;
        }
    };
    let app = Router::new().route("/healthz", get(healthz));
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await;
}
