//! Command-line configuration, parsed once and passed down.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail};
use atoll_agent::Autopilot;
use atoll_api::HttpLimits;
use atoll_raft::ClusterSecret;
use atoll_tls::{TlsFiles, TlsSettings};
use base64::Engine;
use clap::{Args, Parser, Subcommand};
use hickory_proto::rr::Name;

/// The Raft/RPC port, as Consul's server RPC port.
pub const DEFAULT_RPC_PORT: u16 = 8300;

/// The WAN gossip port (UDP and TCP), as Consul's `serf_wan`.
pub const DEFAULT_WAN_PORT: u16 = 8302;
/// The LAN gossip port (UDP and TCP), as Consul's `serf_lan`.
pub const DEFAULT_LAN_PORT: u16 = 8301;

/// atoll: containers and service discovery in one binary.
#[derive(Debug, Parser)]
#[command(name = "atoll", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: CommandLine,
}

/// The command line with Consul's single-dash long flags (`-recurse`, `-modify-index=3`)
/// spelled as clap reads them (`--recurse`), so commands typed for `consul` work. As Go's
/// flag package does, flags are read only before the first argument that is not one (and
/// not before `--`): what follows, a value or a handler's own flags, is left as given.
pub fn with_double_dashes(args: Vec<OsString>) -> Vec<OsString> {
    let root = <Cli as clap::CommandFactory>::command();
    let mut command = &root;
    let mut out = Vec::with_capacity(args.len());
    let mut words = args.into_iter();
    out.extend(words.next());
    let mut pending: Option<OsString> = None;
    // The subcommands named first.
    for word in words.by_ref() {
        match word.to_str().and_then(|w| command.find_subcommand(w)) {
            Some(sub) => {
                command = sub;
                out.push(word);
            }
            None => {
                pending = Some(word);
                break;
            }
        }
    }
    let mut takes_value_next = false;
    for word in pending.into_iter().chain(words.by_ref()) {
        if takes_value_next {
            takes_value_next = false;
            out.push(word);
            continue;
        }
        let Some(text) = word.to_str() else {
            out.push(word);
            break;
        };
        if text == "--" || !text.starts_with('-') || text == "-" {
            out.push(word);
            break;
        }
        let (name, has_value) = match text.trim_start_matches('-').split_once('=') {
            Some((name, _)) => (name, true),
            None => (text.trim_start_matches('-'), false),
        };
        let short = (!text.starts_with("--") && name.len() == 1)
            .then(|| name.chars().next())
            .flatten();
        let flag = command.get_arguments().find(|a| match short {
            Some(short) => a.get_short() == Some(short),
            None => a.get_long() == Some(name),
        });
        match flag {
            Some(flag) => {
                takes_value_next = !has_value && flag.get_action().takes_values();
                if text.starts_with("--") || short.is_some() {
                    out.push(word);
                } else {
                    out.push(format!("-{text}").into());
                }
            }
            None => out.push(word),
        }
    }
    out.extend(words);
    out
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum CommandLine {
    /// Run a complete single-node platform (server and client in one process).
    Dev(DevArgs),
    /// Run a server (`--server`) or a client node of a cluster.
    Agent(AgentArgs),
    /// List the nodes of the cluster (`--wan`: the servers of every datacenter).
    Members(MembersArgs),
    /// Join the WAN pool (`--wan`) through the given addresses.
    Join(JoinArgs),
    /// List, install, use or remove the gossip encryption keys of every server (the WAN
    /// pool's keyring), as `consul keyring`.
    Keyring(KeyringArgs),
    /// Operator commands.
    Operator {
        /// Operator subcommand.
        #[command(subcommand)]
        command: OperatorCommand,
    },
    /// Make the local agent leave the cluster gracefully and stop.
    Leave(ClientArgs),
    /// Deploy and manage apps (Marathon's model).
    App {
        /// App subcommand.
        #[command(subcommand)]
        command: AppCommand,
    },
    /// Run a command while holding a lock (or one of N slots of a semaphore) on a KV prefix,
    /// with the keys `consul lock` uses; exits with the command's status.
    Lock(LockArgs),
    /// The built-in certificate authority: create a CA, then certificates it signs.
    Tls {
        /// TLS subcommand.
        #[command(subcommand)]
        command: crate::tls_cli::TlsCommand,
    },
    /// Print a new random 32-byte key, base64.
    Keygen,
    /// Remove a failed node from the cluster.
    ForceLeave {
        /// The node's name.
        node: String,
        /// Common flags.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Read and write the key/value store, as `consul kv` does.
    Kv {
        /// KV subcommand.
        #[command(subcommand)]
        command: KvCommand,
    },
    /// List the services and nodes of the catalog.
    Catalog {
        /// Catalog subcommand.
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// List every service with its tags and how many instances pass, warn or fail.
    Services(ClientArgs),
    /// Watch a view of the catalog or the KV store and run a handler (`sh -c`) with the
    /// JSON each time it changes, as `consul watch` does; without one, print the JSON.
    Watch(WatchArgs),
    /// Simulate compute nodes against a cluster, for benchmarks (bench/README.md).
    #[command(hide = true)]
    Nodesim(crate::nodesim::NodesimArgs),
    /// Print a shell completion script (e.g. `source <(atoll completion bash)`).
    Completion {
        /// The shell to complete in.
        shell: CompletionShell,
    },
}

/// Shells `atoll completion` writes a script for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CompletionShell {
    /// Bash.
    Bash,
    /// Zsh.
    Zsh,
    /// Fish.
    Fish,
}

/// `atoll kv ...`.
#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Print the value of a key (`--recurse`: every key under a prefix, as `key:value`).
    Get(KvGetArgs),
    /// Write a value: given, `-` for standard input, or `@FILE` for a file's content.
    Put(KvPutArgs),
    /// Delete a key (`--recurse`: every key under a prefix).
    Delete(KvDeleteArgs),
    /// Print the keys under a prefix as JSON (`key`, `flags`, base64 `value`), the format
    /// `consul kv export` writes and `kv import` reads.
    Export {
        /// The prefix to export (default: every key).
        #[arg(default_value = "")]
        prefix: String,
        /// Common flags.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Write the keys of an export: `@FILE`, `-` for standard input (the default), or the
    /// JSON itself.
    Import {
        /// Where the export is.
        #[arg(default_value = "-", allow_hyphen_values = true)]
        data: String,
        /// Common flags.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `atoll kv get`.
#[derive(Debug, Args)]
pub struct KvGetArgs {
    /// The key (or prefix, with `--recurse` or `--keys`).
    #[arg(default_value = "")]
    pub key: String,
    /// Every key under the prefix, one `key:value` a line.
    #[arg(long)]
    pub recurse: bool,
    /// Every field of the entry, not only its value.
    #[arg(long)]
    pub detailed: bool,
    /// Only the key names under the prefix, up to the separator.
    #[arg(long, conflicts_with = "recurse")]
    pub keys: bool,
    /// With `--keys`: list key names only up to this string (empty: every key).
    #[arg(long, default_value = "/")]
    pub separator: String,
    /// Print values base64-encoded.
    #[arg(long)]
    pub base64: bool,
    /// Common flags.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `atoll kv put`.
#[derive(Debug, Args)]
pub struct KvPutArgs {
    /// The key.
    pub key: String,
    /// The value: the text itself, `-` for standard input, `@FILE` for a file (default:
    /// empty).
    #[arg(allow_hyphen_values = true)]
    pub value: Option<String>,
    /// Write only if the key's modify index is still `--modify-index` (0: only if the key
    /// does not exist).
    #[arg(long)]
    pub cas: bool,
    /// The modify index `--cas` expects.
    #[arg(long, requires = "cas")]
    pub modify_index: Option<u64>,
    /// An opaque unsigned number stored with the value.
    #[arg(long)]
    pub flags: Option<u64>,
    /// The value given is base64: write what it decodes to.
    #[arg(long)]
    pub base64: bool,
    /// Common flags.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `atoll kv delete`.
#[derive(Debug, Args)]
pub struct KvDeleteArgs {
    /// The key (or prefix, with `--recurse`).
    #[arg(default_value = "")]
    pub key: String,
    /// Delete every key under the prefix.
    #[arg(long, conflicts_with = "cas")]
    pub recurse: bool,
    /// Delete only if the key's modify index is still `--modify-index`.
    #[arg(long, requires = "modify_index")]
    pub cas: bool,
    /// The modify index `--cas` expects.
    #[arg(long, requires = "cas")]
    pub modify_index: Option<u64>,
    /// Common flags.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `atoll catalog ...`.
#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// List the services (of one node with `--node`).
    Services {
        /// Show each service's tags.
        #[arg(long)]
        tags: bool,
        /// Only the services registered on this node.
        #[arg(long)]
        node: Option<String>,
        /// Common flags.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the nodes (those running an instance of `--service`).
    Nodes {
        /// Only the nodes with an instance of this service.
        #[arg(long)]
        service: Option<String>,
        /// Show the nodes' tagged addresses and metadata too.
        #[arg(long)]
        detailed: bool,
        /// Common flags.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// What `atoll watch` watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WatchKind {
    /// One KV key (`--key`).
    Key,
    /// Every KV key under a prefix (`--prefix`).
    Keyprefix,
    /// The catalog's services and their tags.
    Services,
    /// The instances of one service with their health (`--service`).
    Service,
    /// The catalog's nodes.
    Nodes,
    /// Health checks (of one service with `--service`, else all).
    Checks,
}

/// `atoll watch --type TYPE [...] [HANDLER...]`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// What to watch.
    #[arg(long = "type", value_enum)]
    pub kind: WatchKind,
    /// The key, for `--type key`.
    #[arg(long)]
    pub key: Option<String>,
    /// The prefix, for `--type keyprefix`.
    #[arg(long)]
    pub prefix: Option<String>,
    /// The service, for `--type service` (and `checks`).
    #[arg(long)]
    pub service: Option<String>,
    /// With `--type service`: only instances of this tag.
    #[arg(long)]
    pub tag: Option<String>,
    /// With `--type service`: only instances whose checks all pass.
    #[arg(long)]
    pub passingonly: bool,
    /// With `--type checks`: only checks in this state (`any`, `passing`, `warning`,
    /// `critical`), instead of `--service`.
    #[arg(long, conflicts_with = "service")]
    pub state: Option<String>,
    /// A command run by `sh -c` with the JSON on standard input at each change (its words
    /// are joined by spaces); without one the JSON is printed.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub handler: Vec<String>,
    /// Common flags.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Seconds a command follows a deployment before giving up.
const DEFAULT_FOLLOW: u64 = 300;

/// `atoll app ...`.
#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Create or update an app from a Marathon JSON file and follow the deployment.
    Deploy {
        /// The app definition.
        file: PathBuf,
        /// Replace a deployment still in progress (Marathon's `?force=true`).
        #[arg(long)]
        force: bool,
        /// Give up following after this many seconds.
        #[arg(long, default_value_t = DEFAULT_FOLLOW)]
        timeout: u64,
        /// Common flags.
        #[command(flatten)]
        client: AppClientArgs,
    },
    /// List apps.
    List {
        /// Common flags.
        #[command(flatten)]
        client: AppClientArgs,
    },
    /// Show one app and its tasks.
    Show {
        /// App id.
        id: String,
        /// Common flags.
        #[command(flatten)]
        client: AppClientArgs,
    },
    /// Change the number of instances.
    Scale {
        /// App id.
        id: String,
        /// Wanted instances.
        instances: u32,
        /// Give up following after this many seconds.
        #[arg(long, default_value_t = DEFAULT_FOLLOW)]
        timeout: u64,
        /// Common flags.
        #[command(flatten)]
        client: AppClientArgs,
    },
    /// Replace every instance, honouring the upgrade strategy.
    Restart {
        /// App id.
        id: String,
        /// Give up following after this many seconds.
        #[arg(long, default_value_t = DEFAULT_FOLLOW)]
        timeout: u64,
        /// Common flags.
        #[command(flatten)]
        client: AppClientArgs,
    },
    /// Stop every instance and remove the app.
    Destroy {
        /// App id.
        id: String,
        /// Give up following after this many seconds.
        #[arg(long, default_value_t = DEFAULT_FOLLOW)]
        timeout: u64,
        /// Common flags.
        #[command(flatten)]
        client: AppClientArgs,
    },
}

/// `atoll operator ...`.
#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Raft operations.
    Raft {
        /// Raft subcommand.
        #[command(subcommand)]
        command: RaftCommand,
    },
}

/// `atoll operator raft ...`.
#[derive(Debug, Subcommand)]
pub enum RaftCommand {
    /// List the Raft peers (servers) and the leader.
    ListPeers(ClientArgs),
    /// Show what the agent's data dir holds: file size, room in use, the Raft log and the
    /// last snapshot.
    Storage(ClientArgs),
}

/// `atoll lock [-n N] [--name NAME] PREFIX -- CMD ARGS...`.
#[derive(Debug, Args)]
pub struct LockArgs {
    /// How many may hold the lock at once: 1 is a lock, more a semaphore.
    #[arg(short = 'n', long = "limit", default_value_t = 1)]
    pub limit: u32,
    /// The session's name (default: what runs where).
    #[arg(long)]
    pub name: Option<String>,
    /// The KV prefix the lock lives under.
    pub prefix: String,
    /// The command and its arguments (one argument is run by `sh -c`).
    #[arg(last = true)]
    pub command: Vec<String>,
    /// Common flags.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Flags of commands that talk to a running agent.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Address of the agent's API: `HOST:PORT`, `http://HOST:PORT` or `https://HOST:PORT`
    /// (default: ATOLL_HTTP_ADDR, else CONSUL_HTTP_ADDR, else 127.0.0.1:8500).
    #[arg(
        long,
        env = "ATOLL_HTTP_ADDR",
        default_value_t = default_http_addr(),
        hide_default_value = true,
        value_parser = agent_address,
    )]
    pub http_addr: String,
    /// CA certificate (PEM) the agent's HTTPS certificate is checked against (default: the
    /// system's roots).
    #[arg(long, env = "CONSUL_CACERT", value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for an agent that verifies incoming connections.
    #[arg(long, env = "CONSUL_CLIENT_CERT", value_name = "PATH")]
    pub client_cert: Option<PathBuf>,
    /// The private key (PEM) of --client-cert.
    #[arg(long, env = "CONSUL_CLIENT_KEY", value_name = "PATH")]
    pub client_key: Option<PathBuf>,
    /// The name the agent's HTTPS certificate must be valid for (default: the host of
    /// --http-addr), e.g. server.dc1.consul.
    #[arg(long, env = "CONSUL_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
    /// The ACL token every request carries, as `X-Consul-Token` (default: ATOLL_HTTP_TOKEN,
    /// else CONSUL_HTTP_TOKEN; none: the agent's default token applies).
    #[arg(
        long,
        env = "ATOLL_HTTP_TOKEN",
        default_value_t = default_http_token(),
        hide_default_value = true,
        hide_env_values = true
    )]
    pub token: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The datacenter every request is for (`?dc=`); set by the commands that take `--dc`.
    #[arg(skip)]
    pub dc: Option<String>,
}

/// The token when neither `--token` nor ATOLL_HTTP_TOKEN gives one: Consul's
/// CONSUL_HTTP_TOKEN, else none (empty).
fn default_http_token() -> String {
    std::env::var("CONSUL_HTTP_TOKEN").unwrap_or_default()
}

/// The agent's address when neither `--http-addr` nor ATOLL_HTTP_ADDR gives one: Consul's
/// CONSUL_HTTP_ADDR, so a shell set up for `consul` works unchanged, else the local agent.
fn default_http_addr() -> String {
    std::env::var(CONSUL_HTTP_ADDR_ENV)
        .ok()
        .filter(|a| !a.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_HTTP_ADDR.to_string())
}

/// Consul's variable for the agent's address.
const CONSUL_HTTP_ADDR_ENV: &str = "CONSUL_HTTP_ADDR";
/// The local agent's HTTP address.
const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8500";

/// What an agent's address may look like, and where it comes from.
const ADDRESS_FORMS: &str = "give the agent's address (--http-addr, ATOLL_HTTP_ADDR or \
     CONSUL_HTTP_ADDR) as HOST:PORT, http://HOST:PORT or https://HOST:PORT";

/// An agent's address as `HOST:PORT` (plain HTTP) or `https://HOST:PORT`, from `HOST:PORT`,
/// `HOST`, `http://HOST[:PORT]` or `https://HOST[:PORT]`; the port is Consul's, 8500 for
/// HTTP and 8501 for HTTPS, when none is given. The one parser of agent addresses: the
/// client takes its result as it is.
pub(crate) fn agent_address(text: &str) -> Result<String, String> {
    let text = text.trim();
    let (https, bare) = match text.split_once("://") {
        Some(("http", rest)) => (false, rest),
        Some(("https", rest)) => (true, rest),
        Some((scheme, _)) => {
            return Err(format!(
                "{text:?}: the scheme {scheme}:// is not supported; {ADDRESS_FORMS}"
            ))
        }
        None => (false, text),
    };
    let bare = bare.strip_suffix('/').unwrap_or(bare);
    if bare.is_empty() || bare.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!("{text:?} is not an address; {ADDRESS_FORMS}"));
    }
    // A port is what follows the last colon outside brackets (`[::1]:8500`).
    let has_port = match bare.rsplit_once(':') {
        Some((host, port)) => {
            !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    };
    let port = if https { 8501 } else { 8500 };
    let address = if has_port {
        bare.to_string()
    } else if bare.contains(':') && !bare.starts_with('[') {
        format!("[{bare}]:{port}")
    } else {
        format!("{bare}:{port}")
    };
    Ok(if https {
        format!("https://{address}")
    } else {
        address
    })
}

/// Flags of `atoll app` commands: the agent, and the datacenter the app lives in.
#[derive(Debug, Args)]
pub struct AppClientArgs {
    /// Common flags.
    #[command(flatten)]
    pub client: ClientArgs,
    /// The datacenter to act in (default: the agent's own).
    #[arg(long)]
    pub dc: Option<String>,
}

impl AppClientArgs {
    /// The agent's flags, with every request sent for `--dc`.
    pub fn into_client(self) -> ClientArgs {
        ClientArgs {
            dc: self.dc.filter(|dc| !dc.is_empty()),
            ..self.client
        }
    }
}

/// `atoll members [--wan]`.
#[derive(Debug, Args)]
pub struct MembersArgs {
    /// List the WAN pool: the servers of every datacenter.
    #[arg(long)]
    pub wan: bool,
    /// Common flags.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `atoll keyring --list | --install KEY | --use KEY | --remove KEY`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("operation").required(true).args(["list", "install", "use_key", "remove"])))]
pub struct KeyringArgs {
    /// List the keys installed on the servers, with how many hold each.
    #[arg(long)]
    pub list: bool,
    /// Install a new key (base64) on every server.
    #[arg(long, value_name = "KEY")]
    pub install: Option<String>,
    /// Make an installed key the one every server encrypts with.
    #[arg(long = "use", value_name = "KEY")]
    pub use_key: Option<String>,
    /// Remove a key (not the one in use) from every server.
    #[arg(long, value_name = "KEY")]
    pub remove: Option<String>,
    /// With --list: only the keys of the agent asked.
    #[arg(long)]
    pub local_only: bool,
    /// Common flags.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `atoll join [--wan] ADDR...`.
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// Join the WAN pool (servers only): `IP` or `IP:PORT` of another datacenter's server
    /// (its WAN port, 8302 by default).
    #[arg(long)]
    pub wan: bool,
    /// Addresses to join through.
    #[arg(required = true)]
    pub addresses: Vec<String>,
    /// Common flags.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Flags every node has.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Keep state here.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address this node listens on and advertises.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// HTTP API address (default: BIND:8500); `off` serves no plain HTTP (with
    /// --https-addr, on `atoll dev` and client nodes: servers take requests other nodes
    /// forward to them on it).
    #[arg(long)]
    pub http_addr: Option<Listen>,
    /// HTTPS API address (Consul's convention: BIND:8501); off unless given. Needs
    /// --tls-cert-file and --tls-key-file.
    #[arg(long)]
    pub https_addr: Option<SocketAddr>,
    /// The node's certificate chain (PEM, leaf first), for HTTPS and the RPC port, both as
    /// server and as client; read again on SIGHUP and `PUT /v1/agent/reload`.
    #[arg(long, value_name = "PATH")]
    pub tls_cert_file: Option<PathBuf>,
    /// The private key of --tls-cert-file (PEM); read again on SIGHUP.
    #[arg(long, value_name = "PATH")]
    pub tls_key_file: Option<PathBuf>,
    /// The CA (PEM) peers' certificates are checked against.
    #[arg(long, value_name = "PATH")]
    pub tls_ca_file: Option<PathBuf>,
    /// Require a client certificate signed by --tls-ca-file on HTTPS and on the RPC port
    /// (where plain TCP is then refused).
    #[arg(long)]
    pub verify_incoming: bool,
    /// --verify-incoming on the RPC port only.
    #[arg(long)]
    pub verify_incoming_rpc: bool,
    /// --verify-incoming on HTTPS only.
    #[arg(long)]
    pub verify_incoming_https: bool,
    /// RPC to other nodes uses TLS, presenting --tls-cert-file and checking the peer's
    /// certificate against --tls-ca-file.
    #[arg(long)]
    pub verify_outgoing: bool,
    /// A server's certificate must be valid for server.DC.DOMAIN: checked when dialing a
    /// server, and asked of a peer claiming to be one (joining as a server, Raft requests).
    /// Implies --verify-outgoing.
    #[arg(long)]
    pub verify_server_hostname: bool,
    /// The cluster's key (base64 of 16 or 32 bytes, as `atoll keygen` prints): without
    /// --cluster-secret-file, RPC requests are authenticated by a bearer derived from it
    /// (the key itself is never sent). Also the WAN gossip pool's encryption key.
    #[arg(long, value_name = "KEY")]
    pub encrypt: Option<String>,
    /// DNS address, UDP and TCP (default: BIND:8600).
    #[arg(long)]
    pub dns_addr: Option<SocketAddr>,
    /// An extra HTTP address serving the same API, for Marathon clients that expect its own
    /// port (conventionally BIND:8080); off unless given.
    #[arg(long)]
    pub marathon_addr: Option<SocketAddr>,
    /// Node name (default: the hostname).
    #[arg(long)]
    pub node: Option<String>,
    /// Datacenter name.
    #[arg(long, default_value = "dc1")]
    pub datacenter: String,
    /// DNS domain served.
    #[arg(long, default_value = "consul.")]
    pub domain: String,
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
    /// Refuse writes (HTTP 507) while the data dir's file system has less than this many MiB
    /// free, so the Raft log never meets a full disk.
    #[arg(long, default_value_t = 64)]
    pub disk_reserve_mb: u64,
    /// Node attribute `key=value`, stored as node metadata (repeatable).
    #[arg(long = "node-attr")]
    pub node_attrs: Vec<String>,
    /// Range dynamic host ports of tasks come from, `LOW-HIGH` (Mesos's default).
    #[arg(long, default_value = "31000-32000")]
    pub port_range: String,
    /// Address of the Docker engine's host as other nodes reach it (default: BIND): Docker
    /// tasks publish their ports there and the catalog advertises it for them. Set it when
    /// the engine is not on this node's own address, as for a compute node that is itself
    /// a container of its host's engine (the host's address on the node's network).
    #[arg(long)]
    pub docker_address: Option<IpAddr>,
    /// Seconds without heartbeats after which a node is marked failed; applies only to
    /// nodes that run no LAN gossip pool (`--serf-lan-port 0`), which heartbeat to the
    /// leader instead.
    #[arg(long, default_value_t = 5.0)]
    pub heartbeat_ttl: f64,
    /// Port of the datacenter's LAN gossip pool on BIND (UDP and TCP; every node): node
    /// failures are detected through it, and its round trips give the nodes' coordinates.
    /// 0 turns it off: the node then heartbeats to the leader (`--heartbeat-ttl`). Default
    /// 8301; on `atoll dev`, a free port (dev nodes often share 127.0.0.1, and the others
    /// learn the port from the Raft membership). Given twice, the last one counts.
    #[arg(long, overrides_with = "serf_lan_port")]
    pub serf_lan_port: Option<u16>,
    /// Seconds a client may take to send a request's head (also how long an idle
    /// kept-alive connection stays open); the connection is closed after.
    #[arg(long, default_value_t = 30.0)]
    pub http_header_timeout: f64,
    /// Seconds a client may take to send a request's body, once its head is in; a 408 after.
    #[arg(long, default_value_t = 60.0)]
    pub http_body_timeout: f64,
    /// The most HTTP connections one client address may hold open (Consul's
    /// `http_max_conns_per_client`); one more is answered 429. 0: no limit.
    #[arg(long, default_value_t = 200)]
    pub http_max_conns_per_client: usize,
    /// Let the agent API register script and Docker checks, which run commands chosen by
    /// whoever can reach the API (Consul's `enable_script_checks`); refused without it.
    #[arg(long)]
    pub enable_script_checks: bool,
    /// Log level (also `ATOLL_LOG`).
    #[arg(long, default_value = "info,openraft=warn")]
    pub log_level: String,
    /// Turn ACLs on (Consul's `acl.enabled`): requests are allowed by their token's
    /// policies, and `/v1/acl/*` manages tokens and policies (also ATOLL_ACL_ENABLED).
    #[arg(long, env = "ATOLL_ACL_ENABLED")]
    pub acl_enabled: bool,
    /// What is allowed where no rule of a token decides, with --acl-enabled (also
    /// ATOLL_ACL_DEFAULT_POLICY).
    #[arg(long, env = "ATOLL_ACL_DEFAULT_POLICY", value_enum, default_value_t = AclDefault::Allow)]
    pub acl_default_policy: AclDefault,
    /// The token of requests that carry none, and of DNS (Consul's `acl.tokens.default`;
    /// also ATOLL_ACL_DEFAULT_TOKEN).
    #[arg(
        long,
        env = "ATOLL_ACL_DEFAULT_TOKEN",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub acl_default_token: Option<TokenArg>,
    /// The agent's own token (Consul's `acl.tokens.agent`; also ATOLL_ACL_AGENT_TOKEN).
    #[arg(
        long,
        env = "ATOLL_ACL_AGENT_TOKEN",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub acl_agent_token: Option<TokenArg>,
    /// The token the leader of a secondary datacenter reads the primary's policies and
    /// global tokens with (Consul's `acl.tokens.replication`; it needs `acl = "write"` in
    /// the primary; also ATOLL_ACL_REPLICATION_TOKEN).
    #[arg(
        long,
        env = "ATOLL_ACL_REPLICATION_TOKEN",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub acl_replication_token: Option<TokenArg>,
    /// The datacenter that holds the ACL policies and global tokens, which every other
    /// datacenter replicates (Consul's `primary_datacenter`; default: this node's own).
    /// Every agent of a federation must name the same one (also ATOLL_PRIMARY_DATACENTER).
    #[arg(long, env = "ATOLL_PRIMARY_DATACENTER", value_name = "DC")]
    pub primary_datacenter: Option<String>,
}

/// `--acl-default-policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AclDefault {
    /// Everything no rule denies is allowed.
    Allow,
    /// Everything no rule allows is denied.
    Deny,
}

/// A token given on the command line: its Debug output does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenArg(pub String);

impl std::fmt::Debug for TokenArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<hidden>")
    }
}

impl std::str::FromStr for TokenArg {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(TokenArg(text.to_string()))
    }
}

/// A node's ACL flags.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AclFlags {
    /// `--acl-enabled`.
    pub enabled: bool,
    /// `--acl-default-policy`.
    pub default_policy: atoll_acl::DefaultPolicy,
    /// `--acl-default-token`, `--acl-agent-token` and `--acl-replication-token`.
    pub tokens: atoll_acl::AgentTokens,
    /// `--primary-datacenter`, else the node's own datacenter.
    pub primary_datacenter: String,
}

impl AclFlags {
    /// The node's ACL settings, which the API shares and `PUT /v1/agent/token` changes.
    pub fn settings(&self) -> atoll_acl::AclSettings {
        let settings = if self.enabled {
            atoll_acl::AclSettings::enabled(self.default_policy, self.tokens.clone())
        } else {
            atoll_acl::AclSettings::disabled()
        };
        settings.with_primary_datacenter(self.primary_datacenter.clone())
    }
}

/// A listener's address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// No listener.
    Off,
    /// Listen here.
    At(SocketAddr),
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.eq_ignore_ascii_case("off") {
            return Ok(Listen::Off);
        }
        text.parse()
            .map(Listen::At)
            .map_err(|_| format!("{text:?} is not IP:PORT or off"))
    }
}

/// Flags of the WAN gossip pool the servers of every datacenter share.
#[derive(Debug, Args)]
pub struct WanArgs {
    /// Port of the WAN gossip pool on BIND (UDP and TCP; servers only); 0 turns WAN
    /// gossip off. Given twice, the last one counts (so a harness's default can be
    /// overridden).
    #[arg(long, default_value_t = DEFAULT_WAN_PORT, overrides_with = "serf_wan_port")]
    pub serf_wan_port: u16,
    /// WAN address of a server of another datacenter (or of this one) to join (`IP` or
    /// `IP:PORT`, port 8302 by default; repeatable); retried until one join works.
    #[arg(long = "retry-join-wan")]
    pub retry_join_wan: Vec<String>,
    /// Seconds between attempts to join the `--retry-join-wan` addresses.
    #[arg(long, default_value_t = 30.0)]
    pub retry_interval_wan: f64,
    /// Address the servers of other datacenters are told to reach this one's WAN gossip at
    /// (UDP and TCP), when it is not BIND: a NAT or a relay in between (Consul's
    /// `advertise_addr_wan`). `IP` (on the `--serf-wan-port`) or `IP:PORT`.
    #[arg(long = "advertise-wan", value_name = "IP[:PORT]")]
    pub advertise_wan: Option<String>,
    /// Refuse unencrypted gossip (false only while turning encryption on in a running
    /// pool).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub encrypt_verify_incoming: bool,
    /// Send gossip encrypted (false only while turning encryption on in a running pool).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub encrypt_verify_outgoing: bool,
}

impl WanArgs {
    /// The WAN settings of a server binding `bind` (`None`: WAN gossip is off).
    /// `encrypt` is the decoded `--encrypt` key, the pool's first key.
    fn settings(
        &self,
        bind: IpAddr,
        encrypt: Option<&[u8]>,
    ) -> anyhow::Result<Option<WanSettings>> {
        let retry_join = self
            .retry_join_wan
            .iter()
            .map(|a| {
                parse_addr(a, DEFAULT_WAN_PORT)
                    .map(|a| a.to_string())
                    .map_err(|_| {
                        anyhow!("--retry-join-wan {a:?} is not an address (IP or IP:PORT)")
                    })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let retry_interval = positive_seconds("--retry-interval-wan", self.retry_interval_wan)?;
        let encrypt = encrypt.map(<[u8]>::to_vec);
        if self.serf_wan_port == 0 {
            if !retry_join.is_empty() {
                bail!("--retry-join-wan needs WAN gossip, which --serf-wan-port 0 turns off");
            }
            if self.advertise_wan.is_some() {
                bail!("--advertise-wan needs WAN gossip, which --serf-wan-port 0 turns off");
            }
            return Ok(None);
        }
        let advertise = self
            .advertise_wan
            .as_deref()
            .map(|a| {
                parse_addr(a, self.serf_wan_port)
                    .ok()
                    .filter(|addr| !addr.ip().is_unspecified() && addr.port() != 0)
                    .ok_or_else(|| {
                        anyhow!(
                            "--advertise-wan {a:?} is not an address others can reach \
                             (IP or IP:PORT, not a wildcard, not port 0)"
                        )
                    })
            })
            .transpose()?;
        Ok(Some(WanSettings {
            addr: SocketAddr::new(bind, self.serf_wan_port),
            advertise,
            retry_join,
            retry_interval,
            encrypt,
            encrypt_verify_incoming: self.encrypt_verify_incoming,
            encrypt_verify_outgoing: self.encrypt_verify_outgoing,
        }))
    }
}

/// Validated WAN gossip settings of a server.
#[derive(Debug, Clone, PartialEq)]
pub struct WanSettings {
    /// Where the pool listens (UDP and TCP), and what it advertises without `advertise`.
    pub addr: SocketAddr,
    /// `--advertise-wan`: the address the other members are told instead of `addr`.
    pub advertise: Option<SocketAddr>,
    /// `--retry-join-wan` addresses (`IP:PORT`).
    pub retry_join: Vec<String>,
    /// `--retry-interval-wan`.
    pub retry_interval: Duration,
    /// `--encrypt`, decoded.
    pub encrypt: Option<Vec<u8>>,
    /// `--encrypt-verify-incoming`.
    pub encrypt_verify_incoming: bool,
    /// `--encrypt-verify-outgoing`.
    pub encrypt_verify_outgoing: bool,
}

/// Validated LAN gossip settings of a node.
#[derive(Debug, Clone, PartialEq)]
pub struct LanSettings {
    /// Where the pool listens (UDP and TCP) and what it advertises.
    pub addr: SocketAddr,
    /// `--encrypt-verify-incoming`.
    pub encrypt_verify_incoming: bool,
    /// `--encrypt-verify-outgoing`.
    pub encrypt_verify_outgoing: bool,
}

impl WanArgs {
    /// The encryption flags, which the LAN pool shares with the WAN pool.
    fn lan_settings(&self, lan: Option<LanSettings>) -> Option<LanSettings> {
        lan.map(|lan| LanSettings {
            encrypt_verify_incoming: self.encrypt_verify_incoming,
            encrypt_verify_outgoing: self.encrypt_verify_outgoing,
            ..lan
        })
    }
}

/// Flags of `atoll dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Node flags.
    #[command(flatten)]
    pub node: NodeArgs,
    /// WAN gossip flags.
    #[command(flatten)]
    pub wan: WanArgs,
}

/// Flags of `atoll agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Node flags.
    #[command(flatten)]
    pub node: NodeArgs,
    /// WAN gossip flags (servers only).
    #[command(flatten)]
    pub wan: WanArgs,
    /// Run as a server (control node): Raft voter, scheduler, API.
    #[arg(long)]
    pub server: bool,
    /// Servers to wait for before bootstrapping the cluster (servers only).
    #[arg(long)]
    pub bootstrap_expect: Option<usize>,
    /// Address of a node to join (`IP` or `IP:PORT`, repeatable).
    #[arg(long = "retry-join")]
    pub retry_join: Vec<String>,
    /// Port of the Raft/RPC listener.
    #[arg(long, default_value_t = DEFAULT_RPC_PORT)]
    pub rpc_port: u16,
    /// Seconds after which the leader removes a server whose heartbeats stopped from the
    /// Raft configuration (Consul's autopilot dead-server cleanup); 0 turns cleanup off.
    #[arg(long, default_value_t = 30.0)]
    pub dead_server_cleanup_after: f64,
    /// Dead-server cleanup never leaves fewer voters than this.
    #[arg(long, default_value_t = 0)]
    pub min_quorum: usize,
    /// File holding the secret every node of the cluster shares: each RPC request carries
    /// it and the RPC listener refuses (401) a request without it. Instead of a file, the
    /// environment variable ATOLL_CLUSTER_SECRET may hold the secret itself. Without
    /// either, a secret derived from --encrypt is used, if given.
    #[arg(long, value_name = "PATH")]
    pub cluster_secret_file: Option<PathBuf>,
}

/// The environment variable that may hold the cluster secret itself.
pub const CLUSTER_SECRET_ENV: &str = "ATOLL_CLUSTER_SECRET";

/// Validated settings of a node.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub data_dir: Option<PathBuf>,
    /// The plain HTTP listener (`None`: `--http-addr off`).
    pub http_addr: Option<SocketAddr>,
    /// The HTTPS listener (`--https-addr`).
    pub https_addr: Option<SocketAddr>,
    /// The TLS files and what is asked of peers (`--tls-*`, `--verify-*`), for HTTPS and
    /// the RPC port.
    pub tls: Option<TlsSettings>,
    /// The cluster's key from `--encrypt` (16 or 32 bytes), if given.
    pub encrypt_key: Option<Vec<u8>>,
    pub marathon_addr: Option<SocketAddr>,
    pub dns_addr: SocketAddr,
    pub rpc_addr: SocketAddr,
    pub node: String,
    pub datacenter: String,
    pub domain: Name,
    pub bind: IpAddr,
    pub recursors: Vec<SocketAddr>,
    pub dns_service_ttl: u32,
    pub dns_node_ttl: u32,
    pub dns_only_passing: bool,
    pub snapshot_after_entries: u64,
    pub disk_reserve_bytes: u64,
    pub node_meta: BTreeMap<String, String>,
    pub heartbeat_ttl: Duration,
    pub port_range: (u16, u16),
    /// Where Docker tasks' ports are published and reached (`--docker-address`).
    pub docker_address: IpAddr,
    pub role: Role,
    pub autopilot: Autopilot,
    pub http_limits: HttpLimits,
    /// Whether script and Docker checks are accepted and run (`--enable-script-checks`).
    pub enable_script_checks: bool,
    /// The secret RPC requests between the nodes carry (`--cluster-secret-file`).
    pub cluster_secret: Option<ClusterSecret>,
    /// The WAN gossip pool of a server (`None` on clients and with `--serf-wan-port 0`).
    pub wan: Option<WanSettings>,
    /// The LAN gossip pool (`None` with `--serf-lan-port 0`).
    pub lan: Option<LanSettings>,
    /// `--acl-*`.
    pub acl: AclFlags,
}

impl NodeSettings {
    /// The HTTP address other nodes are told (a wildcard listener is reached at `--bind`);
    /// none when plain HTTP is off.
    pub fn advertised_http_addr(&self) -> Option<SocketAddr> {
        self.http_addr.map(|addr| advertised(addr, self.bind))
    }

    /// The DNS address other nodes are told (a wildcard listener is reached at `--bind`).
    pub fn advertised_dns_addr(&self) -> SocketAddr {
        advertised(self.dns_addr, self.bind)
    }

    /// The node's effective settings under Consul's `DebugConfig` names where Consul has
    /// one, as `/v1/agent/self` shows them (the cluster secret only as whether one is set).
    pub fn debug_config(&self, data_dir: &std::path::Path) -> serde_json::Value {
        let (mode, retry_join, bootstrap_expect) = match &self.role {
            Role::Dev => ("dev", Vec::new(), 1),
            Role::Server {
                bootstrap_expect,
                retry_join,
            } => ("server", retry_join.clone(), *bootstrap_expect),
            Role::Client { retry_join } => ("client", retry_join.clone(), 0),
        };
        let seconds = |d: Duration| format!("{}s", d.as_secs_f64());
        // Two objects: one `json!` of every field exceeds the macro recursion limit.
        let mut config = serde_json::json!({
            "Mode": mode,
            "DataDir": data_dir.display().to_string(),
            "BindAddr": self.bind.to_string(),
            "AdvertiseAddrLAN": self.bind.to_string(),
            "AdvertiseAddrWAN": self.wan.as_ref().and_then(|w| w.advertise).map_or(self.bind, |a| a.ip()).to_string(),
            "HTTPAddrs": self.http_addr.iter().map(|a| format!("tcp://{a}")).collect::<Vec<_>>(),
            "HTTPSAddrs": self.https_addr.iter().map(|a| format!("tcp://{a}")).collect::<Vec<_>>(),
            "CertFile": self.tls.as_ref().map(|t| t.files.cert_file.display().to_string()),
            "KeyFile": self.tls.as_ref().map(|t| t.files.key_file.display().to_string()),
            "CAFile": self.tls.as_ref().and_then(|t| t.files.ca_file.as_ref()).map(|f| f.display().to_string()),
            "VerifyIncoming": self.tls.as_ref().is_some_and(|t| {
                t.verify_incoming_https && (t.verify_incoming_rpc || self.role == Role::Dev)
            }),
            "VerifyIncomingRPC": self.tls.as_ref().is_some_and(|t| t.verify_incoming_rpc),
            "VerifyIncomingHTTPS": self.tls.as_ref().is_some_and(|t| t.verify_incoming_https),
            "VerifyOutgoing": self.tls.as_ref().is_some_and(|t| t.verify_outgoing),
            "VerifyServerHostname": self.tls.as_ref().is_some_and(|t| t.verify_server_hostname),
            "EncryptKeySet": self.encrypt_key.is_some(),
        });
        let rest = serde_json::json!({
            "MarathonAddr": self.marathon_addr.map(|a| a.to_string()),
            "DNSAddrs": [format!("udp://{}", self.dns_addr), format!("tcp://{}", self.dns_addr)],
            "RPCAdvertiseAddr": format!("tcp://{}", self.rpc_addr),
            "DNSDomain": format!("{}", self.domain),
            "DNSRecursors": self.recursors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "DNSServiceTTL": { "*": format!("{}s", self.dns_service_ttl) },
            "DNSNodeTTL": format!("{}s", self.dns_node_ttl),
            "DNSOnlyPassing": self.dns_only_passing,
            "RetryJoinLAN": retry_join,
            "BootstrapExpect": bootstrap_expect,
            "RaftSnapshotThreshold": self.snapshot_after_entries,
            "DiskReserveBytes": self.disk_reserve_bytes,
            "HeartbeatTTL": seconds(self.heartbeat_ttl),
            "DeadServerCleanupAfter": self.autopilot.dead_server_after.map(seconds),
            "AutopilotMinQuorum": self.autopilot.min_quorum,
            "PortRange": format!("{}-{}", self.port_range.0, self.port_range.1),
            "DockerAddress": self.docker_address.to_string(),
            "HTTPHeaderTimeout": seconds(self.http_limits.header_read_timeout),
            "HTTPMaxConnsPerClient": self.http_limits.max_conns_per_client,
            "HTTPBodyTimeout": seconds(self.http_limits.body_read_timeout),
            "ClusterSecretSet": self.cluster_secret.is_some(),
            "SerfBindAddrWAN": self.wan.as_ref().map(|w| w.addr.to_string()),
            "SerfAdvertiseAddrWAN": self.wan.as_ref().map(|w| w.advertise.unwrap_or(w.addr).to_string()),
            "SerfBindAddrLAN": self.lan.as_ref().map(|l| l.addr.to_string()),
            "RetryJoinWAN": self.wan.as_ref().map(|w| w.retry_join.clone()).unwrap_or_default(),
            "RetryJoinIntervalWAN": self.wan.as_ref().map(|w| seconds(w.retry_interval)),
            "ACLsEnabled": self.acl.enabled,
            "ACLDefaultPolicy": match self.acl.default_policy {
                atoll_acl::DefaultPolicy::Allow => "allow",
                atoll_acl::DefaultPolicy::Deny => "deny",
            },
            // Whether each agent token is set; never the tokens.
            "ACLTokens": {
                "ACLDefaultTokenSet": self.acl.tokens.default.is_some(),
                "ACLAgentTokenSet": self.acl.tokens.agent.is_some(),
                "ACLReplicationTokenSet": self.acl.tokens.replication.is_some(),
            },
            "PrimaryDatacenter": self.acl.primary_datacenter,
        });
        if let (Some(config), serde_json::Value::Object(rest)) = (config.as_object_mut(), rest) {
            config.extend(rest);
        }
        config
    }
}

/// What a node runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Server and client in one process, one-voter cluster, no RPC listener.
    Dev,
    /// A server of a cluster.
    Server {
        /// `--bootstrap-expect`.
        bootstrap_expect: usize,
        /// `--retry-join` addresses.
        retry_join: Vec<String>,
    },
    /// A client (compute) node.
    Client {
        /// `--retry-join` addresses.
        retry_join: Vec<String>,
    },
}

/// `address` as other nodes can reach it: a wildcard IP (`0.0.0.0`, `::`) is replaced by
/// the node's `--bind` IP, with the same port.
fn advertised(address: SocketAddr, bind: IpAddr) -> SocketAddr {
    if address.ip().is_unspecified() {
        SocketAddr::new(bind, address.port())
    } else {
        address
    }
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

impl NodeArgs {
    /// Validates the flags for a node with `role`.
    pub fn settings(&self, role: Role, rpc_port: u16) -> anyhow::Result<NodeSettings> {
        let node = self.node.clone().unwrap_or_else(hostname);
        // The node name is a DNS label (NODE.node.consul), so it must be one.
        let node = node.split('.').next().unwrap_or_default().to_string();
        if !valid_label(&node) {
            bail!(
                "--node {node:?} is not a valid name: use letters, digits, '-' or '_' (at most 63)"
            );
        }
        // DNS names are matched in lower case, so a datacenter with capitals could never
        // be named there (Consul refuses them too).
        if !valid_label(&self.datacenter) || self.datacenter.chars().any(|c| c.is_ascii_uppercase())
        {
            bail!(
                "--datacenter {:?} is not a valid name: use lowercase letters, digits, '-' or '_'",
                self.datacenter
            );
        }
        let primary_datacenter = self
            .primary_datacenter
            .clone()
            .filter(|dc| !dc.is_empty())
            .unwrap_or_else(|| self.datacenter.clone());
        if !valid_label(&primary_datacenter)
            || primary_datacenter.chars().any(|c| c.is_ascii_uppercase())
        {
            bail!(
                "--primary-datacenter {primary_datacenter:?} is not a valid name: use lowercase letters, digits, '-' or '_'"
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
                parse_addr(r, 53)
                    .map_err(|_| anyhow!("--recursor {r:?} is not an address (IP or IP:PORT)"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if self.snapshot_after_entries == 0 {
            bail!("--snapshot-after-entries must be at least 1");
        }
        let mut node_meta = BTreeMap::new();
        for attr in &self.node_attrs {
            let Some((key, value)) = attr.split_once('=').filter(|(k, _)| !k.is_empty()) else {
                bail!("--node-attr {attr:?} must be key=value");
            };
            node_meta.insert(key.to_string(), value.to_string());
        }
        if !(self.heartbeat_ttl.is_finite() && self.heartbeat_ttl >= 0.5) {
            bail!("--heartbeat-ttl must be at least 0.5 seconds");
        }
        let port_range = self
            .port_range
            .split_once('-')
            .and_then(|(low, high)| {
                Some((
                    low.trim().parse::<u16>().ok()?,
                    high.trim().parse::<u16>().ok()?,
                ))
            })
            .filter(|(low, high)| low <= high && *low > 0)
            .ok_or_else(|| {
                anyhow!(
                    "--port-range {:?} must be LOW-HIGH, e.g. 31000-32000",
                    self.port_range
                )
            })?;
        let http_limits = HttpLimits {
            header_read_timeout: positive_seconds(
                "--http-header-timeout",
                self.http_header_timeout,
            )?,
            body_read_timeout: positive_seconds("--http-body-timeout", self.http_body_timeout)?,
            max_conns_per_client: self.http_max_conns_per_client,
        };
        if self.data_dir.is_none() && role != Role::Dev {
            bail!("--data-dir is required for `atoll agent`");
        }
        let tls = self.tls_settings(&role)?;
        let encrypt_key = self.encrypt.as_deref().map(encrypt_key).transpose()?;
        let http_addr = match self.http_addr {
            None => Some(SocketAddr::new(self.bind, 8500)),
            Some(Listen::At(addr)) => Some(addr),
            Some(Listen::Off) if self.https_addr.is_none() => {
                bail!("--http-addr off needs --https-addr: the node would serve no API")
            }
            Some(Listen::Off) if matches!(role, Role::Server { .. }) => bail!(
                "--http-addr off is for `atoll dev` and client nodes: other nodes forward \
                 requests to a server over plain HTTP"
            ),
            Some(Listen::Off) => None,
        };
        let lan = match self.serf_lan_port {
            Some(0) => None,
            Some(port) => Some(port),
            None if role == Role::Dev => Some(0),
            None => Some(DEFAULT_LAN_PORT),
        }
        .map(|port| LanSettings {
            addr: SocketAddr::new(self.bind, port),
            encrypt_verify_incoming: true,
            encrypt_verify_outgoing: true,
        });
        Ok(NodeSettings {
            data_dir: self.data_dir.clone(),
            http_addr,
            https_addr: self.https_addr,
            tls,
            encrypt_key,
            marathon_addr: self.marathon_addr,
            dns_addr: self.dns_addr.unwrap_or(SocketAddr::new(self.bind, 8600)),
            rpc_addr: SocketAddr::new(self.bind, rpc_port),
            node,
            datacenter: self.datacenter.clone(),
            domain,
            bind: self.bind,
            recursors,
            dns_service_ttl: self.dns_service_ttl,
            dns_node_ttl: self.dns_node_ttl,
            dns_only_passing: self.dns_only_passing,
            enable_script_checks: self.enable_script_checks,
            snapshot_after_entries: self.snapshot_after_entries,
            disk_reserve_bytes: self.disk_reserve_mb.saturating_mul(1024 * 1024),
            node_meta,
            heartbeat_ttl: Duration::from_secs_f64(self.heartbeat_ttl),
            port_range,
            docker_address: self.docker_address.unwrap_or(self.bind),
            role,
            autopilot: Autopilot::default(),
            http_limits,
            cluster_secret: None,
            wan: None,
            lan,
            acl: AclFlags {
                enabled: self.acl_enabled,
                default_policy: match self.acl_default_policy {
                    AclDefault::Allow => atoll_acl::DefaultPolicy::Allow,
                    AclDefault::Deny => atoll_acl::DefaultPolicy::Deny,
                },
                tokens: atoll_acl::AgentTokens {
                    default: self
                        .acl_default_token
                        .as_ref()
                        .map(|t| t.0.clone())
                        .filter(|t| !t.is_empty()),
                    agent: self
                        .acl_agent_token
                        .as_ref()
                        .map(|t| t.0.clone())
                        .filter(|t| !t.is_empty()),
                    replication: self
                        .acl_replication_token
                        .as_ref()
                        .map(|t| t.0.clone())
                        .filter(|t| !t.is_empty()),
                },
                primary_datacenter,
            },
        })
    }
}

impl NodeArgs {
    /// The TLS files and what is asked of peers; the files themselves are read when the
    /// node starts. Consul's defaults: with files but no `--verify-*` flag, TLS is offered
    /// (HTTPS, and on the RPC port beside plain TCP) but asked of no one.
    fn tls_settings(&self, role: &Role) -> anyhow::Result<Option<TlsSettings>> {
        let rpc = *role != Role::Dev;
        let given = [
            (self.tls_cert_file.is_some(), "--tls-cert-file"),
            (self.tls_key_file.is_some(), "--tls-key-file"),
            (self.tls_ca_file.is_some(), "--tls-ca-file"),
            (self.verify_incoming, "--verify-incoming"),
            (self.verify_incoming_https, "--verify-incoming-https"),
            (self.verify_incoming_rpc, "--verify-incoming-rpc"),
            (self.verify_outgoing, "--verify-outgoing"),
            (self.verify_server_hostname, "--verify-server-hostname"),
        ];
        if !rpc {
            // `atoll dev` has no RPC port: the files are for HTTPS only.
            for (flag_given, flag) in &given[5..] {
                if *flag_given {
                    bail!("{flag} applies to the RPC port, which `atoll dev` does not have");
                }
            }
            if self.https_addr.is_none() {
                if let Some((_, flag)) = given.iter().find(|(flag_given, _)| *flag_given) {
                    bail!(
                        "{flag} applies to the HTTPS listener: add --https-addr (e.g. {}:8501)",
                        self.bind
                    );
                }
            }
        }
        if self.verify_incoming_https && self.https_addr.is_none() {
            bail!(
                "--verify-incoming-https applies to the HTTPS listener: add --https-addr (e.g. {}:8501)",
                self.bind
            );
        }
        let (cert_file, key_file) = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert_file), Some(key_file)) => (cert_file.clone(), key_file.clone()),
            (None, None) if self.https_addr.is_some() => {
                bail!("--https-addr needs --tls-cert-file and --tls-key-file")
            }
            (None, None) => {
                if let Some((_, flag)) = given.iter().find(|(flag_given, _)| *flag_given) {
                    bail!("{flag} needs --tls-cert-file and --tls-key-file");
                }
                return Ok(None);
            }
            (Some(_), None) => bail!("--tls-cert-file needs --tls-key-file, its private key"),
            (None, Some(_)) => bail!("--tls-key-file needs --tls-cert-file, its certificate"),
        };
        if self.tls_ca_file.is_none() {
            if let Some((_, flag)) = given[3..].iter().find(|(flag_given, _)| *flag_given) {
                bail!("{flag} needs --tls-ca-file, the CA peers' certificates must be signed by");
            }
        }
        Ok(Some(TlsSettings {
            files: TlsFiles {
                cert_file,
                key_file,
                ca_file: self.tls_ca_file.clone(),
            },
            verify_incoming_https: self.verify_incoming || self.verify_incoming_https,
            verify_incoming_rpc: rpc && (self.verify_incoming || self.verify_incoming_rpc),
            verify_outgoing: self.verify_outgoing || self.verify_server_hostname,
            verify_server_hostname: self.verify_server_hostname,
        }))
    }
}

/// The cluster key of `--encrypt`: base64 (standard alphabet, padded) of 16 or 32 bytes, as
/// Consul's gossip keys (the WAN pool seals with AES-128 or AES-256-GCM; 24-byte AES-192
/// keys, which Consul also takes, are refused). The error never repeats the key.
pub fn encrypt_key(text: &str) -> anyhow::Result<Vec<u8>> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| anyhow!("--encrypt: the key is not base64 (make one with `atoll keygen`)"))?;
    if ![16, 32].contains(&key.len()) {
        bail!(
            "--encrypt: the key is {} bytes; it must be 16 or 32 (make one with `atoll keygen`)",
            key.len()
        );
    }
    Ok(key)
}

/// A timeout flag: a positive number of seconds a `Duration` can hold.
fn positive_seconds(flag: &str, seconds: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| anyhow!("{flag} must be a positive number of seconds"))
}

/// `IP` or `IP:PORT`.
pub fn parse_addr(text: &str, default_port: u16) -> Result<SocketAddr, std::net::AddrParseError> {
    text.parse::<SocketAddr>().or_else(|_| {
        text.parse::<IpAddr>()
            .map(|ip| SocketAddr::new(ip, default_port))
    })
}

impl AgentArgs {
    /// Validates the flags.
    pub fn settings(&self) -> anyhow::Result<NodeSettings> {
        let retry_join = self
            .retry_join
            .iter()
            .map(|a| {
                parse_addr(a, DEFAULT_RPC_PORT)
                    .map(|a| a.to_string())
                    .map_err(|_| anyhow!("--retry-join {a:?} is not an address (IP or IP:PORT)"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let role = match (self.server, self.bootstrap_expect) {
            (true, Some(expect)) if (1..=7).contains(&expect) => Role::Server {
                bootstrap_expect: expect,
                retry_join,
            },
            (true, Some(expect)) => {
                bail!("--bootstrap-expect {expect} is out of range: use 1, 3 or 5 (at most 7)")
            }
            (true, None) => bail!("--server needs --bootstrap-expect (1, 3 or 5)"),
            (false, Some(_)) => bail!("--bootstrap-expect only applies to servers (add --server)"),
            (false, None) if retry_join.is_empty() => {
                bail!("a client needs at least one --retry-join server address")
            }
            (false, None) => Role::Client { retry_join },
        };
        if !(self.dead_server_cleanup_after.is_finite() && self.dead_server_cleanup_after >= 0.0) {
            bail!("--dead-server-cleanup-after must be a number of seconds (0 turns cleanup off)");
        }
        let mut settings = self.node.settings(role, self.rpc_port)?;
        settings.autopilot = Autopilot {
            dead_server_after: (self.dead_server_cleanup_after > 0.0)
                .then(|| Duration::from_secs_f64(self.dead_server_cleanup_after)),
            min_quorum: self.min_quorum,
        };
        settings.cluster_secret = cluster_secret(
            self.cluster_secret_file.as_deref(),
            std::env::var_os(CLUSTER_SECRET_ENV),
        )?
        .or_else(|| settings.encrypt_key.as_deref().map(ClusterSecret::from_key));
        settings.lan = self.wan.lan_settings(settings.lan.take());
        if self.server {
            settings.wan = self
                .wan
                .settings(settings.bind, settings.encrypt_key.as_deref())?;
        } else if !self.wan.retry_join_wan.is_empty() {
            bail!("--retry-join-wan only applies to servers (add --server)");
        } else if self.wan.advertise_wan.is_some() {
            bail!("--advertise-wan only applies to servers (add --server)");
        }
        Ok(settings)
    }
}

/// The cluster secret from `--cluster-secret-file` or from the environment variable
/// [`CLUSTER_SECRET_ENV`], if either is given. An unreadable, empty or unusable secret is an
/// error; no message repeats the secret.
fn cluster_secret(
    file: Option<&Path>,
    env: Option<std::ffi::OsString>,
) -> anyhow::Result<Option<ClusterSecret>> {
    match (file, env) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => bail!(
            "give the cluster secret either in --cluster-secret-file or in {CLUSTER_SECRET_ENV}, not both"
        ),
        (Some(path), None) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                anyhow!("cannot read the cluster secret from --cluster-secret-file {}: {e}", path.display())
            })?;
            ClusterSecret::new(&text)
                .map(Some)
                .map_err(|e| anyhow!("--cluster-secret-file {}: {e}", path.display()))
        }
        (None, Some(value)) => {
            let text = value
                .into_string()
                .map_err(|_| anyhow!("{CLUSTER_SECRET_ENV}: the cluster secret is not UTF-8"))?;
            ClusterSecret::new(&text)
                .map(Some)
                .map_err(|e| anyhow!("{CLUSTER_SECRET_ENV}: {e}"))
        }
    }
}

impl DevArgs {
    /// Validates the flags.
    pub fn settings(&self) -> anyhow::Result<NodeSettings> {
        let mut settings = self.node.settings(Role::Dev, DEFAULT_RPC_PORT)?;
        settings.lan = self.wan.lan_settings(settings.lan.take());
        settings.wan = self
            .wan
            .settings(settings.bind, settings.encrypt_key.as_deref())?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::{agent_address, cluster_secret};

    fn rewritten(args: &[&str]) -> Vec<String> {
        super::with_double_dashes(args.iter().map(|a| a.into()).collect())
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn consul_single_dash_flags_are_read_before_the_arguments() {
        assert_eq!(
            rewritten(&[
                "atoll",
                "kv",
                "get",
                "-recurse",
                "-separator",
                "-recurse",
                "a"
            ]),
            [
                "atoll",
                "kv",
                "get",
                "--recurse",
                "--separator",
                "-recurse",
                "a"
            ]
        );
        assert_eq!(
            rewritten(&[
                "atoll",
                "kv",
                "put",
                "-cas",
                "-modify-index=4",
                "k",
                "-flags"
            ]),
            [
                "atoll",
                "kv",
                "put",
                "--cas",
                "--modify-index=4",
                "k",
                "-flags"
            ]
        );
        assert_eq!(
            rewritten(&["atoll", "watch", "-type", "key", "-key", "k", "cat", "-key"]),
            ["atoll", "watch", "--type", "key", "--key", "k", "cat", "-key"]
        );
        assert_eq!(
            rewritten(&["atoll", "lock", "-n", "2", "-name", "x", "p", "--", "-json"]),
            ["atoll", "lock", "-n", "2", "--name", "x", "p", "--", "-json"]
        );
        assert_eq!(
            rewritten(&["atoll", "kv", "put", "k", "-"]),
            ["atoll", "kv", "put", "k", "-"]
        );
    }

    #[test]
    fn agent_addresses_take_consul_forms() {
        assert_eq!(agent_address("127.0.0.1:8501").unwrap(), "127.0.0.1:8501");
        assert_eq!(
            agent_address("http://127.0.0.1:8501/").unwrap(),
            "127.0.0.1:8501"
        );
        assert_eq!(agent_address("localhost").unwrap(), "localhost:8500");
        assert_eq!(agent_address("[::1]:8501").unwrap(), "[::1]:8501");
        assert_eq!(agent_address("::1").unwrap(), "[::1]:8500");
        assert_eq!(
            agent_address("https://127.0.0.1:8501/").unwrap(),
            "https://127.0.0.1:8501"
        );
        assert_eq!(
            agent_address("https://localhost").unwrap(),
            "https://localhost:8501"
        );
        for bad in ["", "https://", "http://a/b", "unix:///x"] {
            assert!(agent_address(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn no_secret_given_is_no_secret() {
        assert!(cluster_secret(None, None).unwrap().is_none());
    }

    #[test]
    fn a_secret_file_is_read_and_trimmed() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "s3cret").unwrap();
        assert!(cluster_secret(Some(file.path()), None).unwrap().is_some());
        assert!(cluster_secret(None, Some("s3cret".into()))
            .unwrap()
            .is_some());
    }

    #[test]
    fn an_empty_missing_or_doubled_secret_is_an_error_that_does_not_show_it() {
        let empty = tempfile::NamedTempFile::new().unwrap();
        let error = cluster_secret(Some(empty.path()), None)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("--cluster-secret-file") && error.contains("empty"),
            "{error}"
        );
        let missing = std::path::Path::new("/nonexistent/atoll-secret");
        let error = cluster_secret(Some(missing), None).unwrap_err().to_string();
        assert!(error.contains("cannot read"), "{error}");
        let error = cluster_secret(None, Some("".into()))
            .unwrap_err()
            .to_string();
        assert!(error.contains("ATOLL_CLUSTER_SECRET"), "{error}");
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "two words").unwrap();
        let error = cluster_secret(Some(file.path()), None)
            .unwrap_err()
            .to_string();
        assert!(!error.contains("two words"), "{error}");
        let error = cluster_secret(Some(file.path()), Some("x".into()))
            .unwrap_err()
            .to_string();
        assert!(error.contains("not both"), "{error}");
    }

    fn node_settings(args: &[&str]) -> anyhow::Result<super::NodeSettings> {
        use clap::Parser;
        let cli = super::Cli::try_parse_from(args.iter().copied())?;
        match cli.command {
            super::CommandLine::Agent(agent) => agent.settings(),
            super::CommandLine::Dev(dev) => dev.settings(),
            other => panic!("not a node: {other:?}"),
        }
    }

    #[test]
    fn the_primary_datacenter_defaults_to_the_nodes_own() {
        let own =
            node_settings(&["atoll", "dev", "--datacenter", "east", "--acl-enabled"]).unwrap();
        assert_eq!(own.acl.primary_datacenter, "east");
        assert!(!own.acl.settings().replicates_into("east"));
        let secondary = node_settings(&[
            "atoll",
            "dev",
            "--datacenter",
            "east",
            "--acl-enabled",
            "--primary-datacenter",
            "west",
            "--acl-replication-token",
            "r",
        ])
        .unwrap();
        assert_eq!(secondary.acl.tokens.replication.as_deref(), Some("r"));
        assert!(secondary.acl.settings().replicates_into("east"));
        let config = secondary.debug_config(std::path::Path::new("d"));
        assert_eq!(config["PrimaryDatacenter"], "west");
        assert_eq!(config["ACLTokens"]["ACLReplicationTokenSet"], true);
        let error = node_settings(&["atoll", "dev", "--primary-datacenter", "West"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--primary-datacenter"), "{error}");
    }

    #[test]
    fn servers_gossip_on_the_wan_port_by_default() {
        let settings = node_settings(&[
            "atoll",
            "agent",
            "--server",
            "--bootstrap-expect",
            "1",
            "--data-dir",
            "d",
            "--bind",
            "127.0.0.9",
            "--retry-join-wan",
            "127.0.0.10",
            "--retry-join-wan",
            "127.0.0.11:9302",
            "--retry-interval-wan",
            "5",
        ])
        .unwrap();
        let wan = settings.wan.expect("WAN gossip on");
        assert_eq!(wan.addr, "127.0.0.9:8302".parse().unwrap());
        assert_eq!(wan.retry_join, ["127.0.0.10:8302", "127.0.0.11:9302"]);
        assert_eq!(wan.retry_interval, std::time::Duration::from_secs(5));
        assert_eq!(wan.advertise, None);
        let dev = node_settings(&[
            "atoll",
            "dev",
            "--serf-wan-port",
            "0",
            "--serf-wan-port",
            "9000",
        ])
        .unwrap();
        assert_eq!(dev.wan.expect("on").addr, "127.0.0.1:9000".parse().unwrap());
    }

    #[test]
    fn the_wan_address_advertised_takes_the_wan_port_unless_given() {
        let advertised = |args: &[&str]| {
            let mut all = vec!["atoll", "dev", "--bind", "127.0.0.9"];
            all.extend_from_slice(args);
            node_settings(&all).unwrap().wan.expect("on").advertise
        };
        assert_eq!(
            advertised(&["--advertise-wan", "192.0.2.7"]),
            Some("192.0.2.7:8302".parse().unwrap())
        );
        assert_eq!(
            advertised(&["--serf-wan-port", "9302", "--advertise-wan", "192.0.2.7"]),
            Some("192.0.2.7:9302".parse().unwrap())
        );
        assert_eq!(
            advertised(&["--advertise-wan", "192.0.2.7:7000"]),
            Some("192.0.2.7:7000".parse().unwrap())
        );
        let dev = node_settings(&["atoll", "dev", "--advertise-wan", "192.0.2.7"]).unwrap();
        let config = dev.debug_config(std::path::Path::new("d"));
        assert_eq!(config["AdvertiseAddrWAN"], "192.0.2.7");
        assert_eq!(config["SerfAdvertiseAddrWAN"], "192.0.2.7:8302");
        assert_eq!(config["SerfBindAddrWAN"], "127.0.0.1:8302");
    }

    #[test]
    fn every_node_gossips_on_the_lan_port_unless_it_is_zero() {
        let client = node_settings(&[
            "atoll",
            "agent",
            "--data-dir",
            "d",
            "--bind",
            "127.0.0.9",
            "--retry-join",
            "127.0.0.10",
            "--encrypt-verify-incoming",
            "false",
        ])
        .unwrap();
        let lan = client.lan.expect("LAN gossip on");
        assert_eq!(lan.addr, "127.0.0.9:8301".parse().unwrap());
        assert!(!lan.encrypt_verify_incoming);
        assert!(lan.encrypt_verify_outgoing);
        let dev = node_settings(&["atoll", "dev", "--serf-lan-port", "9301"]).unwrap();
        assert_eq!(dev.lan.expect("on").addr, "127.0.0.1:9301".parse().unwrap());
        // A dev node takes a free port unless told one.
        let dev = node_settings(&["atoll", "dev"]).unwrap();
        assert_eq!(dev.lan.expect("on").addr, "127.0.0.1:0".parse().unwrap());
        let off = node_settings(&["atoll", "dev", "--serf-lan-port", "0"]).unwrap();
        assert!(off.lan.is_none());
    }

    #[test]
    fn port_zero_and_clients_have_no_wan_pool() {
        let off = node_settings(&["atoll", "dev", "--serf-wan-port", "0"]).unwrap();
        assert!(off.wan.is_none());
        let client = node_settings(&[
            "atoll",
            "agent",
            "--data-dir",
            "d",
            "--retry-join",
            "127.0.0.2",
        ])
        .unwrap();
        assert!(client.wan.is_none());
    }

    /// Each command line is refused with an error naming its flag.
    fn refused_by_name(cases: &[(Vec<&str>, &str)]) {
        for (args, flag) in cases {
            let error = node_settings(args).unwrap_err().to_string();
            assert!(error.contains(flag), "{args:?}: {error}");
        }
    }

    #[test]
    fn plain_http_turns_off_only_beside_https_and_not_on_servers() {
        let https = [
            "--https-addr",
            "127.0.0.1:8501",
            "--tls-cert-file",
            "c.pem",
            "--tls-key-file",
            "k.pem",
        ];
        let dev =
            node_settings(&[&["atoll", "dev", "--http-addr", "off"][..], &https].concat()).unwrap();
        assert_eq!(dev.http_addr, None);
        assert_eq!(dev.advertised_http_addr(), None);
        assert_eq!(
            dev.https_addr.expect("HTTPS on"),
            "127.0.0.1:8501".parse().unwrap()
        );
        let error = node_settings(&["atoll", "dev", "--http-addr", "off"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--https-addr"), "{error}");
        let server = [
            "atoll",
            "agent",
            "--server",
            "--bootstrap-expect",
            "1",
            "--data-dir",
            "d",
            "--http-addr",
            "off",
        ];
        let error = node_settings(&[&server[..], &https].concat())
            .unwrap_err()
            .to_string();
        assert!(error.contains("--http-addr off"), "{error}");
        let client = [
            "atoll",
            "agent",
            "--data-dir",
            "d",
            "--retry-join",
            "127.0.0.2",
            "--http-addr",
            "OFF",
        ];
        assert!(node_settings(&[&client[..], &https].concat())
            .unwrap()
            .http_addr
            .is_none());
    }

    /// The flags of a one-server cluster.
    const ONE_SERVER: [&str; 7] = [
        "atoll",
        "agent",
        "--server",
        "--bootstrap-expect",
        "1",
        "--data-dir",
        "/d",
    ];

    #[test]
    fn encrypt_keys_are_base64_of_16_or_32_bytes() {
        use base64::Engine;
        let b64 = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![9u8; n]);
        for n in [16, 32] {
            assert_eq!(super::encrypt_key(&b64(n)).unwrap().len(), n);
        }
        for bad in [
            b64(15),
            b64(24),
            b64(31),
            b64(33),
            "not base64!".to_string(),
            String::new(),
        ] {
            let error = super::encrypt_key(&bad).unwrap_err().to_string();
            assert!(error.starts_with("--encrypt"), "{error}");
            assert!(bad.is_empty() || !error.contains(&bad), "{error}");
        }
        let server = ONE_SERVER;
        let key = b64(32);
        let settings = node_settings(&[&server[..], &["--encrypt", &key]].concat()).unwrap();
        assert_eq!(settings.encrypt_key, Some(vec![9u8; 32]));
        // Without a secret file, the RPC bearer comes from the key.
        assert!(settings.cluster_secret.is_some());
        let plain = node_settings(&server).unwrap();
        assert!(plain.encrypt_key.is_none() && plain.cluster_secret.is_none());
    }

    #[test]
    fn tls_files_serve_the_rpc_port_of_agents() {
        let files = [
            "--tls-cert-file",
            "c.pem",
            "--tls-key-file",
            "k.pem",
            "--tls-ca-file",
            "ca.pem",
        ];
        let server = ONE_SERVER;
        let tls = |flags: &[&str]| {
            node_settings(&[&server[..], &files[..], flags].concat())
                .unwrap()
                .tls
                .expect("TLS settings")
        };
        // Files without flags: TLS offered, asked of no one.
        let offered = tls(&[]);
        assert!(!offered.verify_incoming_rpc && !offered.verify_incoming_https);
        assert!(!offered.verify_outgoing && !offered.verify_server_hostname);
        let incoming = tls(&["--verify-incoming"]);
        assert!(incoming.verify_incoming_rpc && incoming.verify_incoming_https);
        let rpc_only = tls(&["--verify-incoming-rpc"]);
        assert!(rpc_only.verify_incoming_rpc && !rpc_only.verify_incoming_https);
        // Checking a server's name means using TLS towards it.
        let hostname = tls(&["--verify-server-hostname"]);
        assert!(hostname.verify_server_hostname && hostname.verify_outgoing);
        // `atoll dev` has no RPC port: --verify-incoming is HTTPS's only.
        let dev = node_settings(
            &[
                &["atoll", "dev", "--https-addr", "127.0.0.1:8501"][..],
                &files[..],
                &["--verify-incoming"],
            ]
            .concat(),
        )
        .unwrap()
        .tls
        .expect("TLS settings");
        assert!(dev.verify_incoming_https && !dev.verify_incoming_rpc);
    }

    #[test]
    fn tls_flags_need_https_and_each_other() {
        let server = ONE_SERVER;
        let with = |flags: &[&'static str]| [&server[..], flags].concat();
        refused_by_name(&[
            (
                vec!["atoll", "dev", "--verify-outgoing"],
                "--verify-outgoing",
            ),
            (
                vec!["atoll", "dev", "--verify-server-hostname"],
                "--verify-server-hostname",
            ),
            (with(&["--verify-outgoing"]), "--tls-cert-file"),
            (
                with(&["--tls-cert-file", "c.pem", "--verify-outgoing"]),
                "--tls-key-file",
            ),
            (
                with(&[
                    "--tls-cert-file",
                    "c.pem",
                    "--tls-key-file",
                    "k.pem",
                    "--verify-server-hostname",
                ]),
                "--tls-ca-file",
            ),
            (
                with(&[
                    "--tls-cert-file",
                    "c.pem",
                    "--tls-key-file",
                    "k.pem",
                    "--verify-incoming-https",
                ]),
                "--https-addr",
            ),
            (
                vec!["atoll", "dev", "--tls-cert-file", "c.pem"],
                "--https-addr",
            ),
            (vec!["atoll", "dev", "--verify-incoming"], "--https-addr"),
            (
                vec!["atoll", "dev", "--https-addr", "127.0.0.1:8501"],
                "--tls-cert-file",
            ),
            (
                vec![
                    "atoll",
                    "dev",
                    "--https-addr",
                    "127.0.0.1:8501",
                    "--tls-cert-file",
                    "c.pem",
                    "--tls-key-file",
                    "k.pem",
                    "--verify-incoming",
                ],
                "--tls-ca-file",
            ),
        ]);
    }

    #[test]
    fn docker_tasks_are_reached_at_the_bind_address_unless_told_otherwise() {
        let local = node_settings(&["atoll", "dev", "--bind", "127.0.0.9"]).unwrap();
        assert_eq!(local.docker_address.to_string(), "127.0.0.9");
        let elsewhere = node_settings(&[
            "atoll",
            "agent",
            "--data-dir",
            "d",
            "--bind",
            "172.28.0.21",
            "--docker-address",
            "172.28.0.1",
            "--retry-join",
            "172.28.0.11",
        ])
        .unwrap();
        assert_eq!(elsewhere.docker_address.to_string(), "172.28.0.1");
        assert!(node_settings(&["atoll", "dev", "--docker-address", "host"]).is_err());
    }

    #[test]
    fn bad_wan_flags_are_refused_by_name() {
        refused_by_name(&[
            (
                vec!["atoll", "dev", "--retry-join-wan", "nowhere:x"],
                "--retry-join-wan",
            ),
            (
                vec![
                    "atoll",
                    "dev",
                    "--serf-wan-port",
                    "0",
                    "--retry-join-wan",
                    "127.0.0.2",
                ],
                "--retry-join-wan",
            ),
            (
                vec!["atoll", "dev", "--retry-interval-wan", "0"],
                "--retry-interval-wan",
            ),
            (
                vec![
                    "atoll",
                    "agent",
                    "--data-dir",
                    "d",
                    "--retry-join",
                    "127.0.0.2",
                    "--retry-join-wan",
                    "127.0.0.3",
                ],
                "--retry-join-wan",
            ),
            (
                vec!["atoll", "dev", "--advertise-wan", "nowhere"],
                "--advertise-wan",
            ),
            (
                vec!["atoll", "dev", "--advertise-wan", "0.0.0.0"],
                "--advertise-wan",
            ),
            (
                vec!["atoll", "dev", "--advertise-wan", "127.0.0.2:0"],
                "--advertise-wan",
            ),
            (
                vec![
                    "atoll",
                    "dev",
                    "--serf-wan-port",
                    "0",
                    "--advertise-wan",
                    "127.0.0.2",
                ],
                "--advertise-wan",
            ),
            (
                vec![
                    "atoll",
                    "agent",
                    "--data-dir",
                    "d",
                    "--retry-join",
                    "127.0.0.2",
                    "--advertise-wan",
                    "127.0.0.3",
                ],
                "--advertise-wan",
            ),
        ]);
    }
}
