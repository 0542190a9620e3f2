//! The simulated nodes' view of the state through the compute-node feed: each node opens
//! its own stream on the server its name hashes to (moving on when it breaks, resuming
//! from its position), keeps what it needs of the state (the tasks placed on it, and the
//! app specs all the nodes share), and reports its tasks through that server as a compute
//! node does. `probe` times a catalog change's way to every node's view.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use atoll_cluster::ClusterError;
use atoll_raft::feed::server_order;
use atoll_raft::{ClusterSecret, FeedClient, FeedFrame, FeedRequest, Resume};
use atoll_state::{
    Allocation, AppSpec, Change, Command, ComputeNode, Registration, State, TaskState,
};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::nodesim::{heartbeat_loop, registration, running_report, Counters, SimNode, Writer};

/// How long a write through a node's server may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before a failed write or a lost stream is tried again.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// The longest pause after failed reports.
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// How long a probe waits for every node's view.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// What the simulated nodes on the feed share.
pub(crate) struct Feed {
    clients: Vec<FeedClient>,
    servers: Vec<String>,
    datacenter: String,
    counters: Arc<Counters>,
    heartbeats: bool,
    writer: Arc<Writer>,
    /// App specs by (id, version), learnt from any node's stream.
    specs: Mutex<HashMap<(String, String), Arc<AppSpec>>>,
    /// Each node's applied index.
    applied: Vec<AtomicU64>,
    probe: Mutex<Option<Probe>>,
    probes: AtomicU64,
}

/// A catalog change being timed: the index it committed at, when it was acknowledged,
/// and when each node's view first held it.
struct Probe {
    index: u64,
    acknowledged: Instant,
    reached: Vec<Option<Duration>>,
}

impl Feed {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        secret: Option<ClusterSecret>,
        connections: usize,
        servers: Vec<String>,
        nodes: usize,
        datacenter: String,
        counters: Arc<Counters>,
        heartbeats: bool,
        writer: Arc<Writer>,
    ) -> Feed {
        Feed {
            clients: (0..connections.max(1))
                .map(|_| FeedClient::new(secret.clone(), None))
                .collect(),
            servers,
            datacenter,
            counters,
            heartbeats,
            writer,
            specs: Mutex::new(HashMap::new()),
            applied: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
            probe: Mutex::new(None),
            probes: AtomicU64::new(0),
        }
    }

    /// Commits `command` through `server`, as a compute node writes through its server:
    /// the index of the entry that holds it.
    async fn write(
        &self,
        node: usize,
        server: &str,
        command: &Command,
    ) -> Result<u64, ClusterError> {
        let client = &self.clients[node % self.clients.len()];
        client
            .write(server, command, WRITE_TIMEOUT)
            .await
            .map(|(_, index)| index)
    }

    fn learn_spec(&self, app: &AppSpec) {
        let key = (app.id.clone(), app.version.clone());
        self.specs
            .lock()
            .entry(key)
            .or_insert_with(|| Arc::new(app.clone()));
    }

    fn learn_state(&self, state: &State) {
        for app in state.workload.apps.values() {
            self.learn_spec(app);
        }
        for versions in state.workload.history.values() {
            for app in versions {
                self.learn_spec(app);
            }
        }
    }

    fn spec(&self, app_id: &str, version: &str) -> Option<Arc<AppSpec>> {
        self.specs
            .lock()
            .get(&(app_id.to_string(), version.to_string()))
            .cloned()
    }

    /// Notes that node `index` holds everything up to `applied`.
    fn advance(&self, index: usize, applied: u64) {
        self.applied[index].store(applied, Ordering::Relaxed);
        let mut probe = self.probe.lock();
        if let Some(probe) = probe.as_mut() {
            if applied >= probe.index && probe.reached[index].is_none() {
                probe.reached[index] = Some(probe.acknowledged.elapsed());
            }
        }
    }

    /// One simulated node, for the life of the process.
    pub(crate) async fn run_node(self: Arc<Self>, node: SimNode, compute: ComputeNode) {
        let order = server_order(&node.name, &self.servers);
        let register = registration(&node, self.datacenter.clone(), compute);
        let mut attempt = 0usize;
        loop {
            let server = &order[attempt % order.len()];
            match self.write(node.index, server, &register).await {
                Ok(_) => break,
                Err(e) => {
                    self.counters.write_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(node = %node.name, %server, error = %e, "registration failed; again");
                    attempt += 1;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
        self.counters.registered.fetch_add(1, Ordering::Relaxed);
        if self.heartbeats {
            tokio::spawn(heartbeat_loop(
                node.index,
                node.name.clone(),
                Arc::clone(&self.writer),
                Arc::clone(&self.counters),
            ));
        }
        let address = node.address.to_string();
        let client = self.clients[node.index % self.clients.len()].clone();
        let mut resume: Option<Resume> = None;
        let mut mine: BTreeMap<String, Allocation> = BTreeMap::new();
        // What this node reported of each task and the entry holding the report, so that a
        // report is sent once, and again only if the task is not in that state once the
        // node's view holds the entry (a report a batch's other command made fail).
        let mut reported: HashMap<String, (TaskState, u64)> = HashMap::new();
        let mut applied_here = 0u64;
        // After a failed report, none before this (the cluster is busy or has no leader).
        let mut quiet_until = Instant::now();
        let mut backoff = RETRY_PAUSE;
        let mut attempt = 0usize;
        loop {
            let server = order[attempt % order.len()].clone();
            let request = FeedRequest {
                node: node.name.clone(),
                resume,
                version: atoll_raft::feed::FEED_VERSION,
                datacenter: self.datacenter.clone(),
            };
            let mut stream = match client.open(&server, &request).await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(node = %node.name, %server, error = %e, "no stream; the next server");
                    attempt += 1;
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
            };
            self.counters.stream_opens.fetch_add(1, Ordering::Relaxed);
            self.counters.streams_open.fetch_add(1, Ordering::Relaxed);
            loop {
                let frame = match stream.next().await {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(node = %node.name, %server, error = %e, "stream lost; the next server");
                        attempt += 1;
                        break;
                    }
                };
                let applied = match frame {
                    FeedFrame::Snapshot {
                        history,
                        index,
                        state,
                    } => {
                        self.counters.snapshots.fetch_add(1, Ordering::Relaxed);
                        self.learn_state(&state);
                        mine = state
                            .workload
                            .tasks
                            .values()
                            .filter(|t| t.node == node.name)
                            .map(|t| (t.id.clone(), t.clone()))
                            .collect();
                        resume = Some(Resume { history, index });
                        Some(index)
                    }
                    FeedFrame::Resumed { history, index } => {
                        self.counters.resumes.fetch_add(1, Ordering::Relaxed);
                        resume = Some(Resume { history, index });
                        None
                    }
                    FeedFrame::Entries(entries) => {
                        self.counters
                            .entries
                            .fetch_add(entries.len() as u64, Ordering::Relaxed);
                        let mut last = None;
                        for entry in entries {
                            for change in &entry.changes {
                                self.note_change(&node.name, change, &mut mine);
                            }
                            last = Some(entry.index);
                        }
                        last
                    }
                    FeedFrame::Applied { index } => Some(index),
                    FeedFrame::Servers { .. } => None,
                };
                if let Some(applied) = applied {
                    applied_here = applied;
                    if let Some(resume) = resume.as_mut() {
                        resume.index = resume.index.max(applied);
                    }
                    self.advance(node.index, applied);
                }
                if Instant::now() >= quiet_until {
                    if self
                        .act(&node, &server, &address, &mine, &mut reported, applied_here)
                        .await
                    {
                        backoff = RETRY_PAUSE;
                    } else {
                        quiet_until = Instant::now() + backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
            self.counters.streams_open.fetch_sub(1, Ordering::Relaxed);
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Follows the tasks placed on `node` and the apps' specs.
    fn note_change(&self, node: &str, change: &Change, mine: &mut BTreeMap<String, Allocation>) {
        match change {
            Change::Task(row) => match &row.new {
                Some(task) if task.node == node => {
                    mine.insert(row.key.clone(), task.clone());
                }
                _ => {
                    mine.remove(&row.key);
                }
            },
            Change::App(row) => {
                if let Some(app) = &row.new {
                    self.learn_spec(app);
                }
            }
            Change::AppHistory(row) => {
                for app in row.new.iter().flatten() {
                    self.learn_spec(app);
                }
            }
            _ => {}
        }
    }

    /// Reports, in one write, each new task of the node running and each task asked to
    /// stop killed, as its task runner would once its driver did; false when the write
    /// failed (it is tried again later).
    async fn act(
        &self,
        node: &SimNode,
        server: &str,
        address: &str,
        mine: &BTreeMap<String, Allocation>,
        reported: &mut HashMap<String, (TaskState, u64)>,
        applied: u64,
    ) -> bool {
        reported.retain(|id, _| mine.contains_key(id));
        let mut commands = Vec::new();
        let mut states = Vec::new();
        for task in mine.values() {
            let wanted = if !task.desired_running && !task.state.is_terminal() {
                TaskState::Killed
            } else if task.desired_running && task.state == TaskState::Staging {
                TaskState::Running
            } else {
                continue;
            };
            if let Some((state, index)) = reported.get(&task.id) {
                if *state == wanted && applied < *index {
                    continue;
                }
            }
            let command = match wanted {
                TaskState::Running => {
                    let Some(app) = self.spec(&task.app_id, &task.app_version) else {
                        continue;
                    };
                    running_report(&app, task, address)
                }
                _ => Command::UpdateTask {
                    id: task.id.clone(),
                    state: TaskState::Killed,
                    message: "stopped".to_string(),
                    at: atoll_workload::now_rfc3339(),
                    services: Vec::new(),
                },
            };
            commands.push(command);
            states.push((task.id.clone(), wanted));
        }
        if commands.is_empty() {
            return true;
        }
        let count = commands.len() as u64;
        let command = if commands.len() == 1 {
            commands.pop().expect("one command")
        } else {
            Command::Batch(commands)
        };
        match self.write(node.index, server, &command).await {
            Ok(index) => {
                self.counters
                    .tasks_reported
                    .fetch_add(count, Ordering::Relaxed);
                reported.extend(states.into_iter().map(|(id, state)| (id, (state, index))));
                true
            }
            Err(e) => {
                // Tried again with a later frame (a keepalive comes every second).
                self.counters.write_failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(node = %node.name, error = %e, "task report failed");
                false
            }
        }
    }

    /// Registers a catalog node of its own through a server and times the entry's way to
    /// every simulated node's view: from the write's acknowledgement (committed and
    /// applied on the leader) to each node's applied index reaching it.
    pub(crate) async fn probe(&self) -> Value {
        let n = self.probes.fetch_add(1, Ordering::Relaxed);
        let command = Command::Register(Box::new(Registration {
            node: format!("nodesim-probe-{n}"),
            address: "127.0.0.1".to_string(),
            datacenter: self.datacenter.clone(),
            ..Default::default()
        }));
        let Some(server) = self.servers.first() else {
            return json!({ "error": "no server" });
        };
        let index = match self.clients[0].write(server, &command, WRITE_TIMEOUT).await {
            Ok((_, index)) => index,
            Err(e) => return json!({ "error": e.to_string() }),
        };
        let acknowledged = Instant::now();
        {
            let mut reached: Vec<Option<Duration>> = vec![None; self.applied.len()];
            for (i, applied) in self.applied.iter().enumerate() {
                if applied.load(Ordering::Relaxed) >= index {
                    reached[i] = Some(Duration::ZERO);
                }
            }
            *self.probe.lock() = Some(Probe {
                index,
                acknowledged,
                reached,
            });
        }
        loop {
            let done = self
                .probe
                .lock()
                .as_ref()
                .is_some_and(|p| p.reached.iter().all(Option::is_some));
            if done || acknowledged.elapsed() >= PROBE_TIMEOUT {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let probe = self.probe.lock().take();
        let Some(probe) = probe else {
            return json!({ "error": "probe lost" });
        };
        let mut times: Vec<f64> = probe
            .reached
            .iter()
            .flatten()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        times.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| -> Value {
            if times.is_empty() {
                return Value::Null;
            }
            let i = ((times.len() as f64 - 1.0) * q).round() as usize;
            json!(times[i])
        };
        json!({
            "index": index,
            "nodes": probe.reached.len(),
            "reached": times.len(),
            "p50_ms": at(0.50),
            "p99_ms": at(0.99),
            "max_ms": at(1.0),
        })
    }
}
