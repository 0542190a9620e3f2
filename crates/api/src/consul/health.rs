//! `/v1/health/*`: instances with their health.

use crate::extract::Path;
use atoll_cluster::Watch;
use atoll_state::{aggregate_status, CheckStatus, Table};
use axum::extract::{RawQuery, State};
use axum::response::Response;

use super::catalog::has_tags;
use super::listing::Listing;
use super::vet::reads_check;
use super::wire::shapes::{CHECK, HEALTH_ENTRY};
use super::wire::{CheckJson, HealthEntryJson, NodeJson, ServiceJson};
use crate::acl::Authz;
use crate::error::ApiError;
use crate::query::{blocking, json_with_index, Query, ReadOptions};
use crate::ApiContext;

/// `GET /v1/health/service/:name` (`?passing`, `?tag=` repeatable, `?node-meta=`, `?near=`,
/// `?filter=`).
pub async fn service(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref());
    let options = ReadOptions::parse(&query, &context)?;
    let passing_only = query.flag("passing");
    let tags = query.all("tag");
    let listing = Listing::parse(&query, &context, &HEALTH_ENTRY)?;
    let datacenter = context.datacenter().to_string();
    let (index, body) = blocking(&context, &options, Watch::Service(name.clone()), |state| {
        let mut entries = Vec::new();
        let instances = listing.nearest(state.instances_of(&name), |s| &s.node);
        for instance in instances {
            if !has_tags(instance, &tags)
                || !listing.node_matches(state, &instance.node)
                || !authz.reads_instance(&instance.name, &instance.node)
            {
                continue;
            }
            let Some(node) = state.nodes.get(&instance.node) else {
                continue;
            };
            let checks = state.checks_for_instance(instance);
            if passing_only && aggregate_status(checks.iter().copied()) != CheckStatus::Passing {
                continue;
            }
            entries.push(HealthEntryJson {
                node: NodeJson::new(node),
                service: ServiceJson::new(instance, &datacenter),
                checks: checks
                    .into_iter()
                    .filter(|c| reads_check(&authz, c))
                    .map(CheckJson::new)
                    .collect(),
            });
        }
        (state.service_index(&name), listing.answer(entries))
    })
    .await?;
    Ok(json_with_index(index, &body))
}

/// `GET /v1/health/checks/:service` (`?node-meta=`, `?near=`, `?filter=`).
pub async fn service_checks(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref());
    let options = ReadOptions::parse(&query, &context)?;
    let listing = Listing::parse(&query, &context, &CHECK)?;
    let (index, body) = blocking(&context, &options, Watch::Service(name.clone()), |state| {
        let checks: Vec<CheckJson> = state
            .instances_of(&name)
            .into_iter()
            .filter(|instance| {
                listing.node_matches(state, &instance.node)
                    && authz.reads_instance(&instance.name, &instance.node)
            })
            .flat_map(|instance| {
                state
                    .checks_on_node(&instance.node)
                    .filter(move |c| c.service_id == instance.id)
            })
            .map(CheckJson::new)
            .collect();
        let checks = listing.nearest(checks, CheckJson::node);
        (state.service_index(&name), listing.answer(checks))
    })
    .await?;
    Ok(json_with_index(index, &body))
}

/// `GET /v1/health/node/:node` (`?filter=`).
pub async fn node(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(node): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref());
    let options = ReadOptions::parse(&query, &context)?;
    let listing = Listing::filter_only(&query, &CHECK)?;
    let (index, body) = blocking(&context, &options, Table::Catalog, |state| {
        let checks: Vec<CheckJson> = state
            .checks_on_node(&node)
            .filter(|c| reads_check(&authz, c))
            .map(CheckJson::new)
            .collect();
        (state.indexes.checks, listing.answer(checks))
    })
    .await?;
    Ok(json_with_index(index, &body))
}

/// `GET /v1/health/state/:state` (`any`, `passing`, `warning`, `critical`; `?node-meta=`,
/// `?near=`, `?filter=`).
pub async fn state(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(wanted): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let filter = match wanted.as_str() {
        "any" => None,
        other => Some(CheckStatus::parse(other).ok_or_else(|| {
            ApiError::field(
                "state",
                format!(
                    "Invalid check state {other:?}: expected any, passing, warning or critical"
                ),
            )
        })?),
    };
    let query = Query::parse(raw.as_deref());
    let options = ReadOptions::parse(&query, &context)?;
    let listing = Listing::parse(&query, &context, &CHECK)?;
    let (index, body) = blocking(&context, &options, Table::Catalog, |state| {
        let checks: Vec<CheckJson> = state
            .all_checks()
            .filter(|c| filter.is_none_or(|f| c.status == f))
            .filter(|c| listing.node_matches(state, &c.node) && reads_check(&authz, c))
            .map(CheckJson::new)
            .collect();
        let checks = listing.nearest(checks, CheckJson::node);
        (state.indexes.checks, listing.answer(checks))
    })
    .await?;
    Ok(json_with_index(index, &body))
}
