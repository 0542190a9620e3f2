//! `/v1/operator/keyring`: the gossip encryption keys of the WAN pool's members, listed
//! (`GET`), installed (`POST`), made primary (`PUT`) and removed (`DELETE`), each on every
//! live member at once (Consul's `consul keyring`).
//!
//! Only servers gossip, in the WAN pool: the answer has the WAN entry and, in Consul's
//! shape, one LAN entry per datacenter made of the WAN answers of that datacenter's
//! servers. Compute nodes hold no key: they send keyring requests on to a server of their
//! datacenter, as Consul's clients do.

use std::collections::BTreeMap;

use atoll_acl::{Access, Global, Resource};
use atoll_cluster::{KeyringAnswer, KeyringOperation};
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use super::agent::empty_ok;
use crate::acl::Authz;
use crate::decode::decode_body;
use crate::error::ApiError;
use crate::federate::forward_to_servers;
use crate::query::{json_with_index, local_query, Query};
use crate::ApiContext;

#[derive(Debug, Deserialize)]
struct KeyBody {
    #[serde(default)]
    key: Option<String>,
}

/// The `Key` of a request body: present and a 16- or 32-byte key in base64.
fn key_of(body: &[u8]) -> Result<String, ApiError> {
    let body: KeyBody = decode_body(body)?;
    let key = body.key.unwrap_or_default();
    let key = key.trim();
    if key.is_empty() {
        return Err(ApiError::field(
            "Key",
            "Missing Key: the gossip key in base64",
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|e| ApiError::field("Key", format!("Invalid key: {e}")))?;
    if !matches!(bytes.len(), 16 | 32) {
        return Err(ApiError::field(
            "Key",
            format!(
                "Invalid key: key size must be 16 or 32 bytes (AES-128 or AES-256), not {}",
                bytes.len()
            ),
        ));
    }
    Ok(key.to_string())
}

/// The options every keyring request takes: `?relay-factor=` (0 to 5, accepted and
/// unused: answers come back directly) and `?local-only` (list only).
fn options(query: &Query, listing: bool) -> Result<bool, ApiError> {
    if let Some(factor) = query.get("relay-factor") {
        if !matches!(factor.parse::<u8>(), Ok(0..=5)) {
            return Err(ApiError::field(
                "relay-factor",
                "Relay factor must be in range: [0, 5]",
            ));
        }
    }
    let local_only = query.flag("local-only");
    if local_only && !listing {
        return Err(ApiError::field(
            "local-only",
            "local-only can only be used for the list operation",
        ));
    }
    Ok(local_only)
}

/// One entry of the answer: the members of a pool (all, or one datacenter's), how many
/// hold each key and have it as primary, and the failures.
fn entry(wan: bool, datacenter: &str, answers: &[&KeyringAnswer]) -> Value {
    let mut keys: BTreeMap<&str, usize> = BTreeMap::new();
    let mut primary: BTreeMap<&str, usize> = BTreeMap::new();
    let mut messages: BTreeMap<&str, &str> = BTreeMap::new();
    for answer in answers {
        match &answer.outcome {
            Ok(held) => {
                for key in held {
                    *keys.entry(key).or_default() += 1;
                }
                if let Some(first) = held.first() {
                    *primary.entry(first).or_default() += 1;
                }
            }
            Err(message) => {
                messages.insert(&answer.name, message);
            }
        }
    }
    json!({
        "WAN": wan,
        "Datacenter": datacenter,
        "Segment": "",
        "Messages": messages,
        "Keys": keys,
        "PrimaryKeys": primary,
        "NumNodes": answers.len(),
    })
}

/// The answer's entries: WAN first, then a LAN entry per datacenter (this one first).
fn entries(local_dc: &str, answers: &[KeyringAnswer]) -> Vec<Value> {
    let all: Vec<&KeyringAnswer> = answers.iter().collect();
    let mut by_dc: BTreeMap<&str, Vec<&KeyringAnswer>> = BTreeMap::new();
    for answer in answers {
        by_dc.entry(&answer.datacenter).or_default().push(answer);
    }
    let mut out = vec![entry(true, local_dc, &all)];
    if let Some(local) = by_dc.remove(local_dc) {
        out.push(entry(false, local_dc, &local));
    }
    out.extend(
        by_dc
            .into_iter()
            .map(|(dc, members)| entry(false, dc, &members)),
    );
    out
}

/// Consul's error text when members failed (`None`: none did): the count, then each
/// member's reason.
fn failures(answers: &[KeyringAnswer]) -> Option<String> {
    let failed: Vec<(&str, &str)> = answers
        .iter()
        .filter_map(|a| {
            a.outcome
                .as_ref()
                .err()
                .map(|e| (a.name.as_str(), e.as_str()))
        })
        .collect();
    if failed.is_empty() {
        return None;
    }
    let mut lines = vec![format!(
        "WAN error: {}/{} nodes reported failure",
        failed.len(),
        answers.len()
    )];
    lines.extend(failed.iter().map(|(name, e)| format!("{name}: {e}")));
    let mut text = format!("{} errors occurred:\n", lines.len());
    for line in lines {
        text.push_str(&format!("\t* {line}\n"));
    }
    text.push('\n');
    Some(text)
}

async fn run(
    context: &ApiContext,
    operation: KeyringOperation,
    local_only: bool,
) -> Result<Vec<KeyringAnswer>, ApiError> {
    let answers = context
        .federation()
        .keyring(operation, local_only)
        .await
        .map_err(|e| ApiError::plain(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match failures(&answers) {
        Some(text) => Err(ApiError::plain(StatusCode::INTERNAL_SERVER_ERROR, text)),
        None => Ok(answers),
    }
}

/// What the handlers share: the caller's right, then either the request sent on to a
/// server (on a compute node, which holds no key, as a Consul client forwards it) or its
/// query and body.
async fn accept(
    context: &ApiContext,
    authz: &Authz,
    access: Access,
    request: Request,
) -> Result<Result<(Query, Bytes), Response>, ApiError> {
    authz.require(Resource::Global(Global::Keyring), access)?;
    let (parts, body) = request.into_parts();
    // The server already read the body in full, within its limit.
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|e| ApiError::bad_request(format!("Request decode failed: {e}")))?;
    if context.federation().wan_members().is_none() {
        let request = Request::from_parts(parts, body);
        return Ok(Err(forward_to_servers(context, request).await));
    }
    let query = local_query(parts.uri.query(), context)?;
    Ok(Ok((query, body)))
}

/// `GET /v1/operator/keyring` (`?local-only`: this server's keys only).
pub async fn list(
    State(context): State<ApiContext>,
    authz: Authz,
    request: Request,
) -> Result<Response, ApiError> {
    let (query, _) = match accept(&context, &authz, Access::Read, request).await? {
        Ok(accepted) => accepted,
        Err(forwarded) => return Ok(forwarded),
    };
    let local_only = options(&query, true)?;
    let answers = run(&context, KeyringOperation::List, local_only).await?;
    Ok(json_with_index(
        context.store().applied(),
        &entries(context.datacenter(), &answers),
    ))
}

async fn change(
    context: ApiContext,
    authz: Authz,
    request: Request,
    operation: fn(String) -> KeyringOperation,
) -> Result<Response, ApiError> {
    let (query, body) = match accept(&context, &authz, Access::Write, request).await? {
        Ok(accepted) => accepted,
        Err(forwarded) => return Ok(forwarded),
    };
    options(&query, false)?;
    let key = key_of(&body)?;
    run(&context, operation(key), false).await?;
    Ok(empty_ok(&context))
}

/// `POST /v1/operator/keyring` `{"Key": K}`: every member installs K.
pub async fn install(
    State(context): State<ApiContext>,
    authz: Authz,
    request: Request,
) -> Result<Response, ApiError> {
    change(context, authz, request, KeyringOperation::Install).await
}

/// `PUT /v1/operator/keyring` `{"Key": K}`: every member encrypts with K (installed).
pub async fn use_key(
    State(context): State<ApiContext>,
    authz: Authz,
    request: Request,
) -> Result<Response, ApiError> {
    change(context, authz, request, KeyringOperation::Use).await
}

/// `DELETE /v1/operator/keyring` `{"Key": K}`: every member removes K (not its primary).
pub async fn remove(
    State(context): State<ApiContext>,
    authz: Authz,
    request: Request,
) -> Result<Response, ApiError> {
    change(context, authz, request, KeyringOperation::Remove).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(name: &str, dc: &str, outcome: Result<&[&str], &str>) -> KeyringAnswer {
        KeyringAnswer {
            name: name.into(),
            datacenter: dc.into(),
            outcome: outcome
                .map(|keys| keys.iter().map(|k| k.to_string()).collect())
                .map_err(str::to_string),
        }
    }

    #[test]
    fn entries_count_keys_per_pool_and_per_datacenter() {
        let answers = vec![
            answer("b.dc2", "dc2", Ok(&["K2", "K1"])),
            answer("a.dc1", "dc1", Ok(&["K1", "K2"])),
            answer("c.dc2", "dc2", Err("no answer in time")),
        ];
        let got = entries("dc1", &answers);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0]["WAN"], true);
        assert_eq!(got[0]["Datacenter"], "dc1");
        assert_eq!(got[0]["NumNodes"], 3);
        assert_eq!(got[0]["Keys"], json!({"K1": 2, "K2": 2}));
        assert_eq!(got[0]["PrimaryKeys"], json!({"K1": 1, "K2": 1}));
        assert_eq!(got[0]["Messages"], json!({"c.dc2": "no answer in time"}));
        assert_eq!(got[1]["WAN"], false);
        assert_eq!(got[1]["Datacenter"], "dc1");
        assert_eq!(got[1]["NumNodes"], 1);
        assert_eq!(got[2]["Datacenter"], "dc2");
        assert_eq!(got[2]["Keys"], json!({"K1": 1, "K2": 1}));
        let text = failures(&answers).expect("a failure");
        assert!(
            text.contains("WAN error: 1/3 nodes reported failure"),
            "{text}"
        );
        assert!(text.contains("c.dc2: no answer in time"), "{text}");
        assert_eq!(failures(&answers[..2]), None);
    }

    #[test]
    fn keys_and_options_are_checked() {
        let k32 = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        assert_eq!(
            key_of(format!(r#"{{"Key":"{k32}"}}"#).as_bytes()).expect("valid"),
            k32
        );
        assert_eq!(
            key_of(format!(r#"{{"key":"{k32}"}}"#).as_bytes()).expect("any case"),
            k32
        );
        for bad in [
            r#"{}"#.to_string(),
            r#"{"Key":""}"#.to_string(),
            r#"{"Key":"!!"}"#.to_string(),
            format!(
                r#"{{"Key":"{}"}}"#,
                base64::engine::general_purpose::STANDARD.encode([1u8; 24])
            ),
        ] {
            let error = key_of(bad.as_bytes()).expect_err(&bad);
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(error.field.as_deref(), Some("Key"), "{bad}");
        }
        assert!(options(&Query::parse(Some("relay-factor=6")), true).is_err());
        assert!(options(&Query::parse(Some("relay-factor=2")), true).is_ok());
        assert!(options(&Query::parse(Some("local-only=true")), false).is_err());
        assert!(options(&Query::parse(Some("local-only=true")), true).expect("list"));
    }
}
