//! Suggested path patterns: a logged path's segments with ids turned into `*`, and the
//! `{prefix}/**` a repository, a feed or a busy API area becomes. Written out in the syntax
//! `policy::pattern` compiles (`*` one whole segment; `**` only at the end, after a literal).

use std::cmp::Ordering;

/// Different paths (with one method) under one area from which the area becomes `{area}/**`:
/// three calls are a tool's known handful, four are a pattern that will keep growing.
pub(super) const COLLAPSE_AT: usize = 4;

/// Areas whose protocols address everything below them (packfiles, LFS objects, package files):
/// always one rule for the whole subtree.
const WHOLE_SUBTREE: [&str; 2] = ["_git", "_packaging"];

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Seg {
    /// A name, as logged (percent-escapes included; a pattern compares them decoded).
    Lit(String),
    /// `*`: an id.
    One,
}

impl Seg {
    fn text(&self) -> &str {
        match self {
            Seg::Lit(name) => name,
            Seg::One => "*",
        }
    }

    /// Whether this, as a pattern segment, admits `other`'s segments.
    fn covers(&self, other: &Seg) -> bool {
        match (self, other) {
            (Seg::One, _) => true,
            (Seg::Lit(a), Seg::Lit(b)) => a.eq_ignore_ascii_case(b),
            (Seg::Lit(_), Seg::One) => false,
        }
    }

    fn is_name(&self, name: &str) -> bool {
        matches!(self, Seg::Lit(lit) if lit.eq_ignore_ascii_case(name))
    }
}

/// A path pattern: its segments, and whether `/**` follows them. Equal and ordered by its text
/// ignoring ASCII case, as rules match.
#[derive(Debug, Clone)]
pub(super) struct SuggestedPattern {
    parts: Vec<Seg>,
    subtree: bool,
    /// The text lower-cased, kept: patterns are compared often (map keys), and rules match
    /// ignoring ASCII case.
    key: String,
}

impl SuggestedPattern {
    fn new(parts: Vec<Seg>, subtree: bool) -> Self {
        let mut pattern = Self {
            parts,
            subtree,
            key: String::new(),
        };
        pattern.key = pattern.text().to_ascii_lowercase();
        pattern
    }

    pub(super) fn exact(parts: Vec<Seg>) -> Self {
        Self::new(parts, false)
    }

    pub(super) fn is_subtree(&self) -> bool {
        self.subtree
    }

    /// Without the trailing `/**`.
    pub(super) fn prefix_text(&self) -> String {
        if self.parts.is_empty() {
            return String::new();
        }
        let mut text = String::new();
        for part in &self.parts {
            text.push('/');
            text.push_str(part.text());
        }
        text
    }

    pub(super) fn text(&self) -> String {
        match (self.parts.is_empty(), self.subtree) {
            (true, false) => "/".to_string(),
            (_, true) => format!("{}/**", self.prefix_text()),
            (false, false) => self.prefix_text(),
        }
    }

    pub(super) fn key(&self) -> &str {
        &self.key
    }

    /// Whether every path `other` admits, this admits too (`other` being another pattern).
    pub(super) fn covers(&self, other: &SuggestedPattern) -> bool {
        self.subtree
            && other.parts.len() >= self.parts.len()
            && self
                .parts
                .iter()
                .zip(&other.parts)
                .all(|(a, b)| a.covers(b))
    }

    /// `.../_packaging/**`: the feed was named by an id, so every feed is admitted.
    pub(super) fn is_feeds_by_id(&self) -> bool {
        self.subtree
            && self
                .parts
                .last()
                .is_some_and(|part| part.is_name("_packaging"))
    }

    pub(super) fn is_git_repository(&self) -> bool {
        self.subtree && self.parts.iter().any(|part| part.is_name("_git"))
    }
}

impl PartialEq for SuggestedPattern {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for SuggestedPattern {}

impl PartialOrd for SuggestedPattern {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SuggestedPattern {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(other.key())
    }
}

/// A checked path's raw segments with the ids among them turned into `*`. The first segment is
/// the organization (or `_apis` on an organization's own host), a name whatever it looks like:
/// `/*/...` would reach every organization the identity belongs to.
pub(super) fn generalize(segments: &[&str]) -> Vec<Seg> {
    segments
        .iter()
        .enumerate()
        .map(|(at, segment)| {
            // A pattern's literal segment cannot hold `*`.
            if segment.contains('*') || (at > 0 && is_id(segment)) {
                Seg::One
            } else {
                Seg::Lit((*segment).to_string())
            }
        })
        .collect()
}

/// The area a path is under, as `{area}/**`, and whether it always becomes one rule: the path up
/// to the segment after its first `_` segment (`/contoso/web/_apis/build`,
/// `/contoso/web/_git/web`, `/contoso/_packaging/internal`), ids at its end dropped (`**` must
/// follow a name). Paths without a `_` segment have no area.
pub(super) fn area_of(parts: &[Seg]) -> Option<(SuggestedPattern, bool)> {
    let at = parts
        .iter()
        .position(|part| matches!(part, Seg::Lit(name) if name.starts_with('_')))?;
    let mut prefix = parts[..parts.len().min(at + 2)].to_vec();
    while prefix.last() == Some(&Seg::One) {
        prefix.pop();
    }
    let always = WHOLE_SUBTREE.iter().any(|name| parts[at].is_name(name));
    Some((SuggestedPattern::new(prefix, true), always))
}

/// Whether a segment is an id rather than a name: a GUID, a number, a run of hex digits with a
/// digit in it (commit ids, LFS object ids), a version, or a long unbroken run of letters and
/// digits with several digits (tokens, encoded ids). Names start with `_` in Azure DevOps' own
/// vocabulary (`_apis`, `_git`), and are never ids.
fn is_id(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    if segment.starts_with('_') {
        return false;
    }
    let digits = bytes.iter().filter(|b| b.is_ascii_digit()).count();
    let guid = bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    let number = digits == bytes.len();
    let hex = bytes.len() >= 7 && digits > 0 && bytes.iter().all(u8::is_ascii_hexdigit);
    let version = {
        let leading = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
        leading > 0
            && bytes.get(leading) == Some(&b'.')
            && bytes.get(leading + 1).is_some_and(u8::is_ascii_digit)
    };
    let token = bytes.len() >= 20 && digits >= 3 && bytes.iter().all(u8::is_ascii_alphanumeric);
    guid || number || hex || version || token
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggest_turns_ids_into_stars_and_keeps_names() {
        for id in [
            "8a3c0f9e-51d2-4e2b-9c1e-2f6d2a1b7c3d",
            "12345",
            "3f786850e387550fdab836ed7e6dc881de23001b",
            "4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393",
            "abc1234",
            "1.2.3",
            "7.1-preview.1",
            "aB3dE5fG7hI9jK1lM3nO5",
            "a*b",
        ] {
            assert!(
                generalize(&["org", id]) == vec![Seg::Lit("org".into()), Seg::One],
                "{id}"
            );
        }
        for name in [
            "web",
            "_apis",
            "_git",
            "_packaging",
            "git",
            "repositories",
            "deadbeef",
            "web.git",
            "pkg-1.2.3.tgz",
            "My%20Project",
            "v2",
            "release-2024",
        ] {
            assert!(!is_id(name), "{name}");
        }
        assert_eq!(
            generalize(&["12345"]),
            vec![Seg::Lit("12345".into())],
            "organization"
        );
    }

    #[test]
    fn suggest_areas_end_in_a_name() {
        let parts = generalize(&[
            "contoso",
            "web",
            "_git",
            "web",
            "info",
            "lfs",
            "objects",
            "ab12cd34ef",
        ]);
        let (area, always) = area_of(&parts).expect("an area");
        assert_eq!(
            (area.text().as_str(), always),
            ("/contoso/web/_git/web/**", true)
        );
        assert!(area.is_git_repository());
        let parts = generalize(&["contoso", "_apis", "8a3c0f9e-51d2-4e2b-9c1e-2f6d2a1b7c3d"]);
        let (area, always) = area_of(&parts).expect("an area");
        assert_eq!((area.text().as_str(), always), ("/contoso/_apis/**", false));
        assert!(area.covers(&SuggestedPattern::exact(parts)));
        assert!(area_of(&generalize(&["contoso", "web"])).is_none());
        assert_eq!(SuggestedPattern::exact(Vec::new()).text(), "/");
    }
}
