//! The regular expressions of `LIKE` and `UNLIKE` constraints.
//!
//! Marathon matches a whole attribute value against a Java regex. Attribute values are short and
//! patterns are simple, so rather than pulling in a regex engine this module supports the subset
//! that constraints use in practice, with full-match semantics:
//!
//! - literals, `.` (any character), escaped metacharacters (`\.`, `\|`, `\\`, ...), `\t`, `\n`;
//! - the classes `\d`, `\w`, `\s` and their negations `\D`, `\W`, `\S`;
//! - bracket classes `[a-z0-9_]`, negated `[^...]`, with `\d`, `\w`, `\s` inside;
//! - the quantifiers `*`, `+`, `?` (one per atom);
//! - alternation `|`, groups `(...)` and `(?:...)`;
//! - `^` and `$`, which are redundant under full matching but common in written patterns.
//!
//! Counted repetition (`{n,m}`), backreferences, lookaround and flags are rejected with an error
//! rather than silently misread. Matching compiles the pattern to a Thompson NFA and simulates it
//! breadth-first, so time is linear in the text length for any pattern.

use std::fmt;

/// Patterns longer than this are refused; constraint patterns are a few dozen characters.
const MAX_PATTERN_CHARS: usize = 1024;

/// A compiled pattern that answers "does this whole string match?".
#[derive(Debug, Clone)]
pub struct Pattern {
    program: Vec<Instruction>,
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError {
    /// Character offset where the problem was found.
    pub position: usize,
    /// What is wrong there.
    pub message: String,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at character {}", self.message, self.position)
    }
}

impl std::error::Error for PatternError {}

impl Pattern {
    /// Compiles `source`, or explains why it is outside the supported subset.
    pub fn new(source: &str) -> Result<Self, PatternError> {
        let chars: Vec<char> = source.chars().collect();
        if chars.len() > MAX_PATTERN_CHARS {
            return Err(PatternError {
                position: MAX_PATTERN_CHARS,
                message: format!("pattern is longer than {MAX_PATTERN_CHARS} characters"),
            });
        }
        let mut parser = Parser {
            chars: &chars,
            position: 0,
        };
        let tree = parser.alternation()?;
        if let Some(&c) = parser.chars.get(parser.position) {
            // The only way the top-level alternation stops early is an unmatched `)`.
            return Err(parser.error(format!("unmatched `{c}`")));
        }
        let mut program = Vec::new();
        compile(&tree, &mut program);
        program.push(Instruction::Match);
        Ok(Self { program })
    }

    /// `true` when the whole of `text` matches the pattern (not just a part of it).
    pub fn is_full_match(&self, text: &str) -> bool {
        let length = self.program.len();
        let mut current = ThreadList::new(length);
        let mut next = ThreadList::new(length);
        let mut chars = text.chars().peekable();
        let mut at_start = true;
        self.add_thread(&mut current, 0, at_start, chars.peek().is_none());
        while let Some(c) = chars.next() {
            if current.threads.is_empty() {
                return false;
            }
            at_start = false;
            let at_end = chars.peek().is_none();
            for index in 0..current.threads.len() {
                let pc = current.threads[index];
                let advances = match &self.program[pc] {
                    Instruction::Char(expected) => *expected == c,
                    Instruction::Any => true,
                    Instruction::Class(class) => class.contains(c),
                    _ => false,
                };
                if advances {
                    self.add_thread(&mut next, pc + 1, at_start, at_end);
                }
            }
            std::mem::swap(&mut current, &mut next);
            next.clear();
        }
        current
            .threads
            .iter()
            .any(|&pc| matches!(self.program[pc], Instruction::Match))
    }

    /// Follows jumps, splits and assertions from `pc`, recording the states that consume input.
    fn add_thread(&self, list: &mut ThreadList, pc: usize, at_start: bool, at_end: bool) {
        let mut stack = vec![pc];
        while let Some(pc) = stack.pop() {
            if !list.mark(pc) {
                continue;
            }
            match &self.program[pc] {
                Instruction::Jump(target) => stack.push(*target),
                Instruction::Split(first, second) => {
                    stack.push(*second);
                    stack.push(*first);
                }
                Instruction::AssertStart => {
                    if at_start {
                        stack.push(pc + 1);
                    }
                }
                Instruction::AssertEnd => {
                    if at_end {
                        stack.push(pc + 1);
                    }
                }
                Instruction::Char(_)
                | Instruction::Any
                | Instruction::Class(_)
                | Instruction::Match => list.threads.push(pc),
            }
        }
    }
}

/// The set of NFA states alive at one position of the text.
struct ThreadList {
    threads: Vec<usize>,
    seen: Vec<bool>,
}

impl ThreadList {
    fn new(length: usize) -> Self {
        Self {
            threads: Vec::with_capacity(length),
            seen: vec![false; length],
        }
    }

    /// Marks `pc` as visited; `false` if it already was.
    fn mark(&mut self, pc: usize) -> bool {
        !std::mem::replace(&mut self.seen[pc], true)
    }

    fn clear(&mut self) {
        self.threads.clear();
        self.seen.iter_mut().for_each(|seen| *seen = false);
    }
}

#[derive(Debug, Clone)]
enum Instruction {
    Char(char),
    Any,
    Class(CharClass),
    Split(usize, usize),
    Jump(usize),
    AssertStart,
    AssertEnd,
    Match,
}

/// A set of characters given as inclusive ranges, possibly negated.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CharClass {
    negated: bool,
    ranges: Vec<(char, char)>,
}

impl CharClass {
    fn contains(&self, c: char) -> bool {
        let inside = self.ranges.iter().any(|&(low, high)| low <= c && c <= high);
        inside != self.negated
    }

    /// The ranges of `\d`, `\w` or `\s`, if `letter` names one of them (lowercase).
    fn shorthand_ranges(letter: char) -> Option<&'static [(char, char)]> {
        match letter {
            'd' => Some(&[('0', '9')]),
            'w' => Some(&[('0', '9'), ('A', 'Z'), ('_', '_'), ('a', 'z')]),
            's' => Some(&[('\t', '\r'), (' ', ' ')]),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tree {
    Empty,
    Char(char),
    Any,
    Class(CharClass),
    Start,
    End,
    Concat(Vec<Tree>),
    Alternation(Vec<Tree>),
    Repeat(Box<Tree>, Repetition),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repetition {
    ZeroOrMore,
    OneOrMore,
    ZeroOrOne,
}

struct Parser<'a> {
    chars: &'a [char],
    position: usize,
}

impl Parser<'_> {
    fn error(&self, message: impl Into<String>) -> PatternError {
        PatternError {
            position: self.position,
            message: message.into(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.position).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.position += 1;
        }
        c
    }

    fn alternation(&mut self) -> Result<Tree, PatternError> {
        let mut branches = vec![self.concatenation()?];
        while self.peek() == Some('|') {
            self.position += 1;
            branches.push(self.concatenation()?);
        }
        Ok(if branches.len() == 1 {
            branches.remove(0)
        } else {
            Tree::Alternation(branches)
        })
    }

    fn concatenation(&mut self) -> Result<Tree, PatternError> {
        let mut items = Vec::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            let atom = self.atom()?;
            items.push(self.quantified(atom)?);
        }
        Ok(match items.len() {
            0 => Tree::Empty,
            1 => items.remove(0),
            _ => Tree::Concat(items),
        })
    }

    fn quantified(&mut self, atom: Tree) -> Result<Tree, PatternError> {
        let repetition = match self.peek() {
            Some('*') => Repetition::ZeroOrMore,
            Some('+') => Repetition::OneOrMore,
            Some('?') => Repetition::ZeroOrOne,
            _ => return Ok(atom),
        };
        if matches!(atom, Tree::Start | Tree::End) {
            return Err(self.error("quantifier after an anchor"));
        }
        self.position += 1;
        if matches!(self.peek(), Some('*' | '+' | '?' | '{')) {
            return Err(self.error("lazy, possessive or stacked quantifiers are not supported"));
        }
        Ok(Tree::Repeat(Box::new(atom), repetition))
    }

    fn atom(&mut self) -> Result<Tree, PatternError> {
        let start = self.position;
        let Some(c) = self.next() else {
            return Err(self.error("unexpected end of pattern"));
        };
        match c {
            '(' => {
                if self.peek() == Some('?') {
                    if self.chars.get(self.position + 1) == Some(&':') {
                        self.position += 2;
                    } else {
                        return Err(self.error("group flags and lookaround are not supported"));
                    }
                }
                let inner = self.alternation()?;
                if self.next() != Some(')') {
                    return Err(PatternError {
                        position: start,
                        message: "unclosed `(`".into(),
                    });
                }
                Ok(inner)
            }
            '[' => self.bracket_class(start).map(Tree::Class),
            '.' => Ok(Tree::Any),
            '^' => Ok(Tree::Start),
            '$' => Ok(Tree::End),
            '\\' => self.escape(),
            '*' | '+' | '?' => Err(PatternError {
                position: start,
                message: format!("`{c}` has nothing to repeat"),
            }),
            '{' | '}' => Err(PatternError {
                position: start,
                message:
                    "counted repetition `{n,m}` is not supported; escape the brace for a literal"
                        .into(),
            }),
            ']' => Err(PatternError {
                position: start,
                message: "unmatched `]`".into(),
            }),
            other => Ok(Tree::Char(other)),
        }
    }

    /// The character after a backslash, outside a bracket class.
    fn escape(&mut self) -> Result<Tree, PatternError> {
        let Some(c) = self.next() else {
            return Err(self.error("pattern ends with a lone `\\`"));
        };
        if let Some(ranges) = CharClass::shorthand_ranges(c.to_ascii_lowercase()) {
            return Ok(Tree::Class(CharClass {
                negated: c.is_ascii_uppercase(),
                ranges: ranges.to_vec(),
            }));
        }
        self.escaped_literal(c).map(Tree::Char)
    }

    /// A backslash-escaped character that stands for itself (or for a control character).
    fn escaped_literal(&self, c: char) -> Result<char, PatternError> {
        match c {
            't' => Ok('\t'),
            'n' => Ok('\n'),
            'r' => Ok('\r'),
            c if c.is_ascii_alphanumeric() => Err(PatternError {
                position: self.position.saturating_sub(2),
                message: format!("unsupported escape `\\{c}`"),
            }),
            c => Ok(c),
        }
    }

    /// A `[...]` class; the opening bracket at `start` is already consumed.
    fn bracket_class(&mut self, start: usize) -> Result<CharClass, PatternError> {
        let unclosed = || PatternError {
            position: start,
            message: "unclosed `[`".into(),
        };
        let negated = self.peek() == Some('^');
        if negated {
            self.position += 1;
        }
        let mut ranges = Vec::new();
        let mut first = true;
        loop {
            let c = self.next().ok_or_else(unclosed)?;
            if c == ']' && !first {
                break;
            }
            first = false;
            let low = if c == '\\' {
                let escaped = self.next().ok_or_else(unclosed)?;
                if let Some(shorthand) = CharClass::shorthand_ranges(escaped) {
                    ranges.extend_from_slice(shorthand);
                    continue;
                }
                if CharClass::shorthand_ranges(escaped.to_ascii_lowercase()).is_some() {
                    return Err(self.error(format!(
                        "`\\{escaped}` inside a bracket class is not supported"
                    )));
                }
                self.escaped_literal(escaped)?
            } else {
                c
            };
            // `a-z` is a range unless the dash is the last character before `]`.
            let is_range = self.peek() == Some('-')
                && self
                    .chars
                    .get(self.position + 1)
                    .is_some_and(|&after| after != ']');
            if !is_range {
                ranges.push((low, low));
                continue;
            }
            self.position += 1;
            let mut high = self.next().ok_or_else(unclosed)?;
            if high == '\\' {
                let escaped = self.next().ok_or_else(unclosed)?;
                high = self.escaped_literal(escaped)?;
            }
            if high < low {
                return Err(self.error(format!("range `{low}-{high}` is reversed")));
            }
            ranges.push((low, high));
        }
        Ok(CharClass { negated, ranges })
    }
}

/// Appends the instructions for `tree` to `program` (Thompson's construction).
fn compile(tree: &Tree, program: &mut Vec<Instruction>) {
    match tree {
        Tree::Empty => {}
        Tree::Char(c) => program.push(Instruction::Char(*c)),
        Tree::Any => program.push(Instruction::Any),
        Tree::Class(class) => program.push(Instruction::Class(class.clone())),
        Tree::Start => program.push(Instruction::AssertStart),
        Tree::End => program.push(Instruction::AssertEnd),
        Tree::Concat(items) => items.iter().for_each(|item| compile(item, program)),
        Tree::Alternation(branches) => {
            let mut jumps_to_end = Vec::new();
            for (index, branch) in branches.iter().enumerate() {
                let is_last = index + 1 == branches.len();
                let split = program.len();
                if !is_last {
                    // Patched below once the next branch's address is known.
                    program.push(Instruction::Split(split + 1, 0));
                }
                compile(branch, program);
                if !is_last {
                    jumps_to_end.push(program.len());
                    program.push(Instruction::Jump(0));
                    let next_branch = program.len();
                    program[split] = Instruction::Split(split + 1, next_branch);
                }
            }
            let end = program.len();
            for jump in jumps_to_end {
                program[jump] = Instruction::Jump(end);
            }
        }
        Tree::Repeat(inner, Repetition::ZeroOrMore) => {
            let split = program.len();
            program.push(Instruction::Split(split + 1, 0));
            compile(inner, program);
            program.push(Instruction::Jump(split));
            let end = program.len();
            program[split] = Instruction::Split(split + 1, end);
        }
        Tree::Repeat(inner, Repetition::OneOrMore) => {
            let body = program.len();
            compile(inner, program);
            let split = program.len();
            program.push(Instruction::Split(body, split + 1));
        }
        Tree::Repeat(inner, Repetition::ZeroOrOne) => {
            let split = program.len();
            program.push(Instruction::Split(split + 1, 0));
            compile(inner, program);
            let end = program.len();
            program[split] = Instruction::Split(split + 1, end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, text: &str) -> bool {
        Pattern::new(pattern).unwrap().is_full_match(text)
    }

    #[test]
    fn literals_match_only_the_whole_text() {
        assert!(matches("rack-1", "rack-1"));
        assert!(!matches("rack-1", "rack-10"));
        assert!(!matches("rack-1", "xrack-1"));
        assert!(!matches("rack", ""));
        assert!(matches("", ""));
        assert!(!matches("", "a"));
    }

    #[test]
    fn dot_matches_any_single_character() {
        assert!(matches("r.ck", "rack"));
        assert!(matches("r.ck", "r-ck"));
        assert!(!matches("r.ck", "rck"));
        assert!(matches("...", "äöü"));
    }

    #[test]
    fn quantifiers_repeat_the_preceding_atom() {
        assert!(matches("ab*c", "ac"));
        assert!(matches("ab*c", "abbbc"));
        assert!(!matches("ab+c", "ac"));
        assert!(matches("ab+c", "abc"));
        assert!(matches("ab?c", "ac"));
        assert!(matches("ab?c", "abc"));
        assert!(!matches("ab?c", "abbc"));
        assert!(matches(".*", ""));
        assert!(matches(".*", "anything at all"));
    }

    #[test]
    fn bracket_classes_cover_ranges_negation_and_literal_dashes() {
        assert!(matches("rack-[1-3]", "rack-2"));
        assert!(!matches("rack-[1-3]", "rack-4"));
        assert!(matches("[a-z0-9_]+", "us_east1"));
        assert!(!matches("[a-z]+", "US"));
        assert!(matches("[^0-9]+", "abc"));
        assert!(!matches("[^0-9]+", "ab1"));
        assert!(matches("[a-]", "-"));
        assert!(matches("[]a]", "]"));
        assert!(matches(r"[\d.]+", "10.0.3"));
        assert!(matches(r"[\]]", "]"));
    }

    #[test]
    fn alternation_and_groups() {
        assert!(matches("us-east|us-west", "us-west"));
        assert!(!matches("us-east|us-west", "us-north"));
        assert!(matches("us-(east|west)-[12]", "us-east-2"));
        assert!(matches("(ab)+", "ababab"));
        assert!(!matches("(ab)+", "aba"));
        assert!(matches("(?:a|b)*c", "abbac"));
        assert!(matches("a|", ""));
        assert!(matches("(a|b|c)", "c"));
        assert!(matches("((a*)*)*b", "aaab"));
    }

    #[test]
    fn escapes_and_shorthand_classes() {
        assert!(matches(r"10\.0\.\d+\.\d+", "10.0.12.7"));
        assert!(!matches(r"10\.0", "10x0"));
        assert!(matches(r"\w+", "node_7"));
        assert!(!matches(r"\w+", "node-7"));
        assert!(matches(r"\D+", "abc"));
        assert!(matches(r"a\sb", "a b"));
        assert!(matches(r"a\|b", "a|b"));
        assert!(matches(r"\\", "\\"));
    }

    #[test]
    fn anchors_are_accepted_and_hold_only_at_the_ends() {
        assert!(matches("^rack-1$", "rack-1"));
        assert!(matches("^(a|b)$", "b"));
        assert!(!matches("a^b", "ab"));
        assert!(!matches("a$b", "ab"));
    }

    #[test]
    fn unsupported_or_malformed_patterns_are_rejected() {
        for bad in [
            "(ab", "ab)", "[ab", "*a", "a**", "a+?", "a{2}", r"\", r"\q", "[z-a]", "(?=a)", "^*",
            r"[\D]",
        ] {
            assert!(Pattern::new(bad).is_err(), "{bad:?} should be rejected");
        }
        let error = Pattern::new("(ab").unwrap_err();
        assert_eq!(error.to_string(), "unclosed `(` at character 0");
    }

    #[test]
    fn matching_time_stays_linear_on_pathological_patterns() {
        let pattern = Pattern::new("(a*)*(a*)*(a*)*b").unwrap();
        let text = "a".repeat(5_000);
        assert!(!pattern.is_full_match(&text));
    }
}
