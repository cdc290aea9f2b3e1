//! The dirty-write check: may this item be undone without destroying someone else's write?
//!
//! Compares the current rows (read by [`crate::undo_sql::select_current`] under `FOR
//! UPDATE`) with the item's images, in this order:
//! 1. before == after → the statement changed nothing: [`CheckOutcome::Unchanged`].
//! 2. current == after → nobody wrote since: [`CheckOutcome::Restore`].
//! 3. current == before → already undone (a retried rollback): [`CheckOutcome::AlreadyRestored`].
//! 4. anything else → [`CheckOutcome::DirtyWrite`]; nothing may be overwritten.
//!
//! Rows are matched by primary key, not position, and values compare type-aware
//! ([`crate::value::Value`]'s equality: exact, floats by bits).
//!
//! `ON UPDATE CURRENT_TIMESTAMP` columns the statement did not assign are left out of every
//! comparison. The server stamps them on any change, including an undo of a later branch
//! on the same row, so comparing them made clean rollbacks look dirty in Seata (#3036,
//! #7339). The cost: a third-party write that changes *only* such a column is not detected.
//! Any write that changes another column still is.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::image::{Row, RowImage};
use crate::record::UndoItem;
use crate::value::TypedValue;

/// What the rollback should do with one item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum CheckOutcome {
    /// The statement changed nothing: skip the item.
    Unchanged,
    /// The rows are as the branch left them: run [`crate::undo_sql::undo_statements`].
    Restore,
    /// The rows already hold the before image: nothing to do.
    AlreadyRestored,
    /// Someone else changed the rows: do not undo, keep the locks, show an operator.
    DirtyWrite(Box<DirtyWrite>),
}

/// A conflict, with everything an operator needs to decide side by side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirtyWrite {
    pub before: RowImage,
    pub after: RowImage,
    pub current: RowImage,
    /// Just the rows someone else changed, so a console need not diff whole images.
    pub rows: Vec<RowConflict>,
}

/// One row whose current state is not what the branch left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowConflict {
    /// The primary-key values, rendered for people.
    pub key: Vec<String>,
    /// `None`: the row did not exist at that point.
    pub before: Option<Row>,
    pub after: Option<Row>,
    pub current: Option<Row>,
    /// Columns whose current value differs from the after image (all of them when the row
    /// appeared or vanished).
    pub columns: Vec<String>,
}

/// Decides what to do with `item` given the `current` rows.
pub fn check(item: &UndoItem, current: &RowImage) -> Result<CheckOutcome> {
    let pk = &item.table.primary_key;
    let ignored: Vec<&str> = item.implicit_timestamp_columns().collect();
    if images_equal(&item.before, &item.after, pk, &ignored)? {
        return Ok(CheckOutcome::Unchanged);
    }
    if images_equal(current, &item.after, pk, &ignored)? {
        return Ok(CheckOutcome::Restore);
    }
    if images_equal(current, &item.before, pk, &ignored)? {
        return Ok(CheckOutcome::AlreadyRestored);
    }
    Ok(CheckOutcome::DirtyWrite(Box::new(DirtyWrite {
        rows: row_conflicts(item, current, &ignored)?,
        before: item.before.clone(),
        after: item.after.clone(),
        current: current.clone(),
    })))
}

type KeyIndex<'a> = HashMap<Vec<Vec<u8>>, &'a Row>;

fn index<'a>(image: &'a RowImage, pk: &[String]) -> Result<KeyIndex<'a>> {
    image.rows.iter().map(|r| Ok((key_of(r, pk)?, r))).collect()
}

/// The rows where `current` differs from the after image, in after-image order, then rows
/// that appeared.
fn row_conflicts(
    item: &UndoItem,
    current: &RowImage,
    ignored: &[&str],
) -> Result<Vec<RowConflict>> {
    let pk = &item.table.primary_key;
    let before = index(&item.before, pk)?;
    let after = index(&item.after, pk)?;
    let now = index(current, pk)?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for row in item.after.rows.iter().chain(current.rows.iter()) {
        let key = key_of(row, pk)?;
        if !seen.insert(key.clone()) {
            continue;
        }
        let (a, c) = (after.get(&key).copied(), now.get(&key).copied());
        let columns: Vec<String> = match (a, c) {
            (Some(a), Some(c)) if rows_equal(a, c, ignored) => continue,
            (Some(a), Some(c)) => a
                .cells
                .iter()
                .filter(|(name, v)| !ignored.contains(&name.as_str()) && c.get(name) != Some(v))
                .map(|(name, _)| name.clone())
                .collect(),
            _ => row.column_names().map(str::to_owned).collect(),
        };
        out.push(RowConflict {
            key: row
                .primary_key(pk)?
                .iter()
                .map(|v| v.value.to_string())
                .collect(),
            before: before.get(&key).map(|r| (*r).clone()),
            after: a.cloned(),
            current: c.cloned(),
            columns,
        });
    }
    Ok(out)
}

/// Same set of keys, and for each key the same values in every compared column.
fn images_equal(a: &RowImage, b: &RowImage, pk: &[String], ignored: &[&str]) -> Result<bool> {
    if a.rows.len() != b.rows.len() {
        return Ok(false);
    }
    // Indexed by key so a statement that touched many rows is not checked in O(n²).
    let by_key = index(b, pk)?;
    for row in &a.rows {
        match by_key.get(&key_of(row, pk)?) {
            Some(other) if rows_equal(row, other, ignored) => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

/// The row's key as canonical bytes per part (distinct values give distinct bytes).
fn key_of(row: &Row, pk: &[String]) -> Result<Vec<Vec<u8>>> {
    Ok(row
        .primary_key(pk)?
        .into_iter()
        .map(TypedValue::key_bytes)
        .collect())
}

fn rows_equal(a: &Row, b: &Row, ignored: &[&str]) -> bool {
    let compared = |row: &Row| {
        row.cells
            .iter()
            .filter(|(c, _)| !ignored.contains(&c.as_str()))
            .count()
    };
    // Same compared column set (counts plus every `a` column found in `b`), same values.
    compared(a) == compared(b)
        && a.cells
            .iter()
            .filter(|(c, _)| !ignored.contains(&c.as_str()))
            .all(|(c, v)| b.get(c) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::TableName;
    use crate::record::{SqlKind, TableSummary};
    use crate::value::{ColumnType, TypeKind, Value};

    fn row(id: i64, balance: &str, ts_micros: u32) -> Row {
        Row::new(vec![
            (
                "id".into(),
                TypedValue::new(ColumnType::new(TypeKind::Int), Value::Int(id)),
            ),
            (
                "balance".into(),
                TypedValue::new(
                    ColumnType {
                        kind: TypeKind::Decimal,
                        unsigned: false,
                        decimals: 2,
                    },
                    Value::Decimal(balance.into()),
                ),
            ),
            (
                "updated".into(),
                TypedValue::new(
                    ColumnType::new(TypeKind::Timestamp),
                    Value::DateTime {
                        year: 2026,
                        month: 1,
                        day: 1,
                        hour: 0,
                        minute: 0,
                        second: 0,
                        micros: ts_micros,
                    },
                ),
            ),
        ])
    }

    fn image(rows: Vec<Row>) -> RowImage {
        RowImage::new(TableName::new("s", "account"), rows)
    }

    fn update_item(before: Vec<Row>, after: Vec<Row>) -> UndoItem {
        UndoItem {
            kind: SqlKind::Update,
            table: TableSummary {
                name: TableName::new("s", "account"),
                primary_key: vec!["id".into()],
                on_update_now: vec!["updated".into()],
                generated: vec![],
            },
            set_columns: vec!["balance".into()],
            before: image(before),
            after: image(after),
        }
    }

    #[test]
    fn the_four_outcomes() {
        let item = update_item(
            vec![row(1, "10.00", 1), row(2, "5.00", 1)],
            vec![row(1, "0.00", 2), row(2, "15.00", 2)],
        );
        // Current rows come back in any order.
        let current = image(vec![row(2, "15.00", 2), row(1, "0.00", 2)]);
        assert_eq!(check(&item, &current).unwrap(), CheckOutcome::Restore);

        let restored = image(vec![row(1, "10.00", 1), row(2, "5.00", 1)]);
        assert_eq!(
            check(&item, &restored).unwrap(),
            CheckOutcome::AlreadyRestored
        );

        let dirty = image(vec![row(1, "0.00", 2), row(2, "99.00", 3)]);
        let CheckOutcome::DirtyWrite(conflict) = check(&item, &dirty).unwrap() else {
            panic!("a third-party change must be dirty")
        };
        assert_eq!(conflict.current, dirty);
        // Only row 2 changed, and only its balance counts (the timestamp is implicit).
        assert_eq!(conflict.rows.len(), 1);
        assert_eq!(conflict.rows[0].key, ["2"]);
        assert_eq!(conflict.rows[0].columns, ["balance"]);
        assert_eq!(conflict.rows[0].before.as_ref(), Some(&row(2, "5.00", 1)));
        assert_eq!(conflict.rows[0].current.as_ref(), Some(&row(2, "99.00", 3)));
        assert_eq!(conflict.before, item.before);
        assert_eq!(conflict.after, item.after);

        let noop = update_item(vec![row(1, "10.00", 1)], vec![row(1, "10.00", 1)]);
        assert_eq!(
            check(&noop, &image(vec![])).unwrap(),
            CheckOutcome::Unchanged
        );
    }

    #[test]
    fn implicit_on_update_timestamp_does_not_look_dirty() {
        let item = update_item(vec![row(1, "10.00", 1)], vec![row(1, "0.00", 2)]);
        // A later branch's undo of the same row re-stamped the timestamp.
        let current = image(vec![row(1, "0.00", 999)]);
        assert_eq!(check(&item, &current).unwrap(), CheckOutcome::Restore);
    }

    #[test]
    fn explicitly_set_timestamp_is_compared() {
        let mut item = update_item(vec![row(1, "10.00", 1)], vec![row(1, "0.00", 2)]);
        item.set_columns.push("updated".into());
        let current = image(vec![row(1, "0.00", 999)]);
        assert!(matches!(
            check(&item, &current).unwrap(),
            CheckOutcome::DirtyWrite(_)
        ));
    }

    #[test]
    fn missing_or_extra_rows_are_dirty() {
        let item = update_item(vec![row(1, "10.00", 1)], vec![row(1, "0.00", 2)]);
        assert!(matches!(
            check(&item, &image(vec![])).unwrap(),
            CheckOutcome::DirtyWrite(_)
        ));
        let other_key = image(vec![row(7, "0.00", 2)]);
        let CheckOutcome::DirtyWrite(conflict) = check(&item, &other_key).unwrap() else {
            panic!("a vanished row must be dirty")
        };
        let keys: Vec<_> = conflict.rows.iter().map(|r| r.key[0].as_str()).collect();
        assert_eq!(keys, ["1", "7"]);
        assert!(conflict.rows[0].current.is_none() && conflict.rows[1].after.is_none());
        assert_eq!(conflict.rows[1].columns, ["id", "balance", "updated"]);
    }

    #[test]
    fn many_rows_check_quickly() {
        let before: Vec<Row> = (0..20_000).map(|i| row(i, "1.00", 1)).collect();
        let after: Vec<Row> = (0..20_000).map(|i| row(i, "2.00", 2)).collect();
        let mut current = after.clone();
        current.reverse();
        let item = update_item(before, after);
        assert_eq!(
            check(&item, &image(current)).unwrap(),
            CheckOutcome::Restore
        );
    }

    #[test]
    fn insert_and_delete_items() {
        let mut ins = update_item(vec![], vec![row(1, "1.00", 1)]);
        ins.kind = SqlKind::Insert;
        ins.set_columns.clear();
        assert_eq!(
            check(&ins, &image(vec![row(1, "1.00", 1)])).unwrap(),
            CheckOutcome::Restore
        );
        assert_eq!(
            check(&ins, &image(vec![])).unwrap(),
            CheckOutcome::AlreadyRestored
        );

        let mut del = update_item(vec![row(1, "1.00", 1)], vec![]);
        del.kind = SqlKind::Delete;
        del.set_columns.clear();
        assert_eq!(check(&del, &image(vec![])).unwrap(), CheckOutcome::Restore);
        assert!(matches!(
            check(&del, &image(vec![row(1, "2.00", 1)])).unwrap(),
            CheckOutcome::DirtyWrite(_)
        ));
    }
}
