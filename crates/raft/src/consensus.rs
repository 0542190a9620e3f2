//! atoll's handle on Raft: start and restore, bootstrap, write (forwarded to the leader from
//! any node), reads that see the leader's view, leader and membership information.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use atoll_cluster::{Cluster, ClusterError, Member, ReadMode, Store};
use atoll_state::snapshot::{decode, encode};
use atoll_state::{Command, Outcome};
use openraft::error::{ClientWriteError, InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{ChangeMembers, Config, Raft, ServerState, SnapshotPolicy};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::auth::{ClusterSecret, RpcTls};
use crate::feed::{FeedHub, FeedSource};
use crate::group::{Propose, Wanted, WriteGroup};
use crate::log_store::{LogStore, LogWriter};
use crate::network::Network;
use crate::state_machine::StateMachine;
use crate::storage::{self, StorageFailure, KEY_NODE_ID};
use crate::transport::RpcClient;
use crate::TypeConfig;

/// How long a write may wait for its commit before the caller gets an error; also the
/// leader's deadline for a write forwarded to it.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a read waits to confirm the leader's view; also the leader's deadline for a
/// read index asked of it.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between attempts while no leader is known.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long after a quorum last confirmed its leadership the leader answers default-mode
/// reads from its own state (Consul's leader lease). Followers grant no vote for
/// `election_timeout_max` (300 ms) after a heartbeat, so no other leader commits within it;
/// past it the leader confirms again first, and a leader cut off from the others refuses
/// instead of serving old values for as long as the partition lasts.
const LEADER_LEASE: Duration = Duration::from_millis(300);

/// How long a leader that steps down stays silent: several election timeouts (200-300 ms)
/// after the followers' last heartbeat, so that one of them has stood and won.
const STEP_DOWN_SILENCE: Duration = Duration::from_millis(2000);

/// Proposals of one write group in flight at once. One: while it commits (or crosses to the
/// leader and back), the next batch gathers, and the fewer and larger the entries the less
/// each write costs (measured on one node with 16 writers: 17,900 writes/s with one slot,
/// 13,100 with two, 9,000 with four; through a follower of three servers, 4,500 with one
/// slot, 3,600 with four). Throughput then grows with the batch, not with entries in flight.
const WRITES_IN_FLIGHT: usize = 1;

/// `ATOLL_WRITE_SLOTS`: proposals of each write group in flight at once, for measuring other
/// settings than [`WRITES_IN_FLIGHT`] (`bench/write_path.py`); 1 to 64.
fn writes_in_flight() -> usize {
    std::env::var("ATOLL_WRITE_SLOTS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map_or(WRITES_IN_FLIGHT, |slots| slots.clamp(1, 64))
}

/// `ATOLL_WRITE_GATHER=1`: a write that finds a proposal slot free first lets the runtime read
/// requests already arrived, so that they join its batch (`group.rs`); off by default.
fn gather_writes() -> bool {
    std::env::var("ATOLL_WRITE_GATHER").is_ok_and(|v| v.trim() == "1")
}

/// How often a server reports the compute nodes whose streams it holds as alive.
const LIVENESS_EVERY: Duration = Duration::from_millis(500);

/// A group's proposer calling `propose` on the node while it exists.
fn proposer<F, Fut>(node: Weak<Inner>, propose: F) -> Propose
where
    F: Fn(Consensus, Command, Wanted) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(Outcome, u64), ClusterError>> + Send + 'static,
{
    let propose = Arc::new(propose);
    Arc::new(move |command, wanted| {
        let node = node.upgrade();
        let propose = propose.clone();
        Box::pin(async move {
            match node {
                Some(inner) => propose(Consensus { inner }, command, wanted).await,
                None => Err(ClusterError::Stopped("the node has stopped".into())),
            }
        })
    })
}

/// How a node's consensus is set up.
#[derive(Debug, Clone)]
pub struct ConsensusConfig {
    /// Directory holding the node's database.
    pub data_dir: PathBuf,
    /// This node as the membership records it.
    pub member: Member,
    /// Take a snapshot (and compact the log) after this many entries.
    pub snapshot_after_entries: u64,
    /// The leader refuses writes while the data dir's file system has less free space.
    pub disk_reserve_bytes: u64,
    /// The secret every RPC request between the cluster's nodes carries, if any.
    pub cluster_secret: Option<ClusterSecret>,
    /// The RPC port's TLS, when the node has TLS files.
    pub rpc_tls: Option<RpcTls>,
}

impl From<StorageFailure> for ClusterError {
    fn from(e: StorageFailure) -> Self {
        ClusterError::Storage(e.0)
    }
}

/// One node's Raft instance and the state it replicates.
#[derive(Clone)]
pub struct Consensus {
    inner: Arc<Inner>,
}

/// The node's state. Only this module touches it; the RPC listener (`rpc.rs`), cluster
/// forming (`cluster.rs`) and forwarding (`forward.rs`) go through the methods below.
struct Inner {
    raft: Raft<TypeConfig>,
    /// The log's writer thread, waited for on shutdown.
    log_writer: LogWriter,
    /// The database, for reports; not kept open by this handle.
    db: Weak<redb::Database>,
    store: Store,
    node_id: u64,
    member: Member,
    client: RpcClient,
    /// What the RPC listener asks of callers, if the cluster has a secret.
    secret: Option<Arc<ClusterSecret>>,
    /// The RPC port's TLS, if any.
    tls: Option<RpcTls>,
    /// Where the database lives, and the free space writes need there.
    data_dir: PathBuf,
    disk_reserve_bytes: u64,
    /// Leader only: when each node last sent a heartbeat.
    liveness: Mutex<HashMap<String, Instant>>,
    /// Servers this node has heard of while looking for its cluster.
    known: Mutex<BTreeMap<u64, Member>>,
    /// Follower only: when the leader last reached this node.
    leader_contact: Mutex<Option<Instant>>,
    /// Leader only: the term and the time of the last leadership confirmation by a quorum,
    /// taken when the confirmation was asked for (see `LEADER_LEASE`).
    lease: Mutex<Option<(u64, Instant)>>,
    /// This node's writes, proposed together (`group.rs`): on the leader, or forwarded.
    writes: WriteGroup,
    /// Leader only: writes other nodes forwarded, proposed together.
    forwarded: WriteGroup,
    /// The compute nodes' streams this server serves (`feed.rs`).
    feed: FeedHub,
}

impl Consensus {
    /// Opens the data dir and restores state (into `store`, which should be fresh) from
    /// snapshot and log. The node takes part in Raft but bootstraps nothing by itself.
    pub async fn start(config: ConsensusConfig, store: Store) -> Result<Self, ClusterError> {
        let db = storage::open(&config.data_dir)?;
        Self::start_on(db, config, store).await
    }

    /// [`Consensus::start`] on an open database.
    pub(crate) async fn start_on(
        db: Arc<redb::Database>,
        config: ConsensusConfig,
        store: Store,
    ) -> Result<Self, ClusterError> {
        let node_id = match storage::get_meta(&db, KEY_NODE_ID)? {
            Some(bytes) => {
                decode::<u64>(&bytes).map_err(|e| ClusterError::Storage(e.to_string()))?
            }
            None => {
                // Drawn once per data dir and stored, never inside apply.
                let id = rand::random::<u64>() >> 1;
                storage::put_meta(
                    &db,
                    &[(KEY_NODE_ID, &encode(&id).map_err(StorageFailure::from)?)],
                )?;
                id
            }
        };
        let state_machine = StateMachine::restore(store.clone(), db.clone(), &config.data_dir)?;
        let raft_config = Config {
            cluster_name: "atoll".to_string(),
            // openraft grants no vote while the leader's lease (election_timeout_max) runs,
            // and a follower stands for election that long plus its own timeout after the
            // last heartbeat: 500-600 ms of silence, five heartbeats missed. The heartbeat
            // interval is also the append RPC's timeout, so it stays at 100 ms.
            heartbeat_interval: 100,
            election_timeout_min: 200,
            election_timeout_max: 300,
            install_snapshot_timeout: 5000,
            max_payload_entries: 64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_after_entries),
            max_in_snapshot_log_to_keep: 256,
            purge_batch_size: 256,
            ..Default::default()
        };
        let raft_config = Arc::new(
            raft_config
                .validate()
                .map_err(|e| ClusterError::Stopped(e.to_string()))?,
        );
        let secret = config.cluster_secret.map(Arc::new);
        let client = RpcClient::new(secret.clone(), config.rpc_tls.as_ref());
        let network = Network {
            client: client.clone(),
        };
        let weak_db = Arc::downgrade(&db);
        let log = LogStore::new(db)?;
        let log_writer = log.writer();
        let raft = Raft::new(node_id, raft_config, network, log, state_machine)
            .await
            .map_err(|e| ClusterError::Stopped(e.to_string()))?;
        // The groups propose through the node they belong to, which they must not keep alive.
        let slots = writes_in_flight();
        let gather = gather_writes();
        let inner = Arc::new_cyclic(|me: &Weak<Inner>| {
            let writes = proposer(me.clone(), |consensus, command, wanted| async move {
                consensus.write_anywhere(command, wanted).await
            });
            let forwarded = proposer(me.clone(), |consensus, command, _| async move {
                let deadline = Instant::now() + WRITE_TIMEOUT;
                consensus.local_write(command, deadline).await
            });
            Inner {
                raft,
                log_writer,
                db: weak_db,
                store,
                node_id,
                member: config.member,
                client,
                secret,
                tls: config.rpc_tls,
                data_dir: config.data_dir,
                disk_reserve_bytes: config.disk_reserve_bytes,
                liveness: Mutex::new(HashMap::new()),
                known: Mutex::new(BTreeMap::new()),
                leader_contact: Mutex::new(None),
                lease: Mutex::new(None),
                writes: WriteGroup::new(slots, writes).gathering(gather),
                forwarded: WriteGroup::new(slots, forwarded).gathering(gather),
                feed: FeedHub::new(),
            }
        });
        Ok(Consensus { inner })
    }

    /// Whether this node already belongs to a cluster (has a log or a vote).
    pub async fn is_initialized(&self) -> Result<bool, ClusterError> {
        self.inner
            .raft
            .is_initialized()
            .await
            .map_err(|e| ClusterError::Stopped(e.to_string()))
    }

    /// Forms a cluster of `members` (this node must be one). Only ever called on a node with no
    /// log and no vote, so a cluster is bootstrapped once.
    pub async fn initialize(&self, members: BTreeMap<u64, Member>) -> Result<(), ClusterError> {
        if self.is_initialized().await? {
            return Ok(());
        }
        tracing::info!(servers = members.len(), "bootstrapping the cluster");
        self.inner
            .raft
            .initialize(members)
            .await
            .map_err(|e| ClusterError::Stopped(e.to_string()))
    }

    /// Single-server mode (`atoll dev`, `--bootstrap-expect 1`): bootstrap alone if needed and
    /// wait until this node leads.
    pub async fn bootstrap_single(&self) -> Result<(), ClusterError> {
        let mut members = BTreeMap::new();
        members.insert(self.inner.node_id, self.inner.member.clone());
        self.initialize(members).await?;
        let node_id = self.inner.node_id;
        self.inner
            .raft
            .wait(Some(Duration::from_secs(30)))
            .metrics(
                |m| m.current_leader == Some(node_id) && m.state == ServerState::Leader,
                "become leader",
            )
            .await
            .map_err(|e| ClusterError::Stopped(e.to_string()))?;
        Ok(())
    }

    /// Waits until some leader is known, up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<(), ClusterError> {
        self.inner
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .map(|_| ())
            .map_err(|_| ClusterError::NoLeader)
    }

    /// This node's Raft id.
    pub fn node_id(&self) -> u64 {
        self.inner.node_id
    }

    /// This node as the membership records it.
    pub fn member(&self) -> &Member {
        &self.inner.member
    }

    /// The replicated state.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Commits a command (forwarding it to the leader when this node is not the leader) and
    /// waits until it is applied locally, so the caller reads its own write. Returns the
    /// outcome and the entry's index. Concurrent writes are proposed together (`group.rs`).
    pub async fn write(&self, command: Command) -> Result<(Outcome, u64), ClusterError> {
        let deadline = Instant::now() + WRITE_TIMEOUT;
        // The deadline counts from here, not from the proposal: a write queued behind a
        // proposal that cannot commit (no quorum) is not kept waiting for two timeouts.
        let (outcome, index) = tokio::time::timeout_at(deadline, self.inner.writes.write(command))
            .await
            .map_err(|_| ClusterError::Timeout)??;
        // Waited for here, not in the proposal: its slot is free for the next batch as soon
        // as the leader answered.
        self.wait_applied(index, deadline).await?;
        Ok((outcome, index))
    }

    /// A write another node forwarded to this one, the leader: proposed with the others
    /// forwarded at the same time, never forwarded again.
    pub(crate) async fn forwarded_write(
        &self,
        command: Command,
    ) -> Result<(Outcome, u64), ClusterError> {
        self.inner.forwarded.write(command).await
    }

    /// Commits one entry through the leader, wherever it is. While no leader takes it, it is
    /// tried again until the deadline, as long as somebody still waits for it.
    async fn write_anywhere(
        &self,
        command: Command,
        wanted: Wanted,
    ) -> Result<(Outcome, u64), ClusterError> {
        let deadline = Instant::now() + WRITE_TIMEOUT;
        loop {
            let attempt = match self.leader_member() {
                Some(leader)
                    if leader.rpc_addr != self.inner.member.rpc_addr && !self.is_leader() =>
                {
                    self.forward_write(&leader.rpc_addr, &command, deadline)
                        .await
                }
                _ => self.local_write(command.clone(), deadline).await,
            };
            match attempt {
                Ok(done) => return Ok(done),
                Err(ClusterError::NoLeader) | Err(ClusterError::NotLeader(_))
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(RETRY_PAUSE).await;
                    if !wanted.still() {
                        return Err(ClusterError::Timeout);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes through the local Raft instance; only the leader succeeds.
    pub(crate) async fn local_write(
        &self,
        command: Command,
        deadline: Instant,
    ) -> Result<(Outcome, u64), ClusterError> {
        // Refused before anything is proposed: the caller may try the leader instead.
        if !self.is_leader() {
            return Err(match self.leader_member() {
                Some(leader) if leader.rpc_addr != self.inner.member.rpc_addr => {
                    ClusterError::NotLeader(leader.rpc_addr)
                }
                _ => ClusterError::NoLeader,
            });
        }
        self.check_free_space()?;
        let proposed = Instant::now();
        let result = tokio::time::timeout_at(deadline, self.inner.raft.client_write(command))
            .await
            .map_err(|_| ClusterError::Timeout)?;
        match result {
            Ok(response) => {
                atoll_metrics::node()
                    .raft
                    .commit_duration
                    .observe_duration(proposed.elapsed());
                Ok((response.data, response.log_id.index))
            }
            // This node was leading when it took the entry: leadership moved since, and the
            // entry may already be in the log a later leader commits. Not safe to send again.
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(ClusterError::Timeout)
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(ClusterError::Stopped(e.to_string()))
            }
            Err(RaftError::Fatal(fatal)) => Err(ClusterError::Stopped(fatal.to_string())),
        }
    }

    /// Refuses a write while the data dir is short of space: a Raft log that meets a full
    /// disk stops the node (a failed append is fatal), so the leader stops taking entries
    /// first, and takes them again as soon as space is freed.
    fn check_free_space(&self) -> Result<(), ClusterError> {
        let reserve = self.inner.disk_reserve_bytes;
        if reserve == 0 {
            return Ok(());
        }
        let dir = &self.inner.data_dir;
        let free = storage::free_bytes(dir).map_err(|e| {
            ClusterError::Storage(format!(
                "cannot read the free space of {}: {e}",
                dir.display()
            ))
        })?;
        if free >= reserve {
            return Ok(());
        }
        const MIB: u64 = 1024 * 1024;
        Err(ClusterError::InsufficientStorage(format!(
            "insufficient storage: no space for writes on the data dir {} of the leader ({} MiB \
             free, {} MiB must stay free); nothing was written, and writes are taken again once \
             space is freed",
            dir.display(),
            free / MIB,
            reserve.div_ceil(MIB),
        )))
    }

    /// Resolves when Raft has stopped on a failure of its storage (or panicked), with a
    /// message naming the database file; never resolves while Raft runs, nor after a normal
    /// shutdown. After such a failure nothing this process holds can be trusted to be
    /// durable, so the caller exits; a restart recovers from what the file holds.
    pub async fn fatal_failure(&self) -> String {
        let mut metrics = self.inner.raft.metrics();
        loop {
            let state = metrics.borrow_and_update().running_state.clone();
            match state {
                Ok(()) => {}
                Err(openraft::error::Fatal::Stopped) => return std::future::pending().await,
                Err(fatal) => {
                    return format!(
                        "the Raft storage in {} failed, stopping: {fatal}. Every write \
                         acknowledged before is in it: a restart recovers from what it holds",
                        self.inner.data_dir.join(storage::DB_FILE).display()
                    )
                }
            }
            if metrics.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Counts the leaders this node comes to know (`atoll_raft_leader_changes_total`): a
    /// new leader, or the same one in a new term. Runs for the life of the node.
    pub async fn count_leader_changes(&self) {
        let mut metrics = self.inner.raft.metrics();
        let mut known: Option<(u64, u64)> = None;
        loop {
            let (term, leader) = {
                let now = metrics.borrow_and_update();
                (now.current_term, now.current_leader)
            };
            if let Some(leader) = leader {
                if known != Some((term, leader)) {
                    known = Some((term, leader));
                    atoll_metrics::node().raft.leader_changes.inc();
                }
            }
            if metrics.changed().await.is_err() {
                // Raft has stopped: there are no more leaders to see.
                return std::future::pending().await;
            }
        }
    }

    /// Waits until the local state has applied `index`.
    pub async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), ClusterError> {
        let mut applied = self.inner.store.watch_applied();
        let result =
            tokio::time::timeout_at(deadline, applied.wait_for(|applied| *applied >= index))
                .await
                .map(|r| r.map(|_| ()));
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ClusterError::Stopped("state machine stopped".into())),
            Err(_) => Err(ClusterError::Timeout),
        }
    }

    /// Makes the local state at least as new as the leader's (`Default`) or confirmed by a
    /// quorum (`Consistent`) before a read.
    pub async fn linearize(&self, mode: ReadMode) -> Result<(), ClusterError> {
        let deadline = Instant::now() + READ_TIMEOUT;
        let index = if self.is_leader() {
            self.leader_read_index(mode, deadline).await?
        } else {
            let leader = self.leader_member().ok_or(ClusterError::NoLeader)?;
            let timeout = deadline.saturating_duration_since(Instant::now());
            self.forward_read_index(&leader.rpc_addr, mode, timeout)
                .await?
        };
        self.wait_applied(index, deadline).await
    }

    /// On the leader: the index a read must see.
    pub(crate) async fn leader_read_index(
        &self,
        mode: ReadMode,
        deadline: Instant,
    ) -> Result<u64, ClusterError> {
        match mode {
            ReadMode::Default if self.lease_holds() => Ok(self.inner.store.applied()),
            ReadMode::Default | ReadMode::Consistent => self.confirm_leadership(deadline).await,
        }
    }

    /// Whether a quorum confirmed this node's leadership, in its current term, within the lease.
    fn lease_holds(&self) -> bool {
        let term = self.inner.raft.metrics().borrow().current_term;
        self.inner
            .lease
            .lock()
            .is_some_and(|(leased, at)| leased == term && at.elapsed() < LEADER_LEASE)
    }

    /// Confirms leadership with a quorum (fresh heartbeats) and returns the index a linearizable
    /// read must see; renews the lease from the moment the confirmation was asked for.
    async fn confirm_leadership(&self, deadline: Instant) -> Result<u64, ClusterError> {
        let asked = Instant::now();
        let term = self.inner.raft.metrics().borrow().current_term;
        let confirmed = tokio::time::timeout_at(deadline, self.inner.raft.ensure_linearizable())
            .await
            .map_err(|_| ClusterError::NoLeader)?;
        match confirmed {
            Ok(log_id) => {
                let mut lease = self.inner.lease.lock();
                if lease.is_none_or(|current| current < (term, asked)) {
                    *lease = Some((term, asked));
                }
                Ok(log_id.map(|l| l.index).unwrap_or(0))
            }
            Err(RaftError::APIError(_)) => Err(ClusterError::NoLeader),
            Err(RaftError::Fatal(fatal)) => Err(ClusterError::Stopped(fatal.to_string())),
        }
    }

    /// The leader as the membership records it, if one is known.
    pub fn leader_member(&self) -> Option<Member> {
        // Asked on every request (the Consul headers) and write: borrowed, not copied.
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .cloned()
    }

    /// Whether this node is the leader.
    pub fn is_leader(&self) -> bool {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        metrics.current_leader == Some(self.inner.node_id) && metrics.state == ServerState::Leader
    }

    /// Gives up leadership. openraft 0.9 has no leadership transfer, and a leader ignores an
    /// election it is asked to start, so the leader falls silent instead: it stops its
    /// heartbeats and its own elections for [`STEP_DOWN_SILENCE`]. The followers' election
    /// timers run out, one of them is elected (the old leader grants its vote once its lease
    /// has passed) and the old leader follows the new term. Then heartbeats and elections are
    /// enabled again. A leader that replicates client writes meanwhile keeps its followers'
    /// timers fresh, so under steady writes the step-down may not happen; with one voter the
    /// same node stays leader.
    pub async fn step_down(&self) -> Result<(), ClusterError> {
        if !self.is_leader() {
            return Err(match self.leader_member() {
                Some(leader) => ClusterError::NotLeader(leader.http_addr),
                None => ClusterError::NoLeader,
            });
        }
        let runtime = self.inner.raft.runtime_config();
        runtime.heartbeat(false);
        runtime.elect(false);
        let raft = self.inner.raft.clone();
        tokio::spawn(async move {
            tokio::time::sleep(STEP_DOWN_SILENCE).await;
            let runtime = raft.runtime_config();
            runtime.heartbeat(true);
            runtime.elect(true);
        });
        Ok(())
    }

    /// Milliseconds since this node last heard from the leader (0 on the leader).
    pub fn last_contact_ms(&self) -> u64 {
        if self.is_leader() {
            return 0;
        }
        match *self.inner.leader_contact.lock() {
            Some(at) => at.elapsed().as_millis() as u64,
            None => 0,
        }
    }

    /// Whether an append from a leader arrived within `window`.
    pub(crate) fn heard_from_leader_within(&self, window: Duration) -> bool {
        self.inner
            .leader_contact
            .lock()
            .is_some_and(|at| at.elapsed() < window)
    }

    /// The client this node calls its peers with.
    pub(crate) fn client(&self) -> &RpcClient {
        &self.inner.client
    }

    /// What the RPC listener asks of callers, if the cluster has a secret.
    pub(crate) fn cluster_secret(&self) -> Option<&Arc<ClusterSecret>> {
        self.inner.secret.as_ref()
    }

    /// The RPC port's TLS, if the node has TLS files.
    pub(crate) fn rpc_tls(&self) -> Option<&RpcTls> {
        self.inner.tls.as_ref()
    }

    /// Hands an append from the leader to Raft, noting that the leader reached this node.
    pub(crate) async fn receive_append(
        &self,
        request: AppendEntriesRequest<TypeConfig>,
    ) -> Result<AppendEntriesResponse<u64>, RaftError<u64>> {
        self.note_leader_contact();
        self.inner.raft.append_entries(request).await
    }

    /// Hands a snapshot chunk from the leader to Raft, noting that the leader reached this
    /// node.
    pub(crate) async fn receive_snapshot(
        &self,
        request: InstallSnapshotRequest<TypeConfig>,
    ) -> Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> {
        self.note_leader_contact();
        self.inner.raft.install_snapshot(request).await
    }

    /// Hands a candidate's vote request to Raft.
    pub(crate) async fn receive_vote(
        &self,
        request: VoteRequest<u64>,
    ) -> Result<VoteResponse<u64>, RaftError<u64>> {
        self.inner.raft.vote(request).await
    }

    fn note_leader_contact(&self) {
        *self.inner.leader_contact.lock() = Some(Instant::now());
    }

    /// Notes a server heard of while looking for the cluster.
    pub(crate) fn remember_server(&self, id: u64, member: Member) {
        self.inner.known.lock().insert(id, member);
    }

    /// The servers heard of while looking for the cluster.
    pub(crate) fn known_servers(&self) -> BTreeMap<u64, Member> {
        self.inner.known.lock().clone()
    }

    /// Every node in the membership: id, record, and whether it votes.
    pub fn members(&self) -> Vec<(u64, Member, bool)> {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, m)| (*id, m.clone(), voters.contains(id)))
            .collect()
    }

    /// Raft's figures for `/v1/agent/self`. openraft reports the applied entry, not the
    /// committed one; a node has applied everything it knows committed within moments, so
    /// the applied index stands for both, as does the applied entry's term for the last
    /// entry's.
    pub fn raft_stats(&self) -> atoll_cluster::RaftStats {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters = membership.voter_ids().count();
        let is_voter = membership.voter_ids().any(|id| id == self.inner.node_id);
        let applied = metrics.last_applied;
        atoll_cluster::RaftStats {
            state: match metrics.state {
                ServerState::Leader => "Leader",
                ServerState::Candidate => "Candidate",
                ServerState::Shutdown => "Shutdown",
                ServerState::Follower | ServerState::Learner => "Follower",
            },
            term: metrics.current_term,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            last_log_term: applied.map_or(0, |l| l.leader_id.term),
            commit_index: applied.map_or(0, |l| l.index),
            applied_index: applied.map_or(0, |l| l.index),
            last_snapshot_index: metrics.snapshot.map_or(0, |l| l.index),
            last_snapshot_term: metrics.snapshot.map_or(0, |l| l.leader_id.term),
            log_entries: metrics
                .last_log_index
                .unwrap_or(0)
                .saturating_sub(metrics.purged.map_or(0, |l| l.index)),
            num_peers: voters - usize::from(is_voter),
        }
    }

    /// Index of the last snapshot, if any (used to observe compaction).
    pub fn snapshot_index(&self) -> Option<u64> {
        self.inner.raft.metrics().borrow().snapshot.map(|l| l.index)
    }

    /// Records that `node` is alive. On the leader this updates its liveness table; elsewhere
    /// it is sent to the leader.
    pub async fn heartbeat(&self, node: &str) -> Result<(), ClusterError> {
        if self.is_leader() {
            self.inner
                .liveness
                .lock()
                .insert(node.to_string(), Instant::now());
            return Ok(());
        }
        let leader = self.leader_member().ok_or(ClusterError::NoLeader)?;
        self.forward_heartbeat(&leader.rpc_addr, node).await
    }

    /// What the data dir holds (see [`atoll_cluster::StorageReport`]).
    pub async fn storage_report(&self) -> Result<atoll_cluster::StorageReport, ClusterError> {
        let db = self
            .inner
            .db
            .upgrade()
            .ok_or_else(|| ClusterError::Stopped("the database is closed".into()))?;
        let path = self.inner.data_dir.join(storage::DB_FILE);
        let snapshot_dir = crate::snapshot_file::directory(&self.inner.data_dir);
        let snapshot_index = self.snapshot_index().unwrap_or(0);
        tokio::task::spawn_blocking(move || {
            storage::report(&db, &path, &snapshot_dir, snapshot_index)
        })
        .await
        .map_err(|e| ClusterError::Stopped(e.to_string()))?
        .map_err(ClusterError::from)
    }

    /// Leader only: when each node last sent a heartbeat.
    pub fn liveness(&self) -> HashMap<String, Instant> {
        self.inner.liveness.lock().clone()
    }

    /// Adds a node: a server as a voter (after it has caught up), a client as a learner.
    /// Only the leader can; others answer `NotLeader`.
    pub async fn add_member(&self, id: u64, member: Member) -> Result<(), ClusterError> {
        if !self.is_leader() {
            return Err(match self.leader_addr() {
                Some(addr) => ClusterError::NotLeader(addr),
                None => ClusterError::NoLeader,
            });
        }
        if member.datacenter != self.inner.member.datacenter {
            return Err(ClusterError::Refused(format!(
                "node {:?} is in datacenter {:?}, this cluster is {:?}",
                member.name, member.datacenter, self.inner.member.datacenter
            )));
        }
        let existing = self.members().into_iter().find(|(i, _, _)| *i == id);
        let server = member.server;
        let name = member.name.clone();
        // Another id on the same RPC address is this node before it lost its data dir (two
        // processes cannot listen on one address): once the new id is in, the old one goes.
        // Also when the new id is already in: an earlier join may have stopped half-way.
        let replaced: Vec<u64> = self
            .members()
            .into_iter()
            .filter(|(other, m, _)| *other != id && m.rpc_addr == member.rpc_addr)
            .map(|(other, _, _)| other)
            .collect();
        if !existing
            .as_ref()
            .is_some_and(|(_, m, voter)| *m == member && *voter == server)
        {
            self.inner
                .raft
                .add_learner(id, member, server)
                .await
                .map_err(|e| ClusterError::Stopped(e.to_string()))?;
            if server {
                self.inner
                    .raft
                    .change_membership(ChangeMembers::AddVoterIds([id].into()), true)
                    .await
                    .map_err(|e| ClusterError::Stopped(e.to_string()))?;
            }
            tracing::info!(node = %name, server, "node joined");
        }
        for old in replaced {
            tracing::info!(node = %name, old_id = old, "removing the id this node had before");
            self.remove_member(old).await?;
        }
        Ok(())
    }

    /// Removes a node from the membership (leave, force-leave, dead-server cleanup).
    pub async fn remove_member(&self, id: u64) -> Result<(), ClusterError> {
        if !self.is_leader() {
            let leader = self.leader_member().ok_or(ClusterError::NoLeader)?;
            return self.forward_remove(&leader.rpc_addr, id).await;
        }
        let Some((_, member, voter)) = self.members().into_iter().find(|(i, _, _)| *i == id) else {
            return Err(ClusterError::Refused(format!(
                "no Raft member with id {id}"
            )));
        };
        let change = if voter {
            ChangeMembers::RemoveVoters([id].into())
        } else {
            ChangeMembers::RemoveNodes([id].into())
        };
        self.inner
            .raft
            .change_membership(change, false)
            .await
            .map_err(|e| ClusterError::Refused(e.to_string()))?;
        tracing::info!(node = %member.name, "node removed from the cluster");
        Ok(())
    }

    /// Calls `hook` with the name of a compute node whose last stream on this server closed:
    /// the node may be gone (a killed process's connection resets at once), which the LAN
    /// pool can check at once rather than at its next probe of that node.
    pub fn when_a_stream_closes(&self, hook: impl Fn(&str) + Send + Sync + 'static) {
        self.inner.feed.on_closed(Arc::new(hook));
    }

    /// The compute nodes' streams this server serves.
    pub(crate) fn feed(&self) -> &FeedHub {
        &self.inner.feed
    }

    /// Runs this server's side of the compute nodes' feed for ever: the window of recent
    /// entries, and every [`LIVENESS_EVERY`] the names of the nodes whose streams are open,
    /// reported to the leader as alive (one request per server, whatever the number of
    /// nodes), so that a node outside the leader's LAN pool view is judged by its stream.
    pub async fn serve_feed(&self) {
        let hub = self.inner.feed.clone();
        let source: Arc<dyn FeedSource> = Arc::new(self.clone());
        let window = tokio::spawn(async move { hub.run(source).await });
        let mut ticker = tokio::time::interval(LIVENESS_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if window.is_finished() {
                return;
            }
            let nodes = self.inner.feed.nodes();
            if nodes.is_empty() {
                continue;
            }
            if let Err(e) = self.streams_alive(nodes).await {
                tracing::debug!(error = %e, "could not report the streamed nodes alive");
            }
        }
    }

    /// Notes `nodes` alive: on the leader in its liveness table, elsewhere sent to it.
    pub(crate) async fn streams_alive(&self, nodes: Vec<String>) -> Result<(), ClusterError> {
        if self.is_leader() {
            let now = Instant::now();
            let mut liveness = self.inner.liveness.lock();
            for node in nodes {
                liveness.insert(node, now);
            }
            return Ok(());
        }
        let leader = self.leader_member().ok_or(ClusterError::NoLeader)?;
        self.forward_liveness(&leader.rpc_addr, &nodes).await
    }

    /// A compute node's write, handed to this server: proposed with this server's own
    /// writes (forwarded to the leader when this server does not lead). The node waits for
    /// its own copy to reach the index.
    pub(crate) async fn relay_write(
        &self,
        command: Command,
    ) -> Result<(Outcome, u64), ClusterError> {
        let deadline = Instant::now() + WRITE_TIMEOUT;
        tokio::time::timeout_at(deadline, self.inner.writes.write(command))
            .await
            .map_err(|_| ClusterError::Timeout)?
    }

    /// The index a compute node's read in `mode` must see, from the leader.
    pub(crate) async fn relay_read_index(&self, mode: ReadMode) -> Result<u64, ClusterError> {
        let deadline = Instant::now() + READ_TIMEOUT;
        if self.is_leader() {
            return self.leader_read_index(mode, deadline).await;
        }
        let leader = self.leader_member().ok_or(ClusterError::NoLeader)?;
        let timeout = deadline.saturating_duration_since(Instant::now());
        self.forward_read_index(&leader.rpc_addr, mode, timeout)
            .await
    }

    /// The leader's Raft id, if one is known.
    pub(crate) fn leader_id(&self) -> Option<u64> {
        self.inner.raft.metrics().borrow().current_leader
    }

    /// Stops Raft; pending writes fail.
    pub async fn shutdown(&self) {
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        // What Raft queued last (its committed index) is written before the file is let go.
        self.inner.log_writer.settled().await;
        // A snapshot openraft was building when told to stop still holds the file; the data
        // dir is free for the next owner only once that task is done.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.inner.db.strong_count() > 0 {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!("the database is still held 30 s after shutdown");
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

/// The seam the edges use: every call goes to the inherent method of the same name.
impl atoll_cluster::Cluster for Consensus {
    fn store(&self) -> &Store {
        Consensus::store(self)
    }

    fn write(&self, command: Command) -> atoll_cluster::Pending<'_, (Outcome, u64)> {
        Box::pin(Consensus::write(self, command))
    }

    fn linearize(&self, mode: ReadMode) -> atoll_cluster::Pending<'_, ()> {
        Box::pin(Consensus::linearize(self, mode))
    }

    fn node_id(&self) -> u64 {
        Consensus::node_id(self)
    }

    fn member(&self) -> &Member {
        Consensus::member(self)
    }

    fn leader_member(&self) -> Option<Member> {
        Consensus::leader_member(self)
    }

    fn is_leader(&self) -> bool {
        Consensus::is_leader(self)
    }

    fn last_contact_ms(&self) -> u64 {
        Consensus::last_contact_ms(self)
    }

    fn members(&self) -> Vec<(u64, Member, bool)> {
        Consensus::members(self)
    }

    fn step_down(&self) -> atoll_cluster::Pending<'_, ()> {
        Box::pin(Consensus::step_down(self))
    }

    fn remove_member(&self, id: u64) -> atoll_cluster::Pending<'_, ()> {
        Box::pin(Consensus::remove_member(self, id))
    }

    fn heartbeat<'a>(&'a self, node: &'a str) -> atoll_cluster::Pending<'a, ()> {
        Box::pin(Consensus::heartbeat(self, node))
    }

    fn storage_report(&self) -> atoll_cluster::Pending<'_, Option<atoll_cluster::StorageReport>> {
        Box::pin(async { Consensus::storage_report(self).await.map(Some) })
    }

    fn liveness(&self) -> HashMap<String, Instant> {
        Consensus::liveness(self)
    }

    fn raft_stats(&self) -> atoll_cluster::RaftStats {
        Consensus::raft_stats(self)
    }
}

impl FeedSource for Consensus {
    fn store(&self) -> &Store {
        Consensus::store(self)
    }

    fn servers(&self) -> (Vec<(u64, Member, bool)>, Option<u64>) {
        (self.members(), self.leader_id())
    }
}
