//! The suggestion end to end: audit lines in, TOML out, loaded by the real configuration loader,
//! and judged by the real allowlist.

use super::against::{allowlist_of, judge, served};
use super::*;
use crate::config::Config;

const IDENTITY: &str = r#"
[identities.default]
tenant_id = "00000000-0000-0000-0000-000000000000"
client_id = "11111111-1111-1111-1111-111111111111"
credential = { kind = "client_secret", secret = "s3cr3t-value" }
"#;

const GUID_A: &str = "8a3c0f9e-51d2-4e2b-9c1e-2f6d2a1b7c3d";
const GUID_B: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
const COMMIT: &str = "3f786850e387550fdab836ed7e6dc881de23001b";
const OID: &str = "4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393";

fn text(client: &str, method: &str, path: &str, status: u16, extra: &str) -> String {
    format!(
        "2026-12-06T10:00:00.000001Z  INFO audit: request_id=00000000deadbeef client={client} \
         peer=10.0.0.7:50000 rule=\"GET /x\" method={method} path={path} status={status} \
         request_bytes=0 response_bytes=344 duration_us=812 upstream_us=640 outcome=complete{extra}"
    )
}

fn json(client: &str, method: &str, path: &str, status: u16, extra: &str) -> String {
    format!(
        r#"{{"timestamp":"2026-12-06T10:00:00.000001Z","level":"INFO","target":"audit","request_id":"1","client":"{client}","peer":"10.0.0.7:1","method":"{method}","path":"{path}","status":{status},"request_bytes":0,"response_bytes":0,"duration_us":1,"outcome":"complete"{extra}}}"#
    )
}

/// A day of two clients' traffic, in both formats, among other log lines.
fn sample() -> Vec<String> {
    let repo = "/contoso/web/_git/web";
    let pkgs = "/_host/pkgs.dev.azure.com/contoso";
    let mut lines = vec![
        "2026-12-06T09:59:59.000000Z  INFO ado_auth_proxy: ado-auth-proxy listening proxy=0.0.0.0:8080".to_string(),
        text("ci", "GET", &format!("{repo}/info/refs"), 200, ""),
        text("ci", "POST", &format!("{repo}/git-upload-pack"), 200, ""),
        json("ci", "POST", &format!("{repo}/git-receive-pack"), 200, ""),
        json("ci", "POST", "/contoso/web/_git/web.git/info/lfs/objects/batch", 200, ""),
        text("ci", "GET", &format!("/contoso/web/_git/web.git/info/lfs/objects/{OID}"), 200, ""),
        text("ci", "GET", "/contoso/_apis/projects", 200, ""),
        text("ci", "GET", "/_host/dev.azure.com/contoso/_apis/connectionData", 200, ""),
        json("ci", "GET", "/contoso/web/_apis/build/builds/12345", 200, ""),
        json("ci", "GET", "/contoso/web/_apis/build/builds/12346/timeline", 200, ""),
        text("ci", "GET", &format!("/contoso/web/_apis/git/repositories/{GUID_A}/commits/{COMMIT}"), 200, ""),
        text("ci", "GET", &format!("{pkgs}/_packaging/internal/pypi/simple/requests/"), 200, ""),
        json("ci", "GET", &format!("{pkgs}/{GUID_A}/_packaging/{GUID_B}/nuget/v3/flat2/x/1.0.0/x.1.0.0.nupkg"), 302, ""),
        json("ci", "PUT", &format!("{pkgs}/_packaging/internal/npm/registry/left-pad"), 201, ""),
        text("ci", "GET", "/_host/vssps.dev.azure.com/contoso/_apis/profile/profiles/me", 200, ""),
        // Forwarded in learn mode, refused by the proxy: evidence both.
        text("ci", "GET", "/contoso/web/_apis/wit/workitems/42", 200, " learn=would_deny"),
        json("ci", "PATCH", "/contoso/web/_apis/wit/workitems/43", 200, r#","learn":"would_deny""#),
        text("ci", "DELETE", "/contoso/web/_apis/build/builds/7", 403, "").replace("rule=\"GET /x\" ", ""),
        // Never authenticated, malformed: no evidence.
        text("-", "GET", "/fabrikam/_apis/projects", 401, ""),
        text("ci", "GET", "/fabrikam/_apis/projects", 401, ""),
        text("ci", "GET", "/fabrikam/web/_apis/x", 400, ""),
        r#"{"timestamp":"2026-12-06T10:00:01Z","level":"WARN","target":"ado_auth_proxy::token","message":"refresh failed"}"#.to_string(),
    ];
    for area in ["workitems/1", "workitems/2", "wiql", "fields", "queries"] {
        lines.push(json(
            "reader",
            "GET",
            &format!("/contoso/web/_apis/wit/{area}"),
            200,
            "",
        ));
    }
    lines.push(text(
        "reader",
        "HEAD",
        "/contoso/web/_apis/wit/fields",
        200,
        "",
    ));
    lines
}

fn evidence_of(lines: &[String]) -> Evidence {
    Evidence::read(lines.join("\n").as_bytes()).expect("read from memory")
}

/// The suggestion made a full configuration: each client gets a key hash of its own.
fn wrapped(suggestion: &str) -> String {
    let mut config = IDENTITY.to_string();
    for (i, line) in suggestion.lines().enumerate() {
        config.push_str(line);
        config.push('\n');
        if line.starts_with("name = ") {
            config.push_str(&format!("key_sha256 = \"{i:064x}\"\n"));
        }
    }
    config
}

#[test]
fn suggest_round_trips_through_the_config_loader_and_the_allowlist() {
    let lines = sample();
    let evidence = evidence_of(&lines);
    let suggestion = render(&evidence, DEFAULT_HOST);
    let config =
        Config::from_toml(&wrapped(&suggestion)).unwrap_or_else(|e| panic!("{e}\n{suggestion}"));
    let served = served(&config);
    let mut judged = 0;
    for line in &lines {
        let Some(call) = parse_line(line) else {
            continue;
        };
        if call.client == "-" || NOT_EVIDENCE.contains(&call.status) {
            continue;
        }
        let allow = allowlist_of(&config, &call.client).expect("a suggested client");
        assert_eq!(
            judge(&served, allow, &call.method, &call.path),
            Ok(()),
            "{} {} of {}\n{suggestion}",
            call.method,
            call.path,
            call.client
        );
        judged += 1;
    }
    assert_eq!(judged, 23);
    let ci = allowlist_of(&config, "ci").expect("ci");
    for (method, path) in [
        ("GET", "/contoso/other/_apis/build/builds/1"),
        ("GET", "/fabrikam/_apis/projects"),
        ("POST", "/contoso/web/_git/other/git-receive-pack"),
        ("GET", "/contoso/web/_git/other/info/refs"),
        (
            "GET",
            "/_host/pkgs.dev.azure.com/contoso/_packaging/other-feed/pypi/simple/",
        ),
        ("DELETE", "/contoso/_apis/projects"),
        ("GET", "/contoso/_apis/projects/x"),
        ("GET", "/contoso/web/_apis/release/releases"),
    ] {
        assert!(
            judge(&served, ci, method, path).is_err(),
            "{method} {path}\n{suggestion}"
        );
    }
    let reader = allowlist_of(&config, "reader").expect("reader");
    assert!(
        judge(
            &served,
            reader,
            "GET",
            "/contoso/web/_apis/wit/anything/else"
        )
        .is_ok()
    );
    assert!(judge(&served, reader, "POST", "/contoso/web/_apis/wit/wiql").is_err());
    assert!(
        allowlist_of(&config, "-").is_none(),
        "no unauthenticated client"
    );
}

#[test]
fn suggest_prints_generalized_rules_with_their_evidence_as_comments() {
    let suggestion = render(&evidence_of(&sample()), DEFAULT_HOST);
    let rules: Vec<&str> = suggestion
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .collect();
    for expected in [
        r#"{ methods = ["GET", "POST"], path = "/contoso/web/_git/web/**" },"#,
        r#"{ methods = ["GET", "POST"], path = "/contoso/web/_git/web.git/**" },"#,
        r#"{ methods = ["GET"], path = "/contoso/_apis/connectionData" },"#,
        r#"{ methods = ["GET", "DELETE"], path = "/contoso/web/_apis/build/builds/*" },"#,
        r#"{ methods = ["GET"], path = "/contoso/web/_apis/build/builds/*/timeline" },"#,
        r#"{ methods = ["GET", "PATCH"], path = "/contoso/web/_apis/wit/workitems/*" },"#,
        r#"{ methods = ["GET"], path = "/contoso/web/_apis/git/repositories/*/commits/*" },"#,
        r#"{ host = "pkgs.dev.azure.com", methods = ["GET", "PUT"], path = "/contoso/_packaging/internal/**" },"#,
        r#"{ host = "pkgs.dev.azure.com", methods = ["GET"], path = "/contoso/*/_packaging/**" },"#,
        r#"{ host = "vssps.dev.azure.com", methods = ["GET"], path = "/contoso/_apis/profile/profiles/me" },"#,
        r#"{ methods = ["GET"], path = "/contoso/web/_apis/wit/**" },"#,
        r#"{ methods = ["HEAD"], path = "/contoso/web/_apis/wit/fields" },"#,
    ] {
        assert!(
            rules.iter().any(|r| r.trim() == expected),
            "missing {expected}\n{suggestion}"
        );
    }
    for id in [GUID_A, GUID_B, COMMIT, OID, "12345", "1.0.0"] {
        assert!(
            !rules.iter().any(|r| r.contains(id)),
            "{id} in a rule\n{suggestion}"
        );
    }
    assert!(!suggestion.contains("name = \"-\""), "{suggestion}");
    assert!(
        suggestion.contains(
            "2 forwarded in learn mode (would_deny), 1 refused by the proxy (403); 2 left out"
        ),
        "{suggestion}"
    );
    assert!(suggestion.contains("key_sha256 and identity: keep your own"));
    assert!(suggestion.contains("# git: pushes (POST git-receive-pack) were seen"));
    // Every line is TOML or a comment; nothing else about the client leaks in between.
    let names: Vec<&str> = suggestion
        .lines()
        .filter(|l| l.starts_with("name = "))
        .collect();
    assert_eq!(names, ["name = \"ci\"", "name = \"reader\""]);
}

#[test]
fn suggest_output_is_the_same_whatever_the_order_of_the_log() {
    let mut lines = sample();
    let forward = render(&evidence_of(&lines), DEFAULT_HOST);
    lines.reverse();
    assert_eq!(render(&evidence_of(&lines), DEFAULT_HOST), forward);
    assert!(render(&Evidence::default(), DEFAULT_HOST).contains("nothing to suggest"));
}

#[test]
fn suggest_against_names_what_the_current_rules_refuse() {
    let config = Config::from_toml(&format!(
        "{IDENTITY}\n[[clients]]\nname = \"ci\"\nkey_sha256 = \"{:064x}\"\n\
         allow = [{{ methods = [\"GET\", \"POST\"], path = \"/contoso/web/_git/web/**\" }}]\n",
        1
    ))
    .expect("valid");
    let report = against(&evidence_of(&sample()), &config, "proxy.toml");
    assert!(report.contains("# Against proxy.toml"), "{report}");
    assert!(
        report.contains("#   GET dev.azure.com/contoso/_apis/projects  (1 call)"),
        "{report}"
    );
    assert!(
        report.contains(
            "#   PUT pkgs.dev.azure.com/contoso/_packaging/internal/npm/registry/left-pad  (1 call)"
        ),
        "{report}"
    );
    assert!(
        !report.contains("_git/web/git-receive-pack"),
        "allowed: {report}"
    );
    assert!(
        report.contains(
            "# reader: no such client in this configuration; all 6 calls would be refused."
        ),
        "{report}"
    );
    assert!(
        report.lines().all(|l| l.is_empty() || l.starts_with('#')),
        "{report}"
    );
}

#[test]
fn suggest_folds_a_pattern_into_a_wider_subtree_of_the_same_method() {
    let mut lines = Vec::new();
    for leaf in ["a", "b", "c", "d"] {
        lines.push(text(
            "bot",
            "GET",
            &format!("/contoso/_apis/{GUID_A}/{leaf}"),
            200,
            "",
        ));
        lines.push(text(
            "bot",
            "GET",
            &format!("/contoso/_apis/git/{leaf}"),
            200,
            "",
        ));
    }
    lines.push(text("bot", "POST", "/contoso/_apis/git/a", 200, ""));
    let suggestion = render(&evidence_of(&lines), DEFAULT_HOST);
    let rules: Vec<&str> = suggestion
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('{'))
        .collect();
    assert_eq!(
        rules,
        [
            r#"{ methods = ["GET"], path = "/contoso/_apis/**" },"#,
            r#"{ methods = ["POST"], path = "/contoso/_apis/git/a" },"#,
        ],
        "{suggestion}"
    );
    assert!(suggestion.contains("# 8 calls to 8 paths"), "{suggestion}");
}
