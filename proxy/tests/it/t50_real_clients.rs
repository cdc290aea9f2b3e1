use std::process::Command;

use mysql_async::prelude::*;
use std::time::Duration;

use futures::StreamExt;
use mysql_async::{Conn, Row};
use rewind_test_support::{direct, fresh_db};

use crate::Proxy;

fn mariadb_cli(port: u16, db: &str, sql: &str) -> (bool, String, String) {
    mariadb_cli_cs(port, db, sql, "utf8mb4")
}

fn mariadb_cli_cs(port: u16, db: &str, sql: &str, charset: &str) -> (bool, String, String) {
    let out = Command::new("mariadb")
        .args([
            "-h127.0.0.1",
            &format!("-P{port}"),
            "-uroot",
            "--skip-auto-rehash",
            &format!("--default-character-set={charset}"),
            "--batch",
            "--column-type-info",
            db,
            "-e",
            sql,
        ])
        .output()
        .expect("mariadb client installed (scripts/ensure-tools.sh)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_cli_sees_the_same_as_direct() {
    let db = "rwp_cli";
    fresh_db(db).await;
    let proxy = Proxy::start().await;
    let port = proxy.addr.port();
    let sql = "CREATE TABLE t (id INT PRIMARY KEY, d DECIMAL(20,6), b BLOB, j JSON, \
               u BIGINT UNSIGNED, ts DATETIME(6)); \
               INSERT INTO t VALUES (1, -1.5, X'00FF61', '{\"k\": \"😀\"}', 18446744073709551615, '2020-01-01 00:00:00.123456'); \
               SELECT * FROM t; SHOW WARNINGS; SELECT @@autocommit, DATABASE(); DROP TABLE t";
    let via = tokio::task::spawn_blocking(move || mariadb_cli(port, db, sql))
        .await
        .unwrap();
    let direct = tokio::task::spawn_blocking(move || mariadb_cli(3306, db, sql))
        .await
        .unwrap();
    assert!(via.0, "proxy: {}", via.2);
    assert_eq!(via, direct);
    let bad = tokio::task::spawn_blocking(move || mariadb_cli(port, db, "SELECT * FROM nope"))
        .await
        .unwrap();
    assert!(!bad.0);
    assert!(bad.2.contains("ERROR 1146 (42S02)"), "{}", bad.2);
    // LOAD DATA LOCAL INFILE: the file comes from the client through the proxy, as it
    // does directly (200,000 lines, several 16 KB packets); a client that did not enable
    // local files gets the server's refusal.
    let csv = std::env::temp_dir().join(format!("rwp_cli_{}.csv", std::process::id()));
    let mut text = String::new();
    for i in 0..200_000 {
        text.push_str(&format!("{i},row-{i}-{}\n", "x".repeat(i % 17)));
    }
    std::fs::write(&csv, text).unwrap();
    let load = |port: u16, local: &'static str| {
        let sql = format!(
            "CREATE TEMPORARY TABLE li (a INT, b TEXT); \
             LOAD DATA LOCAL INFILE '{}' INTO TABLE li FIELDS TERMINATED BY ','; \
             SELECT COUNT(*), SUM(a), MD5(GROUP_CONCAT(b ORDER BY a SEPARATOR '')) FROM li",
            csv.display()
        );
        let db = db.to_string();
        tokio::task::spawn_blocking(move || {
            let out = Command::new("mariadb")
                .args([
                    "-h127.0.0.1",
                    &format!("-P{port}"),
                    "-uroot",
                    "--batch",
                    local,
                    "--max-allowed-packet=64M",
                    &db,
                    "-e",
                ])
                .arg(sql)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            // The error's code and state (its text names the server's version string).
            let err = err.split(':').next().unwrap_or("").to_string();
            (String::from_utf8_lossy(&out.stdout).into_owned(), err)
        })
    };
    let via = load(port, "--local-infile=1").await.unwrap();
    let direct = load(3306, "--local-infile=1").await.unwrap();
    assert!(via.0.contains("200000\t19999900000\t"), "{via:?}");
    assert_eq!(via, direct);
    let via = load(port, "--local-infile=0").await.unwrap();
    let direct = load(3306, "--local-infile=0").await.unwrap();
    assert!(direct.1.contains("ERROR 4166 (HY000)"), "{direct:?}");
    assert_eq!(via, direct);
    let _ = std::fs::remove_file(&csv);
    // A client with another connection charset gets it on the backend session.
    let sql = "SELECT @@character_set_client, @@collation_connection, @@character_set_results, \
               HEX(CONVERT(_latin1 X'E9' USING utf8mb4)), 'caf\u{e9}'";
    for cs in ["latin1", "utf8mb3", "binary"] {
        let via = tokio::task::spawn_blocking(move || mariadb_cli_cs(port, db, sql, cs))
            .await
            .unwrap();
        let direct = tokio::task::spawn_blocking(move || mariadb_cli_cs(3306, db, sql, cs))
            .await
            .unwrap();
        assert!(via.0, "{cs}: {}", via.2);
        assert_eq!(via, direct, "{cs}");
    }
    proxy.stop().await;
}

fn sysbench(port: u16, db: &str, cmd: &str) -> String {
    let out = Command::new("sysbench")
        .args([
            "oltp_read_write",
            "--db-driver=mysql",
            "--mysql-host=127.0.0.1",
            &format!("--mysql-port={port}"),
            "--mysql-user=root",
            &format!("--mysql-db={db}"),
            "--tables=1",
            "--table-size=2000",
            // One thread: two deadlock legitimately now and then (direct too); any
            // error at all fails the run below.
            "--threads=1",
            "--time=3",
            "--mysql-ignore-errors=none",
            "--db-ps-mode=auto",
            cmd,
        ])
        .output()
        .expect("sysbench installed (scripts/ensure-tools.sh)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sysbench {cmd}: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sysbench_oltp_read_write_has_zero_errors() {
    let db = "rwp_sysbench";
    fresh_db(db).await;
    let proxy = Proxy::start().await;
    let port = proxy.addr.port();
    let out = tokio::task::spawn_blocking(move || {
        sysbench(port, db, "prepare");
        sysbench(port, db, "run")
    })
    .await
    .unwrap();
    let errors = out
        .lines()
        .find(|l| l.trim_start().starts_with("ignored errors:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|n| n.parse::<u64>().ok())
        .expect("sysbench prints ignored errors");
    let reconnects = out
        .lines()
        .find(|l| l.trim_start().starts_with("reconnects:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse::<u64>().ok())
        .expect("sysbench prints reconnects");
    assert_eq!((errors, reconnects), (0, 0), "{out}");
    // Same data through the proxy and direct.
    let mut p = proxy.conn(db).await;
    let mut d = direct(db).await;
    let sql = "SELECT COUNT(*), SUM(k), SUM(CRC32(c)) FROM sbtest1";
    let a: Row = p.query_first(sql).await.unwrap().unwrap();
    let b: Row = d.query_first(sql).await.unwrap().unwrap();
    assert_eq!(a.unwrap(), b.unwrap());
    proxy.stop().await;
}

/// A client that goes away in the middle of its LOAD DATA LOCAL file leaves nothing
/// loaded, through the proxy as directly: the proxy ends the backend's statement instead
/// of finishing the upload with what it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_file_loads_nothing() {
    let db = "rwp_infile_gone";
    fresh_db(db).await;
    rewind_test_support::direct_exec(db, "CREATE TABLE li (a INT, b TEXT)").await;
    let proxy = Proxy::start().await;
    for opts in [rewind_test_support::direct_opts(db), proxy.opts(db)] {
        let loading = tokio::spawn(async move {
            let mut c = Conn::new(opts).await.unwrap();
            c.set_infile_handler(async {
                // 50,000 lines, then the client hangs and is killed below.
                let lines = (0..50_000).map(|i| Ok(bytes::Bytes::from(format!("{i},x\n"))));
                let stream = futures::stream::iter(lines).chain(futures::stream::pending());
                Ok(Box::pin(stream) as mysql_async::InfileData)
            });
            let _ = c
                .query_drop(
                    "LOAD DATA LOCAL INFILE 'gone.csv' INTO TABLE li FIELDS TERMINATED BY ','",
                )
                .await;
        });
        tokio::time::sleep(Duration::from_millis(1500)).await;
        loading.abort();
        let _ = loading.await;
        // The statement is over on the backend and nothing of it stayed.
        rewind_test_support::eventually("the LOAD ended", Duration::from_secs(20), || async {
            let mut d = direct(db).await;
            let running: Option<i64> = d
                .query_first(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'LOAD DATA LOCAL%gone.csv%'",
                )
                .await
                .unwrap();
            running == Some(0)
        })
        .await;
        let mut d = direct(db).await;
        let n: Option<i64> = d.query_first("SELECT COUNT(*) FROM li").await.unwrap();
        assert_eq!(n, Some(0));
    }
    proxy.stop().await;
}
