//! SQL that reads the current rows of an item and undoes it.
//!
//! Every value travels as a `?` parameter (binary protocol), never spliced into the text:
//! that is what keeps DECIMAL, DATETIME(6), floats and blobs exact on the way back.
//! Identifiers are backquoted with backquotes doubled, so any table or column name works.
//!
//! Rows are always addressed by primary key, one statement per row for the writes: an undo
//! must touch exactly the rows the image recorded, nothing else.

use crate::error::{Error, Result};
use crate::image::{Row, TableName};
use crate::record::{SqlKind, TableSummary, UndoItem};
use crate::value::TypedValue;

/// Session settings for the connection that reads images and runs undo SQL:
/// - `time_zone`: TIMESTAMP values are stored and restored as UTC (see [`crate::value`]).
/// - `NO_AUTO_VALUE_ON_ZERO`: re-inserting a deleted row whose auto-increment key is 0
///   must restore 0, not draw a new key.
pub const UNDO_SESSION_SETUP: &str =
    "SET time_zone = '+00:00', sql_mode = CONCAT(@@sql_mode, ',NO_AUTO_VALUE_ON_ZERO')";

/// A parameterized statement, ready for `Conn::exec_drop(sql, params)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<mysql_async::Value>,
}

/// `` `name` `` with inner backquotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// The digits of a hex literal (`X'…'`) holding `bytes`, uppercase: a value inlined this
/// way means the same bytes whatever the session's character set or SQL mode.
pub fn hex_digits(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

pub fn quote_table(name: &TableName) -> String {
    format!("{}.{}", quote_ident(&name.schema), quote_ident(&name.table))
}

/// The most `?` placeholders one prepared statement may carry (a u16 in the protocol).
pub const MAX_STATEMENT_PARAMS: usize = 65_535;

/// `SELECT <image columns> FROM t WHERE <pk = row 1> OR … FOR UPDATE`: the current state of
/// the rows the item touched, locked until the undo transaction ends so nobody changes them
/// between the check and the undo. Split into several statements when the keys exceed
/// [`MAX_STATEMENT_PARAMS`]; the caller concatenates their rows into one current image.
/// Empty when the item touched no rows.
pub fn select_current(item: &UndoItem) -> Result<Vec<Statement>> {
    let image = item.key_image();
    let Some(first) = image.rows.first() else {
        return Ok(Vec::new());
    };
    let pk = &item.table.primary_key;
    // Read what the images hold (plus the key), so current rows compare cell by cell.
    let mut columns: Vec<&str> = pk.iter().map(String::as_str).collect();
    for c in first.column_names() {
        if !columns.contains(&c) {
            columns.push(c);
        }
    }
    let columns = columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let rows_per_statement = (MAX_STATEMENT_PARAMS / pk.len().max(1)).max(1);
    let mut out = Vec::new();
    for chunk in image.rows.chunks(rows_per_statement) {
        let mut params = Vec::with_capacity(chunk.len() * pk.len());
        let mut predicates = Vec::with_capacity(chunk.len());
        for row in chunk {
            let (predicate, mut values) = pk_predicate(pk, row)?;
            predicates.push(format!("({predicate})"));
            params.append(&mut values);
        }
        let sql = format!(
            "SELECT {columns} FROM {} WHERE {} FOR UPDATE",
            quote_table(&item.table.name),
            predicates.join(" OR ")
        );
        out.push(Statement { sql, params });
    }
    Ok(out)
}

/// The statements that undo `item`, one per row, in the reverse of the order the
/// statement wrote them (its images follow the statement's own ORDER BY): a write
/// ordered to keep a unique column free of collisions is undone without collisions too,
/// and re-inserted rows come back parents before children. Run them only after
/// [`crate::check::check`] said [`crate::check::CheckOutcome::Restore`], in the same
/// transaction that holds the `FOR UPDATE` locks of [`select_current`]. Each must affect
/// exactly one row; anything else means the rows changed under the check and the undo
/// transaction must be rolled back.
pub fn undo_statements(item: &UndoItem) -> Result<Vec<Statement>> {
    match item.kind {
        SqlKind::Insert => item
            .after
            .rows
            .iter()
            .rev()
            .map(|row| delete_row(item, row))
            .collect(),
        SqlKind::Delete => item
            .before
            .rows
            .iter()
            .rev()
            .map(|row| insert_row(item, row))
            .collect(),
        SqlKind::Update => {
            let mut out = Vec::with_capacity(item.before.rows.len());
            for row in item.before.rows.iter().rev() {
                if let Some(stmt) = update_row(item, row)? {
                    out.push(stmt);
                }
            }
            Ok(out)
        }
    }
}

/// `UPDATE t SET <changed cols> = <before values> WHERE <pk>`. The on-update timestamp
/// columns are set explicitly to their before values too: otherwise the server would stamp
/// "now" into them during the undo, and an earlier branch's rollback of the same row would
/// then see a row that differs from its after image (a false dirty write).
fn update_row(item: &UndoItem, before: &Row) -> Result<Option<Statement>> {
    let pk = &item.table.primary_key;
    let mut assignments = Vec::new();
    let mut params = Vec::new();
    let restored = item
        .set_columns
        .iter()
        .chain(item.table.on_update_now.iter())
        .filter(|c| !pk.contains(c));
    let mut seen: Vec<&str> = Vec::new();
    for column in restored {
        if seen.contains(&column.as_str()) {
            continue;
        }
        seen.push(column);
        let Some(value) = before.get(column) else {
            // An on-update column the image did not capture cannot be restored; a SET
            // column must be there, or the undo would silently leave the change in place.
            if item.set_columns.contains(column) {
                return Err(Error::MissingColumn(column.clone()));
            }
            continue;
        };
        assignments.push(format!("{} = ?", quote_ident(column)));
        params.push(value.to_mysql());
    }
    if assignments.is_empty() {
        return Ok(None);
    }
    let (predicate, mut key) = pk_predicate(pk, before)?;
    params.append(&mut key);
    Ok(Some(Statement {
        sql: format!(
            "UPDATE {} SET {} WHERE {}",
            quote_table(&item.table.name),
            assignments.join(", "),
            predicate
        ),
        params,
    }))
}

fn delete_row(item: &UndoItem, after: &Row) -> Result<Statement> {
    let (predicate, params) = pk_predicate(&item.table.primary_key, after)?;
    Ok(Statement {
        sql: format!(
            "DELETE FROM {} WHERE {}",
            quote_table(&item.table.name),
            predicate
        ),
        params,
    })
}

/// Every stored column explicitly, including auto-increment and on-update timestamp
/// columns, so the row comes back exactly as it was rather than with server-generated
/// values. Generated columns are left out: the server refuses values for them and
/// recomputes them from the restored columns.
fn insert_row(item: &UndoItem, before: &Row) -> Result<Statement> {
    let cells: Vec<_> = before
        .cells
        .iter()
        .filter(|(c, _)| !item.table.generated.contains(c))
        .collect();
    let columns: Vec<String> = cells.iter().map(|(c, _)| quote_ident(c)).collect();
    let placeholders = vec!["?"; columns.len()].join(", ");
    Ok(Statement {
        sql: format!(
            "INSERT INTO {} ({}) VALUES ({})",
            quote_table(&item.table.name),
            columns.join(", "),
            placeholders
        ),
        params: cells.iter().map(|(_, v)| v.to_mysql()).collect(),
    })
}

/// Puts one row back to `target` (its state before the branch; `None`: it did not exist),
/// for an operator's "restore before image" after a dirty write. `current` is the row as
/// it is now, read under `FOR UPDATE` by the caller; `key` is any image of the row (for its
/// primary key). Every non-generated column of `target` is written, since a third party
/// may have changed any of them. `None` when there is nothing to do.
pub fn overwrite_row(
    table: &TableSummary,
    key: &Row,
    target: Option<&Row>,
    current: Option<&Row>,
) -> Result<Option<Statement>> {
    let pk = &table.primary_key;
    let (predicate, key_params) = pk_predicate(pk, key)?;
    Ok(match (target, current) {
        (None, None) => None,
        (None, Some(_)) => Some(Statement {
            sql: format!("DELETE FROM {} WHERE {predicate}", quote_table(&table.name)),
            params: key_params,
        }),
        (Some(target), None) => {
            let cells: Vec<_> = target
                .cells
                .iter()
                .filter(|(c, _)| !table.generated.contains(c))
                .collect();
            Some(Statement {
                sql: format!(
                    "INSERT INTO {} ({}) VALUES ({})",
                    quote_table(&table.name),
                    cells
                        .iter()
                        .map(|(c, _)| quote_ident(c))
                        .collect::<Vec<_>>()
                        .join(", "),
                    vec!["?"; cells.len()].join(", ")
                ),
                params: cells.iter().map(|(_, v)| v.to_mysql()).collect(),
            })
        }
        (Some(target), Some(_)) => {
            let cells: Vec<_> = target
                .cells
                .iter()
                .filter(|(c, _)| !table.generated.contains(c) && !pk.contains(c))
                .collect();
            if cells.is_empty() {
                return Ok(None);
            }
            let mut params: Vec<mysql_async::Value> =
                cells.iter().map(|(_, v)| v.to_mysql()).collect();
            params.extend(key_params);
            Some(Statement {
                sql: format!(
                    "UPDATE {} SET {} WHERE {predicate}",
                    quote_table(&table.name),
                    cells
                        .iter()
                        .map(|(c, _)| format!("{} = ?", quote_ident(c)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                params,
            })
        }
    })
}

/// `` `pk1` = ? AND `pk2` = ? `` with the row's key values.
fn pk_predicate(pk: &[String], row: &Row) -> Result<(String, Vec<mysql_async::Value>)> {
    let key: Vec<&TypedValue> = row.primary_key(pk)?;
    let predicate = pk
        .iter()
        .map(|c| format!("{} = ?", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(" AND ");
    Ok((predicate, key.iter().map(|v| v.to_mysql()).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::sample_item;
    use mysql_async::Value as M;

    #[test]
    fn identifiers_are_quoted_with_doubled_backquotes() {
        assert_eq!(quote_ident("a`b"), "`a``b`");
        assert_eq!(quote_table(&TableName::new("s.x", "t`")), "`s.x`.`t```");
    }

    #[test]
    fn update_restores_set_columns_and_on_update_timestamps_by_pk() {
        let item = sample_item(SqlKind::Update, 3);
        let stmts = undo_statements(&item).unwrap();
        assert_eq!(stmts.len(), 2);
        // Rows in reverse: the image's first row is undone last.
        let first = &stmts[1];
        assert_eq!(
            first.sql,
            "UPDATE `shop`.`all``types` SET `s` = ?, `blob` = ?, `ts` = ? WHERE `id` = ?"
        );
        assert_eq!(first.params.len(), 4);
        assert_eq!(first.params[3], M::Int(1));
        assert_eq!(first.params[1], M::Bytes(vec![0, 7, 14]));
        assert_eq!(first.params[2], M::Date(2038, 1, 19, 3, 14, 7, 1));
        assert_eq!(stmts[0].params[3], M::Int(2));
    }

    #[test]
    fn insert_is_undone_by_delete_and_delete_by_insert_of_all_columns() {
        let ins = sample_item(SqlKind::Insert, 0);
        let stmts = undo_statements(&ins).unwrap();
        assert_eq!(
            stmts[0].sql,
            "DELETE FROM `shop`.`all``types` WHERE `id` = ?"
        );
        assert_eq!(
            stmts[0].params,
            vec![M::Int(2)],
            "last inserted, first deleted"
        );

        let mut del = sample_item(SqlKind::Delete, 0);
        del.table.generated.push("i_min".into());
        let stmts = undo_statements(&del).unwrap();
        let ncols = del.before.rows[0].cells.len() - 1;
        let first = stmts.last().unwrap();
        assert!(first
            .sql
            .starts_with("INSERT INTO `shop`.`all``types` (`id`, `u_max`,"));
        assert_eq!(first.sql.matches('?').count(), ncols);
        assert_eq!(first.params.len(), ncols);
        assert_eq!(first.params[1], M::UInt(u64::MAX));
        assert_eq!(first.params[ncols - 1], M::NULL);
    }

    #[test]
    fn select_current_locks_every_row_by_composite_key() {
        let mut item = sample_item(SqlKind::Delete, 0);
        item.table.primary_key = vec!["id".into(), "s".into()];
        let stmts = select_current(&item).unwrap();
        assert_eq!(stmts.len(), 1);
        let stmt = &stmts[0];
        assert!(
            stmt.sql.starts_with("SELECT `id`, `s`, `i_min`, "),
            "{}",
            stmt.sql
        );
        assert!(stmt.sql.ends_with(
            "FROM `shop`.`all``types` WHERE (`id` = ? AND `s` = ?) OR (`id` = ? AND `s` = ?) FOR UPDATE"
        ));
        assert_eq!(stmt.params.len(), 4);

        let many = item.before.rows[0].clone();
        item.before.rows = vec![many; 40_000];
        let stmts = select_current(&item).unwrap();
        assert_eq!(
            stmts.len(),
            2,
            "80,000 key values in statements of at most 65,535"
        );
        assert!(stmts.iter().all(|s| s.params.len() <= MAX_STATEMENT_PARAMS));
        assert_eq!(stmts.iter().map(|s| s.params.len()).sum::<usize>(), 80_000);

        item.before.rows.clear();
        assert!(select_current(&item).unwrap().is_empty());
    }

    #[test]
    fn update_without_before_value_of_a_set_column_is_an_error() {
        let mut item = sample_item(SqlKind::Update, 0);
        item.set_columns.push("gone".into());
        assert!(matches!(
            undo_statements(&item),
            Err(Error::MissingColumn(c)) if c == "gone"
        ));
    }
}
