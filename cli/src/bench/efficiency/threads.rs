//! `--threads`: where the CPU of a Fleet run goes, thread by thread.
//!
//! The `over µs/task` column says how much CPU Fleet's processes spent
//! beyond the tasks' own compute, but not where. This breaks it down by
//! process role (the driver, with the embedded head, and the workers) and
//! thread name (`fleet-head`, `fleet-worker-io`, a worker's main thread
//! that runs the tasks, …): CPU per task, and how often each kind of
//! thread went to sleep (voluntary switches) or was preempted
//! (involuntary ones) per 100 tasks. It reads `/proc` through `procfs`.

use std::collections::BTreeMap;

/// Per-thread totals of one moment, keyed by (role, thread name).
#[derive(Default)]
pub(crate) struct Snapshot(BTreeMap<(&'static str, String), Usage>);

/// What the threads of one kind used.
#[derive(Clone, Copy, Default)]
struct Usage {
    /// CPU time, in nanoseconds (`schedstat`; clock ticks of
    /// `utime + stime` converted where the kernel has no schedstat).
    nanos: u64,
    /// Times they went to sleep.
    sleeps: u64,
    /// Times they were preempted.
    preempted: u64,
    /// How many threads of this kind there are.
    threads: u64,
}

/// A thread's name without the digits some runtimes append (`tokio-1`).
fn kind(comm: &str) -> String {
    comm.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '#')
        .to_string()
}

impl Snapshot {
    /// Reads every thread of `driver` and of `workers` now. A process or
    /// thread that ended in between is skipped.
    pub(crate) fn take(driver: u32, workers: &[u32]) -> Snapshot {
        let mut s = Snapshot::default();
        let hz = procfs::ticks_per_second().max(1);
        let roles =
            std::iter::once(("driver", driver)).chain(workers.iter().map(|p| ("worker", *p)));
        for (role, pid) in roles {
            let Ok(process) = procfs::process::Process::new(pid as i32) else {
                continue;
            };
            let Ok(tasks) = process.tasks() else { continue };
            for task in tasks.flatten() {
                let (Ok(stat), Ok(status)) = (task.stat(), task.status()) else {
                    continue;
                };
                let nanos = super::nodes::thread_nanos(&task, hz);
                let u = s.0.entry((role, kind(&stat.comm))).or_default();
                u.nanos += nanos;
                u.sleeps += status.voluntary_ctxt_switches.unwrap_or(0);
                u.preempted += status.nonvoluntary_ctxt_switches.unwrap_or(0);
                u.threads += 1;
            }
        }
        s
    }

    /// Prints what each kind of thread used between `before` and `self`,
    /// per task of a run of `tasks`.
    pub(crate) fn print_since(&self, before: &Snapshot, tasks: usize) {
        let per = tasks.max(1) as f64;
        println!(
            "    {:<8} {:<22} {:>7} {:>12} {:>11} {:>14}",
            "role", "thread", "threads", "cpu µs/task", "sleeps/100", "preempted/100"
        );
        for (key, now) in &self.0 {
            let was = before.0.get(key).copied().unwrap_or_default();
            let cpu_us = now.nanos.saturating_sub(was.nanos) as f64 / 1e3;
            let sleeps = now.sleeps.saturating_sub(was.sleeps) as f64;
            let preempted = now.preempted.saturating_sub(was.preempted) as f64;
            if cpu_us == 0.0 && sleeps == 0.0 {
                continue;
            }
            println!(
                "    {:<8} {:<22} {:>7} {:>12.2} {:>11.1} {:>14.1}",
                key.0,
                key.1,
                now.threads,
                cpu_us / per,
                100.0 * sleeps / per,
                100.0 * preempted / per
            );
        }
    }
}
