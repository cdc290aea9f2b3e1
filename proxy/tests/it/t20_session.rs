use std::time::Duration;

use mysql_async::prelude::*;
use mysql_async::Conn;
use rewind_proxy::Config;
use rewind_test_support::{direct, fresh_db, server_error, threads_named, ChangedGlobal, BACKEND};

use crate::Proxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_packets_status_flags_and_errors_match_direct() {
    let db = "rwp_ok";
    fresh_db(db).await;
    let proxy = Proxy::start().await;
    let mut p = proxy.conn(db).await;
    let mut d = direct(db).await;
    for c in [&mut d] {
        c.query_drop("CREATE TABLE t (id INT PRIMARY KEY AUTO_INCREMENT, v INT)")
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    for c in [&mut p, &mut d] {
        let mut s = Vec::new();
        for sql in [
            "INSERT INTO t (v) VALUES (1), (2), (3)",
            "BEGIN",
            "UPDATE t SET v = v + 1 WHERE id > 1",
            "INSERT IGNORE INTO t (v) VALUES (99999999999)",
            "ROLLBACK",
            "SET autocommit = 0",
            "DELETE FROM t WHERE id = 1",
            "COMMIT",
            "SET autocommit = 1",
        ] {
            c.query_drop(sql).await.unwrap();
            let ok = c.last_ok_packet().unwrap();
            s.push((
                sql,
                ok.affected_rows(),
                ok.last_insert_id(),
                ok.warnings(),
                ok.status_flags()
                    & (mysql_async::consts::StatusFlags::SERVER_STATUS_IN_TRANS
                        | mysql_async::consts::StatusFlags::SERVER_STATUS_AUTOCOMMIT),
                ok.info_str().map(|x| x.into_owned()),
            ));
        }
        // Reset for the second run, so both see the same ids.
        c.query_drop("TRUNCATE TABLE t").await.unwrap();
        seen.push(s);
    }
    assert_eq!(seen[0], seen[1]);
    let pe = server_error(p.query_drop("SELECT * FROM no_such_table").await).unwrap();
    let de = server_error(d.query_drop("SELECT * FROM no_such_table").await).unwrap();
    assert_eq!(pe, de);
    assert_eq!(pe.0, 1146);
    // The session survives an error.
    let one: i64 = p.query_first("SELECT 1").await.unwrap().unwrap();
    assert_eq!(one, 1);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_statements_and_call_relay_every_result_set() {
    let db = "rwp_multi";
    fresh_db(db).await;
    let proxy = Proxy::start().await;
    let mut p = proxy.conn(db).await;
    p.query_drop("CREATE PROCEDURE two() BEGIN SELECT 1 AS a; SELECT 2 AS b, 'x' AS c; END")
        .await
        .unwrap();
    let mut r = p
        .query_iter("SELECT 1; SELECT 'a', 'b'; DO 1")
        .await
        .unwrap();
    let s1: Vec<i64> = r.collect().await.unwrap();
    let s2: Vec<(String, String)> = r.collect().await.unwrap();
    assert_eq!(s1, vec![1]);
    assert_eq!(s2, vec![("a".into(), "b".into())]);
    r.drop_result().await.unwrap();
    let mut r = p.query_iter("CALL two()").await.unwrap();
    let s1: Vec<i64> = r.collect().await.unwrap();
    let s2: Vec<(i64, String)> = r.collect().await.unwrap();
    assert_eq!((s1, s2), (vec![1], vec![(2, "x".into())]));
    r.drop_result().await.unwrap();
    // CALL through a prepared statement (PS_MULTI_RESULTS).
    let mut r = p.exec_iter("CALL two()", ()).await.unwrap();
    let s1: Vec<i64> = r.collect().await.unwrap();
    assert_eq!(s1, vec![1]);
    r.drop_result().await.unwrap();
    // An error in a later statement ends the sequence with that error.
    let mut r = p
        .query_iter("SELECT 1; SELECT * FROM nope; SELECT 3")
        .await
        .unwrap();
    let s1: Vec<i64> = r.collect().await.unwrap();
    assert_eq!(s1, vec![1]);
    let e = server_error(r.collect::<i64>().await).unwrap();
    assert_eq!(e.0, 1146);
    drop(r);
    let x: i64 = p.query_first("SELECT 42").await.unwrap().unwrap();
    assert_eq!(x, 42);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_is_the_backends_and_is_reset_on_quit() {
    let db = "rwp_state";
    fresh_db(db).await;
    let proxy = Proxy::with(Config {
        backend: BACKEND.into(),
        max_connections: 4,
        ..Config::default()
    })
    .await;
    let mut a = proxy.conn(db).await;
    a.query_drop("SET @leftover = 7, SESSION sql_mode = 'ANSI_QUOTES'")
        .await
        .unwrap();
    a.query_drop("CREATE TEMPORARY TABLE tmp (x INT)")
        .await
        .unwrap();
    a.query_drop("INSERT INTO tmp VALUES (1)").await.unwrap();
    let (v, n): (i64, i64) = a
        .query_first("SELECT @leftover, (SELECT COUNT(*) FROM tmp)")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((v, n), (7, 1));
    a.query_drop("USE mysql").await.unwrap();
    let cur: String = a.query_first("SELECT DATABASE()").await.unwrap().unwrap();
    assert_eq!(cur, "mysql");
    a.ping().await.unwrap();
    // COM_RESET_CONNECTION through the proxy.
    a.reset().await.unwrap();
    let v: Option<i64> = a.query_first("SELECT @leftover").await.unwrap().unwrap();
    assert_eq!(v, None);
    a.query_drop("SET @leftover = 8").await.unwrap();
    // COM_CHANGE_USER: re-authenticates and starts a clean session, like MySQL.
    a.change_user(mysql_async::ChangeUserOpts::default().with_db_name(Some(db.into())))
        .await
        .unwrap();
    let (v, cur): (Option<i64>, String) = a
        .query_first("SELECT @leftover, DATABASE()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((v, cur.as_str()), (None, db));
    a.query_drop("SET @leftover = 9").await.unwrap();
    let a_id: u64 = a
        .query_first("SELECT CONNECTION_ID()")
        .await
        .unwrap()
        .unwrap();
    a.disconnect().await.unwrap();
    // The next sessions see nothing of it, though they get the same backend connection.
    // The connection goes back to the pool (and is reset) asynchronously: keep
    // connecting until a session lands on it, checking every session on the way.
    let mut reused = false;
    for _ in 0..40 {
        if reused {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut b = proxy.conn(db).await;
        let b_id: u64 = b
            .query_first("SELECT CONNECTION_ID()")
            .await
            .unwrap()
            .unwrap();
        reused |= a_id == b_id;
        let (v, mode): (Option<i64>, String) = b
            .query_first("SELECT @leftover, @@sql_mode")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(v, None);
        assert!(!mode.contains("ANSI_QUOTES"));
        assert!(b.query_drop("SELECT * FROM tmp").await.is_err());
        b.disconnect().await.unwrap();
    }
    assert!(reused, "the pool handed the backend connection on");
    proxy.stop().await;
}

/// A `SET GLOBAL` reaches every session that starts after it, as it does directly, also
/// one that gets a pooled backend connection last reset before the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_global_reaches_sessions_started_after_it() {
    let db = "rwp_set_global";
    fresh_db(db).await;
    let proxy = Proxy::start().await;
    let mut a = proxy.conn(db).await;
    let a_id: u64 = a
        .query_first("SELECT CONNECTION_ID()")
        .await
        .unwrap()
        .unwrap();
    a.disconnect().await.unwrap();
    // Back in the pool, and reset there, before the change.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let global = ChangedGlobal::lock_wait_timeout().await;
    let changed = global.changed;
    let mut seen = Vec::new();
    let mut reused = false;
    for _ in 0..20 {
        let mut b = proxy.conn(db).await;
        let (id, v): (u64, u64) = b
            .query_first("SELECT CONNECTION_ID(), @@SESSION.lock_wait_timeout")
            .await
            .unwrap()
            .unwrap();
        b.disconnect().await.unwrap();
        seen.push(v);
        if id == a_id {
            reused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    global.restore().await;
    assert!(reused, "the pool handed the old backend connection on");
    assert!(
        seen.iter().all(|&v| v == changed),
        "every session started after SET GLOBAL has the new value {changed}: {seen:?}"
    );
    proxy.stop().await;
}

/// `KILL QUERY <id>` and `KILL <id>` with the id a session's handshake announced (how the
/// mariadb CLI on Ctrl-C and Connector/J's cancel do it) act on that session, as they do
/// directly; an id of the proxy's range that names no session gets the server's 1094.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_by_the_handshake_id_acts_on_that_session_as_directly() {
    let db = "rwp_kill";
    fresh_db(db).await;
    let proxy = Proxy::start().await;
    let mut seen = Vec::new();
    for through_proxy in [false, true] {
        let (mut a, mut b) = if through_proxy {
            (proxy.conn(db).await, proxy.conn(db).await)
        } else {
            (direct(db).await, direct(db).await)
        };
        let a_id = a.id();
        let started = std::time::Instant::now();
        let sleeping = tokio::spawn(async move {
            let r = server_error(a.query_first::<i64, _>("SELECT SLEEP(20)").await);
            (r.map(|(code, state, _)| (code, state)).ok(), a)
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        b.query_drop(format!("KILL QUERY {a_id}")).await.unwrap();
        let (slept, mut a) = sleeping.await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "SLEEP cut short"
        );
        // The session goes on after its statement is killed; KILL CONNECTION ends it.
        let one: i64 = a.query_first("SELECT 1").await.unwrap().unwrap();
        b.query_drop(format!("KILL {a_id}")).await.unwrap();
        let gone = a.query_drop("SELECT 1").await.is_err();
        seen.push((slept, one, gone));
    }
    assert_eq!(seen[0], seen[1], "directly, then through the proxy");
    // Interrupted (1317), as the server tells it.
    assert_eq!(seen[1], (Some((1317, "70100".to_string())), 1, true));
    let mut c = proxy.conn(db).await;
    let e = server_error(c.query_drop(format!("KILL QUERY {}", u32::MAX)).await).unwrap();
    assert_eq!(e.0, 1094);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn found_rows_flag_reaches_the_backend() {
    let db = "rwp_found";
    fresh_db(db).await;
    let proxy = Proxy::start().await;
    let mut setup = proxy.conn(db).await;
    setup
        .query_drop("CREATE TABLE t (id INT PRIMARY KEY, v INT); INSERT INTO t VALUES (1, 1)")
        .await
        .unwrap();
    for (found, expected) in [(false, 0), (true, 1)] {
        let mut c = Conn::new(proxy.opts(db).client_found_rows(found))
            .await
            .unwrap();
        c.query_drop("UPDATE t SET v = 1 WHERE id = 1")
            .await
            .unwrap();
        assert_eq!(c.affected_rows(), expected, "found_rows={found}");
    }
    proxy.stop().await;
}

/// What a client sees of an idle session after `wait_timeout`: `Err(true)` a server
/// error packet, `Err(false)` a closed connection, `Ok` an answer.
async fn after_idle(mut c: Conn, timeout: u64, idle: Duration) -> Result<(), bool> {
    c.query_drop(format!("SET @@SESSION.wait_timeout = {timeout}"))
        .await
        .unwrap();
    tokio::time::sleep(idle).await;
    match c.query_drop("SELECT 1").await {
        Ok(()) => Ok(()),
        Err(mysql_async::Error::Server(_)) => Err(true),
        Err(_) => Err(false),
    }
}

/// A backend that ends an idle session ends the client's connection through the proxy as
/// it would directly (a closed socket, which drivers and their pools recognise), not with
/// an error packet on a connection left open; a session that keeps talking stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_timeout_closes_the_client_connection_as_directly() {
    let proxy = Proxy::start().await;
    let idle = Duration::from_millis(3500);
    let (direct_seen, proxied) = tokio::join!(
        after_idle(direct("test").await, 2, idle),
        after_idle(proxy.conn("test").await, 2, idle)
    );
    assert_eq!(direct_seen, Err(false), "MariaDB closes the connection");
    assert_eq!(proxied, direct_seen);
    // Set by a prepared statement, read back the same way; an active session stays open.
    let mut c = proxy.conn("test").await;
    c.exec_drop("SET @@SESSION.wait_timeout = ?", (2,))
        .await
        .unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        c.query_drop("SELECT 1").await.unwrap();
    }
    let v: Option<u64> = c.query_first("SELECT @@wait_timeout").await.unwrap();
    assert_eq!(v, Some(2));
    tokio::time::sleep(idle).await;
    assert!(c.query_drop("SELECT 1").await.is_err());
    proxy.stop().await;
}

/// After the backend session is killed, the next command finds the client's connection
/// closed, through the proxy as directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_session_closes_the_client_connection_as_directly() {
    let proxy = Proxy::start().await;
    let mut killer = direct("test").await;
    let mut seen = Vec::new();
    for mut c in [direct("test").await, proxy.conn("test").await] {
        let id: Option<u64> = c.query_first("SELECT CONNECTION_ID()").await.unwrap();
        killer
            .query_drop(format!("KILL CONNECTION {}", id.unwrap()))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        seen.push(match c.query_drop("SELECT 1").await {
            Ok(()) => "answered".to_string(),
            Err(mysql_async::Error::Server(e)) => format!("server error {}", e.code),
            Err(_) => "connection closed".to_string(),
        });
    }
    assert_eq!(seen[0], "connection closed", "MariaDB");
    assert_eq!(seen[1], seen[0], "through the proxy");
    proxy.stop().await;
}

/// With `session_threads`, sessions run on the proxy's own session threads (each with its
/// own backend pools): statements, prepared statements and transactions work on every
/// thread at once, a pooled backend connection comes back reset, and the proxy stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_threads_serve_sessions_with_their_own_pools() {
    let db = "rwp_session_threads";
    fresh_db(db).await;
    direct(db)
        .await
        .query_drop("CREATE TABLE t (id INT PRIMARY KEY, v INT)")
        .await
        .unwrap();
    let proxy = Proxy::with(Config {
        backend: BACKEND.into(),
        session_threads: 2,
        ..Config::default()
    })
    .await;
    let mut clients = Vec::new();
    for i in 0..8i64 {
        let mut c = proxy.conn(db).await;
        clients.push(tokio::spawn(async move {
            c.query_drop("SET @mine = 'left behind'").await.unwrap();
            c.query_drop("BEGIN").await.unwrap();
            c.exec_drop("INSERT INTO t VALUES (?, ?)", (i, i * 10))
                .await
                .unwrap();
            c.query_drop("COMMIT").await.unwrap();
            let v: Option<i64> = c
                .exec_first("SELECT v FROM t WHERE id = ?", (i,))
                .await
                .unwrap();
            assert_eq!(v, Some(i * 10));
            c.disconnect().await.unwrap();
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    // Both session threads exist (their names say which runtime served the sessions).
    assert_eq!(
        threads_named("self", "rewind-session-"),
        2,
        "session threads in this process"
    );
    // The next sessions reuse the threads' pooled connections, reset.
    for _ in 0..4 {
        let mut c = proxy.conn(db).await;
        let v: Option<Option<String>> = c.query_first("SELECT @mine").await.unwrap();
        assert_eq!(v, Some(None));
        let n: Option<i64> = c.query_first("SELECT COUNT(*) FROM t").await.unwrap();
        assert_eq!(n, Some(8));
    }
    proxy.stop().await;
}
