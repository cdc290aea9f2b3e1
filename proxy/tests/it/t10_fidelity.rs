use mysql_async::prelude::*;
use mysql_async::{Row, Value};
use rewind_test_support::{direct, fresh_db};

use crate::{meta, values, Proxy};

const TABLE: &str = r#"CREATE TABLE every_type (
    id INT PRIMARY KEY,
    ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, siu SMALLINT UNSIGNED,
    mi MEDIUMINT, miu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED,
    bi BIGINT, biu BIGINT UNSIGNED,
    f FLOAT, d DOUBLE, dz DOUBLE, dec65 DECIMAL(65,30), decn DECIMAL(10,2),
    dt DATE, dtm DATETIME(6), ts TIMESTAMP(6) NULL, tm TIME(6), tmn TIME, yr YEAR,
    ch CHAR(10), vc VARCHAR(100), vb VARBINARY(20), bn BINARY(4),
    bl BLOB, lb LONGBLOB, tx TEXT, js JSON,
    bt BIT(13), en ENUM('a','b'), st SET('x','y','z'),
    g GEOMETRY, nul INT NULL
)"#;

const ROW: &str = r#"INSERT INTO every_type VALUES (
    1, -128, 255, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295,
    -9223372036854775808, 18446744073709551615,
    3.40282e38, 1.7976931348623157e308, -0.0,
    -99999999999999999999999999999999999.999999999999999999999999999999, -0.01,
    '9999-12-31', '2038-01-19 03:14:07.999999', '1970-01-02 00:00:01.000001',
    '-838:59:59.000000', '-00:00:01', 2155,
    'abc', 'emoji 😀 ünïcödé', X'00FF00', X'00000001',
    X'00010203FF00', REPEAT(X'00FF', 100000), 'text', '{"a": [1, 2, {"b": null}], "s": "😀"}',
    b'1010101010101', 'b', 'x,z',
    ST_GeomFromText('POINT(1 2)'), NULL
), (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, '0000-00-00', '0000-00-00 00:00:00', NULL, '00:00:00', NULL, 0,
    '', '', '', NULL, '', NULL, NULL, NULL, NULL, NULL, '', NULL, NULL)"#;

async fn compare(db: &str, proxy: &Proxy, sql: &str) {
    let mut p = proxy.conn(db).await;
    let mut d = direct(db).await;
    // Text protocol.
    let mut pr = p.query_iter(sql).await.unwrap();
    let pcols: Vec<String> = pr.columns_ref().iter().map(meta).collect();
    let prows = values(pr.collect::<Row>().await.unwrap());
    let mut dr = d.query_iter(sql).await.unwrap();
    let dcols: Vec<String> = dr.columns_ref().iter().map(meta).collect();
    let drows = values(dr.collect::<Row>().await.unwrap());
    assert_eq!(pcols, dcols, "text metadata");
    assert_eq!(prows, drows, "text values");
    // Binary protocol.
    let ps = p.prep(sql).await.unwrap();
    let ds = d.prep(sql).await.unwrap();
    let pcols: Vec<String> = ps.columns().iter().map(meta).collect();
    let dcols: Vec<String> = ds.columns().iter().map(meta).collect();
    assert_eq!(pcols, dcols, "prepared metadata");
    let mut pr = p.exec_iter(&ps, ()).await.unwrap();
    let pcols: Vec<String> = pr.columns_ref().iter().map(meta).collect();
    let prows = values(pr.collect::<Row>().await.unwrap());
    let mut dr = d.exec_iter(&ds, ()).await.unwrap();
    let dcols: Vec<String> = dr.columns_ref().iter().map(meta).collect();
    let drows = values(dr.collect::<Row>().await.unwrap());
    assert_eq!(pcols, dcols, "binary metadata");
    assert_eq!(prows, drows, "binary values");
    assert_eq!(prows.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_column_type_reads_back_identically() {
    let db = "rwp_fidelity";
    fresh_db(db).await;
    let mut d = direct(db).await;
    d.query_drop(TABLE).await.unwrap();
    d.query_drop(ROW).await.unwrap();
    let proxy = Proxy::start().await;
    compare(db, &proxy, "SELECT * FROM every_type ORDER BY id").await;
    compare(
        db,
        &proxy,
        "SELECT id, dec65 * 2 AS expr, CONCAT(vc, ch) AS c, CAST(biu AS CHAR) AS s, \
         -0.0e0 AS negz, CAST(1.5 AS DECIMAL(65,30)) AS big, NOW(6) > '2000-01-01' AS b \
         FROM every_type ORDER BY id",
    )
    .await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_params_of_every_type_and_null() {
    let db = "rwp_params";
    fresh_db(db).await;
    let proxy = Proxy::start().await;
    let mut p = proxy.conn(db).await;
    p.query_drop(
        "CREATE TABLE t (id INT PRIMARY KEY, bi BIGINT, biu BIGINT UNSIGNED, d DOUBLE, \
         f FLOAT, dec65 DECIMAL(65,30), dtm DATETIME(6), tm TIME(6), bl LONGBLOB, vc VARCHAR(50), n INT)",
    )
    .await
    .unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 256) as u8).collect();
    let params: Vec<Value> = vec![
        Value::Int(1),
        Value::Int(i64::MIN),
        Value::UInt(u64::MAX),
        Value::Double(-1.5e300),
        Value::Float(1.25),
        Value::Bytes(b"-12345678901234567890.123456789012345678901234567890".to_vec()),
        Value::Date(2024, 2, 29, 23, 59, 59, 999_999),
        Value::Time(true, 34, 22, 59, 59, 1),
        Value::Bytes(big.clone()),
        Value::Bytes("😀 ünï".as_bytes().to_vec()),
        Value::NULL,
    ];
    let stmt = p
        .prep("INSERT INTO t VALUES (?,?,?,?,?,?,?,?,?,?,?)")
        .await
        .unwrap();
    p.exec_drop(&stmt, params.clone()).await.unwrap();
    assert_eq!(p.affected_rows(), 1);
    let got: Vec<Row> = p
        .exec("SELECT * FROM t WHERE id = ? AND n IS NULL", (1,))
        .await
        .unwrap();
    let got = values(got).remove(0);
    assert_eq!(got[1], Value::Int(i64::MIN));
    assert_eq!(got[2], Value::UInt(u64::MAX));
    assert_eq!(got[3], Value::Double(-1.5e300));
    assert_eq!(got[4], Value::Float(1.25));
    assert_eq!(
        got[5],
        Value::Bytes(b"-12345678901234567890.123456789012345678901234567890".to_vec())
    );
    assert_eq!(got[6], Value::Date(2024, 2, 29, 23, 59, 59, 999_999));
    assert_eq!(got[7], Value::Time(true, 34, 22, 59, 59, 1));
    assert_eq!(got[8], Value::Bytes(big));
    assert_eq!(got[9], Value::Bytes("😀 ünï".as_bytes().to_vec()));
    assert_eq!(got[10], Value::NULL);
    p.close(stmt).await.unwrap();
    let nul: Option<i64> = p
        .exec_first("SELECT ?", (Value::NULL,))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(nul, None);
    proxy.stop().await;
}
