//! The REST API's answers to good and bad input.

use rewind_protocol::v1::{GlobalRequest, QueryLocksRequest};
use rewind_test_support::{Coordinator, TempDir};

use crate::{begin, key, register};

#[tokio::test]
async fn t10_rest_api_and_bad_input() {
    let dir = TempDir::new("http");
    let c = Coordinator::start(&dir, &[]).await;

    let (st, v) = c.http("GET", "/healthz", None).await;
    assert_eq!((st, v["role"].as_str()), (200, Some("standalone")));

    // Begin with and without a body.
    let (st, v) = c
        .http(
            "POST",
            "/api/v1/transactions",
            Some(br#"{"name":"pay","timeout_ms":60000}"#),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["status"], "begin");
    let xid = v["xid"].as_str().unwrap().to_string();
    let (st, _) = c.http("POST", "/api/v1/transactions", None).await;
    assert_eq!(st, 200);

    // Malformed JSON, wrong types, unknown fields, oversized bodies: clear 4xx. Only an
    // object: serde alone would fill the body's fields from an array (schemathesis found
    // `[null, null]` beginning a transaction).
    for bad in [
        &b"{bad"[..],
        br#"{"timeout_ms":"x"}"#,
        br#"{"nam":"x"}"#,
        b"[1,2",
        b"[null, null]",
        b"[\"n\", 5]",
        b"null",
        b"7",
    ] {
        let (st, v) = c.http("POST", "/api/v1/transactions", Some(bad)).await;
        assert_eq!(st, 400, "{v}");
        assert_eq!(v["error"], "invalid_argument");
        assert!(v["message"].as_str().unwrap().contains("JSON"), "{v}");
    }
    let big = vec![b' '; 2 << 20];
    let (st, v) = c.http("POST", "/api/v1/transactions", Some(&big)).await;
    assert_eq!(st, 413, "{v}");

    // Unknown xid (well-formed or not): 404 everywhere.
    for path in [
        "/api/v1/transactions/rw-999999",
        "/api/v1/transactions/nonsense",
    ] {
        assert_eq!(c.http("GET", path, None).await.0, 404);
        assert_eq!(c.http("POST", &format!("{path}/commit"), None).await.0, 404);
        assert_eq!(
            c.http("POST", &format!("{path}/rollback"), None).await.0,
            404
        );
    }

    // Keys with separator characters simply work, and do not collide.
    let mut rm = c.rm().await;
    let weird = key("db.t:a;b,c_d", &[b"1_2", b":;,|\\"]);
    assert!(register(&mut rm, &xid, "res:1", vec![weird.clone()])
        .await
        .unwrap()
        .is_ok());
    let mut tm = c.tm().await;
    let other = begin(&mut tm).await;
    let split = key("db.t:a;b,c_d", &[b"1", b"2", b":;,|\\"]);
    assert!(register(&mut rm, &other, "res:1", vec![split])
        .await
        .unwrap()
        .is_ok());
    assert_eq!(
        register(&mut rm, &other, "res:1", vec![weird.clone()])
            .await
            .unwrap(),
        Err(xid.clone())
    );
    let (st, locks) = c.http("GET", "/api/v1/locks", None).await;
    assert_eq!(st, 200);
    let mine: Vec<_> = locks
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["xid"] == xid.as_str())
        .collect();
    assert_eq!(mine.len(), 1, "{locks}");
    assert_eq!(mine[0]["table"], "db.t:a;b,c_d");
    assert_eq!(mine[0]["pk"], serde_json::json!(["1_2", ":;,|\\"]));
    assert_eq!(mine[0]["resource_id"], "res:1");
    let held = rm
        .query_locks(QueryLocksRequest {
            keys: vec![LockKeyWith::res(weird, "res:1")],
            xid: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .held;
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].xid, xid);

    // Empty keys and bad ids: INVALID_ARGUMENT, never a crash.
    let e = register(&mut rm, &xid, "res:1", vec![key("t", &[])])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let e = register(&mut rm, &xid, "res:1", vec![key("", &[b"1"])])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let e = register(&mut rm, "rw-424242", "res:1", vec![key("t", &[b"1"])])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");

    // Show, with branches and lock keys.
    let (st, v) = c
        .http("GET", &format!("/api/v1/transactions/{xid}"), None)
        .await;
    assert_eq!(st, 200);
    assert_eq!(v["name"], "pay");
    assert_eq!(v["branches"][0]["resource_id"], "res:1");

    // Commit (no proxy attached: the decision is durable, phase two retries later),
    // then rollback of it is a 409, and the reverse.
    let (st, v) = c
        .http("POST", &format!("/api/v1/transactions/{xid}/commit"), None)
        .await;
    assert_eq!(st, 200, "{v}");
    assert!(
        ["committing", "commit_retrying"].contains(&v["status"].as_str().unwrap()),
        "{v}"
    );
    let (st, v) = c
        .http(
            "POST",
            &format!("/api/v1/transactions/{xid}/rollback"),
            None,
        )
        .await;
    assert_eq!(st, 409, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("cannot rollback"),
        "{v}"
    );
    // Commit released the locks at once.
    let (_, locks) = c.http("GET", "/api/v1/locks", None).await;
    assert!(locks
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["xid"] != xid.as_str()));

    let (_, v) = c.http("POST", "/api/v1/transactions", None).await;
    let x2 = v["xid"].as_str().unwrap().to_string();
    let (st, v) = c
        .http("POST", &format!("/api/v1/transactions/{x2}/rollback"), None)
        .await;
    assert_eq!(
        (st, v["status"].as_str()),
        (200, Some("rolled_back")),
        "{v}"
    );
    let (st, v) = c
        .http("POST", &format!("/api/v1/transactions/{x2}/commit"), None)
        .await;
    assert_eq!(st, 409, "{v}");
    // Register on a finished transaction is refused.
    let e = register(&mut rm, &x2, "res:1", vec![key("t", &[b"1"])])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    let s = tm
        .status(GlobalRequest { xid: x2.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.status, rewind_protocol::GlobalStatus::RolledBack as i32);

    // Filters: newest first; unknown status rejected.
    let (st, v) = c
        .http("GET", "/api/v1/transactions?status=rolled_back", None)
        .await;
    assert_eq!(st, 200);
    assert_eq!(v[0]["xid"], x2.as_str());
    let (st, v) = c.http("GET", "/api/v1/transactions", None).await;
    assert_eq!(st, 200);
    let xids: Vec<u64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["xid"].as_str().unwrap()[3..].parse().unwrap())
        .collect();
    assert!(
        xids.windows(2).all(|w| w[0] > w[1]),
        "newest first: {xids:?}"
    );
    assert_eq!(
        c.http("GET", "/api/v1/transactions?status=bogus", None)
            .await
            .0,
        400
    );

    // Conflicts API input: reading is open (DESIGN.md), resolving is an operator action.
    let (st, v) = c.http("GET", "/api/v1/conflicts", None).await;
    assert_eq!((st, v), (200, serde_json::json!([])));
    assert_eq!(
        c.http(
            "POST",
            "/api/v1/conflicts/77/resolve",
            Some(br#"{"action":"retry"}"#)
        )
        .await
        .0,
        401
    );
    let (st, v) = c.operator("GET", "/api/v1/conflicts", None).await;
    assert_eq!((st, v), (200, serde_json::json!([])));
    assert_eq!(
        c.operator(
            "POST",
            "/api/v1/conflicts/77/resolve",
            Some(br#"{"action":"retry"}"#)
        )
        .await
        .0,
        404
    );
    assert_eq!(
        c.operator(
            "POST",
            "/api/v1/conflicts/77/resolve",
            Some(br#"{"action":"nuke"}"#)
        )
        .await
        .0,
        400
    );
    assert_eq!(
        c.operator(
            "POST",
            "/api/v1/conflicts/x/resolve",
            Some(br#"{"action":"retry"}"#)
        )
        .await
        .0,
        400
    );

    // A malformed query string or path segment gets the API's JSON error, not axum's
    // plain text (the description says every error has the shared body).
    for path in [
        "/api/v1/locks?limit=x",
        "/api/v1/transactions?limit=-1",
        "/api/v1/audit?before=18446744073709551616",
        "/api/v1/messages?before_ms=x",
        "/api/v1/transactions/%FF",
    ] {
        let (st, v) = c.operator("GET", path, None).await;
        assert_eq!(
            (st, v["error"].as_str()),
            (400, Some("invalid_argument")),
            "{path}: {v}"
        );
    }

    // Metrics.
    let (st, v) = c.http("GET", "/metrics", None).await;
    assert_eq!(st, 200);
    let text = v.as_str().unwrap();
    assert!(text.contains("rewind_transactions{status=\"begin\"}"));
    assert!(text.contains("rewind_request_duration_seconds_bucket{op=\"begin\""));
}

struct LockKeyWith;
impl LockKeyWith {
    fn res(mut k: rewind_protocol::LockKey, r: &str) -> rewind_protocol::LockKey {
        k.resource_id = r.into();
        k
    }
}
