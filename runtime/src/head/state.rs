//! The head's cluster state: objects, tasks and workers, under one lock.
//! Every session applies a whole inbound frame under that lock and leaves
//! its outbound operations in an outbox, sent once the lock is released.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

/// The head's tables keyed by ids: with foldhash instead of the default
/// SipHash, which cost ~5% of the head's CPU per task. Ids come from the
/// head and its authenticated clients, so flooding one bucket on purpose
/// needs the cluster token (and foldhash is still seeded per process).
pub(super) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
/// A set of ids, hashed as [`FastMap`] is.
pub(super) type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

use super::actors::ActorEntry;
use super::ids::IdTable;

/// Most function names the head numbers (see [`State::intern`]).
const MAX_FUNCTION_IDS: usize = 1 << 16;

/// Whether two functions are the same: by id where both have one, else by
/// name.
pub(super) fn same_function(a: (u32, &str), b: (u32, &str)) -> bool {
    if a.0 != 0 && b.0 != 0 {
        a.0 == b.0
    } else {
        a.1 == b.1
    }
}
pub(crate) use super::nodes::{Job, Node};
use crate::proto::{self, head_op, object_value::Payload};

/// Objects the head tracks.
pub(super) struct Obj {
    pub(super) state: ObjState,
    /// Sessions holding at least one handle.
    pub(super) holders: u32,
    /// Pending tasks using it as an argument plus objects that contain it.
    pub(super) pins: u32,
    /// The first session to subscribe (0: none); usually the only one, so
    /// the others wait in `more` ([`Obj::add_subscriber`]). A `SmallVec`
    /// of two here cost 20 bytes more per queued task.
    pub(super) subscriber: u32,
    /// Logical time of the last use, for spilling the least recently used.
    pub(super) last_used: u64,
    /// Its file was moved (or is being moved) to the spill folder.
    pub(super) spilled: bool,
    /// What few objects have (dependents, nested refs, lineage): one
    /// pointer for the common object, 40 bytes less per queued task.
    pub(super) more: Option<Box<ObjMore>>,
    /// Job of the session that made it.
    pub(super) job: u32,
    /// The session that made it, while it still holds it (0: none). That
    /// hold is counted in `holders` but kept out of the session's `holds`
    /// set: a driver with a million tasks queued holds a million results,
    /// and the set cost ~19 bytes and a hash insert and remove for each.
    pub(super) creator: u32,
}

/// The rarer parts of an object ([`Obj::more`]).
#[derive(Default)]
pub(super) struct ObjMore {
    /// Sessions subscribed after `Obj::subscriber`.
    pub(super) subscribers: Vec<u32>,
    /// Tasks waiting for it.
    pub(super) dependents: smallvec::SmallVec<[u64; 1]>,
    /// Refs nested inside this object's value.
    pub(super) contains: Box<[u64]>,
    /// The task that made a stored value, to rebuild it if its node is lost.
    pub(super) lineage: Option<Box<proto::TaskSpec>>,
}

impl Obj {
    /// Its rarer parts, made on first use.
    pub(super) fn more(&mut self) -> &mut ObjMore {
        self.more.get_or_insert_with(Default::default)
    }

    /// Sends the value to `client` once it is finished.
    pub(super) fn add_subscriber(&mut self, client: u32) {
        if self.subscriber == 0 {
            self.subscriber = client;
        } else {
            self.more().subscribers.push(client);
        }
    }

    /// Whether `client` is subscribed already.
    pub(super) fn is_subscriber(&self, client: u32) -> bool {
        self.subscriber == client
            || self
                .more
                .as_ref()
                .is_some_and(|m| m.subscribers.contains(&client))
    }

    /// The subscribed sessions, now to be told; none are left.
    pub(super) fn take_subscribers(&mut self) -> smallvec::SmallVec<[u32; 2]> {
        let mut all = smallvec::SmallVec::new();
        if self.subscriber != 0 {
            all.push(std::mem::take(&mut self.subscriber));
        }
        if let Some(m) = self.more.as_mut() {
            all.extend(m.subscribers.drain(..));
        }
        all
    }

    pub(super) fn take_dependents(&mut self) -> smallvec::SmallVec<[u64; 1]> {
        self.more
            .as_mut()
            .map(|m| std::mem::take(&mut m.dependents))
            .unwrap_or_default()
    }

    /// Sets the refs nested in its value (no allocation when none).
    pub(super) fn set_contains(&mut self, refs: Vec<u64>) {
        if !refs.is_empty() || self.more.is_some() {
            self.more().contains = refs.into_boxed_slice();
        }
    }

    pub(super) fn take_contains(&mut self) -> Box<[u64]> {
        self.more
            .as_mut()
            .map(|m| std::mem::take(&mut m.contains))
            .unwrap_or_default()
    }

    /// Sets (or clears) the spec that rebuilds its value.
    pub(super) fn set_lineage(&mut self, spec: Option<Box<proto::TaskSpec>>) {
        if spec.is_some() || self.more.is_some() {
            self.more().lineage = spec;
        }
    }

    pub(super) fn take_lineage(&mut self) -> Option<Box<proto::TaskSpec>> {
        self.more.as_mut().and_then(|m| m.lineage.take())
    }
}

pub(super) enum ObjState {
    Pending,
    Done(Payload),
}

pub(super) struct Task {
    /// The spec as received, made small (`head/spec.rs`), without its
    /// function name: that is `function`, shared by every task of the
    /// function ([`State::make_task`]).
    pub(super) spec: super::spec::Spec,
    /// The function's name, shared through [`State::intern`].
    pub(super) function: Arc<str>,
    /// Its interned id (0: past the cap, compare `function`).
    pub(super) function_id: u32,
    pub(super) missing: u32,
    pub(super) retries_left: u32,
    pub(super) worker: Option<u32>,
    pub(super) job: u32,
    /// When it last became ready to run (for the scheduling delay), in
    /// nanoseconds of [`clock`]: 8 bytes where an `Instant` takes 16.
    pub(super) ready_at: u64,
}

impl Task {
    /// The spec whole again, function name included (for a worker, the
    /// lineage of a stored value, a rebuilt actor).
    pub(super) fn full_spec(&self) -> proto::TaskSpec {
        self.spec.to_proto(&self.function)
    }
}

/// Nanoseconds since the head's first reading of the clock: a monotonic
/// time small enough for every task record ([`Task::ready_at`]).
pub(super) fn clock() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

pub(super) struct Worker {
    pub(super) worker_id: u64,
    pub(super) pid: u32,
    /// Tasks sent to it, in order: the first runs, the rest wait there.
    pub(super) queue: VecDeque<u64>,
    /// CPUs it holds for the tasks in its queue.
    pub(super) lease: f64,
    /// The function its queue runs, for pipelining.
    pub(super) function: Arc<str>,
    /// Its interned id ([`State::intern`]; 0: none), so that
    /// dispatch compares numbers, not names, with every worker.
    pub(super) function_id: u32,
    /// Its running task waits in `get` and has lent its CPUs back.
    pub(super) blocked: bool,
    /// Actors it hosts.
    pub(super) actors: usize,
    pub(super) node: String,
    /// `node` shared, for task events (no string copied per result).
    pub(super) node_label: Arc<str>,
    pub(super) job: u32,
    /// When its queue last went from empty to busy (a count, not a
    /// clock): the memory monitor kills the most recently started.
    pub(super) busy_since: u64,
    /// Resources (besides CPUs) it holds for the tasks in its queue, as
    /// `lease` holds CPUs; empty for tasks that declare none.
    pub(super) held: Vec<proto::Resource>,
    /// leases: where its `Worker.Direct` service listens (`Hello`), for
    /// lease grants and `fleet list workers`; empty: it serves none.
    pub(super) direct_address: String,
    /// leases: the direct task it reported running (`DirectTask.running`)
    /// and has not reported finished: listed by `fleet list tasks`.
    pub(super) direct_running: Option<Box<DirectRunning>>,
}

/// A direct task a worker runs now (see `head/direct_done.rs`).
pub(super) struct DirectRunning {
    pub(super) task_id: u64,
    pub(super) function: Arc<str>,
}

pub(super) struct Session {
    /// Objects it holds that it did not make (see `Obj::creator`).
    pub(super) holds: FastSet<u64>,
    /// Objects whose `creator` it still is.
    pub(super) created: usize,
    /// Those of them not in its own pages of the object table (a
    /// generator's items, ids far from its run): closing the session looks
    /// at its pages and these, not at every object.
    pub(super) elsewhere: FastSet<u64>,
    /// The job its tasks belong to.
    pub(super) job: u32,
}

/// Outbound effects of applying operations.
#[derive(Default)]
pub(super) struct Outbox {
    pub(super) ops: Vec<(u32, proto::HeadOp)>,
    /// Workers to start: (node, job).
    pub(super) spawn: Vec<(String, u32)>,
    pub(super) delete: Vec<String>,
    /// Idle worker sessions to close (the worker exits).
    pub(super) reap: Vec<u32>,
    /// Store files to move to disk: (node, object, path).
    pub(super) spill: Vec<(String, u64, String)>,
    /// Work to apply after a delay (control: deaths, backoffs).
    pub(super) later: Vec<(std::time::Duration, super::scheduler::Later)>,
}

impl Outbox {
    pub(super) fn push(&mut self, client: u32, op: head_op::Op) {
        self.ops.push((client, proto::HeadOp { op: Some(op) }));
    }
}

pub(crate) struct State {
    /// Boxed, as are tasks: a table sized for a million entries has as
    /// many empty slots again, and an empty slot costs what an entry does.
    /// By id, a session's own ids densely (`head/ids.rs`).
    pub(super) objects: IdTable<Box<Obj>>,
    pub(super) tasks: IdTable<Box<Task>>,
    pub(super) ready: VecDeque<u64>,
    /// Ready tasks no node has the CPUs for (or pinned to a gone node).
    pub(super) infeasible: Vec<u64>,
    pub(super) workers: FastMap<u32, Worker>,
    pub(super) sessions: FastMap<u32, Session>,
    pub(super) nodes: FastMap<String, Node>,
    pub(super) jobs: HashMap<u32, Job>,
    /// The head's own node.
    pub(super) local_node: String,
    /// Mean run time per function id, in microseconds (names past the
    /// cap share id 0).
    pub(super) run_micros: FastMap<u32, f64>,
    /// Function names seen in submits, numbered from 1 (see
    /// [`State::intern`]).
    pub(super) function_ids: FastMap<Arc<str>, u32>,
    /// Names by id - 1, and their short forms (`observe::short`), shared
    /// by every task record and task event of the function.
    pub(super) function_names: Vec<(Arc<str>, Arc<str>)>,
    /// An empty name, shared: what an idle worker's `function` is.
    pub(super) no_function: Arc<str>,
    /// The period of direct tasks' summaries workers were last told
    /// (`head/direct_done.rs`), in milliseconds.
    pub(super) summary_every_ms: u32,
    pub(super) out: Outbox,
    pub(super) actors: HashMap<u64, ActorEntry>,
    pub(super) names: HashMap<String, u64>,
    /// Actors whose queues may have calls to send.
    pub(super) dirty_actors: Vec<u64>,
    /// Recently finished tasks, oldest first.
    pub(super) events: std::collections::VecDeque<super::observe::TaskEvent>,
    pub(super) event_seq: u64,
    /// Finished and failed counts per function.
    pub(super) finished: FastMap<String, super::observe::Finished>,
    /// Unfinished tasks per job, and the most a job may have.
    pub(super) pending: FastMap<u32, usize>,
    pub(super) max_pending: usize,
    pub(super) tick: u64,
    /// Detached actors and the jobs of their own (`head/detached.rs`).
    pub(super) detached: HashMap<u64, u32>,
    pub(super) next_detached_job: u32,
    /// Ready to sent to a worker, for `/metrics`.
    pub(super) scheduling_delay: prometheus_client::metrics::histogram::Histogram,
    /// control: cancels, dying workers, retries (head/scheduler/control.rs).
    pub(super) control: super::scheduler::Control,
    /// resources: spread round-robin (head/scheduler/resources.rs).
    pub(super) placement: super::scheduler::Placement,
}

impl State {
    pub(crate) fn new(node: String) -> Self {
        State {
            objects: IdTable::default(),
            tasks: IdTable::default(),
            ready: VecDeque::new(),
            infeasible: Vec::new(),
            workers: FastMap::default(),
            sessions: FastMap::default(),
            nodes: FastMap::default(),
            jobs: HashMap::new(),
            local_node: node,
            run_micros: FastMap::default(),
            function_ids: FastMap::default(),
            function_names: Vec::new(),
            no_function: Arc::from(""),
            summary_every_ms: super::direct_done::SUMMARY_EVERY_MS.0,
            out: Outbox::default(),
            actors: HashMap::new(),
            names: HashMap::new(),
            dirty_actors: Vec::new(),
            events: Default::default(),
            event_seq: 0,
            finished: FastMap::default(),
            pending: FastMap::default(),
            max_pending: std::env::var("FLEET_MAX_PENDING_TASKS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(10_000_000),
            tick: 0,
            detached: HashMap::new(),
            next_detached_job: 0,
            scheduling_delay: super::metrics::delay_histogram(),
            control: Default::default(),
            placement: Default::default(),
        }
    }

    /// Numbers a function name the first time a task of it is submitted.
    /// Ids are never reused; past [`MAX_FUNCTION_IDS`] names (a client
    /// sending made-up names) new ones get 0 and are compared by name.
    /// Returns the id and the shared name (a fresh one past the cap).
    pub(super) fn intern(&mut self, name: &str) -> (u32, Arc<str>) {
        if let Some(id) = self.function_ids.get(name) {
            return (*id, self.function_names[*id as usize - 1].0.clone());
        }
        let shared: Arc<str> = Arc::from(name);
        if self.function_ids.len() >= MAX_FUNCTION_IDS {
            return (0, shared);
        }
        let id = self.function_ids.len() as u32 + 1;
        self.function_ids.insert(shared.clone(), id);
        let short = Arc::from(super::observe::short(name));
        self.function_names.push((shared.clone(), short));
        (id, shared)
    }

    /// The short name (`observe::short`) of a function, shared where it
    /// has an id.
    pub(super) fn short_name(&self, id: u32, name: &str) -> Arc<str> {
        match id {
            0 => Arc::from(super::observe::short(name)),
            _ => self.function_names[id as usize - 1].1.clone(),
        }
    }

    /// A task record for `spec`: its function name moves to the shared
    /// copy, so a queued task holds no string of its own.
    pub(super) fn make_task(
        &mut self,
        spec: proto::TaskSpec,
        missing: u32,
        retries_left: u32,
        job: u32,
    ) -> Box<Task> {
        let (function_id, function) = self.intern(&spec.function);
        Box::new(Task {
            spec: super::spec::Spec::from_proto(spec),
            function,
            function_id,
            missing,
            retries_left,
            worker: None,
            job,
            ready_at: clock(),
        })
    }

    pub(super) fn take_outbox(&mut self) -> Outbox {
        std::mem::take(&mut self.out)
    }

    pub(super) fn open_session(&mut self, client: u32, job: u32) {
        self.objects.open_prefix(client);
        self.tasks.open_prefix(client);
        self.sessions.insert(
            client,
            Session {
                holds: FastSet::default(),
                created: 0,
                elsewhere: FastSet::default(),
                job,
            },
        );
    }

    pub(super) fn job_of(&self, client: u32) -> u32 {
        self.sessions
            .get(&client)
            .map(|s| s.job)
            .unwrap_or_default()
    }

    /// A session ended: its handles are released; a worker's tasks go back
    /// to the queue or fail.
    pub(super) fn close_session(&mut self, client: u32) {
        if let Some(w) = self.workers.remove(&client) {
            self.worker_lost(client, w);
        }
        if let Some(s) = self.sessions.remove(&client) {
            let mut held: Vec<u64> = s.holds.into_iter().collect();
            if s.created > 0 {
                // What it made is in its own pages, or noted as elsewhere:
                // other sessions' objects are not looked at.
                for (id, o) in self.objects.iter_prefix_mut(client) {
                    if o.creator == client {
                        // Its hold is in `holders`: released below.
                        o.creator = 0;
                        held.push(id);
                    }
                }
                for id in s.elsewhere {
                    if let Some(o) = self.objects.get_mut(&id) {
                        if o.creator == client {
                            o.creator = 0;
                            held.push(id);
                        }
                    }
                }
            }
            for id in held {
                if let Some(o) = self.objects.get_mut(&id) {
                    o.holders = o.holders.saturating_sub(1);
                    self.maybe_free(id);
                }
            }
        }
        self.consumer_gone(client);
        self.lease_session_closed(client);
        self.objects.close_prefix(client);
        self.tasks.close_prefix(client);
    }

    /// Counts for the dashboard, `fleet status` and tests.
    pub(crate) fn counts(&self) -> Counts {
        Counts {
            objects: self.objects.len(),
            tasks: self.tasks.len(),
            ready: self.ready.len(),
            workers: self.workers.len(),
            starting: self
                .nodes
                .values()
                .map(|n| n.starting.values().sum::<usize>())
                .sum(),
            worker_pids: self.workers.values().map(|w| w.pid).collect(),
            actors: self.actors.len(),
            store_used: self.nodes.get(&self.local_node).map_or(0, |n| n.store_used),
            store_capacity: self
                .nodes
                .get(&self.local_node)
                .map_or(0, |n| n.info.store_capacity),
            leased: self.leased_count(),
            leases_revoked: self.leases_revoked(),
        }
    }
}

/// A snapshot of the head's size.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    /// Objects tracked (pending or finished).
    pub objects: usize,
    /// Tasks not yet finished.
    pub tasks: usize,
    /// Tasks ready and waiting for a worker.
    pub ready: usize,
    /// Connected workers.
    pub workers: usize,
    /// Workers started and not yet connected.
    pub starting: usize,
    /// Process ids of connected workers.
    pub worker_pids: Vec<u32>,
    /// Actors known (alive, restarting or dead with handles left).
    pub actors: usize,
    /// Bytes of stored objects in shared memory (not spilled).
    pub store_used: u64,
    /// Bytes the store holds before spilling.
    pub store_capacity: u64,
    /// Workers leased to drivers, which send them tasks directly.
    pub leased: usize,
    /// Leases the head took back so far, because other work waited for
    /// their CPUs (each driver finishes what it sent first).
    pub leases_revoked: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The head keeps one `Obj` and one `Task` per queued task (a million
    /// at once in `fleet microbenchmark --scale`): these bounds keep a
    /// field added without thought from costing every queued task. (Both
    /// are boxed: malloc rounds a request of n bytes up to a chunk of
    /// (n + 8) rounded up to 16, so 80 and 128 are chunks of 96 and 144.)
    #[test]
    fn per_task_records_stay_small() {
        let sizes = [
            ("Payload", std::mem::size_of::<Payload>()),
            ("Arg", std::mem::size_of::<proto::Arg>()),
            ("Spec", std::mem::size_of::<super::super::spec::Spec>()),
            ("Obj", std::mem::size_of::<Obj>()),
            ("Task", std::mem::size_of::<Task>()),
        ];
        eprintln!("{sizes:?}");
        // Frames hold thousands of ops, each as large as the largest
        // variant: 344 and 200 bytes before hello, submit, job updates,
        // execute, welcome and run_job were boxed.
        let ops = [
            ("ClientOp", std::mem::size_of::<proto::ClientOp>()),
            ("HeadOp", std::mem::size_of::<proto::HeadOp>()),
        ];
        eprintln!("{ops:?}");
        assert!(ops[0].1 <= 112 && ops[1].1 <= 88, "{ops:?}");
        assert!(sizes[0].1 <= 40, "{sizes:?}");
        // 64 before the store location was boxed.
        assert!(sizes[1].1 <= 40, "{sizes:?}");
        // The protobuf `TaskSpec` is 208 bytes plus its function name; 96
        // before nested refs moved to `Rare`.
        assert!(sizes[2].1 <= 80, "{sizes:?}");
        // 144 before dependents, nested refs and lineage moved to `ObjMore`;
        // 104 before the second subscriber moved there too.
        assert!(sizes[3].1 <= 80, "{sizes:?}");
        // 240 (and a function name of its own) before `head/spec.rs`; 152
        // before `ready_at` became 8 bytes and `Spec` lost nested refs.
        assert!(sizes[4].1 <= 128, "{sizes:?}");
    }

    /// Dispatch compares function ids instead of names; a name gets one id
    /// for good, and names past the cap are still told apart by name.
    impl State {
        fn intern_function_id(&mut self, name: &str) -> u32 {
            self.intern(name).0
        }
    }

    #[test]
    fn function_ids_are_stable_and_capped() {
        let mut st = State::new("n".into());
        let a = st.intern_function_id("m::a");
        let b = st.intern_function_id("m::b");
        assert!(a != 0 && b != 0 && a != b);
        assert_eq!(st.intern_function_id("m::a"), a);
        assert_eq!(st.function_ids.get("m::b").copied().unwrap_or(0), b);
        assert_eq!(st.function_ids.get("m::never").copied().unwrap_or(0), 0);
        assert!(same_function((a, "m::a"), (a, "m::a")));
        assert!(!same_function((a, "m::a"), (b, "m::b")));
        for i in 0..MAX_FUNCTION_IDS {
            st.intern_function_id(&format!("flood::{i}"));
        }
        assert_eq!(st.function_ids.len(), MAX_FUNCTION_IDS);
        assert_eq!(st.intern_function_id("late::x"), 0);
        assert!(same_function((0, "late::x"), (0, "late::x")));
        assert!(!same_function((0, "late::x"), (0, "late::y")));
        assert!(!same_function((0, "late::x"), (a, "m::a")));
    }
}
