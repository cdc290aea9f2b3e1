//! UPDATE with its images: single-table (also of primary-key columns) and UPDATE … JOIN.

use crate::at::sql::{JoinUpdatePlan, UpdatePlan};
use mysql_async::Value;
use rewind_undo_log::undo_sql::MAX_STATEMENT_PARAMS;
use rewind_undo_log::{RowImage, SqlKind, TableMeta, TableSummary, UndoItem};

use crate::error::ProxyError;
use crate::params::slice;
use crate::wire;

use super::statement::*;

impl StatementRun<'_> {
    /// `UPDATE t1 JOIN t2 … SET …`: one before image per written table (the join's own
    /// `FOR UPDATE` locks every joined row), the UPDATE with its condition narrowed to those
    /// keys, then one after image per written table.
    pub(super) async fn update_join(
        &mut self,
        plan: &JoinUpdatePlan,
        params: Vec<Value>,
    ) -> Result<(Vec<UndoItem>, wire::Ok), Failure> {
        let mut metas = Vec::with_capacity(plan.tables.len());
        for t in &plan.tables {
            metas.push(self.meta(&t.table).await.map_err(Failure::Clean)?);
        }
        let written = match plan.written(&metas) {
            Ok(w) => w,
            Err(e) => {
                let all: Vec<&TableMeta> = metas.iter().map(|m| &**m).collect();
                return Err(self.planning(&all, e).await);
            }
        };
        for (t, cols) in &written {
            if let Some(e) = self
                .outbox_refusal(&metas[*t].name, false)
                .or_else(|| super::refusals::table(&metas[*t], SqlKind::Update, cols))
            {
                return Err(Failure::Clean(e));
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
        let mut image_types = slice(self.types, ..plan.from_params).to_vec();
        image_types.extend_from_slice(slice(self.types, plan.from_params + plan.set_params..));
        let written_metas: Vec<&TableMeta> = written.iter().map(|(t, _)| &*metas[*t]).collect();
        let mut befores = Vec::with_capacity(written.len());
        for (t, _) in &written {
            let meta = &metas[*t];
            let name = meta.name.to_string();
            let sql = plan.before_image_sql(*t, meta);
            let found = self
                .image_rows(&written_metas, &sql, image_params.clone(), &image_types)
                .await?;
            let mut image = RowImage::from_image(meta, &found)
                .map_err(|e| Failure::Clean(refused(e, &name)))?;
            dedup_by_key(meta, &mut image).map_err(|e| Failure::Clean(refused(e, &name)))?;
            befores.push(image);
        }
        self.confirm(&written_metas).await?;
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
                "multi-table UPDATE of more rows than one statement can name by key (split it)"
                    .into(),
            )));
        }
        let ok = self
            .write(&plan.by_keys_sql(&keyed), write_params, self.types)
            .await?;
        let mut items = Vec::with_capacity(written.len());
        for ((t, set_columns), before) in written.into_iter().zip(befores) {
            let meta = &metas[t];
            let keys =
                keys_of(meta, &before).map_err(|e| Failure::Poisoned(refused(e, "UPDATE")))?;
            let after = self
                .image_by_keys(meta, &keys)
                .await
                .map_err(Failure::Poisoned)?;
            after_holds_every_row(meta, &before, &after)?;
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
}

impl StatementRun<'_> {
    /// `plan`'s UPDATE restricted to the locked `keys`, the SET clause's parameters
    /// `set_params` first. A statement the client sent as `text` (no parameters at all)
    /// carries its values in its SQL, so this is a text no prepared statement would be
    /// reused for: on a table with an integer primary key the keys are written in and it
    /// runs as text, without a backend prepare. Otherwise prepared, in chunks of at most
    /// [`MAX_STATEMENT_PARAMS`] parameters.
    pub(super) async fn update_by_keys(
        &mut self,
        plan: &UpdatePlan,
        meta: &TableMeta,
        keys: &[Vec<Value>],
        set_params: &[Value],
        set_types: &[ParamType],
        text: bool,
    ) -> Result<wire::Ok, Failure> {
        let per = ((MAX_STATEMENT_PARAMS - set_params.len().min(MAX_STATEMENT_PARAMS - 1))
            / meta.primary_key.len().max(1))
        .max(1);
        let literal = if text && keys.len() <= per {
            plan.by_literal_keys_sql(meta, keys)
        } else {
            None
        };
        match literal {
            Some(sql) => self
                .write_text(&sql)
                .await
                .map_err(|e| Failure::Clean(e.into())),
            None => {
                self.write_in_chunks(
                    keys,
                    per,
                    |n| plan.by_keys_sql(meta, n),
                    set_params,
                    set_types,
                )
                .await
            }
        }
    }

    pub(super) async fn update(
        &mut self,
        plan: &UpdatePlan,
        mut params: Vec<Value>,
    ) -> Result<(Vec<UndoItem>, wire::Ok), Failure> {
        let meta = self.meta(&plan.table).await.map_err(Failure::Clean)?;
        let name = meta.name.to_string();
        let set_columns = match plan.set_columns_in(&meta) {
            Ok(c) => c,
            Err(e) => return Err(self.planning(&[&meta], e).await),
        };
        if let Some(e) = self
            .outbox_refusal(&meta.name, false)
            .or_else(|| super::refusals::table(&meta, SqlKind::Update, &set_columns))
        {
            return Err(Failure::Clean(e));
        }
        if params.len() < plan.set_params {
            return Err(Failure::Clean(ProxyError::Malformed(
                "missing statement parameters",
            )));
        }
        let where_params = params.split_off(plan.set_params);
        let set_params = params;
        // Sent as text, the statement's values are in its SQL: its image read and its
        // narrowed write are texts no prepared statement would be reused for.
        let text = set_params.is_empty() && where_params.is_empty();
        let before_sql = plan
            .before_image_sql(&meta)
            .map_err(|e| Failure::Clean(refused(e, &name)))?;
        let types = self.types;
        // Sent as text with a condition that pins the whole (integer) primary key: at most
        // that one row, so image, write and after image go in one query.
        let pinned = (text && text_is_exact(&meta) && !plan.changes_key(&meta))
            .then(|| plan.pinned_key(&meta))
            .flatten()
            .filter(|_| self.definition_held(&meta))
            .and_then(|key| {
                let keys = [key];
                Some((
                    plan.by_literal_keys_sql(&meta, &keys)?,
                    crate::at::sql::rows_by_literal_keys_sql(&meta, &keys)?,
                    keys,
                ))
            });
        if let Some((write, read, keys)) = pinned {
            let (before, ok, after) = self
                .pinned_write(&meta, &keys[0], &before_sql, &write, Some(&read))
                .await?;
            return items(&meta, set_columns, before, after, false, ok);
        }
        let found = self
            .image_rows(
                &[&meta],
                &before_sql,
                where_params,
                slice(types, plan.set_params..),
            )
            .await?;
        let before =
            RowImage::from_image(&meta, &found).map_err(|e| Failure::Clean(refused(e, &name)))?;
        let keys = keys_of(&meta, &before).map_err(|e| Failure::Clean(refused(e, &name)))?;
        self.confirm(&[&meta]).await?;
        // An UPDATE of key columns: the rows are found afterwards by their new keys, computed
        // now by the SET clause's own expressions from the locked rows.
        let new_keys = if plan.changes_key(&meta) && !keys.is_empty() {
            let sql = plan
                .new_keys_sql(&meta, keys.len())
                .map_err(|e| Failure::Clean(refused(e, &name)))?
                .expect("a key column is assigned");
            let (key_params, key_types) = plan
                .new_keys_params(&meta, &set_params, slice(types, ..plan.set_params), &keys)
                .map_err(|e| Failure::Clean(refused(e, &name)))?;
            if key_params.len() > MAX_STATEMENT_PARAMS {
                return Err(Failure::Clean(ProxyError::AtRefused(
                    "UPDATE of primary-key columns on more rows than one statement can name by \
                 key (split it)"
                        .into(),
                )));
            }
            let width = meta.primary_key.len();
            let found = self.rows(&sql, key_params, &key_types).await?;
            let mut out = Vec::with_capacity(found.len());
            for row in found {
                let mut values = row.unwrap();
                out.push(values.split_off(width));
            }
            Some(out)
        } else {
            None
        };

        // Sent as text, with its keys written in and every column read exactly as text: the
        // write and its after image go in one query.
        let together = (text
            && new_keys.is_none()
            && keys.len() <= MAX_STATEMENT_PARAMS / meta.primary_key.len().max(1)
            && text_is_exact(&meta))
        .then(|| {
            plan.by_literal_keys_sql(&meta, &keys)
                .zip(crate::at::sql::rows_by_literal_keys_sql(&meta, &keys))
        })
        .flatten();
        let (ok, after) = match together {
            Some((write, read)) => {
                let (ok, found) = self.write_then_read_text(&write, &read).await?;
                let after = RowImage::from_image(&meta, &found).map_err(|e| {
                    Failure::Poisoned(ProxyError::BranchRolledBack(format!(
                        "after image of {name}: {e}"
                    )))
                })?;
                (ok, after)
            }
            None => {
                let ok = self
                    .update_by_keys(
                        plan,
                        &meta,
                        &keys,
                        &set_params,
                        slice(types, ..plan.set_params),
                        text,
                    )
                    .await?;
                let after = self
                    .image_by_keys(&meta, new_keys.as_deref().unwrap_or(&keys))
                    .await
                    .map_err(Failure::Poisoned)?;
                (ok, after)
            }
        };
        items(&meta, set_columns, before, after, new_keys.is_some(), ok)
    }
}

/// The undo items of a single-table UPDATE from its images (`moved`: rows found afterwards
/// by new keys); refused (poisoned) unless the after image holds every locked row.
fn items(
    meta: &TableMeta,
    set_columns: Vec<String>,
    before: RowImage,
    after: RowImage,
    moved: bool,
    ok: wire::Ok,
) -> Result<(Vec<UndoItem>, wire::Ok), Failure> {
    after_holds_every_row(meta, &before, &after)?;
    if before.is_empty() {
        return Ok((Vec::new(), ok));
    }
    let table = TableSummary::from(meta);
    let items = if moved {
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

/// An UPDATE's after image must hold every row its before image locked; otherwise the
/// write is not what the undo would record, and the branch is poisoned.
fn after_holds_every_row(
    meta: &TableMeta,
    before: &RowImage,
    after: &RowImage,
) -> Result<(), Failure> {
    if after.rows.len() == before.rows.len() {
        return Ok(());
    }
    Err(Failure::Poisoned(ProxyError::BranchRolledBack(format!(
        "UPDATE on {}: {} rows locked but {} found after the write",
        meta.name,
        before.rows.len(),
        after.rows.len()
    ))))
}
