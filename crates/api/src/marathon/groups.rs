//! Marathon's `/v2/groups`: the tree of groups and apps, created, changed, scaled and
//! removed in one deployment each. Groups a request creates are stored (so an empty one is
//! listed until deleted); groups above an app's id exist without a record. The state's
//! `PutGroup`/`DeleteGroup` check dependencies and order the deployment's steps by them.

use std::collections::BTreeSet;

use atoll_state::groups::{self, parent_of, DependencyGraph, ROOT_GROUP};
use atoll_state::{Command, GroupSpec, GroupUpdate, State as Tables};
use atoll_workload::now_rfc3339;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::routes::{
    deployment_answer, deployment_for, locked_error, render_app, require_app, validation_error,
    write, MarathonError, LIST_EMBED,
};
use super::wire::{absolute_app_id, parse_group, GroupBody, GroupRequest, MarathonApp};
use crate::acl::Authz;
use crate::extract::Path;
use crate::query::Query;
use crate::ApiContext;
use atoll_acl::Access;

type Result<T> = std::result::Result<T, MarathonError>;

/// The version of a group with nothing in it or below it (the root of an empty cluster):
/// fixed, so reading it twice gives the same answer.
const EMPTY_VERSION: &str = "1970-01-01T00:00:00.000Z";

/// The group id a path names (`prod/back/` → `/prod/back`, empty → the root).
fn group_id(rest: &str) -> String {
    let id = absolute_app_id(rest);
    if id == "/" {
        ROOT_GROUP.to_string()
    } else {
        id
    }
}

fn group_missing(id: &str) -> MarathonError {
    MarathonError::new(
        StatusCode::NOT_FOUND,
        format!("Group '{id}' does not exist"),
    )
}

/// Every group id: stored ones and those above an app or a stored group.
fn group_ids(state: &Tables) -> BTreeSet<String> {
    let tables = &state.workload;
    let mut ids: BTreeSet<String> = tables.groups.keys().cloned().collect();
    let below: Vec<&String> = tables.apps.keys().chain(tables.groups.keys()).collect();
    for id in below {
        ids.extend(groups::ancestors(id).map(str::to_string));
    }
    ids.insert(ROOT_GROUP.to_string());
    ids
}

/// Group `id` as Marathon renders it, with its apps and groups nested; `None` if no such
/// group exists.
fn render_group(state: &Tables, id: &str) -> Option<Value> {
    let ids = group_ids(state);
    ids.contains(id).then(|| render_node(state, &ids, id))
}

fn render_node(state: &Tables, ids: &BTreeSet<String>, id: &str) -> Value {
    let tables = &state.workload;
    let apps: Vec<Value> = tables
        .apps
        .values()
        .filter(|app| parent_of(&app.id) == id)
        .map(|app| render_app(state, app, LIST_EMBED))
        .collect();
    let children: Vec<Value> = ids
        .iter()
        .filter(|child| child.as_str() != ROOT_GROUP && parent_of(child) == id)
        .map(|child| render_node(state, ids, child))
        .collect();
    // A group's version is that of the latest change at or below it.
    let version = tables
        .groups
        .values()
        .filter(|g| groups::is_under(&g.id, id))
        .map(|g| g.version.as_str())
        .chain(
            tables
                .apps
                .values()
                .filter(|a| groups::is_under(&a.id, id))
                .map(|a| a.version.as_str()),
        )
        .max()
        .unwrap_or(EMPTY_VERSION)
        .to_string();
    let dependencies = tables
        .groups
        .get(id)
        .map(|g| g.dependencies.clone())
        .unwrap_or_default();
    json!({
        "id": id,
        "apps": apps,
        "groups": children,
        "pods": [],
        "dependencies": dependencies,
        "version": version,
    })
}

async fn read_group(context: &ApiContext, authz: &Authz, id: &str) -> Result<Response> {
    context
        .store()
        .read(|s| render_group(s, id))
        .map(|mut group| {
            without_unreadable_apps(authz, &mut group);
            Json(group).into_response()
        })
        .ok_or_else(|| group_missing(id))
}

/// Leaves out of a rendered group tree the apps the caller may not read (`app:read`); the
/// groups themselves stay, so the tree keeps its shape.
fn without_unreadable_apps(authz: &Authz, group: &mut Value) {
    if let Some(Value::Array(apps)) = group.get_mut("apps") {
        apps.retain(|app| app["id"].as_str().is_some_and(|id| authz.reads_app(id)));
    }
    if let Some(Value::Array(children)) = group.get_mut("groups") {
        for child in children {
            without_unreadable_apps(authz, child);
        }
    }
}

/// `Ok` when the caller may write the app or group `id` and every app below it.
fn require_all_under(authz: &Authz, state: &Tables, id: &str) -> Result<()> {
    require_app(authz, id, Access::Write)?;
    state
        .workload
        .apps
        .keys()
        .filter(|app| groups::is_under(app, id))
        .try_for_each(|app| require_app(authz, app, Access::Write))
}

/// `Ok` when the caller may write every group and app a group update touches, and
/// everything below what it removes.
fn require_update(authz: &Authz, state: &Tables, update: &GroupUpdate) -> Result<()> {
    require_app(authz, &update.id, Access::Write)?;
    for group in &update.groups {
        require_app(authz, &group.id, Access::Write)?;
    }
    for (app, _) in &update.apps {
        require_app(authz, &app.id, Access::Write)?;
    }
    for removed in &update.remove {
        require_all_under(authz, state, removed)?;
    }
    Ok(())
}

/// `GET /v2/groups`: the root group.
pub async fn get_root(State(context): State<ApiContext>, authz: Authz) -> Result<Response> {
    read_group(&context, &authz, ROOT_GROUP).await
}

/// `GET /v2/groups/{id}`.
pub async fn get_group(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(rest): Path<String>,
) -> Result<Response> {
    read_group(&context, &authz, &group_id(&rest)).await
}

/// Deployments in progress that change an app at or below group `id`.
fn locks_below(state: &Tables, id: &str) -> Vec<String> {
    state
        .workload
        .deployments
        .values()
        .filter(|d| {
            d.affected_apps()
                .iter()
                .any(|app| groups::is_under(app, id))
        })
        .map(|d| d.id.clone())
        .collect()
}

fn refuse_if_locked(context: &ApiContext, id: &str, raw: Option<&str>) -> Result<()> {
    let locks = context.store().read(|s| locks_below(s, id));
    if !locks.is_empty() && !Query::parse(raw).boolean("force") {
        return Err(locked_error(locks));
    }
    Ok(())
}

/// Writes a group change and answers with its version and deployment.
async fn deploy(
    context: &ApiContext,
    authz: &Authz,
    mut update: GroupUpdate,
    version: &str,
    status: StatusCode,
) -> Result<Response> {
    context
        .store()
        .read(|state| require_update(authz, state, &update))?;
    let deployment = deployment_for(&update.id, version, "UpdateGroup", None);
    let deployment_id = deployment.id.clone();
    update.deployment = Some(deployment);
    let created = update.create.then(|| update.id.clone());
    write(context, Command::PutGroup(Box::new(update))).await?;
    let mut answer = deployment_answer(status, version, &deployment_id);
    if let Some(id) = created {
        if let Ok(location) = format!("/v2/groups{id}").parse() {
            answer.headers_mut().insert(header::LOCATION, location);
        }
    }
    Ok(answer)
}

/// Every group and app of a definition, as written by `POST`.
fn flatten(body: GroupBody, version: &str, update: &mut GroupUpdate) {
    update.groups.push(GroupSpec {
        id: body.id,
        version: version.to_string(),
        dependencies: body.dependencies.unwrap_or_default(),
    });
    for app in body.apps.unwrap_or_default() {
        update.apps.push((app.spec, app.definition));
    }
    for group in body.groups.unwrap_or_default() {
        flatten(group, version, update);
    }
}

fn empty_update(id: &str, create: bool) -> GroupUpdate {
    GroupUpdate {
        id: id.to_string(),
        create,
        groups: Vec::new(),
        apps: Vec::new(),
        remove: Vec::new(),
        deployment: None,
    }
}

async fn create(context: &ApiContext, authz: &Authz, base: &str, body: &[u8]) -> Result<Response> {
    let version = now_rfc3339();
    let GroupRequest::Define(group) =
        parse_group(body, base, true, &version).map_err(validation_error)?
    else {
        return Err(MarathonError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "scaleBy needs an existing group",
        ));
    };
    let mut update = empty_update(&group.id, true);
    flatten(group, &version, &mut update);
    deploy(context, authz, update, &version, StatusCode::CREATED).await
}

/// `POST /v2/groups`: creates a group tree (409 if the group exists).
pub async fn post_root(
    State(context): State<ApiContext>,
    authz: Authz,
    body: Bytes,
) -> Result<Response> {
    create(&context, &authz, ROOT_GROUP, &body).await
}

/// `POST /v2/groups/{id}`: creates a group; a relative body id is taken from the path's.
pub async fn post_group(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(rest): Path<String>,
    body: Bytes,
) -> Result<Response> {
    create(&context, &authz, &group_id(&rest), &body).await
}

/// The change an update of group `body.id` makes to the current state: groups and apps
/// it lists are written (an app equal to the current one but for its count is a scale and
/// keeps its version; one equal in everything is left alone), those it leaves out of a
/// list it gives are removed, and lists it does not give keep what is there.
fn plan_update(state: &Tables, body: GroupBody, version: &str, update: &mut GroupUpdate) {
    let tables = &state.workload;
    let id = body.id.clone();
    let current = tables.groups.get(&id);
    update.groups.push(GroupSpec {
        id: id.clone(),
        version: version.to_string(),
        dependencies: body
            .dependencies
            .or_else(|| current.map(|g| g.dependencies.clone()))
            .unwrap_or_default(),
    });
    if let Some(apps) = body.apps {
        let listed: BTreeSet<String> = apps.iter().map(|a| a.id.clone()).collect();
        for app in tables.apps.keys() {
            if parent_of(app) == id && !listed.contains(app) {
                update.remove.push(app.clone());
            }
        }
        for app in apps {
            if let Some(app) = changed_app(state, app) {
                update.apps.push((app.spec, app.definition));
            }
        }
    }
    if let Some(children) = body.groups {
        let listed: BTreeSet<String> = children.iter().map(|g| g.id.clone()).collect();
        let ids = group_ids(state);
        for child in ids.iter().filter(|g| g.as_str() != ROOT_GROUP) {
            if parent_of(child) == id && !listed.contains(child) {
                update.remove.push(child.clone());
            }
        }
        for child in children {
            plan_update(state, child, version, update);
        }
    }
}

/// `app` as it should be written over the current app of its id, or `None` if it changes
/// nothing.
fn changed_app(state: &Tables, mut app: MarathonApp) -> Option<MarathonApp> {
    let Some(current) = state.workload.apps.get(&app.id) else {
        return Some(app);
    };
    let mut same = app.spec.clone();
    same.version = current.version.clone();
    same.instances = current.instances;
    if same != *current {
        return Some(app);
    }
    if app.instances == current.instances {
        return None;
    }
    // A scale: the running version stays.
    app.version = current.version.clone();
    app.definition["version"] = Value::String(current.version.clone());
    Some(app)
}

/// Every app below group `id` with its instances multiplied by `factor` (rounded up), as
/// a scale that keeps each app's version.
fn scaled(state: &Tables, id: &str, factor: f64) -> Vec<(atoll_state::AppSpec, Value)> {
    state
        .workload
        .apps
        .values()
        .filter(|app| groups::is_under(&app.id, id))
        .map(|app| {
            let mut app = MarathonApp::stored(state, app);
            let instances = (f64::from(app.instances) * factor).ceil();
            app.instances = instances.min(f64::from(u32::MAX)) as u32;
            app.definition["instances"] = Value::from(app.instances);
            (app.spec, app.definition)
        })
        .collect()
}

async fn update(
    context: &ApiContext,
    authz: &Authz,
    id: &str,
    raw: Option<&str>,
    body: &[u8],
) -> Result<Response> {
    refuse_if_locked(context, id, raw)?;
    let version = now_rfc3339();
    let request = parse_group(body, id, false, &version).map_err(validation_error)?;
    let (update, exists) = context.store().read(|state| {
        let exists = DependencyGraph::of(&state.workload).group_exists(id);
        let mut update = empty_update(id, false);
        match request {
            GroupRequest::ScaleBy(factor) => update.apps = scaled(state, id, factor),
            GroupRequest::Define(body) => plan_update(state, body, &version, &mut update),
        }
        (update, exists)
    });
    if !exists && update.groups.is_empty() {
        return Err(group_missing(id));
    }
    let status = if exists {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    deploy(context, authz, update, &version, status).await
}

/// `PUT /v2/groups`: changes the root group.
pub async fn put_root(
    State(context): State<ApiContext>,
    authz: Authz,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response> {
    update(&context, &authz, ROOT_GROUP, raw.as_deref(), &body).await
}

/// `PUT /v2/groups/{id}`: changes a group (creating it if it does not exist), or scales
/// it with `{"scaleBy": factor}`.
pub async fn put_group(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(rest): Path<String>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response> {
    update(&context, &authz, &group_id(&rest), raw.as_deref(), &body).await
}

async fn remove(
    context: &ApiContext,
    authz: &Authz,
    id: &str,
    raw: Option<&str>,
) -> Result<Response> {
    let exists = context
        .store()
        .read(|s| DependencyGraph::of(&s.workload).group_exists(id));
    if !exists {
        return Err(group_missing(id));
    }
    context.store().read(|s| require_all_under(authz, s, id))?;
    refuse_if_locked(context, id, raw)?;
    let version = now_rfc3339();
    let deployment = deployment_for(id, &version, "StopGroup", None);
    let deployment_id = deployment.id.clone();
    write(
        context,
        Command::DeleteGroup {
            id: id.to_string(),
            deployment: Some(deployment),
        },
    )
    .await?;
    Ok(deployment_answer(StatusCode::OK, &version, &deployment_id))
}

/// `DELETE /v2/groups`: removes every group and app.
pub async fn delete_root(
    State(context): State<ApiContext>,
    authz: Authz,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    remove(&context, &authz, ROOT_GROUP, raw.as_deref()).await
}

/// `DELETE /v2/groups/{id}`: removes the group and every app and group below it.
pub async fn delete_group(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(rest): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    remove(&context, &authz, &group_id(&rest), raw.as_deref()).await
}

#[cfg(test)]
mod tests {
    use super::group_id;

    #[test]
    fn a_path_names_a_group_or_the_root() {
        assert_eq!(group_id("prod/back/"), "/prod/back");
        assert_eq!(group_id("/prod"), "/prod");
        assert_eq!(group_id(""), "/");
    }
}
