//! An app as the Marathon API handles it: the typed spec the platform acts on, and the
//! definition the API echoes back, which the state keeps beside the spec (in the definitions
//! table, by app id and version) without ever reading it.

use std::ops::{Deref, DerefMut};

use atoll_state::{AppSpec, State};
use serde_json::Value;

use super::render::{render_definition, Echo};

/// An app version and its Marathon definition.
#[derive(Debug, Clone, PartialEq)]
pub struct MarathonApp {
    /// What the platform acts on.
    pub spec: AppSpec,
    /// The definition as submitted, every default filled in; what `GET` echoes.
    pub definition: Value,
}

impl Deref for MarathonApp {
    type Target = AppSpec;

    fn deref(&self) -> &AppSpec {
        &self.spec
    }
}

impl DerefMut for MarathonApp {
    fn deref_mut(&mut self) -> &mut AppSpec {
        &mut self.spec
    }
}

impl MarathonApp {
    /// The current version of app `id`, if it exists.
    pub fn current(state: &State, id: &str) -> Option<Self> {
        state
            .workload
            .apps
            .get(id)
            .map(|spec| Self::stored(state, spec))
    }

    /// A stored version with its definition; one stored without a definition gets the one
    /// its spec renders to.
    pub fn stored(state: &State, spec: &AppSpec) -> Self {
        let definition = state
            .workload
            .definitions
            .get(&spec.id)
            .and_then(|versions| versions.get(&spec.version))
            .cloned()
            .unwrap_or_else(|| render_definition(spec, &Echo::default()));
        MarathonApp {
            spec: spec.clone(),
            definition,
        }
    }
}
