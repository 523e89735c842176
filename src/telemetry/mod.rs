//! What the proxy tells its operators: Prometheus metrics, the audit line per request, and the
//! log format and writer both go through. Imports nothing of the request path; the request path
//! reports here.

pub mod audit;
mod client_metrics;
pub mod log_format;
pub mod log_writer;
pub mod metrics;
mod registry;

use std::fmt::Display;

use self::log_format::Rendered;
use self::metrics::{ClientMetrics, Metrics};

/// How telemetry names and counts one configured client: its name and rule texts quoted for
/// audit lines once, its counters resolved once. Kept beside the client (same index), never in
/// it: deciding what a client may do needs none of this.
pub struct ClientTelemetry {
    pub audit_name: Rendered,
    pub rules: Box<[Rendered]>,
    pub metrics: ClientMetrics,
}

impl ClientTelemetry {
    pub fn new(metrics: &Metrics, name: &str, rules: impl IntoIterator<Item: Display>) -> Self {
        Self {
            audit_name: Rendered::new(name),
            rules: rules
                .into_iter()
                .map(|rule| Rendered::new(&rule.to_string()))
                .collect(),
            metrics: metrics.client(name),
        }
    }
}
