//! Phase two over time: which branch commands are due, what the proxies answered,
//! retries with backoff, lost answers and timeouts. Rollback undoes one branch at a
//! time, newest first; commit sends to every branch at once.

use super::model::*;
use super::queries::record_of;
use super::{encode, Engine};

pub(super) fn backoff(cfg: &EngineConfig, seed: u64, attempts: u32) -> u64 {
    backoff_between(cfg.backoff_base_ms, cfg.backoff_cap_ms, seed, attempts)
}

/// `base` doubled per attempt after the first, capped at `cap`, with deterministic jitter
/// in [exp/2, exp] so retries of many branches or messages spread out without the state
/// machine owning a random source.
pub(super) fn backoff_between(base: u64, cap: u64, seed: u64, attempts: u32) -> u64 {
    let exp = base
        .saturating_mul(1u64 << attempts.saturating_sub(1).min(20))
        .min(cap);
    let mut x = seed ^ (attempts as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    let half = exp / 2;
    half + if half == 0 { 0 } else { x % (half + 1) }
}

/// `b`'s phase-two command when one is due (none in flight, its backoff over): marked in
/// flight under a new command id.
fn due_send(
    next_command: &mut u64,
    cfg: &EngineConfig,
    xid: XidNum,
    b: &mut BranchEntry,
    action: Decision,
    now: u64,
) -> Option<Effect> {
    if b.delivery.in_flight.is_some() || b.delivery.next_at > now {
        return None;
    }
    let command_id = *next_command;
    *next_command += 1;
    b.delivery.in_flight = Some((command_id, now + cfg.command_timeout_ms));
    b.sends = b.sends.saturating_add(1);
    Some(Effect::SendBranch {
        command_id,
        xid,
        branch_id: b.id,
        resource_id: b.resource_id.clone(),
        action,
        tcc: b.tcc.clone(),
        xa: b.xa.then(|| XaTarget {
            bqual: b.request_id.clone(),
            owner: b.owner.clone(),
        }),
    })
}

impl Engine {
    /// Sends whatever phase-two work is due for `xid`, and finishes it when all is done.
    pub(super) fn drive(&mut self, xid: XidNum, now: u64) {
        let Some(s) = self.globals.get_mut(&xid) else {
            return;
        };
        let mut sends = Vec::new();
        let mut messages: Vec<(String, bool)> = Vec::new();
        let mut final_status = None;
        match s.status {
            GlobalStatus::Committing | GlobalStatus::CommitRetrying => {
                let mut pending = false;
                for b in s.branches.iter_mut() {
                    if matches!(
                        b.status,
                        BranchStatus::Committed | BranchStatus::PhaseOneFailed
                    ) {
                        continue;
                    }
                    if let Some(id) = &b.msg {
                        // A message branch: confirmed here, published by the engine.
                        messages.push((id.clone(), true));
                        b.status = BranchStatus::Committed;
                        s.updated_ms = now;
                        self.dirty.insert(xid);
                        continue;
                    }
                    pending = true;
                    if b.status != BranchStatus::Stalled {
                        sends.extend(due_send(
                            &mut self.next_command,
                            &self.cfg,
                            xid,
                            b,
                            Decision::Commit,
                            now,
                        ));
                    }
                }
                if !pending {
                    final_status = Some(GlobalStatus::Committed);
                }
            }
            GlobalStatus::RollingBack
            | GlobalStatus::TimeoutRollingBack
            | GlobalStatus::RollbackRetrying => {
                // Strictly one branch at a time, newest registration first; message
                // branches are dropped in the engine on the way.
                while let Some(b) = s
                    .branches
                    .iter_mut()
                    .rev()
                    .find(|b| b.status != BranchStatus::RolledBack && b.msg.is_some())
                {
                    messages.push((b.msg.clone().expect("message branch"), false));
                    b.status = BranchStatus::RolledBack;
                    s.updated_ms = now;
                    self.dirty.insert(xid);
                }
                match s
                    .branches
                    .iter_mut()
                    .rev()
                    .find(|b| b.status != BranchStatus::RolledBack)
                {
                    None => {
                        final_status = Some(if s.timed_out {
                            GlobalStatus::TimeoutRolledBack
                        } else {
                            GlobalStatus::RolledBack
                        })
                    }
                    Some(b) if b.status == BranchStatus::Conflict => {
                        s.set_status(GlobalStatus::RollbackFailed, now);
                        self.dirty.insert(xid);
                    }
                    // A TCC branch whose Cancel keeps failing waits for an operator; the
                    // older branches wait behind it (reverse order holds).
                    Some(b) if b.status == BranchStatus::Stalled => {}
                    Some(b) => sends.extend(due_send(
                        &mut self.next_command,
                        &self.cfg,
                        xid,
                        b,
                        Decision::Rollback,
                        now,
                    )),
                }
            }
            _ => {}
        }
        self.effects.extend(sends);
        for (id, commit) in messages {
            self.finish_message_branch(&id, commit, xid, now);
        }
        if let Some(st) = final_status {
            let mut s = self.globals.remove(&xid).expect("present");
            s.set_status(st, now);
            for b in s.branches.iter_mut() {
                if b.locks_held {
                    self.locks.release_all(xid, &b.keys);
                    b.locks_held = false;
                }
            }
            self.dirty.remove(&xid);
            self.stats.finished[GlobalStatus::ALL.iter().position(|x| *x == st).unwrap_or(0)] += 1;
            let rec = record_of(&self.locks, &s, Some(now));
            self.finished.push((xid, now, encode(&rec)));
        }
    }

    pub(super) fn branch_result(
        &mut self,
        xid: XidNum,
        branch_id: BranchId,
        command_id: u64,
        outcome: ProxyAnswer,
        now: u64,
    ) {
        let Some(s) = self.globals.get_mut(&xid) else {
            return;
        };
        let Some(b) = s.branches.iter_mut().find(|b| b.id == branch_id) else {
            return;
        };
        let current = b.delivery.in_flight.map(|(c, _)| c);
        match outcome {
            ProxyAnswer::Done => {
                b.delivery = Delivery::default();
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
            ProxyAnswer::DirtyWrite(rows) => {
                if current != Some(command_id) || !s.status.is_rolling_back() {
                    return;
                }
                b.delivery = Delivery::default();
                b.status = BranchStatus::Conflict;
                b.last_error = Some(format!(
                    "dirty write: {} row(s) changed by someone else since the branch wrote them",
                    rows.len()
                ));
                let resource_id = b.resource_id.clone();
                s.set_status(GlobalStatus::RollbackFailed, now);
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
            ProxyAnswer::Retryable(msg) => {
                if current != Some(command_id) {
                    return;
                }
                self.stats.phase_two_retries += 1;
                b.delivery.attempts += 1;
                b.delivery.in_flight = None;
                b.delivery.next_at = now + backoff(&self.cfg, branch_id, b.delivery.attempts);
                let max = self.cfg.tcc_max_attempts;
                if b.tcc.is_some() && max > 0 && b.delivery.attempts >= max {
                    b.status = BranchStatus::Stalled;
                    tracing::warn!(xid, branch_id, attempts = b.delivery.attempts, %msg, "TCC phase two keeps failing; waiting for an operator");
                } else {
                    tracing::info!(xid, branch_id, attempts = b.delivery.attempts, %msg, "phase two will be retried");
                }
                b.last_error = Some(msg);
                self.dirty.insert(xid);
                let retrying = match s.status {
                    GlobalStatus::Committing => Some(GlobalStatus::CommitRetrying),
                    GlobalStatus::RollingBack | GlobalStatus::TimeoutRollingBack => {
                        Some(GlobalStatus::RollbackRetrying)
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

    pub(super) fn tick(&mut self, now: u64) {
        self.tick_messages(now);
        let mut due = Vec::new();
        for s in self.globals.values_mut() {
            match s.status {
                GlobalStatus::Begin if now >= s.deadline_ms => {
                    s.set_status(GlobalStatus::TimeoutRollingBack, now);
                    s.timed_out = true;
                    self.dirty.insert(s.xid);
                    tracing::info!(xid = s.xid, "global transaction timed out; rolling back");
                    due.push((s.xid, None));
                }
                GlobalStatus::Begin | GlobalStatus::RollbackFailed => {}
                _ => {
                    for b in s
                        .branches
                        .iter()
                        .filter(|b| b.status != BranchStatus::Stalled)
                    {
                        match b.delivery.in_flight {
                            Some((cmd, deadline)) if now >= deadline => {
                                due.push((s.xid, Some((b.id, cmd))))
                            }
                            None if b.delivery.next_at <= now => due.push((s.xid, None)),
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
                    ProxyAnswer::Retryable("no answer from the proxy in time".into()),
                    now,
                ),
                None => self.drive(xid, now),
            }
        }
    }

    /// Puts a conflicted branch back in the rollback queue (after an operator acted).
    pub(super) fn retry_branch(&mut self, xid: XidNum, branch_id: BranchId, now: u64) {
        let Some(s) = self.globals.get_mut(&xid) else {
            return;
        };
        if let Some(b) = s.branches.iter_mut().find(|b| b.id == branch_id) {
            if b.status == BranchStatus::Conflict {
                b.status = BranchStatus::PhaseOneDone;
                b.delivery = Delivery::default();
            }
        }
        if s.status == GlobalStatus::RollbackFailed {
            s.set_status(GlobalStatus::RollbackRetrying, now);
        }
        s.updated_ms = now;
        self.dirty.insert(xid);
        self.drive(xid, now);
    }
}
