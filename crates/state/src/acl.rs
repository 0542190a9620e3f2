//! ACL tokens and policies as the replicated state holds them, the commands that change
//! them, and the resolution of a token's secret into what it may do.
//!
//! Tables: `acl_tokens` by AccessorID (with a derived index from SecretID), `acl_policies`
//! by ID (names unique, without regard to case), and `acl_bootstrap_index`, the index of
//! the entry that bootstrapped ACLs (0: never).
//!
//! The builtin `global-management` policy and the anonymous token are written by the first
//! ACL command applied (usually the bootstrap), so a cluster that never uses ACLs carries no
//! ACL rows and its log replays as before. Until then they exist for every read through
//! [`State::acl_policy`], [`State::acl_token`] and the listings, and the resolution treats
//! the anonymous secret as the anonymous token without policies.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use atoll_acl::{AclSettings, Authorizer, Rule};
use serde::{Deserialize, Serialize};

use crate::command::{Outcome, Rejection};
use crate::state::{rejected_invalid, State};

/// The SecretID of the anonymous token, used when a request carries none.
pub const ANONYMOUS_SECRET: &str = "anonymous";

/// The AccessorID of the anonymous token.
pub const ANONYMOUS_ACCESSOR: &str = "00000000-0000-0000-0000-000000000002";

/// The ID of the builtin policy that allows everything.
pub const GLOBAL_MANAGEMENT_ID: &str = "00000000-0000-0000-0000-000000000001";

/// The name of the builtin policy that allows everything.
pub const GLOBAL_MANAGEMENT_NAME: &str = "global-management";

/// The secret a request or query is resolved with: the one it carries, else the agent's
/// default token, else the anonymous token's (empty ones count as none).
pub fn effective_secret<'a>(carried: Option<&'a str>, default: Option<&'a str>) -> &'a str {
    carried
        .filter(|s| !s.is_empty())
        .or(default.filter(|s| !s.is_empty()))
        .unwrap_or(ANONYMOUS_SECRET)
}

/// A secret that names no token (Consul's `ACL not found`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ACL not found")]
pub struct AclNotFound;

/// A token's SecretID: shown as `<hidden>` in Debug output, compared in constant time.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// The secret itself, for the answers that show it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no secret is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `other` is this secret, looking at every byte whatever the first mismatch.
    pub fn matches(&self, other: &str) -> bool {
        constant_time_eq(self.0.as_bytes(), other.as_bytes())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<hidden>")
    }
}

/// Equality of two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A token's link to a policy. Commands may give the ID or the name; stored links hold both
/// (the name as it was when linked; answers show the policy's current name).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PolicyLink {
    /// The policy's ID.
    pub id: String,
    /// The policy's name.
    pub name: String,
}

/// An ACL token.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AclToken {
    /// Public id (UUID).
    pub accessor_id: String,
    /// What requests carry.
    pub secret_id: Secret,
    /// Free text.
    pub description: String,
    /// The policies it holds.
    pub policies: Vec<PolicyLink>,
    /// Valid in this datacenter only.
    pub local: bool,
    /// When it was created (RFC 3339), chosen by the proposer.
    pub create_time: String,
    /// When it stops being valid (milliseconds since the Unix epoch); `None`: never.
    #[serde(default)]
    pub expiration_unix_ms: Option<u64>,
    /// Raft index of its creation.
    pub create_index: u64,
    /// Raft index of its last change.
    pub modify_index: u64,
}

impl AclToken {
    /// Whether it has expired at `now_ms` (milliseconds since the Unix epoch).
    pub fn expired_at(&self, now_ms: u64) -> bool {
        self.expiration_unix_ms.is_some_and(|at| at <= now_ms)
    }

    /// Whether it holds the builtin global-management policy.
    pub fn is_management(&self) -> bool {
        self.policies.iter().any(|p| p.id == GLOBAL_MANAGEMENT_ID)
    }
}

/// An ACL policy: its rules as written and as parsed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AclPolicy {
    /// ID (UUID).
    pub id: String,
    /// Unique name (`[A-Za-z0-9_-]`, at most 128 characters).
    pub name: String,
    /// Free text.
    pub description: String,
    /// The rules as written (HCL or JSON).
    pub rules: String,
    /// Datacenters it is valid in (empty: all); stored and echoed.
    pub datacenters: Vec<String>,
    /// The rules parsed (filled in by `apply`).
    pub parsed: Vec<Rule>,
    /// Raft index of its creation.
    pub create_index: u64,
    /// Raft index of its last change.
    pub modify_index: u64,
}

/// The builtin policy that allows everything.
pub fn global_management_policy() -> AclPolicy {
    AclPolicy {
        id: GLOBAL_MANAGEMENT_ID.to_string(),
        name: GLOBAL_MANAGEMENT_NAME.to_string(),
        description: "Builtin Policy that grants unlimited access".to_string(),
        ..AclPolicy::default()
    }
}

/// The anonymous token, as it is before anyone changes it.
pub fn anonymous_token() -> AclToken {
    AclToken {
        accessor_id: ANONYMOUS_ACCESSOR.to_string(),
        secret_id: Secret::new(ANONYMOUS_SECRET),
        description: "Anonymous Token".to_string(),
        create_time: "1970-01-01T00:00:00Z".to_string(),
        ..AclToken::default()
    }
}

/// `PUT /v1/acl/bootstrap` as a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclBootstrap {
    /// The new management token's AccessorID.
    pub accessor_id: String,
    /// Its SecretID.
    pub secret_id: Secret,
    /// When (RFC 3339).
    pub create_time: String,
    /// The reset index of a bootstrap done before, from the reset file: allows one more.
    pub reset_index: Option<u64>,
}

/// What replication from the primary datacenter changes here: the policies and global
/// tokens the primary holds that differ from this datacenter's (written as the primary has
/// them) and the ones it no longer holds (deleted). Local tokens are never in it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AclReplication {
    /// Policies created or changed in the primary.
    pub policies: Vec<AclPolicy>,
    /// IDs of policies the primary no longer holds.
    pub policy_deletes: Vec<String>,
    /// Global tokens created or changed in the primary (secrets included).
    pub tokens: Vec<AclToken>,
    /// AccessorIDs of global tokens the primary no longer holds.
    pub token_deletes: Vec<String>,
}

impl AclReplication {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
            && self.policy_deletes.is_empty()
            && self.tokens.is_empty()
            && self.token_deletes.is_empty()
    }
}

/// Whether two policies hold the same thing, whatever their indexes.
fn same_policy(a: &AclPolicy, b: &AclPolicy) -> bool {
    a.id == b.id
        && a.name == b.name
        && a.description == b.description
        && a.rules == b.rules
        && a.datacenters == b.datacenters
}

/// Whether two tokens hold the same thing, whatever their indexes.
fn same_token(a: &AclToken, b: &AclToken) -> bool {
    a.accessor_id == b.accessor_id
        && a.secret_id == b.secret_id
        && a.description == b.description
        && a.policies == b.policies
        && a.local == b.local
        && a.create_time == b.create_time
        && a.expiration_unix_ms == b.expiration_unix_ms
}

/// Whether a policy name is valid: Consul's `[A-Za-z0-9_-]{1,128}`.
pub fn valid_policy_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn invalid(message: String) -> Outcome {
    Outcome::Rejected(Rejection::Invalid(message))
}

impl State {
    /// A policy by ID (the builtin one also before it is stored).
    pub fn acl_policy(&self, id: &str) -> Option<AclPolicy> {
        match self.acl_policies.get(id) {
            Some(policy) => Some(policy.clone()),
            None if id == GLOBAL_MANAGEMENT_ID => Some(global_management_policy()),
            None => None,
        }
    }

    /// A policy by name, without regard to case.
    pub fn acl_policy_named(&self, name: &str) -> Option<AclPolicy> {
        self.acl_policies_all()
            .into_iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
    }

    /// Every policy, by ID.
    pub fn acl_policies_all(&self) -> Vec<AclPolicy> {
        let mut all: Vec<AclPolicy> = self.acl_policies.values().cloned().collect();
        if !self.acl_policies.contains_key(GLOBAL_MANAGEMENT_ID) {
            all.push(global_management_policy());
            all.sort_by(|a, b| a.id.cmp(&b.id));
        }
        all
    }

    /// A token by AccessorID (the anonymous one also before it is stored).
    pub fn acl_token(&self, accessor_id: &str) -> Option<AclToken> {
        match self.acl_tokens.get(accessor_id) {
            Some(token) => Some(token.clone()),
            None if accessor_id == ANONYMOUS_ACCESSOR => Some(anonymous_token()),
            None => None,
        }
    }

    /// Every token, by AccessorID.
    pub fn acl_tokens_all(&self) -> Vec<AclToken> {
        let mut all: Vec<AclToken> = self.acl_tokens.values().cloned().collect();
        if !self.acl_tokens.contains_key(ANONYMOUS_ACCESSOR) {
            all.push(anonymous_token());
            all.sort_by(|a, b| a.accessor_id.cmp(&b.accessor_id));
        }
        all
    }

    /// The token whose SecretID is `secret`, unless it has expired at `now_ms`.
    pub fn acl_token_by_secret(&self, secret: &str, now_ms: u64) -> Option<AclToken> {
        let stored = self
            .acl_secrets
            .get(secret)
            .and_then(|accessor| self.acl_tokens.get(accessor))
            .filter(|token| token.secret_id.matches(secret))
            .cloned();
        let token = match stored {
            Some(token) => token,
            None if secret == ANONYMOUS_SECRET
                && !self.acl_tokens.contains_key(ANONYMOUS_ACCESSOR) =>
            {
                anonymous_token()
            }
            None => return None,
        };
        (!token.expired_at(now_ms)).then_some(token)
    }

    /// What the token with this secret may do (`None`: the agent's default token, else the
    /// anonymous token). Everything when ACLs are off.
    pub fn acl_authorizer(
        &self,
        settings: &AclSettings,
        secret: Option<&str>,
    ) -> Result<Authorizer, AclNotFound> {
        self.acl_authorizer_at(settings, secret, now_unix_ms())
    }

    /// [`State::acl_authorizer`] at `now_ms` (milliseconds since the Unix epoch), which
    /// decides whether a token has expired.
    pub fn acl_authorizer_at(
        &self,
        settings: &AclSettings,
        secret: Option<&str>,
        now_ms: u64,
    ) -> Result<Authorizer, AclNotFound> {
        if !settings.enabled {
            return Ok(Authorizer::allow_all());
        }
        let default = settings.default_token();
        let secret = effective_secret(secret, default.as_deref());
        let token = self
            .acl_token_by_secret(secret, now_ms)
            .ok_or(AclNotFound)?;
        Ok(self.acl_token_authorizer(settings, &token))
    }

    /// What `token` may do: everything for a management token, else its policies' rules
    /// over the default policy.
    pub fn acl_token_authorizer(&self, settings: &AclSettings, token: &AclToken) -> Authorizer {
        if token.is_management() {
            return Authorizer::management();
        }
        let rules = token
            .policies
            .iter()
            .filter_map(|link| self.acl_policies.get(&link.id))
            .flat_map(|policy| policy.parsed.iter().cloned());
        Authorizer::new(settings.default_policy, rules)
    }

    /// Writes the builtin policy and the anonymous token if they are not stored yet.
    fn seed_acl_builtins(&mut self, index: u64) {
        if !self.acl_policies.contains_key(GLOBAL_MANAGEMENT_ID) {
            let policy = AclPolicy {
                create_index: index,
                modify_index: index,
                ..global_management_policy()
            };
            self.acl_policies.insert(policy.id.clone(), policy);
        }
        if !self.acl_tokens.contains_key(ANONYMOUS_ACCESSOR) {
            let token = AclToken {
                create_index: index,
                modify_index: index,
                ..anonymous_token()
            };
            self.put_acl_token(token);
        }
    }

    /// Stores a token, keeping the secret index.
    fn put_acl_token(&mut self, token: AclToken) {
        if let Some(old) = self.acl_tokens.get(&token.accessor_id) {
            self.acl_secrets.remove(old.secret_id.expose());
        }
        self.acl_secrets.insert(
            token.secret_id.expose().to_string(),
            token.accessor_id.clone(),
        );
        self.acl_tokens.insert(token.accessor_id.clone(), token);
    }

    /// Keeps the secret index for a token row replayed or loaded. The rows of one entry are
    /// replayed in key order, so a secret that moved to another token in that entry may be
    /// indexed for its new holder before its old holder's row is replayed: only an entry
    /// still naming the old holder is removed.
    pub(crate) fn index_acl_secret(&mut self, old: Option<&AclToken>, new: Option<&AclToken>) {
        if let Some(old) = old {
            if self.acl_secrets.get(old.secret_id.expose()) == Some(&old.accessor_id) {
                self.acl_secrets.remove(old.secret_id.expose());
            }
        }
        if let Some(new) = new {
            self.acl_secrets
                .insert(new.secret_id.expose().to_string(), new.accessor_id.clone());
        }
    }

    /// Rebuilds the secret index from the tokens.
    pub(crate) fn rebuild_acl_secrets(&mut self) {
        self.acl_secrets = self
            .acl_tokens
            .values()
            .map(|t| (t.secret_id.expose().to_string(), t.accessor_id.clone()))
            .collect();
    }

    /// Whether a secret is taken by a token other than `accessor_id` (the builtin anonymous
    /// secret included).
    fn secret_taken(&self, secret: &str, accessor_id: &str) -> bool {
        let holder = match self.acl_secrets.get(secret) {
            Some(holder) => Some(holder.as_str()),
            None if secret == ANONYMOUS_SECRET => Some(ANONYMOUS_ACCESSOR),
            None => None,
        };
        holder.is_some_and(|holder| holder != accessor_id)
    }

    /// `PUT /v1/acl/bootstrap`: the first management token, once (again only with the reset
    /// index of the last bootstrap).
    pub(crate) fn acl_bootstrap(&mut self, index: u64, bootstrap: &AclBootstrap) -> Outcome {
        let done = self.acl_bootstrap_index;
        if done != 0 && bootstrap.reset_index != Some(done) {
            return Outcome::Rejected(Rejection::Conflict(format!(
                "ACL bootstrap no longer allowed (reset index: {done})"
            )));
        }
        if bootstrap.accessor_id.is_empty() || bootstrap.secret_id.is_empty() {
            return rejected_invalid("Missing AccessorID or SecretID");
        }
        if self.acl_token(&bootstrap.accessor_id).is_some() {
            return rejected_invalid("AccessorID is already in use");
        }
        if self.secret_taken(bootstrap.secret_id.expose(), &bootstrap.accessor_id) {
            return rejected_invalid("SecretID is already in use");
        }
        self.seed_acl_builtins(index);
        self.put_acl_token(AclToken {
            accessor_id: bootstrap.accessor_id.clone(),
            secret_id: bootstrap.secret_id.clone(),
            description: "Bootstrap Token (Global Management)".to_string(),
            policies: vec![PolicyLink {
                id: GLOBAL_MANAGEMENT_ID.to_string(),
                name: GLOBAL_MANAGEMENT_NAME.to_string(),
            }],
            local: false,
            create_time: bootstrap.create_time.clone(),
            expiration_unix_ms: None,
            create_index: index,
            modify_index: index,
        });
        self.acl_bootstrap_index = index;
        Outcome::Done
    }

    /// The links of a token as given (by ID or by name) resolved to stored policies, each
    /// once.
    fn resolve_policy_links(&self, links: &[PolicyLink]) -> Result<Vec<PolicyLink>, String> {
        let mut resolved: Vec<PolicyLink> = Vec::new();
        for link in links {
            let policy = if !link.id.is_empty() {
                self.acl_policy(&link.id)
                    .ok_or_else(|| format!("No such ACL policy with ID {:?}", link.id))?
            } else if !link.name.is_empty() {
                self.acl_policy_named(&link.name)
                    .ok_or_else(|| format!("No such ACL policy with name {:?}", link.name))?
            } else {
                return Err("Policies: a policy link needs an ID or a Name".to_string());
            };
            if !resolved.iter().any(|r| r.id == policy.id) {
                resolved.push(PolicyLink {
                    id: policy.id,
                    name: policy.name,
                });
            }
        }
        Ok(resolved)
    }

    /// Creates (`create`) or updates a token. An update keeps what Consul keeps: the
    /// SecretID, Local, the expiration and the creation time may not change.
    pub(crate) fn acl_token_set(&mut self, index: u64, token: &AclToken, create: bool) -> Outcome {
        if token.accessor_id.is_empty() {
            return rejected_invalid("AccessorID: missing");
        }
        let policies = match self.resolve_policy_links(&token.policies) {
            Ok(policies) => policies,
            Err(message) => return invalid(message),
        };
        let existing = self.acl_token(&token.accessor_id);
        let stored = match (create, existing) {
            (true, Some(_)) => return rejected_invalid("AccessorID: already in use"),
            (true, None) => {
                if token.secret_id.is_empty() {
                    return rejected_invalid("SecretID: missing");
                }
                if self.secret_taken(token.secret_id.expose(), &token.accessor_id) {
                    return rejected_invalid("SecretID: already in use");
                }
                AclToken {
                    policies,
                    create_index: index,
                    modify_index: index,
                    ..token.clone()
                }
            }
            (false, None) => {
                return Outcome::Rejected(Rejection::NotFound(format!(
                    "Cannot find token {:?}",
                    token.accessor_id
                )))
            }
            (false, Some(existing)) => {
                if !token.secret_id.is_empty() && token.secret_id != existing.secret_id {
                    return rejected_invalid(
                        "SecretID: changing a token's SecretID is not permitted",
                    );
                }
                if token.local != existing.local {
                    return rejected_invalid("Local: cannot toggle the local mode of a token");
                }
                if token.expiration_unix_ms.is_some()
                    && token.expiration_unix_ms != existing.expiration_unix_ms
                {
                    return rejected_invalid(
                        "ExpirationTime: cannot change the expiration time of a token",
                    );
                }
                AclToken {
                    description: token.description.clone(),
                    policies,
                    modify_index: index,
                    ..existing
                }
            }
        };
        self.seed_acl_builtins(index);
        self.put_acl_token(stored);
        Outcome::Done
    }

    /// Deletes a token; the anonymous one cannot go. An unknown AccessorID changes nothing.
    pub(crate) fn acl_token_delete(&mut self, index: u64, accessor_id: &str) -> Outcome {
        if accessor_id == ANONYMOUS_ACCESSOR {
            return rejected_invalid("Delete operation not permitted on the anonymous token");
        }
        if !self.acl_tokens.contains_key(accessor_id) {
            return Outcome::Done;
        }
        self.seed_acl_builtins(index);
        if let Some(old) = self.acl_tokens.remove(accessor_id) {
            self.acl_secrets.remove(old.secret_id.expose());
        }
        Outcome::Done
    }

    /// Creates (`create`) or updates a policy after checking its name and parsing its rules.
    pub(crate) fn acl_policy_set(
        &mut self,
        index: u64,
        policy: &AclPolicy,
        create: bool,
    ) -> Outcome {
        if policy.id.is_empty() {
            return rejected_invalid("ID: missing");
        }
        if !valid_policy_name(&policy.name) {
            return invalid(format!(
                "Name: invalid policy name {:?} (letters, digits, _ and -, at most 128)",
                policy.name
            ));
        }
        let parsed = match atoll_acl::rules::parse(&policy.rules) {
            Ok(parsed) => parsed,
            Err(e) => return invalid(format!("Rules: {e}")),
        };
        if let Some(other) = self
            .acl_policy_named(&policy.name)
            .filter(|other| other.id != policy.id)
        {
            return invalid(format!(
                "Name: a policy with name {:?} already exists ({})",
                policy.name, other.id
            ));
        }
        let existing = self.acl_policy(&policy.id);
        let create_index = match (create, &existing) {
            (true, Some(_)) => return rejected_invalid("ID: already in use"),
            (true, None) => index,
            (false, None) => {
                return Outcome::Rejected(Rejection::NotFound(format!(
                    "Cannot find policy {:?}",
                    policy.id
                )))
            }
            (false, Some(existing)) => {
                if existing.id == GLOBAL_MANAGEMENT_ID {
                    if policy.name != existing.name {
                        return rejected_invalid(
                            "Name: changing the name of the builtin global-management policy is not permitted",
                        );
                    }
                    if !parsed.is_empty() {
                        return rejected_invalid(
                            "Rules: changing the rules of the builtin global-management policy is not permitted",
                        );
                    }
                }
                if self.acl_policies.contains_key(&existing.id) {
                    existing.create_index
                } else {
                    index
                }
            }
        };
        self.seed_acl_builtins(index);
        let stored = AclPolicy {
            parsed,
            create_index,
            modify_index: index,
            ..policy.clone()
        };
        self.acl_policies.insert(stored.id.clone(), stored);
        Outcome::Done
    }

    /// Deletes a policy; the builtin one cannot go. Tokens keep their link to it, which
    /// answers and the resolution skip. An unknown ID changes nothing.
    pub(crate) fn acl_policy_delete(&mut self, index: u64, id: &str) -> Outcome {
        if id == GLOBAL_MANAGEMENT_ID {
            return rejected_invalid(
                "Delete operation not permitted on the builtin global-management policy",
            );
        }
        if self.acl_policies.contains_key(id) {
            self.seed_acl_builtins(index);
            self.acl_policies.remove(id);
        }
        Outcome::Done
    }
}

impl State {
    /// The difference between the primary datacenter's policies and global tokens
    /// (`policies`, `tokens`: everything it holds, as its replication endpoint lists them)
    /// and this datacenter's. Local tokens here are left alone, and local tokens upstream
    /// (which the primary does not send) are ignored.
    pub fn acl_replication_diff(
        &self,
        policies: &[AclPolicy],
        tokens: &[AclToken],
    ) -> AclReplication {
        let mut diff = AclReplication::default();
        let upstream_policies: std::collections::BTreeSet<&str> =
            policies.iter().map(|p| p.id.as_str()).collect();
        for policy in policies {
            let here = self.acl_policy(&policy.id);
            if !here.is_some_and(|here| same_policy(&here, policy)) {
                diff.policies.push(AclPolicy {
                    parsed: Vec::new(),
                    create_index: 0,
                    modify_index: 0,
                    ..policy.clone()
                });
            }
        }
        diff.policy_deletes = self
            .acl_policies
            .keys()
            .filter(|id| id.as_str() != GLOBAL_MANAGEMENT_ID)
            .filter(|id| !upstream_policies.contains(id.as_str()))
            .cloned()
            .collect();
        let global: Vec<&AclToken> = tokens.iter().filter(|t| !t.local).collect();
        let upstream_tokens: std::collections::BTreeSet<&str> =
            global.iter().map(|t| t.accessor_id.as_str()).collect();
        for token in global {
            match self.acl_token(&token.accessor_id) {
                Some(here) if here.local => {}
                Some(here) if same_token(&here, token) => {}
                _ => diff.tokens.push(AclToken {
                    create_index: 0,
                    modify_index: 0,
                    ..token.clone()
                }),
            }
        }
        diff.token_deletes = self
            .acl_tokens
            .values()
            .filter(|t| !t.local && t.accessor_id != ANONYMOUS_ACCESSOR)
            .filter(|t| !upstream_tokens.contains(t.accessor_id.as_str()))
            .map(|t| t.accessor_id.clone())
            .collect();
        diff
    }

    /// Writes what replication from the primary found: deletions first, then the rows as
    /// the primary holds them. Upstream is authoritative for policies and global tokens: a
    /// policy here whose name a replicated one takes, or a global token holding a replicated
    /// token's secret, goes. Local tokens are never changed nor removed; a replicated token
    /// that would collide with one (same AccessorID or SecretID) is skipped, as is a policy
    /// whose rules do not parse (neither comes from a primary running this release).
    pub(crate) fn acl_replicate(&mut self, index: u64, replication: &AclReplication) -> Outcome {
        if replication.is_empty() {
            return Outcome::Done;
        }
        for id in &replication.policy_deletes {
            if id != GLOBAL_MANAGEMENT_ID {
                self.acl_policies.remove(id);
            }
        }
        for accessor_id in &replication.token_deletes {
            let global = self
                .acl_tokens
                .get(accessor_id)
                .is_some_and(|t| !t.local && t.accessor_id != ANONYMOUS_ACCESSOR);
            if global {
                if let Some(old) = self.acl_tokens.remove(accessor_id) {
                    self.acl_secrets.remove(old.secret_id.expose());
                }
            }
        }
        for policy in &replication.policies {
            let Ok(parsed) = atoll_acl::rules::parse(&policy.rules) else {
                continue;
            };
            if policy.id.is_empty() || !valid_policy_name(&policy.name) {
                continue;
            }
            let taken: Vec<String> = self
                .acl_policies
                .values()
                .filter(|p| p.id != policy.id && p.name.eq_ignore_ascii_case(&policy.name))
                .map(|p| p.id.clone())
                .collect();
            for id in taken {
                self.acl_policies.remove(&id);
            }
            let create_index = self
                .acl_policies
                .get(&policy.id)
                .map_or(index, |p| p.create_index);
            let stored = AclPolicy {
                parsed,
                create_index,
                modify_index: index,
                ..policy.clone()
            };
            self.acl_policies.insert(stored.id.clone(), stored);
        }
        for token in &replication.tokens {
            if token.local || token.accessor_id.is_empty() || token.secret_id.is_empty() {
                continue;
            }
            let existing = self.acl_tokens.get(&token.accessor_id).cloned();
            if existing.as_ref().is_some_and(|t| t.local) {
                continue;
            }
            let holder = self
                .acl_secrets
                .get(token.secret_id.expose())
                .filter(|holder| **holder != token.accessor_id)
                .and_then(|holder| self.acl_tokens.get(holder))
                .map(|t| (t.accessor_id.clone(), t.local));
            match holder {
                Some((_, true)) => continue,
                Some((other, false)) => {
                    if let Some(old) = self.acl_tokens.remove(&other) {
                        self.acl_secrets.remove(old.secret_id.expose());
                    }
                }
                None => {}
            }
            let stored = AclToken {
                create_index: existing.map_or(index, |t| t.create_index),
                modify_index: index,
                ..token.clone()
            };
            self.put_acl_token(stored);
        }
        Outcome::Done
    }
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
