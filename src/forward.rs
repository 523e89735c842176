//! The connection to Azure DevOps: a pooled hyper client (HTTP/1.1, or h2 when TLS ALPN offers it)
//! and the mapping of a request target onto the configured upstream.
//!
//! The upstream's scheme and authority come from configuration only; the request contributes its
//! path and query, byte for byte. Redirects are never followed and bodies are never decompressed.

use std::error::Error as _;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::{ClientBodyError, UploadBody};
use crate::config;
use crate::metrics::UpstreamFailure;

pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, UploadBody>,
    scheme: Scheme,
    authority: Authority,
    host_header: HeaderValue,
    response_timeout: Duration,
    max_replay_body_bytes: u64,
}

impl Upstream {
    pub fn new(config: &config::Upstream, tls: rustls::ClientConfig) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            // Plain http is allowed by configuration only for loopback upstreams.
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .timer(TokioTimer::new())
            .build(connector);
        Self {
            client,
            scheme: config.scheme.clone(),
            authority: config.authority.clone(),
            host_header: config.host_header.clone(),
            response_timeout: config.response_timeout,
            max_replay_body_bytes: config.max_replay_body_bytes as u64,
        }
    }

    pub fn max_replay_body_bytes(&self) -> u64 {
        self.max_replay_body_bytes
    }

    pub fn host_header(&self) -> &HeaderValue {
        &self.host_header
    }

    /// The upstream URI for a request target. Built from parts, never by joining strings, so a
    /// path such as `//evil.example/x` stays a path on the configured host.
    pub fn target(&self, path_and_query: Option<&PathAndQuery>) -> Result<Uri, http::Error> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(
                path_and_query
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/")),
            )
            .build()
    }

    /// Sends the request and waits for the response headers, up to the response timeout. The body
    /// then streams with no total deadline: a clone of a large repository takes as long as it takes.
    pub async fn send(
        &self,
        request: Request<UploadBody>,
    ) -> Result<Response<Incoming>, UpstreamFailure> {
        match tokio::time::timeout(self.response_timeout, self.client.request(request)).await {
            Err(_) => Err(UpstreamFailure::Timeout),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => {
                let failure = classify(&error);
                tracing::debug!(error = %describe(&error), kind = failure.label(), "upstream request failed");
                Err(failure)
            }
        }
    }
}

fn classify(error: &hyper_util::client::legacy::Error) -> UpstreamFailure {
    if error.is_connect() {
        return UpstreamFailure::Connect;
    }
    let mut source = error.source();
    while let Some(cause) = source {
        if cause.is::<ClientBodyError>() {
            return UpstreamFailure::ClientAborted;
        }
        source = cause.source();
    }
    UpstreamFailure::Reset
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

    #[tokio::test]
    async fn the_request_never_chooses_the_host() {
        let config = crate::config::Config::from_toml(
            "[identities.default]\ntenant_id = \"t\"\nclient_id = \"c\"\ncredential = { kind = \"client_secret\", secret = \"s\" }",
        )
        .expect("config");
        let tls = crate::tls::client_config(None).expect("tls");
        let upstream = Upstream::new(&config.upstream, tls);
        for target in ["//evil.example/x", "/a?b=//evil.example", "/@evil.example"] {
            let uri = upstream
                .target(Some(
                    &PathAndQuery::from_maybe_shared(target).expect("target"),
                ))
                .expect("uri");
            assert_eq!(uri.host(), Some("dev.azure.com"), "{target}");
            assert_eq!(uri.path_and_query().map(|p| p.as_str()), Some(target));
        }
    }
}
