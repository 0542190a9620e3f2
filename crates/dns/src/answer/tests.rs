use atoll_state::{CheckSpec, CheckStatus, Command, Registration, ServiceSpec, State};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use super::*;

fn config() -> DnsConfig {
    DnsConfig {
        domain: Name::from_ascii("consul.").unwrap(),
        datacenter: "dc1".into(),
        service_ttl: 0,
        node_ttl: 0,
        only_passing: false,
        has_recursors: false,
    }
}

fn state_with(instances: &[(&str, &str, &str, Option<CheckStatus>)]) -> State {
    let mut state = State::default();
    let mut index = 0;
    for (id, address, tag, status) in instances {
        index += 1;
        state.apply(
            index,
            &Command::Register(Box::new(Registration {
                node: "n1".into(),
                address: "10.0.0.1".into(),
                datacenter: "dc1".into(),
                service: Some(ServiceSpec {
                    id: (*id).into(),
                    name: "web".into(),
                    address: (*address).into(),
                    port: 8080,
                    tags: vec![(*tag).into()],
                    ..Default::default()
                }),
                checks: status
                    .map(|s| {
                        vec![CheckSpec {
                            check_id: format!("service:{id}"),
                            service_id: (*id).into(),
                            status: Some(s),
                            ..Default::default()
                        }]
                    })
                    .unwrap_or_default(),
                ..Default::default()
            })),
        );
    }
    state
}

fn ask(state: &State, name: &str, qtype: RecordType) -> Message {
    let mut request = Message::new(7, MessageType::Query, OpCode::Query);
    request.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    match resolve(&request, state, &config(), 1) {
        Resolution::Answer(message) => *message,
        Resolution::Forward => panic!("unexpected forward"),
        Resolution::Remote(dc) => panic!("unexpected remote lookup in {dc}"),
        Resolution::Query { name } => panic!("unexpected prepared query {name}"),
    }
}

fn a_records(message: &Message) -> Vec<String> {
    let mut out: Vec<String> = message
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

#[test]
fn critical_instances_are_left_out() {
    let state = state_with(&[
        ("a", "10.0.0.2", "v1", Some(CheckStatus::Passing)),
        ("b", "10.0.0.3", "v1", Some(CheckStatus::Critical)),
        ("c", "10.0.0.4", "v2", Some(CheckStatus::Warning)),
    ]);
    let response = ask(&state, "web.service.consul.", RecordType::A);
    assert_eq!(response.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_records(&response), vec!["10.0.0.2", "10.0.0.4"]);
}

#[test]
fn tag_filter_and_case_insensitive_names() {
    let state = state_with(&[("a", "10.0.0.2", "v1", None), ("b", "10.0.0.3", "v2", None)]);
    assert_eq!(
        a_records(&ask(&state, "V1.Web.Service.Consul.", RecordType::A)),
        vec!["10.0.0.2"]
    );
    assert_eq!(
        a_records(&ask(&state, "_web._v2.service.consul.", RecordType::A)),
        vec!["10.0.0.3"]
    );
    assert_eq!(
        a_records(&ask(&state, "web.service.dc1.consul.", RecordType::A)).len(),
        2
    );
}

#[test]
fn srv_targets_have_additional_addresses() {
    let state = state_with(&[("a", "10.0.0.2", "v1", None), ("b", "", "v1", None)]);
    let response = ask(&state, "_web._tcp.service.consul.", RecordType::SRV);
    assert_eq!(response.answers.len(), 2);
    let mut targets: Vec<String> = response
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some(format!("{}:{}", srv.target, srv.port)),
            _ => None,
        })
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        vec!["0a000002.addr.dc1.consul.:8080", "n1.node.dc1.consul.:8080"]
    );
    assert_eq!(response.additionals.len(), 2);
}

#[test]
fn unknown_names_are_nxdomain_with_soa() {
    let state = state_with(&[("a", "10.0.0.2", "v1", Some(CheckStatus::Critical))]);
    for name in [
        "nope.service.consul.",
        "web.service.consul.",
        "what.consul.",
    ] {
        let response = ask(&state, name, RecordType::A);
        assert_eq!(
            response.metadata.response_code,
            ResponseCode::NXDomain,
            "{name}"
        );
        assert!(matches!(response.authorities[0].data, RData::SOA(_)));
    }
}

#[test]
fn node_lookup_and_foreign_datacenter() {
    let state = state_with(&[("a", "", "v1", None)]);
    assert_eq!(
        a_records(&ask(&state, "n1.node.consul.", RecordType::A)),
        vec!["10.0.0.1"]
    );
    // This datacenter named: answered here.
    assert_eq!(
        a_records(&ask(&state, "n1.node.dc1.consul.", RecordType::A)),
        vec!["10.0.0.1"]
    );
    // Another: sent there, whichever form names it.
    for name in [
        "web.service.dc9.consul.",
        "v1.web.service.dc9.consul.",
        "_web._tcp.service.dc9.consul.",
        "n1.node.dc9.consul.",
        "geo.query.dc9.consul.",
    ] {
        let mut request = Message::new(7, MessageType::Query, OpCode::Query);
        request.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        assert!(
            matches!(resolve(&request, &state, &config(), 1), Resolution::Remote(dc) if dc == "dc9"),
            "{name}"
        );
    }
    // No route: NXDOMAIN with the SOA.
    let mut request = Message::new(7, MessageType::Query, OpCode::Query);
    request.add_query(Query::query(
        Name::from_ascii("web.service.dc9.consul.").unwrap(),
        RecordType::A,
    ));
    let response = unknown_datacenter(&request, &state, &config());
    assert_eq!(response.metadata.response_code, ResponseCode::NXDomain);
    assert!(matches!(response.authorities[0].data, RData::SOA(_)));
}

#[test]
fn outside_domain_is_refused_without_recursor() {
    let state = State::default();
    let response = ask(&state, "example.com.", RecordType::A);
    assert_eq!(response.metadata.response_code, ResponseCode::Refused);
}

#[test]
fn oversized_answers_are_truncated_with_tc() {
    let owned: Vec<(String, String)> = (0..40)
        .map(|i| (format!("i{i}"), format!("10.0.1.{i}")))
        .collect();
    let instances: Vec<(&str, &str, &str, Option<CheckStatus>)> = owned
        .iter()
        .map(|(id, ip)| (id.as_str(), ip.as_str(), "v1", None))
        .collect();
    let state = state_with(&instances);
    let response = ask(&state, "web.service.consul.", RecordType::SRV);
    assert_eq!(response.answers.len(), 40);
    let bytes = encode_within(response, CLASSIC_UDP_PAYLOAD).unwrap();
    assert!(bytes.len() <= CLASSIC_UDP_PAYLOAD);
    let decoded = Message::from_vec(&bytes).unwrap();
    assert!(decoded.metadata.truncation);
    assert!(!decoded.answers.is_empty() && decoded.answers.len() < 40);
}

proptest::proptest! {
    /// Whatever arrives on the wire, parsing plus answering never panics and any answer
    /// fits the UDP limit.
    #[test]
    fn arbitrary_packets_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
        let state = state_with(&[("a", "10.0.0.2", "v1", None)]);
        if let Ok(request) = Message::from_vec(&bytes) {
            if let Resolution::Answer(response) = resolve(&request, &state, &config(), 3) {
                let limit = udp_limit(&request);
                let encoded = encode_within(*response, limit);
                proptest::prop_assert!(encoded.is_none_or(|b| b.len() <= limit));
            }
        }
    }
}

#[test]
fn bare_responses_are_headers_only_with_the_code() {
    for (id, code) in [
        (0x1234, ResponseCode::FormErr),
        (0xffff, ResponseCode::ServFail),
        (0, ResponseCode::Refused),
    ] {
        let bytes = bare_response(id, code);
        assert_eq!(bytes.len(), 12);
        let message = Message::from_vec(&bytes).unwrap();
        assert_eq!(message.metadata.id, id);
        assert_eq!(message.metadata.message_type, MessageType::Response);
        assert_eq!(message.metadata.op_code, OpCode::Query);
        assert_eq!(message.metadata.response_code, code);
        assert!(message.queries.is_empty() && message.answers.is_empty());
    }
    assert_eq!(format_error(7), bare_response(7, ResponseCode::FormErr));
}

fn request_for(name: &str, qtype: RecordType) -> Message {
    let mut request = Message::new(7, MessageType::Query, OpCode::Query);
    request.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    request
}

#[test]
fn prepared_query_names_of_this_datacenter_are_run_and_others_are_not() {
    let state = State::default();
    for name in ["web.query.consul.", "Web.query.dc1.consul."] {
        let request = request_for(name, RecordType::A);
        match resolve(&request, &state, &config(), 1) {
            Resolution::Query { name } => assert_eq!(name, "web"),
            other => panic!("{name}: {other:?}"),
        }
    }
    // Another datacenter's query runs there.
    let request = request_for("web.query.dc9.consul.", RecordType::A);
    assert!(matches!(
        resolve(&request, &state, &config(), 1),
        Resolution::Remote(dc) if dc == "dc9"
    ));
}

fn instance(node: &str, node_address: &str, address: &str, port: u16) -> crate::QueryInstance {
    crate::QueryInstance {
        node: node.into(),
        node_address: node_address.into(),
        address: address.into(),
        port,
    }
}

#[test]
fn prepared_query_answers_carry_its_ttl_and_name_the_answering_datacenter() {
    let state = state_with(&[]);
    let result = Ok(crate::QueryAnswer {
        ttl: Some(30),
        datacenter: "dc2".into(),
        instances: vec![
            instance("m1", "10.2.0.1", "", 80),
            instance("m2", "10.2.0.2", "10.2.0.9", 81),
        ],
    });
    let a = query_response(
        &request_for("web.query.consul.", RecordType::A),
        &state,
        &config(),
        &result,
    );
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    let ips: Vec<String> = a.answers.iter().map(|r| r.data.to_string()).collect();
    assert_eq!(ips, vec!["10.2.0.1", "10.2.0.9"]);
    assert!(a.answers.iter().all(|r| r.ttl == 30));
    let srv = query_response(
        &request_for("web.query.consul.", RecordType::SRV),
        &state,
        &config(),
        &result,
    );
    let targets: Vec<String> = srv
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::SRV(srv) => format!("{} {}", srv.port, srv.target),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        targets,
        vec!["80 m1.node.dc2.consul.", "81 0a020009.addr.dc2.consul."]
    );
    assert_eq!(srv.additionals.len(), 2);
    // Without a TTL of its own, the service TTL.
    let untimed = Ok(crate::QueryAnswer {
        ttl: None,
        ..result.clone().unwrap()
    });
    let configured = DnsConfig {
        service_ttl: 5,
        ..config()
    };
    let a = query_response(
        &request_for("web.query.consul.", RecordType::A),
        &state,
        &configured,
        &untimed,
    );
    assert!(a.answers.iter().all(|r| r.ttl == 5));
}

#[test]
fn an_unknown_or_empty_query_is_nxdomain_and_a_failed_one_servfail() {
    let state = state_with(&[]);
    let request = request_for("web.query.consul.", RecordType::A);
    let missing = query_response(
        &request,
        &state,
        &config(),
        &Err(crate::QueryFailure::NotFound),
    );
    assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
    assert!(matches!(missing.authorities[0].data, RData::SOA(_)));
    let empty = query_response(
        &request,
        &state,
        &config(),
        &Ok(crate::QueryAnswer::default()),
    );
    assert_eq!(empty.metadata.response_code, ResponseCode::NXDomain);
    assert!(matches!(empty.authorities[0].data, RData::SOA(_)));
    let failed = query_response(
        &request,
        &state,
        &config(),
        &Err(crate::QueryFailure::Failed("no leader".into())),
    );
    assert_eq!(failed.metadata.response_code, ResponseCode::ServFail);
}

#[test]
fn what_the_token_may_not_read_is_answered_as_missing() {
    use atoll_acl::{DefaultPolicy, Disposition, Rule, Target};
    // Both instances are on node n1.
    let state = state_with(&[("a", "10.0.0.2", "v1", None), ("b", "10.0.0.3", "v1", None)]);
    let ask_as = |authz: &Authorizer, name: &str| {
        let request = request_for(name, RecordType::A);
        match resolve_for(&request, &state, &config(), 1, authz) {
            Resolution::Answer(message) => *message,
            other => panic!("{other:?}"),
        }
    };
    let code = |authz: &Authorizer, name: &str| ask_as(authz, name).metadata.response_code;
    let rule = |target, disposition| Rule {
        target,
        disposition,
    };
    let web = || {
        rule(
            Target::Prefix(Segment::Service, "web".into()),
            Disposition::Read,
        )
    };
    let n1 = || rule(Target::Exact(Segment::Node, "n1".into()), Disposition::Read);

    let anonymous = Authorizer::new(DefaultPolicy::Deny, []);
    assert_eq!(
        code(&anonymous, "web.service.consul."),
        ResponseCode::NXDomain
    );
    assert_eq!(code(&anonymous, "n1.node.consul."), ResponseCode::NXDomain);
    // A service needs its node's read too.
    let web_only = Authorizer::new(DefaultPolicy::Deny, [web()]);
    assert_eq!(
        code(&web_only, "web.service.consul."),
        ResponseCode::NXDomain
    );
    let both = Authorizer::new(DefaultPolicy::Deny, [web(), n1()]);
    assert_eq!(a_records(&ask_as(&both, "web.service.consul.")).len(), 2);
    assert_eq!(a_records(&ask_as(&both, "n1.node.consul.")), ["10.0.0.1"]);
    let node_only = Authorizer::new(DefaultPolicy::Deny, [n1()]);
    assert_eq!(
        code(&node_only, "web.service.consul."),
        ResponseCode::NXDomain
    );
    assert_eq!(code(&node_only, "n1.node.consul."), ResponseCode::NoError);
}
