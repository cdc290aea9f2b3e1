//! The bank: accounts in two schemas behind two proxy processes (two resources), 16
//! workers making transfers as global transactions; a share rolled back, a share left to
//! time out. Afterwards every account holds exactly its opening balance plus the transfers
//! whose global transaction committed (so the total is unchanged), no undo record and no
//! global lock is left, and every transaction ended in a final status. Once in AT mode,
//! once in XA mode with one proxy killed -9 and restarted mid-run (then no prepared XA
//! transaction may be left either).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use rand::Rng;
use rewind_test_support::*;

const ACCOUNTS: i64 = 12;
const WORKERS: usize = 16;
const TRANSFERS_PER_WORKER: usize = 12;
const OPENING: i64 = 100_000; // cents

#[derive(Debug, Clone, Copy, PartialEq)]
enum Plan {
    Commit,
    Rollback,
    TimeOut,
}

struct Transfer {
    xid: String,
    from: i64,
    to: i64,
    cents: i64,
}

async fn setup(db: &str) {
    fresh_db(db).await;
    let mut c = direct(db).await;
    c.query_drop("CREATE TABLE account (id INT PRIMARY KEY, balance DECIMAL(14,2) NOT NULL, updated TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6))")
        .await
        .unwrap();
    for id in 1..=ACCOUNTS {
        c.exec_drop(
            "INSERT INTO account (id, balance) VALUES (?, ?)",
            (id, format!("{}.{:02}", OPENING / 100, OPENING % 100)),
        )
        .await
        .unwrap();
    }
    c.disconnect().await.unwrap();
}

async fn balances(db: &str) -> HashMap<i64, i64> {
    let mut c = direct(db).await;
    let rows: Vec<(i64, String)> = c
        .query("SELECT id, CAST(balance * 100 AS SIGNED) FROM account")
        .await
        .unwrap();
    c.disconnect().await.unwrap();
    rows.into_iter()
        .map(|(id, cents)| (id, cents.parse().unwrap()))
        .collect()
}

/// One local branch: BEGIN; tagged UPDATE; COMMIT. `false` when the proxy refused it
/// (a global lock stayed held: 1205), which leaves nothing behind.
async fn branch(
    conn: &mut mysql_async::Conn,
    xid: &str,
    id: i64,
    delta: i64,
) -> Result<(), (u16, String)> {
    let sql = format!("/*+ XID('{xid}') */ UPDATE account SET balance = balance + ? WHERE id = ?");
    let amount = format!(
        "{}{}.{:02}",
        if delta < 0 { "-" } else { "" },
        delta.abs() / 100,
        delta.abs() % 100
    );
    conn.query_drop("BEGIN").await.map_err(err)?;
    if let Err(e) = conn.exec_drop(sql, (amount, id)).await {
        let _ = conn.query_drop("ROLLBACK").await;
        return Err(err(e));
    }
    conn.query_drop("COMMIT").await.map_err(err)
}

fn err(e: mysql_async::Error) -> (u16, String) {
    match e {
        mysql_async::Error::Server(s) => (s.code, s.message),
        other => (0, other.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t20_concurrent_transfers_keep_every_balance_exact() {
    bank(false).await;
}

/// The bank in XA mode (`branch_mode = "xa"`: the same tagged SQL), with proxy b killed -9
/// and restarted while transfers run: branches it had prepared are finished by the
/// restarted proxy or by recovery, whatever the coordinator decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t20_xa_transfers_keep_every_balance_exact_across_a_proxy_kill() {
    bank(true).await;
}

/// A session's connection to a proxy, made again after the proxy was killed.
async fn connect(opts: &mysql_async::OptsBuilder, xa: bool) -> mysql_async::Conn {
    for _ in 0..200 {
        if let Ok(mut c) = mysql_async::Conn::new(opts.clone()).await {
            if xa {
                // A prepared branch holds its row locks until phase two; a transfer waiting
                // on one held by a transfer waiting on it (across the two databases, which
                // no single database sees) gives up quickly instead of after 50 s.
                if c.query_drop("SET SESSION innodb_lock_wait_timeout = 2")
                    .await
                    .is_err()
                {
                    continue;
                }
            }
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot connect to the proxy");
}

async fn bank(xa: bool) {
    let tag = if xa { "xa" } else { "at" };
    let dir = TempDir::new(&format!("bank-{tag}"));
    let coord = Arc::new(Coordinator::start(&dir, &["--config", &write_config(&dir)]).await);
    let proxy_cfg = dir.0.join("proxy.toml");
    std::fs::write(
        &proxy_cfg,
        format!("branch_mode = \"{tag}\"\nxa_recovery_secs = 1\n"),
    )
    .unwrap();
    let proxy_cfg = proxy_cfg.display().to_string();
    let (db_a, db_b) = (format!("rwt_bank_{tag}_a"), format!("rwt_bank_{tag}_b"));
    let admin = free_addr();
    let a = Proxy::start(
        &dir,
        "proxy-a",
        &coord.grpc_url(),
        &[
            "--resource-id",
            "bank-a",
            "--config",
            &proxy_cfg,
            "--admin-addr",
            &admin.to_string(),
        ],
    )
    .await;
    let mut b = Proxy::start(
        &dir,
        "proxy-b",
        &coord.grpc_url(),
        &[
            "--resource-id",
            "bank-b",
            "--config",
            &proxy_cfg,
            "--admin-addr",
            "",
        ],
    )
    .await;
    setup(&db_a).await;
    setup(&db_b).await;
    let (pa, pb) = (a.opts(&db_a), b.opts(&db_b));

    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (coord, pa, pb) = (coord.clone(), pa.clone(), pb.clone());
        workers.push(tokio::spawn(async move {
            let mut ca = connect(&pa, xa).await;
            let mut cb = connect(&pb, xa).await;
            let mut done = Vec::new();
            for i in 0..TRANSFERS_PER_WORKER {
                let (from, to, cents, plan, a_to_b) = {
                    let mut rng = rand::rng();
                    let roll = rng.random_range(0..100);
                    (
                        rng.random_range(1..=ACCOUNTS),
                        rng.random_range(1..=ACCOUNTS),
                        rng.random_range(1..5_000),
                        if roll < 65 {
                            Plan::Commit
                        } else if roll < 88 {
                            Plan::Rollback
                        } else {
                            Plan::TimeOut
                        },
                        (w + i) % 2 == 0,
                    )
                };
                let timeout = if plan == Plan::TimeOut { 1_500 } else { 60_000 };
                let xid = coord.begin(timeout).await;
                // Debit one side, credit the other; either branch may be refused.
                let (first, second) = if a_to_b {
                    (
                        branch(&mut ca, &xid, from, -cents).await,
                        branch(&mut cb, &xid, to, cents).await,
                    )
                } else {
                    (
                        branch(&mut cb, &xid, from, -cents).await,
                        branch(&mut ca, &xid, to, cents).await,
                    )
                };
                let ok = first.is_ok() && second.is_ok();
                for r in [&first, &second] {
                    if let Err((code, msg)) = r {
                        // Lock waits give up (1205); a transaction left to time out may
                        // do so before its second branch (1397). In XA mode the killed
                        // proxy drops connections (no code) and refuses to start while
                        // it is down, and an XA branch whose PREPARE or registration
                        // failed says it was rolled back (1402).
                        let xa_ok = xa && matches!(*code, 0 | 1402 | 2013 | 1927);
                        assert!(
                            *code == 1205 || (*code == 1397 && plan == Plan::TimeOut) || xa_ok,
                            "unexpected refusal {code}: {msg}"
                        );
                    }
                }
                if ca.ping().await.is_err() {
                    ca = connect(&pa, xa).await;
                }
                if cb.ping().await.is_err() {
                    cb = connect(&pb, xa).await;
                }
                match plan {
                    Plan::Commit if ok => {
                        coord.commit(&xid).await;
                    }
                    Plan::TimeOut => {}
                    _ => {
                        coord.rollback(&xid).await;
                    }
                }
                let (from_side, to_side) = if a_to_b { ("a", "b") } else { ("b", "a") };
                done.push((
                    Transfer {
                        xid,
                        from,
                        to,
                        cents,
                    },
                    from_side,
                    to_side,
                ));
            }
            done
        }));
    }
    // Proxy a's metrics, scraped while the transfers run.
    let scraping = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let scraper = {
        let scraping = scraping.clone();
        tokio::spawn(async move {
            let (mut scrapes, mut most_sessions) = (0, 0.0f64);
            while scraping.load(std::sync::atomic::Ordering::Relaxed) {
                most_sessions =
                    most_sessions.max(proxy_metric(admin, "rewind_proxy_sessions").await);
                scrapes += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (scrapes, most_sessions)
        })
    };
    if xa {
        // kill -9 of proxy b while transfers run, then a restart on the same port.
        tokio::time::sleep(Duration::from_secs(2)).await;
        b.restart().await;
    }
    let mut transfers = Vec::new();
    for w in workers {
        transfers.extend(w.await.unwrap());
    }
    scraping.store(false, std::sync::atomic::Ordering::Relaxed);
    let (scrapes, most_sessions) = scraper.await.unwrap();
    assert!(scrapes > 0, "no scrape during the run");
    assert!(
        most_sessions >= WORKERS as f64,
        "proxy a served its {WORKERS} workers: {most_sessions} sessions seen"
    );

    // Every transaction reaches a final status (time-outs included).
    let mut expected_a: HashMap<i64, i64> = (1..=ACCOUNTS).map(|i| (i, OPENING)).collect();
    let mut expected_b = expected_a.clone();
    let mut committed = 0;
    for (t, from_side, to_side) in &transfers {
        eventually(
            &format!("{} finishes", t.xid),
            Duration::from_secs(30),
            || async {
                matches!(
                    coord.status(&t.xid).await.as_str(),
                    "committed" | "rolled_back" | "timeout_rolled_back"
                )
            },
        )
        .await;
        if coord.status(&t.xid).await == "committed" {
            committed += 1;
            let side = |s: &str| if s == "a" { 0 } else { 1 };
            for (acct, delta, s) in [
                (t.from, -t.cents, side(from_side)),
                (t.to, t.cents, side(to_side)),
            ] {
                let m = if s == 0 {
                    &mut expected_a
                } else {
                    &mut expected_b
                };
                *m.get_mut(&acct).unwrap() += delta;
            }
        }
    }
    assert!(committed > 0, "some transfers must commit");
    // Every committed transfer had a branch through proxy a whose phase one committed.
    let branches = proxy_metric(
        admin,
        &format!("rewind_proxy_branches_total{{mode=\"{tag}\",outcome=\"committed\"}}"),
    )
    .await;
    assert!(
        branches >= committed as f64,
        "proxy a counted {branches} committed {tag} branches for {committed} committed transfers"
    );
    if xa {
        eventually(
            "no prepared XA branch left",
            Duration::from_secs(30),
            || async {
                xa_prepared("")
                    .await
                    .iter()
                    .all(|(g, _)| !transfers.iter().any(|(t, ..)| &t.xid == g))
            },
        )
        .await;
    }
    assert_eq!(balances(&db_a).await, expected_a, "side a");
    assert_eq!(balances(&db_b).await, expected_b, "side b");
    let total: i64 = balances(&db_a)
        .await
        .values()
        .chain(balances(&db_b).await.values())
        .sum();
    assert_eq!(total, 2 * ACCOUNTS * OPENING);
    eventually("no undo record left", Duration::from_secs(20), || async {
        let mut left = 0;
        for (t, ..) in &transfers {
            left += undo_rows(Some(&t.xid)).await.0;
        }
        left == 0
    })
    .await;
    assert!(coord.locks().await.is_empty(), "global locks left");
    let mut by_status: HashMap<String, usize> = HashMap::new();
    for (t, ..) in &transfers {
        *by_status.entry(coord.status(&t.xid).await).or_default() += 1;
    }
    eprintln!("bank ({tag}) outcomes: {by_status:?}");
    for status in ["committed", "rolled_back", "timeout_rolled_back"] {
        assert!(
            by_status.get(status).copied().unwrap_or(0) > 0,
            "no {status} transfer"
        );
    }
}

/// A fast tick so time-outs are noticed quickly.
fn write_config(dir: &TempDir) -> String {
    let path = dir.0.join("coordinator.toml");
    std::fs::write(&path, "tick_ms = 50\nphase_two_backoff_base_ms = 20\n").unwrap();
    path.display().to_string()
}

/// Twelve branches through one proxy finish phase one at once: the proxy sends their
/// phase-one reports together (the ones queued while a call is on its way go in the next),
/// and the coordinator applies every one of them, so each branch shows `phase_one_done`
/// before any decision. Rolled back afterwards, every row is as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t20_every_phase_one_report_arrives() {
    reports_arrive("bank-reports", "rwt_bank_reports", 0, 0).await;
}

/// The same with `session_threads`: each session thread makes its own channels to the
/// coordinator, and the XID checks, registrations and reports of sessions on both threads
/// all arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t20_every_phase_one_report_arrives_from_session_threads() {
    reports_arrive("bank-reports-threads", "rwt_bank_reports_threads", 2, 0).await;
}

/// The same on a runtime of one worker thread (`worker_threads = 1`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t20_every_phase_one_report_arrives_on_one_worker_thread() {
    reports_arrive("bank-reports-worker", "rwt_bank_reports_worker", 0, 1).await;
}

/// A branch's success report waits for the proxy's next registration to carry it, and a
/// report still waiting when its branch's phase-two command comes is dropped: a global
/// transaction costs no report call of its own. The hold here is a minute, so nothing
/// goes by the clock: the console shows the first branch `phase_one_done` exactly when
/// the second has registered, and the second never reported, committed or rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_reports_ride_on_registrations_or_are_moot() {
    let db = "rwt_bank_reports_ride";
    let dir = TempDir::new("bank-reports-ride");
    setup(db).await;
    let coord = Coordinator::start(&dir, &[]).await;
    let config_file = dir.0.join("proxy.toml");
    std::fs::write(&config_file, "phase_one_report_hold_ms = 60000\n").unwrap();
    let admin: std::net::SocketAddr = free_addr();
    let proxy = Proxy::start(
        &dir,
        "proxy",
        &coord.grpc_url(),
        &[
            "--config",
            config_file.to_str().unwrap(),
            "--admin-addr",
            &admin.to_string(),
        ],
    )
    .await;
    // (in a call, along a registration, moot)
    let sent = || async move {
        let (_, metrics) = http(admin, "GET", "/metrics", None).await.unwrap();
        let text = metrics.as_str().expect("metrics as text").to_string();
        ["call", "registration", "moot"].map(|how| {
            let series = format!("rewind_proxy_phase_one_reports_total{{sent=\"{how}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(series.as_str()))
                .unwrap_or_else(|| panic!("no {series} in the proxy's metrics"))
                .parse::<u64>()
                .unwrap()
        })
    };
    let statuses = |tx: serde_json::Value| {
        tx["branches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["status"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let opening = balances(db).await;
    let mut c = mysql_async::Conn::new(proxy.opts(db)).await.unwrap();

    // Committed: two branches, one after the other.
    let xid = coord.begin(60_000).await;
    add_one(&mut c, &xid, 1).await;
    assert_eq!(sent().await, [0, 0, 0], "the first branch's report is held");
    assert_eq!(statuses(coord.transaction(&xid).await), ["registered"]);
    add_one(&mut c, &xid, 2).await;
    assert_eq!(
        sent().await,
        [0, 1, 0],
        "the second branch's registration carried the first one's report"
    );
    assert_eq!(
        statuses(coord.transaction(&xid).await),
        ["phase_one_done", "registered"]
    );
    coord.commit(&xid).await;
    eventually("the commit finished", Duration::from_secs(20), || async {
        coord.transaction(&xid).await["status"] == "committed"
    })
    .await;
    assert_eq!(
        sent().await,
        [0, 1, 1],
        "the second branch's report was moot once its commit came"
    );

    // Rolled back: a lone branch's held report is moot too, and its row is as it was.
    let xid = coord.begin(60_000).await;
    add_one(&mut c, &xid, 3).await;
    assert_eq!(coord.rollback(&xid).await, "rolled_back");
    assert_eq!(sent().await, [0, 1, 2]);
    c.disconnect().await.unwrap();
    let mut expected = opening;
    *expected.get_mut(&1).unwrap() += 100;
    *expected.get_mut(&2).unwrap() += 100;
    assert_eq!(balances(db).await, expected);
}

/// One branch of `xid` on `c`: account `id` gets 1 more, committed locally.
async fn add_one(c: &mut mysql_async::Conn, xid: &str, id: i64) {
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop(format!(
        "/*+ XID('{xid}') */ UPDATE account SET balance = balance + 1 WHERE id = {id}"
    ))
    .await
    .unwrap();
    c.query_drop("COMMIT").await.unwrap();
}

/// `session_threads`, `worker_threads`: the proxy's (0: the default shape).
async fn reports_arrive(name: &str, db: &str, session_threads: usize, worker_threads: usize) {
    let dir = TempDir::new(name);
    setup(db).await;
    let coord = Arc::new(Coordinator::start(&dir, &[]).await);
    let config_file = dir.0.join("proxy.toml");
    std::fs::write(
        &config_file,
        format!("session_threads = {session_threads}\nworker_threads = {worker_threads}\n"),
    )
    .unwrap();
    let config_arg = config_file.to_str().unwrap();
    let admin = free_addr().to_string();
    let proxy = Proxy::start(
        &dir,
        "proxy",
        &coord.grpc_url(),
        &["--config", config_arg, "--admin-addr", &admin],
    )
    .await;
    // The runtime the proxy was asked for: one worker per core unless set.
    let (_, metrics) = http(admin.parse().unwrap(), "GET", "/metrics", None)
        .await
        .unwrap();
    let workers = metrics
        .as_str()
        .expect("metrics as text")
        .lines()
        .find_map(|l| l.strip_prefix("rewind_proxy_runtime_workers "))
        .expect("the runtime's worker count")
        .parse::<usize>()
        .unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(
        workers,
        if worker_threads > 0 {
            worker_threads
        } else {
            cores
        },
        "worker threads of the proxy's runtime"
    );
    let opening = balances(db).await;
    let mut sessions = Vec::new();
    for id in 1..=ACCOUNTS {
        let (coord, opts) = (coord.clone(), proxy.opts(db));
        sessions.push(tokio::spawn(async move {
            let xid = coord.begin(60_000).await;
            let mut c = mysql_async::Conn::new(opts).await.unwrap();
            add_one(&mut c, &xid, id).await;
            c.disconnect().await.unwrap();
            xid
        }));
    }
    let mut xids = Vec::new();
    for s in sessions {
        xids.push(s.await.unwrap());
    }
    // The proxy ran the shape asked for: as many session threads as configured.
    let pid = proxy.process.pid().unwrap().to_string();
    assert_eq!(
        threads_named(&pid, "rewind-session-"),
        session_threads,
        "session threads in the proxy"
    );
    eventually(
        "every branch reported phase_one_done",
        Duration::from_secs(20),
        || async {
            for xid in &xids {
                let tx = coord.transaction(xid).await;
                if tx["branches"][0]["status"] != "phase_one_done" {
                    return false;
                }
            }
            true
        },
    )
    .await;
    for xid in &xids {
        assert_eq!(coord.rollback(xid).await, "rolled_back");
    }
    assert_eq!(balances(db).await, opening);
}
