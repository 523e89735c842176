//! How hard Azure DevOps pushes back on one identity. Every client acting as the identity draws
//! on one budget (200 TSTUs per sliding 5 minutes); when Azure DevOps says to slow down (a 429,
//! `Retry-After`, `X-RateLimit-Delay`, or the remaining budget near zero), the identity is held
//! for that long, and its clients take turns by priority: high goes on, normal waits half the
//! hold, low all of it, each within `inbound.max_throttle_wait` (beyond, a 429 with
//! `Retry-After` at once: waiting only to be refused would hold a connection for nothing). So
//! CI's clones keep flowing while a noisy exporter waits.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::config::Priority;

/// The longest hold any single signal sets: Azure DevOps' own delays stay well under it.
const MAX_HOLD: Duration = Duration::from_secs(60);
/// Requests of one priority waiting at once for one identity; more are refused at once.
const MAX_WAITING: usize = 1024;

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn millis_since_base(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(base()).as_millis()).unwrap_or(u64::MAX)
}

#[derive(Default)]
pub struct Pressure {
    /// Milliseconds after `base()` until which the identity is held; 0: not held.
    held_until: AtomicU64,
    /// Requests waiting now: normal, low.
    waiting: [AtomicUsize; 2],
}

/// Why a request may not go yet, and when to try again.
#[derive(Debug, PartialEq, Eq)]
pub struct Wait {
    pub retry_after: Duration,
}

impl Pressure {
    /// Azure DevOps asked to slow down for `hold` (at most a minute is believed).
    pub fn hold(&self, hold: Duration) {
        let until = millis_since_base(Instant::now() + hold.min(MAX_HOLD));
        self.held_until.fetch_max(until, Ordering::Relaxed);
    }

    /// Whether the identity is held now. Every request asks: when it never was, or its hold
    /// has been seen to end (and cleared), that is one atomic read and no clock.
    pub fn is_held(&self) -> bool {
        let until = self.held_until.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        if until > millis_since_base(Instant::now()) {
            return true;
        }
        // A newer hold may have come meanwhile: only the one seen ending is cleared.
        let _ = self
            .held_until
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed);
        false
    }

    /// How long the identity is still held; zero when it is not.
    fn held_for(&self) -> Duration {
        let until = self.held_until.load(Ordering::Relaxed);
        Duration::from_millis(until.saturating_sub(millis_since_base(Instant::now())))
    }

    /// Waits this request's turn: nothing unless the identity is held. `Err` when the wait
    /// would exceed `max_wait` or too many of this priority already wait.
    pub async fn take_turn(&self, priority: Priority, max_wait: Duration) -> Result<(), Wait> {
        let held = self.held_for();
        let (share, waiting) = match priority {
            _ if held.is_zero() => return Ok(()),
            Priority::High => return Ok(()),
            Priority::Normal => (held / 2, &self.waiting[0]),
            Priority::Low => (held, &self.waiting[1]),
        };
        if share > max_wait {
            return Err(Wait { retry_after: share });
        }
        // Counted down when this request stops waiting, also when its client goes away
        // mid-wait and the future is dropped.
        let _waiting = Waiting::enter(waiting);
        if waiting.load(Ordering::Relaxed) > MAX_WAITING {
            return Err(Wait { retry_after: share });
        }
        tokio::time::sleep(share).await;
        Ok(())
    }
}

/// One request in a priority's queue, for as long as it exists.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn turns_follow_priority_within_the_bound() {
        let pressure = Pressure::default();
        let bound = Duration::from_secs(10);
        // Not held: nobody waits.
        let started = tokio::time::Instant::now();
        pressure
            .take_turn(Priority::Low, bound)
            .await
            .expect("free");
        assert_eq!(started.elapsed(), Duration::ZERO);

        assert!(!pressure.is_held());
        pressure.hold(Duration::from_secs(8));
        assert!(pressure.is_held());
        assert!(pressure.held_for() > Duration::from_secs(7));
        pressure
            .take_turn(Priority::High, bound)
            .await
            .expect("high goes on");
        assert_eq!(started.elapsed(), Duration::ZERO);
        // A longer hold than the bound: low is refused at once, with when to retry.
        pressure.hold(Duration::from_secs(30));
        let refused = pressure
            .take_turn(Priority::Low, bound)
            .await
            .expect_err("low would wait past the bound");
        assert!(refused.retry_after > bound, "{refused:?}");
        assert_eq!(started.elapsed(), Duration::ZERO);
        // A request whose client went away mid-wait leaves the queue.
        let pressure = Pressure::default();
        pressure.hold(Duration::from_secs(8));
        {
            let waiting = pressure.take_turn(Priority::Low, bound);
            tokio::pin!(waiting);
            let waker = futures_util::task::noop_waker();
            let mut context = std::task::Context::from_waker(&waker);
            assert!(waiting.as_mut().poll(&mut context).is_pending());
            assert_eq!(pressure.waiting[1].load(Ordering::Relaxed), 1);
        }
        assert_eq!(pressure.waiting[1].load(Ordering::Relaxed), 0);
        // A hold above a minute is not believed.
        pressure.hold(Duration::from_secs(3600));
        assert!(pressure.held_for() <= MAX_HOLD);
    }
}
