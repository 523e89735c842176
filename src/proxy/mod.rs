//! The request path, in order: check the target, authenticate the client, check the path and the
//! client's allowlist, take the client identity's current token, rewrite headers, forward, and
//! stream the response back. Each step either passes the request on or returns a [`Rejection`];
//! nothing here waits on Entra ID.

pub mod authenticate;
pub mod body;
pub mod exchange;
mod forward;
pub mod headers;
pub mod limits;
pub mod origin;
pub mod pool;
pub mod resolve;
pub mod rewrite;
pub mod rewrite_body;
pub mod route;
pub mod snapshot;
pub mod target;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use self::authenticate::Caller;
use self::body::{ResponseBody, UploadBody};
use self::exchange::{Exchange, RequestIds};
use self::forward::{Destination, Forward, Outgoing, Replay};
use self::rewrite::UrlMap;
use self::rewrite_body::{
    Encoding, Outbound, WHOLE_BODY_BYTES, rewrite_response, rewrite_whole, rewritten,
};
use self::route::Mount;
use self::snapshot::{SharedSnapshot, Snapshot};
use self::upstream::{Upstream, Upstreams};
use crate::config::Priority;
use crate::error::{Limit, Rejection, Unauthenticated, UpstreamFailure};
use crate::issuers::IssuerKeys;
use crate::policy::{RequestHost, Segments};
use crate::telemetry::metrics::Metrics;
use crate::token::TokenCache;

/// A body small enough to keep for a replay arrives within this, or the request is refused.
const KEPT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request whose token names a key not yet fetched waits for its issuer.
const KEY_FETCH_PATIENCE: Duration = Duration::from_secs(5);

/// No usable token: the client is told when to try again.
fn unavailable(token: &TokenCache) -> Rejection {
    Rejection::TokenUnavailable {
        retry_after: token.retry_after(),
    }
}

/// Who is calling (an index into the snapshot's clients) and which of their rules admits the
/// call.
struct Admitted {
    client: usize,
    /// `None`: no rule admits the call, but the client is in learn mode.
    rule: Option<usize>,
    /// The request came under `/_host/{name}`: the host and what to send it.
    mount: Option<Mount>,
}

enum Admission {
    Admitted(Admitted),
    /// A keyless client's token names a key its issuer has not shown yet.
    AwaitKeys(Arc<IssuerKeys>),
}

/// Why a request is answered by the proxy itself, and the client when it was known by then (a
/// 403 names its client in the audit line and metrics).
struct Refused {
    client: Option<usize>,
    rejection: Rejection,
}

impl From<Rejection> for Refused {
    fn from(rejection: Rejection) -> Self {
        Self {
            client: None,
            rejection,
        }
    }
}

/// Where a request stands before anything is awaited.
// Not boxed: `Ready` is the common case, and a box would cost every request an allocation.
#[allow(clippy::large_enum_variant)]
enum Start {
    Ready(Outgoing),
    /// A small body is to be read whole (for a replay) before the request can go.
    ReadBody(Option<(Destination, http::request::Parts, Incoming)>),
    Rejected(Option<Rejection>),
    /// Admission waits for an issuer's keys, then runs again.
    AwaitKeys(Option<(Arc<IssuerKeys>, Request<Incoming>)>),
}

enum Upload {
    Ready(UploadBody),
    ReadWhole(Incoming),
}

/// How a response goes back, once its headers are rewritten.
enum Planned {
    Ready(Response<Outbound>),
    /// A small body to read and rewrite whole first.
    RewriteWhole(Response<Incoming>, Arc<UrlMap>),
}

static REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
/// One worker's request path: its own upstream connections, and the configuration every worker
/// reads.
pub struct Proxy {
    upstreams: Upstreams,
    snapshot: SharedSnapshot,
    metrics: Arc<Metrics>,
    request_ids: Arc<RequestIds>,
    /// The public URL last derived from a request's `Host` (no `listen.public_url`): clients of
    /// one listener almost always send the same one.
    derived_public_url: Mutex<Option<(HeaderValue, Arc<UrlMap>)>>,
    /// `https` on a TLS listener: the scheme of a public URL derived from `Host`.
    listener_scheme: &'static str,
}

impl Proxy {
    pub fn new(
        upstreams: Upstreams,
        snapshot: SharedSnapshot,
        metrics: Arc<Metrics>,
        request_ids: Arc<RequestIds>,
        listener_scheme: &'static str,
    ) -> Self {
        Self {
            upstreams,
            snapshot,
            metrics,
            request_ids,
            derived_public_url: Mutex::new(None),
            listener_scheme,
        }
    }

    /// Everything that needs no waiting (admission, the token, header rewriting, the replay copy)
    /// happens before the future exists, and the future holds the request once: hyper moves it
    /// around per request, and every `async fn` taking the request by value would hold it twice.
    pub fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<ResponseBody>> + Send + 'static {
        // Boxed: it goes from this future into the response body, and both are moved around
        // per request; a pointer moves cheaper than the record.
        // The one read of the configuration: this request is judged by it to its end.
        let snapshot = self.snapshot.load_full();
        let origin = origin::origin(peer, request.headers(), &snapshot.trusted_proxies);
        let mut exchange = Box::new(Exchange::begin(
            self.metrics.clone(),
            snapshot,
            self.request_ids.next(),
            origin,
            request.method().clone(),
            request.uri().clone(),
        ));
        let public_url = self.public_url(exchange.snapshot(), request.headers());
        let mut start = self.begin(request, &mut exchange, true);
        async move {
            if let Start::AwaitKeys(waiting) = &mut start
                && let Some((keys, request)) = waiting.take()
            {
                // Boxed: a token naming a key not yet fetched is rare.
                Box::pin(keys.refreshed(KEY_FETCH_PATIENCE)).await;
                start = self.begin(request, &mut exchange, false);
            }
            // Matched in place, not by value: a binding by value would be a second copy of the
            // request in the future. The `Option`s are taken once (this block runs once), so
            // their `None` arms cannot happen.
            let result = match &mut start {
                Start::Ready(outgoing) => self.forward(outgoing, &mut exchange).await,
                Start::ReadBody(pending) => match pending.take() {
                    // Boxed: most requests have no body to read first.
                    Some((destination, parts, body)) => {
                        Box::pin(self.forward_with_body(destination, parts, body, &mut exchange))
                            .await
                    }
                    None => Err(Rejection::BodyTimeout),
                },
                Start::Rejected(rejection) => Err(rejection
                    .take()
                    .unwrap_or(Rejection::BadRequest("request rejected"))),
                // Replaced above: the second admission is never patient.
                Start::AwaitKeys(_) => Err(Rejection::Unauthenticated(Unauthenticated::TokenKey)),
            };
            let result = match result {
                Ok(response) => match self.outbound(response, &exchange, public_url) {
                    Planned::Ready(response) => Ok(response),
                    // Boxed: most responses need no reading before they go.
                    Planned::RewriteWhole(response, map) => {
                        Box::pin(rewrite_whole(response, exchange.snapshot().clone(), map)).await
                    }
                },
                Err(rejection) => Err(rejection),
            };
            self.respond(result, exchange)
        }
    }

    /// Rewrites URL-bearing headers and picks how the body goes: untouched, rewritten as it
    /// streams, or (small, of known length, not encoded) read and rewritten whole, which keeps
    /// its `Content-Length` and costs no stream machinery.
    fn outbound(
        &self,
        response: Response<Incoming>,
        exchange: &Exchange,
        public_url: Option<Arc<UrlMap>>,
    ) -> Planned {
        let (mut parts, body) = response.into_parts();
        // A body hyper frames otherwise than by its length (chunked, or to the connection's end)
        // must not go out with the length Azure DevOps, or a box in between, put beside it: the
        // client would see a clean, truncated body.
        if body.size_hint().exact().is_none() {
            parts.headers.remove(http::header::CONTENT_LENGTH);
        }
        let snapshot = exchange.snapshot();
        let Some((encoding, map)) = public_url.and_then(|map| {
            rewrite_response(
                exchange.method(),
                parts.status,
                &mut parts.headers,
                snapshot,
                &map,
            )
            .map(|encoding| (encoding, map))
        }) else {
            return Planned::Ready(Response::from_parts(parts, Outbound::Streamed(body)));
        };
        let small = body
            .size_hint()
            .exact()
            .is_some_and(|length| length <= WHOLE_BODY_BYTES);
        if encoding == Encoding::Identity && small {
            return Planned::RewriteWhole(Response::from_parts(parts, body), map);
        }
        parts.headers.remove(http::header::CONTENT_LENGTH);
        let body = rewritten(body, encoding, snapshot.clone(), map);
        Planned::Ready(Response::from_parts(parts, Outbound::Rewritten(body)))
    }

    /// What absolute Azure DevOps URLs in this request's response become: `listen.public_url`,
    /// or, on a loopback listener without one, the listener's scheme and the `Host` the client
    /// used.
    fn public_url(&self, snapshot: &Snapshot, headers: &http::HeaderMap) -> Option<Arc<UrlMap>> {
        if let Some(configured) = &snapshot.public_url {
            return Some(configured.clone());
        }
        let host = headers.get(http::header::HOST)?;
        let mut derived = self
            .derived_public_url
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((seen, map)) = &*derived
            && seen == host
        {
            return Some(map.clone());
        }
        let authority = http::uri::Authority::try_from(host.as_bytes()).ok()?;
        let map = Arc::new(UrlMap::new(&format!(
            "{}://{authority}",
            self.listener_scheme
        )));
        *derived = Some((host.clone(), map.clone()));
        Some(map)
    }

    fn respond(
        &self,
        result: Result<Response<Outbound>, Rejection>,
        exchange: Box<Exchange>,
    ) -> Response<ResponseBody> {
        let request_id = exchange.request_id_header();
        let mut response = match result {
            Ok(response) => {
                let status = response.status().as_u16();
                response.map(|body| match body {
                    Outbound::Streamed(body) => ResponseBody::upstream(body, exchange, status),
                    Outbound::Rewritten(body) => ResponseBody::rewritten(body, exchange, status),
                    Outbound::Whole(body) => ResponseBody::whole(body, exchange, status),
                })
            }
            Err(rejection) => {
                self.count_rejection(&rejection);
                if let Rejection::Forbidden { .. } = rejection {
                    exchange.count_denied();
                }
                if let Rejection::Limited { limit, .. } = rejection {
                    exchange.count_limited(limit);
                }
                let status = rejection.status();
                let mut response = rejection
                    .to_response(request_id.to_str().unwrap_or_default())
                    .map(|body| ResponseBody::whole(body, exchange, status.as_u16()));
                // A caller without a key or a rule gets no connection to keep: one request every
                // few seconds would otherwise hold a connection slot for good.
                if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
                    response
                        .headers_mut()
                        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                }
                response
            }
        };
        response
            .headers_mut()
            .insert(REQUEST_ID.clone(), request_id);
        response
    }

    /// Admission, and what follows from it. `patient`: see [`Inbound::authenticate`].
    ///
    /// [`Inbound::authenticate`]: authenticate::Inbound::authenticate
    fn begin(&self, request: Request<Incoming>, exchange: &mut Exchange, patient: bool) -> Start {
        let mut pat = false;
        let admission = admit(exchange.snapshot(), &request, patient, &mut pat);
        if pat {
            exchange.set_presented_pat();
        }
        match admission {
            Ok(Admission::Admitted(Admitted {
                client,
                rule,
                mount,
            })) => {
                exchange.record_admission(Some(client), rule);
                let admitted = &exchange.snapshot().clients[client];
                let (token, priority) = (admitted.token.clone(), admitted.priority);
                match admitted.limits.admit() {
                    Ok(slot) => exchange.hold_slot(slot),
                    Err(rejection) => return Start::Rejected(Some(rejection)),
                }
                // Only what goes to Azure DevOps: a call its limits refused was not forwarded.
                if rule.is_none() {
                    exchange.set_would_deny();
                }
                self.start(Destination::new(token, priority), mount, request, exchange)
            }
            Ok(Admission::AwaitKeys(keys)) => Start::AwaitKeys(Some((keys, request))),
            Err(Refused { client, rejection }) => {
                exchange.record_admission(client, None);
                Start::Rejected(Some(rejection))
            }
        }
    }

    /// Unless a small body must be read first, rewrites an admitted request for Azure DevOps.
    fn start(
        &self,
        mut destination: Destination,
        mount: Option<Mount>,
        request: Request<Incoming>,
        exchange: &mut Exchange,
    ) -> Start {
        let (mut parts, body) = request.into_parts();
        if let Some((host, target)) = mount {
            parts.uri = Uri::from(target);
            if let Some(host) = host {
                match self.upstreams.sibling(&host, Instant::now()) {
                    Some(sibling) => destination.upstream = Some(sibling),
                    None => return Start::Rejected(Some(Rejection::UnknownHost(host))),
                }
            }
        }
        let body = match self.classify_upload(body, exchange) {
            Upload::Ready(body) => body,
            Upload::ReadWhole(body) => return Start::ReadBody(Some((destination, parts, body))),
        };
        match self.outgoing(destination, parts, body) {
            Ok(outgoing) => Start::Ready(outgoing),
            Err(rejection) => Start::Rejected(Some(rejection)),
        }
    }

    /// The current token and the request rewritten to carry it; a copy to replay it from if its
    /// body is kept.
    fn outgoing(
        &self,
        destination: Destination,
        mut parts: http::request::Parts,
        body: UploadBody,
    ) -> Result<Outgoing, Rejection> {
        let token = &destination.token;
        let bearer = token.bearer().ok_or_else(|| unavailable(token))?;
        headers::prepare_request(
            &mut parts.headers,
            self.upstream_of(&destination).host_header(),
            bearer.clone(),
        );
        // `parts.uri` stays the target `target::check` admitted: origin-form (path and query)
        // from the HTTP/1 listener. `Upstream` sends only its path and query, on the
        // configured host.
        // The pool picks HTTP/1.1 or h2 by ALPN; an h2 client must not force h2 upstream.
        parts.version = Version::HTTP_11;
        let replay = match &body {
            UploadBody::Kept(data) => Some(Replay::new(&parts, data.clone())),
            UploadBody::Streaming { .. } => None,
        };
        Ok(Outgoing {
            destination,
            bearer,
            request: Some(Request::from_parts(parts, body)),
            replay,
        })
    }

    /// Reads a small body whole, then forwards the request with it.
    async fn forward_with_body(
        &self,
        destination: Destination,
        parts: http::request::Parts,
        body: Incoming,
        exchange: &mut Exchange,
    ) -> Result<Response<Incoming>, Rejection> {
        // A slow small body must not outlive the token it would be sent with: the token is
        // checked before reading and taken after.
        if destination.token.bearer().is_none() {
            return Err(unavailable(&destination.token));
        }
        let data = crate::timer::timeout(KEPT_BODY_TIMEOUT, body.collect())
            .await
            .map_err(|_| Rejection::BodyTimeout)?
            .map_err(|_| Rejection::Upstream(UpstreamFailure::ClientAborted))?
            .to_bytes();
        let length = data.len() as u64;
        exchange.add_kept_upload(length);
        self.metrics.request_bytes.inc_by(length);
        let mut outgoing = self.outgoing(destination, parts, UploadBody::kept(data))?;
        self.forward(&mut outgoing, exchange).await
    }

    async fn forward(
        &self,
        outgoing: &mut Outgoing,
        exchange: &mut Exchange,
    ) -> Result<Response<Incoming>, Rejection> {
        let destination = &outgoing.destination;
        let pressure = destination.token.pressure();
        // One atomic read when Azure DevOps is not throttling the identity, the usual case;
        // the wait is boxed, so it costs nothing in every request's future.
        if destination.priority != Priority::High && pressure.is_held() {
            let max_wait = exchange.snapshot().max_throttle_wait;
            Box::pin(pressure.take_turn(destination.priority, max_wait))
                .await
                .map_err(|wait| Rejection::Limited {
                    limit: Limit::Throttled,
                    retry_after: wait.retry_after,
                })?;
        }
        // Held apart from `outgoing`, which the exchange borrows mutably.
        let sibling = outgoing.destination.upstream.clone();
        let forward = Forward {
            upstream: sibling
                .as_deref()
                .unwrap_or_else(|| self.upstreams.default_upstream()),
            metrics: &self.metrics,
        };
        forward.forward(outgoing, exchange).await
    }

    fn upstream_of<'a>(&'a self, destination: &'a Destination) -> &'a Upstream {
        destination
            .upstream
            .as_deref()
            .unwrap_or_else(|| self.upstreams.default_upstream())
    }

    /// A small body (by its declared length) is read whole so the request can be replayed;
    /// anything larger or of unknown length streams through untouched.
    fn classify_upload(&self, body: Incoming, exchange: &mut Exchange) -> Upload {
        if body.is_end_stream() {
            return Upload::Ready(UploadBody::kept(Bytes::new()));
        }
        let keep = body.size_hint().exact().is_some_and(|length| {
            length <= self.upstreams.default_upstream().max_replay_body_bytes()
        });
        if keep {
            return Upload::ReadWhole(body);
        }
        Upload::Ready(UploadBody::streaming(
            body,
            exchange.track_upload(),
            self.metrics.clone(),
        ))
    }

    fn count_rejection(&self, rejection: &Rejection) {
        if let Some(refusal) = rejection.refusal() {
            self.metrics.count_refusal(refusal);
        }
        if let Rejection::Unauthenticated(reason) = rejection {
            self.metrics.count_unauthenticated(*reason);
        }
        if let Some(failure) = rejection.upstream_failure() {
            self.metrics.count_upstream_failure(failure);
        }
    }
}

/// Who is calling, and which of their rules allows this call. Not async, and before the request's
/// future exists: the parsed path (kept on the stack) must not become part of every request's
/// future.
fn admit(
    snapshot: &Snapshot,
    request: &Request<Incoming>,
    patient: bool,
    pat: &mut bool,
) -> Result<Admission, Refused> {
    target::check(request)?;
    let client = match snapshot
        .inbound
        .authenticate(request.headers(), patient, pat)?
    {
        Caller::Client(client) => client,
        Caller::AwaitKeys(keys) => return Ok(Admission::AwaitKeys(keys)),
    };
    let refused = |rejection| Refused {
        client: Some(client),
        rejection,
    };
    let allow = &snapshot.clients[client].allow;
    let uri = request.uri();
    let route = route::route(uri.path(), &snapshot.hosts).map_err(refused)?;
    let path =
        Segments::parse(route.path).map_err(|e| refused(Rejection::BadRequest(e.message())))?;
    let host = RequestHost {
        name: route.host.unwrap_or_default(),
        is_default: route.host.is_none(),
    };
    let rule = match allow.judge_on(host, request.method(), &path, uri.query()) {
        Some(rule) => Some(rule),
        None if snapshot.clients[client].learn => None,
        None => {
            return Err(refused(Rejection::Forbidden {
                client: snapshot.clients[client].name.clone(),
                method: request.method().clone(),
                path: uri.path().to_string(),
            }));
        }
    };
    let mount = route.mount(uri.query()).map_err(|_| {
        refused(Rejection::BadRequest(
            "The request target is not a valid path",
        ))
    })?;
    Ok(Admission::Admitted(Admitted {
        client,
        rule,
        mount,
    }))
}
