//! Path safety and the per-client allowlist.
//!
//! A path is checked, never rewritten: anything a server might resolve differently from us (dot
//! segments in any spelling, encoded slashes or backslashes, empty segments, control characters,
//! broken or double percent-encoding, non-UTF-8) is refused, so the path Azure DevOps receives is
//! exactly the one that was matched. Patterns are segment globs compiled once; matching compares
//! decoded segments case-insensitively and allocates nothing.

use std::fmt;

use http::Method;

/// Deeper paths are refused; Azure DevOps URLs have a dozen segments at most.
pub const MAX_SEGMENTS: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    EmptySegment,
    DotSegment,
    EncodedSeparator,
    Backslash,
    ControlCharacter,
    BadPercentEncoding,
    DoubleEncoding,
    NotUtf8,
    TooDeep,
}

impl PathError {
    pub fn message(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "The path must start with '/'",
            PathError::EmptySegment => "The path has an empty segment ('//')",
            PathError::DotSegment => "The path has a '.' or '..' segment (in some spelling)",
            PathError::EncodedSeparator => "The path has an encoded slash or backslash (%2F, %5C)",
            PathError::Backslash => "The path has a backslash",
            PathError::ControlCharacter => "The path has a control character",
            PathError::BadPercentEncoding => "The path has an invalid percent-encoding",
            PathError::DoubleEncoding => {
                "The path has a double percent-encoding (%25 followed by hex digits)"
            }
            PathError::NotUtf8 => "The path does not decode to UTF-8",
            PathError::TooDeep => "The path has too many segments",
        }
    }
}

/// The segments of a checked path, as raw (still percent-encoded) slices. A trailing slash is
/// not a segment: `/a/b/` and `/a/b` name the same thing for matching.
pub struct Segments<'a> {
    items: [&'a str; MAX_SEGMENTS],
    len: usize,
    /// Bit i set: segment i holds percent-escapes (only those need decoding to compare).
    escaped: u32,
}

impl<'a> Segments<'a> {
    /// Checks `path` and splits it. Allocates only to validate UTF-8 of percent-encoded segments.
    pub fn parse(path: &'a str) -> Result<Self, PathError> {
        let rest = path.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
        let mut segments = Segments {
            items: [""; MAX_SEGMENTS],
            len: 0,
            escaped: 0,
        };
        if rest.is_empty() {
            return Ok(segments);
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let bytes = rest.as_bytes();
        let mut start = 0;
        loop {
            let end = bytes[start..]
                .iter()
                .position(|&b| b == b'/')
                .map_or(bytes.len(), |at| start + at);
            let raw = &rest[start..end];
            let escaped = check_segment(raw)?;
            if segments.len == MAX_SEGMENTS {
                return Err(PathError::TooDeep);
            }
            segments.items[segments.len] = raw;
            segments.escaped |= u32::from(escaped) << segments.len;
            segments.len += 1;
            if end == bytes.len() {
                return Ok(segments);
            }
            start = end + 1;
        }
    }

    pub fn as_slice(&self) -> &[&'a str] {
        &self.items[..self.len]
    }

    /// `…/info/refs?service=git-receive-pack` is the first step of a push: judge it as the
    /// `POST …/git-receive-pack` it announces, so a read-only client fails before uploading a pack.
    pub fn git_push_preflight(&self, method: &Method, query: Option<&str>) -> Option<Segments<'a>> {
        let items = self.as_slice();
        let [.., info, refs] = items else { return None };
        if method != Method::GET
            || !segment_eq(info, true, "info")
            || !segment_eq(refs, true, "refs")
            || !query.is_some_and(announces_receive_pack)
        {
            return None;
        }
        let mut push = Segments {
            items: self.items,
            len: self.len - 1,
            escaped: self.escaped,
        };
        push.items[push.len - 1] = "git-receive-pack";
        push.escaped &= !(1 << (push.len - 1));
        Some(push)
    }
}

fn announces_receive_pack(query: &str) -> bool {
    query.split('&').any(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        segment_eq(name, true, "service") && segment_eq(value, true, "git-receive-pack")
    })
}

/// Checks one raw segment; tells whether it holds percent-escapes.
fn check_segment(raw: &str) -> Result<bool, PathError> {
    if raw.is_empty() {
        return Err(PathError::EmptySegment);
    }
    let bytes = raw.as_bytes();
    let mut has_escape = false;
    let mut parameters_at = bytes.len();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b';' if parameters_at == bytes.len() => parameters_at = i,
            b'\\' => return Err(PathError::Backslash),
            b if b < 0x20 || b == 0x7f => return Err(PathError::ControlCharacter),
            b'%' => {
                let (Some(&hi), Some(&lo)) = (bytes.get(i + 1), bytes.get(i + 2)) else {
                    return Err(PathError::BadPercentEncoding);
                };
                let (Some(hi), Some(lo)) = (hex(hi), hex(lo)) else {
                    return Err(PathError::BadPercentEncoding);
                };
                let decoded = hi << 4 | lo;
                match decoded {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    b if b < 0x20 || b == 0x7f => return Err(PathError::ControlCharacter),
                    // `%25` then two hex digits decodes, in a second pass, to another escape.
                    b'%' if bytes.get(i + 3).copied().and_then(hex).is_some()
                        && bytes.get(i + 4).copied().and_then(hex).is_some() =>
                    {
                        return Err(PathError::DoubleEncoding);
                    }
                    _ => {}
                }
                has_escape = true;
                i += 3;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    // Servers that honour path parameters (`/..;x/`) see the part before ';' as the segment.
    if is_dot_segment(&raw[..parameters_at]) {
        return Err(PathError::DotSegment);
    }
    if has_escape {
        let decoded: Vec<u8> = Decoded::new(raw).collect();
        if std::str::from_utf8(&decoded).is_err() {
            return Err(PathError::NotUtf8);
        }
    }
    Ok(has_escape)
}

fn is_dot_segment(raw: &str) -> bool {
    let mut decoded = Decoded::new(raw);
    matches!(
        (decoded.next(), decoded.next(), decoded.next()),
        (Some(b'.'), None, _) | (Some(b'.'), Some(b'.'), None)
    )
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes a checked segment byte by byte.
struct Decoded<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Decoded<'a> {
    fn new(raw: &'a str) -> Self {
        Self {
            bytes: raw.as_bytes(),
            at: 0,
        }
    }
}

impl Iterator for Decoded<'_> {
    type Item = u8;
    fn next(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.at)?;
        if b == b'%'
            && let (Some(hi), Some(lo)) = (
                self.bytes.get(self.at + 1).copied().and_then(hex),
                self.bytes.get(self.at + 2).copied().and_then(hex),
            )
        {
            self.at += 3;
            return Some(hi << 4 | lo);
        }
        self.at += 1;
        Some(b)
    }
}

/// Orders a lower-case key against a raw (unescaped) segment as if the segment were lower-cased.
fn compare_lowercase(key: &str, raw: &str) -> std::cmp::Ordering {
    key.bytes().cmp(raw.bytes().map(|b| b.to_ascii_lowercase()))
}

/// Compares a raw segment, decoded, with a literal, ignoring ASCII case. `maybe_escaped` false
/// promises the segment holds no '%'.
fn segment_eq(raw: &str, maybe_escaped: bool, literal: &str) -> bool {
    // Decoding only shortens a segment, and a checked raw '%' always starts an escape (a literal
    // never holds one followed by two hex digits): equal lengths compare as plain text, a
    // shorter raw segment cannot match, and only a longer one with escapes needs decoding.
    match raw.len().cmp(&literal.len()) {
        std::cmp::Ordering::Equal => raw.eq_ignore_ascii_case(literal),
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Greater => {
            maybe_escaped && raw.contains('%') && {
                let mut decoded = Decoded::new(raw);
                let mut literal = literal.bytes();
                loop {
                    match (decoded.next(), literal.next()) {
                        (None, None) => break true,
                        (Some(a), Some(b)) if a.eq_ignore_ascii_case(&b) => {}
                        _ => break false,
                    }
                }
            }
        }
    }
}

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
        match path.git_push_preflight(method, query) {
            Some(push) => self.find(&Method::POST, &push),
            None => self.find(method, path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowlist(rules: &[(&[&str], &str)]) -> Allowlist {
        Allowlist::new(
            rules
                .iter()
                .map(|(methods, path)| {
                    let methods: Vec<String> = methods.iter().map(|m| m.to_string()).collect();
                    Rule::compile(&methods, path).expect("valid rule")
                })
                .collect(),
        )
    }

    enum Expect {
        Allow,
        Deny,
        Bad(PathError),
    }
    use Expect::*;

    fn judge(list: &Allowlist, method: &str, target: &str) -> Expect {
        let (path, query) = target
            .split_once('?')
            .map_or((target, None), |(p, q)| (p, Some(q)));
        match Segments::parse(path) {
            Err(e) => Bad(e),
            Ok(segments) => {
                let method = Method::from_bytes(method.as_bytes()).expect("method");
                if list.judge(&method, &segments, query).is_some() {
                    Allow
                } else {
                    Deny
                }
            }
        }
    }

    #[test]
    fn table_of_paths_methods_and_bypass_spellings() {
        let list = allowlist(&[
            (&["GET", "post"], "/contoso/web/_git/web/**"),
            (&["GET"], "/contoso/_apis/projects"),
            (&["GET"], "/contoso/*/_apis/build/builds"),
            (&["*"], "/fabrikam/**"),
            (&["GET"], "/contoso/**/_apis/wit/workitems"),
            (&["GET"], "/My%20Org/_apis/projects"),
        ]);
        let cases: &[(&str, &str, Expect)] = &[
            // plain matches
            (
                "GET",
                "/contoso/web/_git/web/info/refs?service=git-upload-pack",
                Allow,
            ),
            ("POST", "/contoso/web/_git/web/git-upload-pack", Allow),
            ("GET", "/contoso/_apis/projects", Allow),
            ("GET", "/contoso/_apis/projects?api-version=7.1", Allow),
            ("GET", "/contoso/web/_apis/build/builds", Allow),
            ("GET", "/contoso/other/_apis/build/builds", Allow),
            ("DELETE", "/fabrikam/x/y", Allow),
            ("PATCH", "/fabrikam", Allow),
            // `**` matches zero segments too, at the end and in the middle
            ("GET", "/contoso/web/_git/web", Allow),
            ("GET", "/contoso/_apis/wit/workitems", Allow),
            ("GET", "/contoso/a/b/c/_apis/wit/workitems", Allow),
            ("GET", "/contoso/a/_apis/wit/workitems/extra", Deny),
            // case variants of names, and of methods
            ("GET", "/CONTOSO/Web/_GIT/WEB/info/refs", Allow),
            ("GET", "/Contoso/_Apis/Projects", Allow),
            ("get", "/contoso/_apis/projects", Allow),
            ("Post", "/contoso/web/_git/web/git-upload-pack", Allow),
            ("delete", "/contoso/_apis/projects", Deny),
            ("PUT", "/contoso/web/_git/web/x", Deny),
            // trailing slashes
            ("GET", "/contoso/_apis/projects/", Allow),
            ("GET", "/", Deny),
            (
                "GET",
                "/contoso/_apis/projects//",
                Bad(PathError::EmptySegment),
            ),
            // `*` is exactly one segment
            ("GET", "/contoso/_apis/build/builds", Deny),
            ("GET", "/contoso/a/b/_apis/build/builds", Deny),
            // percent-encoded literals compare decoded
            ("GET", "/My%20Org/_apis/projects", Allow),
            ("GET", "/my%20org/_apis/projects", Allow),
            ("GET", "/%63ontoso/_apis/projects", Allow),
            // prefixes and neighbours do not match
            ("GET", "/contoso/_apis/projectsX", Deny),
            ("GET", "/contoso/web/_git/website/info/refs", Deny),
            ("GET", "/contosoX/_apis/projects", Deny),
            ("GET", "/other/_apis/projects", Deny),
            // dot segments in every spelling
            (
                "GET",
                "/contoso/web/_git/web/../../../admin",
                Bad(PathError::DotSegment),
            ),
            (
                "GET",
                "/contoso/web/_git/web/./x",
                Bad(PathError::DotSegment),
            ),
            (
                "GET",
                "/contoso/web/_git/web/%2e%2e/x",
                Bad(PathError::DotSegment),
            ),
            (
                "GET",
                "/contoso/web/_git/web/%2E%2E/x",
                Bad(PathError::DotSegment),
            ),
            (
                "GET",
                "/contoso/web/_git/web/.%2E/x",
                Bad(PathError::DotSegment),
            ),
            (
                "GET",
                "/contoso/web/_git/web/%2e./x",
                Bad(PathError::DotSegment),
            ),
            (
                "GET",
                "/contoso/web/_git/web/%2e",
                Bad(PathError::DotSegment),
            ),
            (
                "GET",
                "/contoso/web/_git/web/..;x/admin",
                Bad(PathError::DotSegment),
            ),
            (
                "GET",
                "/contoso/web/_git/web/..",
                Bad(PathError::DotSegment),
            ),
            ("GET", "/contoso/web/_git/web/...", Allow),
            ("GET", "/contoso/web/_git/web/a..b", Allow),
            // encoded separators and backslashes
            (
                "GET",
                "/contoso/web/_git/web%2F..%2F..%2Fx",
                Bad(PathError::EncodedSeparator),
            ),
            (
                "GET",
                "/contoso/web/_git/web%2f..",
                Bad(PathError::EncodedSeparator),
            ),
            (
                "GET",
                "/contoso/web/_git/web/%5C..",
                Bad(PathError::EncodedSeparator),
            ),
            (
                "GET",
                "/contoso/web/_git/web/%5c",
                Bad(PathError::EncodedSeparator),
            ),
            (
                "GET",
                "/contoso/web/_git/web\\..\\x",
                Bad(PathError::Backslash),
            ),
            // empty segments
            (
                "GET",
                "//contoso/_apis/projects",
                Bad(PathError::EmptySegment),
            ),
            (
                "GET",
                "/contoso//_apis/projects",
                Bad(PathError::EmptySegment),
            ),
            // control characters, raw or encoded
            (
                "GET",
                "/contoso/%00/_apis",
                Bad(PathError::ControlCharacter),
            ),
            (
                "GET",
                "/contoso/%0a/_apis",
                Bad(PathError::ControlCharacter),
            ),
            ("GET", "/contoso/%7F", Bad(PathError::ControlCharacter)),
            ("GET", "/contoso/\t", Bad(PathError::ControlCharacter)),
            // broken and double encodings
            ("GET", "/contoso/%zz", Bad(PathError::BadPercentEncoding)),
            ("GET", "/contoso/%2", Bad(PathError::BadPercentEncoding)),
            ("GET", "/contoso/abc%", Bad(PathError::BadPercentEncoding)),
            (
                "GET",
                "/contoso/%252e%252e/x",
                Bad(PathError::DoubleEncoding),
            ),
            ("GET", "/contoso/%252F", Bad(PathError::DoubleEncoding)),
            ("GET", "/fabrikam/100%25", Allow),
            ("GET", "/contoso/%ff%fe", Bad(PathError::NotUtf8)),
            ("GET", "/fabrikam/caf%C3%A9", Allow),
            // not origin-form
            ("GET", "contoso/_apis/projects", Bad(PathError::NotAbsolute)),
            ("GET", "*", Bad(PathError::NotAbsolute)),
        ];
        assert!(cases.len() >= 50);
        for (method, target, expected) in cases {
            let got = judge(&list, method, target);
            let ok = match (expected, &got) {
                (Allow, Allow) | (Deny, Deny) => true,
                (Bad(a), Bad(b)) => a == b,
                _ => false,
            };
            let show = |e: &Expect| match e {
                Allow => "allow".to_string(),
                Deny => "deny".to_string(),
                Bad(e) => format!("{e:?}"),
            };
            assert!(
                ok,
                "{method} {target}: expected {}, got {}",
                show(expected),
                show(&got)
            );
        }
    }

    #[test]
    fn a_push_preflight_is_judged_as_the_push() {
        let read_only = allowlist(&[
            (&["GET"], "/contoso/web/_git/web/**"),
            (&["POST"], "/contoso/web/_git/web/git-upload-pack"),
        ]);
        let writer = allowlist(&[(&["GET", "POST"], "/contoso/web/_git/web/**")]);
        let preflight = "/contoso/web/_git/web/info/refs?service=git-receive-pack";
        assert!(matches!(judge(&read_only, "GET", preflight), Deny));
        assert!(matches!(
            judge(
                &read_only,
                "GET",
                "/contoso/web/_git/web/info/refs?SERVICE=Git-Receive-Pack"
            ),
            Deny
        ));
        assert!(matches!(
            judge(
                &read_only,
                "GET",
                "/contoso/web/_git/web/info/refs?a=1&service=git%2Dreceive-pack"
            ),
            Deny
        ));
        assert!(matches!(
            judge(
                &read_only,
                "GET",
                "/contoso/web/_git/web/info/refs?service=git-upload-pack"
            ),
            Allow
        ));
        assert!(matches!(judge(&writer, "GET", preflight), Allow));
    }

    #[test]
    fn bad_patterns_and_methods_are_refused() {
        for pattern in [
            "contoso", "/a//b", "/a/**/**", "/a/**/*", "/a*/b", "/**/*/x", "/a/../b", "/a/%2F",
        ] {
            assert!(Pattern::compile(pattern).is_err(), "{pattern}");
        }
        for pattern in ["/", "/**", "/a/**", "/a/**/b/**", "/a/*/b", "/a/b/"] {
            assert!(Pattern::compile(pattern).is_ok(), "{pattern}");
        }
        assert!(Methods::compile(&[]).is_err());
        assert!(Methods::compile(&["CONNECT".into()]).is_err());
        assert!(Methods::compile(&["G E T".into()]).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Whatever the matcher admits under a prefix rule still lies under that prefix once a
        /// server decodes it and resolves dot segments.
        #[test]
        fn admitted_paths_stay_under_the_prefix(
            tail in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::string::string_regex("[a-zA-Z0-9._~-]{1,6}").expect("regex"),
                    proptest::string::string_regex("(%2[eE]|%2[fF]|%5[cC]|%25|%00|\\.|\\\\|;|/|[a-z]){1,6}").expect("regex"),
                    proptest::prop_oneof![
                        proptest::strategy::Just("..".to_string()),
                        proptest::strategy::Just(".".to_string()),
                        proptest::strategy::Just("%2e%2e".to_string()),
                        proptest::strategy::Just("".to_string()),
                    ],
                ],
                0..8,
            ),
            prefix in proptest::prop_oneof![
                proptest::strategy::Just("/org/proj/_git/repo".to_string()),
                proptest::strategy::Just("/ORG/Proj/_GIT/Repo".to_string()),
                proptest::strategy::Just("/org/proj/_git".to_string()),
                proptest::strategy::Just("/org".to_string()),
                proptest::strategy::Just("/other/proj/_git/repo".to_string()),
            ],
        ) {
            let list = allowlist(&[(&["GET"], "/org/proj/_git/repo/**")]);
            let path = format!("{prefix}/{}", tail.join("/"));
            if let Ok(segments) = Segments::parse(&path)
                && list.judge(&Method::GET, &segments, None).is_some()
            {
                let resolved = resolve_like_a_server(&path);
                proptest::prop_assert!(
                    resolved.to_ascii_lowercase().starts_with("/org/proj/_git/repo"),
                    "{path} resolved to {resolved}"
                );
            }
        }
    }

    /// Decodes repeatedly (the worst case: a server that decodes twice), turns backslashes into
    /// slashes, drops path parameters and resolves dot segments, RFC 3986 §5.2.4 style.
    fn resolve_like_a_server(path: &str) -> String {
        let mut text = path.to_string();
        for _ in 0..2 {
            let bytes: Vec<u8> = Decoded::new(&text).collect();
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        let text = text.replace('\\', "/");
        let mut out: Vec<&str> = Vec::new();
        for segment in text.split('/').skip(1) {
            let segment = segment.split(';').next().unwrap_or(segment);
            match segment {
                "." | "" => {}
                ".." => {
                    out.pop();
                }
                s => out.push(s),
            }
        }
        format!("/{}", out.join("/"))
    }
}
