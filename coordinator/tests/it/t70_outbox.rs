//! The outbox as the coordinator shows it: proxies' reports kept per resource, the DEAD
//! list, operator redrives answered over the Attach stream (done, not dead, no proxy,
//! detached, timeout), their audit entries, and the /metrics series.

use std::collections::HashSet;
use std::time::Duration;

use rewind_protocol::v1::{coordinator_message, proxy_message, DeadMessage, OutboxReport};
use rewind_test_support::{eventually, Coordinator, TempDir};
use serde_json::{json, Value};

use crate::fake_proxy::{FakeProxy, RedriveAnswer};

const RESOURCE: &str = "127.0.0.1:3306";

fn dead(id: &str, created_at_ms: u64) -> DeadMessage {
    DeadMessage {
        message_id: id.into(),
        topic: "user.created".into(),
        msg_key: format!("key-{id}"),
        attempts: 8,
        last_error: format!("broker refused {id}"),
        created_at_ms,
    }
}

fn report(resource: &str, read_at_ms: u64, dead: Vec<DeadMessage>) -> proxy_message::Kind {
    proxy_message::Kind::OutboxReport(OutboxReport {
        resource_id: resource.into(),
        proxy_id: "fake-proxy-1".into(),
        broker: "amqp://guest@127.0.0.1:5672/%2f".into(),
        new_count: 5,
        held_count: 2,
        oldest_new_age_ms: 3_200,
        dead_count: dead.len() as u64,
        published_total: 41,
        failed_total: 9,
        last_error: "connection refused".into(),
        dead,
        barrier_rows: 17,
        barrier_duplicates: 3,
        read_at_ms,
    })
}

fn list(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

async fn outbox(c: &Coordinator) -> Vec<Value> {
    list(&c.get("/api/v1/outbox").await)
}

async fn dead_ids(c: &Coordinator, query: &str) -> Vec<String> {
    list(&c.get(&format!("/api/v1/outbox/dead{query}")).await)
        .iter()
        .map(|d| d["message_id"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Waits until the coordinator holds a report of `resource` read at `read_at_ms`.
async fn wait_report(c: &Coordinator, resource: &str, read_at_ms: u64) {
    eventually(
        &format!("report of {resource} read at {read_at_ms} kept"),
        Duration::from_secs(10),
        || async {
            outbox(c)
                .await
                .iter()
                .any(|r| r["resource_id"] == resource && r["read_at_ms"] == read_at_ms)
        },
    )
    .await;
}

fn redrive_path(resource: &str, message: &str) -> String {
    format!("/api/v1/outbox/{resource}/messages/{message}/redrive")
}

#[tokio::test]
async fn t70_reports_dead_list_and_redrive() {
    let dir = TempDir::new("outbox");
    let c = Coordinator::start(&dir, &[]).await;
    assert!(outbox(&c).await.is_empty());
    assert!(dead_ids(&c, "").await.is_empty());

    // Phase 1: a proxy announces its resource and reports two DEAD messages.
    let proxy = FakeProxy::attach(&c, &[RESOURCE]).await;
    *proxy.redrive.lock().unwrap() = RedriveAnswer::DoneFor(HashSet::from(["m-new".into()]));
    // A report for a resource this stream did not announce is ignored; the next one
    // (same stream, so handled after it) is kept.
    proxy.send(report("someone-else:3306", 1, vec![])).await;
    let before_report = unix_ms();
    proxy
        .send(report(
            RESOURCE,
            1_700_000_000_000,
            vec![dead("m-new", 2_000), dead("m-old", 1_000)],
        ))
        .await;
    wait_report(&c, RESOURCE, 1_700_000_000_000).await;
    let all = outbox(&c).await;
    assert_eq!(
        all.len(),
        1,
        "the unannounced resource is not listed: {all:?}"
    );
    let r = &all[0];
    let received = r["received_at_ms"].as_u64().unwrap_or_default();
    assert!(received >= before_report, "{r}");
    let mut expected = json!({
        "resource_id": RESOURCE,
        "proxy_id": "fake-proxy-1",
        "broker": "amqp://guest@127.0.0.1:5672/%2f",
        "new": 5,
        "held": 2,
        "oldest_new_age_ms": 3200,
        "dead": 2,
        "published_total": 41,
        "failed_total": 9,
        "last_error": "connection refused",
        "barrier_rows": 17,
        "barrier_duplicates": 3,
        "read_at_ms": 1_700_000_000_000u64,
        "received_at_ms": received,
        "stale": false,
    });
    assert_eq!(r, &expected);

    let dead_list = list(&c.get("/api/v1/outbox/dead").await);
    assert_eq!(
        dead_list,
        [
            json!({"resource_id": RESOURCE, "message_id": "m-new", "topic": "user.created",
                   "msg_key": "key-m-new", "attempts": 8, "last_error": "broker refused m-new",
                   "created_at_ms": 2000}),
            json!({"resource_id": RESOURCE, "message_id": "m-old", "topic": "user.created",
                   "msg_key": "key-m-old", "attempts": 8, "last_error": "broker refused m-old",
                   "created_at_ms": 1000}),
        ]
    );
    assert_eq!(
        dead_ids(&c, "?resource_id=127.0.0.1%3A3306").await,
        ["m-new", "m-old"]
    );
    assert!(dead_ids(&c, "?resource_id=nowhere%3A1").await.is_empty());

    // Phase 2: /metrics carries one series per resource.
    let m = rewind_test_support::request(c.http, "GET", "/metrics", None, &[])
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&m.body).to_string();
    for line in [
        "rewind_outbox_new{resource_id=\"127.0.0.1:3306\"} 5",
        "rewind_outbox_dead{resource_id=\"127.0.0.1:3306\"} 2",
        "rewind_outbox_oldest_new_age_seconds{resource_id=\"127.0.0.1:3306\"} 3.2",
        "rewind_outbox_published_total{resource_id=\"127.0.0.1:3306\"} 41",
        "rewind_barrier_duplicates_total{resource_id=\"127.0.0.1:3306\"} 3",
        "# TYPE rewind_outbox_published_total counter",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
    }

    // Phase 3: a redrive is an operator action, refused without the credential exactly
    // as a conflict resolution is (and not audited: nobody to name).
    let path = redrive_path("127.0.0.1%3A3306", "m-new");
    let resolve = "/api/v1/conflicts/1/resolve";
    let retry = Some(&br#"{"action":"retry"}"#[..]);
    for headers in [vec![], vec![("Authorization", "Bearer not-the-token")]] {
        let (st, v) = c.http_with("POST", &path, None, &headers).await;
        let (resolve_st, _) = c.http_with("POST", resolve, retry, &headers).await;
        assert_eq!((st, resolve_st), (401, 401), "{v}");
        assert_eq!(v["error"], "unauthorized", "{v}");
    }
    assert!(
        proxy_redrives(&proxy).is_empty(),
        "nothing reached the proxy"
    );

    // Phase 4: done → 200, status new; the cached report follows at once.
    let (st, v) = c.operator("POST", &path, None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v,
        json!({"resource_id": RESOURCE, "message_id": "m-new", "status": "new"})
    );
    assert_eq!(dead_ids(&c, "").await, ["m-old"]);
    expected["dead"] = json!(1);
    expected["new"] = json!(6);
    assert_eq!(outbox(&c).await[0], expected);

    // Not dead → 404 (raw colon in the path works too). Ids are URL-decoded.
    let (st, v) = c
        .operator("POST", &redrive_path(RESOURCE, "m-old"), None)
        .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (404, Some("message_not_dead")),
        "{v}"
    );
    assert!(
        v["message"].as_str().unwrap_or_default().contains("m-old"),
        "{v}"
    );
    let (st, _) = c
        .operator("POST", &redrive_path(RESOURCE, "odd%20id%2F1"), None)
        .await;
    assert_eq!(st, 404);
    assert_eq!(proxy_redrives(&proxy), ["m-new", "m-old", "odd id/1"]);
    // The proxy said m-old is not DEAD: the cached list stops offering it.
    assert!(dead_ids(&c, "").await.is_empty());
    expected["dead"] = json!(0);
    assert_eq!(outbox(&c).await[0], expected);

    // Unknown resource → 404 without asking any proxy.
    let (st, v) = c
        .operator("POST", &redrive_path("nowhere%3A1", "m-1"), None)
        .await;
    assert_eq!(
        (st, v["error"].as_str()),
        (404, Some("resource_not_found")),
        "{v}"
    );

    // Phase 5: a resource whose proxy reported, then left: kept, and 503 on redrive.
    let gone = FakeProxy::attach(&c, &["10.0.0.9:3306"]).await;
    gone.send(report("10.0.0.9:3306", 7, vec![dead("g-1", 5_000)]))
        .await;
    wait_report(&c, "10.0.0.9:3306", 7).await;
    drop(gone);
    let (st, v) = c
        .operator("POST", &redrive_path("10.0.0.9:3306", "g-1"), None)
        .await;
    assert_eq!(st, 503, "{v}");
    let kind = v["error"].as_str().unwrap_or_default();
    assert!(kind == "no_proxy" || kind == "proxy_failed", "{v}");
    assert_eq!(dead_ids(&c, "").await, ["g-1"], "kept after the detach");

    // The first proxy leaves too: its report stays, redrive 503.
    drop(proxy);
    let (st, v) = c
        .operator("POST", &redrive_path(RESOURCE, "m-old"), None)
        .await;
    assert_eq!(st, 503, "{v}");
    let ids: Vec<Value> = outbox(&c)
        .await
        .iter()
        .map(|r| r["resource_id"].clone())
        .collect();
    assert_eq!(
        ids,
        [json!("10.0.0.9:3306"), json!(RESOURCE)],
        "sorted, kept"
    );

    // Phase 6: a proxy that never answers: 503 timeout after the bounded wait.
    let silent = FakeProxy::attach(&c, &["silent:1"]).await;
    *silent.redrive.lock().unwrap() = RedriveAnswer::Silent;
    let t = std::time::Instant::now();
    let (st, v) = c
        .operator("POST", &redrive_path("silent:1", "s-1"), None)
        .await;
    assert_eq!((st, v["error"].as_str()), (503, Some("timeout")), "{v}");
    assert!(t.elapsed() >= Duration::from_secs(9), "{:?}", t.elapsed());
    assert_eq!(proxy_redrives(&silent), ["s-1"]);

    // Phase 7: every operator redrive is in the audit log, with its result.
    let audit: Vec<(String, String)> = c
        .audit()
        .await
        .iter()
        .filter(|e| e["action"] == "outbox redrive")
        .map(|e| {
            assert_eq!(e["who"], "admin");
            (
                e["target"].as_str().unwrap_or_default().to_string(),
                e["result"].as_str().unwrap_or_default().to_string(),
            )
        })
        .rev()
        .collect();
    let targets: Vec<&str> = audit.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        targets,
        [
            "127.0.0.1:3306/m-new",
            "127.0.0.1:3306/m-old",
            "127.0.0.1:3306/odd id/1",
            "nowhere:1/m-1",
            "10.0.0.9:3306/g-1",
            "127.0.0.1:3306/m-old",
            "silent:1/s-1",
        ],
        "{audit:?}"
    );
    let results: Vec<&str> = audit.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(&results[..3], ["done", "not dead", "not dead"], "{audit:?}");
    assert!(
        results[3..].iter().all(|r| r.starts_with("failed: ")),
        "{audit:?}"
    );
    assert!(results[3].contains("unknown"), "{audit:?}");
    assert!(results[6].contains("did not answer"), "{audit:?}");
}

/// Message ids of the redrives the fake proxy received, in order.
fn proxy_redrives(p: &FakeProxy) -> Vec<String> {
    p.seen
        .lock()
        .unwrap()
        .iter()
        .filter_map(|m| match &m.kind {
            Some(coordinator_message::Kind::OutboxRedrive(r)) => Some(r.message_id.clone()),
            _ => None,
        })
        .collect()
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
