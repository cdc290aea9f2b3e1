//! The global-session state machine. Pure: [`Engine::apply`] takes a [`Command`] and the
//! current time as a value, changes in-memory state, and leaves behind
//! [`Effect`]s (phase-two commands to send) and [`Writes`] (records to make durable).
//! No I/O, no clock, no randomness: the sequencer feeds it, tests drive it with explicit
//! time, and a later Raft log can replicate the same commands.
//!
//! Only unfinished transactions live here. A transaction that reaches a final status
//! (`committed`, `rolled_back`, `timeout_rolled_back`) leaves memory as a
//! [`SessionRecord`] for the store, which keeps it for the retention period.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::error::CoordinatorError;
use crate::locks::{CompactKey, KeyParts, LockTable};

/// A global transaction's number; its XID is `rewind_protocol::xid::format(n)`.
pub type XidNum = u64;
pub type BranchId = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Begin,
    Committing,
    Committed,
    RollingBack,
    RolledBack,
    TimeoutRollingBack,
    TimeoutRolledBack,
    CommitRetrying,
    RollbackRetrying,
    RollbackFailed,
}

impl Status {
    pub const ALL: [Status; 10] = [
        Status::Begin,
        Status::Committing,
        Status::Committed,
        Status::RollingBack,
        Status::RolledBack,
        Status::TimeoutRollingBack,
        Status::TimeoutRolledBack,
        Status::CommitRetrying,
        Status::RollbackRetrying,
        Status::RollbackFailed,
    ];

    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Committed | Status::RolledBack | Status::TimeoutRolledBack
        )
    }
    pub fn is_committing(self) -> bool {
        matches!(
            self,
            Status::Committing | Status::CommitRetrying | Status::Committed
        )
    }
    /// Rollback decided (including stalled and finished rollbacks).
    pub fn is_rolling_back(self) -> bool {
        matches!(
            self,
            Status::RollingBack
                | Status::TimeoutRollingBack
                | Status::RollbackRetrying
                | Status::RollbackFailed
                | Status::RolledBack
                | Status::TimeoutRolledBack
        )
    }
    /// Where a waiting rollback request may answer: done, or stalled.
    pub fn rollback_settled(self) -> bool {
        matches!(
            self,
            Status::RolledBack
                | Status::TimeoutRolledBack
                | Status::RollbackRetrying
                | Status::RollbackFailed
        )
    }
    pub fn name(self) -> &'static str {
        self.to_proto().api_name()
    }
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.name() == s)
    }
    pub fn to_proto(self) -> rewind_protocol::GlobalStatus {
        use rewind_protocol::GlobalStatus as G;
        match self {
            Status::Begin => G::Begin,
            Status::Committing => G::Committing,
            Status::Committed => G::Committed,
            Status::RollingBack => G::RollingBack,
            Status::RolledBack => G::RolledBack,
            Status::TimeoutRollingBack => G::TimeoutRollingBack,
            Status::TimeoutRolledBack => G::TimeoutRolledBack,
            Status::CommitRetrying => G::CommitRetrying,
            Status::RollbackRetrying => G::RollbackRetrying,
            Status::RollbackFailed => G::RollbackFailed,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BranchStatus {
    Registered,
    PhaseOneDone,
    PhaseOneFailed,
    Committed,
    RolledBack,
    Conflict,
}

/// Phase-two scheduling of one branch. Volatile on purpose: after a restart every
/// unfinished branch is simply sent again (phase-two commands are idempotent).
#[derive(Clone, Copy, Debug, Default)]
struct PhaseTwo {
    /// Failed attempts so far (drives the backoff).
    attempts: u32,
    /// Command in flight and when to give up waiting for its answer.
    in_flight: Option<(u64, u64)>,
    /// Earliest time of the next attempt.
    next_at: u64,
}

#[derive(Clone, Debug)]
struct Branch {
    id: BranchId,
    resource_id: String,
    status: BranchStatus,
    request_id: String,
    keys: Vec<CompactKey>,
    /// Whether `keys` are currently in the lock table.
    locks_held: bool,
    /// When the branch registered (and took its locks).
    registered_ms: u64,
    /// Phase-two commands sent for this branch, over its whole life (for operators;
    /// `p2.attempts` is the volatile backoff counter).
    sends: u32,
    /// The last phase-two failure the proxy reported (or the lack of an answer).
    last_error: Option<String>,
    p2: PhaseTwo,
}

#[derive(Clone, Debug)]
struct Session {
    xid: XidNum,
    name: String,
    status: Status,
    /// Set when the rollback was caused by the timeout (decides the final status).
    timed_out: bool,
    created_ms: u64,
    deadline_ms: u64,
    updated_ms: u64,
    /// Status changes, oldest first (bounded, see [`Session::set_status`]).
    history: Vec<StatusChange>,
    /// Ordered by id, which is the registration sequence.
    branches: Vec<Branch>,
}

/// How many status changes a session keeps: the first (its begin) and the latest
/// others. A conflict resolved and found dirty again many times flips between
/// `rollback_failed` and `rollback_retrying`; the record must stay small.
const HISTORY_LIMIT: usize = 32;

impl Session {
    fn set_status(&mut self, status: Status, now: u64) {
        self.status = status;
        self.updated_ms = now;
        if self.history.len() >= HISTORY_LIMIT {
            self.history.remove(1);
        }
        self.history.push(StatusChange { status, at_ms: now });
    }
}

/// A held global lock as operators see it.
#[derive(Clone, Debug)]
pub struct HeldLock {
    pub resource_id: String,
    pub key: KeyParts,
    pub xid: XidNum,
    pub branch_id: BranchId,
    pub since_ms: u64,
    pub status: Status,
}

/// One entry of a session's timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    pub status: Status,
    pub at_ms: u64,
}

/// An operator's action, as the audit log keeps it. Entries go through the state
/// machine like any decision (durable, and replicated in a cluster), so the log says
/// the same on every node and survives restarts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: u64,
    pub at_ms: u64,
    /// The operator's name.
    pub who: String,
    /// What was done, e.g. `resolve restore_before`, `login`.
    pub action: String,
    /// What it was done to, e.g. `conflict 12`, `transaction rw-…`.
    pub target: String,
    /// `ok` or the error, in words.
    pub result: String,
}

/// Audit entries the engine keeps in memory (the store keeps all of them).
pub const AUDIT_IN_MEMORY: usize = 10_000;

/// The durable (and API) form of a session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub xid: XidNum,
    pub name: String,
    pub status: Status,
    pub timed_out: bool,
    pub created_ms: u64,
    pub deadline_ms: u64,
    pub updated_ms: u64,
    pub finished_ms: Option<u64>,
    /// Status timeline (absent in records written before it existed).
    #[serde(default)]
    pub history: Vec<StatusChange>,
    pub branches: Vec<BranchRecord>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BranchRecord {
    pub branch_id: BranchId,
    pub resource_id: String,
    pub status: BranchStatus,
    pub request_id: String,
    pub lock_keys: Vec<KeyParts>,
    pub locks_held: bool,
    #[serde(default)]
    pub registered_ms: u64,
    /// Phase-two commands sent so far.
    #[serde(default)]
    pub phase_two_attempts: u32,
    #[serde(default)]
    pub last_error: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResolveAction {
    RestoreBefore,
    KeepCurrent,
    Retry,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum ConflictState {
    /// Waiting for an operator.
    Open,
    /// Command sent to the proxy.
    Resolving {
        action: ResolveAction,
        command_id: u64,
    },
    /// Settled by `action`; the branch rollback was retried.
    Resolved { action: ResolveAction },
    /// The retried rollback found the row dirty again: a newer conflict replaces this one.
    Superseded,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    pub id: u64,
    pub xid: XidNum,
    pub branch_id: BranchId,
    pub resource_id: String,
    pub table: String,
    pub pk: Vec<Vec<u8>>,
    pub before: String,
    pub after: String,
    pub current: String,
    #[serde(flatten)]
    pub state: ConflictState,
    /// Last failure message of a resolve attempt, for the operator.
    pub last_error: Option<String>,
    pub updated_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirtyRow {
    pub table: String,
    pub pk: Vec<Vec<u8>>,
    pub before: String,
    pub after: String,
    pub current: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Done,
    DirtyWrite(Vec<DirtyRow>),
    Retryable(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Commit,
    Rollback,
}

/// The inputs of the state machine (in a cluster, the payload of the Raft log).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Command {
    Begin {
        name: String,
        timeout_ms: u64,
    },
    Register {
        xid: XidNum,
        resource_id: String,
        keys: Vec<KeyParts>,
        request_id: String,
    },
    Report {
        xid: XidNum,
        branch_id: BranchId,
        committed: bool,
    },
    Commit {
        xid: XidNum,
    },
    Rollback {
        xid: XidNum,
    },
    BranchResult {
        xid: XidNum,
        branch_id: BranchId,
        command_id: u64,
        outcome: Outcome,
    },
    Resolve {
        conflict_id: u64,
        action: ResolveAction,
    },
    ResolveResult {
        conflict_id: u64,
        command_id: u64,
        outcome: Outcome,
    },
    /// A proxy serving this resource attached: retry its pending work now.
    ResourceAvailable {
        resource_id: String,
    },
    /// Time passed: timeouts, retries, lost answers.
    Tick,
    /// An operator did something (see [`AuditEntry`]); the engine stamps id and time.
    Audit {
        who: String,
        action: String,
        target: String,
        result: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Begun(XidNum),
    Registered(BranchId),
    LockConflict {
        key: (String, KeyParts),
        holder: XidNum,
        holder_rolling_back: bool,
    },
    Status(Status),
    Conflict(u64),
    Audited(u64),
    Ack,
}

/// Things to do outside the state machine, after the batch is durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    SendBranch {
        command_id: u64,
        xid: XidNum,
        branch_id: BranchId,
        resource_id: String,
        action: Action,
    },
    SendResolve {
        command_id: u64,
        conflict: Box<ConflictCommand>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConflictCommand {
    pub conflict_id: u64,
    pub xid: XidNum,
    pub branch_id: BranchId,
    pub resource_id: String,
    pub table: String,
    pub pk: Vec<Vec<u8>>,
    pub action: ResolveAction,
    pub before: String,
    pub after: String,
    pub current: String,
}

/// Records to make durable, deduplicated per batch.
#[derive(Debug, Default)]
pub struct Writes {
    pub active: Vec<(XidNum, Vec<u8>)>,
    pub finished: Vec<(XidNum, u64, Vec<u8>)>,
    pub conflicts: Vec<(u64, Vec<u8>)>,
    pub audit: Vec<(u64, Vec<u8>)>,
    pub counters: Option<Counters>,
    /// Cluster mode: the Raft log position (and membership) these writes bring the
    /// state machine to, stored atomically with them (opaque to the store).
    pub raft: Option<Vec<u8>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub next_xid: u64,
    pub next_branch: u64,
    pub next_conflict: u64,
    #[serde(default)]
    pub next_audit: u64,
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub default_timeout_ms: u64,
    pub max_timeout_ms: u64,
    pub backoff_base_ms: u64,
    pub backoff_cap_ms: u64,
    /// How long to wait for a proxy's answer to a phase-two command before resending.
    pub command_timeout_ms: u64,
}

/// Events worth counting, drained by the sequencer for /metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub phase_two_retries: u64,
    pub branches_registered: u64,
    pub lock_conflicts: u64,
    pub finished: [u64; 10],
}

pub struct Engine {
    cfg: EngineConfig,
    sessions: HashMap<XidNum, Session>,
    locks: LockTable,
    conflicts: BTreeMap<u64, Conflict>,
    /// The latest [`AUDIT_IN_MEMORY`] operator actions, oldest first.
    audit: std::collections::VecDeque<AuditEntry>,
    new_audit: Vec<u64>,
    counters: Counters,
    next_command: u64,
    dirty: HashSet<XidNum>,
    dirty_conflicts: HashSet<u64>,
    finished: Vec<(XidNum, u64, Vec<u8>)>,
    counters_dirty: bool,
    effects: Vec<Effect>,
    stats: Stats,
}

/// The first XID number of a new coordinator data directory: uniform below 2^52 (so
/// it stays exact in JavaScript numbers), leaving 2^40 numbers of room above it. Two
/// directories' ranges overlap only if their bases fall within the numbers they use.
pub fn random_xid_base() -> u64 {
    1 + rand::random::<u64>() % ((1u64 << 52) - (1u64 << 40))
}

fn backoff(cfg: &EngineConfig, seed: u64, attempts: u32) -> u64 {
    let exp = cfg
        .backoff_base_ms
        .saturating_mul(1u64 << attempts.saturating_sub(1).min(20))
        .min(cfg.backoff_cap_ms);
    // Deterministic jitter in [exp/2, exp] so retries of many branches spread out
    // without the state machine owning a random source.
    let mut x = seed ^ (attempts as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    let half = exp / 2;
    half + if half == 0 { 0 } else { x % (half + 1) }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialize")
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Engine {
        Engine {
            cfg,
            sessions: HashMap::new(),
            locks: LockTable::default(),
            conflicts: BTreeMap::new(),
            audit: std::collections::VecDeque::new(),
            new_audit: Vec::new(),
            counters: Counters {
                next_xid: 1,
                next_branch: 1,
                next_conflict: 1,
                next_audit: 1,
            },
            next_command: 1,
            dirty: HashSet::new(),
            dirty_conflicts: HashSet::new(),
            finished: Vec::new(),
            counters_dirty: false,
            effects: Vec::new(),
            stats: Stats::default(),
        }
    }

    /// Rebuilds the state from durable records; locks are re-derived from branches.
    pub fn restore(
        cfg: EngineConfig,
        counters: Counters,
        active: Vec<SessionRecord>,
        conflicts: Vec<Conflict>,
    ) -> Engine {
        let mut e = Engine::new(cfg);
        e.counters = Counters {
            next_xid: counters.next_xid.max(1),
            next_branch: counters.next_branch.max(1),
            next_conflict: counters.next_conflict.max(1),
            next_audit: counters.next_audit.max(1),
        };
        for rec in active {
            let mut branches = Vec::with_capacity(rec.branches.len());
            for b in rec.branches {
                let keys: Vec<CompactKey> = b
                    .lock_keys
                    .iter()
                    .map(|k| e.locks.compact(&b.resource_id, k))
                    .collect();
                if b.locks_held {
                    e.locks.restore(rec.xid, &keys);
                }
                e.counters.next_branch = e.counters.next_branch.max(b.branch_id + 1);
                branches.push(Branch {
                    id: b.branch_id,
                    resource_id: b.resource_id,
                    status: b.status,
                    request_id: b.request_id,
                    keys,
                    locks_held: b.locks_held,
                    registered_ms: b.registered_ms,
                    sends: b.phase_two_attempts,
                    last_error: b.last_error,
                    p2: PhaseTwo::default(),
                });
            }
            branches.sort_by_key(|b| b.id);
            e.counters.next_xid = e.counters.next_xid.max(rec.xid + 1);
            e.sessions.insert(
                rec.xid,
                Session {
                    xid: rec.xid,
                    name: rec.name,
                    status: rec.status,
                    timed_out: rec.timed_out,
                    created_ms: rec.created_ms,
                    deadline_ms: rec.deadline_ms,
                    updated_ms: rec.updated_ms,
                    history: rec.history,
                    branches,
                },
            );
        }
        for c in conflicts {
            e.counters.next_conflict = e.counters.next_conflict.max(c.id + 1);
            // A resolve in flight when we stopped has no answer coming: reopen it.
            let mut c = c;
            if matches!(c.state, ConflictState::Resolving { .. }) {
                c.state = ConflictState::Open;
            }
            e.conflicts.insert(c.id, c);
        }
        e
    }

    /// Puts back the audit log's latest entries (oldest first) after a restart.
    pub fn restore_audit(&mut self, entries: impl IntoIterator<Item = AuditEntry>) {
        for a in entries {
            self.counters.next_audit = self.counters.next_audit.max(a.id + 1);
            self.audit.push_back(a);
            if self.audit.len() > AUDIT_IN_MEMORY {
                self.audit.pop_front();
            }
        }
    }

    /// The audit log, newest first, from entry `before` (exclusive) on.
    pub fn audit(&self, before: Option<u64>, limit: usize) -> Vec<AuditEntry> {
        self.audit
            .iter()
            .rev()
            .filter(|a| before.is_none_or(|b| a.id < b))
            .take(limit)
            .cloned()
            .collect()
    }

    /// No unfinished session: a tick would change nothing (time-outs and phase-two
    /// retries all belong to sessions), so none is logged.
    pub fn is_idle(&self) -> bool {
        self.sessions.is_empty()
    }

    /// The id counters (for a cluster snapshot).
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Every audit entry kept in memory, oldest first (for a cluster snapshot).
    pub fn audit_all(&self) -> Vec<AuditEntry> {
        self.audit.iter().cloned().collect()
    }

    /// Cluster mode: a state machine that has issued no XID yet takes its XID base
    /// from the log (the leader's random pick), so every node issues the same XIDs.
    pub fn seed_xid_base(&mut self, base: u64) {
        if self.counters.next_xid <= 1 && self.sessions.is_empty() && base > 1 {
            self.counters.next_xid = base;
            self.counters_dirty = true;
        }
    }

    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    pub fn take_stats(&mut self) -> Stats {
        std::mem::take(&mut self.stats)
    }

    /// Serializes everything changed since the last call.
    pub fn take_writes(&mut self) -> Writes {
        let mut w = Writes::default();
        for xid in self.dirty.drain() {
            if let Some(s) = self.sessions.get(&xid) {
                w.active
                    .push((xid, encode(&record_of(&self.locks, s, None))));
            }
        }
        w.finished = std::mem::take(&mut self.finished);
        for id in self.dirty_conflicts.drain() {
            if let Some(c) = self.conflicts.get(&id) {
                w.conflicts.push((id, encode(c)));
            }
        }
        if !self.new_audit.is_empty() {
            let first = self.audit.front().map_or(0, |a| a.id);
            for id in self.new_audit.drain(..) {
                if let Some(a) = id
                    .checked_sub(first)
                    .and_then(|i| self.audit.get(i as usize))
                {
                    w.audit.push((id, encode(a)));
                }
            }
        }
        if std::mem::take(&mut self.counters_dirty) {
            w.counters = Some(self.counters);
        }
        w
    }

    pub fn apply(&mut self, cmd: Command, now: u64) -> Result<Reply, CoordinatorError> {
        match cmd {
            Command::Begin { name, timeout_ms } => Ok(self.begin(name, timeout_ms, now)),
            Command::Register {
                xid,
                resource_id,
                keys,
                request_id,
            } => self.register(xid, resource_id, keys, request_id, now),
            Command::Report {
                xid,
                branch_id,
                committed,
            } => self.report(xid, branch_id, committed, now),
            Command::Commit { xid } => self.commit(xid, now),
            Command::Rollback { xid } => self.rollback(xid, now),
            Command::BranchResult {
                xid,
                branch_id,
                command_id,
                outcome,
            } => {
                self.branch_result(xid, branch_id, command_id, outcome, now);
                Ok(Reply::Ack)
            }
            Command::Resolve {
                conflict_id,
                action,
            } => self.resolve(conflict_id, action, now),
            Command::ResolveResult {
                conflict_id,
                command_id,
                outcome,
            } => {
                self.resolve_result(conflict_id, command_id, outcome, now);
                Ok(Reply::Ack)
            }
            Command::ResourceAvailable { resource_id } => {
                let xids: Vec<XidNum> = self
                    .sessions
                    .values()
                    .filter(|s| s.branches.iter().any(|b| b.resource_id == resource_id))
                    .map(|s| s.xid)
                    .collect();
                for xid in xids {
                    let s = self.sessions.get_mut(&xid).expect("listed");
                    for b in s
                        .branches
                        .iter_mut()
                        .filter(|b| b.resource_id == resource_id)
                    {
                        // Commands in flight went to a stream that may be gone: send
                        // them again now rather than after the command timeout (they
                        // are idempotent; answers to the old ones still count).
                        b.p2.in_flight = None;
                        b.p2.next_at = now;
                    }
                    self.drive(xid, now);
                }
                Ok(Reply::Ack)
            }
            Command::Tick => {
                self.tick(now);
                Ok(Reply::Ack)
            }
            Command::Audit {
                who,
                action,
                target,
                result,
            } => {
                let id = self.counters.next_audit;
                self.counters.next_audit += 1;
                self.counters_dirty = true;
                self.audit.push_back(AuditEntry {
                    id,
                    at_ms: now,
                    who,
                    action,
                    target,
                    result,
                });
                if self.audit.len() > AUDIT_IN_MEMORY {
                    self.audit.pop_front();
                }
                self.new_audit.push(id);
                Ok(Reply::Audited(id))
            }
        }
    }

    fn begin(&mut self, name: String, timeout_ms: u64, now: u64) -> Reply {
        let xid = self.counters.next_xid;
        self.counters.next_xid += 1;
        self.counters_dirty = true;
        let timeout = if timeout_ms == 0 {
            self.cfg.default_timeout_ms
        } else {
            timeout_ms
        };
        let timeout = timeout.min(self.cfg.max_timeout_ms);
        self.sessions.insert(
            xid,
            Session {
                xid,
                name,
                status: Status::Begin,
                timed_out: false,
                created_ms: now,
                deadline_ms: now.saturating_add(timeout),
                updated_ms: now,
                history: vec![StatusChange {
                    status: Status::Begin,
                    at_ms: now,
                }],
                branches: Vec::new(),
            },
        );
        self.dirty.insert(xid);
        Reply::Begun(xid)
    }

    fn register(
        &mut self,
        xid: XidNum,
        resource_id: String,
        keys: Vec<KeyParts>,
        request_id: String,
        now: u64,
    ) -> Result<Reply, CoordinatorError> {
        if resource_id.is_empty() {
            return Err(CoordinatorError::InvalidArgument(
                "resource_id must not be empty".into(),
            ));
        }
        if request_id.is_empty() {
            return Err(CoordinatorError::InvalidArgument(
                "request_id must not be empty".into(),
            ));
        }
        for k in &keys {
            if k.table.is_empty() {
                return Err(CoordinatorError::InvalidArgument(
                    "lock key with empty table".into(),
                ));
            }
            if k.pk.is_empty() {
                return Err(CoordinatorError::InvalidArgument(format!(
                    "lock key on table {:?} with empty primary key",
                    k.table
                )));
            }
        }
        let s = self
            .sessions
            .get(&xid)
            .ok_or(CoordinatorError::NotFound(xid))?;
        if let Some(b) = s.branches.iter().find(|b| b.request_id == request_id) {
            return Ok(Reply::Registered(b.id));
        }
        if s.status != Status::Begin {
            return Err(CoordinatorError::NotActive {
                xid,
                status: s.status,
            });
        }
        let mut compact: Vec<CompactKey> = keys
            .iter()
            .map(|k| self.locks.compact(&resource_id, k))
            .collect();
        compact.sort_unstable();
        compact.dedup();
        if let Err((key, holder)) = self.locks.acquire_all(xid, &compact) {
            self.stats.lock_conflicts += 1;
            let holder_rolling_back = self
                .sessions
                .get(&holder)
                .is_some_and(|h| h.status.is_rolling_back());
            return Ok(Reply::LockConflict {
                key: self.locks.expand(&key),
                holder,
                holder_rolling_back,
            });
        }
        let id = self.counters.next_branch;
        self.counters.next_branch += 1;
        self.counters_dirty = true;
        let s = self.sessions.get_mut(&xid).expect("checked");
        s.branches.push(Branch {
            id,
            resource_id,
            status: BranchStatus::Registered,
            request_id,
            keys: compact,
            locks_held: true,
            registered_ms: now,
            sends: 0,
            last_error: None,
            p2: PhaseTwo::default(),
        });
        s.updated_ms = now;
        self.dirty.insert(xid);
        self.stats.branches_registered += 1;
        Ok(Reply::Registered(id))
    }

    fn report(
        &mut self,
        xid: XidNum,
        branch_id: BranchId,
        committed: bool,
        now: u64,
    ) -> Result<Reply, CoordinatorError> {
        let s = self
            .sessions
            .get_mut(&xid)
            .ok_or(CoordinatorError::NotFound(xid))?;
        let b = s
            .branches
            .iter_mut()
            .find(|b| b.id == branch_id)
            .ok_or(CoordinatorError::BranchNotFound(branch_id))?;
        if b.status == BranchStatus::Registered {
            b.status = if committed {
                BranchStatus::PhaseOneDone
            } else {
                BranchStatus::PhaseOneFailed
            };
            s.updated_ms = now;
            self.dirty.insert(xid);
        }
        Ok(Reply::Ack)
    }

    fn commit(&mut self, xid: XidNum, now: u64) -> Result<Reply, CoordinatorError> {
        let s = self
            .sessions
            .get_mut(&xid)
            .ok_or(CoordinatorError::NotFound(xid))?;
        match s.status {
            Status::Begin => {}
            st if st.is_committing() => return Ok(Reply::Status(st)),
            st => {
                return Err(CoordinatorError::AlreadyDecided {
                    xid,
                    status: st,
                    wanted: "commit",
                })
            }
        }
        s.set_status(Status::Committing, now);
        // Commit releases every lock at once: the data is final, only undo records remain.
        for b in s.branches.iter_mut() {
            if b.locks_held {
                self.locks.release_all(xid, &b.keys);
                b.locks_held = false;
            }
        }
        self.dirty.insert(xid);
        self.drive(xid, now);
        Ok(Reply::Status(
            self.status_of(xid).unwrap_or(Status::Committed),
        ))
    }

    fn rollback(&mut self, xid: XidNum, now: u64) -> Result<Reply, CoordinatorError> {
        let s = self
            .sessions
            .get_mut(&xid)
            .ok_or(CoordinatorError::NotFound(xid))?;
        match s.status {
            Status::Begin => {}
            st if st.is_rolling_back() => return Ok(Reply::Status(st)),
            st => {
                return Err(CoordinatorError::AlreadyDecided {
                    xid,
                    status: st,
                    wanted: "rollback",
                })
            }
        }
        s.set_status(Status::RollingBack, now);
        self.dirty.insert(xid);
        self.drive(xid, now);
        Ok(Reply::Status(
            self.status_of(xid).unwrap_or(Status::RolledBack),
        ))
    }

    /// Status of an active session (`None` once finished and handed to the store).
    pub fn status_of(&self, xid: XidNum) -> Option<Status> {
        self.sessions.get(&xid).map(|s| s.status)
    }

    /// Whether `xid` was ever begun here (it may have finished and left memory).
    pub fn issued(&self, xid: XidNum) -> bool {
        xid > 0 && xid < self.counters.next_xid
    }

    /// Sends whatever phase-two work is due for `xid`, and finishes it when all is done.
    fn drive(&mut self, xid: XidNum, now: u64) {
        let Some(s) = self.sessions.get_mut(&xid) else {
            return;
        };
        let mut sends = Vec::new();
        let mut final_status = None;
        match s.status {
            Status::Committing | Status::CommitRetrying => {
                let mut pending = false;
                for b in s.branches.iter_mut() {
                    if matches!(
                        b.status,
                        BranchStatus::Committed | BranchStatus::PhaseOneFailed
                    ) {
                        continue;
                    }
                    pending = true;
                    if b.p2.in_flight.is_none() && b.p2.next_at <= now {
                        let cmd = self.next_command;
                        self.next_command += 1;
                        b.p2.in_flight = Some((cmd, now + self.cfg.command_timeout_ms));
                        b.sends = b.sends.saturating_add(1);
                        sends.push((cmd, b.id, b.resource_id.clone(), Action::Commit));
                    }
                }
                if !pending {
                    final_status = Some(Status::Committed);
                }
            }
            Status::RollingBack | Status::TimeoutRollingBack | Status::RollbackRetrying => {
                // Strictly one branch at a time, newest registration first.
                match s
                    .branches
                    .iter_mut()
                    .rev()
                    .find(|b| b.status != BranchStatus::RolledBack)
                {
                    None => {
                        final_status = Some(if s.timed_out {
                            Status::TimeoutRolledBack
                        } else {
                            Status::RolledBack
                        })
                    }
                    Some(b) if b.status == BranchStatus::Conflict => {
                        s.set_status(Status::RollbackFailed, now);
                        self.dirty.insert(xid);
                    }
                    Some(b) => {
                        if b.p2.in_flight.is_none() && b.p2.next_at <= now {
                            let cmd = self.next_command;
                            self.next_command += 1;
                            b.p2.in_flight = Some((cmd, now + self.cfg.command_timeout_ms));
                            b.sends = b.sends.saturating_add(1);
                            sends.push((cmd, b.id, b.resource_id.clone(), Action::Rollback));
                        }
                    }
                }
            }
            _ => {}
        }
        for (command_id, branch_id, resource_id, action) in sends {
            self.effects.push(Effect::SendBranch {
                command_id,
                xid,
                branch_id,
                resource_id,
                action,
            });
        }
        if let Some(st) = final_status {
            let mut s = self.sessions.remove(&xid).expect("present");
            s.set_status(st, now);
            for b in s.branches.iter_mut() {
                if b.locks_held {
                    self.locks.release_all(xid, &b.keys);
                    b.locks_held = false;
                }
            }
            self.dirty.remove(&xid);
            self.stats.finished[Status::ALL.iter().position(|x| *x == st).unwrap_or(0)] += 1;
            let rec = record_of(&self.locks, &s, Some(now));
            self.finished.push((xid, now, encode(&rec)));
        }
    }

    fn branch_result(
        &mut self,
        xid: XidNum,
        branch_id: BranchId,
        command_id: u64,
        outcome: Outcome,
        now: u64,
    ) {
        let Some(s) = self.sessions.get_mut(&xid) else {
            return;
        };
        let Some(b) = s.branches.iter_mut().find(|b| b.id == branch_id) else {
            return;
        };
        let current = b.p2.in_flight.map(|(c, _)| c);
        match outcome {
            Outcome::Done => {
                b.p2 = PhaseTwo::default();
                if s.status.is_committing() {
                    b.status = BranchStatus::Committed;
                } else if s.status.is_rolling_back() && b.status != BranchStatus::Conflict {
                    b.status = BranchStatus::RolledBack;
                    if b.locks_held {
                        self.locks.release_all(xid, &b.keys);
                        b.locks_held = false;
                    }
                } else {
                    return;
                }
                s.updated_ms = now;
                self.dirty.insert(xid);
            }
            Outcome::DirtyWrite(rows) => {
                if current != Some(command_id) || !s.status.is_rolling_back() {
                    return;
                }
                b.p2 = PhaseTwo::default();
                b.status = BranchStatus::Conflict;
                b.last_error = Some(format!(
                    "dirty write: {} row(s) changed by someone else since the branch wrote them",
                    rows.len()
                ));
                let resource_id = b.resource_id.clone();
                s.set_status(Status::RollbackFailed, now);
                self.dirty.insert(xid);
                for c in self.conflicts.values_mut() {
                    if c.branch_id == branch_id && c.state == ConflictState::Open {
                        c.state = ConflictState::Superseded;
                        c.updated_ms = now;
                        self.dirty_conflicts.insert(c.id);
                    }
                }
                for row in rows {
                    let id = self.counters.next_conflict;
                    self.counters.next_conflict += 1;
                    self.counters_dirty = true;
                    self.conflicts.insert(
                        id,
                        Conflict {
                            id,
                            xid,
                            branch_id,
                            resource_id: resource_id.clone(),
                            table: row.table,
                            pk: row.pk,
                            before: row.before,
                            after: row.after,
                            current: row.current,
                            state: ConflictState::Open,
                            last_error: None,
                            updated_ms: now,
                        },
                    );
                    self.dirty_conflicts.insert(id);
                }
                tracing::warn!(
                    xid,
                    branch_id,
                    "dirty write during rollback; locks kept for an operator"
                );
                return;
            }
            Outcome::Retryable(msg) => {
                if current != Some(command_id) {
                    return;
                }
                self.stats.phase_two_retries += 1;
                b.p2.attempts += 1;
                b.p2.in_flight = None;
                b.p2.next_at = now + backoff(&self.cfg, branch_id, b.p2.attempts);
                tracing::info!(xid, branch_id, attempts = b.p2.attempts, %msg, "phase two will be retried");
                b.last_error = Some(msg);
                self.dirty.insert(xid);
                let retrying = match s.status {
                    Status::Committing => Some(Status::CommitRetrying),
                    Status::RollingBack | Status::TimeoutRollingBack => {
                        Some(Status::RollbackRetrying)
                    }
                    _ => None,
                };
                if let Some(st) = retrying {
                    s.set_status(st, now);
                }
            }
        }
        self.drive(xid, now);
    }

    fn tick(&mut self, now: u64) {
        let mut due = Vec::new();
        for s in self.sessions.values_mut() {
            match s.status {
                Status::Begin if now >= s.deadline_ms => {
                    s.set_status(Status::TimeoutRollingBack, now);
                    s.timed_out = true;
                    self.dirty.insert(s.xid);
                    tracing::info!(xid = s.xid, "global transaction timed out; rolling back");
                    due.push((s.xid, None));
                }
                Status::Begin | Status::RollbackFailed => {}
                _ => {
                    for b in &s.branches {
                        match b.p2.in_flight {
                            Some((cmd, deadline)) if now >= deadline => {
                                due.push((s.xid, Some((b.id, cmd))))
                            }
                            None if b.p2.next_at <= now => due.push((s.xid, None)),
                            _ => {}
                        }
                    }
                }
            }
        }
        for (xid, lost) in due {
            match lost {
                Some((branch_id, cmd)) => self.branch_result(
                    xid,
                    branch_id,
                    cmd,
                    Outcome::Retryable("no answer from the proxy in time".into()),
                    now,
                ),
                None => self.drive(xid, now),
            }
        }
    }

    fn resolve(
        &mut self,
        conflict_id: u64,
        action: ResolveAction,
        now: u64,
    ) -> Result<Reply, CoordinatorError> {
        let c = self
            .conflicts
            .get_mut(&conflict_id)
            .ok_or(CoordinatorError::ConflictNotFound(conflict_id))?;
        if c.state != ConflictState::Open {
            return Err(CoordinatorError::ConflictNotOpen(conflict_id));
        }
        c.updated_ms = now;
        self.dirty_conflicts.insert(conflict_id);
        if action == ResolveAction::Retry {
            c.state = ConflictState::Resolved { action };
            let (xid, branch_id) = (c.xid, c.branch_id);
            self.retry_branch(xid, branch_id, now);
        } else {
            let command_id = self.next_command;
            self.next_command += 1;
            c.state = ConflictState::Resolving { action, command_id };
            let cmd = ConflictCommand {
                conflict_id,
                xid: c.xid,
                branch_id: c.branch_id,
                resource_id: c.resource_id.clone(),
                table: c.table.clone(),
                pk: c.pk.clone(),
                action,
                before: c.before.clone(),
                after: c.after.clone(),
                current: c.current.clone(),
            };
            self.effects.push(Effect::SendResolve {
                command_id,
                conflict: Box::new(cmd),
            });
        }
        Ok(Reply::Conflict(conflict_id))
    }

    fn resolve_result(&mut self, conflict_id: u64, command_id: u64, outcome: Outcome, now: u64) {
        let Some(c) = self.conflicts.get_mut(&conflict_id) else {
            return;
        };
        let ConflictState::Resolving {
            action,
            command_id: expected,
        } = c.state
        else {
            return;
        };
        if expected != command_id {
            return;
        }
        c.updated_ms = now;
        self.dirty_conflicts.insert(conflict_id);
        match outcome {
            Outcome::Done => {
                c.state = ConflictState::Resolved { action };
                c.last_error = None;
                let (xid, branch_id) = (c.xid, c.branch_id);
                let all_settled = self
                    .conflicts
                    .values()
                    .filter(|o| o.branch_id == branch_id)
                    .all(|o| {
                        !matches!(
                            o.state,
                            ConflictState::Open | ConflictState::Resolving { .. }
                        )
                    });
                if all_settled {
                    self.retry_branch(xid, branch_id, now);
                }
            }
            Outcome::DirtyWrite(rows) => {
                c.state = ConflictState::Open;
                if let Some(r) = rows.into_iter().next() {
                    c.current = r.current;
                }
                c.last_error = Some("the row changed again since it was shown; look again".into());
            }
            Outcome::Retryable(msg) => {
                c.state = ConflictState::Open;
                c.last_error = Some(msg);
            }
        }
    }

    /// Puts a conflicted branch back in the rollback queue (after an operator acted).
    fn retry_branch(&mut self, xid: XidNum, branch_id: BranchId, now: u64) {
        let Some(s) = self.sessions.get_mut(&xid) else {
            return;
        };
        if let Some(b) = s.branches.iter_mut().find(|b| b.id == branch_id) {
            if b.status == BranchStatus::Conflict {
                b.status = BranchStatus::PhaseOneDone;
                b.p2 = PhaseTwo::default();
            }
        }
        if s.status == Status::RollbackFailed {
            s.set_status(Status::RollbackRetrying, now);
        }
        s.updated_ms = now;
        self.dirty.insert(xid);
        self.drive(xid, now);
    }

    // ---- read side -------------------------------------------------------------------

    pub fn record(&self, xid: XidNum) -> Option<SessionRecord> {
        self.sessions
            .get(&xid)
            .map(|s| record_of(&self.locks, s, None))
    }

    pub fn records(&self, status: Option<Status>) -> Vec<SessionRecord> {
        self.sessions
            .values()
            .filter(|s| status.is_none_or(|st| s.status == st))
            .map(|s| record_of(&self.locks, s, None))
            .collect()
    }

    /// Held locks: (resource, key, holder xid, holder rolling back).
    pub fn held_locks(&self) -> Vec<(String, KeyParts, XidNum)> {
        self.locks
            .iter()
            .map(|(k, h)| {
                let (r, parts) = self.locks.expand(k);
                (r, parts, h.xid)
            })
            .collect()
    }

    /// Held locks with their holder branch and since when, ordered by holder xid and
    /// branch (for the console); at most `limit`, and the total.
    pub fn held_locks_detail(&self, limit: usize) -> (Vec<HeldLock>, usize) {
        let mut xids: Vec<&Session> = self.sessions.values().collect();
        xids.sort_unstable_by_key(|s| s.xid);
        let mut out = Vec::new();
        let mut total = 0;
        for s in xids {
            for b in s.branches.iter().filter(|b| b.locks_held) {
                total += b.keys.len();
                for k in &b.keys {
                    if out.len() >= limit {
                        break;
                    }
                    let (resource_id, key) = self.locks.expand(k);
                    out.push(HeldLock {
                        resource_id,
                        key,
                        xid: s.xid,
                        branch_id: b.id,
                        since_ms: b.registered_ms,
                        status: s.status,
                    });
                }
            }
        }
        (out, total)
    }

    /// Exact lookup of keys; entries held by `asking` are skipped.
    pub fn query_locks(
        &self,
        keys: &[(String, KeyParts)],
        asking: Option<XidNum>,
    ) -> Vec<(usize, XidNum, bool)> {
        let mut out = Vec::new();
        for (i, (r, k)) in keys.iter().enumerate() {
            if let Some(holder) = self
                .locks
                .lookup_key(r, k)
                .and_then(|ck| self.locks.holder(&ck))
            {
                if Some(holder) != asking {
                    let rb = self
                        .sessions
                        .get(&holder)
                        .is_some_and(|s| s.status.is_rolling_back());
                    out.push((i, holder, rb));
                }
            }
        }
        out
    }

    pub fn conflicts(&self) -> impl DoubleEndedIterator<Item = &Conflict> {
        self.conflicts.values()
    }

    pub fn conflict(&self, id: u64) -> Option<&Conflict> {
        self.conflicts.get(&id)
    }

    /// Tables holding global locks, per resource (write isolation).
    pub fn locked_tables(&self) -> HashMap<String, HashSet<String>> {
        self.locks.tables()
    }

    pub fn lock_count(&self) -> usize {
        self.locks.len()
    }

    pub fn lock_bytes(&self) -> usize {
        self.locks.approx_bytes()
    }

    /// Active sessions by status and their branch count, for /metrics.
    pub fn census(&self) -> ([u64; 10], u64) {
        let mut by = [0u64; 10];
        let mut branches = 0;
        for s in self.sessions.values() {
            by[Status::ALL.iter().position(|x| *x == s.status).unwrap_or(0)] += 1;
            branches += s.branches.len() as u64;
        }
        (by, branches)
    }
}

fn record_of(locks: &LockTable, s: &Session, finished_ms: Option<u64>) -> SessionRecord {
    SessionRecord {
        xid: s.xid,
        name: s.name.clone(),
        status: s.status,
        timed_out: s.timed_out,
        created_ms: s.created_ms,
        deadline_ms: s.deadline_ms,
        updated_ms: s.updated_ms,
        finished_ms,
        history: s.history.clone(),
        branches: s
            .branches
            .iter()
            .map(|b| BranchRecord {
                branch_id: b.id,
                resource_id: b.resource_id.clone(),
                status: b.status,
                request_id: b.request_id.clone(),
                lock_keys: b.keys.iter().map(|k| locks.expand(k).1).collect(),
                locks_held: b.locks_held,
                registered_ms: b.registered_ms,
                phase_two_attempts: b.sends,
                last_error: b.last_error.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests;
