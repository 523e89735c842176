//! The Grafana dashboard and the Prometheus alert rules in `deploy/` must query metrics and labels
//! a running proxy really exports: a renamed metric would otherwise leave an empty panel or an
//! alert that can never fire, and nobody would notice until the day it should have.

use std::collections::BTreeSet;
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
    labels: std::collections::BTreeMap<String, String>,
    annotations: std::collections::BTreeMap<String, String>,
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
    for panel in dashboard["panels"].as_array().expect("panels") {
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
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("ado_auth_proxy_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(&tail[..end]);
        rest = &tail[end..];
    }
    names
}

/// Label names an expression matches on (`{name="..."}`, `!=`, `=~`, `!~`) or groups by.
fn label_names(expr: &str) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    let mut insert = |name: &str| {
        let name = name.trim();
        if !name.is_empty() {
            labels.insert(name.to_string());
        }
    };
    for selector in expr.split('{').skip(1) {
        for matcher in selector.split('}').next().unwrap_or("").split(',') {
            insert(matcher.split(['=', '!']).next().unwrap_or(""));
        }
    }
    for keyword in ["by (", "by(", "without (", "without("] {
        for grouping in expr.split(keyword).skip(1) {
            grouping
                .split(')')
                .next()
                .unwrap_or("")
                .split(',')
                .for_each(&mut insert);
        }
    }
    labels
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
    let families: BTreeSet<&str> = metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split(' ').next())
        .collect();
    let histograms: BTreeSet<&str> = metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" histogram"))
        .collect();
    let exported_labels: BTreeSet<&str> = metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| Some(line.split_once('{')?.1.split_once('}')?.0))
        .flat_map(|labels| labels.split(','))
        .filter_map(|pair| pair.split_once('=').map(|(name, _)| name))
        .collect();

    let expressions: Vec<(String, String)> = alert_expressions()
        .into_iter()
        .chain(dashboard_expressions())
        .collect();
    let mut used = BTreeSet::new();
    for (place, expr) in &expressions {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{place}: reads no proxy metric: {expr}");
        for name in names {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix).filter(|f| histograms.contains(f)))
                .unwrap_or(name);
            assert!(
                families.contains(family),
                "{place}: {name} is not exported:\n{metrics}"
            );
            used.insert(family.to_string());
        }
        for label in label_names(expr) {
            assert!(
                exported_labels.contains(label.as_str()) || SCRAPE_LABELS.contains(&label.as_str()),
                "{place}: label {label} is on no exported series: {expr}"
            );
        }
    }
    // The dashboard shows every family the proxy exports.
    for family in &families {
        if family.starts_with("ado_auth_proxy_") {
            assert!(used.contains(*family), "{family} is on no panel or alert");
        }
    }
}

#[test]
fn expression_parsing_finds_metrics_and_labels() {
    let expr = r#"sum by (identity, result) (increase(ado_auth_proxy_token_refreshes_total{result!="success", instance=~"$instance"}[5m])) / clamp_min(sum(rate(ado_auth_proxy_requests_total[5m])), 1)"#;
    assert_eq!(
        metric_names(expr),
        [
            "ado_auth_proxy_token_refreshes_total",
            "ado_auth_proxy_requests_total"
        ]
    );
    assert_eq!(
        label_names(expr).into_iter().collect::<Vec<_>>(),
        ["identity", "instance", "result"]
    );
}
