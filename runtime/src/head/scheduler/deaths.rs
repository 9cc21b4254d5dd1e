//! How a worker died, and what becomes of the task it ran.
//!
//! A worker's session usually ends a moment before its node's supervisor
//! reports the exit status (or a moment after). The running task waits
//! aside for that status, so its `WorkerDied` says how the process ended
//! (exit code, or signal name, with a hint for SIGKILL), and a task killed
//! by the memory monitor is retried after a backoff or fails with
//! `OutOfMemory`. If no status comes (the node is gone), it is settled
//! without one after [`STATUS_GRACE`].

use std::collections::HashMap;
use std::time::Duration;

use crate::proto::{self, object_value::Payload};

use super::super::state::{State, Worker};

/// How long a dead worker's task waits for its exit status.
pub(in crate::head) const STATUS_GRACE: Duration = Duration::from_secs(2);

/// Work the head does later, off the lock: sent by the outbox, applied by
/// [`State::later`] once its delay has passed.
#[derive(Debug, Clone, Copy)]
pub(in crate::head) enum Later {
    /// Settle a dead worker's task without its exit status.
    Settle(u64),
    /// Put a task back in the queue (a retry after a backoff).
    Requeue(u64),
    /// leases: tell a dead leased worker's driver, without its exit status.
    LeaseEnd(u64),
    /// leases: look again at requests that wait for a revocation.
    LeaseCheck,
}

/// The running task of a worker whose session ended.
pub(in crate::head) struct Dying {
    task: u64,
    pid: u32,
    node: String,
}

/// How a worker process ended, as its node saw it.
#[derive(Clone, Debug, Default)]
struct ExitInfo {
    /// "exited with code 3", "was killed by signal 9 (SIGKILL)".
    status: String,
    /// Set when the memory monitor killed it: RSS, usage and threshold.
    oom: String,
}

/// The scheduler's bookkeeping for dying workers.
#[derive(Default)]
pub(in crate::head) struct Deaths {
    /// By worker id: the task it ran when its session ended.
    dying: HashMap<u64, Dying>,
    /// By worker id: exit statuses that arrived before the session ended.
    exits: HashMap<u64, ExitInfo>,
}

/// A hint for a death by SIGKILL, which the process cannot report itself.
const SIGKILL_HINT: &str = "SIGKILL is sent by the kernel's out-of-memory killer (see `dmesg`) \
     or by `kill -9`; if memory is short, declare `memory` for the task or run fewer at once";

impl State {
    /// Called for the task a worker was running when its session ended.
    pub(in crate::head) fn running_task_lost(&mut self, w: &Worker, task: u64) {
        let dying = Dying {
            task,
            pid: w.pid,
            node: w.node.clone(),
        };
        match self.control.deaths.exits.remove(&w.worker_id) {
            Some(info) => self.settle(dying, Some(info)),
            None => {
                self.control.deaths.dying.insert(w.worker_id, dying);
                self.out
                    .later
                    .push((STATUS_GRACE, Later::Settle(w.worker_id)));
            }
        }
    }

    /// Says why a worker's session ended, at WARN only when something went
    /// wrong: the workers of a job that ended leave on purpose (debug). A
    /// worker that dies while running a task is named once its exit status
    /// is known, with what became of the task (see `settle`).
    pub(in crate::head) fn log_worker_end(&self, w: &Worker) {
        if !self.jobs.contains_key(&w.job) {
            tracing::debug!(
                pid = w.pid,
                worker = w.worker_id,
                "worker left: job {} ended",
                w.job
            );
        } else if w.queue.is_empty() {
            tracing::warn!(
                "worker {} (pid {}) on {} of job {} ended while idle; no task was lost, \
                 another starts when one is needed",
                w.worker_id,
                w.pid,
                w.node,
                w.job
            );
        }
    }

    /// A node's supervisor saw a worker process exit.
    pub(in crate::head) fn worker_exit_status(&mut self, worker_id: u64, status: String) {
        let info = ExitInfo {
            status,
            oom: self
                .control
                .oom_kills
                .remove(&worker_id)
                .map(|(_, why)| why)
                .unwrap_or_default(),
        };
        if self.lease_dying(worker_id) {
            self.lease_died(worker_id, Some((info.status, info.oom)));
        } else if let Some(d) = self.control.deaths.dying.remove(&worker_id) {
            self.settle(d, Some(info));
        } else if self.workers.values().any(|w| w.worker_id == worker_id) {
            // Its session has not ended yet: kept for when it does.
            self.control.deaths.exits.insert(worker_id, info);
        }
    }

    /// The exit status (and the memory monitor's reason, if it killed
    /// it) of worker `worker_id`, if it arrived before its session ended.
    pub(in crate::head) fn take_exit(&mut self, worker_id: u64) -> Option<(String, String)> {
        self.control
            .deaths
            .exits
            .remove(&worker_id)
            .map(|i| (i.status, i.oom))
    }

    /// How a worker ended, worded as for a task it ran: "worker pid P on
    /// N exited with code 3", with the SIGKILL hint where it applies.
    pub(in crate::head) fn death_text(pid: u32, node: &str, status: &str) -> String {
        let how = if status.is_empty() {
            "ended (its exit status is unknown: its node may be gone)"
        } else {
            status
        };
        let mut text = format!("worker pid {pid} on {node} {how}");
        if status.contains("SIGKILL") {
            text = format!("{text} ({SIGKILL_HINT})");
        }
        text
    }

    /// Applies work that was put off (see [`Later`]).
    pub(in crate::head) fn later(&mut self, what: Later) {
        match what {
            Later::Settle(worker_id) => {
                if let Some(d) = self.control.deaths.dying.remove(&worker_id) {
                    self.settle(d, None);
                }
            }
            Later::LeaseEnd(worker_id) => self.lease_died(worker_id, None),
            Later::LeaseCheck => self.lease_check_due(),
            Later::Requeue(id) => {
                if self.tasks.get(&id).is_some_and(|t| t.worker.is_none()) {
                    self.ready.push_front(id);
                }
            }
        }
    }

    /// Retries the dead worker's task, or fails it saying how the worker died.
    fn settle(&mut self, d: Dying, info: Option<ExitInfo>) {
        let Some(t) = self.tasks.get_mut(&d.task) else {
            return; // cancelled or finished meanwhile
        };
        if t.worker.is_some() {
            return;
        }
        let info = info.unwrap_or_default();
        let oom = !info.oom.is_empty();
        let how = if info.status.is_empty() {
            "ended (its exit status is unknown: its node may be gone)".to_string()
        } else {
            info.status.clone()
        };
        if t.retries_left > 0 {
            t.retries_left -= 1;
            let (attempt, most) = t.spec.attempt_of(t.retries_left);
            tracing::warn!(
                "worker pid {} on {} {how} while running task {:016x} (`{}`){}; task retried, \
                 attempt {attempt} of {most}",
                d.pid,
                d.node,
                d.task,
                t.function,
                if oom {
                    " (killed by the memory monitor)"
                } else {
                    ""
                },
            );
            t.ready_at = crate::head::state::clock();
            if oom {
                // Memory is short now: give it a moment to come back.
                let used = attempt.saturating_sub(1);
                let backoff = Duration::from_millis(250 << used.min(5));
                self.out.later.push((backoff, Later::Requeue(d.task)));
            } else {
                self.ready.push_front(d.task);
            }
            return;
        }
        let function = t.function.clone();
        let function_id = t.function_id;
        let mut e = proto::TaskError {
            function: function.to_string(),
            pid: d.pid,
            node: d.node.clone(),
            ..Default::default()
        };
        if oom {
            e.set_kind(proto::ErrorKind::OutOfMemory);
            e.message = format!(
                "the memory monitor killed worker pid {} (retries used up): {}",
                d.pid, info.oom
            );
        } else {
            e.set_kind(proto::ErrorKind::WorkerDied);
            e.message = format!(
                "worker pid {} on {} {how} while running it (retries used up)",
                d.pid, d.node
            );
            if info.status.contains("SIGKILL") {
                e.message = format!("{}. {SIGKILL_HINT}", e.message);
            }
        }
        tracing::warn!(
            "worker pid {} on {} {how} while running task {:016x} (`{function}`); no retries \
             left (max_retries = {}): the task fails",
            d.pid,
            d.node,
            d.task,
            t.spec.max_retries.saturating_add(t.spec.retries_used()),
        );
        let now = super::super::observe::now_us();
        self.record(
            (std::sync::Arc::from(d.node.as_str()), d.pid),
            d.task,
            (function_id, &function),
            false,
            now,
            0,
        );
        self.complete(d.task, Payload::Error(Box::new(e)), Vec::new());
    }
}

/// Describes an exit status: its code, or its signal by name.
pub(crate) fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return format!("exited with code {code}");
    }
    match status.signal() {
        Some(sig) => format!(
            "was killed by signal {sig} ({}){}",
            signal_name(sig),
            if status.core_dumped() {
                ", core dumped"
            } else {
                ""
            }
        ),
        None => status.to_string(),
    }
}

/// The name of a signal number.
pub(crate) fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}
