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

use crate::config::{Config, ConfigError, TlsFiles};
use crate::issuers::Issuers;
use crate::proxy::exchange::RequestIds;
use crate::proxy::snapshot::{SharedSnapshot, Snapshot};
use crate::server::admin::Admin;
use crate::server::worker::Worker;
use crate::server::{self, ServeOptions};
use crate::telemetry::metrics::Metrics;
use crate::tls::{self, ListenerCertificate};
use crate::token::Identities;
use rustls::sign::CertifiedKey;

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
    identities: Identities,
    /// The feed rules' GUID lookups, started again with every configuration.
    feeds: Feeds,
    certificates: ListenerCertificates,
    issuers: Issuers,
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
        let certificates = ListenerCertificates::start(&config)?;
        let metrics = Arc::new(Metrics::new());

        if let Some(proxy) = &config.upstream.egress.proxy
            && !proxy.is_empty()
        {
            tracing::info!(
                proxy = %config.upstream.egress.shown,
                no_proxy = %config.upstream.egress.no_proxy,
                "connections to Azure DevOps and Entra ID go through this egress proxy"
            );
        }
        let identities =
            Identities::start(&config.identities, &tls, &config.upstream.egress, &metrics)
                .map_err(StartError::Credential)?;
        let bound = proxy_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                what: "listen.address",
                address: config.listen.address,
                source,
            })?;
        let token_of = |identity: &str| identities.cache(identity);
        let mut issuers = Issuers::default();
        issuers
            .start_missing(&config, &tls)
            .map_err(StartError::Credential)?;
        let snapshot = Snapshot::build(&config, bound, &metrics, token_of, &issuers)
            .map_err(StartError::Credential)?;
        let feeds = Feeds(
            crate::feeds::spawn_resolvers(&config, &tls, token_of)
                .map_err(StartError::Credential)?,
        );
        metrics.set_config(&fingerprint(&config));
        let warning = standing_warning(&config);
        let admin = Arc::new(Admin::new(metrics.clone(), identities.caches(), warning));
        Ok(App {
            config,
            proxy_listener,
            admin_listener,
            tls,
            snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
            metrics,
            admin,
            identities,
            feeds,
            certificates,
            issuers,
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
        let (_none, reloads) = tokio::sync::mpsc::unbounded_channel();
        self.run_with_reloads(shutdown, reloads).await
    }

    /// [`App::run`], applying each configuration `reloads` delivers (`SIGHUP` in the binary).
    pub async fn run_with_reloads(
        self,
        shutdown: impl Future<Output = ()> + Send,
        mut reloads: tokio::sync::mpsc::UnboundedReceiver<Result<Config, ConfigError>>,
    ) -> Result<(), StartError> {
        let bound = self.proxy_addr();
        let (stop_tx, stop_rx) = watch::channel(false);
        let listen = &self.config.listen;
        let [proxy_tls, admin_tls] = self.certificates.acceptors()?;
        let request_ids = Arc::new(RequestIds::new());
        let options = ServeOptions {
            header_read_timeout: listen.header_read_timeout,
            max_header_bytes: listen.max_header_bytes,
            shutdown_grace_period: listen.shutdown_grace_period,
            tls: proxy_tls,
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
                tls: admin_tls,
            },
            // Probes (the kubelet) and scrapers (Prometheus) come from addresses of their own:
            // neither can take every slot from the other.
            server::Limits::new(64, 16),
            self.admin.clone().into_handler(),
            stop_rx,
        ));
        let mut running = Running {
            config: self.config,
            bound,
            tls: self.tls,
            snapshot: self.snapshot,
            metrics: self.metrics,
            admin: self.admin,
            identities: self.identities,
            feeds: self.feeds,
            certificates: self.certificates,
            issuers: self.issuers,
        };
        tokio::pin!(shutdown);
        let mut reloading = true;
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                loaded = reloads.recv(), if reloading => match loaded {
                    Some(loaded) => running.reload(loaded),
                    None => reloading = false,
                },
            }
        }
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

/// The feed lookups of the configuration in force, stopped with it.
struct Feeds(Vec<JoinHandle<()>>);

impl Drop for Feeds {
    fn drop(&mut self) {
        for lookup in &self.0 {
            lookup.abort();
        }
    }
}

/// What `/readyz` keeps saying while the configuration is in force, also logged when it takes
/// effect: open mode beyond loopback, and learn mode, which does not enforce rules.
fn standing_warning(config: &Config) -> Option<String> {
    let mut warnings = Vec::new();
    if config.inbound.open_beyond_loopback {
        warnings.push(format!(
            "open mode on non-loopback address {}: anyone who reaches it acts as the service principal",
            config.listen.address
        ));
    }
    let mut learning: Vec<&str> = config
        .clients
        .iter()
        .filter(|client| client.learn)
        .map(|client| client.name.as_str())
        .collect();
    if config.inbound.learn
        && matches!(config.inbound.mode, crate::config::InboundMode::Open { .. })
    {
        learning.push(crate::proxy::snapshot::OPEN_CLIENT);
    }
    if !learning.is_empty() {
        let warning = format!(
            "learn mode: the rules of {} are not enforced; calls they would refuse are forwarded \
             and logged as learn=would_deny",
            learning.join(", ")
        );
        tracing::warn!("{warning}");
        warnings.push(warning);
    }
    (!warnings.is_empty()).then(|| warnings.join("; "))
}

/// A hash of the configuration in force, secrets left out (they print as placeholders).
fn fingerprint(config: &Config) -> String {
    let hex = crate::keys::to_hex(&crate::keys::sha256(format!("{config:?}").as_bytes()));
    hex[..16].to_string()
}

/// What a reload changes, held while the app serves.
struct Running {
    config: Config,
    bound: SocketAddr,
    tls: rustls::ClientConfig,
    snapshot: SharedSnapshot,
    metrics: Arc<Metrics>,
    admin: Arc<Admin>,
    identities: Identities,
    feeds: Feeds,
    certificates: ListenerCertificates,
    issuers: Issuers,
}

impl Running {
    /// Validated in full before anything changes; on any error the running configuration stays
    /// in force. Requests in flight keep the snapshot they started with.
    fn reload(&mut self, loaded: Result<Config, ConfigError>) {
        match self.apply(loaded) {
            Ok(()) => {
                self.metrics.count_reload(true);
                tracing::info!("configuration reloaded");
            }
            Err(error) => {
                self.metrics.count_reload(false);
                tracing::error!(%error, "configuration not reloaded; the running one stays in force");
            }
        }
    }

    fn apply(&mut self, loaded: Result<Config, ConfigError>) -> Result<(), String> {
        let mut config = loaded.map_err(|e| e.to_string())?;
        let fixed = restart_only_changes(&self.config, &config);
        // The workers' connectors took it at start; tokens and feed lookups keep to it too.
        config.upstream.egress = self.config.upstream.egress.clone();
        if !fixed.is_empty() {
            tracing::warn!(
                keys = %fixed.join(", "),
                "these settings change only with a restart; they keep their running values"
            );
        }
        // Read before anything changes: a certificate that does not load fails the whole reload.
        let certificates = self.certificates.load(&config)?;
        self.identities.reconcile(
            &config.identities,
            &self.tls,
            &config.upstream.egress,
            &self.metrics,
        )?;
        let token_of = |identity: &str| self.identities.cache(identity);
        let issuers = &mut self.issuers;
        let built = issuers
            .start_missing(&config, &self.tls)
            .and_then(|()| Snapshot::build(&config, self.bound, &self.metrics, token_of, issuers))
            .and_then(|snapshot| {
                Ok((
                    snapshot,
                    crate::feeds::spawn_resolvers(&config, &self.tls, token_of)?,
                ))
            });
        let (snapshot, feeds) = match built {
            Ok(built) => built,
            Err(error) => {
                // Back to the issuers and identities of the configuration that stays in force.
                self.issuers.stop_unused(&self.config);
                self.identities.reconcile(
                    &self.config.identities,
                    &self.tls,
                    &self.config.upstream.egress,
                    &self.metrics,
                )?;
                return Err(error);
            }
        };
        self.snapshot.store(Arc::new(snapshot));
        self.issuers.stop_unused(&config);
        for (listener, certificate) in certificates {
            listener.replace(certificate);
        }
        self.feeds = Feeds(feeds);
        self.admin.set_tokens(self.identities.caches());
        self.admin.set_warning(standing_warning(&config));
        self.metrics.set_config(&fingerprint(&config));
        self.config = config;
        Ok(())
    }
}

/// A listener and the certificate it is to present from now on.
type Replacement = (Arc<ListenerCertificate>, Arc<CertifiedKey>);

/// The certificates the TLS listeners present. A reload swaps them; whether a listener speaks
/// TLS at all is settled at start.
struct ListenerCertificates {
    proxy: Option<Arc<ListenerCertificate>>,
    admin: Option<Arc<ListenerCertificate>>,
}

impl ListenerCertificates {
    fn start(config: &Config) -> Result<Self, StartError> {
        let load = |files: &Option<TlsFiles>, key: &str| -> Result<_, StartError> {
            Ok(match files {
                Some(files) => Some(ListenerCertificate::new(tls::load_certificate(
                    &files.certificate_file,
                    &files.key_file,
                    key,
                )?)),
                None => None,
            })
        };
        Ok(Self {
            proxy: load(&config.listen.tls, "listen.tls")?,
            admin: load(&config.admin.tls, "admin.tls")?,
        })
    }

    /// The proxy listener's TLS (h2 offered) and the admin listener's, for those that have it.
    fn acceptors(&self) -> Result<[Option<tokio_rustls::TlsAcceptor>; 2], StartError> {
        Ok([
            acceptor(&self.proxy, server::PROXY_ALPN)?,
            acceptor(&self.admin, server::ADMIN_ALPN)?,
        ])
    }

    /// Every certificate the configuration names for a listener serving TLS, read before any
    /// is swapped in.
    fn load(&self, config: &Config) -> Result<Vec<Replacement>, String> {
        let mut loaded = Vec::new();
        for (listener, files, key) in [
            (&self.proxy, &config.listen.tls, "listen.tls"),
            (&self.admin, &config.admin.tls, "admin.tls"),
        ] {
            if let (Some(listener), Some(files)) = (listener, files) {
                let certificate =
                    tls::load_certificate(&files.certificate_file, &files.key_file, key)
                        .map_err(|e| e.to_string())?;
                loaded.push((listener.clone(), certificate));
            }
        }
        Ok(loaded)
    }
}

fn acceptor(
    certificate: &Option<Arc<ListenerCertificate>>,
    alpn: &[&[u8]],
) -> Result<Option<tokio_rustls::TlsAcceptor>, StartError> {
    Ok(match certificate {
        Some(certificate) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
            tls::server_config(certificate.clone(), alpn)?,
        ))),
        None => None,
    })
}

/// Settings the workers and listeners took at start.
fn restart_only_changes(running: &Config, loaded: &Config) -> Vec<&'static str> {
    let (a, b) = (&running.listen, &loaded.listen);
    let (u, v) = (&running.upstream, &loaded.upstream);
    [
        ("listen.address", a.address != b.address),
        ("listen.tls", a.tls.is_some() != b.tls.is_some()),
        (
            "admin.tls",
            running.admin.tls.is_some() != loaded.admin.tls.is_some(),
        ),
        ("listen.workers", a.workers != b.workers),
        (
            "listen.max_connections",
            a.max_connections != b.max_connections,
        ),
        (
            "listen.max_connections_per_address",
            a.max_connections_per_address != b.max_connections_per_address,
        ),
        (
            "listen.header_read_timeout",
            a.header_read_timeout != b.header_read_timeout,
        ),
        (
            "listen.max_header_bytes",
            a.max_header_bytes != b.max_header_bytes,
        ),
        (
            "admin.address",
            running.admin.address != loaded.admin.address,
        ),
        (
            "upstream.url",
            u.scheme != v.scheme || u.authority != v.authority,
        ),
        ("upstream.ca_file", u.ca_file != v.ca_file),
        (
            "upstream.connect_timeout",
            u.connect_timeout != v.connect_timeout,
        ),
        (
            "upstream.response_timeout",
            u.response_timeout != v.response_timeout,
        ),
        (
            "upstream.pool_idle_timeout",
            u.pool_idle_timeout != v.pool_idle_timeout,
        ),
        (
            "upstream.max_replay_body_bytes",
            u.max_replay_body_bytes != v.max_replay_body_bytes,
        ),
        ("upstream.resolve", u.resolve != v.resolve),
        ("upstream.proxy", u.egress != v.egress),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}
