//! Durable state: redb tables behind a write-ahead log ([`crate::wal`]). Each batch of
//! the sequencer is one log record (one `fdatasync`) merged into an in-memory overlay
//! ([`Pending`]) that reads consult first; when the log is full, the overlay is written
//! to redb in one durable commit (a checkpoint) and the log starts over. A transaction that
//! begins and finishes between checkpoints thus costs redb only its final record.
//! Tables hold materialized records: the state machine's commands are the replication
//! unit, these tables are what applying them leaves behind.
//!
//! - `active`: xid → unfinished global transaction (with branches and lock keys); locks are
//!   re-derived from it on start.
//! - `finished`: xid → finished global transaction, kept for the retention period;
//!   `finished_by_time`: (finished_ms, xid) makes pruning a range scan.
//! - `conflicts`: id → dirty-write conflict (kept for audit).
//! - `audit`: id → operator action (kept; operator actions are few).
//! - `meta`: id counters, so XIDs and branch ids are never reused.
//! - `messages`: message id → half message; `messages_by_time`: (created_ms, id) for
//!   listing and pruning; `messages_in_memory`: the ids the engine still holds (not final,
//!   or final only moments ago), restored into it on start.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};

use crate::engine::{
    AuditEntry, Conflict, ConsumedItem, Counters, GlobalRecord, GlobalStatus, MessageRecord,
    MessageStatus, MessageWrite, Writes, XidNum, AUDIT_IN_MEMORY,
};
use crate::error::CoordinatorError;
use crate::wal::Wal;

const ACTIVE: TableDefinition<u64, &[u8]> = TableDefinition::new("active");
const FINISHED: TableDefinition<u64, &[u8]> = TableDefinition::new("finished");
const FINISHED_BY_TIME: TableDefinition<(u64, u64), ()> = TableDefinition::new("finished_by_time");
const CONFLICTS: TableDefinition<u64, &[u8]> = TableDefinition::new("conflicts");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const MESSAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("messages");
const MESSAGES_BY_TIME: TableDefinition<(u64, &str), ()> = TableDefinition::new("messages_by_time");
const MESSAGES_IN_MEMORY: TableDefinition<&str, ()> = TableDefinition::new("messages_in_memory");

/// Messages one list scans at most in the store (a filter on a rare status stops there).
const MESSAGE_SCAN_LIMIT: usize = 50_000;

pub struct Store {
    db: Database,
    log: Mutex<Log>,
    /// Logged but not yet checkpointed. Lock order: `log`, then `pending`.
    pending: Mutex<Pending>,
    /// Batches taken from the engine (see [`Store::announce`]) whose write has not
    /// finished: while it is 0, a transaction missing from the engine is not in flight.
    in_flight: std::sync::atomic::AtomicU64,
}

/// Net effect of the batches logged since the last checkpoint.
#[derive(Default)]
struct Pending {
    /// `None`: delete (the transaction finished).
    active: HashMap<XidNum, Option<Vec<u8>>>,
    finished: BTreeMap<XidNum, (u64, Vec<u8>)>,
    conflicts: HashMap<u64, Vec<u8>>,
    audit: BTreeMap<u64, Vec<u8>>,
    counters: Option<Counters>,
    raft: Option<Vec<u8>>,
    /// Message id → (created_ms, record, still in the engine's memory).
    messages: BTreeMap<String, (u64, Vec<u8>, bool)>,
}

impl Pending {
    fn merge_messages(&mut self, writes: &[MessageWrite]) {
        for m in writes {
            self.messages.insert(
                m.message_id.clone(),
                (m.created_ms, m.record.clone(), m.in_memory),
            );
        }
    }

    fn merge(&mut self, w: &Writes) {
        self.merge_messages(&w.messages);
        for (xid, b) in &w.active {
            self.active.insert(*xid, Some(b.clone()));
        }
        for (xid, at, b) in &w.finished {
            self.active.insert(*xid, None);
            self.finished.insert(*xid, (*at, b.clone()));
        }
        for (id, b) in &w.conflicts {
            self.conflicts.insert(*id, b.clone());
        }
        for (id, b) in &w.audit {
            self.audit.insert(*id, b.clone());
        }
        if w.counters.is_some() {
            self.counters = w.counters;
        }
        if w.raft.is_some() {
            self.raft = w.raft.clone();
        }
    }
}

struct Log {
    wal: Wal,
    /// Sequence number of the last batch written.
    lsn: u64,
}

pub struct Loaded {
    pub counters: Counters,
    pub active: Vec<GlobalRecord>,
    pub conflicts: Vec<Conflict>,
    /// The latest audit entries, oldest first.
    pub audit: Vec<AuditEntry>,
    /// Cluster mode: where in the Raft log this state stands (see [`Writes::raft`]).
    pub raft: Option<Vec<u8>>,
    /// The half messages the engine held when it stopped.
    pub messages: Vec<MessageRecord>,
}

fn corrupt(e: serde_json::Error) -> CoordinatorError {
    CoordinatorError::Storage(format!("undecodable record: {e}"))
}

fn storage<E: Into<redb::Error>>(e: E) -> CoordinatorError {
    CoordinatorError::from(e.into())
}

impl Store {
    pub fn open(dir: &Path, wal_bytes: u64) -> Result<(Store, Loaded), CoordinatorError> {
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
            txn.open_table(AUDIT).map_err(storage)?;
            txn.open_table(MESSAGES).map_err(storage)?;
            txn.open_table(MESSAGES_BY_TIME).map_err(storage)?;
            txn.open_table(MESSAGES_IN_MEMORY).map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        let checkpoint = {
            let txn = db.begin_read().map_err(storage)?;
            let meta = txn.open_table(META).map_err(storage)?;
            let v = meta.get("checkpoint_lsn").map_err(storage)?;
            v.map(|v| u64::from_le_bytes(v.value().try_into().unwrap_or([0; 8])))
                .unwrap_or(0)
        };
        let wal_path = dir.join("coordinator.wal");
        let (mut wal, records) = Wal::open(&wal_path, wal_bytes, checkpoint).map_err(|e| {
            CoordinatorError::Storage(format!("write-ahead log {}: {e}", wal_path.display()))
        })?;
        let mut lsn = checkpoint;
        if let Some((last, _)) = records.last() {
            // Replay what was acknowledged after the last checkpoint, then checkpoint.
            tracing::info!(
                records = records.len(),
                from = checkpoint + 1,
                to = last,
                "replaying write-ahead log"
            );
            let mut replay = Pending::default();
            for (_, payload) in &records {
                replay.merge(&decode_writes(payload)?);
            }
            let txn = db.begin_write().map_err(storage)?;
            apply(&txn, &replay)?;
            lsn = *last;
            set_checkpoint(&txn, lsn)?;
            txn.commit().map_err(storage)?;
        }
        wal.restart_after_recovery().map_err(|e| {
            CoordinatorError::Storage(format!("write-ahead log {}: {e}", wal_path.display()))
        })?;
        let store = Store {
            in_flight: Default::default(),
            pending: Mutex::new(Pending::default()),
            db,
            log: Mutex::new(Log { wal, lsn }),
        };
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
        let mut audit = Vec::new();
        for row in txn
            .open_table(AUDIT)
            .map_err(storage)?
            .iter()
            .map_err(storage)?
            .rev()
            .take(AUDIT_IN_MEMORY)
        {
            let (_, v) = row.map_err(storage)?;
            audit.push(serde_json::from_slice(v.value()).map_err(corrupt)?);
        }
        audit.reverse();
        let raft = meta
            .get("raft_applied")
            .map_err(storage)?
            .map(|v| v.value().to_vec());
        let mut messages = Vec::new();
        let records = txn.open_table(MESSAGES).map_err(storage)?;
        for row in txn
            .open_table(MESSAGES_IN_MEMORY)
            .map_err(storage)?
            .iter()
            .map_err(storage)?
        {
            let (id, _) = row.map_err(storage)?;
            if let Some(v) = records.get(id.value()).map_err(storage)? {
                messages.push(serde_json::from_slice(v.value()).map_err(corrupt)?);
            }
        }
        Ok(Loaded {
            counters,
            active,
            conflicts,
            audit,
            raft,
            messages,
        })
    }

    /// Called with the engine locked, right after its writes were taken: a batch is on
    /// its way to [`Store::write`]. Readers that find a transaction neither in the engine
    /// nor here know from [`Store::batches_in_flight`] whether to wait for it.
    pub fn announce(&self) {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    pub fn batches_in_flight(&self) -> u64 {
        self.in_flight.load(std::sync::atomic::Ordering::Acquire)
    }

    /// [`Store::write_with`] synced (tests).
    #[cfg(test)]
    pub fn write(&self, w: &Writes) -> Result<(), CoordinatorError> {
        self.write_with(w, true)
    }

    /// Makes every batch written so far durable, those written without a sync included.
    pub fn sync(&self) -> Result<(), CoordinatorError> {
        let mut log = self.log.lock().expect("log lock");
        log.wal.sync().map_err(|e| {
            CoordinatorError::Storage(format!("syncing {}: {e}", log.wal.path().display()))
        })
    }

    /// Makes a batch durable (returns after its log record is on disk), or (`sync`
    /// false) writes a batch whose loss in a crash is harmless: it becomes durable with
    /// the next synced batch or [`Store::sync`], and a crash before that loses it with
    /// nothing after it (see [`crate::engine::Command::needs_sync`], and the cluster's
    /// state machine, whose Raft log holds what its batches reflect). Ends an
    /// [`Store::announce`]d batch, failed or not.
    pub fn write_with(&self, w: &Writes, sync: bool) -> Result<(), CoordinatorError> {
        let r = self.write_inner(w, sync);
        // Saturating: writes made without an announcement (tests) do not wrap it.
        let _ = self.in_flight.fetch_update(
            std::sync::atomic::Ordering::AcqRel,
            std::sync::atomic::Ordering::Acquire,
            |n| Some(n.saturating_sub(1)),
        );
        r
    }

    fn write_inner(&self, w: &Writes, sync: bool) -> Result<(), CoordinatorError> {
        let mut log = self.log.lock().expect("log lock");
        // Consumed reports for messages only the store holds become whole records here,
        // under the log lock, so the log replays records, never read-modify-writes.
        let consumed = self.consumed_writes(&w.consumed)?;
        let payload = encode_writes(w, &consumed);
        let lsn = log.lsn + 1;
        if log.wal.fits(payload.len()) {
            log.wal.append_with(lsn, &payload, sync).map_err(|e| {
                CoordinatorError::Storage(format!("appending to {}: {e}", log.wal.path().display()))
            })?;
            let mut pending = self.pending.lock().expect("pending lock");
            pending.merge(w);
            pending.merge_messages(&consumed);
        } else {
            // Log full: checkpoint everything logged so far plus this batch in one
            // durable redb commit. Readers wait on `pending` meanwhile, so they never
            // see a record vanish from the overlay before it is in redb.
            let mut pending = self.pending.lock().expect("pending lock");
            pending.merge(w);
            pending.merge_messages(&consumed);
            let txn = self.db.begin_write().map_err(storage)?;
            apply(&txn, &pending)?;
            set_checkpoint(&txn, lsn)?;
            txn.commit().map_err(storage)?;
            *pending = Pending::default();
            log.wal.restart();
        }
        log.lsn = lsn;
        Ok(())
    }

    /// The records of stored messages marked consumed by `items` (those that change).
    fn consumed_writes(
        &self,
        items: &[ConsumedItem],
    ) -> Result<Vec<MessageWrite>, CoordinatorError> {
        let mut out: Vec<MessageWrite> = Vec::new();
        for item in items {
            let known = out.iter().position(|m| m.message_id == item.message_id);
            let mut rec = match known {
                Some(i) => serde_json::from_slice(&out[i].record).map_err(corrupt)?,
                None => match self.message(&item.message_id)? {
                    Some(r) => r,
                    None => continue,
                },
            };
            if !crate::engine::messages::consume_stored(&mut rec, item) {
                continue;
            }
            let w = MessageWrite {
                message_id: rec.message_id.clone(),
                created_ms: rec.created_ms,
                record: serde_json::to_vec(&rec).expect("records serialize"),
                in_memory: false,
            };
            match known {
                Some(i) => out[i] = w,
                None => out.push(w),
            }
        }
        Ok(out)
    }

    /// A stored message (the engine's memory has the newer state of the ones it holds).
    pub fn message(&self, id: &str) -> Result<Option<MessageRecord>, CoordinatorError> {
        if let Some((_, b, _)) = self.pending.lock().expect("pending lock").messages.get(id) {
            return Ok(Some(serde_json::from_slice(b).map_err(corrupt)?));
        }
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(MESSAGES).map_err(storage)?;
        match table.get(id).map_err(storage)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(corrupt)?)),
            None => Ok(None),
        }
    }

    /// Stored messages, newest first, optionally of one status, older than the cursor
    /// `before` = (created_ms, message_id) of the last one a page showed (ties on the
    /// millisecond are ordered by id, so no page skips one).
    pub fn list_messages(
        &self,
        status: Option<MessageStatus>,
        before: Option<(u64, &str)>,
        limit: usize,
    ) -> Result<Vec<MessageRecord>, CoordinatorError> {
        let (before, before_id) = before.unwrap_or((u64::MAX, ""));
        let older = |at: u64, id: &str| (at, id) < (before, before_id);
        let mut out: BTreeMap<(u64, String), MessageRecord> = BTreeMap::new();
        let keep = |r: &MessageRecord| status.is_none_or(|s| s == r.status);
        let overlay: Vec<Vec<u8>> = {
            let p = self.pending.lock().expect("pending lock");
            p.messages
                .iter()
                .filter(|(id, (at, _, _))| older(*at, id))
                .map(|(_, (_, b, _))| b.clone())
                .collect()
        };
        for b in overlay {
            let r: MessageRecord = serde_json::from_slice(&b).map_err(corrupt)?;
            if keep(&r) {
                out.insert((r.created_ms, r.message_id.clone()), r);
            }
        }
        let txn = self.db.begin_read().map_err(storage)?;
        let by_time = txn.open_table(MESSAGES_BY_TIME).map_err(storage)?;
        let records = txn.open_table(MESSAGES).map_err(storage)?;
        let mut found = 0;
        for row in by_time
            .range(..(before, before_id))
            .map_err(storage)?
            .rev()
            .take(MESSAGE_SCAN_LIMIT)
        {
            if found >= limit {
                break;
            }
            let (k, _) = row.map_err(storage)?;
            let (at, id) = k.value();
            if out.contains_key(&(at, id.to_string())) {
                continue;
            }
            if let Some(v) = records.get(id).map_err(storage)? {
                let r: MessageRecord = serde_json::from_slice(v.value()).map_err(corrupt)?;
                if keep(&r) {
                    found += 1;
                    out.insert((at, id.to_string()), r);
                }
            }
        }
        Ok(out.into_values().rev().take(limit).collect())
    }

    /// Every stored message the engine does not hold (for a cluster snapshot).
    pub fn messages_not_in_memory(&self) -> Result<Vec<MessageRecord>, CoordinatorError> {
        let _log = self.log.lock().expect("log lock");
        let mut out: BTreeMap<String, MessageRecord> = BTreeMap::new();
        let txn = self.db.begin_read().map_err(storage)?;
        let in_memory = txn.open_table(MESSAGES_IN_MEMORY).map_err(storage)?;
        for row in txn
            .open_table(MESSAGES)
            .map_err(storage)?
            .iter()
            .map_err(storage)?
        {
            let (id, v) = row.map_err(storage)?;
            if in_memory.get(id.value()).map_err(storage)?.is_none() {
                let r: MessageRecord = serde_json::from_slice(v.value()).map_err(corrupt)?;
                out.insert(r.message_id.clone(), r);
            }
        }
        for (id, (_, b, mem)) in &self.pending.lock().expect("pending lock").messages {
            if *mem {
                out.remove(id);
            } else {
                out.insert(id.clone(), serde_json::from_slice(b).map_err(corrupt)?);
            }
        }
        Ok(out.into_values().collect())
    }

    pub fn finished(&self, xid: XidNum) -> Result<Option<GlobalRecord>, CoordinatorError> {
        if let Some((_, b)) = self
            .pending
            .lock()
            .expect("pending lock")
            .finished
            .get(&xid)
        {
            return Ok(Some(serde_json::from_slice(b).map_err(corrupt)?));
        }
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(FINISHED).map_err(storage)?;
        match table.get(xid).map_err(storage)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(corrupt)?)),
            None => Ok(None),
        }
    }

    /// Finished transactions, newest first, optionally of one status and older than
    /// `before` (a page cursor).
    pub fn list_finished(
        &self,
        status: Option<GlobalStatus>,
        before: Option<XidNum>,
        limit: usize,
    ) -> Result<Vec<GlobalRecord>, CoordinatorError> {
        let before = before.unwrap_or(u64::MAX);
        let mut out = Vec::new();
        {
            let pending = self.pending.lock().expect("pending lock");
            for (_, b) in pending.finished.range(..before).map(|(_, v)| v).rev() {
                if out.len() >= limit {
                    break;
                }
                let rec: GlobalRecord = serde_json::from_slice(b).map_err(corrupt)?;
                if status.is_none_or(|s| s == rec.status) {
                    out.push(rec);
                }
            }
        }
        let from_overlay = out.len();
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(FINISHED).map_err(storage)?;
        for row in table.range(..before).map_err(storage)?.rev() {
            if out.len() >= limit + from_overlay {
                break;
            }
            if out.len() >= limit {
                break;
            }
            let (_, v) = row.map_err(storage)?;
            let rec: GlobalRecord = serde_json::from_slice(v.value()).map_err(corrupt)?;
            if status.is_none_or(|s| s == rec.status) {
                out.push(rec);
            }
        }
        out.sort_by_key(|r| std::cmp::Reverse(r.xid));
        out.dedup_by_key(|r| r.xid);
        out.truncate(limit);
        Ok(out)
    }

    /// Every finished transaction kept (for a cluster snapshot), oldest first.
    pub fn all_finished(&self) -> Result<Vec<(XidNum, u64, Vec<u8>)>, CoordinatorError> {
        let _log = self.log.lock().expect("log lock");
        let mut out: BTreeMap<XidNum, (u64, Vec<u8>)> = BTreeMap::new();
        let txn = self.db.begin_read().map_err(storage)?;
        let by_time = txn.open_table(FINISHED_BY_TIME).map_err(storage)?;
        let finished = txn.open_table(FINISHED).map_err(storage)?;
        for row in by_time.iter().map_err(storage)? {
            let (k, _) = row.map_err(storage)?;
            let (at, xid) = k.value();
            if let Some(v) = finished.get(xid).map_err(storage)? {
                out.insert(xid, (at, v.value().to_vec()));
            }
        }
        for (xid, (at, b)) in &self.pending.lock().expect("pending lock").finished {
            out.insert(*xid, (*at, b.clone()));
        }
        Ok(out.into_iter().map(|(x, (at, b))| (x, at, b)).collect())
    }

    /// Replaces the whole state with `w` (a cluster snapshot being installed), in one
    /// durable commit that also supersedes everything in the write-ahead log.
    pub fn replace_all(&self, w: &Writes) -> Result<(), CoordinatorError> {
        let mut log = self.log.lock().expect("log lock");
        let mut pending = self.pending.lock().expect("pending lock");
        let txn = self.db.begin_write().map_err(storage)?;
        for t in [ACTIVE, CONFLICTS, AUDIT, FINISHED] {
            let mut table = txn.open_table(t).map_err(storage)?;
            table.retain(|_, _| false).map_err(storage)?;
        }
        txn.open_table(MESSAGES)
            .map_err(storage)?
            .retain(|_, _| false)
            .map_err(storage)?;
        txn.open_table(MESSAGES_BY_TIME)
            .map_err(storage)?
            .retain(|_, _| false)
            .map_err(storage)?;
        txn.open_table(MESSAGES_IN_MEMORY)
            .map_err(storage)?
            .retain(|_, _| false)
            .map_err(storage)?;
        txn.open_table(FINISHED_BY_TIME)
            .map_err(storage)?
            .retain(|_, _| false)
            .map_err(storage)?;
        let mut fresh = Pending::default();
        fresh.merge(w);
        apply(&txn, &fresh)?;
        let lsn = log.lsn + 1;
        set_checkpoint(&txn, lsn)?;
        txn.commit().map_err(storage)?;
        *pending = Pending::default();
        log.wal.restart();
        log.lsn = lsn;
        Ok(())
    }

    /// Deletes finished transactions that finished before `before_ms`; returns how many.
    pub fn prune(&self, before_ms: u64) -> Result<usize, CoordinatorError> {
        // Not logged: a prune lost in a crash is simply done again by the next one.
        // Serialized with `write` so a checkpoint never races it.
        let _log = self.log.lock().expect("log lock");
        let mut txn = self.db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::None)
            .map_err(|e| CoordinatorError::Storage(e.to_string()))?;
        let mut n = 0;
        {
            let mut by_time = txn.open_table(FINISHED_BY_TIME).map_err(storage)?;
            let mut finished = txn.open_table(FINISHED).map_err(storage)?;
            let old: Vec<(u64, u64)> = by_time
                .range((0, 0)..(before_ms, 0))
                .map_err(storage)?
                .filter_map(|r| r.ok().map(|(k, _)| k.value()))
                // Bounded: the sequencer waits while this runs; the rest goes next time.
                .take(10_000)
                .collect();
            for (at, xid) in old {
                by_time.remove((at, xid)).map_err(storage)?;
                finished.remove(xid).map_err(storage)?;
                n += 1;
            }
            // Messages created before the cut that the engine no longer holds.
            let mut by_time = txn.open_table(MESSAGES_BY_TIME).map_err(storage)?;
            let mut records = txn.open_table(MESSAGES).map_err(storage)?;
            let in_memory = txn.open_table(MESSAGES_IN_MEMORY).map_err(storage)?;
            let pending = self.pending.lock().expect("pending lock");
            let mut old: Vec<(u64, String)> = Vec::new();
            for row in by_time
                .range((0, "")..(before_ms, ""))
                .map_err(storage)?
                .take(10_000)
            {
                let (k, _) = row.map_err(storage)?;
                let (at, id) = k.value();
                let held = in_memory.get(id).map_err(storage)?.is_some()
                    || pending.messages.contains_key(id);
                if !held {
                    old.push((at, id.to_string()));
                }
            }
            for (at, id) in old {
                by_time.remove((at, id.as_str())).map_err(storage)?;
                records.remove(id.as_str()).map_err(storage)?;
                n += 1;
            }
        }
        txn.commit().map_err(storage)?;
        Ok(n)
    }
}

fn set_checkpoint(txn: &WriteTransaction, lsn: u64) -> Result<(), CoordinatorError> {
    txn.open_table(META)
        .map_err(storage)?
        .insert("checkpoint_lsn", lsn.to_le_bytes().as_slice())
        .map_err(storage)?;
    Ok(())
}

/// Writes the net effect of logged batches into the tables (idempotent).
fn apply(txn: &WriteTransaction, p: &Pending) -> Result<(), CoordinatorError> {
    let mut active = txn.open_table(ACTIVE).map_err(storage)?;
    for (xid, v) in &p.active {
        match v {
            Some(bytes) => active.insert(*xid, bytes.as_slice()).map_err(storage)?,
            None => active.remove(*xid).map_err(storage)?,
        };
    }
    let mut finished = txn.open_table(FINISHED).map_err(storage)?;
    let mut by_time = txn.open_table(FINISHED_BY_TIME).map_err(storage)?;
    for (xid, (at, bytes)) in &p.finished {
        finished.insert(*xid, bytes.as_slice()).map_err(storage)?;
        by_time.insert((*at, *xid), ()).map_err(storage)?;
    }
    let mut conflicts = txn.open_table(CONFLICTS).map_err(storage)?;
    for (id, bytes) in &p.conflicts {
        conflicts.insert(*id, bytes.as_slice()).map_err(storage)?;
    }
    let mut audit = txn.open_table(AUDIT).map_err(storage)?;
    for (id, bytes) in &p.audit {
        audit.insert(*id, bytes.as_slice()).map_err(storage)?;
    }
    if let Some(c) = &p.counters {
        let bytes = serde_json::to_vec(c).expect("counters serialize");
        txn.open_table(META)
            .map_err(storage)?
            .insert("counters", bytes.as_slice())
            .map_err(storage)?;
    }
    let mut messages = txn.open_table(MESSAGES).map_err(storage)?;
    let mut by_time = txn.open_table(MESSAGES_BY_TIME).map_err(storage)?;
    let mut in_memory = txn.open_table(MESSAGES_IN_MEMORY).map_err(storage)?;
    for (id, (at, bytes, mem)) in &p.messages {
        messages
            .insert(id.as_str(), bytes.as_slice())
            .map_err(storage)?;
        by_time.insert((*at, id.as_str()), ()).map_err(storage)?;
        if *mem {
            in_memory.insert(id.as_str(), ()).map_err(storage)?;
        } else {
            in_memory.remove(id.as_str()).map_err(storage)?;
        }
    }
    if let Some(r) = &p.raft {
        txn.open_table(META)
            .map_err(storage)?
            .insert("raft_applied", r.as_slice())
            .map_err(storage)?;
    }
    Ok(())
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// The log record of a batch: counts, fixed-width integers, length-prefixed records.
fn encode_writes(w: &Writes, consumed: &[MessageWrite]) -> Vec<u8> {
    let size: usize = w.active.iter().map(|a| a.1.len() + 12).sum::<usize>()
        + w.finished.iter().map(|f| f.2.len() + 20).sum::<usize>()
        + w.conflicts.iter().map(|c| c.1.len() + 12).sum::<usize>()
        + w.audit.iter().map(|c| c.1.len() + 12).sum::<usize>()
        + 48;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(w.active.len() as u32).to_le_bytes());
    for (xid, b) in &w.active {
        out.extend_from_slice(&xid.to_le_bytes());
        put_bytes(&mut out, b);
    }
    out.extend_from_slice(&(w.finished.len() as u32).to_le_bytes());
    for (xid, at, b) in &w.finished {
        out.extend_from_slice(&xid.to_le_bytes());
        out.extend_from_slice(&at.to_le_bytes());
        put_bytes(&mut out, b);
    }
    out.extend_from_slice(&(w.conflicts.len() as u32).to_le_bytes());
    for (id, b) in &w.conflicts {
        out.extend_from_slice(&id.to_le_bytes());
        put_bytes(&mut out, b);
    }
    // Tag 1 (three counters) is what records written before the audit log carry; 2 has
    // four. Bit 0x10 ("sections") says every later section is written, each with its
    // count: audit entries, the Raft position (a flag, then the bytes), messages. Older
    // records end with optional audit and Raft sections instead, and decode as before.
    let sections = !w.messages.is_empty() || !consumed.is_empty();
    let tag = if w.counters.is_some() { 2 } else { 0 } | if sections { 0x10 } else { 0 };
    out.push(tag);
    if let Some(c) = &w.counters {
        for v in [c.next_xid, c.next_branch, c.next_conflict, c.next_audit] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    if sections {
        out.extend_from_slice(&(w.audit.len() as u32).to_le_bytes());
        for (id, b) in &w.audit {
            out.extend_from_slice(&id.to_le_bytes());
            put_bytes(&mut out, b);
        }
        match &w.raft {
            Some(r) => {
                out.push(1);
                put_bytes(&mut out, r);
            }
            None => out.push(0),
        }
        let all: Vec<&MessageWrite> = w.messages.iter().chain(consumed).collect();
        out.extend_from_slice(&(all.len() as u32).to_le_bytes());
        for m in all {
            put_bytes(&mut out, m.message_id.as_bytes());
            out.extend_from_slice(&m.created_ms.to_le_bytes());
            out.push(m.in_memory as u8);
            put_bytes(&mut out, &m.record);
        }
        return out;
    }
    // Optional trailing sections (absent in older records): audit entries, then (only
    // in cluster mode, and then the audit count is always written) the Raft position.
    if !w.audit.is_empty() || w.raft.is_some() {
        out.extend_from_slice(&(w.audit.len() as u32).to_le_bytes());
        for (id, b) in &w.audit {
            out.extend_from_slice(&id.to_le_bytes());
            put_bytes(&mut out, b);
        }
    }
    if let Some(r) = &w.raft {
        put_bytes(&mut out, r);
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], CoordinatorError> {
        if self.0.len() < n {
            return Err(CoordinatorError::Storage("truncated log record".into()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, CoordinatorError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, CoordinatorError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, CoordinatorError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
}

fn decode_writes(data: &[u8]) -> Result<Writes, CoordinatorError> {
    let mut r = Reader(data);
    let mut w = Writes::default();
    for _ in 0..r.u32()? {
        let xid = r.u64()?;
        w.active.push((xid, r.bytes()?));
    }
    for _ in 0..r.u32()? {
        let (xid, at) = (r.u64()?, r.u64()?);
        w.finished.push((xid, at, r.bytes()?));
    }
    for _ in 0..r.u32()? {
        let id = r.u64()?;
        w.conflicts.push((id, r.bytes()?));
    }
    let tag = r.take(1)?[0];
    match tag & 0x0f {
        0 => {}
        n @ (1 | 2) => {
            w.counters = Some(Counters {
                next_xid: r.u64()?,
                next_branch: r.u64()?,
                next_conflict: r.u64()?,
                next_audit: if n == 2 { r.u64()? } else { 0 },
            });
        }
        _ => {
            return Err(CoordinatorError::Storage(format!(
                "log record with unknown counters tag {tag}"
            )))
        }
    }
    if tag & 0x10 != 0 {
        for _ in 0..r.u32()? {
            let id = r.u64()?;
            w.audit.push((id, r.bytes()?));
        }
        if r.take(1)? == [1] {
            w.raft = Some(r.bytes()?);
        }
        for _ in 0..r.u32()? {
            let id = String::from_utf8(r.bytes()?)
                .map_err(|_| CoordinatorError::Storage("message id not UTF-8".into()))?;
            let created_ms = r.u64()?;
            let in_memory = r.take(1)? == [1];
            w.messages.push(MessageWrite {
                message_id: id,
                created_ms,
                record: r.bytes()?,
                in_memory,
            });
        }
        return Ok(w);
    }
    if tag & !0x1f != 0 {
        return Err(CoordinatorError::Storage(format!(
            "log record with unknown tag {tag}"
        )));
    }
    if !r.0.is_empty() {
        for _ in 0..r.u32()? {
            let id = r.u64()?;
            w.audit.push((id, r.bytes()?));
        }
    }
    if !r.0.is_empty() {
        w.raft = Some(r.bytes()?);
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(xid: XidNum, status: GlobalStatus) -> GlobalRecord {
        GlobalRecord {
            xid,
            name: String::new(),
            status,
            timed_out: false,
            created_ms: 0,
            deadline_ms: 0,
            updated_ms: 0,
            finished_ms: Some(xid * 10),
            history: vec![],
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
        // A tiny log: the second batch does not fit and becomes a checkpoint.
        let (store, loaded) = Store::open(&dir, 1200).unwrap();
        assert!(loaded.active.is_empty());
        let mut w = Writes::default();
        for x in 1..=5 {
            w.active
                .push((x, serde_json::to_vec(&rec(x, GlobalStatus::Begin)).unwrap()));
        }
        w.counters = Some(Counters {
            next_xid: 6,
            next_branch: 1,
            next_conflict: 1,
            next_audit: 1,
        });
        store.write(&w).unwrap();
        let mut w = Writes::default();
        for x in 1..=4 {
            let st = if x % 2 == 0 {
                GlobalStatus::Committed
            } else {
                GlobalStatus::RolledBack
            };
            w.finished
                .push((x, x * 10, serde_json::to_vec(&rec(x, st)).unwrap()));
        }
        store.write(&w).unwrap();
        drop(store);
        let (store, loaded) = Store::open(&dir, 1200).unwrap();
        assert_eq!(
            loaded.active.len(),
            1,
            "finished ones left the active table"
        );
        assert_eq!(loaded.counters.next_xid, 6);
        let all: Vec<_> = store
            .list_finished(None, None, 10)
            .unwrap()
            .iter()
            .map(|r| r.xid)
            .collect();
        assert_eq!(all, vec![4, 3, 2, 1]);
        let committed: Vec<_> = store
            .list_finished(Some(GlobalStatus::Committed), None, 10)
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

    #[test]
    fn overlay_answers_reads_and_replays_after_reopen() {
        let dir = std::env::temp_dir().join(format!(
            "rewind-store-ov-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let (store, _) = Store::open(&dir, 1 << 20).unwrap();
        let mut w = Writes::default();
        w.active
            .push((1, serde_json::to_vec(&rec(1, GlobalStatus::Begin)).unwrap()));
        w.active
            .push((2, serde_json::to_vec(&rec(2, GlobalStatus::Begin)).unwrap()));
        w.counters = Some(Counters {
            next_xid: 3,
            next_branch: 1,
            next_conflict: 1,
            next_audit: 1,
        });
        store.write(&w).unwrap();
        let mut w = Writes::default();
        w.finished.push((
            1,
            10,
            serde_json::to_vec(&rec(1, GlobalStatus::Committed)).unwrap(),
        ));
        let entry = AuditEntry {
            id: 1,
            at_ms: 5,
            who: "alice".into(),
            action: "resolve keep_current".into(),
            target: "conflict 3".into(),
            result: "ok".into(),
        };
        w.audit.push((1, serde_json::to_vec(&entry).unwrap()));
        store.write(&w).unwrap();
        // Not in redb yet: answered from the overlay.
        assert_eq!(
            store.finished(1).unwrap().unwrap().status,
            GlobalStatus::Committed
        );
        assert_eq!(store.list_finished(None, None, 10).unwrap().len(), 1);
        // "Crash": reopen from the log alone.
        drop(store);
        let (store, loaded) = Store::open(&dir, 1 << 20).unwrap();
        assert_eq!(
            loaded.active.iter().map(|r| r.xid).collect::<Vec<_>>(),
            vec![2]
        );
        assert_eq!(loaded.counters.next_xid, 3);
        assert_eq!(
            loaded.audit,
            vec![entry],
            "audit entries replay from the log"
        );
        assert_eq!(
            store.finished(1).unwrap().unwrap().status,
            GlobalStatus::Committed
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn msg(id: &str, created_ms: u64, status: MessageStatus) -> MessageRecord {
        MessageRecord {
            message_id: id.into(),
            topic: "t".into(),
            key: None,
            payload: "p".into(),
            headers: vec![],
            status,
            resource_id: None,
            proxy_id: None,
            xid: None,
            branch_id: None,
            check_after_ms: 5000,
            created_ms,
            updated_ms: created_ms,
            checks: 0,
            publish_failures: 0,
            last_error: None,
            consumers: vec![],
            history: vec![],
        }
    }

    fn mw(m: &MessageRecord, in_memory: bool) -> MessageWrite {
        MessageWrite {
            message_id: m.message_id.clone(),
            created_ms: m.created_ms,
            record: serde_json::to_vec(m).unwrap(),
            in_memory,
        }
    }

    #[test]
    fn messages_replay_list_consume_and_prune() {
        let dir = std::env::temp_dir().join(format!(
            "rewind-store-msg-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let (store, _) = Store::open(&dir, 1 << 20).unwrap();
        let mut w = Writes::default();
        w.messages
            .push(mw(&msg("a", 10, MessageStatus::Prepared), true));
        w.messages
            .push(mw(&msg("b", 20, MessageStatus::Sent), false));
        w.messages
            .push(mw(&msg("c", 30, MessageStatus::Cancelled), false));
        store.write(&w).unwrap();
        // A consumer's report for a message only the store has becomes its record.
        let mut w = Writes::default();
        w.consumed.push(ConsumedItem {
            message_id: "b".into(),
            consumer: "billing".into(),
            at_ms: 25,
        });
        // … but never for a cancelled one.
        w.consumed.push(ConsumedItem {
            message_id: "c".into(),
            consumer: "billing".into(),
            at_ms: 35,
        });
        store.write(&w).unwrap();
        drop(store);
        // Replayed from the log alone.
        let (store, loaded) = Store::open(&dir, 1 << 20).unwrap();
        assert_eq!(
            loaded
                .messages
                .iter()
                .map(|m| m.message_id.as_str())
                .collect::<Vec<_>>(),
            vec!["a"],
            "only what the engine held comes back into it"
        );
        let b = store.message("b").unwrap().unwrap();
        assert_eq!(b.status, MessageStatus::Consumed);
        assert_eq!(b.consumers, vec!["billing"]);
        assert_eq!(
            store.message("c").unwrap().unwrap().status,
            MessageStatus::Cancelled
        );
        let all: Vec<_> = store
            .list_messages(None, None, 10)
            .unwrap()
            .into_iter()
            .map(|m| m.message_id)
            .collect();
        assert_eq!(all, vec!["c", "b", "a"]);
        let consumed = store
            .list_messages(Some(MessageStatus::Consumed), None, 10)
            .unwrap();
        assert_eq!(consumed.len(), 1);
        assert_eq!(
            store.list_messages(None, Some((30, "")), 10).unwrap().len(),
            2
        );
        assert_eq!(
            store
                .list_messages(None, Some((30, "d")), 10)
                .unwrap()
                .len(),
            3
        );
        // A checkpoint (tiny log) moves them into redb; pruning keeps what is held.
        drop(store);
        let (store, _) = Store::open(&dir, 4096).unwrap();
        let big = "x".repeat(5000);
        let mut d = msg("d", 40, MessageStatus::Sent);
        d.payload = big;
        let mut w = Writes::default();
        w.messages.push(mw(&d, false));
        store.write(&w).unwrap();
        assert_eq!(store.prune(35).unwrap(), 2, "b and c pruned, a held");
        assert!(store.message("a").unwrap().is_some());
        assert!(store.message("b").unwrap().is_none());
        assert_eq!(store.messages_not_in_memory().unwrap().len(), 1);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
