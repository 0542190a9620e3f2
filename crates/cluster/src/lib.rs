//! The seam between the edges (HTTP API, DNS, the agent, the workload loops, the CLI) and
//! the replicated state.
//!
//! The edges see the cluster only through [`Cluster`]: write a command, read a view of the
//! state ([`Store`]), make a read fresh ([`ReadMode`]), subscribe to what changed, and the
//! membership. The Raft-backed server implements it (`atoll-raft`); [`MemoryCluster`] is a
//! single-node implementation without Raft or storage, for tests of the edges.
#![forbid(unsafe_code)]

mod coordinate;
mod federation;
mod lan;
mod member;
mod memory;
mod store;
mod waiters;

pub use coordinate::{
    Coordinate, Vivaldi, VivaldiConfig, VivaldiError, DIMENSIONS, MAX_RTT_SECONDS,
};
pub use federation::{
    Alone, DatacenterCoordinates, Federation, KeyringAnswer, KeyringOperation, MemberStatus,
    PoolMember, Relay, Route, KEYRING_NEEDS_WAN,
};
pub use lan::{statuses, LanMembers, LanPool};
pub use member::{node_uuid, Member};
pub use memory::MemoryCluster;
pub use store::{Applied, Store};
pub use waiters::{Waiter, Watch};

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use atoll_state::{Command, Outcome, Table};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Why the cluster could not do what was asked.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize, PartialEq, Eq)]
pub enum ClusterError {
    /// No leader is known (election in progress, or quorum lost).
    #[error("No cluster leader")]
    NoLeader,
    /// This node is not the leader.
    #[error("not the leader; the leader is {0}")]
    NotLeader(String),
    /// The write was sent but not confirmed in time; it may or may not be applied.
    #[error("timed out waiting for the write to commit (no quorum?); it may still be applied")]
    Timeout,
    /// A membership request was refused.
    #[error("{0}")]
    Refused(String),
    /// The storage failed; the node cannot continue safely.
    #[error("storage failure: {0}")]
    Storage(String),
    /// The leader's data dir is short of free space; nothing was proposed.
    #[error("{0}")]
    InsufficientStorage(String),
    /// Raft stopped or a peer failed.
    #[error("consensus failure: {0}")]
    Stopped(String),
}

/// Read consistency, as Consul's query modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadMode {
    /// The leader's applied state, without confirming leadership.
    Default,
    /// Confirmed with a quorum first (linearizable).
    Consistent,
}

/// A result the cluster delivers later.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = Result<T, ClusterError>> + Send + 'a>>;

/// A shared handle on the cluster, as the edges hold it.
pub type ClusterHandle = Arc<dyn Cluster>;

/// What the edges may ask of the cluster.
pub trait Cluster: Send + Sync + 'static {
    /// The local view of the replicated state and its watches.
    fn store(&self) -> &Store;

    /// Commits a command and waits until it is applied locally, so the caller reads its own
    /// write. Returns the outcome and the entry's index.
    fn write(&self, command: Command) -> Pending<'_, (Outcome, u64)>;

    /// Makes the local state at least as new as the leader's (`Default`) or confirmed by a
    /// quorum (`Consistent`) before a read.
    fn linearize(&self, mode: ReadMode) -> Pending<'_, ()>;

    /// This node's id in the membership.
    fn node_id(&self) -> u64;

    /// This node as the membership records it.
    fn member(&self) -> &Member;

    /// The leader as the membership records it, if one is known.
    fn leader_member(&self) -> Option<Member>;

    /// Whether this node is the leader.
    fn is_leader(&self) -> bool;

    /// Milliseconds since this node last heard from the leader (0 on the leader).
    fn last_contact_ms(&self) -> u64;

    /// Every node in the membership: id, record, and whether it votes.
    fn members(&self) -> Vec<(u64, Member, bool)>;

    /// Leader only: gives up leadership so that another voter can be elected (Marathon's
    /// `DELETE /v2/leader`). Returns once the step-down has begun; a cluster of one node
    /// elects the same node again.
    fn step_down(&self) -> Pending<'_, ()>;

    /// Removes a node from the membership (leader only).
    fn remove_member(&self, id: u64) -> Pending<'_, ()>;

    /// Records that `node` is alive (delivered to the leader).
    fn heartbeat<'a>(&'a self, node: &'a str) -> Pending<'a, ()>;

    /// Leader only: when each node last sent a heartbeat.
    fn liveness(&self) -> HashMap<String, Instant>;

    /// What this node's data dir holds, for operators (`None`: the cluster keeps nothing on
    /// disk). Reads the database, so it is asked for off the async threads.
    fn storage_report(&self) -> Pending<'_, Option<StorageReport>> {
        Box::pin(async { Ok(None) })
    }

    /// Raft's figures for this node (`/v1/agent/self`'s `Stats.raft`). Without Raft, a
    /// single voter whose log is the applied state.
    fn raft_stats(&self) -> RaftStats {
        let applied = self.store().applied();
        RaftStats {
            state: if self.is_leader() {
                "Leader"
            } else {
                "Follower"
            },
            term: 1,
            last_log_index: applied,
            last_log_term: 1,
            commit_index: applied,
            applied_index: applied,
            last_snapshot_index: 0,
            last_snapshot_term: 0,
            log_entries: applied,
            num_peers: self.peers().len().saturating_sub(1),
        }
    }

    /// Whether this node's store holds `table`. Servers and `atoll dev` hold every table; a
    /// compute node holds no key/value table (keys and sessions live on the servers only, as
    /// a Consul client agent holds none), and the API sends what needs it to a server.
    fn holds(&self, table: Table) -> bool {
        let _ = table;
        true
    }

    /// The HTTP address (`host:port`) of a server that answers for the tables this node does
    /// not hold; `None` on a node that holds every table.
    fn server_http(&self) -> Option<String> {
        None
    }

    /// What this node's stream of the state has brought, on a compute node fed by a server;
    /// `None` on a node that holds the Raft log.
    fn feed_stats(&self) -> Option<FeedStats> {
        None
    }

    /// The address of the current leader's RPC listener, if one is known.
    fn leader_addr(&self) -> Option<String> {
        self.leader_member().map(|m| m.rpc_addr)
    }

    /// RPC addresses of the voters.
    fn peers(&self) -> Vec<String> {
        self.members()
            .into_iter()
            .filter(|(_, _, voter)| *voter)
            .map(|(_, m, _)| m.rpc_addr)
            .collect()
    }
}

/// What a compute node's stream of the state has brought since the node started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedStats {
    /// Copies of the whole state received.
    pub snapshots: u64,
    /// Streams resumed from the index the node held, without a copy.
    pub resumes: u64,
    /// Entries received.
    pub entries: u64,
    /// Streams opened.
    pub streams: u64,
}

/// Raft's figures for one node, as Consul's agent reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftStats {
    /// `Leader`, `Follower` (non-voters included), `Candidate` or `Shutdown`.
    pub state: &'static str,
    /// The current term.
    pub term: u64,
    /// Index of the last entry in the log.
    pub last_log_index: u64,
    /// Term of that entry.
    pub last_log_term: u64,
    /// Highest index known committed (on a follower, what it applied).
    pub commit_index: u64,
    /// Highest index applied to the state.
    pub applied_index: u64,
    /// Index of the last snapshot (0: none).
    pub last_snapshot_index: u64,
    /// Term of the last snapshot.
    pub last_snapshot_term: u64,
    /// Entries in the log since its last compaction.
    pub log_entries: u64,
    /// Voters other than this node.
    pub num_peers: usize,
}

/// The size of a node's data dir and what takes the room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageReport {
    /// The database file.
    pub path: String,
    /// The file's size in bytes.
    pub file_bytes: u64,
    /// Bytes of the file in use by pages (the rest is free inside the file).
    pub allocated_bytes: u64,
    /// Bytes of keys and values stored (without page overhead).
    pub stored_bytes: u64,
    /// Entries in the Raft log, and its first and last index.
    pub log_entries: u64,
    /// First index still in the log (0: empty).
    pub log_first_index: u64,
    /// Last index in the log (0: empty).
    pub log_last_index: u64,
    /// Bytes of the log's entries.
    pub log_bytes: u64,
    /// The last snapshot's index (0: none yet).
    pub snapshot_index: u64,
    /// Bytes of the stored snapshot.
    pub snapshot_bytes: u64,
    /// The snapshot's file (empty while the snapshot is one an earlier release stored
    /// inside the database).
    pub snapshot_path: String,
    /// Bytes of the database file and the snapshot files together.
    pub data_dir_bytes: u64,
}
