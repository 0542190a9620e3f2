//! The docker driver: a task is a container, created and watched through the Docker Engine
//! API.
//!
//! Containers are named `atoll-<task id>` and labelled with [`LABEL_TASK_ID`],
//! [`LABEL_APP_ID`], [`LABEL_APP_VERSION`], [`LABEL_MANAGED`] (and [`LABEL_NODE`] and
//! [`LABEL_NODE_ID`] when the driver is given a node name and id), so a restarted agent finds
//! them with [`DockerDriver::running`]. A driver sees only the managed containers carrying
//! its own identity labels (`owner`), so agents sharing an engine keep to their own.
//!
//! One background task follows the engine's event stream. It reports the exit of managed
//! containers as [`TaskEvent::Exited`] and then removes them (the message carries the exit
//! code and the last lines of output). Every other container (one without
//! `atoll.managed=true`) is reported raw, as a [`ContainerEvent`] naming only the container:
//! what the container is, for example an external service for the [`crate::registrator`],
//! is for the subscriber to find out with [`DockerDriver::inspect_container`]. When the
//! stream ends (the daemon restarted, the socket broke) it reconnects with backoff,
//! resynchronises from the container list and reports what changed meanwhile, as events of
//! both kinds.
//!
//! The module is split along its concerns: the driver's API (here), the pure container
//! body (`body`), image pulls (`image`), commands run in a container (`command`), the
//! event follower (`events`), which containers are the driver's (`owner`) and small helpers
//! over the engine client (`engine`).

mod body;
mod command;
mod engine;
mod events;
mod image;
mod owner;

use crate::spec::{sanitize_task_id, DriverKind, RunningTask, TaskEvent};
use crate::{DriverError, TaskKind, TaskSpec, EVENT_CHANNEL_CAPACITY};
use bollard::models::{ContainerInspectResponse, ContainerSummary, ContainerSummaryStateEnum};
use bollard::query_parameters::{CreateContainerOptions, StopContainerOptions};
use bollard::Docker;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use body::{container_body, invalid, validate};
use engine::{engine_message, list_managed, list_unmanaged, remove_container, status_code};
use events::{events_since_now, EventFollower};
use owner::Owner;

/// Label holding the task id of a container started by atoll.
pub const LABEL_TASK_ID: &str = "atoll.task_id";
/// Label holding the app id of a container started by atoll.
pub const LABEL_APP_ID: &str = "atoll.app_id";
/// Label holding the app version of a container started by atoll.
pub const LABEL_APP_VERSION: &str = "atoll.app_version";
/// Label `atoll.managed=true` marks every container started by atoll.
pub const LABEL_MANAGED: &str = "atoll.managed";
/// Label naming the node whose agent started the container (set when configured).
pub const LABEL_NODE: &str = "atoll.node";
/// Label holding the id of the node whose agent started the container (set when configured):
/// unlike its name, unique to that node among every cluster sharing the engine.
pub const LABEL_NODE_ID: &str = "atoll.node_id";

/// A container not started by atoll (one without `atoll.managed=true`) started or stopped.
///
/// The events are raw: they name the container and nothing else, and are sent for every such
/// container once per start and once per stop (a stop only for a container reported started,
/// or running when the driver connected). atoll's own containers are reported as
/// [`TaskEvent`]s instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerEvent {
    /// The container started (or was found running after the event stream was down).
    Started {
        /// The engine's container id.
        id: String,
    },
    /// The container stopped (or was found gone after the event stream was down).
    Stopped {
        /// The engine's container id.
        id: String,
    },
}

/// How the docker driver reaches the engine and marks its containers.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// Engine address (`unix:///var/run/docker.sock`, `tcp://host:2375`); `None` uses the
    /// local default socket.
    pub host: Option<String>,
    /// When set, containers are also labelled `atoll.node=<node>` and the driver only sees
    /// containers with that label, so several agents can share one engine.
    pub node: Option<String>,
    /// When set, containers are also labelled `atoll.node_id=<id>` and the driver only sees
    /// containers with that label: nodes of different clusters may share a name and an
    /// engine (two compose deployments on one host), not an id.
    pub node_id: Option<String>,
    /// Upper bound for pulling one image.
    pub pull_timeout: Duration,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            host: None,
            node: None,
            node_id: None,
            pull_timeout: Duration::from_secs(600),
        }
    }
}

/// Runs tasks as Docker containers. Cheap to clone; the event follower stops when the last
/// clone is dropped.
#[derive(Clone)]
pub struct DockerDriver {
    inner: Arc<Inner>,
}

struct Inner {
    docker: Docker,
    config: DockerConfig,
    owner: Owner,
    task_events: broadcast::Sender<TaskEvent>,
    container_events: broadcast::Sender<ContainerEvent>,
    follower: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl DockerDriver {
    /// Connects to the engine (negotiating the API version down to the engine's) and starts
    /// following its events.
    pub async fn connect(config: DockerConfig) -> Result<Self, DriverError> {
        let docker = match &config.host {
            Some(host) => Docker::connect_with_host(host),
            None => Docker::connect_with_local_defaults(),
        }
        .map_err(|e| DriverError::docker("connecting", e))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| DriverError::docker("asking the engine for its API version", e))?;

        let owner = Owner::of(&config);
        let (task_events, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
        let (container_events, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
        let mut follower = EventFollower::new(
            docker.clone(),
            owner.clone(),
            task_events.clone(),
            container_events.clone(),
        );
        // The first sync happens before anyone can subscribe, so every change after
        // `connect` returns is reported as an event.
        let since = events_since_now();
        follower
            .resync(true)
            .await
            .map_err(|e| DriverError::docker("listing containers", e))?;
        let follower = tokio::spawn(follower.run(since));
        Ok(DockerDriver {
            inner: Arc::new(Inner {
                docker,
                config,
                owner,
                task_events,
                container_events,
                follower,
            }),
        })
    }

    /// The engine client, for callers that need more than the driver offers.
    pub fn engine(&self) -> &Docker {
        &self.inner.docker
    }

    /// The container name used for a task.
    pub fn container_name(task_id: &str) -> String {
        format!("atoll-{}", sanitize_task_id(task_id))
    }

    /// Subscribes to task events from now on.
    pub fn events(&self) -> broadcast::Receiver<TaskEvent> {
        self.inner.task_events.subscribe()
    }

    /// Subscribes to containers not started by atoll starting and stopping from now on.
    pub fn container_events(&self) -> broadcast::Receiver<ContainerEvent> {
        self.inner.container_events.subscribe()
    }

    /// The ids of the running containers not started by atoll (on any node), in the engine's
    /// order.
    pub async fn unmanaged_containers(&self) -> Result<Vec<String>, DriverError> {
        list_unmanaged(&self.inner.docker)
            .await
            .map_err(|e| DriverError::docker("listing containers", e))
    }

    /// What the engine knows about a container; `None` when there is no such container.
    pub async fn inspect_container(
        &self,
        id: &str,
    ) -> Result<Option<ContainerInspectResponse>, DriverError> {
        match self.inner.docker.inspect_container(id, None).await {
            Ok(info) => Ok(Some(info)),
            Err(e) if status_code(&e) == Some(404) => Ok(None),
            Err(e) => Err(DriverError::docker(format!("inspecting {id}"), e)),
        }
    }

    /// Starts a container for a docker task; returns once the engine has started it.
    ///
    /// The image is pulled when it is missing locally (or always, with `force_pull`); a
    /// leftover stopped container of the same task is removed first.
    pub async fn start(&self, spec: &TaskSpec) -> Result<(), DriverError> {
        let TaskKind::Docker {
            image,
            cmd,
            args,
            force_pull,
            ..
        } = &spec.kind
        else {
            return Err(invalid(spec, "the docker driver runs only docker tasks"));
        };
        validate(spec, cmd.as_deref(), args)?;
        self.ensure_image(image, *force_pull).await?;

        for existing in self.list_managed(true, Some(&spec.task_id)).await? {
            let Some(id) = existing.id else { continue };
            if existing.state == Some(ContainerSummaryStateEnum::RUNNING) {
                return Err(DriverError::AlreadyRunning {
                    task_id: spec.task_id.clone(),
                });
            }
            tracing::debug!(task_id = %spec.task_id, container = %id, "removing leftover container");
            remove_container(&self.inner.docker, &id)
                .await
                .map_err(|e| DriverError::docker("removing a leftover container", e))?;
        }

        let name = Self::container_name(&spec.task_id);
        let body = container_body(spec, &self.inner.owner);
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        let created = self
            .inner
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| DriverError::StartFailed {
                task_id: spec.task_id.clone(),
                reason: format!("creating container {name}: {}", engine_message(&e)),
            })?;
        if let Err(e) = self.inner.docker.start_container(&created.id, None).await {
            if let Err(cleanup) = remove_container(&self.inner.docker, &created.id).await {
                tracing::warn!(container = %created.id, error = %cleanup, "could not remove a container that failed to start");
            }
            return Err(DriverError::StartFailed {
                task_id: spec.task_id.clone(),
                reason: format!("starting container {name}: {}", engine_message(&e)),
            });
        }
        let short_id: String = created.id.chars().take(12).collect();
        tracing::info!(task_id = %spec.task_id, container = %short_id, %image, "docker task started");
        let _ = self.inner.task_events.send(TaskEvent::Running {
            task_id: spec.task_id.clone(),
            details: format!("container {short_id} ({name})"),
        });
        Ok(())
    }

    /// Stops a task's container (SIGTERM, SIGKILL after `grace`) and removes it. A task with
    /// no container is already stopped.
    pub async fn stop(&self, task_id: &str, grace: Duration) -> Result<(), DriverError> {
        let containers = self.list_managed(true, Some(task_id)).await?;
        if containers.is_empty() {
            tracing::debug!(task_id, "stop: no container for task");
        }
        for container in containers {
            let Some(id) = container.id else { continue };
            tracing::info!(task_id, container = %id, ?grace, "stopping docker task");
            // The engine answers a stop only after the grace period, which may outlast the
            // client's default request timeout.
            let patient = self
                .inner
                .docker
                .clone()
                .with_timeout(grace + Duration::from_secs(60));
            let options = StopContainerOptions {
                t: Some(i32::try_from(grace.as_secs_f64().ceil() as u64).unwrap_or(i32::MAX)),
                signal: None,
            };
            match patient.stop_container(&id, Some(options)).await {
                Ok(()) => {}
                Err(e) if matches!(status_code(&e), Some(304 | 404)) => {}
                Err(e) => return Err(DriverError::docker(format!("stopping {id}"), e)),
            }
            remove_container(&self.inner.docker, &id)
                .await
                .map_err(|e| DriverError::docker(format!("removing {id}"), e))?;
        }
        Ok(())
    }

    /// The managed containers running now, for re-adoption after an agent restart.
    pub async fn running(&self) -> Result<Vec<RunningTask>, DriverError> {
        let mut running: Vec<RunningTask> = self
            .list_managed(false, None)
            .await?
            .into_iter()
            .filter_map(|container| {
                let labels = container.labels?;
                let label = |key: &str| labels.get(key).cloned().unwrap_or_default();
                Some(RunningTask {
                    task_id: labels.get(LABEL_TASK_ID)?.clone(),
                    app_id: label(LABEL_APP_ID),
                    app_version: label(LABEL_APP_VERSION),
                    kind: DriverKind::Docker,
                })
            })
            .collect();
        running.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        Ok(running)
    }

    async fn list_managed(
        &self,
        all: bool,
        task_id: Option<&str>,
    ) -> Result<Vec<ContainerSummary>, DriverError> {
        list_managed(&self.inner.docker, &self.inner.owner, all, task_id)
            .await
            .map_err(|e| DriverError::docker("listing containers", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names_are_prefixed_and_sanitized() {
        assert_eq!(
            DockerDriver::container_name("prod_web.instance-3-17"),
            "atoll-prod_web.instance-3-17"
        );
        assert_eq!(DockerDriver::container_name("a/b"), "atoll-a_b");
    }
}
