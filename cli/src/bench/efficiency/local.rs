//! Part one of `--efficiency`: N tasks of fixed compute run sequentially,
//! with the thread-pool baseline and as Fleet tasks on a local cluster,
//! `--repeat` rounds of every workload, interleaved.
//!
//! One run of a workload is not enough to judge a target: on the 2-core
//! VM this project is measured on, the baseline's own time varied by a
//! fifth between consecutive runs, and Fleet/rayon at 10 µs from 1.33 to
//! 1.58 for the same binary. Rounds alternate the workloads (so a slow
//! minute of the machine touches each a little, not one a lot), and the
//! medians per workload come last, with every round's ratio.

use std::time::{Duration, Instant};

use fleet::ObjectRef;

use super::nodes::cpu_micros;
use super::{iters, lcg, lcg_task, threads, EfficiencyOptions, Parallel, Size};

/// CPU of the processes in `pids`, in microseconds; the basis of idle
/// share (CPU used against cores × wall time).
fn cpu_of(pids: &[u32]) -> u64 {
    pids.iter().map(|p| cpu_micros(*p)).sum()
}

/// CPU time of the calling thread, in microseconds: unlike wall time, it
/// does not grow when other processes take the cores.
fn thread_cpu_micros() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the calling thread's CPU clock into `t`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1_000
}

/// Times the main threads of `pids` went to sleep (voluntary context
/// switches). A worker's main thread runs the tasks and sleeps only when
/// its queue is empty (or it waits in `get`), so this counts the times
/// workers ran out of work, whatever else runs on the machine.
fn sleeps_of(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| {
            procfs::process::Process::new(*p as i32)
                .and_then(|p| p.status())
                .ok()?
                .voluntary_ctxt_switches
        })
        .sum()
}

/// One workload's result on this machine.
#[derive(Clone, Debug)]
pub struct Row {
    /// The workload.
    pub size: Size,
    /// Wall time sequentially, with the baseline, and with Fleet.
    pub sequential: Duration,
    /// Wall time of the thread-pool baseline.
    pub parallel: Duration,
    /// Wall time of Fleet.
    pub fleet: Duration,
    /// Cores Fleet's processes kept busy on average during its run (the
    /// driver, with the head in it, and the workers): `cores` means none
    /// idled. Other load on the machine lowers it too.
    pub fleet_busy: f64,
    /// CPU Fleet's processes spent per task beyond the task's own compute
    /// (measured as CPU time of the sequential run), in microseconds:
    /// submit, scheduling, transport, results. Not inflated by other load.
    pub overhead_us: f64,
    /// Times a worker ran out of work, per 100 tasks (see [`sleeps_of`]).
    pub dry_per_100: f64,
}

impl Row {
    /// Fleet's time over the baseline's (the target measure).
    pub fn ratio(&self) -> f64 {
        self.fleet.as_secs_f64() / self.parallel.as_secs_f64()
    }
}

/// Runs part one: `o.repeat` rounds over `o.sizes`, a row printed per run,
/// then the medians per workload when there was more than one round.
pub(super) fn local(
    o: &EfficiencyOptions,
    parallel: Parallel,
    per_us: f64,
) -> anyhow::Result<Vec<Row>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpus = o.num_cpus.unwrap_or(cores).max(1);
    let cluster = fleet::init_with(fleet::Config {
        num_cpus: Some(cpus),
        ..Default::default()
    })?;
    anyhow::ensure!(
        cluster.counts().is_some(),
        "--efficiency compares a local cluster with threads; unset FLEET_ADDRESS"
    );
    // Warm up: every worker started and connected, the function's run
    // time known to the scheduler.
    let warm: Vec<ObjectRef<u64>> = (0..200).map(|i| lcg_task::remote(100, i)).collect();
    fleet::get_all(&warm)?;
    println!(
        "{:<16} {:>9} {:>9} {:>9} {:>8} {:>8} {:>12} {:>10} {:>12} {:>10}",
        "task × count",
        "seq s",
        "rayon s",
        "fleet s",
        "rayon x",
        "fleet x",
        "fleet/rayon",
        "fleet busy",
        "over µs/task",
        "dry/100"
    );
    let rounds = o.repeat.max(1);
    let mut rows = Vec::new();
    for _ in 0..rounds {
        for &size in &o.sizes {
            let row = run_once(&cluster, o.threads, size, parallel, per_us, cores)?;
            rows.push(row);
        }
    }
    if rounds > 1 {
        print_medians(&o.sizes, &rows, rounds);
    }
    drop(cluster);
    Ok(rows)
}

/// One workload once: sequential, the baseline, then Fleet; prints its row.
fn run_once(
    cluster: &fleet::Cluster,
    with_threads: bool,
    size: Size,
    parallel: Parallel,
    per_us: f64,
    cores: usize,
) -> anyhow::Result<Row> {
    let it = iters(size, per_us);
    let t = Instant::now();
    let cpu_seq = thread_cpu_micros();
    let mut want = 0u64;
    for i in 0..size.count as u64 {
        want = want.wrapping_add(lcg(it, i));
    }
    let sequential = t.elapsed();
    let compute = thread_cpu_micros().saturating_sub(cpu_seq) as f64;

    let t = Instant::now();
    let got = parallel(size.count, it);
    let par = t.elapsed();
    anyhow::ensure!(got == want, "the baseline computed {got}, not {want}");

    let workers = cluster.worker_pids();
    let mut pids = workers.clone();
    pids.push(std::process::id());
    let cpu0 = cpu_of(&pids);
    let sleeps0 = sleeps_of(&workers);
    let threads0 = with_threads.then(|| threads::Snapshot::take(std::process::id(), &workers));
    let t = Instant::now();
    let refs: Vec<ObjectRef<u64>> = (0..size.count as u64)
        .map(|i| lcg_task::remote(it, i))
        .collect();
    let got = fleet::get_all(&refs)?
        .into_iter()
        .fold(0u64, u64::wrapping_add);
    let fleet = t.elapsed();
    let cpu = cpu_of(&pids).saturating_sub(cpu0) as f64;
    let sleeps = sleeps_of(&workers).saturating_sub(sleeps0) as f64;
    let threads1 = with_threads.then(|| threads::Snapshot::take(std::process::id(), &workers));
    anyhow::ensure!(got == want, "Fleet computed {got}, not {want}");
    drop(refs);
    let busy = cpu / (fleet.as_secs_f64() * 1e6);
    let row = Row {
        size,
        sequential,
        parallel: par,
        fleet,
        fleet_busy: busy,
        overhead_us: (cpu - compute).max(0.0) / size.count as f64,
        dry_per_100: 100.0 * sleeps / size.count as f64,
    };
    let s = sequential.as_secs_f64();
    println!(
        "{:<16} {:>9.3} {:>9.3} {:>9.3} {:>7.2}x {:>7.2}x {:>12.2} {:>5.2} of {cores} {:>12.1} {:>10.1}",
        label(size),
        s,
        par.as_secs_f64(),
        fleet.as_secs_f64(),
        s / par.as_secs_f64(),
        s / fleet.as_secs_f64(),
        row.ratio(),
        busy,
        row.overhead_us,
        row.dry_per_100
    );
    if let (Some(before), Some(after)) = (&threads0, &threads1) {
        after.print_since(before, size.count);
    }
    Ok(row)
}

fn label(size: Size) -> String {
    format!("{} µs × {}", size.micros, size.count)
}

/// The median of `values` (the upper one of an even count).
pub(super) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Per workload: the median Fleet/rayon ratio over the rounds, each
/// round's ratio, and the median CPU beyond compute per task.
fn print_medians(sizes: &[Size], rows: &[Row], rounds: usize) {
    println!("medians of {rounds} rounds:");
    for &size in sizes {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.size == size).collect();
        let ratios: Vec<f64> = mine.iter().map(|r| r.ratio()).collect();
        let listed: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "{:<16} fleet/rayon {:.2} (runs: {}), over µs/task {:.1}",
            label(size),
            median(ratios.clone()),
            listed.join(", "),
            median(mine.iter().map(|r| r.overhead_us).collect()),
        );
    }
}

#[cfg(test)]
mod tests;
