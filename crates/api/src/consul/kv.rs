//! `/v1/kv/*`: the key/value store.

use std::collections::BTreeSet;

use crate::extract::Path;
use atoll_cluster::Watch;
use atoll_state::{Command, Outcome};
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::input::{kv_delete_command, kv_set_command};
use super::wire::KvJson;
use crate::acl::Authz;
use crate::error::ApiError;
use crate::execute::write;
use crate::query::{blocking, json_with_index, local_query, set_index, Query, ReadOptions};
use crate::ApiContext;
use atoll_acl::{Access, Segment};

enum KvRead {
    Entries(serde_json::Value),
    Keys(Vec<String>),
    Raw(Vec<u8>),
    Missing,
}

/// `GET /v1/kv/` (the root).
pub async fn get_root(
    state: State<ApiContext>,
    authz: Authz,
    raw: RawQuery,
) -> Result<Response, ApiError> {
    read(state.0, authz, String::new(), raw.0).await
}

/// `GET /v1/kv/:key`.
pub async fn get(
    state: State<ApiContext>,
    authz: Authz,
    Path(key): Path<String>,
    raw: RawQuery,
) -> Result<Response, ApiError> {
    read(state.0, authz, key, raw.0).await
}

/// A read of one key needs `key:read` on it (403); a listing leaves out the keys the
/// caller may not read.
async fn read(
    context: ApiContext,
    authz: Authz,
    key: String,
    raw: Option<String>,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw.as_deref());
    let options = ReadOptions::parse(&query, &context)?;
    let recurse = query.flag("recurse");
    let keys = query.get("keys").is_some();
    let raw_value = query.flag("raw");
    let separator = query.get("separator").unwrap_or_default().to_string();
    let exact = !(recurse || keys);
    if exact && key.is_empty() {
        return Err(ApiError::field("key", "Missing key name"));
    }
    if exact {
        authz.require_read(Segment::Key, &key)?;
    }
    let readable = |key: &str| authz.reads(Segment::Key, key);
    let watch = if exact {
        Watch::Key(key.clone())
    } else {
        Watch::Prefix(key.clone())
    };
    let (index, result) = blocking(&context, &options, watch, |state| {
        // One key: its ModifyIndex when it exists, else the table's (Consul's answer, which
        // Patroni compares with the ModifyIndex it knows).
        let index = if exact {
            state
                .kv
                .get(&key)
                .map_or(state.indexes.kv, |entry| entry.modify_index)
        } else {
            state.kv_index(&key, exact).max(1)
        };
        let result = if keys {
            let mut listed = BTreeSet::new();
            for entry in state.kv_prefix(&key).filter(|e| readable(&e.key)) {
                let rest = &entry.key[key.len()..];
                match (!separator.is_empty())
                    .then(|| rest.find(&separator))
                    .flatten()
                {
                    Some(at) => listed.insert(format!("{key}{}", &rest[..at + separator.len()])),
                    None => listed.insert(entry.key.clone()),
                };
            }
            if listed.is_empty() {
                KvRead::Missing
            } else {
                KvRead::Keys(listed.into_iter().collect())
            }
        } else if recurse {
            let entries: Vec<KvJson> = state
                .kv_prefix(&key)
                .filter(|e| readable(&e.key))
                .map(KvJson::new)
                .collect();
            if entries.is_empty() {
                KvRead::Missing
            } else {
                KvRead::Entries(serde_json::to_value(entries).unwrap_or_default())
            }
        } else {
            match state.kv.get(&key) {
                None => KvRead::Missing,
                Some(entry) if raw_value => KvRead::Raw(entry.value.clone()),
                Some(entry) => KvRead::Entries(
                    serde_json::to_value(vec![KvJson::new(entry)]).unwrap_or_default(),
                ),
            }
        };
        (index.max(1), result)
    })
    .await?;
    Ok(match result {
        KvRead::Entries(value) => json_with_index(index, &value),
        KvRead::Keys(keys) => json_with_index(index, &keys),
        KvRead::Raw(bytes) => {
            let mut response =
                ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response();
            set_index(response.headers_mut(), index);
            response
        }
        KvRead::Missing => {
            let mut response = StatusCode::NOT_FOUND.into_response();
            set_index(response.headers_mut(), index);
            response
        }
    })
}

/// `PUT /v1/kv/` without a key.
pub async fn put_root() -> Result<Response, ApiError> {
    Err(ApiError::field("key", "Missing key name"))
}

/// `PUT /v1/kv/:key` (`?flags=`, `?cas=`, `?acquire=`, `?release=`); answers `true` or
/// `false`.
/// Needs `key:write` on the key, also to acquire or release a lock (as Consul).
pub async fn put(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(key): Path<String>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let query = local_query(raw.as_deref(), &context)?;
    authz.require_write(Segment::Key, &key)?;
    let command = kv_set_command(key, &query, &body)?;
    if let Command::KvAcquire { key, .. } = &command {
        // Lock delay is checked before proposing, as Consul's leader does.
        if let Some(left) = context.agent().sessions().lock_delay(key).await? {
            tracing::debug!(%key, ?left, "refusing to lock the key during its lock delay");
            return Ok(json_with_index(context.store().applied(), &false));
        }
    }
    let outcome = write(&context, command).await?;
    Ok(json_with_index(
        context.store().applied(),
        &!matches!(outcome, Outcome::Condition(false)),
    ))
}

/// `DELETE /v1/kv/` (only meaningful with `?recurse`).
pub async fn delete_root(
    state: State<ApiContext>,
    authz: Authz,
    raw: RawQuery,
) -> Result<Response, ApiError> {
    delete_key(state.0, authz, String::new(), raw.0).await
}

/// `DELETE /v1/kv/:key` (`?recurse`, `?cas=`); answers `true` or `false`.
pub async fn delete(
    state: State<ApiContext>,
    authz: Authz,
    Path(key): Path<String>,
    raw: RawQuery,
) -> Result<Response, ApiError> {
    delete_key(state.0, authz, key, raw.0).await
}

/// A key needs `key:write`; a recursive delete needs it on everything under the prefix
/// (no rule below the prefix may grant less).
async fn delete_key(
    context: ApiContext,
    authz: Authz,
    key: String,
    raw: Option<String>,
) -> Result<Response, ApiError> {
    let query = local_query(raw.as_deref(), &context)?;
    if query.flag("recurse") {
        if !authz
            .authorizer()
            .allows_all_under(Segment::Key, &key, Access::Write)
        {
            return Err(authz.denied());
        }
    } else {
        authz.require_write(Segment::Key, &key)?;
    }
    let command = kv_delete_command(key, &query)?;
    let outcome = write(&context, command).await?;
    Ok(json_with_index(
        context.store().applied(),
        &!matches!(outcome, Outcome::Condition(false)),
    ))
}
