//! A Marathon app definition, parsed the way `POST /v2/apps` and `PUT /v2/apps/{id}` parse
//! it (a new app, and an update merged into an existing one). A refusal lists at least one
//! problem with its path; an accepted app renders as `GET /v2/apps` shows it, its echoed
//! definition parses back to the same app, and writing it changes only what `apply` allows.
#![no_main]

use std::sync::OnceLock;

use atoll_api::marathon::wire::{
    app_json, parse_app, parse_app_put, MarathonApp, PutAppError, ValidationError,
};
use atoll_fuzz::APP_VERSION;
use atoll_state::{Command, Outcome, State};
use libfuzzer_sys::fuzz_target;

const UPDATE_VERSION: &str = "2026-01-02T00:00:00.000Z";

struct Fixture {
    base: Option<MarathonApp>,
    state: State,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let base = atoll_fuzz::base_app();
        let mut state = atoll_fuzz::snapshot_state();
        if let Some(base) = &base {
            state.apply(
                5_000,
                &Command::PutApp {
                    app: Box::new(base.spec.clone()),
                    deployment: None,
                    definition: base.definition.clone(),
                },
            );
        }
        Fixture { base, state }
    })
}

fn refused(error: &ValidationError) {
    assert!(!error.details.is_empty(), "a refusal without a reason");
    for (path, message) in &error.details {
        assert!(
            path.starts_with('/'),
            "error path {path:?} is not a JSON path"
        );
        assert!(!message.is_empty(), "an empty message at {path}");
    }
    let _ = error.to_json();
}

fn accepted(app: &MarathonApp, version: &str) {
    assert!(
        app.id.starts_with('/'),
        "app id {:?} is not absolute",
        app.id
    );
    assert!(app.definition.is_object(), "definition is not an object");
    let rendered = app_json(
        app,
        &[],
        &|task| task.node.clone(),
        &|_| None,
        &[],
        None,
        false,
    );
    assert!(rendered.is_object());
    // What GET /v2/apps/{id} echoes can be posted again and means the same app.
    let echoed = serde_json::to_vec(&app.definition).expect("a JSON value serializes");
    match parse_app(&echoed, version, None) {
        Ok(again) => assert!(again == *app, "the echoed definition parses to another app"),
        Err(error) => panic!("the echoed definition is refused: {error}"),
    }
    let mut state = fixture().state.clone();
    let (outcome, _) = state.apply(
        6_000,
        &Command::PutApp {
            app: Box::new(app.spec.clone()),
            deployment: None,
            definition: app.definition.clone(),
        },
    );
    if let Outcome::Rejected(_) = outcome {
        assert!(state == fixture().state, "a refused app changed the state");
    }
}

fuzz_target!(|body: &[u8]| {
    let fixture = fixture();
    match parse_app(body, APP_VERSION, None) {
        Ok(app) => accepted(&app, APP_VERSION),
        Err(error) => refused(&error),
    }
    for base in [None, fixture.base.as_ref()] {
        match parse_app_put("/shop/web", body, UPDATE_VERSION, base) {
            Ok((app, _action)) => {
                assert_eq!(app.id, "/shop/web", "PUT changed the app the path names");
                accepted(&app, &app.version.clone());
            }
            Err(PutAppError::Json(message)) => assert!(!message.is_empty()),
            Err(PutAppError::Invalid(error)) => refused(&error),
        }
    }
});
