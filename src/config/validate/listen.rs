use super::Validator;
use crate::config::raw::{RawAdmin, RawListen};
use crate::config::{Admin, ConfigError, Listen, Network};

impl Validator<'_> {
    pub(super) fn listen(&self, raw: RawListen) -> Result<Listen, ConfigError> {
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
        let public_url = match &raw.public_url {
            None => None,
            Some(url) => Some(self.public_url(url)?),
        };
        let mut trusted_proxies = Vec::with_capacity(raw.trusted_proxies.len());
        for (index, text) in raw.trusted_proxies.iter().enumerate() {
            trusted_proxies.push(Network::parse(text).ok_or_else(|| {
                self.error(
                    &format!("listen.trusted_proxies[{index}]"),
                    format!("`{text}` is not an IP address or a range such as 10.0.0.0/8"),
                )
            })?);
        }
        Ok(Listen {
            address,
            trusted_proxies,
            public_url,
            header_read_timeout: raw.header_read_timeout.0,
            max_header_bytes: raw.max_header_bytes,
            max_connections: raw.max_connections,
            max_connections_per_address: raw.max_connections_per_address,
            shutdown_grace_period: raw.shutdown_grace_period.0,
            workers: match raw.workers {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            },
        })
    }

    /// Any http(s) URL without a path: clients may reach the proxy over plain http on a
    /// network of their own, through a TLS-terminating load balancer, or by any name.
    fn public_url(&self, value: &str) -> Result<String, ConfigError> {
        let key = "listen.public_url";
        let uri: http::Uri = value
            .parse()
            .map_err(|_| self.error(key, format!("`{value}` is not a URL")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
            return Err(self.error(
                key,
                format!("`{value}` must be an absolute http:// or https:// URL"),
            ));
        }
        if uri.path() != "/" || uri.query().is_some() || value.contains('@') {
            return Err(self.error(
                key,
                "must be a scheme and host (and port) only, such as https://ado-proxy.example:8443:                  the proxy serves Azure DevOps' paths at its root",
            ));
        }
        Ok(value.trim_end_matches('/').to_string())
    }

    pub(super) fn admin(&self, raw: RawAdmin, listen: &Listen) -> Result<Admin, ConfigError> {
        let address = self.socket_address("admin.address", &raw.address)?;
        if address == listen.address && address.port() != 0 {
            return Err(self.error(
                "admin.address",
                "must differ from listen.address: metrics and health have their own listener",
            ));
        }
        Ok(Admin { address })
    }
}
