//! `/v1/catalog/*`: the datacenter-wide registry.

use std::collections::BTreeMap;

use crate::extract::Path;
use atoll_cluster::Watch;
use atoll_state::{Command, ServiceInstance, Table};
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use serde_json::json;

use super::input::{parse_catalog_deregistration, parse_catalog_registration};
use super::listing::{node_matches, node_meta_filter, Listing};
use super::wire::shapes::{CATALOG_SERVICE, NODE, SERVICE};
use super::wire::{CatalogServiceJson, NodeJson, ServiceJson};
use crate::acl::Authz;
use crate::error::ApiError;
use crate::execute::write_in;
use crate::query::{blocking, json_with_index, Query, ReadOptions};
use crate::ApiContext;
use atoll_acl::Segment;

/// `PUT /v1/catalog/register`: `node:write` on the node, `service:write` on the service.
pub async fn register(
    State(context): State<ApiContext>,
    authz: Authz,
    body: Bytes,
) -> Result<Response, ApiError> {
    let registration = parse_catalog_registration(&body, context.datacenter())?;
    context
        .store()
        .read(|state| super::vet::registration(&authz, state, &registration))?;
    let datacenter = registration.datacenter.clone();
    write_in(
        &context,
        Some(&datacenter),
        Command::Register(Box::new(registration)),
    )
    .await?;
    Ok(json_with_index(context.store().applied(), &true))
}

/// `PUT /v1/catalog/deregister`: what removing the node, service or check needs.
pub async fn deregister(
    State(context): State<ApiContext>,
    authz: Authz,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (deregistration, datacenter) = parse_catalog_deregistration(&body)?;
    context
        .store()
        .read(|state| super::vet::deregistration(&authz, state, &deregistration))?;
    write_in(
        &context,
        datacenter.as_deref(),
        Command::Deregister(deregistration),
    )
    .await?;
    Ok(json_with_index(context.store().applied(), &true))
}

/// Whether an instance carries every requested tag (case-insensitive, as Consul's DNS and
/// API compare tags).
pub(crate) fn has_tags(service: &ServiceInstance, tags: &[&str]) -> bool {
    tags.iter()
        .all(|tag| service.tags.iter().any(|t| t.eq_ignore_ascii_case(tag)))
}

/// `GET /v1/catalog/nodes` (`?node-meta=`, `?near=`, `?filter=`).
pub async fn nodes(
    State(context): State<ApiContext>,
    authz: Authz,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref());
    let options = ReadOptions::parse(&query, &context)?;
    let listing = Listing::parse(&query, &context, &NODE)?;
    let (index, body) = blocking(&context, &options, Table::Catalog, |state| {
        let nodes: Vec<NodeJson> = state
            .nodes
            .values()
            .filter(|n| listing.node_matches(state, &n.name) && authz.reads_node(&n.name))
            .map(NodeJson::new)
            .collect();
        let nodes = listing.nearest(nodes, NodeJson::name);
        (state.indexes.nodes, listing.answer(nodes))
    })
    .await?;
    Ok(json_with_index(index, &body))
}

/// `GET /v1/catalog/services`: the services the caller may read (`service:read`).
pub async fn services(
    State(context): State<ApiContext>,
    authz: Authz,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref());
    let options = ReadOptions::parse(&query, &context)?;
    let filter = node_meta_filter(&query)?;
    let (index, body) = blocking(&context, &options, Table::Catalog, |state| {
        let mut names = if filter.is_empty() {
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
        names.retain(|name, _| authz.reads(Segment::Service, name));
        (
            state.indexes.services,
            serde_json::to_value(names).unwrap_or_default(),
        )
    })
    .await?;
    Ok(json_with_index(index, &body))
}

/// `GET /v1/catalog/service/:name` (`?tag=` repeatable, `?node-meta=`, `?near=`, `?filter=`).
pub async fn service(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref());
    let options = ReadOptions::parse(&query, &context)?;
    let tags = query.all("tag");
    let listing = Listing::parse(&query, &context, &CATALOG_SERVICE)?;
    let (index, body) = blocking(&context, &options, Watch::Service(name.clone()), |state| {
        let instances: Vec<&ServiceInstance> = state
            .instances_of(&name)
            .into_iter()
            .filter(|s| {
                has_tags(s, &tags)
                    && listing.node_matches(state, &s.node)
                    && authz.reads_instance(&s.name, &s.node)
            })
            .collect();
        let rows: Vec<CatalogServiceJson> = listing
            .nearest(instances, |s| &s.node)
            .into_iter()
            .filter_map(|s| {
                state
                    .nodes
                    .get(&s.node)
                    .map(|n| CatalogServiceJson::new(n, s))
            })
            .collect();
        (state.service_index(&name), listing.answer(rows))
    })
    .await?;
    Ok(json_with_index(index, &body))
}

/// Answers a read of one node from what `render` makes of its row (if known) and its
/// services (`?filter=` is handed to `render`, which applies it to the services), blocking
/// on the catalog. A node the caller may not read is answered as unknown, and its services
/// the caller may not read are left out.
async fn read_node(
    context: ApiContext,
    authz: Authz,
    node: String,
    raw: Option<String>,
    render: impl Fn(Option<NodeJson>, &Listing, Vec<ServiceJson>) -> serde_json::Value,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref());
    // `ReadOptions::parse` also refuses a foreign `dc`.
    let options = ReadOptions::parse(&query, &context)?;
    let listing = Listing::filter_only(&query, &SERVICE)?;
    let datacenter = context.datacenter().to_string();
    let (index, body) = blocking(&context, &options, Table::Catalog, |state| {
        let visible = authz.reads_node(&node);
        let services = state
            .services_on_node(&node)
            .filter(|s| visible && authz.reads(Segment::Service, &s.name))
            .map(|s| ServiceJson::new(s, &datacenter))
            .collect();
        let body = render(
            state
                .nodes
                .get(&node)
                .filter(|_| visible)
                .map(NodeJson::new),
            &listing,
            services,
        );
        (state.indexes.catalog(), body)
    })
    .await?;
    Ok(json_with_index(index, &body))
}

/// `GET /v1/catalog/node/:node`: the node and its services by id, or `null` if unknown
/// (`?filter=` applies to the services).
pub async fn node(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(node): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    read_node(
        context,
        authz,
        node,
        raw,
        |node, listing, services| match node {
            None => serde_json::Value::Null,
            Some(node) => {
                let services: BTreeMap<&str, &ServiceJson> =
                    services.iter().map(|s| (s.id(), s)).collect();
                json!({ "Node": node, "Services": listing.answer(services) })
            }
        },
    )
    .await
}

/// `GET /v1/catalog/node-services/:node`: Consul 1.10's shape, the node and a list of its
/// services (`{"Node": null, "Services": []}` for an unknown node).
pub async fn node_services(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(node): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    read_node(
        context,
        authz,
        node,
        raw,
        |node, listing, services| json!({ "Node": node, "Services": listing.answer(services) }),
    )
    .await
}
