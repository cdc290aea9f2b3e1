//! The commit protocol of a branch: register with the coordinator (its global locks),
//! insert the undo record, and only then let the client's COMMIT run.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use rewind_protocol::trace::{self, KeyValue};
use rewind_protocol::v1;
use rewind_undo_log::UndoRecord;

use crate::coordinator::{CallError, Registration};
use crate::error::ProxyError;
use crate::metrics::{Mode, PhaseOne};
use crate::wire;
use crate::Shared;

use super::locks::*;
use super::statement::StmtCache;
use super::Branch;

/// Commits a branch that has undo items: register with the coordinator (retrying lock
/// conflicts), insert the undo record, commit with the client's own COMMIT statement.
/// On any failure before the COMMIT the local transaction is rolled back and the error
/// says so. Returns the COMMIT's OK. The undo insert goes in one query with the COMMIT
/// (see [`super::undo_table::UndoTable::insert_then`]); a record too large for that is
/// inserted by a statement prepared once per session, in `stmts` (a prepare and a close per
/// branch were two round trips of eleven), and then the COMMIT runs.
pub async fn commit(
    conn: &mut Conn,
    stmts: &mut StmtCache,
    shared: &Shared,
    branch: Branch,
    commit_sql: &[u8],
) -> Result<wire::Ok, ProxyError> {
    let span = branch.trace.clone();
    let r = phase_one(conn, stmts, shared, branch, commit_sql).await;
    shared.metrics.phase_one(Mode::At, PhaseOne::of(&r));
    if let Some(cx) = span {
        let outcome = match &r {
            Ok(_) => "committed".to_string(),
            Err(e) => format!("error: {e}"),
        };
        trace::set(&cx, "outcome", outcome);
        trace::end(&cx);
    }
    r
}

async fn phase_one(
    conn: &mut Conn,
    stmts: &mut StmtCache,
    shared: &Shared,
    branch: Branch,
    commit_sql: &[u8],
) -> Result<wire::Ok, ProxyError> {
    let xid = branch.xid;
    let span = branch.trace;
    let mut checks = branch.checks;
    // A child span of `at.branch` (`None`: traces off, or no span for this branch).
    let child = |name: &'static str, attrs: Vec<KeyValue>| {
        span.as_ref().map(|cx| {
            let mut attrs = attrs;
            attrs.push(KeyValue::new("xid", xid.clone()));
            trace::start(name, cx, attrs)
        })
    };
    let record = UndoRecord {
        items: branch.items,
    };
    let prepared = record.lock_keys().and_then(|k| Ok((k, record.encode()?)));
    let (keys, info) = match prepared {
        Ok(x) => x,
        Err(e) => {
            checks.lost();
            return Err(abort(conn, format!("the undo record cannot be written: {e}")).await);
        }
    };
    let keys: Vec<v1::LockKey> = keys.into_iter().map(|k| proto_key(shared, k)).collect();
    let request_id = format!("{:032x}", rand::random::<u128>());
    let interval = Duration::from_millis(shared.config.lock_retry_interval_ms);
    let mut attempt = 0;
    let committing = shared.definitions.commit_begins();
    checks.want_proofs(&shared.definitions, &committing);
    let registering_span = child(
        "at.register",
        vec![KeyValue::new("locks", keys.len() as i64)],
    );
    // Taken before the call: a registration answered after the stream broke proves
    // nothing about commands sent meanwhile (see `at::begun`).
    let epoch = shared.begun.epoch();
    let (branch_id, registered_at) = loop {
        let registering = std::time::Instant::now();
        let r = shared
            .coordinator
            .register(
                &xid,
                &shared.resource_id,
                &keys,
                &request_id,
                registering_span.as_ref(),
            )
            .await;
        match r {
            Ok(Registration::Registered(id)) => break (id, registering),
            Ok(Registration::Conflict {
                key,
                holder,
                holder_rolling_back,
            }) => {
                if holder_rolling_back || attempt >= shared.config.lock_retry_count {
                    let why = if holder.is_empty() {
                        format!(
                            "a proxy of this database did not confirm in time that it \
                             checks writes to {} (writes without an XID to it still running, \
                             possibly waiting for this transaction's own rows, or the proxy \
                             slow to answer)",
                            describe_key(Some(&key))
                        )
                    } else {
                        format!(
                            "global lock on {} held by global transaction {holder}{}",
                            describe_key(Some(&key)),
                            if holder_rolling_back {
                                " which is rolling back"
                            } else {
                                ""
                            }
                        )
                    };
                    checks.lost();
                    rollback(conn).await;
                    return Err(ProxyError::GlobalLockTimeout(format!(
                        "{why}; the local transaction was rolled back"
                    )));
                }
                attempt += 1;
                tokio::time::sleep(interval).await;
            }
            Err(CallError::NotFound(m) | CallError::NotActive(m)) => {
                checks.lost();
                rollback(conn).await;
                return Err(ProxyError::UnknownXid(format!(
                    "{m}; the local transaction was rolled back"
                )));
            }
            Err(e) => {
                checks.lost();
                return Err(abort(conn, format!("registering the branch failed: {e}")).await);
            }
        }
    };
    tracing::debug!(%xid, branch_id, locks = keys.len(), "branch registered");
    shared.begun.registered(&xid, epoch);
    if let Some(cx) = &registering_span {
        trace::set(cx, "branch_id", branch_id as i64);
        trace::set(cx, "attempts", i64::from(attempt) + 1);
        trace::end(cx);
    }
    if let Some(cx) = &span {
        trace::set(cx, "branch_id", branch_id as i64);
    }
    let child =
        |name: &'static str| child(name, vec![KeyValue::new("branch_id", branch_id as i64)]);
    crate::failpoint::hit("after-register").await;
    // A rollback that finds no undo record leaves a marker, which housekeeping removes
    // `undo_retention_secs` after the transaction finished. A phase one stalled since its
    // registration for a good part of that time must not insert its record any more (it
    // could land after the marker is gone): it gives up instead.
    if registered_at.elapsed() > Duration::from_secs(shared.config.undo_retention_secs) / 2 {
        checks.lost();
        let err = abort(
            conn,
            "phase one stalled between registering the branch and writing its undo record".into(),
        )
        .await;
        report(shared, &xid, branch_id, false);
        return Err(err);
    }
    // Writes planned on metadata another transaction held confirmed: proven (likeliest
    // now, after the registration's wait) or read now.
    if let Err(why) = checks.settle(conn, shared).await {
        checks.lost();
        let err = abort(conn, why).await;
        report(shared, &xid, branch_id, false);
        return Err(err);
    }
    let committed = match shared.undo.insert_then(branch_id, &xid, &info, commit_sql) {
        Some(query) => {
            crate::failpoint::hit("before-local-commit").await;
            // The spans are those of the two statements sent one at a time: the insert's
            // ends with its answer, the COMMIT's runs from there to the COMMIT's answer.
            let inserting = child("at.undo_insert");
            let stamp = checks.before_request(&shared.definitions);
            let inserted = conn.query_iter(query).await.map(drop);
            if inserted.is_ok() {
                // The insert's answer was made inside the transaction, before the COMMIT ran.
                checks.answered(&shared.definitions, stamp);
            }
            drop(checks);
            ended(inserting, &inserted);
            match inserted {
                Ok(()) => {}
                // The server refused the insert: nothing after it ran.
                Err(mysql_async::Error::Server(e)) => {
                    return Err(insert_failed(conn, shared, &xid, branch_id, e).await)
                }
                // Lost on the way, the COMMIT sent with it: unknown, as a lost COMMIT is.
                Err(e) => return Err(e.into()),
            }
            let committing = child("at.commit");
            let committed = mysql_async::QueryResult::<mysql_async::TextProtocol>::new(&mut *conn)
                .drop_result()
                .await;
            ended(committing, &committed);
            committed
        }
        None => {
            let inserting = child("at.undo_insert");
            let inserted = match stmts.get(conn, &shared.undo.insert()).await {
                Ok(stmt) => {
                    let stamp = checks.before_request(&shared.definitions);
                    let r = conn.exec_drop(&stmt, (branch_id, xid.as_str(), info)).await;
                    if r.is_ok() {
                        checks.answered(&shared.definitions, stamp);
                    }
                    r
                }
                Err(e) => Err(e),
            };
            // COMMIT or ROLLBACK comes next: this transaction's metadata locks go with it.
            drop(checks);
            ended(inserting, &inserted);
            match inserted {
                Ok(()) => {}
                Err(mysql_async::Error::Server(e)) => {
                    return Err(insert_failed(conn, shared, &xid, branch_id, e).await)
                }
                Err(other) => {
                    let err = abort(conn, format!("writing the undo record failed: {other}")).await;
                    report(shared, &xid, branch_id, false);
                    return Err(err);
                }
            }
            crate::failpoint::hit("before-local-commit").await;
            let committing = child("at.commit");
            let committed = conn.query_drop(commit_sql).await;
            ended(committing, &committed);
            committed
        }
    };
    if let Err(e) = committed {
        // A server error means the COMMIT did not happen; a lost connection leaves it
        // unknown, and the coordinator's rollback finds the record or leaves a marker.
        if matches!(e, mysql_async::Error::Server(_)) {
            report(shared, &xid, branch_id, false);
        }
        return Err(e.into());
    }
    crate::failpoint::hit("after-local-commit").await;
    report(shared, &xid, branch_id, true);
    Ok(wire::Ok::from_backend(conn))
}

/// The server refused the undo record (the COMMIT has not run): roll back, report.
async fn insert_failed(
    conn: &mut Conn,
    shared: &Shared,
    xid: &str,
    branch_id: u64,
    e: mysql_async::ServerError,
) -> ProxyError {
    let why = if e.code == 1062 {
        "the global transaction was already rolled back".to_string()
    } else {
        format!(
            "writing the undo record failed: {}",
            mysql_async::Error::Server(e)
        )
    };
    let err = abort(conn, why).await;
    report(shared, xid, branch_id, false);
    err
}

/// Ends a child span with its step's outcome.
fn ended<T, E: std::fmt::Display>(span: Option<trace::Context>, r: &Result<T, E>) {
    if let Some(cx) = span {
        let outcome = match r {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("error: {e}"),
        };
        trace::set(&cx, "outcome", outcome);
        trace::end(&cx);
    }
}

/// Tells the coordinator how phase one ended, off the client's path.
pub(super) fn report(shared: &Shared, xid: &str, branch_id: u64, committed: bool) {
    if !committed {
        // The coordinator may send this branch no command: its XID is asked about again.
        shared.begun.forget(xid);
    }
    shared.coordinator.report_later(xid, branch_id, committed);
}

/// Rolls the local transaction back and returns the error that says so.
pub async fn abort(conn: &mut Conn, why: String) -> ProxyError {
    rollback(conn).await;
    ProxyError::BranchRolledBack(format!("{why}; the local transaction was rolled back"))
}

pub(super) async fn rollback(conn: &mut Conn) {
    if let Err(e) = conn.query_drop("ROLLBACK").await {
        tracing::warn!(error = %e, "ROLLBACK after a failed phase one failed");
    }
}
