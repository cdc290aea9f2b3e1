//! Write isolation (`write_isolation = "all"`, the default): an UPDATE or DELETE without
//! an XID that touches a row held by an unfinished global transaction waits for the lock
//! and fails with 1205 instead of creating a dirty write; it succeeds once the holder
//! commits; it gives way at once to a holder rolling back; and statements on tables
//! without global locks never ask the coordinator. Slow phase two holds up no proxy's
//! confirmation that it checks a newly locked table.

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use rewind_test_support::*;

const DB: &str = "rwt_isolation";

async fn setup() {
    fresh_db(DB).await;
    let mut c = direct(DB).await;
    for s in [
        "CREATE TABLE acc (id INT PRIMARY KEY, bal INT NOT NULL)",
        "INSERT INTO acc VALUES (1, 10), (2, 20), (3, 30), (4, 40), (5, 50)",
        "CREATE TABLE other (id INT PRIMARY KEY, v INT NOT NULL)",
        "INSERT INTO other VALUES (1, 1), (2, 2)",
        "CREATE TABLE fresh (id INT PRIMARY KEY, v INT NOT NULL)",
        "INSERT INTO fresh VALUES (1, 0)",
    ] {
        c.query_drop(s).await.unwrap();
    }
    c.disconnect().await.unwrap();
}

async fn value(sql: &str) -> i64 {
    value_in(DB, sql).await
}

async fn query_locks_calls(coord: &Coordinator) -> u64 {
    let (_, body) = http(coord.http, "GET", "/metrics", None).await.unwrap();
    let text = body.as_str().unwrap_or_default().to_string();
    text.lines()
        .find(|l| l.starts_with("rewind_request_duration_seconds_count{op=\"query_locks\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn proxy_config(dir: &TempDir, name: &str, retries: u32) -> String {
    let path = dir.0.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!("lock_retry_interval_ms = 10\nlock_retry_count = {retries}\n"),
    )
    .unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t60_untagged_writes_respect_global_locks() {
    let dir = TempDir::new("isolation");
    setup().await;
    let coord_cfg = dir.0.join("coordinator.toml");
    std::fs::write(&coord_cfg, "write_isolation_wait_ms = 500\ntick_ms = 50\n").unwrap();
    let coord = Coordinator::start(&dir, &["--config", &coord_cfg.display().to_string()]).await;
    let quick = Proxy::start(
        &dir,
        "quick",
        &coord.grpc_url(),
        &["--config", &proxy_config(&dir, "quick", 20)],
    )
    .await;
    let patient = Proxy::start(
        &dir,
        "patient",
        &coord.grpc_url(),
        &["--config", &proxy_config(&dir, "patient", 1000)],
    )
    .await;

    // Nothing locked: untagged writes never reach the coordinator.
    let before = query_locks_calls(&coord).await;
    let mut c = quick.conn(DB).await;
    for i in 0..20 {
        c.exec_drop("UPDATE other SET v = ? WHERE id = 1", (i,))
            .await
            .unwrap();
        c.query_drop("DELETE FROM other WHERE id = 99")
            .await
            .unwrap();
    }

    // A global transaction holds row acc.1.
    let xid = coord.begin(600_000).await;
    c.query_drop(format!(
        "/*+ XID('{xid}') */ UPDATE acc SET bal = bal + 1 WHERE id = 1"
    ))
    .await
    .unwrap();
    // Other tables stay on the fast path.
    for i in 0..20 {
        c.exec_drop("UPDATE other SET v = ? WHERE id = 2", (i,))
            .await
            .unwrap();
    }
    assert_eq!(
        query_locks_calls(&coord).await,
        before,
        "no coordinator round trip for unlocked tables"
    );

    // The held row: 1205 after the configured wait, nothing written.
    for sql in [
        "UPDATE acc SET bal = 0 WHERE id = 1",
        "UPDATE acc SET bal = bal * 2 WHERE bal < 100",
        "DELETE FROM acc WHERE id IN (1, 2)",
    ] {
        let started = Instant::now();
        let (code, _, msg) = server_error(c.query_drop(sql).await).unwrap();
        assert_eq!(code, 1205, "{sql}: {msg}");
        assert!(msg.contains(&xid), "{msg}");
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "it waited for the lock first"
        );
    }
    let (code, _, _) = server_error(
        c.exec_drop("UPDATE acc SET bal = ? WHERE id = ?", (0, 1))
            .await,
    )
    .unwrap();
    assert_eq!(code, 1205, "binary protocol too");
    assert_eq!(value("SELECT bal FROM acc WHERE id = 1").await, 11);
    // Rows nobody holds in a locked table are written (after the check).
    c.query_drop("UPDATE acc SET bal = 21 WHERE id = 2")
        .await
        .unwrap();
    assert_eq!(c.affected_rows(), 1);
    // Inside the client's own transaction the statement fails like a lock wait timeout;
    // the transaction goes on.
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop("UPDATE acc SET bal = 22 WHERE id = 2")
        .await
        .unwrap();
    let (code, _, _) =
        server_error(c.query_drop("UPDATE acc SET bal = 0 WHERE id = 1").await).unwrap();
    assert_eq!(code, 1205);
    c.query_drop("COMMIT").await.unwrap();
    assert_eq!(value("SELECT bal FROM acc WHERE id = 2").await, 22);

    // A waiting write goes through once the holder commits.
    let opts = patient.opts(DB);
    let waiting = tokio::spawn(async move {
        let mut p = mysql_async::Conn::new(opts).await.unwrap();
        p.query_drop("UPDATE acc SET bal = 100 WHERE id = 1")
            .await
            .map(|_| p.affected_rows())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "it waits while the lock is held");
    coord.commit(&xid).await;
    assert_eq!(waiting.await.unwrap().unwrap(), 1);
    assert_eq!(value("SELECT bal FROM acc WHERE id = 1").await, 100);

    // A holder that rolls back: the waiting write gives way at once (its local row lock
    // would block the undo), the undo completes cleanly, no dirty write.
    let xid = coord.begin(600_000).await;
    c.query_drop(format!(
        "/*+ XID('{xid}') */ UPDATE acc SET bal = 333 WHERE id = 3"
    ))
    .await
    .unwrap();
    let opts = patient.opts(DB);
    let polls = query_locks_calls(&coord).await;
    let waiting = tokio::spawn(async move {
        let mut p = mysql_async::Conn::new(opts).await.unwrap();
        p.query_drop("UPDATE acc SET bal = 7 WHERE id = 3").await
    });
    eventually(
        "the write is waiting for the lock",
        Duration::from_secs(10),
        || async { query_locks_calls(&coord).await > polls + 1 },
    )
    .await;
    assert_eq!(coord.rollback(&xid).await, "rolled_back");
    let (code, _, msg) = server_error(waiting.await.unwrap()).unwrap();
    assert_eq!(code, 1205, "{msg}");
    assert!(msg.contains("rolling back"), "{msg}");
    assert_eq!(
        value("SELECT bal FROM acc WHERE id = 3").await,
        30,
        "restored, not overwritten"
    );
    assert!(coord.conflicts().await.is_empty());

    // A write already running when its table first gets a global lock: the branch is not
    // granted until that write is done. Here the write waits for the branch's own row
    // lock, so the branch gives way (1205 after the coordinator's wait) and the write
    // then lands — nothing is overwritten behind a global transaction's back.
    let xid = coord.begin(600_000).await;
    let mut g = quick.conn(DB).await;
    g.query_drop("BEGIN").await.unwrap();
    g.query_drop(format!(
        "/*+ XID('{xid}') */ UPDATE fresh SET v = 1 WHERE id = 1"
    ))
    .await
    .unwrap();
    let opts = quick.opts(DB);
    let blocked = tokio::spawn(async move {
        let mut p = mysql_async::Conn::new(opts).await.unwrap();
        p.query_drop("UPDATE fresh SET v = 2 WHERE id = 1").await
    });
    eventually("the write waits in MariaDB for the branch's row lock", Duration::from_secs(10), || async {
        // (PROCESSLIST, not INNODB_TRX: the latter is a cache refreshed only when not
        // read for 0.1 s, which polling never lets happen.)
        value("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO = 'UPDATE fresh SET v = 2 WHERE id = 1'").await > 0
    })
    .await;
    let (code, _, msg) = server_error(g.query_drop("COMMIT").await).unwrap();
    assert_eq!(code, 1205, "{msg}");
    assert!(msg.contains("without an XID"), "{msg}");
    blocked.await.unwrap().unwrap();
    assert_eq!(value("SELECT v FROM fresh WHERE id = 1").await, 2);
    assert_eq!(undo_rows(Some(&xid)).await, (0, 0));
    assert_eq!(coord.rollback(&xid).await, "rolled_back");
    eventually("no lock left", Duration::from_secs(5), || async {
        coord.locks().await.is_empty()
    })
    .await;
}

/// `SELECT … FOR UPDATE` under an XID reads only rows no other global transaction holds
/// (global read-committed): it waits for the holder, and fails with 1205 if it stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t61_locking_read_under_an_xid_waits_for_other_global_transactions() {
    let dir = TempDir::new("locking-read");
    let db = "rwt_locking_read";
    fresh_db(db).await;
    let mut d = direct(db).await;
    d.query_drop("CREATE TABLE acc (id INT PRIMARY KEY, bal INT NOT NULL)")
        .await
        .unwrap();
    d.query_drop("INSERT INTO acc VALUES (1, 10), (2, 20)")
        .await
        .unwrap();
    d.disconnect().await.unwrap();
    let coord = Coordinator::start(&dir, &[]).await;
    let quick = Proxy::start(
        &dir,
        "quick",
        &coord.grpc_url(),
        &["--config", &proxy_config(&dir, "quick", 20)],
    )
    .await;
    let patient = Proxy::start(
        &dir,
        "patient",
        &coord.grpc_url(),
        &["--config", &proxy_config(&dir, "patient", 1000)],
    )
    .await;

    let holder = coord.begin(600_000).await;
    let mut c = quick.conn(db).await;
    c.query_drop(format!(
        "/*+ XID('{holder}') */ UPDATE acc SET bal = 11 WHERE id = 1"
    ))
    .await
    .unwrap();

    // Another global transaction's locking read of the held row: 1205, in a transaction
    // or in autocommit, text or binary protocol. An unheld row reads at once.
    let reader = coord.begin(600_000).await;
    let mut r = quick.conn(db).await;
    r.query_drop("BEGIN").await.unwrap();
    let row: Option<i64> = r
        .query_first(format!(
            "/*+ XID('{reader}') */ SELECT bal FROM acc WHERE id = 2 FOR UPDATE"
        ))
        .await
        .unwrap();
    assert_eq!(row, Some(20));
    let (code, _, msg) = server_error(
        r.query_first::<i64, _>("SELECT bal FROM acc WHERE id = 1 FOR UPDATE")
            .await,
    )
    .unwrap();
    assert_eq!(code, 1205, "{msg}");
    assert!(msg.contains(&holder), "{msg}");
    r.query_drop("ROLLBACK").await.unwrap();
    let (code, _, _) = server_error(
        r.exec_first::<i64, _, _>(
            format!("/*+ XID('{reader}') */ SELECT bal FROM acc WHERE id = ? FOR UPDATE"),
            (1,),
        )
        .await,
    )
    .unwrap();
    assert_eq!(code, 1205);
    // The holder's own locking read does not wait for itself.
    let own: Option<i64> = c
        .query_first(format!(
            "/*+ XID('{holder}') */ SELECT bal FROM acc WHERE id = 1 FOR UPDATE"
        ))
        .await
        .unwrap();
    assert_eq!(own, Some(11));

    // A patient reader gets the row once the holder commits.
    let opts = patient.opts(db);
    let x = reader.clone();
    let waiting = tokio::spawn(async move {
        let mut p = mysql_async::Conn::new(opts).await.unwrap();
        p.query_first::<i64, _>(format!(
            "/*+ XID('{x}') */ SELECT bal FROM acc WHERE id = 1 FOR UPDATE"
        ))
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished());
    coord.commit(&holder).await;
    assert_eq!(waiting.await.unwrap().unwrap(), Some(11));
    coord.rollback(&reader).await;
}

/// Phase two's AT commits only queue for the committer, which has a backend connection of
/// its own: they take no phase-two worker, so slow undo-record deletes hold up neither the
/// Attach stream nor write isolation. (When each took a worker until its batch was
/// deleted, every worker waited on a slow delete, the stream stopped at the next phase-two
/// command, the proxy's ack of a newly locked table came after the coordinator's wait, and
/// the branch's registration failed with 1205.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t62_slow_undo_deletes_hold_up_no_registration() {
    const DB2: &str = "rwt_isolation_phase_two";
    fresh_db(DB2).await;
    let mut d = direct(DB2).await;
    for s in [
        "CREATE TABLE a (id INT PRIMARY KEY, v INT NOT NULL)",
        "INSERT INTO a VALUES (1, 0), (2, 0)",
        "CREATE TABLE b (id INT PRIMARY KEY, v INT NOT NULL)",
        "INSERT INTO b VALUES (1, 0)",
    ] {
        d.query_drop(s).await.unwrap();
    }
    let dir = TempDir::new("isolation-phase-two");
    let config = dir.0.join("proxy.toml");
    std::fs::write(&config, "phase_two_connections = 1\n").unwrap();
    let config = config.display().to_string();
    let coord = Coordinator::start(&dir, &[]).await;
    let proxy = Proxy::start_with(
        &dir,
        "proxy",
        &coord.grpc_url(),
        &["--config", &config],
        "before-undo-delete=sleep(5000)",
    )
    .await;
    let mut c = proxy.conn(DB2).await;
    // Two committed global transactions: their undo records' delete takes 5 s.
    let mut committed = Vec::new();
    for id in [1, 2] {
        let xid = coord.begin(60_000).await;
        c.query_drop(format!(
            "/*+ XID('{xid}') */ UPDATE a SET v = v + 1 WHERE id = {id}"
        ))
        .await
        .unwrap();
        coord.commit(&xid).await;
        committed.push(xid);
    }
    // Both phase-two commands are at the proxy now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A branch on another table: its registration waits for the proxy's ack of the grown
    // set of locked tables (at most the coordinator's 1 s).
    let xid = coord.begin(60_000).await;
    let started = Instant::now();
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop(format!(
        "/*+ XID('{xid}') */ UPDATE b SET v = v + 1 WHERE id = 1"
    ))
    .await
    .unwrap();
    let r = c.query_drop("COMMIT").await;
    assert!(r.is_ok(), "the branch on b registered: {r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the branch on b waited {:?}",
        started.elapsed()
    );
    coord.commit(&xid).await;
    // The slow deletes finish; every transaction ends committed, each write applied once.
    for x in committed.iter().chain([&xid]) {
        coord
            .wait_status(x, "committed", Duration::from_secs(20))
            .await;
    }
    let mut d = direct(DB2).await;
    let sums: Option<(i64, i64)> = d
        .query_first("SELECT (SELECT SUM(v) FROM a), (SELECT SUM(v) FROM b)")
        .await
        .unwrap();
    assert_eq!(sums, Some((2, 1)));
    let undo: Option<i64> = d
        .query_first(format!(
            "SELECT COUNT(*) FROM rewind.undo_log WHERE xid IN ('{}', '{}', '{xid}')",
            committed[0], committed[1]
        ))
        .await
        .unwrap();
    assert_eq!(undo, Some(0), "the undo records are deleted");
}

/// A proxy that stops answering (stopped: a hung machine, or one cut off without its
/// connections being reset) holds up no registration for long: the coordinator notices the
/// silent Attach stream (HTTP/2 keep-alive), stops waiting for that proxy's confirmation of
/// a newly locked table, and a branch on such a table through another proxy of the same
/// resource commits. Before, every first lock on a table of that resource failed with 1205
/// for as long as the proxy stayed silent. Let run again, the proxy attaches anew and
/// checks its untagged writes against the locks taken meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t63_a_silent_proxy_holds_up_no_registration() {
    const DB3: &str = "rwt_isolation_silent";
    fresh_db(DB3).await;
    direct_exec(DB3, "CREATE TABLE t (id INT PRIMARY KEY, v INT NOT NULL)").await;
    direct_exec(DB3, "INSERT INTO t VALUES (1, 0)").await;
    let dir = TempDir::new("isolation-silent");
    let coord = Coordinator::start(&dir, &[]).await;
    // Each started once attached.
    let args = ["--resource-id", "silent-a"];
    let live = Proxy::start(&dir, "live", &coord.grpc_url(), &args).await;
    let silent = Proxy::start(&dir, "silent", &coord.grpc_url(), &args).await;
    silent.process.pause(true);

    // A branch on t, the first lock on that table: it needs every attached proxy of the
    // resource to confirm it checks t. Retried while it is refused.
    let mut c = live.conn(DB3).await;
    let started = Instant::now();
    let xid = loop {
        let xid = coord.begin(120_000).await;
        c.query_drop("BEGIN").await.unwrap();
        let r = c
            .query_drop(format!(
                "/*+ XID('{xid}') */ UPDATE t SET v = v + 1 WHERE id = 1"
            ))
            .await;
        let r = match r {
            Ok(()) => c.query_drop("COMMIT").await,
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => break xid,
            Err(e) => {
                let _ = c.query_drop("ROLLBACK").await;
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "no branch on a newly locked table while a proxy is silent: {e}"
                );
            }
        }
    };

    // Let run again, the silent proxy attaches anew and learns that t is locked: its
    // untagged write to the locked row waits for the lock and fails.
    silent.process.pause(false);
    eventually(
        "the silent proxy attached again",
        Duration::from_secs(20),
        || async { silent.process.log_count("attached to the coordinator") > 1 },
    )
    .await;
    let mut s = silent.conn(DB3).await;
    let r = s.query_drop("UPDATE t SET v = 100 WHERE id = 1").await;
    assert!(
        matches!(&r, Err(mysql_async::Error::Server(e)) if e.code == 1205),
        "an untagged write to a row under a global lock: {r:?}"
    );
    coord.commit(&xid).await;
    coord
        .wait_status(&xid, "committed", Duration::from_secs(20))
        .await;
    assert_eq!(value_in(DB3, "SELECT v FROM t WHERE id = 1").await, 1);
}

/// One integer a query answers, read directly from `db`.
async fn value_in(db: &str, sql: &str) -> i64 {
    let mut c = direct(db).await;
    let v: Option<i64> = c.query_first(sql).await.unwrap();
    c.disconnect().await.unwrap();
    v.unwrap()
}
