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
