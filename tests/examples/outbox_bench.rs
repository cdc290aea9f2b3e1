//! Load generator for `bench/outbox`, against two running proxies in front of the same
//! MariaDB: one relaying its outbox (undo schema `rwb_ob_amqp`) to RabbitMQ, one (undo
//! schema `rwb_ob_nats`) to NATS JetStream. In one run:
//!
//! 1. a local transaction (INSERT an order) without and with an outbox insert, by N
//!    clients through the proxy, and for reference the same straight against MariaDB;
//! 2. commit → delivery latency: one client commits an order with its event every 10 ms;
//!    a consumer on RabbitMQ notes when each arrives (an upper bound of commit → broker
//!    confirm, which happens before the delivery);
//! 3. relay throughput: 20,000 rows written straight into each outbox in one transaction,
//!    timed until the relay has marked all of them PUBLISHED (64 ordering keys);
//! 4. the barrier's cost on a consumer transaction (INSERT + UPDATE) through the proxy,
//!    without and with `/*+ BARRIER(…) */` on its first statement.
//!
//! usage: outbox_bench <amqp proxy host:port> <nats proxy host:port> <mariadb host:port> <clients> <seconds>

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use rewind_test_support::{AmqpQueue, JetStream};

const DB: &str = "rwb_outbox";

fn opts(addr: &str) -> OptsBuilder {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    OptsBuilder::default()
        .ip_or_hostname(host)
        .tcp_port(port.parse().expect("port"))
        .user(Some("root"))
        .db_name(Some(DB))
        .prefer_socket(false)
        .stmt_cache_size(16)
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Tx {
    Order,
    OrderWithEvent,
    Consume,
    ConsumeWithBarrier,
}

struct Run {
    n: u64,
    errors: u64,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Run {
    fn rate(&self) -> f64 {
        self.n as f64 / self.elapsed.as_secs_f64()
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

async fn one(c: &mut Conn, tx: Tx, schema: &str) -> mysql_async::Result<()> {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    c.query_drop("BEGIN").await?;
    match tx {
        Tx::Order | Tx::OrderWithEvent => {
            c.exec_drop(
                "INSERT INTO orders (item, amount) VALUES (?, ?)",
                ("book", 30),
            )
            .await?;
            if tx == Tx::OrderWithEvent {
                c.exec_drop(
                    format!(
                        "INSERT INTO {schema}.outbox (topic, msg_key, payload) VALUES (?, ?, ?)"
                    ),
                    (
                        "bench.order",
                        format!("k{}", n % 64),
                        format!("{{\"n\":{n}}}"),
                    ),
                )
                .await?;
            }
        }
        Tx::Consume | Tx::ConsumeWithBarrier => {
            let hint = if tx == Tx::ConsumeWithBarrier {
                format!("/*+ BARRIER('bench', 'm-{}-{n}') */ ", std::process::id())
            } else {
                String::new()
            };
            c.query_drop(format!(
                "{hint}INSERT INTO ledger (msg, amount) VALUES ('m{n}', 5)"
            ))
            .await?;
            c.query_drop(format!("UPDATE total SET n = n + 5 WHERE id = {}", n % 16))
                .await?;
        }
    }
    c.query_drop("COMMIT").await
}

async fn run(addr: &str, tx: Tx, schema: &str, clients: usize, secs: u64) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (o, stop, schema) = (opts(addr), stop.clone(), schema.to_string());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::new(o).await.expect("connect");
            let (mut n, mut errors, mut lat) = (0u64, 0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match one(&mut c, tx, &schema).await {
                    Ok(()) => {
                        n += 1;
                        lat.push(t.elapsed());
                    }
                    Err(_) => {
                        errors += 1;
                        let _ = c.query_drop("ROLLBACK").await;
                    }
                }
            }
            let _ = c.disconnect().await;
            (n, errors, lat)
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut r = Run {
        n: 0,
        errors: 0,
        latencies: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for t in tasks {
        let (n, e, l) = t.await.unwrap();
        r.n += n;
        r.errors += e;
        r.latencies.extend(l);
    }
    r.elapsed = start.elapsed();
    r.latencies.sort();
    r
}

fn pct(l: &[Duration], p: f64) -> f64 {
    if l.is_empty() {
        return 0.0;
    }
    let i = ((l.len() as f64 - 1.0) * p).round() as usize;
    l[i].as_secs_f64() * 1000.0
}

fn show(name: &str, r: &Run) {
    println!(
        "{name:<40} {:>9.0} tx/s  p50 {:>6.2} ms  p99 {:>6.2} ms  errors {}",
        r.rate(),
        pct(&r.latencies, 0.5),
        pct(&r.latencies, 0.99),
        r.errors
    );
}

async fn setup(mariadb: &str) {
    let mut c = Conn::new(opts(mariadb).db_name(None::<String>))
        .await
        .expect("MariaDB");
    for s in [
        format!("DROP DATABASE IF EXISTS {DB}"),
        format!("CREATE DATABASE {DB}"),
        format!("CREATE TABLE {DB}.orders (id BIGINT AUTO_INCREMENT PRIMARY KEY, item VARCHAR(40), amount INT)"),
        format!("CREATE TABLE {DB}.ledger (id BIGINT AUTO_INCREMENT PRIMARY KEY, msg VARCHAR(64), amount INT)"),
        format!("CREATE TABLE {DB}.total (id INT PRIMARY KEY, n BIGINT NOT NULL)"),
        format!("INSERT INTO {DB}.total SELECT seq, 0 FROM test.seq_0_to_15"),
        "DELETE FROM rwb_ob_amqp.outbox".to_string(),
        "DELETE FROM rwb_ob_nats.outbox".to_string(),
        "DELETE FROM rwb_ob_amqp.barrier".to_string(),
        // The same table with no relay reading it: what the row itself costs.
        "DROP DATABASE IF EXISTS rwb_ob_idle".to_string(),
        "CREATE DATABASE rwb_ob_idle".to_string(),
        "CREATE TABLE rwb_ob_idle.outbox LIKE rwb_ob_amqp.outbox".to_string(),
    ] {
        c.query_drop(&s).await.unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    c.disconnect().await.unwrap();
}

async fn backlog(mariadb: &str, schema: &str) -> i64 {
    let mut c = Conn::new(opts(mariadb)).await.expect("MariaDB");
    let n: Option<i64> = c
        .query_first(format!(
            "SELECT COUNT(*) FROM {schema}.outbox WHERE status = 'NEW'"
        ))
        .await
        .unwrap();
    c.disconnect().await.unwrap();
    n.unwrap_or(0)
}

/// Writes `n` rows straight into `schema`'s outbox in one transaction, then times the
/// relay until every one is PUBLISHED.
async fn relay_throughput(mariadb: &str, schema: &str, topic: &str, n: usize) -> (f64, f64) {
    let mut c = Conn::new(opts(mariadb)).await.expect("MariaDB");
    c.query_drop("BEGIN").await.unwrap();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let values: Vec<String> = chunk
            .iter()
            .map(|i| format!("('{topic}', 'k{}', '{{\"n\":{i}}}')", i % 64))
            .collect();
        c.query_drop(format!(
            "INSERT INTO {schema}.outbox (topic, msg_key, payload) VALUES {}",
            values.join(",")
        ))
        .await
        .unwrap();
    }
    c.query_drop("COMMIT").await.unwrap();
    let start = Instant::now();
    while backlog(mariadb, schema).await > 0 {
        if start.elapsed() > Duration::from_secs(300) {
            panic!("{schema}: the relay did not drain {n} rows in 300 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = start.elapsed().as_secs_f64();
    (n as f64 / t, t)
}

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let [amqp_proxy, nats_proxy, mariadb, clients, secs] = a.as_slice() else {
        eprintln!("usage: outbox_bench <amqp proxy> <nats proxy> <mariadb> <clients> <seconds>");
        std::process::exit(2);
    };
    let clients: usize = clients.parse().expect("clients");
    let secs: u64 = secs.parse().expect("seconds");
    setup(mariadb).await;
    // The NATS proxy relays its outbox by itself; it only has to be up.
    Conn::new(opts(nats_proxy))
        .await
        .expect("the NATS proxy")
        .disconnect()
        .await
        .unwrap();
    // A consumer drains RabbitMQ and notes when each event arrived.
    let mut queue = AmqpQueue::bind(&["bench.#"]).await;
    let arrivals: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let consumer = {
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            while let Some(d) = queue.next(Duration::from_secs(3600)).await {
                arrivals.lock().unwrap().insert(d.text(), Instant::now());
                d.ack().await;
            }
        })
    };
    let js = JetStream::create("RWB_OUTBOX", &["bench.>"]).await;

    // BENCH_PHASES=1,3 runs only those phases (all by default).
    let phases = std::env::var("BENCH_PHASES").unwrap_or_else(|_| "1,2,3,4".into());
    let phase = |n: &str| phases.split(',').any(|p| p.trim() == n);
    if phase("1") {
        println!("== 1. a local transaction without and with an outbox insert ({clients} clients, {secs} s each)");
        let direct = run(mariadb, Tx::Order, "rwb_ob_amqp", clients, secs).await;
        show("direct MariaDB, order", &direct);
        let idle = run(mariadb, Tx::OrderWithEvent, "rwb_ob_idle", clients, secs).await;
        show("direct MariaDB, order + row, no relay", &idle);
        let direct_ev = run(mariadb, Tx::OrderWithEvent, "rwb_ob_amqp", clients, secs).await;
        show("direct MariaDB, order + outbox row", &direct_ev);
        let direct_nats = run(mariadb, Tx::OrderWithEvent, "rwb_ob_nats", clients, secs).await;
        show("direct MariaDB, order + row, NATS relay", &direct_nats);
        let plain = run(amqp_proxy, Tx::Order, "rwb_ob_amqp", clients, secs).await;
        show("proxy, order", &plain);
        let with = run(amqp_proxy, Tx::OrderWithEvent, "rwb_ob_amqp", clients, secs).await;
        show("proxy, order + outbox row (relayed)", &with);
        println!(
        "ratio with/without outbox row: proxy {:.3}, direct {:.3}, direct without a relay {:.3} (goal >= 0.9)",
        with.rate() / plain.rate(),
        direct_ev.rate() / direct.rate(),
        idle.rate() / direct.rate()
    );
        let start = Instant::now();
        while backlog(mariadb, "rwb_ob_amqp").await > 0
            && start.elapsed() < Duration::from_secs(120)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "(relay caught up {:.1} s after the load)",
            start.elapsed().as_secs_f64()
        );
    }
    if phase("2") {
        println!("== 2. commit -> delivery latency (one client, an order + event every 10 ms)");
        let mut c = Conn::new(opts(amqp_proxy)).await.expect("proxy");
        let mut committed = Vec::new();
        for i in 0..500 {
            let tag = format!("lat-{i}");
            c.query_drop("BEGIN").await.unwrap();
            c.exec_drop(
                "INSERT INTO orders (item, amount) VALUES (?, ?)",
                ("pen", 2),
            )
            .await
            .unwrap();
            c.exec_drop(
                "INSERT INTO rwb_ob_amqp.outbox (topic, payload) VALUES ('bench.latency', ?)",
                (&tag,),
            )
            .await
            .unwrap();
            c.query_drop("COMMIT").await.unwrap();
            committed.push((tag, Instant::now()));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        c.disconnect().await.unwrap();
        let start = Instant::now();
        let mut lat = loop {
            let got = arrivals.lock().unwrap().clone();
            let l: Vec<Duration> = committed
                .iter()
                .filter_map(|(t, at)| got.get(t).map(|a| a.saturating_duration_since(*at)))
                .collect();
            if l.len() == committed.len() || start.elapsed() > Duration::from_secs(30) {
                break l;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        lat.sort();
        println!(
        "commit OK -> consumer receipt: {} of {} arrived, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (goal p99 < 50 ms)",
        lat.len(),
        committed.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    );
    }
    if phase("3") {
        println!("== 3. relay throughput (20,000 rows written straight to the outbox, 64 keys)");
        let (rate, t) = relay_throughput(mariadb, "rwb_ob_amqp", "bench.bulk", 20_000).await;
        println!("RabbitMQ (publisher confirms, persistent): {rate:>8.0} msg/s ({t:.1} s)");
        let (rate, t) = relay_throughput(mariadb, "rwb_ob_nats", "bench.bulk", 20_000).await;
        println!("NATS JetStream (publish acks):             {rate:>8.0} msg/s ({t:.1} s)");
        println!("(JetStream stream holds {} messages)", js.count().await);
    }
    if phase("4") {
        println!(
            "== 4. the barrier's cost on a consumer transaction ({clients} clients, {secs} s each)"
        );
        let plain = run(amqp_proxy, Tx::Consume, "rwb_ob_amqp", clients, secs).await;
        show("proxy, consumer transaction", &plain);
        let barrier = run(
            amqp_proxy,
            Tx::ConsumeWithBarrier,
            "rwb_ob_amqp",
            clients,
            secs,
        )
        .await;
        show("proxy, consumer transaction + BARRIER", &barrier);
        println!(
            "ratio with/without barrier: {:.3} (goal >= 0.9, i.e. cost <= 10 %)",
            barrier.rate() / plain.rate()
        );
    }
    consumer.abort();
    js.delete().await;
}
