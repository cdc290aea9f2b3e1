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

use rewind_undo_log::error::{Error, Result};
use rewind_undo_log::undo_sql::quote_ident;
use rewind_undo_log::TableMeta;

mod delete;
mod insert;
mod select;
#[cfg(test)]
mod tests;
mod update;

use delete::analyze_delete;
pub use delete::{DeletePlan, JoinDeletePlan};
use insert::analyze_insert;
pub use insert::{AutoIncrement, ConflictKey, InsertPlan};
pub use select::{analyze_locking_select, LockingSelect};
use update::analyze_update;
pub use update::{JoinUpdatePlan, UpdatePlan};

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

/// One table of a join.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinTable {
    pub table: TableRef,
    /// How columns of this table are qualified in SQL (`alias` or the name as written).
    qualifier: String,
    /// The bare alias or table name a SET target's qualifier names.
    name: String,
}

/// The statements of `sql`, parsed as MySQL without unescaping literals (so re-printed
/// predicates keep their exact original spelling).
fn parse(sql: &str) -> Result<Vec<Statement>> {
    Parser::new(&MySqlDialect {})
        .with_options(ParserOptions::new().with_unescape(false))
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| Error::Parse(e.to_string()))
}

/// Parses one DML statement and classifies it.
pub fn analyze(sql: &str) -> Result<Dml> {
    let mut statements = parse(sql)?;
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

/// Every table of `froms` (comma-separated references and their joins), in order, with
/// the qualifier its columns take. Refuses derived tables and table functions, naming the
/// `statement`.
fn join_tables(froms: &[TableWithJoins], statement: &str) -> Result<Vec<JoinTable>> {
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
                        "{statement} over a derived table or table function"
                    )))
                }
            }
        }
    }
    Ok(tables)
}

/// A multi-table statement's before image of table `t`: `SELECT <t's image columns> FROM
/// <the join> WHERE … FOR UPDATE`, which locks every joined row. A row joined several times
/// comes back several times; the caller keeps one per key.
fn join_image_sql(
    tables: &[JoinTable],
    from: &str,
    selection: Option<&str>,
    t: usize,
    meta: &TableMeta,
) -> String {
    format!(
        "SELECT {} FROM {from}{} FOR UPDATE",
        meta.image_columns(Some(&tables[t].qualifier)),
        selection.map(|w| format!(" WHERE {w}")).unwrap_or_default()
    )
}

/// A multi-table statement's condition narrowed to the locked keys:
/// `(<condition>) AND (<t1 keys>) AND …` for `keyed` = (index into `tables`, meta, number
/// of keys). Every locked row still joins as it did (its partners are locked too).
fn join_narrowed(
    tables: &[JoinTable],
    selection: Option<&str>,
    keyed: &[(usize, &TableMeta, usize)],
) -> String {
    let mut parts = vec![format!("({})", selection.unwrap_or("TRUE"))];
    for (t, meta, rows) in keyed {
        parts.push(format!(
            "({})",
            join_keys_predicate(&tables[*t], meta, *rows)
        ));
    }
    parts.join(" AND ")
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

/// The tables the UPDATE and DELETE statements of `sql` (one or several statements) may
/// write: every table they name outside subqueries (joined tables included, so possibly
/// more than are written). For write isolation of statements without an XID; INSERT and
/// other statements are not listed. Refuses derived tables and table functions as write
/// targets, whose rows cannot be named.
pub fn written_tables(sql: &str) -> Result<Vec<TableRef>> {
    let statements = parse(sql)?;
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
    let statements = parse(sql)?;
    Ok(statements.iter().all(|st| match st {
        Statement::Query(q) => !matches!(
            q.body.as_ref(),
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_)
        ),
        _ => false,
    }) && !statements.is_empty())
}

fn select_sql(meta: &TableMeta, relation: &str, filter: &str) -> String {
    format!(
        "SELECT {} FROM {relation}{filter} FOR UPDATE",
        meta.image_columns(None)
    )
}

/// `SELECT <image columns> FROM <schema>.<table> WHERE (<pk> = ? AND …) OR …` for `rows`
/// keys: the after image of rows the branch already holds locked (parameters: each row's
/// key, as [`rewind_undo_log::Row::primary_key`] gives it). Read with [`rewind_undo_log::RowImage::from_image`].
pub fn rows_by_keys_sql(meta: &TableMeta, rows: usize) -> String {
    format!(
        "SELECT {} FROM {} WHERE {}",
        meta.image_columns(None),
        rewind_undo_log::undo_sql::quote_table(&meta.name),
        keys_predicate(meta, rows)
    )
}

/// [`rows_by_keys_sql`] with the keys written in ([`literal_keys_predicate`]), to be sent as
/// text; `None` where the keys cannot be written in.
pub(crate) fn rows_by_literal_keys_sql(
    meta: &TableMeta,
    keys: &[Vec<mysql_async::Value>],
) -> Option<String> {
    Some(format!(
        "SELECT {} FROM {} WHERE {}",
        meta.image_columns(None),
        rewind_undo_log::undo_sql::quote_table(&meta.name),
        literal_keys_predicate(meta, keys)?
    ))
}

/// [`keys_predicate`] with the keys written in as literals, when every primary-key column
/// is an integer (whose literal is exact); `None` otherwise. A statement the client sent
/// as text carries its values in its SQL, so its narrowed write is a text no prepared
/// statement will be reused for: this lets it run as text, without a backend prepare.
pub(crate) fn literal_keys_predicate(
    meta: &TableMeta,
    keys: &[Vec<mysql_async::Value>],
) -> Option<String> {
    if keys.is_empty() {
        return Some("FALSE".into());
    }
    let columns = meta
        .primary_key
        .iter()
        .map(|pk| {
            meta.column(pk)
                .filter(|c| c.ty.kind == rewind_undo_log::TypeKind::Int)
                .map(|_| quote_ident(pk))
        })
        .collect::<Option<Vec<_>>>()?;
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        if key.len() != columns.len() {
            return None;
        }
        let one = columns
            .iter()
            .zip(key)
            .map(|(c, v)| match v {
                mysql_async::Value::Int(i) => Some(format!("{c} = {i}")),
                mysql_async::Value::UInt(u) => Some(format!("{c} = {u}")),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?
            .join(" AND ");
        out.push(format!("({one})"));
    }
    Some(out.join(" OR "))
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

/// The columns a condition pins to integer literals: `col = 7 [AND other = -2 …]`, each term
/// a column (bare or qualified) equal to an integer literal, either way round, and nothing
/// else: no other operator, no ORDER BY, no LIMIT. `None` for any other condition. A
/// statement whose condition pins the table's whole primary key this way touches that one
/// row or none ([`pinned_key`]).
fn pinned(
    selection: Option<&ast::Expr>,
    order_by: &[ast::OrderByExpr],
    limit: Option<&ast::Expr>,
) -> Option<Vec<(String, mysql_async::Value)>> {
    if !order_by.is_empty() || limit.is_some() {
        return None;
    }
    let mut out = Vec::new();
    equalities(selection?, &mut out)?;
    Some(out)
}

fn equalities(e: &ast::Expr, out: &mut Vec<(String, mysql_async::Value)>) -> Option<()> {
    use ast::{BinaryOperator as Op, Expr, UnaryOperator, Value as V};
    let column = |e: &Expr| match e {
        Expr::Identifier(id) => Some(ident_name(id)),
        Expr::CompoundIdentifier(parts) => parts.last().map(ident_name),
        _ => None,
    };
    let integer = |e: &Expr| {
        let (v, sign) = match e {
            Expr::Value(v) => (&v.value, ""),
            Expr::UnaryOp {
                op: UnaryOperator::Minus,
                expr,
            } => match expr.as_ref() {
                Expr::Value(v) => (&v.value, "-"),
                _ => return None,
            },
            _ => return None,
        };
        match v {
            V::Number(n, false) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                let n = format!("{sign}{n}");
                match n.parse::<i64>() {
                    Ok(i) => Some(mysql_async::Value::Int(i)),
                    Err(_) => n.parse::<u64>().ok().map(mysql_async::Value::UInt),
                }
            }
            _ => None,
        }
    };
    match e {
        Expr::Nested(inner) => equalities(inner, out),
        Expr::BinaryOp {
            left,
            op: Op::And,
            right,
        } => {
            equalities(left, out)?;
            equalities(right, out)
        }
        Expr::BinaryOp {
            left,
            op: Op::Eq,
            right,
        } => {
            let term = match (column(left), integer(right)) {
                (Some(c), Some(v)) => (c, v),
                _ => (column(right)?, integer(left)?),
            };
            out.push(term);
            Some(())
        }
        _ => None,
    }
}

/// The one primary key `pinned` ([`pinned`]) names: when it pins exactly the table's
/// primary-key columns, each once, and every one of them is an integer column (whose
/// literal compares exactly and can be written in, [`literal_keys_predicate`]).
pub(crate) fn pinned_key(
    pinned: Option<&[(String, mysql_async::Value)]>,
    meta: &TableMeta,
) -> Option<Vec<mysql_async::Value>> {
    let pinned = pinned?;
    if pinned.len() != meta.primary_key.len() {
        return None;
    }
    meta.primary_key
        .iter()
        .map(|pk| {
            meta.column(pk)
                .filter(|c| c.ty.kind == rewind_undo_log::TypeKind::Int)?;
            let mut terms = pinned.iter().filter(|(c, _)| same_name(c, pk));
            let (_, v) = terms.next()?;
            terms.next().is_none().then(|| v.clone())
        })
        .collect()
}

/// Whether two integer keys are the same: a literal reads as signed where it fits, an
/// image of an unsigned column as unsigned.
pub(crate) fn same_key(a: &[mysql_async::Value], b: &[mysql_async::Value]) -> bool {
    use mysql_async::Value as V;
    let int = |v: &V| match v {
        V::Int(i) => Some(i128::from(*i)),
        V::UInt(u) => Some(i128::from(*u)),
        _ => None,
    };
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (int(x), int(y)) {
            (Some(x), Some(y)) => x == y,
            _ => x == y,
        })
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
