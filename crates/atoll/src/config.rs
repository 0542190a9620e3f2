//! Command-line configuration, parsed once and passed down.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{anyhow, bail};
use clap::{Args, Parser, Subcommand};
use hickory_proto::rr::Name;

/// atoll: containers and service discovery in one binary.
#[derive(Debug, Parser)]
#[command(name = "atoll", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: CommandLine,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum CommandLine {
    /// Run a complete single-node platform (server and client in one process).
    Dev(DevArgs),
}

/// Flags of `atoll dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Keep state here (default: a temporary dir removed on exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// HTTP API address.
    #[arg(long, default_value = "127.0.0.1:8500")]
    pub http_addr: SocketAddr,
    /// DNS address (UDP and TCP).
    #[arg(long, default_value = "127.0.0.1:8600")]
    pub dns_addr: SocketAddr,
    /// Node name (default: the hostname).
    #[arg(long)]
    pub node: Option<String>,
    /// Datacenter name.
    #[arg(long, default_value = "dc1")]
    pub datacenter: String,
    /// DNS domain served.
    #[arg(long, default_value = "consul.")]
    pub domain: String,
    /// Address this node advertises (catalog address, DNS answers).
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// DNS server for names outside the domain (repeatable; default: refuse them).
    #[arg(long = "recursor")]
    pub recursors: Vec<String>,
    /// TTL of service answers in DNS, seconds.
    #[arg(long, default_value_t = 0)]
    pub dns_service_ttl: u32,
    /// TTL of node answers in DNS, seconds.
    #[arg(long, default_value_t = 0)]
    pub dns_node_ttl: u32,
    /// Leave instances in warning out of DNS too (not only critical ones).
    #[arg(long)]
    pub dns_only_passing: bool,
    /// Snapshot the state and compact the Raft log after this many entries.
    #[arg(long, default_value_t = 8192)]
    pub snapshot_after_entries: u64,
    /// Log level (also `ATOLL_LOG`).
    #[arg(long, default_value = "info,openraft=warn")]
    pub log_level: String,
}

/// Validated settings of a dev node.
#[derive(Debug, Clone)]
pub struct DevSettings {
    pub data_dir: Option<PathBuf>,
    pub http_addr: SocketAddr,
    pub dns_addr: SocketAddr,
    pub node: String,
    pub datacenter: String,
    pub domain: Name,
    pub bind: IpAddr,
    pub recursors: Vec<SocketAddr>,
    pub dns_service_ttl: u32,
    pub dns_node_ttl: u32,
    pub dns_only_passing: bool,
    pub snapshot_after_entries: u64,
}

fn valid_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "atoll".to_string())
}

impl DevArgs {
    /// Validates the flags.
    pub fn settings(&self) -> anyhow::Result<DevSettings> {
        let node = self.node.clone().unwrap_or_else(hostname);
        // The node name is a DNS label (NODE.node.consul), so it must be one.
        let node = node.split('.').next().unwrap_or_default().to_string();
        if !valid_label(&node) {
            bail!(
                "--node {node:?} is not a valid name: use letters, digits, '-' or '_' (at most 63)"
            );
        }
        if !valid_label(&self.datacenter) {
            bail!(
                "--datacenter {:?} is not a valid name: use letters, digits, '-' or '_'",
                self.datacenter
            );
        }
        let domain_text = if self.domain.ends_with('.') {
            self.domain.clone()
        } else {
            format!("{}.", self.domain)
        };
        let domain = Name::from_ascii(&domain_text)
            .map_err(|e| anyhow!("--domain {:?} is not a valid domain: {e}", self.domain))?
            .to_lowercase();
        if domain.num_labels() == 0 {
            bail!("--domain must not be the root");
        }
        let recursors = self
            .recursors
            .iter()
            .map(|r| {
                r.parse::<SocketAddr>()
                    .or_else(|_| r.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|_| anyhow!("--recursor {r:?} is not an address (IP or IP:PORT)"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if self.snapshot_after_entries == 0 {
            bail!("--snapshot-after-entries must be at least 1");
        }
        Ok(DevSettings {
            data_dir: self.data_dir.clone(),
            http_addr: self.http_addr,
            dns_addr: self.dns_addr,
            node,
            datacenter: self.datacenter.clone(),
            domain,
            bind: self.bind,
            recursors,
            dns_service_ttl: self.dns_service_ttl,
            dns_node_ttl: self.dns_node_ttl,
            dns_only_passing: self.dns_only_passing,
            snapshot_after_entries: self.snapshot_after_entries,
        })
    }
}
