//! What the head shows of the work: recent task events (the task stream),
//! snapshots for the dashboard and `/api`, and Chrome traces.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;

use super::actors::Life;
use super::state::{ObjState, State};
use crate::proto::object_value::Payload;

/// Finished tasks remembered for the task stream and timelines.
pub(crate) const EVENTS_KEPT: usize = 20_000;

/// One finished task or actor call.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct TaskEvent {
    /// Order of arrival at the head; `/api/snapshot?since=` counts on it.
    pub(crate) seq: u64,
    /// Shown as 16 hex digits; formatted only when a snapshot is sent,
    /// not on the head's path for every finished task.
    #[serde(serialize_with = "hex_id")]
    pub(crate) id: u64,
    /// Shared with every event of the function (no string per event).
    #[serde(serialize_with = "shared_str")]
    pub(crate) function: Arc<str>,
    /// Shared with its worker's record.
    #[serde(serialize_with = "shared_str")]
    pub(crate) node: Arc<str>,
    pub(crate) pid: u32,
    /// Start, microseconds since the Unix epoch (as the worker saw it).
    pub(crate) start_us: u64,
    pub(crate) dur_us: u64,
    pub(crate) ok: bool,
}

fn shared_str<S: serde::Serializer>(v: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v)
}

fn hex_id<S: serde::Serializer>(id: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{id:016x}"))
}

/// Finished and failed counts of one function, and its run times.
#[derive(Clone, Debug)]
pub(crate) struct Finished {
    pub(crate) finished: u64,
    pub(crate) failed: u64,
    /// For `/metrics` (`head/metrics.rs`).
    pub(crate) run_seconds: prometheus_client::metrics::histogram::Histogram,
}

impl Default for Finished {
    fn default() -> Self {
        Finished {
            finished: 0,
            failed: 0,
            run_seconds: super::metrics::run_time_histogram(),
        }
    }
}

#[derive(Serialize)]
struct NodeView {
    name: String,
    alive: bool,
    num_cpus: f64,
    available_cpus: f64,
    workers: usize,
    store_capacity: u64,
    store_used: u64,
    spilled_objects: usize,
    /// 1-minute load average and memory of the node's machine.
    load: Option<f64>,
    mem_used_bytes: Option<u64>,
    mem_total_bytes: Option<u64>,
    /// Memory and custom resources: what it has and what tasks and
    /// actors reserve now.
    resources: Vec<ResourceView>,
}

#[derive(Serialize)]
struct ResourceView {
    name: String,
    total: f64,
    used: f64,
}

#[derive(Serialize)]
struct WorkerView {
    pid: u32,
    node: String,
    job: u32,
    state: &'static str,
    function: String,
    queued: usize,
    actors: usize,
}

#[derive(Default, Serialize)]
struct FunctionView {
    name: String,
    waiting: u64,
    ready: u64,
    running: u64,
    finished: u64,
    failed: u64,
}

#[derive(Serialize)]
struct ActorView {
    id: String,
    class: String,
    name: String,
    state: &'static str,
    restarts: u32,
    node: String,
}

#[derive(Serialize)]
struct TaskCounts {
    waiting: u64,
    ready: u64,
    running: u64,
    finished: u64,
    failed: u64,
    /// Tasks and actor calls cancelled (`fleet::cancel`, with the tasks
    /// they submitted).
    cancelled: u64,
}

impl Snapshot {
    /// The newest task event it covers.
    pub(crate) fn last_seq(&self) -> u64 {
        self.last_seq
    }
}

/// Everything the dashboard shows, as `/api/snapshot` returns it.
#[derive(Serialize)]
pub(crate) struct Snapshot {
    now_us: u64,
    last_seq: u64,
    nodes: Vec<NodeView>,
    workers: Vec<WorkerView>,
    tasks: TaskCounts,
    functions: Vec<FunctionView>,
    latest: Vec<TaskEvent>,
    stream: Vec<TaskEvent>,
    objects: usize,
    actors: Vec<ActorView>,
    drivers: usize,
    /// The autoscaler's node jobs (absent without `--autoscale`); set by
    /// the head, which owns the autoscaler.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) autoscale: Option<serde_json::Value>,
}

pub(crate) fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

/// The function's own name, without its module path.
pub(crate) fn short(function: &str) -> &str {
    let mut parts = function.rsplit("::");
    match (parts.next(), parts.next()) {
        (Some(method), Some(class)) if class.chars().next().is_some_and(char::is_uppercase) => {
            &function[function.len() - method.len() - class.len() - 2..]
        }
        (Some(f), _) => f,
        _ => function,
    }
}

/// Used and total memory of this machine (`/proc/meminfo`).
pub(crate) fn meminfo() -> (Option<u64>, Option<u64>) {
    let Ok(text) = std::fs::read_to_string("/proc/meminfo") else {
        return (None, None);
    };
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    let total = field("MemTotal:");
    let available = field("MemAvailable:");
    (total.zip(available).map(|(t, a)| t - a), total)
}

/// The 1-minute load average of this machine (`/proc/loadavg`).
pub(crate) fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl State {
    /// Records a finished task for the task stream.
    pub(super) fn record(
        &mut self,
        (node, pid): (Arc<str>, u32),
        id: u64,
        (function_id, function): (u32, &str),
        ok: bool,
        start_us: u64,
        dur_us: u64,
    ) {
        let name = self.short_name(function_id, function);
        if !self.finished.contains_key(&*name) {
            self.finished.insert(name.to_string(), Default::default());
        }
        let Some(counts) = self.finished.get_mut(&*name) else {
            return;
        };
        if ok {
            counts.finished += 1;
        } else {
            counts.failed += 1;
        }
        // A task whose worker died has no run time.
        if ok || dur_us > 0 {
            counts.run_seconds.observe(dur_us as f64 / 1e6);
        }
        self.event_seq += 1;
        if self.events.len() >= EVENTS_KEPT {
            self.events.pop_front();
        }
        self.events.push_back(TaskEvent {
            seq: self.event_seq,
            id,
            function: name,
            node,
            pid,
            start_us,
            dur_us,
            ok,
        });
    }

    /// The dashboard's view; `stream` holds events after `since`.
    pub(crate) fn snapshot(&self, since: u64) -> Snapshot {
        let mut functions: BTreeMap<String, FunctionView> = BTreeMap::new();
        let mut tasks = TaskCounts {
            waiting: 0,
            ready: 0,
            running: 0,
            finished: 0,
            failed: 0,
            cancelled: self.control.cancelled_total,
        };
        for t in self.tasks.values() {
            let f = functions.entry(short(&t.function).to_string()).or_default();
            if t.worker.is_some() {
                f.running += 1;
                tasks.running += 1;
            } else if t.missing > 0 {
                f.waiting += 1;
                tasks.waiting += 1;
            } else {
                f.ready += 1;
                tasks.ready += 1;
            }
        }
        // leases: a worker leased to a driver runs its direct tasks, which
        // the head hears of only once done: at least one each.
        tasks.running += self.leased_count() as u64;
        // Those reported running (long ones) are shown by function too.
        for r in self
            .workers
            .values()
            .filter_map(|w| w.direct_running.as_ref())
        {
            functions
                .entry(short(&r.function).to_string())
                .or_default()
                .running += 1;
        }
        for (name, c) in &self.finished {
            let f = functions.entry(name.clone()).or_default();
            f.finished = c.finished;
            f.failed = c.failed;
            tasks.finished += c.finished;
            tasks.failed += c.failed;
        }
        let mut spilled: HashMap<&str, usize> = HashMap::new();
        for o in self.objects.values() {
            if let (true, ObjState::Done(Payload::Stored(l))) = (o.spilled, &o.state) {
                *spilled.entry(l.node.as_str()).or_default() += 1;
            }
        }
        let (mem_used, mem_total) = meminfo();
        let nodes = self
            .nodes
            .iter()
            .map(|(name, n)| {
                let local = *name == self.local_node;
                NodeView {
                    name: name.clone(),
                    alive: n.alive,
                    num_cpus: n.total_cpus,
                    available_cpus: n.available_cpus,
                    workers: n.workers,
                    store_capacity: n.info.store_capacity,
                    store_used: n.store_used,
                    spilled_objects: spilled.get(name.as_str()).copied().unwrap_or(0),
                    // The head's node: read here; the others: as their
                    // agent last reported it.
                    load: if local {
                        loadavg()
                    } else {
                        n.load.as_ref().map(|l| l.load)
                    },
                    mem_used_bytes: if local {
                        mem_used
                    } else {
                        n.load.as_ref().map(|l| l.mem_used_bytes)
                    },
                    mem_total_bytes: if local {
                        mem_total
                    } else {
                        n.load.as_ref().map(|l| l.mem_total_bytes)
                    },
                    resources: n
                        .resources
                        .usage()
                        .into_iter()
                        .map(|r| ResourceView {
                            used: (r.total - r.available).max(0.0),
                            name: r.name,
                            total: r.total,
                        })
                        .collect(),
                }
            })
            .collect();
        let workers = self
            .workers
            .values()
            .map(|w| WorkerView {
                pid: w.pid,
                node: w.node.clone(),
                job: w.job,
                state: if w.blocked {
                    "blocked"
                } else if w.queue.is_empty() {
                    "idle"
                } else {
                    "busy"
                },
                function: short(&w.function).to_string(),
                queued: w.queue.len(),
                actors: w.actors,
            })
            .collect();
        let actors = self
            .actors
            .iter()
            .take(500)
            .map(|(id, a)| {
                let opts = a.create.create.clone().unwrap_or_default();
                ActorView {
                    id: format!("{id:016x}"),
                    class: short(&opts.class).to_string(),
                    name: opts.name,
                    state: match a.life {
                        Life::Pending => "pending",
                        Life::Creating => "creating",
                        Life::Alive => "alive",
                        Life::Dead(_) => "dead",
                    },
                    restarts: opts.max_restarts - a.restarts_left,
                    node: a.holds_cpus.clone().unwrap_or_else(|| {
                        a.worker
                            .and_then(|w| self.workers.get(&w))
                            .map(|w| w.node.clone())
                            .unwrap_or_default()
                    }),
                }
            })
            .collect();
        let stream: Vec<TaskEvent> = self
            .events
            .iter()
            .rev()
            .take_while(|e| e.seq > since)
            .take(5000)
            .cloned()
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        Snapshot {
            now_us: now_us(),
            last_seq: self.event_seq,
            nodes,
            workers,
            tasks,
            functions: functions
                .into_iter()
                .map(|(name, mut f)| {
                    f.name = name;
                    f
                })
                .collect(),
            latest: self.events.iter().rev().take(50).cloned().collect(),
            stream,
            objects: self.objects.len(),
            actors,
            drivers: self.jobs.values().filter(|j| j.driver.is_some()).count(),
            autoscale: None,
        }
    }

    /// Recent tasks as a Chrome trace: one process per node, one thread
    /// per worker, one complete event per task.
    pub(crate) fn chrome_trace(&self) -> serde_json::Value {
        let mut nodes: Vec<&str> = self.events.iter().map(|e| &*e.node).collect();
        nodes.sort_unstable();
        nodes.dedup();
        let index = |n: &str| nodes.iter().position(|x| *x == n).unwrap_or(0) + 1;
        let mut events: Vec<serde_json::Value> = nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "name": "process_name", "ph": "M", "pid": index(n), "tid": 0,
                    "args": { "name": format!("node {n}") }
                })
            })
            .collect();
        events.extend(self.events.iter().map(|e| {
            serde_json::json!({
                "name": &*e.function,
                "cat": if e.ok { "task" } else { "task,failed" },
                "ph": "X",
                "ts": e.start_us,
                "dur": e.dur_us.max(1),
                "pid": index(&e.node),
                "tid": e.pid,
                "args": { "id": format!("{:016x}", e.id), "ok": e.ok, "worker_pid": e.pid },
            })
        }));
        serde_json::json!({ "traceEvents": events, "displayTimeUnit": "ms" })
    }
}
