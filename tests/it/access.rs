//! Client keys and allowlists through the real server: who may call, and what.

use crate::git::{assert_ok, git};
use crate::harness::{Options, Stack, basic};
use crate::support;

#[derive(Clone)]
pub struct Keys {
    pub reader: String,
    pub writer: String,
}

impl Keys {
    pub fn new() -> Keys {
        Keys {
            reader: ado_auth_proxy::keys::generate().expect("random"),
            writer: ado_auth_proxy::keys::generate().expect("random"),
        }
    }

    /// The `key_sha256` line of a key, as `keys new` prints it.
    pub fn hash(key: &str) -> String {
        ado_auth_proxy::keys::to_hex(&ado_auth_proxy::keys::sha256(key.as_bytes()))
    }

    /// Two clients: a read-only git and REST client, and a read/write git client.
    pub fn access_toml(&self) -> String {
        let hash = Keys::hash;
        format!(
            r#"
            [inbound]
            mode = "keys"

            [[clients]]
            name = "reader"
            key_sha256 = "{reader}"
            allow = [
              {{ methods = ["GET"], path = "/contoso/web/_git/web/**" }},
              {{ methods = ["POST"], path = "/contoso/web/_git/web/git-upload-pack" }},
              {{ methods = ["GET"], path = "/contoso/_apis/projects" }},
            ]

            [[clients]]
            name = "writer"
            key_sha256 = "{writer}"
            allow = [{{ methods = ["GET", "POST"], path = "/contoso/web/_git/web/**" }}]
            "#,
            reader = hash(&self.reader),
            writer = hash(&self.writer),
        )
    }
}

async fn keyed_stack(keys: &Keys) -> Stack {
    Stack::start_with(Options {
        access_toml: keys.access_toml(),
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn a_read_only_key_clones_but_cannot_push_and_nothing_of_the_push_is_forwarded() {
    let keys = Keys::new();
    let stack = keyed_stack(&keys).await;
    stack.devops.create_repo("contoso", "web", "web");
    let work = tempfile::TempDir::new().expect("temp dir");
    let url = |key: &str| format!("http://git:{key}@{}/contoso/web/_git/web", stack.proxy);

    assert_ok(
        &git(work.path(), &["clone", &url(&keys.reader), "reader"]).await,
        "clone with a read-only key",
    );
    let reader = work.path().join("reader");
    std::fs::write(reader.join("new.txt"), "new").expect("write");
    assert_ok(&git(&reader, &["add", "new.txt"]).await, "add");
    assert_ok(
        &git(&reader, &["commit", "-q", "-m", "new"]).await,
        "commit",
    );
    let push = git(&reader, &["push", "origin", "main"]).await;
    assert!(!push.status.success(), "a read-only key must not push");
    let stderr = String::from_utf8_lossy(&push.stderr);
    assert!(stderr.contains("403"), "git reports the refusal: {stderr}");
    let recorded = stack.devops.requests();
    assert!(
        !recorded.iter().any(|r| r.uri.contains("receive-pack")),
        "no part of the push reached Azure DevOps: {:?}",
        recorded.iter().map(|r| &r.uri).collect::<Vec<_>>()
    );

    // The writer can push the same commit.
    let writer_url = url(&keys.writer);
    assert_ok(
        &git(&reader, &["remote", "set-url", "origin", &writer_url]).await,
        "set-url",
    );
    assert_ok(
        &git(&reader, &["push", "origin", "main"]).await,
        "push with a read/write key",
    );

    let metrics = stack.metrics().await;
    assert!(
        metrics.contains(r#"ado_auth_proxy_denied_requests_total{client="reader"} 1"#),
        "{metrics}"
    );
    assert!(!metrics.contains(&keys.reader) && !metrics.contains(&keys.writer));
}

#[tokio::test]
async fn without_a_key_git_reports_an_authentication_failure() {
    let keys = Keys::new();
    let stack = keyed_stack(&keys).await;
    stack.devops.create_repo("contoso", "web", "web");
    let work = tempfile::TempDir::new().expect("temp dir");
    let url = format!("http://{}/contoso/web/_git/web", stack.proxy);
    let clone = git(work.path(), &["clone", &url, "anon"]).await;
    assert!(!clone.status.success());
    let stderr = String::from_utf8_lossy(&clone.stderr);
    assert!(
        stderr.contains("Authentication failed") || stderr.contains("could not read Username"),
        "{stderr}"
    );
    let old_pat = format!(
        "http://git:{}@{}/contoso/web/_git/web",
        crate::harness::OLD_PAT,
        stack.proxy
    );
    let clone = git(work.path(), &["clone", &old_pat, "pat"]).await;
    assert!(!clone.status.success(), "a PAT is not a client key");
    assert!(
        stack.devops.requests().is_empty(),
        "nothing reached Azure DevOps"
    );

    let reply = support::get(&stack.url("/contoso/_apis/projects"), &[]).await;
    assert_eq!(reply.status, 401);
    assert_eq!(
        reply.header("www-authenticate"),
        Some(r#"Basic realm="ado-auth-proxy""#)
    );
    assert_eq!(reply.json()["error"], "unauthenticated");
    for reason in ["missing", "unknown"] {
        let series =
            format!(r#"ado_auth_proxy_unauthenticated_requests_total{{reason="{reason}"}}"#);
        assert!(stack.metric(&series).await >= 1.0, "{series}");
    }
}

#[tokio::test]
async fn every_way_tools_send_a_pat_carries_the_key_and_clients_see_their_own_rules() {
    let keys = Keys::new();
    let stack = keyed_stack(&keys).await;
    let projects = stack.url("/contoso/_apis/projects?api-version=7.1");
    for auth in [
        basic("anything", &keys.reader),
        basic("", &keys.reader),
        basic(&keys.reader, ""),
        format!("Bearer {}", keys.reader),
    ] {
        let reply = support::get(&projects, &[("authorization", &auth)]).await;
        assert_eq!(reply.status, 200, "{auth:.10}: {}", reply.text());
    }
    let writer = support::get(&projects, &[("authorization", &basic("x", &keys.writer))]).await;
    assert_eq!(writer.status, 403);
    let body = writer.json();
    assert_eq!(body["error"], "forbidden");
    let message = body["message"].as_str().expect("message");
    assert!(
        message.contains("GET /contoso/_apis/projects") && message.contains("writer"),
        "{message}"
    );
    assert!(
        !message.contains("/contoso/web/_git"),
        "the rules themselves are not disclosed"
    );

    let unknown = support::get(
        &projects,
        &[("authorization", &basic("x", "aap_not-a-real-key"))],
    )
    .await;
    assert_eq!(unknown.status, 401);

    let forwarded = stack.devops.requests();
    assert_eq!(forwarded.len(), 4, "only the reader's calls were forwarded");
    for request in &forwarded {
        for value in request.headers.values() {
            let value = String::from_utf8_lossy(value.as_bytes());
            assert!(!value.contains(&keys.reader) && !value.contains(&keys.writer));
        }
        assert!(request.authorized);
    }
}

#[tokio::test]
async fn unsafe_paths_are_refused_before_anything_is_forwarded() {
    let keys = Keys::new();
    let stack = keyed_stack(&keys).await;
    let auth = basic("x", &keys.writer);
    for path in [
        "/contoso/web/_git/web/../../../_apis/projects",
        "/contoso/web/_git/web/%2e%2e/%2e%2e/x",
        "/contoso/web/_git/web/..%2F..%2Fx",
        "/contoso/web/_git/web/%5c..",
        "/contoso/web/_git/web//x",
        "/contoso/web/_git/web/%252e%252e",
        "/contoso/web/_git/web/%zz",
    ] {
        let answer = crate::harness::raw_exchange(
            stack.proxy,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
    }
    assert!(stack.devops.requests().is_empty());
}

#[tokio::test]
async fn open_mode_refuses_foreign_hosts_and_browsers() {
    let stack = Stack::start().await;
    let url = stack.url("/contoso/_apis/projects");
    let ok = support::get(&url, &[]).await;
    assert_eq!(
        ok.status, 200,
        "curl-like request on the listener's own address"
    );
    let localhost = support::get(
        &url,
        &[("host", &format!("localhost:{}", stack.proxy.port()))],
    )
    .await;
    assert_eq!(localhost.status, 200);
    let sec_none = support::get(&url, &[("sec-fetch-site", "none")]).await;
    assert_eq!(
        sec_none.status, 200,
        "a user typing the URL is not cross-site"
    );
    for headers in [
        vec![("host", "attacker.example")],
        vec![("host", "attacker.example:8080")],
        vec![("origin", "https://attacker.example")],
        vec![("sec-fetch-site", "cross-site")],
        vec![("sec-fetch-site", "same-origin")],
    ] {
        let reply = support::get(&url, &headers).await;
        assert_eq!(reply.status, 403, "{headers:?}: {}", reply.text());
    }
    assert_eq!(stack.devops.requests().len(), 3);
    let metrics = stack.metrics().await;
    assert!(
        metrics.contains(r#"ado_auth_proxy_refused_requests_total{reason="foreign_host"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"ado_auth_proxy_refused_requests_total{reason="browser"} 3"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn open_mode_beyond_loopback_needs_the_opt_in_accepts_its_own_names_and_warns() {
    let stack = Stack::start_with(Options {
        listen_toml: "address = \"0.0.0.0:0\"\npublic_url = \"http://ado-proxy.internal:8080\""
            .into(),
        access_toml: format!(
            "{}allow_open_on_non_loopback = true\nallowed_hosts = [\"ado-proxy.internal:8080\"]\n",
            crate::harness::OPEN_ALLOW_ALL
        ),
        ..Options::default()
    })
    .await;
    let port = stack.proxy.port();
    let url = format!("http://127.0.0.1:{port}/contoso/_apis/projects");
    let own = support::get(&url, &[]).await;
    assert_eq!(
        own.status,
        200,
        "a listener on 0.0.0.0 still answers its loopback names: {}",
        own.text()
    );
    let configured = support::get(&url, &[("host", "ado-proxy.internal:8080")]).await;
    assert_eq!(configured.status, 200, "inbound.allowed_hosts");
    let foreign = support::get(&url, &[("host", "attacker.example:8080")]).await;
    assert_eq!(foreign.status, 403);
    let ready = stack.readyz().await;
    assert!(
        ready.json()["warning"]
            .as_str()
            .is_some_and(|w| w.contains("open mode")),
        "{}",
        ready.text()
    );
}
