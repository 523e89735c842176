//! Path patterns: segment globs compiled once (a literal segment, `*` for exactly one, `**` for
//! any number), matched against decoded segments ignoring ASCII case, without allocating.

use std::fmt;

use super::path::{Decoded, Segments, check_segment, segment_eq};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Part {
    Literal(Box<str>),
    /// `*`: exactly one segment.
    One,
    /// `**`: zero or more segments.
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError(String);

impl PatternError {
    pub(super) fn new(message: String) -> Self {
        Self(message)
    }
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// More `**` than any Azure DevOps path needs; matching stays linear whatever the number, this
/// only keeps rules readable.
const MAX_ANY: usize = 4;

/// A compiled path pattern such as `/contoso/*/_git/web/**`.
#[derive(Debug, Clone)]
pub struct Pattern {
    pub(super) parts: Box<[Part]>,
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
        if parts.iter().filter(|part| **part == Part::Any).count() > MAX_ANY {
            return Err(error(&format!("has more than {MAX_ANY} '**' segments")));
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
///
/// The classic two-pointer glob: on a mismatch, go back to just after the last `**` and let it
/// take one more segment. At most `parts × segments` steps, however many `**` a rule holds,
/// where trying every split recursively is exponential in their number.
fn match_parts(parts: &[Part], segments: &[&str], escaped: u32) -> bool {
    let (mut p, mut s) = (0, 0);
    // The last `**` seen, and the first segment it has not taken yet.
    let mut resume: Option<(usize, usize)> = None;
    while s < segments.len() {
        let escaped_here = escaped.checked_shr(s as u32).unwrap_or(0) & 1 != 0;
        match parts.get(p) {
            Some(Part::Any) => {
                resume = Some((p, s));
                p += 1;
                continue;
            }
            Some(Part::One) => {
                p += 1;
                s += 1;
                continue;
            }
            Some(Part::Literal(literal)) if segment_eq(segments[s], escaped_here, literal) => {
                p += 1;
                s += 1;
                continue;
            }
            _ => {}
        }
        match resume {
            Some((any, taken)) => {
                p = any + 1;
                s = taken + 1;
                resume = Some((any, taken + 1));
            }
            None => return false,
        }
    }
    parts[p..].iter().all(|part| *part == Part::Any)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The obvious recursive matcher, exponential in the number of `**`: the reference.
    fn reference(parts: &[Part], segments: &[&str]) -> bool {
        match parts.split_first() {
            None => segments.is_empty(),
            Some((Part::Literal(l), rest)) => {
                segments.split_first().is_some_and(|(first, tail)| {
                    first.eq_ignore_ascii_case(l) && reference(rest, tail)
                })
            }
            Some((Part::One, rest)) => segments
                .split_first()
                .is_some_and(|(_, tail)| reference(rest, tail)),
            Some((Part::Any, rest)) => {
                (0..=segments.len()).any(|skip| reference(rest, &segments[skip..]))
            }
        }
    }

    fn part() -> impl Strategy<Value = Part> {
        prop_oneof![
            Just(Part::Literal("a".into())),
            Just(Part::Literal("b".into())),
            Just(Part::One),
            Just(Part::Any),
        ]
    }

    proptest! {
        #[test]
        fn two_pointer_matching_agrees_with_the_reference(
            parts in proptest::collection::vec(part(), 0..7),
            segments in proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c")], 0..9),
        ) {
            prop_assert_eq!(match_parts(&parts, &segments, 0), reference(&parts, &segments));
        }
    }

    #[test]
    fn many_double_stars_are_refused_and_four_still_match_in_linear_time() {
        assert!(Pattern::compile("/a/**/b/**/c/**/d/**/e/**").is_err());
        let four = Pattern::compile("/a/**/a/**/a/**/a/**/b").expect("four '**'");
        // 32 segments that almost match: the recursive matcher tried every split of them.
        let path = format!("/{}", ["a"; 32].join("/"));
        let segments = Segments::parse(&path).expect("path");
        assert!(!four.matches(&segments));
        let path = format!("/{}/b", ["a"; 31].join("/"));
        assert!(four.matches(&Segments::parse(&path).expect("path")));
    }
}
