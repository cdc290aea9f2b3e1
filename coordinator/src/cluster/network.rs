//! Raft messages between coordinators over the `rewind.v1.Raft` gRPC service, each an
//! openraft request or answer in its serde JSON form ([`RaftPayload`]).
//!
//! Client side ([`Network`]): one lazily connected channel per peer, every call bounded
//! by openraft's own deadline; a refused connection is `Unreachable` (openraft backs
//! off), other transport failures are `Network`, and a Raft error the peer answered
//! travels back as data (`RemoteError`). Server side ([`RaftService`]): hands the
//! request to the local [`openraft::Raft`] and answers its result.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use rewind_protocol::v1::raft_client::RaftClient;
use rewind_protocol::v1::raft_server;
use rewind_protocol::v1::RaftPayload;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use super::{Member, NodeId, Raft, TypeConfig};

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, Member, RaftError<NodeId, E>>;

pub struct Network {
    pub partition: Option<Arc<Partition>>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Peer {
        Peer {
            target,
            url: format!("http://{}", node.grpc),
            client: None,
            partition: self.partition.clone(),
        }
    }
}

pub struct Peer {
    target: NodeId,
    url: String,
    client: Option<RaftClient<Channel>>,
    partition: Option<Arc<Partition>>,
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
                .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?
                .connect_timeout(Duration::from_millis(500))
                .tcp_nodelay(true);
            let ch = ep
                .connect()
                .await
                .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
            self.client = Some(RaftClient::new(ch).max_decoding_message_size(usize::MAX));
        }
        let client = self.client.as_mut().expect("connected");
        let mut request = tonic::Request::new(RaftPayload { json });
        request.set_timeout(ttl);
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
}

/// The server side: the local Raft answers its peers.
#[derive(Clone)]
pub struct RaftService {
    pub raft: Raft,
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
        let r: AppendEntriesRequest<TypeConfig> = decode(req.get_ref())?;
        encode(&self.raft.append_entries(r).await)
    }

    async fn vote(
        &self,
        req: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let r: VoteRequest<NodeId> = decode(req.get_ref())?;
        encode(&self.raft.vote(r).await)
    }

    async fn install_snapshot(
        &self,
        req: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let r: InstallSnapshotRequest<TypeConfig> = decode(req.get_ref())?;
        encode(&self.raft.install_snapshot(r).await)
    }
}
