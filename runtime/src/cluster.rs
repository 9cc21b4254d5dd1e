//! Starting or joining a cluster: `fleet::init()`.

use std::future::Future;
use std::net::TcpListener;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

use crate::client::{transport, Client};
use crate::error::{Error, Result};
use crate::head::state::{Counts, Limits};
use crate::head::{Head, HeadConfig};
use crate::node::supervisor::{Supervisor, WorkerEnv};
use crate::proto;

/// Environment variable naming a cluster to join instead of starting one.
pub const ENV_ADDRESS: &str = "FLEET_ADDRESS";
/// Environment variable holding the token of the cluster to join.
pub const ENV_TOKEN: &str = "FLEET_TOKEN";

/// How `init_with` starts or joins a cluster.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Head to join (`host:port`); `None` reads `FLEET_ADDRESS`, and if that
    /// is unset too, starts a local cluster in this process.
    pub address: Option<String>,
    /// CPUs of the local cluster; default: the cores of this machine.
    pub num_cpus: Option<usize>,
    /// Token of the cluster to join; default: `FLEET_TOKEN`.
    pub token: Option<String>,
    /// Bytes of the local cluster's shared-memory object store before it
    /// spills to disk; default: 30% of memory.
    pub object_store_bytes: Option<u64>,
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
        crate::context::clear_client(&self.client);
        if let Some(stop) = self.stop_server.lock().take() {
            let _ = stop.send(());
        }
        if let Some(head) = &self.head {
            head.shutdown();
        }
        if let Some(rt) = self.runtime.lock().take() {
            rt.shutdown_background();
        }
    }
}

fn runtime(name: &str, threads: usize) -> Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
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

fn hello(token: String) -> proto::Hello {
    proto::Hello {
        protocol_version: crate::head::PROTOCOL_VERSION,
        registry_hash: crate::registry::registry_hash(),
        role: proto::Role::Driver.into(),
        pid: std::process::id(),
        worker_id: 0,
        token,
    }
}

pub(crate) fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; the result is NUL-terminated or truncated.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(s) if ok && !s.is_empty() => s.to_string(),
        _ => "localhost".to_string(),
    }
}

fn start_local(config: &Config) -> Result<Inner> {
    let cpus = config.num_cpus.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let cpus = cpus.max(1);
    let rt = runtime("fleet-head", 2)?;
    let token = format!("{:032x}", rand::random::<u128>());
    let head = Head::new(HeadConfig {
        limits: Limits {
            num_cpus: cpus as f64,
            store_capacity: config
                .object_store_bytes
                .unwrap_or_else(crate::node::object_store::default_capacity),
            min_workers: cpus,
            max_workers: (4 * cpus).max(64),
        },
        token: token.clone(),
        registry: crate::registry::registry_hash(),
        node: hostname(),
    })?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::Startup(format!("binding the head's port: {e}")))?;
    let address = listener
        .local_addr()
        .map_err(|e| Error::Startup(e.to_string()))?
        .to_string();
    let (stop_tx, stop_rx) = oneshot::channel();
    let server = head.clone();
    rt.spawn(async move {
        if let Err(e) = crate::head::serve(server, listener, stop_rx).await {
            tracing::error!("the head's server stopped: {e}");
        }
    });
    let program = std::env::current_exe()
        .map_err(|e| Error::Startup(format!("finding this executable: {e}")))?;
    let weak = Arc::downgrade(&head);
    let supervisor = Supervisor::start(
        WorkerEnv {
            program,
            head: address.clone(),
            token: token.clone(),
        },
        Arc::new(move |id, status| {
            if let Some(h) = weak.upgrade() {
                h.worker_exited(id, status);
            }
        }),
    );
    head.attach_supervisor(supervisor);

    let session_head = head.clone();
    let client = block_on(&rt, async move {
        let (out, rx) = session_head.local_session();
        let mut inbound = transport::local_inbound(rx);
        let (welcome, leftover) = transport::handshake(&out, &mut inbound, hello(token)).await?;
        let client = Client::new(&welcome, out);
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
        runtime: Mutex::new(Some(rt)),
        stop_server: Mutex::new(Some(stop_tx)),
    })
}

fn join(address: &str, config: &Config) -> Result<Inner> {
    let rt = runtime("fleet-driver", 1)?;
    let token = config
        .token
        .clone()
        .or_else(|| std::env::var(ENV_TOKEN).ok())
        .unwrap_or_default();
    let addr = address.to_string();
    let client = block_on(&rt, async move {
        let (out, mut inbound) = transport::connect(&addr).await?;
        let (welcome, leftover) = transport::handshake(&out, &mut inbound, hello(token)).await?;
        let client = Client::new(&welcome, out);
        tokio::spawn(transport::receive(client.clone(), leftover, inbound, None));
        Ok::<_, Error>(client)
    })?;
    Ok(Inner {
        client,
        head: None,
        address: address.to_string(),
        runtime: Mutex::new(Some(rt)),
        stop_server: Mutex::new(None),
    })
}
