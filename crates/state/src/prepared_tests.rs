use super::*;
use crate::command::{CheckSpec, Command, Registration, ServiceSpec};
use crate::model::{CheckDefinition, Session, SessionBehavior};
use crate::snapshot;

fn query(id: &str, name: &str, service: &str) -> PreparedQuery {
    PreparedQuery {
        id: id.into(),
        name: name.into(),
        service: ServiceQuery {
            service: service.into(),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn template(id: &str, name: &str, service: &str, regexp: &str) -> PreparedQuery {
    PreparedQuery {
        template: QueryTemplate {
            kind: TEMPLATE_NAME_PREFIX_MATCH.into(),
            regexp: regexp.into(),
            remove_empty_tags: false,
        },
        ..query(id, name, service)
    }
}

fn create(state: &mut State, index: u64, query: PreparedQuery) -> Outcome {
    state.apply(index, &Command::QueryCreate(Box::new(query))).0
}

fn refusal(outcome: Outcome) -> String {
    match outcome {
        Outcome::Rejected(rejection) => rejection.to_string(),
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn a_query_is_stored_with_its_indexes_and_updated_and_deleted() {
    let mut state = State::default();
    assert_eq!(
        create(&mut state, 5, query("q1", "web", "web")),
        Outcome::Done
    );
    assert_eq!(state.indexes.queries, 5);
    let stored = &state.queries["q1"];
    assert_eq!((stored.create_index, stored.modify_index), (5, 5));
    let mut changed = query("q1", "web", "api");
    changed.dns.ttl = "10s".into();
    let (outcome, changes) = state.apply(7, &Command::QueryUpdate(Box::new(changed)));
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(changes.len(), 1);
    let stored = &state.queries["q1"];
    assert_eq!((stored.create_index, stored.modify_index), (5, 7));
    assert_eq!(stored.service.service, "api");
    let (outcome, _) = state.apply(8, &Command::QueryDelete { id: "q1".into() });
    assert_eq!(outcome, Outcome::Done);
    assert!(state.queries.is_empty());
    assert_eq!(state.indexes.queries, 8);
}

#[test]
fn apply_refuses_what_consul_refuses_with_its_messages() {
    let mut state = State::default();
    assert_eq!(
        create(&mut state, 1, query("q1", "web", "web")),
        Outcome::Done
    );
    let cases = [
        (query("q2", "x", ""), "Must provide a Service name to query"),
        (
            query("q2", "WEB", "web"),
            "name 'WEB' aliases an existing query name",
        ),
        (
            query("q2", "q1", "web"),
            "name 'q1' aliases an existing query ID",
        ),
        (
            PreparedQuery {
                session: "nope".into(),
                ..query("q2", "other", "web")
            },
            "invalid session \"nope\"",
        ),
        (
            PreparedQuery {
                template: QueryTemplate {
                    kind: "bogus".into(),
                    ..Default::default()
                },
                ..query("q2", "t", "web")
            },
            "Invalid prepared query template: Bad Template.Type 'bogus'",
        ),
        (
            template("q2", "t", "web", "(unclosed"),
            "Invalid prepared query template: Bad Regexp",
        ),
        (
            template("q2", "t", "${name.nope}", ""),
            "unknown variable or function 'name.nope'",
        ),
        (
            template("q2", "t", "${match(x)}", ""),
            "match() takes the number of a group",
        ),
    ];
    for (index, (bad, message)) in (2..).zip(cases) {
        let before = state.clone();
        let (outcome, changes) = state.apply(index, &Command::QueryCreate(Box::new(bad)));
        let text = refusal(outcome);
        assert!(text.contains(message), "{text:?} lacks {message:?}");
        assert!(changes.is_empty());
        assert_eq!(state.queries, before.queries);
    }
    assert!(matches!(
        create(&mut state, 20, query("q1", "fresh", "web")),
        Outcome::Rejected(Rejection::Conflict(_))
    ));
    let missing = state.apply(21, &Command::QueryUpdate(Box::new(query("q9", "", "web"))));
    assert_eq!(
        refusal(missing.0),
        "Cannot modify non-existent prepared query: 'q9'"
    );
    let missing = state.apply(22, &Command::QueryDelete { id: "q9".into() });
    assert!(matches!(
        missing.0,
        Outcome::Rejected(Rejection::NotFound(_))
    ));
    // A query may keep its own name when it is updated.
    let same = state.apply(
        23,
        &Command::QueryUpdate(Box::new(query("q1", "web", "db"))),
    );
    assert_eq!(same.0, Outcome::Done);
}

#[test]
fn only_one_catch_all_template_and_nameless_plain_queries_are_fine() {
    let mut state = State::default();
    assert_eq!(create(&mut state, 1, query("q1", "", "web")), Outcome::Done);
    assert_eq!(create(&mut state, 2, query("q2", "", "db")), Outcome::Done);
    assert_eq!(
        create(&mut state, 3, template("t1", "", "${name.full}", "")),
        Outcome::Done
    );
    let text = refusal(create(&mut state, 4, template("t2", "", "x", "")));
    assert_eq!(
        text,
        "a prepared query template already exists with an empty name"
    );
    // The catch-all may be updated in place.
    let again = state.apply(
        5,
        &Command::QueryUpdate(Box::new(template("t1", "", "${name.suffix}", ""))),
    );
    assert_eq!(again.0, Outcome::Done);
}

fn register_node(state: &mut State, index: u64, node: &str) {
    state.apply(
        index,
        &Command::Register(Box::new(Registration {
            node: node.into(),
            address: "10.0.0.1".into(),
            ..Default::default()
        })),
    );
}

fn session(id: &str, node: &str) -> Session {
    Session {
        id: id.into(),
        name: String::new(),
        node: node.into(),
        checks: Vec::new(),
        node_checks: Vec::new(),
        service_checks: Vec::new(),
        lock_delay_ns: 0,
        behavior: SessionBehavior::Release,
        ttl: String::new(),
        ttl_ns: 0,
        create_index: 0,
        modify_index: 0,
    }
}

#[test]
fn a_query_bound_to_a_session_goes_when_the_session_ends() {
    let mut state = State::default();
    register_node(&mut state, 1, "n1");
    state.apply(2, &Command::SessionCreate(Box::new(session("s1", "n1"))));
    let bound = PreparedQuery {
        session: "s1".into(),
        ..query("q1", "bound", "web")
    };
    assert_eq!(create(&mut state, 3, bound), Outcome::Done);
    assert_eq!(
        create(&mut state, 4, query("q2", "free", "web")),
        Outcome::Done
    );
    let (_, changes) = state.apply(5, &Command::SessionDestroy { id: "s1".into() });
    assert!(changes
        .iter()
        .any(|c| matches!(c, crate::Change::Query(row) if row.key == "q1" && row.new.is_none())));
    assert!(!state.queries.contains_key("q1"));
    assert!(state.queries.contains_key("q2"));
    assert_eq!(state.indexes.queries, 5);
}

#[test]
fn queries_survive_a_snapshot_and_a_snapshot_without_them_loads() {
    let mut state = State::default();
    create(
        &mut state,
        1,
        template("t1", "geo-", "${name.suffix}", "^geo-(.*)$"),
    );
    let restored = snapshot::decode_state(&snapshot::encode_state(&state).unwrap()).unwrap();
    assert_eq!(restored, state);
    // A state written before the table existed has no `queries` key.
    let mut old = serde_json::to_value(State::default()).unwrap();
    let object = old.as_object_mut().unwrap();
    object.remove("queries");
    object["indexes"].as_object_mut().unwrap().remove("queries");
    let mut blob = vec![snapshot::FORMAT_JSON];
    serde_json::to_writer(&mut blob, &old).unwrap();
    let loaded = snapshot::decode_state(&blob).unwrap();
    assert!(loaded.queries.is_empty());
    assert_eq!(loaded.indexes.queries, 0);
}

fn table(queries: Vec<PreparedQuery>) -> Rows<String, PreparedQuery> {
    let mut rows = Rows::default();
    for query in queries {
        rows.insert(query.id.clone(), query);
    }
    rows
}

#[test]
fn resolution_takes_the_id_then_the_name_then_the_longest_template_prefix() {
    let rows = table(vec![
        query("11111111-aaaa", "web", "web"),
        query("22222222-bbbb", "db", "db"),
        template("t-any", "", "${name.full}", ""),
        template("t-geo", "geo-", "g", ""),
        template("t-geo-db", "geo-db-", "gd", ""),
    ]);
    let found = |wanted: &str| resolve(&rows, wanted).map(|q| q.id.as_str());
    assert_eq!(found("22222222-bbbb"), Some("22222222-bbbb"));
    assert_eq!(found("WEB"), Some("11111111-aaaa"));
    assert_eq!(found("geo-db-east"), Some("t-geo-db"));
    assert_eq!(found("geo-web"), Some("t-geo"));
    assert_eq!(found("GEO-x"), Some("t-geo"));
    assert_eq!(found("anything"), Some("t-any"));
    let without_catch_all = table(vec![query("q1", "web", "web")]);
    assert_eq!(resolve(&without_catch_all, "webs"), None);
    assert_eq!(resolve(&without_catch_all, ""), None);
}

#[test]
fn templates_interpolate_the_name_and_the_regexp_groups() {
    let mut geo = template(
        "t",
        "geo-db-",
        "mysql-${match(1)}",
        r"^geo-db-(.*?)-([^\-]+?)$",
    );
    geo.service.tags = vec![
        "${match(2)}".into(),
        "${match(7)}".into(),
        "x-${name.prefix}${name.suffix}".into(),
    ];
    geo.service.failover.datacenters = vec!["${match(2)}".into()];
    geo.service.node_meta = [("zone".to_string(), "${name.full}".to_string())].into();
    geo.service.near = "$${literal}".into();
    let rendered = render(&geo, "geo-db-customer-primary").unwrap();
    assert_eq!(rendered.service.service, "mysql-customer");
    assert_eq!(
        rendered.service.tags,
        vec!["primary", "", "x-geo-db-customer-primary"]
    );
    assert_eq!(rendered.service.failover.datacenters, vec!["primary"]);
    assert_eq!(
        rendered.service.node_meta["zone"],
        "geo-db-customer-primary"
    );
    assert_eq!(rendered.service.near, "${literal}");
    // A name the regexp does not match gives empty groups.
    let unmatched = render(&geo, "geo-db-x").unwrap();
    assert_eq!(unmatched.service.service, "mysql-");
    geo.template.remove_empty_tags = true;
    let pruned = render(&geo, "geo-db-customer-primary").unwrap();
    assert_eq!(
        pruned.service.tags,
        vec!["primary", "x-geo-db-customer-primary"]
    );
    // A plain query is not interpolated.
    let plain = query("q", "p", "${name.full}");
    assert_eq!(render(&plain, "p").unwrap(), plain);
    assert!(render(&template("t", "", "${name.full", ""), "x").is_err());
}

fn instance_state() -> State {
    let mut state = State::default();
    let mut index = 0;
    let mut add =
        |node: &str, id: &str, tags: &[&str], status: CheckStatus, meta: &[(&str, &str)]| {
            index += 1;
            state.apply(
                index,
                &Command::Register(Box::new(Registration {
                    node: node.into(),
                    address: "10.0.0.1".into(),
                    node_meta: [("rack".to_string(), format!("r-{node}"))].into(),
                    service: Some(ServiceSpec {
                        id: id.into(),
                        name: "web".into(),
                        tags: tags.iter().map(|t| t.to_string()).collect(),
                        meta: meta
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                        ..Default::default()
                    }),
                    checks: vec![CheckSpec {
                        check_id: format!("check-{id}"),
                        name: "probe".into(),
                        status: Some(status),
                        service_id: id.into(),
                        definition: CheckDefinition::default(),
                        ..Default::default()
                    }],
                    ..Default::default()
                })),
            );
        };
    add(
        "n1",
        "a",
        &["Primary", "v1"],
        CheckStatus::Passing,
        &[("env", "prod")],
    );
    add("n2", "b", &["primary", "canary"], CheckStatus::Warning, &[]);
    add(
        "n3",
        "c",
        &["primary"],
        CheckStatus::Critical,
        &[("env", "prod")],
    );
    state
}

fn selected_ids(state: &State, service: &ServiceQuery) -> Vec<String> {
    select(state, service)
        .iter()
        .map(|s| s.instance.id.clone())
        .collect()
}

#[test]
fn selection_filters_by_health_tags_and_metadata() {
    let state = instance_state();
    let base = ServiceQuery {
        service: "web".into(),
        ..Default::default()
    };
    assert_eq!(selected_ids(&state, &base), vec!["a", "b"]);
    let passing = ServiceQuery {
        only_passing: true,
        ..base.clone()
    };
    assert_eq!(selected_ids(&state, &passing), vec!["a"]);
    let ignoring = ServiceQuery {
        ignore_check_ids: vec!["check-c".into()],
        ..base.clone()
    };
    assert_eq!(selected_ids(&state, &ignoring), vec!["a", "b", "c"]);
    let tagged = ServiceQuery {
        tags: vec!["PRIMARY".into(), "!Canary".into()],
        ..base.clone()
    };
    assert_eq!(selected_ids(&state, &tagged), vec!["a"]);
    let node_meta = ServiceQuery {
        node_meta: [("rack".to_string(), "r-n2".to_string())].into(),
        ..base.clone()
    };
    assert_eq!(selected_ids(&state, &node_meta), vec!["b"]);
    let service_meta = ServiceQuery {
        service_meta: [("env".to_string(), "prod".to_string())].into(),
        ignore_check_ids: vec!["check-c".into()],
        ..base.clone()
    };
    assert_eq!(selected_ids(&state, &service_meta), vec!["a", "c"]);
    let connect = ServiceQuery {
        connect: true,
        ..base.clone()
    };
    assert!(selected_ids(&state, &connect).is_empty());
    let other = ServiceQuery {
        service: "db".into(),
        ..base
    };
    assert!(selected_ids(&state, &other).is_empty());
}

#[test]
fn shuffles_are_permutations_decided_by_the_seed() {
    let items: Vec<u32> = (0..20).collect();
    let shuffled = |seed| {
        let mut copy = items.clone();
        shuffle(&mut copy, seed);
        copy
    };
    assert_eq!(shuffled(7), shuffled(7));
    assert_ne!(shuffled(7), shuffled(8));
    let mut sorted = shuffled(7);
    sorted.sort_unstable();
    assert_eq!(sorted, items);
}

#[test]
fn the_near_node_is_swapped_first_only_within_the_first_ten() {
    let nodes: Vec<String> = (0..12).map(|i| format!("n{i}")).collect();
    let mut near = nodes.clone();
    put_near_node_first(&mut near, "N4", String::as_str);
    assert_eq!(near[0], "n4");
    assert_eq!(near[4], "n0");
    let mut far = nodes.clone();
    put_near_node_first(&mut far, "n11", String::as_str);
    assert_eq!(far, nodes);
    let mut none = nodes.clone();
    put_near_node_first(&mut none, "", String::as_str);
    assert_eq!(none, nodes);
}

#[test]
fn failover_takes_the_nearest_n_then_the_listed_datacenters_once() {
    let others: Vec<String> = ["dc2", "dc3", "dc4"].map(String::from).to_vec();
    let targets = |nearest_n, listed: &[&str]| {
        failover_targets(
            &others,
            &QueryFailover {
                nearest_n,
                datacenters: listed.iter().map(|dc| dc.to_string()).collect(),
            },
        )
    };
    assert_eq!(targets(0, &[]), Vec::<String>::new());
    assert_eq!(targets(2, &[]), vec!["dc2", "dc3"]);
    assert_eq!(targets(9, &[]), vec!["dc2", "dc3", "dc4"]);
    assert_eq!(
        targets(1, &["dc4", "dc2", "nowhere", "dc1"]),
        vec!["dc2", "dc4"]
    );
    assert_eq!(targets(0, &["dc3", "dc3"]), vec!["dc3"]);
}
