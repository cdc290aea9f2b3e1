//! gRPC services: protobuf ↔ domain conversion and nothing else; every decision is the
//! state machine's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rewind_protocol::v1::{
    self, branch_result, proxy_message, register_branch_response, resolve_result,
    resource_manager_server::ResourceManager, transaction_manager_server::TransactionManager,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status as GrpcStatus, Streaming};
use tracing::Instrument;

use crate::error::CoordinatorError;
use crate::isolation::Isolation;
use crate::locks::KeyParts;
use crate::phase_two::Attached;
use crate::sequencer::Sequencer;
use crate::session::{Command, DirtyRow, Outcome, Reply, SessionRecord, Status, XidNum};

#[derive(Clone)]
pub struct Grpc {
    pub seq: Sequencer,
    pub attached: Arc<Attached>,
    /// Which tables each attached proxy checks writes without an XID on.
    pub isolation: Arc<Isolation>,
    pub rollback_wait: Duration,
    /// How long a registration waits for proxies to confirm a newly locked table.
    pub isolation_wait: Duration,
    pub shutdown: CancellationToken,
}

pub fn parse_xid(xid: &str) -> Result<XidNum, CoordinatorError> {
    rewind_protocol::xid::parse(xid).ok_or_else(|| CoordinatorError::BadXid(xid.to_string()))
}

fn status_reply(r: Reply) -> Status {
    match r {
        Reply::Status(s) => s,
        _ => Status::Begin,
    }
}

impl Grpc {
    /// Status from memory, else from the finished store.
    pub async fn status(&self, xid: XidNum) -> Result<Status, CoordinatorError> {
        self.seq.linearizable().await?;
        if let Some(s) = self.seq.engine.lock().expect("engine lock").status_of(xid) {
            return Ok(s);
        }
        Ok(self.finished(xid).await?.status)
    }

    /// The record of an active transaction from memory, else of a finished one from the
    /// store.
    pub async fn record(&self, xid: XidNum) -> Result<SessionRecord, CoordinatorError> {
        self.seq.linearizable().await?;
        if let Some(r) = self.seq.engine.lock().expect("engine lock").record(xid) {
            return Ok(r);
        }
        self.finished(xid).await
    }

    /// A finished transaction's record. The engine drops a session from memory when it
    /// finishes, and its final record reaches the store only with the batch's durable
    /// write: in between, a transaction that was issued is in neither place, so wait for
    /// that batch instead of answering "not found".
    async fn finished(&self, xid: XidNum) -> Result<SessionRecord, CoordinatorError> {
        let mut applied = self.seq.applied.clone();
        // Batches from now on count, not the ones before.
        applied.borrow_and_update();
        if let Some(rec) = self.seq.store.finished(xid)? {
            return Ok(rec);
        }
        let in_flight = {
            let engine = self.seq.engine.lock().expect("engine lock");
            if let Some(rec) = engine.record(xid) {
                return Ok(rec);
            }
            // Read under the engine lock: a batch is announced under it too.
            engine.issued(xid) && self.seq.store.batches_in_flight() > 0
        };
        if !in_flight {
            // Nothing on its way: the store's answer (after that last check) is final.
            return self
                .seq
                .store
                .finished(xid)?
                .ok_or(CoordinatorError::NotFound(xid));
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), applied.changed()).await;
        if let Some(rec) = self.seq.engine.lock().expect("engine lock").record(xid) {
            return Ok(rec);
        }
        self.seq
            .store
            .finished(xid)?
            .ok_or(CoordinatorError::NotFound(xid))
    }

    pub async fn begin(&self, name: String, timeout_ms: u64) -> Result<XidNum, CoordinatorError> {
        let t = Instant::now();
        let r = self.seq.submit(Command::Begin { name, timeout_ms }).await?;
        self.seq.metrics.rpc[0].observe(t.elapsed());
        match r {
            Reply::Begun(x) => Ok(x),
            other => Err(CoordinatorError::Storage(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }

    /// Commit; a finished transaction answers from the store (idempotent or 409).
    pub async fn commit(&self, xid: XidNum) -> Result<Status, CoordinatorError> {
        let t = Instant::now();
        let r = match self.seq.submit(Command::Commit { xid }).await {
            Ok(r) => status_reply(r),
            Err(CoordinatorError::NotFound(_)) => match self.status(xid).await? {
                s if s.is_committing() => s,
                s => {
                    return Err(CoordinatorError::AlreadyDecided {
                        xid,
                        status: s,
                        wanted: "commit",
                    })
                }
            },
            Err(e) => return Err(e),
        };
        self.seq.metrics.rpc[2].observe(t.elapsed());
        Ok(r)
    }

    /// Rollback, answering once the undo ran, stalled, or `rollback_wait` elapsed.
    pub async fn rollback(&self, xid: XidNum) -> Result<Status, CoordinatorError> {
        let t = Instant::now();
        match self.seq.submit(Command::Rollback { xid }).await {
            Ok(_) => {}
            Err(CoordinatorError::NotFound(_)) => {
                return match self.status(xid).await? {
                    s if s.is_rolling_back() => Ok(s),
                    s => Err(CoordinatorError::AlreadyDecided {
                        xid,
                        status: s,
                        wanted: "rollback",
                    }),
                }
            }
            Err(e) => return Err(e),
        }
        self.seq
            .wait_until(self.rollback_wait, |e| {
                e.status_of(xid).is_none_or(|s| s.rollback_settled())
            })
            .await;
        let s = self.status(xid).await?;
        self.seq.metrics.rpc[3].observe(t.elapsed());
        Ok(s)
    }
}

fn key_from_proto(
    branch_resource: Option<&str>,
    k: v1::LockKey,
) -> Result<(String, KeyParts), CoordinatorError> {
    let resource = match branch_resource {
        Some(r) if k.resource_id.is_empty() || k.resource_id == r => r.to_string(),
        Some(r) => {
            return Err(CoordinatorError::InvalidArgument(format!(
                "lock key resource {:?} differs from the branch's resource {r:?}",
                k.resource_id
            )))
        }
        None => k.resource_id,
    };
    Ok((
        resource,
        KeyParts {
            table: k.table,
            pk: k.pk,
        },
    ))
}

fn key_to_proto(resource: String, k: KeyParts) -> v1::LockKey {
    v1::LockKey {
        resource_id: resource,
        table: k.table,
        pk: k.pk,
    }
}

fn dirty_rows(d: v1::DirtyWrite) -> Vec<DirtyRow> {
    d.rows
        .into_iter()
        .map(|r| DirtyRow {
            table: r.table,
            pk: r.pk,
            before: r.before_json,
            after: r.after_json,
            current: r.current_json,
        })
        .collect()
}

#[tonic::async_trait]
impl TransactionManager for Grpc {
    async fn begin(
        &self,
        req: Request<v1::BeginRequest>,
    ) -> Result<Response<v1::BeginResponse>, GrpcStatus> {
        let r = req.into_inner();
        let xid = Grpc::begin(self, r.name, r.timeout_ms).await?;
        Ok(Response::new(v1::BeginResponse {
            xid: rewind_protocol::xid::format(xid),
        }))
    }

    async fn commit(
        &self,
        req: Request<v1::GlobalRequest>,
    ) -> Result<Response<v1::GlobalResponse>, GrpcStatus> {
        let xid_s = req.into_inner().xid;
        let xid = parse_xid(&xid_s)?;
        let st = Grpc::commit(self, xid)
            .instrument(tracing::info_span!("commit", xid = %xid_s))
            .await?;
        Ok(Response::new(v1::GlobalResponse {
            xid: xid_s,
            status: st.to_proto() as i32,
        }))
    }

    async fn rollback(
        &self,
        req: Request<v1::GlobalRequest>,
    ) -> Result<Response<v1::GlobalResponse>, GrpcStatus> {
        let xid_s = req.into_inner().xid;
        let xid = parse_xid(&xid_s)?;
        let st = Grpc::rollback(self, xid)
            .instrument(tracing::info_span!("rollback", xid = %xid_s))
            .await?;
        Ok(Response::new(v1::GlobalResponse {
            xid: xid_s,
            status: st.to_proto() as i32,
        }))
    }

    async fn status(
        &self,
        req: Request<v1::GlobalRequest>,
    ) -> Result<Response<v1::GlobalResponse>, GrpcStatus> {
        let xid_s = req.into_inner().xid;
        let st = Grpc::status(self, parse_xid(&xid_s)?).await?;
        Ok(Response::new(v1::GlobalResponse {
            xid: xid_s,
            status: st.to_proto() as i32,
        }))
    }
}

#[tonic::async_trait]
impl ResourceManager for Grpc {
    async fn register_branch(
        &self,
        req: Request<v1::RegisterBranchRequest>,
    ) -> Result<Response<v1::RegisterBranchResponse>, GrpcStatus> {
        let t = Instant::now();
        let r = req.into_inner();
        let xid = parse_xid(&r.xid)?;
        let r_xid = r.xid.clone();
        let keys = r
            .lock_keys
            .into_iter()
            .map(|k| key_from_proto(Some(&r.resource_id), k).map(|(_, k)| k))
            .collect::<Result<Vec<_>, _>>()?;
        // Write isolation: every proxy of the resource must check untagged writes to these
        // tables before the branch may lock rows in them.
        let tables: std::collections::BTreeSet<String> =
            keys.iter().map(|k| k.table.clone()).collect();
        let _in_use = match self
            .isolation
            .confirm(&r.resource_id, &tables, self.isolation_wait)
            .await
        {
            Ok(guard) => guard,
            Err(not) => {
                let key = keys
                    .iter()
                    .find(|k| k.table == not.table)
                    .cloned()
                    .expect("the table comes from the keys");
                tracing::info!(xid = %r.xid, table = %not.table, "a proxy did not confirm write isolation in time");
                return Ok(Response::new(v1::RegisterBranchResponse {
                    outcome: Some(register_branch_response::Outcome::Conflict(
                        v1::LockConflict {
                            key: Some(key_to_proto(r.resource_id.clone(), key)),
                            holder_xid: String::new(),
                            // Often a deadlock: a write without an XID waits for this
                            // branch's row lock, and the branch waits for that write. The
                            // branch gives way at once.
                            holder_rolling_back: true,
                        },
                    )),
                }));
            }
        };
        let reply = self
            .seq
            .submit(Command::Register {
                xid,
                resource_id: r.resource_id,
                keys,
                request_id: r.request_id,
            })
            .instrument(tracing::debug_span!("register", xid = %r.xid))
            .await;
        let reply = match reply {
            Err(CoordinatorError::NotFound(_)) => {
                // Finished transactions are not in memory: say what they are.
                let st = self.status(xid).await?;
                return Err(CoordinatorError::NotActive { xid, status: st }.into());
            }
            other => other?,
        };
        self.seq.metrics.rpc[1].observe(t.elapsed());
        let outcome = match reply {
            Reply::Registered(id) => {
                tracing::debug!(xid = %r_xid, branch_id = id, "branch registered");
                register_branch_response::Outcome::Registered(v1::Registered { branch_id: id })
            }
            Reply::LockConflict {
                key,
                holder,
                holder_rolling_back,
            } => register_branch_response::Outcome::Conflict(v1::LockConflict {
                key: Some(key_to_proto(key.0, key.1)),
                holder_xid: rewind_protocol::xid::format(holder),
                holder_rolling_back,
            }),
            other => {
                return Err(CoordinatorError::Storage(format!("unexpected reply {other:?}")).into())
            }
        };
        Ok(Response::new(v1::RegisterBranchResponse {
            outcome: Some(outcome),
        }))
    }

    async fn report_branch(
        &self,
        req: Request<v1::ReportBranchRequest>,
    ) -> Result<Response<v1::ReportBranchResponse>, GrpcStatus> {
        let t = Instant::now();
        let r = req.into_inner();
        let xid = parse_xid(&r.xid)?;
        match self
            .seq
            .submit(Command::Report {
                xid,
                branch_id: r.branch_id,
                committed: r.committed,
            })
            .await
        {
            Ok(_) => {}
            // A late report for a finished transaction changes nothing.
            Err(CoordinatorError::NotFound(_)) if self.status(xid).await.is_ok() => {}
            Err(e) => return Err(e.into()),
        }
        self.seq.metrics.rpc[4].observe(t.elapsed());
        Ok(Response::new(v1::ReportBranchResponse {}))
    }

    async fn query_locks(
        &self,
        req: Request<v1::QueryLocksRequest>,
    ) -> Result<Response<v1::QueryLocksResponse>, GrpcStatus> {
        let t = Instant::now();
        // A lock check must never be answered from a deposed leader's memory.
        self.seq.linearizable().await?;
        let r = req.into_inner();
        let asking = if r.xid.is_empty() {
            None
        } else {
            Some(parse_xid(&r.xid)?)
        };
        let keys = r
            .keys
            .into_iter()
            .map(|k| key_from_proto(None, k))
            .collect::<Result<Vec<_>, _>>()?;
        let found = self
            .seq
            .engine
            .lock()
            .expect("engine lock")
            .query_locks(&keys, asking);
        let held = found
            .into_iter()
            .map(|(i, xid, rolling_back)| v1::LockHolder {
                key: Some(key_to_proto(keys[i].0.clone(), keys[i].1.clone())),
                xid: rewind_protocol::xid::format(xid),
                rolling_back,
            })
            .collect();
        self.seq.metrics.rpc[5].observe(t.elapsed());
        Ok(Response::new(v1::QueryLocksResponse { held }))
    }

    type AttachStream = ReceiverStream<Result<v1::CoordinatorMessage, GrpcStatus>>;

    async fn attach(
        &self,
        req: Request<Streaming<v1::ProxyMessage>>,
    ) -> Result<Response<Self::AttachStream>, GrpcStatus> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(1024);
        let conn = self.attached.new_conn_id();
        let this = self.clone();
        tokio::spawn(
            async move {
                loop {
                    let msg = tokio::select! {
                        m = inbound.next() => m,
                        _ = this.shutdown.cancelled() => None,
                    };
                    let Some(Ok(msg)) = msg else { break };
                    match msg.kind {
                        Some(proxy_message::Kind::Announce(a)) => {
                            tracing::info!(proxy = %a.proxy_id, resources = ?a.resource_ids, "proxy attached");
                            this.attached.announce(conn, &tx, &a.resource_ids);
                            let locked = this.seq.engine.lock().expect("engine lock").locked_tables();
                            this.isolation.attach(conn, &tx, &a.resource_ids, |r| {
                                locked.get(r).cloned().unwrap_or_default()
                            });
                            for r in a.resource_ids {
                                this.seq.post(Command::ResourceAvailable { resource_id: r }).await;
                            }
                        }
                        Some(proxy_message::Kind::BranchResult(r)) => {
                            let Ok(xid) = parse_xid(&r.xid) else { continue };
                            let outcome = match r.outcome {
                                Some(branch_result::Outcome::Done(_)) => Outcome::Done,
                                Some(branch_result::Outcome::DirtyWrite(d)) => Outcome::DirtyWrite(dirty_rows(d)),
                                Some(branch_result::Outcome::Failure(f)) => Outcome::Retryable(f.message),
                                None => Outcome::Retryable("result without outcome".into()),
                            };
                            this.seq
                                .post(Command::BranchResult { xid, branch_id: r.branch_id, command_id: r.command_id, outcome })
                                .await;
                        }
                        Some(proxy_message::Kind::ResolveResult(r)) => {
                            let outcome = match r.outcome {
                                Some(resolve_result::Outcome::Done(_)) => Outcome::Done,
                                Some(resolve_result::Outcome::DirtyWrite(d)) => Outcome::DirtyWrite(dirty_rows(d)),
                                Some(resolve_result::Outcome::Failure(f)) => Outcome::Retryable(f.message),
                                None => Outcome::Retryable("result without outcome".into()),
                            };
                            this.seq
                                .post(Command::ResolveResult { conflict_id: r.conflict_id, command_id: r.command_id, outcome })
                                .await;
                        }
                        Some(proxy_message::Kind::TableLocksAck(a)) => {
                            this.isolation.ack(conn, &a.resource_id, a.epoch);
                        }
                        None => {}
                    }
                }
                this.attached.detach(conn);
                this.isolation.detach(conn);
                tracing::info!("proxy detached");
            }
            .instrument(tracing::info_span!("attach", conn)),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
