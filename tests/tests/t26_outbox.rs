//! The local message table and its relay, against a real RabbitMQ, NATS JetStream,
//! MariaDB and proxy processes: messages leave when their transaction commits (not at a
//! poll), never when it rolls back, and under an XID only after the global commit; rows
//! written straight to the database are swept; 1,000 messages from 8 producers survive
//! two kill -9s of the proxy and a cut broker connection with per-key order kept; a
//! consumer fed every message twice applies each once; a broker that is down leaves the
//! backlog waiting, not dead; a message the broker refuses goes DEAD and an operator
//! redrives it from the console API; JetStream drops re-sends by message id.
//!
//! Each test has its own undo schema (so its own outbox table and relay) and its own
//! routing keys or stream.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};
use rewind_test_support::*;

struct Rig {
    _dir: TempDir,
    coord: Coordinator,
    proxy: Proxy,
    schema: String,
    db: String,
}

/// A coordinator, a fresh database with an `orders` table, and a proxy whose undo schema
/// (and so outbox) is the test's own, relaying to `broker` with `outbox` settings.
async fn rig(name: &str, broker: &str, outbox: &str) -> Rig {
    rig_with(name, broker, "", outbox).await
}

/// [`rig`] with top-level config keys `top` as well.
async fn rig_with(name: &str, broker: &str, top: &str, outbox: &str) -> Rig {
    let dir = TempDir::new(&format!("outbox-{name}"));
    let coord = Coordinator::start(&dir, &[]).await;
    let schema = format!("rwt_ob_{name}");
    let db = format!("rwt_outbox_{name}");
    direct_exec("test", &format!("DROP DATABASE IF EXISTS {schema}")).await;
    fresh_db(&db).await;
    direct_exec(
        &db,
        "CREATE TABLE orders (id INT PRIMARY KEY, what VARCHAR(64) NOT NULL)",
    )
    .await;
    direct_exec(
        &db,
        "CREATE TABLE ledger (msg VARCHAR(64) PRIMARY KEY, n INT NOT NULL DEFAULT 1)",
    )
    .await;
    let cfg = dir.0.join("proxy.toml");
    std::fs::write(
        &cfg,
        format!("undo_schema = \"{schema}\"\n{top}\n[outbox]\nbroker = \"{broker}\"\n{outbox}\n"),
    )
    .unwrap();
    let cfg = cfg.to_string_lossy().into_owned();
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &["--config", &cfg]).await;
    Rig {
        _dir: dir,
        coord,
        proxy,
        schema,
        db,
    }
}

impl Rig {
    fn insert(&self, topic: &str, key: Option<&str>, payload: &str) -> String {
        let key = key.map_or("NULL".to_string(), |k| format!("'{k}'"));
        format!(
            "INSERT INTO {}.outbox (topic, msg_key, payload) VALUES ('{topic}', {key}, '{payload}')",
            self.schema
        )
    }

    /// (status, attempts, message_id, last_error) of every row, by id.
    async fn rows(&self) -> Vec<(String, u32, String, String)> {
        let mut c = direct(&self.db).await;
        let rows: Vec<Row> = c
            .query(format!(
                "SELECT status, attempts, message_id, IFNULL(last_error, '') FROM {}.outbox \
                 ORDER BY id",
                self.schema
            ))
            .await
            .unwrap();
        c.disconnect().await.unwrap();
        rows.into_iter()
            .map(|mut r| {
                (
                    r.take::<String, _>(0).unwrap(),
                    r.take::<u32, _>(1).unwrap(),
                    r.take::<String, _>(2).unwrap(),
                    r.take::<String, _>(3).unwrap(),
                )
            })
            .collect()
    }

    async fn count(&self, status: &str) -> i64 {
        let mut c = direct(&self.db).await;
        let n: Option<i64> = c
            .exec_first(
                format!(
                    "SELECT COUNT(*) FROM {}.outbox WHERE status = ?",
                    self.schema
                ),
                (status,),
            )
            .await
            .unwrap();
        c.disconnect().await.unwrap();
        n.unwrap()
    }
}

fn amqp_via(relay: &TcpRelay) -> String {
    format!("amqp://guest:guest@{}/%2f", relay.addr())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t26_a_commit_publishes_at_once_a_rollback_never() {
    // No sweep within the test: only the proxy seeing the COMMIT can send in time.
    let rig = rig("kick", &amqp_url(), "sweep_interval_ms = 600000").await;
    let mut q = AmqpQueue::bind(&["t26.kick.#"]).await;
    let mut c = rig.proxy.conn(&rig.db).await;
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop("INSERT INTO orders VALUES (1, 'book')")
        .await
        .unwrap();
    c.query_drop(format!(
        "INSERT INTO {}.outbox (topic, msg_key, payload, headers) VALUES \
         ('t26.kick.order', '1', '{{\"id\":1}}', '{{\"source\":\"shop\",\"n\":2}}')",
        rig.schema
    ))
    .await
    .unwrap();
    c.query_drop("COMMIT").await.unwrap();
    let d = q
        .next(Duration::from_secs(10))
        .await
        .expect("published when the COMMIT passed, not at the next sweep");
    d.ack().await;
    let rows = rig.rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(d.message_id, rows[0].2, "the row's message id");
    assert_eq!(d.routing_key, "t26.kick.order");
    assert_eq!(d.text(), r#"{"id":1}"#);
    assert_eq!(d.headers.get("source").map(String::as_str), Some("shop"));
    assert_eq!(d.headers.get("n").map(String::as_str), Some("2"));
    assert_eq!(
        d.headers.get("rewind-msg-key").map(String::as_str),
        Some("1")
    );
    assert!(d.persistent, "persistent delivery mode");
    // Rolled back: the row never existed for the relay.
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop(rig.insert("t26.kick.rolled-back", None, "x"))
        .await
        .unwrap();
    c.query_drop("ROLLBACK").await.unwrap();
    // Autocommit, binary protocol.
    c.exec_drop(
        format!(
            "INSERT INTO {}.outbox (topic, payload) VALUES (?, ?)",
            rig.schema
        ),
        ("t26.kick.auto", "p2"),
    )
    .await
    .unwrap();
    let d = q.next(Duration::from_secs(10)).await.expect("autocommit");
    d.ack().await;
    assert_eq!(
        (d.routing_key.as_str(), d.text().as_str()),
        ("t26.kick.auto", "p2")
    );
    // Bad rows are refused by the table and nothing is written.
    for bad in [
        format!(
            "INSERT INTO {}.outbox (topic, payload, headers) VALUES ('t26.kick.bad', 'x', '[1]')",
            rig.schema
        ),
        format!(
            "INSERT INTO {}.outbox (topic, payload) VALUES ('', 'x')",
            rig.schema
        ),
        format!(
            "INSERT INTO {}.outbox (topic) VALUES ('t26.kick.bad')",
            rig.schema
        ),
    ] {
        assert!(c.query_drop(&bad).await.is_err(), "{bad}");
    }
    // Marked once the broker confirmed (the consumer may see it a moment before).
    eventually("both marked", Duration::from_secs(5), || async {
        rig.count("PUBLISHED").await == 2
    })
    .await;
    let rows = rig.rows().await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    for r in &rows {
        assert_eq!((r.0.as_str(), r.1), ("PUBLISHED", 1), "{rows:?}");
    }
    assert!(q.next(Duration::from_millis(500)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t26_rows_written_straight_to_the_database_are_swept_in_key_order() {
    let rig = rig_with(
        "sweep",
        &amqp_url(),
        "undo_housekeeping_secs = 1",
        "sweep_interval_ms = 200\nbatch = 7\nretention_secs = 3",
    )
    .await;
    let mut q = AmqpQueue::bind(&["t26.sweep.#"]).await;
    let mut d = direct(&rig.db).await;
    d.query_drop("BEGIN").await.unwrap();
    for i in 0..40 {
        let key = ["a", "b"][i % 2];
        d.query_drop(rig.insert("t26.sweep.ev", Some(key), &format!("{key}{i}")))
            .await
            .unwrap();
    }
    d.query_drop("COMMIT").await.unwrap();
    let mut got = Vec::new();
    while got.len() < 40 {
        let m = q
            .next(Duration::from_secs(10))
            .await
            .expect("swept without a proxy seeing the commit");
        m.ack().await;
        got.push(m.text());
    }
    for key in ["a", "b"] {
        let seq: Vec<usize> = got
            .iter()
            .filter(|t| t.starts_with(key))
            .map(|t| t[1..].parse().unwrap())
            .collect();
        let mut sorted = seq.clone();
        sorted.sort();
        assert_eq!(seq, sorted, "key {key} in insert order");
        assert_eq!(seq.len(), 20);
    }
    eventually("all marked", Duration::from_secs(10), || async {
        rig.count("PUBLISHED").await == 40
    })
    .await;
    // Published rows go after their retention (3 s here); nothing else is touched.
    d.query_drop(format!(
        "INSERT INTO {}.outbox (topic, payload, status) VALUES ('t26.sweep.dead', 'x', 'DEAD')",
        rig.schema
    ))
    .await
    .unwrap();
    eventually("published rows expire", Duration::from_secs(15), || async {
        rig.count("PUBLISHED").await == 0
    })
    .await;
    assert_eq!(rig.count("DEAD").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t26_messages_of_a_global_transaction_leave_only_after_its_commit() {
    let rig = rig("global", &amqp_url(), "sweep_interval_ms = 100").await;
    let mut q = AmqpQueue::bind(&["t26.global.#"]).await;
    let mut c = rig.proxy.conn(&rig.db).await;
    let xid = rig.coord.begin(60_000).await;
    c.query_drop(format!(
        "/*+ XID('{xid}') */ INSERT INTO orders VALUES (1, 'kept')"
    ))
    .await
    .unwrap();
    c.query_drop(format!(
        "/*+ XID('{xid}') */ {}",
        rig.insert("t26.global.commit", Some("k"), "c1")
    ))
    .await
    .unwrap();
    // Locally committed (autocommit), held while the global transaction is open.
    let mut d = direct(&rig.db).await;
    let held: Option<(Option<String>, String)> = d
        .query_first(format!("SELECT xid, status FROM {}.outbox", rig.schema))
        .await
        .unwrap();
    assert_eq!(held, Some((Some(xid.clone()), "NEW".to_string())));
    assert!(
        q.next(Duration::from_millis(1500)).await.is_none(),
        "nothing leaves before the global commit"
    );
    // Inside a global transaction the outbox takes plain inserts only.
    let x2 = rig.coord.begin(60_000).await;
    for refused in [
        format!("UPDATE {}.outbox SET payload = 'y'", rig.schema),
        format!("DELETE FROM {}.outbox", rig.schema),
        format!(
            "INSERT INTO {s}.outbox (topic, payload) SELECT topic, payload FROM {s}.outbox",
            s = rig.schema
        ),
    ] {
        let (code, _, msg) =
            server_error(c.query_drop(format!("/*+ XID('{x2}') */ {refused}")).await).unwrap();
        assert_eq!(code, 1235, "{refused}: {msg}");
    }
    let st = rig.coord.commit(&xid).await;
    assert!(st == "committing" || st == "committed", "{st}");
    let m = q
        .next(Duration::from_secs(10))
        .await
        .expect("published after the global commit");
    m.ack().await;
    assert_eq!(
        (m.routing_key.as_str(), m.text().as_str()),
        ("t26.global.commit", "c1")
    );
    // A global rollback removes the message like any AT insert: it never leaves.
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop(format!(
        "/*+ XID('{x2}') */ {}",
        rig.insert("t26.global.rollback", Some("k"), "r1")
    ))
    .await
    .unwrap();
    c.query_drop("COMMIT").await.unwrap();
    assert_eq!(rig.coord.rollback(&x2).await, "rolled_back");
    d.query_drop(rig.insert("t26.global.after", Some("k"), "a1"))
        .await
        .unwrap();
    let m = q.next(Duration::from_secs(10)).await.expect("the marker");
    m.ack().await;
    assert_eq!(
        m.routing_key, "t26.global.after",
        "the rolled-back message never leaves"
    );
    let rows = rig.rows().await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(q.next(Duration::from_millis(500)).await.is_none());
}

/// One producer's outcome per transaction.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Sent {
    Committed,
    RolledBack,
    /// The proxy died around the COMMIT: the database says.
    Unknown,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t26_a_thousand_messages_survive_two_kills_and_a_cut_broker() {
    const PRODUCERS: usize = 8;
    const EACH: usize = 125;
    let broker = TcpRelay::start(amqp_addr()).await;
    let mut rig = rig(
        "load",
        &amqp_via(&broker),
        "sweep_interval_ms = 200\nbatch = 50\npublish_timeout_ms = 2000",
    )
    .await;
    let q = AmqpQueue::bind(&["t26.load.#"]).await;
    // The consumer: every delivery, in arrival order.
    let arrived: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (arrived, stop) = (arrived.clone(), stop.clone());
        let mut q = q;
        tokio::spawn(async move {
            loop {
                match q.next(Duration::from_millis(500)).await {
                    Some(d) => {
                        d.ack().await;
                        arrived.lock().unwrap().push(d.text());
                    }
                    None if stop.load(Ordering::Relaxed) => return,
                    None => {}
                }
            }
        })
    };
    let done = Arc::new(AtomicUsize::new(0));
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let opts = rig.proxy.opts(&rig.db);
        let schema = rig.schema.clone();
        let done = done.clone();
        producers.push(tokio::spawn(async move {
            let mut outcomes = Vec::with_capacity(EACH);
            let mut conn: Option<Conn> = None;
            for i in 0..EACH {
                let c = loop {
                    if let Some(c) = conn.as_mut() {
                        break c;
                    }
                    match Conn::new(opts.clone()).await {
                        Ok(c) => conn = Some(c),
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                };
                let rollback = i % 10 == 9;
                let id = p * 1000 + i;
                let r = async {
                    c.query_drop("BEGIN").await?;
                    c.query_drop(format!("INSERT INTO orders VALUES ({id}, 'p{p}')"))
                        .await?;
                    c.query_drop(format!(
                        "INSERT INTO {schema}.outbox (topic, msg_key, payload) VALUES \
                         ('t26.load.p{p}', 'p{p}', '{p}:{i}')"
                    ))
                    .await?;
                    c.query_drop(if rollback { "ROLLBACK" } else { "COMMIT" })
                        .await
                };
                outcomes.push(match r.await {
                    Ok(()) if rollback => Sent::RolledBack,
                    Ok(()) => Sent::Committed,
                    Err(_) => {
                        conn = None;
                        Sent::Unknown
                    }
                });
                done.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(c) = conn {
                let _ = c.disconnect().await;
            }
            outcomes
        }));
    }
    // Trouble at 25 %, 50 % and 75 % of the transactions.
    let total = PRODUCERS * EACH;
    for (at, what) in [
        (total / 4, "kill"),
        (total / 2, "cut"),
        (total * 3 / 4, "kill"),
    ] {
        eventually("producers progress", Duration::from_secs(120), || async {
            done.load(Ordering::Relaxed) >= at
        })
        .await;
        match what {
            "kill" => rig.proxy.restart().await, // kill -9, then start again
            _ => broker.cut(),
        }
    }
    let mut outcomes = Vec::new();
    for p in producers {
        outcomes.push(p.await.unwrap());
    }
    // The database is the truth about what committed.
    let mut d = direct(&rig.db).await;
    let ids: Vec<i64> = d.query("SELECT id FROM orders").await.unwrap();
    let committed: HashSet<(usize, usize)> = ids
        .iter()
        .map(|&id| (id as usize / 1000, id as usize % 1000))
        .collect();
    let payloads: Vec<String> = d
        .query(format!("SELECT payload FROM {}.outbox", rig.schema))
        .await
        .unwrap();
    let messages: HashSet<(usize, usize)> = payloads.iter().map(|t| parse(t)).collect();
    assert_eq!(
        messages, committed,
        "a message exactly for each committed order"
    );
    for (p, sent) in outcomes.iter().enumerate() {
        for (i, s) in sent.iter().enumerate() {
            match s {
                Sent::Committed => assert!(committed.contains(&(p, i)), "{p}:{i} committed"),
                Sent::RolledBack => assert!(!committed.contains(&(p, i)), "{p}:{i} rolled back"),
                Sent::Unknown => {}
            }
        }
    }
    let unknown = outcomes
        .iter()
        .flatten()
        .filter(|s| **s == Sent::Unknown)
        .count();
    assert!(
        committed.len() >= 850,
        "{} committed, {unknown} unknown",
        committed.len()
    );
    eventually("nothing left NEW", Duration::from_secs(60), || async {
        rig.count("NEW").await == 0
    })
    .await;
    assert_eq!(rig.count("DEAD").await, 0);
    let expected = committed.clone();
    let arrived_now = arrived.clone();
    eventually(
        "every committed message arrived",
        Duration::from_secs(30),
        || {
            let arrived = arrived_now.clone();
            let expected = expected.clone();
            async move {
                let got: HashSet<(usize, usize)> =
                    arrived.lock().unwrap().iter().map(|t| parse(t)).collect();
                expected.is_subset(&got)
            }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    consumer.await.unwrap();
    let arrived = arrived.lock().unwrap().clone();
    let mut first: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let mut seen = HashSet::new();
    for t in &arrived {
        let (p, i) = parse(t);
        assert!(
            committed.contains(&(p, i)),
            "{p}:{i} arrived but never committed"
        );
        if seen.insert((p, i)) {
            first.entry(p).or_default().push(i);
        }
    }
    for (p, seq) in &first {
        let mut sorted = seq.clone();
        sorted.sort();
        assert_eq!(seq, &sorted, "producer {p}'s messages in commit order");
    }
    eprintln!(
        "{} committed, {unknown} unknown outcomes, {} deliveries ({} duplicates)",
        committed.len(),
        arrived.len(),
        arrived.len() - seen.len()
    );
}

fn parse(t: &str) -> (usize, usize) {
    let (p, i) = t.split_once(':').expect("p:i");
    (p.parse().unwrap(), i.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t26_a_consumer_fed_every_message_twice_applies_each_once() {
    let rig = rig("dup", &amqp_url(), "sweep_interval_ms = 200").await;
    let mut q = AmqpQueue::bind(&["t26.dup.#"]).await;
    let mut c = rig.proxy.conn(&rig.db).await;
    for i in 0..50 {
        c.query_drop(rig.insert("t26.dup.pay", None, &format!("pay-{i}")))
            .await
            .unwrap();
    }
    // The consumer applies each delivery through the proxy behind its barrier, then hands
    // a first delivery back to the broker, which delivers it again.
    let mut consumer = rig.proxy.conn(&rig.db).await;
    let (mut applied, mut duplicates) = (0, 0);
    while applied + duplicates < 100 {
        let m = q
            .next(Duration::from_secs(10))
            .await
            .expect("a delivery or redelivery");
        consumer.query_drop("BEGIN").await.unwrap();
        let r = consumer
            .query_drop(format!(
                "/*+ BARRIER('billing', '{}') */ INSERT INTO ledger (msg) VALUES ('{}') \
                 ON DUPLICATE KEY UPDATE n = n + 1",
                m.message_id,
                m.text()
            ))
            .await;
        match r {
            Ok(()) => {
                consumer.query_drop("COMMIT").await.unwrap();
                applied += 1;
            }
            Err(e) => match server_error::<()>(Err(e)).unwrap() {
                (1062, _, msg) if msg.starts_with("Duplicate message") => duplicates += 1,
                other => panic!("{other:?}"),
            },
        }
        if m.redelivered {
            m.ack().await;
        } else {
            m.requeue().await;
        }
    }
    assert_eq!((applied, duplicates), (50, 50));
    let mut d = direct(&rig.db).await;
    let counts: Vec<(String, i64)> = d.query("SELECT msg, n FROM ledger").await.unwrap();
    assert_eq!(counts.len(), 50);
    assert!(counts.iter().all(|(_, n)| *n == 1), "{counts:?}");
    assert!(q.next(Duration::from_millis(500)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t26_a_broker_outage_leaves_the_backlog_waiting_refusals_go_dead_and_redrive() {
    let broker = TcpRelay::start(amqp_addr()).await;
    let rig = rig(
        "down",
        &amqp_via(&broker),
        "sweep_interval_ms = 200\nmax_attempts = 3\nbackoff_initial_ms = 100\n\
         backoff_max_ms = 400\npublish_timeout_ms = 1000\nreport_interval_ms = 300",
    )
    .await;
    let mut q = AmqpQueue::bind(&["t26.down.#"]).await;
    let mut c = rig.proxy.conn(&rig.db).await;
    c.query_drop(rig.insert("t26.down.ev", Some("k"), "before"))
        .await
        .unwrap();
    let m = q.next(Duration::from_secs(10)).await.expect("broker up");
    m.ack().await;
    // Delivery is at-least-once: on a loaded machine the relay may give up on this
    // message's confirm (publish_timeout_ms) after the broker took it, and send it again.
    // A second copy of it (same message id) may arrive later; nothing else may.
    let before = m.message_id.clone();
    // The queue can hold the message before the broker's confirm has reached the
    // relay; cut the link only once the relay has marked it published, or that
    // message rightly waits out the outage with the rest.
    eventually(
        "the first message is marked published",
        Duration::from_secs(10),
        || async { rig.count("NEW").await == 0 },
    )
    .await;
    broker.set_down(true);
    for i in 0..30 {
        c.query_drop(rig.insert("t26.down.ev", Some("k"), &format!("{i}")))
            .await
            .unwrap();
    }
    // 30 s of outage: nothing leaves, nothing dies, no attempt is charged.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Some(m) = q.next(Duration::from_secs(1)).await {
            m.ack().await;
            assert_eq!(m.message_id, before, "left during the outage: {}", m.text());
        }
        let rows = rig.rows().await;
        let waiting: Vec<_> = rows.iter().filter(|r| r.0 == "NEW").collect();
        assert_eq!(waiting.len(), 30, "{rows:?}");
        assert!(waiting.iter().all(|r| r.1 == 0), "{rows:?}");
    }
    // The console sees the backlog and the relay's error.
    let report = rig.coord.get("/api/v1/outbox").await;
    let mine = report
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["new"] == 30)
        .unwrap_or_else(|| panic!("{report}"))
        .clone();
    assert!(!mine["last_error"].as_str().unwrap().is_empty(), "{mine}");
    assert!(
        mine["oldest_new_age_ms"].as_u64().unwrap() >= 25_000,
        "{mine}"
    );
    broker.set_down(false);
    let mut got = Vec::new();
    while got.len() < 30 {
        let m = q
            .next(Duration::from_secs(20))
            .await
            .expect("the backlog drains");
        m.ack().await;
        if m.message_id == before {
            continue;
        }
        got.push(m.text().parse::<usize>().unwrap());
    }
    assert_eq!(got, (0..30).collect::<Vec<_>>(), "in commit order");
    // No queue is bound for this topic: the broker returns it, three times, then DEAD.
    c.query_drop(rig.insert("t26.nobody.ev", None, "lost?"))
        .await
        .unwrap();
    eventually(
        "the refused message is DEAD",
        Duration::from_secs(20),
        || async { rig.count("DEAD").await == 1 },
    )
    .await;
    let rows = rig.rows().await;
    let dead = rows.iter().find(|r| r.0 == "DEAD").unwrap().clone();
    assert_eq!(dead.1, 3, "{dead:?}");
    assert!(!dead.3.is_empty(), "{dead:?}");
    // The operator finds it in the console API and redrives it once a queue is bound.
    let resource = loop {
        let list = rig.coord.get("/api/v1/outbox/dead").await;
        if let Some(m) = list
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["message_id"] == dead.2.as_str())
        {
            assert_eq!(m["topic"], "t26.nobody.ev");
            assert_eq!(m["attempts"], 3);
            break m["resource_id"].as_str().unwrap().to_string();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    q.bind_key("t26.nobody.#").await;
    let path = format!("/api/v1/outbox/{resource}/messages/{}/redrive", dead.2);
    let (code, body) = rig.coord.operator("POST", &path, None).await;
    assert_eq!(code, 200, "{body}");
    let m = q.next(Duration::from_secs(10)).await.expect("redriven");
    m.ack().await;
    assert_eq!(
        (m.message_id.as_str(), m.text().as_str()),
        (dead.2.as_str(), "lost?")
    );
    eventually("published", Duration::from_secs(10), || async {
        rig.count("DEAD").await == 0 && rig.count("NEW").await == 0
    })
    .await;
    let (code, _) = rig.coord.operator("POST", &path, None).await;
    assert_eq!(code, 404, "no longer DEAD");
    let audit = rig.coord.audit().await;
    assert!(
        audit
            .iter()
            .any(|a| a["action"] == "outbox redrive" && a["result"] == "done"),
        "{audit:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t26_jetstream_stores_each_message_once_however_often_it_is_sent() {
    let js = JetStream::create("RWT_T26", &["t26nats.>"]).await;
    let rig = rig(
        "nats",
        &nats_url(),
        "sweep_interval_ms = 200\nmax_attempts = 2\nbackoff_initial_ms = 100\n\
         publish_timeout_ms = 2000",
    )
    .await;
    let mut c = rig.proxy.conn(&rig.db).await;
    for i in 0..10 {
        c.query_drop(rig.insert("t26nats.ev", Some(["a", "b"][i % 2]), &format!("{i}")))
            .await
            .unwrap();
    }
    eventually("10 stored", Duration::from_secs(10), || async {
        js.count().await == 10
    })
    .await;
    let rows = rig.rows().await;
    let stored = js.messages().await;
    let ids: Vec<&str> = stored.iter().map(|m| m.msg_id.as_str()).collect();
    let want: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
    let mut sorted_ids = ids.clone();
    sorted_ids.sort();
    let mut sorted_want = want.clone();
    sorted_want.sort();
    assert_eq!(
        sorted_ids, sorted_want,
        "Nats-Msg-Id is the row's message id"
    );
    let keys: HashMap<String, String> = stored
        .iter()
        .map(|m| {
            (
                String::from_utf8_lossy(&m.payload).into_owned(),
                m.headers.get("rewind-msg-key").cloned().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(keys["3"], "b");
    // As after a crash between the broker's ack and the mark: sent again, stored once.
    let mut d = direct(&rig.db).await;
    d.query_drop(format!(
        "UPDATE {}.outbox SET status = 'NEW' WHERE id <= 3",
        rig.schema
    ))
    .await
    .unwrap();
    eventually("re-sent", Duration::from_secs(10), || async {
        rig.count("PUBLISHED").await == 10
    })
    .await;
    let rows = rig.rows().await;
    assert_eq!(rows.iter().filter(|r| r.1 == 2).count(), 3, "{rows:?}");
    assert_eq!(js.count().await, 10, "JetStream dropped the re-sends");
    // No stream takes this subject: refused, then DEAD.
    c.query_drop(rig.insert("t26nowhere.ev", None, "x"))
        .await
        .unwrap();
    eventually("DEAD", Duration::from_secs(20), || async {
        rig.count("DEAD").await == 1
    })
    .await;
    js.delete().await;
}
