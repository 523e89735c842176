//! Azure DevOps host names: which hosts the proxy serves (`upstream.hosts`) and which a rule is
//! for (a rule's `host`). Patterns are label globs matched ignoring ASCII case: a literal label,
//! `*` for exactly one label, and a leading `*.` for any subdomain at any depth, so that
//! `*.visualstudio.com` covers `contoso.pkgs.visualstudio.com` as well as `contoso.visualstudio.com`.
//!
//! Storage and CDN hosts are never Azure DevOps hosts, whatever a pattern says: their URLs carry
//! a SAS signature, an `Authorization` header makes them fail, and the token must never go there.

use std::fmt;

use super::pattern::PatternError;

/// Longest host name DNS allows.
const MAX_HOST_BYTES: usize = 253;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Label {
    Literal(Box<str>),
    /// `*`: exactly one label.
    One,
}

/// A compiled host pattern such as `*.dev.azure.com`.
#[derive(Debug, Clone)]
pub struct HostPattern {
    /// A leading `*.`: one or more labels before `labels`.
    any_subdomain: bool,
    labels: Box<[Label]>,
    /// Without an inner `*`: the literal labels joined, with the leading dot of `*.`. The
    /// response rewriter asks for every URL it meets, so the common patterns compare bytes.
    literal: Option<Box<str>>,
    text: Box<str>,
}

impl HostPattern {
    pub fn compile(text: &str) -> Result<HostPattern, PatternError> {
        let error = |why: &str| PatternError::new(format!("host `{text}`: {why}"));
        let (any_subdomain, rest) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        if rest.is_empty() {
            return Err(error("names no domain"));
        }
        let mut labels = Vec::new();
        for label in rest.split('.') {
            labels.push(match label {
                "" => return Err(error("has an empty label")),
                "*" => Label::One,
                "**" => {
                    return Err(error(
                        "`**` is not a host label; a leading `*.` matches any subdomain",
                    ));
                }
                l if valid_label(l) => Label::Literal(l.to_ascii_lowercase().into()),
                _ => return Err(error("labels are letters, digits and '-', or `*`")),
            });
        }
        // `*.com` would be every host on a top-level domain.
        if labels.len() < 2 {
            return Err(error("must name a domain with at least two labels"));
        }
        if labels.iter().all(|l| *l == Label::One) {
            return Err(error("must hold at least one literal label"));
        }
        let literal = labels
            .iter()
            .all(|l| matches!(l, Label::Literal(_)))
            .then(|| {
                let joined = rest.to_ascii_lowercase();
                if any_subdomain {
                    format!(".{joined}").into()
                } else {
                    joined.into()
                }
            });
        Ok(HostPattern {
            literal,
            any_subdomain,
            labels: labels.into_boxed_slice(),
            text: text.to_ascii_lowercase().into(),
        })
    }

    /// `host` is a checked name (see [`host_name`]).
    pub fn matches(&self, host: &str) -> bool {
        if let Some(literal) = &self.literal {
            return if self.any_subdomain {
                ends_with_ignoring_case(host, literal) && host.len() > literal.len()
            } else {
                host.eq_ignore_ascii_case(literal)
            };
        }
        let mut labels = host.rsplit('.');
        for pattern in self.labels.iter().rev() {
            match (pattern, labels.next()) {
                (Label::One, Some(_)) => {}
                (Label::Literal(literal), Some(label)) if label.eq_ignore_ascii_case(literal) => {}
                _ => return false,
            }
        }
        let rest = labels.next().is_some();
        rest == self.any_subdomain
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// `raw` if it is a plain DNS host name (letters, digits, '-' and dots; no port, no escapes, no
/// trailing dot), else `None`.
pub fn host_name(raw: &str) -> Option<&str> {
    (raw.len() <= MAX_HOST_BYTES && raw.split('.').all(valid_label) && raw.contains('.'))
        .then_some(raw)
}

/// Azure Storage and the artifact CDN: SAS URLs that must reach the client untouched and never
/// carry a credential.
pub fn is_storage_host(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    [".core.windows.net", ".vsassets.io"]
        .iter()
        .any(|subdomain| {
            ends_with_ignoring_case(host, subdomain) || host.eq_ignore_ascii_case(&subdomain[1..])
        })
}

fn ends_with_ignoring_case(host: &str, suffix: &str) -> bool {
    host.len() >= suffix.len()
        && host.as_bytes()[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

/// The host a request is for: its name, and whether it is the default upstream's (which rules
/// without a `host` are for).
#[derive(Clone, Copy, Debug)]
pub struct RequestHost<'a> {
    pub name: &'a str,
    pub is_default: bool,
}

impl RequestHost<'_> {
    /// The default upstream, whatever its name.
    pub const DEFAULT: RequestHost<'static> = RequestHost {
        name: "",
        is_default: true,
    };
}

/// The hosts the proxy serves besides its default upstream.
#[derive(Debug, Clone, Default)]
pub struct Hosts {
    patterns: Box<[HostPattern]>,
}

impl Hosts {
    pub fn new(patterns: Vec<HostPattern>) -> Self {
        Self {
            patterns: patterns.into_boxed_slice(),
        }
    }

    /// Whether requests may be forwarded to `host`, with the token.
    pub fn allows(&self, host: &str) -> bool {
        !is_storage_host(host) && self.patterns.iter().any(|p| p.matches(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> HostPattern {
        HostPattern::compile(text).expect("valid pattern")
    }

    #[test]
    fn a_leading_star_is_any_subdomain_and_an_inner_star_one_label() {
        let sub = pattern("*.dev.azure.com");
        for host in [
            "pkgs.dev.azure.com",
            "app.vssps.dev.azure.com",
            "PKGS.Dev.Azure.Com",
        ] {
            assert!(sub.matches(host), "{host}");
        }
        for host in [
            "dev.azure.com",
            "evil-dev.azure.com",
            "dev.azure.com.evil.example",
            "azure.com",
        ] {
            assert!(!sub.matches(host), "{host}");
        }
        let exact = pattern("dev.azure.com");
        assert!(exact.matches("DEV.azure.com"));
        assert!(!exact.matches("pkgs.dev.azure.com"));
        let inner = pattern("*.vsblob.*.com");
        assert!(inner.matches("vsblobprod1.vsblob.visualstudio.com"));
        assert!(!inner.matches("vsblobprod1.vsblob.visual.studio.com"));
    }

    #[test]
    fn patterns_that_would_match_anything_are_refused() {
        for text in [
            "*",
            "*.*",
            "**.example.com",
            "com",
            "",
            "a..b",
            "*.",
            "bad_label.com",
            "x.com:443",
        ] {
            assert!(HostPattern::compile(text).is_err(), "{text}");
        }
    }

    #[test]
    fn storage_hosts_are_never_served() {
        let hosts = Hosts::new(vec![pattern("*.windows.net"), pattern("*.vsassets.io")]);
        for host in [
            "contoso.blob.core.windows.net",
            "x.vsblob.vsassets.io",
            "BLOB.CORE.WINDOWS.NET",
        ] {
            assert!(is_storage_host(host), "{host}");
            assert!(!hosts.allows(host), "{host}");
        }
        assert!(!is_storage_host("notcore.windows.net"));
        assert!(!is_storage_host("dev.azure.com"));
    }

    #[test]
    fn host_names_are_plain_dns_names() {
        assert_eq!(host_name("pkgs.dev.azure.com"), Some("pkgs.dev.azure.com"));
        for raw in [
            "",
            "localhost",
            "a.b:443",
            "a%2eb.com",
            "a..b",
            "a.b.",
            "a_b.com",
            "ex ample.com",
        ] {
            assert_eq!(host_name(raw), None, "{raw}");
        }
    }
}
