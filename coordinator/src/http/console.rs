//! The admin console: its page, script and stylesheet, the operator's login, logout and
//! session, and the audit log it shows.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::bodies::{Audit, LoggedIn, LoggedOut, Session};
use super::openapi::{BodyRefused, CredentialRefused, Unavailable};
use super::{operator, parse_body, record_audit, Answer, ApiQuery, App};
use crate::auth::{Operator, COOKIE};
use crate::error::CoordinatorError;

/// Headers every console asset carries: no framing (the confirmations must not be
/// clickjacked), no inline script, nothing cached.
fn console_asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    r
}

pub(super) async fn page() -> Response {
    console_asset(
        "text/html; charset=utf-8",
        include_str!("../console/index.html"),
    )
}

pub(super) async fn script() -> Response {
    console_asset(
        "text/javascript; charset=utf-8",
        include_str!("../console/console.js"),
    )
}

pub(super) async fn stylesheet() -> Response {
    console_asset(
        "text/css; charset=utf-8",
        include_str!("../console/console.css"),
    )
}

/// An operator's name and secret (both absent: refused like a wrong pair).
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct LoginBody {
    name: Option<String>,
    secret: Option<String>,
}

/// Opens a console session: a cookie (`HttpOnly`, `SameSite=Strict`) and the CSRF token
/// the console sends back on every change. A wrong pair is answered slowly, without
/// saying which part was wrong.
#[utoipa::path(
    post,
    path = "/api/v1/login",
    operation_id = "login",
    tag = "operators",
    request_body = Option<LoginBody>,
    responses(
        (status = 200, description = "Logged in", body = LoggedIn,
            headers(("set-cookie" = String, description = "The session cookie, `rewind_session`"))),
        (status = 401, description = "`unauthorized`: wrong operator name or secret", body = super::ErrorBody),
        BodyRefused,
        Unavailable,
    ),
)]
pub(super) async fn login(
    State(app): State<App>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, CoordinatorError> {
    let b: LoginBody = parse_body(&app, body)?;
    let (name, secret) = (b.name.unwrap_or_default(), b.secret.unwrap_or_default());
    let Some(l) = app.auth.login(&name, &secret) else {
        // Slow guessing down; say nothing about which part was wrong.
        tokio::time::sleep(Duration::from_millis(300)).await;
        tracing::warn!(operator = %name.chars().take(64).collect::<String>(), "console login refused");
        return Err(CoordinatorError::Unauthorized(
            "wrong operator name or secret".into(),
        ));
    };
    let who = Operator { name: name.clone() };
    record_audit(&app, &who, "login", "console", "ok").await;
    let mut r = Json(LoggedIn {
        operator: name,
        csrf: l.csrf,
    })
    .into_response();
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        l.cookie_value, l.max_age_secs
    );
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("cookie is ASCII"),
    );
    Ok(r)
}

/// Ends the console session (the cookie is cleared).
#[utoipa::path(
    post,
    path = "/api/v1/logout",
    operation_id = "logout",
    tag = "operators",
    responses(
        (status = 200, description = "Logged out", body = LoggedOut,
            headers(("set-cookie" = String, description = "Clears `rewind_session`"))),
        CredentialRefused,
        Unavailable,
    ),
    security(("operator_token" = []), ("console_session" = [], "csrf_token" = [])),
)]
pub(super) async fn logout(
    State(app): State<App>,
    h: HeaderMap,
) -> Result<Response, CoordinatorError> {
    let who = operator(&app, &h, true)?;
    app.auth.logout(&h);
    record_audit(&app, &who, "logout", "console", "ok").await;
    let mut r = Json(LoggedOut {
        operator: who.name,
        logged_out: true,
    })
    .into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&format!(
            "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
        ))
        .expect("ASCII"),
    );
    Ok(r)
}

/// Who the console is logged in as (and the CSRF token again, for a reloaded page).
#[utoipa::path(
    get,
    path = "/api/v1/session",
    operation_id = "get_session",
    tag = "operators",
    responses(
        (status = 200, description = "The operator", body = Session),
        CredentialRefused,
        Unavailable,
    ),
    security(("operator_token" = []), ("console_session" = [])),
)]
pub(super) async fn session(State(app): State<App>, h: HeaderMap) -> Answer<Session> {
    let who = operator(&app, &h, false)?;
    Ok(Json(Session {
        operator: who.name,
        csrf: app.auth.csrf_of(&h),
        api_auth: app.api_auth,
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditQuery {
    /// Page cursor: only entries with a smaller id (older).
    before: Option<u64>,
    /// At most this many entries (1 to 1000; default 100).
    limit: Option<usize>,
}

/// The audit log, newest first: every operator action with its result.
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    operation_id = "list_audit",
    tag = "operators",
    params(AuditQuery),
    responses(
        (status = 200, description = "Entries, newest first", body = Vec<Audit>),
        (status = 400, description = "`invalid_argument`: a malformed query parameter", body = super::ErrorBody),
        CredentialRefused,
        Unavailable,
    ),
    security(("operator_token" = []), ("console_session" = [])),
)]
pub(super) async fn audit(
    State(app): State<App>,
    h: HeaderMap,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Answer<Vec<Audit>> {
    operator(&app, &h, false)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let entries = app.core.audit_log(q.before, limit);
    Ok(Json(entries.iter().map(Audit::from).collect()))
}
