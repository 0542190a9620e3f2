//! ACL tables in `apply`: bootstrap, tokens, policies, their refusals, the change feed,
//! snapshots and the resolution of a secret.

use atoll_acl::{Access, AclSettings, AgentTokens, DefaultPolicy, Global, Resource, Segment};
use proptest::prelude::*;

use crate::acl::*;
use crate::snapshot;
use crate::*;

fn bootstrap(accessor: &str, secret: &str, reset: Option<u64>) -> Command {
    Command::AclBootstrap(Box::new(AclBootstrap {
        accessor_id: accessor.into(),
        secret_id: Secret::new(secret),
        create_time: "2026-01-01T00:00:00Z".into(),
        reset_index: reset,
    }))
}

fn policy(id: &str, name: &str, rules: &str, create: bool) -> Command {
    Command::AclPolicySet {
        policy: Box::new(AclPolicy {
            id: id.into(),
            name: name.into(),
            rules: rules.into(),
            ..Default::default()
        }),
        create,
    }
}

fn link_id(id: &str) -> PolicyLink {
    PolicyLink {
        id: id.into(),
        name: String::new(),
    }
}

fn link_name(name: &str) -> PolicyLink {
    PolicyLink {
        id: String::new(),
        name: name.into(),
    }
}

fn token(accessor: &str, secret: &str, policies: Vec<PolicyLink>, create: bool) -> Command {
    Command::AclTokenSet {
        token: Box::new(AclToken {
            accessor_id: accessor.into(),
            secret_id: Secret::new(secret),
            description: format!("token {accessor}"),
            policies,
            create_time: "2026-01-01T00:00:00Z".into(),
            ..Default::default()
        }),
        create,
    }
}

fn rejected(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Rejected(r) => r.to_string(),
        other => panic!("not rejected: {other:?}"),
    }
}

fn on(default_policy: DefaultPolicy) -> AclSettings {
    AclSettings::enabled(default_policy, AgentTokens::default())
}

#[test]
fn bootstrap_happens_once_unless_the_reset_index_matches() {
    let mut state = State::default();
    assert_eq!(
        state.acl_policies_all().len(),
        1,
        "the builtin shows before"
    );
    assert_eq!(state.acl_tokens_all()[0].accessor_id, ANONYMOUS_ACCESSOR);
    let (outcome, changes) = state.apply(5, &bootstrap("acc-1", "sec-1", None));
    assert_eq!(outcome, Outcome::Done);
    // The token, the builtin policy, the anonymous token and the marker.
    assert_eq!(changes.len(), 4, "{changes:?}");
    assert!(changes.iter().all(|c| c.table() == Table::Acl));
    assert!(changes
        .iter()
        .any(|c| matches!(c, Change::AclBootstrapped { old: 0, new: 5 })));
    assert_eq!(state.indexes.acl, 5);
    assert_eq!(state.acl_bootstrap_index, 5);
    let token = state.acl_token("acc-1").unwrap();
    assert!(token.is_management());
    assert_eq!(token.description, "Bootstrap Token (Global Management)");

    let (outcome, changes) = state.apply(6, &bootstrap("acc-2", "sec-2", None));
    assert_eq!(
        rejected(&outcome),
        "ACL bootstrap no longer allowed (reset index: 5)"
    );
    assert!(changes.is_empty());
    assert_eq!(state.indexes.acl, 5);
    let (outcome, _) = state.apply(7, &bootstrap("acc-2", "sec-2", Some(4)));
    assert!(matches!(outcome, Outcome::Rejected(Rejection::Conflict(_))));
    let (outcome, _) = state.apply(8, &bootstrap("acc-2", "sec-2", Some(5)));
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(state.acl_bootstrap_index, 8);
    // The same reset index does not work twice.
    let (outcome, _) = state.apply(9, &bootstrap("acc-3", "sec-3", Some(5)));
    assert!(matches!(outcome, Outcome::Rejected(_)));
}

#[test]
fn tokens_link_policies_by_id_or_name_and_refuse_unknown_ones() {
    let mut state = State::default();
    state.apply(
        1,
        &policy(
            "p1",
            "readers",
            r#"key_prefix "" { policy = "read" }"#,
            true,
        ),
    );
    let (outcome, changes) = state.apply(2, &token("t1", "s1", vec![link_name("READERS")], true));
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(changes.len(), 1);
    assert_eq!(
        state.acl_token("t1").unwrap().policies,
        vec![PolicyLink {
            id: "p1".into(),
            name: "readers".into()
        }]
    );
    let before = state.clone();
    for (command, text) in [
        (
            token("t2", "s2", vec![link_name("nope")], true),
            "No such ACL policy with name \"nope\"",
        ),
        (
            token("t2", "s2", vec![link_id("p9")], true),
            "No such ACL policy with ID \"p9\"",
        ),
        (
            token("t1", "s9", vec![], true),
            "AccessorID: already in use",
        ),
        (token("t2", "s1", vec![], true), "SecretID: already in use"),
        (
            token("t2", "anonymous", vec![], true),
            "SecretID: already in use",
        ),
        (token("t2", "", vec![], true), "SecretID: missing"),
        (token("t9", "", vec![], false), "Cannot find token"),
        (
            token("t1", "other", vec![], false),
            "changing a token's SecretID is not permitted",
        ),
    ] {
        let (outcome, changes) = state.apply(3, &command);
        assert!(
            rejected(&outcome).contains(text),
            "{command:?}: {outcome:?}"
        );
        assert!(changes.is_empty());
    }
    assert_eq!(state, before);
    // An update without the secret keeps it, and the creation.
    let (outcome, _) = state.apply(
        4,
        &token("t1", "", vec![link_id(GLOBAL_MANAGEMENT_ID)], false),
    );
    assert_eq!(outcome, Outcome::Done);
    let t1 = state.acl_token("t1").unwrap();
    assert_eq!(t1.secret_id.expose(), "s1");
    assert_eq!((t1.create_index, t1.modify_index), (2, 4));
    assert!(t1.is_management());
}

#[test]
fn builtins_cannot_be_deleted_and_policy_names_are_checked() {
    let mut state = State::default();
    let (outcome, _) = state.apply(
        1,
        &Command::AclTokenDelete {
            accessor_id: ANONYMOUS_ACCESSOR.into(),
        },
    );
    assert!(rejected(&outcome).contains("anonymous token"));
    let (outcome, _) = state.apply(
        2,
        &Command::AclPolicyDelete {
            id: GLOBAL_MANAGEMENT_ID.into(),
        },
    );
    assert!(rejected(&outcome).contains("global-management"));
    let (outcome, _) = state.apply(3, &policy("p1", "bad name", "", true));
    assert!(rejected(&outcome).starts_with("Name: invalid policy name"));
    let (outcome, _) = state.apply(3, &policy("p1", "Global-Management", "", true));
    assert!(rejected(&outcome).contains("already exists"));
    let (outcome, _) = state.apply(
        3,
        &policy("p1", "x", "key \"a\" { policy = \"nope\" }", true),
    );
    assert!(rejected(&outcome).starts_with("Rules: Failed to parse ACL rules: line 1"));
    let (outcome, _) = state.apply(
        3,
        &policy(
            GLOBAL_MANAGEMENT_ID,
            GLOBAL_MANAGEMENT_NAME,
            "acl = \"read\"",
            false,
        ),
    );
    assert!(rejected(&outcome).contains("rules of the builtin"));
    assert_eq!(state, State::default());
    // Deleting what is not there changes nothing and is no error.
    let (outcome, changes) = state.apply(4, &Command::AclPolicyDelete { id: "p9".into() });
    assert_eq!((outcome, changes.len()), (Outcome::Done, 0));
    // A policy deleted leaves its links, which grant nothing any more.
    state.apply(5, &policy("p1", "ops", "operator = \"write\"", true));
    state.apply(6, &token("t1", "s1", vec![link_id("p1")], true));
    let settings = on(DefaultPolicy::Deny);
    let operator = Resource::Global(Global::Operator);
    assert!(state
        .acl_authorizer(&settings, Some("s1"))
        .unwrap()
        .allows(operator, Access::Write));
    state.apply(7, &Command::AclPolicyDelete { id: "p1".into() });
    assert!(!state
        .acl_authorizer(&settings, Some("s1"))
        .unwrap()
        .allows(operator, Access::Read));
}

#[test]
fn a_secret_resolves_to_its_policies_over_the_default() {
    let mut state = State::default();
    let off = AclSettings::disabled();
    assert!(state
        .acl_authorizer(&off, Some("whatever"))
        .unwrap()
        .is_management());
    let deny = on(DefaultPolicy::Deny);
    assert_eq!(
        state.acl_authorizer(&deny, Some("unknown")).unwrap_err(),
        AclNotFound
    );
    // Anonymous before any ACL write: no policies, the default decides.
    let anonymous = state.acl_authorizer(&deny, None).unwrap();
    assert!(!anonymous.allows(Resource::Named(Segment::Key, "a"), Access::Read));
    assert!(state
        .acl_authorizer(&on(DefaultPolicy::Allow), None)
        .unwrap()
        .allows(Resource::Named(Segment::Key, "a"), Access::Write));

    state.apply(1, &bootstrap("root", "root-secret", None));
    state.apply(
        2,
        &policy(
            "p1",
            "kv",
            r#"key_prefix "app/" { policy = "write" }"#,
            true,
        ),
    );
    state.apply(3, &token("t1", "s1", vec![link_id("p1")], true));
    assert!(state
        .acl_authorizer(&deny, Some("root-secret"))
        .unwrap()
        .is_management());
    let a = state.acl_authorizer(&deny, Some("s1")).unwrap();
    assert!(a.allows(Resource::Named(Segment::Key, "app/x"), Access::Write));
    assert!(!a.allows(Resource::Named(Segment::Key, "other"), Access::Read));
    // The agent's default token stands in for a request without one.
    let with_default = AclSettings::enabled(
        DefaultPolicy::Deny,
        AgentTokens {
            default: Some("s1".into()),
            ..AgentTokens::default()
        },
    );
    assert!(state
        .acl_authorizer(&with_default, None)
        .unwrap()
        .allows(Resource::Named(Segment::Key, "app/y"), Access::Write));
    // The anonymous token given a policy opens what it allows.
    state.apply(
        4,
        &token(ANONYMOUS_ACCESSOR, "", vec![link_name("kv")], false),
    );
    assert!(state
        .acl_authorizer(&deny, None)
        .unwrap()
        .allows(Resource::Named(Segment::Key, "app/z"), Access::Write));
    // A secret that differs in its last byte is not found.
    assert!(state.acl_authorizer(&deny, Some("s2")).is_err());
}

#[test]
fn an_expired_token_is_not_found() {
    let mut state = State::default();
    let mut command = token("t1", "s1", vec![], true);
    if let Command::AclTokenSet { token, .. } = &mut command {
        token.expiration_unix_ms = Some(1_000);
    }
    state.apply(1, &command);
    let deny = on(DefaultPolicy::Deny);
    assert!(state.acl_authorizer_at(&deny, Some("s1"), 999).is_ok());
    assert!(state.acl_authorizer_at(&deny, Some("s1"), 1_000).is_err());
    assert!(state.acl_token_by_secret("s1", 2_000).is_none());
}

#[test]
fn secrets_are_hidden_from_debug_output() {
    let command = bootstrap("acc", "very-secret-value", None);
    let shown = format!("{command:?}");
    assert!(!shown.contains("very-secret-value"), "{shown}");
    assert!(shown.contains("<hidden>"));
    let mut state = State::default();
    state.apply(1, &command);
    let shown = format!("{:?}", state.acl_tokens);
    assert!(!shown.contains("very-secret-value"), "{shown}");
}

#[test]
fn replay_and_snapshots_carry_the_acl_tables() {
    let mut state = State::default();
    let mut replayed = State::default();
    let commands = [
        bootstrap("root", "root-secret", None),
        policy("p1", "kv", r#"key "a" { policy = "read" }"#, true),
        token("t1", "s1", vec![link_id("p1")], true),
        token("t1", "", vec![], false),
        Command::AclTokenDelete {
            accessor_id: "t1".into(),
        },
        token("t2", "s1", vec![link_name("kv")], true),
        policy("p1", "kv2", "", false),
    ];
    for (i, command) in commands.iter().enumerate() {
        let index = i as u64 + 1;
        let (outcome, changes) = state.apply(index, command);
        assert!(
            !matches!(outcome, Outcome::Rejected(_)),
            "{command:?}: {outcome:?}"
        );
        replayed.replay(index, &changes);
        assert_eq!(replayed, state);
    }
    let deny = on(DefaultPolicy::Deny);
    assert!(replayed.acl_authorizer(&deny, Some("s1")).is_ok());
    let restored = snapshot::decode_state(&snapshot::encode_state(&state).unwrap()).unwrap();
    assert_eq!(restored, state);
    assert!(restored
        .acl_authorizer(&deny, Some("root-secret"))
        .unwrap()
        .is_management());
}

#[test]
fn a_snapshot_and_commands_of_the_version_before_acls_still_load() {
    let mut state = State::default();
    state.apply(
        1,
        &Command::KvSet {
            key: "k".into(),
            value: b"v".to_vec(),
            flags: 0,
            cas: None,
        },
    );
    // Version 2 wrote the same MessagePack, without the ACL fields.
    let mut value = serde_json::to_value(&state).unwrap();
    let object = value.as_object_mut().unwrap();
    for field in ["acl_tokens", "acl_policies", "acl_bootstrap_index"] {
        assert!(object.remove(field).is_some(), "{field}");
    }
    object["indexes"].as_object_mut().unwrap().remove("acl");
    let mut whole = vec![snapshot::FORMAT_BEFORE_ACL];
    snapshot::encode_into(&mut whole, &value).unwrap();
    assert_eq!(snapshot::decode_state(&whole).unwrap(), state);
    // In parts, each part with the old version byte.
    let parts: Vec<Vec<u8>> = snapshot::state_parts(&state)
        .map(|part| {
            let mut part = part.unwrap();
            part[0] = snapshot::FORMAT_BEFORE_ACL;
            part
        })
        .collect();
    assert_eq!(snapshot::decode_state_parts(&parts).unwrap(), state);
    let mut command = vec![snapshot::FORMAT_BEFORE_ACL];
    let kv = Command::KvDelete {
        key: "k".into(),
        recurse: false,
        cas: None,
    };
    snapshot::encode_into(&mut command, &kv).unwrap();
    assert_eq!(snapshot::decode::<Command>(&command).unwrap(), kv);
    assert_eq!(snapshot::encode(&kv).unwrap()[0], snapshot::FORMAT_VERSION);
}

/// ACL commands for the replay property test.
pub(crate) fn arb_acl_command() -> impl Strategy<Value = Command> {
    let accessor = prop::sample::select(vec!["t1", "t2", ANONYMOUS_ACCESSOR]);
    let secret = prop::sample::select(vec!["s1", "s2", ""]);
    let policy_id = prop::sample::select(vec!["p1", "p2", GLOBAL_MANAGEMENT_ID]);
    let name = prop::sample::select(vec!["kv", "KV", "ops", GLOBAL_MANAGEMENT_NAME]);
    prop_oneof![
        (accessor.clone(), secret.clone(), prop::option::of(0u64..4))
            .prop_map(|(a, s, reset)| bootstrap(a, s, reset)),
        (accessor.clone(), secret, policy_id.clone(), any::<bool>())
            .prop_map(|(a, s, p, create)| token(a, s, vec![link_id(p)], create)),
        accessor.prop_map(|a| Command::AclTokenDelete {
            accessor_id: a.into()
        }),
        (policy_id.clone(), name, any::<bool>(), any::<bool>()).prop_map(
            |(id, name, good, create)| policy(
                id,
                name,
                if good {
                    "key \"a\" { policy = \"read\" }"
                } else {
                    "key {"
                },
                create
            )
        ),
        policy_id
            .clone()
            .prop_map(|id| Command::AclPolicyDelete { id: id.into() }),
        (
            policy_id,
            prop::sample::select(vec!["t1", "t2", "t3"]),
            prop::sample::select(vec!["s1", "s2", "s3"]),
            any::<bool>(),
        )
            .prop_map(|(p, a, s, delete)| {
                let mut replication = AclReplication::default();
                if delete {
                    replication.policy_deletes.push(p.into());
                    replication.token_deletes.push(a.into());
                } else {
                    replication.policies.push(AclPolicy {
                        id: p.into(),
                        name: format!("replicated-{p}"),
                        rules: "key \"r\" { policy = \"write\" }".into(),
                        ..Default::default()
                    });
                    replication.tokens.push(AclToken {
                        accessor_id: a.into(),
                        secret_id: Secret::new(s),
                        policies: vec![link_id(p)],
                        ..Default::default()
                    });
                }
                Command::AclReplicate(Box::new(replication))
            }),
    ]
}

/// A global token as the primary lists it.
fn global_token(accessor: &str, secret: &str, policy: &str) -> AclToken {
    AclToken {
        accessor_id: accessor.into(),
        secret_id: Secret::new(secret),
        description: format!("token {accessor}"),
        policies: vec![PolicyLink {
            id: policy.into(),
            name: String::new(),
        }],
        create_time: "2026-01-01T00:00:00Z".into(),
        ..Default::default()
    }
}

/// Applies the difference between `primary`'s policies and global tokens and `secondary`'s
/// to `secondary`, as the replication loop does; the difference it wrote.
fn replicate(primary: &State, secondary: &mut State, index: u64) -> AclReplication {
    let tokens: Vec<AclToken> = primary
        .acl_tokens_all()
        .into_iter()
        .filter(|t| !t.local)
        .collect();
    let diff = secondary.acl_replication_diff(&primary.acl_policies_all(), &tokens);
    if !diff.is_empty() {
        let (outcome, _) = secondary.apply(index, &Command::AclReplicate(Box::new(diff.clone())));
        assert_eq!(outcome, Outcome::Done);
    }
    diff
}

#[test]
fn replication_writes_the_primarys_policies_and_global_tokens_and_keeps_local_tokens() {
    let mut primary = State::default();
    primary.apply(1, &bootstrap("boot", "boot-secret", None));
    primary.apply(
        2,
        &policy(
            "p1",
            "kv-read",
            r#"key_prefix "" { policy = "read" }"#,
            true,
        ),
    );
    primary.apply(3, &token("g1", "g1-secret", vec![link_id("p1")], true));
    let mut local_upstream = global_token("l1", "l1-secret", "p1");
    local_upstream.local = true;
    primary.apply(
        4,
        &Command::AclTokenSet {
            token: Box::new(local_upstream),
            create: true,
        },
    );

    let mut secondary = State::default();
    let mut local = global_token("here", "here-secret", GLOBAL_MANAGEMENT_ID);
    local.local = true;
    secondary.apply(
        1,
        &Command::AclTokenSet {
            token: Box::new(local),
            create: true,
        },
    );
    let before_local = secondary.acl_token("here").unwrap();

    let diff = replicate(&primary, &mut secondary, 10);
    assert_eq!(diff.policies.len(), 1, "{diff:?}");
    assert_eq!(
        diff.tokens
            .iter()
            .map(|t| t.accessor_id.as_str())
            .collect::<Vec<_>>(),
        ["boot", "g1"],
        "the primary's local token stays there; the anonymous one is the same"
    );
    assert_eq!(secondary.indexes.acl, 10);
    let settings = on(DefaultPolicy::Deny);
    let reader = secondary
        .acl_authorizer(&settings, Some("g1-secret"))
        .unwrap();
    assert!(reader.allows(Resource::Named(Segment::Key, "a"), Access::Read));
    assert!(!reader.allows(Resource::Named(Segment::Key, "a"), Access::Write));
    assert!(secondary
        .acl_authorizer(&settings, Some("boot-secret"))
        .unwrap()
        .allows(Resource::Global(Global::Acl), Access::Write));
    assert!(secondary
        .acl_authorizer(&settings, Some("l1-secret"))
        .is_err());
    assert_eq!(secondary.acl_token("here").unwrap(), before_local);

    // Nothing changed upstream: nothing to write, twice over.
    assert!(replicate(&primary, &mut secondary, 11).is_empty());
    assert_eq!(secondary.indexes.acl, 10);

    // Changed and deleted upstream: the same here; the local token stays.
    primary.apply(
        5,
        &policy(
            "p1",
            "kv-read",
            r#"key_prefix "" { policy = "write" }"#,
            false,
        ),
    );
    primary.apply(
        6,
        &Command::AclTokenDelete {
            accessor_id: "g1".into(),
        },
    );
    let diff = replicate(&primary, &mut secondary, 12);
    assert_eq!(
        (diff.policies.len(), diff.token_deletes.len()),
        (1, 1),
        "{diff:?}"
    );
    assert!(secondary
        .acl_authorizer(&settings, Some("g1-secret"))
        .is_err());
    assert_eq!(
        secondary.acl_policy("p1").unwrap().rules,
        primary.acl_policy("p1").unwrap().rules
    );
    assert_eq!(secondary.acl_token("here").unwrap(), before_local);
    primary.apply(7, &Command::AclPolicyDelete { id: "p1".into() });
    let diff = replicate(&primary, &mut secondary, 13);
    assert_eq!(diff.policy_deletes, ["p1"]);
    assert!(secondary.acl_policy("p1").is_none());
    assert!(replicate(&primary, &mut secondary, 14).is_empty());
}

#[test]
fn replication_never_touches_a_local_token_and_upstream_wins_over_a_global_one() {
    let mut secondary = State::default();
    let mut local = global_token("here", "shared-secret", GLOBAL_MANAGEMENT_ID);
    local.local = true;
    secondary.apply(
        1,
        &Command::AclTokenSet {
            token: Box::new(local.clone()),
            create: true,
        },
    );
    secondary.apply(2, &policy("old", "kv", "", true));
    secondary.apply(
        3,
        &token("stale", "stale-secret", vec![link_id("old")], true),
    );
    let replication = AclReplication {
        policies: vec![AclPolicy {
            id: "new".into(),
            name: "KV".into(),
            ..Default::default()
        }],
        policy_deletes: vec![GLOBAL_MANAGEMENT_ID.into()],
        tokens: vec![
            // Same AccessorID as the local token; then same secret.
            global_token("here", "other", "new"),
            global_token("up", "shared-secret", "new"),
            // Takes the stale global token's secret: upstream wins.
            global_token("up2", "stale-secret", "new"),
            AclToken {
                local: true,
                ..global_token("sneaky", "sneaky-secret", "new")
            },
        ],
        token_deletes: vec!["here".into(), ANONYMOUS_ACCESSOR.into()],
    };
    let (outcome, _) = secondary.apply(4, &Command::AclReplicate(Box::new(replication)));
    assert_eq!(outcome, Outcome::Done);
    let kept = secondary.acl_token("here").unwrap();
    assert!(kept.local && kept.secret_id.matches("shared-secret"));
    assert!(secondary.acl_token("up").is_none());
    assert!(secondary.acl_token("sneaky").is_none());
    assert!(secondary.acl_token("stale").is_none());
    assert_eq!(secondary.acl_token("up2").unwrap().create_index, 4);
    // The name is the replicated policy's now; the builtin stays.
    assert!(secondary.acl_policy("old").is_none());
    assert_eq!(secondary.acl_policy_named("kv").unwrap().id, "new");
    assert!(secondary.acl_policy(GLOBAL_MANAGEMENT_ID).is_some());
    assert!(secondary.acl_token(ANONYMOUS_ACCESSOR).is_some());
    // The secret index follows.
    let settings = on(DefaultPolicy::Deny);
    assert!(secondary
        .acl_authorizer(&settings, Some("stale-secret"))
        .is_ok());
    assert!(secondary
        .acl_authorizer(&settings, Some("shared-secret"))
        .is_ok());
    let mut reloaded = snapshot::decode_state(&snapshot::encode(&secondary).unwrap()).unwrap();
    reloaded.rebuild_acl_secrets();
    assert_eq!(reloaded, secondary);
}

#[test]
fn records_of_the_version_before_replication_still_load() {
    let mut state = State::default();
    state.apply(1, &bootstrap("boot", "boot-secret", None));
    state.apply(2, &policy("p1", "kv-read", "", true));
    let mut whole = snapshot::encode(&state).unwrap();
    whole[0] = snapshot::FORMAT_BEFORE_REPLICATION;
    assert_eq!(snapshot::decode_state(&whole).unwrap(), state);
    let parts: Vec<Vec<u8>> = snapshot::state_parts(&state)
        .map(|part| {
            let mut part = part.unwrap();
            part[0] = snapshot::FORMAT_BEFORE_REPLICATION;
            part
        })
        .collect();
    assert_eq!(snapshot::decode_state_parts(&parts).unwrap(), state);
    let command = token("t1", "s1", vec![link_id("p1")], true);
    let mut old = snapshot::encode(&command).unwrap();
    old[0] = snapshot::FORMAT_BEFORE_REPLICATION;
    assert_eq!(snapshot::decode::<Command>(&old).unwrap(), command);
    let replicate = Command::AclReplicate(Box::new(AclReplication {
        token_deletes: vec!["t1".into()],
        ..Default::default()
    }));
    let new = snapshot::encode(&replicate).unwrap();
    assert_eq!(new[0], snapshot::FORMAT_VERSION);
    assert_eq!(snapshot::decode::<Command>(&new).unwrap(), replicate);
}

fn with_default_token(secret: Option<&str>) -> AclSettings {
    AclSettings::enabled(
        DefaultPolicy::Deny,
        AgentTokens {
            default: secret.map(str::to_string),
            agent: None,
            replication: None,
        },
    )
}

fn writes_key(authorizer: &atoll_acl::Authorizer, key: &str) -> bool {
    authorizer.allows(Resource::Named(Segment::Key, key), Access::Write)
}

/// Two tokens (`s1` writes `app/`, `s2` writes `web/`) and their policies, at index 3.
fn two_tokens() -> State {
    let mut state = State::default();
    let rule = |prefix: &str| format!(r#"key_prefix "{prefix}" {{ policy = "write" }}"#);
    state.apply(1, &policy("p1", "app", &rule("app/"), true));
    state.apply(1, &policy("p2", "web", &rule("web/"), true));
    state.apply(2, &token("t1", "s1", vec![link_id("p1")], true));
    state.apply(3, &token("t2", "s2", vec![link_id("p2")], true));
    state
}

#[test]
fn the_cache_answers_again_while_the_acl_tables_keep_their_index() {
    let state = two_tokens();
    let cache = AuthorizerCache::default();
    let deny = on(DefaultPolicy::Deny);
    let first = cache.authorizer(&state, &deny, Some("s1"), 0).unwrap();
    let again = cache.authorizer(&state, &deny, Some("s1"), 0).unwrap();
    assert!(std::sync::Arc::ptr_eq(&first, &again), "not from the cache");
    assert!(writes_key(&again, "app/x") && !writes_key(&again, "web/x"));
    assert!(cache.authorizer(&state, &deny, Some("nope"), 0).is_err());
    // ACLs off: everything, nothing cached.
    let off = AclSettings::disabled();
    let all = cache.authorizer(&state, &off, Some("nope"), 0).unwrap();
    assert!(writes_key(&all, "anything"));
    assert_eq!(cache.len(), 1);
}

#[test]
fn a_changed_token_or_policy_is_resolved_afresh() {
    let mut state = two_tokens();
    let cache = AuthorizerCache::default();
    let deny = on(DefaultPolicy::Deny);
    assert!(writes_key(
        &cache.authorizer(&state, &deny, Some("s1"), 0).unwrap(),
        "app/x"
    ));
    // The token now links the other policy.
    state.apply(4, &token("t1", "s1", vec![link_id("p2")], false));
    let changed = cache.authorizer(&state, &deny, Some("s1"), 0).unwrap();
    assert!(!writes_key(&changed, "app/x") && writes_key(&changed, "web/x"));
    // Its policy's rules change.
    state.apply(
        5,
        &policy(
            "p2",
            "web",
            r#"key_prefix "db/" { policy = "write" }"#,
            false,
        ),
    );
    let changed = cache.authorizer(&state, &deny, Some("s1"), 0).unwrap();
    assert!(!writes_key(&changed, "web/x") && writes_key(&changed, "db/x"));
    // The token is deleted.
    state.apply(
        6,
        &Command::AclTokenDelete {
            accessor_id: "t1".into(),
        },
    );
    assert!(cache.authorizer(&state, &deny, Some("s1"), 0).is_err());
}

#[test]
fn a_cached_token_expires() {
    let mut state = State::default();
    let mut command = token("t1", "s1", vec![], true);
    if let Command::AclTokenSet { token, .. } = &mut command {
        token.expiration_unix_ms = Some(1_000);
    }
    state.apply(1, &command);
    let cache = AuthorizerCache::default();
    let deny = on(DefaultPolicy::Deny);
    assert!(cache.authorizer(&state, &deny, Some("s1"), 999).is_ok());
    assert!(cache.authorizer(&state, &deny, Some("s1"), 1_000).is_err());
}

#[test]
fn requests_without_a_token_follow_the_default_token_and_the_anonymous_one() {
    let mut state = two_tokens();
    let cache = AuthorizerCache::default();
    // No default token: the anonymous token, allowed nothing under deny.
    let settings = with_default_token(None);
    let anonymous = cache.authorizer(&state, &settings, None, 0).unwrap();
    assert!(!writes_key(&anonymous, "app/x"));
    let again = cache.authorizer(&state, &settings, Some(""), 0).unwrap();
    assert!(
        std::sync::Arc::ptr_eq(&anonymous, &again),
        "not from the cache"
    );
    // The default token set at run time stands in at once.
    settings.set_tokens(AgentTokens {
        default: Some("s1".into()),
        agent: None,
        replication: None,
    });
    assert!(writes_key(
        &cache.authorizer(&state, &settings, None, 0).unwrap(),
        "app/x"
    ));
    settings.set_tokens(AgentTokens {
        default: Some("s2".into()),
        agent: None,
        replication: None,
    });
    let second = cache.authorizer(&state, &settings, None, 0).unwrap();
    assert!(!writes_key(&second, "app/x") && writes_key(&second, "web/x"));
    // A default token that names no token is not found.
    settings.set_tokens(AgentTokens {
        default: Some("gone".into()),
        agent: None,
        replication: None,
    });
    assert!(cache.authorizer(&state, &settings, None, 0).is_err());
    // The anonymous token given a policy: its cached authorizer is replaced.
    settings.set_tokens(AgentTokens::default());
    state.apply(
        4,
        &token(ANONYMOUS_ACCESSOR, "", vec![link_name("app")], false),
    );
    assert!(writes_key(
        &cache.authorizer(&state, &settings, None, 0).unwrap(),
        "app/x"
    ));
}
