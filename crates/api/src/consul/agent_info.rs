//! `/v1/agent/self`, `/v1/agent/host`, `/v1/agent/version`, `/v1/agent/reload` and
//! `/v1/agent/token/:type`: what the local agent tells about itself.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::extract::Path;
use atoll_agent::SERVER_SERVICE;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::agent::{empty_ok, node_uuid, own_member_json};
use crate::acl::Authz;
use crate::error::ApiError;
use crate::query::json_with_index;
use crate::ApiContext;
use atoll_acl::Segment;

/// The commit the binary was built from and when, when the build set them.
const BUILD_SHA: &str = match option_env!("ATOLL_BUILD_SHA") {
    Some(sha) => sha,
    None => "",
};
const BUILD_DATE: &str = match option_env!("ATOLL_BUILD_DATE") {
    Some(date) => date,
    None => "",
};

/// Go's name for the machine's architecture, as Consul reports it.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64",
        other => other,
    }
}

fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Values of `Stats` are strings in Consul's answer.
fn text(value: impl ToString) -> Value {
    Value::String(value.to_string())
}

/// `GET /v1/agent/self`: `agent:read` on this node.
pub async fn self_info(
    State(context): State<ApiContext>,
    authz: Authz,
) -> Result<Response, ApiError> {
    authz.require_read(Segment::Agent, context.node())?;
    let cluster = context.cluster();
    let server = cluster.member().server;
    let node = context.node();
    let (services, checks, ttls, meta) = context.store().read(|state| {
        let services = state
            .services_on_node(node)
            .filter(|s| s.id != SERVER_SERVICE)
            .count();
        let checks: Vec<_> = state
            .checks_on_node(node)
            .filter(|c| c.check_id != atoll_state::NODE_HEALTH_CHECK_ID)
            .collect();
        let ttls = checks
            .iter()
            .filter(|c| c.definition.ttl_ms.is_some())
            .count();
        let meta = state
            .nodes
            .get(node)
            .map(|n| n.meta.clone())
            .unwrap_or_default();
        (services, checks.len(), ttls, meta)
    });
    let leader_addr = cluster.leader_addr().unwrap_or_default();
    let mut consul = json!({
        "acl": "disabled",
        "server": text(server),
        "known_servers": text(cluster.peers().len()),
    });
    let mut stats = json!({
        "agent": {
            "check_monitors": "0",
            "check_ttls": text(ttls),
            "checks": text(checks),
            "services": text(services),
        },
        "build": {
            "prerelease": "",
            "revision": BUILD_SHA,
            "version": context.version(),
            "version_metadata": "",
        },
        "runtime": {
            "arch": go_arch(),
            "os": std::env::consts::OS,
            "version": "rust",
            "cpu_count": text(cpu_count()),
            "max_procs": text(cpu_count()),
            "goroutines": text(tokio::runtime::Handle::current().metrics().num_alive_tasks()),
        },
    });
    if server {
        let raft = cluster.raft_stats();
        consul["leader"] = text(cluster.is_leader());
        consul["leader_addr"] = text(&leader_addr);
        consul["bootstrap"] = text(context.facts().bootstrap_expect == 1);
        consul["known_datacenters"] = text(1);
        stats["raft"] = json!({
            "state": raft.state,
            "term": text(raft.term),
            "last_log_index": text(raft.last_log_index),
            "last_log_term": text(raft.last_log_term),
            "commit_index": text(raft.commit_index),
            "applied_index": text(raft.applied_index),
            "fsm_pending": "0",
            "last_snapshot_index": text(raft.last_snapshot_index),
            "last_snapshot_term": text(raft.last_snapshot_term),
            "num_peers": text(raft.num_peers),
            "last_contact": if cluster.is_leader() {
                text(0)
            } else {
                text(format!("{}ms", cluster.last_contact_ms()))
            },
            "protocol_version": "3",
            "protocol_version_min": "0",
            "protocol_version_max": "3",
        });
    }
    stats["consul"] = consul;
    // A compute node's stream of the state: copies received, resumes, entries.
    if let Some(feed) = cluster.feed_stats() {
        stats["feed"] = json!({
            "snapshots": text(feed.snapshots),
            "resumes": text(feed.resumes),
            "entries": text(feed.entries),
            "streams": text(feed.streams),
            "server_http": text(cluster.server_http().unwrap_or_default()),
        });
    }
    let mut debug_config = context.facts().debug_config.clone();
    if !debug_config.is_object() {
        debug_config = json!({});
    }
    for (key, value) in [
        ("Datacenter", json!(context.datacenter())),
        ("NodeName", json!(node)),
        ("NodeID", json!(node_uuid(node))),
        ("ServerMode", json!(server)),
        ("NodeMeta", json!(meta)),
        ("Version", json!(context.version())),
    ] {
        debug_config[key] = value;
    }
    let body = json!({
        "Config": {
            "Datacenter": context.datacenter(),
            "PrimaryDatacenter": context.datacenter(),
            "NodeName": node,
            "NodeID": node_uuid(node),
            "Server": server,
            "Revision": BUILD_SHA,
            "Version": context.version(),
        },
        "DebugConfig": debug_config,
        // This node's LAN coordinate (none without a LAN pool).
        "Coord": context
            .lan()
            .map_or(Value::Null, |lan| json!(lan.coordinate())),
        "Member": own_member_json(&context),
        "Stats": stats,
        "Meta": meta,
        "xDS": Value::Null,
    });
    Ok(json_with_index(context.store().applied(), &body))
}

/// `GET /v1/agent/version`.
pub async fn version(State(context): State<ApiContext>) -> Response {
    json_with_index(
        context.store().applied(),
        &json!({
            "SHA": BUILD_SHA,
            "BuildDate": BUILD_DATE,
            "HumanVersion": context.version(),
            "FIPS": "",
        }),
    )
}

/// `PUT /v1/agent/reload`. Every setting of a node comes from its command line; the only
/// files it reads are the HTTPS listener's, which are read again (as on SIGHUP): a file that
/// does not load is a 500 naming it, and the listener keeps what it had. Otherwise the answer
/// is Consul's, an empty 200. Needs `agent:write` on this node.
pub async fn reload(State(context): State<ApiContext>, authz: Authz) -> Response {
    if let Err(denied) = authz.require_write(Segment::Agent, context.node()) {
        return denied.into_response();
    }
    if let Some(tls) = &context.facts().tls_reload {
        if let Err(e) = tls.reload().await {
            return ApiError::plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Failed reloading: {e}"),
            )
            .into_response();
        }
    }
    empty_ok(&context)
}

/// The body of `PUT /v1/agent/token/:type`.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct TokenBody {
    token: String,
}

/// `PUT /v1/agent/token/:type` `{"Token": ...}`: sets the agent's `default`, `agent` or
/// `replication` token (also by Consul's older names `acl_token`, `acl_agent_token` and
/// `acl_replication_token`); needs `acl:write`.
/// An empty token clears it. With ACLs off, Consul's 401 and plain text.
pub async fn token(
    State(context): State<ApiContext>,
    authz: crate::acl::Authz,
    Path(kind): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let settings = context.acl();
    if !settings.enabled {
        return Err(ApiError::plain(
            StatusCode::UNAUTHORIZED,
            "ACL support disabled",
        ));
    }
    authz.require(
        atoll_acl::Resource::Global(atoll_acl::Global::Acl),
        atoll_acl::Access::Write,
    )?;
    let body: TokenBody = crate::decode::decode_body(&body)?;
    let value = Some(body.token).filter(|t| !t.is_empty());
    let mut tokens = settings.tokens();
    match kind.as_str() {
        "default" | "acl_token" => tokens.default = value,
        "agent" | "acl_agent_token" => tokens.agent = value,
        "replication" | "acl_replication_token" => tokens.replication = value,
        other => {
            return Err(ApiError::field(
                "type",
                format!("Token {other:?} is unknown"),
            ))
        }
    }
    settings.set_tokens(tokens);
    tracing::info!("the agent's {kind} token was updated");
    Ok(empty_ok(&context))
}

/// `GET /v1/agent/host`: the host's memory, CPUs, system and the disk of the data dir, read
/// from `/proc` (Consul's shape, as its host-information library names the fields).
/// Needs `agent:read` on this node.
pub async fn host(State(context): State<ApiContext>, authz: Authz) -> Response {
    if let Err(denied) = authz.require_read(Segment::Agent, context.node()) {
        return denied.into_response();
    }
    let data_dir = context
        .facts()
        .data_dir
        .clone()
        .unwrap_or_else(|| "/".into());
    let body = tokio::task::spawn_blocking(move || host_info(&data_dir))
        .await
        .unwrap_or_else(|e| json!({ "Errors": [e.to_string()] }));
    json_with_index(context.store().applied(), &body)
}

fn host_info(data_dir: &std::path::Path) -> Value {
    let mut errors = Vec::new();
    let mut section = |name: &str, result: Result<Value, String>| {
        result.unwrap_or_else(|e| {
            errors.push(format!("{name}: {e}"));
            Value::Null
        })
    };
    let memory = section("memory", memory_info());
    let cpu = section("cpu", cpu_info());
    let host = section("host", system_info());
    let disk = section("disk", disk_info(data_dir));
    let collected = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    json!({
        "Memory": memory,
        "CPU": cpu,
        "Host": host,
        "Disk": disk,
        "CollectionTime": u64::try_from(collected).unwrap_or(u64::MAX),
        "Errors": if errors.is_empty() { Value::Null } else { json!(errors) },
    })
}

fn read(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// `/proc/meminfo` in bytes, keyed by its own names.
fn meminfo() -> Result<BTreeMap<String, u64>, String> {
    Ok(read("/proc/meminfo")?
        .lines()
        .filter_map(|line| {
            let (key, rest) = line.split_once(':')?;
            let mut words = rest.split_whitespace();
            let value: u64 = words.next()?.parse().ok()?;
            let scale = if words.next() == Some("kB") { 1024 } else { 1 };
            Some((key.to_string(), value * scale))
        })
        .collect())
}

fn memory_info() -> Result<Value, String> {
    let info = meminfo()?;
    let get = |key: &str| info.get(key).copied().unwrap_or(0);
    let total = get("MemTotal");
    let free = get("MemFree");
    let buffers = get("Buffers");
    let cached = get("Cached") + get("SReclaimable");
    let available = info
        .get("MemAvailable")
        .copied()
        .unwrap_or(free + buffers + cached);
    let used = total.saturating_sub(free + buffers + cached);
    Ok(json!({
        "total": total,
        "available": available,
        "used": used,
        "usedPercent": percent(used, total),
        "free": free,
        "active": get("Active"),
        "inactive": get("Inactive"),
        "buffers": buffers,
        "cached": cached,
        "writeBack": get("Writeback"),
        "dirty": get("Dirty"),
        "shared": get("Shmem"),
        "slab": get("Slab"),
        "sreclaimable": get("SReclaimable"),
        "sunreclaim": get("SUnreclaim"),
        "pageTables": get("PageTables"),
        "swapCached": get("SwapCached"),
        "commitLimit": get("CommitLimit"),
        "committedAS": get("Committed_AS"),
        "swapTotal": get("SwapTotal"),
        "swapFree": get("SwapFree"),
        "mapped": get("Mapped"),
        "hugePagesTotal": get("HugePages_Total"),
        "hugePagesFree": get("HugePages_Free"),
        "hugePageSize": get("Hugepagesize"),
    }))
}

fn cpu_info() -> Result<Value, String> {
    let text = read("/proc/cpuinfo")?;
    let mut cpus = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let fields: BTreeMap<&str, &str> = block
            .lines()
            .filter_map(|line| {
                let (key, value) = line.split_once(':')?;
                Some((key.trim(), value.trim()))
            })
            .collect();
        let get = |key: &str| fields.get(key).copied().unwrap_or("");
        let number = |key: &str| get(key).parse::<u64>().unwrap_or(0);
        let cache_kb = get("cache size")
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        cpus.push(json!({
            "cpu": number("processor"),
            "vendorId": get("vendor_id"),
            "family": get("cpu family"),
            "model": get("model"),
            "stepping": number("stepping"),
            "physicalId": get("physical id"),
            "coreId": get("core id"),
            "cores": number("cpu cores").max(1),
            "modelName": get("model name"),
            "mhz": get("cpu MHz").parse::<f64>().unwrap_or(0.0),
            "cacheSize": cache_kb,
            "flags": get("flags").split_whitespace().collect::<Vec<_>>(),
            "microcode": get("microcode"),
        }));
    }
    Ok(json!(cpus))
}

/// `ID=` and `VERSION_ID=`, `ID_LIKE=` of `/etc/os-release`.
fn os_release() -> BTreeMap<String, String> {
    std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            Some((key.to_string(), value.trim_matches('"').to_string()))
        })
        .collect()
}

fn system_info() -> Result<Value, String> {
    let uptime: f64 = read("/proc/uptime")?
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or("/proc/uptime: unreadable")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let procs = std::fs::read_dir("/proc")
        .map_err(|e| format!("/proc: {e}"))?
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().parse::<u32>().is_ok())
        .count();
    let os = os_release();
    let field = |key: &str| os.get(key).cloned().unwrap_or_default();
    let family = os
        .get("ID_LIKE")
        .and_then(|like| like.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| field("ID"));
    let trimmed = |path: &str| read(path).map(|s| s.trim().to_string()).unwrap_or_default();
    Ok(json!({
        "hostname": trimmed("/proc/sys/kernel/hostname"),
        "uptime": uptime as u64,
        "bootTime": now.saturating_sub(uptime as u64),
        "procs": procs,
        "os": std::env::consts::OS,
        "platform": field("ID"),
        "platformFamily": family,
        "platformVersion": field("VERSION_ID"),
        "kernelVersion": trimmed("/proc/sys/kernel/osrelease"),
        "kernelArch": std::env::consts::ARCH,
        "virtualizationSystem": "",
        "virtualizationRole": "",
        "hostId": trimmed("/proc/sys/kernel/random/boot_id"),
    }))
}

fn disk_info(path: &std::path::Path) -> Result<Value, String> {
    let stat = rustix::fs::statvfs(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let block = stat.f_frsize;
    let total = stat.f_blocks * block;
    let free = stat.f_bavail * block;
    let used = (stat.f_blocks - stat.f_bfree) * block;
    let inodes_used = stat.f_files.saturating_sub(stat.f_ffree);
    Ok(json!({
        "path": path.display().to_string(),
        "fstype": "",
        "total": total,
        "free": free,
        "used": used,
        "usedPercent": percent(used, used + free),
        "inodesTotal": stat.f_files,
        "inodesUsed": inodes_used,
        "inodesFree": stat.f_ffree,
        "inodesUsedPercent": percent(inodes_used, stat.f_files),
    }))
}
