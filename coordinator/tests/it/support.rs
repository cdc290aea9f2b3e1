//! Test harness: the real binary on free ports, a raw HTTP client, a fake proxy.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rewind_protocol::v1::{
    branch_result, coordinator_message, proxy_message, resolve_result, Announce, BranchAction,
    BranchResult, CoordinatorMessage, DirtyRow, DirtyWrite, Done, ProxyMessage, ResolveResult,
    TableLocksAck,
};
use rewind_protocol::{ResourceManagerClient, TransactionManagerClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "rewind-coord-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

pub struct Coordinator {
    child: Child,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub data: PathBuf,
}

impl Coordinator {
    /// Starts the binary on `dir` and waits until /healthz answers.
    pub async fn start(dir: &TempDir, extra: &[&str]) -> Coordinator {
        let (grpc, http) = (free_addr(), free_addr());
        Self::start_at(
            dir.0.join("data"),
            dir.0.join("coordinator.log"),
            grpc,
            http,
            extra,
            &[],
        )
        .await
    }

    /// Starts the binary on the given addresses and data directory (a cluster member's
    /// peers must know its addresses in advance) and waits until /healthz answers.
    pub async fn start_at(
        data: PathBuf,
        log: PathBuf,
        grpc: SocketAddr,
        http: SocketAddr,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> Coordinator {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_rewind-coordinator"))
            .args([
                "--grpc-addr",
                &grpc.to_string(),
                "--http-addr",
                &http.to_string(),
            ])
            .arg("--data-dir")
            .arg(&data)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("REWIND_IT_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let c = Coordinator {
            child,
            grpc,
            http,
            data,
        };
        assert_eventually(
            "coordinator answers /healthz",
            Duration::from_secs(20),
            || async {
                matches!(
                    http_req(http, "GET", "/healthz", None).await,
                    Some((200, _))
                )
            },
        )
        .await;
        c
    }

    /// kill -9.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit; returns the exit code.
    pub fn terminate(&mut self, within: Duration) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < within {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub async fn tm(&self) -> TransactionManagerClient<Channel> {
        TransactionManagerClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap()
    }

    pub async fn rm(&self) -> ResourceManagerClient<Channel> {
        ResourceManagerClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap()
    }

    /// The operator secret the coordinator generated in its data directory.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data.join("operator-token"))
            .expect("generated operator token")
            .trim()
            .to_string()
    }

    pub async fn http(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> (u16, serde_json::Value) {
        self.http_with(method, path, body, &[]).await
    }

    /// An operator call: with `Authorization: Bearer <generated token>`.
    pub async fn operator(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> (u16, serde_json::Value) {
        let auth = format!("Bearer {}", self.token());
        self.http_with(method, path, body, &[("Authorization", auth.as_str())])
            .await
    }

    pub async fn http_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> (u16, serde_json::Value) {
        let (status, body) = http_req_with(self.http, method, path, body, headers)
            .await
            .expect("http answer");
        let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::String(
            String::from_utf8_lossy(&body).into(),
        ));
        (status, v)
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Minimal HTTP/1.1 client (Connection: close), enough for JSON APIs.
pub async fn http_req(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Option<(u16, Vec<u8>)> {
    http_req_with(addr, method, path, body, &[]).await
}

pub async fn http_req_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> Option<(u16, Vec<u8>)> {
    http_full(addr, method, path, body, headers)
        .await
        .map(|(st, _, b)| (st, b))
}

/// Status, response head (lower-cased) and body.
pub async fn http_full(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> Option<(u16, String, Vec<u8>)> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let body = body.unwrap_or(b"");
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.ok()?;
    // A server may answer (413) before reading a huge body; ignore write errors then.
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&out);
    let status: u16 = text.split_whitespace().nth(1)?.parse().ok()?;
    let split = out.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let headers = text[..split].to_ascii_lowercase();
    let mut body = out[split..].to_vec();
    if headers.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Some((status, headers, body))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

pub async fn assert_eventually<F, Fut>(what: &str, within: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < within {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not within {within:?}: {what}");
}

/// How the fake proxy answers a rollback of a branch.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum RollbackAnswer {
    Done,
    Dirty,
}

/// A fake proxy on the Attach stream: answers every phase-two command and records it.
pub struct FakeProxy {
    pub seen: Arc<Mutex<Vec<CoordinatorMessage>>>,
    pub rollback: Arc<Mutex<RollbackAnswer>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeProxy {
    pub async fn attach(c: &Coordinator, resources: &[&str]) -> FakeProxy {
        let mut rm = c.rm().await;
        let (tx, rx) = mpsc::channel(1024);
        tx.send(ProxyMessage {
            kind: Some(proxy_message::Kind::Announce(Announce {
                proxy_id: "fake".into(),
                resource_ids: resources.iter().map(|r| r.to_string()).collect(),
            })),
        })
        .await
        .unwrap();
        let mut inbound = rm
            .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let rollback = Arc::new(Mutex::new(RollbackAnswer::Done));
        let (seen2, rollback2) = (seen.clone(), rollback.clone());
        let task = tokio::spawn(async move {
            while let Some(Ok(msg)) = inbound.next().await {
                seen2.lock().unwrap().push(msg.clone());
                let reply = match msg.kind {
                    Some(coordinator_message::Kind::BranchCommand(cmd)) => {
                        let dirty = cmd.action == BranchAction::Rollback as i32
                            && *rollback2.lock().unwrap() == RollbackAnswer::Dirty;
                        let outcome = if dirty {
                            branch_result::Outcome::DirtyWrite(DirtyWrite {
                                rows: vec![DirtyRow {
                                    table: "acct".into(),
                                    pk: vec![b"7".to_vec()],
                                    before_json: r#"{"id":7,"balance":100}"#.into(),
                                    after_json: r#"{"id":7,"balance":90}"#.into(),
                                    current_json: r#"{"id":7,"balance":55}"#.into(),
                                }],
                            })
                        } else {
                            branch_result::Outcome::Done(Done {})
                        };
                        proxy_message::Kind::BranchResult(BranchResult {
                            command_id: cmd.command_id,
                            xid: cmd.xid,
                            branch_id: cmd.branch_id,
                            outcome: Some(outcome),
                        })
                    }
                    Some(coordinator_message::Kind::ResolveCommand(cmd)) => {
                        proxy_message::Kind::ResolveResult(ResolveResult {
                            command_id: cmd.command_id,
                            conflict_id: cmd.conflict_id,
                            outcome: Some(resolve_result::Outcome::Done(Done {})),
                        })
                    }
                    // Confirms write-isolation sets at once: it sends no writes.
                    Some(coordinator_message::Kind::TableLocks(t)) => {
                        proxy_message::Kind::TableLocksAck(TableLocksAck {
                            epoch: t.epoch,
                            resource_id: t.resource_id,
                        })
                    }
                    None => continue,
                };
                if tx.send(ProxyMessage { kind: Some(reply) }).await.is_err() {
                    return;
                }
            }
        });
        FakeProxy {
            seen,
            rollback,
            task,
        }
    }
}

impl Drop for FakeProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
