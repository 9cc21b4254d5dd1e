//! The autoscaler: one decision loop in the head that asks a provider
//! (Slurm, or any command) for node jobs when ready tasks have waited for
//! CPUs too long, and gives back nodes that stayed idle, as
//! dask-jobqueue's adaptive clusters and Ray's autoscaler do.
//!
//! Demand is the CPUs of ready tasks that no free CPU can take. Supply is
//! the node jobs asked for: requested, pending in the provider's queue,
//! running, joined. A job that has not started yet counts as coming, so a
//! long Slurm queue never makes the head ask again and again.

mod command;
mod demand;
mod process;
mod slurm;

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::Head;
use crate::proto;
use demand::{demand, Demand};

/// Decisions remembered for `fleet status` and the dashboard.
const EVENTS_KEPT: usize = 200;

/// Most often the provider's queue is asked about jobs not yet joined.
const QUEUE_EVERY: Duration = Duration::from_secs(2);

/// A command-started node that has not joined after this long is
/// forgotten (its command cannot be asked whether it is still coming).
const COMMAND_JOIN_TIMEOUT: Duration = Duration::from_secs(300);

/// Where node jobs come from.
#[derive(Clone, Debug)]
pub enum ProviderKind {
    /// `sbatch` a one-node job running `fleet start --address …`; `scancel`
    /// it when idle.
    Slurm {
        /// More `sbatch` arguments (`--slurm-args`, already split).
        args: Vec<String>,
    },
    /// Run `scale_up` for each node wanted, `scale_down` for each node
    /// given back. Both run with `sh -c` after `{job}`, `{node}`,
    /// `{address}` and `{count}` are replaced.
    Command {
        /// Starts one node.
        scale_up: String,
        /// Stops the node `{node}`.
        scale_down: String,
    },
}

/// How the head's autoscaler decides (`fleet start --head --autoscale …`).
#[derive(Clone, Debug)]
pub struct AutoscaleOptions {
    /// The provider and its settings.
    pub provider: ProviderKind,
    /// Node jobs kept even when idle.
    pub min_nodes: u32,
    /// Node jobs never exceeded, whatever the demand.
    pub max_nodes: u32,
    /// How long ready tasks wait for CPUs before nodes are asked for.
    pub upscale_after: Duration,
    /// How long a node stays idle before it is given back.
    pub idle_timeout: Duration,
    /// CPUs one node job brings, to size a request (default: what the
    /// joined ones brought, else 1).
    pub node_cpus: Option<f64>,
    /// Time between two decisions.
    pub interval: Duration,
}

/// What the provider says of one job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// In the queue, not started.
    Pending,
    /// Started.
    Running,
}

/// One source of nodes. Implementations run external programs; they are
/// called from the autoscaler's own thread, never under the head's lock.
pub(crate) trait Provider: Send {
    /// "slurm" or "command".
    fn name(&self) -> &'static str;
    /// Asks for one node whose agent will carry `FLEET_NODE_JOB=id`;
    /// returns the provider's id for it, if it has one.
    fn submit(&mut self, id: &str, count: usize) -> Result<String, String>;
    /// The jobs the provider still has, by its id; `None`: it cannot tell
    /// (a command), or asking failed this time.
    fn poll(&mut self) -> Option<std::collections::HashMap<String, Phase>>;
    /// Gives the job's node back.
    fn cancel(&mut self, job: &NodeJob, count: usize) -> Result<(), String>;
}

/// Where a node job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum JobState {
    /// Asked for; the provider has not said more.
    Requested,
    /// In the provider's queue.
    Pending,
    /// Started, its node not yet in the cluster.
    Running,
    /// Its node is in the cluster.
    Joined,
}

/// One node job the autoscaler asked for.
#[derive(Clone, Debug)]
pub(crate) struct NodeJob {
    pub(crate) id: String,
    pub(crate) external: String,
    pub(crate) state: JobState,
    pub(crate) node: Option<String>,
    pub(crate) since: Instant,
    /// When its node last became idle.
    pub(crate) idle_since: Option<Instant>,
}

struct Inner {
    jobs: Vec<NodeJob>,
    events: VecDeque<String>,
    next_id: u64,
    /// Since when demand has been unmet.
    demand_since: Option<Instant>,
    /// When the provider's queue was last asked.
    last_poll: Option<Instant>,
    /// Since when no demand has been unmet.
    satisfied_since: Option<Instant>,
    /// Every node seen so far: a node without a job id is taken as a
    /// command's node only when it is new.
    seen: std::collections::HashSet<String>,
}

/// The head's autoscaler: its jobs and decisions.
pub(crate) struct Autoscaler {
    opts: AutoscaleOptions,
    provider: Mutex<Box<dyn Provider>>,
    inner: Mutex<Inner>,
    started: Instant,
    /// What `fleet status` and the dashboard see, as of the last decision:
    /// they never wait for a provider's program.
    published: Mutex<proto::AutoscaleStatus>,
}

/// What providers need to start a node that joins this head.
pub(crate) struct Launch {
    pub(crate) address: String,
    pub(crate) token: String,
    /// The `fleet` executable node jobs run (the head's own).
    pub(crate) fleet_bin: std::path::PathBuf,
}

impl Autoscaler {
    /// Starts the decision loop of `head`; it ends when the head goes.
    pub(crate) fn start(
        head: &Arc<Head>,
        opts: AutoscaleOptions,
        launch: Launch,
    ) -> crate::Result<Arc<Autoscaler>> {
        if opts.max_nodes < opts.min_nodes {
            return Err(crate::Error::Startup(format!(
                "--max-nodes {} is below --min-nodes {}: raise --max-nodes",
                opts.max_nodes, opts.min_nodes
            )));
        }
        let provider: Box<dyn Provider> = match &opts.provider {
            ProviderKind::Slurm { args } => Box::new(slurm::Slurm::new(args.clone(), launch)?),
            ProviderKind::Command {
                scale_up,
                scale_down,
            } => Box::new(command::Command::new(
                scale_up.clone(),
                scale_down.clone(),
                launch,
            )?),
        };
        let scaler = Arc::new(Autoscaler {
            opts,
            provider: Mutex::new(provider),
            inner: Mutex::new(Inner {
                jobs: Vec::new(),
                events: VecDeque::new(),
                next_id: 1,
                demand_since: None,
                satisfied_since: None,
                last_poll: None,
                seen: std::collections::HashSet::new(),
            }),
            started: Instant::now(),
            published: Mutex::new(proto::AutoscaleStatus::default()),
        });
        scaler.publish(&scaler.inner.lock());
        let weak: Weak<Head> = Arc::downgrade(head);
        let me = scaler.clone();
        std::thread::Builder::new()
            .name("fleet-autoscaler".into())
            .spawn(move || loop {
                std::thread::sleep(me.opts.interval);
                let Some(head) = weak.upgrade() else { return };
                if head.stopping.load(std::sync::atomic::Ordering::Acquire) {
                    return;
                }
                let demand = demand(&head, &me.opts);
                drop(head);
                me.decide(demand);
            })
            .map_err(|e| crate::Error::Startup(format!("starting the autoscaler: {e}")))?;
        Ok(scaler)
    }

    fn event(&self, inner: &mut Inner, what: String) {
        let line = format!("+{:.1}s {what}", self.started.elapsed().as_secs_f64());
        tracing::info!("autoscaler: {what}");
        if inner.events.len() >= EVENTS_KEPT {
            inner.events.pop_front();
        }
        inner.events.push_back(line);
    }

    /// One decision: learn what became of the jobs, then ask for nodes or
    /// give idle ones back.
    fn decide(&self, demand: Demand) {
        let mut provider = self.provider.lock();
        let mut inner = self.inner.lock();
        // The provider's queue is asked only while some job has not joined
        // (a joined one is followed through its node), and at most every
        // QUEUE_EVERY: squeue loads the Slurm controller.
        let coming = inner.jobs.iter().any(|j| j.node.is_none());
        let due = inner
            .last_poll
            .is_none_or(|t| t.elapsed() >= QUEUE_EVERY.max(self.opts.interval));
        let queue = if coming && due {
            inner.last_poll = Some(Instant::now());
            provider.poll()
        } else {
            None
        };
        self.decide_locked(&mut **provider, &mut inner, demand, queue);
        self.publish(&inner);
    }

    fn decide_locked(
        &self,
        provider: &mut dyn Provider,
        inner: &mut Inner,
        demand: Demand,
        queue: Option<std::collections::HashMap<String, Phase>>,
    ) {
        let now = Instant::now();
        self.follow_jobs(inner, &demand, queue, now);

        // Asking for nodes.
        if demand.unmet_cpus > 1e-9 {
            inner.demand_since.get_or_insert(now);
        } else {
            inner.demand_since = None;
        }
        let node_cpus = self.node_cpus(inner, &demand);
        let waited = inner
            .demand_since
            .is_some_and(|t| now.duration_since(t) >= self.opts.upscale_after);
        let mut wanted = 0usize;
        let mut coming = 0usize;
        if waited {
            let needed = (demand.unmet_cpus / node_cpus).ceil() as usize;
            coming = inner
                .jobs
                .iter()
                .filter(|j| j.state != JobState::Joined)
                .count();
            wanted = needed.saturating_sub(coming);
        }
        let room = (self.opts.max_nodes as usize).saturating_sub(inner.jobs.len());
        let below_min = (self.opts.min_nodes as usize).saturating_sub(inner.jobs.len());
        let ask = wanted.min(room).max(below_min);
        if wanted.min(room) > 0 {
            let why = format!(
                "{:.0} CPUs of ready tasks waited {:.1}s, {coming} node jobs coming: asking for {}",
                demand.unmet_cpus,
                inner
                    .demand_since
                    .map_or(0.0, |t| now.duration_since(t).as_secs_f64()),
                wanted.min(room)
            );
            self.event(inner, why);
        }
        for _ in 0..ask {
            let id = inner.next_id.to_string();
            inner.next_id += 1;
            let count = inner.jobs.len() + 1;
            match provider.submit(&id, count) {
                Ok(external) => {
                    let what = if external.is_empty() {
                        format!("asked for node job {id}")
                    } else {
                        format!(
                            "submitted node job {id} ({} job {external})",
                            provider.name()
                        )
                    };
                    self.event(inner, what);
                    inner.jobs.push(NodeJob {
                        id,
                        external,
                        state: JobState::Requested,
                        node: None,
                        since: now,
                        idle_since: None,
                    });
                }
                Err(e) => {
                    self.event(inner, format!("asking for node job {id} failed: {e}"));
                    break;
                }
            }
        }
        if wanted > 0 && ask > 0 {
            // The next request waits for a fresh wait of the demand.
            inner.demand_since = Some(now);
        }

        // Giving idle nodes back (never while demand is unmet).
        if demand.unmet_cpus > 1e-9 {
            inner.satisfied_since = None;
            return;
        }
        let satisfied = now.duration_since(*inner.satisfied_since.get_or_insert(now));
        let mut keep = inner.jobs.len();
        let mut cancel = Vec::new();
        // Jobs still queued once nothing has waited for a while would only
        // start to sit idle: withdrawn first (only a provider with a queue
        // can withdraw one).
        for j in inner.jobs.iter().rev() {
            if keep <= self.opts.min_nodes as usize || satisfied < self.opts.idle_timeout {
                break;
            }
            if matches!(j.state, JobState::Requested | JobState::Pending) && !j.external.is_empty()
            {
                cancel.push(j.id.clone());
                keep -= 1;
            }
        }
        for j in inner.jobs.iter() {
            if keep <= self.opts.min_nodes as usize {
                break;
            }
            if j.state == JobState::Joined
                && j.idle_since
                    .is_some_and(|t| now.duration_since(t) >= self.opts.idle_timeout)
            {
                cancel.push(j.id.clone());
                keep -= 1;
            }
        }
        for id in cancel {
            let Some(pos) = inner.jobs.iter().position(|j| j.id == id) else {
                continue;
            };
            let job = inner.jobs.remove(pos);
            let count = inner.jobs.len();
            let node = job.node.clone().unwrap_or_default();
            let idle = job
                .idle_since
                .map_or(0.0, |t| now.duration_since(t).as_secs_f64());
            let why = if job.node.is_some() {
                format!("node {node} idle {idle:.1}s")
            } else {
                format!(
                    "no task waited for {:.1}s and it has not started",
                    satisfied.as_secs_f64()
                )
            };
            match provider.cancel(&job, count) {
                Ok(()) => self.event(inner, format!("{why}: cancelled node job {id}")),
                Err(e) => {
                    self.event(
                        inner,
                        format!("cancelling node job {id} (node {node}) failed: {e}"),
                    );
                    inner.jobs.push(job);
                }
            }
        }
    }

    /// CPUs one more node job is expected to bring.
    fn node_cpus(&self, inner: &Inner, demand: &Demand) -> f64 {
        if let Some(n) = self.opts.node_cpus.filter(|n| *n > 0.0) {
            return n;
        }
        inner
            .jobs
            .iter()
            .filter_map(|j| j.node.as_ref())
            .filter_map(|n| demand.nodes.iter().find(|v| v.name == *n))
            .map(|v| v.cpus)
            .fold(0.0, f64::max)
            .max(1.0)
    }

    /// Updates every job from the provider's queue and the head's nodes.
    fn follow_jobs(
        &self,
        inner: &mut Inner,
        demand: &Demand,
        queue: Option<std::collections::HashMap<String, Phase>>,
        now: Instant,
    ) {
        let mut events = Vec::new();
        // Joins: a node carrying a job's id, or else (commands that cannot
        // pass it on, e.g. `kubectl scale`) any new node, oldest job first.
        for v in demand.nodes.iter().filter(|v| v.alive && !v.local) {
            let new = inner.seen.insert(v.name.clone());
            if inner
                .jobs
                .iter()
                .any(|j| j.node.as_deref() == Some(&v.name))
            {
                continue;
            }
            let job = if v.node_job.is_empty() {
                // Nodes started by hand were there before; a new one is
                // the oldest command's that has not joined.
                inner
                    .jobs
                    .iter_mut()
                    .filter(|j| new && j.external.is_empty() && j.node.is_none())
                    .min_by_key(|j| j.since)
            } else {
                inner.jobs.iter_mut().find(|j| j.id == v.node_job)
            };
            if let Some(j) = job.filter(|j| j.node.is_none()) {
                j.node = Some(v.name.clone());
                j.state = JobState::Joined;
                events.push(format!("node job {} joined as node {}", j.id, v.name));
            }
        }
        let mut gone = Vec::new();
        for j in inner.jobs.iter_mut() {
            if let Some(node) = &j.node {
                let view = demand.nodes.iter().find(|v| v.name == *node);
                match view {
                    Some(v) if v.alive => {
                        if v.idle {
                            j.idle_since.get_or_insert(now);
                        } else {
                            j.idle_since = None;
                        }
                    }
                    _ => {
                        gone.push(j.id.clone());
                        events.push(format!("node {node} of node job {} left", j.id));
                    }
                }
                continue;
            }
            match (&queue, j.external.is_empty()) {
                (Some(q), false) => match q.get(&j.external) {
                    Some(Phase::Pending) if j.state != JobState::Pending => {
                        j.state = JobState::Pending;
                        events.push(format!("node job {} pending", j.id));
                    }
                    Some(Phase::Running) if j.state != JobState::Running => {
                        j.state = JobState::Running;
                        events.push(format!("node job {} running", j.id));
                    }
                    Some(_) => {}
                    None => {
                        gone.push(j.id.clone());
                        events.push(format!("node job {} ended before its node joined", j.id));
                    }
                },
                _ => {
                    if j.external.is_empty() && now.duration_since(j.since) > COMMAND_JOIN_TIMEOUT {
                        gone.push(j.id.clone());
                        events.push(format!(
                            "node job {} did not join within {COMMAND_JOIN_TIMEOUT:?}; forgotten",
                            j.id
                        ));
                    }
                }
            }
        }
        inner.jobs.retain(|j| !gone.contains(&j.id));
        for e in events {
            self.event(inner, e);
        }
    }

    /// Gives every node back: the head is stopping.
    pub(crate) fn shutdown(&self) {
        let mut provider = self.provider.lock();
        let mut inner = self.inner.lock();
        let jobs = std::mem::take(&mut inner.jobs);
        for (i, job) in jobs.iter().enumerate() {
            let left = jobs.len() - i - 1;
            match provider.cancel(job, left) {
                Ok(()) => self.event(
                    &mut inner,
                    format!("head stopping: cancelled node job {}", job.id),
                ),
                Err(e) => self.event(
                    &mut inner,
                    format!("head stopping: cancelling node job {} failed: {e}", job.id),
                ),
            }
        }
        self.publish(&inner);
    }

    /// For `fleet status` and the dashboard, as of the last decision.
    pub(crate) fn status(&self) -> proto::AutoscaleStatus {
        self.published.lock().clone()
    }

    fn publish(&self, inner: &Inner) {
        *self.published.lock() = self.report(inner);
    }

    fn report(&self, inner: &Inner) -> proto::AutoscaleStatus {
        let now = Instant::now();
        let started = |j: &&NodeJob| matches!(j.state, JobState::Running | JobState::Joined);
        proto::AutoscaleStatus {
            provider: match self.opts.provider {
                ProviderKind::Slurm { .. } => "slurm".into(),
                ProviderKind::Command { .. } => "command".into(),
            },
            requested: inner.jobs.len() as u32,
            pending: inner.jobs.iter().filter(|j| !started(j)).count() as u32,
            running: inner.jobs.iter().filter(started).count() as u32,
            min_nodes: self.opts.min_nodes,
            max_nodes: self.opts.max_nodes,
            jobs: inner
                .jobs
                .iter()
                .map(|j| proto::NodeJob {
                    id: j.id.clone(),
                    external_id: j.external.clone(),
                    state: match (j.state, j.idle_since) {
                        (JobState::Requested, _) => "requested",
                        (JobState::Pending, _) => "pending",
                        (JobState::Running, _) => "running",
                        (JobState::Joined, Some(_)) => "idle",
                        (JobState::Joined, None) => "joined",
                    }
                    .into(),
                    node: j.node.clone().unwrap_or_default(),
                    age_secs: now.duration_since(j.since).as_secs_f64(),
                })
                .collect(),
            events: inner.events.iter().cloned().collect(),
        }
    }
}

/// The autoscaler's part of `/metrics`: node jobs requested, and of those
/// pending and running. Zeros without an autoscaler, so dashboards built on
/// them work on every head.
pub(crate) fn metric_families(
    status: Option<&proto::AutoscaleStatus>,
) -> Vec<super::metrics::Family> {
    use super::metrics::Family;
    let (requested, pending, running) =
        status.map_or((0, 0, 0), |a| (a.requested, a.pending, a.running));
    vec![
        Family::gauge(
            "autoscaler_node_jobs_requested",
            "Node jobs the autoscaler asked for and has not given back",
        )
        .with(Vec::new(), f64::from(requested)),
        Family::gauge(
            "autoscaler_node_jobs",
            "The autoscaler's node jobs: pending (queued, or not joined yet) or running",
        )
        .with(vec![("state", "pending".into())], f64::from(pending))
        .with(vec![("state", "running".into())], f64::from(running)),
    ]
}
