//! Task scheduling: a task waits for its ref arguments, then for CPUs and a
//! worker. Tasks of short functions are pipelined: a worker gets several at
//! once so it never idles for a round trip, while long tasks go one per
//! worker so a slow task never holds others behind it.

mod cancel;
mod control;
mod deaths;
mod generators;
mod leases;
mod memory;
mod pipeline;
mod resources;
mod returns;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::proto::{self, head_op::Op, object_value::Payload};

use super::directory::arg_ref;
use super::state::{same_function, ObjState, State, Task, Worker};
pub(super) use control::Control;
pub(crate) use deaths::describe_exit;
pub(super) use deaths::Later;
pub(super) use resources::{NodeResources, Placement};

/// After this many tasks in a row find no place, a dispatch pass stops.
const SCAN_LIMIT: usize = 64;
/// The same, when no worker and no node has room for anything: what is
/// placeable then is only a task that starts a worker of its own without
/// CPUs, and a pass that looked at 64 tasks on every frame cost more than
/// half of the head's CPU per task while a long queue waited.
const FULL_SCAN_LIMIT: usize = 4;
const EPS: f64 = 1e-9;

/// Tasks that need the same place: if one of them finds no worker in a
/// dispatch pass, none of the others will in that pass. Whatever placement
/// looks at (besides the preferred node, which only orders candidates)
/// belongs here.
struct Shape {
    job: u32,
    need: f64,
    /// Interned id of its function (0: none, then `function` is compared).
    function_id: u32,
    function: Arc<str>,
    /// The node it must go to in this pass (empty: any).
    only: String,
    /// Resources besides CPUs (empty for most tasks).
    resources: Vec<proto::Resource>,
    /// Tasks of this shape the pass left waiting.
    count: usize,
}

impl Shape {
    fn fits(&self, job: u32, need: f64, task: &Task, only: &str) -> bool {
        self.job == job
            && self.need.to_bits() == need.to_bits()
            && same_function(
                (self.function_id, &self.function),
                (task.function_id, &task.function),
            )
            && same_str(&self.only, only)
            && self.resources == task.spec.resources()
    }
}

/// `a == b`, without a call to `memcmp` for the usual two empty strings
/// (dispatch compares pins of every task it looks at).
fn same_str(a: &str, b: &str) -> bool {
    a.len() == b.len() && (a.is_empty() || a == b)
}

impl State {
    pub(super) fn submit(&mut self, client: u32, mut spec: proto::TaskSpec) {
        let id = spec.task_id;
        if !self.new_object(id, ObjState::Pending, client) {
            return;
        }
        if std::mem::take(&mut spec.subscribe) {
            // As a `Subscribe` right after the submit, without the op.
            if let Some(o) = self.objects.get_mut(&id) {
                o.add_subscriber(client);
            }
        }
        let mut failed = None;
        if spec.num_returns > 1 {
            failed = self.open_returns(client, &spec).err();
        }
        if spec.generator {
            self.open_stream(client, id);
        }
        let mut missing = 0;
        let job = self.job_for(client, &spec);
        if spec.spread {
            self.spread_task(job, &mut spec);
        }
        let pending = self.pending.entry(job).or_default();
        *pending += 1;
        if *pending > self.max_pending {
            let mut e = proto::TaskError {
                function: spec.function.clone(),
                message: format!(
                    "the job has {} unfinished tasks, the limit (FLEET_MAX_PENDING_TASKS) is {}; \
                     wait for results before submitting more",
                    *pending - 1,
                    self.max_pending
                ),
                ..Default::default()
            };
            e.set_kind(proto::ErrorKind::Task);
            failed = Some(Payload::Error(Box::new(e)));
        }
        if !spec.resources.is_empty() {
            if let Some(e) = resources::bad_request(&spec) {
                failed = Some(Payload::Error(Box::new(e)));
            }
        }
        for a in spec.args.iter().filter_map(arg_ref) {
            match self.objects.get_mut(&a) {
                None => failed = Some(Self::lost(a, "argument was freed or never existed")),
                Some(o) => {
                    o.pins += 1;
                    match &o.state {
                        ObjState::Pending => {
                            missing += 1;
                            o.more().dependents.push(id);
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
        let task = self.make_task(spec, missing, retries_left, job);
        self.tasks.insert(id, task);
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
        let Some(t) = self.tasks.get(&id).filter(|t| t.worker == Some(client)) else {
            // A result for a task this worker no longer owns: drop its file.
            if let Payload::Stored(loc) = payload {
                self.out.delete.push(loc.path);
            }
            return;
        };
        let (function_id, function) = (t.function_id, t.function.clone());
        {
            let ok = !matches!(payload, Payload::Error(_));
            let at = self
                .workers
                .get(&client)
                .map(|w| (w.node_label.clone(), w.pid))
                .unwrap_or_else(|| (Arc::from(""), 0));
            self.record(
                at,
                id,
                (function_id, &function),
                ok,
                result.start_micros,
                result.exec_micros,
            );
        }
        let mut freed = None;
        if let Some(w) = self.workers.get_mut(&client) {
            // Results come in the order the queue ran: the front, usually.
            if w.queue.front() == Some(&id) {
                w.queue.pop_front();
            } else {
                w.queue.retain(|t| *t != id);
            }
            if w.queue.is_empty() {
                if !w.blocked {
                    freed = Some((w.node_label.clone(), w.lease));
                }
                w.lease = 0.0;
                w.function = self.no_function.clone();
                w.function_id = 0;
                if !w.held.is_empty() {
                    let held = std::mem::take(&mut w.held);
                    let node = w.node_label.clone();
                    self.give_resources(&node, &held);
                }
            }
        }
        if let Some((node, lease)) = freed {
            self.give_cpus(&node, lease);
        }
        let mut lineage = None;
        if let Some(t) = self.tasks.get(&id) {
            let us = result.exec_micros as f64;
            self.run_micros
                .entry(function_id)
                .and_modify(|m| *m = 0.8 * *m + 0.2 * us)
                .or_insert(us);
            let plain = t.spec.actor_id == 0 && t.spec.create.is_none() && t.spec.num_returns <= 1;
            if plain && matches!(payload, Payload::Stored(_)) {
                lineage = Some(Box::new(t.full_spec()));
            }
        }
        let payload = match self.finish_attempt(id, payload) {
            Some(p) => p,
            None => return, // retried (retry_on_error)
        };
        self.stash_returns(id, result.more_returns);
        self.complete(id, payload, result.nested_refs);
        if let Some(o) = self.objects.get_mut(&id) {
            o.set_lineage(lineage);
        }
    }

    pub(super) fn worker_connected(&mut self, client: u32, hello: &proto::Hello) {
        let (worker_id, pid, node, job) =
            (hello.worker_id, hello.pid, hello.node.clone(), hello.job);
        let node_label = Arc::from(node.as_str());
        self.worker_started(&node, job, true);
        self.workers.insert(
            client,
            Worker {
                worker_id,
                pid,
                queue: VecDeque::new(),
                lease: 0.0,
                function: self.no_function.clone(),
                function_id: 0,
                blocked: false,
                actors: 0,
                node,
                node_label,
                job,
                busy_since: 0,
                held: Vec::new(),
                direct_address: hello.direct_address.clone(),
                direct_running: None,
            },
        );
        self.pace_summaries();
    }

    /// A worker's session ended: its running task is retried or fails with
    /// `WorkerDied`; tasks queued behind it had not started and go back.
    pub(super) fn worker_lost(&mut self, client: u32, w: Worker) {
        self.pace_summaries();
        self.lease_worker_lost(client, &w);
        if !w.blocked {
            self.give_cpus(&w.node, w.lease);
        }
        self.give_resources(&w.node, &w.held);
        if let Some(n) = self.nodes.get_mut(&w.node) {
            n.workers = n.workers.saturating_sub(1);
        }
        self.actors_lost_with(client);
        self.log_worker_end(&w);
        let mut requeue = Vec::new();
        for (i, id) in w.queue.iter().enumerate() {
            let Some(t) = self.tasks.get_mut(id) else {
                continue;
            };
            t.worker = None;
            t.ready_at = crate::head::state::clock();
            if let Some(how) = self.control.cancelled.remove(id) {
                // Cancelled while sent there: it ends here, whatever killed it.
                let e = self.cancelled_error(*id, how);
                self.complete(*id, Payload::Error(Box::new(e)), Vec::new());
            } else if i > 0 {
                requeue.push(*id);
            } else {
                // Retried or failed once the node says how the worker died.
                self.running_task_lost(&w, *id);
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
            let (node, lease) = (w.node.clone(), w.lease);
            self.give_cpus(&node, lease);
        }
        let Some(w) = self.workers.get_mut(&client) else {
            return;
        };
        w.queue.retain(|t| !b.returned.contains(t));
        for id in b.returned.iter().rev() {
            if let Some(how) = self.control.cancelled.remove(id) {
                let e = self.cancelled_error(*id, how);
                self.complete(*id, Payload::Error(Box::new(e)), Vec::new());
                continue;
            }
            if let Some(t) = self.tasks.get_mut(id) {
                t.worker = None;
                t.ready_at = crate::head::state::clock();
                self.ready.push_front(*id);
            }
        }
    }

    pub(super) fn unblocked(&mut self, client: u32) {
        if let Some(w) = self.workers.get_mut(&client) {
            if w.blocked {
                w.blocked = false;
                // May overcommit for a moment, as a resumed task must run.
                let (node, lease) = (w.node.clone(), w.lease);
                self.take_cpus(&node, lease);
            }
        }
    }

    fn pipeline_depth(&self, function_id: u32) -> usize {
        pipeline::depth(self.run_micros.get(&function_id).copied())
    }

    /// How many tasks in a row may find no place before a dispatch pass
    /// stops: few when nothing has room (every worker's queue is as deep
    /// as its function allows, or it waits in `get`, and no node has a
    /// CPU free).
    fn scan_limit(&self) -> usize {
        let worker_room = self
            .workers
            .values()
            .any(|w| !w.blocked && w.queue.len() < self.pipeline_depth(w.function_id));
        let node_room = self
            .nodes
            .values()
            .any(|n| n.alive && n.available_cpus > EPS);
        if worker_room || node_room {
            SCAN_LIMIT
        } else {
            FULL_SCAN_LIMIT
        }
    }

    /// The node holding most of a task's large arguments, if any.
    fn preferred_node(&self, args: &[proto::Arg]) -> Option<String> {
        let mut best: Option<(&str, u64)> = None;
        for a in args.iter().filter_map(arg_ref) {
            if let Some(ObjState::Done(Payload::Stored(loc))) =
                self.objects.get(&a).map(|o| &o.state)
            {
                if best.is_none_or(|(_, size)| loc.size > size) {
                    best = Some((&loc.node, loc.size));
                }
            }
        }
        best.map(|(n, _)| n.to_string())
    }

    /// An idle worker of `job` on a node with `need` CPUs (and `res`) free,
    /// preferring `near`.
    fn idle_worker(
        &self,
        job: u32,
        need: f64,
        near: Option<&str>,
        only: &str,
        res: &[proto::Resource],
    ) -> Option<u32> {
        self.workers
            .iter()
            .filter(|(_, w)| w.job == job && w.queue.is_empty() && !w.blocked)
            .filter(|(_, w)| only.is_empty() || w.node == only)
            .filter(|(_, w)| {
                self.nodes.get(&w.node).is_some_and(|n| {
                    n.alive
                        && n.available_cpus + EPS >= need
                        && (res.is_empty() || n.resources.fits_now(res))
                })
            })
            .min_by_key(|(c, w)| (Some(w.node.as_str()) != near, **c))
            .map(|(c, _)| *c)
    }

    /// Whether some alive node (or the pinned one) has `need` CPUs and the
    /// resources `res` at all.
    fn feasible(&self, need: f64, only: &str, res: &[proto::Resource]) -> bool {
        self.nodes
            .iter()
            .filter(|(name, n)| n.alive && (only.is_empty() || *name == only))
            .any(|(_, n)| {
                n.total_cpus + EPS >= need && (res.is_empty() || n.resources.fits_total(res))
            })
    }

    /// Places ready tasks on workers, and asks for more workers where CPUs
    /// are free but no worker of the task's job is.
    ///
    /// A pass remembers the shapes of tasks that found no place: within a
    /// pass CPUs and queue slots are only taken, never given back, so the
    /// next task of such a shape is skipped at the cost of a comparison
    /// instead of a scan of every worker and node (that scan, repeated on
    /// every frame for a long queue, was most of the head's CPU per task).
    pub(super) fn dispatch(&mut self) {
        let mut skipped = Vec::new();
        let mut misses = 0;
        // How many misses in a row end the pass: decided at the first miss.
        let mut limit: Option<usize> = None;
        let mut wanted: Vec<(u32, f64, String, Vec<proto::Resource>)> = Vec::new();
        let mut stuck: Vec<Shape> = Vec::new();
        let mut feasible: Vec<(u64, String, Vec<proto::Resource>, bool)> = Vec::new();
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
            let job = task.job;
            let need = task.spec.num_cpus.max(0.0);
            let can = match feasible.iter().find(|(n, only, res, _)| {
                *n == need.to_bits()
                    && same_str(only, task.spec.node())
                    && *res == task.spec.resources()
            }) {
                Some((_, _, _, can)) => *can,
                None => {
                    let spec = &task.spec;
                    let can = self.feasible(need, spec.node(), spec.resources());
                    feasible.push((
                        need.to_bits(),
                        spec.node().to_string(),
                        spec.resources().to_vec(),
                        can,
                    ));
                    can
                }
            };
            if !can {
                // No node could ever run it: aside, so it blocks nothing;
                // back in the queue when a node joins.
                self.infeasible.push(id);
                continue;
            }
            if task.spec.create.is_some() {
                let res = task.spec.resources().to_vec();
                // Where `place_actor` looks: a worker is started there.
                let only = self.effective_node(job, need, task.spec.pins()).to_string();
                if !self.place_actor(id) {
                    skipped.push(id);
                    wanted.push((job, need, only, res));
                }
                continue;
            }
            let only = self.effective_node(job, need, task.spec.pins());
            let function_id = task.function_id;
            if let Some(s) = stuck.iter_mut().find(|s| s.fits(job, need, task, only)) {
                s.count += 1;
                skipped.push(id);
                misses += 1;
                if misses >= *limit.get_or_insert_with(|| self.scan_limit()) {
                    break;
                }
                continue;
            }
            let near = self.preferred_node(&task.spec.args);
            let res = task.spec.resources();
            let idle = self.idle_worker(job, need, near.as_deref(), only, res);
            let target = idle.or_else(|| {
                let depth = self.pipeline_depth(function_id);
                self.workers
                    .iter()
                    .filter(|(_, w)| {
                        w.job == job
                            && (only.is_empty() || w.node == only)
                            && !w.blocked
                            && w.queue.len() < depth
                            && same_function(
                                (w.function_id, &w.function),
                                (function_id, &task.function),
                            )
                            && (w.lease - need).abs() < EPS
                            && w.held == task.spec.resources()
                    })
                    .min_by_key(|(_, w)| w.queue.len())
                    .map(|(c, _)| *c)
            });
            match target {
                Some(c) => {
                    misses = 0;
                    // Most tasks declare no resources: no allocation then.
                    let res = res.to_vec();
                    if idle.is_some() {
                        let node = self.workers[&c].node_label.clone();
                        self.take_cpus(&node, need);
                        self.take_resources(&node, &res);
                    }
                    self.assign(c, id, need, res);
                }
                None => {
                    let shape = Shape {
                        job,
                        need,
                        function_id,
                        function: task.function.clone(),
                        only: only.to_string(),
                        resources: res.to_vec(),
                        count: 1,
                    };
                    stuck.push(shape);
                    skipped.push(id);
                    misses += 1;
                    if misses >= *limit.get_or_insert_with(|| self.scan_limit()) {
                        break;
                    }
                }
            }
        }
        if limit.is_some_and(|l| misses >= l) {
            // The pass was cut short: what it skipped goes behind the tasks
            // it did not reach, so those get a look next time.
            self.ready.extend(skipped);
        } else {
            for id in skipped.into_iter().rev() {
                self.ready.push_front(id);
            }
        }
        self.pump_actors();
        self.dispatch_leases();
        if self.ready.is_empty() {
            self.reap_idle();
        }
        // Start workers for what could not be placed, where CPUs are free:
        // up to one per task left waiting, and no more asking for a shape
        // once no node has room.
        let wanted = wanted
            .into_iter()
            .map(|(job, need, only, res)| (job, need, only, res, 1));
        let stuck = stuck
            .into_iter()
            .map(|s| (s.job, s.need, s.only, s.resources, s.count));
        for (job, need, only, res, count) in wanted.chain(stuck) {
            if !self.jobs.contains_key(&job) {
                continue;
            }
            for _ in 0..count {
                match self.node_for_worker(job, need, &only, &res) {
                    Some(node) => self.request_worker(&node, job),
                    None => break,
                }
            }
        }
    }

    /// With nothing waiting, idle workers beyond what a node keeps for a job
    /// (its CPUs, or the local cluster's pool) are told to exit, so a burst
    /// of zero-CPU tasks does not leave dozens of processes behind.
    fn reap_idle(&mut self) {
        let mut idle: HashMap<(u32, &str), Vec<u32>> = HashMap::new();
        for (c, w) in &self.workers {
            if w.queue.is_empty() && !w.blocked && w.actors == 0 {
                idle.entry((w.job, w.node.as_str())).or_default().push(*c);
            }
        }
        let mut reap = Vec::new();
        for ((job, node), mut clients) in idle {
            let Some(n) = self.nodes.get(node) else {
                continue;
            };
            let pool = self.jobs.get(&job).map_or(0, |j| {
                if node == self.local_node {
                    j.min_workers
                } else {
                    0
                }
            });
            let keep = pool.max(n.total_cpus.floor() as usize).max(1);
            if clients.len() > keep {
                clients.sort_unstable();
                reap.extend(clients.split_off(keep));
            }
        }
        for c in reap {
            if let Some(w) = self.workers.remove(&c) {
                if let Some(n) = self.nodes.get_mut(&w.node) {
                    n.workers = n.workers.saturating_sub(1);
                }
                tracing::debug!(pid = w.pid, "idle worker told to exit");
                self.out.reap.push(c);
                self.pace_summaries();
            }
        }
    }

    fn assign(&mut self, client: u32, id: u64, need: f64, res: Vec<proto::Resource>) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        task.worker = Some(client);
        self.scheduling_delay
            .observe(crate::head::state::clock().saturating_sub(task.ready_at) as f64 / 1e9);
        let Some(task) = self.tasks.get(&id) else {
            return;
        };
        // One copy of the spec, made as the worker receives it.
        let spec = self.resolved(task);
        let (function_id, function) = (task.function_id, task.function.clone());
        if let Some(w) = self.workers.get_mut(&client) {
            if w.queue.is_empty() {
                w.lease = need;
                w.held = res;
                w.function = function;
                w.function_id = function_id;
                self.control.busy_seq += 1;
                w.busy_since = self.control.busy_seq;
            }
            w.queue.push_back(id);
        }
        let generator = spec.generator;
        self.out.push(client, Op::Execute(Box::new(spec)));
        if generator {
            self.stream_started(client, id);
        }
    }

    /// `spec` as a worker receives it: ref arguments replaced by their
    /// values (inline) or store locations.
    pub(super) fn resolved(&self, task: &Task) -> proto::TaskSpec {
        self.resolve_args(task.full_spec())
    }

    /// `spec` with its ref arguments replaced as [`State::resolved`] does.
    pub(super) fn resolve_args(&self, mut spec: proto::TaskSpec) -> proto::TaskSpec {
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
