//! Undo housekeeping: markers and the records of finished global transactions are deleted
//! after their retention; a normal record of an unfinished one never is.

use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::Pool;
use rewind_protocol::GlobalStatus;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::at::undo_table::STATUS_MARKER;
use crate::coordinator::CallError;
use crate::Shared;

/// Deletes undo records nobody needs any more: every `undo_housekeeping_secs`, records
/// older than `undo_retention_secs` are looked up in the coordinator. Deleted: any record
/// of a committed transaction (its phase-two delete was lost, or its phase one committed
/// after the global commit), and markers of finished or forgotten transactions. A normal
/// record of a transaction that is not committed is never deleted: it is the only way
/// back to the data's previous state. A marker must outlive any phase one that could
/// still try to write its record: the retention bounds that (phase one gives up when it
/// stalled half as long, see `phase_one::commit`).
pub(crate) async fn housekeeping(shared: Arc<Shared>, pool: Pool, shutdown: CancellationToken) {
    let every = Duration::from_secs(shared.config.undo_housekeeping_secs);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
        match sweep(&shared, &pool).await {
            Ok((0, 0)) => {}
            Ok((deleted, kept)) => info!(deleted, kept, "undo housekeeping"),
            Err(e) => debug!(error = %e, "undo housekeeping skipped"),
        }
    }
}

/// One housekeeping pass over old records: how many were deleted and how many kept.
pub async fn sweep(shared: &Shared, pool: &Pool) -> Result<(usize, usize), String> {
    let mut conn = pool.get_conn().await.map_err(|e| e.to_string())?;
    let old: Vec<(String, u64, i32)> = conn
        .exec(
            shared.undo.older_than(),
            (shared.config.undo_retention_secs, 1000u32),
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut deleted = 0;
    let examined = old.len();
    for (xid, branch_id, status) in old {
        let fate = shared.coordinator.status(&xid).await;
        let delete = match (&fate, status) {
            (Ok(GlobalStatus::Committed), _) => true,
            (Ok(GlobalStatus::RolledBack | GlobalStatus::TimeoutRolledBack), STATUS_MARKER) => true,
            (Err(CallError::NotFound(_)), STATUS_MARKER) => true,
            (Err(CallError::Unavailable(e)), _) => return Err(e.clone()),
            (
                Ok(GlobalStatus::RolledBack | GlobalStatus::TimeoutRolledBack)
                | Err(CallError::NotFound(_)),
                _,
            ) => {
                warn!(%xid, branch_id, "undo record of a transaction that is rolled back or unknown to the coordinator; kept for an operator");
                false
            }
            _ => false,
        };
        if delete {
            conn.exec_drop(
                shared.undo.delete_with_status(),
                (xid.as_str(), branch_id, status),
            )
            .await
            .map_err(|e| e.to_string())?;
            deleted += conn.affected_rows() as usize;
        }
    }
    Ok((deleted, examined - deleted))
}
