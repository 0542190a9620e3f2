//! A request body given to every Consul decoder the HTTP handlers call (service, check and
//! catalog registration, catalog deregistration, check update), and, split at its first
//! newline into `key?query` and a value, to the KV write and delete decoders. Decoding
//! either succeeds or fails with a 4xx naming the problem; what succeeds is applied to a
//! catalog as the state machine would, and a write refused there must change nothing.
#![no_main]

use std::sync::OnceLock;

use atoll_api::consul::input::{
    kv_delete_command, kv_set_command, parse_catalog_deregistration, parse_catalog_registration,
    parse_check_registration, parse_check_update, parse_service_registration,
};
use atoll_api::error::ApiError;
use atoll_api::query::Query;
use atoll_fuzz::DATACENTER;
use atoll_state::{Command, Outcome, Registration, State};
use libfuzzer_sys::fuzz_target;

fn catalog() -> &'static State {
    static CATALOG: OnceLock<State> = OnceLock::new();
    CATALOG.get_or_init(atoll_fuzz::catalog_state)
}

fn refused(error: &ApiError) {
    assert!(
        error.status.is_client_error(),
        "decoding failed with {}: {}",
        error.status,
        error.message
    );
    assert!(!error.message.is_empty(), "an error without a message");
}

fn apply(command: &Command) {
    let mut state = catalog().clone();
    let (outcome, changes) = state.apply(1_000, command);
    if matches!(outcome, Outcome::Rejected(_) | Outcome::Condition(false)) {
        assert!(
            state == *catalog(),
            "a refused write changed the state: {command:?} -> {outcome:?}"
        );
        assert!(changes.is_empty(), "a refused write reported changes");
    }
}

/// What the agent endpoints write for the local node (`alpha` of the fixture catalog).
fn local(registration: Registration) -> Command {
    Command::Register(Box::new(Registration {
        node: "alpha".into(),
        datacenter: DATACENTER.into(),
        skip_node_update: true,
        ..registration
    }))
}

fn decode_body(body: &[u8]) {
    match parse_service_registration(body) {
        Ok((service, checks)) => apply(&local(Registration {
            service: Some(service),
            checks,
            ..Default::default()
        })),
        Err(error) => refused(&error),
    }
    match parse_check_registration(body) {
        Ok(check) => apply(&local(Registration {
            checks: vec![check],
            ..Default::default()
        })),
        Err(error) => refused(&error),
    }
    match parse_catalog_registration(body, DATACENTER) {
        Ok(registration) => apply(&Command::Register(Box::new(registration))),
        Err(error) => refused(&error),
    }
    match parse_catalog_deregistration(body) {
        Ok((deregistration, _)) => apply(&Command::Deregister(deregistration)),
        Err(error) => refused(&error),
    }
    match parse_check_update(body) {
        Ok((status, output)) => apply(&Command::UpdateCheck {
            node: "alpha".into(),
            check_id: "service:web-1".into(),
            status,
            output,
        }),
        Err(error) => refused(&error),
    }
}

fn decode_kv(input: &[u8]) {
    let (target, value) = match input.iter().position(|b| *b == b'\n') {
        Some(at) => (&input[..at], &input[at + 1..]),
        None => (input, &[][..]),
    };
    let target = String::from_utf8_lossy(target);
    let (key, raw) = match target.split_once('?') {
        Some((key, raw)) => (key, Some(raw)),
        None => (target.as_ref(), None),
    };
    let query = Query::parse(raw);
    match kv_set_command(key.to_string(), &query, value) {
        Ok(command) => apply(&command),
        Err(error) => refused(&error),
    }
    match kv_delete_command(key.to_string(), &query) {
        Ok(command) => apply(&command),
        Err(error) => refused(&error),
    }
}

fuzz_target!(|input: &[u8]| {
    decode_body(input);
    decode_kv(input);
});
