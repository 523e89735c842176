//! Connections to the one upstream, per worker thread: idle HTTP/1.1 connections reused most
//! recently used first, or one shared h2 connection when TLS ALPN picks h2.
//!
//! hyper-util's legacy client pools connections for any number of hosts; in front of a single
//! host it spent much of the proxy's per-request work hashing pool keys, boxing each request's
//! future and spawning a task per request to hand the connection back. Here an HTTP/1.1
//! connection goes back to the pool as soon as its response head arrives, and a checkout passes
//! over connections whose response body is still streaming.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use http::Uri;
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};

use super::resolve::Resolve;

/// TLS over a direct connection or the egress proxy's tunnel.
pub type Connector = HttpsConnector<crate::egress::Connector<HttpConnector<Resolve>>>;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower_service::Service;

use crate::proxy::body::UploadBody;

pub type ConnectError = Box<dyn std::error::Error + Send + Sync>;

const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

pub enum Sender {
    Http1(http1::SendRequest<UploadBody>),
    Http2(http2::SendRequest<UploadBody>),
}

#[derive(Default)]
struct Idle {
    /// Newest checkin last; entries may still be streaming their last response's body.
    http1: VecDeque<(http1::SendRequest<UploadBody>, Instant)>,
    /// The shared h2 connection and when a request last took it.
    http2: Option<(http2::SendRequest<UploadBody>, Instant)>,
}

pub struct Pool {
    connector: Connector,
    /// Whether the upstream is expected to pick h2 (https, until it answers otherwise): then
    /// connects are made one at a time, so a burst of requests shares one new connection
    /// instead of each opening its own.
    expect_h2: AtomicBool,
    connecting: tokio::sync::Mutex<()>,
    /// Scheme and authority of the upstream, all the connector looks at.
    destination: Uri,
    idle: Arc<Mutex<Idle>>,
    idle_timeout: Duration,
    /// For the whole of a new connection: TCP, TLS and the HTTP handshake.
    connect_timeout: Duration,
}

impl Pool {
    /// Must be called inside the worker's runtime: it starts the task that closes idle
    /// connections.
    pub fn new(
        connector: Connector,
        destination: Uri,
        idle_timeout: Duration,
        connect_timeout: Duration,
    ) -> Self {
        let idle = Arc::new(Mutex::new(Idle::default()));
        tokio::spawn(close_idle(Arc::downgrade(&idle), idle_timeout));
        Self {
            expect_h2: AtomicBool::new(destination.scheme_str() == Some("https")),
            connecting: tokio::sync::Mutex::new(()),
            connector,
            destination,
            idle,
            idle_timeout,
            connect_timeout,
        }
    }

    /// A connection ready for a request, and whether it served one before (only then may a
    /// request it refused to start be retried elsewhere). `now`: the caller's clock reading,
    /// for the idle timeout.
    pub async fn checkout(&self, now: Instant) -> Result<(Sender, bool), ConnectError> {
        match self.take_idle(now) {
            Some(sender) => Ok((sender, true)),
            // Boxed: connecting (TCP, TLS, handshake) is rare and its future large, and every
            // in-flight request's future would otherwise carry room for it.
            None => Box::pin(self.checkout_new()).await,
        }
    }

    async fn checkout_new(&self) -> Result<(Sender, bool), ConnectError> {
        if self.expect_h2.load(Ordering::Relaxed) {
            let _one_at_a_time = self.connecting.lock().await;
            // Whoever held the lock may have just made the connection this request needs.
            if let Some(sender) = self.take_idle(Instant::now()) {
                return Ok((sender, true));
            }
            if self.expect_h2.load(Ordering::Relaxed) {
                return Ok((self.connect().await?, false));
            }
        }
        Ok((self.connect().await?, false))
    }

    /// Returns an HTTP/1.1 connection once its response head has arrived.
    pub fn checkin(&self, sender: http1::SendRequest<UploadBody>) {
        if !sender.is_closed() {
            lock(&self.idle).http1.push_back((sender, Instant::now()));
        }
    }

    fn take_idle(&self, now: Instant) -> Option<Sender> {
        let mut idle = lock(&self.idle);
        if let Some((sender, last_used)) = &mut idle.http2 {
            if !sender.is_closed() {
                *last_used = now;
                return Some(Sender::Http2(sender.clone()));
            }
            idle.http2 = None;
        }
        // Most recently used first: the rest then age out after a burst, and the connection a
        // server is most likely closing right now is the one idle longest.
        let mut index = idle.http1.len();
        while index > 0 {
            index -= 1;
            let (sender, since) = &mut idle.http1[index];
            if spent(sender, *since, now, self.idle_timeout) {
                idle.http1.remove(index);
            } else if sender.is_ready() {
                return idle
                    .http1
                    .remove(index)
                    .map(|(sender, _)| Sender::Http1(sender));
            } else {
                // Still streaming: its idle time starts when it finishes, not at its response head.
                *since = now;
            }
        }
        None
    }

    /// A stalled TLS or h2 handshake counts against the connect timeout, not the response
    /// timeout: it must not hold this worker's new connections (h2 connects one at a time) for
    /// minutes.
    async fn connect(&self) -> Result<Sender, ConnectError> {
        match tokio::time::timeout(self.connect_timeout, self.handshake()).await {
            Ok(connected) => connected,
            Err(_) => Err("connecting timed out (TCP, TLS and HTTP handshake)".into()),
        }
    }

    async fn handshake(&self) -> Result<Sender, ConnectError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
        let io = connector.call(self.destination.clone()).await?;
        let h2 = io.connected().is_negotiated_h2();
        self.expect_h2.store(h2, Ordering::Relaxed);
        if h2 {
            // Pings find a connection that a NAT or load balancer dropped without a word, which
            // would otherwise hold every request of this worker until the response timeout.
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(H2_PING_INTERVAL))
                .keep_alive_timeout(H2_PING_TIMEOUT)
                .handshake(io)
                .await?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(error = %error, "upstream h2 connection ended");
                }
            });
            lock(&self.idle).http2 = Some((sender.clone(), Instant::now()));
            Ok(Sender::Http2(sender))
        } else {
            let (sender, connection) = http1::handshake(io).await?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(error = %error, "upstream connection ended");
                }
            });
            Ok(Sender::Http1(sender))
        }
    }
}

fn lock(idle: &Mutex<Idle>) -> std::sync::MutexGuard<'_, Idle> {
    // Plain data: a panic elsewhere cannot leave it inconsistent.
    idle.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Closed, or idle for longer than `idle_timeout`: to be dropped (which closes it).
fn spent(
    sender: &http1::SendRequest<UploadBody>,
    since: Instant,
    now: Instant,
    idle_timeout: Duration,
) -> bool {
    sender.is_closed() || (sender.is_ready() && now.saturating_duration_since(since) > idle_timeout)
}

/// Closes connections idle for longer than `idle_timeout`, until the pool is gone.
async fn close_idle(idle: Weak<Mutex<Idle>>, idle_timeout: Duration) {
    let period = (idle_timeout / 2).max(Duration::from_secs(1));
    loop {
        tokio::time::sleep(period).await;
        let Some(idle) = idle.upgrade() else { return };
        let now = Instant::now();
        let mut idle = lock(&idle);
        idle.http1.retain_mut(|(sender, since)| {
            if !sender.is_ready() && !sender.is_closed() {
                // Busy streaming a body: idle time counts from when it is free again.
                *since = now;
            }
            !spent(sender, *since, now, idle_timeout)
        });
        // In-flight streams keep the connection open; the pool only stops handing it out.
        if idle.http2.as_ref().is_some_and(|(sender, last_used)| {
            sender.is_closed() || now.saturating_duration_since(*last_used) > idle_timeout
        }) {
            idle.http2 = None;
        }
    }
}
