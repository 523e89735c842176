use super::Validator;
use crate::config::raw::{RawAdmin, RawListen, RawTls};
use crate::config::{Admin, ConfigError, Listen, Network, TlsFiles};

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
        let tls = self.tls("listen.tls", raw.tls)?;
        Ok(Listen {
            address,
            tls,
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
        let tls = self.tls("admin.tls", raw.tls)?;
        Ok(Admin { address, tls })
    }

    /// Loaded here, not only at start: `check --offline` and a reload must refuse what the
    /// listener could not serve.
    fn tls(&self, key: &str, raw: Option<RawTls>) -> Result<Option<TlsFiles>, ConfigError> {
        let Some(raw) = raw else { return Ok(None) };
        crate::tls::load_certificate(&raw.certificate_file, &raw.key_file, key).map_err(
            |e| match e {
                crate::tls::TlsError::File { key, path, problem } => {
                    self.error(&key, format!("{path}: {problem}"))
                }
                other => self.error(key, other.to_string()),
            },
        )?;
        Ok(Some(TlsFiles {
            certificate_file: raw.certificate_file,
            key_file: raw.key_file,
        }))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    fn fixture(name: &str) -> String {
        format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    fn with_tls(certificate: &str, key: &str) -> Result<Config, ConfigError> {
        Config::from_toml(&format!(
            "[listen]\ntls = {{ certificate_file = \"{}\", key_file = \"{}\" }}\n\
             [inbound]\nmode = \"open\"\nallow = [{{ methods = [\"GET\"], path = \"/**\" }}]\n\
             [identities.default]\ntenant_id = \"t\"\nclient_id = \"c\"\n\
             credential = {{ kind = \"client_secret\", secret = \"s\" }}\n",
            fixture(certificate),
            fixture(key)
        ))
    }

    #[test]
    fn a_listener_certificate_is_loaded_and_checked_against_its_key() {
        let config = with_tls("listener-cert.pem", "listener-key.rsa.pem").expect("valid");
        assert!(config.listen.tls.is_some());
        assert_eq!(config.reloaded_files().count(), 2);
        match with_tls("listener-cert.pem", "listener-rotated-key.ec.pem") {
            Err(ConfigError::Invalid { key, problem, .. }) => {
                assert_eq!(key, "listen.tls.key_file");
                assert!(
                    problem.contains("is not the key of the certificate"),
                    "{problem}"
                );
            }
            other => panic!("a mismatched key must be refused: {other:?}"),
        }
    }
}
