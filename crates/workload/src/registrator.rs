//! Containers started outside atoll (`docker run -l SERVICE_NAME=x -p ...`) registered in the
//! catalog the way Registrator did: from Docker's event stream, with a full resync on start
//! and whenever events may have been missed. Their services carry the container id in their
//! metadata, so a resync after a restart also removes the ones whose container is gone.

use std::collections::{BTreeMap, BTreeSet};

use atoll_driver::registrator::{ExternalEvent, ExternalService};
use atoll_driver::DockerDriver;
use atoll_raft::Consensus;
use atoll_state::{Command, Deregistration, Registration, ServiceSpec};
use tokio::sync::broadcast::error::RecvError;

/// Metadata key naming the container a service was registered for.
pub const CONTAINER_META: &str = "external_container_id";

/// Keeps this node's external containers registered for as long as the process lives.
pub async fn run(consensus: Consensus, docker: DockerDriver, node: String, address: String) {
    let mut events = docker.external_events();
    resync(&consensus, &docker, &node, &address).await;
    loop {
        match events.recv().await {
            Ok(ExternalEvent::Started(service)) => {
                register(&consensus, &service, &node, &address).await
            }
            Ok(ExternalEvent::Stopped { container_id }) => {
                let ids = registered_for(&consensus, &node, Some(&container_id));
                deregister(&consensus, &node, ids).await;
            }
            Err(RecvError::Lagged(_)) => resync(&consensus, &docker, &node, &address).await,
            Err(RecvError::Closed) => return,
        }
    }
}

async fn resync(consensus: &Consensus, docker: &DockerDriver, node: &str, address: &str) {
    let containers = match docker.external_containers().await {
        Ok(containers) => containers,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list external containers");
            return;
        }
    };
    let live: BTreeSet<&str> = containers.iter().map(|c| c.container_id.as_str()).collect();
    let stale: Vec<String> = consensus.store().read(|state| {
        state
            .services_on_node(node)
            .filter(|s| {
                s.meta
                    .get(CONTAINER_META)
                    .is_some_and(|c| !live.contains(c.as_str()))
            })
            .map(|s| s.id.clone())
            .collect()
    });
    deregister(consensus, node, stale).await;
    for container in &containers {
        register(consensus, container, node, address).await;
    }
}

fn registered_for(consensus: &Consensus, node: &str, container: Option<&str>) -> Vec<String> {
    consensus.store().read(|state| {
        state
            .services_on_node(node)
            .filter(|s| s.meta.get(CONTAINER_META).map(String::as_str) == container)
            .map(|s| s.id.clone())
            .collect()
    })
}

async fn register(consensus: &Consensus, container: &ExternalService, node: &str, address: &str) {
    for registration in container.registrations(node, address) {
        let mut meta: BTreeMap<String, String> = registration.meta.clone();
        meta.insert(CONTAINER_META.to_string(), container.container_id.clone());
        let command = Command::Register(Box::new(Registration {
            node: node.to_string(),
            skip_node_update: true,
            service: Some(ServiceSpec {
                id: registration.id.clone(),
                name: registration.name.clone(),
                tags: registration.tags.clone(),
                address: if registration.address == address {
                    String::new()
                } else {
                    registration.address.clone()
                },
                port: registration.port,
                meta,
                enable_tag_override: false,
            }),
            ..Default::default()
        }));
        match consensus.write(command).await {
            Ok(_) => {
                tracing::info!(service = %registration.name, container = %container.container_name, "registered external container")
            }
            Err(e) => tracing::warn!(error = %e, "cannot register external container"),
        }
    }
}

async fn deregister(consensus: &Consensus, node: &str, ids: Vec<String>) {
    for id in ids {
        let command = Command::Deregister(Deregistration {
            node: node.to_string(),
            service_id: Some(id),
            check_id: None,
        });
        if let Err(e) = consensus.write(command).await {
            tracing::warn!(error = %e, "cannot deregister external container");
        }
    }
}
