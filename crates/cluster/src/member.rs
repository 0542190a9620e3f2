//! What the Raft membership records about each node.

use serde::{Deserialize, Serialize};

/// A node of the cluster as Raft's membership stores it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Node name (as in the catalog).
    pub name: String,
    /// `IP:PORT` of its Raft/RPC listener.
    pub rpc_addr: String,
    /// `IP:PORT` of its HTTP API.
    pub http_addr: String,
    /// Whether it is a server (voter) rather than a client (learner).
    pub server: bool,
    /// Its datacenter.
    pub datacenter: String,
}
