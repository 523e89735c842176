use http::HeaderValue;
use http::uri::Scheme;

use super::Validator;
use crate::config::raw::RawUpstream;
use crate::config::{ConfigError, Egress, MAX_REPLAY_BODY_BYTES, Upstream};
use crate::policy::host::host_name;
use crate::policy::{HostPattern, Hosts};
use crate::secret::Secret;

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
        let egress = self.egress(raw.proxy)?;
        Ok(Upstream {
            egress,
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

    /// `upstream.proxy`, else the first of `HTTPS_PROXY`, `https_proxy`, `ALL_PROXY`, `all_proxy`
    /// (every destination that may go through a proxy is https: plain http is only ever
    /// loopback). No message quotes the value: it may hold the proxy's password.
    fn egress(&self, configured: Option<Secret>) -> Result<Egress, ConfigError> {
        let no_proxy = (self.env)("NO_PROXY")
            .or_else(|| (self.env)("no_proxy"))
            .unwrap_or_default();
        let (key, value) = match configured {
            Some(value) if value.expose().eq_ignore_ascii_case("none") => {
                return Ok(Egress::default());
            }
            Some(value) => ("upstream.proxy", value),
            None => {
                let from_env = ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
                    .into_iter()
                    .find_map(|name| Some((name, (self.env)(name).filter(|v| !v.is_empty())?)));
                match from_env {
                    Some((name, value)) => (name, Secret::new(value)),
                    None => return Ok(Egress::default()),
                }
            }
        };
        let text = value.expose();
        let with_scheme = if text.contains("://") {
            text.to_string()
        } else {
            // As curl reads HTTPS_PROXY=proxy.corp:3128.
            format!("http://{text}")
        };
        let problem = "must be an http:// proxy URL such as http://proxy.example:3128 \
                       (credentials, if any, as http://user:password@host:port); the CONNECT \
                       tunnel carries TLS end to end, so an https:// or SOCKS proxy is not needed";
        let uri: http::Uri = with_scheme.parse().map_err(|_| self.error(key, problem))?;
        let authority = uri.authority().filter(|_| {
            uri.scheme_str() == Some("http") && uri.path() == "/" && uri.query().is_none()
        });
        let Some(authority) = authority else {
            return Err(self.error(key, problem));
        };
        // Clients disagree on which '@' ends the credentials; an '@' in them must be `%40`.
        if authority.as_str().matches('@').count() > 1 {
            return Err(self.error(
                key,
                "is not a usable http:// proxy URL: it has more than one '@'; write an '@' in \
                 the user name or password as %40",
            ));
        }
        let host_port = authority
            .as_str()
            .rsplit_once('@')
            .map_or(authority.as_str(), |(_, host_port)| host_port);
        Ok(Egress {
            shown: format!("http://{host_port}"),
            proxy: Some(Secret::new(with_scheme)),
            no_proxy,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError, Egress};

    const BASE: &str = "[inbound]\nmode = \"open\"\nallow = [{ methods = [\"GET\"], path = \"/**\" }]\n\
         [identities.default]\ntenant_id = \"t\"\nclient_id = \"c\"\n\
         credential = { kind = \"client_secret\", secret = \"s\" }\n";

    fn egress(upstream: &str, env: &[(&str, &str)]) -> Result<Egress, ConfigError> {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>();
        let lookup = move |name: &str| {
            env.iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        };
        Config::from_toml_with_env(&format!("[upstream]\n{upstream}\n{BASE}"), &lookup)
            .map(|config| config.upstream.egress)
    }

    #[test]
    fn the_egress_proxy_comes_from_the_file_or_the_environment_and_never_prints_its_password() {
        let from_env = egress(
            "",
            &[
                ("HTTPS_PROXY", "http://corp:pa55word@proxy.corp:3128"),
                ("NO_PROXY", ".internal.example"),
            ],
        )
        .expect("valid");
        assert_eq!(from_env.shown, "http://proxy.corp:3128");
        assert_eq!(from_env.no_proxy, ".internal.example");
        assert!(!format!("{from_env:?}").contains("pa55word"));
        // curl's spelling without a scheme, and the lower-case variable.
        let bare = egress("", &[("https_proxy", "proxy.corp:3128")]).expect("valid");
        assert_eq!(bare.shown, "http://proxy.corp:3128");

        // The file wins over the environment; "none" turns the environment off.
        let configured = egress(
            "proxy = \"http://proxy.file:8080\"",
            &[("HTTPS_PROXY", "http://proxy.env:3128")],
        )
        .expect("valid");
        assert_eq!(configured.shown, "http://proxy.file:8080");
        let none = egress(
            "proxy = \"none\"",
            &[("HTTPS_PROXY", "http://proxy.env:3128")],
        )
        .expect("valid");
        assert_eq!(none.proxy, None);
        assert_eq!(egress("", &[]).expect("valid").proxy, None);
    }

    #[test]
    fn an_unusable_proxy_url_is_refused_without_quoting_it() {
        for (upstream, env) in [
            ("proxy = \"https://u:pa55word@proxy.corp:3128\"", vec![]),
            ("proxy = \"socks5://u:pa55word@proxy.corp:1080\"", vec![]),
            ("proxy = \"http://u:pa55@word@proxy.corp:3128\"", vec![]),
            ("proxy = \"http://u:pa55word@proxy.corp:3128/path\"", vec![]),
            ("", vec![("HTTPS_PROXY", "http://u:pa55word@ bad host")]),
        ] {
            let error = egress(upstream, &env).expect_err(upstream).to_string();
            assert!(error.contains("http:// proxy URL"), "{error}");
            assert!(!error.contains("pa55word"), "{error}");
        }
    }
}
