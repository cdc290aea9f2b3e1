//! The idempotent-consumer barrier through a real proxy and MariaDB: a message processed
//! once is refused the second time with 1062 and nothing of the duplicate is applied (text
//! and binary protocol, explicit transactions and autocommit); a consumer fed every
//! message twice, concurrently, applies each exactly once; concurrent duplicates under
//! REPEATABLE READ never surface a deadlock, whether the first attempt commits or rolls
//! back; a rolled-back attempt leaves no trace; expired pairs are forgotten.

use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use rewind_test_support::*;

const SETUP: &[&str] = &[
    "CREATE TABLE ledger (id INT AUTO_INCREMENT PRIMARY KEY, msg VARCHAR(64) NOT NULL, amount INT NOT NULL)",
    "CREATE TABLE total (id INT PRIMARY KEY, n INT NOT NULL)",
    "INSERT INTO total VALUES (1, 0)",
];

/// A fresh database, and no barrier rows of this test's consumers (named after it) left
/// from an earlier run.
async fn setup(db: &str) {
    setup_in(db, "rewind").await;
}

/// [`setup`] for a proxy whose undo schema is `schema`.
async fn setup_in(db: &str, schema: &str) {
    fresh_db(db).await;
    for s in SETUP {
        direct_exec(db, s).await;
    }
    delete_shared_rows(
        db,
        &format!("DELETE FROM {schema}.barrier WHERE consumer = '{db}' OR consumer LIKE '{db}-%'"),
    )
    .await;
}

async fn one(c: &mut Conn, sql: &str) -> i64 {
    c.query_first::<i64, _>(sql).await.unwrap().unwrap()
}

/// One delivery of message `msg` to the consumer named like the database: BEGIN; the
/// barrier on the first statement; a ledger row and the running total; COMMIT. `Ok` when
/// applied, `Err(code)` when the proxy or server refused it.
async fn deliver(c: &mut Conn, consumer: &str, msg: &str, prepared: bool) -> Result<(), u16> {
    let code = |e: mysql_async::Error| match e {
        mysql_async::Error::Server(s) => s.code,
        other => panic!("{other}"),
    };
    c.query_drop("BEGIN").await.map_err(code)?;
    let first = if prepared {
        // The hint is a comment: its arguments are literals, the statement's own values
        // can be parameters.
        c.exec_drop(
            format!(
                "/*+ BARRIER('{consumer}', '{msg}') */ INSERT INTO ledger (msg, amount) VALUES (?, 5)"
            ),
            (msg,),
        )
        .await
        .err()
    } else {
        c.query_drop(format!(
            "/*+ BARRIER('{consumer}', '{msg}') */ INSERT INTO ledger (msg, amount) VALUES ('{msg}', 5)"
        ))
        .await
        .err()
    };
    if let Some(e) = first {
        let code = code(e);
        let _ = c.query_drop("ROLLBACK").await;
        return Err(code);
    }
    c.query_drop("UPDATE total SET n = n + 5 WHERE id = 1")
        .await
        .map_err(code)?;
    c.query_drop("COMMIT").await.map_err(code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t25_duplicates_are_refused_and_apply_nothing() {
    let dir = TempDir::new("barrier");
    let coord = Coordinator::start(&dir, &[]).await;
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &[]).await;
    let db = "rwt_barrier_dup";
    setup(db).await;
    let mut c = proxy.conn(db).await;
    for (msg, prepared) in [("m-text", false), ("m-prepared", true)] {
        assert_eq!(deliver(&mut c, db, msg, prepared).await, Ok(()), "{msg}");
        let before = checksums(db, &["ledger", "total"]).await;
        // The duplicate: the first statement is refused with 1062, nothing applied, and
        // the local transaction is over.
        c.query_drop("BEGIN").await.unwrap();
        let sql = format!(
            "/*+ BARRIER('{db}', '{msg}') */ INSERT INTO ledger (msg, amount) VALUES ('dup', 5)"
        );
        let r = if prepared {
            c.exec_drop(sql, ()).await
        } else {
            c.query_drop(sql).await
        };
        let (code, state, text) = server_error(r).unwrap();
        assert_eq!((code, state.as_str()), (1062, "23000"), "{msg}: {text}");
        assert!(text.starts_with("Duplicate message"), "{msg}: {text}");
        assert_eq!(one(&mut c, "SELECT @@in_transaction").await, 0, "{msg}");
        assert_eq!(checksums(db, &["ledger", "total"]).await, before, "{msg}");
        // The barrier row is durable in the backend.
        let mut d = direct(db).await;
        let n: Option<i64> = d
            .exec_first(
                "SELECT COUNT(*) FROM rewind.barrier WHERE consumer = ? AND message_id = ?",
                (db, msg),
            )
            .await
            .unwrap();
        assert_eq!(n, Some(1), "{msg}");
    }
    // A consumer in autocommit: the statement and its barrier commit together.
    let auto =
        format!("/*+ BARRIER('{db}-audit', 'm-auto') */ UPDATE total SET n = n + 100 WHERE id = 1");
    c.query_drop(&auto).await.unwrap();
    assert_eq!(c.affected_rows(), 1);
    assert_eq!(one(&mut c, "SELECT @@in_transaction").await, 0);
    let (code, _, _) = server_error(c.query_drop(&auto).await).unwrap();
    assert_eq!(code, 1062);
    assert_eq!(one(&mut c, "SELECT n FROM total").await, 110);
    // A delivery rolled back by the consumer leaves no trace: the redelivery is applied.
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop(format!(
        "/*+ BARRIER('{db}', 'm-undone') */ UPDATE total SET n = n + 1"
    ))
    .await
    .unwrap();
    c.query_drop("ROLLBACK").await.unwrap();
    assert_eq!(deliver(&mut c, db, "m-undone", false).await, Ok(()));
    assert_eq!(one(&mut c, "SELECT n FROM total").await, 115);
    // The same message id for another consumer is another message.
    c.query_drop(format!(
        "/*+ BARRIER('{db}-reports', 'm-text') */ UPDATE total SET n = n + 1"
    ))
    .await
    .unwrap();
    // A query behind a barrier inside the client's transaction streams its rows (the
    // proxy sends the barrier insert and the query in one round trip), and a statement
    // that fails behind a fresh barrier reports its own error and keeps the barrier row
    // in the transaction, for the client's ROLLBACK to remove.
    c.query_drop("BEGIN").await.unwrap();
    let n: Vec<i64> = c
        .query(format!(
            "/*+ BARRIER('{db}-reader', 'm-select') */ SELECT n FROM total"
        ))
        .await
        .unwrap();
    assert_eq!(n, vec![116]);
    c.query_drop("COMMIT").await.unwrap();
    c.query_drop("BEGIN").await.unwrap();
    let (code, _, _) = server_error(
        c.query(format!(
            "/*+ BARRIER('{db}-reader', 'm-select') */ SELECT n FROM total"
        ))
        .await
        .map(|_: Vec<i64>| ()),
    )
    .unwrap();
    assert_eq!(code, 1062);
    c.query_drop("BEGIN").await.unwrap();
    let (code, _, _) = server_error(
        c.query_drop(format!(
            "/*+ BARRIER('{db}-reader', 'm-bad') */ UPDATE no_such_table SET n = 1"
        ))
        .await,
    )
    .unwrap();
    assert_eq!(code, 1146);
    assert_eq!(one(&mut c, "SELECT @@in_transaction").await, 1);
    c.query_drop("ROLLBACK").await.unwrap();
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop(format!(
        "/*+ BARRIER('{db}-reader', 'm-bad') */ UPDATE total SET n = n"
    ))
    .await
    .unwrap();
    c.query_drop("COMMIT").await.unwrap();
    // Malformed hints and a barrier inside a global transaction are refused.
    let (code, _, _) = server_error(
        c.query_drop("/*+ BARRIER('only-one') */ UPDATE total SET n = 0")
            .await,
    )
    .unwrap();
    assert_eq!(code, 1210);
    let xid = coord.begin(60_000).await;
    let (code, _, msg) = server_error(
        c.query_drop(format!(
            "/*+ XID('{xid}') BARRIER('{db}', 'm-at') */ UPDATE total SET n = 0"
        ))
        .await,
    )
    .unwrap();
    assert_eq!(code, 1235, "{msg}");
    assert_eq!(one(&mut c, "SELECT n FROM total").await, 116);
}

/// Every message delivered twice, the copies racing each other on different connections:
/// each applied exactly once, every duplicate answered 1062, no other error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t25_every_message_twice_is_applied_once() {
    let dir = TempDir::new("barrier-twice");
    let coord = Coordinator::start(&dir, &[]).await;
    let proxy = Arc::new(Proxy::start(&dir, "proxy", &coord.grpc_url(), &[]).await);
    let db = "rwt_barrier_twice";
    setup(db).await;
    const MESSAGES: usize = 200;
    const CONSUMERS: usize = 8;
    let mut tasks = Vec::new();
    for w in 0..CONSUMERS {
        let proxy = proxy.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = proxy.conn(db).await;
            let (mut applied, mut duplicates) = (0, 0);
            // Consumers w and w + CONSUMERS/2 get the same messages, in opposite order.
            let share: Vec<usize> = (0..MESSAGES)
                .filter(|m| m % (CONSUMERS / 2) == w % (CONSUMERS / 2))
                .collect();
            let order: Vec<usize> = if w < CONSUMERS / 2 {
                share
            } else {
                share.into_iter().rev().collect()
            };
            for m in order {
                match deliver(&mut c, db, &format!("msg-{m}"), m % 2 == 0).await {
                    Ok(()) => applied += 1,
                    Err(1062) => duplicates += 1,
                    Err(code) => panic!("msg-{m}: error {code}"),
                }
            }
            (applied, duplicates)
        }));
    }
    let (mut applied, mut duplicates) = (0, 0);
    for t in tasks {
        let (a, d) = t.await.unwrap();
        applied += a;
        duplicates += d;
    }
    assert_eq!((applied, duplicates), (MESSAGES, MESSAGES));
    let mut d = direct(db).await;
    assert_eq!(
        one(&mut d, "SELECT n FROM total").await,
        5 * MESSAGES as i64
    );
    assert_eq!(
        one(&mut d, "SELECT COUNT(DISTINCT msg) FROM ledger").await,
        MESSAGES as i64
    );
    assert_eq!(
        one(&mut d, "SELECT COUNT(*) FROM ledger").await,
        MESSAGES as i64
    );
}

/// 16 deliveries of one message arrive while a first attempt holds its barrier row, under
/// REPEATABLE READ. When the first commits, all 16 get 1062; when it rolls back, exactly
/// one of them is applied and the others get 1062. Never a deadlock or a lock timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t25_concurrent_duplicates_never_deadlock() {
    let dir = TempDir::new("barrier-race");
    let coord = Coordinator::start(&dir, &[]).await;
    let proxy = Arc::new(Proxy::start(&dir, "proxy", &coord.grpc_url(), &[]).await);
    let db = "rwt_barrier_race";
    setup(db).await;
    for (round, first_commits) in [(0, true), (1, false), (2, false), (3, true)] {
        let msg = format!("race-{round}");
        let mut first = proxy.conn(db).await;
        first
            .query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .await
            .unwrap();
        first.query_drop("BEGIN").await.unwrap();
        first
            .query_drop(format!(
                "/*+ BARRIER('{db}', '{msg}') */ INSERT INTO ledger (msg, amount) VALUES ('{msg}', 1)"
            ))
            .await
            .unwrap();
        let mut waiters = Vec::new();
        for _ in 0..16 {
            let (proxy, msg) = (proxy.clone(), msg.clone());
            waiters.push(tokio::spawn(async move {
                let mut c = proxy.conn(db).await;
                c.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    .await
                    .unwrap();
                deliver(&mut c, db, &msg, false).await
            }));
        }
        // Let every waiter queue up behind the first attempt's row lock (their barrier
        // inserts are running and cannot finish before it).
        eventually("16 deliveries wait", Duration::from_secs(20), || async {
            let waiting: Option<i64> = direct(db)
                .await
                .query_first(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                     WHERE INFO LIKE 'INSERT INTO `rewind`.`barrier`%'",
                )
                .await
                .unwrap();
            waiting >= Some(16)
        })
        .await;
        let mut d = direct(db).await;
        first
            .query_drop(if first_commits { "COMMIT" } else { "ROLLBACK" })
            .await
            .unwrap();
        let mut results = Vec::new();
        for w in waiters {
            results.push(w.await.unwrap());
        }
        let applied = results.iter().filter(|r| r.is_ok()).count();
        let duplicates = results.iter().filter(|r| **r == Err(1062)).count();
        assert_eq!(
            (applied, duplicates),
            if first_commits { (0, 16) } else { (1, 15) },
            "round {round}: {results:?}"
        );
        let rows: Option<i64> = d
            .exec_first("SELECT COUNT(*) FROM ledger WHERE msg = ?", (msg.as_str(),))
            .await
            .unwrap();
        assert_eq!(rows, Some(1), "round {round}: applied exactly once");
    }
}

/// A pair is remembered `barrier_retention_secs`; afterwards the message is new again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t25_expired_pairs_are_forgotten() {
    let dir = TempDir::new("barrier-expiry");
    let cfg = dir.0.join("proxy.toml");
    std::fs::write(
        &cfg,
        "barrier_retention_secs = 1\nundo_housekeeping_secs = 1\n",
    )
    .unwrap();
    let coord = Coordinator::start(&dir, &[]).await;
    let proxy = Proxy::start(
        &dir,
        "proxy",
        &coord.grpc_url(),
        // Its own undo schema: this proxy's housekeeping expires every pair in its
        // barrier table, which other tests' proxies share in `rewind`.
        &[
            "--config",
            &cfg.display().to_string(),
            "--undo-schema",
            "rewind_expiry",
        ],
    )
    .await;
    let db = "rwt_barrier_expiry";
    setup_in(db, "rewind_expiry").await;
    let mut c = proxy.conn(db).await;
    let sql = format!("/*+ BARRIER('{db}', 'm-1') */ UPDATE total SET n = n + 1 WHERE id = 1");
    c.query_drop(&sql).await.unwrap();
    let (code, _, _) = server_error(c.query_drop(&sql).await).unwrap();
    assert_eq!(code, 1062);
    eventually("the pair expires", Duration::from_secs(20), || async {
        let n: Option<i64> = direct(db)
            .await
            .exec_first(
                "SELECT COUNT(*) FROM rewind_expiry.barrier WHERE consumer = ?",
                (db,),
            )
            .await
            .unwrap();
        n == Some(0)
    })
    .await;
    c.query_drop(&sql).await.unwrap();
    assert_eq!(one(&mut c, "SELECT n FROM total").await, 2);
}
