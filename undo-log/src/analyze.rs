//! From a DML statement's text to what phase one needs: which table, which columns it
//! sets, the `SELECT … FOR UPDATE` that reads its before image, and the same write narrowed
//! to the locked keys. Shapes AT mode cannot undo safely are refused with
//! [`Error::Refused`] naming the construct (the proxy answers 1235 with that text).
//!
//! The before-image SELECT reuses the statement's own predicate, ORDER BY and LIMIT
//! *verbatim*, so it locks exactly the rows the statement would touch at that moment.
//! Under READ COMMITTED a row inserted after that SELECT could still match the original
//! predicate (Seata #3611, #4727); [`UpdatePlan::by_keys_sql`] and
//! [`DeletePlan::by_keys_sql`] give the write restricted to the locked primary keys, so
//! no row changes without an undo record.
//!
//! Parameters: the statement may be a prepared one with `?` placeholders. In an UPDATE the
//! SET clause's placeholders come first; [`UpdatePlan::set_params`] says how many, and the
//! before-image SELECT takes the remaining parameters in order.
//!
//! Literals are parsed without unescaping so that re-printed predicates keep their exact
//! original spelling (`'a\\b'` must not turn into `'a\b'`).

use sqlparser::ast::{
    self, AssignmentTarget, FromTable, ObjectName, SetExpr, Statement, TableFactor, TableWithJoins,
};
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::{Parser, ParserOptions};
use sqlparser::tokenizer::{Token, Tokenizer};

use crate::error::{Error, Result};
use crate::image::TableMeta;
use crate::undo_sql::quote_ident;

/// A table as the statement names it; `schema` is `None` when the statement relies on the
/// session's current database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRef {
    pub schema: Option<String>,
    pub table: String,
}

/// A DML statement AT mode can undo.
#[derive(Debug, Clone, PartialEq)]
pub enum Dml {
    Update(UpdatePlan),
    /// `UPDATE t1 JOIN t2 ON … SET …`: one image per table the SET clause writes.
    UpdateJoin(JoinUpdatePlan),
    Delete(DeletePlan),
    /// `DELETE t1, t2 FROM t1 JOIN t2 …` / `DELETE FROM t1 USING t1 JOIN t2 …`: one image
    /// per table it deletes from.
    DeleteJoin(JoinDeletePlan),
    Insert(InsertPlan),
}

/// A multi-table DELETE.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinDeletePlan {
    /// Every table of the FROM (or USING) clause, in order.
    pub tables: Vec<JoinTable>,
    /// Indexes into [`Self::tables`] of the tables rows are deleted from.
    pub targets: Vec<usize>,
    /// The target list as written (`t1, t2`).
    target_list: String,
    /// The table references with their joins, as written.
    from: String,
    /// The WHERE condition as written.
    selection: Option<String>,
}

/// A multi-table UPDATE.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinUpdatePlan {
    /// Every table of the join, in FROM order.
    pub tables: Vec<JoinTable>,
    /// The table references with their joins, as written.
    from: String,
    assignments: String,
    /// Each assignment's target: (qualifier as written, column).
    targets: Vec<(Option<String>, String)>,
    /// The WHERE condition as written.
    selection: Option<String>,
    /// Placeholders in the join's ON conditions, which come before the SET clause's.
    pub from_params: usize,
    /// Placeholders in the SET clause.
    pub set_params: usize,
}

/// One table of a join.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinTable {
    pub table: TableRef,
    /// How columns of this table are qualified in SQL (`alias` or the name as written).
    qualifier: String,
    /// The bare alias or table name a SET target's qualifier names.
    name: String,
}

/// A single-table UPDATE.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdatePlan {
    pub table: TableRef,
    /// Columns the SET clause assigns, in order (becomes [`crate::UndoItem::set_columns`]).
    pub set_columns: Vec<String>,
    /// Number of `?` placeholders inside the SET clause.
    pub set_params: usize,
    /// The table factor as written (with alias), re-printed.
    relation: String,
    assignments: String,
    /// ` WHERE … ORDER BY … LIMIT …` as written, possibly empty.
    filter: String,
    /// ` ORDER BY …` alone: the key-restricted write keeps the order rows are written in
    /// (`SET pos = pos + 1 ORDER BY pos DESC` avoids unique-key collisions that way).
    order: String,
    /// Each assignment: its column, its value expression as written, and the number of
    /// placeholders before that expression (an UPDATE of a primary-key column evaluates
    /// the new key in the before-image SELECT).
    assigned: Vec<(String, String, usize)>,
}

/// A primary-key column's new value in an UPDATE: its expression as written and the range
/// of SET-clause parameters inside it.
type KeyAssignment<'a> = (&'a str, std::ops::Range<usize>);

/// A single-table DELETE.
#[derive(Debug, Clone, PartialEq)]
pub struct DeletePlan {
    pub table: TableRef,
    relation: String,
    filter: String,
    /// See [`UpdatePlan`]'s `order`.
    order: String,
}

/// A plain `INSERT INTO t [(cols)] VALUES (…), …` (or `INSERT … SET`).
#[derive(Debug, Clone, PartialEq)]
pub struct InsertPlan {
    pub table: TableRef,
    /// Explicit column list; empty means "all visible columns in table order".
    pub columns: Vec<String>,
    /// Number of rows in VALUES: the after image must find exactly that many.
    pub rows: usize,
    /// What each row gives each listed column, enough to derive primary keys.
    cells: Vec<Vec<Cell>>,
    /// `ON DUPLICATE KEY UPDATE`: the columns it assigns (a row that hits an existing
    /// key updates that row instead of inserting).
    pub on_duplicate: Option<Vec<String>>,
    /// `INSERT IGNORE`: rows that hit an existing key (or another ignorable error) are
    /// skipped, so the inserted rows are found by key and counted.
    pub ignore: bool,
    /// `REPLACE`: rows that hit an existing primary or unique key delete those rows first.
    pub replace: bool,
    /// `INSERT … SELECT`: the query as written (its placeholders are the statement's);
    /// [`Self::rows`] is then unknown (0) and `cells` empty.
    pub select: Option<String>,
}

/// What an INSERT row gives one column, as far as deriving its key needs.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    /// The n-th `?` of the statement.
    Param(usize),
    Literal(mysql_async::Value),
    /// `DEFAULT`: the column's default (for auto-increment, see [`AutoIncrement`]).
    Default,
    /// Any other expression: the value is known only to the server.
    Computed,
}

/// Parses one DML statement and classifies it.
pub fn analyze(sql: &str) -> Result<Dml> {
    let dialect = MySqlDialect {};
    let mut statements = Parser::new(&dialect)
        .with_options(ParserOptions::new().with_unescape(false))
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| Error::Parse(e.to_string()))?;
    if statements.len() != 1 {
        return Err(Error::Refused(format!(
            "{} statements in one query; send DML one statement at a time",
            statements.len()
        )));
    }
    match statements.remove(0) {
        Statement::Update(update) => analyze_update(update),
        Statement::Delete(delete) => analyze_delete(delete),
        Statement::Insert(insert) => analyze_insert(insert),
        other => Err(Error::Refused(format!(
            "statement is not INSERT, UPDATE or DELETE: {}",
            first_words(&other.to_string())
        ))),
    }
}

fn analyze_update(u: ast::Update) -> Result<Dml> {
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
    let assignments = u
        .assignments
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
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
    }))
}

fn analyze_update_join(u: ast::Update) -> Result<Dml> {
    if !u.order_by.is_empty() || u.limit.is_some() {
        return Err(Error::Refused(
            "multi-table UPDATE with ORDER BY or LIMIT".into(),
        ));
    }
    let tables = join_tables(std::slice::from_ref(&u.table), "UPDATE")?;
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
    let assignments = u
        .assignments
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
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

    /// `SELECT <table t's image columns> FROM <the join> WHERE … FOR UPDATE`: locks every
    /// joined row. Parameters: the ON clauses' then the WHERE clause's (the statement's
    /// parameters without the SET clause's). A row joined several times comes back several
    /// times; the caller keeps one per key.
    pub fn before_image_sql(&self, t: usize, meta: &TableMeta) -> String {
        format!(
            "SELECT {} FROM {}{} FOR UPDATE",
            meta.image_columns(Some(&self.tables[t].qualifier)),
            self.from,
            self.selection
                .as_ref()
                .map(|w| format!(" WHERE {w}"))
                .unwrap_or_default()
        )
    }

    /// The same UPDATE with its condition narrowed to the locked keys of every written
    /// table: `… WHERE (<condition>) AND ((t.pk = ?) OR …) AND …`. Parameters: all of the
    /// statement's, then each written table's keys in `keyed` order.
    pub fn by_keys_sql(&self, keyed: &[(usize, &TableMeta, usize)]) -> String {
        let mut parts = vec![format!("({})", self.selection.as_deref().unwrap_or("TRUE"))];
        for (t, meta, rows) in keyed {
            let predicate = join_keys_predicate(&self.tables[*t], meta, *rows);
            parts.push(format!("({predicate})"));
        }
        format!(
            "UPDATE {} SET {} WHERE {}",
            self.from,
            self.assignments,
            parts.join(" AND ")
        )
    }
}

/// Every table of `froms` (comma-separated references and their joins), in order, with
/// the qualifier its columns take. Refuses derived tables and table functions.
fn join_tables(froms: &[TableWithJoins], verb: &str) -> Result<Vec<JoinTable>> {
    let mut tables = Vec::new();
    for twj in froms {
        for factor in std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation)) {
            match factor {
                TableFactor::Table {
                    name,
                    alias,
                    args: None,
                    ..
                } => {
                    let table = table_ref(name)?;
                    let (qualifier, bare) = match alias {
                        Some(a) => (quote_ident(&ident_name(&a.name)), ident_name(&a.name)),
                        None => (name.to_string(), table.table.clone()),
                    };
                    tables.push(JoinTable {
                        table,
                        qualifier,
                        name: bare,
                    });
                }
                _ => {
                    return Err(Error::Refused(format!(
                        "multi-table {verb} over a derived table or table function"
                    )))
                }
            }
        }
    }
    Ok(tables)
}

/// `(<t>.pk = ? AND …) OR …` for `rows` keys of the join table `t`; `FALSE` for none.
fn join_keys_predicate(t: &JoinTable, meta: &TableMeta, rows: usize) -> String {
    if rows == 0 {
        return "FALSE".to_string();
    }
    let one = meta
        .primary_key
        .iter()
        .map(|c| format!("{}.{} = ?", t.qualifier, quote_ident(c)))
        .collect::<Vec<_>>()
        .join(" AND ");
    vec![format!("({one})"); rows].join(" OR ")
}

fn analyze_delete(d: ast::Delete) -> Result<Dml> {
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
    }))
}

/// `DELETE t1[, t2] FROM <join> [WHERE …]` or `DELETE FROM t1[, t2] USING <join> [WHERE …]`.
fn analyze_delete_join(d: &ast::Delete) -> Result<Dml> {
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
    let tables = join_tables(froms, "DELETE")?;
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
    /// `SELECT <table t's image columns> FROM <the join> WHERE … FOR UPDATE`: locks every
    /// joined row. Takes all of the statement's parameters. A row joined several times
    /// comes back several times; the caller keeps one per key.
    pub fn before_image_sql(&self, t: usize, meta: &TableMeta) -> String {
        format!(
            "SELECT {} FROM {}{} FOR UPDATE",
            meta.image_columns(Some(&self.tables[t].qualifier)),
            self.from,
            self.selection
                .as_ref()
                .map(|w| format!(" WHERE {w}"))
                .unwrap_or_default()
        )
    }

    /// The same DELETE with its condition narrowed to the locked keys of every target:
    /// `DELETE <targets> FROM <join> WHERE (<condition>) AND (<t1 keys>) AND …`. Every
    /// locked row still joins as it did (its partners are locked too), so exactly the
    /// locked rows go. Parameters: the statement's, then each target's keys in `keyed`
    /// order (`(index into tables, meta, number of keys)`).
    pub fn by_keys_sql(&self, keyed: &[(usize, &TableMeta, usize)]) -> String {
        let mut parts = vec![format!("({})", self.selection.as_deref().unwrap_or("TRUE"))];
        for (t, meta, rows) in keyed {
            parts.push(format!(
                "({})",
                join_keys_predicate(&self.tables[*t], meta, *rows)
            ));
        }
        format!(
            "DELETE {} FROM {} WHERE {}",
            self.target_list,
            self.from,
            parts.join(" AND ")
        )
    }
}

fn analyze_insert(i: ast::Insert) -> Result<Dml> {
    let on_duplicate = match &i.on {
        None => None,
        Some(ast::OnInsert::DuplicateKeyUpdate(assignments)) => {
            let mut columns = Vec::with_capacity(assignments.len());
            for a in assignments {
                match &a.target {
                    AssignmentTarget::ColumnName(name) => {
                        let c = last_ident(name)?;
                        if !columns.contains(&c) {
                            columns.push(c);
                        }
                    }
                    AssignmentTarget::Tuple(_) => {
                        return Err(Error::Refused(
                            "tuple assignment in ON DUPLICATE KEY UPDATE".into(),
                        ))
                    }
                }
            }
            Some(columns)
        }
        Some(_) => return Err(Error::Refused("INSERT … ON CONFLICT".into())),
    };
    if i.returning.is_some() || i.output.is_some() {
        return Err(Error::Refused("INSERT … RETURNING".into()));
    }
    let name = match &i.table {
        ast::TableObject::TableName(name) => name,
        _ => return Err(Error::Refused("INSERT into a table function".into())),
    };
    let table = table_ref(name)?;
    let mut next_param = 0;
    let (columns, cells) = match (&i.source, i.assignments.is_empty()) {
        (None, false) => {
            let mut columns = Vec::new();
            let mut row = Vec::new();
            for a in &i.assignments {
                match &a.target {
                    AssignmentTarget::ColumnName(n) => columns.push(last_ident(n)?),
                    AssignmentTarget::Tuple(_) => {
                        return Err(Error::Refused("tuple assignment in INSERT … SET".into()))
                    }
                }
                row.push(cell(&a.value, &mut next_param)?);
            }
            (columns, vec![row])
        }
        (Some(query), true) if !matches!(query.body.as_ref(), SetExpr::Values(_)) => {
            if i.replace_into {
                return Err(Error::Refused(
                    "REPLACE … SELECT (which existing rows it replaces is known only to the \
                     server; use INSERT … SELECT or REPLACE … VALUES)"
                        .into(),
                ));
            }
            if on_duplicate.is_some() {
                return Err(Error::Refused(
                    "INSERT … SELECT … ON DUPLICATE KEY UPDATE".into(),
                ));
            }
            if !matches!(query.body.as_ref(), SetExpr::Select(_)) || query.with.is_some() {
                return Err(Error::Refused(
                    "INSERT … SELECT over a UNION or WITH (select from one query block)".into(),
                ));
            }
            if !query.locks.is_empty() {
                return Err(Error::Refused("INSERT … SELECT … FOR UPDATE".into()));
            }
            let columns = i
                .columns
                .iter()
                .map(last_ident)
                .collect::<Result<Vec<_>>>()?;
            return Ok(Dml::Insert(InsertPlan {
                table,
                columns,
                rows: 0,
                cells: Vec::new(),
                on_duplicate: None,
                ignore: i.ignore,
                replace: false,
                select: Some(query.to_string()),
            }));
        }
        (Some(query), true) => {
            let values = match query.body.as_ref() {
                SetExpr::Values(values) if query.with.is_none() => values,
                _ => return Err(Error::Refused("INSERT … SELECT".into())),
            };
            let columns = i
                .columns
                .iter()
                .map(last_ident)
                .collect::<Result<Vec<_>>>()?;
            let mut cells = Vec::with_capacity(values.rows.len());
            for row in &values.rows {
                let row = row
                    .content
                    .iter()
                    .map(|e| cell(e, &mut next_param))
                    .collect::<Result<Vec<_>>>()?;
                cells.push(row);
            }
            (columns, cells)
        }
        _ => return Err(Error::Refused("INSERT without VALUES".into())),
    };
    if i.ignore && on_duplicate.is_some() {
        return Err(Error::Refused(
            "INSERT IGNORE … ON DUPLICATE KEY UPDATE".into(),
        ));
    }
    Ok(Dml::Insert(InsertPlan {
        table,
        columns,
        rows: cells.len(),
        cells,
        on_duplicate,
        ignore: i.ignore,
        replace: i.replace_into,
        select: None,
    }))
}

/// Classifies one VALUES expression, advancing the placeholder counter past it.
fn cell(expr: &ast::Expr, next_param: &mut usize) -> Result<Cell> {
    use ast::{Expr, UnaryOperator, Value as V};
    let literal = |v: &V, negative: bool| -> Option<Cell> {
        let sign = if negative { "-" } else { "" };
        match v {
            V::Number(n, false) => {
                let n = format!("{sign}{n}");
                Some(Cell::Literal(if let Ok(i) = n.parse::<i64>() {
                    mysql_async::Value::Int(i)
                } else if let Ok(u) = n.parse::<u64>() {
                    mysql_async::Value::UInt(u)
                } else {
                    mysql_async::Value::Bytes(n.into_bytes())
                }))
            }
            // Parsed without unescaping: a backslash escape would have to be decoded the
            // way the server does; leave such keys to the server (Computed).
            V::SingleQuotedString(s) | V::DoubleQuotedString(s)
                if !negative && !s.contains('\\') =>
            {
                let quote = if matches!(v, V::SingleQuotedString(_)) {
                    "'"
                } else {
                    "\""
                };
                Some(Cell::Literal(mysql_async::Value::Bytes(
                    s.replace(&quote.repeat(2), quote).into_bytes(),
                )))
            }
            V::Null if !negative => Some(Cell::Literal(mysql_async::Value::NULL)),
            // X'00FF': the bytes themselves (an odd digit count is the server's error).
            V::HexStringLiteral(h) if !negative && h.len() % 2 == 0 => (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).ok())
                .collect::<Option<Vec<u8>>>()
                .map(|b| Cell::Literal(mysql_async::Value::Bytes(b))),
            _ => None,
        }
    };
    let found = match expr {
        Expr::Value(v) if matches!(v.value, V::Placeholder(_)) => {
            *next_param += 1;
            return Ok(Cell::Param(*next_param - 1));
        }
        Expr::Value(v) => literal(&v.value, false),
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr: inner,
        } => match inner.as_ref() {
            Expr::Value(v) => literal(&v.value, true),
            _ => None,
        },
        Expr::Identifier(id)
            if id.quote_style.is_none() && id.value.eq_ignore_ascii_case("DEFAULT") =>
        {
            Some(Cell::Default)
        }
        _ => None,
    };
    *next_param += count_placeholders(&expr.to_string())?;
    Ok(found.unwrap_or(Cell::Computed))
}

/// The tables the UPDATE and DELETE statements of `sql` (one or several statements) may
/// write: every table they name outside subqueries (joined tables included, so possibly
/// more than are written). For write isolation of statements without an XID; INSERT and
/// other statements are not listed. Refuses derived tables and table functions as write
/// targets, whose rows cannot be named.
pub fn written_tables(sql: &str) -> Result<Vec<TableRef>> {
    let dialect = MySqlDialect {};
    let statements = Parser::new(&dialect)
        .with_options(ParserOptions::new().with_unescape(false))
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| Error::Parse(e.to_string()))?;
    let mut out: Vec<TableRef> = Vec::new();
    let add_twj = |twj: &TableWithJoins, out: &mut Vec<TableRef>| -> Result<()> {
        for factor in std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation)) {
            match factor {
                TableFactor::Table {
                    name, args: None, ..
                } => out.push(table_ref(name)?),
                _ => {
                    return Err(Error::Refused(
                        "a write over a derived table or table function".into(),
                    ))
                }
            }
        }
        Ok(())
    };
    for st in &statements {
        match st {
            Statement::Update(u) => {
                add_twj(&u.table, &mut out)?;
                if let Some(
                    ast::UpdateTableFromKind::BeforeSet(f) | ast::UpdateTableFromKind::AfterSet(f),
                ) = &u.from
                {
                    for twj in f {
                        add_twj(twj, &mut out)?;
                    }
                }
            }
            Statement::Delete(d) => {
                for name in &d.tables {
                    out.push(table_ref(name)?);
                }
                let (FromTable::WithFromKeyword(f) | FromTable::WithoutKeyword(f)) = &d.from;
                for twj in f.iter().chain(d.using.iter().flatten()) {
                    add_twj(twj, &mut out)?;
                }
            }
            _ => {}
        }
    }
    out.dedup();
    Ok(out)
}

/// Whether a `WITH …` statement only reads: a common table expression can also lead into
/// an INSERT, UPDATE or DELETE (MySQL 8), which must not pass as a read.
pub fn is_read_query(sql: &str) -> Result<bool> {
    let dialect = MySqlDialect {};
    let statements = Parser::new(&dialect)
        .with_options(ParserOptions::new().with_unescape(false))
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| Error::Parse(e.to_string()))?;
    Ok(statements.iter().all(|st| match st {
        Statement::Query(q) => !matches!(
            q.body.as_ref(),
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_)
        ),
        _ => false,
    }) && !statements.is_empty())
}

/// A locking read (`SELECT … FOR UPDATE`) inside a global transaction: which tables it
/// reads and how to learn the primary keys of the rows it locks, so the proxy can wait for
/// other global transactions' locks on exactly those rows (global read-committed).
#[derive(Debug, Clone, PartialEq)]
pub struct LockingSelect {
    /// Every table of the FROM clause with the name its columns are qualified by.
    pub tables: Vec<(TableRef, String)>,
    /// ` FROM …` as written.
    from: String,
    /// ` WHERE … [ORDER BY … LIMIT …]`: ORDER BY and LIMIT are kept only when they select
    /// among the same rows the keys SELECT returns (no grouping, DISTINCT or function in
    /// the select list); otherwise the keys SELECT covers every row the WHERE matches, a
    /// superset, which may only make the proxy wait more, never less.
    filter: String,
}

/// `Ok(None)` when `sql` is not a `SELECT … FOR UPDATE`; refuses locking reads whose rows
/// cannot be named by primary key (derived tables, table functions).
pub fn analyze_locking_select(sql: &str) -> Result<Option<LockingSelect>> {
    let dialect = MySqlDialect {};
    let mut statements = Parser::new(&dialect)
        .with_options(ParserOptions::new().with_unescape(false))
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| Error::Parse(e.to_string()))?;
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
    let mut tables = Vec::new();
    let mut factors = Vec::new();
    for twj in &select.from {
        factors.push(&twj.relation);
        factors.extend(twj.joins.iter().map(|j| &j.relation));
    }
    for factor in factors {
        match factor {
            TableFactor::Table {
                name,
                alias,
                args: None,
                ..
            } => {
                let table = table_ref(name)?;
                let qualifier = match alias {
                    Some(a) => quote_ident(&ident_name(&a.name)),
                    None => name.to_string(),
                };
                tables.push((table, qualifier));
            }
            _ => {
                return Err(Error::Refused(
                    "SELECT … FOR UPDATE over a derived table or table function".into(),
                ))
            }
        }
    }
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
                    .is_some_and(|c| c.ty.kind == crate::value::TypeKind::Timestamp);
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
    ) -> Result<Vec<crate::LockKey>> {
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
                    let mut v = crate::TypedValue::from_mysql(value, col)?;
                    if let Some(c) = meta
                        .column(pk)
                        .filter(|c| c.ty.kind == crate::value::TypeKind::Timestamp)
                    {
                        v = crate::TypedValue::timestamp_from_epoch(c.ty.clone(), &v.value, pk)?;
                    }
                    null |= v.is_null();
                    parts.push(v.key_bytes());
                }
                if !null {
                    keys.push(crate::LockKey::new(&meta.name, parts)?);
                }
            }
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }
}

impl UpdatePlan {
    /// The SET columns spelled as the table spells them (column names are case-insensitive
    /// in MySQL, image rows are keyed by the table's spelling): what
    /// [`crate::UndoItem::set_columns`] must hold. Primary-key columns are included; see
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
    fn key_assignments(&self, meta: &TableMeta) -> Result<Vec<Option<KeyAssignment<'_>>>> {
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
    /// the statement's SET-clause parameters `set_params`), then each row's key.
    pub fn new_keys_params(
        &self,
        meta: &TableMeta,
        set_params: &[mysql_async::Value],
        keys: &[Vec<mysql_async::Value>],
    ) -> Result<Vec<mysql_async::Value>> {
        let mut out = Vec::new();
        for (_, range) in self.key_assignments(meta)?.into_iter().flatten() {
            out.extend_from_slice(
                set_params
                    .get(range)
                    .ok_or_else(|| Error::Refused("missing parameters in the SET clause".into()))?,
            );
        }
        out.extend(keys.concat());
        Ok(out)
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
    /// (at most [`crate::undo_sql::MAX_STATEMENT_PARAMS`] in all: the caller splits larger
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
}

/// What the server reported about auto-increment for one INSERT, and the session setting
/// that decides what `DEFAULT` and `0` mean for an auto-increment column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoIncrement {
    /// The OK packet's last insert id: the first value the statement generated (0: none).
    pub last_insert_id: u64,
    /// `@@auto_increment_increment` of the session.
    pub increment: u64,
    /// `@@sql_mode` contains NO_AUTO_VALUE_ON_ZERO: then `0` and `DEFAULT` store 0
    /// instead of generating (MariaDB evaluates `DEFAULT` of such a column to 0).
    pub no_auto_value_on_zero: bool,
}

impl InsertPlan {
    /// The primary key of every inserted row, in VALUES order, as parameters for
    /// [`Self::after_image_sql`].
    ///
    /// Keys come from the statement (literals, `?` parameters) or, for an auto-increment
    /// key the server generates (omitted or `NULL`; `DEFAULT` and `0` unless
    /// NO_AUTO_VALUE_ON_ZERO), from the last insert id plus the increment per generated
    /// row: InnoDB reserves one consecutive block for an insert whose row count is known.
    /// Refused: keys the server computes (expressions, non-auto defaults) and a statement
    /// that mixes explicit and generated auto-increment keys (an explicit key moves the
    /// counter mid-statement). The caller must check that the after image finds exactly
    /// [`Self::rows`] rows and abort the local transaction otherwise.
    pub fn row_keys(
        &self,
        meta: &TableMeta,
        params: &[mysql_async::Value],
        auto_increment: AutoIncrement,
    ) -> Result<Vec<Vec<mysql_async::Value>>> {
        let listed = self.listed(meta)?;
        let auto = meta.auto_increment_column().map(|c| c.name.as_str());
        let zero_is_value = auto_increment.no_auto_value_on_zero;
        let mut generated = 0u64;
        let mut explicit_auto = false;
        let mut keys = Vec::with_capacity(self.cells.len());
        for row in &self.cells {
            let mut key = Vec::with_capacity(meta.primary_key.len());
            for pk in &meta.primary_key {
                let is_auto = auto.is_some_and(|a| same_name(a, pk));
                let position = listed.iter().position(|c| same_name(c, pk));
                // `None`: the server picks (omitted, NULL, or DEFAULT/0 as sql_mode says).
                let given =
                    match position.map(|p| &row[p]) {
                        None => None,
                        Some(Cell::Default) if is_auto && zero_is_value => {
                            Some(mysql_async::Value::UInt(0))
                        }
                        Some(Cell::Default) => None,
                        Some(Cell::Param(i)) => Some(params.get(*i).cloned().ok_or_else(|| {
                            Error::Refused(format!("missing parameter {}", i + 1))
                        })?),
                        Some(Cell::Literal(v)) => Some(v.clone()),
                        Some(Cell::Computed) => {
                            return Err(Error::Refused(format!(
                                "primary-key column `{pk}` set by an expression \
                             (use a literal or a parameter)"
                            )))
                        }
                    };
                let given = match given {
                    Some(mysql_async::Value::NULL) => None,
                    Some(v) if is_auto && !zero_is_value && is_zero(&v) => None,
                    other => other,
                };
                let value = match given {
                    None if is_auto => {
                        if auto_increment.last_insert_id == 0 {
                            return Err(Error::Refused(
                                "generated auto-increment key without a last insert id".into(),
                            ));
                        }
                        let id = auto_increment
                            .increment
                            .checked_mul(generated)
                            .and_then(|step| auto_increment.last_insert_id.checked_add(step))
                            .ok_or_else(|| Error::Refused("auto-increment overflow".into()))?;
                        generated += 1;
                        mysql_async::Value::UInt(id)
                    }
                    None => {
                        return Err(Error::Refused(format!(
                            "primary-key column `{pk}` left to its default"
                        )))
                    }
                    Some(v) => {
                        explicit_auto |= is_auto;
                        v
                    }
                };
                key.push(value);
            }
            keys.push(key);
        }
        if explicit_auto && generated > 0 {
            return Err(Error::Refused(
                "INSERT mixing explicit and generated auto-increment keys".into(),
            ));
        }
        Ok(keys)
    }

    /// `SELECT <pk>, <all other columns> FROM <table> WHERE (<pk> = ? AND …) OR …` for
    /// `rows` keys from [`Self::row_keys`].
    pub fn after_image_sql(&self, meta: &TableMeta, rows: usize) -> String {
        let relation = match &self.table.schema {
            Some(schema) => format!("{}.{}", quote_ident(schema), quote_ident(&self.table.table)),
            None => quote_ident(&self.table.table),
        };
        let mut sql = select_sql(
            meta,
            &relation,
            &format!(" WHERE {}", keys_predicate(meta, rows)),
        );
        // The rows are this transaction's own fresh inserts; no lock to take.
        sql.truncate(sql.len() - " FOR UPDATE".len());
        sql
    }
}

/// A key an `INSERT … ON DUPLICATE KEY UPDATE` row may hit: the key's columns and the
/// row's values for them.
pub type ConflictKey = (Vec<String>, Vec<mysql_async::Value>);

impl InsertPlan {
    /// The ON DUPLICATE KEY UPDATE columns spelled as the table spells them. Refuses an
    /// assignment to a primary-key or unique-key column: the rows are found again by those
    /// keys, before and after.
    pub fn on_duplicate_columns_in(&self, meta: &TableMeta) -> Result<Vec<String>> {
        let Some(cols) = &self.on_duplicate else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(cols.len());
        for column in cols {
            let known = meta
                .columns
                .iter()
                .find(|c| same_name(&c.name, column))
                .ok_or_else(|| Error::MissingColumn(column.clone()))?;
            let keyed = meta
                .primary_key
                .iter()
                .chain(meta.unique_keys.iter().flatten())
                .any(|k| same_name(k, &known.name));
            if keyed {
                return Err(Error::Refused(format!(
                    "ON DUPLICATE KEY UPDATE of key column `{}`",
                    known.name
                )));
            }
            out.push(known.name.clone());
        }
        Ok(out)
    }

    /// For INSERT … ON DUPLICATE KEY UPDATE, REPLACE and INSERT IGNORE (the statement
    /// [`Self::statement`] names): every key each VALUES row can collide on —
    /// its primary key when the statement gives it, and each unique key whose values it
    /// gives (a NULL part never collides). Refused: key values the server computes or
    /// defaults, and a row with a generated primary key and no other key to find it by
    /// (the last insert id does not say which rows were new when some rows collide).
    /// Empty when no row can collide (generated keys, no unique key): a plain INSERT.
    /// The statement's kind as messages name it.
    pub fn statement(&self) -> &'static str {
        match (self.replace, self.ignore, &self.on_duplicate, &self.select) {
            (true, ..) => "REPLACE",
            (_, true, _, None) => "INSERT IGNORE",
            (_, true, _, Some(_)) => "INSERT IGNORE … SELECT",
            (_, _, Some(_), _) => "INSERT … ON DUPLICATE KEY UPDATE",
            (_, _, _, Some(_)) => "INSERT … SELECT",
            _ => "INSERT",
        }
    }

    pub fn conflict_keys(
        &self,
        meta: &TableMeta,
        params: &[mysql_async::Value],
        no_auto_value_on_zero: bool,
    ) -> Result<Vec<ConflictKey>> {
        let listed = self.listed(meta)?;
        let auto = meta.auto_increment_column().map(|c| c.name.as_str());
        let mut out: Vec<ConflictKey> = Vec::new();
        let mut keys: Vec<&Vec<String>> = vec![&meta.primary_key];
        keys.extend(meta.unique_keys.iter());
        let mut any_key = false;
        let mut missing = 0;
        for row in &self.cells {
            let mut found = false;
            for columns in keys.iter() {
                let mut values = Vec::with_capacity(columns.len());
                let mut usable = true;
                for column in columns.iter() {
                    let is_auto = auto.is_some_and(|a| same_name(a, column));
                    let given = match listed
                        .iter()
                        .position(|c| same_name(c, column))
                        .map(|p| &row[p])
                    {
                        Some(Cell::Param(i)) => Some(params.get(*i).cloned().ok_or_else(|| {
                            Error::Refused(format!("missing parameter {}", i + 1))
                        })?),
                        Some(Cell::Literal(v)) => Some(v.clone()),
                        Some(Cell::Default) if is_auto && no_auto_value_on_zero => {
                            Some(mysql_async::Value::UInt(0))
                        }
                        Some(Cell::Default) | None if is_auto => None,
                        Some(Cell::Computed) => {
                            return Err(Error::Refused(format!(
                                "key column `{column}` set by an expression in {} (use a \
                                 literal or a parameter)",
                                self.statement()
                            )))
                        }
                        Some(Cell::Default) | None => {
                            return Err(Error::Refused(format!(
                                "key column `{column}` left to its default in {}",
                                self.statement()
                            )))
                        }
                    };
                    match given {
                        Some(v) if is_auto && !no_auto_value_on_zero && is_zero(&v) => {
                            usable = false
                        }
                        Some(mysql_async::Value::NULL) | None => usable = false,
                        Some(v) => values.push(v),
                    }
                }
                // An unusable key (generated or NULL) cannot collide; the row must then be
                // found by another one.
                if usable {
                    found = true;
                    out.push(((*columns).clone(), values));
                }
            }
            any_key |= found;
            missing += usize::from(!found);
        }
        if missing == self.cells.len() && meta.unique_keys.is_empty() {
            // Generated keys and nothing else unique: no row can collide.
            return Ok(Vec::new());
        }
        if missing > 0 || !any_key {
            return Err(Error::Refused(format!(
                "{} row with a generated primary key and no unique key value to find it by",
                self.statement()
            )));
        }
        out.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        out.dedup();
        Ok(out)
    }

    /// `SELECT <image columns> FROM t WHERE (<key 1> = ?) OR … [FOR UPDATE]` over
    /// [`Self::conflict_keys`]: the rows the statement can update (before) and, read again
    /// afterwards without the lock, every row it updated or inserted.
    pub fn conflict_image_sql(
        &self,
        meta: &TableMeta,
        keys: &[ConflictKey],
        lock: bool,
    ) -> Result<(String, Vec<mysql_async::Value>)> {
        let params: Vec<mysql_async::Value> = keys.iter().flat_map(|(_, v)| v.clone()).collect();
        if params.len() > crate::undo_sql::MAX_STATEMENT_PARAMS {
            return Err(Error::Refused(
                "INSERT … ON DUPLICATE KEY UPDATE with more key values than one statement \
                 can carry (split it)"
                    .into(),
            ));
        }
        let predicate = if keys.is_empty() {
            "FALSE".to_string()
        } else {
            keys.iter()
                .map(|(cols, _)| {
                    let one = cols
                        .iter()
                        .map(|c| format!("{} = ?", quote_ident(c)))
                        .collect::<Vec<_>>()
                        .join(" AND ");
                    format!("({one})")
                })
                .collect::<Vec<_>>()
                .join(" OR ")
        };
        Ok((
            format!(
                "SELECT {} FROM {} WHERE {predicate}{}",
                meta.image_columns(None),
                crate::undo_sql::quote_table(&meta.name),
                if lock { " FOR UPDATE" } else { "" }
            ),
            params,
        ))
    }

    /// For INSERT … SELECT: where each primary-key column (in key order) sits among the
    /// SELECT's columns, `None` when the column list leaves it out (the server fills it:
    /// refused unless it is the auto-increment column).
    pub fn select_key_positions(&self, meta: &TableMeta) -> Result<Vec<Option<usize>>> {
        let listed = self.listed(meta)?;
        let auto = meta.auto_increment_column().map(|c| c.name.as_str());
        meta.primary_key
            .iter()
            .map(|pk| {
                let at = listed.iter().position(|c| same_name(c, pk));
                if at.is_none() && !auto.is_some_and(|a| same_name(a, pk)) {
                    return Err(Error::Refused(format!(
                        "INSERT … SELECT leaving primary-key column `{pk}` to its default"
                    )));
                }
                Ok(at)
            })
            .collect()
    }

    /// The columns each VALUES row lists, in order.
    fn listed<'a>(&'a self, meta: &'a TableMeta) -> Result<Vec<&'a str>> {
        let listed: Vec<&str> = if self.columns.is_empty() {
            meta.columns
                .iter()
                .filter(|c| !c.invisible)
                .map(|c| c.name.as_str())
                .collect()
        } else {
            self.columns.iter().map(String::as_str).collect()
        };
        if let Some(row) = self.cells.iter().find(|r| r.len() != listed.len()) {
            return Err(Error::Refused(format!(
                "INSERT row with {} values for {} columns",
                row.len(),
                listed.len()
            )));
        }
        Ok(listed)
    }
}

fn is_zero(v: &mysql_async::Value) -> bool {
    match v {
        mysql_async::Value::Int(0) | mysql_async::Value::UInt(0) => true,
        mysql_async::Value::Bytes(b) => b.iter().all(|c| *c == b'0') && !b.is_empty(),
        _ => false,
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
}

fn select_sql(meta: &TableMeta, relation: &str, filter: &str) -> String {
    format!(
        "SELECT {} FROM {relation}{filter} FOR UPDATE",
        meta.image_columns(None)
    )
}

/// `SELECT <image columns> FROM <schema>.<table> WHERE (<pk> = ? AND …) OR …` for `rows`
/// keys: the after image of rows the branch already holds locked (parameters: each row's
/// key, as [`crate::Row::primary_key`] gives it). Read with [`crate::RowImage::from_image`].
pub fn rows_by_keys_sql(meta: &TableMeta, rows: usize) -> String {
    format!(
        "SELECT {} FROM {} WHERE {}",
        meta.image_columns(None),
        crate::undo_sql::quote_table(&meta.name),
        keys_predicate(meta, rows)
    )
}

/// `(pk1 = ? AND pk2 = ?) OR …` for `rows` keys; `FALSE` for none, so an empty lock set
/// writes nothing rather than everything.
fn keys_predicate(meta: &TableMeta, rows: usize) -> String {
    if rows == 0 {
        return "FALSE".into();
    }
    let one = meta
        .primary_key
        .iter()
        .map(|c| format!("{} = ?", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(" AND ");
    vec![format!("({one})"); rows].join(" OR ")
}

fn filter(
    selection: Option<&ast::Expr>,
    order_by: &[ast::OrderByExpr],
    limit: Option<&ast::Expr>,
) -> String {
    let mut out = String::new();
    if let Some(selection) = selection {
        out.push_str(&format!(" WHERE {selection}"));
    }
    if !order_by.is_empty() {
        let order = order_by
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        out.push_str(&format!(" ORDER BY {order}"));
    }
    if let Some(limit) = limit {
        out.push_str(&format!(" LIMIT {limit}"));
    }
    out
}

fn single_table(t: &TableWithJoins, verb: &str) -> Result<TableRef> {
    match &t.relation {
        TableFactor::Table {
            name, args: None, ..
        } => table_ref(name),
        _ => Err(Error::Refused(format!(
            "{verb} of something that is not a plain table"
        ))),
    }
}

fn table_ref(name: &ObjectName) -> Result<TableRef> {
    let parts = name
        .0
        .iter()
        .map(|p| {
            p.as_ident()
                .map(ident_name)
                .ok_or_else(|| Error::Refused(format!("computed table name {name}")))
        })
        .collect::<Result<Vec<_>>>()?;
    match parts.as_slice() {
        [table] => Ok(TableRef {
            schema: None,
            table: table.clone(),
        }),
        [schema, table] => Ok(TableRef {
            schema: Some(schema.clone()),
            table: table.clone(),
        }),
        _ => Err(Error::Refused(format!("table name {name}"))),
    }
}

/// `t.col` and `col` both name `col`: there is only one table.
fn last_ident(name: &ObjectName) -> Result<String> {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(ident_name)
        .ok_or_else(|| Error::Refused(format!("column name {name}")))
}

/// The identifier's name. Parsing without unescaping leaves a quoted identifier's doubled
/// quotes in place (`` `a``b` `` keeps `` a``b ``), so undo that here.
fn ident_name(ident: &ast::Ident) -> String {
    match ident.quote_style {
        Some(q) => {
            let doubled: String = [q, q].iter().collect();
            ident.value.replace(&doubled, &q.to_string())
        }
        None => ident.value.clone(),
    }
}

/// The table's spelling of a column a multi-table UPDATE assigns. Refuses a primary-key
/// column: the join's rows are found again by key (a single-table UPDATE may change keys).
fn assignable(meta: &TableMeta, column: &str) -> Result<String> {
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

/// MySQL compares column names case-insensitively.
fn same_name(a: &str, b: &str) -> bool {
    a == b || a.to_lowercase() == b.to_lowercase()
}

fn count_placeholders(sql: &str) -> Result<usize> {
    let tokens = Tokenizer::new(&MySqlDialect {}, sql)
        .with_unescape(false)
        .tokenize()
        .map_err(|e| Error::Parse(e.to_string()))?;
    Ok(tokens
        .iter()
        .filter(|t| matches!(t, Token::Placeholder(_)))
        .count())
}

fn first_words(sql: &str) -> String {
    sql.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{ColumnMeta, TableName};
    use crate::value::{ColumnType, TypeKind};

    fn meta() -> TableMeta {
        let col = |name: &str| ColumnMeta {
            name: name.into(),
            ty: ColumnType::new(TypeKind::Int),
            on_update_now: false,
            auto_increment: false,
            generated: false,
            invisible: false,
            nullable: true,
        };
        TableMeta {
            name: TableName::new("shop", "account"),
            columns: vec![col("a"), col("id"), col("balance"), col("region")],
            primary_key: vec!["region".into(), "id".into()],
            unique_keys: Vec::new(),
            engine: "InnoDB".into(),
            triggers: Vec::new(),
            cascades: Vec::new(),
            definition: String::new(),
        }
    }

    fn update(sql: &str) -> UpdatePlan {
        match analyze(sql).unwrap() {
            Dml::Update(u) => u,
            other => panic!("{other:?}"),
        }
    }

    fn refused(sql: &str) -> String {
        match analyze(sql) {
            Err(Error::Refused(why)) => why,
            other => panic!("{sql}: expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn update_before_image_keeps_predicate_order_and_limit() {
        let u = update(
            "/*+ XID('x') */ UPDATE shop.account SET balance = balance - ?, a = 'x?y' \
             WHERE id = ? AND name = 'a\\\\b' ORDER BY id DESC LIMIT 10",
        );
        assert_eq!(
            u.table,
            TableRef {
                schema: Some("shop".into()),
                table: "account".into()
            }
        );
        assert_eq!(u.set_columns, ["balance", "a"]);
        assert_eq!(
            u.set_params, 1,
            "the ? inside a string literal is no parameter"
        );
        assert_eq!(
            u.before_image_sql(&meta()).unwrap(),
            "SELECT `region`, `id`, `a`, `balance` FROM shop.account \
             WHERE id = ? AND name = 'a\\\\b' ORDER BY id DESC LIMIT 10 FOR UPDATE"
        );
        assert_eq!(
            u.by_keys_sql(&meta(), 2),
            "UPDATE shop.account SET balance = balance - ?, a = 'x?y' \
             WHERE (`region` = ? AND `id` = ?) OR (`region` = ? AND `id` = ?) ORDER BY id DESC"
        );
    }

    #[test]
    fn update_with_alias_and_backquotes() {
        let u = update("UPDATE `acc``t` AS t SET t.balance = 0 WHERE t.id IN (1, 2)");
        assert_eq!(u.table.table, "acc`t");
        assert_eq!(u.set_columns, ["balance"]);
        assert_eq!(
            u.before_image_sql(&meta()).unwrap(),
            "SELECT `region`, `id`, `a`, `balance` FROM `acc``t` AS t \
             WHERE t.id IN (1, 2) FOR UPDATE"
        );
    }

    /// Re-printed predicates must mean exactly what the client wrote; where sqlparser
    /// normalizes spelling, the second form is an equivalent MySQL spelling.
    #[test]
    fn literals_are_reprinted_faithfully() {
        for (predicate, printed) in [
            ("n = 'it''s'", None),
            (r"n = 'it\'s'", None),
            (r#"n = "dq""x""#, None),
            (r"n = 'tab\there\n'", None),
            ("n = _utf8mb4 'é' COLLATE utf8mb4_bin", None),
            ("n = X'00FF' AND k = B'101'", None),
            ("m = 0x00ff", Some("m = X'00ff'")),
            (r"n LIKE 'a\_%' ESCAPE '\\'", None),
            ("d = DATE '2024-01-01' AND f = 1.50e3 AND g = -0.0", None),
        ] {
            let u = update(&format!("UPDATE account SET a = 1 WHERE {predicate}"));
            assert_eq!(
                u.before_image_sql(&meta()).unwrap(),
                format!(
                    "SELECT `region`, `id`, `a`, `balance` FROM account WHERE {} FOR UPDATE",
                    printed.unwrap_or(predicate)
                )
            );
        }
    }

    #[test]
    fn primary_key_update_finds_rows_by_their_new_keys() {
        let m = meta();
        let u = update("UPDATE account SET a = ?, ID = id + ? WHERE balance > ? ORDER BY id DESC");
        assert!(u.changes_key(&m));
        assert_eq!(u.set_columns_in(&m).unwrap(), ["a", "id"]);
        // Old key, then the new key: `region` unchanged, `id` by the SET expression.
        assert_eq!(
            u.new_keys_sql(&m, 2).unwrap().unwrap(),
            "SELECT `region`, `id`, `region`, (id + ?) FROM account \
             WHERE (`region` = ? AND `id` = ?) OR (`region` = ? AND `id` = ?)"
        );
        let p = u
            .new_keys_params(
                &m,
                &[mysql_async::Value::from(9), mysql_async::Value::from(100)],
                &[vec!["eu".into(), 1.into()]],
            )
            .unwrap();
        assert_eq!(p, [100.into(), "eu".into(), 1.into()].to_vec());
        // A key computed from a column assigned before it: the locked row cannot say it.
        let u = update("UPDATE account SET balance = 1, id = balance + 1 WHERE id = 4");
        assert!(matches!(
            u.before_image_sql(&m),
            Err(Error::Refused(why)) if why.contains("assigns before it")
        ));
        let u = update("UPDATE account SET id = 1, id = 2");
        assert!(matches!(u.before_image_sql(&m), Err(Error::Refused(w)) if w.contains("twice")));
        let u = update("UPDATE account SET BALANCE = 5 WHERE id = 4");
        assert!(!u.changes_key(&m));
        assert_eq!(u.new_keys_sql(&m, 1).unwrap(), None);
        let u = update("UPDATE account SET BALANCE = 5, Région = 1 WHERE id = 4");
        assert!(matches!(u.set_columns_in(&m), Err(Error::MissingColumn(c)) if c == "Région"));
        let u = update("UPDATE account SET BALANCE = 5, A = 1 WHERE id = 4");
        assert_eq!(u.set_columns_in(&m).unwrap(), ["balance", "a"]);
    }

    #[test]
    fn multi_table_delete_images_each_target_and_narrows_to_their_keys() {
        let m = meta();
        for sql in [
            "DELETE a, b FROM account AS a JOIN shop.other b ON b.id = a.id WHERE a.balance < ?",
            "DELETE FROM a, b USING account AS a JOIN shop.other b ON b.id = a.id WHERE a.balance < ?",
        ] {
            let Dml::DeleteJoin(d) = analyze(sql).unwrap() else {
                panic!("{sql}")
            };
            assert_eq!(d.targets, [0, 1], "{sql}");
            assert_eq!(d.tables[1].table.schema.as_deref(), Some("shop"));
            assert_eq!(
                d.before_image_sql(0, &m),
                format!(
                    "SELECT `a`.`region` AS `region`, `a`.`id` AS `id`, `a`.`a` AS `a`, \
                     `a`.`balance` AS `balance` FROM account AS a JOIN shop.other b ON b.id = \
                     a.id WHERE a.balance < ? FOR UPDATE"
                ),
                "{sql}"
            );
            assert_eq!(
                d.by_keys_sql(&[(0, &m, 1), (1, &m, 0)]),
                "DELETE a, b FROM account AS a JOIN shop.other b ON b.id = a.id WHERE \
                 (a.balance < ?) AND ((`a`.`region` = ? AND `a`.`id` = ?)) AND (FALSE)",
                "{sql}"
            );
        }
        let Dml::DeleteJoin(d) = analyze("DELETE t1 FROM t1, t2 WHERE t1.id = t2.id").unwrap()
        else {
            panic!()
        };
        assert_eq!(d.targets, [0]);
        assert!(refused("DELETE x FROM t1 JOIN t2").contains("names no single table"));
    }

    #[test]
    fn delete_before_image_and_by_keys() {
        let Dml::Delete(d) = analyze("DELETE FROM account WHERE balance < 0 LIMIT 5").unwrap()
        else {
            panic!()
        };
        assert_eq!(
            d.before_image_sql(&meta()),
            "SELECT `region`, `id`, `a`, `balance` FROM account WHERE balance < 0 LIMIT 5 FOR UPDATE"
        );
        assert_eq!(
            d.by_keys_sql(&meta(), 1),
            "DELETE FROM account WHERE (`region` = ? AND `id` = ?)"
        );
        assert_eq!(d.by_keys_sql(&meta(), 0), "DELETE FROM account WHERE FALSE");
    }

    #[test]
    fn insert_values_are_counted() {
        let Dml::Insert(i) = analyze("INSERT INTO t (a, b) VALUES (1, 2), (3, ?)").unwrap() else {
            panic!()
        };
        assert_eq!(
            (i.columns.as_slice(), i.rows),
            (&["a".to_string(), "b".into()][..], 2)
        );
        let Dml::Insert(i) = analyze("INSERT INTO s.t SET a = 1, b = 2").unwrap() else {
            panic!()
        };
        assert_eq!((i.columns.len(), i.rows), (2, 1));
    }

    fn auto_meta() -> TableMeta {
        let mut m = meta();
        m.primary_key = vec!["id".into()];
        m.columns[1].auto_increment = true;
        m.columns[3].invisible = true;
        m
    }

    fn ai(last_insert_id: u64, increment: u64) -> AutoIncrement {
        AutoIncrement {
            last_insert_id,
            increment,
            no_auto_value_on_zero: false,
        }
    }

    #[test]
    fn default_and_zero_follow_no_auto_value_on_zero() {
        use mysql_async::Value as M;
        let i = insert("INSERT INTO t (id, a) VALUES (0, 1), (DEFAULT, 2), (NULL, 3)");
        assert_eq!(
            i.row_keys(&auto_meta(), &[], ai(8, 1)).unwrap(),
            [vec![M::UInt(8)], vec![M::UInt(9)], vec![M::UInt(10)]]
        );
        let strict = AutoIncrement {
            no_auto_value_on_zero: true,
            ..ai(8, 1)
        };
        // 0 and DEFAULT are stored as 0 there, so this statement mixes explicit and
        // generated keys.
        assert!(matches!(
            i.row_keys(&auto_meta(), &[], strict),
            Err(Error::Refused(why)) if why.contains("mixing")
        ));
        let zero = insert("INSERT INTO t (id, a) VALUES (DEFAULT, 1)");
        assert_eq!(
            zero.row_keys(&auto_meta(), &[], strict).unwrap(),
            [vec![M::UInt(0)]]
        );
    }

    fn insert(sql: &str) -> InsertPlan {
        match analyze(sql).unwrap() {
            Dml::Insert(i) => i,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn insert_keys_from_literals_parameters_and_auto_increment() {
        use mysql_async::Value as M;
        // Composite key from a literal and a parameter; the ? inside the string is text.
        let i = insert(
            "INSERT INTO t (a, region, id, balance) VALUES ('?', 'it''s', ?, ?), (1, 'x', -5, 2)",
        );
        let keys = i
            .row_keys(&meta(), &[M::from(7), M::from(9)], ai(0, 1))
            .unwrap();
        assert_eq!(
            keys,
            [
                vec![M::Bytes(b"it's".to_vec()), M::Int(7)],
                vec![M::Bytes(b"x".to_vec()), M::Int(-5)]
            ]
        );
        assert_eq!(
            i.after_image_sql(&meta(), 2),
            "SELECT `region`, `id`, `a`, `balance` FROM `t` \
             WHERE (`region` = ? AND `id` = ?) OR (`region` = ? AND `id` = ?)"
        );

        // Every form of "let the server pick" on an auto-increment key, multi-row.
        for sql in [
            "INSERT INTO t (a) VALUES (1), (2), (3)",
            "INSERT INTO t (id, a) VALUES (NULL, 1), (DEFAULT, 2), (?, 3)",
            "INSERT INTO t VALUES (1, NULL, 2), (1, NULL, 2), (1, NULL, 2)",
        ] {
            let keys = insert(sql)
                .row_keys(&auto_meta(), &[M::NULL], ai(100, 5))
                .unwrap();
            assert_eq!(
                keys,
                [vec![M::UInt(100)], vec![M::UInt(105)], vec![M::UInt(110)]],
                "{sql}"
            );
        }
        let i = insert("INSERT INTO t (id, a) VALUES (X'00ff', 1)");
        assert_eq!(
            i.row_keys(&auto_meta(), &[], ai(0, 1)).unwrap(),
            [vec![M::Bytes(vec![0, 255])]]
        );
        let i = insert("INSERT INTO s.t SET id = 18446744073709551615, a = 1");
        assert_eq!(
            i.row_keys(&auto_meta(), &[], ai(0, 1)).unwrap(),
            [vec![M::UInt(u64::MAX)]]
        );
    }

    #[test]
    fn insert_keys_the_server_computes_are_refused() {
        let refused_keys = |sql: &str, m: &TableMeta| match insert(sql).row_keys(m, &[], ai(1, 1)) {
            Err(Error::Refused(why)) => why,
            other => panic!("{sql}: {other:?}"),
        };
        assert!(refused_keys(
            "INSERT INTO t (id, a) VALUES (UUID_SHORT(), 1)",
            &auto_meta()
        )
        .contains("expression"));
        assert!(
            refused_keys("INSERT INTO t (id) VALUES (5), (NULL)", &auto_meta()).contains("mixing")
        );
        assert!(refused_keys("INSERT INTO t (a) VALUES (1)", &meta()).contains("default"));
        assert!(
            refused_keys(r"INSERT INTO t (id) VALUES ('a\'b')", &auto_meta())
                .contains("expression")
        );
        assert!(
            refused_keys("INSERT INTO t (id, a) VALUES (1)", &auto_meta()).contains("1 values")
        );
    }

    #[test]
    fn locking_select_keys_sql() {
        let m = std::sync::Arc::new(meta());
        let l = analyze_locking_select(
            "/*+ XID('rw-1') */ SELECT balance FROM shop.account WHERE id = ? ORDER BY id LIMIT 3 FOR UPDATE",
        )
        .unwrap()
        .unwrap();
        assert_eq!(l.tables.len(), 1);
        assert_eq!(
            l.keys_sql(std::slice::from_ref(&m)),
            "SELECT shop.account.`region`, shop.account.`id` FROM shop.account \
             WHERE id = ? ORDER BY id LIMIT 3 FOR UPDATE"
        );
        let l = analyze_locking_select(
            "SELECT COUNT(*) FROM account a JOIN account AS b ON a.id = b.a WHERE a.id > 1 LIMIT 1 FOR UPDATE",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            l.keys_sql(&[m.clone(), m.clone()]),
            "SELECT `a`.`region`, `a`.`id`, `b`.`region`, `b`.`id` \
             FROM account a JOIN account AS b ON a.id = b.a WHERE a.id > 1 FOR UPDATE",
            "an aggregate's LIMIT does not limit the locked rows"
        );
        assert!(analyze_locking_select("SELECT 1 FROM t").unwrap().is_none());
        assert!(is_read_query("WITH c AS (SELECT 1 AS a) SELECT a FROM c").unwrap());
        assert!(!is_read_query("WITH c AS (SELECT 1 AS a) UPDATE t SET b = 1").unwrap_or(false));
        assert!(analyze_locking_select("UPDATE t SET a = 1")
            .unwrap()
            .is_none());
        assert!(matches!(
            analyze_locking_select("SELECT * FROM (SELECT 1) AS d FOR UPDATE"),
            Err(Error::Refused(_))
        ));
    }

    #[test]
    fn update_join_images_and_key_narrowing() {
        let Dml::UpdateJoin(j) = analyze(
            "UPDATE shop.account AS a JOIN account b ON b.id = a.id + ? \
             SET a.balance = a.balance - ?, b.a = 'x' WHERE a.region = ?",
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!((j.from_params, j.set_params), (1, 1));
        let m = std::sync::Arc::new(meta());
        let metas = [m.clone(), m.clone()];
        assert_eq!(
            j.written(&metas).unwrap(),
            [(0, vec!["balance".to_string()]), (1, vec!["a".to_string()])]
        );
        assert_eq!(
            j.before_image_sql(1, &m),
            "SELECT `b`.`region` AS `region`, `b`.`id` AS `id`, `b`.`a` AS `a`, `b`.`balance` AS `balance` \
             FROM shop.account AS a JOIN account b ON b.id = a.id + ? WHERE a.region = ? FOR UPDATE"
        );
        assert_eq!(
            j.by_keys_sql(&[(0, &m, 1), (1, &m, 0)]),
            "UPDATE shop.account AS a JOIN account b ON b.id = a.id + ? \
             SET a.balance = a.balance - ?, b.a = 'x' WHERE (a.region = ?) \
             AND ((`a`.`region` = ? AND `a`.`id` = ?)) AND (FALSE)"
        );
        let Dml::UpdateJoin(j) =
            analyze("UPDATE account a JOIN account b ON a.id = b.id SET a.id = 1").unwrap()
        else {
            panic!()
        };
        assert!(matches!(j.written(&metas), Err(Error::Refused(w)) if w.contains("primary-key")));
        let Dml::UpdateJoin(j) =
            analyze("UPDATE account a JOIN account b ON a.id = b.id SET balance = 1").unwrap()
        else {
            panic!()
        };
        assert!(
            matches!(j.written(&metas), Err(Error::Refused(w)) if w.contains("no single table"))
        );
    }

    #[test]
    fn on_duplicate_key_update_conflict_keys() {
        use mysql_async::Value as M;
        let mut m = auto_meta();
        m.unique_keys = vec![vec!["a".into()]];
        let i = insert(
            "INSERT INTO t (id, a, balance) VALUES (NULL, 'x', 1), (7, ?, 2) \
             ON DUPLICATE KEY UPDATE balance = balance + VALUES(balance)",
        );
        assert_eq!(i.on_duplicate_columns_in(&m).unwrap(), ["balance"]);
        let keys = i.conflict_keys(&m, &[M::from("y")], false).unwrap();
        assert_eq!(
            keys,
            [
                (vec!["a".to_string()], vec![M::Bytes(b"x".to_vec())]),
                (vec!["a".to_string()], vec![M::Bytes(b"y".to_vec())]),
                (vec!["id".to_string()], vec![M::Int(7)]),
            ]
        );
        let (sql, params) = i.conflict_image_sql(&m, &keys, true).unwrap();
        assert_eq!(
            sql,
            "SELECT `id`, `a`, `balance`, `region` FROM `shop`.`account` \
             WHERE (`a` = ?) OR (`a` = ?) OR (`id` = ?) FOR UPDATE"
        );
        assert_eq!(params.len(), 3);
        // Key columns may not be assigned, nor computed, nor found by nothing.
        let i = insert("INSERT INTO t (id, a) VALUES (1, 'x') ON DUPLICATE KEY UPDATE a = 'z'");
        assert!(
            matches!(i.on_duplicate_columns_in(&m), Err(Error::Refused(w)) if w.contains("`a`"))
        );
        let i =
            insert("INSERT INTO t (id, a) VALUES (1, UUID()) ON DUPLICATE KEY UPDATE balance = 1");
        assert!(
            matches!(i.conflict_keys(&m, &[], false), Err(Error::Refused(w)) if w.contains("expression"))
        );
        let i =
            insert("INSERT INTO t (id, a) VALUES (NULL, NULL) ON DUPLICATE KEY UPDATE balance = 1");
        assert!(
            matches!(i.conflict_keys(&m, &[], false), Err(Error::Refused(w)) if w.contains("generated"))
        );
        // No unique key and a generated primary key: it can never collide.
        let i = insert("INSERT INTO t (a) VALUES (1) ON DUPLICATE KEY UPDATE balance = 1");
        assert!(i
            .conflict_keys(&auto_meta(), &[], false)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn written_tables_of_untagged_writes() {
        let t = |s: &str, tb: &str| TableRef {
            schema: (!s.is_empty()).then(|| s.to_string()),
            table: tb.into(),
        };
        assert_eq!(
            written_tables("UPDATE a JOIN s.b ON a.id = b.id SET a.x = 1; DELETE FROM c WHERE id IN (SELECT id FROM d); SELECT 1; INSERT INTO e VALUES (1)").unwrap(),
            [t("", "a"), t("s", "b"), t("", "c")]
        );
        assert_eq!(
            written_tables("DELETE x FROM x JOIN y USING (id)").unwrap(),
            [t("", "x"), t("", "y")]
        );
        assert!(written_tables("SELECT 1").unwrap().is_empty());
        assert!(written_tables("UPDATE (SELECT 1) AS d SET a = 1").is_err());
    }

    #[test]
    fn refused_shapes_name_the_construct() {
        assert!(refused("REPLACE INTO t SELECT * FROM u").contains("REPLACE … SELECT"));
        assert!(refused("INSERT INTO t SELECT 1 UNION SELECT 2").contains("UNION"));
        assert!(
            refused("INSERT INTO t SELECT * FROM u ON DUPLICATE KEY UPDATE a = 1")
                .contains("INSERT … SELECT … ON DUPLICATE KEY UPDATE")
        );
        assert!(
            refused("INSERT IGNORE INTO t VALUES (1) ON DUPLICATE KEY UPDATE a = 1")
                .contains("INSERT IGNORE … ON DUPLICATE KEY UPDATE")
        );
        assert!(refused("UPDATE t SET a = 1; DELETE FROM t").contains("2 statements"));
        assert!(refused("SELECT 1").contains("not INSERT, UPDATE or DELETE"));
        assert!(matches!(analyze("UPDATE SET"), Err(Error::Parse(_))));
    }

    #[test]
    fn replace_ignore_and_insert_select_are_planned() {
        let Dml::Insert(i) = analyze("REPLACE INTO t VALUES (1)").unwrap() else {
            panic!()
        };
        assert!(i.replace && !i.ignore && i.statement() == "REPLACE");
        let Dml::Insert(i) = analyze("INSERT IGNORE INTO t (id) VALUES (1), (2)").unwrap() else {
            panic!()
        };
        assert!(i.ignore && i.rows == 2 && i.statement() == "INSERT IGNORE");
        let Dml::Insert(i) =
            analyze("INSERT INTO t (id, v) SELECT id + ?, v FROM u WHERE w = ?").unwrap()
        else {
            panic!()
        };
        assert_eq!(
            i.select.as_deref(),
            Some("SELECT id + ?, v FROM u WHERE w = ?")
        );
        assert_eq!(i.statement(), "INSERT … SELECT");
    }
}
