//! The message service's HTTP calls (DESIGN.md, "Message service: half messages with
//! check-back"): prepare, decide, inspect and list half messages, add a message branch to
//! a global transaction, and the operator's commit / drop of an undecided message and
//! redrive of a dead one (both audited).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{IntoParams, ToSchema};

use super::bodies::{Message, MessageDecided, MessageDetail};
use super::openapi::{BodyRefused, CredentialRefused, Unavailable};
use super::{
    application, operator, parse_body, record_audit, result_text, Answer, ApiPath, ApiQuery, App,
    ErrorBody,
};
use crate::core::parse_xid;
use crate::engine::MessageStatus;
use crate::error::CoordinatorError;
use crate::messages::NewMessage;

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

/// Prepares a half message: durable and invisible to consumers until confirmed (by the
/// producer's local transaction tagged `/*+ MSG('<message_id>') */`, or a commit call).
#[utoipa::path(
    post,
    path = "/api/v1/messages",
    operation_id = "prepare_message",
    tag = "messages",
    request_body = NewMessage,
    responses(
        (status = 200, description = "Prepared (a retry with the same `message_id`: the same message)", body = Message),
        (status = 409, description = "`message_refused`: that `message_id` names another message", body = ErrorBody),
        BodyRefused,
        CredentialRefused,
        Unavailable,
    ),
    security((), ("operator_token" = []), ("console_session" = [], "csrf_token" = [])),
)]
pub(super) async fn prepare(
    State(app): State<App>,
    h: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer<Message> {
    application(&app, &h, true)?;
    let m = new_message(&app, body)?;
    let rec = app.core.prepare_message(m, None).await?;
    Ok(Json(Message::from(&rec)))
}

/// Adds a message branch to a global transaction: sent after the global commit, dropped
/// on rollback.
#[utoipa::path(
    post,
    path = "/api/v1/transactions/{xid}/messages",
    operation_id = "prepare_message_branch",
    tag = "messages",
    params(("xid" = String, Path, description = "The global transaction id")),
    request_body = NewMessage,
    responses(
        (status = 200, description = "Prepared as a branch", body = Message),
        (status = 404, description = "`not_found`: no such transaction", body = ErrorBody),
        (status = 409, description = "`not_active`: the transaction is decided already; `message_refused`", body = ErrorBody),
        BodyRefused,
        CredentialRefused,
        Unavailable,
    ),
    security((), ("operator_token" = []), ("console_session" = [], "csrf_token" = [])),
)]
pub(super) async fn prepare_branch(
    State(app): State<App>,
    h: HeaderMap,
    ApiPath(xid): ApiPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Answer<Message> {
    application(&app, &h, true)?;
    let x = parse_xid(&xid)?;
    let m = new_message(&app, body)?;
    let rec = app.core.prepare_message(m, Some(x)).await?;
    Ok(Json(Message::from(&rec)))
}

/// Confirms a prepared message (write-once: the same again answers 200).
#[utoipa::path(
    post,
    path = "/api/v1/messages/{id}/commit",
    operation_id = "commit_message",
    tag = "messages",
    params(("id" = String, Path, description = "The message id")),
    responses(
        (status = 200, description = "Decided", body = MessageDecided),
        (status = 404, description = "`message_not_found`", body = ErrorBody),
        (status = 409, description = "`already_decided` the other way, or `message_refused` (a branch's: its transaction decides)", body = ErrorBody),
        CredentialRefused,
        Unavailable,
    ),
    security((), ("operator_token" = []), ("console_session" = [], "csrf_token" = [])),
)]
pub(super) async fn commit(
    State(app): State<App>,
    h: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Answer<MessageDecided> {
    decide(&app, &h, id, true).await
}

/// Cancels a prepared message (write-once: the same again answers 200).
#[utoipa::path(
    post,
    path = "/api/v1/messages/{id}/rollback",
    operation_id = "rollback_message",
    tag = "messages",
    params(("id" = String, Path, description = "The message id")),
    responses(
        (status = 200, description = "Decided", body = MessageDecided),
        (status = 404, description = "`message_not_found`", body = ErrorBody),
        (status = 409, description = "`already_decided` the other way, or `message_refused` (a branch's: its transaction decides)", body = ErrorBody),
        CredentialRefused,
        Unavailable,
    ),
    security((), ("operator_token" = []), ("console_session" = [], "csrf_token" = [])),
)]
pub(super) async fn rollback(
    State(app): State<App>,
    h: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Answer<MessageDecided> {
    decide(&app, &h, id, false).await
}

/// The application's decision: write-once (the same again answers 200, the opposite 409).
async fn decide(app: &App, h: &HeaderMap, id: String, commit: bool) -> Answer<MessageDecided> {
    application(app, h, true)?;
    let st = app
        .core
        .decide_message(id.clone(), commit, "application".into(), false)
        .await?;
    Ok(Json(MessageDecided {
        message_id: id,
        status: st,
    }))
}

#[derive(Deserialize, Clone, Copy, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum MessageForce {
    Commit,
    Drop,
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ForceMessage {
    #[schema(required = true, value_type = MessageForce)]
    decision: Option<MessageForce>,
}

/// An operator decides a message check-back could not (undecided, or still prepared):
/// `commit` publishes it, `drop` cancels it. Audited as `message commit` /
/// `message drop`.
#[utoipa::path(
    post,
    path = "/api/v1/messages/{id}/force",
    operation_id = "force_message",
    tag = "messages",
    params(("id" = String, Path, description = "The message id")),
    request_body = ForceMessage,
    responses(
        (status = 200, description = "Decided", body = MessageDecided),
        (status = 404, description = "`message_not_found`", body = ErrorBody),
        (status = 409, description = "`already_decided` the other way, or `message_refused`", body = ErrorBody),
        BodyRefused,
        CredentialRefused,
        Unavailable,
    ),
    security(("operator_token" = []), ("console_session" = [], "csrf_token" = [])),
)]
pub(super) async fn force(
    State(app): State<App>,
    h: HeaderMap,
    ApiPath(id): ApiPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Answer<MessageDecided> {
    let who = operator(&app, &h, true)?;
    let b: ForceMessage = parse_body(&app, body)?;
    let commit = match b.decision {
        Some(MessageForce::Commit) => true,
        Some(MessageForce::Drop) => false,
        None => {
            return Err(CoordinatorError::InvalidArgument(
                "body must be {\"decision\": \"commit\"|\"drop\"}".into(),
            ))
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
    Ok(Json(MessageDecided {
        message_id: id,
        status: r?,
    }))
}

/// A dead message (its broker refused it too often) is published again. Audited.
#[utoipa::path(
    post,
    path = "/api/v1/messages/{id}/redrive",
    operation_id = "redrive_message",
    tag = "messages",
    params(("id" = String, Path, description = "The message id")),
    responses(
        (status = 200, description = "Confirmed again: it is published next", body = MessageDecided),
        (status = 404, description = "`message_not_found`", body = ErrorBody),
        (status = 409, description = "`message_refused`: not dead", body = ErrorBody),
        CredentialRefused,
        Unavailable,
    ),
    security(("operator_token" = []), ("console_session" = [], "csrf_token" = [])),
)]
pub(super) async fn redrive(
    State(app): State<App>,
    h: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Answer<MessageDecided> {
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
    Ok(Json(MessageDecided {
        message_id: id,
        status: r?,
    }))
}

/// A message's whole life: payload, headers, history with timestamps.
#[utoipa::path(
    get,
    path = "/api/v1/messages/{id}",
    operation_id = "get_message",
    tag = "messages",
    params(("id" = String, Path, description = "The message id")),
    responses(
        (status = 200, description = "The message", body = MessageDetail),
        (status = 404, description = "`message_not_found`", body = ErrorBody),
        CredentialRefused,
        Unavailable,
    ),
    security((), ("operator_token" = []), ("console_session" = [])),
)]
pub(super) async fn show(
    State(app): State<App>,
    h: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Answer<MessageDetail> {
    application(&app, &h, false)?;
    let rec = app.core.message(&id).await?;
    Ok(Json(MessageDetail::from(&rec)))
}

/// `?status=`: a message status, or empty for all.
fn status_filter() -> Schema {
    let names = std::iter::once("").chain(MessageStatus::ALL.iter().map(|s| s.name()));
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(names))
        .description(Some("Only messages in this status (empty: all)"))
        .into()
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    #[param(schema_with = status_filter)]
    status: Option<String>,
    /// The next page's cursor: messages older than the last one shown, its
    /// `created_ms` and (to order ties on the millisecond) its `message_id`.
    before_ms: Option<u64>,
    before_id: Option<String>,
    /// At most this many (default 100, capped by the coordinator).
    limit: Option<usize>,
}

/// Half messages, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/messages",
    operation_id = "list_messages",
    tag = "messages",
    params(ListQuery),
    responses(
        (status = 200, description = "Newest first", body = Vec<Message>),
        (status = 400, description = "`invalid_argument`: an unknown status or a malformed parameter", body = ErrorBody),
        CredentialRefused,
        Unavailable,
    ),
    security((), ("operator_token" = []), ("console_session" = [])),
)]
pub(super) async fn list(
    State(app): State<App>,
    h: HeaderMap,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Answer<Vec<Message>> {
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
    Ok(Json(out.iter().map(Message::from).collect()))
}
