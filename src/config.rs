//! Configuration: figment layers (defaults < TOML file < `ADO_AUTH_PROXY_*` environment, plus the
//! standard `AZURE_*` variables for the default identity) deserialized into raw structs, then
//! validated once into [`Config`], which the rest of the program uses and never re-parses.
//!
//! Every error names the key, where its value came from, and what is wrong. No error message ever
//! quotes a secret's value.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use http::HeaderValue;
use http::uri::{Authority, Scheme, Uri};
use serde::Deserialize;

use crate::keys;
use crate::policy::{Allowlist, Rule};
use crate::secret::Secret;

/// Azure DevOps' application id; `.default` asks for the permissions granted to the principal.
pub const AZURE_DEVOPS_SCOPE: &str = "499b84ac-1321-427f-aa17-267ca6975798/.default";
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
pub const DEFAULT_IDENTITY: &str = "default";
const ENV_PREFIX: &str = "ADO_AUTH_PROXY_";
const MAX_REPLAY_BODY_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Parse(String),
    #[error("configuration key `{key}` (from {origin}): {problem}")]
    Invalid {
        key: String,
        origin: String,
        problem: String,
    },
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Listen,
    pub admin: Admin,
    pub upstream: Upstream,
    pub identities: Vec<Identity>,
    pub inbound: Inbound,
    pub clients: Vec<ClientConfig>,
}

#[derive(Debug, Clone)]
pub struct Inbound {
    pub mode: InboundMode,
    /// Extra `Host` values open mode accepts besides the listener's own address.
    pub allowed_hosts: Vec<String>,
    /// Open mode on a non-loopback address, explicitly allowed: warn loudly.
    pub open_beyond_loopback: bool,
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
    pub key_sha256: [u8; 32],
    pub identity: String,
    pub allow: Allowlist,
}

#[derive(Debug, Clone)]
pub struct Listen {
    pub address: SocketAddr,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub shutdown_grace_period: Duration,
    /// Threads serving the proxy listener, each with its own runtime and upstream pool.
    pub workers: usize,
}

#[derive(Debug, Clone)]
pub struct Admin {
    pub address: SocketAddr,
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
}

#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
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

#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
pub enum Proof {
    Secret(SecretSource),
    Certificate(CertificateFiles),
    Federated(FederatedSource),
}

/// Where a secret lives. A file is read at every token fetch so a rotated Kubernetes secret is used
/// without a restart.
#[derive(Debug, Clone)]
pub enum SecretSource {
    File(PathBuf),
    Value(Secret),
}

/// A certificate registered on the app registration and its private key; read at every token
/// fetch, so a renewed certificate is used without a restart.
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
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

#[derive(Debug, Clone)]
pub struct ManagedIdentity {
    /// The full token URL of the platform's endpoint.
    pub endpoint: String,
    pub protocol: ManagedProtocol,
    /// Selects a user-assigned identity; none means the system-assigned one.
    pub client_id: Option<String>,
}

#[derive(Debug, Clone)]
pub enum ManagedProtocol {
    /// Azure Instance Metadata Service (VMs, AKS nodes): header `Metadata: true`.
    Imds,
    /// App Service, Functions and Container Apps: header `X-IDENTITY-HEADER`.
    AppService { identity_header: Secret },
}

pub const IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";
const IMDS_HOST: &str = "169.254.169.254";
pub const FEDERATED_AUDIENCE: &str = "api://AzureADTokenExchange";

// ---- raw, as written by the operator -------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    listen: RawListen,
    admin: RawAdmin,
    upstream: RawUpstream,
    identities: BTreeMap<String, RawIdentity>,
    inbound: RawInbound,
    clients: Vec<RawClient>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawInbound {
    mode: RawMode,
    allow_open_on_non_loopback: bool,
    allowed_hosts: Vec<String>,
    allow: Vec<RawRule>,
}

#[derive(Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum RawMode {
    #[default]
    Keys,
    Open,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    name: String,
    key_sha256: String,
    #[serde(default)]
    identity: Option<String>,
    #[serde(default)]
    allow: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    methods: Vec<String>,
    path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawListen {
    address: String,
    header_read_timeout: DurationValue,
    max_header_bytes: usize,
    max_connections: usize,
    shutdown_grace_period: DurationValue,
    /// 0: one per available CPU.
    workers: usize,
}

impl Default for RawListen {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:8080".into(),
            header_read_timeout: DurationValue(Duration::from_secs(10)),
            max_header_bytes: 64 * 1024,
            max_connections: 4096,
            shutdown_grace_period: DurationValue(Duration::from_secs(25)),
            workers: 0,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    address: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:9090".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawUpstream {
    url: String,
    ca_file: Option<PathBuf>,
    connect_timeout: DurationValue,
    response_timeout: DurationValue,
    pool_idle_timeout: DurationValue,
    max_replay_body_bytes: usize,
}

impl Default for RawUpstream {
    fn default() -> Self {
        Self {
            url: "https://dev.azure.com".into(),
            ca_file: None,
            connect_timeout: DurationValue(Duration::from_secs(10)),
            // Azure DevOps delays throttled requests by up to 30 s before it answers.
            response_timeout: DurationValue(Duration::from_secs(120)),
            pool_idle_timeout: DurationValue(Duration::from_secs(60)),
            max_replay_body_bytes: 64 * 1024,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawIdentity {
    tenant_id: Option<String>,
    client_id: Option<String>,
    authority: Option<String>,
    scope: Option<String>,
    credential: Option<RawCredential>,
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum RawCredential {
    ClientSecret {
        #[serde(default)]
        secret_file: Option<PathBuf>,
        #[serde(default)]
        secret: Option<Secret>,
    },
    ClientCertificate {
        #[serde(default)]
        certificate_file: Option<PathBuf>,
        #[serde(default)]
        private_key_file: Option<PathBuf>,
        #[serde(default)]
        send_x5c: bool,
        #[serde(default)]
        algorithm: Option<String>,
    },
    WorkloadIdentity {
        #[serde(default)]
        token_file: Option<PathBuf>,
        #[serde(default)]
        source: Option<String>,
        #[serde(default)]
        audience: Option<String>,
    },
    ManagedIdentity {
        #[serde(default)]
        endpoint: Option<String>,
        #[serde(default)]
        identity_header: Option<Secret>,
    },
}

/// `"30s"`, `"5m"`, `"500ms"`, or a plain number of seconds.
struct DurationValue(Duration);

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = DurationValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\", \"5m\", \"500ms\" or a number of seconds")
            }
            fn visit_u64<E>(self, v: u64) -> Result<DurationValue, E> {
                Ok(DurationValue(Duration::from_secs(v)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<DurationValue, E> {
                u64::try_from(v)
                    .map(|v| DurationValue(Duration::from_secs(v)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DurationValue, E> {
                humantime::parse_duration(v)
                    .map(DurationValue)
                    .map_err(|e| {
                        E::custom(format!("`{v}` is not a duration ({e}); write e.g. \"30s\""))
                    })
            }
        }
        d.deserialize_any(V)
    }
}

// ---- loading ---------------------------------------------------------------------------------

impl Config {
    /// Loads from the optional TOML file and the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::Parse(format!(
                    "config file {} does not exist or is not a file",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__").ignore(&["config"]));
        Self::from_figment(&figment)
    }

    /// Loads from TOML text alone (tests, `check` of an inline config).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::from_figment(&Figment::from(Toml::string(text)))
    }

    fn from_figment(figment: &Figment) -> Result<Config, ConfigError> {
        let raw: RawConfig = figment
            .extract()
            .map_err(|e| ConfigError::Parse(describe_figment_error(e)))?;
        Validator { figment }.validate(raw)
    }
}

fn describe_figment_error(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

struct Validator<'a> {
    figment: &'a Figment,
}

impl Validator<'_> {
    fn error(&self, key: &str, problem: impl Into<String>) -> ConfigError {
        let origin = match self.figment.find_metadata(key) {
            Some(meta) => match &meta.source {
                Some(source) => format!("{} {}", meta.name, source),
                None => meta.name.to_string(),
            },
            None => "the built-in default or the AZURE_* environment".to_string(),
        };
        ConfigError::Invalid {
            key: key.to_string(),
            origin,
            problem: problem.into(),
        }
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let listen = self.listen(raw.listen)?;
        let admin_address = self.socket_address("admin.address", &raw.admin.address)?;
        if admin_address == listen.address && admin_address.port() != 0 {
            return Err(self.error(
                "admin.address",
                "must differ from listen.address: metrics and health have their own listener",
            ));
        }
        let upstream = self.upstream(raw.upstream)?;
        let identities = self.identities(raw.identities)?;
        let inbound = self.inbound(raw.inbound)?;
        if !listen.address.ip().is_loopback()
            && matches!(inbound.mode, InboundMode::Open { .. })
            && !inbound.open_beyond_loopback
        {
            return Err(self.error(
                "listen.address",
                format!(
                    "{} is not a loopback address, and inbound.mode = \"open\" lets anyone who reaches \
                     it act as the service principal; use mode = \"keys\", a loopback address, or set \
                     inbound.allow_open_on_non_loopback = true if the network is yours alone",
                    listen.address
                ),
            ));
        }
        if matches!(inbound.mode, InboundMode::Open { .. })
            && !identities.iter().any(|i| i.name == DEFAULT_IDENTITY)
        {
            return Err(self.error(
                "identities",
                "open mode acts as identity `default`; configure [identities.default]",
            ));
        }
        let clients = self.clients(raw.clients, &identities)?;
        Ok(Config {
            listen,
            admin: Admin {
                address: admin_address,
            },
            upstream,
            identities,
            inbound,
            clients,
        })
    }

    fn rules(&self, key: &str, raw: Vec<RawRule>) -> Result<Allowlist, ConfigError> {
        let mut rules = Vec::with_capacity(raw.len());
        for (index, rule) in raw.into_iter().enumerate() {
            rules.push(
                Rule::compile(&rule.methods, &rule.path)
                    .map_err(|e| self.error(&format!("{key}[{index}]"), e.to_string()))?,
            );
        }
        Ok(Allowlist::new(rules))
    }

    fn inbound(&self, raw: RawInbound) -> Result<Inbound, ConfigError> {
        let mode = match raw.mode {
            RawMode::Keys => {
                if !raw.allow.is_empty() {
                    return Err(self.error(
                        "inbound.allow",
                        "applies to open mode only; in keys mode each client has its own allow list",
                    ));
                }
                InboundMode::Keys
            }
            RawMode::Open => {
                if raw.allow.is_empty() {
                    return Err(self.error(
                        "inbound.allow",
                        "open mode needs its rules (deny by default); to allow every call write \
                         allow = [{ methods = [\"*\"], path = \"/**\" }]",
                    ));
                }
                InboundMode::Open {
                    allow: self.rules("inbound.allow", raw.allow)?,
                }
            }
        };
        let mut allowed_hosts = Vec::with_capacity(raw.allowed_hosts.len());
        for host in raw.allowed_hosts {
            if host.is_empty() || HeaderValue::from_str(&host).is_err() || host.contains([' ', '/'])
            {
                return Err(self.error(
                    "inbound.allowed_hosts",
                    format!("`{host}` is not a host[:port] as a Host header carries it"),
                ));
            }
            allowed_hosts.push(host.to_ascii_lowercase());
        }
        Ok(Inbound {
            mode,
            allowed_hosts,
            open_beyond_loopback: raw.allow_open_on_non_loopback,
        })
    }

    fn clients(
        &self,
        raw: Vec<RawClient>,
        identities: &[Identity],
    ) -> Result<Vec<ClientConfig>, ConfigError> {
        let mut clients: Vec<ClientConfig> = Vec::with_capacity(raw.len());
        for (index, client) in raw.into_iter().enumerate() {
            let key = |field: &str| format!("clients[{index}].{field}");
            if !keys::valid_client_name(&client.name) {
                return Err(self.error(
                    &key("name"),
                    "must be 1 to 64 letters, digits, '-', '_' or '.'",
                ));
            }
            if clients.iter().any(|c| c.name == client.name) {
                return Err(self.error(
                    &key("name"),
                    format!("`{}` is used by two clients", client.name),
                ));
            }
            let hash = keys::parse_sha256_hex(&client.key_sha256).ok_or_else(|| {
                self.error(
                    &key("key_sha256"),
                    "must be the 64 hex digits printed by `ado-auth-proxy keys new` (the key's SHA-256, never the key)",
                )
            })?;
            if let Some(other) = clients.iter().find(|c| c.key_sha256 == hash) {
                return Err(self.error(
                    &key("key_sha256"),
                    format!(
                        "is the same key as client `{}`; every client needs its own key",
                        other.name
                    ),
                ));
            }
            let identity = client
                .identity
                .unwrap_or_else(|| DEFAULT_IDENTITY.to_string());
            if !identities.iter().any(|i| i.name == identity) {
                return Err(self.error(
                    &key("identity"),
                    format!(
                        "names identity `{identity}`, which is not configured under [identities]"
                    ),
                ));
            }
            let allow = self.rules(&key("allow"), client.allow)?;
            clients.push(ClientConfig {
                name: client.name,
                key_sha256: hash,
                identity,
                allow,
            });
        }
        Ok(clients)
    }

    fn listen(&self, raw: RawListen) -> Result<Listen, ConfigError> {
        let address = self.socket_address("listen.address", &raw.address)?;
        if raw.max_header_bytes < 8 * 1024 {
            return Err(self.error(
                "listen.max_header_bytes",
                "must be at least 8192 (git and Azure DevOps send long URLs and headers)",
            ));
        }
        if raw.max_connections == 0 {
            return Err(self.error("listen.max_connections", "must be at least 1"));
        }
        if raw.header_read_timeout.0.is_zero() {
            return Err(self.error("listen.header_read_timeout", "must be above zero"));
        }
        Ok(Listen {
            address,
            header_read_timeout: raw.header_read_timeout.0,
            max_header_bytes: raw.max_header_bytes,
            max_connections: raw.max_connections,
            shutdown_grace_period: raw.shutdown_grace_period.0,
            workers: match raw.workers {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            },
        })
    }

    fn socket_address(&self, key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
        value.parse().map_err(|_| {
            self.error(
                key,
                format!("`{value}` is not an IP address with a port, such as 127.0.0.1:8080"),
            )
        })
    }

    fn upstream(&self, raw: RawUpstream) -> Result<Upstream, ConfigError> {
        let uri = self.http_url("upstream.url", &raw.url)?;
        if uri.path() != "/" || uri.query().is_some() {
            return Err(self.error(
                "upstream.url",
                "must be a scheme and host only, such as https://dev.azure.com: request paths are \
                 forwarded as they are",
            ));
        }
        let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTPS);
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| self.error("upstream.url", "has no host"))?;
        let host_header = HeaderValue::from_str(authority.as_str())
            .map_err(|_| self.error("upstream.url", "host is not a valid Host header"))?;
        if let Some(ca) = &raw.ca_file
            && !ca.is_file()
        {
            return Err(self.error(
                "upstream.ca_file",
                format!("{} does not exist or is not a file", ca.display()),
            ));
        }
        for (key, value) in [
            ("upstream.connect_timeout", &raw.connect_timeout),
            ("upstream.response_timeout", &raw.response_timeout),
        ] {
            if value.0.is_zero() {
                return Err(self.error(key, "must be above zero"));
            }
        }
        Ok(Upstream {
            scheme,
            authority,
            host_header,
            ca_file: raw.ca_file,
            connect_timeout: raw.connect_timeout.0,
            response_timeout: raw.response_timeout.0,
            pool_idle_timeout: raw.pool_idle_timeout.0,
            max_replay_body_bytes: if raw.max_replay_body_bytes <= MAX_REPLAY_BODY_BYTES {
                raw.max_replay_body_bytes
            } else {
                return Err(self.error(
                    "upstream.max_replay_body_bytes",
                    format!(
                        "must be at most {MAX_REPLAY_BODY_BYTES} (16 MiB): every request up to this \
                         size is held in memory"
                    ),
                ));
            },
        })
    }

    /// An absolute `https://` URL, or `http://` to a loopback host (tests, the sandbox): a token or
    /// a client secret must never cross a network in clear text.
    fn http_url(&self, key: &str, value: &str) -> Result<Uri, ConfigError> {
        self.http_url_allowing(key, value, None)
    }

    /// An absolute https:// URL, or http:// on a loopback host or on `plain_http_host`.
    fn http_url_allowing(
        &self,
        key: &str,
        value: &str,
        plain_http_host: Option<&str>,
    ) -> Result<Uri, ConfigError> {
        let uri: Uri = value
            .parse()
            .map_err(|_| self.error(key, format!("`{value}` is not a URL")))?;
        let host = uri
            .host()
            .ok_or_else(|| self.error(key, format!("`{value}` is not an absolute URL")))?;
        match uri.scheme_str() {
            Some("https") => Ok(uri),
            Some("http") if is_loopback_host(host) || plain_http_host == Some(host) => Ok(uri),
            Some("http") => Err(self.error(
                key,
                format!(
                    "`{value}` uses http://, which is allowed only for loopback hosts{}; use https://",
                    plain_http_host
                        .map(|host| format!(" and {host}"))
                        .unwrap_or_default()
                ),
            )),
            _ => Err(self.error(key, format!("`{value}` must start with https://"))),
        }
    }

    fn identities(&self, raw: BTreeMap<String, RawIdentity>) -> Result<Vec<Identity>, ConfigError> {
        let mut raw = raw;
        // With no identity in the file, the standard Azure variables describe the default one, as
        // the Azure SDKs read them.
        if raw.is_empty() {
            raw.insert(DEFAULT_IDENTITY.to_string(), RawIdentity::default());
        }
        let mut identities = Vec::with_capacity(raw.len());
        for (name, identity) in raw {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(self.error(
                    &format!("identities.{name}"),
                    "identity names may hold only letters, digits, '-' and '_'",
                ));
            }
            identities.push(self.identity(name, identity)?);
        }
        Ok(identities)
    }

    fn identity(&self, name: String, raw: RawIdentity) -> Result<Identity, ConfigError> {
        let is_default = name == DEFAULT_IDENTITY;
        // The standard Azure variables describe one workload, so they fill the default identity only.
        let from_env = |var: &str| {
            if is_default { non_empty_env(var) } else { None }
        };
        let key = |field: &str| format!("identities.{name}.{field}");
        let scope = raw.scope.unwrap_or_else(|| AZURE_DEVOPS_SCOPE.to_string());
        if scope.is_empty() || scope.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(self.error(
                &key("scope"),
                "must be one resource scope such as 499b84ac-1321-427f-aa17-267ca6975798/.default",
            ));
        }
        let credential = match raw.credential {
            Some(credential) => credential,
            None => self.credential_from_env(&key("credential"), is_default, &from_env)?,
        };
        let client_id = raw.client_id.or_else(|| from_env("AZURE_CLIENT_ID"));
        if let Some(client_id) = &client_id
            && (client_id.is_empty()
                || !client_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            return Err(self.error(
                &key("client_id"),
                "must be the application (client) id, a GUID",
            ));
        }
        let proof = match credential {
            RawCredential::ManagedIdentity {
                endpoint,
                identity_header,
            } => {
                for (field, given) in [
                    ("tenant_id", raw.tenant_id.is_some()),
                    ("authority", raw.authority.is_some()),
                ] {
                    if given {
                        return Err(self.error(
                            &key(field),
                            "does not apply to a managed identity: its endpoint knows the tenant",
                        ));
                    }
                }
                let managed =
                    self.managed_identity(&key("credential"), endpoint, identity_header)?;
                return Ok(Identity {
                    name,
                    scope,
                    credential: Credential::Managed(ManagedIdentity {
                        client_id,
                        ..managed
                    }),
                });
            }
            RawCredential::ClientSecret {
                secret_file,
                secret,
            } => Proof::Secret(self.secret_source(
                &key("credential"),
                secret_file,
                secret.or_else(|| from_env("AZURE_CLIENT_SECRET").map(Secret::new)),
            )?),
            RawCredential::ClientCertificate {
                certificate_file,
                private_key_file,
                send_x5c,
                algorithm,
            } => Proof::Certificate(
                self.certificate_files(
                    &key("credential"),
                    certificate_file
                        .or_else(|| from_env("AZURE_CLIENT_CERTIFICATE_PATH").map(PathBuf::from)),
                    private_key_file,
                    send_x5c,
                    algorithm,
                )?,
            ),
            RawCredential::WorkloadIdentity {
                token_file,
                source,
                audience,
            } => Proof::Federated(self.federated_source(
                &key("credential"),
                token_file.or_else(|| from_env("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from)),
                source,
                audience,
            )?),
        };
        let tenant_id = raw
            .tenant_id
            .or_else(|| from_env("AZURE_TENANT_ID"))
            .ok_or_else(|| {
                self.error(
                    &key("tenant_id"),
                    "is missing; set it in the file or set AZURE_TENANT_ID",
                )
            })?;
        if tenant_id.is_empty()
            || !tenant_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(self.error(
                &key("tenant_id"),
                "must be a tenant GUID or domain (letters, digits, '-' and '.')",
            ));
        }
        let client_id = client_id.ok_or_else(|| {
            self.error(
                &key("client_id"),
                "is missing; set it in the file or set AZURE_CLIENT_ID",
            )
        })?;
        let authority_text = raw
            .authority
            .or_else(|| from_env("AZURE_AUTHORITY_HOST"))
            .unwrap_or_else(|| DEFAULT_AUTHORITY.to_string());
        let authority_uri = self.http_url(&key("authority"), &authority_text)?;
        if authority_uri.path() != "/" || authority_uri.query().is_some() {
            return Err(self.error(
                &key("authority"),
                "must be a scheme and host only, such as https://login.microsoftonline.com",
            ));
        }
        let authority = format!(
            "{}://{}",
            authority_uri.scheme_str().unwrap_or("https"),
            authority_uri
                .authority()
                .map(|a| a.as_str())
                .unwrap_or_default()
        );
        Ok(Identity {
            name,
            scope,
            credential: Credential::App {
                app: EntraApp {
                    tenant_id,
                    client_id,
                    authority,
                },
                proof,
            },
        })
    }

    /// No `credential` in the file: the variables the Azure SDKs read pick one, in their order.
    fn credential_from_env(
        &self,
        key: &str,
        is_default: bool,
        from_env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<RawCredential, ConfigError> {
        let credential = if from_env("AZURE_CLIENT_SECRET").is_some() {
            RawCredential::ClientSecret {
                secret_file: None,
                secret: None,
            }
        } else if from_env("AZURE_CLIENT_CERTIFICATE_PATH").is_some() {
            RawCredential::ClientCertificate {
                certificate_file: None,
                private_key_file: None,
                send_x5c: false,
                algorithm: None,
            }
        } else if from_env("AZURE_FEDERATED_TOKEN_FILE").is_some() {
            RawCredential::WorkloadIdentity {
                token_file: None,
                source: None,
                audience: None,
            }
        } else if from_env("ACTIONS_ID_TOKEN_REQUEST_URL").is_some() {
            RawCredential::WorkloadIdentity {
                token_file: None,
                source: Some("github_actions".into()),
                audience: None,
            }
        } else if from_env("IDENTITY_ENDPOINT").is_some() {
            RawCredential::ManagedIdentity {
                endpoint: None,
                identity_header: None,
            }
        } else {
            let kinds = "is missing; set credential = { kind = \"client_secret\" | \
                         \"client_certificate\" | \"workload_identity\" | \"managed_identity\", ... }";
            return Err(self.error(
                key,
                if is_default {
                    format!(
                        "{kinds} or one of AZURE_CLIENT_SECRET, AZURE_CLIENT_CERTIFICATE_PATH, \
                         AZURE_FEDERATED_TOKEN_FILE"
                    )
                } else {
                    kinds.to_string()
                },
            ));
        };
        Ok(credential)
    }

    fn secret_source(
        &self,
        key: &str,
        file: Option<PathBuf>,
        value: Option<Secret>,
    ) -> Result<SecretSource, ConfigError> {
        match (file, value) {
            (Some(file), _) => {
                self.existing_file(&format!("{key}.secret_file"), &file)?;
                Ok(SecretSource::File(file))
            }
            (None, Some(secret)) if !secret.is_empty() => Ok(SecretSource::Value(secret)),
            (None, _) => Err(self.error(
                key,
                "client_secret needs secret_file (preferred) or a secret from the environment \
                 (AZURE_CLIENT_SECRET)",
            )),
        }
    }

    fn certificate_files(
        &self,
        key: &str,
        certificate_file: Option<PathBuf>,
        private_key_file: Option<PathBuf>,
        send_x5c: bool,
        algorithm: Option<String>,
    ) -> Result<CertificateFiles, ConfigError> {
        let certificate_file = certificate_file.ok_or_else(|| {
            self.error(
                &format!("{key}.certificate_file"),
                "is missing; set it (PEM certificate, optionally with its key, or a password-less \
                 PKCS#12 file) or set AZURE_CLIENT_CERTIFICATE_PATH",
            )
        })?;
        self.existing_file(&format!("{key}.certificate_file"), &certificate_file)?;
        if let Some(file) = &private_key_file {
            self.existing_file(&format!("{key}.private_key_file"), file)?;
        }
        let algorithm = match algorithm.as_deref() {
            None | Some("PS256") => AssertionAlgorithm::Ps256,
            Some("RS256") => AssertionAlgorithm::Rs256,
            Some(other) => {
                return Err(self.error(
                    &format!("{key}.algorithm"),
                    format!("`{other}` is not supported; use \"PS256\" (default) or \"RS256\""),
                ));
            }
        };
        Ok(CertificateFiles {
            certificate_file,
            private_key_file,
            send_x5c,
            algorithm,
        })
    }

    fn federated_source(
        &self,
        key: &str,
        token_file: Option<PathBuf>,
        source: Option<String>,
        audience: Option<String>,
    ) -> Result<FederatedSource, ConfigError> {
        match source.as_deref() {
            None | Some("file") => {
                let file = token_file.ok_or_else(|| {
                    self.error(
                        &format!("{key}.token_file"),
                        "is missing; set it or set AZURE_FEDERATED_TOKEN_FILE (AKS workload \
                         identity sets it), or use source = \"github_actions\"",
                    )
                })?;
                if audience.is_some() {
                    return Err(self.error(
                        &format!("{key}.audience"),
                        "applies to source = \"github_actions\" only; a token file holds a token \
                         already issued for its audience",
                    ));
                }
                self.existing_file(&format!("{key}.token_file"), &file)?;
                Ok(FederatedSource::File(file))
            }
            Some("github_actions") => {
                // The runner sets these for a job with `permissions: id-token: write`.
                let missing = || {
                    self.error(
                        key,
                        "source = \"github_actions\" needs ACTIONS_ID_TOKEN_REQUEST_URL and \
                         ACTIONS_ID_TOKEN_REQUEST_TOKEN; give the job `permissions: id-token: write`",
                    )
                };
                let request_url =
                    non_empty_env("ACTIONS_ID_TOKEN_REQUEST_URL").ok_or_else(missing)?;
                let request_token =
                    non_empty_env("ACTIONS_ID_TOKEN_REQUEST_TOKEN").ok_or_else(missing)?;
                self.http_url("ACTIONS_ID_TOKEN_REQUEST_URL", &request_url)?;
                Ok(FederatedSource::GitHubActions {
                    request_url,
                    request_token: Secret::new(request_token),
                    audience: audience.unwrap_or_else(|| FEDERATED_AUDIENCE.to_string()),
                })
            }
            Some(other) => Err(self.error(
                &format!("{key}.source"),
                format!(
                    "`{other}` is not a federated token source; use \"file\" or \"github_actions\""
                ),
            )),
        }
    }

    fn managed_identity(
        &self,
        key: &str,
        endpoint: Option<String>,
        identity_header: Option<Secret>,
    ) -> Result<ManagedIdentity, ConfigError> {
        // App Service and Container Apps announce their endpoint to the whole container, so it
        // serves every managed identity; everything else has IMDS.
        let platform_endpoint = non_empty_env("IDENTITY_ENDPOINT");
        let from_platform = endpoint.is_none() || endpoint == platform_endpoint;
        let identity_header = identity_header.or_else(|| {
            from_platform
                .then(|| non_empty_env("IDENTITY_HEADER").map(Secret::new))
                .flatten()
        });
        let endpoint = match (endpoint, platform_endpoint) {
            (Some(endpoint), _) => endpoint,
            (None, Some(platform)) => {
                if identity_header.is_none() {
                    return Err(self.error(
                        key,
                        "IDENTITY_ENDPOINT is set without IDENTITY_HEADER (Azure Arc?), a managed \
                         identity protocol this proxy does not speak; set endpoint explicitly",
                    ));
                }
                platform
            }
            (None, None) => IMDS_ENDPOINT.to_string(),
        };
        let endpoint_key = format!("{key}.endpoint");
        // IMDS speaks plain http on its link-local address only; App Service's endpoint is local.
        let uri = self.http_url_allowing(&endpoint_key, &endpoint, Some(IMDS_HOST))?;
        if uri.query().is_some() {
            return Err(self.error(
                &endpoint_key,
                "must be the token URL without a query; the proxy adds api-version and resource",
            ));
        }
        let protocol = match identity_header {
            Some(identity_header) if !identity_header.is_empty() => {
                ManagedProtocol::AppService { identity_header }
            }
            _ => ManagedProtocol::Imds,
        };
        Ok(ManagedIdentity {
            endpoint,
            protocol,
            client_id: None,
        })
    }

    fn existing_file(&self, key: &str, file: &Path) -> Result<(), ConfigError> {
        if file.is_file() {
            Ok(())
        } else {
            Err(self.error(
                key,
                format!("{} does not exist or is not a file", file.display()),
            ))
        }
    }
}

/// An environment variable, unless it is unset or empty (as the Azure SDKs treat them).
fn non_empty_env(var: &str) -> Option<String> {
    Env::var(var).filter(|v| !v.is_empty())
}

pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail fixes the closure's error type.
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [identities.default]
        tenant_id = "00000000-0000-0000-0000-000000000000"
        client_id = "11111111-1111-1111-1111-111111111111"
        credential = { kind = "client_secret", secret = "s3cr3t-value" }
    "#;

    #[test]
    fn defaults_fill_everything_but_the_identity() {
        let config = Config::from_toml(MINIMAL).expect("valid");
        assert_eq!(
            config.listen.address,
            "127.0.0.1:8080".parse().expect("addr")
        );
        assert_eq!(
            config.admin.address,
            "127.0.0.1:9090".parse().expect("addr")
        );
        assert_eq!(config.upstream.authority.as_str(), "dev.azure.com");
        assert_eq!(config.upstream.scheme, Scheme::HTTPS);
        let identity = &config.identities[0];
        assert_eq!(identity.scope, AZURE_DEVOPS_SCOPE);
        let Credential::App { app, .. } = &identity.credential else {
            panic!("an app registration")
        };
        assert_eq!(
            app.token_endpoint(),
            "https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000/oauth2/v2.0/token"
        );
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let config = Config::from_toml(MINIMAL).expect("valid");
        let printed = format!("{config:?}");
        assert!(!printed.contains("s3cr3t-value"), "{printed}");
    }

    fn error_of(toml: &str) -> String {
        Config::from_toml(toml)
            .expect_err("must be refused")
            .to_string()
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let message = error_of(&format!("{MINIMAL}\n[upstream]\nurll = \"https://x\""));
        assert!(message.contains("urll"), "{message}");
    }

    #[test]
    fn plain_http_is_only_for_loopback() {
        let message = error_of(&format!(
            "{MINIMAL}\n[upstream]\nurl = \"http://dev.azure.com\""
        ));
        assert!(
            message.contains("upstream.url") && message.contains("loopback"),
            "{message}"
        );
        let ok = Config::from_toml(&format!(
            "{MINIMAL}\n[upstream]\nurl = \"http://127.0.0.1:1234\""
        ));
        assert!(ok.is_ok());
        let message = error_of(&MINIMAL.replace(
            "tenant_id",
            "authority = \"http://login.example.com\"\ntenant_id",
        ));
        assert!(
            message.contains("identities.default.authority"),
            "{message}"
        );
    }

    #[test]
    fn upstream_with_a_path_is_refused() {
        let message = error_of(&format!(
            "{MINIMAL}\n[upstream]\nurl = \"https://dev.azure.com/contoso\""
        ));
        assert!(message.contains("upstream.url"), "{message}");
    }

    const OPEN: &str =
        "[inbound]\nmode = \"open\"\nallow = [{ methods = [\"*\"], path = \"/**\" }]\n";

    #[test]
    fn open_mode_stays_on_loopback_unless_explicitly_allowed() {
        let message = error_of(&format!(
            "{MINIMAL}\n{OPEN}[listen]\naddress = \"0.0.0.0:8080\""
        ));
        assert!(
            message.contains("listen.address") && message.contains("loopback"),
            "{message}"
        );
        let config = Config::from_toml(&format!(
            "{MINIMAL}\n{OPEN}allow_open_on_non_loopback = true\n[listen]\naddress = \"0.0.0.0:8080\""
        ))
        .expect("explicitly allowed");
        assert!(config.inbound.open_beyond_loopback);
        let keys = Config::from_toml(&format!("{MINIMAL}\n[listen]\naddress = \"0.0.0.0:8080\""));
        assert!(keys.is_ok(), "keys mode may listen anywhere");
    }

    #[test]
    fn open_mode_needs_rules_and_keys_mode_refuses_them() {
        let message = error_of(&format!("{MINIMAL}\n[inbound]\nmode = \"open\""));
        assert!(message.contains("inbound.allow"), "{message}");
        let message = error_of(&format!(
            "{MINIMAL}\n[inbound]\nallow = [{{ methods = [\"GET\"], path = \"/**\" }}]"
        ));
        assert!(message.contains("inbound.allow"), "{message}");
    }

    const CLIENT: &str = "[[clients]]\nname = \"ci-bot\"\nkey_sha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\nallow = [{ methods = [\"GET\"], path = \"/contoso/**\" }]\n";

    #[test]
    fn clients_are_checked_for_names_hashes_identities_and_rules() {
        let config = Config::from_toml(&format!("{MINIMAL}\n{CLIENT}")).expect("valid");
        assert_eq!(config.clients[0].identity, "default");
        let twice = format!("{MINIMAL}\n{CLIENT}{}", CLIENT.replace("ci-bot", "other"));
        assert!(error_of(&twice).contains("same key as client `ci-bot`"));
        let same_name = format!("{MINIMAL}\n{CLIENT}{}", CLIENT.replace("9f86", "0f86"));
        assert!(error_of(&same_name).contains("used by two clients"));
        let bad_hash = format!("{MINIMAL}\n{}", CLIENT.replace("9f86d0", "zz"));
        assert!(error_of(&bad_hash).contains("clients[0].key_sha256"));
        let missing_identity = format!("{MINIMAL}\n{CLIENT}identity = \"nope\"\n");
        assert!(error_of(&missing_identity).contains("clients[0].identity"));
        // Keys mode needs no `default` identity when every client names another one.
        let named_only = format!(
            "{}\n{CLIENT}identity = \"ci\"\n",
            MINIMAL.replace("identities.default", "identities.ci")
        );
        let config = Config::from_toml(&named_only).expect("valid without a default identity");
        assert_eq!(config.identities.len(), 1);
        let open = format!(
            "{}\n[inbound]\nmode = \"open\"\nallow = [{{ methods = [\"GET\"], path = \"/**\" }}]\n",
            MINIMAL.replace("identities.default", "identities.ci")
        );
        assert!(error_of(&open).contains("[identities.default]"));
        let bad_rule = format!("{MINIMAL}\n{}", CLIENT.replace("/contoso/**", "contoso/**"));
        let message = error_of(&bad_rule);
        assert!(
            message.contains("clients[0].allow[0]") && message.contains("must start with '/'"),
            "{message}"
        );
    }

    #[test]
    fn bad_values_name_key_and_source() {
        let message = error_of(&format!("{MINIMAL}\n[listen]\naddress = \"localhost\""));
        assert!(
            message.contains("listen.address") && message.contains("TOML"),
            "{message}"
        );
        let message = error_of(&format!(
            "{MINIMAL}\n[upstream]\nresponse_timeout = \"soon\""
        ));
        assert!(
            message.contains("response_timeout") && message.contains("soon"),
            "{message}"
        );
        let message = error_of(&MINIMAL.replace("client_secret", "password"));
        assert!(message.contains("password"), "{message}");
    }

    #[test]
    fn missing_identity_fields_say_which_variable_fills_them() {
        figment::Jail::expect_with(|_| {
            let message = error_of("");
            assert!(
                message.contains("identities.default.credential")
                    && message.contains("AZURE_CLIENT_SECRET"),
                "{message}"
            );
            let message = error_of(
                "[identities.default]\ncredential = { kind = \"client_secret\", secret = \"x\" }",
            );
            assert!(message.contains("AZURE_TENANT_ID"), "{message}");
            Ok(())
        });
    }

    #[test]
    fn environment_layers_over_file_and_azure_variables_fill_the_default_identity() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "proxy.toml",
                "[upstream]\nurl = \"http://127.0.0.1:1\"\n[listen]\naddress = \"127.0.0.1:7000\"",
            )?;
            jail.set_env("ADO_AUTH_PROXY_LISTEN__ADDRESS", "127.0.0.1:7001");
            jail.set_env("ADO_AUTH_PROXY_CONFIG", "ignored-by-the-loader");
            jail.set_env("AZURE_TENANT_ID", "contoso.onmicrosoft.com");
            jail.set_env("AZURE_CLIENT_ID", "22222222-2222-2222-2222-222222222222");
            jail.set_env("AZURE_CLIENT_SECRET", "from-the-environment");
            jail.set_env("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.us/");
            let config = Config::load(Some(Path::new("proxy.toml"))).expect("valid");
            assert_eq!(config.listen.address.port(), 7001);
            let identity = &config.identities[0];
            assert_eq!(identity.tenant_id(), Some("contoso.onmicrosoft.com"));
            let Credential::App { app, proof } = &identity.credential else {
                panic!("an app registration")
            };
            assert_eq!(app.authority, "https://login.microsoftonline.us");
            assert!(matches!(
                proof,
                Proof::Secret(SecretSource::Value(s)) if s.expose() == "from-the-environment"
            ));
            Ok(())
        });
    }

    #[test]
    fn a_numeric_secret_from_the_environment_is_not_quoted_in_errors() {
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "ADO_AUTH_PROXY_IDENTITIES__DEFAULT__CREDENTIAL__KIND",
                "client_secret",
            );
            jail.set_env(
                "ADO_AUTH_PROXY_IDENTITIES__DEFAULT__CREDENTIAL__SECRET",
                "987654321",
            );
            jail.set_env("ADO_AUTH_PROXY_IDENTITIES__DEFAULT__TENANT_ID", "t");
            jail.set_env("ADO_AUTH_PROXY_IDENTITIES__DEFAULT__CLIENT_ID", "c");
            let config = Config::load(None).expect("a numeric secret is still a secret");
            assert!(!format!("{config:?}").contains("987654321"));
            Ok(())
        });
    }

    #[test]
    fn azure_variables_pick_the_credential_kind_as_the_sdks_do() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("token", "a.b.c")?;
            jail.set_env("AZURE_TENANT_ID", "t");
            jail.set_env("AZURE_CLIENT_ID", "c");
            jail.set_env("AZURE_FEDERATED_TOKEN_FILE", "token");
            let config = Config::load(None).expect("workload identity from the environment");
            assert!(matches!(
                &config.identities[0].credential,
                Credential::App { proof: Proof::Federated(FederatedSource::File(f)), .. } if f == Path::new("token")
            ));

            jail.set_env("AZURE_FEDERATED_TOKEN_FILE", "");
            jail.set_env("IDENTITY_ENDPOINT", "http://localhost:42356/msi/token");
            jail.set_env("IDENTITY_HEADER", "header-secret-value");
            let config = Config::load(None).expect("App Service managed identity");
            let identity = &config.identities[0];
            assert_eq!(
                identity.client_id(),
                Some("c"),
                "AZURE_CLIENT_ID picks a user-assigned identity"
            );
            assert_eq!(identity.tenant_id(), None);
            assert!(matches!(
                &identity.credential,
                Credential::Managed(ManagedIdentity {
                    protocol: ManagedProtocol::AppService { .. },
                    ..
                })
            ));
            assert!(!format!("{config:?}").contains("header-secret-value"));
            Ok(())
        });
    }

    #[test]
    fn a_named_managed_identity_uses_the_platform_endpoint_too() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("IDENTITY_ENDPOINT", "http://localhost:42356/msi/token");
            let toml = "[identities.vm]\ncredential = { kind = \"managed_identity\" }\n\
                        [inbound]\nmode = \"keys\"\n";
            let message = Config::from_toml(toml)
                .expect_err("an endpoint without its header")
                .to_string();
            assert!(
                message.contains("identities.vm") && message.contains("Azure Arc"),
                "{message}"
            );

            jail.set_env("IDENTITY_HEADER", "header-secret-value");
            let config = Config::from_toml(toml).expect("App Service managed identity");
            let Credential::Managed(managed) = &config.identities[0].credential else {
                panic!("managed identity")
            };
            assert_eq!(managed.endpoint, "http://localhost:42356/msi/token");
            assert!(matches!(
                managed.protocol,
                ManagedProtocol::AppService { .. }
            ));
            Ok(())
        });
    }

    #[test]
    fn credential_kinds_are_checked_where_they_are_written() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("cert.pem", "not checked here")?;
            let identity = |credential: &str| {
                let tenant = if credential.contains("managed_identity") {
                    ""
                } else {
                    "tenant_id = \"t\"\n"
                };
                format!(
                    "[identities.default]\n{tenant}client_id = \"c\"\ncredential = {credential}\n"
                )
            };
            let config = Config::from_toml(&identity(
                r#"{ kind = "client_certificate", certificate_file = "cert.pem", send_x5c = true, algorithm = "RS256" }"#,
            ))
            .expect("certificate credential");
            assert!(matches!(
                &config.identities[0].credential,
                Credential::App {
                    proof: Proof::Certificate(CertificateFiles {
                        send_x5c: true,
                        algorithm: AssertionAlgorithm::Rs256,
                        ..
                    }),
                    ..
                }
            ));
            for (credential, key) in [
                (
                    r#"{ kind = "client_certificate" }"#,
                    "credential.certificate_file",
                ),
                (
                    r#"{ kind = "client_certificate", certificate_file = "missing.pem" }"#,
                    "credential.certificate_file",
                ),
                (
                    r#"{ kind = "client_certificate", certificate_file = "cert.pem", algorithm = "ES256" }"#,
                    "credential.algorithm",
                ),
                (r#"{ kind = "workload_identity" }"#, "credential.token_file"),
                (
                    r#"{ kind = "workload_identity", source = "github_actions" }"#,
                    "ACTIONS_ID_TOKEN_REQUEST_URL",
                ),
                (
                    r#"{ kind = "workload_identity", source = "gitlab" }"#,
                    "credential.source",
                ),
                (
                    r#"{ kind = "managed_identity", endpoint = "http://metadata.example.com/token" }"#,
                    "credential.endpoint",
                ),
                (
                    r#"{ kind = "managed_identity", endpoint = "http://169.254.169.254/x?api-version=1" }"#,
                    "credential.endpoint",
                ),
                (
                    r#"{ kind = "managed_identity", endpoint = "/metadata/identity/oauth2/token" }"#,
                    "credential.endpoint",
                ),
                (r#"{ kind = "password" }"#, "password"),
            ] {
                let message = error_of(&identity(credential));
                assert!(message.contains(key), "{credential}: {message}");
            }
            let config = Config::from_toml(
                "[identities.default]\ncredential = { kind = \"managed_identity\" }\n",
            )
            .expect("a system-assigned managed identity needs no tenant or client id");
            let Credential::Managed(managed) = &config.identities[0].credential else {
                panic!("managed identity")
            };
            assert_eq!(managed.endpoint, IMDS_ENDPOINT);
            assert!(matches!(managed.protocol, ManagedProtocol::Imds));
            assert_eq!(
                config.identities[0].resource(),
                "499b84ac-1321-427f-aa17-267ca6975798"
            );
            let message = error_of(
                "[identities.default]\ntenant_id = \"t\"\ncredential = { kind = \"managed_identity\" }\n",
            );
            assert!(
                message.contains("identities.default.tenant_id"),
                "{message}"
            );
            let message = error_of(&format!(
                "{}[upstream]\nmax_replay_body_bytes = 1000000000\n",
                identity(r#"{ kind = "managed_identity" }"#)
            ));
            assert!(
                message.contains("upstream.max_replay_body_bytes"),
                "{message}"
            );
            Ok(())
        });
    }
}
