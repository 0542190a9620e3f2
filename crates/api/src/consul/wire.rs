//! Consul's JSON shapes, converted from the domain rows. Field names as Consul spells them.

use std::collections::BTreeMap;

use atoll_state::{Check, KvEntry, Node, ServiceAddress, ServiceInstance};
use base64::Engine;
use serde::Serialize;

/// A node as `/v1/catalog/nodes` and `/v1/health/service` show it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeJson<'a> {
    /// The node's id, derived from its name as the agent reports it (`/v1/agent/self`).
    #[serde(rename = "ID")]
    id: String,
    node: &'a str,
    address: &'a str,
    datacenter: &'a str,
    tagged_addresses: BTreeMap<&'a str, &'a str>,
    meta: &'a BTreeMap<String, String>,
    create_index: u64,
    modify_index: u64,
}

impl<'a> NodeJson<'a> {
    /// Converts a node row.
    pub fn new(node: &'a Node) -> Self {
        let mut tagged_addresses: BTreeMap<&str, &str> = node
            .tagged_addresses
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        // Consul's agent tags its node's address for both networks and, by family, as
        // `lan_ipv4`/`wan_ipv4` (or `_ipv6`).
        let family = match node.address.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(_)) => Some(["lan_ipv4", "wan_ipv4"]),
            Ok(std::net::IpAddr::V6(_)) => Some(["lan_ipv6", "wan_ipv6"]),
            Err(_) => None,
        };
        for tag in ["lan", "wan"]
            .into_iter()
            .chain(family.into_iter().flatten())
        {
            tagged_addresses.entry(tag).or_insert(&node.address);
        }
        NodeJson {
            id: atoll_cluster::node_uuid(&node.name),
            node: &node.name,
            address: &node.address,
            datacenter: &node.datacenter,
            tagged_addresses,
            meta: &node.meta,
            create_index: node.create_index,
            modify_index: node.modify_index,
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        self.node
    }
}

/// Consul's load-balancing weights; atoll does not weight, so these are the defaults.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Weights {
    passing: u32,
    warning: u32,
}

const DEFAULT_WEIGHTS: Weights = Weights {
    passing: 1,
    warning: 1,
};

/// A tagged address of a service.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceAddressJson<'a> {
    address: &'a str,
    port: u16,
}

fn service_addresses(
    addresses: &BTreeMap<String, ServiceAddress>,
) -> BTreeMap<&str, ServiceAddressJson<'_>> {
    addresses
        .iter()
        .map(|(tag, a)| {
            (
                tag.as_str(),
                ServiceAddressJson {
                    address: &a.address,
                    port: a.port,
                },
            )
        })
        .collect()
}

/// A service instance as the agent and health endpoints show it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    service: &'a str,
    tags: &'a [String],
    address: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    tagged_addresses: BTreeMap<&'a str, ServiceAddressJson<'a>>,
    meta: &'a BTreeMap<String, String>,
    port: u16,
    weights: Weights,
    enable_tag_override: bool,
    datacenter: &'a str,
    create_index: u64,
    modify_index: u64,
}

impl<'a> ServiceJson<'a> {
    /// The instance's id.
    pub fn id(&self) -> &'a str {
        self.id
    }

    /// Converts an instance row.
    pub fn new(service: &'a ServiceInstance, datacenter: &'a str) -> Self {
        ServiceJson {
            id: &service.id,
            service: &service.name,
            tags: &service.tags,
            address: &service.address,
            tagged_addresses: service_addresses(&service.tagged_addresses),
            meta: &service.meta,
            port: service.port,
            weights: DEFAULT_WEIGHTS,
            enable_tag_override: service.enable_tag_override,
            datacenter,
            create_index: service.create_index,
            modify_index: service.modify_index,
        }
    }
}

/// One row of `/v1/catalog/service/NAME`: node and service flattened.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogServiceJson<'a> {
    #[serde(rename = "ID")]
    id: String,
    node: &'a str,
    address: &'a str,
    datacenter: &'a str,
    tagged_addresses: BTreeMap<&'a str, &'a str>,
    node_meta: &'a BTreeMap<String, String>,
    #[serde(rename = "ServiceID")]
    service_id: &'a str,
    service_name: &'a str,
    service_tags: &'a [String],
    service_address: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    service_tagged_addresses: BTreeMap<&'a str, ServiceAddressJson<'a>>,
    service_port: u16,
    service_meta: &'a BTreeMap<String, String>,
    service_weights: Weights,
    service_enable_tag_override: bool,
    create_index: u64,
    modify_index: u64,
}

impl<'a> CatalogServiceJson<'a> {
    /// Converts an instance and its node.
    pub fn new(node: &'a Node, service: &'a ServiceInstance) -> Self {
        let node_json = NodeJson::new(node);
        CatalogServiceJson {
            id: node_json.id.clone(),
            node: &node.name,
            address: &node.address,
            datacenter: &node.datacenter,
            tagged_addresses: node_json.tagged_addresses,
            node_meta: &node.meta,
            service_id: &service.id,
            service_name: &service.name,
            service_tags: &service.tags,
            service_address: &service.address,
            service_tagged_addresses: service_addresses(&service.tagged_addresses),
            service_port: service.port,
            service_meta: &service.meta,
            service_weights: DEFAULT_WEIGHTS,
            service_enable_tag_override: service.enable_tag_override,
            create_index: service.create_index,
            modify_index: service.modify_index,
        }
    }
}

/// The definition part of a check, as `/v1/agent/checks` echoes it.
#[derive(Serialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct CheckDefinitionJson<'a> {
    #[serde(rename = "HTTP", skip_serializing_if = "Option::is_none")]
    http: Option<&'a str>,
    #[serde(rename = "TCP", skip_serializing_if = "Option::is_none")]
    tcp: Option<&'a str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    interval: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    timeout: &'a str,
    #[serde(rename = "TTL", skip_serializing_if = "str::is_empty")]
    ttl: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
    #[serde(rename = "TLSSkipVerify", skip_serializing_if = "std::ops::Not::not")]
    tls_skip_verify: bool,
    #[serde(rename = "TLSServerName", skip_serializing_if = "str::is_empty")]
    tls_server_name: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    script_args: &'a [String],
    #[serde(rename = "DockerContainerID", skip_serializing_if = "Option::is_none")]
    docker_container_id: Option<&'a str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    shell: &'a str,
}

/// A check as every endpoint shows it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckJson<'a> {
    node: &'a str,
    #[serde(rename = "CheckID")]
    check_id: &'a str,
    name: &'a str,
    status: &'static str,
    notes: &'a str,
    output: &'a str,
    #[serde(rename = "ServiceID")]
    service_id: &'a str,
    service_name: &'a str,
    service_tags: &'a [String],
    #[serde(rename = "Type")]
    kind: &'static str,
    definition: CheckDefinitionJson<'a>,
    create_index: u64,
    modify_index: u64,
}

impl<'a> CheckJson<'a> {
    /// Converts a check row.
    pub fn new(check: &'a Check) -> Self {
        let definition = &check.definition;
        CheckJson {
            node: &check.node,
            check_id: &check.check_id,
            name: &check.name,
            status: check.status.as_str(),
            notes: &check.notes,
            output: &check.output,
            service_id: &check.service_id,
            service_name: &check.service_name,
            service_tags: &check.service_tags,
            kind: if is_maintenance_check(&check.check_id) {
                "maintenance"
            } else {
                definition.kind().consul_type()
            },
            definition: CheckDefinitionJson {
                http: definition.http.as_deref(),
                tcp: definition.tcp.as_deref(),
                interval: &definition.interval_text,
                timeout: &definition.timeout_text,
                ttl: &definition.ttl_text,
                method: definition.method.as_deref(),
                body: definition.body.as_deref(),
                tls_skip_verify: definition.tls_skip_verify,
                tls_server_name: &definition.tls_server_name,
                script_args: &definition.args,
                docker_container_id: definition.docker_container_id.as_deref(),
                shell: &definition.shell,
            },
            create_index: check.create_index,
            modify_index: check.modify_index,
        }
    }

    /// The node the check belongs to.
    pub fn node(&self) -> &str {
        self.node
    }
}

/// The check id of a node's maintenance mode.
pub const NODE_MAINTENANCE_CHECK_ID: &str = "_node_maintenance";
/// The prefix of the check id of a service's maintenance mode (followed by its id).
pub const SERVICE_MAINTENANCE_PREFIX: &str = "_service_maintenance:";

/// Whether a check is one of the maintenance-mode checks (Consul's type `maintenance`).
pub fn is_maintenance_check(check_id: &str) -> bool {
    check_id == NODE_MAINTENANCE_CHECK_ID || check_id.starts_with(SERVICE_MAINTENANCE_PREFIX)
}

/// One entry of `/v1/health/service/NAME`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthEntryJson<'a> {
    /// The node.
    pub node: NodeJson<'a>,
    /// The instance.
    pub service: ServiceJson<'a>,
    /// Its checks and its node's.
    pub checks: Vec<CheckJson<'a>>,
}

/// A KV entry.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KvJson<'a> {
    key: &'a str,
    value: Option<String>,
    flags: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<&'a str>,
    lock_index: u64,
    create_index: u64,
    modify_index: u64,
}

impl<'a> KvJson<'a> {
    /// Converts an entry; an empty value is `null`, as Consul shows it.
    pub fn new(entry: &'a KvEntry) -> Self {
        KvJson {
            key: &entry.key,
            value: (!entry.value.is_empty())
                .then(|| base64::engine::general_purpose::STANDARD.encode(&entry.value)),
            flags: entry.flags,
            session: entry.session.as_deref(),
            lock_index: entry.lock_index,
            create_index: entry.create_index,
            modify_index: entry.modify_index,
        }
    }
}

/// A session, as `/v1/session/*` shows it (Consul 1.10's shape: `LockDelay` in nanoseconds,
/// `TTL` as given, the deprecated `Checks` only when set).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SessionJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    name: &'a str,
    node: &'a str,
    lock_delay: u64,
    behavior: &'static str,
    #[serde(rename = "TTL")]
    ttl: &'a str,
    node_checks: &'a [String],
    service_checks: Option<Vec<ServiceCheckJson<'a>>>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    checks: &'a [String],
    create_index: u64,
    modify_index: u64,
}

/// A service check a session is tied to.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceCheckJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    namespace: &'a str,
}

impl<'a> SessionJson<'a> {
    /// Converts a session.
    pub fn new(session: &'a atoll_state::Session) -> Self {
        SessionJson {
            id: &session.id,
            name: &session.name,
            node: &session.node,
            lock_delay: session.lock_delay_ns,
            behavior: session.behavior.as_str(),
            ttl: &session.ttl,
            node_checks: &session.node_checks,
            service_checks: (!session.service_checks.is_empty()).then(|| {
                session
                    .service_checks
                    .iter()
                    .map(|c| ServiceCheckJson {
                        id: &c.id,
                        namespace: &c.namespace,
                    })
                    .collect()
            }),
            checks: &session.checks,
            create_index: session.create_index,
            modify_index: session.modify_index,
        }
    }
}

/// The shapes `?filter=` expressions are checked against: one per JSON type above, field
/// for field (a test checks that they match what the types serialize).
pub mod shapes {
    use crate::consul::filter::Shape;

    const TEXT_MAP: Shape = Shape::Map(&Shape::Text);
    const TEXT_LIST: Shape = Shape::List(&Shape::Text);
    const WEIGHTS: Shape =
        Shape::Object(&[("Passing", Shape::Integer), ("Warning", Shape::Integer)]);

    /// [`super::NodeJson`].
    pub const NODE: Shape = Shape::Object(&[
        ("ID", Shape::Text),
        ("Node", Shape::Text),
        ("Address", Shape::Text),
        ("Datacenter", Shape::Text),
        ("TaggedAddresses", TEXT_MAP),
        ("Meta", TEXT_MAP),
        ("CreateIndex", Shape::Integer),
        ("ModifyIndex", Shape::Integer),
    ]);

    /// [`super::ServiceJson`].
    pub const SERVICE: Shape = Shape::Object(&[
        ("ID", Shape::Text),
        ("Service", Shape::Text),
        ("Tags", TEXT_LIST),
        ("Address", Shape::Text),
        ("Meta", TEXT_MAP),
        ("Port", Shape::Integer),
        ("Weights", WEIGHTS),
        ("EnableTagOverride", Shape::Boolean),
        ("Datacenter", Shape::Text),
        ("CreateIndex", Shape::Integer),
        ("ModifyIndex", Shape::Integer),
    ]);

    /// [`super::CatalogServiceJson`].
    pub const CATALOG_SERVICE: Shape = Shape::Object(&[
        ("ID", Shape::Text),
        ("Node", Shape::Text),
        ("Address", Shape::Text),
        ("Datacenter", Shape::Text),
        ("TaggedAddresses", TEXT_MAP),
        ("NodeMeta", TEXT_MAP),
        ("ServiceID", Shape::Text),
        ("ServiceName", Shape::Text),
        ("ServiceTags", TEXT_LIST),
        ("ServiceAddress", Shape::Text),
        ("ServicePort", Shape::Integer),
        ("ServiceMeta", TEXT_MAP),
        ("ServiceWeights", WEIGHTS),
        ("ServiceEnableTagOverride", Shape::Boolean),
        ("CreateIndex", Shape::Integer),
        ("ModifyIndex", Shape::Integer),
    ]);

    /// [`super::CheckJson`].
    pub const CHECK: Shape = Shape::Object(&[
        ("Node", Shape::Text),
        ("CheckID", Shape::Text),
        ("Name", Shape::Text),
        ("Status", Shape::Text),
        ("Notes", Shape::Text),
        ("Output", Shape::Text),
        ("ServiceID", Shape::Text),
        ("ServiceName", Shape::Text),
        ("ServiceTags", TEXT_LIST),
        ("Type", Shape::Text),
        (
            "Definition",
            Shape::Object(&[
                ("HTTP", Shape::Text),
                ("TCP", Shape::Text),
                ("Interval", Shape::Text),
                ("Timeout", Shape::Text),
                ("TTL", Shape::Text),
            ]),
        ),
        ("CreateIndex", Shape::Integer),
        ("ModifyIndex", Shape::Integer),
    ]);

    /// [`super::HealthEntryJson`].
    pub const HEALTH_ENTRY: Shape = Shape::Object(&[
        ("Node", NODE),
        ("Service", SERVICE),
        ("Checks", Shape::List(&CHECK)),
    ]);
}
