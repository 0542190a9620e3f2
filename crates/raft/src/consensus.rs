//! atoll's handle on Raft: start (restore + bootstrap once), write, linearizable reads,
//! leader and peer information.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use atoll_state::snapshot::{decode, encode};
use atoll_state::{Command, Outcome, Store};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Config, Raft, ServerState, SnapshotPolicy};

use crate::log_store::LogStore;
use crate::network::Network;
use crate::state_machine::StateMachine;
use crate::storage::{self, StorageFailure, KEY_NODE_ID};
use crate::TypeConfig;

/// How a node's consensus is set up.
#[derive(Debug, Clone)]
pub struct ConsensusConfig {
    /// Directory holding the node's database.
    pub data_dir: PathBuf,
    /// Address this server advertises for Raft (reported by `/v1/status/leader`).
    pub advertise_addr: String,
    /// Take a snapshot (and compact the log) after this many entries.
    pub snapshot_after_entries: u64,
}

/// Failures of consensus operations, mapped to HTTP and DNS errors at the edge.
#[derive(Debug, thiserror::Error)]
pub enum ConsensusError {
    /// No leader is known (election in progress, or quorum lost).
    #[error("No cluster leader")]
    NoLeader,
    /// This node is not the leader.
    #[error("not the leader; the leader is {0}")]
    NotLeader(String),
    /// The storage failed; the node cannot continue safely.
    #[error("storage failure: {0}")]
    Storage(String),
    /// Raft stopped.
    #[error("consensus stopped: {0}")]
    Stopped(String),
}

impl From<StorageFailure> for ConsensusError {
    fn from(e: StorageFailure) -> Self {
        ConsensusError::Storage(e.0)
    }
}

/// One node's Raft instance and the state it replicates.
#[derive(Clone)]
pub struct Consensus {
    raft: Raft<TypeConfig>,
    store: Store,
    node_id: u64,
    advertise_addr: Arc<str>,
}

impl Consensus {
    /// Opens the data dir, restores state (into `store`, which should be fresh) from snapshot and log, bootstraps a one-voter
    /// cluster the first time only, and waits until this node leads.
    pub async fn start(config: ConsensusConfig, store: Store) -> Result<Self, ConsensusError> {
        let db = storage::open(&config.data_dir)?;
        let node_id = match storage::get_meta(&db, KEY_NODE_ID)? {
            Some(bytes) => {
                decode::<u64>(&bytes).map_err(|e| ConsensusError::Storage(e.to_string()))?
            }
            None => {
                // Drawn once per data dir and stored, never inside apply.
                let id = rand::random::<u64>() >> 1;
                storage::put_meta(&db, &[(KEY_NODE_ID, &encode(&id))])?;
                id
            }
        };
        let state_machine = StateMachine::restore(store.clone(), db.clone())?;
        let raft_config = Config {
            cluster_name: "atoll".to_string(),
            heartbeat_interval: 100,
            election_timeout_min: 200,
            election_timeout_max: 400,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_after_entries),
            max_in_snapshot_log_to_keep: 256,
            purge_batch_size: 256,
            ..Default::default()
        };
        let raft_config = Arc::new(
            raft_config
                .validate()
                .map_err(|e| ConsensusError::Stopped(e.to_string()))?,
        );
        let raft = Raft::new(
            node_id,
            raft_config,
            Network,
            LogStore::new(db),
            state_machine,
        )
        .await
        .map_err(|e| ConsensusError::Stopped(e.to_string()))?;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| ConsensusError::Stopped(e.to_string()))?;
        if !initialized {
            let mut members = BTreeMap::new();
            members.insert(
                node_id,
                BasicNode {
                    addr: config.advertise_addr.clone(),
                },
            );
            raft.initialize(members)
                .await
                .map_err(|e| ConsensusError::Stopped(e.to_string()))?;
        }
        raft.wait(Some(Duration::from_secs(30)))
            .metrics(
                |m| m.current_leader == Some(node_id) && m.state == ServerState::Leader,
                "become leader",
            )
            .await
            .map_err(|e| ConsensusError::Stopped(e.to_string()))?;
        Ok(Consensus {
            raft,
            store,
            node_id,
            advertise_addr: config.advertise_addr.into(),
        })
    }

    /// The replicated state.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Proposes a command; returns once it is committed and applied, with its outcome and index.
    pub async fn write(&self, command: Command) -> Result<(Outcome, u64), ConsensusError> {
        match self.raft.client_write(command).await {
            Ok(response) => Ok((response.data, response.log_id.index)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Err(match forward.leader_node {
                    Some(node) => ConsensusError::NotLeader(node.addr),
                    None => ConsensusError::NoLeader,
                })
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(ConsensusError::Stopped(e.to_string()))
            }
            Err(RaftError::Fatal(fatal)) => Err(ConsensusError::Stopped(fatal.to_string())),
        }
    }

    /// Confirms leadership with a quorum and waits until the local state has caught up,
    /// so a read afterwards is linearizable.
    pub async fn linearize(&self) -> Result<(), ConsensusError> {
        self.raft
            .ensure_linearizable()
            .await
            .map(|_| ())
            .map_err(|e| match e {
                RaftError::APIError(_) => ConsensusError::NoLeader,
                RaftError::Fatal(fatal) => ConsensusError::Stopped(fatal.to_string()),
            })
    }

    /// The Raft address of the current leader, if one is known.
    pub fn leader_addr(&self) -> Option<String> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        if leader == self.node_id {
            return Some(self.advertise_addr.to_string());
        }
        metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    }

    /// Whether this node is the leader.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.node_id)
    }

    /// Raft addresses of the voters.
    pub fn peers(&self) -> Vec<String> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        membership
            .voter_ids()
            .filter_map(|id| membership.get_node(&id).map(|n| n.addr.clone()))
            .collect()
    }

    /// Index of the last snapshot, if any (used to observe compaction).
    pub fn snapshot_index(&self) -> Option<u64> {
        self.raft.metrics().borrow().snapshot.map(|l| l.index)
    }

    /// Stops Raft; pending writes fail.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}
