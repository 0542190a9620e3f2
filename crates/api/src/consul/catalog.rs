//! `/v1/catalog/*`: the datacenter-wide registry.

use std::collections::BTreeMap;

use crate::extract::Path;
use atoll_state::{
    Command, Deregistration, Registration, ServiceInstance, State as CatalogState, Table,
};
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::agent::write;
use super::input::{validate_name, CheckIn};
use super::wire::{CatalogServiceJson, NodeJson, ServiceJson};
use crate::decode::decode_body;
use crate::error::ApiError;
use crate::query::{blocking, json_with_index, Query, ReadOptions};
use crate::ApiContext;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CatalogServiceIn {
    id: Option<String>,
    service: Option<String>,
    tags: Option<Vec<String>>,
    address: Option<String>,
    port: Option<u16>,
    meta: Option<BTreeMap<String, String>>,
    enabletagoverride: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CatalogRegisterIn {
    node: Option<String>,
    address: Option<String>,
    datacenter: Option<String>,
    taggedaddresses: Option<BTreeMap<String, String>>,
    nodemeta: Option<BTreeMap<String, String>>,
    service: Option<CatalogServiceIn>,
    check: Option<CatalogCheckIn>,
    checks: Option<Vec<CatalogCheckIn>>,
    skipnodeupdate: Option<bool>,
}

/// Catalog checks carry no runnable definition: their status is set by whoever registers them.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CatalogCheckIn {
    checkid: Option<String>,
    name: Option<String>,
    notes: Option<String>,
    status: Option<String>,
    serviceid: Option<String>,
    output: Option<String>,
    definition: Option<CheckIn>,
}

/// `PUT /v1/catalog/register`.
pub async fn register(
    State(context): State<ApiContext>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let input: CatalogRegisterIn = decode_body(&body)?;
    let node = input.node.unwrap_or_default();
    if node.trim().is_empty() {
        return Err(ApiError::field("Node", "Must provide node"));
    }
    let address = input.address.unwrap_or_default();
    if address.trim().is_empty() {
        return Err(ApiError::field("Address", "Must provide address"));
    }
    let datacenter = input
        .datacenter
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| context.datacenter().to_string());
    if datacenter != context.datacenter() {
        return Err(ApiError::field(
            "Datacenter",
            format!("No path to datacenter {datacenter:?}"),
        ));
    }
    let service = match input.service {
        None => None,
        Some(service) => {
            let name = service.service.unwrap_or_default();
            validate_name("Service.Service", &name)?;
            let id = service
                .id
                .filter(|id| !id.is_empty())
                .unwrap_or_else(|| name.clone());
            validate_name("Service.ID", &id)?;
            Some(atoll_state::ServiceSpec {
                id,
                name,
                tags: service.tags.unwrap_or_default(),
                address: service.address.unwrap_or_default(),
                port: service.port.unwrap_or(0),
                meta: service.meta.unwrap_or_default(),
                enable_tag_override: service.enabletagoverride.unwrap_or(false),
            })
        }
    };
    let mut checks_in: Vec<CatalogCheckIn> = input.check.into_iter().collect();
    checks_in.extend(input.checks.unwrap_or_default());
    let mut checks = Vec::new();
    for (i, check) in checks_in.into_iter().enumerate() {
        let field = format!("Checks[{i}]");
        let check_id = check.checkid.or(check.name.clone()).unwrap_or_default();
        if check_id.is_empty() {
            return Err(ApiError::field(&field, "Check must have a CheckID or Name"));
        }
        let status = match check.status.as_deref() {
            None | Some("") => None,
            Some(text) => Some(atoll_state::CheckStatus::parse(text).ok_or_else(|| {
                ApiError::field(
                    &format!("{field}.Status"),
                    format!("Invalid check status {text:?}"),
                )
            })?),
        };
        let mut spec = atoll_state::CheckSpec {
            check_id: check_id.clone(),
            name: check.name.unwrap_or_else(|| check_id.clone()),
            status,
            notes: check.notes.unwrap_or_default(),
            output: check.output.unwrap_or_default(),
            service_id: check.serviceid.unwrap_or_default(),
            definition: Default::default(),
        };
        if let Some(definition) = check
            .definition
            .filter(|d| d.ttl.is_some() || d.http.is_some() || d.tcp.is_some())
        {
            spec.definition = definition
                .into_spec(
                    &format!("{field}.Definition"),
                    check_id.clone(),
                    spec.name.clone(),
                    None,
                )?
                .definition;
        }
        checks.push(spec);
    }
    let registration = Registration {
        node,
        address,
        datacenter,
        tagged_addresses: input.taggedaddresses.unwrap_or_default(),
        node_meta: input.nodemeta.unwrap_or_default(),
        skip_node_update: input.skipnodeupdate.unwrap_or(false),
        service,
        checks,
        replace_service_checks: false,
    };
    write(&context, Command::Register(Box::new(registration))).await?;
    Ok(json_with_index(context.store().applied(), &true))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CatalogDeregisterIn {
    node: Option<String>,
    serviceid: Option<String>,
    checkid: Option<String>,
    datacenter: Option<String>,
}

/// `PUT /v1/catalog/deregister`.
pub async fn deregister(
    State(context): State<ApiContext>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let input: CatalogDeregisterIn = decode_body(&body)?;
    let node = input.node.unwrap_or_default();
    if node.trim().is_empty() {
        return Err(ApiError::field("Node", "Must provide node"));
    }
    if let Some(dc) = input
        .datacenter
        .filter(|d| !d.is_empty() && d != context.datacenter())
    {
        return Err(ApiError::field(
            "Datacenter",
            format!("No path to datacenter {dc:?}"),
        ));
    }
    let command = Command::Deregister(Deregistration {
        node,
        service_id: input.serviceid.filter(|s| !s.is_empty()),
        check_id: input.checkid.filter(|c| !c.is_empty()),
    });
    write(&context, command).await?;
    Ok(json_with_index(context.store().applied(), &true))
}

/// `GET /v1/catalog/datacenters`.
pub async fn datacenters(State(context): State<ApiContext>) -> Response {
    json_with_index(context.store().applied(), &vec![context.datacenter()])
}

/// Parses `?node-meta=key:value` filters (repeatable).
pub(crate) fn node_meta_filter(query: &Query) -> Result<Vec<(String, String)>, ApiError> {
    query
        .all("node-meta")
        .into_iter()
        .map(|pair| {
            pair.split_once(':')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| {
                    ApiError::field(
                        "node-meta",
                        format!("Invalid node-meta filter {pair:?}: expected key:value"),
                    )
                })
        })
        .collect()
}

pub(crate) fn node_matches(state: &CatalogState, node: &str, filter: &[(String, String)]) -> bool {
    filter.is_empty()
        || state
            .nodes
            .get(node)
            .is_some_and(|n| filter.iter().all(|(k, v)| n.meta.get(k) == Some(v)))
}

/// Whether an instance carries every requested tag (case-insensitive, as Consul's DNS and
/// API compare tags).
pub(crate) fn has_tags(service: &ServiceInstance, tags: &[&str]) -> bool {
    tags.iter()
        .all(|tag| service.tags.iter().any(|t| t.eq_ignore_ascii_case(tag)))
}

/// `GET /v1/catalog/nodes`.
pub async fn nodes(
    State(context): State<ApiContext>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref());
    let options = ReadOptions::parse(&query, &context)?;
    let filter = node_meta_filter(&query)?;
    let (index, body) = blocking(&context, &options, Table::Catalog, |state| {
        let nodes: Vec<NodeJson> = state
            .nodes
            .values()
            .filter(|n| node_matches(state, &n.name, &filter))
            .map(NodeJson::new)
            .collect();
        (
            state.indexes.nodes,
            serde_json::to_value(nodes).unwrap_or_default(),
        )
    })
    .await?;
    Ok(json_with_index(index, &body))
}

/// `GET /v1/catalog/services`.
pub async fn services(
    State(context): State<ApiContext>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref());
    let options = ReadOptions::parse(&query, &context)?;
    let filter = node_meta_filter(&query)?;
    let (index, body) = blocking(&context, &options, Table::Catalog, |state| {
        let names = if filter.is_empty() {
            state.service_names()
        } else {
            let mut names: BTreeMap<&str, std::collections::BTreeSet<&str>> = BTreeMap::new();
            for (node, services) in &state.services {
                if node_matches(state, node, &filter) {
                    for s in services.values() {
                        names
                            .entry(&s.name)
                            .or_default()
                            .extend(s.tags.iter().map(String::as_str));
                    }
                }
            }
            names
        };
        (
            state.indexes.services,
            serde_json::to_value(names).unwrap_or_default(),
        )
    })
    .await?;
    Ok(json_with_index(index, &body))
}

/// `GET /v1/catalog/service/:name` (`?tag=` repeatable, `?node-meta=`).
pub async fn service(
    State(context): State<ApiContext>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref());
    let options = ReadOptions::parse(&query, &context)?;
    let tags = query.all("tag");
    let filter = node_meta_filter(&query)?;
    let (index, body) = blocking(&context, &options, Table::Catalog, |state| {
        let rows: Vec<CatalogServiceJson> = state
            .instances_of(&name)
            .into_iter()
            .filter(|s| has_tags(s, &tags) && node_matches(state, &s.node, &filter))
            .filter_map(|s| {
                state
                    .nodes
                    .get(&s.node)
                    .map(|n| CatalogServiceJson::new(n, s))
            })
            .collect();
        (
            state.service_index(&name),
            serde_json::to_value(rows).unwrap_or_default(),
        )
    })
    .await?;
    Ok(json_with_index(index, &body))
}

/// `GET /v1/catalog/node/:node`: the node and its services, or `null` if unknown.
pub async fn node(
    State(context): State<ApiContext>,
    Path(node): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref());
    // `ReadOptions::parse` also refuses a foreign `dc`.
    let options = ReadOptions::parse(&query, &context)?;
    let datacenter = context.datacenter().to_string();
    let (index, body) = blocking(&context, &options, Table::Catalog, |state| {
        let body = match state.nodes.get(&node) {
            None => serde_json::Value::Null,
            Some(n) => {
                let services: BTreeMap<&str, ServiceJson> = state
                    .services_on_node(&node)
                    .map(|s| (s.id.as_str(), ServiceJson::new(s, &datacenter)))
                    .collect();
                json!({ "Node": NodeJson::new(n), "Services": services })
            }
        };
        (state.indexes.catalog(), body)
    })
    .await?;
    Ok(json_with_index(index, &body))
}
