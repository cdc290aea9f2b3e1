//! The Raft log and vote, durable in the node's data directory: a write-ahead log
//! (`raft-log.wal`, the same record format as the store's, [`crate::wal`]) in front of
//! a redb file (`raft-log.redb`).
//!
//! Why a log in front of redb: a redb commit with immediate durability rewrites the
//! B-tree path, the allocator state and the free lists and then syncs them; measured
//! under `bench/coordinator-cluster` it took ~40 % of the leader's CPU (one commit per
//! appended batch, on every member). An append is now one record written into a
//! pre-zeroed file and one `fdatasync`, the store's recipe. When the log file is full its
//! entries are moved into redb in one durable commit (a checkpoint, recording the last
//! record it holds) and the file is written from its start again.
//!
//! What is durable before openraft hears it is done: every append and truncation (a
//! record each, synced), every vote and purge (a redb commit each; both are rare). The
//! committed position is kept in memory and written at checkpoints only: openraft allows
//! it to be stale (it only re-applies entries to a state machine that is behind, and
//! ours writes its own position with every applied batch). A stale one would let a
//! leader restarted in its own term serve reads before it applied entries it had
//! acknowledged (after a machine crash, which can take the state machine's unsynced
//! writes): [`super::Cluster::linearizable`] has the first read after a start wait for
//! a fresh commit instead.
//!
//! Group commit: `append` returns once the entries are queued, and a writer thread
//! makes everything queued meanwhile durable as one record with one sync before it
//! tells openraft (in order, through each append's callback). A leader proposes many
//! small batches at once; measured under `bench/coordinator-cluster`, one sync per
//! append meant ~12 syncs of the Raft log per state-machine apply.
//!
//! Readers (openraft's replication tasks) see an entry as soon as it is queued, before
//! its sync: the leader sends entries to the followers while its own copy is being made
//! durable, and counts itself in the quorum only once it is.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{NodeId, TypeConfig};
use crate::wal::Wal;

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The last write-ahead record whose effect is in redb.
const CHECKPOINT: &str = "wal_checkpoint";

/// Record kinds in the write-ahead log (the first payload byte).
const APPEND: u8 = 1;
const TRUNCATE: u8 = 2;

type Result<T> = std::result::Result<T, StorageError<NodeId>>;
type Ent = Entry<TypeConfig>;

#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// What is not in redb yet, shared with the readers.
    tail: Arc<Mutex<Tail>>,
    /// Records for the writer thread, with what to do once they are durable.
    jobs: mpsc::Sender<Job>,
    /// Run before entries are purged (see [`LogStore::sync_before_purge`]).
    before_purge: Option<BeforePurge>,
}

/// Makes the state machine's writes durable; an error stops the purge.
pub type BeforePurge = Arc<dyn Fn() -> std::result::Result<(), String> + Send + Sync>;

/// Told whether a queued record is durable.
type Done = Box<dyn FnOnce(std::io::Result<()>) + Send>;

struct Job {
    /// One operation: its kind byte, then its body.
    op: Vec<u8>,
    done: Done,
}

/// Entries appended since the last checkpoint, and how they change redb's view.
#[derive(Default)]
struct Tail {
    entries: BTreeMap<u64, Ent>,
    /// The lowest index truncated since the checkpoint: redb's entries at or above it
    /// are no longer part of the log.
    cut: Option<u64>,
    committed: Option<LogId<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
}

impl Tail {
    /// redb holds the log below this index (the rest comes from `entries`).
    fn redb_below(&self) -> u64 {
        let first = self.entries.keys().next().copied().unwrap_or(u64::MAX);
        self.cut.unwrap_or(u64::MAX).min(first)
    }

    fn append(&mut self, entries: Vec<Ent>) {
        for e in entries {
            if self.last_purged.is_some_and(|p| e.log_id.index <= p.index) {
                continue;
            }
            self.entries.insert(e.log_id.index, e);
        }
    }

    fn truncate(&mut self, from: u64) {
        self.entries.split_off(&from);
        self.cut = Some(self.cut.map_or(from, |c| c.min(from)));
    }
}

struct Writer {
    wal: Wal,
    /// Sequence number of the last record written.
    lsn: u64,
    /// Weak: the database closes when the last [`LogStore`] goes (a reopen in the same
    /// process must not find it still open behind a writer that has not noticed yet).
    db: std::sync::Weak<Database>,
    tail: Arc<Mutex<Tail>>,
}

fn io_err<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    StorageIOError::write_logs(&e).into()
}

fn read_err<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    StorageIOError::read_logs(&e).into()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these; if something did, the data is still whole
    // (every change is a single insert or split).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn encode_append(entries: &[Ent]) -> std::result::Result<Vec<u8>, serde_json::Error> {
    let mut out = vec![APPEND];
    serde_json::to_writer(&mut out, entries)?;
    Ok(out)
}

fn encode_truncate(from: u64) -> Vec<u8> {
    let mut out = vec![TRUNCATE];
    out.extend_from_slice(&from.to_le_bytes());
    out
}

/// One write-ahead record holding several operations: `len: u32 | op[len]` each.
fn frame(ops: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ops.iter().map(|o| o.len() + 4).sum());
    for op in ops {
        out.extend_from_slice(&(op.len() as u32).to_le_bytes());
        out.extend_from_slice(op);
    }
    out
}

/// The operations of a record (`None` if it is not well framed).
fn unframe(mut rec: &[u8]) -> Option<Vec<&[u8]>> {
    let mut ops = Vec::new();
    while !rec.is_empty() {
        let n = u32::from_le_bytes(rec.get(..4)?.try_into().ok()?) as usize;
        ops.push(rec.get(4..4 + n)?);
        rec = &rec[4 + n..];
    }
    Some(ops)
}

fn meta<T: serde::de::DeserializeOwned>(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> std::result::Result<Option<T>, String> {
    match t.get(key).map_err(|e| e.to_string())? {
        Some(v) => serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| format!("raft log meta {key}: {e}")),
        None => Ok(None),
    }
}

impl LogStore {
    /// Opens the log in `dir`, replaying the write-ahead records after the last
    /// checkpoint into redb (one durable commit) before anything is served.
    pub fn open(dir: &Path, wal_bytes: u64) -> std::result::Result<LogStore, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let path = dir.join("raft-log.redb");
        let db = Database::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let txn = db.begin_write().map_err(|e| e.to_string())?;
        txn.open_table(LOGS).map_err(|e| e.to_string())?;
        txn.open_table(META).map_err(|e| e.to_string())?;
        txn.commit().map_err(|e| e.to_string())?;
        let (checkpoint, committed, last_purged) = {
            let txn = db.begin_read().map_err(|e| e.to_string())?;
            let t = txn.open_table(META).map_err(|e| e.to_string())?;
            (
                meta::<u64>(&t, CHECKPOINT)?.unwrap_or(0),
                meta::<Option<LogId<NodeId>>>(&t, "committed")?.flatten(),
                meta::<LogId<NodeId>>(&t, "last_purged")?,
            )
        };
        let wal_path = dir.join("raft-log.wal");
        let (wal, records) = Wal::open(&wal_path, wal_bytes, checkpoint)
            .map_err(|e| format!("{}: {e}", wal_path.display()))?;
        let mut tail = Tail {
            committed,
            last_purged,
            ..Default::default()
        };
        for (lsn, payload) in &records {
            let bad = |why: String| format!("{} record {lsn}: {why}", wal_path.display());
            let ops = unframe(payload).ok_or_else(|| bad("badly framed".into()))?;
            for op in ops {
                match op.split_first() {
                    Some((&APPEND, body)) => {
                        tail.append(serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?)
                    }
                    Some((&TRUNCATE, body)) if body.len() == 8 => {
                        tail.truncate(u64::from_le_bytes(body.try_into().expect("8 bytes")))
                    }
                    _ => return Err(bad("unknown kind (written by a newer build?)".into())),
                }
            }
        }
        let lsn = records.last().map_or(checkpoint, |r| r.0);
        let db = Arc::new(db);
        let tail = Arc::new(Mutex::new(tail));
        let mut writer = Writer {
            wal,
            lsn,
            db: Arc::downgrade(&db),
            tail: tail.clone(),
        };
        if !records.is_empty() {
            tracing::info!(
                records = records.len(),
                from = checkpoint + 1,
                to = lsn,
                "replaying the raft write-ahead log"
            );
            writer.checkpoint(lsn)?;
        }
        writer
            .wal
            .restart_after_recovery()
            .map_err(|e| format!("{}: {e}", wal_path.display()))?;
        let (jobs, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("rewind-raft-log".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| format!("starting the raft log writer: {e}"))?;
        Ok(LogStore {
            db,
            tail,
            jobs,
            before_purge: None,
        })
    }

    /// `sync` runs before every purge and must make every state-machine write made so
    /// far durable. The state machine writes without syncing because the Raft log holds
    /// what those writes reflect; a purged entry is no longer in the log, so what it did
    /// must be durable in the store first. openraft purges only applied entries (behind
    /// a snapshot), whose writes were made before their apply returned.
    ///
    /// Measured (`bench/coordinator-cluster` without its failovers, 64 clients, 2 cores,
    /// fat-LTO builds alike but for this, three alternated pairs of 10 s): synced
    /// applies 2,305 / 2,248 / 2,129 global tx/s (p99 75 / 71 / 72 ms, leader CPU 290 /
    /// 291 / 297 µs per tx), unsynced 2,632 / 2,645 / 2,410 (p99 67 / 61 / 72 ms, 257 /
    /// 243 / 278 µs): about 15 % more. A follower spent a fifth of its CPU in the
    /// store's write and its `fdatasync` before.
    pub fn sync_before_purge(&mut self, sync: BeforePurge) {
        self.before_purge = Some(sync);
    }

    /// Queues one operation (its effect already in the tail); `done` hears when it is
    /// durable.
    fn submit(&self, op: Vec<u8>, done: Done) {
        if let Err(mpsc::SendError(job)) = self.jobs.send(Job { op, done }) {
            (job.done)(Err(std::io::Error::other(
                "the raft log writer has stopped",
            )));
        }
    }

    /// Queues one operation and waits until it is durable.
    async fn submit_and_wait(&self, op: Vec<u8>) -> std::io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(
            op,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.await
            .unwrap_or_else(|_| Err(std::io::Error::other("the raft log writer has stopped")))
    }

    fn put_meta<T: serde::Serialize>(&self, key: &str, v: &T) -> Result<()> {
        let bytes = serde_json::to_vec(v).map_err(io_err)?;
        let txn = self.db.begin_write().map_err(io_err)?;
        txn.open_table(META)
            .map_err(io_err)?
            .insert(key, bytes.as_slice())
            .map_err(io_err)?;
        txn.commit().map_err(io_err)?;
        Ok(())
    }

    /// How many entries the log holds (for /metrics and tests of compaction).
    pub fn entries(&self) -> u64 {
        let tail = lock(&self.tail);
        let below = tail.redb_below();
        let in_redb = self
            .db
            .begin_read()
            .ok()
            .and_then(|t| t.open_table(LOGS).ok())
            .and_then(|t| {
                let all = t.len().ok()?;
                let hidden = t.range(below..).ok()?.count() as u64;
                Some(all.saturating_sub(hidden))
            })
            .unwrap_or(0);
        in_redb + tail.entries.len() as u64
    }
}

impl Writer {
    /// Writes queued operations until every [`LogStore`] is gone: each round takes
    /// everything queued, makes it durable as one record, then reports in order.
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut jobs = vec![first];
            jobs.extend(rx.try_iter());
            let ops: Vec<&[u8]> = jobs.iter().map(|j| j.op.as_slice()).collect();
            let res = self.persist(frame(&ops));
            if let Err(e) = &res {
                tracing::error!(%e, "the raft log could not be made durable");
            }
            for j in jobs {
                (j.done)(res.clone().map_err(std::io::Error::other));
            }
            if res.is_err() {
                // Later records would leave a hole behind this one: refuse them all
                // (openraft stops this node on a storage error).
                for j in rx.iter() {
                    (j.done)(Err(std::io::Error::other(
                        "an earlier raft log write failed",
                    )));
                }
                return;
            }
        }
    }

    /// Moves the tail into redb in one durable commit that records `lsn` as the last
    /// record it holds; the caller then writes the log file from its start. Readers
    /// wait meanwhile (the tail's lock), so they never see an entry in neither place.
    fn checkpoint(&mut self, lsn: u64) -> std::result::Result<(), String> {
        let db = self.db.upgrade().ok_or("the raft log is closed")?;
        let mut tail = lock(&self.tail);
        let txn = db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut t = txn.open_table(LOGS).map_err(|e| e.to_string())?;
            if let Some(cut) = tail.cut {
                t.retain_in(cut.., |_, _| false)
                    .map_err(|e| e.to_string())?;
            }
            for (i, e) in &tail.entries {
                let bytes = serde_json::to_vec(e).map_err(|e| e.to_string())?;
                t.insert(*i, bytes.as_slice()).map_err(|e| e.to_string())?;
            }
            let mut m = txn.open_table(META).map_err(|e| e.to_string())?;
            let c = serde_json::to_vec(&tail.committed).map_err(|e| e.to_string())?;
            m.insert("committed", c.as_slice())
                .map_err(|e| e.to_string())?;
            let l = serde_json::to_vec(&lsn).map_err(|e| e.to_string())?;
            m.insert(CHECKPOINT, l.as_slice())
                .map_err(|e| e.to_string())?;
        }
        txn.commit().map_err(|e| e.to_string())?;
        tail.entries.clear();
        tail.cut = None;
        Ok(())
    }

    /// Makes one record durable: appended to the log file, or (when it does not fit)
    /// moved into redb with the rest of the tail by a checkpoint. The record's effect
    /// is already in the tail.
    fn persist(&mut self, record: Vec<u8>) -> std::result::Result<(), String> {
        let lsn = self.lsn + 1;
        if self.wal.fits(record.len()) {
            self.wal
                .append(lsn, &record)
                .map_err(|e| format!("{}: {e}", self.wal.path().display()))?;
        } else {
            self.checkpoint(lsn)?;
            self.wal.restart();
        }
        self.lsn = lsn;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Ent>> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x + 1,
            Bound::Unbounded => 0,
        };
        let tail = lock(&self.tail);
        let below = tail.redb_below();
        let mut out = Vec::new();
        if start < below {
            let txn = self.db.begin_read().map_err(read_err)?;
            let t = txn.open_table(LOGS).map_err(read_err)?;
            for row in t.range(start..below).map_err(read_err)? {
                let (k, v) = row.map_err(read_err)?;
                if !range.contains(&k.value()) {
                    break;
                }
                out.push(serde_json::from_slice(v.value()).map_err(read_err)?);
            }
        }
        out.extend(
            tail.entries
                .range((range.start_bound().cloned(), range.end_bound().cloned()))
                .map(|(_, e)| e.clone()),
        );
        Ok(out)
    }

    /// What one AppendEntries call to a follower carries: at most [`PAYLOAD_BYTES`] of
    /// entries (always at least one). openraft allows each call `heartbeat_interval`
    /// (100 ms) whatever its size and sends a call that timed out again unchanged, so a
    /// follower catching up on large entries must get them in parts it can take in time.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Ent>> {
        let entries = self.try_get_log_entries(start..end).await?;
        // A follower in step gets the few entries made since its last call: no sizing.
        if entries.len() <= 4 {
            return Ok(entries);
        }
        Ok(within_bytes(entries, PAYLOAD_BYTES))
    }
}

/// Bytes of entries (as JSON, as they travel) one AppendEntries call carries at most.
/// With openraft's default (up to 300 entries a call, no size limit) a follower that had
/// fallen behind under `bench/coordinator-cluster` was sent more than it could append in
/// 100 ms, again and again: after a kill -9 of the leader, the new one never reached a
/// quorum until the old one came back.
const PAYLOAD_BYTES: usize = 256 << 10;

/// The longest prefix of `entries` within `budget` bytes, and never less than one entry.
fn within_bytes(mut entries: Vec<Ent>, budget: usize) -> Vec<Ent> {
    let mut total = 0;
    let mut keep = 0;
    for e in &entries {
        let mut size = ByteCount(0);
        // An entry that does not serialize is sent anyway; the network layer reports it.
        let _ = serde_json::to_writer(&mut size, e);
        total += size.0;
        if keep > 0 && total > budget {
            break;
        }
        keep += 1;
    }
    entries.truncate(keep);
    entries
}

/// Counts what is written to it.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let tail = lock(&self.tail);
        let last = match tail.entries.values().next_back() {
            Some(e) => Some(e.log_id),
            None => {
                let txn = self.db.begin_read().map_err(read_err)?;
                let t = txn.open_table(LOGS).map_err(read_err)?;
                let last = t.range(..tail.redb_below()).map_err(read_err)?.next_back();
                match last {
                    Some(row) => {
                        let (_, v) = row.map_err(read_err)?;
                        let e: Ent = serde_json::from_slice(v.value()).map_err(read_err)?;
                        Some(e.log_id)
                    }
                    None => None,
                }
            }
        };
        Ok(LogState {
            last_purged_log_id: tail.last_purged,
            last_log_id: last.or(tail.last_purged),
        })
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        lock(&self.tail).committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        Ok(lock(&self.tail).committed)
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        self.put_meta("vote", vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let t = txn.open_table(META).map_err(read_err)?;
        meta(&t, "vote").map_err(|e| read_err(std::io::Error::other(e)))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Ent> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Ent> = entries.into_iter().collect();
        let op = encode_append(&entries).map_err(io_err)?;
        // Visible to the replication tasks now; durable before the callback.
        lock(&self.tail).append(entries);
        self.submit(op, Box::new(move |r| callback.log_io_completed(r)));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        lock(&self.tail).truncate(log_id.index);
        self.submit_and_wait(encode_truncate(log_id.index))
            .await
            .map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        // One redb commit records the purge point and drops the entries; those still in
        // the log file are skipped if it is ever replayed (they are at or below it).
        // The tail's lock is held throughout, as a checkpoint holds it, so a checkpoint
        // cannot put purged entries back.
        if let Some(sync) = &self.before_purge {
            sync().map_err(|e| io_err(std::io::Error::other(e)))?;
        }
        let bytes = serde_json::to_vec(&log_id).map_err(io_err)?;
        let mut tail = lock(&self.tail);
        let txn = self.db.begin_write().map_err(io_err)?;
        {
            txn.open_table(META)
                .map_err(io_err)?
                .insert("last_purged", bytes.as_slice())
                .map_err(io_err)?;
            txn.open_table(LOGS)
                .map_err(io_err)?
                .retain_in(..=log_id.index, |_, _| false)
                .map_err(io_err)?;
        }
        txn.commit().map_err(io_err)?;
        tail.entries = tail.entries.split_off(&(log_id.index + 1));
        tail.last_purged = Some(log_id);
        Ok(())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(term: u64, index: u64) -> Ent {
        Ent {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    async fn append(s: &LogStore, es: Vec<Ent>) {
        let op = encode_append(&es).unwrap();
        lock(&s.tail).append(es);
        s.submit_and_wait(op).await.unwrap();
    }

    #[test]
    fn a_payload_stops_at_its_byte_budget_but_carries_one_entry() {
        let one = serde_json::to_vec(&entry(1, 10)).unwrap().len();
        let es: Vec<Ent> = (10..20).map(|i| entry(1, i)).collect();
        let kept = within_bytes(es.clone(), one * 3 + one / 2);
        let idx: Vec<u64> = kept.iter().map(|e| e.log_id.index).collect();
        assert_eq!(idx, vec![10, 11, 12], "the prefix that fits");
        assert_eq!(
            within_bytes(es.clone(), 1).len(),
            1,
            "one entry however large"
        );
        assert_eq!(within_bytes(es, usize::MAX).len(), 10, "all when they fit");
    }

    async fn indexes(s: &mut LogStore, range: std::ops::Range<u64>) -> Vec<(u64, u64)> {
        s.try_get_log_entries(range)
            .await
            .unwrap()
            .iter()
            .map(|e| (e.log_id.leader_id.term, e.log_id.index))
            .collect()
    }

    /// Appends, truncations and purges read back the same through checkpoints (a log
    /// file of 4 KiB holds a few records) and across reopening, including what was
    /// only in the log file.
    #[tokio::test]
    async fn the_log_reads_back_through_checkpoints_and_reopen() {
        let d = crate::wal::test_dir("raftlog-reopen");
        let mut s = LogStore::open(&d, 4096).unwrap();
        for i in 1..=40u64 {
            append(&s, vec![entry(1, i)]).await;
        }
        // A conflicting suffix is replaced, partly in redb and partly in the tail.
        s.truncate(LogId::new(CommittedLeaderId::new(1, 1), 30))
            .await
            .unwrap();
        for i in 30..=33u64 {
            append(&s, vec![entry(2, i)]).await;
        }
        s.purge(LogId::new(CommittedLeaderId::new(1, 1), 5))
            .await
            .unwrap();
        s.save_committed(Some(LogId::new(CommittedLeaderId::new(2, 1), 31)))
            .await
            .unwrap();
        let want: Vec<(u64, u64)> = (6..30)
            .map(|i| (1, i))
            .chain((30..=33).map(|i| (2, i)))
            .collect();
        assert_eq!(indexes(&mut s, 0..100).await, want);
        assert_eq!(
            indexes(&mut s, 28..31).await,
            vec![(1, 28), (1, 29), (2, 30)]
        );
        assert_eq!(s.entries(), 28);
        let st = s.get_log_state().await.unwrap();
        assert_eq!(st.last_log_id.map(|l| l.index), Some(33));
        assert_eq!(st.last_purged_log_id.map(|l| l.index), Some(5));
        drop(s);

        let mut s = LogStore::open(&d, 4096).unwrap();
        assert_eq!(indexes(&mut s, 0..100).await, want);
        assert_eq!(s.entries(), 28);
        let st = s.get_log_state().await.unwrap();
        assert_eq!(
            st.last_log_id.map(|l| (l.leader_id.term, l.index)),
            Some((2, 33))
        );
        // Truncating everything in the tail and part of redb, then reopening.
        s.truncate(LogId::new(CommittedLeaderId::new(1, 1), 20))
            .await
            .unwrap();
        drop(s);
        let mut s = LogStore::open(&d, 4096).unwrap();
        assert_eq!(
            indexes(&mut s, 0..100).await,
            (6..20).map(|i| (1, i)).collect::<Vec<_>>()
        );
        let st = s.get_log_state().await.unwrap();
        assert_eq!(st.last_log_id.map(|l| l.index), Some(19));
        let _ = std::fs::remove_dir_all(&d);
    }
}
