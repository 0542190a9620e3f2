//! `/v1/query`: Consul's prepared queries. Definitions are Raft entries of this datacenter;
//! executing one selects the instances here and, only when none is found, fails over to
//! other datacenters through `POST /v1/internal/query/execute-remote` on a relay of each.
//!
//! The pure steps (resolution, templates, selection, failover order) live in
//! `atoll_state::prepared`; this module reads the body, shapes the JSON and does the I/O.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::near::{sort_by_distance, Coordinates};
use atoll_acl::Segment;
use atoll_cluster::Route;
use atoll_dns::{PreparedQueries, QueryAnswer, QueryFailure, QueryInstance, QueryPending};
use atoll_state::prepared::{
    failover_targets, put_near_node_first, render, resolve, select, shuffle,
    TEMPLATE_NAME_PREFIX_MATCH,
};
use atoll_state::{
    Command, PreparedQuery, QueryDns, QueryFailover, QueryTemplate, ServiceQuery,
    State as StateView, Table,
};
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::wire::{CheckJson, HealthEntryJson, NodeJson, ServiceJson};
use crate::acl::Authz;
use crate::decode::{decode_body, parse_duration};
use crate::error::ApiError;
use crate::execute::{create_with_new_id, write};
use crate::extract::Path;
use crate::query::{blocking, json_with_index, local_query, Query, ReadOptions};
use crate::ApiContext;

/// How many fresh ids a create tries when one is taken (a UUID collision).
/// The path a failover sends the rendered query to.
pub const EXECUTE_REMOTE_PATH: &str = "/v1/internal/query/execute-remote";
/// How long one datacenter of a failover may take, all its relays together.
const DATACENTER_TIMEOUT: Duration = Duration::from_secs(2);
/// Consul's text for an id or name no query has.
const NOT_FOUND: &str = "Query not found";

// ---------------------------------------------------------------------------------------
// JSON in and out.

/// A definition as a request body gives it (names matched as `decode` matches them).
#[derive(Deserialize, Default)]
#[serde(default)]
struct QueryIn {
    id: Option<String>,
    name: Option<String>,
    session: Option<String>,
    token: Option<String>,
    service: Option<ServiceIn>,
    dns: Option<DnsIn>,
    template: Option<TemplateIn>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ServiceIn {
    service: Option<String>,
    failover: Option<FailoverIn>,
    ignorecheckids: Option<Vec<String>>,
    onlypassing: Option<bool>,
    near: Option<String>,
    tags: Option<Vec<String>>,
    nodemeta: Option<BTreeMap<String, String>>,
    servicemeta: Option<BTreeMap<String, String>>,
    connect: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct FailoverIn {
    nearestn: Option<i64>,
    datacenters: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DnsIn {
    ttl: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TemplateIn {
    #[serde(rename = "type")]
    kind: Option<String>,
    regexp: Option<String>,
    removeemptytags: Option<bool>,
}

/// Reads a definition from a request body, refusing what Consul refuses before it reaches
/// the state machine (400 naming the field). The body's `ID` is returned apart.
fn parse_definition(body: &[u8]) -> Result<(Option<String>, PreparedQuery), ApiError> {
    let input: QueryIn = decode_body(body)?;
    let service = input.service.unwrap_or_default();
    let failover = service.failover.unwrap_or_default();
    let nearest_n = failover.nearestn.unwrap_or(0);
    let nearest_n = u32::try_from(nearest_n).map_err(|_| {
        ApiError::field(
            "Service.Failover.NearestN",
            format!("Bad NearestN '{nearest_n}', must be >= 0"),
        )
    })?;
    let query = PreparedQuery {
        id: String::new(),
        name: input.name.unwrap_or_default(),
        session: input.session.unwrap_or_default(),
        token: input.token.unwrap_or_default(),
        service: ServiceQuery {
            service: service.service.unwrap_or_default(),
            failover: QueryFailover {
                nearest_n,
                datacenters: failover.datacenters.unwrap_or_default(),
            },
            ignore_check_ids: service.ignorecheckids.unwrap_or_default(),
            only_passing: service.onlypassing.unwrap_or(false),
            near: service.near.unwrap_or_default(),
            tags: service.tags.unwrap_or_default(),
            node_meta: service.nodemeta.unwrap_or_default(),
            service_meta: service.servicemeta.unwrap_or_default(),
            connect: service.connect.unwrap_or(false),
        },
        dns: QueryDns {
            ttl: input.dns.unwrap_or_default().ttl.unwrap_or_default(),
        },
        template: {
            let template = input.template.unwrap_or_default();
            QueryTemplate {
                kind: template.kind.unwrap_or_default(),
                regexp: template.regexp.unwrap_or_default(),
                remove_empty_tags: template.removeemptytags.unwrap_or(false),
            }
        },
        create_index: 0,
        modify_index: 0,
    };
    if query.service.service.is_empty() {
        return Err(ApiError::field(
            "Service.Service",
            "Must provide a Service name to query",
        ));
    }
    if !query.dns.ttl.is_empty() && parse_duration(&query.dns.ttl).is_none() {
        return Err(ApiError::field(
            "DNS.TTL",
            format!("Bad DNS TTL '{}': not a duration", query.dns.ttl),
        ));
    }
    if query.is_template() && query.template.kind != TEMPLATE_NAME_PREFIX_MATCH {
        return Err(ApiError::field(
            "Template.Type",
            format!("Bad Template.Type '{}'", query.template.kind),
        ));
    }
    if let Err(why) = render(&query, &query.name) {
        let field = if why.starts_with("Bad Regexp") {
            "Template.Regexp"
        } else {
            "Service"
        };
        return Err(ApiError::field(
            field,
            format!("Invalid prepared query template: {why}"),
        ));
    }
    Ok((input.id.filter(|id| !id.is_empty()), query))
}

/// A definition as Consul writes it.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct QueryJson {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    session: String,
    token: String,
    service: ServiceJsonOut,
    #[serde(rename = "DNS")]
    dns: DnsJson,
    template: TemplateJson,
    create_index: u64,
    modify_index: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceJsonOut {
    service: String,
    failover: FailoverJson,
    #[serde(rename = "IgnoreCheckIDs")]
    ignore_check_ids: Option<Vec<String>>,
    only_passing: bool,
    near: String,
    tags: Option<Vec<String>>,
    node_meta: Option<BTreeMap<String, String>>,
    service_meta: Option<BTreeMap<String, String>>,
    connect: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct FailoverJson {
    nearest_n: u32,
    datacenters: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize, Default, Clone)]
#[serde(rename_all = "PascalCase", default)]
struct DnsJson {
    #[serde(rename = "TTL")]
    ttl: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TemplateJson {
    #[serde(rename = "Type")]
    kind: String,
    regexp: String,
    remove_empty_tags: bool,
}

/// Go's JSON of a slice or map: `null` when empty.
fn listed<T: Clone>(items: &[T]) -> Option<Vec<T>> {
    (!items.is_empty()).then(|| items.to_vec())
}

fn mapped(map: &BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!map.is_empty()).then(|| map.clone())
}

impl QueryJson {
    fn new(query: &PreparedQuery) -> Self {
        let service = &query.service;
        QueryJson {
            id: query.id.clone(),
            name: query.name.clone(),
            session: query.session.clone(),
            token: query.token.clone(),
            service: ServiceJsonOut {
                service: service.service.clone(),
                failover: FailoverJson {
                    nearest_n: service.failover.nearest_n,
                    datacenters: listed(&service.failover.datacenters),
                },
                ignore_check_ids: listed(&service.ignore_check_ids),
                only_passing: service.only_passing,
                near: service.near.clone(),
                tags: listed(&service.tags),
                node_meta: mapped(&service.node_meta),
                service_meta: mapped(&service.service_meta),
                connect: service.connect,
            },
            dns: DnsJson {
                ttl: query.dns.ttl.clone(),
            },
            template: TemplateJson {
                kind: query.template.kind.clone(),
                regexp: query.template.regexp.clone(),
                remove_empty_tags: query.template.remove_empty_tags,
            },
            create_index: query.create_index,
            modify_index: query.modify_index,
        }
    }

    /// Back to the domain type (the body of an execute-remote request).
    fn into_query(self) -> PreparedQuery {
        let service = self.service;
        PreparedQuery {
            id: self.id,
            name: self.name,
            session: self.session,
            token: self.token,
            service: ServiceQuery {
                service: service.service,
                failover: QueryFailover {
                    nearest_n: service.failover.nearest_n,
                    datacenters: service.failover.datacenters.unwrap_or_default(),
                },
                ignore_check_ids: service.ignore_check_ids.unwrap_or_default(),
                only_passing: service.only_passing,
                near: service.near,
                tags: service.tags.unwrap_or_default(),
                node_meta: service.node_meta.unwrap_or_default(),
                service_meta: service.service_meta.unwrap_or_default(),
                connect: service.connect,
            },
            dns: QueryDns { ttl: self.dns.ttl },
            template: QueryTemplate {
                kind: self.template.kind,
                regexp: self.template.regexp,
                remove_empty_tags: self.template.remove_empty_tags,
            },
            create_index: self.create_index,
            modify_index: self.modify_index,
        }
    }
}

/// What an execute answers (Consul's `PreparedQueryExecuteResponse`).
#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ExecuteResponse {
    /// The service the query asked for (rendered).
    pub service: String,
    /// The instances, each `{Node, Service, Checks}`; `[]` when none.
    #[serde(default)]
    pub nodes: Vec<Value>,
    /// The query's DNS options.
    #[serde(rename = "DNS", default)]
    dns: DnsJson,
    /// The datacenter that answered.
    pub datacenter: String,
    /// How many other datacenters were tried.
    #[serde(default)]
    pub failovers: u32,
}

/// The body of `POST /v1/internal/query/execute-remote`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ExecuteRemoteRequest {
    query: QueryJson,
    limit: usize,
}

// ---------------------------------------------------------------------------------------
// CRUD.

/// `POST /v1/query`: stores a definition, answers `{"ID": ...}`. Needs `query:write` on
/// its name (an unnamed query: on the empty name, which only a `query_prefix ""` rule or
/// the default policy decides).
pub async fn create(
    State(context): State<ApiContext>,
    authz: Authz,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    local_query(raw.as_deref(), &context)?;
    let (id, mut definition) = parse_definition(&body)?;
    if id.is_some() {
        return Err(ApiError::field(
            "ID",
            "ID must be empty when creating a new prepared query",
        ));
    }
    authz.require_write(Segment::Query, &definition.name)?;
    create_with_new_id(&context, "prepared query", |id| {
        definition.id = id.to_string();
        Command::QueryCreate(Box::new(definition.clone()))
    })
    .await
}

/// `GET /v1/query`: every definition the caller may read (`query:read` on its name), by
/// id (blocking).
pub async fn list(
    State(context): State<ApiContext>,
    authz: Authz,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref());
    let options = ReadOptions::parse(&query, &context)?;
    let (index, body) = blocking(&context, &options, Table::Queries, |state| {
        let queries: Vec<QueryJson> = state
            .queries
            .values()
            .filter(|q| authz.reads(Segment::Query, &q.name))
            .map(QueryJson::new)
            .collect();
        (state.indexes.queries, queries)
    })
    .await?;
    Ok(json_with_index(index, &body))
}

/// `GET /v1/query/:id`: a one-element array (blocking); 404 `Query not found`, 403 without
/// `query:read` on its name.
pub async fn get(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref());
    let options = ReadOptions::parse(&query, &context)?;
    let (index, body) = blocking(&context, &options, Table::Queries, |state| {
        let found = state.queries.get(&id).map(|q| {
            authz
                .reads(Segment::Query, &q.name)
                .then(|| vec![QueryJson::new(q)])
        });
        (state.indexes.queries, found)
    })
    .await?;
    match body {
        Some(None) => Err(authz.denied()),
        Some(Some(body)) => Ok(json_with_index(index, &body)),
        None => Err(ApiError::plain(StatusCode::NOT_FOUND, NOT_FOUND)),
    }
}

/// `query:write` on the name of the stored query `id` (if it exists).
fn may_change_query(context: &ApiContext, authz: &Authz, id: &str) -> Result<(), ApiError> {
    let name = context
        .store()
        .read(|state| state.queries.get(id).map(|q| q.name.clone()));
    match name {
        Some(name) => authz.require_write(Segment::Query, &name),
        None => Ok(()),
    }
}

/// `PUT /v1/query/:id`: replaces a definition (the id is the path's). Needs `query:write` on
/// its stored name and on its new one.
pub async fn update(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    local_query(raw.as_deref(), &context)?;
    let (_, mut definition) = parse_definition(&body)?;
    may_change_query(&context, &authz, &id)?;
    authz.require_write(Segment::Query, &definition.name)?;
    definition.id = id;
    write(&context, Command::QueryUpdate(Box::new(definition))).await?;
    Ok(empty_ok(&context))
}

/// `DELETE /v1/query/:id`: `query:write` on its name.
pub async fn delete(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    local_query(raw.as_deref(), &context)?;
    may_change_query(&context, &authz, &id)?;
    write(&context, Command::QueryDelete { id }).await?;
    Ok(empty_ok(&context))
}

fn empty_ok(context: &ApiContext) -> Response {
    let mut response = StatusCode::OK.into_response();
    crate::query::set_index(response.headers_mut(), context.store().applied());
    response
}

// ---------------------------------------------------------------------------------------
// Explain and execute.

/// `GET /v1/query/:id-or-name/explain`: `{"Query": rendered definition}`; `query:read` on
/// the stored query's name.
pub async fn explain(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(id_or_name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref());
    let options = ReadOptions::parse(&query, &context)?;
    if let Some(mode) = options.mode {
        context.cluster().linearize(mode).await?;
    }
    let (index, rendered) = context.store().read(|state| {
        let rendered = resolve(&state.queries, &id_or_name).map(|q| {
            if authz.reads(Segment::Query, &q.name) {
                render(q, &id_or_name)
            } else {
                Err(String::new())
            }
        });
        (state.indexes.queries, rendered)
    });
    match rendered {
        Some(Err(why)) if why.is_empty() => Err(authz.denied()),
        None => Err(ApiError::plain(StatusCode::NOT_FOUND, NOT_FOUND)),
        Some(Err(why)) => Err(ApiError::plain(StatusCode::INTERNAL_SERVER_ERROR, why)),
        Some(Ok(rendered)) => Ok(json_with_index(
            index,
            &serde_json::json!({ "Query": QueryJson::new(&rendered) }),
        )),
    }
}

/// Why an execution gave no answer.
#[derive(Debug)]
pub enum ExecuteError {
    /// No query has that id or name.
    NotFound,
    /// The query could not be run.
    Failed(ApiError),
}

impl From<ExecuteError> for ApiError {
    fn from(e: ExecuteError) -> Self {
        match e {
            ExecuteError::NotFound => ApiError::plain(StatusCode::NOT_FOUND, NOT_FOUND),
            ExecuteError::Failed(e) => e,
        }
    }
}

/// `GET /v1/query/:id-or-name/execute` (`?limit=`, `?near=`, `?connect`, `?stale`,
/// `?consistent`). The instances are those the caller may read (`service:read` on the
/// service, `node:read` on the node).
pub async fn execute(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(id_or_name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref());
    let options = ReadOptions::parse(&query, &context)?;
    let limit = limit_of(&query)?;
    let near = query.get("near").map(str::to_string);
    // As Consul, the parameter's presence asks for Connect-capable instances.
    let connect = query.get("connect").is_some();
    if let Some(mode) = options.mode {
        context.cluster().linearize(mode).await?;
    }
    let response = run(
        &context,
        &authz,
        &id_or_name,
        limit,
        near.as_deref(),
        connect,
    )
    .await?;
    Ok(json_with_index(context.store().applied(), &response))
}

fn limit_of(query: &Query) -> Result<usize, ApiError> {
    Ok(query
        .u64("limit")?
        .map_or(0, |limit| usize::try_from(limit).unwrap_or(usize::MAX)))
}

/// `POST /v1/internal/query/execute-remote`: runs a rendered definition in this
/// datacenter for another's failover: selected, shuffled and limited here, never failed
/// over again. The caller's token travels with the request (`?token=`) and filters the
/// instances here too.
pub async fn execute_remote(
    State(context): State<ApiContext>,
    authz: Authz,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref());
    let options = ReadOptions::parse(&query, &context)?;
    let request: ExecuteRemoteRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("Request decode failed: {e}")))?;
    if let Some(mode) = options.mode {
        context.cluster().linearize(mode).await?;
    }
    let definition = request.query.into_query();
    let datacenter = context.datacenter().to_string();
    let response = context.store().read(|state| {
        local_response(
            state,
            &authz,
            &definition,
            &datacenter,
            request.limit,
            None,
            &BTreeMap::new(),
            rand::random(),
        )
    });
    Ok(json_with_index(context.store().applied(), &response))
}

/// The instances of this datacenter a rendered query selects: shuffled, then, when it is
/// near a node, sorted by the estimated round trip from that node (instances on nodes
/// without a coordinate last; nothing moves when the node has none) with the node's own
/// instance swapped first, at most `limit` (0: all), without those the caller may not
/// read.
#[allow(clippy::too_many_arguments)]
fn local_response(
    state: &StateView,
    authz: &Authz,
    definition: &PreparedQuery,
    datacenter: &str,
    limit: usize,
    near: Option<&str>,
    coordinates: &dyn Coordinates,
    seed: u64,
) -> ExecuteResponse {
    let mut selected = select(state, &definition.service);
    selected.retain(|s| authz.reads_instance(&s.instance.name, &s.instance.node));
    shuffle(&mut selected, seed);
    if let Some(near) = near.filter(|near| !near.is_empty()) {
        selected = sort_by_distance(selected, near, coordinates, |s| s.node.name.as_str());
        put_near_node_first(&mut selected, near, |s| s.node.name.as_str());
    }
    if limit > 0 {
        selected.truncate(limit);
    }
    let nodes = selected
        .iter()
        .filter_map(|s| {
            serde_json::to_value(HealthEntryJson {
                node: NodeJson::new(s.node),
                service: ServiceJson::new(s.instance, datacenter),
                checks: s.checks.iter().map(|c| CheckJson::new(c)).collect(),
            })
            .ok()
        })
        .collect();
    ExecuteResponse {
        service: definition.service.service.clone(),
        nodes,
        dns: DnsJson {
            ttl: definition.dns.ttl.clone(),
        },
        datacenter: datacenter.to_string(),
        failovers: 0,
    }
}

/// Runs the query `id_or_name` as Consul's `PreparedQuery.Execute` does: here first, then,
/// only when nothing was found, the failover datacenters in order until one has instances.
/// `near` (`?near=`) overrides the query's `Near`; `_agent` is this node. `connect` asks
/// for Connect-capable instances, whatever the query says. `authz` leaves out the
/// instances the caller may not read, here and in the datacenters failed over to.
pub async fn run(
    context: &ApiContext,
    authz: &Authz,
    id_or_name: &str,
    limit: usize,
    near: Option<&str>,
    connect: bool,
) -> Result<ExecuteResponse, ExecuteError> {
    let datacenter = context.datacenter().to_string();
    let resolved = context.store().read(|state| {
        let definition = resolve(&state.queries, id_or_name)?;
        Some(render(definition, id_or_name).map(|mut rendered| {
            rendered.service.connect |= connect;
            let near = match near.unwrap_or(&rendered.service.near) {
                "_agent" => context.node().to_string(),
                // The caller's address is not known here, so `_ip` names no node.
                "_ip" => String::new(),
                other => other.to_string(),
            };
            // The LAN pool's coordinates, taken only for a query near a node.
            let coordinates = if near.is_empty() {
                BTreeMap::new()
            } else {
                super::coordinate::known(context)
            };
            let response = local_response(
                state,
                authz,
                &rendered,
                &datacenter,
                limit,
                Some(&near),
                &coordinates,
                rand::random(),
            );
            (rendered, response)
        }))
    });
    let (rendered, mut response) = match resolved {
        None => return Err(ExecuteError::NotFound),
        Some(Err(why)) => {
            return Err(ExecuteError::Failed(ApiError::plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                why,
            )))
        }
        Some(Ok(found)) => found,
    };
    if !response.nodes.is_empty() {
        return Ok(response);
    }
    let federation = context.federation().clone();
    let others: Vec<String> = federation
        .datacenters()
        .into_iter()
        .filter(|dc| *dc != datacenter)
        .collect();
    let targets = failover_targets(&others, &rendered.service.failover);
    let body = match serde_json::to_vec(&ExecuteRemoteRequest {
        query: QueryJson::new(&rendered),
        limit,
    }) {
        Ok(body) => body,
        Err(e) => {
            return Err(ExecuteError::Failed(ApiError::with_status(
                StatusCode::INTERNAL_SERVER_ERROR,
                e.to_string(),
            )))
        }
    };
    let mut failovers = 0;
    for dc in targets {
        failovers += 1;
        let relays = match federation.route(&dc) {
            Route::Via(relays) => relays,
            other => {
                tracing::debug!(datacenter = %dc, route = ?other, "prepared query failover skips a datacenter without a route");
                continue;
            }
        };
        let addresses: Vec<SocketAddr> = relays.iter().map(|relay| relay.http_addr).collect();
        match execute_in(context.forwarder(), &addresses, &dc, authz.secret(), &body).await {
            Ok(remote) => {
                let found = !remote.nodes.is_empty();
                response.nodes = remote.nodes;
                response.datacenter = remote.datacenter;
                if found {
                    break;
                }
            }
            Err(why) => {
                tracing::info!(datacenter = %dc, "prepared query failover failed: {why}");
            }
        }
    }
    response.failovers = failovers;
    Ok(response)
}

/// Asks the relays of `dc`, in order, to run a rendered query there; the first that answers
/// decides. Within [`DATACENTER_TIMEOUT`] for all of them.
async fn execute_in(
    forwarder: &crate::federate::Forwarder,
    relays: &[SocketAddr],
    dc: &str,
    token: Option<&str>,
    body: &[u8],
) -> Result<ExecuteResponse, String> {
    let mut path = format!("{EXECUTE_REMOTE_PATH}?dc={}", encode_component(dc));
    if let Some(token) = token {
        path.push_str(&format!("&token={}", encode_component(token)));
    }
    let ask = async {
        let mut last = format!("no server of {dc} is known");
        for relay in relays {
            match forwarder
                .call(*relay, Method::POST, &path, Bytes::copy_from_slice(body))
                .await
            {
                Ok((status, bytes)) if status == StatusCode::OK => {
                    return serde_json::from_slice::<ExecuteResponse>(&bytes)
                        .map_err(|e| format!("{relay} answered unreadable JSON: {e}"));
                }
                Ok((status, bytes)) => {
                    return Err(format!(
                        "{relay} answered {status}: {}",
                        String::from_utf8_lossy(&bytes)
                    ))
                }
                Err(why) => last = format!("{relay}: {why}"),
            }
        }
        Err(last)
    };
    tokio::time::timeout(DATACENTER_TIMEOUT, ask)
        .await
        .unwrap_or_else(|_| Err(format!("no answer from {dc} within {DATACENTER_TIMEOUT:?}")))
}

/// Percent-encodes a query-string value.
fn encode_component(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

// ---------------------------------------------------------------------------------------
// DNS.

/// Prepared queries for the DNS server. The DNS server is bound before the API exists, so
/// it is handed this first and the API context later ([`DnsQueries::serve`]); until then
/// every query fails.
#[derive(Default)]
pub struct DnsQueries {
    context: OnceLock<ApiContext>,
}

impl DnsQueries {
    /// A handle with no API behind it yet.
    pub fn new() -> Arc<Self> {
        Arc::new(DnsQueries::default())
    }

    /// Runs queries through `context` from now on.
    pub fn serve(&self, context: ApiContext) {
        // A second context is ignored: the first one serves for the life of the process.
        let _ = self.context.set(context);
    }
}

impl PreparedQueries for DnsQueries {
    fn execute<'a>(&'a self, name: &'a str) -> QueryPending<'a> {
        Box::pin(async move {
            let Some(context) = self.context.get() else {
                return Err(QueryFailure::Failed("the API is not serving yet".into()));
            };
            // DNS answers with the agent's default token (else the anonymous one).
            let authz = Authz::resolve(context, &Default::default(), None)
                .map_err(|_| QueryFailure::Failed("ACL not found".into()))?;
            // DNS reads this node's state, as Consul's DNS allows stale reads by default.
            let response =
                run(context, &authz, name, 0, None, false)
                    .await
                    .map_err(|e| match e {
                        ExecuteError::NotFound => QueryFailure::NotFound,
                        ExecuteError::Failed(e) => QueryFailure::Failed(e.message),
                    })?;
            Ok(dns_answer(&response))
        })
    }
}

/// The instances of an execute answer, as DNS needs them.
fn dns_answer(response: &ExecuteResponse) -> QueryAnswer {
    let text = |value: &Value, path: [&str; 2]| {
        value[path[0]][path[1]]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let instances = response
        .nodes
        .iter()
        .map(|entry| QueryInstance {
            node: text(entry, ["Node", "Node"]),
            node_address: text(entry, ["Node", "Address"]),
            address: text(entry, ["Service", "Address"]),
            port: entry["Service"]["Port"]
                .as_u64()
                .and_then(|port| u16::try_from(port).ok())
                .unwrap_or(0),
        })
        .collect();
    let ttl = (!response.dns.ttl.is_empty())
        .then(|| parse_duration(&response.dns.ttl))
        .flatten()
        .map(|ttl| u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX));
    QueryAnswer {
        ttl,
        datacenter: response.datacenter.clone(),
        instances,
    }
}

#[cfg(test)]
#[path = "prepared_tests.rs"]
mod tests;
