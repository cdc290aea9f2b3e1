//! The replicated state machine: the same [`Engine`] and [`Store`] a single node uses,
//! fed from the Raft log instead of straight from the sequencer.
//!
//! Each log entry is one group-committed [`Batch`] with the leader's clock reading, so
//! every node applies the same commands at the same `now` and ends in the same state
//! (the engine does no I/O and draws no random numbers; the XID base travels in the
//! batch). Applying writes the resulting records through the store together with the
//! log position reached, in one record: after a crash the store says exactly which
//! entry it reflects and openraft replays the rest from the log.
//!
//! That record is not synced. What an applied entry did is already durable in the
//! Raft log (on a quorum, before it was applied), so a crash that loses the store's
//! last records loses only a position to replay from again, never a decision: the
//! store's write-ahead log loses a record only together with every record after it, and
//! each record carries the position it reflects. The one thing that would break this is
//! the Raft log dropping entries the store has not made durable: the log store syncs the
//! store before every purge ([`super::log_store::LogStore::sync_before_purge`]), and
//! openraft purges only entries already applied. Until the replay has caught up, a
//! restarted leader answers no read ([`super::Cluster::linearizable`]). About 15 % more
//! throughput under `bench/coordinator-cluster` (the figures are with
//! `sync_before_purge`).
//!
//! Only the leader acts on the engine's effects (phase-two sends); followers drop them.
//! A new leader resumes phase two from the replicated in-flight deadlines (its ticks
//! find them due) and from proxies re-attaching to it.
//!
//! Snapshots are the engine's whole durable state plus the finished transactions still kept;
//! the latest one is kept in `raft-snapshot.json` for followers that fell behind the
//! purged log.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::{BatchReply, Member, NodeId, TypeConfig};
use crate::engine::{
    AuditEntry, BatchOutput, Conflict, Counters, Effect, Engine, EngineConfig, GlobalRecord,
    MessageRecord, MessageWrite, Writes,
};
use crate::metrics::Metrics;
use crate::store::Store;

type Result<T> = std::result::Result<T, StorageError<NodeId>>;
type Entry = openraft::Entry<TypeConfig>;

/// Where the stored state stands in the log (kept with every store write).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Applied {
    pub log_id: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, Member>,
}

/// A snapshot's data.
#[derive(Serialize, Deserialize)]
struct SnapshotState {
    counters: Counters,
    active: Vec<GlobalRecord>,
    conflicts: Vec<Conflict>,
    audit: Vec<AuditEntry>,
    /// (xid, finished_ms, record) of the finished transactions kept for inspection.
    finished: Vec<(u64, u64, GlobalRecord)>,
    /// Half messages the engine holds (absent in snapshots older than messages).
    #[serde(default)]
    messages: Vec<MessageRecord>,
    /// Stored messages it no longer holds.
    #[serde(default)]
    messages_done: Vec<MessageRecord>,
}

#[derive(Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Member>,
    data: Vec<u8>,
}

pub struct StateMachine {
    pub(super) engine: Arc<Mutex<Engine>>,
    pub(super) store: Arc<Store>,
    pub(super) cfg: EngineConfig,
    /// Bumped after every applied (durable) batch; the sequencer's waiters watch it.
    pub(super) applied_tx: watch::Sender<u64>,
    pub(super) effects: mpsc::UnboundedSender<Effect>,
    /// Whether this node leads (kept current from the Raft metrics).
    pub(super) leader: Arc<AtomicBool>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) applied: Applied,
    /// The latest snapshot, shared with the builders (which set it when done).
    snapshot: Arc<Mutex<Option<StoredSnapshot>>>,
    snapshot_path: PathBuf,
    snapshot_seq: u64,
}

fn sm_err<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&e).into()
}

fn snap_err<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    StorageIOError::read_snapshot(None, &e).into()
}

impl StateMachine {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        engine: Arc<Mutex<Engine>>,
        store: Arc<Store>,
        cfg: EngineConfig,
        applied: Applied,
        applied_tx: watch::Sender<u64>,
        effects: mpsc::UnboundedSender<Effect>,
        leader: Arc<AtomicBool>,
        metrics: Arc<Metrics>,
        dir: &Path,
    ) -> StateMachine {
        let snapshot_path = dir.join("raft-snapshot.json");
        let snapshot = std::fs::read(&snapshot_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<StoredSnapshot>(&b).ok());
        StateMachine {
            engine,
            store,
            cfg,
            applied_tx,
            effects,
            leader,
            metrics,
            applied,
            snapshot: Arc::new(Mutex::new(snapshot)),
            snapshot_path,
            snapshot_seq: 0,
        }
    }

    fn raft_meta(&self) -> Vec<u8> {
        serde_json::to_vec(&self.applied).expect("applied position serializes")
    }

    /// Writes `w` (with the current log position), off the async threads; not synced
    /// (see the module's doc: the Raft log holds what it reflects).
    async fn persist(&self, mut w: Writes) -> Result<()> {
        w.raft = Some(self.raft_meta());
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.write_with(&w, false))
            .await
            .map_err(sm_err)?
            .map_err(sm_err)
    }

    fn capture(&self) -> Result<Vec<u8>> {
        let (counters, active, conflicts, audit, messages) = {
            let e = crate::sequencer::lock_engine(&self.engine);
            (
                e.counters(),
                e.records(None),
                e.conflicts().cloned().collect(),
                e.audit_all(),
                e.all_messages(),
            )
        };
        let mut messages_done = self.store.messages_not_in_memory().map_err(sm_err)?;
        let held: std::collections::HashSet<&str> =
            messages.iter().map(|m| m.message_id.as_str()).collect();
        messages_done.retain(|m| !held.contains(m.message_id.as_str()));
        let mut finished = Vec::new();
        for (xid, at, bytes) in self.store.all_finished().map_err(sm_err)? {
            let rec: GlobalRecord = serde_json::from_slice(&bytes).map_err(snap_err)?;
            finished.push((xid, at, rec));
        }
        serde_json::to_vec(&SnapshotState {
            counters,
            active,
            conflicts,
            audit,
            finished,
            messages,
            messages_done,
        })
        .map_err(snap_err)
    }

    fn save_snapshot(&mut self, snap: StoredSnapshot) -> Result<()> {
        write_snapshot_file(&self.snapshot_path, &snap)?;
        *self.snapshot.lock().expect("snapshot lock") = Some(snap);
        Ok(())
    }
}

/// Replaces `path` with `snap` durably: a temporary file synced, renamed over, and the
/// directory synced, so a crash leaves the old snapshot or the new one, whole.
fn write_snapshot_file(path: &Path, snap: &StoredSnapshot) -> Result<()> {
    use std::io::Write;
    let bytes = serde_json::to_vec(snap).map_err(snap_err)?;
    let tmp = path.with_extension("json.tmp");
    (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(d) = path.parent() {
            std::fs::File::open(d)?.sync_all()?;
        }
        Ok(())
    })()
    .map_err(|e| StorageError::from(StorageIOError::write_snapshot(None, &e)))
}

/// Builds a snapshot from state captured when openraft asked for the builder, so
/// entries applied meanwhile cannot tear it.
pub struct Builder {
    meta: SnapshotMeta<NodeId, Member>,
    data: std::result::Result<Vec<u8>, String>,
    sm_path: PathBuf,
    current: Arc<Mutex<Option<StoredSnapshot>>>,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let data = self.data.clone().map_err(|e| {
            StorageError::from(StorageIOError::read_state_machine(&std::io::Error::other(
                e,
            )))
        })?;
        let snap = StoredSnapshot {
            meta: self.meta.clone(),
            data: data.clone(),
        };
        // Kept for followers that need it after a restart of this node.
        let (path, copy) = (self.sm_path.clone(), snap.clone());
        tokio::task::spawn_blocking(move || write_snapshot_file(&path, &copy))
            .await
            .map_err(sm_err)??;
        // Now the one a lagging follower gets (openraft purges the log behind it).
        *self.current.lock().expect("snapshot lock") = Some(snap);
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Builder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>)> {
        Ok((self.applied.log_id, self.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchReply>>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut batches = Vec::new();
        for ent in entries {
            self.applied.log_id = Some(ent.log_id);
            batches.push(match ent.payload {
                EntryPayload::Blank => None,
                EntryPayload::Normal(batch) => Some(batch),
                EntryPayload::Membership(m) => {
                    self.applied.membership = StoredMembership::new(Some(ent.log_id), m);
                    None
                }
            });
        }
        let BatchOutput {
            results,
            writes,
            effects,
            stats,
            requests,
        } = crate::sequencer::apply_locked(&self.engine, &self.store, batches);
        let replies: Vec<BatchReply> = results
            .into_iter()
            .map(|results| BatchReply { results })
            .collect();
        let started = std::time::Instant::now();
        if let Err(err) = self.persist(writes).await {
            // Memory is ahead of the disk: stop; a restart replays the log from the
            // position the store last recorded.
            tracing::error!(%err, "durable write of applied entries failed; stopping");
            std::process::exit(70);
        }
        self.metrics
            .record_batch(requests, started.elapsed(), &stats);
        if self.leader.load(Ordering::Acquire) {
            for eff in effects {
                let _ = self.effects.send(eff);
            }
        }
        self.applied_tx.send_modify(|n| *n += 1);
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        let id = match self.applied.log_id {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, self.snapshot_seq),
            None => format!("--{}", self.snapshot_seq),
        };
        Builder {
            meta: SnapshotMeta {
                last_log_id: self.applied.log_id,
                last_membership: self.applied.membership.clone(),
                snapshot_id: id,
            },
            data: self.capture().map_err(|e| e.to_string()),
            sm_path: self.snapshot_path.clone(),
            current: self.snapshot.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<()> {
        let data = snapshot.into_inner();
        let st: SnapshotState = serde_json::from_slice(&data).map_err(snap_err)?;
        tracing::info!(
            snapshot = %meta.snapshot_id,
            active = st.active.len(),
            finished = st.finished.len(),
            "installing a snapshot from the leader"
        );
        self.applied = Applied {
            log_id: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let w = Writes {
            active: st.active.iter().map(|r| (r.xid, json(r))).collect(),
            finished: st
                .finished
                .iter()
                .map(|(x, at, r)| (*x, *at, json(r)))
                .collect(),
            conflicts: st.conflicts.iter().map(|c| (c.id, json(c))).collect(),
            audit: st.audit.iter().map(|a| (a.id, json(a))).collect(),
            counters: Some(st.counters),
            raft: Some(self.raft_meta()),
            messages: st
                .messages
                .iter()
                .map(|m| (m, true))
                .chain(st.messages_done.iter().map(|m| (m, false)))
                .map(|(m, in_memory)| MessageWrite {
                    message_id: m.message_id.clone(),
                    created_ms: m.created_ms,
                    record: json(m),
                    in_memory,
                })
                .collect(),
            consumed: Vec::new(),
        };
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.replace_all(&w))
            .await
            .map_err(sm_err)?
            .map_err(sm_err)?;
        let mut fresh = Engine::restore(self.cfg.clone(), st.counters, st.active, st.conflicts);
        fresh.restore_audit(st.audit);
        fresh.restore_messages(st.messages);
        *crate::sequencer::lock_engine(&self.engine) = fresh;
        self.save_snapshot(StoredSnapshot {
            meta: meta.clone(),
            data,
        })?;
        self.applied_tx.send_modify(|n| *n += 1);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        Ok(self
            .snapshot
            .lock()
            .expect("snapshot lock")
            .as_ref()
            .map(|s| Snapshot {
                meta: s.meta.clone(),
                snapshot: Box::new(Cursor::new(s.data.clone())),
            }))
    }
}

/// A record's JSON, as the store keeps it (for rebuilding store writes from a snapshot).
fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("record serializes")
}
