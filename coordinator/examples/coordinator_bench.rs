//! Load generator for `bench/coordinator`: global transactions of begin → 2 branch
//! registrations (3 lock keys each) → commit, from N concurrent clients against a
//! running coordinator (durability on), with a fake proxy answering phase two. Then
//! holds many locks and reports memory per held lock.
//!
//! usage: [BENCH_FOLLOWER_PIDS=pid,pid] coordinator_bench <grpc addr> <http addr> <coordinator pid> [clients] [seconds]
//!        coordinator_bench failover <grpc addr,grpc addr,...> <leader pid>
//!
//! `failover` (for `bench/coordinator-cluster`): commits small global transactions in a
//! loop, kill -9s the leader, and prints the time from the kill to the first global
//! transaction committed on the new leader.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rewind_protocol::v1::{
    branch_result, coordinator_message, proxy_message, register_branch_response, Announce,
    BeginRequest, BranchResult, Done, GlobalRequest, LockKey, ProxyMessage, RegisterBranchRequest,
    TableLocksAck,
};
use rewind_protocol::{ResourceManagerClient, TransactionManagerClient};
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

fn rss_kb(pid: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user + system) a process used so far (clock ticks at 100 Hz).
fn cpu_secs(pid: &str) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

async fn metric(http: &str, name: &str) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(http).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn key(res: &str, parts: &[u64]) -> LockKey {
    LockKey {
        resource_id: res.into(),
        table: "orders".into(),
        pk: parts.iter().map(|p| p.to_string().into_bytes()).collect(),
    }
}

async fn fake_proxy(channel: Channel) {
    let mut rm = ResourceManagerClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(65_536);
    tx.send(ProxyMessage {
        kind: Some(proxy_message::Kind::Announce(Announce {
            proxy_id: "bench".into(),
            resource_ids: vec!["db1".into(), "db2".into()],
        })),
    })
    .await
    .unwrap();
    let mut inbound = rm
        .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tokio::spawn(async move {
        while let Some(Ok(m)) = inbound.next().await {
            // A real proxy confirms each write-isolation set once its older writes are
            // done; this one has none, so it confirms at once (without it every
            // registration waits out write_isolation_wait_ms and is refused).
            if let Some(coordinator_message::Kind::TableLocks(t)) = &m.kind {
                let ack = TableLocksAck {
                    epoch: t.epoch,
                    resource_id: t.resource_id.clone(),
                };
                if tx
                    .send(ProxyMessage {
                        kind: Some(proxy_message::Kind::TableLocksAck(ack)),
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            if let Some(coordinator_message::Kind::BranchCommand(c)) = m.kind {
                let r = BranchResult {
                    command_id: c.command_id,
                    xid: c.xid,
                    branch_id: c.branch_id,
                    outcome: Some(branch_result::Outcome::Done(Done {})),
                };
                if tx
                    .send(ProxyMessage {
                        kind: Some(proxy_message::Kind::BranchResult(r)),
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
}

async fn one_tx(grpc: &str) -> Result<(), String> {
    let ch = Endpoint::from_shared(format!("http://{grpc}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_millis(200))
        .timeout(Duration::from_millis(2000))
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let mut tm = TransactionManagerClient::new(ch);
    let xid = tm
        .begin(BeginRequest {
            name: "failover".into(),
            timeout_ms: 60_000,
        })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner()
        .xid;
    tm.commit(GlobalRequest { xid })
        .await
        .map_err(|e| e.message().to_string())?;
    Ok(())
}

async fn failover(grpcs: &str, pid: &str) {
    let nodes: Vec<&str> = grpcs.split(',').collect();
    // Warm: the leader commits.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        if commits_somewhere(&nodes).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed = Instant::now();
    let _ = std::process::Command::new("kill")
        .args(["-9", pid])
        .status();
    loop {
        if commits_somewhere(&nodes).await {
            break;
        }
        if killed.elapsed() > Duration::from_secs(30) {
            println!("failover: no commit within 30 s");
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "failover: first commit on the new leader {:.0} ms after kill -9",
        killed.elapsed().as_secs_f64() * 1e3
    );
}

/// Whether a global transaction commits on any node (followers refuse, so it is the
/// leader that commits).
async fn commits_somewhere(nodes: &[&str]) -> bool {
    for n in nodes {
        if one_tx(n).await.is_ok() {
            return true;
        }
    }
    false
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("failover") {
        return failover(&args[2], &args[3]).await;
    }
    let (grpc, http, pid) = (args[1].clone(), args[2].clone(), args[3].clone());
    let clients: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(64);
    let secs: u64 = args.get(5).and_then(|a| a.parse().ok()).unwrap_or(15);
    let endpoint = Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .tcp_nodelay(true);
    let channels: Vec<Channel> = {
        let mut v = Vec::new();
        for _ in 0..8 {
            v.push(endpoint.connect().await.unwrap());
        }
        v
    };
    fake_proxy(channels[0].clone()).await;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let warmup = Duration::from_secs(2);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let ch = channels[c % channels.len()].clone();
        let (stop, done, errors) = (stop.clone(), done.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut tm = TransactionManagerClient::new(ch.clone());
            let mut rm = ResourceManagerClient::new(ch);
            let mut lat = Vec::with_capacity(100_000);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let t0 = Instant::now();
                let ok: Result<(), tonic::Status> = async {
                    let xid = tm
                        .begin(BeginRequest {
                            name: String::new(),
                            timeout_ms: 60_000,
                        })
                        .await?
                        .into_inner()
                        .xid;
                    for (b, res) in ["db1", "db2"].iter().enumerate() {
                        let keys = (0..3)
                            .map(|k| key(res, &[c as u64, n, b as u64 * 3 + k]))
                            .collect();
                        let r = rm
                            .register_branch(RegisterBranchRequest {
                                xid: xid.clone(),
                                resource_id: res.to_string(),
                                lock_keys: keys,
                                request_id: format!("{c}-{n}-{b}"),
                                ..Default::default()
                            })
                            .await?
                            .into_inner();
                        // Keys are unique per transaction: anything but a grant is an error.
                        if !matches!(
                            r.outcome,
                            Some(register_branch_response::Outcome::Registered(_))
                        ) {
                            return Err(tonic::Status::aborted(format!("not registered: {r:?}")));
                        }
                    }
                    tm.commit(GlobalRequest { xid }).await?;
                    Ok(())
                }
                .await;
                match ok {
                    Ok(()) if t0 >= start + warmup => {
                        lat.push(t0.elapsed().as_micros() as u64);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(()) => {}
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    // In a cluster, the other members' CPU too (`BENCH_FOLLOWER_PIDS`, comma-separated):
    // they run on the same cores.
    let followers: Vec<String> = std::env::var("BENCH_FOLLOWER_PIDS")
        .unwrap_or_default()
        .split(',')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    let followers_cpu = || followers.iter().map(|p| cpu_secs(p)).sum::<f64>();
    tokio::time::sleep(warmup).await;
    let cpu0 = (cpu_secs(&pid), cpu_secs("self"), followers_cpu());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let cpu1 = (cpu_secs(&pid), cpu_secs("self"), followers_cpu());
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let n = done.load(Ordering::Relaxed);
    println!(
        "clients: {clients}, measured: {secs} s after {} s warm-up, durability: fsync per batch",
        warmup.as_secs()
    );
    println!(
        "global transactions/s: {:.0}  (each: begin + 2 registers x 3 keys + commit)",
        n as f64 / secs as f64
    );
    println!(
        "latency per global tx: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.50) as f64 / 1e3,
        pct(0.99) as f64 / 1e3,
        pct(1.0) as f64 / 1e3
    );
    println!("errors: {}", errors.load(Ordering::Relaxed));
    let per_tx = |secs: f64| secs * 1e6 / n.max(1) as f64;
    if followers.is_empty() {
        println!(
            "CPU per global tx: coordinator {:.0} us, load generator {:.0} us (2 cores shared by both)",
            per_tx(cpu1.0 - cpu0.0),
            per_tx(cpu1.1 - cpu0.1)
        );
    } else {
        println!(
            "CPU per global tx: leader {:.0} us, the {} other members {:.0} us, load generator {:.0} us (cores: {}, shared by all)",
            per_tx(cpu1.0 - cpu0.0),
            followers.len(),
            per_tx(cpu1.2 - cpu0.2),
            per_tx(cpu1.1 - cpu0.1),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
    }
    let batches = metric(&http, "rewind_write_batches_total").await;
    let syncs = metric(&http, "rewind_write_syncs_total").await;
    let reqs = metric(&http, "rewind_write_batch_requests_total").await;
    println!(
        "write batches: {batches:.0} ({syncs:.0} with a sync of their own), acknowledged requests per batch: {:.1}",
        reqs / batches.max(1.0)
    );

    // Memory per held lock: hold N locks in open transactions, compare.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss0 = rss_kb(&pid);
    let locks0 = metric(&http, "rewind_locks_held").await;
    let bytes0 = metric(&http, "rewind_lock_table_bytes").await;
    let mut tm = TransactionManagerClient::new(channels[1].clone());
    let mut rm = ResourceManagerClient::new(channels[1].clone());
    let per_branch = 2_000u64;
    let branches = 100u64;
    for b in 0..branches {
        let xid = tm
            .begin(BeginRequest {
                name: "hold".into(),
                timeout_ms: 600_000,
            })
            .await
            .unwrap()
            .into_inner()
            .xid;
        let keys = (0..per_branch)
            .map(|k| key("db1", &[1_000_000 + b, k]))
            .collect();
        rm.register_branch(RegisterBranchRequest {
            xid,
            resource_id: "db1".into(),
            lock_keys: keys,
            request_id: format!("hold-{b}"),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = metric(&http, "rewind_locks_held").await - locks0;
    let bytes = metric(&http, "rewind_lock_table_bytes").await - bytes0;
    let rss1 = rss_kb(&pid);
    println!(
        "held locks: {held:.0} (pk = 2 numeric columns); lock table: {:.0} bytes/lock; process RSS growth: {:.0} bytes/lock (includes the branch's own copy of its keys)",
        bytes / held.max(1.0),
        (rss1.saturating_sub(rss0) * 1024) as f64 / held.max(1.0)
    );
}
