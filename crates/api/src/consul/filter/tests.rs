use serde_json::{json, Value};

use super::{Filter, FilterError, Shape};
use crate::consul::wire::shapes::{CATALOG_SERVICE, CHECK, HEALTH_ENTRY, NODE, SERVICE};

fn entry(node: &str, rack: &str, tags: &[&str], port: u16, statuses: &[&str]) -> Value {
    let checks: Vec<Value> = statuses
        .iter()
        .enumerate()
        .map(|(i, status)| {
            json!({
                "Node": node, "CheckID": format!("check-{i}"), "Name": "", "Status": status,
                "Notes": "", "Output": "", "ServiceID": "web-1", "ServiceName": "web",
                "ServiceTags": tags, "Type": "ttl", "Definition": {"TTL": "10s"},
                "CreateIndex": 1, "ModifyIndex": 1,
            })
        })
        .collect();
    json!({
        "Node": {
            "ID": "", "Node": node, "Address": "10.0.0.1", "Datacenter": "dc1",
            "TaggedAddresses": {"lan": "10.0.0.1"}, "Meta": {"rack": rack},
            "CreateIndex": 3, "ModifyIndex": 4,
        },
        "Service": {
            "ID": "web-1", "Service": "web", "Tags": tags, "Address": "", "Meta": {"env": "prod"},
            "Port": port, "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": false,
            "Datacenter": "dc1", "CreateIndex": 5, "ModifyIndex": 6,
        },
        "Checks": checks,
    })
}

fn sample() -> Value {
    entry(
        "alpha",
        "r1",
        &["primary", "v1"],
        8080,
        &["passing", "passing"],
    )
}

fn holds(expression: &str, element: &Value) -> bool {
    match Filter::compile(expression, &HEALTH_ENTRY) {
        Ok(filter) => filter.matches(element),
        Err(error) => panic!("{expression:?} did not compile: {error}"),
    }
}

fn refused(expression: &str) -> FilterError {
    match Filter::compile(expression, &HEALTH_ENTRY) {
        Ok(filter) => panic!("{expression:?} compiled: {filter:?}"),
        Err(error) => error,
    }
}

fn syntax_at(expression: &str) -> (usize, usize, usize, String) {
    match refused(expression) {
        FilterError::Syntax {
            line,
            column,
            offset,
            expected,
        } => (line, column, offset, expected),
        other => panic!("{expression:?}: expected a syntax error, got {other}"),
    }
}

#[test]
fn equality_on_text_integer_and_boolean() {
    let e = sample();
    assert!(holds("Node.Node == alpha", &e));
    assert!(holds("Node.Node == \"alpha\"", &e));
    assert!(holds("Node.Node == `alpha`", &e));
    assert!(!holds("Node.Node == beta", &e));
    assert!(holds("Node.Node != beta", &e));
    assert!(!holds("Node.Node != alpha", &e));
    assert!(holds("Service.Port == 8080", &e));
    assert!(!holds("Service.Port == 8081", &e));
    assert!(holds("Service.Port != 8081", &e));
    assert!(holds("Service.EnableTagOverride == false", &e));
    assert!(holds("Service.EnableTagOverride != true", &e));
    assert!(holds("Service.Weights.Passing == 1", &e));
}

#[test]
fn in_and_contains_on_lists_maps_and_strings() {
    let e = sample();
    assert!(holds("primary in Service.Tags", &e));
    assert!(holds("\"v1\" in Service.Tags", &e));
    assert!(!holds("secondary in Service.Tags", &e));
    assert!(holds("secondary not in Service.Tags", &e));
    assert!(holds("Service.Tags contains primary", &e));
    assert!(holds("Service.Tags not contains secondary", &e));
    assert!(!holds("Service.Tags not contains primary", &e));
    // Maps: the key is present.
    assert!(holds("rack in Node.Meta", &e));
    assert!(holds("Node.Meta contains rack", &e));
    assert!(!holds("r1 in Node.Meta", &e));
    // Strings: substring.
    assert!(holds("lph in Node.Node", &e));
    assert!(holds("Node.Node contains \"alp\"", &e));
    assert!(holds("zz not in Node.Node", &e));
}

#[test]
fn matches_uses_regular_expressions() {
    let e = sample();
    assert!(holds("Node.Node matches \"^al.*a$\"", &e));
    assert!(!holds("Node.Node matches \"^be\"", &e));
    assert!(holds("Node.Node not matches \"^be\"", &e));
    assert!(holds("Service.Meta.env matches `^pr[o]d$`", &e));
}

#[test]
fn emptiness_of_lists_and_maps() {
    let bare = entry("beta", "r2", &[], 80, &[]);
    assert!(holds("Service.Tags is empty", &bare));
    assert!(holds("Checks is empty", &bare));
    assert!(!holds("Checks is not empty", &bare));
    let e = sample();
    assert!(holds("Service.Tags is not empty", &e));
    assert!(holds("Node.Meta is not empty", &e));
    assert!(holds("Checks is not empty", &e));
}

#[test]
fn map_values_by_dot_or_index() {
    let e = sample();
    assert!(holds("Node.Meta.rack == r1", &e));
    assert!(holds("Node.Meta[\"rack\"] == r1", &e));
    assert!(holds("Node.Meta[`rack`] == \"r1\"", &e));
    // A missing key matches nothing; its negation holds.
    assert!(!holds("Node.Meta.zone == \"\"", &e));
    assert!(holds("Node.Meta.zone != eu", &e));
    // Keys may hold characters an identifier cannot.
    let mut odd = sample();
    odd["Node"]["Meta"]["rack-id"] = json!("7");
    assert!(holds("Node.Meta[\"rack-id\"] == \"7\"", &odd));
}

#[test]
fn selector_through_a_list_matches_any_element() {
    let mixed = entry("alpha", "r1", &["a"], 1, &["passing", "critical"]);
    assert!(holds("Checks.Status == passing", &mixed));
    assert!(holds("Checks.Status == critical", &mixed));
    assert!(!holds("Checks.Status == warning", &mixed));
    // The negation is of the whole answer: no check is critical.
    assert!(!holds("Checks.Status != critical", &mixed));
    assert!(holds("Checks.Status != warning", &mixed));
    assert!(holds("Checks.ServiceTags contains a", &mixed));
    let healthy = sample();
    assert!(holds("Checks.Status != critical", &healthy));
    // A missing optional field reads as empty.
    assert!(holds("Checks.Definition.HTTP == \"\"", &healthy));
}

#[test]
fn precedence_is_not_then_and_then_or() {
    let e = sample();
    // `a or b and c` is `a or (b and c)`.
    assert!(holds(
        "Node.Node == alpha or Node.Node == x and Node.Node == y",
        &e
    ));
    assert!(!holds(
        "(Node.Node == alpha or Node.Node == x) and Node.Node == y",
        &e
    ));
    // `not a and b` is `(not a) and b`.
    assert!(!holds(
        "not Node.Node == alpha and Service.Port == 8080",
        &e
    ));
    assert!(holds(
        "not (Node.Node == beta and Service.Port == 8080)",
        &e
    ));
    assert!(holds("not not Node.Node == alpha", &e));
    // `a and not b or c` is `(a and (not b)) or c`.
    assert!(holds(
        "Node.Node == x and not Service.Port == 1 or Service.Port == 8080",
        &e
    ));
    assert!(holds("((Node.Node == alpha))", &e));
    assert!(holds(
        "Node.Node == x or Node.Node == y or Node.Node == alpha",
        &e
    ));
    assert!(!holds(
        "Node.Node == alpha and Service.Port == 8080 and Node.Meta.rack == r9",
        &e
    ));
}

#[test]
fn whitespace_and_newlines_are_ignored_outside_strings() {
    let e = sample();
    assert!(holds(
        "  Node.Node==alpha\n\tand\r\nService.Port==8080 ",
        &e
    ));
    assert!(holds("(Node.Node==alpha)and(Service.Port==8080)", &e));
}

#[test]
fn strings_unescape_like_go() {
    let mut e = sample();
    e["Service"]["Meta"]["quote"] = json!("say \"hi\"\n\u{e9}");
    assert!(holds(r#"Service.Meta.quote == "say \"hi\"\n\u00e9""#, &e));
    // Backticks are raw.
    e["Service"]["Meta"]["raw"] = json!(r"a\nb");
    assert!(holds(r"Service.Meta.raw == `a\nb`", &e));
}

#[test]
fn negative_and_large_numbers_compare_as_integers() {
    let mut e = sample();
    e["Node"]["ModifyIndex"] = json!(u64::MAX);
    assert!(holds("Node.ModifyIndex == 18446744073709551615", &e));
    assert!(!holds("Node.ModifyIndex == -1", &e));
}

#[test]
fn syntax_errors_name_the_position_and_what_was_expected() {
    let (line, column, offset, expected) = syntax_at("Node.Node ==");
    assert_eq!((line, column, offset), (1, 13, 12));
    assert!(expected.contains("a quoted string"), "{expected}");

    let (_, column, offset, expected) = syntax_at("Node.Node = alpha");
    assert_eq!((column, offset), (11, 10));
    assert!(expected.contains("\"(\""), "{expected}");

    let (_, column, _, expected) = syntax_at("Node.Node alpha");
    assert_eq!(column, 11);
    assert!(expected.contains("\"==\"") && expected.contains("\"matches\""));

    let (_, column, _, expected) = syntax_at("(Node.Node == alpha");
    assert_eq!(column, 20);
    assert!(expected.contains("\")\""), "{expected}");

    let (_, column, _, expected) = syntax_at("Node.Node == alpha Service.Port == 1");
    assert_eq!(column, 20);
    assert!(expected.contains("\"and\"") && expected.contains("\"or\""));

    let (line, column, offset, _) = syntax_at("Node.Node == alpha and\n  Service.Port ===");
    assert_eq!((line, column, offset), (2, 18, 40));

    let (_, column, _, _) = syntax_at("Node.Node == \"unterminated");
    assert_eq!(column, 27);
    assert!(matches!(refused(""), FilterError::Syntax { offset: 0, .. }));
    assert!(matches!(refused("and"), FilterError::Syntax { .. }));
    assert!(matches!(
        refused("Node. == x"),
        FilterError::Syntax { offset: 6, .. }
    ));
    assert!(matches!(
        refused("Node.Meta[rack] == x"),
        FilterError::Syntax { offset: 10, .. }
    ));
    assert!(matches!(
        refused("Service.Port == 80x"),
        FilterError::Syntax { offset: 18, .. }
    ));
    assert!(matches!(
        refused("Service.Tags is full"),
        FilterError::Syntax { .. }
    ));
    assert!(matches!(refused("x not y"), FilterError::Syntax { .. }));
    assert!(matches!(
        refused("Node.Node == é"),
        FilterError::Syntax { offset: 13, .. }
    ));
}

#[test]
fn unknown_selectors_are_refused() {
    assert_eq!(
        refused("Node.Nope == x"),
        FilterError::UnknownSelector("Node.Nope".into())
    );
    assert_eq!(
        refused("ServiceName == x"),
        FilterError::UnknownSelector("ServiceName".into())
    );
    // Field names are matched exactly, as Consul's are.
    assert!(matches!(
        refused("node.node == x"),
        FilterError::UnknownSelector(_)
    ));
    // Nothing reaches below a map's value or a string.
    assert!(matches!(
        refused("Node.Meta.a.b == x"),
        FilterError::UnknownSelector(_)
    ));
    assert!(matches!(
        refused("Node.Node.x == x"),
        FilterError::UnknownSelector(_)
    ));
    assert!(matches!(
        refused("x in Checks.Nope"),
        FilterError::UnknownSelector(_)
    ));
}

#[test]
fn operators_must_suit_the_field() {
    let operator = |text: &str| match refused(text) {
        FilterError::Operator { operator, .. } => operator,
        other => panic!("{text:?}: {other}"),
    };
    assert_eq!(operator("Service.Tags == x"), "==");
    assert_eq!(operator("Service.Port matches x"), "matches");
    assert_eq!(operator("Node.Node is empty"), "is empty");
    assert_eq!(operator("Service.Port is not empty"), "is not empty");
    assert_eq!(operator("x in Service.Port"), "in");
    assert_eq!(operator("Checks == x"), "==");
    assert_eq!(operator("x in Checks"), "in");
    assert_eq!(operator("Service.Weights == 1"), "==");
    assert!(matches!(
        refused("Service.Port == eighty"),
        FilterError::Coerce { .. }
    ));
    assert!(matches!(
        refused("Service.EnableTagOverride == maybe"),
        FilterError::Coerce { .. }
    ));
    assert!(matches!(
        refused("Node.Node matches \"(\""),
        FilterError::Regex { .. }
    ));
}

#[test]
fn consul_message_carries_consuls_prefix() {
    let message = refused("Node.Nope == x").consul_message();
    assert_eq!(
        message,
        "Failed to create boolean expression evaluator: Selector \"Node.Nope\" is not valid"
    );
    let message = refused("Node.Node ==").consul_message();
    assert!(message.starts_with(
        "Failed to create boolean expression evaluator: 1:13 (12): no match found, expected: "
    ));
}

#[test]
fn retain_keeps_matching_list_items_and_map_values() {
    let filter =
        Filter::compile("Service.Port == 80", &HEALTH_ENTRY).unwrap_or_else(|e| panic!("{e}"));
    let mut list = json!([
        entry("a", "r", &[], 80, &[]),
        entry("b", "r", &[], 81, &[]),
        entry("c", "r", &[], 80, &[]),
    ]);
    filter.retain(&mut list);
    let nodes: Vec<&str> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["Node"]["Node"].as_str())
        .collect();
    assert_eq!(nodes, ["a", "c"]);

    let filter = Filter::compile("Port == 80", &SERVICE).unwrap_or_else(|e| panic!("{e}"));
    let mut map = json!({"x": {"Port": 80}, "y": {"Port": 81}});
    filter.retain(&mut map);
    assert_eq!(map, json!({"x": {"Port": 80}}));
}

/// Every field the JSON types serialize is a field of their shape, and the other way round,
/// so a filter accepts exactly the selectors a client sees.
#[test]
fn shapes_follow_the_json_types() {
    use crate::consul::wire::{CatalogServiceJson, CheckJson, NodeJson, ServiceJson};
    use atoll_state::{Check, CheckStatus, Node, ServiceInstance};

    fn fields(shape: &Shape) -> Vec<&'static str> {
        match shape {
            Shape::Object(fields) => fields.iter().map(|(name, _)| *name).collect(),
            _ => Vec::new(),
        }
    }
    fn keys(value: &Value) -> Vec<String> {
        value
            .as_object()
            .map(|map| map.keys().cloned().collect())
            .unwrap_or_default()
    }
    fn same(shape: &Shape, value: Value) {
        let mut expected: Vec<String> = fields(shape).into_iter().map(String::from).collect();
        let mut found = keys(&value);
        expected.sort();
        found.sort();
        assert_eq!(expected, found);
    }
    let node = Node {
        name: "n".into(),
        address: "10.0.0.1".into(),
        datacenter: "dc1".into(),
        tagged_addresses: Default::default(),
        meta: Default::default(),
        create_index: 1,
        modify_index: 1,
    };
    let instance = ServiceInstance {
        node: "n".into(),
        id: "web-1".into(),
        name: "web".into(),
        tags: Vec::new(),
        address: String::new(),
        port: 80,
        meta: Default::default(),
        enable_tag_override: false,
        tagged_addresses: Default::default(),
        create_index: 1,
        modify_index: 1,
    };
    let mut check = Check {
        node: "n".into(),
        check_id: "c".into(),
        name: "c".into(),
        status: CheckStatus::Passing,
        notes: String::new(),
        output: String::new(),
        service_id: String::new(),
        service_name: String::new(),
        service_tags: Vec::new(),
        definition: Default::default(),
        create_index: 1,
        modify_index: 1,
    };
    same(
        &NODE,
        serde_json::to_value(NodeJson::new(&node)).unwrap_or_default(),
    );
    same(
        &SERVICE,
        serde_json::to_value(ServiceJson::new(&instance, "dc1")).unwrap_or_default(),
    );
    same(
        &CATALOG_SERVICE,
        serde_json::to_value(CatalogServiceJson::new(&node, &instance)).unwrap_or_default(),
    );
    // Every optional part of a check's definition set, so that each is serialized.
    check.definition.http = Some("http://x".into());
    check.definition.tcp = Some("x:1".into());
    check.definition.interval_text = "1s".into();
    check.definition.timeout_text = "1s".into();
    check.definition.ttl_text = "1s".into();
    let check_json = serde_json::to_value(CheckJson::new(&check)).unwrap_or_default();
    same(&CHECK, check_json.clone());
    let Shape::Object(check_fields) = &CHECK else {
        panic!("a check is an object");
    };
    let definition = check_fields
        .iter()
        .find(|(name, _)| *name == "Definition")
        .map(|(_, shape)| shape);
    same(
        definition.unwrap_or(&Shape::Text),
        check_json["Definition"].clone(),
    );
}

#[test]
fn nesting_is_bounded_and_long_chains_stay_flat() {
    let e = sample();
    let deep = format!("{}Node.Node == alpha{}", "(".repeat(64), ")".repeat(64));
    assert!(holds(&deep, &e));
    let too_deep = format!("{}Node.Node == alpha{}", "(".repeat(65), ")".repeat(65));
    assert!(matches!(
        refused(&too_deep),
        FilterError::Syntax { offset: 65, .. }
    ));
    let nots = format!("{}Node.Node == alpha", "not ".repeat(100_000));
    assert!(matches!(refused(&nots), FilterError::Syntax { .. }));
    // A chain of a hundred thousand terms neither nests nor overflows the stack.
    let chain = vec!["Node.Node == x"; 100_000].join(" or ") + " or Node.Node == alpha";
    assert!(holds(&chain, &e));
    let chain = vec!["Service.Port == 8080"; 100_000].join(" and ");
    assert!(holds(&chain, &e));
}
