//! The one way requests reach the cluster, and the one mapping of what can go wrong to
//! Consul's and Marathon's answers.
//!
//! Handlers parse a request into a typed [`Command`] (or read options), then hand it here.
//! This is where a request meets the cluster: the datacenter it names is decided here
//! ([`reach`]; a request for another datacenter is forwarded before it reaches a handler, by
//! [`crate::federate`], so what reaches `reach` naming another is one no route leads to), rejections of the state machine and cluster failures become one
//! [`Refusal`], and each API turns a refusal into its own status and body in one `From`
//! impl. Authorization of a command (ACLs) belongs in [`write_in`], before it is proposed.

use atoll_cluster::ClusterError;
use atoll_state::{Command, Outcome, Rejection};
use axum::http::StatusCode;
use axum::response::Response;
use rand::RngCore;

use crate::error::ApiError;
use crate::federate::NO_PATH;
use crate::marathon::routes::MarathonError;
use crate::query::json_with_index;
use crate::ApiContext;

/// Why a request was not carried out.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// The request names a datacenter this node cannot reach, in `?dc=` or in a field of
    /// its body (`field`).
    NoPathToDatacenter {
        /// The datacenter asked for.
        dc: String,
        /// The body field that named it; `None` for `?dc=`.
        field: Option<&'static str>,
    },
    /// The cluster could not commit or confirm it.
    Cluster(ClusterError),
    /// The state machine refused the command; nothing changed.
    Rejected(Rejection),
}

impl From<ClusterError> for Refusal {
    fn from(e: ClusterError) -> Self {
        Refusal::Cluster(e)
    }
}

impl From<Rejection> for Refusal {
    fn from(e: Rejection) -> Self {
        Refusal::Rejected(e)
    }
}

/// Decides whether a request whose `?dc=` names `dc` (none or empty: this one) can be
/// served. With [`reach_field`], the only place the API tells its own datacenter from another.
pub fn reach(context: &ApiContext, dc: Option<&str>) -> Result<(), Refusal> {
    reach_named(context, dc, None)
}

/// Like [`reach`], for a datacenter named by the body field `field`.
pub fn reach_field(
    context: &ApiContext,
    field: &'static str,
    dc: Option<&str>,
) -> Result<(), Refusal> {
    reach_named(context, dc, Some(field))
}

fn reach_named(
    context: &ApiContext,
    dc: Option<&str>,
    field: Option<&'static str>,
) -> Result<(), Refusal> {
    match dc {
        Some(dc)
            if !dc.is_empty()
                && dc != context.datacenter()
                && context.federation().route(dc) != atoll_cluster::Route::Local =>
        {
            Err(Refusal::NoPathToDatacenter {
                dc: dc.to_string(),
                field,
            })
        }
        _ => Ok(()),
    }
}

/// Writes a command for this datacenter; a rejection is a refusal.
pub async fn write(context: &ApiContext, command: Command) -> Result<Outcome, Refusal> {
    write_in(context, None, command).await
}

/// How many fresh ids a create tries when one is taken (a UUID collision).
const ID_ATTEMPTS: usize = 3;

/// Writes the command `make` builds around a fresh random id (a session's, a prepared
/// query's), trying another id when the state machine finds that one taken; answers Consul's
/// `{"ID": ...}` with the id written. `what` names the object in the error when every attempt
/// collided.
pub async fn create_with_new_id(
    context: &ApiContext,
    what: &str,
    mut make: impl FnMut(&str) -> Command,
) -> Result<Response, ApiError> {
    for attempt in 1..=ID_ATTEMPTS {
        let id = new_id();
        match write(context, make(&id)).await {
            Ok(_) => {
                return Ok(json_with_index(
                    context.store().applied(),
                    &serde_json::json!({ "ID": id }),
                ))
            }
            Err(Refusal::Rejected(Rejection::Conflict(_))) if attempt < ID_ATTEMPTS => continue,
            Err(refusal) => return Err(refusal.into()),
        }
    }
    Err(ApiError::with_status(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("Failed to generate a unique {what} ID"),
    ))
}

/// A random (version 4) UUID, as Consul's session and prepared query ids.
pub(crate) fn new_id() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Writes a command for the datacenter its body's `Datacenter` names (`None`: this one); a
/// rejection is a refusal.
pub async fn write_in(
    context: &ApiContext,
    dc: Option<&str>,
    command: Command,
) -> Result<Outcome, Refusal> {
    reach_field(context, "Datacenter", dc)?;
    match context.cluster().write(command).await? {
        (Outcome::Rejected(rejection), _) => Err(rejection.into()),
        (outcome, _) => Ok(outcome),
    }
}

/// Consul's answers: a missing leader, a timeout and an unreachable `?dc=` are 500s (which
/// its clients retry), an invalid request, a body naming an unreachable datacenter among them,
/// a 400 naming the field; a failed precondition is Consul's 500 with its plain-text body.
impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            // Consul's exact text, which its clients and tools match on.
            Refusal::NoPathToDatacenter { field, .. } => match field {
                Some(field) => ApiError::field(field, NO_PATH),
                None => ApiError::plain(StatusCode::INTERNAL_SERVER_ERROR, NO_PATH),
            },
            Refusal::Cluster(e) => {
                let status = match e {
                    ClusterError::Refused(_) => StatusCode::BAD_REQUEST,
                    // WebDAV's 507: the request was fine, the server has no room to record it.
                    ClusterError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
                    ClusterError::NoLeader
                    | ClusterError::NotLeader(_)
                    | ClusterError::Timeout
                    | ClusterError::Storage(_)
                    | ClusterError::Stopped(_) => StatusCode::INTERNAL_SERVER_ERROR,
                };
                ApiError::with_status(status, e.to_string())
            }
            Refusal::Rejected(Rejection::NotFound(message)) => ApiError::not_found(message),
            Refusal::Rejected(Rejection::Invalid(message)) => ApiError::bad_request(message),
            Refusal::Rejected(Rejection::Conflict(message)) => {
                ApiError::with_status(StatusCode::CONFLICT, message)
            }
            Refusal::Rejected(Rejection::Precondition(message)) => {
                ApiError::plain(StatusCode::INTERNAL_SERVER_ERROR, message)
            }
        }
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> Self {
        Refusal::Cluster(e).into()
    }
}

impl From<Rejection> for ApiError {
    fn from(e: Rejection) -> Self {
        Refusal::Rejected(e).into()
    }
}

/// Marathon's answers: the cluster unavailable is a 503, an invalid app a 422, an existing
/// id a 409.
impl From<Refusal> for MarathonError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::NoPathToDatacenter { .. } => {
                MarathonError::new(StatusCode::SERVICE_UNAVAILABLE, NO_PATH)
            }
            Refusal::Cluster(e) => {
                let status = match e {
                    ClusterError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
                    _ => StatusCode::SERVICE_UNAVAILABLE,
                };
                MarathonError::new(status, e.to_string())
            }
            Refusal::Rejected(Rejection::NotFound(message)) => {
                MarathonError::new(StatusCode::NOT_FOUND, message)
            }
            Refusal::Rejected(Rejection::Invalid(message)) => {
                MarathonError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
            }
            Refusal::Rejected(Rejection::Conflict(message)) => {
                MarathonError::new(StatusCode::CONFLICT, message)
            }
            Refusal::Rejected(Rejection::Precondition(message)) => {
                MarathonError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
            }
        }
    }
}

impl From<ClusterError> for MarathonError {
    fn from(e: ClusterError) -> Self {
        Refusal::Cluster(e).into()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use atoll_cluster::MemoryCluster;
    use axum::response::IntoResponse;

    use super::*;

    async fn context() -> (ApiContext, Arc<MemoryCluster>) {
        let cluster = Arc::new(MemoryCluster::new("n1", "dc1"));
        (crate::tests::joined_context(cluster.clone()).await, cluster)
    }

    fn set(key: &str) -> Command {
        Command::KvSet {
            key: key.into(),
            value: b"v".to_vec(),
            flags: 0,
            cas: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_foreign_datacenter_is_refused_before_anything_is_written() {
        let (context, _) = context().await;
        let before = context.store().applied();
        let refusal = write_in(&context, Some("dc2"), set("k")).await.unwrap_err();
        assert!(matches!(&refusal, Refusal::NoPathToDatacenter { dc, .. } if dc == "dc2"));
        assert_eq!(context.store().applied(), before);
        // Named in the body: a 400 naming the field; in `?dc=`: Consul's 500.
        let consul = ApiError::from(refusal);
        assert_eq!(consul.status, StatusCode::BAD_REQUEST);
        assert_eq!(consul.field.as_deref(), Some("Datacenter"));
        assert_eq!(consul.message, "No path to datacenter");
        let consul = ApiError::from(reach(&context, Some("dc2")).unwrap_err());
        assert_eq!(consul.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(consul.plain);
        assert_eq!(consul.message, "No path to datacenter");
        assert!(reach(&context, Some("dc1")).is_ok());
        // This datacenter, named or not, is written.
        assert!(write_in(&context, Some("dc1"), set("k")).await.is_ok());
        assert!(write_in(&context, Some(""), set("k")).await.is_ok());
        assert!(write(&context, set("k")).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn rejections_and_cluster_failures_map_to_each_apis_status() {
        let (context, cluster) = context().await;
        let missing = Command::DeleteApp {
            app_id: "/none".into(),
            deployment: None,
        };
        let cases: Vec<(Refusal, StatusCode, StatusCode)> = vec![
            (
                write(&context, missing).await.unwrap_err(),
                StatusCode::NOT_FOUND,
                StatusCode::NOT_FOUND,
            ),
            (
                write(&context, set("")).await.unwrap_err(),
                StatusCode::BAD_REQUEST,
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (
                Refusal::Rejected(Rejection::Conflict("taken".into())),
                StatusCode::CONFLICT,
                StatusCode::CONFLICT,
            ),
            (
                Refusal::Cluster(ClusterError::InsufficientStorage("full".into())),
                StatusCode::INSUFFICIENT_STORAGE,
                StatusCode::INSUFFICIENT_STORAGE,
            ),
        ];
        for (refusal, consul, marathon) in cases {
            let text = format!("{refusal:?}");
            assert_eq!(ApiError::from(refusal.clone()).status, consul, "{text}");
            let response = MarathonError::from(refusal).into_response();
            assert_eq!(response.status(), marathon, "{text}");
        }
        // Without a leader: Consul's 500 (retried by its clients), Marathon's 503.
        cluster.set_leader(false);
        let refusal = write(&context, set("k")).await.unwrap_err();
        assert!(matches!(refusal, Refusal::Cluster(ClusterError::NoLeader)));
        assert_eq!(
            ApiError::from(refusal).status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        let refusal = write(&context, set("k")).await.unwrap_err();
        assert_eq!(
            MarathonError::from(refusal).into_response().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
