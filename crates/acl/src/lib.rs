//! ACLs, Consul's system: what a token's policies allow. Pure: no state, no I/O.
//!
//! A policy is a list of [`Rule`]s (parsed from Consul's rules language by the `rules`
//! module); an [`Authorizer`] merges the rules of all of a token's policies and answers
//! whether an [`Access`] to a [`Resource`] is allowed: an exact rule for the name first, then
//! the longest matching prefix rule, then the datacenter's default policy.
#![forbid(unsafe_code)]

mod authorizer;
pub mod rules;
mod settings;

pub use authorizer::Authorizer;
pub use rules::RulesError;
pub use settings::{AclSettings, AgentTokens};

use serde::{Deserialize, Serialize};

/// A resource kind whose rules name a resource (`key "a/b"`, `service_prefix "web"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Segment {
    /// `agent`, `agent_prefix`: a node's agent endpoints, by node name.
    Agent,
    /// `event`, `event_prefix`: user events, by name.
    Event,
    /// `key`, `key_prefix`: KV entries, by key.
    Key,
    /// `node`, `node_prefix`: catalog nodes, by name.
    Node,
    /// `query`, `query_prefix`: prepared queries, by name.
    Query,
    /// `service`, `service_prefix`: catalog services, by name.
    Service,
    /// `session`, `session_prefix`: sessions, by the node they are created on.
    Session,
    /// `app`, `app_prefix`: Marathon apps and groups, by id (`/prod/web`); an extension of
    /// atoll's.
    App,
}

/// A resource kind that stands alone (`operator = "read"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Global {
    /// `acl`: tokens and policies.
    Acl,
    /// `keyring`: the gossip keyring.
    Keyring,
    /// `operator`: Raft peers, autopilot, cluster membership.
    Operator,
}

/// What a request touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    /// A named resource of a segmented kind.
    Named(Segment, &'a str),
    /// A resource that stands alone.
    Global(Global),
}

/// What a rule grants. Merging two rules for the same target keeps the stronger by
/// [`Disposition::precedence`]: deny, then write, then list, then read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Disposition {
    /// Nothing, whatever another rule or the default says.
    Deny,
    /// Reading.
    Read,
    /// Reading and listing (`key_prefix` only).
    List,
    /// Reading, listing and writing.
    Write,
}

impl Disposition {
    /// Which of two rules for the same target wins (higher wins).
    pub fn precedence(self) -> u8 {
        match self {
            Disposition::Read => 1,
            Disposition::List => 2,
            Disposition::Write => 3,
            Disposition::Deny => 4,
        }
    }

    /// Whether this disposition grants `access`.
    pub fn grants(self, access: Access) -> bool {
        match self {
            Disposition::Deny => false,
            Disposition::Read => access == Access::Read,
            Disposition::List => access != Access::Write,
            Disposition::Write => true,
        }
    }
}

/// What a request wants to do with a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read it.
    Read,
    /// List what lies under a prefix (KV `?keys` and `?recurse`).
    List,
    /// Change it.
    Write,
}

/// What a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Target {
    /// One name exactly (`key "a/b"`).
    Exact(Segment, String),
    /// Every name starting with this (`key_prefix "a/"`; `""` is every name).
    Prefix(Segment, String),
    /// A resource that stands alone.
    Global(Global),
}

/// One rule of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rule {
    /// What it applies to.
    pub target: Target,
    /// What it grants.
    pub disposition: Disposition,
}

/// The datacenter's answer where no rule applies (`--acl-default-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum DefaultPolicy {
    /// Everything not denied is allowed (Consul's default).
    #[default]
    Allow,
    /// Everything not granted is denied.
    Deny,
}
