//! The local message tables' relay as the proxies report it (DESIGN.md "Local message
//! table (outbox) and relay"): per-resource figures, DEAD messages and their redrive.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use super::bodies::{DeadOutboxMessage, Outbox, OutboxStatus, Redriven};
use super::openapi::{CredentialRefused, Unavailable};
use super::{application, operator, record_audit, Answer, ApiPath, ApiQuery, App, ErrorBody};
use crate::error::CoordinatorError;

/// Every resource's latest outbox report, sorted by resource id. Read like the
/// conflicts: open to applications unless `api_auth = "all"`.
#[utoipa::path(
    get,
    path = "/api/v1/outbox",
    operation_id = "list_outbox",
    tag = "outbox",
    responses(
        (status = 200, description = "One report per resource", body = Vec<Outbox>),
        CredentialRefused,
        Unavailable,
    ),
    security((), ("operator_token" = []), ("console_session" = [])),
)]
pub(super) async fn outbox(State(app): State<App>, h: HeaderMap) -> Answer<Vec<Outbox>> {
    application(&app, &h, false)?;
    Ok(Json(
        app.core.outbox_reports().iter().map(Outbox::from).collect(),
    ))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct DeadQuery {
    /// Only this resource's (empty: every resource's).
    resource_id: Option<String>,
}

/// DEAD outbox messages, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/outbox/dead",
    operation_id = "list_dead_outbox_messages",
    tag = "outbox",
    params(DeadQuery),
    responses(
        (status = 200, description = "Newest first", body = Vec<DeadOutboxMessage>),
        (status = 400, description = "`invalid_argument`: a malformed query parameter", body = ErrorBody),
        CredentialRefused,
        Unavailable,
    ),
    security((), ("operator_token" = []), ("console_session" = [])),
)]
pub(super) async fn outbox_dead(
    State(app): State<App>,
    h: HeaderMap,
    ApiQuery(q): ApiQuery<DeadQuery>,
) -> Answer<Vec<DeadOutboxMessage>> {
    application(&app, &h, false)?;
    let resource = q.resource_id.as_deref().filter(|r| !r.is_empty());
    Ok(Json(
        app.core
            .dead_messages(resource)
            .iter()
            .map(|(r, d)| DeadOutboxMessage::new(r, d))
            .collect(),
    ))
}

/// Puts one DEAD message back to NEW through a proxy of its resource. Operator only,
/// audited with what the proxy answered: `done`, `not dead` or `failed: …`.
#[utoipa::path(
    post,
    path = "/api/v1/outbox/{resource_id}/messages/{message_id}/redrive",
    operation_id = "redrive_outbox_message",
    tag = "outbox",
    params(
        ("resource_id" = String, Path, description = "The message's resource"),
        ("message_id" = String, Path, description = "The DEAD message"),
    ),
    responses(
        (status = 200, description = "NEW again: the relay publishes it", body = Redriven),
        (status = 404, description = "`resource_not_found` (no proxy ever reported it) or `message_not_dead`", body = ErrorBody),
        CredentialRefused,
        Unavailable,
    ),
    security(("operator_token" = []), ("console_session" = [], "csrf_token" = [])),
)]
pub(super) async fn redrive(
    State(app): State<App>,
    h: HeaderMap,
    ApiPath((resource_id, message_id)): ApiPath<(String, String)>,
) -> Answer<Redriven> {
    let who = operator(&app, &h, true)?;
    let r = app.core.redrive(&resource_id, &message_id).await;
    let result = match &r {
        Ok(()) => "done".to_string(),
        Err(CoordinatorError::MessageNotDead { .. }) => "not dead".to_string(),
        Err(e) => format!("failed: {e}"),
    };
    let target = format!("{resource_id}/{message_id}");
    record_audit(&app, &who, "outbox redrive", &target, &result).await;
    r?;
    Ok(Json(Redriven {
        resource_id,
        message_id,
        status: OutboxStatus::New,
    }))
}
