//! Marathon's JSON shapes for `/v2/apps` and `/v2/tasks`: app definitions parsed and
//! validated into [`AppSpec`], and apps and tasks rendered the way Marathon's clients
//! read them. Pure functions over plain data; the handlers live in `routes`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use atoll_state::{
    Allocation, AppSpec, Constraint, ConstraintOperator, DockerNetwork, HealthCheckSpec,
    HealthProtocol, PortSpec, Runtime, TaskState, UpgradeStrategy,
};
use serde_json::{json, Map, Value};

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
const DEFAULT_HEALTH_DELAY_SECONDS: u64 = 15;
const DEFAULT_CAPACITY: f64 = 1.0;

/// Message Marathon gives when an app has nothing to run.
const NOTHING_TO_RUN: &str =
    "AppDefinition must either contain one of 'cmd' or 'args', and/or a 'container'.";

/// An app definition Marathon would refuse: every problem found, each with the JSON path
/// of the offending field (`/cpus`, `/healthChecks(0)/portIndex`) and a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValidationError {
    /// `(path, message)` pairs, in the order they were found.
    pub details: Vec<(String, String)>,
}

impl ValidationError {
    fn single(path: &str, message: impl Into<String>) -> Self {
        ValidationError {
            details: vec![(path.to_string(), message.into())],
        }
    }

    /// Marathon's 422 body: `{"message": "Object is not valid", "details": [{"path",
    /// "errors": [...]}]}`, messages grouped by path in the order paths first appear.
    pub fn to_json(&self) -> Value {
        let mut grouped: Vec<(&str, Vec<&str>)> = Vec::new();
        for (path, message) in &self.details {
            match grouped.iter_mut().find(|(p, _)| p == path) {
                Some((_, errors)) => errors.push(message),
                None => grouped.push((path, vec![message])),
            }
        }
        let details: Vec<Value> = grouped
            .into_iter()
            .map(|(path, errors)| json!({ "path": path, "errors": errors }))
            .collect();
        json!({ "message": "Object is not valid", "details": details })
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Object is not valid")?;
        for (i, (path, message)) in self.details.iter().enumerate() {
            let separator = if i == 0 { ": " } else { "; " };
            write!(f, "{separator}{path}: {message}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationError {}

/// Parses a Marathon app definition (the body of `POST /v2/apps` or `PUT /v2/apps/{id}`)
/// into an app at `version`. With `base` (the current app, on PUT) the body is an update:
/// fields it leaves out keep their current values, as Marathon merges. Every problem found
/// is reported, not just the first.
pub fn parse_app(
    body: &[u8],
    version: &str,
    base: Option<&AppSpec>,
) -> Result<AppSpec, ValidationError> {
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
    let object = match base {
        Some(base) => merge_update(base, object),
        None => object,
    };
    parse_definition(&object, version)
}

/// Why the body of `PUT /v2/apps/{id}` was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutAppError {
    /// Not JSON at all (Marathon's 400), with the message to show.
    Json(String),
    /// A definition Marathon would refuse (422).
    Invalid(ValidationError),
}

/// Parses the body of `PUT /v2/apps/{id}`: the path names the app (a body without an id,
/// or with another, updates app `id`), and with `base` (the current app) the body is merged
/// into it. A change of `instances` alone is a scale and keeps the base's version, so no
/// task restarts. Returns the new app and the deployment's action
/// (`StartApplication`, `ScaleApplication` or `RestartApplication`).
pub fn parse_app_put(
    id: &str,
    body: &[u8],
    version: &str,
    base: Option<&AppSpec>,
) -> Result<(AppSpec, &'static str), PutAppError> {
    let mut body_value: Value = serde_json::from_slice(body)
        .map_err(|e| PutAppError::Json(format!("Invalid JSON: {e}")))?;
    if let Some(object) = body_value.as_object_mut() {
        object.insert("id".into(), Value::String(id.to_string()));
    }
    let body = serde_json::to_vec(&body_value).unwrap_or_default();
    let mut app = parse_app(&body, version, base).map_err(PutAppError::Invalid)?;
    let scale_only = base.is_some_and(|b| {
        let mut same = app.clone();
        same.instances = b.instances;
        same.version = b.version.clone();
        same.definition = b.definition.clone();
        same == *b
    });
    if let (true, Some(b)) = (scale_only, base) {
        app.version = b.version.clone();
        app.definition["version"] = Value::String(b.version.clone());
    }
    let action = match (base, scale_only) {
        (None, _) => "StartApplication",
        (Some(_), true) => "ScaleApplication",
        (Some(_), false) => "RestartApplication",
    };
    Ok((app, action))
}

/// Marathon's app JSON as `GET /v2/apps/{id}` answers it: the definition plus its status.
/// `hosts` maps a node name to its address; `healthy` says whether a task passes its health
/// checks (`None` when the app has none); `deployments` are `{"id": ...}` objects or bare
/// ids. Tasks are listed only with `embed_tasks`; finished ones are never counted or listed.
pub fn app_json(
    app: &AppSpec,
    tasks: &[Allocation],
    hosts: &dyn Fn(&str) -> String,
    healthy: &dyn Fn(&Allocation) -> Option<bool>,
    deployments: &[Value],
    last_failure: Option<Value>,
    embed_tasks: bool,
) -> Value {
    let mut out = match &app.definition {
        Value::Object(definition) => definition.clone(),
        _ => object_of(render_definition(app, &Echo::default())),
    };
    // The spec is authoritative: a scale rewrites `instances` without a new definition.
    out.insert("id".into(), Value::String(app.id.clone()));
    out.insert("instances".into(), Value::from(app.instances));
    out.insert("version".into(), Value::String(app.version.clone()));
    out.insert(
        "versionInfo".into(),
        json!({ "lastScalingAt": app.version, "lastConfigChangeAt": app.version }),
    );

    let live: Vec<&Allocation> = tasks.iter().filter(|t| !t.state.is_terminal()).collect();
    // Health only means something for running tasks; the others have no results yet.
    let health_of = |task: &Allocation| -> Option<bool> {
        (task.state == TaskState::Running)
            .then(|| healthy(task))
            .flatten()
    };
    let count = |wanted: &dyn Fn(&Allocation) -> bool| live.iter().filter(|t| wanted(t)).count();
    out.insert(
        "tasksStaged".into(),
        Value::from(count(&|t| {
            matches!(t.state, TaskState::Staging | TaskState::Starting)
        })),
    );
    out.insert(
        "tasksRunning".into(),
        Value::from(count(&|t| t.state == TaskState::Running)),
    );
    out.insert(
        "tasksHealthy".into(),
        Value::from(count(&|t| health_of(t) == Some(true))),
    );
    out.insert(
        "tasksUnhealthy".into(),
        Value::from(count(&|t| health_of(t) == Some(false))),
    );
    let deployments: Vec<Value> = deployments
        .iter()
        .map(|d| match d {
            Value::String(id) => json!({ "id": id }),
            other => other.clone(),
        })
        .collect();
    out.insert("deployments".into(), Value::Array(deployments));
    if embed_tasks {
        let rendered = live
            .iter()
            .map(|task| {
                let health: Vec<bool> = health_of(task).into_iter().collect();
                task_json(task, &hosts(&task.node), &health)
            })
            .collect();
        out.insert("tasks".into(), Value::Array(rendered));
    }
    if let Some(failure) = last_failure {
        out.insert("lastTaskFailure".into(), failure);
    }
    Value::Object(out)
}

/// Marathon's task JSON for one allocation on `host`, with one health check result per
/// entry of `health` (`true` = alive).
pub fn task_json(task: &Allocation, host: &str, health: &[bool]) -> Value {
    let results: Vec<Value> = health
        .iter()
        .map(|alive| {
            json!({
                "alive": alive,
                "taskId": task.id,
                "firstSuccess": null,
                "lastSuccess": null,
                "lastFailure": null,
                "consecutiveFailures": task.health_failures,
            })
        })
        .collect();
    let protocol = if host.parse::<std::net::Ipv6Addr>().is_ok() {
        "IPv6"
    } else {
        "IPv4"
    };
    json!({
        "id": task.id,
        "appId": task.app_id,
        "host": host,
        "ports": task.ports,
        "servicePorts": [],
        "slaveId": task.node,
        "stagedAt": task.staged_at,
        "startedAt": task.started_at,
        "version": task.app_version,
        "state": task.state.mesos_name(),
        "healthCheckResults": results,
        "ipAddresses": [{ "ipAddress": host, "protocol": protocol }],
        "localVolumes": [],
    })
}

/// Normalizes an app id to an absolute path (`web` → `/web`, `/prod/web/` → `/prod/web`).
/// Segments are lowercase letters, digits and `-`, starting and ending with a letter or
/// digit; relative segments are refused.
pub fn normalize_app_id(raw: &str) -> Result<String, String> {
    let trimmed = raw.strip_prefix('/').unwrap_or(raw);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    if trimmed.is_empty() {
        return Err("must not be empty".into());
    }
    for segment in trimmed.split('/') {
        if segment.is_empty() {
            return Err(format!("'{raw}' contains an empty path segment"));
        }
        if segment == "." || segment == ".." {
            return Err(format!(
                "'{raw}' contains the relative segment '{segment}'; give the absolute id"
            ));
        }
        if !is_dns_label(segment) {
            return Err(format!(
                "path segment '{segment}' must be lowercase letters, digits and '-', \
                 starting and ending with a letter or digit"
            ));
        }
    }
    Ok(format!("/{trimmed}"))
}

/// `[a-z0-9]([a-z0-9-]*[a-z0-9])?`: Marathon's rule for id segments and port names.
fn is_dns_label(text: &str) -> bool {
    let bytes = text.as_bytes();
    let inner = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            inner(first) && inner(last) && bytes.iter().all(|b| inner(b) || *b == b'-')
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------
// PUT: merging an update into the current definition

/// Marathon's PUT semantics: top-level fields of the update replace the current ones,
/// absent fields keep their value. Fields that exclude each other follow the update, so a
/// new `cmd` drops the old `args` and a change of networking drops ports of the old mode.
fn merge_update(base: &AppSpec, update: Map<String, Value>) -> Map<String, Value> {
    let mut merged = match &base.definition {
        Value::Object(definition) => definition.clone(),
        _ => object_of(render_definition(base, &Echo::default())),
    };
    merged.insert("id".into(), Value::String(base.id.clone()));
    let given = |key: &str| update.contains_key(key);
    for (one, other) in [("cmd", "args"), ("ports", "portDefinitions")] {
        if given(one) && !given(other) {
            merged.remove(other);
        }
        if given(other) && !given(one) {
            merged.remove(one);
        }
    }
    // Networking is given twice (`networks`, Marathon 1.5+, and `container.docker.network`,
    // before); the update's choice wins over whichever form the current definition holds.
    if given("networks") && !given("container") {
        if let Some(Value::Object(docker)) = merged
            .get_mut("container")
            .and_then(|c| c.get_mut("docker"))
        {
            docker.remove("network");
        }
    }
    if given("container") && !given("networks") {
        let keeps_mode = update
            .get("container")
            .and_then(Value::as_object)
            .is_some_and(|c| present(c.get("docker").and_then(|d| d.get("network"))).is_none());
        if !keeps_mode {
            merged.remove("networks");
        }
    }
    let ports_given = given("ports") || given("portDefinitions");
    merged.extend(update);
    let was_bridge = matches!(
        base.runtime,
        Runtime::Docker {
            network: DockerNetwork::Bridge,
            ..
        }
    );
    if !ports_given && looks_bridged(&merged) != was_bridge {
        merged.remove("ports");
        merged.remove("portDefinitions");
    }
    merged
}

/// Whether a (possibly invalid) definition asks for bridge networking.
fn looks_bridged(definition: &Map<String, Value>) -> bool {
    let by_networks = definition
        .get("networks")
        .and_then(|n| n.get(0))
        .and_then(|n| n.get("mode"))
        .and_then(Value::as_str)
        == Some("container/bridge");
    let by_docker = definition
        .get("container")
        .and_then(|c| c.get("docker"))
        .and_then(|d| d.get("network"))
        .and_then(Value::as_str)
        .is_some_and(|n| n.eq_ignore_ascii_case("BRIDGE"));
    by_networks || by_docker
}

// ---------------------------------------------------------------------------------------
// Parsing

/// What the definition echoes but the domain does not keep.
#[derive(Debug, Default)]
struct Echo {
    /// `args` of an exec app, which runs them joined as `cmd`.
    exec_args: Option<Vec<String>>,
    /// `DOCKER` or `MESOS` (a Mesos container running a Docker image).
    container_type: Option<&'static str>,
    /// One per port of the app.
    ports: Vec<PortEcho>,
    /// One per health check.
    health: Vec<HealthEcho>,
    /// Accepted-and-ignored top-level fields, as given.
    fields: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct PortEcho {
    labels: BTreeMap<String, String>,
    service_port: u64,
}

#[derive(Debug, Clone)]
struct HealthEcho {
    protocol: String,
    ignore_http1xx: bool,
    delay_seconds: u64,
}

/// Problems found so far; readers report into it and return a fallback so parsing goes on.
#[derive(Default)]
struct Reader {
    problems: Vec<(String, String)>,
}

/// `null` counts as absent: clients send `"args": null`, `"container": null`.
fn present(value: Option<&Value>) -> Option<&Value> {
    value.filter(|v| !v.is_null())
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn at(parent: &str, field: &str) -> String {
    format!("{parent}/{field}")
}

fn index(parent: &str, i: usize) -> String {
    format!("{parent}({i})")
}

impl Reader {
    fn fail(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push((path.to_string(), message.into()));
    }

    fn expected(&mut self, path: &str, what: &str, value: &Value) {
        self.fail(path, format!("expected {what}, got {}", describe(value)));
    }

    fn number(&mut self, value: Option<&Value>, path: &str) -> Option<f64> {
        let value = present(value)?;
        let number = value.as_f64();
        if number.is_none() {
            self.expected(path, "a number", value);
        }
        number
    }

    /// A number of at least `min`, or `default` when absent or wrong.
    fn at_least(&mut self, value: Option<&Value>, path: &str, min: f64, default: f64) -> f64 {
        match self.number(value, path) {
            Some(n) if n < min => {
                self.fail(path, format!("got {n}, expected {min} or more"));
                default
            }
            Some(n) => n,
            None => default,
        }
    }

    /// A number within `min..=max`, or `default` when absent or wrong.
    fn between(
        &mut self,
        value: Option<&Value>,
        path: &str,
        min: f64,
        max: f64,
        default: f64,
    ) -> f64 {
        match self.number(value, path) {
            Some(n) if n < min || n > max => {
                self.fail(path, format!("got {n}, expected between {min} and {max}"));
                default
            }
            Some(n) => n,
            None => default,
        }
    }

    fn unsigned(&mut self, value: Option<&Value>, path: &str) -> Option<u64> {
        let value = present(value)?;
        if let Some(n) = value.as_u64() {
            return Some(n);
        }
        match value.as_f64() {
            Some(n) if n < 0.0 => self.fail(path, format!("got {n}, expected 0 or more")),
            // Whole floats (`3.0`) are what some clients send for integers.
            Some(n) if n.fract() == 0.0 && n < 9.0e15 => return Some(n as u64),
            Some(n) => self.fail(path, format!("got {n}, expected a whole number")),
            None => self.expected(path, "a whole number", value),
        }
        None
    }

    fn unsigned_or(&mut self, value: Option<&Value>, path: &str, default: u64) -> u64 {
        self.unsigned(value, path).unwrap_or(default)
    }

    /// A whole number that fits in `u32`, or `default`.
    fn small_unsigned(&mut self, value: Option<&Value>, path: &str, default: u32) -> u32 {
        match self.unsigned(value, path) {
            Some(n) => u32::try_from(n).unwrap_or_else(|_| {
                self.fail(path, format!("got {n}, expected at most {}", u32::MAX));
                default
            }),
            None => default,
        }
    }

    fn string<'v>(&mut self, value: Option<&'v Value>, path: &str) -> Option<&'v str> {
        let value = present(value)?;
        let text = value.as_str();
        if text.is_none() {
            self.expected(path, "a string", value);
        }
        text
    }

    fn boolean(&mut self, value: Option<&Value>, path: &str) -> Option<bool> {
        let value = present(value)?;
        let flag = value.as_bool();
        if flag.is_none() {
            self.expected(path, "a boolean", value);
        }
        flag
    }

    fn array<'v>(&mut self, value: Option<&'v Value>, path: &str) -> Option<&'v Vec<Value>> {
        let value = present(value)?;
        let list = value.as_array();
        if list.is_none() {
            self.expected(path, "an array", value);
        }
        list
    }

    fn object<'v>(
        &mut self,
        value: Option<&'v Value>,
        path: &str,
    ) -> Option<&'v Map<String, Value>> {
        let value = present(value)?;
        let object = value.as_object();
        if object.is_none() {
            self.expected(path, "an object", value);
        }
        object
    }

    fn strings(&mut self, value: Option<&Value>, path: &str) -> Option<Vec<String>> {
        let list = self.array(value, path)?;
        let mut out = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            match item.as_str() {
                Some(text) => out.push(text.to_string()),
                None => self.expected(&index(path, i), "a string", item),
            }
        }
        Some(out)
    }

    /// An object of strings (`env`, `labels`).
    fn string_map(&mut self, value: Option<&Value>, path: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(object) = self.object(value, path) else {
            return out;
        };
        for (key, item) in object {
            let item_path = at(path, key);
            match item {
                Value::String(text) => {
                    out.insert(key.clone(), text.clone());
                }
                Value::Object(reference) if reference.contains_key("secret") => self.fail(
                    &item_path,
                    "secret references are not supported; give the value as a string",
                ),
                other => self.expected(&item_path, "a string", other),
            }
        }
        out
    }
}

/// Parses a whole definition (an update already merged into its base).
fn parse_definition(
    object: &Map<String, Value>,
    version: &str,
) -> Result<AppSpec, ValidationError> {
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
    // Validated with the fields kept for the echo; the platform acts on the typed value.
    let kill_grace_seconds = present(object.get("taskKillGracePeriodSeconds"))
        .and_then(Value::as_f64)
        .filter(|s| s.is_finite() && *s >= 0.0);

    if !r.problems.is_empty() {
        return Err(ValidationError {
            details: r.problems,
        });
    }
    let mut app = AppSpec {
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
        definition: Value::Null,
    };
    app.definition = render_definition(&app, &echo);
    Ok(app)
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

fn operator_name(operator: ConstraintOperator) -> &'static str {
    match operator {
        ConstraintOperator::Unique => "UNIQUE",
        ConstraintOperator::Cluster => "CLUSTER",
        ConstraintOperator::GroupBy => "GROUP_BY",
        ConstraintOperator::Like => "LIKE",
        ConstraintOperator::Unlike => "UNLIKE",
        ConstraintOperator::MaxPer => "MAX_PER",
    }
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
        "dependencies",
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
    r.strings(object.get("dependencies"), "/dependencies");
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

// ---------------------------------------------------------------------------------------
// Rendering the definition

fn object_of(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Whole numbers as integers (`128`, not `128.0`), as Marathon prints them.
fn number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        Value::from(n as i64)
    } else {
        Value::from(n)
    }
}

fn labels_json(labels: &BTreeMap<String, String>) -> Value {
    json!(labels)
}

fn port_definition_json(port: &PortSpec, echo: &PortEcho) -> Value {
    let mut out = json!({
        "port": port.host_port,
        "protocol": port.protocol,
        "labels": labels_json(&echo.labels),
    });
    if let Some(name) = &port.name {
        out["name"] = Value::String(name.clone());
    }
    out
}

fn port_mapping_json(port: &PortSpec, echo: &PortEcho) -> Value {
    let mut out = json!({
        "containerPort": port.container_port.unwrap_or(0),
        "hostPort": port.host_port,
        "servicePort": echo.service_port,
        "protocol": port.protocol,
        "labels": labels_json(&echo.labels),
    });
    if let Some(name) = &port.name {
        out["name"] = Value::String(name.clone());
    }
    out
}

fn health_check_json(check: &HealthCheckSpec, echo: Option<&HealthEcho>) -> Value {
    let protocol = echo.map(|e| e.protocol.clone()).unwrap_or_else(|| {
        match check.protocol {
            HealthProtocol::Http => "HTTP",
            HealthProtocol::Tcp => "TCP",
            HealthProtocol::Command => "COMMAND",
        }
        .to_string()
    });
    let mut out = json!({
        "protocol": protocol,
        "gracePeriodSeconds": check.grace_period_seconds,
        "intervalSeconds": check.interval_seconds,
        "timeoutSeconds": check.timeout_seconds,
        "maxConsecutiveFailures": check.max_consecutive_failures,
        "delaySeconds": echo.map_or(DEFAULT_HEALTH_DELAY_SECONDS, |e| e.delay_seconds),
    });
    match check.protocol {
        HealthProtocol::Http => {
            out["path"] = Value::String(check.path.clone());
            out["portIndex"] = Value::from(check.port_index);
            out["ignoreHttp1xx"] = Value::Bool(echo.is_some_and(|e| e.ignore_http1xx));
        }
        HealthProtocol::Tcp => out["portIndex"] = Value::from(check.port_index),
        HealthProtocol::Command => {
            out["command"] = json!({ "value": check.command.clone().unwrap_or_default() });
        }
    }
    out
}

/// The definition as Marathon's `GET /v2/apps/{id}` shows it, every default filled in.
fn render_definition(app: &AppSpec, echo: &Echo) -> Value {
    let port_echo = |i: usize| echo.ports.get(i).cloned().unwrap_or_default();
    let (cmd, args, container, bridged) = match &app.runtime {
        Runtime::Exec { cmd } => match &echo.exec_args {
            Some(args) => (Value::Null, json!(args), Value::Null, false),
            None => (json!(cmd), Value::Null, Value::Null, false),
        },
        Runtime::Docker {
            image,
            network,
            cmd,
            args,
            force_pull,
        } => {
            let bridged = *network == DockerNetwork::Bridge;
            let mut docker = json!({
                "image": image,
                "network": if bridged { "BRIDGE" } else { "HOST" },
                "privileged": false,
                "parameters": [],
                "forcePull": force_pull,
            });
            let mut container = json!({
                "type": echo.container_type.unwrap_or("DOCKER"),
                "docker": Value::Null,
                "volumes": [],
            });
            // Both places, for clients from before and after Marathon 1.5.
            if bridged {
                let mappings: Vec<Value> = app
                    .ports
                    .iter()
                    .enumerate()
                    .map(|(i, p)| port_mapping_json(p, &port_echo(i)))
                    .collect();
                docker["portMappings"] = json!(mappings);
                container["portMappings"] = json!(mappings);
            }
            container["docker"] = docker;
            let args = if args.is_empty() {
                Value::Null
            } else {
                json!(args)
            };
            (json!(cmd), args, container, bridged)
        }
    };
    let port_definitions: Vec<Value> = if bridged {
        Vec::new()
    } else {
        app.ports
            .iter()
            .enumerate()
            .map(|(i, p)| port_definition_json(p, &port_echo(i)))
            .collect()
    };
    let constraints: Vec<Value> = app
        .constraints
        .iter()
        .map(|c| {
            let mut parts = vec![json!(c.field), json!(operator_name(c.operator))];
            if let Some(value) = &c.value {
                parts.push(json!(value));
            }
            Value::Array(parts)
        })
        .collect();
    let health_checks: Vec<Value> = app
        .health_checks
        .iter()
        .enumerate()
        .map(|(i, c)| health_check_json(c, echo.health.get(i)))
        .collect();
    let mode = if bridged { "container/bridge" } else { "host" };
    let mut definition = object_of(json!({
        "id": app.id,
        "cmd": cmd,
        "args": args,
        "user": null,
        "env": app.env,
        "instances": app.instances,
        "cpus": number(app.cpus),
        "mem": number(app.mem),
        "disk": number(app.disk),
        "gpus": 0,
        "executor": "",
        "constraints": constraints,
        "uris": [],
        "fetch": [],
        "storeUrls": [],
        "backoffSeconds": number(app.backoff_seconds),
        "backoffFactor": number(app.backoff_factor),
        "maxLaunchDelaySeconds": number(app.max_launch_delay_seconds),
        "container": container,
        "healthChecks": health_checks,
        "readinessChecks": [],
        "dependencies": [],
        "upgradeStrategy": {
            "minimumHealthCapacity": number(app.upgrade_strategy.minimum_health_capacity),
            "maximumOverCapacity": number(app.upgrade_strategy.maximum_over_capacity),
        },
        "labels": app.labels,
        "ipAddress": null,
        "version": app.version,
        "residency": null,
        "secrets": {},
        "taskKillGracePeriodSeconds": null,
        "killSelection": "YOUNGEST_FIRST",
        "requirePorts": app.require_ports,
        "portDefinitions": port_definitions,
        "networks": [{ "mode": mode }],
    }));
    definition.extend(echo.fields.clone());
    Value::Object(definition)
}

#[cfg(test)]
mod tests;
