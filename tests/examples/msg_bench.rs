//! Load generator for `bench/messages`: half messages (DESIGN.md, "Message service: half
//! messages with check-back") against a running coordinator (its `[messages] broker` the
//! local RabbitMQ) and a proxy in front of MariaDB. In one run:
//!
//! 1. throughput, N clients, two modes alternated twice (plain, msg, plain, msg):
//!    - *plain*: a local transaction through the proxy, `BEGIN; INSERT INTO orders …;
//!      UPDATE stock …; COMMIT` (each client its own rows: no contention);
//!    - *msg*: the same as a two-phase message: `POST /api/v1/messages` (keep-alive HTTP
//!      client), then the same transaction with `/*+ MSG('<id>') */` on its INSERT.
//!
//!    After each msg mode the generator waits until the coordinator holds no message
//!    `prepared` or `confirmed` (its `/metrics` census), i.e. every message of the mode is
//!    `sent`, and reports the producer's rate and the rate with that drain counted. A
//!    consumer on RabbitMQ acknowledges every delivery (the queue stays empty) and counts
//!    them. CPU seconds per 1000 transactions of the processes named in `BENCH_PIDS`
//!    (`name=pid,…`, read from `/proc/<pid>/stat` before and after each mode; ticks per
//!    second in `BENCH_CLK_TCK`) and of this generator;
//! 2. producer-crash recovery, K rounds: a proxy armed with the failpoint
//!    `msg-before-decide=abort` (started by this generator from `<crash proxy binary>`,
//!    which must be built with `--features failpoints`) runs the tagged transaction and
//!    dies right after the COMMIT's OK reached the client, before it tells the
//!    coordinator. The coordinator's check-back (through the ordinary proxy, in the
//!    database) must find the commit: the time from the COMMIT's answer to the message
//!    being `sent`. The proxy is started again for the next round.
//!
//! `BENCH_PHASES=1` or `=2` runs one phase only (both by default).
//!
//! usage: msg_bench <coordinator http> <coordinator grpc url> <proxy> <crash proxy listen>
//!        <crash proxy binary> <undo schema> <log dir> <clients> <seconds> <rounds>

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use rewind_test_support::AmqpQueue;
use serde_json::{json, Value};

const DB: &str = "rwb_msg";

fn opts(addr: &str) -> OptsBuilder {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    OptsBuilder::default()
        .ip_or_hostname(host)
        .tcp_port(port.parse().expect("port"))
        .user(Some("root"))
        .db_name(Some(DB))
        .prefer_socket(false)
}

/// A row number no client has used (orders' key is (client, n)).
static SEQ: AtomicU64 = AtomicU64::new(0);

struct Bench {
    coord: String,
    topic: String,
    http: reqwest::Client,
}

impl Bench {
    async fn get(&self, path: &str) -> Result<String, String> {
        let r = self
            .http
            .get(format!("{}{path}", self.coord))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status();
        let text = r.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("GET {path}: {status} {text}"));
        }
        Ok(text)
    }

    /// `POST /api/v1/messages`: the prepared message's id.
    async fn prepare(&self, client: u64, n: u64) -> Result<String, String> {
        let body = json!({"topic": self.topic, "key": format!("c{client}"),
                          "payload": format!("{{\"client\":{client},\"order\":{n}}}")});
        let r = self
            .http
            .post(format!("{}/api/v1/messages", self.coord))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status();
        let text = r.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("prepare: {status} {text}"));
        }
        let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        Ok(v["message_id"].as_str().ok_or("no message_id")?.to_string())
    }

    async fn message(&self, id: &str) -> Result<Value, String> {
        let text = self.get(&format!("/api/v1/messages/{id}")).await?;
        serde_json::from_str(&text).map_err(|e| e.to_string())
    }

    /// How many messages the coordinator holds `prepared` and `confirmed`.
    async fn undelivered(&self) -> Result<u64, String> {
        let text = self.get("/metrics").await?;
        let mut n = 0;
        for line in text.lines() {
            for st in ["prepared", "confirmed"] {
                if let Some(v) = line.strip_prefix(&format!("rewind_messages{{status=\"{st}\"}} "))
                {
                    n += v.trim().parse::<u64>().map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(n)
    }
}

/// The local transaction, with the MSG tag on its INSERT when `msg` is given.
async fn transaction(
    c: &mut Conn,
    client: u64,
    n: u64,
    msg: Option<&str>,
) -> mysql_async::Result<()> {
    let tag = msg
        .map(|id| format!("/*+ MSG('{id}') */ "))
        .unwrap_or_default();
    c.query_drop("BEGIN").await?;
    c.query_drop(format!(
        "{tag}INSERT INTO orders (client, n, item, amount) VALUES ({client}, {n}, 'book', 30)"
    ))
    .await?;
    c.query_drop(format!("UPDATE stock SET n = n - 1 WHERE id = {client}"))
        .await?;
    c.query_drop("COMMIT").await
}

#[derive(Default)]
struct Run {
    n: u64,
    errors: u64,
    /// Whole transactions (the prepare included in msg mode).
    lat: Vec<Duration>,
    /// The prepare alone (msg mode).
    prep: Vec<Duration>,
    /// Until the last client stopped.
    elapsed: Duration,
    /// Load stopped → every message sent (msg mode).
    drain: Duration,
    /// CPU seconds of each watched process during the mode (drain included).
    cpu: Vec<f64>,
}

/// Utime + stime of a process, in seconds.
fn cpu_secs(pid: &str, tck: f64) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the command (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (t(11) + t(12)) / tck
}

struct Watched {
    names: Vec<String>,
    pids: Vec<String>,
    tck: f64,
}

impl Watched {
    fn from_env() -> Watched {
        let mut w = Watched {
            names: Vec::new(),
            pids: Vec::new(),
            tck: std::env::var("BENCH_CLK_TCK")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(100.0),
        };
        for kv in std::env::var("BENCH_PIDS").unwrap_or_default().split(',') {
            if let Some((k, v)) = kv.split_once('=') {
                if !v.trim().is_empty() {
                    w.names.push(k.trim().to_string());
                    w.pids.push(v.trim().to_string());
                }
            }
        }
        w.names.push("load generator".into());
        w.pids.push("self".into());
        w
    }

    fn now(&self) -> Vec<f64> {
        self.pids.iter().map(|p| cpu_secs(p, self.tck)).collect()
    }
}

async fn run(b: &Arc<Bench>, proxy: &str, msg: bool, clients: u64, secs: u64, w: &Watched) -> Run {
    let cpu0 = w.now();
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for client in 1..=clients {
        let (o, stop, b) = (opts(proxy), stop.clone(), b.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::new(o).await.expect("connect to the proxy");
            let mut r = Run::default();
            while !stop.load(Ordering::Relaxed) {
                let n = SEQ.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                let id = if msg {
                    match b.prepare(client, n).await {
                        Ok(id) => {
                            r.prep.push(t.elapsed());
                            Some(id)
                        }
                        Err(e) => {
                            if r.errors < 3 {
                                eprintln!("client {client}: {e}");
                            }
                            r.errors += 1;
                            continue;
                        }
                    }
                } else {
                    None
                };
                match transaction(&mut c, client, n, id.as_deref()).await {
                    Ok(()) => {
                        r.n += 1;
                        r.lat.push(t.elapsed());
                    }
                    Err(e) => {
                        if r.errors < 3 {
                            eprintln!("client {client}: {e}");
                        }
                        r.errors += 1;
                        let _ = c.query_drop("ROLLBACK").await;
                    }
                }
            }
            let _ = c.disconnect().await;
            r
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Run::default();
    for t in tasks {
        let r = t.await.unwrap();
        all.n += r.n;
        all.errors += r.errors;
        all.lat.extend(r.lat);
        all.prep.extend(r.prep);
    }
    all.elapsed = start.elapsed();
    if msg {
        let stopped = Instant::now();
        loop {
            match b.undelivered().await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => eprintln!("coordinator metrics: {e}"),
            }
            if stopped.elapsed() > Duration::from_secs(300) {
                panic!("messages still undelivered 300 s after the load stopped");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        all.drain = stopped.elapsed();
    }
    all.cpu = w.now().iter().zip(&cpu0).map(|(a, b)| a - b).collect();
    all.lat.sort();
    all.prep.sort();
    all
}

fn pct(l: &[Duration], p: f64) -> f64 {
    if l.is_empty() {
        return f64::NAN;
    }
    let i = ((l.len() as f64 - 1.0) * p).round() as usize;
    l[i].as_secs_f64() * 1000.0
}

/// The crashing proxy: started with the failpoint armed, its log appended to.
struct Crasher {
    bin: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    listen: String,
}

impl Crasher {
    fn attached(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches("attached to the coordinator")
            .count()
    }

    async fn start(&self) -> tokio::process::Child {
        let before = self.attached();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("crash proxy log");
        let child = tokio::process::Command::new(&self.bin)
            .args(&self.args)
            .env("REWIND_FAILPOINTS", "msg-before-decide=abort")
            .env("RUST_LOG", "info")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .expect("start the crash proxy");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.attached() > before
                && tokio::net::TcpStream::connect(&self.listen).await.is_ok()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the crash proxy did not serve and attach within 30 s (see {})",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child
    }
}

async fn crash_rounds(b: &Bench, crasher: &Crasher, rounds: usize) {
    let mut lat = Vec::new();
    let mut prep_to_sent = Vec::new();
    let mut by_check_back = 0;
    for round in 0..rounds {
        let mut child = crasher.start().await;
        if round == 0 {
            let log = std::fs::read_to_string(&crasher.log).unwrap_or_default();
            assert!(
                log.contains("failpoints armed"),
                "{} was not built with --features failpoints",
                crasher.bin.display()
            );
        }
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let mut c = Conn::new(opts(&crasher.listen))
            .await
            .expect("connect to the crash proxy");
        let prepared = Instant::now();
        let id = b.prepare(0, n).await.expect("prepare");
        let committed = transaction(&mut c, 0, n, Some(&id)).await;
        let answered = Instant::now();
        drop(c);
        if let Err(e) = committed {
            panic!("round {round}: the COMMIT's answer was an error: {e}");
        }
        match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
            Ok(_) => {}
            Err(_) => panic!("round {round}: the crash proxy did not die after the COMMIT"),
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let m = loop {
            let m = b.message(&id).await.expect("message");
            if m["status"] == "sent" || m["status"] == "consumed" {
                break m;
            }
            assert!(
                m["status"] == "prepared" || m["status"] == "confirmed",
                "round {round}: message {id} is {}: {m:#}",
                m["status"]
            );
            assert!(
                Instant::now() < deadline,
                "round {round}: message {id} not sent 60 s after the COMMIT: {m:#}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let took = answered.elapsed();
        let detail = m["history"]
            .as_array()
            .and_then(|h| h.iter().find(|e| e["event"] == "confirmed"))
            .and_then(|e| e["detail"].as_str())
            .unwrap_or("")
            .to_string();
        if detail.contains("check-back") {
            by_check_back += 1;
        }
        println!(
            "round {round:>2}: COMMIT answered {:>4.0} ms after the prepare, sent {:>6.3} s after the COMMIT's answer (confirmed: {detail})",
            (answered - prepared).as_secs_f64() * 1000.0,
            took.as_secs_f64()
        );
        lat.push(took);
        prep_to_sent.push(prepared.elapsed());
    }
    lat.sort();
    prep_to_sent.sort();
    println!(
        "COMMIT answer -> sent ({rounds} rounds): p50 {:.2} s, p99 {:.2} s, max {:.2} s (goal p99 <= 10 s); prepare -> sent p50 {:.2} s; confirmed by check-back in {by_check_back} of {rounds}",
        pct(&lat, 0.5) / 1000.0,
        pct(&lat, 0.99) / 1000.0,
        pct(&lat, 1.0) / 1000.0,
        pct(&prep_to_sent, 0.5) / 1000.0,
    );
}

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let [coord, grpc, proxy, crash_listen, crash_bin, undo_schema, log_dir, clients, secs, rounds] =
        a.as_slice()
    else {
        eprintln!(
            "usage: msg_bench <coordinator http> <coordinator grpc url> <proxy> <crash proxy listen> \
             <crash proxy binary> <undo schema> <log dir> <clients> <seconds> <rounds>"
        );
        std::process::exit(2);
    };
    let clients: u64 = clients.parse().expect("clients");
    let secs: u64 = secs.parse().expect("seconds");
    let rounds: usize = rounds.parse().expect("rounds");
    let phases = std::env::var("BENCH_PHASES").unwrap_or_else(|_| "1,2".into());
    let phase = |n: &str| phases.split(',').any(|p| p.trim() == n);
    let topic = format!("rwb.msg.{}", std::process::id());
    let b = Arc::new(Bench {
        coord: format!("http://{coord}"),
        topic: topic.clone(),
        http: rewind_test_support::keep_alive_client(),
    });
    // The broker refuses a publish no queue is bound for: a queue on the bench's topic,
    // every delivery acknowledged at once (the queue does not grow) and counted.
    let mut queue = AmqpQueue::bind(&[&topic]).await;
    let delivered: Arc<Mutex<(u64, HashSet<String>)>> = Arc::default();
    let consumer = {
        let delivered = delivered.clone();
        tokio::spawn(async move {
            while let Some(d) = queue.next(Duration::from_secs(3600)).await {
                let id = d.message_id.clone();
                d.ack().await;
                let mut g = delivered.lock().unwrap();
                g.0 += 1;
                g.1.insert(id);
            }
        })
    };
    let w = Watched::from_env();

    if phase("1") {
        println!("== 1. throughput: {clients} clients, {secs} s per mode, plain and msg alternated twice");
        // Warm-up: connections, the coordinator's broker connection, first fsyncs.
        run(&b, proxy, false, clients, 2, &w).await;
        run(&b, proxy, true, clients, 2, &w).await;
        let warm = delivered.lock().unwrap().0;
        let mut runs: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
        for round in 0..2 {
            for msg in [false, true] {
                let r = run(&b, proxy, msg, clients, secs, &w).await;
                let rate = r.n as f64 / r.elapsed.as_secs_f64();
                if msg {
                    println!(
                        "round {round} msg   {rate:>7.0} tx/s, {:>7.0} tx/s with the drain ({:.2} s)  p50 {:>6.1} ms  p99 {:>6.1} ms  (prepare p50 {:.1} ms)  {} tx, {} errors",
                        r.n as f64 / (r.elapsed + r.drain).as_secs_f64(),
                        r.drain.as_secs_f64(),
                        pct(&r.lat, 0.5),
                        pct(&r.lat, 0.99),
                        pct(&r.prep, 0.5),
                        r.n,
                        r.errors
                    );
                } else {
                    println!(
                        "round {round} plain {rate:>7.0} tx/s                                    p50 {:>6.1} ms  p99 {:>6.1} ms  {} tx, {} errors",
                        pct(&r.lat, 0.5),
                        pct(&r.lat, 0.99),
                        r.n,
                        r.errors
                    );
                }
                runs[msg as usize].push(r);
            }
        }
        let sum = |rs: &Vec<Run>, f: &dyn Fn(&Run) -> f64| rs.iter().map(f).sum::<f64>();
        let n = |m: usize| sum(&runs[m], &|r| r.n as f64);
        let producer = |m: usize| n(m) / sum(&runs[m], &|r| r.elapsed.as_secs_f64());
        let drained = n(1) / sum(&runs[1], &|r| (r.elapsed + r.drain).as_secs_f64());
        let lat = |m: usize| {
            let mut l: Vec<Duration> = runs[m].iter().flat_map(|r| r.lat.clone()).collect();
            l.sort();
            l
        };
        let (lp, lm) = (lat(0), lat(1));
        let plain = producer(0);
        println!();
        println!("                                 tx/s   ratio   p50 ms   p99 ms");
        println!(
            "plain local transaction      {plain:>7.0}   1.000  {:>7.1}  {:>7.1}",
            pct(&lp, 0.5),
            pct(&lp, 0.99)
        );
        println!(
            "msg, producer (COMMIT OK)    {:>7.0}   {:.3}  {:>7.1}  {:>7.1}   goal >= 0.6 (DTM 2-phase msg + barrier: 0.43)",
            producer(1),
            producer(1) / plain,
            pct(&lm, 0.5),
            pct(&lm, 0.99)
        );
        println!(
            "msg, every message sent      {drained:>7.0}   {:.3}                    (the drain after the load counted)",
            drained / plain
        );
        println!();
        println!("CPU s per 1000 tx             plain      msg   msg/plain");
        for (i, name) in w.names.iter().enumerate() {
            let per = |m: usize| 1000.0 * sum(&runs[m], &|r| r.cpu[i]) / n(m);
            let (p, m) = (per(0), per(1));
            let ratio = if p >= 0.001 {
                format!("{:>8.2}", m / p)
            } else {
                format!("{:>8}", "-")
            };
            println!("  {name:<24} {p:>8.3} {m:>8.3}   {ratio}");
        }
        let total = |m: usize| {
            (0..w.names.len())
                .map(|i| 1000.0 * sum(&runs[m], &|r| r.cpu[i]) / n(m))
                .sum::<f64>()
        };
        println!(
            "  {:<24} {:>8.3} {:>8.3}   {:>8.2}",
            "all of the above",
            total(0),
            total(1),
            total(1) / total(0)
        );
        let g = delivered.lock().unwrap();
        println!(
            "RabbitMQ deliveries in the two msg modes: {} for {} committed msg transactions ({} distinct ids over the whole run)",
            g.0 - warm,
            n(1) as u64,
            g.1.len()
        );
    }
    if phase("2") {
        println!();
        println!("== 2. producer crash after the COMMIT's OK (failpoint msg-before-decide=abort), {rounds} rounds");
        let crasher = Crasher {
            bin: PathBuf::from(crash_bin),
            args: vec![
                "--listen".into(),
                crash_listen.clone(),
                "--admin-addr".into(),
                String::new(),
                "--backend".into(),
                "mysql://root@127.0.0.1:3306".into(),
                "--coordinator".into(),
                grpc.clone(),
                "--undo-schema".into(),
                undo_schema.clone(),
            ],
            log: PathBuf::from(log_dir).join("crash-proxy.log"),
            listen: crash_listen.clone(),
        };
        crash_rounds(&b, &crasher, rounds).await;
    }
    consumer.abort();
}
