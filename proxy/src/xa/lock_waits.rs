//! Who waits on a prepared XA branch: the backend sessions blocked on the row locks of
//! the branches this proxy holds prepared, read from InnoDB's lock waits and sent to the
//! coordinator's console with the outbox report (every `[outbox] report_interval_ms`).
//!
//! A prepared branch keeps its row locks until phase two, and its connection stays
//! pinned here ([`super::Pinned`]), so InnoDB names that connection's thread as the
//! blocker. The lock-wait tables are read only while something is pinned, and only the
//! waits on those threads are kept; the xid of each branch waited on comes from
//! `XA RECOVER`, read only when someone waits.
//!
//! Reading `information_schema.INNODB_LOCK_WAITS` needs the PROCESS privilege; without
//! it the report says nothing about waiters (logged at debug).

use std::collections::{HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use mysql_async::prelude::Queryable;
use mysql_async::Pool;
use rewind_protocol::v1;

use crate::Shared;

/// A waiter's query is cut to this many characters.
const QUERY_CHARS: usize = 200;

/// At most this many waits go into one report.
const MAX_WAITS: usize = 200;

/// (blocking thread, waiting thread, waiting query, waited microseconds) of every lock
/// wait whose blocker is one of `threads`. InnoDB keeps `trx_wait_started` to the
/// second, so the wait is as precise as that.
fn waits_sql(threads: &[u32]) -> String {
    let list = threads
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "SELECT DISTINCT b.trx_mysql_thread_id, r.trx_mysql_thread_id, \
         LEFT(r.trx_query, {QUERY_CHARS}), \
         TIMESTAMPDIFF(MICROSECOND, r.trx_wait_started, NOW(6)) \
         FROM information_schema.INNODB_LOCK_WAITS w \
         JOIN information_schema.INNODB_TRX b ON b.trx_id = w.blocking_trx_id \
         JOIN information_schema.INNODB_TRX r ON r.trx_id = w.requesting_trx_id \
         WHERE b.trx_mysql_thread_id IN ({list}) \
         LIMIT {MAX_WAITS}"
    )
}

/// The report for this interval: the pinned branches and who waits on them. With nothing
/// pinned, no query runs (the report then clears the coordinator's list).
pub(crate) async fn read(
    shared: &Shared,
    pool: &Pool,
    proxy_id: &str,
) -> Result<v1::XaLockReport, mysql_async::Error> {
    let pinned = shared.xa_pinned.threads();
    let mut report = v1::XaLockReport {
        resource_id: shared.resource_id.clone(),
        proxy_id: proxy_id.to_string(),
        pinned: u32::try_from(pinned.len()).unwrap_or(u32::MAX),
        ..Default::default()
    };
    if !pinned.is_empty() {
        let threads: Vec<u32> = pinned.iter().map(|(_, t)| *t).collect();
        let mut conn = pool.get_conn().await?;
        let rows: Vec<(u64, u64, Option<String>, Option<i64>)> =
            conn.query(waits_sql(&threads)).await?;
        if !rows.is_empty() {
            let xids: HashMap<String, String> = super::phase_two::recover(&mut conn)
                .await?
                .into_iter()
                .map(|id| (id.bqual, id.xid))
                .collect();
            let bqual_of: HashMap<u64, &str> = pinned
                .iter()
                .map(|(bqual, t)| (u64::from(*t), bqual.as_str()))
                .collect();
            let mut seen = HashSet::new();
            for (blocker, waiter, query, waited_us) in rows {
                let Some(bqual) = bqual_of.get(&blocker) else {
                    continue;
                };
                // A branch gone from XA RECOVER just finished: its waiter is about to go.
                let Some(xid) = xids.get(*bqual) else {
                    continue;
                };
                if !seen.insert((waiter, *bqual)) {
                    continue;
                }
                report.waits.push(v1::XaLockWait {
                    xid: xid.clone(),
                    bqual: bqual.to_string(),
                    thread_id: waiter,
                    query: query
                        .map(|q| q.chars().take(QUERY_CHARS).collect())
                        .unwrap_or_default(),
                    waiting_ms: (waited_us.unwrap_or(0).max(0) / 1000) as u64,
                });
            }
        }
    }
    report.read_at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Ok(report)
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_pinned_threads_are_asked_about() {
        let sql = super::waits_sql(&[7, 42]);
        assert!(sql.contains("IN (7,42)"), "{sql}");
        assert!(sql.contains("LEFT(r.trx_query, 200)"), "{sql}");
        assert!(sql.ends_with("LIMIT 200"), "{sql}");
    }
}
