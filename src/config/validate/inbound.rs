use http::HeaderValue;

use super::Validator;
use crate::config::raw::{RawClient, RawClientToken, RawInbound, RawMode, RawRule};
use std::time::Duration;

use crate::config::{
    ClientConfig, ClientLimits, ClientProof, ClientToken, ConfigError, DEFAULT_IDENTITY, Identity,
    Inbound, InboundMode, IssuerKeySource, Priority,
};
use crate::keys;
use crate::policy::{Allowlist, ClaimPattern, Feed, HostPattern, PatternError, Rule};

impl Validator<'_> {
    fn rules(&self, key: &str, raw: Vec<RawRule>) -> Result<Allowlist, ConfigError> {
        let mut rules = Vec::with_capacity(raw.len());
        for (index, rule) in raw.into_iter().enumerate() {
            let error = |e: PatternError| self.error(&format!("{key}[{index}]"), e.to_string());
            let compiled = match (&rule.path, &rule.feed, &rule.host) {
                (Some(path), None, host) => {
                    let compiled = Rule::compile(&rule.methods, path).map_err(error)?;
                    match host {
                        Some(host) => compiled.on_host(HostPattern::compile(host).map_err(error)?),
                        None => compiled,
                    }
                }
                (None, Some(feed), None) => {
                    Rule::for_feed(&rule.methods, Feed::parse(feed).map_err(error)?)
                        .map_err(error)?
                }
                _ => {
                    return Err(self.error(
                        &format!("{key}[{index}]"),
                        "a rule names either a `path` (and maybe a `host`) or a `feed`",
                    ));
                }
            };
            rules.push(compiled);
        }
        Ok(Allowlist::new(rules))
    }

    pub(super) fn inbound(&self, raw: RawInbound) -> Result<Inbound, ConfigError> {
        let mode = match raw.mode {
            RawMode::Keys => {
                if !raw.allow.is_empty() {
                    return Err(self.error(
                        "inbound.allow",
                        "applies to open mode only; in keys mode each client has its own allow list",
                    ));
                }
                if raw.learn {
                    return Err(self.error(
                        "inbound.learn",
                        "applies to open mode only; in keys mode set learn = true on a [[clients]] entry",
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
            learn: raw.learn,
            max_throttle_wait: match raw.max_throttle_wait {
                None => Duration::from_secs(10),
                Some(wait) if wait.0 > Duration::from_secs(120) => {
                    return Err(self.error(
                        "inbound.max_throttle_wait",
                        "must be at most 120s: a client waiting longer has likely given up",
                    ));
                }
                Some(wait) => wait.0,
            },
        })
    }

    pub(super) fn clients(
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
            let limits = self.client_limits(&key, &client)?;
            let proof = match (client.key_sha256, client.token) {
                (Some(hash), None) => {
                    let hash = keys::parse_sha256_hex(&hash).ok_or_else(|| {
                        self.error(
                            &key("key_sha256"),
                            "must be the 64 hex digits printed by `ado-auth-proxy keys new` (the key's SHA-256, never the key)",
                        )
                    })?;
                    if let Some(other) = clients
                        .iter()
                        .find(|c| matches!(c.proof, ClientProof::Key(h) if h == hash))
                    {
                        return Err(self.error(
                            &key("key_sha256"),
                            format!(
                                "is the same key as client `{}`; every client needs its own key",
                                other.name
                            ),
                        ));
                    }
                    ClientProof::Key(hash)
                }
                (None, Some(token)) => ClientProof::Token(self.client_token(&key("token"), token)?),
                _ => {
                    return Err(self.error(
                        &key("key_sha256"),
                        "give exactly one of key_sha256 (a client key) and token (an OIDC token)",
                    ));
                }
            };
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
            let priority = match client.priority.as_deref() {
                None | Some("normal") => Priority::Normal,
                Some("high") => Priority::High,
                Some("low") => Priority::Low,
                Some(other) => {
                    return Err(self.error(
                        &key("priority"),
                        format!("`{other}` is not a priority: high, normal or low"),
                    ));
                }
            };
            clients.push(ClientConfig {
                limits,
                priority,
                learn: client.learn,
                name: client.name,
                proof,
                identity,
                allow,
            });
        }
        Ok(clients)
    }

    fn client_token(&self, key: &str, raw: RawClientToken) -> Result<ClientToken, ConfigError> {
        let issuer_key = format!("{key}.issuer");
        let issuer = self.http_url(&issuer_key, &raw.issuer)?;
        if issuer.query().is_some() || raw.issuer.contains(['#', '@']) {
            return Err(self.error(
                &issuer_key,
                "must be the issuer URL exactly as tokens name it in `iss`",
            ));
        }
        if raw.audience.is_empty() {
            return Err(self.error(
                &format!("{key}.audience"),
                "is required: a token meant for another service must not be accepted here",
            ));
        }
        let mut claims = Vec::with_capacity(raw.claims.len());
        for (name, pattern) in raw.claims {
            if matches!(name.as_str(), "iss" | "aud" | "exp" | "nbf" | "iat") {
                return Err(self.error(
                    &format!("{key}.claims.{name}"),
                    "is checked by the proxy itself (issuer, audience, lifetime); match other claims here",
                ));
            }
            let compiled = ClaimPattern::compile(&pattern)
                .map_err(|e| self.error(&format!("{key}.claims.{name}"), e))?;
            claims.push((name, compiled));
        }
        if claims.is_empty() {
            return Err(self.error(
                &format!("{key}.claims"),
                "name at least one claim (usually `sub`): without one, every token the issuer \
                 mints for this audience would be this client",
            ));
        }
        let keys = match raw.jwks_file {
            Some(file) if !file.is_file() => {
                return Err(self.error(
                    &format!("{key}.jwks_file"),
                    format!("{} does not exist or is not a file", file.display()),
                ));
            }
            Some(file) => IssuerKeySource::File(file),
            None => IssuerKeySource::Discovery,
        };
        Ok(ClientToken {
            issuer: raw.issuer,
            audience: raw.audience,
            claims,
            keys,
        })
    }

    fn client_limits(
        &self,
        key: &dyn Fn(&str) -> String,
        client: &RawClient,
    ) -> Result<ClientLimits, ConfigError> {
        if client.max_concurrent_requests == Some(0) {
            return Err(self.error(
                &key("max_concurrent_requests"),
                "must be at least 1 (leave it out for no limit)",
            ));
        }
        let rate = match (client.max_requests_per_second, client.burst) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(self.error(
                    &key("burst"),
                    "applies to max_requests_per_second, which is not set",
                ));
            }
            (Some(rate), _) if !(rate.is_finite() && rate > 0.0 && rate <= 1e6) => {
                return Err(self.error(
                    &key("max_requests_per_second"),
                    "must be a number of requests per second above 0 (e.g. 20 or 0.5)",
                ));
            }
            (Some(_), Some(0)) => {
                return Err(self.error(&key("burst"), "must be at least 1"));
            }
            // One second's worth at once by default, and never less than one request.
            (Some(rate), burst) => Some((rate, burst.unwrap_or(rate.ceil().max(1.0) as u32))),
        };
        Ok(ClientLimits {
            max_concurrent_requests: client.max_concurrent_requests,
            rate,
        })
    }
}
