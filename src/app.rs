//! The composition root: builds every part from a validated configuration, binds the listeners,
//! starts the token refreshers and the worker threads, and drains on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use arc_swap::ArcSwap;

use crate::config::{Config, ConfigError, Credential};
use crate::proxy::exchange::RequestIds;
use crate::proxy::snapshot::{SharedSnapshot, Snapshot};
use crate::server::admin::Admin;
use crate::server::worker::Worker;
use crate::server::{self, ServeOptions};
use crate::telemetry::metrics::Metrics;
use crate::token::{TokenCache, TokenSource};
use crate::{tls, token};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {address} ({what}): {source}")]
    Bind {
        what: &'static str,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Credential(String),
    #[error("cannot start proxy worker threads: {0}")]
    Workers(std::io::Error),
}

/// A built proxy: listeners bound, token refreshers running. [`App::run`] serves until shutdown.
pub struct App {
    config: Config,
    proxy_listener: TcpListener,
    admin_listener: TcpListener,
    tls: rustls::ClientConfig,
    snapshot: SharedSnapshot,
    metrics: Arc<Metrics>,
    admin: Arc<Admin>,
    _refreshers: Refreshers,
}

impl App {
    /// Binds both listeners first (port 0 picks a free port; read it back with
    /// [`App::proxy_addr`]), then starts one token refresher per identity.
    pub async fn build(config: Config) -> Result<App, StartError> {
        let bind = |what: &'static str, address: SocketAddr| async move {
            TcpListener::bind(address)
                .await
                .map_err(|source| StartError::Bind {
                    what,
                    address,
                    source,
                })
        };
        let proxy_listener = bind("listen.address", config.listen.address).await?;
        let admin_listener = bind("admin.address", config.admin.address).await?;

        let tls = tls::client_config(config.upstream.ca_file.as_deref())?;
        let metrics = Arc::new(Metrics::new());

        let mut caches = Vec::with_capacity(config.identities.len());
        let mut refreshers = Vec::with_capacity(config.identities.len());
        for identity in &config.identities {
            // Managed identity endpoints return their cached token, so asking again after Azure
            // DevOps refused it cannot help.
            let renewable = !matches!(identity.credential, Credential::Managed(_));
            metrics.register_identity(&identity.name, &token::REFRESH_RESULTS);
            let cache = Arc::new(TokenCache::new(identity.name.clone(), renewable));
            let source = TokenSource::new(identity, &tls).map_err(StartError::Credential)?;
            refreshers.push(tokio::spawn(token::run_refresher(
                source,
                cache.clone(),
                metrics.clone(),
            )));
            caches.push(cache);
        }
        let bound = proxy_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                what: "listen.address",
                address: config.listen.address,
                source,
            })?;
        let token_of = |identity: &str| caches.iter().find(|c| c.identity() == identity).cloned();
        let snapshot =
            Snapshot::build(&config, bound, &metrics, token_of).map_err(StartError::Credential)?;
        refreshers.extend(
            crate::feeds::spawn_resolvers(&config, &tls, token_of)
                .map_err(StartError::Credential)?,
        );
        let warning = config.inbound.open_beyond_loopback.then(|| {
            format!(
                "open mode on non-loopback address {}: anyone who reaches it acts as the service principal",
                config.listen.address
            )
        });
        let admin = Arc::new(Admin::new(metrics.clone(), caches, warning));
        Ok(App {
            config,
            proxy_listener,
            admin_listener,
            tls,
            snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
            metrics,
            admin,
            _refreshers: Refreshers(refreshers),
        })
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_listener
            .local_addr()
            .unwrap_or(self.config.listen.address)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .unwrap_or(self.config.admin.address)
    }

    /// Serves until `shutdown` completes, then drains open exchanges for the grace period.
    ///
    /// The proxy listener is served by `listen.workers` threads, each with its own single-threaded
    /// runtime and upstream connection pool: a client connection and the upstream connection it
    /// uses then live on one thread, with no cross-thread wake-ups per request (the way nginx
    /// and Pingora scale). Token refreshers and the admin listener stay on the caller's runtime.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), StartError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let listen = &self.config.listen;
        let request_ids = Arc::new(RequestIds::new());
        let options = ServeOptions {
            header_read_timeout: listen.header_read_timeout,
            max_header_bytes: listen.max_header_bytes,
            shutdown_grace_period: listen.shutdown_grace_period,
        };
        let mut dealers = Vec::with_capacity(listen.workers);
        let mut workers = Vec::with_capacity(listen.workers);
        for index in 0..listen.workers {
            let (dealer, connections) = tokio::sync::mpsc::unbounded_channel();
            let worker = Worker {
                connections,
                options: options.clone(),
                upstream: self.config.upstream.clone(),
                tls: self.tls.clone(),
                snapshot: self.snapshot.clone(),
                metrics: self.metrics.clone(),
                request_ids: request_ids.clone(),
            };
            let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("proxy-worker-{index}"))
                .spawn(move || {
                    worker.run();
                    let _ = done_tx.send(());
                })
                .map_err(StartError::Workers)?;
            dealers.push(dealer);
            workers.push(done_rx);
        }
        let acceptor = tokio::spawn(server::accept_for_workers(
            self.proxy_listener,
            server::Limits::new(listen.max_connections, listen.max_connections_per_address),
            dealers,
            stop_rx.clone(),
        ));

        let admin_task = tokio::spawn(server::serve(
            self.admin_listener,
            ServeOptions {
                header_read_timeout: Duration::from_secs(10),
                max_header_bytes: 16 * 1024,
                shutdown_grace_period: Duration::from_secs(1),
            },
            // Probes (the kubelet) and scrapers (Prometheus) come from addresses of their own:
            // neither can take every slot from the other.
            server::Limits::new(64, 16),
            self.admin.clone().into_handler(),
            stop_rx,
        ));
        shutdown.await;
        tracing::info!("shutting down: no new connections; draining open requests");
        let _ = stop_tx.send(true);
        // The acceptor's end closes the workers' channels, which starts their drain.
        let _ = acceptor.await;
        for done in workers {
            let _ = done.await;
        }
        let _ = admin_task.await;
        Ok(())
    }
}

/// Token refresher tasks, stopped when the app is dropped or finishes running.
struct Refreshers(Vec<JoinHandle<()>>);

impl Drop for Refreshers {
    fn drop(&mut self) {
        for refresher in &self.0 {
            refresher.abort();
        }
    }
}
