//! The coordinator's core: every decision an application, a proxy or an operator can
//! ask for, and the bounded read models they see. gRPC ([`crate::grpc`]) and HTTP
//! ([`crate::http`]) only translate to and from these calls; neither touches the engine,
//! the store or the sequencer.
//!
//! Writes go through the [`Sequencer`] as typed requests and are answered once durable
//! (in a cluster: committed by a quorum). Reads that decide something (status, lock
//! queries, lists) first confirm this node still leads ([`Sequencer::linearizable`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::dispatch::{Proxies, StreamTx};
use crate::engine::{
    AuditEntry, Begin, BranchAction, BranchId, BranchResult, BranchStatus, Commit, Conflict,
    ConflictState, GlobalRecord, GlobalStatus, HeldLock, OperateBranch, PreparedXa, ProxyAnswer,
    RegisterTcc, Registration, Report, Resolve, ResolveAction, ResolveResult, ResourceAvailable,
    Rollback, TccCall, XidNum,
};
use crate::error::CoordinatorError;
use crate::locked_tables::LockedTables;
use crate::locks::RowKey;
use crate::metrics::Op;
use crate::outbox::{
    DeadMessage, Outbox, OutboxReport, RedriveOutcome, ResourceOutbox, REDRIVE_WAIT,
};
use crate::sequencer::{now_ms, Sequencer};
use crate::xa_waits::{XaLockReport, XaWaiter, XaWaits};

/// An XID as the API spells it → its number (unknown shapes are "not found").
pub fn parse_xid(xid: &str) -> Result<XidNum, CoordinatorError> {
    rewind_protocol::xid::parse(xid).ok_or_else(|| CoordinatorError::BadXid(xid.to_string()))
}

/// The one core: cheap to clone (every field is shared).
#[derive(Clone)]
pub struct Coordinator {
    seq: Sequencer,
    /// Attached proxy streams, by resource: where phase-two commands go.
    proxies: Arc<Proxies>,
    /// Which tables each attached proxy checks writes without an XID on.
    locked_tables: Arc<LockedTables>,
    /// The proxies' latest outbox reports and the redrives waiting for an answer.
    outbox: Arc<Outbox>,
    /// The proxies' latest reads of who waits on their prepared XA branches' row locks.
    xa_waits: Arc<XaWaits>,
    /// How long a rollback request waits for the undo before answering its status.
    rollback_wait: Duration,
    /// How long a registration waits for proxies to confirm a newly locked table.
    isolation_wait: Duration,
    shutdown: CancellationToken,
}

/// What a branch registration got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterAnswer {
    Registered(BranchId),
    /// Another global transaction holds `key`.
    LockConflict {
        key: (String, RowKey),
        holder: XidNum,
        holder_rolling_back: bool,
    },
    /// A proxy of the resource did not confirm in time that it checks untagged writes to
    /// `key`'s table. Often a deadlock: a write without an XID waits for this branch's
    /// row lock, and the branch waits for that write; the branch gives way at once.
    Unconfirmed {
        key: (String, RowKey),
    },
}

/// A page of the transaction list: unfinished ones from memory, then finished ones
/// from the store, newest first.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub status: Option<GlobalStatus>,
    /// Only transactions older than this xid (page cursor).
    pub before: Option<XidNum>,
    /// Text found in the xid or the name (lowercase compare).
    pub search: Option<String>,
    pub limit: usize,
}

/// Most transactions one list page holds; a search looks through at most this many
/// finished ones from its cursor on, rather than the whole history.
pub const LIST_LIMIT: usize = 10_000;

impl Coordinator {
    pub fn new(
        seq: Sequencer,
        rollback_wait: Duration,
        isolation_wait: Duration,
        shutdown: CancellationToken,
    ) -> Coordinator {
        Coordinator {
            seq,
            proxies: Arc::new(Proxies::default()),
            locked_tables: Arc::new(LockedTables::default()),
            outbox: Arc::new(Outbox::default()),
            xa_waits: Arc::new(XaWaits::default()),
            rollback_wait,
            isolation_wait,
            shutdown,
        }
    }

    /// The sequencer, for the modes that keep their calls beside this file
    /// ([`crate::messages`]).
    pub(crate) fn seq(&self) -> &Sequencer {
        &self.seq
    }

    pub fn proxies(&self) -> Arc<Proxies> {
        self.proxies.clone()
    }

    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Cluster mode: this node's Raft handle.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.seq.cluster.as_deref()
    }

    /// In cluster mode, fails unless this node leads (with the leader's addresses).
    pub fn leader_only(&self) -> Result<(), CoordinatorError> {
        self.seq.leader_only()
    }

    /// In cluster mode, returns once this node does not lead; a single node always leads,
    /// so it never returns there.
    pub async fn lost_leadership(&self) {
        match self.cluster() {
            Some(c) => c.lost_leadership().await,
            None => std::future::pending().await,
        }
    }

    // ---- decisions ---------------------------------------------------------------------

    pub async fn begin(&self, name: String, timeout_ms: u64) -> Result<XidNum, CoordinatorError> {
        let t = Instant::now();
        let xid = self.seq.ask(Begin { name, timeout_ms }).await?;
        self.seq.metrics.observe(Op::Begin, t.elapsed());
        Ok(xid)
    }

    /// Commit; a finished transaction answers from the store (idempotent or refused).
    pub async fn commit(&self, xid: XidNum) -> Result<GlobalStatus, CoordinatorError> {
        let t = Instant::now();
        let st = match self.seq.ask(Commit { xid }).await {
            Ok(st) => st,
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
        self.seq.metrics.observe(Op::Commit, t.elapsed());
        Ok(st)
    }

    /// Rollback, answering once the undo ran, stalled, or `rollback_wait` elapsed.
    pub async fn rollback(&self, xid: XidNum) -> Result<GlobalStatus, CoordinatorError> {
        let t = Instant::now();
        match self.seq.ask(Rollback { xid }).await {
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
        self.seq.metrics.observe(Op::Rollback, t.elapsed());
        Ok(s)
    }

    /// A branch asks for its row locks. Every proxy of the resource must first check
    /// untagged writes to the keys' tables (write isolation, [`LockedTables`]).
    pub async fn register(
        &self,
        xid: XidNum,
        resource_id: String,
        keys: Vec<RowKey>,
        request_id: String,
        xa: bool,
        owner: String,
    ) -> Result<RegisterAnswer, CoordinatorError> {
        let t = Instant::now();
        let tables: BTreeSet<String> = keys.iter().map(|k| k.table.clone()).collect();
        // Held until the registration is applied: the tables stay in the sets meanwhile.
        let _in_use = match self
            .locked_tables
            .confirm(&resource_id, &tables, self.isolation_wait)
            .await
        {
            Ok(guard) => guard,
            Err(not) => {
                let key = keys
                    .iter()
                    .find(|k| k.table == not.table)
                    .cloned()
                    .expect("the table comes from the keys");
                tracing::info!(xid = %rewind_protocol::xid::format(xid), table = %not.table, "a proxy did not confirm write isolation in time");
                return Ok(RegisterAnswer::Unconfirmed {
                    key: (resource_id, key),
                });
            }
        };
        let req = crate::engine::Register {
            xid,
            resource_id,
            keys,
            request_id,
            xa,
            owner,
        };
        let answer = match self.seq.ask(req).await {
            Err(CoordinatorError::NotFound(_)) => {
                // Finished transactions are not in memory: say what they are.
                let status = self.status(xid).await?;
                return Err(CoordinatorError::NotActive { xid, status });
            }
            other => other?,
        };
        self.seq.metrics.observe(Op::Register, t.elapsed());
        Ok(match answer {
            Registration::Registered(id) => {
                tracing::debug!(xid = %rewind_protocol::xid::format(xid), branch_id = id, "branch registered");
                RegisterAnswer::Registered(id)
            }
            Registration::LockConflict {
                key,
                holder,
                holder_rolling_back,
            } => RegisterAnswer::LockConflict {
                key,
                holder,
                holder_rolling_back,
            },
        })
    }

    /// The initiator registers a TCC branch: its Confirm and Cancel URLs, and the payload
    /// (JSON text) both receive.
    pub async fn register_tcc(
        &self,
        xid: XidNum,
        name: String,
        call: TccCall,
        request_id: String,
    ) -> Result<BranchId, CoordinatorError> {
        let t = Instant::now();
        for (what, url) in [
            ("confirm_url", &call.confirm_url),
            ("cancel_url", &call.cancel_url),
        ] {
            crate::tcc::check_url(what, url).map_err(CoordinatorError::InvalidArgument)?;
        }
        if let Some(p) = &call.payload {
            serde_json::from_str::<serde_json::Value>(p).map_err(|e| {
                CoordinatorError::InvalidArgument(format!("payload is not JSON: {e}"))
            })?;
        }
        if name.chars().count() > 200 || request_id.chars().count() > 200 {
            return Err(CoordinatorError::InvalidArgument(
                "name and request_id are at most 200 characters".into(),
            ));
        }
        let req = RegisterTcc {
            xid,
            name,
            call,
            request_id,
        };
        let id = match self.seq.ask(req).await {
            Err(CoordinatorError::NotFound(_)) => {
                let status = self.status(xid).await?;
                return Err(CoordinatorError::NotActive { xid, status });
            }
            other => other?,
        };
        self.seq.metrics.observe(Op::Register, t.elapsed());
        tracing::debug!(xid = %rewind_protocol::xid::format(xid), branch_id = id, "TCC branch registered");
        Ok(id)
    }

    /// An operator retries, or marks done, an unfinished TCC branch of a decided
    /// transaction; answers the branch's status afterwards.
    pub async fn operate_branch(
        &self,
        xid: XidNum,
        branch_id: BranchId,
        action: BranchAction,
    ) -> Result<BranchStatus, CoordinatorError> {
        match self
            .seq
            .ask(OperateBranch {
                xid,
                branch_id,
                action,
            })
            .await
        {
            Err(CoordinatorError::NotFound(_)) => {
                // Finished: every branch is done already.
                let status = self.status(xid).await?;
                Err(CoordinatorError::AlreadyDecided {
                    xid,
                    status,
                    wanted: "operate on a branch of",
                })
            }
            other => other,
        }
    }

    /// A proxy says how a branch's local transaction ended.
    pub async fn report(
        &self,
        xid: XidNum,
        branch_id: BranchId,
        committed: bool,
    ) -> Result<(), CoordinatorError> {
        let t = Instant::now();
        let report = Report {
            xid,
            branch_id,
            committed,
        };
        match self.seq.ask(report).await {
            Ok(()) => {}
            // A late report for a finished transaction changes nothing.
            Err(CoordinatorError::NotFound(_)) if self.status(xid).await.is_ok() => {}
            Err(e) => return Err(e),
        }
        self.seq.metrics.observe(Op::Report, t.elapsed());
        Ok(())
    }

    /// An operator's decision on a conflict: queued for a proxy (or, for `retry`, the
    /// branch's rollback retried at once).
    pub async fn resolve(
        &self,
        conflict_id: u64,
        action: ResolveAction,
    ) -> Result<u64, CoordinatorError> {
        self.seq
            .ask(Resolve {
                conflict_id,
                action,
            })
            .await
    }

    /// The conflict once the proxy acted on a resolve (or failed), waiting bounded.
    pub async fn settled_conflict(&self, id: u64) -> Result<Conflict, CoordinatorError> {
        self.seq
            .wait_until(self.rollback_wait.min(Duration::from_secs(30)), |e| {
                e.conflict(id)
                    .is_none_or(|c| !matches!(c.state, ConflictState::Resolving { .. }))
            })
            .await;
        self.conflict(id)
            .ok_or(CoordinatorError::ConflictNotFound(id))
    }

    /// Records an operator's action in the audit log (durable, replicated).
    pub async fn audit(&self, who: &str, action: &str, target: &str, result: &str) {
        let entry = crate::engine::Audit {
            who: who.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            result: result.to_string(),
        };
        if let Err(e) = self.seq.ask(entry).await {
            tracing::error!(%e, operator = %who, action, target, "audit entry not recorded");
        }
    }

    // ---- proxies' stream ---------------------------------------------------------------

    pub fn new_proxy_conn(&self) -> u64 {
        self.proxies.new_conn_id()
    }

    /// A proxy announced the resources it serves: phase two for them may go to it now,
    /// and it learns which of their tables hold global locks. Those sets come from the
    /// engine, so in a cluster this first catches up with everything committed (a new
    /// or restarted leader may not have applied every lock it granted yet, and a table
    /// missing from a set would let writes without an XID through to rows under a
    /// global lock); a member that cannot confirm it leads refuses.
    pub async fn proxy_attached(
        &self,
        conn: u64,
        tx: &StreamTx,
        proxy_id: String,
        resources: Vec<String>,
    ) -> Result<(), CoordinatorError> {
        self.seq.linearizable().await?;
        self.proxies.announce(conn, tx, proxy_id, &resources);
        let locked = crate::sequencer::lock_engine(&self.seq.engine).locked_tables();
        self.locked_tables.attach(conn, tx, &resources, |r| {
            locked.get(r).cloned().unwrap_or_default()
        });
        for resource_id in resources {
            self.seq.post(ResourceAvailable { resource_id }).await;
        }
        Ok(())
    }

    pub fn proxy_detached(&self, conn: u64) {
        self.proxies.detach(conn);
        self.locked_tables.detach(conn);
        self.outbox.detached(conn);
        self.xa_waits.detached(conn);
    }

    /// A proxy's read of a resource's outbox and barrier. Only a resource this stream
    /// announced is taken: a proxy cannot overwrite the figures of a backend it does
    /// not front.
    pub fn outbox_report(&self, conn: u64, report: OutboxReport) {
        if !self.proxies.serves(conn, &report.resource_id) {
            tracing::warn!(resource = %report.resource_id, "outbox report for a resource this stream did not announce: ignored");
            return;
        }
        self.outbox.store(conn, report, Instant::now(), now_ms());
    }

    /// A proxy's read of who waits on its prepared XA branches; like an outbox report,
    /// only for a resource the stream announced.
    pub fn xa_lock_report(&self, conn: u64, report: XaLockReport) {
        if !self.proxies.serves(conn, &report.resource_id) {
            tracing::warn!(resource = %report.resource_id, "XA lock report for a resource this stream did not announce: ignored");
            return;
        }
        self.xa_waits.store(conn, report, Instant::now());
    }

    pub fn outbox_redrive_result(&self, conn: u64, command_id: u64, outcome: RedriveOutcome) {
        if !self.outbox.complete_redrive(conn, command_id, outcome) {
            tracing::info!(
                command_id,
                "redrive answer nobody waits for (too late): ignored"
            );
        }
    }

    pub async fn branch_result(
        &self,
        xid: XidNum,
        branch_id: BranchId,
        command_id: u64,
        outcome: ProxyAnswer,
    ) {
        let result = BranchResult {
            xid,
            branch_id,
            command_id,
            outcome,
        };
        self.seq.post(result).await;
    }

    pub async fn resolve_result(&self, conflict_id: u64, command_id: u64, outcome: ProxyAnswer) {
        let result = ResolveResult {
            conflict_id,
            command_id,
            outcome,
        };
        self.seq.post(result).await;
    }

    pub fn table_locks_ack(&self, conn: u64, resource_id: &str, epoch: u64) {
        self.locked_tables.ack(conn, resource_id, epoch);
    }

    /// An operator's redrive of one DEAD outbox message: sent to a proxy attached for the
    /// resource (the one that reported last, if still attached), answered once it acted
    /// or after [`REDRIVE_WAIT`]. Not retried: the operator sees the outcome and decides.
    pub async fn redrive(
        &self,
        resource_id: &str,
        message_id: &str,
    ) -> Result<(), CoordinatorError> {
        if !self.outbox.knows(resource_id) && !self.proxies.attached(resource_id) {
            return Err(CoordinatorError::ResourceNotFound(resource_id.to_string()));
        }
        let command_id = self.outbox.next_command_id();
        let prefer = self.outbox.reporter(resource_id);
        let msg = crate::dispatch::outbox_redrive(command_id, resource_id, message_id);
        let Some(answer) = self.outbox.begin_redrive(command_id, || {
            self.proxies.send_preferring(resource_id, prefer, msg)
        }) else {
            return Err(CoordinatorError::NoProxy(resource_id.to_string()));
        };
        let outcome = match tokio::time::timeout(REDRIVE_WAIT, answer).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => {
                return Err(CoordinatorError::ProxyFailed(
                    "it detached before answering; the message may or may not be NEW \
                     again: check the DEAD list once a proxy reports"
                        .into(),
                ))
            }
            Err(_) => {
                self.outbox.abandon_redrive(command_id);
                return Err(CoordinatorError::Timeout(format!(
                    "the proxy did not answer within {} s; the message may or may not be NEW \
                     again: check the DEAD list after its next report",
                    REDRIVE_WAIT.as_secs()
                )));
            }
        };
        match outcome {
            RedriveOutcome::Done => {
                self.outbox.forget_dead(resource_id, message_id, true);
                Ok(())
            }
            RedriveOutcome::NotDead => {
                self.outbox.forget_dead(resource_id, message_id, false);
                Err(CoordinatorError::MessageNotDead {
                    resource_id: resource_id.to_string(),
                    message_id: message_id.to_string(),
                })
            }
            RedriveOutcome::Failed(why) => Err(CoordinatorError::ProxyFailed(why)),
        }
    }

    // ---- time ----------------------------------------------------------------------------

    /// Time passed: one tick, unless nothing is unfinished (an idle coordinator logs,
    /// and in a cluster replicates, no ticks).
    pub async fn tick(&self) {
        let idle = crate::sequencer::lock_engine(&self.seq.engine).is_idle(now_ms());
        if !idle {
            self.seq.post(crate::engine::Command::Tick).await;
        }
    }

    /// Tables whose last lock went leave the proxies' write-isolation sets.
    pub fn prune_locked_tables(&self) {
        let locked = crate::sequencer::lock_engine(&self.seq.engine).locked_tables();
        self.locked_tables
            .prune(|r| locked.get(r).cloned().unwrap_or_default());
    }

    /// Forgets finished transactions older than `keep_ms`; answers how many.
    pub async fn prune_finished(&self, keep_ms: u64) -> Result<usize, CoordinatorError> {
        let before = now_ms().saturating_sub(keep_ms);
        let store = self.seq.store.clone();
        tokio::task::spawn_blocking(move || store.prune(before))
            .await
            .map_err(|e| CoordinatorError::Storage(e.to_string()))?
    }

    // ---- read models ---------------------------------------------------------------------

    /// Status from memory, else from the finished store.
    pub async fn status(&self, xid: XidNum) -> Result<GlobalStatus, CoordinatorError> {
        self.seq.linearizable().await?;
        if let Some(s) = crate::sequencer::lock_engine(&self.seq.engine).status_of(xid) {
            return Ok(s);
        }
        Ok(self.finished(xid).await?.status)
    }

    /// What is known of an XA branch a proxy found prepared in its database: the global
    /// transaction's record (`None`: never heard of) and the branch registered under
    /// that XA branch qualifier, if any.
    pub async fn xa_branch_state(
        &self,
        xid: XidNum,
        bqual: &str,
    ) -> Result<Option<(GlobalStatus, Option<crate::engine::BranchRecord>)>, CoordinatorError> {
        match self.record(xid).await {
            Ok(rec) => {
                let branch = rec.branches.into_iter().find(|b| {
                    b.branch_type == crate::engine::BranchType::Xa && b.request_id == bqual
                });
                Ok(Some((rec.status, branch)))
            }
            Err(CoordinatorError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The record of an active transaction from memory, else of a finished one from the
    /// store.
    pub async fn record(&self, xid: XidNum) -> Result<GlobalRecord, CoordinatorError> {
        self.seq.linearizable().await?;
        if let Some(r) = crate::sequencer::lock_engine(&self.seq.engine).record(xid) {
            return Ok(r);
        }
        self.finished(xid).await
    }

    /// A finished transaction's record. The engine drops a transaction from memory when
    /// it finishes, and its final record reaches the store only with the batch's durable
    /// write: in between, a transaction that was issued is in neither place, so wait for
    /// that batch instead of answering "not found".
    async fn finished(&self, xid: XidNum) -> Result<GlobalRecord, CoordinatorError> {
        let mut applied = self.seq.applied.clone();
        // Batches from now on count, not the ones before.
        applied.borrow_and_update();
        if let Some(rec) = self.seq.store.finished(xid)? {
            return Ok(rec);
        }
        let in_flight = {
            let engine = crate::sequencer::lock_engine(&self.seq.engine);
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
        if let Some(rec) = crate::sequencer::lock_engine(&self.seq.engine).record(xid) {
            return Ok(rec);
        }
        self.seq
            .store
            .finished(xid)?
            .ok_or(CoordinatorError::NotFound(xid))
    }

    /// One page of transactions, newest first (see [`ListFilter`]).
    pub async fn list(&self, f: ListFilter) -> Result<Vec<GlobalRecord>, CoordinatorError> {
        self.seq.linearizable().await?;
        let limit = f.limit.min(LIST_LIMIT);
        let search = f.search.as_deref().map(str::to_lowercase);
        let matches = |r: &GlobalRecord| {
            search.as_deref().is_none_or(|s| {
                r.name.to_lowercase().contains(s) || rewind_protocol::xid::format(r.xid).contains(s)
            })
        };
        let mut out: Vec<GlobalRecord> = self
            .seq
            .engine
            .lock()
            .expect("engine lock")
            .records(f.status)
            .into_iter()
            .filter(|r| f.before.is_none_or(|b| r.xid < b) && matches(r))
            .collect();
        out.sort_by_key(|r| std::cmp::Reverse(r.xid));
        out.truncate(limit);
        if out.len() < limit && f.status.is_none_or(|s| s.is_final()) {
            // Finished ones, newest first. A search looks through a bounded window (the
            // newest LIST_LIMIT from the cursor on) rather than the whole history.
            let want = if search.is_some() {
                LIST_LIMIT
            } else {
                limit - out.len()
            };
            let rest = self.seq.store.list_finished(f.status, f.before, want)?;
            out.extend(rest.into_iter().filter(|r| matches(r)));
            out.sort_by_key(|r| std::cmp::Reverse(r.xid));
            out.dedup_by_key(|r| r.xid);
            out.truncate(limit);
        }
        Ok(out)
    }

    /// The XA branches of unfinished transactions whose phase two has not finished (so
    /// prepared in their database, holding row locks), oldest first, each with the
    /// sessions its proxy last saw waiting on those locks.
    pub async fn prepared_xa(&self) -> Result<Vec<(PreparedXa, Vec<XaWaiter>)>, CoordinatorError> {
        self.seq.linearizable().await?;
        let prepared = crate::sequencer::lock_engine(&self.seq.engine).prepared_xa();
        let mut waiters = self.xa_waits.by_branch(Instant::now());
        Ok(prepared
            .into_iter()
            .map(|p| {
                let key = (rewind_protocol::xid::format(p.xid), p.bqual.clone());
                let w = waiters.remove(&key).unwrap_or_default();
                (p, w)
            })
            .collect())
    }

    /// Held locks by holder, at most `limit`, and how many there are in all.
    pub async fn held_locks(
        &self,
        limit: usize,
    ) -> Result<(Vec<HeldLock>, usize), CoordinatorError> {
        self.seq.linearizable().await?;
        Ok(self
            .seq
            .engine
            .lock()
            .expect("engine lock")
            .held_locks_detail(limit))
    }

    /// Which of `keys` another transaction than `asking` holds: (index in `keys`,
    /// holder, whether the holder is rolling back). Never answered from a deposed
    /// leader's memory.
    pub async fn query_locks(
        &self,
        keys: &[(String, RowKey)],
        asking: Option<XidNum>,
    ) -> Result<Vec<(usize, XidNum, bool)>, CoordinatorError> {
        let t = Instant::now();
        self.seq.linearizable().await?;
        let found = self
            .seq
            .engine
            .lock()
            .expect("engine lock")
            .query_locks(keys, asking);
        self.seq.metrics.observe(Op::QueryLocks, t.elapsed());
        Ok(found)
    }

    /// Dirty-write conflicts, newest first, optionally of one transaction.
    pub async fn conflicts(&self, xid: Option<XidNum>) -> Result<Vec<Conflict>, CoordinatorError> {
        self.seq.linearizable().await?;
        let e = crate::sequencer::lock_engine(&self.seq.engine);
        Ok(e.conflicts()
            .rev()
            .filter(|c| xid.is_none_or(|x| c.xid == x))
            .cloned()
            .collect())
    }

    pub fn conflict(&self, id: u64) -> Option<Conflict> {
        self.seq
            .engine
            .lock()
            .expect("engine lock")
            .conflict(id)
            .cloned()
    }

    /// The audit log, newest first, from entry `before` (exclusive) on.
    pub fn audit_log(&self, before: Option<u64>, limit: usize) -> Vec<AuditEntry> {
        self.seq
            .engine
            .lock()
            .expect("engine lock")
            .audit(before, limit)
    }

    /// Every resource's latest outbox report, sorted by resource id. From this node's
    /// memory: the reports are a cache of the databases, not replicated state.
    pub fn outbox_reports(&self) -> Vec<ResourceOutbox> {
        self.outbox.reports(Instant::now())
    }

    /// DEAD outbox messages, newest first, of one resource or all.
    pub fn dead_messages(&self, resource_id: Option<&str>) -> Vec<(String, DeadMessage)> {
        self.outbox.dead(resource_id)
    }

    /// /metrics in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        let mut text = {
            let e = crate::sequencer::lock_engine(&self.seq.engine);
            self.seq.metrics.render(&e)
        };
        crate::metrics::render_outbox(&mut text, &self.outbox_reports());
        text
    }
}
