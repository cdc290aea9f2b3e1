//! REST API of DESIGN.md, the admin console, /metrics and /healthz. Bodies are read as
//! bytes (bounded by the body limit) and parsed here, so malformed or oversized input
//! always gets the same JSON error shape; so do bad query strings and path segments
//! ([`ApiQuery`], [`ApiPath`]).
//!
//! Access ([`crate::auth`]): the console's data and every operator action need the
//! operator credential; the application calls stay open unless `api_auth = "all"`.
//! Every operator action lands in the audit log (through the state machine) with its
//! result, failures included.
//!
//! # Layout
//! - this file: the router, access checks, body and parameter parsing, the leader gate.
//! - [`openapi`]: the OpenAPI description, built from the handlers as they are routed.
//! - [`bodies`]: the answers' types (their JSON and their schemas).
//! - one file per area of the API: [`transactions`] (global transactions, branches,
//!   locks, conflicts, XA), [`messages`], [`outbox`], [`console`] (the page, login,
//!   audit), [`cluster`] (membership, health, metrics).

mod bodies;
mod cluster;
mod console;
mod messages;
mod openapi;
mod outbox;
mod transactions;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Auth, Operator};
use crate::config::ApiAuth;
use crate::core::Coordinator;
use crate::error::CoordinatorError;

pub(crate) use bodies::ErrorBody;

/// Where the description is served.
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";

#[derive(Clone)]
struct App {
    core: Coordinator,
    body_limit: usize,
    auth: Arc<Auth>,
    api_auth: ApiAuth,
    /// The OpenAPI document, serialized once.
    openapi: Bytes,
}

type Answer<T> = Result<Json<T>, CoordinatorError>;

/// Every described route (the API, /healthz and /metrics) and their description. A
/// handler is routed only through `routes!`, which also adds its `#[utoipa::path]` to
/// the description.
fn api() -> (Router<App>, utoipa::openapi::OpenApi) {
    use cluster::*;
    use console::*;
    use outbox::*;
    use transactions::*;
    let (routes, doc) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(session))
        .routes(routes!(audit))
        .routes(routes!(begin, list))
        .routes(routes!(show))
        .routes(routes!(commit))
        .routes(routes!(rollback))
        .routes(routes!(force))
        .routes(routes!(register_tcc))
        .routes(routes!(operate_branch))
        .routes(routes!(messages::prepare_branch))
        .routes(routes!(messages::prepare, messages::list))
        .routes(routes!(messages::show))
        .routes(routes!(messages::commit))
        .routes(routes!(messages::rollback))
        .routes(routes!(messages::force))
        .routes(routes!(messages::redrive))
        .routes(routes!(locks))
        .routes(routes!(conflicts))
        .routes(routes!(resolve))
        .routes(routes!(prepared_xa))
        .routes(routes!(outbox))
        .routes(routes!(outbox_dead))
        .routes(routes!(redrive))
        .routes(routes!(cluster_info))
        .routes(routes!(cluster_add))
        .routes(routes!(cluster_remove))
        .routes(routes!(openapi_json))
        .routes(routes!(metrics))
        .routes(routes!(healthz))
        .split_for_parts();
    (routes, openapi::finish(doc))
}

pub fn router(core: Coordinator, body_limit: usize, auth: Arc<Auth>, api_auth: ApiAuth) -> Router {
    let (api, doc) = api();
    let openapi = Bytes::from(doc.to_json().expect("the OpenAPI document serializes"));
    api.route("/", get(console::page))
        .route("/console.js", get(console::script))
        .route("/console.css", get(console::stylesheet))
        .fallback(|| async {
            let body = ErrorBody {
                error: "not_found",
                message: "no such endpoint".into(),
                leader_grpc: None,
                leader_http: None,
            };
            (StatusCode::NOT_FOUND, Json(body))
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
            openapi,
        })
}

/// This description, as OpenAPI 3.1 JSON: generate clients from it.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    operation_id = "get_openapi",
    tag = "health",
    responses((status = 200, description = "The OpenAPI document", body = Object)),
)]
async fn openapi_json(State(app): State<App>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        app.openapi.clone(),
    )
        .into_response()
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

// ---- cluster -------------------------------------------------------------------------

/// In cluster mode only the leader serves the API (others answer 503 `not_leader` with
/// the leader's addresses); the console's files, /healthz, /metrics, the cluster view
/// and the API's description are served by every member.
async fn leader_gate(
    State(core): State<Coordinator>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    let open = !path.starts_with("/api/v1/") || path == "/api/v1/cluster" || path == OPENAPI_PATH;
    if !open {
        if let Err(e) = core.leader_only() {
            return e.into_response();
        }
    }
    next.run(req).await
}

// ---- input ---------------------------------------------------------------------------

/// A JSON object body (no body at all: `T::default()`), refused with the API's error body.
/// Only an object: serde would also fill a struct from an array of its fields in order
/// (`[null, null]`), which no client means. A body of whitespace alone is not JSON and is
/// refused (see [`json_blank`]).
fn parse_body<T: DeserializeOwned + Default>(
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
    if json_blank(&body) {
        return Ok(T::default());
    }
    let malformed = |e: serde_json::Error| {
        CoordinatorError::InvalidArgument(format!("malformed JSON body: {e}"))
    };
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(malformed)?;
    if !v.is_object() {
        return Err(CoordinatorError::InvalidArgument(
            "the body must be a JSON object".into(),
        ));
    }
    serde_json::from_value(v).map_err(malformed)
}

/// No body at all. A body that is there must be a JSON object: whitespace alone is not a
/// JSON text (RFC 8259), and a transaction begun on a body of one line feed is a request
/// the description says is refused (schemathesis sent `\n` to POST /transactions, ST201).
fn json_blank(body: &[u8]) -> bool {
    body.is_empty()
}

/// axum's `Query`, refused with the API's error body (400 `invalid_argument`) instead
/// of axum's plain-text one.
struct ApiQuery<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = CoordinatorError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(q)) => Ok(ApiQuery(q)),
            Err(e) => Err(CoordinatorError::InvalidArgument(e.body_text())),
        }
    }
}

/// axum's `Path`, likewise (a segment that is not UTF-8 once percent-decoded).
struct ApiPath<T>(T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = CoordinatorError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(p)) => Ok(ApiPath(p)),
            Err(e) => Err(CoordinatorError::InvalidArgument(e.body_text())),
        }
    }
}

/// A numeric id from a path segment (parsed in the handler, after the access check).
fn id_number(what: &str, text: &str) -> Result<u64, CoordinatorError> {
    text.parse()
        .map_err(|_| CoordinatorError::InvalidArgument(format!("{what} {text:?} is not a number")))
}

#[cfg(test)]
mod tests;
