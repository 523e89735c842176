//! The answers the proxy gives itself, classified once and mapped to a status, a stable code and a
//! message a user can act on. Bodies are JSON with the request id; they never carry internals,
//! credentials or upstream error text.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};

#[derive(Debug)]
pub enum Rejection {
    /// The request target or a header is unsafe to forward.
    BadRequest(&'static str),
    /// `/_host/{name}/...` names a host that is not an Azure DevOps host this proxy serves.
    UnknownHost(Box<str>),
    MethodNotAllowed(Method),
    Unauthenticated(Unauthenticated),
    /// No rule of this client admits the method and path.
    Forbidden {
        client: Arc<str>,
        method: Method,
        path: String,
    },
    BrowserRequest,
    ForeignHost,
    TokenUnavailable {
        retry_after: Duration,
    },
    Upstream(UpstreamFailure),
    /// Azure DevOps tried to switch protocols, which the proxy never performs.
    UpstreamUpgrade,
    /// Azure DevOps refused the identity's token and the request could not be replayed with a
    /// renewed one (`replayed`: it was, and the renewed token was refused too).
    TokenRefused {
        replayed: bool,
    },
    /// A small request body, read whole for a possible replay, did not arrive in time.
    BodyTimeout,
    /// A client over its own limits, or a low-priority client of an identity Azure DevOps is
    /// throttling that would have to wait longer than allowed.
    Limited {
        limit: Limit,
        retry_after: Duration,
    },
}

/// Which limit a 429 from the proxy itself enforces; a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The client's `max_concurrent_requests`.
    Concurrency,
    /// The client's `max_requests_per_second` (and `burst`).
    Rate,
    /// Azure DevOps throttles the client's identity, and this client's priority waits.
    Throttled,
}

impl Limit {
    pub const ALL: [Limit; 3] = [Limit::Concurrency, Limit::Rate, Limit::Throttled];

    pub fn label(self) -> &'static str {
        match self {
            Limit::Concurrency => "concurrency",
            Limit::Rate => "rate",
            Limit::Throttled => "throttled",
        }
    }
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::BadRequest(_) | Rejection::UnknownHost(_) => StatusCode::BAD_REQUEST,
            Rejection::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Rejection::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Rejection::Forbidden { .. } | Rejection::BrowserRequest | Rejection::ForeignHost => {
                StatusCode::FORBIDDEN
            }
            Rejection::TokenUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::Upstream(UpstreamFailure::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            // The client is gone; the status only shows in the audit line.
            Rejection::Upstream(UpstreamFailure::ClientAborted) => StatusCode::BAD_REQUEST,
            Rejection::Upstream(_)
            | Rejection::UpstreamUpgrade
            | Rejection::TokenRefused { .. } => StatusCode::BAD_GATEWAY,
            Rejection::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Rejection::Limited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    fn code(&self) -> &'static str {
        match self.status() {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::UNAUTHORIZED => "unauthenticated",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::SERVICE_UNAVAILABLE => "token_unavailable",
            StatusCode::GATEWAY_TIMEOUT => "gateway_timeout",
            StatusCode::REQUEST_TIMEOUT => "request_timeout",
            StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
            _ => "bad_gateway",
        }
    }

    fn message(&self) -> String {
        match self {
            Rejection::BadRequest(why) => format!("{why}."),
            Rejection::UnknownHost(host) => format!(
                "{host} is not an Azure DevOps host this proxy serves (upstream.hosts). Storage \
                 and CDN links are fetched directly, without the proxy and without a credential."
            ),
            Rejection::MethodNotAllowed(method) => format!(
                "{method} is not proxied: the proxy forwards ordinary requests to its configured Azure DevOps host only."
            ),
            Rejection::Unauthenticated(Unauthenticated::Missing) => {
                "A client key is required: send it as the password of Basic authentication (as a PAT) \
                 or as `Authorization: Bearer <key>`."
                    .into()
            }
            Rejection::Unauthenticated(_) => {
                "The client key or token was not recognised. Use the key issued for this client \
                 by `ado-auth-proxy keys new`, or a token of the issuer, audience and claims \
                 configured for it; PATs are not accepted."
                    .into()
            }
            Rejection::Forbidden {
                client,
                method,
                path,
            } => format!(
                "No allowlist rule allows {method} {path} for client {client}. Ask the proxy's operator \
                 to add a rule if this call is needed."
            ),
            Rejection::BrowserRequest => {
                "Requests from web browsers are refused: this proxy is for tools such as git, curl \
                 and the SDKs."
                    .into()
            }
            Rejection::ForeignHost => {
                "The Host header does not name this proxy; use the address it listens on (e.g. \
                 127.0.0.1:8080) or one of inbound.allowed_hosts."
                    .into()
            }
            Rejection::TokenUnavailable { retry_after } => format!(
                "The proxy holds no valid Entra ID token for its service principal (Entra ID unreachable or the \
                 credential is wrong; see the proxy's log and /readyz). Retry in {} s.",
                retry_after.as_secs()
            ),
            Rejection::Upstream(UpstreamFailure::Connect) => {
                "Azure DevOps could not be reached (connection failed). Retry later.".into()
            }
            Rejection::Upstream(UpstreamFailure::Timeout) => {
                "Azure DevOps did not answer in time. Retry later.".into()
            }
            Rejection::Upstream(UpstreamFailure::ClientAborted) => {
                "The request body could not be read to its end.".into()
            }
            Rejection::Upstream(_) => {
                "The connection to Azure DevOps failed before it answered. Retry later.".into()
            }
            Rejection::UpstreamUpgrade => {
                "Azure DevOps asked to switch protocols, which the proxy does not do.".into()
            }
            Rejection::TokenRefused { replayed: true } => {
                "Azure DevOps refused the service principal's token, and a freshly issued one too. \
                 The principal may not be a member of this organization or lack access; run \
                 `ado-auth-proxy check --organization ORG` on the proxy."
                    .into()
            }
            Rejection::TokenRefused { replayed: false } => {
                "Azure DevOps refused the service principal's token, and this request could not be \
                 replayed with a renewed one (its body was streamed, a renewal was just tried, or \
                 the identity's endpoint hands out the same token). Retry it; if this persists, run \
                 `ado-auth-proxy check --organization ORG` on the proxy."
                    .into()
            }
            Rejection::BodyTimeout => "The request body did not arrive in time.".into(),
            Rejection::Limited {
                limit: Limit::Concurrency,
                retry_after,
            } => format!(
                "This client has as many requests in flight as the proxy allows it \
                 (max_concurrent_requests). Retry in {} s.",
                retry_after.as_secs().max(1)
            ),
            Rejection::Limited {
                limit: Limit::Rate,
                retry_after,
            } => format!(
                "This client is over the request rate the proxy allows it \
                 (max_requests_per_second). Retry in {} s.",
                retry_after.as_secs().max(1)
            ),
            Rejection::Limited {
                limit: Limit::Throttled,
                retry_after,
            } => format!(
                "Azure DevOps is throttling this client's identity, and higher-priority clients go \
                 first. Retry in {} s.",
                retry_after.as_secs().max(1)
            ),
        }
    }

    pub fn upstream_failure(&self) -> Option<UpstreamFailure> {
        match self {
            Rejection::Upstream(failure) => Some(*failure),
            Rejection::UpstreamUpgrade => Some(UpstreamFailure::Protocol),
            Rejection::TokenRefused { .. } => Some(UpstreamFailure::TokenRefused),
            _ => None,
        }
    }

    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            Rejection::BadRequest(_) | Rejection::UnknownHost(_) | Rejection::BodyTimeout => {
                Some(Refusal::BadRequest)
            }
            Rejection::MethodNotAllowed(_) => Some(Refusal::MethodNotAllowed),
            Rejection::TokenUnavailable { .. } => Some(Refusal::TokenUnavailable),
            Rejection::BrowserRequest => Some(Refusal::Browser),
            Rejection::ForeignHost => Some(Refusal::ForeignHost),
            Rejection::Limited { limit, .. } => Some(match limit {
                Limit::Concurrency => Refusal::ClientConcurrency,
                Limit::Rate => Refusal::ClientRate,
                Limit::Throttled => Refusal::IdentityThrottled,
            }),
            _ => None,
        }
    }

    /// The response head and JSON body.
    pub fn to_response(&self, request_id: &str) -> Response<Bytes> {
        let body = serde_json::json!({
            "error": self.code(),
            "message": self.message(),
            "request_id": request_id,
        });
        let mut response = Response::new(Bytes::from(body.to_string()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            Rejection::TokenUnavailable { retry_after } => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after.as_secs()),
                );
            }
            Rejection::Limited { retry_after, .. } => {
                // Whole seconds, never 0: a client told "retry in 0 s" retries at once.
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after.as_secs_f64().ceil().max(1.0) as u64),
                );
            }
            Rejection::Unauthenticated(_) => {
                // Makes git ask its credential helper, and curl and browsers prompt.
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"ado-auth-proxy\""),
                );
            }
            Rejection::MethodNotAllowed(_) => {
                headers.insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
                );
            }
            _ => {}
        }
        response
    }
}

/// Why a caller is not authenticated; a metric label. The `Token*` reasons are a keyless
/// client's OIDC token that was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauthenticated {
    Missing,
    Malformed,
    Unknown,
    /// Not a JWT, or one whose parts do not decode.
    TokenMalformed,
    TokenTooLarge,
    /// Not RS256, PS256 or ES256 (`none` and symmetric algorithms included), or not the one
    /// its key is for.
    TokenAlgorithm,
    /// No keyless client names its `iss`.
    TokenIssuer,
    /// Its `kid` is not among the issuer's keys.
    TokenKey,
    TokenSignature,
    TokenExpired,
    TokenNotYetValid,
    /// Not meant for a configured audience.
    TokenAudience,
    /// Valid, but no client's claim patterns match it.
    TokenClaims,
}

impl Unauthenticated {
    pub const ALL: [Unauthenticated; 13] = [
        Unauthenticated::Missing,
        Unauthenticated::Malformed,
        Unauthenticated::Unknown,
        Unauthenticated::TokenMalformed,
        Unauthenticated::TokenTooLarge,
        Unauthenticated::TokenAlgorithm,
        Unauthenticated::TokenIssuer,
        Unauthenticated::TokenKey,
        Unauthenticated::TokenSignature,
        Unauthenticated::TokenExpired,
        Unauthenticated::TokenNotYetValid,
        Unauthenticated::TokenAudience,
        Unauthenticated::TokenClaims,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Unauthenticated::Missing => "missing",
            Unauthenticated::Malformed => "malformed",
            Unauthenticated::Unknown => "unknown",
            Unauthenticated::TokenMalformed => "token_malformed",
            Unauthenticated::TokenTooLarge => "token_too_large",
            Unauthenticated::TokenAlgorithm => "token_algorithm",
            Unauthenticated::TokenIssuer => "token_issuer",
            Unauthenticated::TokenKey => "token_key",
            Unauthenticated::TokenSignature => "token_signature",
            Unauthenticated::TokenExpired => "token_expired",
            Unauthenticated::TokenNotYetValid => "token_not_yet_valid",
            Unauthenticated::TokenAudience => "token_audience",
            Unauthenticated::TokenClaims => "token_claims",
        }
    }
}

/// Why the proxy answered a request itself instead of forwarding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    BadRequest,
    MethodNotAllowed,
    TokenUnavailable,
    /// A web browser's request (`Origin`, `Sec-Fetch-Site`).
    Browser,
    /// Open mode, and a `Host` that is not one of the listener's own names.
    ForeignHost,
    ClientConcurrency,
    ClientRate,
    /// A lower-priority client's turn while Azure DevOps throttles its identity.
    IdentityThrottled,
}

impl Refusal {
    pub const ALL: [Refusal; 8] = [
        Refusal::BadRequest,
        Refusal::MethodNotAllowed,
        Refusal::TokenUnavailable,
        Refusal::Browser,
        Refusal::ForeignHost,
        Refusal::ClientConcurrency,
        Refusal::ClientRate,
        Refusal::IdentityThrottled,
    ];
    pub fn label(self) -> &'static str {
        match self {
            Refusal::BadRequest => "bad_request",
            Refusal::MethodNotAllowed => "method_not_allowed",
            Refusal::TokenUnavailable => "token_unavailable",
            Refusal::Browser => "browser",
            Refusal::ForeignHost => "foreign_host",
            Refusal::ClientConcurrency => "client_concurrency",
            Refusal::ClientRate => "client_rate",
            Refusal::IdentityThrottled => "identity_throttled",
        }
    }
}

/// What went wrong between the proxy and Azure DevOps, or with the client mid-transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamFailure {
    Connect,
    Timeout,
    Reset,
    ResponseBody,
    ClientAborted,
    Protocol,
    /// Azure DevOps refused the service principal's token (401, or its sign-in answers).
    TokenRefused,
}

impl UpstreamFailure {
    pub const ALL: [UpstreamFailure; 7] = [
        UpstreamFailure::Connect,
        UpstreamFailure::Timeout,
        UpstreamFailure::Reset,
        UpstreamFailure::ResponseBody,
        UpstreamFailure::ClientAborted,
        UpstreamFailure::Protocol,
        UpstreamFailure::TokenRefused,
    ];
    pub fn label(self) -> &'static str {
        match self {
            UpstreamFailure::Connect => "connect",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::Reset => "reset",
            UpstreamFailure::ResponseBody => "response_body",
            UpstreamFailure::ClientAborted => "client_aborted",
            UpstreamFailure::Protocol => "protocol",
            UpstreamFailure::TokenRefused => "token_refused",
        }
    }
}

/// The error and its causes on one line, for logs (they hold no credentials: hyper never prints
/// headers).
pub fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole vocabulary in one table: what each answer's status, code and metric label are.
    #[test]
    fn every_rejection_has_its_status_code_and_label() {
        let forbidden = Rejection::Forbidden {
            client: "ci".into(),
            method: Method::GET,
            path: "/x".into(),
        };
        let unavailable = Rejection::TokenUnavailable {
            retry_after: Duration::from_secs(5),
        };
        // (answer, status, code, refusal label, upstream failure label)
        type Row = (
            Rejection,
            u16,
            &'static str,
            Option<&'static str>,
            Option<&'static str>,
        );
        let limited = |limit| Rejection::Limited {
            limit,
            retry_after: Duration::from_millis(200),
        };
        let table: Vec<Row> = vec![
            (
                limited(Limit::Concurrency),
                429,
                "too_many_requests",
                Some("client_concurrency"),
                None,
            ),
            (
                limited(Limit::Rate),
                429,
                "too_many_requests",
                Some("client_rate"),
                None,
            ),
            (
                limited(Limit::Throttled),
                429,
                "too_many_requests",
                Some("identity_throttled"),
                None,
            ),
            (
                Rejection::BadRequest("bad"),
                400,
                "bad_request",
                Some("bad_request"),
                None,
            ),
            (
                Rejection::UnknownHost("evil.example".into()),
                400,
                "bad_request",
                Some("bad_request"),
                None,
            ),
            (
                Rejection::BodyTimeout,
                408,
                "request_timeout",
                Some("bad_request"),
                None,
            ),
            (
                Rejection::MethodNotAllowed(Method::CONNECT),
                405,
                "method_not_allowed",
                Some("method_not_allowed"),
                None,
            ),
            (
                Rejection::Unauthenticated(Unauthenticated::Missing),
                401,
                "unauthenticated",
                None,
                None,
            ),
            (
                Rejection::Unauthenticated(Unauthenticated::Unknown),
                401,
                "unauthenticated",
                None,
                None,
            ),
            (forbidden, 403, "forbidden", None, None),
            (
                Rejection::BrowserRequest,
                403,
                "forbidden",
                Some("browser"),
                None,
            ),
            (
                Rejection::ForeignHost,
                403,
                "forbidden",
                Some("foreign_host"),
                None,
            ),
            (
                unavailable,
                503,
                "token_unavailable",
                Some("token_unavailable"),
                None,
            ),
            (
                Rejection::Upstream(UpstreamFailure::Connect),
                502,
                "bad_gateway",
                None,
                Some("connect"),
            ),
            (
                Rejection::Upstream(UpstreamFailure::Timeout),
                504,
                "gateway_timeout",
                None,
                Some("timeout"),
            ),
            (
                Rejection::Upstream(UpstreamFailure::Reset),
                502,
                "bad_gateway",
                None,
                Some("reset"),
            ),
            (
                Rejection::Upstream(UpstreamFailure::ClientAborted),
                400,
                "bad_request",
                None,
                Some("client_aborted"),
            ),
            (
                Rejection::UpstreamUpgrade,
                502,
                "bad_gateway",
                None,
                Some("protocol"),
            ),
            (
                Rejection::TokenRefused { replayed: true },
                502,
                "bad_gateway",
                None,
                Some("token_refused"),
            ),
        ];
        for (rejection, status, code, refusal, failure) in table {
            assert_eq!(rejection.status().as_u16(), status, "{rejection:?}");
            assert_eq!(rejection.code(), code, "{rejection:?}");
            assert_eq!(
                rejection.refusal().map(Refusal::label),
                refusal,
                "{rejection:?}"
            );
            assert_eq!(
                rejection.upstream_failure().map(UpstreamFailure::label),
                failure,
                "{rejection:?}"
            );
            let response = rejection.to_response("00000000000000ab");
            let body: serde_json::Value = serde_json::from_slice(response.body()).expect("json");
            assert_eq!(body["error"], code);
            assert_eq!(body["request_id"], "00000000000000ab");
            assert_eq!(
                response.headers().contains_key(header::WWW_AUTHENTICATE),
                status == 401,
                "{rejection:?}"
            );
            if status == 429 {
                // 200 ms is "1", never "0": a client told 0 retries at once.
                assert_eq!(
                    response.headers()[header::RETRY_AFTER],
                    "1",
                    "{rejection:?}"
                );
            }
        }
    }

    #[test]
    fn labels_within_a_metric_are_distinct() {
        fn distinct(mut labels: Vec<&str>) {
            let all = labels.len();
            labels.sort_unstable();
            labels.dedup();
            assert_eq!(labels.len(), all, "{labels:?}");
        }
        distinct(UpstreamFailure::ALL.iter().map(|f| f.label()).collect());
        distinct(Refusal::ALL.iter().map(|r| r.label()).collect());
        distinct(Unauthenticated::ALL.iter().map(|r| r.label()).collect());
    }
}
