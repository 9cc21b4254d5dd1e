//! The scheduler's part in controlling running work: which tasks were
//! cancelled while a worker had them, workers the memory monitor killed,
//! and whether a failed attempt is retried (`retry_on_error`).

use std::collections::HashMap;

use crate::proto::{self, object_value::Payload};

use super::super::state::State;
use super::deaths::Deaths;
use super::returns::MoreReturns;

/// Control state of the scheduler (one field of the head's `State`).
#[derive(Default)]
pub(in crate::head) struct Control {
    pub(in crate::head) deaths: Deaths,
    /// leases: workers lent to drivers (head/scheduler/leases.rs).
    pub(in crate::head) leases: super::leases::Leases,
    /// Tasks cancelled while sent to a worker: whatever they return, they
    /// finish as `Cancelled`. The value says how (for the message).
    pub(in crate::head) cancelled: HashMap<u64, &'static str>,
    /// By worker id: why the memory monitor killed it, and its node.
    pub(in crate::head) oom_kills: HashMap<u64, (String, String)>,
    /// By node: when the memory monitor last killed a worker there.
    pub(in crate::head) last_oom_kill: HashMap<String, std::time::Instant>,
    /// Counts workers' busy periods (see `Worker::busy_since`).
    pub(in crate::head) busy_seq: u64,
    /// Later results of tasks with `num_returns`, until they complete.
    pub(in crate::head) returns: MoreReturns,
    /// Tasks and actor calls cancelled, for the dashboard.
    pub(in crate::head) cancelled_total: u64,
    /// generators: open streams of generator tasks.
    pub(in crate::head) generators: super::generators::Generators,
}

impl State {
    /// The error a cancelled task finishes with.
    pub(in crate::head) fn cancelled_error(&mut self, id: u64, how: &str) -> proto::TaskError {
        self.control.cancelled_total += 1;
        let function = self
            .tasks
            .get(&id)
            .map(|t| t.function.to_string())
            .unwrap_or_default();
        let mut e = proto::TaskError {
            function,
            message: format!("task {id:016x} {how}"),
            ..Default::default()
        };
        e.set_kind(proto::ErrorKind::Cancelled);
        e
    }

    /// What a finished attempt's outcome becomes: `Cancelled` if the task
    /// was cancelled meanwhile; `None` if it is retried (an `Err` or panic
    /// of a `retry_on_error` task with retries left).
    pub(in crate::head) fn finish_attempt(&mut self, id: u64, payload: Payload) -> Option<Payload> {
        if !self.control.cancelled.is_empty() {
            if let Some(how) = self.control.cancelled.remove(&id) {
                return Some(Payload::Error(Box::new(self.cancelled_error(id, how))));
            }
        }
        let Payload::Error(e) = &payload else {
            return Some(payload);
        };
        let t = self.tasks.get_mut(&id)?;
        if e.kind() == proto::ErrorKind::Task && t.spec.retry_on_error && t.retries_left > 0 {
            t.retries_left -= 1;
            t.worker = None;
            t.ready_at = crate::head::state::clock();
            tracing::debug!(task = id, "retrying after an error: {}", e.message);
            self.ready.push_back(id);
            return None;
        }
        Some(payload)
    }
}
