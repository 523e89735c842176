//! Learn mode and PAT retirement: a learning client's refused calls are forwarded and counted
//! (every other check still applies), loudly; credentials shaped like Azure DevOps PATs are
//! counted per client, never shown.

use crate::access::Keys;
use crate::harness::{Options, Stack, basic};
use crate::support;

/// An 84-character PAT in the current format (`AZDO` at 76..80), made a client's key, as `keys
/// hash` lets a team do after revoking it in Azure DevOps.
const NEW_PAT: &str =
    "7f3kq9zt2m5vb8xw1cr4ny6hj0pd3ls9ga7ue2ko5wi8qf1tb4zx6JQQJ99BLAC6AAAAAAAAAAAAAZDO2kPv";

async fn learning_stack(strict_key: &str, learning_key: &str) -> Stack {
    Stack::start_with(Options {
        access_toml: format!(
            r#"
            [inbound]
            mode = "keys"

            [[clients]]
            name = "legacy"
            key_sha256 = "{learning}"
            learn = true
            allow = [{{ methods = ["GET"], path = "/contoso/web/**" }}]

            [[clients]]
            name = "strict"
            key_sha256 = "{strict}"
            allow = [{{ methods = ["GET"], path = "/contoso/web/**" }}]

            [[clients]]
            name = "pat-tool"
            key_sha256 = "{pat}"
            allow = [{{ methods = ["GET"], path = "/contoso/**" }}]
            "#,
            learning = Keys::hash(learning_key),
            strict = Keys::hash(strict_key),
            pat = Keys::hash(NEW_PAT),
        ),
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn a_learning_client_is_forwarded_what_its_rules_refuse_and_it_is_counted() {
    assert_eq!(NEW_PAT.len(), 84);
    assert_eq!(&NEW_PAT[76..80], "AZDO");
    let (strict, learning) = (
        ado_auth_proxy::keys::generate().expect("random"),
        ado_auth_proxy::keys::generate().expect("random"),
    );
    let stack = learning_stack(&strict, &learning).await;
    let get = |key: &str, path: &str| {
        let (url, authorization) = (stack.url(path), basic("tool", key));
        async move { support::get(&url, &[("authorization", &authorization)]).await }
    };
    let would_deny = "ado_auth_proxy_would_deny_requests_total{client=\"legacy\"}";

    // Within its rules: forwarded, not counted.
    let within = get(&learning, "/contoso/web/_apis/git/repositories").await;
    assert_ne!(within.status, 403);
    assert_eq!(stack.metric(would_deny).await, 0.0);
    // Outside them: forwarded anyway (Azure DevOps answers), and counted.
    let before = stack.devops.requests().len();
    let reply = get(&learning, "/contoso/_apis/projects").await;
    assert_ne!(reply.status, 403);
    assert_eq!(
        stack.devops.requests().len(),
        before + 1,
        "it reached Azure DevOps"
    );
    assert_eq!(stack.metric(would_deny).await, 1.0);
    // The same call from a client not learning is refused.
    assert_eq!(get(&strict, "/contoso/_apis/projects").await.status, 403);
    // Every other check still applies: path safety, hosts, authentication.
    assert_eq!(get(&learning, "/contoso/web/%2e%2e/x").await.status, 400);
    assert_eq!(get(&learning, "/_host/evil.example/x").await.status, 400);
    assert_eq!(
        get("not-a-key", "/contoso/_apis/projects").await.status,
        401
    );
    assert_eq!(stack.metric(would_deny).await, 1.0);

    // Loud: a gauge per client and a standing warning in /readyz.
    assert_eq!(
        stack
            .metric("ado_auth_proxy_learn_mode{client=\"legacy\"}")
            .await,
        1.0
    );
    assert_eq!(
        stack
            .metric("ado_auth_proxy_learn_mode{client=\"strict\"}")
            .await,
        0.0
    );
    let readyz = stack.readyz().await.text();
    assert!(
        readyz.contains("learn mode") && readyz.contains("legacy"),
        "{readyz}"
    );
}

#[tokio::test]
async fn credentials_shaped_like_pats_are_counted_per_client_and_never_shown() {
    let stack = learning_stack("strict-key-value", "learning-key-value").await;
    let pats =
        |client: &str| format!("ado_auth_proxy_pat_credentials_total{{client=\"{client}\"}}");
    // A PAT that is a client's key (after `keys hash`): admitted, and counted for that client.
    let reply = support::get(
        &stack.url("/contoso/_apis/projects"),
        &[("authorization", &basic("ci", NEW_PAT))],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(stack.metric(&pats("pat-tool")).await, 1.0);
    // A PAT nobody configured (the older 52-character form): refused, counted without a client.
    let old = "abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrst";
    let reply = support::get(
        &stack.url("/contoso/_apis/projects"),
        &[("authorization", &basic("ci", old))],
    )
    .await;
    assert_eq!(reply.status, 401);
    assert_eq!(stack.metric(&pats("-")).await, 1.0);
    assert!(!reply.text().contains(old));
    // A client key is no PAT.
    let reply = support::get(
        &stack.url("/contoso/web/x"),
        &[("authorization", &basic("ci", "strict-key-value"))],
    )
    .await;
    assert_ne!(reply.status, 401, "authenticated");
    assert_eq!(stack.metric(&pats("strict")).await, 0.0);
    let metrics = stack.metrics().await;
    assert!(!metrics.contains(NEW_PAT) && !metrics.contains(old));
}
