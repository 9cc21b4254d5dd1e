//! The `fleet` command line: a thin layer over `fleet_cli::cli` and
//! `fleet_cli::bench`.

// The doc comments below are clap's `--help` text, read in a terminal:
// `Vec<u8>` there is meant literally, not as an HTML tag.
#![allow(rustdoc::invalid_html_tags)]

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "fleet",
    version,
    about = "Fleet: a Ray-like distributed runtime for Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// TLS for every connection: this process's certificate (PEM). Also
    /// FLEET_TLS_CERT; workers started from here inherit it.
    #[arg(long, global = true)]
    tls_cert: Option<PathBuf>,
    /// TLS: the certificate's private key (PEM). Also FLEET_TLS_KEY.
    #[arg(long, global = true)]
    tls_key: Option<PathBuf>,
    /// TLS: the cluster's CA certificate (PEM). Also FLEET_TLS_CA.
    #[arg(long, global = true)]
    tls_ca: Option<PathBuf>,
}

#[derive(Args)]
struct Start {
    /// Start the head of a new cluster (and a node on this machine).
    #[arg(long, conflicts_with = "address")]
    head: bool,
    /// Join the cluster whose head is at this address, as a node.
    #[arg(long)]
    address: Option<String>,
    /// Head: the gRPC port (default 6380). Node: the object transfer port (default: any free one).
    #[arg(long)]
    port: Option<u16>,
    /// Head: address to listen on. Anything but loopback must be asked for.
    #[arg(long, default_value = "127.0.0.1")]
    bind: String,
    /// Address other machines reach this one on (node default 127.0.0.1).
    #[arg(long)]
    node_ip: Option<String>,
    /// CPUs this machine offers (default: its cores).
    #[arg(long)]
    num_cpus: Option<f64>,
    /// Bytes of shared memory for the object store (default: 30% of RAM).
    #[arg(long)]
    object_store_bytes: Option<u64>,
    /// Head: where to write the token. Node: where to read it (or set FLEET_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Stay in the foreground instead of starting in the background.
    #[arg(long)]
    block: bool,
    /// Head: the dashboard's port (0: any free port).
    #[arg(long, default_value_t = 8265)]
    dashboard_port: u16,
    /// Head: the dashboard's listen address (read-only; loopback by default).
    #[arg(long, default_value = "127.0.0.1")]
    dashboard_bind: String,
    /// Head: no dashboard.
    #[arg(long)]
    no_dashboard: bool,
    /// Node: seconds to wait for a head that is not up yet, and to rejoin
    /// one that went away (its workers stopped, its store emptied); past
    /// that the node exits with an error. 0: try once.
    #[arg(long, value_name = "SECS", default_value_t = 120.0)]
    wait_for_head: f64,
    /// Head: seconds a dead node stays listed in `fleet status` and the
    /// dashboard (default 300).
    #[arg(long, value_name = "SECS", env = "FLEET_DEAD_NODE_TTL_SECS")]
    dead_node_ttl: Option<f64>,
    /// Node: serve /healthz on this port of --node-ip (0: any free port);
    /// the head's /healthz and /metrics are on its dashboard port.
    #[arg(long)]
    health_port: Option<u16>,
    /// Custom resources this node offers, as NAME=AMOUNT[,NAME=AMOUNT...]
    /// (e.g. gpu=2,license=1); memory=BYTES (or 8GiB) replaces the
    /// machine's RAM as its memory capacity.
    #[arg(long, value_name = "NAME=AMOUNT,...")]
    resources: Option<String>,
    #[command(flatten)]
    autoscale: Autoscale,
}

/// The head's autoscaler (dask-jobqueue style).
#[derive(Args, Default)]
struct Autoscale {
    /// Head: ask for nodes when ready tasks wait for CPUs, give idle ones
    /// back: `slurm` (sbatch/scancel) or `command` (--scale-up/--scale-down).
    #[arg(long, value_parser = ["slurm", "command"], requires = "head")]
    autoscale: Option<String>,
    /// Autoscaler: node jobs kept even when idle.
    #[arg(long, default_value_t = 0, requires = "autoscale")]
    min_nodes: u32,
    /// Autoscaler: node jobs never exceeded.
    #[arg(long, default_value_t = 8, requires = "autoscale")]
    max_nodes: u32,
    /// Autoscaler: seconds ready tasks wait for CPUs before nodes are asked for.
    #[arg(long, default_value_t = 5.0, requires = "autoscale")]
    upscale_after: f64,
    /// Autoscaler: seconds a node stays idle before it is given back.
    #[arg(long, default_value_t = 60.0, requires = "autoscale")]
    idle_timeout: f64,
    /// Autoscaler: CPUs one node job brings, to size requests (default:
    /// what joined node jobs brought, else 1).
    #[arg(long, requires = "autoscale")]
    node_cpus: Option<f64>,
    /// Autoscaler `slurm`: more sbatch arguments for each node job, e.g.
    /// "-p debug --cpus-per-task 2 -t 1:00:00".
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    slurm_args: String,
    /// Autoscaler `command`: starts one node (`sh -c`; {job}, {address},
    /// {count} replaced; FLEET_NODE_JOB, FLEET_ADDRESS, FLEET_TOKEN set).
    #[arg(long, allow_hyphen_values = true)]
    scale_up: Option<String>,
    /// Autoscaler `command`: stops the node {node} ({job}, {count} too).
    #[arg(long, allow_hyphen_values = true)]
    scale_down: Option<String>,
}

impl Autoscale {
    fn options(self) -> anyhow::Result<Option<fleet::daemon::AutoscaleOptions>> {
        let Some(kind) = self.autoscale else {
            anyhow::ensure!(
                self.slurm_args.is_empty() && self.scale_up.is_none() && self.scale_down.is_none(),
                "--slurm-args, --scale-up and --scale-down need --autoscale slurm|command"
            );
            return Ok(None);
        };
        let secs = |v: f64, flag: &str| {
            anyhow::ensure!(
                v.is_finite() && v >= 0.0,
                "{flag} must be a number of seconds, 0 or more"
            );
            Ok(std::time::Duration::from_secs_f64(v))
        };
        anyhow::ensure!(
            self.max_nodes >= self.min_nodes,
            "--max-nodes {} is below --min-nodes {}: raise --max-nodes",
            self.max_nodes,
            self.min_nodes
        );
        if let Some(n) = self.node_cpus {
            anyhow::ensure!(n.is_finite() && n > 0.0, "--node-cpus must be positive");
        }
        let provider = match kind.as_str() {
            "slurm" => {
                anyhow::ensure!(
                    self.scale_up.is_none() && self.scale_down.is_none(),
                    "--scale-up/--scale-down are for --autoscale command, not slurm"
                );
                let args = shlex::split(&self.slurm_args).ok_or_else(|| {
                    anyhow::anyhow!("--slurm-args {:?}: unbalanced quotes", self.slurm_args)
                })?;
                fleet::daemon::ProviderKind::Slurm { args }
            }
            _ => {
                anyhow::ensure!(
                    self.slurm_args.is_empty(),
                    "--slurm-args is for --autoscale slurm, not command"
                );
                let (Some(scale_up), Some(scale_down)) = (self.scale_up, self.scale_down) else {
                    anyhow::bail!(
                        "--autoscale command needs --scale-up 'CMD' and --scale-down 'CMD {{node}}'"
                    );
                };
                fleet::daemon::ProviderKind::Command {
                    scale_up,
                    scale_down,
                }
            }
        };
        Ok(Some(fleet::daemon::AutoscaleOptions {
            provider,
            min_nodes: self.min_nodes,
            max_nodes: self.max_nodes,
            upscale_after: secs(self.upscale_after, "--upscale-after")?,
            idle_timeout: secs(self.idle_timeout, "--idle-timeout")?,
            node_cpus: self.node_cpus,
            interval: std::time::Duration::from_millis(
                std::env::var("FLEET_AUTOSCALE_INTERVAL_MS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1000),
            ),
        }))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Starts a head (`--head`) or a node joining one (`--address`).
    Start(Box<Start>),
    /// Nodes, resources, tasks by state, objects of a running cluster.
    Status {
        /// The head's address (default: the head started on this machine;
        /// FLEET_ADDRESS=auto asks for it too).
        #[arg(long, env = "FLEET_ADDRESS")]
        address: Option<String>,
        /// Token file (default: FLEET_TOKEN, else the one `fleet start --head` wrote here).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Stops what `fleet start` started on this machine.
    Stop,
    /// Writes recent tasks as a Chrome trace (chrome://tracing, Perfetto).
    Timeline {
        /// The head's address (default: the head started on this machine;
        /// FLEET_ADDRESS=auto asks for it too).
        #[arg(long, env = "FLEET_ADDRESS")]
        address: Option<String>,
        /// Token file (default: FLEET_TOKEN, else the one `fleet start --head` wrote here).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Output file.
        #[arg(short, long, default_value = "timeline.json")]
        output: PathBuf,
    },
    /// Lists tasks, actors, objects, nodes, jobs or workers (like `ray list`).
    List {
        /// tasks, actors, objects, nodes, jobs or workers.
        kind: String,
        /// Only rows in this state (tasks: waiting, ready, running,
        /// finished, failed; actors: alive, dead, ...).
        #[arg(long)]
        state: Option<String>,
        /// Only rows whose function (or actor class) contains this.
        #[arg(long)]
        function: Option<String>,
        /// Only rows on this node.
        #[arg(long)]
        node: Option<String>,
        /// At most this many rows (default 100).
        #[arg(long)]
        limit: Option<u32>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// The head's address (default: the head started on this machine).
        #[arg(long, env = "FLEET_ADDRESS")]
        address: Option<String>,
        /// Token file (default: FLEET_TOKEN, else the one `fleet start --head` wrote here).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Runs a program as a driver on the cluster, detached from this
    /// terminal, and looks after it (like `ray job`).
    #[command(subcommand)]
    Job(JobCommand),
    /// A worker's output (stdout and stderr), kept in a file on the node
    /// that ran it and read through the head (like `ray logs`). Name the
    /// worker by one of --pid, --task or --actor.
    #[command(group(clap::ArgGroup::new("worker").required(true).args(["pid", "task", "actor"])))]
    Logs {
        /// The worker's process id (as `fleet list tasks` shows it).
        #[arg(long)]
        pid: Option<u32>,
        /// The worker that ran this task (its id from `fleet list tasks`).
        #[arg(long)]
        task: Option<String>,
        /// The worker of this actor (its name, or id from `fleet list actors`).
        #[arg(long)]
        actor: Option<String>,
        /// With --pid: the node it ran on, for a worker the head no longer
        /// knows (see `fleet list nodes`).
        #[arg(long, requires = "pid")]
        node: Option<String>,
        /// Keep printing new output until the worker exits.
        #[arg(long, short)]
        follow: bool,
        /// Only the last N lines (then, with --follow, what comes).
        #[arg(long, value_name = "N")]
        tail: Option<u32>,
        /// The head's address (default: the head started on this machine).
        #[arg(long, env = "FLEET_ADDRESS")]
        address: Option<String>,
        /// Token file (default: FLEET_TOKEN, else the one `fleet start --head` wrote here).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Prints the build's version and protocol version.
    Version,
    /// Runs Ray's `ray microbenchmark` tests that Fleet supports on a local
    /// cluster. `TESTS_TO_RUN=pattern` runs only tests whose name contains
    /// the pattern; `TESTS_TO_SKIP=pattern` skips them.
    Microbenchmark {
        /// Timed rounds per test (Ray: 4).
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
        rounds: u32,
        /// Seconds per round (Ray: 2); the warm-up takes half as long.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// CPUs of the local cluster (default: this machine's cores).
        #[arg(long)]
        num_cpus: Option<usize>,
        /// Runs the single-node rows of Ray's scalability envelope instead.
        #[arg(long)]
        scale: bool,
        /// With --scale: tasks queued at once.
        #[arg(long, default_value_t = 1_000_000)]
        scale_tasks: usize,
        /// With --scale: size of the big object in GiB (0: skip it).
        #[arg(long, default_value_t = 16)]
        scale_object_gib: u64,
        /// Runs tasks of fixed compute sequentially, with rayon and with
        /// Fleet, then measures the head's CPU per task with node agents
        /// on 127.0.0.2.. (`--nodes`). With --scale as well, the scale
        /// rows come first (all of issue 15's figures in one run).
        #[arg(long)]
        efficiency: bool,
        /// With --efficiency: workloads as MICROSxCOUNT (default: the
        /// four of issue 15); `none` skips the comparison with rayon.
        #[arg(long, value_delimiter = ',')]
        sizes: Vec<String>,
        /// With --efficiency: node-agent counts for the head's CPU per
        /// task; `0` skips it.
        #[arg(long, value_delimiter = ',', default_values_t = [1usize, 4, 16])]
        nodes: Vec<usize>,
        /// With --efficiency: workloads of the head measurement (MICROSxCOUNT).
        #[arg(long, value_delimiter = ',', default_values = ["10x20000", "100x20000"])]
        head_sizes: Vec<String>,
        /// With --efficiency: CPUs each node agent offers.
        #[arg(long, default_value_t = 1)]
        node_cpus: usize,
        /// With --efficiency: rounds of the comparison with rayon (every
        /// workload once per round) and runs of each head measurement;
        /// the medians are shown.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// With --efficiency: MiB of the large values (Blob, Vec<u8>,
        /// Vec<f64>) put, passed and returned; 0 skips them.
        #[arg(long, default_value_t = 200)]
        value_mib: usize,
        /// With --efficiency: after each Fleet run, its CPU per task by
        /// process and thread, with sleeps and preemptions.
        #[arg(long)]
        threads: bool,
    },
}

/// Where a `fleet job` command finds the cluster.
#[derive(Args)]
struct JobTarget {
    /// The head's address (default: the head started on this machine;
    /// FLEET_ADDRESS=auto asks for it too).
    #[arg(long, env = "FLEET_ADDRESS")]
    address: Option<String>,
    /// Token file (default: FLEET_TOKEN, else the one `fleet start --head` wrote here).
    #[arg(long)]
    token_file: Option<PathBuf>,
}

impl JobTarget {
    fn into_target(self) -> fleet_cli::cli::job::Target {
        fleet_cli::cli::job::Target {
            address: self.address,
            token_file: self.token_file,
        }
    }
}

#[derive(Subcommand)]
enum JobCommand {
    /// Ships the executable and runs it as a driver on the cluster (the
    /// head's machine, or --node); prints the job id alone on stdout.
    Submit {
        #[command(flatten)]
        target: JobTarget,
        /// Run on this node (its name as `fleet status` prints it).
        #[arg(long)]
        node: Option<String>,
        /// Extra environment for the driver, KEY=VALUE (repeatable).
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// The program and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "PROGRAM ARGS")]
        command: Vec<String>,
    },
    /// Every job of the cluster: state, exit code, times.
    List {
        #[command(flatten)]
        target: JobTarget,
        /// Print JSON (a list of records) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One job: state, exit code, start and end times, where its output is.
    Status {
        #[command(flatten)]
        target: JobTarget,
        /// The job's id (from `fleet job submit` or `fleet job list`).
        id: String,
        /// Print JSON (a list with the one record).
        #[arg(long)]
        json: bool,
    },
    /// The driver's output (with its workers' lines).
    Logs {
        #[command(flatten)]
        target: JobTarget,
        /// The job's id.
        id: String,
        /// Keep printing new output until the job ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Stops a job: SIGTERM to its driver, SIGKILL after a grace period.
    Stop {
        #[command(flatten)]
        target: JobTarget,
        /// The job's id.
        id: String,
        /// Return at once instead of waiting until the driver has exited.
        #[arg(long)]
        no_wait: bool,
    },
}

fn job(command: JobCommand) -> anyhow::Result<()> {
    use fleet_cli::cli::job;
    match command {
        JobCommand::Submit {
            target,
            node,
            env,
            command,
        } => {
            let mut command = command.into_iter();
            let program = command.next().unwrap_or_default();
            let id = job::submit(
                &target.into_target(),
                job::Submit {
                    program: program.into(),
                    args: command.collect(),
                    node,
                    env,
                },
            )?;
            println!("{id}");
        }
        JobCommand::List { target, json } => {
            let jobs = job::list(&target.into_target())?;
            print!(
                "{}",
                if json {
                    job::json(&jobs)
                } else {
                    job::table(&jobs)
                }
            )
        }
        JobCommand::Status { target, id, json } => {
            let info = job::status(&target.into_target(), &id)?;
            if json {
                print!("{}", job::json(std::slice::from_ref(&info)))
            } else {
                print!("{}", job::describe(&info))
            }
        }
        JobCommand::Logs { target, id, follow } => job::logs(
            &target.into_target(),
            &id,
            follow,
            &mut std::io::stdout().lock(),
        )?,
        JobCommand::Stop {
            target,
            id,
            no_wait,
        } => {
            let info = job::stop(&target.into_target(), &id, !no_wait)?;
            println!("job {} {}: {}", info.id, info.state, info.message);
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    let cli = Cli::parse();
    // Before any thread starts: the settings reach every connection of this
    // process and of the workers it starts.
    for (var, value) in [
        (fleet::net::ENV_TLS_CERT, &cli.tls_cert),
        (fleet::net::ENV_TLS_KEY, &cli.tls_key),
        (fleet::net::ENV_TLS_CA, &cli.tls_ca),
    ] {
        if let Some(path) = value {
            std::env::set_var(var, std::fs::canonicalize(path)?);
        }
    }
    match cli.command {
        Command::Start(mut s) => {
            let autoscale = std::mem::take(&mut s.autoscale).options()?;
            let resources = match &s.resources {
                Some(text) => fleet::resources::parse_list("--resources", text)?,
                None => Vec::new(),
            };
            fleet_cli::cli::start(
                fleet_cli::cli::StartArgs {
                    head: s.head,
                    address: s.address,
                    port: s.port.unwrap_or(if s.head { 6380 } else { 0 }),
                    bind: s.bind,
                    node_ip: s.node_ip,
                    num_cpus: s.num_cpus,
                    object_store_bytes: s.object_store_bytes,
                    token_file: s.token_file,
                    block: s.block,
                    dashboard_port: (!s.no_dashboard).then_some(s.dashboard_port),
                    dashboard_bind: s.dashboard_bind,
                    autoscale,
                    wait_for_head: s.wait_for_head,
                    dead_node_ttl: s.dead_node_ttl,
                    health_port: s.health_port,
                    resources,
                },
                argv,
            )?
        }
        Command::Status {
            address,
            token_file,
        } => print!(
            "{}",
            fleet_cli::cli::status(address.as_deref(), token_file)?
        ),
        Command::Stop => println!("stopped {} fleet processes", fleet_cli::cli::stop()?),
        Command::Timeline {
            address,
            token_file,
            output,
        } => {
            let n = fleet_cli::cli::timeline(address.as_deref(), token_file, &output)?;
            println!("wrote {n} tasks to {}", output.display());
        }
        Command::List {
            kind,
            state,
            function,
            node,
            limit,
            json,
            address,
            token_file,
        } => {
            let opts = fleet_cli::cli::list::ListOptions {
                kind,
                state,
                function,
                node,
                limit,
                json,
            };
            print!(
                "{}",
                fleet_cli::cli::list::list(address.as_deref(), token_file, &opts)?
            );
        }
        Command::Job(command) => job(command)?,
        Command::Logs {
            pid,
            task,
            actor,
            node,
            follow,
            tail,
            address,
            token_file,
        } => fleet_cli::cli::logs::logs(
            &fleet_cli::cli::logs::LogsOptions {
                pid,
                task,
                actor,
                node,
                follow,
                tail,
                address,
                token_file,
            },
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        )?,
        Command::Version => println!(
            "fleet {} (protocol {})",
            env!("CARGO_PKG_VERSION"),
            fleet::PROTOCOL_VERSION
        ),
        Command::Microbenchmark {
            scale: true,
            efficiency: false,
            scale_tasks,
            scale_object_gib,
            num_cpus,
            ..
        } => fleet_cli::bench::run_scale(&fleet_cli::bench::ScaleOptions {
            tasks: scale_tasks,
            big_object_gib: scale_object_gib,
            num_cpus,
        })?,
        Command::Microbenchmark {
            efficiency: true,
            sizes,
            nodes,
            head_sizes,
            node_cpus,
            repeat,
            value_mib,
            threads,
            num_cpus,
            scale,
            scale_tasks,
            scale_object_gib,
            ..
        } => {
            let parse = |v: &[String]| -> anyhow::Result<Vec<fleet_cli::bench::efficiency::Size>> {
                v.iter()
                    .filter(|s| s.as_str() != "none")
                    .map(|s| s.parse().map_err(anyhow::Error::msg))
                    .collect()
            };
            let mut o = fleet_cli::bench::EfficiencyOptions {
                num_cpus,
                nodes: nodes.into_iter().filter(|n| *n > 0).collect(),
                head_sizes: parse(&head_sizes)?,
                node_cpus: node_cpus.max(1),
                repeat: repeat.max(1),
                value_mib,
                threads,
                ..Default::default()
            };
            if !sizes.is_empty() {
                o.sizes = parse(&sizes)?;
            }
            // The scale rows first: the driver's peak memory they print is
            // this process's high-water mark, which the large values of
            // the efficiency part would set.
            if scale {
                fleet_cli::bench::run_scale(&fleet_cli::bench::ScaleOptions {
                    tasks: scale_tasks,
                    big_object_gib: scale_object_gib,
                    num_cpus,
                })?;
            }
            fleet_cli::bench::run_efficiency(&o, rayon_sum)?;
        }
        Command::Microbenchmark {
            rounds,
            seconds,
            num_cpus,
            ..
        } => {
            anyhow::ensure!(
                seconds.is_finite() && seconds > 0.0,
                "--seconds must be positive"
            );
            let mut options = fleet_cli::bench::Options::from_env();
            options.settings.rounds = rounds as usize;
            options.settings.seconds = seconds;
            options.num_cpus = num_cpus;
            fleet_cli::bench::run(&options)?;
        }
    }
    Ok(())
}

/// The thread baseline of `--efficiency`: rayon's `into_par_iter` over the
/// tasks. It lives in the binary so that programs linking the library do
/// not link rayon.
fn rayon_sum(count: usize, iters: u64) -> u64 {
    use rayon::prelude::*;
    (0..count as u64)
        .into_par_iter()
        .map(|i| fleet_cli::bench::efficiency::lcg(iters, i))
        .reduce(|| 0, u64::wrapping_add)
}
