//! The atoll binary: `atoll dev` runs a complete single-node platform.
#![forbid(unsafe_code)]

mod config;

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use atoll_agent::{Agent, AgentConfig};
use atoll_api::ApiContext;
use atoll_dns::{DnsConfig, DnsServer};
use atoll_raft::{Consensus, ConsensusConfig};
use atoll_state::Store;
use clap::Parser;

use crate::config::{Cli, CommandLine, DevArgs};

/// The server RPC port Consul's clients expect in `/v1/status/leader` and the `consul` service.
const RAFT_PORT: u16 = 8300;

/// How long open HTTP connections get to finish after a shutdown signal.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let CommandLine::Dev(args) = cli.command;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ATOLL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&args.log_level)),
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
    match runtime.block_on(run_dev(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("atoll: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_dev(args: DevArgs) -> anyhow::Result<()> {
    let settings = args.settings()?;
    // Bind every socket before anything else so a busy port fails fast, with nothing written.
    let http = tokio::net::TcpListener::bind(settings.http_addr)
        .await
        .map_err(|e| {
            anyhow!(
                "cannot listen for HTTP on {} (port {}): {e}",
                settings.http_addr,
                settings.http_addr.port()
            )
        })?;
    let dns_config = DnsConfig {
        domain: settings.domain.clone(),
        datacenter: settings.datacenter.clone(),
        service_ttl: settings.dns_service_ttl,
        node_ttl: settings.dns_node_ttl,
        only_passing: settings.dns_only_passing,
        has_recursors: false,
    };
    let temporary = match &settings.data_dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("atoll-dev-")
                .tempdir()
                .context("cannot create a temporary data dir")?,
        ),
    };
    let data_dir = match (&settings.data_dir, &temporary) {
        (Some(dir), _) => dir.clone(),
        (None, Some(temp)) => temp.path().to_path_buf(),
        (None, None) => unreachable!("a temporary dir exists whenever no data dir was given"),
    };
    let store = Store::default();
    let dns = DnsServer::bind(
        settings.dns_addr,
        dns_config,
        settings.recursors.clone(),
        store.clone(),
    )
    .map_err(|e| anyhow!("{e} (port {})", settings.dns_addr.port()))?;
    let consensus = Consensus::start(
        ConsensusConfig {
            data_dir: data_dir.clone(),
            advertise_addr: SocketAddr::new(settings.bind, RAFT_PORT).to_string(),
            snapshot_after_entries: settings.snapshot_after_entries,
        },
        store,
    )
    .await
    .context("cannot start consensus")?;
    let agent = Agent::start(
        consensus.clone(),
        AgentConfig {
            node: settings.node.clone(),
            address: settings.bind.to_string(),
            datacenter: settings.datacenter.clone(),
            server_port: Some(RAFT_PORT),
        },
    )
    .await
    .context("cannot register this node")?;
    dns.start(tokio::runtime::Handle::current())
        .context("cannot start DNS")?;
    let router = atoll_api::router(ApiContext::new(agent, env!("CARGO_PKG_VERSION")));

    println!(
        "atoll dev: node {:?} in datacenter {:?}",
        settings.node, settings.datacenter
    );
    println!("  HTTP API: http://{}", settings.http_addr);
    println!(
        "  DNS:      {} (udp, tcp), domain {}",
        settings.dns_addr, settings.domain
    );
    match &temporary {
        Some(_) => println!(
            "  data dir: {} (temporary, removed on exit)",
            data_dir.display()
        ),
        None => println!("  data dir: {}", data_dir.display()),
    }
    tracing::info!("atoll dev is ready");

    let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
    let server = axum::serve(http, router).with_graceful_shutdown(async move {
        shutdown_signal().await;
        let _ = stopping_tx.send(true);
    });
    // Blocking queries may hold connections for minutes: give them a moment, then go.
    let grace = async {
        let _ = stopping.wait_for(|stopping| *stopping).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        served = server => served.context("HTTP server failed")?,
        _ = grace => tracing::info!("closing connections still open"),
    }
    tracing::info!("shutting down");
    consensus.shutdown().await;
    drop(temporary);
    Ok(())
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
