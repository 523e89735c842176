//! Bodies that stream through the proxy, frame by frame; the response body carries the exchange
//! record to its end.
//!
//! Nothing here buffers a body (the proxy keeps small request bodies whole for a replay; see
//! `proxy`). A failure mid-stream is passed on as an error, never as a clean
//! end: hyper then aborts the other side, so a truncated packfile never looks complete and a
//! half-sent push never completes upstream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::exchange::{Exchange, Outcome, Upload};
use super::rewrite_body::RewrittenBody;
use crate::error::UpstreamFailure;
use crate::telemetry::metrics::Metrics;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body on its way upstream: streamed from the client (its errors mean the client went
/// away mid-upload), or a small body read whole beforehand so the request can be replayed.
pub enum UploadBody {
    Streaming {
        inner: Incoming,
        upload: Arc<Upload>,
        metrics: Arc<Metrics>,
    },
    Kept(Option<Bytes>),
}

impl UploadBody {
    pub fn streaming(inner: Incoming, upload: Arc<Upload>, metrics: Arc<Metrics>) -> Self {
        Self::Streaming {
            inner,
            upload,
            metrics,
        }
    }

    /// A body already read (and counted) whole; cheap to clone for a replay.
    pub fn kept(body: Bytes) -> Self {
        Self::Kept((!body.is_empty()).then_some(body))
    }
}

/// The client's upload failed; the upstream request must be aborted, not completed.
#[derive(Debug, thiserror::Error)]
#[error("client request body failed: {0}")]
pub struct ClientBodyError(#[source] hyper::Error);

impl Body for UploadBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let (inner, upload, metrics) = match self.get_mut() {
            UploadBody::Kept(data) => return Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            UploadBody::Streaming {
                inner,
                upload,
                metrics,
            } => (inner, upload, metrics),
        };
        let frame = ready!(Pin::new(&mut *inner).poll_frame(cx));
        Poll::Ready(match frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    upload.bytes.fetch_add(len, Ordering::Relaxed);
                    metrics.request_bytes.inc_by(len);
                }
                // hyper stops polling a body of known length once it is complete.
                if inner.is_end_stream() {
                    upload.mark_sent();
                }
                Some(Ok(frame))
            }
            Some(Err(error)) => {
                upload.broke_off.store(true, Ordering::Relaxed);
                Some(Err(ClientBodyError(error)))
            }
            None => {
                upload.mark_sent();
                None
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UploadBody::Streaming { inner, .. } => inner.is_end_stream(),
            UploadBody::Kept(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UploadBody::Streaming { inner, .. } => inner.size_hint(),
            UploadBody::Kept(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

/// The response body sent to the client: Azure DevOps' body streamed through, or the proxy's own
/// small JSON answer.
pub struct ResponseBody {
    kind: Kind,
    exchange: Option<Box<Exchange>>,
}

enum Kind {
    Upstream(Incoming),
    /// Azure DevOps' body with its URLs rewritten.
    Rewritten(RewrittenBody),
    Local(Option<Bytes>),
}

impl ResponseBody {
    pub fn upstream(body: Incoming, exchange: Box<Exchange>, status: u16) -> Self {
        Self::new(Kind::Upstream(body), exchange, status)
    }

    pub fn rewritten(body: RewrittenBody, exchange: Box<Exchange>, status: u16) -> Self {
        Self::new(Kind::Rewritten(body), exchange, status)
    }

    /// A body already whole: the proxy's own answer, or a small upstream body rewritten.
    pub fn whole(body: Bytes, exchange: Box<Exchange>, status: u16) -> Self {
        Self::new(Kind::Local(Some(body)), exchange, status)
    }

    fn new(kind: Kind, mut exchange: Box<Exchange>, status: u16) -> Self {
        exchange.status = Some(status);
        let mut body = Self {
            kind,
            exchange: Some(exchange),
        };
        if body.is_end_stream() {
            body.finish(Outcome::Complete);
        }
        body
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(mut exchange) = self.exchange.take() {
            exchange.outcome = outcome;
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame: Result<Option<Frame<Bytes>>, BoxError> = match &mut this.kind {
            Kind::Local(body) => Ok(body.take().map(Frame::data)),
            Kind::Upstream(inner) => match ready!(Pin::new(inner).poll_frame(cx)) {
                Some(Ok(frame)) => Ok(Some(frame)),
                Some(Err(error)) => Err(error.into()),
                None => Ok(None),
            },
            Kind::Rewritten(inner) => match ready!(inner.as_mut().poll_next(cx)) {
                Some(Ok(data)) => Ok(Some(Frame::data(data))),
                Some(Err(error)) => Err(error.into()),
                None => Ok(None),
            },
        };
        Poll::Ready(match frame {
            Ok(Some(frame)) => {
                if let (Some(data), Some(exchange)) = (frame.data_ref(), this.exchange.as_mut()) {
                    let len = data.len() as u64;
                    exchange.sent += len;
                    exchange.metrics.response_bytes.inc_by(len);
                }
                if this.is_end_stream() {
                    this.finish(Outcome::Complete);
                }
                Some(Ok(frame))
            }
            Ok(None) => {
                this.finish(Outcome::Complete);
                None
            }
            Err(error) => {
                if let Some(exchange) = &this.exchange {
                    exchange
                        .metrics
                        .count_upstream_failure(UpstreamFailure::ResponseBody);
                    tracing::warn!(
                        request_id = exchange.request_id(),
                        error = %error,
                        "upstream response body failed mid-stream; aborting the client connection"
                    );
                }
                this.finish(Outcome::UpstreamBodyFailed);
                Some(Err(error))
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Local(body) => body.is_none(),
            Kind::Upstream(inner) => inner.is_end_stream(),
            Kind::Rewritten(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Local(Some(body)) => SizeHint::with_exact(body.len() as u64),
            Kind::Local(None) => SizeHint::with_exact(0),
            Kind::Upstream(inner) => inner.size_hint(),
            Kind::Rewritten(_) => SizeHint::default(),
        }
    }
}
