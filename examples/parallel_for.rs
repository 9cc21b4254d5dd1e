//! Seed 004: a parallel for loop, the loop's values split into n chunks.
//!
//! The seed forks one child per chunk and passes the results back through
//! CSV files; here each chunk is a remote task that returns its results,
//! and the chunk results are concatenated in chunk order. The merged list
//! must equal the plain sequential loop.

use anyhow::ensure;
use clap::Parser;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Command-line arguments.
#[derive(Parser, Debug)]
#[command(about = "A for loop split into chunks, each chunk a fleet task")]
struct Args {
    /// Number of chunks (default: the number of cores).
    #[arg(long)]
    chunks: Option<usize>,
    /// Number of values in the loop.
    #[arg(long, default_value_t = 100)]
    len: usize,
    /// Seed of the random values.
    #[arg(long, default_value_t = 4)]
    seed: u64,
}

/// The loop body of the seed.
fn long_calculation(value: f64) -> f64 {
    value * 2.0
}

/// One chunk of the loop, run as a task.
#[fleet::remote]
fn worker(sub_list: Vec<f64>) -> Vec<f64> {
    sub_list.into_iter().map(long_calculation).collect()
}

/// `np.array_split`: `n` near-equal consecutive parts, the longer ones first.
fn array_split<T: Clone>(values: &[T], n: usize) -> Vec<Vec<T>> {
    let (base, extra) = (values.len() / n, values.len() % n);
    let mut parts = Vec::with_capacity(n);
    let mut rest = values;
    for i in 0..n {
        let (part, tail) = rest.split_at(base + usize::from(i < extra));
        parts.push(part.to_vec());
        rest = tail;
    }
    parts
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let n = args
        .chunks
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let _cluster = fleet::init()?;

    let mut rng = SmallRng::seed_from_u64(args.seed);
    let values: Vec<f64> = (0..args.len).map(|_| rng.random()).collect();

    let refs: Vec<_> = array_split(&values, n)
        .into_iter()
        .enumerate()
        .map(|(i, sub_list)| {
            println!("Starting worker {i} ({} values) ...", sub_list.len());
            worker::remote(sub_list)
        })
        .collect();
    let together: Vec<f64> = fleet::get_all(&refs)?.concat();
    println!(
        "{} results, first {:?}, sum {}",
        together.len(),
        &together[..together.len().min(4)],
        together.iter().sum::<f64>()
    );

    let mut all_results = Vec::new();
    for value in &values {
        all_results.push(long_calculation(*value));
    }
    ensure!(
        together == all_results,
        "the merged chunk results differ from the sequential loop"
    );
    println!("OK: the merged results equal the sequential loop");
    Ok(())
}
