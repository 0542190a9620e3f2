//! Containers started outside atoll (`docker run -l SERVICE_NAME=x -p ...`) registered in the
//! catalog the way Registrator did: from the docker driver's container events, read as
//! external services by [`ExternalContainers`], with a full resync on start and whenever
//! events may have been missed. Their services carry the container id in their
//! metadata, so a resync after a restart also removes the ones whose container is gone.

use std::collections::{BTreeMap, BTreeSet};

use atoll_cluster::{Cluster, ClusterHandle};
use atoll_driver::registrator::{ExternalContainers, ExternalEvent, ExternalService};
use atoll_driver::DockerDriver;
use atoll_state::{Command, Deregistration, Registration, ServiceSpec};
use tokio::sync::broadcast::error::RecvError;

/// Metadata key naming the container a service was registered for.
pub const CONTAINER_META: &str = "external_container_id";

/// Where this node's external containers are: the node's own address, and the address of
/// its engine's host, where they publish their ports (the same unless the node is itself a
/// container of that host).
#[derive(Debug, Clone)]
pub struct Addresses {
    /// The node's address, which its services need not name.
    pub node: String,
    /// The engine's host, where ports published on every address are reached.
    pub engine: String,
}

/// Keeps this node's external containers registered for as long as the process lives.
pub async fn run(cluster: ClusterHandle, docker: DockerDriver, node: String, address: Addresses) {
    let mut externals = ExternalContainers::follow(&docker);
    resync(cluster.as_ref(), &mut externals, &node, &address).await;
    loop {
        match externals.next().await {
            Ok(ExternalEvent::Started(service)) => {
                register(cluster.as_ref(), &service, &node, &address).await
            }
            Ok(ExternalEvent::Stopped { container_id }) => {
                let ids = registered_for(cluster.as_ref(), &node, Some(&container_id));
                deregister(cluster.as_ref(), &node, ids).await;
            }
            Err(RecvError::Lagged(_)) => {
                resync(cluster.as_ref(), &mut externals, &node, &address).await
            }
            Err(RecvError::Closed) => return,
        }
    }
}

async fn resync(
    cluster: &dyn Cluster,
    externals: &mut ExternalContainers,
    node: &str,
    address: &Addresses,
) {
    let containers = match externals.list().await {
        Ok(containers) => containers,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list external containers");
            return;
        }
    };
    let live: BTreeSet<&str> = containers.iter().map(|c| c.container_id.as_str()).collect();
    let stale: Vec<String> = cluster.store().read(|state| {
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
    deregister(cluster, node, stale).await;
    for container in &containers {
        register(cluster, container, node, address).await;
    }
}

fn registered_for(cluster: &dyn Cluster, node: &str, container: Option<&str>) -> Vec<String> {
    cluster.store().read(|state| {
        state
            .services_on_node(node)
            .filter(|s| s.meta.get(CONTAINER_META).map(String::as_str) == container)
            .map(|s| s.id.clone())
            .collect()
    })
}

async fn register(
    cluster: &dyn Cluster,
    container: &ExternalService,
    node: &str,
    address: &Addresses,
) {
    for registration in container.registrations(node, &address.engine) {
        let mut meta: BTreeMap<String, String> = registration.meta.clone();
        meta.insert(CONTAINER_META.to_string(), container.container_id.clone());
        let command = Command::Register(Box::new(Registration {
            node: node.to_string(),
            skip_node_update: true,
            service: Some(ServiceSpec {
                id: registration.id.clone(),
                name: registration.name.clone(),
                tags: registration.tags.clone(),
                address: if registration.address == address.node {
                    String::new()
                } else {
                    registration.address.clone()
                },
                port: registration.port,
                meta,
                enable_tag_override: false,
                tagged_addresses: Default::default(),
            }),
            ..Default::default()
        }));
        match cluster.write(command).await {
            Ok(_) => {
                tracing::info!(service = %registration.name, container = %container.container_name, "registered external container")
            }
            Err(e) => tracing::warn!(error = %e, "cannot register external container"),
        }
    }
}

async fn deregister(cluster: &dyn Cluster, node: &str, ids: Vec<String>) {
    for id in ids {
        let command = Command::Deregister(Deregistration {
            node: node.to_string(),
            service_id: Some(id),
            check_id: None,
        });
        if let Err(e) = cluster.write(command).await {
            tracing::warn!(error = %e, "cannot deregister external container");
        }
    }
}
