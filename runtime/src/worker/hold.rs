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
//! - and before the next task would take them past [`HOLD`] after the
//!   first held result (a kernel timer sends them by [`LATEST`] if that
//!   task runs longer than the one before), and never more than
//!   [`HOLD_MAX`].

use std::time::{Duration, Instant};

mod timer;

pub(crate) use timer::Alarm;

/// What a worker says when it cannot make a kernel timer: what it does
/// instead (`fallback`), why, and the fix for the usual cause.
pub(crate) fn no_timer(fallback: &str, e: &std::io::Error) -> String {
    format!(
        "{fallback}: no kernel timer could be made ({e}); the worker runs on, with more \
         wake-ups. If the cause is too many open files, raise the limit (ulimit -n)"
    )
}

/// The longest a result is held back. Long enough that a worker with a
/// deep queue (`pipelining::deep_depth`, some 24 ms of work) sends its
/// results in a few frames rather than one per task: each frame wakes a
/// thread on both sides, which cost 30–60 µs of CPU per task of 1 ms on
/// this project's 2-core VM when every result went alone.
pub(crate) const HOLD: Duration = Duration::from_micros(10_000);
/// The longest a result can wait in fact: a task that runs longer than
/// the one before it may take its batch past [`HOLD`], and the watchdog
/// sends the batch then. The margin keeps a few microseconds of jitter in
/// task times from waking the watchdog for a batch about to go anyway.
pub(crate) const LATEST: Duration = Duration::from_micros(HOLD.as_micros() as u64 * 5 / 4);
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

/// Whether the held results go out now. They also go when the next task,
/// if it runs as long as this one did, would take them past [`HOLD`]: so
/// the thread that runs the tasks sends every batch itself, and the
/// watchdog's timer, set for [`LATEST`], does not fire.
pub(crate) fn send_now(f: Finished) -> bool {
    f.queued == 0
        || f.ran_micros >= HOLD_TASK_MICROS
        || f.held >= HOLD_MAX
        || f.held >= f.queued
        || f.since + Duration::from_micros(f.ran_micros) >= HOLD
}

/// Sends held results that waited [`LATEST`] (the task after them runs
/// longer than the ones before), with one long-lived task per worker
/// waiting on a kernel timer (`hold/timer.rs`). The thread that holds the
/// first result of a batch sets the timer, with one system call and no
/// wake-up; the next batch's first result sets it again. So while results
/// keep going out in time (the usual case: [`send_now`] sends them before
/// a task would take them past [`HOLD`]), the watchdog never wakes.
pub(crate) struct Watchdog {
    alarm: Alarm,
}

impl Watchdog {
    /// Starts the watchdog on `rt`. `oldest` says since when the oldest
    /// held result waits (`None`: nothing is held, or its owner is gone),
    /// `flush` sends what is held; `flush` returning false means the
    /// owner is gone and the watchdog ends. `None`: no timer could be made
    /// (out of file descriptors; a warning says so), and the caller then
    /// sends results at once.
    pub(crate) fn start(
        rt: &tokio::runtime::Handle,
        oldest: impl Fn() -> Option<Instant> + Send + 'static,
        flush: impl Fn() -> bool + Send + 'static,
    ) -> Option<Watchdog> {
        let alarm = Alarm::start(rt, move |alarm| {
            let Some(first) = oldest() else {
                return true;
            };
            let due = first + LATEST;
            let now = Instant::now();
            if now < due {
                alarm.set(due - now);
                return true;
            }
            flush()
        })
        .inspect_err(|e| tracing::warn!("{}", no_timer("results go out one by one", e)))
        .ok()?;
        Some(Watchdog { alarm })
    }

    /// A batch of held results started at `first`: its results go out
    /// by `first + LATEST` whatever the tasks after them do.
    pub(crate) fn arm(&self, first: Instant) {
        self.alarm
            .set((first + LATEST).saturating_duration_since(Instant::now()));
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

    /// The watchdog flushes a batch that waited `LATEST`, and the next
    /// batch armed after that too; a deadline set again replaces the old
    /// one, which never fires.
    #[test]
    fn the_watchdog_flushes_each_batch_once_it_waited_latest() {
        use parking_lot::Mutex;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let held: Arc<Mutex<Option<Instant>>> = Arc::default();
        let looked = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = std::sync::mpsc::channel::<Duration>();
        let (a, b, n) = (held.clone(), held.clone(), looked.clone());
        let dog = Watchdog::start(
            rt.handle(),
            move || {
                n.fetch_add(1, Ordering::SeqCst);
                *a.lock()
            },
            move || {
                if let Some(first) = b.lock().take() {
                    let _ = tx.send(first.elapsed());
                }
                true
            },
        )
        .expect("a timerfd");
        // Replaced at once by a deadline an hour away: nothing fires.
        dog.arm(Instant::now());
        dog.arm(Instant::now() + Duration::from_secs(3600));
        std::thread::sleep(LATEST * 4);
        assert_eq!(
            looked.load(Ordering::SeqCst),
            0,
            "a replaced deadline fired"
        );
        for _ in 0..2 {
            let first = Instant::now();
            *held.lock() = Some(first);
            dog.arm(first);
            let waited = rx.recv_timeout(Duration::from_secs(30)).expect("a flush");
            assert!(waited >= LATEST, "flushed after {waited:?}, before LATEST");
            assert!(held.lock().is_none());
        }
    }

    #[test]
    fn held_results_go_before_the_next_task_would_pass_hold() {
        let hold = HOLD.as_micros() as u64;
        assert!(!send_now(finished(100, 500, 3, hold - 200)));
        assert!(send_now(finished(100, 500, 3, hold - 100)));
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
