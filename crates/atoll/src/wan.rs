//! The WAN gossip pool of a server: started with the node, joined to the `--retry-join-wan`
//! addresses and to the peers a previous run knew (kept in the data dir), and to the other
//! servers of its own datacenter, which it finds in the catalog (Consul's flood join).
//! With a gossip key, the pool's traffic is encrypted under the keyring kept in the data dir.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::anyhow;
use atoll_cluster::{node_uuid, ClusterHandle, MemberStatus};
use atoll_gossip::{Encryption, Key, Keyring, Pool, PoolConfig, Profile};
use serde_json::json;

use crate::config::{NodeSettings, WanSettings, DEFAULT_WAN_PORT};

/// The file in the data dir holding the WAN peers known, joined again at start.
pub const PEERS_FILE: &str = "wan-peers.json";

/// The version of [`PEERS_FILE`] this build writes.
const PEERS_VERSION: u64 = 1;

/// The peers file is written at most this often.
const PERSIST_EVERY: Duration = Duration::from_secs(5);

/// How often the local servers found in the catalog are compared with the pool.
const FLOOD_EVERY: Duration = Duration::from_secs(10);

/// The WAN pool's keyring in the data dir (Consul's `serf/remote.keyring`).
pub const KEYRING_FILE: &str = "serf/remote.keyring";

/// The gossip key the node was started with (`--encrypt`), decoded.
fn configured_key(wan: &WanSettings) -> Option<&[u8]> {
    wan.encrypt.as_deref()
}

/// How the WAN pool encrypts: with the keyring file of the data dir when there is one (it
/// wins over `--encrypt`, as Consul's does: rotations survive restarts), else with the
/// `--encrypt` key, which then starts the file; `None` without either.
pub fn encryption(wan: &WanSettings, data_dir: &Path) -> anyhow::Result<Option<Encryption>> {
    keyring_encryption(
        configured_key(wan),
        data_dir.join(KEYRING_FILE),
        wan.encrypt_verify_incoming,
        wan.encrypt_verify_outgoing,
    )
}

/// How a pool encrypts, from its keyring `file` (which wins) or the `--encrypt` key
/// (which starts the file); `None` without either.
pub fn keyring_encryption(
    configured: Option<&[u8]>,
    file: PathBuf,
    verify_incoming: bool,
    verify_outgoing: bool,
) -> anyhow::Result<Option<Encryption>> {
    let configured = configured
        .map(Key::from_bytes)
        .transpose()
        .map_err(|e| anyhow!("--encrypt: {e}"))?;
    let keyring = match (Keyring::load(&file)?, configured) {
        (Some(stored), configured) => {
            if configured.is_some_and(|key| !stored.keys().contains(&key)) {
                tracing::warn!(
                    file = %file.display(),
                    "the keyring file exists: --encrypt is ignored (the keyring file is used)"
                );
            }
            stored
        }
        (None, Some(key)) => {
            let keyring = Keyring::new(key);
            keyring.save(&file)?;
            keyring
        }
        (None, None) => return Ok(None),
    };
    Ok(Some(Encryption {
        keyring,
        verify_incoming,
        verify_outgoing,
        file: Some(file),
    }))
}

/// The member name of a server in the WAN pool.
pub fn member_name(settings: &NodeSettings) -> String {
    format!("{}.{}", settings.node, settings.datacenter)
}

/// Binds the pool's sockets and starts it; a busy port is an error naming it.
pub async fn start(
    settings: &NodeSettings,
    wan: &WanSettings,
    encryption: Option<Encryption>,
) -> anyhow::Result<Pool> {
    let version = env!("CARGO_PKG_VERSION");
    let tags: BTreeMap<String, String> = [
        ("role", "consul".to_string()),
        ("dc", settings.datacenter.clone()),
        ("port", settings.rpc_addr.port().to_string()),
        ("id", node_uuid(&settings.node)),
        ("vsn", "2".to_string()),
        ("vsn_min", "2".to_string()),
        ("vsn_max", "3".to_string()),
        ("raft_vsn", "3".to_string()),
        ("build", version.to_string()),
        ("segment", String::new()),
        ("acls", "0".to_string()),
        ("dns", settings.advertised_dns_addr().to_string()),
    ]
    .into_iter()
    // Without plain HTTP, other datacenters cannot relay requests here.
    .chain(
        settings
            .advertised_http_addr()
            .map(|addr| ("http", addr.to_string())),
    )
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Pool::start(PoolConfig {
        name: member_name(settings),
        bind: wan.addr,
        advertise: wan.advertise,
        tags,
        profile: Profile::wan(),
        default_port: DEFAULT_WAN_PORT,
        encryption,
        datacenter: None,
    })
    .await
    .map_err(|e| anyhow!("WAN gossip (--serf-wan-port {}): {e}", wan.addr.port()))
}

fn peers_path(data_dir: &Path) -> PathBuf {
    data_dir.join(PEERS_FILE)
}

/// The peers a previous run stored (none when there is no file; a file this build cannot
/// read is reported and ignored).
pub fn load_peers(data_dir: &Path) -> Vec<String> {
    let path = peers_path(data_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read the WAN peers");
            return Vec::new();
        }
    };
    match parse_peers(&text) {
        Ok(peers) => peers,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "ignoring the WAN peers file");
            Vec::new()
        }
    }
}

fn parse_peers(text: &str) -> anyhow::Result<Vec<String>> {
    let value: serde_json::Value = serde_json::from_str(text)?;
    match value.get("version").and_then(serde_json::Value::as_u64) {
        Some(1) => {}
        Some(other) => return Err(anyhow!("version {other} is not supported")),
        None => return Err(anyhow!("no version")),
    }
    let peers = value
        .get("peers")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| anyhow!("no peers list"))?;
    peers
        .iter()
        .map(|p| {
            p.as_str()
                .and_then(|p| p.parse::<SocketAddr>().ok())
                .map(|p| p.to_string())
                .ok_or_else(|| anyhow!("{p} is not an IP:PORT"))
        })
        .collect()
}

fn save_peers(data_dir: &Path, peers: &[SocketAddr]) -> std::io::Result<()> {
    let body = json!({
        "version": PEERS_VERSION,
        "peers": peers.iter().map(ToString::to_string).collect::<Vec<_>>(),
    });
    let path = peers_path(data_dir);
    let temporary = data_dir.join(format!("{PEERS_FILE}.tmp"));
    std::fs::write(&temporary, format!("{body:#}\n"))?;
    std::fs::rename(&temporary, &path)
}

/// Keeps the peers file equal to the pool's known peers, written at most every few seconds.
pub async fn persist_peers(pool: Pool, data_dir: PathBuf) {
    let mut changes = pool.subscribe();
    let mut written: Option<Vec<SocketAddr>> = None;
    loop {
        let peers = changes.borrow_and_update().known_peers();
        if !peers.is_empty() && written.as_ref() != Some(&peers) {
            match save_peers(&data_dir, &peers) {
                Ok(()) => written = Some(peers),
                Err(e) => tracing::warn!(error = %e, "cannot store the WAN peers"),
            }
            tokio::time::sleep(PERSIST_EVERY).await;
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Joins the `--retry-join-wan` addresses and the stored peers, again every `interval`
/// until one join works.
pub async fn retry_join(pool: Pool, addresses: Vec<String>, interval: Duration) {
    if addresses.is_empty() {
        return;
    }
    loop {
        match pool.join(&addresses).await {
            Ok(joined) => {
                tracing::info!(joined, "joined the WAN pool");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot join the WAN pool yet; retrying in {interval:?}")
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// WAN-joins the servers of this datacenter (catalog nodes with the `consul` service and its
/// `wan_join_port` meta) that the pool does not hold alive, under their name (`NODE.DC`) or
/// at that address (a server advertising another WAN address is known by its name).
pub async fn flood_join(pool: Pool, cluster: ClusterHandle, node: String, datacenter: String) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    loop {
        let servers = cluster.store().read(|state| {
            state
                .instances_of(atoll_agent::SERVER_SERVICE)
                .into_iter()
                .filter(|instance| instance.node != node)
                .filter_map(|instance| {
                    let port: u16 = instance
                        .meta
                        .get(atoll_agent::WAN_JOIN_PORT_META)?
                        .parse()
                        .ok()
                        .filter(|port| *port != 0)?;
                    let address = if instance.address.is_empty() {
                        state.nodes.get(&instance.node)?.address.clone()
                    } else {
                        instance.address.clone()
                    };
                    let ip: std::net::IpAddr = address.parse().ok()?;
                    let name = format!("{}.{datacenter}", instance.node);
                    Some((name, SocketAddr::new(ip, port)))
                })
                .collect::<Vec<_>>()
        });
        let view = pool.view();
        let missing: Vec<String> = servers
            .into_iter()
            .filter(|(name, addr)| {
                !view.members.iter().any(|(id, status)| {
                    (id.addr == *addr || id.name == *name) && *status == MemberStatus::Alive
                })
            })
            .map(|(_, addr)| addr.to_string())
            .collect();
        if !missing.is_empty() {
            match pool.join(&missing).await {
                Ok(joined) => tracing::info!(joined, "WAN-joined servers of this datacenter"),
                Err(e) => tracing::debug!(error = %e, "WAN join of servers of this datacenter"),
            }
        }
        tokio::time::sleep(FLOOD_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_peers(dir.path()).is_empty());
        let peers: Vec<SocketAddr> = vec![
            "127.0.0.2:8302".parse().unwrap(),
            "[::1]:9302".parse().unwrap(),
        ];
        save_peers(dir.path(), &peers).unwrap();
        assert_eq!(load_peers(dir.path()), ["127.0.0.2:8302", "[::1]:9302"]);
        let text = std::fs::read_to_string(dir.path().join(PEERS_FILE)).unwrap();
        assert!(text.contains("\"version\": 1"), "{text}");
    }

    #[test]
    fn unreadable_peer_files_are_refused() {
        assert!(parse_peers(r#"{"version":2,"peers":[]}"#)
            .unwrap_err()
            .to_string()
            .contains("version 2"));
        assert!(parse_peers(r#"{"peers":[]}"#).is_err());
        assert!(parse_peers(r#"{"version":1,"peers":["nowhere"]}"#).is_err());
        assert!(parse_peers("not json").is_err());
        assert_eq!(
            parse_peers(r#"{"version":1,"peers":["127.0.0.1:1"]}"#).unwrap(),
            ["127.0.0.1:1"]
        );
    }

    fn wan(encrypt: Option<u8>) -> WanSettings {
        WanSettings {
            addr: "127.0.0.1:0".parse().unwrap(),
            advertise: None,
            retry_join: Vec::new(),
            retry_interval: Duration::from_secs(1),
            encrypt: encrypt.map(|byte| vec![byte; 32]),
            encrypt_verify_incoming: true,
            encrypt_verify_outgoing: true,
        }
    }

    #[test]
    fn the_keyring_file_wins_over_the_flag_after_the_first_start() {
        let dir = tempfile::tempdir().unwrap();
        assert!(encryption(&wan(None), dir.path()).unwrap().is_none());
        let first = encryption(&wan(Some(1)), dir.path()).unwrap().unwrap();
        let k1 = Key::from_bytes(&[1; 32]).unwrap();
        assert_eq!(first.keyring, Keyring::new(k1.clone()));
        assert!(dir.path().join(KEYRING_FILE).exists());
        // A rotation stored in the file outlives the flag.
        let k2 = Key::from_bytes(&[2; 32]).unwrap();
        Keyring::new(k2.clone())
            .save(&dir.path().join(KEYRING_FILE))
            .unwrap();
        for flag in [None, Some(1)] {
            let again = encryption(&wan(flag), dir.path()).unwrap().unwrap();
            assert_eq!(again.keyring, Keyring::new(k2.clone()));
        }
    }

    #[test]
    fn node_ids_look_like_uuids_and_depend_on_the_name() {
        let id = node_uuid("s1");
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'4');
        assert_eq!(id, node_uuid("s1"));
        assert_ne!(id, node_uuid("s2"));
    }
}
