//! Maintenance mode (`/v1/agent/maintenance`, `/v1/agent/service/maintenance/:id`) and the
//! local health answers load balancers read (`/v1/agent/health/service/...`).
//!
//! Maintenance is a critical check, as in Consul: `_node_maintenance` on the node (every
//! instance on it turns critical) or `_service_maintenance:ID` on one instance. Being
//! critical, it takes the instances out of DNS and `?passing` like any failing check.

use crate::extract::Path;
use atoll_agent::SERVER_SERVICE;
use atoll_state::{
    Check, CheckSpec, CheckStatus, Command, Deregistration, Registration, ServiceInstance,
    NODE_HEALTH_CHECK_ID,
};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::agent::{empty_ok, local_registration};
use super::wire::{
    is_maintenance_check, CheckJson, ServiceJson, NODE_MAINTENANCE_CHECK_ID,
    SERVICE_MAINTENANCE_PREFIX,
};
use crate::acl::Authz;
use crate::error::ApiError;
use crate::execute::write;
use crate::query::{local_query, set_index, Query};
use crate::ApiContext;
use atoll_acl::Segment;

const NODE_DEFAULT_REASON: &str =
    "Maintenance mode is enabled for this node, but no reason was provided. This is a default message.";
const SERVICE_DEFAULT_REASON: &str =
    "Maintenance mode is enabled for this service, but no reason was provided. This is a default message.";

/// `?enable=` (required, a boolean as Go parses one) and `?reason=`.
fn parse_toggle(query: &Query) -> Result<(bool, String), ApiError> {
    let enable = match query.get("enable") {
        None | Some("") => return Err(ApiError::field("enable", "Missing value for enable")),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => true,
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => false,
        Some(other) => {
            return Err(ApiError::field(
                "enable",
                format!("Invalid value for enable: {other:?}"),
            ))
        }
    };
    Ok((enable, query.get("reason").unwrap_or_default().to_string()))
}

/// Adds the critical maintenance check `check_id` (unless it is there already: Consul keeps
/// the first reason), or removes it.
async fn toggle(
    context: &ApiContext,
    enable: bool,
    check: CheckSpec,
) -> Result<Response, ApiError> {
    let present = context
        .store()
        .read(|s| s.check(context.node(), &check.check_id).is_some());
    let command = match (enable, present) {
        (true, false) => Command::Register(Box::new(Registration {
            checks: vec![check],
            ..local_registration(context)
        })),
        (false, true) => Command::Deregister(Deregistration {
            node: context.node().to_string(),
            service_id: None,
            check_id: Some(check.check_id),
        }),
        _ => return Ok(empty_ok(context)),
    };
    write(context, command).await?;
    Ok(empty_ok(context))
}

fn maintenance_check(check_id: String, name: &str, notes: String, service_id: &str) -> CheckSpec {
    CheckSpec {
        check_id,
        name: name.to_string(),
        status: Some(CheckStatus::Critical),
        notes,
        output: String::new(),
        service_id: service_id.to_string(),
        definition: Default::default(),
    }
}

/// `PUT /v1/agent/maintenance?enable=true|false&reason=`: `node:write` on this node (as
/// Consul).
pub async fn node(
    State(context): State<ApiContext>,
    authz: Authz,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = local_query(raw.as_deref(), &context)?;
    authz.require_write(Segment::Node, context.node())?;
    let (enable, reason) = parse_toggle(&query)?;
    let notes = if reason.is_empty() {
        NODE_DEFAULT_REASON.to_string()
    } else {
        reason
    };
    let check = maintenance_check(
        NODE_MAINTENANCE_CHECK_ID.to_string(),
        "Node Maintenance Mode",
        notes,
        "",
    );
    toggle(&context, enable, check).await
}

/// `PUT /v1/agent/service/maintenance/:service_id?enable=true|false&reason=`:
/// `service:write` on its service.
pub async fn service(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = local_query(raw.as_deref(), &context)?;
    let (enable, reason) = parse_toggle(&query)?;
    let name = context.store().read(|s| {
        s.service(context.node(), &id)
            .filter(|s| s.id != SERVER_SERVICE)
            .map(|s| s.name.clone())
    });
    let Some(name) = name else {
        return Err(ApiError::plain(
            StatusCode::NOT_FOUND,
            format!("No service registered with ID {id:?}"),
        ));
    };
    authz.require_write(Segment::Service, &name)?;
    let notes = if reason.is_empty() {
        SERVICE_DEFAULT_REASON.to_string()
    } else {
        reason
    };
    let check = maintenance_check(
        format!("{SERVICE_MAINTENANCE_PREFIX}{id}"),
        "Service Maintenance Mode",
        notes,
        &id,
    );
    toggle(&context, enable, check).await
}

/// One service's local health, as `/v1/agent/health/service/*` answers it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceHealthJson<'a> {
    aggregated_status: &'static str,
    service: ServiceJson<'a>,
    checks: Vec<CheckJson<'a>>,
}

/// The status Consul's agent aggregates for a service from its checks and the agent's node
/// checks (`serfHealth` belongs to the catalog, not the agent): `maintenance` when one is a
/// maintenance check, else the worst; `passing` with none.
fn aggregated(checks: &[&Check]) -> &'static str {
    if checks.iter().any(|c| is_maintenance_check(&c.check_id)) {
        return "maintenance";
    }
    checks
        .iter()
        .map(|c| c.status)
        .max()
        .unwrap_or(CheckStatus::Passing)
        .as_str()
}

/// Consul's status code of an aggregated status.
fn status_code(status: &str) -> StatusCode {
    match status {
        "passing" => StatusCode::OK,
        "warning" => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn local_checks<'a>(state: &'a atoll_state::State, service: &ServiceInstance) -> Vec<&'a Check> {
    state
        .checks_on_node(&service.node)
        .filter(|c| {
            c.check_id != NODE_HEALTH_CHECK_ID
                && (c.service_id.is_empty() || c.service_id == service.id)
        })
        .collect()
}

fn health_of<'a>(
    state: &'a atoll_state::State,
    service: &'a ServiceInstance,
    datacenter: &'a str,
) -> ServiceHealthJson<'a> {
    let checks = local_checks(state, service);
    ServiceHealthJson {
        aggregated_status: aggregated(&checks),
        service: ServiceJson::new(service, datacenter),
        checks: checks.into_iter().map(CheckJson::new).collect(),
    }
}

/// A body with Consul's status code: the status as plain text, or JSON.
fn answer(
    context: &ApiContext,
    code: StatusCode,
    text: bool,
    status: &str,
    json: serde_json::Value,
) -> Response {
    let mut response = if text {
        (
            [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"))],
            status.to_string(),
        )
            .into_response()
    } else {
        axum::Json(json).into_response()
    };
    *response.status_mut() = code;
    set_index(response.headers_mut(), context.store().applied());
    response
}

fn wants_text(query: &Query) -> bool {
    query.get("format") == Some("text")
}

/// `GET /v1/agent/health/service/id/:id` (`?format=text`): `service:read` on its service.
pub async fn health_by_id(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let text = wants_text(&Query::parse(raw.as_deref()));
    let datacenter = context.datacenter().to_string();
    let found = context.store().read(|state| {
        let service = state
            .service(context.node(), &id)
            .filter(|s| s.id != SERVER_SERVICE)?;
        if !authz.reads(Segment::Service, &service.name) {
            return Some(Err(()));
        }
        let health = health_of(state, service, &datacenter);
        Some(Ok((
            health.aggregated_status,
            serde_json::to_value(health).unwrap_or_default(),
        )))
    });
    match found {
        Some(Err(())) => authz.denied().into_response(),
        Some(Ok((status, body))) => answer(&context, status_code(status), text, status, body),
        None => {
            let reason = format!("ServiceId {id} not found");
            let body = serde_json::json!({
                "AggregatedStatus": "critical",
                "Service": null,
                "Checks": null,
            });
            answer(&context, StatusCode::NOT_FOUND, text, &reason, body)
        }
    }
}

/// `GET /v1/agent/health/service/name/:name` (`?format=text`): every local instance of the
/// service, with the worst status's code. Needs `service:read` on it.
pub async fn health_by_name(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Err(denied) = authz.require_read(Segment::Service, &name) {
        return denied.into_response();
    }
    let text = wants_text(&Query::parse(raw.as_deref()));
    let datacenter = context.datacenter().to_string();
    let (code, status, body) = context.store().read(|state| {
        let mut code = StatusCode::NOT_FOUND;
        let mut status = format!("ServiceName {name} Not Found");
        let mut entries = Vec::new();
        for service in state
            .services_on_node(context.node())
            .filter(|s| s.name == name && s.id != SERVER_SERVICE)
        {
            let health = health_of(state, service, &datacenter);
            let this = status_code(health.aggregated_status);
            // passing 200 < warning 429 < critical 503: the worst wins.
            if code == StatusCode::NOT_FOUND || this.as_u16() > code.as_u16() {
                code = this;
                status = health.aggregated_status.to_string();
            }
            entries.push(health);
        }
        (
            code,
            status,
            serde_json::to_value(entries).unwrap_or_default(),
        )
    });
    answer(&context, code, text, &status, body)
}
