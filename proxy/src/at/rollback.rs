//! Phase two of an AT branch that rolls back, and an operator's resolution of a dirty
//! write; run by [`crate::attach`] when the coordinator asks.
//!
//! - Rollback, in one local transaction on a phase-two connection (UTC, READ COMMITTED):
//!   lock the undo record; none yet → insert the anti-suspension marker so a late phase
//!   one fails; otherwise undo the items newest first, each only after the dirty-write
//!   check says the rows are as the branch left them. A dirty write rolls the undo
//!   transaction back and reports the rows (before, after, current) for an operator.
//! - Resolve: an operator's decision on one conflicting row; refused when the row changed
//!   since the operator saw it.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Params, Pool};
use rewind_protocol::v1::{self, ResolveAction};
use rewind_undo_log::check::RowConflict;
use rewind_undo_log::undo_sql::{overwrite_row, select_current, undo_statements};
use rewind_undo_log::{check, lock_key, CheckOutcome, Row, RowImage, UndoItem, UndoRecord};
use tracing::{debug, info};

use crate::at::undo_table::{STATUS_MARKER, STATUS_NORMAL};
use crate::Shared;

/// What one phase-two or resolve attempt came to.
#[derive(Debug, PartialEq)]
pub enum UndoOutcome {
    Done,
    DirtyWrite(Vec<v1::DirtyRow>),
    Failure(String),
}

pub(crate) async fn rollback(
    shared: &Shared,
    pool: &Pool,
    xid: &str,
    branch_id: u64,
) -> UndoOutcome {
    let mut conn = match pool.get_conn().await {
        Ok(c) => c,
        Err(e) => return UndoOutcome::Failure(format!("backend unavailable: {e}")),
    };
    // Twice at most: a marker insert that loses to a phase one committing its record at
    // that very moment means the record is there now.
    for _ in 0..2 {
        match rollback_once(shared, &mut conn, xid, branch_id).await {
            Ok(Some(outcome)) => return outcome,
            Ok(None) => continue,
            Err(e) => {
                let _ = conn.query_drop("ROLLBACK").await;
                return UndoOutcome::Failure(e.to_string());
            }
        }
    }
    UndoOutcome::Failure("undo record appeared and vanished during the rollback".into())
}

/// `Ok(None)`: retry (the marker collided with a just-committed record).
pub(crate) async fn rollback_once(
    shared: &Shared,
    conn: &mut Conn,
    xid: &str,
    branch_id: u64,
) -> Result<Option<UndoOutcome>, mysql_async::Error> {
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
            return Ok(Some(UndoOutcome::Done));
        }
        Some((STATUS_MARKER, _)) => {
            conn.query_drop("COMMIT").await?;
            return Ok(Some(UndoOutcome::Done));
        }
        Some((STATUS_NORMAL, info)) => info,
        Some((other, _)) => {
            conn.query_drop("ROLLBACK").await?;
            return Ok(Some(UndoOutcome::Failure(format!(
                "undo record with unknown status {other}"
            ))));
        }
    };
    let record = match UndoRecord::decode(&info) {
        Ok(r) => r,
        Err(e) => {
            conn.query_drop("ROLLBACK").await?;
            return Ok(Some(UndoOutcome::Failure(format!(
                "undo record unreadable: {e}"
            ))));
        }
    };
    for item in record.rollback_order() {
        let current = match current_rows(conn, item).await? {
            Ok(c) => c,
            Err(why) => {
                conn.query_drop("ROLLBACK").await?;
                return Ok(Some(UndoOutcome::Failure(why)));
            }
        };
        let outcome = match check(item, &current) {
            Ok(o) => o,
            Err(e) => {
                conn.query_drop("ROLLBACK").await?;
                return Ok(Some(UndoOutcome::Failure(format!(
                    "dirty-write check: {e}"
                ))));
            }
        };
        match outcome {
            CheckOutcome::Unchanged | CheckOutcome::AlreadyRestored => {}
            CheckOutcome::Restore => {
                if let Some(why) = undo_refusal(shared, conn, item).await? {
                    conn.query_drop("ROLLBACK").await?;
                    return Ok(Some(UndoOutcome::Failure(why)));
                }
                let statements = match undo_statements(item) {
                    Ok(s) => s,
                    Err(e) => {
                        conn.query_drop("ROLLBACK").await?;
                        return Ok(Some(UndoOutcome::Failure(format!("undo SQL: {e}"))));
                    }
                };
                for st in statements {
                    conn.exec_drop(st.sql, Params::Positional(st.params))
                        .await?;
                    if conn.affected_rows() != 1 {
                        conn.query_drop("ROLLBACK").await?;
                        return Ok(Some(UndoOutcome::Failure(format!(
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
                    Ok(rows) => UndoOutcome::DirtyWrite(rows),
                    Err(e) => UndoOutcome::Failure(format!("describing a dirty write: {e}")),
                }));
            }
        }
    }
    conn.exec_drop(shared.undo.delete_one(), (xid, branch_id))
        .await?;
    crate::failpoint::hit("rollback-before-commit").await;
    conn.query_drop("COMMIT").await?;
    crate::failpoint::hit("rollback-after-commit").await;
    Ok(Some(UndoOutcome::Done))
}

/// The item's rows as they are now, locked. `Err` carries a reason that is not a backend
/// failure (an image the undo-log cannot express as SQL or read back).
pub(crate) async fn current_rows(
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

pub(crate) fn row_json(row: Option<&Row>) -> String {
    row.map(Row::to_json)
        .unwrap_or(serde_json::Value::Null)
        .to_string()
}

pub(crate) fn dirty_row(
    item: &UndoItem,
    r: &RowConflict,
) -> Result<v1::DirtyRow, rewind_undo_log::Error> {
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
pub(crate) async fn resolve(shared: &Shared, pool: &Pool, cmd: &v1::ResolveCommand) -> UndoOutcome {
    let mut conn = match pool.get_conn().await {
        Ok(c) => c,
        Err(e) => return UndoOutcome::Failure(format!("backend unavailable: {e}")),
    };
    match resolve_in(shared, &mut conn, cmd).await {
        Ok(outcome) => {
            if !matches!(outcome, UndoOutcome::Done) {
                let _ = conn.query_drop("ROLLBACK").await;
            }
            outcome
        }
        Err(e) => {
            let _ = conn.query_drop("ROLLBACK").await;
            UndoOutcome::Failure(e.to_string())
        }
    }
}

pub(crate) async fn resolve_in(
    shared: &Shared,
    conn: &mut Conn,
    cmd: &v1::ResolveCommand,
) -> Result<UndoOutcome, mysql_async::Error> {
    let action = match ResolveAction::try_from(cmd.action) {
        Ok(a @ (ResolveAction::RestoreBefore | ResolveAction::KeepCurrent)) => a,
        _ => {
            return Ok(UndoOutcome::Failure(format!(
                "unknown resolve action {}",
                cmd.action
            )))
        }
    };
    let Some(table) = lock_key::table_name(&cmd.table) else {
        return Ok(UndoOutcome::Failure(format!(
            "malformed table {:?}",
            cmd.table
        )));
    };
    conn.query_drop("START TRANSACTION").await?;
    let record: Option<(i32, Vec<u8>)> = conn
        .exec_first(
            shared.undo.select_for_update(),
            (cmd.xid.as_str(), cmd.branch_id),
        )
        .await?;
    let Some((STATUS_NORMAL, info)) = record else {
        return Ok(UndoOutcome::Failure(
            "the branch's undo record is gone (rolled back or finished already)".into(),
        ));
    };
    let mut record = match UndoRecord::decode(&info) {
        Ok(r) => r,
        Err(e) => return Ok(UndoOutcome::Failure(format!("undo record unreadable: {e}"))),
    };
    let (item, key_row, before) = match record.row_history(&table, &cmd.pk) {
        Ok(Some((item, row, before))) => (item.clone(), row.clone(), before.cloned()),
        Ok(None) => {
            // Settled by an earlier delivery of this command.
            conn.query_drop("COMMIT").await?;
            return Ok(UndoOutcome::Done);
        }
        Err(e) => return Ok(UndoOutcome::Failure(format!("undo record: {e}"))),
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
        Err(why) => return Ok(UndoOutcome::Failure(why)),
    };
    let seen: serde_json::Value =
        serde_json::from_str(&cmd.current_json).unwrap_or(serde_json::Value::Null);
    let now = current
        .as_ref()
        .map(Row::to_json)
        .unwrap_or(serde_json::Value::Null);
    if seen != now {
        return Ok(UndoOutcome::DirtyWrite(vec![v1::DirtyRow {
            table: cmd.table.clone(),
            pk: cmd.pk.clone(),
            before_json: cmd.before_json.clone(),
            after_json: cmd.after_json.clone(),
            current_json: now.to_string(),
        }]));
    }
    if action == ResolveAction::RestoreBefore {
        // The restore may insert, update or delete the row: no kind of write may fire
        // something on the table now.
        let all: Vec<String> = key_row.column_names().map(str::to_owned).collect();
        for (kind, columns) in [
            (rewind_undo_log::SqlKind::Delete, &[][..]),
            (rewind_undo_log::SqlKind::Update, all.as_slice()),
        ] {
            if let Some(why) = write_refusal(shared, conn, &table, kind, columns).await? {
                conn.query_drop("ROLLBACK").await?;
                return Ok(UndoOutcome::Failure(why));
            }
        }
        let statement =
            match overwrite_row(&item.table, &key_row, before.as_ref(), current.as_ref()) {
                Ok(s) => s,
                Err(e) => return Ok(UndoOutcome::Failure(format!("restore SQL: {e}"))),
            };
        if let Some(st) = statement {
            conn.exec_drop(st.sql, Params::Positional(st.params))
                .await?;
            if conn.affected_rows() > 1 {
                return Ok(UndoOutcome::Failure(
                    "the restore hit more than one row".into(),
                ));
            }
        }
    }
    if let Err(e) = record.settle_row(&table, &cmd.pk) {
        return Ok(UndoOutcome::Failure(format!("undo record: {e}")));
    }
    let info = match record.encode() {
        Ok(b) => b,
        Err(e) => return Ok(UndoOutcome::Failure(format!("undo record: {e}"))),
    };
    conn.exec_drop(
        shared.undo.update_info(),
        (info, cmd.xid.as_str(), cmd.branch_id),
    )
    .await?;
    conn.query_drop("COMMIT").await?;
    info!(action = ?action, "conflict resolved");
    Ok(UndoOutcome::Done)
}

/// Why the undo statements of `item` must not run now, or `None` when they may: the table
/// gained a trigger or a cascading foreign key since the branch ran (it would fire on the
/// undo and write rows no record covers), or a non-transactional engine. Read on the undo
/// transaction's connection after its `FOR UPDATE` read, so the table's metadata lock is
/// held and the answer stays true until the undo commits. The rollback is then retried
/// (the coordinator shows the reason as the branch's last error) until the table is fixed.
async fn undo_refusal(
    shared: &Shared,
    conn: &mut Conn,
    item: &UndoItem,
) -> Result<Option<String>, mysql_async::Error> {
    use rewind_undo_log::SqlKind;
    // What the undo runs: inserted rows are deleted, deleted rows inserted, updated rows
    // updated back.
    let (kind, columns) = match item.kind {
        SqlKind::Insert => (SqlKind::Delete, &[][..]),
        SqlKind::Delete => (SqlKind::Insert, &[][..]),
        SqlKind::Update => (SqlKind::Update, item.set_columns.as_slice()),
    };
    write_refusal(shared, conn, &item.table.name, kind, columns).await
}

/// Why a write of `kind` (an UPDATE of `columns`) by phase two must not run on `name`
/// now, read from the table's current definition; see [`undo_refusal`].
async fn write_refusal(
    shared: &Shared,
    conn: &mut Conn,
    name: &rewind_undo_log::TableName,
    kind: rewind_undo_log::SqlKind,
    columns: &[String],
) -> Result<Option<String>, mysql_async::Error> {
    use rewind_undo_log::Error as UndoError;
    let definition = match shared
        .metas
        .definition(conn, &name.schema, &name.table)
        .await
    {
        Ok(d) => d,
        Err(UndoError::Mysql(e)) => return Err(e),
        Err(e) => return Ok(Some(format!("reading the definition of {name}: {e}"))),
    };
    let meta = match shared.metas.get(name) {
        Some(m) if m.definition == definition => m,
        _ => match shared.metas.load(conn, &name.schema, &name.table).await {
            Ok(m) => m,
            Err(UndoError::Mysql(e)) => return Err(e),
            Err(e) => return Ok(Some(format!("table {name} cannot be undone into: {e}"))),
        },
    };
    Ok(
        crate::at::refusals::table(&meta, kind, columns).map(|e| match e {
            crate::error::ProxyError::AtRefused(why) => format!(
                "the undo would write a table that changed since the branch ran: {why}; \
                 nothing was written (a rollback is retried until the table no longer has it; \
                 or settle the rows by hand)"
            ),
            other => other.to_string(),
        }),
    )
}
