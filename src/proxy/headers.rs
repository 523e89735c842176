//! Header hygiene both ways.
//!
//! Requests lose every credential the client sent, every header that would let the client steer
//! the upstream (forwarding and method-override headers), and hop-by-hop headers, including those
//! named in `Connection`; they gain the upstream's `Host` and the service principal's token.
//! Responses lose hop-by-hop headers, `WWW-Authenticate` and `Set-Cookie`: a session cookie of the
//! service principal is a credential too.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// RFC 9110 §7.6.1, plus the non-standard ones clients still send.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Headers of the client that must not reach Azure DevOps: credentials; whole families that tell
/// a server behind a front end where a request came from or where it should go (IIS and ASP.NET
/// honour several); method overrides; and the two Azure DevOps headers that change how it
/// authenticates the caller. (`Authorization`, `Host` and `X-TFS-FedAuthRedirect` are replaced,
/// not removed.) A denylist of families rather than an allowlist: git, the SDKs and the package
/// managers send headers of their own (`X-TFS-Session`, `X-VSS-E2EID`, `X-NuGet-*`, `npm-*`)
/// that Azure DevOps uses for tracing and content negotiation.
fn is_client_only(name: &str) -> bool {
    matches!(
        name,
        "cookie"
            | "forwarded"
            // The proxy answers `Expect: 100-continue` itself; the upstream client cannot wait.
            | "expect"
            | "x-rewrite-url"
            | "x-http-method-override"
            | "x-http-method"
            | "x-method-override"
            | "x-host"
            | "x-real-ip"
            | "x-client-ip"
            | "client-ip"
            | "true-client-ip"
            | "x-cluster-client-ip"
            | "cf-connecting-ip"
            | "x-vss-forcemsapassthrough"
    ) || name.starts_with("x-forwarded-")
        || name.starts_with("x-original-")
        || name.starts_with("x-ms-original-")
        || name.starts_with("x-arr-")
}

static FED_AUTH_REDIRECT: HeaderName = HeaderName::from_static("x-tfs-fedauthredirect");

/// Rewrites a client's request headers into what Azure DevOps may see.
pub fn prepare_request(headers: &mut HeaderMap, host: &HeaderValue, bearer: HeaderValue) {
    remove(headers, |name| is_hop_by_hop(name) || is_client_only(name));
    // `insert` replaces every value of a name, so no second credential or host survives.
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
    // Azure DevOps' `WWW-Authenticate` names Entra ID as the place to sign in: the client does not
    // authenticate to Azure DevOps, and git would take it for a password prompt.
    remove(headers, |name| {
        is_hop_by_hop(name)
            || name == "set-cookie"
            || name == "set-cookie2"
            || name == "www-authenticate"
    });
}

/// Removes the headers `doomed` picks and those named in `Connection`, in one pass over the
/// names present; allocates only when there is something to remove.
fn remove(headers: &mut HeaderMap, doomed: impl Fn(&str) -> bool) {
    let mut names: Vec<HeaderName> = Vec::new();
    // Noticed while passing over the names anyway: most messages have no `Connection`, and
    // looking it up costs a hash.
    let mut connection = false;
    for name in headers.keys() {
        connection |= name == header::CONNECTION;
        if doomed(name.as_str()) {
            names.push(name.clone());
        }
    }
    if connection {
        names.extend(
            headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(','))
                .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok()),
        );
    }
    for name in names {
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
