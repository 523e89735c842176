//! The request path through the real server: credentials swapped, headers cleaned, targets
//! checked, upstream failures mapped.

use http_body_util::BodyExt as _;

use crate::harness::{OLD_PAT, Options, Stack, basic_pat, raw_exchange};
use crate::support::tls_upstream::{RefusingUpstream, TlsUpstream};
use crate::support::{self, jwt};

#[tokio::test]
async fn basic_and_bearer_pats_are_replaced_by_the_service_principal_token() {
    let stack = Stack::start().await;
    let basic = basic_pat();
    let bearer = format!("Bearer {OLD_PAT}");
    for auth in [basic.as_str(), bearer.as_str()] {
        let reply = support::get(
            &stack.url("/contoso/_apis/projects?api-version=7.1"),
            &[
                ("authorization", auth),
                ("cookie", &format!("pat={OLD_PAT}")),
            ],
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["value"][0]["name"], "web");
    }
    let recorded = stack.devops.requests();
    assert_eq!(recorded.len(), 2);
    for request in &recorded {
        let auth = request.headers["authorization"].to_str().expect("ascii");
        let token = auth.strip_prefix("Bearer ").expect("bearer token");
        let claims = jwt::verify(token, &stack.entra.config().signing_key).expect("valid JWT");
        assert_eq!(claims["appid"], stack.entra.config().client_id);
        assert_eq!(request.headers.get_all("authorization").iter().count(), 1);
        assert!(request.headers.get("cookie").is_none());
        for (name, value) in &request.headers {
            assert!(
                !String::from_utf8_lossy(value.as_bytes()).contains(OLD_PAT),
                "PAT reached Azure DevOps in {name}"
            );
        }
        assert_eq!(request.headers["host"], stack.devops.addr().to_string());
        assert_eq!(request.headers["x-tfs-fedauthredirect"], "Suppress");
        assert_eq!(request.uri, "/contoso/_apis/projects?api-version=7.1");
    }
}

#[tokio::test]
async fn many_requests_cost_one_token_fetch() {
    let stack = Stack::start().await;
    for _ in 0..25 {
        let reply = support::get(&stack.url("/contoso/_apis/projects"), &[]).await;
        assert_eq!(reply.status, 200);
    }
    assert_eq!(stack.entra.token_requests(), 1);
    let form = stack.entra.last_form().expect("a token request");
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(field("grant_type"), "client_credentials");
    assert_eq!(
        field("scope"),
        "499b84ac-1321-427f-aa17-267ca6975798/.default"
    );
}

#[tokio::test]
async fn hop_by_hop_and_steering_headers_are_removed_both_ways() {
    let stack = Stack::start().await;
    let reply = support::get(
        &stack.url("/_test/echo"),
        &[
            ("connection", "keep-alive, x-drop-me"),
            ("x-drop-me", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("x-forwarded-for", "10.1.2.3"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=10.1.2.3"),
            ("x-http-method-override", "DELETE"),
            ("x-original-url", "/other"),
            ("x-keep-me", "yes"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let received = reply.json()["headers"].clone();
    for gone in [
        "connection",
        "x-drop-me",
        "keep-alive",
        "te",
        "proxy-authorization",
        "x-forwarded-for",
        "x-forwarded-host",
        "forwarded",
        "x-http-method-override",
        "x-original-url",
    ] {
        assert!(
            received.get(gone).is_none(),
            "{gone} reached upstream: {received}"
        );
    }
    assert_eq!(received["x-keep-me"][0], "yes");

    let reply = support::get(&stack.url("/_test/hop-by-hop"), &[]).await;
    assert_eq!(reply.status, 200);
    for gone in [
        "x-secret-hop",
        "keep-alive",
        "proxy-authenticate",
        "set-cookie",
        "upgrade",
    ] {
        assert!(reply.header(gone).is_none(), "{gone} reached the client");
    }
    assert_eq!(reply.header("x-normal"), Some("kept"));
    assert!(reply.header("x-request-id").is_some());
}

#[tokio::test]
async fn absolute_form_asterisk_connect_and_trace_are_refused() {
    let stack = Stack::start().await;
    let cases: [(&[u8], &str); 4] = [
        (
            b"GET http://evil.example/x HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 405",
        ),
        (
            b"TRACE / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 405",
        ),
        (
            b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 400",
        ),
    ];
    for (request, expected) in cases {
        let answer = raw_exchange(stack.proxy, request).await;
        assert!(answer.starts_with(expected), "{expected}: {answer}");
        assert!(answer.contains("application/json"), "{answer}");
        assert!(answer.contains("\"request_id\""), "{answer}");
    }
    assert!(
        stack.devops.requests().is_empty(),
        "nothing may be forwarded"
    );
    let metrics = stack.metrics().await;
    assert!(
        metrics.contains(r#"ado_auth_proxy_refused_requests_total{reason="method_not_allowed"} 2"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_path_that_looks_like_a_host_is_refused_not_forwarded() {
    let stack = Stack::start().await;
    let request = format!(
        "GET //evil.example/x HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        stack.proxy
    );
    let answer = raw_exchange(stack.proxy, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(stack.devops.requests().is_empty());
}

#[tokio::test]
async fn redirects_are_passed_back_not_followed() {
    let stack = Stack::start().await;
    let reply = support::get(&stack.url("/_test/redirect"), &[]).await;
    assert_eq!(reply.status, 302);
    assert!(
        reply
            .header("location")
            .is_some_and(|l| l.contains("blob.core.windows.net"))
    );
    assert_eq!(stack.devops.requests().len(), 1);
}

#[tokio::test]
async fn upstream_down_is_502_and_silent_upstream_is_504() {
    let mut stack = Stack::start_with(Options {
        upstream_toml: "response_timeout = \"500ms\"".into(),
        ..Options::default()
    })
    .await;
    let reply = support::get(&stack.url("/_test/slow?ms=3000"), &[]).await;
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert_eq!(reply.json()["error"], "gateway_timeout");

    // Point a second proxy at a port nobody listens on: bound, so no one else can take it
    // while the test runs, but never listening, so every connection is refused.
    let reserved = tokio::net::TcpSocket::new_v4().expect("socket");
    reserved
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let closed = reserved.local_addr().expect("addr");
    stack.shutdown().await;
    let toml = Stack::config_toml(
        &stack.entra,
        &format!("http://{closed}"),
        &Options::default(),
    );
    let app = ado_auth_proxy::App::build(
        ado_auth_proxy::config::Config::from_toml(&toml).expect("config"),
    )
    .await
    .expect("starts");
    let proxy = app.proxy_addr();
    let admin = app.admin_addr();
    let task = tokio::spawn(app.run(std::future::pending()));
    for _ in 0..100 {
        if support::get(&format!("http://{admin}/readyz"), &[])
            .await
            .status
            == 200
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let reply = support::get(&format!("http://{proxy}/contoso/_apis/projects"), &[]).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(reply.json()["error"], "bad_gateway");
    let metrics = support::get(&format!("http://{admin}/metrics"), &[])
        .await
        .text();
    assert!(
        metrics.contains(r#"ado_auth_proxy_upstream_errors_total{kind="connect"} 1"#),
        "{metrics}"
    );
    task.abort();
}

#[tokio::test]
async fn upstream_429_is_passed_through_and_counted() {
    let stack = Stack::start().await;
    let reply = support::get(&stack.url("/_test/status/429"), &[]).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after"), Some("7"));
    let metrics = stack.metrics().await;
    assert!(
        metrics.contains(r#"ado_auth_proxy_upstream_throttled_total{identity="default"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"ado_auth_proxy_upstream_rate_limit_remaining{identity="default"} 0"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn throttling_headers_on_a_200_become_per_identity_metrics() {
    let stack = Stack::start().await;
    let reply = support::get(&stack.url("/_test/delayed"), &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "held back\n");
    assert_eq!(reply.header("retry-after"), Some("3"));
    for (series, value) in [
        (
            r#"ado_auth_proxy_upstream_rate_limit_limit{identity="default"}"#,
            200.0,
        ),
        (
            r#"ado_auth_proxy_upstream_rate_limit_remaining{identity="default"}"#,
            12.0,
        ),
        (
            r#"ado_auth_proxy_upstream_rate_limit_reset_timestamp_seconds{identity="default"}"#,
            1_796_000_300.0,
        ),
        (
            r#"ado_auth_proxy_upstream_retry_after_seconds{identity="default"}"#,
            3.0,
        ),
        (
            r#"ado_auth_proxy_upstream_retry_after_total{identity="default"}"#,
            1.0,
        ),
        (
            r#"ado_auth_proxy_upstream_rate_limit_delay_seconds_sum{identity="default"}"#,
            2.5,
        ),
        (
            r#"ado_auth_proxy_upstream_rate_limit_delay_seconds_count{identity="default"}"#,
            1.0,
        ),
        (
            r#"ado_auth_proxy_upstream_rate_limit_delay_seconds_bucket{identity="default",le="2.5"}"#,
            1.0,
        ),
        (
            r#"ado_auth_proxy_upstream_rate_limit_delay_seconds_bucket{identity="default",le="1"}"#,
            0.0,
        ),
        // A 200, however slowed, is not a 429.
        (
            r#"ado_auth_proxy_upstream_throttled_total{identity="default"}"#,
            0.0,
        ),
    ] {
        assert_eq!(stack.metric(series).await, value, "{series}");
    }
    // An answer without the headers leaves the last values in place.
    assert_eq!(
        support::get(&stack.url("/contoso/_apis/projects"), &[])
            .await
            .status,
        200
    );
    assert_eq!(
        stack
            .metric(r#"ado_auth_proxy_upstream_rate_limit_remaining{identity="default"}"#)
            .await,
        12.0
    );
}

#[tokio::test]
async fn sign_in_pages_are_counted_and_never_passed_on() {
    let stack = Stack::start().await;
    let reply = support::get(&stack.url("/_test/status/203"), &[]).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert!(!reply.text().contains("status 203"), "{}", reply.text());
    // The first answer and the replay with a renewed token.
    assert_eq!(
        stack
            .metric(r#"ado_auth_proxy_upstream_non_authoritative_total{identity="default"}"#)
            .await,
        2.0
    );
}

#[tokio::test]
async fn in_flight_requests_finish_during_graceful_shutdown() {
    let mut stack = Stack::start().await;
    let url = stack.url("/_test/slow?ms=700");
    let pending = tokio::spawn(async move { support::get(&url, &[]).await });
    // Shut down only once the request is in flight upstream.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stack.devops.requests().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the request never arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stack.shutdown().await;
    let reply = pending.await.expect("request task");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        tokio::net::TcpStream::connect(stack.proxy).await.is_err(),
        "the listener is closed after shutdown"
    );
}

#[tokio::test]
async fn a_client_that_never_finishes_its_request_head_is_disconnected() {
    let stack = Stack::start_with(Options {
        listen_toml: "header_read_timeout = \"300ms\"".into(),
        ..Options::default()
    })
    .await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Taken before connecting: the server's timer starts when it accepts.
    let started = std::time::Instant::now();
    let mut slow = tokio::net::TcpStream::connect(stack.proxy)
        .await
        .expect("connect");
    slow.write_all(b"GET /contoso/_apis/projects HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        slow.read_to_end(&mut rest),
    )
    .await;
    assert!(closed.is_ok(), "the connection is closed, not left hanging");
    assert!(started.elapsed() >= std::time::Duration::from_millis(250));
    assert!(stack.devops.requests().is_empty());
    // Idle keep-alive connections are closed by the same timer.
    let mut idle = tokio::net::TcpStream::connect(stack.proxy)
        .await
        .expect("connect");
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        idle.read_to_end(&mut rest),
    )
    .await;
    assert!(closed.is_ok(), "an idle connection is closed");
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_until_one_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stack = Stack::start_with(Options {
        listen_toml: "max_connections = 1".into(),
        ..Options::default()
    })
    .await;
    let mut first = tokio::net::TcpStream::connect(stack.proxy)
        .await
        .expect("connect");
    // An answer on it proves the acceptor took the only slot (the connection stays open).
    let keep_alive = format!(
        "GET /contoso/_apis/projects HTTP/1.1\r\nHost: {}\r\n\r\n",
        stack.proxy
    );
    first.write_all(keep_alive.as_bytes()).await.expect("write");
    let mut head = [0u8; 12];
    first.read_exact(&mut head).await.expect("answered");
    assert_eq!(&head, b"HTTP/1.1 200");
    let mut second = tokio::net::TcpStream::connect(stack.proxy)
        .await
        .expect("kernel backlog");
    let request = format!(
        "GET /contoso/_apis/projects HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        stack.proxy
    );
    second.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let waited = tokio::time::timeout(
        std::time::Duration::from_millis(500),
        second.read_to_end(&mut answer),
    )
    .await;
    assert!(waited.is_err(), "no answer while the only slot is taken");
    drop(first);
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        second.read_to_end(&mut answer),
    )
    .await
    .expect("served once the slot is free")
    .expect("read");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn upstream_connections_are_reused_and_one_streaming_a_body_is_passed_over() {
    // One worker thread: one connection pool.
    let stack = Stack::start_with(Options {
        listen_toml: "workers = 1\n".into(),
        ..Options::default()
    })
    .await;
    let probe = stack.url("/contoso/_apis/connectionData");
    for _ in 0..5 {
        assert_eq!(support::get(&probe, &[]).await.status, 200);
    }
    let peers = |stack: &Stack| {
        stack
            .devops
            .requests()
            .iter()
            .map(|r| r.peer.expect("peer recorded"))
            .collect::<std::collections::HashSet<_>>()
    };
    assert_eq!(peers(&stack).len(), 1, "five requests, one connection");

    // A download held after its first MiB keeps its connection busy: a request meanwhile takes
    // another connection instead of waiting behind it.
    let download = http::Request::get(stack.url("/_test/download?bytes=4000000&gate=1"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let response = support::send(download).await.expect("download head");
    let mut body = response.into_body();
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), body.frame())
        .await
        .expect("first bytes")
        .expect("a frame")
        .expect("not an error");
    let first_len = first.data_ref().map_or(0, |data| data.len());
    assert!(first_len > 0);
    let reply = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        support::get(&probe, &[]),
    )
    .await
    .expect("not queued behind the download");
    assert_eq!(reply.status, 200);
    assert_eq!(peers(&stack).len(), 2);
    stack.devops.release_download();
    let rest = body.collect().await.expect("rest");
    assert_eq!(
        first_len + rest.to_bytes().len(),
        4_000_000,
        "the whole download"
    );

    // Both connections are idle again: nothing new is opened, and one after another the requests
    // keep to the most recently used connection, so the other can age out.
    for _ in 0..4 {
        assert_eq!(support::get(&probe, &[]).await.status, 200);
    }
    assert_eq!(peers(&stack).len(), 2);
    let requests = stack.devops.requests();
    let last_four: std::collections::HashSet<_> =
        requests.iter().rev().take(4).map(|r| r.peer).collect();
    assert_eq!(
        last_four.len(),
        1,
        "sequential requests share one connection"
    );

    // Azure DevOps may close a kept-alive connection at any time (here: `Connection: close` on
    // every answer of this route): the next request never fails on it, whether the pool already
    // dropped it or hyper refuses to start the request on it and it is retried on a fresh one
    // (which of the two happens is a race; neither may show as an error).
    for _ in 0..20 {
        let reply = support::get(&stack.url("/_test/hop-by-hop"), &[]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(support::get(&probe, &[]).await.status, 200);
    }
}

/// The proxy (one worker: one connection pool) in front of a TLS upstream offering `alpn`,
/// trusted through `upstream.ca_file`.
async fn tls_stack(alpn: &[&[u8]]) -> (TlsUpstream, Stack) {
    tls_stack_with(alpn, false).await
}

async fn tls_stack_with(alpn: &[&[u8]], one_request_per_connection: bool) -> (TlsUpstream, Stack) {
    let upstream = TlsUpstream::start_with(alpn, one_request_per_connection).await;
    let stack = Stack::start_with(tls_options(upstream.url())).await;
    (upstream, stack)
}

/// One worker (one connection pool) in front of the TLS upstream at `url`, trusting the test CA.
fn tls_options(url: String) -> Options {
    Options {
        upstream_url: Some(url),
        upstream_toml: format!("ca_file = \"{}\"\n", TlsUpstream::ca_file().display()),
        listen_toml: "workers = 1\n".into(),
        ..Options::default()
    }
}

#[tokio::test]
async fn a_tls_upstream_is_reached_over_h2_when_alpn_offers_it_and_http1_otherwise() {
    for (alpn, version) in [
        (&[&b"h2"[..], b"http/1.1"][..], http::Version::HTTP_2),
        (&[&b"http/1.1"[..]][..], http::Version::HTTP_11),
    ] {
        let (upstream, stack) = tls_stack(alpn).await;
        for _ in 0..5 {
            let reply = support::get(
                &stack.url("/contoso/_apis/projects"),
                &[("authorization", &basic_pat())],
            )
            .await;
            assert_eq!(reply.status, 200, "{version:?}: {}", reply.text());
        }
        let seen = upstream.seen();
        assert_eq!(seen.len(), 5);
        let authority = upstream.url().trim_start_matches("https://").to_string();
        for request in &seen {
            assert_eq!(request.version, version);
            assert_eq!(request.authority, authority);
            let bearer = request.authorization.as_deref().unwrap_or_default();
            assert!(bearer.starts_with("Bearer ey"), "{bearer}");
            assert!(!bearer.contains(OLD_PAT));
        }
        let connections: std::collections::HashSet<_> = seen.iter().map(|s| s.peer).collect();
        assert_eq!(connections.len(), 1, "{version:?}: one connection, reused");
    }

    // A burst on a fresh proxy shares one new h2 connection instead of opening one each.
    let (upstream, stack) = tls_stack(&[b"h2", b"http/1.1"]).await;
    let url = stack.url("/contoso/_apis/projects");
    let burst: Vec<_> = (0..10)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { support::get(&url, &[]).await })
        })
        .collect();
    for request in burst {
        let reply = request.await.expect("request task");
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let connections: std::collections::HashSet<_> =
        upstream.seen().iter().map(|s| s.peer).collect();
    assert_eq!(
        connections.len(),
        1,
        "ten concurrent requests, one h2 connection"
    );
}

#[tokio::test]
async fn an_h2_connection_the_upstream_recycles_costs_no_request() {
    // Every upstream connection sends GOAWAY after its first answer: the pooled h2 connection
    // is gone (or going) whenever the next request comes, and that request must still succeed.
    let (upstream, stack) = tls_stack_with(&[b"h2"], true).await;
    let probe = stack.url("/contoso/_apis/connectionData");
    // Eight clients, each sending ten requests one after another: requests keep arriving
    // while connections are being recycled.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let probe = probe.clone();
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..10 {
                    statuses.push(support::get(&probe, &[]).await.status);
                }
                statuses
            })
        })
        .collect();
    for client in clients {
        let statuses = client.await.expect("client task");
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }
    let seen = upstream.seen();
    assert_eq!(seen.len(), 80);
    assert!(seen.iter().all(|s| s.version == http::Version::HTTP_2));
    let connections: std::collections::HashSet<_> = seen.iter().map(|s| s.peer).collect();
    assert!(
        connections.len() > 1,
        "the upstream did recycle connections"
    );
}

#[tokio::test]
async fn a_request_the_upstream_refused_unprocessed_is_sent_again_if_its_body_was_kept() {
    let upstream = RefusingUpstream::start().await;
    let stack = Stack::start_with(tls_options(upstream.url())).await;
    // Refused once each: a GET, a small POST (kept for replays) and a POST too large to keep.
    let get = support::get(&stack.url("/contoso/_apis/refused-get"), &[]).await;
    assert_eq!(get.status, 200, "{:?}", get.body);
    let small = support::request(
        "POST",
        &stack.url("/contoso/_apis/refused-small"),
        &[],
        vec![b's'; 1000],
    )
    .await;
    assert_eq!(small.status, 200, "{:?}", small.body);
    assert_eq!(&small.body[..], b"1000", "sent again with its whole body");
    let large = support::request(
        "POST",
        &stack.url("/contoso/_apis/refused-large"),
        &[],
        vec![b'l'; 256 * 1024],
    )
    .await;
    assert_eq!(large.status, 502, "a streamed body cannot be sent again");
    assert_eq!(upstream.refused().len(), 3);
    let mut answered = upstream.answered();
    answered.sort();
    assert_eq!(
        answered,
        [
            ("/contoso/_apis/refused-get".to_owned(), 0),
            ("/contoso/_apis/refused-small".to_owned(), 1000)
        ]
    );
}

#[tokio::test]
async fn a_request_the_upstream_may_have_processed_is_not_sent_again() {
    let upstream = RefusingUpstream::start().await;
    let stack = Stack::start_with(tls_options(upstream.url())).await;
    // The upstream closes the connection with GOAWAY(NO_ERROR) naming the stream as processed:
    // the proxy cannot tell whether it was, so neither a GET nor a POST goes out again.
    let get = support::get(&stack.url("/contoso/_apis/goaway-get"), &[]).await;
    assert_eq!(get.status, 502, "{:?}", get.body);
    let post = support::request(
        "POST",
        &stack.url("/contoso/_apis/goaway-post"),
        &[],
        vec![b'p'; 100],
    )
    .await;
    assert_eq!(post.status, 502, "{:?}", post.body);
    assert_eq!(upstream.refused().len(), 2);
    assert!(upstream.answered().is_empty(), "{:?}", upstream.answered());
    // The pool does not keep the closed connection: the next request is answered.
    let after = support::get(&stack.url("/contoso/_apis/goaway-get"), &[]).await;
    assert_eq!(after.status, 200, "{:?}", after.body);
}

#[tokio::test]
async fn an_upstream_connection_idle_past_pool_idle_timeout_is_closed() {
    let stack = Stack::start_with(Options {
        listen_toml: "workers = 1\n".into(),
        upstream_toml: "pool_idle_timeout = \"1s\"\n".into(),
        ..Options::default()
    })
    .await;
    let probe = stack.url("/contoso/_apis/connectionData");
    assert_eq!(support::get(&probe, &[]).await.status, 200);
    assert_eq!(support::get(&probe, &[]).await.status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(support::get(&probe, &[]).await.status, 200);
    let peers: Vec<_> = stack.devops.requests().iter().map(|r| r.peer).collect();
    assert_eq!(peers[0], peers[1], "reused while fresh");
    assert_ne!(
        peers[1], peers[2],
        "a new connection after the idle timeout"
    );
}

#[tokio::test]
async fn an_upload_the_client_breaks_off_is_aborted_upstream_over_h2_too() {
    use tokio::io::AsyncWriteExt as _;
    let (upstream, stack) = tls_stack(&[b"h2"]).await;
    // Larger than upstream.max_replay_body_bytes, so it streams; half of it is ever sent.
    let mut client = tokio::net::TcpStream::connect(stack.proxy)
        .await
        .expect("connect");
    let head = format!(
        "POST /contoso/_apis/upload HTTP/1.1\r\nHost: {}\r\nContent-Length: 1048576\r\n\r\n",
        stack.proxy
    );
    client.write_all(head.as_bytes()).await.expect("head");
    client
        .write_all(&vec![b'u'; 512 * 1024])
        .await
        .expect("half the body");
    client.flush().await.expect("flush");
    let wait = |what: &'static str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        move || assert!(std::time::Instant::now() < deadline, "{what}")
    };
    // Break off only once the upload is under way upstream.
    let in_time = wait("the upload never reached the upstream");
    while upstream.arrived() == 0 {
        in_time();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(client);

    let series = r#"ado_auth_proxy_upstream_errors_total{kind="client_aborted"}"#;
    let in_time = wait("the abort was never counted as client_aborted");
    while stack.metric(series).await < 1.0 {
        in_time();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let in_time = wait("the upstream never finished reading");
    while upstream.seen().is_empty() {
        in_time();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert!(!seen[0].body_complete, "the upstream got a complete body");
}
