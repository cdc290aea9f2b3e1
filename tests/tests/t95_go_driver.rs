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
//! Needs `go` and `/usr/share/gocode/src/github.com/go-sql-driver/mysql`
//! (`scripts/ensure-tools.sh --browser` installs golang-go and
//! golang-github-go-sql-driver-mysql-dev); without them these tests fail and say so.

use std::collections::BTreeMap;
use std::process::Command;

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
