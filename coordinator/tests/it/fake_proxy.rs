//! A fake proxy on the coordinator's Attach stream, for phase two without MariaDB. The
//! rest of the harness (the coordinator process, HTTP, waiting) is `rewind-test-support`.

use std::sync::{Arc, Mutex};

use rewind_protocol::v1::{
    branch_result, coordinator_message, proxy_message, resolve_result, Announce, BranchAction,
    BranchResult, CoordinatorMessage, DirtyRow, DirtyWrite, Done, ProxyMessage, ResolveResult,
    TableLocksAck,
};
use rewind_test_support::Coordinator;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

/// How the fake proxy answers a rollback of a branch.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum RollbackAnswer {
    Done,
    Dirty,
}

/// A fake proxy on the Attach stream: answers every phase-two command and records it.
pub struct FakeProxy {
    pub seen: Arc<Mutex<Vec<CoordinatorMessage>>>,
    pub rollback: Arc<Mutex<RollbackAnswer>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeProxy {
    pub async fn attach(c: &Coordinator, resources: &[&str]) -> FakeProxy {
        let mut rm = c.rm().await;
        let (tx, rx) = mpsc::channel(1024);
        tx.send(ProxyMessage {
            kind: Some(proxy_message::Kind::Announce(Announce {
                proxy_id: "fake".into(),
                resource_ids: resources.iter().map(|r| r.to_string()).collect(),
            })),
        })
        .await
        .unwrap();
        let mut inbound = rm
            .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let rollback = Arc::new(Mutex::new(RollbackAnswer::Done));
        let (seen2, rollback2) = (seen.clone(), rollback.clone());
        let task = tokio::spawn(async move {
            while let Some(Ok(msg)) = inbound.next().await {
                seen2.lock().unwrap().push(msg.clone());
                let reply = match msg.kind {
                    Some(coordinator_message::Kind::BranchCommand(cmd)) => {
                        let dirty = cmd.action == BranchAction::Rollback as i32
                            && *rollback2.lock().unwrap() == RollbackAnswer::Dirty;
                        let outcome = if dirty {
                            branch_result::Outcome::DirtyWrite(DirtyWrite {
                                rows: vec![DirtyRow {
                                    table: "acct".into(),
                                    pk: vec![b"7".to_vec()],
                                    before_json: r#"{"id":7,"balance":100}"#.into(),
                                    after_json: r#"{"id":7,"balance":90}"#.into(),
                                    current_json: r#"{"id":7,"balance":55}"#.into(),
                                }],
                            })
                        } else {
                            branch_result::Outcome::Done(Done {})
                        };
                        proxy_message::Kind::BranchResult(BranchResult {
                            command_id: cmd.command_id,
                            xid: cmd.xid,
                            branch_id: cmd.branch_id,
                            outcome: Some(outcome),
                        })
                    }
                    Some(coordinator_message::Kind::ResolveCommand(cmd)) => {
                        proxy_message::Kind::ResolveResult(ResolveResult {
                            command_id: cmd.command_id,
                            conflict_id: cmd.conflict_id,
                            outcome: Some(resolve_result::Outcome::Done(Done {})),
                        })
                    }
                    // Confirms write-isolation sets at once: it sends no writes.
                    Some(coordinator_message::Kind::TableLocks(t)) => {
                        proxy_message::Kind::TableLocksAck(TableLocksAck {
                            epoch: t.epoch,
                            resource_id: t.resource_id,
                        })
                    }
                    None => continue,
                };
                if tx.send(ProxyMessage { kind: Some(reply) }).await.is_err() {
                    return;
                }
            }
        });
        FakeProxy {
            seen,
            rollback,
            task,
        }
    }
}

impl Drop for FakeProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
