//! Which Azure DevOps host a request is for. The default upstream is served at `/`; every other
//! allowed host at `/_host/{name}/...` (an organization name cannot start with `_`).
//! `/_host/{default host}/x` is the same request as `/x`. Any other host is refused before a
//! credential is attached, naming the host.

use http::uri::{InvalidUri, PathAndQuery};

use crate::error::Rejection;
use crate::policy::Hosts;
use crate::policy::host::host_name;

const MOUNT: &str = "/_host";

/// The hosts a configuration serves.
pub struct Served {
    /// The default upstream's host name, lower-case.
    pub default_host: Box<str>,
    pub others: Hosts,
    /// `http://{authority}` of a plain-http default upstream (loopback only: tests, the
    /// sandbox), whose URLs are rewritten like the default host's.
    pub plain_origin: Option<Box<str>>,
}

#[cfg(test)]
impl Served {
    /// `dev.azure.com` at the root, and the subdomains of `dev.azure.com` and `visualstudio.com`.
    pub fn example() -> Served {
        use crate::policy::HostPattern;
        Served {
            default_host: "dev.azure.com".into(),
            others: Hosts::new(vec![
                HostPattern::compile("*.dev.azure.com").expect("pattern"),
                HostPattern::compile("*.visualstudio.com").expect("pattern"),
            ]),
            plain_origin: None,
        }
    }
}

/// A request's host (`None`: the default upstream) and the path to judge and forward.
pub struct Route<'a> {
    pub host: Option<&'a str>,
    pub path: &'a str,
    /// The request named its host in a `/_host/{name}` prefix, which is not sent on.
    mounted: bool,
}

/// A mounted request's host (`None`: the default upstream, named) and what to send it.
pub type Mount = (Option<Box<str>>, PathAndQuery);

impl Route<'_> {
    /// For a request under `/_host/{name}`: the host and the target without the prefix.
    pub fn mount(&self, query: Option<&str>) -> Result<Option<Mount>, InvalidUri> {
        if !self.mounted {
            return Ok(None);
        }
        let target = match query {
            Some(query) => PathAndQuery::try_from(format!("{}?{query}", self.path))?,
            None => PathAndQuery::try_from(self.path)?,
        };
        Ok(Some((
            self.host.map(|h| h.to_ascii_lowercase().into()),
            target,
        )))
    }
}

pub fn route<'a>(path: &'a str, served: &Served) -> Result<Route<'a>, Rejection> {
    let default = Route {
        host: None,
        path,
        mounted: false,
    };
    // Case-blind: `/_HOST/...` must not reach the default upstream as a path it never meant.
    let Some(prefix) = path.get(..MOUNT.len()) else {
        return Ok(default);
    };
    if !prefix.eq_ignore_ascii_case(MOUNT) {
        return Ok(default);
    }
    let rest = &path[MOUNT.len()..];
    let Some(rest) = rest.strip_prefix('/') else {
        return Err(Rejection::BadRequest(
            "`/_host/{name}/...` needs an Azure DevOps host name after /_host/",
        ));
    };
    let (name, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, "/"),
    };
    let name = host_name(name).ok_or(Rejection::BadRequest(
        "`/_host/{name}/...` needs a plain host name (letters, digits, '-' and '.')",
    ))?;
    if name.eq_ignore_ascii_case(&served.default_host) {
        return Ok(Route {
            host: None,
            path,
            mounted: true,
        });
    }
    if !served.others.allows(name) {
        return Err(Rejection::UnknownHost(name.to_ascii_lowercase().into()));
    }
    Ok(Route {
        host: Some(name),
        path,
        mounted: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served() -> Served {
        Served::example()
    }

    #[test]
    fn mounts_name_other_hosts_and_the_default_host_is_the_root() {
        let served = served();
        let r = route("/contoso/_apis/projects", &served).expect("default");
        assert_eq!((r.host, r.path), (None, "/contoso/_apis/projects"));
        let r = route("/_host/DEV.AZURE.COM/contoso/x", &served).expect("default by name");
        assert_eq!((r.host, r.path), (None, "/contoso/x"));
        let (host, target) = r.mount(None).expect("uri").expect("mounted");
        assert_eq!((host, target.as_str()), (None, "/contoso/x"));
        let r = route("/contoso/x", &served).expect("default");
        assert!(r.mount(None).expect("uri").is_none());
        let r = route(
            "/_host/pkgs.dev.azure.com/contoso/_packaging/f/pypi/simple/",
            &served,
        )
        .expect("pkgs");
        assert_eq!(r.host, Some("pkgs.dev.azure.com"));
        assert_eq!(r.path, "/contoso/_packaging/f/pypi/simple/");
        let (host, target) = r.mount(Some("a=1")).expect("uri").expect("mounted");
        assert_eq!(host.as_deref(), Some("pkgs.dev.azure.com"));
        assert_eq!(target.as_str(), "/contoso/_packaging/f/pypi/simple/?a=1");
        let r = route("/_host/contoso.visualstudio.com", &served).expect("bare host");
        assert_eq!(r.path, "/");
    }

    #[test]
    fn other_hosts_and_malformed_mounts_are_refused() {
        let served = served();
        for path in [
            "/_host/evil.example/x",
            "/_host/contoso.blob.core.windows.net/c/b",
            "/_HOST/x.vsassets.io/a",
        ] {
            assert!(
                matches!(route(path, &served), Err(Rejection::UnknownHost(_))),
                "{path}"
            );
        }
        for path in [
            "/_host",
            "/_host/",
            "/_host//x",
            "/_host/a%2eb.com/x",
            "/_host/h:443/x",
        ] {
            assert!(
                matches!(route(path, &served), Err(Rejection::BadRequest(_))),
                "{path}"
            );
        }
    }
}
