//! `ado-auth-proxy`: an authenticating reverse proxy for Azure DevOps.
//!
//! Tools send their requests (with a PAT or nothing) to the proxy; the proxy removes whatever
//! credential they sent, attaches a cached Entra ID access token of a service principal and
//! forwards the request to Azure DevOps, streaming both ways.
//!
//! Request path, one module per stage: [`server`] accepts, [`target`] checks the request target,
//! [`token`] supplies the current token, [`headers`] rewrites headers, [`forward`] talks to Azure
//! DevOps, [`body`] streams and records the exchange; [`proxy`] runs them in order.

pub mod admin;
pub mod allow;
pub mod body;
pub mod config;
pub mod error;
pub mod forward;
pub mod headers;
pub mod log_writer;
pub mod metrics;
pub mod proxy;
pub mod secret;
pub mod server;
pub mod target;
pub mod tls;
pub mod token;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, DEFAULT_IDENTITY};
use crate::metrics::Metrics;
use crate::token::{TokenCache, TokenSource};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {address} ({what}): {source}")]
    Bind {
        what: &'static str,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot build the Entra ID client: {0}")]
    HttpClient(String),
    #[error("cannot start proxy worker threads: {0}")]
    Workers(std::io::Error),
}

/// A built proxy: listeners bound, token refreshers running. [`App::run`] serves until shutdown.
pub struct App {
    config: Config,
    proxy_listener: TcpListener,
    admin_listener: TcpListener,
    tls: rustls::ClientConfig,
    default_token: Arc<TokenCache>,
    metrics: Arc<Metrics>,
    admin: Arc<admin::Admin>,
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
        let entra = entra_client(tls.clone())?;
        let metrics = Arc::new(Metrics::new());

        let mut caches = Vec::with_capacity(config.identities.len());
        let mut refreshers = Vec::with_capacity(config.identities.len());
        for identity in &config.identities {
            let cache = Arc::new(TokenCache::new(identity.name.clone()));
            let source = TokenSource::new(identity.clone(), entra.clone());
            refreshers.push(tokio::spawn(token::run_refresher(
                source,
                cache.clone(),
                metrics.clone(),
            )));
            caches.push(cache);
        }
        let default_token = caches
            .iter()
            .find(|c| c.identity() == DEFAULT_IDENTITY)
            .cloned()
            .unwrap_or_else(|| Arc::new(TokenCache::new(DEFAULT_IDENTITY)));

        let admin = Arc::new(admin::Admin::new(metrics.clone(), caches));
        Ok(App {
            config,
            proxy_listener,
            admin_listener,
            tls,
            default_token,
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
        let listener = self
            .proxy_listener
            .into_std()
            .map_err(StartError::Workers)?;
        let request_ids = Arc::new(body::RequestIds::new());
        let mut workers = Vec::with_capacity(listen.workers);
        for index in 0..listen.workers {
            let worker = Worker {
                listener: listener.try_clone().map_err(StartError::Workers)?,
                options: server::ServeOptions {
                    header_read_timeout: listen.header_read_timeout,
                    max_header_bytes: listen.max_header_bytes,
                    max_connections: listen.max_connections.div_ceil(listen.workers),
                    shutdown_grace_period: listen.shutdown_grace_period,
                },
                upstream: self.config.upstream.clone(),
                tls: self.tls.clone(),
                token: self.default_token.clone(),
                metrics: self.metrics.clone(),
                request_ids: request_ids.clone(),
                stop: stop_rx.clone(),
            };
            let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("proxy-worker-{index}"))
                .spawn(move || {
                    worker.run();
                    let _ = done_tx.send(());
                })
                .map_err(StartError::Workers)?;
            workers.push(done_rx);
        }
        drop(listener);

        let admin = self.admin.clone();
        let admin_task = tokio::spawn(server::serve(
            self.admin_listener,
            server::ServeOptions {
                header_read_timeout: Duration::from_secs(10),
                max_header_bytes: 16 * 1024,
                max_connections: 64,
                shutdown_grace_period: Duration::from_secs(1),
            },
            move |request| {
                let response = admin.handle(&request);
                async move { response }
            },
            stop_rx,
        ));
        shutdown.await;
        tracing::info!("shutting down: no new connections; draining open requests");
        let _ = stop_tx.send(true);
        for done in workers {
            let _ = done.await;
        }
        let _ = admin_task.await;
        Ok(())
    }
}

/// One proxy worker thread's share of the work.
struct Worker {
    listener: std::net::TcpListener,
    options: server::ServeOptions,
    upstream: config::Upstream,
    tls: rustls::ClientConfig,
    token: Arc<TokenCache>,
    metrics: Arc<Metrics>,
    request_ids: Arc<body::RequestIds>,
    stop: watch::Receiver<bool>,
}

impl Worker {
    fn run(self) {
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
            let listener = match TcpListener::from_std(self.listener) {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::error!(%error, "cannot register the listener in a worker");
                    return;
                }
            };
            let upstream = forward::Upstream::new(&self.upstream, self.tls);
            let proxy = Arc::new(proxy::Proxy::new(
                upstream,
                self.token,
                self.metrics,
                self.request_ids,
            ));
            let handler = move |request| {
                let proxy = proxy.clone();
                async move { proxy.handle(request).await }
            };
            server::serve(listener, self.options, handler, self.stop).await;
        });
        // Dropping the runtime cancels whatever outlived the grace period.
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

/// The client for Entra ID: never follows redirects (a redirect would carry the client secret to
/// another host), bounded in time.
pub fn entra_client(tls: rustls::ClientConfig) -> Result<reqwest::Client, StartError> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("ado-auth-proxy/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| StartError::HttpClient(e.to_string()))
}
