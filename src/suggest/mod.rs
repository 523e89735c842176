//! `rules suggest`: from audit lines to the least allow rules that cover what each client did, as
//! TOML to paste into the configuration; with `--against`, what a configuration's rules would
//! refuse of the same calls ([`against`]).
//!
//! The log says what a client needed, not what it may need tomorrow: the rules are generalized
//! just enough that the next run of the same tool (other commit ids, other build numbers, other
//! package versions) still passes, and no further. How, in [`HEURISTIC`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{self, BufRead};

use crate::policy::Segments;
use crate::policy::host::host_name;
use crate::policy::rules::FORWARDED_METHODS;
use crate::telemetry::metrics::NO_CLIENT;

mod against;
mod audit_log;
mod pattern;
#[cfg(test)]
mod tests;

pub use against::against;
pub use audit_log::{LoggedCall, parse_line};

use pattern::{Seg, SuggestedPattern, area_of, generalize};

/// Where `/_host/{name}/...` paths start; see `proxy::route`.
const MOUNT: &str = "/_host/";

/// The default upstream when no configuration says otherwise (`upstream.url`'s default).
pub const DEFAULT_HOST: &str = "dev.azure.com";

/// Requests answered with these never reached a rule that could have admitted them for what they
/// are (malformed, or never authenticated): they are no evidence of what a client needs.
const NOT_EVIDENCE: [u16; 3] = [400, 401, 405];

/// How the rules are generalized; printed at the top of every suggestion.
const HEURISTIC: &str = "\
# How the calls were generalized:
#   - GUIDs, numbers, commit ids (40 hex), object ids (64 hex, git LFS), other hex ids, versions
#     (1.2.3) and long random-looking segments became `*`; names (the organization, always,
#     projects, repositories, feeds, `_apis` and the other `_` segments, area names) stay;
#   - a git repository (.../_git/{repo}/...) and a feed (.../_packaging/{feed}/...) became one
#     rule for the whole repository or feed (`/**`);
#   - four or more different paths with one method under one area (the segment after `_apis`, or
#     after any other `_` segment) became `{area}/**`;
#   - rules with the same host and path share one entry with their methods; sorted by host, path.
# Calls answered 400, 401 or 405 (malformed, never authenticated) are no evidence and left out;
# everything else is evidence, 403s and calls forwarded in learn mode (learn=would_deny) included.
";

/// How often one (method, logged path) was seen.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    calls: u64,
    would_deny: u64,
}

/// What one client did, as logged.
#[derive(Debug, Default)]
struct ClientLog {
    /// (method, logged path) → how often.
    calls: BTreeMap<(String, String), Seen>,
    would_deny: u64,
    /// 403 with no rule: the proxy refused it (not in learn mode).
    refused: u64,
    /// 400, 401, 405.
    left_out: u64,
}

/// Every audit line read, per client.
#[derive(Debug, Default)]
pub struct Evidence {
    clients: BTreeMap<String, ClientLog>,
    audit_lines: u64,
    other_lines: u64,
    /// Requests of no client (`-`): never authenticated.
    anonymous: u64,
}

impl Evidence {
    /// Reads a whole log; lines that are not audit lines, or not UTF-8, are counted and passed over.
    pub fn read(mut input: impl BufRead) -> io::Result<Evidence> {
        let mut evidence = Evidence::default();
        let mut line = Vec::new();
        loop {
            line.clear();
            if input.read_until(b'\n', &mut line)? == 0 {
                return Ok(evidence);
            }
            match std::str::from_utf8(&line).ok().and_then(parse_line) {
                Some(call) => evidence.add(call),
                None => evidence.other_lines += 1,
            }
        }
    }

    pub fn add(&mut self, call: LoggedCall) {
        self.audit_lines += 1;
        if call.client == NO_CLIENT {
            self.anonymous += 1;
            return;
        }
        let client = self.clients.entry(call.client).or_default();
        if NOT_EVIDENCE.contains(&call.status) {
            client.left_out += 1;
            return;
        }
        if call.would_deny {
            client.would_deny += 1;
        } else if call.status == 403 && call.rule.is_none() {
            client.refused += 1;
        }
        let seen = client.calls.entry((call.method, call.path)).or_default();
        seen.calls += 1;
        seen.would_deny += u64::from(call.would_deny);
    }

    /// The clients seen, and each one's calls with how often they were made.
    fn calls(&self) -> impl Iterator<Item = (&str, impl Iterator<Item = (&str, &str, u64)>)> {
        self.clients.iter().map(|(name, log)| {
            let calls = log
                .calls
                .iter()
                .map(|((method, path), seen)| (method.as_str(), path.as_str(), seen.calls));
            (name.as_str(), calls)
        })
    }
}

/// A logged path split into its host (`None`: the default upstream) and the path sent there, as
/// `proxy::route` splits it; `None` for a path no request could have been forwarded with.
pub fn split_host<'a>(path: &'a str, default_host: &str) -> Option<(Option<String>, &'a str)> {
    let Some(prefix) = path.get(..MOUNT.len()) else {
        return Some((None, path));
    };
    if !prefix.eq_ignore_ascii_case(MOUNT) {
        return Some((None, path));
    }
    let rest = &path[MOUNT.len() - 1..];
    let (name, path) = match rest[1..].find('/') {
        Some(slash) => (&rest[1..=slash], &rest[slash + 1..]),
        None => (&rest[1..], "/"),
    };
    let name = host_name(name)?.to_ascii_lowercase();
    Some((
        (!name.eq_ignore_ascii_case(default_host)).then_some(name),
        path,
    ))
}

/// One suggested rule and the calls behind it.
#[derive(Debug, Default)]
struct Suggested {
    methods: BTreeSet<usize>,
    calls: u64,
    would_deny: u64,
    /// (logged path, method), sorted: the first is the example shown.
    examples: BTreeSet<(String, String)>,
}

/// A rule's host (`None`: the default upstream) and its pattern.
type RuleKey = (Option<String>, SuggestedPattern);

/// One client's calls, as the smallest set of rules that admits them all.
fn suggest_client(log: &ClientLog, default_host: &str) -> BTreeMap<RuleKey, Suggested> {
    // A call as (host, method index, generalized segments).
    struct Item<'a> {
        host: Option<String>,
        method: usize,
        parts: Vec<Seg>,
        path: &'a str,
        method_name: &'a str,
        seen: Seen,
    }
    let mut items = Vec::new();
    for ((method_name, logged), seen) in &log.calls {
        let Some(method) = FORWARDED_METHODS
            .iter()
            .position(|m| m.as_str() == method_name)
        else {
            continue;
        };
        let Some((host, path)) = split_host(logged, default_host) else {
            continue;
        };
        let Ok(segments) = Segments::parse(path) else {
            continue;
        };
        items.push(Item {
            host,
            method,
            parts: generalize(segments.as_slice()),
            path: logged,
            method_name,
            seen: *seen,
        });
    }
    // How many different patterns each (host, method, area) holds: the collapse threshold's count.
    let mut per_area: BTreeMap<(Option<String>, usize, SuggestedPattern), BTreeSet<String>> =
        BTreeMap::new();
    for item in &items {
        if let Some((area, _)) = area_of(&item.parts) {
            per_area
                .entry((item.host.clone(), item.method, area))
                .or_default()
                .insert(
                    SuggestedPattern::exact(item.parts.clone())
                        .key()
                        .to_string(),
                );
        }
    }
    let mut by_method: BTreeMap<(Option<String>, usize, SuggestedPattern), Suggested> =
        BTreeMap::new();
    for item in items {
        let pattern = match area_of(&item.parts) {
            Some((area, always))
                if always
                    || per_area
                        .get(&(item.host.clone(), item.method, area.clone()))
                        .is_some_and(|patterns| patterns.len() >= pattern::COLLAPSE_AT) =>
            {
                area
            }
            _ => SuggestedPattern::exact(item.parts),
        };
        let entry = by_method
            .entry((item.host, item.method, pattern))
            .or_default();
        entry.calls += item.seen.calls;
        entry.would_deny += item.seen.would_deny;
        entry
            .examples
            .insert((item.path.to_string(), item.method_name.to_string()));
    }
    // A pattern that a `/**` rule of the same host and method covers adds nothing.
    let subtrees: Vec<_> = by_method
        .keys()
        .filter(|(_, _, pattern)| pattern.is_subtree())
        .cloned()
        .collect();
    let keys: Vec<_> = by_method.keys().cloned().collect();
    for key in keys {
        let (host, method, pattern) = &key;
        // Among the subtrees still there: one merged away already took its calls along.
        let cover = subtrees.iter().find(|(h, m, p)| {
            h == host
                && m == method
                && p.covers(pattern)
                && p != pattern
                && by_method.contains_key(&(h.clone(), *m, p.clone()))
        });
        if let Some(cover) = cover
            && let Some(covered) = by_method.remove(&key)
            && let Some(into) = by_method.get_mut(cover)
        {
            into.calls += covered.calls;
            into.would_deny += covered.would_deny;
            into.examples.extend(covered.examples);
        }
    }
    let mut rules: BTreeMap<RuleKey, Suggested> = BTreeMap::new();
    for ((host, method, pattern), suggested) in by_method {
        let rule = rules.entry((host, pattern)).or_default();
        rule.methods.insert(method);
        rule.calls += suggested.calls;
        rule.would_deny += suggested.would_deny;
        rule.examples.extend(suggested.examples);
    }
    rules
}

/// The suggestion for every client in `evidence`, as TOML that parses as it is.
pub fn render(evidence: &Evidence, default_host: &str) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = write_suggestion(&mut out, evidence, default_host);
    out
}

fn write_suggestion(out: &mut String, evidence: &Evidence, default_host: &str) -> std::fmt::Result {
    writeln!(
        out,
        "# Allow rules suggested by `ado-auth-proxy rules suggest` from {} ({} passed over; {} \
         of no client, never authenticated, left out).",
        counted(evidence.audit_lines, "audit line"),
        counted(evidence.other_lines, "other line"),
        counted(evidence.anonymous, "request")
    )?;
    writeln!(
        out,
        "# Rules without `host` are for the default upstream ({default_host})."
    )?;
    out.push_str(HEURISTIC);
    if evidence.clients.is_empty() {
        writeln!(
            out,
            "# No client's audit line was found: nothing to suggest."
        )?;
    }
    for (name, log) in &evidence.clients {
        writeln!(out, "\n[[clients]]\nname = {}", toml_string(name))?;
        if name == crate::OPEN_CLIENT {
            writeln!(
                out,
                "# `open` is how open mode (inbound.mode = \"open\") logs its callers: in open \
                 mode these rules go in inbound.allow."
            )?;
        }
        let evidence_calls: u64 = log.calls.values().map(|seen| seen.calls).sum();
        writeln!(
            out,
            "# {} as evidence: {} forwarded in learn mode (would_deny), {} refused by the proxy \
             (403); {} left out (400, 401, 405).",
            counted(evidence_calls, "call"),
            log.would_deny,
            log.refused,
            log.left_out
        )?;
        writeln!(
            out,
            "# key_sha256 and identity: keep your own (the log has neither)."
        )?;
        let rules = suggest_client(log, default_host);
        if rules.is_empty() {
            writeln!(out, "allow = []")?;
            continue;
        }
        writeln!(out, "allow = [")?;
        for ((host, pattern), rule) in &rules {
            write_rule(out, host.as_deref(), pattern, rule)?;
        }
        writeln!(out, "]")?;
    }
    Ok(())
}

fn write_rule(
    out: &mut String,
    host: Option<&str>,
    pattern: &SuggestedPattern,
    rule: &Suggested,
) -> std::fmt::Result {
    let (example_path, example_method) = rule
        .examples
        .first()
        .map_or(("", ""), |(p, m)| (p.as_str(), m.as_str()));
    let paths = match rule.examples.len() {
        1 => String::new(),
        n => format!(" to {n} paths"),
    };
    write!(
        out,
        "  # {}{paths}, e.g. {example_method} {}",
        counted(rule.calls, "call"),
        comment_safe(example_path)
    )?;
    if rule.would_deny > 0 {
        write!(out, "; {} would_deny in learn mode", rule.would_deny)?;
    }
    writeln!(out)?;
    if pattern.is_git_repository() {
        let pushed = rule
            .examples
            .iter()
            .any(|(path, _)| path.to_ascii_lowercase().ends_with("/git-receive-pack"));
        let post = FORWARDED_METHODS
            .iter()
            .position(|m| *m == http::Method::POST);
        let has_post = post.is_some_and(|post| rule.methods.contains(&post));
        if pushed {
            writeln!(out, "  # git: pushes (POST git-receive-pack) were seen")?;
        } else if has_post {
            writeln!(
                out,
                "  # git: no push seen, yet this admits one (POST git-receive-pack); read-only is GET \
                 on /** and POST on {}/git-upload-pack (and info/lfs/objects/batch for LFS)",
                pattern.prefix_text()
            )?;
        } else {
            writeln!(
                out,
                "  # git: a clone or fetch also needs POST git-upload-pack, a push POST git-receive-pack"
            )?;
        }
    }
    if pattern.is_feeds_by_id() {
        writeln!(
            out,
            "  # feeds named by GUID: a feed rule ({{ feed = \"org/feed\", methods = [...] }}) admits \
             one feed by its name and its GUIDs, and no other"
        )?;
    }
    let methods: Vec<String> = rule
        .methods
        .iter()
        .filter_map(|i| FORWARDED_METHODS.get(*i))
        .map(|m| toml_string(m.as_str()))
        .collect();
    write!(out, "  {{ ")?;
    if let Some(host) = host {
        write!(out, "host = {}, ", toml_string(host))?;
    }
    writeln!(
        out,
        "methods = [{}], path = {} }},",
        methods.join(", "),
        toml_string(&pattern.text())
    )
}

/// `1 call`, `2 calls`.
fn counted(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// A TOML basic string.
fn toml_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Text for a `#` comment: a line break would end the comment and start TOML.
fn comment_safe(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}
