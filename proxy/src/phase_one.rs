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
    self, AutoIncrement, DeletePlan, InsertPlan, JoinDeletePlan, JoinUpdatePlan, LockingSelect,
    UpdatePlan,
};
use rewind_undo_log::undo_sql::MAX_STATEMENT_PARAMS;
use rewind_undo_log::{
    Dml, Error as UndoError, RowImage, SqlKind, TableMeta, TableName, TableSummary, UndoItem,
    UndoRecord,
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
    /// Nothing was written, and the metadata the statement was planned with no longer
    /// matches these tables (DDL since it was loaded): reload it and plan again. Never
    /// leaves this module ([`run_dml`] and [`isolated_write`] retry).
    Stale(Vec<TableName>),
}

impl From<mysql_async::Error> for Failure {
    fn from(e: mysql_async::Error) -> Self {
        Failure::Clean(e.into())
    }
}

/// How to run the client's statement itself (INSERT runs as written).
#[derive(Clone, Copy)]
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
    read_by_keys(conn, stmts, meta, keys, false).await
}

/// [`image_by_keys`], optionally as a locking (current) read.
async fn read_by_keys(
    conn: &mut Conn,
    stmts: &mut StmtCache,
    meta: &TableMeta,
    keys: &[Vec<Value>],
    lock: bool,
) -> Result<RowImage, ProxyError> {
    let mut image = RowImage::empty(meta.name.clone());
    let per = (MAX_STATEMENT_PARAMS / meta.primary_key.len().max(1)).max(1);
    for chunk in keys.chunks(per) {
        let mut sql = analyze::rows_by_keys_sql(meta, chunk.len());
        if lock {
            sql.push_str(" FOR UPDATE");
        }
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

/// How many times a statement is planned again after the tables' definitions changed
/// under it before the proxy gives up (each retry follows a DDL that completed meanwhile).
const STALE_RETRIES: usize = 3;

/// Runs one DML statement with its images. `params` are the statement's parameters (empty
/// for the text protocol). Returns the undo items (none when no row was touched; one per
/// written table, an update and an insert item for ON DUPLICATE KEY UPDATE, a delete and
/// an insert item for REPLACE or an UPDATE of key columns) and the OK the client gets.
///
/// Before anything is written, every written table's definition is confirmed against the
/// metadata the statement was planned with; when it changed (DDL anywhere), the metadata
/// is reloaded and the statement planned again.
pub async fn run_dml(
    conn: &mut Conn,
    stmts: &mut StmtCache,
    shared: &Shared,
    db: Option<&str>,
    dml: &Dml,
    original: Original<'_>,
    params: Vec<Value>,
) -> Result<(Vec<UndoItem>, wire::Ok), Failure> {
    let mut changed = Vec::new();
    for _ in 0..STALE_RETRIES {
        match run_dml_once(conn, stmts, shared, db, dml, original, params.clone()).await {
            Err(Failure::Stale(tables)) => {
                reload(shared, &tables);
                changed = tables;
            }
            other => return other,
        }
    }
    Err(Failure::Clean(kept_changing(&changed)))
}

/// Forgets the metadata of tables whose definition changed.
fn reload(shared: &Shared, tables: &[TableName]) {
    for t in tables {
        tracing::info!(table = %t, "table definition changed; its metadata is reloaded");
        shared.metas.invalidate(t);
    }
}

fn kept_changing(tables: &[TableName]) -> ProxyError {
    let names = tables
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    ProxyError::AtRefused(format!(
        "a statement on {names}, whose definition changed {STALE_RETRIES} times while the \
         proxy prepared it (nothing was applied; retry it)"
    ))
}

async fn run_dml_once(
    conn: &mut Conn,
    stmts: &mut StmtCache,
    shared: &Shared,
    db: Option<&str>,
    dml: &Dml,
    original: Original<'_>,
    params: Vec<Value>,
) -> Result<(Vec<UndoItem>, wire::Ok), Failure> {
    match dml {
        Dml::Update(plan) => update(conn, stmts, shared, db, plan, params).await,
        Dml::UpdateJoin(plan) => update_join(conn, stmts, shared, db, plan, params).await,
        Dml::Delete(plan) => delete(conn, stmts, shared, db, plan, params)
            .await
            .map(|(item, ok)| (item.into_iter().collect(), ok)),
        Dml::DeleteJoin(plan) => delete_join(conn, stmts, shared, db, plan, params).await,
        Dml::Insert(plan) if plan.select.is_some() => {
            insert_select(conn, stmts, shared, db, plan, original, params).await
        }
        Dml::Insert(plan) if plan.on_duplicate.is_some() || plan.replace || plan.ignore => {
            upsert(conn, stmts, shared, db, plan, original, params).await
        }
        Dml::Insert(plan) => insert(conn, stmts, shared, db, plan, original, params)
            .await
            .map(|(item, ok)| (item.into_iter().collect(), ok)),
    }
}

/// The table's definition now, as [`rewind_undo_log::MetaCache::definition_query`] reads
/// it. Reading it also takes the table's metadata lock for the rest of the local
/// transaction.
async fn definition(conn: &mut Conn, shared: &Shared, name: &TableName) -> Result<String, Failure> {
    match shared
        .metas
        .definition(conn, &name.schema, &name.table)
        .await
    {
        Ok(d) => Ok(d),
        // ER_NO_SUCH_TABLE: dropped (or renamed) since it was loaded.
        Err(UndoError::Mysql(mysql_async::Error::Server(e))) if e.code == 1146 => {
            Err(Failure::Stale(vec![name.clone()]))
        }
        Err(UndoError::Mysql(e)) => Err(e.into()),
        Err(e) => Err(Failure::Clean(refused(e, &name.to_string()))),
    }
}

/// Confirms that `metas` still describe their tables; [`Failure::Stale`] names those that
/// changed. Called before a statement writes (after its before image locked the rows, so
/// no new child row of a cascading foreign key can appear under them either).
async fn confirm(conn: &mut Conn, shared: &Shared, metas: &[&TableMeta]) -> Result<(), Failure> {
    let mut stale: Vec<TableName> = Vec::new();
    for meta in metas {
        if stale.contains(&meta.name) {
            continue;
        }
        if definition(conn, shared, &meta.name).await? != meta.definition {
            stale.push(meta.name.clone());
        }
    }
    if stale.is_empty() {
        Ok(())
    } else {
        Err(Failure::Stale(stale))
    }
}

/// A statement failed before writing in a way stale metadata explains (a column the
/// metadata lacks, or an image SELECT naming a column that is gone): [`Failure::Stale`]
/// when the definitions changed, the failure itself otherwise.
async fn stale_or(
    conn: &mut Conn,
    shared: &Shared,
    metas: &[&TableMeta],
    failure: Failure,
) -> Failure {
    match confirm(conn, shared, metas).await {
        Ok(()) => failure,
        Err(f) => f,
    }
}

/// A planning error met before anything was written: a column the metadata does not know
/// may be a column added since it was loaded.
async fn planning(conn: &mut Conn, shared: &Shared, metas: &[&TableMeta], e: UndoError) -> Failure {
    let missing = matches!(e, UndoError::MissingColumn(_));
    let name = metas
        .first()
        .map(|m| m.name.to_string())
        .unwrap_or_default();
    let f = Failure::Clean(refused(e, &name));
    if missing {
        stale_or(conn, shared, metas, f).await
    } else {
        f
    }
}

/// [`rows`] for an image read before anything was written: an unknown-column error is
/// checked against the table's definition first.
async fn image_rows(
    conn: &mut Conn,
    stmts: &mut StmtCache,
    shared: &Shared,
    metas: &[&TableMeta],
    sql: &str,
    params: Vec<Value>,
) -> Result<Vec<mysql_async::Row>, Failure> {
    match rows(conn, stmts, sql, params).await {
        Ok(r) => Ok(r),
        Err(mysql_async::Error::Server(e)) if e.code == 1054 => {
            let f = Failure::Clean(mysql_async::Error::Server(e).into());
            Err(stale_or(conn, shared, metas, f).await)
        }
        Err(e) => Err(e.into()),
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
    let written = match plan.written(&metas) {
        Ok(w) => w,
        Err(e) => {
            let all: Vec<&TableMeta> = metas.iter().map(|m| &**m).collect();
            return Err(planning(conn, shared, &all, e).await);
        }
    };
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
    let written_metas: Vec<&TableMeta> = written.iter().map(|(t, _)| &*metas[*t]).collect();
    let mut befores = Vec::with_capacity(written.len());
    for (t, _) in &written {
        let meta = &metas[*t];
        let name = meta.name.to_string();
        let sql = plan.before_image_sql(*t, meta);
        let found = image_rows(
            conn,
            stmts,
            shared,
            &written_metas,
            &sql,
            image_params.clone(),
        )
        .await?;
        let mut image =
            RowImage::from_image(meta, &found).map_err(|e| Failure::Clean(refused(e, &name)))?;
        dedup_by_key(meta, &mut image).map_err(|e| Failure::Clean(refused(e, &name)))?;
        befores.push(image);
    }
    confirm(conn, shared, &written_metas).await?;
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

/// `DELETE t1, t2 FROM t1 JOIN t2 …`: one before image per target table (the join's own
/// `FOR UPDATE` locks every joined row), then the DELETE narrowed to exactly those keys.
async fn delete_join(
    conn: &mut Conn,
    stmts: &mut StmtCache,
    shared: &Shared,
    db: Option<&str>,
    plan: &JoinDeletePlan,
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
    let targets: Vec<&TableMeta> = plan.targets.iter().map(|t| &*metas[*t]).collect();
    for (i, meta) in targets.iter().enumerate() {
        if targets[..i].iter().any(|m| m.name == meta.name) {
            return Err(Failure::Clean(ProxyError::AtRefused(format!(
                "multi-table DELETE naming table {} twice as a target",
                meta.name
            ))));
        }
        if let Some(why) = meta.refusal(SqlKind::Delete, &[]) {
            return Err(Failure::Clean(ProxyError::AtRefused(why)));
        }
    }
    let mut befores = Vec::with_capacity(targets.len());
    for (t, meta) in plan.targets.iter().zip(&targets) {
        let name = meta.name.to_string();
        let sql = plan.before_image_sql(*t, meta);
        let found = image_rows(conn, stmts, shared, &targets, &sql, params.clone()).await?;
        let mut image =
            RowImage::from_image(meta, &found).map_err(|e| Failure::Clean(refused(e, &name)))?;
        dedup_by_key(meta, &mut image).map_err(|e| Failure::Clean(refused(e, &name)))?;
        befores.push(image);
    }
    confirm(conn, shared, &targets).await?;
    let mut keyed = Vec::with_capacity(targets.len());
    let mut write_params = params;
    let mut total = 0u64;
    for ((t, meta), before) in plan.targets.iter().zip(&targets).zip(&befores) {
        let keys =
            keys_of(meta, before).map_err(|e| Failure::Clean(refused(e, "multi-table DELETE")))?;
        total += keys.len() as u64;
        keyed.push((*t, *meta, keys.len()));
        write_params.extend(keys.concat());
    }
    if write_params.len() > MAX_STATEMENT_PARAMS {
        return Err(Failure::Clean(ProxyError::AtRefused(
            "multi-table DELETE of more rows than one statement can name by key (split it)".into(),
        )));
    }
    let ok = write(conn, stmts, &plan.by_keys_sql(&keyed), write_params).await?;
    if ok.affected_rows != total {
        return Err(Failure::Poisoned(ProxyError::BranchRolledBack(format!(
            "multi-table DELETE: {total} rows locked but {} deleted",
            ok.affected_rows
        ))));
    }
    let items = targets
        .iter()
        .zip(befores)
        .filter(|(_, before)| !before.is_empty())
        .map(|(meta, before)| UndoItem {
            kind: SqlKind::Delete,
            table: TableSummary::from(*meta),
            set_columns: Vec::new(),
            after: RowImage::empty(meta.name.clone()),
            before,
        })
        .collect();
    Ok((items, ok))
}

/// `INSERT [IGNORE] INTO t … SELECT …`: the inserted rows are found exactly.
///
/// Keys the SELECT supplies are read first by running the SELECT itself, and locked (rows
/// that already hold one are set apart); afterwards the rows holding those keys, minus the
/// ones that existed, must be exactly as many as the server reports inserted. Keys the
/// server generates (auto-increment) come as one consecutive run from the last insert id
/// in steps of `auto_increment_increment`: an INSERT … SELECT holds the table's
/// auto-increment lock for the whole statement unless `innodb_autoinc_lock_mode` is 2, in
/// which case it is refused. Anything that does not add up rolls the local transaction
/// back.
async fn insert_select(
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
    if let Some(why) = meta.refusal(SqlKind::Insert, &[]) {
        return Err(Failure::Clean(ProxyError::AtRefused(why)));
    }
    let positions = match plan.select_key_positions(&meta) {
        Ok(p) => p,
        Err(e) => return Err(planning(conn, shared, &[&meta], e).await),
    };
    let select = plan.select.as_deref().expect("an INSERT … SELECT plan");
    let settings: Option<(u64, String, u64)> = conn
        .query_first("SELECT @@auto_increment_increment, @@sql_mode, @@innodb_autoinc_lock_mode")
        .await?;
    let (increment, mode, lock_mode) = settings.unwrap_or((1, String::new(), 1));
    let increment = increment.max(1);
    let zero_is_value = mode.to_ascii_uppercase().contains("NO_AUTO_VALUE_ON_ZERO");
    let auto = meta.auto_increment_column().map(|c| c.name.clone());
    // `Some(keys)`: every key comes from the SELECT; `None`: the server generates them.
    let mut supplied: Option<Vec<Vec<Value>>> = None;
    if positions.iter().all(Option::is_some) {
        let found = rows(conn, stmts, select, params.clone()).await?;
        let (mut given, mut generated) = (Vec::with_capacity(found.len()), 0usize);
        for row in &found {
            let mut key = Vec::with_capacity(positions.len());
            let mut server_picks = false;
            for (pk, at) in meta.primary_key.iter().zip(&positions) {
                let at = at.expect("checked above");
                let v = row.as_ref(at).cloned().ok_or_else(|| {
                    Failure::Clean(ProxyError::AtRefused(format!(
                        "INSERT … SELECT whose SELECT has fewer columns than the insert lists \
                         (table {name})"
                    )))
                })?;
                let is_auto = auto.as_deref() == Some(pk.as_str());
                let zero = matches!(v, Value::Int(0) | Value::UInt(0))
                    || matches!(&v, Value::Bytes(b) if b.as_slice() == b"0");
                if is_auto && (v == Value::NULL || (zero && !zero_is_value)) {
                    server_picks = true;
                }
                key.push(v);
            }
            if server_picks {
                generated += 1;
            } else {
                given.push(key);
            }
        }
        match (given.is_empty(), generated) {
            (_, 0) => supplied = Some(given),
            (true, _) => {}
            (false, _) => {
                return Err(Failure::Clean(ProxyError::AtRefused(
                    "INSERT … SELECT mixing explicit and generated auto-increment keys".into(),
                )))
            }
        }
    }
    if supplied.is_none() {
        if lock_mode == 2 {
            return Err(Failure::Clean(ProxyError::AtRefused(
                "INSERT … SELECT with generated keys while innodb_autoinc_lock_mode = 2 (the \
                 keys may interleave with other inserts; supply the keys in the SELECT)"
                    .into(),
            )));
        }
        if plan.ignore && !meta.unique_keys.is_empty() {
            return Err(Failure::Clean(ProxyError::AtRefused(
                "INSERT IGNORE … SELECT with generated keys on a table with unique keys (a \
                 skipped row leaves a gap in the generated keys)"
                    .into(),
            )));
        }
    }
    let existing = match &supplied {
        Some(keys) => read_by_keys(conn, stmts, &meta, keys, true)
            .await
            .map_err(Failure::Clean)?,
        None => RowImage::empty(meta.name.clone()),
    };
    confirm(conn, shared, &[&meta]).await?;
    let ok = run_original(conn, original, &params).await?;
    let poisoned = |why: String| {
        Failure::Poisoned(ProxyError::BranchRolledBack(format!(
            "the rows INSERT … SELECT wrote into {name} could not be identified ({why})"
        )))
    };
    let inserted = match &supplied {
        Some(keys) => {
            let now = read_by_keys(conn, stmts, &meta, keys, true)
                .await
                .map_err(|e| poisoned(e.to_string()))?;
            let pk = &meta.primary_key;
            let old = existing
                .rows
                .iter()
                .map(|r| rewind_undo_log::record::row_key(r, pk))
                .collect::<Result<std::collections::HashSet<_>, _>>()
                .map_err(|e| poisoned(e.to_string()))?;
            let mut new = RowImage::empty(meta.name.clone());
            let mut seen = std::collections::HashSet::new();
            for row in now.rows {
                let k = rewind_undo_log::record::row_key(&row, pk)
                    .map_err(|e| poisoned(e.to_string()))?;
                if !old.contains(&k) && seen.insert(k) {
                    new.rows.push(row);
                }
            }
            new
        }
        None if ok.affected_rows == 0 => RowImage::empty(meta.name.clone()),
        None => {
            if ok.last_insert_id == 0 {
                return Err(poisoned("no last insert id for generated keys".into()));
            }
            let keys = (0..ok.affected_rows)
                .map(|i| {
                    increment
                        .checked_mul(i)
                        .and_then(|step| ok.last_insert_id.checked_add(step))
                        .map(|id| vec![Value::UInt(id)])
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| poisoned("auto-increment overflow".into()))?;
            image_by_keys(conn, stmts, &meta, &keys)
                .await
                .map_err(|e| poisoned(e.to_string()))?
        }
    };
    if inserted.rows.len() as u64 != ok.affected_rows {
        return Err(poisoned(format!(
            "{} rows reported inserted, {} found by key",
            ok.affected_rows,
            inserted.rows.len()
        )));
    }
    let item = (!inserted.is_empty()).then(|| UndoItem {
        kind: SqlKind::Insert,
        table: TableSummary::from(&*meta),
        set_columns: Vec::new(),
        before: RowImage::empty(meta.name.clone()),
        after: inserted,
    });
    Ok((item.into_iter().collect(), ok))
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

/// The INSERTs that meet existing rows: `INSERT … ON DUPLICATE KEY UPDATE` (updates the
/// rows it hits), `REPLACE` (deletes them first) and `INSERT IGNORE` (skips the rows that
/// hit one). Lock and image every row any VALUES row can collide with (by primary key or
/// unique key), run the statement, read the same keys again (a locking read: the latest
/// rows): rows that existed are what ON DUPLICATE KEY UPDATE updated or what REPLACE
/// deleted; the others are the rows the statement inserted.
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
    let set_columns = match plan.on_duplicate_columns_in(&meta) {
        Ok(c) => c,
        Err(e) => return Err(planning(conn, shared, &[&meta], e).await),
    };
    let refusal = if plan.replace {
        meta.refusal(SqlKind::Insert, &[])
            .or_else(|| meta.refusal(SqlKind::Delete, &[]))
    } else {
        meta.refusal(SqlKind::Insert, &[])
            .or_else(|| meta.refusal(SqlKind::Update, &set_columns))
    };
    if let Some(why) = refusal {
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
    let keys = match plan.conflict_keys(&meta, &params, no_auto_value_on_zero) {
        Ok(k) => k,
        Err(e) => {
            let f = Failure::Clean(refused(e, &name));
            return Err(stale_or(conn, shared, &[&meta], f).await);
        }
    };
    if keys.is_empty() {
        // Generated keys and no unique key: nothing can collide, a plain INSERT (which
        // also checks that every VALUES row landed, so an IGNOREd row cannot go unseen).
        return insert(conn, stmts, shared, db, plan, original, params)
            .await
            .map(|(item, ok)| (item.into_iter().collect(), ok));
    }
    let (locking, key_params) = plan
        .conflict_image_sql(&meta, &keys, true)
        .map_err(|e| Failure::Clean(refused(e, &name)))?;
    let found = image_rows(conn, stmts, shared, &[&meta], &locking, key_params.clone()).await?;
    let before =
        RowImage::from_image(&meta, &found).map_err(|e| Failure::Clean(refused(e, &name)))?;
    confirm(conn, shared, &[&meta]).await?;
    let ok = run_original(conn, original, &params).await?;
    let statement = plan.statement();
    let poisoned = |why: String| {
        Failure::Poisoned(ProxyError::BranchRolledBack(format!(
            "the rows {statement} wrote into {name} could not be identified ({why})"
        )))
    };
    let found = rows(conn, stmts, &locking, key_params)
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
    let mut kept = RowImage::empty(meta.name.clone());
    let mut inserted = RowImage::empty(meta.name.clone());
    for row in after.rows {
        if before_keys.contains(&key_of(&row).map_err(|e| poisoned(e.to_string()))?) {
            kept.rows.push(row);
        } else {
            inserted.rows.push(row);
        }
    }
    let table = TableSummary::from(&*meta);
    let mut items = Vec::with_capacity(2);
    if plan.replace {
        // Every row that held one of the keys was deleted; every row holding one now was
        // inserted by this statement (the keys stayed locked throughout).
        let mut now = kept;
        now.rows.append(&mut inserted.rows);
        if now.rows.len() > plan.rows || (plan.rows > 0 && now.rows.is_empty()) {
            return Err(poisoned(format!(
                "{} rows hold the keys of {} VALUES rows",
                now.rows.len(),
                plan.rows
            )));
        }
        if !before.is_empty() {
            items.push(UndoItem {
                kind: SqlKind::Delete,
                table: table.clone(),
                set_columns: Vec::new(),
                before,
                after: RowImage::empty(meta.name.clone()),
            });
        }
        if !now.is_empty() {
            items.push(UndoItem {
                kind: SqlKind::Insert,
                table,
                set_columns: Vec::new(),
                before: RowImage::empty(meta.name.clone()),
                after: now,
            });
        }
        return Ok((items, ok));
    }
    if plan.ignore {
        // Existing rows are left as they were; a row counted here that the server did not
        // count was written by someone else between the lock and the insert (no gap lock
        // under READ COMMITTED): never taken for ours.
        if inserted.rows.len() as u64 != ok.affected_rows || kept.rows.len() != before.rows.len() {
            return Err(poisoned(format!(
                "{} rows reported inserted, {} new rows found, {} of {} existing rows found again",
                ok.affected_rows,
                inserted.rows.len(),
                kept.rows.len(),
                before.rows.len()
            )));
        }
    } else if kept.rows.len() != before.rows.len() || inserted.rows.len() > plan.rows {
        return Err(poisoned(format!(
            "{} rows existed, {} found again, {} new for {} VALUES rows",
            before.rows.len(),
            kept.rows.len(),
            inserted.rows.len(),
            plan.rows
        )));
    }
    if !before.is_empty() && !plan.ignore {
        items.push(UndoItem {
            kind: SqlKind::Update,
            table: table.clone(),
            set_columns,
            before,
            after: kept,
        });
    }
    if !inserted.is_empty() {
        items.push(UndoItem {
            kind: SqlKind::Insert,
            table,
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
) -> Result<(Vec<UndoItem>, wire::Ok), Failure> {
    let meta = meta(conn, shared, &plan.table, db)
        .await
        .map_err(Failure::Clean)?;
    let name = meta.name.to_string();
    let set_columns = match plan.set_columns_in(&meta) {
        Ok(c) => c,
        Err(e) => return Err(planning(conn, shared, &[&meta], e).await),
    };
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
    let found = image_rows(conn, stmts, shared, &[&meta], &before_sql, where_params).await?;
    let before =
        RowImage::from_image(&meta, &found).map_err(|e| Failure::Clean(refused(e, &name)))?;
    let keys = keys_of(&meta, &before).map_err(|e| Failure::Clean(refused(e, &name)))?;
    confirm(conn, shared, &[&meta]).await?;
    // An UPDATE of key columns: the rows are found afterwards by their new keys, computed
    // now by the SET clause's own expressions from the locked rows.
    let new_keys = if plan.changes_key(&meta) && !keys.is_empty() {
        let sql = plan
            .new_keys_sql(&meta, keys.len())
            .map_err(|e| Failure::Clean(refused(e, &name)))?
            .expect("a key column is assigned");
        let key_params = plan
            .new_keys_params(&meta, &set_params, &keys)
            .map_err(|e| Failure::Clean(refused(e, &name)))?;
        if key_params.len() > MAX_STATEMENT_PARAMS {
            return Err(Failure::Clean(ProxyError::AtRefused(
                "UPDATE of primary-key columns on more rows than one statement can name by \
                 key (split it)"
                    .into(),
            )));
        }
        let width = meta.primary_key.len();
        let found = rows(conn, stmts, &sql, key_params).await?;
        let mut out = Vec::with_capacity(found.len());
        for row in found {
            let mut values = row.unwrap();
            out.push(values.split_off(width));
        }
        Some(out)
    } else {
        None
    };

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
    let after = image_by_keys(conn, stmts, &meta, new_keys.as_deref().unwrap_or(&keys))
        .await
        .map_err(Failure::Poisoned)?;
    if after.rows.len() != before.rows.len() {
        return Err(Failure::Poisoned(ProxyError::BranchRolledBack(format!(
            "UPDATE on {name}: {} rows locked but {} found after the write",
            before.rows.len(),
            after.rows.len()
        ))));
    }
    if before.is_empty() {
        return Ok((Vec::new(), ok));
    }
    let table = TableSummary::from(&*meta);
    let items = if new_keys.is_some() {
        // Rows that moved to new keys: undone by deleting them under the new keys and
        // putting the before image back under the old ones (in that order, so keys that
        // shifted onto each other never collide).
        vec![
            UndoItem {
                kind: SqlKind::Delete,
                table: table.clone(),
                set_columns: Vec::new(),
                before,
                after: RowImage::empty(meta.name.clone()),
            },
            UndoItem {
                kind: SqlKind::Insert,
                table,
                set_columns: Vec::new(),
                before: RowImage::empty(meta.name.clone()),
                after,
            },
        ]
    } else {
        vec![UndoItem {
            kind: SqlKind::Update,
            table,
            set_columns,
            before,
            after,
        }]
    };
    Ok((items, ok))
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
    let sql = plan.before_image_sql(&meta);
    let found = image_rows(conn, stmts, shared, &[&meta], &sql, params).await?;
    let before =
        RowImage::from_image(&meta, &found).map_err(|e| Failure::Clean(refused(e, &name)))?;
    let keys = keys_of(&meta, &before).map_err(|e| Failure::Clean(refused(e, &name)))?;
    confirm(conn, shared, &[&meta]).await?;
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

/// Runs the client's own statement (INSERT-like statements run as written) and returns
/// its OK.
async fn run_original(
    conn: &mut Conn,
    original: Original<'_>,
    params: &[Value],
) -> Result<wire::Ok, mysql_async::Error> {
    match original {
        Original::Text(sql) => conn.query_drop(sql).await?,
        Original::Prepared(stmt) => conn.exec_drop(stmt, params_of(params.to_vec())).await?,
    }
    Ok(wire::Ok::from_backend(conn))
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
    let planned = plan.row_keys(
        &meta,
        &params,
        AutoIncrement {
            last_insert_id: 1,
            increment,
            no_auto_value_on_zero,
        },
    );
    if let Err(e) = planned {
        // A row with more values than the metadata has columns: maybe a column was added.
        let f = Failure::Clean(refused(e, &name));
        return Err(stale_or(conn, shared, &[&meta], f).await);
    }
    confirm(conn, shared, &[&meta]).await?;
    let ok = run_original(conn, original, &params).await?;
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
    params: Vec<Value>,
) -> Result<wire::Ok, Failure> {
    let mut changed = Vec::new();
    for _ in 0..STALE_RETRIES {
        match isolated_write_once(conn, stmts, shared, db, dml, params.clone()).await {
            Err(Failure::Stale(tables)) => {
                reload(shared, &tables);
                changed = tables;
            }
            other => return other,
        }
    }
    Err(Failure::Clean(kept_changing(&changed)))
}

async fn isolated_write_once(
    conn: &mut Conn,
    stmts: &mut StmtCache,
    shared: &Shared,
    db: Option<&str>,
    dml: &Dml,
    mut params: Vec<Value>,
) -> Result<wire::Ok, Failure> {
    let join_metas =
        |tables: &[analyze::JoinTable]| tables.iter().map(|t| t.table.clone()).collect::<Vec<_>>();
    let refs = match dml {
        Dml::Update(plan) => vec![plan.table.clone()],
        Dml::Delete(plan) => vec![plan.table.clone()],
        Dml::UpdateJoin(plan) => join_metas(&plan.tables),
        Dml::DeleteJoin(plan) => join_metas(&plan.tables),
        Dml::Insert(_) => {
            return Err(Failure::Clean(ProxyError::AtRefused(
                "INSERT is not subject to write isolation".into(),
            )))
        }
    };
    let mut metas = Vec::with_capacity(refs.len());
    for r in &refs {
        metas.push(meta(conn, shared, r, db).await.map_err(Failure::Clean)?);
    }
    // Which tables' rows are written (and so locked and checked), their image SELECTs,
    // the parameters those take, and the parameters leading the key-restricted write.
    let (written, image_sqls, image_params, write_params_lead): (Vec<usize>, Vec<String>, _, _) =
        match dml {
            Dml::Update(plan) => {
                if params.len() < plan.set_params {
                    return Err(Failure::Clean(ProxyError::Malformed(
                        "missing statement parameters",
                    )));
                }
                let where_params = params.split_off(plan.set_params);
                (
                    vec![0],
                    vec![plan.rows_sql(&metas[0])],
                    where_params,
                    params,
                )
            }
            Dml::Delete(plan) => (
                vec![0],
                vec![plan.before_image_sql(&metas[0])],
                params,
                Vec::new(),
            ),
            Dml::UpdateJoin(plan) => {
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
                ((0..metas.len()).collect(), sqls, image_params, params)
            }
            Dml::DeleteJoin(plan) => {
                let sqls = plan
                    .targets
                    .iter()
                    .map(|t| plan.before_image_sql(*t, &metas[*t]))
                    .collect();
                (plan.targets.clone(), sqls, params.clone(), params)
            }
            Dml::Insert(_) => unreachable!("refused above"),
        };
    let checked: Vec<&TableMeta> = written.iter().map(|t| &*metas[*t]).collect();
    let mut keys_by_table = Vec::with_capacity(written.len());
    let mut lock_keys = Vec::new();
    for (meta, sql) in checked.iter().zip(&image_sqls) {
        let name = meta.name.to_string();
        let found = image_rows(conn, stmts, shared, &checked, sql, image_params.clone()).await?;
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
    // The keys checked must be the table's keys now, or the check would look at other rows.
    confirm(conn, shared, &checked).await?;
    wait_until_unlocked(shared, &lock_keys, None)
        .await
        .map_err(Failure::Clean)?;
    let keyed = |keys_by_table: &[Vec<Vec<Value>>]| -> Vec<(usize, &TableMeta, usize)> {
        written
            .iter()
            .zip(keys_by_table)
            .map(|(t, keys)| (*t, &*metas[*t], keys.len()))
            .collect()
    };
    let join_write = |sql: String, mut write_params: Vec<Value>| {
        for keys in &keys_by_table {
            write_params.extend(keys.concat());
        }
        if write_params.len() > MAX_STATEMENT_PARAMS {
            return Err(Failure::Clean(ProxyError::AtRefused(
                "a multi-table write of more rows than one statement can name by key, on \
                 tables holding global locks (split it)"
                    .into(),
            )));
        }
        Ok((sql, write_params))
    };
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
            let (sql, p) = join_write(plan.by_keys_sql(&keyed(&keys_by_table)), write_params_lead)?;
            write(conn, stmts, &sql, p)
                .await
                .map_err(|e| Failure::Clean(e.into()))
        }
        Dml::DeleteJoin(plan) => {
            let (sql, p) = join_write(plan.by_keys_sql(&keyed(&keys_by_table)), write_params_lead)?;
            write(conn, stmts, &sql, p)
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
