//! Type fidelity: a global rollback over rows holding every MySQL column type with edge
//! values (max unsigned, DECIMAL(65,30), microseconds, negative zero, NUL bytes, emoji,
//! JSON, BIT, SET, ENUM, generated and invisible columns, on-update timestamps) restores
//! them byte for byte, in text and binary protocol, whatever time zone the client's
//! session runs in.

use mysql_async::prelude::Queryable;
use mysql_async::Value;
use rewind_test_support::*;

const CREATE: &str = "CREATE TABLE t (
    id BIGINT UNSIGNED NOT NULL,
    code VARBINARY(16) NOT NULL,
    c_tiny TINYINT, c_utiny TINYINT UNSIGNED, c_medium MEDIUMINT,
    c_big BIGINT, c_ubig BIGINT UNSIGNED,
    c_float FLOAT, c_double DOUBLE, c_dec DECIMAL(65,30),
    c_dt DATETIME(6),
    c_ts TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    c_ts0 TIMESTAMP NULL DEFAULT NULL,
    c_date DATE, c_time TIME(6), c_year YEAR,
    c_char CHAR(10), c_varchar VARCHAR(100), c_text TEXT,
    c_binary BINARY(16), c_varbinary VARBINARY(50), c_blob LONGBLOB,
    c_json JSON, c_bit BIT(10), c_enum ENUM('a','b'), c_set SET('x','y'), c_null INT NULL,
    c_gen INT AS (c_tiny + 1) VIRTUAL, c_hidden INT INVISIBLE DEFAULT 7,
    PRIMARY KEY (id, code)
) DEFAULT CHARSET utf8mb4";

const ROWS: &[&str] = &[
    "INSERT INTO t (id, code, c_tiny, c_utiny, c_medium, c_big, c_ubig, c_float, c_double, c_dec, c_dt, c_ts, c_ts0, c_date, c_time, c_year, c_char, c_varchar, c_text, c_binary, c_varbinary, c_blob, c_json, c_bit, c_enum, c_set, c_null, c_hidden) VALUES (
        18446744073709551615, X'00FF00', -128, 255, -8388608,
        -9223372036854775808, 18446744073709551615,
        1.2345678, -0e0, '-99999999999999999999999999999999999.999999999999999999999999999999',
        '9999-12-31 23:59:59.999999',
        '2038-01-19 03:14:07.000001', '2024-03-31 02:30:00', '1000-01-01', '-838:59:59.000000', 2155,
        'abc', 'emoji 😀 nul \\0 quote \\' end', REPEAT('é', 1000),
        X'000102030405060708090A0B0C0D0E0F', X'00', REPEAT(X'00FF', 50000),
        '{\"a\": [1, 2.5, \"x\"], \"b\": null}', b'1010101010', 'b', 'x,y', NULL, 9)",
    "INSERT INTO t (id, code, c_tiny, c_double, c_dec, c_ts, c_varchar, c_blob) VALUES (0, '', 0, 1.7976931348623157e308, 0.000000000000000000000000000001, '1970-01-01 00:00:01', '', '')",
    "INSERT INTO t (id, code, c_float, c_double, c_dt, c_date, c_time, c_year) VALUES (2, 'k2', -3.40282e38, 5e-324, '1000-01-01 00:00:00.000000', '9999-12-31', '838:59:59.999999', 1901)",
];

async fn setup(db: &str) {
    fresh_db(db).await;
    let mut c = direct(db).await;
    c.query_drop(CREATE).await.unwrap();
    for r in ROWS {
        c.query_drop(*r).await.unwrap();
    }
    c.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t50_rollback_restores_every_type_exactly() {
    let dir = TempDir::new("types");
    let coord = Coordinator::start(&dir, &[]).await;
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &[]).await;
    let db = "rwt_types";
    setup(db).await;
    let original = checksums(db, &["t"]).await;
    let rows_before = dump(db, "t").await;

    // The client's session is not UTC, so TIMESTAMPs travel shifted on its connection.
    for zone in ["+05:30", "-11:00", "SYSTEM"] {
        // Text protocol: every column rewritten, then deleted and re-inserted rows.
        let xid = coord.begin(60_000).await;
        let mut c = proxy.conn(db).await;
        c.query_drop(format!("SET time_zone = '{zone}'"))
            .await
            .unwrap();
        c.query_drop("BEGIN").await.unwrap();
        c.query_drop(format!(
            "/*+ XID('{xid}') */ UPDATE t SET c_tiny = 1, c_utiny = 0, c_medium = 1, c_big = 1, \
             c_ubig = 0, c_float = 0.5, c_double = 0, c_dec = 1, c_dt = NOW(6), c_ts = NOW(6), \
             c_ts0 = '2030-06-01 12:00:00', c_date = CURDATE(), c_time = '00:00:01', c_year = 2000, \
             c_char = 'z', c_varchar = 'v', c_text = 't', c_binary = X'01', c_varbinary = X'02', \
             c_blob = X'03', c_json = '[]', c_bit = b'1', c_enum = 'a', c_set = '', c_null = 5, \
             c_hidden = 1"
        ))
        .await
        .unwrap();
        c.query_drop("DELETE FROM t WHERE id = 2").await.unwrap();
        c.query_drop("INSERT INTO t (id, code, c_ts) VALUES (5, X'05', '2001-02-03 04:05:06.7')")
            .await
            .unwrap();
        c.query_drop("COMMIT").await.unwrap();
        c.disconnect().await.unwrap();
        assert_ne!(checksums(db, &["t"]).await, original);
        assert_eq!(coord.rollback(&xid).await, "rolled_back");
        assert_eq!(
            checksums(db, &["t"]).await,
            original,
            "text protocol, zone {zone}"
        );
        assert_eq!(dump(db, "t").await, rows_before);

        // Binary protocol: parameters of every type.
        let xid = coord.begin(60_000).await;
        let mut c = proxy.conn(db).await;
        c.query_drop(format!("SET time_zone = '{zone}'"))
            .await
            .unwrap();
        c.query_drop("BEGIN").await.unwrap();
        c.exec_drop(
            format!(
                "/*+ XID('{xid}') */ UPDATE t SET c_big = ?, c_ubig = ?, c_float = ?, c_double = ?, \
                 c_dec = ?, c_dt = ?, c_ts = ?, c_time = ?, c_varchar = ?, c_blob = ?, c_json = ? \
                 WHERE id >= ?"
            ),
            vec![
                Value::Int(i64::MIN + 1),
                Value::UInt(u64::MAX - 1),
                Value::Float(-0.0),
                Value::Double(f64::MIN_POSITIVE),
                Value::from("12345678901234567890.123456789012345678901234567890"),
                Value::Date(2020, 2, 29, 23, 59, 59, 999_999),
                Value::Date(2037, 12, 31, 23, 59, 59, 1),
                Value::Time(true, 1, 2, 3, 4, 5),
                Value::from("ümlaut 😀"),
                Value::Bytes(vec![0, 0, 255, 0]),
                Value::from("{\"k\": 1}"),
                Value::UInt(0),
            ],
        )
        .await
        .unwrap();
        c.exec_drop(
            "DELETE FROM t WHERE id = ? AND code = ?",
            (Value::UInt(u64::MAX), Value::Bytes(vec![0, 255, 0])),
        )
        .await
        .unwrap();
        c.query_drop("COMMIT").await.unwrap();
        c.disconnect().await.unwrap();
        assert_eq!(coord.rollback(&xid).await, "rolled_back");
        assert_eq!(
            checksums(db, &["t"]).await,
            original,
            "binary protocol, zone {zone}"
        );
        assert_eq!(dump(db, "t").await, rows_before);
    }
}

/// The same rows in a table without FLOAT or DOUBLE columns, written in the text protocol
/// with values in the statements: the proxy reads such a table's images in the text
/// protocol (no backend prepare for a statement text it will not see again), and a
/// rollback restores every other type exactly, whatever the client's time zone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t50_text_images_of_a_table_without_floats_restore_exactly() {
    let dir = TempDir::new("types-text");
    let coord = Coordinator::start(&dir, &[]).await;
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &[]).await;
    let db = "rwt_types_text";
    setup(db).await;
    let columns = "id, code, c_tiny, c_utiny, c_medium, c_big, c_ubig, c_dec, c_dt, c_ts, c_ts0, \
                   c_date, c_time, c_year, c_char, c_varchar, c_text, c_binary, c_varbinary, \
                   c_blob, c_json, c_bit, c_enum, c_set, c_null, c_hidden";
    let mut d = direct(db).await;
    d.query_drop("CREATE TABLE u LIKE t").await.unwrap();
    d.query_drop("ALTER TABLE u DROP COLUMN c_float, DROP COLUMN c_double")
        .await
        .unwrap();
    d.query_drop(format!("INSERT INTO u ({columns}) SELECT {columns} FROM t"))
        .await
        .unwrap();
    d.disconnect().await.unwrap();
    let original = checksums(db, &["u"]).await;
    let rows_before = dump(db, "u").await;
    for zone in ["+05:30", "-11:00", "SYSTEM"] {
        let xid = coord.begin(60_000).await;
        let mut c = proxy.conn(db).await;
        c.query_drop(format!("SET time_zone = '{zone}'"))
            .await
            .unwrap();
        c.query_drop("BEGIN").await.unwrap();
        c.query_drop(format!(
            "/*+ XID('{xid}') */ UPDATE u SET c_tiny = 1, c_utiny = 0, c_medium = 1, c_big = 1, \
             c_ubig = 0, c_dec = 1, c_dt = NOW(6), c_ts = NOW(6), c_ts0 = '2030-06-01 12:00:00', \
             c_date = CURDATE(), c_time = '00:00:01', c_year = 2000, c_char = 'z', \
             c_varchar = 'v', c_text = 't', c_binary = X'01', c_varbinary = X'02', \
             c_blob = X'03', c_json = '[]', c_bit = b'1', c_enum = 'a', c_set = '', \
             c_null = 5, c_hidden = 1 WHERE id >= 0 AND code <> X'FFFF'"
        ))
        .await
        .unwrap();
        c.query_drop(format!(
            "/*+ XID('{xid}') */ DELETE FROM u WHERE id = 2 AND code = 'k2'"
        ))
        .await
        .unwrap();
        c.query_drop(format!(
            "/*+ XID('{xid}') */ INSERT INTO u (id, code, c_ts) VALUES (5, X'05', '2001-02-03 04:05:06.7')"
        ))
        .await
        .unwrap();
        c.query_drop("COMMIT").await.unwrap();
        c.disconnect().await.unwrap();
        assert_ne!(checksums(db, &["u"]).await, original);
        assert_eq!(coord.rollback(&xid).await, "rolled_back");
        assert_eq!(checksums(db, &["u"]).await, original, "zone {zone}");
        assert_eq!(dump(db, "u").await, rows_before, "zone {zone}");
    }
}

/// A text UPDATE on a table whose primary key is all integers is narrowed to the locked
/// keys written in as literals: the extreme keys (unsigned maximum, signed minimum) are
/// written exactly once each, and a rollback restores them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t50_a_text_update_by_integer_keys_writes_exactly_the_locked_rows() {
    let dir = TempDir::new("types-int-keys");
    let coord = Coordinator::start(&dir, &[]).await;
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &[]).await;
    let db = "rwt_types_int_keys";
    fresh_db(db).await;
    let mut d = direct(db).await;
    d.query_drop(
        "CREATE TABLE w (a BIGINT UNSIGNED NOT NULL, b INT NOT NULL, n BIGINT NOT NULL, \
         v VARCHAR(20) NOT NULL, PRIMARY KEY (a, b))",
    )
    .await
    .unwrap();
    d.query_drop(
        "INSERT INTO w VALUES (18446744073709551615, -2147483648, 1, 'max?'), \
         (18446744073709551614, -2147483648, 2, 'near'), (0, 0, 3, 'zero'), (0, 1, 4, 'one')",
    )
    .await
    .unwrap();
    let original = checksums(db, &["w"]).await;
    let xid = coord.begin(60_000).await;
    let mut c = proxy.conn(db).await;
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop(format!(
        "/*+ XID('{xid}') */ UPDATE w SET n = n * 10, v = CONCAT(v, '?') \
         WHERE a >= 18446744073709551614 OR (a = 0 AND b = 1)"
    ))
    .await
    .unwrap();
    assert_eq!(c.affected_rows(), 3);
    c.query_drop("COMMIT").await.unwrap();
    c.disconnect().await.unwrap();
    let rows: Vec<(u64, i32, i64, String)> = d
        .query("SELECT a, b, n, v FROM w ORDER BY a, b")
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![
            (0, 0, 3, "zero".to_string()),
            (0, 1, 40, "one?".to_string()),
            (18446744073709551614, -2147483648, 20, "near?".to_string()),
            (18446744073709551615, -2147483648, 10, "max??".to_string()),
        ]
    );
    assert_eq!(coord.rollback(&xid).await, "rolled_back");
    assert_eq!(checksums(db, &["w"]).await, original);
}

/// Parameters typed as the client typed them, which no Rust driver can send (so by hand),
/// in a tagged UPDATE and DELETE: the proxy reads their values for the images and the
/// write narrowed to the locked keys, and sends them on with the client's types. A DECIMAL
/// computes exactly (as a string, `bal - ?` computes in DOUBLE and the 20-digit balance
/// loses its fraction: `12345678901234567000.0000000000`), and a DELETE by a value off in
/// its last digit finds nothing; a DATE written into a string column reads as a date (as a
/// DATETIME it gains ` 00:00:00`), and `SELECT ?` of it answers a DATE column. Each row
/// ends as the same statements leave its twin directly, and the global rollback restores
/// the proxy's row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t50_parameter_types_keep_their_meaning_in_global_writes() {
    use rewind_test_support::wire::{execute, prepare, raw_login, read_packet};
    let dir = TempDir::new("types-params");
    let coord = Coordinator::start(&dir, &[]).await;
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &[]).await;
    let db = "rwt_types_params";
    fresh_db(db).await;
    let mut d = direct(db).await;
    d.query_drop(
        "CREATE TABLE acc (id INT PRIMARY KEY, bal DECIMAL(30,10), note VARCHAR(40)); \
         INSERT INTO acc VALUES \
         (1, 12345678901234567890.1234567890, ''), (2, 12345678901234567890.1234567890, '')",
    )
    .await
    .unwrap();
    let original = dump(db, "acc").await;
    let update = format!("UPDATE {db}.acc SET bal = bal - ?, note = ? WHERE id = ?");
    let delete = format!("DELETE FROM {db}.acc WHERE id = ? AND bal = ?");
    let amount: &[u8] = b"\x0c0.0000000001";
    let date: &[u8] = &[4, 0xE8, 0x07, 2, 29];
    let near: &[u8] = b"\x1f12345678901234567890.1234567888";
    // Row 1 directly; row 2 through the proxy in a global transaction.
    let run = |addr, tag: String, id: i32| {
        let (update, delete) = (update.clone(), delete.clone());
        async move {
            let mut s = raw_login(addr).await;
            let key = id.to_le_bytes();
            let u = prepare(&mut s, &format!("{tag}{update}")).await;
            let ok = execute(&mut s, u, &[(0xf6, amount), (0x0a, date), (0x03, &key)]).await;
            assert_eq!(ok[..2], [0, 1], "UPDATE: {}", String::from_utf8_lossy(&ok));
            let del = prepare(&mut s, &format!("{tag}{delete}")).await;
            let ok = execute(&mut s, del, &[(0x03, &key), (0xf6, near)]).await;
            assert_eq!(ok[..2], [0, 0], "DELETE: {}", String::from_utf8_lossy(&ok));
            // A read passes the statement on as it is: the column it answers is a DATE.
            let sel = prepare(&mut s, &format!("{tag}SELECT ?")).await;
            let mut answer = vec![execute(&mut s, sel, &[(0x0a, date)]).await];
            for _ in 0..4 {
                answer.push(read_packet(&mut s).await.unwrap()); // column, EOF, row, EOF
            }
            answer
        }
    };
    let directly = run("127.0.0.1:3306".parse().unwrap(), String::new(), 1).await;
    let xid = coord.begin(60_000).await;
    let through = run(proxy.addr, format!("/*+ XID('{xid}') */ "), 2).await;
    assert_eq!(through, directly, "SELECT ? of a DATE: every packet");
    let rows: Vec<(i32, String, String)> = d
        .query("SELECT id, CAST(bal AS CHAR), note FROM acc ORDER BY id")
        .await
        .unwrap();
    assert_eq!(
        rows[0],
        (
            1,
            "12345678901234567890.1234567889".into(),
            "2024-02-29".into()
        ),
        "directly"
    );
    assert_eq!(
        (&rows[1].1, &rows[1].2),
        (&rows[0].1, &rows[0].2),
        "through the proxy as directly"
    );
    assert_eq!(coord.rollback(&xid).await, "rolled_back");
    assert_eq!(dump(db, "acc").await[1], original[1], "row 2 restored");
}

/// An UPDATE of a DECIMAL primary key by a DECIMAL parameter under an XID: the proxy
/// computes the rows' new keys with the SET clause's own expression before the write, and
/// the parameter keeps its type there too. As a string, `id + ?` computed in DOUBLE, named
/// keys the UPDATE does not write, and the branch was refused ("rows locked but 0 found
/// after"); directly the UPDATE succeeds. Here it succeeds as directly, the key moves by
/// exactly one unit of the last digit, and the global rollback moves it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t50_a_key_moved_by_a_decimal_parameter_is_found_at_its_new_key() {
    use rewind_test_support::wire::{execute, prepare, raw_login};
    let dir = TempDir::new("types-key-params");
    let coord = Coordinator::start(&dir, &[]).await;
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &[]).await;
    let db = "rwt_types_key_params";
    fresh_db(db).await;
    let mut d = direct(db).await;
    d.query_drop(
        "CREATE TABLE k (id DECIMAL(30,10) PRIMARY KEY, v INT); \
         INSERT INTO k VALUES (12345678901234567890.1234567890, 1), \
         (22345678901234567890.1234567890, 2)",
    )
    .await
    .unwrap();
    let original = dump(db, "k").await;
    let update = format!("UPDATE {db}.k SET id = id + ? WHERE v = ?");
    let amount: &[u8] = b"\x0c0.0000000001";
    let run = |addr, tag: String, v: i32| {
        let update = update.clone();
        async move {
            let mut s = raw_login(addr).await;
            let u = prepare(&mut s, &format!("{tag}{update}")).await;
            execute(&mut s, u, &[(0xf6, amount), (0x03, &v.to_le_bytes())]).await
        }
    };
    let ok = run("127.0.0.1:3306".parse().unwrap(), String::new(), 1).await;
    assert_eq!(
        ok[..2],
        [0, 1],
        "directly: {}",
        String::from_utf8_lossy(&ok)
    );
    let xid = coord.begin(60_000).await;
    let ok = run(proxy.addr, format!("/*+ XID('{xid}') */ "), 2).await;
    assert_eq!(
        ok[..2],
        [0, 1],
        "through the proxy: {}",
        String::from_utf8_lossy(&ok)
    );
    let keys: Vec<String> = d
        .query("SELECT CAST(id AS CHAR) FROM k ORDER BY v")
        .await
        .unwrap();
    assert_eq!(
        keys,
        [
            "12345678901234567890.1234567891",
            "22345678901234567890.1234567891"
        ]
    );
    assert_eq!(coord.rollback(&xid).await, "rolled_back");
    assert_eq!(dump(db, "k").await[1], original[1], "row 2's key restored");
}
