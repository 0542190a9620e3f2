use proptest::prelude::*;

use crate::*;

fn register(node: &str, id: &str, name: &str, port: u16) -> Command {
    Command::Register(Box::new(Registration {
        node: node.into(),
        address: "10.0.0.1".into(),
        datacenter: "dc1".into(),
        service: Some(ServiceSpec {
            id: id.into(),
            name: name.into(),
            port,
            tags: vec!["v1".into()],
            ..Default::default()
        }),
        ..Default::default()
    }))
}

fn ttl_check(node: &str, service_id: &str) -> Command {
    Command::Register(Box::new(Registration {
        node: node.into(),
        skip_node_update: true,
        checks: vec![CheckSpec {
            check_id: format!("service:{service_id}"),
            name: "ttl".into(),
            service_id: service_id.into(),
            ..Default::default()
        }],
        ..Default::default()
    }))
}

#[test]
fn register_sets_row_and_table_indexes() {
    let mut state = State::default();
    state.apply(5, &register("n1", "web1", "web", 80));
    let instance = state.service("n1", "web1").cloned().unwrap();
    assert_eq!((instance.create_index, instance.modify_index), (5, 5));
    assert_eq!(state.indexes.services, 5);
    assert_eq!(state.indexes.nodes, 5);
    assert_eq!(state.service_index("web"), 5);

    // Re-registering the same thing changes nothing, so watchers are not woken.
    let (_, changes) = state.apply(6, &register("n1", "web1", "web", 80));
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(state.indexes.services, 5);
    assert_eq!(state.service_index("web"), 5);

    state.apply(7, &register("n1", "web1", "web", 81));
    let instance = state.service("n1", "web1").unwrap();
    assert_eq!((instance.create_index, instance.modify_index), (5, 7));
    assert_eq!(state.service_index("web"), 7);
}

#[test]
fn new_checks_start_critical_and_decide_health() {
    let mut state = State::default();
    state.apply(1, &register("n1", "web1", "web", 80));
    state.apply(2, &ttl_check("n1", "web1"));
    let instance = state.service("n1", "web1").unwrap();
    assert_eq!(
        aggregate_status(state.checks_for_instance(instance)),
        CheckStatus::Critical
    );
    let (outcome, _) = state.apply(
        3,
        &Command::UpdateCheck {
            node: "n1".into(),
            check_id: "service:web1".into(),
            status: CheckStatus::Passing,
            output: "ok".into(),
        },
    );
    assert_eq!(outcome, Outcome::Done);
    let instance = state.service("n1", "web1").unwrap();
    assert_eq!(
        aggregate_status(state.checks_for_instance(instance)),
        CheckStatus::Passing
    );
    assert_eq!(state.service_index("web"), 3);
}

#[test]
fn unchanged_check_update_touches_nothing() {
    let mut state = State::default();
    state.apply(1, &register("n1", "web1", "web", 80));
    state.apply(2, &ttl_check("n1", "web1"));
    let update = Command::UpdateCheck {
        node: "n1".into(),
        check_id: "service:web1".into(),
        status: CheckStatus::Passing,
        output: String::new(),
    };
    state.apply(3, &update);
    let (_, changes) = state.apply(4, &update);
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(state.indexes.checks, 3);
}

#[test]
fn update_of_unknown_check_is_rejected_without_change() {
    let mut state = State::default();
    state.apply(1, &register("n1", "web1", "web", 80));
    let before = state.clone();
    let (outcome, changes) = state.apply(
        2,
        &Command::UpdateCheck {
            node: "n1".into(),
            check_id: "nope".into(),
            status: CheckStatus::Passing,
            output: String::new(),
        },
    );
    assert!(matches!(outcome, Outcome::Rejected(Rejection::NotFound(_))));
    assert!(changes.is_empty());
    assert_eq!(state, before);
}

#[test]
fn check_for_unknown_service_rejects_whole_registration() {
    let mut state = State::default();
    let before = state.clone();
    let command = Command::Register(Box::new(Registration {
        node: "n1".into(),
        address: "10.0.0.1".into(),
        checks: vec![CheckSpec {
            check_id: "c".into(),
            service_id: "ghost".into(),
            ..Default::default()
        }],
        ..Default::default()
    }));
    let (outcome, _) = state.apply(1, &command);
    assert!(matches!(outcome, Outcome::Rejected(_)));
    assert_eq!(state, before);
}

#[test]
fn deregistering_service_removes_its_checks_and_bumps_name_index() {
    let mut state = State::default();
    state.apply(1, &register("n1", "web1", "web", 80));
    state.apply(2, &ttl_check("n1", "web1"));
    state.apply(
        3,
        &Command::Deregister(Deregistration {
            node: "n1".into(),
            service_id: Some("web1".into()),
            check_id: None,
        }),
    );
    assert!(state.service("n1", "web1").is_none());
    assert_eq!(state.checks_on_node("n1").count(), 0);
    assert!(state.instances_of("web").is_empty());
    assert_eq!(state.service_index("web"), 3);
    assert_eq!(state.indexes.checks, 3);
}

#[test]
fn node_check_counts_against_every_service_on_node() {
    let mut state = State::default();
    state.apply(1, &register("n1", "web1", "web", 80));
    state.apply(2, &register("n1", "db1", "db", 5432));
    state.apply(
        3,
        &Command::Register(Box::new(Registration {
            node: "n1".into(),
            skip_node_update: true,
            checks: vec![CheckSpec {
                check_id: NODE_HEALTH_CHECK_ID.into(),
                status: Some(CheckStatus::Critical),
                ..Default::default()
            }],
            ..Default::default()
        })),
    );
    assert_eq!(state.service_index("web"), 3);
    assert_eq!(state.service_index("db"), 3);
    let db = state.service("n1", "db1").unwrap();
    assert_eq!(
        aggregate_status(state.checks_for_instance(db)),
        CheckStatus::Critical
    );
}

#[test]
fn a_task_is_reached_where_its_host_ports_were_registered() {
    let mut state = State::default();
    state.apply(1, &register("n1", "exec1", "web", 31_000));
    let mut docker = ServiceSpec {
        id: "docker1".into(),
        name: "web".into(),
        port: 31_001,
        address: "172.28.0.1".into(),
        ..Default::default()
    };
    state.apply(
        2,
        &Command::Register(Box::new(Registration {
            node: "n1".into(),
            skip_node_update: true,
            service: Some(docker.clone()),
            ..Default::default()
        })),
    );
    docker.id = "inner1".into();
    docker.address = "10.88.0.7".into();
    docker.port = 8080;
    state.apply(
        3,
        &Command::Register(Box::new(Registration {
            node: "n1".into(),
            skip_node_update: true,
            service: Some(docker),
            ..Default::default()
        })),
    );
    let task = |services: &[&str], ports: &[u16], node: &str| running_task(node, services, ports);
    // An instance at the node's address (no address of its own): the node's.
    let exec = task(&["exec1"], &[31_000], "n1");
    assert_eq!(state.task_address(&exec), Some("10.0.0.1"));
    // Published at another address on a host port: that address.
    let published = task(&["docker1"], &[31_001], "n1");
    assert_eq!(state.task_address(&published), Some("172.28.0.1"));
    // An address on a port that is not a host port (a container's own): the node's.
    let inner = task(&["inner1"], &[31_002], "n1");
    assert_eq!(state.task_address(&inner), Some("10.0.0.1"));
    // No node, no address.
    assert_eq!(state.task_address(&task(&[], &[], "gone")), None);
}

/// A running task `t1` of `/web` on `node`, registered as `services`, holding `ports`.
fn running_task(node: &str, services: &[&str], ports: &[u16]) -> Allocation {
    Allocation {
        id: "t1".into(),
        app_id: "/web".into(),
        app_version: "v1".into(),
        node: node.into(),
        ports: ports.to_vec(),
        cpus: 0.1,
        mem: 16.0,
        desired_running: true,
        state: TaskState::Running,
        message: String::new(),
        staged_at: String::new(),
        started_at: None,
        health_failures: 0,
        services: services.iter().map(|s| s.to_string()).collect(),
        create_index: 1,
        modify_index: 1,
    }
}

#[test]
fn node_down_and_task_healthy_have_one_definition() {
    let mut state = State::default();
    state.apply(1, &register("n1", "web1", "web", 80));
    state.apply(2, &ttl_check("n1", "web1"));
    let node_check = |status| {
        Command::Register(Box::new(Registration {
            node: "n1".into(),
            skip_node_update: true,
            checks: vec![CheckSpec {
                check_id: NODE_HEALTH_CHECK_ID.into(),
                status: Some(status),
                ..Default::default()
            }],
            ..Default::default()
        }))
    };
    let set = |status| Command::UpdateCheck {
        node: "n1".into(),
        check_id: "service:web1".into(),
        status,
        output: String::new(),
    };
    let mut task = running_task("n1", &["web1"], &[]);

    // A node absent from the catalog is down; present without a liveness check, it is up.
    assert!(state.node_down("n2") && !state.node_failed("n2"));
    assert!(!state.node_down("n1"));
    assert_eq!(state.node_health("n1"), None);
    // Warning is not failed; critical is.
    state.apply(3, &node_check(CheckStatus::Warning));
    assert!(!state.node_down("n1"));
    state.apply(4, &node_check(CheckStatus::Critical));
    assert!(state.node_failed("n1") && state.node_down("n1"));
    state.apply(5, &node_check(CheckStatus::Passing));
    assert_eq!(state.node_health("n1"), Some(CheckStatus::Passing));

    // A task is healthy when running and every instance passing; warning is not healthy.
    assert!(
        !state.task_healthy(&task),
        "a critical check counts as healthy"
    );
    state.apply(6, &set(CheckStatus::Passing));
    assert!(state.task_healthy(&task));
    state.apply(7, &set(CheckStatus::Warning));
    assert!(!state.task_healthy(&task));
    state.apply(8, &set(CheckStatus::Passing));
    task.state = TaskState::Starting;
    assert!(!state.task_healthy(&task));
    task.state = TaskState::Running;
    task.services.push("gone".into());
    assert!(
        !state.task_healthy(&task),
        "a missing instance counts as healthy"
    );
}

#[test]
fn kv_cas_and_tombstones() {
    let mut state = State::default();
    let set = |cas| Command::KvSet {
        key: "a/b".into(),
        value: b"x".to_vec(),
        flags: 0,
        cas,
    };
    assert_eq!(state.apply(1, &set(Some(0))).0, Outcome::Condition(true));
    assert_eq!(state.apply(2, &set(Some(0))).0, Outcome::Condition(false));
    assert_eq!(state.apply(3, &set(Some(1))).0, Outcome::Condition(true));
    assert_eq!(state.kv["a/b"].create_index, 1);
    assert_eq!(state.kv["a/b"].modify_index, 3);
    assert_eq!(state.kv_index("a/", false), 3);
    state.apply(
        4,
        &Command::KvDelete {
            key: "a/".into(),
            recurse: true,
            cas: None,
        },
    );
    assert!(state.kv.is_empty());
    // The deletion is visible to a watcher of the prefix and of the key.
    assert_eq!(state.kv_index("a/", false), 4);
    assert_eq!(state.kv_index("a/b", true), 4);
    assert_eq!(state.kv_index("other", false), 0);
}

#[test]
fn snapshot_round_trip_restores_derived_index() {
    let mut state = State::default();
    state.apply(1, &register("n1", "web1", "web", 80));
    state.apply(2, &register("n2", "web2", "web", 80));
    let restored = snapshot::decode_state(&snapshot::encode_state(&state).unwrap()).unwrap();
    assert_eq!(restored, state);
    assert_eq!(restored.instances_of("web").len(), 2);
}

#[test]
fn snapshot_from_newer_release_is_refused() {
    let mut bytes = snapshot::encode_state(&State::default()).unwrap();
    bytes[0] = snapshot::FORMAT_VERSION + 1;
    assert!(matches!(
        snapshot::decode_state(&bytes),
        Err(snapshot::DecodeError::UnknownVersion(_))
    ));
}

fn arb_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        6 => arb_single(),
        1 => prop::collection::vec(arb_single(), 0..4).prop_map(Command::Batch),
    ]
}

fn arb_single() -> impl Strategy<Value = Command> {
    let node = prop::sample::select(vec!["n1", "n2", "n3"]);
    let id = prop::sample::select(vec!["a", "b", "c", "d"]);
    let name = prop::sample::select(vec!["web", "db"]);
    let status = prop::sample::select(vec![
        CheckStatus::Passing,
        CheckStatus::Warning,
        CheckStatus::Critical,
    ]);
    prop_oneof![
        (node.clone(), id.clone(), name, 1u16..4).prop_map(|(n, i, s, p)| register(n, i, s, p)),
        (node.clone(), id.clone()).prop_map(|(n, i)| ttl_check(n, i)),
        (node.clone(), id.clone(), status).prop_map(|(n, i, s)| Command::UpdateCheck {
            node: n.into(),
            check_id: format!("service:{i}"),
            status: s,
            output: String::new(),
        }),
        (node.clone(), prop::option::of(id)).prop_map(|(n, i)| Command::Deregister(
            Deregistration {
                node: n.into(),
                service_id: i.map(Into::into),
                check_id: None,
            }
        )),
        (
            prop::sample::select(vec!["k/a", "k/b", "j"]),
            prop::option::of(0u64..5)
        )
            .prop_map(|(k, cas)| Command::KvSet {
                key: k.into(),
                value: vec![1],
                flags: 0,
                cas,
            }),
        (prop::sample::select(vec!["k/", "k/a", "j"]), any::<bool>()).prop_map(|(k, r)| {
            Command::KvDelete {
                key: k.into(),
                recurse: r,
                cas: None,
            }
        }),
        (
            prop::sample::select(vec!["s1", "s2", "s3"]),
            node.clone(),
            prop::sample::select(vec![vec![], vec!["service:a"], vec!["service:b"]]),
            any::<bool>(),
        )
            .prop_map(|(id, n, checks, delete)| {
                let mut session = session(id, n, &checks);
                if delete {
                    session.behavior = SessionBehavior::Delete;
                }
                Command::SessionCreate(Box::new(session))
            }),
        prop::sample::select(vec!["s1", "s2", "s3"])
            .prop_map(|id| Command::SessionDestroy { id: id.into() }),
        (
            prop::sample::select(vec!["k/a", "k/b", "j"]),
            prop::sample::select(vec!["s1", "s2", "s3", ""]),
            any::<bool>(),
        )
            .prop_map(|(k, s, acquire)| lock(acquire, k, s)),
        prop::sample::select(vec!["deploy", ""]).prop_map(|name| Command::FireEvent(Box::new(
            UserEvent {
                id: "e".into(),
                name: name.into(),
                payload: vec![1],
                ..Default::default()
            }
        ))),
        prop::collection::vec(arb_txn_op(), 1..5).prop_map(Command::Txn),
        (
            prop::sample::select(vec!["q1", "q2", "q3"]),
            prop::sample::select(vec!["", "red", "Red", "blue"]),
            prop::sample::select(vec!["", "s1", "s2"]),
            any::<bool>(),
            0u8..3,
        )
            .prop_map(|(id, name, session, template, verb)| {
                let query = crate::PreparedQuery {
                    id: id.into(),
                    name: name.into(),
                    session: session.into(),
                    service: crate::ServiceQuery {
                        service: "web".into(),
                        ..Default::default()
                    },
                    template: crate::QueryTemplate {
                        kind: if template { "name_prefix_match" } else { "" }.into(),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                match verb {
                    0 => Command::QueryCreate(Box::new(query)),
                    1 => Command::QueryUpdate(Box::new(query)),
                    _ => Command::QueryDelete { id: id.into() },
                }
            }),
        crate::acl_tests::arb_acl_command(),
    ]
}

/// One operation of a transaction: KV verbs on a few keys and sessions (some failing),
/// catalog writes and reads on a few nodes.
fn arb_txn_op() -> impl Strategy<Value = TxnOp> {
    let kv = (
        prop::sample::select(KvVerb::ALL.map(|(verb, _)| verb).to_vec()),
        prop::sample::select(vec!["k/a", "k/b", "k/", "j"]),
        0u64..6,
        prop::sample::select(vec!["s1", "s2", ""]),
    )
        .prop_map(|(verb, key, index, session)| {
            TxnOp::Kv(TxnKv {
                verb,
                key: key.into(),
                value: b"t".to_vec(),
                flags: 1,
                index,
                session: session.into(),
            })
        });
    let verb = prop::sample::select(CatalogVerb::ALL.map(|(verb, _)| verb).to_vec());
    let node = prop::sample::select(vec!["n1", "n2"]);
    prop_oneof![
        3 => kv,
        1 => (verb.clone(), node.clone(), 0u64..6).prop_map(|(verb, n, index)| TxnOp::Node {
            verb,
            node: Registration {
                node: n.into(),
                address: "10.0.0.9".into(),
                datacenter: "dc1".into(),
                ..Default::default()
            },
            index,
        }),
        1 => (verb.clone(), node.clone(), prop::sample::select(vec!["a", "b"]), 0u64..6)
            .prop_map(|(verb, n, id, index)| TxnOp::Service {
                verb,
                node: n.into(),
                service: ServiceSpec {
                    id: id.into(),
                    name: "web".into(),
                    ..Default::default()
                },
                index,
            }),
        1 => (verb, node, prop::sample::select(vec!["a", "b"]), 0u64..6)
            .prop_map(|(verb, n, id, index)| TxnOp::Check {
                verb,
                node: n.into(),
                check: Box::new(CheckSpec {
                    check_id: format!("service:{id}"),
                    name: "t".into(),
                    service_id: id.into(),
                    ..Default::default()
                }),
                index,
            }),
    ]
}

#[test]
fn user_events_take_the_next_lamport_time_and_keep_the_last_256() {
    let mut state = State::default();
    let fire = |name: &str| {
        Command::FireEvent(Box::new(UserEvent {
            id: format!("id-{name}"),
            name: name.into(),
            ..Default::default()
        }))
    };
    let (outcome, changes) = state.apply(3, &fire(""));
    assert!(matches!(outcome, Outcome::Rejected(_)) && changes.is_empty());
    for i in 0..(MAX_USER_EVENTS as u64 + 10) {
        let (outcome, _) = state.apply(10 + i, &fire(&format!("e{i}")));
        assert_eq!(outcome, Outcome::Done);
    }
    assert_eq!(state.events.len(), MAX_USER_EVENTS);
    let first = state.events.values().next().unwrap();
    assert_eq!((first.ltime, first.name.as_str()), (11, "e10"));
    let last = state.events.values().next_back().unwrap();
    assert_eq!(last.ltime, MAX_USER_EVENTS as u64 + 10);
    assert_eq!(state.indexes.events, 10 + MAX_USER_EVENTS as u64 + 9);

    let bytes = snapshot::encode_state(&state).unwrap();
    let restored = snapshot::decode_state(&bytes).unwrap();
    assert_eq!(restored.events, state.events);
}

fn session(id: &str, node: &str, checks: &[&str]) -> Session {
    Session {
        id: id.into(),
        name: String::new(),
        node: node.into(),
        checks: Vec::new(),
        node_checks: checks.iter().map(|c| c.to_string()).collect(),
        service_checks: Vec::new(),
        lock_delay_ns: 15_000_000_000,
        behavior: SessionBehavior::Release,
        ttl: String::new(),
        ttl_ns: 0,
        create_index: 0,
        modify_index: 0,
    }
}

fn lock(acquire: bool, key: &str, session: &str) -> Command {
    let (key, value, flags, session) = (key.into(), b"v".to_vec(), 0, session.into());
    if acquire {
        Command::KvAcquire {
            key,
            value,
            flags,
            session,
        }
    } else {
        Command::KvRelease {
            key,
            value,
            flags,
            session,
        }
    }
}

proptest! {
    #[test]
    fn apply_is_deterministic_and_indexes_are_consistent(commands in prop::collection::vec(arb_command(), 1..60)) {
        let mut first = State::default();
        let mut second = State::default();
        for (i, command) in commands.iter().enumerate() {
            let index = i as u64 + 1;
            let a = first.apply(index, command);
            let b = second.apply(index, command);
            prop_assert_eq!(a, b);
        }
        prop_assert_eq!(&first, &second);
        let last = commands.len() as u64;
        // No row or table index is ever ahead of the log.
        prop_assert!(first.indexes.catalog() <= last && first.indexes.kv <= last);
        // A key is held only by a live session, whose node and tied checks exist.
        for entry in first.kv.values() {
            if let Some(id) = &entry.session {
                let session = first.sessions.get(id);
                prop_assert!(session.is_some(), "{} held by the gone session {}", entry.key, id);
                prop_assert!(entry.lock_index >= 1);
            }
        }
        for session in first.sessions.values() {
            prop_assert!(first.nodes.contains_key(&session.node));
            for check_id in session.check_ids() {
                let check = first.check(&session.node, check_id);
                prop_assert!(check.is_some_and(|c| c.status != CheckStatus::Critical));
            }
            prop_assert!(session.modify_index <= first.indexes.sessions);
        }
        for services in first.services.values() {
            for s in services.values() {
                prop_assert!(s.create_index <= s.modify_index);
                prop_assert!(s.modify_index <= first.indexes.services);
                prop_assert!(s.modify_index <= first.service_index(&s.name));
                prop_assert!(first.nodes.contains_key(&s.node));
            }
        }
        for check in first.all_checks() {
            prop_assert!(check.modify_index <= first.indexes.checks);
            if !check.service_id.is_empty() {
                prop_assert!(first.service(&check.node, &check.service_id).is_some());
            }
        }
        // The derived name index agrees with the tables, also after a snapshot round trip.
        let restored = snapshot::decode_state(&snapshot::encode_state(&first).unwrap()).unwrap();
        prop_assert_eq!(&restored, &first);
    }
}

proptest! {
    /// A batch applies exactly as the same commands one by one at the same index: the same
    /// rows and each command's own outcome.
    #[test]
    fn a_batch_applies_as_its_commands_one_by_one(
        before in prop::collection::vec(arb_single(), 0..20),
        batch in prop::collection::vec(arb_single(), 0..20),
    ) {
        let mut start = State::default();
        for (i, command) in before.iter().enumerate() {
            start.apply(i as u64 + 1, command);
        }
        let index = before.len() as u64 + 1;
        let mut batched = start.clone();
        let (outcome, _) = batched.apply(index, &Command::Batch(batch.clone()));
        let mut single = start;
        let mut outcomes = Vec::new();
        for command in &batch {
            outcomes.push(single.apply(index, command).0);
        }
        prop_assert_eq!(outcome, Outcome::Each(outcomes));
        // The same rows. A table whose rows the batch left as they were (a check registered
        // and deregistered again) keeps its index, where one by one moved it and back.
        let (b, s) = (&batched.indexes, &single.indexes);
        prop_assert!(b.nodes <= s.nodes && b.services <= s.services && b.checks <= s.checks);
        prop_assert!(b.kv <= s.kv && b.workload <= s.workload && b.sessions <= s.sessions);
        batched.indexes = single.indexes.clone();
        prop_assert_eq!(&batched, &single);
    }
}

#[test]
fn state_and_commands_in_the_previous_format_still_load() {
    let mut state = State::default();
    let command = Command::KvSet {
        key: "k".into(),
        value: b"\x00\xffbinary".to_vec(),
        flags: 7,
        cas: None,
    };
    state.apply(1, &register("n1", "web1", "web", 80));
    state.apply(2, &command);
    let old_state = snapshot::encode_json(&state).unwrap();
    assert_eq!(old_state[0], snapshot::FORMAT_JSON);
    assert_eq!(snapshot::decode_state(&old_state).unwrap(), state);
    let old_command = snapshot::encode_json(&command).unwrap();
    assert_eq!(snapshot::decode::<Command>(&old_command).unwrap(), command);
    // And the current format is smaller than the old one for the same command.
    let new_command = snapshot::encode(&command).unwrap();
    assert_eq!(new_command[0], snapshot::FORMAT_VERSION);
    assert!(new_command.len() < old_command.len());
    assert_eq!(snapshot::decode::<Command>(&new_command).unwrap(), command);
}

proptest! {
    /// The change feed is complete: replaying each entry's changes onto a copy gives the state
    /// applying the commands gave, and a snapshot taken midway, restored, then continued,
    /// equals continuing without it.
    #[test]
    fn replaying_the_changes_equals_applying_the_commands(
        commands in prop::collection::vec(arb_command(), 1..60),
        cut in 0usize..60,
    ) {
        let mut applied = State::default();
        let mut replayed = State::default();
        let cut = cut.min(commands.len());
        let mut restored = None;
        for (i, command) in commands.iter().enumerate() {
            let index = i as u64 + 1;
            if i == cut {
                let bytes = snapshot::encode_state(&applied).unwrap();
                restored = Some(snapshot::decode_state(&bytes).unwrap());
            }
            let (_, changes) = applied.apply(index, command);
            for change in &changes {
                let (old, new) = change_values(change);
                prop_assert!(old != new, "a change that changes nothing: {change:?}");
            }
            replayed.replay(index, &changes);
            prop_assert_eq!(&replayed, &applied, "after entry {}: {:?}", index, command);
            if let Some(restored) = restored.as_mut() {
                restored.apply(index, command);
            }
        }
        if let Some(restored) = restored {
            prop_assert_eq!(&restored, &applied);
        }
    }
}

/// A change's old and new value, as JSON, to compare changes of any table.
fn change_values(change: &Change) -> (serde_json::Value, serde_json::Value) {
    let json = serde_json::to_value(change).unwrap();
    let row = json
        .as_object()
        .and_then(|o| o.values().next())
        .cloned()
        .unwrap();
    (row["old"].clone(), row["new"].clone())
}

#[test]
fn replaying_covers_the_reaped_tombstone_index() {
    let mut applied = State::default();
    let mut replayed = State::default();
    let mut index = 0;
    let mut step = |command: Command, applied: &mut State, replayed: &mut State| {
        index += 1;
        let (_, changes) = applied.apply(index, &command);
        replayed.replay(index, &changes);
        changes
    };
    // One more deleted key than the tombstones kept: the oldest is folded into one index.
    for i in 0..=16_384 {
        let key = format!("k/{i}");
        step(
            Command::KvSet {
                key: key.clone(),
                value: vec![],
                flags: 0,
                cas: None,
            },
            &mut applied,
            &mut replayed,
        );
        let changes = step(
            Command::KvDelete {
                key,
                recurse: false,
                cas: None,
            },
            &mut applied,
            &mut replayed,
        );
        if i == 16_384 {
            assert!(changes
                .iter()
                .any(|c| matches!(c, Change::KvReaped { old: 0, new: 2 })));
        }
    }
    assert_eq!(applied.kv_reaped_index, 2);
    assert_eq!(replayed, applied);
}

#[test]
fn changes_name_their_table_and_move_only_its_index() {
    let mut state = State::default();
    let (_, changes) = state.apply(1, &register("n1", "web1", "web", 80));
    assert!(changes.iter().all(|c| c.table() == Table::Catalog));
    assert!(changes.iter().any(|c| matches!(c, Change::Node(_))));
    assert!(changes.iter().any(|c| matches!(c, Change::Service(_))));
    let (_, changes) = state.apply(
        2,
        &Command::KvSet {
            key: "a".into(),
            value: b"1".to_vec(),
            flags: 0,
            cas: None,
        },
    );
    assert_eq!(changes.len(), 1);
    let Change::Kv(row) = &changes[0] else {
        panic!("{changes:?}")
    };
    assert_eq!(row.key, "a");
    assert!(row.old.is_none());
    assert_eq!(row.new.as_ref().map(|e| e.modify_index), Some(2));
    assert_eq!((state.indexes.kv, state.indexes.catalog()), (2, 1));
}

#[test]
fn a_batch_applies_each_command_in_order_in_one_entry() {
    let set = |key: &str, cas| Command::KvSet {
        key: key.into(),
        value: b"v".to_vec(),
        flags: 0,
        cas,
    };
    let mut state = State::default();
    let batch = Command::Batch(vec![
        set("a", None),
        set("a", Some(0)),
        register("n1", "web1", "web", 80),
    ]);
    let (outcome, changes) = state.apply(7, &batch);
    // Each command has its outcome; the one after a failed condition still applied.
    assert_eq!(
        outcome,
        Outcome::Each(vec![
            Outcome::Done,
            Outcome::Condition(false),
            Outcome::Done
        ])
    );
    assert_eq!(state.kv["a"].modify_index, 7);
    assert!(state.service("n1", "web1").is_some());
    assert!(changes.iter().any(|c| c.table() == Table::Kv));
    assert!(changes.iter().any(|c| c.table() == Table::Catalog));
    assert_eq!((state.indexes.kv, state.indexes.services), (7, 7));

    let before = state.clone();
    let nested = Command::Batch(vec![set("b", None), Command::Batch(Vec::new())]);
    let (outcome, changes) = state.apply(8, &nested);
    assert!(matches!(outcome, Outcome::Rejected(Rejection::Invalid(_))));
    assert!(changes.is_empty());
    assert_eq!(state, before);
}

#[test]
fn a_check_has_one_kind_in_a_fixed_order_of_precedence() {
    let command = TaskCommand {
        task_id: "t".into(),
        command: "true".into(),
    };
    let mut definition = CheckDefinition {
        http: Some("http://x/".into()),
        tcp: Some("x:1".into()),
        task_command: Some(command.clone()),
        ..Default::default()
    };
    assert_eq!(definition.kind(), CheckKind::Http("http://x/"));
    definition.ttl_ms = Some(1000);
    assert_eq!(definition.kind(), CheckKind::Ttl(1000));
    assert_eq!(definition.kind().consul_type(), "ttl");
    assert!(!definition.kind().is_probed());
    definition.ttl_ms = None;
    definition.http = None;
    assert_eq!(definition.kind(), CheckKind::Tcp("x:1"));
    definition.tcp = None;
    assert_eq!(definition.kind(), CheckKind::TaskCommand(&command));
    assert_eq!(definition.kind().consul_type(), "script");
    assert!(definition.kind().is_probed());
    assert_eq!(CheckDefinition::default().kind(), CheckKind::Static);
    assert_eq!(CheckKind::Static.consul_type(), "");
}

fn node_with_check(node: &str, check_id: &str, status: CheckStatus) -> Command {
    Command::Register(Box::new(Registration {
        node: node.into(),
        address: "10.0.0.1".into(),
        checks: vec![CheckSpec {
            check_id: check_id.into(),
            status: Some(status),
            ..Default::default()
        }],
        ..Default::default()
    }))
}

fn set_check(node: &str, check_id: &str, status: CheckStatus) -> Command {
    Command::UpdateCheck {
        node: node.into(),
        check_id: check_id.into(),
        status,
        output: String::new(),
    }
}

#[test]
fn a_session_needs_its_node_and_healthy_checks() {
    let mut state = State::default();
    let create =
        |id: &str, checks: &[&str]| Command::SessionCreate(Box::new(session(id, "n1", checks)));
    let precondition = |outcome: Outcome| match outcome {
        Outcome::Rejected(Rejection::Precondition(message)) => message,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        precondition(state.apply(1, &create("s", &[])).0),
        "Missing node registration"
    );
    state.apply(
        2,
        &node_with_check("n1", "serfHealth", CheckStatus::Passing),
    );
    assert_eq!(
        precondition(state.apply(3, &create("s", &["nope"])).0),
        "Missing check 'nope' registration"
    );
    state.apply(4, &set_check("n1", "serfHealth", CheckStatus::Critical));
    assert_eq!(
        precondition(state.apply(5, &create("s", &["serfHealth"])).0),
        "Check 'serfHealth' is in critical state"
    );
    assert!(state.sessions.is_empty());
    state.apply(6, &set_check("n1", "serfHealth", CheckStatus::Warning));
    let (outcome, changes) = state.apply(7, &create("s", &["serfHealth"]));
    assert_eq!(outcome, Outcome::Done);
    assert!(changes.iter().all(|c| c.table() == Table::Kv));
    assert_eq!(state.sessions["s"].create_index, 7);
    assert_eq!(state.indexes.sessions, 7);
    assert!(matches!(
        state.apply(8, &create("s", &[])).0,
        Outcome::Rejected(Rejection::Conflict(_))
    ));
}

#[test]
fn acquire_and_release_follow_consuls_lock_rules() {
    let mut state = State::default();
    state.apply(
        1,
        &node_with_check("n1", "serfHealth", CheckStatus::Passing),
    );
    for id in ["a", "b"] {
        state.apply(2, &Command::SessionCreate(Box::new(session(id, "n1", &[]))));
    }
    let acquired =
        |state: &mut State, index, session: &str| state.apply(index, &lock(true, "k", session)).0;
    assert_eq!(acquired(&mut state, 3, "a"), Outcome::Condition(true));
    let entry = state.kv["k"].clone();
    assert_eq!(
        (
            entry.lock_index,
            entry.session.as_deref(),
            entry.create_index
        ),
        (1, Some("a"), 3)
    );
    // Its holder again: the value is written, the lock index stays.
    assert_eq!(acquired(&mut state, 4, "a"), Outcome::Condition(true));
    assert_eq!(
        (state.kv["k"].lock_index, state.kv["k"].modify_index),
        (1, 4)
    );
    // Another session: refused, nothing changes.
    let before = state.clone();
    let (outcome, changes) = state.apply(5, &lock(true, "k", "b"));
    assert_eq!(outcome, Outcome::Condition(false));
    assert!(changes.is_empty() && state == before);
    // A release by another session is refused; by the holder, it clears the lock.
    assert_eq!(
        state.apply(6, &lock(false, "k", "b")).0,
        Outcome::Condition(false)
    );
    assert_eq!(
        state.apply(7, &lock(false, "k", "a")).0,
        Outcome::Condition(true)
    );
    assert_eq!(
        (state.kv["k"].session.as_deref(), state.kv["k"].lock_index),
        (None, 1)
    );
    // A new holder moves the lock index.
    assert_eq!(acquired(&mut state, 8, "b"), Outcome::Condition(true));
    assert_eq!(state.kv["k"].lock_index, 2);
    // A plain write keeps the lock.
    state.apply(
        9,
        &Command::KvSet {
            key: "k".into(),
            value: b"x".to_vec(),
            flags: 3,
            cas: None,
        },
    );
    assert_eq!(
        (state.kv["k"].session.as_deref(), state.kv["k"].lock_index),
        (Some("b"), 2)
    );
    // An unknown session is Consul's `invalid session`.
    assert_eq!(
        state.apply(10, &lock(true, "k", "ghost")).0,
        Outcome::Rejected(Rejection::Precondition("invalid session \"ghost\"".into()))
    );
    assert_eq!(state.keys_held_by("b").collect::<Vec<_>>(), vec!["k"]);
}

#[test]
fn invalidation_releases_or_deletes_held_keys_in_the_same_entry() {
    let mut state = State::default();
    state.apply(
        1,
        &node_with_check("n1", "serfHealth", CheckStatus::Passing),
    );
    state.apply(2, &node_with_check("n1", "app", CheckStatus::Passing));
    let mut deleting = session("del", "n1", &["app"]);
    deleting.behavior = SessionBehavior::Delete;
    state.apply(
        3,
        &Command::SessionCreate(Box::new(session("rel", "n1", &["serfHealth"]))),
    );
    state.apply(4, &Command::SessionCreate(Box::new(deleting)));
    state.apply(5, &lock(true, "a", "rel"));
    state.apply(6, &lock(true, "b", "del"));

    // The check goes critical: the tied session ends and its key is deleted in that entry.
    let (_, changes) = state.apply(7, &set_check("n1", "app", CheckStatus::Critical));
    assert!(!state.sessions.contains_key("del") && !state.kv.contains_key("b"));
    assert!(changes.iter().any(|c| matches!(c, Change::Check(_))));
    assert!(changes
        .iter()
        .any(|c| matches!(c, Change::Session(r) if r.new.is_none())));
    assert!(changes
        .iter()
        .any(|c| matches!(c, Change::Kv(r) if r.key == "b" && r.new.is_none())));
    assert_eq!(state.kv_index("b", true), 7);
    // Warning ends nothing.
    state.apply(8, &set_check("n1", "serfHealth", CheckStatus::Warning));
    assert!(state.sessions.contains_key("rel"));
    // The node fails: the serfHealth session ends, its key is released, lock index kept.
    state.apply(9, &set_check("n1", "serfHealth", CheckStatus::Critical));
    assert!(state.sessions.is_empty());
    let a = &state.kv["a"];
    assert_eq!(
        (
            a.session.as_deref(),
            a.lock_index,
            a.modify_index,
            a.value.as_slice()
        ),
        (None, 1, 9, &b"v"[..])
    );
    assert_eq!((state.indexes.kv, state.indexes.sessions), (9, 9));
}

#[test]
fn deregistering_a_tied_check_or_the_node_ends_its_sessions() {
    let mut state = State::default();
    state.apply(1, &register("n1", "web1", "web", 80));
    state.apply(
        2,
        &node_with_check("n1", "serfHealth", CheckStatus::Passing),
    );
    state.apply(
        3,
        &Command::Register(Box::new(Registration {
            node: "n1".into(),
            skip_node_update: true,
            checks: vec![CheckSpec {
                check_id: "service:web1".into(),
                service_id: "web1".into(),
                status: Some(CheckStatus::Passing),
                ..Default::default()
            }],
            ..Default::default()
        })),
    );
    let mut by_service = session("svc", "n1", &[]);
    by_service.service_checks = vec![ServiceCheckRef {
        id: "service:web1".into(),
        namespace: String::new(),
    }];
    state.apply(4, &Command::SessionCreate(Box::new(by_service)));
    state.apply(
        5,
        &Command::SessionCreate(Box::new(session("node", "n1", &["serfHealth"]))),
    );
    state.apply(
        6,
        &Command::SessionCreate(Box::new(session("bare", "n1", &[]))),
    );
    // The service goes, with its check: the session tied to that check ends.
    state.apply(
        7,
        &Command::Deregister(Deregistration {
            node: "n1".into(),
            service_id: Some("web1".into()),
            check_id: None,
        }),
    );
    assert!(!state.sessions.contains_key("svc") && state.sessions.len() == 2);
    // The node goes: every session of it ends, tied to a check or not.
    state.apply(
        8,
        &Command::Deregister(Deregistration {
            node: "n1".into(),
            ..Default::default()
        }),
    );
    assert!(state.sessions.is_empty());
}

#[test]
fn sessions_and_locks_survive_a_snapshot_and_older_rows_load() {
    let mut state = State::default();
    state.apply(
        1,
        &node_with_check("n1", "serfHealth", CheckStatus::Passing),
    );
    state.apply(
        2,
        &Command::SessionCreate(Box::new(session("s", "n1", &["serfHealth"]))),
    );
    state.apply(3, &lock(true, "k", "s"));
    let restored = snapshot::decode_state(&snapshot::encode_state(&state).unwrap()).unwrap();
    assert_eq!(restored, state);
    assert_eq!(restored.keys_held_by("s").collect::<Vec<_>>(), vec!["k"]);
    assert_eq!(restored.sessions_of_node("n1").count(), 1);
    // A KV row of an earlier release, without lock fields, loads unlocked.
    let old: KvEntry = serde_json::from_str(
        r#"{"key":"k","value":[1],"flags":0,"create_index":1,"modify_index":1}"#,
    )
    .unwrap();
    assert_eq!((old.session, old.lock_index), (None, 0));
}
