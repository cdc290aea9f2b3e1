//! Half messages on a three-node coordinator cluster while the leader is killed -9 and
//! restarted, three times: during prepares, during producers' decisions, and during
//! delivery. Producers run through a proxy given all three coordinators, each message in
//! its own local transaction, committed or rolled back at random. Afterwards, for every
//! message: its row in the producer's table exists exactly when the message was sent
//! (or consumed) and is missing exactly when it was cancelled; the broker holds exactly
//! the committed ones (duplicates allowed: at least once), never a cancelled one; and no
//! message's history shows both decisions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use rand::Rng;
use rewind_test_support::*;
use serde_json::json;

const PRODUCERS: usize = 4;
const MESSAGES_PER_PRODUCER: usize = 15;

/// One producer's message: prepare (retried with its own id: idempotent), the MSG-tagged
/// insert in a local transaction through the proxy, COMMIT or ROLLBACK. Whatever fails on
/// the way is rolled back; check-back settles what the proxy could not report.
async fn produce(
    cluster: &CoordinatorCluster,
    conn: &mut mysql_async::Conn,
    topic: &str,
    id: &str,
    n: i64,
    commit: bool,
) {
    let body = json!({"topic": topic, "payload": format!("order {n}"), "message_id": id});
    let m = cluster.call("POST", "/api/v1/messages", Some(&body)).await;
    assert_eq!(m["message_id"], id, "{m}");
    if conn.query_drop("BEGIN").await.is_err() {
        return;
    }
    let tagged = format!("/*+ MSG('{id}') */ INSERT INTO orders VALUES ({n}, '{id}')");
    if conn.query_drop(tagged).await.is_err() {
        let _ = conn.query_drop("ROLLBACK").await;
        return;
    }
    let end = if commit { "COMMIT" } else { "ROLLBACK" };
    let _ = conn.query_drop(end).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t91_half_messages_survive_leader_kills() {
    let dir = TempDir::new("cluster-msg");
    let config = format!(
        "tick_ms = 50\nphase_two_backoff_base_ms = 20\n[messages]\nbroker = \"{}\"\n\
         check_after_ms = 1500\nmax_checks = 50\ncheck_backoff_cap_ms = 2000\n",
        amqp_url()
    );
    let (cluster, urls) = CoordinatorCluster::start(&dir, &config).await;
    let proxy = Proxy::start(&dir, "proxy", &urls, &["--resource-id", "cmsg"]).await;
    let db = "rwt_cluster_msg";
    fresh_db(db).await;
    direct_exec(
        db,
        "CREATE TABLE orders (id INT PRIMARY KEY, message_id VARCHAR(64) NOT NULL)",
    )
    .await;
    let topic = format!("{db}.{}", std::process::id());
    let mut q = AmqpQueue::bind(&[&topic]).await;
    let run = format!("t91-{}-{}", std::process::id(), rand::random::<u32>());

    let opts = proxy.opts(db);
    let mut workers = Vec::new();
    for w in 0..PRODUCERS {
        let (cluster, opts, topic, run) =
            (cluster.clone(), opts.clone(), topic.clone(), run.clone());
        workers.push(tokio::spawn(async move {
            let mut conn = mysql_async::Conn::new(opts.clone()).await.unwrap();
            let mut ids = Vec::new();
            for i in 0..MESSAGES_PER_PRODUCER {
                let n = (w * 1000 + i) as i64;
                let id = format!("{run}-{n}");
                let commit = rand::rng().random_bool(0.6);
                produce(&cluster, &mut conn, &topic, &id, n, commit).await;
                ids.push((id, n));
                if conn.ping().await.is_err() {
                    conn = mysql_async::Conn::new(opts.clone()).await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            ids
        }));
    }

    // Kill the leader three times while the producers run and deliveries go out.
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(if round == 0 { 300 } else { 900 })).await;
        let (l, _) = cluster.leader(Duration::from_secs(30)).await;
        cluster.kill(l);
        let (nl, _) = cluster.leader(Duration::from_secs(30)).await;
        assert_ne!(l, nl);
        cluster.restart(&dir, l).await;
    }
    let mut ids: Vec<(String, i64)> = Vec::new();
    for w in workers {
        ids.extend(w.await.unwrap());
    }
    assert_eq!(ids.len(), PRODUCERS * MESSAGES_PER_PRODUCER);

    // Every message ends decided, as its local transaction did.
    let mut d = direct(db).await;
    let rows: BTreeSet<String> = d
        .query::<String, _>("SELECT message_id FROM orders")
        .await
        .unwrap()
        .into_iter()
        .collect();
    let start = Instant::now();
    let mut outcome: BTreeMap<String, String> = BTreeMap::new();
    for (id, _) in &ids {
        loop {
            let m = cluster
                .call("GET", &format!("/api/v1/messages/{id}"), None)
                .await;
            let st = m["status"].as_str().unwrap_or_default().to_string();
            if matches!(st.as_str(), "sent" | "consumed" | "cancelled") {
                let events: Vec<&str> = m["history"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|h| h["event"].as_str().unwrap())
                    .collect();
                assert!(
                    !(events.contains(&"confirmed") && events.contains(&"cancelled")),
                    "a decision flipped: {m:#}"
                );
                outcome.insert(id.clone(), st);
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "message {id} still {st}: {m:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let sent: BTreeSet<String> = outcome
        .iter()
        .filter(|(_, s)| s.as_str() != "cancelled")
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(
        sent, rows,
        "sent exactly when the producer's local transaction committed"
    );
    // The broker: every committed message, never a cancelled one.
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got != sent && Instant::now() < deadline {
        for m in q.drain(Duration::from_secs(1)).await {
            m.ack().await;
            assert!(
                sent.contains(&m.message_id),
                "a message that was not committed reached the broker: {}",
                m.message_id
            );
            got.insert(m.message_id.clone());
        }
    }
    assert_eq!(got, sent, "every committed message reached the broker");
    assert!(
        !sent.is_empty() && sent.len() < ids.len(),
        "the run committed some and rolled back some ({} of {})",
        sent.len(),
        ids.len()
    );
    // Decisions stay what they were: the same again 200, the opposite 409, at the new
    // leader.
    let (one, _) = ids.iter().find(|(id, _)| sent.contains(id)).unwrap();
    let (code, _) = cluster
        .try_call("POST", &format!("/api/v1/messages/{one}/commit"), None)
        .await;
    assert_eq!(code, 200);
    let (code, _) = cluster
        .try_call("POST", &format!("/api/v1/messages/{one}/rollback"), None)
        .await;
    assert_eq!(code, 409);
    let _keep: Arc<CoordinatorCluster> = cluster;
}
