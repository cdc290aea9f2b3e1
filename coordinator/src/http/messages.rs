//! The message service's HTTP calls (DESIGN.md, "Message service: half messages with
//! check-back"): prepare, decide, inspect and list half messages, add a message branch to
//! a global transaction, and the operator's commit / drop of an undecided message and
//! redrive of a dead one (both audited).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    application, operator, parse_body, parse_xid, record_audit, result_text, ApiResult, App,
};
use crate::engine::{MessageRecord, MessageStatus};
use crate::error::CoordinatorError;
use crate::messages::NewMessage;

/// A message as the API shows it; `full` adds the payload, headers and history.
pub(super) fn message_json(m: &MessageRecord, full: bool) -> Value {
    let mut v = json!({
        "message_id": m.message_id,
        "topic": m.topic,
        "key": m.key,
        "status": m.status.name(),
        "resource_id": m.resource_id,
        "proxy_id": m.proxy_id,
        "xid": m.xid.map(rewind_protocol::xid::format),
        "branch_id": m.branch_id,
        "check_after_ms": m.check_after_ms,
        "created_ms": m.created_ms,
        "updated_ms": m.updated_ms,
        "checks": m.checks,
        "publish_failures": m.publish_failures,
        "last_error": m.last_error,
        "consumers": m.consumers,
    });
    if full {
        if let Some(obj) = v.as_object_mut() {
            obj.insert("payload".into(), json!(m.payload));
            let headers: serde_json::Map<String, Value> = m
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            obj.insert("headers".into(), Value::Object(headers));
            obj.insert(
                "history".into(),
                Value::Array(
                    m.history
                        .iter()
                        .map(|e| json!({"at_ms": e.at_ms, "event": e.event, "detail": e.detail}))
                        .collect(),
                ),
            );
        }
    }
    v
}

fn new_message(
    app: &App,
    body: Result<Bytes, BytesRejection>,
) -> Result<NewMessage, CoordinatorError> {
    let v: Value = parse_body(app, body)?;
    if !v.is_object() {
        return Err(CoordinatorError::InvalidArgument(
            "body must be a JSON object {\"topic\", \"payload\", \"key\"?, \"headers\"?, \
             \"resource_id\"?, \"check_after_ms\"?}"
                .into(),
        ));
    }
    serde_json::from_value(v)
        .map_err(|e| CoordinatorError::InvalidArgument(format!("message: {e}")))
}

/// `POST /api/v1/messages`: a prepared message, durable and invisible to consumers.
pub(super) async fn prepare(
    State(app): State<App>,
    h: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    application(&app, &h, true)?;
    let m = new_message(&app, body)?;
    let rec = app.core.prepare_message(m, None).await?;
    Ok(Json(message_json(&rec, false)))
}

/// `POST /api/v1/transactions/{xid}/messages`: a message branch, sent after the global
/// commit and dropped on rollback.
pub(super) async fn prepare_branch(
    State(app): State<App>,
    h: HeaderMap,
    Path(xid): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    application(&app, &h, true)?;
    let x = parse_xid(&xid)?;
    let m = new_message(&app, body)?;
    let rec = app.core.prepare_message(m, Some(x)).await?;
    Ok(Json(message_json(&rec, false)))
}

pub(super) async fn commit(
    State(app): State<App>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    decide(&app, &h, id, true).await
}

pub(super) async fn rollback(
    State(app): State<App>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    decide(&app, &h, id, false).await
}

/// The application's decision: write-once (the same again answers 200, the opposite 409).
async fn decide(app: &App, h: &HeaderMap, id: String, commit: bool) -> ApiResult {
    application(app, h, true)?;
    let st = app
        .core
        .decide_message(id.clone(), commit, "application".into(), false)
        .await?;
    Ok(Json(json!({"message_id": id, "status": st.name()})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ForceBody {
    decision: Option<String>,
}

/// `POST /api/v1/messages/{id}/force {"decision": "commit"|"drop"}`: an operator decides
/// a message check-back could not (undecided, or still prepared). Audited as
/// `message commit` / `message drop`; 409 when it was decided the other way.
pub(super) async fn force(
    State(app): State<App>,
    h: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let who = operator(&app, &h, true)?;
    let b: ForceBody = parse_body(&app, body)?;
    let commit = match b.decision.as_deref() {
        Some("commit") => true,
        Some("drop") => false,
        other => {
            return Err(CoordinatorError::InvalidArgument(format!(
                "body must be {{\"decision\": \"commit\"|\"drop\"}}, not decision {other:?}"
            )))
        }
    };
    let r = app
        .core
        .decide_message(id.clone(), commit, format!("operator {}", who.name), true)
        .await;
    let action = if commit {
        "message commit"
    } else {
        "message drop"
    };
    let result = match &r {
        Ok(st) => format!("ok: {}", st.name()),
        Err(_) => result_text(&r),
    };
    record_audit(&app, &who, action, &format!("message {id}"), &result).await;
    Ok(Json(json!({"message_id": id, "status": r?.name()})))
}

/// `POST /api/v1/messages/{id}/redrive`: a dead message is published again. Audited.
pub(super) async fn redrive(
    State(app): State<App>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let who = operator(&app, &h, true)?;
    let r = app
        .core
        .redrive_message(id.clone(), format!("operator {}", who.name))
        .await;
    record_audit(
        &app,
        &who,
        "message redrive",
        &format!("message {id}"),
        &result_text(&r),
    )
    .await;
    Ok(Json(json!({"message_id": id, "status": r?.name()})))
}

/// `GET /api/v1/messages/{id}`: the message's whole life.
pub(super) async fn show(
    State(app): State<App>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    application(&app, &h, false)?;
    let rec = app.core.message(&id).await?;
    Ok(Json(message_json(&rec, true)))
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    status: Option<String>,
    /// The next page's cursor: messages older than the last one shown, its
    /// `created_ms` and (to order ties on the millisecond) its `message_id`.
    before_ms: Option<u64>,
    before_id: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/v1/messages?status=…&before_ms=…&before_id=…&limit=…`: newest first.
pub(super) async fn list(
    State(app): State<App>,
    h: HeaderMap,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    application(&app, &h, false)?;
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(MessageStatus::parse(s).ok_or_else(|| {
            CoordinatorError::InvalidArgument(format!(
                "unknown message status {s:?} (prepared, confirmed, cancelled, sent, consumed, \
                 undecided, dead)"
            ))
        })?),
    };
    let out = app
        .core
        .list_messages(
            status,
            q.before_ms
                .map(|ms| (ms, q.before_id.as_deref().unwrap_or_default())),
            q.limit.unwrap_or(100),
        )
        .await?;
    Ok(Json(Value::Array(
        out.iter().map(|m| message_json(m, false)).collect(),
    )))
}
