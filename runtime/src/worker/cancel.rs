//! The worker's side of cancelling: which task each thread runs, which
//! running tasks were cancelled, and `fleet::is_cancelled()`.

use std::cell::Cell;
use std::collections::HashMap;

use parking_lot::Mutex;

thread_local! {
    /// The task (or actor call) this thread runs; 0 outside one.
    static CURRENT: Cell<u64> = const { Cell::new(0) };
}

/// Tasks and actor calls running in this process: id to "cancelled".
static RUNNING: Mutex<Option<HashMap<u64, bool>>> = Mutex::new(None);

/// Marks `id` as running on this thread until the guard drops.
pub(crate) fn running(id: u64) -> Running {
    RUNNING
        .lock()
        .get_or_insert_with(HashMap::new)
        .insert(id, false);
    let outer = CURRENT.replace(id);
    Running { id, outer }
}

/// While alive, its task counts as running on this thread.
pub(crate) struct Running {
    id: u64,
    outer: u64,
}

impl Drop for Running {
    fn drop(&mut self) {
        CURRENT.set(self.outer);
        if let Some(m) = RUNNING.lock().as_mut() {
            m.remove(&self.id);
        }
    }
}

/// The task or actor call this thread runs (0: none); tasks it submits
/// are its children, for a recursive cancel.
pub(crate) fn current() -> u64 {
    CURRENT.get()
}

/// Marks a running task as cancelled; false if it does not run here.
pub(crate) fn mark(id: u64) -> bool {
    match RUNNING.lock().as_mut().and_then(|m| m.get_mut(&id)) {
        Some(c) => {
            *c = true;
            true
        }
        None => false,
    }
}

/// Whether the task (or actor call) running on this thread was cancelled
/// with [`crate::cancel`]. A long task checks it now and then and returns
/// early; whatever it returns, its result is `Error::Cancelled`. False
/// outside a task.
pub fn is_cancelled() -> bool {
    let id = CURRENT.get();
    id != 0
        && RUNNING
            .lock()
            .as_ref()
            .and_then(|m| m.get(&id))
            .copied()
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
