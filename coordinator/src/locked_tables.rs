//! Write isolation: which tables each attached proxy knows to be globally locked.
//!
//! A proxy lets a write without an XID through untouched only when its table holds no
//! global lock; otherwise the write first waits for the global locks of its rows. For that
//! to be safe, a proxy must learn that a table is locked *before* a branch's lock on it is
//! granted (the branch commits locally right after), and any write it already sent to that
//! table must have finished. So a registration that needs a table some attached proxy has
//! not confirmed sends that proxy the grown set and waits (bounded) for its
//! [`TableLocksAck`](rewind_protocol::v1::TableLocksAck); the proxy acks once its older
//! writes to the table are done. When the wait runs out, the registration answers a
//! retryable conflict and the branch's proxy retries as for any held lock.
//!
//! A table leaves the sets once no lock is held on it and no registration is checking it.
//! Removal is pessimistic: the coordinator forgets the confirmation at once and sends the
//! smaller set, so it never relies on a proxy still treating the table as locked.
//!
//! Not covered: a proxy that is not attached at all (it cannot be told; it re-learns the
//! sets when it attaches, and while the coordinator itself is down no lock can be taken).
//! That includes a proxy gone silent, stopped or cut off: its stream is closed once it
//! leaves a PING unanswered ([`rewind_protocol::liveness`], about six seconds), so that a
//! silent proxy does not hold up every first lock on its resource's tables.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rewind_protocol::v1::{coordinator_message, CoordinatorMessage, TableLocks};
use tokio::sync::{mpsc, Notify};

use crate::dispatch::StreamTx;

/// What one attached proxy has been told and has confirmed, per resource.
struct View {
    tx: StreamTx,
    resources: Vec<String>,
    epoch: u64,
    /// The set last sent, per resource.
    sent: HashMap<String, BTreeSet<String>>,
    /// Sets sent but not yet acknowledged, by epoch.
    pending: Vec<(u64, String, BTreeSet<String>)>,
    /// The set the proxy confirmed, per resource: always a subset of what it enforces.
    confirmed: HashMap<String, BTreeSet<String>>,
}

#[derive(Default)]
pub struct LockedTables {
    views: Mutex<HashMap<u64, View>>,
    /// Tables a registration is checking or has just checked, per resource: not removed
    /// from any set until the registration is applied (then the lock itself keeps them).
    in_use: Mutex<HashMap<(String, String), usize>>,
    acked: Notify,
}

/// The registration may not proceed: a proxy did not confirm in time.
#[derive(Debug)]
pub struct NotConfirmed {
    pub table: String,
}

impl LockedTables {
    /// A proxy announced `resources`; `locked` gives the tables locked now per resource.
    pub fn attach(
        &self,
        conn: u64,
        tx: &StreamTx,
        resources: &[String],
        locked: impl Fn(&str) -> HashSet<String>,
    ) {
        let mut views = self.lock_views();
        let view = views.entry(conn).or_insert_with(|| View {
            tx: tx.clone(),
            resources: Vec::new(),
            epoch: 0,
            sent: HashMap::new(),
            pending: Vec::new(),
            confirmed: HashMap::new(),
        });
        for r in resources {
            if !view.resources.contains(r) {
                view.resources.push(r.clone());
            }
            let mut tables: BTreeSet<String> = locked(r).into_iter().collect();
            // Tables a registration is checking right now must be in the first set too.
            for ((res, table), _) in self.lock_in_use().iter() {
                if res == r {
                    tables.insert(table.clone());
                }
            }
            send(view, r, tables);
        }
    }

    pub fn detach(&self, conn: u64) {
        self.lock_views().remove(&conn);
        // A registration waiting on this proxy no longer needs it.
        self.acked.notify_waiters();
    }

    /// The proxy confirmed the set with `epoch`.
    pub fn ack(&self, conn: u64, resource: &str, epoch: u64) {
        let mut views = self.lock_views();
        let Some(view) = views.get_mut(&conn) else {
            return;
        };
        let mut confirmed = None;
        view.pending.retain(|(e, r, tables)| {
            if *e <= epoch && r == resource {
                if *e == epoch {
                    confirmed = Some(tables.clone());
                }
                return false;
            }
            true
        });
        if let Some(tables) = confirmed {
            // A later, smaller set may already be on its way: keep only what is in both.
            let sent = view.sent.get(resource).cloned().unwrap_or_default();
            view.confirmed.insert(
                resource.to_string(),
                tables.intersection(&sent).cloned().collect(),
            );
        }
        drop(views);
        self.acked.notify_waiters();
    }

    /// Before a branch's registration: makes sure every proxy attached for `resource` has
    /// confirmed `tables`, waiting up to `within`. The returned guard keeps the tables in
    /// the sets until dropped (after the registration is applied).
    pub async fn confirm(
        &self,
        resource: &str,
        tables: &BTreeSet<String>,
        within: Duration,
    ) -> Result<InUse<'_>, NotConfirmed> {
        let guard = InUse::new(self, resource, tables);
        let deadline = Instant::now() + within;
        loop {
            let notified = self.acked.notified();
            let missing = {
                let mut views = self.lock_views();
                let mut missing = None;
                for view in views
                    .values_mut()
                    .filter(|v| v.resources.iter().any(|r| r == resource))
                {
                    let confirmed = view.confirmed.get(resource);
                    let lacking: Vec<&String> = tables
                        .iter()
                        .filter(|t| !confirmed.is_some_and(|c| c.contains(*t)))
                        .collect();
                    if lacking.is_empty() {
                        continue;
                    }
                    missing.get_or_insert_with(|| lacking[0].clone());
                    let sent = view.sent.get(resource).cloned().unwrap_or_default();
                    if !tables.is_subset(&sent) {
                        let grown = sent.union(tables).cloned().collect();
                        send(view, resource, grown);
                    }
                }
                missing
            };
            let Some(table) = missing else {
                return Ok(guard);
            };
            tracing::debug!(%resource, %table, "waiting for proxies to confirm write isolation");
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
                return Err(NotConfirmed { table });
            }
        }
    }

    /// Drops tables that hold no lock any more (and that no registration is checking)
    /// from every proxy's set. `locked` gives the tables locked now per resource.
    pub fn prune(&self, locked: impl Fn(&str) -> HashSet<String>) {
        let in_use = self.lock_in_use().clone();
        let mut views = self.lock_views();
        for view in views.values_mut() {
            for r in view.resources.clone() {
                let now = locked(&r);
                let sent = view.sent.get(&r).cloned().unwrap_or_default();
                let keep: BTreeSet<String> = sent
                    .iter()
                    .filter(|t| now.contains(*t) || in_use.contains_key(&(r.clone(), (*t).clone())))
                    .cloned()
                    .collect();
                if keep != sent {
                    if let Some(c) = view.confirmed.get_mut(&r) {
                        c.retain(|t| keep.contains(t));
                    }
                    send(view, &r, keep);
                }
            }
        }
    }

    fn lock_views(&self) -> std::sync::MutexGuard<'_, HashMap<u64, View>> {
        self.views.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_in_use(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), usize>> {
        self.in_use.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn send(view: &mut View, resource: &str, tables: BTreeSet<String>) {
    view.epoch += 1;
    let msg = CoordinatorMessage {
        kind: Some(coordinator_message::Kind::TableLocks(TableLocks {
            epoch: view.epoch,
            resource_id: resource.to_string(),
            tables: tables.iter().cloned().collect(),
        })),
    };
    match view.tx.try_send(Ok(msg)) {
        Ok(()) => {
            view.pending
                .push((view.epoch, resource.to_string(), tables.clone()));
        }
        // A full or closed stream: the proxy never sees this set, so nothing of it gets
        // confirmed, and a registration needing it times out (and is retried).
        Err(mpsc::error::TrySendError::Full(_)) | Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
    view.sent.insert(resource.to_string(), tables);
}

/// Keeps tables out of [`LockedTables::prune`] while a registration uses them.
pub struct InUse<'a> {
    iso: &'a LockedTables,
    keys: Vec<(String, String)>,
}

impl<'a> InUse<'a> {
    fn new(iso: &'a LockedTables, resource: &str, tables: &BTreeSet<String>) -> Self {
        let keys: Vec<(String, String)> = tables
            .iter()
            .map(|t| (resource.to_string(), t.clone()))
            .collect();
        let mut in_use = iso.lock_in_use();
        for k in &keys {
            *in_use.entry(k.clone()).or_default() += 1;
        }
        InUse { iso, keys }
    }
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        let mut in_use = self.iso.lock_in_use();
        for k in &self.keys {
            if let Some(n) = in_use.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    in_use.remove(k);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(rx: &mut mpsc::Receiver<Result<CoordinatorMessage, tonic::Status>>) -> TableLocks {
        match rx.try_recv().expect("a message").expect("ok").kind {
            Some(coordinator_message::Kind::TableLocks(t)) => t,
            other => panic!("{other:?}"),
        }
    }

    fn set(tables: &[&str]) -> BTreeSet<String> {
        tables.iter().map(|t| t.to_string()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_table_is_granted_only_after_every_proxy_confirmed_it() {
        let iso = LockedTables::default();
        let (tx1, mut rx1) = mpsc::channel(16);
        let (tx2, mut rx2) = mpsc::channel(16);
        iso.attach(1, &tx1, &["db".into()], |_| HashSet::new());
        iso.attach(2, &tx2, &["db".into()], |_| HashSet::new());
        let first = (message(&mut rx1), message(&mut rx2));
        assert!(first.0.tables.is_empty() && first.1.tables.is_empty());

        // Nobody answers: the registration gives up after its wait.
        let r = iso
            .confirm("db", &set(&["s.t"]), Duration::from_millis(100))
            .await;
        assert!(matches!(r, Err(NotConfirmed { ref table }) if table == "s.t"));
        let grown = message(&mut rx1);
        assert_eq!(grown.tables, ["s.t"]);
        let grown2 = message(&mut rx2);

        // One proxy confirms: still waiting for the other.
        iso.ack(1, "db", grown.epoch);
        let r = iso
            .confirm("db", &set(&["s.t"]), Duration::from_millis(50))
            .await;
        assert!(r.is_err());
        iso.ack(2, "db", grown2.epoch);
        assert!(iso
            .confirm("db", &set(&["s.t"]), Duration::from_millis(50))
            .await
            .is_ok());
        assert!(rx1.try_recv().is_err(), "nothing resent once confirmed");

        // No lock left: the table leaves the sets and its confirmation is forgotten.
        iso.prune(|_| HashSet::new());
        assert!(message(&mut rx1).tables.is_empty());
        let r = iso
            .confirm("db", &set(&["s.t"]), Duration::from_millis(10))
            .await;
        assert!(r.is_err(), "must be confirmed again");

        // A proxy going away does not block registrations.
        iso.detach(1);
        iso.detach(2);
        assert!(iso
            .confirm("db", &set(&["s.t"]), Duration::from_millis(10))
            .await
            .is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn tables_in_use_survive_pruning() {
        let iso = LockedTables::default();
        let (tx, mut rx) = mpsc::channel(16);
        iso.attach(1, &tx, &["db".into()], |_| HashSet::new());
        message(&mut rx);
        let tables = set(&["s.t"]);
        let waiting = iso.confirm("db", &tables, Duration::from_secs(5));
        tokio::pin!(waiting);
        assert!(futures::poll!(&mut waiting).is_pending());
        let grown = message(&mut rx);
        iso.prune(|_| HashSet::new());
        assert!(rx.try_recv().is_err(), "s.t is in use: not pruned");
        iso.ack(1, "db", grown.epoch);
        let guard = waiting.await.expect("confirmed");
        drop(guard);
        iso.prune(|_| HashSet::new());
        assert!(message(&mut rx).tables.is_empty());
    }
}
