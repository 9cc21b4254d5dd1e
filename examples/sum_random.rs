//! Seed 001: the sum of N random integers, split over K tasks.
//!
//! Each task regenerates its own part of the numbers from a per-chunk seed
//! (nothing but the seed and the length is shipped), sums it and returns the
//! partial sum; the driver adds the partial sums up. The same chunks are then
//! summed in this process alone, and the two sums must be equal.
//!
//! ```text
//! cargo run --release --example sum_random -- --n 200000000 --tasks 2
//! cargo run --release --example sum_random -- --sweep --repeat 30
//! ```

use std::time::{Duration, Instant};

use clap::Parser;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Command-line arguments.
#[derive(Parser, Debug)]
#[command(about = "Sum N random integers, split over K fleet tasks")]
struct Args {
    /// How many random integers to sum.
    #[arg(long, default_value_t = 200_000_000)]
    n: u64,
    /// Number of tasks (default: the number of cores).
    #[arg(long)]
    tasks: Option<usize>,
    /// Base seed of the random numbers.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Timed runs of each side; the fastest counts.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Instead of one N, compare both sides over a range of N and report
    /// where the parallel sum starts to win.
    #[arg(long)]
    sweep: bool,
}

/// Sums `len` random integers in 1..=100 drawn from chunk `chunk`'s generator.
fn chunk_sum(seed: u64, chunk: u64, len: u64) -> u64 {
    let mut rng = SmallRng::seed_from_u64(seed ^ chunk.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut sum = 0u64;
    for _ in 0..len {
        sum += rng.random_range(1..=100u64);
    }
    sum
}

/// One task: the sum of one chunk.
#[fleet::remote]
fn do_work(seed: u64, chunk: u64, len: u64) -> u64 {
    chunk_sum(seed, chunk, len)
}

/// Splits `n` into `k` near-equal lengths (the first `n % k` get one more).
fn split(n: u64, k: usize) -> Vec<u64> {
    let k = k as u64;
    (0..k).map(|i| n / k + u64::from(i < n % k)).collect()
}

/// Runs `f` `repeat` times; returns its (last) value and the fastest time.
fn best_of<T>(
    repeat: usize,
    mut f: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<(T, Duration)> {
    let mut best = Duration::MAX;
    let mut value = None;
    for _ in 0..repeat.max(1) {
        let start = Instant::now();
        let v = f()?;
        best = best.min(start.elapsed());
        value = Some(v);
    }
    Ok((value.expect("ran at least once"), best))
}

/// One comparison: both sums and the fastest time of each side.
struct Run {
    parallel: u64,
    sequential: u64,
    par_time: Duration,
    seq_time: Duration,
}

impl Run {
    fn speedup(&self) -> f64 {
        self.seq_time.as_secs_f64() / self.par_time.as_secs_f64()
    }
}

/// Sums `n` numbers over `tasks` tasks and in this process alone.
fn measure(n: u64, tasks: usize, seed: u64, repeat: usize) -> anyhow::Result<Run> {
    let lengths = split(n, tasks);
    let (parallel, par_time) = best_of(repeat, || {
        let refs: Vec<_> = lengths
            .iter()
            .enumerate()
            .map(|(c, &len)| do_work::remote(seed, c as u64, len))
            .collect();
        Ok(fleet::get_all(&refs)?.into_iter().sum::<u64>())
    })?;
    let (sequential, seq_time) = best_of(repeat, || {
        Ok(lengths
            .iter()
            .enumerate()
            .map(|(c, &len)| chunk_sum(seed, c as u64, len))
            .sum::<u64>())
    })?;
    anyhow::ensure!(
        parallel == sequential,
        "N = {n}: parallel sum {parallel} != sequential sum {sequential}"
    );
    Ok(Run {
        parallel,
        sequential,
        par_time,
        seq_time,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tasks = args
        .tasks
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);

    let start = Instant::now();
    let _cluster = fleet::init()?;
    // Warm up: make sure every worker is up and has run a task.
    let warm: Vec<_> = (0..tasks as u64)
        .map(|c| do_work::remote(0, c, 1))
        .collect();
    fleet::get_all(&warm)?;
    let startup = start.elapsed();

    if args.sweep {
        println!("tasks = {tasks}, best of {} runs each", args.repeat);
        println!(
            "{:>12} {:>14} {:>14} {:>8}",
            "N", "sequential ms", "parallel ms", "speedup"
        );
        let mut break_even = None;
        for n in [
            10_000u64, 30_000, 100_000, 200_000, 300_000, 500_000, 1_000_000, 3_000_000, 10_000_000,
        ] {
            let run = measure(n, tasks, args.seed, args.repeat)?;
            println!(
                "{n:>12} {:>14.3} {:>14.3} {:>7.2}x",
                ms(run.seq_time),
                ms(run.par_time),
                run.speedup()
            );
            if run.speedup() > 1.0 {
                break_even.get_or_insert(n);
            } else {
                break_even = None;
            }
        }
        match break_even {
            Some(n) => println!("parallel beats sequential from N = {n} on"),
            None => println!("parallel never beat sequential at these N"),
        }
        println!("OK: every parallel sum equals its sequential sum");
        return Ok(());
    }

    let run = measure(args.n, tasks, args.seed, args.repeat)?;
    println!("N = {}, tasks = {tasks}", args.n);
    println!("sum (parallel)   = {}", run.parallel);
    println!("sum (sequential) = {}", run.sequential);
    println!("cluster start + warm-up: {:.3} ms", ms(startup));
    println!("sequential time: {:.3} ms", ms(run.seq_time));
    println!("parallel time:   {:.3} ms", ms(run.par_time));
    println!("speedup: {:.2}x", run.speedup());
    println!("OK: the parallel sum equals the sequential sum");
    Ok(())
}
