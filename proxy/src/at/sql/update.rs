//! UPDATE: a single-table UPDATE (also of primary-key columns) and UPDATE … JOIN.

use super::*;

/// A multi-table UPDATE.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinUpdatePlan {
    /// Every table of the join, in FROM order.
    pub tables: Vec<JoinTable>,
    /// The table references with their joins, as written.
    pub(super) from: String,
    pub(super) assignments: String,
    /// Each assignment's target: (qualifier as written, column).
    pub(super) targets: Vec<(Option<String>, String)>,
    /// The WHERE condition as written.
    pub(super) selection: Option<String>,
    /// Placeholders in the join's ON conditions, which come before the SET clause's.
    pub from_params: usize,
    /// Placeholders in the SET clause.
    pub set_params: usize,
}

/// A single-table UPDATE.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdatePlan {
    pub table: TableRef,
    /// Columns the SET clause assigns, in order (becomes [`rewind_undo_log::UndoItem::set_columns`]).
    pub set_columns: Vec<String>,
    /// Number of `?` placeholders inside the SET clause.
    pub set_params: usize,
    /// The table factor as written (with alias), re-printed.
    pub(super) relation: String,
    pub(super) assignments: String,
    /// ` WHERE … ORDER BY … LIMIT …` as written, possibly empty.
    pub(super) filter: String,
    /// ` ORDER BY …` alone: the key-restricted write keeps the order rows are written in
    /// (`SET pos = pos + 1 ORDER BY pos DESC` avoids unique-key collisions that way).
    pub(super) order: String,
    /// Each assignment: its column, its value expression as written, and the number of
    /// placeholders before that expression (an UPDATE of a primary-key column evaluates
    /// the new key in the before-image SELECT).
    pub(super) assigned: Vec<(String, String, usize)>,
    /// What the condition pins to integer literals, if that is all it does ([`pinned`]).
    pub(super) pinned: Option<Vec<(String, mysql_async::Value)>>,
}

/// A primary-key column's new value in an UPDATE: its expression as written and the range
/// of SET-clause parameters inside it.
pub(super) type KeyAssignment<'a> = (&'a str, std::ops::Range<usize>);

pub(super) fn analyze_update(u: ast::Update) -> Result<Dml> {
    if u.from.is_some() {
        return Err(Error::Refused("UPDATE … FROM".into()));
    }
    if u.returning.is_some() || u.output.is_some() {
        return Err(Error::Refused("UPDATE … RETURNING".into()));
    }
    if !u.table.joins.is_empty() {
        return analyze_update_join(u);
    }
    let table = single_table(&u.table, "UPDATE")?;
    let mut set_columns = Vec::with_capacity(u.assignments.len());
    for a in &u.assignments {
        match &a.target {
            AssignmentTarget::ColumnName(name) => {
                let column = last_ident(name)?;
                if !set_columns.contains(&column) {
                    set_columns.push(column);
                }
            }
            AssignmentTarget::Tuple(_) => {
                return Err(Error::Refused("tuple assignment in UPDATE … SET".into()))
            }
        }
    }
    let assignments = joined(&u.assignments);
    let mut assigned = Vec::with_capacity(u.assignments.len());
    let mut params_before = 0;
    for a in &u.assignments {
        let AssignmentTarget::ColumnName(name) = &a.target else {
            unreachable!("tuple assignments refused above")
        };
        let value = a.value.to_string();
        let n = count_placeholders(&value)?;
        assigned.push((last_ident(name)?, value, params_before));
        params_before += n;
    }
    Ok(Dml::Update(UpdatePlan {
        table,
        set_columns,
        set_params: count_placeholders(&assignments)?,
        relation: u.table.relation.to_string(),
        assignments,
        filter: filter(u.selection.as_ref(), &u.order_by, u.limit.as_ref()),
        order: filter(None, &u.order_by, None),
        assigned,
        pinned: pinned(u.selection.as_ref(), &u.order_by, u.limit.as_ref()),
    }))
}

pub(super) fn analyze_update_join(u: ast::Update) -> Result<Dml> {
    if !u.order_by.is_empty() || u.limit.is_some() {
        return Err(Error::Refused(
            "multi-table UPDATE with ORDER BY or LIMIT".into(),
        ));
    }
    let tables = join_tables(std::slice::from_ref(&u.table), "multi-table UPDATE")?;
    let mut targets = Vec::with_capacity(u.assignments.len());
    for a in &u.assignments {
        match &a.target {
            AssignmentTarget::ColumnName(name) => {
                let column = last_ident(name)?;
                let parts = &name.0;
                let qualifier = (parts.len() >= 2)
                    .then(|| parts[parts.len() - 2].as_ident().map(ident_name))
                    .flatten();
                targets.push((qualifier, column));
            }
            AssignmentTarget::Tuple(_) => {
                return Err(Error::Refused("tuple assignment in UPDATE … SET".into()))
            }
        }
    }
    let from = u.table.to_string();
    let assignments = joined(&u.assignments);
    Ok(Dml::UpdateJoin(JoinUpdatePlan {
        tables,
        from_params: count_placeholders(&from)?,
        set_params: count_placeholders(&assignments)?,
        from,
        assignments,
        targets,
        selection: u.selection.as_ref().map(ToString::to_string),
    }))
}

impl JoinUpdatePlan {
    /// The tables the SET clause writes: their index in [`Self::tables`] and the columns
    /// assigned, spelled as each table spells them. `metas` follow [`Self::tables`].
    /// Refuses primary-key assignments and targets that name no single table.
    pub fn written(
        &self,
        metas: &[std::sync::Arc<TableMeta>],
    ) -> Result<Vec<(usize, Vec<String>)>> {
        let mut out: Vec<(usize, Vec<String>)> = Vec::new();
        for (qualifier, column) in &self.targets {
            let candidates: Vec<usize> = match qualifier {
                Some(q) => {
                    let exact: Vec<usize> = (0..self.tables.len())
                        .filter(|&i| self.tables[i].name == *q)
                        .collect();
                    if exact.is_empty() {
                        (0..self.tables.len())
                            .filter(|&i| self.tables[i].name.eq_ignore_ascii_case(q))
                            .collect()
                    } else {
                        exact
                    }
                }
                None => (0..self.tables.len())
                    .filter(|&i| metas[i].columns.iter().any(|c| same_name(&c.name, column)))
                    .collect(),
            };
            let [t] = candidates.as_slice() else {
                return Err(Error::Refused(format!(
                    "multi-table UPDATE whose SET target `{column}` names no single table"
                )));
            };
            let spelled = assignable(&metas[*t], column)?;
            match out.iter_mut().find(|(i, _)| i == t) {
                Some((_, cols)) if !cols.contains(&spelled) => cols.push(spelled),
                Some(_) => {}
                None => out.push((*t, vec![spelled])),
            }
        }
        Ok(out)
    }

    /// `SELECT <table t's image columns> FROM <the join> WHERE … FOR UPDATE` (see
    /// `join_image_sql`). Parameters: the ON clauses' then the WHERE clause's (the
    /// statement's parameters without the SET clause's).
    pub fn before_image_sql(&self, t: usize, meta: &TableMeta) -> String {
        join_image_sql(&self.tables, &self.from, self.selection.as_deref(), t, meta)
    }

    /// The same UPDATE with its condition narrowed to the locked keys of every written
    /// table: `… WHERE (<condition>) AND ((t.pk = ?) OR …) AND …`. Parameters: all of the
    /// statement's, then each written table's keys in `keyed` order.
    pub fn by_keys_sql(&self, keyed: &[(usize, &TableMeta, usize)]) -> String {
        format!(
            "UPDATE {} SET {} WHERE {}",
            self.from,
            self.assignments,
            join_narrowed(&self.tables, self.selection.as_deref(), keyed)
        )
    }
}

impl UpdatePlan {
    /// The SET columns spelled as the table spells them (column names are case-insensitive
    /// in MySQL, image rows are keyed by the table's spelling): what
    /// [`rewind_undo_log::UndoItem::set_columns`] must hold. Primary-key columns are included; see
    /// [`Self::new_keys_sql`] for how such an UPDATE finds its rows again.
    pub fn set_columns_in(&self, meta: &TableMeta) -> Result<Vec<String>> {
        self.set_columns
            .iter()
            .map(|column| {
                meta.columns
                    .iter()
                    .find(|c| same_name(&c.name, column))
                    .map(|c| c.name.clone())
                    .ok_or_else(|| Error::MissingColumn(column.to_string()))
            })
            .collect()
    }

    /// For each primary-key column in key order: the expression the SET clause assigns it
    /// and the range of SET-clause parameters inside that expression; `None` for key
    /// columns it leaves alone. Refuses a key assigned twice, and a key expression that
    /// reads a column the same SET clause assigned before it (MySQL assigns left to right,
    /// so the new key could not be computed from the locked row).
    pub(super) fn key_assignments(
        &self,
        meta: &TableMeta,
    ) -> Result<Vec<Option<KeyAssignment<'_>>>> {
        let mut out = Vec::with_capacity(meta.primary_key.len());
        for pk in &meta.primary_key {
            let mut found = None;
            for (i, (column, expr, before)) in self.assigned.iter().enumerate() {
                if !same_name(column, pk) {
                    continue;
                }
                if found.is_some() {
                    return Err(Error::Refused(format!(
                        "UPDATE assigning primary-key column `{pk}` twice"
                    )));
                }
                let tokens = Tokenizer::new(&MySqlDialect {}, expr)
                    .with_unescape(false)
                    .tokenize()
                    .map_err(|e| Error::Parse(e.to_string()))?;
                for t in &tokens {
                    if let Token::Word(w) = t {
                        if let Some((earlier, ..)) = self.assigned[..i]
                            .iter()
                            .find(|(c, ..)| same_name(c, &w.value))
                        {
                            return Err(Error::Refused(format!(
                                "UPDATE of primary-key column `{pk}` from column `{earlier}`, \
                                 which the same SET clause assigns before it (assign the \
                                 key first)"
                            )));
                        }
                    }
                }
                let n = count_placeholders(expr)?;
                found = Some((expr.as_str(), *before..*before + n));
            }
            out.push(found);
        }
        Ok(out)
    }

    /// Whether the UPDATE assigns a primary-key column.
    pub fn changes_key(&self, meta: &TableMeta) -> bool {
        self.set_columns
            .iter()
            .any(|c| meta.primary_key.iter().any(|p| same_name(p, c)))
    }

    /// For an UPDATE of primary-key columns: `SELECT <old key>, <new key> FROM <table>
    /// WHERE <key = row 1> OR …` over `rows` locked rows, the new key computed by the
    /// SET clause's own expressions from the row as it is (locked, so as the UPDATE will
    /// see it). Parameters: [`Self::new_keys_params`]. `None` when no key column is
    /// assigned.
    pub fn new_keys_sql(&self, meta: &TableMeta, rows: usize) -> Result<Option<String>> {
        let assigned = self.key_assignments(meta)?;
        if assigned.iter().all(Option::is_none) {
            return Ok(None);
        }
        let mut columns: Vec<String> = meta.primary_key.iter().map(|c| quote_ident(c)).collect();
        for (pk, a) in meta.primary_key.iter().zip(&assigned) {
            columns.push(match a {
                Some((expr, _)) => format!("({expr})"),
                None => quote_ident(pk),
            });
        }
        Ok(Some(format!(
            "SELECT {} FROM {} WHERE {}",
            columns.join(", "),
            self.relation,
            keys_predicate(meta, rows)
        )))
    }

    /// Parameters of [`Self::new_keys_sql`]: the key expressions' own parameters (out of
    /// the statement's SET-clause parameters `set_params`), then each row's key. With
    /// them, the client's types of the expressions' parameters (out of `set_types`, the
    /// SET clause's; none when it has none): `id = id + ?` with a DECIMAL amount computes
    /// exactly, as the UPDATE itself will, where a string would compute in DOUBLE and
    /// name keys the UPDATE does not write. The keys are the proxy's own values.
    pub fn new_keys_params(
        &self,
        meta: &TableMeta,
        set_params: &[mysql_async::Value],
        set_types: &[crate::params::ParamType],
        keys: &[Vec<mysql_async::Value>],
    ) -> Result<(Vec<mysql_async::Value>, Vec<crate::params::ParamType>)> {
        let missing = || Error::Refused("missing parameters in the SET clause".into());
        let (mut out, mut types) = (Vec::new(), Vec::new());
        for (_, range) in self.key_assignments(meta)?.into_iter().flatten() {
            out.extend_from_slice(set_params.get(range.clone()).ok_or_else(missing)?);
            if !set_types.is_empty() {
                types.extend_from_slice(set_types.get(range).ok_or_else(missing)?);
            }
        }
        out.extend(keys.concat());
        Ok((out, types))
    }

    /// `SELECT <pk>, <all other columns> FROM <table> <same WHERE/ORDER BY/LIMIT> FOR UPDATE`.
    /// Refuses what [`Self::set_columns_in`] and the key assignments refuse.
    pub fn before_image_sql(&self, meta: &TableMeta) -> Result<String> {
        self.set_columns_in(meta)?;
        self.key_assignments(meta)?;
        Ok(self.rows_sql(meta))
    }

    /// The same SELECT without the refusals that only matter for an undo (for write
    /// isolation of UPDATEs without an XID, which need the rows' keys, not an image).
    pub fn rows_sql(&self, meta: &TableMeta) -> String {
        select_sql(meta, &self.relation, &self.filter)
    }

    /// The same UPDATE restricted to `rows` primary keys:
    /// `UPDATE <table> SET <same assignments> WHERE (<pk> = ? AND …) OR …`. Parameters:
    /// the first [`Self::set_params`] of the original statement, then each locked row's key
    /// (at most [`rewind_undo_log::undo_sql::MAX_STATEMENT_PARAMS`] in all: the caller splits larger
    /// key sets into several statements).
    pub fn by_keys_sql(&self, meta: &TableMeta, rows: usize) -> String {
        format!(
            "UPDATE {} SET {} WHERE {}{}",
            self.relation,
            self.assignments,
            keys_predicate(meta, rows),
            self.order
        )
    }

    /// The one row a statement without parameters can write, when its condition pins the
    /// whole (integer) primary key and nothing else ([`pinned_key`]).
    pub fn pinned_key(&self, meta: &TableMeta) -> Option<Vec<mysql_async::Value>> {
        if self.set_params > 0 {
            return None;
        }
        pinned_key(self.pinned.as_deref(), meta)
    }

    /// The same UPDATE narrowed to `keys` written in as literals, for a statement without
    /// parameters on a table with an integer primary key (see [`literal_keys_predicate`]).
    pub fn by_literal_keys_sql(
        &self,
        meta: &TableMeta,
        keys: &[Vec<mysql_async::Value>],
    ) -> Option<String> {
        if self.set_params > 0 {
            return None;
        }
        Some(format!(
            "UPDATE {} SET {} WHERE {}{}",
            self.relation,
            self.assignments,
            literal_keys_predicate(meta, keys)?,
            self.order
        ))
    }
}

/// The table's spelling of a column a multi-table UPDATE assigns. Refuses a primary-key
/// column: the join's rows are found again by key (a single-table UPDATE may change keys).
pub(super) fn assignable(meta: &TableMeta, column: &str) -> Result<String> {
    if let Some(pk) = meta.primary_key.iter().find(|p| same_name(p, column)) {
        return Err(Error::Refused(format!(
            "multi-table UPDATE of primary-key column `{pk}` (change keys in a single-table \
             UPDATE)"
        )));
    }
    meta.columns
        .iter()
        .find(|c| same_name(&c.name, column))
        .map(|c| c.name.clone())
        .ok_or_else(|| Error::MissingColumn(column.to_string()))
}

/// The SET clause's assignments re-printed as written, comma-separated.
fn joined(assignments: &[ast::Assignment]) -> String {
    assignments
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
