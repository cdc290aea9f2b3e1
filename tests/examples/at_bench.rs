//! Load generator for `bench/at`: money transfers (one UPDATE in each of two schemas)
//! through the proxy, by N concurrent clients, first as plain local transactions, then as
//! global transactions (begin and commit over gRPC, each UPDATE tagged with the XID in
//! its own local transaction) in AT mode and in XA mode (the same tag spelled `XA`), and
//! for reference the same local transactions straight against MariaDB. Then the idempotent-consumer barrier's cost: the same local
//! transactions in the text protocol, without and with a `BARRIER` hint (a fresh message
//! id each) on their statement. Last, global transactions in AT mode in the text protocol
//! (values written into the SQL, as most drivers send them). Prints throughput, p50 and
//! p99 of each and the ratios, and per mode the CPU each process spent, what MariaDB ran
//! (its own counters) per transfer and the median time of each step.
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
    /// Global transactions (AT) in the text protocol, values written into the SQL as
    /// most drivers send them by default (JDBC, PyMySQL, mysql2, Go's interpolateParams).
    GlobalText,
    /// No proxy, no coordinator: the load sends MariaDB, directly, the statements AT's
    /// phase one and phase two run there for a transfer (as the proxy batches them in the
    /// text protocol): per branch BEGIN, then the before image `SELECT … FOR UPDATE`, the
    /// UPDATE and the after image in one query, then the undo record's INSERT and the
    /// COMMIT in one; every 6 transfers the DELETE of their 12 undo records. What the
    /// database alone costs AT, whoever sends it: its ratio to `Direct` bounds any AT
    /// implementation's where the database is the bottleneck.
    DirectAt,
}

struct Run {
    transfers: usize,
    errors: usize,
    latencies: Vec<Duration>,
    /// Global modes: each transfer's begin, branch a, branch b and commit, in that order.
    phases: Vec<[Duration; 4]>,
    /// Every mode: each successful branch's BEGIN, statement and COMMIT, as its client
    /// waited for them.
    inside: Vec<[Duration; 3]>,
    elapsed: Duration,
    /// CPU time (user + system) each watched process spent during the run.
    cpu: Vec<Duration>,
    /// How much each of [`SERVER_COUNTERS`] grew during the run (empty: not read).
    server: Vec<u64>,
}

/// Processes whose CPU time is reported per transfer: `BENCH_PIDS="proxy:123 mariadbd:45"`.
/// The load generator itself is always watched (`load`): its share bounds what the
/// other processes can have of the machine's cores.
fn watched() -> Vec<(String, u32)> {
    let mut w: Vec<(String, u32)> = std::env::var("BENCH_PIDS")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|w| {
            let (name, pid) = w.rsplit_once(':')?;
            Some((name.to_string(), pid.parse().ok()?))
        })
        .collect();
    w.push(("load".to_string(), std::process::id()));
    w
}

/// Clock ticks per second of `/proc` times (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks() -> u64 {
    static HZ: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&hz| hz > 0)
            .unwrap_or(100)
    })
}

/// User + system CPU time of a process so far (`/proc/<pid>/stat`, fields 14 and 15).
fn cpu_of(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // The command name (field 2) may hold spaces: count fields after its closing paren.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    Duration::from_micros(f.iter().sum::<u64>() * 1_000_000 / clock_ticks())
}

/// MariaDB's own counters read around each run (`SHOW GLOBAL STATUS`), printed per transfer:
/// what the server ran for the mode, whoever sent it (the clients, the proxy's phase one,
/// its phase-two deletes, sentinel and housekeeping). `Com_*` counts each statement of a
/// multi-statement query; `Com_stmt_execute` counts binary-protocol executions, which are
/// counted under their statement too.
const SERVER_COUNTERS: [(&str, &str, bool); 15] = [
    ("Com_begin", "BEGIN", true),
    ("Com_select", "SELECT", true),
    ("Com_update", "UPDATE", true),
    ("Com_insert", "INSERT", true),
    ("Com_delete", "DELETE", true),
    ("Com_commit", "COMMIT", true),
    ("Com_rollback", "ROLLBACK", true),
    ("Com_do", "DO", true),
    ("Com_xa_start", "XA START", true),
    ("Com_xa_end", "XA END", true),
    ("Com_xa_prepare", "XA PREPARE", true),
    ("Com_xa_commit", "XA COMMIT", true),
    ("Com_xa_rollback", "XA ROLLBACK", true),
    // Not statements of their own: the binary-protocol share of the above, and the
    // server's durable writes.
    ("Com_stmt_execute", "of them binary executes", false),
    ("Innodb_data_fsyncs", "InnoDB fsyncs", false),
];

/// The current values of [`SERVER_COUNTERS`], `None` when the server cannot be asked.
async fn server_counters(direct: &str) -> Option<Vec<u64>> {
    let mut c = Conn::new(opts(direct, "rwb_at_a")).await.ok()?;
    // Some status values are NULL (`Max_memory_used`), hence the `Option`.
    let rows: Vec<(String, Option<String>)> = c.query("SHOW GLOBAL STATUS").await.ok()?;
    let _ = c.disconnect().await;
    let get = |name: &str| {
        rows.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_deref()?.parse().ok())
    };
    // A counter this server does not have reads 0 (and is left out of the line).
    Some(
        SERVER_COUNTERS
            .iter()
            .map(|(n, _, _)| get(n).unwrap_or(0))
            .collect(),
    )
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
    inside: &mut Vec<[Duration; 3]>,
) -> mysql_async::Result<()> {
    let sql = match xid {
        Some((hint, x)) => {
            format!("/*+ {hint}('{x}') */ UPDATE account SET balance = balance + ? WHERE id = ?")
        }
        None => "UPDATE account SET balance = balance + ? WHERE id = ?".to_string(),
    };
    let mut steps = Steps::<3>::new();
    c.query_drop("BEGIN").await?;
    steps.mark(0);
    if let Err(e) = c.exec_drop(sql, (amount(cents), id)).await {
        // As an application would: end the local transaction, so a failed transfer
        // neither keeps its row locks nor leaves the connection bound to its XID.
        let _ = c.query_drop("ROLLBACK").await;
        return Err(e);
    }
    steps.mark(1);
    c.query_drop("COMMIT").await?;
    steps.mark(2);
    inside.push(steps.marks);
    Ok(())
}

/// The time each of `N` consecutive steps took: step `i` ends at `mark(i)`, the first
/// starts at `new()`. A branch's BEGIN, statement and COMMIT; a global transfer's begin,
/// branches and commit.
struct Steps<const N: usize> {
    marks: [Duration; N],
    lap: Instant,
}

impl<const N: usize> Steps<N> {
    fn new() -> Self {
        Steps {
            marks: [Duration::ZERO; N],
            lap: Instant::now(),
        }
    }

    fn mark(&mut self, i: usize) {
        self.marks[i] = self.lap.elapsed();
        self.lap = Instant::now();
    }
}

/// What leads a text statement: nothing, a BARRIER for a consumer (a fresh message id),
/// or an XID.
enum TextHint<'a> {
    None,
    Barrier(&'a str),
    Xid(&'a str),
}

/// `cents` as a DECIMAL literal (`-12.34`).
fn amount(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", cents.abs() / 100, cents.abs() % 100)
}

/// One local transaction in the text protocol: BEGIN, `statement`, then `commit` (COMMIT,
/// or statements ending with one), each a query; rolled back if either fails.
async fn text_branch(
    c: &mut Conn,
    statement: String,
    commit: String,
    inside: &mut Vec<[Duration; 3]>,
) -> mysql_async::Result<()> {
    let mut steps = Steps::<3>::new();
    c.query_drop("BEGIN").await?;
    steps.mark(0);
    for (i, sql) in [statement, commit].into_iter().enumerate() {
        if let Err(e) = c.query_drop(sql).await {
            // As an application would (after a failed COMMIT it is a no-op).
            let _ = c.query_drop("ROLLBACK").await;
            return Err(e);
        }
        steps.mark(i + 1);
    }
    inside.push(steps.marks);
    Ok(())
}

/// One local transaction updating one account, in the text protocol, under `hint`.
async fn local_text(
    c: &mut Conn,
    hint: TextHint<'_>,
    id: i64,
    cents: i64,
    inside: &mut Vec<[Duration; 3]>,
) -> mysql_async::Result<()> {
    let hint = match hint {
        TextHint::Barrier(consumer) => format!(
            "/*+ BARRIER('{consumer}', '{:032x}') */ ",
            rand::random::<u128>()
        ),
        TextHint::Xid(xid) => format!("/*+ XID('{xid}') */ "),
        TextHint::None => String::new(),
    };
    let amount = amount(cents);
    let sql = format!("{hint}UPDATE account SET balance = balance + {amount} WHERE id = {id}");
    text_branch(c, sql, "COMMIT".into(), inside).await
}

/// The size of the undo records the proxy writes for one row of `account` (sampled from
/// `rewind.undo_log` under `bench/at`: 518 bytes on average).
const UNDO_RECORD_LEN: usize = 518;

/// One branch of `Mode::DirectAt` on `c`: AT's statements for one account, the undo
/// record into `undo` (`<schema>.undo_log`, the proxy's table's definition) under
/// (`xid`, `branch`).
async fn at_statements(
    c: &mut Conn,
    undo: &str,
    xid: &str,
    branch: u64,
    id: i64,
    cents: i64,
    inside: &mut Vec<[Duration; 3]>,
) -> mysql_async::Result<()> {
    let amount = amount(cents);
    let record = "7b".repeat(UNDO_RECORD_LEN);
    let images = format!(
        "SELECT `id`, `balance` FROM `account` WHERE id = {id} FOR UPDATE;\n\
         UPDATE `account` SET balance = balance + {amount} WHERE `id` = {id};\n\
         SELECT `id`, `balance` FROM `account` WHERE `id` = {id}"
    );
    let commit = format!(
        "INSERT INTO {undo} (branch_id, xid, context, rollback_info, log_status, \
         log_created, log_modified) VALUES ({branch}, '{xid}', 'json', X'{record}', 0, \
         UTC_TIMESTAMP(6), UTC_TIMESTAMP(6));\nCOMMIT"
    );
    text_branch(c, images, commit, inside).await
}

/// Whether `r` succeeded; a failure is printed to stderr (`bench/at` shows it).
fn succeeded<T, E: std::fmt::Display>(r: Result<T, E>) -> bool {
    if let Err(e) = &r {
        eprintln!("transfer failed: {e}");
    }
    r.is_ok()
}

async fn client(
    mode: Mode,
    target: String,
    grpc: String,
    accounts: i64,
    stop: Arc<AtomicBool>,
) -> (
    usize,
    usize,
    Vec<Duration>,
    Vec<[Duration; 4]>,
    Vec<[Duration; 3]>,
) {
    let mut a = Conn::new(opts(&target, "rwb_at_a"))
        .await
        .expect("connect a");
    let mut b = Conn::new(opts(&target, "rwb_at_b"))
        .await
        .expect("connect b");
    let mut tm = TransactionManagerClient::connect(grpc)
        .await
        .expect("coordinator");
    let (mut done, mut errors, mut lat, mut phases) = (0, 0, Vec::new(), Vec::new());
    let mut inside = Vec::new();
    // `Mode::DirectAt`: undo records written and not yet deleted.
    let mut undone: Vec<(String, u64)> = Vec::new();
    let undo = "`rwb_at_a`.`undo_log`";
    if mode == Mode::DirectAt {
        a.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS {undo} LIKE `rewind`.`undo_log`"
        ))
        .await
        .expect("undo table");
    }
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
                local(&mut a, None, from, -cents, &mut inside).await.is_ok()
                    && local(&mut b, None, to, cents, &mut inside).await.is_ok()
            }
            Mode::DirectAt => {
                let xid = format!("rw-{}", rand::random::<u64>() >> 1);
                let (ba, bb) = (rand::random::<u64>() >> 1, rand::random::<u64>() >> 1);
                let ok = succeeded(
                    at_statements(&mut a, undo, &xid, ba, from, -cents, &mut inside).await,
                ) && succeeded(
                    at_statements(&mut b, undo, &xid, bb, to, cents, &mut inside).await,
                );
                undone.push((xid.clone(), ba));
                undone.push((xid, bb));
                // Phase two: the records deleted in batches, off the transfer's path.
                if undone.len() >= 12 {
                    let keys: Vec<String> = undone
                        .drain(..)
                        .map(|(x, b)| format!("('{x}', {b})"))
                        .collect();
                    let _ = succeeded(
                        a.query_drop(format!(
                            "DELETE FROM {undo} WHERE (xid, branch_id) IN ({})",
                            keys.join(", ")
                        ))
                        .await,
                    );
                }
                ok
            }
            Mode::LocalText | Mode::Barrier => {
                let (ca, cb) = match mode {
                    Mode::Barrier => (TextHint::Barrier("bench-a"), TextHint::Barrier("bench-b")),
                    _ => (TextHint::None, TextHint::None),
                };
                local_text(&mut a, ca, from, -cents, &mut inside)
                    .await
                    .is_ok()
                    && local_text(&mut b, cb, to, cents, &mut inside).await.is_ok()
            }
            Mode::Global | Mode::GlobalXa | Mode::GlobalText => {
                let hint = if mode == Mode::GlobalXa { "XA" } else { "XID" };
                let mut steps = Steps::<4>::new();
                let xid = tm
                    .begin(BeginRequest {
                        name: "bench".into(),
                        timeout_ms: 30_000,
                    })
                    .await
                    .expect("begin")
                    .into_inner()
                    .xid;
                steps.mark(0);
                let text = mode == Mode::GlobalText;
                let ok = succeeded(if text {
                    local_text(&mut a, TextHint::Xid(&xid), from, -cents, &mut inside).await
                } else {
                    local(&mut a, Some((hint, &xid)), from, -cents, &mut inside).await
                }) && {
                    steps.mark(1);
                    succeeded(if text {
                        local_text(&mut b, TextHint::Xid(&xid), to, cents, &mut inside).await
                    } else {
                        local(&mut b, Some((hint, &xid)), to, cents, &mut inside).await
                    })
                };
                let req = GlobalRequest { xid };
                if ok {
                    steps.mark(2);
                    let ok = succeeded(tm.commit(req).await);
                    steps.mark(3);
                    if ok {
                        phases.push(steps.marks);
                    }
                    ok
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
    (done, errors, lat, phases, inside)
}

async fn run(
    mode: Mode,
    target: &str,
    direct: &str,
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
    let pids = watched();
    let cpu_before: Vec<Duration> = pids.iter().map(|(_, p)| cpu_of(*p)).collect();
    let server_before = server_counters(direct).await;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut r = Run {
        transfers: 0,
        errors: 0,
        latencies: Vec::new(),
        phases: Vec::new(),
        inside: Vec::new(),
        elapsed: Duration::ZERO,
        cpu: Vec::new(),
        server: Vec::new(),
    };
    for t in tasks {
        let (d, e, l, p, b) = t.await.expect("client");
        r.transfers += d;
        r.errors += e;
        r.latencies.extend(l);
        r.phases.extend(p);
        r.inside.extend(b);
    }
    r.elapsed = started.elapsed();
    r.cpu = pids
        .iter()
        .zip(cpu_before)
        .map(|((_, p), b)| cpu_of(*p).saturating_sub(b))
        .collect();
    if let (Some(b), Some(a)) = (server_before, server_counters(direct).await) {
        r.server = a.iter().zip(b).map(|(a, b)| a.saturating_sub(b)).collect();
    }
    r.latencies.sort();
    r
}

fn pct(l: &[Duration], p: f64) -> f64 {
    if l.is_empty() {
        return 0.0;
    }
    l[((l.len() as f64 * p) as usize).min(l.len() - 1)].as_secs_f64() * 1e3
}

/// The median of column `i` of `rows` (one row of step times per transfer or branch), in ms.
fn column_p50<const N: usize>(rows: &[[Duration; N]], i: usize) -> f64 {
    let mut l: Vec<Duration> = rows.iter().map(|p| p[i]).collect();
    l.sort();
    pct(&l, 0.50)
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
    // `BENCH_MODES="local global"`: only the modes whose names contain one of these words
    // (the ratios then print only where both sides ran).
    let only: Vec<String> = std::env::var("BENCH_MODES")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let mut results = [f64::NAN; 8];
    for (i, (name, mode, target)) in [
        ("direct MariaDB, local", Mode::Direct, direct),
        ("proxy, local (no XID)", Mode::Local, proxy),
        ("proxy, global (AT)", Mode::Global, proxy),
        ("proxy, global (XA)", Mode::GlobalXa, proxy),
        ("proxy, local, text", Mode::LocalText, proxy),
        ("proxy, local + BARRIER", Mode::Barrier, proxy),
        ("proxy, global (AT), text", Mode::GlobalText, proxy),
        ("direct MariaDB, AT's statements", Mode::DirectAt, direct),
    ]
    .into_iter()
    .enumerate()
    {
        if !only.is_empty() && !only.iter().any(|w| name.contains(w.as_str())) {
            continue;
        }
        // A short warm-up per mode (connections, prepared statements, table metadata).
        run(mode, target, direct, grpc, clients, 2, accounts).await;
        let r = run(mode, target, direct, grpc, clients, secs, accounts).await;
        let tps = r.transfers as f64 / r.elapsed.as_secs_f64();
        println!(
            "{name:<24} transfers/s {tps:>8.1}   p50 {:>7.2} ms   p99 {:>7.2} ms   errors {}",
            pct(&r.latencies, 0.50),
            pct(&r.latencies, 0.99),
            r.errors
        );
        if !r.cpu.is_empty() && r.transfers > 0 {
            let per: Vec<String> = watched()
                .iter()
                .zip(&r.cpu)
                .map(|((name, _), c)| {
                    format!("{name} {:.0}", c.as_secs_f64() * 1e6 / r.transfers as f64)
                })
                .collect();
            println!("{:<24} CPU µs per transfer: {}", "", per.join(", "));
        }
        if !r.server.is_empty() && r.transfers > 0 {
            let per = |n: u64| n as f64 / r.transfers as f64;
            let statements: u64 = SERVER_COUNTERS
                .iter()
                .zip(&r.server)
                .filter(|((_, _, statement), _)| *statement)
                .map(|(_, &n)| n)
                .sum();
            let each: Vec<String> = SERVER_COUNTERS
                .iter()
                .zip(&r.server)
                .filter(|(_, &n)| per(n) >= 0.005)
                .map(|((_, label, _), &n)| format!("{label} {:.2}", per(n)))
                .collect();
            println!(
                "{:<24} MariaDB per transfer: {:.2} statements; {}",
                "",
                per(statements),
                each.join(", ")
            );
        }
        if !r.inside.is_empty() {
            let p50 = |i| column_p50(&r.inside, i);
            println!(
                "{:<24} p50 ms inside a branch: BEGIN {:.2}, statement {:.2}, COMMIT {:.2}",
                "",
                p50(0),
                p50(1),
                p50(2)
            );
        }
        if !r.phases.is_empty() {
            let p50 = |i| column_p50(&r.phases, i);
            println!(
                "{:<24} p50 ms of each step: begin {:.2}, branch a {:.2}, branch b {:.2}, commit {:.2}",
                "",
                p50(0),
                p50(1),
                p50(2),
                p50(3)
            );
        }
        results[i] = tps;
    }
    let ratio = |label: &str, a: usize, b: usize, goal: &str| {
        let r = results[a] / results[b];
        if r.is_finite() {
            println!("ratio {label:<34} {r:.3}   {goal}");
        }
    };
    ratio("global/local (through the proxy):", 2, 1, "(goal >= 0.3)");
    ratio("XA global/local (proxy):", 3, 1, "");
    ratio("XA global/AT global:", 3, 2, "");
    ratio("global/direct MariaDB:", 2, 0, "");
    ratio("local through proxy/direct:", 1, 0, "");
    ratio("with BARRIER/without (text):", 5, 4, "(goal: cost <= 10 %)");
    ratio("global/local, text protocol:", 6, 4, "");
    ratio("AT text/AT binary protocol:", 6, 2, "");
    ratio(
        "AT's statements/local, direct:",
        7,
        0,
        "(MariaDB and load only: no proxy, no coordinator)",
    );
    ratio(
        "AT text via proxy/AT's statements:",
        6,
        7,
        "(what the proxy and coordinator keep of it)",
    );
}
