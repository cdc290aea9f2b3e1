//! Every supported SQL shape, through a real proxy and coordinator, in text and binary
//! protocol: a global rollback leaves every table byte-identical to before (server
//! checksums), and a global commit leaves the same data as running the statements
//! directly. Every refused shape is refused with 1235 and nothing applied.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Value};
use rewind_test_support::*;

/// Tables every shape runs against.
const SETUP: &[&str] = &[
    "CREATE TABLE acc (id INT PRIMARY KEY, bal DECIMAL(12,2) NOT NULL, n INT NOT NULL DEFAULT 0, note VARCHAR(20))",
    "INSERT INTO acc VALUES (1, 10.00, 1, 'n1'), (2, 20.50, 2, 'n2'), (3, 30.00, 3, NULL), (4, 40.25, 4, 'x4'), (5, 50.00, 5, 'n5')",
    "CREATE TABLE seq (id BIGINT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(10) NOT NULL DEFAULT 'd')",
    "INSERT INTO seq (v) VALUES ('a'), ('b')",
    "CREATE TABLE pair (region CHAR(2), id INT, qty INT, PRIMARY KEY (region, id))",
    "INSERT INTO pair VALUES ('eu', 1, 5), ('us', 1, 6), ('eu', 2, 7)",
    "CREATE TABLE named (code VARCHAR(40) PRIMARY KEY, label TEXT) DEFAULT CHARSET utf8mb4 COLLATE utf8mb4_general_ci",
    "INSERT INTO named VALUES ('alpha', 'A'), ('Beta', 'B'), ('γάμμα', 'Γ')",
    "CREATE TABLE blobs (uuid BINARY(16) PRIMARY KEY, body BLOB)",
    "INSERT INTO blobs VALUES (UNHEX('00112233445566778899AABBCCDDEEFF'), X'00FF00'), (UNHEX('FFEEDDCCBBAA99887766554433221100'), NULL)",
    "CREATE TABLE counter (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(20) NOT NULL UNIQUE, hits INT NOT NULL DEFAULT 0)",
    "INSERT INTO counter (name, hits) VALUES ('home', 5), ('about', 1)",
    "CREATE TABLE ranked (id INT PRIMARY KEY, pos INT NOT NULL UNIQUE)",
    "INSERT INTO ranked VALUES (1, 1), (2, 2), (3, 3)",
];
const TABLES: &[&str] = &["acc", "seq", "pair", "named", "blobs", "counter", "ranked"];

/// One statement of a shape: text, or prepared with parameters.
#[derive(Clone)]
enum St {
    Q(&'static str),
    P(&'static str, Vec<Value>),
}

struct Shape {
    name: &'static str,
    steps: Vec<St>,
}

fn shapes() -> Vec<Shape> {
    use St::*;
    let s = |name, steps| Shape { name, steps };
    vec![
        s("update by pk", vec![Q("UPDATE acc SET bal = bal + 5 WHERE id = 1")]),
        s("update range", vec![Q("UPDATE acc SET bal = bal * 2 WHERE id BETWEEN 2 AND 4")]),
        s("update IN", vec![Q("UPDATE acc SET note = 'x' WHERE id IN (1, 3, 5)")]),
        s("update non-key predicate", vec![Q("UPDATE acc SET bal = 0 WHERE note LIKE 'n%' AND bal > 15")]),
        s("update expressions", vec![Q("UPDATE acc SET n = n + 1, bal = bal - 1.25, note = CONCAT(note, '!') WHERE id = 2")]),
        s("update order by limit", vec![Q("UPDATE acc SET n = n + 10 ORDER BY bal DESC, id LIMIT 2")]),
        s("update in order, to keep a unique column free of collisions", vec![Q("UPDATE ranked SET pos = pos + 1 ORDER BY pos DESC")]),
        s("update matching nothing", vec![Q("UPDATE acc SET n = 0 WHERE id > 100")]),
        s("update leaving some matched rows unchanged", vec![Q("UPDATE acc SET n = 3 WHERE id IN (2, 3, 4)")]),
        s("update qualified, backquoted, aliased", vec![Q("UPDATE `DB`.`acc` AS `a` SET `a`.`bal` = 1 WHERE `a`.`id` = 3")]),
        s("update composite key", vec![Q("UPDATE pair SET qty = qty + 1 WHERE id = 1")]),
        s("update varchar key, case-insensitive match", vec![Q("UPDATE named SET label = 'b' WHERE code = 'BETA'")]),
        s("update binary(16) key", vec![Q("UPDATE blobs SET body = X'DEADBEEF' WHERE uuid = UNHEX('00112233445566778899AABBCCDDEEFF')")]),
        s("delete by pk", vec![Q("DELETE FROM acc WHERE id = 2")]),
        // After the first statement on a table, a text statement whose condition pins its
        // whole integer key runs with its images as one query (t17 counts them).
        s("pinned by key, again on the same table", vec![
            Q("UPDATE acc SET bal = bal + 1 WHERE id = 1"),
            Q("UPDATE acc SET bal = bal + 2, note = 'p' WHERE id = 2"),
            Q("UPDATE acc SET n = n WHERE id = 3"),
            Q("UPDATE acc SET n = 0 WHERE id = 99"),
            Q("DELETE FROM acc WHERE id = 4"),
            Q("DELETE FROM acc WHERE id = 98"),
            Q("UPDATE seq SET v = 'x' WHERE id = 1"),
            Q("UPDATE seq SET v = 'y' WHERE `DB`.seq.id = 1"),
            Q("DELETE FROM seq WHERE 1 = id"),
        ]),
        s("delete range", vec![Q("DELETE FROM acc WHERE id >= 4")]),
        s("delete IN", vec![Q("DELETE FROM acc WHERE id IN (1, 5)")]),
        s("delete non-key", vec![Q("DELETE FROM acc WHERE note IS NULL OR bal > 45")]),
        s("delete order by limit", vec![Q("DELETE FROM acc ORDER BY bal LIMIT 2")]),
        s("delete qualified backquoted", vec![Q("DELETE FROM `DB`.`pair` WHERE `region` = 'eu'")]),
        s("delete binary key", vec![Q("DELETE FROM blobs WHERE uuid = UNHEX('FFEEDDCCBBAA99887766554433221100')")]),
        s("insert one row", vec![Q("INSERT INTO acc (id, bal) VALUES (6, 60)")]),
        s("insert multi-row", vec![Q("INSERT INTO acc (id, bal, note) VALUES (7, 1, 'a'), (8, 2, 'b'), (9, 3, NULL)")]),
        s("insert without column list", vec![Q("INSERT INTO acc VALUES (10, 5.5, 1, 'all')")]),
        s("insert auto-increment", vec![Q("INSERT INTO seq (v) VALUES ('c')")]),
        s("insert auto-increment multi-row, DEFAULT and NULL", vec![Q("INSERT INTO seq (id, v) VALUES (NULL, 'c'), (DEFAULT, 'd'), (0, DEFAULT)")]),
        s("insert auto-increment with increment 3", vec![Q("SET SESSION auto_increment_increment = 3"), Q("INSERT INTO seq (v) VALUES ('x'), ('y'), ('z')")]),
        s("insert SET form", vec![Q("INSERT INTO pair SET region = 'as', id = 9, qty = 1")]),
        s("insert composite, varchar and binary keys", vec![
            Q("INSERT INTO pair VALUES ('us', 2, 1)"),
            Q("INSERT INTO named VALUES ('δέλτα', 'Δ')"),
            Q("INSERT INTO blobs VALUES (X'0102030405060708090A0B0C0D0E0F10', X'00')"),
        ]),
        s("several statements on the same rows", vec![
            Q("UPDATE acc SET bal = bal - 10 WHERE id = 1"),
            Q("UPDATE acc SET bal = bal + 10 WHERE id = 2"),
            Q("UPDATE acc SET bal = bal - 1 WHERE id IN (1, 2)"),
            Q("INSERT INTO acc (id, bal) VALUES (11, 0)"),
            Q("UPDATE acc SET bal = 11 WHERE id = 11"),
            Q("DELETE FROM acc WHERE id = 11"),
            Q("DELETE FROM acc WHERE id = 3"),
        ]),
        s("savepoint rolled back inside the branch", vec![
            Q("UPDATE acc SET bal = 1 WHERE id = 1"),
            Q("SAVEPOINT s1"),
            Q("UPDATE acc SET bal = 2 WHERE id = 2"),
            Q("ROLLBACK TO SAVEPOINT s1"),
            Q("UPDATE acc SET bal = 3 WHERE id = 3"),
        ]),
        s("insert on duplicate key update: existing and new rows by unique key", vec![Q("INSERT INTO counter (name, hits) VALUES ('home', 1), ('blog', 1) ON DUPLICATE KEY UPDATE hits = hits + VALUES(hits)")]),
        s("insert on duplicate key update by primary key", vec![Q("INSERT INTO acc (id, bal) VALUES (1, 99), (12, 5) ON DUPLICATE KEY UPDATE bal = bal + 1, note = 'dup'")]),
        s("insert on duplicate key update hitting a row inserted by the same statement", vec![Q("INSERT INTO counter (name, hits) VALUES ('new', 1), ('new', 2) ON DUPLICATE KEY UPDATE hits = hits + 10")]),
        s("update join, both tables written", vec![Q("UPDATE acc a JOIN pair p ON p.id = a.id SET a.bal = a.bal + p.qty, p.qty = p.qty * 2 WHERE a.id <= 2")]),
        s("update join, one table written", vec![Q("UPDATE `DB`.acc AS a INNER JOIN seq s ON s.id = a.id SET a.note = s.v")]),
        s("prepared insert on duplicate key update", vec![P("INSERT INTO counter (name, hits) VALUES (?, ?) ON DUPLICATE KEY UPDATE hits = hits + ?", vec![Value::from("about"), Value::from(3), Value::from(3)])]),
        s("prepared update join with parameters in ON, SET and WHERE", vec![P("UPDATE acc AS a JOIN seq s ON s.id = a.id + ? SET a.note = CONCAT(s.v, ?) WHERE a.bal > ?", vec![Value::from(0), Value::from("-j"), Value::from(5)])]),
        s("prepared update", vec![P("UPDATE acc SET bal = bal + ?, note = ? WHERE id BETWEEN ? AND ?", vec![Value::from("1.50"), Value::from("p"), Value::from(2), Value::from(4)])]),
        s("prepared update with negative, NULL and padded values", vec![P("UPDATE acc SET bal = bal - ?, n = n -?, note = ? WHERE note = ? OR id = ?", vec![Value::from("-1.25"), Value::from(-2), Value::NULL, Value::from("n1 "), Value::from(3)])]),
        s("prepared update with quote and backslash", vec![P("UPDATE acc SET note = ? WHERE id = ? OR note = ?", vec![Value::from("it's\\"), Value::from(2), Value::from("x4")])]),
        s("prepared delete", vec![P("DELETE FROM acc WHERE note = ? OR id = ?", vec![Value::from("n1"), Value::from(4)])]),
        s("prepared insert multi-row", vec![P("INSERT INTO acc (id, bal, note) VALUES (?, ?, ?), (?, ?, NULL)", vec![Value::from(20), Value::from("7.25"), Value::NULL, Value::from(21), Value::from(8)])]),
        s("prepared insert auto-increment", vec![P("INSERT INTO seq (id, v) VALUES (?, ?), (?, ?)", vec![Value::NULL, Value::from("p"), Value::NULL, Value::from("q")])]),
        s("prepared binary key", vec![P("UPDATE blobs SET body = ? WHERE uuid = ?", vec![Value::Bytes(vec![0, 1, 2, 0xff]), Value::Bytes(hex16("00112233445566778899AABBCCDDEEFF"))])]),
        // What other AT implementations refuse, done exactly.
        s("replace hitting a row by primary key and another by unique key", vec![Q("REPLACE INTO counter (id, name, hits) VALUES (1, 'about', 9)")]),
        s("replace with generated keys, one row colliding by unique key", vec![Q("REPLACE INTO counter (name, hits) VALUES ('home', 7), ('fresh', 1)")]),
        s("replace without column list, existing and new", vec![Q("REPLACE INTO acc VALUES (1, 1, 1, 'r'), (42, 2, 2, NULL)")]),
        s("replace set form", vec![Q("REPLACE INTO pair SET region = 'eu', id = 2, qty = 70")]),
        s("insert ignore skipping an existing key and a repeated one", vec![Q("INSERT IGNORE INTO acc (id, bal) VALUES (1, 99), (43, 1), (43, 2)")]),
        s("insert ignore with generated keys, skipped by unique key", vec![Q("INSERT IGNORE INTO counter (name, hits) VALUES ('home', 1), ('zeta', 2)")]),
        s("insert select with keys from the select", vec![Q("INSERT INTO acc (id, bal, n, note) SELECT id + 100, bal, n, note FROM acc WHERE id <= 3")]),
        s("insert select without column list", vec![Q("INSERT INTO acc SELECT id + 200, bal * 2, n, CONCAT('c', id) FROM acc WHERE bal > 20")]),
        s("insert select with generated keys, increment 2, after a gap", vec![
            Q("SET SESSION auto_increment_increment = 2"),
            Q("INSERT INTO seq (id, v) VALUES (50, 'gap')"),
            Q("INSERT INTO seq (v) SELECT v FROM seq ORDER BY id"),
        ]),
        s("insert select matching nothing", vec![Q("INSERT INTO acc (id, bal) SELECT id + 300, bal FROM acc WHERE id > 100")]),
        s("insert ignore select skipping existing keys", vec![Q("INSERT IGNORE INTO acc (id, bal) SELECT id * 2, bal FROM acc")]),
        s("multi-table delete from both tables", vec![Q("DELETE a, p FROM acc a JOIN pair p ON p.id = a.id WHERE a.id = 1")]),
        s("multi-table delete, one target, USING form", vec![Q("DELETE FROM a USING `DB`.acc AS a JOIN pair p ON p.id = a.id WHERE p.region = 'eu'")]),
        s("multi-table delete with comma join", vec![Q("DELETE acc FROM acc, named WHERE acc.note = LOWER(named.label) OR acc.id = 5")]),
        s("update of the primary key", vec![Q("UPDATE acc SET id = id + 100, note = 'moved' WHERE id <= 2")]),
        s("update of the primary key shifting rows onto each other's keys", vec![Q("UPDATE ranked SET id = id + 1 ORDER BY id DESC")]),
        s("update of part of a composite key", vec![Q("UPDATE pair SET region = 'as' WHERE region = 'eu'")]),
        s("update of a varchar key", vec![Q("UPDATE named SET code = CONCAT(code, '-x') WHERE code <> 'alpha'")]),
        s("prepared replace", vec![P("REPLACE INTO acc (id, bal, note) VALUES (?, ?, ?), (?, ?, NULL)", vec![Value::from(2), Value::from("2.50"), Value::from("rp"), Value::from(60), Value::from(6)])]),
        s("prepared insert ignore", vec![P("INSERT IGNORE INTO acc (id, bal) VALUES (?, ?), (?, ?)", vec![Value::from(3), Value::from(1), Value::from(61), Value::from(1)])]),
        s("prepared insert select", vec![P("INSERT INTO acc (id, bal) SELECT id + ?, bal FROM acc WHERE id < ?", vec![Value::from(400), Value::from(3)])]),
        s("prepared multi-table delete", vec![P("DELETE a FROM acc a JOIN pair p ON p.id = a.id WHERE p.qty > ?", vec![Value::from(5)])]),
        s("prepared update of the primary key", vec![P("UPDATE acc SET id = ?, note = ? WHERE id = ?", vec![Value::from(77), Value::from("k"), Value::from(4)])]),
    ]
}

fn hex16(s: &str) -> Vec<u8> {
    (0..16)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn sql_for(sql: &str, db: &str) -> String {
    sql.replace("`DB`", &format!("`{db}`"))
}

async fn setup(db: &str) {
    fresh_db(db).await;
    let mut c = direct(db).await;
    for s in SETUP {
        c.query_drop(*s).await.unwrap();
    }
    c.disconnect().await.unwrap();
}

async fn run(conn: &mut Conn, steps: &[St], db: &str, xid: Option<&str>) {
    for (i, step) in steps.iter().enumerate() {
        let tag = match (xid, i) {
            (Some(x), 0) => format!("/*+ XID('{x}') */ "),
            _ => String::new(),
        };
        match step {
            St::Q(sql) => conn
                .query_drop(format!("{tag}{}", sql_for(sql, db)))
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
            St::P(sql, params) => conn
                .exec_drop(format!("{tag}{}", sql_for(sql, db)), params.clone())
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_every_shape_rolls_back_byte_identical_and_commits_like_direct() {
    let dir = TempDir::new("shapes");
    let coord = Coordinator::start(&dir, &[]).await;
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &[]).await;
    for (i, shape) in shapes().into_iter().enumerate() {
        let (rb, cm, dr) = (
            format!("rwt_shape_{i}_rb"),
            format!("rwt_shape_{i}_cm"),
            format!("rwt_shape_{i}_dr"),
        );
        for db in [&rb, &cm, &dr] {
            setup(db).await;
        }
        let original = checksums(&rb, TABLES).await;

        // Rollback: explicit local transaction, first statement tagged.
        let xid = coord.begin(60_000).await;
        let mut c = proxy.conn(&rb).await;
        c.query_drop("BEGIN").await.unwrap();
        run(&mut c, &shape.steps, &rb, Some(&xid)).await;
        c.query_drop("COMMIT").await.unwrap();
        c.disconnect().await.unwrap();
        let changed = checksums(&rb, TABLES).await != original;
        assert_eq!(
            undo_rows(Some(&xid)).await.0,
            u64::from(changed),
            "{}: an undo record exactly when rows changed",
            shape.name
        );
        assert_eq!(coord.rollback(&xid).await, "rolled_back", "{}", shape.name);
        assert_eq!(
            checksums(&rb, TABLES).await,
            original,
            "{}: rollback is not byte-identical",
            shape.name
        );
        assert_eq!(undo_rows(Some(&xid)).await, (0, 0), "{}", shape.name);
        assert!(coord.locks().await.is_empty(), "{}: locks left", shape.name);

        // Commit: the same statements, then the same statements directly.
        let xid = coord.begin(60_000).await;
        let mut c = proxy.conn(&cm).await;
        c.query_drop("BEGIN").await.unwrap();
        run(&mut c, &shape.steps, &cm, Some(&xid)).await;
        c.query_drop("COMMIT").await.unwrap();
        c.disconnect().await.unwrap();
        let st = coord.commit(&xid).await;
        assert!(
            st == "committed" || st == "committing",
            "{}: {st}",
            shape.name
        );
        coord
            .wait_status(&xid, "committed", Duration::from_secs(10))
            .await;
        let mut d = direct(&dr).await;
        d.query_drop("BEGIN").await.unwrap();
        run(&mut d, &shape.steps, &dr, None).await;
        d.query_drop("COMMIT").await.unwrap();
        d.disconnect().await.unwrap();
        assert_eq!(
            checksums(&cm, TABLES)
                .await
                .iter()
                .map(|c| c.1)
                .collect::<Vec<_>>(),
            checksums(&dr, TABLES)
                .await
                .iter()
                .map(|c| c.1)
                .collect::<Vec<_>>(),
            "{}: commit differs from running the statements directly",
            shape.name
        );
        eventually(
            "undo records of a commit are deleted",
            Duration::from_secs(10),
            || async { undo_rows(Some(&xid)).await == (0, 0) },
        )
        .await;
        for db in [&rb, &cm, &dr] {
            direct("mysql")
                .await
                .query_drop(format!("DROP DATABASE `{db}`"))
                .await
                .unwrap();
        }
    }
    assert!(coord.locks().await.is_empty());
}

/// In autocommit, a tagged statement is a branch by itself: registered, undone, and the
/// client sees the statement's own OK (affected rows, last insert id) in autocommit state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t11_autocommit_statement_is_its_own_branch() {
    let dir = TempDir::new("autocommit");
    let coord = Coordinator::start(&dir, &[]).await;
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &[]).await;
    let db = "rwt_autocommit";
    setup(db).await;
    let original = checksums(db, TABLES).await;
    let xid = coord.begin(60_000).await;
    let mut c = proxy.conn(db).await;
    c.query_drop(format!(
        "/*+ XID('{xid}') */ UPDATE acc SET bal = bal + 1 WHERE id <= 3"
    ))
    .await
    .unwrap();
    assert_eq!(c.affected_rows(), 3);
    c.query_drop(format!(
        "/*+ XID('{xid}') */ INSERT INTO seq (v) VALUES ('n'), ('m')"
    ))
    .await
    .unwrap();
    let first = c.last_insert_id().expect("last insert id");
    assert_eq!(c.affected_rows(), 2);
    let in_trans: Option<(i64, i64)> = c
        .query_first("SELECT @@autocommit, @@in_transaction")
        .await
        .unwrap();
    assert_eq!(
        in_trans,
        Some((1, 0)),
        "the proxy's own transaction is closed"
    );
    let ids: Vec<i64> = c
        .query("SELECT id FROM seq WHERE v IN ('n', 'm') ORDER BY id")
        .await
        .unwrap();
    assert_eq!(ids, [first as i64, first as i64 + 1]);
    c.disconnect().await.unwrap();
    let tx = coord.transaction(&xid).await;
    assert_eq!(tx["branches"].as_array().map(Vec::len), Some(2), "{tx}");
    assert_eq!(coord.rollback(&xid).await, "rolled_back");
    assert_eq!(checksums(db, TABLES).await, original);
}

/// Everything AT mode cannot undo exactly is refused with 1235 naming the construct,
/// before anything is applied, and the client's local transaction goes on as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t12_refused_shapes_apply_nothing() {
    let dir = TempDir::new("refused");
    let coord = Coordinator::start(&dir, &[]).await;
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &[]).await;
    let db = "rwt_refused";
    setup(db).await;
    let mut d = direct(db).await;
    for s in [
        "CREATE TABLE nopk (a INT, b INT)",
        "INSERT INTO nopk VALUES (1, 1)",
        "CREATE TABLE myisam (id INT PRIMARY KEY, v INT) ENGINE=MyISAM",
        "INSERT INTO myisam VALUES (1, 1)",
        "CREATE TABLE audited (id INT PRIMARY KEY, v INT)",
        "CREATE TABLE audit_log (id INT AUTO_INCREMENT PRIMARY KEY, what INT)",
        "CREATE TRIGGER audited_upd AFTER UPDATE ON audited FOR EACH ROW INSERT INTO audit_log (what) VALUES (NEW.v)",
        "INSERT INTO audited VALUES (1, 1)",
        "CREATE TABLE parent (id INT PRIMARY KEY) ENGINE=InnoDB",
        "CREATE TABLE child (id INT PRIMARY KEY, pid INT, FOREIGN KEY (pid) REFERENCES parent (id) ON DELETE CASCADE) ENGINE=InnoDB",
        "INSERT INTO parent VALUES (1)",
        "INSERT INTO child VALUES (1, 1)",
        "CREATE VIEW acc_view AS SELECT id, bal FROM acc",
    ] {
        d.query_drop(s).await.unwrap();
    }
    let all = [
        "acc",
        "seq",
        "pair",
        "named",
        "blobs",
        "nopk",
        "myisam",
        "audited",
        "audit_log",
        "parent",
        "child",
    ];
    let cases: &[(&str, &str)] = &[
        (
            "UPDATE acc SET n = 1, id = n + 10 WHERE id = 1",
            "primary-key column",
        ),
        ("REPLACE INTO acc SELECT * FROM acc", "REPLACE … SELECT"),
        (
            "INSERT INTO acc SELECT * FROM acc UNION SELECT * FROM acc",
            "INSERT … SELECT",
        ),
        ("UPDATE nopk SET b = 2", "no primary key"),
        (
            "INSERT IGNORE INTO acc (id, bal) VALUES (1, 1) ON DUPLICATE KEY UPDATE bal = 2",
            "INSERT IGNORE",
        ),
        (
            "DELETE a, a2 FROM acc a JOIN acc a2 ON a.id = a2.id",
            "multi-table DELETE",
        ),
        (
            "DELETE p FROM parent p JOIN child c ON c.pid = p.id",
            "foreign key",
        ),
        ("REPLACE INTO parent VALUES (1)", "foreign key"),
        ("INSERT INTO audited SELECT 5, 5", "trigger"),
        ("UPDATE myisam SET v = 2", "MyISAM"),
        ("UPDATE audited SET v = 2", "trigger"),
        ("DELETE FROM parent WHERE id = 1", "foreign key"),
        ("UPDATE acc_view SET bal = 0", "view"),
        ("CREATE TABLE t2 (id INT PRIMARY KEY)", "CREATE"),
        ("CALL nothing()", "CALL"),
        ("LOCK TABLES acc WRITE", "LOCK"),
        ("SET autocommit = 1", "autocommit"),
        ("START TRANSACTION", "START TRANSACTION"),
        ("UPDATE acc SET bal = 1; DELETE FROM acc", "one at a time"),
        (
            "INSERT INTO seq (id, v) VALUES (UUID_SHORT(), 'u')",
            "expression",
        ),
    ];
    let before = checksums(db, &all).await;
    for (sql, named) in cases {
        let xid = coord.begin(60_000).await;
        let mut c = proxy.conn(db).await;
        c.query_drop("BEGIN").await.unwrap();
        // A statement that works, so "nothing applied" also means "nothing lost".
        c.query_drop(format!(
            "/*+ XID('{xid}') */ UPDATE acc SET n = n + 1 WHERE id = 5"
        ))
        .await
        .unwrap();
        let (code, _, msg) = server_error(c.query_drop(*sql).await).unwrap();
        assert_eq!(code, 1235, "{sql}: {msg}");
        assert!(msg.contains(named), "{sql}: {msg:?} should name {named:?}");
        // The transaction goes on: the earlier statement is still there and commits.
        let n: Option<i64> = c
            .query_first("SELECT n FROM acc WHERE id = 5")
            .await
            .unwrap();
        assert_eq!(n, Some(6), "{sql}");
        c.query_drop("COMMIT").await.unwrap();
        c.disconnect().await.unwrap();
        assert_eq!(coord.rollback(&xid).await, "rolled_back");
        assert_eq!(checksums(db, &all).await, before, "{sql} applied something");
    }
    // Refused in autocommit too, with nothing left open.
    let xid = coord.begin(60_000).await;
    let mut c = proxy.conn(db).await;
    let (code, _, _) = server_error(
        c.query_drop(format!("/*+ XID('{xid}') */ UPDATE nopk SET b = 7"))
            .await,
    )
    .unwrap();
    assert_eq!(code, 1235);
    let open: Option<i64> = c.query_first("SELECT @@in_transaction").await.unwrap();
    assert_eq!(open, Some(0));
    assert_eq!(checksums(db, &all).await, before);
}

/// XID errors: malformed, unknown and finished XIDs get 1397 with nothing applied (in the
/// client's own transaction, the whole of it rolled back); a second XID inside a bound
/// transaction gets 1398.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t13_xid_errors() {
    let dir = TempDir::new("xids");
    let coord = Coordinator::start(&dir, &[]).await;
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &[]).await;
    let db = "rwt_xids";
    setup(db).await;
    let before = checksums(db, TABLES).await;
    let finished = coord.begin(60_000).await;
    coord.rollback(&finished).await;
    let mut c = proxy.conn(db).await;
    for xid in ["nonsense", "rw-999999", finished.as_str()] {
        let (code, _, msg) = server_error(
            c.query_drop(format!("/*+ XID('{xid}') */ UPDATE acc SET bal = 0"))
                .await,
        )
        .unwrap();
        assert_eq!(code, 1397, "{xid}: {msg}");
    }
    assert_eq!(checksums(db, TABLES).await, before);
    // In the client's own transaction, the check is answered while the statement runs:
    // a refusal rolls the local transaction back, the work before the tag with it, and
    // says so.
    for xid in ["rw-999999", finished.as_str()] {
        c.query_drop("BEGIN").await.unwrap();
        c.query_drop("UPDATE acc SET bal = bal + 1 WHERE id = 3")
            .await
            .unwrap();
        let (code, _, msg) = server_error(
            c.query_drop(format!(
                "/*+ XID('{xid}') */ UPDATE acc SET bal = 0 WHERE id = 1"
            ))
            .await,
        )
        .unwrap();
        assert_eq!(code, 1397, "{xid}: {msg}");
        assert!(
            msg.contains("the local transaction was rolled back"),
            "{msg}"
        );
        let open: Option<i64> = c.query_first("SELECT @@in_transaction").await.unwrap();
        assert_eq!(open, Some(0), "{xid}");
        assert_eq!(checksums(db, TABLES).await, before, "{xid}");
    }
    let (a, b) = (coord.begin(60_000).await, coord.begin(60_000).await);
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop(format!(
        "/*+ XID('{a}') */ UPDATE acc SET bal = 0 WHERE id = 1"
    ))
    .await
    .unwrap();
    let (code, _, msg) = server_error(
        c.query_drop(format!(
            "/*+ XID('{b}') */ UPDATE acc SET bal = 0 WHERE id = 2"
        ))
        .await,
    )
    .unwrap();
    assert_eq!(code, 1398, "{msg}");
    assert!(msg.contains(&a), "{msg}");
    c.query_drop("ROLLBACK").await.unwrap();
    // A global transaction that ends while its branch is still open: the branch's COMMIT
    // is refused (1397) and the local transaction rolled back.
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop(format!(
        "/*+ XID('{b}') */ UPDATE acc SET bal = 0 WHERE id = 2"
    ))
    .await
    .unwrap();
    assert_eq!(coord.rollback(&b).await, "rolled_back");
    let (code, _, msg) = server_error(c.query_drop("COMMIT").await).unwrap();
    assert_eq!(code, 1397, "{msg}");
    assert!(msg.contains("rolled back"), "{msg}");
    assert_eq!(checksums(db, TABLES).await, before);
}

/// The XID check answered by the proxy itself (`at::begun`): once this proxy registered a
/// branch of an XID, the next branch of it needs no status call. Once the transaction is
/// decided (the rollback's commands reached the proxy), or the coordinator is gone (no
/// stream would bring its decision), a tagged statement is refused at once again, before
/// it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t13_known_xids_are_refused_once_decided() {
    let dir = TempDir::new("known-xids");
    let mut coord = Coordinator::start(&dir, &[]).await;
    let (proxy, admin) = Proxy::start_with_admin(&dir, "proxy", &coord.grpc_url()).await;
    let db = "rwt_known_xids";
    setup(db).await;
    let before = checksums(db, TABLES).await;
    let known = "rewind_proxy_xid_checks_total{answer=\"known\"}";
    let asked = "rewind_proxy_xid_checks_total{answer=\"coordinator\"}";
    let update = |xid: &str, id: u32| {
        format!("/*+ XID('{xid}') */ UPDATE acc SET bal = bal + 1 WHERE id = {id}")
    };
    let mut c = proxy.conn(db).await;
    let xid = coord.begin(60_000).await;
    c.query_drop(update(&xid, 1)).await.unwrap();
    assert_eq!(proxy_metric(admin, asked).await, 1.0);
    c.query_drop(update(&xid, 2)).await.unwrap();
    assert_eq!(
        proxy_metric(admin, known).await,
        1.0,
        "no status call for the second branch"
    );
    assert_eq!(proxy_metric(admin, asked).await, 1.0);
    // The rollback answers once its undo ran: the proxy has had its commands.
    assert_eq!(coord.rollback(&xid).await, "rolled_back");
    c.query_drop("BEGIN").await.unwrap();
    let (code, _, msg) = server_error(c.query_drop(update(&xid, 3)).await).unwrap();
    assert_eq!(code, 1397, "refused at the statement: {msg}");
    assert!(msg.contains("rolled_back"), "{msg}");
    c.query_drop("ROLLBACK").await.unwrap();
    assert_eq!(proxy_metric(admin, asked).await, 2.0);
    assert_eq!(checksums(db, TABLES).await, before);
    // Known again for the next transaction; then its coordinator is killed. With the
    // stream gone nothing is known: the check asks, and no coordinator answers.
    let five = bal(&mut c, 5).await;
    let xid = coord.begin(60_000).await;
    c.query_drop(update(&xid, 4)).await.unwrap();
    coord.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.query_drop("BEGIN").await.unwrap();
    let (code, _, msg) = server_error(c.query_drop(update(&xid, 5)).await).unwrap();
    assert_eq!(code, 1429, "{msg}");
    c.query_drop("ROLLBACK").await.unwrap();
    assert_eq!(proxy_metric(admin, known).await, 1.0);
    assert_eq!(
        bal(&mut c, 5).await,
        five,
        "the refused statement changed nothing"
    );
}

/// Row `id`'s balance in `acc`, as text.
async fn bal(c: &mut Conn, id: u32) -> Option<String> {
    c.query_first(format!("SELECT CAST(bal AS CHAR) FROM acc WHERE id = {id}"))
        .await
        .unwrap()
}

/// A long-lived connection running one global transaction after another leaves no
/// prepared statements behind on its backend connection: the proxy's own statements
/// (images, the undo insert) are prepared once per session. Before, every branch
/// prepared its undo insert anew and never closed it, so a busy connection would have
/// filled the server's `max_prepared_stmt_count` for everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t16_branches_leave_no_prepared_statements_behind() {
    let dir = TempDir::new("stmt-leak");
    let coord = Coordinator::start(&dir, &[]).await;
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &[]).await;
    let db = "rwt_stmt_leak";
    setup(db).await;
    let mut c = proxy.conn(db).await;
    // Prepared minus closed on the session's backend connection (the client itself
    // prepares nothing: text protocol throughout).
    async fn open_statements(c: &mut Conn) -> i64 {
        let rows: Vec<(String, i64)> = c
            .query(
                "SHOW SESSION STATUS WHERE Variable_name IN ('Com_stmt_prepare', 'Com_stmt_close')",
            )
            .await
            .unwrap();
        let get = |name: &str| rows.iter().find(|(n, _)| n == name).map(|r| r.1).unwrap();
        get("Com_stmt_prepare") - get("Com_stmt_close")
    }
    async fn transfer(c: &mut Conn, coord: &Coordinator, i: usize) {
        let xid = coord.begin(60_000).await;
        c.query_drop("BEGIN").await.unwrap();
        c.query_drop(format!(
            "/*+ XID('{xid}') */ UPDATE acc SET bal = bal + 1 WHERE id = {}",
            1 + i % 5
        ))
        .await
        .unwrap();
        c.query_drop("COMMIT").await.unwrap();
        let status = coord.commit(&xid).await;
        assert!(status == "committing" || status == "committed", "{status}");
    }
    // Warm: every statement text the loop uses (the before image's predicate is the
    // statement's own, so each id is a statement of its own in the session's cache).
    for i in 0..5 {
        transfer(&mut c, &coord, i).await;
    }
    let warm = open_statements(&mut c).await;
    for i in 0..20 {
        transfer(&mut c, &coord, i).await;
    }
    let after = open_statements(&mut c).await;
    assert_eq!(
        after,
        warm,
        "20 more branches on one connection left {} prepared statements open on the backend",
        after - warm
    );
}

/// The coordinator is gone when a branch commits: the proxy rolls the local transaction
/// back and says so (never a silent commit without undo record and locks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t14_coordinator_down_at_commit_rolls_back() {
    let dir = TempDir::new("coordinator-down");
    let mut coord = Coordinator::start(&dir, &[]).await;
    let cfg = dir.0.join("proxy.toml");
    std::fs::write(
        &cfg,
        "coordinator_timeout_ms = 300\ncoordinator_retry_ms = 1000\n",
    )
    .unwrap();
    let proxy = Proxy::start(
        &dir,
        "proxy",
        &coord.grpc_url(),
        &["--config", &cfg.display().to_string()],
    )
    .await;
    let db = "rwt_coordinator_down";
    setup(db).await;
    let before = checksums(db, TABLES).await;
    let xid = coord.begin(600_000).await;
    let mut c = proxy.conn(db).await;
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop(format!("/*+ XID('{xid}') */ UPDATE acc SET bal = 0"))
        .await
        .unwrap();
    coord.process.kill();
    let (code, _, msg) = server_error(c.query_drop("COMMIT").await).unwrap();
    assert_eq!(code, 1402, "{msg}");
    assert!(msg.contains("rolled back"), "{msg}");
    let open: Option<i64> = c.query_first("SELECT @@in_transaction").await.unwrap();
    assert_eq!(open, Some(0));
    assert_eq!(checksums(db, TABLES).await, before, "nothing committed");
    // A tagged statement while it is down: refused before anything runs.
    let (code, _, msg) = server_error(
        c.query_drop(format!("/*+ XID('{xid}') */ UPDATE acc SET bal = 1"))
            .await,
    )
    .unwrap();
    assert_eq!(code, 1429, "{msg}");
    assert!(msg.contains("coordinator"), "{msg}");
    assert_eq!(checksums(db, TABLES).await, before);
    // Untagged traffic does not need it.
    c.query_drop("UPDATE acc SET n = n + 1 WHERE id = 1")
        .await
        .unwrap();
}

/// The same for prepared statements: an execute whose parameters all have exact literals
/// (integers, NULL, decimal strings, doubles, plain ASCII strings) runs as its text with
/// them written in, so one pinned by its key takes one query too; one with a parameter
/// that has none (a date, a string with a quote or beyond ASCII) stays an execute. Either
/// way every row ends as the same statements leave it directly (and the OK is the same),
/// and a global rollback restores every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t17_prepared_statements_pinned_by_key_run_as_one_query_too() {
    use St::*;
    let text = |s: &str| Value::Bytes(s.as_bytes().to_vec());
    // (statement and parameters, whether it runs as one query)
    let steps = vec![
        // The first on each table reads its definition: apart.
        (
            P(
                "UPDATE acc SET bal = bal + ? WHERE id = ?",
                vec![text("1.25"), Value::Int(1)],
            ),
            false,
        ),
        (
            P(
                "UPDATE acc SET bal = bal - ?, note = ? WHERE id = ?",
                vec![text("0.5"), text("p -- q /* r"), Value::Int(2)],
            ),
            true,
        ),
        (
            P(
                "UPDATE acc SET note = ? WHERE id = ?",
                vec![Value::NULL, Value::Int(3)],
            ),
            true,
        ),
        (
            P(
                "UPDATE acc SET n = n + ? WHERE id=?",
                vec![Value::Int(-7), Value::UInt(4)],
            ),
            true,
        ),
        (
            P(
                "UPDATE acc SET bal = ? WHERE id = ?",
                vec![Value::Double(0.1), Value::Int(5)],
            ),
            true,
        ),
        (
            P("DELETE FROM acc WHERE id = ?", vec![Value::Int(98)]),
            true,
        ),
        // Apart: a quote, a character beyond ASCII, a date have no literal written in.
        (
            P(
                "UPDATE acc SET note = ? WHERE id = ?",
                vec![text("it's"), Value::Int(1)],
            ),
            false,
        ),
        (
            P(
                "UPDATE acc SET note = ? WHERE id = ?",
                vec![text("été"), Value::Int(2)],
            ),
            false,
        ),
        (
            P("UPDATE t SET code = 'q' WHERE id = ?", vec![Value::Int(2)]),
            false,
        ),
        (
            P(
                "UPDATE t SET d = ? WHERE id = ?",
                vec![Value::Date(2024, 2, 29, 0, 0, 0, 0), Value::Int(1)],
            ),
            false,
        ),
        // A string compares in the column's collation, as the parameter did ('abc' = 'ABC').
        // (Not one query: a condition beyond the key pins no single row.)
        (
            P(
                "UPDATE t SET amount = amount * ? WHERE id = ? AND code = ?",
                vec![text("3"), Value::Int(1), text("abc")],
            ),
            false,
        ),
        (
            P(
                "DELETE FROM t WHERE id = ? AND code = ?",
                vec![Value::Int(2), text("it's")],
            ),
            false,
        ),
    ];
    one_query_twins(
        "rwt_pinned_prepared",
        [
            "CREATE TABLE t (id BIGINT PRIMARY KEY, code VARCHAR(20), d DATE, \
             amount DECIMAL(20,4))",
            "INSERT INTO t VALUES (1, 'ABC', '2024-01-01', 1), (2, 'it''s', NULL, 2)",
        ],
        "t",
        &steps,
    )
    .await;
}

/// A text UPDATE or DELETE whose condition pins the table's whole integer primary key
/// (`id = 7`, `a = 1 AND b = -2`), on a table whose definition the transaction has
/// confirmed, runs its before image, its write and its after image as one query: counted by
/// `rewind_proxy_at_one_query_writes_total`. Its client sees the same OK as directly
/// (affected rows, `Rows matched` info), and a global rollback restores every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t17_statements_pinned_by_key_run_with_their_images_in_one_query() {
    use St::*;
    // (statement, whether it runs as one query)
    let steps = vec![
        // The first on each table reads its definition: apart.
        (Q("UPDATE acc SET bal = bal + 1 WHERE id = 1"), false),
        (
            Q("UPDATE acc SET bal = bal + 2, note = 'p' WHERE id = 2"),
            true,
        ),
        (Q("UPDATE acc SET n = n WHERE id = 3"), true),
        (Q("UPDATE acc SET n = 0 WHERE id = 99"), true),
        (Q("DELETE FROM acc WHERE id = 4"), true),
        (Q("DELETE FROM acc WHERE id = 98"), true),
        (Q("UPDATE acc SET n = 1 WHERE id = 5 OR id = 1"), false),
        (Q("UPDATE acc SET n = 2 WHERE id = 5 LIMIT 1"), false),
        (
            Q("UPDATE k SET v = 'y' WHERE a = 4000000000 AND b = -5"),
            false,
        ),
        (
            Q("UPDATE k SET v = 'z' WHERE (b = -5) AND k.a = 4000000000"),
            true,
        ),
        (Q("UPDATE k SET v = 'w' WHERE a = 1"), false),
        (Q("DELETE FROM k WHERE a = 1 AND b = 1"), true),
    ];
    one_query_twins(
        "rwt_pinned",
        [
            "CREATE TABLE k (a INT UNSIGNED, b BIGINT, v VARCHAR(10), PRIMARY KEY (a, b))",
            "INSERT INTO k VALUES (4000000000, -5, 'a'), (1, 1, 'b')",
        ],
        "k",
        &steps,
    )
    .await;
}

/// Runs `steps` (statement, whether it runs as one query) in one global transaction through
/// a proxy on `db` and, untagged, directly on its twin `{db}_direct`, both set up with the
/// shape tables and `table` (made and filled by `table_sql`). After each: the same OK
/// (affected rows, `Rows matched` info, warnings) and the one-query counter moved by one
/// exactly where expected. At the end: the branch wrote what the statements write
/// directly, and a global rollback restores every row byte for byte.
async fn one_query_twins(db: &str, table_sql: [&str; 2], table: &str, steps: &[(St, bool)]) {
    let twin = format!("{db}_direct");
    let dir = TempDir::new(db);
    let coord = Coordinator::start(&dir, &[]).await;
    let (proxy, admin) = Proxy::start_with_admin(&dir, "proxy", &coord.grpc_url()).await;
    for d in [db, twin.as_str()] {
        setup(d).await;
        for sql in table_sql {
            direct_exec(d, sql).await;
        }
    }
    let mut tables = TABLES.to_vec();
    tables.push(table);
    let original = checksums(db, &tables).await;
    let count = || async {
        let (_, body) = http(admin, "GET", "/metrics", None).await.unwrap();
        body.as_str()
            .expect("metrics as text")
            .lines()
            .find_map(|l| l.strip_prefix("rewind_proxy_at_one_query_writes_total "))
            .expect("the one-query counter")
            .parse::<u64>()
            .unwrap()
    };
    let xid = coord.begin(60_000).await;
    let mut c = proxy.conn(db).await;
    let mut d = direct(&twin).await;
    c.query_drop("BEGIN").await.unwrap();
    d.query_drop("BEGIN").await.unwrap();
    for (i, (step, one_query)) in steps.iter().enumerate() {
        let before = count().await;
        let tag = if i == 0 {
            format!("/*+ XID('{xid}') */ ")
        } else {
            String::new()
        };
        let (sql, params) = match step {
            St::Q(sql) => (*sql, None),
            St::P(sql, params) => (*sql, Some(params)),
        };
        for (conn, tag) in [(&mut c, tag.as_str()), (&mut d, "")] {
            let sent = format!("{tag}{sql}");
            match params {
                None => conn.query_drop(sent).await,
                Some(p) => conn.exec_drop(sent, p.clone()).await,
            }
            .unwrap_or_else(|e| panic!("{sql} with {params:?}: {e}"));
        }
        assert_eq!(
            (c.affected_rows(), c.info().to_string(), c.get_warnings()),
            (d.affected_rows(), d.info().to_string(), d.get_warnings()),
            "{sql}: the OK differs from direct's"
        );
        assert_eq!(
            count().await - before,
            u64::from(*one_query),
            "{sql} with {params:?}: one query = {one_query}"
        );
    }
    c.query_drop("COMMIT").await.unwrap();
    d.query_drop("COMMIT").await.unwrap();
    c.disconnect().await.unwrap();
    d.disconnect().await.unwrap();
    assert_eq!(
        checksums(db, &tables)
            .await
            .iter()
            .map(|c| c.1)
            .collect::<Vec<_>>(),
        checksums(&twin, &tables)
            .await
            .iter()
            .map(|c| c.1)
            .collect::<Vec<_>>(),
        "the branch wrote what the statements write directly"
    );
    assert_eq!(coord.rollback(&xid).await, "rolled_back");
    assert_eq!(
        checksums(db, &tables).await,
        original,
        "rollback is not byte-identical"
    );
    assert!(coord.locks().await.is_empty());
    for d in [db, twin.as_str()] {
        direct_exec("mysql", &format!("DROP DATABASE `{d}`")).await;
    }
}
