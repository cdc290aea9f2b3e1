//! Cluster mode: three or more coordinators replicate every decision through Raft
//! (openraft), so losing a node loses nothing acknowledged and no lock is granted twice.
//!
//! # Layout
//! - this file: the Raft type configuration, the replicated payload ([`Batch`]: one
//!   group-committed batch of engine commands with the leader's clock), and
//!   [`Cluster`], the node's handle (role, leader hints, linearizable reads,
//!   membership changes).
//! - [`log_store`]: the Raft log and vote, durable in redb.
//! - [`state_machine`]: the engine + store of a single node, fed from the log.
//! - [`network`]: Raft RPCs between members over gRPC.
//!
//! What runs where: every member applies every batch; only the leader takes requests
//! (others answer `not leader` with the leader's addresses), ticks time, and sends
//! phase-two commands. Reads that decide something (lock queries, status) first confirm
//! leadership with a quorum (read-index), so a deposed leader cannot answer stale.

// openraft's storage traits return its `StorageError` (large) by value; our helpers
// around them return the same type rather than box and unbox at every call.
#![allow(clippy::result_large_err)]

pub mod log_store;
pub mod network;
pub mod state_machine;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::config::ClusterConfig;
use crate::engine::{Effect, Engine, EngineConfig, Reply};
use crate::error::CoordinatorError;
use crate::metrics::Metrics;
use crate::store::{Loaded, Store};

pub type NodeId = u64;

/// A member's addresses, as the Raft membership records them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub grpc: String,
    pub http: String,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "gRPC {} HTTP {}", self.grpc, self.http)
    }
}

/// A member's view of the cluster, as `GET /api/v1/cluster` and `/healthz` show it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ClusterStatus {
    #[schema(value_type = u64)]
    pub node_id: NodeId,
    pub role: Role,
    pub term: u64,
    /// The leader's node id (`null` while none is elected or known).
    #[schema(required = true, value_type = Option<u64>)]
    pub leader: Option<NodeId>,
    #[schema(required = true)]
    pub leader_grpc: Option<String>,
    #[schema(required = true)]
    pub leader_http: Option<String>,
    #[schema(required = true)]
    pub last_log_index: Option<u64>,
    #[schema(required = true)]
    pub last_applied: Option<u64>,
    /// The index the latest snapshot covers.
    #[schema(required = true)]
    pub snapshot: Option<u64>,
    /// Entries in this member's Raft log (not yet compacted into a snapshot).
    pub log_entries: u64,
    pub members: Vec<MemberStatus>,
}

/// This member's Raft role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct MemberStatus {
    #[schema(value_type = u64)]
    pub node_id: NodeId,
    pub grpc: String,
    pub http: String,
    /// A learner (still catching up) is not a voter.
    pub voter: bool,
}

/// One log entry: a batch of commands applied in order at the leader's `now_ms`.
pub use crate::engine::Batch;

/// The results of a batch, in command order. Only the leader's copy is ever read (by
/// the callers waiting on it), so it is never serialized: openraft's bounds ask for
/// serde, and a deserialized one is empty.
#[derive(Debug, Default)]
pub struct BatchReply {
    pub results: Vec<Result<Reply, CoordinatorError>>,
}

impl Serialize for BatchReply {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

impl<'de> Deserialize<'de> for BatchReply {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <()>::deserialize(d)?;
        Ok(BatchReply::default())
    }
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Batch,
        R = BatchReply,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;

/// How long a proposal may wait for a quorum before the caller hears `undetermined`.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a read waits for a quorum to confirm this node still leads.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Log entries per AppendEntries call to one follower (openraft's default: 300). Only a
/// follower catching up gets full calls; one in step gets what arrived since the last.
const MAX_PAYLOAD_ENTRIES: u64 = 32;

/// This node's view of the cluster.
pub struct Cluster {
    pub raft: Raft,
    pub node_id: NodeId,
    /// Whether this node leads, from the Raft metrics (read on every request).
    leader: Arc<AtomicBool>,
    pub log: log_store::LogStore,
    /// Who may talk Raft to this member (the server side of [`network`] checks it).
    pub auth: Arc<network::RaftAuth>,
    /// Set once a batch this process proposed has been applied here: everything
    /// acknowledged before the process started is applied by then (see
    /// [`Cluster::linearizable`]).
    caught_up: AtomicBool,
    /// Serializes the first reads' catch-up write.
    catching_up: tokio::sync::Mutex<()>,
}

/// What [`open`] hands the rest of the coordinator.
pub struct Opened {
    pub cluster: Arc<Cluster>,
    pub engine: Arc<Mutex<Engine>>,
    pub store: Arc<Store>,
    pub applied: watch::Receiver<u64>,
}

/// Opens this node's state and log and starts its Raft. `store`/`loaded` are the node's
/// durable state machine as [`Store::open`] left it.
#[allow(clippy::too_many_arguments)]
pub async fn open(
    cfg: &ClusterConfig,
    data_dir: &Path,
    engine_cfg: EngineConfig,
    store: Store,
    loaded: Loaded,
    effects: mpsc::UnboundedSender<Effect>,
    metrics: Arc<Metrics>,
    tls: Option<tonic::transport::ClientTlsConfig>,
    wal_bytes: u64,
) -> Result<Opened, CoordinatorError> {
    let applied_pos: state_machine::Applied = match &loaded.raft {
        Some(b) => serde_json::from_slice(b)
            .map_err(|e| CoordinatorError::Storage(format!("raft position in the store: {e}")))?,
        None => Default::default(),
    };
    let mut engine = Engine::restore(
        engine_cfg.clone(),
        loaded.counters,
        loaded.active,
        loaded.conflicts,
    );
    engine.restore_audit(loaded.audit);
    engine.restore_messages(loaded.messages);
    let engine = Arc::new(Mutex::new(engine));
    let store = Arc::new(store);
    let (applied_tx, applied) = watch::channel(0);
    let leader = Arc::new(AtomicBool::new(false));
    let sm = state_machine::StateMachine::new(
        engine.clone(),
        store.clone(),
        engine_cfg,
        applied_pos,
        applied_tx,
        effects,
        leader.clone(),
        metrics,
        data_dir,
    );
    let mut log =
        log_store::LogStore::open(data_dir, wal_bytes).map_err(CoordinatorError::Storage)?;
    {
        // The state machine's writes are not synced (see `state_machine`'s doc).
        let store = store.clone();
        log.sync_before_purge(Arc::new(move || store.sync().map_err(|e| e.to_string())));
    }
    let auth = Arc::new(network::RaftAuth::new(
        cfg.node_id,
        &cfg.secret,
        cfg.max_message_bytes,
    ));
    let raft_cfg = openraft::Config {
        cluster_name: "rewind".into(),
        heartbeat_interval: cfg.heartbeat_ms,
        election_timeout_min: cfg.election_timeout_min_ms,
        election_timeout_max: cfg.election_timeout_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_every_entries),
        // Keep some entries behind the snapshot so a briefly lagging follower catches
        // up from the log rather than by a whole snapshot.
        max_in_snapshot_log_to_keep: cfg.snapshot_every_entries / 10,
        // openraft gives every AppendEntries call `heartbeat_interval` (100 ms) to be
        // answered, whatever it carries. Its default of 300 entries per call (each entry a
        // batch of requests) took longer than that for a follower that had fallen behind
        // under load, so the same call timed out and was sent again forever: after a
        // kill -9 of the leader, the new leader had no quorum until the old one came back
        // (bench/coordinator-cluster on 2 cores: no commit within 30 s in five of six
        // failovers). The log store also bounds a call's bytes (`PAYLOAD_BYTES`).
        max_payload_entries: MAX_PAYLOAD_ENTRIES,
        ..Default::default()
    }
    .validate()
    .map_err(|e| CoordinatorError::InvalidArgument(format!("cluster settings: {e}")))?;
    let raft = Raft::new(
        cfg.node_id,
        Arc::new(raft_cfg),
        network::Network {
            partition: network::Partition::from_env(),
            auth: auth.clone(),
            tls,
        },
        log.clone(),
        sm,
    )
    .await
    .map_err(|e| CoordinatorError::Storage(format!("starting Raft: {e}")))?;

    // An empty cluster is seeded with the configured members by the member with the
    // lowest id alone: a second seeder would start an election of its own and unseat a
    // leader the others already follow. The rest wait to hear from the leader.
    let members: BTreeMap<NodeId, Member> = cfg
        .members
        .iter()
        .map(|m| {
            (
                m.id,
                Member {
                    grpc: m.grpc.clone(),
                    http: m.http.clone(),
                },
            )
        })
        .collect();
    let seeder = cfg.members.iter().map(|m| m.id).min() == Some(cfg.node_id);
    if seeder && !raft.is_initialized().await.unwrap_or(true) {
        match raft.initialize(members).await {
            Ok(()) => tracing::info!(node = cfg.node_id, "cluster initialized"),
            Err(e) => tracing::debug!(%e, "cluster already initialized elsewhere"),
        }
    }

    // Track the role: only a leader takes requests and acts on effects.
    {
        let mut m = raft.metrics();
        let leader = leader.clone();
        let id = cfg.node_id;
        tokio::spawn(async move {
            loop {
                let (is, term, lead) = {
                    let v = m.borrow_and_update();
                    (
                        v.state == ServerState::Leader,
                        v.current_term,
                        v.current_leader,
                    )
                };
                if leader.swap(is, Ordering::AcqRel) != is {
                    tracing::info!(node = id, term, leader = ?lead, "role: {}", if is { "leader" } else { "follower" });
                }
                if m.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    Ok(Opened {
        cluster: Arc::new(Cluster {
            raft,
            node_id: cfg.node_id,
            leader,
            log,
            auth,
            caught_up: AtomicBool::new(false),
            catching_up: tokio::sync::Mutex::new(()),
        }),
        engine,
        store,
        applied,
    })
}

impl Cluster {
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Acquire)
    }

    /// Returns once this node does not lead (at once if it does not now): from Raft's
    /// own view, not the role flag, which another task updates a moment later.
    pub async fn lost_leadership(&self) {
        let mut m = self.raft.metrics();
        loop {
            if m.borrow_and_update().state != ServerState::Leader {
                return;
            }
            if m.changed().await.is_err() {
                return; // Raft stopped: nothing leads here any more
            }
        }
    }

    /// The error a non-leader answers, with the leader's addresses when known.
    pub fn not_leader(&self) -> CoordinatorError {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let node = m
            .current_leader
            .and_then(|l| m.membership_config.membership().get_node(&l).cloned());
        CoordinatorError::NotLeader {
            grpc: node.as_ref().map(|n| n.grpc.clone()),
            http: node.map(|n| n.http),
        }
    }

    /// Ok when this node leads now (confirmed by a quorum) and has applied everything
    /// committed before this call: reads after it are linearizable.
    ///
    /// openraft's read index is the later of the commit position it knows and the first
    /// entry of the leader's term. A leader restarted with its vote still standing keeps
    /// its term, so that first entry may be long applied, and the commit position it
    /// restarts with may be stale (the log store writes it at checkpoints only); after a
    /// machine crash its state machine may also stand behind entries it acknowledged
    /// (its writes of applied entries are unsynced; the Raft log replays them once they
    /// are known committed again). Reads would then miss acknowledged decisions until
    /// the next commit. So until a batch this process proposed has been applied here
    /// (which implies every earlier entry applied), the first read proposes an empty one
    /// and waits for it: what Raft asks of a new leader before it serves reads.
    pub async fn linearizable(&self) -> Result<(), CoordinatorError> {
        if !self.caught_up.load(Ordering::Acquire) {
            // One write for all the reads waiting meanwhile; each read waits at most
            // READ_TIMEOUT for it, queueing included (the guard goes with a timed-out wait).
            let catch_up = async {
                let _one = self.catching_up.lock().await;
                if self.caught_up.load(Ordering::Acquire) {
                    return Ok(());
                }
                let empty = crate::engine::Batch {
                    now_ms: crate::sequencer::now_ms(),
                    xid_base: crate::engine::random_xid_base(),
                    commands: Vec::new(),
                };
                self.write(empty).await.map(drop)
            };
            match tokio::time::timeout(READ_TIMEOUT, catch_up).await {
                Ok(Ok(())) => {}
                Ok(Err(e @ CoordinatorError::NotLeader { .. })) => return Err(e),
                // Not applied in time: answer nothing rather than something stale.
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "catching up before the first read");
                    return Err(self.not_leader());
                }
                Err(_) => return Err(self.not_leader()),
            }
        }
        match tokio::time::timeout(READ_TIMEOUT, self.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => Ok(()),
            // No quorum confirmed us in time (a partitioned or deposed leader): answer
            // nothing rather than something stale.
            Err(_) | Ok(Err(RaftError::APIError(_))) => Err(self.not_leader()),
            Ok(Err(RaftError::Fatal(e))) => Err(CoordinatorError::Storage(e.to_string())),
        }
    }

    /// Proposes one batch and waits for its results (committed and applied here).
    pub async fn write(&self, batch: Batch) -> Result<BatchReply, CoordinatorError> {
        let r = match tokio::time::timeout(WRITE_TIMEOUT, self.raft.client_write(batch)).await {
            Ok(r) => r,
            Err(_) => {
                return Err(CoordinatorError::Undetermined(format!(
                    "no quorum acknowledged within {} s (this node may be cut off from the \
                     cluster); the request may still be applied: read its status",
                    WRITE_TIMEOUT.as_secs()
                )))
            }
        };
        match r {
            Ok(r) => {
                self.caught_up.store(true, Ordering::Release);
                Ok(r.data)
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(self.not_leader())
            }
            Err(RaftError::APIError(e)) => Err(CoordinatorError::Undetermined(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(CoordinatorError::Undetermined(e.to_string())),
        }
    }

    /// `/healthz` and the cluster API: role, term, leader, members and log state.
    pub fn describe(&self) -> ClusterStatus {
        // Read before borrowing the metrics: the borrow holds the watch's lock.
        let log_entries = self.log.entries();
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let role = match m.state {
            ServerState::Leader => Role::Leader,
            ServerState::Follower => Role::Follower,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::Shutdown,
        };
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, n)| MemberStatus {
                node_id: *id,
                grpc: n.grpc.clone(),
                http: n.http.clone(),
                voter: voters.contains(id),
            })
            .collect();
        let leader = m
            .current_leader
            .and_then(|l| membership.get_node(&l).map(|n| (l, n.clone())));
        ClusterStatus {
            node_id: self.node_id,
            role,
            term: m.current_term,
            leader: leader.as_ref().map(|(l, _)| *l),
            leader_grpc: leader.as_ref().map(|(_, n)| n.grpc.clone()),
            leader_http: leader.as_ref().map(|(_, n)| n.http.clone()),
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            snapshot: m.snapshot.map(|l| l.index),
            log_entries,
            members,
        }
    }

    fn voters(&self) -> BTreeSet<NodeId> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// Adds a member: first as a learner (it catches up), then as a voter.
    pub async fn add_member(&self, id: NodeId, node: Member) -> Result<(), CoordinatorError> {
        self.raft
            .add_learner(id, node, true)
            .await
            .map_err(|e| self.membership_error(e))?;
        let mut voters = self.voters();
        voters.insert(id);
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(|e| self.membership_error(e))?;
        Ok(())
    }

    /// Removes a member from the voters and the cluster.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), CoordinatorError> {
        let mut voters = self.voters();
        if !voters.remove(&id) {
            return Err(CoordinatorError::InvalidArgument(format!(
                "node {id} is not a voting member"
            )));
        }
        if voters.is_empty() {
            return Err(CoordinatorError::InvalidArgument(
                "cannot remove the last member".into(),
            ));
        }
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(|e| self.membership_error(e))?;
        Ok(())
    }

    fn membership_error(
        &self,
        e: RaftError<NodeId, ClientWriteError<NodeId, Member>>,
    ) -> CoordinatorError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => self.not_leader(),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
                CoordinatorError::InvalidArgument(c.to_string())
            }
            other => CoordinatorError::Undetermined(other.to_string()),
        }
    }
}
