//! The JSON the API answers, byte for byte as applications and the console read it.

use serde_json::{json, Value};

use super::bodies;
use crate::engine::messages::MessageEvent;
use crate::engine::{
    AuditEntry, BranchType, Conflict, ConflictState, GlobalRecord, GlobalStatus, PreparedXa,
    ResolveAction,
};
use crate::engine::{BranchRecord, BranchStatus, MessageRecord, MessageStatus};
use crate::engine::{StatusChange, TccCall};
use crate::error::CoordinatorError;
use crate::locks::RowKey;
use crate::outbox::OutboxReport;
use crate::outbox::{DeadMessage, ResourceOutbox};
use crate::xa_waits::XaWaiter;

fn xid(n: u64) -> String {
    rewind_protocol::xid::format(n)
}

fn branch(id: u64, t: BranchType) -> BranchRecord {
    BranchRecord {
        branch_id: id,
        resource_id: "db1".into(),
        status: BranchStatus::PhaseOneDone,
        request_id: "req-1".into(),
        lock_keys: vec![],
        locks_held: true,
        registered_ms: 1000 + id,
        phase_two_attempts: 2,
        last_error: None,
        branch_type: t,
        tcc: None,
        owner: String::new(),
        message_id: None,
    }
}

fn record() -> GlobalRecord {
    let mut at = branch(1, BranchType::At);
    at.lock_keys = vec![RowKey {
        table: "account".into(),
        pk: vec![b"7".to_vec(), vec![0xff, 0x00]],
    }];
    at.last_error = Some("boom".into());
    let mut tcc = branch(2, BranchType::Tcc);
    tcc.resource_id = "pay".into();
    tcc.tcc = Some(TccCall {
        confirm_url: "http://x/c".into(),
        cancel_url: "http://x/x".into(),
        payload: Some("{\"a\":1}".into()),
    });
    let mut tcc_none = branch(3, BranchType::Tcc);
    tcc_none.tcc = Some(TccCall {
        confirm_url: "http://y/c".into(),
        cancel_url: "http://y/x".into(),
        payload: None,
    });
    let xa = branch(4, BranchType::Xa);
    let mut msg = branch(5, BranchType::Msg);
    msg.message_id = Some("msg-1".into());
    GlobalRecord {
        xid: 42,
        name: "order".into(),
        status: GlobalStatus::RollbackFailed,
        timed_out: true,
        created_ms: 100,
        deadline_ms: 600,
        updated_ms: 700,
        finished_ms: None,
        history: vec![StatusChange {
            status: GlobalStatus::Begin,
            at_ms: 100,
        }],
        branches: vec![at, tcc, tcc_none, xa, msg],
    }
}

fn transaction_body(r: &GlobalRecord) -> Value {
    serde_json::to_value(bodies::Transaction::from(r)).unwrap()
}

#[test]
fn a_transaction_answers_its_documented_shape() {
    let branch = |id: u64, ty: &str| {
        json!({
            "branch_id": id, "type": ty, "resource_id": "db1", "status": "phase_one_done",
            "lock_keys": [], "locks_held": true, "registered_ms": 1000 + id,
            "phase_two_attempts": 2, "last_error": null,
        })
    };
    let mut at = branch(1, "at");
    at["lock_keys"] = json!([{"table": "account", "pk": ["7", {"hex": "ff00"}]}]);
    at["last_error"] = json!("boom");
    let mut tcc = branch(2, "tcc");
    tcc["resource_id"] = json!("pay");
    tcc["name"] = json!("pay");
    tcc["confirm_url"] = json!("http://x/c");
    tcc["cancel_url"] = json!("http://x/x");
    tcc["payload"] = json!({"a": 1});
    let mut tcc_none = branch(3, "tcc");
    tcc_none["name"] = json!("db1");
    tcc_none["confirm_url"] = json!("http://y/c");
    tcc_none["cancel_url"] = json!("http://y/x");
    tcc_none["payload"] = Value::Null;
    let mut xa = branch(4, "xa");
    xa["xa_bqual"] = json!("req-1");
    let mut msg = branch(5, "message");
    msg["message_id"] = json!("msg-1");
    assert_eq!(
        transaction_body(&record()),
        json!({
            "xid": xid(42), "name": "order", "status": "rollback_failed", "timed_out": true,
            "timeout_ms": 500, "created_ms": 100, "deadline_ms": 600, "updated_ms": 700,
            "finished_ms": null, "history": [{"status": "begin", "at_ms": 100}],
            "branches": [at, tcc, tcc_none, xa, msg],
        })
    );
    let mut done = record();
    done.finished_ms = Some(900);
    done.branches.clear();
    assert_eq!(transaction_body(&done)["finished_ms"], json!(900));
    assert_eq!(transaction_body(&done)["branches"], json!([]));
}

fn conflict(state: ConflictState) -> Conflict {
    Conflict {
        id: 3,
        xid: 42,
        branch_id: 1,
        resource_id: "db1".into(),
        table: "item".into(),
        pk: vec![b"1".to_vec()],
        before: "{\"qty\":\"10\"}".into(),
        after: "{\"qty\":\"11\"}".into(),
        current: "not json".into(),
        state,
        last_error: None,
        updated_ms: 5,
    }
}

fn conflict_body(c: &Conflict) -> Value {
    serde_json::to_value(bodies::ConflictBody::from(c)).unwrap()
}

#[test]
fn a_conflict_answers_its_documented_shape() {
    let base = json!({
        "id": 3, "xid": xid(42), "branch_id": 1, "resource_id": "db1", "table": "item",
        "pk": ["1"], "before": {"qty": "10"}, "after": {"qty": "11"}, "current": "not json",
        "last_error": null, "updated_ms": 5,
    });
    let with = |extra: Value| {
        let mut v = base.clone();
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    assert_eq!(
        conflict_body(&conflict(ConflictState::Open)),
        with(json!({"state": "open"}))
    );
    assert_eq!(
        conflict_body(&conflict(ConflictState::Resolving {
            action: ResolveAction::RestoreBefore,
            command_id: 9
        })),
        with(json!({"state": "resolving", "action": "restore_before", "command_id": 9}))
    );
    assert_eq!(
        conflict_body(&conflict(ConflictState::Resolved {
            action: ResolveAction::KeepCurrent
        })),
        with(json!({"state": "resolved", "action": "keep_current"}))
    );
    let mut c = conflict(ConflictState::Superseded);
    c.last_error = Some("again".into());
    assert_eq!(
        conflict_body(&c),
        with(json!({"state": "superseded", "last_error": "again"}))
    );
}

fn message() -> MessageRecord {
    MessageRecord {
        message_id: "msg-1".into(),
        topic: "t".into(),
        key: None,
        payload: "{\"id\":1}".into(),
        headers: vec![("a".into(), "1".into()), ("b".into(), "2".into())],
        status: MessageStatus::Sent,
        resource_id: Some("db1".into()),
        proxy_id: None,
        xid: Some(42),
        branch_id: Some(5),
        check_after_ms: 5000,
        created_ms: 1,
        updated_ms: 2,
        checks: 1,
        publish_failures: 0,
        last_error: None,
        consumers: vec!["c1".into()],
        history: vec![
            MessageEvent {
                at_ms: 1,
                event: "prepared".into(),
                detail: String::new(),
            },
            MessageEvent {
                at_ms: 2,
                event: "sent".into(),
                detail: "by relay".into(),
            },
        ],
    }
}

#[test]
fn a_message_answers_its_documented_shape() {
    let short = json!({
        "message_id": "msg-1", "topic": "t", "key": null, "status": "sent",
        "resource_id": "db1", "proxy_id": null, "xid": xid(42), "branch_id": 5,
        "check_after_ms": 5000, "created_ms": 1, "updated_ms": 2, "checks": 1,
        "publish_failures": 0, "last_error": null, "consumers": ["c1"],
    });
    let m = message();
    assert_eq!(
        serde_json::to_value(bodies::Message::from(&m)).unwrap(),
        short
    );
    let mut full = short.clone();
    full["payload"] = json!("{\"id\":1}");
    full["headers"] = json!({"a": "1", "b": "2"});
    full["history"] = json!([
        {"at_ms": 1, "event": "prepared", "detail": ""},
        {"at_ms": 2, "event": "sent", "detail": "by relay"},
    ]);
    assert_eq!(
        serde_json::to_value(bodies::MessageDetail::from(&m)).unwrap(),
        full
    );
    let mut plain = message();
    plain.xid = None;
    plain.branch_id = None;
    let v = serde_json::to_value(bodies::Message::from(&plain)).unwrap();
    assert_eq!((&v["xid"], &v["branch_id"]), (&Value::Null, &Value::Null));
}

#[test]
fn operator_views_answer_their_documented_shapes() {
    let p = PreparedXa {
        xid: 42,
        status: GlobalStatus::Committing,
        branch_id: 4,
        branch_status: BranchStatus::PhaseOneDone,
        resource_id: "db1".into(),
        bqual: "q1".into(),
        registered_ms: 100,
    };
    let w = XaWaiter {
        xid: xid(42),
        bqual: "q1".into(),
        thread_id: 77,
        query: "UPDATE t SET a = 1".into(),
        waiting_ms: 30,
    };
    assert_eq!(
        serde_json::to_value(bodies::PreparedXaBranch::new(&p, &[w], 150)).unwrap(),
        json!({
            "xid": xid(42), "branch_id": 4, "resource_id": "db1", "xa_bqual": "q1",
            "registered_ms": 100, "age_ms": 50, "status": "committing",
            "branch_status": "phase_one_done",
            "waiters": [{"thread_id": 77, "query": "UPDATE t SET a = 1", "waiting_ms": 30}],
        })
    );

    let dead = DeadMessage {
        message_id: "m1".into(),
        topic: "t".into(),
        msg_key: "k".into(),
        attempts: 3,
        last_error: "nack".into(),
        created_at_ms: 9,
    };
    let report = ResourceOutbox {
        report: OutboxReport {
            resource_id: "db1".into(),
            proxy_id: "p1".into(),
            broker: "amqp://guest@h/".into(),
            new_count: 1,
            held_count: 2,
            oldest_new_age_ms: 3,
            dead_count: 4,
            published_total: 5,
            failed_total: 6,
            last_error: String::new(),
            dead: vec![dead.clone()],
            barrier_rows: 7,
            barrier_duplicates: 8,
            read_at_ms: 9,
        },
        received_at_ms: 10,
        stale: false,
    };
    assert_eq!(
        serde_json::to_value(bodies::Outbox::from(&report)).unwrap(),
        json!({
            "resource_id": "db1", "proxy_id": "p1", "broker": "amqp://guest@h/", "new": 1,
            "held": 2, "oldest_new_age_ms": 3, "dead": 4, "published_total": 5,
            "failed_total": 6, "last_error": "", "barrier_rows": 7, "barrier_duplicates": 8,
            "read_at_ms": 9, "received_at_ms": 10, "stale": false,
        })
    );
    assert_eq!(
        serde_json::to_value(bodies::DeadOutboxMessage::new("db1", &dead)).unwrap(),
        json!({
            "resource_id": "db1", "message_id": "m1", "topic": "t", "msg_key": "k",
            "attempts": 3, "last_error": "nack", "created_at_ms": 9,
        })
    );

    let a = AuditEntry {
        id: 1,
        at_ms: 2,
        who: "admin".into(),
        action: "login".into(),
        target: "console".into(),
        result: "ok".into(),
    };
    assert_eq!(
        serde_json::to_value(bodies::Audit::from(&a)).unwrap(),
        json!({"id": 1, "at_ms": 2, "who": "admin", "action": "login", "target": "console",
               "result": "ok"})
    );

    let l = crate::engine::HeldLock {
        resource_id: "db1".into(),
        key: RowKey {
            table: "t".into(),
            pk: vec![b"1".to_vec(), b"a".to_vec()],
        },
        xid: 42,
        branch_id: 1,
        since_ms: 3,
        status: GlobalStatus::Begin,
    };
    assert_eq!(
        serde_json::to_value(bodies::Lock::from(l)).unwrap(),
        json!({"resource_id": "db1", "table": "t", "pk": ["1", "a"], "xid": xid(42),
               "branch_id": 1, "since_ms": 3, "status": "begin"})
    );
}

#[test]
fn the_error_body_is_shared_and_names_the_leader() {
    let v = serde_json::to_value(bodies::ErrorBody::from(&CoordinatorError::NotFound(42))).unwrap();
    assert_eq!(
        v,
        json!({"error": "not_found", "message": format!("global transaction {} not found", xid(42))})
    );
    let v = serde_json::to_value(bodies::ErrorBody::from(&CoordinatorError::NotLeader {
        grpc: Some("127.0.0.1:1".into()),
        http: None,
    }))
    .unwrap();
    assert_eq!(v["error"], "not_leader");
    assert_eq!(v["leader_grpc"], "127.0.0.1:1");
    assert!(v.as_object().unwrap().contains_key("leader_http"));
    assert_eq!(v["leader_http"], Value::Null);
}

#[test]
fn health_and_cluster_answer_their_documented_shapes() {
    use crate::cluster::{ClusterStatus, MemberStatus, Role};
    let standalone = bodies::Health {
        status: bodies::Serving::Serving,
        node: bodies::Node::Standalone(bodies::Standalone {
            role: bodies::StandaloneRole::Standalone,
        }),
    };
    assert_eq!(
        serde_json::to_value(standalone).unwrap(),
        json!({"status": "serving", "role": "standalone"})
    );
    let c = ClusterStatus {
        node_id: 2,
        role: Role::Follower,
        term: 3,
        leader: Some(1),
        leader_grpc: Some("127.0.0.1:1".into()),
        leader_http: Some("127.0.0.1:2".into()),
        last_log_index: Some(10),
        last_applied: Some(9),
        snapshot: None,
        log_entries: 10,
        members: vec![MemberStatus {
            node_id: 1,
            grpc: "127.0.0.1:1".into(),
            http: "127.0.0.1:2".into(),
            voter: true,
        }],
    };
    let expected = json!({
        "node_id": 2, "role": "follower", "term": 3, "leader": 1,
        "leader_grpc": "127.0.0.1:1", "leader_http": "127.0.0.1:2", "last_log_index": 10,
        "last_applied": 9, "snapshot": null, "log_entries": 10,
        "members": [{"node_id": 1, "grpc": "127.0.0.1:1", "http": "127.0.0.1:2", "voter": true}],
    });
    assert_eq!(serde_json::to_value(&c).unwrap(), expected);
    let mut member = expected.clone();
    member["status"] = json!("serving");
    let health = bodies::Health {
        status: bodies::Serving::Serving,
        node: bodies::Node::Member(c),
    };
    assert_eq!(serde_json::to_value(health).unwrap(), member);
}

#[test]
fn status_names_in_the_api_are_their_serde_names() {
    for s in GlobalStatus::ALL {
        assert_eq!(serde_json::to_value(s).unwrap(), json!(s.name()));
    }
    for s in MessageStatus::ALL {
        assert_eq!(serde_json::to_value(s).unwrap(), json!(s.name()));
    }
}

/// Every `$ref` in `v`, as the names they point to under `#/components/schemas/`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

/// The description is whole: unique operation ids, every reference resolves, every API
/// call documents its errors with the shared body, and the calls of DESIGN.md are there.
/// (That every route is described holds by construction: `routes!` adds both.)
#[test]
fn the_description_is_whole() {
    let (_, doc) = super::api();
    let v = serde_json::to_value(&doc).unwrap();
    assert_eq!(v["openapi"], "3.1.0");

    let schemas = v["components"]["schemas"].as_object().unwrap();
    let mut all = Vec::new();
    refs(&v, &mut all);
    assert!(!all.is_empty());
    for r in &all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("{r}: only schema references"));
        assert!(schemas.contains_key(name), "{r} is not in components");
    }

    let mut ids = std::collections::BTreeSet::new();
    let mut described = std::collections::BTreeSet::new();
    for (path, item) in v["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            described.insert(format!("{} {path}", method.to_uppercase()));
            let id = op["operationId"].as_str().unwrap_or_default();
            assert!(ids.insert(id.to_string()), "operationId {id:?} twice");
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.contains_key("200"), "{method} {path}: its answer");
            let open = [
                "/api/v1/cluster",
                "/api/v1/openapi.json",
                "/healthz",
                "/metrics",
            ];
            if !open.contains(&path.as_str()) {
                for code in ["500", "503"] {
                    assert_eq!(
                        responses[code]["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path}: {code} with the shared error body"
                    );
                }
                assert!(
                    op["security"].is_array() || path == "/api/v1/login",
                    "{method} {path}: says who may call it"
                );
            }
            if op["requestBody"].is_object() {
                assert!(responses.contains_key("400"), "{method} {path}: bad bodies");
                assert!(
                    responses.contains_key("413"),
                    "{method} {path}: large bodies"
                );
            }
        }
    }
    for call in [
        "POST /api/v1/transactions",
        "GET /api/v1/transactions",
        "GET /api/v1/transactions/{xid}",
        "POST /api/v1/transactions/{xid}/commit",
        "POST /api/v1/transactions/{xid}/rollback",
        "POST /api/v1/transactions/{xid}/branches",
        "POST /api/v1/transactions/{xid}/messages",
        "GET /api/v1/locks",
        "GET /api/v1/conflicts",
        "POST /api/v1/conflicts/{id}/resolve",
        "POST /api/v1/messages",
        "GET /api/v1/messages",
        "GET /api/v1/messages/{id}",
        "GET /api/v1/openapi.json",
        "GET /metrics",
        "GET /healthz",
    ] {
        assert!(described.contains(call), "{call} is described");
    }
    let security = v["components"]["securitySchemes"].as_object().unwrap();
    for s in [
        super::openapi::OPERATOR_TOKEN,
        super::openapi::CONSOLE_SESSION,
        super::openapi::CSRF_TOKEN,
    ] {
        assert!(security.contains_key(s), "security scheme {s}");
    }
    // An optional body is optional, and of its type (not `T | null`).
    let begin = &v["paths"]["/api/v1/transactions"]["post"]["requestBody"];
    assert_eq!(begin["required"], false);
    assert_eq!(
        begin["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/BeginBody"
    );
}

/// Only an absent (empty) body counts as no body: whitespace alone is not JSON. ASCII
/// whitespace JSON does not know (`\x0c`) and JSON's own (`\n`) both began a transaction
/// on POST /transactions where the description says 400 (schemathesis, ST201).
#[test]
fn only_an_empty_body_counts_as_no_body() {
    assert!(super::json_blank(b""));
    for not_blank in [
        &b"\x0c"[..],
        b" \x0b",
        b"\x00",
        b"{}",
        b" \x0c\n",
        b" ",
        b"\r\n\t ",
        b"\n",
    ] {
        assert!(!super::json_blank(not_blank), "{not_blank:?}");
    }
}
