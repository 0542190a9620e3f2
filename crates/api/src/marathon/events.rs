//! Marathon's event bus as Server-Sent Events (`GET /v2/events?event_type=...`).
//!
//! One feed task per node turns changes of the workload tables into Marathon events
//! (`status_update_event`, `deployment_info`, `deployment_success`,
//! `health_status_changed_event`, `api_post_event`, `subscribe_event`,
//! `unsubscribe_event`) and broadcasts them to every stream. Each stream starts with
//! its own `event_stream_attached`.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::time::Duration;

use atoll_state::{State as Tables, Table, TaskState};
use atoll_workload::now_rfc3339;
use axum::extract::{RawQuery, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};

use crate::acl::Authz;
use crate::query::Query;
use crate::ApiContext;

/// Events kept for slow subscribers before they miss some.
const BUS_CAPACITY: usize = 1024;

/// The event bus of one node.
pub type EventBus = broadcast::Sender<Value>;

/// A new, empty bus.
pub fn bus() -> EventBus {
    broadcast::channel(BUS_CAPACITY).0
}

#[derive(Default)]
struct Seen {
    tasks: BTreeMap<String, (TaskState, Option<bool>)>,
    deployments: BTreeSet<String>,
    versions: BTreeMap<String, String>,
    subscriptions: BTreeMap<String, String>,
}

fn snapshot(state: &Tables) -> Seen {
    let mut seen = Seen::default();
    for task in state.workload.tasks.values() {
        let checked = state
            .workload
            .apps
            .get(&task.app_id)
            .is_some_and(|a| !a.health_checks.is_empty());
        let health =
            (checked && task.state == TaskState::Running).then(|| state.task_healthy(task));
        seen.tasks.insert(task.id.clone(), (task.state, health));
    }
    seen.deployments = state.workload.deployments.keys().cloned().collect();
    seen.versions = state
        .workload
        .apps
        .values()
        .map(|a| (a.id.clone(), a.version.clone()))
        .collect();
    seen.subscriptions = state
        .workload
        .subscriptions
        .iter()
        .map(|(url, at)| (url.clone(), at.clone()))
        .collect();
    seen
}

fn diff(
    state: &Tables,
    before: &Seen,
    after: &Seen,
    removed_tasks: &BTreeMap<String, Value>,
) -> Vec<Value> {
    let at = now_rfc3339();
    let mut events = Vec::new();
    for (url, registered) in &after.subscriptions {
        if !before.subscriptions.contains_key(url) {
            events.push(super::subscriptions::subscribed(url, registered));
        }
    }
    for url in before.subscriptions.keys() {
        if !after.subscriptions.contains_key(url) {
            events.push(super::subscriptions::unsubscribed(url, &at));
        }
    }
    for (app_id, version) in &after.versions {
        if before.versions.get(app_id) != Some(version) {
            if let Some(app) = state.workload.apps.get(app_id) {
                events.push(json!({
                    "eventType": "api_post_event",
                    "timestamp": at,
                    "clientIp": null,
                    "uri": format!("/v2/apps{app_id}"),
                    "appDefinition": super::wire::MarathonApp::stored(state, app).definition,
                }));
            }
        }
    }
    for id in after.deployments.difference(&before.deployments) {
        if let Some(d) = state.workload.deployments.get(id) {
            let action = json!({ "action": d.action, "app": d.app_id });
            events.push(json!({
                "eventType": "deployment_info",
                "timestamp": at,
                "plan": { "id": d.id, "version": d.version, "steps": [{ "actions": [action.clone()] }], "original": {}, "target": {} },
                "currentStep": { "actions": [action] },
            }));
        }
    }
    for id in before.deployments.difference(&after.deployments) {
        events.push(json!({ "eventType": "deployment_success", "timestamp": at, "id": id, "plan": { "id": id } }));
    }
    for (id, (state_now, health_now)) in &after.tasks {
        let Some(task) = state.workload.tasks.get(id) else {
            continue;
        };
        let host = state.task_address(task).unwrap_or_default().to_string();
        let previous = before.tasks.get(id);
        if previous.map(|p| p.0) != Some(*state_now) {
            events.push(json!({
                "eventType": "status_update_event",
                "timestamp": at,
                "slaveId": task.node,
                "taskId": task.id,
                "taskStatus": state_now.mesos_name(),
                "message": task.message,
                "appId": task.app_id,
                "host": host,
                "ipAddresses": [{ "ipAddress": host, "protocol": "IPv4" }],
                "ports": task.ports,
                "version": task.app_version,
            }));
        }
        if let Some(alive) = health_now {
            if previous.and_then(|p| p.1) != Some(*alive) {
                events.push(json!({
                    "eventType": "health_status_changed_event",
                    "timestamp": at,
                    "appId": task.app_id,
                    "taskId": task.id,
                    "instanceId": task.id,
                    "version": task.app_version,
                    "alive": alive,
                }));
            }
        }
    }
    for (id, event) in removed_tasks {
        if before.tasks.contains_key(id) && !after.tasks.contains_key(id) {
            events.push(event.clone());
        }
    }
    events
}

/// Feeds the bus from the state for as long as the process lives.
pub async fn feed(context: ApiContext) {
    let store = context.store().clone();
    let mut workload = store.watch(Table::Workload);
    let mut catalog = store.watch(Table::Catalog);
    let mut seen = store.read(snapshot);
    // What each task looked like, to report its end after its row is gone.
    let mut last_known: BTreeMap<String, Value> = BTreeMap::new();
    loop {
        tokio::select! {
            changed = workload.changed() => if changed.is_err() { return },
            changed = catalog.changed() => if changed.is_err() { return },
        }
        let (events, now, known) = store.read(|state| {
            let now = snapshot(state);
            let mut ended = BTreeMap::new();
            for (id, template) in &last_known {
                if !state.workload.tasks.contains_key(id) {
                    let mut event = template.clone();
                    let failed = state
                        .workload
                        .last_failures
                        .values()
                        .find(|f| &f.task_id == id);
                    event["taskStatus"] = json!(failed
                        .map(|f| f.state.mesos_name())
                        .unwrap_or("TASK_KILLED"));
                    if let Some(f) = failed {
                        event["message"] = json!(f.message);
                    }
                    event["timestamp"] = json!(now_rfc3339());
                    ended.insert(id.clone(), event);
                }
            }
            let events = diff(state, &seen, &now, &ended);
            let known: BTreeMap<String, Value> = state
                .workload
                .tasks
                .values()
                .map(|task| {
                    let host = state
                        .nodes
                        .get(&task.node)
                        .map(|n| n.address.clone())
                        .unwrap_or_default();
                    (
                        task.id.clone(),
                        json!({
                            "eventType": "status_update_event",
                            "slaveId": task.node,
                            "taskId": task.id,
                            "message": task.message,
                            "appId": task.app_id,
                            "host": host,
                            "ipAddresses": [{ "ipAddress": host, "protocol": "IPv4" }],
                            "ports": task.ports,
                            "version": task.app_version,
                        }),
                    )
                })
                .collect();
            (events, now, known)
        });
        seen = now;
        last_known = known;
        for event in events {
            // No subscriber is fine: events are not stored.
            let _ = context.events().send(event);
        }
    }
}

/// The first event of every stream, as Marathon sends it to a client that attaches: a
/// client that reads state and then listens learns from it that nothing after this point
/// is missed, and when it attached again after losing the stream.
fn attached() -> Value {
    json!({
        "eventType": "event_stream_attached",
        "timestamp": now_rfc3339(),
        "remoteAddress": null,
    })
}

/// The apps an event is about: its `appId`, its `appDefinition`'s id and the apps of a
/// deployment's plan.
fn apps_of(event: &Value) -> Vec<&str> {
    let mut apps: Vec<&str> = Vec::new();
    apps.extend(event.get("appId").and_then(Value::as_str));
    apps.extend(event.pointer("/appDefinition/id").and_then(Value::as_str));
    fn actions(at: Option<&Value>) -> Vec<&str> {
        at.and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|a| a.get("app").and_then(Value::as_str))
            .collect()
    }
    if let Some(steps) = event.pointer("/plan/steps").and_then(Value::as_array) {
        for step in steps {
            apps.extend(actions(step.get("actions")));
        }
    }
    apps.extend(actions(event.pointer("/currentStep/actions")));
    apps
}

/// `GET /v2/events`: the events of the apps the caller may read (`app:read`); events about
/// no app pass.
pub async fn stream(
    State(context): State<ApiContext>,
    authz: Authz,
    RawQuery(raw): RawQuery,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let query = Query::parse(raw.as_deref());
    let wanted: BTreeSet<String> = query
        .all("event_type")
        .into_iter()
        .map(str::to_string)
        .collect();
    // Subscribed before the attached event is made, so nothing sent after it is missed.
    let bus = BroadcastStream::new(context.events().subscribe()).filter_map(|item| item.ok());
    let events = tokio_stream::once(attached())
        .chain(bus)
        .filter_map(move |event| {
            let kind = event
                .get("eventType")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if !wanted.is_empty() && !wanted.contains(&kind) {
                return None;
            }
            if !apps_of(&event).iter().all(|app| authz.reads_app(app)) {
                return None;
            }
            Some(Ok(Event::default().event(kind).data(event.to_string())))
        });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_names_the_apps_of_its_task_definition_or_plan() {
        let status = json!({ "eventType": "status_update_event", "appId": "/prod/web" });
        assert_eq!(apps_of(&status), ["/prod/web"]);
        let posted = json!({ "eventType": "api_post_event", "appDefinition": { "id": "/dev/x" } });
        assert_eq!(apps_of(&posted), ["/dev/x"]);
        let action = |app: &str| json!({ "action": "ScaleApplication", "app": app });
        let plan = json!({
            "eventType": "deployment_info",
            "plan": { "steps": [{ "actions": [action("/a"), action("/b")] }] },
            "currentStep": { "actions": [action("/a")] },
        });
        assert_eq!(apps_of(&plan), ["/a", "/b", "/a"]);
        assert!(apps_of(&attached()).is_empty());
    }
}
