//! Every credential kind end to end: the real proxy gets a token from the fake Entra ID (which
//! verifies client assertions and federated tokens cryptographically) and Azure DevOps receives
//! it; and what happens when Azure DevOps refuses a token the proxy believed valid.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::access::Keys;
use crate::harness::{Options, Stack};
use crate::support::devops::token_claims_of;
use crate::support::entra::{FakeEntra, USER_ASSIGNED_OBJECT_ID};
use crate::support::{self, fixtures};

const PROBE: &str = "/contoso/_apis/connectionData";

/// The path of a test fixture file, as it goes into a TOML string.
fn fixture(name: &str) -> String {
    fixtures::path(name).display().to_string()
}

async fn stack_with_credential(credential: String, no_wait: bool) -> Stack {
    Stack::start_with(Options {
        identities: Some(Box::new(move |entra| {
            entra.identity_toml_with("default", &credential)
        })),
        no_wait,
        ..Options::default()
    })
    .await
}

/// The claims of the token Azure DevOps received with the last request.
fn last_token_claims(stack: &Stack) -> Value {
    let requests = stack.devops.requests();
    let last = requests.last().expect("a request reached Azure DevOps");
    assert!(last.authorized, "Azure DevOps refused the token");
    token_claims_of(last).expect("a bearer JWT")
}

fn last_error(readyz: &Value) -> String {
    readyz["identities"][0]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn certificates_in_every_file_form_get_a_token_azure_devops_accepts() {
    let cases = [
        (
            format!(
                r#"{{ kind = "client_certificate", certificate_file = "{}" }}"#,
                fixture(fixtures::SP_CERT_AND_KEY)
            ),
            "PS256",
            false,
        ),
        (
            format!(
                r#"{{ kind = "client_certificate", certificate_file = "{}", private_key_file = "{}", algorithm = "RS256" }}"#,
                fixture(fixtures::SP_CERT),
                fixture(fixtures::SP_KEY_PK8)
            ),
            "RS256",
            false,
        ),
        (
            format!(
                r#"{{ kind = "client_certificate", certificate_file = "{}", private_key_file = "{}", send_x5c = true }}"#,
                fixture(fixtures::SP_CERT),
                fixture(fixtures::SP_KEY_RSA)
            ),
            "PS256",
            true,
        ),
        (
            format!(
                r#"{{ kind = "client_certificate", certificate_file = "{}" }}"#,
                fixture(fixtures::SP_P12)
            ),
            "PS256",
            false,
        ),
        (
            format!(
                r#"{{ kind = "client_certificate", certificate_file = "{}" }}"#,
                fixture(fixtures::SP_LEGACY_P12)
            ),
            "PS256",
            false,
        ),
    ];
    for (credential, alg, x5c) in cases {
        let stack = stack_with_credential(credential.clone(), false).await;
        let reply = support::get(&stack.url(PROBE), &[]).await;
        assert_eq!(reply.status, 200, "{credential}: {}", reply.text());
        let claims = last_token_claims(&stack);
        assert_eq!(claims["appid"], stack.entra.config().client_id.as_str());

        let (header, assertion) = stack.entra.last_assertion().expect("an assertion was sent");
        assert_eq!(header["alg"], alg, "{credential}");
        assert!(header["x5t#S256"].is_string() && header["x5t"].is_string());
        assert_eq!(header.get("x5c").is_some(), x5c, "{credential}: {header}");
        assert_eq!(assertion["aud"], stack.entra.token_url());
        let form = stack.entra.last_form().expect("a token request");
        assert!(
            !form.iter().any(|(k, _)| k == "client_secret"),
            "a certificate credential sends no secret"
        );
    }
}

#[tokio::test]
async fn a_forged_certificate_assertion_is_refused_and_readyz_says_why() {
    // A self-consistent pair that was never registered on the app registration.
    let credential = format!(
        r#"{{ kind = "client_certificate", certificate_file = "{}", private_key_file = "{}" }}"#,
        fixture(fixtures::FORGED_CERT),
        fixture(fixtures::FORGED_KEY_PK8)
    );
    let stack = stack_with_credential(credential, true).await;
    let readyz = stack
        .wait_for_readyz(|r| last_error(r).contains("AADSTS700027"))
        .await;
    let error = last_error(&readyz);
    assert!(error.contains("certificate is not registered"), "{error}");
    assert_eq!(readyz["ready"], false);
    assert_eq!(stack.entra.tokens_issued(), 0);
    let reply = support::get(&stack.url(PROBE), &[]).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert!(
        stack.devops.requests().is_empty(),
        "nothing reached Azure DevOps"
    );
}

#[tokio::test]
async fn a_missing_or_broken_certificate_fails_start_up_with_the_key() {
    /// The configuration is valid (the files exist); building the proxy must fail.
    async fn start_up_error(credential: String) -> String {
        let config = ado_auth_proxy::config::Config::from_toml(&format!(
            "[identities.default]\ntenant_id = \"t\"\nclient_id = \"c\"\ncredential = {credential}\n\
             [inbound]\nmode = \"open\"\nallow = [{{ methods = [\"GET\"], path = \"/**\" }}]\n\
             [listen]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n"
        ))
        .expect("valid config");
        match ado_auth_proxy::App::build(config).await {
            Ok(_) => panic!("{credential}: start-up must fail"),
            Err(error) => error.to_string(),
        }
    }
    let dir = tempfile::TempDir::new().expect("temp dir");
    // A missing file is caught with the configuration, before anything starts.
    let missing = dir.path().join("missing.pem");
    let message = ado_auth_proxy::config::Config::from_toml(&format!(
        "[identities.default]\ntenant_id = \"t\"\nclient_id = \"c\"\n\
         credential = {{ kind = \"client_certificate\", certificate_file = \"{}\" }}\n",
        missing.display()
    ))
    .expect_err("a missing certificate file")
    .to_string();
    assert!(
        message.contains("identities.default.credential.certificate_file")
            && message.contains("missing.pem"),
        "{message}"
    );
    let broken = dir.path().join("broken.pem");
    std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nnot base64\n").expect("write");
    let message = start_up_error(format!(
        r#"{{ kind = "client_certificate", certificate_file = "{}" }}"#,
        broken.display()
    ))
    .await;
    assert!(
        message.contains("identities.default.credential") && message.contains("broken.pem"),
        "{message}"
    );
    // The registered certificate with another pair's key: a half-done rotation.
    let message = start_up_error(format!(
        r#"{{ kind = "client_certificate", certificate_file = "{}", private_key_file = "{}" }}"#,
        fixture(fixtures::SP_CERT),
        fixture(fixtures::FORGED_KEY_PK8)
    ))
    .await;
    assert!(
        message.contains("does not belong to the certificate") && message.contains("forged-key"),
        "{message}"
    );
}

#[tokio::test]
async fn a_rotated_federated_token_file_is_read_at_the_next_refresh() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let token_file = dir.path().join("azure-identity-token");
    let credential = format!(
        r#"{{ kind = "workload_identity", token_file = "{}" }}"#,
        token_file.display()
    );
    // The fake's federated trust is only known once it runs: write the file when the config is
    // written, before the proxy starts and fetches, then check the token it leads to.
    let stack = Stack::start_with(Options {
        identities: Some(Box::new(move |entra| {
            std::fs::write(&token_file, entra.federated_token()).expect("write token file");
            entra.identity_toml_with("default", &credential)
        })),
        token_lifetime_secs: Some(4),
        ..Options::default()
    })
    .await;
    let reply = support::get(&stack.url(PROBE), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let first_jti = stack.entra.last_assertion().expect("assertion").1["jti"].clone();

    let rotated = stack.entra.federated_token();
    let rotated_jti = support::assertion::decode_unverified(&rotated)
        .expect("a JWT")
        .1["jti"]
        .clone();
    assert_ne!(first_jti, rotated_jti);
    let token_file = dir.path().join("azure-identity-token");
    std::fs::write(&token_file, &rotated).expect("rotate");
    let deadline = Instant::now() + Duration::from_secs(8);
    while stack.entra.last_assertion().expect("assertion").1["jti"] != rotated_jti {
        assert!(
            Instant::now() < deadline,
            "the rotated token was never used"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reply = support::get(&stack.url(PROBE), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    // A token for another subject is refused with the federated-credential hint.
    std::fs::write(
        &token_file,
        stack
            .entra
            .federated_token_with(serde_json::json!({"sub": "system:serviceaccount:other:app"})),
    )
    .expect("rotate");
    let readyz = stack
        .wait_for_readyz(|r| last_error(r).contains("AADSTS70021"))
        .await;
    assert!(
        last_error(&readyz).contains("no federated credential matches"),
        "{readyz}"
    );
}

#[tokio::test]
async fn a_rotated_secret_file_is_read_at_the_next_attempt() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let secret_file = dir.path().join("client-secret");
    std::fs::write(&secret_file, "the-old-secret-that-was-revoked\n").expect("write");
    let credential = format!(
        r#"{{ kind = "client_secret", secret_file = "{}" }}"#,
        secret_file.display()
    );
    let stack = stack_with_credential(credential, true).await;
    let readyz = stack
        .wait_for_readyz(|r| last_error(r).contains("AADSTS7000215"))
        .await;
    assert_eq!(readyz["ready"], false);
    std::fs::write(
        &secret_file,
        format!("{}\n", stack.entra.config().client_secret),
    )
    .expect("rotate");
    stack.wait_for_readyz(|r| r["ready"] == true).await;
    let reply = support::get(&stack.url(PROBE), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

fn managed_identity(endpoint: &str, extra: &str) -> String {
    format!(
        "[identities.default]\n{extra}credential = {{ kind = \"managed_identity\", endpoint = \"{endpoint}\" }}\n"
    )
}

#[tokio::test]
async fn managed_identity_from_imds_and_from_app_service() {
    // IMDS, a user-assigned identity picked by its client id.
    let stack = Stack::start_with(Options {
        identities: Some(Box::new(|entra| {
            managed_identity(
                &entra.imds_url(),
                &format!(
                    "client_id = \"{}\"\n",
                    entra.config().user_assigned_client_id
                ),
            )
        })),
        ..Options::default()
    })
    .await;
    let reply = support::get(&stack.url(PROBE), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let claims = last_token_claims(&stack);
    assert_eq!(
        claims["appid"],
        stack.entra.config().user_assigned_client_id.as_str()
    );
    assert_eq!(claims["oid"], USER_ASSIGNED_OBJECT_ID);
    assert_eq!(
        stack.entra.token_requests(),
        0,
        "no client credentials grant"
    );
    let asked = stack.entra.managed_identity_requests();
    assert!(asked >= 1);
    // IMDS hands out its cached token again, so a refusal forces no fetch: 502 at once.
    stack.devops.revoke_seen_tokens();
    let reply = support::get(&stack.url(PROBE), &[]).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(stack.entra.managed_identity_requests(), asked);

    // App Service: the system-assigned identity, proven by the identity header.
    let stack = Stack::start_with(Options {
        identities: Some(Box::new(|entra| {
            format!(
                "[identities.default]\ncredential = {{ kind = \"managed_identity\", endpoint = \"{}\", identity_header = \"{}\" }}\n",
                entra.app_service_url(),
                entra.identity_header()
            )
        })),
        ..Options::default()
    })
    .await;
    let reply = support::get(&stack.url(PROBE), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let claims = last_token_claims(&stack);
    assert_eq!(
        claims["appid"],
        stack.entra.config().managed_identity_client_id.as_str()
    );
    let readyz = stack.readyz().await.text();
    assert!(!readyz.contains(stack.entra.identity_header()), "{readyz}");
}

#[tokio::test]
async fn an_unknown_managed_identity_is_reported_and_not_hammered() {
    let stack = Stack::start_with(Options {
        identities: Some(Box::new(|entra| {
            managed_identity(
                &entra.imds_url(),
                "client_id = \"99999999-9999-9999-9999-999999999999\"\n",
            )
        })),
        no_wait: true,
        ..Options::default()
    })
    .await;
    let readyz = stack
        .wait_for_readyz(|r| last_error(r).contains("Identity not found"))
        .await;
    // A 400 from IMDS does not change by retrying: the next attempt is a minute away, not 1 s.
    let next = readyz["identities"][0]["next_refresh_in_seconds"]
        .as_u64()
        .expect("next attempt scheduled");
    assert!(next >= 50, "{readyz}");
    // Longer than the 1 s first back-off: a refresher retrying too soon would have asked again.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(stack.entra.managed_identity_requests(), 1);
}

#[tokio::test]
async fn two_clients_acting_as_two_identities_send_two_tokens() {
    let keys = Keys::new();
    let hash = Keys::hash;
    let access = format!(
        r#"
        [inbound]
        mode = "keys"

        [[clients]]
        name = "app"
        key_sha256 = "{}"
        identity = "app"
        allow = [{{ methods = ["GET"], path = "/contoso/**" }}]

        [[clients]]
        name = "vm"
        key_sha256 = "{}"
        identity = "vm"
        allow = [{{ methods = ["GET"], path = "/contoso/**" }}]
        "#,
        hash(&keys.reader),
        hash(&keys.writer)
    );
    let stack = Stack::start_with(Options {
        identities: Some(Box::new(|entra| {
            let secret = format!(r#"{{ kind = "client_secret", secret = "{}" }}"#, entra.config().client_secret);
            format!(
                "{}[identities.vm]\ncredential = {{ kind = \"managed_identity\", endpoint = \"{}\" }}\n",
                entra.identity_toml_with("app", &secret),
                entra.imds_url()
            )
        })),
        access_toml: access,
        ..Options::default()
    })
    .await;
    let mut seen = Vec::new();
    for key in [&keys.reader, &keys.writer] {
        let auth = format!("Bearer {key}");
        let reply = support::get(&stack.url(PROBE), &[("authorization", &auth)]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let last = stack.devops.requests().pop().expect("forwarded");
        seen.push((
            last.headers["authorization"].clone(),
            token_claims_of(&last).expect("JWT")["appid"].clone(),
        ));
    }
    assert_ne!(seen[0].0, seen[1].0, "two identities, two tokens");
    assert_eq!(seen[0].1, stack.entra.config().client_id.as_str());
    assert_eq!(
        seen[1].1,
        stack.entra.config().managed_identity_client_id.as_str()
    );
    let readyz = stack.readyz().await.json();
    let names: Vec<_> = readyz["identities"]
        .as_array()
        .expect("identities")
        .iter()
        .map(|i| i["identity"].clone())
        .collect();
    assert_eq!(names, ["app", "vm"]);
    for identity in readyz["identities"].as_array().expect("identities") {
        assert_eq!(identity["token"], "valid", "{identity}");
        assert!(
            identity["valid_until"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z')),
            "{identity}"
        );
        assert!(identity["next_refresh_in_seconds"].as_u64().is_some());
    }
}

const TOKEN_REFUSED: &str = r#"ado_auth_proxy_upstream_errors_total{kind="token_refused"}"#;

#[tokio::test]
async fn a_refused_token_is_renewed_and_a_get_and_a_small_post_are_replayed() {
    let stack = Stack::start().await;
    let reply = support::get(&stack.url(PROBE), &[]).await;
    assert_eq!(reply.status, 200);
    let issued = stack.entra.tokens_issued();

    stack.devops.revoke_seen_tokens();
    let reply = support::get(
        &stack.url(PROBE),
        &[
            ("accept", "application/json"),
            ("x-tfs-session", "first"),
            ("x-tfs-session", "second"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        stack.entra.tokens_issued(),
        issued + 1,
        "one forced refresh"
    );
    let requests = stack.devops.requests();
    let [.., refused, replayed] = requests.as_slice() else {
        panic!("two attempts expected")
    };
    assert!(!refused.authorized && replayed.authorized);
    assert_eq!(refused.uri, replayed.uri);
    assert_ne!(
        refused.headers["authorization"],
        replayed.headers["authorization"]
    );
    // Everything but the token is sent again as it was, repeated values in their order.
    let without_token = |headers: &http::HeaderMap| {
        let mut headers = headers.clone();
        headers.remove("authorization");
        headers
    };
    assert_eq!(
        without_token(&refused.headers),
        without_token(&replayed.headers)
    );
    let sessions: Vec<_> = replayed.headers.get_all("x-tfs-session").iter().collect();
    assert_eq!(sessions, ["first", "second"]);

    // A second stack: forced refreshes are debounced per identity, so each case gets its own.
    let stack = Stack::start().await;
    let reply = support::get(&stack.url(PROBE), &[]).await;
    assert_eq!(reply.status, 200);
    stack.devops.revoke_seen_tokens();
    let body = vec![b'p'; 4096];
    let reply = support::request(
        "POST",
        &stack.url("/_test/echo"),
        &[("content-type", "application/octet-stream")],
        body,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.json()["body_bytes"],
        4096,
        "the replay carried the whole body"
    );
    assert_eq!(
        stack.metric(TOKEN_REFUSED).await as u64,
        0,
        "the client never saw a refusal"
    );
}

#[tokio::test]
async fn a_refused_token_with_a_streamed_body_gives_502_and_renews_for_the_next_request() {
    let stack = Stack::start().await;
    assert_eq!(support::get(&stack.url(PROBE), &[]).await.status, 200);
    stack.devops.revoke_seen_tokens();
    // Larger than upstream.max_replay_body_bytes (64 KiB): streamed, not kept.
    let reply = support::request(
        "POST",
        &stack.url("/_test/echo"),
        &[],
        vec![b'x'; 200 * 1024],
    )
    .await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(reply.json()["error"], "bad_gateway");
    assert!(
        reply
            .text()
            .contains("refused the service principal's token")
    );
    assert!(reply.header("www-authenticate").is_none());
    assert_eq!(stack.metric(TOKEN_REFUSED).await as u64, 1);
    // The renewal started in the background; the next request goes out with the new token.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = support::get(&stack.url(PROBE), &[]).await;
        if reply.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never renewed: {}", reply.text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_principal_azure_devops_keeps_refusing_gets_502_without_a_password_prompt() {
    let stack = Stack::start().await;
    stack.devops.set_members(Some(Vec::new()));
    let reply = support::get(
        &stack.url("/contoso/web/_git/web/info/refs?service=git-upload-pack"),
        &[],
    )
    .await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert!(reply.text().contains("freshly issued"), "{}", reply.text());
    assert!(reply.header("www-authenticate").is_none());
    assert_eq!(
        stack.entra.tokens_issued(),
        2,
        "one forced refresh, no more"
    );
    // Debounced: within 30 s another refusal forces no further refresh.
    let reply = support::get(&stack.url(PROBE), &[]).await;
    assert_eq!(reply.status, 502);
    assert_eq!(stack.entra.tokens_issued(), 2);
    assert_eq!(stack.metric(TOKEN_REFUSED).await as u64, 2);
}

#[tokio::test]
async fn check_reads_github_actions_oidc_and_asks_azure_devops_who_it_is() {
    let entra = FakeEntra::start(Default::default()).await;
    let dir = tempfile::TempDir::new().expect("temp dir");
    let devops = crate::support::devops::FakeDevOps::start(crate::support::devops::DevOpsConfig {
        signing_key: entra.config().signing_key.clone(),
        git_root: dir.path().join("git"),
    })
    .await;
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[upstream]\nurl = \"{}\"\n{}",
            devops.url(),
            entra.identity_toml_with(
                "default",
                r#"{ kind = "workload_identity", source = "github_actions" }"#
            )
        ),
    )
    .expect("write config");
    let run = |organization: &str| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ado-auth-proxy"));
        command
            .args([
                "--config",
                &config.display().to_string(),
                "check",
                "--organization",
                organization,
            ])
            .env("ACTIONS_ID_TOKEN_REQUEST_URL", entra.github_request_url())
            .env(
                "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
                entra.github_request_token(),
            )
            .env_remove("RUST_LOG");
        command
    };
    let output = run("contoso").output().await.expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("workload identity, GitHub Actions"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Azure DevOps: authenticated as"),
        "{stdout}"
    );
    assert!(
        stdout.contains(crate::support::entra::OBJECT_ID),
        "{stdout}"
    );
    assert_eq!(entra.github_requests(), 1);
    assert!(!stdout.contains("eyJ"), "a token was printed: {stdout}");
    assert!(!stdout.contains(entra.github_request_token()), "{stdout}");

    devops.set_members(Some(Vec::new()));
    let output = run("contoso").output().await.expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    assert!(
        stdout.contains("TF400813") && stdout.contains("not a member"),
        "{stdout}"
    );
    devops.set_members(None);
    let asked = devops.requests().len();
    let output = run("_bad/org").output().await.expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success());
    assert!(
        stdout.contains("`_bad/org` is not an organization name"),
        "{stdout}"
    );
    assert_eq!(devops.requests().len(), asked, "nothing was sent upstream");
}
