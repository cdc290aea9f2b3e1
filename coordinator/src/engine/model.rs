//! What the engine knows: global transactions and their branches, conflicts, the audit
//! log, and the durable forms they are written in. Also the global status transition
//! table, [`TRANSITIONS`]: the only status changes the engine makes.

use serde::{Deserialize, Serialize};

use crate::locks::{InternedKey, RowKey};

/// A global transaction's number; its XID is `rewind_protocol::xid::format(n)`.
pub type XidNum = u64;
pub type BranchId = u64;

// `utoipa::ToSchema` on the enums the HTTP API shows: its OpenAPI description takes their
// values from these types (a derive, no I/O: the engine stays pure).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GlobalStatus {
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

impl GlobalStatus {
    pub const ALL: [GlobalStatus; 10] = [
        GlobalStatus::Begin,
        GlobalStatus::Committing,
        GlobalStatus::Committed,
        GlobalStatus::RollingBack,
        GlobalStatus::RolledBack,
        GlobalStatus::TimeoutRollingBack,
        GlobalStatus::TimeoutRolledBack,
        GlobalStatus::CommitRetrying,
        GlobalStatus::RollbackRetrying,
        GlobalStatus::RollbackFailed,
    ];

    pub fn is_final(self) -> bool {
        matches!(
            self,
            GlobalStatus::Committed | GlobalStatus::RolledBack | GlobalStatus::TimeoutRolledBack
        )
    }
    pub fn is_committing(self) -> bool {
        matches!(
            self,
            GlobalStatus::Committing | GlobalStatus::CommitRetrying | GlobalStatus::Committed
        )
    }
    /// Rollback decided (including stalled and finished rollbacks).
    pub fn is_rolling_back(self) -> bool {
        matches!(
            self,
            GlobalStatus::RollingBack
                | GlobalStatus::TimeoutRollingBack
                | GlobalStatus::RollbackRetrying
                | GlobalStatus::RollbackFailed
                | GlobalStatus::RolledBack
                | GlobalStatus::TimeoutRolledBack
        )
    }
    /// Where a waiting rollback request may answer: done, or stalled.
    pub fn rollback_settled(self) -> bool {
        matches!(
            self,
            GlobalStatus::RolledBack
                | GlobalStatus::TimeoutRolledBack
                | GlobalStatus::RollbackRetrying
                | GlobalStatus::RollbackFailed
        )
    }
    pub fn name(self) -> &'static str {
        self.to_proto().api_name()
    }
    pub fn parse(s: &str) -> Option<GlobalStatus> {
        GlobalStatus::ALL.into_iter().find(|st| st.name() == s)
    }
    pub fn to_proto(self) -> rewind_protocol::GlobalStatus {
        use rewind_protocol::GlobalStatus as G;
        match self {
            GlobalStatus::Begin => G::Begin,
            GlobalStatus::Committing => G::Committing,
            GlobalStatus::Committed => G::Committed,
            GlobalStatus::RollingBack => G::RollingBack,
            GlobalStatus::RolledBack => G::RolledBack,
            GlobalStatus::TimeoutRollingBack => G::TimeoutRollingBack,
            GlobalStatus::TimeoutRolledBack => G::TimeoutRolledBack,
            GlobalStatus::CommitRetrying => G::CommitRetrying,
            GlobalStatus::RollbackRetrying => G::RollbackRetrying,
            GlobalStatus::RollbackFailed => G::RollbackFailed,
        }
    }
}

/// Every global status change the engine makes, with its cause. Nothing else moves a
/// status: [`GlobalTx::set_status`] refuses (in debug builds) any pair not listed, and
/// the unit tests walk each path. Final statuses (`committed`, `rolled_back`,
/// `timeout_rolled_back`) have no way out; the transaction leaves memory there.
pub const TRANSITIONS: &[(GlobalStatus, GlobalStatus, &str)] = {
    use GlobalStatus::*;
    &[
        (
            Begin,
            Committing,
            "commit requested; every lock released at once",
        ),
        (Begin, RollingBack, "rollback requested"),
        (
            Begin,
            TimeoutRollingBack,
            "the deadline passed before a decision",
        ),
        (
            Committing,
            Committed,
            "every branch committed (or had failed phase one)",
        ),
        (
            Committing,
            CommitRetrying,
            "a branch's commit failed; retried with backoff",
        ),
        (CommitRetrying, Committed, "every branch committed"),
        (RollingBack, RolledBack, "every branch undone"),
        (
            RollingBack,
            RollbackRetrying,
            "a branch's undo failed; retried with backoff",
        ),
        (
            RollingBack,
            RollbackFailed,
            "dirty write: an operator must resolve it",
        ),
        (TimeoutRollingBack, TimeoutRolledBack, "every branch undone"),
        (
            TimeoutRollingBack,
            RollbackRetrying,
            "a branch's undo failed; retried with backoff",
        ),
        (
            TimeoutRollingBack,
            RollbackFailed,
            "dirty write: an operator must resolve it",
        ),
        (RollbackRetrying, RolledBack, "every branch undone"),
        (
            RollbackRetrying,
            TimeoutRolledBack,
            "every branch undone (the timeout began it)",
        ),
        (
            RollbackRetrying,
            RollbackFailed,
            "dirty write: an operator must resolve it",
        ),
        (
            RollbackFailed,
            RollbackFailed,
            "the branch's undo found a row dirty again",
        ),
        (
            RollbackFailed,
            RollbackRetrying,
            "an operator settled the branch's conflicts",
        ),
    ]
};

impl GlobalStatus {
    /// Whether [`TRANSITIONS`] allows `self → to`.
    pub fn may_become(self, to: GlobalStatus) -> bool {
        TRANSITIONS.iter().any(|(f, t, _)| *f == self && *t == to)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BranchStatus {
    Registered,
    PhaseOneDone,
    PhaseOneFailed,
    Committed,
    RolledBack,
    Conflict,
    /// A TCC branch whose phase-two call failed `tcc_max_attempts` times: nothing is sent
    /// until an operator retries it or marks it done.
    Stalled,
}

/// What kind of participant a branch is (`type` in the API).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BranchType {
    /// Phase two runs in a proxy: undo records, row images, global locks.
    #[default]
    At,
    /// Phase two is an HTTP call to the participant's Confirm or Cancel URL.
    Tcc,
    /// An XA transaction prepared in a proxy's database: phase two is `XA COMMIT` /
    /// `XA ROLLBACK` there. No images, no global locks.
    Xa,
    /// A half message sent when the transaction commits and dropped when it rolls back
    /// (phase two runs in the engine itself). `message` in the API, as DESIGN.md names it.
    #[serde(rename = "message")]
    Msg,
}

/// What phase two of a TCC branch calls: `confirm_url` on global commit, `cancel_url`
/// on rollback, each with `{"xid", "branch_id", "action", "payload"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TccCall {
    pub confirm_url: String,
    pub cancel_url: String,
    /// JSON text, passed on as it was given (absent: `null`).
    #[serde(default)]
    pub payload: Option<String>,
}

/// An operator's action on a TCC branch that keeps failing (or any unfinished one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BranchAction {
    /// Call the participant again now (the attempt count starts over).
    Retry,
    /// The participant's phase two is known done (by other means): stop calling it.
    MarkDone,
}

/// Phase-two scheduling of one branch. Volatile on purpose: after a restart every
/// unfinished branch is simply sent again (phase-two commands are idempotent).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Delivery {
    /// Failed attempts so far (drives the backoff).
    pub(super) attempts: u32,
    /// Command in flight and when to give up waiting for its answer.
    pub(super) in_flight: Option<(u64, u64)>,
    /// Earliest time of the next attempt.
    pub(super) next_at: u64,
}

#[derive(Clone, Debug)]
pub(super) struct BranchEntry {
    pub(super) id: BranchId,
    /// For a TCC branch, its name (or the Confirm URL's host when it has none).
    pub(super) resource_id: String,
    /// A TCC branch's calls (`None`: an AT or XA branch).
    pub(super) tcc: Option<Box<TccCall>>,
    /// An XA branch: its XA branch qualifier is `request_id`.
    pub(super) xa: bool,
    /// A message branch: its message's id.
    pub(super) msg: Option<String>,
    /// The proxy that registered the branch (its Announce id); empty when unknown.
    pub(super) owner: String,
    pub(super) status: BranchStatus,
    pub(super) request_id: String,
    pub(super) keys: Vec<InternedKey>,
    /// Whether `keys` are currently in the lock table.
    pub(super) locks_held: bool,
    /// When the branch registered (and took its locks).
    pub(super) registered_ms: u64,
    /// Phase-two commands sent for this branch, over its whole life (for operators;
    /// `p2.attempts` is the volatile backoff counter).
    pub(super) sends: u32,
    /// The last phase-two failure the proxy reported (or the lack of an answer).
    pub(super) last_error: Option<String>,
    pub(super) delivery: Delivery,
}

#[derive(Clone, Debug)]
pub(super) struct GlobalTx {
    pub(super) xid: XidNum,
    pub(super) name: String,
    pub(super) status: GlobalStatus,
    /// Set when the rollback was caused by the timeout (decides the final status).
    pub(super) timed_out: bool,
    pub(super) created_ms: u64,
    pub(super) deadline_ms: u64,
    pub(super) updated_ms: u64,
    /// Status changes, oldest first (bounded, see [`GlobalTx::set_status`]).
    pub(super) history: Vec<StatusChange>,
    /// Ordered by id, which is the registration sequence.
    pub(super) branches: Vec<BranchEntry>,
}

/// How many status changes a transaction keeps: the first (its begin) and the latest
/// others. A conflict resolved and found dirty again many times flips between
/// `rollback_failed` and `rollback_retrying`; the record must stay small.
const HISTORY_LIMIT: usize = 32;

impl GlobalTx {
    pub(super) fn set_status(&mut self, status: GlobalStatus, now: u64) {
        debug_assert!(
            self.status.may_become(status),
            "status change {:?} -> {:?} is not in TRANSITIONS",
            self.status,
            status
        );
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
    pub key: RowKey,
    pub xid: XidNum,
    pub branch_id: BranchId,
    pub since_ms: u64,
    pub status: GlobalStatus,
}

/// An XA branch of an unfinished transaction whose phase two has not finished: its XA
/// transaction is (or is about to be) prepared in the resource's database, holding its
/// row locks there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedXa {
    pub xid: XidNum,
    /// The global transaction's status.
    pub status: GlobalStatus,
    pub branch_id: BranchId,
    pub branch_status: BranchStatus,
    pub resource_id: String,
    /// The XA branch qualifier (the branch's request id).
    pub bqual: String,
    pub registered_ms: u64,
}

/// One entry of a global transaction's timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    pub status: GlobalStatus,
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

/// The durable (and API) form of a global transaction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GlobalRecord {
    pub xid: XidNum,
    pub name: String,
    pub status: GlobalStatus,
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
    pub lock_keys: Vec<RowKey>,
    pub locks_held: bool,
    #[serde(default)]
    pub registered_ms: u64,
    /// Phase-two commands sent so far.
    #[serde(default)]
    pub phase_two_attempts: u32,
    #[serde(default)]
    pub last_error: Option<String>,
    /// Absent in records written before TCC existed: those are AT branches.
    #[serde(default)]
    pub branch_type: BranchType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcc: Option<TccCall>,
    /// The proxy that registered the branch (XA), empty when unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    /// A message branch's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResolveAction {
    RestoreBefore,
    KeepCurrent,
    Retry,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
pub enum ProxyAnswer {
    Done,
    DirtyWrite(Vec<DirtyRow>),
    Retryable(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Commit,
    Rollback,
}

/// Things to do outside the state machine, after the batch is durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    SendBranch {
        command_id: u64,
        xid: XidNum,
        branch_id: BranchId,
        resource_id: String,
        action: Decision,
        /// A TCC branch: call the participant instead of a proxy.
        tcc: Option<Box<TccCall>>,
        /// An XA branch: where it is prepared.
        xa: Option<XaTarget>,
    },
    SendResolve {
        command_id: u64,
        conflict: Box<ConflictCommand>,
    },
    /// Ask a proxy of `resource_id` whether the message's local transaction committed.
    CheckMessage {
        command_id: u64,
        message_id: String,
        resource_id: String,
    },
    /// Publish a confirmed message to the broker.
    PublishMessage {
        command_id: u64,
        message: Box<super::messages::MessageRecord>,
    },
}

/// Where an XA branch's phase two goes: the XA branch qualifier, and the proxy that
/// prepared it (preferred while attached: it holds the prepared transaction).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XaTarget {
    pub bqual: String,
    pub owner: String,
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
    /// Half messages changed (or gone from memory), and consumed reports for messages
    /// the store alone has (see [`super::messages`]).
    pub messages: Vec<super::messages::MessageWrite>,
    pub consumed: Vec<super::messages::ConsumedItem>,
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

impl Counters {
    /// A single node reopening its data: XIDs issued by begins lost with the log's
    /// unsynced tail (fewer than [`super::BEGINS_WITHOUT_SYNC`] past the recovered
    /// counter) are never issued again.
    pub fn after_restart(&mut self) {
        self.next_xid = self.next_xid.saturating_add(super::BEGINS_WITHOUT_SYNC);
    }
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub default_timeout_ms: u64,
    pub max_timeout_ms: u64,
    pub backoff_base_ms: u64,
    pub backoff_cap_ms: u64,
    /// How long to wait for a proxy's answer to a phase-two command before resending.
    pub command_timeout_ms: u64,
    /// Failed Confirm / Cancel calls after which a TCC branch waits for an operator
    /// (0: retried for ever).
    pub tcc_max_attempts: u32,
    /// A half message still prepared this long after it was created is checked back.
    pub msg_check_after_ms: u64,
    /// Check-backs that decide nothing before a message is `undecided` (0: never).
    pub msg_max_checks: u32,
    /// Cap on the wait between check-backs.
    pub msg_check_cap_ms: u64,
    /// Failed publishes after which a message is `dead` (0: retried for ever).
    pub msg_max_publish_attempts: u32,
}

/// Events worth counting, drained by the sequencer for /metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub phase_two_retries: u64,
    pub branches_registered: u64,
    pub lock_conflicts: u64,
    pub finished: [u64; 10],
}
