//! Group definitions (`POST`/`PUT /v2/groups`): a tree of groups and apps, ids inside it
//! resolved against the group holding them, every problem reported with its path
//! (`/groups(0)/apps(1)/cpus`).

use atoll_state::groups::{parent_of, ROOT_GROUP};
use serde_json::{Map, Value};

use super::app::MarathonApp;
use super::error::ValidationError;
use super::id::resolve_id;
use super::parse::{json_object, parse_app, parse_dependencies};
use super::reader::{at, index, present, Reader};

/// One group of a definition. A field left out is `None`: `PUT` keeps what is there.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupBody {
    /// Absolute id.
    pub id: String,
    /// Absolute ids of the apps and groups its apps depend on.
    pub dependencies: Option<Vec<String>>,
    /// Its apps (direct children).
    pub apps: Option<Vec<MarathonApp>>,
    /// Its groups (direct children).
    pub groups: Option<Vec<GroupBody>>,
}

/// What a group request asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupRequest {
    /// Write this tree.
    Define(GroupBody),
    /// Scale every app below the group by a factor (`{"scaleBy": 1.5}`).
    ScaleBy(f64),
}

/// Parses a group definition for group `id` (the path's, or the root for `POST
/// /v2/groups`); apps in it get `version`. With `create`, the body's `id` names the new
/// group (resolved against `id`) and is required unless the path names it.
pub fn parse_group(
    body: &[u8],
    id: &str,
    create: bool,
    version: &str,
) -> Result<GroupRequest, ValidationError> {
    let object = json_object(body)?;
    let mut r = Reader::default();
    if let Some(factor) = present(object.get("scaleBy")) {
        return match factor.as_f64() {
            Some(f) if f.is_finite() && f >= 0.0 && !create => Ok(GroupRequest::ScaleBy(f)),
            Some(_) if create => Err(ValidationError::single(
                "/scaleBy",
                "only a PUT of an existing group scales it",
            )),
            _ => Err(ValidationError::single(
                "/scaleBy",
                "must be a non-negative number",
            )),
        };
    }
    if !create && present(object.get("version")).is_some() {
        return Err(ValidationError::single(
            "/version",
            "changing a group to an earlier version is not supported: group versions are not kept",
        ));
    }
    let id = match (r.string(object.get("id"), "/id"), create) {
        (Some(raw), true) => resolve_id(raw, id).unwrap_or_else(|message| {
            r.fail("/id", message);
            String::new()
        }),
        (None, true) if id == ROOT_GROUP => {
            if present(object.get("id")).is_none() {
                r.fail("/id", "is required");
            }
            String::new()
        }
        (Some(raw), false) => {
            // The path names the group; an id in the body must name the same one.
            if resolve_id(raw, parent_of(id)).ok().as_deref() != Some(id) && raw != id {
                r.fail(
                    "/id",
                    format!("'{raw}' is not the group the path names ('{id}')"),
                );
            }
            id.to_string()
        }
        (None, _) => id.to_string(),
    };
    let group = parse_node(&mut r, &object, "", &id, version);
    if r.problems.is_empty() {
        Ok(GroupRequest::Define(group))
    } else {
        Err(ValidationError {
            details: r.problems,
        })
    }
}

/// Parses one group object whose id (`id`) is already resolved; `path` is its JSON path.
fn parse_node(
    r: &mut Reader,
    object: &Map<String, Value>,
    path: &str,
    id: &str,
    version: &str,
) -> GroupBody {
    let field = |name: &str| at(path, name);
    // A group's relative dependencies are taken from the group itself (`../db` is a sibling).
    let dependencies = present(object.get("dependencies"))
        .map(|value| parse_dependencies(r, Some(value), &field("dependencies"), id));
    if let Some(pods) = r.array(object.get("pods"), &field("pods")) {
        if !pods.is_empty() {
            r.fail(&field("pods"), "pods are not supported");
        }
    }
    let apps = r.array(object.get("apps"), &field("apps")).map(|apps| {
        let apps_path = field("apps");
        apps.iter()
            .enumerate()
            .filter_map(|(i, app)| parse_child_app(r, app, &index(&apps_path, i), id, version))
            .collect()
    });
    let groups = r
        .array(object.get("groups"), &field("groups"))
        .map(|groups| {
            let groups_path = field("groups");
            groups
                .iter()
                .enumerate()
                .filter_map(|(i, group)| {
                    let path = index(&groups_path, i);
                    let child = r.object(Some(group), &path)?;
                    let child_id = child_id(r, child.get("id"), &path, id)?;
                    Some(parse_node(r, child, &path, &child_id, version))
                })
                .collect()
        });
    GroupBody {
        id: id.to_string(),
        dependencies,
        apps,
        groups,
    }
}

/// The absolute id of a child of group `parent`: resolved against it, and directly below it.
fn child_id(r: &mut Reader, raw: Option<&Value>, path: &str, parent: &str) -> Option<String> {
    let id_path = at(path, "id");
    let Some(raw) = r.string(raw, &id_path) else {
        if present(raw).is_none() {
            r.fail(&id_path, "is required");
        }
        return None;
    };
    match resolve_id(raw, parent) {
        Ok(id) if parent_of(&id) == parent => Some(id),
        Ok(id) => {
            r.fail(
                &id_path,
                format!("'{id}' is not a child of group '{parent}'"),
            );
            None
        }
        Err(message) => {
            r.fail(&id_path, message);
            None
        }
    }
}

/// Parses an app of group `group`, its id resolved against the group; its problems are
/// reported below `path`.
fn parse_child_app(
    r: &mut Reader,
    app: &Value,
    path: &str,
    group: &str,
    version: &str,
) -> Option<MarathonApp> {
    let object = r.object(Some(app), path)?;
    let id = child_id(r, object.get("id"), path, group)?;
    let mut object = object.clone();
    object.insert("id".into(), Value::String(id));
    let body = serde_json::to_vec(&Value::Object(object)).unwrap_or_default();
    match parse_app(&body, version, None) {
        Ok(app) => Some(app),
        Err(error) => {
            for (inner, message) in error.details {
                let inner = if inner == "/" { "" } else { inner.as_str() };
                r.fail(&format!("{path}{inner}"), message);
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn define(body: serde_json::Value, id: &str, create: bool) -> GroupBody {
        match parse_group(body.to_string().as_bytes(), id, create, "v1") {
            Ok(GroupRequest::Define(group)) => group,
            other => panic!("expected a definition, got {other:?}"),
        }
    }

    fn refused(body: serde_json::Value, id: &str, create: bool) -> Vec<(String, String)> {
        match parse_group(body.to_string().as_bytes(), id, create, "v1") {
            Err(error) => error.details,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn relative_ids_resolve_against_the_group_holding_them() {
        let group = define(
            serde_json::json!({
                "id": "prod",
                "dependencies": ["../shared"],
                "apps": [{ "id": "web", "cmd": "sleep 1", "dependencies": ["db", "/shared/x"] }],
                "groups": [{ "id": "back", "apps": [{ "id": "/prod/back/db", "cmd": "sleep 1" }] }],
            }),
            ROOT_GROUP,
            true,
        );
        assert_eq!(group.id, "/prod");
        assert_eq!(group.dependencies, Some(vec!["/shared".to_string()]));
        let apps = group.apps.expect("apps");
        assert_eq!(apps[0].id, "/prod/web");
        assert_eq!(apps[0].dependencies, vec!["/prod/db", "/shared/x"]);
        let groups = group.groups.expect("groups");
        assert_eq!(groups[0].id, "/prod/back");
        assert_eq!(
            groups[0].apps.as_ref().expect("apps")[0].id,
            "/prod/back/db"
        );
        assert_eq!(groups[0].dependencies, None);
    }

    #[test]
    fn problems_are_reported_with_their_path() {
        let details = refused(
            serde_json::json!({
                "id": "/prod",
                "apps": [{ "id": "/other/web", "cmd": "sleep 1" }, { "id": "ok", "cpus": -1 }],
                "groups": [{ "apps": [] }],
                "dependencies": ["Bad_Id"],
            }),
            ROOT_GROUP,
            true,
        );
        let paths: Vec<&str> = details.iter().map(|(p, _)| p.as_str()).collect();
        assert!(paths.contains(&"/apps(0)/id"), "{details:?}");
        assert!(paths.contains(&"/apps(1)/cpus"), "{details:?}");
        assert!(paths.contains(&"/groups(0)/id"), "{details:?}");
        assert!(paths.contains(&"/dependencies(0)"), "{details:?}");
        assert_eq!(
            refused(serde_json::json!({ "apps": [] }), ROOT_GROUP, true)[0].0,
            "/id"
        );
    }

    #[test]
    fn an_update_keeps_what_it_leaves_out_and_may_scale() {
        let group = define(serde_json::json!({ "dependencies": [] }), "/prod", false);
        assert_eq!(group.id, "/prod");
        assert_eq!((group.apps, group.groups), (None, None));
        assert_eq!(
            parse_group(br#"{"scaleBy": 2}"#, "/prod", false, "v1"),
            Ok(GroupRequest::ScaleBy(2.0))
        );
        assert_eq!(
            refused(serde_json::json!({ "scaleBy": "x" }), "/prod", false)[0].0,
            "/scaleBy"
        );
        assert_eq!(
            refused(serde_json::json!({ "version": "2020" }), "/prod", false)[0].0,
            "/version"
        );
    }
}
