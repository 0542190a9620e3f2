//! ACL tokens and policies as the replicated state holds them, and the resolution of a
//! token's secret into what it may do.

use atoll_acl::{AclSettings, Authorizer};

use crate::State;

/// The SecretID of the anonymous token, used when a request carries none.
pub const ANONYMOUS_SECRET: &str = "anonymous";

/// A secret that names no token (Consul's `ACL not found`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ACL not found")]
pub struct AclNotFound;

impl State {
    /// What the token with this secret may do (`None`: the agent's default token, else the
    /// anonymous token). Everything when ACLs are off.
    pub fn acl_authorizer(
        &self,
        settings: &AclSettings,
        secret: Option<&str>,
    ) -> Result<Authorizer, AclNotFound> {
        if !settings.enabled {
            return Ok(Authorizer::allow_all());
        }
        let default = settings.tokens().default;
        let secret = secret
            .filter(|s| !s.is_empty())
            .or(default.as_deref())
            .unwrap_or(ANONYMOUS_SECRET);
        if secret == ANONYMOUS_SECRET {
            // The anonymous token holds no policies until tokens are stored.
            return Ok(Authorizer::new(settings.default_policy, []));
        }
        Err(AclNotFound)
    }
}
