//! The exchange with Azure DevOps for an admitted, rewritten request: sending it on the chosen
//! host's connections, sending it again when Azure DevOps refused it unprocessed, renewing a
//! refused token and replaying the request once, and reading the throttling signals of the
//! answer. Nothing here decides who may call or what; that is done before.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use super::body::UploadBody;
use super::exchange::Exchange;
use super::headers;
use super::upstream::Upstream;
use crate::config::Priority;
use crate::error::{Rejection, UpstreamFailure};
use crate::telemetry::metrics::{Metrics, RateLimitSignals};
use crate::token::TokenCache;

/// How long a request whose token Azure DevOps refused waits for a renewed one.
const RENEWAL_WAIT: Duration = Duration::from_secs(30);
/// A 429 without `Retry-After`: a few seconds of holding back costs little and lets the budget
/// recover.
const THROTTLED_HOLD: Duration = Duration::from_secs(5);
/// The budget almost spent: a short hold that puts lower priorities behind.
const NEARLY_SPENT_HOLD: Duration = Duration::from_secs(2);
/// What is needed to send a request again; only requests with a kept body have one. The headers
/// are kept as a list rather than a second `HeaderMap`: a map costs two allocations, and almost
/// every replay copy is dropped unused.
#[derive(Clone)]
pub(super) struct Replay {
    method: Method,
    uri: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Option<Bytes>,
}

impl Replay {
    pub(super) fn new(parts: &http::request::Parts, body: Option<Bytes>) -> Self {
        let mut headers = Vec::with_capacity(parts.headers.len());
        headers.extend(
            parts
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), value.clone())),
        );
        Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers,
            body,
        }
    }

    fn into_request(self) -> Request<UploadBody> {
        let mut request = Request::new(UploadBody::Kept(self.body));
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = Version::HTTP_11;
        let headers = request.headers_mut();
        headers.reserve(self.headers.len());
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        request
    }
}

/// Azure DevOps' ways of refusing a token: 401, or (without `X-TFS-FedAuthRedirect: Suppress`
/// honoured) a 203 sign-in page or a redirect to sign-in.
fn token_refused(response: &Response<Incoming>) -> bool {
    match response.status() {
        StatusCode::UNAUTHORIZED | StatusCode::NON_AUTHORITATIVE_INFORMATION => true,
        status if status.is_redirection() => response
            .headers()
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|location| {
                location.contains("/_signin") || location.contains("login.microsoftonline.com")
            }),
        _ => false,
    }
}

/// Where an admitted request goes, with whose token.
pub(super) struct Destination {
    /// The calling client's identity's token cache.
    pub(super) token: Arc<TokenCache>,
    /// `None`: the default upstream.
    pub(super) upstream: Option<Arc<Upstream>>,
    /// The client's turn while Azure DevOps throttles the identity.
    pub(super) priority: Priority,
}

impl Destination {
    /// To the default upstream until a mount says otherwise.
    pub(super) fn new(token: Arc<TokenCache>, priority: Priority) -> Self {
        Self {
            token,
            upstream: None,
            priority,
        }
    }
}

/// A request admitted and rewritten for Azure DevOps.
pub(super) struct Outgoing {
    pub(super) destination: Destination,
    /// The token it carries, to tell Entra ID which one Azure DevOps refused.
    pub(super) bearer: HeaderValue,
    /// Taken by the connection that sends it; put back if none did.
    pub(super) request: Option<Request<UploadBody>>,
    pub(super) replay: Option<Replay>,
}

/// One request's way to Azure DevOps: the host's connections and where to count.
pub(super) struct Forward<'a> {
    pub(super) upstream: &'a Upstream,
    pub(super) metrics: &'a Metrics,
}

impl Forward<'_> {
    /// Sends an admitted request and takes Azure DevOps' answer: a refused token is renewed and
    /// the request replayed (when it can be), never passed on.
    pub(super) async fn forward(
        &self,
        outgoing: &mut Outgoing,
        exchange: &mut Exchange,
    ) -> Result<Response<Incoming>, Rejection> {
        let mut response = self
            .send(&mut outgoing.request, exchange, outgoing.replay.as_ref())
            .await?;
        let token = &outgoing.destination.token;
        if self.token_refused(token.identity(), &response) {
            let status = response.status();
            // Not read: its connection is closed rather than held while a new token comes.
            drop(response);
            // Boxed: the rare path would otherwise double the size of every request's future,
            // which hyper moves several times per request.
            response = Box::pin(self.renew_and_replay(
                token,
                &outgoing.bearer,
                outgoing.replay.take(),
                status,
                exchange,
            ))
            .await?;
        }
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            return Err(Rejection::UpstreamUpgrade);
        }
        self.observe_rate_limits(token, &response);
        headers::prepare_response(response.headers_mut());
        Ok(response)
    }

    /// Sends the request; once more from `replay` if Azure DevOps refused it unprocessed (see
    /// `SendError::unprocessed`), which no connection retry inside `Upstream` can do for a
    /// request hyper already took.
    async fn send(
        &self,
        request: &mut Option<Request<UploadBody>>,
        exchange: &mut Exchange,
        replay: Option<&Replay>,
    ) -> Result<Response<Incoming>, Rejection> {
        let sent_at = Instant::now();
        let streamed = exchange.streamed_upload();
        let mut result = self
            .upstream
            .send(request, sent_at, streamed.as_deref())
            .await;
        if let (Err(error), Some(replay)) = (&result, replay) {
            if error.unprocessed {
                tracing::debug!(
                    request_id = exchange.request_id(),
                    "refused unprocessed; sending it again"
                );
                *request = Some(replay.clone().into_request());
                result = self.upstream.send(request, Instant::now(), None).await;
            }
        }
        let result = result.map_err(|error| error.failure);
        let elapsed = sent_at.elapsed();
        exchange.add_upstream_time(elapsed);
        self.metrics
            .upstream_duration
            .observe(elapsed.as_secs_f64());
        result.map_err(|failure| {
            // An h2 upstream sees a broken-off upload only as its stream being reset.
            if failure == UpstreamFailure::Reset && exchange.upload_broke_off() {
                Rejection::Upstream(UpstreamFailure::ClientAborted)
            } else {
                Rejection::Upstream(failure)
            }
        })
    }

    /// Azure DevOps refused a token we believed valid (revoked, or the principal's access changed):
    /// renew it and replay the request once if its body was kept; never pass the refusal on, as
    /// git would take its `WWW-Authenticate` for a password prompt.
    async fn renew_and_replay(
        &self,
        token: &Arc<TokenCache>,
        refused: &HeaderValue,
        replay: Option<Replay>,
        status: StatusCode,
        exchange: &mut Exchange,
    ) -> Result<Response<Incoming>, Rejection> {
        tracing::warn!(
            identity = token.identity(),
            request_id = exchange.request_id(),
            status = status.as_u16(),
            replayable = replay.is_some(),
            "Azure DevOps refused the token; renewing it"
        );
        let Some(replay) = replay else {
            token.request_renewal(refused);
            return Err(Rejection::TokenRefused { replayed: false });
        };
        let renewed = token
            .renew_refused(refused, RENEWAL_WAIT)
            .await
            .ok_or(Rejection::TokenRefused { replayed: false })?;
        let mut request = replay.into_request();
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, renewed);
        exchange.set_replayed();
        let response = self.send(&mut Some(request), exchange, None).await?;
        if self.token_refused(token.identity(), &response) {
            return Err(Rejection::TokenRefused { replayed: true });
        }
        Ok(response)
    }

    fn token_refused(&self, identity: &str, response: &Response<Incoming>) -> bool {
        if response.status() == StatusCode::NON_AUTHORITATIVE_INFORMATION {
            self.metrics.count_sign_in_answer(identity);
        }
        token_refused(response)
    }

    fn observe_rate_limits(&self, token: &TokenCache, response: &Response<Incoming>) {
        let identity = token.identity();
        let throttled = response.status() == StatusCode::TOO_MANY_REQUESTS;
        if throttled {
            self.metrics.count_throttled(identity);
        }
        let signals = rate_limit_signals(response.headers(), SystemTime::now);
        if signals != RateLimitSignals::default() {
            self.metrics.observe_rate_limits(identity, &signals);
        }
        if let Some(hold) = hold_for(throttled, &signals) {
            token.pressure().hold(hold);
        }
    }
}

/// How long Azure DevOps asks this identity to slow down, if it does: `Retry-After` (on a 429
/// or any other answer), `X-RateLimit-Delay` (it already held this answer back that long and will
/// go on), or a budget under 5% left; a 429 without a header still holds a few seconds.
fn hold_for(throttled: bool, signals: &RateLimitSignals) -> Option<Duration> {
    let seconds = |s: i64| Duration::from_secs(u64::try_from(s).unwrap_or(0));
    if let Some(retry_after) = signals.retry_after_seconds.filter(|s| *s > 0) {
        return Some(seconds(retry_after));
    }
    if let Some(delay) = signals.delay_seconds.filter(|d| *d > 0.0) {
        return Some(Duration::from_secs_f64(delay.min(60.0)));
    }
    if throttled {
        return Some(THROTTLED_HOLD);
    }
    match (signals.remaining, signals.limit) {
        (Some(remaining), Some(limit)) if limit > 0 && remaining < limit / 20 => {
            Some(NEARLY_SPENT_HOLD)
        }
        _ => None,
    }
}

/// Azure DevOps' throttling headers, in one pass over the answer's names: most answers carry
/// none, and a prefix test per name costs less than a lookup per header.
/// `now` is only asked for when `Retry-After` is a date: most answers need no clock.
fn rate_limit_signals(headers: &http::HeaderMap, now: impl Fn() -> SystemTime) -> RateLimitSignals {
    let mut signals = RateLimitSignals::default();
    for (name, value) in headers {
        if name == http::header::RETRY_AFTER {
            signals.retry_after_seconds = retry_after_seconds(value, &now);
            continue;
        }
        let Some(field) = name.as_str().strip_prefix("x-ratelimit-") else {
            continue;
        };
        let Some(number) = non_negative(value) else {
            continue;
        };
        // Float to integer saturates, so a huge value cannot wrap.
        match field {
            "limit" => signals.limit = Some(number as i64),
            "remaining" => signals.remaining = Some(number as i64),
            "reset" => signals.reset_unix_seconds = Some(number as i64),
            "delay" => signals.delay_seconds = Some(number),
            _ => {}
        }
    }
    signals
}

fn non_negative(value: &HeaderValue) -> Option<f64> {
    let number = value.to_str().ok()?.trim().parse::<f64>().ok()?;
    (number.is_finite() && number >= 0.0).then_some(number)
}

/// `Retry-After` is delay-seconds or an HTTP date (RFC 9110 10.2.3); a date in the past is 0.
fn retry_after_seconds(value: &HeaderValue, now: impl Fn() -> SystemTime) -> Option<i64> {
    let text = value.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(i64::try_from(seconds).unwrap_or(i64::MAX));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    let wait = at.duration_since(now()).unwrap_or_default();
    Some(i64::try_from(wait.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                )
            })
            .collect()
    }

    #[test]
    fn reads_every_throttling_header() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        let signals = rate_limit_signals(
            &headers(&[
                ("content-type", "application/json"),
                ("x-ratelimit-resource", "Core"),
                ("x-ratelimit-delay", "2.5"),
                ("x-ratelimit-limit", "200"),
                ("x-ratelimit-remaining", " 12 "),
                ("x-ratelimit-reset", "1796000300"),
                ("retry-after", "3"),
            ]),
            || now,
        );
        assert_eq!(
            signals,
            RateLimitSignals {
                limit: Some(200),
                remaining: Some(12),
                reset_unix_seconds: Some(1_796_000_300),
                delay_seconds: Some(2.5),
                retry_after_seconds: Some(3),
            }
        );
    }

    #[test]
    fn retry_after_as_a_date_counts_down_from_now() {
        let now =
            httpdate::parse_http_date("Sun, 06 Dec 2026 06:00:00 GMT").expect("a valid HTTP date");
        let later = headers(&[("retry-after", "Sun, 06 Dec 2026 06:01:30 GMT")]);
        assert_eq!(
            rate_limit_signals(&later, || now).retry_after_seconds,
            Some(90)
        );
        let past = headers(&[("retry-after", "Sun, 06 Dec 2026 05:00:00 GMT")]);
        assert_eq!(
            rate_limit_signals(&past, || now).retry_after_seconds,
            Some(0)
        );
    }

    #[test]
    fn unreadable_values_are_ignored_not_zero() {
        let signals = rate_limit_signals(
            &headers(&[
                ("x-ratelimit-remaining", "-1"),
                ("x-ratelimit-limit", "NaN"),
                ("x-ratelimit-delay", "soon"),
                ("x-ratelimit-reset", "inf"),
                ("retry-after", "tomorrow"),
            ]),
            SystemTime::now,
        );
        assert_eq!(signals, RateLimitSignals::default());
        let huge = headers(&[("x-ratelimit-remaining", "1e300")]);
        assert_eq!(
            rate_limit_signals(&huge, SystemTime::now).remaining,
            Some(i64::MAX)
        );
    }
}
