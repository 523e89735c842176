//! The configuration as written by the operator: what figment deserializes before validation.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::secret::Secret;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConfig {
    pub(super) listen: RawListen,
    pub(super) admin: RawAdmin,
    pub(super) upstream: RawUpstream,
    pub(super) identities: BTreeMap<String, RawIdentity>,
    pub(super) inbound: RawInbound,
    pub(super) clients: Vec<RawClient>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawInbound {
    pub(super) mode: RawMode,
    pub(super) allow_open_on_non_loopback: bool,
    pub(super) allowed_hosts: Vec<String>,
    pub(super) allow: Vec<RawRule>,
    /// Open mode: forward what `allow` would refuse, and log it (see `RawClient::learn`).
    pub(super) learn: bool,
    /// The longest a lower-priority request waits while Azure DevOps throttles its identity;
    /// unset, 10 s.
    pub(super) max_throttle_wait: Option<DurationValue>,
}

#[derive(Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawMode {
    #[default]
    Keys,
    Open,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClient {
    pub(super) name: String,
    /// The client proves itself with a key (its SHA-256 here) or with a token (`token`).
    #[serde(default)]
    pub(super) key_sha256: Option<String>,
    #[serde(default)]
    pub(super) token: Option<RawClientToken>,
    #[serde(default)]
    pub(super) identity: Option<String>,
    #[serde(default)]
    pub(super) allow: Vec<RawRule>,
    /// Learn mode: requests `allow` would refuse are forwarded anyway and logged as
    /// `would_deny`, to find out which calls a legacy tool makes.
    #[serde(default)]
    pub(super) learn: bool,
    #[serde(default)]
    pub(super) max_concurrent_requests: Option<usize>,
    #[serde(default)]
    pub(super) max_requests_per_second: Option<f64>,
    /// Requests allowed at once above the rate; default: one second's worth.
    #[serde(default)]
    pub(super) burst: Option<u32>,
    /// `high`, `normal` or `low`: who goes first while Azure DevOps throttles the identity.
    #[serde(default)]
    pub(super) priority: Option<String>,
}

/// A keyless client: an OIDC token of `issuer` for `audience` whose claims match `claims`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClientToken {
    pub(super) issuer: String,
    pub(super) audience: String,
    #[serde(default)]
    pub(super) claims: BTreeMap<String, String>,
    /// The issuer's keys from a file, for clusters without OIDC discovery.
    #[serde(default)]
    pub(super) jwks_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    /// Unset: the default upstream (`upstream.url`).
    pub(super) host: Option<String>,
    pub(super) methods: Vec<String>,
    /// A path pattern, or else `feed`.
    pub(super) path: Option<String>,
    /// `org/feed` or `org/project/feed`: the feed by name and by its GUIDs.
    pub(super) feed: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawListen {
    pub(super) address: String,
    pub(super) header_read_timeout: DurationValue,
    pub(super) max_header_bytes: usize,
    pub(super) max_connections: usize,
    pub(super) max_connections_per_address: usize,
    pub(super) shutdown_grace_period: DurationValue,
    /// 0: one per available CPU.
    pub(super) workers: usize,
    /// What absolute URLs in responses are rewritten to; unset on a loopback listener, each
    /// request's `Host`.
    pub(super) public_url: Option<String>,
    /// Load balancers whose `X-Forwarded-For` is believed: addresses or CIDR ranges.
    pub(super) trusted_proxies: Vec<String>,
    /// Serve HTTPS (and h2) with this certificate; unset, plain HTTP/1.1.
    pub(super) tls: Option<RawTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) certificate_file: PathBuf,
    pub(super) key_file: PathBuf,
}

impl Default for RawListen {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:8080".into(),
            header_read_timeout: DurationValue(Duration::from_secs(10)),
            max_header_bytes: 64 * 1024,
            max_connections: 4096,
            // A shared service behind a node's address translation sees few source addresses.
            max_connections_per_address: 512,
            shutdown_grace_period: DurationValue(Duration::from_secs(25)),
            workers: 0,
            public_url: None,
            trusted_proxies: Vec::new(),
            tls: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAdmin {
    pub(super) address: String,
    pub(super) tls: Option<RawTls>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:9090".into(),
            tls: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawUpstream {
    pub(super) url: String,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) connect_timeout: DurationValue,
    pub(super) response_timeout: DurationValue,
    pub(super) pool_idle_timeout: DurationValue,
    pub(super) max_replay_body_bytes: usize,
    /// Azure DevOps hosts besides `url`'s, served at `/_host/{name}/...`.
    pub(super) hosts: Vec<String>,
    /// Host name -> `ip:port` to connect to instead of what DNS says (TLS still checks the name).
    pub(super) resolve: BTreeMap<String, String>,
    /// `http://[user:password@]host:port`, or `none`; unset: `HTTPS_PROXY` and `NO_PROXY`.
    pub(super) proxy: Option<Secret>,
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
            hosts: ["dev.azure.com", "*.dev.azure.com", "*.visualstudio.com"]
                .map(String::from)
                .to_vec(),
            resolve: BTreeMap::new(),
            proxy: None,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawIdentity {
    pub(super) tenant_id: Option<String>,
    pub(super) client_id: Option<String>,
    pub(super) authority: Option<String>,
    pub(super) scope: Option<String>,
    pub(super) credential: Option<RawCredential>,
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum RawCredential {
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
pub(super) struct DurationValue(pub(super) Duration);

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
