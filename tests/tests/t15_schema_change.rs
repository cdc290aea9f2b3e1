//! Schema changes while the proxy keeps running (no restart anywhere), each made both
//! through the proxy (an untagged statement on a proxy connection, outside any global
//! transaction) and directly on MariaDB, after the proxy has already cached the table's
//! metadata with a global write:
//!
//! - a trigger added, a cascading foreign-key child added, or the engine changed to
//!   MyISAM: the next global write on the table is refused with 1235 naming the reason,
//!   nothing is applied, and the local transaction goes on as it was;
//! - a column added, a column dropped, a primary key changed: global writes keep working
//!   and a global rollback leaves the tables byte-identical (server checksums), with no
//!   undo record nor global lock left; a global commit leaves the same data as running
//!   the statements directly.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use rewind_test_support::*;

/// How each schema change is made.
const VIAS: [&str; 2] = ["proxy", "direct"];

const BASE: &[&str] = &[
    "CREATE TABLE acc (id INT PRIMARY KEY, bal DECIMAL(12,2) NOT NULL, n INT NOT NULL DEFAULT 0, note VARCHAR(20))",
    "INSERT INTO acc VALUES (1, 10.00, 1, 'n1'), (2, 20.50, 2, 'n2'), (3, 30.00, 3, NULL), (4, 40.25, 4, 'x4'), (5, 50.00, 5, 'n5')",
    "CREATE TABLE pair (region CHAR(2), id INT, qty INT, PRIMARY KEY (region, id))",
    "INSERT INTO pair VALUES ('eu', 1, 5), ('us', 1, 6), ('eu', 2, 7)",
];

/// A fresh database with the base tables, created directly.
async fn base(db: &str) {
    fresh_db(db).await;
    let mut d = direct(db).await;
    for s in BASE {
        d.query_drop(*s).await.unwrap();
    }
    d.disconnect().await.unwrap();
}

/// Runs `steps` through the proxy in one local transaction bound to a new global
/// transaction (tag on the first statement), committed locally; the XID.
async fn global(coord: &Coordinator, proxy: &Proxy, db: &str, steps: &[&str], at: &str) -> String {
    let xid = coord.begin(60_000).await;
    let mut c = proxy.conn(db).await;
    c.query_drop("BEGIN").await.unwrap();
    for (i, s) in steps.iter().enumerate() {
        let tag = if i == 0 {
            format!("/*+ XID('{xid}') */ ")
        } else {
            String::new()
        };
        c.query_drop(format!("{tag}{s}"))
            .await
            .unwrap_or_else(|e| panic!("{at}: {s}: {e}"));
    }
    c.query_drop("COMMIT")
        .await
        .unwrap_or_else(|e| panic!("{at}: COMMIT: {e}"));
    c.disconnect().await.unwrap();
    xid
}

/// Rolls `xid` back globally: `tables` are byte-identical to `before`, with no undo
/// record and no global lock left.
async fn rolls_back(
    coord: &Coordinator,
    db: &str,
    xid: &str,
    tables: &[&str],
    before: &[(String, Option<u64>)],
    at: &str,
) {
    assert_eq!(coord.rollback(xid).await, "rolled_back", "{at}");
    assert_eq!(
        checksums(db, tables).await,
        before,
        "{at}: global rollback is not byte-identical"
    );
    assert_eq!(
        undo_rows(Some(xid)).await,
        (0, 0),
        "{at}: undo records left"
    );
    assert!(coord.locks().await.is_empty(), "{at}: global locks left");
}

/// Warms the proxy's metadata cache for acc and pair: a global write on both, rolled back.
async fn warm(coord: &Coordinator, proxy: &Proxy, db: &str, at: &str) {
    let tables = ["acc", "pair"];
    let before = checksums(db, &tables).await;
    let xid = global(
        coord,
        proxy,
        db,
        &[
            "UPDATE acc SET n = n + 1 WHERE id = 1",
            "UPDATE pair SET qty = qty + 1 WHERE region = 'eu' AND id = 1",
        ],
        &format!("{at} (warming)"),
    )
    .await;
    rolls_back(
        coord,
        db,
        &xid,
        &tables,
        &before,
        &format!("{at} (warming)"),
    )
    .await;
}

/// Makes a schema change `via` the proxy (untagged, autocommit) or directly.
async fn change(proxy: &Proxy, via: &str, db: &str, sqls: &[&str], at: &str) {
    let mut c = match via {
        "proxy" => proxy.conn(db).await,
        _ => direct(db).await,
    };
    for s in sqls {
        c.query_drop(*s)
            .await
            .unwrap_or_else(|e| panic!("{at}: {s}: {e}"));
    }
    c.disconnect().await.unwrap();
}

/// In a local transaction bound to a global one (by an earlier write on pair), tagged
/// `sql` is refused with 1235 naming `needle`; the earlier write is still there, each
/// `probe` query (run in the transaction) gives its value, COMMIT works, and the global
/// rollback leaves `tables` byte-identical.
#[allow(clippy::too_many_arguments)]
async fn refused(
    coord: &Coordinator,
    proxy: &Proxy,
    db: &str,
    sql: &str,
    needle: &str,
    tables: &[&str],
    probes: &[(&str, i64)],
    at: &str,
) {
    let before = checksums(db, tables).await;
    let xid = coord.begin(60_000).await;
    let mut c = proxy.conn(db).await;
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop(format!(
        "/*+ XID('{xid}') */ UPDATE pair SET qty = qty + 1 WHERE region = 'eu' AND id = 1"
    ))
    .await
    .unwrap_or_else(|e| panic!("{at}: the earlier write on pair: {e}"));
    let (code, _, msg) = server_error(c.query_drop(format!("/*+ XID('{xid}') */ {sql}")).await)
        .unwrap_or_else(|e| panic!("{at}: {sql}: {e:#}"));
    assert_eq!(code, 1235, "{at}: {sql}: {msg}");
    assert!(
        msg.to_lowercase().contains(&needle.to_lowercase()),
        "{at}: {sql}: {msg:?} should name {needle:?}"
    );
    // The local transaction goes on: the earlier write is still there.
    let qty: Option<i64> = c
        .query_first("SELECT qty FROM pair WHERE region = 'eu' AND id = 1")
        .await
        .unwrap_or_else(|e| panic!("{at}: reading pair after the refusal: {e}"));
    assert_eq!(
        qty,
        Some(6),
        "{at}: the earlier write of the transaction is lost"
    );
    for (q, want) in probes {
        let got: Option<i64> = c
            .query_first(*q)
            .await
            .unwrap_or_else(|e| panic!("{at}: {q}: {e}"));
        assert_eq!(got, Some(*want), "{at}: {q} after the refusal");
    }
    c.query_drop("COMMIT")
        .await
        .unwrap_or_else(|e| panic!("{at}: COMMIT after the refusal: {e}"));
    c.disconnect().await.unwrap();
    rolls_back(coord, db, &xid, tables, &before, at).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t15_trigger_added_is_refused() {
    let dir = TempDir::new("schema-trigger");
    let coord = Coordinator::start(&dir, &[]).await;
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &[]).await;
    for via in VIAS {
        let (db, at) = (
            format!("rwt_schema_trigger_{via}"),
            format!("trigger added via {via}"),
        );
        base(&db).await;
        warm(&coord, &proxy, &db, &at).await;
        change(
            &proxy,
            via,
            &db,
            &[
                "CREATE TABLE audit_log (id INT AUTO_INCREMENT PRIMARY KEY, what INT)",
                "CREATE TRIGGER t_upd BEFORE UPDATE ON acc FOR EACH ROW INSERT INTO audit_log (what) VALUES (NEW.bal)",
            ],
            &at,
        )
        .await;
        refused(
            &coord,
            &proxy,
            &db,
            "UPDATE acc SET bal = bal + 1 WHERE id = 1",
            "trigger",
            &["acc", "pair", "audit_log"],
            &[
                ("SELECT COUNT(*) FROM audit_log", 0),
                ("SELECT COUNT(*) FROM acc WHERE id = 1 AND bal = 10.00", 1),
            ],
            &at,
        )
        .await;
        let logged: Option<i64> = direct(&db)
            .await
            .query_first("SELECT COUNT(*) FROM audit_log")
            .await
            .unwrap();
        assert_eq!(logged, Some(0), "{at}: the trigger fired");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t15_cascading_child_added_is_refused() {
    let dir = TempDir::new("schema-cascade");
    let coord = Coordinator::start(&dir, &[]).await;
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &[]).await;
    for via in VIAS {
        let (db, at) = (
            format!("rwt_schema_cascade_{via}"),
            format!("cascading child added via {via}"),
        );
        base(&db).await;
        warm(&coord, &proxy, &db, &at).await;
        change(
            &proxy,
            via,
            &db,
            &[
                "CREATE TABLE child (id INT PRIMARY KEY, pid INT, FOREIGN KEY (pid) REFERENCES acc (id) ON DELETE CASCADE) ENGINE=InnoDB",
                "INSERT INTO child VALUES (1, 1)",
            ],
            &at,
        )
        .await;
        refused(
            &coord,
            &proxy,
            &db,
            "DELETE FROM acc WHERE id = 1",
            "foreign key",
            &["acc", "pair", "child"],
            &[
                ("SELECT COUNT(*) FROM acc WHERE id = 1", 1),
                ("SELECT COUNT(*) FROM child WHERE id = 1 AND pid = 1", 1),
            ],
            &at,
        )
        .await;
        let mut d = direct(&db).await;
        let rows: Option<(i64, i64)> = d
            .query_first("SELECT (SELECT COUNT(*) FROM acc WHERE id = 1), (SELECT COUNT(*) FROM child WHERE id = 1)")
            .await
            .unwrap();
        assert_eq!(rows, Some((1, 1)), "{at}: acc row 1 or child row 1 is gone");
        d.disconnect().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t15_column_added_rolls_back_exact_and_commits_like_direct() {
    let dir = TempDir::new("schema-column-added");
    let coord = Coordinator::start(&dir, &[]).await;
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &[]).await;
    let add = ["ALTER TABLE acc ADD COLUMN extra VARCHAR(20) NOT NULL DEFAULT 'd'"];
    let non_default = "UPDATE acc SET extra = 'e5' WHERE id = 5";
    let steps = [
        "UPDATE acc SET extra = 'x' WHERE id = 1",
        "DELETE FROM acc WHERE id = 5",
        "INSERT INTO acc (id, bal, extra) VALUES (9, 1, 'new')",
    ];
    for via in VIAS {
        let (db, at) = (
            format!("rwt_schema_column_{via}"),
            format!("column added via {via}"),
        );
        base(&db).await;
        warm(&coord, &proxy, &db, &at).await;
        change(&proxy, via, &db, &add, &at).await;
        direct_exec(&db, non_default).await;
        let before = checksums(&db, &["acc"]).await;

        // Rollback: the new column's values come back exactly, row 5's 'e5' included.
        let xid = global(&coord, &proxy, &db, &steps, &at).await;
        let mut d = direct(&db).await;
        let applied: Vec<(i64, String)> = d
            .query("SELECT id, extra FROM acc WHERE id IN (1, 5, 9) ORDER BY id")
            .await
            .unwrap();
        assert_eq!(
            applied,
            [(1, "x".to_string()), (9, "new".to_string())],
            "{at}: the statements did not apply"
        );
        rolls_back(&coord, &db, &xid, &["acc"], &before, &at).await;
        let back: Vec<(i64, String)> = d
            .query("SELECT id, extra FROM acc WHERE id IN (1, 5, 9) ORDER BY id")
            .await
            .unwrap();
        assert_eq!(
            back,
            [(1, "d".to_string()), (5, "e5".to_string())],
            "{at}: rows 1 and 5 not restored with their extra values (or row 9 left)"
        );
        d.disconnect().await.unwrap();

        // Commit: the same statements, compared with running them directly.
        let xid = global(&coord, &proxy, &db, &steps, &at).await;
        let st = coord.commit(&xid).await;
        assert!(st == "committed" || st == "committing", "{at}: {st}");
        coord
            .wait_status(&xid, "committed", Duration::from_secs(10))
            .await;
        let dr = format!("{db}_dr");
        base(&dr).await;
        let mut d = direct(&dr).await;
        for s in add.iter().chain([&non_default]) {
            d.query_drop(*s).await.unwrap();
        }
        d.query_drop("BEGIN").await.unwrap();
        for s in steps {
            d.query_drop(s).await.unwrap();
        }
        d.query_drop("COMMIT").await.unwrap();
        d.disconnect().await.unwrap();
        assert_eq!(
            checksums(&db, &["acc"]).await[0].1,
            checksums(&dr, &["acc"]).await[0].1,
            "{at}: global commit differs from running the statements directly"
        );
        eventually(
            &format!("{at}: undo records of a commit are deleted"),
            Duration::from_secs(10),
            || async { undo_rows(Some(&xid)).await == (0, 0) },
        )
        .await;
        assert!(coord.locks().await.is_empty(), "{at}: global locks left");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t15_column_dropped_and_key_changed_roll_back_exact() {
    let dir = TempDir::new("schema-drop-rekey");
    let coord = Coordinator::start(&dir, &[]).await;
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &[]).await;
    for via in VIAS {
        let db = format!("rwt_schema_rekey_{via}");
        base(&db).await;
        warm(&coord, &proxy, &db, &format!("drop/rekey via {via}")).await;

        let at = format!("column dropped via {via}");
        change(&proxy, via, &db, &["ALTER TABLE acc DROP COLUMN note"], &at).await;
        let before = checksums(&db, &["acc", "pair"]).await;
        let xid = global(
            &coord,
            &proxy,
            &db,
            &[
                "UPDATE acc SET bal = bal + 1, n = n + 1 WHERE id IN (1, 2)",
                "DELETE FROM acc WHERE id = 3",
                "INSERT INTO acc (id, bal) VALUES (8, 8.00)",
            ],
            &at,
        )
        .await;
        assert_ne!(
            checksums(&db, &["acc"]).await[0],
            before[0],
            "{at}: nothing applied"
        );
        rolls_back(&coord, &db, &xid, &["acc", "pair"], &before, &at).await;

        let at = format!("primary key changed via {via}");
        change(
            &proxy,
            via,
            &db,
            &["ALTER TABLE pair DROP PRIMARY KEY, ADD PRIMARY KEY (id, region)"],
            &at,
        )
        .await;
        let before = checksums(&db, &["acc", "pair"]).await;
        let xid = global(
            &coord,
            &proxy,
            &db,
            &[
                "UPDATE pair SET qty = qty + 1 WHERE id = 1",
                "DELETE FROM pair WHERE region = 'eu' AND id = 2",
                "INSERT INTO pair VALUES ('as', 3, 9)",
            ],
            &at,
        )
        .await;
        assert_ne!(
            checksums(&db, &["pair"]).await[0],
            before[1],
            "{at}: nothing applied"
        );
        rolls_back(&coord, &db, &xid, &["acc", "pair"], &before, &at).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t15_engine_changed_to_myisam_is_refused() {
    let dir = TempDir::new("schema-engine");
    let coord = Coordinator::start(&dir, &[]).await;
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &[]).await;
    for via in VIAS {
        let (db, at) = (
            format!("rwt_schema_engine_{via}"),
            format!("engine changed via {via}"),
        );
        base(&db).await;
        warm(&coord, &proxy, &db, &at).await;
        change(&proxy, via, &db, &["ALTER TABLE acc ENGINE=MyISAM"], &at).await;
        refused(
            &coord,
            &proxy,
            &db,
            "UPDATE acc SET bal = bal + 1 WHERE id = 1",
            "MyISAM",
            &["acc", "pair"],
            &[("SELECT COUNT(*) FROM acc WHERE id = 1 AND bal = 10.00", 1)],
            &at,
        )
        .await;
    }
}

/// A backend user without the PROCESS privilege cannot read INNODB_SYS_FOREIGN: the proxy
/// says so once and checks the foreign keys that reference a table within its schema. A
/// cascading child and a trigger added directly are still refused, and a new column still
/// just works, all without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t15_without_process_privilege_checks_the_schema() {
    let db = "rwt_schema_noprocess";
    let (user, pass) = ("rwt_noprocess", "rwt-noprocess-pass");
    base(db).await;
    let mut root = direct(db).await;
    for s in [
        format!("DROP USER IF EXISTS '{user}'@'%'"),
        format!("CREATE USER '{user}'@'%' IDENTIFIED BY '{pass}'"),
        format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, ALTER, INDEX, TRIGGER, \
             REFERENCES, LOCK TABLES, CREATE TEMPORARY TABLES ON *.* TO '{user}'@'%'"
        ),
    ] {
        root.query_drop(s).await.unwrap();
    }
    let dir = TempDir::new("schema-noprocess");
    let coord = Coordinator::start(&dir, &[]).await;
    let backend = format!("mysql://{user}:{pass}@127.0.0.1:3306");
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &["--backend", &backend]).await;
    let connect = || async {
        mysql_async::Conn::new(proxy.opts(db).user(Some(user)).pass(Some(pass)))
            .await
            .unwrap()
    };
    let tables = ["acc", "pair", "child", "audit_log"];
    // Warm the cache, then add a cascading child and a trigger directly.
    let xid = coord.begin(60_000).await;
    let mut c = connect().await;
    c.query_drop(format!(
        "/*+ XID('{xid}') */ UPDATE acc SET n = n + 1 WHERE id = 2"
    ))
    .await
    .unwrap();
    assert_eq!(coord.rollback(&xid).await, "rolled_back");
    for s in [
        "CREATE TABLE child (id INT PRIMARY KEY, pid INT, FOREIGN KEY (pid) REFERENCES acc (id) ON DELETE CASCADE) ENGINE=InnoDB",
        "INSERT INTO child VALUES (1, 1)",
        "CREATE TABLE audit_log (id INT AUTO_INCREMENT PRIMARY KEY, what INT)",
        "CREATE TRIGGER t_upd BEFORE UPDATE ON pair FOR EACH ROW INSERT INTO audit_log (what) VALUES (NEW.qty)",
    ] {
        root.query_drop(s).await.unwrap();
    }
    let before = checksums(db, &tables).await;
    for (sql, needle) in [
        ("DELETE FROM acc WHERE id = 1", "foreign key"),
        ("UPDATE pair SET qty = 0 WHERE id = 1", "trigger"),
    ] {
        let xid = coord.begin(60_000).await;
        let (code, _, msg) = server_error(c.query_drop(format!("/*+ XID('{xid}') */ {sql}")).await)
            .unwrap_or_else(|e| panic!("{sql}: {e:#}"));
        assert_eq!(code, 1235, "{sql}: {msg}");
        assert!(
            msg.contains(needle),
            "{sql}: {msg:?} should name {needle:?}"
        );
        assert_eq!(coord.rollback(&xid).await, "rolled_back");
        assert_eq!(
            checksums(db, &tables).await,
            before,
            "{sql} applied something"
        );
    }
    // A column added directly: used at once, and rolled back exactly.
    root.query_drop("ALTER TABLE acc ADD COLUMN extra INT NOT NULL DEFAULT 7")
        .await
        .unwrap();
    let before = checksums(db, &tables).await;
    let xid = coord.begin(60_000).await;
    c.query_drop(format!(
        "/*+ XID('{xid}') */ UPDATE acc SET extra = 8 WHERE id = 3"
    ))
    .await
    .unwrap();
    assert_eq!(coord.rollback(&xid).await, "rolled_back");
    assert_eq!(checksums(db, &tables).await, before);
    c.disconnect().await.unwrap();
    assert_eq!(
        proxy
            .process
            .log_count("INNODB_SYS_FOREIGN is not readable"),
        1,
        "the fallback is logged once"
    );
    root.query_drop(format!("DROP USER '{user}'@'%'"))
        .await
        .unwrap();
}

/// A trigger added after a branch committed locally but before its global rollback would
/// fire on the undo statements: the rollback holds instead (retried, the reason shown as
/// the branch's last error, nothing written, locks kept) and completes, byte-identical,
/// once the trigger is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t15_trigger_added_before_the_rollback_holds_the_undo() {
    let dir = TempDir::new("schema-undo-trigger");
    let coord = Coordinator::start(&dir, &[]).await;
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &[]).await;
    let db = "rwt_schema_undo_trigger";
    base(db).await;
    direct_exec(
        db,
        "CREATE TABLE audit_log (id INT AUTO_INCREMENT PRIMARY KEY, what INT)",
    )
    .await;
    let tables = ["acc", "pair", "audit_log"];
    let before = checksums(db, &tables).await;
    let xid = global(
        &coord,
        &proxy,
        db,
        &["UPDATE acc SET n = n + 1 WHERE id = 1"],
        "undo trigger",
    )
    .await;
    let written = checksums(db, &tables).await;
    direct_exec(
        db,
        "CREATE TRIGGER t_upd BEFORE UPDATE ON acc FOR EACH ROW INSERT INTO audit_log (what) VALUES (NEW.n)",
    )
    .await;
    let st = coord.rollback(&xid).await;
    assert_ne!(
        st, "rolled_back",
        "the undo must not run through the new trigger"
    );
    eventually("the reason is shown", Duration::from_secs(20), || async {
        coord.transaction(&xid).await["branches"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("trigger"))
    })
    .await;
    assert_eq!(
        checksums(db, &tables).await,
        written,
        "nothing undone, nothing fired"
    );
    assert!(
        !coord.locks().await.is_empty(),
        "the branch keeps its locks"
    );
    direct_exec(db, "DROP TRIGGER t_upd").await;
    coord
        .wait_status(&xid, "rolled_back", Duration::from_secs(60))
        .await;
    assert_eq!(checksums(db, &tables).await, before);
    assert!(coord.locks().await.is_empty());
}

/// Two global transactions on two proxy connections; the first has written acc (row 1)
/// in its open local transaction, so it holds acc's definition confirmed. The XIDs and the
/// connections, the first writer's first.
async fn first_writer_holds(
    coord: &Coordinator,
    proxy: &Proxy,
    db: &str,
) -> (String, String, mysql_async::Conn, mysql_async::Conn) {
    let (x1, x2) = (coord.begin(60_000).await, coord.begin(60_000).await);
    let (mut a, b) = (proxy.conn(db).await, proxy.conn(db).await);
    a.query_drop("BEGIN").await.unwrap();
    a.query_drop(format!(
        "/*+ XID('{x1}') */ UPDATE acc SET bal = bal + 1 WHERE id = 1"
    ))
    .await
    .unwrap();
    (x1, x2, a, b)
}

/// The proxy's counter of definition checks done `how` (query, skipped, proven, …).
fn checks_series(how: &str) -> String {
    format!("rewind_proxy_definition_checks_total{{how=\"{how}\"}}")
}

/// Two global transactions write the same table at once: the first reads the table's
/// definition before its write and holds it confirmed (its metadata lock) until its
/// COMMIT; the second, while that holder is registered, writes without the query, and its
/// commit is settled by the holder's later answer (a proof). Both commit; a global
/// rollback of each is byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t15_concurrent_writers_share_one_definition_check() {
    let dir = TempDir::new("schema-shared-check");
    let coord = Coordinator::start(&dir, &[]).await;
    let (proxy, admin) = Proxy::start_with_admin(&dir, "proxy", &coord.grpc_url()).await;
    let db = "rwt_schema_shared_check";
    base(db).await;
    let before = checksums(db, &["acc"]).await;
    let (x1, x2, mut a, mut b) = first_writer_holds(&coord, &proxy, db).await;
    let skipped = proxy_metric(admin, &checks_series("skipped")).await;
    b.query_drop("BEGIN").await.unwrap();
    b.query_drop(format!(
        "/*+ XID('{x2}') */ UPDATE acc SET bal = bal + 2 WHERE id = 2"
    ))
    .await
    .unwrap();
    assert_eq!(
        proxy_metric(admin, &checks_series("skipped")).await,
        skipped + 1.0,
        "the second writer skips the query while the first holds the definition"
    );
    // The holder answers again (its undo insert) after the second writer's write: proof.
    let (proven, at_commit) = (
        proxy_metric(admin, &checks_series("proven")).await,
        proxy_metric(admin, &checks_series("query_at_commit")).await,
    );
    a.query_drop("COMMIT").await.unwrap();
    b.query_drop("COMMIT").await.unwrap();
    assert_eq!(
        proxy_metric(admin, &checks_series("proven")).await,
        proven + 1.0
    );
    assert_eq!(
        proxy_metric(admin, &checks_series("query_at_commit")).await,
        at_commit
    );
    assert_eq!(coord.rollback(&x2).await, "rolled_back");
    assert_eq!(coord.rollback(&x1).await, "rolled_back");
    assert_eq!(checksums(db, &["acc"]).await, before);
    assert_eq!(undo_rows(Some(&x1)).await, (0, 0));
    assert_eq!(undo_rows(Some(&x2)).await, (0, 0));
}

/// The holder's metadata lock goes behind the proxy's back (its backend connection is
/// killed), a trigger is added directly, and a second writer, seeing the holder still
/// registered, writes with the metadata from before (no trigger known). Its COMMIT finds
/// no proof, reads the definition, and rolls the local transaction back with 1402: nothing
/// is applied (not the row, not the trigger's write). Retried, the statement is refused
/// for the trigger as any global write on that table is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t15_definition_changed_behind_a_dead_holder_rolls_back_at_commit() {
    let dir = TempDir::new("schema-dead-holder");
    let coord = Coordinator::start(&dir, &[]).await;
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &[]).await;
    let db = "rwt_schema_dead_holder";
    base(db).await;
    direct_exec(
        db,
        "CREATE TABLE audit_log (id INT AUTO_INCREMENT PRIMARY KEY, what INT)",
    )
    .await;
    let before = checksums(db, &["acc", "audit_log"]).await;
    let (x1, x2, mut a, mut b) = first_writer_holds(&coord, &proxy, db).await;
    let holder: Option<u64> = a.query_first("SELECT CONNECTION_ID()").await.unwrap();
    direct_exec(db, &format!("KILL CONNECTION {}", holder.unwrap())).await;
    // The holder's metadata lock is gone with its connection: the trigger goes in.
    direct_exec(
        db,
        "CREATE TRIGGER t_upd BEFORE UPDATE ON acc FOR EACH ROW INSERT INTO audit_log (what) VALUES (NEW.id)",
    )
    .await;
    b.query_drop("BEGIN").await.unwrap();
    b.query_drop(format!(
        "/*+ XID('{x2}') */ UPDATE acc SET bal = bal + 2 WHERE id = 2"
    ))
    .await
    .expect("written with the metadata from before: the holder is still registered");
    let (code, _, msg) = server_error(b.query_drop("COMMIT").await).unwrap();
    assert_eq!(code, 1402, "{msg}");
    assert!(
        msg.contains("definition") && msg.contains("rolled back"),
        "{msg}"
    );
    let in_trans: Option<i64> = b.query_first("SELECT @@in_transaction").await.unwrap();
    assert_eq!(in_trans, Some(0), "the local transaction is rolled back");
    assert_eq!(
        checksums(db, &["acc", "audit_log"]).await,
        before,
        "nothing applied: neither the row nor the trigger's write"
    );
    // Planned again with the new metadata: refused for the trigger, before anything runs.
    b.query_drop("BEGIN").await.unwrap();
    let (code, _, msg) = server_error(
        b.query_drop(format!(
            "/*+ XID('{x2}') */ UPDATE acc SET bal = bal + 2 WHERE id = 2"
        ))
        .await,
    )
    .unwrap();
    assert_eq!(code, 1235, "{msg}");
    assert!(msg.contains("trigger"), "{msg}");
    b.query_drop("ROLLBACK").await.unwrap();
    drop(a);
    assert_eq!(checksums(db, &["acc", "audit_log"]).await, before);
    let _ = coord.rollback(&x1).await;
    let _ = coord.rollback(&x2).await;
}

/// A foreign key created in another database, on tables of its own, leaves acc's
/// definition alone: a writer that skipped the definition read (a holder was registered)
/// reads it at COMMIT, finds it unchanged and commits. A cascading foreign key from
/// another database that references acc changes it: the same COMMIT rolls back with 1402.
/// (Fingerprinted server-wide, the first case rolled back too: any migration anywhere
/// on the server failed the busy tables' global transactions.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t15_a_foreign_key_elsewhere_leaves_the_definition_alone() {
    let dir = TempDir::new("schema-fk-elsewhere");
    let coord = Coordinator::start(&dir, &[]).await;
    let (proxy, admin) = Proxy::start_with_admin(&dir, "proxy", &coord.grpc_url()).await;
    let (db, other) = ("rwt_schema_fk_elsewhere", "rwt_schema_fk_elsewhere_other");
    // The other database first: a child there from an earlier run blocks dropping acc.
    fresh_db(other).await;
    base(db).await;
    direct_exec(other, "CREATE TABLE parent (id INT PRIMARY KEY)").await;
    // A writer that skipped the read, and a holder that can no longer prove anything.
    let skipped_writer = |change: &'static str| {
        let (coord, proxy, admin) = (&coord, &proxy, admin);
        async move {
            let (x1, x2, mut a, mut b) = first_writer_holds(coord, proxy, db).await;
            b.query_drop("BEGIN").await.unwrap();
            let skipped = proxy_metric(admin, &checks_series("skipped")).await;
            b.query_drop(format!(
                "/*+ XID('{x2}') */ UPDATE acc SET bal = bal + 2 WHERE id = 2"
            ))
            .await
            .unwrap();
            assert!(proxy_metric(admin, &checks_series("skipped")).await > skipped);
            let holder: Option<u64> = a.query_first("SELECT CONNECTION_ID()").await.unwrap();
            direct_exec(db, &format!("KILL CONNECTION {}", holder.unwrap())).await;
            drop(a);
            direct_exec(other, change).await;
            let at_commit = proxy_metric(admin, &checks_series("query_at_commit")).await;
            let committed = b.query_drop("COMMIT").await;
            assert!(
                proxy_metric(admin, &checks_series("query_at_commit")).await > at_commit,
                "COMMIT read the definition"
            );
            let _ = coord.rollback(&x1).await;
            (x2, committed)
        }
    };
    let before = checksums(db, &["acc"]).await;
    let (x2, committed) = skipped_writer(
        "CREATE TABLE child (id INT PRIMARY KEY, p INT, \
         FOREIGN KEY (p) REFERENCES parent (id) ON DELETE CASCADE)",
    )
    .await;
    committed.expect("a foreign key between other tables changes nothing of acc");
    let st = coord.commit(&x2).await;
    assert!(st == "committed" || st == "committing", "{st}");
    let after = checksums(db, &["acc"]).await;
    assert_ne!(after, before, "row 2 written");

    let (x2, committed) = skipped_writer(
        "CREATE TABLE acc_child (id INT PRIMARY KEY, a INT, \
         FOREIGN KEY (a) REFERENCES rwt_schema_fk_elsewhere.acc (id) ON DELETE CASCADE)",
    )
    .await;
    let (code, _, msg) = server_error(committed).unwrap();
    assert_eq!(code, 1402, "{msg}");
    assert!(
        msg.contains("definition") && msg.contains("rolled back"),
        "{msg}"
    );
    assert_eq!(checksums(db, &["acc"]).await, after, "nothing applied");
    let _ = coord.rollback(&x2).await;
    fresh_db(other).await;
}

/// The tagged write of [`one_after_another`]: row `id` of acc.
fn bump(xid: &str, id: u32) -> String {
    format!("/*+ XID('{xid}') */ UPDATE acc SET n = n + 1 WHERE id = {id}")
}

/// `n` global transactions on `c`, one after another, each one write of acc's row `id`,
/// committed.
async fn one_after_another(coord: &Coordinator, c: &mut mysql_async::Conn, n: usize, id: u32) {
    for _ in 0..n {
        let xid = coord.begin(60_000).await;
        c.query_drop("BEGIN").await.unwrap();
        c.query_drop(bump(&xid, id)).await.unwrap();
        c.query_drop("COMMIT").await.unwrap();
        let st = coord.commit(&xid).await;
        assert!(st == "committed" || st == "committing", "{st}");
    }
}

/// A busy table gets a sentinel: a transaction of the proxy's own that holds the table's
/// definition confirmed and proves it on demand, so a lone client's writes skip the
/// definition query and are settled by the sentinel's answers. DDL still goes through
/// (the sentinel ends its transaction every 50 ms), and the next global write sees it:
/// refused for the new trigger, nothing applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t15_busy_table_sentinel_proves_writes_and_lets_ddl_through() {
    let dir = TempDir::new("schema-sentinel");
    let coord = Coordinator::start(&dir, &[]).await;
    let (proxy, admin) = Proxy::start_with_admin(&dir, "proxy", &coord.grpc_url()).await;
    let db = "rwt_schema_sentinel";
    base(db).await;
    direct_exec(
        db,
        "CREATE TABLE audit_log (id INT AUTO_INCREMENT PRIMARY KEY, what INT)",
    )
    .await;
    // Opened first, so nothing delays its writes once the sentinel runs (it stops a
    // second after the table's last write).
    let mut c = proxy.conn(db).await;
    // Four clients on rows 2-5 make the table busy: a sentinel starts after 20 writes
    // within a second, which one client of a debug build on a loaded machine may not
    // reach (a CI run saw 200 writes without a start).
    let mut busy = [
        proxy.conn(db).await,
        proxy.conn(db).await,
        proxy.conn(db).await,
        proxy.conn(db).await,
    ];
    let mut warm_up = 0;
    while proxy_metric(admin, &checks_series("sentinel")).await < 1.0 {
        assert!(warm_up < 400, "no sentinel started after {warm_up} writes");
        let [b2, b3, b4, b5] = &mut busy;
        tokio::join!(
            one_after_another(&coord, b2, 5, 2),
            one_after_another(&coord, b3, 5, 3),
            one_after_another(&coord, b4, 5, 4),
            one_after_another(&coord, b5, 5, 5),
        );
        warm_up += 20;
    }
    for b in busy {
        b.disconnect().await.unwrap();
    }
    // Then one client, one global transaction after another: no other holder exists,
    // so only the sentinel can settle its skipped writes.
    let (skipped, proven) = (
        proxy_metric(admin, &checks_series("skipped")).await,
        proxy_metric(admin, &checks_series("proven")).await,
    );
    let writes = 10;
    one_after_another(&coord, &mut c, writes as usize, 1).await;
    assert!(
        proxy_metric(admin, &checks_series("skipped")).await > skipped,
        "writes skip the definition query while the sentinel holds it"
    );
    assert!(
        proxy_metric(admin, &checks_series("proven")).await > proven,
        "the sentinel's answers settle those writes at commit"
    );
    assert_eq!(
        proxy_metric(admin, "rewind_proxy_definition_sentinels").await,
        1.0,
        "one table, one sentinel"
    );
    let n: Option<i64> = c
        .query_first("SELECT n FROM acc WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(n, Some(1 + writes), "every write applied once");
    let others: Option<i64> = c
        .query_first("SELECT SUM(n) FROM acc WHERE id BETWEEN 2 AND 5")
        .await
        .unwrap();
    assert_eq!(
        others,
        Some(2 + 3 + 4 + 5 + warm_up),
        "every warm-up write applied once"
    );
    let before = checksums(db, &["acc", "audit_log"]).await;

    // DDL waits at most one sentinel cycle (50 ms) for its metadata lock, well before the
    // idle sentinel would stop (a second after the last write).
    let started = std::time::Instant::now();
    direct_exec(
        db,
        "SET STATEMENT lock_wait_timeout = 10 FOR CREATE TRIGGER t_upd BEFORE UPDATE ON acc \
         FOR EACH ROW INSERT INTO audit_log (what) VALUES (NEW.id)",
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "CREATE TRIGGER waited {:?} for the sentinel",
        started.elapsed()
    );
    let xid = coord.begin(60_000).await;
    c.query_drop("BEGIN").await.unwrap();
    let (code, _, msg) = server_error(c.query_drop(bump(&xid, 1)).await).unwrap();
    assert_eq!(code, 1235, "{msg}");
    assert!(msg.contains("trigger"), "{msg}");
    c.query_drop("ROLLBACK").await.unwrap();
    assert_eq!(
        checksums(db, &["acc", "audit_log"]).await,
        before,
        "nothing applied"
    );
    let _ = coord.rollback(&xid).await;
    c.disconnect().await.unwrap();
    // Idle, the sentinel ends and its backend connection goes back to the pool.
    eventually(
        "the idle table's sentinel stopped",
        Duration::from_secs(10),
        || async { proxy_metric(admin, "rewind_proxy_definition_sentinels").await == 0.0 },
    )
    .await;
}
