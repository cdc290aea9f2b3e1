//! Write isolation for writes without an XID (`write_isolation = "all"`).
//!
//! The coordinator tells the proxy which tables of its resource hold global locks
//! ([`Isolation::update`], from the Attach stream). An UPDATE or DELETE without an XID on
//! one of them first waits until no other global transaction holds a lock on the rows it
//! touches (and fails with 1205 if one stays held), so it cannot overwrite a row whose
//! global transaction may still roll back. Writes to other tables go straight to the
//! backend: when no table is locked at all, without even being parsed.
//!
//! The race this closes: a write sent while its table was not yet locked may still be
//! waiting in the backend for a row lock held by a branch's phase one, and would land
//! right after that branch commits. So every fast-path write holds a [`Ticket`] while it
//! runs, and the proxy confirms a grown set to the coordinator only after the tickets on
//! the newly locked tables (and the unparsed ones, whose table is unknown) are returned
//! ([`Isolation::drain`]); the coordinator grants the branch's locks only after that.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Default)]
pub struct Isolation {
    state: Mutex<State>,
    returned: Notify,
}

#[derive(Default)]
struct State {
    /// Tables (lock-key form, `schema.table` escaped) holding global locks.
    locked: HashSet<String>,
    /// Fast-path writes running that were let through unparsed (nothing was locked).
    unparsed: usize,
    /// Fast-path writes running, per table.
    by_table: HashMap<String, usize>,
}

/// What a write without an XID may do.
pub enum Admission {
    /// Go straight to the backend, holding the ticket until the statement is done.
    Fast(Ticket),
    /// Some table is locked: name the statement's table(s) first.
    NeedTables,
    /// A table it writes holds global locks: take the slow path.
    Locked,
}

impl Isolation {
    /// A write whose tables are unknown (not parsed).
    pub fn admit_unparsed(self: &Arc<Self>) -> Admission {
        let mut st = self.lock();
        if !st.locked.is_empty() {
            return Admission::NeedTables;
        }
        st.unparsed += 1;
        Admission::Fast(Ticket {
            iso: self.clone(),
            tables: None,
        })
    }

    /// A write to `tables` (lock-key form).
    pub fn admit(self: &Arc<Self>, tables: &[String]) -> Admission {
        let mut st = self.lock();
        if tables.iter().any(|t| st.locked.contains(t)) {
            return Admission::Locked;
        }
        for t in tables {
            *st.by_table.entry(t.clone()).or_default() += 1;
        }
        Admission::Fast(Ticket {
            iso: self.clone(),
            tables: Some(tables.to_vec()),
        })
    }

    /// Replaces the set of locked tables; returns the tables that were added.
    pub fn update(&self, tables: impl IntoIterator<Item = String>) -> Vec<String> {
        let tables: HashSet<String> = tables.into_iter().collect();
        let mut st = self.lock();
        let added = tables.difference(&st.locked).cloned().collect();
        st.locked = tables;
        added
    }

    /// Waits until no fast-path write that could touch one of `added` is running.
    pub async fn drain(&self, added: &[String]) {
        if added.is_empty() {
            return;
        }
        loop {
            let returned = self.returned.notified();
            {
                let st = self.lock();
                let busy = st.unparsed > 0
                    || added
                        .iter()
                        .any(|t| st.by_table.get(t).is_some_and(|n| *n > 0));
                if !busy {
                    return;
                }
            }
            returned.await;
        }
    }

    /// Whether any table of the resource holds global locks.
    pub fn any_locked(&self) -> bool {
        !self.lock().locked.is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Counters and a set replaced whole: a panic elsewhere cannot leave them torn.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A fast-path write in progress; returned on drop.
pub struct Ticket {
    iso: Arc<Isolation>,
    tables: Option<Vec<String>>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        {
            let mut st = self.iso.lock();
            match &self.tables {
                None => st.unparsed -= 1,
                Some(tables) => {
                    for t in tables {
                        if let Some(n) = st.by_table.get_mut(t) {
                            *n -= 1;
                            if *n == 0 {
                                st.by_table.remove(t);
                            }
                        }
                    }
                }
            }
        }
        self.iso.returned.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_newly_locked_table_is_confirmed_after_its_running_writes() {
        let iso = Arc::new(Isolation::default());
        let Admission::Fast(unparsed) = iso.admit_unparsed() else {
            panic!("nothing locked: fast")
        };
        assert!(iso.update(vec!["s.t".to_string()]) == ["s.t"]);
        assert!(matches!(iso.admit_unparsed(), Admission::NeedTables));
        assert!(matches!(iso.admit(&["s.t".into()]), Admission::Locked));
        let Admission::Fast(other) = iso.admit(&["s.u".into()]) else {
            panic!("s.u is not locked")
        };
        let added = ["s.t".to_string()];
        let drain = iso.drain(&added);
        tokio::pin!(drain);
        assert!(
            futures::poll!(&mut drain).is_pending(),
            "an unparsed write may hit s.t"
        );
        drop(other);
        assert!(futures::poll!(&mut drain).is_pending());
        drop(unparsed);
        drain.await;
        assert!(iso.update(Vec::<String>::new()).is_empty());
        assert!(!iso.any_locked());
    }
}
