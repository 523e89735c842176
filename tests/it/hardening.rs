//! What a security review of the shared deployment asked for, through the real server: each test
//! fails without its fix.

use http::StatusCode;

use crate::access::Keys;
use crate::harness::{Options, Stack, basic};
use crate::support;

#[tokio::test]
async fn only_seven_methods_in_their_canonical_spelling_are_forwarded() {
    // Open mode with a rule for every method, as the sidecar example ships.
    let stack = Stack::start().await;
    let url = stack.url("/contoso/_apis/projects");
    let before = stack.devops.requests().len();
    for method in [
        "trace", "Trace", "TRACK", "connect", "get", "head", "Post", "PROPFIND", "FOO",
    ] {
        let reply = support::request(method, &url, &[], bytes::Bytes::new()).await;
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(
            reply.header("allow"),
            Some("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            "{method}"
        );
    }
    assert_eq!(
        stack.devops.requests().len(),
        before,
        "nothing was forwarded"
    );
    let ok = support::get(&url, &[]).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
}

#[tokio::test]
async fn a_lower_case_push_preflight_is_not_a_way_around_the_push_rule() {
    let keys = Keys::new();
    let stack = Stack::start_with(Options {
        access_toml: keys.access_toml(),
        ..Options::default()
    })
    .await;
    let reader = basic("git", &keys.reader);
    let url = stack.url("/contoso/web/_git/web/info/refs?service=git-receive-pack");
    let upper = support::request(
        "GET",
        &url,
        &[("authorization", &reader)],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(
        upper.status,
        StatusCode::FORBIDDEN,
        "judged as the push it announces"
    );
    let lower = support::request(
        "get",
        &url,
        &[("authorization", &reader)],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(lower.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(
        !stack
            .devops
            .requests()
            .iter()
            .any(|r| r.uri.contains("git-receive-pack")),
        "the advertisement never reached Azure DevOps"
    );
}

#[tokio::test]
async fn segments_iis_may_read_as_dot_dot_are_refused() {
    let stack = Stack::start().await;
    let before = stack.devops.requests().len();
    for path in [
        "/contoso/web/_git/web/..%20/admin",
        "/contoso/web/_git/web/%2e%2e%20/admin",
        "/contoso/web/_git/web/%2e%2e./admin",
        "/contoso/web/_git/web/.../admin",
        "/contoso/web/_git/web/..%3Bx/admin",
        "/contoso/web/_git/web/%EF%BC%8E%EF%BC%8E/admin",
    ] {
        let reply = support::get(&stack.url(path), &[]).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(reply.json()["error"], "bad_request", "{path}");
    }
    assert_eq!(
        stack.devops.requests().len(),
        before,
        "nothing was forwarded"
    );
}

/// An upstream on 127.0.0.1 that answers every request with `response`, byte for byte, and
/// closes the connection.
async fn raw_upstream(response: &'static [u8]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(response).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

/// The proxy's answer to a GET when Azure DevOps answers `response`, byte for byte.
async fn through_raw_upstream(response: &'static [u8]) -> support::Reply {
    let stack = Stack::start_with(Options {
        upstream_url: Some(raw_upstream(response).await),
        ..Options::default()
    })
    .await;
    support::get(&stack.url("/contoso/_apis/x"), &[]).await
}

#[tokio::test]
async fn a_length_beside_chunked_framing_is_dropped_not_passed_on() {
    let reply = through_raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\
          Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "hello");
    assert_eq!(reply.header("content-length"), None);
}

#[tokio::test]
async fn an_upload_slower_than_the_response_timeout_still_completes() {
    use http_body_util::BodyExt as _;
    let stack = Stack::start_with(Options {
        upstream_toml: "response_timeout = \"1s\"".into(),
        ..Options::default()
    })
    .await;
    let (tx, body) = support::body_channel(1);
    // No length: it streams (a kept body would be read whole before anything is sent).
    let request = http::Request::post(stack.url("/_test/upload"))
        .header("authorization", crate::harness::basic_pat())
        .body(body)
        .expect("request");
    let response = tokio::spawn(support::send(request));
    // Steadily sent over three response timeouts.
    let chunk = bytes::Bytes::from(vec![7u8; 16 * 1024]);
    for _ in 0..12 {
        tx.send(Ok(chunk.clone())).await.expect("send");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    drop(tx);
    let response = response.await.expect("task").expect("response");
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "not 504 halfway through the body"
    );
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let answer: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(answer["bytes"], 12 * 16 * 1024);
}

/// Reads until the server closes the connection, returning what arrived before (a reset, as
/// when the server closes with our request unread, counts as closed); `None` if it is still
/// open after 10 s.
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt as _;
    let mut all = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut all),
    )
    .await
    .ok()?;
    match read {
        Ok(_) => Some(String::from_utf8_lossy(&all).into_owned()),
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {
            Some(String::from_utf8_lossy(&all).into_owned())
        }
        Err(error) => panic!("reading: {error}"),
    }
}

#[tokio::test]
async fn refused_callers_lose_their_connection_and_one_address_gets_its_share_only() {
    use tokio::io::AsyncWriteExt as _;
    let keys = Keys::new();
    let stack = Stack::start_with(Options {
        listen_toml: "address = \"127.0.0.1:0\"\nmax_connections_per_address = 2".into(),
        access_toml: keys.access_toml(),
        ..Options::default()
    })
    .await;
    // A 401 closes its connection, though the request asked to keep it.
    let mut anonymous = tokio::net::TcpStream::connect(stack.proxy)
        .await
        .expect("connect");
    anonymous
        .write_all(b"GET /contoso/_apis/projects HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    let answer = read_until_closed(&mut anonymous)
        .await
        .expect("closed by the proxy");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

    // Two idle connections are this address' share: a third is closed unanswered.
    let _first = tokio::net::TcpStream::connect(stack.proxy)
        .await
        .expect("connect");
    let second = tokio::net::TcpStream::connect(stack.proxy)
        .await
        .expect("connect");
    let mut third = tokio::net::TcpStream::connect(stack.proxy)
        .await
        .expect("connect");
    let _ = third
        .write_all(b"GET /contoso/_apis/projects HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert_eq!(
        read_until_closed(&mut third).await.as_deref(),
        Some(""),
        "closed unanswered"
    );

    // Once one of them closes, the address may connect again.
    drop(second);
    let reader = basic("git", &keys.reader);
    let url = stack.url("/contoso/_apis/projects");
    for attempt in 0.. {
        let sent = support::send(
            http::Request::get(&url)
                .header("authorization", &reader)
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .expect("request"),
        )
        .await;
        match sent {
            Ok(response) => {
                assert_eq!(response.status(), StatusCode::OK);
                break;
            }
            Err(_) if attempt < 100 => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(error) => panic!("the freed slot never came back: {error}"),
        }
    }
}

#[tokio::test]
async fn steering_headers_stay_behind_and_credentials_never_come_back() {
    let stack = Stack::start().await;
    let reply = support::get(
        &stack.url("/_test/echo"),
        &[
            ("x-ms-original-url", "/_admin"),
            ("x-original-host", "evil.example"),
            ("x-host", "evil.example"),
            ("x-real-ip", "10.1.2.3"),
            ("true-client-ip", "10.1.2.3"),
            ("x-arr-ssl", "1"),
            ("x-vss-forcemsapassthrough", "true"),
            ("x-tfs-fedauthredirect", "Allow"),
            ("x-tfs-session", "kept"),
        ],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let received = reply.json()["headers"].clone();
    for gone in [
        "x-ms-original-url",
        "x-original-host",
        "x-host",
        "x-real-ip",
        "true-client-ip",
        "x-arr-ssl",
        "x-vss-forcemsapassthrough",
    ] {
        assert!(
            received.get(gone).is_none(),
            "{gone} reached Azure DevOps: {received}"
        );
    }
    assert_eq!(
        received["x-tfs-fedauthredirect"],
        serde_json::json!(["Suppress"]),
        "the proxy's only"
    );
    assert_eq!(received["x-tfs-session"], serde_json::json!(["kept"]));

    // Azure DevOps' own challenge and cookies never reach the client, on any status.
    let reply = through_raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\
          WWW-Authenticate: Bearer authorization_uri=https://login.windows.net/t\r\n\
          WWW-Authenticate: Basic realm=\"https://dev.azure.com/\"\r\n\
          Set-Cookie: UserAuthentication=secret\r\nSet-Cookie2: old=secret\r\n\
          X-Kept: yes\r\nConnection: close\r\n\r\nok",
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-kept"), Some("yes"));
    for gone in ["www-authenticate", "set-cookie", "set-cookie2"] {
        assert_eq!(reply.header(gone), None, "{gone}");
    }
}

#[tokio::test]
async fn a_stalled_tls_handshake_is_a_connect_failure_not_a_response_timeout() {
    // Accepts TCP and then says nothing: TLS never completes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let stack = Stack::start_with(Options {
        upstream_url: Some(format!("https://127.0.0.1:{}", addr.port())),
        upstream_toml: format!(
            "ca_file = \"{}\"\nconnect_timeout = \"500ms\"\nresponse_timeout = \"20s\"\n",
            crate::support::tls_upstream::TlsUpstream::ca_file().display()
        ),
        ..Options::default()
    })
    .await;
    let reply = support::get(&stack.url("/contoso/_apis/projects"), &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert!(
        stack
            .metrics()
            .await
            .contains(r#"ado_auth_proxy_upstream_errors_total{kind="connect"} 1"#)
    );
    silent.abort();
}
