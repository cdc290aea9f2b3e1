//! The test MariaDB at 127.0.0.1:3306 (root, no password), reached directly: the
//! "other writer" of dirty-write tests and the checker of every outcome.

use anyhow::{anyhow, bail, Context, Result};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};

/// The backend every proxy in the tests sits in front of.
pub const BACKEND: &str = "mysql://root@127.0.0.1:3306";

pub fn direct_opts(db: &str) -> OptsBuilder {
    root_opts(3306, db)
}

/// Client options for `root` (no password) on 127.0.0.1:`port`, database `db`: MariaDB
/// itself, or a proxy in front of it.
pub fn root_opts(port: u16, db: &str) -> OptsBuilder {
    OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some("root"))
        .db_name(Some(db))
        .prefer_socket(false)
}

/// A connection straight to MariaDB.
pub async fn direct(db: &str) -> Conn {
    Conn::new(direct_opts(db))
        .await
        .expect("MariaDB at 127.0.0.1:3306 (scripts/ensure-mariadb.sh)")
}

/// A `SET GLOBAL` for tests of what sessions started after it see: `lock_wait_timeout`
/// one second longer than it is, a change no other test could see (it is how long DDL
/// waits for a metadata lock). [`ChangedGlobal::restore`] puts the old value back.
pub struct ChangedGlobal {
    conn: Conn,
    before: u64,
    /// The new global value.
    pub changed: u64,
}

impl ChangedGlobal {
    pub async fn lock_wait_timeout() -> ChangedGlobal {
        let mut conn = direct("mysql").await;
        let before: u64 = conn
            .query_first("SELECT @@GLOBAL.lock_wait_timeout")
            .await
            .unwrap()
            .unwrap();
        let changed = before + 1;
        conn.query_drop(format!("SET GLOBAL lock_wait_timeout = {changed}"))
            .await
            .unwrap();
        ChangedGlobal {
            conn,
            before,
            changed,
        }
    }

    pub async fn restore(mut self) {
        self.conn
            .query_drop(format!("SET GLOBAL lock_wait_timeout = {}", self.before))
            .await
            .unwrap();
        self.conn.disconnect().await.ok();
    }
}

/// Runs `sql` straight on MariaDB in `db` (the "other writer" of dirty-write tests).
pub async fn direct_exec(db: &str, sql: &str) {
    let mut c = direct(db).await;
    c.query_drop(sql).await.unwrap();
    c.disconnect().await.unwrap();
}

/// Runs a cleanup `DELETE` on a table other tests write concurrently (the proxy's barrier
/// or fence table) under READ COMMITTED: no gap locks, so it cannot deadlock with their
/// inserts (under REPEATABLE READ it did).
pub async fn delete_shared_rows(db: &str, sql: &str) {
    let mut c = direct(db).await;
    c.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .await
        .unwrap();
    // Even then InnoDB may pick the cleanup as a deadlock victim (1213, seen in CI with
    // the fence table): that rolled only the cleanup back, which is simply run again.
    for attempt in 1.. {
        match c.query_drop(sql).await {
            Ok(()) => break,
            Err(mysql_async::Error::Server(e)) if e.code == 1213 && attempt < 10 => {
                tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
            }
            Err(e) => panic!("{sql}: {e}"),
        }
    }
    c.disconnect().await.unwrap();
}

/// Drops and creates database `db` (utf8mb4), empty, for one test.
pub async fn fresh_db(db: &str) {
    let mut c = direct("mysql").await;
    c.query_drop(format!("DROP DATABASE IF EXISTS `{db}`"))
        .await
        .expect("drop db");
    c.query_drop(format!("CREATE DATABASE `{db}` CHARACTER SET utf8mb4"))
        .await
        .expect("create db");
    c.disconnect().await.ok();
}

/// `CHECKSUM TABLE … EXTENDED` of each table: equal means byte-identical rows.
pub async fn checksums(db: &str, tables: &[&str]) -> Vec<(String, Option<u64>)> {
    let mut c = direct(db).await;
    let mut out = Vec::new();
    for t in tables {
        let row: Option<(String, Option<u64>)> = c
            .query_first(format!("CHECKSUM TABLE `{db}`.`{t}` EXTENDED"))
            .await
            .expect("checksum");
        out.push(row.expect("checksum row"));
    }
    c.disconnect().await.ok();
    out
}

/// Every row of a table, as text (for messages and exact comparisons).
pub async fn dump(db: &str, table: &str) -> Vec<Vec<Option<Vec<u8>>>> {
    let mut c = direct(db).await;
    let rows: Vec<mysql_async::Row> = c
        .query(format!("SELECT * FROM `{db}`.`{table}` ORDER BY 1, 2"))
        .await
        .expect("dump");
    c.disconnect().await.ok();
    rows.into_iter()
        .map(|r| {
            r.unwrap()
                .into_iter()
                .map(|v| match v {
                    mysql_async::Value::NULL => None,
                    mysql_async::Value::Bytes(b) => Some(b),
                    other => Some(other.as_sql(true).into_bytes()),
                })
                .collect()
        })
        .collect()
}

/// Normal undo records and markers left for `xid` (or for anyone) on the test MariaDB.
pub async fn undo_rows(xid: Option<&str>) -> (u64, u64) {
    let mut c = direct("mysql").await;
    let sql = match xid {
        Some(x) => format!(
            "SELECT COALESCE(SUM(log_status = 0), 0), COALESCE(SUM(log_status = 1), 0) \
             FROM rewind.undo_log WHERE xid = '{x}'"
        ),
        None => "SELECT COALESCE(SUM(log_status = 0), 0), COALESCE(SUM(log_status = 1), 0) \
                 FROM rewind.undo_log"
            .into(),
    };
    let r: Option<(u64, u64)> = c.query_first(sql).await.expect("undo rows");
    c.disconnect().await.ok();
    r.unwrap_or((0, 0))
}

/// The server error a statement (or a connect) failed with: (code, SQLSTATE, message).
/// An error if it succeeded or failed otherwise.
pub fn server_error<T: std::fmt::Debug>(
    r: std::result::Result<T, mysql_async::Error>,
) -> Result<(u16, String, String)> {
    match r {
        Err(mysql_async::Error::Server(e)) => Ok((e.code, e.state, e.message)),
        Err(other) => bail!("not a server error: {other}"),
        Ok(v) => Err(anyhow!("expected an error, got {v:?}")),
    }
    .context("server error expected")
}

/// Rewind's prepared XA transactions in the test MariaDB (`XA RECOVER`, formatID "RWND")
/// whose global XID starts with `xid_prefix`: their (gtrid, bqual).
pub async fn xa_prepared(xid_prefix: &str) -> Vec<(String, String)> {
    const FORMAT_ID: i64 = 0x52574e44;
    let mut c = direct("mysql").await;
    let rows: Vec<(i64, i64, i64, Vec<u8>)> = c.query("XA RECOVER").await.expect("XA RECOVER");
    c.disconnect().await.unwrap();
    rows.into_iter()
        .filter(|(format, ..)| *format == FORMAT_ID)
        .map(|(_, g, _, data)| {
            let (g, b) = data.split_at(g as usize);
            (
                String::from_utf8_lossy(g).into_owned(),
                String::from_utf8_lossy(b).into_owned(),
            )
        })
        .filter(|(g, _)| g.starts_with(xid_prefix))
        .collect()
}
