//! The cluster commands of the `fleet` CLI: `start`, `status`, `stop`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

pub mod job;
pub mod list;
pub mod logs;

use fleet::daemon::{self, HeadOptions, NodeOptions};
use fleet::{Error, Result};

/// `fleet start`'s settings, as parsed by the binary.
#[derive(Clone, Debug)]
pub struct StartArgs {
    /// Start a head (and its node).
    pub head: bool,
    /// Join the head at this address as a node.
    pub address: Option<String>,
    /// Port (head: gRPC; node: object transfer, 0 for any).
    pub port: u16,
    /// Listen address of the head.
    pub bind: String,
    /// Address others reach this node on.
    pub node_ip: Option<String>,
    /// CPUs offered; default: the cores of this machine.
    pub num_cpus: Option<f64>,
    /// Shared-memory store size in bytes.
    pub object_store_bytes: Option<u64>,
    /// Token file to write (head) or read (node).
    pub token_file: Option<PathBuf>,
    /// Stay in the foreground.
    pub block: bool,
    /// Head: the dashboard's port (0: any; `None`: no dashboard).
    pub dashboard_port: Option<u16>,
    /// Head: the dashboard's listen address.
    pub dashboard_bind: String,
    /// Node: seconds to wait for a head that is not up yet, or to rejoin
    /// one that went away, before exiting with an error.
    pub wait_for_head: f64,
    /// Head: seconds a dead node stays in `fleet status` (`None`:
    /// `FLEET_DEAD_NODE_TTL_SECS`, else 300).
    pub dead_node_ttl: Option<f64>,
    /// Node: the port of its `/healthz` (`None`: not served).
    pub health_port: Option<u16>,
    /// Head: the autoscaler's settings (`None`: no autoscaler).
    pub autoscale: Option<daemon::AutoscaleOptions>,
    /// Custom resources of this node (`--resources gpu=2,license=1`).
    pub resources: Vec<(String, f64)>,
}

/// The start time of a process (field 22 of /proc/PID/stat): with the pid
/// it names one process, so `fleet stop` never signals a reused pid.
fn process_start(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19).map(str::to_string)
}

fn pid_dir() -> PathBuf {
    daemon::runtime_dir().join("pids")
}

fn default_token_file() -> PathBuf {
    fleet::discovery::default_token_file()
}

fn cores() -> f64 {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64
}

/// Fires when the process gets SIGINT or SIGTERM.
fn stop_on_signal() -> oneshot::Receiver<()> {
    let (tx, rx) = oneshot::channel();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        let _ = tx.send(());
    });
    rx
}

fn record_pid() -> Result<PathBuf> {
    let dir = pid_dir();
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(std::process::id().to_string());
    std::fs::write(
        &path,
        process_start(std::process::id() as i32).unwrap_or_default(),
    )?;
    Ok(path)
}

/// `fleet start`: in the foreground with `block`, else as a background
/// process that this call waits for until it serves.
pub fn start(args: StartArgs, argv: Vec<String>) -> Result<()> {
    if args.head && args.health_port.is_some() {
        return Err(Error::Startup(
            "--health-port is for node agents (fleet start --address …); a head serves \
             /healthz and /metrics on its dashboard port (--dashboard-port)"
                .into(),
        ));
    }
    if !args.block {
        return start_background(argv);
    }
    let pid_file = record_pid()?;
    let result = run_foreground(args);
    let _ = std::fs::remove_file(pid_file);
    result
}

fn run_foreground(args: StartArgs) -> Result<()> {
    let capacity = args
        .object_store_bytes
        .unwrap_or_else(fleet::daemon::default_store_capacity);
    if args.head {
        let token_file = args.token_file.clone().unwrap_or_else(default_token_file);
        let shown = token_file.clone();
        let result = daemon::run_head(
            HeadOptions {
                bind: args.bind.clone(),
                port: args.port,
                node_ip: args.node_ip.clone(),
                num_cpus: args.num_cpus.unwrap_or_else(cores),
                store_capacity: capacity,
                token: std::env::var(fleet::ENV_TOKEN)
                    .ok()
                    .filter(|t| !t.is_empty()),
                token_file,
                dashboard: args
                    .dashboard_port
                    .map(|p| {
                        format!("{}:{p}", args.dashboard_bind)
                            .parse()
                            .map_err(|e| Error::Startup(format!("--dashboard-bind: {e}")))
                    })
                    .transpose()?,
                dead_node_ttl: args
                    .dead_node_ttl
                    .map(|s| seconds(s, "--dead-node-ttl"))
                    .transpose()?,
                autoscale: args.autoscale.clone(),
                resources: args.resources.clone(),
            },
            |address, dashboard| {
                if let Err(e) = fleet::discovery::record_head(address, &shown) {
                    eprintln!("fleet: cannot record the head for local discovery: {e}");
                }
                if let Some(d) = dashboard {
                    println!("fleet dashboard at http://{d}");
                }
                println!("fleet head serving at {address}");
                println!("  token: {}", shown.display());
                println!("  join a machine:  fleet start --address {address} --token-file <copy of the token>");
                println!(
                    "  run a driver:    FLEET_ADDRESS={address} FLEET_TOKEN=$(cat {}) ./my_app",
                    shown.display()
                );
            },
            stop_on_signal(),
        );
        fleet::discovery::clear_head_record();
        result
    } else {
        let Some(head) = args.address.clone() else {
            return Err(Error::Startup(
                "fleet start needs --head or --address".into(),
            ));
        };
        // --token-file, else FLEET_TOKEN, else what this machine knows of
        // the head; a file is read again on every attempt to join (the
        // head may not have written it yet, or a restarted head a new one).
        let env_token = std::env::var(fleet::ENV_TOKEN)
            .ok()
            .filter(|t| !t.is_empty());
        let (token, token_file) = match (&args.token_file, env_token) {
            (Some(file), _) => (String::new(), Some(file.clone())),
            (None, Some(t)) => (t, None),
            (None, None) => match fleet::discovery::resolve_token(None, &head) {
                Ok(t) => (t, None),
                Err(_) => (String::new(), Some(default_token_file())),
            },
        };
        let wait_for_head = seconds(args.wait_for_head, "--wait-for-head")?;
        fleet::daemon::init_logging();
        daemon::run_node(
            NodeOptions {
                head,
                token,
                token_file,
                wait_for_head,
                num_cpus: args.num_cpus.unwrap_or_else(cores),
                node_ip: args.node_ip.clone().unwrap_or_else(|| "127.0.0.1".into()),
                port: args.port,
                store_capacity: capacity,
                health_port: args.health_port,
                resources: args.resources.clone(),
            },
            stop_on_signal(),
        )
    }
}

/// A duration in seconds from a flag, refused with the flag's name when it
/// is negative or not a number.
fn seconds(secs: f64, flag: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(secs).map_err(|_| {
        Error::Startup(format!(
            "{flag} {secs}: give a number of seconds, 0 or more"
        ))
    })
}

fn start_background(mut argv: Vec<String>) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let logs = daemon::runtime_dir().join("logs");
    std::fs::create_dir_all(&logs)?;
    let log = logs.join(format!("start-{}.log", std::process::id()));
    let out = std::fs::File::create(&log)?;
    argv.push("--block".into());
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // SAFETY: setsid is async-signal-safe; it detaches from our terminal.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        // A node agent waiting for its head is up too: it joins when the
        // head comes (or exits after --wait-for-head, saying so in its log).
        if text.contains("serving at")
            || text.contains("joined the cluster")
            || text.contains("waiting for the head")
        {
            print!("{text}");
            println!("  logs: {}", log.display());
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Error::Startup(format!(
                "fleet start exited ({status}):\n{text}"
            )));
        }
        if Instant::now() > deadline {
            return Err(Error::Startup(format!(
                "fleet start did not come up; see {}",
                log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The head to talk to and its token: from the flags and `FLEET_*`
/// variables, else the head recorded on this machine (local discovery).
pub fn target(
    address: Option<&str>,
    token_file: Option<&std::path::Path>,
) -> Result<(String, String)> {
    let address = fleet::discovery::resolve_address(address)?;
    let token = fleet::discovery::resolve_token(token_file, &address)?;
    Ok((address, token))
}

/// `fleet timeline`: writes recent tasks as a Chrome trace to `out`;
/// returns how many tasks it holds.
pub fn timeline(
    address: Option<&str>,
    token_file: Option<PathBuf>,
    out: &std::path::Path,
) -> Result<usize> {
    let (address, token) = target(address, token_file.as_deref())?;
    let json = daemon::timeline(&address, &token)?;
    std::fs::write(out, &json)?;
    Ok(json.matches("\"ph\":\"X\"").count())
}

/// `fleet status`: nodes, resources, tasks by state, objects.
pub fn status(address: Option<&str>, token_file: Option<PathBuf>) -> Result<String> {
    let (address, token) = target(address, token_file.as_deref())?;
    let s = daemon::status(&address, &token)?;
    let mut out = format!("cluster at {address}\n");
    for n in &s.nodes {
        out += &format!(
            "  node {:<22} {:>5} cpus ({:>5} free)  {:>3} workers  store {}/{} MiB{}\n",
            n.name,
            n.num_cpus,
            n.available_cpus,
            n.workers,
            n.store_used >> 20,
            n.store_capacity >> 20,
            if n.alive { "" } else { "  DEAD" }
        );
        if !n.resources.is_empty() {
            out += &resource_line(&n.resources);
        }
    }
    out += &format!(
        "  tasks: {} running, {} ready, {} waiting on arguments\n  objects: {}  actors: {}  drivers: {}\n",
        s.tasks_running, s.tasks_ready, s.tasks_pending, s.objects, s.actors, s.drivers
    );
    if !s.leases.is_empty() {
        out += &format!("  leased to drivers: {}\n", s.leases.join(", "));
    }
    for w in &s.waiting {
        out += &format!("  note: {w}\n");
    }
    if let Some(a) = &s.autoscale {
        out += &autoscale_status(a);
    }
    out += &format!("  logs and token: {}\n", daemon::runtime_dir().display());
    Ok(out)
}

/// A node's resources in `fleet status`: `memory 15.6 GiB (15.6 free),
/// gpu 2 (1 free)`.
fn resource_line(resources: &[fleet::proto::ResourceUse]) -> String {
    let items: Vec<String> = resources
        .iter()
        .map(|r| {
            if r.name == fleet::resources::MEMORY {
                let gib = |b: f64| b / f64::from(1u32 << 30);
                format!(
                    "memory {:.1} GiB ({:.1} free)",
                    gib(r.total),
                    gib(r.available)
                )
            } else {
                format!("{} {} ({} free)", r.name, r.total, r.available)
            }
        })
        .collect();
    format!("    resources: {}\n", items.join(", "))
}

/// The autoscaler's part of `fleet status`.
fn autoscale_status(a: &fleet::proto::AutoscaleStatus) -> String {
    let mut out = format!(
        "  autoscaler ({}, {}..{} nodes): {} node jobs requested, {} pending, {} running\n",
        a.provider, a.min_nodes, a.max_nodes, a.requested, a.pending, a.running
    );
    for j in &a.jobs {
        let external = if j.external_id.is_empty() {
            String::new()
        } else {
            format!(" ({} job {})", a.provider, j.external_id)
        };
        out += &format!(
            "    node job {}{external}: {} {:.0}s{}\n",
            j.id,
            j.state,
            j.age_secs,
            if j.node.is_empty() {
                String::new()
            } else {
                format!("  node {}", j.node)
            }
        );
    }
    for e in a
        .events
        .iter()
        .rev()
        .take(5)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        out += &format!("    {e}\n");
    }
    out
}

/// `fleet stop`: stops what `fleet start` started on this machine.
pub fn stop() -> Result<usize> {
    let Ok(entries) = std::fs::read_dir(pid_dir()) else {
        return Ok(0);
    };
    let mut pids: Vec<(i32, PathBuf)> = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let recorded = std::fs::read_to_string(e.path()).unwrap_or_default();
        if !recorded.is_empty() && process_start(pid).as_deref() == Some(recorded.trim()) {
            pids.push((pid, e.path()));
        } else {
            // Left by a process that is gone; the pid may be someone else's now.
            let _ = std::fs::remove_file(e.path());
        }
    }
    for (pid, _) in &pids {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(*pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for (pid, file) in &pids {
        // SAFETY: signal 0 only checks for existence.
        while unsafe { libc::kill(*pid, 0) } == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: plain kill(2) of a straggler.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
        let _ = std::fs::remove_file(file);
    }
    Ok(pids.len())
}
