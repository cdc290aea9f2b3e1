//! The undo-log side of phase two, from bytes read back out of the `undo_log` table: the
//! record decoder (header, codec, LZ4, JSON) and everything rollback derives from a
//! decoded record (lock keys, the current-row SELECTs, the dirty-write check, undo
//! statements, an operator's row restore and settle, re-encoding). Inputs starting with
//! `0xFF` instead drive row-image decoding: result-set cells of any column type, in either
//! protocol's shape, into typed values (and TIMESTAMPs read as epochs), and lock keys.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use mysql_async::consts::{ColumnFlags, ColumnType as My};
use mysql_async::{Column, Value as M};
use rewind_undo_log::record::row_key;
use rewind_undo_log::{
    check, undo_sql, ColumnMeta, ColumnType, LockKey, Row, RowImage, TableMeta, TableName,
    TypeKind, TypedValue, UndoRecord,
};

fn record(bytes: &[u8]) {
    let Ok(mut rec) = UndoRecord::decode(bytes) else {
        return;
    };
    let _ = rec.lock_keys();
    for item in rec.rollback_order() {
        let _ = item.implicit_timestamp_columns().count();
        let _ = undo_sql::select_current(item);
        let _ = undo_sql::undo_statements(item);
        for current in [&item.before, &item.after] {
            let _ = check(item, current);
        }
        for row in item.before.rows.iter().chain(&item.after.rows) {
            let _ = row.to_json();
        }
    }
    // Re-encoding a decoded record gives it back.
    if let Ok(bytes) = rec.encode() {
        let again = UndoRecord::decode(&bytes).expect("a record we encoded decodes");
        assert_eq!(again.items.len(), rec.items.len());
    }
    // An operator's restore of one row, then settling it.
    let Some(item) = rec.items.first() else {
        return;
    };
    let Some(row) = item.before.rows.first().or(item.after.rows.first()) else {
        return;
    };
    let Ok(pk) = row_key(row, &item.table.primary_key) else {
        return;
    };
    let table = item.table.name.clone();
    if let Ok(Some((item, key_row, before))) = rec.row_history(&table, &pk) {
        let _ = undo_sql::overwrite_row(&item.table, key_row, before, Some(key_row));
        let _ = undo_sql::overwrite_row(&item.table, key_row, before, None);
    }
    let _ = rec.settle_row(&table, &pk);
}

/// Takes `n` bytes (fewer at the end).
fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (a, b) = data.split_at(n.min(data.len()));
    *data = b;
    a
}

fn byte(data: &mut &[u8]) -> u8 {
    take(data, 1).first().copied().unwrap_or(0)
}

fn u64_of(data: &mut &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let t = take(data, 8);
    b[..t.len()].copy_from_slice(t);
    u64::from_le_bytes(b)
}

const TYPES: [My; 20] = [
    My::MYSQL_TYPE_TINY,
    My::MYSQL_TYPE_LONGLONG,
    My::MYSQL_TYPE_YEAR,
    My::MYSQL_TYPE_FLOAT,
    My::MYSQL_TYPE_DOUBLE,
    My::MYSQL_TYPE_NEWDECIMAL,
    My::MYSQL_TYPE_DATE,
    My::MYSQL_TYPE_DATETIME,
    My::MYSQL_TYPE_TIMESTAMP,
    My::MYSQL_TYPE_TIME,
    My::MYSQL_TYPE_JSON,
    My::MYSQL_TYPE_BIT,
    My::MYSQL_TYPE_ENUM,
    My::MYSQL_TYPE_SET,
    My::MYSQL_TYPE_GEOMETRY,
    My::MYSQL_TYPE_STRING,
    My::MYSQL_TYPE_VAR_STRING,
    My::MYSQL_TYPE_BLOB,
    My::MYSQL_TYPE_VECTOR,
    My::MYSQL_TYPE_NULL,
];

/// One result-set cell of the given shape.
fn cell(data: &mut &[u8]) -> M {
    match byte(data) % 8 {
        0 => M::NULL,
        1 => {
            let n = usize::from(byte(data));
            M::Bytes(take(data, n).to_vec())
        }
        2 => M::Int(u64_of(data) as i64),
        3 => M::UInt(u64_of(data)),
        4 => M::Float(f32::from_bits(u64_of(data) as u32)),
        5 => M::Double(f64::from_bits(u64_of(data))),
        6 => {
            let v = u64_of(data);
            M::Date(
                v as u16,
                byte(data),
                byte(data),
                byte(data),
                byte(data),
                byte(data),
                (v >> 32) as u32,
            )
        }
        _ => {
            let v = u64_of(data);
            M::Time(
                v & 1 == 1,
                (v >> 8) as u32,
                byte(data),
                byte(data),
                byte(data),
                (v >> 40) as u32,
            )
        }
    }
}

fn cells(mut data: &[u8]) {
    let data = &mut data;
    let mut columns = Vec::new();
    let mut values = Vec::new();
    let mut metas = Vec::new();
    while !data.is_empty() && columns.len() < 16 {
        let ty = TYPES[usize::from(byte(data)) % TYPES.len()];
        let flags = ColumnFlags::from_bits_truncate(u64_of(data) as u16);
        let charset = if byte(data) & 1 == 0 { 63 } else { 45 };
        let name = format!("c{}", columns.len());
        let col = Column::new(ty)
            .with_name(name.as_bytes())
            .with_flags(flags)
            .with_character_set(charset)
            .with_decimals(byte(data));
        let value = cell(data);
        if let Ok(v) = TypedValue::from_mysql(&value, &col) {
            let _ = v.to_mysql();
            let _ = v.key_bytes();
            let _ = v.to_json();
            let _ = v.value.to_string();
        }
        // A TIMESTAMP column is read as UNIX_TIMESTAMP(col) in phase one.
        let mut ty = ColumnType::new(TypeKind::Timestamp);
        ty.decimals = 6;
        if let Ok(v) = TypedValue::from_mysql(&value, &col) {
            let _ = TypedValue::timestamp_from_epoch(ty.clone(), &v.value, &name);
        }
        metas.push(ColumnMeta {
            name: name.clone(),
            ty: if flags.contains(ColumnFlags::TIMESTAMP_FLAG) {
                ty
            } else {
                ColumnType::new(TypeKind::Text)
            },
            on_update_now: false,
            auto_increment: false,
            generated: false,
            invisible: false,
            nullable: true,
        });
        columns.push(col);
        values.push(value);
    }
    if columns.is_empty() {
        return;
    }
    let meta = TableMeta {
        name: TableName::new("db", "t"),
        primary_key: vec![metas[0].name.clone()],
        columns: metas,
        unique_keys: Vec::new(),
        engine: "InnoDB".into(),
        triggers: Vec::new(),
        cascades: Vec::new(),
        definition: String::new(),
    };
    let row = mysql_common::row::new_row(values, Arc::from(columns));
    if let Ok(image) = RowImage::from_image(&meta, std::slice::from_ref(&row)) {
        for r in &image.rows {
            if let Ok(key) = LockKey::for_row(&meta.name, &meta.primary_key, r) {
                assert_eq!(LockKey::decode(&key.encode()).ok(), Some(key));
            }
        }
    }
    let _ = Row::from_mysql(&row);
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((0xFF, rest)) => cells(rest),
        Some((0xFE, rest)) => {
            if let Ok(s) = std::str::from_utf8(rest) {
                if let Ok(key) = LockKey::decode(s) {
                    assert_eq!(key.encode(), s);
                }
                let _ = rewind_undo_log::lock_key::table_name(s);
                let _ = rewind_undo_log::lock_key::unescape_table(s);
            }
        }
        _ => record(data),
    }
});
