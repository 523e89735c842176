//! The way out to Azure DevOps and Entra ID: straight to the host, or through the corporate HTTP
//! proxy's `CONNECT` tunnel (TLS stays end to end; the proxy sees host names, never a token).
//!
//! Loopback, link-local (IMDS) and `NO_PROXY` destinations are always reached directly: a managed
//! identity endpoint refuses proxied requests, and a loopback one must not hand a token to a
//! proxy. The proxy's credentials go to the proxy only, as `Proxy-Authorization` on the
//! `CONNECT`, and are never printed (see [`Egress`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;
use tower_service::Service;

use crate::config::{Egress, Upstream};

/// Reached directly whatever `NO_PROXY` says.
const ALWAYS_DIRECT: &str = "localhost,127.0.0.0/8,::1,169.254.0.0/16";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `builder` with the egress proxy for https destinations, or none; reqwest's own reading of the
/// environment is switched off, so the configuration is the one place that decides.
pub fn reqwest_builder(
    builder: reqwest::ClientBuilder,
    egress: &Egress,
) -> reqwest::Result<reqwest::ClientBuilder> {
    let builder = builder.no_proxy();
    let Some(proxy) = &egress.proxy else {
        return Ok(builder);
    };
    let no_proxy = reqwest::NoProxy::from_string(&no_proxy_list(egress));
    Ok(builder.proxy(reqwest::Proxy::https(proxy.expose())?.no_proxy(no_proxy)))
}

/// A GET to Azure DevOps as an identity, asking for JSON. `X-TFS-FedAuthRedirect: Suppress` makes
/// a refused token a 401 rather than a redirect to a sign-in page.
pub async fn get_as(
    http: &reqwest::Client,
    url: &str,
    bearer: &http::HeaderValue,
) -> reqwest::Result<reqwest::Response> {
    http.get(url)
        .header(http::header::AUTHORIZATION, bearer.clone())
        .header(http::header::ACCEPT, "application/json")
        .header("X-TFS-FedAuthRedirect", "Suppress")
        .send()
        .await
}

/// The client for Azure DevOps REST calls made beside the request path (feed GUIDs, `check`):
/// the way a forwarded request goes (egress proxy, `upstream.resolve`, the same TLS roots), and
/// no redirects, so the token never follows one.
pub fn devops_client(
    upstream: &Upstream,
    tls: &rustls::ClientConfig,
) -> reqwest::Result<reqwest::Client> {
    let mut builder = reqwest_builder(
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls.clone())
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(upstream.connect_timeout)
            .timeout(std::time::Duration::from_secs(30))
            .user_agent(concat!("ado-auth-proxy/", env!("CARGO_PKG_VERSION"))),
        &upstream.egress,
    )?;
    for (host, address) in &upstream.resolve {
        builder = builder.resolve(host, *address);
    }
    builder.build()
}

fn no_proxy_list(egress: &Egress) -> String {
    format!("{ALWAYS_DIRECT},{}", egress.no_proxy)
}

/// Connects to one destination: directly, or through a `CONNECT` tunnel when the egress proxy
/// applies to it (decided once, as a connector serves a single host).
#[derive(Clone)]
pub enum Connector<C> {
    Direct(C),
    Tunnel(Tunnel<C>),
}

impl<C> Connector<C> {
    pub fn new(egress: &Egress, destination: &Uri, inner: C) -> Self {
        let Some(proxy) = &egress.proxy else {
            return Connector::Direct(inner);
        };
        let matcher = Matcher::builder()
            .https(proxy.expose())
            .no(no_proxy_list(egress))
            .build();
        match matcher.intercept(destination) {
            Some(intercept) => {
                let tunnel = Tunnel::new(intercept.uri().clone(), inner);
                Connector::Tunnel(match intercept.basic_auth() {
                    Some(authorization) => tunnel.with_auth(authorization.clone()),
                    None => tunnel,
                })
            }
            None => Connector::Direct(inner),
        }
    }
}

impl<C> Service<Uri> for Connector<C>
where
    C: Service<Uri> + Clone + Send + 'static,
    C::Future: Send + 'static,
    C::Response: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Connector::Direct(inner) => inner.poll_ready(cx).map_err(Into::into),
            Connector::Tunnel(tunnel) => tunnel.poll_ready(cx).map_err(tunnel_error),
        }
    }

    fn call(&mut self, destination: Uri) -> Self::Future {
        match self {
            Connector::Direct(inner) => {
                let connecting = inner.call(destination);
                Box::pin(async move { connecting.await.map_err(Into::into) })
            }
            Connector::Tunnel(tunnel) => {
                let connecting = tunnel.call(destination);
                Box::pin(async move { connecting.await.map_err(tunnel_error) })
            }
        }
    }
}

/// A failure on the way through the egress proxy (refused `CONNECT`, 407, unreachable proxy):
/// the log must tell an operator it was the corporate proxy, not Azure DevOps.
#[derive(Debug, thiserror::Error)]
#[error("egress proxy: {0}")]
pub struct TunnelFailed(#[source] BoxError);

fn tunnel_error(error: impl Into<BoxError>) -> BoxError {
    Box::new(TunnelFailed(error.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn through(proxy: &str, no_proxy: &str) -> Egress {
        Egress {
            proxy: Some(Secret::new(proxy)),
            shown: String::new(),
            no_proxy: no_proxy.into(),
        }
    }

    fn tunnels(egress: &Egress, destination: &'static str) -> bool {
        matches!(
            Connector::new(egress, &Uri::from_static(destination), ()),
            Connector::Tunnel(_)
        )
    }

    #[test]
    fn https_hosts_tunnel_unless_loopback_link_local_or_no_proxy() {
        let egress = through("http://proxy.corp:3128", "internal.example,.corp.example");
        assert!(tunnels(&egress, "https://dev.azure.com/"));
        assert!(tunnels(&egress, "https://login.microsoftonline.com/"));
        for direct in [
            "https://127.0.0.1:8443/",
            "https://localhost/",
            "https://[::1]/",
            "http://169.254.169.254/",
            "https://internal.example/",
            "https://git.corp.example/",
            // Plain http is only ever a loopback upstream.
            "http://dev.azure.com/",
        ] {
            assert!(!tunnels(&egress, direct), "{direct}");
        }
        let none = Egress {
            proxy: None,
            shown: String::new(),
            no_proxy: String::new(),
        };
        assert!(!tunnels(&none, "https://dev.azure.com/"));
    }
}
