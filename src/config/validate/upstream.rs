use http::HeaderValue;
use http::uri::Scheme;

use super::Validator;
use crate::config::raw::RawUpstream;
use crate::config::{ConfigError, MAX_REPLAY_BODY_BYTES, Upstream};
use crate::policy::host::host_name;
use crate::policy::{HostPattern, Hosts};

impl Validator<'_> {
    pub(super) fn upstream(&self, raw: RawUpstream) -> Result<Upstream, ConfigError> {
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
        let mut hosts = Vec::with_capacity(raw.hosts.len());
        for (index, text) in raw.hosts.iter().enumerate() {
            hosts.push(
                HostPattern::compile(text)
                    .map_err(|e| self.error(&format!("upstream.hosts[{index}]"), e.to_string()))?,
            );
        }
        let mut resolve = Vec::with_capacity(raw.resolve.len());
        for (name, address) in &raw.resolve {
            let key = format!("upstream.resolve.{name}");
            if host_name(name).is_none() {
                return Err(self.error(&key, "is not a host name"));
            }
            resolve.push((
                name.to_ascii_lowercase(),
                self.socket_address(&key, address)?,
            ));
        }
        Ok(Upstream {
            hosts: Hosts::new(hosts),
            resolve,
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
}
