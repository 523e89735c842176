//! `check --rules`: for every client, each rule's needs put to Azure DevOps with the token of
//! the identity the client acts as, as the cheapest question that proves them (membership of
//! the organization, the project, the repository, the feed), and per rule `ok` or what is
//! missing and how to grant it. A rule that cannot work shows here, not at a client's first 404.

mod ask;
mod plan;

use std::collections::HashMap;
use std::fmt::Write as _;

use http::HeaderValue;

use crate::config::{Config, DEFAULT_IDENTITY, InboundMode};
use crate::policy::Allowlist;
use ask::{FEEDS_HOST, Hosts, Verdict};
use plan::Question;

/// How the rules fared, for the summary and the exit status.
#[derive(Default)]
struct Tally {
    ok: usize,
    failed: usize,
    unchecked: usize,
}

/// Appends the rules' report; false when any rule cannot work. `tokens` holds the bearer of each
/// identity whose token was fetched; a client whose identity has none fails unasked.
pub async fn check_rules(
    config: &Config,
    http: &reqwest::Client,
    tokens: &HashMap<String, HeaderValue>,
    report: &mut String,
) -> bool {
    let upstream_host = config.upstream.authority.host().to_ascii_lowercase();
    let hosts = Hosts {
        upstream: format!("{}://{}", config.upstream.scheme, config.upstream.authority),
        organizations_in_path: !(upstream_host == "visualstudio.com"
            || upstream_host.ends_with(".visualstudio.com")),
        feeds: config.upstream.hosts.allows(FEEDS_HOST),
    };
    let mut clients: Vec<(&str, &str, &Allowlist)> = config
        .clients
        .iter()
        .map(|c| (c.name.as_str(), c.identity.as_str(), &c.allow))
        .collect();
    if let InboundMode::Open { allow } = &config.inbound.mode {
        clients.push(("open", DEFAULT_IDENTITY, allow));
    }
    report.push_str("rules (asked of Azure DevOps with each client's identity):\n");
    // Per identity: the same question has the same answer for every rule that needs it.
    let mut answers: HashMap<(&str, Question), Verdict> = HashMap::new();
    let mut tally = Tally::default();
    for (client, identity, allow) in clients {
        let _ = writeln!(report, "client {client} (identity {identity})");
        let Some(bearer) = tokens.get(identity) else {
            let _ = writeln!(
                report,
                "  FAILED: identity {identity} has no token (see above): none of its {} rules \
                 could be checked",
                allow.rules().len()
            );
            tally.failed += allow.rules().len();
            continue;
        };
        if allow.rules().is_empty() {
            report.push_str("  (no rules: this client may call nothing)\n");
        }
        for rule in allow.rules() {
            let plan = plan::plan(rule);
            let mut refused = None;
            let mut not_asked = Vec::new();
            let mut seen = 0;
            for question in &plan.questions {
                let key = (identity, question.clone());
                let verdict = match answers.get(&key) {
                    Some(verdict) => verdict.clone(),
                    None => {
                        let verdict = ask::ask(http, &hosts, bearer, question).await;
                        answers.insert(key, verdict.clone());
                        verdict
                    }
                };
                match verdict {
                    Verdict::Seen => seen += 1,
                    Verdict::NotAsked(why) => {
                        not_asked.push(format!("{}: {why}", question.describe()));
                        break;
                    }
                    Verdict::Refused { answer, remedy } => {
                        refused = Some((question, answer, remedy));
                        break;
                    }
                }
            }
            if let Some((question, answer, remedy)) = refused {
                tally.failed += 1;
                let _ = writeln!(
                    report,
                    "  {rule}: FAILED: {} not seen: {answer}\n    fix: {remedy}",
                    question.describe()
                );
                continue;
            }
            let unchecked: Vec<String> = plan.unchecked.into_iter().chain(not_asked).collect();
            if seen == 0 {
                tally.unchecked += 1;
                let _ = writeln!(report, "  {rule}: not checked: {}", unchecked.join("; "));
                continue;
            }
            tally.ok += 1;
            let _ = write!(report, "  {rule}: ok");
            if !unchecked.is_empty() {
                let _ = write!(
                    report,
                    " as far as it names things; not checked: {}",
                    unchecked.join("; ")
                );
            }
            if !plan.writes.is_empty() {
                let _ = write!(
                    report,
                    " (read access proven; {} not: a read cannot show write permission)",
                    plan.writes.join(", ")
                );
            }
            report.push('\n');
        }
    }
    let _ = writeln!(
        report,
        "rules: {} ok, {} cannot work, {} not checked",
        tally.ok, tally.failed, tally.unchecked
    );
    tally.failed == 0
}
