//! Phase one of AT mode, on the client's own backend connection and inside its local
//! transaction.
//!
//! For each DML statement: read the before image with the statement's own predicate under
//! `FOR UPDATE`, run the write restricted to exactly the locked primary keys (so a row that
//! appears between image and write under READ COMMITTED is never changed without a
//! record), then read the after image by key. INSERTs run as written and their rows are
//! found again by the keys the statement gave or the server generated. At the client's
//! COMMIT: register the branch and its global locks with the coordinator, insert the undo
//! record, and only then commit; any failure rolls the local transaction back.
//!
//! Images are read with the binary protocol (prepared statements, cached per session in
//! [`StmtCache`]); TIMESTAMP columns come as `UNIX_TIMESTAMP()` so the client's session
//! time zone cannot shift them.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Params, Statement, Value};
use rewind_protocol::v1;
use rewind_undo_log::analyze::{
    self, AutoIncrement, DeletePlan, InsertPlan, JoinUpdatePlan, LockingSelect, UpdatePlan,
};
use rewind_undo_log::undo_sql::MAX_STATEMENT_PARAMS;
use rewind_undo_log::{
    Dml, Error as UndoError, RowImage, SqlKind, TableMeta, TableSummary, UndoItem, UndoRecord,
};

use crate::coordinator::{CallError, Registration};
use crate::error::ProxyError;
use crate::wire;
use crate::Shared;

/// The global transaction a local transaction is bound to, and what it must undo.
#[derive(Debug)]
pub struct Branch {
    pub xid: String,
    /// Undo items in statement order.
    pub items: Vec<UndoItem>,
    /// `SAVEPOINT` names (lower-cased: MySQL compares them case-insensitively) and how
    /// many items existed when each was set, so `ROLLBACK TO` drops the later items.
    savepoints: Vec<(String, usize)>,
    /// The proxy opened the local transaction for an autocommit statement and commits it.
    pub implicit: bool,
}

impl Branch {
    pub fn new(xid: String, implicit: bool) -> Self {
        Branch {
            xid,
            items: Vec::new(),
            savepoints: Vec::new(),
            implicit,
        }
    }

    /// `SAVEPOINT name`: a name set again moves to the present.
    pub fn savepoint(&mut self, name: &str) {
        let name = name.to_lowercase();
        self.savepoints.retain(|(n, _)| *n != name);
        self.savepoints.push((name, self.items.len()));
    }

    /// `ROLLBACK TO name` succeeded: the statements after it are undone locally, so their
    /// items go (the savepoint itself stays, later ones go, as in MySQL).
    pub fn rollback_to(&mut self, name: &str) {
        let name = name.to_lowercase();
        if let Some(i) = self.savepoints.iter().position(|(n, _)| *n == name) {
            let keep = self.savepoints[i].1;
            self.items.truncate(keep);
            self.savepoints.truncate(i + 1);
        }
    }

    /// `RELEASE SAVEPOINT name` succeeded: it and later savepoints go.
    pub fn release(&mut self, name: &str) {
        let name = name.to_lowercase();
        if let Some(i) = self.savepoints.iter().position(|(n, _)| *n == name) {
            self.savepoints.truncate(i);
        }
    }
}

/// Statements the proxy itself prepared on a session's backend connection. The pool's
/// statement cache is off (a client's statements are the client's), so without this every
/// image read would cost a prepare round trip. Bounded; the oldest is closed on overflow.
#[derive(Default)]
pub struct StmtCache {
    map: HashMap<String, Statement>,
    order: VecDeque<String>,
}

const STMT_CACHE_SIZE: usize = 64;

impl StmtCache {
    pub async fn get(
        &mut self,
        conn: &mut Conn,
        sql: &str,
    ) -> Result<Statement, mysql_async::Error> {
        if let Some(s) = self.map.get(sql) {
            return Ok(s.clone());
        }
        let stmt = conn.prep(sql).await?;
        if self.order.len() >= STMT_CACHE_SIZE {
            if let Some(old) = self.order.pop_front() {
                if let Some(s) = self.map.remove(&old) {
                    conn.close(s).await?;
                }
            }
        }
        self.order.push_back(sql.to_string());
        self.map.insert(sql.to_string(), stmt.clone());
        Ok(stmt)
    }

    /// The backend forgot every statement (COM_RESET_CONNECTION, COM_CHANGE_USER).
    pub fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }
}

/// How a phase-one step failed.
#[derive(Debug)]
pub enum Failure {
    /// Nothing was written: the statement failed as a statement, the client's local
    /// transaction goes on as before.
    Clean(ProxyError),
    /// The write happened but its undo could not be recorded: the caller must roll the
    /// local transaction back (never let it commit).
    Poisoned(ProxyError),
}

impl From<mysql_async::Error> for Failure {
    fn from(e: mysql_async::Error) -> Self {
        Failure::Clean(e.into())
    }
}

/// How to run the client's statement itself (INSERT runs as written).
pub enum Original<'a> {
    Text(&'a [u8]),
    Prepared(&'a Statement),
}

/// Maps an undo-log error met before anything was written.
pub fn refused(e: UndoError, table: &str) -> ProxyError {
    match e {
        UndoError::Refused(why) => ProxyError::AtRefused(why),
        UndoError::UnknownTable { schema, table } => {
            ProxyError::NoSuchTable(format!("{schema}.{table}"))
        }
        UndoError::Mysql(e) => e.into(),
        UndoError::Parse(why) => {
            ProxyError::AtRefused(format!("statement the proxy cannot parse ({why})"))
        }
        other => ProxyError::AtRefused(format!("{other} (table {table})")),
    }
}

/// The table's metadata, by the statement's name for it or the session's database.
pub async fn meta(
    conn: &mut Conn,
    shared: &Shared,
    table: &analyze::TableRef,
    db: Option<&str>,
) -> Result<std::sync::Arc<TableMeta>, ProxyError> {
    let schema = table
        .schema
        .as_deref()
        .or(db)
        .ok_or(ProxyError::NoDatabase)?;
    shared
        .metas
        .get_or_load(conn, schema, &table.table)
        .await
        .map_err(|e| refused(e, &format!("{schema}.{}", table.table)))
}

async fn rows(
    conn: &mut Conn,
    stmts: &mut StmtCache,
    sql: &str,
    params: Vec<Value>,
) -> Result<Vec<mysql_async::Row>, mysql_async::Error> {
    let stmt = stmts.get(conn, sql).await?;
    conn.exec(&stmt, params_of(params)).await
}

async fn write(
    conn: &mut Conn,
    stmts: &mut StmtCache,
    sql: &str,
    params: Vec<Value>,
) -> Result<wire::Ok, mysql_async::Error> {
    let stmt = stmts.get(conn, sql).await?;
    conn.exec_drop(&stmt, params_of(params)).await?;
    Ok(wire::Ok::from_backend(conn))
}

fn params_of(v: Vec<Value>) -> Params {
    if v.is_empty() {
        Params::Empty
    } else {
        Params::Positional(v)
    }
}

/// Reads rows by primary key in statements of at most [`MAX_STATEMENT_PARAMS`] parameters.
async fn image_by_keys(
    conn: &mut Conn,
    stmts: &mut StmtCache,
    meta: &TableMeta,
    keys: &[Vec<Value>],
) -> Result<RowImage, ProxyError> {
    let mut image = RowImage::empty(meta.name.clone());
    let per = (MAX_STATEMENT_PARAMS / meta.primary_key.len().max(1)).max(1);
    for chunk in keys.chunks(per) {
        let sql = analyze::rows_by_keys_sql(meta, chunk.len());
        let found = rows(conn, stmts, &sql, chunk.concat()).await?;
        let part = RowImage::from_image(meta, &found).map_err(|e| {
            ProxyError::BranchRolledBack(format!("after image of {}: {e}", meta.name))
        })?;
        image.rows.extend(part.rows);
    }
    Ok(image)
}

fn keys_of(meta: &TableMeta, image: &RowImage) -> Result<Vec<Vec<Value>>, UndoError> {
    image
        .rows
        .iter()
        .map(|r| {
            Ok(r.primary_key(&meta.primary_key)?
                .iter()
                .map(|v| v.to_mysql())
                .collect())
        })
        .collect()
}

/// Runs one DML statement with its images. `params` are the statement's parameters (empty
/// for the text protocol). Returns the undo items (none when no row was touched; one per
/// written table, or an update and an insert item for ON DUPLICATE KEY UPDATE) and the
/// OK the client gets.
pub async fn run_dml(
    conn: &mut Conn,
    stmts: &mut StmtCache,
    shared: &Shared,
    db: Option<&str>,
    dml: &Dml,
    original: Original<'_>,
    params: Vec<Value>,
) -> Result<(Vec<UndoItem>, wire::Ok), Failure> {
    match dml {
        Dml::Update(plan) => update(conn, stmts, shared, db, plan, params)
            .await
            .map(|(item, ok)| (item.into_iter().collect(), ok)),
        Dml::UpdateJoin(plan) => update_join(conn, stmts, shared, db, plan, params).await,
        Dml::Delete(plan) => delete(conn, stmts, shared, db, plan, params)
            .await
            .map(|(item, ok)| (item.into_iter().collect(), ok)),
        Dml::Insert(plan) if plan.on_duplicate.is_some() => {
            upsert(conn, stmts, shared, db, plan, original, params).await
        }
        Dml::Insert(plan) => insert(conn, stmts, shared, db, plan, original, params)
            .await
            .map(|(item, ok)| (item.into_iter().collect(), ok)),
    }
}

/// `UPDATE t1 JOIN t2 … SET …`: one before image per written table (the join's own
/// `FOR UPDATE` locks every joined row), the UPDATE with its condition narrowed to those
/// keys, then one after image per written table.
async fn update_join(
    conn: &mut Conn,
    stmts: &mut StmtCache,
    shared: &Shared,
    db: Option<&str>,
    plan: &JoinUpdatePlan,
    params: Vec<Value>,
) -> Result<(Vec<UndoItem>, wire::Ok), Failure> {
    let mut metas = Vec::with_capacity(plan.tables.len());
    for t in &plan.tables {
        metas.push(
            meta(conn, shared, &t.table, db)
                .await
                .map_err(Failure::Clean)?,
        );
    }
    let written = plan
        .written(&metas)
        .map_err(|e| Failure::Clean(refused(e, "multi-table UPDATE")))?;
    for (t, cols) in &written {
        if let Some(why) = metas[*t].refusal(SqlKind::Update, cols) {
            return Err(Failure::Clean(ProxyError::AtRefused(why)));
        }
    }
    if params.len() < plan.from_params + plan.set_params {
        return Err(Failure::Clean(ProxyError::Malformed(
            "missing statement parameters",
        )));
    }
    // The SELECT has the ON and WHERE parameters, not the SET clause's.
    let mut image_params = params[..plan.from_params].to_vec();
    image_params.extend_from_slice(&params[plan.from_params + plan.set_params..]);
    let mut befores = Vec::with_capacity(written.len());
    for (t, _) in &written {
        let meta = &metas[*t];
        let name = meta.name.to_string();
        let found = rows(
            conn,
            stmts,
            &plan.before_image_sql(*t, meta),
            image_params.clone(),
        )
        .await?;
        let mut image =
            RowImage::from_image(meta, &found).map_err(|e| Failure::Clean(refused(e, &name)))?;
        dedup_by_key(meta, &mut image).map_err(|e| Failure::Clean(refused(e, &name)))?;
        befores.push(image);
    }
    let mut keyed = Vec::with_capacity(written.len());
    let mut write_params = params;
    for ((t, _), before) in written.iter().zip(&befores) {
        let meta = &metas[*t];
        let keys = keys_of(meta, before).map_err(|e| Failure::Clean(refused(e, "UPDATE")))?;
        keyed.push((*t, meta.as_ref(), keys.len()));
        write_params.extend(keys.concat());
    }
    if write_params.len() > MAX_STATEMENT_PARAMS {
        return Err(Failure::Clean(ProxyError::AtRefused(
            "multi-table UPDATE of more rows than one statement can name by key (split it)".into(),
        )));
    }
    let ok = write(conn, stmts, &plan.by_keys_sql(&keyed), write_params).await?;
    let mut items = Vec::with_capacity(written.len());
    for ((t, set_columns), before) in written.into_iter().zip(befores) {
        let meta = &metas[t];
        let keys = keys_of(meta, &before).map_err(|e| Failure::Poisoned(refused(e, "UPDATE")))?;
        let after = image_by_keys(conn, stmts, meta, &keys)
            .await
            .map_err(Failure::Poisoned)?;
        if after.rows.len() != before.rows.len() {
            return Err(Failure::Poisoned(ProxyError::BranchRolledBack(format!(
                "UPDATE on {}: {} rows locked but {} found after the write",
                meta.name,
                before.rows.len(),
                after.rows.len()
            ))));
        }
        if !before.is_empty() {
            items.push(UndoItem {
                kind: SqlKind::Update,
                table: TableSummary::from(&**meta),
                set_columns,
                before,
                after,
            });
        }
    }
    Ok((items, ok))
}

/// Keeps the first row per primary key (a join repeats a row once per partner).
fn dedup_by_key(meta: &TableMeta, image: &mut RowImage) -> Result<(), UndoError> {
    let mut seen = std::collections::HashSet::new();
    let mut keep = Vec::with_capacity(image.rows.len());
    for row in image.rows.drain(..) {
        if seen.insert(rewind_undo_log::record::row_key(&row, &meta.primary_key)?) {
            keep.push(row);
        }
    }
    image.rows = keep;
    Ok(())
}

/// `INSERT … ON DUPLICATE KEY UPDATE`: lock and image every row any VALUES row can collide
/// with (by primary key or unique key), run the statement, read the same keys again: rows
/// that existed are an UPDATE item, the others an INSERT item.
async fn upsert(
    conn: &mut Conn,
    stmts: &mut StmtCache,
    shared: &Shared,
    db: Option<&str>,
    plan: &InsertPlan,
    original: Original<'_>,
    params: Vec<Value>,
) -> Result<(Vec<UndoItem>, wire::Ok), Failure> {
    let meta = meta(conn, shared, &plan.table, db)
        .await
        .map_err(Failure::Clean)?;
    let name = meta.name.to_string();
    let set_columns = plan
        .on_duplicate_columns_in(&meta)
        .map_err(|e| Failure::Clean(refused(e, &name)))?;
    if let Some(why) = meta
        .refusal(SqlKind::Insert, &[])
        .or_else(|| meta.refusal(SqlKind::Update, &set_columns))
    {
        return Err(Failure::Clean(ProxyError::AtRefused(why)));
    }
    let no_auto_value_on_zero = if meta.auto_increment_column().is_some() {
        let mode: Option<String> = conn.query_first("SELECT @@sql_mode").await?;
        mode.unwrap_or_default()
            .to_ascii_uppercase()
            .contains("NO_AUTO_VALUE_ON_ZERO")
    } else {
        false
    };
    let keys = plan
        .conflict_keys(&meta, &params, no_auto_value_on_zero)
        .map_err(|e| Failure::Clean(refused(e, &name)))?;
    if keys.is_empty() {
        // Generated keys and no unique key: nothing can collide, a plain INSERT.
        return insert(conn, stmts, shared, db, plan, original, params)
            .await
            .map(|(item, ok)| (item.into_iter().collect(), ok));
    }
    let (locking, key_params) = plan
        .conflict_image_sql(&meta, &keys, true)
        .map_err(|e| Failure::Clean(refused(e, &name)))?;
    let found = rows(conn, stmts, &locking, key_params.clone()).await?;
    let before =
        RowImage::from_image(&meta, &found).map_err(|e| Failure::Clean(refused(e, &name)))?;
    match original {
        Original::Text(sql) => conn.query_drop(sql).await?,
        Original::Prepared(stmt) => conn.exec_drop(stmt, params_of(params)).await?,
    }
    let ok = wire::Ok::from_backend(conn);
    let poisoned = |why: String| {
        Failure::Poisoned(ProxyError::BranchRolledBack(format!(
            "the rows INSERT … ON DUPLICATE KEY UPDATE wrote into {name} could not be identified ({why})"
        )))
    };
    let (reading, _) = plan
        .conflict_image_sql(&meta, &keys, false)
        .map_err(|e| poisoned(e.to_string()))?;
    let found = rows(conn, stmts, &reading, key_params)
        .await
        .map_err(|e| poisoned(e.to_string()))?;
    let after = RowImage::from_image(&meta, &found).map_err(|e| poisoned(e.to_string()))?;
    let pk = &meta.primary_key;
    let key_of = |r: &rewind_undo_log::Row| rewind_undo_log::record::row_key(r, pk);
    let before_keys = before
        .rows
        .iter()
        .map(key_of)
        .collect::<Result<std::collections::HashSet<_>, _>>()
        .map_err(|e| poisoned(e.to_string()))?;
    let mut updated = RowImage::empty(meta.name.clone());
    let mut inserted = RowImage::empty(meta.name.clone());
    for row in after.rows {
        if before_keys.contains(&key_of(&row).map_err(|e| poisoned(e.to_string()))?) {
            updated.rows.push(row);
        } else {
            inserted.rows.push(row);
        }
    }
    if updated.rows.len() != before.rows.len() || inserted.rows.len() > plan.rows {
        return Err(poisoned(format!(
            "{} rows existed, {} found again, {} new for {} VALUES rows",
            before.rows.len(),
            updated.rows.len(),
            inserted.rows.len(),
            plan.rows
        )));
    }
    let mut items = Vec::with_capacity(2);
    if !before.is_empty() {
        items.push(UndoItem {
            kind: SqlKind::Update,
            table: TableSummary::from(&*meta),
            set_columns,
            before,
            after: updated,
        });
    }
    if !inserted.is_empty() {
        items.push(UndoItem {
            kind: SqlKind::Insert,
            table: TableSummary::from(&*meta),
            set_columns: Vec::new(),
            before: RowImage::empty(meta.name.clone()),
            after: inserted,
        });
    }
    Ok((items, ok))
}

async fn update(
    conn: &mut Conn,
    stmts: &mut StmtCache,
    shared: &Shared,
    db: Option<&str>,
    plan: &UpdatePlan,
    mut params: Vec<Value>,
) -> Result<(Option<UndoItem>, wire::Ok), Failure> {
    let meta = meta(conn, shared, &plan.table, db)
        .await
        .map_err(Failure::Clean)?;
    let name = meta.name.to_string();
    let set_columns = plan
        .set_columns_in(&meta)
        .map_err(|e| Failure::Clean(refused(e, &name)))?;
    if let Some(why) = meta.refusal(SqlKind::Update, &set_columns) {
        return Err(Failure::Clean(ProxyError::AtRefused(why)));
    }
    if params.len() < plan.set_params {
        return Err(Failure::Clean(ProxyError::Malformed(
            "missing statement parameters",
        )));
    }
    let where_params = params.split_off(plan.set_params);
    let set_params = params;
    let before_sql = plan
        .before_image_sql(&meta)
        .map_err(|e| Failure::Clean(refused(e, &name)))?;
    let found = rows(conn, stmts, &before_sql, where_params).await?;
    let before =
        RowImage::from_image(&meta, &found).map_err(|e| Failure::Clean(refused(e, &name)))?;
    let keys = keys_of(&meta, &before).map_err(|e| Failure::Clean(refused(e, &name)))?;

    let per = ((MAX_STATEMENT_PARAMS - set_params.len().min(MAX_STATEMENT_PARAMS - 1))
        / meta.primary_key.len().max(1))
    .max(1);
    let ok = write_in_chunks(
        conn,
        stmts,
        &keys,
        per,
        |n| plan.by_keys_sql(&meta, n),
        &set_params,
    )
    .await?;
    let after = image_by_keys(conn, stmts, &meta, &keys)
        .await
        .map_err(Failure::Poisoned)?;
    if after.rows.len() != before.rows.len() {
        return Err(Failure::Poisoned(ProxyError::BranchRolledBack(format!(
            "UPDATE on {name}: {} rows locked but {} found after the write",
            before.rows.len(),
            after.rows.len()
        ))));
    }
    let item = (!before.is_empty()).then(|| UndoItem {
        kind: SqlKind::Update,
        table: TableSummary::from(&*meta),
        set_columns,
        before,
        after,
    });
    Ok((item, ok))
}

async fn delete(
    conn: &mut Conn,
    stmts: &mut StmtCache,
    shared: &Shared,
    db: Option<&str>,
    plan: &DeletePlan,
    params: Vec<Value>,
) -> Result<(Option<UndoItem>, wire::Ok), Failure> {
    let meta = meta(conn, shared, &plan.table, db)
        .await
        .map_err(Failure::Clean)?;
    let name = meta.name.to_string();
    if let Some(why) = meta.refusal(SqlKind::Delete, &[]) {
        return Err(Failure::Clean(ProxyError::AtRefused(why)));
    }
    let found = rows(conn, stmts, &plan.before_image_sql(&meta), params).await?;
    let before =
        RowImage::from_image(&meta, &found).map_err(|e| Failure::Clean(refused(e, &name)))?;
    let keys = keys_of(&meta, &before).map_err(|e| Failure::Clean(refused(e, &name)))?;
    let per = (MAX_STATEMENT_PARAMS / meta.primary_key.len().max(1)).max(1);
    let ok = write_in_chunks(conn, stmts, &keys, per, |n| plan.by_keys_sql(&meta, n), &[]).await?;
    if ok.affected_rows != keys.len() as u64 {
        return Err(Failure::Poisoned(ProxyError::BranchRolledBack(format!(
            "DELETE on {name}: {} rows locked but {} deleted",
            keys.len(),
            ok.affected_rows
        ))));
    }
    let item = (!before.is_empty()).then(|| UndoItem {
        kind: SqlKind::Delete,
        table: TableSummary::from(&*meta),
        set_columns: Vec::new(),
        after: RowImage::empty(meta.name.clone()),
        before,
    });
    Ok((item, ok))
}

/// Runs a key-restricted write over `keys` in chunks of `per` keys (one statement when
/// they fit, which is the common case). A failure of the first statement is a clean
/// statement failure; a later one leaves earlier chunks written, so it poisons.
async fn write_in_chunks(
    conn: &mut Conn,
    stmts: &mut StmtCache,
    keys: &[Vec<Value>],
    per: usize,
    sql_for: impl Fn(usize) -> String,
    lead_params: &[Value],
) -> Result<wire::Ok, Failure> {
    let chunks: Vec<&[Vec<Value>]> = if keys.is_empty() {
        vec![&[]]
    } else {
        keys.chunks(per).collect()
    };
    let mut total: Option<wire::Ok> = None;
    let mut counts = (0u64, 0u64, 0u64);
    for (i, chunk) in chunks.iter().enumerate() {
        let mut params = lead_params.to_vec();
        params.extend(chunk.concat());
        let ok = match write(conn, stmts, &sql_for(chunk.len()), params).await {
            Ok(ok) => ok,
            Err(e) if i == 0 => return Err(Failure::Clean(e.into())),
            Err(e) => {
                return Err(Failure::Poisoned(ProxyError::BranchRolledBack(format!(
                    "a later part of a large write failed: {}",
                    ProxyError::from(e)
                ))))
            }
        };
        if let Some((m, c, w)) = parse_update_info(&ok.info) {
            counts = (counts.0 + m, counts.1 + c, counts.2 + w);
        }
        total = Some(match total {
            None => ok,
            Some(mut t) => {
                t.affected_rows += ok.affected_rows;
                t.warnings = t.warnings.saturating_add(ok.warnings);
                t.status = ok.status;
                if !t.info.is_empty() {
                    t.info = format!(
                        "Rows matched: {}  Changed: {}  Warnings: {}",
                        counts.0, counts.1, counts.2
                    )
                    .into_bytes();
                }
                t
            }
        });
    }
    Ok(total.expect("at least one chunk"))
}

/// `Rows matched: M  Changed: C  Warnings: W` of an UPDATE's OK packet.
fn parse_update_info(info: &[u8]) -> Option<(u64, u64, u64)> {
    let text = std::str::from_utf8(info).ok()?;
    let mut nums = text
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u64>().ok());
    Some((nums.next()??, nums.next()??, nums.next()??))
}

async fn insert(
    conn: &mut Conn,
    stmts: &mut StmtCache,
    shared: &Shared,
    db: Option<&str>,
    plan: &InsertPlan,
    original: Original<'_>,
    params: Vec<Value>,
) -> Result<(Option<UndoItem>, wire::Ok), Failure> {
    let meta = meta(conn, shared, &plan.table, db)
        .await
        .map_err(Failure::Clean)?;
    let name = meta.name.to_string();
    if let Some(why) = meta.refusal(SqlKind::Insert, &[]) {
        return Err(Failure::Clean(ProxyError::AtRefused(why)));
    }
    let (increment, no_auto_value_on_zero) = if meta.auto_increment_column().is_some() {
        let row: Option<(u64, String)> = conn
            .query_first("SELECT @@auto_increment_increment, @@sql_mode")
            .await?;
        let (inc, mode) = row.unwrap_or((1, String::new()));
        (
            inc.max(1),
            mode.to_ascii_uppercase().contains("NO_AUTO_VALUE_ON_ZERO"),
        )
    } else {
        (1, false)
    };
    // Every refusal that does not depend on the generated id, before anything is written.
    plan.row_keys(
        &meta,
        &params,
        AutoIncrement {
            last_insert_id: 1,
            increment,
            no_auto_value_on_zero,
        },
    )
    .map_err(|e| Failure::Clean(refused(e, &name)))?;
    match original {
        Original::Text(sql) => conn.query_drop(sql).await?,
        Original::Prepared(stmt) => conn.exec_drop(stmt, params_of(params.clone())).await?,
    }
    let ok = wire::Ok::from_backend(conn);
    let poisoned = |why: String| {
        Failure::Poisoned(ProxyError::BranchRolledBack(format!(
            "the rows INSERT wrote into {name} could not be identified ({why})"
        )))
    };
    let keys = plan
        .row_keys(
            &meta,
            &params,
            AutoIncrement {
                last_insert_id: ok.last_insert_id,
                increment,
                no_auto_value_on_zero,
            },
        )
        .map_err(|e| poisoned(e.to_string()))?;
    let after = image_by_keys(conn, stmts, &meta, &keys)
        .await
        .map_err(|e| poisoned(e.to_string()))?;
    if after.rows.len() != plan.rows || ok.affected_rows != plan.rows as u64 {
        return Err(poisoned(format!(
            "{} rows in VALUES, {} reported written, {} found by key",
            plan.rows,
            ok.affected_rows,
            after.rows.len()
        )));
    }
    let item = UndoItem {
        kind: SqlKind::Insert,
        table: TableSummary::from(&*meta),
        set_columns: Vec::new(),
        before: RowImage::empty(meta.name.clone()),
        after,
    };
    Ok((Some(item), ok))
}

/// A `SELECT … FOR UPDATE` in a global transaction: lock the rows locally first (so no
/// other global transaction can take them afterwards), then wait until no other global
/// transaction holds a global lock on any of them. The caller runs the statement itself
/// afterwards, which re-reads the rows now locked.
pub async fn wait_for_locked_rows(
    conn: &mut Conn,
    stmts: &mut StmtCache,
    shared: &Shared,
    db: Option<&str>,
    select: &LockingSelect,
    params: Vec<Value>,
    xid: Option<&str>,
) -> Result<(), ProxyError> {
    let mut metas = Vec::with_capacity(select.tables.len());
    for (table, _) in &select.tables {
        metas.push(meta(conn, shared, table, db).await?);
    }
    let found = rows(conn, stmts, &select.keys_sql(&metas), params).await?;
    let keys = select
        .keys(&metas, &found)
        .map_err(|e| refused(e, "SELECT … FOR UPDATE"))?;
    let keys: Vec<v1::LockKey> = keys.into_iter().map(|k| proto_key(shared, k)).collect();
    wait_until_unlocked(shared, &keys, xid).await
}

/// Write isolation's slow path: an UPDATE or DELETE without an XID on a table holding
/// global locks. Locks its rows locally (the statement's own predicate under `FOR
/// UPDATE`), waits until no global transaction holds any of them, then writes exactly
/// those rows (the key-restricted form, as in phase one). No undo is recorded: the write
/// belongs to no global transaction.
pub async fn isolated_write(
    conn: &mut Conn,
    stmts: &mut StmtCache,
    shared: &Shared,
    db: Option<&str>,
    dml: &Dml,
    mut params: Vec<Value>,
) -> Result<wire::Ok, Failure> {
    let (metas, image_sqls, image_params, write_params_lead) = match dml {
        Dml::Update(plan) => {
            let meta = meta(conn, shared, &plan.table, db)
                .await
                .map_err(Failure::Clean)?;
            if params.len() < plan.set_params {
                return Err(Failure::Clean(ProxyError::Malformed(
                    "missing statement parameters",
                )));
            }
            let where_params = params.split_off(plan.set_params);
            let sql = plan.rows_sql(&meta);
            (vec![meta], vec![sql], where_params, params)
        }
        Dml::Delete(plan) => {
            let meta = meta(conn, shared, &plan.table, db)
                .await
                .map_err(Failure::Clean)?;
            let sql = plan.before_image_sql(&meta);
            (vec![meta], vec![sql], params, Vec::new())
        }
        Dml::UpdateJoin(plan) => {
            let mut metas = Vec::with_capacity(plan.tables.len());
            for t in &plan.tables {
                metas.push(
                    meta(conn, shared, &t.table, db)
                        .await
                        .map_err(Failure::Clean)?,
                );
            }
            if params.len() < plan.from_params + plan.set_params {
                return Err(Failure::Clean(ProxyError::Malformed(
                    "missing statement parameters",
                )));
            }
            let mut image_params = params[..plan.from_params].to_vec();
            image_params.extend_from_slice(&params[plan.from_params + plan.set_params..]);
            let sqls = (0..metas.len())
                .map(|t| plan.before_image_sql(t, &metas[t]))
                .collect();
            (metas, sqls, image_params, params)
        }
        Dml::Insert(_) => {
            return Err(Failure::Clean(ProxyError::AtRefused(
                "INSERT is not subject to write isolation".into(),
            )))
        }
    };
    let mut keys_by_table = Vec::with_capacity(metas.len());
    let mut lock_keys = Vec::new();
    for (meta, sql) in metas.iter().zip(&image_sqls) {
        let name = meta.name.to_string();
        let found = rows(conn, stmts, sql, image_params.clone()).await?;
        let mut image =
            RowImage::from_image(meta, &found).map_err(|e| Failure::Clean(refused(e, &name)))?;
        dedup_by_key(meta, &mut image).map_err(|e| Failure::Clean(refused(e, &name)))?;
        for row in &image.rows {
            let k = rewind_undo_log::LockKey::for_row(&meta.name, &meta.primary_key, row)
                .map_err(|e| Failure::Clean(refused(e, &name)))?;
            lock_keys.push(proto_key(shared, k));
        }
        keys_by_table.push(keys_of(meta, &image).map_err(|e| Failure::Clean(refused(e, &name)))?);
    }
    wait_until_unlocked(shared, &lock_keys, None)
        .await
        .map_err(Failure::Clean)?;
    match dml {
        Dml::Update(plan) => {
            let meta = &metas[0];
            let per = ((MAX_STATEMENT_PARAMS
                - write_params_lead.len().min(MAX_STATEMENT_PARAMS - 1))
                / meta.primary_key.len().max(1))
            .max(1);
            write_in_chunks(
                conn,
                stmts,
                &keys_by_table[0],
                per,
                |n| plan.by_keys_sql(meta, n),
                &write_params_lead,
            )
            .await
        }
        Dml::Delete(plan) => {
            let meta = &metas[0];
            let per = (MAX_STATEMENT_PARAMS / meta.primary_key.len().max(1)).max(1);
            write_in_chunks(
                conn,
                stmts,
                &keys_by_table[0],
                per,
                |n| plan.by_keys_sql(meta, n),
                &[],
            )
            .await
        }
        Dml::UpdateJoin(plan) => {
            let keyed: Vec<(usize, &TableMeta, usize)> = metas
                .iter()
                .enumerate()
                .map(|(t, m)| (t, m.as_ref(), keys_by_table[t].len()))
                .collect();
            let mut write_params = write_params_lead;
            for keys in &keys_by_table {
                write_params.extend(keys.concat());
            }
            if write_params.len() > MAX_STATEMENT_PARAMS {
                return Err(Failure::Clean(ProxyError::AtRefused(
                    "a multi-table UPDATE of more rows than one statement can name by key, on \
                     tables holding global locks (split it)"
                        .into(),
                )));
            }
            write(conn, stmts, &plan.by_keys_sql(&keyed), write_params)
                .await
                .map_err(|e| Failure::Clean(e.into()))
        }
        Dml::Insert(_) => unreachable!("refused above"),
    }
}

/// Polls the coordinator until none of `keys` is held by another global transaction:
/// `lock_retry_count` tries `lock_retry_interval_ms` apart, failing at once when a holder
/// is rolling back (its undo may need the local row locks this session holds).
pub async fn wait_until_unlocked(
    shared: &Shared,
    keys: &[v1::LockKey],
    xid: Option<&str>,
) -> Result<(), ProxyError> {
    if keys.is_empty() {
        return Ok(());
    }
    let interval = Duration::from_millis(shared.config.lock_retry_interval_ms);
    for attempt in 0..=shared.config.lock_retry_count {
        let held = shared
            .coordinator
            .query_locks(keys, xid)
            .await
            .map_err(|e| ProxyError::CoordinatorUnavailable(e.to_string()))?;
        let Some(first) = held.first() else {
            return Ok(());
        };
        let describe = || {
            format!(
                "global lock on {} held by global transaction {}",
                describe_key(first.key.as_ref()),
                first.xid
            )
        };
        if held.iter().any(|h| h.rolling_back) {
            return Err(ProxyError::GlobalLockTimeout(format!(
                "{} which is rolling back and may need rows this session has locked",
                describe()
            )));
        }
        if attempt == shared.config.lock_retry_count {
            return Err(ProxyError::GlobalLockTimeout(describe()));
        }
        tokio::time::sleep(interval).await;
    }
    unreachable!("the loop returns on its last attempt")
}

/// A lock key of this proxy's resource, on the wire.
pub fn proto_key(shared: &Shared, k: rewind_undo_log::LockKey) -> v1::LockKey {
    v1::LockKey {
        resource_id: shared.resource_id.clone(),
        table: k.schema_table,
        pk: k.pk,
    }
}

/// `schema.table (pk1, pk2)` for messages: key values are shown only as their byte
/// length, never their content (error messages reach logs).
fn describe_key(k: Option<&v1::LockKey>) -> String {
    match k {
        Some(k) => {
            let table = rewind_undo_log::lock_key::unescape_table(&k.table);
            format!("a row of {table}")
        }
        None => "a row".into(),
    }
}

/// Commits a branch that has undo items: register with the coordinator (retrying lock
/// conflicts), insert the undo record, commit with the client's own COMMIT statement.
/// On any failure before the COMMIT the local transaction is rolled back and the error
/// says so. Returns the COMMIT's OK.
pub async fn commit(
    conn: &mut Conn,
    shared: &Shared,
    branch: Branch,
    commit_sql: &[u8],
) -> Result<wire::Ok, ProxyError> {
    let xid = branch.xid;
    let record = UndoRecord {
        items: branch.items,
    };
    let prepared = record.lock_keys().and_then(|k| Ok((k, record.encode()?)));
    let (keys, info) = match prepared {
        Ok(x) => x,
        Err(e) => return Err(abort(conn, format!("the undo record cannot be written: {e}")).await),
    };
    let keys: Vec<v1::LockKey> = keys.into_iter().map(|k| proto_key(shared, k)).collect();
    let request_id = format!("{:032x}", rand::random::<u128>());
    let interval = Duration::from_millis(shared.config.lock_retry_interval_ms);
    let mut attempt = 0;
    let (branch_id, registered_at) = loop {
        let registering = std::time::Instant::now();
        let r = shared
            .coordinator
            .register(&xid, &shared.resource_id, &keys, &request_id)
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
                            "writes without an XID to {} were still running through a \
                             proxy (possibly waiting for this transaction's own rows)",
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
                    rollback(conn).await;
                    return Err(ProxyError::GlobalLockTimeout(format!(
                        "{why}; the local transaction was rolled back"
                    )));
                }
                attempt += 1;
                tokio::time::sleep(interval).await;
            }
            Err(CallError::NotFound(m) | CallError::NotActive(m)) => {
                rollback(conn).await;
                return Err(ProxyError::UnknownXid(format!(
                    "{m}; the local transaction was rolled back"
                )));
            }
            Err(e) => return Err(abort(conn, format!("registering the branch failed: {e}")).await),
        }
    };
    tracing::debug!(%xid, branch_id, locks = keys.len(), "branch registered");
    crate::failpoint::hit("after-register").await;
    // A rollback that finds no undo record leaves a marker, which housekeeping removes
    // `undo_retention_secs` after the transaction finished. A phase one stalled since its
    // registration for a good part of that time must not insert its record any more (it
    // could land after the marker is gone): it gives up instead.
    if registered_at.elapsed() > Duration::from_secs(shared.config.undo_retention_secs) / 2 {
        let err = abort(
            conn,
            "phase one stalled between registering the branch and writing its undo record".into(),
        )
        .await;
        report(shared, &xid, branch_id, false);
        return Err(err);
    }
    let inserted = conn
        .exec_drop(shared.undo.insert(), (branch_id, xid.as_str(), info))
        .await;
    if let Err(e) = inserted {
        let why = match &e {
            mysql_async::Error::Server(s) if s.code == 1062 => {
                "the global transaction was already rolled back".to_string()
            }
            other => format!("writing the undo record failed: {other}"),
        };
        let err = abort(conn, why).await;
        report(shared, &xid, branch_id, false);
        return Err(err);
    }
    crate::failpoint::hit("before-local-commit").await;
    if let Err(e) = conn.query_drop(commit_sql).await {
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

/// Tells the coordinator how phase one ended, off the client's path.
fn report(shared: &Shared, xid: &str, branch_id: u64, committed: bool) {
    let coordinator = shared.coordinator.clone();
    let xid = xid.to_string();
    tokio::spawn(async move {
        if let Err(e) = coordinator.report(&xid, branch_id, committed).await {
            tracing::debug!(%xid, branch_id, error = %e, "phase-one report not delivered");
        }
    });
}

/// Rolls the local transaction back and returns the error that says so.
pub async fn abort(conn: &mut Conn, why: String) -> ProxyError {
    rollback(conn).await;
    ProxyError::BranchRolledBack(format!("{why}; the local transaction was rolled back"))
}

async fn rollback(conn: &mut Conn) {
    if let Err(e) = conn.query_drop("ROLLBACK").await {
        tracing::warn!(error = %e, "ROLLBACK after a failed phase one failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn savepoints_drop_later_items() {
        let item = |n: &str| UndoItem {
            kind: SqlKind::Insert,
            table: TableSummary {
                name: rewind_undo_log::TableName::new("s", n),
                primary_key: vec!["id".into()],
                on_update_now: vec![],
                generated: vec![],
            },
            set_columns: vec![],
            before: RowImage::empty(rewind_undo_log::TableName::new("s", n)),
            after: RowImage::empty(rewind_undo_log::TableName::new("s", n)),
        };
        let mut b = Branch::new("rw-1".into(), false);
        b.items.push(item("a"));
        b.savepoint("S1");
        b.items.push(item("b"));
        b.savepoint("s2");
        b.items.push(item("c"));
        b.rollback_to("s1");
        assert_eq!(b.items.len(), 1);
        b.items.push(item("d"));
        b.rollback_to("s2"); // released by the rollback to s1: nothing happens
        assert_eq!(b.items.len(), 2);
        b.release("s1");
        b.rollback_to("s1");
        assert_eq!(b.items.len(), 2);
    }

    #[test]
    fn update_info_is_parsed() {
        assert_eq!(
            parse_update_info(b"Rows matched: 3  Changed: 2  Warnings: 1"),
            Some((3, 2, 1))
        );
        assert_eq!(parse_update_info(b""), None);
    }
}
