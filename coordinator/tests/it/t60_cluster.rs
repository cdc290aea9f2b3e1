//! Cluster mode: three real processes on 127.0.0.1. A leader is elected; followers send
//! clients to it; the leader is killed (kill -9) twice under load and a new one takes
//! over with everything acknowledged intact and no lock granted twice; a restarted node
//! catches up; all nodes stopped and started again come back with the same state.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rewind_protocol::v1::{coordinator_message, BeginRequest};

use crate::fake_proxy::FakeProxy;
use crate::{key, register};
use rewind_test_support::{eventually, free_addr, http, peers, Coordinator, TempDir};

struct Node {
    id: u64,
    grpc: SocketAddr,
    http: SocketAddr,
    proc: Option<Coordinator>,
}

struct Cluster {
    dir: TempDir,
    peers: String,
    nodes: Vec<Node>,
    extra: Vec<String>,
    /// The member [`Cluster::status`] last found leading.
    asked: std::cell::Cell<Option<usize>>,
}

/// The `--peers` value naming every node (ids 1, 2, … in order).
fn voters(nodes: &[Node]) -> String {
    let addrs: Vec<_> = nodes.iter().map(|n| (n.grpc, n.http)).collect();
    peers(&addrs)
}

impl Cluster {
    async fn start(dir: TempDir) -> Cluster {
        Self::start_with(dir, &[]).await
    }

    async fn start_with(dir: TempDir, extra: &[&str]) -> Cluster {
        let nodes: Vec<Node> = (1..=3)
            .map(|id| Node {
                id,
                grpc: free_addr(),
                http: free_addr(),
                proc: None,
            })
            .collect();
        let peers = voters(&nodes);
        let mut c = Cluster {
            dir,
            peers,
            nodes,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            asked: Default::default(),
        };
        for i in 0..3 {
            c.up(i).await;
        }
        c
    }

    async fn up(&mut self, i: usize) {
        let n = &self.nodes[i];
        let id = n.id.to_string();
        let mut args = vec!["--node-id", &id, "--peers", &self.peers];
        args.extend(self.extra.iter().map(String::as_str));
        let p = Coordinator::start_at(
            &self.dir,
            &format!("node{}", n.id),
            n.grpc,
            n.http,
            &args,
            &[(
                "REWIND_RAFT_PARTITION_FILE",
                self.partition_file(i).display().to_string(),
            )],
        )
        .await;
        self.nodes[i].proc = Some(p);
    }

    /// The partition failpoint file of node `i`: the node ids it cannot reach.
    fn partition_file(&self, i: usize) -> std::path::PathBuf {
        self.dir
            .0
            .join(format!("node{}.partition", self.nodes[i].id))
    }

    /// Cuts node `i` off from the others (both directions), or heals every link.
    fn isolate(&self, i: Option<usize>) {
        for j in 0..self.nodes.len() {
            let blocked = match i {
                None => String::new(),
                Some(i) if i == j => self
                    .nodes
                    .iter()
                    .filter(|n| n.id != self.nodes[i].id)
                    .map(|n| n.id.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
                Some(i) => self.nodes[i].id.to_string(),
            };
            std::fs::write(self.partition_file(j), blocked).unwrap();
        }
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].proc.take() {
            p.kill();
        }
    }

    async fn health(addr: SocketAddr) -> Option<serde_json::Value> {
        match http(addr, "GET", "/healthz", None).await {
            Ok((200, body)) => Some(body),
            _ => None,
        }
    }

    /// Waits until the running nodes agree on one leader; returns its index.
    async fn leader(&self, within: Duration) -> usize {
        let start = Instant::now();
        loop {
            let mut leaders = Vec::new();
            let mut views = Vec::new();
            for (i, n) in self.nodes.iter().enumerate() {
                if n.proc.is_none() {
                    continue;
                }
                if let Some(h) = Self::health(n.http).await {
                    if h["role"] == "leader" {
                        leaders.push(i);
                    }
                    views.push(h["leader"].as_u64());
                }
            }
            if leaders.len() == 1 {
                let id = self.nodes[leaders[0]].id;
                if views.iter().all(|v| *v == Some(id)) {
                    return leaders[0];
                }
            }
            assert!(
                start.elapsed() < within,
                "no agreed leader within {within:?}: leaders {leaders:?}, views {views:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn node(&self, i: usize) -> &Coordinator {
        self.nodes[i].proc.as_ref().expect("running")
    }
}

/// The transaction's status as `c` answers it; anything else (a 404, a 503 from a
/// member that no longer leads) as the HTTP status and body, so a failure says which.
async fn status_on(c: &Coordinator, xid: &str) -> (u16, String) {
    let (st, v) = c
        .http("GET", &format!("/api/v1/transactions/{xid}"), None)
        .await;
    match v["status"].as_str() {
        Some(s) if st == 200 => (st, s.to_string()),
        _ => (st, format!("HTTP {st}: {v}")),
    }
}

impl Cluster {
    /// A new global transaction on member `i`, and what registering a branch of it that
    /// locks row `pk` of `acct` in `db1` got: the branch, or the holder of the lock.
    async fn lock_row_on(&self, i: usize, pk: &[u8]) -> (String, Result<u64, String>) {
        self.lock_table_row_on(i, "acct", pk).await
    }

    /// [`Cluster::lock_row_on`] for row `pk` of `table`.
    async fn lock_table_row_on(
        &self,
        i: usize,
        table: &str,
        pk: &[u8],
    ) -> (String, Result<u64, String>) {
        let mut tm = self.node(i).tm().await;
        let mut rm = self.node(i).rm().await;
        let x = crate::begin(&mut tm).await;
        let r = register(&mut rm, &x, "db1", vec![key(table, &[pk])])
            .await
            .unwrap();
        (x, r)
    }

    /// `n` transactions begun and decided at member `i`, every fourth rolled back:
    /// (xid, "commit" or "rollback").
    async fn decide_some(&self, i: usize, n: usize) -> Vec<(String, &'static str)> {
        let mut decided = Vec::new();
        for k in 0..n {
            let x = self.node(i).begin(60_000).await;
            let what = if k % 4 == 3 { "rollback" } else { "commit" };
            let (st, v) = self.node(i).decide(&x, what).await;
            assert_eq!(st, 200, "{what} {x}: {v}");
            decided.push((x, what));
        }
        decided
    }

    /// Waits until every member has applied what member `i` has applied now.
    async fn all_applied(&self, i: usize) {
        let target = Cluster::health(self.node(i).http).await.unwrap()["last_applied"].as_u64();
        eventually(
            "every member applied everything",
            Duration::from_secs(15),
            || async {
                let mut all = true;
                for n in &self.nodes {
                    all &= Cluster::health(n.http)
                        .await
                        .is_some_and(|h| h["last_applied"].as_u64() >= target);
                }
                all
            },
        )
        .await;
    }

    /// Each transaction of [`Cluster::decide_some`] reads as it was decided.
    async fn assert_decided(&self, decided: &[(String, &str)]) {
        for (x, what) in decided {
            let want = if *what == "commit" {
                "committed"
            } else {
                "rolled_back"
            };
            assert_eq!(self.status(x).await, want, "after the cut: {x}");
        }
    }

    /// The transaction's status as the cluster's leader answers it. A member that cannot
    /// confirm it still leads (it lost an election, or no quorum answered its read in
    /// time, as on a starved machine) answers 503 rather than something stale; then ask
    /// whoever leads next. Any other answer (a 404 above all: an acknowledged commit
    /// lost) is returned as is.
    async fn status(&self, xid: &str) -> String {
        let start = Instant::now();
        loop {
            let l = match self.asked.get() {
                Some(l) if self.nodes[l].proc.is_some() => l,
                _ => self.leader(Duration::from_secs(15)).await,
            };
            let (st, s) = status_on(self.node(l), xid).await;
            if st != 503 || start.elapsed() > Duration::from_secs(20) {
                self.asked.set(Some(l));
                return s;
            }
            eprintln!(
                "{xid} on node {}: {s}; asking the leader again",
                self.nodes[l].id
            );
            self.asked.set(None);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t60_three_nodes_survive_leader_kills_and_full_restart() {
    let mut cl = Cluster::start(TempDir::new("cluster")).await;
    let l = cl.leader(Duration::from_secs(15)).await;
    let leader_http = cl.nodes[l].http.to_string();
    let leader_grpc = cl.nodes[l].grpc.to_string();

    // Followers send clients to the leader: HTTP 503 with its addresses, gRPC
    // UNAVAILABLE with `rewind-leader`.
    let f = (l + 1) % 3;
    let (st, v) = cl.node(f).http("POST", "/api/v1/transactions", None).await;
    assert_eq!(st, 503, "{v}");
    assert_eq!(v["error"], "not_leader");
    assert_eq!(v["leader_http"], leader_http.as_str());
    let err = cl
        .node(f)
        .tm()
        .await
        .begin(BeginRequest {
            name: "x".into(),
            timeout_ms: 60_000,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert_eq!(
        err.metadata()
            .get("rewind-leader")
            .and_then(|v| v.to_str().ok()),
        Some(leader_grpc.as_str())
    );

    // A transaction holding a lock, and acknowledged commits.
    let (holder, r) = cl.lock_row_on(l, b"7").await;
    r.expect("lock granted");
    let mut committed: Vec<String> = Vec::new();

    for round in 0..2 {
        let l = cl.leader(Duration::from_secs(15)).await;
        // Load on the leader while it is killed: every acknowledged commit must survive.
        let addr = cl.node(l).http;
        let load = tokio::spawn(async move {
            let mut acked = Vec::new();
            let until = Instant::now() + Duration::from_millis(1500);
            while Instant::now() < until {
                let Ok((200, v)) = http(addr, "POST", "/api/v1/transactions", None).await else {
                    break;
                };
                let x = v["xid"].as_str().unwrap().to_string();
                match http(
                    addr,
                    "POST",
                    &format!("/api/v1/transactions/{x}/commit"),
                    None,
                )
                .await
                {
                    Ok((200, _)) => acked.push(x),
                    _ => break,
                }
            }
            acked
        });
        tokio::time::sleep(Duration::from_millis(700)).await;
        let killed_at = Instant::now();
        cl.kill(l);
        let acked = load.await.unwrap();
        assert!(
            !acked.is_empty(),
            "round {round}: the leader served before it died"
        );
        committed.extend(acked);

        // A new leader takes over and serves.
        let nl = cl.leader(Duration::from_secs(15)).await;
        assert_ne!(nl, l);
        eventually(
            "the new leader serves begin",
            Duration::from_secs(10),
            || async {
                matches!(
                    http(cl.node(nl).http, "POST", "/api/v1/transactions", None).await,
                    Ok((200, _))
                )
            },
        )
        .await;
        eprintln!(
            "round {round}: node {} -> node {} serving after {:?}",
            cl.nodes[l].id,
            cl.nodes[nl].id,
            killed_at.elapsed()
        );

        // Nothing acknowledged is lost; the lock is still held and not granted twice.
        for x in &committed {
            assert_eq!(cl.status(x).await, "committed", "round {round}: {x}");
        }
        assert_eq!(cl.status(&holder).await, "begin");
        // Whoever leads now (on a starved machine the two members left may have held
        // another election meanwhile).
        let nl = cl.leader(Duration::from_secs(15)).await;
        let (_, r) = cl.lock_row_on(nl, b"7").await;
        assert_eq!(
            r,
            Err(holder.clone()),
            "round {round}: the lock is not granted twice"
        );
        let (_, locks) = cl.node(nl).http("GET", "/api/v1/locks", None).await;
        let held: Vec<_> = locks
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["table"] == "acct")
            .collect();
        assert_eq!(held.len(), 1, "{locks}");
        assert_eq!(held[0]["xid"], holder.as_str());

        // The killed node comes back and catches up as a follower.
        cl.up(l).await;
        let target = Cluster::health(cl.node(nl).http).await.unwrap()["last_applied"].as_u64();
        eventually(
            "the restarted node catches up",
            Duration::from_secs(15),
            || async {
                let h = Cluster::health(cl.nodes[l].http).await;
                h.is_some_and(|h| h["role"] == "follower" && h["last_applied"].as_u64() >= target)
            },
        )
        .await;
    }

    // Everything down (kill -9), everything up: the same state.
    for i in 0..3 {
        cl.kill(i);
    }
    for i in 0..3 {
        cl.up(i).await;
    }
    let l = cl.leader(Duration::from_secs(20)).await;
    for x in &committed {
        assert_eq!(cl.status(x).await, "committed", "after restart: {x}");
    }
    assert_eq!(cl.status(&holder).await, "begin");
    let (_, locks) = cl.node(l).http("GET", "/api/v1/locks", None).await;
    assert!(
        locks
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["xid"] == holder.as_str()),
        "{locks}"
    );
    // And it still decides: the holder rolls back (no branch proxy: it retries, the
    // decision is durable) and a new transaction commits.
    let (st, v) = cl
        .node(l)
        .http(
            "POST",
            &format!("/api/v1/transactions/{holder}/rollback"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = cl.node(l).http("POST", "/api/v1/transactions", None).await;
    assert_eq!(st, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t61_a_partitioned_old_leader_cannot_commit_or_grant_a_lock() {
    let cl = Cluster::start(TempDir::new("partition")).await;
    let old = cl.leader(Duration::from_secs(15)).await;
    let (mut tm, mut rm) = (cl.node(old).tm().await, cl.node(old).rm().await);
    let x1 = crate::begin(&mut tm).await;

    // Cut the leader off. The majority elects a new leader; the old one is left alone.
    cl.isolate(Some(old));
    let new = {
        let start = Instant::now();
        loop {
            let mut found = None;
            for (i, n) in cl.nodes.iter().enumerate() {
                if i != old {
                    if let Some(h) = Cluster::health(n.http).await {
                        if h["role"] == "leader" {
                            found = Some(i);
                        }
                    }
                }
            }
            if let Some(i) = found {
                break i;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "the majority elected no leader"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };

    // The old leader can neither commit a decision nor grant a lock nor answer a lock
    // query: each is refused (not leader / undetermined), never acknowledged.
    let (st, v) = cl
        .node(old)
        .http("POST", "/api/v1/transactions", None)
        .await;
    assert_ne!(st, 200, "a cut-off node must not begin: {v}");
    let r = register(&mut rm, &x1, "db1", vec![key("acct", &[b"1"])]).await;
    assert!(r.is_err(), "a cut-off node must not grant a lock: {r:?}");
    let (st, v) = cl.node(old).http("GET", "/api/v1/locks", None).await;
    assert_eq!(st, 503, "no lock answer from a cut-off node: {v}");

    // The majority grants the same lock to another transaction.
    let (mut tm2, mut rm2) = (cl.node(new).tm().await, cl.node(new).rm().await);
    let x2 = crate::begin(&mut tm2).await;
    assert!(matches!(
        register(&mut rm2, &x2, "db1", vec![key("acct", &[b"1"])]).await,
        Ok(Ok(_))
    ));

    // Healed: the old leader follows, and the lock is held exactly once, by x2; x1
    // (begun before the cut, never granted anything) has no branch.
    cl.isolate(None);
    eventually(
        "the old leader follows again",
        Duration::from_secs(15),
        || async {
            Cluster::health(cl.nodes[old].http)
                .await
                .is_some_and(|h| h["role"] == "follower")
        },
    )
    .await;
    let l = cl.leader(Duration::from_secs(15)).await;
    let (_, locks) = cl.node(l).http("GET", "/api/v1/locks", None).await;
    let held: Vec<_> = locks
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["table"] == "acct")
        .collect();
    assert_eq!(held.len(), 1, "{locks}");
    assert_eq!(held[0]["xid"], x2.as_str());
    let (_, t1) = cl
        .node(l)
        .http("GET", &format!("/api/v1/transactions/{x1}"), None)
        .await;
    assert_eq!(t1["branches"], serde_json::json!([]), "{t1}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t62_snapshots_bound_the_log_and_catch_up_a_lagging_node() {
    let dir = TempDir::new("snapshot");
    let cfg = dir.0.join("c.toml");
    std::fs::write(&cfg, "[cluster]\nsnapshot_every_entries = 100\n").unwrap();
    let cfg = cfg.display().to_string();
    let mut cl = Cluster::start_with(dir, &["--config", &cfg]).await;
    let l = cl.leader(Duration::from_secs(15)).await;
    // A follower is down while the log grows well past a snapshot and is purged.
    let down = (l + 1) % 3;
    cl.kill(down);
    let mut xids = Vec::new();
    for _ in 0..300 {
        let (st, v) = cl.node(l).http("POST", "/api/v1/transactions", None).await;
        assert_eq!(st, 200, "{v}");
        xids.push(v["xid"].as_str().unwrap().to_string());
    }
    eventually(
        "a snapshot is taken and the log purged",
        Duration::from_secs(15),
        || async {
            let h = Cluster::health(cl.node(l).http).await.unwrap();
            h["snapshot"].as_u64().unwrap_or(0) >= 100
                && h["log_entries"].as_u64().unwrap_or(u64::MAX) < 150
        },
    )
    .await;
    // The lagging node comes back: the purged part reaches it as a snapshot.
    cl.up(down).await;
    let target = Cluster::health(cl.node(l).http).await.unwrap()["last_applied"].as_u64();
    eventually(
        "the lagging node catches up",
        Duration::from_secs(20),
        || async {
            Cluster::health(cl.nodes[down].http).await.is_some_and(|h| {
                h["last_applied"].as_u64() >= target && h["snapshot"].as_u64().unwrap_or(0) >= 100
            })
        },
    )
    .await;
    // It now holds the same state: make it the leader by stopping the others one by
    // one is not needed; stop the current leader and check from whoever leads next.
    cl.kill(l);
    cl.leader(Duration::from_secs(15)).await;
    for x in xids.iter().step_by(37) {
        assert_eq!(cl.status(x).await, "begin", "{x}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t63_members_are_added_and_removed_through_the_admin_api() {
    let mut cl = Cluster::start(TempDir::new("members")).await;
    let l = cl.leader(Duration::from_secs(15)).await;
    // Idle (no unfinished transaction): time passes without log entries.
    let index = |h: Option<serde_json::Value>| h.and_then(|h| h["last_log_index"].as_u64());
    let before = index(Cluster::health(cl.node(l).http).await);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        index(Cluster::health(cl.node(l).http).await),
        before,
        "an idle cluster logs nothing"
    );
    // A fourth node, started knowing the cluster, waits to be added.
    cl.nodes.push(Node {
        id: 4,
        grpc: free_addr(),
        http: free_addr(),
        proc: None,
    });
    cl.peers = voters(&cl.nodes);
    cl.up(3).await;
    let (g4, h4) = (cl.nodes[3].grpc.to_string(), cl.nodes[3].http.to_string());
    let body = format!(r#"{{"node_id": 4, "grpc": "{g4}", "http": "{h4}"}}"#);

    // Only an operator may change membership.
    let (st, _) = cl
        .node(l)
        .http("POST", "/api/v1/cluster/members", Some(body.as_bytes()))
        .await;
    assert_eq!(st, 401);
    let (st, v) = cl
        .node(l)
        .operator("POST", "/api/v1/cluster/members", Some(body.as_bytes()))
        .await;
    assert_eq!(st, 200, "{v}");
    let voters = |v: &serde_json::Value| {
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["voter"] == true)
            .map(|m| m["node_id"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(voters(&v), vec![1, 2, 3, 4], "{v}");
    // The new member has the state and follows.
    let (st, x) = cl.node(l).http("POST", "/api/v1/transactions", None).await;
    assert_eq!(st, 200);
    let target = Cluster::health(cl.node(l).http).await.unwrap()["last_applied"].as_u64();
    eventually(
        "the new member catches up",
        Duration::from_secs(15),
        || async {
            Cluster::health(cl.nodes[3].http)
                .await
                .is_some_and(|h| h["role"] == "follower" && h["last_applied"].as_u64() >= target)
        },
    )
    .await;

    // Removed again: three voters, and the cluster still decides.
    let (st, v) = cl
        .node(l)
        .operator("DELETE", "/api/v1/cluster/members/4", None)
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(voters(&v), vec![1, 2, 3], "{v}");
    cl.kill(3);
    let xid = x["xid"].as_str().unwrap();
    let (st, v) = cl
        .node(l)
        .http("POST", &format!("/api/v1/transactions/{xid}/commit"), None)
        .await;
    assert_eq!((st, v["status"].as_str()), (200, Some("committed")), "{v}");
    // The audit log names both changes.
    let (_, audit) = cl.node(l).operator("GET", "/api/v1/audit", None).await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["action"].as_str())
        .collect();
    assert!(
        actions.contains(&"cluster add member") && actions.contains(&"cluster remove member"),
        "{audit}"
    );
}

/// Every member's state machine writes its applied batches without a sync: the Raft log
/// holds what they did. Model a power cut that loses all of them on every member at
/// once (kill -9, then every store write-ahead record zeroed; nothing was purged from
/// the Raft log, so nothing in the store was ever synced): the members come back from
/// their Raft logs with every acknowledged decision, the held lock and the counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t64_state_machine_writes_lost_in_a_power_cut_are_replayed_from_the_raft_log() {
    let mut cl = Cluster::start(TempDir::new("powercut")).await;
    let l = cl.leader(Duration::from_secs(15)).await;
    let (holder, r) = cl.lock_row_on(l, b"9").await;
    r.expect("lock granted");
    let decided = cl.decide_some(l, 40).await;
    // Every member has applied everything before the cut.
    cl.all_applied(l).await;

    for i in 0..3 {
        cl.kill(i);
    }
    for n in &cl.nodes {
        let wal = cl
            .dir
            .0
            .join(format!("node{}", n.id))
            .join("coordinator.wal");
        let before = std::fs::read(&wal).expect("the store's log");
        // Something is lost: the applied batches were written there.
        assert!(
            before.iter().any(|b| *b != 0),
            "{} was never written",
            wal.display()
        );
        std::fs::write(&wal, vec![0u8; before.len()]).unwrap();
    }
    for i in 0..3 {
        cl.up(i).await;
    }
    cl.leader(Duration::from_secs(20)).await;
    cl.assert_decided(&decided).await;
    assert_eq!(cl.status(&holder).await, "begin");
    let l = cl.leader(Duration::from_secs(15)).await;
    let (_, r) = cl.lock_row_on(l, b"9").await;
    assert_eq!(r, Err(holder.clone()), "the lock is not granted twice");
    // New transactions get new XIDs: none issued before the cut comes back.
    let fresh = cl.node(l).begin(60_000).await;
    assert!(
        decided.iter().all(|(x, _)| *x != fresh) && fresh != holder,
        "{fresh} was issued before the cut"
    );
}

/// The store is synced before the Raft log drops entries behind a snapshot, and only
/// then. Model a power cut after purges on every member: kill -9 all three, then zero
/// each member's store log from the offset its last sync covered (a `failpoints` build
/// records it beside the log, in `coordinator.wal.durable`): everything written after
/// it is lost, as unsynced writes are. Each member restarts from its store as of its
/// last purge and replays the rest from its Raft log: every decision, the held lock and
/// the XID counter come back. Had the purge not synced the store first, the store
/// would stand before entries the log no longer holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t65_a_power_cut_after_raft_log_purges_loses_no_decision() {
    let dir = TempDir::new("powercut-purged");
    let cfg = dir.0.join("c.toml");
    std::fs::write(&cfg, "[cluster]\nsnapshot_every_entries = 100\n").unwrap();
    let cfg = cfg.display().to_string();
    let mut cl = Cluster::start_with(dir, &["--config", &cfg]).await;
    let l = cl.leader(Duration::from_secs(15)).await;
    let (holder, r) = cl.lock_row_on(l, b"9").await;
    r.expect("lock granted");
    let mut decided = Vec::new();
    // Decisions until every member has taken a snapshot and purged its log behind it
    // (each decision is two entries: the begin and the decision).
    let purged = |h: &serde_json::Value| {
        h["snapshot"].as_u64().unwrap_or(0) >= 100
            && h["log_entries"].as_u64().unwrap_or(u64::MAX) + 50
                < h["last_log_index"].as_u64().unwrap_or(0)
    };
    let mut rounds = 0;
    loop {
        decided.extend(cl.decide_some(l, 10).await);
        rounds += 1;
        let mut all = true;
        for n in &cl.nodes {
            all &= Cluster::health(n.http).await.is_some_and(|h| purged(&h));
        }
        if all {
            break;
        }
        assert!(
            rounds < 30,
            "no member purged its log after {} decisions",
            decided.len()
        );
    }
    // Then more, applied after the purges' syncs: their writes to each store go
    // unsynced (fewer than the 100 entries to the next snapshot). One holds a lock on a
    // table no other lock is on.
    let (ledger_holder, r) = cl.lock_table_row_on(l, "ledger", b"1").await;
    r.expect("ledger lock granted");
    decided.extend(cl.decide_some(l, 15).await);
    cl.all_applied(l).await;

    for i in 0..3 {
        cl.kill(i);
    }
    for n in &cl.nodes {
        let node = cl.dir.0.join(format!("node{}", n.id));
        let wal = node.join("coordinator.wal");
        let mut bytes = std::fs::read(&wal).expect("the store's log");
        let mark = node.join("coordinator.wal.durable");
        let durable: usize = std::fs::read_to_string(&mark)
            .unwrap_or_else(|e| panic!("{}: {e} (built without failpoints?)", mark.display()))
            .trim()
            .parse()
            .expect("an offset");
        assert!(
            durable <= bytes.len(),
            "{durable} past the end of {}",
            wal.display()
        );
        // Something is lost: the batches applied since the last sync were written there.
        assert!(
            bytes[durable..].iter().any(|b| *b != 0),
            "nothing written to {} after its last sync at {durable}",
            wal.display()
        );
        bytes[durable..].fill(0);
        std::fs::write(&wal, bytes).unwrap();
    }
    for i in 0..3 {
        cl.up(i).await;
    }
    let l = cl.leader(Duration::from_secs(20)).await;
    // A proxy attaching to the restarted leader learns every table locked (write
    // isolation), those whose locks it has yet to replay included.
    let proxy = FakeProxy::attach(cl.node(l), &["db1"]).await;
    let first: Vec<String> = proxy
        .seen
        .lock()
        .unwrap()
        .iter()
        .find_map(|m| match &m.kind {
            Some(coordinator_message::Kind::TableLocks(t)) if t.resource_id == "db1" => {
                Some(t.tables.clone())
            }
            _ => None,
        })
        .expect("a write-isolation set for db1");
    assert!(
        first.contains(&"acct".to_string()) && first.contains(&"ledger".to_string()),
        "tables locked on db1 as the restarted leader told a proxy: {first:?}"
    );
    drop(proxy);
    cl.assert_decided(&decided).await;
    assert_eq!(cl.status(&holder).await, "begin");
    assert_eq!(cl.status(&ledger_holder).await, "begin");
    let l = cl.leader(Duration::from_secs(15)).await;
    let (_, r) = cl.lock_row_on(l, b"9").await;
    assert_eq!(r, Err(holder.clone()), "the lock is not granted twice");
    let fresh = cl.node(l).begin(60_000).await;
    assert!(
        decided.iter().all(|(x, _)| *x != fresh) && fresh != holder && fresh != ledger_holder,
        "{fresh} was issued before the cut"
    );
}
