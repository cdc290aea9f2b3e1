//! The TCC fence through a real proxy and MariaDB. A participant's Try, Confirm and Cancel
//! each apply at most once: a repeated phase is answered 1062 `TCC phase already done`
//! with nothing applied; a Cancel whose Try never committed (empty rollback) applies
//! nothing and commits its fence rows, so the late Try is refused with 1397 (suspension),
//! also when the client had already written in that transaction; a Cancel racing a
//! committing Try is answered 1205, and run again it is the real Cancel. In autocommit,
//! in BEGIN … COMMIT, over text and binary protocol. Concurrent duplicates under
//! REPEATABLE READ never surface a deadlock or a lock wait timeout, whether the first
//! attempt commits or rolls back, and a Try racing its Cancel is never applied alone.
//! Misuse is refused (1210, 1235) with nothing applied; fence rows expire.

use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use rewind_test_support::*;

const SETUP: &[&str] = &[
    "CREATE TABLE ledger (id INT AUTO_INCREMENT PRIMARY KEY, xid VARCHAR(64) NOT NULL, \
     branch_id BIGINT NOT NULL, phase VARCHAR(8) NOT NULL)",
    "CREATE TABLE account (id INT PRIMARY KEY, balance INT NOT NULL, frozen INT NOT NULL)",
    "INSERT INTO account VALUES (1, 1000, 0)",
];

const DONE: &str = "TCC phase already done: ";
const EMPTY: &str = "TCC phase already done: empty rollback (the Try never committed)";

/// A fresh database, and no fence rows of this test's XIDs (named after it) left from an
/// earlier run.
async fn setup(db: &str) {
    setup_in(db, "rewind").await;
}

/// [`setup`] for a proxy whose undo schema is `schema`.
async fn setup_in(db: &str, schema: &str) {
    fresh_db(db).await;
    for s in SETUP {
        direct_exec(db, s).await;
    }
    delete_shared_rows(
        db,
        &format!("DELETE FROM {schema}.tcc_fence WHERE xid LIKE '{db}-%'"),
    )
    .await;
}

async fn one(c: &mut Conn, sql: &str) -> i64 {
    c.query_first::<i64, _>(sql).await.unwrap().unwrap()
}

/// How a participant runs a phase's local transaction.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Form {
    /// One tagged statement in autocommit.
    Autocommit,
    /// The same, as a prepared statement.
    PreparedAutocommit,
    /// BEGIN; the tagged statement; an untagged one; COMMIT.
    Tx,
    /// The same with the tagged statement prepared.
    PreparedTx,
}

const FORMS: [Form; 4] = [
    Form::Autocommit,
    Form::PreparedAutocommit,
    Form::Tx,
    Form::PreparedTx,
];

/// A refusal: code, SQLSTATE, message.
type Refused = (u16, String, String);

fn refused(e: mysql_async::Error) -> Refused {
    match e {
        mysql_async::Error::Server(s) => (s.code, s.state, s.message),
        other => panic!("{other}"),
    }
}

/// One phase of branch `branch` of `xid`, the way a participant runs it: a ledger row
/// tagged with the fence hint and, inside a transaction, the phase's effect on the
/// account. `Ok` when applied; `Err` when refused, after checking the proxy ended the
/// local transaction.
async fn phase(
    c: &mut Conn,
    form: Form,
    xid: &str,
    branch: u64,
    phase: &str,
) -> Result<(), Refused> {
    let tagged = format!(
        "/*+ TCC('{xid}', {branch}, '{phase}') */ INSERT INTO ledger (xid, branch_id, phase) VALUES "
    );
    let effect = match phase {
        "try" => "frozen = frozen + 10",
        "confirm" => "balance = balance - 10, frozen = frozen - 10",
        _ => "frozen = frozen - 10",
    };
    let in_tx = matches!(form, Form::Tx | Form::PreparedTx);
    if in_tx {
        c.query_drop("BEGIN").await.map_err(refused)?;
    }
    let first = match form {
        Form::Autocommit | Form::Tx => {
            c.query_drop(format!("{tagged}('{xid}', {branch}, '{phase}')"))
                .await
        }
        // The hint is a comment: its arguments are literals, the statement's own values
        // can be parameters.
        Form::PreparedAutocommit | Form::PreparedTx => {
            c.exec_drop(format!("{tagged}(?, ?, ?)"), (xid, branch, phase))
                .await
        }
    };
    if let Err(e) = first {
        let e = refused(e);
        assert_eq!(
            one(c, "SELECT @@in_transaction").await,
            0,
            "{form:?} {phase}: the refusal ended the local transaction ({e:?})"
        );
        return Err(e);
    }
    if in_tx {
        c.query_drop(format!("UPDATE account SET {effect} WHERE id = 1"))
            .await
            .map_err(refused)?;
        c.query_drop("COMMIT").await.map_err(refused)?;
    }
    assert_eq!(one(c, "SELECT @@in_transaction").await, 0);
    Ok(())
}

/// How often `phase` of the branch was applied (ledger rows).
async fn applied(db: &str, xid: &str, branch: u64, phase: &str) -> i64 {
    let n: Option<i64> = direct(db)
        .await
        .exec_first(
            "SELECT COUNT(*) FROM ledger WHERE xid = ? AND branch_id = ? AND phase = ?",
            (xid, branch, phase),
        )
        .await
        .unwrap();
    n.unwrap_or(0)
}

/// (phase, origin) pairs, as [`fence_rows`] gives them.
fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// The branch's committed fence rows, as (phase, origin), in `schema`.
async fn fence_rows(db: &str, schema: &str, xid: &str, branch: u64) -> Vec<(String, String)> {
    direct(db)
        .await
        .exec(
            format!(
                "SELECT phase, origin FROM {schema}.tcc_fence WHERE xid = ? AND branch_id = ? \
                 ORDER BY phase"
            ),
            (xid, branch),
        )
        .await
        .unwrap()
}

fn assert_done(r: Result<(), Refused>, what: &str, ctx: &str) {
    let (code, state, msg) = r.expect_err(ctx);
    assert_eq!((code, state.as_str()), (1062, "23000"), "{ctx}: {msg}");
    assert!(
        msg.starts_with(&format!("{DONE}{what}")),
        "{ctx}: expected `{DONE}{what}…`, got {msg}"
    );
}

fn assert_suspended(r: Result<(), Refused>, ctx: &str) {
    let (code, state, msg) = r.expect_err(ctx);
    assert_eq!((code, state.as_str()), (1397, "XAE04"), "{ctx}: {msg}");
    assert!(
        msg.contains("arrived after its Cancel and was refused"),
        "{ctx}: {msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t27_each_phase_applies_once() {
    let dir = TempDir::new("tcc");
    let coord = Coordinator::start(&dir, &[]).await;
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &[]).await;
    let db = "rwt_fence_once";
    setup(db).await;
    let mut c = proxy.conn(db).await;
    let tables = ["ledger", "account"];
    for form in FORMS {
        let xid = &format!("{db}-{form:?}");
        let ctx = |what: &str| format!("{form:?}: {what}");

        // Try, then the same Try again: refused, nothing of it applied.
        phase(&mut c, form, xid, 1, "try").await.unwrap();
        let before = checksums(db, &tables).await;
        assert_done(
            phase(&mut c, form, xid, 1, "try").await,
            "repeated try",
            &ctx("try twice"),
        );
        assert_eq!(checksums(db, &tables).await, before, "{}", ctx("try twice"));
        // Confirm twice: once applied.
        phase(&mut c, form, xid, 1, "confirm").await.unwrap();
        let before = checksums(db, &tables).await;
        assert_done(
            phase(&mut c, form, xid, 1, "confirm").await,
            "repeated confirm",
            &ctx("confirm twice"),
        );
        assert_eq!(checksums(db, &tables).await, before);
        assert_eq!(applied(db, xid, 1, "try").await, 1, "{}", ctx("try"));
        assert_eq!(
            applied(db, xid, 1, "confirm").await,
            1,
            "{}",
            ctx("confirm")
        );
        assert_eq!(
            fence_rows(db, "rewind", xid, 1).await,
            pairs(&[("confirm", "confirm"), ("try", "try")])
        );

        // A committed Try, then Cancel twice: the real Cancel, once.
        phase(&mut c, form, xid, 2, "try").await.unwrap();
        phase(&mut c, form, xid, 2, "cancel").await.unwrap();
        let before = checksums(db, &tables).await;
        assert_done(
            phase(&mut c, form, xid, 2, "cancel").await,
            "repeated cancel",
            &ctx("cancel twice"),
        );
        assert_eq!(checksums(db, &tables).await, before);
        assert_eq!(applied(db, xid, 2, "cancel").await, 1, "{}", ctx("cancel"));

        // Cancel before its Try: an empty rollback, nothing applied, its rows committed;
        // the same Cancel again is a repeat; the late Try is refused.
        let before = checksums(db, &tables).await;
        assert_done(
            phase(&mut c, form, xid, 3, "cancel").await,
            "empty rollback (the Try never committed)",
            &ctx("empty rollback"),
        );
        assert_eq!(
            fence_rows(db, "rewind", xid, 3).await,
            pairs(&[("cancel", "cancel"), ("try", "cancel")])
        );
        assert_done(
            phase(&mut c, form, xid, 3, "cancel").await,
            "repeated cancel",
            &ctx("cancel after an empty rollback"),
        );
        assert_suspended(phase(&mut c, form, xid, 3, "try").await, &ctx("late try"));
        assert_eq!(
            checksums(db, &tables).await,
            before,
            "{}",
            ctx("empty rollback")
        );
        assert_eq!(applied(db, xid, 3, "try").await, 0);
    }
    assert_eq!(
        one(&mut c, "SELECT balance FROM account").await,
        980,
        "two confirms applied (the two transaction forms)"
    );
}

/// A Cancel tagged after the client already wrote in its transaction, with no Try: the
/// client's writes are rolled back, the Cancel's rows committed alone (1062); the late Try
/// is refused. A Try the client rolls back leaves no trace. The branch id may be quoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t27_cancel_after_other_statements() {
    let dir = TempDir::new("tcc-late-tag");
    let coord = Coordinator::start(&dir, &[]).await;
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &[]).await;
    let db = "rwt_fence_late_tag";
    setup(db).await;
    let mut c = proxy.conn(db).await;
    let xid = &format!("{db}-x");
    for (branch, prepared) in [(1u64, false), (2, true)] {
        let before = checksums(db, &["ledger", "account"]).await;
        c.query_drop("BEGIN").await.unwrap();
        let _: Vec<i64> = c.query("SELECT balance FROM account").await.unwrap();
        c.query_drop("UPDATE account SET balance = balance + 1 WHERE id = 1")
            .await
            .unwrap();
        let sql = format!(
            "/*+ TCC('{xid}', {branch}, 'cancel') */ UPDATE account SET frozen = frozen - 10 WHERE id = 1"
        );
        let r = if prepared {
            c.exec_drop(sql, ()).await
        } else {
            c.query_drop(sql).await
        };
        assert_done(
            r.map_err(refused),
            "empty rollback (the Try never committed)",
            "late tag",
        );
        assert_eq!(one(&mut c, "SELECT @@in_transaction").await, 0);
        assert_eq!(
            checksums(db, &["ledger", "account"]).await,
            before,
            "the client's earlier write is rolled back"
        );
        assert_eq!(
            fence_rows(db, "rewind", xid, branch).await,
            pairs(&[("cancel", "cancel"), ("try", "cancel")])
        );
        assert_suspended(
            phase(&mut c, Form::Tx, xid, branch, "try").await,
            "late try",
        );
        assert_eq!(checksums(db, &["ledger", "account"]).await, before);
    }
    // A Try rolled back by the participant leaves no trace: the Try again is applied,
    // and so is the real Cancel after it, with the branch id quoted.
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop(format!(
        "/*+ TCC('{xid}', 3, 'try') */ UPDATE account SET frozen = frozen + 10 WHERE id = 1"
    ))
    .await
    .unwrap();
    c.query_drop("ROLLBACK").await.unwrap();
    phase(&mut c, Form::Tx, xid, 3, "try").await.unwrap();
    c.query_drop(format!(
        "/*+ TCC('{xid}', '3', 'cancel') */ UPDATE account SET frozen = frozen - 10 WHERE id = 1"
    ))
    .await
    .unwrap();
    assert_done(
        phase(&mut c, Form::Autocommit, xid, 3, "cancel").await,
        "repeated cancel",
        "quoted and bare branch ids are one branch",
    );
    assert_eq!(one(&mut c, "SELECT frozen FROM account").await, 0);
    assert_eq!(one(&mut c, "SELECT balance FROM account").await, 1000);
}

/// The Cancel above, when the Try commits between the rollback of the client's work and
/// the proxy's own transaction: 1205, nothing applied; run again, it is the real Cancel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t27_cancel_racing_its_try_is_run_again() {
    let dir = TempDir::new("tcc-race");
    let coord = Coordinator::start(&dir, &[]).await;
    let proxy = Proxy::start_with(
        &dir,
        "proxy",
        &coord.grpc_url(),
        &[],
        "guard-before-own-transaction=sleep(3000)",
    )
    .await;
    let db = "rwt_fence_race";
    setup(db).await;
    let xid = format!("{db}-x");
    let mut c = proxy.conn(db).await;
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop("UPDATE account SET balance = balance + 1 WHERE id = 1")
        .await
        .unwrap();
    let cancel = {
        let xid = xid.clone();
        tokio::spawn(async move {
            let r = c
                .query_drop(format!(
                    "/*+ TCC('{xid}', 1, 'cancel') */ UPDATE account SET frozen = frozen - 10 WHERE id = 1"
                ))
                .await
                .map_err(refused);
            (c, r)
        })
    };
    eventually(
        "the Cancel rolled the client's work back",
        Duration::from_secs(20),
        // The failpoint's own line when hit: the armed spec logged at start names it too,
        // and a Try sent before the rollback would deadlock with the client's write.
        || async { proxy.process.log_count("failpoint: sleeping") > 0 },
    )
    .await;
    let mut t = proxy.conn(db).await;
    phase(&mut t, Form::Tx, &xid, 1, "try").await.unwrap();
    let (mut c, r) = cancel.await.unwrap();
    let (code, _, msg) = r.unwrap_err();
    assert_eq!(code, 1205, "{msg}");
    assert!(
        msg.contains("raced its Try committing") && msg.contains("run the Cancel again"),
        "{msg}"
    );
    assert_eq!(one(&mut c, "SELECT @@in_transaction").await, 0);
    // The client's write is gone; the Try's is there.
    assert_eq!(one(&mut c, "SELECT balance FROM account").await, 1000);
    assert_eq!(one(&mut c, "SELECT frozen FROM account").await, 10);
    // Run again, it finds the Try.
    phase(&mut c, Form::Tx, &xid, 1, "cancel").await.unwrap();
    assert_eq!(one(&mut c, "SELECT frozen FROM account").await, 0);
    assert_eq!(applied(db, &xid, 1, "cancel").await, 1);
}

/// Misuse is refused with nothing applied: a malformed hint (1210); TCC with an XID or XA
/// hint, inside an AT branch, with a BARRIER, in front of several statements, or on
/// BEGIN / COMMIT (1235).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t27_misuse_is_refused() {
    let dir = TempDir::new("tcc-misuse");
    let coord = Coordinator::start(&dir, &[]).await;
    let proxy = Proxy::start(&dir, "proxy", &coord.grpc_url(), &[]).await;
    let db = "rwt_fence_misuse";
    setup(db).await;
    let mut c = proxy.conn(db).await;
    let x = format!("{db}-x");
    let xid = coord.begin(60_000).await;
    let before = checksums(db, &["ledger", "account"]).await;
    let update = "UPDATE account SET frozen = frozen + 10 WHERE id = 1";
    for (sql, code) in [
        (format!("/*+ TCC('{x}', 1) */ {update}"), 1210),
        (format!("/*+ TCC('{x}', 1, try) */ {update}"), 1210),
        (format!("/*+ TCC('{x}', 1, 'prepare') */ {update}"), 1210),
        (format!("/*+ TCC('{x}', -1, 'try') */ {update}"), 1210),
        (
            format!("/*+ XID('{xid}') TCC('{x}', 1, 'try') */ {update}"),
            1235,
        ),
        (
            format!("/*+ TCC('{x}', 1, 'try') XID('{xid}') */ {update}"),
            1235,
        ),
        (
            format!("/*+ XA('{xid}') TCC('{x}', 1, 'try') */ {update}"),
            1235,
        ),
        (
            format!("/*+ TCC('{x}', 1, 'try') BARRIER('c', 'm') */ {update}"),
            1235,
        ),
        (
            format!("/*+ TCC('{x}', 1, 'try') */ {update}; {update}"),
            1235,
        ),
        (format!("/*+ TCC('{x}', 1, 'try') */ BEGIN"), 1235),
        (format!("/*+ TCC('{x}', 1, 'try') */ COMMIT"), 1235),
    ] {
        let (got, _, msg) = server_error(c.query_drop(&sql).await).unwrap();
        assert_eq!(got, code, "{sql}: {msg}");
        assert_eq!(one(&mut c, "SELECT @@in_transaction").await, 0);
        if !sql.contains("; ") && sql.ends_with(update) {
            // (The backend prepares neither several statements nor every transaction
            // control statement.)
            let (got, _, msg) = server_error(c.exec_drop(&sql, ()).await).unwrap();
            assert_eq!(got, code, "prepared {sql}: {msg}");
        }
    }
    // Inside a local transaction bound to a global one (AT).
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop(format!(
        "/*+ XID('{xid}') */ UPDATE account SET balance = balance WHERE id = 1"
    ))
    .await
    .unwrap();
    let (code, _, msg) = server_error(
        c.query_drop(format!("/*+ TCC('{x}', 1, 'try') */ {update}"))
            .await,
    )
    .unwrap();
    assert_eq!(code, 1235, "{msg}");
    c.query_drop("ROLLBACK").await.unwrap();
    assert_eq!(checksums(db, &["ledger", "account"]).await, before);
    assert!(fence_rows(db, "rewind", &x, 1).await.is_empty());
    // The branch is still untouched: its Try applies.
    phase(&mut c, Form::Autocommit, &x, 1, "try").await.unwrap();
}

/// `n` attempts at one phase of a branch, while a first attempt holds the branch's fence
/// row open under REPEATABLE READ, in every form. Returns their outcomes once the first
/// commits or rolls back (`first_commits`).
async fn race_behind_a_first(
    proxy: &Arc<Proxy>,
    db: &'static str,
    xid: &str,
    branch: u64,
    which: &'static str,
    n: usize,
    first_commits: bool,
) -> Vec<Result<(), Refused>> {
    let mut first = proxy.conn(db).await;
    first
        .query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    first.query_drop("BEGIN").await.unwrap();
    first
        .query_drop(format!(
            "/*+ TCC('{xid}', {branch}, '{which}') */ INSERT INTO ledger (xid, branch_id, phase) \
             VALUES ('{xid}', {branch}, '{which}')"
        ))
        .await
        .unwrap();
    let mut waiters = Vec::new();
    for i in 0..n {
        let (proxy, xid) = (proxy.clone(), xid.to_string());
        waiters.push(tokio::spawn(async move {
            let mut c = proxy.conn(db).await;
            c.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .await
                .unwrap();
            phase(&mut c, FORMS[i % FORMS.len()], &xid, branch, which).await
        }));
    }
    // Every waiter queues up behind the first attempt's row lock (their fence inserts
    // are running and cannot finish before it).
    eventually(
        &format!("{n} {which} attempts wait"),
        Duration::from_secs(20),
        || async {
            let waiting: Option<i64> = direct(db)
                .await
                .exec_first(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                     WHERE DB = ? AND INFO LIKE 'INSERT INTO `rewind`.`tcc_fence`%'",
                    (db,),
                )
                .await
                .unwrap();
            waiting >= Some(n as i64)
        },
    )
    .await;
    first
        .query_drop(if first_commits { "COMMIT" } else { "ROLLBACK" })
        .await
        .unwrap();
    let mut results = Vec::new();
    for w in waiters {
        results.push(w.await.unwrap());
    }
    results
}

/// 16 attempts at a Confirm, and at a Cancel, one of them first holding the fence row
/// under REPEATABLE READ: exactly one applies, whether the first commits or rolls back
/// (then one of the 15 waiting), every other gets 1062; never a deadlock or a lock wait
/// timeout. 16 Cancels of a branch whose Try never ran: one empty rollback, 15 repeats,
/// nothing applied. Tries racing Cancels: a Try applies only with its Cancel after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t27_concurrent_duplicates_never_deadlock() {
    let dir = TempDir::new("tcc-dups");
    let coord = Coordinator::start(&dir, &[]).await;
    let proxy = Arc::new(Proxy::start(&dir, "proxy", &coord.grpc_url(), &[]).await);
    let db = "rwt_fence_dups";
    setup(db).await;
    let xid = &format!("{db}-x");
    let mut branch = 0;
    for which in ["confirm", "cancel"] {
        for first_commits in [true, false, false, true] {
            branch += 1;
            let ctx = format!("{which} branch {branch}, first commits: {first_commits}");
            let mut c = proxy.conn(db).await;
            phase(&mut c, Form::Autocommit, xid, branch, "try")
                .await
                .unwrap();
            let results =
                race_behind_a_first(&proxy, db, xid, branch, which, 15, first_commits).await;
            let ok = results.iter().filter(|r| r.is_ok()).count();
            for r in &results {
                if let Err((code, _, msg)) = r {
                    assert_eq!(*code, 1062, "{ctx}: {msg}");
                    assert!(
                        msg.starts_with(&format!("{DONE}repeated {which}")),
                        "{ctx}: {msg}"
                    );
                }
            }
            assert_eq!(ok, if first_commits { 0 } else { 1 }, "{ctx}: {results:?}");
            assert_eq!(
                applied(db, xid, branch, which).await,
                1,
                "{ctx}: applied once"
            );
        }
    }

    // Cancels of a branch with no Try, all at once.
    branch += 1;
    let start = Arc::new(tokio::sync::Barrier::new(16));
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (proxy, start, xid) = (proxy.clone(), start.clone(), xid.to_string());
        tasks.push(tokio::spawn(async move {
            let mut c = proxy.conn(db).await;
            c.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .await
                .unwrap();
            start.wait().await;
            phase(&mut c, FORMS[i % FORMS.len()], &xid, branch, "cancel").await
        }));
    }
    let mut messages = Vec::new();
    for t in tasks {
        let (code, _, msg) = t
            .await
            .unwrap()
            .expect_err("a Cancel without Try applies nothing");
        assert_eq!(code, 1062, "{msg}");
        messages.push(msg);
    }
    let empty = messages.iter().filter(|m| m.starts_with(EMPTY)).count();
    let repeated = messages
        .iter()
        .filter(|m| m.starts_with(&format!("{DONE}repeated cancel")))
        .count();
    assert_eq!((empty, repeated), (1, 15), "{messages:?}");
    assert_eq!(applied(db, xid, branch, "cancel").await, 0);

    // Tries and Cancels of one branch, all at once, in rounds: either the Try applies and
    // exactly one Cancel after it, or no Try applies and no Cancel.
    let mut tried = 0;
    for _round in 0..6 {
        branch += 1;
        let start = Arc::new(tokio::sync::Barrier::new(16));
        let mut tasks = Vec::new();
        for i in 0..16 {
            let (proxy, start, xid) = (proxy.clone(), start.clone(), xid.to_string());
            let which = if i % 2 == 0 { "try" } else { "cancel" };
            tasks.push(tokio::spawn(async move {
                let mut c = proxy.conn(db).await;
                c.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    .await
                    .unwrap();
                start.wait().await;
                (
                    which,
                    phase(&mut c, FORMS[(i / 2) % FORMS.len()], &xid, branch, which).await,
                )
            }));
        }
        for t in tasks {
            let (which, r) = t.await.unwrap();
            if let Err((code, _, msg)) = r {
                assert!(
                    code == 1062 || (which == "try" && code == 1397),
                    "{which}: {code} {msg}"
                );
            }
        }
        let tries = applied(db, xid, branch, "try").await;
        assert!(tries <= 1);
        assert_eq!(
            applied(db, xid, branch, "cancel").await,
            tries,
            "branch {branch}"
        );
        tried += tries;
    }
    eprintln!("rounds in which the Try went first: {tried} of 6");
}

/// Fence rows are remembered `tcc_fence_retention_secs`; afterwards a phase runs again.
/// Housekeeping logs the fence's figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t27_expired_fence_rows_are_forgotten() {
    let dir = TempDir::new("tcc-expiry");
    let cfg = dir.0.join("proxy.toml");
    std::fs::write(
        &cfg,
        "tcc_fence_retention_secs = 1\nundo_housekeeping_secs = 1\n",
    )
    .unwrap();
    let coord = Coordinator::start(&dir, &[]).await;
    let proxy = Proxy::start(
        &dir,
        "proxy",
        &coord.grpc_url(),
        // Its own undo schema: this proxy's housekeeping expires every row of its fence
        // table, which other tests' proxies share in `rewind`.
        &[
            "--config",
            &cfg.display().to_string(),
            "--undo-schema",
            "rewind_tcc_expiry",
        ],
    )
    .await;
    let db = "rwt_fence_expiry";
    setup_in(db, "rewind_tcc_expiry").await;
    let xid = &format!("{db}-x");
    let mut c = proxy.conn(db).await;
    phase(&mut c, Form::Autocommit, xid, 1, "confirm")
        .await
        .unwrap();
    assert_done(
        phase(&mut c, Form::Autocommit, xid, 1, "confirm").await,
        "repeated confirm",
        "before expiry",
    );
    eventually("the fence rows expire", Duration::from_secs(20), || async {
        fence_rows(db, "rewind_tcc_expiry", xid, 1).await.is_empty()
    })
    .await;
    phase(&mut c, Form::Autocommit, xid, 1, "confirm")
        .await
        .unwrap();
    assert_eq!(applied(db, xid, 1, "confirm").await, 2);
    eventually(
        "housekeeping logs the figures",
        Duration::from_secs(20),
        || async {
            proxy
                .process
                .log_text()
                .lines()
                .any(|l| l.contains("TCC fence since start") && l.contains("repeated=1"))
        },
    )
    .await;
}
