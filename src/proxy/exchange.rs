//! The record of one exchange (request id, who, which rule, status, bytes, times), written once
//! as the audit line and the request metrics when the response body ends or the client goes away.

use std::cell::RefCell;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Uri};

use super::limits::ClientSlot;
use super::snapshot::Snapshot;
use crate::error::Limit;
use crate::telemetry::audit::{self, AuditLine};
use crate::telemetry::log_format::Rendered;
use crate::telemetry::metrics::{Metrics, NO_CLIENT};

static NO_CLIENT_AUDIT_NAME: LazyLock<Rendered> = LazyLock::new(|| Rendered::new(NO_CLIENT));

/// Request ids: a random per-process prefix and a counter, so ids from replicas do not collide.
pub struct RequestIds {
    next: AtomicU64,
}

impl RequestIds {
    pub fn new() -> Self {
        Self {
            next: AtomicU64::new(u64::from(fastrand::u32(..)) << 32),
        }
    }

    pub fn next(&self) -> RequestId {
        RequestId(self.next.fetch_add(1, Ordering::Relaxed))
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RequestId(u64);

/// Room for the `x-request-id` values of 64 requests. A chunk stays allocated while any of its
/// ids does (an id lives as long as its response, which can stream for minutes), so it is small.
const ID_CHUNK_BYTES: usize = 16 * 64;

thread_local! {
    static ID_CHUNK: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

impl RequestId {
    /// Sixteen lowercase hex digits.
    fn hex(self) -> [u8; 16] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0; 16];
        for (i, digit) in buf.iter_mut().enumerate() {
            *digit = DIGITS[((self.0 >> (60 - 4 * i)) & 0xf) as usize];
        }
        buf
    }

    /// The id as a header value, for the response, the error body and the audit line. Its bytes
    /// are cut from a per-thread chunk: every request returns its id, and an allocation of its
    /// own each would cost more than the rest of writing the header.
    pub fn header_value(self) -> HeaderValue {
        let hex = self.hex();
        let bytes = ID_CHUNK
            .try_with(|chunk| {
                let mut chunk = chunk.borrow_mut();
                if chunk.capacity() < hex.len() {
                    *chunk = BytesMut::with_capacity(ID_CHUNK_BYTES);
                }
                chunk.extend_from_slice(&hex);
                chunk.split().freeze()
            })
            .unwrap_or_else(|_| Bytes::copy_from_slice(&hex));
        // Hex digits are always a valid header value.
        HeaderValue::from_maybe_shared(bytes)
            .unwrap_or_else(|_| HeaderValue::from_static("0000000000000000"))
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// What the client's upload did, shared by the body on its way upstream and the exchange record.
#[derive(Default)]
pub struct Upload {
    pub bytes: AtomicU64,
    /// The client broke off mid-upload. An h2 upstream only sees its stream reset, so the
    /// failure is classified from here.
    pub broke_off: AtomicBool,
    /// The whole body has been handed to the upstream connection.
    sent: AtomicBool,
    sent_signal: tokio::sync::Notify,
}

impl Upload {
    /// The body's last byte went out.
    pub fn mark_sent(&self) {
        if !self.sent.swap(true, Ordering::AcqRel) {
            self.sent_signal.notify_waiters();
        }
    }

    /// Resolves once [`Upload::mark_sent`] was called (never, if the client breaks off).
    pub async fn sent(&self) {
        loop {
            let signal = self.sent_signal.notified();
            tokio::pin!(signal);
            signal.as_mut().enable();
            if self.sent.load(Ordering::Acquire) {
                return;
            }
            signal.await;
        }
    }
}

/// How an exchange ended, for the audit line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    Complete,
    UpstreamBodyFailed,
    ClientGone,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Complete => "complete",
            Outcome::UpstreamBodyFailed => "upstream_body_failed",
            Outcome::ClientGone => "client_gone",
        }
    }
}

/// Everything the audit line and the request metrics need, recorded exactly once when dropped:
/// at the end of the response body, or when the client goes away at any point before that.
pub struct Exchange {
    pub(super) metrics: Arc<Metrics>,
    /// As sent back in `x-request-id`, written in the audit line and in error bodies.
    request_id: HeaderValue,
    /// Who sent it: the connection's source address.
    peer: SocketAddr,
    method: Method,
    uri: Uri,
    started: Instant,
    /// Only for a streamed upload, which counts as it goes; most requests have no body.
    upload: Option<Arc<Upload>>,
    /// A body read whole before it was sent.
    kept_upload_bytes: u64,
    pub(super) sent: u64,
    pub(super) status: Option<u16>,
    upstream_time: Option<Duration>,
    pub(super) outcome: Outcome,
    /// The configuration this request is judged by, from start to end.
    snapshot: Arc<Snapshot>,
    /// Who called (an index into the snapshot's clients) and the rule that let them, as
    /// admission decided.
    client: Option<usize>,
    rule: Option<usize>,
    /// Sent a second time with a renewed token after Azure DevOps refused the first.
    replayed: bool,
    /// Forwarded in learn mode although no rule admitted it.
    would_deny: bool,
    /// The credential looked like an Azure DevOps PAT.
    presented_pat: bool,
    /// One of the client's concurrent requests, held to the end of the exchange.
    slot: Option<ClientSlot>,
}

impl Exchange {
    pub fn begin(
        metrics: Arc<Metrics>,
        snapshot: Arc<Snapshot>,
        request_id: RequestId,
        peer: SocketAddr,
        method: Method,
        uri: Uri,
    ) -> Self {
        metrics.in_flight.inc();
        Self {
            metrics,
            request_id: request_id.header_value(),
            peer,
            method,
            uri,
            started: Instant::now(),
            upload: None,
            kept_upload_bytes: 0,
            sent: 0,
            status: None,
            upstream_time: None,
            outcome: Outcome::ClientGone,
            snapshot,
            client: None,
            rule: None,
            replayed: false,
            would_deny: false,
            presented_pat: false,
            slot: None,
        }
    }

    /// Sixteen hex digits.
    pub fn request_id(&self) -> &str {
        // Made from hex digits, so always visible ASCII.
        self.request_id.to_str().unwrap_or_default()
    }

    /// The `x-request-id` value (a reference-counted copy, not an allocation).
    pub fn request_id_header(&self) -> HeaderValue {
        self.request_id.clone()
    }

    pub fn method(&self) -> &Method {
        &self.method
    }

    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    /// What admission decided: the client, once known, and the rule that admitted the request.
    pub fn record_admission(&mut self, client: Option<usize>, rule: Option<usize>) {
        self.client = client;
        self.rule = rule;
    }

    /// Forwarded in learn mode although no rule admitted it.
    pub fn set_would_deny(&mut self) {
        self.would_deny = true;
    }

    pub fn set_presented_pat(&mut self) {
        self.presented_pat = true;
    }

    pub fn hold_slot(&mut self, slot: Option<ClientSlot>) {
        self.slot = slot;
    }

    /// A request refused by a limit, counted against its client.
    pub fn count_limited(&self, limit: Limit) {
        let client = self.client.and_then(|c| self.snapshot.telemetry.get(c));
        let metrics = client.map_or(&self.metrics.anonymous, |c| &c.metrics);
        metrics.count_limited(limit);
    }

    /// A request no rule admitted, counted against its client.
    pub fn count_denied(&self) {
        if let Some(client) = self.client.and_then(|c| self.snapshot.telemetry.get(c)) {
            client.metrics.denied.inc();
        }
    }

    pub fn set_replayed(&mut self) {
        self.replayed = true;
    }

    /// A streamed upload's record, if this request's body streams.
    pub fn streamed_upload(&self) -> Option<Arc<Upload>> {
        self.upload.clone()
    }

    /// The record a streamed upload keeps up to date as it goes.
    pub fn track_upload(&mut self) -> Arc<Upload> {
        self.upload.get_or_insert_default().clone()
    }

    pub fn add_kept_upload(&mut self, bytes: u64) {
        self.kept_upload_bytes += bytes;
    }

    pub fn upload_broke_off(&self) -> bool {
        self.upload
            .as_ref()
            .is_some_and(|upload| upload.broke_off.load(Ordering::Relaxed))
    }

    fn request_bytes(&self) -> u64 {
        let streamed = self.upload.as_ref();
        self.kept_upload_bytes + streamed.map_or(0, |upload| upload.bytes.load(Ordering::Relaxed))
    }

    /// Time spent waiting for Azure DevOps' answers (summed over a replay).
    pub fn add_upstream_time(&mut self, elapsed: Duration) {
        self.upstream_time = Some(self.upstream_time.unwrap_or_default() + elapsed);
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let metrics = &self.metrics;
        metrics.in_flight.dec();
        let elapsed = self.started.elapsed();
        // 499 (nginx's "client closed request") when no response was ever produced.
        let status = self.status.unwrap_or(499);
        let client = self.client.and_then(|c| self.snapshot.telemetry.get(c));
        let client_metrics = client.map_or(&metrics.anonymous, |c| &c.metrics);
        client_metrics.count_request(&self.method, status);
        if self.would_deny {
            client_metrics.would_deny.inc();
        }
        if self.presented_pat {
            client_metrics.pat_credentials.inc();
        }
        metrics.request_duration.observe(elapsed.as_secs_f64());
        let rule = client
            .zip(self.rule)
            .and_then(|(client, index)| client.rules.get(index));
        audit::record(&AuditLine {
            request_id: self.request_id(),
            client: client.map_or(&*NO_CLIENT_AUDIT_NAME, |c| &c.audit_name),
            peer: self.peer,
            rule,
            method: self.method.as_str(),
            path: self.uri.path(),
            status,
            request_bytes: self.request_bytes(),
            response_bytes: self.sent,
            duration_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            upstream_us: self
                .upstream_time
                .map(|t| u64::try_from(t.as_micros()).unwrap_or(u64::MAX)),
            outcome: self.outcome.as_str(),
            replayed: self.replayed,
            would_deny: self.would_deny,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_sixteen_hex_digits() {
        // Several chunks' worth on one thread: every id is whole after a chunk runs out.
        let ids = RequestIds::new();
        let values: Vec<HeaderValue> = (0..300).map(|_| ids.next().header_value()).collect();
        let first = u64::from_str_radix(values[0].to_str().expect("ascii"), 16).expect("hex");
        for (offset, value) in (0..).zip(&values) {
            assert_eq!(value, format!("{:016x}", first + offset).as_str());
        }
        for value in [0, 1, 0xdead_beef, u64::MAX] {
            let id = RequestId(value);
            assert_eq!(id.header_value(), format!("{value:016x}").as_str());
            assert_eq!(id.to_string(), format!("{value:016x}"));
        }
    }
}
