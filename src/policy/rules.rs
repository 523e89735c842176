//! Allowlist rules: segment-glob patterns compiled once, methods, and the per-client list whose
//! first admitting rule wins. Matching compares decoded segments case-insensitively and
//! allocates nothing.

use std::fmt;

use http::Method;

use super::git;
use super::path::{Decoded, Segments, check_segment, compare_lowercase, segment_eq};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(Box<str>),
    /// `*`: exactly one segment.
    One,
    /// `**`: zero or more segments.
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError(String);

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A compiled path pattern such as `/contoso/*/_git/web/**`.
#[derive(Debug, Clone)]
pub struct Pattern {
    parts: Box<[Part]>,
}

impl Pattern {
    pub fn compile(text: &str) -> Result<Pattern, PatternError> {
        let error = |why: &str| PatternError(format!("`{text}`: {why}"));
        let rest = text
            .strip_prefix('/')
            .ok_or_else(|| error("must start with '/'"))?;
        let mut parts = Vec::new();
        if !rest.is_empty() {
            for segment in rest.strip_suffix('/').unwrap_or(rest).split('/') {
                parts.push(match segment {
                    "" => return Err(error("has an empty segment ('//')")),
                    "*" => Part::One,
                    "**" => Part::Any,
                    s if s.contains('*') => {
                        return Err(error("'*' and '**' must be whole segments"));
                    }
                    s => {
                        check_segment(s).map_err(|e| error(e.message()))?;
                        Part::Literal(
                            String::from_utf8_lossy(&Decoded::new(s).collect::<Vec<_>>()).into(),
                        )
                    }
                });
            }
        }
        for pair in parts.windows(2) {
            if pair[0] == Part::Any && pair[1] != Part::Any && !matches!(pair[1], Part::Literal(_))
            {
                return Err(error(
                    "'**' may only end the pattern or stand between literal segments",
                ));
            }
            if pair[0] == Part::Any && pair[1] == Part::Any {
                return Err(error("'**/**' is redundant"));
            }
            if pair[1] == Part::Any && !matches!(pair[0], Part::Literal(_)) {
                return Err(error(
                    "'**' may only end the pattern or stand between literal segments",
                ));
            }
        }
        Ok(Pattern {
            parts: parts.into_boxed_slice(),
        })
    }

    pub fn matches(&self, segments: &Segments<'_>) -> bool {
        match_parts(&self.parts, segments.as_slice(), segments.escaped)
    }
}

/// `escaped` bit i: `segments[i]` holds escapes.
fn match_parts(parts: &[Part], segments: &[&str], escaped: u32) -> bool {
    match parts.split_first() {
        None => segments.is_empty(),
        Some((Part::Literal(literal), rest)) => {
            segments.split_first().is_some_and(|(first, tail)| {
                segment_eq(first, escaped & 1 != 0, literal)
                    && match_parts(rest, tail, escaped >> 1)
            })
        }
        Some((Part::One, rest)) => segments
            .split_first()
            .is_some_and(|(_, tail)| match_parts(rest, tail, escaped >> 1)),
        Some((Part::Any, [])) => true,
        // `**` is followed by a literal: try each place that literal could start.
        Some((Part::Any, rest)) => (0..=segments.len()).any(|skip| {
            let escaped = u32::try_from(skip)
                .ok()
                .and_then(|skip| escaped.checked_shr(skip))
                .unwrap_or(0);
            match_parts(rest, &segments[skip..], escaped)
        }),
    }
}

/// Methods with a bit of their own; anything else is compared by name.
const KNOWN_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Which methods a rule admits: a bit set of the common methods, plus extension methods by name.
/// Names compare ignoring case, so `get` cannot slip past a rule written for `GET`.
#[derive(Debug, Clone)]
pub struct Methods {
    any: bool,
    known: u8,
    others: Box<[Box<str>]>,
}

/// A request's method, classified once per request rather than once per rule.
pub struct RequestMethod<'a> {
    bit: u8,
    name: &'a str,
}

impl<'a> RequestMethod<'a> {
    pub fn new(method: &'a Method) -> Self {
        let name = method.as_str();
        let bit = KNOWN_METHODS
            .iter()
            .position(|known| known.eq_ignore_ascii_case(name))
            .map_or(0, |i| 1u8 << i);
        Self { bit, name }
    }
}

impl Methods {
    pub fn compile(names: &[String]) -> Result<Methods, PatternError> {
        if names.is_empty() {
            return Err(PatternError(
                "methods must name at least one method, or \"*\"".into(),
            ));
        }
        let mut methods = Methods {
            any: names.iter().any(|m| m == "*"),
            known: 0,
            others: Box::default(),
        };
        if methods.any {
            return Ok(methods);
        }
        let mut others = Vec::new();
        for name in names {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(PatternError(format!("`{name}` is not an HTTP method")));
            }
            let upper = name.to_ascii_uppercase();
            if upper == "CONNECT" || upper == "TRACE" {
                return Err(PatternError(format!("{upper} is never forwarded")));
            }
            match KNOWN_METHODS.iter().position(|known| *known == upper) {
                Some(i) => methods.known |= 1 << i,
                None => others.push(upper.into_boxed_str()),
            }
        }
        methods.others = others.into_boxed_slice();
        Ok(methods)
    }

    fn admits(&self, method: &RequestMethod<'_>) -> bool {
        self.any
            || self.known & method.bit != 0
            || (method.bit == 0
                && self
                    .others
                    .iter()
                    .any(|name| name.eq_ignore_ascii_case(method.name)))
    }
}

/// One allowlist entry: methods and a path pattern, and the text it was written as (how audit
/// lines name it).
#[derive(Debug, Clone)]
pub struct Rule {
    methods: Methods,
    pattern: Pattern,
    text: Box<str>,
}

impl Rule {
    pub fn compile(methods: &[String], path: &str) -> Result<Rule, PatternError> {
        Ok(Rule {
            methods: Methods::compile(methods)?,
            pattern: Pattern::compile(path)?,
            text: format!("{} {path}", methods.join(",")).into(),
        })
    }
}

/// `METHODS path`, as configured.
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A lower-cased first literal and the rules that start with it, in rule order.
type Anchor = (Box<str>, Box<[usize]>);

/// A client's rules; the first that admits a request wins.
///
/// Rules are indexed by their first segment when it is a literal (an organization name, mostly),
/// so a request is tried only against the rules that can match it: a binary search and a few
/// comparisons instead of a pass over every rule.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    rules: Box<[Rule]>,
    /// Sorted by the lower-cased first literal.
    anchored: Box<[Anchor]>,
    /// Rules starting with `*` or `**`, or matching only `/`, in rule order.
    unanchored: Box<[usize]>,
}

impl Allowlist {
    pub fn new(rules: Vec<Rule>) -> Self {
        let mut anchored: Vec<(Box<str>, Vec<usize>)> = Vec::new();
        let mut unanchored = Vec::new();
        for (index, rule) in rules.iter().enumerate() {
            match rule.pattern.parts.first() {
                Some(Part::Literal(first)) => {
                    let key = first.to_ascii_lowercase();
                    match anchored.iter_mut().find(|(k, _)| **k == *key) {
                        Some((_, indices)) => indices.push(index),
                        None => anchored.push((key.into_boxed_str(), vec![index])),
                    }
                }
                _ => unanchored.push(index),
            }
        }
        anchored.sort_by(|a, b| a.0.cmp(&b.0));
        Self {
            rules: rules.into_boxed_slice(),
            anchored: anchored
                .into_iter()
                .map(|(key, indices)| (key, indices.into_boxed_slice()))
                .collect(),
            unanchored: unanchored.into_boxed_slice(),
        }
    }

    /// The index of the first rule that admits the request.
    pub fn find(&self, method: &Method, segments: &Segments<'_>) -> Option<usize> {
        let method = RequestMethod::new(method);
        let admits = |index: &usize| {
            let rule = &self.rules[*index];
            rule.methods.admits(&method) && rule.pattern.matches(segments)
        };
        let anchored: &[usize] = match segments.as_slice().first() {
            // Escaped first segments are rare: compare them the slow way, against every rule.
            Some(_) if segments.escaped & 1 != 0 => return (0..self.rules.len()).find(admits),
            Some(first) => self
                .anchored
                .binary_search_by(|(key, _)| compare_lowercase(key, first))
                .map_or(&[], |at| &self.anchored[at].1),
            None => &[],
        };
        // Both lists are in rule order; walk them merged so the first matching rule wins.
        let (mut a, mut u) = (
            anchored.iter().peekable(),
            self.unanchored.iter().peekable(),
        );
        loop {
            let next = match (a.peek(), u.peek()) {
                (Some(x), Some(y)) if x < y => a.next(),
                (Some(_), Some(_)) | (None, Some(_)) => u.next(),
                (Some(_), None) => a.next(),
                (None, None) => return None,
            };
            if let Some(index) = next.filter(|index| admits(index)) {
                return Some(*index);
            }
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Judges a request: a git push preflight as the push it announces, anything else as itself.
    pub fn judge(
        &self,
        method: &Method,
        path: &Segments<'_>,
        query: Option<&str>,
    ) -> Option<usize> {
        match git::push_preflight(path, method, query) {
            Some(push) => self.find(&Method::POST, &push),
            None => self.find(method, path),
        }
    }
}
