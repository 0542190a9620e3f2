//! `/v1/operator/raft/*` and membership changes (`leave`, `force-leave`).

use crate::extract::Path;
use atoll_state::{Command, Deregistration};
use axum::extract::{RawQuery, State};
use axum::response::Response;
use serde_json::json;

use super::agent::empty_ok;
use crate::acl::Authz;
use crate::error::ApiError;
use crate::execute::write;
use crate::query::{json_with_index, Query};
use crate::ApiContext;
use atoll_acl::{Access, Global, Resource, Segment};

/// `GET /v1/operator/raft/configuration`.
pub async fn configuration(
    State(context): State<ApiContext>,
    authz: Authz,
) -> Result<Response, ApiError> {
    authz.require(Resource::Global(Global::Operator), Access::Read)?;
    let cluster = context.cluster();
    let leader = cluster.leader_addr();
    let servers: Vec<_> = cluster
        .members()
        .into_iter()
        .filter(|(_, member, _)| member.server)
        .map(|(id, member, voter)| {
            json!({
                "ID": id.to_string(),
                "Node": member.name,
                "Address": member.rpc_addr,
                "Leader": leader.as_deref() == Some(member.rpc_addr.as_str()),
                "Voter": voter,
                "ProtocolVersion": "3",
            })
        })
        .collect();
    let index = context.store().applied();
    Ok(json_with_index(
        index,
        &json!({ "Servers": servers, "Index": index }),
    ))
}

/// `GET /v1/operator/raft/storage` (atoll's own): what this node's data dir holds.
pub async fn storage(
    State(context): State<ApiContext>,
    authz: Authz,
) -> Result<Response, ApiError> {
    authz.require(Resource::Global(Global::Operator), Access::Read)?;
    let Some(report) = context.cluster().storage_report().await? else {
        return Err(ApiError::not_found("This node keeps no Raft storage"));
    };
    let index = context.store().applied();
    Ok(json_with_index(
        index,
        &json!({
            "Path": report.path,
            "FileBytes": report.file_bytes,
            "AllocatedBytes": report.allocated_bytes,
            "StoredBytes": report.stored_bytes,
            "LogEntries": report.log_entries,
            "LogFirstIndex": report.log_first_index,
            "LogLastIndex": report.log_last_index,
            "LogBytes": report.log_bytes,
            "SnapshotIndex": report.snapshot_index,
            "SnapshotBytes": report.snapshot_bytes,
            "SnapshotPath": report.snapshot_path,
            "DataDirBytes": report.data_dir_bytes,
        }),
    ))
}

/// `DELETE /v1/operator/raft/peer?id=ID` or `?address=IP:PORT`.
pub async fn remove_peer(
    State(context): State<ApiContext>,
    authz: Authz,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    authz.require(Resource::Global(Global::Operator), Access::Write)?;
    let query = Query::parse(raw.as_deref());
    let members = context.cluster().members();
    let found = match (query.get("id"), query.get("address")) {
        (Some(id), _) => members.iter().find(|(i, _, _)| i.to_string() == id),
        (None, Some(address)) => members.iter().find(|(_, m, _)| m.rpc_addr == address),
        (None, None) => return Err(ApiError::field("id", "Must specify either ?id with the server's ID or ?address with IP:port of peer to remove")),
    };
    let Some((id, _, _)) = found else {
        return Err(ApiError::not_found("No such Raft peer"));
    };
    context.cluster().remove_member(*id).await?;
    Ok(empty_ok(&context))
}

/// `PUT /v1/agent/leave`: this node leaves gracefully (its services leave the catalog, a
/// server leaves the Raft configuration) and the agent stops.
pub async fn leave(State(context): State<ApiContext>, authz: Authz) -> Result<Response, ApiError> {
    authz.require_write(Segment::Agent, context.node())?;
    context.agent().leave().await?;
    Ok(empty_ok(&context))
}

/// `PUT /v1/agent/force-leave/:node` (`?prune`): removes a (failed) node from the cluster and
/// the catalog. The member list is the Raft membership, which keeps no left members, so the
/// node leaves the list at once, with or without `?prune` (Consul's `?prune` form).
pub async fn force_leave(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(node): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    authz.require(Resource::Global(Global::Operator), Access::Write)?;
    let query = Query::parse(raw.as_deref());
    crate::query::check_datacenter(&query, &context)?;
    let member = context
        .cluster()
        .members()
        .into_iter()
        .find(|(_, m, _)| m.name == node);
    let in_catalog = context.store().read(|s| s.nodes.contains_key(&node));
    if member.is_none() && !in_catalog {
        return Err(ApiError::not_found(format!("Unknown node {node:?}")));
    }
    if let Some((id, _, _)) = member {
        context.cluster().remove_member(id).await?;
    }
    let command = Command::Deregister(Deregistration {
        node,
        service_id: None,
        check_id: None,
    });
    write(&context, command).await?;
    Ok(empty_ok(&context))
}
