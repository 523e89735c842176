//! Accepting and serving connections: connection limit, header-read timeout, header size limit,
//! HTTP/1.1 keep-alive, graceful drain on shutdown.
//!
//! The proxy listener has one acceptor that deals connections round-robin to worker threads,
//! each serving its share on its own single-threaded runtime; the admin listener is served where
//! it is accepted. HTTP/1.1 only on the client side: git, curl, the SDKs and package managers
//! speak it to a plain `http://` proxy, and hyper's HTTP/1 builder can cap header size itself.

pub mod admin;
pub mod drain;
pub mod timer;
pub mod worker;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

/// What serves one request: any `Fn(Request) -> impl Future<Output = Response>` whose body
/// streams bytes, named once here instead of in every function's bounds.
pub trait Handler: Clone + Send + Sync + 'static {
    type Body: Body<Data = bytes::Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + 'static;
    type Future: Future<Output = Response<Self::Body>> + Send + 'static;
    fn call(&self, request: Request<Incoming>) -> Self::Future;
}

impl<H, F, B> Handler for H
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = bytes::Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + 'static,
{
    type Body = B;
    type Future = F;
    fn call(&self, request: Request<Incoming>) -> F {
        self(request)
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
    slot: OwnedSemaphorePermit,
}

/// Accepts until `shutdown`, at most `max_connections` open at once, handing each connection to
/// `dispatch`. Waiting for a slot before accepting leaves excess connections in the kernel's
/// backlog instead of accepting work that cannot be served.
async fn accept_loop(
    listener: TcpListener,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
    mut dispatch: impl FnMut(TcpStream, OwnedSemaphorePermit),
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = stopped(&mut shutdown) => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        dispatch(stream, slot);
    }
}

/// Accepts proxy connections and deals them round-robin to the workers' channels.
pub async fn accept_for_workers(
    listener: TcpListener,
    max_connections: usize,
    workers: Vec<mpsc::UnboundedSender<Accepted>>,
    shutdown: watch::Receiver<bool>,
) {
    let mut next = 0;
    accept_loop(listener, max_connections, shutdown, |stream, slot| {
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
    let server = ConnectionServer::new(&options, crate::server::timer::WorkerTimer);
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
    max_connections: usize,
    handler: H,
    shutdown: watch::Receiver<bool>,
) {
    let server = ConnectionServer::new(&options, TokioTimer::new());
    accept_loop(listener, max_connections, shutdown, |stream, slot| {
        server.spawn(stream, slot, handler.clone());
    })
    .await;
    server.drain(options.shutdown_grace_period).await;
}

struct ConnectionServer {
    builder: http1::Builder,
    drain: crate::server::drain::Drain,
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
            drain: crate::server::drain::Drain::new(),
        }
    }

    fn spawn<H: Handler>(&self, stream: TcpStream, slot: OwnedSemaphorePermit, handler: H) {
        let connection = self.drain.watch(
            self.builder
                .serve_connection(TokioIo::new(stream), Service(handler)),
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

    async fn drain(self, grace: Duration) {
        if tokio::time::timeout(grace, self.drain.drain())
            .await
            .is_err()
        {
            tracing::warn!(
                grace_seconds = grace.as_secs(),
                "grace period over; closing the connections still open"
            );
        }
    }
}

/// The handler as hyper's `Service`. Not `service_fn` with an `async` block: that block would
/// hold the handler's future twice over (captured, then awaited), and hyper moves the future it
/// gets per request.
struct Service<H>(H);

impl<H: Handler> hyper::service::Service<Request<Incoming>> for Service<H> {
    type Response = Response<H::Body>;
    type Error = Infallible;
    type Future = Infallibly<H::Future>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        Infallibly {
            inner: self.0.call(request),
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
