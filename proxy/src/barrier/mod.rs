//! The idempotent-consumer barrier: `/*+ BARRIER('<consumer>', '<message_id>') */` on a
//! statement (normally a consumer's first statement of its local transaction) records the
//! pair in `<undo_schema>.barrier` in that same local transaction, before the statement
//! runs. The pair is the table's primary key, so the database itself decides:
//!
//! - a pair some committed transaction already recorded: the insert fails with a
//!   duplicate key, the proxy rolls the local transaction back and answers 1062
//!   `Duplicate message …`; nothing the consumer sent in it is applied, and it acknowledges
//!   the message;
//! - a concurrent duplicate waits on the first one's row lock, then proceeds (the first
//!   rolled back) or gets the duplicate (the first committed);
//! - insert-first keeps deadlocks away from the consumer: when InnoDB still picks a victim
//!   among several waiters on a rolled-back first attempt (1213), the victim's transaction
//!   held nothing else, so the proxy opens it again and retries the insert.
//!
//! Rows are deleted [`Config::barrier_retention_secs`](crate::Config) after they were
//! written (checked every `undo_housekeeping_secs`).
//!
//! - [`session`]: the statement's path through a client session.

pub(crate) mod session;

use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::Pool;
use rewind_undo_log::undo_sql::quote_ident;
use tokio_util::sync::CancellationToken;

use crate::xid::HintArg;
use crate::Shared;

/// A statement's barrier: who consumes, and which message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Barrier {
    pub consumer: String,
    pub message_id: String,
}

impl Barrier {
    /// The `BARRIER('<consumer>', '<message_id>')` hint of a statement's leading comment.
    /// `Err` names what is wrong with a hint that is there but unusable.
    pub fn of(sql: &[u8]) -> Option<Result<Barrier, &'static str>> {
        const USAGE: &str =
            "BARRIER takes two quoted arguments: BARRIER('<consumer>', '<message_id>')";
        let Ok(args) = crate::xid::leading_hint(sql, b"BARRIER")? else {
            return Some(Err(USAGE));
        };
        let [HintArg::Quoted(consumer), HintArg::Quoted(message_id)] = args.as_slice() else {
            return Some(Err(USAGE));
        };
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).ok();
        Some(match (text(consumer), text(message_id)) {
            (Some(c), Some(m)) if !c.is_empty() && !m.is_empty() => {
                if c.chars().count() > MAX_LEN || m.chars().count() > MAX_LEN {
                    Err("BARRIER consumer and message id are at most 191 characters")
                } else {
                    Ok(Barrier {
                        consumer: c,
                        message_id: m,
                    })
                }
            }
            _ => Err("BARRIER consumer and message id must be non-empty UTF-8"),
        })
    }
}

/// The key columns' length: 191 characters of utf8mb4 fit InnoDB's index limit anywhere.
const MAX_LEN: usize = 191;

/// Statements on `<schema>.barrier`.
#[derive(Debug, Clone)]
pub struct BarrierTable {
    table: String,
}

impl BarrierTable {
    pub fn new(schema: &str) -> Self {
        BarrierTable {
            table: format!("{}.`barrier`", quote_ident(schema)),
        }
    }

    /// Creates the table when missing (the schema exists: the undo table's DDL made it).
    pub fn ddl(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\
             consumer VARCHAR({MAX_LEN}) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
             message_id VARCHAR({MAX_LEN}) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
             created DATETIME(6) NOT NULL, \
             PRIMARY KEY (consumer, message_id), \
             KEY idx_created (created)\
             ) ENGINE=InnoDB",
            self.table
        )
    }

    /// Params: consumer, message id.
    pub fn insert(&self) -> String {
        format!(
            "INSERT INTO {} (consumer, message_id, created) VALUES (?, ?, UTC_TIMESTAMP(6))",
            self.table
        )
    }

    /// The insert with its values inline, for a multi-statement query: hex literals, so no
    /// quoting or SQL mode can change them.
    pub fn insert_literal(&self, consumer: &str, message_id: &str) -> String {
        let hex = |s: &str| rewind_undo_log::undo_sql::hex_digits(s.as_bytes());
        format!(
            "INSERT INTO {} (consumer, message_id, created) VALUES \
             (_utf8mb4 X'{}', _utf8mb4 X'{}', UTC_TIMESTAMP(6))",
            self.table,
            hex(consumer),
            hex(message_id)
        )
    }

    /// How many pairs are remembered.
    pub fn count(&self) -> String {
        format!("SELECT COUNT(*) FROM {}", self.table)
    }

    /// Params: retention in seconds. At most 5,000 rows per statement.
    pub fn expire(&self) -> String {
        format!(
            "DELETE FROM {} WHERE created < UTC_TIMESTAMP(6) - INTERVAL ? SECOND LIMIT 5000",
            self.table
        )
    }
}

/// Every `undo_housekeeping_secs` until `shutdown`: deletes barrier pairs and half
/// messages' check rows past `barrier_retention_secs`, TCC fence rows past `tcc_fence_retention_secs` and published
/// outbox rows past the outbox's `retention_secs`; logs the fence's figures when they moved.
pub async fn housekeeping(shared: Arc<Shared>, pool: Pool, shutdown: CancellationToken) {
    let every = Duration::from_secs(shared.config.undo_housekeeping_secs);
    let mut fenced = shared.tcc_counts.read();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
        let expiring = [
            (
                "barrier pairs",
                shared.barrier.expire(),
                shared.config.barrier_retention_secs,
            ),
            (
                "half-message check rows",
                shared.msg_check.expire(),
                shared.config.barrier_retention_secs,
            ),
            (
                "TCC fence rows",
                shared.tcc_fence.expire(),
                shared.config.tcc_fence_retention_secs,
            ),
            (
                "XA proof rows",
                shared.xa_proof.expire(),
                shared.config.xa_proof_retention_secs,
            ),
            (
                "published outbox rows",
                shared.outbox_table.expire(),
                shared.config.outbox.retention_secs,
            ),
        ];
        for (what, sql, retention) in expiring {
            match delete_in_batches(&pool, &sql, retention).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "{what} past retention deleted"),
                Err(e) => {
                    tracing::warn!(error = %e, "housekeeping of {what} failed; retried later")
                }
            }
        }
        let now = shared.tcc_counts.read();
        if now != fenced {
            let [passed, repeated, empty_rollbacks, suspended, raced] = now;
            tracing::info!(
                passed,
                repeated,
                empty_rollbacks,
                suspended,
                raced,
                "TCC fence since start"
            );
            fenced = now;
        }
    }
}

/// Runs `sql`, a `DELETE … LIMIT 5000` whose one parameter is a retention in seconds,
/// until it deletes fewer than 5,000 rows. Returns how many went.
async fn delete_in_batches(
    pool: &Pool,
    sql: &str,
    retention: u64,
) -> Result<u64, mysql_async::Error> {
    let mut conn = pool.get_conn().await?;
    let mut total = 0;
    loop {
        conn.exec_drop(sql, (retention,)).await?;
        let n = conn.affected_rows();
        total += n;
        if n < 5000 {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hint_is_read_and_checked() {
        assert_eq!(
            Barrier::of(b"/*+ BARRIER('billing', 'order-42') */ INSERT INTO t VALUES (1)"),
            Some(Ok(Barrier {
                consumer: "billing".into(),
                message_id: "order-42".into()
            }))
        );
        assert_eq!(Barrier::of(b"INSERT INTO t VALUES (1)"), None);
        assert!(matches!(
            Barrier::of(b"/*+ BARRIER('billing') */ DO 1"),
            Some(Err(_))
        ));
        assert!(matches!(
            Barrier::of(b"/*+ BARRIER('billing', '') */ DO 1"),
            Some(Err(_))
        ));
        // Named but unusable: an error, never a statement run without its barrier.
        assert!(matches!(
            Barrier::of(b"/*+ BARRIER('billing', 42) */ DO 1"),
            Some(Err(_))
        ));
        assert!(matches!(
            Barrier::of(b"/*+ BARRIER('billing' 'm') */ DO 1"),
            Some(Err(_))
        ));
        let long = format!("/*+ BARRIER('c', '{}') */ DO 1", "x".repeat(192));
        assert!(matches!(Barrier::of(long.as_bytes()), Some(Err(_))));
    }
}
