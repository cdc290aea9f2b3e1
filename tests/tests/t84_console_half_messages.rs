//! The console's Half messages view in a real headless Chromium (driven by
//! `tests/console/half_messages.mjs` with playwright-core), against a real coordinator
//! whose message service publishes to a real RabbitMQ. Through the HTTP API: 52 fillers
//! (prepared, rolled back) for paging; A prepared and committed (sent: the broker has it
//! under its id); B rolled back (cancelled; committing it afterwards is refused); C and D
//! prepared on a resource no proxy serves, so their check-backs fail and they are
//! `undecided` after two; E a message branch of an open global transaction; F committed
//! to a topic no queue takes, `dead` after two failed publishes. In the browser the
//! operator pages and filters the list, reads A's whole life, commits C and drops D from
//! the undecided queue through their dialogs, follows E to its transaction and back, and
//! redrives F once a queue takes its topic. Afterwards the API, the broker and the audit
//! log must say the same: C sent and received, D cancelled and never published (A's queue
//! holds exactly A and C), F sent, E sent once its transaction commits, every operator
//! action audited under the operator's name. Screenshots land in
//! `tests/artifacts/console/half-messages*.png`.
//!
//! Needs `node`, `chromium` and `tests/console/node_modules` (scripts/ensure-tools.sh
//! --browser installs them) and RabbitMQ (scripts/ensure-brokers.sh).

use std::path::Path;
use std::time::Duration;

use rewind_test_support::*;
use serde_json::{json, Value as Json};

const FILLERS: usize = 52;

async fn post(coord: &Coordinator, path: &str, body: &Json) -> (u16, Json) {
    coord
        .http("POST", path, Some(body.to_string().as_bytes()))
        .await
}

/// `POST /api/v1/messages`: the new message's id.
async fn prepare(coord: &Coordinator, body: Json) -> String {
    let (code, m) = post(coord, "/api/v1/messages", &body).await;
    assert_eq!(code, 200, "prepare {body}: {m}");
    assert_eq!(m["status"], "prepared", "{m}");
    m["message_id"].as_str().expect("message_id").to_string()
}

/// `POST /api/v1/messages/{id}/{what}` (commit / rollback), which must answer `status`.
async fn decide(coord: &Coordinator, id: &str, what: &str, status: &str) {
    let (code, m) = post(coord, &format!("/api/v1/messages/{id}/{what}"), &json!({})).await;
    assert_eq!(code, 200, "{what} {id}: {m}");
    assert_eq!(m["status"], status, "{what} {id}: {m}");
}

async fn message(coord: &Coordinator, id: &str) -> Json {
    coord.get(&format!("/api/v1/messages/{id}")).await
}

async fn wait_message(coord: &Coordinator, id: &str, what: &str, ok: impl Fn(&Json) -> bool) {
    eventually(
        &format!("{id}: {what}"),
        Duration::from_secs(20),
        || async { ok(&message(coord, id).await) },
    )
    .await;
}

/// The events of `m`'s history, in order.
fn events(m: &Json) -> Vec<String> {
    m["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|e| e["event"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The detail of the last `event` in `m`'s history.
fn detail_of(m: &Json, event: &str) -> String {
    m["history"]
        .as_array()
        .expect("history")
        .iter()
        .rev()
        .find(|e| e["event"] == event)
        .map(|e| e["detail"].as_str().unwrap_or_default().to_string())
        .unwrap_or_else(|| panic!("no {event} in {m}"))
}

/// The index of `event` in `evs`, which must hold it.
fn at(evs: &[String], event: &str) -> usize {
    evs.iter()
        .position(|e| e == event)
        .unwrap_or_else(|| panic!("no {event} in {evs:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t84_an_operator_decides_undecided_half_messages_and_reads_their_lives() {
    let driver_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
    let browser = chromium();
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts/console");
    let shot = artifacts.join("half-messages.png");
    let _ = std::fs::remove_file(&shot);

    // 1. A coordinator publishing to RabbitMQ, checking back quickly, two checks and
    //    two failed publishes at most.
    let dir = TempDir::new("console-half-messages");
    let cfg = dir.0.join("coordinator.toml");
    std::fs::write(
        &cfg,
        format!(
            "tick_ms = 50\nphase_two_backoff_base_ms = 20\nphase_two_backoff_cap_ms = 300\n\
             [messages]\nbroker = \"{}\"\ncheck_after_ms = 200\nmax_checks = 2\n\
             check_backoff_cap_ms = 400\nmax_publish_attempts = 2\n",
            amqp_url()
        ),
    )
    .unwrap();
    let coord = Coordinator::start(&dir, &["--config", &cfg.to_string_lossy()]).await;

    // Topics of this run only: a queue for A's topic (exactly, no pattern), one for the
    // branch's; nobody takes F's topic until the operator is about to redrive it.
    let run = format!("{:08x}", rand::random::<u32>());
    let topic = format!("t84.{run}.order");
    let branch_topic = format!("t84.{run}.branch");
    let dead_topic = format!("t84.{run}.dead");
    let nobody = format!("t84-nobody-{run}");
    let mut q = AmqpQueue::bind(&[&topic]).await;
    let mut q2 = AmqpQueue::bind(&[&branch_topic]).await;

    // 2. Fillers, the oldest messages, for paging: prepared and rolled back.
    for i in 0..FILLERS {
        let id = prepare(
            &coord,
            json!({"topic": format!("t84.{run}.filler"), "payload": format!("filler {i}")}),
        )
        .await;
        decide(&coord, &id, "rollback", "cancelled").await;
    }

    // 3. A: committed by the application, published, in the broker under its id.
    let a = prepare(
        &coord,
        json!({"topic": topic, "key": "order-1", "payload": {"order": 1, "sum": "12.50"},
               "headers": {"origin": "t84"}}),
    )
    .await;
    decide(&coord, &a, "commit", "confirmed").await;
    wait_message(&coord, &a, "sent", |m| m["status"] == "sent").await;
    let payload_a = message(&coord, &a).await["payload"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(payload_a, r#"{"order":1,"sum":"12.50"}"#);
    let got = q.next(Duration::from_secs(10)).await.expect("A arrives");
    got.ack().await;
    assert_eq!(got.message_id, a, "A's id");
    assert_eq!(got.routing_key, topic);
    assert_eq!(got.text(), payload_a);
    assert_eq!(
        got.headers.get("origin").map(String::as_str),
        Some("t84"),
        "{:?}",
        got.headers
    );

    // 4. B: rolled back; write-once, so a commit afterwards is refused.
    let b = prepare(&coord, json!({"topic": topic, "payload": "b"})).await;
    decide(&coord, &b, "rollback", "cancelled").await;
    let (code, body) = post(&coord, &format!("/api/v1/messages/{b}/commit"), &json!({})).await;
    assert_eq!(code, 409, "committing a cancelled message: {body}");

    // 5. C and D: on a resource no proxy serves, check-back never answers: undecided.
    let c = prepare(
        &coord,
        json!({"topic": topic, "payload": "c", "resource_id": nobody}),
    )
    .await;
    let d = prepare(
        &coord,
        json!({"topic": topic, "payload": "d", "resource_id": nobody}),
    )
    .await;
    for id in [&c, &d] {
        wait_message(&coord, id, "undecided after 2 checks", |m| {
            m["status"] == "undecided" && m["checks"].as_u64() >= Some(2)
        })
        .await;
        let m = message(&coord, id).await;
        assert!(
            m["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("no proxy attached")),
            "{m}"
        );
        assert_eq!(m["resource_id"], nobody.as_str(), "{m}");
    }

    // 6. E: a message branch of a global transaction still open.
    let xid = coord.begin(300_000).await;
    let (code, e) = post(
        &coord,
        &format!("/api/v1/transactions/{xid}/messages"),
        &json!({"topic": branch_topic, "payload": "e"}),
    )
    .await;
    assert_eq!(code, 200, "{e}");
    let e_id = e["message_id"].as_str().unwrap().to_string();
    let e_branch = e["branch_id"].as_u64().expect("branch_id");
    let tx = coord.transaction(&xid).await;
    assert!(
        tx["branches"]
            .as_array()
            .unwrap()
            .iter()
            .any(|br| br["message_id"] == e_id.as_str() && br["branch_id"] == e_branch),
        "{tx}"
    );

    // 7. F: committed to a topic no queue takes: dead after two failed publishes.
    let f = prepare(&coord, json!({"topic": dead_topic, "payload": "f"})).await;
    decide(&coord, &f, "commit", "confirmed").await;
    wait_message(&coord, &f, "dead", |m| m["status"] == "dead").await;
    assert_eq!(message(&coord, &f).await["publish_failures"], 2);
    // Before anyone clicks Redrive, a queue takes its topic.
    q2.bind_key(&dead_topic).await;

    // 8. The browser part.
    let total = FILLERS + 6;
    let plan = json!({
        "url": format!("http://{}/", coord.http),
        "secret": coord.token(),
        "chromium": browser,
        "artifacts": artifacts,
        "topic": topic,
        "resource": nobody,
        "xid": xid,
        "fillers": FILLERS,
        "total": total,
        "payload_a": payload_a,
        "ids": {"a": a, "b": b, "c": c, "d": d, "e": e_id, "f": f},
    });
    let report = run_console_driver(&driver_dir, "half_messages.mjs", &plan).await;
    let len = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(len > 1000, "screenshot {} saved ({report})", shot.display());

    // 9. C: committed by the operator after being undecided, then sent, and received.
    wait_message(&coord, &c, "sent", |m| m["status"] == "sent").await;
    let mc = message(&coord, &c).await;
    let evs = events(&mc);
    assert!(
        at(&evs, "undecided") < at(&evs, "confirmed") && at(&evs, "confirmed") < at(&evs, "sent"),
        "{evs:?}"
    );
    assert_eq!(detail_of(&mc, "confirmed"), "by operator admin", "{mc}");
    let got = q.next(Duration::from_secs(10)).await.expect("C arrives");
    got.ack().await;
    assert_eq!(got.message_id, c, "C's id");
    assert_eq!(got.text(), "c");

    // D: dropped, never published: A's queue held exactly A and C.
    let md = message(&coord, &d).await;
    assert_eq!(md["status"], "cancelled", "{md}");
    assert_eq!(detail_of(&md, "cancelled"), "by operator admin", "{md}");
    assert!(!events(&md).iter().any(|e| e == "sent"), "{md}");
    let extra = q.drain(Duration::from_millis(1500)).await;
    assert!(
        extra.is_empty(),
        "nothing after A and C: {:?}",
        extra.iter().map(|d| &d.message_id).collect::<Vec<_>>()
    );
    // Decided once: committing D now is refused (and audited).
    let (code, body) = coord
        .operator(
            "POST",
            &format!("/api/v1/messages/{d}/force"),
            Some(br#"{"decision": "commit"}"#),
        )
        .await;
    assert_eq!(code, 409, "{body}");

    // F: redriven by the operator and sent; E: sent once its transaction commits.
    wait_message(&coord, &f, "sent", |m| m["status"] == "sent").await;
    assert!(detail_of(&message(&coord, &f).await, "confirmed")
        .starts_with("redriven by operator admin"));
    assert_eq!(coord.commit(&xid).await, "committed");
    wait_message(&coord, &e_id, "sent", |m| m["status"] == "sent").await;
    let mut second: Vec<String> = q2.take(2).await.into_iter().map(|d| d.message_id).collect();
    second.sort();
    let mut want = vec![e_id.clone(), f.clone()];
    want.sort();
    assert_eq!(second, want, "the branch's and the redriven message");

    // Nothing is left undecided.
    let undecided = coord.get("/api/v1/messages?status=undecided").await;
    assert_eq!(undecided, json!([]));
    let metrics = request(coord.http, "GET", "/metrics", None, &[])
        .await
        .expect("GET /metrics");
    let text = String::from_utf8(metrics.body).unwrap();
    assert!(
        text.lines()
            .any(|l| l == "rewind_messages{status=\"undecided\"} 0"),
        "{text}"
    );

    // 10. The audit log: each operator action once, under the operator's name (the
    //     refused commit of D too).
    let audit = coord.audit().await;
    let entry = |action: &str, id: &str| -> Vec<Json> {
        audit
            .iter()
            .filter(|x| x["action"] == action && x["target"] == format!("message {id}"))
            .cloned()
            .collect()
    };
    let commits = entry("message commit", &c);
    assert_eq!(commits.len(), 1, "{audit:?}");
    assert_eq!(commits[0]["who"], "admin");
    assert_eq!(commits[0]["result"], "ok: confirmed");
    let drops = entry("message drop", &d);
    assert_eq!(drops.len(), 1, "{audit:?}");
    assert_eq!(drops[0]["who"], "admin");
    assert_eq!(drops[0]["result"], "ok: cancelled");
    let refused = entry("message commit", &d);
    assert_eq!(refused.len(), 1, "{audit:?}");
    assert!(
        refused[0]["result"]
            .as_str()
            .is_some_and(|r| r.starts_with("refused")),
        "{refused:?}"
    );
    let redrives = entry("message redrive", &f);
    assert_eq!(redrives.len(), 1, "{audit:?}");
    assert_eq!(redrives[0]["who"], "admin");
    assert_eq!(redrives[0]["result"], "ok");
}
