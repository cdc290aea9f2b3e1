//! The proxy's admin listener, real proxy, coordinator and MariaDB: `/metrics` moves by
//! exactly what a client sent (sessions, commands by type and their latency histogram,
//! the error codes it got back, an AT and an XA branch's phase one, their phase two);
//! `/healthz` answers while the process runs; `/readyz` is 200 while the backend and the
//! coordinator answer and turns 503, naming the coordinator, once it is killed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use rewind_test_support::*;

const DB: &str = "t83_proxy_admin";

/// Every sample of a scrape, by series (`name{labels}`).
struct Scrape(HashMap<String, f64>);

impl Scrape {
    async fn take(admin: SocketAddr) -> Scrape {
        let a = request(admin, "GET", "/metrics", None, &[])
            .await
            .expect("GET /metrics");
        assert_eq!(a.status, 200);
        assert_eq!(a.header("content-type"), Some("text/plain; version=0.0.4"));
        let text = String::from_utf8(a.body).expect("UTF-8 metrics");
        let mut samples = HashMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("`series value`");
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("a number in {line:?}"));
            assert!(
                samples.insert(series.to_string(), value).is_none(),
                "{series} twice"
            );
        }
        Scrape(samples)
    }

    /// A sample that must be there.
    fn get(&self, series: &str) -> f64 {
        *self
            .0
            .get(series)
            .unwrap_or_else(|| panic!("{series} missing"))
    }

    /// A labelled sample that appears once counted (error codes), else 0.
    fn or_zero(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }
}

/// How much each series in `series` grew from `before` to `after`.
fn grew(before: &Scrape, after: &Scrape, series: &str) -> f64 {
    after.or_zero(series) - before.or_zero(series)
}

async fn setup() {
    fresh_db(DB).await;
    let mut c = direct(DB).await;
    c.query_drop("CREATE TABLE t (id INT PRIMARY KEY, v INT NOT NULL)")
        .await
        .unwrap();
    c.query_drop("INSERT INTO t VALUES (1, 0), (2, 0), (3, 0)")
        .await
        .unwrap();
    c.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_counts_what_clients_sent_and_reports_readiness() {
    let dir = TempDir::new("proxy-admin");
    setup().await;
    let mut coord = Coordinator::start(&dir, &[]).await;
    let admin = free_addr();
    let admin_arg = admin.to_string();
    let proxy = Proxy::start(
        &dir,
        "proxy",
        &coord.grpc_url(),
        &["--admin-addr", &admin_arg],
    )
    .await;

    // Phase 1: alive and ready.
    let (code, body) = http(admin, "GET", "/healthz", None).await.unwrap();
    assert_eq!((code, body.as_str()), (200, Some("ok")));
    let (code, body) = http(admin, "GET", "/readyz", None).await.unwrap();
    assert_eq!(code, 200, "{body}");

    // Phase 2: a session opens.
    let start = Scrape::take(admin).await;
    assert_eq!(start.get("rewind_proxy_sessions"), 0.0);
    let mut c = proxy.conn(DB).await;
    let base = Scrape::take(admin).await;
    assert_eq!(base.get("rewind_proxy_sessions"), 1.0);
    assert_eq!(grew(&start, &base, "rewind_proxy_sessions_total"), 1.0);

    // Phase 3: plain commands, one failing with a syntax error.
    c.query_drop("SELECT 1").await.unwrap();
    c.query_drop("UPDATE t SET v = v + 1 WHERE id = 2")
        .await
        .unwrap();
    let err = c.query_drop("SELEC 1").await.unwrap_err();
    assert!(
        matches!(&err, mysql_async::Error::Server(s) if s.code == 1064),
        "{err}"
    );
    let st = c.prep("SELECT v FROM t WHERE id = ?").await.unwrap();
    c.exec_drop(&st, (1,)).await.unwrap();
    c.exec_drop(&st, (2,)).await.unwrap();
    c.ping().await.unwrap();

    // Phase 4: an AT branch (committed globally) and an XA branch (rolled back globally).
    let at = coord.begin(30_000).await;
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop(format!(
        "/*+ XID('{at}') */ UPDATE t SET v = v + 10 WHERE id = 1"
    ))
    .await
    .unwrap();
    c.query_drop("COMMIT").await.unwrap();
    let xa = coord.begin(30_000).await;
    c.query_drop(format!("/*+ XA('{xa}') */ BEGIN"))
        .await
        .unwrap();
    c.query_drop("UPDATE t SET v = v + 100 WHERE id = 3")
        .await
        .unwrap();
    c.query_drop("COMMIT").await.unwrap();

    let after = Scrape::take(admin).await;
    // Decided before anything is asserted: a failed assertion must not leave the XA
    // branch prepared in MariaDB (its row lock would block the next run's DROP DATABASE).
    coord.commit(&at).await;
    coord.rollback(&xa).await;
    let commands = [
        ("query", 9.0),
        ("prepare", 1.0),
        ("execute", 2.0),
        ("other", 1.0),
    ];
    for (command, sent) in commands {
        let total = format!("rewind_proxy_commands_total{{command=\"{command}\"}}");
        let count = format!("rewind_proxy_command_seconds_count{{command=\"{command}\"}}");
        let inf =
            format!("rewind_proxy_command_seconds_bucket{{command=\"{command}\",le=\"+Inf\"}}");
        assert_eq!(grew(&base, &after, &total), sent, "{total}");
        assert_eq!(grew(&base, &after, &count), sent, "{count}");
        assert_eq!(after.get(&count), after.get(&total), "{count}");
        assert_eq!(after.get(&inf), after.get(&total), "{inf}");
        let sum = format!("rewind_proxy_command_seconds_sum{{command=\"{command}\"}}");
        assert!(grew(&base, &after, &sum) > 0.0, "{sum}");
    }
    assert_eq!(
        grew(&base, &after, "rewind_proxy_errors_total{code=\"1064\"}"),
        1.0
    );
    for (mode, outcome, n) in [
        ("at", "committed", 1.0),
        ("at", "rolled_back", 0.0),
        ("at", "failed", 0.0),
        ("xa", "committed", 1.0),
        ("xa", "rolled_back", 0.0),
        ("xa", "failed", 0.0),
    ] {
        let series =
            format!("rewind_proxy_branches_total{{mode=\"{mode}\",outcome=\"{outcome}\"}}");
        assert_eq!(after.get(&series), n, "{series}");
    }
    // The prepared XA branch keeps its backend connection until its phase two.
    assert_eq!(after.get("rewind_proxy_xa_pinned"), 1.0);

    // Phase 5: phase two (decided above), counted by the proxy that ran it.
    eventually(
        "both phase twos counted",
        Duration::from_secs(20),
        || async {
            let s = Scrape::take(admin).await;
            s.get("rewind_proxy_phase_two_total{action=\"commit\",outcome=\"done\"}") == 1.0
                && s.get("rewind_proxy_phase_two_total{action=\"rollback\",outcome=\"done\"}")
                    == 1.0
        },
    )
    .await;
    let two = Scrape::take(admin).await;
    for outcome in ["dirty_write", "failure"] {
        for action in ["commit", "rollback"] {
            let series = format!(
                "rewind_proxy_phase_two_total{{action=\"{action}\",outcome=\"{outcome}\"}}"
            );
            assert_eq!(two.get(&series), 0.0, "{series}");
        }
    }
    assert_eq!(two.get("rewind_proxy_xa_pinned"), 0.0);

    // Phase 6: the session ends.
    c.disconnect().await.unwrap();
    eventually(
        "the session gauge back to 0",
        Duration::from_secs(10),
        || async { Scrape::take(admin).await.get("rewind_proxy_sessions") == 0.0 },
    )
    .await;
    assert_eq!(
        grew(
            &start,
            &Scrape::take(admin).await,
            "rewind_proxy_sessions_total"
        ),
        1.0
    );

    // Phase 7: the coordinator gone, the proxy is alive but not ready.
    coord.kill();
    eventually(
        "/readyz 503 naming the coordinator",
        Duration::from_secs(10),
        || async {
            let (code, body) = http(admin, "GET", "/readyz", None).await.unwrap();
            code == 503
                && body["down"]["coordinator"].is_string()
                && body["down"]["backend"].is_null()
        },
    )
    .await;
    let (code, _) = http(admin, "GET", "/healthz", None).await.unwrap();
    assert_eq!(code, 200);
}
