//! What the head keeps of direct tasks (run by a leased worker for its
//! driver, never seen by the head): the worker's batched summaries, applied
//! as cheaply as a finished task's bookkeeping and nothing more. No task
//! or object record is made; each summary becomes a task event (`fleet
//! list tasks`, the timeline, `fleet logs --task`, the dashboard), counts
//! and a run time per function (`/metrics`), the cancelled count, the
//! function's mean run time, and the job's count of direct tasks (`fleet
//! list jobs`). A task that runs long is reported once while it runs
//! (`DirectTask.running`): its worker shows it as running (`fleet list
//! tasks`) until its summary comes or the worker is gone.
//!
//! Each worker sends its summaries once per period, which the head sets:
//! [`SUMMARY_MS_PER_WORKER`] times the number of workers, within
//! [`SUMMARY_EVERY_MS`]. Up to 100 workers the summaries then wake the head
//! about 100 times a second in all, whatever the cluster's size: with a
//! fixed 20 ms, 16 workers of 100 µs tasks woke it 800 times a second and
//! tripled its CPU per task. Past that, each worker reports once a second
//! (as Ray's task events do). A task that has run a period is listed as
//! running within two (`worker/direct/held.rs`).

use std::sync::Arc;

use super::state::{DirectRunning, State};
use crate::proto::{self, head_op::Op, ErrorKind};

#[cfg(test)]
mod tests;

/// Shortest and longest period of workers' summaries, in milliseconds.
pub(crate) const SUMMARY_EVERY_MS: (u32, u32) = (20, 1_000);
/// Period of workers' summaries per worker in the cluster.
pub(crate) const SUMMARY_MS_PER_WORKER: u32 = 10;

/// The period of summaries for a cluster of `workers` workers.
pub(crate) fn summary_every_ms(workers: usize) -> u32 {
    let (least, most) = SUMMARY_EVERY_MS;
    (workers.min(u32::MAX as usize) as u32)
        .saturating_mul(SUMMARY_MS_PER_WORKER)
        .clamp(least, most)
}

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
        let mut tasks = done.tasks;
        if tasks.iter().any(|t| t.running) || self.reports_running(client) {
            tasks = self.note_running(client, tasks);
        }
        if let Some(j) = self.jobs.get_mut(&job) {
            j.direct_tasks += tasks.len() as u64;
        }
        // A batch is mostly one function: its name is looked up once per
        // run of tasks, not once per task.
        let mut last: Option<(String, u32, Arc<str>)> = None;
        for t in tasks {
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

    /// Whether worker session `client` has a direct task listed running.
    fn reports_running(&self, client: u32) -> bool {
        self.workers
            .get(&client)
            .is_some_and(|w| w.direct_running.is_some())
    }

    /// Takes the running reports out of `tasks` (noted on their worker)
    /// and ends the one a finished summary closes; returns the finished.
    fn note_running(
        &mut self,
        client: u32,
        tasks: Vec<proto::DirectTask>,
    ) -> Vec<proto::DirectTask> {
        let mut finished = Vec::with_capacity(tasks.len());
        for t in tasks {
            if t.running {
                let function = self.intern(&t.function).1;
                if let Some(w) = self.workers.get_mut(&client) {
                    w.direct_running = Some(Box::new(DirectRunning {
                        task_id: t.task_id,
                        function,
                    }));
                }
                continue;
            }
            if let Some(w) = self.workers.get_mut(&client) {
                if w.direct_running
                    .as_ref()
                    .is_some_and(|r| r.task_id == t.task_id)
                {
                    w.direct_running = None;
                }
            }
            finished.push(t);
        }
        finished
    }

    /// Tells every worker a new period of summaries once the number of
    /// workers has moved it by half or more from what they were told (not
    /// on every worker that comes or goes). Called as workers join and
    /// leave.
    pub(super) fn pace_summaries(&mut self) {
        let every = summary_every_ms(self.workers.len());
        let told = self.summary_every_ms.max(1);
        if every * 2 < told * 3 && every * 3 > told * 2 {
            return;
        }
        self.summary_every_ms = every;
        let workers: Vec<u32> = self.workers.keys().copied().collect();
        for w in workers {
            self.out.push(w, Op::SummaryEveryMs(every));
        }
    }
}
