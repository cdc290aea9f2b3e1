//! Write isolation's slow path: an UPDATE or DELETE without an XID on a table that holds
//! global locks waits for its rows' locks, then writes exactly those rows.

use crate::at::sql::{self as analyze, Dml};
use mysql_async::Value;
use rewind_undo_log::undo_sql::MAX_STATEMENT_PARAMS;
use rewind_undo_log::{RowImage, TableMeta};

use crate::error::ProxyError;
use crate::wire;

use super::locks::*;
use super::statement::*;
use crate::params::slice;

impl StatementRun<'_> {
    /// Write isolation's slow path: an UPDATE or DELETE without an XID on a table holding
    /// global locks. Locks its rows locally (the statement's own predicate under `FOR
    /// UPDATE`), waits until no global transaction holds any of them, then writes exactly
    /// those rows (the key-restricted form, as in phase one). No undo is recorded: the write
    /// belongs to no global transaction.
    pub async fn isolated_write(
        &mut self,
        dml: &Dml,
        params: Vec<Value>,
    ) -> Result<wire::Ok, Failure> {
        let mut changed = Vec::new();
        for _ in 0..STALE_RETRIES {
            match self.isolated_write_once(dml, params.clone()).await {
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

impl StatementRun<'_> {
    pub(super) async fn isolated_write_once(
        &mut self,
        dml: &Dml,
        mut params: Vec<Value>,
    ) -> Result<wire::Ok, Failure> {
        let join_metas = |tables: &[analyze::JoinTable]| {
            tables.iter().map(|t| t.table.clone()).collect::<Vec<_>>()
        };
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
            metas.push(self.meta(r).await.map_err(Failure::Clean)?);
        }
        // Which tables' rows are written (and so locked and checked), their image SELECTs,
        // the parameters those take, and the parameters leading the key-restricted write.
        let (written, image_sqls, image_params, write_params_lead): (
            Vec<usize>,
            Vec<String>,
            _,
            _,
        ) = match dml {
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
        // The client's types of those parameters (see `crate::params`).
        let all = self.types;
        let (image_types, lead_types): (Vec<ParamType>, &[ParamType]) = match dml {
            Dml::Update(plan) => (
                slice(all, plan.set_params..).to_vec(),
                slice(all, ..plan.set_params),
            ),
            Dml::Delete(_) => (all.to_vec(), &[]),
            Dml::UpdateJoin(plan) => {
                let mut t = slice(all, ..plan.from_params).to_vec();
                t.extend_from_slice(slice(all, plan.from_params + plan.set_params..));
                (t, all)
            }
            Dml::DeleteJoin(_) => (all.to_vec(), all),
            Dml::Insert(_) => unreachable!("refused above"),
        };
        let checked: Vec<&TableMeta> = written.iter().map(|t| &*metas[*t]).collect();
        let mut keys_by_table = Vec::with_capacity(written.len());
        let mut lock_keys = Vec::new();
        for (meta, sql) in checked.iter().zip(&image_sqls) {
            let name = meta.name.to_string();
            let found = self
                .image_rows(&checked, sql, image_params.clone(), &image_types)
                .await?;
            let mut image = RowImage::from_image(meta, &found)
                .map_err(|e| Failure::Clean(refused(e, &name)))?;
            dedup_by_key(meta, &mut image).map_err(|e| Failure::Clean(refused(e, &name)))?;
            for row in &image.rows {
                let k = rewind_undo_log::LockKey::for_row(&meta.name, &meta.primary_key, row)
                    .map_err(|e| Failure::Clean(refused(e, &name)))?;
                lock_keys.push(proto_key(self.shared, k));
            }
            keys_by_table
                .push(keys_of(meta, &image).map_err(|e| Failure::Clean(refused(e, &name)))?);
        }
        // The keys checked must be the table's keys now, or the check would look at other rows.
        self.confirm(&checked).await?;
        wait_until_unlocked(self.shared, &lock_keys, None)
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
                // Sent as text: no parameters at all.
                let text = image_params.is_empty() && write_params_lead.is_empty();
                self.update_by_keys(
                    plan,
                    &metas[0],
                    &keys_by_table[0],
                    &write_params_lead,
                    lead_types,
                    text,
                )
                .await
            }
            Dml::Delete(plan) => {
                let meta = &metas[0];
                let per = (MAX_STATEMENT_PARAMS / meta.primary_key.len().max(1)).max(1);
                self.write_in_chunks(
                    &keys_by_table[0],
                    per,
                    |n| plan.by_keys_sql(meta, n),
                    &[],
                    &[],
                )
                .await
            }
            Dml::UpdateJoin(plan) => {
                let (sql, p) =
                    join_write(plan.by_keys_sql(&keyed(&keys_by_table)), write_params_lead)?;
                self.write(&sql, p, lead_types)
                    .await
                    .map_err(|e| Failure::Clean(e.into()))
            }
            Dml::DeleteJoin(plan) => {
                let (sql, p) =
                    join_write(plan.by_keys_sql(&keyed(&keys_by_table)), write_params_lead)?;
                self.write(&sql, p, lead_types)
                    .await
                    .map_err(|e| Failure::Clean(e.into()))
            }
            Dml::Insert(_) => unreachable!("refused above"),
        }
    }
}
