//! Validation of the raw configuration into [`Config`], one file per section.

use std::net::SocketAddr;
use std::path::Path;

use figment::Figment;
use http::uri::Uri;

use crate::config::raw::RawConfig;
use crate::config::{Config, ConfigError, DEFAULT_IDENTITY, InboundMode};

mod identity;
mod inbound;
mod listen;
mod upstream;

pub(super) struct Validator<'a> {
    pub(super) figment: &'a Figment,
    /// Every read of the `AZURE_*`, `IDENTITY_*` and GitHub Actions variables goes through here, so
    /// that in-memory configuration is validated without the process environment, which tests
    /// under `figment::Jail` change concurrently.
    pub(super) env: &'a dyn Fn(&str) -> Option<String>,
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

    pub(super) fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let listen = self.listen(raw.listen)?;
        let admin = self.admin(raw.admin, &listen)?;
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
        if listen.public_url.is_none() && !listen.address.ip().is_loopback() {
            return Err(self.error(
                "listen.public_url",
                format!(
                    "is required when listen.address ({}) is not a loopback address: absolute Azure \
                     DevOps URLs in responses are rewritten to it, so that clients come back through \
                     the proxy (for example public_url = \"https://ado-proxy.example\")",
                    listen.address
                ),
            ));
        }
        let clients = self.clients(raw.clients, &identities)?;
        Ok(Config {
            listen,
            admin,
            upstream,
            identities,
            inbound,
            clients,
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

    /// An environment variable, unless it is unset or empty (as the Azure SDKs treat them).
    fn non_empty_env(&self, var: &str) -> Option<String> {
        (self.env)(var).filter(|v| !v.is_empty())
    }
}

pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
