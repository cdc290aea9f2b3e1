//! Check-back: a half message still `prepared` after its `check_after_ms` is asked about
//! on the Attach stream (`MessageCheck`), and the answer comes from the database itself,
//! insert-first like the producer's row:
//!
//! - the probe's own row (origin `probe`) goes in and is committed: the producer's row was
//!   never committed, and now never can be (its insert would meet the probe's key):
//!   `rolled_back`;
//! - a duplicate key: a committed row is there; its origin says whose (`tx`: the producer's
//!   transaction committed; `probe`: an earlier check already decided `rolled_back`);
//! - a lock wait: the producer's transaction holds the row and has not ended: `running`.
//!   The probe waits at most 1 s for it (`innodb_lock_wait_timeout`, set for the probe and
//!   set back before the connection is used again).
//!
//! Every answer is idempotent: a repeated check finds what the first one left.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};
use rewind_protocol::v1::{self, message_check_result::Outcome};

use super::Origin;
use crate::Shared;

/// The probe's lock wait, in seconds: long enough for a producer between its insert and its
/// COMMIT, short enough that a running one is answered `running` and asked again later.
const PROBE_LOCK_WAIT_SECS: u32 = 1;

/// Answers one check of `message_id` on this proxy's resource, and counts the outcome.
pub(crate) async fn check(shared: &Shared, pool: &Pool, cmd: &v1::MessageCheck) -> Outcome {
    let outcome = if cmd.resource_id != shared.resource_id {
        failure(format!(
            "this proxy serves resource {:?}, not {:?}",
            shared.resource_id, cmd.resource_id
        ))
    } else {
        match pool.get_conn().await {
            Ok(conn) => with_short_lock_wait(shared, conn, &cmd.message_id).await,
            Err(e) => failure(format!("backend: {e}")),
        }
    };
    let i = match outcome {
        Outcome::Committed(_) => 0,
        Outcome::RolledBack(_) => 1,
        Outcome::Running(_) => 2,
        Outcome::Failure(_) => 3,
    };
    shared.messages.checks[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::debug!(message_id = %cmd.message_id, ?outcome, "half message checked back");
    outcome
}

/// Runs the probe with the short lock wait, then sets the connection's back: the pool
/// hands connections on without a reset. A connection that cannot be set back is closed.
async fn with_short_lock_wait(shared: &Shared, mut conn: Conn, message_id: &str) -> Outcome {
    if let Err(e) = conn
        .query_drop(format!(
            "SET SESSION innodb_lock_wait_timeout = {PROBE_LOCK_WAIT_SECS}"
        ))
        .await
    {
        return failure(format!("backend: {e}"));
    }
    let outcome = probe(shared, &mut conn, message_id).await;
    let restored = conn
        .query_drop("SET SESSION innodb_lock_wait_timeout = DEFAULT")
        .await;
    if let Err(e) = restored {
        tracing::debug!(error = %e, "probe connection not restored; closed");
        let _ = conn.disconnect().await;
    }
    outcome
}

async fn probe(shared: &Shared, conn: &mut Conn, message_id: &str) -> Outcome {
    let table = &shared.msg_check;
    let inserted = async {
        conn.query_drop("START TRANSACTION").await?;
        conn.exec_drop(table.insert(), (message_id, Origin::Probe.as_str()))
            .await?;
        conn.query_drop("COMMIT").await
    }
    .await;
    let err = match inserted {
        Ok(()) => return Outcome::RolledBack(v1::Done {}),
        Err(e) => e,
    };
    // Whatever failed, the probe's transaction must hold nothing any more; a connection
    // this fails on is closed when it cannot be set back either.
    if let Err(e) = conn.query_drop("ROLLBACK").await {
        tracing::debug!(error = %e, "probe rollback failed");
    }
    match err {
        mysql_async::Error::Server(e) if e.code == 1062 => {
            committed_row(shared, conn, message_id).await
        }
        mysql_async::Error::Server(e) if e.code == 1205 => Outcome::Running(v1::Done {}),
        e => failure(format!("backend: {e}")),
    }
}

/// After a duplicate key: whose committed row is it.
async fn committed_row(shared: &Shared, conn: &mut Conn, message_id: &str) -> Outcome {
    // Autocommit, READ COMMITTED (the pool's): the latest committed row.
    let origin: Result<Option<String>, _> = conn
        .exec_first(shared.msg_check.origin(), (message_id,))
        .await;
    match origin.map(|o| o.as_deref().and_then(Origin::parse)) {
        Ok(Some(Origin::Tx)) => Outcome::Committed(v1::Done {}),
        Ok(Some(Origin::Probe)) => Outcome::RolledBack(v1::Done {}),
        // Deleted between the insert and the read (retention), or not a row of ours.
        Ok(None) => failure("the check row changed while it was read; check again".into()),
        Err(e) => failure(format!("backend: {e}")),
    }
}

fn failure(message: String) -> Outcome {
    Outcome::Failure(v1::RetryableFailure { message })
}
