//! Registrator compatibility: containers started outside atoll that ask to be registered.
//!
//! A running container not labelled `atoll.managed=true` is an [`ExternalService`] when its
//! labels or environment carry any `SERVICE_*` variable (labels win over the environment,
//! as in Registrator). [`ExternalService::registrations`] turns it into one service per
//! published port with Registrator's rules:
//!
//! - `SERVICE_<port>_X` applies to that container port only and wins over `SERVICE_X`;
//! - the name is `SERVICE_NAME`, else the image's base name; when the container publishes
//!   several ports and the name did not come from `SERVICE_<port>_NAME`, `-<port>` is
//!   appended;
//! - the id is `SERVICE_ID`, else `<hostname>:<container name>:<port>` (`:udp` appended for
//!   UDP);
//! - `SERVICE_TAGS` is a comma list, read by [`service_tags`] (UDP ports also get the tag
//!   `udp`);
//! - a non-empty `SERVICE_IGNORE` skips the port (or every port);
//! - every other `SERVICE_X` becomes meta `x` (lower case), e.g. `check_http`.
//!
//! Only published ports count (bridge networking), or the exposed ports of a container on
//! the host network. The docker driver reports such containers starting and stopping as
//! [`ExternalEvent`]s; see [`DockerDriver::external_events`].
//!
//! atoll's own tasks follow these conventions natively (`atoll_workload::naming`), with the
//! app id rather than the image giving the default name, and a port numbered by its *index*
//! in the app definition (`SERVICE_1_NAME`, `-1`) rather than by its *container port*
//! (`SERVICE_8080_NAME`, `-8080`) as here. Both read `SERVICE_TAGS` with [`service_tags`].

use crate::docker::{status_code, LABEL_MANAGED};
use crate::{DockerDriver, DriverError};
use bollard::errors::Error as EngineError;
use bollard::models::ContainerInspectResponse;
use bollard::Docker;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use tokio::sync::broadcast;

/// A running container started outside atoll that asks to be registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalService {
    /// The engine's container id.
    pub container_id: String,
    /// The container's name, without Docker's leading `/`.
    pub container_name: String,
    /// The image as the container was created with it.
    pub image: String,
    /// Whether the container shares the node's network.
    pub host_network: bool,
    /// Ports reachable on the node, ordered by container port.
    pub ports: Vec<PublishedPort>,
    /// Every `SERVICE_*` variable with its value, from the environment and labels (labels
    /// win), keyed as written (`SERVICE_NAME`, `SERVICE_8080_TAGS`, ...).
    pub service_vars: BTreeMap<String, String>,
}

/// A container port reachable on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    /// The address the port is bound to on the node (`0.0.0.0` for all; empty on the host
    /// network).
    pub host_ip: String,
    /// The port on the node.
    pub host_port: u16,
    /// The port inside the container.
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
}

/// One service to register for an external container, resolved with Registrator's rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalRegistration {
    /// Service id.
    pub id: String,
    /// Service name.
    pub name: String,
    /// Address to advertise: the bound address, or the node's when bound to all.
    pub address: String,
    /// Port to advertise (the node's port).
    pub port: u16,
    /// Service tags.
    pub tags: Vec<String>,
    /// Other `SERVICE_*` settings, keys in lower case without the prefix.
    pub meta: BTreeMap<String, String>,
}

/// An external service container came or went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExternalEvent {
    /// A container asking to be registered started (or was found after a reconnect).
    Started(ExternalService),
    /// A container reported by `Started` stopped.
    Stopped {
        /// The engine's container id.
        container_id: String,
    },
}

impl ExternalService {
    /// The services to register for this container on a node with this host name and
    /// address. Empty when every port is ignored.
    pub fn registrations(&self, hostname: &str, node_address: &str) -> Vec<ExternalRegistration> {
        let grouped = self.ports.len() > 1;
        let default_name = image_base_name(&self.image);
        let mut registrations = Vec::new();
        for port in &self.ports {
            let (mut meta, from_port) = settings_for_port(&self.service_vars, port.container_port);
            if meta.get("ignore").is_some_and(|v| !v.is_empty()) {
                continue;
            }
            let mut name = meta
                .remove("name")
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| default_name.clone());
            if grouped && !from_port.contains(&"name".to_string()) {
                name = format!("{name}-{}", port.container_port);
            }
            let udp = port.protocol == "udp";
            let mut id = format!("{hostname}:{}:{}", self.container_name, port.container_port);
            if udp {
                id.push_str(":udp");
            }
            if let Some(explicit) = meta.remove("id").filter(|i| !i.is_empty()) {
                id = explicit;
            }
            let mut tags = service_tags(&meta.remove("tags").unwrap_or_default());
            if udp {
                tags.push("udp".into());
            }
            let address = match port.host_ip.as_str() {
                "" | "0.0.0.0" | "::" => node_address.to_string(),
                bound => bound.to_string(),
            };
            registrations.push(ExternalRegistration {
                id,
                name,
                address,
                port: port.host_port,
                tags,
                meta,
            });
        }
        registrations
    }

    /// Builds the external service of an inspected container, or `None` when the container
    /// is atoll's own, not running, or has no `SERVICE_*` variable.
    pub(crate) fn from_inspect(info: &ContainerInspectResponse) -> Option<Self> {
        let config = info.config.as_ref()?;
        let labels = config.labels.clone().unwrap_or_default();
        if labels.get(LABEL_MANAGED).map(String::as_str) == Some("true") {
            return None;
        }
        if info.state.as_ref().and_then(|s| s.running) != Some(true) {
            return None;
        }
        let service_vars = service_vars(config.env.as_deref().unwrap_or_default(), &labels);
        if service_vars.is_empty() {
            return None;
        }
        let host_network = info
            .host_config
            .as_ref()
            .and_then(|h| h.network_mode.as_deref())
            == Some("host");
        let mut ports = Vec::new();
        if host_network {
            for exposed in config.exposed_ports.iter().flatten() {
                if let Some((container_port, protocol)) = parse_port_key(exposed) {
                    ports.push(PublishedPort {
                        host_ip: String::new(),
                        host_port: container_port,
                        container_port,
                        protocol,
                    });
                }
            }
        } else {
            let published = info
                .network_settings
                .as_ref()
                .and_then(|n| n.ports.as_ref());
            for (key, bindings) in published.into_iter().flatten() {
                let Some((container_port, protocol)) = parse_port_key(key) else {
                    continue;
                };
                // Docker binds IPv4 and IPv6 separately; like Registrator, take the first.
                let Some(binding) = bindings.as_ref().and_then(|b| b.first()) else {
                    continue;
                };
                let Some(host_port) = binding
                    .host_port
                    .as_deref()
                    .and_then(|p| p.parse::<u16>().ok())
                else {
                    continue;
                };
                ports.push(PublishedPort {
                    host_ip: binding.host_ip.clone().unwrap_or_default(),
                    host_port,
                    container_port,
                    protocol,
                });
            }
        }
        ports.sort_by(|a, b| (a.container_port, &a.protocol).cmp(&(b.container_port, &b.protocol)));
        Some(ExternalService {
            container_id: info.id.clone()?,
            container_name: info
                .name
                .as_deref()
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            image: config.image.clone().unwrap_or_default(),
            host_network,
            ports,
            service_vars,
        })
    }
}

impl DockerDriver {
    /// The running containers started outside atoll that ask to be registered.
    pub async fn external_containers(&self) -> Result<Vec<ExternalService>, DriverError> {
        let docker = self.engine();
        let containers = docker
            .list_containers(None)
            .await
            .map_err(|e| DriverError::docker("listing containers", e))?;
        let mut services = Vec::new();
        for container in containers {
            let Some(id) = container.id else { continue };
            let managed = container
                .labels
                .as_ref()
                .and_then(|labels| labels.get(LABEL_MANAGED))
                .is_some_and(|value| value == "true");
            if managed {
                continue;
            }
            if let Some(service) = inspect_external(docker, &id)
                .await
                .map_err(|e| DriverError::docker(format!("inspecting {id}"), e))?
            {
                services.push(service);
            }
        }
        services.sort_by(|a, b| a.container_name.cmp(&b.container_name));
        Ok(services)
    }

    /// Subscribes to external service containers starting and stopping from now on.
    pub fn external_events(&self) -> broadcast::Receiver<ExternalEvent> {
        self.external_event_sender().subscribe()
    }
}

/// The tags of a `SERVICE_TAGS` value: a comma list, each tag trimmed, empty ones dropped.
pub fn service_tags(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect()
}

/// Inspects one container; `Ok(None)` when it is not an external service or is gone.
pub(crate) async fn inspect_external(
    docker: &Docker,
    id: &str,
) -> Result<Option<ExternalService>, EngineError> {
    match docker.inspect_container(id, None).await {
        Ok(info) => Ok(ExternalService::from_inspect(&info)),
        Err(e) if status_code(&e) == Some(404) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The `SERVICE_*` variables of a container: environment first, labels over it.
fn service_vars(env: &[String], labels: &HashMap<String, String>) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for entry in env {
        if let Some((key, value)) = entry.split_once('=') {
            if key.starts_with("SERVICE_") {
                vars.insert(key.to_string(), value.to_string());
            }
        }
    }
    for (key, value) in labels {
        if key.starts_with("SERVICE_") {
            vars.insert(key.clone(), value.clone());
        }
    }
    vars
}

/// The settings for one container port: lower-case keys without `SERVICE_`, port-specific
/// ones winning, and which keys came from `SERVICE_<port>_*`.
fn settings_for_port(
    vars: &BTreeMap<String, String>,
    container_port: u16,
) -> (BTreeMap<String, String>, Vec<String>) {
    let port = container_port.to_string();
    let mut settings = BTreeMap::new();
    let mut from_port = Vec::new();
    for (key, value) in vars {
        let Some(rest) = key.strip_prefix("SERVICE_") else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        match rest.split_once('_') {
            Some((number, setting)) if number.parse::<u32>().is_ok() => {
                if number == port {
                    settings.insert(setting.to_string(), value.clone());
                    from_port.push(setting.to_string());
                }
            }
            _ => {
                if !from_port.contains(&rest) {
                    settings.insert(rest, value.clone());
                }
            }
        }
    }
    (settings, from_port)
}

/// `8080/tcp` → (8080, "tcp").
fn parse_port_key(key: &str) -> Option<(u16, String)> {
    let (port, protocol) = key.split_once('/').unwrap_or((key, "tcp"));
    Some((port.parse().ok()?, protocol.to_string()))
}

/// Registrator's default name: the image's last path part without its tag.
fn image_base_name(image: &str) -> String {
    let base = image.rsplit('/').next().unwrap_or(image);
    let base = base.split('@').next().unwrap_or(base);
    base.split(':').next().unwrap_or(base).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(vars: &[(&str, &str)], ports: &[(u16, u16, &str)]) -> ExternalService {
        ExternalService {
            container_id: "c0ffee".into(),
            container_name: "web-1".into(),
            image: "registry:5000/team/web:1.2".into(),
            host_network: false,
            ports: ports
                .iter()
                .map(|&(container_port, host_port, protocol)| PublishedPort {
                    host_ip: "0.0.0.0".into(),
                    host_port,
                    container_port,
                    protocol: protocol.into(),
                })
                .collect(),
            service_vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn single_port_uses_service_name_tags_and_meta() {
        let svc = service(
            &[
                ("SERVICE_NAME", "web"),
                ("SERVICE_TAGS", "prod, blue"),
                ("SERVICE_CHECK_HTTP", "/health"),
            ],
            &[(8080, 31000, "tcp")],
        );
        let regs = svc.registrations("node-a", "10.0.0.7");
        assert_eq!(
            regs,
            vec![ExternalRegistration {
                id: "node-a:web-1:8080".into(),
                name: "web".into(),
                address: "10.0.0.7".into(),
                port: 31000,
                tags: vec!["prod".into(), "blue".into()],
                meta: BTreeMap::from([("check_http".to_string(), "/health".to_string())]),
            }]
        );
    }

    #[test]
    fn several_ports_get_suffixed_names_unless_named_per_port() {
        let svc = service(
            &[("SERVICE_NAME", "app"), ("SERVICE_9090_NAME", "metrics")],
            &[(8080, 31000, "tcp"), (9090, 31001, "tcp")],
        );
        let names: Vec<String> = svc
            .registrations("h", "10.0.0.7")
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, vec!["app-8080", "metrics"]);
    }

    #[test]
    fn default_name_is_the_image_base_name() {
        let svc = service(&[("SERVICE_TAGS", "x")], &[(8080, 31000, "tcp")]);
        assert_eq!(svc.registrations("h", "a")[0].name, "web");
        assert_eq!(image_base_name("busybox"), "busybox");
        assert_eq!(image_base_name("app@sha256:abc"), "app");
    }

    #[test]
    fn ignore_skips_one_port_or_all() {
        let one = service(
            &[("SERVICE_NAME", "app"), ("SERVICE_9090_IGNORE", "true")],
            &[(8080, 31000, "tcp"), (9090, 31001, "tcp")],
        );
        let regs = one.registrations("h", "a");
        assert_eq!(regs.len(), 1);
        assert_eq!(regs[0].port, 31000);
        let all = service(
            &[("SERVICE_NAME", "app"), ("SERVICE_IGNORE", "1")],
            &[(8080, 31000, "tcp")],
        );
        assert!(all.registrations("h", "a").is_empty());
    }

    #[test]
    fn explicit_id_udp_and_bound_address() {
        let mut svc = service(
            &[("SERVICE_NAME", "dns"), ("SERVICE_53_ID", "dns-1")],
            &[(53, 31053, "udp")],
        );
        svc.ports[0].host_ip = "127.0.0.1".into();
        let regs = svc.registrations("h", "10.0.0.7");
        assert_eq!(regs[0].id, "dns-1");
        assert_eq!(regs[0].tags, vec!["udp".to_string()]);
        assert_eq!(regs[0].address, "127.0.0.1");
        let svc = service(&[("SERVICE_NAME", "dns")], &[(53, 31053, "udp")]);
        assert_eq!(svc.registrations("h", "a")[0].id, "h:web-1:53:udp");
    }

    #[test]
    fn labels_win_over_environment() {
        let env = vec![
            "SERVICE_NAME=from-env".to_string(),
            "SERVICE_TAGS=a".to_string(),
            "PATH=/bin".to_string(),
        ];
        let labels = HashMap::from([
            ("SERVICE_NAME".to_string(), "from-label".to_string()),
            ("other".to_string(), "x".to_string()),
        ]);
        let vars = service_vars(&env, &labels);
        assert_eq!(
            vars,
            BTreeMap::from([
                ("SERVICE_NAME".to_string(), "from-label".to_string()),
                ("SERVICE_TAGS".to_string(), "a".to_string()),
            ])
        );
    }

    #[test]
    fn port_settings_win_over_generic_ones_in_any_order() {
        let vars = BTreeMap::from([
            ("SERVICE_8080_TAGS".to_string(), "port".to_string()),
            ("SERVICE_TAGS".to_string(), "generic".to_string()),
        ]);
        let (settings, from_port) = settings_for_port(&vars, 8080);
        assert_eq!(settings["tags"], "port");
        assert_eq!(from_port, vec!["tags".to_string()]);
        let (settings, _) = settings_for_port(&vars, 9090);
        assert_eq!(settings["tags"], "generic");
    }
}
