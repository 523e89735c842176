//! Deadlines for the proxy workers: every request arms two (hyper's client header-read timeout,
//! and the upstream response timeout) and almost always cancels both within milliseconds.
//!
//! Kept by hand because it measurably beats tokio's timers, whose entries go through the time
//! driver's shared wheel (figures in the README's performance section). Each worker thread keeps
//! its deadlines in a slab only that thread touches, and one task per worker ([`drive`]) holds a
//! single tokio sleep set for the earliest deadline and wakes whatever is due: arming and
//! cancelling a deadline is a slab insert and remove.
//! Deadlines fire as precisely as a tokio sleep; a cancelled one costs the driver at most a
//! wake-up at its old deadline.
//!
//! Used on a thread where [`drive`] does not run (the admin listener's runtime, tests), a
//! deadline falls back to a plain tokio sleep, so it can never silently fail to fire.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The deadlines of one worker thread.
struct Wheel {
    /// Tells this thread's wheel from a previous one, for a deadline polled or dropped elsewhere.
    id: u64,
    slots: Vec<Slot>,
    vacant: Vec<usize>,
    /// Tells an armed slot's deadline from an earlier one that used the same slot.
    next_generation: u64,
    /// When the driver will next look, if it is waiting; an earlier deadline must wake it.
    driver_due: Option<Instant>,
    driver: Option<Waker>,
}

enum Slot {
    Vacant,
    Armed {
        deadline: Instant,
        generation: u64,
        waker: Waker,
    },
}

/// Where an armed deadline sits: its wheel, slot and generation.
#[derive(Clone, Copy)]
struct Entry {
    wheel: u64,
    slot: usize,
    generation: u64,
}

thread_local! {
    static WHEEL: RefCell<Option<Wheel>> = const { RefCell::new(None) };
}

static WHEEL_IDS: AtomicU64 = AtomicU64::new(1);

impl Wheel {
    /// Arms a deadline; also returns the driver's waker when the driver must look earlier
    /// than it planned.
    fn arm(&mut self, deadline: Instant, waker: &Waker) -> (Entry, Option<Waker>) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let armed = Slot::Armed {
            deadline,
            generation,
            waker: waker.clone(),
        };
        let slot = match self.vacant.pop() {
            Some(slot) => {
                self.slots[slot] = armed;
                slot
            }
            None => {
                self.slots.push(armed);
                self.slots.len() - 1
            }
        };
        // Woken by the caller once the wheel is no longer borrowed.
        let wake_driver = if self.driver_due.is_none_or(|due| deadline < due) {
            self.driver_due = Some(deadline);
            self.driver.clone()
        } else {
            None
        };
        let entry = Entry {
            wheel: self.id,
            slot,
            generation,
        };
        (entry, wake_driver)
    }

    /// The slot of `entry` while it is still armed (not fired, not reused).
    fn armed(&mut self, entry: Entry) -> Option<&mut Slot> {
        let slot = self.slots.get_mut(entry.slot)?;
        match slot {
            Slot::Armed { generation, .. } if *generation == entry.generation => Some(slot),
            _ => None,
        }
    }

    fn cancel(&mut self, entry: Entry) {
        if let Some(slot) = self.armed(entry) {
            *slot = Slot::Vacant;
            self.vacant.push(entry.slot);
        }
    }

    /// Clears every deadline at or before `now` and adds its waker to `due` (woken by the
    /// caller once the wheel is no longer borrowed); returns the earliest deadline left.
    fn fire(&mut self, now: Instant, due: &mut Vec<Waker>) -> Option<Instant> {
        let mut earliest: Option<Instant> = None;
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let Slot::Armed { deadline, .. } = slot else {
                continue;
            };
            let deadline = *deadline;
            if deadline <= now {
                if let Slot::Armed { waker, .. } = std::mem::replace(slot, Slot::Vacant) {
                    due.push(waker);
                }
                self.vacant.push(index);
            } else if earliest.is_none_or(|e| deadline < e) {
                earliest = Some(deadline);
            }
        }
        earliest
    }
}

/// Runs this thread's deadlines; spawn it once on a worker's single-threaded runtime, before
/// anything arms a deadline there. Never returns.
pub async fn drive() {
    WHEEL.with(|wheel| {
        *wheel.borrow_mut() = Some(Wheel {
            id: WHEEL_IDS.fetch_add(1, Ordering::Relaxed),
            slots: Vec::new(),
            vacant: Vec::new(),
            next_generation: 0,
            driver_due: None,
            driver: None,
        });
    });
    // Reset rather than recreated: one tokio timer entry for the thread's whole life.
    let mut sleep = Box::pin(tokio::time::sleep(Duration::ZERO));
    let mut fired = Vec::new();
    std::future::poll_fn(|cx| {
        let next = WHEEL.with(|wheel| {
            let mut wheel = wheel.borrow_mut();
            let wheel = wheel.as_mut()?;
            let next = wheel.fire(Instant::now(), &mut fired);
            wheel.driver_due = next;
            if !wheel
                .driver
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                wheel.driver = Some(cx.waker().clone());
            }
            next
        });
        for waker in fired.drain(..) {
            waker.wake();
        }
        let Some(due) = next else {
            return Poll::<()>::Pending;
        };
        sleep.as_mut().reset(tokio::time::Instant::from_std(due));
        if sleep.as_mut().poll(cx).is_ready() {
            // Look again on the next poll rather than in a loop here: under a paused tokio
            // clock (tests) the sleep can end before the real clock reaches `due`, and yielding
            // lets the real clock catch up instead of spinning on this thread.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    })
    .await
}

/// A deadline as a future: ready at `deadline`.
pub struct Deadline {
    deadline: Instant,
    state: State,
}

enum State {
    Unarmed,
    Armed(Entry),
    /// No driver on the thread that polled it.
    Tokio(Pin<Box<tokio::time::Sleep>>),
}

impl Deadline {
    pub fn at(deadline: Instant) -> Self {
        Self {
            deadline,
            state: State::Unarmed,
        }
    }

    /// A duration too long to add (a configured timeout of centuries) means about thirty
    /// years, as with tokio's timers.
    pub fn after(duration: Duration) -> Self {
        Self::after_from(Instant::now(), duration)
    }

    /// `duration` after `start`, for a caller that has just read the clock anyway.
    pub fn after_from(start: Instant, duration: Duration) -> Self {
        Self::at(
            start
                .checked_add(duration)
                .unwrap_or_else(|| start + Duration::from_secs(86_400 * 365 * 30)),
        )
    }

    fn fall_back(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut sleep = Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(
            self.deadline,
        )));
        let poll = sleep.as_mut().poll(cx);
        self.state = State::Tokio(sleep);
        poll
    }
}

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let deadline = this.deadline;
        // Some: handled on this thread's wheel; None: no wheel here (or another thread's entry).
        let mut wake_driver = None;
        let handled = WHEEL.with(|wheel| {
            let mut wheel = wheel.borrow_mut();
            let wheel = wheel.as_mut()?;
            match this.state {
                // Armed even if already due (the driver then fires it on its next turn): no
                // clock read here, which every request would pay twice.
                State::Unarmed => {
                    let (entry, driver) = wheel.arm(deadline, cx.waker());
                    this.state = State::Armed(entry);
                    wake_driver = driver;
                    Some(Poll::Pending)
                }
                State::Armed(entry) if entry.wheel == wheel.id => match wheel.armed(entry) {
                    Some(Slot::Armed { waker, .. }) => {
                        if !waker.will_wake(cx.waker()) {
                            *waker = cx.waker().clone();
                        }
                        Some(Poll::Pending)
                    }
                    // Fired: the driver cleared the slot at the deadline.
                    _ => Some(Poll::Ready(())),
                },
                State::Armed(_) | State::Tokio(_) => None,
            }
        });
        if let Some(driver) = wake_driver {
            driver.wake();
        }
        match (handled, &mut this.state) {
            (Some(poll), _) => poll,
            (None, State::Tokio(sleep)) => sleep.as_mut().poll(cx),
            (None, _) => this.fall_back(cx),
        }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        if let State::Armed(entry) = self.state {
            // On another thread (never, with single-threaded workers) the slot stays until the
            // driver fires it at its deadline: a spurious wake-up, nothing worse.
            let _ = WHEEL.try_with(|wheel| {
                let Ok(mut wheel) = wheel.try_borrow_mut() else {
                    return;
                };
                if let Some(wheel) = wheel.as_mut().filter(|w| w.id == entry.wheel) {
                    wheel.cancel(entry);
                }
            });
        }
    }
}

impl hyper::rt::Sleep for Deadline {}

/// hyper's timer for connections served on a worker (the header-read timeout).
#[derive(Clone, Copy, Debug, Default)]
pub struct WorkerTimer;

impl hyper::rt::Timer for WorkerTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Deadline::after(duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Deadline::at(deadline))
    }
}

pin_project_lite::pin_project! {
    /// `future`, or `Err(Elapsed)` once `duration` has passed (tokio's `timeout`, on the wheel).
    pub struct Timeout<F> {
        #[pin]
        future: F,
        deadline: Deadline,
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Elapsed;

pub fn timeout<F: Future>(duration: Duration, future: F) -> Timeout<F> {
    timeout_from(Instant::now(), duration, future)
}

/// [`timeout`] counted from `start` (a clock reading the caller already has).
pub fn timeout_from<F: Future>(start: Instant, duration: Duration, future: F) -> Timeout<F> {
    Timeout {
        future,
        deadline: Deadline::after_from(start, duration),
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        match Pin::new(this.deadline).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// Generous: these check that deadlines fire and in which order, not how promptly.
    const PATIENCE: Duration = Duration::from_secs(10);

    #[test]
    fn deadlines_fire_at_their_time_in_order_and_cancelled_ones_never() {
        worker_runtime().block_on(async {
            tokio::spawn(drive());
            tokio::task::yield_now().await;
            let start = Instant::now();
            // Deadlines armed after this one but due earlier (the 50 ms one, then the 100 ms one
            // after the 50 ms one is cancelled) must wake the driver, which was waiting for 1.5 s.
            let late = tokio::spawn(async move {
                Deadline::after(Duration::from_millis(1500)).await;
                Instant::now()
            });
            tokio::task::yield_now().await;
            let cancelled = Deadline::after(Duration::from_millis(50));
            let mut cancelled = Box::pin(cancelled);
            assert!(futures_poll_once(cancelled.as_mut()).await.is_pending());
            drop(cancelled);
            let early_at = tokio::time::timeout(PATIENCE, async {
                Deadline::after(Duration::from_millis(100)).await;
                Instant::now()
            })
            .await
            .expect("the 100 ms deadline fired");
            let late_at = tokio::time::timeout(PATIENCE, late)
                .await
                .expect("the 1.5 s deadline fired")
                .expect("task");
            assert!(early_at >= start + Duration::from_millis(100));
            assert!(
                early_at < start + Duration::from_millis(1200),
                "the earlier deadline waited for the later one"
            );
            assert!(late_at >= start + Duration::from_millis(1500));
            WHEEL.with(|wheel| {
                let wheel = wheel.borrow();
                let wheel = wheel.as_ref().expect("driver installed its wheel");
                assert!(
                    wheel.slots.iter().all(|s| matches!(s, Slot::Vacant)),
                    "fired and cancelled deadlines leave no armed slot"
                );
            });
        });
    }

    #[test]
    fn timeout_passes_the_output_or_elapses() {
        worker_runtime().block_on(async {
            tokio::spawn(drive());
            tokio::task::yield_now().await;
            let quick = timeout(Duration::from_secs(5), async { 7 }).await;
            assert_eq!(quick, Ok(7));
            let past = Instant::now().checked_sub(Duration::from_millis(1));
            tokio::time::timeout(PATIENCE, Deadline::at(past.unwrap_or_else(Instant::now)))
                .await
                .expect("a deadline already due fires on the driver's next turn");
            let start = Instant::now();
            let slow = tokio::time::timeout(
                PATIENCE,
                timeout(Duration::from_millis(100), std::future::pending::<()>()),
            )
            .await
            .expect("the timeout fired");
            assert_eq!(slow, Err(Elapsed));
            assert!(start.elapsed() >= Duration::from_millis(100));
        });
    }

    #[test]
    fn without_a_driver_a_deadline_falls_back_to_tokio() {
        worker_runtime().block_on(async {
            let start = Instant::now();
            tokio::time::timeout(PATIENCE, Deadline::after(Duration::from_millis(50)))
                .await
                .expect("fired without a driver");
            assert!(start.elapsed() >= Duration::from_millis(50));
        });
    }

    #[test]
    fn a_paused_tokio_clock_neither_hangs_nor_spins_the_driver_forever() {
        // tokio's paused clock jumps ahead while deadlines follow the real one: the driver must
        // yield until the real clock gets there.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .expect("runtime");
            runtime.block_on(async {
                tokio::spawn(drive());
                tokio::task::yield_now().await;
                Deadline::after(Duration::from_millis(100)).await;
            });
            let _ = done_tx.send(());
        });
        done_rx
            .recv_timeout(PATIENCE)
            .expect("the deadline fired under a paused clock");
    }

    #[test]
    fn a_reused_slot_is_not_cancelled_by_its_previous_owner() {
        let waker = Waker::noop();
        let now = Instant::now();
        let mut wheel = Wheel {
            id: 1,
            slots: Vec::new(),
            vacant: Vec::new(),
            next_generation: 0,
            driver_due: None,
            driver: None,
        };
        let mut fired = Vec::new();
        let (first, _) = wheel.arm(now, waker);
        assert_eq!(wheel.fire(now, &mut fired), None, "due: fired and cleared");
        assert_eq!(fired.len(), 1);
        let (second, _) = wheel.arm(now + Duration::from_secs(60), waker);
        assert_eq!(second.slot, first.slot, "the slot is reused");
        wheel.cancel(first);
        assert!(wheel.armed(second).is_some(), "the new deadline survives");
        assert_eq!(
            wheel.fire(now, &mut fired),
            Some(now + Duration::from_secs(60))
        );
        assert_eq!(fired.len(), 1, "nothing else was due");
    }

    async fn futures_poll_once<F: Future + Unpin>(mut future: F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut future).poll(cx))).await
    }
}
