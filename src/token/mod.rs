//! Access tokens per identity: a cache the request path reads without waiting, and one background
//! refresher per identity that keeps it filled; beside each cache, how hard Azure DevOps
//! throttles that identity (`pressure`).
//!
//! The request path never talks to Entra ID and never sends a token past its expiry (measured on
//! the monotonic clock, less a safety margin).

mod assertion;
pub mod endpoint;
mod federated;
mod identities;
mod managed;
pub mod pressure;
mod source;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use tokio::sync::{Notify, watch};

use crate::telemetry::metrics::Metrics;
pub use endpoint::{FetchError, IssuedToken, REFRESH_RESULTS};
pub use identities::Identities;
pub use source::TokenSource;

/// Renew at the latest this long before expiry, as the Azure SDKs do.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);
const MAX_SAFETY_MARGIN: Duration = Duration::from_secs(60);
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A `Retry-After` from Entra ID is honoured up to this long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// Azure DevOps refusing a token forces a refresh at most this often per identity, so a principal
/// it refuses for good (not a member of the organization) cannot make us hammer Entra ID.
const FORCED_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

struct CachedToken {
    bearer: HeaderValue,
    /// Past this instant the token is never sent.
    usable_until: Instant,
    expires_at: SystemTime,
}

/// What `/readyz` and `check` report about an identity; never the token.
#[derive(Debug, Clone)]
pub struct TokenStatus {
    pub identity: String,
    pub valid_for: Option<Duration>,
    pub expires_at: Option<SystemTime>,
    pub last_error: Option<String>,
    pub next_attempt_in: Option<Duration>,
}

#[derive(Default)]
struct RefreshState {
    last_error: Option<String>,
    next_attempt: Option<Instant>,
    /// Fetches the refresher has started, numbered from 1.
    started: u64,
    forced: Option<Forced>,
}

/// The last refresh forced by a refusal: when, and the fetch number it must see completed beyond.
struct Forced {
    at: Instant,
    after: u64,
}

enum Renewal {
    Ready(HeaderValue),
    Pending { after: u64 },
    Denied,
}

pub struct TokenCache {
    identity: String,
    current: ArcSwapOption<CachedToken>,
    state: Mutex<RefreshState>,
    /// Wakes the refresher before its schedule.
    refresh_now: Notify,
    /// The number of the last fetch that finished, so a forced refresh can wait for its own.
    completed: watch::Sender<u64>,
    /// Whether fetching again can bring a different token: managed identity endpoints hand out
    /// the same cached token until it nears expiry.
    renewable: bool,
    /// Azure DevOps' throttling of this identity, which every client acting as it shares.
    pressure: pressure::Pressure,
}

impl TokenCache {
    pub fn new(identity: impl Into<String>, renewable: bool) -> Self {
        Self {
            identity: identity.into(),
            current: ArcSwapOption::empty(),
            state: Mutex::new(RefreshState::default()),
            refresh_now: Notify::new(),
            completed: watch::Sender::new(0),
            renewable,
            pressure: pressure::Pressure::default(),
        }
    }

    pub fn pressure(&self) -> &pressure::Pressure {
        &self.pressure
    }

    /// Azure DevOps refused `refused`, a token we believed valid: asks the refresher for a new
    /// one without waiting for it (the request cannot be replayed anyway).
    pub fn request_renewal(&self, refused: &HeaderValue) {
        let _ = self.force_refresh(refused);
    }

    /// Azure DevOps refused `refused`, a token we believed valid. Returns a different token to
    /// replay with: the current one if another request already renewed it, else one fetched now.
    /// `None` when no new token came within `wait`, or renewing could not help now.
    pub async fn renew_refused(
        &self,
        refused: &HeaderValue,
        wait: Duration,
    ) -> Option<HeaderValue> {
        let mut completed = self.completed.subscribe();
        let after = match self.force_refresh(refused) {
            Renewal::Ready(bearer) => return Some(bearer),
            Renewal::Denied => return None,
            Renewal::Pending { after } => after,
        };
        let fetched = async { completed.wait_for(|&done| done > after).await.is_ok() };
        if !tokio::time::timeout(wait, fetched).await.unwrap_or(false) {
            return None;
        }
        self.bearer().filter(|b| b != refused)
    }

    fn force_refresh(&self, refused: &HeaderValue) -> Renewal {
        let mut state = self.lock_state();
        // Checked under the lock the refresher takes to start a fetch, so a renewal that landed
        // since the refusal is used instead of forcing another.
        if let Some(current) = self.bearer().filter(|b| b != refused) {
            return Renewal::Ready(current);
        }
        if !self.renewable {
            return Renewal::Denied;
        }
        if let Some(forced) = &state.forced
            && *self.completed.borrow() <= forced.after
        {
            return Renewal::Pending {
                after: forced.after,
            };
        }
        if state
            .forced
            .as_ref()
            .is_some_and(|f| f.at.elapsed() < FORCED_REFRESH_INTERVAL)
        {
            return Renewal::Denied;
        }
        // The refresher is waiting out a failure: asking sooner would ignore its back-off and
        // any Retry-After.
        if state.last_error.is_some() && state.next_attempt.is_some_and(|at| at > Instant::now()) {
            return Renewal::Denied;
        }
        let after = state.started;
        state.forced = Some(Forced {
            at: Instant::now(),
            after,
        });
        self.refresh_now.notify_one();
        Renewal::Pending { after }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The `Authorization` value to send now, if a token is still usable. Lock-free.
    pub fn bearer(&self) -> Option<HeaderValue> {
        let guard = self.current.load();
        let token = guard.as_ref()?;
        (Instant::now() < token.usable_until).then(|| token.bearer.clone())
    }

    /// How long a client should wait before asking again when no token is usable.
    pub fn retry_after(&self) -> Duration {
        let next = self.lock_state().next_attempt;
        next.map(|at| at.saturating_duration_since(Instant::now()))
            .unwrap_or_default()
            .clamp(Duration::from_secs(1), MAX_BACKOFF)
    }

    pub fn status(&self) -> TokenStatus {
        let now = Instant::now();
        let current = self.current.load();
        let valid = current.as_ref().filter(|t| now < t.usable_until);
        let state = self.lock_state();
        TokenStatus {
            identity: self.identity.clone(),
            valid_for: valid.map(|t| t.usable_until - now),
            expires_at: valid.map(|t| t.expires_at),
            last_error: state.last_error.clone(),
            next_attempt_in: state
                .next_attempt
                .map(|at| at.saturating_duration_since(now)),
        }
    }

    fn store(&self, token: &IssuedToken) {
        let margin = MAX_SAFETY_MARGIN.min(token.lifetime / 10);
        let usable_for = token.lifetime - margin;
        self.current.store(Some(Arc::new(CachedToken {
            bearer: token.bearer.clone(),
            usable_until: token.requested_at + usable_for,
            expires_at: SystemTime::now() + usable_for,
        })));
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, RefreshState> {
        // The state is plain data; a panic elsewhere cannot leave it inconsistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// When to renew a token fetched at `requested_at`: at half its lifetime, and at the latest five
/// minutes before it expires.
fn refresh_delay(lifetime: Duration) -> Duration {
    let half = lifetime / 2;
    match lifetime.checked_sub(REFRESH_BEFORE_EXPIRY) {
        Some(latest) if !latest.is_zero() => half.min(latest),
        _ => half,
    }
}

/// Exponential back-off with jitter, so replicas that failed together do not retry together.
fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(6);
    let base = (MIN_BACKOFF * 2u32.pow(exponent)).min(MAX_BACKOFF);
    base.mul_f64(0.75 + fastrand::f64() * 0.5)
        .clamp(MIN_BACKOFF, MAX_BACKOFF)
}

/// Keeps `cache` filled until the task is aborted. The only place that fetches tokens, so there is
/// never more than one fetch in flight per identity.
pub async fn run_refresher(source: TokenSource, cache: Arc<TokenCache>, metrics: Arc<Metrics>) {
    let identity = cache.identity().to_string();
    let mut failures = 0u32;
    loop {
        let fetch = {
            let mut state = cache.lock_state();
            state.started += 1;
            state.started
        };
        let delay = match source.fetch().await {
            Ok(token) => {
                failures = 0;
                cache.store(&token);
                metrics.count_token_refresh(&identity, "success");
                let delay = refresh_delay(token.lifetime);
                let next = token.requested_at + delay;
                {
                    let mut state = cache.lock_state();
                    state.last_error = None;
                    state.next_attempt = Some(next);
                }
                tracing::info!(
                    identity = %identity,
                    lifetime_seconds = token.lifetime.as_secs(),
                    refresh_in_seconds = next.saturating_duration_since(Instant::now()).as_secs(),
                    "access token acquired"
                );
                next.saturating_duration_since(Instant::now())
            }
            Err(error) => {
                failures += 1;
                metrics.count_token_refresh(&identity, error.kind());
                // An answer that retrying cannot change is asked again only at the slowest pace.
                let mut delay = if error.is_permanent() {
                    MAX_BACKOFF
                } else {
                    backoff(failures)
                };
                if let Some(retry_after) = error.retry_after() {
                    delay = delay.max(retry_after.min(MAX_RETRY_AFTER));
                }
                let still_valid = cache.bearer().is_some();
                {
                    let mut state = cache.lock_state();
                    state.last_error = Some(error.to_string());
                    state.next_attempt = Some(Instant::now() + delay);
                }
                tracing::warn!(
                    identity = %identity,
                    error = %error,
                    consecutive_failures = failures,
                    retry_in_ms = delay.as_millis() as u64,
                    cached_token_still_valid = still_valid,
                    "token refresh failed"
                );
                delay
            }
        };
        cache.completed.send_replace(fetch);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = cache.refresh_now.notified() => {
                tracing::info!(identity = %identity, "refreshing early: Azure DevOps refused the current token");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_at_half_life_and_at_latest_five_minutes_before_expiry() {
        assert_eq!(
            refresh_delay(Duration::from_secs(3600)),
            Duration::from_secs(1800)
        );
        assert_eq!(
            refresh_delay(Duration::from_secs(480)),
            Duration::from_secs(180)
        );
        assert_eq!(
            refresh_delay(Duration::from_secs(120)),
            Duration::from_secs(60)
        );
        assert_eq!(
            refresh_delay(Duration::from_secs(4)),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn backoff_grows_to_a_minute_with_jitter() {
        for failures in 1..50 {
            let delay = backoff(failures);
            assert!(delay >= MIN_BACKOFF && delay <= MAX_BACKOFF, "{delay:?}");
        }
        assert!(backoff(1) <= Duration::from_millis(1250));
        assert!(backoff(20) >= Duration::from_secs(45));
    }

    #[test]
    fn an_expired_token_is_never_handed_out() {
        let cache = TokenCache::new("default", true);
        assert!(cache.bearer().is_none());
        let bearer = HeaderValue::from_static("Bearer x");
        cache.store(&IssuedToken {
            bearer: bearer.clone(),
            lifetime: Duration::from_secs(10),
            requested_at: Instant::now() - Duration::from_secs(9),
        });
        assert!(cache.bearer().is_none(), "inside the safety margin");
        cache.store(&IssuedToken {
            bearer,
            lifetime: Duration::from_secs(3600),
            requested_at: Instant::now(),
        });
        assert!(cache.bearer().is_some());
        assert!(!format!("{:?}", cache.status()).contains("Bearer"));
    }

    fn issued(bearer: &str) -> IssuedToken {
        IssuedToken {
            bearer: HeaderValue::try_from(bearer).expect("header-safe"),
            lifetime: Duration::from_secs(3600),
            requested_at: Instant::now(),
        }
    }

    /// Stands in for `run_refresher`: each wake-up is one fetch that issues the next token.
    fn spawn_refresher(cache: Arc<TokenCache>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                cache.refresh_now.notified().await;
                let fetch = {
                    let mut state = cache.lock_state();
                    state.started += 1;
                    state.started
                };
                cache.store(&issued(&format!("Bearer renewed-{fetch}")));
                cache.completed.send_replace(fetch);
            }
        })
    }

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn a_refused_token_is_renewed_once_then_debounced() {
        let cache = Arc::new(TokenCache::new("default", true));
        cache.store(&issued("Bearer first"));
        let refresher = spawn_refresher(cache.clone());
        let first = HeaderValue::from_static("Bearer first");
        let renewed = cache.renew_refused(&first, WAIT).await.expect("renewed");
        assert_eq!(renewed, "Bearer renewed-1");
        // A request refused with the old token meanwhile gets the new one, with no fetch.
        assert_eq!(
            cache.renew_refused(&first, WAIT).await,
            Some(renewed.clone())
        );
        // The new token refused too, within 30 s: no second forced refresh.
        assert_eq!(cache.renew_refused(&renewed, WAIT).await, None);
        assert_eq!(cache.lock_state().started, 1);
        refresher.abort();
    }

    #[tokio::test]
    async fn concurrent_refusals_share_one_forced_refresh() {
        let cache = Arc::new(TokenCache::new("default", true));
        cache.store(&issued("Bearer first"));
        let refresher = spawn_refresher(cache.clone());
        let first = HeaderValue::from_static("Bearer first");
        let (a, b, c) = tokio::join!(
            cache.renew_refused(&first, WAIT),
            cache.renew_refused(&first, WAIT),
            cache.renew_refused(&first, WAIT),
        );
        let renewed = Some(HeaderValue::from_static("Bearer renewed-1"));
        assert_eq!(
            (a, b.clone(), c),
            (renewed.clone(), renewed.clone(), renewed)
        );
        assert_eq!(cache.lock_state().started, 1);
        refresher.abort();
    }

    #[tokio::test]
    async fn no_forced_refresh_during_back_off_or_for_a_managed_identity() {
        let first = HeaderValue::from_static("Bearer first");
        let backing_off = Arc::new(TokenCache::new("default", true));
        backing_off.store(&issued("Bearer first"));
        {
            let mut state = backing_off.lock_state();
            state.last_error = Some("throttled".into());
            state.next_attempt = Some(Instant::now() + Duration::from_secs(60));
        }
        let managed = Arc::new(TokenCache::new("mi", false));
        managed.store(&issued("Bearer first"));
        for cache in [backing_off, managed] {
            let refresher = spawn_refresher(cache.clone());
            assert_eq!(cache.renew_refused(&first, WAIT).await, None);
            tokio::task::yield_now().await;
            assert_eq!(cache.lock_state().started, 0, "{}", cache.identity());
            refresher.abort();
        }
    }
}
