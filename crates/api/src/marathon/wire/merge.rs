//! `PUT /v2/apps/{id}`: an update merged into the current definition, and whether the
//! result is a scale or a new version.

use atoll_state::{DockerNetwork, Runtime};
use serde_json::{Map, Value};

use super::app::MarathonApp;
use super::error::PutAppError;
use super::parse::parse_app;
use super::reader::present;
use super::render::{object_of, render_definition, Echo};

/// Parses the body of `PUT /v2/apps/{id}`: the path names the app (a body without an id,
/// or with another, updates app `id`), and with `base` (the current app) the body is merged
/// into it. A change of `instances` alone is a scale and keeps the base's version, so no
/// task restarts. Returns the new app and the deployment's action
/// (`StartApplication`, `ScaleApplication` or `RestartApplication`).
pub fn parse_app_put(
    id: &str,
    body: &[u8],
    version: &str,
    base: Option<&MarathonApp>,
) -> Result<(MarathonApp, &'static str), PutAppError> {
    let mut body_value: Value = serde_json::from_slice(body)
        .map_err(|e| PutAppError::Json(format!("Invalid JSON: {e}")))?;
    if let Some(object) = body_value.as_object_mut() {
        object.insert("id".into(), Value::String(id.to_string()));
    }
    let body = serde_json::to_vec(&body_value).unwrap_or_default();
    let mut app = parse_app(&body, version, base).map_err(PutAppError::Invalid)?;
    let scale_only = base.is_some_and(|b| {
        let mut same = app.spec.clone();
        same.instances = b.instances;
        same.version = b.version.clone();
        same == b.spec
    });
    if let (true, Some(b)) = (scale_only, base) {
        app.version = b.version.clone();
        app.definition["version"] = Value::String(b.version.clone());
    }
    let action = match (base, scale_only) {
        (None, _) => "StartApplication",
        (Some(_), true) => "ScaleApplication",
        (Some(_), false) => "RestartApplication",
    };
    Ok((app, action))
}

/// Marathon's PUT semantics: top-level fields of the update replace the current ones,
/// absent fields keep their value. Fields that exclude each other follow the update, so a
/// new `cmd` drops the old `args` and a change of networking drops ports of the old mode.
pub(super) fn merge_update(base: &MarathonApp, update: Map<String, Value>) -> Map<String, Value> {
    let mut merged = match &base.definition {
        Value::Object(definition) => definition.clone(),
        _ => object_of(render_definition(base, &Echo::default())),
    };
    // The spec is authoritative over the echoed definition: a scale by killing tasks
    // changes the count without a new definition.
    merged.insert("id".into(), Value::String(base.id.clone()));
    merged.insert("instances".into(), Value::from(base.instances));
    let given = |key: &str| update.contains_key(key);
    for (one, other) in [("cmd", "args"), ("ports", "portDefinitions")] {
        if given(one) && !given(other) {
            merged.remove(other);
        }
        if given(other) && !given(one) {
            merged.remove(one);
        }
    }
    // Networking is given twice (`networks`, Marathon 1.5+, and `container.docker.network`,
    // before); the update's choice wins over whichever form the current definition holds.
    if given("networks") && !given("container") {
        if let Some(Value::Object(docker)) = merged
            .get_mut("container")
            .and_then(|c| c.get_mut("docker"))
        {
            docker.remove("network");
        }
    }
    if given("container") && !given("networks") {
        let keeps_mode = update
            .get("container")
            .and_then(Value::as_object)
            .is_some_and(|c| present(c.get("docker").and_then(|d| d.get("network"))).is_none());
        if !keeps_mode {
            merged.remove("networks");
        }
    }
    let ports_given = given("ports") || given("portDefinitions");
    merged.extend(update);
    let was_bridge = matches!(
        base.runtime,
        Runtime::Docker {
            network: DockerNetwork::Bridge,
            ..
        }
    );
    if !ports_given && looks_bridged(&merged) != was_bridge {
        merged.remove("ports");
        merged.remove("portDefinitions");
    }
    merged
}

/// Whether a (possibly invalid) definition asks for bridge networking.
fn looks_bridged(definition: &Map<String, Value>) -> bool {
    let by_networks = definition
        .get("networks")
        .and_then(|n| n.get(0))
        .and_then(|n| n.get("mode"))
        .and_then(Value::as_str)
        == Some("container/bridge");
    let by_docker = definition
        .get("container")
        .and_then(|c| c.get("docker"))
        .and_then(|d| d.get("network"))
        .and_then(Value::as_str)
        .is_some_and(|n| n.eq_ignore_ascii_case("BRIDGE"));
    by_networks || by_docker
}
