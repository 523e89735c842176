//! `check --rules` through the real binary against the fake Azure DevOps under its real host
//! names: every rule of every client is put to Azure DevOps with its identity's token; what the
//! principal may not see makes the rule fail with Azure DevOps' code and how to grant it.

use crate::access::Keys;
use crate::cli::command;
use crate::support::azure::FakeAzure;
use crate::support::entra::{EntraConfig, FakeEntra};

struct Doctor {
    entra: FakeEntra,
    azure: FakeAzure,
    dir: tempfile::TempDir,
}

impl Doctor {
    async fn start() -> Doctor {
        let entra = FakeEntra::start(EntraConfig::default()).await;
        // Its redirects are never followed here.
        let azure = FakeAzure::start("http://127.0.0.2:9".into()).await;
        azure.trust(&entra.config().signing_key);
        let dir = tempfile::TempDir::new().expect("temp dir");
        Doctor { entra, azure, dir }
    }

    /// A configuration for dev.azure.com (reached through `upstream.resolve`) with identities
    /// `default` and `builds` (the same app registration) and `access` for the clients.
    fn config(&self, access: &str) -> String {
        let secret_file = self.dir.path().join("client-secret");
        std::fs::write(&secret_file, &self.entra.config().client_secret).expect("secret");
        let credential = format!(
            "{{ kind = \"client_secret\", secret_file = \"{}\" }}",
            secret_file.display()
        );
        let path = self.dir.path().join("proxy.toml");
        std::fs::write(
            &path,
            format!(
                "[listen]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
                 [upstream]\nurl = \"https://dev.azure.com\"\nca_file = \"{}\"\n{}\n{}\n{}\n{access}",
                FakeAzure::ca_file().display(),
                self.azure.resolve_toml(),
                self.entra.identity_toml_with("default", &credential),
                self.entra.identity_toml_with("builds", &credential),
            ),
        )
        .expect("config");
        path.to_string_lossy().into_owned()
    }

    /// `check` with these arguments: exit code, stdout, stderr.
    async fn check(&self, config: &str, args: &[&str]) -> (Option<i32>, String, String) {
        let mut all = vec!["--config", config, "check"];
        all.extend_from_slice(args);
        let output = command(&all).output().await.expect("runs");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        );
        self.assert_no_token(&stdout, &stderr);
        (output.status.code(), stdout, stderr)
    }

    /// Every token the fake saw, valid or not, is absent from what the binary wrote.
    fn assert_no_token(&self, stdout: &str, stderr: &str) {
        let seen = self.azure.seen();
        assert!(
            seen.iter().any(|r| r.token_valid),
            "no token reached Azure DevOps"
        );
        for request in seen {
            let authorization = request.authorization.unwrap_or_default();
            let token = authorization.trim_start_matches("Bearer ");
            assert!(token.len() > 20, "{authorization}");
            assert!(!stdout.contains(token) && !stderr.contains(token));
        }
        assert!(
            !stdout.contains("eyJ") && !stderr.contains("eyJ"),
            "{stdout}"
        );
    }

    /// How often the fake was asked for `target` (path and query) on `host`.
    fn asked(&self, host: &str, target: &str) -> usize {
        self.azure
            .seen()
            .iter()
            .filter(|r| r.host == host && r.target == target)
            .count()
    }
}

/// The report's line for a rule, and the line after it (the fix, when it failed).
fn line_of<'a>(report: &'a str, rule: &str) -> (&'a str, &'a str) {
    let lines: Vec<&str> = report.lines().collect();
    let at = lines
        .iter()
        .position(|line| line.trim_start().starts_with(&format!("{rule}: ")))
        .unwrap_or_else(|| panic!("no line for `{rule}` in:\n{report}"));
    (lines[at], lines.get(at + 1).copied().unwrap_or_default())
}

const CLIENTS: &str = r#"
[inbound]
mode = "keys"

[[clients]]
name = "ci-bot"
key_sha256 = "KEY1"
allow = [
  { methods = ["GET", "POST"], path = "/contoso/web/_git/web/**" },
  { methods = ["GET"], path = "/contoso/web/_apis/build/**" },
  { methods = ["GET"], path = "/contoso/secret/_apis/**" },
  { methods = ["GET"], path = "/contoso/*/_apis/wit/**" },
]

[[clients]]
name = "packages"
key_sha256 = "KEY2"
identity = "builds"
allow = [
  { feed = "contoso/internal", methods = ["GET"] },
  { host = "pkgs.dev.azure.com", methods = ["GET"], path = "/contoso/web/_packaging/releases/**" },
  { methods = ["GET"], path = "/contoso/_apis/**" },
  { methods = ["GET"], path = "/fabrikam/_apis/**" },
  { host = "*.visualstudio.com", methods = ["GET"], path = "/**" },
]
"#;

#[tokio::test]
async fn every_rule_is_asked_of_azure_devops_and_what_is_missing_is_named_with_its_remedy() {
    let doctor = Doctor::start().await;
    let keys = Keys::new();
    let access = CLIENTS
        .replace("KEY1", &Keys::hash(&keys.reader))
        .replace("KEY2", &Keys::hash(&keys.writer));
    let config = doctor.config(&access);

    let (code, report, stderr) = doctor
        .check(&config, &["--rules", "--organization", "contoso"])
        .await;
    assert_eq!(code, Some(0), "{report}\n{stderr}");
    assert!(
        report.contains("Azure DevOps: authenticated as"),
        "{report}"
    );
    assert!(
        report.contains("client ci-bot (identity default)"),
        "{report}"
    );
    assert!(
        report.contains("client packages (identity builds)"),
        "{report}"
    );
    for rule in [
        "GET /contoso/web/_apis/build/**",
        "GET /contoso/secret/_apis/**",
        "GET feed contoso/internal",
        "GET pkgs.dev.azure.com/contoso/web/_packaging/releases/**",
        "GET /contoso/_apis/**",
        "GET /fabrikam/_apis/**",
    ] {
        assert!(
            line_of(&report, rule).0.ends_with(": ok"),
            "{rule}:\n{report}"
        );
    }
    let (push, _) = line_of(&report, "GET,POST /contoso/web/_git/web/**");
    assert!(
        push.contains(": ok (read access proven; POST not"),
        "{report}"
    );
    let (any_project, _) = line_of(&report, "GET /contoso/*/_apis/wit/**");
    assert!(
        any_project
            .contains(": ok as far as it names things; not checked: the project is a wildcard"),
        "{report}"
    );
    let (legacy, _) = line_of(&report, "GET *.visualstudio.com/**");
    assert!(legacy.contains(": not checked: "), "{report}");
    assert!(
        report.contains("rules: 8 ok, 0 cannot work, 1 not checked"),
        "{report}"
    );
    // One question per identity, however many rules need its answer.
    assert_eq!(
        doctor.asked(
            "dev.azure.com",
            "/contoso/_apis/projects/web?api-version=7.1"
        ),
        1
    );
    // `--organization contoso` asks once per identity, and the rules once more per identity.
    assert_eq!(
        doctor.asked("dev.azure.com", "/contoso/_apis/connectionData"),
        4
    );
    assert_eq!(
        doctor.asked(
            "feeds.dev.azure.com",
            "/contoso/web/_apis/packaging/feeds/releases?api-version=7.1"
        ),
        1
    );

    doctor.azure.deny("contoso/secret");
    doctor.azure.deny("contoso/web/_git/web");
    doctor.azure.deny("contoso/_packaging/internal");
    doctor.azure.deny("fabrikam");
    let (code, report, stderr) = doctor.check(&config, &["--rules"]).await;
    assert_eq!(code, Some(1), "{report}\n{stderr}");
    let failures = [
        (
            "GET /contoso/secret/_apis/**",
            "project contoso/secret not seen: HTTP 404: TF200016",
            "add the service principal to the project's Readers group",
        ),
        (
            "GET,POST /contoso/web/_git/web/**",
            "repository contoso/web/_git/web not seen: HTTP 404: TF401019",
            "Read on the repository",
        ),
        (
            "GET feed contoso/internal",
            "feed contoso/internal not seen: HTTP 404: The feed with ID 'internal' doesn't exist.",
            "give the service principal Reader on the feed (Feed settings > Permissions",
        ),
        (
            "GET /fabrikam/_apis/**",
            "organization fabrikam not seen: HTTP 401: TF400813",
            "add the service principal to the organization (Organization settings > Users",
        ),
    ];
    for (rule, answer, remedy) in failures {
        let (line, fix) = line_of(&report, rule);
        assert!(
            line.contains(": FAILED: ") && line.contains(answer),
            "{rule}:\n{report}"
        );
        assert!(
            fix.trim_start().starts_with("fix: ") && fix.contains(remedy),
            "{rule}:\n{report}"
        );
    }
    assert!(
        line_of(&report, "GET,POST /contoso/web/_git/web/**")
            .1
            .contains("access level Basic"),
        "{report}"
    );
    // What stays visible is still ok.
    assert!(
        line_of(&report, "GET /contoso/web/_apis/build/**")
            .0
            .ends_with(": ok")
    );
    assert!(
        report.contains("rules: 4 ok, 4 cannot work, 1 not checked"),
        "{report}"
    );
}

#[tokio::test]
async fn open_mode_is_checked_as_its_one_client_and_configuration_errors_exit_2() {
    let doctor = Doctor::start().await;
    let config = doctor.config(
        r#"
[inbound]
mode = "open"
allow = [{ methods = ["GET"], path = "/contoso/web/_git/infra/**" }]
"#,
    );
    let (code, report, stderr) = doctor.check(&config, &["--rules"]).await;
    assert_eq!(code, Some(0), "{report}\n{stderr}");
    assert!(
        report.contains("client open (identity default)"),
        "{report}"
    );
    assert!(
        line_of(&report, "GET /contoso/web/_git/infra/**")
            .0
            .ends_with(": ok")
    );

    doctor.azure.deny("contoso/web");
    let (code, report, _) = doctor.check(&config, &["--rules"]).await;
    assert_eq!(code, Some(1), "{report}");
    let (line, fix) = line_of(&report, "GET /contoso/web/_git/infra/**");
    assert!(
        line.contains("project contoso/web not seen: HTTP 404: TF200016"),
        "{report}"
    );
    assert!(fix.contains("Readers group"), "{report}");
    assert_eq!(
        doctor.asked(
            "dev.azure.com",
            "/contoso/web/_apis/git/repositories/infra?api-version=7.1"
        ),
        1,
        "the repository is not asked once its project is not seen"
    );

    let bad = doctor.config(
        r#"
[inbound]
mode = "open"
allow = [{ methods = ["GET"], path = "/contoso/../x" }]
"#,
    );
    let output = command(&["--config", &bad, "check", "--rules"])
        .output()
        .await
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("allow"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
