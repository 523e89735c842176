//! The identities in force, each with its token cache and its refresher. A reload keeps the
//! cache (and its valid token) of every identity whose settings did not change, starts the new
//! and the changed ones, and stops the removed ones.

use std::sync::Arc;

use tokio::task::JoinHandle;

use super::{TokenCache, TokenSource, run_refresher};
use crate::config::{Credential, Egress, Identity};
use crate::telemetry::metrics::Metrics;

struct Live {
    identity: Identity,
    cache: Arc<TokenCache>,
    refresher: JoinHandle<()>,
}

pub struct Identities {
    live: Vec<Live>,
}

impl Identities {
    pub fn start(
        identities: &[Identity],
        tls: &rustls::ClientConfig,
        egress: &Egress,
        metrics: &Arc<Metrics>,
    ) -> Result<Identities, String> {
        let mut started = Identities { live: Vec::new() };
        started.reconcile(identities, tls, egress, metrics)?;
        Ok(started)
    }

    /// Brings the running identities to `wanted`. All or nothing: when a new or changed
    /// identity cannot start (a certificate that does not load), nothing changes.
    pub fn reconcile(
        &mut self,
        wanted: &[Identity],
        tls: &rustls::ClientConfig,
        egress: &Egress,
        metrics: &Arc<Metrics>,
    ) -> Result<(), String> {
        let mut sources = Vec::new();
        for identity in wanted {
            if !self.live.iter().any(|live| live.identity == *identity) {
                sources.push((identity, TokenSource::new(identity, tls, egress)?));
            }
        }
        let mut next = Vec::with_capacity(wanted.len());
        for identity in wanted {
            if let Some(at) = self.live.iter().position(|live| live.identity == *identity) {
                next.push(self.live.swap_remove(at));
            }
        }
        for (identity, source) in sources {
            // Managed identity endpoints return their cached token, so asking again after
            // Azure DevOps refused it cannot help.
            let renewable = !matches!(identity.credential, Credential::Managed(_));
            metrics.register_identity(&identity.name, &super::REFRESH_RESULTS);
            let cache = Arc::new(TokenCache::new(identity.name.clone(), renewable));
            let refresher = tokio::spawn(run_refresher(source, cache.clone(), metrics.clone()));
            next.push(Live {
                identity: identity.clone(),
                cache,
                refresher,
            });
        }
        // What is left was removed or changed: its refresher stops, its cache goes with the
        // last request that still holds it.
        for gone in self.live.drain(..) {
            gone.refresher.abort();
        }
        self.live = next;
        Ok(())
    }

    pub fn cache(&self, name: &str) -> Option<Arc<TokenCache>> {
        self.live
            .iter()
            .find(|live| live.identity.name == name)
            .map(|live| live.cache.clone())
    }

    pub fn caches(&self) -> Vec<Arc<TokenCache>> {
        self.live.iter().map(|live| live.cache.clone()).collect()
    }
}

impl Drop for Identities {
    fn drop(&mut self) {
        for live in &self.live {
            live.refresher.abort();
        }
    }
}
