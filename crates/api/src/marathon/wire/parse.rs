//! Parsing and validating an app definition. The parse walks the JSON by hand so that, as
//! in Marathon, every problem is reported with the path of its field, not just the first.

use std::collections::BTreeSet;

use atoll_state::groups::parent_of;
use atoll_state::{
    AppSpec, Constraint, ConstraintOperator, DockerNetwork, HealthCheckSpec, HealthProtocol,
    PortSpec, Runtime, UpgradeStrategy,
};
use serde_json::{Map, Value};

use super::app::MarathonApp;
use super::error::ValidationError;
use super::id::{is_dns_label, normalize_app_id, resolve_id};
use super::merge::merge_update;
use super::reader::{at, describe, index, present, Reader};
use super::render::{operator_name, render_definition, Echo, HealthEcho, PortEcho};

// Marathon's defaults, as listed in COMPAT.md.
const DEFAULT_CPUS: f64 = 1.0;
const DEFAULT_MEM: f64 = 128.0;
const DEFAULT_DISK: f64 = 0.0;
const DEFAULT_INSTANCES: u32 = 1;
const DEFAULT_BACKOFF_SECONDS: f64 = 1.0;
const DEFAULT_BACKOFF_FACTOR: f64 = 1.15;
const DEFAULT_MAX_LAUNCH_DELAY_SECONDS: f64 = 300.0;
const DEFAULT_HEALTH_PATH: &str = "/";
const DEFAULT_GRACE_PERIOD_SECONDS: u64 = 300;
const DEFAULT_INTERVAL_SECONDS: u64 = 60;
const DEFAULT_TIMEOUT_SECONDS: u64 = 20;
const DEFAULT_MAX_CONSECUTIVE_FAILURES: u32 = 3;
pub(super) const DEFAULT_HEALTH_DELAY_SECONDS: u64 = 15;
const DEFAULT_CAPACITY: f64 = 1.0;

/// Message Marathon gives when an app has nothing to run.
pub(super) const NOTHING_TO_RUN: &str =
    "AppDefinition must either contain one of 'cmd' or 'args', and/or a 'container'.";

/// Parses a Marathon app definition (the body of `POST /v2/apps` or `PUT /v2/apps/{id}`)
/// into an app at `version`. With `base` (the current app, on PUT) the body is an update:
/// fields it leaves out keep their current values, as Marathon merges. Every problem found
/// is reported, not just the first.
pub fn parse_app(
    body: &[u8],
    version: &str,
    base: Option<&MarathonApp>,
) -> Result<MarathonApp, ValidationError> {
    let object = json_object(body)?;
    let object = match base {
        Some(base) => merge_update(base, object),
        None => object,
    };
    parse_definition(&object, version)
}

/// Parses a whole definition (an update already merged into its base).
fn parse_definition(
    object: &Map<String, Value>,
    version: &str,
) -> Result<MarathonApp, ValidationError> {
    let mut r = Reader::default();
    let mut echo = Echo::default();

    let id = match r.string(object.get("id"), "/id") {
        Some(raw) => normalize_app_id(raw).unwrap_or_else(|message| {
            r.fail("/id", message);
            String::new()
        }),
        None => {
            if present(object.get("id")).is_none() {
                r.fail("/id", "is required");
            }
            String::new()
        }
    };

    let cmd = r.string(object.get("cmd"), "/cmd").map(str::to_string);
    if cmd.as_deref().is_some_and(|c| c.trim().is_empty()) {
        r.fail("/cmd", "must not be empty");
    }
    // An empty list is what some clients send for "no args".
    let args = r
        .strings(object.get("args"), "/args")
        .filter(|a| !a.is_empty());
    if cmd.is_some() && args.is_some() {
        r.fail("/", "AppDefinition must not contain both 'cmd' and 'args'.");
    }

    let container = parse_container(&mut r, object.get("container"));
    let networks = parse_networks(&mut r, object.get("networks"));
    let docker_network = container.as_ref().and_then(|c| c.network.clone());
    let network_choice = match (docker_network, networks) {
        (Some((docker, _)), Some((listed, path))) if docker != listed => {
            r.fail(&path, "conflicts with /container/docker/network");
            Some((docker, path))
        }
        (Some(choice), _) | (None, Some(choice)) => Some(choice),
        (None, None) => None,
    };
    let image = container.as_ref().and_then(|c| c.image.clone());
    let network = match (&network_choice, &image) {
        (Some((DockerNetwork::Bridge, path)), None) => {
            r.fail(
                path,
                "BRIDGE networking needs a Docker image (container.docker.image)",
            );
            DockerNetwork::Host
        }
        (Some((network, _)), _) => *network,
        (None, _) => DockerNetwork::Host,
    };

    // Ports: a bridged container publishes its port mappings; everything else asks for
    // host ports through `portDefinitions` (or the legacy `ports`).
    let host_ports = parse_host_ports(&mut r, object);
    let mappings = container.as_ref().and_then(|c| c.mappings.clone());
    let bridged = image.is_some() && network == DockerNetwork::Bridge;
    let (ports, port_echo) = if bridged {
        if let Some((list, _, path)) = &host_ports {
            if !list.is_empty() {
                r.fail(
                    path,
                    "host port definitions are for HOST networking; with BRIDGE networking \
                     use container.docker.portMappings",
                );
            }
        }
        mappings
            .map(|(list, echo, _)| (list, echo))
            .unwrap_or_default()
    } else {
        if let Some((list, _, path)) = &mappings {
            if !list.is_empty() {
                r.fail(
                    path,
                    "port mappings need BRIDGE networking; with HOST networking use \
                     portDefinitions",
                );
            }
        }
        match host_ports {
            Some((list, echo, _)) => (list, echo),
            // Marathon's default: one dynamic TCP port.
            None => (
                vec![PortSpec {
                    host_port: 0,
                    container_port: None,
                    protocol: "tcp".into(),
                    name: None,
                }],
                vec![PortEcho::default()],
            ),
        }
    };
    echo.ports = port_echo;

    let runtime = match image {
        Some(image) => {
            echo.container_type = container.as_ref().map(|c| c.kind);
            Runtime::Docker {
                image,
                network,
                cmd: cmd.clone(),
                args: args.clone().unwrap_or_default(),
                force_pull: container.as_ref().is_some_and(|c| c.force_pull),
            }
        }
        None => {
            let image_missing = container.as_ref().is_some_and(|c| c.image_required);
            match (&cmd, &args) {
                (Some(cmd), _) => Runtime::Exec { cmd: cmd.clone() },
                (None, Some(args)) => {
                    echo.exec_args = Some(args.clone());
                    Runtime::Exec {
                        cmd: shell_join(args),
                    }
                }
                (None, None) => {
                    // A DOCKER container without an image already has its own complaint.
                    if !image_missing {
                        r.fail("/", NOTHING_TO_RUN);
                    }
                    Runtime::Exec { cmd: String::new() }
                }
            }
        }
    };

    let cpus = r.at_least(object.get("cpus"), "/cpus", 0.0, DEFAULT_CPUS);
    let mem = r.at_least(object.get("mem"), "/mem", 0.0, DEFAULT_MEM);
    let disk = r.at_least(object.get("disk"), "/disk", 0.0, DEFAULT_DISK);
    let instances = r.small_unsigned(object.get("instances"), "/instances", DEFAULT_INSTANCES);
    let env = r.string_map(object.get("env"), "/env");
    let labels = r.string_map(object.get("labels"), "/labels");
    let require_ports = r
        .boolean(object.get("requirePorts"), "/requirePorts")
        .unwrap_or(false);
    let constraints = parse_constraints(&mut r, object.get("constraints"));
    let health_checks =
        parse_health_checks(&mut r, object.get("healthChecks"), ports.len(), &mut echo);
    let upgrade_strategy = parse_upgrade_strategy(&mut r, object.get("upgradeStrategy"));
    let backoff_seconds = r.at_least(
        object.get("backoffSeconds"),
        "/backoffSeconds",
        0.0,
        DEFAULT_BACKOFF_SECONDS,
    );
    let backoff_factor = r.at_least(
        object.get("backoffFactor"),
        "/backoffFactor",
        1.0,
        DEFAULT_BACKOFF_FACTOR,
    );
    let max_launch_delay_seconds = r.at_least(
        object.get("maxLaunchDelaySeconds"),
        "/maxLaunchDelaySeconds",
        0.0,
        DEFAULT_MAX_LAUNCH_DELAY_SECONDS,
    );
    parse_ignored(&mut r, object, &mut echo);
    let dependencies = parse_dependencies(
        &mut r,
        object.get("dependencies"),
        "/dependencies",
        parent_of(&id),
    );
    // Validated with the fields kept for the echo; the platform acts on the typed value.
    let kill_grace_seconds = present(object.get("taskKillGracePeriodSeconds"))
        .and_then(Value::as_f64)
        .filter(|s| s.is_finite() && *s >= 0.0);

    if !r.problems.is_empty() {
        return Err(ValidationError {
            details: r.problems,
        });
    }
    let app = AppSpec {
        id,
        version: version.to_string(),
        runtime,
        cpus,
        mem,
        disk,
        instances,
        env,
        labels,
        ports,
        require_ports,
        constraints,
        health_checks,
        upgrade_strategy,
        backoff_seconds,
        backoff_factor,
        max_launch_delay_seconds,
        kill_grace_seconds,
        dependencies,
        legacy_definition: Value::Null,
    };
    let definition = render_definition(&app, &echo);
    Ok(MarathonApp {
        spec: app,
        definition,
    })
}

/// Joins `args` into one shell command, quoting what the shell would otherwise split or
/// expand, so an exec app given `args` runs exactly those arguments.
fn shell_join(args: &[String]) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    args.iter()
        .map(|arg| {
            if !arg.is_empty() && arg.chars().all(plain) {
                arg.clone()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Port mappings with the path of their list.
type Mappings = (Vec<PortSpec>, Vec<PortEcho>, String);

struct ContainerInput {
    kind: &'static str,
    image: Option<String>,
    /// `container.docker.network`, with its path.
    network: Option<(DockerNetwork, String)>,
    mappings: Option<Mappings>,
    force_pull: bool,
    /// A DOCKER container without a usable image (already reported).
    image_required: bool,
}

fn parse_container(r: &mut Reader, value: Option<&Value>) -> Option<ContainerInput> {
    let container = r.object(value, "/container")?;
    let (kind, known) = match r.string(container.get("type"), "/container/type") {
        None => ("DOCKER", present(container.get("type")).is_none()),
        Some(t) if t.eq_ignore_ascii_case("DOCKER") => ("DOCKER", true),
        Some(t) if t.eq_ignore_ascii_case("MESOS") => ("MESOS", true),
        Some(t) => {
            r.fail(
                "/container/type",
                format!("unknown container type '{t}'; expected DOCKER or MESOS"),
            );
            ("MESOS", false)
        }
    };
    if let Some(volumes) = r.array(container.get("volumes"), "/container/volumes") {
        if !volumes.is_empty() {
            r.fail("/container/volumes", "volumes are not supported");
        }
    }
    let mut input = ContainerInput {
        kind,
        image: None,
        network: None,
        mappings: None,
        force_pull: false,
        image_required: false,
    };
    let docker = r.object(container.get("docker"), "/container/docker");
    let mut image_given = false;
    let mut docker_mappings = None;
    if let Some(docker) = docker {
        image_given = present(docker.get("image")).is_some();
        match r.string(docker.get("image"), "/container/docker/image") {
            Some(image) if image.trim().is_empty() => {
                r.fail("/container/docker/image", "must not be empty");
            }
            Some(image) => input.image = Some(image.to_string()),
            None => {}
        }
        let network_path = "/container/docker/network";
        input.network = match r.string(docker.get("network"), network_path) {
            None => None,
            Some(n) if n.eq_ignore_ascii_case("BRIDGE") => {
                Some((DockerNetwork::Bridge, network_path.to_string()))
            }
            Some(n) if n.eq_ignore_ascii_case("HOST") => {
                Some((DockerNetwork::Host, network_path.to_string()))
            }
            Some(n) if n.eq_ignore_ascii_case("USER") || n.eq_ignore_ascii_case("NONE") => {
                r.fail(
                    network_path,
                    format!("{n} networking is not supported; use BRIDGE or HOST"),
                );
                None
            }
            Some(n) => {
                r.fail(
                    network_path,
                    format!("unknown network '{n}'; expected BRIDGE or HOST"),
                );
                None
            }
        };
        docker_mappings = parse_port_mappings(
            r,
            docker.get("portMappings"),
            "/container/docker/portMappings",
        );
        input.force_pull = r
            .boolean(docker.get("forcePull"), "/container/docker/forcePull")
            .unwrap_or(false);
        if r.boolean(docker.get("privileged"), "/container/docker/privileged") == Some(true) {
            r.fail(
                "/container/docker/privileged",
                "privileged containers are not supported",
            );
        }
        if let Some(parameters) = r.array(docker.get("parameters"), "/container/docker/parameters")
        {
            if !parameters.is_empty() {
                r.fail(
                    "/container/docker/parameters",
                    "Docker parameters are not supported",
                );
            }
        }
    }
    if kind == "DOCKER" && input.image.is_none() {
        // Whatever is wrong with the image has been reported; nothing else to run.
        input.image_required = true;
        if known && !image_given {
            r.fail(
                "/container/docker/image",
                "is required for DOCKER containers",
            );
        }
    }
    // Marathon 1.5 moved port mappings from `container.docker` to `container`; take either.
    let container_mappings =
        parse_port_mappings(r, container.get("portMappings"), "/container/portMappings");
    input.mappings = match (docker_mappings, container_mappings) {
        (Some(docker), Some(outer)) if !docker.0.is_empty() && !outer.0.is_empty() => {
            if docker.0 != outer.0 || docker.1 != outer.1 {
                r.fail(
                    &outer.2,
                    "conflicts with /container/docker/portMappings; give only one",
                );
            }
            Some(docker)
        }
        (Some(docker), Some(outer)) if docker.0.is_empty() => Some(outer),
        (Some(list), _) | (None, Some(list)) => Some(list),
        (None, None) => None,
    };
    Some(input)
}

/// Marathon 1.5's `networks`: one entry, `host` or `container/bridge`.
fn parse_networks(r: &mut Reader, value: Option<&Value>) -> Option<(DockerNetwork, String)> {
    let list = r.array(value, "/networks")?;
    if list.len() > 1 {
        r.fail("/networks", "only one network is supported");
        return None;
    }
    let entry = list.first()?;
    let path = index("/networks", 0);
    let network = r.object(Some(entry), &path)?;
    let mode_path = at(&path, "mode");
    // Marathon's default mode is `container`, which needs a named network.
    let mode = r
        .string(network.get("mode"), &mode_path)
        .unwrap_or("container");
    match mode {
        "host" => Some((DockerNetwork::Host, mode_path)),
        "container/bridge" => Some((DockerNetwork::Bridge, mode_path)),
        "container" => {
            r.fail(
                &mode_path,
                "container networks (IP per task) are not supported; use host or container/bridge",
            );
            None
        }
        other => {
            r.fail(
                &mode_path,
                format!("unknown mode '{other}'; expected host or container/bridge"),
            );
            None
        }
    }
}

fn parse_port_number(r: &mut Reader, value: Option<&Value>, path: &str) -> Option<u16> {
    let number = r.unsigned(value, path)?;
    let port = u16::try_from(number).ok();
    if port.is_none() {
        r.fail(path, format!("got {number}, expected between 0 and 65535"));
    }
    port
}

fn parse_protocol(r: &mut Reader, value: Option<&Value>, path: &str) -> String {
    match r.string(value, path) {
        None => "tcp".into(),
        Some(p) => match p.to_ascii_lowercase().as_str() {
            "tcp" => "tcp".into(),
            "udp" => "udp".into(),
            "udp,tcp" | "tcp,udp" => "udp,tcp".into(),
            _ => {
                r.fail(
                    path,
                    format!("unknown protocol '{p}'; expected tcp, udp or udp,tcp"),
                );
                "tcp".into()
            }
        },
    }
}

fn parse_port_name(r: &mut Reader, value: Option<&Value>, path: &str) -> Option<String> {
    let name = r.string(value, path)?;
    if !is_dns_label(name) {
        r.fail(
            path,
            format!(
                "port name '{name}' must be lowercase letters, digits and '-', starting and \
                 ending with a letter or digit"
            ),
        );
    }
    Some(name.to_string())
}

/// `ports` (legacy) or `portDefinitions`, with the path to report problems of the whole
/// list at; `None` when neither is given.
fn parse_host_ports(r: &mut Reader, object: &Map<String, Value>) -> Option<Mappings> {
    let legacy = r.array(object.get("ports"), "/ports").map(|list| {
        let ports: Vec<PortSpec> = list
            .iter()
            .enumerate()
            .map(|(i, item)| PortSpec {
                host_port: parse_port_number(r, Some(item), &index("/ports", i)).unwrap_or(0),
                container_port: None,
                protocol: "tcp".into(),
                name: None,
            })
            .collect();
        let echo = vec![PortEcho::default(); ports.len()];
        (ports, echo, "/ports".to_string())
    });
    let definitions = r
        .array(object.get("portDefinitions"), "/portDefinitions")
        .map(|list| {
            let mut ports = Vec::with_capacity(list.len());
            let mut echo = Vec::with_capacity(list.len());
            for (i, item) in list.iter().enumerate() {
                let path = index("/portDefinitions", i);
                let Some(definition) = r.object(Some(item), &path) else {
                    continue;
                };
                ports.push(PortSpec {
                    host_port: parse_port_number(r, definition.get("port"), &at(&path, "port"))
                        .unwrap_or(0),
                    container_port: None,
                    protocol: parse_protocol(r, definition.get("protocol"), &at(&path, "protocol")),
                    name: parse_port_name(r, definition.get("name"), &at(&path, "name")),
                });
                echo.push(PortEcho {
                    labels: r.string_map(definition.get("labels"), &at(&path, "labels")),
                    service_port: 0,
                });
            }
            (ports, echo, "/portDefinitions".to_string())
        });
    let chosen = match (legacy, definitions) {
        (Some(legacy), Some(definitions)) => {
            let numbers = |list: &[PortSpec]| list.iter().map(|p| p.host_port).collect::<Vec<_>>();
            // An echoed older answer carries both; they agree.
            if numbers(&legacy.0) != numbers(&definitions.0) {
                r.fail("/ports", "give either ports or portDefinitions, not both");
            }
            Some(definitions)
        }
        (Some(list), None) | (None, Some(list)) => Some(list),
        (None, None) => None,
    };
    if let Some((ports, _, path)) = &chosen {
        check_unique_ports(r, ports, path);
    }
    chosen
}

fn parse_port_mappings(r: &mut Reader, value: Option<&Value>, list_path: &str) -> Option<Mappings> {
    let list = r.array(value, list_path)?;
    let mut ports = Vec::with_capacity(list.len());
    let mut echo = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let path = index(list_path, i);
        let Some(mapping) = r.object(Some(item), &path) else {
            continue;
        };
        let container_path = at(&path, "containerPort");
        let container_port = parse_port_number(r, mapping.get("containerPort"), &container_path);
        if present(mapping.get("containerPort")).is_none() {
            r.fail(&container_path, "is required");
        }
        ports.push(PortSpec {
            host_port: parse_port_number(r, mapping.get("hostPort"), &at(&path, "hostPort"))
                .unwrap_or(0),
            container_port: Some(container_port.unwrap_or(0)),
            protocol: parse_protocol(r, mapping.get("protocol"), &at(&path, "protocol")),
            name: parse_port_name(r, mapping.get("name"), &at(&path, "name")),
        });
        // Service ports belong to Marathon's load balancing, which atoll leaves to DNS.
        echo.push(PortEcho {
            labels: r.string_map(mapping.get("labels"), &at(&path, "labels")),
            service_port: r
                .unsigned(mapping.get("servicePort"), &at(&path, "servicePort"))
                .unwrap_or(0),
        });
    }
    check_unique_ports(r, &ports, list_path);
    Some((ports, echo, list_path.to_string()))
}

/// Requested host ports and port names may not repeat (0, dynamic, may).
fn check_unique_ports(r: &mut Reader, ports: &[PortSpec], path: &str) {
    let mut seen_ports = BTreeSet::new();
    let mut seen_names = BTreeSet::new();
    for port in ports {
        if port.host_port != 0 && !seen_ports.insert(port.host_port) {
            r.fail(
                path,
                format!(
                    "host ports must be unique; {} is requested twice",
                    port.host_port
                ),
            );
        }
        if let Some(name) = &port.name {
            if !seen_names.insert(name.as_str()) {
                r.fail(
                    path,
                    format!("port names must be unique; '{name}' is used twice"),
                );
            }
        }
    }
}

fn parse_constraints(r: &mut Reader, value: Option<&Value>) -> Vec<Constraint> {
    let Some(list) = r.array(value, "/constraints") else {
        return Vec::new();
    };
    let mut constraints = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let path = index("/constraints", i);
        let Some(parts) = item.as_array() else {
            r.expected(&path, "an array [field, operator, value]", item);
            continue;
        };
        if !(2..=3).contains(&parts.len()) {
            r.fail(
                &path,
                "expected [field, operator] or [field, operator, value]",
            );
            continue;
        }
        let field = match parts[0].as_str() {
            Some(field) if !field.trim().is_empty() => Some(field.to_string()),
            Some(_) => {
                r.fail(&path, "the field must not be empty");
                None
            }
            None => {
                r.fail(
                    &path,
                    format!("the field must be a string, got {}", describe(&parts[0])),
                );
                None
            }
        };
        let operator = match parts[1].as_str() {
            Some(name) => {
                let operator = match name.to_ascii_uppercase().as_str() {
                    "UNIQUE" => Some(ConstraintOperator::Unique),
                    "CLUSTER" => Some(ConstraintOperator::Cluster),
                    "GROUP_BY" => Some(ConstraintOperator::GroupBy),
                    "LIKE" => Some(ConstraintOperator::Like),
                    "UNLIKE" => Some(ConstraintOperator::Unlike),
                    "MAX_PER" => Some(ConstraintOperator::MaxPer),
                    _ => None,
                };
                if operator.is_none() {
                    r.fail(
                        &path,
                        format!(
                            "unknown operator '{name}'; expected UNIQUE, CLUSTER, GROUP_BY, \
                             LIKE, UNLIKE or MAX_PER"
                        ),
                    );
                }
                operator
            }
            None => {
                r.fail(
                    &path,
                    format!("the operator must be a string, got {}", describe(&parts[1])),
                );
                None
            }
        };
        let operand = match parts.get(2) {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(text.clone()),
            // `["rack", "MAX_PER", 2]`: a count given as a number.
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(other) => {
                r.fail(
                    &path,
                    format!("the value must be a string, got {}", describe(other)),
                );
                None
            }
        };
        let (Some(field), Some(operator)) = (field, operator) else {
            continue;
        };
        let name = operator_name(operator);
        match (operator, &operand) {
            (ConstraintOperator::Unique, Some(_)) => {
                r.fail(&path, "UNIQUE takes no value");
            }
            (
                ConstraintOperator::Like | ConstraintOperator::Unlike | ConstraintOperator::MaxPer,
                None,
            ) => {
                r.fail(&path, format!("{name} requires a value"));
            }
            (ConstraintOperator::MaxPer | ConstraintOperator::GroupBy, Some(count))
                if !count.parse::<u32>().is_ok_and(|n| n > 0) =>
            {
                r.fail(
                    &path,
                    format!("{name} needs a positive integer value, got '{count}'"),
                );
            }
            _ => {}
        }
        constraints.push(Constraint {
            field,
            operator,
            value: operand,
        });
    }
    constraints
}

fn parse_health_checks(
    r: &mut Reader,
    value: Option<&Value>,
    port_count: usize,
    echo: &mut Echo,
) -> Vec<HealthCheckSpec> {
    let Some(list) = r.array(value, "/healthChecks") else {
        return Vec::new();
    };
    let mut checks = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let path = index("/healthChecks", i);
        let Some(check) = r.object(Some(item), &path) else {
            continue;
        };
        let protocol_path = at(&path, "protocol");
        let given = r
            .string(check.get("protocol"), &protocol_path)
            .unwrap_or("HTTP")
            .to_ascii_uppercase();
        let protocol = match given.as_str() {
            "HTTP" | "MESOS_HTTP" => HealthProtocol::Http,
            "TCP" | "MESOS_TCP" => HealthProtocol::Tcp,
            "COMMAND" => HealthProtocol::Command,
            "HTTPS" | "MESOS_HTTPS" => {
                r.fail(
                    &protocol_path,
                    "HTTPS health checks are not supported; use HTTP, TCP or COMMAND",
                );
                HealthProtocol::Http
            }
            other => {
                r.fail(
                    &protocol_path,
                    format!(
                        "unknown protocol '{other}'; expected HTTP, TCP, COMMAND, MESOS_HTTP \
                         or MESOS_TCP"
                    ),
                );
                HealthProtocol::Http
            }
        };
        let health_path = r
            .string(check.get("path"), &at(&path, "path"))
            .unwrap_or(DEFAULT_HEALTH_PATH)
            .to_string();
        let port_index_path = at(&path, "portIndex");
        let port_index = r.unsigned_or(check.get("portIndex"), &port_index_path, 0);
        if present(check.get("port")).is_some() {
            r.fail(
                &at(&path, "port"),
                "an explicit health check port is not supported; use portIndex",
            );
        } else if protocol != HealthProtocol::Command {
            if port_count == 0 {
                r.fail(
                    &port_index_path,
                    "the app has no ports; HTTP and TCP health checks need one",
                );
            } else if port_index >= port_count as u64 {
                r.fail(
                    &port_index_path,
                    format!("got {port_index}, but the app has only {port_count} port(s)"),
                );
            }
        }
        let command_path = at(&path, "command");
        let command = match present(check.get("command")) {
            None => None,
            // Marathon nests it (`{"value": "..."}`); a bare string is accepted too.
            Some(Value::String(text)) => Some(text.clone()),
            Some(value) => r
                .object(Some(value), &command_path)
                .and_then(|c| r.string(c.get("value"), &at(&command_path, "value")))
                .map(str::to_string),
        };
        if protocol == HealthProtocol::Command {
            if present(check.get("command")).is_none() {
                r.fail(&command_path, "is required for COMMAND health checks");
            } else if command.as_deref().is_some_and(|c| c.trim().is_empty()) {
                r.fail(&command_path, "must not be empty");
            } else if present(check.get("command"))
                .is_some_and(|c| c.is_object() && present(c.get("value")).is_none())
            {
                // An object without its `value`: there is no command to run.
                r.fail(
                    &at(&command_path, "value"),
                    "is required for COMMAND health checks",
                );
            }
        }
        let interval_path = at(&path, "intervalSeconds");
        let interval_seconds = r.unsigned_or(
            check.get("intervalSeconds"),
            &interval_path,
            DEFAULT_INTERVAL_SECONDS,
        );
        if interval_seconds == 0 {
            r.fail(&interval_path, "must be at least 1");
        }
        let timeout_path = at(&path, "timeoutSeconds");
        let timeout_seconds = r.unsigned_or(
            check.get("timeoutSeconds"),
            &timeout_path,
            DEFAULT_TIMEOUT_SECONDS,
        );
        if timeout_seconds == 0 {
            r.fail(&timeout_path, "must be at least 1");
        }
        checks.push(HealthCheckSpec {
            protocol,
            path: health_path,
            port_index: usize::try_from(port_index).unwrap_or(usize::MAX),
            command: (protocol == HealthProtocol::Command)
                .then_some(command)
                .flatten(),
            grace_period_seconds: r.unsigned_or(
                check.get("gracePeriodSeconds"),
                &at(&path, "gracePeriodSeconds"),
                DEFAULT_GRACE_PERIOD_SECONDS,
            ),
            interval_seconds,
            timeout_seconds,
            max_consecutive_failures: r.small_unsigned(
                check.get("maxConsecutiveFailures"),
                &at(&path, "maxConsecutiveFailures"),
                DEFAULT_MAX_CONSECUTIVE_FAILURES,
            ),
        });
        echo.health.push(HealthEcho {
            protocol: given,
            ignore_http1xx: r
                .boolean(check.get("ignoreHttp1xx"), &at(&path, "ignoreHttp1xx"))
                .unwrap_or(false),
            delay_seconds: r.unsigned_or(
                check.get("delaySeconds"),
                &at(&path, "delaySeconds"),
                DEFAULT_HEALTH_DELAY_SECONDS,
            ),
        });
    }
    checks
}

fn parse_upgrade_strategy(r: &mut Reader, value: Option<&Value>) -> UpgradeStrategy {
    let strategy = r.object(value, "/upgradeStrategy");
    let field = |name: &str| strategy.and_then(|s| s.get(name));
    UpgradeStrategy {
        minimum_health_capacity: r.between(
            field("minimumHealthCapacity"),
            "/upgradeStrategy/minimumHealthCapacity",
            0.0,
            1.0,
            DEFAULT_CAPACITY,
        ),
        maximum_over_capacity: r.between(
            field("maximumOverCapacity"),
            "/upgradeStrategy/maximumOverCapacity",
            0.0,
            1.0,
            DEFAULT_CAPACITY,
        ),
    }
}

/// `dependencies`: ids of apps or groups, a relative one taken from `base` (the group
/// holding the declaring app or group), as Marathon resolves them. Returned absolute,
/// without duplicates.
/// A request body that must be one JSON object: empty, unreadable or another kind of value is
/// a validation error at `/`.
pub(super) fn json_object(body: &[u8]) -> Result<Map<String, Value>, ValidationError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ValidationError::single(
            "/",
            "the request body is empty; expected a JSON object",
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ValidationError::single("/", format!("invalid JSON: {e}")))?;
    let Value::Object(object) = value else {
        return Err(ValidationError::single(
            "/",
            format!("expected a JSON object, got {}", describe(&value)),
        ));
    };
    Ok(object)
}

pub(super) fn parse_dependencies(
    r: &mut Reader,
    value: Option<&Value>,
    path: &str,
    base: &str,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (i, raw) in r
        .strings(value, path)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        match resolve_id(raw, base) {
            Ok(id) if !out.contains(&id) => out.push(id),
            Ok(_) => {}
            Err(message) => r.fail(&index(path, i), message),
        }
    }
    out
}

/// Fields Marathon clients send that atoll accepts and echoes but does not act on, and
/// the ones it can only accept in their "off" form.
fn parse_ignored(r: &mut Reader, object: &Map<String, Value>, echo: &mut Echo) {
    let mut keep = |key: &str| {
        if let Some(value) = present(object.get(key)) {
            echo.fields.insert(key.to_string(), value.clone());
        }
    };
    for key in [
        "user",
        "executor",
        "uris",
        "fetch",
        "storeUrls",
        "acceptedResourceRoles",
        "residency",
        "unreachableStrategy",
        "killSelection",
        "taskKillGracePeriodSeconds",
    ] {
        keep(key);
    }
    r.string(object.get("user"), "/user");
    r.string(object.get("executor"), "/executor");
    r.strings(object.get("uris"), "/uris");
    r.array(object.get("fetch"), "/fetch");
    r.strings(object.get("storeUrls"), "/storeUrls");
    r.strings(
        object.get("acceptedResourceRoles"),
        "/acceptedResourceRoles",
    );
    if let Some(selection) = r.string(object.get("killSelection"), "/killSelection") {
        if selection != "YOUNGEST_FIRST" && selection != "OLDEST_FIRST" {
            r.fail(
                "/killSelection",
                format!("unknown value '{selection}'; expected YOUNGEST_FIRST or OLDEST_FIRST"),
            );
        }
    }
    r.at_least(
        object.get("taskKillGracePeriodSeconds"),
        "/taskKillGracePeriodSeconds",
        0.0,
        0.0,
    );
    if let Some(strategy) = present(object.get("unreachableStrategy")) {
        if !strategy.is_object() && strategy.as_str() != Some("disabled") {
            r.expected(
                "/unreachableStrategy",
                "an object or \"disabled\"",
                strategy,
            );
        }
    }
    if let Some(secrets) = r.object(object.get("secrets"), "/secrets") {
        if !secrets.is_empty() {
            r.fail("/secrets", "secrets are not supported");
        }
    }
    if let Some(gpus) = r.number(object.get("gpus"), "/gpus") {
        if gpus != 0.0 {
            r.fail("/gpus", "GPUs are not supported; expected 0");
        }
    }
    if present(object.get("ipAddress")).is_some() {
        r.fail(
            "/ipAddress",
            "IP per task is not supported; use networks host or container/bridge",
        );
    }
    if let Some(checks) = r.array(object.get("readinessChecks"), "/readinessChecks") {
        if !checks.is_empty() {
            r.fail("/readinessChecks", "readiness checks are not supported");
        }
    }
}
