//! A compute node's side of the cluster: no Raft log, no Raft membership. The node keeps a
//! copy of the state (every table but keys and sessions) fed by one server's stream
//! (`feed.rs`), sends its writes and read-index requests to that server, and learns the
//! membership and the leader from the stream.
//!
//! The server is chosen by a rendezvous hash of the node's name over the servers
//! ([`crate::feed::server_order`]): nodes spread over every server whoever leads. A stream
//! that breaks, falls silent or is refused sends the node to the next server in its order;
//! it resumes from the index it holds when that server can, else it is sent a new copy.
//!
//! On a graceful stop the copy and its position are written to the data dir
//! (`feed-copy.bin`), so that a node back within moments resumes instead of being sent the
//! whole state again. A data dir of an earlier release, where the node was a Raft learner,
//! has its Raft database removed at the first start, and the learner's old Raft id is
//! removed from the membership by the leader at the node's request.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use atoll_cluster::{Cluster, ClusterError, FeedStats, Member, Pending, ReadMode, Store};
use atoll_state::{Command, Outcome, State, Table};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::auth::{ClusterSecret, RpcTls};
use crate::feed::{server_order, FeedClient, FeedFrame, FeedRequest, Resume};
use crate::protocol::REMOVE_PATH;

/// How long a write may take, its commit and this node's copy reaching it together.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a fresh read may take.
const READ_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between attempts while no server answers.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// A server whose stream failed is tried again only after the others, for this long.
const AVOID_FAILED: Duration = Duration::from_secs(10);
/// The file a stopped node keeps its copy in.
const COPY_FILE: &str = "feed-copy.bin";
/// The version of that file's contents.
const COPY_VERSION: u32 = 1;

/// How a compute node reaches its cluster.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// This node (not a server).
    pub member: Member,
    /// RPC addresses of servers to start from (`--retry-join`).
    pub servers: Vec<String>,
    /// Where the copy is kept across a restart, and where an earlier release's Raft
    /// database may be (`None`: nothing kept).
    pub data_dir: Option<PathBuf>,
    /// The secret every RPC request carries, if any.
    pub cluster_secret: Option<ClusterSecret>,
    /// The RPC client's TLS, when the node has TLS files.
    pub rpc_tls: Option<RpcTls>,
}

/// A compute node's [`Cluster`]. Cloning shares it.
#[derive(Clone)]
pub struct Replica {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    member: Member,
    node_id: u64,
    client: FeedClient,
    seeds: Vec<String>,
    data_dir: Option<PathBuf>,
    view: Mutex<View>,
    /// Whether the node holds a copy (after the first snapshot or resume).
    ready: watch::Sender<bool>,
    snapshots: AtomicU64,
    resumes: AtomicU64,
    entries: AtomicU64,
    streams: AtomicU64,
    /// The Raft id this node had as a learner of an earlier release, until the membership
    /// no longer holds it.
    old_raft_id: Mutex<Option<u64>>,
}

#[derive(Default)]
struct View {
    members: Vec<(u64, Member, bool)>,
    leader: Option<u64>,
    /// The RPC address of the server streaming to this node.
    server: Option<String>,
    /// When the stream last brought anything.
    contact: Option<Instant>,
    /// Where the copy is.
    position: Option<Resume>,
    /// Servers whose stream failed, and when.
    failed: HashMap<String, Instant>,
}

/// The copy a stopped node keeps.
#[derive(Serialize, Deserialize)]
struct KeptCopy {
    version: u32,
    history: u64,
    index: u64,
    state: State,
}

impl Replica {
    /// A node fed into `store` (which should be fresh). Restores the copy a graceful stop
    /// kept, and clears away an earlier release's Raft database. The stream starts with
    /// [`Replica::run`].
    pub fn start(config: ReplicaConfig, store: Store) -> Self {
        let mut position = None;
        let mut old_raft_id = None;
        if let Some(dir) = &config.data_dir {
            old_raft_id = retire_learner_log(dir);
            if let Some(kept) = load_copy(dir) {
                store.replace(kept.state, kept.index);
                position = Some(Resume {
                    history: kept.history,
                    index: kept.index,
                });
            }
        }
        Replica {
            inner: Arc::new(Inner {
                store,
                node_id: node_id(&config.member.name),
                member: config.member,
                client: FeedClient::new(config.cluster_secret, config.rpc_tls.as_ref()),
                seeds: config.servers,
                data_dir: config.data_dir,
                view: Mutex::new(View {
                    position,
                    ..View::default()
                }),
                ready: watch::Sender::new(false),
                snapshots: AtomicU64::new(0),
                resumes: AtomicU64::new(0),
                entries: AtomicU64::new(0),
                streams: AtomicU64::new(0),
                old_raft_id: Mutex::new(old_raft_id),
            }),
        }
    }

    /// What the stream has brought so far.
    pub fn feed_stats(&self) -> FeedStats {
        FeedStats {
            snapshots: self.inner.snapshots.load(Ordering::Relaxed),
            resumes: self.inner.resumes.load(Ordering::Relaxed),
            entries: self.inner.entries.load(Ordering::Relaxed),
            streams: self.inner.streams.load(Ordering::Relaxed),
        }
    }

    #[cfg(test)]
    pub(crate) fn inner_old_raft_id(&self) -> parking_lot::MutexGuard<'_, Option<u64>> {
        self.inner.old_raft_id.lock()
    }

    /// Waits until the node holds a copy of the state.
    pub async fn wait_ready(&self) {
        let mut ready = self.inner.ready.subscribe();
        let _ = ready.wait_for(|ready| *ready).await;
    }

    /// The servers to try, best first: by the node's rendezvous order over the voters the
    /// stream told of (the `--retry-join` addresses until then), servers that failed lately
    /// last.
    fn candidates(&self) -> Vec<String> {
        let view = self.inner.view.lock();
        let mut servers: Vec<String> = view
            .members
            .iter()
            .filter(|(_, member, voter)| *voter && member.server)
            .map(|(_, member, _)| member.rpc_addr.clone())
            .collect();
        for seed in &self.inner.seeds {
            if !servers.contains(seed) {
                servers.push(seed.clone());
            }
        }
        let order = server_order(&self.inner.member.name, &servers);
        let (mut fresh, failed): (Vec<String>, Vec<String>) = order.into_iter().partition(|s| {
            view.failed
                .get(s)
                .is_none_or(|at| at.elapsed() >= AVOID_FAILED)
        });
        fresh.extend(failed);
        fresh
    }

    /// The server this node prefers now, by the voters the stream told of.
    fn preferred(&self) -> Option<String> {
        let view = self.inner.view.lock();
        let servers: Vec<String> = view
            .members
            .iter()
            .filter(|(_, member, voter)| *voter && member.server)
            .map(|(_, member, _)| member.rpc_addr.clone())
            .collect();
        server_order(&self.inner.member.name, &servers)
            .into_iter()
            .find(|s| {
                view.failed
                    .get(s)
                    .is_none_or(|at| at.elapsed() >= AVOID_FAILED)
            })
    }

    /// Follows the cluster for ever: one stream at a time, on the best server that answers.
    pub async fn run(&self) {
        loop {
            let candidates = self.candidates();
            if candidates.is_empty() {
                tracing::warn!("no server to stream from: give --retry-join");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            for server in candidates {
                match self.stream_from(&server).await {
                    Ok(Moved::ToPreferred) => break,
                    Ok(Moved::Ended) => {
                        tracing::debug!(%server, "the server ended the feed");
                    }
                    Err(e) => {
                        tracing::debug!(%server, error = %e, "feed from this server failed");
                    }
                }
                let mut view = self.inner.view.lock();
                view.failed.insert(server.clone(), Instant::now());
                if view.server.as_deref() == Some(server.as_str()) {
                    view.server = None;
                }
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Reads one stream until it ends; applies what it brings.
    async fn stream_from(&self, server: &str) -> Result<Moved, crate::feed::FeedError> {
        let resume = self.inner.view.lock().position;
        let mut stream = self
            .inner
            .client
            .open(
                server,
                &FeedRequest {
                    node: self.inner.member.name.clone(),
                    resume,
                    version: crate::feed::FEED_VERSION,
                },
            )
            .await?;
        self.inner.streams.fetch_add(1, Ordering::Relaxed);
        {
            let mut view = self.inner.view.lock();
            view.server = Some(server.to_string());
            view.contact = Some(Instant::now());
        }
        tracing::info!(%server, resume = resume.is_some(), "streaming the cluster's state");
        while let Some(frame) = stream.next().await? {
            self.inner.view.lock().contact = Some(Instant::now());
            match frame {
                FeedFrame::Snapshot {
                    history,
                    index,
                    state,
                } => {
                    self.inner.store.replace(*state, index);
                    self.inner.view.lock().position = Some(Resume { history, index });
                    self.inner.snapshots.fetch_add(1, Ordering::Relaxed);
                    self.inner.ready.send_replace(true);
                }
                FeedFrame::Resumed { history, index } => {
                    self.inner.view.lock().position = Some(Resume { history, index });
                    self.inner.resumes.fetch_add(1, Ordering::Relaxed);
                    self.inner.ready.send_replace(true);
                }
                FeedFrame::Entries(entries) => {
                    let count = entries.len() as u64;
                    let mut last = None;
                    for entry in entries {
                        last = Some(entry.index);
                        self.inner.store.replay(entry.index, entry.changes);
                    }
                    self.inner.entries.fetch_add(count, Ordering::Relaxed);
                    if let Some(index) = last {
                        self.note_position(index);
                    }
                }
                FeedFrame::Applied { index } => {
                    self.inner.store.set_applied(index);
                    self.note_position(index);
                }
                FeedFrame::Servers { members, leader } => {
                    {
                        let mut view = self.inner.view.lock();
                        view.members = members;
                        view.leader = leader;
                    }
                    self.retire_old_id().await;
                    // A server that was away is back, or the servers changed: go to the
                    // one this node belongs to.
                    if self.preferred().is_some_and(|p| p != server) {
                        return Ok(Moved::ToPreferred);
                    }
                }
            }
        }
        Ok(Moved::Ended)
    }

    fn note_position(&self, index: u64) {
        let mut view = self.inner.view.lock();
        if let Some(position) = &mut view.position {
            position.index = position.index.max(index);
        }
    }

    /// Asks the leader to remove the Raft id this node had as a learner of an earlier
    /// release, while the membership still holds it.
    async fn retire_old_id(&self) {
        let Some(old) = *self.inner.old_raft_id.lock() else {
            return;
        };
        let (present, leader) = {
            let view = self.inner.view.lock();
            let present = view.members.iter().any(|(id, _, _)| *id == old);
            (present, self.leader_of(&view))
        };
        if !present {
            *self.inner.old_raft_id.lock() = None;
            return;
        }
        let Some(leader) = leader else { return };
        let reply: Result<Result<(), ClusterError>, _> = self
            .inner
            .client
            .rpc()
            .call(&leader.rpc_addr, REMOVE_PATH, &old, WRITE_TIMEOUT)
            .await;
        match reply {
            Ok(Ok(())) => {
                tracing::info!(
                    old_id = old,
                    "removed this node's Raft id of an earlier release"
                );
                *self.inner.old_raft_id.lock() = None;
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot remove the earlier Raft id yet"),
            Err(e) => tracing::debug!(error = %e, "cannot remove the earlier Raft id yet"),
        }
    }

    fn leader_of(&self, view: &View) -> Option<Member> {
        let leader = view.leader?;
        view.members
            .iter()
            .find(|(id, _, _)| *id == leader)
            .map(|(_, member, _)| member.clone())
    }

    /// The server streaming to this node, else the best candidate.
    fn server(&self) -> Option<String> {
        let current = self.inner.view.lock().server.clone();
        current.or_else(|| self.candidates().into_iter().next())
    }

    /// Waits until the copy has applied `index`.
    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), ClusterError> {
        let mut applied = self.inner.store.watch_applied();
        let reached = tokio::time::timeout_at(deadline, applied.wait_for(|a| *a >= index))
            .await
            .map(|r| r.map(|_| ()));
        match reached {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ClusterError::Stopped("the store closed".into())),
            Err(_) => Err(ClusterError::Timeout),
        }
    }

    async fn write_through(&self, command: Command) -> Result<(Outcome, u64), ClusterError> {
        let deadline = Instant::now() + WRITE_TIMEOUT;
        loop {
            let server = self.server().ok_or(ClusterError::NoLeader)?;
            let left = deadline.saturating_duration_since(Instant::now());
            match self.inner.client.write(&server, &command, left).await {
                Ok((outcome, index)) => {
                    self.wait_applied(index, deadline).await?;
                    return Ok((outcome, index));
                }
                // Nothing was proposed: try again (another server, or a leader elected).
                Err(ClusterError::NoLeader) | Err(ClusterError::NotLeader(_))
                    if Instant::now() + RETRY_PAUSE < deadline =>
                {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn fresh(&self, mode: ReadMode) -> Result<(), ClusterError> {
        let deadline = Instant::now() + READ_TIMEOUT;
        let server = self.server().ok_or(ClusterError::NoLeader)?;
        let left = deadline.saturating_duration_since(Instant::now());
        let index = self.inner.client.read_index(&server, mode, left).await?;
        self.wait_applied(index, deadline).await
    }

    /// Keeps the copy in the data dir, for a quick resume after a restart.
    pub async fn shutdown(&self) {
        let Some(dir) = self.inner.data_dir.clone() else {
            return;
        };
        let Some(position) = self.inner.view.lock().position else {
            return;
        };
        // The position first: the copy then holds at least every entry up to it, and
        // replaying an entry already held changes nothing.
        let store = self.inner.store.clone();
        let written = tokio::task::spawn_blocking(move || {
            let state = store.read(|state| state.without_kv());
            save_copy(&dir, position, state)
        })
        .await;
        match written {
            Ok(Ok(())) => tracing::info!(
                index = position.index,
                "kept the state's copy for the next start"
            ),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot keep the state's copy"),
            Err(e) => tracing::warn!(error = %e, "cannot keep the state's copy"),
        }
    }
}

/// Why a stream was left.
enum Moved {
    /// The server ended it.
    Ended,
    /// The node belongs on another server.
    ToPreferred,
}

/// A stable id for a node that has no Raft id: from its name.
fn node_id(name: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash >> 1
}

fn copy_path(dir: &Path) -> PathBuf {
    dir.join(COPY_FILE)
}

fn save_copy(dir: &Path, position: Resume, state: State) -> Result<(), String> {
    let kept = KeptCopy {
        version: COPY_VERSION,
        history: position.history,
        index: position.index,
        state,
    };
    let bytes = atoll_state::snapshot::encode(&kept).map_err(|e| e.to_string())?;
    let path = copy_path(dir);
    let temporary = dir.join(format!("{COPY_FILE}.tmp"));
    std::fs::write(&temporary, bytes).map_err(|e| e.to_string())?;
    std::fs::rename(&temporary, &path).map_err(|e| e.to_string())
}

/// The copy a graceful stop kept, if any; the file is removed, so that a copy is resumed
/// at most once (a crash later leaves none behind to mislead).
fn load_copy(dir: &Path) -> Option<KeptCopy> {
    let path = copy_path(dir);
    let bytes = std::fs::read(&path).ok()?;
    let _ = std::fs::remove_file(&path);
    match atoll_state::snapshot::decode::<KeptCopy>(&bytes) {
        Ok(kept) if kept.version <= COPY_VERSION => Some(kept),
        Ok(kept) => {
            tracing::warn!(
                version = kept.version,
                "ignoring a kept copy of a newer release"
            );
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "ignoring an unreadable kept copy");
            None
        }
    }
}

/// Removes the Raft database (and its snapshot files) a learner of an earlier release kept
/// in `dir`, returning the Raft id it had. A compute node now keeps nothing of the log.
fn retire_learner_log(dir: &Path) -> Option<u64> {
    let db_path = dir.join(crate::storage::DB_FILE);
    if !db_path.exists() {
        return None;
    }
    let old_id = crate::storage::open(dir)
        .ok()
        .and_then(|db| crate::storage::get_meta(&db, crate::storage::KEY_NODE_ID).ok()?)
        .and_then(|bytes| atoll_state::snapshot::decode::<u64>(&bytes).ok());
    match std::fs::remove_file(&db_path) {
        Ok(()) => tracing::info!(
            path = %db_path.display(),
            "removed the Raft log this compute node kept as a learner of an earlier release"
        ),
        Err(e) => {
            tracing::warn!(path = %db_path.display(), error = %e, "cannot remove the earlier Raft log")
        }
    }
    let snapshots = dir.join(crate::snapshot_file::SNAPSHOT_DIR);
    if snapshots.is_dir() {
        let _ = std::fs::remove_dir_all(&snapshots);
    }
    old_id
}

impl Cluster for Replica {
    fn store(&self) -> &Store {
        &self.inner.store
    }

    fn write(&self, command: Command) -> Pending<'_, (Outcome, u64)> {
        Box::pin(self.write_through(command))
    }

    fn linearize(&self, mode: ReadMode) -> Pending<'_, ()> {
        Box::pin(self.fresh(mode))
    }

    fn node_id(&self) -> u64 {
        self.inner.node_id
    }

    fn member(&self) -> &Member {
        &self.inner.member
    }

    fn leader_member(&self) -> Option<Member> {
        let view = self.inner.view.lock();
        self.leader_of(&view)
    }

    fn is_leader(&self) -> bool {
        false
    }

    fn last_contact_ms(&self) -> u64 {
        self.inner
            .view
            .lock()
            .contact
            .map_or(0, |at| at.elapsed().as_millis() as u64)
    }

    fn members(&self) -> Vec<(u64, Member, bool)> {
        self.inner.view.lock().members.clone()
    }

    fn step_down(&self) -> Pending<'_, ()> {
        Box::pin(async {
            Err(ClusterError::Refused(
                "a compute node does not lead".to_string(),
            ))
        })
    }

    fn remove_member(&self, id: u64) -> Pending<'_, ()> {
        Box::pin(async move {
            // This node is no Raft member: leaving the membership is done.
            if id == self.inner.node_id {
                return Ok(());
            }
            let leader = self.leader_member().ok_or(ClusterError::NoLeader)?;
            self.inner
                .client
                .rpc()
                .call(&leader.rpc_addr, REMOVE_PATH, &id, WRITE_TIMEOUT)
                .await
                .map_err(|_| ClusterError::NoLeader)?
        })
    }

    /// A compute node sends no heartbeats: the LAN pool judges it, and the server holding
    /// its stream reports it alive to the leader.
    fn heartbeat<'a>(&'a self, _node: &'a str) -> Pending<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn liveness(&self) -> HashMap<String, Instant> {
        HashMap::new()
    }

    fn feed_stats(&self) -> Option<FeedStats> {
        Some(Replica::feed_stats(self))
    }

    fn holds(&self, table: Table) -> bool {
        table != Table::Kv
    }

    fn server_http(&self) -> Option<String> {
        let view = self.inner.view.lock();
        let server = view.server.as_ref()?;
        view.members
            .iter()
            .find(|(_, member, _)| &member.rpc_addr == server)
            .map(|(_, member, _)| member.http_addr.clone())
            .filter(|http| !http.is_empty())
    }
}
