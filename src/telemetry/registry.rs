//! How the proxy's metrics are named and registered: one prefix, one registry, and definitions
//! that are constants of the code (a bad one is a programming error every test catches).

use prometheus::{Opts, Registry};

pub(super) const PREFIX: &str = "ado_auth_proxy";

pub(super) fn opts(name: &str, help: &str) -> Opts {
    Opts::new(format!("{PREFIX}_{name}"), help)
}

/// A failure here is a programming error caught by every test that builds the metrics.
pub(super) fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: prometheus::Result<C>,
) -> C {
    let collector = collector.expect("valid metric definition");
    registry
        .register(Box::new(collector.clone()))
        .expect("metric names are unique");
    collector
}
