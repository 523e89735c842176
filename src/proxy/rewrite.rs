//! Absolute URLs of Azure DevOps hosts in responses, rewritten to the proxy's own URL, so that
//! SDKs and package managers that follow them come back through the proxy instead of calling
//! Azure DevOps directly with the proxy key.
//!
//! `https://{default host}/x` becomes `{public_url}/x`, `https://{other allowed host}/x` becomes
//! `{public_url}/_host/{host}/x`, in plain and in JSON-escaped form (`https:\/\/...`). URLs of
//! any other host (storage SAS links, CDNs) are left exactly as they are. The scan streams: a URL
//! split across chunks is carried over in a window of a few hundred bytes, never more.

use std::sync::LazyLock;

use bytes::{Bytes, BytesMut};
use memchr::memmem;

use super::route::Served;

/// `https:\/\/` + the longest DNS name + `:65535`: the most a URL's start can need to be judged.
const MAX_URL_START: usize = 10 + 253 + 6;

/// Built once: a searcher's set-up costs more than searching a small body.
static HTTP: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"http"));

/// What URLs are rewritten to, for one response.
pub struct UrlMap {
    /// `{scheme}://{authority}` of the proxy, no trailing slash.
    public: Box<str>,
    /// The same with every `/` escaped as `\/`, for JSON written that way.
    public_escaped: Box<str>,
}

impl UrlMap {
    pub fn new(public: &str) -> Self {
        let public = public.trim_end_matches('/');
        Self {
            public: public.into(),
            public_escaped: public.replace('/', "\\/").into(),
        }
    }
}

/// How a URL's start was judged.
enum Found {
    /// Replace `len` bytes (scheme, separator and authority) with the proxy's URL, mounted at
    /// `host` unless it is the default upstream.
    Rewrite {
        len: usize,
        host: Option<(usize, usize)>,
        escaped: bool,
    },
    /// Not a URL to rewrite; scanning resumes after the `http`.
    Keep,
    /// The input ends before the URL's start can be judged.
    NeedMore,
}

/// Rewrites `input`; returns how many bytes were consumed (written, rewritten or passed) and
/// leaves the rest, an undecided URL start at the very end, for the next call. With `last`
/// everything is consumed.
pub fn rewrite_into(
    input: &[u8],
    last: bool,
    served: &Served,
    map: &UrlMap,
    out: &mut BytesMut,
) -> usize {
    let mut written = 0;
    let mut at = 0;
    while let Some(found) = HTTP.find(&input[at..]) {
        let start = at + found;
        match judge(&input[start..], last, served) {
            Found::Rewrite { len, host, escaped } => {
                out.extend_from_slice(&input[written..start]);
                out.extend_from_slice(if escaped {
                    map.public_escaped.as_bytes()
                } else {
                    map.public.as_bytes()
                });
                if let Some((from, to)) = host {
                    out.extend_from_slice(if escaped { b"\\/_host\\/" } else { b"/_host/" });
                    out.extend_from_slice(&input[start + from..start + to]);
                }
                written = start + len;
                at = written;
            }
            Found::Keep => at = start + 4,
            Found::NeedMore => {
                out.extend_from_slice(&input[written..start]);
                return start;
            }
        }
    }
    // A chunk may end in the first bytes of `http`.
    let keep = if last {
        0
    } else {
        (1..=3.min(input.len() - at))
            .rev()
            .find(|&n| b"http".starts_with(&input[input.len() - n..]))
            .unwrap_or(0)
    };
    let end = input.len() - keep;
    out.extend_from_slice(&input[written..end]);
    end
}

/// Judges the URL start at the beginning of `input` (which starts with `http`).
fn judge(input: &[u8], last: bool, served: &Served) -> Found {
    let need_more = || if last { Found::Keep } else { Found::NeedMore };
    let mut i = 4;
    let https = match input.get(i) {
        Some(b's') => {
            i += 1;
            true
        }
        Some(_) => false,
        None => return need_more(),
    };
    match input.get(i) {
        Some(b':') => i += 1,
        Some(_) => return Found::Keep,
        None => return need_more(),
    }
    let escaped = match (
        input.get(i),
        input.get(i + 1),
        input.get(i + 2),
        input.get(i + 3),
    ) {
        (Some(b'/'), Some(b'/'), ..) => {
            i += 2;
            false
        }
        (Some(b'\\'), Some(b'/'), Some(b'\\'), Some(b'/')) => {
            i += 4;
            true
        }
        (None, ..) | (Some(b'/'), None, ..) | (Some(b'\\'), None, ..) => return need_more(),
        (Some(b'\\'), Some(b'/'), None, _) | (Some(b'\\'), Some(b'/'), Some(b'\\'), None) => {
            return need_more();
        }
        _ => return Found::Keep,
    };
    let host_start = i;
    while let Some(&b) = input.get(i) {
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'-' {
            i += 1;
            if i - host_start > 253 {
                return Found::Keep;
            }
        } else {
            break;
        }
    }
    if i == input.len() && !last {
        return Found::NeedMore;
    }
    let host_end = i;
    let Ok(host) = std::str::from_utf8(&input[host_start..host_end]) else {
        return Found::Keep;
    };
    let mut port = None;
    if input.get(i) == Some(&b':') {
        i += 1;
        let digits = i;
        while input.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == input.len() && !last {
            return Found::NeedMore;
        }
        port = std::str::from_utf8(&input[digits..i]).ok();
    }
    let mounted = |is_default: bool| Found::Rewrite {
        len: i,
        host: (!is_default).then_some((host_start, host_end)),
        escaped,
    };
    if https {
        if !matches!(port, None | Some("443")) || host.is_empty() {
            return Found::Keep;
        }
        if host.eq_ignore_ascii_case(&served.default_host) {
            return mounted(true);
        }
        if served.others.allows(host) {
            return mounted(false);
        }
        return Found::Keep;
    }
    // A plain-http default upstream (a loopback test or sandbox upstream), by its exact origin.
    match &served.plain_origin {
        Some(origin)
            if origin.strip_prefix("http://").is_some_and(|authority| {
                authority.len() == i - host_start && {
                    let written = &input[host_start..i];
                    written.eq_ignore_ascii_case(authority.as_bytes())
                }
            }) =>
        {
            mounted(true)
        }
        _ => Found::Keep,
    }
}

/// A whole value at once (a `Location` header).
pub fn rewrite_all(input: &[u8], served: &Served, map: &UrlMap) -> Option<Bytes> {
    HTTP.find(input)?;
    let mut out = BytesMut::with_capacity(input.len() + 64);
    rewrite_into(input, true, served, map, &mut out);
    (out.as_ref() != input).then(|| out.freeze())
}

/// The streaming form: chunks in, rewritten chunks out, holding back at most the start of one
/// URL between chunks.
pub struct Rewriter {
    carry: BytesMut,
    out: BytesMut,
}

impl Rewriter {
    pub fn new() -> Self {
        Self {
            carry: BytesMut::new(),
            out: BytesMut::new(),
        }
    }

    pub fn push(&mut self, chunk: Bytes, served: &Served, map: &UrlMap) -> Bytes {
        // Most chunks of most bodies hold no URL at all: pass them on as they are.
        if self.carry.is_empty() && HTTP.find(&chunk).is_none() && !ends_in_url_start(&chunk) {
            return chunk;
        }
        let input: &[u8] = if self.carry.is_empty() {
            &chunk
        } else {
            self.carry.extend_from_slice(&chunk);
            &self.carry
        };
        self.out.reserve(input.len() + 64);
        let consumed = rewrite_into(input, false, served, map, &mut self.out);
        debug_assert!(input.len() - consumed <= MAX_URL_START);
        let rest = BytesMut::from(&input[consumed..]);
        self.carry = rest;
        self.out.split().freeze()
    }

    pub fn finish(&mut self, served: &Served, map: &UrlMap) -> Bytes {
        if self.carry.is_empty() {
            return Bytes::new();
        }
        let carry = std::mem::take(&mut self.carry);
        rewrite_into(&carry, true, served, map, &mut self.out);
        self.out.split().freeze()
    }
}

impl Default for Rewriter {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether the chunk ends in `h`, `ht` or `htt`, which the next chunk may complete.
fn ends_in_url_start(chunk: &[u8]) -> bool {
    (1..=3.min(chunk.len())).any(|n| b"http".starts_with(&chunk[chunk.len() - n..]))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn served() -> Served {
        Served::example()
    }

    fn whole(input: &str) -> String {
        let map = UrlMap::new("http://127.0.0.1:8080/");
        let mut out = BytesMut::new();
        rewrite_into(input.as_bytes(), true, &served(), &map, &mut out);
        String::from_utf8(out.to_vec()).expect("utf-8")
    }

    fn chunked(input: &str, cuts: &[usize]) -> String {
        let (served, map) = (served(), UrlMap::new("http://127.0.0.1:8080"));
        let mut rewriter = Rewriter::new();
        let mut out = Vec::new();
        let mut from = 0;
        for &cut in cuts.iter().chain([&input.len()]) {
            let cut = cut.clamp(from, input.len());
            let chunk = Bytes::copy_from_slice(&input.as_bytes()[from..cut]);
            out.extend_from_slice(&rewriter.push(chunk, &served, &map));
            from = cut;
        }
        out.extend_from_slice(&rewriter.finish(&served, &map));
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn default_and_sibling_hosts_are_rewritten_others_kept() {
        assert_eq!(
            whole(r#"{"url":"https://dev.azure.com/contoso/_apis/projects/1"}"#),
            r#"{"url":"http://127.0.0.1:8080/contoso/_apis/projects/1"}"#
        );
        assert_eq!(
            whole(
                "see https://pkgs.dev.azure.com/contoso/_packaging/f/pypi/simple/ and https://DEV.azure.com:443"
            ),
            "see http://127.0.0.1:8080/_host/pkgs.dev.azure.com/contoso/_packaging/f/pypi/simple/ and http://127.0.0.1:8080"
        );
        assert_eq!(
            whole(r#"{"locationUrl":"https:\/\/vsrm.dev.azure.com\/contoso\/"}"#),
            r#"{"locationUrl":"http:\/\/127.0.0.1:8080\/_host\/vsrm.dev.azure.com\/contoso\/"}"#
        );
        for kept in [
            "https://contoso.blob.core.windows.net/c/b?sig=abc",
            "https://evil.example/x",
            "https://dev.azure.com.evil.example/x",
            "https://dev.azure.com:8443/x",
            "http://dev.azure.com/x",
            "httpsx://dev.azure.com",
            "https:/dev.azure.com",
            "http",
            "",
        ] {
            assert_eq!(whole(kept), kept);
        }
    }

    #[test]
    fn a_url_at_the_very_end_is_rewritten() {
        assert_eq!(
            whole("https://contoso.visualstudio.com"),
            "http://127.0.0.1:8080/_host/contoso.visualstudio.com"
        );
        assert_eq!(
            chunked("x https://dev.azure.com", &[5]),
            "x http://127.0.0.1:8080"
        );
    }

    #[test]
    fn a_plain_http_default_upstream_is_matched_by_its_exact_origin() {
        let mut served = served();
        served.plain_origin = Some("http://127.0.0.1:9999".into());
        let map = UrlMap::new("http://127.0.0.1:8080");
        let mut out = BytesMut::new();
        rewrite_into(
            b"http://127.0.0.1:9999/a http://127.0.0.1:99999/b http://127.0.0.1:999/c",
            true,
            &served,
            &map,
            &mut out,
        );
        assert_eq!(
            &out[..],
            b"http://127.0.0.1:8080/a http://127.0.0.1:99999/b http://127.0.0.1:999/c"
        );
    }

    #[test]
    fn chunks_without_urls_pass_through_untouched() {
        let (served, map) = (served(), UrlMap::new("http://p"));
        let mut rewriter = Rewriter::new();
        let chunk = Bytes::from_static(b"PK\x03\x04 binary data with no scheme");
        let out = rewriter.push(chunk.clone(), &served, &map);
        assert_eq!(out.as_ptr(), chunk.as_ptr(), "the same buffer, not a copy");
    }

    #[test]
    fn a_url_split_at_every_offset_is_rewritten() {
        let input = r#"{"a":"https://dev.azure.com/x","b":"https:\/\/feeds.dev.azure.com\/y","c":"https://acct.blob.core.windows.net/z","d":"https://contoso.pkgs.visualstudio.com:443/n"}"#;
        let expected = whole(input);
        for cut in 0..=input.len() {
            assert_eq!(chunked(input, &[cut]), expected, "cut at {cut}");
        }
    }

    fn fragment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("https://dev.azure.com/".to_string()),
            Just("https://dev.azure.com".to_string()),
            Just("https:\\/\\/pkgs.dev.azure.com\\/".to_string()),
            Just("https://vsblobprod1.vsblob.visualstudio.com/A1/_apis".to_string()),
            Just("https://acct.blob.core.windows.net/c?sig=1".to_string()),
            Just("https://evil.example/".to_string()),
            Just("http".to_string()),
            Just("https:".to_string()),
            "[a-z/\"{}:,. ]{0,12}",
        ]
    }

    proptest! {
        #[test]
        fn chunking_never_changes_the_result(
            parts in proptest::collection::vec(fragment(), 0..12),
            cuts in proptest::collection::vec(0usize..200, 0..6),
        ) {
            let input: String = parts.concat();
            let mut cuts = cuts;
            cuts.sort_unstable();
            prop_assert_eq!(chunked(&input, &cuts), whole(&input));
        }

        #[test]
        fn no_allowed_host_url_survives_and_other_hosts_are_untouched(
            parts in proptest::collection::vec(fragment(), 0..12),
        ) {
            // Quoted, as URLs stand in JSON: run together, two fragments make another host.
            let input: String = parts.join("\"");
            let out = whole(&input);
            prop_assert!(!out.contains("https://dev.azure.com"), "{}", out);
            prop_assert!(!out.contains("https:\\/\\/pkgs.dev.azure.com"), "{}", out);
            prop_assert_eq!(
                out.matches("https://acct.blob.core.windows.net/c?sig=1").count(),
                input.matches("https://acct.blob.core.windows.net/c?sig=1").count()
            );
        }
    }
}
