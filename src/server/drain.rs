//! Graceful drain of a listener's connections: when shutdown starts, every open connection is
//! told to finish the request in flight and close, and the server waits until all have.
//!
//! hyper-util's `GracefulShutdown` polls a `watch` receiver on every poll of every connection,
//! about 400 instructions per proxied request here. This reads one flag per poll instead, and
//! keeps each connection's waker (set once per connection) to wake it when draining starts.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::Notify;

#[derive(Default)]
pub struct Drain {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    draining: AtomicBool,
    state: Mutex<State>,
    all_closed: Notify,
}

#[derive(Default)]
struct State {
    wakers: Vec<Option<Waker>>,
    vacant: Vec<usize>,
    open: usize,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain data: a panic elsewhere cannot leave it inconsistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

impl Drain {
    pub fn new() -> Self {
        Self::default()
    }

    /// `connection`, counted as open until it ends, and shut down gracefully once draining starts.
    pub fn watch<C: GracefulConnection>(&self, connection: C) -> Watched<C> {
        self.inner.lock().open += 1;
        Watched {
            connection,
            inner: self.inner.clone(),
            slot: None,
            waker: None,
            told: false,
        }
    }

    /// Tells every open connection to finish and close, and waits until all have.
    pub async fn drain(&self) {
        self.inner.draining.store(true, Ordering::Release);
        // Taken out of their slots (which stay the connections' until they end), woken unlocked.
        let wakers: Vec<Waker> = self
            .inner
            .lock()
            .wakers
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for waker in wakers {
            waker.wake();
        }
        loop {
            // `notify_one` keeps a permit, so a last close between the check and the wait is not
            // lost.
            if self.inner.lock().open == 0 {
                return;
            }
            self.inner.all_closed.notified().await;
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection under a [`Drain`].
    pub struct Watched<C> {
        #[pin]
        connection: C,
        inner: Arc<Inner>,
        slot: Option<usize>,
        // The waker last registered, to notice a new one without taking the lock.
        waker: Option<Waker>,
        // graceful_shutdown was called.
        told: bool,
    }

    impl<C> PinnedDrop for Watched<C> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let mut state = this.inner.lock();
            if let Some(slot) = this.slot.take() {
                state.wakers[slot] = None;
                state.vacant.push(slot);
            }
            state.open -= 1;
            let last = state.open == 0;
            drop(state);
            if last && this.inner.draining() {
                this.inner.all_closed.notify_one();
            }
        }
    }
}

impl<C: GracefulConnection> Future for Watched<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        if !*this.told {
            let mut draining = this.inner.draining();
            if !draining && !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                let mut state = this.inner.lock();
                match *this.slot {
                    Some(slot) => state.wakers[slot] = Some(cx.waker().clone()),
                    None => {
                        let slot = match state.vacant.pop() {
                            Some(slot) => slot,
                            None => {
                                state.wakers.push(None);
                                state.wakers.len() - 1
                            }
                        };
                        state.wakers[slot] = Some(cx.waker().clone());
                        *this.slot = Some(slot);
                    }
                }
                drop(state);
                *this.waker = Some(cx.waker().clone());
                // Draining may have started (and woken everyone registered) meanwhile.
                draining = this.inner.draining();
            }
            if draining {
                *this.told = true;
                this.connection.as_mut().graceful_shutdown();
            }
        }
        this.connection.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use http_body_util::Full;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    const PATIENCE: Duration = Duration::from_secs(10);

    /// A server on 127.0.0.1 whose one connection is watched by `drain`; every answer waits
    /// `delay` first.
    async fn serve_one(drain: &Drain, delay: Duration) -> TcpStream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (stream, _) = listener.accept().await.expect("accept");
        let service = service_fn(move |_request| async move {
            tokio::time::sleep(delay).await;
            Ok::<_, Infallible>(hyper::Response::new(Full::new(bytes::Bytes::from("done"))))
        });
        let connection =
            drain.watch(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        tokio::spawn(connection);
        client
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
        let drain = Drain::new();
        let mut client = serve_one(&drain, Duration::ZERO).await;
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("request");
        let mut head = [0u8; 12];
        client.read_exact(&mut head).await.expect("answer");
        assert_eq!(&head, b"HTTP/1.1 200");
        // Idle now, waiting for a next request that never comes.
        tokio::time::timeout(PATIENCE, drain.drain())
            .await
            .expect("drain returned once the idle connection closed");
        read_to_end(&mut client).await;
    }

    #[tokio::test]
    async fn a_request_in_flight_is_answered_before_drain_returns() {
        let drain = Drain::new();
        let mut client = serve_one(&drain, Duration::from_millis(300)).await;
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("request");
        tokio::time::sleep(Duration::from_millis(50)).await;
        tokio::time::timeout(PATIENCE, drain.drain())
            .await
            .expect("drain returned");
        let answer = read_to_end(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("done"), "the whole answer: {answer}");
    }
}
