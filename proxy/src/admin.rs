//! The admin listener (`admin_addr`, plain HTTP): `/metrics` in Prometheus text,
//! `/healthz` while the process serves, `/readyz` while the backend and the coordinator
//! both answer (and the proxy is not draining).
//!
//! Readiness is checked on demand, each dependency within [`CHECK_TIMEOUT`]: the backend
//! with a ping on a connection of the admin's own one-connection pool (not the
//! sessions': a proxy at `max_connections` is busy, not unready), the coordinator with a
//! `status` call for an xid nobody issued, which a live leader answers NOT_FOUND.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use mysql_async::prelude::Queryable;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::coordinator::CallError;
use crate::Shared;

/// How long one readiness check waits for a dependency.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// A well-formed xid the coordinator will not have issued (its numbers count up from 1):
/// asking for its status goes to the leader (a malformed one would be refused before
/// that), costs a lookup, and NOT_FOUND proves a leader answered.
fn probe_xid() -> String {
    rewind_protocol::xid::format(u64::MAX)
}

#[derive(Clone)]
struct App {
    shared: Arc<Shared>,
    /// For `/readyz`'s backend ping.
    backend: mysql_async::Pool,
    /// Cancelled when the proxy starts draining: `/readyz` turns 503 at once.
    draining: CancellationToken,
}

/// Serves the admin endpoints on `listener` until `stop` is cancelled. `draining` is the
/// proxy's shutdown token, cancelled earlier than `stop` (the figures stay readable while
/// sessions drain).
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    draining: CancellationToken,
    stop: CancellationToken,
) {
    let backend = match crate::attach::own_pool(&shared, 1) {
        Ok(p) => p,
        Err(e) => {
            // `validate` checked the URL: not expected.
            tracing::error!(error = %e, "admin listener: backend URL unusable");
            return;
        }
    };
    let app = App {
        shared,
        backend: backend.clone(),
        draining,
    };
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(app);
    tracing::info!(addr = ?listener.local_addr().ok(), "admin listener serving");
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::warn!(error = %e, "admin listener failed");
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), backend.disconnect()).await;
}

async fn metrics(State(app): State<App>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.shared.metrics.render(&app.shared),
    )
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(app): State<App>) -> (StatusCode, Json<Value>) {
    let (backend, coordinator) = tokio::join!(backend_check(&app), coordinator_check(&app));
    let draining = app.draining.is_cancelled();
    let mut down = serde_json::Map::new();
    if let Err(why) = &backend {
        down.insert("backend".into(), json!(why));
    }
    if let Err(why) = &coordinator {
        down.insert("coordinator".into(), json!(why));
    }
    if draining {
        down.insert("proxy".into(), json!("shutting down"));
    }
    if down.is_empty() {
        (StatusCode::OK, Json(json!({"status": "ready"})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "down": down})),
        )
    }
}

async fn backend_check(app: &App) -> Result<(), String> {
    let ping = async {
        let mut conn = app.backend.get_conn().await?;
        conn.ping().await
    };
    match tokio::time::timeout(CHECK_TIMEOUT, ping).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
    }
}

async fn coordinator_check(app: &App) -> Result<(), String> {
    let xid = probe_xid();
    let call = app.shared.coordinator.status(&xid);
    match tokio::time::timeout(CHECK_TIMEOUT, call).await {
        // Any answer a coordinator gives about a transaction means one is reachable.
        Ok(Ok(_) | Err(CallError::NotFound(_) | CallError::NotActive(_))) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
    }
}
