//! What a client may ask the proxy to forward: origin-form targets and seven methods, spelled
//! exactly (GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS).
//!
//! The upstream is fixed by configuration, so anything that names another host (absolute-form
//! targets, `CONNECT`) or asks the proxy to act as something other than a reverse proxy (`TRACE`,
//! `OPTIONS *`) is refused here, before any credential is attached.

use http::{Request, Version};

use crate::error::Rejection;
use crate::policy::rules::FORWARDED_METHODS;

pub fn check<B>(request: &Request<B>) -> Result<(), Rejection> {
    let method = request.method();
    // An explicit set, compared by exact spelling: `trace`, `TRACK` or `get` are methods of
    // their own to HTTP, and a server behind may still read them as TRACE or GET.
    if !FORWARDED_METHODS.contains(method) {
        return Err(Rejection::MethodNotAllowed(method.clone()));
    }
    let uri = request.uri();
    // HTTP/2 always carries scheme and authority as pseudo-headers; over HTTP/1 they mean the
    // client sent an absolute-form target, i.e. it is using us as a forward proxy.
    if request.version() < Version::HTTP_2 && (uri.scheme().is_some() || uri.authority().is_some())
    {
        return Err(Rejection::BadRequest(
            "Absolute-form request targets are refused: send the path only, the proxy chooses the host",
        ));
    }
    if !uri.path().starts_with('/') {
        return Err(Rejection::BadRequest(
            "The request target must be a path starting with '/'",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, target: &str, version: Version) -> Request<()> {
        Request::builder()
            .method(method)
            .uri(target)
            .version(version)
            .body(())
            .expect("request")
    }

    #[test]
    fn only_origin_form_targets_and_ordinary_methods_pass() {
        assert!(
            check(&request(
                "GET",
                "/contoso/_apis/projects?x=1",
                Version::HTTP_11
            ))
            .is_ok()
        );
        assert!(check(&request("GET", "https://dev.azure.com/a", Version::HTTP_2)).is_ok());
        for (method, target) in [
            ("GET", "http://evil.example/x"),
            ("GET", "*"),
            ("OPTIONS", "*"),
            ("CONNECT", "evil.example:443"),
            ("TRACE", "/"),
            ("trace", "/"),
            ("TRACK", "/"),
            ("connect", "/"),
            ("get", "/"),
            ("head", "/"),
            ("PROPFIND", "/"),
        ] {
            assert!(
                check(&request(method, target, Version::HTTP_11)).is_err(),
                "{method} {target}"
            );
        }
    }
}
