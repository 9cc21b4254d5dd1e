//! The head: cluster state, scheduler and object directory behind one gRPC
//! service. A local cluster runs it inside the driver's process; `fleet
//! start --head` runs it in the `fleet` process.

mod actors;
pub(crate) mod autoscale;
mod dashboard;
mod detached;
mod direct_done;
mod directory;
mod ids;
mod jobs;
mod metrics;
mod nodes;
pub(crate) mod observe;
pub(crate) mod rejoin;
mod scheduler;
mod service;
mod session;
mod spec;
mod spilling;
pub(crate) mod state;
mod state_api;
#[cfg(test)]
mod test_cluster;
mod worker_logs;
mod workers;

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

use crate::node::object_store::ObjectStore;
use crate::node::supervisor::Supervisor;
use crate::proto::{self, client_op::Op, head_op, Role};
pub(crate) use scheduler::describe_exit;
pub(crate) use service::{make_executable, serve};
use state::{Outbox, State};

pub use state::Counts;

/// Version of the session protocol; a peer with another one is refused.
/// 2: `TaskSpec.subscribe` (a driver no longer sends `Subscribe` for the
/// tasks it submits, so an older head would never send it their results).
pub const PROTOCOL_VERSION: u32 = 2;

/// Workers that fail to start this many times in a row are not restarted.
const MAX_START_FAILURES: u32 = 10;

/// The job of the driver that shares the head's process (a local cluster).
pub(crate) const EMBEDDED_JOB: u32 = 0;

pub(crate) type OpStream = Pin<Box<dyn Stream<Item = Result<Vec<proto::ClientOp>, String>> + Send>>;

/// Settings of one head.
pub(crate) struct HeadConfig {
    pub(crate) token: String,
    /// The head's own node: its name (Node service address) and CPUs.
    pub(crate) node: String,
    pub(crate) num_cpus: f64,
    pub(crate) store_capacity: u64,
    /// For a local cluster: the driver's registry hash; its workers run
    /// this same executable and are kept at `num_cpus`.
    pub(crate) embedded_registry: Option<String>,
    /// How long a dead node stays listed (`None`: `FLEET_DEAD_NODE_TTL_SECS`
    /// or 5 minutes).
    pub(crate) dead_node_ttl: Option<std::time::Duration>,
    /// Where the token was written (named in the error for a wrong token).
    pub(crate) token_file: Option<PathBuf>,
    /// Custom resources of the head's own node (`--resources`,
    /// `Config::resources`), checked by the caller.
    pub(crate) resources: Vec<(String, f64)>,
}

/// A worker the head's supervisor started: (node, job).
type Started = HashMap<u64, (String, u32)>;

/// The head of a cluster.
pub(crate) struct Head {
    state: Mutex<State>,
    senders: DashMap<u32, UnboundedSender<proto::HeadOp>>,
    /// Worker ids whose session is open.
    connected_workers: DashMap<u64, ()>,
    /// Job of every worker started, for routing its output.
    worker_jobs: DashMap<u64, u32>,
    started: Mutex<Started>,
    next_client: AtomicU32,
    next_worker: AtomicU64,
    /// Workers of a job that failed to start in a row (per job: one job
    /// whose executable cannot start must not stop the others).
    start_failures: DashMap<u32, u32>,
    stopping: AtomicBool,
    token: String,
    node: String,
    store: ObjectStore,
    binaries: PathBuf,
    supervisor: OnceLock<Supervisor>,
    spiller: Mutex<std::sync::mpsc::Sender<spilling::FileWork>>,
    dead_node_ttl: std::time::Duration,
    token_file: Option<PathBuf>,
    /// Jobs submitted with `fleet job submit`.
    jobs: jobs::Jobs,
    /// Asks for nodes and gives them back (`--autoscale`).
    autoscaler: OnceLock<Arc<autoscale::Autoscaler>>,
    /// Itself, for work put off to later.
    me: std::sync::Weak<Head>,
}

impl Head {
    pub(crate) fn new(config: HeadConfig) -> crate::Result<Arc<Self>> {
        let store = ObjectStore::create(&config.node, config.store_capacity)?;
        let binaries = store.spill_dir().join("binaries");
        std::fs::create_dir_all(&binaries)?;
        let mut state = State::new(config.node.clone());
        state.add_node(
            config.node.clone(),
            None,
            proto::NodeInfo {
                address: config.node.clone(),
                num_cpus: config.num_cpus,
                store_dir: store.dir().to_string_lossy().into_owned(),
                spill_dir: store.spill_dir().to_string_lossy().into_owned(),
                store_capacity: config.store_capacity,
                arch: std::env::consts::ARCH.into(),
                store_key: store.key().to_string(),
                resources: crate::resources::to_proto(&config.resources),
                memory_bytes: crate::resources::machine_memory(),
                ..Default::default()
            },
        );
        if let Some(registry) = &config.embedded_registry {
            let cpus = config.num_cpus.max(1.0) as usize;
            state.add_job(EMBEDDED_JOB, None, None, registry.clone(), cpus);
        }
        let head = Arc::new_cyclic(|weak| Head {
            spiller: Mutex::new(spilling::start_spiller(weak.clone(), store.clone())),
            state: Mutex::new(state),
            senders: DashMap::new(),
            connected_workers: DashMap::new(),
            worker_jobs: DashMap::new(),
            started: Mutex::new(HashMap::new()),
            next_client: AtomicU32::new(1),
            next_worker: AtomicU64::new(1),
            start_failures: DashMap::new(),
            stopping: AtomicBool::new(false),
            token: config.token,
            node: config.node,
            store,
            binaries,
            supervisor: OnceLock::new(),
            dead_node_ttl: config
                .dead_node_ttl
                .unwrap_or_else(rejoin::dead_node_ttl_from_env),
            token_file: config.token_file,
            jobs: jobs::Jobs::new(weak.clone()),
            autoscaler: OnceLock::new(),
            me: weak.clone(),
        });
        Ok(head)
    }

    /// Attaches the supervisor of the head's own node and starts the
    /// initial worker pool.
    pub(crate) fn attach_supervisor(&self, supervisor: Supervisor) {
        let _ = self.supervisor.set(supervisor);
        let out = self.state.lock().take_outbox();
        self.flush(out);
    }

    pub(crate) fn counts(&self) -> Counts {
        self.state.lock().counts()
    }

    pub(crate) fn status(&self) -> proto::StatusReply {
        let mut status = self.state.lock().status();
        status.autoscale = self.autoscaler.get().map(|a| a.status());
        status
    }

    /// Starts the autoscaler; node jobs join at `launch.address`.
    pub(crate) fn start_autoscaler(
        self: &Arc<Self>,
        opts: autoscale::AutoscaleOptions,
        launch: autoscale::Launch,
    ) -> crate::Result<()> {
        let scaler = autoscale::Autoscaler::start(self, opts, launch)?;
        let _ = self.autoscaler.set(scaler);
        Ok(())
    }

    /// The autoscaler's state, for the dashboard.
    pub(crate) fn autoscale_status(&self) -> Option<proto::AutoscaleStatus> {
        self.autoscaler.get().map(|a| a.status())
    }

    /// `fleet list`: rows as JSON and how many matched.
    pub(crate) fn list(&self, req: &proto::ListRequest) -> Result<(String, usize), String> {
        let (submitted, drivers) = if req.kind == "jobs" {
            (self.jobs.list(), self.jobs.drivers())
        } else {
            Default::default()
        };
        let (rows, total) = self.state.lock().list(req, &submitted, &drivers)?;
        Ok((serde_json::Value::Array(rows).to_string(), total))
    }

    /// Recent tasks as Chrome trace JSON.
    pub(crate) fn timeline(&self) -> String {
        self.state.lock().chrome_trace().to_string()
    }

    /// Starts the dashboard on `addr` (port 0: any free port); returns
    /// its address.
    pub(crate) async fn serve_dashboard(
        self: &Arc<Self>,
        addr: std::net::SocketAddr,
    ) -> std::io::Result<std::net::SocketAddr> {
        dashboard::serve(self.clone(), addr).await
    }

    /// Whether the head is shutting down (`/healthz` says 503).
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    pub(crate) fn store(&self) -> &ObjectStore {
        &self.store
    }

    /// Where uploaded executables are kept, by hash.
    pub(crate) fn binary_path(&self, hash: &str) -> Option<PathBuf> {
        let valid = !hash.is_empty() && hash.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        valid.then(|| self.binaries.join(hash))
    }

    /// Process ids of the worker processes alive on the head's node.
    pub(crate) fn worker_pids(&self) -> Vec<u32> {
        self.supervisor.get().map(|s| s.pids()).unwrap_or_default()
    }

    fn apply(&self, client: u32, ops: Vec<proto::ClientOp>) {
        let mut exits = Vec::new();
        let mut logs = Vec::new();
        let mut pressure = Vec::new();
        let mut job_updates = Vec::new();
        let out = {
            let mut st = self.state.lock();
            for op in ops.into_iter().filter_map(|o| o.op) {
                match op {
                    Op::Submit(spec) => st.submit(client, *spec),
                    Op::Result(r) => st.task_result(client, r),
                    Op::Put(p) => st.put_or_fulfil(client, p),
                    Op::Subscribe(id) => st.subscribe(client, id),
                    Op::Acquire(id) => st.acquire(client, id),
                    Op::Release(id) => st.release(client, id),
                    Op::Blocked(b) => st.blocked(client, b),
                    Op::Unblocked(_) => st.unblocked(client),
                    Op::KillActor(id) => st.kill_actor(id),
                    Op::Lookup(l) => st.lookup(client, l),
                    Op::WorkerExit(e) => exits.push(e),
                    Op::Log(l) => logs.push(l),
                    Op::JobUpdate(j) => job_updates.push(*j),
                    Op::Spilled(s) => st.spill_done(
                        s.object_id,
                        if s.error.is_empty() {
                            Ok(s.path)
                        } else {
                            Err(s.error)
                        },
                    ),
                    Op::Cancel(c) => st.cancel_any(client, c),
                    Op::GeneratorItem(i) => st.generator_item(client, i),
                    Op::GeneratorAck(a) => st.generator_ack(client, a),
                    Op::MemoryPressure(p) => pressure.push(p),
                    Op::NodeLoad(l) => st.node_load(client, l),
                    Op::NodeLeaving(leaving) => {
                        if leaving {
                            st.node_leaving(client);
                        }
                    }
                    Op::Hello(_) => {}
                    // leases: head/scheduler/leases.rs.
                    Op::LeaseRequest(r) => st.lease_request(client, r),
                    Op::LeaseReturn(w) => st.lease_return(client, w),
                    Op::Promise(id) => st.promise(client, id),
                    Op::DirectDone(d) => st.direct_done(client, d),
                }
            }
            st.dispatch();
            st.take_outbox()
        };
        self.flush(out);
        for e in exits {
            self.worker_exited(e.worker_id, e.status);
        }
        for p in pressure {
            let node = self.state.lock().node_of_session(client);
            if let Some(node) = node {
                self.memory_pressure(&node, &p);
            }
        }
        for l in logs {
            self.forward_log(l.worker_id, l.stderr, l.lines);
        }
        for j in job_updates {
            self.jobs.update(j);
        }
    }

    /// Sends a worker's output to its job's driver.
    pub(crate) fn forward_log(&self, worker_id: u64, stderr: bool, lines: Vec<String>) {
        let Some(job) = self.worker_jobs.get(&worker_id).map(|j| *j) else {
            return;
        };
        let driver = self.state.lock().jobs.get(&job).and_then(|j| j.driver);
        if let Some(tx) = driver.and_then(|d| self.senders.get(&d)) {
            let _ = tx.send(proto::HeadOp {
                op: Some(head_op::Op::Log(proto::LogLines {
                    worker_id,
                    stderr,
                    lines,
                })),
            });
        } else if driver.is_none() {
            // A detached actor's worker has no driver: its lines go to the
            // head's log.
            for line in lines {
                tracing::info!(job, "{line}");
            }
        }
    }

    fn flush(&self, out: Outbox) {
        // Ops come in runs for one client (a worker's tasks, a driver's
        // results): one lookup of its sender per run, not per op.
        let mut last = None;
        for (client, op) in out.ops {
            let tx = match &last {
                Some((c, tx)) if *c == client => tx,
                _ => {
                    // Drop the previous guard before taking the next one.
                    last = None;
                    &last.insert((client, self.senders.get(&client))).1
                }
            };
            if let Some(tx) = tx {
                let _ = tx.send(op);
            }
        }
        drop(last);
        for client in out.reap {
            // Closing its stream tells the worker to exit.
            self.senders.remove(&client);
        }
        for (node, job) in out.spawn {
            self.spawn(&node, job);
        }
        for (node, id, path) in out.spill {
            if node == self.node {
                let _ = self
                    .spiller
                    .lock()
                    .send(spilling::FileWork::Spill(id, path));
                continue;
            }
            let session = self.state.lock().nodes.get(&node).and_then(|n| n.session);
            if let Some(tx) = session.and_then(|s| self.senders.get(&s)) {
                let _ = tx.send(proto::HeadOp {
                    op: Some(head_op::Op::Spill(proto::Spill {
                        object_id: id,
                        path,
                    })),
                });
            }
        }
        for (delay, what) in out.later {
            self.put_off(delay, what);
        }
        if !out.delete.is_empty() {
            let _ = self
                .spiller
                .lock()
                .send(spilling::FileWork::Delete(out.delete));
        }
    }

    /// Stops every worker and removes the store folders.
    pub(crate) fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        self.jobs.shutdown();
        // Node jobs are given back first: they would outlive the head.
        if let Some(a) = self.autoscaler.get() {
            a.shutdown();
        }
        if let Some(s) = self.supervisor.get() {
            s.shutdown();
        }
        self.senders.clear();
        self.store.remove_all();
    }
}

/// Whether `job` is still running (its driver has not left).
fn st_has_job(state: &parking_lot::Mutex<State>, job: u32) -> bool {
    state.lock().jobs.contains_key(&job)
}

fn refused(why: &str) -> proto::HeadOp {
    proto::HeadOp {
        op: Some(head_op::Op::Refused(why.to_string())),
    }
}
