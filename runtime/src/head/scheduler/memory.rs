//! The head's half of the memory monitor: a node reports that its memory
//! is above the threshold, and the head picks the worker to kill, as Ray
//! does: the one running the most recently started retriable task (so the
//! least work is lost and the task runs again), else the most recently
//! started task of any kind. Workers hosting actors are spared while a
//! plain task can be killed instead. One kill per node at a time.

use crate::proto;

use super::super::state::State;

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64)
}

impl State {
    /// `node` is above its memory threshold: picks a worker to kill and
    /// remembers why. Returns (worker id, client) of the victim, or `None`
    /// (a kill on this node is still under way, or nothing runs there).
    pub(in crate::head) fn memory_pressure(
        &mut self,
        node: &str,
        report: &proto::MemoryPressure,
    ) -> Option<(u64, u32)> {
        if self.control.oom_kills.values().any(|(n, _)| n == node) {
            return None;
        }
        // After a kill, memory takes a moment to come back.
        let recent = self
            .control
            .last_oom_kill
            .get(node)
            .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1));
        if recent {
            return None;
        }
        let rss_of = |worker_id: u64| {
            report
                .workers
                .iter()
                .find(|w| w.worker_id == worker_id)
                .map(|w| w.rss)
        };
        let (client, worker_id, pid, task) = self
            .workers
            .iter()
            .filter(|(_, w)| w.node == node)
            .filter_map(|(c, w)| {
                let task = *w.queue.front()?;
                // A leased worker runs its driver's direct tasks, which the
                // driver retries (it hears "out of memory" in LeaseEnd).
                let retriable = match self.tasks.get(&task) {
                    Some(t) => t.retries_left > 0,
                    None if self.is_leased(*c) => true,
                    None => return None,
                };
                let plain = w.actors == 0;
                Some((
                    (plain, retriable, w.busy_since),
                    (*c, w.worker_id, w.pid, task),
                ))
            })
            .max_by_key(|(key, _)| *key)
            .map(|(_, v)| v)?;
        let function = self
            .tasks
            .get(&task)
            .map(|t| t.function.to_string())
            .unwrap_or_default();
        let rss = rss_of(worker_id).map_or_else(|| "unknown".to_string(), mib);
        let why = format!(
            "worker pid {pid} ran `{function}` with {rss} resident; node {node} had {} of {} \
             in use ({:.0}%), above the memory monitor's threshold of {} \
             (FLEET_MEMORY_THRESHOLD). Run fewer tasks at once (ask for more num_cpus per task, \
             or give the node fewer CPUs), make the task use less memory, or raise \
             FLEET_MEMORY_THRESHOLD",
            mib(report.used),
            mib(report.total),
            100.0 * report.used as f64 / report.total.max(1) as f64,
            mib(report.threshold),
        );
        tracing::warn!(node, pid, %function, "memory monitor: killing a worker: {why}");
        self.control
            .oom_kills
            .insert(worker_id, (node.to_string(), why));
        self.control
            .last_oom_kill
            .insert(node.to_string(), std::time::Instant::now());
        Some((worker_id, client))
    }

    /// The kill could not be done (the worker was gone already).
    pub(in crate::head) fn memory_kill_failed(&mut self, worker_id: u64) {
        self.control.oom_kills.remove(&worker_id);
    }
}

impl State {
    /// The node whose agent holds this session.
    pub(in crate::head) fn node_of_session(&self, client: u32) -> Option<String> {
        self.nodes
            .iter()
            .find(|(_, n)| n.session == Some(client))
            .map(|(name, _)| name.clone())
    }
}
