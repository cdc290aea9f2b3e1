//! The read side: records for the API and the store, held locks, conflicts, the
//! audit log, and the census behind /metrics. Nothing here changes state.

use std::collections::{HashMap, HashSet};

use super::model::*;
use super::Engine;
use crate::locks::{LockTable, RowKey};

impl Engine {
    /// Status of an unfinished transaction (`None` once finished and handed to the store).
    pub fn status_of(&self, xid: XidNum) -> Option<GlobalStatus> {
        self.globals.get(&xid).map(|s| s.status)
    }

    /// Whether `xid` was ever begun here (it may have finished and left memory).
    pub fn issued(&self, xid: XidNum) -> bool {
        xid > 0 && xid < self.counters.next_xid
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

    /// No unfinished transaction: a tick would change nothing (time-outs and phase-two
    /// retries all belong to unfinished transactions), so none is logged.
    /// Nothing a tick at `now` would act on: no unfinished transaction, and no half
    /// message due (a check, a publish, leaving memory).
    pub fn is_idle(&self, now: u64) -> bool {
        self.globals.is_empty() && self.next_message_due().is_none_or(|due| due > now)
    }

    /// The id counters (for a cluster snapshot).
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Every audit entry kept in memory, oldest first (for a cluster snapshot).
    pub fn audit_all(&self) -> Vec<AuditEntry> {
        self.audit.iter().cloned().collect()
    }

    pub fn record(&self, xid: XidNum) -> Option<GlobalRecord> {
        self.globals
            .get(&xid)
            .map(|s| record_of(&self.locks, s, None))
    }

    pub fn records(&self, status: Option<GlobalStatus>) -> Vec<GlobalRecord> {
        self.globals
            .values()
            .filter(|s| status.is_none_or(|st| s.status == st))
            .map(|s| record_of(&self.locks, s, None))
            .collect()
    }

    /// Held locks with their holder branch and since when, ordered by holder xid and
    /// branch (for the console); at most `limit`, and the total.
    pub fn held_locks_detail(&self, limit: usize) -> (Vec<HeldLock>, usize) {
        let mut xids: Vec<&GlobalTx> = self.globals.values().collect();
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

    /// XA branches of unfinished transactions not yet committed or rolled back, oldest
    /// registration first (for the console's XA view).
    pub fn prepared_xa(&self) -> Vec<PreparedXa> {
        let mut out: Vec<PreparedXa> = self
            .globals
            .values()
            .flat_map(|s| {
                s.branches
                    .iter()
                    .filter(|b| {
                        b.xa && !matches!(
                            b.status,
                            BranchStatus::Committed | BranchStatus::RolledBack
                        )
                    })
                    .map(|b| PreparedXa {
                        xid: s.xid,
                        status: s.status,
                        branch_id: b.id,
                        branch_status: b.status,
                        resource_id: b.resource_id.clone(),
                        bqual: b.request_id.clone(),
                        registered_ms: b.registered_ms,
                    })
            })
            .collect();
        out.sort_by_key(|p| (p.registered_ms, p.xid, p.branch_id));
        out
    }

    /// Exact lookup of keys; entries held by `asking` are skipped.
    pub fn query_locks(
        &self,
        keys: &[(String, RowKey)],
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
                        .globals
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

    /// Unfinished transactions by status, their branch count and how many of those
    /// branches are stalled (waiting for an operator), for /metrics.
    pub fn census(&self) -> ([u64; 10], u64, u64) {
        let mut by = [0u64; 10];
        let (mut branches, mut stalled) = (0, 0);
        for s in self.globals.values() {
            by[GlobalStatus::ALL
                .iter()
                .position(|x| *x == s.status)
                .unwrap_or(0)] += 1;
            branches += s.branches.len() as u64;
            stalled += s
                .branches
                .iter()
                .filter(|b| b.status == BranchStatus::Stalled)
                .count() as u64;
        }
        (by, branches, stalled)
    }
}

pub(super) fn record_of(locks: &LockTable, s: &GlobalTx, finished_ms: Option<u64>) -> GlobalRecord {
    GlobalRecord {
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
                branch_type: if b.msg.is_some() {
                    BranchType::Msg
                } else if b.tcc.is_some() {
                    BranchType::Tcc
                } else if b.xa {
                    BranchType::Xa
                } else {
                    BranchType::At
                },
                tcc: b.tcc.as_deref().cloned(),
                owner: b.owner.clone(),
                message_id: b.msg.clone(),
            })
            .collect(),
    }
}
