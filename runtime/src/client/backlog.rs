//! Backpressure for a driver whose head reads slower than it submits.
//!
//! A session's operations wait in an unbounded channel until the sending
//! task puts them into a frame, and that task waits for HTTP/2 flow
//! control, which waits for the head. A driver that submits a million tasks
//! in a loop outruns a busy head, and each operation waiting costs a few
//! hundred bytes (an operation the size of a task spec, its function name,
//! its arguments): hundreds of megabytes. Like Ray's limit on tasks in
//! flight, the thread that submits waits while more than [`LIMIT`]
//! operations are unsent, until half of them are sent. Only threads outside
//! the async runtime wait (never the one that sends), and only where they
//! hold no lock.

use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

/// Unsent operations above which a submitting thread waits.
pub(crate) const LIMIT: isize = 65_536;

/// Counts a session's unsent operations.
#[derive(Default)]
pub(crate) struct Backlog {
    /// Operations queued and not yet taken into a frame.
    queued: AtomicIsize,
    /// Whether a thread waits for room.
    waiting: AtomicBool,
    lock: Mutex<()>,
    room: Condvar,
}

impl Backlog {
    /// `n` operations were queued.
    pub(crate) fn added(&self, n: usize) {
        self.queued.fetch_add(n as isize, Ordering::SeqCst);
    }

    /// `n` operations were taken into a frame.
    pub(crate) fn taken(&self, n: usize) {
        let left = self.queued.fetch_sub(n as isize, Ordering::SeqCst) - n as isize;
        if left <= LIMIT / 2 && self.waiting.load(Ordering::SeqCst) {
            let _held = self.lock.lock();
            self.room.notify_all();
        }
    }

    /// Operations queued and not yet sent.
    pub(crate) fn queued(&self) -> isize {
        self.queued.load(Ordering::SeqCst)
    }

    /// Blocks while more than [`LIMIT`] operations are unsent, until half
    /// of them are, or until `ended()` (the session is gone). Returns at
    /// once on a thread of an async runtime, which may be the one that
    /// sends.
    pub(crate) fn wait_for_room(&self, ended: impl Fn() -> bool) {
        if self.queued() <= LIMIT || tokio::runtime::Handle::try_current().is_ok() {
            return;
        }
        let mut held = self.lock.lock();
        self.waiting.store(true, Ordering::SeqCst);
        while self.queued() > LIMIT / 2 && !ended() {
            // The timeout only bounds how late a closed session is seen.
            self.room.wait_for(&mut held, Duration::from_millis(50));
        }
        self.waiting.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[test]
    fn a_submitter_waits_until_half_is_sent() {
        let b = Arc::new(Backlog::default());
        b.added(LIMIT as usize);
        // At the limit: no wait.
        b.wait_for_room(|| false);
        b.added(1);
        let passed = Arc::new(AtomicUsize::new(0));
        let t = {
            let (b, passed) = (b.clone(), passed.clone());
            std::thread::spawn(move || {
                b.wait_for_room(|| false);
                passed.store(1, Ordering::SeqCst);
            })
        };
        // Wait until the thread is waiting, then send a quarter: it stays.
        while !b.waiting.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        b.taken(LIMIT as usize / 4);
        assert_eq!(passed.load(Ordering::SeqCst), 0);
        b.taken(LIMIT as usize / 4 + 1);
        t.join().unwrap();
        assert_eq!(passed.load(Ordering::SeqCst), 1);
        assert_eq!(b.queued(), LIMIT / 2);
    }

    #[test]
    fn a_closed_session_releases_the_submitter() {
        let b = Backlog::default();
        b.added(LIMIT as usize * 2);
        let ended = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| b.wait_for_room(|| ended.load(Ordering::SeqCst)));
            while !b.waiting.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            ended.store(true, Ordering::SeqCst);
        });
        assert_eq!(b.queued(), LIMIT * 2);
    }

    #[test]
    fn runtime_threads_never_wait() {
        let b = Backlog::default();
        b.added(LIMIT as usize * 2);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async { b.wait_for_room(|| false) });
    }
}
