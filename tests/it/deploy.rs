//! The Grafana dashboard and the Prometheus alert rules in `deploy/` must query metrics and labels
//! a running proxy really exports: a renamed metric would otherwise leave an empty panel or an
//! alert that can never fire, and nobody would notice until the day it should have.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use figment::Figment;
use figment::providers::{Format, Yaml};
use serde::Deserialize;

use crate::access::Keys;
use crate::harness::{Options, Stack};
use crate::support;

/// Labels Prometheus adds when it scrapes, not the proxy.
const SCRAPE_LABELS: [&str; 2] = ["instance", "job"];

#[derive(Deserialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Deserialize)]
struct RuleGroup {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
struct Rule {
    alert: String,
    expr: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

fn deploy_file(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn alert_expressions() -> Vec<(String, String)> {
    let rules: RuleFile = Figment::from(Yaml::string(&deploy_file(
        "prometheus/ado-auth-proxy-rules.yaml",
    )))
    .extract()
    .expect("the rules file is YAML in Prometheus' rule-file shape");
    assert!(!rules.groups.is_empty());
    let mut expressions = Vec::new();
    for group in rules.groups {
        assert!(!group.name.is_empty());
        for rule in group.rules {
            assert!(
                ["critical", "warning", "info"].contains(&rule.labels["severity"].as_str()),
                "{}: severity",
                rule.alert
            );
            assert!(rule.annotations.contains_key("summary"), "{}", rule.alert);
            expressions.push((rule.alert, rule.expr));
        }
    }
    expressions
}

fn dashboard_expressions() -> Vec<(String, String)> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&deploy_file("grafana/ado-auth-proxy.json")).expect("valid JSON");
    let mut expressions = Vec::new();
    // A collapsed row holds its panels inside it.
    let panels = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|panel| {
            std::iter::once(panel).chain(panel["panels"].as_array().into_iter().flatten())
        });
    for panel in panels {
        let title = panel["title"].as_str().expect("every panel has a title");
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            // Imported dashboards pick their Prometheus through the `datasource` variable.
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            let expr = target["expr"].as_str().expect("expr");
            expressions.push((title.to_string(), expr.to_string()));
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            expressions.push((format!("variable {}", variable["name"]), query.to_string()));
        }
    }
    expressions
}

/// Metric names an expression reads (`ado_auth_proxy_*`, histogram suffixes included).
fn metric_names(expr: &str) -> Vec<&str> {
    expr.match_indices("ado_auth_proxy_")
        .map(|(start, _)| {
            let tail = &expr[start..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            &tail[..end]
        })
        .collect()
}

/// `{name="value"}`-style matchers in an expression: label name, operator, value.
fn matchers(expr: &str) -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    for selector in expr.split('{').skip(1) {
        for matcher in selector.split('}').next().unwrap_or("").split(',') {
            let name_end = matcher.find(['=', '!']).unwrap_or(matcher.len());
            let (name, rest) = matcher.split_at(name_end);
            let value_start = rest.find('"').map_or(rest.len(), |i| i + 1);
            let operator = rest[..value_start].trim_end_matches('"').trim();
            let value = rest[value_start..].trim_end().trim_end_matches('"');
            if !name.trim().is_empty() {
                found.push((name.trim().into(), operator.into(), value.into()));
            }
        }
    }
    found
}

/// Label names listed in `by (...)` or `without (...)` clauses.
fn grouping_labels(expr: &str) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    for keyword in ["by (", "by(", "without (", "without("] {
        for grouping in expr.split(keyword).skip(1) {
            for name in grouping.split(')').next().unwrap_or("").split(',') {
                if !name.trim().is_empty() {
                    labels.insert(name.trim().to_string());
                }
            }
        }
    }
    labels
}

/// What `/metrics` exports: per family, each label name with the values seen.
struct Exported {
    families: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    histograms: BTreeSet<String>,
}

impl Exported {
    fn parse(metrics: &str) -> Exported {
        let mut families: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
        let mut histograms = BTreeSet::new();
        for line in metrics.lines() {
            if let Some(declared) = line.strip_prefix("# TYPE ") {
                let mut words = declared.split(' ');
                let name = words.next().unwrap_or_default().to_string();
                if words.next() == Some("histogram") {
                    histograms.insert(name.clone());
                }
                families.entry(name).or_default();
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let series = line.split(' ').next().unwrap_or_default();
            let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
            let family = Self::family_of(&histograms, name);
            let entry = families.entry(family.to_string()).or_default();
            for pair in labels
                .trim_end_matches('}')
                .split(',')
                .filter(|p| !p.is_empty())
            {
                let (label, value) = pair.split_once('=').expect("label=\"value\"");
                entry
                    .entry(label.to_string())
                    .or_default()
                    .insert(value.trim_matches('"').to_string());
            }
        }
        Exported {
            families,
            histograms,
        }
    }

    /// `x_bucket`, `x_sum` and `x_count` belong to histogram `x`.
    fn family_of<'a>(histograms: &BTreeSet<String>, name: &'a str) -> &'a str {
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|f| histograms.contains(*f))
            })
            .unwrap_or(name)
    }
}

/// The literal values a matcher names: `a` for `="a"` or `!="a"`, each of `a|b` for `=~`/`!~`.
fn literal_values(operator: &str, value: &str) -> Vec<String> {
    let regex = operator.ends_with('~');
    if value.contains('$') || (regex && value.contains(['.', '*', '+', '?', '[', '('])) {
        return Vec::new(); // a dashboard variable or a real pattern: nothing literal to check
    }
    if regex {
        value.split('|').map(str::to_string).collect()
    } else {
        vec![value.to_string()]
    }
}

#[tokio::test]
async fn dashboard_and_alerts_query_what_the_proxy_exports() {
    let keys = Keys::new();
    let stack = Stack::start_with(Options {
        access_toml: format!(
            r#"
            [inbound]
            mode = "keys"

            [[clients]]
            name = "ops"
            key_sha256 = "{}"
            allow = [
              {{ methods = ["GET"], path = "/contoso/_apis/projects" }},
              {{ methods = ["GET"], path = "/_test/status/*" }},
              {{ methods = ["GET"], path = "/_test/delayed" }},
            ]
            "#,
            Keys::hash(&keys.reader)
        ),
        ..Options::default()
    })
    .await;
    // One of each event, so that every family has a sample: forwarded, throttled (with a rate
    // limit header), denied by the allowlist, without a key.
    let key = format!("Bearer {}", keys.reader);
    let auth = [("authorization", key.as_str())];
    for (path, status) in [
        ("/contoso/_apis/projects", 200),
        ("/_test/status/429", 429),
        ("/_test/delayed", 200),
        ("/contoso/web/_git/web/info/refs", 403),
    ] {
        assert_eq!(
            support::get(&stack.url(path), &auth).await.status,
            status,
            "{path}"
        );
    }
    let anonymous = support::get(&stack.url("/contoso/_apis/projects"), &[]).await;
    assert_eq!(anonymous.status, 401);

    let metrics = stack.metrics().await;
    let exported = Exported::parse(&metrics);

    let expressions: Vec<(String, String)> = alert_expressions()
        .into_iter()
        .chain(dashboard_expressions())
        .collect();
    let mut used = BTreeSet::new();
    for (place, expr) in &expressions {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{place}: reads no proxy metric: {expr}");
        let families: Vec<&str> = names
            .iter()
            .map(|name| Exported::family_of(&exported.histograms, name))
            .collect();
        for family in &families {
            assert!(
                exported.families.contains_key(*family),
                "{place}: {family} is not exported:\n{metrics}"
            );
            used.insert(family.to_string());
        }
        // A selector's matchers belong to the metric right before its braces.
        for (start, _) in expr.match_indices("ado_auth_proxy_") {
            let tail = &expr[start..];
            let name_end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let family = Exported::family_of(&exported.histograms, &tail[..name_end]);
            let Some(selector) = tail[name_end..].strip_prefix('{') else {
                continue;
            };
            let selector = format!("{{{}}}", selector.split('}').next().unwrap_or(""));
            for (label, operator, value) in matchers(&selector) {
                if SCRAPE_LABELS.contains(&label.as_str()) {
                    continue;
                }
                let values = exported.families[family]
                    .get(&label)
                    .unwrap_or_else(|| panic!("{place}: {family} has no label {label}: {expr}"));
                for literal in literal_values(&operator, &value) {
                    assert!(
                        values.contains(&literal),
                        "{place}: {family} never has {label}=\"{literal}\" (it has {values:?}): {expr}"
                    );
                }
            }
        }
        // Grouping labels must be on every family the expression reads.
        for label in grouping_labels(expr) {
            if SCRAPE_LABELS.contains(&label.as_str()) {
                continue;
            }
            for family in &families {
                assert!(
                    exported.families[*family].contains_key(&label),
                    "{place}: {family} has no label {label} to group by: {expr}"
                );
            }
        }
    }
    // The dashboard shows every family the proxy exports.
    for family in exported.families.keys() {
        if family.starts_with("ado_auth_proxy_") {
            assert!(used.contains(family), "{family} is on no panel or alert");
        }
    }
    // Prometheus' own linter, on a scrape with every family present.
    promtool(&["check", "metrics"], &metrics);
}

/// Prometheus' own parser and checks on the alert rules.
#[test]
fn promtool_accepts_the_alert_rules() {
    let rules =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/ado-auth-proxy-rules.yaml");
    let rules = rules.to_str().expect("a UTF-8 path");
    promtool(&["check", "rules", rules], "");
}

/// Runs `promtool` (Debian's `prometheus` package; `.ci/run` installs it) with `stdin`, and fails
/// with its output unless it succeeds with nothing to complain about.
fn promtool(args: &[&str], stdin: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};

    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("promtool (Debian package `prometheus`) cannot run: {e}"));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin.as_bytes())
        .expect("promtool reads its input");
    let output = child.wait_with_output().expect("promtool finishes");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?}:\n{report}");
    // `check metrics` succeeds silently; `check rules` only reports its count.
    assert!(
        report.trim().is_empty() || report.contains("SUCCESS"),
        "promtool {args:?}:\n{report}"
    );
}

/// `increase()` cannot see a series' first value, so the counters the alerts watch are exported
/// at 0 before their first event.
#[tokio::test]
async fn alerted_counters_exist_before_their_first_event() {
    let stack = Stack::start().await;
    for series in [
        r#"ado_auth_proxy_upstream_throttled_total{identity="default"}"#,
        r#"ado_auth_proxy_upstream_retry_after_total{identity="default"}"#,
        r#"ado_auth_proxy_upstream_non_authoritative_total{identity="default"}"#,
        r#"ado_auth_proxy_upstream_rate_limit_delay_seconds_sum{identity="default"}"#,
        r#"ado_auth_proxy_token_refreshes_total{identity="default",result="transport"}"#,
        r#"ado_auth_proxy_token_refreshes_total{identity="default",result="credential"}"#,
        r#"ado_auth_proxy_token_refreshes_total{identity="default",result="throttled"}"#,
    ] {
        assert_eq!(stack.metric(series).await, 0.0, "{series}");
    }
}

#[test]
fn expression_parsing_finds_metrics_labels_and_values() {
    let expr = r#"sum by (identity, result) (increase(ado_auth_proxy_token_refreshes_total{result!="success", instance=~"$instance"}[5m])) / clamp_min(sum(rate(ado_auth_proxy_requests_total{kind=~"connect|timeout"}[5m])), 1)"#;
    assert_eq!(
        metric_names(expr),
        [
            "ado_auth_proxy_token_refreshes_total",
            "ado_auth_proxy_requests_total"
        ]
    );
    assert_eq!(
        grouping_labels(expr).into_iter().collect::<Vec<_>>(),
        ["identity", "result"]
    );
    let found = matchers(expr);
    let triple = |l: &str, o: &str, v: &str| (l.to_string(), o.to_string(), v.to_string());
    assert_eq!(
        found,
        [
            triple("result", "!=", "success"),
            triple("instance", "=~", "$instance"),
            triple("kind", "=~", "connect|timeout"),
        ]
    );
    assert_eq!(literal_values("!=", "success"), ["success"]);
    assert_eq!(
        literal_values("=~", "connect|timeout"),
        ["connect", "timeout"]
    );
    assert!(literal_values("=~", "$instance").is_empty());
    assert!(literal_values("=~", "conn.*").is_empty());
}
