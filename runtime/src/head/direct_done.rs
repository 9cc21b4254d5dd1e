//! What the head keeps of direct tasks (run by a leased worker for its
//! driver, never seen by the head): the worker's batched summaries, applied
//! as cheaply as a finished task's bookkeeping and nothing more. No task
//! or object record is made; each summary becomes a task event (`fleet
//! list tasks`, the timeline, `fleet logs --task`, the dashboard), counts
//! and a run time per function (`/metrics`), the cancelled count, the
//! function's mean run time, and the job's count of direct tasks (`fleet
//! list jobs`).

use std::sync::Arc;

use super::state::State;
use crate::proto::{self, ErrorKind};

impl State {
    /// Applies a worker's `DirectDone`. Only a worker's session may send
    /// one (the node and pid of the events are its own); others are
    /// ignored.
    pub(super) fn direct_done(&mut self, client: u32, done: proto::DirectDone) {
        let Some(at) = self
            .workers
            .get(&client)
            .map(|w| (w.node_label.clone(), w.pid))
            // leases: a driver reports direct tasks it cancelled before
            // sending them (they ran nowhere).
            .or_else(|| {
                self.sessions
                    .contains_key(&client)
                    .then(|| (self.no_function.clone(), 0))
            })
        else {
            return;
        };
        let job = self.job_of(client);
        if let Some(j) = self.jobs.get_mut(&job) {
            j.direct_tasks += done.tasks.len() as u64;
        }
        // A batch is mostly one function: its name is looked up once per
        // run of tasks, not once per task.
        let mut last: Option<(String, u32, Arc<str>)> = None;
        for t in done.tasks {
            let (function_id, function) = match &last {
                Some((name, id, shared)) if *name == t.function => (*id, shared.clone()),
                _ => {
                    let (id, shared) = self.intern(&t.function);
                    last = Some((t.function, id, shared.clone()));
                    (id, shared)
                }
            };
            let ok = t.error_kind == ErrorKind::Unspecified as i32;
            if t.error_kind == ErrorKind::Cancelled as i32 {
                self.control.cancelled_total += 1;
            }
            if ok {
                let us = t.exec_micros as f64;
                self.run_micros
                    .entry(function_id)
                    .and_modify(|m| *m = 0.8 * *m + 0.2 * us)
                    .or_insert(us);
            }
            self.record(
                at.clone(),
                t.task_id,
                (function_id, &function),
                ok,
                t.start_micros,
                t.exec_micros,
            );
        }
    }
}
