//! Allowlist rules (methods, a path pattern, a host) and the per-client list whose first
//! admitting rule wins.

use std::fmt;

use http::Method;

use super::feed::Feed;
use super::git;
use super::host::{HostPattern, RequestHost};
use super::path::{Segments, compare_lowercase};
use super::pattern::{Part, Pattern, PatternError};

/// Methods with a bit of their own; anything else is compared by name.
/// The methods the proxy forwards, in their canonical spelling; anything else is refused before
/// any rule is asked (see `proxy::target`).
pub const FORWARDED_METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// Which methods a rule admits: a bit per forwarded method. Rules are written in any case
/// (`get`); requests are judged by the canonical method only, so `get` on the wire cannot be
/// mistaken for `GET`.
#[derive(Debug, Clone)]
pub struct Methods {
    any: bool,
    known: u8,
}

/// A request's method, classified once per request rather than once per rule: its bit, or 0 for
/// a method no rule can admit.
pub struct RequestMethod {
    bit: u8,
}

impl RequestMethod {
    pub fn new(method: &Method) -> Self {
        let bit = FORWARDED_METHODS
            .iter()
            .position(|forwarded| forwarded == method)
            .map_or(0, |i| 1u8 << i);
        Self { bit }
    }
}

impl Methods {
    pub fn compile(names: &[String]) -> Result<Methods, PatternError> {
        if names.is_empty() {
            return Err(PatternError::new(
                "methods must name at least one method, or \"*\"".into(),
            ));
        }
        let mut methods = Methods {
            any: names.iter().any(|m| m == "*"),
            known: 0,
        };
        if methods.any {
            return Ok(methods);
        }
        for name in names {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(PatternError::new(format!("`{name}` is not an HTTP method")));
            }
            let upper = name.to_ascii_uppercase();
            match FORWARDED_METHODS.iter().position(|m| m.as_str() == upper) {
                Some(i) => methods.known |= 1 << i,
                None => {
                    return Err(PatternError::new(format!(
                        "{upper} is never forwarded: the proxy forwards GET, HEAD, POST, PUT, \
                         PATCH, DELETE and OPTIONS"
                    )));
                }
            }
        }
        Ok(methods)
    }

    fn admits(&self, method: &RequestMethod) -> bool {
        method.bit != 0 && (self.any || self.known & method.bit != 0)
    }
}

/// One allowlist entry: methods and a path pattern, and the text it was written as (how audit
/// lines name it).
#[derive(Debug, Clone)]
pub struct Rule {
    methods: Methods,
    pattern: Pattern,
    /// `None`: the default upstream.
    host: Option<HostPattern>,
    /// A feed rule: judged by the feed, not by `pattern` (which only files it under its
    /// organization in the index) or `host`.
    feed: Option<Feed>,
    text: Box<str>,
}

impl Rule {
    /// A rule for the default upstream.
    pub fn compile(methods: &[String], path: &str) -> Result<Rule, PatternError> {
        Ok(Rule {
            methods: Methods::compile(methods)?,
            pattern: Pattern::compile(path)?,
            host: None,
            feed: None,
            text: format!("{} {path}", methods.join(",")).into(),
        })
    }

    /// A rule for one Azure Artifacts feed (see [`Feed`]).
    pub fn for_feed(methods: &[String], feed: Feed) -> Result<Rule, PatternError> {
        Ok(Rule {
            methods: Methods::compile(methods)?,
            pattern: Pattern::compile(&format!("/{}/**", feed.org()))?,
            host: None,
            text: format!("{} feed {feed}", methods.join(",")).into(),
            feed: Some(feed),
        })
    }

    pub fn feed(&self) -> Option<&Feed> {
        self.feed.as_ref()
    }

    /// The same rule for the hosts `host` matches instead of the default upstream.
    pub fn on_host(self, host: HostPattern) -> Rule {
        let methods_end = self.text.find(' ').unwrap_or(self.text.len());
        let text = format!(
            "{} {host}{}",
            &self.text[..methods_end],
            &self.text[methods_end..].trim_start()
        );
        Rule {
            host: Some(host),
            text: text.into(),
            ..self
        }
    }

    fn admits_host(&self, host: &RequestHost<'_>) -> bool {
        match &self.host {
            None => host.is_default,
            Some(pattern) => pattern.matches(host.name),
        }
    }
}

/// `METHODS [host]path`, as configured.
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
        self.find_on(RequestHost::DEFAULT, method, segments)
    }

    /// The index of the first rule that admits the request to `host`.
    pub fn find_on(
        &self,
        host: RequestHost<'_>,
        method: &Method,
        segments: &Segments<'_>,
    ) -> Option<usize> {
        let method = RequestMethod::new(method);
        let admits = |index: &usize| {
            let rule = &self.rules[*index];
            rule.methods.admits(&method)
                && match &rule.feed {
                    Some(feed) => feed.admits(&host, segments),
                    None => rule.admits_host(&host) && rule.pattern.matches(segments),
                }
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
        self.judge_on(RequestHost::DEFAULT, method, path, query)
    }

    /// [`Allowlist::judge`] for a request to `host`.
    pub fn judge_on(
        &self,
        host: RequestHost<'_>,
        method: &Method,
        path: &Segments<'_>,
        query: Option<&str>,
    ) -> Option<usize> {
        match git::push_preflight(path, method, query) {
            Some(push) => self.find_on(host, &Method::POST, &push),
            None => self.find_on(host, method, path),
        }
    }
}
