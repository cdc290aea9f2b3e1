//! A three-member coordinator cluster (Raft) on free ports, and the calls a test makes
//! at whichever member leads: followed across elections, retried while there is none.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::{free_addr, http, peers, Coordinator, TempDir};

pub struct CoordinatorCluster {
    pub addrs: Vec<(SocketAddr, SocketAddr)>,
    procs: Mutex<Vec<Option<Coordinator>>>,
    peers: String,
    /// The members' configuration file.
    config: String,
    /// The cluster secret every member is started with (`REWIND_CLUSTER_SECRET`).
    pub secret: String,
}

impl CoordinatorCluster {
    /// Three members started with the configuration `config_toml`, a leader elected; the
    /// cluster and the proxies' `--coordinator` list.
    pub async fn start(dir: &TempDir, config_toml: &str) -> (Arc<CoordinatorCluster>, String) {
        let addrs: Vec<(SocketAddr, SocketAddr)> =
            (0..3).map(|_| (free_addr(), free_addr())).collect();
        let path = dir.0.join("member.toml");
        std::fs::write(&path, config_toml).expect("member config");
        let cluster = Arc::new(CoordinatorCluster {
            addrs: addrs.clone(),
            procs: Mutex::new(vec![None, None, None]),
            peers: peers(&addrs),
            config: path.display().to_string(),
            secret: format!("test-secret-{:032x}", rand::random::<u128>()),
        });
        for i in 0..3 {
            cluster.restart(dir, i).await;
        }
        cluster.leader(Duration::from_secs(20)).await;
        let urls = addrs
            .iter()
            .map(|(g, _)| format!("http://{g}"))
            .collect::<Vec<_>>()
            .join(",");
        (cluster, urls)
    }

    /// The member index and HTTP address of the node that says it leads. A member that
    /// does not answer within a second (stopped, see [`CoordinatorCluster::pause`]) is
    /// passed over.
    pub async fn leader(&self, within: Duration) -> (usize, SocketAddr) {
        let start = Instant::now();
        loop {
            for (i, (_, h)) in self.addrs.iter().enumerate() {
                let health = http(*h, "GET", "/healthz", None);
                if let Ok(Ok((200, v))) = tokio::time::timeout(Duration::from_secs(1), health).await
                {
                    if v["role"] == "leader" {
                        return (i, *h);
                    }
                }
            }
            assert!(start.elapsed() < within, "no leader within {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An API call at the leader that must answer 200, following it across elections and
    /// retrying while there is none (a lost answer is retried too: use it for calls that
    /// are idempotent, or, like begin, harmless to repeat).
    pub async fn call(&self, method: &str, path: &str, body: Option<&Json>) -> Json {
        match self.try_call(method, path, body).await {
            (200, v) => v,
            (code, v) => panic!("{method} {path}: {code} {v}"),
        }
    }

    /// [`CoordinatorCluster::call`] that returns any answer but "unavailable" (503) or
    /// none (which it retries): the status and the body.
    pub async fn try_call(&self, method: &str, path: &str, body: Option<&Json>) -> (u16, Json) {
        let start = Instant::now();
        loop {
            let (_, h) = self.leader(Duration::from_secs(30)).await;
            match http(h, method, path, body).await {
                Ok((503, _)) | Err(_) => {}
                Ok(answer) => return answer,
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{method} {path} never answered"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Begins a global transaction at the leader (followed across elections; a begin
    /// whose answer was lost is repeated, which only leaves an unused XID to time out):
    /// its XID.
    pub async fn begin(&self, timeout_ms: u64) -> String {
        self.call(
            "POST",
            "/api/v1/transactions",
            Some(&serde_json::json!({ "timeout_ms": timeout_ms })),
        )
        .await["xid"]
            .as_str()
            .expect("xid")
            .to_string()
    }

    /// A global transaction's status, at the leader.
    pub async fn status(&self, xid: &str) -> String {
        self.call("GET", &format!("/api/v1/transactions/{xid}"), None)
            .await["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// (Re)starts member `i` (index into `addrs`; its node id is `i + 1`).
    pub async fn restart(&self, dir: &TempDir, i: usize) {
        let (g, h) = self.addrs[i];
        let id = (i + 1).to_string();
        let c = Coordinator::start_at(
            dir,
            &format!("node{id}"),
            g,
            h,
            &[
                "--config",
                &self.config,
                "--node-id",
                &id,
                "--peers",
                &self.peers,
            ],
            &[("REWIND_CLUSTER_SECRET", self.secret.clone())],
        )
        .await;
        self.procs.lock().unwrap()[i] = Some(c);
    }

    /// Member `i`'s process, stopped (`pause`: SIGSTOP) or let run again (SIGCONT): see
    /// [`Process::pause`](crate::process::Process::pause).
    pub fn pause(&self, i: usize, pause: bool) {
        self.procs.lock().unwrap()[i]
            .as_ref()
            .expect("member running")
            .process
            .pause(pause);
    }

    /// How many lines of member `i`'s log contain `needle`.
    pub fn log_count(&self, i: usize, needle: &str) -> usize {
        self.procs.lock().unwrap()[i]
            .as_ref()
            .map_or(0, |c| c.process.log_count(needle))
    }

    /// kill -9 of member `i`.
    pub fn kill(&self, i: usize) {
        if let Some(mut c) = self.procs.lock().unwrap()[i].take() {
            c.process.kill();
        }
    }
}
