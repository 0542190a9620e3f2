//! The authorizers of the secrets resolved recently, so that a request (or a DNS query) does
//! not find its token and merge its policies' rules again: that costs more than most
//! requests it guards.
//!
//! An entry is keyed by the secret actually resolved: the one the request carried, else the
//! agent's default token, else the anonymous token's ([`effective_secret`]). So a change of
//! the default token is a change of key, and the entry of the old one is never asked for
//! again. An entry holds while the ACL tables keep the index it was resolved at (any token
//! or policy written moves it) and its token has not expired.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use atoll_acl::{AclSettings, Authorizer, DefaultPolicy};
use parking_lot::Mutex;

use crate::acl::{effective_secret, AclNotFound};
use crate::State;

/// How many secrets' authorizers a cache keeps; it starts afresh when full.
const CACHED_SECRETS: usize = 1024;

/// What every caller may do with ACLs off.
static ALLOW_ALL: LazyLock<Arc<Authorizer>> = LazyLock::new(|| Arc::new(Authorizer::allow_all()));

/// Resolved authorizers by secret (see the module's documentation).
#[derive(Default)]
pub struct AuthorizerCache {
    entries: Mutex<HashMap<String, Cached>>,
}

struct Cached {
    acl_index: u64,
    default_policy: DefaultPolicy,
    expires_unix_ms: Option<u64>,
    authorizer: Arc<Authorizer>,
}

impl AuthorizerCache {
    /// What the caller carrying `secret` (`None`: the agent's default token, else the
    /// anonymous token) may do under `settings` at `now_ms` (milliseconds since the Unix
    /// epoch): [`State::acl_authorizer_at`], from the cache when it still holds.
    pub fn authorizer(
        &self,
        state: &State,
        settings: &AclSettings,
        secret: Option<&str>,
        now_ms: u64,
    ) -> Result<Arc<Authorizer>, AclNotFound> {
        if !settings.enabled {
            return Ok(ALLOW_ALL.clone());
        }
        let default = match secret.filter(|s| !s.is_empty()) {
            Some(_) => None,
            None => settings.default_token(),
        };
        let secret = effective_secret(secret, default.as_deref());
        let acl_index = state.indexes.acl;
        if let Some(hit) = self.get(secret, acl_index, settings.default_policy, now_ms) {
            return Ok(hit);
        }
        let token = state
            .acl_token_by_secret(secret, now_ms)
            .ok_or(AclNotFound)?;
        let authorizer = Arc::new(state.acl_token_authorizer(settings, &token));
        let mut entries = self.entries.lock();
        if entries.len() >= CACHED_SECRETS && !entries.contains_key(secret) {
            entries.clear();
        }
        entries.insert(
            secret.to_string(),
            Cached {
                acl_index,
                default_policy: settings.default_policy,
                expires_unix_ms: token.expiration_unix_ms,
                authorizer: authorizer.clone(),
            },
        );
        Ok(authorizer)
    }

    fn get(
        &self,
        secret: &str,
        acl_index: u64,
        default_policy: DefaultPolicy,
        now_ms: u64,
    ) -> Option<Arc<Authorizer>> {
        let entries = self.entries.lock();
        let cached = entries.get(secret)?;
        (cached.acl_index == acl_index
            && cached.default_policy == default_policy
            && cached.expires_unix_ms.is_none_or(|at| now_ms < at))
        .then(|| cached.authorizer.clone())
    }

    /// How many secrets are cached.
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
