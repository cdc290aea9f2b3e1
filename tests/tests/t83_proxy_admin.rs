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
    let (proxy, admin) = Proxy::start_with_admin(&dir, "proxy", &coord.grpc_url()).await;

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

/// Prepares `sql`, executes it once and closes it.
async fn once(
    c: &mut mysql_async::Conn,
    sql: &str,
    params: impl Into<mysql_async::Params> + Send,
) -> mysql_async::Result<()> {
    let st = c.prep(sql).await?;
    c.exec_drop(&st, params).await?;
    c.close(st).await
}

/// A client that prepares, executes and closes every statement (as Go's `database/sql`
/// does, and as every XID-tagged statement is new text): the second prepare of the same
/// write, under another XID, is answered from the backend statement the proxy kept, and
/// the branch it runs in is still its own (its global rollback undoes it alone). What may
/// change how text parses (sql_mode) or which table it names (the database) is never
/// answered from a kept statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_write_is_prepared_again_without_the_backend() {
    const OTHER: &str = "t83_proxy_admin_other";
    let dir = TempDir::new("proxy-reuse");
    let db = "t83_proxy_admin_reuse";
    for name in [db, OTHER] {
        fresh_db(name).await;
        let mut c = direct(name).await;
        c.query_drop("CREATE TABLE t (id INT PRIMARY KEY, v INT NOT NULL, s VARCHAR(20))")
            .await
            .unwrap();
        c.query_drop("INSERT INTO t VALUES (1, 0, NULL)")
            .await
            .unwrap();
        c.disconnect().await.unwrap();
    }
    let coord = Coordinator::start(&dir, &[]).await;
    let (proxy, admin) = Proxy::start_with_admin(&dir, "proxy", &coord.grpc_url()).await;
    // No client-side statement cache: every statement is prepared, executed and closed.
    let mut c = mysql_async::Conn::new(proxy.opts(db).stmt_cache_size(0))
        .await
        .unwrap();
    let reused = |s: &Scrape| s.get("rewind_proxy_prepares_reused_total");
    let v_of = |name: &'static str| async move {
        let mut d = direct(name).await;
        let v: Option<i64> = d.query_first("SELECT v FROM t WHERE id = 1").await.unwrap();
        d.disconnect().await.unwrap();
        v.unwrap()
    };

    // Two global transactions run the same tagged UPDATE.
    let transfer = |xid: String, amount: i64| {
        let sql = format!("/*+ XID('{xid}') */ UPDATE t SET v = v + ? WHERE id = ?");
        (sql, amount)
    };
    let first = coord.begin(30_000).await;
    let (sql, amount) = transfer(first.clone(), 5);
    c.query_drop("BEGIN").await.unwrap();
    once(&mut c, &sql, (amount, 1)).await.unwrap();
    c.query_drop("COMMIT").await.unwrap();
    let st = coord.commit(&first).await;
    assert!(st == "committed" || st == "committing", "{st}");
    let before = Scrape::take(admin).await;
    assert_eq!(before.get("rewind_proxy_kept_statements"), 1.0);
    // What JDBC and pools send around a transaction changes nothing about parsing.
    c.query_drop("SET autocommit = 0").await.unwrap();
    c.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .await
        .unwrap();
    let second = coord.begin(30_000).await;
    let (sql, amount) = transfer(second.clone(), 10);
    c.query_drop("BEGIN").await.unwrap();
    once(&mut c, &sql, (amount, 1)).await.unwrap();
    c.query_drop("COMMIT").await.unwrap();
    c.query_drop("SET autocommit = 1").await.unwrap();
    let after = Scrape::take(admin).await;
    assert_eq!(
        reused(&after) - reused(&before),
        1.0,
        "the second prepare was reused"
    );
    assert_eq!(v_of(db).await, 15);
    assert_eq!(coord.rollback(&second).await, "rolled_back");
    assert_eq!(v_of(db).await, 5, "the second branch alone was undone");

    // The same text means something else under ANSI_QUOTES: prepared afresh, it fails as
    // the server says, whether it was kept before the change or closed after it.
    let quoted = "UPDATE t SET s = \"lit\" WHERE id = ?";
    let ansi = "SET sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES')";
    let refused = |e: mysql_async::Error| {
        assert!(
            matches!(&e, mysql_async::Error::Server(s) if s.code == 1054),
            "{e}"
        )
    };
    once(&mut c, quoted, (1,)).await.unwrap();
    c.query_drop(ansi).await.unwrap();
    refused(once(&mut c, quoted, (1,)).await.unwrap_err());
    c.query_drop("SET sql_mode = DEFAULT").await.unwrap();
    let st = c.prep(quoted).await.unwrap();
    c.exec_drop(&st, (1,)).await.unwrap();
    c.query_drop(ansi).await.unwrap();
    c.close(st).await.unwrap();
    refused(once(&mut c, quoted, (1,)).await.unwrap_err());
    c.query_drop("SET sql_mode = DEFAULT").await.unwrap();

    // Another database: the same INSERT goes to its own table.
    let insert = "INSERT INTO t (id, v) VALUES (?, 0)";
    once(&mut c, insert, (2,)).await.unwrap();
    c.query_drop(format!("USE {OTHER}")).await.unwrap();
    once(&mut c, insert, (3,)).await.unwrap();
    let ids = |name: &'static str| async move {
        let mut d = direct(name).await;
        let ids: Vec<i64> = d.query("SELECT id FROM t ORDER BY id").await.unwrap();
        d.disconnect().await.unwrap();
        ids
    };
    assert_eq!(ids(db).await, vec![1, 2]);
    assert_eq!(ids(OTHER).await, vec![1, 3]);

    // The session's kept statements go with it.
    c.disconnect().await.unwrap();
    eventually(
        "no statement kept once the session ended",
        Duration::from_secs(10),
        || async {
            Scrape::take(admin)
                .await
                .get("rewind_proxy_kept_statements")
                == 0.0
        },
    )
    .await;
}
