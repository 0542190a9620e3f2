//! A node's ACL settings: whether ACLs are on, the default policy and the agent's tokens.

use parking_lot::RwLock;

use crate::DefaultPolicy;

/// The agent's own tokens (Consul's `acl.tokens`), changed at run time through
/// `PUT /v1/agent/token/:type`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AgentTokens {
    /// Used for requests that carry no token, and for DNS (`default`).
    pub default: Option<String>,
    /// Used by the agent for its own writes (`agent`).
    pub agent: Option<String>,
    /// Used by the leader of a secondary datacenter to read the primary's policies and
    /// global tokens (`replication`); needs `acl = "write"` there.
    pub replication: Option<String>,
}

/// A node's ACL settings.
#[derive(Debug, Default)]
pub struct AclSettings {
    /// `--acl-enabled`: without it every request is allowed and the ACL endpoints answer 401.
    pub enabled: bool,
    /// `--acl-default-policy`.
    pub default_policy: DefaultPolicy,
    /// `--primary-datacenter`: the datacenter whose policies and global tokens every other
    /// one replicates (empty: the node's own, so it is the primary).
    pub primary_datacenter: String,
    tokens: RwLock<AgentTokens>,
}

/// Whether each token is set, never the tokens themselves.
impl std::fmt::Debug for AgentTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |token: &Option<String>| token.as_ref().map(|_| "<hidden>");
        f.debug_struct("AgentTokens")
            .field("default", &shown(&self.default))
            .field("agent", &shown(&self.agent))
            .field("replication", &shown(&self.replication))
            .finish()
    }
}

impl AclSettings {
    /// ACLs off.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// ACLs on, with this default policy and these agent tokens.
    pub fn enabled(default_policy: DefaultPolicy, tokens: AgentTokens) -> Self {
        AclSettings {
            enabled: true,
            default_policy,
            primary_datacenter: String::new(),
            tokens: RwLock::new(tokens),
        }
    }

    /// The same settings with `dc` as the primary datacenter (empty: the node's own).
    pub fn with_primary_datacenter(mut self, dc: impl Into<String>) -> Self {
        self.primary_datacenter = dc.into();
        self
    }

    /// Whether ACLs are on and `own` is not the primary datacenter: policies and global
    /// tokens then come from the primary.
    pub fn replicates_into(&self, own: &str) -> bool {
        self.enabled && !self.primary_datacenter.is_empty() && self.primary_datacenter != own
    }

    /// The agent's tokens now.
    pub fn tokens(&self) -> AgentTokens {
        self.tokens.read().clone()
    }

    /// The agent's default token now.
    pub fn default_token(&self) -> Option<String> {
        self.tokens.read().default.clone()
    }

    /// Replaces the agent's tokens.
    pub fn set_tokens(&self, tokens: AgentTokens) {
        *self.tokens.write() = tokens;
    }
}
