//! The atoll binary: `atoll dev` runs a complete single-node platform; `atoll agent` runs a
//! server or client of a cluster; the other subcommands talk to a running agent.
#![forbid(unsafe_code)]

mod agent_client;
mod app_cli;
mod catalog_cli;
mod cli;
mod config;
mod kv_cli;
mod lan;
mod lock_cli;
mod nodesim;
mod nodesim_feed;
mod supervise;
mod tls_cli;
mod wan;
mod watch_cli;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use atoll_agent::{Agent, AgentConfig};
use atoll_api::tls::TlsReload;
use atoll_api::{ApiContext, ApiSwitch, Forming, RelayFederation};
use atoll_cluster::Store;
use atoll_cluster::{Alone, ClusterHandle, Federation, Member};
use atoll_dns::{DnsConfig, DnsServer};
use atoll_gossip::{GossipFederation, GossipLan};
use atoll_raft::{Consensus, ConsensusConfig, JoinPlan, Replica, ReplicaConfig};
use atoll_tls::TlsCertificates;
use clap::Parser;

use crate::config::{Cli, CommandLine, NodeSettings, OperatorCommand, RaftCommand, Role};

/// jemalloc, configured in `.cargo/config.toml`: freed pages go back to the system, where
/// glibc's per-thread arenas keep what many short-lived connections once held, and buffers a
/// parked blocking query holds but never wrote to cost no resident memory.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit status after a failure of the Raft storage (EX_IOERR of sysexits.h).
const EXIT_STORAGE_FAILED: i32 = 74;
/// Exit status after a long-lived task panicked or ended (EX_SOFTWARE of sysexits.h).
const EXIT_TASK_FAILED: i32 = 70;

/// How long open HTTP connections get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// How often a compute node relearns the servers it relays through and the datacenters.
const RELAY_REFRESH: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let cli = Cli::parse_from(config::with_double_dashes(std::env::args_os().collect()));
    let log_level = match &cli.command {
        CommandLine::Dev(args) => args.node.log_level.clone(),
        CommandLine::Agent(args) => args.node.log_level.clone(),
        _ => "warn".to_string(),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ATOLL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("atoll: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            CommandLine::Lock(args) => return lock_cli::run(args).await,
            CommandLine::Kv { command } => return kv_cli::run(command).await,
            CommandLine::Watch(args) => return watch_cli::run(args).await,
            CommandLine::Catalog { command } => catalog_cli::run(command).await,
            CommandLine::Services(args) => catalog_cli::services_health(&args).await,
            CommandLine::Completion { shell } => cli::completion(shell),
            CommandLine::Dev(args) => run_node(args.settings()?).await,
            CommandLine::Agent(args) => run_node(args.settings()?).await,
            CommandLine::Members(args) => cli::members(&args.client, args.wan).await,
            CommandLine::Join(args) => cli::join(&args).await,
            CommandLine::Keyring(args) => cli::keyring(&args).await,
            CommandLine::Operator {
                command:
                    OperatorCommand::Raft {
                        command: RaftCommand::ListPeers(args),
                    },
            } => cli::list_peers(&args).await,
            CommandLine::Operator {
                command:
                    OperatorCommand::Raft {
                        command: RaftCommand::Storage(args),
                    },
            } => cli::storage(&args).await,
            CommandLine::Leave(args) => cli::leave(&args).await,
            CommandLine::App { command } => app_cli::run(command).await,
            CommandLine::ForceLeave { node, client } => cli::force_leave(&client, &node).await,
            CommandLine::Tls { command } => tls_cli::run(command),
            CommandLine::Nodesim(args) => nodesim::run(args).await,
            CommandLine::Keygen => {
                println!("{}", tls_cli::keygen());
                Ok(())
            }
        }
        .map(|()| ExitCode::SUCCESS)
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("atoll: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_node(settings: NodeSettings) -> anyhow::Result<()> {
    // The TLS files are read first: a missing or mismatched one stops the start, naming it.
    let certificates = match &settings.tls {
        Some(tls) => {
            Some(TlsCertificates::load(tls.clone()).map_err(|e| anyhow!("cannot use TLS: {e}"))?)
        }
        None => None,
    };
    // Bind every socket before anything else so a busy port fails fast, with nothing written.
    let http = match settings.http_addr {
        Some(addr) => Some(listen("HTTP", addr).await?),
        None => None,
    };
    let https = match settings.https_addr {
        Some(addr) => Some(listen("HTTPS", addr).await?),
        None => None,
    };
    let marathon_http = match settings.marathon_addr {
        Some(addr) => Some(listen("the Marathon API", addr).await?),
        None => None,
    };
    // Only servers listen for RPC: a compute node calls the servers and is never called.
    let rpc = match settings.role {
        Role::Server { .. } => Some(listen("RPC", settings.rpc_addr).await?),
        _ => None,
    };
    let dns_config = DnsConfig {
        domain: settings.domain.clone(),
        datacenter: settings.datacenter.clone(),
        service_ttl: settings.dns_service_ttl,
        node_ttl: settings.dns_node_ttl,
        only_passing: settings.dns_only_passing,
        has_recursors: false,
    };
    let store = Store::default();
    // DNS is bound before the API exists; prepared queries reach the API once it does.
    let dns_queries = atoll_api::consul::prepared::DnsQueries::new();
    let temporary = match &settings.data_dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("atoll-dev-")
                .tempdir()
                .context("cannot create a temporary data dir")?,
        ),
    };
    if let Some(dir) = &settings.data_dir {
        create_private_dir(dir)?;
    }
    let data_dir = match (&settings.data_dir, &temporary) {
        (Some(dir), _) => dir.clone(),
        (None, Some(temp)) => temp.path().to_path_buf(),
        (None, None) => unreachable!("a temporary dir exists whenever no data dir was given"),
    };
    // Servers gossip with the servers of every datacenter (`--serf-wan-port 0`: alone),
    // encrypted under the keyring of the data dir (or `--encrypt` at the first start).
    let wan_pool = match &settings.wan {
        Some(wan) => {
            let encryption = wan::encryption(wan, &data_dir)?;
            Some(wan::start(&settings, wan, encryption).await?)
        }
        None => None,
    };
    // Every node gossips with the others of its datacenter (`--serf-lan-port 0`: it
    // heartbeats instead), encrypted under `serf/local.keyring` (or `--encrypt` at the first
    // start).
    let server = !matches!(settings.role, Role::Client { .. });
    let lan_pool = match &settings.lan {
        Some(lan) => {
            let encryption = lan::encryption(&settings, lan, &data_dir)?;
            Some(lan::start(&settings, lan, server, encryption).await?)
        }
        None => None,
    };
    let lan_view: Option<Arc<dyn atoll_cluster::LanPool>> = lan_pool
        .clone()
        .map(|pool| Arc::new(GossipLan::new(pool)) as Arc<dyn atoll_cluster::LanPool>);
    // Where requests for other datacenters go: a server sends them to the servers of that
    // datacenter (from the WAN pool); a compute node relays through the servers of its own
    // (learnt from the membership once joined, below).
    let relays = match settings.role {
        Role::Client { .. } => Some(Arc::new(RelayFederation::new(settings.datacenter.clone()))),
        _ => None,
    };
    let federation: Arc<dyn Federation> = match (&relays, &wan_pool) {
        (Some(relays), _) => relays.clone(),
        (None, Some(pool)) => Arc::new(GossipFederation::new(
            settings.datacenter.clone(),
            pool.clone(),
        )),
        (None, None) => Arc::new(Alone::new(settings.datacenter.clone(), true)),
    };
    // ACLs: the API and DNS share them (DNS answers with the agent's default token).
    let acl_settings = Arc::new(settings.acl.settings());
    let dns = DnsServer::bind(
        settings.dns_addr,
        dns_config,
        settings.recursors.clone(),
        store.clone(),
        dns_queries.clone(),
        federation.clone(),
    )
    .map_err(|e| anyhow!("{e} (port {})", settings.dns_addr.port()))?
    .with_acl(acl_settings.clone());
    let member = Member {
        name: settings.node.clone(),
        rpc_addr: settings.rpc_addr.to_string(),
        http_addr: settings
            .advertised_http_addr()
            .map(|addr| addr.to_string())
            .unwrap_or_default(),
        server,
        datacenter: settings.datacenter.clone(),
        dns_addr: settings.advertised_dns_addr().to_string(),
        lan_addr: lan_pool
            .as_ref()
            .map(|pool| pool.local_addr().to_string())
            .unwrap_or_default(),
    };
    // Servers (and `atoll dev`) hold the Raft log; a compute node holds a copy of the state
    // streamed from one server.
    let node = match &settings.role {
        Role::Client { retry_join } => NodeCluster::Compute(Replica::start(
            ReplicaConfig {
                member,
                servers: retry_join.clone(),
                data_dir: Some(data_dir.clone()),
                cluster_secret: settings.cluster_secret.clone(),
                rpc_tls: rpc_tls(&settings, certificates.as_ref()),
            },
            store,
        )),
        _ => NodeCluster::Server(
            Consensus::start(
                ConsensusConfig {
                    data_dir: data_dir.clone(),
                    member,
                    snapshot_after_entries: settings.snapshot_after_entries,
                    disk_reserve_bytes: settings.disk_reserve_bytes,
                    cluster_secret: settings.cluster_secret.clone(),
                    rpc_tls: rpc_tls(&settings, certificates.as_ref()),
                },
                store,
            )
            .await
            .context("cannot start consensus")?,
        ),
    };
    // Everything but the node's own start-up, membership and shutdown sees the cluster only
    // through the seam.
    let cluster: ClusterHandle = match &node {
        NodeCluster::Server(consensus) => Arc::new(consensus.clone()),
        NodeCluster::Compute(replica) => Arc::new(replica.clone()),
    };
    // A failed write or sync of the Raft storage stops Raft; the process must not go on as if
    // what it holds were durable (as etcd and PostgreSQL treat a failed fsync). Exiting at
    // once, without the orderly shutdown that would write again, leaves the file as the last
    // successful commit left it, which the next start recovers from.
    if let NodeCluster::Server(consensus) = &node {
        let watched = consensus.clone();
        tokio::spawn(async move {
            let message = watched.fatal_failure().await;
            tracing::error!("{message}");
            eprintln!("atoll: {message}");
            std::process::exit(EXIT_STORAGE_FAILED);
        });
    }
    let plan = match &settings.role {
        Role::Dev => JoinPlan {
            retry_join: Vec::new(),
            bootstrap_expect: 1,
        },
        Role::Server {
            bootstrap_expect,
            retry_join,
        } => JoinPlan {
            retry_join: retry_join.clone(),
            bootstrap_expect: *bootstrap_expect,
        },
        Role::Client { retry_join } => JoinPlan {
            retry_join: retry_join.clone(),
            bootstrap_expect: 0,
        },
    };
    // A compute node's stream closing on this server may mean its process died: the LAN pool
    // tries its gossip port at once (a refusal fails it) instead of at its next probe.
    if let (NodeCluster::Server(consensus), Some(lan)) = (&node, &lan_view) {
        let lan = lan.clone();
        consensus.when_a_stream_closes(move |name| lan.check_gone(name));
    }
    let (supervisor, mut failures) = supervise::Supervisor::new();
    // From the start, so that the elections of a forming cluster are counted too.
    if let NodeCluster::Server(consensus) = &node {
        supervisor.spawn("the leader counter", {
            let consensus = consensus.clone();
            async move { consensus.count_leader_changes().await }
        });
    }
    if let Some(pool) = &lan_pool {
        supervisor.spawn(
            "the LAN join of the servers",
            lan::join_servers(pool.clone(), cluster.clone()),
        );
    }
    if let (Some(pool), Some(wan)) = (&wan_pool, &settings.wan) {
        let mut addresses = wan.retry_join.clone();
        for peer in wan::load_peers(&data_dir) {
            if !addresses.contains(&peer) {
                addresses.push(peer);
            }
        }
        supervisor.spawn_may_end(
            "the WAN retry-join",
            wan::retry_join(pool.clone(), addresses, wan.retry_interval),
        );
        supervisor.spawn(
            "the WAN peers file",
            wan::persist_peers(pool.clone(), data_dir.clone()),
        );
        supervisor.spawn(
            "the WAN join of local servers",
            wan::flood_join(
                pool.clone(),
                cluster.clone(),
                settings.node.clone(),
                settings.datacenter.clone(),
            ),
        );
    }
    match (&node, rpc) {
        (NodeCluster::Server(consensus), Some(rpc)) => {
            let listener = consensus.clone();
            let bootstrap_expect = plan.bootstrap_expect;
            supervisor.spawn("the RPC listener", async move {
                listener.serve_rpc(rpc, bootstrap_expect).await
            });
            let feed = consensus.clone();
            supervisor.spawn(
                "the compute nodes' feed",
                async move { feed.serve_feed().await },
            );
        }
        (NodeCluster::Compute(replica), _) => {
            let replica = replica.clone();
            supervisor.spawn("the stream of the cluster's state", async move {
                replica.run().await
            });
        }
        _ => {}
    }
    // Serve HTTP from now on: until the node has joined, the forming API answers as Consul
    // does without a leader; then the full API takes over.
    let leave_before_joining = Arc::new(tokio::sync::Notify::new());
    let (router, api_switch) = ApiSwitch::new(Forming {
        cluster: cluster.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        leave: leave_before_joining.clone(),
    });
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut listeners = Vec::new();
    let mut tls_reload = None;
    if let Some(http) = http {
        listeners.push(tokio::spawn(atoll_api::serve(
            http,
            router.clone(),
            settings.http_limits,
            stop.clone(),
        )));
    }
    if let Some(certificates) = certificates {
        if let Some(https) = https {
            listeners.push(tokio::spawn(atoll_api::serve_tls(
                https,
                router.clone(),
                settings.http_limits,
                certificates.subscribe(),
                stop.clone(),
            )));
        }
        let (handle, requests) = TlsReload::channel();
        tls_reload = Some(handle);
        tokio::spawn(reload_tls(certificates, requests));
    }
    let http_server = tokio::spawn(async move {
        for listener in listeners {
            let _ = listener.await;
        }
    });
    if let Some(listener) = marathon_http {
        tokio::spawn(atoll_api::serve(
            listener,
            router,
            settings.http_limits,
            stop.clone(),
        ));
    }
    let stop_on_signal = stop_tx.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_on_signal.send(true);
    });
    // Dev nodes and clients run workloads; servers only control them. The drivers come
    // first: they adopt the tasks an earlier run of this node left, and the agent's check
    // runner runs COMMAND health checks through them.
    let drivers = match settings.role {
        Role::Server { .. } => None,
        _ => Some(atoll_workload::Drivers::detect(&data_dir, &settings.node).await),
    };
    let task_commands = drivers
        .clone()
        .map(|d| Arc::new(d) as Arc<dyn atoll_agent::TaskCommands>);
    let join = async {
        match &node {
            NodeCluster::Server(consensus) => {
                consensus
                    .find_cluster(&plan)
                    .await
                    .context("cannot join the cluster")?;
                if settings.role != Role::Dev {
                    let member = consensus.clone();
                    let plan = plan.clone();
                    supervisor.spawn("cluster membership", async move {
                        member.stay_member(&plan).await
                    });
                }
            }
            NodeCluster::Compute(replica) => {
                replica
                    .wait_ready()
                    .await
                    .context("cannot join the cluster")?;
                if let Some(pool) = &lan_pool {
                    lan::join_once(pool, &cluster, Duration::from_secs(2)).await;
                }
                tracing::info!("holding a copy of the cluster's state");
            }
        }
        let server_meta = wan_pool
            .iter()
            .map(|pool| {
                (
                    atoll_agent::WAN_JOIN_PORT_META.to_string(),
                    pool.local_addr().port().to_string(),
                )
            })
            .collect();
        Agent::start_with_server_meta(
            cluster.clone(),
            AgentConfig {
                node: settings.node.clone(),
                address: settings.bind.to_string(),
                datacenter: settings.datacenter.clone(),
                server_port: server.then_some(settings.rpc_addr.port()),
                node_meta: settings.node_meta.clone(),
                heartbeat_ttl: settings.heartbeat_ttl,
                autopilot: settings.autopilot.clone(),
                enable_script_checks: settings.enable_script_checks,
                lan: lan_view.clone(),
            },
            server_meta,
            task_commands,
        )
        .await
        .context("cannot register this node")
    };
    let mut stopping = stop.clone();
    let (agent, agent_loops) = tokio::select! {
        joined = join => joined?,
        _ = stopping.wait_for(|stop| *stop) => {
            finish(http_server, node, temporary).await;
            return Ok(());
        }
        _ = leave_before_joining.notified() => {
            leave_pool("LAN", lan_pool.as_ref()).await;
            leave_pool("WAN", wan_pool.as_ref()).await;
            let _ = stop_tx.send(true);
            finish(http_server, node, temporary).await;
            return Ok(());
        }
    };
    dns.start(tokio::runtime::Handle::current())
        .context("cannot start DNS")?;
    if server {
        supervisor.spawn(
            "the workload control loop",
            atoll_workload::leader::run(cluster.clone()),
        );
    }
    let drain_with = drivers.clone();
    if let Some(drivers) = drivers {
        if let Some(engine) = drivers.docker_engine() {
            // It ends when the engine's event feed closes, which only its driver does.
            supervisor.spawn_may_end(
                "the registrator",
                atoll_workload::registrator::run(
                    cluster.clone(),
                    engine,
                    settings.node.clone(),
                    atoll_workload::registrator::Addresses {
                        node: settings.bind.to_string(),
                        engine: settings.docker_address.to_string(),
                    },
                ),
            );
        }
        supervisor.spawn(
            "the task runner",
            atoll_workload::node::run(
                cluster.clone(),
                atoll_workload::node::NodeRunnerConfig {
                    node: settings.node.clone(),
                    address: settings.bind.to_string(),
                    docker_address: settings.docker_address.to_string(),
                    attributes: settings.node_meta.clone(),
                    port_range: settings.port_range,
                },
                drivers,
            ),
        );
    }
    for (name, task) in agent_loops.0 {
        supervisor.spawn(name, task);
    }
    if let Some(relays) = relays {
        supervisor.spawn(
            "the datacenter relays",
            relays.run(cluster.clone(), RELAY_REFRESH),
        );
    }
    let api = ApiContext::federated(
        agent.clone(),
        env!("CARGO_PKG_VERSION"),
        atoll_api::NodeFacts {
            debug_config: settings.debug_config(&data_dir),
            bootstrap_expect: match &settings.role {
                Role::Dev => 1,
                Role::Server {
                    bootstrap_expect, ..
                } => *bootstrap_expect,
                Role::Client { .. } => 0,
            },
            data_dir: Some(data_dir.clone()),
            tls_reload,
            acl: acl_settings.clone(),
            lan: lan_view,
        },
        federation,
    );
    dns_queries.serve(api.clone());
    supervisor.spawn(
        "the Marathon event feed",
        atoll_api::marathon::events::feed(api.clone()),
    );
    supervisor.spawn(
        "the Marathon event subscribers",
        atoll_api::marathon::subscriptions::deliver(api.clone()),
    );
    if server && acl_settings.replicates_into(&settings.datacenter) {
        supervisor.spawn(
            "the ACL replication",
            atoll_api::consul::acl_replication::replicate(api.clone()),
        );
    }
    api_switch.install(atoll_api::router(api));

    let role = match settings.role {
        Role::Dev => "atoll dev",
        Role::Server { .. } => "atoll server",
        Role::Client { .. } => "atoll client",
    };
    println!(
        "{role}: node {:?} in datacenter {:?}",
        settings.node, settings.datacenter
    );
    match settings.http_addr {
        Some(addr) => println!("  HTTP API: http://{addr}"),
        None => println!("  HTTP API: off"),
    }
    if let Some(addr) = settings.https_addr {
        println!("  HTTPS:    https://{addr}");
    }
    if let Some(addr) = settings.marathon_addr {
        println!("  Marathon: http://{addr} (same API)");
    }
    println!(
        "  DNS:      {} (udp, tcp), domain {}",
        settings.dns_addr, settings.domain
    );
    if server && settings.role != Role::Dev {
        println!("  RPC:      {}", settings.rpc_addr);
    }
    if let Some(pool) = &lan_pool {
        println!("  LAN:      {} (udp, tcp)", pool.local_addr());
    }
    if let Some(pool) = &wan_pool {
        if pool.advertised_addr() == pool.local_addr() {
            println!("  WAN:      {} (udp, tcp)", pool.local_addr());
        } else {
            println!(
                "  WAN:      {} (udp, tcp), advertised as {}",
                pool.local_addr(),
                pool.advertised_addr()
            );
        }
    }
    match &temporary {
        Some(_) => println!(
            "  data dir: {} (temporary, removed on exit)",
            data_dir.display()
        ),
        None => println!("  data dir: {}", data_dir.display()),
    }
    tracing::info!("{role} is ready");

    // A signal stops the node and leaves its tasks running (the next start adopts them); a
    // graceful leave drains them first (the leader has already placed them elsewhere).
    tokio::select! {
        _ = stopping.wait_for(|stop| *stop) => {}
        failure = failures.next() => {
            tracing::error!("{failure}; stopping the node");
            eprintln!("atoll: {failure}; stopping the node");
            std::process::exit(EXIT_TASK_FAILED);
        }
        _ = agent.stopped() => {
            leave_pool("LAN", lan_pool.as_ref()).await;
            leave_pool("WAN", wan_pool.as_ref()).await;
            if let Some(drivers) = &drain_with {
                atoll_workload::node::drain(cluster.as_ref(), drivers, &settings.node).await;
            }
            let _ = stop_tx.send(true);
        }
    }
    finish(http_server, node, temporary).await;
    Ok(())
}

/// What holds this node's view of the cluster.
enum NodeCluster {
    /// A server or `atoll dev`: a Raft member with the log.
    Server(Consensus),
    /// A compute node: a copy of the state streamed from one server.
    Compute(Replica),
}

/// Creates the data dir, when it does not exist yet, readable by its owner only: it holds
/// the whole replicated state, KV values and session data included. An existing one keeps
/// the mode it has.
fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the data dir {}", dir.display()))
}

/// Binds a TCP listener; the error names what it was for and the port.
async fn listen(what: &str, addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow!(
            "cannot listen for {what} on {addr} (port {}): {e}",
            addr.port()
        )
    })
}

/// A graceful leave of a gossip pool (`LAN` or `WAN`), when the node leaves its cluster.
async fn leave_pool(which: &str, pool: Option<&atoll_gossip::Pool>) {
    if let Some(pool) = pool {
        match pool.leave().await {
            Ok(()) => tracing::info!("left the {which} pool"),
            Err(e) => tracing::warn!(error = %e, "cannot leave the {which} pool"),
        }
    }
}

/// Shutdown once stopping was decided: open connections get a moment (blocking queries may
/// hold them for minutes), then consensus stops and a temporary data dir is removed.
async fn finish(
    http_server: tokio::task::JoinHandle<()>,
    node: NodeCluster,
    temporary: Option<tempfile::TempDir>,
) {
    if tokio::time::timeout(SHUTDOWN_GRACE, http_server)
        .await
        .is_err()
    {
        tracing::info!("closing connections still open");
    }
    tracing::info!("shutting down");
    match node {
        NodeCluster::Server(consensus) => consensus.shutdown().await,
        NodeCluster::Compute(replica) => replica.shutdown().await,
    }
    drop(temporary);
}

/// The RPC port's TLS (not on `atoll dev`, which has no RPC port): the node's certificates
/// and what its flags ask of peers.
fn rpc_tls(
    settings: &NodeSettings,
    certificates: Option<&TlsCertificates>,
) -> Option<atoll_raft::RpcTls> {
    let (Some(tls), Some(certificates)) = (&settings.tls, certificates) else {
        return None;
    };
    if settings.role == Role::Dev {
        return None;
    }
    let domain = settings.domain.to_ascii();
    Some(atoll_raft::RpcTls {
        certificates: certificates.subscribe(),
        verify_incoming: tls.verify_incoming_rpc,
        verify_outgoing: tls.verify_outgoing,
        verify_server_hostname: tls.verify_server_hostname,
        server_name: atoll_tls::role_name(atoll_tls::Role::Server, &settings.datacenter, &domain),
        client_name: atoll_tls::role_name(atoll_tls::Role::Client, &settings.datacenter, &domain),
    })
}

/// Reads the node's TLS files again on each SIGHUP and each `PUT /v1/agent/reload`, for
/// HTTPS and the RPC port at once: new connections get the new certificate, open ones keep
/// theirs (a persistent RPC connection until it breaks or idles out), and files that fail
/// to load change nothing.
async fn reload_tls(
    certificates: TlsCertificates,
    mut requests: tokio::sync::mpsc::Receiver<tokio::sync::oneshot::Sender<Result<(), String>>>,
) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP: TLS files are reloaded only through the API");
            None
        }
    };
    loop {
        let answer = tokio::select! {
            Some(()) = async { hangups.as_mut()?.recv().await } => None,
            request = requests.recv() => match request {
                Some(answer) => Some(answer),
                None => return,
            },
        };
        let outcome = certificates.reload().map_err(|e| e.to_string());
        match &outcome {
            Ok(()) => tracing::info!("reloaded the TLS certificate"),
            Err(e) => {
                tracing::error!("cannot reload the TLS certificate, keeping the one loaded: {e}")
            }
        }
        if let Some(answer) = answer {
            let _ = answer.send(outcome);
        }
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM");
                let _ = interrupt.await;
                return;
            }
        };
    tokio::select! {
        _ = interrupt => {}
        _ = terminate.recv() => {}
    }
}
