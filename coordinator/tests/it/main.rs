//! Process-level tests of the real `rewind-coordinator` binary: one test binary, modules
//! numbered by area. The process harness is `rewind-test-support`; `fake_proxy` answers
//! phase two (and outbox redrives) in place of a proxy.

mod fake_proxy;
mod t10_http_input;
mod t20_phase_two;
mod t30_crash;
mod t40_lifecycle;
mod t50_operator;
mod t60_cluster;
mod t70_outbox;

use rewind_protocol::v1::{register_branch_response, BeginRequest, LockKey, RegisterBranchRequest};
use rewind_protocol::{ResourceManagerClient, TransactionManagerClient};
use tonic::transport::Channel;

pub fn key(table: &str, pk: &[&[u8]]) -> LockKey {
    LockKey {
        resource_id: String::new(),
        table: table.into(),
        pk: pk.iter().map(|p| p.to_vec()).collect(),
    }
}

pub async fn begin(tm: &mut TransactionManagerClient<Channel>) -> String {
    tm.begin(BeginRequest {
        name: "it".into(),
        timeout_ms: 600_000,
    })
    .await
    .unwrap()
    .into_inner()
    .xid
}

/// Registers a branch; Ok(branch id) or Err(holder xid) on a lock conflict.
pub async fn register(
    rm: &mut ResourceManagerClient<Channel>,
    xid: &str,
    resource: &str,
    keys: Vec<LockKey>,
) -> Result<Result<u64, String>, tonic::Status> {
    let r = rm
        .register_branch(RegisterBranchRequest {
            xid: xid.into(),
            resource_id: resource.into(),
            lock_keys: keys,
            request_id: format!("{}", rand::random::<u64>()),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(match r.outcome.unwrap() {
        register_branch_response::Outcome::Registered(r) => Ok(r.branch_id),
        register_branch_response::Outcome::Conflict(c) => Err(c.holder_xid),
    })
}
