//! Who waits on the row locks of prepared XA branches, as the proxies holding those
//! branches last read InnoDB's lock waits (sent with their outbox report, every report
//! interval). The console's XA view joins these waiters to the engine's XA branches by
//! (xid, XA branch qualifier).
//!
//! Like [`crate::outbox`], a cache in memory only, not replicated: the database's lock
//! waits are the truth, and the next report after a restart or a leader change brings
//! them back. Unlike the outbox figures, several proxies in front of one backend each
//! hold their own branches, so a report is kept per (resource, Attach stream), and
//! dropped with its stream: a detached proxy's connections are closed, its branches
//! detached from them, and what it last saw is no longer known to be true. A report
//! older than [`STALE_AFTER`] is ignored for the same reason.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Instant;

pub use crate::outbox::STALE_AFTER;

/// A backend session waiting on a row lock of a prepared XA branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XaWaiter {
    /// The XA branch waited on: (gtrid, bqual).
    pub xid: String,
    pub bqual: String,
    /// The waiting session's thread id in the backend.
    pub thread_id: u64,
    /// What it runs (at most 200 characters).
    pub query: String,
    pub waiting_ms: u64,
}

/// One proxy's read of its resource.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct XaLockReport {
    pub resource_id: String,
    pub proxy_id: String,
    /// Prepared branches the proxy holds.
    pub pinned: u32,
    pub waits: Vec<XaWaiter>,
    pub read_at_ms: u64,
}

struct Received {
    report: XaLockReport,
    at: Instant,
}

/// Reports by (resource, Attach stream). A std mutex held for map operations only.
#[derive(Default)]
pub struct XaWaits {
    reports: Mutex<BTreeMap<(String, u64), Received>>,
}

/// At most this many waiters are kept per report (the proxy sends at most 200).
const MAX_WAITS: usize = 200;

impl XaWaits {
    /// Keeps `report` as the latest of its resource from stream `conn`.
    pub fn store(&self, conn: u64, mut report: XaLockReport, at: Instant) {
        report.waits.truncate(MAX_WAITS);
        self.reports
            .lock()
            .expect("xa waits lock")
            .insert((report.resource_id.clone(), conn), Received { report, at });
    }

    /// A stream ended: what its proxy reported is forgotten.
    pub fn detached(&self, conn: u64) {
        self.reports
            .lock()
            .expect("xa waits lock")
            .retain(|(_, c), _| *c != conn);
    }

    /// The waiters of fresh reports by (xid, bqual), longest waiting first.
    pub fn by_branch(&self, now: Instant) -> HashMap<(String, String), Vec<XaWaiter>> {
        let mut out: HashMap<(String, String), Vec<XaWaiter>> = HashMap::new();
        for r in self.reports.lock().expect("xa waits lock").values() {
            if now.saturating_duration_since(r.at) > STALE_AFTER {
                continue;
            }
            for w in &r.report.waits {
                out.entry((w.xid.clone(), w.bqual.clone()))
                    .or_default()
                    .push(w.clone());
            }
        }
        for waiters in out.values_mut() {
            waiters.sort_by(|a, b| {
                b.waiting_ms
                    .cmp(&a.waiting_ms)
                    .then(a.thread_id.cmp(&b.thread_id))
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn waiter(xid: &str, bqual: &str, thread_id: u64, waiting_ms: u64) -> XaWaiter {
        XaWaiter {
            xid: xid.into(),
            bqual: bqual.into(),
            thread_id,
            query: format!("UPDATE t SET v = {thread_id}"),
            waiting_ms,
        }
    }

    fn report(resource: &str, waits: Vec<XaWaiter>) -> XaLockReport {
        XaLockReport {
            resource_id: resource.into(),
            proxy_id: "p".into(),
            pinned: 1,
            waits,
            read_at_ms: 1,
        }
    }

    #[test]
    fn two_proxies_of_one_resource_keep_their_own_waiters() {
        let w = XaWaits::default();
        let t0 = Instant::now();
        w.store(1, report("db", vec![waiter("x1", "b1", 10, 5)]), t0);
        w.store(
            2,
            report(
                "db",
                vec![waiter("x1", "b1", 12, 50), waiter("x2", "b2", 11, 1)],
            ),
            t0,
        );
        let by = w.by_branch(t0);
        let ids = |k: (&str, &str)| -> Vec<u64> {
            by.get(&(k.0.to_string(), k.1.to_string()))
                .map(|v| v.iter().map(|w| w.thread_id).collect())
                .unwrap_or_default()
        };
        assert_eq!(ids(("x1", "b1")), [12, 10], "longest waiting first");
        assert_eq!(ids(("x2", "b2")), [11]);

        // A newer report of stream 2 replaces its older one; a detached stream's go.
        w.store(2, report("db", vec![]), t0);
        w.detached(1);
        assert!(w.by_branch(t0).is_empty());
    }

    #[test]
    fn a_stale_report_shows_no_waiters() {
        let w = XaWaits::default();
        let t0 = Instant::now();
        w.store(1, report("db", vec![waiter("x1", "b1", 10, 5)]), t0);
        assert_eq!(w.by_branch(t0 + STALE_AFTER).len(), 1);
        assert!(w
            .by_branch(t0 + STALE_AFTER + Duration::from_millis(1))
            .is_empty());
    }
}
