//! The Raft network: openraft's RPCs as MessagePack over HTTP/2 to each peer's RPC listener.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::protocol::{APPEND_PATH, SNAPSHOT_PATH, VOTE_PATH};
use crate::transport::RpcClient;
use crate::TypeConfig;
use atoll_cluster::Member;

type NodeId = u64;

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
        // A server's certificate is checked for the server name; a compute node's is not.
        PeerClient {
            client: if node.server {
                self.client.clone()
            } else {
                self.client.to_any_node()
            },
            target,
            address: node.rpc_addr.clone(),
        }
    }
}

/// Largest AppendEntries body sent in one RPC when it holds more than one entry. openraft
/// gives the whole RPC one heartbeat interval (100 ms), so a follower that fell behind by
/// many large entries must be sent them a few at a time: a request of tens of megabytes
/// would time out on every retry and the follower would never catch up.
const APPEND_BUDGET: usize = 1024 * 1024;

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
        let payload = crate::wire::encode(request)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e))))?;
        self.send_encoded(path, payload, timeout).await
    }

    async fn send_encoded<Resp, E>(
        &self,
        path: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let answer: Result<Resp, RaftError<NodeId, E>> = self
            .client
            .call_encoded(
                &self.address,
                &format!("{path}/{}", self.target),
                payload,
                timeout,
            )
            .await
            .map_err(|e| {
                // A peer that took too long may be busy and is tried again at once; one that
                // cannot be reached, refuses this node or answers garbage is backed off from.
                if e.timed_out() {
                    RPCError::Network(NetworkError::new(&e))
                } else {
                    RPCError::Unreachable(Unreachable::new(&e))
                }
            })?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// How many of `entries` entries fit in [`APPEND_BUDGET`] when together they encode to
/// `size` bytes, or `None` when the request may go as it is.
fn entries_within_budget(entries: usize, size: usize) -> Option<u64> {
    if entries <= 1 || size <= APPEND_BUDGET {
        return None;
    }
    let fit = (entries as u128 * APPEND_BUDGET as u128 / size as u128) as u64;
    Some(fit.clamp(1, entries as u64 - 1))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let payload = crate::wire::encode(&rpc)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e))))?;
        if let Some(fit) = entries_within_budget(rpc.entries.len(), payload.len()) {
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(fit),
            ));
        }
        self.send_encoded(APPEND_PATH, payload, option.hard_ttl())
            .await
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

#[cfg(test)]
mod tests {
    use super::{entries_within_budget, APPEND_BUDGET};

    #[test]
    fn a_request_within_the_budget_goes_as_it_is() {
        assert_eq!(entries_within_budget(64, APPEND_BUDGET), None);
        assert_eq!(entries_within_budget(0, 0), None);
    }

    #[test]
    fn one_entry_always_goes_however_large() {
        assert_eq!(entries_within_budget(1, 50 * APPEND_BUDGET), None);
    }

    #[test]
    fn an_oversized_request_is_split_in_proportion() {
        assert_eq!(entries_within_budget(8, 4 * APPEND_BUDGET), Some(2));
        assert_eq!(entries_within_budget(8, 100 * APPEND_BUDGET), Some(1));
        assert_eq!(entries_within_budget(8, APPEND_BUDGET + 1), Some(7));
    }
}
