//! A Go service through the proxy: go-sql-driver/mysql (Debian's package, with its own
//! test suite) against MariaDB directly and through `rewind-proxy`, in the same run.
//!
//! - `tests/go/sessions`: a database/sql pool whose session the server ends (wait_timeout,
//!   KILL) carries on invisibly, and a 16 MiB long-data parameter is stored whole; the
//!   program prints the same lines both ways.
//! - The driver's own suite (about 145 tests, `MYSQL_TEST_*` pointing at each side): the
//!   same tests pass and fail both ways (the few that fail directly do so on MariaDB 10.11
//!   and a TCP-only setup, not because of the proxy).
//!
//! - Beneath both: a session left idle closes when the server would close it, at its
//!   `wait_timeout` and not up to a second later (the suite's stale-connection check sleeps
//!   just one second past it).
//!
//! Needs `go` and `/usr/share/gocode/src/github.com/go-sql-driver/mysql`
//! (`scripts/ensure-tools.sh --browser` installs golang-go and
//! golang-github-go-sql-driver-mysql-dev); without them these tests fail and say so.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use rewind_test_support::*;

async fn proxy(dir: &TempDir) -> (Coordinator, Proxy) {
    let coord = Coordinator::start(dir, &[]).await;
    let proxy = Proxy::start(dir, "proxy", &coord.grpc_url(), &[]).await;
    (coord, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t95_a_go_pool_survives_ended_sessions_and_sends_16_mib_as_directly() {
    let dir = TempDir::new("go-sessions");
    let bin = build_go(&dir, "sessions");
    let (_coord, proxy) = proxy(&dir).await;
    let kill_dsn = "root@tcp(127.0.0.1:3306)/test".to_string();
    let run = |port: u16| {
        let (bin, kill_dsn) = (bin.clone(), kill_dsn.clone());
        tokio::task::spawn_blocking(move || {
            let out = Command::new(bin)
                .arg(format!(
                    "root@tcp(127.0.0.1:{port})/test?maxAllowedPacket=0"
                ))
                .arg(kill_dsn)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    let (direct, via) = tokio::join!(run(3306), run(proxy.addr.port()));
    let (direct, via) = (direct.unwrap(), via.unwrap());
    assert!(!direct.contains("error"), "directly:\n{direct}");
    assert!(
        direct.contains("stored 16777216 of 16777216 bytes"),
        "{direct}"
    );
    assert_eq!(via, direct, "through the proxy");
}

/// `--- PASS: Name` / `--- FAIL: Name` of a `go test -v` run.
fn outcomes(log: &str) -> BTreeMap<String, String> {
    log.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let rest = l.strip_prefix("--- ")?;
            let (status, name) = rest.split_once(": ")?;
            let name = name.split_whitespace().next()?;
            Some((name.to_string(), status.to_string()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t95_the_go_drivers_own_suite_gives_the_same_results_through_the_proxy() {
    let dir = TempDir::new("go-suite");
    let db = "rwt_go";
    fresh_db(db).await;
    let (_coord, proxy) = proxy(&dir).await;
    let suite = |port: u16| {
        let mut c = go();
        c.args(["test", "-count=1", "-v", GO_DRIVER])
            .env("MYSQL_TEST_USER", "root")
            .env("MYSQL_TEST_PASS", "")
            .env("MYSQL_TEST_PROT", "tcp")
            .env("MYSQL_TEST_ADDR", format!("127.0.0.1:{port}"))
            .env("MYSQL_TEST_DBNAME", db);
        tokio::task::spawn_blocking(move || {
            let out = c.output().unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    // One after the other: the suite uses fixed table names in its database.
    let direct = suite(3306).await.unwrap();
    let via = suite(proxy.addr.port()).await.unwrap();
    let (d, v) = (outcomes(&direct), outcomes(&via));
    assert!(d.len() > 100, "the suite ran directly:\n{direct}");
    let passed = d.values().filter(|s| *s == "PASS").count();
    assert!(passed > 100, "{d:?}");
    let differ: Vec<_> = d
        .iter()
        .filter(|(name, status)| v.get(*name) != Some(*status))
        .map(|(name, status)| {
            format!(
                "{name}: directly {status}, through the proxy {:?}",
                v.get(name)
            )
        })
        .collect();
    std::fs::write(dir.0.join("direct.log"), &direct).unwrap();
    std::fs::write(dir.0.join("proxy.log"), &via).unwrap();
    assert!(differ.is_empty(), "{differ:#?}");
    eprintln!(
        "go-sql-driver suite: {} tests, {passed} pass both ways; failing both ways: {:?}",
        d.len(),
        d.iter()
            .filter(|(_, s)| *s == "FAIL")
            .map(|(n, _)| n)
            .collect::<Vec<_>>()
    );
}

/// One MySQL packet (header and body) written with sequence number `seq`.
async fn send(raw: &mut TcpStream, seq: u8, body: &[u8]) {
    let len = (body.len() as u32).to_le_bytes();
    raw.write_all(&[len[0], len[1], len[2], seq]).await.unwrap();
    raw.write_all(body).await.unwrap();
}

async fn receive(raw: &mut TcpStream) -> Vec<u8> {
    let mut header = [0u8; 4];
    raw.read_exact(&mut header).await.unwrap();
    let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
    let mut body = vec![0u8; len];
    raw.read_exact(&mut body).await.unwrap();
    body
}

/// Logs in as root (empty password) by hand, so the socket itself can be watched, sets
/// `wait_timeout = 2` after `delay`, and returns how long after its OK the peer closed.
async fn closed_after_wait_timeout(addr: &str, delay: Duration) -> Duration {
    let mut raw = TcpStream::connect(addr).await.unwrap();
    raw.set_nodelay(true).unwrap();
    let greeting = receive(&mut raw).await;
    assert_eq!(greeting[0], 10, "a protocol 10 greeting");
    // CLIENT_LONG_PASSWORD | PROTOCOL_41 | TRANSACTIONS | SECURE_CONNECTION | PLUGIN_AUTH
    let caps: u32 = 0x1 | 0x200 | 0x2000 | 0x8000 | 0x80000;
    let mut login = caps.to_le_bytes().to_vec();
    login.extend_from_slice(&(1u32 << 24).to_le_bytes());
    login.push(45); // utf8mb4_general_ci
    login.extend_from_slice(&[0u8; 23]);
    login.extend_from_slice(b"root\0");
    login.push(0); // no auth response: empty password
    login.extend_from_slice(b"mysql_native_password\0");
    send(&mut raw, 1, &login).await;
    let mut answer = receive(&mut raw).await;
    if answer[0] == 0xfe {
        // Auth switch: an empty password answers any scramble with nothing.
        send(&mut raw, 3, &[]).await;
        answer = receive(&mut raw).await;
    }
    assert_eq!(answer[0], 0, "logged in: {answer:?}");
    tokio::time::sleep(delay).await;
    send(&mut raw, 0, b"\x03SET SESSION wait_timeout = 2").await;
    let ok = receive(&mut raw).await;
    assert_eq!(ok[0], 0, "{ok:?}");
    let idle = Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut rest))
        .await
        .expect("the idle session is closed");
    idle.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t95_an_idle_session_closes_at_its_wait_timeout_as_the_server_closes_it() {
    let dir = TempDir::new("go-wait-timeout");
    let (_coord, proxy) = proxy(&dir).await;
    let via = proxy.addr.to_string();
    // Sessions whose SET lands at different points of the proxy's one-second idle tick:
    // closing on the tick alone would close some of them up to a second late.
    let mut runs = Vec::new();
    for (i, addr) in ["127.0.0.1:3306", via.as_str()].iter().enumerate() {
        for quarter in 0..4u64 {
            let addr = addr.to_string();
            let delay = Duration::from_millis(250 * quarter);
            runs.push(tokio::spawn(async move {
                (i, quarter, closed_after_wait_timeout(&addr, delay).await)
            }));
        }
    }
    for run in runs {
        let (i, quarter, after) = run.await.unwrap();
        let side = ["directly", "through the proxy"][i];
        assert!(
            after >= Duration::from_millis(1_900) && after <= Duration::from_millis(2_500),
            "{side}, SET after {} ms: closed {after:?} after the OK, wait_timeout is 2 s",
            quarter * 250
        );
    }
}
