//! What a worker holds back of its direct tasks: their results, batched
//! per stream by the same rule as results for the head (`worker/hold.rs`),
//! and their summaries for the head, batched much more.
//!
//! The summaries feed the head's task list, timeline and metrics. Nobody
//! waits for them, so they go at most every [`done_every`] (or once
//! [`DONE_MAX`] wait): a worker running a sync loop of 30 µs calls wakes
//! the head some 50 times a second instead of 30,000, and fewer in a large
//! cluster, where the head sets a longer period. A task still
//! running at a tick, [`done_every`] after it started, is reported once as
//! running (`DirectTask.running`), so that `fleet list tasks` shows it; a
//! task shorter than that costs the head nothing more.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::route::Route;
use crate::client::Client;
use crate::proto::{self, client_op::Op};
use crate::worker::hold::Alarm;

/// The longest a summary waits before it goes to the head, in
/// milliseconds: 20 until the head says otherwise (`HeadOp.summary_every_ms`,
/// longer in a larger cluster; see `head/direct_done.rs`).
static DONE_EVERY_MS: AtomicU64 = AtomicU64::new(20);

/// The period of summaries now.
fn done_every() -> Duration {
    Duration::from_millis(DONE_EVERY_MS.load(Ordering::Relaxed))
}

/// The head set the period of summaries (0 is ignored: not said).
pub(crate) fn set_done_every_ms(ms: u32) {
    if ms > 0 {
        DONE_EVERY_MS.store(ms.into(), Ordering::Relaxed);
    }
}
/// Summaries sent in one op at most; more go at once.
pub(crate) const DONE_MAX: usize = 1024;

/// Held results and summaries of direct tasks.
pub(crate) struct Held {
    client: Arc<Client>,
    results: Mutex<Results>,
    /// Whether `results` has anything (checked without the lock on every
    /// idle turn of the executor).
    holding: AtomicBool,
    done: Mutex<Done>,
    /// The direct task running now, so a driver's cancel reaches only its
    /// own task, and the head hears of it if it runs long.
    running: Mutex<Option<Running>>,
    /// Sends results held too long (started with the first batch).
    /// `None` inside: no timer could be made, results go at once.
    watchdog: std::sync::OnceLock<Option<crate::worker::hold::Watchdog>>,
    /// The summaries' tick ([`Held::tick`]), started with the first
    /// summary; `None` inside: no timer could be made, summaries go at
    /// once and no running task is reported.
    alarm: std::sync::OnceLock<Option<Alarm>>,
}

/// A direct task that runs now.
struct Running {
    task: u64,
    /// Its stream's id.
    route: u64,
    function: String,
    started: Instant,
    /// `started` as wall-clock microseconds, for the head's records.
    start_micros: u64,
    /// The head was told it runs.
    reported: bool,
}

#[derive(Default)]
struct Results {
    /// Results per stream, in the order they finished.
    by_route: Vec<(Arc<Route>, Vec<proto::DirectOp>)>,
    count: usize,
    /// When the task of the first held result started.
    since: Option<Instant>,
}

#[derive(Default)]
struct Done {
    tasks: Vec<proto::DirectTask>,
    /// When the first of `tasks` came.
    since: Option<Instant>,
    /// The tick's alarm is set.
    armed: bool,
}

/// Frees the store files of results that will never be delivered.
fn discard_stored(client: &Client, ops: Vec<proto::DirectOp>) {
    for op in ops {
        if let Some(proto::direct_op::Op::Result(r)) = op.op {
            if let Some(proto::object_value::Payload::Stored(loc)) = r.value.and_then(|v| v.payload)
            {
                client.store().discard(&loc.path);
            }
        }
    }
}

impl Held {
    pub(crate) fn new(client: Arc<Client>) -> Arc<Self> {
        Arc::new(Held {
            client,
            results: Mutex::default(),
            holding: AtomicBool::new(false),
            done: Mutex::default(),
            running: Mutex::new(None),
            watchdog: std::sync::OnceLock::new(),
            alarm: std::sync::OnceLock::new(),
        })
    }

    /// Holds `op` (a result) for `route`; returns how many results are held
    /// and since when.
    pub(crate) fn hold(
        &self,
        route: &Arc<Route>,
        op: proto::DirectOp,
        started: Instant,
    ) -> (usize, Instant) {
        let mut r = self.results.lock();
        match r
            .by_route
            .iter_mut()
            .rev()
            .find(|(k, _)| Arc::ptr_eq(k, route))
        {
            Some((_, ops)) => ops.push(op),
            None => r.by_route.push((route.clone(), vec![op])),
        }
        r.count += 1;
        let since = *r.since.get_or_insert(started);
        self.holding.store(true, Ordering::Release);
        (r.count, since)
    }

    /// Sends the held results, one frame per stream.
    pub(crate) fn flush(&self) {
        if !self.holding.load(Ordering::Acquire) {
            return;
        }
        // Sent under the lock, so two flushers cannot reorder them.
        let mut r = self.results.lock();
        self.holding.store(false, Ordering::Release);
        for (route, ops) in r.by_route.drain(..) {
            if route.is_closed() {
                // Its driver is gone: nobody will adopt what these results
                // wrote to the node's store, so the files go now.
                discard_stored(&self.client, ops);
            } else {
                route.send(ops);
            }
        }
        r.count = 0;
        r.since = None;
        drop(r);
        self.summaries_along();
    }

    /// Sends the waiting summaries if they are due, along with a frame of
    /// results: the I/O thread wakes for that frame anyway. The tick's
    /// alarm is set two periods later again, so it does not fire while
    /// frames of results keep taking the summaries (they go at least every
    /// [`crate::worker::hold::LATEST`], well within a period). A task
    /// running then is reported up to a period later than it would be,
    /// still once it has run a period.
    fn summaries_along(&self) {
        let tasks = {
            let mut d = self.done.lock();
            if d.since.is_none_or(|t| t.elapsed() < done_every()) {
                return;
            }
            if d.armed {
                if let Some(Some(alarm)) = self.alarm.get() {
                    alarm.set(2 * done_every());
                }
            }
            d.since = None;
            std::mem::take(&mut d.tasks)
        };
        self.send_done(tasks);
    }

    /// Makes sure the batch of held results that started at `first` goes
    /// out by [`crate::worker::hold::LATEST`] (the next task may run long),
    /// by the worker's watchdog.
    pub(crate) fn flush_later(self: &Arc<Self>, first: Instant) {
        let Some(rt) = crate::worker::RUNTIME.get() else {
            return self.flush();
        };
        let dog = self.watchdog.get_or_init(|| {
            let (a, b) = (Arc::downgrade(self), Arc::downgrade(self));
            crate::worker::hold::Watchdog::start(
                rt,
                move || a.upgrade().and_then(|h| h.results.lock().since),
                move || b.upgrade().map(|h| h.flush()).is_some(),
            )
        });
        match dog {
            Some(dog) => dog.arm(first),
            None => self.flush(),
        }
    }

    /// Adds a finished direct task's summary for the head.
    pub(crate) fn summary(self: &Arc<Self>, task: proto::DirectTask) {
        let mut d = self.done.lock();
        if d.tasks.is_empty() {
            d.since = Some(Instant::now());
        }
        d.tasks.push(task);
        if d.tasks.len() >= DONE_MAX {
            let tasks = std::mem::take(&mut d.tasks);
            d.since = None;
            drop(d);
            self.send_done(tasks);
            return;
        }
        drop(d);
        self.arm(done_every());
    }

    /// Makes sure a tick comes within `after`: sets the alarm unless it is
    /// set (a system call, no wake-up of the I/O thread).
    fn arm(self: &Arc<Self>, after: Duration) {
        {
            let mut d = self.done.lock();
            if d.armed {
                return;
            }
            d.armed = true;
        }
        match self.tick_alarm() {
            Some(alarm) => alarm.set(after),
            None => self.flush_done(),
        }
    }

    /// The summaries' alarm, started on first use.
    fn tick_alarm(self: &Arc<Self>) -> Option<&Alarm> {
        let rt = crate::worker::RUNTIME.get()?;
        self.alarm
            .get_or_init(|| {
                let me = Arc::downgrade(self);
                Alarm::start(rt, move |_| me.upgrade().map(|h| h.tick()).is_some())
                    .inspect_err(|e| {
                        tracing::warn!(
                            "{}",
                            crate::worker::hold::no_timer("summaries go to the head one by one", e)
                        )
                    })
                    .ok()
            })
            .as_ref()
    }

    /// The alarm: sends the waiting summaries, and reports the running
    /// task if it has run [`done_every`]; if it has not yet, looks again a
    /// period after it will have.
    fn tick(self: &Arc<Self>) {
        let (tasks, again) = {
            let mut d = self.done.lock();
            let mut tasks = std::mem::take(&mut d.tasks);
            d.since = None;
            let mut again = None;
            if let Some(r) = self.running.lock().as_mut().filter(|r| !r.reported) {
                let ran = r.started.elapsed();
                let every = done_every();
                if ran >= every {
                    r.reported = true;
                    tasks.push(proto::DirectTask {
                        task_id: r.task,
                        function: r.function.clone(),
                        start_micros: r.start_micros,
                        running: true,
                        ..Default::default()
                    });
                } else {
                    // Looked at again a period after it will have run one:
                    // by then frames of results have usually pushed the
                    // alarm further (`summaries_along`), as the task was
                    // short; one that is still running is reported then.
                    again = Some(2 * every - ran);
                }
            }
            d.armed = false;
            (tasks, again)
        };
        self.send_done(tasks);
        if let Some(after) = again {
            self.arm(after);
        }
    }

    /// Sends the waiting summaries now.
    pub(crate) fn flush_done(&self) {
        let tasks = {
            let mut d = self.done.lock();
            d.armed = false;
            d.since = None;
            std::mem::take(&mut d.tasks)
        };
        self.send_done(tasks);
    }

    fn send_done(&self, tasks: Vec<proto::DirectTask>) {
        if !tasks.is_empty() {
            self.client
                .send(Op::DirectDone(proto::DirectDone { tasks }));
        }
    }

    /// Marks a task (id, stream id, function) as running, or none. A tick
    /// is due by the time it has run [`done_every`].
    pub(crate) fn set_running(self: &Arc<Self>, running: Option<(u64, u64, String)>) {
        let starts = running.is_some();
        *self.running.lock() = running.map(|(task, route, function)| Running {
            task,
            route,
            function,
            started: Instant::now(),
            start_micros: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64),
            reported: false,
        });
        if starts {
            self.arm(done_every());
        }
    }

    /// The function of `task` if it runs now and came on stream `route`.
    pub(crate) fn runs(&self, task: u64, route: u64) -> Option<String> {
        match &*self.running.lock() {
            Some(r) if r.task == task && r.route == route => Some(r.function.clone()),
            _ => None,
        }
    }
}
