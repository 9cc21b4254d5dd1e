//! Which results a worker holds back, and for how long.
//!
//! Each frame a worker sends costs a wake-up of its I/O thread, a write,
//! a wake-up of the head and a dispatch pass there; the head answers with a
//! frame of new tasks, and forwards the results to their driver in another.
//! Sending the results of short tasks together divides all of that by the
//! number of results in the frame. Holding them must never leave the
//! worker without work, nor delay a result anyone could be waiting for:
//!
//! - a lone task (nothing queued behind it) sends its result at once, so
//!   a synchronous call sees no delay;
//! - results go out once they are as many as the tasks still queued: the
//!   head then refills the queue while the other half runs, which is what
//!   keeps a worker busy across the round trip;
//! - and at most [`HOLD`] after the first held result (a timer sends them
//!   if the next task runs long), and never more than [`HOLD_MAX`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest a result is held back. Long enough that a worker with a
/// deep queue (`pipelining::deep_depth`, some 12 ms of work) sends its
/// results in a few frames rather than one per task: each frame wakes a
/// thread on both sides, which cost 30–60 µs of CPU per task of 1 ms on
/// this project's 2-core VM when every result went alone.
pub(crate) const HOLD: Duration = Duration::from_micros(5_000);
/// Only results of tasks shorter than this are held.
pub(crate) const HOLD_TASK_MICROS: u64 = 5_000;
/// At most this many results go in one frame.
pub(crate) const HOLD_MAX: usize = 512;

/// What the worker knows when a task has finished.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Finished {
    /// Microseconds the task ran.
    pub(crate) ran_micros: u64,
    /// Tasks queued behind it (0 if they were lent back to the head).
    pub(crate) queued: usize,
    /// Results held, this one included.
    pub(crate) held: usize,
    /// Time since the first of them was held.
    pub(crate) since: Duration,
}

/// Whether the held results go out now.
pub(crate) fn send_now(f: Finished) -> bool {
    f.queued == 0
        || f.ran_micros >= HOLD_TASK_MICROS
        || f.held >= HOLD_MAX
        || f.held >= f.queued
        || f.since >= HOLD
}

/// Sends held results once they have waited [`HOLD`] (the task after
/// them runs long), with one long-lived task per worker. A timer spawned
/// per batch woke the I/O thread twice per batch, the spawn and then the
/// timer; this one sleeps while results keep going out in time and is
/// woken only when a batch starts after it went idle.
pub(crate) struct Watchdog {
    /// Its task is looking at held results (not parked on `wake`).
    awake: AtomicBool,
    wake: tokio::sync::Notify,
}

impl Watchdog {
    /// Starts the watchdog on `rt`. `oldest` says since when the oldest
    /// held result waits (`None`: nothing is held, or its owner is gone),
    /// `flush` sends what is held; `flush` returning false means the
    /// owner is gone and the watchdog ends.
    pub(crate) fn start(
        rt: &tokio::runtime::Handle,
        oldest: impl Fn() -> Option<Instant> + Send + 'static,
        flush: impl Fn() -> bool + Send + 'static,
    ) -> Arc<Watchdog> {
        let me = Arc::new(Watchdog {
            awake: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
        });
        let dog = me.clone();
        rt.spawn(async move {
            loop {
                dog.wake.notified().await;
                loop {
                    if let Some(first) = oldest() {
                        let due = first + HOLD;
                        if Instant::now() < due {
                            tokio::time::sleep_until(due.into()).await;
                        } else if !flush() {
                            return;
                        }
                        continue;
                    }
                    // Idle: a batch started from now on wakes it (checked
                    // again after the flag, against a batch started just
                    // before it).
                    dog.awake.store(false, Ordering::SeqCst);
                    if oldest().is_none() || dog.awake.swap(true, Ordering::SeqCst) {
                        break;
                    }
                }
            }
        });
        me
    }

    /// A batch of held results started: the watchdog sees to it.
    pub(crate) fn arm(&self) {
        if !self.awake.swap(true, Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(ran_micros: u64, queued: usize, held: usize, since_micros: u64) -> Finished {
        Finished {
            ran_micros,
            queued,
            held,
            since: Duration::from_micros(since_micros),
        }
    }

    /// The watchdog flushes a batch that waited `HOLD`, goes idle, and
    /// flushes the next batch armed after that too.
    #[test]
    fn the_watchdog_flushes_each_batch_once_it_waited_hold() {
        use parking_lot::Mutex;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .expect("a runtime");
        let held: Arc<Mutex<Option<Instant>>> = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel::<Duration>();
        let (a, b) = (held.clone(), held.clone());
        let dog = Watchdog::start(
            rt.handle(),
            move || *a.lock(),
            move || {
                if let Some(first) = b.lock().take() {
                    let _ = tx.send(first.elapsed());
                }
                true
            },
        );
        for _ in 0..2 {
            *held.lock() = Some(Instant::now());
            dog.arm();
            let waited = rx.recv_timeout(Duration::from_secs(30)).expect("a flush");
            assert!(waited >= HOLD, "flushed after {waited:?}, before HOLD");
            assert!(held.lock().is_none());
        }
    }

    #[test]
    fn a_lone_task_sends_its_result_at_once() {
        assert!(send_now(finished(5, 0, 1, 5)));
    }

    #[test]
    fn short_tasks_with_work_queued_are_held() {
        assert!(!send_now(finished(100, 20, 1, 100)));
        assert!(!send_now(finished(100, 12, 9, 900)));
    }

    #[test]
    fn held_results_go_once_they_match_the_queue() {
        // 10 held, 10 still queued: the head refills while those run.
        assert!(send_now(finished(100, 10, 10, 1_000 - 1)));
        assert!(send_now(finished(10, 30, 31, 300)));
    }

    #[test]
    fn long_tasks_and_old_or_many_results_are_not_held() {
        assert!(send_now(finished(HOLD_TASK_MICROS, 20, 1, 0)));
        assert!(send_now(finished(10, 500, HOLD_MAX, 640)));
        assert!(send_now(finished(10, 500, 3, HOLD.as_micros() as u64)));
    }
}
