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
//! the host network.
//!
//! [`ExternalContainers`] follows them: it consumes the docker driver's raw
//! [`ContainerEvent`]s (containers not started by atoll, by id), inspects each started
//! container itself, and reports the ones asking to be registered as [`ExternalEvent`]s.
//! [`ExternalContainers::list`] reads the current ones, on start and after a `Lagged`.
//!
//! atoll's own tasks follow these conventions natively (`atoll_workload::naming`), with the
//! app id rather than the image giving the default name, and a port numbered by its *index*
//! in the app definition (`SERVICE_1_NAME`, `-1`) rather than by its *container port*
//! (`SERVICE_8080_NAME`, `-8080`) as here. Both read `SERVICE_TAGS` with [`service_tags`].

use crate::{ContainerEvent, DockerDriver, DriverError, LABEL_MANAGED};
use bollard::models::ContainerInspectResponse;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

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

/// Follows one engine's external service containers through the docker driver's container
/// events.
///
/// Create it (which subscribes), then [`list`](Self::list) the current containers, then
/// call [`next`](Self::next) for each change; after `Lagged`, list again. A `Stopped` is
/// reported only for a container reported by `Started` or by the last `list`.
pub struct ExternalContainers {
    driver: DockerDriver,
    events: broadcast::Receiver<ContainerEvent>,
    tracker: Tracker,
}

impl ExternalContainers {
    /// Subscribes to the driver's container events from now on.
    pub fn follow(driver: &DockerDriver) -> Self {
        ExternalContainers {
            driver: driver.clone(),
            events: driver.container_events(),
            tracker: Tracker::default(),
        }
    }

    /// The running containers started outside atoll that ask to be registered, by name.
    pub async fn list(&mut self) -> Result<Vec<ExternalService>, DriverError> {
        self.tracker.list(&self.driver).await
    }

    /// The next external service container that started or stopped. `Lagged` when events
    /// were missed (then [`list`](Self::list) again), `Closed` once the driver is gone. Not
    /// cancel-safe: a started container is inspected before it is returned.
    pub async fn next(&mut self) -> Result<ExternalEvent, RecvError> {
        loop {
            let event = self.events.recv().await?;
            if let Some(external) = self.tracker.on_event(&self.driver, event).await {
                return Ok(external);
            }
        }
    }
}

/// What the registrator asks of the engine: the docker driver, or a fake in tests.
trait Containers {
    /// The ids of the running containers not started by atoll.
    async fn unmanaged_containers(&self) -> Result<Vec<String>, DriverError>;
    /// One container; `None` when it is gone.
    async fn inspect_container(
        &self,
        id: &str,
    ) -> Result<Option<ContainerInspectResponse>, DriverError>;
}

impl Containers for DockerDriver {
    async fn unmanaged_containers(&self) -> Result<Vec<String>, DriverError> {
        DockerDriver::unmanaged_containers(self).await
    }

    async fn inspect_container(
        &self,
        id: &str,
    ) -> Result<Option<ContainerInspectResponse>, DriverError> {
        DockerDriver::inspect_container(self, id).await
    }
}

/// Which containers were reported as external services, and the turning of raw container
/// events into external ones.
#[derive(Debug, Default)]
struct Tracker {
    reported: HashSet<String>,
}

impl Tracker {
    /// Inspects every running container not started by atoll; what it finds is what is
    /// reported from now on.
    async fn list(
        &mut self,
        engine: &impl Containers,
    ) -> Result<Vec<ExternalService>, DriverError> {
        let mut services = Vec::new();
        for id in engine.unmanaged_containers().await? {
            if let Some(service) = external_service(engine, &id).await? {
                services.push(service);
            }
        }
        services.sort_by(|a, b| a.container_name.cmp(&b.container_name));
        self.reported = services.iter().map(|s| s.container_id.clone()).collect();
        Ok(services)
    }

    /// The external event a container event makes, if any: a started container is
    /// inspected, and reported when it asks to be registered.
    async fn on_event(
        &mut self,
        engine: &impl Containers,
        event: ContainerEvent,
    ) -> Option<ExternalEvent> {
        match event {
            ContainerEvent::Started { id } if !self.reported.contains(&id) => {
                match external_service(engine, &id).await {
                    Ok(Some(service)) => {
                        tracing::info!(container = %service.container_name, "external service container started");
                        self.reported.insert(id);
                        Some(ExternalEvent::Started(service))
                    }
                    Ok(None) => None,
                    Err(error) => {
                        tracing::warn!(container = %id, %error, "could not inspect a started container");
                        None
                    }
                }
            }
            ContainerEvent::Stopped { id } if self.reported.remove(&id) => {
                Some(ExternalEvent::Stopped { container_id: id })
            }
            _ => None,
        }
    }
}

/// Inspects one container; `Ok(None)` when it is not an external service or is gone.
async fn external_service(
    engine: &impl Containers,
    id: &str,
) -> Result<Option<ExternalService>, DriverError> {
    Ok(engine
        .inspect_container(id)
        .await?
        .and_then(|info| ExternalService::from_inspect(&info)))
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
    use bollard::models::{
        ContainerConfig, ContainerState, HostConfig, NetworkSettings, PortBinding,
    };

    /// An inspected running container with these labels, environment and published ports
    /// (container port, host port).
    fn inspected(
        id: &str,
        labels: &[(&str, &str)],
        env: &[&str],
        ports: &[(u16, u16)],
    ) -> ContainerInspectResponse {
        ContainerInspectResponse {
            id: Some(id.into()),
            name: Some(format!("/{id}-name")),
            config: Some(ContainerConfig {
                image: Some("team/app:1".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                env: Some(env.iter().map(|e| e.to_string()).collect()),
                exposed_ports: Some(ports.iter().map(|(c, _)| format!("{c}/tcp")).collect()),
                ..Default::default()
            }),
            state: Some(ContainerState {
                running: Some(true),
                ..Default::default()
            }),
            host_config: Some(HostConfig {
                network_mode: Some("bridge".into()),
                ..Default::default()
            }),
            network_settings: Some(NetworkSettings {
                ports: Some(
                    ports
                        .iter()
                        .map(|(container, host)| {
                            (
                                format!("{container}/tcp"),
                                Some(vec![
                                    PortBinding {
                                        host_ip: Some("0.0.0.0".into()),
                                        host_port: Some(host.to_string()),
                                    },
                                    PortBinding {
                                        host_ip: Some("::".into()),
                                        host_port: Some(host.to_string()),
                                    },
                                ]),
                            )
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// An engine whose containers the test sets; `broken` ones fail to inspect.
    #[derive(Default)]
    struct FakeEngine {
        containers: BTreeMap<String, ContainerInspectResponse>,
        broken: HashSet<String>,
    }

    impl FakeEngine {
        fn add(&mut self, info: ContainerInspectResponse) {
            self.containers
                .insert(info.id.clone().unwrap_or_default(), info);
        }
    }

    impl Containers for FakeEngine {
        async fn unmanaged_containers(&self) -> Result<Vec<String>, DriverError> {
            Ok(self.containers.keys().cloned().collect())
        }

        async fn inspect_container(
            &self,
            id: &str,
        ) -> Result<Option<ContainerInspectResponse>, DriverError> {
            if self.broken.contains(id) {
                return Err(DriverError::Docker {
                    context: format!("inspecting {id}"),
                    source: bollard::errors::Error::RequestTimeoutError,
                });
            }
            Ok(self.containers.get(id).cloned())
        }
    }

    fn started(id: &str) -> ContainerEvent {
        ContainerEvent::Started { id: id.into() }
    }

    fn stopped(id: &str) -> ContainerEvent {
        ContainerEvent::Stopped { id: id.into() }
    }

    #[test]
    fn an_inspected_container_becomes_an_external_service() {
        let info = inspected(
            "c1",
            &[("SERVICE_NAME", "web")],
            &["SERVICE_TAGS=a", "PATH=/bin"],
            &[(8080, 31000)],
        );
        let service = ExternalService::from_inspect(&info).expect("an external service");
        assert_eq!(service.container_id, "c1");
        assert_eq!(service.container_name, "c1-name");
        assert_eq!(service.image, "team/app:1");
        assert!(!service.host_network);
        // The first binding only (IPv4 and IPv6 are bound separately).
        assert_eq!(
            service.ports,
            vec![PublishedPort {
                host_ip: "0.0.0.0".into(),
                host_port: 31000,
                container_port: 8080,
                protocol: "tcp".into(),
            }]
        );
        assert_eq!(
            service.service_vars,
            BTreeMap::from([
                ("SERVICE_NAME".to_string(), "web".to_string()),
                ("SERVICE_TAGS".to_string(), "a".to_string()),
            ])
        );
    }

    #[test]
    fn a_host_network_container_offers_its_exposed_ports() {
        let mut info = inspected("c1", &[("SERVICE_NAME", "web")], &[], &[(8080, 31000)]);
        info.host_config = Some(HostConfig {
            network_mode: Some("host".into()),
            ..Default::default()
        });
        let service = ExternalService::from_inspect(&info).expect("an external service");
        assert!(service.host_network);
        assert_eq!(
            service.ports,
            vec![PublishedPort {
                host_ip: String::new(),
                host_port: 8080,
                container_port: 8080,
                protocol: "tcp".into(),
            }]
        );
    }

    #[test]
    fn managed_stopped_and_unconfigured_containers_are_not_external_services() {
        let managed = inspected(
            "c1",
            &[("SERVICE_NAME", "web"), (LABEL_MANAGED, "true")],
            &[],
            &[(8080, 31000)],
        );
        assert_eq!(ExternalService::from_inspect(&managed), None);
        let mut stopped = inspected("c2", &[("SERVICE_NAME", "web")], &[], &[(8080, 31000)]);
        stopped.state = Some(ContainerState {
            running: Some(false),
            ..Default::default()
        });
        assert_eq!(ExternalService::from_inspect(&stopped), None);
        let plain = inspected("c3", &[("team", "x")], &["PATH=/bin"], &[(8080, 31000)]);
        assert_eq!(ExternalService::from_inspect(&plain), None);
    }

    #[tokio::test]
    async fn container_events_become_external_events_for_service_containers_only() {
        let mut engine = FakeEngine::default();
        engine.add(inspected(
            "svc",
            &[("SERVICE_NAME", "web")],
            &[],
            &[(80, 31000)],
        ));
        engine.add(inspected("plain", &[], &["PATH=/bin"], &[(80, 31001)]));
        engine.add(inspected(
            "task",
            &[("SERVICE_NAME", "web"), (LABEL_MANAGED, "true")],
            &[],
            &[(80, 31002)],
        ));
        let mut tracker = Tracker::default();

        let Some(ExternalEvent::Started(service)) = tracker.on_event(&engine, started("svc")).await
        else {
            panic!("the service container is reported");
        };
        assert_eq!(service.container_id, "svc");
        // A start seen twice, containers without SERVICE_*, atoll's own, and one gone.
        assert_eq!(tracker.on_event(&engine, started("svc")).await, None);
        assert_eq!(tracker.on_event(&engine, started("plain")).await, None);
        assert_eq!(tracker.on_event(&engine, started("task")).await, None);
        assert_eq!(tracker.on_event(&engine, started("gone")).await, None);
        // Stops only for what was reported, once.
        assert_eq!(tracker.on_event(&engine, stopped("plain")).await, None);
        assert_eq!(
            tracker.on_event(&engine, stopped("svc")).await,
            Some(ExternalEvent::Stopped {
                container_id: "svc".into()
            })
        );
        assert_eq!(tracker.on_event(&engine, stopped("svc")).await, None);
    }

    #[tokio::test]
    async fn a_container_that_cannot_be_inspected_is_skipped_on_start_and_fails_a_list() {
        let mut engine = FakeEngine::default();
        engine.add(inspected(
            "svc",
            &[("SERVICE_NAME", "web")],
            &[],
            &[(80, 31000)],
        ));
        engine.broken.insert("svc".into());
        let mut tracker = Tracker::default();
        assert_eq!(tracker.on_event(&engine, started("svc")).await, None);
        assert!(tracker.list(&engine).await.is_err());
        engine.broken.clear();
        // Not reported yet, so a later start is.
        assert!(matches!(
            tracker.on_event(&engine, started("svc")).await,
            Some(ExternalEvent::Started(_))
        ));
    }

    #[tokio::test]
    async fn a_list_is_what_later_stops_are_reported_for() {
        let mut engine = FakeEngine::default();
        engine.add(inspected(
            "b",
            &[("SERVICE_NAME", "web")],
            &[],
            &[(80, 31000)],
        ));
        engine.add(inspected(
            "a",
            &[("SERVICE_NAME", "api")],
            &[],
            &[(80, 31001)],
        ));
        engine.add(inspected("plain", &[], &[], &[(80, 31002)]));
        let mut tracker = Tracker::default();
        // Reported before the list, gone by then.
        engine.add(inspected(
            "old",
            &[("SERVICE_NAME", "old")],
            &[],
            &[(80, 31003)],
        ));
        assert!(tracker.on_event(&engine, started("old")).await.is_some());
        engine.containers.remove("old");

        let listed = tracker.list(&engine).await.expect("list");
        let names: Vec<&str> = listed.iter().map(|s| s.container_name.as_str()).collect();
        assert_eq!(names, vec!["a-name", "b-name"]);
        // Started again: already listed.
        assert_eq!(tracker.on_event(&engine, started("a")).await, None);
        assert_eq!(tracker.on_event(&engine, stopped("old")).await, None);
        assert_eq!(
            tracker.on_event(&engine, stopped("b")).await,
            Some(ExternalEvent::Stopped {
                container_id: "b".into()
            })
        );
    }

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
