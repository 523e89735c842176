//! Everything a request reads from configuration (the clients, how they are recognised, their
//! rules and the identity each acts as), as one immutable value behind one atomic pointer. A
//! request loads it once and keeps it to its end; a reload builds a new one in full and swaps the
//! pointer, so no request ever sees half of two configurations.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderValue;

use super::authenticate::Inbound;
use super::limits::ClientLimits;
use super::rewrite::UrlMap;
use super::route::Served;
use crate::config::{ClientProof, Config, DEFAULT_IDENTITY, InboundMode, Network, Priority};
use crate::issuers::Issuers;
use crate::issuers::verify::{TokenClient, TokenClients};
use crate::policy::Allowlist;
use crate::telemetry::ClientTelemetry;
use crate::telemetry::metrics::Metrics;
use crate::token::TokenCache;

/// The client name open-mode requests are logged and counted under.
pub const OPEN_CLIENT: &str = "open";

/// The pointer every worker reads and a reload swaps.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

pub struct Snapshot {
    pub inbound: Inbound,
    /// The Azure DevOps hosts requests may go to.
    pub hosts: Served,
    /// Load balancers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Box<[Network]>,
    /// `listen.public_url`; unset, each request's `Host` on a loopback listener.
    pub public_url: Option<Arc<UrlMap>>,
    /// Indexed by what [`Inbound::authenticate`] returns.
    pub clients: Box<[Client]>,
    /// How telemetry names and counts each client, at the same index.
    pub telemetry: Box<[ClientTelemetry]>,
    /// The longest a lower-priority request waits while Azure DevOps throttles its identity.
    pub max_throttle_wait: std::time::Duration,
}

/// A configured client: what it may do and whose token it sends.
pub struct Client {
    pub name: Arc<str>,
    pub allow: Allowlist,
    pub token: Arc<TokenCache>,
    /// Learn mode: what `allow` refuses is forwarded and logged as `would_deny`.
    pub learn: bool,
    pub limits: ClientLimits,
    pub priority: Priority,
}

impl Snapshot {
    /// `listener`: the proxy listener's bound address, whose names open mode accepts in `Host`.
    /// `token_of`: the cache of a configured identity. `issuers`: the keys of the issuers
    /// keyless clients name.
    pub fn build(
        config: &Config,
        listener: SocketAddr,
        metrics: &Metrics,
        token_of: impl Fn(&str) -> Option<Arc<TokenCache>>,
        issuers: &Issuers,
    ) -> Result<Snapshot, String> {
        // Validation guarantees every named identity exists; a cache without a refresher would
        // only ever answer 503.
        let token = |identity: &str| {
            token_of(identity).ok_or_else(|| format!("identity `{identity}` is not configured"))
        };
        let (inbound, clients) = match &config.inbound.mode {
            InboundMode::Keys => {
                let mut key_hashes = Vec::with_capacity(config.clients.len());
                let mut token_clients = Vec::new();
                let mut clients = Vec::with_capacity(config.clients.len());
                for (index, client) in config.clients.iter().enumerate() {
                    match &client.proof {
                        ClientProof::Key(hash) => key_hashes.push((*hash, index)),
                        ClientProof::Token(rule) => token_clients.push(TokenClient {
                            index,
                            rule: rule.clone(),
                            keys: issuers.keys(&rule.issuer, &rule.keys).ok_or_else(|| {
                                format!("the keys of issuer {} are not being fetched", rule.issuer)
                            })?,
                        }),
                    }
                    clients.push(Client {
                        name: client.name.as_str().into(),
                        allow: client.allow.clone(),
                        token: token(&client.identity)?,
                        learn: client.learn,
                        limits: ClientLimits::new(&client.limits),
                        priority: client.priority,
                    });
                }
                let inbound = Inbound::Keys {
                    key_hashes: key_hashes.into_boxed_slice(),
                    tokens: (!token_clients.is_empty()).then(|| TokenClients::new(token_clients)),
                };
                (inbound, clients)
            }
            InboundMode::Open { allow } => {
                let hosts = own_host_names(listener, &config.inbound.allowed_hosts);
                let client = Client {
                    name: OPEN_CLIENT.into(),
                    allow: allow.clone(),
                    token: token(DEFAULT_IDENTITY)?,
                    learn: config.inbound.learn,
                    limits: ClientLimits::new(&Default::default()),
                    priority: Priority::Normal,
                };
                (Inbound::Open { hosts }, vec![client])
            }
        };
        let telemetry = clients
            .iter()
            .map(|client| {
                metrics.set_learning(&client.name, client.learn);
                ClientTelemetry::new(metrics, &client.name, client.allow.rules())
            })
            .collect();
        Ok(Snapshot {
            inbound,
            trusted_proxies: config.listen.trusted_proxies.clone().into_boxed_slice(),
            public_url: config
                .listen
                .public_url
                .as_deref()
                .map(|url| Arc::new(UrlMap::new(url))),
            hosts: Served {
                default_host: config.upstream.authority.host().to_ascii_lowercase().into(),
                others: config.upstream.hosts.clone(),
                plain_origin: (config.upstream.scheme == http::uri::Scheme::HTTP)
                    .then(|| format!("http://{}", config.upstream.authority).into()),
            },
            clients: clients.into_boxed_slice(),
            telemetry,
            max_throttle_wait: config.inbound.max_throttle_wait,
        })
    }
}

/// The `Host` values that name the listener itself: its address, and the loopback names with its
/// port when it listens on loopback or on every address, plus what the operator added.
fn own_host_names(bound: SocketAddr, extra: &[String]) -> Box<[HeaderValue]> {
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
        .filter_map(|name| HeaderValue::try_from(name).ok())
        .collect()
}
