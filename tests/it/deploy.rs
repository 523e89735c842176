//! The Grafana dashboard and the Prometheus alert rules in `deploy/` must query metrics and labels
//! a running proxy really exports: a renamed metric would otherwise leave an empty panel or an
//! alert that can never fire, and nobody would notice until the day it should have.
//!
//! The deploy kit (below the dashboard's tests) must deploy: the shared-service kustomizations
//! render (`kubectl kustomize`), every object matches the Kubernetes schemas
//! (`kubernetes-validate`), the objects agree with each other and with the proxy's configuration,
//! which the real binary accepts with the environment the Deployment gives it; the systemd unit
//! passes `systemd-analyze verify` and keeps its exposure score.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use figment::Figment;
use figment::providers::{Format, Toml, Yaml};
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

// ---------------------------------------------------------------------------------------------
// The deploy kit: the shared-service kustomizations (deploy/kubernetes/shared/) and the systemd
// unit (deploy/systemd/).

const PROXY_BIN: &str = env!("CARGO_BIN_EXE_ado-auth-proxy");

/// The shared-service kustomizations an operator applies; `shared/base` is their common part.
const SHARED_VARIANTS: [&str; 2] = ["shared/client-secret", "shared/workload-identity"];

/// Custom resources, which `kubernetes-validate` has no schema for: their fields are checked by
/// hand in `shared_service_objects_agree_with_each_other_and_the_configuration`.
const CUSTOM_KINDS: [&str; 1] = ["PodMonitor"];

/// The oldest Kubernetes the manifests are for: the preStop `sleep` action is on by default from
/// 1.30 (1.28's schema refuses it).
const KUBERNETES_VERSION: &str = "1.30.0";

/// A YAML stream as one JSON list, through PyYAML (which kubernetes-validate installs).
const YAML_TO_JSON: &str =
    "import sys, json, yaml; json.dump(list(yaml.safe_load_all(sys.stdin)), sys.stdout)";

/// The proxy's container in the shared Deployment.
const PROXY_CONTAINER: &str = "ado-auth-proxy";

/// Runs a tool with `stdin` (none when empty): its exit status, stdout and stderr. Fails naming
/// where the tool comes from when it cannot run (`.ci/run` installs every one).
fn tool(
    program: &str,
    args: &[&str],
    stdin: &str,
    from: &str,
) -> (std::process::ExitStatus, String, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};

    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} ({from}) cannot run: {e}"));
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.as_bytes())
            .expect("the tool reads its input");
    }
    let output = child.wait_with_output().expect("the tool finishes");
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The objects of a YAML stream, each with an apiVersion, a kind and a name (kustomize v2 leaves
/// an empty document where a patch deleted an object: that fails here).
fn yaml_objects(yaml: &str, what: &str) -> Vec<serde_json::Value> {
    let (status, json, stderr) = tool(
        "python3",
        &["-c", YAML_TO_JSON],
        yaml,
        "python3 with PyYAML: pip install kubernetes-validate",
    );
    assert!(
        status.success(),
        "{what}: the YAML does not parse:\n{stderr}"
    );
    let objects: Vec<serde_json::Value> = serde_json::from_str(&json).expect("a JSON list");
    assert!(!objects.is_empty(), "{what}: no object");
    for object in &objects {
        for field in ["apiVersion", "kind"] {
            assert!(
                object[field].as_str().is_some_and(|v| !v.is_empty()),
                "{what}: an object without {field}: {object}"
            );
        }
        assert!(
            object["metadata"]["name"]
                .as_str()
                .is_some_and(|v| !v.is_empty()),
            "{what}: an object without a name: {object}"
        );
    }
    objects
}

/// A kustomization as `kubectl kustomize` renders it (Debian's kubectl 1.20 with kustomize v2,
/// or a newer one: the kustomizations are written for both).
struct Rendered {
    dir: &'static str,
    yaml: String,
    objects: Vec<serde_json::Value>,
}

impl Rendered {
    fn of(dir: &'static str) -> Rendered {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/kubernetes")
            .join(dir);
        let path = path.to_str().expect("a UTF-8 path");
        let (status, yaml, stderr) = tool(
            "kubectl",
            &["kustomize", path],
            "",
            "Debian package `kubernetes-client`",
        );
        assert!(status.success(), "kubectl kustomize {dir}:\n{stderr}");
        let objects = yaml_objects(&yaml, dir);
        Rendered { dir, yaml, objects }
    }

    fn all(&self, kind: &str) -> Vec<&serde_json::Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn one(&self, kind: &str) -> &serde_json::Value {
        let found = self.all(kind);
        assert_eq!(found.len(), 1, "{}: one {kind} expected", self.dir);
        found[0]
    }

    fn named(&self, kind: &str, name: &str) -> Option<&serde_json::Value> {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
    }

    /// The Deployment's pod spec and its proxy container.
    fn pod(&self) -> (&serde_json::Value, &serde_json::Value) {
        let pod = &self.one("Deployment")["spec"]["template"]["spec"];
        let container = pod["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == PROXY_CONTAINER)
            .unwrap_or_else(|| panic!("{}: no container {PROXY_CONTAINER}", self.dir));
        (pod, container)
    }

    /// The proxy's configuration: `config.toml` of the one ConfigMap.
    fn config_toml(&self) -> &str {
        self.one("ConfigMap")["data"]["config.toml"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: the ConfigMap holds no config.toml", self.dir))
    }
}

/// `kubernetes-validate --strict` (no field the schema does not know) on a YAML stream: every
/// object but the custom resources must pass against its schema.
fn validate_schemas(yaml: &str, objects: &[serde_json::Value], what: &str) {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let file = dir.path().join("objects.yaml");
    std::fs::write(&file, yaml).expect("write the objects");
    let file = file.to_str().expect("a UTF-8 path");
    let (status, stdout, stderr) = tool(
        "python3",
        &[
            "-m",
            "kubernetes_validate",
            "--strict",
            "-k",
            KUBERNETES_VERSION,
            file,
        ],
        "",
        "PyPI package kubernetes-validate",
    );
    let report = format!("{stdout}{stderr}");
    assert!(
        status.success(),
        "{what} against Kubernetes {KUBERNETES_VERSION}:\n{report}"
    );
    // A kind without a schema (a misspelt one too) is only warned about, and passes.
    for line in report
        .lines()
        .filter(|l| l.contains("Couldn't find schema"))
    {
        assert!(
            CUSTOM_KINDS
                .iter()
                .any(|kind| line.contains(&format!("for kind {kind} "))),
            "{what}: {line}"
        );
    }
    let custom = objects
        .iter()
        .filter(|o| CUSTOM_KINDS.iter().any(|kind| o["kind"] == *kind))
        .count();
    assert_eq!(
        report.matches("passed for resource").count(),
        objects.len() - custom,
        "{what}: not every object was validated:\n{report}"
    );
}

/// The parts of the proxy's configuration the manifests and the unit must agree with.
#[derive(Deserialize)]
struct ProxyConfig {
    listen: ListenSection,
    admin: AdminSection,
    #[serde(default)]
    clients: Vec<ClientSection>,
}

#[derive(Deserialize)]
struct ListenSection {
    address: String,
    public_url: Option<String>,
    shutdown_grace_period: Option<String>,
}

#[derive(Deserialize)]
struct AdminSection {
    address: String,
}

#[derive(Deserialize)]
struct ClientSection {
    name: String,
}

impl ProxyConfig {
    fn parse(toml: &str, what: &str) -> ProxyConfig {
        Figment::from(Toml::string(toml))
            .extract()
            .unwrap_or_else(|e| panic!("{what}: config.toml: {e}"))
    }

    fn listen(&self) -> std::net::SocketAddr {
        self.listen
            .address
            .parse()
            .expect("listen.address is an address with a port")
    }

    fn admin(&self) -> std::net::SocketAddr {
        self.admin
            .address
            .parse()
            .expect("admin.address is an address with a port")
    }

    /// `listen.shutdown_grace_period`, 25 s when unset (the proxy's default).
    fn shutdown_grace_seconds(&self) -> u64 {
        self.listen
            .shutdown_grace_period
            .as_deref()
            .map_or(25, |text| {
                humantime::parse_duration(text)
                    .expect("a duration")
                    .as_secs()
            })
    }
}

/// A port as a Service, a probe or a monitor names it: a number, or the name of a container port.
fn port_number(container: &serde_json::Value, port: &serde_json::Value, what: &str) -> u16 {
    let number = match port.as_str() {
        None => port.as_u64(),
        Some(name) => container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{what}: the container has no port named {name}"))
            ["containerPort"]
            .as_u64(),
    };
    number
        .and_then(|n| u16::try_from(n).ok())
        .unwrap_or_else(|| panic!("{what}: {port} is not a port"))
}

/// Every label of `labels` (a non-empty map) is on the pods.
fn selects_labels(labels: &serde_json::Value, pod_labels: &serde_json::Value, what: &str) {
    let labels = labels
        .as_object()
        .unwrap_or_else(|| panic!("{what}: no labels to select by"));
    assert!(
        !labels.is_empty(),
        "{what}: an empty selector selects every pod"
    );
    for (key, value) in labels {
        assert_eq!(
            &pod_labels[key.as_str()],
            value,
            "{what}: selects {key}={value}; the pods have {pod_labels}"
        );
    }
}

/// A label selector (`matchLabels` only, which this can check) that selects the pods.
fn selects(selector: &serde_json::Value, pod_labels: &serde_json::Value, what: &str) {
    assert!(
        selector["matchExpressions"].is_null(),
        "{what}: matchExpressions are not checked here; use matchLabels"
    );
    selects_labels(&selector["matchLabels"], pod_labels, what);
}

/// A custom resource's fields are among those known (no schema checks them).
fn known_fields(object: &serde_json::Value, known: &[&str], what: &str) {
    let fields = object
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not an object"));
    for field in fields.keys() {
        assert!(
            known.contains(&field.as_str()),
            "{what}: unknown field {field}"
        );
    }
}

/// A NetworkPolicy rule's (protocol, port) pairs; ports must be numbers, as the configuration
/// writes them.
fn rule_ports(rule: &serde_json::Value, what: &str) -> Vec<(String, u16)> {
    rule["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let port = p["port"]
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .unwrap_or_else(|| panic!("{what}: a numbered port: {p}"));
            (p["protocol"].as_str().unwrap_or("TCP").to_string(), port)
        })
        .collect()
}

/// A ConfigMap's or Secret's value for `key` (`data`, or a Secret's `stringData`).
fn object_data(object: &serde_json::Value, key: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;

    if let Some(text) = object["stringData"][key].as_str() {
        return Some(text.as_bytes().to_vec());
    }
    let data = object["data"][key].as_str()?;
    if object["kind"] == "Secret" {
        base64::engine::general_purpose::STANDARD.decode(data).ok()
    } else {
        Some(data.as_bytes().to_vec())
    }
}

/// Writes the file the container sees at `path`, from the ConfigMap or Secret behind the volume
/// mounted there, to the same path under `root`, and returns where; fails when nothing in the
/// manifests provides it.
fn mounted_file(rendered: &Rendered, path: &str, root: &Path) -> String {
    let what = format!("{}: {path}", rendered.dir);
    let (pod, container) = rendered.pod();
    let mount = container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| {
            m["mountPath"]
                .as_str()
                .is_some_and(|dir| path.starts_with(&format!("{}/", dir.trim_end_matches('/'))))
        })
        .unwrap_or_else(|| panic!("{what}: no volume mount provides it"));
    let mount_path = mount["mountPath"]
        .as_str()
        .expect("mountPath")
        .trim_end_matches('/');
    let relative = &path[mount_path.len() + 1..];
    let volume = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("{what}: mount {} names no volume", mount["name"]));
    let (kind, source, name) = if volume["configMap"].is_object() {
        (
            "ConfigMap",
            &volume["configMap"],
            &volume["configMap"]["name"],
        )
    } else if volume["secret"].is_object() {
        ("Secret", &volume["secret"], &volume["secret"]["secretName"])
    } else {
        panic!(
            "{what}: volume {} is no ConfigMap or Secret",
            volume["name"]
        )
    };
    let name = name
        .as_str()
        .unwrap_or_else(|| panic!("{what}: the volume names no {kind}"));
    // With `items`, only the keys listed appear, at their paths; without, every key by its name.
    let key = match source["items"].as_array() {
        Some(items) => items
            .iter()
            .find(|item| item["path"] == relative)
            .and_then(|item| item["key"].as_str())
            .unwrap_or_else(|| {
                panic!(
                    "{what}: volume {} has no item at {relative}",
                    volume["name"]
                )
            }),
        None => relative,
    };
    let object = rendered
        .named(kind, name)
        .unwrap_or_else(|| panic!("{what}: no {kind} {name} in the manifests"));
    let content =
        object_data(object, key).unwrap_or_else(|| panic!("{what}: {kind} {name} has no {key}"));
    let file = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(file.parent().expect("a parent directory"))
        .expect("create the mount's directory");
    std::fs::write(&file, content).expect("write the mounted file");
    file.to_str().expect("a UTF-8 path").to_string()
}

/// `check --offline` as the Deployment starts the proxy: its container's arguments with
/// `check --offline` in place of `run`, its environment plus `injected` (what a platform adds),
/// and every path in that environment written from the ConfigMap or Secret mounted there (the
/// configuration file itself comes through `ADO_AUTH_PROXY_CONFIG`).
fn check_offline_as_deployed(
    rendered: &Rendered,
    injected: &[(&str, String)],
) -> std::process::Output {
    let (_, container) = rendered.pod();
    let root = tempfile::TempDir::new().expect("temp dir");
    let mut args = Vec::new();
    for arg in container["args"].as_array().into_iter().flatten() {
        match arg.as_str().expect("string arguments") {
            "run" => args.extend(["check", "--offline"]),
            other => args.push(other),
        }
    }
    assert!(
        args.contains(&"--offline"),
        "{}: the container's args name no `run`: {args:?}",
        rendered.dir
    );
    let mut command = std::process::Command::new(PROXY_BIN);
    command.args(args).env_clear();
    for variable in container["env"].as_array().into_iter().flatten() {
        let name = variable["name"].as_str().expect("an env name");
        let value = variable["value"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: {name} has no literal value", rendered.dir));
        if value.starts_with('/') {
            command.env(name, mounted_file(rendered, value, root.path()));
        } else {
            command.env(name, value);
        }
    }
    for (name, value) in injected {
        command.env(name, value);
    }
    command.output().expect("the proxy runs")
}

#[test]
fn kubernetes_manifests_match_the_kubernetes_schemas() {
    for dir in SHARED_VARIANTS {
        let rendered = Rendered::of(dir);
        validate_schemas(&rendered.yaml, &rendered.objects, dir);
    }
    let sidecar = deploy_file("kubernetes/sidecar.yaml");
    validate_schemas(
        &sidecar,
        &yaml_objects(&sidecar, "sidecar.yaml"),
        "sidecar.yaml",
    );
}

#[test]
fn shared_service_objects_agree_with_each_other_and_the_configuration() {
    for dir in SHARED_VARIANTS {
        shared_service_agrees(&Rendered::of(dir));
    }
}

fn shared_service_agrees(r: &Rendered) {
    let dir = r.dir;
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "PodMonitor",
    ] {
        r.one(kind);
    }

    // Everything in one namespace, which enforces the "restricted" pod security standard.
    let namespace = r.one("Namespace");
    let namespace_name = namespace["metadata"]["name"].as_str().expect("a name");
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted",
        "{dir}"
    );
    for object in &r.objects {
        if object["kind"] != "Namespace" {
            assert_eq!(
                object["metadata"]["namespace"], namespace_name,
                "{dir}: {} {}",
                object["kind"], object["metadata"]["name"]
            );
        }
    }

    let config = ProxyConfig::parse(r.config_toml(), dir);
    let listen = config.listen();
    let admin = config.admin();
    // The Service, the kubelet's probes and Prometheus reach the pod IP, not its loopback.
    assert!(
        listen.ip().is_unspecified(),
        "{dir}: listen.address {listen}"
    );
    assert!(admin.ip().is_unspecified(), "{dir}: admin.address {admin}");

    let deployment = r.one("Deployment");
    let deployment_name = deployment["metadata"]["name"].as_str().expect("a name");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let (pod, container) = r.pod();
    selects(
        &deployment["spec"]["selector"],
        pod_labels,
        &format!("{dir}: Deployment"),
    );
    assert!(
        deployment["spec"]["replicas"].is_null(),
        "{dir}: replicas would undo the autoscaler's count at every apply"
    );
    let account = r.one("ServiceAccount");
    assert_eq!(
        pod["serviceAccountName"], account["metadata"]["name"],
        "{dir}"
    );
    assert_eq!(
        pod["automountServiceAccountToken"], false,
        "{dir}: the proxy never calls the Kubernetes API"
    );

    // Non-root, read-only, no privilege, no capability, the runtime's seccomp profile.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{dir}");
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
        "{dir}"
    );
    let containers = pod["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(pod["initContainers"].as_array().into_iter().flatten());
    for each in containers {
        let what = format!("{dir}: container {}", each["name"]);
        let security = &each["securityContext"];
        assert_eq!(security["allowPrivilegeEscalation"], false, "{what}");
        assert_eq!(security["readOnlyRootFilesystem"], true, "{what}");
        assert_ne!(security["privileged"], true, "{what}");
        assert!(
            security["capabilities"]["drop"]
                .as_array()
                .is_some_and(|dropped| dropped.iter().any(|c| c == "ALL")),
            "{what}: drops every capability"
        );
        assert!(
            security["capabilities"]["add"].is_null(),
            "{what}: adds no capability"
        );
        // The autoscaler's utilization is a share of the CPU request.
        assert!(
            !each["resources"]["requests"]["cpu"].is_null(),
            "{what}: a CPU request"
        );
        assert!(
            !each["resources"]["limits"]["memory"].is_null(),
            "{what}: a memory limit"
        );
    }

    // Ports and probes, against listen.address and admin.address.
    let container_ports: BTreeSet<u16> = container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| port_number(container, &p["containerPort"], dir))
        .collect();
    assert_eq!(
        container_ports,
        BTreeSet::from([listen.port(), admin.port()]),
        "{dir}: container ports against listen.address and admin.address"
    );
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{dir}: {probe}");
        assert_eq!(
            port_number(container, &get["port"], dir),
            admin.port(),
            "{dir}: {probe} on the admin listener"
        );
    }
    // The kubelet's SIGKILL comes after the preStop sleep and the proxy's own drain.
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0);
    let termination = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
    assert!(
        termination > pre_stop + config.shutdown_grace_seconds(),
        "{dir}: terminationGracePeriodSeconds {termination} must exceed the preStop sleep \
         ({pre_stop} s) plus listen.shutdown_grace_period ({} s)",
        config.shutdown_grace_seconds()
    );
    let spread = pod["topologySpreadConstraints"]
        .as_array()
        .expect("topologySpreadConstraints");
    let spread_keys: BTreeSet<&str> = spread
        .iter()
        .filter_map(|c| c["topologyKey"].as_str())
        .collect();
    assert_eq!(
        spread_keys,
        BTreeSet::from(["kubernetes.io/hostname", "topology.kubernetes.io/zone"]),
        "{dir}: replicas spread over nodes and zones"
    );
    for constraint in spread {
        selects(
            &constraint["labelSelector"],
            pod_labels,
            &format!("{dir}: topologySpreadConstraints"),
        );
    }

    // The Service: the proxy port as listen.public_url names it, and the admin port.
    let service = r.one("Service");
    let service_name = service["metadata"]["name"].as_str().expect("a name");
    selects_labels(
        &service["spec"]["selector"],
        pod_labels,
        &format!("{dir}: Service"),
    );
    let service_port = |name: &str| {
        let port = service["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{dir}: the Service has no port named {name}"));
        (
            port_number(container, &port["port"], dir),
            port_number(container, &port["targetPort"], dir),
        )
    };
    assert_eq!(
        service_port("http"),
        (listen.port(), listen.port()),
        "{dir}: the Service's http port"
    );
    assert_eq!(
        service_port("admin").1,
        admin.port(),
        "{dir}: the Service's admin port"
    );
    assert_eq!(
        config.listen.public_url.as_deref(),
        Some(
            format!(
                "http://{service_name}.{namespace_name}.svc:{}",
                listen.port()
            )
            .as_str()
        ),
        "{dir}: listen.public_url is the Service"
    );

    // The autoscaler scales this Deployment, on CPU, from two replicas; the budget lets a drain
    // evict one replica even at that minimum.
    let autoscaler = r.one("HorizontalPodAutoscaler");
    assert_eq!(autoscaler["apiVersion"], "autoscaling/v2", "{dir}");
    let target = &autoscaler["spec"]["scaleTargetRef"];
    assert_eq!(
        (
            target["apiVersion"].as_str(),
            target["kind"].as_str(),
            target["name"].as_str()
        ),
        (Some("apps/v1"), Some("Deployment"), Some(deployment_name)),
        "{dir}: the autoscaler's target"
    );
    let min_replicas = autoscaler["spec"]["minReplicas"].as_u64().unwrap_or(1);
    assert!(
        min_replicas >= 2,
        "{dir}: one replica leaves no proxy during a node drain"
    );
    assert!(
        autoscaler["spec"]["maxReplicas"]
            .as_u64()
            .is_some_and(|max| max > min_replicas),
        "{dir}: maxReplicas"
    );
    assert!(
        autoscaler["spec"]["metrics"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["type"] == "Resource" && m["resource"]["name"] == "cpu"),
        "{dir}: the autoscaler scales on CPU"
    );
    let budget = r.one("PodDisruptionBudget");
    assert_eq!(budget["apiVersion"], "policy/v1", "{dir}");
    selects(
        &budget["spec"]["selector"],
        pod_labels,
        &format!("{dir}: PodDisruptionBudget"),
    );
    let evictable = match (
        budget["spec"]["maxUnavailable"].as_u64(),
        budget["spec"]["minAvailable"].as_u64(),
    ) {
        (Some(max_unavailable), None) => max_unavailable,
        (None, Some(min_available)) => min_replicas.saturating_sub(min_available),
        _ => panic!("{dir}: the budget is one number, maxUnavailable or minAvailable"),
    };
    assert!(
        evictable >= 1,
        "{dir}: at minReplicas a drain could never evict a replica"
    );

    // The PodMonitor: a custom resource, so no schema checks it; its fields, by hand.
    let monitor = r.one("PodMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1", "{dir}");
    known_fields(
        &monitor["spec"],
        &[
            "selector",
            "podMetricsEndpoints",
            "namespaceSelector",
            "jobLabel",
            "podTargetLabels",
            "sampleLimit",
        ],
        &format!("{dir}: PodMonitor spec"),
    );
    selects(
        &monitor["spec"]["selector"],
        pod_labels,
        &format!("{dir}: PodMonitor"),
    );
    let endpoints = monitor["spec"]["podMetricsEndpoints"]
        .as_array()
        .expect("podMetricsEndpoints");
    assert_eq!(endpoints.len(), 1, "{dir}: one scrape per pod");
    for endpoint in endpoints {
        known_fields(
            endpoint,
            &[
                "port",
                "path",
                "interval",
                "scrapeTimeout",
                "scheme",
                "honorLabels",
                "relabelings",
                "metricRelabelings",
            ],
            &format!("{dir}: podMetricsEndpoints"),
        );
        assert!(
            endpoint["port"].is_string(),
            "{dir}: a PodMonitor names its port"
        );
        assert_eq!(
            port_number(container, &endpoint["port"], dir),
            admin.port(),
            "{dir}: the PodMonitor scrapes the admin listener"
        );
        assert_eq!(endpoint["path"], "/metrics", "{dir}");
    }

    // The NetworkPolicy: the proxy port from labelled clients, the admin port from monitoring;
    // out only to DNS, and to HTTPS beyond the cluster's and private networks.
    let policy = &r.one("NetworkPolicy")["spec"];
    selects(
        &policy["podSelector"],
        pod_labels,
        &format!("{dir}: NetworkPolicy"),
    );
    assert_eq!(
        policy["policyTypes"],
        serde_json::json!(["Ingress", "Egress"]),
        "{dir}: the policy fences both directions"
    );
    let mut fenced = BTreeSet::new();
    for rule in policy["ingress"].as_array().expect("ingress rules") {
        let ports = rule_ports(rule, dir);
        assert_eq!(ports.len(), 1, "{dir}: one port per ingress rule: {rule}");
        let (protocol, port) = &ports[0];
        assert_eq!(protocol, "TCP", "{dir}: {rule}");
        let from = rule["from"]
            .as_array()
            .unwrap_or_else(|| panic!("{dir}: a rule without `from` admits anyone: {rule}"));
        assert_eq!(from.len(), 1, "{dir}: {rule}");
        if *port == listen.port() {
            assert_eq!(
                from[0],
                serde_json::json!({
                    "namespaceSelector": {},
                    "podSelector": {"matchLabels": {"ado-auth-proxy/client": "true"}},
                }),
                "{dir}: the proxy port admits pods labelled as clients, in any namespace"
            );
        } else if *port == admin.port() {
            assert_eq!(
                from[0],
                serde_json::json!({
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                }),
                "{dir}: the admin port admits the monitoring namespace"
            );
        } else {
            panic!("{dir}: ingress to port {port}, where the proxy does not listen");
        }
        fenced.insert(*port);
    }
    assert_eq!(
        fenced,
        BTreeSet::from([listen.port(), admin.port()]),
        "{dir}"
    );
    let mut egress = BTreeSet::new();
    for rule in policy["egress"].as_array().expect("egress rules") {
        let ports = rule_ports(rule, dir);
        assert!(
            !ports.is_empty(),
            "{dir}: an egress rule without ports opens every port: {rule}"
        );
        if ports.iter().any(|(_, port)| *port != 53) {
            let to = rule["to"]
                .as_array()
                .unwrap_or_else(|| panic!("{dir}: HTTPS to anywhere, the cluster too: {rule}"));
            for peer in to {
                let block = &peer["ipBlock"];
                let cidr = block["cidr"].as_str().unwrap_or("");
                let private: &[&str] = match cidr {
                    "0.0.0.0/0" => &[
                        "10.0.0.0/8",
                        "172.16.0.0/12",
                        "192.168.0.0/16",
                        "169.254.0.0/16",
                    ],
                    "::/0" => &["fc00::/7", "fe80::/10"],
                    _ => panic!("{dir}: HTTPS to the Internet as a whole only: {peer}"),
                };
                for range in private {
                    assert!(
                        block["except"]
                            .as_array()
                            .is_some_and(|except| except.iter().any(|e| e == *range)),
                        "{dir}: HTTPS to {cidr} must leave out {range}"
                    );
                }
            }
        }
        egress.extend(ports);
    }
    assert_eq!(
        egress,
        BTreeSet::from([
            ("TCP".to_string(), 53),
            ("UDP".to_string(), 53),
            ("TCP".to_string(), 443)
        ]),
        "{dir}: egress only to DNS and HTTPS"
    );

    // Every client of the configuration has its key's Secret.
    assert!(!config.clients.is_empty(), "{dir}: the example has clients");
    for client in &config.clients {
        let secret = format!("ado-auth-proxy-key-{}", client.name);
        let object = r
            .named("Secret", &secret)
            .unwrap_or_else(|| panic!("{dir}: no Secret {secret} for client {}", client.name));
        assert!(
            object_data(object, "key").is_some(),
            "{dir}: Secret {secret} has no `key`"
        );
    }
}

#[test]
fn the_client_secret_variant_loads_with_its_mounted_secret() {
    let rendered = Rendered::of("shared/client-secret");
    let (_, container) = rendered.pod();
    let secret_file = container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == "ADO_AUTH_PROXY_IDENTITIES__DEFAULT__CREDENTIAL__SECRET_FILE")
        .and_then(|v| v["value"].as_str())
        .expect("the secret file in the container's environment");
    // check_offline_as_deployed fails unless a mounted Secret provides this file.
    assert!(secret_file.starts_with('/'), "{secret_file}");
    let output = check_offline_as_deployed(&rendered, &[]);
    assert_valid(&output);
}

#[test]
fn the_workload_identity_variant_loads_with_what_the_aks_webhook_injects() {
    let rendered = Rendered::of("shared/workload-identity");
    let account = rendered.one("ServiceAccount");
    let client_id = account["metadata"]["annotations"]["azure.workload.identity/client-id"]
        .as_str()
        .expect("the service account names the app registration");
    let template = &rendered.one("Deployment")["spec"]["template"];
    // The webhook mutates only pods with this label, whose service account is annotated.
    assert_eq!(
        template["metadata"]["labels"]["azure.workload.identity/use"],
        "true"
    );
    assert_eq!(
        template["spec"]["serviceAccountName"],
        account["metadata"]["name"]
    );
    // No client secret anywhere.
    assert!(
        rendered
            .named("Secret", "ado-auth-proxy-credentials")
            .is_none(),
        "a client secret in the workload-identity variant"
    );
    assert!(
        template["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|v| v["secret"].is_null()),
        "a Secret mounted in the workload-identity variant"
    );
    // Without the webhook's variables the proxy has no identity: they are what gives it one.
    let bare = check_offline_as_deployed(&rendered, &[]);
    let stderr = String::from_utf8_lossy(&bare.stderr);
    assert_eq!(bare.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("identities.default.credential"), "{stderr}");
    // What the webhook injects: the projected token's path and the identity's ids.
    let token = tempfile::NamedTempFile::new().expect("a token file");
    let injected = [
        ("AZURE_CLIENT_ID", client_id.to_string()),
        (
            "AZURE_TENANT_ID",
            "00000000-0000-0000-0000-000000000000".to_string(),
        ),
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            token.path().to_str().expect("a UTF-8 path").to_string(),
        ),
        (
            "AZURE_AUTHORITY_HOST",
            "https://login.microsoftonline.com/".to_string(),
        ),
    ];
    let output = check_offline_as_deployed(&rendered, &injected);
    assert_valid(&output);
}

/// The unit's `Key=value` settings, in order (a key may repeat).
fn unit_settings(unit: &str) -> Vec<(&str, &str)> {
    unit.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with(['#', ';', '[']))
        .filter_map(|line| line.split_once('='))
        .collect()
}

fn unit_values<'a>(settings: &[(&'a str, &'a str)], key: &str) -> Vec<&'a str> {
    settings
        .iter()
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| *v)
        .collect()
}

fn unit_value<'a>(settings: &[(&'a str, &'a str)], key: &str) -> &'a str {
    let values = unit_values(settings, key);
    assert_eq!(values.len(), 1, "{key}= once in the unit: {values:?}");
    values[0]
}

#[test]
fn the_systemd_unit_is_hardened_and_its_configuration_loads_with_its_credential() {
    let unit = deploy_file("systemd/ado-auth-proxy.service");
    let settings = unit_settings(&unit);
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("RestrictNamespaces", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("LockPersonality", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ExecReload", "kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
    ] {
        assert_eq!(unit_value(&settings, key), value, "{key}=");
    }
    assert!(unit_values(&settings, "SystemCallFilter").contains(&"@system-service"));

    // The secret: a credential systemd loads, named to the proxy through %d.
    let (credential, source) = unit_value(&settings, "LoadCredential")
        .split_once(':')
        .expect("LoadCredential=ID:PATH");
    assert!(Path::new(source).is_absolute(), "{source}");
    let environment: Vec<(&str, &str)> = unit_values(&settings, "Environment")
        .into_iter()
        .map(|line| line.split_once('=').expect("Environment=NAME=value"))
        .collect();
    assert!(
        environment.contains(&(
            "ADO_AUTH_PROXY_IDENTITIES__DEFAULT__CREDENTIAL__SECRET_FILE",
            format!("%d/{credential}").as_str()
        )),
        "the secret file is the loaded credential: {environment:?}"
    );

    // systemd's SIGKILL comes after the proxy's own drain.
    let config_toml = deploy_file("systemd/config.toml");
    let config = ProxyConfig::parse(&config_toml, "systemd/config.toml");
    let stop = humantime::parse_duration(unit_value(&settings, "TimeoutStopSec"))
        .expect("a duration")
        .as_secs();
    assert!(
        stop > config.shutdown_grace_seconds(),
        "TimeoutStopSec={stop}s, listen.shutdown_grace_period {} s",
        config.shutdown_grace_seconds()
    );

    // ExecStart's command line with `check --offline` for `run`, the configuration it names, and
    // the unit's environment with %d a credentials directory holding the credential.
    let exec_start: Vec<&str> = unit_value(&settings, "ExecStart")
        .split_whitespace()
        .collect();
    assert_eq!(exec_start[0], "/usr/local/bin/ado-auth-proxy");
    let credentials = tempfile::TempDir::new().expect("temp dir");
    std::fs::write(credentials.path().join(credential), "a secret\n").expect("write");
    let config_file = credentials.path().join("config.toml");
    std::fs::write(&config_file, config_toml.as_bytes()).expect("write");
    let config_file = config_file.to_str().expect("a UTF-8 path");
    let mut args = Vec::new();
    let mut named_config = false;
    for word in &exec_start[1..] {
        match *word {
            "run" => args.extend(["check", "--offline"]),
            "/etc/ado-auth-proxy/config.toml" => {
                named_config = true;
                args.push(config_file);
            }
            other => args.push(other),
        }
    }
    assert!(
        named_config && args.contains(&"--offline"),
        "ExecStart=/usr/local/bin/ado-auth-proxy run --config /etc/ado-auth-proxy/config.toml"
    );
    let directory = credentials.path().to_str().expect("a UTF-8 path");
    let output = std::process::Command::new(PROXY_BIN)
        .args(args)
        .env_clear()
        .envs(
            environment
                .iter()
                .map(|(name, value)| (*name, value.replace("%d", directory))),
        )
        .output()
        .expect("the proxy runs");
    assert_valid(&output);
}

/// `systemd-analyze verify` and `security` on the unit, where systemd is installed (`.ci/run`
/// installs it).
#[test]
fn systemd_analyze_verifies_the_unit_and_its_exposure_stays_low() {
    if std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-analyze is not installed (Debian package `systemd`)");
        return;
    }
    let unit = deploy_file("systemd/ado-auth-proxy.service");
    // verify wants ExecStart's binary to exist: the one just built stands in for the installed one.
    let installed = "ExecStart=/usr/local/bin/ado-auth-proxy ";
    assert!(unit.contains(installed), "{installed}");
    let dir = tempfile::TempDir::new().expect("temp dir");
    let file = dir.path().join("ado-auth-proxy.service");
    std::fs::write(
        &file,
        unit.replace(installed, &format!("ExecStart={PROXY_BIN} ")),
    )
    .expect("write the unit");
    let file = file.to_str().expect("a UTF-8 path");
    let (status, stdout, stderr) = tool(
        "systemd-analyze",
        &["verify", file],
        "",
        "Debian package `systemd`",
    );
    // An unknown key or a value it cannot parse is only printed, with exit status 0.
    assert!(
        status.success() && stdout.trim().is_empty() && stderr.trim().is_empty(),
        "systemd-analyze verify:\n{stdout}{stderr}"
    );
    // The score the README records: 1.1 on systemd 252; --threshold counts in tenths.
    let (status, stdout, stderr) = tool(
        "systemd-analyze",
        &["security", "--offline=yes", "--threshold=11", file],
        "",
        "Debian package `systemd`",
    );
    assert!(
        status.success(),
        "the unit's exposure rose above 1.1:\n{stdout}{stderr}"
    );
    assert!(
        stdout.contains("Overall exposure level for ado-auth-proxy.service"),
        "{stdout}{stderr}"
    );
}

/// `check --offline` passed and said so.
fn assert_valid(output: &std::process::Output) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("configuration valid"), "{stdout}");
}
