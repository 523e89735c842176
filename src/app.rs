//! The composition root: builds every part from a validated configuration, binds the listeners,
//! starts the token refreshers and the worker threads, and drains on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, DEFAULT_IDENTITY, InboundMode};
use crate::telemetry::metrics::Metrics;
use crate::token::{TokenCache, TokenSource};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
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
    auth: Arc<crate::proxy::authenticate::Authenticator>,
    metrics: Arc<Metrics>,
    admin: Arc<crate::server::admin::Admin>,
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

        let tls = crate::tls::client_config(config.upstream.ca_file.as_deref())?;
        let metrics = Arc::new(Metrics::new());

        let mut caches = Vec::with_capacity(config.identities.len());
        let mut refreshers = Vec::with_capacity(config.identities.len());
        for identity in &config.identities {
            // Managed identity endpoints return their cached token, so asking again after Azure
            // DevOps refused it cannot help.
            let renewable = !matches!(identity.credential, crate::config::Credential::Managed(_));
            metrics.register_identity(&identity.name, &crate::token::REFRESH_RESULTS);
            let cache = Arc::new(TokenCache::new(identity.name.clone(), renewable));
            let source = TokenSource::new(identity, &tls).map_err(StartError::Credential)?;
            refreshers.push(tokio::spawn(crate::token::run_refresher(
                source,
                cache.clone(),
                metrics.clone(),
            )));
            caches.push(cache);
        }
        // Configuration validation guarantees every named identity exists; a cache without a
        // refresher would only ever answer 503.
        let token_of = |identity: &str| {
            caches
                .iter()
                .find(|c| c.identity() == identity)
                .cloned()
                .ok_or_else(|| {
                    StartError::Credential(format!("identity `{identity}` is not configured"))
                })
        };
        let mode = match &config.inbound.mode {
            InboundMode::Keys => crate::proxy::authenticate::Mode::Keys {
                clients: config
                    .clients
                    .iter()
                    .map(|c| {
                        let client = crate::proxy::authenticate::Client::new(
                            &c.name,
                            c.allow.clone(),
                            token_of(&c.identity)?,
                            metrics.client(&c.name),
                        );
                        Ok((c.key_sha256, Arc::new(client)))
                    })
                    .collect::<Result<_, StartError>>()?,
            },
            InboundMode::Open { allow } => crate::proxy::authenticate::Mode::Open {
                client: Arc::new(crate::proxy::authenticate::Client::new(
                    OPEN_CLIENT,
                    allow.clone(),
                    token_of(DEFAULT_IDENTITY)?,
                    metrics.client(OPEN_CLIENT),
                )),
                hosts: own_host_names(
                    proxy_listener
                        .local_addr()
                        .map_err(|source| StartError::Bind {
                            what: "listen.address",
                            address: config.listen.address,
                            source,
                        })?,
                    &config.inbound.allowed_hosts,
                ),
            },
        };
        let auth = Arc::new(crate::proxy::authenticate::Authenticator::new(mode));
        let warning = config.inbound.open_beyond_loopback.then(|| {
            format!(
                "open mode on non-loopback address {}: anyone who reaches it acts as the service principal",
                config.listen.address
            )
        });
        let admin = Arc::new(crate::server::admin::Admin::new(
            metrics.clone(),
            caches,
            warning,
        ));
        Ok(App {
            config,
            proxy_listener,
            admin_listener,
            tls,
            auth,
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
        let request_ids = Arc::new(crate::proxy::body::RequestIds::new());
        let options = crate::server::ServeOptions {
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
                auth: self.auth.clone(),
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
        let acceptor = tokio::spawn(crate::server::accept_for_workers(
            self.proxy_listener,
            listen.max_connections,
            dealers,
            stop_rx.clone(),
        ));

        let admin = self.admin.clone();
        let admin_task = tokio::spawn(crate::server::serve(
            self.admin_listener,
            crate::server::ServeOptions {
                header_read_timeout: Duration::from_secs(10),
                max_header_bytes: 16 * 1024,
                shutdown_grace_period: Duration::from_secs(1),
            },
            64,
            move |request| {
                let response = admin.handle(&request);
                async move { response }
            },
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

/// One proxy worker thread: serves the connections dealt to it on its own single-threaded
/// runtime, with its own upstream connection pool.
struct Worker {
    connections: tokio::sync::mpsc::UnboundedReceiver<crate::server::Accepted>,
    options: crate::server::ServeOptions,
    upstream: crate::config::Upstream,
    tls: rustls::ClientConfig,
    auth: Arc<crate::proxy::authenticate::Authenticator>,
    metrics: Arc<Metrics>,
    request_ids: Arc<crate::proxy::body::RequestIds>,
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
            // The header-read and response timeouts of this worker's requests run on it.
            tokio::spawn(crate::server::timer::drive());
            let upstream = crate::proxy::upstream::Upstream::new(&self.upstream, self.tls);
            let proxy = Arc::new(crate::proxy::Proxy::new(
                upstream,
                self.auth,
                self.metrics,
                self.request_ids,
            ));
            let handler = move |request| proxy.clone().handle(request);
            crate::server::serve_dealt(self.connections, self.options, handler).await;
        });
        // Dropping the runtime cancels whatever outlived the grace period.
    }
}

/// The client name open-mode requests are logged and counted under.
pub const OPEN_CLIENT: &str = "open";

/// The `Host` values that name the listener itself: its address, and the loopback names with its
/// port when it listens on loopback or on every address, plus what the operator added.
fn own_host_names(bound: SocketAddr, extra: &[String]) -> Box<[http::HeaderValue]> {
    let port = bound.port();
    let mut names = vec![bound.to_string()];
    if bound.ip().is_loopback() || bound.ip().is_unspecified() {
        names.extend([
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
        ]);
    }
    names.extend(extra.iter().cloned());
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter_map(|name| http::HeaderValue::try_from(name).ok())
        .collect()
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
