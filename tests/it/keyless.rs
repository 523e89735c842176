//! Keyless clients: OIDC tokens of a fake issuer (discovery and JWKS over HTTPS) where a PAT or a
//! client key would go, admitted by issuer, audience and claims, refused for every way a token
//! can be wrong, with the reason in a metric label; keys rotated at the issuer are fetched when a
//! token names one; the token never reaches Azure DevOps.

use serde_json::{Value, json};

use crate::access::Keys;
use crate::harness::{Options, Stack, basic};
use crate::support::oidc::{FakeIssuer, Signer};
use crate::support::{self, fixtures, jwt};

const AUDIENCE: &str = "ado-auth-proxy";
const PATH: &str = "/contoso/_apis/projects";

async fn keyless_stack(issuer: &FakeIssuer, key: &str) -> Stack {
    let stack = Stack::start_with(Options {
        upstream_toml: format!("ca_file = \"{}\"", fixtures::path("upstream-ca.pem").display()),
        access_toml: format!(
            r#"
            [inbound]
            mode = "keys"

            [[clients]]
            name = "web-ci"
            token = {{ issuer = "{issuer}", audience = "{AUDIENCE}", claims = {{ sub = "repo:contoso/web:**" }} }}
            allow = [{{ methods = ["GET"], path = "/contoso/**" }}]

            [[clients]]
            name = "keyed"
            key_sha256 = "{hash}"
            allow = [{{ methods = ["GET"], path = "/contoso/**" }}]
            "#,
            issuer = issuer.url(),
            hash = Keys::hash(key),
        ),
        ..Options::default()
    })
    .await;
    // The issuer's keys are fetched at start; waiting for that keeps the once-a-minute fetch
    // for an unknown key for the rotation below.
    for _ in 0..100 {
        if issuer.jwks_fetches() > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stack
}

async fn get_with(stack: &Stack, authorization: &str) -> support::Reply {
    support::get(&stack.url(PATH), &[("authorization", authorization)]).await
}

async fn refused_as(stack: &Stack, authorization: &str, reason: &str) {
    let series = format!("ado_auth_proxy_unauthenticated_requests_total{{reason=\"{reason}\"}}");
    let before = stack.metric(&series).await;
    let reply = get_with(stack, authorization).await;
    assert_eq!(reply.status, 401, "{reason}: {}", reply.text());
    assert!(
        reply.headers.contains_key("www-authenticate"),
        "{reason}: the same challenge as a wrong key"
    );
    assert_eq!(stack.metric(&series).await, before + 1.0, "{reason}");
}

fn with(mut claims: Value, changes: Value) -> Value {
    for (name, value) in changes.as_object().expect("object") {
        claims[name] = value.clone();
    }
    claims
}

#[tokio::test]
async fn tokens_are_admitted_by_issuer_audience_and_claims_and_refused_otherwise() {
    let issuer = FakeIssuer::start().await;
    let (rsa, ec) = (Signer::rsa("rsa-1"), Signer::ec("ec-1"));
    issuer.publish(&[&rsa, &ec]);
    let key = ado_auth_proxy::keys::generate().expect("random");
    let stack = keyless_stack(&issuer, &key).await;
    let good = issuer.claims(AUDIENCE, "repo:contoso/web:ref:refs/heads/main");

    // Where a PAT goes (Basic, any user name) and as a Bearer; RS256, PS256 and ES256.
    let rs256 = rsa.mint("RS256", &good);
    let admitted = [
        basic("anything", &rs256),
        format!("Bearer {}", rsa.mint("PS256", &good)),
        format!("Bearer {}", ec.mint("ES256", &good)),
    ];
    for authorization in &admitted {
        let reply = get_with(&stack, authorization).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    // Key clients still work beside keyless ones.
    assert_eq!(get_with(&stack, &basic("git", &key)).await.status, 200);
    // Azure DevOps got the service principal's token, never the client's.
    for request in stack.devops.requests() {
        assert!(request.authorized, "{request:?}");
        let sent = format!("{:?}", request.headers);
        // Its signature is what no other token shares.
        let signature = rs256.rsplit('.').next().expect("signature");
        assert!(
            !sent.contains(signature),
            "the client's token went upstream"
        );
    }

    let now = jwt::now();
    let other_issuer = with(good.clone(), json!({ "iss": "https://token.example" }));
    refused_as(
        &stack,
        &basic("x", &rsa.mint("RS256", &other_issuer)),
        "token_issuer",
    )
    .await;
    let other_audience = with(good.clone(), json!({ "aud": "api://AzureADTokenExchange" }));
    refused_as(
        &stack,
        &basic("x", &rsa.mint("RS256", &other_audience)),
        "token_audience",
    )
    .await;
    let other_subject = with(
        good.clone(),
        json!({ "sub": "repo:contoso/webapp:ref:refs/heads/main" }),
    );
    refused_as(
        &stack,
        &basic("x", &rsa.mint("RS256", &other_subject)),
        "token_claims",
    )
    .await;
    let expired = with(good.clone(), json!({ "exp": now - 120, "nbf": now - 700 }));
    refused_as(
        &stack,
        &basic("x", &rsa.mint("RS256", &expired)),
        "token_expired",
    )
    .await;
    let early = with(good.clone(), json!({ "nbf": now + 300 }));
    refused_as(
        &stack,
        &basic("x", &rsa.mint("RS256", &early)),
        "token_not_yet_valid",
    )
    .await;
    // Signed by another key under the published kid.
    let forged = Signer::other_rsa("rsa-1").mint("RS256", &good);
    refused_as(&stack, &format!("Bearer {forged}"), "token_signature").await;
    // `alg: none`, and HS256 keyed with the issuer's public key (key confusion).
    let unsigned = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","kid":"rsa-1"}"#),
            b64.encode(good.to_string())
        )
    };
    refused_as(&stack, &format!("Bearer {unsigned}"), "token_algorithm").await;
    let public = rsa.jwk()["n"].as_str().expect("n").to_string();
    let mut hs256 = jwt::sign(&good, public.as_bytes());
    // `jwt::sign` writes no kid; the issuer's kid makes it look like theirs.
    hs256 = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let rest = hs256.split_once('.').expect("jwt").1;
        format!(
            "{}.{rest}",
            b64.encode(r#"{"alg":"HS256","kid":"rsa-1","typ":"JWT"}"#)
        )
    };
    refused_as(&stack, &format!("Bearer {hs256}"), "token_algorithm").await;
    // Too large to be any issuer's token.
    let padded = with(
        good.clone(),
        json!({ "padding": "x".repeat(6 * 1024 + 512) }),
    );
    refused_as(
        &stack,
        &format!("Bearer {}", rsa.mint("RS256", &padded)),
        "token_too_large",
    )
    .await;
    // A JWT for nobody: not even a JSON header.
    refused_as(&stack, "Bearer eyJub3QganNvbg.e30.c2ln", "token_malformed").await;

    // The issuer rotates to a new key: a token naming it makes the proxy fetch the keys again,
    // and the request waits for that instead of failing.
    let rotated = Signer::other_rsa("rsa-2");
    issuer.publish(&[&rotated, &ec]);
    let fetches = issuer.jwks_fetches();
    let reply = get_with(&stack, &format!("Bearer {}", rotated.mint("RS256", &good))).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        issuer.jwks_fetches(),
        fetches + 1,
        "one fetch for the new key"
    );
    // Another unknown key within the minute: refused at once, without another fetch.
    let unknown = Signer::other_rsa("rsa-9").mint("RS256", &good);
    refused_as(&stack, &format!("Bearer {unknown}"), "token_key").await;
    assert_eq!(
        issuer.jwks_fetches(),
        fetches + 1,
        "at most one fetch a minute"
    );
    // The dropped key's tokens no longer pass once it is gone (the earlier token was
    // remembered as verified, a fresh one is not).
    let fresh = with(good.clone(), json!({ "jti": "another" }));
    refused_as(
        &stack,
        &format!("Bearer {}", rsa.mint("RS256", &fresh)),
        "token_key",
    )
    .await;
}

/// Through the real binary, for a cluster without OIDC discovery: the issuer's keys from a JWKS
/// file, read again when a token names a key it lacks; the token in no log line, the reason of a
/// refusal in one.
#[tokio::test]
async fn a_jwks_file_serves_clusters_without_discovery_and_no_log_holds_the_token() {
    use crate::cli::{Fakes, command, run, terminate, wait_ready};

    let fakes = Fakes::start().await;
    let issuer = "https://kubernetes.default.svc.cluster.local";
    let (first, second) = (Signer::rsa("sa-1"), Signer::ec("sa-2"));
    let jwks = fakes.dir.path().join("jwks.json");
    let publish = |signers: &[&Signer]| {
        let keys: Vec<Value> = signers.iter().map(|s| s.jwk()).collect();
        std::fs::write(&jwks, json!({ "keys": keys }).to_string()).expect("jwks");
    };
    publish(&[&first]);
    let config = fakes.dir.path().join("keyless.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
             [upstream]\nurl = \"{upstream}\"\n{identity}\n\
             [inbound]\nmode = \"keys\"\n\
             [[clients]]\nname = \"builds\"\n\
             token = {{ issuer = \"{issuer}\", audience = \"{AUDIENCE}\", jwks_file = \"{jwks}\", \
             claims = {{ sub = \"system:serviceaccount:builds:*\" }} }}\n\
             allow = [{{ methods = [\"GET\"], path = \"/contoso/**\" }}]\n",
            upstream = fakes.devops.url(),
            identity = fakes.entra.identity_toml(None),
            jwks = jwks.display(),
        ),
    )
    .expect("config");
    let child = run(command(&["--config", config.to_str().expect("utf-8")])).await;
    wait_ready(child.admin.port()).await;
    let claims = |subject: &str| {
        let now = jwt::now();
        json!({ "iss": issuer, "aud": [AUDIENCE], "sub": subject, "iat": now, "exp": now + 600 })
    };
    let url = format!("http://{}{PATH}", child.proxy);
    let admitted = first.mint("RS256", &claims("system:serviceaccount:builds:runner"));
    let reply = support::get(&url, &[("authorization", &basic("runner", &admitted))]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let refused = first.mint("RS256", &claims("system:serviceaccount:default:runner"));
    let reply = support::get(&url, &[("authorization", &format!("Bearer {refused}"))]).await;
    assert_eq!(reply.status, 401);

    // A new key in the file: the token naming it makes the proxy read the file again.
    publish(&[&first, &second]);
    let rotated = second.mint("ES256", &claims("system:serviceaccount:builds:runner"));
    let reply = support::get(&url, &[("authorization", &format!("Bearer {rotated}"))]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    let metrics = support::get(&format!("http://{}/metrics", child.admin), &[])
        .await
        .text();
    let (_, logs) = terminate(child).await;
    assert!(logs.contains("client token refused"), "{logs}");
    assert!(logs.contains("token_claims"), "{logs}");
    for token in [&admitted, &refused, &rotated] {
        // Any part of a token (its signature is the secret part) stays out of both.
        let signature = token.rsplit('.').next().expect("signature");
        assert!(!logs.contains(signature), "a token in the log:\n{logs}");
        assert!(!metrics.contains(signature), "a token in the metrics");
    }
}
