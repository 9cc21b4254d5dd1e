//! Runs tasks one at a time on the worker's main thread, in the order the
//! head sent them; and the parts of running a call that actors share.

use std::cell::Cell;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use crate::client::Client;
use crate::codec::INLINE_MAX;
use crate::node::object_store::Bytes;
use crate::proto::{self, client_op::Op, object_value::Payload, ErrorKind};
use crate::registry::{self, Args, Failure, Output};

static EXECUTOR: OnceLock<Arc<Executor>> = OnceLock::new();

thread_local! {
    static CURRENT: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Names the task the executor runs now (for [`lend_cpu`]).
pub(super) fn set_current(task: Option<u64>) {
    CURRENT.set(task);
}

use super::direct::{Held, Route};
use super::hold::{self, Finished};

pub(super) struct Queue {
    pub(super) tasks: VecDeque<Queued>,
    /// The running task waits in `get` and has lent its CPU: tasks that
    /// arrive meanwhile go straight back to where they came from.
    pub(super) lent_by: Option<u64>,
}

/// A task waiting in the queue, and where it came from.
pub(super) struct Queued {
    pub(super) spec: proto::TaskSpec,
    /// `None`: from the head; else the driver's `Worker.Direct` stream
    /// its result goes back on.
    pub(super) route: Option<Arc<Route>>,
}

pub(crate) struct Executor {
    pub(super) queue: Mutex<Queue>,
    pub(super) cv: Condvar,
    pub(super) client: Arc<Client>,
    /// Results and summaries of direct tasks held back (`worker/direct`).
    pub(super) direct: Arc<Held>,
    /// Sends head-path results held too long (started with the first).
    /// `None` inside: no timer could be made, results go at once.
    watchdog: std::sync::OnceLock<Option<hold::Watchdog>>,
}

/// Tells the node agent reading this worker's output which function runs
/// now, when that changes (so a stream of calls to one function costs
/// nothing). `actor` names the type instead of the method, as Ray does.
pub(crate) fn announce(function: &str, actor: bool) {
    use std::io::Write;
    static LAST: Mutex<String> = Mutex::new(String::new());
    let mut parts = function.rsplit("::");
    let name = match (parts.next(), parts.next()) {
        (Some(_), Some(class)) if actor => class,
        (Some(f), _) => f,
        _ => function,
    };
    let mut last = LAST.lock();
    if *last != name {
        name.clone_into(&mut last);
        let marker = crate::node::supervisor::TASK_MARKER;
        let _ = writeln!(std::io::stdout().lock(), "{marker}{name}");
        let _ = writeln!(std::io::stderr().lock(), "{marker}{name}");
    }
}

/// A task's error, attributed to this worker.
pub(crate) fn task_error(
    client: &Client,
    spec: &proto::TaskSpec,
    kind: ErrorKind,
    message: String,
) -> proto::TaskError {
    let mut e = proto::TaskError {
        message,
        function: spec.function.clone(),
        pid: std::process::id(),
        node: client.node().to_string(),
        ..Default::default()
    };
    e.set_kind(kind);
    e
}

/// The arguments of `spec`, mapped from the store where they are large.
pub(crate) fn resolve_args(
    client: &Client,
    spec: &proto::TaskSpec,
) -> Result<Args, proto::TaskError> {
    let mut values = Vec::with_capacity(spec.args.len());
    for a in &spec.args {
        let v = match &a.kind {
            Some(proto::arg::Kind::Value(b)) => Ok(Bytes::Inline(b.clone())),
            Some(proto::arg::Kind::Stored(loc)) => client.read_stored(loc),
            _ => Err(crate::Error::Codec("an argument was not resolved".into())),
        };
        values.push(v.map_err(|e| task_error(client, spec, ErrorKind::Codec, e.to_string()))?);
    }
    Ok(Args::new(values))
}

/// Runs user code, turning a panic or an `Err` into the task's error.
pub(crate) fn guarded<T>(
    client: &Client,
    spec: &proto::TaskSpec,
    f: impl FnOnce() -> Result<T, Failure>,
) -> Result<T, proto::TaskError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(Failure::User(m))) => Err(task_error(client, spec, ErrorKind::Task, m)),
        Ok(Err(Failure::Codec(m))) => Err(task_error(client, spec, ErrorKind::Codec, m)),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string panic payload".into());
            Err(task_error(
                client,
                spec,
                ErrorKind::Task,
                format!("panicked: {msg}"),
            ))
        }
    }
}

/// Sends a finished call's outcome: inline if small, else via the store.
pub(crate) fn send_result(
    client: &Client,
    spec: &proto::TaskSpec,
    outcome: Result<Output, proto::TaskError>,
    started: Instant,
) {
    client.send(Op::Result(result_of(client, spec, outcome, started)));
}

/// A finished call's outcome as sent: inline if small, else written to
/// the store.
pub(crate) fn result_of(
    client: &Client,
    spec: &proto::TaskSpec,
    outcome: Result<Output, proto::TaskError>,
    started: Instant,
) -> proto::TaskResult {
    let id = spec.task_id;
    let exec_micros = started.elapsed().as_micros() as u64;
    let start_micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
        .saturating_sub(exec_micros);
    let store = |id: u64, enc: crate::codec::Encoded| {
        let payload = if enc.bytes.len() > INLINE_MAX {
            match client.store().write(id, &enc.bytes) {
                Ok(loc) => Payload::Stored(Box::new(loc)),
                Err(e) => Payload::Error(Box::new(task_error(
                    client,
                    spec,
                    ErrorKind::Task,
                    format!("storing the result: {e}"),
                ))),
            }
        } else {
            Payload::Inline(enc.bytes.into())
        };
        (payload, enc.nested)
    };
    let mut more_returns = Vec::new();
    let (payload, nested_refs) = match outcome {
        Ok(Output(enc, more)) => {
            for (k, enc) in more.into_iter().enumerate() {
                let rid = id + 1 + k as u64;
                let (payload, nested_refs) = store(rid, enc);
                more_returns.push(proto::Return {
                    value: Some(proto::ObjectValue {
                        object_id: rid,
                        payload: Some(payload),
                    }),
                    nested_refs,
                });
            }
            store(id, enc)
        }
        Err(e) => (Payload::Error(Box::new(e)), Vec::new()),
    };
    proto::TaskResult {
        value: Some(proto::ObjectValue {
            object_id: id,
            payload: Some(payload),
        }),
        nested_refs,
        exec_micros,
        start_micros,
        more_returns,
    }
}

impl Executor {
    pub(crate) fn install(client: Arc<Client>) -> Arc<Self> {
        EXECUTOR
            .get_or_init(|| {
                Arc::new(Executor {
                    queue: Mutex::new(Queue {
                        tasks: VecDeque::new(),
                        lent_by: None,
                    }),
                    cv: Condvar::new(),
                    direct: Held::new(client.clone()),
                    client,
                    watchdog: std::sync::OnceLock::new(),
                })
            })
            .clone()
    }

    pub(crate) fn push(&self, task: proto::TaskSpec) {
        let mut q = self.queue.lock();
        if let Some(running) = q.lent_by {
            // Sent under the lock, so it cannot overtake the `Unblocked`.
            self.client.send(Op::Blocked(proto::Blocked {
                task_id: running,
                returned: vec![task.task_id],
            }));
            return;
        }
        if task.generator {
            super::generator::expect(task.task_id);
        }
        q.tasks.push_back(Queued {
            spec: task,
            route: None,
        });
        self.cv.notify_one();
    }

    pub(crate) fn run(&self) -> ! {
        loop {
            let task = {
                let mut q = self.queue.lock();
                loop {
                    if let Some(t) = q.tasks.pop_front() {
                        break t;
                    }
                    // Nothing more to run: held results go now.
                    self.client.flush_held();
                    self.direct.flush();
                    self.cv.wait(&mut q);
                }
            };
            match task.route {
                None => self.execute(task.spec),
                Some(route) => self.execute_direct(task.spec, route),
            }
        }
    }

    /// A task sent here was cancelled: dropped unrun if it waits in the
    /// queue; if it runs, `fleet::is_cancelled()` turns true inside it, or
    /// (force) the process exits.
    pub(crate) fn cancel(&self, c: &proto::Cancel) {
        let queued = {
            let mut q = self.queue.lock();
            let at = q
                .tasks
                .iter()
                .position(|t| t.spec.task_id == c.task_id && t.route.is_none());
            at.and_then(|i| q.tasks.remove(i))
        };
        if let Some(Queued { spec, .. }) = queued {
            if spec.generator {
                super::generator::forget(spec.task_id);
            }
            let e = task_error(
                &self.client,
                &spec,
                ErrorKind::Cancelled,
                "cancelled".into(),
            );
            send_result(&self.client, &spec, Err(e), Instant::now());
            return;
        }
        if super::cancel::mark(c.task_id) {
            if c.force {
                super::cancel::die_for(c.task_id);
            }
            super::generator::wake();
        }
    }

    fn execute(&self, spec: proto::TaskSpec) {
        let _running = super::cancel::running(spec.task_id);
        let _generator = spec.generator.then(|| super::generator::active(&spec));
        CURRENT.set(Some(spec.task_id));
        announce(&spec.function, false);
        let started = Instant::now();
        let mut ran = 0;
        self.client.deferring_releases(|| {
            let outcome = self.invoke(&spec);
            CURRENT.set(None);
            ran = started.elapsed().as_micros() as u64;
            // The result and the releases deferred behind it are kept.
            self.client.begin_capture();
            send_result(&self.client, &spec, outcome, started);
        });
        let ops = self.client.end_capture();
        let queued = {
            let q = self.queue.lock();
            match q.lent_by {
                None => q.tasks.len(),
                Some(_) => 0,
            }
        };
        let (results, since) = self.client.hold(ops, started);
        let now = hold::send_now(Finished {
            ran_micros: ran,
            queued,
            held: results,
            since: since.elapsed(),
        });
        if now {
            self.client.flush_held();
        } else if results == 1 {
            // The next task may run long: the result goes out by `LATEST`.
            let dog = super::RUNTIME.get().and_then(|rt| {
                self.watchdog
                    .get_or_init(|| {
                        let (a, b) = (Arc::downgrade(&self.client), Arc::downgrade(&self.client));
                        hold::Watchdog::start(
                            rt,
                            move || a.upgrade().and_then(|c| c.held_since()),
                            move || b.upgrade().map(|c| c.flush_held()).is_some(),
                        )
                    })
                    .as_ref()
            });
            match dog {
                Some(dog) => dog.arm(since),
                None => self.client.flush_held(),
            }
        }
    }

    pub(super) fn invoke(&self, spec: &proto::TaskSpec) -> Result<Output, proto::TaskError> {
        let client = &self.client;
        let Some(f) = registry::lookup(&spec.function) else {
            return Err(task_error(
                client,
                spec,
                ErrorKind::UnknownFunction,
                "not registered".into(),
            ));
        };
        let mut args = resolve_args(client, spec)?;
        guarded(client, spec, || (f.invoke)(&mut args))
    }
}

/// While alive, the running task's CPU is lent to the cluster.
pub(crate) struct Lent {
    task: u64,
    executor: &'static Executor,
}

/// Called when a task is about to wait in `get`: hands the tasks queued
/// behind it back to the head and lends its CPU, so work it waits for can
/// run (a task waiting on its own children must not deadlock the pool).
pub(crate) fn lend_cpu() -> Option<Lent> {
    let task = CURRENT.get()?;
    let executor: &'static Executor = EXECUTOR.get()?;
    // What this task waits for may be a result held here.
    executor.client.flush_held();
    executor.direct.flush();
    let mut q = executor.queue.lock();
    q.lent_by = Some(task);
    let mut returned = Vec::new();
    let mut direct = Vec::new();
    for t in q.tasks.drain(..) {
        match t.route {
            Some(route) => direct.push((route, t.spec.task_id)),
            None => {
                if t.spec.generator {
                    super::generator::forget(t.spec.task_id);
                }
                returned.push(t.spec.task_id);
            }
        }
    }
    // Direct tasks go back to their drivers, which place them elsewhere.
    super::direct::give_back(direct);
    executor.client.send(Op::Blocked(proto::Blocked {
        task_id: task,
        returned,
    }));
    Some(Lent { task, executor })
}

impl Drop for Lent {
    fn drop(&mut self) {
        let mut q = self.executor.queue.lock();
        q.lent_by = None;
        self.executor.client.send(Op::Unblocked(self.task));
    }
}
