//! Undo housekeeping: normal undo records of unfinished global transactions are never
//! deleted (Seata's purge job deleted those of transactions still retrying their rollback,
//! whose next attempt then "succeeded" without restoring anything); anti-suspension
//! markers and records of committed transactions go once nothing needs them.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use rewind_test_support::*;

const DB: &str = "rwt_housekeeping";
const UNDO: &str = "rwt_housekeeping_undo";

async fn records() -> Vec<(String, i32)> {
    let mut c = direct("mysql").await;
    let rows: Vec<(String, i32)> = c
        .query(format!(
            "SELECT xid, log_status FROM `{UNDO}`.undo_log ORDER BY xid"
        ))
        .await
        .unwrap();
    c.disconnect().await.unwrap();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t70_housekeeping_keeps_what_a_rollback_needs() {
    let dir = TempDir::new("housekeeping");
    fresh_db(DB).await;
    direct("mysql")
        .await
        .query_drop(format!("DROP DATABASE IF EXISTS `{UNDO}`"))
        .await
        .unwrap();
    let mut d = direct(DB).await;
    d.query_drop("CREATE TABLE t (id INT PRIMARY KEY, v INT NOT NULL)")
        .await
        .unwrap();
    d.query_drop("INSERT INTO t VALUES (1, 1), (2, 2), (3, 3), (4, 4)")
        .await
        .unwrap();
    let config = dir.0.join("proxy.toml");
    std::fs::write(
        &config,
        format!("undo_schema = \"{UNDO}\"\nundo_housekeeping_secs = 1\nundo_retention_secs = 4\n"),
    )
    .unwrap();
    let config = config.display().to_string();
    let coord = Coordinator::start(&dir, &[]).await;
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &["--config", &config]).await;
    let slow = Proxy::start_with(
        &dir,
        "slow",
        &coord.grpc_url(),
        &["--config", &config],
        "after-register=sleep(1500)",
    )
    .await;
    let mut c = proxy.conn(DB).await;

    // Records are old enough for housekeeping after 4 s; the late phase one below comes
    // 1.5 s after its registration, well within that.
    // Unfinished, not yet decided.
    let open = coord.begin(600_000).await;
    c.query_drop(format!(
        "/*+ XID('{open}') */ UPDATE t SET v = 10 WHERE id = 1"
    ))
    .await
    .unwrap();
    // Unfinished, its rollback stalled on a dirty write.
    let stalled = coord.begin(600_000).await;
    c.query_drop(format!(
        "/*+ XID('{stalled}') */ UPDATE t SET v = 20 WHERE id = 2"
    ))
    .await
    .unwrap();
    d.query_drop("UPDATE t SET v = 99 WHERE id = 2")
        .await
        .unwrap();
    assert_eq!(coord.rollback(&stalled).await, "rollback_failed");
    // Finished, leaving a marker (its phase one registered but never committed).
    let marked = coord.begin(600_000).await;
    let opts = slow.opts(DB);
    let x = marked.clone();
    let late = tokio::spawn(async move {
        let mut s = mysql_async::Conn::new(opts).await.unwrap();
        s.query_drop(format!(
            "/*+ XID('{x}') */ UPDATE t SET v = 30 WHERE id = 3"
        ))
        .await
    });
    eventually(
        "the late branch registered",
        Duration::from_secs(10),
        || async {
            coord.transaction(&marked).await["branches"]
                .as_array()
                .is_some_and(|b| !b.is_empty())
        },
    )
    .await;
    assert_eq!(coord.rollback(&marked).await, "rolled_back");
    assert!(late.await.unwrap().is_err());
    // Committed, but its record survived (as when a phase-two delete is lost).
    let committed = coord.begin(600_000).await;
    coord.commit(&committed).await;
    d.exec_drop(
        format!(
            "INSERT INTO `{UNDO}`.undo_log VALUES (77, ?, 'rewind/1', 'x', 0, \
             UTC_TIMESTAMP(6) - INTERVAL 1 HOUR, UTC_TIMESTAMP(6) - INTERVAL 1 HOUR)"
        ),
        (committed.as_str(),),
    )
    .await
    .unwrap();

    assert!(records().await.contains(&(marked.clone(), 1)));
    eventually(
        "the marker and the committed record are deleted",
        Duration::from_secs(20),
        || async {
            let r = records().await;
            !r.iter().any(|(x, _)| *x == marked || *x == committed)
        },
    )
    .await;
    // Several more sweeps: the records of unfinished transactions stay.
    let sweeps = proxy.process.log_count("undo housekeeping");
    eventually("two more sweeps", Duration::from_secs(15), || async {
        proxy.process.log_count("undo housekeeping") >= sweeps + 2
    })
    .await;
    let r = records().await;
    assert!(r.contains(&(open.clone(), 0)), "{r:?}");
    assert!(r.contains(&(stalled.clone(), 0)), "{r:?}");

    // Once they finish, their records go by phase two as usual.
    coord.commit(&open).await;
    let conflict = coord
        .conflicts()
        .await
        .into_iter()
        .find(|c| c["xid"] == stalled.as_str())
        .unwrap();
    coord
        .resolve(conflict["id"].as_u64().unwrap(), "keep_current")
        .await;
    coord
        .wait_status(&stalled, "rolled_back", Duration::from_secs(10))
        .await;
    eventually("no record left", Duration::from_secs(10), || async {
        records().await.is_empty()
    })
    .await;
}
