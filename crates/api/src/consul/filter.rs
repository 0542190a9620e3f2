//! Consul's `?filter=` expressions: the grammar of the boolean expressions Consul 1.10
//! accepts (go-bexpr), checked against the shape of an endpoint's JSON when the request
//! arrives and evaluated on each element of the JSON the endpoint returns, so that a filter
//! sees exactly the field names and values a client sees.
//!
//! Pure code: no I/O, no state. Precedence, loosest first: `or`, `and`, `not`; parentheses
//! group. A selector that passes through a list matches when any element matches; the
//! negated operators (`!=`, `not in`, `not contains`, `not matches`, `is not empty`) are the
//! negation of that whole answer, as in go-bexpr (`Checks.Status != passing` holds when no
//! check is passing).

use regex::Regex;
use serde_json::Value;

/// What a JSON value of an endpoint looks like: which selectors reach into it and which
/// operators apply to it.
#[derive(Debug)]
pub enum Shape {
    /// A string.
    Text,
    /// An integer.
    Integer,
    /// `true` or `false`.
    Boolean,
    /// An object with arbitrary keys, each value of the given shape (`Meta`).
    Map(&'static Shape),
    /// A list of values of the given shape.
    List(&'static Shape),
    /// An object with these fields (a missing field reads as its empty value).
    Object(&'static [(&'static str, Shape)]),
}

/// Why an expression was refused. The text follows go-bexpr's, after Consul's prefix
/// `Failed to create boolean expression evaluator: ` (see [`FilterError::consul_message`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The text does not parse.
    #[error("{line}:{column} ({offset}): no match found, expected: {expected}")]
    Syntax {
        /// Line of the failure, from 1.
        line: usize,
        /// Column (in characters) of the failure, from 1.
        column: usize,
        /// Byte offset of the failure, from 0.
        offset: usize,
        /// What would have been accepted there.
        expected: String,
    },
    /// The selector names no field of the endpoint's answer.
    #[error("Selector {0:?} is not valid")]
    UnknownSelector(String),
    /// The operator does not apply to the selected field's type.
    #[error("Invalid match operator {operator:?} for selector {selector:?}")]
    Operator {
        /// The operator as written.
        operator: &'static str,
        /// The selector as written.
        selector: String,
    },
    /// The value cannot be read as the selected field's type.
    #[error("Failed to coerce value {value:?} for selector {selector:?}: expected {expected}")]
    Coerce {
        /// The value as written.
        value: String,
        /// The selector as written.
        selector: String,
        /// The type the field has.
        expected: &'static str,
    },
    /// A `matches` pattern that is not a regular expression.
    #[error("Failed to compile regular expression {pattern:?}: {reason}")]
    Regex {
        /// The pattern as written.
        pattern: String,
        /// The regex compiler's complaint.
        reason: String,
    },
}

impl FilterError {
    /// The message Consul answers with (its clients show it as is).
    pub fn consul_message(&self) -> String {
        format!("Failed to create boolean expression evaluator: {self}")
    }
}

/// A compiled filter expression.
#[derive(Debug)]
pub struct Filter {
    expression: Expression,
}

impl Filter {
    /// Parses `text` and checks every selector, operator and value against `shape`, the
    /// shape of one element of the endpoint's answer.
    pub fn compile(text: &str, shape: &'static Shape) -> Result<Filter, FilterError> {
        let tokens = tokenize(text)?;
        let mut parser = Parser {
            source: text,
            tokens,
            at: 0,
            shape,
            depth: 0,
        };
        let expression = parser.or()?;
        if !matches!(parser.peek(), Token::End) {
            return Err(parser.expected(&["\"and\"", "\"or\"", "end of input"]));
        }
        Ok(Filter { expression })
    }

    /// Whether one element of the answer matches.
    pub fn matches(&self, element: &Value) -> bool {
        self.expression.holds(element)
    }

    /// Keeps the elements of an answer that match: the items of a list, or the values of an
    /// object keyed by id (`/v1/agent/services`).
    pub fn retain(&self, answer: &mut Value) {
        match answer {
            Value::Array(items) => items.retain(|item| self.matches(item)),
            Value::Object(entries) => entries.retain(|_, item| self.matches(item)),
            _ => {}
        }
    }
}

#[derive(Debug)]
enum Expression {
    /// Any holds. Chains are kept flat, so that a long chain does not nest.
    Or(Vec<Expression>),
    /// All hold.
    And(Vec<Expression>),
    Not(Box<Expression>),
    Match(Match),
}

impl Expression {
    fn holds(&self, element: &Value) -> bool {
        match self {
            Expression::Or(terms) => terms.iter().any(|term| term.holds(element)),
            Expression::And(terms) => terms.iter().all(|term| term.holds(element)),
            Expression::Not(inner) => !inner.holds(element),
            Expression::Match(matcher) => {
                reach(&matcher.path, element, &matcher.test) != matcher.negated
            }
        }
    }
}

/// One step of a resolved selector.
#[derive(Debug)]
enum Step {
    /// A field of an object: missing reads as the field's empty value.
    Field(String),
    /// A key of a map: missing matches nothing.
    Key(String),
}

#[derive(Debug)]
struct Match {
    path: Vec<Step>,
    test: Test,
    /// The operator was the negated form: the answer is the opposite of `test`'s.
    negated: bool,
}

/// The positive form of an operator, resolved against the selected field's shape.
#[derive(Debug)]
enum Test {
    EqualText(String),
    EqualInteger(i128),
    EqualBoolean(bool),
    /// `in`/`contains` on a string: substring.
    Substring(String),
    /// `in`/`contains` on a map: the key is present.
    HasKey(String),
    /// `in`/`contains` on a list: an element equals it.
    HasElement(String),
    Empty,
    Matches(Regex),
}

impl Test {
    fn holds(&self, value: &Value) -> bool {
        match self {
            Test::EqualText(text) => text_of(value) == text,
            Test::EqualInteger(wanted) => integer_of(value) == Some(*wanted),
            Test::EqualBoolean(wanted) => value.as_bool().unwrap_or(false) == *wanted,
            Test::Substring(part) => text_of(value).contains(part.as_str()),
            Test::HasKey(key) => value.as_object().is_some_and(|map| map.contains_key(key)),
            Test::HasElement(wanted) => value
                .as_array()
                .is_some_and(|items| items.iter().any(|item| item.as_str() == Some(wanted))),
            Test::Empty => match value {
                Value::Null => true,
                Value::String(text) => text.is_empty(),
                Value::Array(items) => items.is_empty(),
                Value::Object(map) => map.is_empty(),
                Value::Bool(_) | Value::Number(_) => false,
            },
            Test::Matches(regex) => regex.is_match(text_of(value)),
        }
    }
}

fn text_of(value: &Value) -> &str {
    value.as_str().unwrap_or("")
}

fn integer_of(value: &Value) -> Option<i128> {
    match value {
        Value::Null => Some(0),
        _ => value
            .as_u64()
            .map(i128::from)
            .or_else(|| value.as_i64().map(i128::from)),
    }
}

/// Follows `path` from `value` and applies `test` at its end. A list met before the end of
/// the path matches when any of its elements does.
fn reach(path: &[Step], value: &Value, test: &Test) -> bool {
    let Some((step, rest)) = path.split_first() else {
        return test.holds(value);
    };
    if let Value::Array(items) = value {
        return items.iter().any(|item| reach(path, item, test));
    }
    match step {
        Step::Field(name) => reach(rest, value.get(name).unwrap_or(&Value::Null), test),
        Step::Key(key) => value.get(key).is_some_and(|found| reach(rest, found, test)),
    }
}

// ---- tokens ----

#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// A bare word: an identifier or a keyword.
    Word(String),
    /// A quoted string, unescaped.
    Text(String),
    /// A number as written.
    Number(String),
    Equal,
    NotEqual,
    Open,
    Close,
    Dot,
    OpenBracket,
    CloseBracket,
    End,
}

#[derive(Debug)]
struct Spanned {
    token: Token,
    start: usize,
    end: usize,
}

fn syntax_error(source: &str, offset: usize, expected: &[&str]) -> FilterError {
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |at| at + 1);
    FilterError::Syntax {
        line,
        column: source[line_start..offset].chars().count() + 1,
        offset,
        expected: expected.join(", "),
    }
}

fn tokenize(source: &str) -> Result<Vec<Spanned>, FilterError> {
    let bytes = source.as_bytes();
    let mut tokens = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let start = at;
        let token = match bytes[at] {
            b' ' | b'\t' | b'\r' | b'\n' => {
                at += 1;
                continue;
            }
            b'(' => single(&mut at, Token::Open),
            b')' => single(&mut at, Token::Close),
            b'.' => single(&mut at, Token::Dot),
            b'[' => single(&mut at, Token::OpenBracket),
            b']' => single(&mut at, Token::CloseBracket),
            b'=' | b'!' if bytes.get(at + 1) == Some(&b'=') => {
                at += 2;
                if bytes[start] == b'=' {
                    Token::Equal
                } else {
                    Token::NotEqual
                }
            }
            b'"' => Token::Text(quoted(source, &mut at)?),
            b'`' => {
                let Some(length) = source[at + 1..].find('`') else {
                    return Err(syntax_error(source, source.len(), &["\"`\""]));
                };
                at += length + 2;
                Token::Text(source[start + 1..at - 1].to_string())
            }
            b'-' | b'0'..=b'9' => Token::Number(number(source, &mut at)?),
            byte if byte.is_ascii_alphabetic() => {
                while at < bytes.len() && (bytes[at].is_ascii_alphanumeric() || bytes[at] == b'_') {
                    at += 1;
                }
                Token::Word(source[start..at].to_string())
            }
            _ => {
                return Err(syntax_error(
                    source,
                    start,
                    &["\"(\"", "\"not\"", "a selector", "a value"],
                ))
            }
        };
        tokens.push(Spanned {
            token,
            start,
            end: at,
        });
    }
    tokens.push(Spanned {
        token: Token::End,
        start: source.len(),
        end: source.len(),
    });
    Ok(tokens)
}

fn single(at: &mut usize, token: Token) -> Token {
    *at += 1;
    token
}

/// A double-quoted string with Go's escapes (`\"`, `\\`, `\n`, `\t`, `\r`, `\uXXXX`...).
fn quoted(source: &str, at: &mut usize) -> Result<String, FilterError> {
    let mut text = String::new();
    let mut chars = source[*at + 1..].char_indices();
    let base = *at + 1;
    while let Some((index, c)) = chars.next() {
        match c {
            '"' => {
                *at = base + index + 1;
                return Ok(text);
            }
            '\\' => {
                let Some((escape_at, escape)) = chars.next() else {
                    break;
                };
                let simple = match escape {
                    '"' => Some('"'),
                    '\\' => Some('\\'),
                    '/' => Some('/'),
                    'n' => Some('\n'),
                    't' => Some('\t'),
                    'r' => Some('\r'),
                    'a' => Some('\u{7}'),
                    'b' => Some('\u{8}'),
                    'f' => Some('\u{c}'),
                    'v' => Some('\u{b}'),
                    _ => None,
                };
                if let Some(c) = simple {
                    text.push(c);
                    continue;
                }
                let digits = match escape {
                    'u' => 4,
                    'U' => 8,
                    'x' => 2,
                    _ => 0,
                };
                let hex_start = base + escape_at + 1;
                let decoded = source
                    .get(hex_start..hex_start + digits)
                    .filter(|_| digits > 0)
                    .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                    .and_then(char::from_u32);
                let Some(c) = decoded else {
                    return Err(syntax_error(source, base + escape_at, &["a valid escape"]));
                };
                text.push(c);
                for _ in 0..digits {
                    chars.next();
                }
            }
            '\n' => return Err(syntax_error(source, base + index, &["\"\\\"\""])),
            c => text.push(c),
        }
    }
    Err(syntax_error(source, source.len(), &["\"\\\"\""]))
}

/// `-`? digits (`.` digits)?, which must end where a value may end.
fn number(source: &str, at: &mut usize) -> Result<String, FilterError> {
    let bytes = source.as_bytes();
    let start = *at;
    if bytes[*at] == b'-' {
        *at += 1;
    }
    let digits_start = *at;
    while *at < bytes.len() && bytes[*at].is_ascii_digit() {
        *at += 1;
    }
    if *at == digits_start {
        return Err(syntax_error(source, *at, &["[0-9]"]));
    }
    if *at + 1 < bytes.len() && bytes[*at] == b'.' && bytes[*at + 1].is_ascii_digit() {
        *at += 1;
        while *at < bytes.len() && bytes[*at].is_ascii_digit() {
            *at += 1;
        }
    }
    match bytes.get(*at) {
        None | Some(b' ' | b'\t' | b'\r' | b'\n' | b')') => Ok(source[start..*at].to_string()),
        Some(_) => Err(syntax_error(
            source,
            *at,
            &["[0-9]", "\".\"", "\")\"", "whitespace"],
        )),
    }
}

// ---- parser ----

/// The left side of a match, before the operator says whether it was a selector or a value.
enum Operand {
    /// A selector (also usable as a bare value, its text).
    Selector(Vec<String>, String),
    /// A quoted string or a number: only a value.
    Value(String),
}

struct Parser<'a> {
    source: &'a str,
    tokens: Vec<Spanned>,
    at: usize,
    shape: &'static Shape,
    /// How many `not`s and parentheses enclose the current point.
    depth: usize,
}

/// The deepest nesting of `not` and parentheses accepted.
const MAX_DEPTH: usize = 64;

const START: &[&str] = &["\"(\"", "\"not\"", "a selector", "a value"];
const AFTER_SELECTOR: &[&str] = &[
    "\"!=\"",
    "\".\"",
    "\"==\"",
    "\"[\"",
    "\"contains\"",
    "\"in\"",
    "\"is\"",
    "\"matches\"",
    "\"not\"",
];
const VALUE: &[&str] = &["a quoted string", "a number", "a bare value"];

impl Parser<'_> {
    fn peek(&self) -> &Token {
        &self.tokens[self.at.min(self.tokens.len() - 1)].token
    }

    fn peek_at(&self, ahead: usize) -> &Token {
        &self.tokens[(self.at + ahead).min(self.tokens.len() - 1)].token
    }

    fn is_word(&self, ahead: usize, word: &str) -> bool {
        matches!(self.peek_at(ahead), Token::Word(w) if w == word)
    }

    fn advance(&mut self) -> &Spanned {
        let index = self.at.min(self.tokens.len() - 1);
        self.at += 1;
        &self.tokens[index]
    }

    fn take_word(&mut self, word: &str) -> bool {
        let found = self.is_word(0, word);
        if found {
            self.at += 1;
        }
        found
    }

    fn expected(&self, what: &[&str]) -> FilterError {
        let offset = self.tokens[self.at.min(self.tokens.len() - 1)].start;
        syntax_error(self.source, offset, what)
    }

    fn or(&mut self) -> Result<Expression, FilterError> {
        self.chain("or", Self::and, Expression::Or)
    }

    fn and(&mut self) -> Result<Expression, FilterError> {
        self.chain("and", Self::not, Expression::And)
    }

    /// `term (word term)*`, one flat node when there are several terms.
    fn chain(
        &mut self,
        word: &str,
        term: fn(&mut Self) -> Result<Expression, FilterError>,
        join: fn(Vec<Expression>) -> Expression,
    ) -> Result<Expression, FilterError> {
        let mut terms = vec![term(self)?];
        while self.take_word(word) {
            terms.push(term(self)?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            join(terms)
        })
    }

    /// Parses what a `not` or a `(` opens one level deeper, refusing to go past
    /// [`MAX_DEPTH`]: the parser, the evaluation and the drop all recurse once per level.
    fn nested(
        &mut self,
        parse: impl FnOnce(&mut Self) -> Result<Expression, FilterError>,
    ) -> Result<Expression, FilterError> {
        if self.depth >= MAX_DEPTH {
            return Err(self.expected(&["an expression nested at most 64 deep"]));
        }
        self.depth += 1;
        let parsed = parse(self);
        self.depth -= 1;
        parsed
    }

    fn not(&mut self) -> Result<Expression, FilterError> {
        // `not` followed by an operator would be a field named `not`; no answer has one,
        // so `not` here always negates.
        if self.take_word("not") {
            let inner = self.nested(Self::not)?;
            return Ok(Expression::Not(Box::new(inner)));
        }
        if matches!(self.peek(), Token::Open) {
            self.at += 1;
            let inner = self.nested(Self::or)?;
            if !matches!(self.peek(), Token::Close) {
                return Err(self.expected(&["\")\"", "\"and\"", "\"or\""]));
            }
            self.at += 1;
            return Ok(inner);
        }
        self.matcher()
    }

    fn operand(&mut self, expected: &[&str]) -> Result<Operand, FilterError> {
        match self.peek().clone() {
            Token::Text(text) => {
                self.at += 1;
                Ok(Operand::Value(text))
            }
            Token::Number(number) => {
                self.at += 1;
                Ok(Operand::Value(number))
            }
            Token::Word(_) => self.selector(),
            _ => Err(self.expected(expected)),
        }
    }

    /// An identifier followed by `.identifier` or `["key"]` parts.
    fn selector(&mut self) -> Result<Operand, FilterError> {
        let first = self.advance();
        let start = first.start;
        let mut end = first.end;
        let Token::Word(word) = &first.token else {
            return Err(self.expected(&["a selector"]));
        };
        let mut parts = vec![word.clone()];
        loop {
            match self.peek() {
                Token::Dot => {
                    self.at += 1;
                    let next = self.advance();
                    let Token::Word(word) = &next.token else {
                        self.at -= 1;
                        return Err(self.expected(&["[a-zA-Z]"]));
                    };
                    parts.push(word.clone());
                    end = next.end;
                }
                Token::OpenBracket => {
                    self.at += 1;
                    let Token::Text(key) = self.peek().clone() else {
                        return Err(self.expected(&["a quoted string"]));
                    };
                    self.at += 1;
                    if !matches!(self.peek(), Token::CloseBracket) {
                        return Err(self.expected(&["\"]\""]));
                    }
                    end = self.advance().end;
                    parts.push(key);
                }
                _ => break,
            }
        }
        Ok(Operand::Selector(
            parts,
            self.source[start..end].to_string(),
        ))
    }

    fn matcher(&mut self) -> Result<Expression, FilterError> {
        let (parts, written) = match self.operand(START)? {
            Operand::Value(value) => return self.membership(value),
            Operand::Selector(parts, written) => (parts, written),
        };
        // A bare word followed by `in`/`not in` was a value, not a selector.
        if self.is_word(0, "in") || (self.is_word(0, "not") && self.is_word(1, "in")) {
            return self.membership(written);
        }
        let negated = self.take_word("not");
        let operator = match self.peek() {
            Token::Equal | Token::NotEqual if !negated => {
                let not_equal = matches!(self.peek(), Token::NotEqual);
                self.at += 1;
                let value = self.value()?;
                let selector = Selected::resolve(self.shape, &parts, &written)?;
                let operator = if not_equal { "!=" } else { "==" };
                return selector.equal(operator, &value, not_equal);
            }
            Token::Word(word) if word == "is" && !negated => {
                self.at += 1;
                let negated = self.negatable("empty")?;
                let selector = Selected::resolve(self.shape, &parts, &written)?;
                return selector.empty(negated);
            }
            Token::Word(word) if word == "contains" => "contains",
            Token::Word(word) if word == "matches" => "matches",
            _ => {
                return Err(self.expected(if negated {
                    &["\"contains\"", "\"in\"", "\"matches\""]
                } else {
                    AFTER_SELECTOR
                }))
            }
        };
        self.at += 1;
        let value = self.value()?;
        let selector = Selected::resolve(self.shape, &parts, &written)?;
        if operator == "contains" {
            selector.contains(&value, negated)
        } else {
            selector.regex(&value, negated)
        }
    }

    /// `[not] WORD`: whether `not` was there.
    fn negatable(&mut self, word: &str) -> Result<bool, FilterError> {
        let negated = self.take_word("not");
        if self.take_word(word) {
            return Ok(negated);
        }
        let wanted = format!("{word:?}");
        let expected = [wanted.as_str(), "\"not\""];
        Err(self.expected(if negated { &expected[..1] } else { &expected }))
    }

    /// `VALUE [not] in SELECTOR`, the value already read.
    fn membership(&mut self, value: String) -> Result<Expression, FilterError> {
        let negated = self.negatable("in")?;
        let Operand::Selector(parts, written) = self.operand(&["a selector"])? else {
            self.at -= 1;
            return Err(self.expected(&["a selector"]));
        };
        Selected::resolve(self.shape, &parts, &written)?.contains(&value, negated)
    }

    fn value(&mut self) -> Result<String, FilterError> {
        match self.operand(VALUE)? {
            Operand::Value(value) | Operand::Selector(_, value) => Ok(value),
        }
    }
}

// ---- checking against the shape ----

/// A selector resolved against the answer's shape.
struct Selected {
    path: Vec<Step>,
    shape: &'static Shape,
    written: String,
}

impl Selected {
    fn resolve(
        mut shape: &'static Shape,
        parts: &[String],
        written: &str,
    ) -> Result<Selected, FilterError> {
        let unknown = || FilterError::UnknownSelector(written.to_string());
        let mut path = Vec::with_capacity(parts.len());
        for part in parts {
            // Through a list, a selector reaches into its elements.
            while let Shape::List(element) = shape {
                shape = element;
            }
            match shape {
                Shape::Object(fields) => {
                    let (name, field) = fields
                        .iter()
                        .find(|(name, _)| name == part)
                        .ok_or_else(unknown)?;
                    path.push(Step::Field((*name).to_string()));
                    shape = field;
                }
                Shape::Map(value) => {
                    path.push(Step::Key(part.clone()));
                    shape = value;
                }
                _ => return Err(unknown()),
            }
        }
        Ok(Selected {
            path,
            shape,
            written: written.to_string(),
        })
    }

    fn done(self, test: Test, negated: bool) -> Result<Expression, FilterError> {
        Ok(Expression::Match(Match {
            path: self.path,
            test,
            negated,
        }))
    }

    fn refuse(&self, operator: &'static str) -> FilterError {
        FilterError::Operator {
            operator,
            selector: self.written.clone(),
        }
    }

    fn coerce_error(&self, value: &str, expected: &'static str) -> FilterError {
        FilterError::Coerce {
            value: value.to_string(),
            selector: self.written.clone(),
            expected,
        }
    }

    fn equal(
        self,
        operator: &'static str,
        value: &str,
        negated: bool,
    ) -> Result<Expression, FilterError> {
        let test = match self.shape {
            Shape::Text => Test::EqualText(value.to_string()),
            Shape::Integer => Test::EqualInteger(
                value
                    .parse()
                    .map_err(|_| self.coerce_error(value, "an integer"))?,
            ),
            Shape::Boolean => Test::EqualBoolean(
                parse_boolean(value).ok_or_else(|| self.coerce_error(value, "a boolean"))?,
            ),
            _ => return Err(self.refuse(operator)),
        };
        self.done(test, negated)
    }

    fn empty(self, negated: bool) -> Result<Expression, FilterError> {
        match self.shape {
            Shape::Map(_) | Shape::List(_) => self.done(Test::Empty, negated),
            _ => Err(self.refuse(if negated { "is not empty" } else { "is empty" })),
        }
    }

    fn contains(self, value: &str, negated: bool) -> Result<Expression, FilterError> {
        let test = match self.shape {
            Shape::Text => Test::Substring(value.to_string()),
            Shape::Map(_) => Test::HasKey(value.to_string()),
            Shape::List(Shape::Text) => Test::HasElement(value.to_string()),
            _ => return Err(self.refuse(if negated { "not in" } else { "in" })),
        };
        self.done(test, negated)
    }

    fn regex(self, pattern: &str, negated: bool) -> Result<Expression, FilterError> {
        if !matches!(self.shape, Shape::Text) {
            return Err(self.refuse(if negated { "not matches" } else { "matches" }));
        }
        let regex = Regex::new(pattern).map_err(|error| FilterError::Regex {
            pattern: pattern.to_string(),
            reason: error.to_string(),
        })?;
        self.done(Test::Matches(regex), negated)
    }
}

/// Go's `strconv.ParseBool`.
fn parse_boolean(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
