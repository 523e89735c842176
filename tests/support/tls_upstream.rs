//! A TLS upstream on 127.0.0.1, as Azure DevOps is reached in production: certificate from
//! tests/fixtures (valid for 127.0.0.1, issued by a test CA the proxy trusts through
//! `upstream.ca_file`, as it would a corporate TLS-inspection CA), h2 and/or HTTP/1.1
//! offered by ALPN. It answers every request with what it saw, and records it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::{Body, fixtures, json_response};

#[derive(Clone, Debug)]
pub struct Seen {
    pub version: Version,
    /// `Host`, or the h2 `:authority`.
    pub authority: String,
    pub authorization: Option<String>,
    /// The proxy's end of the TCP connection.
    pub peer: SocketAddr,
    /// The request body arrived whole (not reset or cut off).
    pub body_complete: bool,
}

pub struct TlsUpstream {
    addr: SocketAddr,
    /// Requests whose head arrived, counted before their body is read.
    arrived: Arc<AtomicUsize>,
    /// Requests answered, recorded once their body ended (whole or not).
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl TlsUpstream {
    /// `alpn`: the protocols offered, e.g. `[b"h2", b"http/1.1"]`.
    pub async fn start(alpn: &[&[u8]]) -> TlsUpstream {
        Self::start_with(alpn, false).await
    }

    /// With `one_request_per_connection`, each connection is shut down gracefully once it has
    /// answered a request (h2 GOAWAY; HTTP/1.1 `Connection: close`), as load balancers in
    /// front of Azure DevOps recycle connections.
    pub async fn start_with(alpn: &[&[u8]], one_request_per_connection: bool) -> TlsUpstream {
        let acceptor = acceptor(alpn);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let arrived: Arc<AtomicUsize> = Arc::default();
        let recorder = seen.clone();
        let counter = arrived.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    return;
                };
                let (acceptor, recorder, counter) =
                    (acceptor.clone(), recorder.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let answered = Arc::new(tokio::sync::Notify::new());
                    let notify = answered.clone();
                    let service = service_fn(move |request: Request<Incoming>| {
                        let (recorder, notify) = (recorder.clone(), notify.clone());
                        counter.fetch_add(1, Ordering::SeqCst);
                        async move {
                            let response = answer(&recorder, peer, request).await;
                            notify.notify_one();
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let connection = builder.serve_connection(TokioIo::new(tls), service);
                    tokio::pin!(connection);
                    if one_request_per_connection {
                        tokio::select! {
                            _ = connection.as_mut() => return,
                            _ = answered.notified() => connection.as_mut().graceful_shutdown(),
                        }
                    }
                    let _ = connection.await;
                });
            }
        });
        TlsUpstream {
            addr,
            arrived,
            seen,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    pub fn ca_file() -> PathBuf {
        fixtures::path("upstream-ca.pem")
    }

    pub fn arrived(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen lock").clone()
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// TLS with the fixture certificate, offering `alpn`.
fn acceptor(alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
    acceptor_with("upstream-cert.pem", "upstream-key.pk8.pem", alpn)
}

/// TLS with the fixture certificate and key of these names, offering `alpn`.
pub fn acceptor_with(certificate: &str, key: &str, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
    let certificate =
        CertificateDer::from_pem_file(fixtures::path(certificate)).expect("fixture cert");
    let key = PrivateKeyDer::from_pem_file(fixtures::path(key)).expect("fixture key");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(vec![certificate], key)
    .expect("server config");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// An h2 upstream (raw `h2`, TLS) that refuses the first stream for each path with
/// `RST_STREAM(REFUSED_STREAM)`, which RFC 9113 §8.7 defines as "not processed, safe to retry",
/// and answers later ones `200` with the number of body bytes it read. A path containing
/// `goaway` is refused instead by closing its connection with `GOAWAY(NO_ERROR)` naming that
/// stream as processed: the client cannot know whether it was.
pub struct RefusingUpstream {
    addr: SocketAddr,
    refused: Arc<Mutex<Vec<String>>>,
    answered: Arc<Mutex<Vec<(String, usize)>>>,
    task: JoinHandle<()>,
}

impl RefusingUpstream {
    pub async fn start() -> RefusingUpstream {
        let acceptor = acceptor(&[b"h2"]);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let refused: Arc<Mutex<Vec<String>>> = Arc::default();
        let answered: Arc<Mutex<Vec<(String, usize)>>> = Arc::default();
        let (refusals, answers) = (refused.clone(), answered.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, refusals, answers) =
                    (acceptor.clone(), refusals.clone(), answers.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut connection) = h2::server::handshake(tls).await else {
                        return;
                    };
                    // Held, unanswered, until the connection ends (dropping one resets its stream).
                    let mut cut_off = Vec::new();
                    // Accepting drives the connection; each stream is served on its own task.
                    while let Some(Ok((request, mut respond))) = connection.accept().await {
                        let path = request.uri().path().to_owned();
                        let first = {
                            let mut refused = refusals.lock().expect("refused lock");
                            let first = !refused.contains(&path);
                            if first {
                                refused.push(path.clone());
                            }
                            first
                        };
                        if first && path.contains("goaway") {
                            connection.abrupt_shutdown(h2::Reason::NO_ERROR);
                            cut_off.push(respond);
                            continue;
                        }
                        if first {
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                            continue;
                        }
                        let answers = answers.clone();
                        tokio::spawn(async move {
                            let mut body = request.into_body();
                            let mut length = 0;
                            while let Some(Ok(chunk)) = body.data().await {
                                length += chunk.len();
                                let _ = body.flow_control().release_capacity(chunk.len());
                            }
                            answers.lock().expect("answered lock").push((path, length));
                            let head = http::Response::builder()
                                .status(StatusCode::OK)
                                .body(())
                                .expect("response head");
                            if let Ok(mut send) = respond.send_response(head, false) {
                                let _ = send.send_data(length.to_string().into(), true);
                            }
                        });
                    }
                });
            }
        });
        RefusingUpstream {
            addr,
            refused,
            answered,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// Paths whose first stream was refused.
    pub fn refused(&self) -> Vec<String> {
        self.refused.lock().expect("refused lock").clone()
    }

    /// Paths answered, with the body bytes read.
    pub fn answered(&self) -> Vec<(String, usize)> {
        self.answered.lock().expect("answered lock").clone()
    }
}

impl Drop for RefusingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads the whole request body first, as an upload endpoint would.
async fn answer(
    recorder: &Mutex<Vec<Seen>>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Response<Body> {
    let authority = request
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            request
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let seen = Seen {
        version: request.version(),
        authority,
        authorization: request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        peer,
        body_complete: false,
    };
    let path = request.uri().path().to_owned();
    let mut seen = seen;
    let body_bytes = match request.into_body().collect().await {
        Ok(body) => {
            seen.body_complete = true;
            body.to_bytes().len()
        }
        Err(_) => 0,
    };
    let body =
        json!({ "version": format!("{:?}", seen.version), "path": path, "body_bytes": body_bytes });
    recorder.lock().expect("seen lock").push(seen);
    json_response(StatusCode::OK, &body)
}
