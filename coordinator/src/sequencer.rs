//! Group commit. One thread owns the write path: it takes every pending command from
//! the queue (up to a batch limit), applies them to the [`Engine`] in order, makes the
//! resulting records durable as ONE write-ahead-log record (one `fdatasync`, see
//! [`crate::store`]), and only then answers the callers and hands the effects
//! (phase-two sends) to the dispatcher. A command is therefore acknowledged only once
//! durable, and many callers share one sync. The exception is a batch holding only
//! phase-one reports, proxies' phase-two answers and begins ([`Command::needs_sync`]):
//! it is written without a sync of its own and made durable by the next batch's
//! (measured under `bench/coordinator`, alternated runs: reports and answers, 4,472–5,166
//! → 5,610–5,883 tx/s. Begins: no change there, the benchmark being CPU-bound by then;
//! under `bench/at` at one client the begin took 0.24 ms instead of 0.13–0.14, and a global
//! transfer 2.77–2.87 ms instead of 2.48–2.56).
//!
//! Readers take the engine mutex briefly and may see state a few microseconds before it
//! is durable; that is conservative for locks and harmless for statuses.
//!
//! In cluster mode ([`Sequencer::start_replicated`]) a batch becomes one Raft entry
//! instead: it is answered once a quorum has it durably and this node applied it
//! ([`crate::cluster::state_machine`]); a few batches may be in flight at once.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};

use crate::cluster::Cluster;
use crate::engine::{
    Batch, BatchOutput, Command, Effect, Engine, Reply, Request, BEGINS_WITHOUT_SYNC,
};
use crate::error::CoordinatorError;
use crate::metrics::Metrics;
use crate::store::Store;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

type ReplyTx = oneshot::Sender<Result<Reply, CoordinatorError>>;

struct Pending {
    cmd: Command,
    reply: Option<ReplyTx>,
}

/// Cheap handle to the write path and the shared read state.
#[derive(Clone)]
pub struct Sequencer {
    tx: mpsc::Sender<Pending>,
    pub engine: Arc<Mutex<Engine>>,
    pub store: Arc<Store>,
    /// Bumped after every durable batch; waiters re-check their condition on change.
    pub applied: watch::Receiver<u64>,
    pub metrics: Arc<Metrics>,
    /// Cluster mode: the Raft node (requests go through its log).
    pub cluster: Option<Arc<Cluster>>,
}

/// Batches proposed to Raft at once (each is one entry; openraft pipelines them).
/// Few, so that requests arriving meanwhile gather into the next batch: every entry
/// costs each member an append, a sync and a round of replication whatever its size.
/// Measured under `bench/coordinator-cluster` (64 clients, 3 members on 2 cores), in
/// one run each: 1 → 1,269 tx/s, 2 → 1,398, 4 → 1,242, 32 → 764 (the leader synced
/// its log ~800 times a second for entries of ~4 requests).
const IN_FLIGHT_BATCHES: usize = 2;

impl Sequencer {
    /// Starts the writer thread. It stops when every `Sequencer` clone is dropped.
    pub fn start(
        engine: Engine,
        store: Store,
        max_batch: usize,
        effects: mpsc::UnboundedSender<Effect>,
        metrics: Arc<Metrics>,
    ) -> Sequencer {
        let (tx, rx) = mpsc::channel(65_536);
        let engine = Arc::new(Mutex::new(engine));
        let store = Arc::new(store);
        let (applied_tx, applied) = watch::channel(0);
        let (e2, s2, m2) = (engine.clone(), store.clone(), metrics.clone());
        std::thread::Builder::new()
            .name("rewind-sequencer".into())
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(|| {
                    writer_loop(rx, e2, s2, max_batch, effects, applied_tx, m2)
                });
                if std::panic::catch_unwind(run).is_err() {
                    // Nothing is written any more: stop rather than answer nothing.
                    tracing::error!("the sequencer panicked; stopping the coordinator");
                    std::process::exit(70);
                }
            })
            .expect("spawn sequencer thread");
        Sequencer {
            tx,
            engine,
            store,
            applied,
            metrics,
            cluster: None,
        }
    }

    /// Cluster mode: batches go through the Raft log of `cluster`; the state machine
    /// applies them to `engine`/`store` (shared with this handle's readers).
    pub fn start_replicated(
        cluster: Arc<Cluster>,
        engine: Arc<Mutex<Engine>>,
        store: Arc<Store>,
        applied: watch::Receiver<u64>,
        max_batch: usize,
        metrics: Arc<Metrics>,
    ) -> Sequencer {
        let (tx, rx) = mpsc::channel(65_536);
        tokio::spawn(replicated_loop(rx, cluster.clone(), max_batch));
        Sequencer {
            tx,
            engine,
            store,
            applied,
            metrics,
            cluster: Some(cluster),
        }
    }

    /// In cluster mode, fails unless this node leads (with the leader's addresses).
    pub fn leader_only(&self) -> Result<(), CoordinatorError> {
        match &self.cluster {
            Some(c) if !c.is_leader() => Err(c.not_leader()),
            _ => Ok(()),
        }
    }

    /// Before a read that decides something: in cluster mode, confirm leadership with a
    /// quorum and catch up with everything committed (read-index).
    pub async fn linearizable(&self) -> Result<(), CoordinatorError> {
        match &self.cluster {
            Some(c) => c.linearizable().await,
            None => Ok(()),
        }
    }

    /// Applies a command durably and answers its typed result.
    pub async fn ask<R: Request>(&self, req: R) -> Result<R::Reply, CoordinatorError> {
        let reply = self.submit(req.into()).await?;
        R::from_reply(reply.clone()).ok_or_else(|| {
            tracing::error!(?reply, "the engine answered another command's reply");
            CoordinatorError::Storage(format!("internal: mismatched reply {reply:?}"))
        })
    }

    async fn submit(&self, cmd: Command) -> Result<Reply, CoordinatorError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending {
                cmd,
                reply: Some(reply),
            })
            .await
            .map_err(|_| CoordinatorError::ShuttingDown)?;
        rx.await.map_err(|_| CoordinatorError::ShuttingDown)?
    }

    /// Queues a command whose result nobody waits for (results from proxies, ticks).
    /// In cluster mode a non-leader drops it (the leader has its own).
    pub async fn post(&self, cmd: impl Into<Command>) {
        if self.leader_only().is_err() {
            return;
        }
        let cmd = cmd.into();
        let _ = self.tx.send(Pending { cmd, reply: None }).await;
    }

    /// Waits (bounded) until `done` holds on the engine, re-checking after each batch.
    pub async fn wait_until(&self, timeout: Duration, mut done: impl FnMut(&Engine) -> bool) {
        let mut applied = self.applied.clone();
        let _ = tokio::time::timeout(timeout, async {
            loop {
                if done(&crate::sequencer::lock_engine(&self.engine)) {
                    return;
                }
                if applied.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }
}

/// Applies `batches` under the engine lock and announces the coming durable write to the
/// store (under the same lock, so a reader that finds a transaction in neither place
/// knows a batch is on its way). The single node's writer and the Raft state machine
/// both go through here.
pub fn apply_locked(
    engine: &Mutex<Engine>,
    store: &Store,
    batches: impl IntoIterator<Item = Option<Batch>>,
) -> BatchOutput {
    let mut e = lock_engine(engine);
    let applied = e.apply_batches(batches);
    store.announce();
    applied
}

/// The engine's lock. A panic while it was held (a bug in the state machine) leaves the
/// in-memory state unknown: rather than serve from it (or panic in every later request),
/// the process stops with exit code 70, and a restart reloads what is durable.
pub fn lock_engine(engine: &Mutex<Engine>) -> MutexGuard<'_, Engine> {
    engine.lock().unwrap_or_else(|_| {
        tracing::error!(
            "the engine's state was left behind by a panic; stopping the coordinator \
             (a restart reloads what is durable)"
        );
        std::process::exit(70)
    })
}

fn writer_loop(
    mut rx: mpsc::Receiver<Pending>,
    engine: Arc<Mutex<Engine>>,
    store: Arc<Store>,
    max_batch: usize,
    effects: mpsc::UnboundedSender<Effect>,
    applied: watch::Sender<u64>,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::with_capacity(max_batch);
    let mut seq = 0u64;
    // Begins answered since the last synced batch (see `Command::needs_sync`).
    let mut unsynced_begins = 0u64;
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let (commands, waiting): (Vec<Command>, Vec<Option<ReplyTx>>) =
            batch.drain(..).map(|r| (r.cmd, r.reply)).unzip();
        let begins = commands
            .iter()
            .filter(|c| matches!(c, Command::Begin(_)))
            .count() as u64;
        let sync = commands.iter().any(Command::needs_sync)
            || unsynced_begins + begins >= BEGINS_WITHOUT_SYNC;
        unsynced_begins = if sync { 0 } else { unsynced_begins + begins };
        if sync {
            metrics
                .synced_batches
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let batch = Batch {
            now_ms: now_ms(),
            xid_base: 0,
            commands,
        };
        let BatchOutput {
            results,
            writes,
            effects: out,
            stats,
            requests: _,
        } = apply_locked(&engine, &store, [Some(batch)]);
        let replies: Vec<(ReplyTx, Result<Reply, CoordinatorError>)> = waiting
            .into_iter()
            .zip(results.into_iter().flatten())
            .filter_map(|(tx, res)| Some((tx?, res)))
            .collect();
        let started = std::time::Instant::now();
        if let Err(err) = store.write_with(&writes, sync) {
            // The in-memory state is now ahead of the disk. The only safe move is to
            // stop and let a restart reload what is durable.
            tracing::error!(%err, "durable write failed; stopping the coordinator");
            for (tx, _) in replies {
                let _ = tx.send(Err(CoordinatorError::Storage(err.to_string())));
            }
            std::process::exit(70);
        }
        // Counted as acknowledged requests: commands nobody waits on (ticks, proxies'
        // answers) are not (unlike the Raft state machine, which cannot tell them apart).
        metrics.record_batch(replies.len(), started.elapsed(), &stats);
        for (tx, res) in replies {
            let _ = tx.send(res);
        }
        for eff in out {
            let _ = effects.send(eff);
        }
        seq += 1;
        let _ = applied.send(seq);
    }
}

async fn replicated_loop(mut rx: mpsc::Receiver<Pending>, cluster: Arc<Cluster>, max_batch: usize) {
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_BATCHES));
    // Picked once per process: only a state machine that issued no XID yet adopts it,
    // and every member adopts the one in the first batch it applies.
    let xid_base = crate::engine::random_xid_base();
    let mut batch = Vec::with_capacity(max_batch);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let (commands, replies): (Vec<Command>, Vec<Option<ReplyTx>>) =
            batch.drain(..).map(|r| (r.cmd, r.reply)).unzip();
        if !cluster.is_leader() {
            let e = cluster.not_leader();
            for tx in replies.into_iter().flatten() {
                let _ = tx.send(Err(copy_error(&e)));
            }
            continue;
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let cluster = cluster.clone();
        tokio::spawn(async move {
            let res = cluster
                .write(Batch {
                    now_ms: now_ms(),
                    xid_base,
                    commands,
                })
                .await;
            drop(permit);
            match res {
                Ok(r) if r.results.len() == replies.len() => {
                    for (tx, res) in replies.into_iter().zip(r.results) {
                        if let Some(tx) = tx {
                            let _ = tx.send(res);
                        }
                    }
                }
                Ok(r) => {
                    tracing::error!(
                        want = replies.len(),
                        got = r.results.len(),
                        "batch answered with the wrong number of results"
                    );
                    for tx in replies.into_iter().flatten() {
                        let _ = tx.send(Err(CoordinatorError::Undetermined(
                            "the batch's results were lost".into(),
                        )));
                    }
                }
                Err(e) => {
                    for tx in replies.into_iter().flatten() {
                        let _ = tx.send(Err(copy_error(&e)));
                    }
                }
            }
        });
    }
}

/// The same error for every caller of a batch.
fn copy_error(e: &CoordinatorError) -> CoordinatorError {
    match e {
        CoordinatorError::NotLeader { grpc, http } => CoordinatorError::NotLeader {
            grpc: grpc.clone(),
            http: http.clone(),
        },
        CoordinatorError::Undetermined(m) => CoordinatorError::Undetermined(m.clone()),
        other => CoordinatorError::Undetermined(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;
    use crate::engine::{Begin, Register};
    use crate::locks::RowKey;

    fn begin() -> Begin {
        Begin {
            name: "t".into(),
            timeout_ms: 600_000,
        }
    }

    /// Begins ride on the next synced batch, but never more than BEGINS_WITHOUT_SYNC of
    /// them (the most XIDs a crash can take, and how far a restart moves the counter).
    #[tokio::test]
    async fn begins_are_synced_at_least_every_so_many() {
        let dir = crate::wal::test_dir("begins-sync");
        let (store, _) = Store::open(&dir, 1 << 20).unwrap();
        let engine = Engine::new(crate::config::Config::default().engine());
        let (effects, _rx) = mpsc::unbounded_channel();
        let metrics = Arc::new(Metrics::default());
        let seq = Sequencer::start(engine, store, 4096, effects, metrics.clone());
        let syncs = || metrics.synced_batches.load(Relaxed);
        let xid = seq.ask(begin()).await.unwrap();
        assert_eq!(syncs(), 0, "a begin alone is not synced");
        let register = Register {
            xid,
            resource_id: "db".into(),
            keys: vec![RowKey {
                table: "t".into(),
                pk: vec![b"1".to_vec()],
            }],
            request_id: "r".into(),
            xa: false,
            owner: String::new(),
        };
        seq.ask(register).await.unwrap();
        assert_eq!(syncs(), 1, "a registration is (and the begin with it)");
        for _ in 1..BEGINS_WITHOUT_SYNC {
            seq.ask(begin()).await.unwrap();
        }
        assert_eq!(syncs(), 1);
        seq.ask(begin()).await.unwrap();
        assert_eq!(
            syncs(),
            2,
            "the {BEGINS_WITHOUT_SYNC}th begin since a sync is synced"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
