//! The proxy's own TLS listener, through the real binary: real curl over HTTP/1.1 and h2, real
//! git, a certificate rotated on disk served to the next connection while an open one carries
//! on, hyper's h2 limits on the wire, and the admin listener over TLS with `healthcheck`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use crate::cli::{Fakes, command, run, terminate, wait_ready};
use crate::git::{assert_ok, git, git_with};
use crate::support::fixtures;

const CA: &str = "listener-ca.pem";

/// `tls.crt` and `tls.key` in `dir`, copies of the named fixtures, as a Secret volume holds them.
fn install_certificate(dir: &Path, certificate: &str, key: &str) {
    // Written beside, then renamed over: a reader never sees half a file.
    for (fixture, name) in [(key, "tls.key"), (certificate, "tls.crt")] {
        let staged = dir.join(format!(".{name}.new"));
        std::fs::copy(fixtures::path(fixture), &staged).expect("stage");
        std::fs::rename(&staged, dir.join(name)).expect("rename into place");
    }
}

fn tls_table(dir: &Path) -> String {
    format!(
        "tls = {{ certificate_file = \"{}\", key_file = \"{}\" }}",
        dir.join("tls.crt").display(),
        dir.join("tls.key").display()
    )
}

fn first_certificate(fixture: &str) -> Vec<u8> {
    CertificateDer::pem_file_iter(fixtures::path(fixture))
        .expect("fixture")
        .next()
        .expect("one certificate")
        .expect("PEM")
        .to_vec()
}

/// A TLS connection that trusts the listener CA only and offers `alpn`.
async fn connect(
    address: SocketAddr,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(fixtures::path(CA)).expect("CA") {
        roots
            .add(certificate.expect("PEM"))
            .expect("CA certificate");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(address.ip().into()), tcp)
        .await
        .expect("TLS handshake with a certificate of the test CA")
}

fn served_certificate(stream: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().expect("certificate")[0].to_vec()
}

async fn curl(args: &[&str]) -> (String, String) {
    let output = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20"])
        .args(args)
        .output()
        .await
        .expect("curl runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "curl {args:?}: {stderr}\n{stdout}");
    (stdout, stderr)
}

#[tokio::test]
async fn curl_and_git_reach_the_proxy_over_tls_and_a_rotated_certificate_is_served_next() {
    let fakes = Fakes::start().await;
    fakes.devops.create_repo("contoso", "web", "web");
    let certs = fakes.dir.path().join("certs");
    std::fs::create_dir(&certs).expect("certs dir");
    install_certificate(&certs, "listener-cert.pem", "listener-key.rsa.pem");
    let config = fakes.write_config_with("tls.toml", 0, &tls_table(&certs), "");
    let child = run(command(&["--config", config.to_str().expect("utf-8")])).await;
    wait_ready(child.admin.port()).await;
    let base = format!("https://127.0.0.1:{}", child.proxy.port());
    let ca = fixtures::path(CA);
    let ca = ca.to_str().expect("utf-8");

    // curl over HTTP/1.1 and h2; the URLs in the answer are rewritten to the https listener.
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let (body, _) = curl(&[
            flag,
            "--cacert",
            ca,
            "--write-out",
            "\n%{http_code} %{http_version}",
            &format!("{base}/contoso/_apis/projects"),
        ])
        .await;
        let (json, status) = body.rsplit_once('\n').expect("status line");
        assert_eq!(status, format!("200 {version}"), "{flag}: {body}");
        assert!(
            json.contains(&format!("\"url\":\"{base}/contoso/_apis/projects/web\"")),
            "{flag}: the project URL names the proxy's https address: {json}"
        );
    }

    // Real git: clone and push over TLS, trusting the test CA only. (Debian's git, built on
    // libcurl-gnutls, takes the CA from GIT_SSL_CAINFO but not from `-c http.sslCAInfo`.)
    let work = tempfile::TempDir::new().expect("temp dir");
    let trust = [("GIT_SSL_CAINFO", ca)];
    let url = format!("{base}/contoso/web/_git/web");
    assert_ok(
        &git_with(work.path(), &["clone", &url, "web"], &trust).await,
        "git clone over TLS",
    );
    let repo = work.path().join("web");
    std::fs::write(repo.join("tls.txt"), "pushed over TLS").expect("write");
    assert_ok(&git(&repo, &["add", "tls.txt"]).await, "git add");
    assert_ok(
        &git(&repo, &["commit", "-q", "-m", "over TLS"]).await,
        "git commit",
    );
    assert_ok(
        &git_with(&repo, &["push", "origin", "main"], &trust).await,
        "git push over TLS",
    );

    // A keep-alive connection opened before the rotation...
    let before = connect(child.proxy, &[b"http/1.1"]).await;
    assert_eq!(
        served_certificate(&before),
        first_certificate("listener-cert.pem")
    );
    let (mut open, connection) = hyper::client::conn::http1::handshake(TokioIo::new(before))
        .await
        .expect("HTTP/1.1 over TLS");
    tokio::spawn(connection);
    let projects = || {
        http::Request::get("/contoso/_apis/projects")
            .header(
                http::header::HOST,
                format!("127.0.0.1:{}", child.proxy.port()),
            )
            .body(Empty::<Bytes>::new())
            .expect("request")
    };
    let first = open.send_request(projects()).await.expect("first request");
    assert_eq!(first.status(), 200);
    first.into_body().collect().await.expect("first body");

    // ...the files are replaced (an EC key this time), and the next connection gets the new one.
    install_certificate(
        &certs,
        "listener-rotated-cert.pem",
        "listener-rotated-key.ec.pem",
    );
    let rotated = first_certificate("listener-rotated-cert.pem");
    let mut served = Vec::new();
    for _ in 0..100 {
        served = served_certificate(&connect(child.proxy, &[b"h2"]).await);
        if served == rotated {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served, rotated, "the rotated certificate is served");
    // The connection from before carries on.
    let second = open.send_request(projects()).await.expect("second request");
    assert_eq!(second.status(), 200, "the open connection was not dropped");
    second.into_body().collect().await.expect("second body");

    let (_, logs) = terminate(child).await;
    assert!(logs.contains("configuration reloaded"), "{logs}");
    assert!(!logs.contains("PRIVATE KEY"), "{logs}");
}

#[tokio::test]
async fn h2_clients_get_the_servers_limits() {
    let fakes = Fakes::start().await;
    let certs = fakes.dir.path().join("certs");
    std::fs::create_dir(&certs).expect("certs dir");
    install_certificate(&certs, "listener-cert.pem", "listener-key.rsa.pem");
    let config = fakes.write_config_with("h2.toml", 0, &tls_table(&certs), "");
    let child = run(command(&["--config", config.to_str().expect("utf-8")])).await;
    wait_ready(child.admin.port()).await;

    let stream = connect(child.proxy, &[b"h2"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (client, connection) = h2::client::handshake(stream).await.expect("h2 handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let authority = format!("127.0.0.1:{}", child.proxy.port());
    let request = |extra: Option<String>| {
        let mut request = http::Request::get(format!("https://{authority}/contoso/_apis/projects"));
        if let Some(value) = extra {
            request = request.header("x-padding", value);
        }
        request.body(()).expect("request")
    };
    let (answer, _) = client.send_request(request(None), true).expect("send");
    let answer = answer.await.expect("answer");
    assert_eq!(answer.status(), 200, "an h2 request is served");
    // The server's SETTINGS have arrived by now.
    assert_eq!(client.current_max_send_streams(), 100);

    // A header list over `listen.max_header_bytes` (64 KiB by default) is refused before it is
    // forwarded.
    let (answer, _) = client
        .send_request(request(Some("x".repeat(80 * 1024))), true)
        .expect("send");
    match answer.await {
        Ok(answer) => assert_eq!(answer.status(), 431),
        Err(error) => assert!(error.is_reset() || error.is_go_away(), "{error}"),
    }
    let _ = terminate(child).await;
}

#[tokio::test]
async fn the_admin_listener_serves_tls_and_healthcheck_trusts_its_certificate() {
    let fakes = Fakes::start().await;
    let certs = fakes.dir.path().join("certs");
    std::fs::create_dir(&certs).expect("certs dir");
    install_certificate(&certs, "listener-cert.pem", "listener-key.rsa.pem");
    let admin_tls = tls_table(&certs);
    let config = fakes.write_config_with("admin-tls.toml", 0, "", &admin_tls);
    let child = run(command(&["--config", config.to_str().expect("utf-8")])).await;
    let admin_port = child.admin.port();
    // What `healthcheck` reads: the admin address the binary bound.
    let health: PathBuf = fakes.write_config_with("health.toml", admin_port, "", &admin_tls);
    let health = health.to_str().expect("utf-8");
    let mut healthy = false;
    for _ in 0..100 {
        let output = command(&["--config", health, "healthcheck"])
            .output()
            .await
            .expect("healthcheck runs");
        if output.status.success() {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healthy, "healthcheck passes over TLS");

    let ca = fixtures::path(CA);
    let (metrics, _) = curl(&[
        "--cacert",
        ca.to_str().expect("utf-8"),
        &format!("https://127.0.0.1:{admin_port}/metrics"),
    ])
    .await;
    assert!(metrics.contains("ado_auth_proxy_"), "{metrics}");
    // Plain HTTP gets no answer from a TLS listener.
    let plain = tokio::process::Command::new("curl")
        .args(["--silent", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{admin_port}/metrics"))
        .output()
        .await
        .expect("curl runs");
    assert!(!plain.status.success(), "plain HTTP is not served");

    // A healthcheck that finds another certificate there fails.
    let other = fakes.write_config_with(
        "other.toml",
        admin_port,
        "",
        &format!(
            "tls = {{ certificate_file = \"{}\", key_file = \"{}\" }}",
            fixtures::path("listener-rotated-cert.pem").display(),
            fixtures::path("listener-rotated-key.ec.pem").display()
        ),
    );
    let refused = command(&["--config", other.to_str().expect("utf-8"), "healthcheck"])
        .output()
        .await
        .expect("healthcheck runs");
    assert!(
        !refused.status.success(),
        "another certificate is not trusted"
    );
    let _ = terminate(child).await;
}

/// hyper's h2 server has no timeout of its own for a client that completes TLS and then says
/// nothing, or keeps a connection without using it: the proxy closes the first after
/// `listen.header_read_timeout` and sends GOAWAY to the second, as HTTP/1.1 keep-alive closes.
#[tokio::test]
async fn silent_and_idle_h2_connections_are_closed() {
    use tokio::io::AsyncReadExt as _;

    let fakes = Fakes::start().await;
    let certs = fakes.dir.path().join("certs");
    std::fs::create_dir(&certs).expect("certs dir");
    install_certificate(&certs, "listener-cert.pem", "listener-key.rsa.pem");
    let listen = format!("{}\nheader_read_timeout = \"1s\"", tls_table(&certs));
    let config = fakes.write_config_with("idle.toml", 0, &listen, "");
    let child = run(command(&["--config", config.to_str().expect("utf-8")])).await;
    wait_ready(child.admin.port()).await;

    // TLS with ALPN h2, then not even the connection preface.
    // The server's own SETTINGS come first; then the connection must end.
    let mut silent = connect(child.proxy, &[b"h2"]).await;
    let mut received = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut received))
        .await
        .expect("the silent connection is closed, not kept");
    assert!(
        received.len() < 1024,
        "only the server's preface: {received:?} {closed:?}"
    );

    // One request, then nothing: GOAWAY, and the connection ends cleanly.
    let (client, connection) = h2::client::handshake(connect(child.proxy, &[b"h2"]).await)
        .await
        .expect("h2 handshake");
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let request = http::Request::get(format!(
        "https://127.0.0.1:{}/contoso/_apis/projects",
        child.proxy.port()
    ))
    .body(())
    .expect("request");
    let (answer, _) = client.send_request(request, true).expect("send");
    assert_eq!(answer.await.expect("answer").status(), 200);
    let ended = tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("the idle connection is shut down");
    // The server closes the socket right after its GOAWAY when no stream is open: the client
    // may see that as its own write failing, never as a protocol error.
    match ended.expect("joined") {
        Ok(()) => {}
        Err(error) => assert!(
            error.is_io() || error.reason() == Some(h2::Reason::NO_ERROR),
            "{error:?}"
        ),
    }
    let _ = terminate(child).await;
}
