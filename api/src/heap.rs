//! Handing memory back after a connection flood.
//!
//! Allocators keep freed memory for reuse: after a burst of thousands of
//! connections that is tens of megabytes never reused. mimalloc (what the
//! `lunchrush` binary allocates with) keeps it per thread, so each runtime
//! worker has to collect its own heap: a trim is requested here, and each
//! worker collects the next time it parks (idle), through
//! [`on_worker_park`], which the runtime's builder installs. glibc's malloc
//! (a library user's default) is trimmed from any thread.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Trims requested so far; a worker collects when it has not seen the last.
static REQUESTED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The last request this thread collected for.
    static COLLECTED: Cell<u64> = const { Cell::new(0) };
}

/// Asks every worker to hand its free memory back when it next parks, and
/// trims what any thread can now (on a blocking thread: it may take a few
/// milliseconds).
pub fn request_trim() {
    REQUESTED.fetch_add(1, Ordering::Relaxed);
    tokio::task::spawn_blocking(trim_this_thread);
}

/// For `tokio::runtime::Builder::on_thread_park`: collects this thread's
/// free memory once per request. Otherwise an atomic load and a
/// thread-local read.
pub fn on_worker_park() {
    let requested = REQUESTED.load(Ordering::Relaxed);
    if requested != 0 && COLLECTED.get() != requested {
        COLLECTED.set(requested);
        trim_this_thread();
    }
}

/// Hands this thread's free memory back to the system, whichever allocator
/// the process runs with: each call is a no-op for the allocator it does
/// not use.
fn trim_this_thread() {
    // SAFETY: mi_collect only frees memory mimalloc holds unused (this
    // thread's heap, abandoned segments); `force` also decommits it.
    unsafe { libmimalloc_sys::mi_collect(true) };
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}
