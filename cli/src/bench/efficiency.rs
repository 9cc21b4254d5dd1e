//! `fleet microbenchmark --efficiency`: how much of a machine, or of a
//! cluster, a user gives up by running tasks through Fleet instead of
//! threads.
//!
//! Part one runs N tasks of fixed compute three ways on this machine:
//! sequentially, with a thread-pool baseline (the `fleet` binary passes
//! rayon's `into_par_iter`; the library itself does not link rayon), and as
//! Fleet tasks (`f::remote` for all, then `get_all`) on a local cluster.
//! Part two starts a head in its own process (`--num-cpus 0`, so no task
//! runs beside it) and 1, 4, 16… node agents on loopback addresses, and
//! measures the CPU the head spends per task while the driver and workers
//! are elsewhere. Part three feeds those costs to a simulation of a
//! larger cluster (`efficiency/sim.rs`) to find where one head saturates.

mod local;
mod nodes;
pub mod sim;
mod threads;

use std::time::{Duration, Instant};

use fleet::{Blob, ObjectRef};
pub use local::Row;
use nodes::{cpu_micros, Cluster as ProcCluster};

/// One workload: `count` tasks of about `micros` of compute each.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Size {
    /// Compute per task, in microseconds on one core.
    pub micros: f64,
    /// Number of tasks.
    pub count: usize,
}

impl std::str::FromStr for Size {
    type Err = String;

    /// `MICROSxCOUNT`, e.g. `100x20000`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (m, c) = s
            .split_once('x')
            .ok_or_else(|| format!("size {s:?}: write MICROSxCOUNT, e.g. 100x20000"))?;
        let micros: f64 = m
            .parse()
            .map_err(|_| format!("size {s:?}: {m:?} is not a number of microseconds"))?;
        let count: usize = c
            .parse()
            .map_err(|_| format!("size {s:?}: {c:?} is not a task count"))?;
        if !(micros.is_finite() && micros >= 0.0) || count == 0 {
            return Err(format!(
                "size {s:?}: microseconds must be ≥ 0 and the count ≥ 1"
            ));
        }
        Ok(Size { micros, count })
    }
}

/// The four workloads.
pub const DEFAULT_SIZES: [Size; 4] = [
    Size {
        micros: 10.0,
        count: 20_000,
    },
    Size {
        micros: 100.0,
        count: 20_000,
    },
    Size {
        micros: 1_000.0,
        count: 4_000,
    },
    Size {
        micros: 10_000.0,
        count: 400,
    },
];

/// Runs `count` tasks of `iters` LCG steps in parallel on this machine's
/// threads and returns the sum of their results: the baseline Fleet is
/// compared with. The `fleet` binary passes rayon; keeping it a parameter
/// keeps rayon out of every program that links the library.
pub type Parallel = fn(count: usize, iters: u64) -> u64;

/// What `--efficiency` runs.
#[derive(Clone, Debug)]
pub struct EfficiencyOptions {
    /// Workloads compared with sequential and the baseline.
    pub sizes: Vec<Size>,
    /// CPUs of the local cluster; default: the cores of this machine.
    pub num_cpus: Option<usize>,
    /// Node-agent counts at which the head's CPU per task is measured
    /// (empty: skip that part).
    pub nodes: Vec<usize>,
    /// Workloads of the head measurement.
    pub head_sizes: Vec<Size>,
    /// CPUs each node agent offers.
    pub node_cpus: usize,
    /// Rounds of part one (every workload once per round, interleaved)
    /// and runs of each head measurement; medians are reported.
    pub repeat: usize,
    /// MiB of the large values put, passed and returned as `Blob`,
    /// `Vec<u8>` and `Vec<f64>` (0: skip that part).
    pub value_mib: usize,
    /// After each Fleet run, where its CPU went, by process role and
    /// thread name (`efficiency/threads.rs`).
    pub threads: bool,
}

impl Default for EfficiencyOptions {
    fn default() -> Self {
        EfficiencyOptions {
            sizes: DEFAULT_SIZES.to_vec(),
            num_cpus: None,
            nodes: vec![1, 4, 16],
            head_sizes: vec![
                Size {
                    micros: 10.0,
                    count: 20_000,
                },
                Size {
                    micros: 100.0,
                    count: 20_000,
                },
            ],
            node_cpus: 1,
            repeat: 3,
            value_mib: 200,
            threads: false,
        }
    }
}

/// One step of the LCG every task runs, with an xorshift of its output:
/// serial (each step needs the last), so time is linear in `iters`. The
/// shift keeps the compiler from folding several affine steps into one.
#[inline(always)]
fn step(x: u64) -> u64 {
    let x = x
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    x ^ (x >> 29)
}

/// `iters` LCG steps from `seed`.
pub fn lcg(iters: u64, seed: u64) -> u64 {
    let mut x = std::hint::black_box(seed);
    for _ in 0..iters {
        x = step(x);
    }
    std::hint::black_box(x)
}

/// The task: `iters` LCG steps.
#[fleet::remote]
fn lcg_task(iters: u64, seed: u64) -> u64 {
    lcg(iters, seed)
}

/// LCG steps per microsecond on one core: the best of several timed runs
/// of about 20 ms (the best is the least disturbed by other processes).
/// `FLEET_CALIBRATION=STEPS` skips the measurement, so that runs compared
/// by their CPU and instruction counts do the same work whatever the load.
pub fn calibrate() -> f64 {
    if let Some(fixed) = std::env::var("FLEET_CALIBRATION")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v > 0.0)
    {
        return fixed;
    }
    let n = 1u64 << 22;
    let mut best = f64::MAX;
    for _ in 0..7 {
        let t = Instant::now();
        lcg(n, 1);
        best = best.min(t.elapsed().as_secs_f64());
    }
    n as f64 / (best * 1e6)
}

/// The head's cost at one cluster size.
#[derive(Clone, Debug)]
pub struct HeadRow {
    /// Node agents.
    pub nodes: usize,
    /// The workload.
    pub size: Size,
    /// Wall time of the run.
    pub wall: Duration,
    /// Head CPU per task, in microseconds.
    pub head_us_per_task: f64,
    /// Tasks per second the cluster finished.
    pub rate: f64,
}

/// Runs part one (local cluster against threads), part two (the head's
/// CPU per task at each node count) and the saturation estimate.
pub fn run_efficiency(o: &EfficiencyOptions, parallel: Parallel) -> anyhow::Result<()> {
    let per_us = calibrate();
    println!("calibration: {per_us:.1} LCG steps per µs on one core");
    if !o.sizes.is_empty() {
        local::local(o, parallel, per_us)?;
    }
    if o.value_mib > 0 {
        values(o.value_mib << 20, o.num_cpus)?;
    }
    let mut head_rows = Vec::new();
    for &n in &o.nodes {
        head_rows.extend(head_cost(n, o, per_us)?);
    }
    if !head_rows.is_empty() {
        print_saturation(&head_rows, o.node_cpus);
    }
    Ok(())
}

fn iters(size: Size, per_us: f64) -> u64 {
    (size.micros * per_us).round() as u64
}

/// Part two at one cluster size: a head process with no CPUs of its own,
/// `n` node agents, this process as the driver.
fn head_cost(n: usize, o: &EfficiencyOptions, per_us: f64) -> anyhow::Result<Vec<HeadRow>> {
    let procs = ProcCluster::start(n, o.node_cpus)?;
    let cluster = fleet::init_with(fleet::Config {
        address: Some(procs.address().to_string()),
        token: Some(procs.token().to_string()),
        ..Default::default()
    })?;
    // Warm up: a worker on every node, the function's run time known.
    // Through the head (`retry_on_error` keeps a task off the leased path),
    // which starts a worker wherever tasks wait; leases would start only
    // as many as the driver's queue needs.
    let warm: Vec<ObjectRef<u64>> = (0..(200 * n as u64))
        .map(|i| lcg_task::options().retry_on_error(true).remote(1000, i))
        .collect();
    fleet::get_all(&warm)?;
    drop(warm);
    procs.wait_workers(n * o.node_cpus, Duration::from_secs(60))?;
    let mut rows = Vec::new();
    for &size in &o.head_sizes {
        let it = iters(size, per_us);
        let head = procs.head_pid();
        let mut runs = Vec::new();
        for _ in 0..o.repeat.max(1) {
            let cpu0 = cpu_micros(head);
            let t = Instant::now();
            let refs: Vec<ObjectRef<u64>> = (0..size.count as u64)
                .map(|i| lcg_task::remote(it, i))
                .collect();
            let got = fleet::get_all(&refs)?;
            let wall = t.elapsed();
            anyhow::ensure!(got.len() == size.count);
            // The head's work for a task ends when it frees the result:
            // count the releases too, and leave none for the next run.
            drop(refs);
            procs.wait_objects_below(64, Duration::from_secs(60))?;
            // With leases, the head's share of a task is the lease traffic
            // and the workers' summaries: counted until they are done.
            procs.wait_leases_returned(Duration::from_secs(60))?;
            let cpu = cpu_micros(head).saturating_sub(cpu0) as f64;
            runs.push(HeadRow {
                nodes: n,
                size,
                wall,
                head_us_per_task: cpu / size.count as f64,
                rate: size.count as f64 / wall.as_secs_f64(),
            });
        }
        runs.sort_by(|a, b| a.head_us_per_task.total_cmp(&b.head_us_per_task));
        let us: Vec<String> = runs
            .iter()
            .map(|r| format!("{:.1}", r.head_us_per_task))
            .collect();
        let row = runs[runs.len() / 2].clone();
        println!(
            "head cost: {:>2} node agents × {} CPU, {} µs × {}: {:.0} tasks/s, head CPU per task median {:.1} µs (runs: {})",
            n,
            o.node_cpus,
            size.micros,
            size.count,
            row.rate,
            row.head_us_per_task,
            us.join(", ")
        );
        rows.push(row);
    }
    drop(cluster);
    drop(procs);
    Ok(rows)
}

/// Prints, from the head's measured cost per task, the cluster size at
/// which the head would be busy all the time (see [`sim`]).
fn print_saturation(rows: &[HeadRow], node_cpus: usize) {
    let worst = rows
        .iter()
        .map(|r| r.head_us_per_task)
        .fold(0.0f64, f64::max);
    for task_us in [100.0, 1_000.0, 10_000.0] {
        let cores = sim::saturation_cores(worst, task_us);
        println!(
            "head saturates (at {worst:.1} µs of head CPU per task) with {task_us} µs tasks at about {cores:.0} cores ({} nodes of {node_cpus} CPUs)",
            (cores / node_cpus as f64).floor()
        );
    }
}

/// Length of a `Blob` argument.
#[fleet::remote]
fn blob_len(v: Blob) -> usize {
    v.len()
}

/// Length of a `Vec<u8>` argument.
#[fleet::remote]
fn bytes_len(v: Vec<u8>) -> usize {
    v.len()
}

/// Length of a `Vec<f64>` argument.
#[fleet::remote]
fn floats_len(v: Vec<f64>) -> usize {
    v.len()
}

/// A `Blob` of `n` bytes.
#[fleet::remote]
fn make_blob(n: usize) -> Blob {
    Blob::from(vec![1u8; n])
}

/// A `Vec<u8>` of `n` bytes.
#[fleet::remote]
fn make_bytes(n: usize) -> Vec<u8> {
    vec![1u8; n]
}

/// A `Vec<f64>` of `n` bytes.
#[fleet::remote]
fn make_floats(n: usize) -> Vec<f64> {
    vec![1.0; n / 8]
}

/// Seconds `f` took.
fn secs<T>(f: impl FnOnce() -> fleet::Result<T>) -> anyhow::Result<(f64, T)> {
    let t = Instant::now();
    let v = f()?;
    Ok((t.elapsed().as_secs_f64(), v))
}

/// Part four: a large value as `put` + `get`, as an argument and as a
/// result, for `Blob`, `Vec<u8>` and `Vec<f64>` of `bytes` bytes.
fn values(bytes: usize, num_cpus: Option<usize>) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let _cluster = fleet::init_with(fleet::Config {
        num_cpus: Some(num_cpus.unwrap_or(cores).max(1)),
        ..Default::default()
    })?;
    println!(
        "{:<10} {:>8} {:>8} {:>10} {:>10}   ({} MiB values)",
        "value",
        "put s",
        "get s",
        "as arg s",
        "as result s",
        bytes >> 20
    );
    let line = |name: &str, t: [f64; 4]| {
        println!(
            "{name:<10} {:>8.3} {:>8.3} {:>10.3} {:>10.3}",
            t[0], t[1], t[2], t[3]
        )
    };
    // Each value is made before its clock starts; the task that returns
    // one makes it (a memset, the same for all three) inside its time.
    let blob = Blob::from(vec![1u8; bytes]);
    let (put, r) = secs(|| fleet::put(blob.clone()))?;
    let (get, back) = secs(|| fleet::get(&r))?;
    anyhow::ensure!(back.len() == bytes);
    drop((back, r));
    let (arg, n) = secs(|| fleet::get(&blob_len::remote(blob.clone())))?;
    anyhow::ensure!(n == bytes);
    drop(blob);
    let (res, v) = secs(|| fleet::get(&make_blob::remote(bytes)))?;
    anyhow::ensure!(v.len() == bytes);
    drop(v);
    line("Blob", [put, get, arg, res]);

    let vec = vec![1u8; bytes];
    let (put, r) = secs(|| fleet::put(vec.clone()))?;
    let (get, back) = secs(|| fleet::get(&r))?;
    anyhow::ensure!(back.len() == bytes && back[bytes / 2] == 1);
    drop((back, r));
    let (arg, n) = secs(|| fleet::get(&bytes_len::remote(&vec)))?;
    anyhow::ensure!(n == bytes);
    drop(vec);
    let (res, v) = secs(|| fleet::get(&make_bytes::remote(bytes)))?;
    anyhow::ensure!(v.len() == bytes);
    drop(v);
    line("Vec<u8>", [put, get, arg, res]);

    let floats = vec![1.0f64; bytes / 8];
    let (put, r) = secs(|| fleet::put(floats.clone()))?;
    let (get, back) = secs(|| fleet::get(&r))?;
    anyhow::ensure!(back.len() == bytes / 8 && back[bytes / 16] == 1.0);
    drop((back, r));
    let (arg, n) = secs(|| fleet::get(&floats_len::remote(&floats)))?;
    anyhow::ensure!(n == bytes / 8);
    drop(floats);
    let (res, v) = secs(|| fleet::get(&make_floats::remote(bytes)))?;
    anyhow::ensure!(v.len() == bytes / 8);
    line("Vec<f64>", [put, get, arg, res]);
    Ok(())
}
