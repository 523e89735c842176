//! Header hygiene both ways.
//!
//! Requests lose every credential the client sent, every header that would let the client steer
//! the upstream (forwarding and method-override headers), and hop-by-hop headers, including those
//! named in `Connection`; they gain the upstream's `Host` and the service principal's token.
//! Responses lose hop-by-hop headers and `Set-Cookie`: a session cookie of the service principal is
//! a credential too.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// RFC 9110 §7.6.1, plus the non-standard ones clients still send.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const CLIENT_ONLY: [HeaderName; 9] = [
    header::AUTHORIZATION,
    header::COOKIE,
    header::FORWARDED,
    // The proxy answers `Expect: 100-continue` itself; the upstream client cannot wait for one.
    header::EXPECT,
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

const FORWARDING_PREFIX: &str = "x-forwarded-";

static FED_AUTH_REDIRECT: HeaderName = HeaderName::from_static("x-tfs-fedauthredirect");

/// Rewrites a client's request headers into what Azure DevOps may see.
pub fn prepare_request(headers: &mut HeaderMap, host: &HeaderValue, bearer: HeaderValue) {
    remove_hop_by_hop(headers);
    for name in &CLIENT_ONLY {
        headers.remove(name);
    }
    if headers
        .keys()
        .any(|name| name.as_str().starts_with(FORWARDING_PREFIX))
    {
        let forwarding: Vec<HeaderName> = headers
            .keys()
            .filter(|name| name.as_str().starts_with(FORWARDING_PREFIX))
            .cloned()
            .collect();
        for name in forwarding {
            headers.remove(name);
        }
    }
    headers.insert(header::HOST, host.clone());
    headers.insert(header::AUTHORIZATION, bearer);
    // Makes Azure DevOps answer a refused token with 401 instead of a 302 to its sign-in page.
    headers.insert(
        FED_AUTH_REDIRECT.clone(),
        HeaderValue::from_static("Suppress"),
    );
}

/// Rewrites Azure DevOps' response headers into what the client may see.
pub fn prepare_response(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers);
    headers.remove(header::SET_COOKIE);
}

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    HeaderValue::from_str(v).expect("value"),
                )
            })
            .collect()
    }

    #[test]
    fn request_loses_credentials_steering_and_hop_by_hop_headers() {
        let mut headers = map(&[
            ("authorization", "Basic OnBhdA=="),
            ("proxy-authorization", "Basic eA=="),
            ("cookie", "a=b"),
            ("connection", "keep-alive, X-Named-One ,x-named-two"),
            ("x-named-one", "1"),
            ("x-named-two", "2"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=1.2.3.4"),
            ("x-http-method-override", "DELETE"),
            ("x-method-override", "DELETE"),
            ("x-original-url", "/admin"),
            ("host", "127.0.0.1:8080"),
            ("accept", "application/json"),
            ("user-agent", "git/2.47"),
        ]);
        prepare_request(
            &mut headers,
            &HeaderValue::from_static("dev.azure.com"),
            HeaderValue::from_static("Bearer t"),
        );
        let mut names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "accept",
                "authorization",
                "host",
                "user-agent",
                "x-tfs-fedauthredirect"
            ]
        );
        assert_eq!(headers[header::HOST], "dev.azure.com");
        assert_eq!(headers[header::AUTHORIZATION], "Bearer t");
        assert_eq!(headers.get_all(header::AUTHORIZATION).iter().count(), 1);
    }

    #[test]
    fn response_loses_cookies_and_hop_by_hop_headers() {
        let mut headers = map(&[
            ("connection", "x-secret-hop"),
            ("x-secret-hop", "1"),
            ("set-cookie", "session=sp"),
            ("proxy-authenticate", "Basic"),
            ("content-type", "application/json"),
        ]);
        prepare_response(&mut headers);
        let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type"]);
    }
}
