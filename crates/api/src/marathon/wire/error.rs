//! Why a definition was refused.

use std::fmt;

use serde_json::{json, Value};

/// An app definition Marathon would refuse: every problem found, each with the JSON path
/// of the offending field (`/cpus`, `/healthChecks(0)/portIndex`) and a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValidationError {
    /// `(path, message)` pairs, in the order they were found.
    pub details: Vec<(String, String)>,
}

impl ValidationError {
    pub(super) fn single(path: &str, message: impl Into<String>) -> Self {
        ValidationError {
            details: vec![(path.to_string(), message.into())],
        }
    }

    /// Marathon's 422 body: `{"message": "Object is not valid", "details": [{"path",
    /// "errors": [...]}]}`, messages grouped by path in the order paths first appear.
    pub fn to_json(&self) -> Value {
        let mut grouped: Vec<(&str, Vec<&str>)> = Vec::new();
        for (path, message) in &self.details {
            match grouped.iter_mut().find(|(p, _)| p == path) {
                Some((_, errors)) => errors.push(message),
                None => grouped.push((path, vec![message])),
            }
        }
        let details: Vec<Value> = grouped
            .into_iter()
            .map(|(path, errors)| json!({ "path": path, "errors": errors }))
            .collect();
        json!({ "message": "Object is not valid", "details": details })
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Object is not valid")?;
        for (i, (path, message)) in self.details.iter().enumerate() {
            let separator = if i == 0 { ": " } else { "; " };
            write!(f, "{separator}{path}: {message}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationError {}

/// Why the body of `PUT /v2/apps/{id}` was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutAppError {
    /// Not JSON at all (Marathon's 400), with the message to show.
    Json(String),
    /// A definition Marathon would refuse (422).
    Invalid(ValidationError),
}
