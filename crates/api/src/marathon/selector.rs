//! `GET /v2/apps` filters and embeds: Marathon's label selector (`?label=`) and which parts
//! of an app an answer carries (`?embed=`).

use std::collections::BTreeMap;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    /// `key`: the label exists.
    Exists(String),
    /// `key==value`, `key in (a,b)`: the label exists with one of the values.
    In(String, Vec<String>),
    /// `key!=value`, `key notin (a,b)`: the label is missing or has none of the values.
    NotIn(String, Vec<String>),
}

/// A parsed `?label=` selector: every requirement must hold (comma = and).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    /// Parses Marathon's selector syntax: `key`, `key==value`, `key!=value`,
    /// `key in (a,b)`, `key notin (a,b)`, joined by commas. A backslash escapes the next
    /// character. The error names what could not be read.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for part in split_top_level(text)? {
            requirements.push(requirement(part.trim())?);
        }
        if requirements.is_empty() {
            return Err("label selector is empty".into());
        }
        Ok(LabelSelector(requirements))
    }

    /// Whether labels match every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Exists(key) => labels.contains_key(key),
            Requirement::In(key, values) => labels.get(key).is_some_and(|v| values.contains(v)),
            Requirement::NotIn(key, values) => labels.get(key).is_none_or(|v| !values.contains(v)),
        })
    }
}

/// Splits at commas outside parentheses, keeping escapes for the next step.
fn split_top_level(text: &str) -> Result<Vec<String>, String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut depth = 0usize;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                current.push(c);
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            '(' => {
                depth += 1;
                current.push(c);
            }
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| format!("unbalanced ')' in label selector {text:?}"))?;
                current.push(c);
            }
            ',' if depth == 0 => parts.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced '(' in label selector {text:?}"));
    }
    parts.push(current);
    Ok(parts)
}

/// Removes escapes, and says where an unescaped `needle` is (byte offset in `text`).
fn find_unescaped(text: &str, needle: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        if c == '\\' {
            escaped = true;
            continue;
        }
        if text[i..].starts_with(needle) {
            return Some(i);
        }
    }
    None
}

fn unescape(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.trim().chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn key_of(text: &str, whole: &str) -> Result<String, String> {
    let key = unescape(text);
    if key.is_empty() {
        return Err(format!("label selector term {whole:?} has no key"));
    }
    Ok(key)
}

fn requirement(term: &str) -> Result<Requirement, String> {
    if term.is_empty() {
        return Err("label selector has an empty term".into());
    }
    if let Some(at) = find_unescaped(term, "==") {
        return Ok(Requirement::In(
            key_of(&term[..at], term)?,
            vec![unescape(&term[at + 2..])],
        ));
    }
    if let Some(at) = find_unescaped(term, "!=") {
        return Ok(Requirement::NotIn(
            key_of(&term[..at], term)?,
            vec![unescape(&term[at + 2..])],
        ));
    }
    for (word, negated) in [(" notin ", true), (" in ", false)] {
        if let Some(at) = find_unescaped(term, word) {
            let key = key_of(&term[..at], term)?;
            let set = term[at + word.len()..].trim();
            let inner = set
                .strip_prefix('(')
                .and_then(|s| s.strip_suffix(')'))
                .ok_or_else(|| {
                    format!("label selector term {term:?}: the set must be in parentheses")
                })?;
            let values: Vec<String> = split_set(inner);
            return Ok(if negated {
                Requirement::NotIn(key, values)
            } else {
                Requirement::In(key, values)
            });
        }
    }
    let key = key_of(term, term)?;
    if key.chars().any(char::is_whitespace) || key.contains(['(', ')']) {
        return Err(format!("label selector term {term:?} cannot be read"));
    }
    Ok(Requirement::Exists(key))
}

fn split_set(inner: &str) -> Vec<String> {
    let mut values = Vec::new();
    let mut rest = inner;
    while let Some(at) = find_unescaped(rest, ",") {
        values.push(unescape(&rest[..at]));
        rest = &rest[at + 1..];
    }
    values.push(unescape(rest));
    values
}

/// What an app answer carries beyond the definition.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Embed {
    /// `tasks`: the app's tasks.
    pub tasks: bool,
    /// `tasksStaged`, `tasksRunning`, `tasksHealthy`, `tasksUnhealthy`.
    pub counts: bool,
    /// `deployments`: the deployments in progress.
    pub deployments: bool,
    /// `lastTaskFailure`, when there was one.
    pub last_task_failure: bool,
    /// `taskStats`.
    pub task_stats: bool,
    /// `readinessCheckResults`.
    pub readiness: bool,
}

impl Embed {
    /// Everything, as `GET /v2/apps/{id}` answers.
    pub const ALL: Embed = Embed {
        tasks: true,
        counts: true,
        deployments: true,
        last_task_failure: true,
        task_stats: true,
        readiness: true,
    };

    /// `?embed=` values as Marathon reads them: `apps.X` or `app.X`; `failures` is the older
    /// name of `lastTaskFailure`. Values it does not know are ignored, as Marathon does.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Embed {
        let mut embed = Embed::default();
        for value in values {
            let part = value
                .strip_prefix("apps.")
                .or_else(|| value.strip_prefix("app."))
                .unwrap_or(value);
            match part {
                "tasks" => embed.tasks = true,
                "counts" => embed.counts = true,
                "deployments" => embed.deployments = true,
                "lastTaskFailure" | "failures" => embed.last_task_failure = true,
                "taskStats" => embed.task_stats = true,
                "readiness" => embed.readiness = true,
                _ => {}
            }
        }
        embed
    }
}

#[cfg(test)]
mod tests {
    use super::{Embed, LabelSelector};
    use std::collections::BTreeMap;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selector_terms_match_as_marathon_reads_them() {
        let web = labels(&[("tier", "web"), ("env", "prod")]);
        let db = labels(&[("tier", "db")]);
        let cases = [
            ("tier", true, true),
            ("env", true, false),
            ("tier==web", true, false),
            ("tier!=web", false, true),
            ("env!=prod", false, true),
            ("tier in (web, cache)", true, false),
            ("tier notin (web,cache)", false, true),
            ("tier,env==prod", true, false),
            ("tier in (db,web),env notin (prod)", false, true),
        ];
        for (text, on_web, on_db) in cases {
            let selector = LabelSelector::parse(text).unwrap();
            assert_eq!(selector.matches(&web), on_web, "{text} on web");
            assert_eq!(selector.matches(&db), on_db, "{text} on db");
        }
        let odd = labels(&[("a,b", "x==y")]);
        assert!(LabelSelector::parse(r"a\,b==x\=\=y").unwrap().matches(&odd));
    }

    #[test]
    fn unreadable_selectors_are_refused_with_the_term() {
        for text in ["", "tier in web", "tier in (web", "==web", "a b", "tier,"] {
            assert!(LabelSelector::parse(text).is_err(), "{text:?} accepted");
        }
    }

    #[test]
    fn embeds_accept_both_prefixes_and_the_older_failures_name() {
        let embed = Embed::parse(["apps.tasks", "app.counts", "apps.failures", "bogus"]);
        assert!(embed.tasks && embed.counts && embed.last_task_failure);
        assert!(!embed.deployments && !embed.task_stats && !embed.readiness);
    }
}
