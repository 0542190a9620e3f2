//! `atoll nodesim` (hidden from `--help`): one process running N simulated compute nodes
//! against a cluster, so that the servers can be measured with thousands of compute nodes
//! on one machine (as Nomad's `nodesim` does for its benchmarks).
//!
//! Each simulated node is a few tokio tasks, no thread of its own. It registers itself as a
//! real compute node does (its catalog node with the `serfHealth` check, and its resources
//! through `Command::RegisterCompute`, in one batch entry), optionally keeps a LAN pool
//! membership on its own loopback address, learns the tasks placed on it, and reports each
//! `Running` with the same `Command::UpdateTask` a real node's task runner writes (the
//! task's services and checks included), without starting anything. The tasks a node
//! learns together are reported in one batch, as a real node's concurrent reports would be
//! grouped. How the nodes learn their tasks, and what differs from a real node, is in
//! bench/README.md ("Node simulator").

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use atoll_cluster::{node_uuid, ClusterError, MemberStatus};
use atoll_gossip::{Pool, PoolConfig, Profile};
use atoll_raft::client::{Hello, RpcClient, HEARTBEAT_PATH, HELLO_PATH, WRITE_PATH};
use atoll_raft::ClusterSecret;
use atoll_state::{
    Allocation, AppSpec, CheckSpec, CheckStatus, Command, ComputeNode, Outcome, Registration,
    TaskState, NODE_HEALTH_CHECK_ID,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::{mpsc, OnceCell, Semaphore};
use tokio::time::Instant;

use crate::config::DEFAULT_LAN_PORT;

/// How long one write may take, retries on another server included.
const WRITE_DEADLINE: Duration = Duration::from_secs(30);
/// How long one RPC may take.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before trying again when no leader is known or a write failed.
const RETRY_PAUSE: Duration = Duration::from_millis(250);
/// Pause before a lost event stream is opened again.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);
/// How often a node without a pool heartbeats to the leader (the agent's period).
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);
/// Nodes per shared connection to a server, by default.
const NODES_PER_CONNECTION: usize = 16;
/// How often the leader is looked up while nothing is written.
const LEADER_REFRESH: Duration = Duration::from_secs(2);
/// How often the servers' LAN pools are joined again by members that hold none alive.
const POOL_REJOIN: Duration = Duration::from_secs(5);

/// `atoll nodesim`.
#[derive(Debug, clap::Args)]
pub struct NodesimArgs {
    /// RPC address (IP:PORT) of a server; repeat for each (the servers' other addresses are
    /// learnt from them, as a compute node's `--retry-join` does).
    #[arg(long = "join", required = true)]
    pub join: Vec<String>,
    /// How many compute nodes to simulate.
    #[arg(long, default_value_t = 100)]
    pub nodes: usize,
    /// Node names are PREFIX-0, PREFIX-1, ...
    #[arg(long, default_value = "sim")]
    pub prefix: String,
    /// The first two octets of the nodes' loopback addresses: node i is at
    /// 127.X.(i / 250).(i % 250 + 1).
    #[arg(long, default_value_t = 77)]
    pub address_octet: u8,
    /// The datacenter of the nodes.
    #[arg(long, default_value = "dc1")]
    pub datacenter: String,
    /// CPUs each node offers.
    #[arg(long, default_value_t = 8.0)]
    pub cpus: f64,
    /// Memory (MiB) each node offers.
    #[arg(long, default_value_t = 16384.0)]
    pub mem: f64,
    /// Each node's dynamic port range.
    #[arg(long, default_value = "31000-32000")]
    pub port_range: String,
    /// How the nodes keep their membership beside their streams: `pool` makes each one a
    /// member of the LAN pool on its own address (port 8301), as a compute node's agent;
    /// `heartbeat` sends the leader each node's heartbeat every 500 ms (as nodes without a
    /// pool did before the feed); `none` leaves it to the feed.
    #[arg(long, value_enum, default_value_t = Membership::None)]
    pub membership: Membership,
    /// How the nodes learn the state: `feed` opens each node's own stream of the state on a
    /// server, as a compute node does (its server chosen by the node's name); `events`
    /// follows one server's Marathon event stream for all the nodes (a cheaper stand-in
    /// that needs nothing of the servers but their HTTP API).
    #[arg(long, value_enum, default_value_t = View::Feed)]
    pub view: View,
    /// HTTP address of the server whose event stream the nodes learn their tasks from
    /// (default: a server other than the leader, from the servers' hello).
    #[arg(long)]
    pub events_from: Option<String>,
    /// How many connections to each server the nodes share (0: one per 16 nodes, at most
    /// 256). A real node has its own; sharing one among thousands would let one stream
    /// reset, or one broken connection, fail every node at once.
    #[arg(long, default_value_t = 0)]
    pub connections: usize,
    /// Most writes in flight at once (registrations and reports of all the nodes).
    #[arg(long, default_value_t = 256)]
    pub max_in_flight: usize,
    /// Serve the simulator's counters as JSON on this address (`GET /`).
    #[arg(long)]
    pub stats: Option<SocketAddr>,
    /// The cluster's secret, as the agents' `--cluster-secret-file`.
    #[arg(long = "cluster-secret-file")]
    pub cluster_secret_file: Option<std::path::PathBuf>,
    /// The gossip key the agents were given (`--encrypt`): it also authenticates RPC.
    #[arg(long)]
    pub encrypt: Option<String>,
}

/// How the simulated nodes learn the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum View {
    /// A stream of the state per node.
    Feed,
    /// One Marathon event stream for all the nodes.
    Events,
}

/// How a simulated node keeps its membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Membership {
    /// A LAN pool member on the node's own loopback address.
    Pool,
    /// Heartbeats to the leader, as a node without a pool.
    Heartbeat,
    /// No membership of its own.
    None,
}

/// The simulator's counters, served by `--stats`.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) registered: AtomicU64,
    pool_members: AtomicU64,
    pub(crate) tasks_seen: AtomicU64,
    pub(crate) tasks_reported: AtomicU64,
    writes: AtomicU64,
    pub(crate) write_failures: AtomicU64,
    event_streams: AtomicU64,
    pub(crate) heartbeats: AtomicU64,
    pub(crate) heartbeat_failures: AtomicU64,
    pub(crate) streams_open: AtomicU64,
    pub(crate) stream_opens: AtomicU64,
    pub(crate) snapshots: AtomicU64,
    pub(crate) resumes: AtomicU64,
    pub(crate) entries: AtomicU64,
}

impl Counters {
    fn json(&self, nodes: usize) -> Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "nodes": nodes,
            "registered": get(&self.registered),
            "pool_members": get(&self.pool_members),
            "tasks_seen": get(&self.tasks_seen),
            "tasks_reported": get(&self.tasks_reported),
            "writes": get(&self.writes),
            "write_failures": get(&self.write_failures),
            "event_streams": get(&self.event_streams),
            "heartbeats": get(&self.heartbeats),
            "heartbeat_failures": get(&self.heartbeat_failures),
            "streams_open": get(&self.streams_open),
            "stream_opens": get(&self.stream_opens),
            "snapshots": get(&self.snapshots),
            "resumes": get(&self.resumes),
            "entries": get(&self.entries),
        })
    }
}

/// A task placed on a simulated node, as the node learnt it.
#[derive(Debug, Clone)]
struct Placed {
    id: String,
    app_id: String,
    version: String,
    ports: Vec<u16>,
}

/// Writes to the cluster as a compute node forwards them: to the leader, found through
/// the servers' answers.
pub(crate) struct Writer {
    /// Clients of separate connections, the nodes spread over them.
    clients: Vec<RpcClient>,
    servers: Vec<String>,
    leader: Mutex<Option<String>>,
    next: AtomicU64,
    slots: Semaphore,
    counters: Arc<Counters>,
}

impl Writer {
    /// Commits `command`; tried again on another server while it surely was not proposed.
    async fn write(&self, node: usize, command: &Command) -> anyhow::Result<Outcome> {
        let _slot = self.slots.acquire().await?;
        let deadline = Instant::now() + WRITE_DEADLINE;
        loop {
            let target = self.leader.lock().clone().unwrap_or_else(|| {
                let n = self.next.fetch_add(1, Ordering::Relaxed) as usize;
                self.servers[n % self.servers.len()].clone()
            });
            let reply: Result<Result<(Outcome, u64), ClusterError>, _> = self
                .client(node)
                .call(&target, WRITE_PATH, command, RPC_TIMEOUT)
                .await;
            self.counters.writes.fetch_add(1, Ordering::Relaxed);
            match reply {
                Ok(Ok((outcome, _))) => {
                    *self.leader.lock() = Some(target);
                    return Ok(outcome);
                }
                Ok(Err(ClusterError::NotLeader(leader))) => *self.leader.lock() = Some(leader),
                Ok(Err(ClusterError::NoLeader)) => {
                    *self.leader.lock() = None;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Ok(Err(e)) => return Err(anyhow!("{target}: {e}")),
                Err(e) if e.not_sent() => {
                    *self.leader.lock() = None;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(e) => return Err(anyhow!("{e}")),
            }
            if Instant::now() >= deadline {
                bail!("no leader took the write within {WRITE_DEADLINE:?}");
            }
        }
    }
}

impl Writer {
    /// The client node `node` sends through.
    fn client(&self, node: usize) -> &RpcClient {
        &self.clients[node % self.clients.len()]
    }
}

/// An app spec fetched once (`None`: it could not be read).
type SpecCell = Arc<OnceCell<Option<Arc<AppSpec>>>>;

/// The app specs the nodes' reports need, fetched once per version for all the nodes.
struct Apps {
    http: HttpClient,
    base: String,
    specs: Mutex<HashMap<(String, String), SpecCell>>,
}

impl Apps {
    async fn spec(&self, app_id: &str, version: &str) -> Option<Arc<AppSpec>> {
        let cell = self
            .specs
            .lock()
            .entry((app_id.to_string(), version.to_string()))
            .or_default()
            .clone();
        cell.get_or_init(|| async {
            let path = format!("/v2/apps{app_id}/versions/{version}");
            for _ in 0..20 {
                match get(&self.http, &self.base, &path).await {
                    Ok((200, body)) => {
                        return atoll_api::marathon::wire::parse_app(&body, version, None)
                            .map(|app| Arc::new(app.spec))
                            .map_err(|e| tracing::warn!(app = app_id, "unreadable app: {e:?}"))
                            .ok();
                    }
                    Ok((status, _)) => {
                        tracing::debug!(app = app_id, status, "app not readable yet")
                    }
                    Err(e) => tracing::debug!(app = app_id, error = %e, "app not readable yet"),
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            None
        })
        .await
        .clone()
    }
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

async fn get(http: &HttpClient, base: &str, path: &str) -> anyhow::Result<(u16, Bytes)> {
    let uri: hyper::Uri = format!("http://{base}{path}").parse()?;
    let response = tokio::time::timeout(RPC_TIMEOUT, http.get(uri))
        .await
        .map_err(|_| anyhow!("{base}{path}: no answer"))??;
    let status = response.status().as_u16();
    let body = tokio::time::timeout(RPC_TIMEOUT, response.into_body().collect())
        .await
        .map_err(|_| anyhow!("{base}{path}: body too slow"))??
        .to_bytes();
    Ok((status, body))
}

/// One simulated node.
pub(crate) struct SimNode {
    pub(crate) index: usize,
    pub(crate) name: String,
    pub(crate) address: Ipv4Addr,
}

/// Runs the simulator until interrupted.
pub async fn run(args: NodesimArgs) -> anyhow::Result<()> {
    let (low, high) = args
        .port_range
        .split_once('-')
        .and_then(|(a, b)| Some((a.parse::<u16>().ok()?, b.parse::<u16>().ok()?)))
        .filter(|(a, b)| a <= b)
        .ok_or_else(|| anyhow!("--port-range {:?} is not LOW-HIGH", args.port_range))?;
    if args.nodes > 250 * 256 {
        bail!("--nodes: at most {} nodes", 250 * 256);
    }
    let secret = match (&args.cluster_secret_file, &args.encrypt) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--cluster-secret-file {}", path.display()))?;
            Some(Arc::new(
                ClusterSecret::new(&text).map_err(|e| anyhow!("--cluster-secret-file: {e}"))?,
            ))
        }
        (None, Some(key)) => {
            use base64::Engine;
            let key = base64::engine::general_purpose::STANDARD
                .decode(key.trim())
                .map_err(|e| anyhow!("--encrypt: {e}"))?;
            Some(Arc::new(ClusterSecret::from_key(&key)))
        }
        (None, None) => None,
    };
    let counters = Arc::new(Counters::default());
    let connections = if args.connections > 0 {
        args.connections
    } else {
        args.nodes.div_ceil(NODES_PER_CONNECTION).clamp(1, 256)
    };
    let clients: Vec<RpcClient> = (0..connections)
        .map(|_| RpcClient::new(secret.clone(), None))
        .collect();
    let hello = hello_any(&clients[0], &args.join, &args.datacenter).await?;
    let servers: Vec<_> = hello.known.values().filter(|m| m.server).cloned().collect();
    let mut rpc: Vec<String> = servers.iter().map(|m| m.rpc_addr.clone()).collect();
    if rpc.is_empty() {
        rpc = args.join.clone();
    }
    let writer = Arc::new(Writer {
        clients,
        servers: rpc,
        leader: Mutex::new(None),
        next: AtomicU64::new(0),
        slots: Semaphore::new(args.max_in_flight.max(1)),
        counters: Arc::clone(&counters),
    });
    let http: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let events_from = match &args.events_from {
        Some(addr) => addr.clone(),
        None => pick_events_server(&http, &servers).await?,
    };
    if args.view == View::Events {
        tracing::info!(server = %events_from, "learning placed tasks from its event stream");
    }
    let apps = Arc::new(Apps {
        http: http.clone(),
        base: events_from.clone(),
        specs: Mutex::new(HashMap::new()),
    });

    let feed = Arc::new(crate::nodesim_feed::Feed::new(
        secret.as_deref().cloned(),
        connections,
        writer.servers.clone(),
        args.nodes,
        args.datacenter.clone(),
        Arc::clone(&counters),
        args.membership == Membership::Heartbeat,
        Arc::clone(&writer),
    ));
    if let Some(addr) = args.stats {
        let counters = Arc::clone(&counters);
        let nodes = args.nodes;
        let probe_feed = Arc::clone(&feed);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--stats {addr}"))?;
        let router = axum::Router::new()
            .route(
                "/",
                axum::routing::get(move || {
                    let counters = Arc::clone(&counters);
                    async move { axum::Json(counters.json(nodes)) }
                }),
            )
            .route(
                "/probe",
                axum::routing::post(move || {
                    let feed = Arc::clone(&probe_feed);
                    async move { axum::Json(feed.probe().await) }
                }),
            );
        tokio::spawn(async move { axum::serve(listener, router).await });
    }

    let mut inboxes: HashMap<String, mpsc::UnboundedSender<Placed>> = HashMap::new();
    let lan_servers: Vec<String> = servers
        .iter()
        .map(|m| m.lan_addr.clone())
        .filter(|a| !a.is_empty())
        .collect();
    let mut pools = Vec::new();
    for i in 0..args.nodes {
        let node = SimNode {
            index: i,
            name: format!("{}-{i}", args.prefix),
            address: Ipv4Addr::new(
                127,
                args.address_octet,
                (i / 250) as u8,
                (i % 250 + 1) as u8,
            ),
        };
        if args.membership == Membership::Pool {
            let pool = start_pool(&node, &args.datacenter).await?;
            pools.push((pool, node.name.clone()));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        inboxes.insert(node.name.clone(), tx);
        let compute = ComputeNode {
            node: node.name.clone(),
            cpus: args.cpus,
            mem: args.mem,
            port_range: (low, high),
            attributes: BTreeMap::new(),
            drivers: vec!["exec".to_string(), "docker".to_string()],
            busy_ports: Vec::new(),
        };
        match args.view {
            View::Feed => {
                let feed = Arc::clone(&feed);
                tokio::spawn(async move { feed.run_node(node, compute).await });
            }
            View::Events => {
                tokio::spawn(node_loop(
                    node,
                    args.datacenter.clone(),
                    compute,
                    rx,
                    Arc::clone(&writer),
                    Arc::clone(&apps),
                    Arc::clone(&counters),
                    args.membership == Membership::Heartbeat,
                ));
            }
        }
    }
    if !pools.is_empty() {
        tokio::spawn(keep_pools_joined(pools, lan_servers, Arc::clone(&counters)));
    }
    tokio::spawn(track_leader(
        http.clone(),
        events_from.clone(),
        Arc::clone(&writer),
    ));
    if args.view == View::Events {
        tokio::spawn(follow_events(
            http,
            events_from,
            Arc::new(inboxes),
            Arc::clone(&counters),
        ));
    }
    tokio::signal::ctrl_c().await?;
    Ok(())
}

/// The servers' hello, from the first `--join` address that answers.
async fn hello_any(client: &RpcClient, join: &[String], datacenter: &str) -> anyhow::Result<Hello> {
    let mine = Hello {
        id: 0,
        member: atoll_cluster::Member {
            name: "nodesim".to_string(),
            rpc_addr: String::new(),
            http_addr: String::new(),
            server: false,
            datacenter: datacenter.to_string(),
            dns_addr: String::new(),
            lan_addr: String::new(),
        },
        bootstrap_expect: 0,
        initialized: false,
        known: BTreeMap::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for addr in join {
            match client
                .call::<_, Hello>(addr, HELLO_PATH, &mine, RPC_TIMEOUT)
                .await
            {
                Ok(hello) if hello.initialized && !hello.known.is_empty() => return Ok(hello),
                Ok(_) => tracing::info!(server = %addr, "no cluster formed yet"),
                Err(e) => tracing::info!(server = %addr, error = %e, "no hello"),
            }
        }
        if Instant::now() >= deadline {
            bail!("no server of --join {join:?} answered with a formed cluster");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The HTTP address of a server that is not the leader (any server when there is one).
async fn pick_events_server(
    http: &HttpClient,
    servers: &[atoll_cluster::Member],
) -> anyhow::Result<String> {
    let mut leader = String::new();
    for server in servers {
        if let Ok((200, body)) = get(http, &server.http_addr, "/v1/status/leader").await {
            leader = serde_json::from_slice::<String>(&body).unwrap_or_default();
            break;
        }
    }
    servers
        .iter()
        .find(|s| s.rpc_addr != leader)
        .or(servers.first())
        .map(|s| s.http_addr.clone())
        .ok_or_else(|| anyhow!("the servers told no HTTP address"))
}

/// A LAN pool member at the node's address, as a compute node's agent runs.
async fn start_pool(node: &SimNode, datacenter: &str) -> anyhow::Result<Pool> {
    let tags: BTreeMap<String, String> = [
        ("role", "node".to_string()),
        ("dc", datacenter.to_string()),
        ("id", node_uuid(&node.name)),
        ("segment", String::new()),
        ("vsn", "2".to_string()),
        ("vsn_min", "2".to_string()),
        ("vsn_max", "3".to_string()),
        ("build", env!("CARGO_PKG_VERSION").to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Pool::start(PoolConfig {
        name: node.name.clone(),
        bind: SocketAddr::new(IpAddr::V4(node.address), DEFAULT_LAN_PORT),
        advertise: None,
        tags,
        profile: Profile::lan(),
        default_port: DEFAULT_LAN_PORT,
        encryption: None,
        datacenter: Some(datacenter.to_string()),
    })
    .await
    .map_err(|e| anyhow!("LAN pool of {} at {}: {e}", node.name, node.address))
}

/// Joins the servers' LAN pools from every simulated member that holds no other live
/// member, now and every few seconds (a compute node's `lan::join_servers`).
async fn keep_pools_joined(
    pools: Vec<(Pool, String)>,
    servers: Vec<String>,
    counters: Arc<Counters>,
) {
    let mut joined: HashSet<String> = HashSet::new();
    loop {
        for (pool, name) in &pools {
            let alone = pool
                .members()
                .iter()
                .filter(|m| m.status == MemberStatus::Alive)
                .count()
                <= 1;
            if alone {
                if let Err(e) = pool.join(&servers).await {
                    tracing::debug!(node = %name, error = %e, "LAN join failed");
                } else if joined.insert(name.clone()) {
                    counters.pool_members.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        tokio::time::sleep(POOL_REJOIN).await;
    }
}

/// One node: registers, then reports the tasks it learns of running, those it learns
/// together in one batch.
#[allow(clippy::too_many_arguments)]
async fn node_loop(
    node: SimNode,
    datacenter: String,
    compute: ComputeNode,
    mut inbox: mpsc::UnboundedReceiver<Placed>,
    writer: Arc<Writer>,
    apps: Arc<Apps>,
    counters: Arc<Counters>,
    heartbeats: bool,
) {
    let register = registration(&node, datacenter, compute);
    loop {
        match writer.write(node.index, &register).await {
            Ok(_) => break,
            Err(e) => {
                counters.write_failures.fetch_add(1, Ordering::Relaxed);
                tracing::info!(node = %node.name, error = %e, "registration failed; again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    counters.registered.fetch_add(1, Ordering::Relaxed);
    if heartbeats {
        tokio::spawn(heartbeat_loop(
            node.index,
            node.name.clone(),
            Arc::clone(&writer),
            Arc::clone(&counters),
        ));
    }
    let address = node.address.to_string();
    let mut reported: HashSet<String> = HashSet::new();
    let mut pending: Vec<Placed> = Vec::new();
    loop {
        if pending.is_empty() {
            match inbox.recv().await {
                Some(placed) => pending.push(placed),
                None => return,
            }
        }
        while let Ok(placed) = inbox.try_recv() {
            pending.push(placed);
        }
        pending.retain(|p| !reported.contains(&p.id));
        pending.sort_by(|a, b| a.id.cmp(&b.id));
        pending.dedup_by(|a, b| a.id == b.id);
        if pending.is_empty() {
            continue;
        }
        let mut commands = Vec::with_capacity(pending.len());
        for placed in &pending {
            let Some(app) = apps.spec(&placed.app_id, &placed.version).await else {
                continue;
            };
            let task = Allocation {
                id: placed.id.clone(),
                app_id: placed.app_id.clone(),
                app_version: placed.version.clone(),
                node: node.name.clone(),
                ports: placed.ports.clone(),
                cpus: app.cpus,
                mem: app.mem,
                desired_running: true,
                state: TaskState::Staging,
                message: String::new(),
                staged_at: String::new(),
                started_at: None,
                health_failures: 0,
                services: Vec::new(),
                create_index: 0,
                modify_index: 0,
            };
            commands.push(running_report(&app, &task, &address));
        }
        let count = commands.len() as u64;
        let command = match commands.len() {
            0 => {
                pending.clear();
                continue;
            }
            1 => commands.pop().expect("one command"),
            _ => Command::Batch(commands),
        };
        match writer.write(node.index, &command).await {
            Ok(_) => {
                counters.tasks_reported.fetch_add(count, Ordering::Relaxed);
                reported.extend(pending.drain(..).map(|p| p.id));
            }
            Err(e) => {
                counters.write_failures.fetch_add(1, Ordering::Relaxed);
                tracing::info!(node = %node.name, error = %e, "task report failed; again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Keeps the writer's idea of the leader fresh while nothing is written (the heartbeats
/// go to it), from the server's `/v1/status/leader`.
async fn track_leader(http: HttpClient, server: String, writer: Arc<Writer>) {
    loop {
        if let Ok((200, body)) = get(&http, &server, "/v1/status/leader").await {
            if let Ok(leader) = serde_json::from_slice::<String>(&body) {
                if !leader.is_empty() {
                    *writer.leader.lock() = Some(leader);
                }
            }
        }
        tokio::time::sleep(LEADER_REFRESH).await;
    }
}

/// A node's heartbeats to the leader, every 500 ms from a random phase.
pub(crate) async fn heartbeat_loop(
    index: usize,
    node: String,
    writer: Arc<Writer>,
    counters: Arc<Counters>,
) {
    let phase = Duration::from_millis(rand::random::<u64>() % HEARTBEAT_EVERY.as_millis() as u64);
    tokio::time::sleep(phase).await;
    let mut ticker = tokio::time::interval(HEARTBEAT_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(leader) = writer.leader.lock().clone() else {
            continue;
        };
        let reply: Result<Result<(), ClusterError>, _> = writer
            .client(index)
            .call(&leader, HEARTBEAT_PATH, &node, Duration::from_secs(1))
            .await;
        match reply {
            Ok(Ok(())) => {
                counters.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                tracing::debug!(%node, error = %e, "heartbeat refused");
                counters.heartbeat_failures.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::debug!(%node, error = %e, "heartbeat failed");
                counters.heartbeat_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// What a node writes when it starts: its catalog node with `serfHealth` (the agent's
/// registration) and its resources (the task runner's), in one entry.
pub(crate) fn registration(node: &SimNode, datacenter: String, compute: ComputeNode) -> Command {
    let registration = Registration {
        node: node.name.clone(),
        address: node.address.to_string(),
        datacenter,
        checks: vec![CheckSpec {
            check_id: NODE_HEALTH_CHECK_ID.to_string(),
            name: "Serf Health Status".to_string(),
            status: Some(CheckStatus::Passing),
            output: "Agent alive and reachable".to_string(),
            ..Default::default()
        }],
        ..Default::default()
    };
    Command::Batch(vec![
        Command::Register(Box::new(registration)),
        Command::RegisterCompute(compute),
    ])
}

/// The `Running` report of `task`, with the services (and checks) a real node registers
/// for it at `address`.
pub(crate) fn running_report(app: &AppSpec, task: &Allocation, address: &str) -> Command {
    Command::UpdateTask {
        id: task.id.clone(),
        state: TaskState::Running,
        message: String::new(),
        at: atoll_workload::now_rfc3339(),
        services: atoll_workload::node::services_for(app, task, address, address),
    }
}

/// Follows the server's Marathon event stream and hands each task placed on a simulated
/// node to it; on every (re)connection, the tasks already staged are handed out too.
async fn follow_events(
    http: HttpClient,
    server: String,
    inboxes: Arc<HashMap<String, mpsc::UnboundedSender<Placed>>>,
    counters: Arc<Counters>,
) {
    let deliver = |value: &Value| {
        let (Some(node), Some(id)) = (
            value.get("slaveId").and_then(Value::as_str),
            value
                .get("taskId")
                .and_then(Value::as_str)
                .or(value.get("id").and_then(Value::as_str)),
        ) else {
            return;
        };
        let Some(inbox) = inboxes.get(node) else {
            return;
        };
        let placed = Placed {
            id: id.to_string(),
            app_id: value
                .get("appId")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            version: value
                .get("version")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            ports: value
                .get("ports")
                .and_then(Value::as_array)
                .map(|ports| {
                    ports
                        .iter()
                        .filter_map(|p| p.as_u64().and_then(|p| u16::try_from(p).ok()))
                        .collect()
                })
                .unwrap_or_default(),
        };
        counters.tasks_seen.fetch_add(1, Ordering::Relaxed);
        let _ = inbox.send(placed);
    };
    loop {
        let uri: hyper::Uri = match format!("http://{server}/v2/events").parse() {
            Ok(uri) => uri,
            Err(e) => {
                tracing::error!("events address {server:?}: {e}");
                return;
            }
        };
        let request = hyper::Request::get(uri)
            .header("accept", "text/event-stream")
            .body(Empty::<Bytes>::new())
            .expect("a valid request");
        let response = match http.request(request).await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                tracing::info!(status = %r.status(), "event stream refused");
                tokio::time::sleep(RECONNECT_PAUSE).await;
                continue;
            }
            Err(e) => {
                tracing::info!(error = %e, "event stream unreachable");
                tokio::time::sleep(RECONNECT_PAUSE).await;
                continue;
            }
        };
        counters.event_streams.fetch_add(1, Ordering::Relaxed);
        // Tasks staged before the stream opened.
        match get(&http, &server, "/v2/tasks").await {
            Ok((200, body)) => {
                if let Ok(value) = serde_json::from_slice::<Value>(&body) {
                    for task in value
                        .get("tasks")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        if task.get("state").and_then(Value::as_str) == Some("TASK_STAGING") {
                            deliver(task);
                        }
                    }
                }
            }
            other => tracing::info!(?other, "staged tasks not listed"),
        }
        let mut body = response.into_body();
        let mut buffer: Vec<u8> = Vec::new();
        loop {
            let frame = match body.frame().await {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    tracing::info!(error = %e, "event stream broke");
                    break;
                }
                None => break,
            };
            let Some(data) = frame.data_ref() else {
                continue;
            };
            buffer.extend_from_slice(data);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let Some(json) = line.strip_prefix(b"data:") else {
                    continue;
                };
                let Ok(value) = serde_json::from_slice::<Value>(json) else {
                    continue;
                };
                if value.get("eventType").and_then(Value::as_str) == Some("status_update_event")
                    && value.get("taskStatus").and_then(Value::as_str) == Some("TASK_STAGING")
                {
                    deliver(&value);
                }
            }
        }
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}
