//! The request path, in order: check the target, authenticate the client, check the path and the
//! client's allowlist, take the client identity's current token, rewrite headers, forward, and
//! stream the response back. Each step either passes the request on or returns a [`Rejection`];
//! nothing here waits on Entra ID.

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use crate::allow::Segments;
use crate::auth::Authenticator;
use crate::body::{Exchange, RequestIds, ResponseBody, UploadBody};
use crate::error::Rejection;
use crate::forward::Upstream;
use crate::headers;
use crate::metrics::Metrics;
use crate::target;

static REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
static RATE_LIMIT_REMAINING: http::HeaderName =
    http::HeaderName::from_static("x-ratelimit-remaining");

pub struct Proxy {
    upstream: Upstream,
    auth: Arc<Authenticator>,
    metrics: Arc<Metrics>,
    request_ids: Arc<RequestIds>,
}

impl Proxy {
    pub fn new(
        upstream: Upstream,
        auth: Arc<Authenticator>,
        metrics: Arc<Metrics>,
        request_ids: Arc<RequestIds>,
    ) -> Self {
        Self {
            upstream,
            auth,
            metrics,
            request_ids,
        }
    }

    pub async fn handle(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        let mut exchange = Exchange::begin(
            self.metrics.clone(),
            self.request_ids.next(),
            request.method().clone(),
            request.uri().clone(),
        );
        let request_id = exchange.request_id.to_string();
        let mut response = match self.forward(request, &mut exchange).await {
            Ok(response) => {
                let status = response.status().as_u16();
                response.map(|body| ResponseBody::upstream(body, exchange, status))
            }
            Err(rejection) => {
                self.count_rejection(&rejection);
                let status = rejection.status().as_u16();
                rejection
                    .to_response(&request_id)
                    .map(|body| ResponseBody::local(body, exchange, status))
            }
        };
        if let Ok(value) = HeaderValue::try_from(request_id) {
            response.headers_mut().insert(REQUEST_ID.clone(), value);
        }
        response
    }

    async fn forward(
        &self,
        request: Request<Incoming>,
        exchange: &mut Exchange,
    ) -> Result<Response<Incoming>, Rejection> {
        target::check(&request)?;
        let client = self.auth.authenticate(request.headers())?;
        exchange.set_client(client.clone());
        let uri = request.uri();
        let path = Segments::parse(uri.path()).map_err(|e| Rejection::BadRequest(e.message()))?;
        let rule = client
            .allow
            .judge(request.method(), &path, uri.query())
            .ok_or_else(|| {
                client.metrics.denied.inc();
                Rejection::Forbidden {
                    client: client.name.clone(),
                    method: request.method().clone(),
                    path: uri.path().to_string(),
                }
            })?;
        exchange.set_rule(rule);
        let token = &client.token;
        let bearer = token.bearer().ok_or_else(|| Rejection::TokenUnavailable {
            retry_after: token.retry_after(),
        })?;

        let (mut parts, body) = request.into_parts();
        headers::prepare_request(&mut parts.headers, self.upstream.host_header(), bearer);
        parts.uri = self
            .upstream
            .target(parts.uri.path_and_query())
            .map_err(|_| Rejection::BadRequest("The request target cannot be forwarded"))?;
        // The pool picks HTTP/1.1 or h2 by ALPN; an h2 client must not force h2 upstream.
        parts.version = Version::HTTP_11;
        let body = UploadBody::new(body, exchange.received.clone(), self.metrics.clone());

        let sent_at = Instant::now();
        let result = self.upstream.send(Request::from_parts(parts, body)).await;
        let elapsed = sent_at.elapsed();
        exchange.set_upstream_time(elapsed);
        self.metrics
            .upstream_duration
            .observe(elapsed.as_secs_f64());
        let mut response = result.map_err(Rejection::Upstream)?;

        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            return Err(Rejection::UpstreamUpgrade);
        }
        self.observe_rate_limits(token.identity(), &response);
        headers::prepare_response(response.headers_mut());
        Ok(response)
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

    fn observe_rate_limits(&self, identity: &str, response: &Response<Incoming>) {
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            self.metrics.count_throttled(identity);
        }
        if let Some(remaining) = response
            .headers()
            .get(&RATE_LIMIT_REMAINING)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
        {
            self.metrics
                .set_rate_limit_remaining(identity, remaining as i64);
        }
    }
}
