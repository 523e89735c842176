//! Claim patterns of keyless clients, e.g. `sub = "repo:contoso/web:ref:refs/heads/*"`: the
//! path globs' rules over a claim's segments. GitHub, Kubernetes and Azure DevOps build their
//! subjects from parts joined by `:` and `/`, so both separate segments; `*` is exactly one
//! whole segment, `**` any number (also none), and everything else is compared exactly, case
//! included: a subject is an identifier, not a path a server folds.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(Box<str>),
    /// The separator after a segment: `:` or `/`.
    Separator(u8),
    One,
    Any,
}

/// A compiled claim pattern.
#[derive(Clone, PartialEq, Eq)]
pub struct ClaimPattern {
    text: Box<str>,
    parts: Box<[Part]>,
}

impl fmt::Debug for ClaimPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClaimPattern({:?})", self.text)
    }
}

fn is_separator(byte: u8) -> bool {
    byte == b':' || byte == b'/'
}

/// A claim split the way patterns are: segments and the separators between them.
fn split(text: &str) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut start = 0;
    for (at, byte) in text.bytes().enumerate() {
        if is_separator(byte) {
            parts.push(Part::Literal(text[start..at].into()));
            parts.push(Part::Separator(byte));
            start = at + 1;
        }
    }
    parts.push(Part::Literal(text[start..].into()));
    parts
}

impl ClaimPattern {
    pub fn compile(text: &str) -> Result<ClaimPattern, String> {
        if text.is_empty() {
            return Err("a claim pattern cannot be empty".into());
        }
        let mut parts = split(text);
        let mut any = 0;
        for part in &mut parts {
            if let Part::Literal(segment) = part {
                match &**segment {
                    "*" => *part = Part::One,
                    "**" => {
                        any += 1;
                        *part = Part::Any;
                    }
                    s if s.contains('*') => {
                        return Err(format!(
                            "`{text}`: '*' and '**' must be whole segments (between ':' and '/')"
                        ));
                    }
                    _ => {}
                }
            }
        }
        if any > 1 {
            return Err(format!("`{text}`: at most one '**'"));
        }
        Ok(ClaimPattern {
            text: text.into(),
            parts: parts.into_boxed_slice(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `**` takes the segments (and separators) the parts after it leave over: with at most one
    /// `**`, that is fixed by the number of segments, so matching is one pass.
    pub fn matches(&self, value: &str) -> bool {
        let value = split(value);
        let Some(any) = self.parts.iter().position(|part| *part == Part::Any) else {
            return value.len() == self.parts.len()
                && self
                    .parts
                    .iter()
                    .zip(&value)
                    .all(|(p, v)| part_matches(p, v));
        };
        let (head, tail) = (&self.parts[..any], &self.parts[any + 1..]);
        // `a:**` matches `a` as well as `a:b`: the separator before `**` may go with it.
        let head = match head.last() {
            Some(Part::Separator(_)) if value.len() < head.len() + tail.len() => {
                &head[..head.len() - 1]
            }
            _ => head,
        };
        value.len() >= head.len() + tail.len()
            && head.iter().zip(&value).all(|(p, v)| part_matches(p, v))
            && tail
                .iter()
                .rev()
                .zip(value.iter().rev())
                .all(|(p, v)| part_matches(p, v))
            && (value.len() > head.len() + tail.len() || tail.is_empty() || head.is_empty() || {
                // `**` standing for nothing joins head and tail at one separator.
                matches!(head.last(), Some(Part::Separator(_)))
                    != matches!(tail.first(), Some(Part::Separator(_)))
            })
    }
}

fn part_matches(pattern: &Part, value: &Part) -> bool {
    match (pattern, value) {
        (Part::One, Part::Literal(segment)) => !segment.is_empty(),
        (Part::Literal(a), Part::Literal(b)) => a == b,
        (Part::Separator(a), Part::Separator(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pattern: &str, yes: &[&str], no: &[&str]) {
        let compiled = ClaimPattern::compile(pattern).expect(pattern);
        for value in yes {
            assert!(compiled.matches(value), "{pattern} should match {value}");
        }
        for value in no {
            assert!(
                !compiled.matches(value),
                "{pattern} should not match {value}"
            );
        }
    }

    #[test]
    fn github_subjects() {
        check(
            "repo:contoso/web:ref:refs/heads/main",
            &["repo:contoso/web:ref:refs/heads/main"],
            &[
                "repo:contoso/web:ref:refs/heads/main2",
                "repo:Contoso/web:ref:refs/heads/main",
                "repo:contoso/web:ref:refs/heads/main/x",
            ],
        );
        check(
            "repo:contoso/web:*",
            &["repo:contoso/web:pull_request"],
            &[
                "repo:contoso/web:ref:refs/heads/main",
                "repo:contoso/web",
                "repo:contoso/web:",
                "repo:contoso/webapp:pull_request",
            ],
        );
        check(
            "repo:contoso/web:**",
            &[
                "repo:contoso/web",
                "repo:contoso/web:pull_request",
                "repo:contoso/web:ref:refs/heads/main",
                "repo:contoso/web:environment:prod",
            ],
            &["repo:contoso/webapp:pull_request", "repo:contoso/web2"],
        );
        check(
            "repo:contoso/*:ref:refs/heads/main",
            &["repo:contoso/web:ref:refs/heads/main"],
            &[
                "repo:contoso/web/x:ref:refs/heads/main",
                "repo:fabrikam/web:ref:refs/heads/main",
            ],
        );
        check(
            "repo:contoso/**:environment:prod",
            &[
                "repo:contoso/web:environment:prod",
                "repo:contoso/a/b:environment:prod",
            ],
            &["repo:contoso/web:environment:test"],
        );
    }

    #[test]
    fn kubernetes_subjects_and_refusals() {
        check(
            "system:serviceaccount:builds:*",
            &["system:serviceaccount:builds:runner"],
            &[
                "system:serviceaccount:other:runner",
                "system:serviceaccount:builds",
            ],
        );
        for bad in ["", "repo:contoso/web*", "a:**:b:**", "x*y"] {
            assert!(ClaimPattern::compile(bad).is_err(), "{bad}");
        }
    }
}
