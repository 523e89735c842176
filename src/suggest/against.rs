//! `rules suggest --against CONFIG`: which logged calls a configuration's rules would refuse,
//! judged by the proxy's own code (`proxy::route` for the host, `Allowlist::judge_on` for the
//! rules), never by a second matcher that could disagree with it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use http::Method;

use super::{Evidence, comment_safe};
use crate::config::{Config, InboundMode};
use crate::policy::{Allowlist, RequestHost, Segments};
use crate::proxy::route::{Served, route};

/// Why a configuration would refuse a call.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Refusal {
    /// No rule of the client admits it.
    NoRule,
    /// The configuration does not serve the host (`upstream.hosts`), or the path is not one the
    /// proxy forwards.
    NotRouted,
    /// No client of that name is configured.
    UnknownClient,
}

/// The hosts `config` serves, as the proxy's snapshot builds them.
pub(super) fn served(config: &Config) -> Served {
    Served {
        default_host: config.upstream.authority.host().to_ascii_lowercase().into(),
        others: config.upstream.hosts.clone(),
        plain_origin: None,
    }
}

/// The rules a client named in audit lines has in `config`: in keys mode, those of the
/// `[[clients]]` entry of that name; in open mode, `inbound.allow` for the `open` client.
pub(super) fn allowlist_of<'a>(config: &'a Config, client: &str) -> Option<&'a Allowlist> {
    match &config.inbound.mode {
        InboundMode::Keys => config
            .clients
            .iter()
            .find(|c| c.name == client)
            .map(|c| &c.allow),
        InboundMode::Open { allow } => (client == crate::OPEN_CLIENT).then_some(allow),
    }
}

/// Whether `allow` admits `method` on `logged` (a path as the audit line has it, `/_host/...`
/// prefix included), exactly as `proxy::admit` judges it. The query is not in the log: a push's
/// preflight `GET .../info/refs?service=git-receive-pack` is judged as a plain GET, its
/// `POST .../git-receive-pack` as itself.
pub(super) fn judge(
    served: &Served,
    allow: &Allowlist,
    method: &str,
    logged: &str,
) -> Result<(), Refusal> {
    let route = route(logged, served).map_err(|_| Refusal::NotRouted)?;
    let path = Segments::parse(route.path).map_err(|_| Refusal::NotRouted)?;
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| Refusal::NotRouted)?;
    let host = RequestHost {
        name: route.host.unwrap_or_default(),
        is_default: route.host.is_none(),
    };
    allow
        .judge_on(host, &method, &path, None)
        .map(|_| ())
        .ok_or(Refusal::NoRule)
}

/// What `config` would refuse of the calls in `evidence`, per client, as `#` comments (so the
/// whole output of `rules suggest` still parses as TOML). `name` says which configuration.
pub fn against(evidence: &Evidence, config: &Config, name: &str) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = write_against(&mut out, evidence, config, name);
    out
}

fn write_against(
    out: &mut String,
    evidence: &Evidence,
    config: &Config,
    name: &str,
) -> std::fmt::Result {
    let served = served(config);
    writeln!(
        out,
        "\n# Against {}: what its rules would refuse of the logged calls.",
        comment_safe(name)
    )?;
    writeln!(
        out,
        "# Judged by the proxy's own routing and allowlist code. The log has no query: a push's\n\
         # preflight GET is judged as a GET (its POST git-receive-pack as itself)."
    )?;
    let feed_rules = config
        .clients
        .iter()
        .map(|c| &c.allow)
        .chain(match &config.inbound.mode {
            InboundMode::Open { allow } => Some(allow),
            InboundMode::Keys => None,
        })
        .any(|allow| allow.rules().iter().any(|rule| rule.feed().is_some()));
    if feed_rules {
        writeln!(
            out,
            "# Feed rules admit feeds by name only here: the proxy learns their GUIDs at run time."
        )?;
    }
    for (client, calls) in evidence.calls() {
        // (method, host and path as a rule names them, why) → how often.
        let mut refused: BTreeMap<(Refusal, String, String), u64> = BTreeMap::new();
        let mut total = 0;
        let allow = allowlist_of(config, client);
        for (method, logged, count) in calls {
            total += count;
            let verdict = match allow {
                Some(allow) => judge(&served, allow, method, logged),
                None => Err(Refusal::UnknownClient),
            };
            if let Err(refusal) = verdict {
                let shown = match super::split_host(logged, &served.default_host) {
                    Some((Some(host), path)) => format!("{host}{path}"),
                    Some((None, path)) => format!("{}{path}", served.default_host),
                    None => logged.to_string(),
                };
                *refused
                    .entry((refusal, method.to_string(), shown))
                    .or_default() += count;
            }
        }
        let client_shown = comment_safe(client);
        if allow.is_none() {
            writeln!(
                out,
                "# {client_shown}: no such client in this configuration; all {} would be refused.",
                super::counted(total, "call")
            )?;
            continue;
        }
        if refused.is_empty() {
            writeln!(
                out,
                "# {client_shown}: all {} allowed.",
                super::counted(total, "call")
            )?;
            continue;
        }
        let refused_calls: u64 = refused.values().sum();
        writeln!(
            out,
            "# {client_shown}: {refused_calls} of {} ({} different) would be refused:",
            super::counted(total, "call"),
            refused.len()
        )?;
        for ((refusal, method, shown), count) in &refused {
            let why = match refusal {
                Refusal::NoRule => "",
                Refusal::NotRouted => ", host not served or path not forwarded",
                Refusal::UnknownClient => "",
            };
            writeln!(
                out,
                "#   {method} {}  ({}{why})",
                comment_safe(shown),
                super::counted(*count, "call")
            )?;
        }
    }
    Ok(())
}
