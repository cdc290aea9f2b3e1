//! The HTTP API's OpenAPI 3.1 description, served at `GET /api/v1/openapi.json`.
//!
//! Generated, never written by hand: each handler carries `#[utoipa::path]` (its
//! parameters, body and every status it answers), the bodies derive their schemas from
//! the same types they serialize ([`super::bodies`]), and [`super::router`] registers
//! handlers through utoipa-axum's `routes!`, which adds the route and its description in
//! one step, so no API route can be served undescribed.
//!
//! Why utoipa (+ utoipa-axum) and not aide: utoipa's derives read the serde attributes
//! our bodies already use (rename, flatten, internally tagged and untagged enums,
//! `skip_serializing_if`), so a schema follows the JSON actually sent; its axum router
//! keeps routes and description together; and it describes handlers by attribute, which
//! fits ours: they read bodies as bytes and parse them themselves (one error shape for
//! malformed input), which aide's extractor-driven inference cannot see through. The
//! 6.x line builds on axum 0.8.
//!
//! What is not here: the console's page, script and stylesheet (not an API).

use std::collections::BTreeMap;

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{IntoResponses, Modify, OpenApi};

use super::bodies::ErrorBody;
use crate::engine::BranchAction;

/// Security scheme names, as `security(...)` in the handlers' attributes spells them.
pub const OPERATOR_TOKEN: &str = "operator_token";
pub const CONSOLE_SESSION: &str = "console_session";
pub const CSRF_TOKEN: &str = "csrf_token";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Rewind coordinator",
        description = "Global transactions (AT, TCC, XA), half messages, the outbox and \
            operators' actions over HTTP. Calls marked with an optional (empty) security \
            requirement are application calls: open unless the coordinator runs with \
            `api_auth = \"all\"`; the others need the operator credential. Errors share one \
            body: `{\"error\": <kind>, \"message\": <words>}`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    // Schemas named only by path parameters and shared responses (bodies are collected
    // from the handlers).
    components(schemas(ErrorBody, BranchAction)),
    modifiers(&Security),
    tags(
        (name = "transactions", description = "Global transactions and their branches"),
        (name = "messages", description = "Half messages with check-back"),
        (name = "locks and conflicts", description = "Global row locks, dirty-write conflicts, prepared XA branches"),
        (name = "outbox", description = "The local message tables' relay, as proxies report it"),
        (name = "operators", description = "Console sessions and the audit log"),
        (name = "cluster", description = "Raft membership (cluster mode)"),
        (name = "health", description = "Probes and metrics"),
    ),
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            OPERATOR_TOKEN,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An operator's secret (from the configuration, or the one generated \
                         in the data directory's `operator-token`).",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            CONSOLE_SESSION,
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::auth::COOKIE,
                "The console's session, from `POST /api/v1/login`.",
            ))),
        );
        components.add_security_scheme(
            CSRF_TOKEN,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-CSRF-Token",
                "The `csrf` of the login's answer: required with the session cookie on \
                 every call that changes something.",
            ))),
        );
    }
}

/// The last touches utoipa's attributes cannot express.
pub fn finish(mut doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    optional_bodies(&mut doc);
    doc
}

/// `request_body = Option<T>` says "T or nothing", which utoipa writes as a required
/// body of `T | null`; the handlers mean an optional body of `T` (empty is the
/// defaults, a JSON `null` is refused like any non-object).
fn optional_bodies(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::schema::{Schema, Type};
    use utoipa::openapi::Required;
    let is_null = |s: &RefOr<Schema>| matches!(s, RefOr::T(Schema::Object(o)) if o.schema_type == Type::Null.into());
    for item in doc.paths.paths.values_mut() {
        let ops = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in ops.into_iter().flatten() {
            let Some(RefOr::T(body)) = op.request_body.as_mut() else {
                continue;
            };
            for content in body.content.values_mut() {
                let RefOr::T(content) = content else {
                    continue;
                };
                let Some(RefOr::T(Schema::OneOf(one))) = &content.schema else {
                    continue;
                };
                if let [t, null] = one.items.as_slice() {
                    if is_null(null) {
                        content.schema = Some(t.clone());
                        body.required = Some(Required::False);
                    }
                }
            }
        }
    }
}

/// An error answer with the shared body.
fn error(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
        .into()
}

fn answers(list: &[(&str, &str)]) -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
    list.iter()
        .map(|(code, d)| (code.to_string(), error(d)))
        .collect()
}

/// 401 and 403: calls that check the operator credential (operator calls, and
/// application calls when `api_auth = "all"` or a credential is presented).
pub struct CredentialRefused;

impl IntoResponses for CredentialRefused {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        answers(&[
            (
                "401",
                "`unauthorized`: no operator credential, a wrong one, or an expired session",
            ),
            (
                "403",
                "`forbidden`: a console session's change without its X-CSRF-Token",
            ),
        ])
    }
}

/// 400 and 413: calls with a JSON body.
pub struct BodyRefused;

impl IntoResponses for BodyRefused {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        answers(&[
            (
                "400",
                "`invalid_argument`: malformed JSON, unknown fields or values out of range",
            ),
            (
                "413",
                "`payload_too_large`: the body exceeds the body limit",
            ),
        ])
    }
}

/// 500 and 503: what any API call can meet.
pub struct Unavailable;

impl IntoResponses for Unavailable {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        answers(&[
            ("500", "`storage`: the coordinator could not write its log"),
            (
                "503",
                "`not_leader` (a cluster member that does not lead: `leader_http` says \
                 where to go), `unavailable` (shutting down), `undetermined` (a cluster \
                 lost its quorum mid-call: read the outcome back), or a proxy that could \
                 not be reached (`no_proxy`, `proxy_failed`, `timeout`)",
            ),
        ])
    }
}
