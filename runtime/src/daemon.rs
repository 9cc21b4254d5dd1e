//! The long-running processes `fleet start` runs: a head (with its own
//! node) and node agents; and `fleet status`.
//!
//! This module is the library's deliberately public API for the `fleet`
//! tool (package `fleet-cli`, folder `cli/`), which lives in a package of
//! its own so that user programs do not link its code or its crates
//! (clap, rayon). Everything that tool needs from the runtime's insides
//! is here and nowhere else; a user's program does not need it.

use std::path::{Path, PathBuf};

use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::head::{Head, HeadConfig};
use crate::proto;

pub use crate::head::autoscale::{AutoscaleOptions, ProviderKind};
pub use crate::node::agent::{run as run_node, NodeOptions};

/// How `fleet start --head` runs.
#[derive(Clone, Debug)]
pub struct HeadOptions {
    /// Address to listen on; loopback unless told otherwise.
    pub bind: String,
    /// Port of the head's gRPC service.
    pub port: u16,
    /// Address other machines reach the head on (default: `bind`).
    pub node_ip: Option<String>,
    /// CPUs of the head's own node (0: the head runs no tasks).
    pub num_cpus: f64,
    /// Bytes of the head node's shared-memory object store.
    pub store_capacity: u64,
    /// The cluster token; default: a new random one.
    pub token: Option<String>,
    /// Where the token is written, readable only by this user.
    pub token_file: PathBuf,
    /// The dashboard's address (`None`: no dashboard).
    pub dashboard: Option<std::net::SocketAddr>,
    /// How long a dead node stays in `fleet status` (`None`:
    /// `FLEET_DEAD_NODE_TTL_SECS`, else 5 minutes).
    pub dead_node_ttl: Option<std::time::Duration>,
    /// Ask for nodes and give them back (`--autoscale`; `None`: never).
    pub autoscale: Option<AutoscaleOptions>,
    /// Custom resources of the head's own node (`--resources gpu=2`).
    pub resources: Vec<(String, f64)>,
}

/// This user's folder for Fleet's files on this machine (token, pids, logs).
pub fn runtime_dir() -> PathBuf {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir().join(format!("fleet-{uid}"))
}

/// Writes `token` to `path`, readable and writable by this user only.
pub fn write_token(path: &Path, token: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(token.as_bytes())?;
    Ok(())
}

/// Reads a token file (trailing whitespace ignored).
pub fn read_token(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_string())
        .map_err(|e| Error::Startup(format!("reading the token file {}: {e}", path.display())))
}

/// Runs a head until `stop` fires. `ready` is called with the address
/// once it serves.
pub fn run_head(
    opts: HeadOptions,
    ready: impl FnOnce(&str, Option<std::net::SocketAddr>),
    stop: oneshot::Receiver<()>,
) -> Result<()> {
    crate::logging::init();
    // A bad worker-log setting stops the head before it serves.
    crate::node::worker_logs::Rotation::from_env().map_err(Error::Startup)?;
    let rt = crate::cluster::runtime("fleet-head", 2)?;
    let (listener, bound) = crate::cluster::bind(&opts.bind, opts.port)?;
    let address = match &opts.node_ip {
        Some(ip) => format!("{ip}:{}", bound.rsplit(':').next().unwrap_or_default()),
        None => bound,
    };
    let token = opts
        .token
        .clone()
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    write_token(&opts.token_file, &token)?;
    let head = Head::new(HeadConfig {
        token: token.clone(),
        node: address.clone(),
        num_cpus: opts.num_cpus,
        store_capacity: opts.store_capacity,
        embedded_registry: None,
        dead_node_ttl: opts.dead_node_ttl,
        token_file: Some(opts.token_file.clone()),
        resources: opts.resources.clone(),
    })?;
    if let Some(autoscale) = opts.autoscale.clone() {
        if address.starts_with("127.") || address.starts_with("localhost") {
            eprintln!(
                "fleet: warning: the autoscaler's nodes join the head at {address}, a loopback address only this machine reaches; \
                 for nodes on other machines start the head with --bind 0.0.0.0 --node-ip <this machine's address>"
            );
        }
        let launch = crate::head::autoscale::Launch {
            address: address.clone(),
            token: token.clone(),
            fleet_bin: std::env::current_exe()?,
        };
        if let Err(e) = head.start_autoscaler(autoscale, launch) {
            head.shutdown();
            return Err(e);
        }
    }
    let (stop_server, server_stopped) = oneshot::channel();
    let server = head.clone();
    let serving =
        rt.spawn(async move { crate::head::serve(server, listener, server_stopped).await });
    head.attach_supervisor(crate::cluster::local_supervisor(&head, &address, &token));
    if let Err(e) = head.start_memory_monitor() {
        head.shutdown();
        return Err(e);
    }
    // A busy dashboard port does not stop the cluster: it runs without one.
    let dashboard = match opts.dashboard {
        Some(at) => match rt.block_on(head.serve_dashboard(at)) {
            Ok(a) => Some(a),
            Err(e) => {
                eprintln!("fleet: no dashboard: cannot listen on {at}: {e}");
                None
            }
        },
        None => None,
    };
    ready(&address, dashboard);
    let _ = rt.block_on(stop);
    head.shutdown();
    let _ = stop_server.send(());
    let _ = rt.block_on(serving);
    rt.shutdown_background();
    Ok(())
}

/// Asks a head for its status.
pub fn status(address: &str, token: &str) -> Result<proto::StatusReply> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Startup(e.to_string()))?;
    rt.block_on(async {
        let mut client = proto::head_client::HeadClient::new(crate::net::channel(address).await?);
        client
            .status(proto::StatusRequest {
                token: token.to_string(),
            })
            .await
            .map(|r| r.into_inner())
            .map_err(|s| Error::Connection(s.message().to_string()))
    })
}

/// Asks a head for recent tasks as Chrome trace JSON.
pub fn timeline(address: &str, token: &str) -> Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Startup(e.to_string()))?;
    rt.block_on(async {
        let mut client = proto::head_client::HeadClient::new(crate::net::channel(address).await?)
            .max_decoding_message_size(crate::client::transport::MAX_MESSAGE);
        client
            .timeline(proto::StatusRequest {
                token: token.to_string(),
            })
            .await
            .map(|r| r.into_inner().json)
            .map_err(|s| Error::Connection(s.message().to_string()))
    })
}

/// The default size of a node's shared-memory object store (30% of RAM,
/// as Ray's): what `fleet start` offers without `--object-store-bytes`.
pub fn default_store_capacity() -> u64 {
    crate::node::object_store::default_capacity()
}

/// Installs Fleet's stderr log output (filtered by `RUST_LOG`, colour only
/// on a terminal) once: `fleet start` calls it before it serves.
pub fn init_logging() {
    crate::logging::init()
}

/// The largest gRPC message Fleet sends or accepts: clients of the head's
/// list and log calls raise tonic's 4 MiB default to it.
pub const MAX_MESSAGE: usize = crate::client::transport::MAX_MESSAGE;

/// A gRPC channel to the head (or a node) at `address`, with the
/// cluster's TLS settings (`FLEET_TLS_*`) and keep-alives: the CLI's list,
/// job and log calls go over it.
pub async fn channel(address: &str) -> Result<tonic::transport::Channel> {
    crate::net::channel(address).await
}

/// The content hash that names an executable in the head's binary cache
/// (`fleet job submit` uploads a program under it).
pub fn executable_hash(path: &Path) -> Result<String> {
    crate::cluster::executable_hash(path)
}

/// Uploads the executable at `path` to the head at `address` under
/// `hash` (see [`executable_hash`]), so that nodes can fetch and run it.
pub async fn upload_executable(
    address: String,
    token: String,
    path: PathBuf,
    hash: String,
) -> Result<()> {
    crate::cluster::upload(address, token, path, hash).await
}

/// Jobs' states and records as `fleet job` shows them.
pub mod jobs {
    use crate::proto;

    /// A job waiting for its driver to start.
    pub const PENDING: &str = crate::node::jobs::PENDING;
    /// A job whose driver runs.
    pub const RUNNING: &str = crate::node::jobs::RUNNING;
    /// A job whose driver exited with an error or could not start.
    pub const FAILED: &str = crate::node::jobs::FAILED;

    /// Milliseconds since the Unix epoch, the clock of `JobInfo`'s times.
    pub fn now_millis() -> u64 {
        crate::node::jobs::now_millis()
    }

    /// A job's record as JSON, as the dashboard and `fleet job list
    /// --json` show it.
    pub fn to_json(j: &proto::JobInfo) -> serde_json::Value {
        crate::node::jobs::to_json(j)
    }
}
