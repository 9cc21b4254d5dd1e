//! The worker's side of cancelling: which task each thread runs, which
//! running tasks were cancelled, and `fleet::is_cancelled()`.
//!
//! Every task passes here twice (start and end), so that path takes no
//! lock and hashes nothing: each thread that runs tasks has a slot of two
//! atomics (the task it runs, and the task marked cancelled), registered
//! once per thread. Only a cancel, which is rare, walks the slots.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

/// What one thread runs, seen from the thread that receives cancels.
#[derive(Default)]
struct Slot {
    /// The task (or actor call) the thread runs now; 0: none.
    running: AtomicU64,
    /// The last of its tasks marked cancelled.
    cancelled: AtomicU64,
}

/// Slots of the live threads that have run a task.
static SLOTS: Mutex<Vec<Arc<Slot>>> = Mutex::new(Vec::new());

/// This thread's slot, unregistered when the thread exits.
struct Registered(Arc<Slot>);

impl Registered {
    fn new() -> Self {
        let slot = Arc::new(Slot::default());
        SLOTS.lock().push(slot.clone());
        Registered(slot)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        SLOTS.lock().retain(|s| !Arc::ptr_eq(s, &self.0));
    }
}

thread_local! {
    /// The task (or actor call) this thread runs; 0 outside one.
    static CURRENT: Cell<u64> = const { Cell::new(0) };
    static SLOT: Registered = Registered::new();
}

/// Marks `id` as running on this thread until the guard drops.
pub(crate) fn running(id: u64) -> Running {
    let outer = CURRENT.replace(id);
    let _ = SLOT.try_with(|s| s.0.running.store(id, Ordering::Release));
    Running { outer }
}

/// While alive, its task counts as running on this thread.
pub(crate) struct Running {
    outer: u64,
}

impl Drop for Running {
    fn drop(&mut self) {
        CURRENT.set(self.outer);
        let _ = SLOT.try_with(|s| s.0.running.store(self.outer, Ordering::Release));
    }
}

/// The task or actor call this thread runs (0: none); tasks it submits
/// are its children, for a recursive cancel.
pub(crate) fn current() -> u64 {
    CURRENT.get()
}

/// Marks a running task as cancelled; false if it does not run here.
pub(crate) fn mark(id: u64) -> bool {
    if id == 0 {
        return false;
    }
    for s in SLOTS.lock().iter() {
        if s.running.load(Ordering::Acquire) == id {
            s.cancelled.store(id, Ordering::Release);
            return true;
        }
    }
    false
}

/// Whether the task (or actor call) running on this thread was cancelled
/// with [`crate::cancel`]. A long task checks it now and then and returns
/// early; whatever it returns, its result is `Error::Cancelled`. False
/// outside a task.
pub fn is_cancelled() -> bool {
    let id = CURRENT.get();
    id != 0
        && SLOT
            .try_with(|s| s.0.cancelled.load(Ordering::Acquire) == id)
            .unwrap_or(false)
}

/// Ends this process at once: a `force_cancel` of the task it runs. Its
/// node sees the worker die and the head starts another.
pub(crate) fn die_for(id: u64) -> ! {
    tracing::info!(task = id, "force-cancelled: the worker exits");
    // SAFETY: kill(2) of this very process; nothing to uphold.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}
