//! The coordinator's one error type, and its two boundary mappings: to `tonic::Status`
//! (gRPC) and to an HTTP status + JSON body (REST API). Nowhere else decides codes.

use axum::http::StatusCode;

use crate::engine::{BranchId, GlobalStatus, XidNum};

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("global transaction {} not found", rewind_protocol::xid::format(*.0))]
    NotFound(XidNum),
    #[error("global transaction id {0:?} is not one this coordinator issues")]
    BadXid(String),
    #[error("branch {0} not found")]
    BranchNotFound(BranchId),
    #[error("conflict {0} not found")]
    ConflictNotFound(u64),
    #[error("conflict {0} is not open (already being resolved or resolved)")]
    ConflictNotOpen(u64),
    #[error("global transaction {} is {}: cannot {wanted} it", rewind_protocol::xid::format(*.xid), .status.name())]
    AlreadyDecided {
        xid: XidNum,
        status: GlobalStatus,
        wanted: &'static str,
    },
    #[error("global transaction {} is {}, no longer accepting branches", rewind_protocol::xid::format(*.xid), .status.name())]
    NotActive { xid: XidNum, status: GlobalStatus },
    #[error("global transaction {} is not decided yet: its branches' phase two has not begun", rewind_protocol::xid::format(*.0))]
    NotDecided(XidNum),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    #[error("storage failure: {0}")]
    Storage(String),
    #[error("coordinator is shutting down")]
    ShuttingDown,
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Cluster mode: this node does not lead; the leader's addresses when known.
    #[error("this coordinator is not the cluster leader{}", match .grpc { Some(g) => format!(" (leader: gRPC {g}, HTTP {})", .http.as_deref().unwrap_or("?")), None => " (no leader elected yet: retry)".into() })]
    NotLeader {
        grpc: Option<String>,
        http: Option<String>,
    },
    /// Cluster mode: the request may or may not have been applied (the leader lost its
    /// quorum or stepped down after proposing it). Read the transaction's status.
    #[error("outcome undetermined: {0}")]
    Undetermined(String),
    /// No proxy ever announced or reported this resource.
    #[error("resource {0:?} is unknown: no proxy is attached for it and none reported its outbox")]
    ResourceNotFound(String),
    /// A redrive found nothing to do.
    #[error("no DEAD message {message_id:?} in the outbox of {resource_id:?} (it never existed, was redriven already or was published)")]
    MessageNotDead {
        resource_id: String,
        message_id: String,
    },
    #[error("message {0:?} not found")]
    MessageNotFound(String),
    /// A message cannot do what was asked in its state (bound elsewhere, a branch's, …).
    #[error("{0}")]
    MessageRefused(String),
    #[error("message {message_id} is {}: cannot {wanted} it", .status.name())]
    MessageDecided {
        message_id: String,
        status: crate::engine::MessageStatus,
        wanted: &'static str,
    },
    /// A command for a proxy found no stream to go out on.
    #[error("no proxy attached for resource {0:?}: start or reconnect one, then try again")]
    NoProxy(String),
    /// The proxy answered that it could not act now.
    #[error("the proxy could not act: {0}")]
    ProxyFailed(String),
    /// A proxy did not answer in time; what it did is unknown until its next report.
    #[error("timeout: {0}")]
    Timeout(String),
}

impl From<redb::Error> for CoordinatorError {
    fn from(e: redb::Error) -> Self {
        CoordinatorError::Storage(e.to_string())
    }
}

impl CoordinatorError {
    /// Stable machine-readable name, the `error` field of HTTP answers.
    pub fn kind(&self) -> &'static str {
        match self {
            CoordinatorError::NotFound(_) | CoordinatorError::BadXid(_) => "not_found",
            CoordinatorError::BranchNotFound(_) => "branch_not_found",
            CoordinatorError::ConflictNotFound(_) => "conflict_not_found",
            CoordinatorError::ConflictNotOpen(_) => "conflict_not_open",
            CoordinatorError::AlreadyDecided { .. } => "already_decided",
            CoordinatorError::NotActive { .. } => "not_active",
            CoordinatorError::NotDecided(_) => "not_decided",
            CoordinatorError::InvalidArgument(_) => "invalid_argument",
            CoordinatorError::TooLarge(_) => "payload_too_large",
            CoordinatorError::Storage(_) => "storage",
            CoordinatorError::ShuttingDown => "unavailable",
            CoordinatorError::Unauthorized(_) => "unauthorized",
            CoordinatorError::Forbidden(_) => "forbidden",
            CoordinatorError::NotLeader { .. } => "not_leader",
            CoordinatorError::Undetermined(_) => "undetermined",
            CoordinatorError::ResourceNotFound(_) => "resource_not_found",
            CoordinatorError::MessageNotDead { .. } => "message_not_dead",
            CoordinatorError::NoProxy(_) => "no_proxy",
            CoordinatorError::MessageNotFound(_) => "message_not_found",
            CoordinatorError::MessageRefused(_) => "message_refused",
            CoordinatorError::MessageDecided { .. } => "already_decided",
            CoordinatorError::ProxyFailed(_) => "proxy_failed",
            CoordinatorError::Timeout(_) => "timeout",
        }
    }

    pub fn http_status(&self) -> StatusCode {
        match self {
            CoordinatorError::NotFound(_)
            | CoordinatorError::BadXid(_)
            | CoordinatorError::BranchNotFound(_)
            | CoordinatorError::ConflictNotFound(_)
            | CoordinatorError::ResourceNotFound(_)
            | CoordinatorError::MessageNotDead { .. }
            | CoordinatorError::MessageNotFound(_) => StatusCode::NOT_FOUND,
            CoordinatorError::MessageRefused(_) | CoordinatorError::MessageDecided { .. } => {
                StatusCode::CONFLICT
            }
            CoordinatorError::AlreadyDecided { .. }
            | CoordinatorError::NotActive { .. }
            | CoordinatorError::NotDecided(_)
            | CoordinatorError::ConflictNotOpen(_) => StatusCode::CONFLICT,
            CoordinatorError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            CoordinatorError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            CoordinatorError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
            CoordinatorError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            CoordinatorError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            CoordinatorError::Forbidden(_) => StatusCode::FORBIDDEN,
            CoordinatorError::NotLeader { .. }
            | CoordinatorError::Undetermined(_)
            | CoordinatorError::NoProxy(_)
            | CoordinatorError::ProxyFailed(_)
            | CoordinatorError::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl From<CoordinatorError> for tonic::Status {
    fn from(e: CoordinatorError) -> Self {
        let msg = e.to_string();
        match e {
            CoordinatorError::NotFound(_)
            | CoordinatorError::BadXid(_)
            | CoordinatorError::BranchNotFound(_)
            | CoordinatorError::ConflictNotFound(_)
            | CoordinatorError::ResourceNotFound(_)
            | CoordinatorError::MessageNotDead { .. }
            | CoordinatorError::MessageNotFound(_) => tonic::Status::not_found(msg),
            CoordinatorError::MessageRefused(_) | CoordinatorError::MessageDecided { .. } => {
                tonic::Status::failed_precondition(msg)
            }
            CoordinatorError::AlreadyDecided { .. }
            | CoordinatorError::NotActive { .. }
            | CoordinatorError::NotDecided(_)
            | CoordinatorError::ConflictNotOpen(_) => tonic::Status::failed_precondition(msg),
            CoordinatorError::InvalidArgument(_) | CoordinatorError::TooLarge(_) => {
                tonic::Status::invalid_argument(msg)
            }
            CoordinatorError::Storage(_) => tonic::Status::internal(msg),
            CoordinatorError::ShuttingDown => tonic::Status::unavailable(msg),
            CoordinatorError::Unauthorized(_) => tonic::Status::unauthenticated(msg),
            CoordinatorError::Forbidden(_) => tonic::Status::permission_denied(msg),
            CoordinatorError::NotLeader { grpc, .. } => {
                // Clients follow `rewind-leader` (see the proxy's coordinator client).
                let mut s = tonic::Status::unavailable(msg);
                if let Some(v) = grpc.and_then(|g| g.parse().ok()) {
                    s.metadata_mut().insert(crate::LEADER_METADATA, v);
                }
                s
            }
            CoordinatorError::Undetermined(_) => tonic::Status::unknown(msg),
            CoordinatorError::NoProxy(_) | CoordinatorError::ProxyFailed(_) => {
                tonic::Status::unavailable(msg)
            }
            CoordinatorError::Timeout(_) => tonic::Status::deadline_exceeded(msg),
        }
    }
}

impl axum::response::IntoResponse for CoordinatorError {
    fn into_response(self) -> axum::response::Response {
        let body = crate::http::ErrorBody::from(&self);
        (self.http_status(), axum::Json(body)).into_response()
    }
}
