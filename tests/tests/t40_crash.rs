//! Crash points, driven by the proxy's failpoints and kill -9: whatever dies where, the
//! global rollback completes, and its undo is applied exactly once (never again over a
//! newer write).

use std::time::Duration;

use mysql_async::prelude::Queryable;
use rewind_test_support::*;

const TABLES: &[&str] = &["stock"];

async fn setup(db: &str) {
    fresh_db(db).await;
    let mut c = direct(db).await;
    c.query_drop("CREATE TABLE stock (id INT PRIMARY KEY, qty INT NOT NULL, note VARCHAR(10))")
        .await
        .unwrap();
    c.query_drop("INSERT INTO stock SELECT seq, seq * 10, 'x' FROM seq_1_to_200")
        .await
        .unwrap();
    c.disconnect().await.unwrap();
}

/// Quick retries and short waits: the tests watch recoveries, not timeouts.
fn config(dir: &TempDir) -> String {
    let path = dir.0.join("coordinator.toml");
    std::fs::write(
        &path,
        "tick_ms = 50\nphase_two_backoff_base_ms = 20\nphase_two_backoff_cap_ms = 300\n\
         phase_two_command_timeout_ms = 2000\nrollback_wait_ms = 300\n",
    )
    .unwrap();
    path.display().to_string()
}

async fn qty(db: &str, id: i64) -> i64 {
    let mut c = direct(db).await;
    let q: Option<i64> = c
        .exec_first("SELECT qty FROM stock WHERE id = ?", (id,))
        .await
        .unwrap();
    c.disconnect().await.unwrap();
    q.unwrap()
}

/// The proxy dies (kill -9 equivalent) right after a branch's local commit, before the
/// client even hears of it and before any phase two. The rollback waits for a proxy, and
/// a restarted one finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t40_proxy_dies_after_local_commit() {
    let dir = TempDir::new("crash-commit");
    let db = "rwt_crash_commit";
    setup(db).await;
    let original = checksums(db, TABLES).await;
    let coord = Coordinator::start(&dir, &["--config", &config(&dir)]).await;
    let mut proxy = Proxy::start_with(
        &dir,
        "proxy",
        &coord.grpc_url(),
        &[],
        "after-local-commit=abort",
    )
    .await;
    let xid = coord.begin(600_000).await;
    let mut c = proxy.conn(db).await;
    let r = c
        .query_drop(format!(
            "/*+ XID('{xid}') */ UPDATE stock SET qty = qty + 1 WHERE id <= 50"
        ))
        .await;
    assert!(r.is_err(), "the client loses its connection with the proxy");
    proxy.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(qty(db, 1).await, 11, "the branch committed locally");
    assert_eq!(undo_rows(Some(&xid)).await, (1, 0), "with its undo record");

    let st = coord.rollback(&xid).await;
    assert!(
        matches!(st.as_str(), "rolling_back" | "rollback_retrying"),
        "{st}"
    );
    assert_eq!(qty(db, 1).await, 11, "nothing undone without a proxy");
    proxy.restart().await;
    coord
        .wait_status(&xid, "rolled_back", Duration::from_secs(20))
        .await;
    assert_eq!(checksums(db, TABLES).await, original);
    // No undo record is left. A marker may be: the restarted proxy's attach makes the
    // coordinator resend the rollback it may already have in flight (phase-two commands
    // are at least once), and a rollback that finds no record leaves the marker that
    // stops a late phase one; housekeeping deletes it later.
    let (records, markers) = undo_rows(Some(&xid)).await;
    assert_eq!(records, 0, "the undo record is gone");
    assert!(markers <= 1, "{markers} markers");
    assert!(coord.locks().await.is_empty());
}

/// The coordinator is killed after the proxy committed the undo but before it heard the
/// answer. After its restart it sends the rollback again; the proxy finds the record gone
/// and does nothing, so a write made after the undo survives: applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t41_coordinator_dies_mid_rollback() {
    let dir = TempDir::new("crash-coordinator");
    let db = "rwt_crash_coordinator";
    setup(db).await;
    let original = checksums(db, TABLES).await;
    let mut coord = Coordinator::start(&dir, &["--config", &config(&dir)]).await;
    let proxy = Proxy::start_with(
        &dir,
        "proxy",
        &coord.grpc_url(),
        &[],
        "rollback-after-commit=sleep(1500)",
    )
    .await;
    let xid = coord.begin(600_000).await;
    let mut c = proxy.conn(db).await;
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop(format!(
        "/*+ XID('{xid}') */ UPDATE stock SET qty = qty + 1 WHERE id <= 100"
    ))
    .await
    .unwrap();
    c.query_drop("DELETE FROM stock WHERE id > 190")
        .await
        .unwrap();
    c.query_drop("COMMIT").await.unwrap();
    c.disconnect().await.unwrap();

    let st = coord.rollback(&xid).await;
    assert_eq!(st, "rolling_back", "answered before the proxy did");
    eventually("the undo committed", Duration::from_secs(10), || async {
        checksums(db, TABLES).await == original
    })
    .await;
    coord.process.kill();
    // A write after the undo: a second undo would overwrite (or trip over) it.
    let mut d = direct(db).await;
    d.query_drop("UPDATE stock SET qty = 7 WHERE id = 1")
        .await
        .unwrap();
    d.disconnect().await.unwrap();
    coord.restart().await;
    coord
        .wait_status(&xid, "rolled_back", Duration::from_secs(20))
        .await;
    assert_eq!(qty(db, 1).await, 7, "the undo ran once");
    assert_eq!(qty(db, 2).await, 20);
    assert_eq!(undo_rows(Some(&xid)).await.0, 0);
    assert!(coord.conflicts().await.is_empty());
}

/// The proxy dies inside the undo transaction: MariaDB rolls the half-done undo back, the
/// record stays, and a restarted proxy undoes the branch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t42_proxy_dies_mid_undo() {
    let dir = TempDir::new("crash-undo");
    let db = "rwt_crash_undo";
    setup(db).await;
    let original = checksums(db, TABLES).await;
    let coord = Coordinator::start(&dir, &["--config", &config(&dir)]).await;
    let mut proxy = Proxy::start_with(
        &dir,
        "proxy",
        &coord.grpc_url(),
        &[],
        "rollback-before-commit=abort",
    )
    .await;
    let xid = coord.begin(600_000).await;
    let mut c = proxy.conn(db).await;
    c.query_drop(format!(
        "/*+ XID('{xid}') */ UPDATE stock SET qty = 0, note = 'gone' WHERE id <= 200"
    ))
    .await
    .unwrap();
    c.disconnect().await.unwrap();
    coord.rollback(&xid).await;
    proxy.wait_exit(Duration::from_secs(10)).await;
    eventually(
        "MariaDB rolled the half-done undo back",
        Duration::from_secs(10),
        || async { qty(db, 5).await == 0 },
    )
    .await;
    assert_eq!(undo_rows(Some(&xid)).await, (1, 0));
    proxy.restart().await;
    coord
        .wait_status(&xid, "rolled_back", Duration::from_secs(20))
        .await;
    assert_eq!(checksums(db, TABLES).await, original);
    assert_eq!(undo_rows(Some(&xid)).await, (0, 0));
}

/// A branch registered but not yet committed locally when its global transaction rolls
/// back: the rollback leaves the anti-suspension marker, the late phase one fails on it
/// (the client gets 1402), and nothing of the branch is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t43_late_phase_one_fails_on_the_marker() {
    let dir = TempDir::new("suspension");
    let db = "rwt_suspension";
    setup(db).await;
    let original = checksums(db, TABLES).await;
    let coord = Coordinator::start(&dir, &["--config", &config(&dir)]).await;
    let proxy = Proxy::start_with(
        &dir,
        "proxy",
        &coord.grpc_url(),
        &[],
        "after-register=sleep(2000)",
    )
    .await;
    let xid = coord.begin(600_000).await;
    let opts = proxy.opts(db);
    let x = xid.clone();
    let late = tokio::spawn(async move {
        let mut c = mysql_async::Conn::new(opts).await.unwrap();
        c.query_drop(format!(
            "/*+ XID('{x}') */ UPDATE stock SET qty = -1 WHERE id = 3"
        ))
        .await
    });
    eventually(
        "the branch is registered",
        Duration::from_secs(10),
        || async {
            coord.transaction(&xid).await["branches"]
                .as_array()
                .is_some_and(|b| !b.is_empty())
        },
    )
    .await;
    assert_eq!(coord.rollback(&xid).await, "rolled_back");
    assert_eq!(
        undo_rows(Some(&xid)).await,
        (0, 1),
        "the marker is in place"
    );
    let (code, _, msg) = server_error(late.await.unwrap()).unwrap();
    assert_eq!(code, 1402, "{msg}");
    assert!(msg.contains("already rolled back"), "{msg}");
    assert_eq!(checksums(db, TABLES).await, original);
}

/// Phase two needs no proxy in particular: a branch written through one proxy is rolled
/// back by another proxy of the same backend once the first is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t44_another_proxy_of_the_backend_finishes_phase_two() {
    let dir = TempDir::new("other-proxy");
    let db = "rwt_other_proxy";
    setup(db).await;
    let original = checksums(db, TABLES).await;
    let coord = Coordinator::start(&dir, &["--config", &config(&dir)]).await;
    let mut first = Proxy::start(
        &dir,
        "first",
        &coord.grpc_url(),
        &["--resource-id", "shared-db"],
    )
    .await;
    let xid = coord.begin(600_000).await;
    let mut c = first.conn(db).await;
    c.query_drop(format!(
        "/*+ XID('{xid}') */ DELETE FROM stock WHERE id > 150"
    ))
    .await
    .unwrap();
    c.disconnect().await.unwrap();
    first.kill();
    let st = coord.rollback(&xid).await;
    assert_ne!(st, "rolled_back", "nobody can undo it yet");
    let _second = Proxy::start(
        &dir,
        "second",
        &coord.grpc_url(),
        &["--resource-id", "shared-db"],
    )
    .await;
    coord
        .wait_status(&xid, "rolled_back", Duration::from_secs(20))
        .await;
    assert_eq!(checksums(db, TABLES).await, original);
}
