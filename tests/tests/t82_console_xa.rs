//! The console's XA view, end to end, against a real coordinator, proxy and MariaDB and a
//! real headless Chromium (driven by `tests/console/xa.mjs` with playwright-core): an XA
//! branch prepared through the proxy holds a row lock, a session straight on MariaDB
//! waits for that row, and `GET /api/v1/xa` (then the console) shows the branch with its
//! age and that waiter, read by the proxy from InnoDB's lock waits within its report
//! interval. A caller without the operator credential can neither read the list nor
//! force a decision, and a decision that is neither commit nor rollback is refused (400).
//! The operator forces a rollback in the console: the audit log says so, the transaction
//! ends `rolled_back`, the waiting UPDATE goes through, `XA RECOVER` has nothing left,
//! and forcing a commit afterwards is refused (409) and audited. The screenshot lands in
//! `tests/artifacts/console/xa.png`.
//!
//! Needs `node`, `chromium` and `tests/console/node_modules` (scripts/ensure-tools.sh
//! --browser installs them).

use std::path::Path;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use rewind_test_support::*;
use serde_json::{json, Value as Json};

const DB: &str = "rwt_console_xa";
const WAITING_UPDATE: &str = "UPDATE item SET qty = 1000 WHERE id = 1";

async fn qty(id: u32) -> i64 {
    let mut c = direct(DB).await;
    let q: Option<i64> = c
        .exec_first("SELECT qty FROM item WHERE id = ?", (id,))
        .await
        .unwrap();
    c.disconnect().await.unwrap();
    q.unwrap()
}

/// The entry of `GET /api/v1/xa` (as the operator) for `xid`, if listed.
async fn listed(coord: &Coordinator, xid: &str) -> Option<Json> {
    let (code, body) = coord.operator("GET", "/api/v1/xa", None).await;
    assert_eq!(code, 200, "GET /api/v1/xa: {body}");
    body["branches"]
        .as_array()
        .expect("branches")
        .iter()
        .find(|b| b["xid"] == xid)
        .cloned()
}

async fn force(coord: &Coordinator, xid: &str, body: &str) -> (u16, Json) {
    coord
        .operator(
            "POST",
            &format!("/api/v1/transactions/{xid}/force"),
            Some(body.as_bytes()),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t82_an_operator_sees_who_waits_on_a_prepared_xa_branch_and_forces_a_rollback() {
    let driver_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
    let browser = chromium();
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts/console");
    let shot = artifacts.join("xa.png");
    let _ = std::fs::remove_file(&shot);

    // 1. A coordinator with quick phase two, a proxy reporting every 300 ms.
    let dir = TempDir::new("console-xa");
    let coord_cfg = dir.0.join("coordinator.toml");
    std::fs::write(
        &coord_cfg,
        "tick_ms = 50\nphase_two_backoff_base_ms = 20\nphase_two_backoff_cap_ms = 300\n\
         phase_two_command_timeout_ms = 2000\nrollback_wait_ms = 5000\n",
    )
    .unwrap();
    let coord = Coordinator::start(&dir, &["--config", &coord_cfg.to_string_lossy()]).await;
    let proxy_cfg = dir.0.join("proxy.toml");
    std::fs::write(&proxy_cfg, "[outbox]\nreport_interval_ms = 300\n").unwrap();
    let proxy = Proxy::start(
        &dir,
        "proxy",
        &coord.grpc_url(),
        &["--config", &proxy_cfg.to_string_lossy()],
    )
    .await;
    fresh_db(DB).await;
    direct_exec(
        DB,
        "CREATE TABLE item (id INT PRIMARY KEY, qty INT NOT NULL)",
    )
    .await;
    direct_exec(DB, "INSERT INTO item VALUES (1, 10), (2, 20)").await;

    // 2. An XA branch through the proxy updates row 1 and is prepared at COMMIT.
    let xid = coord.begin(300_000).await;
    let mut c = proxy.conn(DB).await;
    c.query_drop(format!("/*+ XA('{xid}') */ BEGIN"))
        .await
        .unwrap();
    c.query_drop("UPDATE item SET qty = qty + 1 WHERE id = 1")
        .await
        .unwrap();
    c.query_drop("COMMIT").await.unwrap();
    let tx = coord.transaction(&xid).await;
    let branch = &tx["branches"][0];
    assert_eq!(branch["type"], "xa", "{tx}");
    let bqual = branch["xa_bqual"].as_str().expect("xa_bqual").to_string();
    let resource = branch["resource_id"].as_str().unwrap().to_string();
    assert_eq!(
        xa_prepared(&xid).await,
        [(xid.clone(), bqual.clone())],
        "prepared in MariaDB"
    );

    // 3. A session straight on MariaDB wants the same row: it waits.
    let mut w = direct(DB).await;
    let thread_id: u64 = w
        .query_first("SELECT CONNECTION_ID()")
        .await
        .unwrap()
        .unwrap();
    w.query_drop("SET SESSION innodb_lock_wait_timeout = 300")
        .await
        .unwrap();
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let r = w.query_drop(WAITING_UPDATE).await;
        let _ = w.disconnect().await;
        (r.map_err(|e| e.to_string()), started.elapsed())
    });

    // 4. The API lists the branch with its age and the waiter, within a few reports.
    let started = Instant::now();
    let entry = loop {
        let entry = listed(&coord, &xid).await.unwrap_or(Json::Null);
        let waits = entry["waiters"]
            .as_array()
            .is_some_and(|ws| ws.iter().any(|w| w["thread_id"] == thread_id));
        if waits {
            break entry;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "GET /api/v1/xa lists the branch and its waiter: {entry}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(entry["xa_bqual"], bqual.as_str(), "{entry}");
    assert_eq!(entry["resource_id"], resource.as_str(), "{entry}");
    assert_eq!(entry["branch_id"], branch["branch_id"], "{entry}");
    assert_eq!(entry["status"], "begin", "{entry}");
    assert_eq!(entry["registered_ms"], branch["registered_ms"], "{entry}");
    assert!(entry["age_ms"].as_u64().unwrap() > 0, "{entry}");
    let waiters = entry["waiters"].as_array().unwrap();
    assert_eq!(waiters.len(), 1, "only the one waiting session: {entry}");
    assert_eq!(waiters[0]["query"], WAITING_UPDATE, "{entry}");
    assert!(waiters[0]["waiting_ms"].is_u64(), "{entry}");
    // The wait grows with the reports (InnoDB keeps the wait's start to the second).
    eventually(
        "the wait is reported growing",
        Duration::from_secs(10),
        || async {
            listed(&coord, &xid).await.is_some_and(|e| {
                e["waiters"][0]["waiting_ms"].as_u64().unwrap_or(0) >= 1000
                    && e["age_ms"].as_u64().unwrap_or(0) > entry["age_ms"].as_u64().unwrap()
            })
        },
    )
    .await;
    assert!(!waiting.is_finished(), "the UPDATE still waits");

    // 5. No credential, a wrong one: refused, nothing decided. A bad decision: 400.
    let path = format!("/api/v1/transactions/{xid}/force");
    let rollback = json!({"decision": "rollback"}).to_string();
    let (code, body) = coord.http("GET", "/api/v1/xa", None).await;
    assert_eq!(code, 401, "the list without a credential: {body}");
    let (code, body) = coord.http("POST", &path, Some(rollback.as_bytes())).await;
    assert_eq!(code, 401, "force without a credential: {body}");
    let (code, body) = coord
        .http_with(
            "POST",
            &path,
            Some(rollback.as_bytes()),
            &[("Authorization", "Bearer not-the-secret")],
        )
        .await;
    assert_eq!(code, 401, "force with a wrong credential: {body}");
    for bad in [
        r#"{"decision": "maybe"}"#,
        r#"{"decision": "ROLLBACK"}"#,
        r#"{}"#,
        r#"{"decision": "rollback", "why": "x"}"#,
    ] {
        let (code, body) = force(&coord, &xid, bad).await;
        assert_eq!(code, 400, "{bad}: {body}");
    }
    assert_eq!(coord.status(&xid).await, "begin");
    assert!(!waiting.is_finished(), "the UPDATE still waits");
    assert!(
        !coord
            .audit()
            .await
            .iter()
            .any(|a| a["action"].as_str().unwrap_or("").starts_with("force")),
        "nothing forced yet"
    );

    // 6. The browser part: the operator reads the view and forces the rollback.
    let plan = json!({
        "url": format!("http://{}/", coord.http),
        "secret": coord.token(),
        "chromium": browser,
        "artifacts": artifacts,
        "xid": xid,
        "bqual": bqual,
        "resource": resource,
        "thread_id": thread_id,
        "query_part": WAITING_UPDATE,
    });
    run_console_driver(&driver_dir, "xa.mjs", &plan).await;
    let len = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(len > 1000, "screenshot {} saved", shot.display());

    // 7. Audited; rolled back; the waiting UPDATE went through on the original row;
    //    nothing prepared is left, and the list no longer shows the branch.
    let audit = coord.audit().await;
    let forced: Vec<&Json> = audit
        .iter()
        .filter(|a| a["action"].as_str().unwrap_or("").starts_with("force"))
        .collect();
    assert_eq!(forced.len(), 1, "{forced:?}");
    assert_eq!(forced[0]["action"], "force rollback");
    assert_eq!(forced[0]["who"], "admin");
    assert_eq!(
        forced[0]["target"].as_str(),
        Some(format!("transaction {xid}").as_str())
    );
    assert_eq!(forced[0]["result"], "ok: rolled_back");
    coord
        .wait_status(&xid, "rolled_back", Duration::from_secs(10))
        .await;
    let (r, waited) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting UPDATE finishes once the branch is rolled back")
        .unwrap();
    r.expect("the waiting UPDATE succeeds");
    assert!(waited > Duration::from_secs(1), "it did wait: {waited:?}");
    assert_eq!(
        qty(1).await,
        1000,
        "the waiter's write, on the rolled-back row"
    );
    assert_eq!(qty(2).await, 20);
    assert!(
        xa_prepared(&xid).await.is_empty(),
        "XA RECOVER: nothing left"
    );
    assert!(listed(&coord, &xid).await.is_none(), "no longer listed");

    // 8. Decided the other way already: a forced commit is refused (409), and audited.
    let (code, body) = force(&coord, &xid, r#"{"decision": "commit"}"#).await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["error"], "already_decided", "{body}");
    let audit = coord.audit().await;
    let last = audit
        .iter()
        .find(|a| a["action"] == "force commit")
        .expect("the refused force commit is audited");
    assert!(
        last["result"].as_str().unwrap().starts_with("refused"),
        "{last}"
    );
    assert_eq!(coord.status(&xid).await, "rolled_back");
    // Forcing the decision it already has answers it again, as a repeated rollback does.
    let (code, body) = force(&coord, &xid, &rollback).await;
    assert_eq!((code, body["status"].as_str()), (200, Some("rolled_back")));
    drop(proxy);
}
