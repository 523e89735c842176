//! One proxy worker thread: serves the connections dealt to it on its own single-threaded
//! runtime, with its own upstream connection pool, so a client connection and the upstream
//! connection it uses live on one thread with no cross-thread wake-ups per request.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{Accepted, ServeOptions};
use crate::config;
use crate::proxy::Proxy;
use crate::proxy::exchange::RequestIds;
use crate::proxy::snapshot::SharedSnapshot;
use crate::proxy::upstream::Upstreams;
use crate::telemetry::metrics::Metrics;

pub struct Worker {
    pub connections: mpsc::UnboundedReceiver<Accepted>,
    pub options: ServeOptions,
    pub upstream: config::Upstream,
    pub tls: rustls::ClientConfig,
    pub snapshot: SharedSnapshot,
    pub metrics: Arc<Metrics>,
    pub request_ids: Arc<RequestIds>,
}

impl Worker {
    /// Runs on the calling thread until the acceptor stops dealing and the drain ends.
    pub fn run(self) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!(%error, "cannot start a proxy worker runtime");
                return;
            }
        };
        runtime.block_on(async move {
            // The header-read and response timeouts of this worker's requests run on it.
            tokio::spawn(crate::timer::drive());
            let upstreams = Upstreams::new(&self.upstream, self.tls);
            let scheme = if self.options.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let proxy = Arc::new(Proxy::new(
                upstreams,
                self.snapshot,
                self.metrics,
                self.request_ids,
                scheme,
            ));
            let handler = move |request, peer| proxy.clone().handle(request, peer);
            super::serve_dealt(self.connections, self.options, handler).await;
        });
        // Dropping the runtime cancels whatever outlived the grace period.
    }
}
