//! The LAN gossip pool every node of a datacenter runs (Consul's `serf_lan`): started with
//! the node, encrypted under the keyring kept in the data dir, and joined to the servers of
//! the datacenter, whose gossip addresses the Raft membership records. The leader judges node
//! health from it (`atoll_agent`'s liveness), and the API lists its members and coordinates.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::anyhow;
use atoll_cluster::{node_uuid, ClusterHandle, Member, MemberStatus};
use atoll_gossip::{Encryption, Pool, PoolConfig, Profile};

use crate::config::{LanSettings, NodeSettings, DEFAULT_LAN_PORT};
use crate::wan::keyring_encryption;

/// The LAN pool's keyring in the data dir (Consul's `serf/local.keyring`).
pub const KEYRING_FILE: &str = "serf/local.keyring";

/// How often the servers are joined while the pool holds no other live member.
const JOIN_ALONE_EVERY: Duration = Duration::from_secs(1);
/// How often servers the pool does not hold alive are joined again otherwise.
const JOIN_EVERY: Duration = Duration::from_secs(5);

/// How the LAN pool encrypts: with `DATA_DIR/serf/local.keyring` when it exists, else with
/// the `--encrypt` key, which then starts that file; `None` without either.
pub fn encryption(
    settings: &NodeSettings,
    lan: &LanSettings,
    data_dir: &Path,
) -> anyhow::Result<Option<Encryption>> {
    keyring_encryption(
        settings.encrypt_key.as_deref(),
        data_dir.join(KEYRING_FILE),
        lan.encrypt_verify_incoming,
        lan.encrypt_verify_outgoing,
    )
}

/// A member's tags, as Consul's LAN members carry them.
fn tags(settings: &NodeSettings, server: bool) -> BTreeMap<String, String> {
    let version = env!("CARGO_PKG_VERSION");
    let mut tags: BTreeMap<String, String> = [
        ("role", if server { "consul" } else { "node" }.to_string()),
        ("dc", settings.datacenter.clone()),
        ("id", node_uuid(&settings.node)),
        ("segment", String::new()),
        ("vsn", "2".to_string()),
        ("vsn_min", "2".to_string()),
        ("vsn_max", "3".to_string()),
        ("build", version.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if server {
        for (key, value) in [
            ("port", settings.rpc_addr.port().to_string()),
            ("raft_vsn", "3".to_string()),
            ("acls", "0".to_string()),
            ("use_tls", "0".to_string()),
        ] {
            tags.insert(key.to_string(), value);
        }
    }
    tags
}

/// Binds the pool's sockets and starts it; a busy port is an error naming it. Only
/// members of this node's datacenter are let in.
pub async fn start(
    settings: &NodeSettings,
    lan: &LanSettings,
    server: bool,
    encryption: Option<Encryption>,
) -> anyhow::Result<Pool> {
    Pool::start(PoolConfig {
        name: settings.node.clone(),
        bind: lan.addr,
        tags: tags(settings, server),
        profile: Profile::lan(),
        default_port: DEFAULT_LAN_PORT,
        encryption,
        datacenter: Some(settings.datacenter.clone()),
        advertise: None,
    })
    .await
    .map_err(|e| anyhow!("LAN gossip (--serf-lan-port {}): {e}", lan.addr.port()))
}

/// Where a member's LAN pool listens: as its record says, or, for records written before
/// they carried it, its RPC address's IP at the default port.
fn lan_addr(member: &Member) -> Option<SocketAddr> {
    if let Ok(addr) = member.lan_addr.parse() {
        return Some(addr);
    }
    let rpc: SocketAddr = member.rpc_addr.parse().ok()?;
    let ip: IpAddr = rpc.ip();
    Some(SocketAddr::new(ip, DEFAULT_LAN_PORT))
}

/// The servers of the membership the pool does not hold alive.
fn servers_to_join(
    members: &[(u64, Member, bool)],
    local: SocketAddr,
    alive: &[SocketAddr],
) -> Vec<String> {
    let mut targets: Vec<String> = members
        .iter()
        .filter(|(_, member, _)| member.server)
        .filter_map(|(_, member, _)| lan_addr(member))
        .filter(|addr| *addr != local && !alive.contains(addr))
        .map(|addr| addr.to_string())
        .collect();
    targets.sort();
    targets.dedup();
    targets
}

/// One join of the servers the pool does not hold alive, at most `within`: a compute node
/// makes it as soon as its stream named the servers, so that it is a pool member (listed by
/// every node) by the time it says it is ready.
pub async fn join_once(pool: &Pool, cluster: &ClusterHandle, within: std::time::Duration) {
    let alive: Vec<SocketAddr> = pool
        .view()
        .members
        .iter()
        .filter(|(_, status)| *status == MemberStatus::Alive)
        .map(|(id, _)| id.addr)
        .collect();
    let targets = servers_to_join(&cluster.members(), pool.local_addr(), &alive);
    if targets.is_empty() {
        return;
    }
    match tokio::time::timeout(within, pool.join(&targets)).await {
        Ok(Ok(joined)) => tracing::debug!(joined, "joined servers' LAN pool"),
        Ok(Err(e)) => tracing::debug!(error = %e, "LAN join of the servers"),
        Err(_) => tracing::debug!("LAN join of the servers: no answer yet"),
    }
}

/// Joins the servers of the datacenter (from the Raft membership) that the pool does not
/// hold alive: every second while it holds no one, every few seconds after. So a node finds
/// the pool once it joined the cluster, a restarted node finds it again, and a pool split
/// by a partition or a server restart heals.
pub async fn join_servers(pool: Pool, cluster: ClusterHandle) {
    loop {
        let view = pool.view();
        let alive: Vec<SocketAddr> = view
            .members
            .iter()
            .filter(|(_, status)| *status == MemberStatus::Alive)
            .map(|(id, _)| id.addr)
            .collect();
        let targets = servers_to_join(&cluster.members(), pool.local_addr(), &alive);
        if !targets.is_empty() {
            match pool.join(&targets).await {
                Ok(joined) => tracing::debug!(joined, "joined servers' LAN pool"),
                Err(e) => tracing::debug!(error = %e, "LAN join of the servers"),
            }
        }
        let alone = pool
            .view()
            .members
            .iter()
            .all(|(_, status)| *status != MemberStatus::Alive);
        tokio::time::sleep(if alone { JOIN_ALONE_EVERY } else { JOIN_EVERY }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, rpc: &str, lan: &str, server: bool) -> (u64, Member, bool) {
        (
            1,
            Member {
                name: name.into(),
                rpc_addr: rpc.into(),
                server,
                datacenter: "dc1".into(),
                lan_addr: lan.into(),
                ..Default::default()
            },
            server,
        )
    }

    #[test]
    fn the_servers_not_alive_in_the_pool_are_joined() {
        let members = vec![
            member("s1", "127.0.0.1:8300", "127.0.0.1:8301", true),
            member("s2", "127.0.0.2:8300", "127.0.0.2:9301", true),
            // A record written before the LAN address was kept: the default port.
            member("s3", "127.0.0.3:8300", "", true),
            member("c1", "127.0.0.4:8300", "127.0.0.4:8301", false),
        ];
        let local: SocketAddr = "127.0.0.1:8301".parse().unwrap();
        let alive: Vec<SocketAddr> = vec!["127.0.0.2:9301".parse().unwrap()];
        assert_eq!(servers_to_join(&members, local, &alive), ["127.0.0.3:8301"]);
        assert_eq!(
            servers_to_join(&members, "127.0.0.4:8301".parse().unwrap(), &[]),
            ["127.0.0.1:8301", "127.0.0.2:9301", "127.0.0.3:8301"]
        );
    }

    #[test]
    fn members_carry_consuls_lan_tags() {
        use clap::Parser;
        let cli = crate::config::Cli::try_parse_from(["atoll", "dev", "--node", "n1"]).unwrap();
        let crate::config::CommandLine::Dev(dev) = cli.command else {
            panic!("not dev");
        };
        let settings = dev.settings().unwrap();
        let server = tags(&settings, true);
        assert_eq!(server["role"], "consul");
        assert_eq!(server["dc"], settings.datacenter);
        assert!(server.contains_key("port"));
        let client = tags(&settings, false);
        assert_eq!(client["role"], "node");
        assert!(!client.contains_key("port"));
        assert_eq!(client["id"], node_uuid(&settings.node));
    }
}
