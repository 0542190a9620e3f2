//! `/v1/acl/*`: Consul's ACL tokens and policies, and `PUT /v1/acl/bootstrap`.
//!
//! Every path answers 401 `ACL support disabled` when ACLs are off. Reads need `acl:read`
//! (a token's SecretID shows as `<hidden>` without `acl:write`), writes `acl:write`;
//! `GET /v1/acl/token/self` and the bootstrap need nothing. Tokens and policies are
//! validated here (400 naming the field), written through Raft, and checked again by
//! `apply` against the state (unknown policies, names taken, the builtins). In a secondary
//! datacenter the bootstrap is refused, and writes of policies and global tokens are sent
//! to the primary before they reach these handlers (`federate.rs`); what the primary holds
//! comes back through replication (`acl_replication.rs`).

use std::hash::{Hash, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use atoll_acl::{Access, Global, Resource};
use atoll_state::acl::{AclBootstrap, AclPolicy, AclToken, PolicyLink, Secret, ANONYMOUS_ACCESSOR};
use atoll_state::{Command, Rejection, State as StateView, Table};
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::acl::Authz;
use crate::decode::{decode_body, parse_duration};
use crate::error::ApiError;
use crate::execute::{new_id, write, Refusal};
use crate::extract::Path;
use crate::query::{blocking, json_with_index, local_query, Query, ReadOptions};
use crate::ApiContext;

/// The file whose content (a reset index) allows one more bootstrap.
pub const BOOTSTRAP_RESET_FILE: &str = "acl-bootstrap-reset";

/// What a token's SecretID shows as to a reader without `acl:write`.
const HIDDEN: &str = "<hidden>";

/// Shortest and longest `ExpirationTTL` (Consul's defaults).
const MIN_TTL: Duration = Duration::from_secs(60);
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// 401 unless ACLs are on.
fn enabled(context: &ApiContext) -> Result<(), ApiError> {
    if context.acl().enabled {
        Ok(())
    } else {
        Err(ApiError::plain(
            StatusCode::UNAUTHORIZED,
            "ACL support disabled",
        ))
    }
}

/// Consul's answer for a token or policy that does not exist.
fn acl_not_found() -> ApiError {
    ApiError::plain(StatusCode::FORBIDDEN, "ACL not found")
}

/// A refusal of `apply` as a 400 naming the field its message starts with (`Name: ...`).
fn refused(refusal: Refusal) -> ApiError {
    if let Refusal::Rejected(Rejection::Invalid(message)) = &refusal {
        if let Some((field, _)) = message.split_once(": ") {
            if !field.is_empty() && field.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return ApiError::field(field, message.clone());
            }
        }
    }
    refusal.into()
}

// ---- Wire shapes ----

#[derive(Serialize)]
struct LinkJson {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Name")]
    name: String,
}

/// A token as Consul answers it (`stub`: the listing's form, the same fields here).
#[derive(Serialize)]
struct TokenJson {
    #[serde(rename = "AccessorID")]
    accessor_id: String,
    #[serde(rename = "SecretID")]
    secret_id: String,
    #[serde(rename = "Description")]
    description: String,
    #[serde(rename = "Policies", skip_serializing_if = "Vec::is_empty")]
    policies: Vec<LinkJson>,
    #[serde(rename = "Local")]
    local: bool,
    #[serde(rename = "ExpirationTime", skip_serializing_if = "Option::is_none")]
    expiration_time: Option<String>,
    #[serde(rename = "CreateTime")]
    create_time: String,
    #[serde(rename = "Hash")]
    hash: String,
    #[serde(rename = "CreateIndex")]
    create_index: u64,
    #[serde(rename = "ModifyIndex")]
    modify_index: u64,
}

fn rfc3339(unix_ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

/// A short digest of what a row holds, as Consul's `Hash` (base64): it changes when the
/// row's content does.
fn digest(parts: &[&str]) -> String {
    use base64::Engine;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut hasher);
    base64::engine::general_purpose::STANDARD.encode(hasher.finish().to_be_bytes())
}

impl TokenJson {
    fn new(state: &StateView, token: &AclToken, show_secret: bool) -> Self {
        // Links to deleted policies are left out; names are the policies' current ones.
        let policies: Vec<LinkJson> = token
            .policies
            .iter()
            .filter_map(|link| state.acl_policy(&link.id))
            .map(|policy| LinkJson {
                id: policy.id,
                name: policy.name,
            })
            .collect();
        let ids: Vec<&str> = policies.iter().map(|p| p.id.as_str()).collect();
        let local = if token.local { "local" } else { "global" };
        let mut hashed = vec![token.description.as_str(), local];
        hashed.extend(ids);
        TokenJson {
            accessor_id: token.accessor_id.clone(),
            secret_id: if show_secret {
                token.secret_id.expose().to_string()
            } else {
                HIDDEN.to_string()
            },
            description: token.description.clone(),
            hash: digest(&hashed),
            policies,
            local: token.local,
            expiration_time: token.expiration_unix_ms.map(rfc3339),
            create_time: token.create_time.clone(),
            create_index: token.create_index,
            modify_index: token.modify_index,
        }
    }
}

#[derive(Serialize)]
struct PolicyJson {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Description")]
    description: String,
    #[serde(rename = "Rules", skip_serializing_if = "Option::is_none")]
    rules: Option<String>,
    #[serde(rename = "Datacenters")]
    datacenters: Vec<String>,
    #[serde(rename = "Hash")]
    hash: String,
    #[serde(rename = "CreateIndex")]
    create_index: u64,
    #[serde(rename = "ModifyIndex")]
    modify_index: u64,
}

impl PolicyJson {
    /// A policy; the listing's stubs leave the rules out.
    fn new(policy: &AclPolicy, with_rules: bool) -> Self {
        let mut hashed = vec![
            policy.name.as_str(),
            policy.description.as_str(),
            policy.rules.as_str(),
        ];
        hashed.extend(policy.datacenters.iter().map(String::as_str));
        PolicyJson {
            id: policy.id.clone(),
            name: policy.name.clone(),
            description: policy.description.clone(),
            rules: with_rules.then(|| policy.rules.clone()),
            datacenters: policy.datacenters.clone(),
            hash: digest(&hashed),
            create_index: policy.create_index,
            modify_index: policy.modify_index,
        }
    }
}

// ---- Request bodies (names normalised by `decode_body`) ----

#[derive(Deserialize, Default)]
#[serde(default)]
struct LinkInput {
    id: String,
    name: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TokenInput {
    accessorid: String,
    secretid: String,
    description: String,
    policies: Vec<LinkInput>,
    local: bool,
    expirationtime: Option<String>,
    expirationttl: Option<Value>,
    roles: Vec<Value>,
    serviceidentities: Vec<Value>,
    nodeidentities: Vec<Value>,
    authmethod: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PolicyInput {
    id: String,
    name: String,
    description: String,
    rules: String,
    datacenters: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct BootstrapInput {
    bootstrapsecret: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CloneInput {
    description: String,
}

/// Whether `text` is a UUID as Consul writes them (8-4-4-4-12 hex digits).
fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// An RFC 3339 time (UTC) in milliseconds since the epoch.
fn parse_time(text: &str) -> Option<u64> {
    humantime::parse_rfc3339_weak(text.trim_end_matches('Z'))
        .ok()
        .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn now_ms() -> u64 {
    atoll_state::acl::now_unix_ms()
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

/// The expiration a new token's body asks for, in milliseconds since the epoch.
fn expiration(input: &TokenInput) -> Result<Option<u64>, ApiError> {
    let ttl = match &input.expirationttl {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) if text.is_empty() => None,
        Some(Value::String(text)) => Some(parse_duration(text).ok_or_else(|| {
            ApiError::field(
                "ExpirationTTL",
                format!("Invalid ExpirationTTL {text:?}: expected a duration such as 10m"),
            )
        })?),
        // Go's JSON gives a duration as nanoseconds.
        Some(Value::Number(n)) => Some(Duration::from_nanos(n.as_u64().ok_or_else(|| {
            ApiError::field("ExpirationTTL", "Invalid ExpirationTTL: not a duration")
        })?)),
        Some(_) => {
            return Err(ApiError::field(
                "ExpirationTTL",
                "Invalid ExpirationTTL: not a duration",
            ))
        }
    };
    let time = input
        .expirationtime
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(|text| {
            parse_time(text).ok_or_else(|| {
                ApiError::field(
                    "ExpirationTime",
                    format!("Invalid ExpirationTime {text:?}: expected an RFC 3339 time in UTC"),
                )
            })
        })
        .transpose()?;
    let now = now_ms();
    match (ttl, time) {
        (Some(_), Some(_)) => Err(ApiError::field(
            "ExpirationTTL",
            "Expiration TTL and Expiration Time cannot both be set",
        )),
        (Some(ttl), None) => {
            if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
                return Err(ApiError::field(
                    "ExpirationTTL",
                    "Invalid ExpirationTTL: must be between 1m and 24h",
                ));
            }
            Ok(Some(now + ttl.as_millis() as u64))
        }
        (None, Some(at)) => {
            if at <= now {
                return Err(ApiError::field(
                    "ExpirationTime",
                    "ExpirationTime cannot be in the past",
                ));
            }
            if at > now + MAX_TTL.as_millis() as u64 + 1_000
                || at < now + MIN_TTL.as_millis() as u64
            {
                return Err(ApiError::field(
                    "ExpirationTime",
                    "ExpirationTime must be between 1m and 24h from now",
                ));
            }
            Ok(Some(at))
        }
        (None, None) => Ok(None),
    }
}

/// A token body's checks shared by create and update; the token it describes.
fn token_from(input: TokenInput) -> Result<AclToken, ApiError> {
    for (field, empty) in [
        ("Roles", input.roles.is_empty()),
        ("ServiceIdentities", input.serviceidentities.is_empty()),
        ("NodeIdentities", input.nodeidentities.is_empty()),
        ("AuthMethod", input.authmethod.is_empty()),
    ] {
        if !empty {
            return Err(ApiError::field(
                field,
                format!("{field} are not supported: give the token policies"),
            ));
        }
    }
    for (field, value) in [
        ("AccessorID", &input.accessorid),
        ("SecretID", &input.secretid),
    ] {
        if !value.is_empty() && !is_uuid(value) {
            return Err(ApiError::field(
                field,
                format!("Invalid Token: {field} is not a valid UUID"),
            ));
        }
    }
    for (i, link) in input.policies.iter().enumerate() {
        if link.id.is_empty() && link.name.is_empty() {
            return Err(ApiError::field(
                &format!("Policies[{i}]"),
                "a policy link needs an ID or a Name",
            ));
        }
    }
    let expiration_unix_ms = expiration(&input)?;
    Ok(AclToken {
        accessor_id: input.accessorid,
        secret_id: Secret::new(input.secretid),
        description: input.description,
        policies: input
            .policies
            .into_iter()
            .map(|l| PolicyLink {
                id: l.id,
                name: l.name,
            })
            .collect(),
        local: input.local,
        create_time: String::new(),
        expiration_unix_ms,
        create_index: 0,
        modify_index: 0,
    })
}

/// A body that may be left out (empty: every field's default).
fn optional_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        decode_body(body)
    }
}

fn require(authz: &Authz, access: Access) -> Result<(), ApiError> {
    authz.require(Resource::Global(Global::Acl), access)
}

/// What every ACL write checks first: ACLs on, this datacenter, `acl:write`.
fn writer(context: &ApiContext, authz: &Authz, raw: Option<&str>) -> Result<(), ApiError> {
    enabled(context)?;
    local_query(raw, context)?;
    require(authz, Access::Write)
}

/// Writes an ACL command; a refusal naming a field is a 400 naming it.
async fn propose(context: &ApiContext, command: Command) -> Result<(), ApiError> {
    write(context, command).await.map(drop).map_err(refused)
}

/// An ACL read (blocking on the ACL tables): ACLs on, `acl:read`, then `compute` until the
/// ACL index passes the request's `?index`.
async fn read_acl<T>(
    context: &ApiContext,
    authz: &Authz,
    raw: Option<&str>,
    mut compute: impl FnMut(&StateView) -> T,
) -> Result<(u64, T), ApiError> {
    enabled(context)?;
    require(authz, Access::Read)?;
    let query = Query::parse(raw);
    let options = ReadOptions::parse(&query, context)?;
    blocking(context, &options, Table::Acl, |state: &StateView| {
        (state.indexes.acl, compute(state))
    })
    .await
}

/// A found row's answer, else Consul's 403 `ACL not found`.
fn found<T: Serialize>(index: u64, body: Option<T>) -> Result<Response, ApiError> {
    match body {
        Some(body) => Ok(json_with_index(index, &body)),
        None => Err(acl_not_found()),
    }
}

/// Writes a token (`create` or update) and answers it as stored, to `authz` (its secret
/// only with `acl:write`).
async fn set_token(
    context: &ApiContext,
    authz: &Authz,
    token: AclToken,
    create: bool,
) -> Result<Response, ApiError> {
    let accessor_id = token.accessor_id.clone();
    let token = Box::new(token);
    propose(context, Command::AclTokenSet { token, create }).await?;
    let show = authz.allows(Resource::Global(Global::Acl), Access::Write);
    let body = context.store().read(|state| {
        state
            .acl_token(&accessor_id)
            .map(|token| TokenJson::new(state, &token, show))
    });
    Ok(json_with_index(context.store().applied(), &body))
}

// ---- Bootstrap ----

/// `PUT /v1/acl/bootstrap`: the first management token; 403 once done, unless the data
/// dir's reset file holds the reset index. An optional body `{"BootstrapSecret": UUID}`
/// chooses its SecretID.
pub async fn bootstrap(
    State(context): State<ApiContext>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    enabled(&context)?;
    local_query(raw.as_deref(), &context)?;
    let settings = context.acl();
    if settings.replicates_into(context.datacenter()) {
        // Its tokens come from the primary: a management token made here would be deleted
        // by the next replication round.
        return Err(ApiError::plain(
            StatusCode::BAD_REQUEST,
            format!(
                "ACL bootstrap is done in the primary datacenter {:?}, not in {:?}: bootstrap there (or add ?dc={})",
                settings.primary_datacenter,
                context.datacenter(),
                settings.primary_datacenter
            ),
        ));
    }
    let input: BootstrapInput = optional_body(&body)?;
    if !input.bootstrapsecret.is_empty() && !is_uuid(&input.bootstrapsecret) {
        return Err(ApiError::field(
            "BootstrapSecret",
            "Invalid BootstrapSecret: not a valid UUID",
        ));
    }
    let reset_file = context
        .facts()
        .data_dir
        .as_ref()
        .map(|dir| dir.join(BOOTSTRAP_RESET_FILE));
    let reset_index = match &reset_file {
        Some(path) => match tokio::fs::read_to_string(path).await {
            Ok(text) => text.trim().parse::<u64>().ok(),
            Err(_) => None,
        },
        None => None,
    };
    let accessor_id = new_id();
    let command = Command::AclBootstrap(Box::new(AclBootstrap {
        accessor_id: accessor_id.clone(),
        secret_id: Secret::new(
            Some(input.bootstrapsecret)
                .filter(|s| !s.is_empty())
                .unwrap_or_else(new_id),
        ),
        create_time: now_rfc3339(),
        reset_index,
    }));
    match write(&context, command).await {
        Ok(_) => {}
        Err(Refusal::Rejected(Rejection::Conflict(message))) => {
            return Err(ApiError::plain(
                StatusCode::FORBIDDEN,
                format!("Permission denied: {message}"),
            ))
        }
        Err(refusal) => return Err(refused(refusal)),
    }
    if let (Some(path), Some(_)) = (&reset_file, reset_index) {
        // A reset index allows one bootstrap: the file goes with it.
        if let Err(e) = tokio::fs::remove_file(path).await {
            tracing::warn!("cannot remove {}: {e}", path.display());
        }
    }
    let body = context.store().read(|state| {
        state.acl_token(&accessor_id).map(|token| {
            let mut json =
                serde_json::to_value(TokenJson::new(state, &token, true)).unwrap_or_default();
            // The legacy `ID`, which is the SecretID.
            json["ID"] = Value::String(token.secret_id.expose().to_string());
            json
        })
    });
    Ok(json_with_index(context.store().applied(), &body))
}

// ---- Tokens ----

/// `PUT /v1/acl/token`: creates a token (AccessorID and SecretID generated unless given).
pub async fn create_token(
    State(context): State<ApiContext>,
    authz: Authz,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    writer(&context, &authz, raw.as_deref())?;
    let mut token = token_from(decode_body(&body)?)?;
    if token.accessor_id.is_empty() {
        token.accessor_id = new_id();
    }
    if token.secret_id.is_empty() {
        token.secret_id = Secret::new(new_id());
    }
    token.create_time = now_rfc3339();
    set_token(&context, &authz, token, true).await
}

/// `PUT /v1/acl/token/:AccessorID`: replaces a token's description and policies.
pub async fn update_token(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    writer(&context, &authz, raw.as_deref())?;
    let mut input: TokenInput = decode_body(&body)?;
    if !input.accessorid.is_empty() && input.accessorid != id {
        return Err(ApiError::field(
            "AccessorID",
            "Token Accessor ID in URL and payload do not match",
        ));
    }
    input.accessorid = String::new();
    // The expiration cannot change; one given equal to the stored one is fine.
    let given_expiration = input.expirationtime.take();
    let mut token = token_from(input)?;
    token.accessor_id = id.clone();
    if let Some(text) = given_expiration.filter(|t| !t.is_empty()) {
        let stored = context
            .store()
            .read(|state| state.acl_token(&id).and_then(|t| t.expiration_unix_ms));
        let parsed = parse_time(&text);
        if parsed.is_none() || parsed.map(|p| p / 1000) != stored.map(|s| s / 1000) {
            return Err(ApiError::field(
                "ExpirationTime",
                "Cannot change the expiration time of a token",
            ));
        }
    }
    set_token(&context, &authz, token, false).await
}

/// `PUT /v1/acl/token/:AccessorID/clone`: a new token with the same policies.
pub async fn clone_token(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    writer(&context, &authz, raw.as_deref())?;
    let input: CloneInput = optional_body(&body)?;
    let original = context
        .store()
        .read(|state| state.acl_token(&id))
        .filter(|t| t.accessor_id != ANONYMOUS_ACCESSOR)
        .ok_or_else(acl_not_found)?;
    let accessor_id = new_id();
    let token = AclToken {
        accessor_id: accessor_id.clone(),
        secret_id: Secret::new(new_id()),
        description: if input.description.is_empty() {
            original.description.clone()
        } else {
            input.description
        },
        create_time: now_rfc3339(),
        ..original
    };
    set_token(&context, &authz, token, true).await
}

/// `GET /v1/acl/token/:AccessorID` (blocking): 403 `ACL not found` for an unknown one.
pub async fn read_token(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let show = authz.allows(Resource::Global(Global::Acl), Access::Write);
    let (index, body) = read_acl(&context, &authz, raw.as_deref(), |state| {
        state
            .acl_token(&id)
            .map(|token| TokenJson::new(state, &token, show))
    })
    .await?;
    found(index, body)
}

/// `GET /v1/acl/token/self`: the token the request carries, secret included.
pub async fn token_self(
    State(context): State<ApiContext>,
    authz: Authz,
) -> Result<Response, ApiError> {
    enabled(&context)?;
    let default = context.acl().tokens().default;
    let secret = authz
        .secret()
        .map(str::to_string)
        .or(default.filter(|s| !s.is_empty()))
        .unwrap_or_else(|| atoll_state::acl::ANONYMOUS_SECRET.to_string());
    let body = context.store().read(|state| {
        state
            .acl_token_by_secret(&secret, now_ms())
            .map(|token| TokenJson::new(state, &token, true))
    });
    found(context.store().applied(), body)
}

/// `DELETE /v1/acl/token/:AccessorID`: `true`.
pub async fn delete_token(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    writer(&context, &authz, raw.as_deref())?;
    propose(&context, Command::AclTokenDelete { accessor_id: id }).await?;
    Ok(json_with_index(context.store().applied(), &true))
}

/// `GET /v1/acl/tokens[?policy=ID]` (blocking): every token (the anonymous one too).
pub async fn list_tokens(
    State(context): State<ApiContext>,
    authz: Authz,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let show = authz.allows(Resource::Global(Global::Acl), Access::Write);
    let query = Query::parse(raw.as_deref());
    let policy = query
        .get("policy")
        .filter(|p| !p.is_empty())
        .map(str::to_string);
    // atoll's tokens have no roles, auth methods or service identities: filtering by one
    // leaves none.
    let none = ["role", "authmethod", "servicename"]
        .iter()
        .any(|name| query.get(name).is_some_and(|v| !v.is_empty()));
    let (index, body) = read_acl(&context, &authz, raw.as_deref(), |state| {
        state
            .acl_tokens_all()
            .iter()
            .filter(|_| !none)
            .filter(|token| {
                policy
                    .as_ref()
                    .is_none_or(|p| token.policies.iter().any(|link| &link.id == p))
            })
            .map(|token| TokenJson::new(state, token, show))
            .collect::<Vec<_>>()
    })
    .await?;
    Ok(json_with_index(index, &body))
}

// ---- Policies ----

fn policy_from(input: PolicyInput) -> Result<AclPolicy, ApiError> {
    if !atoll_state::acl::valid_policy_name(&input.name) {
        return Err(ApiError::field(
            "Name",
            format!(
                "Invalid Policy: invalid Name {:?} (letters, digits, _ and -, at most 128)",
                input.name
            ),
        ));
    }
    let parsed = atoll_acl::rules::parse(&input.rules)
        .map_err(|e| ApiError::field("Rules", e.to_string()))?;
    Ok(AclPolicy {
        id: input.id,
        name: input.name,
        description: input.description,
        rules: input.rules,
        datacenters: input.datacenters,
        parsed,
        create_index: 0,
        modify_index: 0,
    })
}

/// Writes a policy (`create` or update) and answers it as stored.
async fn set_policy(
    context: &ApiContext,
    policy: AclPolicy,
    create: bool,
) -> Result<Response, ApiError> {
    let id = policy.id.clone();
    let policy = Box::new(policy);
    propose(context, Command::AclPolicySet { policy, create }).await?;
    let body = context
        .store()
        .read(|state| state.acl_policy(&id).map(|p| PolicyJson::new(&p, true)));
    Ok(json_with_index(context.store().applied(), &body))
}

/// `PUT /v1/acl/policy`: creates a policy.
pub async fn create_policy(
    State(context): State<ApiContext>,
    authz: Authz,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    writer(&context, &authz, raw.as_deref())?;
    let input: PolicyInput = decode_body(&body)?;
    if !input.id.is_empty() {
        return Err(ApiError::field(
            "ID",
            "Cannot specify an ID when creating a policy",
        ));
    }
    let mut policy = policy_from(input)?;
    policy.id = new_id();
    set_policy(&context, policy, true).await
}

/// `PUT /v1/acl/policy/:id`: replaces a policy.
pub async fn update_policy(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    writer(&context, &authz, raw.as_deref())?;
    let input: PolicyInput = decode_body(&body)?;
    if !input.id.is_empty() && input.id != id {
        return Err(ApiError::field(
            "ID",
            "Policy ID in URL and payload do not match",
        ));
    }
    let mut policy = policy_from(input)?;
    policy.id = id.clone();
    set_policy(&context, policy, false).await
}

/// `GET /v1/acl/policy/:id` (blocking).
pub async fn read_policy(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    read_policy_by(context, authz, raw, move |state| state.acl_policy(&id)).await
}

/// `GET /v1/acl/policy/name/:name` (blocking).
pub async fn read_policy_named(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    read_policy_by(context, authz, raw, move |state| {
        state.acl_policy_named(&name)
    })
    .await
}

async fn read_policy_by(
    context: ApiContext,
    authz: Authz,
    raw: Option<String>,
    find: impl Fn(&StateView) -> Option<AclPolicy>,
) -> Result<Response, ApiError> {
    let (index, body) = read_acl(&context, &authz, raw.as_deref(), |state| {
        find(state).map(|p| PolicyJson::new(&p, true))
    })
    .await?;
    found(index, body)
}

/// `DELETE /v1/acl/policy/:id`: `true`.
pub async fn delete_policy(
    State(context): State<ApiContext>,
    authz: Authz,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    writer(&context, &authz, raw.as_deref())?;
    propose(&context, Command::AclPolicyDelete { id }).await?;
    Ok(json_with_index(context.store().applied(), &true))
}

/// `GET /v1/acl/policies` (blocking): every policy, without its rules.
pub async fn list_policies(
    State(context): State<ApiContext>,
    authz: Authz,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let (index, body) = read_acl(&context, &authz, raw.as_deref(), |state| {
        state
            .acl_policies_all()
            .iter()
            .map(|p| PolicyJson::new(p, false))
            .collect::<Vec<_>>()
    })
    .await?;
    Ok(json_with_index(index, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_recognised() {
        assert!(is_uuid("00000000-0000-0000-0000-000000000002"));
        assert!(is_uuid(&new_id()));
        assert!(!is_uuid("anonymous"));
        assert!(!is_uuid("0000000-00000-0000-0000-000000000002"));
    }

    #[test]
    fn refusals_naming_a_field_become_field_errors() {
        let e = refused(Refusal::Rejected(Rejection::Invalid(
            "Name: a policy with name \"x\" already exists".into(),
        )));
        assert_eq!(
            (e.status, e.field.as_deref()),
            (StatusCode::BAD_REQUEST, Some("Name"))
        );
        let e = refused(Refusal::Rejected(Rejection::Invalid(
            "No such ACL policy with ID \"p\"".into(),
        )));
        assert_eq!((e.status, e.field), (StatusCode::BAD_REQUEST, None));
    }

    #[test]
    fn expiration_needs_one_of_ttl_or_time_in_range() {
        let input = |ttl: Option<&str>, time: Option<String>| TokenInput {
            expirationttl: ttl.map(|t| Value::String(t.into())),
            expirationtime: time,
            ..Default::default()
        };
        assert_eq!(expiration(&input(None, None)).unwrap(), None);
        let at = expiration(&input(Some("10m"), None)).unwrap().unwrap();
        assert!(at > now_ms() + 500_000);
        assert_eq!(
            expiration(&input(Some("10s"), None))
                .unwrap_err()
                .field
                .as_deref(),
            Some("ExpirationTTL")
        );
        assert!(expiration(&input(Some("bad"), None)).is_err());
        let soon = rfc3339(now_ms() + 3_600_000);
        assert!(expiration(&input(None, Some(soon.clone())))
            .unwrap()
            .is_some());
        assert!(expiration(&input(Some("10m"), Some(soon))).is_err());
        let past = rfc3339(now_ms() - 1_000);
        assert_eq!(
            expiration(&input(None, Some(past)))
                .unwrap_err()
                .field
                .as_deref(),
            Some("ExpirationTime")
        );
    }
}
