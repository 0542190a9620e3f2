//! ACL replication from the primary datacenter (Consul's `primary_datacenter`).
//!
//! The primary holds the policies and global tokens. The leader of every other datacenter
//! runs [`replicate`]: a blocking query on the primary's ACL index
//! (`GET /v1/internal/acl/replicate`, which needs `acl:write`: the agent's `replication`
//! token), then the difference between what came back and its own state, written as one
//! `Command::AclReplicate` entry. Local tokens are never sent nor touched. What was
//! replicated stays usable when the primary is out of reach; replication resumes with the
//! next answer. `GET /v1/acl/replication` reports how it goes, in Consul's shape.

use std::time::{Duration, SystemTime};

use atoll_acl::{Access, Global, Resource};
use atoll_state::acl::{AclPolicy, AclToken};
use atoll_state::{Command, State as StateView, Table};
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use crate::acl::Authz;
use crate::error::ApiError;
use crate::query::{blocking, json_with_index, Query, ReadOptions};
use crate::ApiContext;

/// The internal path a secondary's leader reads the primary's ACL tables from.
pub const REPLICATE_PATH: &str = "/v1/internal/acl/replicate";

/// How long one blocking read of the primary waits for a change; short enough that a
/// leader that lost its leadership meanwhile stops soon after.
const WAIT: Duration = Duration::from_secs(30);
/// How often a node that is not the leader looks whether it became it.
const LEADER_POLL: Duration = Duration::from_millis(500);
/// The first and the longest pause after a failed round.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// How replication goes on this node; only its leader runs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicationStatus {
    /// Whether this node replicates now (it is a secondary's leader).
    pub running: bool,
    /// The primary's ACL index the last successful round brought this datacenter to.
    pub replicated_index: u64,
    /// When a round last succeeded.
    pub last_success: Option<SystemTime>,
    /// When a round last failed.
    pub last_error: Option<SystemTime>,
    /// Why it failed.
    pub last_error_message: String,
}

/// What the primary answers on [`REPLICATE_PATH`]: its ACL index, every policy and every
/// global token (secrets included). An internal shape: both ends run this release.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReplicationData {
    /// The primary's ACL index.
    #[serde(rename = "Index")]
    pub index: u64,
    /// Every policy (the builtin one included), rules as written.
    #[serde(rename = "Policies")]
    pub policies: Vec<AclPolicy>,
    /// Every global token (the anonymous one included).
    #[serde(rename = "Tokens")]
    pub tokens: Vec<AclToken>,
}

impl ReplicationData {
    /// What `state` holds for replication.
    pub fn of(state: &StateView) -> Self {
        ReplicationData {
            index: state.indexes.acl,
            policies: state
                .acl_policies_all()
                .into_iter()
                .map(|policy| AclPolicy {
                    // Each side parses the rules itself.
                    parsed: Vec::new(),
                    ..policy
                })
                .collect(),
            tokens: state
                .acl_tokens_all()
                .into_iter()
                .filter(|token| !token.local)
                .collect(),
        }
    }
}

/// `GET /v1/internal/acl/replicate` (blocking on the ACL tables): [`ReplicationData`];
/// needs `acl:write`, since it carries secrets.
pub async fn replication_data(
    State(context): State<ApiContext>,
    authz: Authz,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    if !context.acl().enabled {
        return Err(ApiError::plain(
            StatusCode::UNAUTHORIZED,
            "ACL support disabled",
        ));
    }
    authz.require(Resource::Global(Global::Acl), Access::Write)?;
    let query = Query::parse(raw.as_deref());
    let options = ReadOptions::parse(&query, &context)?;
    let (index, data) = blocking(&context, &options, Table::Acl, |state: &StateView| {
        (state.indexes.acl, ReplicationData::of(state))
    })
    .await?;
    Ok(json_with_index(index, &data))
}

/// Consul's `/v1/acl/replication` answer.
#[derive(Debug, Serialize)]
struct StatusJson {
    #[serde(rename = "Enabled")]
    enabled: bool,
    #[serde(rename = "Running")]
    running: bool,
    #[serde(rename = "SourceDatacenter")]
    source_datacenter: String,
    #[serde(rename = "ReplicationType")]
    replication_type: String,
    #[serde(rename = "ReplicatedIndex")]
    replicated_index: u64,
    #[serde(rename = "ReplicatedRoleIndex")]
    replicated_role_index: u64,
    #[serde(rename = "ReplicatedTokenIndex")]
    replicated_token_index: u64,
    #[serde(rename = "LastSuccess")]
    last_success: String,
    #[serde(rename = "LastError")]
    last_error: String,
    #[serde(rename = "LastErrorMessage")]
    last_error_message: String,
}

/// A time as Consul writes it; never is Go's zero time.
fn consul_time(at: Option<SystemTime>) -> String {
    match at {
        Some(at) => humantime::format_rfc3339_seconds(at).to_string(),
        None => "0001-01-01T00:00:00Z".to_string(),
    }
}

/// `GET /v1/acl/replication`: whether this datacenter replicates ACLs from the primary and
/// how it goes, as the node asked knows it (its leader runs replication). Needs no token,
/// as Consul; 401 with ACLs off.
pub async fn status(State(context): State<ApiContext>) -> Result<Response, ApiError> {
    let settings = context.acl();
    if !settings.enabled {
        return Err(ApiError::plain(
            StatusCode::UNAUTHORIZED,
            "ACL support disabled",
        ));
    }
    let enabled = settings.replicates_into(context.datacenter());
    let status = context.acl_replication().borrow().clone();
    let body = StatusJson {
        enabled,
        running: enabled && status.running,
        source_datacenter: if settings.primary_datacenter.is_empty() {
            context.datacenter().to_string()
        } else {
            settings.primary_datacenter.clone()
        },
        replication_type: if enabled { "tokens" } else { "" }.to_string(),
        replicated_index: status.replicated_index,
        replicated_role_index: status.replicated_index,
        replicated_token_index: status.replicated_index,
        last_success: consul_time(status.last_success),
        last_error: consul_time(status.last_error),
        last_error_message: status.last_error_message,
    };
    Ok(json_with_index(context.store().applied(), &body))
}

/// Replicates the primary's policies and global tokens into this datacenter for as long as
/// the process lives, while this node is the leader. Run on the servers of a secondary
/// datacenter with ACLs on.
pub async fn replicate(context: ApiContext) {
    let primary = context.acl().primary_datacenter.clone();
    let mut index = 0;
    let mut pause = RETRY_FIRST;
    loop {
        if !context.cluster().is_leader() {
            if context.acl_replication().borrow().running {
                context
                    .acl_replication()
                    .send_modify(|status| status.running = false);
                tracing::info!("ACL replication from {primary} stopped: not the leader");
            }
            // A later leadership starts from a full read.
            index = 0;
            tokio::time::sleep(LEADER_POLL).await;
            continue;
        }
        if !context.acl_replication().borrow().running {
            context
                .acl_replication()
                .send_modify(|status| status.running = true);
            tracing::info!("ACL replication from {primary} started");
        }
        match round(&context, &primary, index).await {
            Ok(upstream) => {
                index = upstream;
                pause = RETRY_FIRST;
                context.acl_replication().send_modify(|status| {
                    status.replicated_index = upstream;
                    status.last_success = Some(SystemTime::now());
                });
            }
            Err(message) => {
                tracing::debug!("ACL replication from {primary}: {message}");
                context.acl_replication().send_modify(|status| {
                    if status.last_error_message != message {
                        tracing::warn!("ACL replication from {primary} failed: {message}");
                    }
                    status.last_error = Some(SystemTime::now());
                    status.last_error_message = message;
                });
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
            }
        }
    }
}

/// One round: waits for the primary's ACL index to pass `index`, writes the difference, and
/// returns the primary's index.
async fn round(context: &ApiContext, primary: &str, index: u64) -> Result<u64, String> {
    let path = format!("{REPLICATE_PATH}?index={index}&wait={}s", WAIT.as_secs());
    let token = context.acl().tokens().replication;
    let (status, body) = crate::federate::fetch(context, primary, &path, token.as_deref()).await;
    if status != StatusCode::OK {
        let text = String::from_utf8_lossy(&body);
        return Err(format!(
            "the primary datacenter {primary} answered {}: {}",
            status.as_u16(),
            text.trim()
        ));
    }
    let upstream: ReplicationData = serde_json::from_slice(&body).map_err(|e| {
        format!("the primary datacenter {primary} answered what is not ACL data: {e}")
    })?;
    let diff = context
        .store()
        .read(|state| state.acl_replication_diff(&upstream.policies, &upstream.tokens));
    if !diff.is_empty() {
        let (policies, tokens) = (
            diff.policies.len() + diff.policy_deletes.len(),
            diff.tokens.len() + diff.token_deletes.len(),
        );
        crate::execute::write(context, Command::AclReplicate(Box::new(diff)))
            .await
            .map_err(|refusal| {
                format!(
                    "cannot write the replicated ACLs: {}",
                    ApiError::from(refusal).message
                )
            })?;
        tracing::info!(
            policies,
            tokens,
            upstream_index = upstream.index,
            "ACLs replicated from {primary}"
        );
    }
    Ok(upstream.index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_consuls_and_never_is_go_zero() {
        assert_eq!(consul_time(None), "0001-01-01T00:00:00Z");
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(consul_time(Some(at)), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn replication_data_leaves_local_tokens_and_parsed_rules_out() {
        let mut state = StateView::default();
        let mut local = AclToken {
            accessor_id: "l".into(),
            secret_id: atoll_state::acl::Secret::new("ls"),
            local: true,
            ..Default::default()
        };
        state.apply(
            1,
            &Command::AclTokenSet {
                token: Box::new(local.clone()),
                create: true,
            },
        );
        local.accessor_id = "g".into();
        local.secret_id = atoll_state::acl::Secret::new("gs");
        local.local = false;
        state.apply(
            2,
            &Command::AclTokenSet {
                token: Box::new(local),
                create: true,
            },
        );
        state.apply(
            3,
            &Command::AclPolicySet {
                policy: Box::new(AclPolicy {
                    id: "p".into(),
                    name: "p".into(),
                    rules: "key \"a\" { policy = \"read\" }".into(),
                    ..Default::default()
                }),
                create: true,
            },
        );
        let data = ReplicationData::of(&state);
        assert_eq!(data.index, 3);
        let accessors: Vec<&str> = data.tokens.iter().map(|t| t.accessor_id.as_str()).collect();
        assert!(accessors.contains(&"g") && !accessors.contains(&"l"));
        assert!(data.policies.iter().all(|p| p.parsed.is_empty()));
        // Through JSON, secrets included, and nothing left to replicate into a copy.
        let text = serde_json::to_vec(&data).unwrap();
        let back: ReplicationData = serde_json::from_slice(&text).unwrap();
        assert!(back.tokens.iter().any(|t| t.secret_id.matches("gs")));
        assert!(state
            .acl_replication_diff(&back.policies, &back.tokens)
            .is_empty());
    }
}
