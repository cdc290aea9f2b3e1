//! `SELECT … FOR UPDATE` in a global transaction: the keys of the rows it locks.

use super::*;

/// A locking read (`SELECT … FOR UPDATE`) inside a global transaction: which tables it
/// reads and how to learn the primary keys of the rows it locks, so the proxy can wait for
/// other global transactions' locks on exactly those rows (global read-committed).
#[derive(Debug, Clone, PartialEq)]
pub struct LockingSelect {
    /// Every table of the FROM clause with the name its columns are qualified by.
    pub tables: Vec<(TableRef, String)>,
    /// ` FROM …` as written.
    pub(super) from: String,
    /// ` WHERE … [ORDER BY … LIMIT …]`: ORDER BY and LIMIT are kept only when they select
    /// among the same rows the keys SELECT returns (no grouping, DISTINCT or function in
    /// the select list); otherwise the keys SELECT covers every row the WHERE matches, a
    /// superset, which may only make the proxy wait more, never less.
    pub(super) filter: String,
}

/// `Ok(None)` when `sql` is not a `SELECT … FOR UPDATE`; refuses locking reads whose rows
/// cannot be named by primary key (derived tables, table functions).
pub fn analyze_locking_select(sql: &str) -> Result<Option<LockingSelect>> {
    let mut statements = parse(sql)?;
    if statements.len() != 1 {
        return Ok(None);
    }
    let Statement::Query(query) = statements.remove(0) else {
        return Ok(None);
    };
    if !query
        .locks
        .iter()
        .any(|l| l.lock_type == ast::LockType::Update)
    {
        return Ok(None);
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return Err(Error::Refused(
            "SELECT … FOR UPDATE over a UNION or other set operation".into(),
        ));
    };
    let tables: Vec<(TableRef, String)> = join_tables(&select.from, "SELECT … FOR UPDATE")?
        .into_iter()
        .map(|t| (t.table, t.qualifier))
        .collect();
    if tables.is_empty() {
        return Ok(None);
    }
    let from = format!(
        " FROM {}",
        select
            .from
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let grouped = !matches!(select.group_by, ast::GroupByExpr::Expressions(ref e, _) if e.is_empty())
        || select.having.is_some()
        || select.distinct.is_some()
        || select
            .projection
            .iter()
            .any(|item| item.to_string().contains('('));
    let mut filter = String::new();
    if let Some(selection) = &select.selection {
        filter.push_str(&format!(" WHERE {selection}"));
    }
    if !grouped {
        if let Some(order_by) = &query.order_by {
            filter.push_str(&format!(" {order_by}"));
        }
        if let Some(limit) = &query.limit_clause {
            filter.push_str(&format!("{limit}"));
        }
    }
    Ok(Some(LockingSelect {
        tables,
        from,
        filter,
    }))
}

impl LockingSelect {
    /// `SELECT <each table's primary key> FROM … WHERE … FOR UPDATE`; `metas` in the order
    /// of [`Self::tables`]. Takes the statement's parameters.
    pub fn keys_sql(&self, metas: &[std::sync::Arc<TableMeta>]) -> String {
        let mut columns = Vec::new();
        for ((_, qualifier), meta) in self.tables.iter().zip(metas) {
            for pk in &meta.primary_key {
                let col = format!("{qualifier}.{}", quote_ident(pk));
                let is_ts = meta
                    .column(pk)
                    .is_some_and(|c| c.ty.kind == rewind_undo_log::TypeKind::Timestamp);
                columns.push(if is_ts {
                    format!("UNIX_TIMESTAMP({col})")
                } else {
                    col
                });
            }
        }
        format!(
            "SELECT {} {}{} FOR UPDATE",
            columns.join(", "),
            self.from.trim_start(),
            self.filter
        )
    }

    /// The lock keys of the rows [`Self::keys_sql`] returned (outer-joined NULL keys are
    /// skipped), sorted and deduplicated.
    pub fn keys(
        &self,
        metas: &[std::sync::Arc<TableMeta>],
        rows: &[mysql_async::Row],
    ) -> Result<Vec<rewind_undo_log::LockKey>> {
        let mut keys = Vec::new();
        for row in rows {
            let columns = row.columns_ref();
            let mut at = 0;
            for meta in metas {
                let mut parts = Vec::with_capacity(meta.primary_key.len());
                let mut null = false;
                for pk in &meta.primary_key {
                    let (value, col) = row
                        .as_ref(at)
                        .zip(columns.get(at))
                        .ok_or_else(|| Error::MissingColumn(pk.clone()))?;
                    at += 1;
                    let mut v = rewind_undo_log::TypedValue::from_mysql(value, col)?;
                    if let Some(c) = meta
                        .column(pk)
                        .filter(|c| c.ty.kind == rewind_undo_log::TypeKind::Timestamp)
                    {
                        v = rewind_undo_log::TypedValue::timestamp_from_epoch(
                            c.ty.clone(),
                            &v.value,
                            pk,
                        )?;
                    }
                    null |= v.is_null();
                    parts.push(v.key_bytes());
                }
                if !null {
                    keys.push(rewind_undo_log::LockKey::new(&meta.name, parts)?);
                }
            }
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }
}
