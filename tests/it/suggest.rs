//! `rules suggest` and `keys hash` through the real binary: a tool's existing credential string
//! made its key with `keys hash` is accepted by a real proxy, the proxy's own audit lines (text
//! and JSON) become rules that load as configuration, and `--against` names what a
//! configuration would refuse.

use std::path::Path;
use std::process::{Output, Stdio};

use sha2::Digest as _;
use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

use crate::cli::{Fakes, command, run, terminate, wait_ready};
use crate::harness::{OPEN_ALLOW_ALL, basic};
use crate::support;

const IDENTITY: &str = r#"
[identities.default]
tenant_id = "00000000-0000-0000-0000-000000000000"
client_id = "11111111-1111-1111-1111-111111111111"
credential = { kind = "client_secret", secret = "s3cr3t-value" }
"#;

/// A credential string a legacy tool already sends.
const LEGACY: &str = "legacy-Credential-7Qx2-w9Zt";

async fn with_stdin(mut command: Command, input: &[u8]) -> Output {
    command.stdin(Stdio::piped());
    let mut child = command.spawn().expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin piped");
    stdin.write_all(input).await.expect("write stdin");
    drop(stdin);
    child.wait_with_output().await.expect("runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// A suggestion made a full configuration: each client gets a key hash of its own.
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

#[tokio::test]
async fn keys_hash_prints_the_hash_and_never_the_secret() {
    let expected = hex(&sha2::Sha256::digest(LEGACY.as_bytes()));
    for input in [
        format!("{LEGACY}\n"),
        format!("{LEGACY}\r\n"),
        LEGACY.to_string(),
    ] {
        let output = with_stdin(
            command(&["keys", "hash", "--name", "tool"]),
            input.as_bytes(),
        )
        .await;
        let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
        assert!(output.status.success(), "{stderr}");
        assert!(
            stdout.contains(&format!("key_sha256 = \"{expected}\"")),
            "{stdout}"
        );
        assert!(
            !stdout.contains(LEGACY) && !stderr.contains(LEGACY),
            "the secret was echoed"
        );
        assert!(
            !stdout.contains(&LEGACY[18..]),
            "part of the secret was echoed"
        );
        let config = ado_auth_proxy::config::Config::from_toml(&format!("{IDENTITY}\n{stdout}"))
            .unwrap_or_else(|e| panic!("{e}\n{stdout}"));
        assert_eq!(config.clients[0].name, "tool");
        assert_eq!(config.clients[0].identity, "default");
        match &config.clients[0].proof {
            ado_auth_proxy::config::ClientProof::Key(hash) => assert_eq!(hex(hash), expected),
            other => panic!("a key client: {other:?}"),
        }
    }
    for refused in ["", "\n", "\r\n", "first-line\nsecond-line\n"] {
        let output = with_stdin(command(&["keys", "hash"]), refused.as_bytes()).await;
        assert_eq!(output.status.code(), Some(2), "{refused:?}");
        assert!(output.stdout.is_empty(), "{refused:?}");
        assert!(
            !text(&output.stderr).contains("first-line"),
            "{refused:?} echoed"
        );
    }
    let output = with_stdin(
        command(&["keys", "hash", "--name", "two words"]),
        LEGACY.as_bytes(),
    )
    .await;
    assert_eq!(output.status.code(), Some(2));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lines of another replica's log, appended to the real ones: other hosts, GUIDs, LFS, a feed,
/// learn mode, an unauthenticated request.
const OTHER_REPLICA: &str = concat!(
    "2026-12-06T10:00:00.000001Z  INFO audit: request_id=01 client=tool peer=10.0.0.7:1 ",
    "method=GET path=/_host/pkgs.dev.azure.com/contoso/_packaging/internal/pypi/simple/requests/ ",
    "status=200 request_bytes=0 response_bytes=9 duration_us=8 outcome=complete learn=would_deny\n",
    r#"{"timestamp":"2026-12-06T10:00:00.000002Z","level":"INFO","target":"audit","request_id":"02","client":"tool","peer":"10.0.0.7:1","method":"GET","path":"/contoso/web/_git/web/info/lfs/objects/4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393","status":200,"request_bytes":0,"response_bytes":9,"duration_us":8,"outcome":"complete"}"#,
    "\n",
    r#"{"timestamp":"2026-12-06T10:00:00.000003Z","level":"INFO","target":"audit","request_id":"03","client":"tool","peer":"10.0.0.7:1","method":"POST","path":"/contoso/web/_git/web/git-receive-pack","status":200,"request_bytes":9,"response_bytes":9,"duration_us":8,"outcome":"complete"}"#,
    "\n",
    "2026-12-06T10:00:00.000004Z  INFO audit: request_id=04 client=- peer=10.0.0.7:1 method=GET ",
    "path=/fabrikam/_apis/projects status=401 request_bytes=0 response_bytes=9 duration_us=8 outcome=complete\n",
);

#[tokio::test]
async fn rules_suggest_turns_a_real_proxys_audit_lines_into_rules_that_load() {
    let fakes = Fakes::start().await;
    let dir = fakes.dir.path().to_path_buf();
    // The legacy credential made the tool's proxy key, allowed everything for now.
    let entry = text(
        &with_stdin(
            command(&["keys", "hash", "--name", "tool"]),
            LEGACY.as_bytes(),
        )
        .await
        .stdout,
    )
    .replace(
        "allow = [",
        "allow = [{ methods = [\"GET\", \"POST\"], path = \"/**\" },",
    );
    let config = fakes.write_config_with("proxy.toml", 0, "", "");
    let toml = std::fs::read_to_string(&config).expect("read");
    let toml = toml.replace(
        OPEN_ALLOW_ALL,
        &format!("[inbound]\nmode = \"keys\"\n{entry}"),
    );
    std::fs::write(&config, toml).expect("write");
    let calls = [
        "/contoso/_apis/projects",
        "/contoso/web/_apis/build/builds/12345",
        "/contoso/web/_apis/git/repositories/8a3c0f9e-51d2-4e2b-9c1e-2f6d2a1b7c3d/commits/3f786850e387550fdab836ed7e6dc881de23001b",
        "/contoso/web/_git/web/info/refs",
    ];
    for format in ["text", "json"] {
        let mut binary = command(&["--config", path_arg(&config), "--log-format", format]);
        binary.env("RUST_LOG", "info");
        let child = run(binary).await;
        wait_ready(child.admin.port()).await;
        let proxy = format!("http://127.0.0.1:{}", child.proxy.port());
        let key = basic("git", LEGACY);
        let reply = support::get(&format!("{proxy}{}", calls[0]), &[("authorization", &key)]).await;
        assert_eq!(reply.status, 200, "the key from `keys hash` is accepted");
        for path in &calls[1..] {
            support::get(&format!("{proxy}{path}"), &[("authorization", &key)]).await;
        }
        let wrong = basic("git", "not-the-credential");
        let reply = support::get(
            &format!("{proxy}/contoso/_apis/projects"),
            &[("authorization", &wrong)],
        )
        .await;
        assert_eq!(reply.status, 401);
        let (_, logs) = terminate(child).await;
        assert!(!logs.contains(LEGACY), "the credential was logged");
        let log = dir.join(format!("proxy-{format}.log"));
        std::fs::write(&log, format!("{logs}{OTHER_REPLICA}")).expect("write log");

        let from_file = command(&["rules", "suggest", path_arg(&log)])
            .output()
            .await
            .expect("runs");
        assert!(from_file.status.success(), "{}", text(&from_file.stderr));
        let suggestion = text(&from_file.stdout);
        let from_stdin = with_stdin(
            command(&["rules", "suggest"]),
            format!("{logs}{OTHER_REPLICA}").as_bytes(),
        )
        .await;
        assert_eq!(text(&from_stdin.stdout), suggestion, "stdin and file alike");
        let dash = with_stdin(
            command(&["rules", "suggest", "-"]),
            format!("{logs}{OTHER_REPLICA}").as_bytes(),
        )
        .await;
        assert_eq!(text(&dash.stdout), suggestion, "`-` is stdin");

        let rules: Vec<&str> = suggestion
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with('{'))
            .collect();
        assert_eq!(
            rules,
            [
                r#"{ methods = ["GET"], path = "/contoso/_apis/projects" },"#,
                r#"{ methods = ["GET"], path = "/contoso/web/_apis/build/builds/*" },"#,
                r#"{ methods = ["GET"], path = "/contoso/web/_apis/git/repositories/*/commits/*" },"#,
                r#"{ methods = ["GET", "POST"], path = "/contoso/web/_git/web/**" },"#,
                r#"{ host = "pkgs.dev.azure.com", methods = ["GET"], path = "/contoso/_packaging/internal/**" },"#,
            ],
            "{format}:\n{suggestion}"
        );
        let names: Vec<&str> = suggestion
            .lines()
            .filter(|l| l.starts_with("name = "))
            .collect();
        assert_eq!(names, ["name = \"tool\""], "{suggestion}");
        assert!(
            suggestion.contains("7 calls as evidence: 1 forwarded in learn mode (would_deny)"),
            "{suggestion}"
        );
        assert!(
            suggestion.contains("# git: pushes (POST git-receive-pack) were seen"),
            "{suggestion}"
        );
        let loaded = ado_auth_proxy::config::Config::from_toml(&wrapped(&suggestion));
        assert!(loaded.is_ok(), "{loaded:?}\n{suggestion}");
        // And the binary's own loader agrees: `check --offline` of the pasted rules.
        let pasted = dir.join("pasted.toml");
        std::fs::write(&pasted, wrapped(&suggestion)).expect("write");
        let check = command(&["--config", path_arg(&pasted), "check", "--offline"])
            .output()
            .await
            .expect("runs");
        assert!(
            check.status.success(),
            "{}{}",
            text(&check.stdout),
            text(&check.stderr)
        );

        // Against the running configuration: its one rule is for the default upstream, so the
        // feed call on pkgs.dev.azure.com is refused; the rest is allowed.
        let against = command(&[
            "rules",
            "suggest",
            path_arg(&log),
            "--against",
            path_arg(&config),
        ])
        .output()
        .await
        .expect("runs");
        assert!(against.status.success(), "{}", text(&against.stderr));
        let report = text(&against.stdout);
        for rule in &rules {
            assert!(
                report.contains(rule),
                "the suggestion, then the report: {report}"
            );
        }
        assert!(
            report.contains("# tool: 1 of 7 calls (1 different) would be refused:"),
            "{report}"
        );
        assert!(
            report.contains(
                "pkgs.dev.azure.com/contoso/_packaging/internal/pypi/simple/requests/  (1 call"
            ),
            "{report}"
        );
        // A narrower configuration refuses the rest, and knows no `reader`.
        let narrow = dir.join("narrow.toml");
        std::fs::write(
            &narrow,
            format!(
                "{IDENTITY}\n[[clients]]\nname = \"tool\"\nkey_sha256 = \"{:064x}\"\n\
                 allow = [{{ methods = [\"GET\"], path = \"/contoso/_apis/**\" }}]\n",
                7
            ),
        )
        .expect("write");
        let against = command(&[
            "rules",
            "suggest",
            path_arg(&log),
            "--against",
            path_arg(&narrow),
        ])
        .output()
        .await
        .expect("runs");
        let report = text(&against.stdout);
        assert!(against.status.success(), "{}", text(&against.stderr));
        assert!(
            report
                .contains("#   POST dev.azure.com/contoso/web/_git/web/git-receive-pack  (1 call)"),
            "{report}"
        );
        assert!(
            report.contains("#   GET dev.azure.com/contoso/web/_apis/build/builds/12345  (1 call)"),
            "{report}"
        );
        assert!(
            !report.contains("#   GET dev.azure.com/contoso/_apis/projects "),
            "{report}"
        );
    }
}

#[tokio::test]
async fn rules_suggest_exits_2_naming_what_it_cannot_read() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let missing = dir.path().join("missing.log");
    let output = command(&["rules", "suggest", path_arg(&missing)])
        .output()
        .await
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("missing.log"),
        "{}",
        text(&output.stderr)
    );
    let log = dir.path().join("proxy.log");
    std::fs::write(&log, OTHER_REPLICA).expect("write");
    let output = command(&[
        "rules",
        "suggest",
        path_arg(&log),
        "--against",
        path_arg(&dir.path().join("nope.toml")),
    ])
    .output()
    .await
    .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("nope.toml"),
        "{}",
        text(&output.stderr)
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, format!("{IDENTITY}\n[[clients]]\nname = \"x\"\nkey_sha256 = \"{:064x}\"\nallow = [{{ methods = [\"GET\"], path = \"/a*\" }}]\n", 1)).expect("write");
    let output = command(&[
        "rules",
        "suggest",
        path_arg(&log),
        "--against",
        path_arg(&bad),
    ])
    .output()
    .await
    .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("clients[0].allow[0]"),
        "{}",
        text(&output.stderr)
    );
    // Nothing but audit lines of no client: still a (trivial) suggestion, exit 0.
    let output = with_stdin(command(&["rules", "suggest"]), b"not a log line\n").await;
    assert!(output.status.success());
    assert!(text(&output.stdout).contains("nothing to suggest"));
}

/// Learn mode end to end through the binary: a learning client's refused call goes through and is
/// logged `learn=would_deny`; `rules suggest` on that log counts it and suggests a rule the
/// configuration then accepts; and the same client's rate limit answers 429 with `Retry-After`.
#[tokio::test]
async fn a_learning_clients_log_becomes_rules_and_its_rate_limit_answers_429() {
    let fakes = Fakes::start().await;
    let key = "learning-client-key-0123456789";
    let hash = hex(&sha2::Sha256::digest(key.as_bytes()));
    let config = fakes.dir.path().join("learn.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
             [upstream]\nurl = \"{}\"\n{}\n[inbound]\nmode = \"keys\"\n\
             [[clients]]\nname = \"exporter\"\nkey_sha256 = \"{hash}\"\nlearn = true\n\
             max_requests_per_second = 0.2\nburst = 3\n\
             allow = [{{ methods = [\"GET\"], path = \"/contoso/web/_apis/**\" }}]\n",
            fakes.devops.url(),
            fakes.entra.identity_toml(None),
        ),
    )
    .expect("config");
    let child = run(command(&["--config", path_arg(&config)])).await;
    wait_ready(child.admin.port()).await;
    let get = |path: &str| {
        let url = format!("http://{}{path}", child.proxy);
        async move { support::get(&url, &[("authorization", &basic("tool", key))]).await }
    };
    assert_ne!(get("/contoso/web/_apis/git/repositories").await.status, 403);
    // Outside its rules, forwarded in learn mode (the fake answers for the project list).
    assert_eq!(get("/contoso/_apis/projects").await.status, 200);
    assert_eq!(get("/contoso/_apis/projects").await.status, 200);
    // The burst of 3 is spent: the rate answers.
    let limited = get("/contoso/_apis/projects").await;
    assert_eq!(limited.status, 429);
    assert!(limited.headers.contains_key("retry-after"));
    let (_, logs) = terminate(child).await;
    let learned = logs
        .lines()
        .filter(|line| line.contains(" audit: ") && line.contains("learn=would_deny"))
        .count();
    assert_eq!(learned, 2, "the limited call was not forwarded: {logs}");

    let output = with_stdin(command(&["rules", "suggest"]), logs.as_bytes()).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let suggestion = text(&output.stdout);
    assert!(suggestion.contains("name = \"exporter\""), "{suggestion}");
    assert!(
        suggestion.contains("would_deny"),
        "the learn-mode calls are counted: {suggestion}"
    );
    let loaded = ado_auth_proxy::config::Config::from_toml(&wrapped(&suggestion))
        .unwrap_or_else(|e| panic!("{e}\n{suggestion}"));
    let exporter = &loaded.clients[0];
    let path = ado_auth_proxy::policy::Segments::parse("/contoso/_apis/projects").expect("path");
    assert!(
        exporter
            .allow
            .judge(&http::Method::GET, &path, None)
            .is_some(),
        "the suggested rules admit what learn mode saw: {suggestion}"
    );
}
