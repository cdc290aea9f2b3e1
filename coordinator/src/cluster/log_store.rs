//! The Raft log and vote, durable in a redb file of their own (`raft-log.redb` in the
//! node's data directory). Every append, truncation and vote is one redb commit with
//! immediate durability before openraft is told it is done: a node never forgets an
//! entry it acknowledged or a vote it cast.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{NodeId, TypeConfig};

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

fn io_err<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    StorageIOError::write_logs(&e).into()
}

fn read_err<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    StorageIOError::read_logs(&e).into()
}

impl LogStore {
    pub fn open(dir: &Path) -> std::result::Result<LogStore, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let path = dir.join("raft-log.redb");
        let db = Database::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let txn = db.begin_write().map_err(|e| e.to_string())?;
        txn.open_table(LOGS).map_err(|e| e.to_string())?;
        txn.open_table(META).map_err(|e| e.to_string())?;
        txn.commit().map_err(|e| e.to_string())?;
        Ok(LogStore { db: Arc::new(db) })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let t = txn.open_table(META).map_err(read_err)?;
        match t.get(key).map_err(read_err)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(read_err)?)),
            None => Ok(None),
        }
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
        self.db
            .begin_read()
            .ok()
            .and_then(|t| t.open_table(LOGS).ok())
            .and_then(|t| t.len().ok())
            .unwrap_or(0)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x + 1,
            Bound::Unbounded => 0,
        };
        let txn = self.db.begin_read().map_err(read_err)?;
        let t = txn.open_table(LOGS).map_err(read_err)?;
        let mut out = Vec::new();
        for row in t.range(start..).map_err(read_err)? {
            let (k, v) = row.map_err(read_err)?;
            if !range.contains(&k.value()) {
                break;
            }
            out.push(serde_json::from_slice(v.value()).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let last_purged: Option<LogId<NodeId>> = self.get_meta("last_purged")?;
        let last = {
            let txn = self.db.begin_read().map_err(read_err)?;
            let t = txn.open_table(LOGS).map_err(read_err)?;
            let last = t.last().map_err(read_err)?;
            let id = match last {
                Some((_, v)) => {
                    let e: Entry<TypeConfig> =
                        serde_json::from_slice(v.value()).map_err(read_err)?;
                    Some(e.log_id)
                }
                None => None,
            };
            id
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        self.put_meta("committed", &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        Ok(self
            .get_meta::<Option<LogId<NodeId>>>("committed")?
            .flatten())
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        self.put_meta("vote", vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        self.get_meta("vote")
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let db = self.db.clone();
        let entries: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| Ok((e.log_id.index, serde_json::to_vec(&e).map_err(io_err)?)))
            .collect::<Result<_>>()?;
        // One durable commit (one fsync) for the whole batch, off the async threads.
        let res = tokio::task::spawn_blocking(move || -> std::result::Result<(), String> {
            let txn = db.begin_write().map_err(|e| e.to_string())?;
            {
                let mut t = txn.open_table(LOGS).map_err(|e| e.to_string())?;
                for (i, bytes) in &entries {
                    t.insert(*i, bytes.as_slice()).map_err(|e| e.to_string())?;
                }
            }
            txn.commit().map_err(|e| e.to_string())
        })
        .await
        .map_err(io_err)?;
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let err = std::io::Error::other(e);
                let ret = StorageIOError::write_logs(&err).into();
                callback.log_io_completed(Err(err));
                Err(ret)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        let txn = self.db.begin_write().map_err(io_err)?;
        txn.open_table(LOGS)
            .map_err(io_err)?
            .retain_in(log_id.index.., |_, _| false)
            .map_err(io_err)?;
        txn.commit().map_err(io_err)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        // Record the purge point first: a crash between the two leaves extra entries,
        // which is harmless; the reverse would lose the log's start.
        self.put_meta("last_purged", &log_id)?;
        let txn = self.db.begin_write().map_err(io_err)?;
        txn.open_table(LOGS)
            .map_err(io_err)?
            .retain_in(..=log_id.index, |_, _| false)
            .map_err(io_err)?;
        txn.commit().map_err(io_err)?;
        Ok(())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }
}
