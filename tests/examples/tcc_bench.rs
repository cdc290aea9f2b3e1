//! Load generator for `bench/tcc`: TCC global transactions with two participants (the
//! example Go service, `tests/go/tcc-participant`), through a running coordinator and
//! proxy. One global transaction: begin, register branch A, Try A, register branch B,
//! Try B, commit; the coordinator then calls both Confirms. Each client uses its own
//! account, so the figures are the machinery's, not row contention.
//!
//! Two modes, alternated twice in one run: the participants with the proxy's fence (the
//! `TCC(…)` hint on Try, Confirm and Cancel) and the same participants without it. After
//! each mode the generator waits until every Confirm was called (phase two drained), and
//! that time counts: the rate is committed-and-confirmed transactions per second.
//!
//! usage: tcc_bench <coordinator http> <fenced a> <fenced b> <plain a> <plain b> <clients> <seconds>

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Target {
    coord: String,
    parts: [String; 2],
}

async fn post(c: &reqwest::Client, url: &str, body: Value) -> Result<Value, String> {
    let r = c
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let text = r.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{url}: {status} {text}"));
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// One global transaction; its xid.
async fn one(c: &reqwest::Client, t: &Target, account: u64) -> Result<String, String> {
    let begin = post(
        c,
        &format!("{}/api/v1/transactions", t.coord),
        json!({"timeout_ms": 60000}),
    )
    .await?;
    let xid = begin["xid"].as_str().ok_or("no xid")?.to_string();
    for p in &t.parts {
        let reg = post(
            c,
            &format!("{}/api/v1/transactions/{xid}/branches", t.coord),
            json!({"type": "tcc", "confirm_url": format!("{p}/confirm"), "cancel_url": format!("{p}/cancel"),
                   "payload": {"account": account, "amount": 1}}),
        )
        .await?;
        let b = reg["branch_id"].as_u64().ok_or("no branch id")?;
        post(
            c,
            &format!("{p}/try"),
            json!({"xid": xid, "branch_id": b, "account": account, "amount": 1}),
        )
        .await?;
    }
    post(
        c,
        &format!("{}/api/v1/transactions/{xid}/commit", t.coord),
        Value::Null,
    )
    .await?;
    Ok(xid)
}

/// Waits until no transaction is still committing (every Confirm called).
async fn drained(c: &reqwest::Client, coord: &str) {
    loop {
        let mut busy = 0;
        for st in ["committing", "commit_retrying"] {
            let r = c
                .get(format!("{coord}/api/v1/transactions?status={st}&limit=1"))
                .send()
                .await
                .expect("list");
            let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
            busy += v.as_array().map_or(0, Vec::len);
        }
        if busy == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Run {
    n: u64,
    errors: u64,
    lat: Vec<Duration>,
    elapsed: Duration,
}

async fn run(t: Arc<Target>, clients: u64, secs: u64) -> Run {
    let c = rewind_test_support::keep_alive_client();
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let (c, t, stop, errors) = (c.clone(), t.clone(), stop.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let s = Instant::now();
                match one(&c, &t, i + 1).await {
                    Ok(_) => lat.push(s.elapsed()),
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("error: {e}");
                        }
                    }
                }
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    drained(&c, &t.coord).await;
    lat.sort();
    Run {
        n: lat.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        lat,
        elapsed: start.elapsed(),
    }
}

fn pct(l: &[Duration], p: f64) -> f64 {
    if l.is_empty() {
        return 0.0;
    }
    l[((l.len() - 1) as f64 * p) as usize].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    assert!(a.len() == 8, "usage: tcc_bench <coordinator http> <fenced a> <fenced b> <plain a> <plain b> <clients> <seconds>");
    let url = |s: &str| format!("http://{s}");
    let fenced = Arc::new(Target {
        coord: url(&a[1]),
        parts: [url(&a[2]), url(&a[3])],
    });
    let plain = Arc::new(Target {
        coord: url(&a[1]),
        parts: [url(&a[4]), url(&a[5])],
    });
    let clients: u64 = a[6].parse().unwrap();
    let secs: u64 = a[7].parse().unwrap();
    // Warm-up: connections, statement caches, the coordinator's first fsyncs.
    run(plain.clone(), clients, 2).await;
    let mut rates = [Vec::new(), Vec::new()];
    let mut lats = [Vec::new(), Vec::new()];
    for round in 0..2 {
        for (m, t) in [(0, &plain), (1, &fenced)] {
            let r = run(t.clone(), clients, secs).await;
            let rate = r.n as f64 / r.elapsed.as_secs_f64();
            println!(
                "round {round} {:<22} {:>8.0} tx/s  p50 {:>6.1} ms  p99 {:>6.1} ms  ({} tx, {} errors)",
                ["TCC without fence", "TCC with proxy fence"][m],
                rate,
                pct(&r.lat, 0.5),
                pct(&r.lat, 0.99),
                r.n,
                r.errors
            );
            rates[m].push(rate);
            lats[m].extend(r.lat);
        }
    }
    let mean = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
    for l in lats.iter_mut() {
        l.sort();
    }
    let (p, f) = (mean(&rates[0]), mean(&rates[1]));
    println!("TCC global transactions (2 participants), {clients} clients:");
    println!(
        "  without fence : {p:>8.0} tx/s  p50 {:.1} ms  p99 {:.1} ms",
        pct(&lats[0], 0.5),
        pct(&lats[0], 0.99)
    );
    println!(
        "  with fence    : {f:>8.0} tx/s  p50 {:.1} ms  p99 {:.1} ms",
        pct(&lats[1], 0.5),
        pct(&lats[1], 0.99)
    );
    println!(
        "  fence cost    : {:>7.1} % of throughput (goal <= 10 %)",
        (1.0 - f / p) * 100.0
    );
}
