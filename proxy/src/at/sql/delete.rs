//! DELETE: a single-table DELETE and the multi-table forms (`DELETE t1, t2 FROM …`, `USING`).

use super::*;

/// A multi-table DELETE.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinDeletePlan {
    /// Every table of the FROM (or USING) clause, in order.
    pub tables: Vec<JoinTable>,
    /// Indexes into [`Self::tables`] of the tables rows are deleted from.
    pub targets: Vec<usize>,
    /// The target list as written (`t1, t2`).
    pub(super) target_list: String,
    /// The table references with their joins, as written.
    pub(super) from: String,
    /// The WHERE condition as written.
    pub(super) selection: Option<String>,
}

/// A single-table DELETE.
#[derive(Debug, Clone, PartialEq)]
pub struct DeletePlan {
    pub table: TableRef,
    pub(super) relation: String,
    pub(super) filter: String,
    /// See [`UpdatePlan`]'s `order`.
    pub(super) order: String,
    /// See [`UpdatePlan`]'s `pinned`.
    pub(super) pinned: Option<Vec<(String, mysql_async::Value)>>,
}

pub(super) fn analyze_delete(d: ast::Delete) -> Result<Dml> {
    let from = match &d.from {
        FromTable::WithFromKeyword(f) | FromTable::WithoutKeyword(f) => f,
    };
    if d.returning.is_some() || d.output.is_some() {
        return Err(Error::Refused("DELETE … RETURNING".into()));
    }
    if !d.tables.is_empty() || d.using.is_some() || from.len() != 1 || !from[0].joins.is_empty() {
        return analyze_delete_join(&d);
    }
    Ok(Dml::Delete(DeletePlan {
        table: single_table(&from[0], "DELETE")?,
        relation: from[0].relation.to_string(),
        filter: filter(d.selection.as_ref(), &d.order_by, d.limit.as_ref()),
        order: filter(None, &d.order_by, None),
        pinned: pinned(d.selection.as_ref(), &d.order_by, d.limit.as_ref()),
    }))
}

/// `DELETE t1[, t2] FROM <join> [WHERE …]` or `DELETE FROM t1[, t2] USING <join> [WHERE …]`.
pub(super) fn analyze_delete_join(d: &ast::Delete) -> Result<Dml> {
    if !d.order_by.is_empty() || d.limit.is_some() {
        return Err(Error::Refused(
            "multi-table DELETE with ORDER BY or LIMIT".into(),
        ));
    }
    let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &d.from;
    // The targets are listed before FROM, or (with USING) after it.
    let (target_names, froms): (Vec<&ObjectName>, &[TableWithJoins]) = match &d.using {
        Some(using) => {
            let mut names = Vec::with_capacity(from.len());
            for twj in from {
                match &twj.relation {
                    TableFactor::Table { name, .. } if twj.joins.is_empty() => names.push(name),
                    _ => {
                        return Err(Error::Refused(
                            "multi-table DELETE … USING whose targets are not plain names".into(),
                        ))
                    }
                }
            }
            (names, using.as_slice())
        }
        None if d.tables.is_empty() => (Vec::new(), from.as_slice()),
        None => (d.tables.iter().collect(), from.as_slice()),
    };
    let tables = join_tables(froms, "multi-table DELETE")?;
    let mut targets = Vec::with_capacity(target_names.len());
    for name in &target_names {
        // `t`, `db.t` or an alias; `t.*` spelled as a name ends in `*`, which MySQL
        // accepts and means the same table.
        let parts: Vec<String> = name
            .0
            .iter()
            .filter_map(|p| p.as_ident().map(ident_name))
            .filter(|p| p != "*")
            .collect();
        let Some(bare) = parts.last() else {
            return Err(Error::Refused(format!("DELETE target {name}")));
        };
        let schema = (parts.len() >= 2).then(|| parts[parts.len() - 2].clone());
        let matches: Vec<usize> = (0..tables.len())
            .filter(|&i| {
                let t = &tables[i];
                t.name == *bare
                    && schema
                        .as_ref()
                        .is_none_or(|s| t.table.schema.as_deref() == Some(s.as_str()))
            })
            .collect();
        let [t] = matches.as_slice() else {
            return Err(Error::Refused(format!(
                "multi-table DELETE whose target `{bare}` names no single table of the join"
            )));
        };
        if !targets.contains(t) {
            targets.push(*t);
        }
    }
    if targets.is_empty() {
        return Err(Error::Refused("multi-table DELETE without targets".into()));
    }
    Ok(Dml::DeleteJoin(JoinDeletePlan {
        tables,
        targets,
        target_list: target_names
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        from: froms
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        selection: d.selection.as_ref().map(ToString::to_string),
    }))
}

impl JoinDeletePlan {
    /// `SELECT <table t's image columns> FROM <the join> WHERE … FOR UPDATE` (see
    /// `join_image_sql`). Takes all of the statement's parameters.
    pub fn before_image_sql(&self, t: usize, meta: &TableMeta) -> String {
        join_image_sql(&self.tables, &self.from, self.selection.as_deref(), t, meta)
    }

    /// The same DELETE with its condition narrowed to the locked keys of every target:
    /// `DELETE <targets> FROM <join> WHERE (<condition>) AND (<t1 keys>) AND …`, so exactly
    /// the locked rows go. Parameters: the statement's, then each target's keys in `keyed`
    /// order.
    pub fn by_keys_sql(&self, keyed: &[(usize, &TableMeta, usize)]) -> String {
        format!(
            "DELETE {} FROM {} WHERE {}",
            self.target_list,
            self.from,
            join_narrowed(&self.tables, self.selection.as_deref(), keyed)
        )
    }
}

impl DeletePlan {
    /// `SELECT <pk>, <all other columns> FROM <table> <same WHERE/ORDER BY/LIMIT> FOR UPDATE`.
    /// Takes all of the statement's parameters.
    pub fn before_image_sql(&self, meta: &TableMeta) -> String {
        select_sql(meta, &self.relation, &self.filter)
    }

    /// `DELETE FROM <table> WHERE (<pk> = ? AND …) OR …`; parameters: each row's key.
    pub fn by_keys_sql(&self, meta: &TableMeta, rows: usize) -> String {
        format!(
            "DELETE FROM {} WHERE {}{}",
            self.relation,
            keys_predicate(meta, rows),
            self.order
        )
    }

    /// See [`UpdatePlan::pinned_key`].
    pub fn pinned_key(&self, meta: &TableMeta) -> Option<Vec<mysql_async::Value>> {
        pinned_key(self.pinned.as_deref(), meta)
    }

    /// [`Self::by_keys_sql`] with the keys written in ([`literal_keys_predicate`]), to be
    /// sent as text; `None` where they cannot be.
    pub fn by_literal_keys_sql(
        &self,
        meta: &TableMeta,
        keys: &[Vec<mysql_async::Value>],
    ) -> Option<String> {
        Some(format!(
            "DELETE FROM {} WHERE {}{}",
            self.relation,
            literal_keys_predicate(meta, keys)?,
            self.order
        ))
    }
}
