//! The head: cluster state, scheduler and object directory behind one gRPC
//! service. A local cluster runs it inside the driver's process.

mod actors;
mod directory;
mod scheduler;
mod service;
mod spilling;
pub(crate) mod state;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use dashmap::{DashMap, DashSet};
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

use crate::node::object_store::ObjectStore;
use crate::node::supervisor::Supervisor;
use crate::proto::{self, client_op::Op, head_op};
pub(crate) use service::serve;
use state::{Limits, Outbox, State};

pub use state::Counts;

/// Version of the session protocol; a peer with another one is refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// Workers that fail to start this many times in a row are not restarted.
const MAX_START_FAILURES: u32 = 10;

pub(crate) type OpStream = Pin<Box<dyn Stream<Item = Result<Vec<proto::ClientOp>, String>> + Send>>;

/// Settings of one head.
pub(crate) struct HeadConfig {
    pub(crate) limits: Limits,
    pub(crate) token: String,
    /// Registry hash workers must match (the driver's build).
    pub(crate) registry: String,
    pub(crate) node: String,
}

/// The head of a cluster.
pub(crate) struct Head {
    state: Mutex<State>,
    senders: DashMap<u32, UnboundedSender<proto::HeadOp>>,
    connected_workers: DashSet<u64>,
    next_client: AtomicU32,
    next_worker: AtomicU64,
    start_failures: AtomicU32,
    stopping: AtomicBool,
    token: String,
    registry: String,
    node: String,
    store: ObjectStore,
    supervisor: OnceLock<Supervisor>,
    spiller: Mutex<std::sync::mpsc::Sender<(u64, String)>>,
}

impl Head {
    pub(crate) fn new(config: HeadConfig) -> crate::Result<Arc<Self>> {
        let store = ObjectStore::create(&config.node, config.limits.store_capacity)?;
        let head = Arc::new_cyclic(|weak| Head {
            spiller: Mutex::new(spilling::start_spiller(weak.clone(), store.clone())),
            state: Mutex::new(State::new(config.limits, config.node.clone())),
            senders: DashMap::new(),
            connected_workers: DashSet::new(),
            next_client: AtomicU32::new(1),
            next_worker: AtomicU64::new(1),
            start_failures: AtomicU32::new(0),
            stopping: AtomicBool::new(false),
            token: config.token,
            registry: config.registry,
            node: config.node,
            store,
            supervisor: OnceLock::new(),
        });
        Ok(head)
    }

    /// Attaches the supervisor and starts the initial worker pool.
    pub(crate) fn attach_supervisor(&self, supervisor: Supervisor) {
        let _ = self.supervisor.set(supervisor);
        let out = {
            let mut st = self.state.lock();
            st.keep_pool();
            st.take_outbox()
        };
        self.flush(out);
    }

    pub(crate) fn counts(&self) -> Counts {
        self.state.lock().counts()
    }

    /// Process ids of the worker processes alive now.
    pub(crate) fn worker_pids(&self) -> Vec<u32> {
        self.supervisor.get().map(|s| s.pids()).unwrap_or_default()
    }

    /// Opens a session for a client in this process: plain channels, no
    /// encoding.
    pub(crate) fn local_session(
        self: &Arc<Self>,
    ) -> (
        UnboundedSender<proto::ClientOp>,
        UnboundedReceiver<proto::HeadOp>,
    ) {
        let (ctx, crx) = mpsc::unbounded_channel();
        let (htx, hrx) = mpsc::unbounded_channel();
        let inbound = crate::client::transport::batches(crx).map(Ok);
        tokio::spawn(self.clone().run_session(Box::pin(inbound), htx));
        (ctx, hrx)
    }

    fn check_hello(&self, hello: &proto::Hello) -> Result<(), String> {
        if hello.protocol_version != PROTOCOL_VERSION {
            return Err(format!(
                "protocol version {} is not the head's version {PROTOCOL_VERSION}",
                hello.protocol_version
            ));
        }
        if hello.token != self.token {
            return Err("wrong or missing cluster token".into());
        }
        if hello.role() == proto::Role::Worker && hello.registry_hash != self.registry {
            return Err(format!(
                "worker build {} does not match the driver's build {}",
                hello.registry_hash, self.registry
            ));
        }
        Ok(())
    }

    /// Serves one client session until its stream ends.
    pub(crate) async fn run_session(
        self: Arc<Self>,
        mut inbound: OpStream,
        out: UnboundedSender<proto::HeadOp>,
    ) {
        let mut first = match inbound.next().await {
            Some(Ok(ops)) => ops.into_iter(),
            _ => return,
        };
        let hello = match first.next().and_then(|o| o.op) {
            Some(Op::Hello(h)) => h,
            _ => {
                let _ = out.send(refused("the first message must be hello"));
                return;
            }
        };
        if let Err(why) = self.check_hello(&hello) {
            tracing::warn!(pid = hello.pid, "refused a session: {why}");
            let _ = out.send(refused(&why));
            return;
        }
        let client = self.next_client.fetch_add(1, Ordering::Relaxed);
        let _ = out.send(proto::HeadOp {
            op: Some(head_op::Op::Welcome(proto::Welcome {
                client_id: client,
                store_dir: self.store.dir().to_string_lossy().into_owned(),
                node: self.node.clone(),
                spill_dir: self.store.spill_dir().to_string_lossy().into_owned(),
                store_capacity: self.store.capacity(),
            })),
        });
        self.senders.insert(client, out);
        let worker = hello.role() == proto::Role::Worker;
        {
            let mut st = self.state.lock();
            st.open_session(client);
            if worker {
                self.connected_workers.insert(hello.worker_id);
                self.start_failures.store(0, Ordering::Relaxed);
                st.worker_connected(client, hello.worker_id, hello.pid);
            }
        }
        self.apply(client, first.collect());
        while let Some(Ok(ops)) = inbound.next().await {
            self.apply(client, ops);
        }
        self.senders.remove(&client);
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        let out = {
            let mut st = self.state.lock();
            st.close_session(client);
            st.dispatch();
            st.take_outbox()
        };
        self.flush(out);
    }

    fn apply(&self, client: u32, ops: Vec<proto::ClientOp>) {
        let out = {
            let mut st = self.state.lock();
            for op in ops.into_iter().filter_map(|o| o.op) {
                match op {
                    Op::Submit(spec) => st.submit(client, spec),
                    Op::Result(r) => st.task_result(client, r),
                    Op::Put(p) => st.put(client, p),
                    Op::Subscribe(id) => st.subscribe(client, id),
                    Op::Acquire(id) => st.acquire(client, id),
                    Op::Release(id) => st.release(client, id),
                    Op::Blocked(b) => st.blocked(client, b),
                    Op::Unblocked(_) => st.unblocked(client),
                    Op::KillActor(id) => st.kill_actor(id),
                    Op::Lookup(l) => st.lookup(client, l),
                    Op::Hello(_) => {}
                }
            }
            st.dispatch();
            st.take_outbox()
        };
        self.flush(out);
    }

    fn flush(&self, out: Outbox) {
        for (client, op) in out.ops {
            if let Some(tx) = self.senders.get(&client) {
                let _ = tx.send(op);
            }
        }
        if out.spawn > 0 {
            match self.supervisor.get() {
                Some(s) if self.start_failures.load(Ordering::Relaxed) < MAX_START_FAILURES => {
                    for _ in 0..out.spawn {
                        s.spawn(self.next_worker.fetch_add(1, Ordering::Relaxed));
                    }
                }
                _ => {
                    tracing::error!("workers keep failing to start; not starting more");
                    let mut st = self.state.lock();
                    for _ in 0..out.spawn {
                        st.worker_never_connected();
                    }
                }
            }
        }
        if !out.spill.is_empty() {
            let spiller = self.spiller.lock();
            for s in out.spill {
                let _ = spiller.send(s);
            }
        }
        State::delete_files(out.delete);
    }

    /// The supervisor saw a worker process exit.
    pub(crate) fn worker_exited(&self, worker_id: u64, status: String) {
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        if self.connected_workers.remove(&worker_id).is_some() {
            // Its session's end does the bookkeeping.
            tracing::debug!(worker_id, "worker exited: {status}");
            return;
        }
        tracing::warn!(worker_id, "worker exited before connecting: {status}");
        self.start_failures.fetch_add(1, Ordering::Relaxed);
        let out = {
            let mut st = self.state.lock();
            st.worker_never_connected();
            st.keep_pool();
            st.dispatch();
            st.take_outbox()
        };
        self.flush(out);
    }

    /// Stops every worker and removes the store folder.
    pub(crate) fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        if let Some(s) = self.supervisor.get() {
            s.shutdown();
        }
        self.senders.clear();
        self.store.remove_all();
    }
}

fn refused(why: &str) -> proto::HeadOp {
    proto::HeadOp {
        op: Some(head_op::Op::Refused(why.to_string())),
    }
}
