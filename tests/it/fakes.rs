//! Self-tests of the fakes, over real sockets: if these fail, no proxy test result means anything.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer};

use crate::support::assertion::{
    self, Alg, JWT_BEARER, RsaSigner, assertion_claims, certificate_header, x5c_entry, x5t,
    x5t_s256,
};
use crate::support::devops::{DevOpsConfig, FakeDevOps, is_pattern, token_claims_of};
use crate::support::entra::{
    DEVOPS_RESOURCE, DEVOPS_SCOPE, EntraConfig, EntraMode, FEDERATED_AUDIENCE, FakeEntra,
    OBJECT_ID, SYSTEM_ASSIGNED_OBJECT_ID, USER_ASSIGNED_OBJECT_ID, token_claims,
};
use crate::support::{self, Reply, body_channel, fixtures, form_encode, get, jwt, request};

const MIB: u64 = 1024 * 1024;

struct Fakes {
    entra: FakeEntra,
    devops: FakeDevOps,
    root: tempfile::TempDir,
}

async fn fakes() -> Fakes {
    let root = tempfile::tempdir().expect("tempdir for git repos");
    let entra = FakeEntra::start(EntraConfig::default()).await;
    let devops = FakeDevOps::start(DevOpsConfig {
        signing_key: entra.config().signing_key.clone(),
        git_root: root.path().to_owned(),
    })
    .await;
    Fakes {
        entra,
        devops,
        root,
    }
}

impl Fakes {
    fn token(&self) -> String {
        let cfg = self.entra.config();
        jwt::sign(&token_claims(cfg, 600, "test"), &cfg.signing_key)
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token())
    }

    async fn devops_get(&self, path: &str) -> Reply {
        let auth = self.bearer();
        get(
            &format!("{}{path}", self.devops.url()),
            &[("authorization", &auth)],
        )
        .await
    }
}

async fn post_token(entra: &FakeEntra, tenant: &str, form: &[(&str, &str)]) -> Reply {
    request(
        "POST",
        &format!("{}/{tenant}/oauth2/v2.0/token", entra.authority()),
        &[("content-type", "application/x-www-form-urlencoded")],
        form_encode(form),
    )
    .await
}

fn good_form(cfg: &EntraConfig) -> Vec<(&str, &str)> {
    vec![
        ("grant_type", "client_credentials"),
        ("client_id", &cfg.client_id),
        ("client_secret", &cfg.client_secret),
        ("scope", DEVOPS_SCOPE),
    ]
}

fn assert_entra_error(reply: &Reply, status: u16, error: &str, code: u64) {
    assert_eq!(reply.status.as_u16(), status, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["error"], error);
    assert_eq!(body["error_codes"], json!([code]));
    let description = body["error_description"].as_str().expect("description");
    assert!(
        description.starts_with(&format!("AADSTS{code}: ")),
        "{description}"
    );
    assert!(description.contains("Trace ID: "), "{description}");
    assert!(body["trace_id"].is_string() && body["correlation_id"].is_string());
}

#[test]
fn jwt_round_trips_and_refuses_forgeries() {
    let claims = json!({ "exp": jwt::now() + 60, "aud": "x" });
    let token = jwt::sign(&claims, b"key");
    assert_eq!(jwt::verify(&token, b"key").expect("valid token"), claims);
    assert!(jwt::verify(&token, b"other key").is_err());

    let (head, rest) = token.split_once('.').expect("three parts");
    let (_, sig) = rest.split_once('.').expect("three parts");
    let forged_payload = jwt::sign(&json!({ "exp": jwt::now() + 60, "aud": "y" }), b"x");
    let forged_payload = forged_payload.split('.').nth(1).expect("payload");
    assert!(jwt::verify(&format!("{head}.{forged_payload}.{sig}"), b"key").is_err());

    let none_header = "eyJhbGciOiJub25lIn0"; // {"alg":"none"}
    let payload = rest.split('.').next().expect("payload");
    let unsigned = format!("{none_header}.{payload}.");
    assert!(
        jwt::verify(&unsigned, b"key")
            .expect_err("alg none")
            .contains("HS256")
    );

    let expired = jwt::sign(&json!({ "exp": jwt::now() - 1 }), b"key");
    assert!(
        jwt::verify(&expired, b"key")
            .expect_err("expired")
            .contains("expired")
    );
}

#[test]
fn form_decoding_handles_plus_and_percent() {
    let encoded = form_encode(&[("a b", "x+y/z%&="), ("scope", DEVOPS_SCOPE)]);
    assert_eq!(
        support::parse_form(&encoded),
        vec![
            ("a b".to_owned(), "x+y/z%&=".to_owned()),
            ("scope".to_owned(), DEVOPS_SCOPE.to_owned()),
        ]
    );
    assert_eq!(
        support::parse_form("k=%zz%4"),
        vec![("k".into(), "%zz%4".into())]
    );
}

#[tokio::test]
async fn entra_issues_distinct_verifiable_tokens() {
    let entra = FakeEntra::start(EntraConfig {
        client_secret: "s3cr+t with spaces/&=".into(),
        ..EntraConfig::default()
    })
    .await;
    let cfg = entra.config();
    let first = post_token(&entra, &cfg.tenant_id, &good_form(cfg)).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    let body = first.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["ext_expires_in"], 3600);
    let token = body["access_token"].as_str().expect("access_token");
    let claims = jwt::verify(token, &cfg.signing_key).expect("token verifies");
    assert_eq!(claims["aud"], "499b84ac-1321-427f-aa17-267ca6975798");
    assert_eq!(claims["appid"], cfg.client_id.as_str());
    assert_eq!(claims["tid"], cfg.tenant_id.as_str());
    assert_eq!(claims["oid"], OBJECT_ID);
    assert_eq!(
        claims["iss"],
        format!("https://sts.windows.net/{}/", cfg.tenant_id)
    );
    assert_eq!(
        claims["exp"].as_u64(),
        claims["iat"].as_u64().map(|t| t + 3600)
    );

    entra.set_lifetime(120);
    let second = post_token(&entra, &cfg.tenant_id, &good_form(cfg))
        .await
        .json();
    assert_eq!(second["expires_in"], 120);
    assert_ne!(second["access_token"], body["access_token"]);
    assert_eq!((entra.token_requests(), entra.tokens_issued()), (2, 2));
    let form = entra.last_form().expect("a form was received");
    assert!(form.contains(&("grant_type".into(), "client_credentials".into())));
    assert!(form.contains(&("client_secret".into(), cfg.client_secret.clone())));
}

#[tokio::test]
async fn entra_refuses_like_entra() {
    let entra = FakeEntra::start(EntraConfig::default()).await;
    let cfg = entra.config();
    let tenant = cfg.tenant_id.as_str();
    let with = |name: &'static str, value: &'static str| {
        let mut form = good_form(cfg);
        form.iter_mut()
            .filter(|(k, _)| *k == name)
            .for_each(|f| f.1 = value);
        form
    };

    let reply = post_token(&entra, tenant, &with("client_secret", "wrong")).await;
    assert_entra_error(&reply, 401, "invalid_client", 7000215);
    let reply = post_token(&entra, "no-such-tenant", &good_form(cfg)).await;
    assert_entra_error(&reply, 400, "invalid_request", 90002);
    let reply = post_token(&entra, tenant, &with("grant_type", "password")).await;
    assert_entra_error(&reply, 400, "unsupported_grant_type", 70003);
    let reply = post_token(&entra, tenant, &with("client_id", "someone-else")).await;
    assert_entra_error(&reply, 400, "unauthorized_client", 700016);
    let reply = post_token(
        &entra,
        tenant,
        &with("scope", "https://graph.microsoft.com/.default"),
    )
    .await;
    assert_entra_error(&reply, 400, "invalid_scope", 70011);
    let reply = get(&entra.token_url(), &[]).await;
    assert_entra_error(&reply, 400, "invalid_request", 900561);

    assert_eq!((entra.token_requests(), entra.tokens_issued()), (5, 0));
}

#[tokio::test]
async fn entra_modes_inject_failures() {
    let entra = FakeEntra::start(EntraConfig::default()).await;
    let cfg = entra.config();
    let form = good_form(cfg);
    let fetch = || post_token(&entra, &cfg.tenant_id, &form);

    entra.set_mode(EntraMode::Fail {
        status: 400,
        code: "AADSTS7000222".into(),
    });
    assert_entra_error(&fetch().await, 400, "invalid_client", 7000222);

    entra.set_mode(EntraMode::Garbage);
    let reply = fetch().await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (StatusCode::OK, "<html>not json")
    );

    entra.set_mode(EntraMode::Throttle {
        retry_after_secs: 60,
    });
    let reply = fetch().await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.header("retry-after"), Some("60"));

    entra.set_mode(EntraMode::ExpiresIn(json!("3599")));
    let body = fetch().await.json();
    assert_eq!(body["expires_in"], "3599");
    jwt::verify(
        body["access_token"].as_str().expect("token"),
        &cfg.signing_key,
    )
    .expect("still a real token");

    entra.set_mode(EntraMode::AccessToken(json!("bad\ntoken")));
    assert_eq!(fetch().await.json()["access_token"], "bad\ntoken");

    entra.set_mode(EntraMode::Hang);
    let hung = tokio::time::timeout(Duration::from_millis(300), fetch()).await;
    assert!(hung.is_err(), "Hang mode answered");

    entra.set_mode(EntraMode::Normal);
    assert_eq!(fetch().await.status, StatusCode::OK);
    assert_eq!((entra.token_requests(), entra.tokens_issued()), (7, 2));
}

#[tokio::test]
async fn devops_admits_only_valid_tokens_and_records_everything() {
    let f = fakes().await;
    let url = format!("{}/contoso/_apis/projects", f.devops.url());
    let cfg = f.entra.config();
    let signed = |claims: Value, key: &[u8]| format!("Bearer {}", jwt::sign(&claims, key));
    let mut wrong_aud = token_claims(cfg, 600, "t");
    wrong_aud["aud"] = json!("https://management.azure.com/");
    let mut expired = token_claims(cfg, 600, "t");
    expired["exp"] = json!(jwt::now() - 5);
    let refused = [
        None,
        Some(signed(token_claims(cfg, 600, "t"), b"another key")),
        Some(signed(wrong_aud, &cfg.signing_key)),
        Some(signed(expired, &cfg.signing_key)),
        Some(format!("Basic {}", f.token())),
    ];
    for auth in &refused {
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let reply = get(&url, &headers).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(
            reply.header("www-authenticate"),
            Some("Bearer authorization_uri=https://login.microsoftonline.com/common")
        );
    }

    let reply = f
        .devops_get("/contoso/_apis/projects?api-version=7.1")
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert_eq!(body["count"], 1);
    assert_eq!(body["value"][0]["name"], "web");
    assert_eq!(
        body["value"][0]["url"],
        format!("{}/contoso/_apis/projects/web", f.devops.url())
    );

    let auth = f.bearer();
    let echo = request(
        "POST",
        &format!("{}/_test/echo?a=%2F&b", f.devops.url()),
        &[("authorization", &auth), ("x-multi", "1"), ("x-multi", "2")],
        vec![0u8; 1000],
    )
    .await
    .json();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["uri"], "/_test/echo?a=%2F&b");
    assert_eq!(echo["headers"]["x-multi"], json!(["1", "2"]));
    assert_eq!(echo["body_bytes"], 1000);

    let recorded = f.devops.requests();
    assert_eq!(recorded.len(), 7);
    assert_eq!(
        recorded.iter().map(|r| r.authorized).collect::<Vec<_>>(),
        [false, false, false, false, false, true, true]
    );
    let last = &recorded[6];
    assert_eq!(
        (last.method.as_str(), last.uri.as_str()),
        ("POST", "/_test/echo?a=%2F&b")
    );
    assert_eq!(last.body_bytes, 1000);
    assert_eq!(last.headers["authorization"], auth.as_str());
}

#[tokio::test]
async fn devops_rest_and_test_routes() {
    let f = fakes().await;
    for path in ["/_apis/connectionData", "/contoso/_apis/connectionData"] {
        let body = f.devops_get(path).await.json();
        assert_eq!(body["authenticatedUser"]["id"], OBJECT_ID);
        assert_eq!(
            body["authenticatedUser"]["providerDisplayName"],
            f.entra.config().client_id.as_str()
        );
    }

    let reply = f.devops_get("/_test/status/429").await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.header("retry-after"), Some("7"));
    assert_eq!(reply.header("x-ratelimit-remaining"), Some("0"));
    let reply = f.devops_get("/_test/status/204").await;
    assert_eq!(
        (reply.status, reply.body.len()),
        (StatusCode::NO_CONTENT, 0)
    );
    assert_eq!(
        f.devops_get("/_test/status/503").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let reply = f.devops_get("/_test/redirect").await;
    assert_eq!(reply.status, StatusCode::FOUND);
    assert_eq!(
        reply.header("location"),
        Some("https://example.blob.core.windows.net/x?sig=abc")
    );

    let started = Instant::now();
    assert_eq!(f.devops_get("/_test/slow?ms=200").await.text(), "slow");
    assert!(started.elapsed() >= Duration::from_millis(200));

    assert_eq!(
        f.devops_get("/nothing/here").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        f.devops_get("/_test/upload").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn devops_hop_by_hop_headers_reach_the_wire() {
    let f = fakes().await;
    let mut stream = tokio::net::TcpStream::connect(f.devops.addr())
        .await
        .expect("connect");
    let head = format!(
        "GET /_test/hop-by-hop HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\r\n",
        f.bearer()
    );
    stream.write_all(head.as_bytes()).await.expect("send");
    let mut raw = String::new();
    // The server closes after this response because of its own `Connection: close`.
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_string(&mut raw))
        .await
        .expect("server closed the connection")
        .expect("read");
    let raw = raw.to_ascii_lowercase();
    for line in [
        "connection: close, x-secret-hop",
        "x-secret-hop: 1",
        "keep-alive: timeout=5",
        "proxy-connection: keep-alive",
        "proxy-authenticate: basic",
        "set-cookie: session=sp-session",
        "upgrade: h2c",
        "trailer: x-trailer",
        "x-normal: kept",
    ] {
        assert!(
            raw.contains(&format!("\r\n{line}\r\n")),
            "{line} missing in:\n{raw}"
        );
    }
    assert!(raw.ends_with("\r\n\r\nok"), "{raw}");
}

#[tokio::test]
async fn devops_download_streams_the_pattern_and_honours_the_gate() {
    let f = fakes().await;
    let auth = f.bearer();
    let open = |path: String| {
        let req = Request::get(format!("{}{path}", f.devops.url()))
            .header("authorization", &auth)
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("request");
        support::send(req)
    };

    let total = 3 * MIB + 12345;
    let res = open(format!("/_test/download?bytes={total}&gate=1"))
        .await
        .expect("download");
    assert_eq!(res.headers()["content-length"], total.to_string().as_str());
    let mut body = res.into_body();
    let mut received = 0u64;
    while received < MIB {
        let frame = body.frame().await.expect("more body").expect("body ok");
        let data = frame.into_data().expect("data frame");
        assert!(is_pattern(received, &data));
        received += data.len() as u64;
    }
    assert_eq!(received, MIB);
    let stalled = tokio::time::timeout(Duration::from_millis(300), body.frame()).await;
    assert!(stalled.is_err(), "gated download went past 1 MiB");
    assert_eq!(f.devops.download_bytes_sent(), MIB);

    f.devops.release_download();
    while let Some(frame) = body.frame().await {
        let data = frame.expect("body ok").into_data().expect("data frame");
        assert!(is_pattern(received, &data));
        received += data.len() as u64;
    }
    assert_eq!(received, total);

    let res = open("/_test/truncate?bytes=200000".into())
        .await
        .expect("truncate");
    assert_eq!(res.headers()["content-length"], "200000");
    assert!(
        res.into_body().collect().await.is_err(),
        "truncated body read as complete"
    );
}

#[tokio::test]
async fn devops_upload_counts_bytes_while_they_stream() {
    let f = fakes().await;
    let (tx, body) = body_channel(1);
    let req = Request::put(format!("{}/_test/upload", f.devops.url()))
        .header("authorization", f.bearer())
        .body(body)
        .expect("request");
    let response = tokio::spawn(support::send(req));

    tx.send(Ok(Bytes::from(vec![1u8; MIB as usize])))
        .await
        .expect("send first MiB");
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.devops.upload_bytes_received() < MIB {
        assert!(Instant::now() < deadline, "first MiB never counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tx.send(Ok(Bytes::from(vec![2u8; MIB as usize])))
        .await
        .expect("send second MiB");
    drop(tx);

    let res = response.await.expect("join").expect("upload answered");
    let body = res.into_body().collect().await.expect("body").to_bytes();
    let body: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(body["bytes"], 2 * MIB);
    assert_eq!(f.devops.upload_bytes_received(), 2 * MIB);
    assert_eq!(f.devops.requests()[0].body_bytes, 2 * MIB);
}

async fn git(home: &Path, cwd: &Path, args: &[&str]) -> Output {
    git_with_env(home, cwd, args, &[]).await
}

async fn git_with_env(home: &Path, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    tokio::process::Command::new("git")
        .args([
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.invalid",
        ])
        .args(args)
        .current_dir(cwd)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_ASKPASS")
        .env_remove("SSH_ASKPASS")
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run git")
}

async fn git_ok(home: &Path, cwd: &Path, args: &[&str]) -> String {
    let out = git(home, cwd, args).await;
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn git_clone_and_push_against_fake_devops() {
    let f = fakes().await;
    f.devops.create_repo("contoso", "web", "web");
    let home = tempfile::tempdir().expect("home");
    let (home, work) = (home.path(), f.root.path());
    let url = format!("{}/contoso/web/_git/web", f.devops.url());
    let auth = format!("http.extraheader=Authorization: {}", f.bearer());

    let anonymous = git(home, work, &["clone", &url, "anon"]).await;
    assert!(!anonymous.status.success());
    let stderr = String::from_utf8_lossy(&anonymous.stderr);
    assert!(stderr.contains("could not read Username"), "{stderr}");

    git_ok(home, work, &["-c", &auth, "clone", &url, "one"]).await;
    let one = work.join("one");
    let readme = std::fs::read_to_string(one.join("README.md")).expect("README.md cloned");
    assert!(readme.starts_with("# web"));

    // Incompressible and above http.postBuffer, so git pushes with chunked encoding.
    let blob: Vec<u8> = std::iter::repeat_with(|| fastrand::u8(..))
        .take(3 << 20)
        .collect();
    std::fs::write(one.join("blob.bin"), &blob).expect("write blob");
    git_ok(home, &one, &["add", "blob.bin"]).await;
    git_ok(home, &one, &["commit", "-q", "-m", "add blob"]).await;
    git_ok(home, &one, &["-c", &auth, "push", "origin", "main"]).await;

    git_ok(home, work, &["-c", &auth, "clone", &url, "two"]).await;
    let pushed = std::fs::read(work.join("two/blob.bin")).expect("pushed blob cloned back");
    assert!(pushed == blob, "blob differs after a round trip");
    let log = git_ok(home, &work.join("two"), &["log", "--format=%s"]).await;
    assert_eq!(log, "add blob\nInitial commit\n");

    // Enough local-only commits that the fetch negotiation exceeds 1 KiB of "have" lines, which
    // git sends gzip-compressed (Content-Encoding: gzip) for http-backend to inflate. Dated
    // after everything else: git offers the newest commits first, and one in the same second as
    // the common commit could be offered after it, ending the negotiation in its first round.
    let two = work.join("two");
    for i in 0..40 {
        let message = format!("local {i}");
        let date = format!("@{} +0000", 4_000_000_000u64 + i);
        let out = git_with_env(
            home,
            &two,
            &["commit", "-q", "--allow-empty", "-m", &message],
            &[("GIT_COMMITTER_DATE", &date), ("GIT_AUTHOR_DATE", &date)],
        )
        .await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    git_ok(
        home,
        &one,
        &["commit", "-q", "--allow-empty", "-m", "remote"],
    )
    .await;
    git_ok(home, &one, &["-c", &auth, "push", "-q", "origin", "main"]).await;
    git_ok(home, &two, &["-c", &auth, "fetch", "-q", "origin"]).await;
    let fetched = git_ok(home, &two, &["log", "-1", "--format=%s", "origin/main"]).await;
    assert_eq!(fetched, "remote\n");

    // git probes with a 4-byte POST before a chunked push; the blob push is the biggest one.
    let requests = f.devops.requests();
    let push = requests
        .iter()
        .filter(|r| r.uri.ends_with("/git-receive-pack"))
        .max_by_key(|r| r.body_bytes)
        .expect("a receive-pack request");
    assert!(push.authorized);
    assert!(push.body_bytes >= 3 << 20);
    assert!(
        push.headers.get("content-length").is_none(),
        "push was not chunked"
    );
    assert!(
        requests.iter().any(|r| r.uri.ends_with("/git-upload-pack")
            && r.headers
                .get("content-encoding")
                .is_some_and(|v| v == "gzip")),
        "no gzip-encoded upload-pack request"
    );
}

// Client assertions, managed identities, GitHub OIDC and the upstream's refusals.

fn assertion_form<'a>(cfg: &'a EntraConfig, client_assertion: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", "client_credentials"),
        ("client_id", &cfg.client_id),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", client_assertion),
        ("scope", DEVOPS_SCOPE),
    ]
}

async fn post_assertion(entra: &FakeEntra, client_assertion: &str) -> Reply {
    let cfg = entra.config();
    post_token(
        entra,
        &cfg.tenant_id,
        &assertion_form(cfg, client_assertion),
    )
    .await
}

/// The access token of a successful token-endpoint answer, after checking it is one.
fn access_token(reply: &Reply) -> String {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()["access_token"]
        .as_str()
        .expect("access_token is a string")
        .to_owned()
}

async fn devops_with(devops: &FakeDevOps, token: &str) -> Reply {
    get(
        &format!("{}/contoso/_apis/projects", devops.url()),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

fn assert_description_contains(reply: &Reply, text: &str) {
    let body = reply.json();
    let description = body["error_description"].as_str().unwrap_or_default();
    assert!(
        description.contains(text),
        "{text:?} not in {description:?}"
    );
}

#[test]
fn fixtures_hold_one_key_in_every_format() {
    let cert = fixtures::sp_cert_der();
    let public_key = RsaSigner::sp().public_key_der();
    // The certificate's SubjectPublicKeyInfo wraps exactly this RSAPublicKey DER.
    assert!(
        cert.windows(public_key.len()).any(|w| w == public_key),
        "sp-cert.pem is not the certificate of sp-key.pk8.pem"
    );
    let pkcs1 = PrivatePkcs1KeyDer::from_pem_file(fixtures::path(fixtures::SP_KEY_RSA))
        .expect("sp-key.rsa.pem is PKCS#1");
    let from_pkcs1 =
        ring::signature::RsaKeyPair::from_der(pkcs1.secret_pkcs1_der()).expect("RSA key");
    assert_eq!(from_pkcs1.public().as_ref(), public_key.as_slice());
    assert_ne!(RsaSigner::forged().public_key_der(), public_key);

    let combined = std::fs::read(fixtures::path(fixtures::SP_CERT_AND_KEY)).expect("read");
    let combined_cert =
        CertificateDer::from_pem_slice(&combined).expect("certificate in the combined file");
    assert_eq!(combined_cert.as_ref(), cert.as_slice());
    let combined_key =
        PrivatePkcs8KeyDer::from_pem_slice(&combined).expect("PKCS#8 key in the combined file");
    assert_eq!(
        combined_key.secret_pkcs8_der(),
        fixtures::sp_key_pkcs8().as_slice()
    );
    for p12 in [fixtures::SP_P12, fixtures::SP_LEGACY_P12] {
        let der = std::fs::read(fixtures::path(p12)).expect("read PKCS#12");
        let store =
            p12_keystore::KeyStore::from_pkcs12(&der, "", p12_keystore::Pkcs12ImportPolicy::Strict)
                .expect("a password-less PKCS#12");
        let (_, chain) = store.private_key_chain().expect("key with its certificate");
        assert_eq!(chain.certs()[0].as_der(), cert.as_slice(), "{p12}");
        let key = ring::signature::RsaKeyPair::from_pkcs8(chain.key().as_der()).expect("RSA key");
        assert_eq!(key.public().as_ref(), public_key.as_slice(), "{p12}");
    }
    let cfg = EntraConfig::default();
    assert_eq!(
        (cfg.certificate_der, cfg.certificate_public_key),
        (cert, public_key),
        "the fake registers the fixture certificate"
    );
}

#[tokio::test]
async fn certificate_assertion_gets_a_token_devops_accepts() {
    let f = fakes().await;
    let cfg = f.entra.config();
    for alg in [Alg::Ps256, Alg::Rs256] {
        let reply = post_assertion(&f.entra, &f.entra.certificate_assertion(alg)).await;
        let token = access_token(&reply);
        let claims = jwt::verify(&token, &cfg.signing_key).expect("token verifies");
        assert_eq!(claims["appid"], cfg.client_id.as_str());
        assert_eq!(claims["oid"], OBJECT_ID);
        assert_eq!(devops_with(&f.devops, &token).await.status, StatusCode::OK);

        let (header, claims) = f.entra.last_assertion().expect("assertion recorded");
        assert_eq!(header["alg"], alg.name());
        assert_eq!(header["x5t#S256"], x5t_s256(&cfg.certificate_der).as_str());
        assert_eq!(claims["aud"], f.entra.token_url().as_str());
        let form = f.entra.last_form().expect("form recorded");
        assert!(form.iter().all(|(k, _)| k != "client_secret"));
    }

    // The legacy flavour: RS256 identified by SHA-1 alone, with the certificate chain attached.
    let header = json!({
        "typ": "JWT",
        "x5t": x5t(&cfg.certificate_der),
        "x5c": [x5c_entry(&cfg.certificate_der)],
    });
    let legacy = RsaSigner::sp().sign(
        Alg::Rs256,
        &header,
        &assertion_claims(&cfg.client_id, &f.entra.token_url()),
    );
    access_token(&post_assertion(&f.entra, &legacy).await);
    assert_eq!(f.entra.tokens_issued(), 3);
}

#[tokio::test]
async fn certificate_assertion_checks_each_refuse() {
    let entra = FakeEntra::start(EntraConfig::default()).await;
    let cfg = entra.config();
    let url = entra.token_url();
    let sp = RsaSigner::sp();
    let good_header = certificate_header(Alg::Ps256, &cfg.certificate_der);
    let claims_with = |overrides: Value| {
        let mut claims = assertion_claims(&cfg.client_id, &url);
        assertion::merge(&mut claims, &overrides);
        claims
    };
    let now = jwt::now();
    let valid = entra.certificate_assertion(Alg::Ps256);
    let other_claims = B64.encode(claims_with(json!({ "sub": "someone" })).to_string());
    let (valid_header, _) = valid.split_once('.').expect("three parts");
    let none_header = B64.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let claims_part = B64.encode(claims_with(json!({})).to_string());

    let cases: Vec<(&str, String, u16, u64, &str)> = vec![
        (
            "signed with another key",
            RsaSigner::forged().sign(Alg::Ps256, &good_header, &claims_with(json!({}))),
            401,
            700027,
            "invalid signature",
        ),
        (
            "claims changed after signing",
            format!(
                "{valid_header}.{other_claims}.{}",
                valid.rsplit('.').next().expect("signature")
            ),
            401,
            700027,
            "invalid signature",
        ),
        (
            "PSS signature labelled RS256",
            {
                let mut header = good_header.clone();
                header["alg"] = "RS256".into();
                sp.sign_raw(Alg::Ps256, &header, &claims_with(json!({})))
            },
            401,
            700027,
            "invalid signature",
        ),
        (
            "PKCS#1 signature labelled PS256",
            {
                let mut header = good_header.clone();
                header["alg"] = "PS256".into();
                sp.sign_raw(Alg::Rs256, &header, &claims_with(json!({})))
            },
            401,
            700027,
            "invalid signature",
        ),
        (
            "unknown thumbprint",
            sp.sign(
                Alg::Ps256,
                &json!({ "x5t#S256": x5t_s256(b"some other certificate") }),
                &claims_with(json!({})),
            ),
            401,
            700027,
            "The key was not found",
        ),
        (
            "no thumbprint",
            sp.sign(
                Alg::Ps256,
                &json!({ "typ": "JWT" }),
                &claims_with(json!({})),
            ),
            401,
            700027,
            "The key was not found",
        ),
        (
            "PS256 with only the SHA-1 thumbprint",
            sp.sign(
                Alg::Ps256,
                &json!({ "x5t": x5t(&cfg.certificate_der) }),
                &claims_with(json!({})),
            ),
            401,
            700027,
            "The key was not found",
        ),
        (
            "x5c naming another certificate",
            {
                let mut header = good_header.clone();
                header["x5c"] = json!([x5c_entry(b"not the registered certificate")]);
                sp.sign(Alg::Ps256, &header, &claims_with(json!({})))
            },
            401,
            700027,
            "x5c",
        ),
        (
            "aud is the authority, not the token URL",
            sp.sign(
                Alg::Ps256,
                &good_header,
                &claims_with(json!({ "aud": entra.authority() })),
            ),
            401,
            700027,
            "audience",
        ),
        (
            "aud is the v1 token URL",
            sp.sign(
                Alg::Ps256,
                &good_header,
                &claims_with(json!({ "aud": url.replace("/v2.0", "") })),
            ),
            401,
            700027,
            "audience",
        ),
        (
            "iss is not the client id",
            sp.sign(
                Alg::Ps256,
                &good_header,
                &claims_with(json!({ "iss": "someone" })),
            ),
            401,
            700027,
            "'iss'",
        ),
        (
            "sub is not the client id",
            sp.sign(
                Alg::Ps256,
                &good_header,
                &claims_with(json!({ "sub": "someone" })),
            ),
            401,
            700027,
            "'sub'",
        ),
        (
            "no jti",
            sp.sign(
                Alg::Ps256,
                &good_header,
                &claims_with(json!({ "jti": null })),
            ),
            401,
            700027,
            "jti",
        ),
        (
            "expired",
            sp.sign(
                Alg::Ps256,
                &good_header,
                &claims_with(json!({ "nbf": now - 600, "exp": now - 1 })),
            ),
            401,
            700024,
            "valid time range",
        ),
        (
            "not yet valid",
            sp.sign(
                Alg::Ps256,
                &good_header,
                &claims_with(json!({ "nbf": now + 300, "exp": now + 600 })),
            ),
            401,
            700024,
            "valid time range",
        ),
        (
            "valid for an hour",
            sp.sign(
                Alg::Ps256,
                &good_header,
                &claims_with(json!({ "nbf": now, "exp": now + 3600 })),
            ),
            401,
            700024,
            "valid for 3600 seconds",
        ),
        (
            "no nbf",
            sp.sign(
                Alg::Ps256,
                &good_header,
                &claims_with(json!({ "nbf": null })),
            ),
            401,
            700024,
            "'nbf'",
        ),
        (
            "alg none",
            format!("{none_header}.{claims_part}."),
            401,
            700027,
            "not supported",
        ),
        (
            "HMAC with the client secret (key confusion)",
            jwt::sign(&claims_with(json!({})), cfg.client_secret.as_bytes()),
            401,
            70021,
            "No matching federated identity record",
        ),
        ("not a JWT", "not.a-jwt".into(), 400, 50027, "malformed"),
    ];
    for (what, client_assertion, status, code, text) in &cases {
        let reply = post_assertion(&entra, client_assertion).await;
        assert_eq!(reply.status.as_u16(), *status, "{what}: {}", reply.text());
        let error = if *status == 400 {
            "invalid_request"
        } else {
            "invalid_client"
        };
        assert_entra_error(&reply, *status, error, *code);
        assert_description_contains(&reply, text);
    }
    assert_eq!(entra.tokens_issued(), 0);

    // The assertion type is checked before the assertion.
    let mut form = assertion_form(cfg, &valid);
    form[2].1 = "urn:ietf:params:oauth:client-assertion-type:saml2-bearer";
    let reply = post_token(&entra, &cfg.tenant_id, &form).await;
    assert_entra_error(&reply, 400, "invalid_request", 90011);
    form.remove(2);
    let reply = post_token(&entra, &cfg.tenant_id, &form).await;
    assert_entra_error(&reply, 400, "invalid_request", 900144);
    assert_description_contains(&reply, "client_assertion_type");

    // Refusals above did not burn the jti; the first use passes and a replay does not.
    access_token(&post_assertion(&entra, &valid).await);
    let replayed = post_assertion(&entra, &valid).await;
    assert_entra_error(&replayed, 401, "invalid_client", 700027);
    assert_description_contains(&replayed, "already used");
    assert_eq!(entra.tokens_issued(), 1);
}

#[tokio::test]
async fn federated_tokens_are_checked_against_the_trust() {
    let f = fakes().await;
    let entra = &f.entra;
    let trust = &entra.config().federated;
    assert_eq!(trust.audience, FEDERATED_AUDIENCE);

    let token = access_token(&post_assertion(entra, &entra.federated_token()).await);
    let claims = jwt::verify(&token, &entra.config().signing_key).expect("token verifies");
    assert_eq!(claims["appid"], entra.config().client_id.as_str());
    assert_eq!(devops_with(&f.devops, &token).await.status, StatusCode::OK);
    let (header, claims) = entra.last_assertion().expect("assertion recorded");
    assert_eq!(header["alg"], "HS256");
    assert_eq!(claims["sub"], trust.subject.as_str());

    let other_subject =
        entra.federated_token_with(json!({ "sub": "system:serviceaccount:apps:db" }));
    let reply = post_assertion(entra, &other_subject).await;
    assert_entra_error(&reply, 401, "invalid_client", 70021);
    assert_description_contains(
        &reply,
        &format!(
            "Assertion Issuer: '{}'. Assertion Subject: 'system:serviceaccount:apps:db'. \
             Assertion Audience: '{FEDERATED_AUDIENCE}'.",
            trust.issuer
        ),
    );
    for (what, overrides) in [
        (
            "issuer",
            json!({ "iss": "https://token.actions.githubusercontent.com" }),
        ),
        ("audience", json!({ "aud": "api://SomethingElse" })),
    ] {
        let reply = post_assertion(entra, &entra.federated_token_with(overrides)).await;
        assert!(reply.status == StatusCode::UNAUTHORIZED, "{what}");
        assert_entra_error(&reply, 401, "invalid_client", 70021);
    }
    let aud_list = entra.federated_token_with(json!({ "aud": ["x", FEDERATED_AUDIENCE] }));
    access_token(&post_assertion(entra, &aud_list).await);

    let reply = post_assertion(entra, &entra.forged_federated_token()).await;
    assert_entra_error(&reply, 401, "invalid_client", 700027);
    let now = jwt::now();
    let expired = entra.federated_token_with(json!({ "nbf": now - 700, "exp": now - 5 }));
    let reply = post_assertion(entra, &expired).await;
    assert_entra_error(&reply, 401, "invalid_client", 700024);
    assert_eq!(entra.tokens_issued(), 2);
}

#[tokio::test]
async fn imds_issues_string_typed_managed_identity_tokens() {
    let f = fakes().await;
    let entra = &f.entra;
    let cfg = entra.config();
    let url = |query: &str| format!("{}?{query}", entra.imds_url());
    let good = format!("api-version=2018-02-01&resource={DEVOPS_RESOURCE}");
    let metadata = [("metadata", "true")];

    let reply = get(&url(&good), &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.json(),
        json!({
            "error": "invalid_request",
            "error_description": "Required metadata header not specified",
        })
    );
    let reply = get(&url(&format!("{good}&client_id=not-attached")), &metadata).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.json(),
        json!({ "error": "invalid_request", "error_description": "Identity not found" })
    );
    let reply = get(
        &url("api-version=2018-02-01&resource=https://graph.microsoft.com/"),
        &metadata,
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error"], "invalid_resource");
    let reply = get(&url(&format!("resource={DEVOPS_RESOURCE}")), &metadata).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.text().contains("api-version"), "{}", reply.text());

    entra.set_lifetime(3599);
    let reply = get(&url(&good), &metadata).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let body = reply.json();
    for field in [
        "access_token",
        "client_id",
        "expires_in",
        "expires_on",
        "ext_expires_in",
        "not_before",
        "resource",
        "token_type",
    ] {
        assert!(body[field].is_string(), "{field} is not a string: {body}");
    }
    assert_eq!(body["expires_in"], "3599");
    assert_eq!(body["client_id"], cfg.managed_identity_client_id.as_str());
    assert_eq!(body["resource"], DEVOPS_RESOURCE);
    let expires_on: u64 = body["expires_on"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("expires_on is unix seconds");
    assert!(expires_on.abs_diff(jwt::now() + 3599) <= 2);
    let token = body["access_token"].as_str().expect("token");
    let claims = jwt::verify(token, &cfg.signing_key).expect("token verifies");
    assert_eq!(claims["appid"], cfg.managed_identity_client_id.as_str());
    assert_eq!(claims["oid"], SYSTEM_ASSIGNED_OBJECT_ID);
    assert_eq!(devops_with(&f.devops, token).await.status, StatusCode::OK);

    let user = get(
        &url(&format!("{good}&client_id={}", cfg.user_assigned_client_id)),
        &metadata,
    )
    .await
    .json();
    assert_eq!(user["client_id"], cfg.user_assigned_client_id.as_str());
    let claims = jwt::verify(
        user["access_token"].as_str().expect("token"),
        &cfg.signing_key,
    )
    .expect("token verifies");
    assert_eq!(claims["oid"], USER_ASSIGNED_OBJECT_ID);
    assert_eq!(
        (entra.managed_identity_requests(), entra.tokens_issued()),
        (6, 2)
    );
    assert_eq!(entra.token_requests(), 0);
}

#[tokio::test]
async fn managed_identity_endpoints_obey_the_modes() {
    let entra = FakeEntra::start(EntraConfig::default()).await;
    let imds = format!(
        "{}?api-version=2018-02-01&resource={DEVOPS_RESOURCE}",
        entra.imds_url()
    );
    let app_service = format!(
        "{}?api-version=2019-08-01&resource={DEVOPS_RESOURCE}",
        entra.app_service_url()
    );
    let fetch_imds = || get(&imds, &[("metadata", "true")]);
    let identity_header = [("x-identity-header", entra.identity_header())];
    let fetch_app_service = || get(&app_service, &identity_header);

    entra.set_mode(EntraMode::Fail {
        status: 503,
        code: "AADSTS50001".into(),
    });
    for reply in [fetch_imds().await, fetch_app_service().await] {
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        let body = reply.json();
        assert_eq!(body["error"], "temporarily_unavailable");
        assert!(
            body["error_description"]
                .as_str()
                .is_some_and(|d| d.starts_with("AADSTS50001: ")),
            "{body}"
        );
    }
    entra.set_mode(EntraMode::Fail {
        status: 404,
        code: "not_found".into(),
    });
    let reply = fetch_imds().await;
    assert_eq!(
        (reply.status, reply.json()["error"].clone()),
        (StatusCode::NOT_FOUND, json!("not_found"))
    );

    entra.set_mode(EntraMode::Throttle {
        retry_after_secs: 5,
    });
    let reply = fetch_imds().await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.header("retry-after"), Some("5"));

    entra.set_mode(EntraMode::Garbage);
    assert_eq!(fetch_app_service().await.text(), "<html>not json");

    entra.set_mode(EntraMode::ExpiresIn(json!(3599)));
    assert_eq!(fetch_imds().await.json()["expires_in"], 3599);
    entra.set_mode(EntraMode::AccessToken(json!("")));
    assert_eq!(fetch_app_service().await.json()["access_token"], "");

    entra.set_mode(EntraMode::Hang);
    let hung = tokio::time::timeout(Duration::from_millis(300), fetch_imds()).await;
    assert!(hung.is_err(), "Hang mode answered");
    assert_eq!(entra.managed_identity_requests(), 8);
    assert_eq!(entra.tokens_issued(), 1);
}

#[tokio::test]
async fn app_service_wants_its_header_and_sends_no_expires_in() {
    let f = fakes().await;
    let entra = &f.entra;
    let cfg = entra.config();
    let url = format!(
        "{}?api-version=2019-08-01&resource={DEVOPS_RESOURCE}",
        entra.app_service_url()
    );

    let reply = get(&url, &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error"], "invalid_request");
    let reply = get(&url, &[("x-identity-header", "guessed")]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.json()["error"].is_string());
    // IMDS' header is not App Service's.
    let reply = get(&url, &[("metadata", "true")]).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);

    let header = [("x-identity-header", entra.identity_header())];
    let body = get(&url, &header).await.json();
    let fields: Vec<&str> = body
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        [
            "access_token",
            "client_id",
            "expires_on",
            "resource",
            "token_type"
        ]
    );
    assert!(
        body["expires_on"]
            .as_str()
            .is_some_and(|s| s.parse::<u64>().is_ok())
    );
    assert_eq!(body["client_id"], cfg.managed_identity_client_id.as_str());
    let token = body["access_token"].as_str().expect("token");
    assert_eq!(devops_with(&f.devops, token).await.status, StatusCode::OK);

    let user = get(
        &format!("{url}&client_id={}", cfg.user_assigned_client_id),
        &header,
    )
    .await
    .json();
    assert_eq!(user["client_id"], cfg.user_assigned_client_id.as_str());
    let reply = get(&format!("{url}&client_id=not-attached"), &header).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let old_version = url.replace("2019-08-01", "2017-09-01");
    assert_eq!(
        get(&old_version, &header).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(entra.managed_identity_requests(), 7);
}

#[tokio::test]
async fn github_oidc_tokens_exchange_only_for_the_right_audience() {
    let f = fakes().await;
    let entra = &f.entra;
    let audience = "&audience=api%3A%2F%2FAzureADTokenExchange";
    let url = format!("{}{audience}", entra.github_request_url());

    assert_eq!(get(&url, &[]).await.status, StatusCode::UNAUTHORIZED);
    let wrong = get(&url, &[("authorization", "Bearer not-the-request-token")]).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);

    let bearer = format!("Bearer {}", entra.github_request_token());
    let body = get(&url, &[("authorization", &bearer)]).await.json();
    assert_eq!(body["count"], 1);
    let oidc = body["value"].as_str().expect("value is the token");
    let (_, claims) = assertion::decode_unverified(oidc).expect("a JWT");
    assert_eq!(claims["aud"], FEDERATED_AUDIENCE);
    assert_eq!(claims["iss"], entra.config().federated.issuer.as_str());
    let token = access_token(&post_assertion(entra, oidc).await);
    assert_eq!(devops_with(&f.devops, &token).await.status, StatusCode::OK);

    let default_audience = get(&entra.github_request_url(), &[("authorization", &bearer)])
        .await
        .json();
    let reply = post_assertion(entra, default_audience["value"].as_str().expect("token")).await;
    assert_entra_error(&reply, 401, "invalid_client", 70021);
    assert_eq!(entra.github_requests(), 4);
}

#[tokio::test]
async fn devops_refuses_revoked_tokens_and_non_members() {
    let f = fakes().await;
    let cfg = f.entra.config();
    let secret_token =
        || async { access_token(&post_token(&f.entra, &cfg.tenant_id, &good_form(cfg)).await) };
    let first = secret_token().await;
    assert_eq!(devops_with(&f.devops, &first).await.status, StatusCode::OK);
    f.devops.revoke_seen_tokens();
    let reply = devops_with(&f.devops, &first).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Bearer authorization_uri=https://login.microsoftonline.com/common")
    );
    let second = secret_token().await;
    assert_eq!(devops_with(&f.devops, &second).await.status, StatusCode::OK);

    let recorded = f.devops.requests();
    assert_eq!(
        recorded.iter().map(|r| r.authorized).collect::<Vec<_>>(),
        [true, false, true]
    );
    let jtis: Vec<Value> = recorded
        .iter()
        .map(|r| token_claims_of(r).expect("bearer claims")["jti"].clone())
        .collect();
    assert_eq!(jtis[0], jtis[1]);
    assert_ne!(jtis[0], jtis[2]);

    f.devops.set_members(Some(vec![OBJECT_ID.to_owned()]));
    assert_eq!(devops_with(&f.devops, &second).await.status, StatusCode::OK);
    let imds = format!(
        "{}?api-version=2018-02-01&resource={DEVOPS_RESOURCE}",
        f.entra.imds_url()
    );
    let mi_token = get(&imds, &[("metadata", "true")]).await.json()["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let reply = devops_with(&f.devops, &mi_token).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        reply.json(),
        json!({
            "$id": "1",
            "innerException": null,
            "message": format!(
                "TF400813: The user '{SYSTEM_ASSIGNED_OBJECT_ID}' is not authorized to access \
                 this resource."
            ),
            "typeName": "Microsoft.TeamFoundation.Framework.Server.UnauthorizedRequestException, \
                         Microsoft.TeamFoundation.Framework.Server",
            "typeKey": "UnauthorizedRequestException",
            "errorCode": 0,
            "eventId": 3000,
        })
    );
    let last = f.devops.requests().pop().expect("recorded");
    assert!(!last.authorized);
    assert_eq!(
        token_claims_of(&last).expect("claims")["appid"],
        cfg.managed_identity_client_id.as_str()
    );
    f.devops.set_members(None);
    assert_eq!(
        devops_with(&f.devops, &mi_token).await.status,
        StatusCode::OK
    );
}
