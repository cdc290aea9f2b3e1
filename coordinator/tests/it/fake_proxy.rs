//! A fake proxy on the coordinator's Attach stream, for phase two without MariaDB. The
//! rest of the harness (the coordinator process, HTTP, waiting) is `rewind-test-support`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use rewind_protocol::v1::{
    branch_result, coordinator_message, outbox_redrive_result, proxy_message, resolve_result,
    Announce, BranchAction, BranchResult, CoordinatorMessage, DirtyRow, DirtyWrite, Done,
    OutboxRedriveResult, ProxyMessage, ResolveResult, TableLocksAck,
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

/// How the fake proxy answers an outbox redrive.
#[derive(Clone, PartialEq, Eq)]
pub enum RedriveAnswer {
    /// `done` for these message ids (once each), `not_dead` for any other.
    DoneFor(HashSet<String>),
    /// No answer at all (a proxy stuck on its backend).
    Silent,
}

/// A fake proxy on the Attach stream: answers every phase-two command and records it.
/// Dropping it closes the stream (the proxy detaches).
pub struct FakeProxy {
    pub seen: Arc<Mutex<Vec<CoordinatorMessage>>>,
    pub rollback: Arc<Mutex<RollbackAnswer>>,
    pub redrive: Arc<Mutex<RedriveAnswer>>,
    /// The stream to the coordinator, for messages a test sends itself (reports).
    tx: mpsc::Sender<ProxyMessage>,
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
        let redrive = Arc::new(Mutex::new(RedriveAnswer::DoneFor(HashSet::new())));
        let (seen2, rollback2, redrive2) = (seen.clone(), rollback.clone(), redrive.clone());
        let own_tx = tx.clone();
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
                    // It has no database to look in: the check decides nothing.
                    Some(coordinator_message::Kind::MessageCheck(c)) => {
                        proxy_message::Kind::MessageCheckResult(
                            rewind_protocol::v1::MessageCheckResult {
                                command_id: c.command_id,
                                message_id: c.message_id,
                                outcome: Some(
                                    rewind_protocol::v1::message_check_result::Outcome::Running(
                                        Done {},
                                    ),
                                ),
                            },
                        )
                    }
                    Some(coordinator_message::Kind::OutboxRedrive(r)) => {
                        let outcome = match &mut *redrive2.lock().unwrap() {
                            RedriveAnswer::Silent => continue,
                            RedriveAnswer::DoneFor(ids) => {
                                if ids.remove(&r.message_id) {
                                    outbox_redrive_result::Outcome::Done(Done {})
                                } else {
                                    outbox_redrive_result::Outcome::NotDead(Done {})
                                }
                            }
                        };
                        proxy_message::Kind::OutboxRedriveResult(OutboxRedriveResult {
                            command_id: r.command_id,
                            outcome: Some(outcome),
                        })
                    }
                    None => continue,
                };
                if tx.send(ProxyMessage { kind: Some(reply) }).await.is_err() {
                    return;
                }
            }
        });
        // Attached once the coordinator has processed the announce: it then sends each
        // announced resource its write-isolation set (a loaded machine may take a while).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let sets = seen
                .lock()
                .unwrap()
                .iter()
                .filter(|m| matches!(m.kind, Some(coordinator_message::Kind::TableLocks(_))))
                .count();
            if sets >= resources.len() || std::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        FakeProxy {
            seen,
            rollback,
            redrive,
            tx: own_tx,
            task,
        }
    }

    /// Sends one message on the stream, as the proxy would.
    pub async fn send(&self, kind: proxy_message::Kind) {
        self.tx
            .send(ProxyMessage { kind: Some(kind) })
            .await
            .expect("the attach stream is open");
    }
}

impl Drop for FakeProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
