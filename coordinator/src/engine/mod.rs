//! The global-transaction state machine. Pure: [`Engine::apply`] takes a [`Command`]
//! and the current time as a value, changes in-memory state, and leaves behind
//! [`Effect`]s (phase-two commands to send) and [`Writes`] (records to make durable).
//! No I/O, no clock, no randomness: the sequencer feeds it, tests drive it with explicit
//! time, and the Raft log replicates the same commands.
//!
//! Only unfinished transactions live here. A transaction that reaches a final status
//! (`committed`, `rolled_back`, `timeout_rolled_back`) leaves memory as a
//! [`GlobalRecord`] for the store, which keeps it for the retention period.
//!
//! # Layout
//! - [`model`]: what the engine knows, the durable forms, and the status transition
//!   table ([`TRANSITIONS`]).
//! - [`commands`]: the inputs, their typed answers, and the handlers that decide
//!   begin / register / report / commit / rollback.
//! - [`drive`]: phase two over time: sending due branch commands, proxies' answers,
//!   retries with backoff, timeouts.
//! - [`conflicts`]: dirty-write conflicts and an operator's resolution of them.
//! - [`queries`]: the read side (records, locks, conflicts, audit, census).
//! - this file: the [`Engine`] itself, restore from records, and [`Engine::apply_batches`],
//!   the one batch path the sequencer and the Raft state machine share.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::error::CoordinatorError;
use crate::locks::{InternedKey, LockTable};

pub mod commands;
mod conflicts;
mod drive;
pub mod messages;
pub mod model;
mod queries;

#[cfg(test)]
use crate::locks::RowKey;
pub use commands::*;
#[cfg(test)]
use drive::backoff;
pub use messages::{
    BindMessage, CheckOutcome, ConsumedItem, DecideMessage, MessageChecked, MessagePublished,
    MessageRecord, MessageStatus, MessageWrite, MessagesConsumed, PrepareMessage, PublishOutcome,
    RedriveMessage,
};
pub use model::*;
use queries::record_of;

/// One group-committed batch: commands applied in order at one clock reading. In a
/// cluster it is one Raft log entry, stored as JSON: its shape is a storage format.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Batch {
    pub now_ms: u64,
    /// Cluster mode: the XID base a state machine that issued no XID yet adopts (see
    /// [`Engine::seed_xid_base`]); 0 on a single node (ignored).
    pub xid_base: u64,
    pub commands: Vec<Command>,
}

/// What applying batches leaves to do outside the engine, in this order: make `writes`
/// durable, then answer `results` and send `effects`.
pub struct BatchOutput {
    /// Per batch (an empty list for a log entry without commands), in command order.
    pub results: Vec<Vec<Result<Reply, CoordinatorError>>>,
    pub writes: Writes,
    pub effects: Vec<Effect>,
    pub stats: Stats,
    /// Commands applied, for /metrics.
    pub requests: usize,
}

pub struct Engine {
    cfg: EngineConfig,
    globals: HashMap<XidNum, GlobalTx>,
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
    messages: messages::Messages,
}

/// The first XID number of a new coordinator data directory: uniform below 2^52 (so
/// it stays exact in JavaScript numbers), leaving 2^40 numbers of room above it. Two
/// directories' ranges overlap only if their bases fall within the numbers they use.
pub fn random_xid_base() -> u64 {
    1 + rand::random::<u64>() % ((1u64 << 52) - (1u64 << 40))
}

pub(super) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialize")
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Engine {
        Engine {
            cfg,
            globals: HashMap::new(),
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
            messages: messages::Messages::default(),
        }
    }

    /// Rebuilds the state from durable records; locks are re-derived from branches.
    pub fn restore(
        cfg: EngineConfig,
        counters: Counters,
        active: Vec<GlobalRecord>,
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
                let keys: Vec<InternedKey> = b
                    .lock_keys
                    .iter()
                    .map(|k| e.locks.compact(&b.resource_id, k))
                    .collect();
                if b.locks_held {
                    e.locks.restore(rec.xid, &keys);
                }
                e.counters.next_branch = e.counters.next_branch.max(b.branch_id + 1);
                branches.push(BranchEntry {
                    id: b.branch_id,
                    resource_id: b.resource_id,
                    tcc: b.tcc.map(Box::new),
                    xa: b.branch_type == BranchType::Xa,
                    msg: b.message_id,
                    owner: b.owner,
                    status: b.status,
                    request_id: b.request_id,
                    keys,
                    locks_held: b.locks_held,
                    registered_ms: b.registered_ms,
                    sends: b.phase_two_attempts,
                    last_error: b.last_error,
                    delivery: Delivery::default(),
                });
            }
            branches.sort_by_key(|b| b.id);
            e.counters.next_xid = e.counters.next_xid.max(rec.xid + 1);
            e.globals.insert(
                rec.xid,
                GlobalTx {
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

    /// Cluster mode: a state machine that has issued no XID yet takes its XID base
    /// from the log (the leader's random pick), so every node issues the same XIDs.
    pub fn seed_xid_base(&mut self, base: u64) {
        if self.counters.next_xid <= 1 && self.globals.is_empty() && base > 1 {
            self.counters.next_xid = base;
            self.counters_dirty = true;
        }
    }

    /// The one batch-apply path, shared by the single-node sequencer and the Raft state
    /// machine: applies each batch in order (`None`: a log entry carrying no commands)
    /// and drains everything they changed.
    pub fn apply_batches(
        &mut self,
        batches: impl IntoIterator<Item = Option<Batch>>,
    ) -> BatchOutput {
        let mut requests = 0;
        let results = batches
            .into_iter()
            .map(|b| match b {
                None => Vec::new(),
                Some(b) => {
                    self.seed_xid_base(b.xid_base);
                    requests += b.commands.len();
                    b.commands
                        .into_iter()
                        .map(|c| self.apply(c, b.now_ms))
                        .collect()
                }
            })
            .collect();
        BatchOutput {
            results,
            writes: self.take_writes(),
            effects: self.take_effects(),
            stats: self.take_stats(),
            requests,
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
            if let Some(s) = self.globals.get(&xid) {
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
        self.take_message_writes(&mut w);
        if std::mem::take(&mut self.counters_dirty) {
            w.counters = Some(self.counters);
        }
        w
    }
}

#[cfg(test)]
mod tests;
