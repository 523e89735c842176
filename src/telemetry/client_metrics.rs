//! Each client's counters (requests by method and status class, denials, learn mode, PATs, the
//! proxy's own 429s), resolved once per client so a request touches only atomics.

use http::Method;
use prometheus::{IntCounter, IntCounterVec, Registry};

use super::registry::{opts, register};
use crate::error::Limit;

/// The `client` label of requests that never got as far as naming a client.
pub const NO_CLIENT: &str = "-";

const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// A client's own counters, resolved once so a request touches only atomics.
pub struct ClientMetrics {
    requests: [[IntCounter; STATUS_CLASSES.len()]; METHODS.len()],
    pub denied: IntCounter,
    /// Forwarded in learn mode although no rule admitted them.
    pub would_deny: IntCounter,
    /// Requests whose credential looks like an Azure DevOps PAT.
    pub pat_credentials: IntCounter,
    /// Refused with a 429 by the proxy, by [`Limit`].
    limited: [IntCounter; Limit::ALL.len()],
}

impl ClientMetrics {
    pub fn count_limited(&self, limit: Limit) {
        let index = Limit::ALL.iter().position(|l| *l == limit).unwrap_or(0);
        self.limited[index].inc();
    }

    pub fn count_request(&self, method: &Method, status: u16) {
        let method_index = match *method {
            Method::GET => 0,
            Method::HEAD => 1,
            Method::POST => 2,
            Method::PUT => 3,
            Method::PATCH => 4,
            Method::DELETE => 5,
            Method::OPTIONS => 6,
            _ => 7,
        };
        let class_index = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests[method_index][class_index].inc();
    }
}

/// The families with a `client` label, from which each client's counters are resolved once.
pub(super) struct PerClient {
    requests: IntCounterVec,
    denied: IntCounterVec,
    would_deny: IntCounterVec,
    pat_credentials: IntCounterVec,
    limited: IntCounterVec,
}

impl PerClient {
    pub(super) fn register(registry: &Registry) -> Self {
        let requests = register(
            registry,
            IntCounterVec::new(
                opts(
                    "requests_total",
                    "Requests answered, by client, method and status class.",
                ),
                &["client", "method", "status_class"],
            ),
        );
        let denied = register(
            registry,
            IntCounterVec::new(
                opts(
                    "denied_requests_total",
                    "Requests no allowlist rule admitted (403), by client.",
                ),
                &["client"],
            ),
        );
        let would_deny = register(
            registry,
            IntCounterVec::new(
                opts(
                    "would_deny_requests_total",
                    "Requests a client in learn mode made that its rules would refuse (forwarded anyway), by client.",
                ),
                &["client"],
            ),
        );
        let pat_credentials = register(
            registry,
            IntCounterVec::new(
                opts(
                    "pat_credentials_total",
                    "Requests whose credential looks like an Azure DevOps PAT, by client (- when none was recognised).",
                ),
                &["client"],
            ),
        );
        let limited = register(
            registry,
            IntCounterVec::new(
                opts(
                    "limited_requests_total",
                    "Requests the proxy answered 429 itself, by client and limit (concurrency, rate, throttled: a lower priority's turn while Azure DevOps throttles the identity).",
                ),
                &["client", "limit"],
            ),
        );
        Self {
            requests,
            denied,
            would_deny,
            pat_credentials,
            limited,
        }
    }

    pub(super) fn client(&self, client: &str) -> ClientMetrics {
        ClientMetrics {
            requests: METHODS.map(|method| {
                STATUS_CLASSES
                    .map(|class| self.requests.with_label_values(&[client, method, class]))
            }),
            denied: self.denied.with_label_values(&[client]),
            would_deny: self.would_deny.with_label_values(&[client]),
            pat_credentials: self.pat_credentials.with_label_values(&[client]),
            limited: Limit::ALL
                .map(|limit| self.limited.with_label_values(&[client, limit.label()])),
        }
    }
}
