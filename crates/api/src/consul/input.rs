//! Request bodies of the registration endpoints, parsed (see [`crate::decode`]) and then
//! validated into domain specs. Nothing here has side effects.

use std::collections::BTreeMap;

use atoll_state::{
    CheckDefinition, CheckSpec, CheckStatus, Command, Deregistration, Registration, ServiceAddress,
    ServiceCheckRef, ServiceSpec, Session, SessionBehavior, NODE_HEALTH_CHECK_ID,
};
use axum::http::StatusCode;
use serde::Deserialize;

use crate::decode::{decode_body, normalize_name, parse_duration};
use crate::error::ApiError;
use crate::query::Query;

/// A duration as Consul accepts it: Go text (`"10s"`) or nanoseconds.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum DurationIn {
    /// `"10s"`.
    Text(String),
    /// Nanoseconds.
    Nanos(u64),
}

impl DurationIn {
    fn millis(&self, field: &str) -> Result<(u64, String), ApiError> {
        match self {
            DurationIn::Text(text) => parse_duration(text)
                .map(|d| {
                    let millis = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                    (millis, text.clone())
                })
                .ok_or_else(|| {
                    ApiError::field(field, format!("Invalid duration {text:?} for {field}"))
                }),
            DurationIn::Nanos(nanos) => Ok((nanos / 1_000_000, format!("{}ms", nanos / 1_000_000))),
        }
    }
}

/// A check as submitted to the agent or inside a service definition.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CheckIn {
    /// Id (`ID` or `CheckID`).
    pub id: Option<String>,
    /// Alias of `id`.
    pub checkid: Option<String>,
    /// Name.
    pub name: Option<String>,
    /// Notes.
    pub notes: Option<String>,
    /// Initial status.
    pub status: Option<String>,
    /// Guarded service.
    pub serviceid: Option<String>,
    /// TTL.
    pub ttl: Option<DurationIn>,
    /// HTTP URL.
    pub http: Option<String>,
    /// HTTP method.
    pub method: Option<String>,
    /// HTTP headers.
    pub header: Option<BTreeMap<String, Vec<String>>>,
    /// TCP address.
    pub tcp: Option<String>,
    /// Interval.
    pub interval: Option<DurationIn>,
    /// Timeout.
    pub timeout: Option<DurationIn>,
    /// Deregister after critical this long.
    pub deregistercriticalserviceafter: Option<DurationIn>,
    /// Script checks: the program and its arguments (with `DockerContainerID`, what follows
    /// the shell's `-c`).
    pub args: Option<Vec<String>>,
    /// Script checks, the old way: one command run through `/bin/sh -c`.
    pub script: Option<String>,
    /// Docker checks: the container to run the command in.
    pub dockercontainerid: Option<String>,
    /// Docker checks: the shell (default `/bin/sh`).
    pub shell: Option<String>,
    /// HTTP checks: the request body.
    pub body: Option<String>,
    /// HTTPS checks: accept any certificate.
    pub tlsskipverify: Option<bool>,
    /// HTTPS checks: the server name to send and verify.
    pub tlsservername: Option<String>,
    /// Consecutive successes before passing.
    pub successbeforepassing: Option<u32>,
    /// Consecutive failures before critical.
    pub failuresbeforecritical: Option<u32>,
    /// gRPC checks (not supported).
    pub grpc: Option<String>,
    /// HTTP/2 ping checks (not supported).
    pub h2ping: Option<String>,
    /// Output.
    pub output: Option<String>,
}

impl CheckIn {
    /// Validates into a spec; `field` names this check in error messages.
    pub fn into_spec(
        self,
        field: &str,
        default_id: String,
        default_name: String,
        service_id: Option<&str>,
    ) -> Result<CheckSpec, ApiError> {
        for (name, given) in [("GRPC", &self.grpc), ("H2PING", &self.h2ping)] {
            if given.as_deref().is_some_and(|v| !v.is_empty()) {
                return Err(ApiError::field(
                    &format!("{field}.{name}"),
                    format!("{field}.{name}: {name} checks are not supported; use TTL, HTTP, TCP, script or Docker checks"),
                ));
            }
        }
        let args = self.args.clone().filter(|a| !a.is_empty());
        let script = self.script.clone().filter(|s| !s.is_empty());
        if args.is_some() && script.is_some() {
            return Err(ApiError::field(
                &format!("{field}.Script"),
                format!("{field}: Args and Script cannot both be specified"),
            ));
        }
        let docker = self.dockercontainerid.clone().filter(|c| !c.is_empty());
        let command = args.is_some() || script.is_some();
        if docker.is_some() && !command {
            return Err(ApiError::field(
                &format!("{field}.Args"),
                format!("{field}: a Docker check needs Args or Script"),
            ));
        }
        let kinds = [
            self.ttl.is_some(),
            self.http.is_some(),
            self.tcp.is_some(),
            command,
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err(ApiError::field(
                field,
                format!("{field}: exactly one of TTL, HTTP, TCP or Args (script and Docker checks) is required"),
            ));
        }
        if self.ttl.is_some() && self.interval.is_some() {
            return Err(ApiError::field(
                &format!("{field}.Interval"),
                format!("{field}: Interval and TTL cannot both be specified"),
            ));
        }
        let mut definition = CheckDefinition::default();
        if let Some(ttl) = &self.ttl {
            let (ms, text) = ttl.millis(&format!("{field}.TTL"))?;
            if ms == 0 {
                return Err(ApiError::field(
                    &format!("{field}.TTL"),
                    "TTL must be greater than zero",
                ));
            }
            definition.ttl_ms = Some(ms);
            definition.ttl_text = text;
        } else {
            let Some(interval) = &self.interval else {
                return Err(ApiError::field(
                    &format!("{field}.Interval"),
                    format!(
                        "{field}: Interval is required for HTTP, TCP, script and Docker checks"
                    ),
                ));
            };
            let (ms, text) = interval.millis(&format!("{field}.Interval"))?;
            if ms == 0 {
                return Err(ApiError::field(
                    &format!("{field}.Interval"),
                    "Interval must be greater than zero",
                ));
            }
            definition.interval_ms = Some(ms);
            definition.interval_text = text;
        }
        if let Some(http) = &self.http {
            if !(http.starts_with("http://") || http.starts_with("https://"))
                || http.parse::<axum::http::Uri>().is_err()
            {
                return Err(ApiError::field(
                    &format!("{field}.HTTP"),
                    format!("Invalid HTTP check URL {http:?}"),
                ));
            }
            definition.http = Some(http.clone());
            definition.method = self.method.clone().filter(|m| !m.is_empty());
            definition.header = self.header.clone().unwrap_or_default();
            definition.body = self.body.clone().filter(|b| !b.is_empty());
            definition.tls_skip_verify = self.tlsskipverify.unwrap_or(false);
            definition.tls_server_name = self.tlsservername.clone().unwrap_or_default();
        }
        if let Some(args) = args {
            definition.args = args;
        } else if let Some(script) = script {
            // A Docker check hands the script to its shell; a script check to /bin/sh.
            definition.args = if docker.is_some() {
                vec![script]
            } else {
                vec!["/bin/sh".to_string(), "-c".to_string(), script]
            };
        }
        definition.docker_container_id = docker;
        definition.shell = self.shell.clone().unwrap_or_default();
        definition.success_before_passing = self.successbeforepassing.unwrap_or(0);
        definition.failures_before_critical = self.failuresbeforecritical.unwrap_or(0);
        if let Some(tcp) = &self.tcp {
            if tcp
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                return Err(ApiError::field(
                    &format!("{field}.TCP"),
                    format!("Invalid TCP check address {tcp:?}: expected host:port"),
                ));
            }
            definition.tcp = Some(tcp.clone());
        }
        if let Some(timeout) = &self.timeout {
            let (ms, text) = timeout.millis(&format!("{field}.Timeout"))?;
            definition.timeout_ms = Some(ms);
            definition.timeout_text = text;
        }
        if let Some(after) = &self.deregistercriticalserviceafter {
            definition.deregister_critical_after_ms = Some(
                after
                    .millis(&format!("{field}.DeregisterCriticalServiceAfter"))?
                    .0,
            );
        }
        let status = match self.status.as_deref() {
            None | Some("") => None,
            Some(text) => Some(CheckStatus::parse(text).ok_or_else(|| {
                ApiError::field(
                    &format!("{field}.Status"),
                    format!("Invalid check status {text:?}: expected passing, warning or critical"),
                )
            })?),
        };
        let check_id = self
            .id
            .or(self.checkid)
            .filter(|id| !id.is_empty())
            .unwrap_or(default_id);
        let service_id = service_id
            .map(str::to_string)
            .or(self.serviceid)
            .unwrap_or_default();
        Ok(CheckSpec {
            name: self.name.filter(|n| !n.is_empty()).unwrap_or(default_name),
            check_id,
            status,
            notes: self.notes.unwrap_or_default(),
            output: self.output.unwrap_or_default(),
            service_id,
            definition,
        })
    }
}

/// `PUT /v1/agent/service/register`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct AgentServiceIn {
    /// Instance id, defaults to the name.
    pub id: Option<String>,
    /// Service name.
    pub name: Option<String>,
    /// Tags.
    pub tags: Option<Vec<String>>,
    /// Address.
    pub address: Option<String>,
    /// Port.
    pub port: Option<u16>,
    /// Metadata.
    pub meta: Option<BTreeMap<String, String>>,
    /// Consul's flag.
    pub enabletagoverride: Option<bool>,
    /// One check.
    pub check: Option<CheckIn>,
    /// Several checks.
    pub checks: Option<Vec<CheckIn>>,
    /// Service kind (only plain services are supported).
    pub kind: Option<String>,
    /// Tagged addresses: `{"lan": {"Address": ..., "Port": ...}}`.
    pub taggedaddresses: Option<BTreeMap<String, serde_json::Value>>,
}

/// A service's `TaggedAddresses` (their keys kept verbatim, the fields of each matched as
/// every field is): each an object with an `Address` and an optional `Port`.
fn service_addresses(
    field: &str,
    input: Option<BTreeMap<String, serde_json::Value>>,
) -> Result<BTreeMap<String, ServiceAddress>, ApiError> {
    let mut addresses = BTreeMap::new();
    for (tag, value) in input.unwrap_or_default() {
        let at = format!("{field}.{tag}");
        let serde_json::Value::Object(fields) = value else {
            return Err(ApiError::field(
                &at,
                format!("Invalid tagged address {tag:?}: expected an object with Address and Port"),
            ));
        };
        let mut address = ServiceAddress::default();
        for (name, value) in fields {
            match (normalize_name(&name).as_str(), value) {
                ("address", serde_json::Value::String(text)) => address.address = text,
                ("port", serde_json::Value::Number(n)) => {
                    address.port =
                        n.as_u64()
                            .and_then(|p| u16::try_from(p).ok())
                            .ok_or_else(|| {
                                ApiError::field(&format!("{at}.Port"), format!("Invalid port {n}"))
                            })?;
                }
                ("address" | "port", other) => {
                    return Err(ApiError::field(
                        &format!("{at}.{name}"),
                        format!("Invalid value {other} for {name}"),
                    ))
                }
                _ => {}
            }
        }
        if address.address.trim().is_empty() {
            return Err(ApiError::field(
                &format!("{at}.Address"),
                format!("Tagged address {tag:?} has no Address"),
            ));
        }
        addresses.insert(tag, address);
    }
    Ok(addresses)
}

/// Validates a service name or id used in DNS labels and URL paths.
pub fn validate_name(field: &str, value: &str) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::field(field, format!("Missing service {field}")));
    }
    if value.chars().any(|c| c.is_control() || c == '/') {
        return Err(ApiError::field(
            field,
            format!("Invalid {field} {value:?}: must not contain '/' or control characters"),
        ));
    }
    Ok(())
}

impl AgentServiceIn {
    /// Validates into a service spec and its checks (Consul's check ids `service:ID[:N]`).
    pub fn into_specs(self) -> Result<(ServiceSpec, Vec<CheckSpec>), ApiError> {
        if let Some(kind) = self.kind.as_deref().filter(|k| !k.is_empty()) {
            return Err(ApiError::field(
                "Kind",
                format!("Service kind {kind:?} is not supported"),
            ));
        }
        let name = self.name.unwrap_or_default();
        validate_name("Name", &name)?;
        let id = self
            .id
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| name.clone());
        validate_name("ID", &id)?;
        let mut checks_in: Vec<CheckIn> = self.check.into_iter().collect();
        checks_in.extend(self.checks.unwrap_or_default());
        let several = checks_in.len() > 1;
        let mut checks = Vec::new();
        for (i, check) in checks_in.into_iter().enumerate() {
            let default_id = if several {
                format!("service:{id}:{}", i + 1)
            } else {
                format!("service:{id}")
            };
            let field = if several {
                format!("Checks[{i}]")
            } else {
                "Check".to_string()
            };
            checks.push(check.into_spec(
                &field,
                default_id,
                format!("Service '{name}' check"),
                Some(&id),
            )?);
        }
        let spec = ServiceSpec {
            id,
            name,
            tags: self.tags.unwrap_or_default(),
            address: self.address.unwrap_or_default(),
            port: self.port.unwrap_or(0),
            meta: self.meta.unwrap_or_default(),
            enable_tag_override: self.enabletagoverride.unwrap_or(false),
            tagged_addresses: service_addresses("TaggedAddresses", self.taggedaddresses)?,
        };
        Ok((spec, checks))
    }
}

/// The body of `PUT /v1/agent/service/register`, decoded and validated.
pub fn parse_service_registration(body: &[u8]) -> Result<(ServiceSpec, Vec<CheckSpec>), ApiError> {
    decode_body::<AgentServiceIn>(body)?.into_specs()
}

/// The body of `PUT /v1/agent/check/register`, decoded and validated (whether its
/// `ServiceID` exists is for the handler to check against the state).
pub fn parse_check_registration(body: &[u8]) -> Result<CheckSpec, ApiError> {
    let input: CheckIn = decode_body(body)?;
    let name = input.name.clone().unwrap_or_default();
    if name.trim().is_empty() {
        return Err(ApiError::field("Name", "Missing check name"));
    }
    let default_id = input
        .id
        .clone()
        .or(input.checkid.clone())
        .unwrap_or_else(|| name.clone());
    validate_name("ID", &default_id)?;
    input.into_spec("Check", default_id, name, None)
}

#[derive(Deserialize)]
#[serde(default)]
#[derive(Default)]
struct CheckUpdateIn {
    status: Option<String>,
    output: Option<String>,
}

/// The body of `PUT /v1/agent/check/update/:id` (`{"Status", "Output"}`): the new status
/// and output.
pub fn parse_check_update(body: &[u8]) -> Result<(CheckStatus, String), ApiError> {
    let input: CheckUpdateIn = decode_body(body)?;
    let text = input.status.unwrap_or_default();
    let status = CheckStatus::parse(&text).ok_or_else(|| {
        ApiError::field(
            "Status",
            format!("Invalid check status {text:?}: expected passing, warning or critical"),
        )
    })?;
    Ok((status, input.output.unwrap_or_default()))
}

/// A service instance in a catalog registration or a transaction.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct CatalogServiceIn {
    pub(crate) id: Option<String>,
    pub(crate) service: Option<String>,
    tags: Option<Vec<String>>,
    address: Option<String>,
    port: Option<u16>,
    meta: Option<BTreeMap<String, String>>,
    enabletagoverride: Option<bool>,
    /// Compared by a transaction's `cas` and `delete-cas`.
    pub(crate) modifyindex: u64,
    taggedaddresses: Option<BTreeMap<String, serde_json::Value>>,
}

impl CatalogServiceIn {
    /// Validates into a spec (the id defaults to the name); `field` names it in errors.
    pub(crate) fn into_spec(self, field: &str) -> Result<ServiceSpec, ApiError> {
        let name = self.service.unwrap_or_default();
        validate_name(&format!("{field}.Service"), &name)?;
        let id = self
            .id
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| name.clone());
        validate_name(&format!("{field}.ID"), &id)?;
        Ok(ServiceSpec {
            id,
            name,
            tags: self.tags.unwrap_or_default(),
            address: self.address.unwrap_or_default(),
            port: self.port.unwrap_or(0),
            meta: self.meta.unwrap_or_default(),
            enable_tag_override: self.enabletagoverride.unwrap_or(false),
            tagged_addresses: service_addresses(
                &format!("{field}.TaggedAddresses"),
                self.taggedaddresses,
            )?,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CatalogRegisterIn {
    node: Option<String>,
    address: Option<String>,
    datacenter: Option<String>,
    taggedaddresses: Option<BTreeMap<String, String>>,
    nodemeta: Option<BTreeMap<String, String>>,
    service: Option<CatalogServiceIn>,
    check: Option<CatalogCheckIn>,
    checks: Option<Vec<CatalogCheckIn>>,
    skipnodeupdate: Option<bool>,
}

/// Catalog checks carry no runnable definition: their status is set by whoever registers them.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct CatalogCheckIn {
    /// The node (in a transaction).
    pub(crate) node: Option<String>,
    checkid: Option<String>,
    name: Option<String>,
    notes: Option<String>,
    status: Option<String>,
    serviceid: Option<String>,
    output: Option<String>,
    definition: Option<CheckIn>,
    /// Compared by a transaction's `cas` and `delete-cas`.
    pub(crate) modifyindex: u64,
}

impl CatalogCheckIn {
    /// Validates into a spec (the id defaults to the name); `field` names it in errors.
    pub(crate) fn into_spec(self, field: &str) -> Result<CheckSpec, ApiError> {
        let check_id = self.checkid.or(self.name.clone()).unwrap_or_default();
        if check_id.is_empty() {
            return Err(ApiError::field(field, "Check must have a CheckID or Name"));
        }
        let status = match self.status.as_deref() {
            None | Some("") => None,
            Some(text) => Some(CheckStatus::parse(text).ok_or_else(|| {
                ApiError::field(
                    &format!("{field}.Status"),
                    format!("Invalid check status {text:?}"),
                )
            })?),
        };
        let mut spec = CheckSpec {
            check_id: check_id.clone(),
            name: self.name.unwrap_or_else(|| check_id.clone()),
            status,
            notes: self.notes.unwrap_or_default(),
            output: self.output.unwrap_or_default(),
            service_id: self.serviceid.unwrap_or_default(),
            definition: Default::default(),
        };
        if let Some(definition) = self
            .definition
            .filter(|d| d.ttl.is_some() || d.http.is_some() || d.tcp.is_some())
        {
            spec.definition = definition
                .into_spec(
                    &format!("{field}.Definition"),
                    check_id,
                    spec.name.clone(),
                    None,
                )?
                .definition;
        }
        Ok(spec)
    }
}

/// The body of `PUT /v1/catalog/register`, decoded and validated into a registration in the
/// datacenter it names (`local_datacenter` if none); whether that one is reachable is the
/// executor's decision.
pub fn parse_catalog_registration(
    body: &[u8],
    local_datacenter: &str,
) -> Result<Registration, ApiError> {
    let input: CatalogRegisterIn = decode_body(body)?;
    let node = input.node.unwrap_or_default();
    if node.trim().is_empty() {
        return Err(ApiError::field("Node", "Must provide node"));
    }
    let address = input.address.unwrap_or_default();
    if address.trim().is_empty() {
        return Err(ApiError::field("Address", "Must provide address"));
    }
    let datacenter = input
        .datacenter
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| local_datacenter.to_string());
    let service = input
        .service
        .map(|service| service.into_spec("Service"))
        .transpose()?;
    let mut checks_in: Vec<CatalogCheckIn> = input.check.into_iter().collect();
    checks_in.extend(input.checks.unwrap_or_default());
    let checks = checks_in
        .into_iter()
        .enumerate()
        .map(|(i, check)| check.into_spec(&format!("Checks[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let registration = Registration {
        node,
        address,
        datacenter,
        tagged_addresses: input.taggedaddresses.unwrap_or_default(),
        node_meta: input.nodemeta.unwrap_or_default(),
        skip_node_update: input.skipnodeupdate.unwrap_or(false),
        service,
        checks,
        replace_service_checks: false,
    };
    Ok(registration)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CatalogDeregisterIn {
    node: Option<String>,
    serviceid: Option<String>,
    checkid: Option<String>,
    datacenter: Option<String>,
}

/// The body of `PUT /v1/catalog/deregister`, decoded and validated, with the datacenter it
/// names, if any.
pub fn parse_catalog_deregistration(
    body: &[u8],
) -> Result<(Deregistration, Option<String>), ApiError> {
    let input: CatalogDeregisterIn = decode_body(body)?;
    let node = input.node.unwrap_or_default();
    if node.trim().is_empty() {
        return Err(ApiError::field("Node", "Must provide node"));
    }
    let deregistration = Deregistration {
        node,
        service_id: input.serviceid.filter(|s| !s.is_empty()),
        check_id: input.checkid.filter(|c| !c.is_empty()),
    };
    Ok((deregistration, input.datacenter))
}

/// Largest KV value Consul accepts.
pub const MAX_VALUE_BYTES: usize = 512 * 1024;

/// `PUT /v1/kv/:key` (`?flags=`, `?cas=`) as the command it writes (the `dc` parameter is
/// checked by the handler).
pub fn kv_set_command(key: String, query: &Query, value: &[u8]) -> Result<Command, ApiError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(ApiError::with_status(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Value exceeds {MAX_VALUE_BYTES} byte limit ({} bytes)",
                value.len()
            ),
        ));
    }
    let acquire = query.get("acquire");
    let release = query.get("release");
    let cas = query.u64("cas")?;
    let given = [acquire.is_some(), release.is_some(), cas.is_some()];
    if given.iter().filter(|given| **given).count() > 1 {
        let raw: Vec<String> = ["acquire", "release", "cas"]
            .iter()
            .filter_map(|name| query.get(name).map(|value| format!("{name}={value}")))
            .collect();
        return Err(ApiError::bad_request(format!(
            "Conflicting flags: {}",
            raw.join("&")
        )));
    }
    let flags = query.u64("flags")?.unwrap_or(0);
    let value = value.to_vec();
    let session = |name: &str, session: &str| {
        if session.is_empty() {
            Err(ApiError::field(
                name,
                format!("missing session in ?{name}="),
            ))
        } else {
            Ok(session.to_string())
        }
    };
    Ok(match (acquire, release) {
        (Some(acquire), _) => Command::KvAcquire {
            key,
            value,
            flags,
            session: session("acquire", acquire)?,
        },
        (_, Some(release)) => Command::KvRelease {
            key,
            value,
            flags,
            session: session("release", release)?,
        },
        (None, None) => Command::KvSet {
            key,
            value,
            flags,
            cas,
        },
    })
}

/// `DELETE /v1/kv/:key` (`?recurse`, `?cas=`) as the command it writes.
pub fn kv_delete_command(key: String, query: &Query) -> Result<Command, ApiError> {
    let recurse = query.flag("recurse");
    if key.is_empty() && !recurse {
        return Err(ApiError::field("key", "Missing key name"));
    }
    let cas = query.u64("cas")?;
    if recurse && cas.is_some() {
        return Err(ApiError::field(
            "cas",
            "cas cannot be combined with recurse",
        ));
    }
    Ok(Command::KvDelete { key, recurse, cas })
}

/// The body of `PUT /v1/session/create`, as decoded. `Checks` and `NodeChecks` tell a field
/// given as `null` or `[]` (no checks) from an absent one (the default, `serfHealth`).
#[derive(Deserialize, Default)]
#[serde(default)]
struct SessionIn {
    name: Option<String>,
    node: Option<String>,
    #[serde(deserialize_with = "present")]
    checks: Option<Option<Vec<String>>>,
    #[serde(deserialize_with = "present")]
    nodechecks: Option<Option<Vec<String>>>,
    servicechecks: Option<Vec<ServiceCheckIn>>,
    lockdelay: Option<LockDelayIn>,
    behavior: Option<String>,
    ttl: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ServiceCheckIn {
    id: String,
    namespace: String,
}

/// A lock delay: Go duration text or nanoseconds.
#[derive(Deserialize)]
#[serde(untagged)]
enum LockDelayIn {
    Text(String),
    Nanos(f64),
}

/// A field that is present, even as `null`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Default lock delay of a session (Consul's).
pub const DEFAULT_LOCK_DELAY: std::time::Duration = std::time::Duration::from_secs(15);
/// Shortest session TTL (Consul's default `session_ttl_min`).
pub const SESSION_TTL_MIN: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest session TTL (Consul's `SessionTTLMax`).
pub const SESSION_TTL_MAX: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Below this many nanoseconds, Consul reads a lock delay as seconds (`5` is 5 s).
const LOCK_DELAY_SECONDS_BELOW: f64 = 1000.0;

/// The body of `PUT /v1/session/create` (empty: every default) as the session to create,
/// without its id: Consul's defaults (`node`: this agent's node, `serfHealth`, 15 s lock
/// delay, `release`) and its default-check fixup. An out-of-range TTL is Consul's 500 with
/// its text (clients match on it); malformed fields are 400s naming the field.
pub fn parse_session_create(body: &[u8], node: &str) -> Result<Session, ApiError> {
    let input: SessionIn = if body.iter().all(u8::is_ascii_whitespace) {
        SessionIn::default()
    } else {
        decode_body(body)?
    };
    let serf = || vec![NODE_HEALTH_CHECK_ID.to_string()];
    let mut checks = match input.checks {
        None => serf(),
        Some(given) => given.unwrap_or_default(),
    };
    let mut node_checks = match input.nodechecks {
        None => serf(),
        Some(given) => given.unwrap_or_default(),
    };
    // Consul's `fixupEmptySessionChecks`.
    if checks.is_empty() {
        node_checks.clear();
    } else if checks == serf() || node_checks.is_empty() {
        checks.clear();
    }
    let lock_delay = match input.lockdelay {
        None => DEFAULT_LOCK_DELAY,
        Some(LockDelayIn::Text(text)) => {
            let parsed = parse_duration(&text).ok_or_else(|| {
                ApiError::field("LockDelay", format!("Invalid LockDelay {text:?}"))
            })?;
            seconds_if_tiny(parsed.as_nanos() as f64)
        }
        Some(LockDelayIn::Nanos(nanos)) if nanos >= 0.0 && nanos.is_finite() => {
            seconds_if_tiny(nanos)
        }
        Some(LockDelayIn::Nanos(nanos)) => {
            return Err(ApiError::field(
                "LockDelay",
                format!("Invalid LockDelay {nanos}: must not be negative"),
            ))
        }
    };
    let behavior = match input.behavior.as_deref().unwrap_or("") {
        "" | "release" => SessionBehavior::Release,
        "delete" => SessionBehavior::Delete,
        other => {
            return Err(ApiError::field(
                "Behavior",
                format!("Invalid Behavior setting '{other}'"),
            ))
        }
    };
    let ttl = input.ttl.unwrap_or_default();
    let ttl_ns = if ttl.is_empty() {
        0
    } else {
        let parsed = parse_duration(&ttl).ok_or_else(|| {
            ApiError::field(
                "TTL",
                format!("Session TTL '{ttl}' invalid: not a duration"),
            )
        })?;
        if !parsed.is_zero() && (parsed < SESSION_TTL_MIN || parsed > SESSION_TTL_MAX) {
            return Err(ApiError::plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "Invalid Session TTL '{}', must be between [10s=24h0m0s]",
                    parsed.as_nanos()
                ),
            ));
        }
        u64::try_from(parsed.as_nanos()).unwrap_or(u64::MAX)
    };
    let node = input
        .node
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| node.to_string());
    Ok(Session {
        id: String::new(),
        name: input.name.unwrap_or_default(),
        node,
        checks,
        node_checks,
        service_checks: input
            .servicechecks
            .unwrap_or_default()
            .into_iter()
            .map(|c| ServiceCheckRef {
                id: c.id,
                namespace: c.namespace,
            })
            .collect(),
        lock_delay_ns: lock_delay.as_nanos().try_into().unwrap_or(u64::MAX),
        behavior,
        ttl,
        ttl_ns,
        create_index: 0,
        modify_index: 0,
    })
}

/// A lock delay in nanoseconds; below a microsecond, Consul takes the number as seconds.
fn seconds_if_tiny(nanos: f64) -> std::time::Duration {
    let nanos = if nanos < LOCK_DELAY_SECONDS_BELOW {
        nanos * 1e9
    } else {
        nanos
    };
    std::time::Duration::from_nanos(nanos.min(u64::MAX as f64) as u64)
}

#[cfg(test)]
mod session_tests {
    use super::*;

    fn parse(body: &str) -> Result<Session, ApiError> {
        parse_session_create(body.as_bytes(), "agent-node")
    }

    #[test]
    fn an_empty_body_takes_consuls_defaults() {
        let session = parse("").unwrap();
        assert_eq!(session.node, "agent-node");
        assert_eq!(session.node_checks, vec!["serfHealth".to_string()]);
        assert!(session.checks.is_empty() && session.service_checks.is_empty());
        assert_eq!(session.lock_delay_ns, 15_000_000_000);
        assert_eq!(session.behavior, SessionBehavior::Release);
        assert_eq!((session.ttl.as_str(), session.ttl_ns), ("", 0));
    }

    #[test]
    fn empty_checks_make_a_ttl_only_session() {
        for body in [
            r#"{"checks": []}"#,
            r#"{"Checks": null}"#,
            r#"{"NodeChecks": []}"#,
        ] {
            let session = parse(body).unwrap();
            assert!(session.checks.is_empty(), "{body}");
            assert!(session.node_checks.is_empty(), "{body}");
        }
        // Deprecated `Checks` beside the default node check: both are kept.
        let session = parse(r#"{"Checks": ["a"]}"#).unwrap();
        assert_eq!(session.checks, vec!["a".to_string()]);
        assert_eq!(session.node_checks, vec!["serfHealth".to_string()]);
    }

    #[test]
    fn patroni_body_parses_with_lowercase_names_and_fractional_durations() {
        let session = parse(
            r#"{"name": "batman-pg1", "checks": [], "lockdelay": "0.001s", "behavior": "delete", "ttl": "15.0s"}"#,
        )
        .unwrap();
        assert_eq!(session.name, "batman-pg1");
        assert_eq!(session.lock_delay_ns, 1_000_000);
        assert_eq!(session.behavior, SessionBehavior::Delete);
        assert_eq!(
            (session.ttl.as_str(), session.ttl_ns),
            ("15.0s", 15_000_000_000)
        );
    }

    #[test]
    fn lock_delays_below_a_microsecond_are_seconds() {
        assert_eq!(
            parse(r#"{"LockDelay": 5}"#).unwrap().lock_delay_ns,
            5_000_000_000
        );
        assert_eq!(
            parse(r#"{"LockDelay": "5ns"}"#).unwrap().lock_delay_ns,
            5_000_000_000
        );
        assert_eq!(
            parse(r#"{"LockDelay": 2000000000}"#).unwrap().lock_delay_ns,
            2_000_000_000
        );
        assert_eq!(
            parse(r#"{"LockDelay": "later"}"#)
                .unwrap_err()
                .field
                .as_deref(),
            Some("LockDelay")
        );
        assert!(parse(r#"{"LockDelay": -1}"#).is_err());
    }

    #[test]
    fn ttl_and_behavior_are_validated_with_consuls_text() {
        let error = parse(r#"{"TTL": "5s"}"#).unwrap_err();
        assert_eq!(error.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(error.plain);
        assert_eq!(
            error.message,
            "Invalid Session TTL '5000000000', must be between [10s=24h0m0s]"
        );
        assert!(parse(r#"{"TTL": "24h0m1s"}"#).is_err());
        assert_eq!(parse(r#"{"TTL": "0s"}"#).unwrap().ttl_ns, 0);
        assert_eq!(
            parse(r#"{"TTL": "24h"}"#).unwrap().ttl_ns,
            86_400_000_000_000
        );
        assert_eq!(
            parse(r#"{"TTL": "x"}"#).unwrap_err().field.as_deref(),
            Some("TTL")
        );
        let error = parse(r#"{"Behavior": "keep"}"#).unwrap_err();
        assert_eq!(
            (error.field.as_deref(), error.message.as_str()),
            (Some("Behavior"), "Invalid Behavior setting 'keep'")
        );
    }
}

#[cfg(test)]
mod check_tests {
    use super::*;

    fn check(body: &str) -> Result<CheckSpec, ApiError> {
        parse_check_registration(body.as_bytes())
    }

    #[test]
    fn script_checks_keep_args_and_run_old_scripts_through_sh() {
        let spec =
            check(r#"{"Name": "c", "Args": ["/bin/check", "-v"], "Interval": "5s"}"#).unwrap();
        assert_eq!(spec.definition.args, vec!["/bin/check", "-v"]);
        assert_eq!(spec.definition.kind().consul_type(), "script");
        assert!(spec.definition.kind().runs_script());
        assert_eq!(spec.definition.timeout_ms, None);
        let spec = check(r#"{"name": "c", "script": "exit 1", "interval": "5s"}"#).unwrap();
        assert_eq!(spec.definition.args, vec!["/bin/sh", "-c", "exit 1"]);
    }

    #[test]
    fn docker_checks_name_container_shell_and_args() {
        let spec = check(
            r#"{"Name": "d", "DockerContainerID": "abc", "Shell": "/bin/bash", "Args": ["/check.sh"], "Interval": "5s"}"#,
        )
        .unwrap();
        assert_eq!(
            spec.definition.kind(),
            atoll_state::CheckKind::Docker {
                container: "abc",
                shell: "/bin/bash",
                args: &["/check.sh".to_string()],
            }
        );
        let spec = check(
            r#"{"name": "d", "docker_container_id": "abc", "script": "exit 0", "interval": "5s"}"#,
        )
        .unwrap();
        assert_eq!(spec.definition.args, vec!["exit 0"]);
        assert_eq!(spec.definition.shell, "");
        let error =
            check(r#"{"Name": "d", "DockerContainerID": "abc", "Interval": "5s"}"#).unwrap_err();
        assert_eq!(error.field.as_deref(), Some("Check.Args"));
    }

    #[test]
    fn http_options_and_thresholds_are_kept() {
        let spec = check(
            r#"{"Name": "h", "HTTP": "https://127.0.0.1:1/x", "Method": "POST",
                "Header": {"X-A": ["1", "2"]}, "Body": "{}", "TLSSkipVerify": true,
                "TLSServerName": "example.test", "Interval": "1s",
                "SuccessBeforePassing": 2, "FailuresBeforeCritical": 3}"#,
        )
        .unwrap();
        let d = &spec.definition;
        assert_eq!(d.method.as_deref(), Some("POST"));
        assert_eq!(d.header["X-A"], vec!["1", "2"]);
        assert_eq!(d.body.as_deref(), Some("{}"));
        assert!(d.tls_skip_verify);
        assert_eq!(d.tls_server_name, "example.test");
        assert_eq!(
            (d.success_before_passing, d.failures_before_critical),
            (2, 3)
        );
        // py-consul's snake case spelling.
        let spec = check(
            r#"{"name": "t", "tcp": "a:1", "interval": "1s", "success_before_passing": 4, "failures_before_critical": 5}"#,
        )
        .unwrap();
        let d = &spec.definition;
        assert_eq!(
            (d.success_before_passing, d.failures_before_critical),
            (4, 5)
        );
        let error =
            check(r#"{"Name": "t", "TCP": "a:1", "Interval": "1s", "FailuresBeforeCritical": -1}"#)
                .unwrap_err();
        assert_eq!(error.field.as_deref(), Some("failuresbeforecritical"));
    }

    #[test]
    fn unsupported_and_ambiguous_checks_are_refused_naming_the_field() {
        for (body, field) in [
            (
                r#"{"Name": "g", "GRPC": "127.0.0.1:1", "Interval": "1s"}"#,
                "Check.GRPC",
            ),
            (
                r#"{"Name": "p", "H2PING": "127.0.0.1:1", "Interval": "1s"}"#,
                "Check.H2PING",
            ),
            (
                r#"{"Name": "s", "Args": ["true"], "Script": "true", "Interval": "1s"}"#,
                "Check.Script",
            ),
            (r#"{"Name": "s", "Args": ["true"], "TTL": "1s"}"#, "Check"),
            (r#"{"Name": "s", "Args": ["true"]}"#, "Check.Interval"),
        ] {
            let error = check(body).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(error.field.as_deref(), Some(field), "{body}");
        }
    }
}
