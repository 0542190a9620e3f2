//! Consul's rules language: a policy's `Rules`, in the HCL subset Consul's policies use or as
//! JSON, read into [`Rule`]s, and rules written back as HCL.
//!
//! ```hcl
//! # Comments: #, // and /* */.
//! key_prefix "app/" { policy = "write" }
//! key "app/secret" { policy = "deny" }
//! service "" { policy = "read" intentions = "read" }
//! operator = "read"
//! ```
//!
//! or `{"key_prefix": {"app/": {"policy": "write"}}, "operator": "read"}`. Segments: `agent`,
//! `event`, `key`, `node`, `query`, `service`, `session`, `app`, each also with `_prefix`;
//! globals: `acl`, `keyring`, `operator`. Dispositions `read`, `write`, `deny`, and `list` on
//! `key_prefix` only. A service rule's `intentions` is accepted and ignored (atoll has no
//! service mesh).

use std::fmt;

use crate::{Disposition, Global, Rule, Segment, Target};

/// Rules that do not parse; the message names the line or the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesError {
    /// What is wrong, and where.
    pub message: String,
}

impl fmt::Display for RulesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Failed to parse ACL rules: {}", self.message)
    }
}

impl std::error::Error for RulesError {}

fn error(message: impl Into<String>) -> RulesError {
    RulesError {
        message: message.into(),
    }
}

/// Every segment, with its rule name.
const SEGMENTS: [(Segment, &str); 8] = [
    (Segment::Agent, "agent"),
    (Segment::Event, "event"),
    (Segment::Key, "key"),
    (Segment::Node, "node"),
    (Segment::Query, "query"),
    (Segment::Service, "service"),
    (Segment::Session, "session"),
    (Segment::App, "app"),
];

/// Every global, with its rule name.
const GLOBALS: [(Global, &str); 3] = [
    (Global::Acl, "acl"),
    (Global::Keyring, "keyring"),
    (Global::Operator, "operator"),
];

impl Segment {
    /// The rule name of the segment's exact form (`key`); the prefix form adds `_prefix`.
    pub fn rule_name(self) -> &'static str {
        SEGMENTS
            .iter()
            .find(|(s, _)| *s == self)
            .map_or("", |(_, name)| name)
    }
}

impl Global {
    /// The rule name (`operator`).
    pub fn rule_name(self) -> &'static str {
        GLOBALS
            .iter()
            .find(|(g, _)| *g == self)
            .map_or("", |(_, name)| name)
    }
}

impl Disposition {
    /// The disposition as rules write it (`read`).
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Deny => "deny",
            Disposition::Read => "read",
            Disposition::List => "list",
            Disposition::Write => "write",
        }
    }
}

/// What a rule name at the top level stands for.
enum Kind {
    Named { segment: Segment, prefix: bool },
    Global(Global),
}

fn kind_of(name: &str) -> Option<Kind> {
    if let Some((global, _)) = GLOBALS.iter().find(|(_, n)| *n == name) {
        return Some(Kind::Global(*global));
    }
    let (base, prefix) = match name.strip_suffix("_prefix") {
        Some(base) => (base, true),
        None => (name, false),
    };
    SEGMENTS
        .iter()
        .find(|(_, n)| *n == base)
        .map(|(segment, _)| Kind::Named {
            segment: *segment,
            prefix,
        })
}

/// A disposition as written for the rule `rule` (`key_prefix "a/"`); `list_allowed` on
/// `key_prefix` only.
fn disposition(value: &str, rule: &str, list_allowed: bool) -> Result<Disposition, RulesError> {
    match value {
        "read" => Ok(Disposition::Read),
        "write" => Ok(Disposition::Write),
        "deny" => Ok(Disposition::Deny),
        "list" if list_allowed => Ok(Disposition::List),
        "list" => Err(error(format!(
            "{rule}: policy \"list\" is allowed on key_prefix rules only"
        ))),
        other => Err(error(format!(
            "{rule}: invalid policy {other:?} (read, write or deny)"
        ))),
    }
}

fn intentions(value: &str, rule: &str) -> Result<(), RulesError> {
    match value {
        "read" | "write" | "deny" => Ok(()),
        other => Err(error(format!(
            "{rule}: invalid intentions {other:?} (read, write or deny)"
        ))),
    }
}

/// Parses a policy's rules, HCL or JSON (text starting with `{`). Empty text is no rules.
pub fn parse(text: &str) -> Result<Vec<Rule>, RulesError> {
    if text.trim_start().starts_with('{') {
        parse_json(text)
    } else {
        Parser::new(text)?.rules()
    }
}

// ---- HCL ----

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Open,
    Close,
    Equals,
    Comma,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Ident(name) => write!(f, "{name}"),
            Token::Str(text) => write!(f, "{text:?}"),
            Token::Open => write!(f, "{{"),
            Token::Close => write!(f, "}}"),
            Token::Equals => write!(f, "="),
            Token::Comma => write!(f, ","),
        }
    }
}

/// Splits HCL text into tokens, each with its line (from 1).
fn tokenize(text: &str) -> Result<Vec<(Token, usize)>, RulesError> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            c if c.is_whitespace() => {}
            '#' => {
                while chars.peek().is_some_and(|c| *c != '\n') {
                    chars.next();
                }
            }
            '/' if chars.peek() == Some(&'/') => {
                while chars.peek().is_some_and(|c| *c != '\n') {
                    chars.next();
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let start = line;
                let mut last = ' ';
                loop {
                    match chars.next() {
                        None => {
                            return Err(error(format!(
                                "line {start}: comment opened with /* is not closed"
                            )))
                        }
                        Some('/') if last == '*' => break,
                        // The opening `*` is not `last`: `/*/` does not close.
                        Some(c) => {
                            if c == '\n' {
                                line += 1;
                            }
                            last = c;
                        }
                    }
                }
            }
            '{' => tokens.push((Token::Open, line)),
            '}' => tokens.push((Token::Close, line)),
            '=' => tokens.push((Token::Equals, line)),
            ',' => tokens.push((Token::Comma, line)),
            '"' => {
                let start = line;
                let mut value = String::new();
                loop {
                    match chars.next() {
                        None | Some('\n') => {
                            return Err(error(format!("line {start}: string is not closed")))
                        }
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('"') => value.push('"'),
                            Some('\\') => value.push('\\'),
                            Some('n') => value.push('\n'),
                            Some('t') => value.push('\t'),
                            Some('r') => value.push('\r'),
                            Some('u') => {
                                let hex: String = chars.by_ref().take(4).collect();
                                let decoded = u32::from_str_radix(&hex, 16)
                                    .ok()
                                    .filter(|_| hex.len() == 4)
                                    .and_then(char::from_u32)
                                    .ok_or_else(|| {
                                        error(format!("line {line}: invalid escape \\u{hex}"))
                                    })?;
                                value.push(decoded);
                            }
                            other => {
                                return Err(error(format!(
                                    "line {line}: invalid escape \\{}",
                                    other.map(String::from).unwrap_or_default()
                                )))
                            }
                        },
                        Some(c) => value.push(c),
                    }
                }
                tokens.push((Token::Str(value), start));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut name = String::from(c);
                while let Some(&next) = chars.peek() {
                    if next.is_ascii_alphanumeric() || next == '_' || next == '-' {
                        name.push(next);
                        chars.next();
                    } else {
                        break;
                    }
                }
                tokens.push((Token::Ident(name), line));
            }
            other => {
                return Err(error(format!(
                    "line {line}: unexpected character {other:?}"
                )));
            }
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    at: usize,
}

impl Parser {
    fn new(text: &str) -> Result<Self, RulesError> {
        Ok(Parser {
            tokens: tokenize(text)?,
            at: 0,
        })
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|(t, _)| t)
    }

    /// The line of the next token (or of the last one at the end).
    fn line(&self) -> usize {
        self.tokens
            .get(self.at)
            .or(self.tokens.last())
            .map_or(1, |(_, line)| *line)
    }

    fn next(&mut self, expected: &str) -> Result<Token, RulesError> {
        let line = self.line();
        match self.tokens.get(self.at) {
            Some((token, _)) => {
                self.at += 1;
                Ok(token.clone())
            }
            None => Err(error(format!(
                "line {line}: expected {expected}, found the end of the rules"
            ))),
        }
    }

    fn unexpected(&self, token: &Token, expected: &str) -> RulesError {
        let line = self
            .tokens
            .get(self.at.saturating_sub(1))
            .map_or(1, |t| t.1);
        error(format!("line {line}: expected {expected}, found {token}"))
    }

    fn string(&mut self, expected: &str) -> Result<String, RulesError> {
        match self.next(expected)? {
            Token::Str(value) => Ok(value),
            other => Err(self.unexpected(&other, expected)),
        }
    }

    fn skip_comma(&mut self) {
        if self.peek() == Some(&Token::Comma) {
            self.at += 1;
        }
    }

    fn rules(mut self) -> Result<Vec<Rule>, RulesError> {
        let mut rules = Vec::new();
        while self.peek().is_some() {
            let line = self.line();
            let name = match self.next("a rule")? {
                Token::Ident(name) => name,
                other => return Err(self.unexpected(&other, "a rule name")),
            };
            match kind_of(&name) {
                None => {
                    return Err(error(format!("line {line}: unknown rule {name:?}")));
                }
                Some(Kind::Global(global)) => {
                    match self.next("=")? {
                        Token::Equals => {}
                        other => return Err(self.unexpected(&other, &format!("= after {name}"))),
                    }
                    let value = self.string(&format!("the policy of {name}"))?;
                    let disposition = disposition(&value, &format!("line {line}: {name}"), false)?;
                    rules.push(Rule {
                        target: Target::Global(global),
                        disposition,
                    });
                }
                Some(Kind::Named { segment, prefix }) => {
                    let label = self.string(&format!("the quoted name after {name}"))?;
                    let rule = format!("line {line}: {name} {label:?}");
                    if self.peek() == Some(&Token::Equals) {
                        self.at += 1;
                    }
                    match self.next("{")? {
                        Token::Open => {}
                        other => return Err(self.unexpected(&other, &format!("{{ after {rule}"))),
                    }
                    let disposition = self.block(&rule, segment == Segment::Key && prefix)?;
                    rules.push(Rule {
                        target: if prefix {
                            Target::Prefix(segment, label)
                        } else {
                            Target::Exact(segment, label)
                        },
                        disposition,
                    });
                }
            }
            self.skip_comma();
        }
        Ok(rules)
    }

    /// The attributes of a rule's block, up to and with its `}`.
    fn block(&mut self, rule: &str, list_allowed: bool) -> Result<Disposition, RulesError> {
        let mut policy = None;
        loop {
            let attribute = match self.next("policy = \"...\" or }")? {
                Token::Close => break,
                Token::Ident(attribute) => attribute,
                other => return Err(self.unexpected(&other, "an attribute or }")),
            };
            match self.next("=")? {
                Token::Equals => {}
                other => return Err(self.unexpected(&other, &format!("= after {attribute}"))),
            }
            let value = self.string(&format!("the value of {attribute}"))?;
            match attribute.as_str() {
                "policy" => policy = Some(disposition(&value, rule, list_allowed)?),
                "intentions" if rule.contains(": service") => intentions(&value, rule)?,
                other => {
                    return Err(error(format!("{rule}: unknown attribute {other:?}")));
                }
            }
            self.skip_comma();
        }
        policy.ok_or_else(|| error(format!("{rule}: missing policy")))
    }
}

// ---- JSON ----

fn parse_json(text: &str) -> Result<Vec<Rule>, RulesError> {
    use serde_json::Value;
    let value: Value =
        serde_json::from_str(text).map_err(|e| error(format!("invalid JSON: {e}")))?;
    let Value::Object(top) = value else {
        return Err(error("the rules must be a JSON object"));
    };
    let mut rules = Vec::new();
    for (name, value) in top {
        match kind_of(&name) {
            None => return Err(error(format!("unknown rule {name:?}"))),
            Some(Kind::Global(global)) => {
                let Value::String(value) = value else {
                    return Err(error(format!("{name}: the policy must be a string")));
                };
                rules.push(Rule {
                    target: Target::Global(global),
                    disposition: disposition(&value, &name, false)?,
                });
            }
            Some(Kind::Named { segment, prefix }) => {
                // HCL's JSON form may also give a list of such objects.
                let objects = match value {
                    Value::Array(items) => items,
                    other => vec![other],
                };
                for object in objects {
                    let Value::Object(entries) = object else {
                        return Err(error(format!(
                            "{name}: expected an object of names to {{\"policy\": ...}}"
                        )));
                    };
                    for (label, block) in entries {
                        let rule = format!("{name} {label:?}");
                        let list_allowed = segment == Segment::Key && prefix;
                        rules.push(Rule {
                            target: if prefix {
                                Target::Prefix(segment, label.clone())
                            } else {
                                Target::Exact(segment, label.clone())
                            },
                            disposition: json_block(block, &rule, list_allowed, segment)?,
                        });
                    }
                }
            }
        }
    }
    Ok(rules)
}

fn json_block(
    block: serde_json::Value,
    rule: &str,
    list_allowed: bool,
    segment: Segment,
) -> Result<Disposition, RulesError> {
    use serde_json::Value;
    let blocks = match block {
        Value::Array(items) => items,
        other => vec![other],
    };
    let mut policy = None;
    for block in blocks {
        let Value::Object(attributes) = block else {
            return Err(error(format!("{rule}: expected {{\"policy\": ...}}")));
        };
        for (attribute, value) in attributes {
            let Value::String(value) = value else {
                return Err(error(format!("{rule}: {attribute} must be a string")));
            };
            match attribute.as_str() {
                "policy" => policy = Some(disposition(&value, rule, list_allowed)?),
                "intentions" if segment == Segment::Service => intentions(&value, rule)?,
                other => return Err(error(format!("{rule}: unknown attribute {other:?}"))),
            }
        }
    }
    policy.ok_or_else(|| error(format!("{rule}: missing policy")))
}

// ---- Printing ----

/// Writes rules as HCL that [`parse`] reads back to the same rules.
pub fn to_hcl(rules: &[Rule]) -> String {
    let mut out = String::new();
    for rule in rules {
        let policy = rule.disposition.as_str();
        match &rule.target {
            Target::Global(global) => {
                out.push_str(&format!("{} = \"{policy}\"\n", global.rule_name()));
            }
            Target::Exact(segment, name) | Target::Prefix(segment, name) => {
                let suffix = if matches!(rule.target, Target::Prefix(..)) {
                    "_prefix"
                } else {
                    ""
                };
                out.push_str(&format!(
                    "{}{suffix} {} {{\n  policy = \"{policy}\"\n}}\n",
                    segment.rule_name(),
                    quote(name)
                ));
            }
        }
    }
    out
}

/// A string as an HCL string literal.
fn quote(text: &str) -> String {
    let mut out = String::from('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn named(segment: Segment, prefix: bool, name: &str, d: Disposition) -> Rule {
        Rule {
            target: if prefix {
                Target::Prefix(segment, name.into())
            } else {
                Target::Exact(segment, name.into())
            },
            disposition: d,
        }
    }

    fn global(global: Global, d: Disposition) -> Rule {
        Rule {
            target: Target::Global(global),
            disposition: d,
        }
    }

    #[test]
    fn hcl_blocks_globals_and_comments() {
        let text = r#"
            # a comment
            key_prefix "foo/" { policy = "write" }
            key "foo/bar" {
              policy = "deny"   // trailing comment
            }
            /* a block
               comment */ service "" { policy = "read" intentions = "write" }
            service_prefix "web" {policy="write"}
            operator = "read"
            acl = "write"
            keyring = "deny"
            app_prefix "/prod/" { policy = "read" }
            key_prefix "" { policy = "list" }
        "#;
        let rules = parse(text).unwrap();
        assert_eq!(
            rules,
            vec![
                named(Segment::Key, true, "foo/", Disposition::Write),
                named(Segment::Key, false, "foo/bar", Disposition::Deny),
                named(Segment::Service, false, "", Disposition::Read),
                named(Segment::Service, true, "web", Disposition::Write),
                global(Global::Operator, Disposition::Read),
                global(Global::Acl, Disposition::Write),
                global(Global::Keyring, Disposition::Deny),
                named(Segment::App, true, "/prod/", Disposition::Read),
                named(Segment::Key, true, "", Disposition::List),
            ]
        );
    }

    #[test]
    fn every_segment_in_both_forms() {
        for (segment, name) in SEGMENTS {
            let rules = parse(&format!(
                "{name} \"a\" {{ policy = \"read\" }}\n{name}_prefix \"b\" {{ policy = \"write\" }}"
            ))
            .unwrap();
            assert_eq!(
                rules,
                vec![
                    named(segment, false, "a", Disposition::Read),
                    named(segment, true, "b", Disposition::Write)
                ]
            );
        }
    }

    #[test]
    fn json_rules() {
        let rules = parse(
            r#"{"key_prefix":{"foo/":{"policy":"write"}},"operator":"read",
                "service":{"web":{"policy":"read","intentions":"read"}},
                "node":[{"n1":{"policy":"deny"}}]}"#,
        )
        .unwrap();
        assert_eq!(rules.len(), 4);
        assert!(rules.contains(&named(Segment::Key, true, "foo/", Disposition::Write)));
        assert!(rules.contains(&global(Global::Operator, Disposition::Read)));
        assert!(rules.contains(&named(Segment::Service, false, "web", Disposition::Read)));
        assert!(rules.contains(&named(Segment::Node, false, "n1", Disposition::Deny)));
    }

    #[test]
    fn empty_rules_are_no_rules() {
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(parse("  # nothing\n").unwrap(), vec![]);
        assert_eq!(parse("{}").unwrap(), vec![]);
    }

    #[test]
    fn errors_name_the_line_or_the_rule() {
        let cases = [
            (
                "key \"a\" { policy = \"read\" }\nbogus \"x\" {}",
                "line 2: unknown rule \"bogus\"",
            ),
            (
                "key \"a\" { policy = \"rwx\" }",
                "line 1: key \"a\": invalid policy \"rwx\"",
            ),
            (
                "key \"a\" { policy = \"list\" }",
                "allowed on key_prefix rules only",
            ),
            ("\n\nkey \"a\" { }", "line 3: key \"a\": missing policy"),
            (
                "key \"a\" { policy = \"read\"",
                "expected policy = \"...\" or }",
            ),
            (
                "key \"a\" { policy = \"read }",
                "line 1: string is not closed",
            ),
            ("operator = \"list\"", "line 1: operator"),
            (
                "key \"a\" { color = \"red\" }",
                "unknown attribute \"color\"",
            ),
            (
                "key \"a\" { intentions = \"read\" }",
                "unknown attribute \"intentions\"",
            ),
            ("/* open", "not closed"),
            ("{\"key\": 1}", "key: expected an object"),
            ("{\"nope\": \"read\"}", "unknown rule \"nope\""),
            (
                "{\"key\":{\"a\":{\"policy\":\"bad\"}}}",
                "key \"a\": invalid policy",
            ),
            ("{bad json", "invalid JSON"),
        ];
        for (text, expected) in cases {
            let e = parse(text).unwrap_err();
            let shown = e.to_string();
            assert!(shown.starts_with("Failed to parse ACL rules: "), "{shown}");
            assert!(shown.contains(expected), "{text:?}: {shown}");
        }
    }

    fn arb_segment() -> impl Strategy<Value = Segment> {
        prop::sample::select(SEGMENTS.map(|(s, _)| s).to_vec())
    }

    fn arb_rule() -> impl Strategy<Value = Rule> {
        let dispositions = || {
            prop::sample::select(vec![
                Disposition::Read,
                Disposition::Write,
                Disposition::Deny,
            ])
        };
        prop_oneof![
            (
                arb_segment(),
                any::<bool>(),
                any::<String>(),
                dispositions()
            )
                .prop_map(|(segment, prefix, name, d)| named(segment, prefix, &name, d)),
            any::<String>().prop_map(|name| named(Segment::Key, true, &name, Disposition::List)),
            (
                prop::sample::select(GLOBALS.map(|(g, _)| g).to_vec()),
                dispositions()
            )
                .prop_map(|(g, d)| global(g, d)),
        ]
    }

    proptest! {
        #[test]
        fn printed_rules_parse_back(rules in prop::collection::vec(arb_rule(), 0..12)) {
            let text = to_hcl(&rules);
            prop_assert_eq!(parse(&text).unwrap(), rules);
        }

        #[test]
        fn any_text_parses_or_fails_without_panicking(text in any::<String>()) {
            let _ = parse(&text);
        }
    }
}
