//! Dispatch: sends the engine's phase-two and resolve commands, message check-backs, and
//! operators' outbox redrives, to proxies (a TCC branch's phase two goes to its participant
//! instead, see [`crate::tcc`]; a confirmed message to the broker, see
//! [`crate::messages`]). Keeps which proxy streams serve which resource ([`Proxies`])
//! and turns the engine's [`Effect`]s into stream messages ([`run`]). A command that
//! cannot be delivered (no proxy attached for the resource, or its queue is full) goes
//! straight back to the state machine as a retryable failure, which schedules a retry
//! with backoff; nothing is ever dropped. A redrive that cannot be delivered is refused
//! to the operator at once (see [`crate::outbox`]): nothing retries it behind their back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rewind_protocol::v1::{
    self, coordinator_message, BranchAction, BranchCommand, CoordinatorMessage, ResolveCommand,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::engine::{BranchResult, Decision, Effect, ProxyAnswer, ResolveAction, ResolveResult};
use crate::sequencer::Sequencer;

pub type StreamTx = mpsc::Sender<Result<CoordinatorMessage, tonic::Status>>;

/// Attached proxy streams by resource id.
#[derive(Default)]
pub struct Proxies {
    next_conn: std::sync::atomic::AtomicU64,
    by_resource: Mutex<HashMap<String, Vec<(u64, StreamTx)>>>,
    /// The connection of each attached proxy, by its Announce id.
    by_proxy_id: Mutex<HashMap<String, u64>>,
}

impl Proxies {
    pub fn new_conn_id(&self) -> u64 {
        self.next_conn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    pub fn announce(&self, conn: u64, tx: &StreamTx, proxy_id: String, resources: &[String]) {
        if !proxy_id.is_empty() {
            self.by_proxy_id
                .lock()
                .expect("attached lock")
                .insert(proxy_id, conn);
        }
        let mut map = self.by_resource.lock().expect("attached lock");
        for r in resources {
            let list = map.entry(r.clone()).or_default();
            if !list.iter().any(|(c, _)| *c == conn) {
                list.push((conn, tx.clone()));
            }
        }
    }

    pub fn detach(&self, conn: u64) {
        self.by_proxy_id
            .lock()
            .expect("attached lock")
            .retain(|_, c| *c != conn);
        let mut map = self.by_resource.lock().expect("attached lock");
        map.retain(|_, list| {
            list.retain(|(c, _)| *c != conn);
            !list.is_empty()
        });
    }

    /// Tries every stream serving `resource`; false if none took the message.
    pub(crate) fn send(&self, resource: &str, msg: CoordinatorMessage) -> bool {
        self.send_preferring(resource, None, msg).is_some()
    }

    /// Tries the streams serving `resource`, `prefer` first when it is one of them;
    /// answers the connection that took the message, `None` if none did.
    pub fn send_preferring(
        &self,
        resource: &str,
        prefer: Option<u64>,
        msg: CoordinatorMessage,
    ) -> Option<u64> {
        let map = self.by_resource.lock().expect("attached lock");
        let list = map.get(resource)?;
        let preferred = list.iter().filter(|(c, _)| Some(*c) == prefer);
        let others = list.iter().filter(|(c, _)| Some(*c) != prefer);
        let mut msg = Some(msg);
        for (conn, tx) in preferred.chain(others) {
            match tx.try_send(Ok(msg.take().expect("present"))) {
                Ok(()) => return Some(*conn),
                Err(mpsc::error::TrySendError::Full(Ok(m)))
                | Err(mpsc::error::TrySendError::Closed(Ok(m))) => msg = Some(m),
                Err(_) => return None,
            }
        }
        None
    }

    /// The connection of the attached proxy that announced itself as `proxy_id`.
    fn conn_of(&self, proxy_id: &str) -> Option<u64> {
        self.by_proxy_id
            .lock()
            .expect("attached lock")
            .get(proxy_id)
            .copied()
    }

    /// Whether connection `conn` announced `resource`.
    pub fn serves(&self, conn: u64, resource: &str) -> bool {
        let map = self.by_resource.lock().expect("attached lock");
        map.get(resource)
            .is_some_and(|list| list.iter().any(|(c, _)| *c == conn))
    }

    /// Whether any proxy is attached for `resource`.
    pub fn attached(&self, resource: &str) -> bool {
        let map = self.by_resource.lock().expect("attached lock");
        map.contains_key(resource)
    }
}

/// The stream message of an operator's redrive (see [`crate::outbox`]).
pub fn outbox_redrive(command_id: u64, resource_id: &str, message_id: &str) -> CoordinatorMessage {
    CoordinatorMessage {
        kind: Some(coordinator_message::Kind::OutboxRedrive(
            v1::OutboxRedrive {
                command_id,
                resource_id: resource_id.to_string(),
                message_id: message_id.to_string(),
            },
        )),
    }
}

/// Runs until the effect channel closes or shutdown.
pub async fn run(
    mut effects: mpsc::UnboundedReceiver<Effect>,
    proxies: Arc<Proxies>,
    tcc: crate::tcc::Caller,
    publisher: crate::messages::Publisher,
    seq: Sequencer,
    shutdown: CancellationToken,
) {
    loop {
        let eff = tokio::select! {
            e = effects.recv() => match e { Some(e) => e, None => return },
            _ = shutdown.cancelled() => return,
        };
        match eff {
            Effect::SendBranch {
                command_id,
                xid,
                branch_id,
                resource_id: _,
                action,
                tcc: Some(call),
                xa: _,
            } => {
                // A participant's Confirm or Cancel: its own task, answered to the engine
                // like a proxy's result.
                let (caller, seq) = (tcc.clone(), seq.clone());
                tokio::spawn(async move {
                    let outcome = caller.call(xid, branch_id, action, &call).await;
                    tracing::debug!(xid = %rewind_protocol::xid::format(xid), branch_id, ?action, ?outcome, "TCC phase two");
                    seq.post(BranchResult {
                        xid,
                        branch_id,
                        command_id,
                        outcome,
                    })
                    .await;
                });
            }
            Effect::SendBranch {
                command_id,
                xid,
                branch_id,
                resource_id,
                action,
                tcc: None,
                xa,
            } => {
                let span = crate::traces::PhaseTwo::start(
                    xid,
                    branch_id,
                    &resource_id,
                    matches!(action, Decision::Commit),
                );
                let msg = CoordinatorMessage {
                    kind: Some(coordinator_message::Kind::BranchCommand(BranchCommand {
                        command_id,
                        xid: rewind_protocol::xid::format(xid),
                        branch_id,
                        resource_id: resource_id.clone(),
                        action: match action {
                            Decision::Commit => BranchAction::Commit,
                            Decision::Rollback => BranchAction::Rollback,
                        } as i32,
                        xa_bqual: xa.as_ref().map(|x| x.bqual.clone()).unwrap_or_default(),
                        traceparent: span.traceparent(),
                    })),
                };
                // An XA branch goes to the proxy holding its prepared transaction while
                // that one is attached; any proxy of the resource can finish it otherwise.
                let prefer = xa.as_ref().and_then(|x| proxies.conn_of(&x.owner));
                let sent = proxies.send_preferring(&resource_id, prefer, msg).is_some();
                span.sent(sent);
                let span = tracing::debug_span!("phase_two", xid = %rewind_protocol::xid::format(xid), branch_id);
                span.in_scope(|| tracing::debug!(?action, %resource_id, sent, "phase-two command"));
                if !sent {
                    seq.post(BranchResult {
                        xid,
                        branch_id,
                        command_id,
                        outcome: ProxyAnswer::Retryable(format!(
                            "no proxy attached for resource {resource_id:?}"
                        )),
                    })
                    .await;
                }
            }
            Effect::CheckMessage {
                command_id,
                message_id,
                resource_id,
            } => {
                crate::messages::send_check(&proxies, &seq, command_id, message_id, resource_id)
                    .await;
            }
            Effect::PublishMessage {
                command_id,
                message,
            } => publisher.publish(command_id, message).await,
            Effect::SendResolve {
                command_id,
                conflict,
            } => {
                let c = *conflict;
                let msg = CoordinatorMessage {
                    kind: Some(coordinator_message::Kind::ResolveCommand(ResolveCommand {
                        command_id,
                        conflict_id: c.conflict_id,
                        xid: rewind_protocol::xid::format(c.xid),
                        branch_id: c.branch_id,
                        resource_id: c.resource_id.clone(),
                        table: c.table,
                        pk: c.pk,
                        action: match c.action {
                            ResolveAction::RestoreBefore => v1::ResolveAction::RestoreBefore,
                            ResolveAction::KeepCurrent => v1::ResolveAction::KeepCurrent,
                            ResolveAction::Retry => v1::ResolveAction::Unspecified,
                        } as i32,
                        before_json: c.before,
                        after_json: c.after,
                        current_json: c.current,
                    })),
                };
                if !proxies.send(&c.resource_id, msg) {
                    seq.post(ResolveResult {
                        conflict_id: c.conflict_id,
                        command_id,
                        outcome: ProxyAnswer::Retryable(format!(
                            "no proxy attached for resource {:?}; try again when one is",
                            c.resource_id
                        )),
                    })
                    .await;
                }
            }
        }
    }
}
