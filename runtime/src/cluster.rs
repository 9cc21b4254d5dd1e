//! Starting or joining a cluster: `fleet::init()`.

use std::future::Future;
use std::net::TcpListener;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

use crate::client::{transport, Client};
use crate::error::{Error, Result};
use crate::head::state::Counts;
use crate::head::{Head, HeadConfig};
use crate::node::supervisor::{Supervisor, WorkerEnv};
use crate::node::worker_logs::{Rotation, WorkerLogs};
use crate::proto;

/// Environment variable naming a cluster to join instead of starting one.
pub const ENV_ADDRESS: &str = "FLEET_ADDRESS";
/// Environment variable holding the token of the cluster to join.
pub const ENV_TOKEN: &str = "FLEET_TOKEN";

/// How `init_with` starts or joins a cluster.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Head to join (`host:port`); `None` reads `FLEET_ADDRESS`, and if that
    /// is unset too, starts a local cluster in this process. `auto` joins
    /// the head `fleet start --head` started on this machine.
    pub address: Option<String>,
    /// CPUs of the local cluster; default: the cores of this machine.
    pub num_cpus: Option<usize>,
    /// Token of the cluster to join; default: `FLEET_TOKEN`, else the
    /// token file of the head recorded on this machine.
    pub token: Option<String>,
    /// Bytes of the local cluster's shared-memory object store before it
    /// spills to disk; default: 30% of memory.
    pub object_store_bytes: Option<u64>,
    /// Port of the local cluster's dashboard on 127.0.0.1; default: any
    /// free port. `FLEET_DASHBOARD=0` turns it off.
    pub dashboard_port: Option<u16>,
    /// Custom resources of the local cluster's node, as (name, amount):
    /// `vec![("gpu".into(), 2.0)]`. A `memory` entry (bytes) replaces the
    /// machine's RAM as the node's memory capacity. Tasks and actors that
    /// declare resources reserve them while they run.
    pub resources: Vec<(String, f64)>,
}

/// A running cluster session. Dropping the last guard disconnects, and for
/// a local cluster stops its workers and frees its store.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    client: Arc<Client>,
    head: Option<Arc<Head>>,
    address: String,
    dashboard: Option<String>,
    runtime: Mutex<Option<Runtime>>,
    stop_server: Mutex<Option<oneshot::Sender<()>>>,
}

static ACTIVE: Mutex<Weak<Inner>> = Mutex::new(Weak::new());

/// Starts a local cluster with one worker process per core, or joins the
/// cluster named by `FLEET_ADDRESS`. A second call while a cluster is up
/// returns another guard on the same cluster.
pub fn init() -> Result<Cluster> {
    init_with(Config::default())
}

/// [`init`] with explicit settings.
pub fn init_with(config: Config) -> Result<Cluster> {
    crate::worker::hook::ensure_linked();
    crate::logging::init();
    let mut active = ACTIVE.lock();
    if let Some(inner) = active.upgrade() {
        return Ok(Cluster { inner });
    }
    let address = config
        .address
        .clone()
        .or_else(|| std::env::var(ENV_ADDRESS).ok().filter(|a| !a.is_empty()));
    let inner = Arc::new(match address {
        Some(a) => join(&a, &config)?,
        None => start_local(&config)?,
    });
    crate::context::set_client(Some(inner.client.clone()));
    *active = Arc::downgrade(&inner);
    Ok(Cluster { inner })
}

impl Cluster {
    /// The head's gRPC address.
    pub fn address(&self) -> &str {
        &self.inner.address
    }

    /// The dashboard's URL (local clusters).
    pub fn dashboard_url(&self) -> Option<&str> {
        self.inner.dashboard.as_deref()
    }

    /// Recent tasks as a Chrome trace (JSON for chrome://tracing or
    /// Perfetto), as `fleet timeline` writes it (local clusters).
    pub fn timeline(&self) -> Option<String> {
        self.inner.head.as_ref().map(|h| h.timeline())
    }

    /// Process ids of this local cluster's worker processes (empty when
    /// joined to a remote cluster).
    pub fn worker_pids(&self) -> Vec<u32> {
        self.inner
            .head
            .as_ref()
            .map(|h| h.worker_pids())
            .unwrap_or_default()
    }

    /// Sizes of the head's tables (local clusters only).
    pub fn counts(&self) -> Option<Counts> {
        self.inner.head.as_ref().map(|h| h.counts())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.head.is_none() {
            // A joined driver's job ends with its session, and its workers
            // with it: their summaries of its direct tasks go first. (A
            // local cluster's head goes too: nobody would read them.)
            self.client.finish_leases();
        }
        crate::context::clear_client(&self.client);
        // The head stops its workers first, a worker still starting among
        // them, and only then its server: a worker must not find the door
        // closed and report it (an intentional shutdown prints nothing).
        if let Some(head) = &self.head {
            head.shutdown();
        }
        if let Some(stop) = self.stop_server.lock().take() {
            let _ = stop.send(());
        }
        if let Some(rt) = self.runtime.lock().take() {
            rt.shutdown_background();
        }
    }
}

/// A multi-threaded tokio runtime for one of Fleet's processes.
pub(crate) fn runtime(name: &str, threads: usize) -> Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .on_thread_start(crate::latency::short_slice)
        .enable_all()
        .build()
        .map_err(|e| Error::Startup(format!("tokio runtime: {e}")))
}

/// Runs `f` on `rt` and waits for it from any thread, async or not.
fn block_on<F>(rt: &Runtime, f: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv().expect("the runtime dropped a startup future")
}

fn hello(token: String, binary_hash: String) -> proto::Hello {
    proto::Hello {
        protocol_version: crate::head::PROTOCOL_VERSION,
        registry_hash: crate::registry::registry_hash(),
        role: proto::Role::Driver.into(),
        pid: std::process::id(),
        token,
        binary_hash,
        submission: std::env::var(crate::ENV_JOB_ID).unwrap_or_default(),
        ..Default::default()
    }
}

fn start_local(config: &Config) -> Result<Inner> {
    crate::resources::check_list("Config::resources", &config.resources)
        .map_err(|e| Error::Usage(e.to_string()))?;
    Rotation::from_env().map_err(Error::Startup)?;
    let cpus = config
        .num_cpus
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .max(1);
    let rt = runtime("fleet-head", 1)?;
    let token = format!("{:032x}", rand::random::<u128>());
    let (listener, address) = bind("127.0.0.1", 0)?;
    let head = Head::new(HeadConfig {
        token: token.clone(),
        node: address.clone(),
        num_cpus: cpus as f64,
        store_capacity: config
            .object_store_bytes
            .unwrap_or_else(crate::node::object_store::default_capacity),
        embedded_registry: Some(crate::registry::registry_hash()),
        dead_node_ttl: None,
        token_file: None,
        resources: config.resources.clone(),
    })?;
    let (stop_tx, stop_rx) = oneshot::channel();
    let server = head.clone();
    rt.spawn(async move {
        if let Err(e) = crate::head::serve(server, listener, stop_rx).await {
            tracing::error!("the head's server stopped: {e}");
        }
    });
    head.attach_supervisor(local_supervisor(&head, &address, &token));
    if let Err(e) = head.start_memory_monitor() {
        head.shutdown();
        return Err(e);
    }
    let dashboard = if std::env::var("FLEET_DASHBOARD").is_ok_and(|v| v == "0") {
        None
    } else {
        let h = head.clone();
        let at = std::net::SocketAddr::from(([127, 0, 0, 1], config.dashboard_port.unwrap_or(0)));
        match block_on(&rt, async move { h.serve_dashboard(at).await }) {
            Ok(a) => {
                let url = format!("http://{a}");
                eprintln!("fleet: local cluster with {cpus} CPUs; dashboard at {url}");
                Some(url)
            }
            Err(e) => {
                tracing::warn!("no dashboard: {e}");
                None
            }
        }
    };

    let session_head = head.clone();
    let session_token = token.clone();
    let client = block_on(&rt, async move {
        let (out, rx) = session_head.local_session();
        let mut inbound = transport::local_inbound(rx);
        let (welcome, leftover) = transport::handshake(
            &out,
            &mut inbound,
            hello(session_token.clone(), String::new()),
        )
        .await?;
        let client = Client::new(&welcome, out, &session_token);
        if crate::client::leases_enabled() {
            client.enable_leases(welcome.max_pending_tasks);
        }
        tokio::spawn(transport::receive(client.clone(), leftover, inbound, None));
        Ok::<_, Error>(client)
    });
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            head.shutdown();
            return Err(e);
        }
    };
    tracing::info!(%address, cpus, "started a local fleet cluster");
    Ok(Inner {
        client,
        head: Some(head),
        address,
        dashboard,
        runtime: Mutex::new(Some(rt)),
        stop_server: Mutex::new(Some(stop_tx)),
    })
}

/// The supervisor of the head's own node: workers re-run an executable
/// (this one, or a job's uploaded one) and report to `head`.
pub(crate) fn local_supervisor(head: &Arc<Head>, address: &str, token: &str) -> Supervisor {
    let weak = Arc::downgrade(head);
    let logs = Arc::downgrade(head);
    // Checked where the cluster starts; a bad value that gets here (set
    // since) is said and the defaults used.
    let rotation = Rotation::from_env().unwrap_or_else(|e| {
        eprintln!("fleet: warning: {e}");
        Rotation::default()
    });
    Supervisor::start(
        WorkerEnv {
            head: address.to_string(),
            token: token.to_string(),
            node: address.to_string(),
            on_log: Arc::new(move |worker, stderr, lines| {
                if let Some(h) = logs.upgrade() {
                    h.forward_log(worker, stderr, lines);
                }
            }),
            show_node: false,
            logs: WorkerLogs::new(address, rotation),
        },
        Arc::new(move |id, status| {
            if let Some(h) = weak.upgrade() {
                h.worker_exited(id, status);
            }
        }),
    )
}

/// Content hash of this executable: workers on other nodes run exactly it.
pub(crate) fn executable_hash(path: &std::path::Path) -> Result<String> {
    let bytes = std::fs::read(path)?;
    // FNV-1a over 8-byte words: fast and stable; collisions are not a
    // security boundary here (the token is).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for chunk in bytes.chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        h ^= u64::from_le_bytes(w);
        h = h.wrapping_mul(0x0100_0000_01b3);
        h ^= h >> 29;
    }
    Ok(format!("{h:016x}-{}", bytes.len()))
}

pub(crate) async fn upload(
    address: String,
    token: String,
    path: std::path::PathBuf,
    hash: String,
) -> Result<()> {
    let mut client =
        crate::proto::head_client::HeadClient::new(crate::net::channel(&address).await?);
    let data = std::fs::read(&path)?;
    let chunks: Vec<proto::BinaryChunk> = data
        .chunks(1 << 20)
        .enumerate()
        .map(|(i, c)| proto::BinaryChunk {
            hash: if i == 0 { hash.clone() } else { String::new() },
            token: if i == 0 { token.clone() } else { String::new() },
            data: bytes::Bytes::copy_from_slice(c),
        })
        .collect();
    client
        .upload_binary(futures::stream::iter(chunks))
        .await
        .map_err(|s| Error::Connection(format!("uploading this executable: {}", s.message())))?;
    Ok(())
}

/// Names the settings of `config` that only shape a local cluster, and so
/// do nothing when joining one.
fn ignored_when_joining(config: &Config) -> Vec<&'static str> {
    let mut ignored = Vec::new();
    if config.num_cpus.is_some() {
        ignored.push("num_cpus");
    }
    if config.object_store_bytes.is_some() {
        ignored.push("object_store_bytes");
    }
    if config.dashboard_port.is_some() {
        ignored.push("dashboard_port");
    }
    ignored
}

/// Warns (once per process) that settings of a local cluster are ignored
/// because the program joins an existing cluster: a silent no-op is the
/// worst answer to `num_cpus: Some(2)`.
fn warn_ignored(config: &Config, address: &str) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    let ignored = ignored_when_joining(config);
    if ignored.is_empty() {
        return;
    }
    let from = if config.address.is_some() {
        "Config::address"
    } else {
        "FLEET_ADDRESS"
    };
    WARNED.call_once(|| {
        let list = ignored
            .iter()
            .map(|f| format!("Config::{f}"))
            .collect::<Vec<_>>()
            .join(", ");
        tracing::warn!(
            "{list} ignored: this program joins the cluster at {address} ({from}), whose \
             nodes set their own CPUs and store; unset {from} to start a local cluster \
             with these settings"
        );
    });
}

fn join(address: &str, config: &Config) -> Result<Inner> {
    warn_ignored(config, address);
    let rt = runtime("fleet-driver", 1)?;
    let address = &crate::discovery::resolve_address(Some(address))?;
    let token = match config.token.clone().filter(|t| !t.is_empty()) {
        Some(t) => t,
        None => crate::discovery::resolve_token(None, address)?,
    };
    let exe = std::env::current_exe()
        .map_err(|e| Error::Startup(format!("finding this executable: {e}")))?;
    // Hashed once per process: a driver that retries joining (every
    // `f::remote` while no cluster is reachable) does not re-read itself.
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let hash = match HASH.get() {
        Some(h) => h.clone(),
        None => {
            let h = executable_hash(&exe)?;
            HASH.get_or_init(|| h).clone()
        }
    };
    let addr = address.to_string();
    let client = block_on(&rt, async move {
        upload(addr.clone(), token.clone(), exe, hash.clone()).await?;
        let (out, mut inbound, backlog) = transport::connect_driver(&addr).await?;
        let (welcome, leftover) =
            transport::handshake(&out, &mut inbound, hello(token.clone(), hash)).await?;
        let client = Client::new(&welcome, out, &token);
        if crate::client::leases_enabled() {
            client.enable_leases(welcome.max_pending_tasks);
        }
        client.set_backlog(backlog);
        tokio::spawn(transport::receive(client.clone(), leftover, inbound, None));
        Ok::<_, Error>(client)
    })?;
    Ok(Inner {
        client,
        head: None,
        address: address.to_string(),
        dashboard: None,
        runtime: Mutex::new(Some(rt)),
        stop_server: Mutex::new(None),
    })
}

/// Binds `ip:port` (port 0: any free one); returns the listener and the
/// `ip:port` it is reached on.
pub(crate) fn bind(ip: &str, port: u16) -> Result<(TcpListener, String)> {
    let listener = TcpListener::bind((ip, port))
        .map_err(|e| Error::Startup(format!("binding {ip}:{port}: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::Startup(e.to_string()))?
        .port();
    Ok((listener, format!("{ip}:{port}")))
}
