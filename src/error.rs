//! The answers the proxy gives itself, classified once and mapped to a status, a stable code and a
//! message a user can act on. Bodies are JSON with the request id; they never carry internals,
//! credentials or upstream error text.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};

use crate::auth::Unauthenticated;
use crate::metrics::{Refusal, UpstreamFailure};

#[derive(Debug)]
pub enum Rejection {
    /// The request target or a header is unsafe to forward.
    BadRequest(&'static str),
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
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::BadRequest(_) => StatusCode::BAD_REQUEST,
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
            _ => "bad_gateway",
        }
    }

    fn message(&self) -> String {
        match self {
            Rejection::BadRequest(why) => format!("{why}."),
            Rejection::MethodNotAllowed(method) => format!(
                "{method} is not proxied: the proxy forwards ordinary requests to its configured Azure DevOps host only."
            ),
            Rejection::Unauthenticated(Unauthenticated::Missing) => {
                "A client key is required: send it as the password of Basic authentication (as a PAT) \
                 or as `Authorization: Bearer <key>`."
                    .into()
            }
            Rejection::Unauthenticated(_) => {
                "The client key was not recognised. Use the key issued for this client by \
                 `ado-auth-proxy keys new`; PATs are not accepted."
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
            Rejection::BadRequest(_) | Rejection::BodyTimeout => Some(Refusal::BadRequest),
            Rejection::MethodNotAllowed(_) => Some(Refusal::MethodNotAllowed),
            Rejection::TokenUnavailable { .. } => Some(Refusal::TokenUnavailable),
            Rejection::BrowserRequest => Some(Refusal::Browser),
            Rejection::ForeignHost => Some(Refusal::ForeignHost),
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
