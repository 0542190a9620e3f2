//! The decision: what a set of rules, merged, allows.

use std::collections::HashMap;

use crate::{Access, DefaultPolicy, Disposition, Global, Resource, Rule, Segment, Target};

/// What one token may do: the merged rules of all its policies over a default.
#[derive(Debug, Clone)]
pub struct Authorizer {
    default: DefaultPolicy,
    management: bool,
    exact: HashMap<(Segment, String), Disposition>,
    /// Per segment, longest prefix first.
    prefixes: HashMap<Segment, Vec<(String, Disposition)>>,
    globals: HashMap<Global, Disposition>,
}

impl Authorizer {
    /// Allows everything: ACLs off, or a management token.
    pub fn allow_all() -> Self {
        Authorizer {
            management: true,
            ..Self::new(DefaultPolicy::Allow, [])
        }
    }

    /// Denies everything.
    pub fn deny_all() -> Self {
        Self::new(DefaultPolicy::Deny, [])
    }

    /// A management token's authorizer (Consul's `global-management` policy): everything.
    pub fn management() -> Self {
        Self::allow_all()
    }

    /// The rules of a token's policies over the datacenter's default. Rules for the same
    /// target merge: deny over write over list over read.
    pub fn new(default: DefaultPolicy, rules: impl IntoIterator<Item = Rule>) -> Self {
        let mut exact: HashMap<(Segment, String), Disposition> = HashMap::new();
        let mut prefix_map: HashMap<(Segment, String), Disposition> = HashMap::new();
        let mut globals: HashMap<Global, Disposition> = HashMap::new();
        fn merge<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Disposition>, k: K, d: Disposition) {
            map.entry(k)
                .and_modify(|old| {
                    if d.precedence() > old.precedence() {
                        *old = d;
                    }
                })
                .or_insert(d);
        }
        for rule in rules {
            match rule.target {
                Target::Exact(segment, name) => {
                    merge(&mut exact, (segment, name), rule.disposition)
                }
                Target::Prefix(segment, name) => {
                    merge(&mut prefix_map, (segment, name), rule.disposition)
                }
                Target::Global(global) => merge(&mut globals, global, rule.disposition),
            }
        }
        let mut prefixes: HashMap<Segment, Vec<(String, Disposition)>> = HashMap::new();
        for ((segment, name), disposition) in prefix_map {
            prefixes
                .entry(segment)
                .or_default()
                .push((name, disposition));
        }
        for list in prefixes.values_mut() {
            list.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        }
        Authorizer {
            default,
            management: false,
            exact,
            prefixes,
            globals,
        }
    }

    /// Whether this is a management token's (or ACLs-off) authorizer, which allows all.
    pub fn is_management(&self) -> bool {
        self.management
    }

    /// The rule that decides for `resource`, if one applies.
    pub fn disposition(&self, resource: Resource<'_>) -> Option<Disposition> {
        match resource {
            Resource::Global(global) => self.globals.get(&global).copied(),
            Resource::Named(segment, name) => {
                if let Some(d) = self.exact.get(&(segment, name.to_string())) {
                    return Some(*d);
                }
                self.prefixes.get(&segment).and_then(|list| {
                    list.iter()
                        .find(|(prefix, _)| name.starts_with(prefix.as_str()))
                        .map(|(_, d)| *d)
                })
            }
        }
    }

    /// Whether `access` to `resource` is allowed: the exact rule, else the longest prefix
    /// rule, else the default.
    pub fn allows(&self, resource: Resource<'_>, access: Access) -> bool {
        if self.management {
            return true;
        }
        match self.disposition(resource) {
            Some(d) => d.grants(access),
            None => self.default == DefaultPolicy::Allow,
        }
    }

    /// Whether `access` is allowed to every name under `prefix`: no rule below it denies
    /// (or grants less), and the rule that decides for the prefix itself allows it. What a
    /// recursive KV delete needs.
    pub fn allows_all_under(&self, segment: Segment, prefix: &str, access: Access) -> bool {
        if self.management {
            return true;
        }
        if !self.allows(Resource::Named(segment, prefix), access) {
            return false;
        }
        let below_exact = self
            .exact
            .iter()
            .filter(|((s, name), _)| *s == segment && name.starts_with(prefix))
            .map(|(_, d)| *d);
        let below_prefix = self
            .prefixes
            .get(&segment)
            .into_iter()
            .flatten()
            .filter(|(name, _)| name.len() > prefix.len() && name.starts_with(prefix))
            .map(|(_, d)| *d);
        below_exact.chain(below_prefix).all(|d| d.grants(access))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(target: Target, disposition: Disposition) -> Rule {
        Rule {
            target,
            disposition,
        }
    }

    fn key(name: &str) -> Resource<'_> {
        Resource::Named(Segment::Key, name)
    }

    #[test]
    fn exact_then_longest_prefix_then_default() {
        let a = Authorizer::new(
            DefaultPolicy::Deny,
            [
                rule(Target::Prefix(Segment::Key, "".into()), Disposition::Read),
                rule(
                    Target::Prefix(Segment::Key, "app/".into()),
                    Disposition::Write,
                ),
                rule(
                    Target::Prefix(Segment::Key, "app/secret/".into()),
                    Disposition::Deny,
                ),
                rule(
                    Target::Exact(Segment::Key, "app/secret/ok".into()),
                    Disposition::Read,
                ),
            ],
        );
        assert!(a.allows(key("other"), Access::Read));
        assert!(!a.allows(key("other"), Access::Write));
        assert!(a.allows(key("app/x"), Access::Write));
        assert!(!a.allows(key("app/secret/x"), Access::Read));
        assert!(a.allows(key("app/secret/ok"), Access::Read));
        assert!(!a.allows(key("app/secret/ok"), Access::Write));
        assert!(!a.allows(Resource::Named(Segment::Service, "web"), Access::Read));
        assert!(!a.allows(Resource::Global(Global::Operator), Access::Read));
    }

    #[test]
    fn default_allow_applies_only_where_no_rule_does() {
        let a = Authorizer::new(
            DefaultPolicy::Allow,
            [rule(
                Target::Prefix(Segment::Service, "db".into()),
                Disposition::Deny,
            )],
        );
        assert!(a.allows(Resource::Named(Segment::Service, "web"), Access::Write));
        assert!(!a.allows(Resource::Named(Segment::Service, "db-1"), Access::Read));
    }

    #[test]
    fn rules_for_one_target_merge_deny_over_write_over_list_over_read() {
        let t = || Target::Prefix(Segment::Key, "a/".into());
        let a = Authorizer::new(
            DefaultPolicy::Deny,
            [rule(t(), Disposition::Read), rule(t(), Disposition::Write)],
        );
        assert!(a.allows(key("a/b"), Access::Write));
        let a = Authorizer::new(
            DefaultPolicy::Deny,
            [rule(t(), Disposition::Write), rule(t(), Disposition::Deny)],
        );
        assert!(!a.allows(key("a/b"), Access::Read));
        let a = Authorizer::new(
            DefaultPolicy::Deny,
            [rule(t(), Disposition::Read), rule(t(), Disposition::List)],
        );
        assert!(a.allows(key("a/b"), Access::List));
        assert!(!a.allows(key("a/b"), Access::Write));
    }

    #[test]
    fn management_and_deny_all() {
        assert!(Authorizer::management().allows(Resource::Global(Global::Acl), Access::Write));
        assert!(!Authorizer::deny_all().allows(key(""), Access::Read));
    }

    #[test]
    fn a_recursive_write_needs_every_rule_below_to_allow_it() {
        let a = Authorizer::new(
            DefaultPolicy::Deny,
            [
                rule(
                    Target::Prefix(Segment::Key, "a/".into()),
                    Disposition::Write,
                ),
                rule(
                    Target::Exact(Segment::Key, "a/locked".into()),
                    Disposition::Read,
                ),
            ],
        );
        assert!(!a.allows_all_under(Segment::Key, "a/", Access::Write));
        assert!(a.allows_all_under(Segment::Key, "a/x/", Access::Write));
        assert!(!a.allows_all_under(Segment::Key, "b/", Access::Write));
    }
}
