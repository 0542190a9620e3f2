//! The engine's create request for a task, and the checks a spec passes first: pure, so
//! they are tested without an engine.

use super::owner::Owner;
use super::{LABEL_APP_ID, LABEL_APP_VERSION, LABEL_MANAGED, LABEL_TASK_ID};
use crate::spec::task_environment;
use crate::{DockerNetwork, DriverError, TaskKind, TaskSpec};
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding as EnginePortBinding};
use std::collections::{BTreeMap, HashMap};

pub(super) fn invalid(spec: &TaskSpec, reason: impl Into<String>) -> DriverError {
    DriverError::InvalidSpec {
        task_id: spec.task_id.clone(),
        reason: reason.into(),
    }
}

pub(super) fn validate(
    spec: &TaskSpec,
    cmd: Option<&str>,
    args: &[String],
) -> Result<(), DriverError> {
    if cmd.is_some() && !args.is_empty() {
        return Err(invalid(spec, "cmd and args cannot both be given"));
    }
    for port in &spec.ports {
        if protocols(&port.protocol).is_empty() {
            return Err(invalid(
                spec,
                format!(
                    "unknown protocol {:?} for port {}",
                    port.protocol, port.host_port
                ),
            ));
        }
    }
    Ok(())
}

/// Marathon allows `tcp`, `udp` and `udp,tcp`.
fn protocols(protocol: &str) -> Vec<&'static str> {
    let mut found = Vec::new();
    for part in protocol.split(',').map(str::trim) {
        match part.to_ascii_lowercase().as_str() {
            "tcp" | "" => found.push("tcp"),
            "udp" => found.push("udp"),
            _ => return Vec::new(),
        }
    }
    found.dedup();
    found
}

/// The engine's create request for a task (pure, so it is tested without an engine).
pub(super) fn container_body(spec: &TaskSpec, owner: &Owner) -> ContainerCreateBody {
    let TaskKind::Docker {
        image,
        network,
        cmd,
        args,
        ..
    } = &spec.kind
    else {
        return ContainerCreateBody::default();
    };

    let env = task_environment(spec)
        .into_iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();

    // atoll's own labels go last, so a user label cannot disguise a container.
    let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
    labels.insert(LABEL_TASK_ID.into(), spec.task_id.clone());
    labels.insert(LABEL_APP_ID.into(), spec.app_id.clone());
    labels.insert(LABEL_APP_VERSION.into(), spec.app_version.clone());
    labels.insert(LABEL_MANAGED.into(), "true".into());
    for (key, value) in owner.labels() {
        labels.insert(key.into(), value.into());
    }

    let mut exposed_ports = Vec::new();
    let mut port_bindings: BTreeMap<String, Vec<EnginePortBinding>> = BTreeMap::new();
    if *network == DockerNetwork::Bridge {
        for port in &spec.ports {
            // As in Marathon, a missing or zero container port means the host port.
            let container_port = port
                .container_port
                .filter(|p| *p != 0)
                .unwrap_or(port.host_port);
            for protocol in protocols(&port.protocol) {
                let key = format!("{container_port}/{protocol}");
                if !exposed_ports.contains(&key) {
                    exposed_ports.push(key.clone());
                }
                port_bindings
                    .entry(key)
                    .or_default()
                    .push(EnginePortBinding {
                        // Published on the node's own address, which is where the catalog
                        // and DNS send clients.
                        host_ip: Some(publish_ip(&spec.host)),
                        host_port: Some(port.host_port.to_string()),
                    });
            }
        }
    }

    let (entrypoint, command) = match (cmd, args.is_empty()) {
        (Some(cmd), _) => (
            Some(vec!["/bin/sh".to_string(), "-c".to_string()]),
            Some(vec![cmd.clone()]),
        ),
        (None, false) => (None, Some(args.clone())),
        (None, true) => (None, None),
    };

    let host_config = HostConfig {
        network_mode: Some(
            match network {
                DockerNetwork::Bridge => "bridge",
                DockerNetwork::Host => "host",
            }
            .into(),
        ),
        port_bindings: (!port_bindings.is_empty()).then(|| {
            port_bindings
                .into_iter()
                .map(|(key, bindings)| (key, Some(bindings)))
                .collect()
        }),
        memory: (spec.mem_mb > 0.0).then_some((spec.mem_mb * 1024.0 * 1024.0) as i64),
        nano_cpus: (spec.cpus > 0.0).then_some((spec.cpus * 1e9) as i64),
        ..Default::default()
    };

    ContainerCreateBody {
        image: Some(image.clone()),
        env: Some(env),
        labels: Some(labels),
        exposed_ports: (!exposed_ports.is_empty()).then_some(exposed_ports),
        entrypoint,
        cmd: command,
        stop_timeout: i64::try_from(spec.stop_grace.as_secs()).ok(),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// The address bridge ports are published on: the node's address when it is an IP
/// address, else every address.
fn publish_ip(host: &str) -> String {
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => "0.0.0.0".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::{LABEL_NODE, LABEL_NODE_ID};
    use crate::PortBinding;
    use std::time::Duration;

    fn docker_spec(network: DockerNetwork, cmd: Option<&str>, args: &[&str]) -> TaskSpec {
        TaskSpec {
            task_id: "prod_web.instance-3-17".into(),
            app_id: "/prod/web".into(),
            app_version: "v1".into(),
            kind: TaskKind::Docker {
                image: "example/web:1.0".into(),
                network,
                cmd: cmd.map(String::from),
                args: args.iter().map(|a| a.to_string()).collect(),
                force_pull: false,
            },
            env: BTreeMap::from([("GREETING".to_string(), "hi".to_string())]),
            labels: BTreeMap::from([
                ("team".to_string(), "web".to_string()),
                (LABEL_TASK_ID.to_string(), "spoofed".to_string()),
            ]),
            ports: vec![
                PortBinding {
                    host_port: 31000,
                    container_port: Some(8080),
                    protocol: "tcp".into(),
                },
                PortBinding {
                    host_port: 31001,
                    container_port: Some(53),
                    protocol: "udp,tcp".into(),
                },
            ],
            cpus: 0.25,
            mem_mb: 64.0,
            host: "10.0.0.7".into(),
            stop_grace: Duration::from_secs(5),
        }
    }

    #[test]
    fn bridge_container_publishes_ports_and_carries_labels_and_limits() {
        let spec = docker_spec(DockerNetwork::Bridge, None, &["serve", "--port=8080"]);
        let owner = Owner::of(&crate::DockerConfig {
            node: Some("node-1".into()),
            node_id: Some("0f3a".into()),
            ..Default::default()
        });
        let body = container_body(&spec, &owner);
        let labels = body.labels.clone().unwrap_or_default();
        assert_eq!(labels[LABEL_TASK_ID], "prod_web.instance-3-17");
        assert_eq!(labels[LABEL_APP_ID], "/prod/web");
        assert_eq!(labels[LABEL_APP_VERSION], "v1");
        assert_eq!(labels[LABEL_MANAGED], "true");
        assert_eq!(labels[LABEL_NODE], "node-1");
        assert_eq!(labels[LABEL_NODE_ID], "0f3a");
        assert_eq!(labels["team"], "web");
        assert_eq!(
            body.exposed_ports,
            Some(vec!["8080/tcp".into(), "53/udp".into(), "53/tcp".into()])
        );
        let host = body.host_config.unwrap_or_default();
        assert_eq!(host.network_mode.as_deref(), Some("bridge"));
        let bindings = host.port_bindings.unwrap_or_default();
        let binding = |key: &str| {
            bindings[key].as_ref().map(|b| {
                b.iter()
                    .map(|b| {
                        (
                            b.host_ip.clone().unwrap_or_default(),
                            b.host_port.clone().unwrap_or_default(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(
            binding("8080/tcp"),
            Some(vec![("10.0.0.7".into(), "31000".into())])
        );
        assert_eq!(
            binding("53/udp"),
            Some(vec![("10.0.0.7".into(), "31001".into())])
        );
        assert_eq!(host.memory, Some(64 * 1024 * 1024));
        assert_eq!(host.nano_cpus, Some(250_000_000));
        assert_eq!(body.entrypoint, None);
        assert_eq!(body.cmd, Some(vec!["serve".into(), "--port=8080".into()]));
        let env = body.env.unwrap_or_default();
        for expected in [
            "PORT0=31000",
            "PORT_8080=31000",
            "PORT_53=31001",
            "GREETING=hi",
        ] {
            assert!(
                env.contains(&expected.to_string()),
                "{expected} missing from {env:?}"
            );
        }
    }

    #[test]
    fn shell_command_overrides_the_entrypoint() {
        let spec = docker_spec(DockerNetwork::Host, Some("echo $PORT0"), &[]);
        let body = container_body(&spec, &Owner::default());
        assert_eq!(body.entrypoint, Some(vec!["/bin/sh".into(), "-c".into()]));
        assert_eq!(body.cmd, Some(vec!["echo $PORT0".into()]));
        let host = body.host_config.unwrap_or_default();
        assert_eq!(host.network_mode.as_deref(), Some("host"));
        assert_eq!(host.port_bindings, None);
        assert_eq!(body.exposed_ports, None);
        assert!(!body.labels.unwrap_or_default().contains_key(LABEL_NODE));
    }

    #[test]
    fn specs_that_cannot_run_are_rejected() {
        let both = docker_spec(DockerNetwork::Bridge, Some("x"), &["y"]);
        assert!(validate(&both, Some("x"), &["y".into()]).is_err());
        let fine = docker_spec(DockerNetwork::Bridge, None, &[]);
        assert!(validate(&fine, None, &[]).is_ok());
        let mut bad_protocol = docker_spec(DockerNetwork::Host, None, &[]);
        bad_protocol.ports[0].protocol = "sctp".into();
        assert!(validate(&bad_protocol, None, &[]).is_err());
    }

    #[test]
    fn bridge_port_without_container_port_maps_to_the_same_port() {
        let mut spec = docker_spec(DockerNetwork::Bridge, None, &[]);
        spec.ports[0].container_port = Some(0);
        spec.ports[1].container_port = None;
        let body = container_body(&spec, &Owner::default());
        assert_eq!(
            body.exposed_ports,
            Some(vec![
                "31000/tcp".into(),
                "31001/udp".into(),
                "31001/tcp".into()
            ])
        );
    }
}
