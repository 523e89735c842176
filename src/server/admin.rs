//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process answers) and
//! `/readyz` (every identity holds a token that may be sent). Kept off the proxy listener so that
//! scraping never competes with, or is exposed like, the proxied traffic.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;

use crate::telemetry::metrics::Metrics;
use crate::token::TokenCache;

pub struct Admin {
    metrics: Arc<Metrics>,
    tokens: Vec<Arc<TokenCache>>,
    /// A standing configuration warning shown in `/readyz` (open mode beyond loopback).
    warning: Option<String>,
}

impl Admin {
    pub fn new(
        metrics: Arc<Metrics>,
        tokens: Vec<Arc<TokenCache>>,
        warning: Option<String>,
    ) -> Self {
        Self {
            metrics,
            tokens,
            warning,
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
        for token in &self.tokens {
            let status = token.status();
            self.metrics.set_token_state(
                &status.identity,
                status.valid_for.is_some(),
                status.valid_for.map(|d| d.as_secs()).unwrap_or(0),
            );
        }
    }

    fn readiness(&self) -> Response<Full<Bytes>> {
        let statuses: Vec<_> = self.tokens.iter().map(|t| t.status()).collect();
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
            "warning": self.warning,
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
