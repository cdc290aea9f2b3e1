//! XA mode end to end, real proxy, coordinator and MariaDB: what AT refuses (INSERT …
//! SELECT, a table without primary key, a trigger, a cascading delete, REPLACE, LOAD-free
//! bulk writes) runs as an XA branch, is invisible to readers until the global commit,
//! and is undone exactly by a global rollback; the client's session goes on after its
//! COMMIT with its variables, database and prepared statements; a client gone before
//! COMMIT leaves nothing prepared; the proxy killed -9 after PREPARE (registered or not)
//! and the coordinator killed -9 between two branches' phase two still end with the
//! decision carried out and `XA RECOVER` empty.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use rewind_test_support::*;

const TABLES: &[&str] = &["item", "nopk", "audited", "audit", "parent", "child"];

/// Quick phase-two retries and time-outs.
fn coordinator_config(dir: &TempDir) -> String {
    let path = dir.0.join("coordinator.toml");
    std::fs::write(
        &path,
        "tick_ms = 50\nphase_two_backoff_base_ms = 20\nphase_two_backoff_cap_ms = 300\n\
         phase_two_command_timeout_ms = 2000\nrollback_wait_ms = 3000\n",
    )
    .unwrap();
    path.display().to_string()
}

/// A proxy config file: `branch_mode`, quick XA recovery.
fn proxy_config(dir: &TempDir, name: &str, mode: &str) -> String {
    let path = dir.0.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!("branch_mode = \"{mode}\"\nxa_recovery_secs = 1\n"),
    )
    .unwrap();
    path.display().to_string()
}

async fn setup(db: &str) {
    fresh_db(db).await;
    let mut c = direct(db).await;
    for ddl in [
        "CREATE TABLE item (id INT PRIMARY KEY, qty INT NOT NULL)",
        "CREATE TABLE nopk (a INT, b VARCHAR(20))",
        "CREATE TABLE audited (id INT PRIMARY KEY, v INT NOT NULL)",
        "CREATE TABLE audit (n INT AUTO_INCREMENT PRIMARY KEY, id INT, v INT)",
        "CREATE TRIGGER audited_upd AFTER UPDATE ON audited FOR EACH ROW \
         INSERT INTO audit (id, v) VALUES (NEW.id, NEW.v)",
        "CREATE TABLE parent (id INT PRIMARY KEY)",
        "CREATE TABLE child (id INT PRIMARY KEY, parent_id INT NOT NULL, \
         FOREIGN KEY (parent_id) REFERENCES parent (id) ON DELETE CASCADE)",
        "INSERT INTO item SELECT seq, seq * 10 FROM seq_1_to_20",
        "INSERT INTO nopk VALUES (1, 'one'), (1, 'one'), (2, 'two')",
        "INSERT INTO audited VALUES (1, 1), (2, 2)",
        "INSERT INTO parent VALUES (1), (2)",
        "INSERT INTO child VALUES (10, 1), (11, 1), (20, 2)",
    ] {
        c.query_drop(ddl).await.unwrap();
    }
    c.disconnect().await.unwrap();
}

/// Everything AT refuses, in one local transaction through `c`, tagged with `tag` on BEGIN.
async fn refused_by_at(c: &mut Conn, tag: &str) {
    c.query_drop(format!("{tag} BEGIN")).await.unwrap();
    for sql in [
        "INSERT INTO item (id, qty) SELECT id + 100, qty FROM item WHERE id <= 5",
        "UPDATE nopk SET b = 'uno' WHERE a = 1",
        "INSERT INTO nopk VALUES (3, 'three')",
        "UPDATE audited SET v = v + 100",
        "DELETE FROM parent WHERE id = 1",
        "REPLACE INTO item VALUES (2, 2222)",
        "UPDATE item SET id = id + 1000 WHERE id = 20",
    ] {
        c.query_drop(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    c.query_drop("COMMIT").await.unwrap();
}

fn code(e: &mysql_async::Error) -> u16 {
    match e {
        mysql_async::Error::Server(s) => s.code,
        other => panic!("not a server error: {other}"),
    }
}

async fn count(db: &str, sql: &str) -> i64 {
    let mut c = direct(db).await;
    let n: Option<i64> = c.query_first(sql).await.unwrap();
    c.disconnect().await.unwrap();
    n.unwrap()
}

async fn branch_types(coord: &Coordinator, xid: &str) -> Vec<String> {
    coord.transaction(xid).await["branches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["type"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t29_what_at_refuses_runs_in_xa_rolls_back_and_commits() {
    let dir = TempDir::new("xa-refused");
    let db = "rwt_xa_refused";
    setup(db).await;
    let original = checksums(db, TABLES).await;
    let coord = Coordinator::start(&dir, &["--config", &coordinator_config(&dir)]).await;
    // An AT proxy takes the XA hint; an XA proxy takes plain XID tags as XA.
    let at = Proxy::start(&dir, "proxy-at", &coord.grpc_url(), &[]).await;
    let xa = Proxy::start(
        &dir,
        "proxy-xa",
        &coord.grpc_url(),
        &["--config", &proxy_config(&dir, "proxy-xa", "xa")],
    )
    .await;

    // Rolled back: nothing of it remains, though readers never saw any of it either.
    let xid = coord.begin(60_000).await;
    let mut c = at.conn(db).await;
    refused_by_at(&mut c, &format!("/*+ XA('{xid}') */")).await;
    assert_eq!(branch_types(&coord, &xid).await, ["xa"]);
    assert_eq!(
        checksums(db, TABLES).await,
        original,
        "readers see nothing of a prepared branch"
    );
    assert_eq!(xa_prepared(&xid).await.len(), 1, "the branch is prepared");
    assert_eq!(coord.rollback(&xid).await, "rolled_back");
    assert_eq!(checksums(db, TABLES).await, original);
    assert!(xa_prepared(&xid).await.is_empty());

    // Committed through the XA-mode proxy with plain XID tags: all of it applied.
    let xid = coord.begin(60_000).await;
    let mut c = xa.conn(db).await;
    refused_by_at(&mut c, &format!("/*+ XID('{xid}') */")).await;
    assert_eq!(branch_types(&coord, &xid).await, ["xa"]);
    assert_eq!(count(db, "SELECT COUNT(*) FROM item").await, 20);
    coord.commit(&xid).await;
    coord
        .wait_status(&xid, "committed", Duration::from_secs(10))
        .await;
    assert!(xa_prepared(&xid).await.is_empty());
    assert_eq!(count(db, "SELECT COUNT(*) FROM item").await, 25);
    assert_eq!(count(db, "SELECT qty FROM item WHERE id = 2").await, 2222);
    assert_eq!(
        count(db, "SELECT COUNT(*) FROM item WHERE id = 1020").await,
        1
    );
    assert_eq!(
        count(db, "SELECT COUNT(*) FROM nopk WHERE b = 'uno'").await,
        2
    );
    assert_eq!(count(db, "SELECT COUNT(*) FROM nopk").await, 4);
    assert_eq!(
        count(db, "SELECT COUNT(*) FROM audit").await,
        2,
        "the trigger ran"
    );
    assert_eq!(
        count(db, "SELECT COUNT(*) FROM child").await,
        1,
        "the cascade ran"
    );
    // The proof row of the branch is there (what tells a commit from a rollback later).
    assert_eq!(
        count(
            db,
            &format!("SELECT COUNT(*) FROM rewind.xa_branch WHERE gtrid = '{xid}'")
        )
        .await,
        1
    );
}

/// The session after COMMIT runs on a new backend connection: its variables, user
/// variables, database, autocommit setting and prepared statements came along; a tagged
/// write in autocommit is a branch by itself, a read runs as it is; a client ROLLBACK
/// rolls the branch back; mismatched and misplaced tags are refused with nothing applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t29_a_session_goes_on_after_its_xa_commit() {
    let dir = TempDir::new("xa-session");
    let db = "rwt_xa_session";
    setup(db).await;
    let coord = Coordinator::start(&dir, &["--config", &coordinator_config(&dir)]).await;
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &[]).await;
    let mut c = proxy.conn(db).await;
    c.query_drop("SET @who = 'zoë', @n = 41.5, SESSION sql_mode = 'ANSI_QUOTES', SESSION wait_timeout = 1234")
        .await
        .unwrap();
    let stmt = c.prep("SELECT qty FROM item WHERE id = ?").await.unwrap();

    let xid = coord.begin(60_000).await;
    c.query_drop(format!("/*+ XA('{xid}') */ BEGIN"))
        .await
        .unwrap();
    c.exec_drop("UPDATE item SET qty = qty + 1 WHERE id = ?", (1,))
        .await
        .unwrap();
    c.query_drop("COMMIT").await.unwrap();
    let (who, n, mode, wait, db_now): (String, String, String, u64, String) = c
        .query_first("SELECT @who, @n, @@sql_mode, @@wait_timeout, DATABASE()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            who.as_str(),
            n.as_str(),
            mode.as_str(),
            wait,
            db_now.as_str()
        ),
        ("zoë", "41.5", "ANSI_QUOTES", 1234, db)
    );
    let qty: Option<i64> = c.exec_first(&stmt, (1,)).await.unwrap();
    assert_eq!(qty, Some(10), "prepared but not yet committed");

    // A tagged write in autocommit: its own branch, prepared before the OK.
    c.query_drop(format!(
        "/*+ XA('{xid}') */ UPDATE item SET qty = qty + 1 WHERE id = 2"
    ))
    .await
    .unwrap();
    assert_eq!(c.affected_rows(), 1);
    // A tagged read in autocommit: no branch.
    let seen: Option<i64> = c
        .query_first(format!(
            "/*+ XA('{xid}') */ SELECT qty FROM item WHERE id = 3"
        ))
        .await
        .unwrap();
    assert_eq!(seen, Some(30));
    assert_eq!(branch_types(&coord, &xid).await, ["xa", "xa"]);
    assert_eq!(xa_prepared(&xid).await.len(), 2);

    // A client ROLLBACK rolls its branch back; nothing is registered.
    c.query_drop(format!("/*+ XA('{xid}') */ BEGIN"))
        .await
        .unwrap();
    c.query_drop("UPDATE item SET qty = 0 WHERE id = 4")
        .await
        .unwrap();
    c.query_drop("ROLLBACK").await.unwrap();
    assert_eq!(branch_types(&coord, &xid).await.len(), 2);

    // Refusals, nothing applied: another XID inside the branch; a tag after work; an
    // XA statement of the client's own inside a branch.
    c.query_drop(format!("/*+ XA('{xid}') */ BEGIN"))
        .await
        .unwrap();
    let e = c
        .query_drop("/*+ XA('rw-1') */ UPDATE item SET qty = 0 WHERE id = 5")
        .await
        .unwrap_err();
    assert_eq!(code(&e), 1398, "{e}");
    let e = c.query_drop("XA END 'x'").await.unwrap_err();
    assert_eq!(code(&e), 1235, "{e}");
    c.query_drop("ROLLBACK").await.unwrap();
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop("UPDATE item SET qty = 0 WHERE id = 6")
        .await
        .unwrap();
    let e = c
        .query_drop(format!(
            "/*+ XA('{xid}') */ UPDATE item SET qty = 0 WHERE id = 7"
        ))
        .await
        .unwrap_err();
    assert_eq!(code(&e), 1235, "{e}");
    c.query_drop("ROLLBACK").await.unwrap();

    coord.commit(&xid).await;
    coord
        .wait_status(&xid, "committed", Duration::from_secs(10))
        .await;
    assert!(xa_prepared(&xid).await.is_empty());
    assert_eq!(count(db, "SELECT qty FROM item WHERE id = 1").await, 11);
    assert_eq!(count(db, "SELECT qty FROM item WHERE id = 2").await, 21);
    assert_eq!(
        count(db, "SELECT COUNT(*) FROM item WHERE qty = 0").await,
        0,
        "refused and rolled-back work left nothing"
    );
    // A finished XID is refused before anything runs.
    let e = c
        .query_drop(format!("/*+ XA('{xid}') */ BEGIN"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), 1397, "{e}");

    // A KILL QUERY of the session's handshake id reaches the connection it moved to.
    let c_id = c.id();
    let sleeping = tokio::spawn(async move {
        let r = c.query_first::<i64, _>("SELECT SLEEP(20)").await;
        r.map_err(|e| code(&e))
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut other = proxy.conn(db).await;
    other
        .query_drop(format!("KILL QUERY {c_id}"))
        .await
        .unwrap();
    let slept = tokio::time::timeout(Duration::from_secs(10), sleeping).await;
    assert_eq!(slept.expect("cut short").unwrap(), Err(1317));
}

/// A session that set a variable to what a `SET GLOBAL` since made the default keeps it
/// across its XA commit, though the connection it moves to sat idle in the pool from
/// before the change (the state read carries only values that differ from the globals).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t29_a_session_keeps_its_values_across_a_set_global() {
    let dir = TempDir::new("xa-set-global");
    let db = "rwt_xa_set_global";
    setup(db).await;
    let coord = Coordinator::start(&dir, &["--config", &coordinator_config(&dir)]).await;
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &[]).await;
    let mut c = proxy.conn(db).await;
    // A second backend connection, idle in the pool (and reset there) before the change.
    let mut other = proxy.conn(db).await;
    other.query_drop("DO 1").await.unwrap();
    other.disconnect().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let global = ChangedGlobal::lock_wait_timeout().await;
    let changed = global.changed;
    c.query_drop(format!("SET SESSION lock_wait_timeout = {changed}"))
        .await
        .unwrap();
    let xid = coord.begin(60_000).await;
    c.query_drop(format!("/*+ XA('{xid}') */ BEGIN"))
        .await
        .unwrap();
    c.query_drop("UPDATE item SET qty = qty + 1 WHERE id = 1")
        .await
        .unwrap();
    let committed = c.query_drop("COMMIT").await;
    let after: Result<Option<u64>, _> = c.query_first("SELECT @@SESSION.lock_wait_timeout").await;
    global.restore().await;
    committed.unwrap();
    assert_eq!(branch_types(&coord, &xid).await, ["xa"]);
    // Decided before anything else is asserted: a failed assertion leaves no prepared
    // branch behind to hold this database's locks in the next run.
    coord.commit(&xid).await;
    coord
        .wait_status(&xid, "committed", Duration::from_secs(10))
        .await;
    assert_eq!(after.unwrap(), Some(changed), "the session's own value");
    assert_eq!(count(db, "SELECT qty FROM item WHERE id = 1").await, 11);
}

/// A client that disconnects in the middle of its branch: the branch is rolled back, its
/// row locks go, and nothing stays prepared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t29_a_client_gone_before_commit_leaves_nothing() {
    let dir = TempDir::new("xa-gone");
    let db = "rwt_xa_gone";
    setup(db).await;
    let original = checksums(db, TABLES).await;
    let coord = Coordinator::start(&dir, &["--config", &coordinator_config(&dir)]).await;
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &[]).await;
    let xid = coord.begin(60_000).await;
    let mut c = proxy.conn(db).await;
    c.query_drop(format!("/*+ XA('{xid}') */ BEGIN"))
        .await
        .unwrap();
    c.query_drop("UPDATE item SET qty = -1").await.unwrap();
    drop(c); // no COMMIT, no QUIT: the socket just closes
    eventually(
        "the row locks are released",
        Duration::from_secs(10),
        || async {
            let mut d = direct(db).await;
            d.query_drop("SET SESSION innodb_lock_wait_timeout = 1")
                .await
                .unwrap();
            let ok = d
                .query_drop("UPDATE item SET qty = qty WHERE id = 1")
                .await
                .is_ok();
            d.disconnect().await.unwrap();
            ok
        },
    )
    .await;
    assert_eq!(checksums(db, TABLES).await, original);
    assert!(xa_prepared(&xid).await.is_empty());
    assert!(coord.transaction(&xid).await["branches"]
        .as_array()
        .unwrap()
        .is_empty());
}

/// A proxy armed with `failpoint` (an abort around XA PREPARE) runs `update` as an XA
/// branch of a new global transaction and dies in the client's COMMIT. Returns the dead
/// proxy (to restart) and the xid.
async fn dies_preparing(
    dir: &TempDir,
    coord: &Coordinator,
    cfg: &str,
    failpoint: &str,
    db: &str,
    update: &str,
) -> (Proxy, String) {
    let mut proxy = Proxy::start_with(
        dir,
        "proxy",
        &coord.grpc_url(),
        &["--config", cfg],
        failpoint,
    )
    .await;
    let xid = coord.begin(60_000).await;
    let mut c = proxy.conn(db).await;
    c.query_drop(format!("/*+ XA('{xid}') */ BEGIN"))
        .await
        .unwrap();
    c.query_drop(update).await.unwrap();
    assert!(c.query_drop("COMMIT").await.is_err(), "the proxy died");
    proxy.wait_exit(Duration::from_secs(10)).await;
    (proxy, xid)
}

/// kill -9 of the proxy right after PREPARE: registered (then committed by a restarted
/// proxy on the global commit) or not yet (then rolled back by recovery once the global
/// transaction rolled back). Either way `XA RECOVER` ends empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t29_proxy_killed_after_prepare() {
    let dir = TempDir::new("xa-kill");
    let db = "rwt_xa_kill";
    setup(db).await;
    let coord = Coordinator::start(&dir, &["--config", &coordinator_config(&dir)]).await;
    let cfg = proxy_config(&dir, "proxy", "at");

    // Registered, then killed: the global commit is carried out by the restarted proxy.
    let (mut proxy, xid) = dies_preparing(
        &dir,
        &coord,
        &cfg,
        "xa-after-register=abort",
        db,
        "UPDATE item SET qty = qty + 5 WHERE id <= 3",
    )
    .await;
    assert_eq!(
        xa_prepared(&xid).await.len(),
        1,
        "prepared survives the proxy"
    );
    assert_eq!(branch_types(&coord, &xid).await, ["xa"]);
    let st = coord.commit(&xid).await;
    assert!(
        matches!(st.as_str(), "committing" | "commit_retrying" | "committed"),
        "{st}"
    );
    proxy.restart().await;
    coord
        .wait_status(&xid, "committed", Duration::from_secs(20))
        .await;
    assert!(xa_prepared(&xid).await.is_empty());
    assert_eq!(
        count(db, "SELECT SUM(qty) FROM item WHERE id <= 3").await,
        75
    );

    // Prepared but killed before registering: the global rollback knows no branch, and
    // recovery rolls the orphan back.
    proxy.kill();
    let (mut proxy, xid) = dies_preparing(
        &dir,
        &coord,
        &cfg,
        "xa-after-prepare=abort",
        db,
        "UPDATE item SET qty = 0 WHERE id <= 3",
    )
    .await;
    assert_eq!(xa_prepared(&xid).await.len(), 1, "an orphan, prepared");
    assert!(branch_types(&coord, &xid).await.is_empty());
    assert_eq!(coord.rollback(&xid).await, "rolled_back");
    proxy.restart().await;
    eventually(
        "recovery rolls the orphan back",
        Duration::from_secs(20),
        || async { xa_prepared(&xid).await.is_empty() },
    )
    .await;
    assert_eq!(
        count(db, "SELECT SUM(qty) FROM item WHERE id <= 3").await,
        75
    );
}

/// Two resources, one XA branch each; the coordinator is killed -9 after the first
/// branch committed and while the second is being committed (its proxy holds the XA
/// COMMIT back). After its restart it sends the commit again: the second branch, committed
/// meanwhile, answers `XAER_NOTA`, which its proof row turns into done. Both applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t29_coordinator_killed_between_branches() {
    let dir = TempDir::new("xa-coord-kill");
    let (da, db) = ("rwt_xa_ck_a", "rwt_xa_ck_b");
    setup(da).await;
    setup(db).await;
    let mut coord = Coordinator::start(&dir, &["--config", &coordinator_config(&dir)]).await;
    let pa = Proxy::start(
        &dir,
        "proxy-a",
        &coord.grpc_url(),
        &["--resource-id", "xa-a"],
    )
    .await;
    let pb = Proxy::start_with(
        &dir,
        "proxy-b",
        &coord.grpc_url(),
        &["--resource-id", "xa-b"],
        "xa-before-phase-two=sleep(2500)",
    )
    .await;
    let xid = coord.begin(60_000).await;
    for (p, d) in [(&pa, da), (&pb, db)] {
        let mut c = p.conn(d).await;
        c.query_drop(format!("/*+ XA('{xid}') */ BEGIN"))
            .await
            .unwrap();
        c.query_drop("UPDATE item SET qty = qty - 7 WHERE id = 1")
            .await
            .unwrap();
        c.query_drop("INSERT INTO nopk VALUES (9, 'nine')")
            .await
            .unwrap();
        c.query_drop("COMMIT").await.unwrap();
    }
    let st = coord.decide(&xid, "commit").await;
    assert_eq!(st.0, 200, "{:?}", st.1);
    eventually("branch a commits", Duration::from_secs(10), || async {
        count(da, "SELECT qty FROM item WHERE id = 1").await == 3
    })
    .await;
    assert_eq!(
        count(db, "SELECT qty FROM item WHERE id = 1").await,
        10,
        "b is held back"
    );
    coord.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    coord.restart().await;
    coord
        .wait_status(&xid, "committed", Duration::from_secs(30))
        .await;
    for d in [da, db] {
        assert_eq!(count(d, "SELECT qty FROM item WHERE id = 1").await, 3);
        assert_eq!(count(d, "SELECT COUNT(*) FROM nopk WHERE a = 9").await, 1);
    }
    assert!(xa_prepared(&xid).await.is_empty());
}

/// The coordinator is gone between PREPARE and the registration: the client hears 1401
/// (`XAER_RMERR`, in doubt) and the branch stays prepared. Back up, the coordinator never
/// heard of the branch and times the global transaction out; recovery then rolls the
/// orphan back, and nothing of it is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t29_coordinator_unreachable_after_prepare_leaves_the_branch_in_doubt() {
    let dir = TempDir::new("xa-doubt");
    let db = "rwt_xa_doubt";
    setup(db).await;
    let original = checksums(db, TABLES).await;
    let mut coord = Coordinator::start(&dir, &["--config", &coordinator_config(&dir)]).await;
    let cfg = dir.0.join("proxy.toml");
    std::fs::write(
        &cfg,
        "xa_recovery_secs = 1\ncoordinator_timeout_ms = 300\ncoordinator_retry_ms = 1000\n",
    )
    .unwrap();
    let proxy = Proxy::start_with(
        &dir,
        "proxy",
        &coord.grpc_url(),
        &["--config", &cfg.display().to_string()],
        "xa-after-prepare=sleep(1500)",
    )
    .await;
    let xid = coord.begin(5_000).await;
    let mut c = proxy.conn(db).await;
    c.query_drop(format!("/*+ XA('{xid}') */ BEGIN"))
        .await
        .unwrap();
    c.query_drop("UPDATE item SET qty = -1 WHERE id <= 5")
        .await
        .unwrap();
    let commit = tokio::spawn(async move {
        let r = c.query_drop("COMMIT").await;
        (r, c)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    coord.kill();
    let (r, mut c) = commit.await.unwrap();
    let e = r.unwrap_err();
    assert_eq!(code(&e), 1401, "{e}");
    assert_eq!(xa_prepared(&xid).await.len(), 1, "in doubt: still prepared");
    // The session itself goes on, on its new connection.
    let n: Option<i64> = c.query_first("SELECT COUNT(*) FROM item").await.unwrap();
    assert_eq!(n, Some(20));
    coord.restart().await;
    coord
        .wait_status(&xid, "timeout_rolled_back", Duration::from_secs(20))
        .await;
    eventually(
        "recovery rolls the branch back",
        Duration::from_secs(20),
        || async { xa_prepared(&xid).await.is_empty() },
    )
    .await;
    assert_eq!(checksums(db, TABLES).await, original);
}
