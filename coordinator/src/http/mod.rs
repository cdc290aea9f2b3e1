//! REST API of DESIGN.md, the admin console, /metrics and /healthz. Bodies are read as
//! bytes (bounded by the body limit) and parsed here, so malformed or oversized input
//! always gets the same JSON error shape.
//!
//! Access ([`crate::auth`]): the console's data and every operator action need the
//! operator credential; the application calls stay open unless `api_auth = "all"`.
//! Every operator action lands in the audit log (through the state machine) with its
//! result, failures included.

mod messages;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{Auth, Operator, COOKIE};
use crate::config::ApiAuth;
use crate::core::{parse_xid, Coordinator, ListFilter};
use crate::engine::{
    AuditEntry, BranchAction, BranchType, Conflict, ConflictState, GlobalRecord, GlobalStatus,
    PreparedXa, ResolveAction, TccCall,
};
use crate::error::CoordinatorError;
use crate::locks::RowKey;
use crate::outbox::{DeadMessage, ResourceOutbox};
use crate::xa_waits::XaWaiter;

#[derive(Clone)]
struct App {
    core: Coordinator,
    body_limit: usize,
    auth: Arc<Auth>,
    api_auth: ApiAuth,
}

pub fn router(core: Coordinator, body_limit: usize, auth: Arc<Auth>, api_auth: ApiAuth) -> Router {
    Router::new()
        .route("/", get(console_page))
        .route("/console.js", get(console_js))
        .route("/console.css", get(console_css))
        .route("/api/v1/login", post(login))
        .route("/api/v1/logout", post(logout))
        .route("/api/v1/session", get(session))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/transactions", post(begin).get(list))
        .route("/api/v1/transactions/{xid}", get(show))
        .route("/api/v1/transactions/{xid}/commit", post(commit))
        .route("/api/v1/transactions/{xid}/rollback", post(rollback))
        .route("/api/v1/transactions/{xid}/force", post(force))
        .route("/api/v1/transactions/{xid}/branches", post(register_tcc))
        .route(
            "/api/v1/transactions/{xid}/branches/{branch_id}/{action}",
            post(operate_branch),
        )
        .route(
            "/api/v1/transactions/{xid}/messages",
            post(messages::prepare_branch),
        )
        .route(
            "/api/v1/messages",
            post(messages::prepare).get(messages::list),
        )
        .route("/api/v1/messages/{id}", get(messages::show))
        .route("/api/v1/messages/{id}/commit", post(messages::commit))
        .route("/api/v1/messages/{id}/rollback", post(messages::rollback))
        .route("/api/v1/messages/{id}/force", post(messages::force))
        .route("/api/v1/messages/{id}/redrive", post(messages::redrive))
        .route("/api/v1/locks", get(locks))
        .route("/api/v1/conflicts", get(conflicts))
        .route("/api/v1/conflicts/{id}/resolve", post(resolve))
        .route("/api/v1/xa", get(prepared_xa))
        .route("/api/v1/outbox", get(outbox))
        .route("/api/v1/outbox/dead", get(outbox_dead))
        .route(
            "/api/v1/outbox/{resource_id}/messages/{message_id}/redrive",
            post(redrive),
        )
        .route("/api/v1/cluster", get(cluster_info))
        .route("/api/v1/cluster/members", post(cluster_add))
        .route(
            "/api/v1/cluster/members/{id}",
            axum::routing::delete(cluster_remove),
        )
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "not_found", "message": "no such endpoint"})),
            )
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            core.clone(),
            leader_gate,
        ))
        .with_state(App {
            core,
            body_limit,
            auth,
            api_auth,
        })
}

// ---- access --------------------------------------------------------------------------

/// The operator behind the request (required).
fn operator(app: &App, h: &HeaderMap, mutating: bool) -> Result<Operator, CoordinatorError> {
    app.auth.check(h, mutating)
}

/// Application calls: open unless `api_auth = "all"`. Answers the operator when the
/// call is an operator action to audit: a credential presented although the call is
/// open, or a console session. (With `all`, applications send their Bearer token on
/// every call; that traffic is not an operator action.)
fn application(
    app: &App,
    h: &HeaderMap,
    mutating: bool,
) -> Result<Option<Operator>, CoordinatorError> {
    let bearer = h.contains_key(header::AUTHORIZATION);
    let console = mutating && h.contains_key("x-csrf-token");
    match app.api_auth {
        ApiAuth::All => {
            let who = operator(app, h, mutating)?;
            Ok((!bearer).then_some(who))
        }
        ApiAuth::Operator if bearer || console => operator(app, h, mutating).map(Some),
        ApiAuth::Operator => Ok(None),
    }
}

async fn record_audit(app: &App, who: &Operator, action: &str, target: &str, result: &str) {
    app.core.audit(&who.name, action, target, result).await;
}

fn result_text<T>(r: &Result<T, CoordinatorError>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("refused: {e}"),
    }
}

// ---- console -------------------------------------------------------------------------

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

async fn console_page() -> Response {
    console_asset(
        "text/html; charset=utf-8",
        include_str!("../console/index.html"),
    )
}

async fn console_js() -> Response {
    console_asset(
        "text/javascript; charset=utf-8",
        include_str!("../console/console.js"),
    )
}

async fn console_css() -> Response {
    console_asset(
        "text/css; charset=utf-8",
        include_str!("../console/console.css"),
    )
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    name: Option<String>,
    secret: Option<String>,
}

async fn login(
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
    let mut r = Json(json!({"operator": name, "csrf": l.csrf})).into_response();
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

async fn logout(State(app): State<App>, h: HeaderMap) -> Result<Response, CoordinatorError> {
    let who = operator(&app, &h, true)?;
    app.auth.logout(&h);
    record_audit(&app, &who, "logout", "console", "ok").await;
    let mut r = Json(json!({"operator": who.name, "logged_out": true})).into_response();
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
async fn session(State(app): State<App>, h: HeaderMap) -> ApiResult {
    let who = operator(&app, &h, false)?;
    Ok(Json(json!({
        "operator": who.name,
        "csrf": app.auth.csrf_of(&h),
        "api_auth": match app.api_auth { ApiAuth::Operator => "operator", ApiAuth::All => "all" },
    })))
}

#[derive(Deserialize)]
struct AuditQuery {
    before: Option<u64>,
    limit: Option<usize>,
}

fn audit_json(a: &AuditEntry) -> Value {
    json!({
        "id": a.id,
        "at_ms": a.at_ms,
        "who": a.who,
        "action": a.action,
        "target": a.target,
        "result": a.result,
    })
}

async fn audit(State(app): State<App>, h: HeaderMap, Query(q): Query<AuditQuery>) -> ApiResult {
    operator(&app, &h, false)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let entries = app.core.audit_log(q.before, limit);
    Ok(Json(Value::Array(entries.iter().map(audit_json).collect())))
}

// ---- cluster ------------------------------------------------------------------------

/// In cluster mode only the leader serves the API (others answer 503 `not_leader` with
/// the leader's addresses); the console's files, /healthz, /metrics and the cluster
/// view are served by every member.
async fn leader_gate(
    State(core): State<Coordinator>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    let open = !path.starts_with("/api/v1/") || path == "/api/v1/cluster";
    if !open {
        if let Err(e) = core.leader_only() {
            return e.into_response();
        }
    }
    next.run(req).await
}

async fn healthz(State(app): State<App>) -> Json<Value> {
    Json(match app.core.cluster() {
        None => json!({"status": "serving", "role": "standalone"}),
        Some(c) => {
            let mut v = c.describe();
            v["status"] = json!("serving");
            v
        }
    })
}

fn cluster_of(app: &App) -> Result<&crate::cluster::Cluster, CoordinatorError> {
    app.core.cluster().ok_or_else(|| {
        CoordinatorError::InvalidArgument(
            "this coordinator runs as a single node (no [cluster] configured)".into(),
        )
    })
}

async fn cluster_info(State(app): State<App>) -> ApiResult {
    Ok(Json(cluster_of(&app)?.describe()))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AddMember {
    node_id: u64,
    grpc: String,
    http: String,
}

/// Adds a member (as a learner until it caught up, then a voter). Operator only.
async fn cluster_add(
    State(app): State<App>,
    h: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let who = operator(&app, &h, true)?;
    let b: AddMember = parse_body(&app, body)?;
    if b.node_id == 0 || b.grpc.parse::<std::net::SocketAddr>().is_err() {
        return Err(CoordinatorError::InvalidArgument(
            "want {\"node_id\": N > 0, \"grpc\": \"HOST:PORT\", \"http\": \"HOST:PORT\"}".into(),
        ));
    }
    let c = cluster_of(&app)?;
    let r = c
        .add_member(
            b.node_id,
            crate::cluster::Member {
                grpc: b.grpc.clone(),
                http: b.http.clone(),
            },
        )
        .await;
    let target = format!("node {} (gRPC {}, HTTP {})", b.node_id, b.grpc, b.http);
    record_audit(&app, &who, "cluster add member", &target, &result_text(&r)).await;
    r?;
    Ok(Json(c.describe()))
}

/// Removes a member from the cluster. Operator only.
async fn cluster_remove(State(app): State<App>, h: HeaderMap, Path(id): Path<String>) -> ApiResult {
    let who = operator(&app, &h, true)?;
    let id: u64 = id.parse().map_err(|_| {
        CoordinatorError::InvalidArgument(format!("node id {id:?} is not a number"))
    })?;
    let c = cluster_of(&app)?;
    let r = c.remove_member(id).await;
    record_audit(
        &app,
        &who,
        "cluster remove member",
        &format!("node {id}"),
        &result_text(&r),
    )
    .await;
    r?;
    Ok(Json(c.describe()))
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

fn key_json(k: &RowKey) -> Value {
    json!({"table": k.table, "pk": pk_json(&k.pk)})
}

fn global_json(s: &GlobalRecord) -> Value {
    json!({
        "xid": rewind_protocol::xid::format(s.xid),
        "name": s.name,
        "status": s.status.name(),
        "timed_out": s.timed_out,
        "timeout_ms": s.deadline_ms.saturating_sub(s.created_ms),
        "created_ms": s.created_ms,
        "deadline_ms": s.deadline_ms,
        "updated_ms": s.updated_ms,
        "finished_ms": s.finished_ms,
        "history": s.history.iter().map(|h| json!({
            "status": h.status.name(),
            "at_ms": h.at_ms,
        })).collect::<Vec<_>>(),
        "branches": s.branches.iter().map(branch_json).collect::<Vec<_>>(),
    })
}

fn branch_json(b: &crate::engine::BranchRecord) -> Value {
    let mut v = json!({
        "branch_id": b.branch_id,
        "type": b.branch_type,
        "resource_id": b.resource_id,
        "status": b.status,
        "lock_keys": b.lock_keys.iter().map(key_json).collect::<Vec<_>>(),
        "locks_held": b.locks_held,
        "registered_ms": b.registered_ms,
        "phase_two_attempts": b.phase_two_attempts,
        "last_error": b.last_error,
    });
    if let (Some(t), Some(obj)) = (&b.tcc, v.as_object_mut()) {
        obj.insert("name".into(), json!(b.resource_id));
        obj.insert("confirm_url".into(), json!(t.confirm_url));
        obj.insert("cancel_url".into(), json!(t.cancel_url));
        let payload = t
            .payload
            .as_deref()
            .and_then(|p| serde_json::from_str::<Value>(p).ok())
            .unwrap_or(Value::Null);
        obj.insert("payload".into(), payload);
    }
    if let (Some(id), Some(obj)) = (&b.message_id, v.as_object_mut()) {
        obj.insert("message_id".into(), json!(id));
    }
    if let (BranchType::Xa, Some(obj)) = (b.branch_type, v.as_object_mut()) {
        // The XA transaction in the resource's database: XA RECOVER shows it as
        // (gtrid = xid, bqual).
        obj.insert("xa_bqual".into(), json!(b.request_id));
    }
    debug_assert_eq!(b.tcc.is_some(), b.branch_type == BranchType::Tcc);
    v
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
    h: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, CoordinatorError> {
    application(&app, &h, true)?;
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
    /// Page cursor: only transactions with a smaller xid (older).
    before: Option<String>,
    /// Search: an exact xid, or text found in the xid or the name.
    q: Option<String>,
}

async fn list(State(app): State<App>, h: HeaderMap, Query(q): Query<ListQuery>) -> ApiResult {
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
            Ok(r) => Value::Array(vec![global_json(&r)]),
            Err(CoordinatorError::NotFound(_)) => Value::Array(vec![]),
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
    Ok(Json(Value::Array(out.iter().map(global_json).collect())))
}

async fn show(State(app): State<App>, h: HeaderMap, Path(xid): Path<String>) -> ApiResult {
    application(&app, &h, false)?;
    let rec = app.core.record(parse_xid(&xid)?).await?;
    Ok(Json(global_json(&rec)))
}

async fn decide(app: &App, h: &HeaderMap, xid: &str, commit: bool) -> ApiResult {
    let who = application(app, h, true)?;
    let r = async {
        let x = parse_xid(xid)?;
        if commit {
            app.core.commit(x).await
        } else {
            app.core.rollback(x).await
        }
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
    Ok(Json(json!({"xid": xid, "status": r?.name()})))
}

async fn commit(State(app): State<App>, h: HeaderMap, Path(xid): Path<String>) -> ApiResult {
    decide(&app, &h, &xid, true).await
}

async fn rollback(State(app): State<App>, h: HeaderMap, Path(xid): Path<String>) -> ApiResult {
    decide(&app, &h, &xid, false).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ForceBody {
    decision: Option<String>,
}

/// `POST /api/v1/transactions/{xid}/force {"decision": "commit"|"rollback"}`: an
/// operator decides a transaction whose application will not (typically one whose
/// prepared XA branch blocks other sessions). The same calls as the public commit and
/// rollback, so refused (409) the same way when already decided the other way; operator
/// only, audited as `force commit` / `force rollback`.
async fn force(
    State(app): State<App>,
    h: HeaderMap,
    Path(xid): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let who = operator(&app, &h, true)?;
    let b: ForceBody = parse_body(&app, body)?;
    let commit = match b.decision.as_deref() {
        Some("commit") => true,
        Some("rollback") => false,
        other => {
            return Err(CoordinatorError::InvalidArgument(format!(
                "body must be {{\"decision\": \"commit\"|\"rollback\"}}, not decision {other:?}"
            )))
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
    Ok(Json(json!({"xid": xid, "status": r?.name()})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BranchBody {
    #[serde(rename = "type")]
    branch_type: Option<String>,
    name: Option<String>,
    confirm_url: Option<String>,
    cancel_url: Option<String>,
    payload: Option<Value>,
    request_id: Option<String>,
}

/// `POST /api/v1/transactions/{xid}/branches`: a TCC branch (the only type registered
/// over HTTP; AT branches register through their proxy).
async fn register_tcc(
    State(app): State<App>,
    h: HeaderMap,
    Path(xid): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    application(&app, &h, true)?;
    let x = parse_xid(&xid)?;
    let b: BranchBody = parse_body(&app, body)?;
    match b.branch_type.as_deref() {
        Some("tcc") => {}
        other => {
            return Err(CoordinatorError::InvalidArgument(format!(
                "type must be \"tcc\" (AT and XA branches register through their proxy), not \
                 {other:?}"
            )))
        }
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
    Ok(Json(json!({"xid": xid, "branch_id": id, "type": "tcc"})))
}

/// `POST /api/v1/transactions/{xid}/branches/{branch_id}/retry | mark_done`: an
/// operator's action on a TCC branch whose phase two keeps failing. Audited.
async fn operate_branch(
    State(app): State<App>,
    h: HeaderMap,
    Path((xid, branch_id, action)): Path<(String, String, String)>,
) -> ApiResult {
    let who = operator(&app, &h, true)?;
    let act = match action.as_str() {
        "retry" => BranchAction::Retry,
        "mark_done" => BranchAction::MarkDone,
        other => {
            return Err(CoordinatorError::InvalidArgument(format!(
                "unknown branch action {other:?} (retry, mark_done)"
            )))
        }
    };
    let r = async {
        let x = parse_xid(&xid)?;
        let b: u64 = branch_id.parse().map_err(|_| {
            CoordinatorError::InvalidArgument(format!("branch id {branch_id:?} is not a number"))
        })?;
        app.core.operate_branch(x, b, act).await
    }
    .await;
    let result = match &r {
        Ok(st) => format!("ok: {}", json!(st).as_str().unwrap_or_default()),
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
    Ok(Json(
        json!({"xid": xid, "branch_id": branch_id.parse::<u64>().unwrap_or_default(), "status": r?}),
    ))
}

#[derive(Deserialize)]
struct LocksQuery {
    limit: Option<usize>,
}

/// Held locks, by holder; `X-Total-Count` says how many there are when `limit` cut.
async fn locks(
    State(app): State<App>,
    h: HeaderMap,
    Query(q): Query<LocksQuery>,
) -> Result<Response, CoordinatorError> {
    application(&app, &h, false)?;
    let (held, total) = app.core.held_locks(q.limit.unwrap_or(usize::MAX)).await?;
    let body = Value::Array(
        held.into_iter()
            .map(|l| {
                json!({
                    "resource_id": l.resource_id,
                    "table": l.key.table,
                    "pk": pk_json(&l.key.pk),
                    "xid": rewind_protocol::xid::format(l.xid),
                    "branch_id": l.branch_id,
                    "since_ms": l.since_ms,
                    "status": l.status.name(),
                })
            })
            .collect(),
    );
    let mut r = Json(body).into_response();
    r.headers_mut()
        .insert("x-total-count", HeaderValue::from(total as u64));
    Ok(r)
}

#[derive(Deserialize)]
struct ConflictsQuery {
    /// `open` (waiting for an operator) or any state name.
    state: Option<String>,
    xid: Option<String>,
}

async fn conflicts(
    State(app): State<App>,
    h: HeaderMap,
    Query(q): Query<ConflictsQuery>,
) -> ApiResult {
    application(&app, &h, false)?;
    let xid = match q.xid.as_deref() {
        None | Some("") => None,
        Some(x) => Some(parse_xid(x)?),
    };
    Ok(Json(Value::Array(
        app.core
            .conflicts(xid)
            .await?
            .iter()
            .map(conflict_json)
            .filter(|c| {
                q.state
                    .as_deref()
                    .is_none_or(|s| s.is_empty() || c["state"] == s)
            })
            .collect(),
    )))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    action: Option<ResolveAction>,
}

async fn resolve(
    State(app): State<App>,
    h: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let who = operator(&app, &h, true)?;
    let id: u64 = id.parse().map_err(|_| {
        CoordinatorError::InvalidArgument(format!("conflict id {id:?} is not a number"))
    })?;
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
            pk_json(&c.pk)
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
    let (body, result) = {
        let result = match (&c.state, &c.last_error) {
            (ConflictState::Resolved { .. }, _) => "ok: resolved".to_string(),
            (ConflictState::Resolving { .. }, _) => {
                "pending: the proxy has not answered yet".to_string()
            }
            (ConflictState::Open, Some(err)) => format!("refused: {err}"),
            (st, _) => format!("{st:?}"),
        };
        (conflict_json(&c), result)
    };
    record_audit(
        &app,
        &who,
        &format!("resolve {action_name}"),
        &target,
        &result,
    )
    .await;
    Ok(Json(body))
}

// ---- XA --------------------------------------------------------------------------------

fn prepared_xa_json(p: &PreparedXa, waiters: &[XaWaiter], now_ms: u64) -> Value {
    json!({
        "xid": rewind_protocol::xid::format(p.xid),
        "branch_id": p.branch_id,
        "resource_id": p.resource_id,
        "xa_bqual": p.bqual,
        "registered_ms": p.registered_ms,
        "age_ms": now_ms.saturating_sub(p.registered_ms),
        "status": p.status.name(),
        "branch_status": p.branch_status,
        "waiters": waiters.iter().map(|w| json!({
            "thread_id": w.thread_id,
            "query": w.query,
            "waiting_ms": w.waiting_ms,
        })).collect::<Vec<_>>(),
    })
}

/// `GET /api/v1/xa`: the prepared XA branches, oldest first, with the sessions waiting
/// on their row locks. Operator only: the waiters' SQL is other applications' data.
async fn prepared_xa(State(app): State<App>, h: HeaderMap) -> ApiResult {
    operator(&app, &h, false)?;
    let now = crate::sequencer::now_ms();
    let branches: Vec<Value> = app
        .core
        .prepared_xa()
        .await?
        .iter()
        .map(|(p, w)| prepared_xa_json(p, w, now))
        .collect();
    Ok(Json(json!({ "branches": branches })))
}

// ---- outbox ---------------------------------------------------------------------------

fn outbox_json(r: &ResourceOutbox) -> Value {
    let o = &r.report;
    json!({
        "resource_id": o.resource_id,
        "proxy_id": o.proxy_id,
        "broker": o.broker,
        "new": o.new_count,
        "held": o.held_count,
        "oldest_new_age_ms": o.oldest_new_age_ms,
        "dead": o.dead_count,
        "published_total": o.published_total,
        "failed_total": o.failed_total,
        "last_error": o.last_error,
        "barrier_rows": o.barrier_rows,
        "barrier_duplicates": o.barrier_duplicates,
        "read_at_ms": o.read_at_ms,
        "received_at_ms": r.received_at_ms,
        "stale": r.stale,
    })
}

fn dead_json(resource_id: &str, d: &DeadMessage) -> Value {
    json!({
        "resource_id": resource_id,
        "message_id": d.message_id,
        "topic": d.topic,
        "msg_key": d.msg_key,
        "attempts": d.attempts,
        "last_error": d.last_error,
        "created_at_ms": d.created_at_ms,
    })
}

/// Every resource's latest outbox report, sorted by resource id. Read like the
/// conflicts: open to applications unless `api_auth = "all"`.
async fn outbox(State(app): State<App>, h: HeaderMap) -> ApiResult {
    application(&app, &h, false)?;
    Ok(Json(Value::Array(
        app.core.outbox_reports().iter().map(outbox_json).collect(),
    )))
}

#[derive(Deserialize)]
struct DeadQuery {
    resource_id: Option<String>,
}

/// DEAD outbox messages, newest first, of every resource or of `?resource_id=`.
async fn outbox_dead(
    State(app): State<App>,
    h: HeaderMap,
    Query(q): Query<DeadQuery>,
) -> ApiResult {
    application(&app, &h, false)?;
    let resource = q.resource_id.as_deref().filter(|r| !r.is_empty());
    Ok(Json(Value::Array(
        app.core
            .dead_messages(resource)
            .iter()
            .map(|(r, d)| dead_json(r, d))
            .collect(),
    )))
}

/// Puts one DEAD message back to NEW through a proxy of its resource. Operator only,
/// audited with what the proxy answered: `done`, `not dead` or `failed: …`.
async fn redrive(
    State(app): State<App>,
    h: HeaderMap,
    Path((resource_id, message_id)): Path<(String, String)>,
) -> ApiResult {
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
    Ok(Json(json!({
        "resource_id": resource_id,
        "message_id": message_id,
        "status": "new",
    })))
}

async fn metrics(State(app): State<App>) -> impl IntoResponse {
    let text = app.core.metrics_text();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
}
