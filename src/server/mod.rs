//! Accepting and serving connections: connection limit, header-read timeout, header size limit,
//! HTTP/1.1 keep-alive, graceful drain on shutdown.
//!
//! The proxy listener has one acceptor that deals connections round-robin to worker threads,
//! each serving its share on its own single-threaded runtime; the admin listener is served where
//! it is accepted. HTTP/1.1 only on the client side: git, curl, the SDKs and package managers
//! speak it to a plain `http://` proxy, and hyper's HTTP/1 builder can cap header size itself.

pub mod admin;
mod limits;
pub mod worker;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

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
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub shutdown_grace_period: Duration,
}

/// An accepted connection on its way to a worker, holding its connection-limit slot.
pub struct Accepted {
    stream: std::net::TcpStream,
    slot: Slot,
}

/// Accepts until `shutdown`, at most `max_connections` open at once, handing each connection to
/// `dispatch`. Waiting for a slot before accepting leaves excess connections in the kernel's
/// backlog instead of accepting work that cannot be served.
async fn accept_loop(
    listener: TcpListener,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
    mut dispatch: impl FnMut(TcpStream, Slot),
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
        dispatch(stream, slot);
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
    accept_loop(listener, limits, shutdown, |stream, slot| {
        let Ok(stream) = stream.into_std() else {
            return;
        };
        if !workers.is_empty() {
            let _ = workers[next % workers.len()].send(Accepted { stream, slot });
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
    while let Some(Accepted { stream, slot }) = connections.recv().await {
        match TcpStream::from_std(stream) {
            Ok(stream) => server.spawn(stream, slot, handler.clone()),
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
    accept_loop(listener, limits, shutdown, |stream, slot| {
        server.spawn(stream, slot, handler.clone());
    })
    .await;
    server.drain(options.shutdown_grace_period).await;
}

struct ConnectionServer {
    builder: http1::Builder,
    graceful: GracefulShutdown,
}

impl ConnectionServer {
    /// `timer` runs the header-read timeout: the worker's own deadlines (see `timer`) where
    /// they are driven, tokio's elsewhere.
    fn new(options: &ServeOptions, timer: impl hyper::rt::Timer + Send + Sync + 'static) -> Self {
        let mut builder = http1::Builder::new();
        // hyper enforces the header-read timeout only with a timer installed. It runs whenever
        // the connection waits for a request head, so it also closes idle keep-alive connections.
        builder
            .timer(timer)
            .header_read_timeout(options.header_read_timeout)
            .max_header_size(options.max_header_bytes)
            .keep_alive(true);
        Self {
            builder,
            graceful: GracefulShutdown::new(),
        }
    }

    fn spawn<H: Handler>(&self, stream: TcpStream, slot: Slot, handler: H) {
        // Unknown only for a socket already gone, which will not get as far as a request.
        let peer = stream
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let connection = self.graceful.watch(
            self.builder
                .serve_connection(TokioIo::new(stream), Service { handler, peer }),
        );
        tokio::spawn(async move {
            // Errors here are client-side (resets, timeouts, malformed requests): hyper has
            // already answered what could be answered.
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, "connection ended with an error");
            }
            drop(slot);
        });
    }

    /// Tells every connection to finish the request in flight and close, and waits until all
    /// have, or until `grace` is over; true when all closed in time.
    async fn drain(self, grace: Duration) -> bool {
        let closed = tokio::time::timeout(grace, self.graceful.shutdown())
            .await
            .is_ok();
        if !closed {
            tracing::warn!(
                grace_seconds = grace.as_secs(),
                "grace period over; closing the connections still open"
            );
        }
        closed
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

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        Infallibly {
            inner: self.handler.call(request, self.peer),
        }
    }
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
        server.spawn(stream, slot, move |_request, _peer| {
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
