//! The event follower: managed containers' exits as task events, and every other container's
//! starts and stops as raw container events.

use super::engine::{is_managed, list_managed, list_unmanaged, remove_container};
use super::owner::Owner;
use super::{ContainerEvent, LABEL_TASK_ID};
use crate::spec::TaskEvent;
use bollard::errors::Error as EngineError;
use bollard::models::{ContainerStateStatusEnum, ContainerSummaryStateEnum, EventMessage};
use bollard::query_parameters::{EventsOptions, LogsOptions};
use bollard::Docker;
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;

/// First wait before reconnecting to the event stream; doubles up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How many reported exits are remembered, so events replayed after a reconnect are not
/// reported twice.
const REMEMBERED_EXITS: usize = 1024;
/// Lines of output quoted in an exit message.
const EXIT_OUTPUT_LINES: &str = "3";
const EXIT_OUTPUT_MAX_CHARS: usize = 300;

/// Follows the engine's container events; the only owner of what it has seen running.
pub(super) struct EventFollower {
    docker: Docker,
    owner: Owner,
    task_events: broadcast::Sender<TaskEvent>,
    container_events: broadcast::Sender<ContainerEvent>,
    /// Managed containers seen running: container id to task id.
    tasks: HashMap<String, String>,
    /// The other containers seen running.
    unmanaged: Unmanaged,
    /// Containers whose exit was reported, oldest first.
    reported_exits: VecDeque<String>,
}

impl EventFollower {
    /// A follower that has seen nothing yet; its first [`EventFollower::resync`] fills it in.
    pub(super) fn new(
        docker: Docker,
        owner: Owner,
        task_events: broadcast::Sender<TaskEvent>,
        container_events: broadcast::Sender<ContainerEvent>,
    ) -> Self {
        EventFollower {
            docker,
            owner,
            task_events,
            container_events,
            tasks: HashMap::new(),
            unmanaged: Unmanaged::default(),
            reported_exits: VecDeque::new(),
        }
    }

    /// Follows the event stream from `since`; when it ends, waits, resynchronises from the
    /// container list and follows again from just before the resync.
    pub(super) async fn run(mut self, mut since: String) {
        let mut backoff = INITIAL_BACKOFF;
        loop {
            let options = EventsOptions {
                since: Some(since),
                until: None,
                filters: Some(HashMap::from([
                    ("type".to_string(), vec!["container".to_string()]),
                    (
                        "event".to_string(),
                        vec!["start".to_string(), "die".to_string()],
                    ),
                ])),
            };
            let docker = self.docker.clone();
            let mut stream = std::pin::pin!(docker.events(Some(options)));
            loop {
                match stream.next().await {
                    Some(Ok(event)) => {
                        backoff = INITIAL_BACKOFF;
                        self.handle(event).await;
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%error, "docker event stream failed, reconnecting");
                        break;
                    }
                    None => {
                        tracing::info!("docker event stream ended, reconnecting");
                        break;
                    }
                }
            }
            loop {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                since = events_since_now();
                match self.resync(false).await {
                    Ok(()) => break,
                    Err(error) => {
                        tracing::warn!(%error, ?backoff, "docker resync failed, retrying");
                    }
                }
            }
        }
    }

    async fn handle(&mut self, event: EventMessage) {
        let Some(actor) = event.actor else { return };
        let (Some(id), Some(attributes)) = (actor.id, actor.attributes) else {
            return;
        };
        let action = event.action.unwrap_or_default();
        if is_managed(Some(&attributes)) {
            if !self.owner.owns(&attributes) {
                return;
            }
            let Some(task_id) = attributes.get(LABEL_TASK_ID).cloned() else {
                return;
            };
            match action.as_str() {
                "start" if !self.reported_exits.contains(&id) => {
                    self.tasks.insert(id, task_id);
                }
                "die" if self.tasks.remove(&id).is_some() => {
                    let exit_code = attributes
                        .get("exitCode")
                        .and_then(|code| code.parse::<i64>().ok());
                    self.report_exit(&id, task_id, exit_code).await;
                }
                _ => {}
            }
            return;
        }
        let event = match action.as_str() {
            "start" => self.unmanaged.started(id),
            "die" => self.unmanaged.stopped(id),
            _ => None,
        };
        if let Some(event) = event {
            let _ = self.container_events.send(event);
        }
    }

    /// Compares the engine's containers with what was seen, reports the difference (except
    /// on the first sync, where callers read the state themselves) and removes exited
    /// managed containers.
    pub(super) async fn resync(&mut self, first_sync: bool) -> Result<(), EngineError> {
        let containers = list_managed(&self.docker, &self.owner, true, None).await?;
        let mut running = HashMap::new();
        let mut exited = Vec::new();
        for container in containers {
            let task_id = container
                .labels
                .as_ref()
                .and_then(|labels| labels.get(LABEL_TASK_ID).cloned());
            let (Some(id), Some(task_id)) = (container.id, task_id) else {
                continue;
            };
            match container.state {
                Some(
                    ContainerSummaryStateEnum::RUNNING
                    | ContainerSummaryStateEnum::RESTARTING
                    | ContainerSummaryStateEnum::PAUSED,
                ) => {
                    running.insert(id, task_id);
                }
                Some(ContainerSummaryStateEnum::EXITED | ContainerSummaryStateEnum::DEAD) => {
                    exited.push((id, task_id));
                }
                // Being created by a start in progress, or being removed.
                _ => {}
            }
        }
        let previously = std::mem::replace(&mut self.tasks, running);
        for (id, task_id) in exited {
            if !first_sync && previously.contains_key(&id) {
                self.report_exit(&id, task_id, None).await;
            } else if let Err(error) = remove_container(&self.docker, &id).await {
                tracing::warn!(container = %id, %error, "could not remove an exited container");
            }
        }
        for (id, task_id) in previously {
            if !self.tasks.contains_key(&id) && !self.reported_exits.contains(&id) {
                self.remember_exit(id);
                let _ = self.task_events.send(TaskEvent::Exited {
                    task_id,
                    success: false,
                    message: "container disappeared while the engine's event stream was down"
                        .into(),
                });
            }
        }

        let unmanaged = list_unmanaged(&self.docker).await?;
        for event in self.unmanaged.resynced(unmanaged) {
            if !first_sync {
                let _ = self.container_events.send(event);
            }
        }
        Ok(())
    }

    /// Reports a managed container's exit with what the engine knows about it, then
    /// removes the container.
    async fn report_exit(&mut self, id: &str, task_id: String, exit_code: Option<i64>) {
        self.remember_exit(id.to_string());
        let mut exit_code = exit_code;
        let mut notes = Vec::new();
        if let Ok(info) = self.docker.inspect_container(id, None).await {
            if let Some(state) = info.state {
                exit_code = exit_code.or(state.exit_code);
                if state.oom_killed == Some(true) {
                    notes.push("out of memory".to_string());
                }
                if let Some(error) = state.error.filter(|e| !e.is_empty()) {
                    notes.push(error);
                }
                if state.status == Some(ContainerStateStatusEnum::RUNNING) {
                    // Restarted by someone else since the event; it is not gone.
                    self.tasks.insert(id.to_string(), task_id);
                    return;
                }
            }
        }
        let mut message = match exit_code {
            Some(code) => format!("exited with code {code}"),
            None => "exited".to_string(),
        };
        if !notes.is_empty() {
            message.push_str(&format!(" ({})", notes.join("; ")));
        }
        let output = self.last_output(id).await;
        if !output.is_empty() {
            message.push_str(&format!("; last output: {output}"));
        }
        tracing::info!(%task_id, container = %id, %message, "docker task exited");
        let _ = self.task_events.send(TaskEvent::Exited {
            task_id,
            success: exit_code == Some(0),
            message,
        });
        if let Err(error) = remove_container(&self.docker, id).await {
            tracing::warn!(container = %id, %error, "could not remove an exited container");
        }
    }

    fn remember_exit(&mut self, id: String) {
        if self.reported_exits.len() >= REMEMBERED_EXITS {
            self.reported_exits.pop_front();
        }
        self.reported_exits.push_back(id);
    }

    /// The last few lines a container printed, on one line, shortened.
    async fn last_output(&self, id: &str) -> String {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: EXIT_OUTPUT_LINES.to_string(),
            ..Default::default()
        };
        let docker = self.docker.clone();
        let collect = async move {
            let mut text = String::new();
            let mut logs = std::pin::pin!(docker.logs(id, Some(options)));
            while let Some(Ok(chunk)) = logs.next().await {
                text.push_str(&String::from_utf8_lossy(chunk.as_ref()));
            }
            text
        };
        let text = tokio::time::timeout(Duration::from_secs(5), collect)
            .await
            .unwrap_or_default();
        let joined = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect::<Vec<_>>()
            .join(" | ");
        if joined.chars().count() > EXIT_OUTPUT_MAX_CHARS {
            let mut short: String = joined.chars().take(EXIT_OUTPUT_MAX_CHARS).collect();
            short.push('…');
            short
        } else {
            joined
        }
    }
}

/// The containers not started by atoll that were seen running, and the raw events their
/// starts and stops make: one per start and one per stop, whether seen in the event stream,
/// seen again in a stream replayed after a reconnect, or found by a resync.
#[derive(Debug, Default)]
struct Unmanaged {
    running: HashSet<String>,
}

impl Unmanaged {
    /// A `start` event; `None` when the container was already seen running.
    fn started(&mut self, id: String) -> Option<ContainerEvent> {
        self.running
            .insert(id.clone())
            .then_some(ContainerEvent::Started { id })
    }

    /// A `die` event; `None` when the container was not seen running.
    fn stopped(&mut self, id: String) -> Option<ContainerEvent> {
        self.running
            .remove(&id)
            .then_some(ContainerEvent::Stopped { id })
    }

    /// The containers running now, from the engine's list: what started and stopped since
    /// what was seen.
    fn resynced(&mut self, running: impl IntoIterator<Item = String>) -> Vec<ContainerEvent> {
        let running: HashSet<String> = running.into_iter().collect();
        let mut events: Vec<ContainerEvent> = self
            .running
            .difference(&running)
            .map(|id| ContainerEvent::Stopped { id: id.clone() })
            .collect();
        events.extend(
            running
                .difference(&self.running)
                .map(|id| ContainerEvent::Started { id: id.clone() }),
        );
        self.running = running;
        events
    }
}

/// The engine's `since` for a subscription made after a resync that starts now. It reaches
/// one second back, so nothing between listing and subscribing is lost (and a little clock
/// skew is absorbed); events seen twice are recognised by the follower.
pub(super) fn events_since_now() -> String {
    let since_epoch = (SystemTime::now() - Duration::from_secs(1))
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}.{:09}",
        since_epoch.as_secs(),
        since_epoch.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(id: &str) -> ContainerEvent {
        ContainerEvent::Started { id: id.into() }
    }

    fn stopped(id: &str) -> ContainerEvent {
        ContainerEvent::Stopped { id: id.into() }
    }

    #[test]
    fn each_start_and_stop_is_reported_once() {
        let mut seen = Unmanaged::default();
        assert_eq!(seen.started("a".into()), Some(started("a")));
        // Replayed after a reconnect.
        assert_eq!(seen.started("a".into()), None);
        assert_eq!(seen.stopped("a".into()), Some(stopped("a")));
        assert_eq!(seen.stopped("a".into()), None);
        // Never seen running (it was running before and gone by the first sync).
        assert_eq!(seen.stopped("b".into()), None);
        // Restarted: a new start after its stop.
        assert_eq!(seen.started("a".into()), Some(started("a")));
    }

    /// Events in a fixed order: stops first, then by id.
    fn sorted(mut events: Vec<ContainerEvent>) -> Vec<ContainerEvent> {
        events.sort_by_key(|event| match event {
            ContainerEvent::Stopped { id } => (0, id.clone()),
            ContainerEvent::Started { id } => (1, id.clone()),
        });
        events
    }

    #[test]
    fn a_resync_reports_what_changed_while_the_stream_was_down() {
        let mut seen = Unmanaged::default();
        assert_eq!(
            sorted(seen.resynced(["a".to_string(), "b".to_string()])),
            vec![started("a"), started("b")]
        );
        assert_eq!(seen.resynced(["b".to_string(), "a".to_string()]), vec![]);
        assert_eq!(
            sorted(seen.resynced(["b".to_string(), "c".to_string()])),
            vec![stopped("a"), started("c")]
        );
        // Events replayed from before the resync change nothing.
        assert_eq!(seen.started("c".into()), None);
        assert_eq!(seen.stopped("a".into()), None);
        assert_eq!(seen.stopped("b".into()), Some(stopped("b")));
    }
}
