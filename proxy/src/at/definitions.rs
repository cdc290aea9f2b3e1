//! Confirming table definitions without a query per statement.
//!
//! Before an AT write, the table's cached metadata must match its definition (see
//! [`rewind_undo_log::MetaCache`]); reading the definition is the most expensive statement
//! of a branch (information_schema lookups, `SHOW CREATE TABLE`: measured about 0.45 ms
//! of MariaDB CPU per branch, a third of the server's work for a one-row transfer).
//!
//! What makes it skippable is MariaDB's metadata lock (MDL): a transaction that has opened
//! a table holds a shared MDL on it until it ends, and DDL needs the exclusive lock to
//! complete. So while *any* transaction holds the MDL, the definition cannot change; two
//! transactions whose holding intervals overlap see the same definition.
//!
//! - **Holders.** A bound local transaction that confirmed table T's definition D (by the
//!   query, while holding T's MDL) is a *holder* of (T, D) until it sends COMMIT or
//!   ROLLBACK, a statement of it fails (the server may have ended the transaction), or it
//!   rolls back to a savepoint (which may release MDL). [`Holding`] counts it in the
//!   [`Witness`] for as long as that lasts.
//! - **Skipping before the write.** A statement that locked T's rows (its MDL is held)
//!   while another holder of (T, D) is registered, with metadata of definition D, skips the
//!   query: both transactions hold the MDL at once, so the definition is D. The write goes
//!   on, and the table is noted *pending* with a stamp taken after the statement's write.
//! - **Proof at commit.** The registry cannot see a holder's MDL released behind the
//!   proxy's back (a connection killed, a deadlock not yet reported). So a pending table
//!   is settled at commit, after the registration and before the undo record is written
//!   (the registration's wait lets other holders answer; measured under bench/at, settling
//!   before it found a proof for 4 % of pending writes, after it 53 %, and 74 % with the
//!   short wait below; the commit asks for the proofs it will need as it begins, before
//!   registering, so that a sentinel's answer travels during the registration instead of
//!   after it). It needs a *proof*: a holder of (T, D) whose request, sent after
//!   the pending stamp, was answered inside its transaction. That holder held the MDL
//!   continuously from its confirmation to that answer, which is after this transaction's
//!   acquisition: the intervals overlap, the definition is D. Without a proof within
//!   [`PROOF_WAIT`], the definition query runs then (the MDL is still held, so it reads what
//!   the write saw); a different definition rolls the local transaction back with an error
//!   (never a commit planned on stale metadata; the registered branch is reported failed),
//!   where the query before the write would have planned the statement again.
//!
//! The stamps come from one counter ([`Witness::stamp`]); holders publish a proof after
//! every answered request of the AT path (images, writes, the undo insert). A busy table
//! also has a holder that does nothing else, the [`super::sentinel`], which answers
//! whenever a commit waits for a proof.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rewind_undo_log::{TableMeta, TableName};

/// How long a commit waits for another holder's answer to prove a definition before it
/// reads the definition itself. Under concurrency (when it matters) holders answer every
/// few hundred microseconds; alone, no holder is registered and nothing waits. On a loaded
/// machine a sentinel's proof takes two round trips of a few milliseconds: under `bench/at`
/// (8 s) 2 ms let 118 commits read the definition (about 0.5 ms of MariaDB CPU each),
/// 5 ms 40.
const PROOF_WAIT: std::time::Duration = std::time::Duration::from_millis(5);

/// What all sessions know of the holders of table definitions.
#[derive(Debug, Default)]
pub struct Witness {
    epoch: AtomicU64,
    tables: Mutex<HashMap<TableName, Vec<Entry>>>,
    /// Woken whenever a proof is published (see [`Checks::settle`]).
    proofs: tokio::sync::Notify,
    /// Woken whenever a commit starts waiting for a proof.
    pub(crate) proof_wanted: tokio::sync::Notify,
    /// Commits between their start and the end of their phase one (see
    /// [`Checks::want_proofs`]).
    committing: std::sync::atomic::AtomicUsize,
    /// How confirmations went: by the query, skipped for a holder, settled by a proof,
    /// settled by the query at commit.
    pub counts: Counts,
}

#[derive(Debug, Default)]
pub struct Counts {
    pub queried: AtomicU64,
    pub skipped: AtomicU64,
    pub proven: AtomicU64,
    pub queried_at_commit: AtomicU64,
    /// Read by a sentinel for every session (see [`super::sentinel`]).
    pub sentinel: AtomicU64,
}

/// A commit in its phase one (see [`Witness::commit_begins`]).
pub struct Committing<'a> {
    witness: &'a Witness,
    /// No other commit was in its phase one when this one began.
    pub alone: bool,
}

impl Drop for Committing<'_> {
    fn drop(&mut self) {
        self.witness.committing.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One definition of a table: how many transactions hold it confirmed, and the latest
/// stamp a holder's answered request was sent after.
#[derive(Debug)]
struct Entry {
    definition: String,
    holders: usize,
    proof: u64,
    /// The newest stamp a commit waited (or waits) for a proof after.
    wanted: u64,
}

impl Witness {
    /// A new stamp: later than every stamp taken before.
    pub fn stamp(&self) -> u64 {
        self.epoch.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, HashMap<TableName, Vec<Entry>>> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a holder of `meta`'s definition (the caller's transaction confirmed it and
    /// holds the table's MDL); deregistered when the [`Holding`] drops.
    pub fn hold(self: &Arc<Self>, name: &TableName, definition: &str) -> Holding {
        let mut tables = self.tables();
        let entries = tables.entry(name.clone()).or_default();
        match entries.iter_mut().find(|e| e.definition == definition) {
            Some(e) => e.holders += 1,
            None => entries.push(Entry {
                definition: definition.to_string(),
                holders: 1,
                proof: 0,
                wanted: 0,
            }),
        }
        Holding {
            witness: self.clone(),
            name: name.clone(),
            definition: definition.to_string(),
        }
    }

    /// Whether a transaction is registered as holding `meta`'s definition confirmed.
    pub fn held(&self, meta: &TableMeta) -> bool {
        self.held_as(&meta.name, &meta.definition)
    }

    fn held_as(&self, name: &TableName, definition: &str) -> bool {
        self.tables().get(name).is_some_and(|entries| {
            entries
                .iter()
                .any(|e| e.holders > 0 && e.definition == definition)
        })
    }

    /// Waits at most `PROOF_WAIT` for a proof of `definition` after `stamp`, while some
    /// transaction holds it confirmed (only a holder's answer can prove it).
    async fn proof_after(&self, name: &TableName, definition: &str, stamp: u64) -> bool {
        let deadline = tokio::time::Instant::now() + PROOF_WAIT;
        self.want_proof(name, definition, stamp);
        loop {
            let published = self.proofs.notified();
            if self.proven_after(name, definition, stamp) {
                return true;
            }
            if !self.held_as(name, definition)
                || tokio::time::timeout_at(deadline, published).await.is_err()
            {
                return false;
            }
        }
    }

    /// Notes that a commit needs a proof of `definition` after `stamp`, and wakes the
    /// table's sentinel unless a proof already covers it. Returns at once.
    fn want_proof(&self, name: &TableName, definition: &str, stamp: u64) {
        let asked = self
            .tables()
            .get_mut(name)
            .and_then(|entries| entries.iter_mut().find(|e| e.definition == definition))
            .is_some_and(|e| {
                e.wanted = e.wanted.max(stamp);
                e.proof <= stamp
            });
        if asked {
            self.proof_wanted.notify_waiters();
        }
    }

    /// A commit begins its phase one; it counts as committing until the guard drops.
    pub fn commit_begins(&self) -> Committing<'_> {
        let others = self.committing.fetch_add(1, Ordering::AcqRel);
        Committing {
            witness: self,
            alone: others == 0,
        }
    }

    /// Whether a holder of `definition` was answered inside its transaction for a request
    /// sent after `stamp`.
    pub fn proven_after(&self, name: &TableName, definition: &str, stamp: u64) -> bool {
        self.tables().get(name).is_some_and(|entries| {
            entries
                .iter()
                .any(|e| e.proof > stamp && e.definition == definition)
        })
    }

    /// Whether a commit waits for a proof of `definition` after a stamp no proof covers yet.
    pub(crate) fn proof_awaited(&self, name: &TableName, definition: &str) -> bool {
        self.tables().get(name).is_some_and(|entries| {
            entries
                .iter()
                .any(|e| e.definition == definition && e.wanted >= e.proof)
        })
    }

    /// Holders answered inside their transaction for a request sent after `stamp`.
    pub(crate) fn publish(&self, held: &[Holding], stamp: u64) {
        {
            let mut tables = self.tables();
            for h in held {
                if let Some(e) = tables
                    .get_mut(&h.name)
                    .and_then(|entries| entries.iter_mut().find(|e| e.definition == h.definition))
                {
                    e.proof = e.proof.max(stamp);
                }
            }
        }
        self.proofs.notify_waiters();
    }

    fn release(&self, name: &TableName, definition: &str) {
        let mut tables = self.tables();
        if let Some(entries) = tables.get_mut(name) {
            if let Some(e) = entries.iter_mut().find(|e| e.definition == definition) {
                e.holders = e.holders.saturating_sub(1);
            }
            // Forget definitions nobody holds once a newer one is held (the table changed).
            if entries.len() > 1 {
                entries.retain(|e| e.holders > 0);
            }
            if entries.is_empty() {
                tables.remove(name);
            }
        }
    }
}

/// A transaction's registration as a holder of a table definition; released on drop.
#[derive(Debug)]
pub struct Holding {
    witness: Arc<Witness>,
    name: TableName,
    definition: String,
}

impl Drop for Holding {
    fn drop(&mut self) {
        self.witness.release(&self.name, &self.definition);
    }
}

/// A write planned on metadata not confirmed before it ran.
#[derive(Debug)]
pub struct Pending {
    pub name: TableName,
    pub definition: String,
    /// Taken after the statement's write (its MDL held from then on); `None` while the
    /// statement runs.
    pub stamp: Option<u64>,
}

/// What one bound local transaction confirmed, and what it still has to.
#[derive(Debug, Default)]
pub struct Checks {
    held: Vec<Holding>,
    pub pending: Vec<Pending>,
}

impl Checks {
    /// This transaction confirmed `meta`'s definition and holds the table's MDL since.
    pub fn confirmed(&self, meta: &TableMeta) -> bool {
        self.confirmed_as(&meta.name, &meta.definition)
    }

    fn confirmed_as(&self, name: &TableName, definition: &str) -> bool {
        self.held
            .iter()
            .any(|h| h.name == *name && h.definition == definition)
    }

    /// This transaction read `definition` of `name` while holding the table's MDL.
    pub fn hold(&mut self, witness: &Arc<Witness>, name: &TableName, definition: &str) {
        if !self.confirmed_as(name, definition) {
            self.held.push(witness.hold(name, definition));
        }
    }

    /// `meta` was used for a write without confirming it first (another holder of its
    /// definition was registered): settled at commit.
    pub fn defer(&mut self, meta: &TableMeta) {
        self.pending.push(Pending {
            name: meta.name.clone(),
            definition: meta.definition.clone(),
            stamp: None,
        });
    }

    /// A stamp for a request about to be sent, when there is anything to prove by its answer.
    pub fn before_request(&self, witness: &Witness) -> Option<u64> {
        (!self.held.is_empty()).then(|| witness.stamp())
    }

    /// The request sent after `stamp` was answered, inside the transaction.
    pub fn answered(&self, witness: &Witness, stamp: Option<u64>) {
        if let Some(s) = stamp {
            witness.publish(&self.held, s);
        }
    }

    /// Something may have ended the transaction or released MDL (a failed statement, a
    /// rollback to a savepoint): nothing held counts any more.
    pub fn lost(&mut self) {
        self.held.clear();
    }

    /// The statement that planned the unstamped pending writes is done with its write.
    pub fn stamp_pending(&mut self, witness: &Witness) {
        if self.pending.iter().any(|p| p.stamp.is_none()) {
            let s = witness.stamp();
            for p in self.pending.iter_mut().filter(|p| p.stamp.is_none()) {
                p.stamp = Some(s);
            }
        }
    }

    /// The commit has begun: asks for the proofs [`Checks::settle`] will need, so that a
    /// sentinel's answer travels while the branch registers instead of after it (at one
    /// client, a sentinel round trip less on every commit: branch p50 2.59 / 2.47 / 2.62
    /// ms against 2.84 / 2.61 / 2.77 under `bench/at 1`). Any request sent from now on is
    /// after every pending stamp, so its answer proves them all. Only for a commit that
    /// began `alone`: beside others it asks when it settles, where the registrations'
    /// group commit lines the asks up and one sentinel answer serves them all; early asks
    /// come at scattered times and cost an answer each (about +35 µs of MariaDB CPU per
    /// transfer at 16 clients, measured).
    pub fn want_proofs(&self, witness: &Witness, commit: &Committing<'_>) {
        if !commit.alone {
            return;
        }
        for p in &self.pending {
            if let Some(s) = p.stamp {
                witness.want_proof(&p.name, &p.definition, s);
            }
        }
    }

    /// Settles the pending writes before the undo record is written (see the module docs): each
    /// is confirmed by this transaction, proven by another holder's answer, or read now
    /// through `conn` (the MDL is still held). `Err` names a table whose definition changed
    /// (its metadata is forgotten) or could not be read; the caller rolls back.
    pub async fn settle(
        &mut self,
        conn: &mut mysql_async::Conn,
        shared: &crate::Shared,
    ) -> Result<(), String> {
        let witness = &shared.definitions;
        for p in std::mem::take(&mut self.pending) {
            if self.confirmed_as(&p.name, &p.definition) {
                continue;
            }
            let proven = match p.stamp {
                Some(s) => witness.proof_after(&p.name, &p.definition, s).await,
                None => false,
            };
            if proven {
                witness.counts.proven.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            witness
                .counts
                .queried_at_commit
                .fetch_add(1, Ordering::Relaxed);
            match shared
                .metas
                .definition(conn, &p.name.schema, &p.name.table)
                .await
            {
                Ok(d) if d == p.definition => self.hold(witness, &p.name, &p.definition),
                Ok(_) => {
                    shared.metas.invalidate(&p.name);
                    return Err(format!(
                        "the definition of {} changed (DDL outside this proxy) while this \
                         transaction wrote it with the metadata from before",
                        p.name
                    ));
                }
                Err(e) => {
                    shared.metas.invalidate(&p.name);
                    return Err(format!(
                        "the definition of {} could not be read: {e}",
                        p.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// The statement failed: its pending notes go (it wrote nothing, or the transaction is
    /// rolled back).
    pub fn statement_failed(&mut self) {
        self.pending.retain(|p| p.stamp.is_some());
        self.lost();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(def: &str) -> TableMeta {
        TableMeta {
            name: TableName::new("db", "t"),
            columns: Vec::new(),
            primary_key: vec!["id".into()],
            unique_keys: Vec::new(),
            engine: "InnoDB".into(),
            triggers: Vec::new(),
            cascades: Vec::new(),
            definition: def.into(),
        }
    }

    #[test]
    fn a_holder_counts_until_dropped_and_proves_only_later_stamps() {
        let w = Arc::new(Witness::default());
        let (d1, d2) = (meta("one"), meta("two"));
        assert!(!w.held(&d1));
        let mut checks = Checks::default();
        checks.hold(&w, &d1.name, &d1.definition);
        assert!(w.held(&d1) && !w.held(&d2), "only the definition held");
        let pending = w.stamp();
        assert!(!w.proven_after(&d1.name, &d1.definition, pending));
        let s = checks.before_request(&w);
        checks.answered(&w, s);
        assert!(w.proven_after(&d1.name, &d1.definition, pending));
        assert!(!w.proven_after(&d2.name, &d2.definition, pending));
        // A proof for a stamp taken before the pending one proves nothing for it.
        let later = w.stamp();
        assert!(!w.proven_after(&d1.name, &d1.definition, later));
        checks.lost();
        assert!(!w.held(&d1), "released when lost");
        assert!(
            checks.before_request(&w).is_none(),
            "nothing held: nothing to prove"
        );
    }

    /// A commit waiting for a proof asks for one on its own table and definition only,
    /// and a proof published after its stamp answers it.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_commit_asks_its_definition_for_a_proof() {
        let w = Arc::new(Witness::default());
        let (d1, d2) = (meta("one"), meta("two"));
        let holder = [w.hold(&d1.name, &d1.definition)];
        let other = w.hold(&d2.name, &d2.definition);
        w.publish(&holder, w.stamp());
        w.publish(std::slice::from_ref(&other), w.stamp());
        assert!(!w.proof_awaited(&d1.name, &d1.definition));
        let pending = w.stamp();
        let waiting = {
            let w = w.clone();
            let d = d1.definition.clone();
            tokio::spawn(
                async move { w.proof_after(&TableName::new("db", "t"), &d, pending).await },
            )
        };
        tokio::task::yield_now().await;
        assert!(w.proof_awaited(&d1.name, &d1.definition));
        assert!(
            !w.proof_awaited(&d2.name, &d2.definition),
            "not another definition's"
        );
        w.publish(&holder, w.stamp());
        assert!(
            waiting.await.unwrap(),
            "proven by the answer after the stamp"
        );
        assert!(!w.proof_awaited(&d1.name, &d1.definition), "answered");
    }

    /// A commit that begins alone asks for the proofs of its stamped pending writes as it
    /// begins (so a sentinel answers while the branch registers), without waiting; an
    /// answer after the stamp then settles them at once. One beside others does not.
    #[tokio::test]
    async fn a_commit_asks_for_its_proofs_before_it_registers() {
        let w = Arc::new(Witness::default());
        let d1 = meta("one");
        let sentinel = [w.hold(&d1.name, &d1.definition)];
        w.publish(&sentinel, w.stamp());
        let mut checks = Checks::default();
        checks.defer(&d1);
        let commit = w.commit_begins();
        checks.want_proofs(&w, &commit);
        assert!(
            !w.proof_awaited(&d1.name, &d1.definition),
            "a write still running has no stamp to prove yet"
        );
        checks.stamp_pending(&w);
        let other = w.commit_begins();
        checks.want_proofs(&w, &other);
        assert!(
            !w.proof_awaited(&d1.name, &d1.definition),
            "a commit beside others asks when it settles"
        );
        drop(other);
        let asked = w.proof_wanted.notified();
        tokio::pin!(asked);
        asked.as_mut().enable();
        checks.want_proofs(&w, &commit);
        assert!(w.proof_awaited(&d1.name, &d1.definition));
        tokio::time::timeout(std::time::Duration::from_secs(1), asked)
            .await
            .expect("the sentinel is woken");
        w.publish(&sentinel, w.stamp());
        let stamp = checks.pending[0].stamp.expect("stamped");
        assert!(w.proven_after(&d1.name, &d1.definition, stamp));
        assert!(!w.proof_awaited(&d1.name, &d1.definition), "answered");
    }

    #[test]
    fn pending_writes_are_stamped_after_their_statement() {
        let w = Arc::new(Witness::default());
        let mut checks = Checks::default();
        checks.pending.push(Pending {
            name: TableName::new("db", "t"),
            definition: "one".into(),
            stamp: None,
        });
        checks.stamp_pending(&w);
        let first = checks.pending[0].stamp.expect("stamped");
        checks.pending.push(Pending {
            name: TableName::new("db", "t"),
            definition: "one".into(),
            stamp: None,
        });
        checks.statement_failed();
        assert_eq!(checks.pending.len(), 1, "the failed statement's note goes");
        assert_eq!(checks.pending[0].stamp, Some(first));
    }
}
