//! AT's building blocks end to end, below the session (the SQL analysis of `at::sql`, the
//! images, records and undo SQL of `rewind-undo-log`), against a real MariaDB at
//! 127.0.0.1:3306 (started by `scripts/ensure-mariadb.sh`):
//! images of every column type survive both protocols, the record codec, and the undo SQL
//! byte for byte; a third-party write is caught as dirty. Each test owns one database.

use anyhow::{ensure, Context, Result};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Params};
use rewind_proxy::at::sql::{analyze, AutoIncrement, Dml};
use rewind_undo_log::undo_sql::{quote_ident, select_current, undo_statements, UNDO_SESSION_SETUP};
use rewind_undo_log::{
    check, CheckOutcome, Error, LockKey, MetaCache, RowImage, SqlKind, TableMeta, TableName,
    TableSummary, UndoItem, UndoRecord, Value,
};

const TABLE: &str = "all`types";

/// One column of every kind, a composite primary key with a VARBINARY part, and an
/// on-update timestamp the statements never set.
const CREATE: &str = "CREATE TABLE `all``types` (
    id BIGINT UNSIGNED NOT NULL,
    code VARBINARY(16) NOT NULL,
    c_tiny TINYINT, c_utiny TINYINT UNSIGNED, c_medium MEDIUMINT,
    c_big BIGINT, c_ubig BIGINT UNSIGNED,
    c_float FLOAT, c_double DOUBLE, c_dec DECIMAL(65,30),
    c_dt DATETIME(6),
    c_ts TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    c_date DATE, c_time TIME(6), c_year YEAR,
    c_char CHAR(10), c_varchar VARCHAR(100), c_text TEXT,
    c_binary BINARY(16), c_varbinary VARBINARY(50), c_blob LONGBLOB,
    c_json JSON, c_bit BIT(10), c_enum ENUM('a','b'), c_set SET('x','y'), c_null INT NULL,
    c_gen INT AS (c_tiny + 1) VIRTUAL, c_hidden INT INVISIBLE DEFAULT 7,
    PRIMARY KEY (id, code)
)";

const INSERT: &str = "INSERT INTO `all``types` VALUES (
    18446744073709551615, X'00FF00', -128, 255, -8388608,
    -9223372036854775808, 18446744073709551615,
    1.2345678, -0e0, '-99999999999999999999999999999999999.999999999999999999999999999999',
    '9999-12-31 23:59:59.999999',
    '2038-01-19 03:14:07.000001', '1000-01-01', '-838:59:59.000000', 2155,
    'abc', 'emoji 😀 nul \\0 quote \\' end', REPEAT('é', 1000),
    X'000102030405060708090A0B0C0D0E0F', X'00', REPEAT(X'00FF', 100000),
    '{\"a\": [1, 2.5, \"x\"], \"b\": null}', b'1010101010', 'b', 'x,y', NULL, DEFAULT)";

/// Every column but c_float: MariaDB rounds FLOAT in the text protocol.
const NON_FLOAT: &str = "id, code, c_tiny, c_utiny, c_medium, c_big, c_ubig, c_double, c_dec, \
    c_dt, c_ts, c_date, c_time, c_year, c_char, c_varchar, c_text, c_binary, c_varbinary, \
    c_blob, c_json, c_bit, c_enum, c_set, c_null, c_gen, c_hidden";

async fn setup(db: &str) -> Result<Conn> {
    let mut conn = Conn::from_url("mysql://root@127.0.0.1:3306")
        .await
        .context("MariaDB at 127.0.0.1:3306 (scripts/ensure-mariadb.sh)")?;
    // TIMESTAMP images are UTC: the proxy reads and undoes with this session zone.
    conn.query_drop(UNDO_SESSION_SETUP).await?;
    conn.query_drop("SET NAMES utf8mb4").await?;
    conn.query_drop(format!("DROP DATABASE IF EXISTS {db}"))
        .await?;
    conn.query_drop(format!("CREATE DATABASE {db}")).await?;
    conn.query_drop(format!("USE {db}")).await?;
    conn.query_drop(CREATE).await?;
    conn.query_drop(INSERT).await?;
    conn.query_drop(
        "INSERT INTO `all``types` (id, code, c_varchar, c_blob, c_hidden) \
         VALUES (2, 'k2', 'two', 'b', 9)",
    )
    .await?;
    Ok(conn)
}

async fn teardown(mut conn: Conn, db: &str) -> Result<()> {
    conn.query_drop(format!("DROP DATABASE {db}")).await?;
    conn.disconnect().await?;
    Ok(())
}

/// Every column, invisible ones included (`SELECT *` would skip them).
fn all_columns(meta: &TableMeta) -> String {
    let names: Vec<String> = meta.columns.iter().map(|c| quote_ident(&c.name)).collect();
    names.join(", ")
}

/// The server's checksum of the stored rows: equal means byte-identical data.
async fn checksum(conn: &mut Conn) -> Result<u64> {
    let row: Option<(String, Option<u64>)> = conn
        .query_first("CHECKSUM TABLE `all``types` EXTENDED")
        .await?;
    row.and_then(|(_, c)| c).context("no checksum")
}

/// Reads rows with the binary protocol, as the proxy does.
async fn binary_image(conn: &mut Conn, db: &str, sql: &str, params: Params) -> Result<RowImage> {
    let rows: Vec<mysql_async::Row> = conn.exec(sql, params).await?;
    Ok(RowImage::from_mysql(TableName::new(db, TABLE), &rows)?)
}

/// Reads a phase-one image (TIMESTAMP columns as UNIX_TIMESTAMP), as the proxy does.
async fn phase_one_image(
    conn: &mut Conn,
    meta: &TableMeta,
    sql: &str,
    params: Params,
) -> Result<RowImage> {
    let rows: Vec<mysql_async::Row> = conn.exec(sql, params).await?;
    Ok(RowImage::from_image(meta, &rows)?)
}

async fn run_check_and_undo(conn: &mut Conn, db: &str, item: &UndoItem) -> Result<CheckOutcome> {
    let mut current = RowImage::empty(item.table.name.clone());
    for select in select_current(item)? {
        let part = binary_image(conn, db, &select.sql, select.params.into()).await?;
        current.rows.extend(part.rows);
    }
    let outcome = check(item, &current)?;
    if outcome == CheckOutcome::Restore {
        for stmt in undo_statements(item)? {
            conn.exec_drop(stmt.sql, Params::from(stmt.params)).await?;
            ensure!(
                conn.affected_rows() == 1,
                "an undo statement must hit exactly one row"
            );
        }
    }
    Ok(outcome)
}

#[tokio::test]
async fn t10_every_type_both_protocols_and_update_undo_is_byte_identical() -> Result<()> {
    let db = "rwu_undo_t10";
    let mut conn = setup(db).await?;
    let name = TableName::new(db, TABLE);

    let cache = MetaCache::new();
    let meta = cache.get_or_load(&mut conn, db, TABLE).await?;
    assert_eq!(meta.primary_key, ["id", "code"]);
    assert_eq!(meta.on_update_now_columns().collect::<Vec<_>>(), ["c_ts"]);
    assert!(cache.get(&name).is_some());
    assert_eq!(meta.generated_columns().collect::<Vec<_>>(), ["c_gen"]);
    let cols = all_columns(&meta);

    // Text and binary protocol give equal images (FLOAT aside, which text refuses).
    let by_key = format!("SELECT {NON_FLOAT} FROM `all``types` WHERE id = 18446744073709551615");
    let text_rows: Vec<mysql_async::Row> = conn.query(&by_key).await?;
    let text = RowImage::from_mysql(name.clone(), &text_rows)?;
    let binary = binary_image(&mut conn, db, &by_key, Params::Empty).await?;
    assert_eq!(text, binary);
    let float_text: Vec<mysql_async::Row> = conn.query("SELECT c_float FROM `all``types`").await?;
    assert!(matches!(
        RowImage::from_mysql(name.clone(), &float_text),
        Err(Error::InexactFloatText { .. })
    ));
    // The binary-protocol types match what information_schema says.
    for (column, value) in &binary.rows[0].cells {
        assert_eq!(&meta.column(column).unwrap().ty, &value.ty, "{column}");
    }

    let original = checksum(&mut conn).await?;

    // Phase one, as the proxy will run it for a prepared UPDATE: analyze, lock and read the
    // before image with the statement's own predicate, write only the locked keys.
    let sql = "UPDATE `all``types` SET c_varchar = ?, c_dec = 1, c_blob = 'x', c_float = 2, \
               c_double = 3 WHERE id > ? ORDER BY id LIMIT 5";
    let params = [
        mysql_async::Value::from("changed"),
        mysql_async::Value::from(1),
    ];
    let Dml::Update(plan) = analyze(sql)? else {
        panic!("an UPDATE")
    };
    assert_eq!(plan.set_params, 1);
    conn.query_drop("BEGIN").await?;
    let before_sql = plan.before_image_sql(&meta)?;
    let before = phase_one_image(
        &mut conn,
        &meta,
        &before_sql,
        Params::from(params[plan.set_params..].to_vec()),
    )
    .await?;
    assert_eq!(before.rows.len(), 2);
    let mut write_params = params[..plan.set_params].to_vec();
    for row in &before.rows {
        for value in row.primary_key(&meta.primary_key)? {
            write_params.push(value.to_mysql());
        }
    }
    conn.exec_drop(
        plan.by_keys_sql(&meta, before.rows.len()),
        Params::from(write_params),
    )
    .await?;
    assert_eq!(conn.affected_rows(), 2);
    let after = binary_image(
        &mut conn,
        db,
        &format!("SELECT {cols} FROM `all``types` WHERE id > 1"),
        Params::Empty,
    )
    .await?;
    assert_eq!(after.rows.len(), 2);
    assert_ne!(
        before.rows[0].get("c_ts"),
        after.rows[0].get("c_ts"),
        "the server stamped the on-update column"
    );
    let item = UndoItem {
        kind: SqlKind::Update,
        table: TableSummary::from(meta.as_ref()),
        set_columns: plan.set_columns_in(&meta)?,
        before,
        after,
    };
    let key = LockKey::for_row(&name, &meta.primary_key, &item.before.rows[0])?;
    assert_eq!(LockKey::decode(&key.encode())?, key);
    let stored = UndoRecord { items: vec![item] }.encode()?;
    conn.query_drop("COMMIT").await?;
    ensure!(checksum(&mut conn).await? != original);

    // Phase two: decode, lock the rows, check, undo.
    let record = UndoRecord::decode(&stored)?;
    conn.query_drop("BEGIN").await?;
    for item in record.rollback_order() {
        assert_eq!(
            run_check_and_undo(&mut conn, db, item).await?,
            CheckOutcome::Restore
        );
    }
    conn.query_drop("COMMIT").await?;
    assert_eq!(checksum(&mut conn).await?, original, "not byte-identical");
    let restored = binary_image(
        &mut conn,
        db,
        &format!("SELECT {cols} FROM `all``types` WHERE id > 1"),
        Params::Empty,
    )
    .await?;
    assert_eq!(restored, record.items[0].before);

    // A retried rollback finds the rows already restored.
    conn.query_drop("BEGIN").await?;
    assert_eq!(
        run_check_and_undo(&mut conn, db, &record.items[0]).await?,
        CheckOutcome::AlreadyRestored
    );
    conn.query_drop("COMMIT").await?;

    teardown(conn, db).await
}

#[tokio::test]
async fn t20_insert_and_delete_undo_and_dirty_write() -> Result<()> {
    let db = "rwu_undo_t20";
    let mut conn = setup(db).await?;
    let name = TableName::new(db, TABLE);
    let meta = MetaCache::new().get_or_load(&mut conn, db, TABLE).await?;
    let summary = TableSummary::from(meta.as_ref());
    let original = checksum(&mut conn).await?;
    let cols = all_columns(&meta);

    // DELETE of every row, undone by INSERT of every stored column.
    let delete_sql = "DELETE FROM `all``types` ORDER BY id";
    let Dml::Delete(plan) = analyze(delete_sql)? else {
        panic!("a DELETE")
    };
    let before = phase_one_image(
        &mut conn,
        &meta,
        &plan.before_image_sql(&meta),
        Params::Empty,
    )
    .await?;
    assert_eq!(
        before.rows[0].get("c_hidden").map(|v| &v.value),
        Some(&Value::Int(9))
    );
    conn.query_drop(delete_sql).await?;
    let delete = UndoItem {
        kind: SqlKind::Delete,
        table: summary.clone(),
        set_columns: vec![],
        before,
        after: RowImage::empty(name.clone()),
    };
    let delete = UndoRecord::decode(
        &UndoRecord {
            items: vec![delete],
        }
        .encode()?,
    )?
    .items
    .remove(0);
    assert_eq!(
        run_check_and_undo(&mut conn, db, &delete).await?,
        CheckOutcome::Restore
    );
    assert_eq!(
        checksum(&mut conn).await?,
        original,
        "delete undo not byte-identical"
    );

    // INSERT, undone by DELETE by key.
    conn.query_drop("INSERT INTO `all``types` (id, code) VALUES (3, X'00'), (4, 'a,b:c')")
        .await?;
    let after = binary_image(
        &mut conn,
        db,
        &format!("SELECT {cols} FROM `all``types` WHERE id > 2 AND id < 5"),
        Params::Empty,
    )
    .await?;
    let insert = UndoItem {
        kind: SqlKind::Insert,
        table: summary.clone(),
        set_columns: vec![],
        before: RowImage::empty(name.clone()),
        after,
    };
    assert_eq!(
        run_check_and_undo(&mut conn, db, &insert).await?,
        CheckOutcome::Restore
    );
    assert_eq!(
        checksum(&mut conn).await?,
        original,
        "insert undo left rows"
    );

    // UPDATE, then a third party writes the same row: dirty, and nothing is overwritten.
    let by_key = format!("SELECT {cols} FROM `all``types` WHERE id = 2");
    let before = binary_image(&mut conn, db, &by_key, Params::Empty).await?;
    conn.query_drop("UPDATE `all``types` SET c_varchar = 'ours' WHERE id = 2")
        .await?;
    let after = binary_image(&mut conn, db, &by_key, Params::Empty).await?;
    conn.query_drop("UPDATE `all``types` SET c_varchar = 'theirs' WHERE id = 2")
        .await?;
    let third_party = checksum(&mut conn).await?;
    let update = UndoItem {
        kind: SqlKind::Update,
        table: summary,
        set_columns: vec!["c_varchar".into()],
        before,
        after,
    };
    let CheckOutcome::DirtyWrite(conflict) = run_check_and_undo(&mut conn, db, &update).await?
    else {
        panic!("a third-party write must be reported as dirty");
    };
    assert_eq!(
        conflict.current.rows[0].get("c_varchar").unwrap().value,
        Value::Text("theirs".into())
    );
    assert_eq!(conflict.rows.len(), 1);
    assert_eq!(
        conflict.rows[0].columns,
        ["c_varchar"],
        "c_ts is implicit, not a conflict"
    );
    assert_eq!(
        checksum(&mut conn).await?,
        third_party,
        "dirty row was touched"
    );

    // Multi-row INSERT with generated keys and a step of 3: every row is in the after image
    // (dbpack recorded only the first), and the undo deletes exactly those rows.
    conn.query_drop(
        "CREATE TABLE ai (id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, v VARCHAR(10)); \
         INSERT INTO ai (v) VALUES ('keep'); SET SESSION auto_increment_increment = 3",
    )
    .await?;
    let ai = MetaCache::new().get_or_load(&mut conn, db, "ai").await?;
    let sql = "INSERT INTO ai (id, v) VALUES (NULL, ?), (NULL, 'b'), (NULL, 'c')";
    let Dml::Insert(plan) = analyze(sql)? else {
        panic!("an INSERT")
    };
    let params = vec![mysql_async::Value::from("a")];
    conn.exec_drop(sql, Params::from(params.clone())).await?;
    let first = conn.last_insert_id().context("generated id")?;
    // The session runs with NO_AUTO_VALUE_ON_ZERO (UNDO_SESSION_SETUP), where DEFAULT
    // would store 0 rather than generate a key.
    let auto_increment = AutoIncrement {
        last_insert_id: first,
        increment: 3,
        no_auto_value_on_zero: true,
    };
    let keys = plan.row_keys(&ai, &params, auto_increment)?;
    let after: Vec<mysql_async::Row> = conn
        .exec(
            plan.after_image_sql(&ai, keys.len()),
            Params::from(keys.concat()),
        )
        .await?;
    assert_eq!(
        after.len(),
        plan.rows,
        "after image must hold every inserted row"
    );
    let insert = UndoItem {
        kind: SqlKind::Insert,
        table: TableSummary::from(ai.as_ref()),
        set_columns: vec![],
        before: RowImage::empty(TableName::new(db, "ai")),
        after: RowImage::from_image(&ai, &after)?,
    };
    assert_eq!(
        run_check_and_undo(&mut conn, db, &insert).await?,
        CheckOutcome::Restore
    );
    let left: Vec<String> = conn.query("SELECT v FROM ai").await?;
    assert_eq!(left, ["keep"]);

    teardown(conn, db).await
}
