//! A log sink that batches lines in memory and writes them to stderr from one flusher thread,
//! as nginx's `access_log ... buffer= flush=` does: a request thread pays for a short memcpy,
//! not for a `write(2)` per audit line or for contention on the stderr lock.
//!
//! Lines reach stderr within the flush interval, at once when the batch is full, and before the
//! process exits (dropping the [`FlushGuard`] writes what is left).

use std::io::{self, Write};
use std::mem;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

const BATCH_BYTES: usize = 64 * 1024;
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

struct Shared {
    batch: Mutex<Batch>,
    wake: Condvar,
}

#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Batch> {
        self.batch.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn append(&self, bytes: &[u8]) {
        let mut batch = self.lock();
        if batch.closed {
            drop(batch);
            write_out(bytes);
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
            write_out(&full);
        }
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
        let shared = Arc::new(Shared {
            batch: Mutex::new(Batch::default()),
            wake: Condvar::new(),
        });
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
    // Two buffers swap places, so steady logging never reallocates or frees a batch.
    let mut spare = Vec::with_capacity(BATCH_BYTES * 2);
    let mut batch = shared.lock();
    loop {
        let closed = batch.closed;
        mem::swap(&mut batch.bytes, &mut spare);
        drop(batch);
        if !spare.is_empty() {
            write_out(&spare);
            spare.clear();
        }
        if closed {
            return;
        }
        batch = shared
            .wake
            .wait_timeout(shared.lock(), FLUSH_INTERVAL)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
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
