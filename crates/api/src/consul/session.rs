//! `/v1/session/*`: Consul's sessions. Creating and destroying one are Raft writes;
//! renewing one resets the leader's timer (see `atoll_agent::Sessions`) and writes nothing.

use atoll_state::{Command, Session, State as StateView, Table};
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::input::parse_session_create;
use super::wire::SessionJson;
use crate::acl::Authz;
use crate::error::ApiError;
use crate::execute::{create_with_new_id, write};
use crate::extract::Path;
use crate::query::{blocking, json_with_index, local_query, Query, ReadOptions};
use crate::ApiContext;
use atoll_acl::Segment;

/// `PUT /v1/session/create`: answers `{"ID": ...}`. Needs `session:write` on its node.
pub async fn create(
    State(context): State<ApiContext>,
    authz: Authz,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    local_query(raw.as_deref(), &context)?;
    let mut session = parse_session_create(&body, context.node())?;
    authz.require_write(Segment::Session, &session.node)?;
    create_with_new_id(&context, "session", |id| {
        session.id = id.to_string();
        Command::SessionCreate(Box::new(session.clone()))
    })
    .await
}

/// `session:write` on the node of the session `id`, if it exists.
fn may_write_session(context: &ApiContext, authz: &Authz, id: &str) -> Result<(), ApiError> {
    let node = context
        .store()
        .read(|state| state.sessions.get(id).map(|s| s.node.clone()));
    match node {
        Some(node) => authz.require_write(Segment::Session, &node),
        None => Ok(()),
    }
}

/// `PUT /v1/session/destroy/:id`: `true`, also for a session that no longer exists.
pub async fn destroy(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    local_query(raw.as_deref(), &context)?;
    may_write_session(&context, &authz, &id)?;
    write(&context, Command::SessionDestroy { id }).await?;
    Ok(json_with_index(context.store().applied(), &true))
}

/// `PUT /v1/session/renew/:id`: a one-element array of the session; 404 with Consul's
/// text when the leader knows no such session.
pub async fn renew(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    local_query(raw.as_deref(), &context)?;
    may_write_session(&context, &authz, &id)?;
    let not_found = || {
        ApiError::plain(
            StatusCode::NOT_FOUND,
            format!("Session id '{id}' not found"),
        )
    };
    if !context.agent().sessions().renew(&id).await? {
        return Err(not_found());
    }
    // The leader has it; this node shows it once it has applied as far as the leader.
    context
        .cluster()
        .linearize(atoll_cluster::ReadMode::Default)
        .await?;
    let body = context.store().read(|state| {
        state
            .sessions
            .get(&id)
            .map(|session| serde_json::to_value(vec![SessionJson::new(session)]))
    });
    match body {
        Some(Ok(body)) => Ok(json_with_index(context.store().applied(), &body)),
        _ => Err(not_found()),
    }
}

/// `GET /v1/session/info/:id`: an array of zero or one session (blocking).
pub async fn info(
    state: State<ApiContext>,
    authz: Authz,
    Path(id): Path<String>,
    raw: RawQuery,
) -> Result<Response, ApiError> {
    list_where(state.0, authz, raw.0, move |session| session.id == id).await
}

/// `GET /v1/session/node/:node`: the node's sessions (blocking).
pub async fn node(
    state: State<ApiContext>,
    authz: Authz,
    Path(node): Path<String>,
    raw: RawQuery,
) -> Result<Response, ApiError> {
    list_where(state.0, authz, raw.0, move |session| session.node == node).await
}

/// `GET /v1/session/list`: every session (blocking).
pub async fn list(
    state: State<ApiContext>,
    authz: Authz,
    raw: RawQuery,
) -> Result<Response, ApiError> {
    list_where(state.0, authz, raw.0, |_| true).await
}

/// The sessions `keep` selects whose node the caller may read sessions of
/// (`session:read`).
async fn list_where(
    context: ApiContext,
    authz: Authz,
    raw: Option<String>,
    keep: impl Fn(&Session) -> bool,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref());
    let options = ReadOptions::parse(&query, &context)?;
    let (index, body) = blocking(&context, &options, Table::Kv, |state: &StateView| {
        let sessions: Vec<SessionJson> = state
            .sessions
            .values()
            .filter(|session| keep(session) && authz.reads(Segment::Session, &session.node))
            .map(SessionJson::new)
            .collect();
        (
            state.indexes.sessions,
            serde_json::to_value(sessions).unwrap_or_default(),
        )
    })
    .await?;
    Ok(json_with_index(index, &body))
}
