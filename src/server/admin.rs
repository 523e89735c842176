//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process answers) and
//! `/readyz` (every identity holds a token that may be sent). Kept off the proxy listener so that
//! scraping never competes with, or is exposed like, the proxied traffic.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use tower::{ServiceBuilder, ServiceExt as _};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::timeout::TimeoutLayer;

use super::Handler;
use crate::telemetry::metrics::Metrics;
use crate::token::TokenCache;

/// An admin answer is computed in memory; one that takes this long is stuck.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Admin {
    metrics: Arc<Metrics>,
    /// Swapped whole by a reload.
    tokens: arc_swap::ArcSwap<Vec<Arc<TokenCache>>>,
    /// A standing configuration warning shown in `/readyz` (open mode beyond loopback, learn
    /// mode); a reload replaces it.
    warning: arc_swap::ArcSwapOption<String>,
}

impl Admin {
    pub fn new(
        metrics: Arc<Metrics>,
        tokens: Vec<Arc<TokenCache>>,
        warning: Option<String>,
    ) -> Self {
        Self {
            metrics,
            tokens: arc_swap::ArcSwap::from_pointee(tokens),
            warning: arc_swap::ArcSwapOption::from(warning.map(Arc::new)),
        }
    }

    pub fn set_warning(&self, warning: Option<String>) {
        self.warning.store(warning.map(Arc::new));
    }

    /// The identities' token caches after a reload.
    pub fn set_tokens(&self, tokens: Vec<Arc<TokenCache>>) {
        self.tokens.store(Arc::new(tokens));
    }

    /// The admin endpoints behind the generic layers, outer to inner: credentials a scraper
    /// sends are marked sensitive before anything could record them, a panic becomes a 500
    /// instead of a dropped connection, and an answer that takes too long becomes a 503.
    pub fn into_handler(self: Arc<Self>) -> impl Handler {
        let service = ServiceBuilder::new()
            .layer(SetSensitiveRequestHeadersLayer::new([
                header::AUTHORIZATION,
                header::PROXY_AUTHORIZATION,
                header::COOKIE,
            ]))
            .layer(CatchPanicLayer::new())
            .layer(TimeoutLayer::with_status_code(
                StatusCode::SERVICE_UNAVAILABLE,
                ANSWER_TIMEOUT,
            ))
            .service_fn(move |request: Request<Incoming>| {
                let response = self.handle(&request);
                async move { Ok::<_, Infallible>(response) }
            });
        move |request, _peer| {
            let service = service.clone();
            async move {
                match service.oneshot(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            }
        }
    }

    pub fn handle<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        match request.uri().path() {
            "/metrics" => {
                self.publish_token_state();
                respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.metrics.render(),
                )
            }
            "/healthz" => respond(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
            "/readyz" => self.readiness(),
            _ => respond(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "not found: try /metrics, /healthz or /readyz\n".into(),
            ),
        }
    }

    /// Token expiry is a function of time, so it is computed when scraped rather than kept fresh.
    fn publish_token_state(&self) {
        for token in self.tokens.load().iter() {
            let status = token.status();
            self.metrics.set_token_state(
                &status.identity,
                status.valid_for.is_some(),
                status.valid_for.map(|d| d.as_secs()).unwrap_or(0),
            );
        }
    }

    fn readiness(&self) -> Response<Full<Bytes>> {
        let statuses: Vec<_> = self.tokens.load().iter().map(|t| t.status()).collect();
        let ready = statuses.iter().all(|s| s.valid_for.is_some());
        let identities: Vec<_> = statuses
            .iter()
            .map(|s| {
                serde_json::json!({
                    "identity": s.identity,
                    "token": if s.valid_for.is_some() { "valid" } else { "unavailable" },
                    "valid_for_seconds": s.valid_for.map(|d| d.as_secs()),
                    "expires_at_unix": s.expires_at.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs()),
                    "valid_until": s.expires_at.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                    "next_refresh_in_seconds": s.next_attempt_in.map(|d| d.as_secs()),
                    "last_error": s.last_error,
                })
            })
            .collect();
        let body = serde_json::json!({
            "ready": ready,
            "reason": if ready { "every identity holds a valid token" } else { "waiting for a valid Entra ID token; see last_error" },
            "identities": identities,
            "warning": self.warning.load().as_deref(),
        });
        respond(
            if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
            "application/json",
            format!("{body}\n"),
        )
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
