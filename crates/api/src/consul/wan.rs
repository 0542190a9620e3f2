//! The federation's endpoints: the datacenters, their WAN coordinates, the WAN pool's
//! members and joining it.

use atoll_cluster::PoolMember;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::acl::Authz;
use crate::error::ApiError;
use crate::extract::Path;
use crate::query::{json_with_index, set_index, Query};
use crate::ApiContext;
use atoll_acl::Segment;

/// `GET /v1/catalog/datacenters`: this datacenter first, then the others by distance.
pub async fn datacenters(State(context): State<ApiContext>) -> Response {
    let mut names = context.federation().datacenters();
    if names.is_empty() {
        names.push(context.datacenter().to_string());
    }
    json_with_index(context.store().applied(), &names)
}

/// `GET /v1/coordinate/datacenters`: the WAN coordinates of each datacenter's servers
/// (those whose node the caller may read).
pub async fn coordinate_datacenters(State(context): State<ApiContext>, authz: Authz) -> Response {
    let mut areas: Vec<Value> = context
        .federation()
        .wan_coordinates()
        .into_iter()
        .map(|dc| {
            let coordinates: Vec<Value> = dc
                .coordinates
                .into_iter()
                .filter(|(node, _)| authz.reads_node(node))
                .map(|(node, coord)| json!({ "Node": node, "Coord": coord }))
                .collect();
            json!({ "Datacenter": dc.datacenter, "AreaID": "WAN", "Coordinates": coordinates })
        })
        .collect();
    // A server is always in its own datacenter's map, coordinates or not.
    if !areas
        .iter()
        .any(|area| area["Datacenter"] == context.datacenter())
    {
        areas.insert(
            0,
            json!({ "Datacenter": context.datacenter(), "AreaID": "WAN", "Coordinates": [] }),
        );
    }
    json_with_index(context.store().applied(), &areas)
}

/// Whether `?wan` asks for the WAN pool: Consul takes any non-empty value.
pub(crate) fn wants_wan(query: &Query) -> bool {
    query.get("wan").is_some_and(|value| !value.is_empty())
}

/// A WAN member as `/v1/agent/members?wan=1` lists it.
pub(crate) fn pool_member_json(member: &PoolMember) -> Value {
    json!({
        "Name": member.name,
        "Addr": member.addr.ip().to_string(),
        "Port": member.addr.port(),
        "Tags": member.tags,
        "Status": member.status.code(),
        "ProtocolMin": 1,
        "ProtocolMax": 5,
        "ProtocolCur": 2,
        "DelegateMin": 2,
        "DelegateMax": 5,
        "DelegateCur": 4,
    })
}

/// `GET /v1/agent/members?wan=1`: the WAN pool (empty on a node outside it, as Consul's
/// clients answer).
pub(crate) fn wan_members(
    context: &ApiContext,
    authz: &Authz,
    query: &Query,
) -> Result<Response, ApiError> {
    if query
        .get("segment")
        .is_some_and(|segment| !segment.is_empty() && segment != "_all")
    {
        return Err(ApiError::field(
            "segment",
            "Cannot provide a segment with wan=true",
        ));
    }
    let members: Vec<Value> = context
        .federation()
        .wan_members()
        .unwrap_or_default()
        .iter()
        .filter(|member| authz.reads_node(&member.name))
        .map(pool_member_json)
        .collect();
    Ok(json_with_index(context.store().applied(), &members))
}

/// `PUT /v1/agent/join/{address}` (`?wan=1`): joins the WAN pool through that address. An
/// empty 200 once contacted; Consul's 500 with the reason otherwise. Needs `agent:write` on
/// this node.
pub async fn join(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(address): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref());
    authz.require_write(Segment::Agent, context.node())?;
    if address.trim().is_empty() {
        return Err(ApiError::field("address", "Missing address to join"));
    }
    if !wants_wan(&query) {
        // A node finds its Raft cluster from its start-up flags; the membership cannot be
        // changed from the HTTP API.
        return Err(ApiError::field(
            "wan",
            "LAN join through the HTTP API is not supported: start the node with --retry-join \
             ADDR (a server or client finds its datacenter's cluster by itself); add ?wan=1 \
             to join the WAN pool",
        ));
    }
    let addresses = [address];
    match context.federation().join_wan(&addresses).await {
        Ok(0) => Err(ApiError::plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Failed to join {}: no member answered", addresses[0]),
        )),
        Ok(_) => {
            let mut response = StatusCode::OK.into_response();
            set_index(response.headers_mut(), context.store().applied());
            Ok(response)
        }
        Err(e) => Err(ApiError::plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        )),
    }
}
