//! TCC end to end: the coordinator calls a real participant (the example Go service in
//! `tests/go/tcc-participant`, through a real proxy and MariaDB) and the proxy's fence
//! keeps its effects exact: Confirm and Cancel delivered twice apply once; a Cancel
//! before its Try is an empty rollback and the late Try is refused; a participant down
//! for 20 s is called until it answers; a branch that keeps failing waits for an
//! operator (retry, audited); AT and TCC branches in one global transaction, rolled back
//! in reverse order and committed, with the coordinator killed -9 in the middle of phase
//! two, end with every effect applied exactly once. Registration over HTTP and gRPC, and
//! bad input refused with nothing registered.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use rewind_test_support::*;
use serde_json::{json, Value as Json};

/// A coordinator (phase-two backoff capped at 1 s, `extra` config lines), a proxy, and
/// participants named `names`, each with its own database `rwt_tcc_<tag>_<name>` holding
/// account 1 with a balance of 100.
struct Env {
    dir: TempDir,
    coord: Coordinator,
    proxy: Proxy,
    parts: Vec<TccParticipant>,
    dbs: Vec<String>,
}

async fn env(tag: &str, names: &[&str], extra: &str) -> Env {
    let dir = TempDir::new(&format!("tcc-{tag}"));
    let cfg = dir.0.join("coordinator.toml");
    std::fs::write(
        &cfg,
        format!("phase_two_backoff_base_ms = 100\nphase_two_backoff_cap_ms = 1000\n{extra}\n"),
    )
    .unwrap();
    let coord = Coordinator::start(&dir, &["--config", &cfg.display().to_string()]).await;
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &[]).await;
    let mut parts = Vec::new();
    let mut dbs = Vec::new();
    for name in names {
        let db = format!("rwt_tcc_{tag}_{name}");
        fresh_db(&db).await;
        let dsn = format!("root@tcp({})/{db}?interpolateParams=true", proxy.addr);
        parts.push(TccParticipant::start(&dir, name, &dsn, true).await);
        direct_exec(&db, "INSERT INTO tcc_account VALUES (1, 100, 0)").await;
        dbs.push(db);
    }
    Env {
        dir,
        coord,
        proxy,
        parts,
        dbs,
    }
}

/// (balance, frozen) of account 1.
async fn account(db: &str) -> (i64, i64) {
    direct(db)
        .await
        .query_first("SELECT balance, frozen FROM tcc_account WHERE id = 1")
        .await
        .unwrap()
        .unwrap()
}

impl Env {
    /// Registers a TCC branch of `xid` for participant `i` with `amount`; its branch id.
    async fn register(&self, xid: &str, i: usize, amount: i64) -> u64 {
        let p = &self.parts[i];
        let body = json!({
            "type": "tcc",
            "name": format!("participant-{i}"),
            "confirm_url": p.url("confirm"),
            "cancel_url": p.url("cancel"),
            "payload": {"account": 1, "amount": amount},
        });
        let (code, b) = self
            .post(&format!("/api/v1/transactions/{xid}/branches"), &body)
            .await;
        assert_eq!(code, 200, "{b}");
        assert_eq!(b["type"], "tcc");
        b["branch_id"].as_u64().unwrap()
    }

    async fn post(&self, path: &str, body: &Json) -> (u16, Json) {
        let body = body.to_string();
        self.coord.http("POST", path, Some(body.as_bytes())).await
    }

    /// A global transaction with an AT branch (10 taken from `acct` 1 of `at_db`, a fresh
    /// database with 100 there) and TCC branches on participants 0 (30) and 1 (40), each
    /// tried: the xid and the two TCC branch ids.
    async fn mixed_transaction(&self, at_db: &str) -> (String, u64, u64) {
        fresh_db(at_db).await;
        direct_exec(
            at_db,
            "CREATE TABLE acct (id INT PRIMARY KEY, bal INT NOT NULL)",
        )
        .await;
        direct_exec(at_db, "INSERT INTO acct VALUES (1, 100)").await;
        let x = self.coord.begin(120_000).await;
        let mut c = self.proxy.conn(at_db).await;
        c.query_drop(format!(
            "/*+ XID('{x}') */ UPDATE acct SET bal = bal - 10 WHERE id = 1"
        ))
        .await
        .unwrap();
        drop(c);
        let a = self.branch(&x, 0, 30).await;
        let b = self.branch(&x, 1, 40).await;
        (x, a, b)
    }

    /// Register and Try: the participant froze `amount`.
    async fn branch(&self, xid: &str, i: usize, amount: i64) -> u64 {
        let b = self.register(xid, i, amount).await;
        let (code, text) = self.parts[i].try_phase(xid, b, 1, amount).await;
        assert_eq!(code, 200, "try: {text}");
        b
    }

    async fn branch_json(&self, xid: &str, b: u64) -> Json {
        let t = self.coord.transaction(xid).await;
        t["branches"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["branch_id"] == b)
            .cloned()
            .unwrap_or_else(|| panic!("branch {b} in {t}"))
    }

    /// What the coordinator sends as Confirm / Cancel, sent again by hand.
    async fn redeliver(
        &self,
        i: usize,
        phase: &str,
        xid: &str,
        b: u64,
        amount: i64,
    ) -> (u16, String) {
        let body = json!({"xid": xid, "branch_id": b, "action": phase,
                          "payload": {"account": 1, "amount": amount}});
        self.parts[i].call(phase, &body).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t28_confirm_and_cancel_delivered_twice_apply_once() {
    let e = env("twice", &["a"], "").await;
    let db = &e.dbs[0];

    let x = e.coord.begin(60_000).await;
    let b = e.branch(&x, 0, 30).await;
    assert_eq!(account(db).await, (70, 30), "Try froze 30");
    e.coord.commit(&x).await;
    e.coord
        .wait_status(&x, "committed", Duration::from_secs(20))
        .await;
    assert_eq!(account(db).await, (70, 0), "Confirm spent it");
    let t = e.branch_json(&x, b).await;
    assert_eq!(
        (t["type"].as_str(), t["status"].as_str()),
        (Some("tcc"), Some("committed")),
        "{t}"
    );
    let (code, text) = e.redeliver(0, "confirm", &x, b, 30).await;
    assert_eq!(code, 200, "{text}");
    assert!(text.starts_with("TCC phase already done"), "{text}");
    assert_eq!(
        account(db).await,
        (70, 0),
        "the second Confirm applied nothing"
    );

    let x = e.coord.begin(60_000).await;
    let b = e.branch(&x, 0, 20).await;
    assert_eq!(account(db).await, (50, 20));
    let (code, text) = e.parts[0].try_phase(&x, b, 1, 20).await;
    assert_eq!(code, 200, "a repeated Try is answered done: {text}");
    assert_eq!(account(db).await, (50, 20), "and applies nothing");
    assert_eq!(e.coord.rollback(&x).await, "rolled_back");
    assert_eq!(account(db).await, (70, 0), "Cancel gave it back");
    let (code, text) = e.redeliver(0, "cancel", &x, b, 20).await;
    assert_eq!(code, 200, "{text}");
    assert!(text.starts_with("TCC phase already done"), "{text}");
    assert_eq!(
        account(db).await,
        (70, 0),
        "the second Cancel applied nothing"
    );
    drop(e.proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t28_a_cancel_before_its_try_is_an_empty_rollback_and_the_late_try_is_refused() {
    let e = env("suspend", &["a"], "").await;
    let db = &e.dbs[0];
    let x = e.coord.begin(60_000).await;
    // The initiator registered the branch; its Try is lost in the network.
    let b = e.register(&x, 0, 30).await;
    assert_eq!(
        e.coord.rollback(&x).await,
        "rolled_back",
        "the empty Cancel answered success"
    );
    assert_eq!(
        account(db).await,
        (100, 0),
        "the Cancel gave back nothing it never took"
    );
    // The Try arrives late.
    let (code, text) = e.parts[0].try_phase(&x, b, 1, 30).await;
    assert_eq!(code, 409, "the late Try is refused: {text}");
    assert_eq!(account(db).await, (100, 0), "and froze nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t28_a_participant_down_for_20_s_is_called_until_it_answers() {
    let mut e = env("down", &["a"], "").await;
    let db = e.dbs[0].clone();
    let x = e.coord.begin(120_000).await;
    let b = e.branch(&x, 0, 30).await;
    e.parts[0].kill();
    e.coord.commit(&x).await;
    // The outage itself: 20 s with nobody answering.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(e.coord.status(&x).await, "commit_retrying");
    let t = e.branch_json(&x, b).await;
    assert!(t["phase_two_attempts"].as_u64().unwrap() >= 5, "{t}");
    assert!(
        t["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("confirm"),
        "{t}"
    );
    assert_eq!(account(&db).await, (70, 30), "not confirmed while down");
    e.parts[0].restart().await;
    e.coord
        .wait_status(&x, "committed", Duration::from_secs(15))
        .await;
    assert_eq!(account(&db).await, (70, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t28_a_branch_that_keeps_failing_waits_for_an_operator_who_retries_it() {
    let e = env("stall", &["a"], "tcc_max_attempts = 3").await;
    let db = &e.dbs[0];
    let x = e.coord.begin(60_000).await;
    let b = e.branch(&x, 0, 30).await;
    e.parts[0].set_failing(true).await;
    e.coord.commit(&x).await;
    eventually("the branch stalls", Duration::from_secs(20), || async {
        e.branch_json(&x, b).await["status"] == "stalled"
    })
    .await;
    let t = e.branch_json(&x, b).await;
    assert_eq!(t["phase_two_attempts"], 3, "{t}");
    assert!(t["last_error"].as_str().unwrap().contains("503"), "{t}");
    e.parts[0].set_failing(false).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        e.branch_json(&x, b).await["status"],
        "stalled",
        "nothing retries behind the operator's back"
    );
    assert_eq!(account(db).await, (70, 30));
    let metrics = request(e.coord.http, "GET", "/metrics", None, &[])
        .await
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        metrics.contains("\nrewind_branches_stalled 1\n"),
        "{metrics}"
    );

    let path = format!("/api/v1/transactions/{x}/branches/{b}/retry");
    let (code, body) = e.coord.http("POST", &path, None).await;
    assert_eq!(code, 401, "an operator action: {body}");
    let (code, body) = e.coord.operator("POST", &path, None).await;
    assert_eq!(code, 200, "{body}");
    e.coord
        .wait_status(&x, "committed", Duration::from_secs(20))
        .await;
    assert_eq!(account(db).await, (70, 0));
    let audit = e.coord.audit().await;
    assert!(
        audit.iter().any(|a| a["action"] == "branch retry"
            && a["target"]
                .as_str()
                .unwrap()
                .contains(&format!("branch {b}"))),
        "{audit:?}"
    );
    // Finished: nothing left to act on.
    let (code, body) = e
        .coord
        .operator("POST", &path.replace("retry", "mark_done"), None)
        .await;
    assert_eq!(code, 409, "{body}");
}

/// AT and TCC in one global transaction; the coordinator is killed -9 while a
/// participant's phase-two call is in flight (it is slow on purpose), then restarted.
async fn mixed(commit: bool) {
    let tag = if commit { "mixc" } else { "mixr" };
    let mut e = env(tag, &["a", "b"], "").await;
    let at_db = format!("rwt_tcc_{tag}_at");
    let (x, a, b) = e.mixed_transaction(&at_db).await;
    let types: Vec<Json> = e.coord.transaction(&x).await["branches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["type"].clone())
        .collect();
    assert_eq!(types, [json!("at"), json!("tcc"), json!("tcc")]);

    // Participant a answers slowly: the kill lands while its call is in flight, after
    // b's (rollback: b goes first, newest registration first).
    e.parts[0].set_delay(3000).await;
    let decide = {
        let (http, x) = (e.coord.http, x.clone());
        let what = if commit { "commit" } else { "rollback" };
        tokio::spawn(async move {
            let _ = http_as(
                http,
                "POST",
                &format!("/api/v1/transactions/{x}/{what}"),
                None,
                None,
            )
            .await;
        })
    };
    eventually(
        "a's phase two is in flight",
        Duration::from_secs(20),
        || async {
            let ta = e.branch_json(&x, a).await;
            let tb = e.branch_json(&x, b).await;
            ta["phase_two_attempts"].as_u64().unwrap_or(0) >= 1
                && (commit || tb["status"] == "rolled_back")
        },
    )
    .await;
    e.coord.process.kill();
    let _ = decide.await;
    e.coord.restart().await;
    let done = if commit { "committed" } else { "rolled_back" };
    e.coord.wait_status(&x, done, Duration::from_secs(40)).await;
    let t = e.coord.transaction(&x).await;
    for br in t["branches"].as_array().unwrap() {
        assert_eq!(br["status"], done, "every branch ends decided: {t}");
    }
    let bal: i64 = direct(&at_db)
        .await
        .query_first("SELECT bal FROM acct WHERE id = 1")
        .await
        .unwrap()
        .unwrap();
    if commit {
        assert_eq!(bal, 90);
        assert_eq!(account(&e.dbs[0]).await, (70, 0), "a confirmed once");
        assert_eq!(account(&e.dbs[1]).await, (60, 0), "b confirmed once");
    } else {
        assert_eq!(bal, 100, "the AT branch undone");
        assert_eq!(account(&e.dbs[0]).await, (100, 0), "a cancelled once");
        assert_eq!(account(&e.dbs[1]).await, (100, 0), "b cancelled once");
    }
    assert_eq!(undo_rows(Some(&x)).await.0, 0, "no undo record left");
    drop(e.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t28_at_and_tcc_rolled_back_with_the_coordinator_killed_mid_phase_two() {
    mixed(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t28_at_and_tcc_committed_with_the_coordinator_killed_mid_phase_two() {
    mixed(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t28_registration_over_grpc_and_bad_input_refused() {
    let e = env("input", &["a"], "").await;
    let x = e.coord.begin(60_000).await;
    let path = format!("/api/v1/transactions/{x}/branches");
    let good = |p: &TccParticipant| json!({"type": "tcc", "confirm_url": p.url("confirm"), "cancel_url": p.url("cancel")});
    let p = &e.parts[0];
    let mut bad = Vec::new();
    let mut without_type = good(p);
    without_type.as_object_mut().unwrap().remove("type");
    bad.push(without_type);
    let mut at = good(p);
    at["type"] = json!("at");
    bad.push(at);
    let mut ftp = good(p);
    ftp["confirm_url"] = json!("ftp://h/c");
    bad.push(ftp);
    let mut relative = good(p);
    relative["cancel_url"] = json!("/cancel");
    bad.push(relative);
    let mut unknown = good(p);
    unknown["confirm"] = json!("x");
    bad.push(unknown);
    for body in &bad {
        let (code, b) = e.post(&path, body).await;
        assert_eq!(code, 400, "{body} → {b}");
    }
    let (code, _) = e.coord.http("POST", &path, Some(b"{not json")).await;
    assert_eq!(code, 400);
    let (code, _) = e
        .post("/api/v1/transactions/rw-0-1/branches", &good(p))
        .await;
    assert_eq!(code, 404);
    assert_eq!(
        e.coord.transaction(&x).await["branches"],
        json!([]),
        "nothing registered"
    );

    // gRPC: the same branch, named by the confirm URL's host when unnamed.
    let mut tm = e.coord.tm().await;
    let req = rewind_protocol::v1::RegisterTccBranchRequest {
        xid: x.clone(),
        name: String::new(),
        confirm_url: p.url("confirm"),
        cancel_url: p.url("cancel"),
        payload_json: r#"{"account": 1, "amount": 5}"#.into(),
        request_id: "once".into(),
    };
    let r = tm
        .register_tcc_branch(req.clone())
        .await
        .unwrap()
        .into_inner();
    let again = tm.register_tcc_branch(req).await.unwrap().into_inner();
    assert_eq!(
        r.branch_id, again.branch_id,
        "the same request id: the same branch"
    );
    let br = e.branch_json(&x, r.branch_id).await;
    assert_eq!(br["resource_id"], json!(p.addr.to_string()));
    assert_eq!(br["payload"], json!({"account": 1, "amount": 5}));
    e.coord.commit(&x).await;
    let (code, b) = e.post(&path, &good(p)).await;
    assert_eq!(code, 409, "decided: no more branches: {b}");
}

/// The console (real Chromium, `tests/console/tcc.mjs`): each branch with its type, the
/// stalled one with its error and actions; the operator calls its Confirm again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t28_the_console_shows_branch_types_and_an_operator_retries_a_stalled_one() {
    let e = env("console", &["a", "b"], "tcc_max_attempts = 3").await;
    let at_db = "rwt_tcc_console_at";
    let (x, a, b) = e.mixed_transaction(at_db).await;
    e.parts[1].set_failing(true).await;
    e.coord.commit(&x).await;
    eventually("b stalls", Duration::from_secs(20), || async {
        e.branch_json(&x, b).await["status"] == "stalled"
    })
    .await;
    e.parts[1].set_failing(false).await;
    let branches: Vec<Json> = e.coord.transaction(&x).await["branches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|br| json!({"branch_id": br["branch_id"], "type": br["type"]}))
        .collect();
    assert_eq!(branches.len(), 3);
    let driver_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
    let plan = json!({
        "url": format!("http://{}/", e.coord.http),
        "secret": e.coord.token(),
        "chromium": chromium(),
        "artifacts": std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts/console"),
        "xid": x,
        "stalled": b,
        "confirm_url": e.parts[1].url("confirm"),
        "branches": branches,
    });
    run_console_driver(&driver_dir, "tcc.mjs", &plan).await;
    e.coord
        .wait_status(&x, "committed", Duration::from_secs(10))
        .await;
    assert_eq!(account(&e.dbs[0]).await, (70, 0));
    assert_eq!(
        account(&e.dbs[1]).await,
        (60, 0),
        "b confirmed once, by the operator's retry"
    );
    let audit = e.coord.audit().await;
    assert!(
        audit.iter().any(|en| en["action"] == "branch retry"
            && en["who"] == "admin"
            && en["result"].as_str().unwrap_or_default().starts_with("ok")),
        "{audit:?}"
    );
    let _ = a;
}
