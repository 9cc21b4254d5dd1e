//! Nodes and jobs at the head. A node brings CPUs, a store and a way to
//! start workers (the head's own supervisor, or a node agent's session). A
//! job is one driver: its executable, its registry and its workers; a task
//! runs only on a worker of its own job.

use std::collections::{HashMap, HashSet};

use crate::proto::{self, head_op::Op, object_value::Payload};

use super::state::{ObjState, State};

pub(crate) struct Node {
    /// The node agent's session; `None` for the head's own node.
    pub(super) session: Option<u32>,
    pub(super) total_cpus: f64,
    pub(super) available_cpus: f64,
    pub(super) alive: bool,
    pub(super) info: proto::NodeInfo,
    /// Connected workers on this node.
    pub(super) workers: usize,
    /// Workers started per job and not yet connected.
    pub(super) starting: HashMap<u32, usize>,
    /// Jobs whose executable this node cannot run.
    pub(super) excluded: HashSet<u32>,
    /// Bytes of stored objects in its shared memory (not spilled).
    pub(super) store_used: u64,
    /// Its machine's load and memory, as its agent last reported them.
    pub(super) load: Option<proto::NodeLoad>,
    /// When it was lost; it leaves the node list a TTL later.
    pub(super) dead_since: Option<std::time::Instant>,
    /// Its agent said it stops on purpose (`ClientOp.node_leaving`): its
    /// end is a departure, not a loss.
    pub(super) leaving: bool,
    /// Memory and custom resources, total and free.
    pub(super) resources: super::scheduler::NodeResources,
}

pub(crate) struct Job {
    /// The driver's session, where its workers' output goes.
    pub(super) driver: Option<u32>,
    /// Executable content hash; `None`: the head's own executable.
    pub(super) binary: Option<String>,
    pub(super) registry: String,
    /// Workers kept alive on the head's node even when idle.
    pub(super) min_workers: usize,
    /// Direct tasks of the job its workers reported done
    /// (`head/direct_done.rs`): the head has no record of them otherwise.
    pub(super) direct_tasks: u64,
}

/// Most workers one node runs (blocked tasks can need more than its CPUs).
pub(super) fn max_workers(cpus: f64) -> usize {
    ((4.0 * cpus) as usize).max(64)
}

impl State {
    pub(crate) fn add_node(&mut self, name: String, session: Option<u32>, info: proto::NodeInfo) {
        tracing::info!(node = %name, cpus = info.num_cpus, "node joined");
        // Tasks no node could run may fit this one.
        let waiting = std::mem::take(&mut self.infeasible);
        self.ready.extend(waiting);
        let resources = super::scheduler::NodeResources::from_info(&info);
        self.nodes.insert(
            name,
            Node {
                resources,
                session,
                total_cpus: info.num_cpus,
                available_cpus: info.num_cpus,
                alive: true,
                info,
                workers: 0,
                starting: HashMap::new(),
                excluded: HashSet::new(),
                store_used: 0,
                load: None,
                dead_since: None,
                leaving: false,
            },
        );
    }

    pub(crate) fn add_job(
        &mut self,
        job: u32,
        driver: Option<u32>,
        binary: Option<String>,
        registry: String,
        min_workers: usize,
    ) {
        self.jobs.insert(
            job,
            Job {
                driver,
                binary,
                registry,
                min_workers,
                direct_tasks: 0,
            },
        );
        self.keep_pool();
    }

    pub(super) fn cpus_mut(&mut self, node: &str) -> Option<&mut f64> {
        self.nodes.get_mut(node).map(|n| &mut n.available_cpus)
    }

    pub(super) fn give_cpus(&mut self, node: &str, n: f64) {
        if let Some(c) = self.cpus_mut(node) {
            *c += n;
        }
    }

    pub(super) fn take_cpus(&mut self, node: &str, n: f64) {
        if let Some(c) = self.cpus_mut(node) {
            *c -= n;
        }
    }

    /// Starts a worker for `job` on `node`.
    pub(super) fn request_worker(&mut self, node: &str, job: u32) {
        if let Some(n) = self.nodes.get_mut(node) {
            *n.starting.entry(job).or_default() += 1;
            self.out.spawn.push((node.to_string(), job));
        }
    }

    /// A started worker connected, or failed to.
    pub(super) fn worker_started(&mut self, node: &str, job: u32, connected: bool) {
        if let Some(n) = self.nodes.get_mut(node) {
            if let Some(s) = n.starting.get_mut(&job) {
                *s = s.saturating_sub(1);
            }
            if connected {
                n.workers += 1;
            }
        }
    }

    /// The node that should start a worker for `job` to run a task needing
    /// `need` CPUs (and `res` free): free CPUs beyond the workers already
    /// starting, most first.
    pub(super) fn node_for_worker(
        &self,
        job: u32,
        need: f64,
        only: &str,
        res: &[proto::Resource],
    ) -> Option<String> {
        self.nodes
            .iter()
            .filter(|(name, n)| {
                n.alive && !n.excluded.contains(&job) && (only.is_empty() || *name == only)
            })
            .filter(|(_, n)| res.is_empty() || n.resources.fits_now(res))
            .filter(|(_, n)| {
                n.workers + n.starting.values().sum::<usize>() < max_workers(n.total_cpus)
            })
            .filter_map(|(name, n)| {
                let starting = n.starting.get(&job).copied().unwrap_or(0) as f64;
                let spare = n.available_cpus - starting * need;
                // A zero-CPU task may start a worker even on a busy node,
                // one at a time.
                let ok = if need > 0.0 {
                    spare + 1e-9 >= need
                } else {
                    starting == 0.0
                };
                ok.then_some((name, spare))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(name, _)| name.clone())
    }

    /// Keeps `min_workers` of each job on the head's node.
    pub(super) fn keep_pool(&mut self) {
        let local = self.local_node.clone();
        let Some(node) = self.nodes.get(&local) else {
            return;
        };
        let mut wanted = Vec::new();
        for (id, job) in &self.jobs {
            let have = self
                .workers
                .values()
                .filter(|w| w.job == *id && w.node == local)
                .count()
                + node.starting.get(id).copied().unwrap_or(0);
            if have < job.min_workers {
                wanted.push((*id, job.min_workers - have));
            }
        }
        for (job, n) in wanted {
            for _ in 0..n {
                self.request_worker(&local, job);
            }
        }
    }

    /// A node agent said its node stops on purpose: its session's end will
    /// be the node leaving, not a loss.
    pub(crate) fn node_leaving(&mut self, client: u32) {
        if let Some(n) = self.nodes.values_mut().find(|n| n.session == Some(client)) {
            n.leaving = true;
        }
    }

    /// A node agent reported its machine's load and memory.
    pub(crate) fn node_load(&mut self, client: u32, load: proto::NodeLoad) {
        if let Some(n) = self.nodes.values_mut().find(|n| n.session == Some(client)) {
            n.load = Some(load);
        }
    }

    /// A node agent's session ended: the node is gone. Its workers' sessions
    /// end on their own (they die with their agent); objects stored there
    /// are rebuilt from their tasks where possible, else lost.
    pub(super) fn node_lost(&mut self, name: &str) {
        let Some(n) = self.nodes.get_mut(name) else {
            return;
        };
        n.alive = false;
        n.dead_since = Some(std::time::Instant::now());
        n.available_cpus = 0.0;
        n.starting.clear();
        if n.leaving {
            tracing::info!(node = %name, "node left");
        } else {
            tracing::warn!(node = %name, "node lost");
        }
        let on_node: Vec<u64> = self
            .objects
            .iter()
            .filter(
                |(_, o)| matches!(&o.state, ObjState::Done(Payload::Stored(l)) if l.node == name),
            )
            .map(|(id, _)| id)
            .collect();
        for id in on_node {
            let lineage = self.objects.get_mut(&id).and_then(|o| o.take_lineage());
            let rebuildable = lineage.as_ref().is_some_and(|spec| {
                spec.args
                    .iter()
                    .filter_map(super::directory::arg_ref)
                    .all(|a| self.objects.contains_key(&a))
            });
            match lineage {
                Some(spec) if rebuildable && !self.tasks.contains_key(&id) => {
                    tracing::info!(object = id, "rebuilding an object lost with its node");
                    let a: Vec<u64> = spec
                        .args
                        .iter()
                        .filter_map(super::directory::arg_ref)
                        .collect();
                    self.pin_all(&a);
                    self.pin_all(&spec.nested_refs);
                    let job = self.objects.get(&id).map(|o| o.job).unwrap_or_default();
                    if let Some(o) = self.objects.get_mut(&id) {
                        o.state = ObjState::Pending;
                        o.spilled = false;
                    }
                    let retries_left = spec.max_retries;
                    let task = self.make_task(*spec, 0, retries_left, job);
                    self.tasks.insert(id, task);
                    self.ready.push_back(id);
                }
                _ => {
                    let mut e = proto::TaskError {
                        function: format!("{id:016x}"),
                        message: format!("it was stored on node {name}, which was lost"),
                        ..Default::default()
                    };
                    e.set_kind(proto::ErrorKind::ObjectLost);
                    if let Some(o) = self.objects.get_mut(&id) {
                        o.state = ObjState::Done(Payload::Error(Box::new(e)));
                    }
                }
            }
        }
    }

    /// The driver of `job` left: its workers are told to go (their session
    /// is closed) and its unfinished tasks are dropped.
    pub(super) fn job_ended(&mut self, job: u32) -> Vec<u32> {
        self.jobs.remove(&job);
        let workers: Vec<u32> = self
            .workers
            .iter()
            .filter(|(_, w)| w.job == job)
            .map(|(c, _)| *c)
            .collect();
        let tasks: Vec<u64> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.job == job)
            .map(|(id, _)| id)
            .collect();
        for id in tasks {
            let mut e = proto::TaskError {
                message: "its driver exited".into(),
                ..Default::default()
            };
            e.set_kind(proto::ErrorKind::WorkerDied);
            self.complete(id, Payload::Error(Box::new(e)), Vec::new());
        }
        for n in self.nodes.values_mut() {
            n.starting.remove(&job);
        }
        workers
    }

    /// Broadcasts a freed store file to the nodes that may hold a copy.
    pub(super) fn free_everywhere(&mut self, path: &str) {
        let name = std::path::Path::new(path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let sessions: Vec<u32> = self
            .nodes
            .values()
            .filter(|n| n.alive)
            .filter_map(|n| n.session)
            .collect();
        for s in sessions {
            self.out.push(s, Op::FreeFile(name.clone()));
        }
    }

    /// Status for `fleet status`.
    pub(crate) fn status(&self) -> proto::StatusReply {
        let running = self.tasks.values().filter(|t| t.worker.is_some()).count();
        let ready = self.ready.len();
        let mut waiting = Vec::new();
        let largest = self
            .nodes
            .values()
            .filter(|n| n.alive)
            .map(|n| n.total_cpus)
            .fold(0.0, f64::max);
        let (short, mut by_resource) = self.missing_resources();
        let too_big = self
            .infeasible
            .iter()
            .filter(|id| self.tasks.contains_key(id))
            .count()
            .saturating_sub(short);
        waiting.append(&mut by_resource);
        if too_big > 0 {
            waiting.push(format!(
                "{too_big} tasks need more CPUs than any node has (the largest has {largest}), or a node that is gone; they wait for such a node"
            ));
        }
        if ready > 0 && self.workers.is_empty() {
            waiting.push(format!("{ready} tasks wait for a worker to start"));
        }
        let wanted = self.lease_requests_waiting();
        if wanted > 0 {
            waiting.push(format!(
                "drivers wait for {wanted} more leased workers (CPUs or workers busy)"
            ));
        }
        proto::StatusReply {
            nodes: self
                .nodes
                .iter()
                .map(|(name, n)| proto::NodeStatus {
                    name: name.clone(),
                    num_cpus: n.total_cpus,
                    available_cpus: n.available_cpus,
                    workers: n.workers as u32,
                    store_used: n.store_used,
                    store_capacity: n.info.store_capacity,
                    alive: n.alive,
                    resources: n.resources.usage(),
                })
                .collect(),
            tasks_pending: (self.tasks.len() - running - ready) as u64,
            tasks_ready: ready as u64,
            tasks_running: running as u64,
            objects: self.objects.len() as u64,
            actors: self.actors.len() as u32,
            drivers: self.jobs.len() as u32,
            waiting,
            // Filled by the head, which owns the autoscaler.
            autoscale: None,
            leases: self
                .leases_by_job()
                .into_iter()
                .map(|(job, n)| format!("job {job}: {n} workers"))
                .collect(),
        }
    }
}
