//! AT mode's SQL analysis (`rewind_proxy::at::sql`) on arbitrary statement text: the DML
//! plan, then every piece of SQL and every parameter list phase one derives from it, in
//! the order the proxy asks for them, against table metadata made up to match the
//! statement (so the analysis goes past "unknown column"). Also the write-isolation and
//! locking-read analyses.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use mysql_async::Value;
use rewind_proxy::at::sql::{self, AutoIncrement, Dml, TableRef};
use rewind_undo_log::{ColumnMeta, ColumnType, TableMeta, TableName, TypeKind};

/// Columns `id` (auto-increment) and `k` (the primary key), `u` (unique), `ts` (on update
/// now), `g` (generated), plus every column the statement names.
fn meta(table: &TableRef, named: &[String]) -> TableMeta {
    let col = |name: &str| ColumnMeta {
        name: name.into(),
        ty: ColumnType::new(TypeKind::Int),
        on_update_now: name == "ts",
        auto_increment: name == "id",
        generated: name == "g",
        invisible: false,
        nullable: name != "id" && name != "k",
    };
    let mut columns: Vec<ColumnMeta> = ["id", "k", "u", "ts", "g"].into_iter().map(col).collect();
    for n in named {
        if !columns.iter().any(|c| c.name.eq_ignore_ascii_case(n)) {
            columns.push(col(n));
        }
    }
    TableMeta {
        name: TableName::new(
            table.schema.clone().unwrap_or_else(|| "db".into()),
            table.table.clone(),
        ),
        columns,
        primary_key: vec!["id".into(), "k".into()],
        unique_keys: vec![vec!["u".into()]],
        engine: "InnoDB".into(),
        triggers: Vec::new(),
        cascades: Vec::new(),
        definition: String::new(),
    }
}

fn key(i: i64) -> Vec<Value> {
    vec![Value::Int(i), Value::Int(-i)]
}

fn plan(dml: &Dml, params: &[Value]) {
    match dml {
        Dml::Update(p) => {
            let m = meta(&p.table, &p.set_columns);
            if p.set_columns_in(&m).is_err() {
                return;
            }
            if p.before_image_sql(&m).is_err() {
                return;
            }
            if p.changes_key(&m) {
                let _ = p.new_keys_sql(&m, 2);
                let set = &params[..p.set_params.min(params.len())];
                let _ = p.new_keys_params(&m, set, &[key(1), key(2)]);
            }
            let _ = p.rows_sql(&m);
            for n in [0, 1, 3] {
                let _ = p.by_keys_sql(&m, n);
            }
        }
        Dml::UpdateJoin(p) => {
            let metas: Vec<Arc<TableMeta>> = p
                .tables
                .iter()
                .map(|t| Arc::new(meta(&t.table, &[])))
                .collect();
            let Ok(written) = p.written(&metas) else {
                return;
            };
            for (t, _) in &written {
                let _ = p.before_image_sql(*t, &metas[*t]);
            }
            let keyed: Vec<(usize, &TableMeta, usize)> =
                written.iter().map(|(t, _)| (*t, &*metas[*t], 2)).collect();
            let _ = p.by_keys_sql(&keyed);
        }
        Dml::Delete(p) => {
            let m = meta(&p.table, &[]);
            let _ = p.before_image_sql(&m);
            for n in [0, 1, 3] {
                let _ = p.by_keys_sql(&m, n);
            }
        }
        Dml::DeleteJoin(p) => {
            let metas: Vec<TableMeta> = p.tables.iter().map(|t| meta(&t.table, &[])).collect();
            for t in &p.targets {
                let _ = p.before_image_sql(*t, &metas[*t]);
            }
            let keyed: Vec<(usize, &TableMeta, usize)> =
                p.targets.iter().map(|t| (*t, &metas[*t], 1)).collect();
            let _ = p.by_keys_sql(&keyed);
        }
        Dml::Insert(p) => {
            let m = meta(&p.table, &p.columns);
            let _ = p.statement();
            if p.select.is_some() {
                let _ = p.select_key_positions(&m);
                return;
            }
            if p.on_duplicate.is_some() || p.replace {
                if p.on_duplicate_columns_in(&m).is_err() {
                    return;
                }
                for no_auto_value_on_zero in [false, true] {
                    if let Ok(keys) = p.conflict_keys(&m, params, no_auto_value_on_zero) {
                        let _ = p.conflict_image_sql(&m, &keys, true);
                    }
                }
            }
            for (last_insert_id, increment) in [(1, 1), (u64::MAX - 1, 7), (0, 1)] {
                let auto = AutoIncrement {
                    last_insert_id,
                    increment,
                    no_auto_value_on_zero: false,
                };
                if let Ok(keys) = p.row_keys(&m, params, auto) {
                    let _ = p.after_image_sql(&m, keys.len());
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // COM_QUERY (no parameters) and a prepared statement (one per `?`, roughly as the
    // server counts them).
    let marks = text.bytes().filter(|&b| b == b'?').count().min(64);
    let prepared: Vec<Value> = (0..marks as i64).map(Value::Int).collect();
    if let Ok(dml) = sql::analyze(text) {
        plan(&dml, &[]);
        plan(&dml, &prepared);
    }
    let _ = sql::written_tables(text);
    let _ = sql::is_read_query(text);
    if let Ok(Some(select)) = sql::analyze_locking_select(text) {
        let metas: Vec<Arc<TableMeta>> = select
            .tables
            .iter()
            .map(|(t, _)| Arc::new(meta(t, &[])))
            .collect();
        let _ = select.keys_sql(&metas);
    }
});
