//! The node agent (`fleet start --address HEAD`): registers the machine
//! with the head, serves its object store to other nodes, fetches each
//! job's executable once by hash and starts workers from it on request.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::{mpsc::UnboundedSender, oneshot};

use super::health::{Health, Phase};
use super::jobs::{JobHostService, JobRunner, Launch};
use super::object_store::ObjectStore;
use super::supervisor::{Supervisor, WorkerEnv};
use super::transfer::{save, NodeService, SharedToken};
use crate::client::transport;

mod join;
use crate::error::{Error, Result};
use crate::proto::{
    self, client_op::Op, head_client::HeadClient, head_op, job_host_server::JobHostServer,
    node_server::NodeServer,
};

/// How a node agent joins.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// The head's address.
    pub head: String,
    /// The cluster token (`FLEET_TOKEN`); empty: read `token_file`.
    pub token: String,
    /// Where the head wrote the token; read again on every attempt to join,
    /// since a restarted head may write a new one.
    pub token_file: Option<PathBuf>,
    /// CPUs this node offers.
    pub num_cpus: f64,
    /// Address other nodes reach this one on (also the bind address).
    pub node_ip: String,
    /// Port of the object transfer service (0: any free port).
    pub port: u16,
    /// Bytes of shared memory for the object store.
    pub store_capacity: u64,
    /// How long to wait for a head that is not up yet, or to rejoin one
    /// that went away, before giving up (`--wait-for-head`).
    pub wait_for_head: std::time::Duration,
    /// Port of the agent's `/healthz` on `node_ip` (`None`: not served;
    /// 0: any free port).
    pub health_port: Option<u16>,
    /// Custom resources it offers (`--resources gpu=2,license=1`); a
    /// `memory` entry replaces the machine's RAM as its memory capacity.
    pub resources: Vec<(String, f64)>,
}

/// The ELF machine number of an executable, if it is one.
fn elf_machine(path: &Path) -> Option<u16> {
    let mut head = [0u8; 20];
    let mut f = std::fs::File::open(path).ok()?;
    std::io::Read::read_exact(&mut f, &mut head).ok()?;
    (head[..4] == *b"\x7fELF").then(|| u16::from_le_bytes([head[18], head[19]]))
}

fn own_machine() -> Option<u16> {
    std::env::current_exe().ok().and_then(|p| elf_machine(&p))
}

async fn fetch_binary(head: &str, token: &str, hash: &str, dest: &Path) -> Result<()> {
    let mut client = HeadClient::new(crate::net::channel(head).await?)
        .max_decoding_message_size(transport::MAX_MESSAGE);
    let chunks = client
        .fetch_binary(proto::FetchBinaryRequest {
            hash: hash.to_string(),
            token: token.to_string(),
        })
        .await
        .map_err(|s| Error::Connection(format!("fetching executable {hash}: {}", s.message())))?
        .into_inner();
    save(chunks, dest).await?;
    crate::head::make_executable(dest);
    Ok(())
}

struct Agent {
    opts: NodeOptions,
    /// The token of the current session (used to fetch executables).
    token: String,
    binaries: PathBuf,
    supervisor: Supervisor,
    out: UnboundedSender<proto::ClientOp>,
    fetching: tokio::sync::Mutex<()>,
}

impl Agent {
    /// The executable with content hash `hash`, fetched from the head once.
    async fn executable(&self, hash: &str) -> std::result::Result<PathBuf, String> {
        if !crate::node::transfer::safe_name(hash) {
            return Err("cannot run: no executable named".into());
        }
        let path = self.binaries.join(hash);
        let _one = self.fetching.lock().await;
        if !path.is_file() {
            fetch_binary(&self.opts.head, &self.token, hash, &path)
                .await
                .map_err(|e| format!("failed to fetch the executable: {e}"))?;
        }
        Ok(path)
    }

    /// Runs a job's driver here (`fleet job submit --node`).
    async fn run_job(&self, jobs: &JobRunner, r: proto::RunJob) {
        let info = match self.executable(&r.binary_hash).await {
            Ok(program) => jobs.start(Launch {
                id: r.id,
                program,
                args: r.args,
                env: r.env,
                head: self.opts.head.clone(),
                token: self.token.clone(),
            }),
            Err(why) => proto::JobInfo {
                id: r.id,
                state: crate::node::jobs::FAILED.into(),
                message: why,
                end_millis: crate::node::jobs::now_millis(),
                ..Default::default()
            },
        };
        let _ = self.out.send(proto::ClientOp {
            op: Some(Op::JobUpdate(Box::new(info))),
        });
    }

    async fn spawn(&self, s: proto::SpawnWorker) {
        let exit = |status: String| {
            let _ = self.out.send(proto::ClientOp {
                op: Some(Op::WorkerExit(proto::WorkerExit {
                    worker_id: s.worker_id,
                    status,
                    started: false,
                })),
            });
        };
        let path = match self.executable(&s.binary_hash).await {
            Ok(p) => p,
            Err(e) => return exit(e),
        };
        let (theirs, ours) = (elf_machine(&path), own_machine());
        if theirs != ours {
            tracing::error!(job = s.job, "the job's executable is for another machine type ({theirs:?}, this node is {ours:?})");
            return exit(format!(
                "cannot run: the executable is for ELF machine {theirs:?}, this node ({}) is {ours:?}",
                std::env::consts::ARCH
            ));
        }
        self.supervisor.spawn(s.worker_id, path, s.job);
    }
}

/// Runs a node agent until `stop` fires, or until no head answers for
/// `opts.wait_for_head` (at the start, or after the head went away).
pub fn run(opts: NodeOptions, stop: oneshot::Receiver<()>) -> Result<()> {
    let rt = crate::cluster::runtime("fleet-node", 2)?;
    let (listener, name) = crate::cluster::bind(&opts.node_ip, opts.port)?;
    let store = ObjectStore::create(&name, opts.store_capacity)?;
    let binaries = store.spill_dir().join("binaries");
    std::fs::create_dir_all(&binaries)?;
    let result = rt.block_on(serve(opts, name, store.clone(), binaries, listener, stop));
    store.remove_all();
    rt.shutdown_background();
    result
}

/// The open session's outbound side, for reports made outside it.
type Current = Arc<parking_lot::Mutex<Option<UnboundedSender<proto::ClientOp>>>>;

/// How a session with a head ended.
enum Ended {
    Stopped,
    HeadGone(String),
}

async fn serve(
    opts: NodeOptions,
    name: String,
    store: ObjectStore,
    binaries: PathBuf,
    listener: TcpListener,
    mut stop: oneshot::Receiver<()>,
) -> Result<()> {
    // A bad memory threshold stops the agent before it joins.
    crate::node::memory_monitor::Threshold::from_env().map_err(Error::Startup)?;
    let rotation = super::worker_logs::Rotation::from_env().map_err(Error::Startup)?;
    let worker_logs = super::worker_logs::WorkerLogs::new(&name, rotation);
    let health = Health::new(&opts.head);
    if let Some(port) = opts.health_port {
        let at = format!("{}:{port}", opts.node_ip)
            .parse()
            .map_err(|e| Error::Startup(format!("--health-port on {}: {e}", opts.node_ip)))?;
        let bound = super::health::serve(health.clone(), at)
            .await
            .map_err(|e| {
                Error::Startup(format!(
                    "cannot serve /healthz on {at}: {e}; choose another --health-port"
                ))
            })?;
        println!("fleet node health at http://{bound}/healthz");
    }
    listener.set_nonblocking(true)?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(
        tokio::net::TcpListener::from_std(listener)?,
    );
    let token: SharedToken = Arc::new(parking_lot::RwLock::new(opts.token.clone()));
    let node = NodeService {
        store: store.clone(),
        token: token.clone(),
    };
    // Jobs run here report through the session open at the time, if any.
    let (job_tx, mut job_rx) = tokio::sync::mpsc::unbounded_channel();
    let current: Current = Arc::default();
    {
        let current = current.clone();
        tokio::spawn(async move {
            while let Some(info) = job_rx.recv().await {
                if let Some(out) = current.lock().as_ref() {
                    let _ = out.send(proto::ClientOp {
                        op: Some(Op::JobUpdate(Box::new(info))),
                    });
                }
            }
        });
    }
    let jobs = Arc::new(JobRunner::new(
        crate::daemon::runtime_dir().join("jobs"),
        Arc::new(move |info| {
            let _ = job_tx.send(info);
        }),
    ));
    tokio::spawn(
        crate::net::server()?
            .add_service(NodeServer::new(node))
            .add_service(JobHostServer::new(JobHostService {
                runner: jobs.clone(),
                token: token.clone(),
                workers: worker_logs.clone(),
            }))
            .serve_with_incoming(incoming),
    );
    // Same name (its transfer address) on every join; a new instance per
    // process, so the head can tell this agent rejoining from another one.
    let instance = rand::random::<u64>() | 1;
    let hello = |token: String| proto::Hello {
        protocol_version: crate::head::PROTOCOL_VERSION,
        role: proto::Role::Node.into(),
        pid: std::process::id(),
        token,
        node_info: Some(proto::NodeInfo {
            address: name.clone(),
            num_cpus: opts.num_cpus,
            store_dir: store.dir().to_string_lossy().into_owned(),
            spill_dir: store.spill_dir().to_string_lossy().into_owned(),
            store_capacity: opts.store_capacity,
            arch: std::env::consts::ARCH.into(),
            instance,
            store_key: store.key().to_string(),
            // Set by the autoscaler's node jobs, so the head knows which
            // job this node is.
            node_job: std::env::var("FLEET_NODE_JOB").unwrap_or_default(),
            resources: crate::resources::to_proto(&opts.resources),
            memory_bytes: crate::resources::machine_memory(),
        }),
        ..Default::default()
    };
    loop {
        let joined = join::join(&opts, &hello, &mut stop).await;
        let Some(joined) = joined.inspect_err(|_| {
            health.set(Phase::Stopping);
            jobs.shutdown();
        })?
        else {
            health.set(Phase::Stopping);
            jobs.shutdown();
            return Ok(());
        };
        *token.write() = joined.token.clone();
        health.set(Phase::Joined);
        *current.lock() = Some(joined.out.clone());
        let hosted = (&jobs, &worker_logs);
        let ended = session(&opts, &name, &store, &binaries, hosted, joined, &mut stop).await;
        *current.lock() = None;
        // The jobs driven from here belonged to that head's session.
        jobs.shutdown();
        match ended {
            Ended::Stopped => {
                health.set(Phase::Stopping);
                return Ok(());
            }
            Ended::HeadGone(why) => {
                health.set(Phase::Waiting);
                // A clean slate for the next head: the workers were stopped
                // with the session; the old session's objects go too.
                store.clear();
                println!(
                    "fleet node {name}: lost the head at {} ({why}); stopped its workers and \
                     emptied its store; rejoining when a head is there again (for up to {} s, \
                     --wait-for-head)",
                    opts.head,
                    opts.wait_for_head.as_secs_f64()
                );
            }
        }
    }
}

/// Serves one session with the head: starts workers it asks for, spills
/// and frees store files, until the head goes away or `stop` fires. Its
/// workers are stopped when it ends.
async fn session(
    opts: &NodeOptions,
    name: &str,
    store: &ObjectStore,
    binaries: &Path,
    (jobs, worker_logs): (&Arc<JobRunner>, &Arc<super::worker_logs::WorkerLogs>),
    joined: join::Joined,
    stop: &mut oneshot::Receiver<()>,
) -> Ended {
    let join::Joined {
        out,
        mut inbound,
        leftover,
        token,
    } = joined;
    report_load(out.clone());
    let exits = out.clone();
    let logs = out.clone();
    let supervisor = Supervisor::start(
        WorkerEnv {
            head: opts.head.clone(),
            token: token.clone(),
            node: name.to_string(),
            on_log: Arc::new(move |worker_id, stderr, lines| {
                let _ = logs.send(proto::ClientOp {
                    op: Some(Op::Log(proto::LogLines {
                        worker_id,
                        stderr,
                        lines,
                    })),
                });
            }),
            show_node: true,
            logs: worker_logs.clone(),
        },
        Arc::new(move |worker_id, status| {
            let _ = exits.send(proto::ClientOp {
                op: Some(Op::WorkerExit(proto::WorkerExit {
                    worker_id,
                    status,
                    started: true,
                })),
            });
        }),
    );
    tracing::info!(node = %name, head = %opts.head, "node agent joined");
    println!("fleet node {name} joined the cluster at {}", opts.head);
    let agent = Arc::new(Agent {
        opts: opts.clone(),
        token,
        binaries: binaries.to_path_buf(),
        supervisor,
        out,
        fetching: tokio::sync::Mutex::new(()),
    });
    {
        // The memory monitor: reports to the head, which picks the victim.
        // Checked when the agent started (`serve`).
        let threshold = crate::node::memory_monitor::Threshold::from_env()
            .unwrap_or(crate::node::memory_monitor::Threshold::Fraction(0.95));
        let live = agent.supervisor.live();
        let (out, closed) = (agent.out.clone(), agent.out.clone());
        crate::node::memory_monitor::start(
            threshold,
            move || live.lock().iter().map(|(w, p)| (*w, *p)).collect(),
            move |report| {
                let _ = out.send(proto::ClientOp {
                    op: Some(Op::MemoryPressure(report)),
                });
                false
            },
            move || closed.is_closed(),
        );
    }
    let handle = |op: proto::HeadOp| match op.op {
        Some(head_op::Op::KillWorker(id)) => {
            let killed = agent.supervisor.kill(id);
            tracing::warn!(worker = id, killed, "the memory monitor kills a worker");
        }
        Some(head_op::Op::SpawnWorker(s)) => {
            let agent = agent.clone();
            tokio::spawn(async move { agent.spawn(s).await });
        }
        Some(head_op::Op::Spill(s)) => {
            let (store, out) = (store.clone(), agent.out.clone());
            tokio::task::spawn_blocking(move || {
                let owned = std::path::Path::new(&s.path).starts_with(store.dir());
                let result = if owned {
                    store.spill(&s.path)
                } else {
                    Err(Error::Store(format!(
                        "{} is not in this node's store",
                        s.path
                    )))
                };
                let (path, error) = match result {
                    Ok(p) => (p, String::new()),
                    Err(e) => (String::new(), e.to_string()),
                };
                let _ = out.send(proto::ClientOp {
                    op: Some(Op::Spilled(proto::Spilled {
                        object_id: s.object_id,
                        path,
                        error,
                    })),
                });
            });
        }
        Some(head_op::Op::RunJob(r)) => {
            let (agent, jobs) = (agent.clone(), jobs.clone());
            tokio::spawn(async move { agent.run_job(&jobs, *r).await });
        }
        Some(head_op::Op::StopJob(id)) => {
            jobs.stop(&id);
        }
        Some(head_op::Op::FreeFile(f)) if crate::node::transfer::safe_name(&f) => {
            store.discard(&store.dir().join(&f).to_string_lossy());
            ObjectStore::delete(&store.spill_dir().join(&f).to_string_lossy());
        }
        _ => {}
    };
    leftover.into_iter().for_each(handle);
    let ended = loop {
        tokio::select! {
            ops = inbound.next() => match ops {
                Some(Ok(ops)) => ops.into_iter().for_each(handle),
                Some(Err(e)) => break Ended::HeadGone(e.to_string()),
                None => break Ended::HeadGone("the head closed the session".to_string()),
            },
            _ = &mut *stop => break Ended::Stopped,
        }
    };
    match &ended {
        Ended::HeadGone(why) => tracing::warn!(node = %name, "lost the head: {why}"),
        // Said before the workers stop (which takes them a moment), so the
        // frame is out before the session ends: the head lists the node
        // as left, not lost.
        Ended::Stopped => {
            let _ = agent.out.send(proto::ClientOp {
                op: Some(Op::NodeLeaving(true)),
            });
        }
    }
    // Blocking (it waits for the workers to exit): off the runtime threads.
    let supervisor_owner = agent.clone();
    let _ = tokio::task::spawn_blocking(move || supervisor_owner.supervisor.shutdown()).await;
    ended
}

/// Reports this machine's load and memory to the head now and every two
/// seconds, for the dashboard's node table and memory card; ends with the
/// session.
fn report_load(out: tokio::sync::mpsc::UnboundedSender<proto::ClientOp>) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(2));
        loop {
            every.tick().await;
            let (used, total) = crate::head::observe::meminfo();
            let load = proto::NodeLoad {
                load: crate::head::observe::loadavg().unwrap_or_default(),
                mem_used_bytes: used.unwrap_or_default(),
                mem_total_bytes: total.unwrap_or_default(),
            };
            let op = proto::ClientOp {
                op: Some(Op::NodeLoad(load)),
            };
            if out.send(op).is_err() {
                return;
            }
        }
    });
}
