//! Phase two through a fake proxy on the Attach stream: commit waits for a proxy,
//! dirty writes become conflicts, an operator's resolve reaches the proxy.

use std::time::Duration;

use rewind_protocol::v1::{coordinator_message, BranchAction, ResolveAction};
use rewind_test_support::{eventually, Coordinator, TempDir};

use crate::fake_proxy::{FakeProxy, RollbackAnswer};
use crate::{begin, key, register};

async fn status(c: &Coordinator, xid: &str) -> String {
    c.http("GET", &format!("/api/v1/transactions/{xid}"), None)
        .await
        .1["status"]
        .as_str()
        .unwrap_or("?")
        .to_string()
}

#[tokio::test]
async fn t20_commit_waits_for_proxy_then_completes() {
    let dir = TempDir::new("p2commit");
    let c = Coordinator::start(&dir, &[]).await;
    let (mut tm, mut rm) = (c.tm().await, c.rm().await);
    let xid = begin(&mut tm).await;
    register(&mut rm, &xid, "db1", vec![key("t", &[b"1"])])
        .await
        .unwrap()
        .unwrap();
    register(&mut rm, &xid, "db2", vec![key("t", &[b"1"])])
        .await
        .unwrap()
        .unwrap();
    let (st, _) = c
        .http("POST", &format!("/api/v1/transactions/{xid}/commit"), None)
        .await;
    assert_eq!(st, 200);
    eventually(
        "commit_retrying without a proxy",
        Duration::from_secs(5),
        || async { status(&c, &xid).await == "commit_retrying" },
    )
    .await;
    let p1 = FakeProxy::attach(&c, &["db1"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        status(&c, &xid).await,
        "commit_retrying",
        "db2 still has no proxy"
    );
    let _p2 = FakeProxy::attach(&c, &["db2"]).await;
    eventually(
        "committed once both proxies attached",
        Duration::from_secs(10),
        || async { status(&c, &xid).await == "committed" },
    )
    .await;
    let seen = p1.seen.lock().unwrap().clone();
    assert!(seen.iter().any(|m| matches!(&m.kind,
        Some(coordinator_message::Kind::BranchCommand(b)) if b.action == BranchAction::Commit as i32 && b.xid == xid)));
}

#[tokio::test]
async fn t21_dirty_write_conflict_resolved_by_operator() {
    let dir = TempDir::new("p2dirty");
    let c = Coordinator::start(&dir, &[]).await;
    let proxy = FakeProxy::attach(&c, &["db1"]).await;
    *proxy.rollback.lock().unwrap() = RollbackAnswer::Dirty;
    let (mut tm, mut rm) = (c.tm().await, c.rm().await);
    let xid = begin(&mut tm).await;
    register(&mut rm, &xid, "db1", vec![key("acct", &[b"6"])])
        .await
        .unwrap()
        .unwrap();
    register(&mut rm, &xid, "db1", vec![key("acct", &[b"7"])])
        .await
        .unwrap()
        .unwrap();
    let (st, v) = c
        .http(
            "POST",
            &format!("/api/v1/transactions/{xid}/rollback"),
            None,
        )
        .await;
    assert_eq!(
        (st, v["status"].as_str()),
        (200, Some("rollback_failed")),
        "{v}"
    );
    // Locks stay held; the conflict shows before/after/current.
    let (_, locks) = c.http("GET", "/api/v1/locks", None).await;
    assert_eq!(locks.as_array().unwrap().len(), 2, "{locks}");
    let (_, conflicts) = c.operator("GET", "/api/v1/conflicts", None).await;
    let conflict = &conflicts[0];
    assert_eq!(conflict["xid"], xid.as_str());
    assert_eq!(conflict["state"], "open");
    assert_eq!(conflict["current"]["balance"], 55);
    assert_eq!(conflict["before"]["balance"], 100);
    let id = conflict["id"].as_u64().unwrap();

    // Operator restores the before image; the proxy gets the command, then the rollback
    // resumes (now answered Done) and finishes.
    *proxy.rollback.lock().unwrap() = RollbackAnswer::Done;
    let (st, v) = c
        .operator(
            "POST",
            &format!("/api/v1/conflicts/{id}/resolve"),
            Some(br#"{"action":"restore_before"}"#),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["state"], "resolved", "{v}");
    assert_eq!(v["action"], "restore_before");
    let seen = proxy.seen.lock().unwrap().clone();
    assert!(seen.iter().any(|m| matches!(&m.kind,
        Some(coordinator_message::Kind::ResolveCommand(r)) if r.conflict_id == id && r.action == ResolveAction::RestoreBefore as i32)));
    eventually(
        "rolled back after the resolve",
        Duration::from_secs(10),
        || async { status(&c, &xid).await == "rolled_back" },
    )
    .await;
    let (_, locks) = c.http("GET", "/api/v1/locks", None).await;
    assert_eq!(locks, serde_json::json!([]));
    // A second resolve of the same conflict is refused.
    let (st, _) = c
        .operator(
            "POST",
            &format!("/api/v1/conflicts/{id}/resolve"),
            Some(br#"{"action":"retry"}"#),
        )
        .await;
    assert_eq!(st, 409);
}

#[tokio::test]
async fn t22_timeout_rolls_back_and_waiter_fails_fast() {
    let dir = TempDir::new("p2timeout");
    let c = Coordinator::start(&dir, &[]).await;
    let (mut tm, mut rm) = (c.tm().await, c.rm().await);
    let xid = tm
        .begin(rewind_protocol::v1::BeginRequest {
            name: "short".into(),
            timeout_ms: 300,
        })
        .await
        .unwrap()
        .into_inner()
        .xid;
    register(&mut rm, &xid, "db1", vec![key("t", &[b"1"])])
        .await
        .unwrap()
        .unwrap();
    eventually(
        "timeout starts the rollback",
        Duration::from_secs(5),
        || async { status(&c, &xid).await == "rollback_retrying" },
    )
    .await;
    // The holder is rolling back: a waiter learns it and can fail fast.
    let other = begin(&mut tm).await;
    let r = rm
        .register_branch(rewind_protocol::v1::RegisterBranchRequest {
            xid: other,
            resource_id: "db1".into(),
            lock_keys: vec![key("t", &[b"1"])],
            request_id: "w".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    match r.outcome.unwrap() {
        rewind_protocol::v1::register_branch_response::Outcome::Conflict(c) => {
            assert!(c.holder_rolling_back)
        }
        o => panic!("{o:?}"),
    }
    let _p = FakeProxy::attach(&c, &["db1"]).await;
    eventually("timeout_rolled_back", Duration::from_secs(10), || async {
        status(&c, &xid).await == "timeout_rolled_back"
    })
    .await;
}
