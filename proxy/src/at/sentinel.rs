//! Sentinels: one internal transaction per busy table that holds its definition confirmed
//! on behalf of every session, so that AT writes on it need no definition query at all.
//!
//! The [`definitions`](super::definitions) witness lets a write skip the definition query
//! while another transaction holds the same definition confirmed, and settles it at commit
//! by a proof: a holder's request, sent after the write, answered inside its transaction.
//! Business transactions are holders only while they run, so under concurrency about half
//! of all writes still read the definition (the query costs about 0.3 ms of MariaDB CPU,
//! most of it in information_schema.TRIGGERS, which builds an on-disk temporary table
//! every time), and a commit that finds no proof in time reads it again.
//!
//! A sentinel is a holder that is always there while a table is busy: on a pooled backend
//! connection of its own it opens a read-only transaction, reads the definition (which
//! takes the table's metadata lock, MDL, until the transaction ends) and registers as a
//! holder of it. Whenever a commit waits for a proof, it sends `DO 0` and, answered still
//! inside its transaction, publishes a proof for everything stamped before it; one answer
//! serves every commit waiting at the time.
//!
//! DDL on the table needs the exclusive MDL, so a sentinel ends each transaction
//! [`CYCLE`] after it began (deregistering first). The next one opens on a second
//! connection [`OVERLAP`] before that, so the definition stays held across the change: DDL
//! still waits at most one cycle, and a transaction opened after the DDL arrived queues
//! behind it and reads the new definition. Writes planned on the old metadata then find no
//! holder of it and read the definition as before. A sentinel that loses its connection
//! or is answered outside its transaction simply stops: nothing is proven by it any more,
//! and commits fall back to the query.
//!
//! Sentinels start for a table after [`START_AFTER`] AT writes on it within a second and
//! stop once a second passes without one; at most [`MAX_SENTINELS`] run at once.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use rewind_undo_log::TableName;
use tokio_util::sync::CancellationToken;

use super::definitions::Holding;
use crate::wire::in_transaction;
use crate::Shared;

/// How long a sentinel holds the table's MDL at a time: the longest DDL waits for it.
pub(crate) const CYCLE: Duration = Duration::from_millis(50);
/// AT writes on a table within [`WINDOW`] that start a sentinel for it.
pub(crate) const START_AFTER: u32 = 20;
const WINDOW: Duration = Duration::from_secs(1);
/// A sentinel stops after this long without an AT write on its table.
const IDLE: Duration = Duration::from_secs(1);
/// Sentinels running at once, each with a backend connection.
pub(crate) const MAX_SENTINELS: usize = 32;
/// Tables whose writes are counted before the quiet ones are forgotten.
const MAX_TABLES: usize = 1024;

/// The sentinels of one proxy process.
#[derive(Default)]
pub struct Sentinels {
    /// Set once the process's [`Shared`] exists (unset: no sentinel ever starts).
    shared: OnceLock<(Weak<Shared>, tokio::runtime::Handle)>,
    tables: Mutex<HashMap<TableName, Demand>>,
    stop: CancellationToken,
}

impl std::fmt::Debug for Sentinels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sentinels").finish_non_exhaustive()
    }
}

/// AT writes seen on one table.
struct Demand {
    window: Instant,
    writes: u32,
    last: Instant,
    running: bool,
}

impl Sentinels {
    /// Lets sentinels start, on the runtime this is called on (the process's, whose
    /// pools `shared.pools` are).
    pub(crate) fn attach(&self, shared: Weak<Shared>) {
        let _ = self.shared.set((shared, tokio::runtime::Handle::current()));
    }

    /// Stops every sentinel (at shutdown, before the pools are closed).
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }

    fn demand(&self) -> std::sync::MutexGuard<'_, HashMap<TableName, Demand>> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An AT write on `name` is about to confirm its definition: counts towards starting a
    /// sentinel for it and keeps a running one going.
    pub(crate) fn write_on(&self, name: &TableName) {
        let Some((shared, handle)) = self.shared.get() else {
            return;
        };
        if self.stop.is_cancelled() {
            return;
        }
        let now = Instant::now();
        let mut tables = self.demand();
        if tables.len() >= MAX_TABLES && !tables.contains_key(name) {
            tables.retain(|_, d| d.running || now.duration_since(d.last) < WINDOW);
        }
        let d = tables.entry(name.clone()).or_insert(Demand {
            window: now,
            writes: 0,
            last: now,
            running: false,
        });
        d.last = now;
        if now.duration_since(d.window) > WINDOW {
            d.window = now;
            d.writes = 0;
        }
        d.writes += 1;
        if d.running || d.writes < START_AFTER {
            return;
        }
        if running(&tables) >= MAX_SENTINELS {
            return;
        }
        let Some(d) = tables.get_mut(name) else {
            return;
        };
        d.running = true;
        let (shared, name) = (shared.clone(), name.clone());
        handle.spawn(async move {
            let reason = watch(&shared, &name).await;
            tracing::debug!(table = %name, reason, "sentinel stopped");
            if let Some(s) = shared.upgrade() {
                let mut tables = s.sentinels.demand();
                if let Some(d) = tables.get_mut(&name) {
                    d.running = false;
                    d.writes = 0;
                    d.window = Instant::now();
                }
                // Tables nobody wrote for a while are forgotten.
                tables.retain(|_, d| d.running || d.last.elapsed() < WINDOW);
            }
        });
    }

    /// Sentinels running now.
    pub(crate) fn running(&self) -> usize {
        running(&self.demand())
    }

    /// Whether the table saw an AT write lately (else its sentinel stops).
    fn busy(&self, name: &TableName) -> bool {
        !self.stop.is_cancelled()
            && self
                .demand()
                .get(name)
                .is_some_and(|d| d.last.elapsed() < IDLE)
    }
}

fn running(tables: &HashMap<TableName, Demand>) -> usize {
    tables.values().filter(|d| d.running).count()
}

/// Runs the sentinel of `name` until its table goes idle, the proxy stops or something
/// fails; returns why it stopped.
///
/// Each transaction lives at most [`CYCLE`]; the next one opens [`OVERLAP`] before that on
/// a second connection, so the definition stays held across the change (one at a time, a
/// write that came in while the next transaction was reading the definition found no
/// holder and read it too: about a tenth of all AT writes under `bench/at`). DDL still
/// waits at most one cycle: every transaction started before it ends within one, and one
/// opened after it queues behind it for the MDL.
async fn watch(shared: &Weak<Shared>, name: &TableName) -> &'static str {
    let (pool, stop) = match shared.upgrade() {
        Some(s) => (s.pools[0].clone(), s.sentinels.stop.clone()),
        None => return "stopping",
    };
    let Some(mut conn) = connection(&pool).await else {
        return "no backend connection";
    };
    let mut spare: Option<mysql_async::Conn> = None;
    let mut opened = {
        let Some(s) = shared.upgrade() else {
            return "stopping";
        };
        match open(&s, &mut conn, name).await {
            Ok(held) => held,
            Err(why) => return why,
        }
    };
    loop {
        let Some(s) = shared.upgrade() else {
            return "stopping";
        };
        let end = opened.since + CYCLE;
        // Proofs until the next transaction is due to open.
        if let Err(why) = serve(&s, &mut conn, name, &opened, end - OVERLAP, &stop).await {
            // The connection goes back to its pool, which resets it (ending any transaction).
            return why;
        }
        if stop.is_cancelled() || !s.sentinels.busy(name) {
            let why = if stop.is_cancelled() {
                "stopping"
            } else {
                "idle"
            };
            return close(&mut conn, opened).await.err().unwrap_or(why);
        }
        let next_conn = match spare.take() {
            Some(c) => Some(c),
            None => connection(&pool).await,
        };
        let Some(mut next_conn) = next_conn else {
            // No second connection: one transaction after the other, as before.
            if let Err(why) = close(&mut conn, opened).await {
                return why;
            }
            opened = match open(&s, &mut conn, name).await {
                Ok(held) => held,
                Err(why) => return why,
            };
            continue;
        };
        let (s2, name2) = (s.clone(), name.clone());
        let next = tokio::spawn(async move {
            let r = open(&s2, &mut next_conn, &name2).await;
            (next_conn, r)
        });
        // This transaction keeps proving until its cycle is over, then ends, whether or
        // not the next one holds the definition yet (DDL may be what it waits behind).
        let served = serve(&s, &mut conn, name, &opened, end, &stop).await;
        let closed = match served {
            Ok(()) => close(&mut conn, opened).await,
            Err(why) => Err(why),
        };
        let Ok((next_conn, r)) = next.await else {
            return "the next cycle's task failed";
        };
        if let Err(why) = closed {
            // The next transaction (if it opened) ends with its connection's reset.
            return why;
        }
        spare = Some(std::mem::replace(&mut conn, next_conn));
        opened = match r {
            Ok(held) => held,
            Err(why) => return why,
        };
    }
}

/// How long before a sentinel transaction's end the next one opens (so one begins every
/// 40 ms). Under `bench/at`, two tables, 8 s: definition reads by business writes 622 →
/// 147 against one transaction after the other, the sentinels' own 294 → 388.
const OVERLAP: Duration = Duration::from_millis(10);

/// A pooled backend connection for a sentinel, within five seconds.
async fn connection(pool: &mysql_async::Pool) -> Option<mysql_async::Conn> {
    match tokio::time::timeout(Duration::from_secs(5), pool.get_conn()).await {
        Ok(Ok(c)) => Some(c),
        _ => None,
    }
}

/// A sentinel transaction holding a definition confirmed.
struct Opened {
    definition: String,
    holding: [Holding; 1],
    since: tokio::time::Instant,
}

/// Opens a transaction and confirms the definition in it (which takes the table's MDL
/// until the transaction ends); registers it as a holder.
async fn open(
    shared: &Shared,
    conn: &mut mysql_async::Conn,
    name: &TableName,
) -> Result<Opened, &'static str> {
    let witness = &shared.definitions;
    conn.query_drop("START TRANSACTION READ ONLY")
        .await
        .map_err(|_| "START TRANSACTION failed")?;
    let since = tokio::time::Instant::now();
    // Takes the table's MDL for the rest of the transaction (see `definition_query`).
    let definition = match shared
        .metas
        .definition(conn, &name.schema, &name.table)
        .await
    {
        Ok(d) => d,
        Err(_) => {
            let _ = conn.query_drop("ROLLBACK").await;
            return Err("the definition could not be read");
        }
    };
    if !in_transaction(conn) {
        return Err("answered outside its transaction");
    }
    witness.counts.sentinel.fetch_add(1, Ordering::Relaxed);
    let holding = [witness.hold(name, &definition)];
    Ok(Opened {
        definition,
        holding,
        since,
    })
}

/// Proves the definition on demand until `until`.
async fn serve(
    shared: &Shared,
    conn: &mut mysql_async::Conn,
    name: &TableName,
    opened: &Opened,
    until: tokio::time::Instant,
    stop: &CancellationToken,
) -> Result<(), &'static str> {
    let witness = &shared.definitions;
    loop {
        let asked = witness.proof_wanted.notified();
        if witness.proof_awaited(name, &opened.definition) {
            let stamp = witness.stamp();
            if conn.query_drop("DO 0").await.is_err() {
                return Err("a proof request failed");
            }
            if !in_transaction(conn) {
                return Err("answered outside its transaction");
            }
            witness.publish(&opened.holding, stamp);
            if tokio::time::Instant::now() >= until {
                return Ok(());
            }
            continue;
        }
        tokio::select! {
            _ = asked => {}
            _ = tokio::time::sleep_until(until) => return Ok(()),
            _ = stop.cancelled() => return Ok(()),
        }
    }
}

/// Ends a sentinel transaction: deregistered before the MDL goes.
async fn close(conn: &mut mysql_async::Conn, opened: Opened) -> Result<(), &'static str> {
    drop(opened);
    conn.query_drop("ROLLBACK")
        .await
        .map_err(|_| "ROLLBACK failed")
}
