//! INSERT with the images of what it wrote: plain, ON DUPLICATE KEY UPDATE, REPLACE,
//! IGNORE, and INSERT … SELECT.

use crate::at::sql::{AutoIncrement, InsertPlan};
use mysql_async::prelude::Queryable;
use mysql_async::Value;
use rewind_undo_log::{RowImage, SqlKind, TableSummary, UndoItem};

use crate::error::ProxyError;
use crate::wire;

use super::statement::*;

impl StatementRun<'_> {
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
    pub(super) async fn insert_select(
        &mut self,
        plan: &InsertPlan,
        original: Original<'_>,
        params: Vec<Value>,
    ) -> Result<(Vec<UndoItem>, wire::Ok), Failure> {
        let meta = self.insert_target(plan).await?;
        let name = meta.name.to_string();
        let positions = match plan.select_key_positions(&meta) {
            Ok(p) => p,
            Err(e) => return Err(self.planning(&[&meta], e).await),
        };
        let select = plan.select.as_deref().expect("an INSERT … SELECT plan");
        let settings: Option<(u64, String, u64)> = self
            .conn
            .query_first(
                "SELECT @@auto_increment_increment, @@sql_mode, @@innodb_autoinc_lock_mode",
            )
            .await?;
        let (increment, mode, lock_mode) = settings.unwrap_or((1, String::new(), 1));
        let increment = increment.max(1);
        let zero_is_value = mode.to_ascii_uppercase().contains("NO_AUTO_VALUE_ON_ZERO");
        let auto = meta.auto_increment_column().map(|c| c.name.clone());
        // `Some(keys)`: every key comes from the SELECT; `None`: the server generates them.
        let mut supplied: Option<Vec<Vec<Value>>> = None;
        if positions.iter().all(Option::is_some) {
            let found = self.rows(select, params.clone(), self.types).await?;
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
            Some(keys) => self
                .read_by_keys(&meta, keys, true)
                .await
                .map_err(Failure::Clean)?,
            None => RowImage::empty(meta.name.clone()),
        };
        self.confirm(&[&meta]).await?;
        let ok = self.run_original(original, &params).await?;
        let poisoned = |why: String| {
            Failure::Poisoned(ProxyError::BranchRolledBack(format!(
                "the rows INSERT … SELECT wrote into {name} could not be identified ({why})"
            )))
        };
        let inserted = match &supplied {
            Some(keys) => {
                let now = self
                    .read_by_keys(&meta, keys, true)
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
                self.image_by_keys(&meta, &keys)
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
}

impl StatementRun<'_> {
    /// The INSERTs that meet existing rows: `INSERT … ON DUPLICATE KEY UPDATE` (updates the
    /// rows it hits), `REPLACE` (deletes them first) and `INSERT IGNORE` (skips the rows that
    /// hit one). Lock and image every row any VALUES row can collide with (by primary key or
    /// unique key), run the statement, read the same keys again (a locking read: the latest
    /// rows): rows that existed are what ON DUPLICATE KEY UPDATE updated or what REPLACE
    /// deleted; the others are the rows the statement inserted.
    pub(super) async fn upsert(
        &mut self,
        plan: &InsertPlan,
        original: Original<'_>,
        params: Vec<Value>,
    ) -> Result<(Vec<UndoItem>, wire::Ok), Failure> {
        let meta = self.meta(&plan.table).await.map_err(Failure::Clean)?;
        if let Some(e) = self.outbox_refusal(&meta.name, false) {
            return Err(Failure::Clean(e));
        }
        let name = meta.name.to_string();
        let set_columns = match plan.on_duplicate_columns_in(&meta) {
            Ok(c) => c,
            Err(e) => return Err(self.planning(&[&meta], e).await),
        };
        let table = |kind, cols: &[String]| super::refusals::table(&meta, kind, cols);
        let refusal = if plan.replace {
            table(SqlKind::Insert, &[]).or_else(|| table(SqlKind::Delete, &[]))
        } else {
            table(SqlKind::Insert, &[]).or_else(|| table(SqlKind::Update, &set_columns))
        };
        if let Some(e) = refusal {
            return Err(Failure::Clean(e));
        }
        let no_auto_value_on_zero = if meta.auto_increment_column().is_some() {
            let mode: Option<String> = self.conn.query_first("SELECT @@sql_mode").await?;
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
                return Err(self.stale_or(&[&meta], f).await);
            }
        };
        if keys.is_empty() {
            // Generated keys and no unique key: nothing can collide, a plain INSERT (which
            // also checks that every VALUES row landed, so an IGNOREd row cannot go unseen).
            return self
                .insert(plan, original, params)
                .await
                .map(|(item, ok)| (item.into_iter().collect(), ok));
        }
        let (locking, key_params) = plan
            .conflict_image_sql(&meta, &keys, true)
            .map_err(|e| Failure::Clean(refused(e, &name)))?;
        let found = self
            .image_rows(&[&meta], &locking, key_params.clone(), &[])
            .await?;
        let before =
            RowImage::from_image(&meta, &found).map_err(|e| Failure::Clean(refused(e, &name)))?;
        self.confirm(&[&meta]).await?;
        let ok = self.run_original(original, &params).await?;
        let statement = plan.statement();
        let poisoned = |why: String| {
            Failure::Poisoned(ProxyError::BranchRolledBack(format!(
                "the rows {statement} wrote into {name} could not be identified ({why})"
            )))
        };
        let found = self
            .rows(&locking, key_params, &[])
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
            if inserted.rows.len() as u64 != ok.affected_rows
                || kept.rows.len() != before.rows.len()
            {
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
}

impl StatementRun<'_> {
    pub(super) async fn insert(
        &mut self,
        plan: &InsertPlan,
        original: Original<'_>,
        params: Vec<Value>,
    ) -> Result<(Option<UndoItem>, wire::Ok), Failure> {
        let meta = self.insert_target(plan).await?;
        let name = meta.name.to_string();
        let (increment, no_auto_value_on_zero) = if meta.auto_increment_column().is_some() {
            let row: Option<(u64, String)> = self
                .conn
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
            return Err(self.stale_or(&[&meta], f).await);
        }
        self.confirm(&[&meta]).await?;
        let ok = self.run_original(original, &params).await?;
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
        if let (Some(xid), true) = (self.xid, self.shared.outbox_table.is(&meta.name)) {
            // The relay holds these messages until the global transaction commits; the
            // after image below already carries the XID, so a rollback finds them intact.
            self.hold_outbox(xid, &keys)
                .await
                .map_err(|e| poisoned(e.to_string()))?;
        }
        let after = self
            .image_by_keys(&meta, &keys)
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
}

impl StatementRun<'_> {
    /// The table a plain INSERT or INSERT … SELECT writes, refused when AT could not undo
    /// an insert into it (triggers, engine).
    async fn insert_target(
        &mut self,
        plan: &InsertPlan,
    ) -> Result<std::sync::Arc<rewind_undo_log::TableMeta>, Failure> {
        let meta = self.meta(&plan.table).await.map_err(Failure::Clean)?;
        let plain = plan.select.is_none() && plan.on_duplicate.is_none() && !plan.replace;
        if let Some(e) = self.outbox_refusal(&meta.name, plain && !plan.ignore) {
            return Err(Failure::Clean(e));
        }
        match super::refusals::table(&meta, SqlKind::Insert, &[]) {
            Some(e) => Err(Failure::Clean(e)),
            None => Ok(meta),
        }
    }

    /// Only a plain INSERT writes the outbox inside a global transaction: the relay owns
    /// every other change to its rows, and rows of other shapes could not be held.
    pub(super) fn outbox_refusal(
        &self,
        table: &rewind_undo_log::TableName,
        plain_insert: bool,
    ) -> Option<ProxyError> {
        (self.xid.is_some() && !plain_insert && self.shared.outbox_table.is(table)).then(|| {
            ProxyError::AtRefused(format!(
                "writing {table} other than by a plain INSERT … VALUES in a global transaction \
                 (the relay owns its rows once written)"
            ))
        })
    }

    /// Marks outbox rows an INSERT under `xid` wrote as held by it.
    async fn hold_outbox(&mut self, xid: &str, keys: &[Vec<Value>]) -> Result<(), ProxyError> {
        let mut params = Vec::with_capacity(keys.len() + 1);
        params.push(Value::from(xid));
        params.extend(keys.iter().filter_map(|k| k.first().cloned()));
        // Through the session's statement cache: a statement prepared on the client's
        // backend connection by SQL text alone is never closed (the pool's cache is off).
        let sql = self.shared.outbox_table.hold(keys.len());
        let stmt = self.stmts.get(self.conn, &sql).await?;
        self.conn
            .exec_drop(&stmt, mysql_async::Params::Positional(params))
            .await?;
        Ok(())
    }
}
