//! The Raft network: openraft's RPCs as JSON over HTTP to each peer's RPC listener.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::member::Member;
use crate::transport::RpcClient;
use crate::TypeConfig;

type NodeId = u64;

/// Paths of the Raft RPCs on the RPC listener, each followed by `/` and the Raft id the
/// message is for: a node refuses messages meant for another id, so a server that lost its
/// data dir and came back on the same address with a new id is never counted as the old one
/// (its one vote would otherwise count twice).
pub(crate) const APPEND_PATH: &str = "/raft/append";
pub(crate) const VOTE_PATH: &str = "/raft/vote";
pub(crate) const SNAPSHOT_PATH: &str = "/raft/snapshot";

/// Creates a [`PeerClient`] per peer, sharing one HTTP client.
pub(crate) struct Network {
    pub(crate) client: RpcClient,
}

/// The client of one peer.
pub(crate) struct PeerClient {
    client: RpcClient,
    target: NodeId,
    address: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        PeerClient {
            client: self.client.clone(),
            target,
            address: node.rpc_addr.clone(),
        }
    }
}

impl PeerClient {
    async fn send<Req, Resp, E>(
        &self,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let answer: Result<Resp, RaftError<NodeId, E>> = self
            .client
            .call(
                &self.address,
                &format!("{path}/{}", self.target),
                request,
                timeout,
            )
            .await
            .map_err(|e| {
                if e.message.contains("no answer") {
                    RPCError::Network(NetworkError::new(&e))
                } else {
                    RPCError::Unreachable(Unreachable::new(&e))
                }
            })?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.send(APPEND_PATH, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.send(SNAPSHOT_PATH, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.send(VOTE_PATH, &rpc, option.hard_ttl()).await
    }
}
