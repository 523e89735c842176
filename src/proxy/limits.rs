//! A client's own share of the proxy: at most `max_concurrent_requests` in flight and
//! `max_requests_per_second` with a `burst`, or a 429 with `Retry-After` at once. Checked after
//! admission, so an unknown caller cannot use up a client's share.
//!
//! The rate is GCRA (a token bucket kept as one "theoretical arrival time" in an atomic): no lock
//! and no timer per request. A reload starts the counts afresh; requests then in flight finish
//! under the share they were admitted with.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::config;
use crate::error::{Limit, Rejection};

fn nanos_since_start() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

pub struct ClientLimits {
    concurrency: Option<(usize, Arc<AtomicUsize>)>,
    rate: Option<Gcra>,
}

/// Holds one of a client's concurrent requests until the exchange ends.
#[derive(Debug)]
pub struct ClientSlot(Arc<AtomicUsize>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

struct Gcra {
    /// Nanoseconds between requests at the configured rate.
    interval: u64,
    /// How far ahead of now the arrival time may run: the burst.
    tolerance: u64,
    /// When the next request would be due at the rate, in `nanos_since_start`.
    arrival: AtomicU64,
}

impl ClientLimits {
    pub fn new(limits: &config::ClientLimits) -> Self {
        Self {
            concurrency: limits
                .max_concurrent_requests
                .map(|max| (max, Arc::new(AtomicUsize::new(0)))),
            rate: limits.rate.map(|(per_second, burst)| {
                let interval = (1e9 / per_second) as u64;
                Gcra {
                    interval,
                    tolerance: interval.saturating_mul(u64::from(burst.saturating_sub(1))),
                    arrival: AtomicU64::new(0),
                }
            }),
        }
    }

    /// Takes a place for one request, or says when to come back. The rate is checked last, so
    /// a request refused for concurrency does not use up the rate.
    pub fn admit(&self) -> Result<Option<ClientSlot>, Rejection> {
        let slot = match &self.concurrency {
            None => None,
            Some((max, in_flight)) => {
                if in_flight.fetch_add(1, Ordering::Acquire) >= *max {
                    in_flight.fetch_sub(1, Ordering::Release);
                    return Err(Rejection::Limited {
                        limit: Limit::Concurrency,
                        // Nothing says when one ends; a second is what a polite client waits.
                        retry_after: Duration::from_secs(1),
                    });
                }
                Some(ClientSlot(in_flight.clone()))
            }
        };
        if let Some(rate) = &self.rate {
            rate.admit().map_err(|retry_after| Rejection::Limited {
                limit: Limit::Rate,
                retry_after,
            })?;
        }
        Ok(slot)
    }
}

impl Gcra {
    fn admit(&self) -> Result<(), Duration> {
        let now = nanos_since_start();
        let mut arrival = self.arrival.load(Ordering::Relaxed);
        loop {
            let next = arrival.max(now).saturating_add(self.interval);
            // `next - now` is how far ahead of the rate this client would be with this request.
            let allowed = self.tolerance.saturating_add(self.interval);
            if next - now > allowed {
                return Err(Duration::from_nanos(next - now - allowed));
            }
            match self.arrival.compare_exchange_weak(
                arrival,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(current) => arrival = current,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_burst_passes_then_the_rate_holds_with_when_to_retry() {
        let limits = ClientLimits::new(&config::ClientLimits {
            max_concurrent_requests: None,
            rate: Some((2.0, 3)),
        });
        for _ in 0..3 {
            assert!(limits.admit().is_ok(), "within the burst");
        }
        match limits.admit() {
            Err(Rejection::Limited {
                limit: Limit::Rate,
                retry_after,
            }) => assert!(
                retry_after > Duration::from_millis(300)
                    && retry_after <= Duration::from_millis(500),
                "{retry_after:?}"
            ),
            other => panic!("over the rate: {other:?}"),
        }
    }

    #[test]
    fn concurrent_requests_hold_a_slot_until_they_end() {
        let limits = ClientLimits::new(&config::ClientLimits {
            max_concurrent_requests: Some(2),
            rate: None,
        });
        let first = limits.admit().expect("first");
        let _second = limits.admit().expect("second");
        assert!(matches!(
            limits.admit(),
            Err(Rejection::Limited {
                limit: Limit::Concurrency,
                ..
            })
        ));
        drop(first);
        assert!(limits.admit().is_ok(), "a slot came free");
    }
}
