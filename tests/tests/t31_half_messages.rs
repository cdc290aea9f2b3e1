//! Half messages through real proxies, MariaDB and RabbitMQ: a message prepared at the
//! coordinator, tagged with MSG on a statement of the producer's local transaction, is
//! confirmed by that transaction's COMMIT and cancelled by its ROLLBACK; decisions are
//! write-once; check-back finds out in the producer's database when the proxy died after
//! the COMMIT (delivered) or in the middle of the transaction (cancelled, never sent), and
//! leaves a transaction still running `undecided` until it ends; a consumer's BARRIER with
//! the message id marks it consumed; a message branch of a global transaction with AT
//! branches is sent with the commit and dropped with the rollback.

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use rewind_test_support::*;
use serde_json::json;

/// A coordinator whose message service publishes to RabbitMQ and checks back quickly.
async fn coordinator(dir: &TempDir, check_after_ms: u64, max_checks: u32) -> Coordinator {
    let config = dir.0.join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "[messages]\nbroker = \"{}\"\ncheck_after_ms = {check_after_ms}\nmax_checks = \
             {max_checks}\ncheck_backoff_cap_ms = {}\n",
            amqp_url(),
            check_after_ms.max(1000)
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    Coordinator::start(dir, &["--config", &config]).await
}

async fn setup(db: &str) {
    fresh_db(db).await;
    direct_exec(
        db,
        "CREATE TABLE orders (id INT PRIMARY KEY, item VARCHAR(32) NOT NULL)",
    )
    .await;
    direct_exec(
        db,
        "CREATE TABLE stock (id INT PRIMARY KEY, n INT NOT NULL)",
    )
    .await;
    direct_exec(db, "INSERT INTO stock VALUES (1, 100)").await;
}

/// Prepares a message on `topic`; its id.
async fn prepare(coord: &Coordinator, topic: &str, payload: &str) -> String {
    let (code, body) = coord
        .http(
            "POST",
            "/api/v1/messages",
            Some(
                json!({"topic": topic, "payload": payload, "key": "k1"})
                    .to_string()
                    .as_bytes(),
            ),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "prepared");
    body["message_id"].as_str().unwrap().to_string()
}

async fn message(coord: &Coordinator, id: &str) -> serde_json::Value {
    coord.get(&format!("/api/v1/messages/{id}")).await
}

async fn status(coord: &Coordinator, id: &str) -> String {
    message(coord, id).await["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn wait_message(coord: &Coordinator, id: &str, want: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let m = message(coord, id).await;
        if m["status"] == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "message {id} not {want} within {within:?}: {m:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ids of the messages the queue holds now (waits for a quiet second).
async fn delivered(q: &mut AmqpQueue) -> Vec<String> {
    let mut out = Vec::new();
    for d in q.drain(Duration::from_secs(1)).await {
        d.ack().await;
        out.push(d.message_id.clone());
    }
    out
}

async fn count(c: &mut Conn, sql: &str) -> i64 {
    c.query_first::<i64, _>(sql).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t31_commit_confirms_rollback_cancels_decisions_write_once() {
    let dir = TempDir::new("half-msg");
    let coord = coordinator(&dir, 30_000, 10).await;
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &[]).await;
    let db = "rwt_half_msg";
    setup(db).await;
    let topic = format!("{db}.{}", std::process::id());
    let mut q = AmqpQueue::bind(&[&topic]).await;
    let mut c = proxy.conn(db).await;

    // COMMIT through the proxy confirms the message; it is published with its id.
    let a = prepare(&coord, &topic, r#"{"order":1}"#).await;
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop(format!(
        "/*+ MSG('{a}') */ INSERT INTO orders VALUES (1, 'book')"
    ))
    .await
    .unwrap();
    c.query_drop("UPDATE stock SET n = n - 1 WHERE id = 1")
        .await
        .unwrap();
    c.query_drop("COMMIT").await.unwrap();
    wait_message(&coord, &a, "sent", Duration::from_secs(10)).await;
    let got = q
        .next(Duration::from_secs(5))
        .await
        .expect("message a delivered");
    assert_eq!(got.message_id, a);
    assert_eq!(got.text(), r#"{"order":1}"#);
    assert_eq!(
        got.headers.get("rewind-msg-key").map(String::as_str),
        Some("k1")
    );
    got.ack().await;
    let rec = message(&coord, &a).await;
    assert!(rec["resource_id"].as_str().is_some(), "{rec}");
    let events: Vec<&str> = rec["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["prepared", "bound", "confirmed", "sent"], "{rec}");
    let mut d = direct(db).await;
    assert_eq!(
        count(
            &mut d,
            &format!("SELECT COUNT(*) FROM rewind.msg_check WHERE message_id = '{a}'")
        )
        .await,
        1,
        "the check row committed with the transaction"
    );

    // Decisions are write-once: the same again 200, the opposite 409.
    let (code, body) = coord
        .http("POST", &format!("/api/v1/messages/{a}/commit"), None)
        .await;
    assert_eq!(
        (code, body["status"].as_str()),
        (200, Some("sent")),
        "{body}"
    );
    let (code, body) = coord
        .http("POST", &format!("/api/v1/messages/{a}/rollback"), None)
        .await;
    assert_eq!(code, 409, "{body}");
    // A decided message refuses a later MSG tag: 1397, nothing applied.
    let r = c
        .query_drop(format!(
            "/*+ MSG('{a}') */ INSERT INTO orders VALUES (9, 'again')"
        ))
        .await;
    let (code, _, text) = server_error(r).unwrap();
    assert_eq!(code, 1397, "{text}");
    assert_eq!(
        count(&mut d, "SELECT COUNT(*) FROM orders WHERE id = 9").await,
        0
    );

    // ROLLBACK cancels: never published, nothing applied.
    let b = prepare(&coord, &topic, "b").await;
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop(format!(
        "/*+ MSG('{b}') */ INSERT INTO orders VALUES (2, 'pen')"
    ))
    .await
    .unwrap();
    c.query_drop("ROLLBACK").await.unwrap();
    wait_message(&coord, &b, "cancelled", Duration::from_secs(10)).await;
    assert_eq!(
        count(&mut d, "SELECT COUNT(*) FROM orders WHERE id = 2").await,
        0
    );
    let (code, _) = coord
        .http("POST", &format!("/api/v1/messages/{b}/rollback"), None)
        .await;
    assert_eq!(code, 200);
    let (code, _) = coord
        .http("POST", &format!("/api/v1/messages/{b}/commit"), None)
        .await;
    assert_eq!(code, 409);

    // Autocommit: the statement and the check row commit together, the message follows.
    let e = prepare(&coord, &topic, "e").await;
    c.query_drop(format!(
        "/*+ MSG('{e}') */ INSERT INTO orders VALUES (3, 'ink')"
    ))
    .await
    .unwrap();
    wait_message(&coord, &e, "sent", Duration::from_secs(10)).await;
    assert_eq!(delivered(&mut q).await, vec![e.clone()], "b never sent");

    // An unknown message id: 1397, nothing applied.
    let r = c
        .query_drop("/*+ MSG('msg-unknown') */ INSERT INTO orders VALUES (4, 'x')")
        .await;
    assert_eq!(server_error(r).unwrap().0, 1397);
    assert_eq!(
        count(&mut d, "SELECT COUNT(*) FROM orders WHERE id = 4").await,
        0
    );

    // A consumer's barrier with the message id, through a proxy: consumed.
    let mut consumer = proxy.conn(db).await;
    consumer.query_drop("BEGIN").await.unwrap();
    consumer
        .query_drop(format!(
            "/*+ BARRIER('billing', '{a}') */ UPDATE stock SET n = n + 0 WHERE id = 1"
        ))
        .await
        .unwrap();
    consumer.query_drop("COMMIT").await.unwrap();
    wait_message(&coord, &a, "consumed", Duration::from_secs(10)).await;
    assert_eq!(message(&coord, &a).await["consumers"], json!(["billing"]));
    // The list filters by status.
    let consumed = coord.get("/api/v1/messages?status=consumed").await;
    assert!(consumed
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["message_id"] == a.as_str()));
    let cancelled = coord.get("/api/v1/messages?status=cancelled").await;
    assert!(cancelled
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["status"] == "cancelled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t31_producer_killed_after_commit_is_delivered_by_check_back() {
    let dir = TempDir::new("half-msg-kill-commit");
    let coord = coordinator(&dir, 2_000, 10).await;
    let mut producer = Proxy::start_with(
        &dir,
        "producer",
        &coord.grpc_url(),
        &[],
        "msg-before-decide=abort",
    )
    .await;
    // Another proxy of the same database: check-back's way in.
    let _other = Proxy::start(&dir, "other", &coord.grpc_url(), &[]).await;
    let db = "rwt_half_msg_kc";
    setup(db).await;
    let topic = format!("{db}.{}", std::process::id());
    let mut q = AmqpQueue::bind(&[&topic]).await;
    let id = prepare(&coord, &topic, "paid").await;
    let mut c = producer.conn(db).await;
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop(format!(
        "/*+ MSG('{id}') */ INSERT INTO orders VALUES (1, 'book')"
    ))
    .await
    .unwrap();
    // The proxy dies right after relaying the COMMIT's OK, before it tells anyone.
    let _ = c.query_drop("COMMIT").await;
    let died = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !producer.process.exited() {
        assert!(
            Instant::now() < deadline,
            "the producer's proxy did not die"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut d = direct(db).await;
    assert_eq!(
        count(&mut d, "SELECT COUNT(*) FROM orders WHERE id = 1").await,
        1,
        "the local transaction committed"
    );
    assert_eq!(
        status(&coord, &id).await,
        "prepared",
        "nobody told the coordinator"
    );
    wait_message(&coord, &id, "sent", Duration::from_secs(10)).await;
    let took = died.elapsed();
    assert!(
        took <= Duration::from_secs(10),
        "delivered {took:?} after the crash"
    );
    assert_eq!(delivered(&mut q).await, vec![id.clone()]);
    let rec = message(&coord, &id).await;
    let confirmed = rec["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["event"] == "confirmed")
        .cloned()
        .unwrap();
    assert!(
        confirmed["detail"].as_str().unwrap().contains("check-back"),
        "{rec}"
    );
    producer.restart().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t31_producer_killed_mid_transaction_is_cancelled_and_running_one_waits() {
    let dir = TempDir::new("half-msg-kill-mid");
    let coord = coordinator(&dir, 1_000, 2).await;
    let mut producer = Proxy::start(&dir, "producer", &coord.grpc_url(), &[]).await;
    let other = Proxy::start(&dir, "other", &coord.grpc_url(), &[]).await;
    let db = "rwt_half_msg_km";
    setup(db).await;
    let topic = format!("{db}.{}", std::process::id());
    let mut q = AmqpQueue::bind(&[&topic]).await;

    // Killed with the transaction open: the backend rolls it back, check-back cancels.
    let dead = prepare(&coord, &topic, "never").await;
    let mut c = producer.conn(db).await;
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop(format!(
        "/*+ MSG('{dead}') */ INSERT INTO orders VALUES (1, 'book')"
    ))
    .await
    .unwrap();
    producer.kill();
    wait_message(&coord, &dead, "cancelled", Duration::from_secs(15)).await;
    let mut d = direct(db).await;
    assert_eq!(count(&mut d, "SELECT COUNT(*) FROM orders").await, 0);
    // The probe's row now holds the key: the id can never commit afterwards.
    let mut o = other.conn(db).await;
    let r = o
        .query_drop(format!(
            "/*+ MSG('{dead}') */ INSERT INTO orders VALUES (2, 'late')"
        ))
        .await;
    assert_eq!(server_error(r).unwrap().0, 1397);

    // Still running: checked, found running, undecided after max_checks; the producer's
    // own COMMIT still decides it.
    let slow = prepare(&coord, &topic, "slow").await;
    o.query_drop("BEGIN").await.unwrap();
    o.query_drop(format!(
        "/*+ MSG('{slow}') */ INSERT INTO orders VALUES (3, 'slow')"
    ))
    .await
    .unwrap();
    wait_message(&coord, &slow, "undecided", Duration::from_secs(20)).await;
    let undecided = coord.get("/api/v1/messages?status=undecided").await;
    assert!(undecided
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["message_id"] == slow.as_str()));
    let rec = message(&coord, &slow).await;
    assert!(rec["checks"].as_u64().unwrap() >= 2, "{rec}");
    o.query_drop("COMMIT").await.unwrap();
    wait_message(&coord, &slow, "sent", Duration::from_secs(10)).await;
    assert_eq!(
        delivered(&mut q).await,
        vec![slow.clone()],
        "the cancelled one never"
    );
    producer.restart().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t31_message_branch_follows_the_global_transaction() {
    let dir = TempDir::new("half-msg-branch");
    let coord = coordinator(&dir, 30_000, 10).await;
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &[]).await;
    let db = "rwt_half_msg_br";
    setup(db).await;
    let topic = format!("{db}.{}", std::process::id());
    let mut q = AmqpQueue::bind(&[&topic]).await;
    let mut c = proxy.conn(db).await;
    let before = checksums(db, &["orders", "stock"]).await;
    for commit in [false, true] {
        let xid = coord.begin(30_000).await;
        c.query_drop("BEGIN").await.unwrap();
        c.query_drop(format!(
            "/*+ XID('{xid}') */ UPDATE stock SET n = n - 5 WHERE id = 1"
        ))
        .await
        .unwrap();
        c.query_drop("COMMIT").await.unwrap();
        let (code, m) = coord
            .http(
                "POST",
                &format!("/api/v1/transactions/{xid}/messages"),
                Some(
                    json!({"topic": topic, "payload": format!("{commit}")})
                        .to_string()
                        .as_bytes(),
                ),
            )
            .await;
        assert_eq!(code, 200, "{m}");
        let id = m["message_id"].as_str().unwrap().to_string();
        assert_eq!(m["xid"], xid.as_str());
        let tx = coord.transaction(&xid).await;
        let types: Vec<&str> = tx["branches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["at", "message"], "{tx}");
        // The application cannot decide a branch's message itself.
        let (code, _) = coord
            .http("POST", &format!("/api/v1/messages/{id}/commit"), None)
            .await;
        assert_eq!(code, 409);
        if commit {
            coord.commit(&xid).await;
            wait_message(&coord, &id, "sent", Duration::from_secs(10)).await;
            coord
                .wait_status(&xid, "committed", Duration::from_secs(10))
                .await;
            assert_eq!(delivered(&mut q).await, vec![id]);
            let mut d = direct(db).await;
            assert_eq!(count(&mut d, "SELECT n FROM stock WHERE id = 1").await, 95);
        } else {
            coord.rollback(&xid).await;
            coord
                .wait_status(&xid, "rolled_back", Duration::from_secs(10))
                .await;
            assert_eq!(status(&coord, &id).await, "cancelled");
            assert_eq!(checksums(db, &["orders", "stock"]).await, before, "undone");
            assert!(
                delivered(&mut q).await.is_empty(),
                "dropped with the rollback"
            );
        }
    }
}
