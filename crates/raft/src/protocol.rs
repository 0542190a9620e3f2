//! The cluster protocol between nodes: the paths served on the RPC listener and the
//! messages of the requests that are atoll's own (openraft brings its own for the rest).
//! The listener is in `rpc.rs`, the client in `transport.rs`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use atoll_cluster::Member;

type NodeId = u64;

/// Paths of the Raft RPCs, each followed by `/` and the Raft id the message is for: a node
/// refuses messages meant for another id, so a server that lost its data dir and came back
/// on the same address with a new id is never counted as the old one (its one vote would
/// otherwise count twice).
pub(crate) const APPEND_PATH: &str = "/raft/append";
pub(crate) const VOTE_PATH: &str = "/raft/vote";
pub(crate) const SNAPSHOT_PATH: &str = "/raft/snapshot";

/// [`Hello`] in, [`Hello`] out: how nodes find their cluster.
pub const HELLO_PATH: &str = "/cluster/hello";
/// [`JoinRequest`] in, `Result<(), ClusterError>` out.
pub(crate) const JOIN_PATH: &str = "/cluster/join";
/// A forwarded write: `Command` in, `Result<(Outcome, u64), ClusterError>` out.
pub const WRITE_PATH: &str = "/cluster/write";
/// A read index asked of the leader: `ReadMode` in, `Result<u64, ClusterError>` out.
pub(crate) const READ_INDEX_PATH: &str = "/cluster/read-index";
/// A node's heartbeat forwarded to the leader: its name in, `Result<(), ClusterError>` out.
pub const HEARTBEAT_PATH: &str = "/cluster/heartbeat";
/// A removal forwarded to the leader: a Raft id in, `Result<(), ClusterError>` out.
pub(crate) const REMOVE_PATH: &str = "/cluster/remove";

/// What nodes tell each other while finding their cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// Raft id.
    pub id: NodeId,
    /// The node.
    pub member: Member,
    /// Servers expected before bootstrapping (0 for clients).
    pub bootstrap_expect: usize,
    /// Whether the node already belongs to a cluster.
    pub initialized: bool,
    /// Servers it has heard of.
    pub known: BTreeMap<NodeId, Member>,
}

/// A request to be added to the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// Raft id.
    pub id: NodeId,
    /// The node.
    pub member: Member,
}

/// A compute node's stream of the state (`feed.rs`): [`crate::FeedRequest`] in, a stream of
/// frames out.
pub(crate) const FEED_PATH: &str = "/cluster/feed";
/// A compute node's write, handed to a server that forwards it to the leader:
/// `Command` in, `Result<(Outcome, u64), ClusterError>` out.
pub(crate) const RELAY_WRITE_PATH: &str = "/cluster/relay/write";
/// A compute node's read index, asked of a server that asks the leader: `ReadMode` in,
/// `Result<u64, ClusterError>` out.
pub(crate) const RELAY_READ_INDEX_PATH: &str = "/cluster/relay/read-index";
/// The nodes whose streams a server holds, reported to the leader as alive:
/// `Vec<String>` in, `Result<(), ClusterError>` out.
pub(crate) const LIVENESS_PATH: &str = "/cluster/liveness";
