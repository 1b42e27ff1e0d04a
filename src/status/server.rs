//! The local HTTP server: `/metrics`, `/healthz`, `/readyz`, `/status`,
//! and `/v1/alive` for the other vipds.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use tokio::sync::{watch, Semaphore};
use tracing::{info, warn};

use super::{metrics, Status};

#[derive(Clone)]
struct App {
    status: Arc<Status>,
    registry: Arc<Registry>,
    /// Ends the `/v1/alive` streams at shutdown (peers see it at once).
    shutdown: watch::Receiver<bool>,
    /// Bounds the `/v1/alive` streams open at once.
    streams: Arc<Semaphore>,
}

/// How often `/v1/alive` says this vipd is alive.
pub const ALIVE_EVERY: Duration = Duration::from_millis(200);
/// At most this many `/v1/alive` streams at once (every other vipd of a
/// large cluster, with room); more are refused with 503.
const MAX_ALIVE_STREAMS: usize = 512;

/// `/v1/alive`: a line `alive <node> <n>` every [`ALIVE_EVERY`] for as
/// long as this vipd runs. The other vipds' placement follows it
/// (`services::peer_links`): the stream ends the moment this process dies
/// (its kernel closes the socket) or stops, and goes silent when the node
/// does, so they need not wait for its liveness Lease to expire.
async fn alive(State(app): State<App>) -> Response {
    let Ok(permit) = app.streams.clone().try_acquire_owned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many streams\n").into_response();
    };
    let node = app.status.node.clone();
    let beats = futures::stream::unfold(
        (0u64, app.shutdown.clone(), permit),
        move |(n, mut stop, permit)| {
            let line = format!("alive {node} {n}\n");
            async move {
                if n > 0 {
                    tokio::select! {
                        _ = tokio::time::sleep(ALIVE_EVERY) => {}
                        _ = stop.wait_for(|s| *s) => return None,
                    }
                }
                if *stop.borrow() {
                    return None;
                }
                Some((Ok::<_, Infallible>(line), (n + 1, stop, permit)))
            }
        },
    );
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(beats),
    )
        .into_response()
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

fn router(status: Arc<Status>, shutdown: watch::Receiver<bool>) -> Router {
    let registry = Arc::new(metrics::registry(status.clone()));
    Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status_doc))
        .route("/v1/alive", get(alive))
        .with_state(App {
            status,
            registry,
            shutdown,
            streams: Arc::new(Semaphore::new(MAX_ALIVE_STREAMS)),
        })
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
    info!(%addr, "serving /metrics /healthz /readyz /status /v1/alive");
    let app = router(status, shutdown.clone());
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, app)
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
