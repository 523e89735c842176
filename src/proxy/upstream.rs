//! The connection to Azure DevOps: hyper's client connections over the hyper-util + rustls
//! connector, pooled (see `pool`; HTTP/1.1, or h2 when TLS ALPN offers it), and the mapping of a
//! request target onto the configured upstream.
//!
//! The upstream's scheme and authority come from configuration only; the request contributes its
//! path and query, byte for byte. Redirects are never followed and bodies are never decompressed.

use std::error::Error as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;

use super::exchange::Upload;
use super::resolve::Resolve;
use crate::config;
use crate::error::{UpstreamFailure, describe};
use crate::proxy::body::{ClientBodyError, UploadBody};
use crate::proxy::pool::{Pool, Sender};

pub struct Upstream {
    pool: Pool,
    scheme: Scheme,
    authority: Authority,
    host_header: HeaderValue,
    response_timeout: Duration,
    max_replay_body_bytes: u64,
}

impl Upstream {
    /// The default upstream, `upstream.url`.
    pub fn new(config: &config::Upstream, tls: rustls::ClientConfig) -> Self {
        Self::to(
            config,
            config.scheme.clone(),
            config.authority.clone(),
            config.host_header.clone(),
            tls,
        )
    }

    /// Another Azure DevOps host, always over TLS on its standard port.
    fn sibling(config: &config::Upstream, host: &str, tls: rustls::ClientConfig) -> Option<Self> {
        let authority = Authority::try_from(host).ok()?;
        let host_header = HeaderValue::from_str(host).ok()?;
        Some(Self::to(config, Scheme::HTTPS, authority, host_header, tls))
    }

    fn to(
        config: &config::Upstream,
        scheme: Scheme,
        authority: Authority,
        host_header: HeaderValue,
        tls: rustls::ClientConfig,
    ) -> Self {
        let mut http = HttpConnector::new_with_resolver(Resolve::new(&config.resolve));
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        // A clone can stream for many minutes; TCP keep-alive notices a peer that vanished.
        http.set_keepalive(Some(Duration::from_secs(30)));
        let destination = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .expect("scheme and authority were validated with the configuration");
        let egress = crate::egress::Connector::new(&config.egress, &destination, http);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            // Plain http is allowed by configuration only for loopback upstreams.
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(egress);
        Self {
            pool: Pool::new(
                connector,
                destination,
                config.pool_idle_timeout,
                config.connect_timeout,
            ),
            scheme,
            authority,
            host_header,
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
    ///
    /// The request is taken from `slot` by the connection that sends it, and put back if no
    /// connection took it. Passed by reference, it lives once in the caller's future instead of
    /// once more in every future on the way to hyper. The timeout counts from `sent_at`.
    pub async fn send(
        &self,
        slot: &mut Option<Request<UploadBody>>,
        sent_at: Instant,
        streamed: Option<&Upload>,
    ) -> Result<Response<Incoming>, SendError> {
        if let Some(upload) = streamed {
            // Boxed: a streamed upload is rare, and its future is not every request's.
            return Box::pin(self.send_streamed(slot, sent_at, upload)).await;
        }
        let exchange = self.exchange(slot, sent_at);
        match crate::timer::timeout_from(sent_at, self.response_timeout, exchange).await {
            Err(_) => Err(SendError::from(UpstreamFailure::Timeout)),
            Ok(result) => result,
        }
    }

    /// The response timeout starts when the body's last byte has gone out: a large push over a
    /// slow link takes as long as it takes, and only then is Azure DevOps' answer awaited.
    async fn send_streamed(
        &self,
        slot: &mut Option<Request<UploadBody>>,
        sent_at: Instant,
        upload: &Upload,
    ) -> Result<Response<Incoming>, SendError> {
        let deadline = async {
            upload.sent().await;
            crate::timer::Deadline::after(self.response_timeout).await;
        };
        tokio::select! {
            result = self.exchange(slot, sent_at) => result,
            () = deadline => Err(SendError::from(UpstreamFailure::Timeout)),
        }
    }

    async fn exchange(
        &self,
        slot: &mut Option<Request<UploadBody>>,
        sent_at: Instant,
    ) -> Result<Response<Incoming>, SendError> {
        let Some(idempotent) = slot
            .as_ref()
            .map(|request| request.method().is_idempotent())
        else {
            return Err(SendError::from(UpstreamFailure::Protocol));
        };
        // A pooled connection can close under a request (keep-alive ended, h2 GOAWAY); a request
        // it never took goes to another one. Bounded, in case a server keeps doing that.
        let mut retries_left = MAX_RETRIES;
        loop {
            // The first attempt follows the clock reading at once; a retry comes after waiting.
            let now = if retries_left == MAX_RETRIES {
                sent_at
            } else {
                Instant::now()
            };
            let (sender, reused) = self.pool.checkout(now).await.map_err(|error| {
                tracing::debug!(error = %describe(&*error), "upstream connect failed");
                SendError::from(UpstreamFailure::Connect)
            })?;
            let result = match sender {
                Sender::Http2(mut sender) => {
                    match sender.ready().await {
                        Ok(()) => {
                            // A statement of its own: a temporary of the `match` would be held
                            // across the `await`, doubling the future.
                            let request = self.absolute(slot.take())?;
                            sender.try_send_request(request).await
                        }
                        // Closed since the checkout (the pool drops closed connections): the
                        // request is still ours to send elsewhere.
                        Err(_) if reused && retries_left > 0 => {
                            retries_left -= 1;
                            continue;
                        }
                        Err(error) => return Err(failure(&error, idempotent)),
                    }
                }
                Sender::Http1(mut sender) => {
                    let Some(mut request) = slot.take() else {
                        return Err(SendError::from(UpstreamFailure::Protocol));
                    };
                    to_origin_form(&mut request);
                    let response = sender.try_send_request(request).await;
                    if response.is_ok() {
                        self.pool.checkin(sender);
                    }
                    response
                }
            };
            match result {
                Ok(response) => return Ok(response),
                Err(mut error) => match error.take_message() {
                    // A reused connection closed before it took the request (the server ended
                    // the keep-alive, or sent GOAWAY): nothing was sent, so another connection
                    // may carry it.
                    Some(unsent) if reused && retries_left > 0 => {
                        retries_left -= 1;
                        *slot = Some(unsent);
                    }
                    _ => return Err(failure(error.error(), idempotent)),
                },
            }
        }
    }

    /// h2 carries scheme and authority as pseudo-headers: the absolute URI, from configuration.
    fn absolute(
        &self,
        request: Option<Request<UploadBody>>,
    ) -> Result<Request<UploadBody>, SendError> {
        let mut request = request.ok_or(SendError::from(UpstreamFailure::Protocol))?;
        *request.uri_mut() = self
            .target(request.uri().path_and_query())
            .map_err(|_| SendError::from(UpstreamFailure::Protocol))?;
        Ok(request)
    }
}

/// How many other Azure DevOps hosts one worker keeps connections to; the least recently used
/// goes when another is needed (its requests in flight finish on it).
const MAX_SIBLINGS: usize = 32;

/// One worker's upstreams: the default one, and a pool per other Azure DevOps host, created on
/// first use and dropped once idle.
pub struct Upstreams {
    default: Upstream,
    config: config::Upstream,
    tls: rustls::ClientConfig,
    siblings: Mutex<Vec<Sibling>>,
}

struct Sibling {
    host: Box<str>,
    upstream: Arc<Upstream>,
    used: Instant,
}

impl Upstreams {
    /// Must be called inside the worker's runtime (pools start their idle-closing tasks).
    pub fn new(config: &config::Upstream, tls: rustls::ClientConfig) -> Self {
        Self {
            default: Upstream::new(config, tls.clone()),
            config: config.clone(),
            tls,
            siblings: Mutex::new(Vec::new()),
        }
    }

    pub fn default_upstream(&self) -> &Upstream {
        &self.default
    }

    /// The upstream of another host, an allowed and checked host name.
    pub fn sibling(&self, host: &str, now: Instant) -> Option<Arc<Upstream>> {
        let mut siblings = self.siblings.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sibling) = siblings
            .iter_mut()
            .find(|s| s.host.eq_ignore_ascii_case(host))
        {
            sibling.used = now;
            return Some(sibling.upstream.clone());
        }
        // A host unused for longer than its connections stay idle has none left.
        let idle = self.config.pool_idle_timeout;
        siblings.retain(|s| now.saturating_duration_since(s.used) < idle);
        if siblings.len() >= MAX_SIBLINGS
            && let Some(oldest) = (0..siblings.len()).min_by_key(|&i| siblings[i].used)
        {
            siblings.swap_remove(oldest);
        }
        let upstream = Arc::new(Upstream::sibling(&self.config, host, self.tls.clone())?);
        siblings.push(Sibling {
            host: host.to_ascii_lowercase().into(),
            upstream: upstream.clone(),
            used: now,
        });
        Some(upstream)
    }
}

/// HTTP/1.1 to an origin server: origin-form, the path and query only. The target arrives so
/// (see `target::check`) unless an h2 attempt before this one made it absolute; only
/// configuration ever names the host.
fn to_origin_form(request: &mut Request<UploadBody>) {
    if request.uri().authority().is_some() {
        let path_and_query = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *request.uri_mut() = Uri::from(path_and_query);
    }
}

/// How many times a request no connection took goes to another one.
const MAX_RETRIES: u32 = 3;

/// Why a request got no response, and whether Azure DevOps certainly never processed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendError {
    pub failure: UpstreamFailure,
    /// Refused before processing (RFC 9113 §8.7), so it may be sent again: an h2 stream reset
    /// with `REFUSED_STREAM`, or, for an idempotent method, one cut off by a graceful `GOAWAY`
    /// (a load balancer recycling the connection).
    pub unprocessed: bool,
}

impl From<UpstreamFailure> for SendError {
    fn from(failure: UpstreamFailure) -> Self {
        Self {
            failure,
            unprocessed: false,
        }
    }
}

fn failure(error: &hyper::Error, idempotent: bool) -> SendError {
    let failure = classify(error);
    tracing::debug!(error = %describe(error), kind = failure.label(), "upstream request failed");
    SendError {
        failure,
        unprocessed: unprocessed(error, idempotent),
    }
}

/// A graceful `GOAWAY` errors the streams above its last processed one at once, but its error
/// also ends, later, any stream the server dropped when closing; only an idempotent request may
/// be sent again on its word.
fn unprocessed(error: &hyper::Error, idempotent: bool) -> bool {
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(h2) = cause.downcast_ref::<h2::Error>() {
            let reason = h2.reason();
            return h2.is_remote()
                && (reason == Some(h2::Reason::REFUSED_STREAM)
                    || (idempotent && h2.is_go_away() && reason == Some(h2::Reason::NO_ERROR)));
        }
        source = cause.source();
    }
    false
}

fn classify(error: &hyper::Error) -> UpstreamFailure {
    let mut source = error.source();
    while let Some(cause) = source {
        if cause.is::<ClientBodyError>() {
            return UpstreamFailure::ClientAborted;
        }
        source = cause.source();
    }
    UpstreamFailure::Reset
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
