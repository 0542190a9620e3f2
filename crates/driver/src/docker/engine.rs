//! Small helpers over the engine client: listing atoll's containers and the others, removing
//! one, and reading the engine's errors.

use super::owner::Owner;
use super::{LABEL_MANAGED, LABEL_TASK_ID};
use bollard::errors::Error as EngineError;
use bollard::models::ContainerSummary;
use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions};
use bollard::Docker;
use std::collections::HashMap;
use std::time::Duration;

/// How long to wait for a removal someone else started.
const REMOVAL_WAIT: Duration = Duration::from_secs(30);

fn managed_filters(owner: &Owner, task_id: Option<&str>) -> HashMap<String, Vec<String>> {
    let mut labels = owner.filters();
    if let Some(task_id) = task_id {
        labels.push(format!("{LABEL_TASK_ID}={task_id}"));
    }
    HashMap::from([("label".to_string(), labels)])
}

pub(super) async fn list_managed(
    docker: &Docker,
    owner: &Owner,
    all: bool,
    task_id: Option<&str>,
) -> Result<Vec<ContainerSummary>, EngineError> {
    let options = ListContainersOptions {
        all,
        filters: Some(managed_filters(owner, task_id)),
        ..Default::default()
    };
    let containers = docker.list_containers(Some(options)).await?;
    Ok(containers
        .into_iter()
        .filter(|container| container.labels.as_ref().is_some_and(|l| owner.owns(l)))
        .collect())
}

/// The ids of the running containers without `atoll.managed=true`, whichever node's.
pub(super) async fn list_unmanaged(docker: &Docker) -> Result<Vec<String>, EngineError> {
    let running = docker
        .list_containers(Some(ListContainersOptions::default()))
        .await?;
    Ok(running
        .into_iter()
        .filter(|container| !is_managed(container.labels.as_ref()))
        .filter_map(|container| container.id)
        .collect())
}

/// Whether these labels (or event attributes, which include the labels) mark a container
/// started by atoll, on any node.
pub(super) fn is_managed(labels: Option<&HashMap<String, String>>) -> bool {
    labels
        .and_then(|labels| labels.get(LABEL_MANAGED))
        .is_some_and(|value| value == "true")
}

/// Force-removes a container with its anonymous volumes and returns once it is gone. One
/// already gone is fine; one being removed by someone else (the event follower, after an
/// exit) is waited for.
pub(super) async fn remove_container(docker: &Docker, id: &str) -> Result<(), EngineError> {
    let options = RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => Ok(()),
        Err(e) if status_code(&e) == Some(404) => Ok(()),
        Err(e) if status_code(&e) == Some(409) && engine_message(&e).contains("in progress") => {
            let deadline = tokio::time::Instant::now() + REMOVAL_WAIT;
            while tokio::time::Instant::now() < deadline {
                match docker.inspect_container(id, None).await {
                    Err(gone) if status_code(&gone) == Some(404) => return Ok(()),
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            Err(e)
        }
        Err(e) => Err(e),
    }
}

pub(super) fn status_code(error: &EngineError) -> Option<u16> {
    match error {
        EngineError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The engine's own words when it gave some, else the client error.
pub(super) fn engine_message(error: &EngineError) -> String {
    match error {
        EngineError::DockerResponseServerError { message, .. } => message.trim().to_string(),
        other => other.to_string(),
    }
}
