//! Accepting and serving connections: connection limit, header-read timeout, header size limit,
//! HTTP/1.1 keep-alive, TLS with h2 by ALPN, graceful drain on shutdown.
//!
//! The proxy listener has one acceptor that deals connections round-robin to worker threads,
//! each serving its share on its own single-threaded runtime; the admin listener is served where
//! it is accepted. Plain listeners speak HTTP/1.1 only: git, curl, the SDKs and package managers
//! speak it to a plain `http://` proxy, and hyper's HTTP/1 builder can cap header size itself.
//! A TLS listener also offers h2 by ALPN, with the limits a public h2 server needs (see
//! [`http2_builder`]).

pub mod admin;
mod limits;
pub mod worker;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Version};
use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

pub use self::limits::{Limits, Slot};

/// What serves one request: any `Fn(Request) -> impl Future<Output = Response>` whose body
/// streams bytes, named once here instead of in every function's bounds.
pub trait Handler: Clone + Send + Sync + 'static {
    type Body: Body<Data = bytes::Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + 'static;
    type Future: Future<Output = Response<Self::Body>> + Send + 'static;
    /// `peer`: the address the connection came from.
    fn call(&self, request: Request<Incoming>, peer: SocketAddr) -> Self::Future;
}

impl<H, F, B> Handler for H
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = bytes::Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + 'static,
{
    type Body = B;
    type Future = F;
    fn call(&self, request: Request<Incoming>, peer: SocketAddr) -> F {
        self(request, peer)
    }
}

#[derive(Clone)]
pub struct ServeOptions {
    /// Also bounds a TLS handshake.
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub shutdown_grace_period: Duration,
    /// Set: connections are TLS, and h2 is served to clients that choose it by ALPN.
    pub tls: Option<TlsAcceptor>,
}

/// The ALPN protocols a TLS proxy listener offers, most preferred first.
pub const PROXY_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];
/// The admin listener answers probes and scrapes: HTTP/1.1 is all they need.
pub const ADMIN_ALPN: &[&[u8]] = &[b"http/1.1"];

/// Streams one client may have open at once on an h2 connection: a git fetch or a package
/// restore runs a few dozen in parallel at most.
const MAX_CONCURRENT_STREAMS: u32 = 100;
/// Streams a client may reset before the server has answered them, at once (the 2023 "rapid
/// reset" flood opens and cancels streams without end).
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Streams the server may reset for a client's protocol errors before it closes the connection
/// (the 2025 "MadeYouReset" flood makes the server do the resetting).
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 256;

/// An accepted connection on its way to a worker, holding its connection-limit slot.
pub struct Accepted {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    slot: Slot,
}

/// Accepts until `shutdown`, at most `max_connections` open at once, handing each connection and
/// its peer's address (as `accept` gave it: asking the socket again is a system call) to
/// `dispatch`. Waiting for a slot before accepting leaves excess connections in the kernel's
/// backlog instead of accepting work that cannot be served.
async fn accept_loop(
    listener: TcpListener,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
    mut dispatch: impl FnMut(TcpStream, SocketAddr, Slot),
) {
    loop {
        let room = tokio::select! {
            room = limits.room() => match room {
                Some(room) => room,
                None => break,
            },
            _ = stopped(&mut shutdown) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let Some(slot) = limits.admit(room, peer.ip()) else {
            tracing::debug!(peer = %peer.ip(), "connection refused: this address holds its share");
            continue;
        };
        let _ = stream.set_nodelay(true);
        dispatch(stream, peer, slot);
    }
}

/// Accepts proxy connections and deals them round-robin to the workers' channels.
pub async fn accept_for_workers(
    listener: TcpListener,
    limits: Limits,
    workers: Vec<mpsc::UnboundedSender<Accepted>>,
    shutdown: watch::Receiver<bool>,
) {
    let mut next = 0;
    accept_loop(listener, limits, shutdown, |stream, peer, slot| {
        let Ok(stream) = stream.into_std() else {
            return;
        };
        if !workers.is_empty() {
            let _ = workers[next % workers.len()].send(Accepted { stream, peer, slot });
            next = next.wrapping_add(1);
        }
    })
    .await;
}

/// Serves the connections a worker is dealt until the acceptor stops, then drains.
pub async fn serve_dealt<H: Handler>(
    mut connections: mpsc::UnboundedReceiver<Accepted>,
    options: ServeOptions,
    handler: H,
) {
    let server = ConnectionServer::new(&options, crate::timer::WorkerTimer);
    while let Some(Accepted { stream, peer, slot }) = connections.recv().await {
        match TcpStream::from_std(stream) {
            Ok(stream) => server.spawn(stream, peer, slot, handler.clone()),
            Err(error) => tracing::warn!(%error, "cannot register a connection"),
        }
    }
    server.drain(options.shutdown_grace_period).await;
}

/// Accepts and serves `listener` on the current runtime until `shutdown`, then drains.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    options: ServeOptions,
    limits: Limits,
    handler: H,
    shutdown: watch::Receiver<bool>,
) {
    let server = ConnectionServer::new(&options, TokioTimer::new());
    accept_loop(listener, limits, shutdown, |stream, peer, slot| {
        server.spawn(stream, peer, slot, handler.clone());
    })
    .await;
    server.drain(options.shutdown_grace_period).await;
}

/// hyper's h2 server with the limits a public h2 server needs. Beside the constants above: a
/// header list no larger than an HTTP/1.1 head may be (h2 0.4 also counts CONTINUATION frames
/// against it, which stops the 2024 CONTINUATION flood), and pings that close a connection
/// whose peer stopped answering.
fn http2_builder(max_header_bytes: usize) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESET_STREAMS)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

struct ConnectionServer {
    http1: http1::Builder,
    /// With `tls` only.
    http2: http2::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    graceful: GracefulShutdown,
    /// h2 connections are drained by hand (see [`serve_h2`]): set when the drain starts.
    draining: watch::Sender<bool>,
    /// A clone is held by every open h2 connection; the drain waits until none is left.
    h2_open: mpsc::Sender<()>,
    h2_closed: mpsc::Receiver<()>,
}

impl ConnectionServer {
    /// `timer` runs the header-read timeout: the worker's own deadlines (see `timer`) where
    /// they are driven, tokio's elsewhere.
    fn new(options: &ServeOptions, timer: impl hyper::rt::Timer + Send + Sync + 'static) -> Self {
        let mut http1 = http1::Builder::new();
        // hyper enforces the header-read timeout only with a timer installed. It runs whenever
        // the connection waits for a request head, so it also closes idle keep-alive connections.
        http1
            .timer(timer)
            .header_read_timeout(options.header_read_timeout)
            .max_header_size(options.max_header_bytes)
            .keep_alive(true);
        let (h2_open, h2_closed) = mpsc::channel(1);
        Self {
            http1,
            http2: http2_builder(options.max_header_bytes),
            tls: options.tls.clone(),
            handshake_timeout: options.header_read_timeout,
            graceful: GracefulShutdown::new(),
            draining: watch::Sender::new(false),
            h2_open,
            h2_closed,
        }
    }

    fn spawn<H: Handler>(&self, stream: TcpStream, peer: SocketAddr, slot: Slot, handler: H) {
        let service = Service { handler, peer };
        let Some(tls) = &self.tls else {
            let connection = self
                .graceful
                .watch(self.http1.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                ended(connection.await);
                drop(slot);
            });
            return;
        };
        let idle = self.handshake_timeout;
        let handshake = tokio::time::timeout(idle, tls.accept(stream));
        let (http1, http2) = (self.http1.clone(), self.http2.clone());
        let graceful = self.graceful.watcher();
        let h2_drain = (self.draining.subscribe(), self.h2_open.clone());
        tokio::spawn(async move {
            let stream = match handshake.await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%error, peer = %peer.ip(), "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %peer.ip(), "TLS handshake timed out");
                    return;
                }
            };
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let io = TokioIo::new(stream);
            if h2 {
                drop(graceful);
                let (draining, open) = h2_drain;
                serve_h2(&http2, io, service, idle, draining).await;
                drop(open);
            } else {
                drop(h2_drain);
                ended(graceful.watch(http1.serve_connection(io, service)).await);
            }
            drop(slot);
        });
    }

    /// Tells every connection to finish the request in flight and close, and waits until all
    /// have, or until `grace` is over; true when all closed in time.
    async fn drain(self, grace: Duration) -> bool {
        let Self {
            graceful,
            draining,
            h2_open,
            mut h2_closed,
            ..
        } = self;
        draining.send_replace(true);
        drop(h2_open);
        let all_closed = async move {
            graceful.shutdown().await;
            // `None` once every h2 connection has dropped its clone of `h2_open`.
            let _ = h2_closed.recv().await;
        };
        let closed = tokio::time::timeout(grace, all_closed).await.is_ok();
        if !closed {
            tracing::warn!(
                grace_seconds = grace.as_secs(),
                "grace period over; closing the connections still open"
            );
        }
        closed
    }
}

/// An h2 connection, with what HTTP/1.1's header-read timeout gives a connection there: hyper's
/// h2 server has no timeout for a client that completes TLS and then sends nothing, nor for
/// one that keeps a connection open without using it (and `Connection: close` means nothing in
/// h2), so one could hold a connection slot for good. Every `idle` it looks: no request since the
/// handshake ends the connection at once (there is nothing to finish); no new request since the
/// last look, or a drain, sends GOAWAY, so the streams in flight finish and the client opens a
/// new connection for the next request.
async fn serve_h2<I, H>(
    http2: &http2::Builder<TokioExecutor>,
    io: I,
    service: Service<H>,
    idle: Duration,
    mut draining: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    H: Handler,
{
    let requests = Arc::new(AtomicU64::new(0));
    let shutdown = GracefulShutdown::new();
    let connection = shutdown.watch(http2.serve_connection(
        io,
        Counted {
            inner: service,
            requests: requests.clone(),
        },
    ));
    tokio::pin!(connection);
    // Dropping it starts the graceful shutdown of the one connection it watches.
    let mut shutdown = Some(shutdown);
    let mut seen = 0;
    loop {
        tokio::select! {
            result = &mut connection => {
                ended(result);
                return;
            }
            _ = draining.wait_for(|draining| *draining), if shutdown.is_some() => {
                shutdown = None;
            }
            () = tokio::time::sleep(idle), if shutdown.is_some() => {
                let now = requests.load(Ordering::Relaxed);
                if now == 0 {
                    return;
                }
                if now == seen {
                    shutdown = None;
                }
                seen = now;
            }
        }
    }
}

/// Counts the requests of an h2 connection for [`serve_h2`].
struct Counted<S> {
    inner: S,
    requests: Arc<AtomicU64>,
}

impl<S: hyper::service::Service<Request<Incoming>>> hyper::service::Service<Request<Incoming>>
    for Counted<S>
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.inner.call(request)
    }
}

/// Errors here are client-side (resets, timeouts, malformed requests): hyper has already
/// answered what could be answered.
fn ended(result: hyper::Result<()>) {
    if let Err(error) = result {
        tracing::debug!(error = %error, "connection ended with an error");
    }
}

/// The handler as hyper's `Service`. Not `service_fn` with an `async` block: that block would
/// hold the handler's future twice over (captured, then awaited), and hyper moves the future it
/// gets per request.
struct Service<H> {
    handler: H,
    peer: SocketAddr,
}

impl<H: Handler> hyper::service::Service<Request<Incoming>> for Service<H> {
    type Response = Response<H::Body>;
    type Error = Infallible;
    type Future = Infallibly<H::Future>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        if request.version() == Version::HTTP_2 {
            as_origin_form(&mut request);
        }
        Infallibly {
            inner: self.handler.call(request, self.peer),
        }
    }
}

/// An h2 request names its host in `:authority`, which hyper puts in the URI, and need not send
/// `Host`. The request path reads the host from `Host` and the target as a path, as HTTP/1.1
/// gives them; `:authority` wins over a `Host` beside it, as RFC 9113 (8.3.1) asks.
fn as_origin_form<B>(request: &mut Request<B>) {
    let uri = request.uri();
    let Some(host) = uri
        .authority()
        .and_then(|authority| http::HeaderValue::from_str(authority.as_str()).ok())
    else {
        return;
    };
    let target = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    request.headers_mut().insert(http::header::HOST, host);
    *request.uri_mut() = http::Uri::from(target);
}

pin_project_lite::pin_project! {
    /// A future whose output hyper wants as a `Result`; the handler always answers.
    struct Infallibly<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for Infallibly<F> {
    type Output = Result<F::Output, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx).map(Ok)
    }
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // A dropped sender also means stop.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use std::sync::Arc;

    use super::*;

    const PATIENCE: Duration = Duration::from_secs(10);

    /// A server on 127.0.0.1 with one connection; every answer waits `delay` first, and
    /// `arrived` is notified when a request reaches the handler.
    async fn serve_one(delay: Duration) -> (ConnectionServer, TcpStream, Arc<tokio::sync::Notify>) {
        let arrived = Arc::new(tokio::sync::Notify::new());
        let notify = arrived.clone();
        let server = ConnectionServer::new(
            &ServeOptions {
                header_read_timeout: PATIENCE * 3,
                max_header_bytes: 16 * 1024,
                shutdown_grace_period: PATIENCE,
                tls: None,
            },
            TokioTimer::new(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (stream, peer) = listener.accept().await.expect("accept");
        let limits = Limits::new(1, 1);
        let room = limits.room().await.expect("room");
        let slot = limits.admit(room, peer.ip()).expect("slot");
        server.spawn(stream, peer, slot, move |_request, _peer| {
            notify.notify_one();
            async move {
                tokio::time::sleep(delay).await;
                Response::new(Full::new(Bytes::from("done")))
            }
        });
        (server, client, arrived)
    }

    async fn read_to_end(client: &mut TcpStream) -> String {
        let mut answer = Vec::new();
        tokio::time::timeout(PATIENCE, client.read_to_end(&mut answer))
            .await
            .expect("the server closed the connection")
            .expect("read");
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed_and_drain_returns() {
        let (server, mut client, _) = serve_one(Duration::ZERO).await;
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("request");
        let mut head = [0u8; 12];
        client.read_exact(&mut head).await.expect("answer");
        assert_eq!(&head, b"HTTP/1.1 200");
        // Idle now, waiting for a next request that never comes.
        assert!(server.drain(PATIENCE).await, "the idle connection closed");
        read_to_end(&mut client).await;
    }

    #[tokio::test]
    async fn a_request_in_flight_is_answered_before_drain_returns() {
        let (server, mut client, arrived) = serve_one(Duration::from_millis(300)).await;
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("request");
        tokio::time::timeout(PATIENCE, arrived.notified())
            .await
            .expect("the request reached the handler");
        assert!(server.drain(PATIENCE).await, "the connection closed");
        let answer = read_to_end(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("done"), "the whole answer: {answer}");
    }
}
