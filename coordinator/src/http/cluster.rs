//! Cluster membership (served by every member, leader or not), `/healthz` and
//! `/metrics`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

use super::bodies::{Health, Node, Serving, Standalone, StandaloneRole};
use super::openapi::{BodyRefused, CredentialRefused, Unavailable};
use super::ErrorBody;
use super::{id_number, operator, parse_body, record_audit, result_text, Answer, ApiPath, App};
use crate::cluster::ClusterStatus;
use crate::error::CoordinatorError;

/// 200 while serving; a cluster member also says its role and the leader.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "health",
    responses((status = 200, description = "Serving", body = Health)),
)]
pub(super) async fn healthz(State(app): State<App>) -> Json<Health> {
    let node = match app.core.cluster() {
        None => Node::Standalone(Standalone {
            role: StandaloneRole::Standalone,
        }),
        Some(c) => Node::Member(c.describe()),
    };
    Json(Health {
        status: Serving::Serving,
        node,
    })
}

/// Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "health",
    responses((status = 200, description = "Prometheus text exposition format", body = String,
        content_type = "text/plain")),
)]
pub(super) async fn metrics(State(app): State<App>) -> impl IntoResponse {
    let text = app.core.metrics_text();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

fn cluster_of(app: &App) -> Result<&crate::cluster::Cluster, CoordinatorError> {
    app.core.cluster().ok_or_else(|| {
        CoordinatorError::InvalidArgument(
            "this coordinator runs as a single node (no [cluster] configured)".into(),
        )
    })
}

/// This member's view of the cluster. Served by every member.
#[utoipa::path(
    get,
    path = "/api/v1/cluster",
    operation_id = "get_cluster",
    tag = "cluster",
    responses(
        (status = 200, description = "Role, term, leader, members, log", body = ClusterStatus),
        (status = 400, description = "`invalid_argument`: a single node, not a cluster", body = ErrorBody),
    ),
)]
pub(super) async fn cluster_info(State(app): State<App>) -> Answer<ClusterStatus> {
    Ok(Json(cluster_of(&app)?.describe()))
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AddMember {
    /// The new member's id, > 0 and not in use.
    #[schema(minimum = 1)]
    node_id: u64,
    /// Its gRPC address, `IP:PORT`.
    grpc: String,
    /// Its HTTP address, `HOST:PORT`.
    http: String,
}

/// Adds a member: a learner until it caught up, then a voter. Audited.
#[utoipa::path(
    post,
    path = "/api/v1/cluster/members",
    operation_id = "add_cluster_member",
    tag = "cluster",
    request_body = AddMember,
    responses(
        (status = 200, description = "The cluster with its new member", body = ClusterStatus),
        BodyRefused,
        CredentialRefused,
        Unavailable,
    ),
    security(("operator_token" = []), ("console_session" = [], "csrf_token" = [])),
)]
pub(super) async fn cluster_add(
    State(app): State<App>,
    h: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer<ClusterStatus> {
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

/// Removes a member. Audited.
#[utoipa::path(
    delete,
    path = "/api/v1/cluster/members/{id}",
    operation_id = "remove_cluster_member",
    tag = "cluster",
    params(("id" = u64, Path, description = "The member's node id")),
    responses(
        (status = 200, description = "The cluster without it", body = ClusterStatus),
        (status = 400, description = "`invalid_argument`: not a number, or a single node", body = ErrorBody),
        CredentialRefused,
        Unavailable,
    ),
    security(("operator_token" = []), ("console_session" = [], "csrf_token" = [])),
)]
pub(super) async fn cluster_remove(
    State(app): State<App>,
    h: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Answer<ClusterStatus> {
    let who = operator(&app, &h, true)?;
    let id = id_number("node id", &id)?;
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
