//! Raft messages between coordinators over the `rewind.v1.Raft` gRPC service, each an
//! openraft request or answer in its serde JSON form ([`RaftPayload`]).
//!
//! Client side ([`Network`]): one lazily connected channel per peer (over TLS when the
//! members serve gRPC with `[tls]`: their certificates checked against the cluster's CA,
//! this member's own shown when asked for), every call bounded
//! by openraft's own deadline; a refused connection is `Unreachable` (openraft backs
//! off), other transport failures are `Network`, and a Raft error the peer answered
//! travels back as data (`RemoteError`). Server side ([`RaftService`]): hands the
//! request to the local [`openraft::Raft`] and answers its result.
//!
//! Only members talk Raft ([`RaftAuth`]): with `cluster.secret` set, every request
//! carries the sender's node id and an HMAC-SHA256, under the secret, of sender,
//! receiver, method and payload; a member answers only a current member (voter or
//! learner) with a valid code, and refuses anything else with `permission_denied`,
//! logged. Messages are bounded by `cluster.max_message_bytes` both ways.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::future::Future;

use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, Snapshot, Vote};
use rewind_protocol::v1::raft_client::RaftClient;
use rewind_protocol::v1::raft_server;
use rewind_protocol::v1::RaftPayload;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::{Member, NodeId, Raft, TypeConfig};

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, Member, RaftError<NodeId, E>>;

pub struct Network {
    pub partition: Option<Arc<Partition>>,
    pub auth: Arc<RaftAuth>,
    /// TLS to the other members (`https://`), when they serve it.
    pub tls: Option<ClientTlsConfig>,
}

/// The header naming the sending member.
const NODE_HEADER: &str = "rewind-raft-node";
/// The header carrying the message's HMAC (hex).
const MAC_HEADER: &str = "rewind-raft-mac";

/// Who may talk Raft to this member, and how this member signs what it sends.
pub struct RaftAuth {
    node_id: NodeId,
    key: Option<ring::hmac::Key>,
    max_message_bytes: usize,
    /// Refusals are logged at most once a second (an open port attracts scanners).
    last_warned: Mutex<Option<Instant>>,
}

impl RaftAuth {
    pub fn new(node_id: NodeId, secret: &str, max_message_bytes: usize) -> RaftAuth {
        if secret.is_empty() {
            tracing::warn!(
                "cluster.secret is not set: any host that reaches the gRPC port can send this \
                 member Raft messages; set the same secret (or REWIND_CLUSTER_SECRET) on every \
                 member"
            );
        }
        RaftAuth {
            node_id,
            key: (!secret.is_empty())
                .then(|| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes())),
            max_message_bytes,
            last_warned: Mutex::new(None),
        }
    }

    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    fn input(from: NodeId, to: NodeId, method: &str, payload: &[u8]) -> Vec<u8> {
        let mut m = format!("rewind-raft/1 {from} {to} {method} ").into_bytes();
        m.extend_from_slice(payload);
        m
    }

    /// Marks `req` (to member `to`) as this member's.
    fn sign(&self, to: NodeId, method: &str, req: &mut tonic::Request<RaftPayload>) {
        let from = self.node_id;
        if let Ok(v) = from.to_string().parse() {
            req.metadata_mut().insert(NODE_HEADER, v);
        }
        if let Some(key) = &self.key {
            let tag = ring::hmac::sign(key, &Self::input(from, to, method, &req.get_ref().json));
            let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            if let Ok(v) = hex.parse() {
                req.metadata_mut().insert(MAC_HEADER, v);
            }
        }
    }

    /// Whether `req` comes from a current member (`is_member`) and, with a secret, is
    /// signed by one; `permission_denied` (logged) otherwise.
    fn verify(
        &self,
        method: &str,
        req: &tonic::Request<RaftPayload>,
        is_member: impl Fn(NodeId) -> bool,
    ) -> Result<(), tonic::Status> {
        let header = |name: &str| {
            req.metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let peer = req
            .remote_addr()
            .map_or_else(|| "unknown".to_string(), |a| a.to_string());
        let refuse = |why: &str| {
            self.warn(&peer, method, why);
            Err(tonic::Status::permission_denied(format!(
                "Raft {method} refused: {why}"
            )))
        };
        let Some(from) = header(NODE_HEADER).and_then(|v| v.parse::<NodeId>().ok()) else {
            return refuse("no sending member named");
        };
        if let Some(key) = &self.key {
            let Some(mac) = header(MAC_HEADER).and_then(|h| unhex(&h)) else {
                return refuse("not signed with the cluster secret");
            };
            let input = Self::input(from, self.node_id, method, &req.get_ref().json);
            if ring::hmac::verify(key, &input, &mac).is_err() {
                return refuse("signature does not match the cluster secret");
            }
        }
        if !is_member(from) {
            return refuse(&format!("node {from} is not a member of this cluster"));
        }
        Ok(())
    }

    fn warn(&self, peer: &str, method: &str, why: &str) {
        let mut last = self.last_warned.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            *last = Some(Instant::now());
            tracing::warn!(%peer, method, reason = why, "refused a Raft message (further refusals within a second are not logged)");
        }
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Peer {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        Peer {
            target,
            url: format!("{scheme}://{}", node.grpc),
            client: None,
            partition: self.partition.clone(),
            auth: self.auth.clone(),
            tls: self.tls.clone(),
        }
    }
}

pub struct Peer {
    target: NodeId,
    url: String,
    client: Option<RaftClient<Channel>>,
    partition: Option<Arc<Partition>>,
    auth: Arc<RaftAuth>,
    tls: Option<ClientTlsConfig>,
}

/// Failpoint for partition tests (like the proxy's `REWIND_FAILPOINTS`): with
/// `REWIND_RAFT_PARTITION_FILE` set, the file lists node ids (whitespace-separated)
/// this node treats as unreachable; it is re-read at most every 50 ms, so a test cuts
/// and heals links while the cluster runs. Compiled in only with the `failpoints` cargo
/// feature (the test command's builds); without it the variable is reported and ignored.
pub struct Partition {
    path: PathBuf,
    cache: Mutex<(Option<Instant>, HashSet<NodeId>)>,
}

impl Partition {
    pub fn from_env() -> Option<Arc<Partition>> {
        let path = std::env::var_os("REWIND_RAFT_PARTITION_FILE")?;
        if !cfg!(feature = "failpoints") {
            tracing::warn!(
                "REWIND_RAFT_PARTITION_FILE is set but this binary was built without the \
                 `failpoints` feature; ignored"
            );
            return None;
        }
        tracing::warn!(file = ?path, "Raft partition failpoint armed (tests only)");
        Some(Arc::new(Partition {
            path: path.into(),
            cache: Mutex::new((None, HashSet::new())),
        }))
    }

    fn blocks(&self, target: NodeId) -> bool {
        let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if c.0
            .is_none_or(|at| at.elapsed() > Duration::from_millis(50))
        {
            c.1 = std::fs::read_to_string(&self.path)
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|t| t.parse().ok())
                .collect();
            c.0 = Some(Instant::now());
        }
        c.1.contains(&target)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Transport(String);

enum Call {
    Append,
    Vote,
    Snapshot,
}

impl Peer {
    async fn call<Req, Resp, E>(
        &mut self,
        call: Call,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        if self
            .partition
            .as_ref()
            .is_some_and(|p| p.blocks(self.target))
        {
            let e = Transport(format!(
                "node {} cut off (partition failpoint)",
                self.target
            ));
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        }
        let json = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if self.client.is_none() {
            let ep = Endpoint::from_shared(self.url.clone())
                .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
            let mut ep = rewind_protocol::liveness::client(ep)
                .connect_timeout(Duration::from_millis(500))
                .tcp_nodelay(true);
            if let Some(tls) = &self.tls {
                ep = ep
                    .tls_config(tls.clone())
                    .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
            }
            let ch = ep
                .connect()
                .await
                .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
            let max = self.auth.max_message_bytes();
            self.client = Some(
                RaftClient::new(ch)
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(max),
            );
        }
        let client = self.client.as_mut().expect("connected");
        let mut request = tonic::Request::new(RaftPayload { json });
        request.set_timeout(ttl);
        let method = match call {
            Call::Append => "append_entries",
            Call::Vote => "vote",
            Call::Snapshot => "install_snapshot",
        };
        self.auth.sign(self.target, method, &mut request);
        let res = match call {
            Call::Append => client.append_entries(request).await,
            Call::Vote => client.vote(request).await,
            Call::Snapshot => client.install_snapshot(request).await,
        };
        let answer = match res {
            Ok(r) => r.into_inner().json,
            Err(status) => {
                // Reconnect next time: the channel may be to a restarted process.
                self.client = None;
                let e = Transport(format!("{}: {}", status.code(), status.message()));
                return Err(match status.code() {
                    tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&e)),
                    _ => RPCError::Network(NetworkError::new(&e)),
                });
            }
        };
        let r: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&answer)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        self.call(Call::Append, &req, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        req: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        self.call(Call::Snapshot, &req, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        req: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        self.call(Call::Vote, &req, option.hard_ttl()).await
    }

    /// A whole snapshot to a member that fell behind the leader's log: calls of
    /// [`SNAPSHOT_CHUNK_BYTES`], each given [`snapshot_call_ttl`] for what it carries.
    ///
    /// Written here rather than left to openraft's default sender because that one
    /// gives every call `install_snapshot_timeout` (200 ms) whatever it carries, gives
    /// up the whole transfer on the first call that takes longer, and starts again
    /// from the first byte. Its last call includes the member installing the whole
    /// snapshot, so a snapshot that took a member longer than that to take in was
    /// never taken in: on this machine a 4.6 MB snapshot (about 18 MB as JSON; open TCC
    /// branches with large payloads) was sent 240 times in 30 s and never installed, and
    /// with the leader then lost the other two members had no quorum (test
    /// `t90_a_member_behind_the_snapshot_catches_up_from_it`). A call that fails is
    /// sent again from where it stood, up to [`SNAPSHOT_CALL_TRIES`] times.
    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let started = Instant::now();
        let meta = snapshot.meta;
        let data = snapshot.snapshot.into_inner();
        let total = data.len();
        let mut cancel = std::pin::pin!(cancel);
        let mut offset = 0;
        let mut failures = 0;
        loop {
            let end = total.min(offset + SNAPSHOT_CHUNK_BYTES);
            let done = end == total;
            let req = InstallSnapshotRequest::<TypeConfig> {
                vote,
                meta: meta.clone(),
                offset: offset as u64,
                data: data[offset..end].to_vec(),
                done,
            };
            // The last call is answered once the member has installed all of it.
            let ttl = snapshot_call_ttl(option.hard_ttl(), if done { total } else { end - offset });
            let sent = tokio::select! {
                closed = &mut cancel => return Err(closed.into()),
                sent = tokio::time::timeout(ttl, self.call::<_, InstallSnapshotResponse<NodeId>, InstallSnapshotError>(Call::Snapshot, &req, ttl)) => sent,
            };
            let err: StreamingError<TypeConfig, Fatal<NodeId>> = match sent {
                Ok(Ok(resp)) => {
                    failures = 0;
                    if resp.vote > vote {
                        return Ok(SnapshotResponse::new(resp.vote));
                    }
                    if done {
                        tracing::info!(target = self.target, bytes = total, ms = started.elapsed().as_millis() as u64,
                            snapshot = %meta.snapshot_id, "snapshot sent and installed");
                        return Ok(SnapshotResponse::new(resp.vote));
                    }
                    offset = end;
                    continue;
                }
                Ok(Err(RPCError::RemoteError(RemoteError {
                    source: RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m)),
                    ..
                }))) => {
                    // The member lost the transfer (restarted, or installed it while
                    // this side timed out): from the start, as a new transfer.
                    tracing::warn!(target = self.target, mismatch = %m, "snapshot transfer sent again from the start");
                    offset = 0;
                    failures = 0;
                    continue;
                }
                Ok(Err(RPCError::RemoteError(RemoteError {
                    target,
                    target_node,
                    source: RaftError::Fatal(fatal),
                }))) => {
                    return Err(RemoteError {
                        target,
                        target_node,
                        source: fatal,
                    }
                    .into())
                }
                Ok(Err(RPCError::PayloadTooLarge(p))) => NetworkError::new(&Transport(format!(
                    "snapshot call refused as too large: {p}"
                )))
                .into(),
                Ok(Err(RPCError::Timeout(e))) => e.into(),
                Ok(Err(RPCError::Unreachable(e))) => e.into(),
                Ok(Err(RPCError::Network(e))) => e.into(),
                Err(_) => openraft::error::Timeout {
                    action: RPCTypes::InstallSnapshot,
                    id: self.auth.node_id,
                    target: self.target,
                    timeout: ttl,
                }
                .into(),
            };
            failures += 1;
            tracing::warn!(target = self.target, offset, bytes = total, failures, error = %err, "a snapshot call failed");
            if failures >= SNAPSHOT_CALL_TRIES {
                return Err(err);
            }
            tokio::time::sleep(Duration::from_millis(100 << failures)).await;
        }
    }
}

/// Bytes of snapshot per InstallSnapshot call (openraft's default is 3 MiB). Each byte
/// travels as a JSON number, about 3.6 bytes on the wire.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// Tries per snapshot call before the transfer is given up (openraft then starts a new
/// one after its back-off).
const SNAPSHOT_CALL_TRIES: u32 = 3;

/// Time given to a snapshot call that carries, or (the last call) installs, `bytes`:
/// 2 s plus 1 s per MiB, and never less than openraft's `install_snapshot_timeout`.
/// Generous on purpose: it only bounds how long a member that stopped answering holds
/// up its own catch-up; a tight figure turns a large snapshot into one never installed.
fn snapshot_call_ttl(floor: Duration, bytes: usize) -> Duration {
    let per_mib = Duration::from_secs(1).mul_f64(bytes as f64 / (1 << 20) as f64);
    floor.max(Duration::from_secs(2) + per_mib)
}

/// The server side: the local Raft answers its peers (members only, see [`RaftAuth`]).
#[derive(Clone)]
pub struct RaftService {
    pub raft: Raft,
    pub auth: Arc<RaftAuth>,
}

impl RaftService {
    fn admit(&self, method: &str, req: &tonic::Request<RaftPayload>) -> Result<(), tonic::Status> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        // A member not initialized yet (a new cluster's, or one being added) knows no
        // membership: the secret alone admits its leader-to-be.
        let unknown = membership.nodes().next().is_none();
        self.auth.verify(method, req, |id| {
            unknown || membership.get_node(&id).is_some()
        })
    }
}

fn decode<T: DeserializeOwned>(p: &RaftPayload) -> Result<T, tonic::Status> {
    serde_json::from_slice(&p.json)
        .map_err(|e| tonic::Status::invalid_argument(format!("undecodable Raft message: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
    serde_json::to_vec(v)
        .map(|json| tonic::Response::new(RaftPayload { json }))
        .map_err(|e| tonic::Status::internal(e.to_string()))
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        req: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        self.admit("append_entries", &req)?;
        let r: AppendEntriesRequest<TypeConfig> = decode(req.get_ref())?;
        encode(&self.raft.append_entries(r).await)
    }

    async fn vote(
        &self,
        req: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        self.admit("vote", &req)?;
        let r: VoteRequest<NodeId> = decode(req.get_ref())?;
        encode(&self.raft.vote(r).await)
    }

    async fn install_snapshot(
        &self,
        req: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        self.admit("install_snapshot", &req)?;
        let r: InstallSnapshotRequest<TypeConfig> = decode(req.get_ref())?;
        encode(&self.raft.install_snapshot(r).await)
    }
}
