//! Marathon's REST API (`/v2/...`, `/ping`), over the workload tables.

use crate::extract::Path;
use atoll_state::groups;
use atoll_state::{Allocation, AppSpec, Command, Deployment, DeploymentAction, State as Tables};
use atoll_workload::now_rfc3339;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::selector::{Embed, LabelSelector};
use super::wire::{
    absolute_app_id, app_json, parse_app, parse_app_put, task_json, MarathonApp, PutAppError,
};
use crate::acl::{Authz, PERMISSION_DENIED};
use crate::query::Query;
use crate::ApiContext;
use atoll_acl::{Access, Resource, Segment};

/// A Marathon-shaped error: `{"message": ...}` with a status.
pub struct MarathonError {
    status: StatusCode,
    body: Value,
}

impl MarathonError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        MarathonError {
            status,
            body: json!({ "message": message.into() }),
        }
    }

    /// 403: the caller's token does not allow this.
    pub(crate) fn denied() -> Self {
        Self::new(StatusCode::FORBIDDEN, PERMISSION_DENIED)
    }

    fn app_missing(id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("App '{id}' does not exist"))
    }
}

impl IntoResponse for MarathonError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

type Result<T> = std::result::Result<T, MarathonError>;

/// `Ok` when the caller may do `access` to the app (or group) `id` (`app`/`app_prefix`
/// rules), else Marathon's 403.
pub(crate) fn require_app(authz: &Authz, id: &str, access: Access) -> Result<()> {
    if authz.allows(Resource::Named(Segment::App, id), access) {
        Ok(())
    } else {
        Err(MarathonError::denied())
    }
}

/// `Ok` when the caller may do `access` to every app a deployment touches.
fn require_deployment(authz: &Authz, deployment: &Deployment, access: Access) -> Result<()> {
    deployment
        .affected_apps()
        .iter()
        .try_for_each(|app| require_app(authz, app, access))
}

/// Routes of the Marathon API.
pub fn routes() -> Router<ApiContext> {
    Router::new()
        .route(
            "/ping",
            get(|| async { ([(header::CONTENT_TYPE, "text/plain")], "pong") }),
        )
        .route("/v2/info", get(info))
        .route("/v2/leader", get(leader).delete(abdicate))
        .route(
            "/v2/eventSubscriptions",
            get(super::subscriptions::list)
                .post(super::subscriptions::subscribe)
                .delete(super::subscriptions::unsubscribe),
        )
        .route("/v2/apps", get(list_apps).post(create_app))
        .route("/v2/apps/", get(list_apps).post(create_app))
        .route(
            "/v2/apps/{*rest}",
            get(app_get).put(app_put).delete(app_delete).post(app_post),
        )
        .route("/v2/tasks", get(all_tasks))
        .route("/v2/tasks/delete", post(delete_tasks))
        .route("/v2/deployments", get(deployments))
        .route(
            "/v2/deployments/{id}",
            get(deployment).delete(cancel_deployment),
        )
        .route("/v2/queue", get(queue))
        .route(
            "/v2/groups",
            get(super::groups::get_root)
                .post(super::groups::post_root)
                .put(super::groups::put_root)
                .delete(super::groups::delete_root),
        )
        .route(
            "/v2/groups/",
            get(super::groups::get_root)
                .post(super::groups::post_root)
                .put(super::groups::put_root)
                .delete(super::groups::delete_root),
        )
        .route(
            "/v2/groups/{*rest}",
            get(super::groups::get_group)
                .post(super::groups::post_group)
                .put(super::groups::put_group)
                .delete(super::groups::delete_group),
        )
        .route("/v2/events", get(super::events::stream))
}

/// Splits `/v2/apps/{rest}` into the app id and what follows it.
#[derive(Debug, PartialEq)]
enum AppPath {
    App(String),
    Versions(String),
    Version(String, String),
    Tasks(String),
    Task(String, String),
    Restart(String),
}

fn parse_app_path(rest: &str) -> AppPath {
    // One slash off each end, not all of them: `tasks/%2f` decodes to `tasks//`, an empty task
    // id (not found), and must not become `tasks` (every task of the app).
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let parts: Vec<&str> = rest.split('/').collect();
    let n = parts.len();
    let id = |upto: usize| absolute_app_id(&parts[..upto].join("/"));
    if n >= 2 && parts[n - 1] == "versions" {
        return AppPath::Versions(id(n - 1));
    }
    if n >= 3 && parts[n - 2] == "versions" {
        return AppPath::Version(id(n - 2), parts[n - 1].to_string());
    }
    if n >= 2 && parts[n - 1] == "tasks" {
        return AppPath::Tasks(id(n - 1));
    }
    if n >= 3 && parts[n - 2] == "tasks" {
        return AppPath::Task(id(n - 2), parts[n - 1].to_string());
    }
    if n >= 2 && parts[n - 1] == "restart" {
        return AppPath::Restart(id(n - 1));
    }
    AppPath::App(absolute_app_id(rest))
}

fn new_deployment_id() -> String {
    let v: u128 = rand::random();
    let hex = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

pub(super) fn deployment_for(
    app_id: &str,
    version: &str,
    action: &str,
    previous: Option<&AppSpec>,
) -> Deployment {
    Deployment {
        id: new_deployment_id(),
        app_id: app_id.to_string(),
        version: version.to_string(),
        action: action.to_string(),
        create_index: 0,
        previous: previous.map(|app| Box::new(app.clone())),
        steps: Vec::new(),
    }
}

/// Host address of a node, for task JSON.
/// Marathon's `host` of a node: its address, or its name once it left the catalog.
fn host_of(state: &Tables, node: &str) -> String {
    state
        .nodes
        .get(node)
        .map(|n| n.address.clone())
        .unwrap_or_else(|| node.to_string())
}

/// Marathon's `host` of a task: where its host ports are published (see
/// `Tables::task_address`), or its node's name once the node left the catalog.
fn task_host(state: &Tables, task: &Allocation) -> String {
    state
        .task_address(task)
        .map_or_else(|| task.node.clone(), str::to_string)
}

fn health_of(state: &Tables, task: &Allocation, app: Option<&AppSpec>) -> Vec<bool> {
    match app {
        Some(app)
            if !app.health_checks.is_empty() && task.state == atoll_state::TaskState::Running =>
        {
            vec![state.task_healthy(task)]
        }
        _ => Vec::new(),
    }
}

fn render_task(state: &Tables, task: &Allocation) -> Value {
    let app = state.workload.apps.get(&task.app_id);
    task_json(task, &task_host(state, task), &health_of(state, task, app))
}

/// What `GET /v2/apps` always embeds, whatever `?embed=` asks (Marathon 1.x).
pub(super) const LIST_EMBED: Embed = Embed {
    counts: true,
    deployments: true,
    tasks: false,
    last_task_failure: false,
    task_stats: false,
    readiness: false,
};

pub(super) fn render_app(state: &Tables, app: &AppSpec, embed: Embed) -> Value {
    let app = &MarathonApp::stored(state, app);
    let tasks: Vec<Allocation> = state.workload.tasks_of(&app.id).cloned().collect();
    let deployments: Vec<Value> = state
        .workload
        .deployments
        .values()
        .filter(|d| d.affects(&app.id))
        .map(|d| json!({ "id": d.id }))
        .collect();
    let failure = state
        .workload
        .last_failures
        .get(&app.id)
        .filter(|_| embed.last_task_failure)
        .map(|f| {
            json!({
                "appId": app.id,
                "host": host_of(state, &f.host),
                "message": f.message,
                "state": f.state.mesos_name(),
                "taskId": f.task_id,
                "timestamp": f.timestamp,
                "version": f.version,
            })
        });
    let hosts = |task: &Allocation| task_host(state, task);
    let healthy = |task: &Allocation| -> Option<bool> {
        if app.health_checks.is_empty() {
            None
        } else {
            Some(state.task_healthy(task))
        }
    };
    let mut rendered = app_json(app, &tasks, &hosts, &healthy, &deployments, failure, false);
    if let Value::Object(out) = &mut rendered {
        if !embed.counts {
            for key in [
                "tasksStaged",
                "tasksRunning",
                "tasksHealthy",
                "tasksUnhealthy",
            ] {
                out.remove(key);
            }
        }
        if !embed.deployments {
            out.remove("deployments");
        }
        if embed.tasks {
            let live = tasks.iter().filter(|t| !t.state.is_terminal());
            out.insert(
                "tasks".into(),
                Value::Array(live.map(|t| render_task(state, t)).collect()),
            );
        }
        if embed.task_stats {
            out.insert("taskStats".into(), task_stats(state, app, &tasks));
        }
        if embed.readiness {
            // atoll has no readiness checks, so there are never results.
            out.insert("readinessCheckResults".into(), json!([]));
        }
    }
    rendered
}

/// Marathon's `taskStats`: counts of the live tasks in total, of those running the current
/// version (also those started since the last scaling, which atoll does not tell apart) and
/// of those on an older one; a group without tasks is left out, as Marathon does. Lifetimes
/// are not reported.
fn task_stats(state: &Tables, app: &AppSpec, tasks: &[Allocation]) -> Value {
    let live: Vec<&Allocation> = tasks.iter().filter(|t| !t.state.is_terminal()).collect();
    let stats = |group: &[&Allocation]| -> Option<Value> {
        if group.is_empty() {
            return None;
        }
        let count =
            |wanted: &dyn Fn(&Allocation) -> bool| group.iter().filter(|t| wanted(t)).count();
        let checked = !app.health_checks.is_empty();
        let running = |t: &Allocation| t.state == atoll_state::TaskState::Running;
        Some(json!({ "stats": { "counts": {
            "staged": count(&|t| matches!(t.state, atoll_state::TaskState::Staging | atoll_state::TaskState::Starting)),
            "running": count(&running),
            "healthy": count(&|t| checked && running(t) && state.task_healthy(t)),
            "unhealthy": count(&|t| checked && running(t) && !state.task_healthy(t)),
        } } }))
    };
    let (latest, outdated): (Vec<&Allocation>, Vec<&Allocation>) =
        live.iter().partition(|t| t.app_version == app.version);
    let mut out = serde_json::Map::new();
    for (name, group) in [
        ("startedAfterLastScaling", &latest),
        ("withLatestConfig", &latest),
        ("withOutdatedConfig", &outdated),
        ("totalSummary", &live),
    ] {
        if let Some(value) = stats(group) {
            out.insert(name.into(), value);
        }
    }
    Value::Object(out)
}

/// `GET /v2/info`: Marathon's sections, filled from this node. Marathon's settings that
/// belong to Mesos or ZooKeeper, which atoll does not use, are `null` where nothing here
/// corresponds; the ZooKeeper section describes the Raft servers that hold the state.
async fn info(State(context): State<ApiContext>) -> Json<Value> {
    let leader = leader_http(&context);
    // This node's host port range (`--port-range`) when it runs tasks, else the default.
    let (port_min, port_max) = context
        .store()
        .read(|s| s.workload.compute.get(context.node()).map(|c| c.port_range))
        .unwrap_or(atoll_workload::node::DEFAULT_PORT_RANGE);
    let callbacks: Vec<String> = context
        .store()
        .read(|s| s.workload.subscriptions.keys().cloned().collect());
    let servers: Vec<String> = context.cluster().peers();
    let http_port = context
        .cluster()
        .member()
        .http_addr
        .parse::<std::net::SocketAddr>()
        .map(|a| Value::from(a.port()))
        .unwrap_or(Value::Null);
    Json(json!({
        "name": "marathon",
        "version": "1.10.0",
        "buildref": format!("atoll {}", context.version()),
        "elected": context.cluster().is_leader(),
        "leader": leader,
        "frameworkId": format!("atoll-{}", context.datacenter()),
        "marathon_config": {
            // No Mesos master: atoll places tasks on its own compute nodes.
            "master": null,
            "failover_timeout": 604800,
            "framework_name": "marathon",
            // Every server can lead: leadership is decided by Raft.
            "ha": true,
            "checkpoint": true,
            "local_port_min": port_min,
            "local_port_max": port_max,
            "executor": "//cmd",
            "hostname": context.node(),
            "webui_url": null,
            "mesos_role": null,
            "mesos_user": null,
            "mesos_leader_ui_url": null,
            "task_launch_timeout": 300000,
            "task_reservation_timeout": 20000,
            "reconciliation_initial_delay": 15000,
            "reconciliation_interval": 600000,
            // Writes reach the leader through the cluster's RPC, not an HTTP proxy.
            "leader_proxy_connection_timeout_ms": null,
            "leader_proxy_read_timeout_ms": null,
            "maintenance_mode": false,
            "features": [],
        },
        "zookeeper_config": {
            // No ZooKeeper: the state lives in the Raft log of these servers.
            "zk": null,
            "zk_hosts": servers.join(","),
            "zk_path": null,
            "zk_state": null,
            "zk_timeout": null,
            "zk_session_timeout": null,
            "zk_max_versions": atoll_state::VERSIONS_KEPT,
        },
        "http_config": { "http_port": http_port, "https_port": null },
        "event_subscriber": { "type": "http_callback", "http_endpoints": callbacks },
    }))
}

fn leader_http(context: &ApiContext) -> Option<String> {
    context.cluster().leader_member().map(|m| m.http_addr)
}

async fn leader(State(context): State<ApiContext>) -> Result<Json<Value>> {
    match leader_http(&context) {
        Some(leader) => Ok(Json(json!({ "leader": leader }))),
        None => Err(MarathonError::new(
            StatusCode::NOT_FOUND,
            "There is no leader",
        )),
    }
}

/// `DELETE /v2/leader`: the leader gives up leadership and a new one is elected. Asked of
/// another node, the request is sent on to the leader (a redirect keeping the method).
async fn abdicate(State(context): State<ApiContext>, authz: Authz) -> Result<Response> {
    if !authz.allows(Resource::Global(atoll_acl::Global::Operator), Access::Write) {
        return Err(MarathonError::denied());
    }
    let no_leader = || MarathonError::new(StatusCode::NOT_FOUND, "There is no leader");
    if !context.cluster().is_leader() {
        let leader = leader_http(&context).ok_or_else(no_leader)?;
        return Ok((
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, format!("http://{leader}/v2/leader"))],
        )
            .into_response());
    }
    match context.cluster().step_down().await {
        Ok(()) => Ok(Json(json!({ "message": "Leadership abdicated" })).into_response()),
        Err(atoll_cluster::ClusterError::NoLeader) => Err(no_leader()),
        Err(e) => Err(MarathonError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        )),
    }
}

/// Case-insensitive substring, as Marathon's `?id=` and `?cmd=` filters match.
fn contains_ignoring_case(text: &str, part: &str) -> bool {
    text.to_lowercase().contains(&part.to_lowercase())
}

async fn list_apps(
    State(context): State<ApiContext>,
    authz: Authz,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>> {
    let query = Query::parse(raw.as_deref());
    let embed = Embed::parse(query.all("embed"));
    let embed = Embed {
        counts: true,
        deployments: true,
        ..embed
    };
    let filter_id = query.get("id").map(str::to_string);
    let filter_cmd = query.get("cmd").map(str::to_string);
    let selector = query
        .get("label")
        .map(LabelSelector::parse)
        .transpose()
        .map_err(|e| MarathonError::new(StatusCode::BAD_REQUEST, format!("label: {e}")))?;
    let apps = context.store().read(|state| {
        state
            .workload
            .apps
            .values()
            .filter(|a| {
                filter_id
                    .as_deref()
                    .is_none_or(|f| contains_ignoring_case(&a.id, f))
            })
            .filter(|a| {
                filter_cmd.as_deref().is_none_or(|f| {
                    let cmd = MarathonApp::stored(state, a).definition["cmd"].clone();
                    cmd.as_str().is_some_and(|c| contains_ignoring_case(c, f))
                })
            })
            .filter(|a| selector.as_ref().is_none_or(|s| s.matches(&a.labels)))
            .filter(|a| authz.reads_app(&a.id))
            .map(|a| render_app(state, a, embed))
            .collect::<Vec<_>>()
    });
    Ok(Json(json!({ "apps": apps })))
}

pub(super) fn validation_error(error: super::wire::ValidationError) -> MarathonError {
    MarathonError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        body: error.to_json(),
    }
}

pub(super) async fn write(context: &ApiContext, command: Command) -> Result<()> {
    crate::execute::write(context, command).await?;
    Ok(())
}

async fn create_app(
    State(context): State<ApiContext>,
    authz: Authz,
    body: Bytes,
) -> Result<Response> {
    let app = parse_app(&body, &now_rfc3339(), None).map_err(validation_error)?;
    require_app(&authz, &app.id, Access::Write)?;
    let deployment = deployment_for(&app.id, &app.version, "StartApplication", None);
    let id = app.id.clone();
    // Whether the id is free is decided where the write is applied, so of two concurrent
    // creates of one id exactly one gets 201 and the other 409.
    write(
        &context,
        Command::CreateApp {
            app: Box::new(app.spec),
            deployment: Some(deployment),
            definition: app.definition,
        },
    )
    .await?;
    let rendered = context
        .store()
        .read(|s| {
            s.workload
                .apps
                .get(&id)
                .map(|a| render_app(s, a, LIST_EMBED))
        })
        .unwrap_or(Value::Null);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v2/apps{id}"))],
        Json(rendered),
    )
        .into_response())
}

/// Every read under `/v2/apps/{id}` needs `app:read` on the id.
fn app_path_id(path: &AppPath) -> &str {
    match path {
        AppPath::App(id)
        | AppPath::Versions(id)
        | AppPath::Version(id, _)
        | AppPath::Tasks(id)
        | AppPath::Task(id, _)
        | AppPath::Restart(id) => id,
    }
}

async fn app_get(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(rest): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    let _ = raw;
    let path = parse_app_path(&rest);
    require_app(&authz, app_path_id(&path), Access::Read)?;
    match path {
        AppPath::App(id) => context
            .store()
            .read(|s| {
                s.workload
                    .apps
                    .get(&id)
                    .map(|a| render_app(s, a, Embed::ALL))
            })
            .map(|app| Json(json!({ "app": app })).into_response())
            .ok_or_else(|| MarathonError::app_missing(&id)),
        AppPath::Versions(id) => context
            .store()
            .read(|s| {
                s.workload.history.get(&id).map(|h| {
                    h.iter()
                        .rev()
                        .map(|a| a.version.clone())
                        .collect::<Vec<_>>()
                })
            })
            .map(|versions| Json(json!({ "versions": versions })).into_response())
            .ok_or_else(|| MarathonError::app_missing(&id)),
        AppPath::Version(id, version) => context
            .store()
            .read(|s| {
                s.workload.history.get(&id).and_then(|h| {
                    h.iter()
                        .find(|a| a.version == version)
                        .map(|a| MarathonApp::stored(s, a).definition)
                })
            })
            .map(|definition| Json(definition).into_response())
            .ok_or_else(|| {
                MarathonError::new(
                    StatusCode::NOT_FOUND,
                    format!("App '{id}' does not exist in version {version}"),
                )
            }),
        AppPath::Tasks(id) => context
            .store()
            .read(|s| {
                s.workload.apps.contains_key(&id).then(|| {
                    s.workload
                        .tasks_of(&id)
                        .map(|t| render_task(s, t))
                        .collect::<Vec<_>>()
                })
            })
            .map(|tasks| Json(json!({ "tasks": tasks })).into_response())
            .ok_or_else(|| MarathonError::app_missing(&id)),
        AppPath::Task(id, task) => context
            .store()
            .read(|s| {
                s.workload
                    .tasks
                    .get(&task)
                    .filter(|t| t.app_id == id)
                    .map(|t| render_task(s, t))
            })
            .map(|task| Json(json!({ "task": task })).into_response())
            .ok_or_else(|| {
                MarathonError::new(
                    StatusCode::NOT_FOUND,
                    format!("Task '{task}' does not exist"),
                )
            }),
        AppPath::Restart(id) => Err(MarathonError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("use POST /v2/apps{id}/restart"),
        )),
    }
}

fn locked_by(state: &Tables, app_id: &str) -> Vec<String> {
    state
        .workload
        .deployments
        .values()
        .filter(|d| d.affects(app_id))
        .map(|d| d.id.clone())
        .collect()
}

pub(super) fn locked_error(ids: Vec<String>) -> MarathonError {
    let first = ids.first().cloned().unwrap_or_default();
    MarathonError {
        status: StatusCode::CONFLICT,
        body: json!({
            "message": format!("App is locked by one or more deployments. Override with the option '?force=true'. View details at '/v2/deployments/{first}'."),
            "deployments": ids.iter().map(|id| json!({ "id": id })).collect::<Vec<_>>(),
        }),
    }
}

pub(super) fn deployment_answer(status: StatusCode, version: &str, deployment: &str) -> Response {
    (
        status,
        Json(json!({ "version": version, "deploymentId": deployment })),
    )
        .into_response()
}

async fn app_put(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(rest): Path<String>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response> {
    let AppPath::App(id) = parse_app_path(&rest) else {
        return Err(MarathonError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "PUT is only for /v2/apps/{id}",
        ));
    };
    require_app(&authz, &id, Access::Write)?;
    let query = Query::parse(raw.as_deref());
    let force = query.boolean("force");
    let (base, locks) = context
        .store()
        .read(|s| (MarathonApp::current(s, &id), locked_by(s, &id)));
    if !locks.is_empty() && !force {
        return Err(locked_error(locks));
    }
    if let Some(version) = rollback_version(&body)? {
        return roll_back(&context, &id, &version, base.as_ref()).await;
    }
    let (app, action) =
        parse_app_put(&id, &body, &now_rfc3339(), base.as_ref()).map_err(|e| match e {
            PutAppError::Json(message) => MarathonError {
                status: StatusCode::BAD_REQUEST,
                body: json!({ "message": message }),
            },
            PutAppError::Invalid(error) => validation_error(error),
        })?;
    let deployment = deployment_for(&app.id, &app.version, action, base.as_deref());
    let (version, deployment_id) = (app.version.clone(), deployment.id.clone());
    let created = base.is_none();
    write(
        &context,
        Command::PutApp {
            app: Box::new(app.spec),
            deployment: Some(deployment),
            definition: app.definition,
        },
    )
    .await?;
    Ok(deployment_answer(
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        &version,
        &deployment_id,
    ))
}

/// The version a `PUT /v2/apps/{id}` body asks to go back to: `{"version": "..."}`, which
/// Marathon allows beside `id` only.
fn rollback_version(body: &[u8]) -> Result<Option<String>> {
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return Ok(None);
    };
    let Some(version) = fields.get("version").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let invalid = |message: &str| MarathonError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        body: json!({
            "message": "Object is not valid",
            "details": [{ "path": "/version", "errors": [message] }],
        }),
    };
    if fields.keys().any(|k| k != "version" && k != "id") {
        return Err(invalid(
            "The 'version' field may only be combined with the 'id' field.",
        ));
    }
    match version.as_str() {
        Some(version) => Ok(Some(version.to_string())),
        None => Err(invalid("version must be a timestamp string")),
    }
}

/// Deploys a kept version of an app again, as a new version with the old definition.
async fn roll_back(
    context: &ApiContext,
    id: &str,
    version: &str,
    base: Option<&MarathonApp>,
) -> Result<Response> {
    let Some(base) = base else {
        return Err(MarathonError::app_missing(id));
    };
    let kept = context.store().read(|s| {
        s.workload
            .history
            .get(id)
            .and_then(|h| h.iter().find(|a| a.version == version))
            .map(|a| MarathonApp::stored(s, a))
    });
    let Some(app) = kept else {
        return Err(MarathonError::new(
            StatusCode::NOT_FOUND,
            format!("App '{id}' does not exist in version {version}"),
        ));
    };
    redeploy(context, app, base).await
}

async fn app_delete(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(rest): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    let query = Query::parse(raw.as_deref());
    let path = parse_app_path(&rest);
    require_app(&authz, app_path_id(&path), Access::Write)?;
    match path {
        AppPath::App(id) => {
            let locks = context.store().read(|s| locked_by(s, &id));
            if !locks.is_empty() && !query.boolean("force") {
                return Err(locked_error(locks));
            }
            let version = now_rfc3339();
            let deployment = deployment_for(&id, &version, "StopApplication", None);
            let deployment_id = deployment.id.clone();
            write(
                &context,
                Command::DeleteApp {
                    app_id: id,
                    deployment: Some(deployment),
                },
            )
            .await?;
            Ok(deployment_answer(StatusCode::OK, &version, &deployment_id))
        }
        AppPath::Task(id, task) => {
            kill_tasks(&context, &id, vec![task], query.boolean("scale")).await
        }
        AppPath::Tasks(id) => {
            let host = query.get("host").map(str::to_string);
            let (exists, ids): (bool, Vec<String>) = context.store().read(|s| {
                let ids = s
                    .workload
                    .tasks_of(&id)
                    .filter(|t| {
                        host.as_deref().is_none_or(|h| {
                            task_host(s, t) == h || host_of(s, &t.node) == h || t.node == h
                        })
                    })
                    .map(|t| t.id.clone())
                    .collect();
                (s.workload.apps.contains_key(&id), ids)
            });
            if !exists {
                return Err(MarathonError::app_missing(&id));
            }
            if ids.is_empty() {
                return Ok(Json(json!({ "tasks": [] })).into_response());
            }
            kill_tasks(&context, &id, ids, query.boolean("scale")).await
        }
        _ => Err(MarathonError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "DELETE is not supported here",
        )),
    }
}

async fn kill_tasks(
    context: &ApiContext,
    app_id: &str,
    ids: Vec<String>,
    scale: bool,
) -> Result<Response> {
    let (exists, rendered) = context.store().read(|s| {
        (
            s.workload.apps.contains_key(app_id),
            ids.iter()
                .filter_map(|id| s.workload.tasks.get(id).map(|t| render_task(s, t)))
                .collect::<Vec<_>>(),
        )
    });
    if !exists {
        return Err(MarathonError::app_missing(app_id));
    }
    if rendered.is_empty() {
        return Err(MarathonError::new(
            StatusCode::NOT_FOUND,
            format!("Task '{}' does not exist", ids.join(",")),
        ));
    }
    write(
        context,
        Command::StopTasks {
            ids: ids.clone(),
            scale,
            reason: "killed on request".into(),
        },
    )
    .await?;
    if scale {
        let version = context
            .store()
            .read(|s| s.workload.apps.get(app_id).map(|a| a.version.clone()))
            .unwrap_or_default();
        return Ok(deployment_answer(
            StatusCode::OK,
            &version,
            &new_deployment_id(),
        ));
    }
    if rendered.len() == 1 && ids.len() == 1 {
        return Ok(Json(json!({ "task": rendered[0] })).into_response());
    }
    Ok(Json(json!({ "tasks": rendered })).into_response())
}

async fn app_post(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(rest): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    let AppPath::Restart(id) = parse_app_path(&rest) else {
        return Err(MarathonError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "POST is only for /v2/apps and /v2/apps/{id}/restart",
        ));
    };
    require_app(&authz, &id, Access::Write)?;
    let query = Query::parse(raw.as_deref());
    let (base, locks) = context
        .store()
        .read(|s| (MarathonApp::current(s, &id), locked_by(s, &id)));
    let Some(app) = base else {
        return Err(MarathonError::app_missing(&id));
    };
    if !locks.is_empty() && !query.boolean("force") {
        return Err(locked_error(locks));
    }
    // A restart is a new version of the same definition: a rolling replacement.
    let before = app.spec.clone();
    redeploy(&context, app, &before).await
}

/// Deploys `app` (a definition the app had: its current one for a restart, a kept one for a
/// rollback) as a new version replacing `before`, with a rolling restart.
async fn redeploy(
    context: &ApiContext,
    mut app: MarathonApp,
    before: &AppSpec,
) -> Result<Response> {
    app.version = now_rfc3339();
    app.definition["version"] = Value::String(app.version.clone());
    let deployment = deployment_for(&app.id, &app.version, "RestartApplication", Some(before));
    let (version, deployment_id) = (app.version.clone(), deployment.id.clone());
    write(
        context,
        Command::PutApp {
            app: Box::new(app.spec),
            deployment: Some(deployment),
            definition: app.definition,
        },
    )
    .await?;
    Ok(deployment_answer(StatusCode::OK, &version, &deployment_id))
}

async fn all_tasks(State(context): State<ApiContext>, authz: Authz) -> Json<Value> {
    let tasks = context.store().read(|s| {
        s.workload
            .tasks
            .values()
            .filter(|t| authz.reads_app(&t.app_id))
            .map(|t| render_task(s, t))
            .collect::<Vec<_>>()
    });
    Json(json!({ "tasks": tasks }))
}

/// `POST /v2/tasks/delete`: `app:write` on the app of every task named.
async fn delete_tasks(
    State(context): State<ApiContext>,
    authz: Authz,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response> {
    let query = Query::parse(raw.as_deref());
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| MarathonError::new(StatusCode::BAD_REQUEST, format!("Invalid JSON: {e}")))?;
    let Some(ids) = value.get("ids").and_then(Value::as_array) else {
        return Err(MarathonError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body: json!({ "message": "Object is not valid", "details": [{ "path": "/ids", "errors": ["ids must be a list of task ids"] }] }),
        });
    };
    let ids: Vec<String> = ids
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    let apps: std::collections::BTreeSet<String> = context.store().read(|s| {
        ids.iter()
            .filter_map(|id| s.workload.tasks.get(id).map(|t| t.app_id.clone()))
            .collect()
    });
    for app in &apps {
        require_app(&authz, app, Access::Write)?;
    }
    write(
        &context,
        Command::StopTasks {
            ids,
            scale: query.boolean("scale"),
            reason: "killed on request".into(),
        },
    )
    .await?;
    Ok(
        Json(json!({ "version": now_rfc3339(), "deploymentId": new_deployment_id() }))
            .into_response(),
    )
}

/// A deployment as Marathon shows it: its steps in order, each with the actions that run
/// together, and the step it is at (the first one not done; the last once all are).
fn render_deployment(state: &Tables, deployment: &Deployment) -> Value {
    let steps = deployment.plan();
    let healthy = |task: &Allocation| state.task_healthy(task);
    let current =
        groups::current_step(&state.workload, &steps, &healthy).min(steps.len().saturating_sub(1));
    let actions = |step: &[DeploymentAction]| {
        step.iter()
            .map(|a| json!({ "action": a.action, "app": a.app_id }))
            .collect::<Vec<_>>()
    };
    json!({
        "id": deployment.id,
        "version": deployment.version,
        "affectedApps": deployment.affected_apps(),
        "affectedPods": [],
        "steps": steps.iter().map(|s| json!({ "actions": actions(s) })).collect::<Vec<_>>(),
        "currentActions": steps.get(current).map(|s| actions(s)).unwrap_or_default(),
        "currentStep": current + 1,
        "totalSteps": steps.len(),
    })
}

/// `GET /v2/deployments`: those whose every app the caller may read.
async fn deployments(State(context): State<ApiContext>, authz: Authz) -> Json<Value> {
    let list = context.store().read(|s| {
        s.workload
            .deployments
            .values()
            .filter(|d| require_deployment(&authz, d, Access::Read).is_ok())
            .map(|d| render_deployment(s, d))
            .collect::<Vec<_>>()
    });
    Json(Value::Array(list))
}

async fn deployment(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    context
        .store()
        .read(|s| {
            s.workload.deployments.get(&id).map(|d| {
                require_deployment(&authz, d, Access::Read)?;
                Ok::<_, MarathonError>(render_deployment(s, d))
            })
        })
        .transpose()?
        .map(Json)
        .ok_or_else(|| {
            MarathonError::new(
                StatusCode::NOT_FOUND,
                format!("DeploymentPlan {id} does not exist"),
            )
        })
}

/// `DELETE /v2/deployments/{id}`: as Marathon, cancels and rolls back (the app as it was
/// before, or no app if the deployment created it) with a new deployment; with `force=true`
/// only stops tracking it. A deployment that deletes an app cannot be rolled back.
async fn cancel_deployment(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    let Some(deployment) = context
        .store()
        .read(|s| s.workload.deployments.get(&id).cloned())
    else {
        return Err(MarathonError::new(
            StatusCode::NOT_FOUND,
            format!("DeploymentPlan {id} does not exist"),
        ));
    };
    require_deployment(&authz, &deployment, Access::Write)?;
    let force = Query::parse(raw.as_deref()).boolean("force");
    // A deployment of several apps (a group's) is not rolled back: cancelling it stops
    // tracking it, which also releases the apps its later steps held.
    if force || deployment.action == "StopApplication" || !deployment.steps.is_empty() {
        write(&context, Command::FinishDeployment { id: id.clone() }).await?;
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "version": now_rfc3339(), "deploymentId": id })),
        )
            .into_response());
    }
    let (current, previous_definition) = context.store().read(|s| {
        let current = s.workload.apps.get(&deployment.app_id).cloned();
        let previous = deployment
            .previous
            .as_ref()
            .map(|previous| MarathonApp::stored(s, previous).definition);
        (current, previous)
    });
    let (command, version, rollback_id) = match (deployment.previous, current) {
        (Some(previous), current) => {
            let rollback = deployment_for(
                &previous.id,
                &previous.version,
                "RestartApplication",
                current.as_ref(),
            );
            let answer = (previous.version.clone(), rollback.id.clone());
            let command = Command::PutApp {
                app: previous,
                deployment: Some(rollback),
                definition: previous_definition.unwrap_or_default(),
            };
            (command, answer.0, answer.1)
        }
        (None, _) => {
            let version = now_rfc3339();
            let rollback = deployment_for(&deployment.app_id, &version, "StopApplication", None);
            let rollback_id = rollback.id.clone();
            let command = Command::DeleteApp {
                app_id: deployment.app_id.clone(),
                deployment: Some(rollback),
            };
            (command, version, rollback_id)
        }
    };
    write(&context, command).await?;
    Ok(deployment_answer(StatusCode::OK, &version, &rollback_id))
}

async fn queue(State(context): State<ApiContext>, authz: Authz) -> Json<Value> {
    let items = context.store().read(|s| {
        s.workload
            .queue
            .iter()
            .filter(|(app_id, _)| authz.reads_app(app_id))
            .filter_map(|(app_id, waiting)| {
                let app = s.workload.apps.get(app_id)?;
                Some(json!({
                    "app": render_app(s, app, LIST_EMBED),
                    "count": waiting.count,
                    "delay": { "timeLeftSeconds": 0, "overdue": true },
                    "since": app.version,
                    "processedOffersSummary": {
                        "unusedOffersCount": 0,
                        "rejectSummaryLastOffers": waiting.reasons,
                    },
                    "lastUnusedOffers": [],
                }))
            })
            .collect::<Vec<_>>()
    });
    Json(json!({ "queue": items }))
}

#[cfg(test)]
mod tests {
    use super::{parse_app_path, AppPath};

    #[test]
    fn an_encoded_slash_after_tasks_is_an_empty_task_id_not_every_task() {
        assert_eq!(
            parse_app_path("/prod/web/tasks//"),
            AppPath::Task("/prod/web".into(), String::new())
        );
        assert_eq!(
            parse_app_path("prod/web/tasks/"),
            AppPath::Tasks("/prod/web".into())
        );
        assert_eq!(
            parse_app_path("/prod/web/"),
            AppPath::App("/prod/web".into())
        );
        assert_eq!(
            parse_app_path("prod/web/tasks/t1"),
            AppPath::Task("/prod/web".into(), "t1".into())
        );
    }
}
