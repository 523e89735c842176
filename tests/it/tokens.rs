//! The token lifecycle as clients see it: renewal before expiry, outages of Entra ID with and
//! without a cached token, readiness.

use std::time::{Duration, Instant};

use crate::harness::{Options, Stack};
use crate::support::{self, entra::EntraMode};

#[tokio::test]
async fn a_short_lived_token_is_renewed_before_it_expires_without_a_failed_request() {
    let stack = Stack::start_with(Options {
        token_lifetime_secs: Some(4),
        ..Options::default()
    })
    .await;
    // Until requests have gone out with three different tokens (renewed at half-life, about
    // every 2 s), each one answered: no request ever meets an expired token or waits for Entra ID.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut requests = 0;
    loop {
        let reply = support::get(&stack.url("/contoso/_apis/projects"), &[]).await;
        assert_eq!(reply.status, 200, "request {requests}: {}", reply.text());
        requests += 1;
        let tokens: std::collections::HashSet<_> = stack
            .devops
            .requests()
            .iter()
            .map(|r| r.headers["authorization"].clone())
            .collect();
        if tokens.len() >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} distinct tokens after {requests} requests",
            tokens.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn entra_down_while_the_token_is_valid_loses_no_request() {
    let stack = Stack::start_with(Options {
        token_lifetime_secs: Some(12),
        ..Options::default()
    })
    .await;
    stack.entra.set_mode(EntraMode::Fail {
        status: 500,
        code: "AADSTS50000".into(),
    });
    // Until the half-life refresh (at 6 s) has been tried and failed, every request is
    // answered from the cached token, still well inside its usable life (12 s less a margin).
    let deadline = Instant::now() + Duration::from_secs(10);
    while stack.entra.token_requests() < 2 {
        let reply = support::get(&stack.url("/contoso/_apis/projects"), &[]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert!(Instant::now() < deadline, "the refresher never tried again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reply = support::get(&stack.url("/contoso/_apis/projects"), &[]).await;
    assert_eq!(
        reply.status,
        200,
        "after the failed refresh: {}",
        reply.text()
    );
    let ready = stack.readyz().await;
    assert_eq!(ready.status, 200, "still ready on a valid cached token");
    assert!(ready.text().contains("AADSTS50000"), "{}", ready.text());
    let refused = stack
        .metric(r#"ado_auth_proxy_token_refreshes_total{identity="default",result="refused"}"#)
        .await;
    assert!(refused >= 1.0, "refused refreshes counted: {refused}");
}

#[tokio::test]
async fn no_token_gives_503_with_retry_after_and_recovers_by_itself() {
    let stack = Stack::start_with(Options {
        no_wait: true,
        entra_mode: Some(EntraMode::Fail {
            status: 401,
            code: "AADSTS7000222".into(),
        }),
        ..Options::default()
    })
    .await;
    let refused = support::get(&stack.url("/contoso/_apis/projects"), &[]).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.json()["error"], "token_unavailable");
    let retry_after: u64 = refused
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry_after));
    assert!(
        stack.devops.requests().is_empty(),
        "nothing forwarded without a token"
    );
    // Wait for the first refusal to be recorded, then read what readiness says about it.
    stack
        .wait_for_readyz(|r| r.to_string().contains("AADSTS7000222"))
        .await;
    let not_ready = stack.readyz().await;
    assert_eq!(not_ready.status, 503);
    assert!(
        not_ready.text().contains("AADSTS7000222"),
        "{}",
        not_ready.text()
    );
    assert!(
        not_ready.text().contains("expired"),
        "the hint says what to do: {}",
        not_ready.text()
    );

    stack.entra.set_mode(EntraMode::Normal);
    stack.wait_ready().await;
    let reply = support::get(&stack.url("/contoso/_apis/projects"), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[tokio::test]
async fn unusable_token_responses_are_never_sent_upstream() {
    for mode in [
        EntraMode::Garbage,
        EntraMode::AccessToken(serde_json::json!("")),
        EntraMode::AccessToken(serde_json::json!("bad\ntoken")),
        EntraMode::ExpiresIn(serde_json::json!(-5)),
        EntraMode::Throttle {
            retry_after_secs: 2,
        },
    ] {
        let stack = Stack::start_with(Options {
            no_wait: true,
            entra_mode: Some(mode.clone()),
            ..Options::default()
        })
        .await;
        // The proxy has had Entra ID's answer and refused it.
        stack
            .wait_for_readyz(|r| !r["identities"][0]["last_error"].is_null())
            .await;
        let reply = support::get(&stack.url("/contoso/_apis/projects"), &[]).await;
        assert_eq!(reply.status, 503, "{mode:?}: {}", reply.text());
        assert!(stack.devops.requests().is_empty(), "{mode:?}");
        assert_eq!(stack.readyz().await.status, 503, "{mode:?}");
    }
}

#[tokio::test]
async fn expires_in_as_a_digit_string_is_accepted() {
    let stack = Stack::start_with(Options {
        entra_mode: Some(EntraMode::ExpiresIn(serde_json::json!("3599"))),
        ..Options::default()
    })
    .await;
    let reply = support::get(&stack.url("/contoso/_apis/projects"), &[]).await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn readyz_and_metrics_report_token_state_without_the_token() {
    let stack = Stack::start().await;
    let ready = stack.readyz().await;
    assert_eq!(ready.status, 200);
    let body = ready.json();
    assert_eq!(body["ready"], true);
    assert_eq!(body["identities"][0]["identity"], "default");
    let valid_for = body["identities"][0]["valid_for_seconds"]
        .as_u64()
        .expect("seconds");
    assert!((3000..=3600).contains(&valid_for), "{valid_for}");
    let metrics = stack.metrics().await;
    assert!(
        metrics.contains(r#"ado_auth_proxy_token_valid{identity="default"} 1"#),
        "{metrics}"
    );
    let expiry = stack
        .metric(r#"ado_auth_proxy_token_expiry_seconds{identity="default"}"#)
        .await;
    assert!((3000.0..=3600.0).contains(&expiry), "{expiry}");
    // The token in use, as Azure DevOps received it, appears in neither.
    assert_eq!(
        support::get(&stack.url("/contoso/_apis/projects"), &[])
            .await
            .status,
        200
    );
    let sent = stack.devops.requests()[0].headers["authorization"].clone();
    let token = sent.to_str().expect("ascii").trim_start_matches("Bearer ");
    let (ready, metrics) = (stack.readyz().await.text(), stack.metrics().await);
    assert!(
        !ready.contains(token) && !metrics.contains(token),
        "the token leaked"
    );
    assert!(
        !ready.contains("eyJ") && !metrics.contains("eyJ"),
        "a JWT leaked"
    );
    assert_eq!(
        support::get(&stack.admin_url("/healthz"), &[]).await.status,
        200
    );
}
