//! Phase two of XA branches, and recovery of prepared branches nobody registered.
//!
//! `XA COMMIT` / `XA ROLLBACK` runs on the branch's pinned connection when this proxy
//! prepared it and still holds it, else on any connection (after a proxy restart the
//! prepared transaction is detached, and any session may finish it). An `XAER_NOTA`
//! answer is checked, never assumed: the proof row says whether the branch committed, and
//! `XA RECOVER` whether it is still prepared (then another session holds it: retried).
//!
//! Recovery: every `xa_recovery_secs`, the prepared transactions of Rewind's formatID in
//! `XA RECOVER` that this proxy does not hold are matched against the coordinator. A
//! branch it registered is left to the coordinator's phase two (or, if that already
//! finished, given the same outcome); a branch it never registered is rolled back once
//! its global transaction can take no more branches (its client never got an OK). A
//! branch of a global transaction the coordinator does not know at all is left alone:
//! another deployment's coordinator may own it. MariaDB
//! refuses to finish a branch whose preparing session is still connected, so a branch
//! another proxy is still registering is never touched.

use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};
use rewind_protocol::GlobalStatus;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::XaId;
use crate::at::rollback::UndoOutcome;
use crate::coordinator::CallError;
use crate::Shared;

const XAER_NOTA: u16 = 1397;

/// Commits (`commit`) or rolls back branch (`xid`, `bqual`) for the coordinator.
pub async fn finish(
    shared: &Shared,
    pool: &Pool,
    xid: &str,
    bqual: &str,
    commit: bool,
) -> UndoOutcome {
    let id = XaId {
        xid: xid.to_string(),
        bqual: bqual.to_string(),
    };
    let verb = if commit { "COMMIT" } else { "ROLLBACK" };
    crate::failpoint::hit("xa-before-phase-two").await;
    if let Some(mut conn) = shared.xa_pinned.take(bqual) {
        match conn.query_drop(id.statement(verb)).await {
            // Finished: the connection holds nothing any more and goes back to the client
            // pool, whose reset clears the session it carried (a new connection per XA
            // branch cost a connect and a login each).
            Ok(()) => return UndoOutcome::Done,
            Err(e) => {
                // Closing the connection detaches the branch: any connection finishes it.
                super::discard(conn).await;
                debug!(%xid, %bqual, error = %e, "XA {verb} on the pinned connection failed");
            }
        }
    }
    let mut conn = match pool.get_conn().await {
        Ok(c) => c,
        Err(e) => return UndoOutcome::Failure(format!("no backend connection for XA {verb}: {e}")),
    };
    // A connection just closed may still count as the branch's session for a moment.
    for attempt in 0..4 {
        match conn.query_drop(id.statement(verb)).await {
            Ok(()) => return UndoOutcome::Done,
            Err(mysql_async::Error::Server(e)) if e.code == XAER_NOTA => {}
            Err(e) => return UndoOutcome::Failure(format!("XA {verb}: {e}")),
        }
        match verify(shared, &mut conn, &id, commit).await {
            Verdict::Held if attempt < 3 => {
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
            v => return v.outcome(&id, commit),
        }
    }
    unreachable!("the last attempt returns")
}

enum Verdict {
    /// Still prepared, held by a session that is connected.
    Held,
    /// The outcome the decision asked for is there.
    Done,
    /// The other outcome is there, or the branch never prepared.
    Contrary {
        committed: bool,
    },
    Failed(String),
}

impl Verdict {
    fn outcome(self, id: &XaId, commit: bool) -> UndoOutcome {
        match self {
            Verdict::Done => UndoOutcome::Done,
            Verdict::Held => UndoOutcome::Failure(format!(
                "XA branch ('{}','{}') is prepared but held by a session that is still \
                 connected (another proxy's?); retried",
                id.xid, id.bqual
            )),
            Verdict::Failed(why) => UndoOutcome::Failure(why),
            Verdict::Contrary { committed: true } => UndoOutcome::Failure(format!(
                "XA branch ('{}','{}') was committed although its global transaction rolled \
                 back (finished outside Rewind?): check its data",
                id.xid, id.bqual
            )),
            Verdict::Contrary { committed: false } => {
                debug_assert!(commit);
                UndoOutcome::Failure(format!(
                    "XA branch ('{}','{}') is neither prepared nor committed: it was rolled \
                     back outside Rewind, so the global commit cannot be completed for it: \
                     check its data",
                    id.xid, id.bqual
                ))
            }
        }
    }
}

/// After `XAER_NOTA`: what became of the branch, by its proof row and `XA RECOVER`.
async fn verify(shared: &Shared, conn: &mut Conn, id: &XaId, commit: bool) -> Verdict {
    let prepared = match recover(conn).await {
        Ok(ids) => ids.contains(id),
        Err(e) => return Verdict::Failed(format!("XA RECOVER: {e}")),
    };
    if prepared {
        return Verdict::Held;
    }
    let proof: Result<Option<i64>, _> = conn
        .exec_first(
            shared.xa_proof.select(),
            (id.xid.as_bytes(), id.bqual.as_bytes()),
        )
        .await;
    match proof {
        Err(e) => Verdict::Failed(format!("reading the XA branch's proof row: {e}")),
        Ok(found) if found.is_some() == commit => Verdict::Done,
        Ok(found) => Verdict::Contrary {
            committed: found.is_some(),
        },
    }
}

/// Rewind's prepared XA transactions in the backend.
pub async fn recover(conn: &mut Conn) -> Result<Vec<XaId>, mysql_async::Error> {
    let rows: Vec<(i64, i64, i64, Vec<u8>)> = conn.query("XA RECOVER").await?;
    Ok(rows
        .into_iter()
        .filter_map(|(format, gtrid_len, _, data)| {
            XaId::of_recover_row(format, usize::try_from(gtrid_len).ok()?, &data)
        })
        .collect())
}

/// Every `xa_recovery_secs` until `shutdown`: one recovery pass.
pub async fn recovery_loop(shared: Arc<Shared>, pool: Pool, shutdown: CancellationToken) {
    let every = Duration::from_secs(shared.config.xa_recovery_secs);
    let mut first = true;
    loop {
        let wait = if first { Duration::from_secs(1) } else { every };
        first = false;
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
        match recover_once(&shared, &pool).await {
            Ok(0) => {}
            Ok(n) => info!(
                branches = n,
                "prepared XA branches nobody registered were rolled back"
            ),
            Err(e) => debug!(error = %e, "XA recovery pass failed; retried later"),
        }
    }
}

/// One pass; returns how many branches it finished.
pub async fn recover_once(shared: &Shared, pool: &Pool) -> Result<usize, String> {
    let mut conn = pool.get_conn().await.map_err(|e| e.to_string())?;
    let ids = recover(&mut conn).await.map_err(|e| e.to_string())?;
    let mut finished = 0;
    for id in ids {
        if shared.xa_pinned.holds(&id.bqual) {
            continue;
        }
        let commit = match shared.coordinator.xa_branch_state(&id.xid, &id.bqual).await {
            // Another deployment's branch (several coordinators may share a database
            // server), or one whose transaction was forgotten long ago: never touched.
            Ok(s) if !s.global_found => {
                debug!(xid = %id.xid, bqual = %id.bqual, "prepared XA branch of a transaction this coordinator does not know; left alone");
                continue;
            }
            Ok(s) => {
                let status = GlobalStatus::try_from(s.status).unwrap_or(GlobalStatus::Unspecified);
                let committing = matches!(
                    status,
                    GlobalStatus::Committing
                        | GlobalStatus::Committed
                        | GlobalStatus::CommitRetrying
                );
                if s.branch_id != 0 && !s.branch_finished {
                    // Registered and unfinished: the coordinator's phase two finishes it.
                    continue;
                }
                if s.branch_id == 0 && status == GlobalStatus::Begin {
                    // Its proxy may still be registering it.
                    continue;
                }
                // Registered and finished (yet still prepared here), or never registered.
                s.branch_id != 0 && committing
            }
            Err(CallError::NotFound(_) | CallError::Invalid(_)) => continue,
            Err(e) => return Err(e.to_string()),
        };
        let verb = if commit { "COMMIT" } else { "ROLLBACK" };
        match conn.query_drop(id.statement(verb)).await {
            Ok(()) => {
                if commit {
                    info!(xid = %id.xid, bqual = %id.bqual, "recovered XA branch committed");
                } else {
                    info!(xid = %id.xid, bqual = %id.bqual, "unregistered XA branch rolled back");
                }
                finished += 1;
            }
            Err(mysql_async::Error::Server(e)) if e.code == XAER_NOTA => {
                // Its session is still connected (another proxy), or it just finished.
            }
            Err(e) => {
                warn!(xid = %id.xid, bqual = %id.bqual, error = %e, "XA {verb} during recovery failed")
            }
        }
    }
    Ok(finished)
}
