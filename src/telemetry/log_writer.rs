//! A log sink that batches lines in memory and writes them to stderr from one flusher thread,
//! as nginx's `access_log ... buffer= flush=` does: a request thread pays for a short memcpy,
//! not for a `write(2)` per audit line or for contention on the stderr lock.
//!
//! Lines reach stderr within the flush interval, at once when the batch is full, and before the
//! process exits (dropping the [`FlushGuard`] writes what is left). Each thread has its own batch,
//! so lines of different threads can come out of time order by up to the flush interval.

use std::io::{self, Write};
use std::mem;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

const BATCH_BYTES: usize = 64 * 1024;
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// One batch per thread that logs, up to one per core and a few more: two workers appending to
/// one batch would pass its lock and its last cache lines between cores on every request, as
/// nginx's workers, each with its own `access_log` buffer, do not.
struct Shared {
    shards: Box<[Shard]>,
    out: fn(&[u8]),
}

/// Its own cache lines, so that one thread's appends leave the other shards' lines alone.
#[repr(align(128))]
#[derive(Default)]
struct Shard(Mutex<Batch>);

#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    closed: bool,
}

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard, dealt round-robin at its first line.
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed);
}

fn lock(shard: &Shard) -> MutexGuard<'_, Batch> {
    shard.0.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn new(out: fn(&[u8])) -> Self {
        // The proxy's workers (one per core), the control thread and the odd blocking thread.
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            shards: (0..cores + 2).map(|_| Shard::default()).collect(),
            out,
        }
    }

    fn append(&self, bytes: &[u8]) {
        // A thread going away with its locals takes the first shard.
        let index = SHARD.try_with(|index| *index).unwrap_or(0);
        let mut batch = lock(&self.shards[index % self.shards.len()]);
        if batch.closed {
            drop(batch);
            (self.out)(bytes);
            return;
        }
        if batch.bytes.capacity() == 0 {
            batch.bytes.reserve(BATCH_BYTES * 2);
        }
        batch.bytes.extend_from_slice(bytes);
        if batch.bytes.len() >= BATCH_BYTES {
            // A full batch is written by the thread that filled it, outside the lock.
            let full = mem::take(&mut batch.bytes);
            drop(batch);
            (self.out)(&full);
        }
    }

    /// Writes out every shard's lines; true once every shard was closed before this pass took
    /// its lines, so that nothing is left behind.
    fn flush(&self, spare: &mut Vec<u8>) -> bool {
        let mut closed = true;
        for shard in &self.shards {
            let mut batch = lock(shard);
            closed &= batch.closed;
            // An idle shard keeps what it has: handing it the spare would leave a written-to
            // buffer with every thread that ever logged a line.
            if batch.bytes.is_empty() {
                continue;
            }
            mem::swap(&mut batch.bytes, spare);
            drop(batch);
            (self.out)(spare);
            spare.clear();
        }
        closed
    }
}

fn write_out(bytes: &[u8]) {
    // Nowhere to report a failing stderr; dropping the lines is all that is left.
    let _ = io::stderr().lock().write_all(bytes);
}

/// Hands out [`BatchHandle`]s; implements `tracing_subscriber`'s `MakeWriter`.
#[derive(Clone)]
pub struct BatchedStderr {
    shared: Arc<Shared>,
}

/// Keeps the flusher running; dropping it writes the remaining lines and stops the thread.
pub struct FlushGuard {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

impl BatchedStderr {
    /// Appends whole lines (each ending in a newline) to the batch.
    pub fn write_lines(&self, bytes: &[u8]) {
        self.shared.append(bytes);
    }

    pub fn start() -> (BatchedStderr, FlushGuard) {
        Self::start_to(write_out)
    }

    fn start_to(out: fn(&[u8])) -> (BatchedStderr, FlushGuard) {
        let shared = Arc::new(Shared::new(out));
        let flusher_shared = shared.clone();
        let flusher = std::thread::Builder::new()
            .name("log-flusher".into())
            .spawn(move || flush_loop(&flusher_shared))
            .ok();
        (
            BatchedStderr {
                shared: shared.clone(),
            },
            FlushGuard { shared, flusher },
        )
    }
}

fn flush_loop(shared: &Shared) {
    // Buffers swap places with the shards', so steady logging never reallocates or frees one.
    let mut spare = Vec::with_capacity(BATCH_BYTES * 2);
    while !shared.flush(&mut spare) {
        // Woken early only to close (or spuriously, which flushes early).
        std::thread::park_timeout(FLUSH_INTERVAL);
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        // Set under each shard's lock: a line appended after it is written directly, and the
        // flusher's last pass, which sees the flag, takes everything appended before it.
        for shard in &self.shared.shards {
            lock(shard).closed = true;
        }
        match self.flusher.take() {
            Some(flusher) => {
                flusher.thread().unpark();
                let _ = flusher.join();
            }
            None => {
                self.shared.flush(&mut Vec::new());
            }
        }
    }
}

pub struct BatchHandle<'a> {
    shared: &'a Shared,
}

impl Write for BatchHandle<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.shared.append(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchedStderr {
    type Writer = BatchHandle<'a>;

    fn make_writer(&'a self) -> BatchHandle<'a> {
        BatchHandle {
            shared: &self.shared,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// What the writer under test wrote; one test uses it.
    static WRITTEN: Mutex<Vec<u8>> = Mutex::new(Vec::new());

    fn capture(bytes: &[u8]) {
        WRITTEN
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(bytes);
    }

    #[test]
    fn every_line_of_every_thread_comes_out_once_in_its_thread_order() {
        const THREADS: usize = 6;
        const LINES: usize = 5_000;
        let (writer, guard) = BatchedStderr::start_to(capture);
        std::thread::scope(|scope| {
            for thread in 0..THREADS {
                let writer = writer.clone();
                scope.spawn(move || {
                    for line in 0..LINES {
                        // Long enough that batches fill and are written by this thread.
                        let text = format!("{thread} {line} {}\n", "x".repeat(40));
                        writer.write_lines(text.as_bytes());
                    }
                });
            }
        });
        drop(guard);
        // Written directly once closed.
        writer.write_lines(b"after close\n");
        let written = String::from_utf8(WRITTEN.lock().expect("lock").clone()).expect("utf-8");
        let mut next = [0usize; THREADS];
        let mut lines = written.lines();
        for line in lines.by_ref().take(THREADS * LINES) {
            let mut words = line.split(' ');
            let thread: usize = words.next().and_then(|w| w.parse().ok()).expect("thread");
            let number: usize = words.next().and_then(|w| w.parse().ok()).expect("line");
            assert_eq!(
                number, next[thread],
                "thread {thread}'s lines in order, none lost"
            );
            next[thread] += 1;
        }
        assert_eq!(next, [LINES; THREADS]);
        assert_eq!(lines.collect::<Vec<_>>(), ["after close"]);
    }
}
