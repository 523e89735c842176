//! Prometheus metrics on their own registry, with every hot-path handle resolved at start so a
//! request touches only atomics. Labels come from bounded sets (methods, status classes, identity
//! names, error kinds), never from request data.

use super::client_metrics::PerClient;
pub use super::client_metrics::{ClientMetrics, NO_CLIENT};
use super::registry::{PREFIX, opts, register};
use crate::error::{Refusal, Unauthenticated, UpstreamFailure};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Registry, TextEncoder,
};

/// Azure DevOps holds a request back by up to 30 s before it answers 429.
const DELAY_BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0];
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];

/// Azure DevOps' throttling headers on one answer (`None`: absent or unreadable).
/// `X-RateLimit-Resource` is left out: it names the limit for humans, and as a label its values
/// would come from the network.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct RateLimitSignals {
    pub limit: Option<i64>,
    pub remaining: Option<i64>,
    pub reset_unix_seconds: Option<i64>,
    pub delay_seconds: Option<f64>,
    pub retry_after_seconds: Option<i64>,
}

pub struct Metrics {
    registry: Registry,
    per_client: PerClient,
    learn_mode: IntGaugeVec,
    /// Requests refused before a client was known.
    pub anonymous: ClientMetrics,
    unauthenticated: [IntCounter; Unauthenticated::ALL.len()],
    pub request_duration: Histogram,
    pub upstream_duration: Histogram,
    pub in_flight: IntGauge,
    pub request_bytes: IntCounter,
    pub response_bytes: IntCounter,
    refusals: [IntCounter; Refusal::ALL.len()],
    upstream_failures: [IntCounter; UpstreamFailure::ALL.len()],
    token_refreshes: IntCounterVec,
    token_expiry: IntGaugeVec,
    token_valid: IntGaugeVec,
    upstream_throttled: IntCounterVec,
    rate_limit_remaining: IntGaugeVec,
    rate_limit_limit: IntGaugeVec,
    rate_limit_reset: IntGaugeVec,
    rate_limit_delay: HistogramVec,
    retry_after: IntGaugeVec,
    retry_after_answers: IntCounterVec,
    sign_in_answers: IntCounterVec,
    config_reloads: IntCounterVec,
    config_last_reload: IntGauge,
    config_info: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let per_client = PerClient::register(&registry);
        let learn_mode = register(
            &registry,
            IntGaugeVec::new(
                opts(
                    "learn_mode",
                    "1 for a client in learn mode: its rules are not enforced, only logged.",
                ),
                &["client"],
            ),
        );
        let unauthenticated_vec = register(
            &registry,
            IntCounterVec::new(
                opts(
                    "unauthenticated_requests_total",
                    "Requests without a valid client key (401), by reason.",
                ),
                &["reason"],
            ),
        );
        let unauthenticated =
            Unauthenticated::ALL.map(|r| unauthenticated_vec.with_label_values(&[r.label()]));
        let histogram = |name: &str, help: &str| {
            register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(format!("{PREFIX}_{name}"), help)
                        .buckets(LATENCY_BUCKETS.to_vec()),
                ),
            )
        };
        let request_duration = histogram(
            "request_duration_seconds",
            "Time from request received to response body finished.",
        );
        let upstream_duration = histogram(
            "upstream_duration_seconds",
            "Time from forwarding a request to Azure DevOps' response headers.",
        );
        let in_flight = register(
            &registry,
            IntGauge::with_opts(opts("in_flight_requests", "Requests being served now.")),
        );
        let counter =
            |name: &str, help: &str| register(&registry, IntCounter::with_opts(opts(name, help)));
        let request_bytes = counter(
            "request_body_bytes_total",
            "Request body bytes received from clients and streamed upstream.",
        );
        let response_bytes = counter(
            "response_body_bytes_total",
            "Response body bytes sent to clients.",
        );
        let refusals_vec = register(
            &registry,
            IntCounterVec::new(
                opts(
                    "refused_requests_total",
                    "Requests the proxy answered itself, by reason.",
                ),
                &["reason"],
            ),
        );
        let refusals = Refusal::ALL.map(|r| refusals_vec.with_label_values(&[r.label()]));
        let failures_vec = register(
            &registry,
            IntCounterVec::new(
                opts(
                    "upstream_errors_total",
                    "Failed exchanges with Azure DevOps, by kind.",
                ),
                &["kind"],
            ),
        );
        let upstream_failures =
            UpstreamFailure::ALL.map(|f| failures_vec.with_label_values(&[f.label()]));
        let token_refreshes = register(
            &registry,
            IntCounterVec::new(
                opts(
                    "token_refreshes_total",
                    "Token fetches from Entra ID, by identity and result.",
                ),
                &["identity", "result"],
            ),
        );
        let token_expiry = register(
            &registry,
            IntGaugeVec::new(
                opts(
                    "token_expiry_seconds",
                    "Seconds until the cached token of an identity expires (0 without a valid token).",
                ),
                &["identity"],
            ),
        );
        let token_valid = register(
            &registry,
            IntGaugeVec::new(
                opts(
                    "token_valid",
                    "1 while the identity holds a token that may be sent.",
                ),
                &["identity"],
            ),
        );
        let upstream_throttled = register(
            &registry,
            IntCounterVec::new(
                opts(
                    "upstream_throttled_total",
                    "429 answers from Azure DevOps, by identity.",
                ),
                &["identity"],
            ),
        );
        let rate_limit_remaining = register(
            &registry,
            IntGaugeVec::new(
                opts(
                    "upstream_rate_limit_remaining",
                    "Last X-RateLimit-Remaining seen from Azure DevOps, by identity.",
                ),
                &["identity"],
            ),
        );
        let rate_limit_limit = register(
            &registry,
            IntGaugeVec::new(
                opts(
                    "upstream_rate_limit_limit",
                    "Last X-RateLimit-Limit seen from Azure DevOps (TSTUs per sliding 5 minutes), by identity.",
                ),
                &["identity"],
            ),
        );
        let rate_limit_reset = register(
            &registry,
            IntGaugeVec::new(
                opts(
                    "upstream_rate_limit_reset_timestamp_seconds",
                    "Last X-RateLimit-Reset seen from Azure DevOps (Unix seconds), by identity.",
                ),
                &["identity"],
            ),
        );
        let rate_limit_delay = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "upstream_rate_limit_delay_seconds",
                    "X-RateLimit-Delay: how long Azure DevOps held an answer back to slow the identity down.",
                )
                .namespace(PREFIX)
                .buckets(DELAY_BUCKETS.to_vec()),
                &["identity"],
            ),
        );
        let retry_after = register(
            &registry,
            IntGaugeVec::new(
                opts(
                    "upstream_retry_after_seconds",
                    "Last Retry-After seen from Azure DevOps (seconds), by identity.",
                ),
                &["identity"],
            ),
        );
        let retry_after_answers = register(
            &registry,
            IntCounterVec::new(
                opts(
                    "upstream_retry_after_total",
                    "Answers from Azure DevOps carrying Retry-After (a 200 may), by identity.",
                ),
                &["identity"],
            ),
        );
        let sign_in_answers = register(
            &registry,
            IntCounterVec::new(
                opts(
                    "upstream_non_authoritative_total",
                    "203 answers from Azure DevOps (its sign-in page for a refused token; never passed on), by identity.",
                ),
                &["identity"],
            ),
        );
        let config_reloads = register(
            &registry,
            IntCounterVec::new(
                opts(
                    "config_reloads_total",
                    "Configuration reloads (SIGHUP or a changed file), by result; a failed one leaves the running configuration in force.",
                ),
                &["result"],
            ),
        );
        for result in ["success", "failure"] {
            config_reloads.with_label_values(&[result]);
        }
        let config_last_reload = register(
            &registry,
            IntGauge::with_opts(opts(
                "config_last_reload_success_timestamp_seconds",
                "When the configuration in force was loaded (Unix seconds).",
            )),
        );
        let config_info = register(
            &registry,
            IntGaugeVec::new(
                opts(
                    "config_info",
                    "1 for the configuration in force, labelled with a hash of it (secrets left out), so a fleet's drift shows.",
                ),
                &["sha256"],
            ),
        );
        let anonymous = per_client.client(NO_CLIENT);
        Self {
            registry,
            per_client,
            learn_mode,
            anonymous,
            unauthenticated,
            request_duration,
            upstream_duration,
            in_flight,
            request_bytes,
            response_bytes,
            refusals,
            upstream_failures,
            token_refreshes,
            token_expiry,
            token_valid,
            upstream_throttled,
            rate_limit_remaining,
            rate_limit_limit,
            rate_limit_reset,
            rate_limit_delay,
            retry_after,
            retry_after_answers,
            sign_in_answers,
            config_reloads,
            config_last_reload,
            config_info,
        }
    }

    /// The counters of one configured client (names are bounded by the configuration).
    pub fn client(&self, name: &str) -> ClientMetrics {
        self.per_client.client(name)
    }

    /// Shows whether a client is in learn mode (a reload may turn it off: 0, not absent).
    pub fn set_learning(&self, client: &str, learning: bool) {
        self.learn_mode
            .with_label_values(&[client])
            .set(i64::from(learning));
    }

    pub fn count_unauthenticated(&self, reason: Unauthenticated) {
        let index = Unauthenticated::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.unauthenticated[index].inc();
    }

    pub fn count_refusal(&self, refusal: Refusal) {
        let index = Refusal::ALL.iter().position(|r| *r == refusal).unwrap_or(0);
        self.refusals[index].inc();
    }

    pub fn count_upstream_failure(&self, failure: UpstreamFailure) {
        let index = UpstreamFailure::ALL
            .iter()
            .position(|f| *f == failure)
            .unwrap_or(0);
        self.upstream_failures[index].inc();
    }

    /// Creates an identity's per-identity counters at 0, so that the first refresh failure or
    /// 429 already shows as an increase (Prometheus' `increase` cannot see a series' first value).
    pub fn register_identity(&self, identity: &str, refresh_results: &[&str]) {
        for result in refresh_results {
            self.token_refreshes.with_label_values(&[identity, result]);
        }
        self.upstream_throttled.with_label_values(&[identity]);
        self.rate_limit_delay.with_label_values(&[identity]);
        self.retry_after_answers.with_label_values(&[identity]);
        self.sign_in_answers.with_label_values(&[identity]);
    }

    pub fn count_token_refresh(&self, identity: &str, result: &str) {
        self.token_refreshes
            .with_label_values(&[identity, result])
            .inc();
    }

    pub fn set_token_state(&self, identity: &str, valid: bool, seconds_left: u64) {
        self.token_valid
            .with_label_values(&[identity])
            .set(i64::from(valid));
        self.token_expiry
            .with_label_values(&[identity])
            .set(i64::try_from(seconds_left).unwrap_or(i64::MAX));
    }

    pub fn count_throttled(&self, identity: &str) {
        self.upstream_throttled.with_label_values(&[identity]).inc();
    }

    /// The configuration now in force: its hash, and when it was loaded.
    pub fn set_config(&self, hash: &str) {
        self.config_info.reset();
        self.config_info.with_label_values(&[hash]).set(1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.config_last_reload
            .set(i64::try_from(now).unwrap_or(i64::MAX));
    }

    pub fn count_reload(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.config_reloads.with_label_values(&[result]).inc();
    }

    /// Gauges are only set once a header was seen: a 0 before that would read as exhausted.
    pub fn observe_rate_limits(&self, identity: &str, signals: &RateLimitSignals) {
        let labels = &[identity];
        let gauges = [
            (&self.rate_limit_limit, signals.limit),
            (&self.rate_limit_remaining, signals.remaining),
            (&self.rate_limit_reset, signals.reset_unix_seconds),
            (&self.retry_after, signals.retry_after_seconds),
        ];
        for (gauge, value) in gauges {
            if let Some(value) = value {
                gauge.with_label_values(labels).set(value);
            }
        }
        if let Some(delay) = signals.delay_seconds {
            self.rate_limit_delay
                .with_label_values(labels)
                .observe(delay);
        }
        if signals.retry_after_seconds.is_some() {
            self.retry_after_answers.with_label_values(labels).inc();
        }
    }

    pub fn count_sign_in_answer(&self, identity: &str) {
        self.sign_in_answers.with_label_values(&[identity]).inc();
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding our own well-formed families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn renders_prefixed_names_with_bounded_labels() {
        let metrics = Metrics::new();
        metrics.client("ci-bot").count_request(&Method::GET, 200);
        metrics
            .anonymous
            .count_request(&Method::from_bytes(b"PROPFIND").expect("method"), 404);
        metrics.count_refusal(Refusal::MethodNotAllowed);
        let text = metrics.render();
        assert!(
            text.contains(r#"ado_auth_proxy_requests_total{client="ci-bot",method="GET",status_class="2xx"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"ado_auth_proxy_requests_total{client="-",method="other",status_class="4xx"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"ado_auth_proxy_refused_requests_total{reason="method_not_allowed"} 1"#
            ),
            "{text}"
        );
    }
}
