//! Rendering: apps and tasks the way Marathon's clients read them, and an app's definition
//! with every default filled in.

use std::collections::BTreeMap;

use atoll_state::{
    Allocation, AppSpec, ConstraintOperator, DockerNetwork, HealthCheckSpec, HealthProtocol,
    PortSpec, Runtime, TaskState,
};
use serde_json::{json, Map, Value};

use super::parse::DEFAULT_HEALTH_DELAY_SECONDS;

/// What the definition echoes but the domain does not keep.
#[derive(Debug, Default)]
pub(super) struct Echo {
    /// `args` of an exec app, which runs them joined as `cmd`.
    pub(super) exec_args: Option<Vec<String>>,
    /// `DOCKER` or `MESOS` (a Mesos container running a Docker image).
    pub(super) container_type: Option<&'static str>,
    /// One per port of the app.
    pub(super) ports: Vec<PortEcho>,
    /// One per health check.
    pub(super) health: Vec<HealthEcho>,
    /// Accepted-and-ignored top-level fields, as given.
    pub(super) fields: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct PortEcho {
    pub(super) labels: BTreeMap<String, String>,
    pub(super) service_port: u64,
}

#[derive(Debug, Clone)]
pub(super) struct HealthEcho {
    pub(super) protocol: String,
    pub(super) ignore_http1xx: bool,
    pub(super) delay_seconds: u64,
}

/// Marathon's app JSON as `GET /v2/apps/{id}` answers it: the definition plus its status.
/// `hosts` gives a task's host address; `healthy` says whether a task passes its health
/// checks (`None` when the app has none); `deployments` are `{"id": ...}` objects or bare
/// ids. Tasks are listed only with `embed_tasks`; finished ones are never counted or listed.
pub fn app_json(
    app: &super::MarathonApp,
    tasks: &[Allocation],
    hosts: &dyn Fn(&Allocation) -> String,
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
                task_json(task, &hosts(task), &health)
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

pub(super) fn object_of(value: Value) -> Map<String, Value> {
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
pub(super) fn render_definition(app: &AppSpec, echo: &Echo) -> Value {
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
        "dependencies": app.dependencies,
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

pub(super) fn operator_name(operator: ConstraintOperator) -> &'static str {
    match operator {
        ConstraintOperator::Unique => "UNIQUE",
        ConstraintOperator::Cluster => "CLUSTER",
        ConstraintOperator::GroupBy => "GROUP_BY",
        ConstraintOperator::Like => "LIKE",
        ConstraintOperator::Unlike => "UNLIKE",
        ConstraintOperator::MaxPer => "MAX_PER",
    }
}
