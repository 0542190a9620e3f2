//! The agent's check runner: one task owns every timer and probe of this node's checks.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use atoll_cluster::{ClusterError, ClusterHandle};
use atoll_state::{
    Check, CheckDefinition, CheckKind, CheckSpec, CheckStatus, Command, Deregistration, Outcome,
    Registration, Rejection, ServiceSpec, Table, NODE_HEALTH_CHECK_ID,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::checks::{
    http_client, probe_docker, probe_http, probe_script, probe_task_command, probe_tcp,
    TaskCommands, Thresholds,
};
use crate::liveness::Autopilot;

/// Default run interval when a check gives none.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Default per-run timeout, as Consul's.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default per-run timeout of script and Docker checks, as Consul's.
const DEFAULT_SCRIPT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often start-up repeats, as a warning, that it is still waiting to register the node.
const REGISTER_NAG: Duration = Duration::from_secs(30);
/// Pause between attempts to register the node at start-up.
const REGISTER_RETRY: Duration = Duration::from_millis(200);
/// Retry delay after a failed write.
const RETRY: Duration = Duration::from_secs(1);

/// Service (name and id) under which servers register themselves. Like Consul's, it lives
/// in the catalog only, not among the agent's own services.
pub const SERVER_SERVICE: &str = "consul";

/// Meta key of the `consul` service holding the server's WAN gossip port: the servers of a
/// datacenter find each other's WAN address through it and join (Consul's flood join).
pub const WAN_JOIN_PORT_META: &str = "wan_join_port";

/// Identity of this node.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Node name.
    pub node: String,
    /// Node address.
    pub address: String,
    /// Datacenter.
    pub datacenter: String,
    /// On servers, the Raft port: the node then registers the `consul` service on it, as
    /// Consul's servers do (clients look servers up as `consul.service.consul`).
    pub server_port: Option<u16>,
    /// Node metadata (`--node-attr k=v`).
    pub node_meta: std::collections::BTreeMap<String, String>,
    /// A node whose heartbeats stop for this long is marked failed (servers enforce it).
    pub heartbeat_ttl: Duration,
    /// Dead-server cleanup, run by the leader.
    pub autopilot: Autopilot,
    /// Whether script and Docker checks may be registered and are run
    /// (`--enable-script-checks`, Consul's `enable_script_checks`).
    pub enable_script_checks: bool,
    /// The node's LAN gossip pool (`None`: it runs none). A server's leader judges the
    /// health of the nodes it knows from it.
    pub lan: Option<Arc<dyn atoll_cluster::LanPool>>,
}

/// Errors of agent operations.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No such check on this node.
    #[error("Unknown check ID {0:?}")]
    UnknownCheck(String),
    /// The check is not a TTL check, so it cannot be updated by hand.
    #[error("CheckID {0:?} does not have associated TTL")]
    NotTtl(String),
    /// Raft refused or failed the write.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The state machine rejected the write.
    #[error(transparent)]
    Rejected(#[from] Rejection),
}

/// A loop that runs for the life of the process, with the name it is reported under.
pub type Loop = (&'static str, Pin<Box<dyn Future<Output = ()> + Send>>);

/// The agent's long-lived loops: the check runner and the heartbeats (and, on servers, the
/// leader's watch of them). The caller runs them for the life of the process and supervises
/// them: a loop that ends or panics must not leave the node serving without it.
#[must_use = "the agent's loops do nothing unless they are run"]
pub struct AgentLoops(pub Vec<Loop>);

impl AgentLoops {
    /// Spawns every loop on the current runtime, unsupervised (for tests).
    pub fn spawn(self) {
        for (_, task) in self.0 {
            tokio::spawn(task);
        }
    }
}

/// Handle on the local agent. Cloning shares it.
#[derive(Clone)]
pub struct Agent {
    cluster: ClusterHandle,
    config: Arc<AgentConfig>,
    ttl_resets: mpsc::UnboundedSender<String>,
    stop: Arc<tokio::sync::Notify>,
    sessions: crate::sessions::Sessions,
}

impl Agent {
    /// Registers this node (with its node health check) and returns the agent with its
    /// loops (the check runner, the heartbeats), which the caller runs. `tasks` runs the
    /// commands of task command checks; nodes that run no tasks pass `None`, and such
    /// checks are then critical.
    pub async fn start(
        cluster: ClusterHandle,
        config: AgentConfig,
        tasks: Option<Arc<dyn TaskCommands>>,
    ) -> Result<(Agent, AgentLoops), AgentError> {
        Self::start_with_server_meta(cluster, config, BTreeMap::new(), tasks).await
    }

    /// [`Agent::start`], with service metadata for the `consul` service a server registers
    /// (such as `wan_join_port`, the port of its WAN gossip pool, through which the other
    /// servers of its datacenter join it); ignored on a node that is not a server.
    pub async fn start_with_server_meta(
        cluster: ClusterHandle,
        config: AgentConfig,
        server_meta: BTreeMap<String, String>,
        tasks: Option<Arc<dyn TaskCommands>>,
    ) -> Result<(Agent, AgentLoops), AgentError> {
        let registration = Registration {
            node: config.node.clone(),
            address: config.address.clone(),
            datacenter: config.datacenter.clone(),
            node_meta: config.node_meta.clone(),
            checks: vec![CheckSpec {
                check_id: NODE_HEALTH_CHECK_ID.to_string(),
                name: "Serf Health Status".to_string(),
                status: Some(CheckStatus::Passing),
                output: "Agent alive and reachable".to_string(),
                ..Default::default()
            }],
            service: config.server_port.map(|port| ServiceSpec {
                id: SERVER_SERVICE.to_string(),
                name: SERVER_SERVICE.to_string(),
                port,
                meta: server_meta,
                ..Default::default()
            }),
            ..Default::default()
        };
        // Right after an election or a restart the leader may not be reachable yet, and a
        // restarting cluster may need its other servers first: wait as long as it takes (the
        // caller stops waiting on shutdown), saying so now and then.
        let mut nag_at = Instant::now() + REGISTER_NAG;
        loop {
            match cluster
                .write(Command::Register(Box::new(registration.clone())))
                .await
            {
                Ok((Outcome::Rejected(rejection), _)) => return Err(rejection.into()),
                Ok(_) => break,
                Err(e @ ClusterError::Refused(_)) => return Err(e.into()),
                Err(e) if Instant::now() >= nag_at => {
                    tracing::warn!(error = %e, "still waiting for a cluster leader to register this node");
                    nag_at = Instant::now() + REGISTER_NAG;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "waiting for the cluster to register this node");
                }
            }
            tokio::time::sleep(REGISTER_RETRY).await;
        }
        let (ttl_resets, resets) = mpsc::unbounded_channel();
        let config = Arc::new(config);
        let runner = Runner {
            cluster: cluster.clone(),
            node: config.node.clone(),
            probers: Probers {
                tasks,
                scripts: config.enable_script_checks,
            },
            probes: HashMap::new(),
            ttl_deadlines: HashMap::new(),
            critical_since: HashMap::new(),
            generation: 0,
        };
        // Heartbeats go on beside the LAN pool: the leader's dead-server cleanup counts a
        // server's silence by them, and they judge a node the leader's pool does not know.
        let mut loops: Vec<Loop> = vec![
            ("the check runner", Box::pin(runner.run(resets))),
            (
                "the heartbeats",
                Box::pin(crate::liveness::send_heartbeats(
                    cluster.clone(),
                    config.node.clone(),
                )),
            ),
        ];
        let (sessions, session_loop) = crate::sessions::Sessions::new(cluster.clone());
        loops.push(("the session timers", session_loop));
        if config.server_port.is_some() {
            loops.push((
                "the heartbeat watch",
                Box::pin(crate::liveness::watch_heartbeats(
                    cluster.clone(),
                    config.heartbeat_ttl,
                    config.autopilot.clone(),
                    config.lan.clone(),
                )),
            ));
            if let Some(lan) = &config.lan {
                loops.push((
                    "the LAN pool watch",
                    Box::pin(crate::liveness::watch_pool(
                        cluster.clone(),
                        lan.clone(),
                        config.heartbeat_ttl,
                    )),
                ));
            }
        }
        let agent = Agent {
            cluster,
            config,
            ttl_resets,
            stop: Arc::new(tokio::sync::Notify::new()),
            sessions,
        };
        Ok((agent, AgentLoops(loops)))
    }

    /// Leaves the cluster gracefully: the node and its services leave the catalog, the node
    /// leaves the Raft membership (unless it is the last server), and the agent stops.
    pub async fn leave(&self) -> Result<(), AgentError> {
        let command = Command::Deregister(Deregistration {
            node: self.config.node.clone(),
            service_id: None,
            check_id: None,
        });
        self.cluster.write(command).await?;
        let last_server = self.config.server_port.is_some() && self.cluster.peers().len() <= 1;
        if !last_server {
            self.cluster.remove_member(self.cluster.node_id()).await?;
        }
        tracing::info!("left the cluster");
        self.stop.notify_one();
        Ok(())
    }

    /// Resolves once the agent has left and the process should stop.
    pub async fn stopped(&self) {
        self.stop.notified().await
    }

    /// This node's identity.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// The cluster handle this agent writes through.
    pub fn cluster(&self) -> &ClusterHandle {
        &self.cluster
    }

    /// Session renewals and lock delays (see the `sessions` module).
    pub fn sessions(&self) -> &crate::sessions::Sessions {
        &self.sessions
    }

    /// Sets a TTL check's status (Consul's `/v1/agent/check/{pass,warn,fail,update}`): resets
    /// its timer, and writes through Raft only if status or output changed.
    pub async fn update_ttl(
        &self,
        check_id: &str,
        status: CheckStatus,
        output: String,
    ) -> Result<(), AgentError> {
        let current = self.cluster.store().read(|s| {
            s.checks_on_node(&self.config.node)
                .find(|c| c.check_id == check_id)
                .map(|c| {
                    (
                        matches!(c.definition.kind(), CheckKind::Ttl(_)),
                        c.status,
                        c.output.clone(),
                    )
                })
        });
        let Some((is_ttl, current_status, current_output)) = current else {
            return Err(AgentError::UnknownCheck(check_id.to_string()));
        };
        if !is_ttl {
            return Err(AgentError::NotTtl(check_id.to_string()));
        }
        // The runner task owns the timers; it outlives every handle, so a closed channel
        // only happens during shutdown, when the reset no longer matters.
        let _ = self.ttl_resets.send(check_id.to_string());
        if current_status == status && current_output == output {
            return Ok(());
        }
        let command = Command::UpdateCheck {
            node: self.config.node.clone(),
            check_id: check_id.to_string(),
            status,
            output,
        };
        match self.cluster.write(command).await? {
            (Outcome::Rejected(rejection), _) => Err(rejection.into()),
            _ => Ok(()),
        }
    }
}

struct ProbeResult {
    check_id: String,
    generation: u64,
    status: CheckStatus,
    output: String,
    /// The first result of this probe: its output is written even without a status
    /// change, so a check that starts as it was registered still says why.
    first: bool,
}

struct Probe {
    definition: CheckDefinition,
    generation: u64,
    task: JoinHandle<()>,
}

/// What the probes run with: whatever runs commands in tasks and containers, and whether
/// script and Docker checks may run.
#[derive(Clone)]
struct Probers {
    tasks: Option<Arc<dyn TaskCommands>>,
    scripts: bool,
}

struct Runner {
    cluster: ClusterHandle,
    node: String,
    probers: Probers,
    probes: HashMap<String, Probe>,
    ttl_deadlines: HashMap<String, (CheckDefinition, Instant)>,
    critical_since: HashMap<String, Instant>,
    generation: u64,
}

fn millis(ms: Option<u64>, default: Duration) -> Duration {
    ms.filter(|ms| *ms > 0)
        .map(Duration::from_millis)
        .unwrap_or(default)
}

impl Runner {
    async fn run(mut self, mut ttl_resets: mpsc::UnboundedReceiver<String>) {
        let store = self.cluster.store().clone();
        let mut catalog = store.watch(Table::Catalog);
        let (results_tx, mut results) = mpsc::channel::<ProbeResult>(256);
        loop {
            catalog.borrow_and_update();
            let checks: Vec<Check> =
                store.read(|s| s.checks_on_node(&self.node).cloned().collect());
            self.reconcile(&checks, &results_tx);
            let wake = self.next_wake(&checks);
            tokio::select! {
                changed = catalog.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                Some(check_id) = ttl_resets.recv() => {
                    if let Some((definition, deadline)) = self.ttl_deadlines.get_mut(&check_id) {
                        *deadline = Instant::now() + millis(definition.ttl_ms, DEFAULT_INTERVAL);
                    }
                }
                Some(result) = results.recv() => self.record(&checks, result).await,
                _ = sleep_until_opt(wake) => self.expire(&checks).await,
            }
        }
    }

    /// Starts, restarts or stops probes and timers to match the checks now stored.
    fn reconcile(&mut self, checks: &[Check], results: &mpsc::Sender<ProbeResult>) {
        let now = Instant::now();
        self.probes.retain(|id, probe| {
            let keep = checks
                .iter()
                .any(|c| &c.check_id == id && c.definition == probe.definition);
            if !keep {
                probe.task.abort();
            }
            keep
        });
        self.ttl_deadlines.retain(|id, (definition, _)| {
            checks
                .iter()
                .any(|c| &c.check_id == id && &c.definition == definition)
        });
        self.critical_since.retain(|id, _| {
            checks
                .iter()
                .any(|c| &c.check_id == id && c.status == CheckStatus::Critical)
        });
        for check in checks {
            let definition = &check.definition;
            if check.status == CheckStatus::Critical
                && definition.deregister_critical_after_ms.is_some()
            {
                self.critical_since
                    .entry(check.check_id.clone())
                    .or_insert(now);
            }
            if let CheckKind::Ttl(ttl) = definition.kind() {
                self.ttl_deadlines
                    .entry(check.check_id.clone())
                    .or_insert_with(|| (definition.clone(), now + Duration::from_millis(ttl)));
            } else if definition.kind().is_probed() && !self.probes.contains_key(&check.check_id) {
                self.generation += 1;
                let task = tokio::spawn(probe_loop(
                    self.probers.clone(),
                    check.check_id.clone(),
                    definition.clone(),
                    self.generation,
                    results.clone(),
                ));
                self.probes.insert(
                    check.check_id.clone(),
                    Probe {
                        definition: definition.clone(),
                        generation: self.generation,
                        task,
                    },
                );
            }
        }
    }

    fn next_wake(&self, checks: &[Check]) -> Option<Instant> {
        let ttl = checks
            .iter()
            .filter(|c| c.status != CheckStatus::Critical)
            .filter_map(|c| self.ttl_deadlines.get(&c.check_id).map(|(_, d)| *d));
        let deregister = checks.iter().filter_map(|c| {
            let since = self.critical_since.get(&c.check_id)?;
            Some(*since + Duration::from_millis(c.definition.deregister_critical_after_ms?))
        });
        ttl.chain(deregister).min()
    }

    async fn record(&mut self, checks: &[Check], result: ProbeResult) {
        let current = self.probes.get(&result.check_id).map(|p| p.generation);
        if current != Some(result.generation) {
            return;
        }
        let Some(check) = checks.iter().find(|c| c.check_id == result.check_id) else {
            return;
        };
        // Only a status change goes through Raft; a new output alone does not, except
        // for a probe's first result.
        if check.status == result.status && !(result.first && check.output != result.output) {
            return;
        }
        self.write_status(&result.check_id, result.status, result.output)
            .await;
    }

    async fn expire(&mut self, checks: &[Check]) {
        let now = Instant::now();
        for check in checks {
            if check.status != CheckStatus::Critical {
                if let Some((_, deadline)) = self.ttl_deadlines.get(&check.check_id) {
                    if *deadline <= now {
                        let written = self
                            .write_status(
                                &check.check_id,
                                CheckStatus::Critical,
                                "TTL expired".to_string(),
                            )
                            .await;
                        if !written {
                            if let Some((_, deadline)) = self.ttl_deadlines.get_mut(&check.check_id)
                            {
                                *deadline = now + RETRY;
                            }
                        }
                    }
                }
            }
            let Some(after) = check.definition.deregister_critical_after_ms else {
                continue;
            };
            let Some(since) = self.critical_since.get(&check.check_id).copied() else {
                continue;
            };
            if since + Duration::from_millis(after) > now || check.service_id.is_empty() {
                continue;
            }
            tracing::info!(service = %check.service_id, check = %check.check_id, "deregistering service critical for too long");
            let command = Command::Deregister(Deregistration {
                node: self.node.clone(),
                service_id: Some(check.service_id.clone()),
                check_id: None,
            });
            if let Err(e) = self.cluster.write(command).await {
                tracing::warn!(error = %e, "deregistering critical service failed");
                self.critical_since.insert(
                    check.check_id.clone(),
                    now + RETRY - Duration::from_millis(after),
                );
            }
        }
    }

    async fn write_status(&self, check_id: &str, status: CheckStatus, output: String) -> bool {
        let command = Command::UpdateCheck {
            node: self.node.clone(),
            check_id: check_id.to_string(),
            status,
            output,
        };
        match self.cluster.write(command).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(check = check_id, error = %e, "check status write failed");
                false
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn probe_loop(
    probers: Probers,
    check_id: String,
    definition: CheckDefinition,
    generation: u64,
    results: mpsc::Sender<ProbeResult>,
) {
    let kind = definition.kind();
    let interval = millis(definition.interval_ms, DEFAULT_INTERVAL);
    let default_timeout = if kind.runs_script() {
        DEFAULT_SCRIPT_TIMEOUT
    } else {
        DEFAULT_TIMEOUT
    };
    let timeout = millis(definition.timeout_ms, default_timeout);
    let client = match kind {
        CheckKind::Http(_) => Some(http_client(&definition)),
        _ => None,
    };
    let mut thresholds = Thresholds::new(&definition);
    let mut first = true;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let (status, output) = match kind {
            _ if kind.runs_script() && !probers.scripts => (
                CheckStatus::Critical,
                "Scripts are disabled on this agent; to enable, configure 'enable_script_checks' to true".to_string(),
            ),
            CheckKind::Http(url) => match &client {
                Some(Ok(client)) => probe_http(client, url, &definition, timeout).await,
                Some(Err(e)) => (CheckStatus::Critical, e.clone()),
                None => return,
            },
            CheckKind::Tcp(address) => probe_tcp(address, timeout).await,
            CheckKind::TaskCommand(command) => {
                probe_task_command(probers.tasks.as_deref(), command, timeout).await
            }
            CheckKind::Script(args) => probe_script(args, timeout).await,
            CheckKind::Docker {
                container,
                shell,
                args,
            } => probe_docker(probers.tasks.as_deref(), container, shell, args, timeout).await,
            // Not probed: a TTL runs on the runner's timers, a static check on nothing.
            CheckKind::Ttl(_) | CheckKind::Static => return,
        };
        if !thresholds.admit(status) {
            continue;
        }
        let result = ProbeResult {
            check_id: check_id.clone(),
            generation,
            status,
            output,
            first,
        };
        first = false;
        if results.send(result).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use atoll_state::TaskCommand;

    use super::*;
    use crate::checks::TaskCommandRun;

    /// Answers every command with the current value of `healthy`.
    struct FakeTasks {
        healthy: Arc<AtomicBool>,
    }

    impl TaskCommands for FakeTasks {
        fn run(&self, check: &TaskCommand, _timeout: Duration) -> TaskCommandRun {
            let answer = if self.healthy.load(Ordering::SeqCst) {
                (CheckStatus::Passing, format!("{}: ok", check.command))
            } else {
                (
                    CheckStatus::Critical,
                    format!("{}: exit status 1", check.command),
                )
            };
            Box::pin(async move { answer })
        }

        fn run_in_container(
            &self,
            _container: &str,
            command: Vec<String>,
            _timeout: Duration,
        ) -> crate::checks::ContainerRun {
            let code = i64::from(!self.healthy.load(Ordering::SeqCst));
            let output = command.join(" ");
            Box::pin(async move { crate::checks::ContainerOutcome::Exited { code, output } })
        }
    }

    async fn agent(tasks: Option<Arc<dyn TaskCommands>>) -> Agent {
        let cluster: ClusterHandle = Arc::new(atoll_cluster::MemoryCluster::new("n1", "dc1"));
        let config = AgentConfig {
            node: "n1".into(),
            address: "127.0.0.1".into(),
            datacenter: "dc1".into(),
            server_port: None,
            node_meta: Default::default(),
            heartbeat_ttl: Duration::from_secs(5),
            autopilot: Default::default(),
            enable_script_checks: true,
            lan: None,
        };
        let (agent, loops) = Agent::start(cluster, config, tasks).await.expect("agent");
        loops.spawn();
        agent
    }

    async fn register_command_check(agent: &Agent, status: Option<CheckStatus>) {
        let definition = CheckDefinition {
            interval_ms: Some(50),
            timeout_ms: Some(1000),
            task_command: Some(TaskCommand {
                task_id: "web-1".into(),
                command: "test -f healthy".into(),
            }),
            ..Default::default()
        };
        register_check(agent, status, definition).await;
    }

    /// Registers service `web-1` with the check `marathon:web-1:0` defined as given.
    async fn register_check(
        agent: &Agent,
        status: Option<CheckStatus>,
        definition: CheckDefinition,
    ) {
        let registration = Registration {
            node: "n1".into(),
            address: "127.0.0.1".into(),
            datacenter: "dc1".into(),
            service: Some(ServiceSpec {
                id: "web-1".into(),
                name: "web".into(),
                port: 31000,
                ..Default::default()
            }),
            checks: vec![CheckSpec {
                check_id: "marathon:web-1:0".into(),
                name: "command".into(),
                status,
                service_id: "web-1".into(),
                definition,
                ..Default::default()
            }],
            skip_node_update: true,
            ..Default::default()
        };
        agent
            .cluster()
            .write(Command::Register(Box::new(registration)))
            .await
            .expect("register");
    }

    /// An agent whose fake tasks and containers succeed while the flag is set.
    async fn agent_with_fake_tasks() -> (Agent, Arc<AtomicBool>) {
        let healthy = Arc::new(AtomicBool::new(true));
        let tasks = FakeTasks {
            healthy: Arc::clone(&healthy),
        };
        (agent(Some(Arc::new(tasks))).await, healthy)
    }

    async fn wait_for_check(agent: &Agent, status: CheckStatus) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let check = agent.cluster().store().read(|s| {
                s.checks_on_node("n1")
                    .find(|c| c.check_id == "marathon:web-1:0")
                    .map(|c| (c.status, c.output.clone()))
            });
            if let Some((current, output)) = check {
                if current == status {
                    return output;
                }
            }
            assert!(Instant::now() < deadline, "check never became {status:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_registers_the_consul_service_with_its_meta() {
        let cluster: ClusterHandle = Arc::new(atoll_cluster::MemoryCluster::new("n1", "dc1"));
        let config = AgentConfig {
            node: "n1".into(),
            address: "127.0.0.1".into(),
            datacenter: "dc1".into(),
            server_port: Some(8300),
            node_meta: Default::default(),
            heartbeat_ttl: Duration::from_secs(5),
            autopilot: Default::default(),
            enable_script_checks: false,
            lan: None,
        };
        let meta: BTreeMap<String, String> =
            [(WAN_JOIN_PORT_META.to_string(), "8302".to_string())].into();
        let (_agent, _loops) =
            Agent::start_with_server_meta(cluster.clone(), config, meta.clone(), None)
                .await
                .expect("agent");
        let (port, stored) = cluster.store().read(|state| {
            let instance = state.service("n1", SERVER_SERVICE).expect("consul service");
            (instance.port, instance.meta.clone())
        });
        assert_eq!(port, 8300);
        assert_eq!(stored, meta);
    }

    #[tokio::test(start_paused = true)]
    async fn task_command_checks_follow_the_command_in_the_task() {
        let (agent, healthy) = agent_with_fake_tasks().await;
        register_command_check(&agent, None).await;
        let output = wait_for_check(&agent, CheckStatus::Passing).await;
        assert_eq!(output, "test -f healthy: ok");
        healthy.store(false, Ordering::SeqCst);
        let output = wait_for_check(&agent, CheckStatus::Critical).await;
        assert_eq!(output, "test -f healthy: exit status 1");
        healthy.store(true, Ordering::SeqCst);
        wait_for_check(&agent, CheckStatus::Passing).await;
    }

    #[tokio::test(start_paused = true)]
    async fn docker_checks_run_shell_and_args_in_the_container() {
        let (agent, healthy) = agent_with_fake_tasks().await;
        let definition = CheckDefinition {
            interval_ms: Some(50),
            docker_container_id: Some("c1".into()),
            args: vec!["test -f /ok".into()],
            ..Default::default()
        };
        register_check(&agent, None, definition).await;
        let output = wait_for_check(&agent, CheckStatus::Passing).await;
        assert_eq!(output, "/bin/sh -c test -f /ok");
        healthy.store(false, Ordering::SeqCst);
        wait_for_check(&agent, CheckStatus::Warning).await;
    }

    #[tokio::test(start_paused = true)]
    async fn task_command_checks_are_critical_where_no_tasks_run() {
        let agent = agent(None).await;
        register_command_check(&agent, Some(CheckStatus::Passing)).await;
        let output = wait_for_check(&agent, CheckStatus::Critical).await;
        assert!(output.contains("runs no tasks"), "{output}");
    }
}
