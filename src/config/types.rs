//! The validated configuration's parts, as the rest of the program sees them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderValue;
use http::uri::{Authority, Scheme};

use super::network::Network;
use crate::policy::Hosts;
use crate::policy::{Allowlist, ClaimPattern};
use crate::secret::Secret;

#[derive(Debug, Clone)]
pub struct Inbound {
    pub mode: InboundMode,
    /// Extra `Host` values open mode accepts besides the listener's own address.
    pub allowed_hosts: Vec<String>,
    /// Open mode on a non-loopback address, explicitly allowed: warn loudly.
    pub open_beyond_loopback: bool,
    /// Open mode in learn mode (see [`ClientConfig::learn`]).
    pub learn: bool,
    /// The longest a lower-priority request waits while Azure DevOps throttles its identity.
    pub max_throttle_wait: Duration,
}

#[derive(Debug, Clone)]
pub enum InboundMode {
    /// Every request must carry a configured client key.
    Keys,
    /// No key: local callers act as the default identity within `allow`.
    Open { allow: Allowlist },
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub name: String,
    pub proof: ClientProof,
    pub identity: String,
    pub allow: Allowlist,
    /// Requests `allow` would refuse are forwarded anyway and logged as `would_deny`.
    pub learn: bool,
    pub limits: ClientLimits,
    pub priority: Priority,
}

/// A client's own share: requests in flight, and a rate with a burst (a token bucket).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ClientLimits {
    pub max_concurrent_requests: Option<usize>,
    /// Requests per second, and how many may come at once above it.
    pub rate: Option<(f64, u32)>,
}

/// Who goes first while Azure DevOps throttles the identity clients share: high never waits,
/// normal waits half of what Azure DevOps asks, low all of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

/// How a client proves who it is.
#[derive(Debug, Clone)]
pub enum ClientProof {
    /// The SHA-256 of its key.
    Key([u8; 32]),
    /// An OIDC token (GitHub Actions, Kubernetes, Azure Pipelines, Entra ID).
    Token(ClientToken),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientToken {
    /// Compared exactly with the token's `iss`.
    pub issuer: String,
    /// Must be among the token's `aud`.
    pub audience: String,
    /// Every one must match the claim of that name, a string.
    pub claims: Vec<(String, ClaimPattern)>,
    pub keys: IssuerKeySource,
}

/// Where an issuer's signing keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IssuerKeySource {
    /// `{issuer}/.well-known/openid-configuration`, then its `jwks_uri`.
    Discovery,
    /// A JWKS file, read again when a token names a key it lacks.
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Listen {
    pub address: SocketAddr,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    /// Open connections from one source address; 0: no cap.
    pub max_connections_per_address: usize,
    pub shutdown_grace_period: Duration,
    /// Threads serving the proxy listener, each with its own runtime and upstream pool.
    pub workers: usize,
    /// Scheme and authority clients reach the proxy at (no trailing slash); `None`: each
    /// request's `Host`, on a loopback listener only.
    pub public_url: Option<String>,
    /// Whose `X-Forwarded-For` names the client in the audit line.
    pub trusted_proxies: Vec<Network>,
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Clone)]
pub struct Admin {
    pub address: SocketAddr,
    pub tls: Option<TlsFiles>,
}

/// A listener's certificate chain and private key, PEM files read again on every reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub certificate_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
    /// The `Host` header every forwarded request carries, computed once.
    pub host_header: HeaderValue,
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub pool_idle_timeout: Duration,
    /// Request bodies up to this size are kept so the request can be replayed once with a renewed
    /// token when Azure DevOps refuses the current one; larger bodies stream without a copy.
    pub max_replay_body_bytes: usize,
    /// The Azure DevOps hosts served at `/_host/{name}/...`.
    pub hosts: Hosts,
    /// Host names connected to at a given address instead of the one DNS gives.
    pub resolve: Vec<(String, SocketAddr)>,
    /// The corporate proxy, if connections go through one.
    pub egress: Egress,
}

/// The HTTP proxy that connections to Azure DevOps and Entra ID go through (`CONNECT`), from
/// `upstream.proxy` or the `HTTPS_PROXY` family of variables; `Debug` never shows credentials.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Egress {
    /// `http://[user:password@]host:port`; `None`: every connection is direct.
    pub proxy: Option<Secret>,
    /// The proxy's URL without credentials, for the log.
    pub shown: String,
    /// `NO_PROXY`'s hosts, domains and address ranges, reached directly.
    pub no_proxy: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub name: String,
    pub scope: String,
    pub credential: Credential,
}

impl Identity {
    /// The app registration's tenant, when the identity is one (managed identities have none).
    pub fn tenant_id(&self) -> Option<&str> {
        match &self.credential {
            Credential::App { app, .. } => Some(&app.tenant_id),
            Credential::Managed(_) => None,
        }
    }

    pub fn client_id(&self) -> Option<&str> {
        match &self.credential {
            Credential::App { app, .. } => Some(&app.client_id),
            Credential::Managed(managed) => managed.client_id.as_deref(),
        }
    }

    /// The Azure DevOps resource id a managed identity asks for: the scope without `/.default`.
    pub fn resource(&self) -> &str {
        self.scope.strip_suffix("/.default").unwrap_or(&self.scope)
    }
}

/// How an identity gets its tokens.
#[derive(Debug, Clone, PartialEq)]
pub enum Credential {
    /// An app registration that proves itself at Entra ID's token endpoint.
    App { app: EntraApp, proof: Proof },
    /// A managed identity: the platform's local endpoint hands out tokens, no credential needed.
    Managed(ManagedIdentity),
}

impl Credential {
    /// What kind of credential this is, for `check` and logs.
    pub fn describe(&self) -> &'static str {
        match self {
            Credential::App { proof, .. } => match proof {
                Proof::Secret(_) => "client secret",
                Proof::Certificate(_) => "client certificate",
                Proof::Federated(FederatedSource::File(_)) => "workload identity, token file",
                Proof::Federated(FederatedSource::GitHubActions { .. }) => {
                    "workload identity, GitHub Actions"
                }
            },
            Credential::Managed(managed) => match managed.protocol {
                ManagedProtocol::Imds => "managed identity, IMDS",
                ManagedProtocol::AppService { .. } => "managed identity, App Service",
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EntraApp {
    pub tenant_id: String,
    pub client_id: String,
    /// Scheme and host of the Entra ID authority, without a trailing slash.
    pub authority: String,
}

impl EntraApp {
    pub fn token_endpoint(&self) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.authority, self.tenant_id)
    }
}

/// What an app registration shows Entra ID to prove it is itself.
#[derive(Debug, Clone, PartialEq)]
pub enum Proof {
    Secret(SecretSource),
    Certificate(CertificateFiles),
    Federated(FederatedSource),
}

/// Where a secret lives. A file is read at every token fetch so a rotated Kubernetes secret is used
/// without a restart.
#[derive(Debug, Clone, PartialEq)]
pub enum SecretSource {
    File(PathBuf),
    Value(Secret),
}

/// A certificate registered on the app registration and its private key; read at every token
/// fetch, so a renewed certificate is used without a restart.
#[derive(Debug, Clone, PartialEq)]
pub struct CertificateFiles {
    /// PEM certificate, optionally followed by its key; or a password-less PKCS#12 file.
    pub certificate_file: PathBuf,
    pub private_key_file: Option<PathBuf>,
    /// Send the certificate itself (`x5c`), for subject-name/issuer authentication.
    pub send_x5c: bool,
    pub algorithm: AssertionAlgorithm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssertionAlgorithm {
    /// RSASSA-PSS with SHA-256: what Entra ID's current documentation asks for.
    Ps256,
    /// RSASSA-PKCS1-v1_5 with SHA-256: older tenants and libraries.
    Rs256,
}

/// Where a federated token (a JWT from a trusted issuer) comes from, fresh for every exchange.
#[derive(Debug, Clone, PartialEq)]
pub enum FederatedSource {
    /// A projected service-account token that the platform rotates (AKS workload identity).
    File(PathBuf),
    /// GitHub Actions' OIDC endpoint of the running job.
    GitHubActions {
        request_url: String,
        request_token: Secret,
        audience: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ManagedIdentity {
    /// The full token URL of the platform's endpoint.
    pub endpoint: String,
    pub protocol: ManagedProtocol,
    /// Selects a user-assigned identity; none means the system-assigned one.
    pub client_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ManagedProtocol {
    /// Azure Instance Metadata Service (VMs, AKS nodes): header `Metadata: true`.
    Imds,
    /// App Service, Functions and Container Apps: header `X-IDENTITY-HEADER`.
    AppService { identity_header: Secret },
}
