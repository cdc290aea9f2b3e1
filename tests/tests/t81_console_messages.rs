//! The console's Messages view in a real headless Chromium (driven by
//! `tests/console/messages.mjs` with playwright-core), against a real proxy, MariaDB and
//! RabbitMQ: three messages published, two the broker returns (no queue bound) going
//! DEAD, one barrier duplicate refused. A viewer who is not logged in, and an operator
//! whose session is gone, cannot redrive; the operator reads the figures and the DEAD
//! list, redrives one message, and then the broker, the database and the audit log say
//! the same. The screenshot lands in `tests/artifacts/console/messages.png`.
//!
//! Needs `node`, `chromium` and `tests/console/node_modules` (scripts/ensure-tools.sh
//! --browser installs them) and RabbitMQ (scripts/ensure-brokers.sh).

use std::path::Path;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use rewind_test_support::*;
use serde_json::{json, Value as Json};

const SCHEMA: &str = "rwt_ob_console";
const DB: &str = "rwt_console_msg";
const DEAD_TOPIC: &str = "t81.nobody.x";

/// `url` without its password, and the `:<password>@` part that must not be shown.
fn without_password(url: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_string(), None);
    };
    match rest.rsplit_once('@') {
        Some((auth, host)) => {
            let (user, pass) = auth.split_once(':').unwrap_or((auth, ""));
            (
                format!("{scheme}://{user}@{host}"),
                (!pass.is_empty()).then(|| format!(":{pass}@")),
            )
        }
        None => (url.to_string(), None),
    }
}

/// (status, attempts) of the outbox row with `message_id`.
async fn row_of(message_id: &str) -> Option<(String, u32)> {
    let mut c = direct(DB).await;
    let r: Option<(String, u32)> = c
        .exec_first(
            format!("SELECT status, attempts FROM {SCHEMA}.outbox WHERE message_id = ?"),
            (message_id,),
        )
        .await
        .unwrap();
    c.disconnect().await.unwrap();
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t81_operator_redrives_a_dead_message_in_the_console() {
    let driver_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
    let browser = chromium();
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts/console");
    let shot = artifacts.join("messages.png");
    let _ = std::fs::remove_file(&shot);

    // 1. A coordinator and a proxy whose undo schema (so outbox and barrier) is ours.
    let dir = TempDir::new("console-messages");
    let coord = Coordinator::start(&dir, &[]).await;
    direct_exec("test", &format!("DROP DATABASE IF EXISTS {SCHEMA}")).await;
    fresh_db(DB).await;
    direct_exec(DB, "CREATE TABLE t (v INT NOT NULL)").await;
    let broker = amqp_url();
    let cfg = dir.0.join("proxy.toml");
    std::fs::write(
        &cfg,
        format!(
            "undo_schema = \"{SCHEMA}\"\n[outbox]\nbroker = \"{broker}\"\nmax_attempts = 2\n\
             backoff_initial_ms = 100\nsweep_interval_ms = 200\nreport_interval_ms = 300\n"
        ),
    )
    .unwrap();
    let cfg = cfg.to_string_lossy().into_owned();
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &["--config", &cfg]).await;

    // 2. Three messages a queue takes, two nobody takes, one barrier duplicate.
    let mut q = AmqpQueue::bind(&["t81.ok.#"]).await;
    let mut c = proxy.conn(DB).await;
    for i in 0..3 {
        c.query_drop(format!(
            "INSERT INTO {SCHEMA}.outbox (topic, msg_key, payload) VALUES ('t81.ok.order', 'k', 'ok{i}')"
        ))
        .await
        .unwrap();
    }
    for i in 0..2 {
        c.query_drop(format!(
            "INSERT INTO {SCHEMA}.outbox (topic, payload) VALUES ('{DEAD_TOPIC}', 'lost{i}')"
        ))
        .await
        .unwrap();
    }
    let barrier = "/*+ BARRIER('c', 'm1') */ INSERT INTO t VALUES (1)";
    c.query_drop(barrier).await.unwrap();
    let (code, _, msg) = server_error(c.query_drop(barrier).await).expect("a duplicate");
    assert_eq!(code, 1062, "{msg}");
    c.disconnect().await.unwrap();
    let ok: Vec<String> = q
        .drain(Duration::from_secs(3))
        .await
        .iter()
        .map(|d| d.text())
        .collect();
    assert_eq!(ok, ["ok0", "ok1", "ok2"], "the bound topic is published");

    // 3. Both refused messages are DEAD in the console API, and the figures are in.
    let started = std::time::Instant::now();
    let (resource, dead) = loop {
        let list = coord.get("/api/v1/outbox/dead").await;
        let mine: Vec<&Json> = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["topic"] == DEAD_TOPIC)
            .collect();
        if mine.len() == 2 {
            let ids: Vec<String> = mine
                .iter()
                .map(|m| m["message_id"].as_str().unwrap().to_string())
                .collect();
            break (mine[0]["resource_id"].as_str().unwrap().to_string(), ids);
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the console API lists both DEAD messages: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eventually(
        "the report: DEAD 2, 1 duplicate, 3 published",
        Duration::from_secs(10),
        || async {
            let list = coord.get("/api/v1/outbox").await;
            list.as_array().unwrap().iter().any(|r| {
                r["resource_id"] == resource.as_str()
                    && r["dead"] == 2
                    && r["barrier_duplicates"] == 1
                    && r["published_total"] == 3
            })
        },
    )
    .await;
    for id in &dead {
        assert_eq!(row_of(id).await, Some(("DEAD".to_string(), 2)), "{id}");
    }

    // 4. The browser part; a queue takes the dead topic before anyone clicks.
    q.bind_key("t81.nobody.#").await;
    let (shown_broker, password_part) = without_password(&broker);
    let plan = json!({
        "url": format!("http://{}/", coord.http),
        "secret": coord.token(),
        "chromium": browser,
        "artifacts": artifacts,
        "resource": resource,
        "broker": shown_broker,
        // Not on the page; a URL without a password has nothing to hide.
        "broker_password_part": password_part.unwrap_or_else(|| "\u{0}".into()),
        "dead_topic": DEAD_TOPIC,
        // The first is redriven, the second stays DEAD.
        "dead": dead,
    });
    run_console_driver(&driver_dir, "messages.mjs", &plan).await;
    let len = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(len > 1000, "screenshot {} saved", shot.display());

    // 5. The redriven message left with its id; the other is still DEAD.
    let (redriven, kept) = (&dead[0], &dead[1]);
    let m = q
        .next(Duration::from_secs(10))
        .await
        .expect("the redriven message arrives");
    m.ack().await;
    assert_eq!(&m.message_id, redriven, "the same message id");
    assert_eq!(m.routing_key, DEAD_TOPIC);
    assert!(m.text().starts_with("lost"), "{}", m.text());
    assert!(
        q.next(Duration::from_millis(800)).await.is_none(),
        "only the redriven one"
    );
    eventually("marked published", Duration::from_secs(10), || async {
        row_of(redriven).await.is_some_and(|r| r.0 == "PUBLISHED")
    })
    .await;
    assert_eq!(row_of(kept).await, Some(("DEAD".to_string(), 2)));
    let list = coord.get("/api/v1/outbox/dead").await;
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["message_id"].as_str())
        .collect();
    assert_eq!(ids, [kept.as_str()], "{list}");

    // The audit log has the operator's redrive, done, and nothing for the refused ones.
    let audit = coord.audit().await;
    let redrives: Vec<&Json> = audit
        .iter()
        .filter(|a| a["action"] == "outbox redrive")
        .collect();
    assert_eq!(redrives.len(), 1, "{redrives:?}");
    assert_eq!(redrives[0]["who"], "admin");
    assert_eq!(redrives[0]["result"], "done");
    assert_eq!(
        redrives[0]["target"].as_str(),
        Some(format!("{resource}/{redriven}").as_str())
    );
}
