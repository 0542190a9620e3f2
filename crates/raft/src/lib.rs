//! Consensus for atoll: openraft over a redb-backed log and the atoll state machine.
//!
//! openraft stays behind [`Consensus`] so that an upgrade of its API touches this crate only.
#![forbid(unsafe_code)]

mod auth;
mod cluster;
mod consensus;
pub mod feed;
mod forward;
mod group;
mod listener;
mod log_store;
mod network;
mod protocol;
mod replica;
mod rpc;
mod snapshot_file;
mod state_machine;
mod storage;
mod transport;
mod wire;

pub use auth::{ClusterSecret, RpcTls};
pub use cluster::JoinPlan;
pub use consensus::{Consensus, ConsensusConfig};
pub use feed::{FeedClient, FeedEntry, FeedError, FeedFrame, FeedRequest, FeedStream, Resume};
pub use replica::{Replica, ReplicaConfig};
pub use snapshot_file::SnapshotFile;

/// The cluster protocol as a program that is not a node speaks it (the node simulator):
/// the RPC client, the hello through which the servers are learnt, forwarded writes and
/// heartbeats.
pub mod client {
    pub use crate::protocol::{Hello, HEARTBEAT_PATH, HELLO_PATH, WRITE_PATH};
    pub use crate::transport::{Failure, RpcClient, TransportError};
}

use atoll_cluster::Member;
use atoll_state::{Command, Outcome};

openraft::declare_raft_types!(
    /// openraft's type configuration for atoll.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime,
);

#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod feed_tests;
#[cfg(test)]
mod tests;
