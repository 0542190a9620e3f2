//! Requests a node that is not the leader forwards to it: writes, read indexes, heartbeats
//! and removals. Each decides from the transport's typed failure whether the request may
//! have had an effect on the leader.

use std::time::Duration;

use tokio::time::Instant;

use crate::consensus::{Consensus, WRITE_TIMEOUT};
use crate::protocol::{HEARTBEAT_PATH, LIVENESS_PATH, READ_INDEX_PATH, REMOVE_PATH, WRITE_PATH};
use crate::transport::TransportError;
use atoll_cluster::{ClusterError, ReadMode};
use atoll_state::{Command, Outcome};

/// How long a forwarded heartbeat may take.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);

impl Consensus {
    /// Sends a write to the leader at `leader`, to be committed by `deadline`.
    pub(crate) async fn forward_write(
        &self,
        leader: &str,
        command: &Command,
        deadline: Instant,
    ) -> Result<(Outcome, u64), ClusterError> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        let reply: Result<Result<(Outcome, u64), ClusterError>, _> = self
            .client()
            .call(leader, WRITE_PATH, command, timeout)
            .await;
        match reply {
            Ok(result) => result,
            // The leader could not be reached (or refused this node): nothing was proposed,
            // so the caller may look for the next leader and try again until the deadline.
            Err(e) if e.not_sent() => Err(unreached(e)),
            // Sent, but no answer (the leader died or stalled mid-request): it may have
            // committed the entry, and trying again could apply it twice.
            Err(_) => Err(ClusterError::Timeout),
        }
    }

    /// Asks the leader at `leader` for the index a read in `mode` must see.
    pub(crate) async fn forward_read_index(
        &self,
        leader: &str,
        mode: ReadMode,
        timeout: Duration,
    ) -> Result<u64, ClusterError> {
        self.client()
            .call(leader, READ_INDEX_PATH, &mode, timeout)
            .await
            .map_err(unreached)?
    }

    /// Passes the heartbeat of `node` to the leader at `leader`.
    pub(crate) async fn forward_heartbeat(
        &self,
        leader: &str,
        node: &str,
    ) -> Result<(), ClusterError> {
        self.client()
            .call(leader, HEARTBEAT_PATH, &node, HEARTBEAT_TIMEOUT)
            .await
            .map_err(unreached)?
    }

    /// Passes the names of the nodes whose streams this server holds to the leader.
    pub(crate) async fn forward_liveness(
        &self,
        leader: &str,
        nodes: &[String],
    ) -> Result<(), ClusterError> {
        self.client()
            .call(leader, LIVENESS_PATH, &nodes, HEARTBEAT_TIMEOUT)
            .await
            .map_err(unreached)?
    }

    /// Asks the leader at `leader` to remove Raft id `id`.
    pub(crate) async fn forward_remove(&self, leader: &str, id: u64) -> Result<(), ClusterError> {
        self.client()
            .call(leader, REMOVE_PATH, &id, WRITE_TIMEOUT)
            .await
            .map_err(unreached)?
    }
}

/// A leader this node cannot get an answer from is, to its callers, no leader; one that
/// refuses this node's credentials (or whose certificate this node refuses) is also worth a
/// line in the log.
fn unreached(e: TransportError) -> ClusterError {
    if e.refused() {
        tracing::warn!(error = %e, "the leader refused a forwarded request");
    }
    ClusterError::NoLeader
}
