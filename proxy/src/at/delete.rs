//! DELETE with its images: single-table and multi-table.

use crate::at::sql::{DeletePlan, JoinDeletePlan};
use mysql_async::Value;
use rewind_undo_log::undo_sql::MAX_STATEMENT_PARAMS;
use rewind_undo_log::{RowImage, SqlKind, TableMeta, TableSummary, UndoItem};

use crate::error::ProxyError;
use crate::wire;

use super::statement::*;

impl StatementRun<'_> {
    /// `DELETE t1, t2 FROM t1 JOIN t2 …`: one before image per target table (the join's own
    /// `FOR UPDATE` locks every joined row), then the DELETE narrowed to exactly those keys.
    pub(super) async fn delete_join(
        &mut self,
        plan: &JoinDeletePlan,
        params: Vec<Value>,
    ) -> Result<(Vec<UndoItem>, wire::Ok), Failure> {
        let mut metas = Vec::with_capacity(plan.tables.len());
        for t in &plan.tables {
            metas.push(self.meta(&t.table).await.map_err(Failure::Clean)?);
        }
        let targets: Vec<&TableMeta> = plan.targets.iter().map(|t| &*metas[*t]).collect();
        for (i, meta) in targets.iter().enumerate() {
            if targets[..i].iter().any(|m| m.name == meta.name) {
                return Err(Failure::Clean(ProxyError::AtRefused(format!(
                    "multi-table DELETE naming table {} twice as a target",
                    meta.name
                ))));
            }
            if let Some(e) = self
                .outbox_refusal(&meta.name, false)
                .or_else(|| super::refusals::table(meta, SqlKind::Delete, &[]))
            {
                return Err(Failure::Clean(e));
            }
        }
        let mut befores = Vec::with_capacity(targets.len());
        for (t, meta) in plan.targets.iter().zip(&targets) {
            let name = meta.name.to_string();
            let sql = plan.before_image_sql(*t, meta);
            let found = self
                .image_rows(&targets, &sql, params.clone(), self.types)
                .await?;
            let mut image = RowImage::from_image(meta, &found)
                .map_err(|e| Failure::Clean(refused(e, &name)))?;
            dedup_by_key(meta, &mut image).map_err(|e| Failure::Clean(refused(e, &name)))?;
            befores.push(image);
        }
        self.confirm(&targets).await?;
        let mut keyed = Vec::with_capacity(targets.len());
        let mut write_params = params;
        let mut total = 0u64;
        for ((t, meta), before) in plan.targets.iter().zip(&targets).zip(&befores) {
            let keys = keys_of(meta, before)
                .map_err(|e| Failure::Clean(refused(e, "multi-table DELETE")))?;
            total += keys.len() as u64;
            keyed.push((*t, *meta, keys.len()));
            write_params.extend(keys.concat());
        }
        if write_params.len() > MAX_STATEMENT_PARAMS {
            return Err(Failure::Clean(ProxyError::AtRefused(
                "multi-table DELETE of more rows than one statement can name by key (split it)"
                    .into(),
            )));
        }
        let ok = self
            .write(&plan.by_keys_sql(&keyed), write_params, self.types)
            .await?;
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
}

impl StatementRun<'_> {
    pub(super) async fn delete(
        &mut self,
        plan: &DeletePlan,
        params: Vec<Value>,
    ) -> Result<(Option<UndoItem>, wire::Ok), Failure> {
        let meta = self.meta(&plan.table).await.map_err(Failure::Clean)?;
        let name = meta.name.to_string();
        if let Some(e) = self
            .outbox_refusal(&meta.name, false)
            .or_else(|| super::refusals::table(&meta, SqlKind::Delete, &[]))
        {
            return Err(Failure::Clean(e));
        }
        let sql = plan.before_image_sql(&meta);
        // Sent as text with a condition that pins the whole (integer) primary key: image
        // and write in one query (see `update`).
        let pinned = (params.is_empty() && text_is_exact(&meta))
            .then(|| plan.pinned_key(&meta))
            .flatten()
            .filter(|_| self.definition_held(&meta))
            .and_then(|key| {
                plan.by_literal_keys_sql(&meta, std::slice::from_ref(&key))
                    .zip(Some(key))
            });
        if let Some((write, key)) = pinned {
            let (before, ok, _) = self.pinned_write(&meta, &key, &sql, &write, None).await?;
            return Ok((item(&meta, before), ok));
        }
        let found = self.image_rows(&[&meta], &sql, params, self.types).await?;
        let before =
            RowImage::from_image(&meta, &found).map_err(|e| Failure::Clean(refused(e, &name)))?;
        let keys = keys_of(&meta, &before).map_err(|e| Failure::Clean(refused(e, &name)))?;
        self.confirm(&[&meta]).await?;
        let per = (MAX_STATEMENT_PARAMS / meta.primary_key.len().max(1)).max(1);
        let ok = self
            .write_in_chunks(&keys, per, |n| plan.by_keys_sql(&meta, n), &[], &[])
            .await?;
        if ok.affected_rows != keys.len() as u64 {
            return Err(Failure::Poisoned(ProxyError::BranchRolledBack(format!(
                "DELETE on {name}: {} rows locked but {} deleted",
                keys.len(),
                ok.affected_rows
            ))));
        }
        Ok((item(&meta, before), ok))
    }
}

/// The undo item of a single-table DELETE: none when no row went.
fn item(meta: &TableMeta, before: RowImage) -> Option<UndoItem> {
    (!before.is_empty()).then(|| UndoItem {
        kind: SqlKind::Delete,
        table: TableSummary::from(meta),
        set_columns: Vec::new(),
        after: RowImage::empty(meta.name.clone()),
        before,
    })
}
