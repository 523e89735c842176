//! The real binary: configuration errors, `check`, `healthcheck`, logs that never hold a secret,
//! SIGTERM, and the example configurations.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use crate::harness::{OLD_PAT, basic_pat, raw_exchange};
use crate::support::devops::{DevOpsConfig, FakeDevOps};
use crate::support::entra::{EntraConfig, EntraMode, FakeEntra};
use crate::support::{self};

const BIN: &str = env!("CARGO_BIN_EXE_ado-auth-proxy");

pub fn command(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

pub struct Fakes {
    pub entra: FakeEntra,
    pub devops: FakeDevOps,
    pub dir: tempfile::TempDir,
}

impl Fakes {
    pub async fn start() -> Fakes {
        let entra = FakeEntra::start(EntraConfig::default()).await;
        let dir = tempfile::TempDir::new().expect("temp dir");
        let devops = FakeDevOps::start(DevOpsConfig {
            signing_key: entra.config().signing_key.clone(),
            git_root: dir.path().join("git"),
        })
        .await;
        Fakes { entra, devops, dir }
    }

    /// A config file whose secret lives in a file beside it, as an operator would deploy it.
    /// Both listeners on port 0: the binary picks free ports and says which (see [`run`]).
    fn write_config(&self) -> PathBuf {
        self.write_config_named("proxy.toml", 0)
    }

    /// The same with the admin listener on `admin_port`, for commands that must find it.
    fn write_config_named(&self, name: &str, admin_port: u16) -> PathBuf {
        self.write_config_with(name, admin_port, "", "")
    }

    /// With extra lines in `[listen]` and `[admin]`.
    pub fn write_config_with(
        &self,
        name: &str,
        admin_port: u16,
        listen: &str,
        admin: &str,
    ) -> PathBuf {
        let secret_file = self.dir.path().join("client-secret");
        std::fs::write(
            &secret_file,
            format!("{}\n", self.entra.config().client_secret),
        )
        .expect("write secret");
        let path = self.dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "[listen]\naddress = \"127.0.0.1:0\"\n{listen}\n\
                 [admin]\naddress = \"127.0.0.1:{admin_port}\"\n{admin}\n\
                 [upstream]\nurl = \"{upstream}\"\n{identity}\n{access}",
                upstream = self.devops.url(),
                identity = self.entra.identity_toml(Some(&secret_file)),
                access = crate::harness::OPEN_ALLOW_ALL,
            ),
        )
        .expect("write config");
        path
    }
}

pub async fn wait_ready(admin_port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", admin_port))
            .await
            .is_ok()
            && support::get(&format!("http://127.0.0.1:{admin_port}/readyz"), &[])
                .await
                .status
                == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("binary not ready");
}

/// The binary serving `run`: the addresses it bound (it logs them; with port 0 it picks free
/// ones, so no port is chosen here and taken by someone else before the binary binds it), and
/// its stderr, collected as it comes.
pub struct Running {
    child: Child,
    pub proxy: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
    pub logs: std::sync::Arc<std::sync::Mutex<String>>,
    reader: tokio::task::JoinHandle<()>,
}

pub async fn run(mut command: Command) -> Running {
    use tokio::io::AsyncBufReadExt as _;
    let mut child = command.spawn().expect("spawn");
    let stderr = child.stderr.take().expect("stderr piped");
    let logs: std::sync::Arc<std::sync::Mutex<String>> = std::sync::Arc::default();
    let collected = logs.clone();
    let reader = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut logs = collected.lock().expect("logs lock");
            logs.push_str(&line);
            logs.push('\n');
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (proxy, admin) = loop {
        let found = logs
            .lock()
            .expect("logs lock")
            .lines()
            .find(|line| line.contains("ado-auth-proxy listening"))
            .map(|line| (field(line, "proxy"), field(line, "admin")));
        if let Some((Some(proxy), Some(admin))) = found {
            break (proxy, admin);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the binary never said where it listens:\n{}",
            logs.lock().expect("logs lock")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Running {
        child,
        proxy,
        admin,
        logs,
        reader,
    }
}

/// A field of the "listening" line, in the JSON or the text format.
fn field(line: &str, name: &str) -> Option<std::net::SocketAddr> {
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(line) {
        return json[name].as_str()?.parse().ok();
    }
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(&format!("{name}=")))?
        .trim_matches('"')
        .parse()
        .ok()
}

/// SIGTERM, then the exit status and everything the binary wrote.
pub async fn terminate(running: Running) -> (std::process::ExitStatus, String) {
    let Running {
        mut child,
        logs,
        reader,
        ..
    } = running;
    let pid = child.id().expect("running").to_string();
    // The shell's builtin `kill`: no procps needed on a slim machine.
    let _ = Command::new("sh")
        .args(["-c", &format!("kill -TERM {pid}")])
        .status()
        .await;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait");
    let _ = reader.await;
    let mut output = logs.lock().expect("logs lock").clone();
    if let Some(mut pipe) = child.stdout.take() {
        let _ = pipe.read_to_string(&mut output).await;
    }
    (status, output)
}

/// The JSON audit lines in `logs`, in time order: each worker batches its own lines, so the log
/// is in time order per worker only.
pub fn json_audit_lines(logs: &str) -> Vec<serde_json::Value> {
    let mut audit: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["target"] == "audit")
        .collect();
    audit.sort_by_key(|line| line["timestamp"].as_str().unwrap_or_default().to_owned());
    audit
}

#[tokio::test]
async fn logs_and_error_bodies_never_hold_the_secret_the_token_or_the_pat() {
    let fakes = Fakes::start().await;
    let config = fakes.write_config();
    let mut binary = command(&[
        "--config",
        config.to_str().expect("utf-8"),
        "--log-format",
        "json",
        "run",
    ]);
    binary.env("RUST_LOG", "debug");
    let child = run(binary).await;
    let (proxy_port, admin_port) = (child.proxy.port(), child.admin.port());
    wait_ready(admin_port).await;
    let proxy = format!("http://127.0.0.1:{proxy_port}");

    let mut bodies = String::new();
    let basic = basic_pat();
    let bearer = format!("Bearer {OLD_PAT}");
    for (path, auth) in [
        ("/contoso/_apis/projects", basic.as_str()),
        ("/contoso/_apis/projects", bearer.as_str()),
        ("/_test/status/403", basic.as_str()),
        ("/missing", bearer.as_str()),
    ] {
        let reply = support::get(&format!("{proxy}{path}"), &[("authorization", auth)]).await;
        bodies.push_str(&reply.text());
    }
    bodies.push_str(
        &raw_exchange(
            format!("127.0.0.1:{proxy_port}").parse().expect("addr"),
            format!("GET http://x/ HTTP/1.1\r\nHost: x\r\nAuthorization: {bearer}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await,
    );
    // A failing refresh logs Entra ID's answer; it must still not echo the secret. Azure DevOps
    // refusing the current token forces that refresh now.
    fakes.entra.set_mode(EntraMode::Fail {
        status: 401,
        code: "AADSTS7000215".into(),
    });
    fakes.devops.revoke_seen_tokens();
    let refused = support::get(
        &format!("{proxy}/contoso/_apis/projects"),
        &[("authorization", basic.as_str())],
    )
    .await;
    assert_eq!(refused.status, 502, "{}", refused.text());
    bodies.push_str(&refused.text());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let readyz = support::get(&format!("http://127.0.0.1:{admin_port}/readyz"), &[]).await;
        if readyz.text().contains("AADSTS7000215") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the failed refresh never showed: {}",
            readyz.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bodies.push_str(
        &support::get(&format!("http://127.0.0.1:{admin_port}/metrics"), &[])
            .await
            .text(),
    );
    bodies.push_str(
        &support::get(&format!("http://127.0.0.1:{admin_port}/readyz"), &[])
            .await
            .text(),
    );

    let (status, logs) = terminate(child).await;
    assert!(
        status.success(),
        "clean exit on SIGTERM: {status:?}\n{logs}"
    );

    let tokens: Vec<String> = fakes
        .devops
        .requests()
        .iter()
        .filter_map(|r| {
            r.headers
                .get("authorization")?
                .to_str()
                .ok()
                .map(str::to_owned)
        })
        .collect();
    assert!(!tokens.is_empty());
    let captured = format!("{logs}\n{bodies}");
    let mut secrets = vec![
        fakes.entra.config().client_secret.clone(),
        OLD_PAT.to_string(),
        basic.clone(),
    ];
    secrets.extend(
        tokens
            .iter()
            .map(|t| t.trim_start_matches("Bearer ").to_string()),
    );
    for secret in &secrets {
        assert!(
            !captured.contains(secret.as_str()),
            "a secret leaked into logs or bodies"
        );
    }
    assert!(!captured.contains("eyJ"), "something JWT-shaped leaked");

    // One JSON audit line per request, with the promised fields.
    let audit = json_audit_lines(&logs);
    assert_eq!(audit.len(), 6, "{logs}");
    assert!(
        logs.contains("AADSTS7000215"),
        "the failed refresh is logged with Entra ID's code"
    );
    let first = &audit[0];
    for field in [
        "request_id",
        "method",
        "path",
        "status",
        "request_bytes",
        "response_bytes",
        "duration_us",
        "upstream_us",
    ] {
        assert!(
            first.get(field).is_some(),
            "audit line lacks {field}: {first}"
        );
    }
    assert_eq!(first["path"], "/contoso/_apis/projects");
    // Who sent it: the test's own loopback connection.
    assert!(
        first["peer"]
            .as_str()
            .is_some_and(|peer| peer.starts_with("127.0.0.1:")),
        "audit line lacks the peer: {first}"
    );
    assert!(logs.contains("shutting down"), "{logs}");
}

#[tokio::test]
async fn check_reports_the_principal_and_never_the_token() {
    let fakes = Fakes::start().await;
    let config = fakes.write_config();
    let output = command(&["--config", config.to_str().expect("utf-8"), "check"])
        .output()
        .await
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("identity default"), "{stdout}");
    assert!(stdout.contains(&fakes.entra.config().client_id), "{stdout}");
    assert!(stdout.contains("oid"), "{stdout}");
    assert!(!stdout.contains("eyJ"), "the token was printed: {stdout}");

    fakes.entra.set_mode(EntraMode::Fail {
        status: 400,
        code: "AADSTS700016".into(),
    });
    let output = command(&["--config", config.to_str().expect("utf-8"), "check"])
        .output()
        .await
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success());
    assert!(
        stdout.contains("AADSTS700016") && stdout.contains("client_id"),
        "{stdout}"
    );
}

#[tokio::test]
async fn healthcheck_follows_readiness() {
    let fakes = Fakes::start().await;
    let config = fakes.write_config();
    let config = config.to_str().expect("utf-8");
    let down = command(&["--config", config, "healthcheck"])
        .output()
        .await
        .expect("runs");
    assert!(!down.status.success(), "nothing listening yet");

    // Listening but without a token: not healthy.
    fakes.entra.set_mode(EntraMode::Fail {
        status: 400,
        code: "AADSTS90002".into(),
    });
    let child = run(command(&["--config", config])).await;
    let admin_port = child.admin.port();
    // What `healthcheck` reads: the admin address the running binary bound.
    let health_config = fakes.write_config_named("health.toml", admin_port);
    let config = health_config.to_str().expect("utf-8");
    let readyz = format!("http://127.0.0.1:{admin_port}/readyz");
    assert_eq!(support::get(&readyz, &[]).await.status, 503);
    let not_ready = command(&["--config", config, "healthcheck"])
        .output()
        .await
        .expect("runs");
    assert!(!not_ready.status.success(), "listening, but no token");
    assert!(
        String::from_utf8_lossy(&not_ready.stderr).contains("not ready"),
        "{}",
        String::from_utf8_lossy(&not_ready.stderr)
    );

    fakes.entra.set_mode(EntraMode::Normal);
    wait_ready(admin_port).await;
    let up = command(&["healthcheck"])
        .env("ADO_AUTH_PROXY_CONFIG", config)
        .output()
        .await
        .expect("runs");
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let _ = terminate(child).await;
}

#[tokio::test]
async fn bad_configurations_are_refused_with_the_key_and_the_problem() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let identity = "[identities.default]\ntenant_id = \"t\"\nclient_id = \"c\"\ncredential = { kind = \"client_secret\", secret = \"x\" }\n";
    let cases = [
        (
            "[listen]\naddress = \"0.0.0.0:8080\"\n[inbound]\nmode = \"open\"\nallow = [{ methods = [\"GET\"], path = \"/**\" }]\n",
            "listen.address",
        ),
        (
            "[upstream]\nurl = \"http://dev.azure.com\"\n",
            "upstream.url",
        ),
        ("[upstream]\nulr = \"https://dev.azure.com\"\n", "ulr"),
        (
            "[upstream]\nresponse_timeout = \"forever\"\n",
            "response_timeout",
        ),
        (
            "[upstream]\nca_file = \"/nonexistent/ca.pem\"\n",
            "upstream.ca_file",
        ),
        ("[admin]\naddress = \"nowhere\"\n", "admin.address"),
    ];
    for (i, (toml, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, format!("{toml}{identity}")).expect("write");
        let output = command(&["--config", path.to_str().expect("utf-8"), "run"])
            .output()
            .await
            .expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{toml}: {stderr}");
        assert!(stderr.contains(key), "{toml}: {stderr}");
    }
    let output = command(&["--config", "/nonexistent.toml"])
        .output()
        .await
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent.toml"));

    let output = command(&["run"]).output().await.expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr.contains("AZURE_CLIENT_SECRET"), "{stderr}");
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name)
}

#[tokio::test]
async fn the_example_configurations_load_and_get_a_token() {
    let fakes = Fakes::start().await;
    let cfg = fakes.entra.config();
    for name in ["sidecar.toml", "shared-service.toml"] {
        let output = command(&["--config", example(name).to_str().expect("utf-8"), "check"])
            .env("AZURE_TENANT_ID", &cfg.tenant_id)
            .env("AZURE_CLIENT_ID", &cfg.client_id)
            .env("AZURE_CLIENT_SECRET", &cfg.client_secret)
            .env("AZURE_AUTHORITY_HOST", fakes.entra.authority())
            .env("ADO_AUTH_PROXY_UPSTREAM__URL", fakes.devops.url())
            .output()
            .await
            .expect("runs");
        assert!(
            output.status.success(),
            "{name}: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[tokio::test]
async fn keys_new_prints_a_key_once_and_only_its_hash_for_the_config() {
    let output = command(&["keys", "new", "--name", "ci-bot"])
        .output()
        .await
        .expect("runs");
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let key = stdout
        .split_whitespace()
        .find(|word| word.starts_with("aap_"))
        .expect("a key")
        .to_string();
    assert!(key.len() >= 4 + 43, "256 bits of key");
    let hash = ado_auth_proxy::keys::to_hex(&ado_auth_proxy::keys::sha256(key.as_bytes()));
    assert!(
        stdout.contains(&format!("key_sha256 = \"{hash}\"")),
        "{stdout}"
    );
    assert_eq!(stdout.matches(&key).count(), 1, "the key is printed once");
    let other = command(&["keys", "new", "--name", "ci-bot"])
        .output()
        .await
        .expect("runs");
    assert!(
        !String::from_utf8_lossy(&other.stdout).contains(&key),
        "every key is new"
    );
    let bad = command(&["keys", "new", "--name", "two words"])
        .output()
        .await
        .expect("runs");
    assert_eq!(bad.status.code(), Some(2));
}

#[tokio::test]
async fn client_keys_never_appear_in_logs_responses_or_metrics() {
    let fakes = Fakes::start().await;
    let config = fakes.write_config();
    let keys = crate::access::Keys::new();
    let text = std::fs::read_to_string(&config).expect("read");
    let text = text.replace(crate::harness::OPEN_ALLOW_ALL, &keys.access_toml());
    std::fs::write(&config, text).expect("write");
    let mut binary = command(&[
        "--config",
        config.to_str().expect("utf-8"),
        "--log-format",
        "json",
    ]);
    binary.env("RUST_LOG", "debug");
    let child = run(binary).await;
    let (proxy_port, admin_port) = (child.proxy.port(), child.admin.port());
    wait_ready(admin_port).await;
    let proxy = format!("http://127.0.0.1:{proxy_port}");
    let wrong_key = "aap_wrongwrongwrongwrongwrongwrongwrongwrongwro";
    let mut bodies = String::new();
    for (path, key) in [
        ("/contoso/_apis/projects", keys.reader.as_str()),
        ("/contoso/_apis/projects", keys.writer.as_str()),
        ("/contoso/_apis/projects", wrong_key),
        ("/contoso/web/_git/web/../x", keys.reader.as_str()),
    ] {
        let auth = format!("Bearer {key}");
        let reply = support::get(&format!("{proxy}{path}"), &[("authorization", &auth)]).await;
        bodies.push_str(&reply.text());
        bodies.push_str(&format!("{:?}", reply.headers));
    }
    bodies.push_str(
        &support::get(&format!("http://127.0.0.1:{admin_port}/metrics"), &[])
            .await
            .text(),
    );
    let (_, logs) = terminate(child).await;
    let captured = format!("{logs}\n{bodies}");
    for key in [keys.reader.as_str(), keys.writer.as_str(), wrong_key] {
        assert!(!captured.contains(key), "a client key leaked");
        assert!(
            !captured.contains(&key[4..20]),
            "part of a client key leaked"
        );
    }
    let audit = json_audit_lines(&logs);
    let clients: Vec<&str> = audit
        .iter()
        .map(|a| a["client"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(clients, ["reader", "writer", "-", "reader"], "{logs}");
    assert_eq!(audit[0]["rule"], "GET /contoso/_apis/projects");
}

/// The audit line is written outside `tracing`'s formatter, in the text format by default;
/// `RUST_LOG` still decides whether it is written.
#[tokio::test]
async fn text_audit_lines_follow_rust_log() {
    let fakes = Fakes::start().await;
    for (filter, audited) in [("info", true), ("info,audit=off", false)] {
        let config = fakes.write_config();
        let mut binary = command(&["--config", config.to_str().expect("utf-8"), "run"]);
        binary.env("RUST_LOG", filter);
        let child = run(binary).await;
        let (proxy_port, admin_port) = (child.proxy.port(), child.admin.port());
        wait_ready(admin_port).await;
        let url = format!("http://127.0.0.1:{proxy_port}/contoso/_apis/projects?api-version=7.1");
        assert_eq!(support::get(&url, &[]).await.status, 200);
        // A body kept whole for a replay, and one too large to keep that streams through. The
        // fake reads either whole before it answers, so the count is final when the line is.
        let upload = format!("http://127.0.0.1:{proxy_port}/_test/upload");
        for size in [11, 100 * 1024] {
            let reply = support::request("POST", &upload, &[], vec![b'x'; size]).await;
            assert_eq!(reply.status, 200, "{}", reply.text());
        }
        let (_, logs) = terminate(child).await;
        let mut audit: Vec<&str> = logs
            .lines()
            .filter(|line| line.contains(" INFO audit: "))
            .collect();
        // In time order per worker only; a line starts with its RFC 3339 timestamp.
        audit.sort_unstable();
        if audited {
            assert_eq!(audit.len(), 3, "{logs}");
            assert!(
                audit[0].contains(" method=GET path=/contoso/_apis/projects status=200 "),
                "{logs}"
            );
            assert!(
                audit[0].contains(" outcome=complete") && audit[0].contains(" upstream_us="),
                "{logs}"
            );
            assert!(
                !audit[0].contains("api-version"),
                "the query is logged: {logs}"
            );
            for (line, bytes) in audit.iter().zip(["0", "11", "102400"]) {
                assert!(line.contains(&format!(" request_bytes={bytes} ")), "{logs}");
            }
        } else {
            assert!(audit.is_empty(), "RUST_LOG={filter}: {logs}");
            assert!(
                logs.contains(" INFO "),
                "other lines are still logged: {logs}"
            );
        }
    }
}

/// A corporate proxy in the environment (here a dead one) is not used for a plain-http token
/// endpoint on loopback, nor by `check` for Azure DevOps: a secret must not travel through it.
#[tokio::test]
async fn proxy_variables_do_not_divert_loopback_token_requests() {
    let fakes = Fakes::start().await;
    let dead_proxy = "http://127.0.0.1:1";
    let with_proxy = |command: &mut Command| {
        for var in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
        ] {
            command.env(var, dead_proxy);
        }
    };
    let config = fakes.write_config();
    let mut check = command(&["--config", config.to_str().expect("utf-8"), "check"]);
    with_proxy(&mut check);
    let output = check.output().await.expect("runs");
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let mut binary = command(&["--config", config.to_str().expect("utf-8"), "run"]);
    with_proxy(&mut binary);
    let child = run(binary).await;
    let (proxy_port, admin_port) = (child.proxy.port(), child.admin.port());
    wait_ready(admin_port).await;
    let url = format!("http://127.0.0.1:{proxy_port}/contoso/_apis/projects");
    assert_eq!(support::get(&url, &[]).await.status, 200);
    terminate(child).await;
}

#[tokio::test]
async fn managed_identity_from_app_service_variables_works_and_its_header_stays_out_of_logs() {
    let fakes = Fakes::start().await;
    let config = fakes.dir.path().join("managed.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
             [upstream]\nurl = \"{upstream}\"\n\
             [identities.default]\ncredential = {{ kind = \"managed_identity\" }}\n{access}",
            upstream = fakes.devops.url(),
            access = crate::harness::OPEN_ALLOW_ALL,
        ),
    )
    .expect("write config");
    let header = fakes.entra.identity_header().to_owned();
    let mut binary = command(&["--config", config.to_str().expect("utf-8"), "run"]);
    binary
        .env("IDENTITY_ENDPOINT", fakes.entra.app_service_url())
        .env("IDENTITY_HEADER", &header)
        .env("RUST_LOG", "debug");
    let child = run(binary).await;
    let (proxy_port, admin_port) = (child.proxy.port(), child.admin.port());
    wait_ready(admin_port).await;
    let url = format!("http://127.0.0.1:{proxy_port}/contoso/_apis/projects");
    assert_eq!(support::get(&url, &[]).await.status, 200);
    assert!(fakes.entra.managed_identity_requests() >= 1);
    let (_, logs) = terminate(child).await;
    assert!(!logs.is_empty(), "debug logs were captured");
    assert!(
        !logs.contains(&header),
        "IDENTITY_HEADER in the logs:\n{logs}"
    );
}

#[tokio::test]
async fn the_audit_line_names_the_client_behind_a_trusted_proxy_only() {
    let fakes = Fakes::start().await;
    let config = fakes.write_config();
    let text = std::fs::read_to_string(&config).expect("read");
    std::fs::write(
        &config,
        text.replacen(
            "[listen]\n",
            "[listen]\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
            1,
        ),
    )
    .expect("write");
    let mut binary = command(&[
        "--config",
        config.to_str().expect("utf-8"),
        "--log-format",
        "json",
    ]);
    binary.env("RUST_LOG", "info");
    let child = run(binary).await;
    wait_ready(child.admin.port()).await;
    let url = format!("http://{}/contoso/_apis/projects", child.proxy);
    let forwarded = [("x-forwarded-for", "203.0.113.50, 198.51.100.9")];
    assert_eq!(support::get(&url, &forwarded).await.status, 200);
    assert_eq!(support::get(&url, &[]).await.status, 200);
    let (_, logs) = terminate(child).await;
    let peers: Vec<String> = json_audit_lines(&logs)
        .into_iter()
        .map(|line| line["peer"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(peers.len(), 2, "{logs}");
    assert_eq!(peers[0], "198.51.100.9:0", "the hop the trusted proxy saw");
    assert!(peers[1].starts_with("127.0.0.1:"), "{}", peers[1]);
}

/// The status of a GET through `proxy` with a client key.
async fn status_with_key(proxy: std::net::SocketAddr, key: String) -> http::StatusCode {
    let url = format!("http://{proxy}/contoso/_apis/projects");
    let auth = crate::harness::basic("tool", &key);
    support::get(&url, &[("authorization", &auth)]).await.status
}

/// Waits, at most 10 s, until a reload has made `key` work.
async fn wait_until_accepted(proxy: std::net::SocketAddr, key: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while status_with_key(proxy, key.to_owned()).await != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the reload never made the key work"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGHUP reloads clients and rules: a new key works, a removed one does not, the download in
/// flight finishes whole, the token is not fetched again, and a broken edit changes nothing.
#[tokio::test]
async fn sighup_reloads_clients_without_dropping_a_download_or_the_token() {
    use http_body_util::BodyExt as _;
    let fakes = Fakes::start().await;
    let config = fakes.write_config();
    let base = std::fs::read_to_string(&config).expect("read");
    let (stays, goes, arrives) = (
        ado_auth_proxy::keys::generate().expect("key"),
        ado_auth_proxy::keys::generate().expect("key"),
        ado_auth_proxy::keys::generate().expect("key"),
    );
    let clients = |names: &[(&str, &str)]| {
        let mut toml = String::from("[inbound]\nmode = \"keys\"\n");
        for (name, key) in names {
            toml.push_str(&format!(
                "[[clients]]\nname = \"{name}\"\nkey_sha256 = \"{}\"\nallow = [{{ methods = [\"GET\"], path = \"/**\" }}]\n",
                crate::access::Keys::hash(key)
            ));
        }
        base.replace(crate::harness::OPEN_ALLOW_ALL, &toml)
    };
    std::fs::write(&config, clients(&[("stays", &stays), ("goes", &goes)])).expect("write");
    // Named through a symlink in another directory: edits of the file itself are then invisible
    // to the file watcher, which watches the symlink's directory, so only SIGHUP reloads here.
    let linked = fakes.dir.path().join("linked");
    std::fs::create_dir(&linked).expect("mkdir");
    let link = linked.join("proxy.toml");
    std::os::unix::fs::symlink(&config, &link).expect("symlink");
    let mut binary = command(&[
        "--config",
        link.to_str().expect("utf-8"),
        "--log-format",
        "json",
    ]);
    binary.env("RUST_LOG", "info");
    let child = run(binary).await;
    wait_ready(child.admin.port()).await;
    let proxy = child.proxy;
    let get = |key: &str| status_with_key(proxy, key.to_owned());
    assert_eq!(get(&goes).await, 200);

    // A download held after its first MiB until the reload is done.
    const BYTES: u64 = 4 << 20;
    let download = {
        let request = http::Request::get(format!(
            "http://{proxy}/_test/download?bytes={BYTES}&gate=1"
        ))
        .header("authorization", crate::harness::basic("tool", &stays))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
        tokio::spawn(async move {
            let response = support::send(request).await.expect("response");
            response
                .into_body()
                .collect()
                .await
                .expect("whole body")
                .to_bytes()
        })
    };

    std::fs::write(
        &config,
        clients(&[("stays", &stays), ("arrives", &arrives)]),
    )
    .expect("write");
    let hangup = |pid: u32| async move {
        let _ = Command::new("sh")
            .args(["-c", &format!("kill -HUP {pid}")])
            .status()
            .await;
    };
    let pid = child.child.id().expect("running");
    hangup(pid).await;
    wait_until_accepted(proxy, &arrives).await;
    assert_eq!(get(&goes).await, 401, "the removed key");
    assert_eq!(get(&stays).await, 200);

    fakes.devops.release_download();
    let body = download.await.expect("download task");
    assert_eq!(body.len() as u64, BYTES);
    assert!(crate::support::devops::is_pattern(0, &body), "byte-exact");
    assert_eq!(
        fakes.entra.tokens_issued(),
        1,
        "the unchanged identity kept its token"
    );

    // A broken edit: refused, counted, and the running configuration stays.
    let broken =
        clients(&[("stays", &stays)]).replacen("[upstream]\n", "[upstream]\nnot_a_key = 1\n", 1);
    std::fs::write(&config, broken).expect("write");
    hangup(pid).await;
    let metrics = format!("http://127.0.0.1:{}/metrics", child.admin.port());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = support::get(&metrics, &[]).await.text();
        if text.contains(r#"ado_auth_proxy_config_reloads_total{result="failure"} 1"#) {
            assert!(text.contains(r#"ado_auth_proxy_config_reloads_total{result="success"} 1"#));
            assert!(
                text.contains("ado_auth_proxy_config_info{sha256="),
                "{text}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the failed reload was never counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(&arrives).await, 200, "still the configuration in force");
    let (_, logs) = terminate(child).await;
    assert!(logs.contains("configuration not reloaded"), "{logs}");
    assert!(
        logs.contains("not_a_key"),
        "the error names the key: {logs}"
    );
}

/// A change of the configuration file reloads it without a signal: written in place, and
/// replaced by a rename the way editors and Kubernetes do.
#[tokio::test]
async fn an_edited_configuration_file_is_reloaded_without_a_signal() {
    let fakes = Fakes::start().await;
    let config = fakes.write_config();
    let base = std::fs::read_to_string(&config).expect("read");
    let keys: Vec<String> = (0..3)
        .map(|_| ado_auth_proxy::keys::generate().expect("key"))
        .collect();
    let only = |key: &str| {
        base.replace(
            crate::harness::OPEN_ALLOW_ALL,
            &format!(
                "[inbound]\nmode = \"keys\"\n[[clients]]\nname = \"tool\"\nkey_sha256 = \"{}\"\nallow = [{{ methods = [\"GET\"], path = \"/**\" }}]\n",
                crate::access::Keys::hash(key)
            ),
        )
    };
    std::fs::write(&config, only(&keys[0])).expect("write");
    let child = run(command(&["--config", config.to_str().expect("utf-8")])).await;
    wait_ready(child.admin.port()).await;
    let proxy = child.proxy;
    let get = |key: &str| status_with_key(proxy, key.to_owned());
    assert_eq!(get(&keys[0]).await, 200);
    assert_eq!(get(&keys[1]).await, 401);

    std::fs::write(&config, only(&keys[1])).expect("write in place");
    wait_until_accepted(proxy, &keys[1]).await;
    assert_eq!(get(&keys[0]).await, 401, "the key edited out");

    let replacement = fakes.dir.path().join(".proxy.toml.swp");
    std::fs::write(&replacement, only(&keys[2])).expect("write");
    std::fs::rename(&replacement, &config).expect("rename over");
    wait_until_accepted(proxy, &keys[2]).await;
    assert_eq!(get(&keys[1]).await, 401, "the key replaced");

    let metrics = format!("http://127.0.0.1:{}/metrics", child.admin.port());
    let text = support::get(&metrics, &[]).await.text();
    assert!(
        text.contains(r#"ado_auth_proxy_config_reloads_total{result="failure"} 0"#),
        "{text}"
    );
    assert_eq!(
        fakes.entra.tokens_issued(),
        1,
        "the identity kept its token"
    );
    terminate(child).await;
}

#[tokio::test]
async fn check_offline_validates_without_the_network_for_ci_of_config_repositories() {
    let fakes = Fakes::start().await;
    let config = fakes.write_config();
    let path = config.to_str().expect("utf-8");
    let good = command(&["--config", path, "check", "--offline"])
        .output()
        .await
        .expect("runs");
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(String::from_utf8_lossy(&good.stdout).contains("configuration valid"));
    assert_eq!(fakes.entra.token_requests(), 0, "no token was asked for");

    // A key that does not exist, and a certificate that does not load: exit 2, naming them.
    let text = std::fs::read_to_string(&config).expect("read");
    let unknown = fakes.dir.path().join("unknown.toml");
    std::fs::write(
        &unknown,
        text.replacen("[upstream]\n", "[upstream]\nulr = 1\n", 1),
    )
    .expect("write");
    let not_a_certificate = fakes.dir.path().join("not-a-certificate.pem");
    std::fs::write(&not_a_certificate, "not PEM").expect("write");
    let bad_certificate = fakes.dir.path().join("bad-certificate.toml");
    std::fs::write(
        &bad_certificate,
        format!(
            "[identities.default]\ntenant_id = \"t\"\nclient_id = \"c\"\n\
             credential = {{ kind = \"client_certificate\", certificate_file = \"{}\" }}\n{}",
            not_a_certificate.display(),
            crate::harness::OPEN_ALLOW_ALL
        ),
    )
    .expect("write");
    for (file, named) in [
        (&unknown, "ulr"),
        (&bad_certificate, "not-a-certificate.pem"),
    ] {
        let bad = command(&[
            "--config",
            file.to_str().expect("utf-8"),
            "check",
            "--offline",
        ])
        .output()
        .await
        .expect("runs");
        assert_eq!(bad.status.code(), Some(2), "{}", file.display());
        let stderr = String::from_utf8_lossy(&bad.stderr);
        assert!(stderr.contains(named), "{stderr}");
    }
}
