//! Task scheduling: a task waits for its ref arguments, then for CPUs and a
//! worker. Tasks of short functions are pipelined: a worker gets several at
//! once so it never idles for a round trip, while long tasks go one per
//! worker so a slow task never holds others behind it.

use std::collections::VecDeque;

use crate::proto::{self, head_op::Op, object_value::Payload};

use super::directory::arg_ref;
use super::state::{ObjState, State, Task, Worker};

/// How much queued work (in microseconds of run time) a worker may hold
/// beyond the task it runs.
const PIPELINE_MICROS: f64 = 2_000.0;
const MAX_PIPELINE: usize = 64;
/// After this many tasks in a row find no place, a dispatch pass stops.
const SCAN_LIMIT: usize = 64;
const EPS: f64 = 1e-9;

impl State {
    pub(super) fn submit(&mut self, client: u32, spec: proto::TaskSpec) {
        let id = spec.task_id;
        if !self.new_object(id, ObjState::Pending, client) {
            return;
        }
        let mut missing = 0;
        let mut failed = None;
        for a in spec.args.iter().filter_map(arg_ref) {
            match self.objects.get_mut(&a) {
                None => failed = Some(Self::lost(a, "argument was freed or never existed")),
                Some(o) => {
                    o.pins += 1;
                    match &o.state {
                        ObjState::Pending => {
                            missing += 1;
                            o.dependents.push(id);
                        }
                        ObjState::Done(Payload::Error(e)) => {
                            failed = Some(Payload::Error(e.clone()))
                        }
                        ObjState::Done(_) => {}
                    }
                }
            }
        }
        self.pin_all(&spec.nested_refs);
        if spec.actor_id != 0 {
            // A call keeps its actor alive until it finishes.
            self.pin_all(&[spec.actor_id]);
        }
        if spec.create.is_some() {
            if let Err(e) = self.register_actor(&spec) {
                failed = Some(e);
            }
        }
        let retries_left = spec.max_retries;
        let actor = spec.actor_id;
        self.tasks.insert(
            id,
            Task {
                spec,
                missing,
                retries_left,
                worker: None,
            },
        );
        if failed.is_none() && actor != 0 {
            failed = self.enqueue_call(id, actor);
        }
        if let Some(err) = failed {
            self.complete(id, err, Vec::new());
        } else if missing == 0 && actor == 0 {
            self.ready.push_back(id);
        }
    }

    pub(super) fn task_result(&mut self, client: u32, result: proto::TaskResult) {
        let Some(value) = result.value else { return };
        let Some(payload) = value.payload else { return };
        let id = value.object_id;
        let ours = self
            .tasks
            .get(&id)
            .is_some_and(|t| t.worker == Some(client));
        if !ours {
            // A result for a task this worker no longer owns: drop its file.
            if let Payload::Stored(loc) = payload {
                self.out.delete.push(loc.path);
            }
            return;
        }
        if let Some(w) = self.workers.get_mut(&client) {
            w.queue.retain(|t| *t != id);
            if w.queue.is_empty() {
                if !w.blocked {
                    self.available_cpus += w.lease;
                }
                w.lease = 0.0;
                w.function.clear();
            }
        }
        if let Some(t) = self.tasks.get(&id) {
            let m = self
                .run_micros
                .entry(t.spec.function.clone())
                .or_insert(result.exec_micros as f64);
            *m = 0.8 * *m + 0.2 * result.exec_micros as f64;
        }
        self.complete(id, payload, result.nested_refs);
    }

    pub(super) fn worker_connected(&mut self, client: u32, worker_id: u64, pid: u32) {
        self.starting = self.starting.saturating_sub(1);
        self.workers.insert(
            client,
            Worker {
                worker_id,
                pid,
                queue: VecDeque::new(),
                lease: 0.0,
                function: String::new(),
                blocked: false,
                actors: 0,
            },
        );
    }

    /// A worker process failed to start or died before connecting.
    pub(super) fn worker_never_connected(&mut self) {
        self.starting = self.starting.saturating_sub(1);
    }

    /// A worker's session ended: its running task is retried or fails with
    /// `WorkerDied`; tasks queued behind it had not started and go back.
    pub(super) fn worker_lost(&mut self, client: u32, w: Worker) {
        if !w.blocked {
            self.available_cpus += w.lease;
        }
        self.actors_lost_with(client);
        tracing::warn!(pid = w.pid, worker = w.worker_id, "worker died");
        let mut requeue = Vec::new();
        for (i, id) in w.queue.iter().enumerate() {
            let Some(t) = self.tasks.get_mut(id) else {
                continue;
            };
            t.worker = None;
            if i > 0 {
                requeue.push(*id);
            } else if t.retries_left > 0 {
                t.retries_left -= 1;
                requeue.push(*id);
            } else {
                let mut e = proto::TaskError {
                    function: t.spec.function.clone(),
                    message: format!(
                        "worker pid {} on {} exited while running it (retries used up)",
                        w.pid, self.node
                    ),
                    pid: w.pid,
                    node: self.node.clone(),
                    ..Default::default()
                };
                e.set_kind(proto::ErrorKind::WorkerDied);
                self.complete(*id, Payload::Error(e), Vec::new());
            }
        }
        for id in requeue.into_iter().rev() {
            self.ready.push_front(id);
        }
        self.keep_pool();
    }

    pub(super) fn blocked(&mut self, client: u32, b: proto::Blocked) {
        let Some(w) = self.workers.get_mut(&client) else {
            return;
        };
        if !w.blocked {
            w.blocked = true;
            self.available_cpus += w.lease;
        }
        w.queue.retain(|t| !b.returned.contains(t));
        for id in b.returned.iter().rev() {
            if let Some(t) = self.tasks.get_mut(id) {
                t.worker = None;
                self.ready.push_front(*id);
            }
        }
    }

    pub(super) fn unblocked(&mut self, client: u32) {
        if let Some(w) = self.workers.get_mut(&client) {
            if w.blocked {
                w.blocked = false;
                // May overcommit for a moment, as a resumed task must run.
                self.available_cpus -= w.lease;
            }
        }
    }

    /// Keeps at least `min_workers` processes alive or starting.
    pub(super) fn keep_pool(&mut self) {
        let have = self.workers.len() + self.starting;
        if have < self.limits.min_workers {
            let n = self.limits.min_workers - have;
            self.starting += n;
            self.out.spawn += n;
        }
    }

    fn pipeline_depth(&self, function: &str) -> usize {
        match self.run_micros.get(function) {
            None => 1,
            Some(m) => ((PIPELINE_MICROS / m.max(1.0)) as usize).clamp(1, MAX_PIPELINE),
        }
    }

    /// Places ready tasks on workers.
    pub(super) fn dispatch(&mut self) {
        let mut skipped = Vec::new();
        let mut misses = 0;
        let mut want_worker = false;
        while let Some(id) = self.ready.pop_front() {
            let Some(task) = self.tasks.get(&id) else {
                continue;
            };
            if task.missing > 0 || task.worker.is_some() {
                continue;
            }
            if task.spec.actor_id != 0 {
                self.dirty_actors.push(task.spec.actor_id);
                continue;
            }
            if task.spec.create.is_some() {
                if !self.place_actor(id) {
                    skipped.push(id);
                    want_worker |= self.workers.is_empty();
                }
                continue;
            }
            let need = task.spec.num_cpus.max(0.0);
            let fits = self.available_cpus + EPS >= need;
            let idle = if fits {
                self.workers
                    .iter()
                    .filter(|(_, w)| w.queue.is_empty() && !w.blocked)
                    .map(|(c, _)| *c)
                    .next()
            } else {
                None
            };
            let target = idle.or_else(|| {
                let depth = self.pipeline_depth(&task.spec.function);
                self.workers
                    .iter()
                    .filter(|(_, w)| {
                        !w.blocked
                            && w.queue.len() < depth
                            && w.function == task.spec.function
                            && (w.lease - need).abs() < EPS
                    })
                    .min_by_key(|(_, w)| w.queue.len())
                    .map(|(c, _)| *c)
            });
            match target {
                Some(c) => {
                    misses = 0;
                    if idle.is_some() {
                        self.available_cpus -= need;
                    }
                    self.assign(c, id, need);
                }
                None => {
                    want_worker |= fits;
                    skipped.push(id);
                    misses += 1;
                    if misses >= SCAN_LIMIT {
                        break;
                    }
                }
            }
        }
        for id in skipped.into_iter().rev() {
            self.ready.push_front(id);
        }
        self.pump_actors();
        // CPUs are free but every worker is busy or lent out: start another.
        if want_worker && self.starting == 0 && self.workers.len() < self.limits.max_workers {
            self.starting += 1;
            self.out.spawn += 1;
        }
    }

    fn assign(&mut self, client: u32, id: u64, need: f64) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        task.worker = Some(client);
        let spec = task.spec.clone();
        if let Some(w) = self.workers.get_mut(&client) {
            if w.queue.is_empty() {
                w.lease = need;
                w.function = spec.function.clone();
            }
            w.queue.push_back(id);
        }
        let spec = self.resolved(&spec);
        self.out.push(client, Op::Execute(spec));
    }

    /// `spec` as a worker receives it: ref arguments replaced by their
    /// values (inline) or store locations.
    pub(super) fn resolved(&self, spec: &proto::TaskSpec) -> proto::TaskSpec {
        let mut spec = spec.clone();
        for a in &mut spec.args {
            if let Some(r) = arg_ref(a) {
                a.kind = match self.objects.get(&r).map(|o| &o.state) {
                    Some(ObjState::Done(Payload::Inline(b))) => {
                        Some(proto::arg::Kind::Value(b.clone()))
                    }
                    Some(ObjState::Done(Payload::Stored(loc))) => {
                        Some(proto::arg::Kind::Stored(loc.clone()))
                    }
                    _ => a.kind.take(),
                };
            }
        }
        spec
    }
}
