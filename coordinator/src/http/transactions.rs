//! Global transactions and their branches (DESIGN.md "HTTP API", "TCC"), the global row
//! locks, dirty-write conflicts and their resolution, and the prepared XA branches.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};

use crate::traces::Call;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{IntoParams, ToSchema};

use super::bodies::{
    pk, Begun, BranchOperated, ConflictBody, Decided, Lock, PreparedXaBranch, PreparedXaList,
    TccRegistered, Transaction,
};
use super::openapi::{BodyRefused, CredentialRefused, Unavailable};
use super::{
    application, id_number, operator, parse_body, record_audit, result_text, Answer, ApiPath,
    ApiQuery, App, ErrorBody,
};
use crate::core::{parse_xid, ListFilter};
use crate::engine::{
    BranchAction, BranchType, ConflictState, GlobalStatus, ResolveAction, TccCall,
};
use crate::error::CoordinatorError;

/// `?status=`: a global status, or empty for all.
fn status_filter() -> Schema {
    let names = std::iter::once("").chain(GlobalStatus::ALL.iter().map(|s| s.name()));
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(names))
        .description(Some("Only transactions in this status (empty: all)"))
        .into()
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BeginBody {
    /// Shown in the console and searchable.
    name: Option<String>,
    /// Rolled back by the coordinator when not decided within this time (0 or absent:
    /// the configured default; capped by the configured maximum).
    timeout_ms: Option<u64>,
}

/// Begins a global transaction.
#[utoipa::path(
    post,
    path = "/api/v1/transactions",
    operation_id = "begin_transaction",
    tag = "transactions",
    request_body = Option<BeginBody>,
    responses(
        (status = 200, description = "Begun", body = Begun),
        BodyRefused,
        CredentialRefused,
        Unavailable,
    ),
    security((), ("operator_token" = []), ("console_session" = [], "csrf_token" = [])),
)]
pub(super) async fn begin(
    State(app): State<App>,
    h: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer<Begun> {
    application(&app, &h, true)?;
    let b: BeginBody = parse_body(&app, body)?;
    let span = Call::begin(crate::traces::from_headers(&h), "http");
    let xid = app
        .core
        .begin(b.name.unwrap_or_default(), b.timeout_ms.unwrap_or(0))
        .await;
    if let Ok(x) = &xid {
        span.begun(*x);
    }
    span.end(&xid, |_| "begin".into());
    let xid = xid?;
    Ok(Json(Begun {
        xid: rewind_protocol::xid::format(xid),
        status: GlobalStatus::Begin,
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    #[param(schema_with = status_filter)]
    status: Option<String>,
    /// At most this many (default 100, capped by the coordinator).
    limit: Option<usize>,
    /// Page cursor: only transactions with a smaller xid (older).
    before: Option<String>,
    /// Search: an exact xid, or text found in the xid or the name.
    q: Option<String>,
}

/// Global transactions, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/transactions",
    operation_id = "list_transactions",
    tag = "transactions",
    params(ListQuery),
    responses(
        (status = 200, description = "Newest first", body = Vec<Transaction>),
        (status = 400, description = "`invalid_argument`: an unknown status, a `before` that is not an xid, a malformed parameter", body = ErrorBody),
        CredentialRefused,
        Unavailable,
    ),
    security((), ("operator_token" = []), ("console_session" = [])),
)]
pub(super) async fn list(
    State(app): State<App>,
    h: HeaderMap,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Answer<Vec<Transaction>> {
    application(&app, &h, false)?;
    let before = match q.before.as_deref() {
        None | Some("") => None,
        Some(x) => Some(parse_xid(x).map_err(|_| {
            CoordinatorError::InvalidArgument(format!("before={x:?} is not an xid"))
        })?),
    };
    let search = q.q.as_deref().map(str::trim).filter(|s| !s.is_empty());
    if let Some(x) = search.and_then(rewind_protocol::xid::parse) {
        // An exact xid: that transaction or nothing.
        return Ok(Json(match app.core.record(x).await {
            Ok(r) => vec![Transaction::from(&r)],
            Err(CoordinatorError::NotFound(_)) => vec![],
            Err(e) => return Err(e),
        }));
    }
    let status =
        match q.status.as_deref() {
            None | Some("") => None,
            Some(s) => Some(GlobalStatus::parse(s).ok_or_else(|| {
                CoordinatorError::InvalidArgument(format!("unknown status {s:?}"))
            })?),
        };
    let out = app
        .core
        .list(ListFilter {
            status,
            before,
            search: search.map(str::to_string),
            limit: q.limit.unwrap_or(100),
        })
        .await?;
    Ok(Json(out.iter().map(Transaction::from).collect()))
}

/// A global transaction with its branches and status history.
#[utoipa::path(
    get,
    path = "/api/v1/transactions/{xid}",
    operation_id = "get_transaction",
    tag = "transactions",
    params(("xid" = String, Path, description = "The global transaction id")),
    responses(
        (status = 200, description = "The transaction", body = Transaction),
        (status = 404, description = "`not_found`: no such transaction", body = ErrorBody),
        CredentialRefused,
        Unavailable,
    ),
    security((), ("operator_token" = []), ("console_session" = [])),
)]
pub(super) async fn show(
    State(app): State<App>,
    h: HeaderMap,
    ApiPath(xid): ApiPath<String>,
) -> Answer<Transaction> {
    application(&app, &h, false)?;
    let rec = app.core.record(parse_xid(&xid)?).await?;
    Ok(Json(Transaction::from(&rec)))
}

async fn decide(app: &App, h: &HeaderMap, xid: &str, commit: bool) -> Answer<Decided> {
    let who = application(app, h, true)?;
    let r = async {
        let x = parse_xid(xid)?;
        let span = Call::decide(x, commit, crate::traces::from_headers(h));
        let r = if commit {
            app.core.commit(x).await
        } else {
            app.core.rollback(x).await
        };
        span.end(&r, |s| s.name().to_string());
        r
    }
    .await;
    if let Some(who) = who {
        let action = if commit { "commit" } else { "rollback" };
        let result = match &r {
            Ok(st) => format!("ok: {}", st.name()),
            Err(_) => result_text(&r),
        };
        record_audit(app, &who, action, &format!("transaction {xid}"), &result).await;
    }
    Ok(Json(Decided {
        xid: xid.to_string(),
        status: r?,
    }))
}

/// Commits: answers once the decision is durable (phase two runs on).
#[utoipa::path(
    post,
    path = "/api/v1/transactions/{xid}/commit",
    operation_id = "commit_transaction",
    tag = "transactions",
    params(("xid" = String, Path, description = "The global transaction id")),
    responses(
        (status = 200, description = "Decided (again: the same answer)", body = Decided),
        (status = 404, description = "`not_found`: no such transaction", body = ErrorBody),
        (status = 409, description = "`already_decided`: rolled back (or rolling back)", body = ErrorBody),
        CredentialRefused,
        Unavailable,
    ),
    security((), ("operator_token" = []), ("console_session" = [], "csrf_token" = [])),
)]
pub(super) async fn commit(
    State(app): State<App>,
    h: HeaderMap,
    ApiPath(xid): ApiPath<String>,
) -> Answer<Decided> {
    decide(&app, &h, &xid, true).await
}

/// Rolls back: answers after the undo ran (or stalled on a conflict).
#[utoipa::path(
    post,
    path = "/api/v1/transactions/{xid}/rollback",
    operation_id = "rollback_transaction",
    tag = "transactions",
    params(("xid" = String, Path, description = "The global transaction id")),
    responses(
        (status = 200, description = "Rolled back, or stalled (`rollback_failed`, `rollback_retrying`)", body = Decided),
        (status = 404, description = "`not_found`: no such transaction", body = ErrorBody),
        (status = 409, description = "`already_decided`: committed (or committing)", body = ErrorBody),
        CredentialRefused,
        Unavailable,
    ),
    security((), ("operator_token" = []), ("console_session" = [], "csrf_token" = [])),
)]
pub(super) async fn rollback(
    State(app): State<App>,
    h: HeaderMap,
    ApiPath(xid): ApiPath<String>,
) -> Answer<Decided> {
    decide(&app, &h, &xid, false).await
}

#[derive(Deserialize, Clone, Copy, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum ForceDecision {
    Commit,
    Rollback,
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ForceTransaction {
    #[schema(required = true, value_type = ForceDecision)]
    decision: Option<ForceDecision>,
}

/// An operator decides a transaction whose application will not (typically one whose
/// prepared XA branch blocks other sessions). The same calls as the public commit and
/// rollback, so refused (409) the same way when already decided the other way.
/// Audited as `force commit` / `force rollback`.
#[utoipa::path(
    post,
    path = "/api/v1/transactions/{xid}/force",
    operation_id = "force_transaction",
    tag = "transactions",
    params(("xid" = String, Path, description = "The global transaction id")),
    request_body = ForceTransaction,
    responses(
        (status = 200, description = "Decided", body = Decided),
        (status = 404, description = "`not_found`: no such transaction", body = ErrorBody),
        (status = 409, description = "`already_decided`: decided the other way", body = ErrorBody),
        BodyRefused,
        CredentialRefused,
        Unavailable,
    ),
    security(("operator_token" = []), ("console_session" = [], "csrf_token" = [])),
)]
pub(super) async fn force(
    State(app): State<App>,
    h: HeaderMap,
    ApiPath(xid): ApiPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Answer<Decided> {
    let who = operator(&app, &h, true)?;
    let b: ForceTransaction = parse_body(&app, body)?;
    let commit = match b.decision {
        Some(ForceDecision::Commit) => true,
        Some(ForceDecision::Rollback) => false,
        None => {
            return Err(CoordinatorError::InvalidArgument(
                "body must be {\"decision\": \"commit\"|\"rollback\"}".into(),
            ))
        }
    };
    let r = async {
        let x = parse_xid(&xid)?;
        if commit {
            app.core.commit(x).await
        } else {
            app.core.rollback(x).await
        }
    }
    .await;
    let action = if commit {
        "force commit"
    } else {
        "force rollback"
    };
    let result = match &r {
        Ok(st) => format!("ok: {}", st.name()),
        Err(_) => result_text(&r),
    };
    record_audit(&app, &who, action, &format!("transaction {xid}"), &result).await;
    Ok(Json(Decided { xid, status: r? }))
}

/// The only branch type registered over HTTP.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum HttpBranchType {
    Tcc,
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BranchBody {
    /// `tcc`: AT and XA branches register through their proxy.
    #[serde(rename = "type")]
    #[schema(required = true, value_type = HttpBranchType)]
    branch_type: Option<HttpBranchType>,
    /// Shown as the branch's resource (default: the Confirm URL's host).
    #[schema(max_length = 200)]
    name: Option<String>,
    /// An http:// or https:// URL with a host, POSTed `{"xid", "branch_id", "action",
    /// "payload"}` on global commit.
    #[schema(required = true, value_type = String, pattern = "^[Hh][Tt][Tt][Pp][Ss]?://")]
    confirm_url: Option<String>,
    /// Likewise, POSTed on global rollback.
    #[schema(required = true, value_type = String, pattern = "^[Hh][Tt][Tt][Pp][Ss]?://")]
    cancel_url: Option<String>,
    /// Any JSON, passed on to Confirm and Cancel as it was given.
    payload: Option<Value>,
    /// The caller's id for this registration: a retry with the same one answers the
    /// same branch.
    #[schema(max_length = 200)]
    request_id: Option<String>,
}

/// Registers a TCC branch, before calling the participant's Try.
#[utoipa::path(
    post,
    path = "/api/v1/transactions/{xid}/branches",
    operation_id = "register_tcc_branch",
    tag = "transactions",
    params(("xid" = String, Path, description = "The global transaction id")),
    request_body = BranchBody,
    responses(
        (status = 200, description = "Registered", body = TccRegistered),
        (status = 404, description = "`not_found`: no such transaction", body = ErrorBody),
        (status = 409, description = "`not_active`: the transaction is decided already", body = ErrorBody),
        BodyRefused,
        CredentialRefused,
        Unavailable,
    ),
    security((), ("operator_token" = []), ("console_session" = [], "csrf_token" = [])),
)]
pub(super) async fn register_tcc(
    State(app): State<App>,
    h: HeaderMap,
    ApiPath(xid): ApiPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Answer<TccRegistered> {
    application(&app, &h, true)?;
    let x = parse_xid(&xid)?;
    let b: BranchBody = parse_body(&app, body)?;
    if b.branch_type.is_none() {
        return Err(CoordinatorError::InvalidArgument(
            "type must be \"tcc\" (AT and XA branches register through their proxy)".into(),
        ));
    }
    let need = |v: Option<String>, what: &str| {
        v.filter(|u| !u.is_empty())
            .ok_or_else(|| CoordinatorError::InvalidArgument(format!("{what} is required")))
    };
    let call = TccCall {
        confirm_url: need(b.confirm_url, "confirm_url")?,
        cancel_url: need(b.cancel_url, "cancel_url")?,
        payload: b.payload.map(|p| p.to_string()),
    };
    let id = app
        .core
        .register_tcc(
            x,
            b.name.unwrap_or_default(),
            call,
            b.request_id.unwrap_or_default(),
        )
        .await?;
    Ok(Json(TccRegistered {
        xid,
        branch_id: id,
        branch_type: BranchType::Tcc,
    }))
}

/// An operator's action on a TCC branch whose phase two keeps failing: `retry` calls the
/// participant again now, `mark_done` stops calling it (its phase two is known done by
/// other means). Audited.
#[utoipa::path(
    post,
    path = "/api/v1/transactions/{xid}/branches/{branch_id}/{action}",
    operation_id = "operate_branch",
    tag = "transactions",
    params(
        ("xid" = String, Path, description = "The global transaction id"),
        ("branch_id" = u64, Path, description = "The branch"),
        ("action" = BranchAction, Path, description = "What to do"),
    ),
    responses(
        (status = 200, description = "Done: the branch's status now", body = BranchOperated),
        (status = 400, description = "`invalid_argument`: an unknown action or a branch id that is not a number", body = ErrorBody),
        (status = 404, description = "`not_found` / `branch_not_found`", body = ErrorBody),
        (status = 409, description = "`not_decided`: phase two has not begun", body = ErrorBody),
        CredentialRefused,
        Unavailable,
    ),
    security(("operator_token" = []), ("console_session" = [], "csrf_token" = [])),
)]
pub(super) async fn operate_branch(
    State(app): State<App>,
    h: HeaderMap,
    ApiPath((xid, branch_id, action)): ApiPath<(String, String, String)>,
) -> Answer<BranchOperated> {
    let who = operator(&app, &h, true)?;
    let act: BranchAction =
        serde_json::from_value(Value::String(action.clone())).map_err(|_| {
            CoordinatorError::InvalidArgument(format!(
                "unknown branch action {action:?} (retry, mark_done)"
            ))
        })?;
    let r = async {
        let x = parse_xid(&xid)?;
        let b = id_number("branch id", &branch_id)?;
        app.core.operate_branch(x, b, act).await
    }
    .await;
    let result = match &r {
        Ok(st) => format!(
            "ok: {}",
            serde_json::to_value(st)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        ),
        Err(_) => result_text(&r),
    };
    record_audit(
        &app,
        &who,
        &format!("branch {action}"),
        &format!("transaction {xid} branch {branch_id}"),
        &result,
    )
    .await;
    Ok(Json(BranchOperated {
        branch_id: branch_id.parse::<u64>().unwrap_or_default(),
        xid,
        status: r?,
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LocksQuery {
    /// At most this many (default: all).
    limit: Option<usize>,
}

/// Held global row locks; `X-Total-Count` says how many there are when `limit` cut.
#[utoipa::path(
    get,
    path = "/api/v1/locks",
    operation_id = "list_locks",
    tag = "locks and conflicts",
    params(LocksQuery),
    responses(
        (status = 200, description = "Held locks", body = Vec<Lock>,
            headers(("x-total-count" = u64, description = "How many locks are held in all"))),
        (status = 400, description = "`invalid_argument`: a malformed query parameter", body = ErrorBody),
        CredentialRefused,
        Unavailable,
    ),
    security((), ("operator_token" = []), ("console_session" = [])),
)]
pub(super) async fn locks(
    State(app): State<App>,
    h: HeaderMap,
    ApiQuery(q): ApiQuery<LocksQuery>,
) -> Result<Response, CoordinatorError> {
    application(&app, &h, false)?;
    let (held, total) = app.core.held_locks(q.limit.unwrap_or(usize::MAX)).await?;
    let body: Vec<Lock> = held.into_iter().map(Lock::from).collect();
    let mut r = Json(body).into_response();
    r.headers_mut()
        .insert("x-total-count", HeaderValue::from(total as u64));
    Ok(r)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ConflictsQuery {
    /// Only conflicts in this state: `open` (waiting for an operator), `resolving`,
    /// `resolved`, `superseded` (empty: all).
    state: Option<String>,
    /// Only the conflicts of this global transaction.
    xid: Option<String>,
}

/// Dirty-write conflicts, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/conflicts",
    operation_id = "list_conflicts",
    tag = "locks and conflicts",
    params(ConflictsQuery),
    responses(
        (status = 200, description = "Newest first", body = Vec<ConflictBody>),
        (status = 400, description = "`invalid_argument`: a malformed query parameter", body = ErrorBody),
        (status = 404, description = "`not_found`: `xid` is not a transaction id", body = ErrorBody),
        CredentialRefused,
        Unavailable,
    ),
    security((), ("operator_token" = []), ("console_session" = [])),
)]
pub(super) async fn conflicts(
    State(app): State<App>,
    h: HeaderMap,
    ApiQuery(q): ApiQuery<ConflictsQuery>,
) -> Answer<Vec<ConflictBody>> {
    application(&app, &h, false)?;
    let xid = match q.xid.as_deref() {
        None | Some("") => None,
        Some(x) => Some(parse_xid(x)?),
    };
    let wanted = |s: &ConflictState| {
        q.state.as_deref().is_none_or(|want| {
            want.is_empty() || serde_json::to_value(s).is_ok_and(|v| v["state"] == want)
        })
    };
    Ok(Json(
        app.core
            .conflicts(xid)
            .await?
            .iter()
            .filter(|c| wanted(&c.state))
            .map(ConflictBody::from)
            .collect(),
    ))
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ResolveBody {
    /// `restore_before`: write the before image over the current row; `keep_current`:
    /// keep the row as it is now; `retry`: the row was repaired by hand, undo again.
    #[schema(required = true, value_type = ResolveAction)]
    action: Option<ResolveAction>,
}

/// An operator resolves a dirty-write conflict; answers once the proxy acted (bounded).
/// A resolution that would overwrite a newer change is refused: the conflict is open
/// again with `last_error` saying so. Audited.
#[utoipa::path(
    post,
    path = "/api/v1/conflicts/{id}/resolve",
    operation_id = "resolve_conflict",
    tag = "locks and conflicts",
    params(("id" = u64, Path, description = "The conflict")),
    request_body = ResolveBody,
    responses(
        (status = 200, description = "The conflict's new state", body = ConflictBody),
        (status = 404, description = "`conflict_not_found`", body = ErrorBody),
        (status = 409, description = "`conflict_not_open`: being resolved or resolved already", body = ErrorBody),
        BodyRefused,
        CredentialRefused,
        Unavailable,
    ),
    security(("operator_token" = []), ("console_session" = [], "csrf_token" = [])),
)]
pub(super) async fn resolve(
    State(app): State<App>,
    h: HeaderMap,
    ApiPath(id): ApiPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Answer<ConflictBody> {
    let who = operator(&app, &h, true)?;
    let id = id_number("conflict id", &id)?;
    let b: ResolveBody = parse_body(&app, body)?;
    let action = b.action.ok_or_else(|| {
        CoordinatorError::InvalidArgument(
            "body must be {\"action\": \"restore_before\"|\"keep_current\"|\"retry\"}".into(),
        )
    })?;
    let action_name = serde_json::to_value(action)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let target = match app.core.conflict(id) {
        Some(c) => format!(
            "conflict {id} ({} {} {})",
            rewind_protocol::xid::format(c.xid),
            c.table,
            serde_json::to_value(pk(&c.pk)).unwrap_or_default()
        ),
        None => format!("conflict {id}"),
    };
    let submitted = app.core.resolve(id, action).await;
    if submitted.is_err() {
        let result = result_text(&submitted);
        record_audit(
            &app,
            &who,
            &format!("resolve {action_name}"),
            &target,
            &result,
        )
        .await;
        submitted?;
    }
    // Answer once the proxy acted (or failed), bounded.
    let c = app.core.settled_conflict(id).await?;
    let result = match (&c.state, &c.last_error) {
        (ConflictState::Resolved { .. }, _) => "ok: resolved".to_string(),
        (ConflictState::Resolving { .. }, _) => {
            "pending: the proxy has not answered yet".to_string()
        }
        (ConflictState::Open, Some(err)) => format!("refused: {err}"),
        (st, _) => format!("{st:?}"),
    };
    record_audit(
        &app,
        &who,
        &format!("resolve {action_name}"),
        &target,
        &result,
    )
    .await;
    Ok(Json(ConflictBody::from(&c)))
}

/// The prepared XA branches, oldest first, with the sessions waiting on their row
/// locks. Operator only: the waiters' SQL is other applications' data.
#[utoipa::path(
    get,
    path = "/api/v1/xa",
    operation_id = "list_prepared_xa",
    tag = "locks and conflicts",
    responses(
        (status = 200, description = "Prepared XA branches", body = PreparedXaList),
        CredentialRefused,
        Unavailable,
    ),
    security(("operator_token" = []), ("console_session" = [])),
)]
pub(super) async fn prepared_xa(State(app): State<App>, h: HeaderMap) -> Answer<PreparedXaList> {
    operator(&app, &h, false)?;
    let now = crate::sequencer::now_ms();
    let branches = app
        .core
        .prepared_xa()
        .await?
        .iter()
        .map(|(p, w)| PreparedXaBranch::new(p, w, now))
        .collect();
    Ok(Json(PreparedXaList { branches }))
}
