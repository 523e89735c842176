//! What a client may ask for: path safety ([`path`]), Azure DevOps host names ([`host`]), the
//! allowlist rules ([`rules`]) and git's push preflight ([`git`]). Pure functions of the request and the configuration; imports nothing
//! else of the crate.

pub mod claims;
pub mod feed;
mod git;
pub mod host;
pub mod path;
pub mod pattern;
pub mod rules;

pub use claims::ClaimPattern;
pub use feed::{Feed, FeedIds};
pub use host::{HostPattern, Hosts, RequestHost};
pub use path::{MAX_SEGMENTS, PathError, Segments};
pub use pattern::{Pattern, PatternError};
pub use rules::{Allowlist, Methods, Rule};

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    use super::path::Decoded;

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
            // Only the canonical spelling is a forwarded method (the target check refuses `get` first).
            ("get", "/contoso/_apis/projects", Deny),
            ("Post", "/contoso/web/_git/web/git-upload-pack", Deny),
            ("POST", "/contoso/web/_git/web/git-upload-pack", Allow),
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
            // IIS trims trailing dots and spaces, and folds Unicode look-alikes.
            (
                "GET",
                "/contoso/web/_git/web/.../x",
                Bad(PathError::DotSegment),
            ),
            (
                "GET",
                "/contoso/web/_git/web/..%20/x",
                Bad(PathError::DotSegment),
            ),
            (
                "GET",
                "/contoso/web/_git/web/%2e%2e%20/x",
                Bad(PathError::DotSegment),
            ),
            (
                "GET",
                "/contoso/web/_git/web/%2e%2e./x",
                Bad(PathError::DotSegment),
            ),
            (
                "GET",
                "/contoso/web/_git/web/..%3Bx/x",
                Bad(PathError::EncodedParameter),
            ),
            (
                "GET",
                "/contoso/web/_git/web/%20/x",
                Bad(PathError::DotSegment),
            ),
            (
                "GET",
                "/contoso/web/_git/web/%EF%BC%8E%EF%BC%8E/x",
                Bad(PathError::LookAlike),
            ),
            (
                "GET",
                "/contoso/web/_git/web/a%EF%BC%8Fb",
                Bad(PathError::LookAlike),
            ),
            ("GET", "/contoso/web/_git/web/v1.", Allow),
            ("GET", "/contoso/web/_git/web/a..b", Allow),
            ("GET", "/contoso/web/_git/web/caf%C3%A9", Allow),
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
        // More than the default: the safety property of the whole proxy. `benches/fuzz.sh` asks
        // for more still through PROPTEST_CASES.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
        ))]

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
                        // Shapes IIS may still read as `..`.
                        proptest::strategy::Just("..%20".to_string()),
                        proptest::strategy::Just("%2e%2e%20".to_string()),
                        proptest::strategy::Just("%2e%2e.".to_string()),
                        proptest::strategy::Just("...".to_string()),
                        proptest::strategy::Just("..%3Bx".to_string()),
                        proptest::strategy::Just("..;x".to_string()),
                        proptest::strategy::Just("%EF%BC%8E%EF%BC%8E".to_string()),
                        proptest::strategy::Just("%E2%80%A4%E2%80%A4".to_string()),
                        proptest::strategy::Just("a%EF%BC%8Fb".to_string()),
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
        // What IIS and ASP.NET may do besides: fold look-alikes (NFKC, best-fit) to `.` and `/`.
        let text: String = text
            .chars()
            .map(|c| match c {
                '\u{2024}' | '\u{FE52}' | '\u{FF0E}' => '.',
                '\u{2044}' | '\u{2215}' | '\u{29F8}' | '\u{FF0F}' => '/',
                '\u{2216}' | '\u{29F5}' | '\u{FE68}' | '\u{FF3C}' => '\\',
                c => c,
            })
            .collect();
        let text = text.replace('\\', "/");
        let mut out: Vec<&str> = Vec::new();
        for segment in text.split('/').skip(1) {
            // Parameters cut, then trailing dots and spaces trimmed, as IIS does.
            let segment = segment.split(';').next().unwrap_or(segment);
            let trimmed = segment.trim_end_matches(['.', ' ']);
            let segment = if trimmed.is_empty() && !segment.is_empty() {
                if segment.starts_with("..") { ".." } else { "." }
            } else {
                segment
            };
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

    #[test]
    fn a_rule_is_for_its_host_and_a_rule_without_one_for_the_default_upstream() {
        let get = vec!["GET".to_string()];
        let feeds = Rule::compile(&get, "/contoso/_packaging/**")
            .expect("rule")
            .on_host(HostPattern::compile("pkgs.dev.azure.com").expect("host"));
        assert_eq!(
            feeds.to_string(),
            "GET pkgs.dev.azure.com/contoso/_packaging/**"
        );
        let list = Allowlist::new(vec![
            Rule::compile(&get, "/contoso/_apis/**").expect("rule"),
            feeds,
        ]);
        let path = Segments::parse("/contoso/_packaging/feed/pypi/simple/").expect("path");
        let pkgs = RequestHost {
            name: "PKGS.dev.azure.com",
            is_default: false,
        };
        assert_eq!(list.judge_on(pkgs, &Method::GET, &path, None), Some(1));
        assert_eq!(
            list.judge(&Method::GET, &path, None),
            None,
            "not on the default host"
        );
        let apis = Segments::parse("/contoso/_apis/projects").expect("path");
        assert_eq!(list.judge(&Method::GET, &apis, None), Some(0));
        assert_eq!(
            list.judge_on(pkgs, &Method::GET, &apis, None),
            None,
            "not on pkgs"
        );
        let vssps = RequestHost {
            name: "vssps.dev.azure.com",
            is_default: false,
        };
        assert_eq!(list.judge_on(vssps, &Method::GET, &path, None), None);
    }
}
