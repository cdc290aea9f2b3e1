//! Shared helpers for Rewind's integration tests: the real `rewind-coordinator` and
//! `rewind-proxy` binaries (from the same target directory as the tests) on free ports,
//! against the MariaDB at 127.0.0.1:3306 that `scripts/ensure-mariadb.sh` provides.
//!
//! Every test owns its databases (named after the test) and its processes; processes are
//! killed when their handles drop. Waiting is on conditions ([`eventually`]), never on
//! fixed sleeps.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use serde_json::Value as Json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const BACKEND: &str = "mysql://root@127.0.0.1:3306";

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "rewind-it-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Keep the logs of a failed test.
            eprintln!("logs kept in {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr")
}

/// A binary of this workspace, built by `cargo build --workspace` into the target
/// directory the test itself runs from.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} missing: run `cargo build --workspace --all-targets` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A child process whose stdout and stderr go to a log file; killed on drop.
pub struct Process {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(program: &Path, args: &[String], log: PathBuf) -> Process {
        Self::spawn_env(program, args, &[], log)
    }

    pub fn spawn_env(
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log: PathBuf,
    ) -> Process {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(program)
            .args(args)
            // REWIND_IT_LOG=debug (or any filter) to see more in the kept logs.
            .env(
                "RUST_LOG",
                std::env::var("REWIND_IT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(out)
            .stderr(err)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", program.display()));
        Process {
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// kill -9, then reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit.
    pub fn terminate(&mut self, within: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < within {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// Whether the process has ended (and is reaped).
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(_))) | None => {
                self.child = None;
                true
            }
            _ => false,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Number of log lines containing `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `cond` every 20 ms until it holds, or fails the test after `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return;
        }
        if start.elapsed() > within {
            panic!("not within {within:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One HTTP/1.1 request with `Connection: close`; the status and the body as JSON (or a
/// JSON string when the body is not JSON).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Json>,
) -> Result<(u16, Json)> {
    http_as(addr, method, path, body, None).await
}

/// [`http`] with `Authorization: Bearer <token>` when a token is given.
pub async fn http_as(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Json>,
    bearer: Option<&str>,
) -> Result<(u16, Json)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP answer"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no status in {head:?}"))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    let json = serde_json::from_str(&body).unwrap_or(Json::String(body));
    Ok((status, json))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A `rewind-coordinator` process with its own data directory.
pub struct Coordinator {
    pub process: Process,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    data: PathBuf,
    extra: Vec<String>,
}

impl Coordinator {
    pub async fn start(dir: &TempDir, extra: &[&str]) -> Coordinator {
        let (grpc, http) = (free_addr(), free_addr());
        let data = dir.0.join("coordinator");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let process = Self::launch(dir.0.join("coordinator.log"), grpc, http, &data, &extra).await;
        Coordinator {
            process,
            grpc,
            http,
            data,
            extra,
        }
    }

    async fn launch(
        log: PathBuf,
        grpc: SocketAddr,
        http_addr: SocketAddr,
        data: &Path,
        extra: &[String],
    ) -> Process {
        let mut args = vec![
            "--grpc-addr".to_string(),
            grpc.to_string(),
            "--http-addr".into(),
            http_addr.to_string(),
            "--data-dir".into(),
            data.display().to_string(),
        ];
        args.extend(extra.iter().cloned());
        let process = Process::spawn(&binary("rewind-coordinator"), &args, log);
        eventually("the coordinator answers /healthz", Duration::from_secs(30), || async move {
            matches!(http(http_addr, "GET", "/healthz", None).await, Ok((200, _)))
        })
        .await;
        process
    }

    /// Starts a member of a coordinator cluster on given addresses (its peers must know
    /// them in advance), data in `dir/<name>`, log in `dir/<name>.log`.
    pub async fn start_at(
        dir: &TempDir,
        name: &str,
        grpc: SocketAddr,
        http_addr: SocketAddr,
        extra: &[&str],
    ) -> Coordinator {
        let data = dir.0.join(name);
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let log = dir.0.join(format!("{name}.log"));
        let process = Self::launch(log, grpc, http_addr, &data, &extra).await;
        Coordinator {
            process,
            grpc,
            http: http_addr,
            data,
            extra,
        }
    }

    /// kill -9 and start again on the same ports and data.
    pub async fn restart(&mut self, dir: &TempDir) {
        self.process.kill();
        self.process = Self::launch(
            dir.0.join("coordinator.log"),
            self.grpc,
            self.http,
            &self.data,
            &self.extra,
        )
        .await;
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub async fn begin(&self, timeout_ms: u64) -> String {
        let (code, body) = http(
            self.http,
            "POST",
            "/api/v1/transactions",
            Some(&serde_json::json!({"name": "it", "timeout_ms": timeout_ms})),
        )
        .await
        .expect("begin");
        assert_eq!(code, 200, "begin: {body}");
        body["xid"].as_str().expect("xid").to_string()
    }

    /// POST commit/rollback; the status code and body.
    pub async fn decide(&self, xid: &str, what: &str) -> (u16, Json) {
        http(
            self.http,
            "POST",
            &format!("/api/v1/transactions/{xid}/{what}"),
            None,
        )
        .await
        .expect("decide")
    }

    pub async fn commit(&self, xid: &str) -> String {
        let (code, body) = self.decide(xid, "commit").await;
        assert_eq!(code, 200, "commit {xid}: {body}");
        body["status"].as_str().unwrap_or_default().to_string()
    }

    pub async fn rollback(&self, xid: &str) -> String {
        let (code, body) = self.decide(xid, "rollback").await;
        assert_eq!(code, 200, "rollback {xid}: {body}");
        body["status"].as_str().unwrap_or_default().to_string()
    }

    pub async fn transaction(&self, xid: &str) -> Json {
        let (code, body) = http(
            self.http,
            "GET",
            &format!("/api/v1/transactions/{xid}"),
            None,
        )
        .await
        .expect("show");
        assert_eq!(code, 200, "show {xid}: {body}");
        body
    }

    pub async fn status(&self, xid: &str) -> String {
        self.transaction(xid).await["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Waits until `xid` reaches `status`.
    pub async fn wait_status(&self, xid: &str, status: &str, within: Duration) {
        eventually(&format!("{xid} becomes {status}"), within, || async {
            self.status(xid).await == status
        })
        .await;
    }

    pub async fn get(&self, path: &str) -> Json {
        let (code, body) = http(self.http, "GET", path, None).await.expect("GET");
        assert_eq!(code, 200, "GET {path}: {body}");
        body
    }

    pub async fn locks(&self) -> Vec<Json> {
        self.get("/api/v1/locks")
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The operator secret the coordinator generated in its data directory.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data.join("operator-token"))
            .expect("the generated operator token")
            .trim()
            .to_string()
    }

    /// An operator API call (with the generated credential).
    pub async fn operator(&self, method: &str, path: &str, body: Option<&Json>) -> (u16, Json) {
        http_as(self.http, method, path, body, Some(&self.token()))
            .await
            .expect("operator call")
    }

    /// `GET /api/v1/conflicts`: open to applications and scripts (DESIGN.md), no credential.
    pub async fn conflicts(&self) -> Vec<Json> {
        let (code, body) = http(self.http, "GET", "/api/v1/conflicts", None)
            .await
            .expect("GET /api/v1/conflicts");
        assert_eq!(code, 200, "GET /api/v1/conflicts: {body}");
        body.as_array().cloned().unwrap_or_default()
    }

    pub async fn resolve(&self, id: u64, action: &str) -> (u16, Json) {
        self.operator(
            "POST",
            &format!("/api/v1/conflicts/{id}/resolve"),
            Some(&serde_json::json!({"action": action})),
        )
        .await
    }

    /// The audit log, newest first.
    pub async fn audit(&self) -> Vec<Json> {
        let (code, body) = self.operator("GET", "/api/v1/audit?limit=1000", None).await;
        assert_eq!(code, 200, "GET /api/v1/audit: {body}");
        body.as_array().cloned().unwrap_or_default()
    }
}

/// A `rewind-proxy` process.
pub struct Proxy {
    pub process: Process,
    pub addr: SocketAddr,
    args: Vec<String>,
    log: PathBuf,
}

impl Proxy {
    /// Starts a proxy in front of the test MariaDB and waits until it serves and has
    /// attached to the coordinator for phase two.
    pub async fn start(dir: &TempDir, name: &str, coordinators: &str, extra: &[&str]) -> Proxy {
        Self::start_with(dir, name, coordinators, extra, "").await
    }

    /// As [`Proxy::start`], with `REWIND_FAILPOINTS` set to `failpoints`.
    pub async fn start_with(
        dir: &TempDir,
        name: &str,
        coordinators: &str,
        extra: &[&str],
        failpoints: &str,
    ) -> Proxy {
        let addr = free_addr();
        let mut args = vec![
            "--listen".to_string(),
            addr.to_string(),
            "--backend".into(),
            BACKEND.into(),
            "--coordinator".into(),
            coordinators.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = dir.0.join(format!("{name}.log"));
        let process = Self::launch(addr, &args, &log, failpoints).await;
        Proxy {
            process,
            addr,
            args,
            log,
        }
    }

    async fn launch(addr: SocketAddr, args: &[String], log: &Path, failpoints: &str) -> Process {
        let attached_before = std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches("attached to the coordinator")
            .count();
        let env = [("REWIND_FAILPOINTS".to_string(), failpoints.to_string())];
        let process = Process::spawn_env(&binary("rewind-proxy"), args, &env, log.to_path_buf());
        eventually(
            "the proxy serves and attaches",
            Duration::from_secs(30),
            || async move {
                let attached = std::fs::read_to_string(log)
                    .unwrap_or_default()
                    .matches("attached to the coordinator")
                    .count();
                attached > attached_before && tokio::net::TcpStream::connect(addr).await.is_ok()
            },
        )
        .await;
        process
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts again after a kill, same port and arguments, without failpoints.
    pub async fn restart(&mut self) {
        self.process.kill();
        self.process = Self::launch(self.addr, &self.args, &self.log, "").await;
    }

    /// Waits until the process has exited (a failpoint aborted it).
    pub async fn wait_exit(&mut self, within: Duration) {
        let start = Instant::now();
        loop {
            if self.process.exited() {
                return;
            }
            assert!(
                start.elapsed() < within,
                "the proxy did not exit within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn opts(&self, db: &str) -> OptsBuilder {
        OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(self.addr.port())
            .user(Some("root"))
            .db_name(Some(db))
            .prefer_socket(false)
    }

    pub async fn conn(&self, db: &str) -> Conn {
        Conn::new(self.opts(db))
            .await
            .expect("connect through the proxy")
    }
}

pub fn direct_opts(db: &str) -> OptsBuilder {
    OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(3306)
        .user(Some("root"))
        .db_name(Some(db))
        .prefer_socket(false)
}

/// A connection straight to MariaDB (the "other writer" and the checker).
pub async fn direct(db: &str) -> Conn {
    Conn::new(direct_opts(db))
        .await
        .expect("MariaDB at 127.0.0.1:3306 (scripts/ensure-mariadb.sh)")
}

/// Runs `sql` straight on MariaDB in `db` (the "other writer" of dirty-write tests).
pub async fn direct_exec(db: &str, sql: &str) {
    let mut c = direct(db).await;
    c.query_drop(sql).await.unwrap();
    c.disconnect().await.unwrap();
}

/// Drops and creates database `db`.
pub async fn fresh_db(db: &str) {
    let mut c = direct("mysql").await;
    c.query_drop(format!("DROP DATABASE IF EXISTS `{db}`"))
        .await
        .expect("drop db");
    c.query_drop(format!("CREATE DATABASE `{db}`"))
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

/// Normal undo records and markers left for `xid` on the test MariaDB.
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

/// The server error of a failed statement: (code, message).
pub fn server_error<T: std::fmt::Debug>(
    r: std::result::Result<T, mysql_async::Error>,
) -> Result<(u16, String)> {
    match r {
        Err(mysql_async::Error::Server(e)) => Ok((e.code, e.message)),
        Err(other) => bail!("not a server error: {other}"),
        Ok(v) => Err(anyhow!("expected an error, got {v:?}")),
    }
    .context("server error expected")
}
