//! The `Attach` stream: this proxy's standing connection to the coordinator, over which
//! it announces its resource and receives phase two (branch commit and rollback, operator
//! resolutions), write-isolation sets and half messages' check-backs; it also keeps the
//! undo table and starts the undo housekeeping, and carries the proxy's reports (outbox,
//! XA lock waits, consumed half messages).
//!
//! Everything here is idempotent and keeps no state of its own: the undo records live in
//! the backend and the decisions in the coordinator, so any proxy announcing the same
//! resource (this one after a restart, or another one) can finish a branch.
//!
//! - Commit: the branch's undo record is deleted, in batches shared by many branches, and
//!   answered once the batch is durable.
//! - Rollback and resolve: see [`crate::at::rollback`].
//! - A half message's check-back: see [`crate::msg::check`].

use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Params, Pool};
use rewind_protocol::v1::{
    self, branch_result, coordinator_message, proxy_message, resolve_result,
    resource_manager_client::ResourceManagerClient, BranchAction,
};
use rewind_undo_log::undo_sql::UNDO_SESSION_SETUP;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::at::housekeeping::housekeeping;
use crate::at::rollback::{resolve, rollback, UndoOutcome};
use crate::coordinator::backoff;
use crate::Shared;

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
    let barrier_keeper = tokio::spawn(crate::barrier::housekeeping(
        shared.clone(),
        pool.clone(),
        shutdown.clone(),
    ));
    let xa_recovery = tokio::spawn(crate::xa::phase_two::recovery_loop(
        shared.clone(),
        pool.clone(),
        shutdown.clone(),
    ));
    // The relay has its own connections: a publish waiting for the broker holds one.
    let relay = match (shared.outbox.enabled, own_pool(&shared, 2)) {
        (true, Ok(relay_pool)) => Some(tokio::spawn(crate::outbox::relay::run(
            shared.clone(),
            relay_pool,
            shutdown.clone(),
        ))),
        _ => None,
    };
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
    barrier_keeper.abort();
    xa_recovery.abort();
    // Prepared XA branches stay prepared in the database; their connections are closed,
    // never handed back to a pool whose reset could end them.
    for conn in shared.xa_pinned.drain() {
        crate::xa::discard(conn).await;
    }
    if let Some(relay) = relay {
        let _ = tokio::time::timeout(Duration::from_secs(5), relay).await;
    }
    drop(commits);
    let _ = tokio::time::timeout(Duration::from_secs(2), committer).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), pool.disconnect()).await;
}

pub(crate) fn phase_two_pool(shared: &Shared) -> Result<Pool, mysql_async::Error> {
    own_pool(shared, shared.config.phase_two_connections.max(1))
}

/// Connections for the proxy's own work on the backend (phase two, the outbox relay), at
/// most `max`.
pub(crate) fn own_pool(shared: &Shared, max: usize) -> Result<Pool, mysql_async::Error> {
    let opts = mysql_async::Opts::from_url(&shared.config.backend)?;
    let constraints = mysql_async::PoolConstraints::new(0, max).expect("0 <= max");
    let keepalive_idle = crate::keepalive::backend(&opts, shared.config.tcp_keepalive_secs);
    let opts = mysql_async::OptsBuilder::from_opts(opts)
        .tcp_keepalive(keepalive_idle)
        // UTC for TIMESTAMP images; READ COMMITTED so a lookup of a missing undo record
        // takes no gap lock that would deadlock with a phase one inserting it, and a relay
        // sweep takes record locks only (never blocking an application's outbox insert).
        .init(vec![
            UNDO_SESSION_SETUP.to_string(),
            "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED".to_string(),
        ])
        .prefer_socket(false)
        .ssl_opts(shared.backend_ssl.clone())
        // An undo UPDATE must count the row it matched even when the row already holds
        // those values (the statement left it unchanged): affected rows = found rows.
        .client_found_rows(true)
        .pool_opts(
            mysql_async::PoolOpts::default()
                .with_constraints(constraints)
                // Keep the session setup: every use ends its own transaction.
                .with_reset_connection(false)
                // Keep idle connections for reuse (a minute). Without a TTL, mysql_async
                // keeps only `min` (0) idle connections: every phase-two batch, rollback
                // and relay sweep opened a new connection (measured: ~70 a second under
                // bench/at, each a handshake, a login and the setup above).
                .with_inactive_connection_ttl(Duration::from_secs(60))
                .with_ttl_check_interval(Duration::from_secs(30)),
        );
    Ok(Pool::new(opts))
}

pub(crate) async fn ensure_undo_table(shared: &Shared, pool: &Pool, shutdown: &CancellationToken) {
    let mut attempt = 0;
    loop {
        let r = async {
            let mut conn = pool.get_conn().await?;
            for ddl in shared.undo.ddl() {
                conn.query_drop(ddl).await?;
            }
            conn.query_drop(shared.barrier.ddl()).await?;
            conn.query_drop(shared.msg_check.ddl()).await?;
            conn.query_drop(shared.tcc_fence.ddl()).await?;
            conn.query_drop(shared.outbox_table.ddl()).await?;
            conn.query_drop(shared.xa_proof.ddl()).await?;
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

/// This proxy process's id in its Announce (and in XA registrations, so the coordinator
/// sends an XA branch's phase two to the proxy holding its prepared transaction).
pub(crate) fn proxy_id(shared: &Shared) -> String {
    format!(
        "rewind-proxy@{} pid {}",
        shared.config.listen,
        std::process::id()
    )
}

/// One Attach session; returns whether it got as far as a stream.
pub(crate) async fn attach(
    shared: &Arc<Shared>,
    pool: &Pool,
    commits: &mpsc::Sender<(String, u64, oneshot::Sender<UndoOutcome>)>,
    workers: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> bool {
    let (url, channel) = shared.coordinator.current();
    let (tx, rx) = mpsc::channel::<v1::ProxyMessage>(1024);
    let proxy_id = proxy_id(shared);
    let announce = v1::ProxyMessage {
        kind: Some(proxy_message::Kind::Announce(v1::Announce {
            proxy_id: proxy_id.clone(),
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
    // Phase-two commands arrive from here on: XIDs registered now can be known to run
    // until a command for them arrives (see `at::begun`); whatever ends this stream
    // forgets them.
    shared.begun.attached();
    let _forget = Detached(shared.as_ref());
    // The console's figures go out on this stream while it lasts.
    let _reporter = AbortOnDrop(tokio::spawn(crate::outbox::report::report_loop(
        shared.clone(),
        pool.clone(),
        proxy_id,
        tx.clone(),
    )));
    // So do committed barrier pairs, for the coordinator's consumed messages.
    let _consumed = AbortOnDrop(tokio::spawn(crate::msg::consumed::send_loop(
        shared.clone(),
        tx.clone(),
    )));
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
        // A command says its transaction is decided: no more checks answered here for
        // its XID (see `at::begun`), even while the command waits for a worker; and its
        // branch's phase-one report, if still held, is moot.
        match &msg.kind {
            Some(coordinator_message::Kind::BranchCommand(cmd)) => {
                shared.begun.decided(&cmd.xid);
                shared.coordinator.moot_report(&cmd.xid, cmd.branch_id);
            }
            Some(coordinator_message::Kind::ResolveCommand(cmd)) => shared.begun.decided(&cmd.xid),
            _ => {}
        }
        // Table-lock sets are applied at once, in stream order; phase-two work waits for
        // a worker. A check-back probe waits for no worker: it holds its connection at
        // most about a second, and the stream must never wait behind phase two for it.
        // Nor does an AT commit: it only queues for the committer, which has a connection
        // of its own. (Holding a worker while its batch gathered and ran, commits took
        // every worker under load, the stream stopped behind them, write-isolation acks
        // came too late and registrations failed with 1205; batches had at most eight
        // records.)
        let permit = match &msg.kind {
            Some(coordinator_message::Kind::TableLocks(_))
            | Some(coordinator_message::Kind::OutboxRedrive(_))
            | Some(coordinator_message::Kind::MessageCheck(_))
            | None => None,
            Some(coordinator_message::Kind::BranchCommand(cmd))
                if cmd.xa_bqual.is_empty()
                    && BranchAction::try_from(cmd.action) == Ok(BranchAction::Commit) =>
            {
                None
            }
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
                                UndoOutcome::Done => branch_result::Outcome::Done(v1::Done {}),
                                UndoOutcome::DirtyWrite(rows) => {
                                    branch_result::Outcome::DirtyWrite(v1::DirtyWrite { rows })
                                }
                                UndoOutcome::Failure(message) => {
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
                                UndoOutcome::Done => resolve_result::Outcome::Done(v1::Done {}),
                                UndoOutcome::DirtyWrite(rows) => {
                                    resolve_result::Outcome::DirtyWrite(v1::DirtyWrite { rows })
                                }
                                UndoOutcome::Failure(message) => {
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
            Some(coordinator_message::Kind::OutboxRedrive(cmd)) => {
                tokio::spawn(async move {
                    let outcome =
                        crate::outbox::report::redrive(&shared, &pool, &cmd.message_id).await;
                    let result = v1::OutboxRedriveResult {
                        command_id: cmd.command_id,
                        outcome: Some(outcome),
                    };
                    let _ = tx
                        .send(v1::ProxyMessage {
                            kind: Some(proxy_message::Kind::OutboxRedriveResult(result)),
                        })
                        .await;
                });
            }
            Some(coordinator_message::Kind::MessageCheck(cmd)) => {
                let span = tracing::info_span!("message_check", message_id = %cmd.message_id);
                tokio::spawn(
                    async move {
                        let outcome = crate::msg::check::check(&shared, &pool, &cmd).await;
                        let result = v1::MessageCheckResult {
                            command_id: cmd.command_id,
                            message_id: cmd.message_id,
                            outcome: Some(outcome),
                        };
                        // A closed stream loses the answer; the coordinator checks again.
                        let _ = tx
                            .send(v1::ProxyMessage {
                                kind: Some(proxy_message::Kind::MessageCheckResult(result)),
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

/// Forgets the XIDs known to be running when the stream that would say otherwise ends.
struct Detached<'a>(&'a Shared);

impl Drop for Detached<'_> {
    fn drop(&mut self) {
        self.0.begun.detached();
    }
}

/// Aborts a task when the owner goes (the stream it reports on ended).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs one phase-two command and counts its outcome.
pub(crate) async fn branch_command(
    shared: &Shared,
    pool: &Pool,
    commits: &mpsc::Sender<(String, u64, oneshot::Sender<UndoOutcome>)>,
    cmd: &v1::BranchCommand,
) -> UndoOutcome {
    // `at.phase_two`, child of the coordinator's `branch.phase_two` (traces on).
    let span = rewind_protocol::trace::enabled().then(|| {
        use rewind_protocol::trace::{self, KeyValue};
        let parent = trace::parse_traceparent(&cmd.traceparent)
            .map(trace::remote)
            .unwrap_or_default();
        let action = match BranchAction::try_from(cmd.action) {
            Ok(BranchAction::Commit) => "commit",
            Ok(BranchAction::Rollback) => "rollback",
            _ => "unknown",
        };
        trace::start(
            "at.phase_two",
            &parent,
            vec![
                KeyValue::new("xid", cmd.xid.clone()),
                KeyValue::new("branch_id", cmd.branch_id as i64),
                KeyValue::new("resource_id", cmd.resource_id.clone()),
                KeyValue::new("action", action),
                KeyValue::new("xa", !cmd.xa_bqual.is_empty()),
            ],
        )
    });
    let outcome = run_branch_command(shared, pool, commits, cmd).await;
    if let Some(cx) = span {
        let name = match &outcome {
            UndoOutcome::Done => "done".to_string(),
            UndoOutcome::DirtyWrite(rows) => format!("dirty_write: {} rows", rows.len()),
            UndoOutcome::Failure(why) => format!("failure: {why}"),
        };
        rewind_protocol::trace::set(&cx, "outcome", name);
        rewind_protocol::trace::end(&cx);
    }
    match BranchAction::try_from(cmd.action) {
        Ok(BranchAction::Commit) => shared.metrics.phase_two(true, &outcome),
        Ok(BranchAction::Rollback) => shared.metrics.phase_two(false, &outcome),
        _ => {}
    }
    outcome
}

async fn run_branch_command(
    shared: &Shared,
    pool: &Pool,
    commits: &mpsc::Sender<(String, u64, oneshot::Sender<UndoOutcome>)>,
    cmd: &v1::BranchCommand,
) -> UndoOutcome {
    if cmd.resource_id != shared.resource_id {
        return UndoOutcome::Failure(format!(
            "this proxy serves resource {:?}, not {:?}",
            shared.resource_id, cmd.resource_id
        ));
    }
    if !cmd.xa_bqual.is_empty() {
        let commit = match BranchAction::try_from(cmd.action) {
            Ok(BranchAction::Commit) => true,
            Ok(BranchAction::Rollback) => false,
            _ => return UndoOutcome::Failure(format!("unknown branch action {}", cmd.action)),
        };
        let outcome =
            crate::xa::phase_two::finish(shared, pool, &cmd.xid, &cmd.xa_bqual, commit).await;
        if commit && outcome == UndoOutcome::Done {
            // Outbox rows the branch wrote are visible now.
            shared.outbox.kick();
        }
        return outcome;
    }
    match BranchAction::try_from(cmd.action) {
        Ok(BranchAction::Commit) => {
            let (reply, rx) = oneshot::channel();
            if commits
                .send((cmd.xid.clone(), cmd.branch_id, reply))
                .await
                .is_err()
            {
                return UndoOutcome::Failure("proxy shutting down".into());
            }
            rx.await
                .unwrap_or_else(|_| UndoOutcome::Failure("proxy shutting down".into()))
        }
        Ok(BranchAction::Rollback) => {
            let outcome = rollback(shared, pool, &cmd.xid, cmd.branch_id).await;
            match &outcome {
                UndoOutcome::Done => debug!("branch rolled back"),
                UndoOutcome::DirtyWrite(rows) => {
                    warn!(
                        rows = rows.len(),
                        "dirty write: branch left for an operator"
                    )
                }
                UndoOutcome::Failure(why) => info!(%why, "branch rollback failed; will be retried"),
            }
            outcome
        }
        _ => UndoOutcome::Failure(format!("unknown branch action {}", cmd.action)),
    }
}

/// How long a phase-two batch gathers records before its DELETE runs. Nobody waits on
/// it (global locks go at the commit decision; only the branch's `committed` answer and an
/// outbox row's release follow it), and each DELETE is a statement and a durable commit
/// in the participant's database: under `bench/at`, without it about one DELETE ran per
/// three branches. At low concurrency the linger decides the batch: at one client (a
/// transfer every 4–5 ms, two branches each) 5 ms ran 0.53–0.59 DELETEs per transfer, 25 ms
/// 0.16–0.17, and the durable commits that went with them (each an fsync beside the next
/// transfer's own) cost MariaDB 1–18 % of its CPU per global transfer and the transfer
/// about 8 % of its latency (three alternated pairs). What waits longer: an outbox row
/// written in a global transaction (relayed once its branch's record is gone) and the
/// console's `committed` for the branch, up to 25 ms each.
const COMMIT_LINGER: Duration = Duration::from_millis(25);

/// Deletes undo records of committed branches in batches: whatever arrived while the
/// previous batch ran, and within [`COMMIT_LINGER`] of a batch's first record, goes in
/// the next (up to 256 records, one statement). Batch sizes are rounded up to a power of
/// two by repeating the last record, so nine statements cover every batch and stay in each
/// pooled connection's statement cache (a batch of a size not seen before cost a prepare,
/// and an eviction a close, per batch).
pub(crate) async fn committer(
    shared: Arc<Shared>,
    pool: Pool,
    mut rx: mpsc::Receiver<(String, u64, oneshot::Sender<UndoOutcome>)>,
) {
    const BATCH: usize = 256;
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let gathered = tokio::time::Instant::now() + COMMIT_LINGER;
        while batch.len() < BATCH {
            let room = BATCH - batch.len();
            let more = rx.recv_many(&mut batch, room);
            match tokio::time::timeout_at(gathered, more).await {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        let size = batch.len().next_power_of_two();
        let mut params = Vec::with_capacity(size * 2);
        for i in 0..size {
            let (xid, branch_id, _) = &batch[i.min(batch.len() - 1)];
            params.push(mysql_async::Value::from(xid.as_str()));
            params.push(mysql_async::Value::from(*branch_id));
        }
        let sql = shared.undo.delete_many(size);
        crate::failpoint::hit("before-undo-delete").await;
        let r = async {
            let mut conn = pool.get_conn().await?;
            conn.exec_drop(sql, Params::Positional(params)).await
        }
        .await;
        if r.is_ok() {
            // Outbox rows these global transactions wrote are no longer held.
            shared.outbox.kick();
        }
        for (_, _, reply) in batch.drain(..) {
            let _ = reply.send(match &r {
                Ok(()) => UndoOutcome::Done,
                Err(e) => UndoOutcome::Failure(format!("deleting undo records: {e}")),
            });
        }
    }
}
