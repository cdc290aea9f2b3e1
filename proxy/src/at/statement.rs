//! Phase one of AT mode, on the client's own backend connection and inside its local
//! transaction.
//!
//! For each DML statement: read the before image with the statement's own predicate under
//! `FOR UPDATE`, run the write restricted to exactly the locked primary keys (so a row that
//! appears between image and write under READ COMMITTED is never changed without a
//! record), then read the after image by key (in the same query as the write where both
//! are texts, [`StatementRun::write_then_read_text`]; a text statement whose condition
//! pins one integer primary key sends all three as one query,
//! [`StatementRun::image_write_image_text`]). INSERTs run as written and their rows are
//! found again by the keys the statement gave or the server generated. At the client's
//! COMMIT: register the branch and its global locks with the coordinator, insert the undo
//! record, and only then commit (one query, which the server stops at a failed insert);
//! any failure rolls the local transaction back.
//!
//! Images are read with the binary protocol (prepared statements, cached per session in
//! [`StmtCache`]); TIMESTAMP columns come as `UNIX_TIMESTAMP()` so the client's session
//! time zone cannot shift them.
//!
//! This file holds the context every step runs in ([`StatementRun`]), the statement
//! cache, how a step fails ([`Failure`]), and the definition check that keeps table
//! metadata from going stale; the statement kinds live beside it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;

use crate::at::sql::{self as analyze, Dml};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Statement, Value};
use rewind_undo_log::undo_sql::MAX_STATEMENT_PARAMS;
use rewind_undo_log::{Error as UndoError, RowImage, TableMeta, TableName, UndoItem};

use super::definitions::Checks;
use crate::error::ProxyError;
pub(crate) use crate::params::ParamType;
use crate::wire;
use crate::Shared;

/// One DML statement of a branch (or a write-isolated statement) being run: the client's
/// backend connection inside its local transaction, the statements the proxy prepared on
/// it, what all sessions share, and the session's current database (for table names the
/// statement does not qualify). Every step of phase one is a method of it.
pub struct StatementRun<'a> {
    pub conn: &'a mut Conn,
    pub stmts: &'a mut StmtCache,
    pub shared: &'a Shared,
    pub db: Option<&'a str>,
    /// The global transaction the statement belongs to; `None` for an isolated write.
    pub xid: Option<&'a str>,
    /// The bound transaction's table-definition checks (`None` for an isolated write,
    /// which confirms every definition before it writes).
    pub checks: Option<&'a mut Checks>,
    /// The client's parameter types, when the statement came as an execute: the values
    /// it sent go on with them ([`crate::params`]); empty for a text statement.
    pub types: &'a [crate::params::ParamType],
}

/// Statements the proxy itself prepared on a session's backend connection. The pool's
/// statement cache is off (a client's statements are the client's), so without this every
/// image read would cost a prepare round trip. Bounded; the oldest is closed on overflow.
#[derive(Default)]
pub struct StmtCache {
    map: HashMap<String, Statement>,
    order: VecDeque<String>,
}

pub(super) const STMT_CACHE_SIZE: usize = 64;

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

    /// Whether `sql` is prepared on this connection.
    pub fn contains(&self, sql: &str) -> bool {
        self.map.contains_key(sql)
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

pub use super::refusals::analysis as refused;

impl StatementRun<'_> {
    /// The table's metadata, by the statement's name for it or the session's database.
    pub async fn meta(
        &mut self,
        table: &analyze::TableRef,
    ) -> Result<std::sync::Arc<TableMeta>, ProxyError> {
        let schema = table
            .schema
            .as_deref()
            .or(self.db)
            .ok_or(ProxyError::NoDatabase)?;
        self.shared
            .metas
            .get_or_load(self.conn, schema, &table.table)
            .await
            .map_err(|e| refused(e, &format!("{schema}.{}", table.table)))
    }
}

impl StatementRun<'_> {
    /// Rows of `sql` with `params`, the first `types.len()` of them the client's (sent
    /// with its types, [`crate::params`]).
    pub(super) async fn rows(
        &mut self,
        sql: &str,
        params: Vec<Value>,
        types: &[ParamType],
    ) -> Result<Vec<mysql_async::Row>, mysql_async::Error> {
        let stmt = self.stmts.get(self.conn, sql).await?;
        let stamp = self.before_request();
        let r = crate::params::exec_rows(self.conn, &stmt, params, types).await;
        self.answered(stamp, r.is_ok());
        r
    }
}

impl StatementRun<'_> {
    /// [`Self::rows`] of `metas`' tables, read as text where that costs less and is exact.
    ///
    /// A text without parameters that is not already prepared is, in all likelihood, a
    /// client's statement with its values written in: it is read as text rather than
    /// prepared for one use. Only where the text protocol reads every column exactly
    /// (FLOAT prints inexactly, DOUBLE loses the sign of zero).
    pub(super) async fn rows_of(
        &mut self,
        metas: &[&TableMeta],
        sql: &str,
        params: Vec<Value>,
        types: &[ParamType],
    ) -> Result<Vec<mysql_async::Row>, mysql_async::Error> {
        if params.is_empty() && !self.stmts.contains(sql) && metas.iter().all(|m| text_is_exact(m))
        {
            self.text_rows(sql).await
        } else {
            self.rows(sql, params, types).await
        }
    }

    /// [`Self::rows`] in the text protocol.
    pub(super) async fn text_rows(
        &mut self,
        sql: &str,
    ) -> Result<Vec<mysql_async::Row>, mysql_async::Error> {
        let stamp = self.before_request();
        let r = self.conn.query(sql).await;
        self.answered(stamp, r.is_ok());
        r
    }

    /// [`Self::write`] in the text protocol, for a statement without parameters.
    pub(super) async fn write_text(&mut self, sql: &str) -> Result<wire::Ok, mysql_async::Error> {
        let stamp = self.before_request();
        let r = self.conn.query_drop(sql).await;
        self.answered(stamp, r.is_ok());
        r?;
        Ok(wire::Ok::from_backend(self.conn))
    }
}

impl StatementRun<'_> {
    /// A write and then a read by key, as one text query: a round trip less per statement.
    /// The server stops a multi-statement query at the first statement that fails, so the
    /// read runs only after the write succeeded. Returns the write's OK (as its client gets
    /// it) and the read's rows; a failed write is [`Failure::Clean`], a failed read
    /// [`Failure::Poisoned`] (the write is done).
    pub(super) async fn write_then_read_text(
        &mut self,
        write: &str,
        read: &str,
    ) -> Result<(wire::Ok, Vec<mysql_async::Row>), Failure> {
        let stamp = self.before_request();
        let r = self
            .conn
            .query_iter(format!("{write};\n{read}"))
            .await
            .map(drop);
        self.answered(stamp, r.is_ok());
        r.map_err(|e| Failure::Clean(e.into()))?;
        let ok = self.write_ok();
        Ok((ok, self.rows_after_write().await?))
    }

    /// The OK of a write answered inside a multi-statement query, as its client gets it.
    fn write_ok(&self) -> wire::Ok {
        let mut ok = wire::Ok::from_backend(self.conn);
        ok.status &= !mysql_async::consts::StatusFlags::SERVER_MORE_RESULTS_EXISTS.bits();
        ok
    }

    /// The rows of the read that follows a write in one query ([`Failure::Poisoned`] when
    /// it fails: the write is done).
    async fn rows_after_write(&mut self) -> Result<Vec<mysql_async::Row>, Failure> {
        // The write's set holds no row: reading it moves on to the read's.
        let mut rest = mysql_async::QueryResult::<mysql_async::TextProtocol>::new(&mut *self.conn);
        let rows = match rest.next().await {
            Ok(_) => rest.collect::<mysql_async::Row>().await,
            Err(e) => Err(e),
        };
        rows.map_err(|e| Failure::Poisoned(e.into()))
    }
}

impl StatementRun<'_> {
    /// A statement that touches one known row at most ([`crate::at::sql::pinned_key`]) as one
    /// text query: its before image (`image`, under `FOR UPDATE`), its write narrowed to that
    /// key, and (`after`) its after image by key; two round trips less than image, write and
    /// after image apart. Only where [`Self::definition_held`]: the definition is confirmed
    /// after the write, and a change found then can no longer be planned again.
    ///
    /// The server stops a multi-statement query at the first statement that fails, and a
    /// failed statement writes nothing: a failure up to the write's answer is
    /// [`Failure::Clean`] (an unknown column in the image is checked against the table's
    /// definition as in [`Self::image_rows`]), a failed after image [`Failure::Poisoned`].
    /// Returns the image's rows, the write's OK (as its client gets it) and the after
    /// image's rows.
    pub(super) async fn image_write_image_text(
        &mut self,
        metas: &[&TableMeta],
        image: &str,
        write: &str,
        after: Option<&str>,
    ) -> Result<(Vec<mysql_async::Row>, wire::Ok, Vec<mysql_async::Row>), Failure> {
        let sql = match after {
            Some(after) => format!("{image};\n{write};\n{after}"),
            None => format!("{image};\n{write}"),
        };
        let stamp = self.before_request();
        let r = self.conn.query_iter(sql).await.map(drop);
        self.answered(stamp, r.is_ok());
        match r {
            Ok(()) => {}
            Err(mysql_async::Error::Server(e)) if e.code == 1054 => {
                let f = Failure::Clean(mysql_async::Error::Server(e).into());
                return Err(self.stale_or(metas, f).await);
            }
            Err(e) => return Err(Failure::Clean(e.into())),
        }
        // Collecting the image's rows also reads the write's answer: its error, or its OK.
        let mut rest = mysql_async::QueryResult::<mysql_async::TextProtocol>::new(&mut *self.conn);
        let before = rest
            .collect::<mysql_async::Row>()
            .await
            .map_err(|e| Failure::Clean(e.into()))?;
        let ok = self.write_ok();
        if after.is_none() {
            return Ok((before, ok, Vec::new()));
        }
        Ok((before, ok, self.rows_after_write().await?))
    }

    /// An UPDATE (`after`: its after image by key) or DELETE (`after`: `None`) pinned to
    /// `key` ([`crate::at::sql::pinned_key`]), run with its images as one query
    /// ([`Self::image_write_image_text`]), then the table's definition confirmed
    /// ([`Self::confirm_written`]). The image names the pinned row or nothing, and the write
    /// must have reached as many rows as it locked (an UPDATE's `Rows matched`, a DELETE's
    /// affected rows): a row inserted under that key in between, under READ COMMITTED,
    /// would be written without an image. Anything else poisons. Returns the before image,
    /// the write's OK and the after image (empty for a DELETE or when no row was locked).
    pub(super) async fn pinned_write(
        &mut self,
        meta: &TableMeta,
        key: &[Value],
        image: &str,
        write: &str,
        after: Option<&str>,
    ) -> Result<(RowImage, wire::Ok, RowImage), Failure> {
        let name = &meta.name;
        let (found, ok, found_after) = self
            .image_write_image_text(&[meta], image, write, after)
            .await?;
        let poisoned = |why: String| Failure::Poisoned(ProxyError::BranchRolledBack(why));
        let before = RowImage::from_image(meta, &found)
            .map_err(|e| poisoned(format!("before image of {name}: {e}")))?;
        let locked = keys_of(meta, &before).map_err(|e| poisoned(e.to_string()))?;
        let other_key = locked.iter().any(|k| !analyze::same_key(k, key));
        match after {
            Some(_) => {
                let matched = parse_update_info(&ok.info).map(|(m, _, _)| m);
                if other_key || matched != Some(locked.len() as u64) {
                    return Err(poisoned(format!(
                        "UPDATE on {name}: {} rows locked but {} matched by the write",
                        locked.len(),
                        matched.map_or("an unknown number of".to_string(), |m| m.to_string())
                    )));
                }
            }
            None => {
                if other_key || ok.affected_rows != locked.len() as u64 {
                    return Err(poisoned(format!(
                        "DELETE on {name}: {} rows locked but {} deleted",
                        locked.len(),
                        ok.affected_rows
                    )));
                }
            }
        }
        let after = if after.is_none() || before.is_empty() {
            RowImage::empty(meta.name.clone())
        } else {
            RowImage::from_image(meta, &found_after)
                .map_err(|e| poisoned(format!("after image of {name}: {e}")))?
        };
        self.confirm_written(meta).await?;
        self.shared
            .metrics
            .one_query_writes
            .fetch_add(1, Ordering::Relaxed);
        Ok((before, ok, after))
    }

    /// Whether [`Self::confirm`] would let a write to `meta`'s table go without reading its
    /// definition: this global transaction confirmed it already, or another holder holds the
    /// same definition confirmed (then settled at commit).
    pub(super) fn definition_held(&self, meta: &TableMeta) -> bool {
        self.checks
            .as_deref()
            .is_some_and(|c| c.confirmed(meta) || self.shared.definitions.held(meta))
    }

    /// [`Self::confirm`] after a write that already happened: any failure, a changed
    /// definition included, leaves a write without a trustworthy undo, so it poisons.
    pub(super) async fn confirm_written(&mut self, meta: &TableMeta) -> Result<(), Failure> {
        match self.confirm(&[meta]).await {
            Ok(()) => Ok(()),
            Err(Failure::Stale(_)) => {
                Err(Failure::Poisoned(ProxyError::BranchRolledBack(format!(
                    "the definition of {} changed under a write planned on the old one",
                    meta.name
                ))))
            }
            Err(Failure::Clean(e) | Failure::Poisoned(e)) => Err(Failure::Poisoned(e)),
        }
    }
}

/// Whether the text protocol reads every column of `meta` exactly as the binary one does.
pub(super) fn text_is_exact(meta: &TableMeta) -> bool {
    !meta.columns.iter().any(|c| {
        matches!(
            c.ty.kind,
            rewind_undo_log::TypeKind::Float | rewind_undo_log::TypeKind::Double
        )
    })
}

impl StatementRun<'_> {
    /// Runs the write `sql` with `params`, the first `types.len()` of them the client's.
    pub(super) async fn write(
        &mut self,
        sql: &str,
        params: Vec<Value>,
        types: &[ParamType],
    ) -> Result<wire::Ok, mysql_async::Error> {
        let stmt = self.stmts.get(self.conn, sql).await?;
        let stamp = self.before_request();
        let r = crate::params::exec_drop(self.conn, &stmt, params, types).await;
        self.answered(stamp, r.is_ok());
        r?;
        Ok(wire::Ok::from_backend(self.conn))
    }
}

impl StatementRun<'_> {
    /// A stamp for a request of a transaction that holds table definitions confirmed (its
    /// answer proves them held; see `at::definitions`).
    fn before_request(&self) -> Option<u64> {
        self.checks
            .as_ref()
            .and_then(|c| c.before_request(&self.shared.definitions))
    }

    /// The request stamped `stamp` was answered (`ok`) or failed.
    fn answered(&mut self, stamp: Option<u64>, ok: bool) {
        let in_trans = wire::in_transaction(self.conn);
        if let Some(checks) = self.checks.as_deref_mut() {
            if ok && in_trans {
                checks.answered(&self.shared.definitions, stamp);
            } else {
                checks.lost();
            }
        }
    }
}

impl StatementRun<'_> {
    /// Reads rows by primary key in statements of at most [`MAX_STATEMENT_PARAMS`] parameters.
    pub(super) async fn image_by_keys(
        &mut self,
        meta: &TableMeta,
        keys: &[Vec<Value>],
    ) -> Result<RowImage, ProxyError> {
        self.read_by_keys(meta, keys, false).await
    }
}

impl StatementRun<'_> {
    /// [`image_by_keys`], optionally as a locking (current) read.
    pub(super) async fn read_by_keys(
        &mut self,
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
            let found = self.rows(&sql, chunk.concat(), &[]).await?;
            let part = RowImage::from_image(meta, &found).map_err(|e| {
                ProxyError::BranchRolledBack(format!("after image of {}: {e}", meta.name))
            })?;
            image.rows.extend(part.rows);
        }
        Ok(image)
    }
}

pub(super) fn keys_of(meta: &TableMeta, image: &RowImage) -> Result<Vec<Vec<Value>>, UndoError> {
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
pub(super) const STALE_RETRIES: usize = 3;

impl StatementRun<'_> {
    /// Runs one DML statement with its images. `params` are the statement's parameters (empty
    /// for the text protocol). Returns the undo items (none when no row was touched; one per
    /// written table, an update and an insert item for ON DUPLICATE KEY UPDATE, a delete and
    /// an insert item for REPLACE or an UPDATE of key columns) and the OK the client gets.
    ///
    /// Before anything is written, every written table's definition is confirmed against the
    /// metadata the statement was planned with; when it changed (DDL anywhere), the metadata
    /// is reloaded and the statement planned again.
    pub async fn run_dml(
        &mut self,
        dml: &Dml,
        original: Original<'_>,
        params: Vec<Value>,
    ) -> Result<(Vec<UndoItem>, wire::Ok), Failure> {
        let mut changed = Vec::new();
        for _ in 0..STALE_RETRIES {
            let r = self.run_dml_once(dml, original, params.clone()).await;
            if let Some(checks) = self.checks.as_deref_mut() {
                match &r {
                    Ok(_) => checks.stamp_pending(&self.shared.definitions),
                    Err(_) => checks.statement_failed(),
                }
            }
            match r {
                Err(Failure::Stale(tables)) => {
                    reload(self.shared, &tables);
                    changed = tables;
                }
                other => return other,
            }
        }
        Err(Failure::Clean(kept_changing(&changed)))
    }
}

/// Forgets the metadata of tables whose definition changed.
pub(super) fn reload(shared: &Shared, tables: &[TableName]) {
    for t in tables {
        tracing::info!(table = %t, "table definition changed; its metadata is reloaded");
        shared.metas.invalidate(t);
    }
}

pub(super) fn kept_changing(tables: &[TableName]) -> ProxyError {
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

impl StatementRun<'_> {
    pub(super) async fn run_dml_once(
        &mut self,
        dml: &Dml,
        original: Original<'_>,
        params: Vec<Value>,
    ) -> Result<(Vec<UndoItem>, wire::Ok), Failure> {
        match dml {
            Dml::Update(plan) => self.update(plan, params).await,
            Dml::UpdateJoin(plan) => self.update_join(plan, params).await,
            Dml::Delete(plan) => self
                .delete(plan, params)
                .await
                .map(|(item, ok)| (item.into_iter().collect(), ok)),
            Dml::DeleteJoin(plan) => self.delete_join(plan, params).await,
            Dml::Insert(plan) if plan.select.is_some() => {
                self.insert_select(plan, original, params).await
            }
            Dml::Insert(plan) if plan.on_duplicate.is_some() || plan.replace || plan.ignore => {
                self.upsert(plan, original, params).await
            }
            Dml::Insert(plan) => self
                .insert(plan, original, params)
                .await
                .map(|(item, ok)| (item.into_iter().collect(), ok)),
        }
    }
}

impl StatementRun<'_> {
    /// The table's definition now, as [`rewind_undo_log::MetaCache::definition_query`] reads
    /// it. Reading it also takes the table's metadata lock for the rest of the local
    /// transaction.
    pub(super) async fn definition(&mut self, name: &TableName) -> Result<String, Failure> {
        match self
            .shared
            .metas
            .definition(self.conn, &name.schema, &name.table)
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
}

impl StatementRun<'_> {
    /// Confirms that `metas` still describe their tables; [`Failure::Stale`] names those that
    /// changed. Called before a statement writes (after its before image locked the rows, so
    /// no new child row of a cascading foreign key can appear under them either).
    ///
    /// In a global transaction (see `at::definitions`): a table this transaction confirmed
    /// already needs nothing; one whose definition another transaction holds confirmed is
    /// written without the query and settled at commit; any other is read now, and held
    /// confirmed from then on.
    pub(super) async fn confirm(&mut self, metas: &[&TableMeta]) -> Result<(), Failure> {
        let mut stale: Vec<TableName> = Vec::new();
        let witness = self.shared.definitions.clone();
        for meta in metas {
            if stale.contains(&meta.name) {
                continue;
            }
            if let Some(checks) = self.checks.as_deref_mut() {
                if checks.confirmed(meta) {
                    continue;
                }
                self.shared.sentinels.write_on(&meta.name);
                if witness.held(meta) {
                    checks.defer(meta);
                    witness.counts.skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
            witness.counts.queried.fetch_add(1, Ordering::Relaxed);
            if self.definition(&meta.name).await? != meta.definition {
                stale.push(meta.name.clone());
            } else if let Some(checks) = self.checks.as_deref_mut() {
                checks.hold(&witness, &meta.name, &meta.definition);
            }
        }
        if stale.is_empty() {
            Ok(())
        } else {
            Err(Failure::Stale(stale))
        }
    }
}

impl StatementRun<'_> {
    /// A statement failed before writing in a way stale metadata explains (a column the
    /// metadata lacks, or an image SELECT naming a column that is gone): [`Failure::Stale`]
    /// when the definitions changed, the failure itself otherwise.
    pub(super) async fn stale_or(&mut self, metas: &[&TableMeta], failure: Failure) -> Failure {
        match self.confirm(metas).await {
            Ok(()) => failure,
            Err(f) => f,
        }
    }
}

impl StatementRun<'_> {
    /// A planning error met before anything was written: a column the metadata does not know
    /// may be a column added since it was loaded.
    pub(super) async fn planning(&mut self, metas: &[&TableMeta], e: UndoError) -> Failure {
        let missing = matches!(e, UndoError::MissingColumn(_));
        let name = metas
            .first()
            .map(|m| m.name.to_string())
            .unwrap_or_default();
        let f = Failure::Clean(refused(e, &name));
        if missing {
            self.stale_or(metas, f).await
        } else {
            f
        }
    }
}

impl StatementRun<'_> {
    /// [`rows`] for an image read before anything was written: an unknown-column error is
    /// checked against the table's definition first.
    pub(super) async fn image_rows(
        &mut self,
        metas: &[&TableMeta],
        sql: &str,
        params: Vec<Value>,
        types: &[ParamType],
    ) -> Result<Vec<mysql_async::Row>, Failure> {
        match self.rows_of(metas, sql, params, types).await {
            Ok(r) => Ok(r),
            Err(mysql_async::Error::Server(e)) if e.code == 1054 => {
                let f = Failure::Clean(mysql_async::Error::Server(e).into());
                Err(self.stale_or(metas, f).await)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Keeps the first row per primary key (a join repeats a row once per partner).
pub(super) fn dedup_by_key(meta: &TableMeta, image: &mut RowImage) -> Result<(), UndoError> {
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

impl StatementRun<'_> {
    /// Runs the client's own statement (INSERT-like statements run as written) and returns
    /// its OK.
    pub(super) async fn run_original(
        &mut self,
        original: Original<'_>,
        params: &[Value],
    ) -> Result<wire::Ok, mysql_async::Error> {
        let stamp = self.before_request();
        let r = match original {
            Original::Text(sql) => self.conn.query_drop(sql).await,
            Original::Prepared(stmt) => {
                crate::params::exec_drop(self.conn, stmt, params.to_vec(), self.types).await
            }
        };
        self.answered(stamp, r.is_ok());
        r?;
        Ok(wire::Ok::from_backend(self.conn))
    }
}

impl StatementRun<'_> {
    /// Runs a key-restricted write over `keys` in chunks of `per` keys (one statement when
    /// they fit, which is the common case). A failure of the first statement is a clean
    /// statement failure; a later one leaves earlier chunks written, so it poisons.
    pub(super) async fn write_in_chunks(
        &mut self,
        keys: &[Vec<Value>],
        per: usize,
        sql_for: impl Fn(usize) -> String,
        lead_params: &[Value],
        lead_types: &[ParamType],
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
            let ok = match self.write(&sql_for(chunk.len()), params, lead_types).await {
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
}

/// `Rows matched: M  Changed: C  Warnings: W` of an UPDATE's OK packet.
pub(super) fn parse_update_info(info: &[u8]) -> Option<(u64, u64, u64)> {
    let text = std::str::from_utf8(info).ok()?;
    let mut nums = text
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u64>().ok());
    Some((nums.next()??, nums.next()??, nums.next()??))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_info_is_parsed() {
        assert_eq!(
            parse_update_info(b"Rows matched: 3  Changed: 2  Warnings: 1"),
            Some((3, 2, 1))
        );
        assert_eq!(parse_update_info(b""), None);
    }
}
