//! `/v1/agent/*`: the local node's view and its registrations.

use std::collections::BTreeMap;

use crate::extract::Path;
use atoll_agent::SERVER_SERVICE;
pub(crate) use atoll_cluster::node_uuid;
use atoll_cluster::Watch;
use atoll_state::{
    CheckSpec, CheckStatus, Command, Deregistration, Registration, ServiceInstance, Table,
    NODE_HEALTH_CHECK_ID,
};
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use serde_json::json;

use super::input::{parse_check_registration, parse_check_update, parse_service_registration};
use super::listing::Listing;
use super::vet;
use super::wire::shapes::{CHECK, SERVICE};
use super::wire::{CheckJson, ServiceJson};
use crate::acl::Authz;
use crate::error::ApiError;
use crate::execute::write;
use crate::query::{
    blocking, blocking_until, json_with_index, local_query, set_index, Query, ReadOptions,
};
use crate::ApiContext;
use atoll_acl::{Access, Segment};

/// Port Consul's LAN gossip uses, reported in member listings.
const SERF_LAN_PORT: u16 = 8301;
/// Serf's member status codes.
pub(crate) const SERF_ALIVE: u8 = 1;
const SERF_FAILED: u8 = 4;

fn member_json(context: &ApiContext, id: u64, member: &atoll_cluster::Member) -> serde_json::Value {
    let status = context
        .store()
        .read(|state| state.node_health(&member.name));
    let code = match status {
        Some(CheckStatus::Critical) => SERF_FAILED,
        _ => SERF_ALIVE,
    };
    member_value(id, member, context.version(), code)
}

/// A member as `/v1/agent/members` lists it, with Serf's status `code`.
pub(crate) fn member_value(
    id: u64,
    member: &atoll_cluster::Member,
    version: &str,
    code: u8,
) -> serde_json::Value {
    let (address, port) = member
        .rpc_addr
        .rsplit_once(':')
        .unwrap_or((&member.rpc_addr, ""));
    let mut tags = json!({
        "dc": member.datacenter,
        "role": if member.server { "consul" } else { "node" },
        "build": version,
        "id": node_uuid(&member.name),
        "raft_id": id.to_string(),
        "segment": "",
        "vsn": "2",
        "vsn_min": "2",
        "vsn_max": "3",
    });
    if member.server {
        tags["port"] = json!(port);
        tags["raft_vsn"] = json!("3");
        tags["acls"] = json!("0");
        tags["use_tls"] = json!("0");
    }
    json!({
        "Name": member.name,
        "Addr": address.trim_start_matches('[').trim_end_matches(']'),
        "Port": SERF_LAN_PORT,
        "Tags": tags,
        "Status": code,
        "ProtocolMin": 1,
        "ProtocolMax": 5,
        "ProtocolCur": 2,
        "DelegateMin": 2,
        "DelegateMax": 5,
        "DelegateCur": 4,
    })
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// The 64-bit FNV-1a hash of `bytes`, from `seed`.
fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(seed, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub(crate) fn own_member_json(context: &ApiContext) -> serde_json::Value {
    if let Some(own) = context
        .lan()
        .and_then(|lan| lan.members().borrow().first().cloned())
    {
        return super::wan::pool_member_json(&own);
    }
    let cluster = context.cluster();
    member_json(context, cluster.node_id(), cluster.member())
}

/// `GET /v1/agent/members` (`?wan=1`: the WAN pool): the LAN pool's members with their
/// status (the Raft membership on a node without one); members whose node the caller may
/// not read (`node:read`) are left out.
pub async fn members(
    State(context): State<ApiContext>,
    authz: Authz,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref());
    if super::wan::wants_wan(&query) {
        return super::wan::wan_members(&context, &authz, &query);
    }
    // The LAN pool's members as it sees them (those that left are not listed), then the
    // members of the Raft membership the pool has not heard of yet (a node just started),
    // with the status their `serfHealth` gives.
    let mut listed = std::collections::HashSet::new();
    let mut members = Vec::new();
    if let Some(lan) = context.lan() {
        let pool = lan.members().borrow().clone();
        for member in pool.iter() {
            listed.insert(member.name.clone());
            if member.status != atoll_cluster::MemberStatus::Left && authz.reads_node(&member.name)
            {
                members.push(super::wan::pool_member_json(member));
            }
        }
    }
    for (id, member, _) in context.cluster().members() {
        if listed.insert(member.name.clone()) && authz.reads_node(&member.name) {
            members.push(member_json(&context, id, &member));
        }
    }
    // Compute nodes are no Raft members: those the pool does not know (no LAN pool, or not
    // heard of yet) are listed from their catalog row and its `serfHealth`, which the
    // leader keeps from the streams the servers hold.
    let agents: Vec<atoll_cluster::Member> = context.store().read(|state| {
        state
            .nodes
            .values()
            .filter(|node| !listed.contains(&node.name))
            .filter(|node| state.check(&node.name, NODE_HEALTH_CHECK_ID).is_some())
            .map(|node| atoll_cluster::Member {
                name: node.name.clone(),
                rpc_addr: format!("{}:8301", node.address),
                datacenter: node.datacenter.clone(),
                ..Default::default()
            })
            .collect()
    });
    for member in agents {
        if authz.reads_node(&member.name) {
            members.push(member_json(&context, 0, &member));
        }
    }
    Ok(json_with_index(context.store().applied(), &members))
}

/// `GET /v1/agent/services` (`?filter=`): those the caller may read.
pub async fn services(
    State(context): State<ApiContext>,
    authz: Authz,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref());
    let options = ReadOptions::parse(&query, &context)?;
    let listing = Listing::filter_only(&query, &SERVICE)?;
    let node = context.node().to_string();
    let datacenter = context.datacenter().to_string();
    let (index, body) = blocking(&context, &options, Table::Catalog, |state| {
        let services: BTreeMap<&str, ServiceJson> = state
            .services_on_node(&node)
            .filter(|s| s.id != SERVER_SERVICE && authz.reads(Segment::Service, &s.name))
            .map(|s| (s.id.as_str(), ServiceJson::new(s, &datacenter)))
            .collect();
        (state.indexes.catalog(), listing.answer(services))
    })
    .await?;
    Ok(json_with_index(index, &body))
}

/// A service as `/v1/agent/service/:id` shows it: without the Raft indexes, with the
/// `ContentHash` of the rest, and that hash as a number.
fn agent_service_value(service: &ServiceInstance, datacenter: &str) -> (u64, serde_json::Value) {
    let mut value = serde_json::to_value(ServiceJson::new(service, datacenter)).unwrap_or_default();
    if let Some(fields) = value.as_object_mut() {
        fields.remove("CreateIndex");
        fields.remove("ModifyIndex");
    }
    // FNV-1a over the canonical (key-sorted) JSON of the definition.
    let hash = fnv1a(FNV_OFFSET, value.to_string().as_bytes());
    value["ContentHash"] = json!(format!("{hash:016x}"));
    (hash, value)
}

/// `GET /v1/agent/service/:id`; `?hash=H` blocks while the service's `ContentHash` is `H`
/// (up to `?wait=`), as Consul's hash-based blocking does. Needs `service:read`.
pub async fn service(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref());
    let mut options = ReadOptions::parse(&query, &context)?;
    let datacenter = context.datacenter().to_string();
    let node = context.node().to_string();
    let name = context.store().read(|state| {
        let service = state.service(&node, &id);
        service
            .filter(|s| s.id != SERVER_SERVICE)
            .map(|s| s.name.clone())
    });
    let Some(name) = name else {
        return Err(ApiError::not_found(format!("unknown service ID: {id}")));
    };
    authz.require_read(Segment::Service, &name)?;
    options.min_index = match query.get("hash") {
        Some(text) => Some(u64::from_str_radix(text, 16).map_err(|_| {
            ApiError::field(
                "hash",
                format!("Invalid hash {text:?}: expected a ContentHash"),
            )
        })?),
        None => None,
    };
    let (hash, body) = blocking_until(
        &context,
        &options,
        Watch::Service(name),
        |state| match state.service(&node, &id) {
            Some(s) => agent_service_value(s, &datacenter),
            None => (0, serde_json::Value::Null),
        },
        |hash, wanted| hash != wanted,
    )
    .await?;
    if body.is_null() {
        return Err(ApiError::not_found(format!("unknown service ID: {id}")));
    }
    let mut response = json_with_index(context.store().applied(), &body);
    if let Ok(value) = axum::http::HeaderValue::from_str(&format!("{hash:016x}")) {
        response.headers_mut().insert("x-consul-contenthash", value);
    }
    Ok(response)
}

/// `GET /v1/agent/checks` (`?filter=`): those the caller may read.
pub async fn checks(
    State(context): State<ApiContext>,
    authz: Authz,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref());
    let options = ReadOptions::parse(&query, &context)?;
    let listing = Listing::filter_only(&query, &CHECK)?;
    let node = context.node().to_string();
    let (index, body) = blocking(&context, &options, Table::Catalog, |state| {
        let checks: BTreeMap<&str, CheckJson> = state
            .checks_on_node(&node)
            // The node-level check belongs to the catalog, not to the agent's own checks.
            .filter(|c| c.check_id != NODE_HEALTH_CHECK_ID && vet::reads_check(&authz, c))
            .map(|c| (c.check_id.as_str(), CheckJson::new(c)))
            .collect();
        (state.indexes.catalog(), listing.answer(checks))
    })
    .await?;
    Ok(json_with_index(index, &body))
}

/// Consul answers agent writes with an empty 200.
pub(crate) fn empty_ok(context: &ApiContext) -> Response {
    let mut response = Response::new(axum::body::Body::empty());
    set_index(response.headers_mut(), context.store().applied());
    response
}

pub(crate) fn local_registration(context: &ApiContext) -> Registration {
    Registration {
        node: context.node().to_string(),
        datacenter: context.datacenter().to_string(),
        skip_node_update: true,
        ..Default::default()
    }
}

/// Refuses script and Docker checks unless this agent runs them (`--enable-script-checks`),
/// with Consul's words.
fn allow_scripts(context: &ApiContext, checks: &[CheckSpec]) -> Result<(), ApiError> {
    if context.agent().config().enable_script_checks
        || !checks.iter().any(|c| c.definition.kind().runs_script())
    {
        return Ok(());
    }
    Err(ApiError::field(
        "Args",
        "Scripts are disabled on this agent from remote calls; to enable, configure 'enable_script_checks' to true",
    ))
}

/// `PUT /v1/agent/service/register`: `service:write` on the service.
pub async fn register_service(
    State(context): State<ApiContext>,
    authz: Authz,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let query = local_query(raw.as_deref(), &context)?;
    let (service, checks) = parse_service_registration(&body)?;
    allow_scripts(&context, &checks)?;
    let registration = Registration {
        service: Some(service),
        checks,
        replace_service_checks: query.flag("replace-existing-checks"),
        ..local_registration(&context)
    };
    vet_and_register(&context, &authz, registration).await
}

/// Writes a registration of the local agent once the caller's token allows it.
async fn vet_and_register(
    context: &ApiContext,
    authz: &Authz,
    registration: Registration,
) -> Result<Response, ApiError> {
    context
        .store()
        .read(|state| vet::registration(authz, state, &registration))?;
    write(context, Command::Register(Box::new(registration))).await?;
    Ok(empty_ok(context))
}

/// Checks the caller may remove this node's service or check, then writes the removal.
async fn vet_and_deregister(
    context: &ApiContext,
    authz: &Authz,
    deregistration: Deregistration,
) -> Result<Response, ApiError> {
    context
        .store()
        .read(|state| vet::deregistration(authz, state, &deregistration))?;
    write(context, Command::Deregister(deregistration)).await?;
    Ok(empty_ok(context))
}

/// `PUT /v1/agent/service/deregister/:id`: `service:write` on its service.
pub async fn deregister_service(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let exists = context
        .store()
        .read(|s| s.service(context.node(), &id).is_some());
    if !exists {
        return Err(ApiError::not_found(format!(
            "Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."
        )));
    }
    let deregistration = Deregistration {
        node: context.node().to_string(),
        service_id: Some(id),
        check_id: None,
    };
    vet_and_deregister(&context, &authz, deregistration).await
}

/// `PUT /v1/agent/check/register`: `service:write` on the service it guards, `node:write`
/// on this node for a node-level check.
pub async fn register_check(
    State(context): State<ApiContext>,
    authz: Authz,
    body: Bytes,
) -> Result<Response, ApiError> {
    let spec = parse_check_registration(&body)?;
    allow_scripts(&context, std::slice::from_ref(&spec))?;
    if !spec.service_id.is_empty() {
        let exists = context
            .store()
            .read(|s| s.service(context.node(), &spec.service_id).is_some());
        if !exists {
            return Err(ApiError::field(
                "ServiceID",
                format!("ServiceID {:?} does not exist", spec.service_id),
            ));
        }
    }
    let registration = Registration {
        checks: vec![spec],
        ..local_registration(&context)
    };
    vet_and_register(&context, &authz, registration).await
}

/// `PUT /v1/agent/check/deregister/:id`: what the check's service (or node) needs.
pub async fn deregister_check(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let exists = context
        .store()
        .read(|s| s.checks_on_node(context.node()).any(|c| c.check_id == id));
    if !exists {
        return Err(ApiError::not_found(format!("Unknown check ID {id:?}")));
    }
    let deregistration = Deregistration {
        node: context.node().to_string(),
        service_id: None,
        check_id: Some(id),
    };
    vet_and_deregister(&context, &authz, deregistration).await
}

/// An update of a check of this node needs `service:write` on its service (`node:write`
/// on this node for a node-level check). An unknown check is left to the agent's 404.
fn may_update_check(context: &ApiContext, authz: &Authz, id: &str) -> Result<(), ApiError> {
    context.store().read(|state| {
        match state
            .checks_on_node(context.node())
            .find(|c| c.check_id == id)
        {
            Some(check) => authz.require(vet::check_of(check), Access::Write),
            None => Ok(()),
        }
    })
}

async fn set_ttl(
    context: ApiContext,
    authz: Authz,
    id: String,
    status: CheckStatus,
    raw: Option<String>,
) -> Result<Response, ApiError> {
    may_update_check(&context, &authz, &id)?;
    let query = Query::parse(raw.as_deref());
    let note = query.get("note").unwrap_or_default().to_string();
    context.agent().update_ttl(&id, status, note).await?;
    Ok(empty_ok(&context))
}

/// `PUT /v1/agent/check/pass/:id`.
pub async fn pass(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    set_ttl(context, authz, id, CheckStatus::Passing, raw).await
}

/// `PUT /v1/agent/check/warn/:id`.
pub async fn warn(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    set_ttl(context, authz, id, CheckStatus::Warning, raw).await
}

/// `PUT /v1/agent/check/fail/:id`.
pub async fn fail(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    set_ttl(context, authz, id, CheckStatus::Critical, raw).await
}

/// `PUT /v1/agent/check/update/:id` with `{"Status", "Output"}`.
pub async fn update(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    may_update_check(&context, &authz, &id)?;
    let (status, output) = parse_check_update(&body)?;
    context.agent().update_ttl(&id, status, output).await?;
    Ok(empty_ok(&context))
}
