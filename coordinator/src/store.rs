//! Durable state on redb. One write transaction (one fsync) per batch of commands, made
//! by the sequencer thread only. Tables hold materialized records, not a log: the
//! state machine's commands are the replication unit, these tables are what applying
//! them leaves behind.
//!
//! - `active`: xid → unfinished session (with branches and lock keys); locks are
//!   re-derived from it on start.
//! - `finished`: xid → finished session, kept for the retention period;
//!   `finished_by_time`: (finished_ms, xid) makes pruning a range scan.
//! - `conflicts`: id → dirty-write conflict (kept for audit).
//! - `meta`: id counters, so XIDs and branch ids are never reused.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::CoordinatorError;
use crate::session::{Conflict, Counters, SessionRecord, Status, Writes, XidNum};

const ACTIVE: TableDefinition<u64, &[u8]> = TableDefinition::new("active");
const FINISHED: TableDefinition<u64, &[u8]> = TableDefinition::new("finished");
const FINISHED_BY_TIME: TableDefinition<(u64, u64), ()> = TableDefinition::new("finished_by_time");
const CONFLICTS: TableDefinition<u64, &[u8]> = TableDefinition::new("conflicts");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

pub struct Store {
    db: Database,
}

pub struct Loaded {
    pub counters: Counters,
    pub active: Vec<SessionRecord>,
    pub conflicts: Vec<Conflict>,
}

fn corrupt(e: serde_json::Error) -> CoordinatorError {
    CoordinatorError::Storage(format!("undecodable record: {e}"))
}

fn storage<E: Into<redb::Error>>(e: E) -> CoordinatorError {
    CoordinatorError::from(e.into())
}

impl Store {
    pub fn open(dir: &Path) -> Result<(Store, Loaded), CoordinatorError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| CoordinatorError::Storage(format!("creating {}: {e}", dir.display())))?;
        let db = Database::create(dir.join("coordinator.redb")).map_err(storage)?;
        let txn = db.begin_write().map_err(storage)?;
        {
            txn.open_table(ACTIVE).map_err(storage)?;
            txn.open_table(FINISHED).map_err(storage)?;
            txn.open_table(FINISHED_BY_TIME).map_err(storage)?;
            txn.open_table(CONFLICTS).map_err(storage)?;
            txn.open_table(META).map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        let store = Store { db };
        let loaded = store.load()?;
        Ok((store, loaded))
    }

    fn load(&self) -> Result<Loaded, CoordinatorError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let meta = txn.open_table(META).map_err(storage)?;
        let counters = match meta.get("counters").map_err(storage)? {
            Some(v) => serde_json::from_slice(v.value()).map_err(corrupt)?,
            None => Counters::default(),
        };
        let mut active = Vec::new();
        for row in txn
            .open_table(ACTIVE)
            .map_err(storage)?
            .iter()
            .map_err(storage)?
        {
            let (_, v) = row.map_err(storage)?;
            active.push(serde_json::from_slice(v.value()).map_err(corrupt)?);
        }
        let mut conflicts = Vec::new();
        for row in txn
            .open_table(CONFLICTS)
            .map_err(storage)?
            .iter()
            .map_err(storage)?
        {
            let (_, v) = row.map_err(storage)?;
            conflicts.push(serde_json::from_slice(v.value()).map_err(corrupt)?);
        }
        Ok(Loaded {
            counters,
            active,
            conflicts,
        })
    }

    /// Makes a batch durable (returns after fsync).
    pub fn write(&self, w: &Writes) -> Result<(), CoordinatorError> {
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut active = txn.open_table(ACTIVE).map_err(storage)?;
            for (xid, bytes) in &w.active {
                active.insert(*xid, bytes.as_slice()).map_err(storage)?;
            }
            let mut finished = txn.open_table(FINISHED).map_err(storage)?;
            let mut by_time = txn.open_table(FINISHED_BY_TIME).map_err(storage)?;
            for (xid, at, bytes) in &w.finished {
                active.remove(*xid).map_err(storage)?;
                finished.insert(*xid, bytes.as_slice()).map_err(storage)?;
                by_time.insert((*at, *xid), ()).map_err(storage)?;
            }
            let mut conflicts = txn.open_table(CONFLICTS).map_err(storage)?;
            for (id, bytes) in &w.conflicts {
                conflicts.insert(*id, bytes.as_slice()).map_err(storage)?;
            }
            if let Some(c) = &w.counters {
                let bytes = serde_json::to_vec(c).expect("counters serialize");
                txn.open_table(META)
                    .map_err(storage)?
                    .insert("counters", bytes.as_slice())
                    .map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)?;
        Ok(())
    }

    pub fn finished(&self, xid: XidNum) -> Result<Option<SessionRecord>, CoordinatorError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(FINISHED).map_err(storage)?;
        match table.get(xid).map_err(storage)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(corrupt)?)),
            None => Ok(None),
        }
    }

    /// Finished sessions, newest first, optionally of one status.
    pub fn list_finished(
        &self,
        status: Option<Status>,
        limit: usize,
    ) -> Result<Vec<SessionRecord>, CoordinatorError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(FINISHED).map_err(storage)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(storage)?.rev() {
            if out.len() >= limit {
                break;
            }
            let (_, v) = row.map_err(storage)?;
            let rec: SessionRecord = serde_json::from_slice(v.value()).map_err(corrupt)?;
            if status.is_none_or(|s| s == rec.status) {
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// Deletes finished sessions that finished before `before_ms`; returns how many.
    pub fn prune(&self, before_ms: u64) -> Result<usize, CoordinatorError> {
        let txn = self.db.begin_write().map_err(storage)?;
        let mut n = 0;
        {
            let mut by_time = txn.open_table(FINISHED_BY_TIME).map_err(storage)?;
            let mut finished = txn.open_table(FINISHED).map_err(storage)?;
            let old: Vec<(u64, u64)> = by_time
                .range((0, 0)..(before_ms, 0))
                .map_err(storage)?
                .filter_map(|r| r.ok().map(|(k, _)| k.value()))
                .collect();
            for (at, xid) in old {
                by_time.remove((at, xid)).map_err(storage)?;
                finished.remove(xid).map_err(storage)?;
                n += 1;
            }
        }
        txn.commit().map_err(storage)?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(xid: XidNum, status: Status) -> SessionRecord {
        SessionRecord {
            xid,
            name: String::new(),
            status,
            timed_out: false,
            created_ms: 0,
            deadline_ms: 0,
            updated_ms: 0,
            finished_ms: Some(xid * 10),
            branches: vec![],
        }
    }

    #[test]
    fn finished_sessions_listed_newest_first_and_pruned_by_age() {
        let dir = std::env::temp_dir().join(format!(
            "rewind-store-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let (store, loaded) = Store::open(&dir).unwrap();
        assert!(loaded.active.is_empty());
        let mut w = Writes::default();
        for x in 1..=5 {
            w.active
                .push((x, serde_json::to_vec(&rec(x, Status::Begin)).unwrap()));
        }
        w.counters = Some(Counters {
            next_xid: 6,
            next_branch: 1,
            next_conflict: 1,
        });
        store.write(&w).unwrap();
        let mut w = Writes::default();
        for x in 1..=4 {
            let st = if x % 2 == 0 {
                Status::Committed
            } else {
                Status::RolledBack
            };
            w.finished
                .push((x, x * 10, serde_json::to_vec(&rec(x, st)).unwrap()));
        }
        store.write(&w).unwrap();
        drop(store);
        let (store, loaded) = Store::open(&dir).unwrap();
        assert_eq!(
            loaded.active.len(),
            1,
            "finished ones left the active table"
        );
        assert_eq!(loaded.counters.next_xid, 6);
        let all: Vec<_> = store
            .list_finished(None, 10)
            .unwrap()
            .iter()
            .map(|r| r.xid)
            .collect();
        assert_eq!(all, vec![4, 3, 2, 1]);
        let committed: Vec<_> = store
            .list_finished(Some(Status::Committed), 10)
            .unwrap()
            .iter()
            .map(|r| r.xid)
            .collect();
        assert_eq!(committed, vec![4, 2]);
        assert_eq!(store.prune(25).unwrap(), 2);
        assert!(store.finished(1).unwrap().is_none());
        assert!(store.finished(3).unwrap().is_some());
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
