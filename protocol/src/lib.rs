//! Rewind's wire contract between proxies/applications and the coordinator.
//!
//! # Layout
//! - `proto/rewind/v1/coordinator.proto`: the gRPC services (`TransactionManager`,
//!   `ResourceManager`, and `Raft` between coordinators of a cluster) and every
//!   message, documented field by field.
//! - [`v1`]: the code tonic generates from it at build time (into OUT_DIR, never
//!   committed).
//! - [`xid`]: the one place that says what an XID string may look like, shared by the
//!   proxy (parsing `/*+ XID('...') */` tags) and the coordinator.
//! - [`liveness`]: how either end of a gRPC connection notices a peer gone silent.
//! - [`trace`]: OpenTelemetry traces both processes export (OTLP pipeline, W3C
//!   `traceparent` parse/format, gRPC metadata propagation).

/// Generated protobuf messages and tonic clients/servers for `rewind.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("rewind.v1");
}

pub mod liveness;
pub mod trace;
pub mod xid;

pub use v1::{
    resource_manager_client::ResourceManagerClient,
    transaction_manager_client::TransactionManagerClient, GlobalStatus, LockKey,
};

impl GlobalStatus {
    /// The snake_case name DESIGN.md and the HTTP API use.
    pub fn api_name(self) -> &'static str {
        match self {
            GlobalStatus::Unspecified => "unspecified",
            GlobalStatus::Begin => "begin",
            GlobalStatus::Committing => "committing",
            GlobalStatus::Committed => "committed",
            GlobalStatus::RollingBack => "rolling_back",
            GlobalStatus::RolledBack => "rolled_back",
            GlobalStatus::TimeoutRollingBack => "timeout_rolling_back",
            GlobalStatus::TimeoutRolledBack => "timeout_rolled_back",
            GlobalStatus::CommitRetrying => "commit_retrying",
            GlobalStatus::RollbackRetrying => "rollback_retrying",
            GlobalStatus::RollbackFailed => "rollback_failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_match_design() {
        assert_eq!(
            GlobalStatus::TimeoutRollingBack.api_name(),
            "timeout_rolling_back"
        );
        assert_eq!(GlobalStatus::RollbackFailed.api_name(), "rollback_failed");
    }

    #[test]
    fn lock_key_pk_is_structured() {
        use prost::Message;
        let key = LockKey {
            resource_id: "db:1".into(),
            table: "a,b;c".into(),
            pk: vec![b"1_2".to_vec(), b":;,".to_vec()],
        };
        let back = LockKey::decode(key.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, key);
    }
}
