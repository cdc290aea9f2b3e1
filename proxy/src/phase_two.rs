//! Phase two in the proxy, driven by the coordinator over the `Attach` stream, and the
//! undo_log housekeeping.
//!
//! Everything here is idempotent and keeps no state of its own: the undo records live in
//! the backend and the decisions in the coordinator, so any proxy announcing the same
//! resource (this one after a restart, or another one) can finish a branch.
//!
//! - Commit: the branch's undo record is deleted, in batches shared by many branches, and
//!   answered once the batch is durable.
//! - Rollback, in one local transaction on a phase-two connection (UTC, READ COMMITTED):
//!   lock the undo record; none yet → insert the anti-suspension marker so a late phase
//!   one fails; otherwise undo the items newest first, each only after the dirty-write
//!   check says the rows are as the branch left them. A dirty write rolls the undo
//!   transaction back and reports the rows (before, after, current) for an operator.
//! - Resolve: an operator's decision on one conflicting row; refused when the row changed
//!   since the operator saw it.

use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Params, Pool};
use rewind_protocol::v1::{
    self, branch_result, coordinator_message, proxy_message, resolve_result,
    resource_manager_client::ResourceManagerClient, BranchAction, ResolveAction,
};
use rewind_protocol::GlobalStatus;
use rewind_undo_log::check::RowConflict;
use rewind_undo_log::undo_sql::{
    overwrite_row, select_current, undo_statements, UNDO_SESSION_SETUP,
};
use rewind_undo_log::{check, lock_key, CheckOutcome, Row, RowImage, UndoItem, UndoRecord};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::coordinator::{backoff, CallError};
use crate::undo_table::{STATUS_MARKER, STATUS_NORMAL};
use crate::Shared;

/// What one phase-two or resolve attempt came to.
#[derive(Debug)]
pub enum Outcome {
    Done,
    DirtyWrite(Vec<v1::DirtyRow>),
    Failure(String),
}

/// Runs until `shutdown`: keeps the undo table, the Attach stream (re-attaching to the
/// leader after any break), the batched committer and housekeeping going.
pub async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    let pool = match phase_two_pool(&shared) {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, "phase two disabled: bad backend URL");
            return;
        }
    };
    ensure_undo_table(&shared, &pool, &shutdown).await;
    let (commits, commit_rx) = mpsc::channel(4096);
    let committer = tokio::spawn(committer(shared.clone(), pool.clone(), commit_rx));
    let housekeeper = tokio::spawn(housekeeping(shared.clone(), pool.clone(), shutdown.clone()));
    let workers = Arc::new(Semaphore::new(shared.config.phase_two_connections));
    let mut attempt = 0;
    while !shutdown.is_cancelled() {
        let attached = attach(&shared, &pool, &commits, &workers, &shutdown).await;
        if attached {
            attempt = 0;
        }
        attempt += 1;
        tokio::select! {
            _ = tokio::time::sleep(backoff(attempt)) => {}
            _ = shutdown.cancelled() => {}
        }
    }
    housekeeper.abort();
    drop(commits);
    let _ = tokio::time::timeout(Duration::from_secs(2), committer).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), pool.disconnect()).await;
}

fn phase_two_pool(shared: &Shared) -> Result<Pool, mysql_async::Error> {
    let opts = mysql_async::Opts::from_url(&shared.config.backend)?;
    let max = shared.config.phase_two_connections.max(1);
    let constraints = mysql_async::PoolConstraints::new(0, max).expect("0 <= max");
    let opts = mysql_async::OptsBuilder::from_opts(opts)
        // UTC for TIMESTAMP images; READ COMMITTED so a lookup of a missing undo record
        // takes no gap lock that would deadlock with a phase one inserting it.
        .init(vec![
            UNDO_SESSION_SETUP.to_string(),
            "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED".to_string(),
        ])
        .prefer_socket(false)
        // An undo UPDATE must count the row it matched even when the row already holds
        // those values (the statement left it unchanged): affected rows = found rows.
        .client_found_rows(true)
        .pool_opts(
            mysql_async::PoolOpts::default()
                .with_constraints(constraints)
                // Keep the session setup: every use ends its own transaction.
                .with_reset_connection(false),
        );
    Ok(Pool::new(opts))
}

async fn ensure_undo_table(shared: &Shared, pool: &Pool, shutdown: &CancellationToken) {
    let mut attempt = 0;
    loop {
        let r = async {
            let mut conn = pool.get_conn().await?;
            for ddl in shared.undo.ddl() {
                conn.query_drop(ddl).await?;
            }
            Ok::<_, mysql_async::Error>(())
        }
        .await;
        match r {
            Ok(()) => return,
            Err(e) => {
                attempt += 1;
                if attempt == 1 {
                    warn!(error = %e, "cannot create the undo_log table yet; retrying");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1).min(backoff(attempt) * 4)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// One Attach session; returns whether it got as far as a stream.
async fn attach(
    shared: &Arc<Shared>,
    pool: &Pool,
    commits: &mpsc::Sender<(String, u64, oneshot::Sender<Outcome>)>,
    workers: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> bool {
    let (url, channel) = shared.coordinator.current();
    let (tx, rx) = mpsc::channel::<v1::ProxyMessage>(1024);
    let announce = v1::ProxyMessage {
        kind: Some(proxy_message::Kind::Announce(v1::Announce {
            proxy_id: format!(
                "rewind-proxy@{} pid {}",
                shared.config.listen,
                std::process::id()
            ),
            resource_ids: vec![shared.resource_id.clone()],
        })),
    };
    if tx.send(announce).await.is_err() {
        return false;
    }
    let mut inbound = match ResourceManagerClient::new(channel)
        .attach(ReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => {
            debug!(%url, error = %status.message(), "attach failed");
            shared.coordinator.fail_over(&url, Some(&status));
            return false;
        }
    };
    info!(%url, resource = %shared.resource_id, "attached to the coordinator");
    // The coordinator takes the ack of epoch N as confirming the set of N, and drops
    // older epochs still pending. So acks go out in epoch order: each waits for the
    // previous one, whose drain (of tables added earlier, still in the later set) may
    // still be waiting for a running write.
    let mut last_ack: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let msg = tokio::select! {
            m = inbound.message() => m,
            _ = shutdown.cancelled() => return true,
        };
        let msg = match msg {
            Ok(Some(m)) => m,
            Ok(None) => {
                info!(%url, "coordinator closed the phase-two stream");
                shared.coordinator.fail_over(&url, None);
                return true;
            }
            Err(status) => {
                info!(%url, error = %status.message(), "phase-two stream broke");
                shared.coordinator.fail_over(&url, Some(&status));
                return true;
            }
        };
        // Table-lock sets are applied at once, in stream order; phase-two work waits for
        // a worker.
        let permit = match &msg.kind {
            Some(coordinator_message::Kind::TableLocks(_)) | None => None,
            Some(_) => match workers.clone().acquire_owned().await {
                Ok(p) => Some(p),
                Err(_) => return true,
            },
        };
        let (shared, pool, tx, commits) =
            (shared.clone(), pool.clone(), tx.clone(), commits.clone());
        match msg.kind {
            Some(coordinator_message::Kind::BranchCommand(cmd)) => {
                let span =
                    tracing::info_span!("phase_two", xid = %cmd.xid, branch_id = cmd.branch_id);
                tokio::spawn(
                    async move {
                        let outcome = branch_command(&shared, &pool, &commits, &cmd).await;
                        drop(permit);
                        let result = v1::BranchResult {
                            command_id: cmd.command_id,
                            xid: cmd.xid,
                            branch_id: cmd.branch_id,
                            outcome: Some(match outcome {
                                Outcome::Done => branch_result::Outcome::Done(v1::Done {}),
                                Outcome::DirtyWrite(rows) => {
                                    branch_result::Outcome::DirtyWrite(v1::DirtyWrite { rows })
                                }
                                Outcome::Failure(message) => {
                                    branch_result::Outcome::Failure(v1::RetryableFailure {
                                        message,
                                    })
                                }
                            }),
                        };
                        // A closed stream loses the answer; the coordinator resends.
                        let _ = tx
                            .send(v1::ProxyMessage {
                                kind: Some(proxy_message::Kind::BranchResult(result)),
                            })
                            .await;
                    }
                    .instrument(span),
                );
            }
            Some(coordinator_message::Kind::TableLocks(t)) => {
                // Applied in stream order, here; confirmed once older writes to newly
                // locked tables are done (see `isolation`).
                tracing::debug!(epoch = t.epoch, tables = ?t.tables, "write-isolation set");
                let added = shared.isolation.update(t.tables);
                let drain = shared.config.write_isolation == crate::config::WriteIsolation::All;
                let previous = last_ack.take();
                last_ack = Some(tokio::spawn(async move {
                    if drain {
                        shared.isolation.drain(&added).await;
                    }
                    if let Some(p) = previous {
                        let _ = p.await;
                    }
                    let ack = v1::TableLocksAck {
                        epoch: t.epoch,
                        resource_id: t.resource_id,
                    };
                    let _ = tx
                        .send(v1::ProxyMessage {
                            kind: Some(proxy_message::Kind::TableLocksAck(ack)),
                        })
                        .await;
                }));
            }
            Some(coordinator_message::Kind::ResolveCommand(cmd)) => {
                let span = tracing::info_span!("resolve", xid = %cmd.xid, branch_id = cmd.branch_id, conflict = cmd.conflict_id);
                tokio::spawn(
                    async move {
                        let outcome = resolve(&shared, &pool, &cmd).await;
                        drop(permit);
                        let result = v1::ResolveResult {
                            command_id: cmd.command_id,
                            conflict_id: cmd.conflict_id,
                            outcome: Some(match outcome {
                                Outcome::Done => resolve_result::Outcome::Done(v1::Done {}),
                                Outcome::DirtyWrite(rows) => {
                                    resolve_result::Outcome::DirtyWrite(v1::DirtyWrite { rows })
                                }
                                Outcome::Failure(message) => {
                                    resolve_result::Outcome::Failure(v1::RetryableFailure {
                                        message,
                                    })
                                }
                            }),
                        };
                        let _ = tx
                            .send(v1::ProxyMessage {
                                kind: Some(proxy_message::Kind::ResolveResult(result)),
                            })
                            .await;
                    }
                    .instrument(span),
                );
            }
            None => {}
        }
    }
}

async fn branch_command(
    shared: &Shared,
    pool: &Pool,
    commits: &mpsc::Sender<(String, u64, oneshot::Sender<Outcome>)>,
    cmd: &v1::BranchCommand,
) -> Outcome {
    if cmd.resource_id != shared.resource_id {
        return Outcome::Failure(format!(
            "this proxy serves resource {:?}, not {:?}",
            shared.resource_id, cmd.resource_id
        ));
    }
    match BranchAction::try_from(cmd.action) {
        Ok(BranchAction::Commit) => {
            let (reply, rx) = oneshot::channel();
            if commits
                .send((cmd.xid.clone(), cmd.branch_id, reply))
                .await
                .is_err()
            {
                return Outcome::Failure("proxy shutting down".into());
            }
            rx.await
                .unwrap_or_else(|_| Outcome::Failure("proxy shutting down".into()))
        }
        Ok(BranchAction::Rollback) => {
            let outcome = rollback(shared, pool, &cmd.xid, cmd.branch_id).await;
            match &outcome {
                Outcome::Done => debug!("branch rolled back"),
                Outcome::DirtyWrite(rows) => {
                    warn!(
                        rows = rows.len(),
                        "dirty write: branch left for an operator"
                    )
                }
                Outcome::Failure(why) => info!(%why, "branch rollback failed; will be retried"),
            }
            outcome
        }
        _ => Outcome::Failure(format!("unknown branch action {}", cmd.action)),
    }
}

/// Deletes undo records of committed branches in batches: whatever arrived while the
/// previous batch ran goes in the next (up to 256 records, one statement).
async fn committer(
    shared: Arc<Shared>,
    pool: Pool,
    mut rx: mpsc::Receiver<(String, u64, oneshot::Sender<Outcome>)>,
) {
    const BATCH: usize = 256;
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut params = Vec::with_capacity(batch.len() * 2);
        for (xid, branch_id, _) in &batch {
            params.push(mysql_async::Value::from(xid.as_str()));
            params.push(mysql_async::Value::from(*branch_id));
        }
        let sql = shared.undo.delete_many(batch.len());
        let r = async {
            let mut conn = pool.get_conn().await?;
            conn.exec_drop(sql, Params::Positional(params)).await
        }
        .await;
        for (_, _, reply) in batch.drain(..) {
            let _ = reply.send(match &r {
                Ok(()) => Outcome::Done,
                Err(e) => Outcome::Failure(format!("deleting undo records: {e}")),
            });
        }
    }
}

async fn rollback(shared: &Shared, pool: &Pool, xid: &str, branch_id: u64) -> Outcome {
    let mut conn = match pool.get_conn().await {
        Ok(c) => c,
        Err(e) => return Outcome::Failure(format!("backend unavailable: {e}")),
    };
    // Twice at most: a marker insert that loses to a phase one committing its record at
    // that very moment means the record is there now.
    for _ in 0..2 {
        match rollback_once(shared, &mut conn, xid, branch_id).await {
            Ok(Some(outcome)) => return outcome,
            Ok(None) => continue,
            Err(e) => {
                let _ = conn.query_drop("ROLLBACK").await;
                return Outcome::Failure(e.to_string());
            }
        }
    }
    Outcome::Failure("undo record appeared and vanished during the rollback".into())
}

/// `Ok(None)`: retry (the marker collided with a just-committed record).
async fn rollback_once(
    shared: &Shared,
    conn: &mut Conn,
    xid: &str,
    branch_id: u64,
) -> Result<Option<Outcome>, mysql_async::Error> {
    conn.query_drop("START TRANSACTION").await?;
    let record: Option<(i32, Vec<u8>)> = conn
        .exec_first(shared.undo.select_for_update(), (xid, branch_id))
        .await?;
    let info = match record {
        None => {
            match conn
                .exec_drop(shared.undo.insert_marker(), (branch_id, xid))
                .await
            {
                Ok(()) => {}
                Err(mysql_async::Error::Server(s)) if s.code == 1062 => {
                    conn.query_drop("ROLLBACK").await?;
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
            conn.query_drop("COMMIT").await?;
            debug!("no undo record: marker inserted so a late phase one fails");
            return Ok(Some(Outcome::Done));
        }
        Some((STATUS_MARKER, _)) => {
            conn.query_drop("COMMIT").await?;
            return Ok(Some(Outcome::Done));
        }
        Some((STATUS_NORMAL, info)) => info,
        Some((other, _)) => {
            conn.query_drop("ROLLBACK").await?;
            return Ok(Some(Outcome::Failure(format!(
                "undo record with unknown status {other}"
            ))));
        }
    };
    let record = match UndoRecord::decode(&info) {
        Ok(r) => r,
        Err(e) => {
            conn.query_drop("ROLLBACK").await?;
            return Ok(Some(Outcome::Failure(format!(
                "undo record unreadable: {e}"
            ))));
        }
    };
    for item in record.rollback_order() {
        let current = match current_rows(conn, item).await? {
            Ok(c) => c,
            Err(why) => {
                conn.query_drop("ROLLBACK").await?;
                return Ok(Some(Outcome::Failure(why)));
            }
        };
        let outcome = match check(item, &current) {
            Ok(o) => o,
            Err(e) => {
                conn.query_drop("ROLLBACK").await?;
                return Ok(Some(Outcome::Failure(format!("dirty-write check: {e}"))));
            }
        };
        match outcome {
            CheckOutcome::Unchanged | CheckOutcome::AlreadyRestored => {}
            CheckOutcome::Restore => {
                let statements = match undo_statements(item) {
                    Ok(s) => s,
                    Err(e) => {
                        conn.query_drop("ROLLBACK").await?;
                        return Ok(Some(Outcome::Failure(format!("undo SQL: {e}"))));
                    }
                };
                for st in statements {
                    conn.exec_drop(st.sql, Params::Positional(st.params))
                        .await?;
                    if conn.affected_rows() != 1 {
                        conn.query_drop("ROLLBACK").await?;
                        return Ok(Some(Outcome::Failure(format!(
                            "an undo statement on {} hit {} rows instead of one",
                            item.table.name,
                            conn.affected_rows()
                        ))));
                    }
                }
            }
            CheckOutcome::DirtyWrite(dirty) => {
                conn.query_drop("ROLLBACK").await?;
                let rows = dirty
                    .rows
                    .iter()
                    .map(|r| dirty_row(item, r))
                    .collect::<Result<Vec<_>, _>>();
                return Ok(Some(match rows {
                    Ok(rows) => Outcome::DirtyWrite(rows),
                    Err(e) => Outcome::Failure(format!("describing a dirty write: {e}")),
                }));
            }
        }
    }
    conn.exec_drop(shared.undo.delete_one(), (xid, branch_id))
        .await?;
    crate::failpoint::hit("rollback-before-commit").await;
    conn.query_drop("COMMIT").await?;
    crate::failpoint::hit("rollback-after-commit").await;
    Ok(Some(Outcome::Done))
}

/// The item's rows as they are now, locked. `Err` carries a reason that is not a backend
/// failure (an image the undo-log cannot express as SQL or read back).
async fn current_rows(
    conn: &mut Conn,
    item: &UndoItem,
) -> Result<Result<RowImage, String>, mysql_async::Error> {
    let statements = match select_current(item) {
        Ok(s) => s,
        Err(e) => return Ok(Err(format!("reading current rows: {e}"))),
    };
    let mut current = RowImage::empty(item.table.name.clone());
    for st in statements {
        let rows: Vec<mysql_async::Row> = conn.exec(st.sql, Params::Positional(st.params)).await?;
        match RowImage::from_mysql(item.table.name.clone(), &rows) {
            Ok(part) => current.rows.extend(part.rows),
            Err(e) => return Ok(Err(format!("decoding current rows: {e}"))),
        }
    }
    Ok(Ok(current))
}

fn row_json(row: Option<&Row>) -> String {
    row.map(Row::to_json)
        .unwrap_or(serde_json::Value::Null)
        .to_string()
}

fn dirty_row(item: &UndoItem, r: &RowConflict) -> Result<v1::DirtyRow, rewind_undo_log::Error> {
    let keyed = r
        .after
        .as_ref()
        .or(r.before.as_ref())
        .or(r.current.as_ref())
        .ok_or_else(|| rewind_undo_log::Error::MissingColumn("primary key".into()))?;
    Ok(v1::DirtyRow {
        table: lock_key::LockKey::table_id(&item.table.name),
        pk: rewind_undo_log::record::row_key(keyed, &item.table.primary_key)?,
        before_json: row_json(r.before.as_ref()),
        after_json: row_json(r.after.as_ref()),
        current_json: row_json(r.current.as_ref()),
    })
}

/// An operator's decision on one conflicting row. Both actions first check that the row
/// is still what the operator saw; then restore writes the row's state from before the
/// branch, and both take the row out of the undo record so the retried rollback leaves it
/// alone. A repeated command finds the row already settled and answers done.
async fn resolve(shared: &Shared, pool: &Pool, cmd: &v1::ResolveCommand) -> Outcome {
    let mut conn = match pool.get_conn().await {
        Ok(c) => c,
        Err(e) => return Outcome::Failure(format!("backend unavailable: {e}")),
    };
    match resolve_in(shared, &mut conn, cmd).await {
        Ok(outcome) => {
            if !matches!(outcome, Outcome::Done) {
                let _ = conn.query_drop("ROLLBACK").await;
            }
            outcome
        }
        Err(e) => {
            let _ = conn.query_drop("ROLLBACK").await;
            Outcome::Failure(e.to_string())
        }
    }
}

async fn resolve_in(
    shared: &Shared,
    conn: &mut Conn,
    cmd: &v1::ResolveCommand,
) -> Result<Outcome, mysql_async::Error> {
    let action = match ResolveAction::try_from(cmd.action) {
        Ok(a @ (ResolveAction::RestoreBefore | ResolveAction::KeepCurrent)) => a,
        _ => {
            return Ok(Outcome::Failure(format!(
                "unknown resolve action {}",
                cmd.action
            )))
        }
    };
    let Some(table) = lock_key::table_name(&cmd.table) else {
        return Ok(Outcome::Failure(format!("malformed table {:?}", cmd.table)));
    };
    conn.query_drop("START TRANSACTION").await?;
    let record: Option<(i32, Vec<u8>)> = conn
        .exec_first(
            shared.undo.select_for_update(),
            (cmd.xid.as_str(), cmd.branch_id),
        )
        .await?;
    let Some((STATUS_NORMAL, info)) = record else {
        return Ok(Outcome::Failure(
            "the branch's undo record is gone (rolled back or finished already)".into(),
        ));
    };
    let mut record = match UndoRecord::decode(&info) {
        Ok(r) => r,
        Err(e) => return Ok(Outcome::Failure(format!("undo record unreadable: {e}"))),
    };
    let (item, key_row, before) = match record.row_history(&table, &cmd.pk) {
        Ok(Some((item, row, before))) => (item.clone(), row.clone(), before.cloned()),
        Ok(None) => {
            // Settled by an earlier delivery of this command.
            conn.query_drop("COMMIT").await?;
            return Ok(Outcome::Done);
        }
        Err(e) => return Ok(Outcome::Failure(format!("undo record: {e}"))),
    };
    // The row as it is now, locked, in the same shape the dirty-write report used.
    let probe = UndoItem {
        kind: rewind_undo_log::SqlKind::Update,
        table: item.table.clone(),
        set_columns: Vec::new(),
        before: RowImage::new(table.clone(), vec![key_row.clone()]),
        after: RowImage::new(table.clone(), vec![key_row.clone()]),
    };
    let current = match current_rows(conn, &probe).await? {
        Ok(c) => c.rows.into_iter().next(),
        Err(why) => return Ok(Outcome::Failure(why)),
    };
    let seen: serde_json::Value =
        serde_json::from_str(&cmd.current_json).unwrap_or(serde_json::Value::Null);
    let now = current
        .as_ref()
        .map(Row::to_json)
        .unwrap_or(serde_json::Value::Null);
    if seen != now {
        return Ok(Outcome::DirtyWrite(vec![v1::DirtyRow {
            table: cmd.table.clone(),
            pk: cmd.pk.clone(),
            before_json: cmd.before_json.clone(),
            after_json: cmd.after_json.clone(),
            current_json: now.to_string(),
        }]));
    }
    if action == ResolveAction::RestoreBefore {
        let statement =
            match overwrite_row(&item.table, &key_row, before.as_ref(), current.as_ref()) {
                Ok(s) => s,
                Err(e) => return Ok(Outcome::Failure(format!("restore SQL: {e}"))),
            };
        if let Some(st) = statement {
            conn.exec_drop(st.sql, Params::Positional(st.params))
                .await?;
            if conn.affected_rows() > 1 {
                return Ok(Outcome::Failure("the restore hit more than one row".into()));
            }
        }
    }
    if let Err(e) = record.settle_row(&table, &cmd.pk) {
        return Ok(Outcome::Failure(format!("undo record: {e}")));
    }
    let info = match record.encode() {
        Ok(b) => b,
        Err(e) => return Ok(Outcome::Failure(format!("undo record: {e}"))),
    };
    conn.exec_drop(
        shared.undo.update_info(),
        (info, cmd.xid.as_str(), cmd.branch_id),
    )
    .await?;
    conn.query_drop("COMMIT").await?;
    info!(action = ?action, "conflict resolved");
    Ok(Outcome::Done)
}

/// Deletes undo records nobody needs any more: every `undo_housekeeping_secs`, records
/// older than `undo_retention_secs` are looked up in the coordinator. Deleted: any record
/// of a committed transaction (its phase-two delete was lost, or its phase one committed
/// after the global commit), and markers of finished or forgotten transactions. A normal
/// record of a transaction that is not committed is never deleted: it is the only way
/// back to the data's previous state. A marker must outlive any phase one that could
/// still try to write its record: the retention bounds that (phase one gives up when it
/// stalled half as long, see `phase_one::commit`).
async fn housekeeping(shared: Arc<Shared>, pool: Pool, shutdown: CancellationToken) {
    let every = Duration::from_secs(shared.config.undo_housekeeping_secs);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
        match sweep(&shared, &pool).await {
            Ok((0, 0)) => {}
            Ok((deleted, kept)) => info!(deleted, kept, "undo housekeeping"),
            Err(e) => debug!(error = %e, "undo housekeeping skipped"),
        }
    }
}

/// One housekeeping pass over old records: how many were deleted and how many kept.
pub async fn sweep(shared: &Shared, pool: &Pool) -> Result<(usize, usize), String> {
    let mut conn = pool.get_conn().await.map_err(|e| e.to_string())?;
    let old: Vec<(String, u64, i32)> = conn
        .exec(
            shared.undo.older_than(),
            (shared.config.undo_retention_secs, 1000u32),
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut deleted = 0;
    let examined = old.len();
    for (xid, branch_id, status) in old {
        let fate = shared.coordinator.status(&xid).await;
        let delete = match (&fate, status) {
            (Ok(GlobalStatus::Committed), _) => true,
            (Ok(GlobalStatus::RolledBack | GlobalStatus::TimeoutRolledBack), STATUS_MARKER) => true,
            (Err(CallError::NotFound(_)), STATUS_MARKER) => true,
            (Err(CallError::Unavailable(e)), _) => return Err(e.clone()),
            (
                Ok(GlobalStatus::RolledBack | GlobalStatus::TimeoutRolledBack)
                | Err(CallError::NotFound(_)),
                _,
            ) => {
                warn!(%xid, branch_id, "undo record of a transaction that is rolled back or unknown to the coordinator; kept for an operator");
                false
            }
            _ => false,
        };
        if delete {
            conn.exec_drop(
                shared.undo.delete_with_status(),
                (xid.as_str(), branch_id, status),
            )
            .await
            .map_err(|e| e.to_string())?;
            deleted += conn.affected_rows() as usize;
        }
    }
    Ok((deleted, examined - deleted))
}
