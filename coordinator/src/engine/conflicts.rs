//! Dirty-write conflicts: an operator's resolution is sent to a proxy, and once every
//! conflict of a branch is settled the branch's rollback is retried.

use super::model::*;
use super::Engine;
use crate::error::CoordinatorError;

impl Engine {
    pub(super) fn resolve(
        &mut self,
        conflict_id: u64,
        action: ResolveAction,
        now: u64,
    ) -> Result<u64, CoordinatorError> {
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
        Ok(conflict_id)
    }

    pub(super) fn resolve_result(
        &mut self,
        conflict_id: u64,
        command_id: u64,
        outcome: ProxyAnswer,
        now: u64,
    ) {
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
            ProxyAnswer::Done => {
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
            ProxyAnswer::DirtyWrite(rows) => {
                c.state = ConflictState::Open;
                if let Some(r) = rows.into_iter().next() {
                    c.current = r.current;
                }
                c.last_error = Some("the row changed again since it was shown; look again".into());
            }
            ProxyAnswer::Retryable(msg) => {
                c.state = ConflictState::Open;
                c.last_error = Some(msg);
            }
        }
    }
}
