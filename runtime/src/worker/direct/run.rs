//! The executor's side of direct tasks: they wait in the same queue as the
//! head's, in arrival order, and run the same way; their results go back
//! on their driver's stream, and a summary goes to the head.

use std::sync::Arc;
use std::time::Instant;

use super::route::Route;
use crate::proto::{self, direct_op::Op, object_value::Payload, ErrorKind};
use crate::worker::executor::{result_of, set_current, task_error, Executor, Queued};
use crate::worker::hold::{self, Finished};

/// Why `spec` cannot run as a direct task, if it cannot: only plain
/// functions with inline arguments come this way (the driver decides, but
/// a bad or old driver must not get anything else run half-right).
fn not_direct(spec: &proto::TaskSpec) -> Option<&'static str> {
    if spec.actor_id != 0 || spec.create.is_some() {
        Some("an actor's task")
    } else if spec.generator {
        Some("a generator")
    } else if spec.num_returns > 1 {
        Some("a task with several returns")
    } else if spec
        .args
        .iter()
        .any(|a| !matches!(a.kind, Some(proto::arg::Kind::Value(_))))
    {
        Some("a task with ref or stored arguments")
    } else {
        None
    }
}

fn result_op(result: proto::TaskResult) -> proto::DirectOp {
    proto::DirectOp {
        op: Some(Op::Result(result)),
    }
}

/// What the head records of a finished direct task.
fn summary(function: String, result: &proto::TaskResult) -> proto::DirectTask {
    let (error_kind, error) = match result.value.as_ref().and_then(|v| v.payload.as_ref()) {
        Some(Payload::Error(e)) => (e.kind, e.message.clone()),
        _ => (0, String::new()),
    };
    proto::DirectTask {
        task_id: result.value.as_ref().map_or(0, |v| v.object_id),
        function,
        start_micros: result.start_micros,
        exec_micros: result.exec_micros,
        error_kind,
        error,
        running: false,
    }
}

fn cancelled(exec: &Executor, spec: &proto::TaskSpec, force: bool) -> proto::TaskError {
    let how = if force {
        "fleet::force_cancel"
    } else {
        "fleet::cancel"
    };
    task_error(
        &exec.client,
        spec,
        ErrorKind::Cancelled,
        format!("task {:016x} was cancelled ({how})", spec.task_id),
    )
}

/// Sends tasks back to their drivers unrun, one frame per stream.
pub(crate) fn give_back(tasks: Vec<(Arc<Route>, u64)>) {
    let mut at = 0;
    while at < tasks.len() {
        let route = &tasks[at].0;
        let run = tasks[at..]
            .iter()
            .take_while(|(r, _)| Arc::ptr_eq(r, route))
            .count();
        let ids: Vec<u64> = tasks[at..at + run].iter().map(|(_, id)| *id).collect();
        route.give_back(&ids);
        at += run;
    }
}

impl Executor {
    /// A driver sent `spec` on `route`: queued behind what is there, or
    /// given back at once while the running task has lent its CPU.
    pub(crate) fn push_direct(&self, spec: proto::TaskSpec, route: &Arc<Route>) {
        if let Some(what) = not_direct(&spec) {
            let e = task_error(
                &self.client,
                &spec,
                ErrorKind::Task,
                format!(
                    "{what} cannot run on a Worker.Direct stream, which takes plain functions \
                     with inline arguments only: submit it through the head"
                ),
            );
            let result = result_of(&self.client, &spec, Err(e), Instant::now());
            route.send(vec![result_op(result)]);
            return;
        }
        let mut q = self.queue.lock();
        if q.lent_by.is_some() {
            drop(q);
            route.give_back(&[spec.task_id]);
            return;
        }
        q.tasks.push_back(Queued {
            spec,
            route: Some(route.clone()),
        });
        self.cv.notify_one();
    }

    /// A driver cancels a task it sent on `route`: answered at once if it
    /// waits in the queue; if it runs, `fleet::is_cancelled()` turns true
    /// in it and its result is `Cancelled` whatever it returns; `force`
    /// answers, then ends this process.
    pub(crate) fn cancel_direct(&self, c: &proto::Cancel, route: &Arc<Route>) {
        let queued = {
            let mut q = self.queue.lock();
            let at = q.tasks.iter().position(|t| {
                t.spec.task_id == c.task_id && t.route.as_ref().is_some_and(|r| r.id == route.id)
            });
            at.and_then(|i| q.tasks.remove(i))
        };
        if let Some(Queued { spec, .. }) = queued {
            let e = cancelled(self, &spec, false);
            let result = result_of(&self.client, &spec, Err(e), Instant::now());
            self.direct.summary(summary(spec.function, &result));
            // Behind the results held, as they ran first.
            self.direct.flush();
            route.send(vec![result_op(result)]);
            return;
        }
        let Some(function) = self.direct.runs(c.task_id, route.id) else {
            return; // finished already (or never sent here)
        };
        if !crate::worker::cancel::mark(c.task_id) {
            return;
        }
        if c.force {
            let spec = proto::TaskSpec {
                task_id: c.task_id,
                function,
                ..Default::default()
            };
            let e = cancelled(self, &spec, true);
            let result = result_of(&self.client, &spec, Err(e), Instant::now());
            self.direct.summary(summary(spec.function, &result));
            self.direct.flush();
            self.direct.flush_done();
            self.client.flush_held();
            tracing::info!(task = c.task_id, "force-cancelled: the worker exits");
            if route.is_closed() {
                crate::worker::cancel::die_for(c.task_id);
            }
            route.send_then_exit(vec![result_op(result)], c.task_id);
            super::exit_at_the_latest(c.task_id);
        }
    }

    /// `route`'s stream ended: its queued tasks are dropped unrun, and
    /// the handles kept for its results released.
    pub(crate) fn drop_route(&self, route: &Arc<Route>) {
        self.queue
            .lock()
            .tasks
            .retain(|t| t.route.as_ref().is_none_or(|r| r.id != route.id));
        route.close(&self.client);
    }

    /// Runs a direct task; its result is held for its stream.
    pub(in crate::worker) fn execute_direct(&self, spec: proto::TaskSpec, route: Arc<Route>) {
        let id = spec.task_id;
        let running = crate::worker::cancel::running(id);
        self.direct
            .set_running(Some((id, route.id, spec.function.clone())));
        set_current(Some(id));
        crate::worker::executor::announce(&spec.function, false);
        let started = Instant::now();
        let (outcome, dropped) = self.client.deferring_releases_kept(|| self.invoke(&spec));
        let was_cancelled = crate::worker::cancel::is_cancelled();
        drop(running);
        set_current(None);
        self.direct.set_running(None);
        let ran = started.elapsed().as_micros() as u64;
        let outcome = match was_cancelled {
            true => Err(cancelled(self, &spec, false)),
            false => outcome,
        };
        let result = result_of(&self.client, &spec, outcome, started);
        self.direct.summary(summary(spec.function, &result));
        // Refs inside the result stay held here until the driver has told
        // the head about the result (`adopted`); the rest go now.
        let (keep, release): (Vec<u64>, Vec<u64>) = dropped
            .into_iter()
            .partition(|r| result.nested_refs.contains(r));
        route.keep(&self.client, id, keep);
        for r in release {
            self.client.release_handle(r);
        }
        if route.is_closed() {
            // Nobody will take it: a file written for it goes now.
            if let Some(Payload::Stored(loc)) = result.value.and_then(|v| v.payload) {
                self.client.store().discard(&loc.path);
            }
            return;
        }
        if !result.nested_refs.is_empty() {
            // The refs inside were made through this worker's session (a
            // put, a submit): the head must have them before the driver's
            // `Put` of this result names them, or it pins nothing and they
            // are freed once this worker lets go. That `Put` comes by
            // another session: the result waits for a round trip on ours.
            let client = self.client.clone();
            let direct = self.direct.clone();
            let send = move || {
                client.round_trip(super::ORDER_LIMIT);
                // Behind the results held, as they ran first.
                direct.flush();
                route.send(vec![result_op(result)]);
            };
            match crate::worker::RUNTIME.get() {
                Some(rt) => drop(rt.spawn_blocking(send)),
                None => send(),
            }
            return;
        }
        let (held, since) = self.direct.hold(&route, result_op(result), started);
        let queued = {
            let q = self.queue.lock();
            match q.lent_by {
                None => q.tasks.len(),
                Some(_) => 0,
            }
        };
        let now = hold::send_now(Finished {
            ran_micros: ran,
            queued,
            held,
            since: since.elapsed(),
        });
        if now {
            self.direct.flush();
        } else if held == 1 {
            self.direct.flush_later(since);
        }
    }
}
