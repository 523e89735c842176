//! Loopback upstream for `benches/compare.sh`: a stand-in for both Azure DevOps and Entra ID.
//!
//! `cargo run --release --example bench-upstream -- PORT`
//!
//! Listens on `127.0.0.1:PORT` (HTTP/1.1 keep-alive and h2c) and serves:
//! - `GET /small`: a fixed ~300-byte JSON body (an Azure DevOps-shaped project list entry);
//! - `GET /download?bytes=N`: N bytes with `content-length`, streamed from one static 64 KiB
//!   chunk (each frame is a `Bytes` slice of it: no allocation and no copy per chunk);
//! - `GET /json?bytes=N`: N bytes of JSON-shaped text (`application/json`) with two absolute
//!   Azure DevOps URLs in every 256 bytes, streamed like `/download` from a static chunk: the
//!   proxy rewrites every one of them;
//! - `POST|PUT /upload`: drains the request body and answers the byte count as text;
//! - `POST /{tenant}/oauth2/v2.0/token`: an Entra ID-shaped token response with a ~1400-character
//!   opaque access token, so the proxy can use this server as its `authority`;
//! - anything else: `404`.
//!
//! Runtime: a multi-thread tokio runtime with ONE worker thread. The machine the benchmark targets
//! has 2 cores shared by the load generator, the system under test and this upstream; pinning the
//! upstream to one worker keeps its share of the CPU the same for every target (direct, nginx,
//! proxy), so differences between targets come from the system under test. Override with the
//! `BENCH_UPSTREAM_THREADS` environment variable.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

const CHUNK_SIZE: usize = 64 * 1024;

const SMALL_BODY: &str = concat!(
    r#"{"count":1,"value":[{"id":"eb6e4656-77fc-42a1-9181-4c6d8e9da5d1","#,
    r#""name":"Fabrikam-Fiber-TFVC","description":"Team Foundation Version Control projects.","#,
    r#""url":"https://dev.azure.com/fabrikam/_apis/projects/eb6e4656-77fc-42a1-9181-4c6d8e9da5d1","#,
    r#""state":"wellFormed","revision":411,"visibility":"private","#,
    r#""lastUpdateTime":"2024-05-01T10:00:00Z"}]}"#
);

type RespBody = BoxBody<Bytes, Infallible>;

/// A body of `remaining` bytes made of slices of one shared 64 KiB chunk.
struct Download {
    chunk: Bytes,
    remaining: u64,
}

impl Body for Download {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = usize::try_from(self.remaining).map_or(CHUNK_SIZE, |r| r.min(CHUNK_SIZE));
        self.remaining -= n as u64;
        let data = if n == CHUNK_SIZE {
            self.chunk.clone()
        } else {
            self.chunk.slice(..n)
        };
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

struct State {
    chunk: Bytes,
    /// 64 KiB of 256-byte JSON-shaped records, each with two Azure DevOps URLs.
    json_chunk: Bytes,
    token_response: Bytes,
}

/// One record of `/json`: exactly 256 bytes.
fn json_record() -> Vec<u8> {
    let mut record = br#"{"id":"eb6e4656","url":"https://dev.azure.com/fabrikam/_apis/projects/eb6e4656","feed":"https://pkgs.dev.azure.com/fabrikam/_packaging/internal/nuget/v3/index.json","#.to_vec();
    record.resize(254, b' ');
    record.extend_from_slice(b"},");
    record
}

fn full(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<RespBody> {
    let mut resp = Response::new(Full::new(body.into()).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn query_bytes(query: Option<&str>) -> Option<u64> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("bytes="))
        .and_then(|v| v.parse().ok())
}

/// Reads and discards a request body, returning how many bytes it had.
async fn drain(body: Incoming) -> Result<u64, hyper::Error> {
    let mut body = body;
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            total += data.len() as u64;
        }
    }
    Ok(total)
}

fn is_token_path(path: &str) -> bool {
    // /{tenant}/oauth2/v2.0/token
    let mut segs = path.trim_start_matches('/').split('/');
    matches!(
        (segs.next(), segs.next(), segs.next(), segs.next(), segs.next()),
        (Some(t), Some("oauth2"), Some("v2.0"), Some("token"), None) if !t.is_empty()
    )
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, hyper::Error> {
    let path = req.uri().path();
    let resp = match (req.method(), path) {
        (&Method::GET, "/small") => full(
            StatusCode::OK,
            "application/json; charset=utf-8",
            SMALL_BODY,
        ),
        (&Method::GET, "/download") => match query_bytes(req.uri().query()) {
            Some(n) => {
                let mut resp = Response::new(
                    Download {
                        chunk: state.chunk.clone(),
                        remaining: n,
                    }
                    .boxed(),
                );
                let headers = resp.headers_mut();
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
                resp
            }
            None => full(StatusCode::BAD_REQUEST, "text/plain", "want ?bytes=N\n"),
        },
        (&Method::GET, "/json") => match query_bytes(req.uri().query()) {
            Some(n) => {
                let mut resp = Response::new(
                    Download {
                        chunk: state.json_chunk.clone(),
                        remaining: n,
                    }
                    .boxed(),
                );
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/json; charset=utf-8"),
                );
                resp.headers_mut()
                    .insert(CONTENT_LENGTH, HeaderValue::from(n));
                resp
            }
            None => full(StatusCode::BAD_REQUEST, "text/plain", "want ?bytes=N\n"),
        },
        (&Method::POST | &Method::PUT, "/upload") => {
            let n = drain(req.into_body()).await?;
            full(StatusCode::OK, "text/plain", format!("{n}\n"))
        }
        (&Method::POST, p) if is_token_path(p) => {
            drain(req.into_body()).await?;
            full(
                StatusCode::OK,
                "application/json; charset=utf-8",
                state.token_response.clone(),
            )
        }
        _ => full(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    };
    Ok(resp)
}

/// A deterministic ~1400-character opaque token of `[A-Za-z0-9._-]` (JWT-like in shape only).
fn fake_token() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut part = |len: usize| -> String {
        (0..len)
            .map(|_| {
                // xorshift64
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ALPHABET[(x % 64) as usize] as char
            })
            .collect()
    };
    format!("eyJ0eXAiOiJKV1Qi{}.{}.{}", part(84), part(950), part(342))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::args()
        .nth(1)
        .ok_or("usage: bench-upstream PORT")?
        .parse()?;
    let threads: usize = match std::env::var("BENCH_UPSTREAM_THREADS") {
        Ok(v) => v.parse()?,
        Err(_) => 1,
    };
    let token = fake_token();
    // `BENCH_TOKEN_LIFETIME` (seconds) makes the proxy refresh often, for the soak.
    let lifetime: u64 = std::env::var("BENCH_TOKEN_LIFETIME")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3600);
    let token_response = serde_json::json!({
        "token_type": "Bearer",
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": token,
    })
    .to_string();
    let state = Arc::new(State {
        chunk: Bytes::from(vec![b'x'; CHUNK_SIZE]),
        json_chunk: Bytes::from(json_record().repeat(CHUNK_SIZE / 256)),
        token_response: Bytes::from(token_response),
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let listener = tokio::net::TcpListener::bind(addr).await?;
        eprintln!("bench-upstream listening on http://{addr} ({threads} worker thread(s))");
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let state = state.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(state.clone(), req));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}
