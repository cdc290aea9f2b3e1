//! Load generator for `bench/at`: money transfers (one UPDATE in each of two schemas)
//! through the proxy, by N concurrent clients, first as plain local transactions, then as
//! global transactions (begin and commit over gRPC, each UPDATE tagged with the XID in
//! its own local transaction) in AT mode and in XA mode (the same tag spelled `XA`), and
//! for reference the same local transactions straight against MariaDB. Then the idempotent-consumer barrier's cost: the same local
//! transactions in the text protocol, without and with a `BARRIER` hint (a fresh message
//! id each) on their statement. Prints throughput, p50 and p99 of each and the ratios.
//!
//! usage: at_bench <proxy host:port> <mariadb host:port> <coordinator grpc URL> <clients> <seconds> <accounts>

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use rand::Rng;
use rewind_protocol::v1::{BeginRequest, GlobalRequest};
use rewind_protocol::TransactionManagerClient;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Direct,
    Local,
    Global,
    /// Global transactions whose branches are XA branches.
    GlobalXa,
    /// Local transactions in the text protocol (the barrier's reference).
    LocalText,
    /// The same, each statement behind a BARRIER with a new message id.
    Barrier,
}

struct Run {
    transfers: usize,
    errors: usize,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

fn opts(addr: &str, db: &str) -> OptsBuilder {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    OptsBuilder::default()
        .ip_or_hostname(host)
        .tcp_port(port.parse().expect("port"))
        .user(Some("root"))
        .db_name(Some(db))
        .prefer_socket(false)
        .stmt_cache_size(16)
}

/// One local transaction updating one account; tagged with `xid` under hint `hint`
/// (`XID` or `XA`) when given.
async fn local(
    c: &mut Conn,
    xid: Option<(&str, &str)>,
    id: i64,
    cents: i64,
) -> mysql_async::Result<()> {
    let sql = match xid {
        Some((hint, x)) => {
            format!("/*+ {hint}('{x}') */ UPDATE account SET balance = balance + ? WHERE id = ?")
        }
        None => "UPDATE account SET balance = balance + ? WHERE id = ?".to_string(),
    };
    let sign = if cents < 0 { "-" } else { "" };
    let amount = format!("{sign}{}.{:02}", cents.abs() / 100, cents.abs() % 100);
    c.query_drop("BEGIN").await?;
    if let Err(e) = c.exec_drop(sql, (amount, id)).await {
        // As an application would: end the local transaction, so a failed transfer
        // neither keeps its row locks nor leaves the connection bound to its XID.
        let _ = c.query_drop("ROLLBACK").await;
        return Err(e);
    }
    c.query_drop("COMMIT").await
}

/// One local transaction updating one account, in the text protocol, behind a barrier for
/// consumer `barrier` (a fresh message id) when given.
async fn local_text(
    c: &mut Conn,
    barrier: Option<&str>,
    id: i64,
    cents: i64,
) -> mysql_async::Result<()> {
    let sign = if cents < 0 { "-" } else { "" };
    let amount = format!("{sign}{}.{:02}", cents.abs() / 100, cents.abs() % 100);
    let hint = match barrier {
        Some(consumer) => format!(
            "/*+ BARRIER('{consumer}', '{:032x}') */ ",
            rand::random::<u128>()
        ),
        None => String::new(),
    };
    c.query_drop("BEGIN").await?;
    let sql = format!("{hint}UPDATE account SET balance = balance + {amount} WHERE id = {id}");
    if let Err(e) = c.query_drop(sql).await {
        let _ = c.query_drop("ROLLBACK").await;
        return Err(e);
    }
    c.query_drop("COMMIT").await
}

async fn client(
    mode: Mode,
    target: String,
    grpc: String,
    accounts: i64,
    stop: Arc<AtomicBool>,
) -> (usize, usize, Vec<Duration>) {
    let mut a = Conn::new(opts(&target, "rwb_at_a"))
        .await
        .expect("connect a");
    let mut b = Conn::new(opts(&target, "rwb_at_b"))
        .await
        .expect("connect b");
    let mut tm = TransactionManagerClient::connect(grpc)
        .await
        .expect("coordinator");
    let (mut done, mut errors, mut lat) = (0, 0, Vec::new());
    while !stop.load(Ordering::Relaxed) {
        let (from, to, cents) = {
            let mut r = rand::rng();
            (
                r.random_range(1..=accounts),
                r.random_range(1..=accounts),
                r.random_range(1..10_000),
            )
        };
        let t = Instant::now();
        let ok = match mode {
            Mode::Direct | Mode::Local => {
                local(&mut a, None, from, -cents).await.is_ok()
                    && local(&mut b, None, to, cents).await.is_ok()
            }
            Mode::LocalText | Mode::Barrier => {
                let (ca, cb) = match mode {
                    Mode::Barrier => (Some("bench-a"), Some("bench-b")),
                    _ => (None, None),
                };
                local_text(&mut a, ca, from, -cents).await.is_ok()
                    && local_text(&mut b, cb, to, cents).await.is_ok()
            }
            Mode::Global | Mode::GlobalXa => {
                let hint = if mode == Mode::GlobalXa { "XA" } else { "XID" };
                let xid = tm
                    .begin(BeginRequest {
                        name: "bench".into(),
                        timeout_ms: 30_000,
                    })
                    .await
                    .expect("begin")
                    .into_inner()
                    .xid;
                let ok = local(&mut a, Some((hint, &xid)), from, -cents)
                    .await
                    .is_ok()
                    && local(&mut b, Some((hint, &xid)), to, cents).await.is_ok();
                let req = GlobalRequest { xid };
                if ok {
                    tm.commit(req).await.is_ok()
                } else {
                    let _ = tm.rollback(req).await;
                    false
                }
            }
        };
        if ok {
            done += 1;
            lat.push(t.elapsed());
        } else {
            errors += 1;
        }
    }
    (done, errors, lat)
}

async fn run(
    mode: Mode,
    target: &str,
    grpc: &str,
    clients: usize,
    secs: u64,
    accounts: i64,
) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        tasks.push(tokio::spawn(client(
            mode,
            target.to_string(),
            grpc.to_string(),
            accounts,
            stop.clone(),
        )));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut r = Run {
        transfers: 0,
        errors: 0,
        latencies: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for t in tasks {
        let (d, e, l) = t.await.expect("client");
        r.transfers += d;
        r.errors += e;
        r.latencies.extend(l);
    }
    r.elapsed = started.elapsed();
    r.latencies.sort();
    r
}

fn pct(l: &[Duration], p: f64) -> f64 {
    if l.is_empty() {
        return 0.0;
    }
    l[((l.len() as f64 * p) as usize).min(l.len() - 1)].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 7 {
        eprintln!("usage: at_bench <proxy host:port> <mariadb host:port> <coordinator grpc URL> <clients> <seconds> <accounts>");
        std::process::exit(2);
    }
    let (proxy, direct, grpc) = (&args[1], &args[2], &args[3]);
    let clients: usize = args[4].parse().expect("clients");
    let secs: u64 = args[5].parse().expect("seconds");
    let accounts: i64 = args[6].parse().expect("accounts");
    let mut results = Vec::new();
    for (name, mode, target) in [
        ("direct MariaDB, local", Mode::Direct, direct),
        ("proxy, local (no XID)", Mode::Local, proxy),
        ("proxy, global (AT)", Mode::Global, proxy),
        ("proxy, global (XA)", Mode::GlobalXa, proxy),
        ("proxy, local, text", Mode::LocalText, proxy),
        ("proxy, local + BARRIER", Mode::Barrier, proxy),
    ] {
        // A short warm-up per mode (connections, prepared statements, table metadata).
        run(mode, target, grpc, clients, 2, accounts).await;
        let r = run(mode, target, grpc, clients, secs, accounts).await;
        let tps = r.transfers as f64 / r.elapsed.as_secs_f64();
        println!(
            "{name:<24} transfers/s {tps:>8.1}   p50 {:>7.2} ms   p99 {:>7.2} ms   errors {}",
            pct(&r.latencies, 0.50),
            pct(&r.latencies, 0.99),
            r.errors
        );
        results.push(tps);
    }
    println!(
        "ratio global/local (through the proxy): {:.3}   (target >= 0.5)",
        results[2] / results[1]
    );
    println!(
        "ratio XA global/local (proxy):        {:.3}",
        results[3] / results[1]
    );
    println!(
        "ratio XA global/AT global:            {:.3}",
        results[3] / results[2]
    );
    println!(
        "ratio global/direct MariaDB:          {:.3}",
        results[2] / results[0]
    );
    println!(
        "ratio local through proxy/direct:     {:.3}",
        results[1] / results[0]
    );
    println!(
        "ratio with BARRIER/without (text):    {:.3}   (goal: cost <= 10 %)",
        results[5] / results[4]
    );
}
