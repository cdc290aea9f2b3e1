//! A `rewind-coordinator` process, alone or as one member of a cluster, and the calls
//! tests make to it: raw HTTP for input checks, the JSON API's common calls, gRPC
//! clients.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rewind_protocol::{ResourceManagerClient, TransactionManagerClient};
use serde_json::Value as Json;
use tonic::transport::Channel;

use crate::dir::TempDir;
use crate::http::{http, request};
use crate::process::{binary, free_addr, Process};
use crate::wait::eventually;

/// The `--peers` value for cluster members at `addrs` (gRPC, HTTP), ids 1, 2, 3, ….
pub fn peers(addrs: &[(SocketAddr, SocketAddr)]) -> String {
    addrs
        .iter()
        .enumerate()
        .map(|(i, (g, h))| format!("{}={g}/{h}", i + 1))
        .collect::<Vec<_>>()
        .join(",")
}

/// A `rewind-coordinator` process with its own data directory.
pub struct Coordinator {
    pub process: Process,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    /// Its data directory (where it writes the generated operator token).
    pub data: PathBuf,
    /// Every argument and variable it was started with, for [`Coordinator::restart`].
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Coordinator {
    /// A single node on free ports: data in `dir/coordinator`, log in
    /// `dir/coordinator.log`. Waits until it answers `/healthz`.
    pub async fn start(dir: &TempDir, extra: &[&str]) -> Coordinator {
        Self::start_at(dir, "coordinator", free_addr(), free_addr(), extra, &[]).await
    }

    /// A process on given addresses (a cluster member's peers know them in advance),
    /// data in `dir/<name>`, log in `dir/<name>.log`, with `env` added to its
    /// environment. Waits until it answers `/healthz`.
    pub async fn start_at(
        dir: &TempDir,
        name: &str,
        grpc: SocketAddr,
        http_addr: SocketAddr,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> Coordinator {
        let data = dir.0.join(name);
        let mut args = vec![
            "--grpc-addr".to_string(),
            grpc.to_string(),
            "--http-addr".into(),
            http_addr.to_string(),
            "--data-dir".into(),
            data.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let process = Self::launch(&args, &env, dir.0.join(format!("{name}.log")), http_addr).await;
        Coordinator {
            process,
            grpc,
            http: http_addr,
            data,
            args,
            env,
        }
    }

    async fn launch(
        args: &[String],
        env: &[(String, String)],
        log: PathBuf,
        http_addr: SocketAddr,
    ) -> Process {
        let process = Process::spawn_env(&binary("rewind-coordinator"), args, env, log);
        eventually("the coordinator answers /healthz", Duration::from_secs(30), || async move {
            matches!(http(http_addr, "GET", "/healthz", None).await, Ok((200, _)))
        })
        .await;
        process
    }

    /// kill -9.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// SIGTERM and wait for the exit; its code.
    pub fn terminate(&mut self, within: Duration) -> Option<i32> {
        self.process.terminate(within)
    }

    /// kill -9 and start again with the same ports, data, log and arguments.
    pub async fn restart(&mut self) {
        self.process.kill();
        let log = self.process.log.clone();
        self.process = Self::launch(&self.args, &self.env, log, self.http).await;
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub async fn tm(&self) -> TransactionManagerClient<Channel> {
        TransactionManagerClient::connect(self.grpc_url())
            .await
            .expect("gRPC connect")
    }

    pub async fn rm(&self) -> ResourceManagerClient<Channel> {
        ResourceManagerClient::connect(self.grpc_url())
            .await
            .expect("gRPC connect")
    }

    /// The operator secret the coordinator generated in its data directory.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data.join("operator-token"))
            .expect("the generated operator token")
            .trim()
            .to_string()
    }

    /// Any HTTP call, the body sent as it is; the status and the body as JSON.
    pub async fn http(&self, method: &str, path: &str, body: Option<&[u8]>) -> (u16, Json) {
        self.http_with(method, path, body, &[]).await
    }

    /// [`Coordinator::http`] with extra request headers.
    pub async fn http_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> (u16, Json) {
        let a = request(self.http, method, path, body, headers)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"));
        (a.status, a.json())
    }

    /// An operator call: with `Authorization: Bearer <generated token>`.
    pub async fn operator(&self, method: &str, path: &str, body: Option<&[u8]>) -> (u16, Json) {
        let auth = format!("Bearer {}", self.token());
        self.http_with(method, path, body, &[("Authorization", auth.as_str())])
            .await
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
        self.get(&format!("/api/v1/transactions/{xid}")).await
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

    /// GET `path`, which must answer 200; its body.
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

    /// `GET /api/v1/conflicts`: open to applications and scripts (DESIGN.md), no credential.
    pub async fn conflicts(&self) -> Vec<Json> {
        self.get("/api/v1/conflicts")
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub async fn resolve(&self, id: u64, action: &str) -> (u16, Json) {
        let body = serde_json::json!({"action": action}).to_string();
        self.operator(
            "POST",
            &format!("/api/v1/conflicts/{id}/resolve"),
            Some(body.as_bytes()),
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
