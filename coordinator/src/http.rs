//! REST API of DESIGN.md, /metrics and /healthz. Bodies are read as bytes (bounded by
//! the body limit) and parsed here, so malformed or oversized input always gets the
//! same JSON error shape.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::CoordinatorError;
use crate::grpc::{parse_xid, Grpc};
use crate::locks::KeyParts;
use crate::session::{Command, Conflict, ResolveAction, SessionRecord, Status};

#[derive(Clone)]
struct App {
    core: Grpc,
    body_limit: usize,
}

pub fn router(core: Grpc, body_limit: usize) -> Router {
    Router::new()
        .route("/api/v1/transactions", post(begin).get(list))
        .route("/api/v1/transactions/{xid}", get(show))
        .route("/api/v1/transactions/{xid}/commit", post(commit))
        .route("/api/v1/transactions/{xid}/rollback", post(rollback))
        .route("/api/v1/locks", get(locks))
        .route("/api/v1/conflicts", get(conflicts))
        .route("/api/v1/conflicts/{id}/resolve", post(resolve))
        .route("/metrics", get(metrics))
        .route(
            "/healthz",
            get(|| async { Json(json!({"status": "serving", "role": "standalone"})) }),
        )
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "not_found", "message": "no such endpoint"})),
            )
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(App { core, body_limit })
}

type ApiResult = Result<Json<Value>, CoordinatorError>;

fn parse_body<T: for<'de> Deserialize<'de> + Default>(
    app: &App,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, CoordinatorError> {
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            CoordinatorError::TooLarge(app.body_limit)
        } else {
            CoordinatorError::InvalidArgument(r.body_text())
        }
    })?;
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(&body)
        .map_err(|e| CoordinatorError::InvalidArgument(format!("malformed JSON body: {e}")))
}

fn pk_json(pk: &[Vec<u8>]) -> Value {
    // Text where the bytes are UTF-8 (the common case), hex otherwise: never lossy.
    Value::Array(
        pk.iter()
            .map(|p| match std::str::from_utf8(p) {
                Ok(s) => Value::String(s.to_string()),
                Err(_) => json!({"hex": p.iter().map(|b| format!("{b:02x}")).collect::<String>()}),
            })
            .collect(),
    )
}

fn key_json(k: &KeyParts) -> Value {
    json!({"table": k.table, "pk": pk_json(&k.pk)})
}

fn session_json(s: &SessionRecord) -> Value {
    json!({
        "xid": rewind_protocol::xid::format(s.xid),
        "name": s.name,
        "status": s.status.name(),
        "created_ms": s.created_ms,
        "deadline_ms": s.deadline_ms,
        "updated_ms": s.updated_ms,
        "finished_ms": s.finished_ms,
        "branches": s.branches.iter().map(|b| json!({
            "branch_id": b.branch_id,
            "resource_id": b.resource_id,
            "status": b.status,
            "lock_keys": b.lock_keys.iter().map(key_json).collect::<Vec<_>>(),
            "locks_held": b.locks_held,
        })).collect::<Vec<_>>(),
    })
}

fn conflict_json(c: &Conflict) -> Value {
    let parse =
        |s: &str| serde_json::from_str::<Value>(s).unwrap_or_else(|_| Value::String(s.to_string()));
    let mut v = json!({
        "id": c.id,
        "xid": rewind_protocol::xid::format(c.xid),
        "branch_id": c.branch_id,
        "resource_id": c.resource_id,
        "table": c.table,
        "pk": pk_json(&c.pk),
        "before": parse(&c.before),
        "after": parse(&c.after),
        "current": parse(&c.current),
        "last_error": c.last_error,
        "updated_ms": c.updated_ms,
    });
    let state = serde_json::to_value(&c.state).unwrap_or(Value::Null);
    if let (Some(obj), Value::Object(st)) = (v.as_object_mut(), state) {
        obj.extend(st);
    }
    v
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BeginBody {
    name: Option<String>,
    timeout_ms: Option<u64>,
}

async fn begin(
    State(app): State<App>,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, CoordinatorError> {
    let b: BeginBody = parse_body(&app, body)?;
    let xid = app
        .core
        .begin(b.name.unwrap_or_default(), b.timeout_ms.unwrap_or(0))
        .await?;
    Ok((
        StatusCode::OK,
        Json(json!({"xid": rewind_protocol::xid::format(xid), "status": "begin"})),
    ))
}

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
    limit: Option<usize>,
}

async fn list(State(app): State<App>, Query(q): Query<ListQuery>) -> ApiResult {
    let status =
        match q.status.as_deref() {
            None | Some("") => None,
            Some(s) => Some(Status::parse(s).ok_or_else(|| {
                CoordinatorError::InvalidArgument(format!("unknown status {s:?}"))
            })?),
        };
    let limit = q.limit.unwrap_or(100).min(10_000);
    let mut out = app
        .core
        .seq
        .engine
        .lock()
        .expect("engine lock")
        .records(status);
    out.sort_by_key(|r| std::cmp::Reverse(r.xid));
    out.truncate(limit);
    if out.len() < limit && status.is_none_or(|s| s.is_final()) {
        let rest = app
            .core
            .seq
            .store
            .list_finished(status, limit - out.len())?;
        out.extend(rest);
        out.sort_by_key(|r| std::cmp::Reverse(r.xid));
    }
    Ok(Json(Value::Array(out.iter().map(session_json).collect())))
}

async fn show(State(app): State<App>, Path(xid): Path<String>) -> ApiResult {
    let rec = app.core.record(parse_xid(&xid)?).await?;
    Ok(Json(session_json(&rec)))
}

async fn commit(State(app): State<App>, Path(xid): Path<String>) -> ApiResult {
    let st = app.core.commit(parse_xid(&xid)?).await?;
    Ok(Json(json!({"xid": xid, "status": st.name()})))
}

async fn rollback(State(app): State<App>, Path(xid): Path<String>) -> ApiResult {
    let st = app.core.rollback(parse_xid(&xid)?).await?;
    Ok(Json(json!({"xid": xid, "status": st.name()})))
}

async fn locks(State(app): State<App>) -> ApiResult {
    let held = app
        .core
        .seq
        .engine
        .lock()
        .expect("engine lock")
        .held_locks();
    Ok(Json(Value::Array(
        held.into_iter()
            .map(|(r, k, xid)| {
                json!({"resource_id": r, "table": k.table, "pk": pk_json(&k.pk), "xid": rewind_protocol::xid::format(xid)})
            })
            .collect(),
    )))
}

async fn conflicts(State(app): State<App>) -> ApiResult {
    let e = app.core.seq.engine.lock().expect("engine lock");
    Ok(Json(Value::Array(
        e.conflicts().map(conflict_json).collect(),
    )))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    action: Option<ResolveAction>,
}

async fn resolve(
    State(app): State<App>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let id: u64 = id.parse().map_err(|_| {
        CoordinatorError::InvalidArgument(format!("conflict id {id:?} is not a number"))
    })?;
    let b: ResolveBody = parse_body(&app, body)?;
    let action = b.action.ok_or_else(|| {
        CoordinatorError::InvalidArgument(
            "body must be {\"action\": \"restore_before\"|\"keep_current\"|\"retry\"}".into(),
        )
    })?;
    app.core
        .seq
        .submit(Command::Resolve {
            conflict_id: id,
            action,
        })
        .await?;
    // Answer once the proxy acted (or failed), bounded.
    app.core
        .seq
        .wait_until(app.core.rollback_wait.min(Duration::from_secs(30)), |e| {
            e.conflict(id)
                .is_none_or(|c| !matches!(c.state, crate::session::ConflictState::Resolving { .. }))
        })
        .await;
    let e = app.core.seq.engine.lock().expect("engine lock");
    let c = e
        .conflict(id)
        .ok_or(CoordinatorError::ConflictNotFound(id))?;
    Ok(Json(conflict_json(c)))
}

async fn metrics(State(app): State<App>) -> impl IntoResponse {
    let text = {
        let e = app.core.seq.engine.lock().expect("engine lock");
        app.core.seq.metrics.render(&e)
    };
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
}
