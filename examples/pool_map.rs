//! Seed 002: `multiprocessing.Pool(2).map`, random-array powers, and a
//! Dask-style chunked array mean.
//!
//! 1. Eight `(name, seconds)` items are mapped (`mp_worker::map(DATA)`, as
//!    `Pool(2).map(mp_worker, data)`) over tasks that announce
//!    themselves, sleep and return `name + name`; the results come back in
//!    input order. The cluster has 2 CPUs, so (as with `Pool(2)`) at most
//!    two items sleep at once: the map takes at least half the total sleep.
//! 2. Each task draws a seeded array of standard normals, raises it to a
//!    power (1, 2, 12, 15) and returns the mean.
//! 3. A 1000x1000 normal matrix in 100x100 blocks, one task per block,
//!    reduced to the column means and the overall mean.
//!
//! Every result is checked against the same computation in this process.

use std::time::{Duration, Instant};

use anyhow::ensure;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

/// The items of the seed: a name and how long its task sleeps.
const DATA: [(&str, &str); 8] = [
    ("a", ".2"),
    ("b", ".4"),
    ("c", ".6"),
    ("d", ".8"),
    ("e", ".1"),
    ("f", ".3"),
    ("g", ".5"),
    ("h", ".7"),
];

/// Length of the random arrays (the seed uses 1e8; 2e6 keeps this quick).
const ARRAY_LEN: usize = 2_000_000;
/// Powers the arrays are raised to.
const POWERS: [i32; 4] = [1, 2, 12, 15];
/// Side of the Dask-style matrix and of its square blocks.
const SIDE: usize = 1000;
const BLOCK: usize = 100;
/// Base seed of all random numbers here.
const SEED: u64 = 7;

/// Announces the item, sleeps its time and returns its name twice.
#[fleet::remote]
fn mp_worker(inputs: String, the_time: String) -> Result<String, String> {
    println!(" Process {inputs}\tWaiting {the_time} seconds");
    let secs: f64 = the_time
        .parse()
        .map_err(|e| format!("bad time {the_time:?}: {e}"))?;
    std::thread::sleep(Duration::from_secs_f64(secs));
    println!(" Process {inputs}\tDONE");
    Ok(format!("{inputs}{inputs}"))
}

/// Mean of `ARRAY_LEN` seeded standard normals raised to `power`.
fn power_mean(power: i32) -> f64 {
    let mut rng = SmallRng::seed_from_u64(SEED.wrapping_add(power as u64));
    let sum: f64 = (0..ARRAY_LEN)
        .map(|_| rng.sample::<f64, _>(StandardNormal).powi(power))
        .sum();
    sum / ARRAY_LEN as f64
}

/// The second `mp_worker` of the seed: a random array's mean at a power.
#[fleet::remote]
fn power_worker(power: i32) -> f64 {
    let mean = power_mean(power);
    println!("Raising random array to the {power}th power");
    mean
}

/// The values of block (`row`, `col`) of the matrix, row-major.
fn block_values(row: usize, col: usize) -> Vec<f64> {
    let id = (row * (SIDE / BLOCK) + col) as u64;
    let mut rng = SmallRng::seed_from_u64(SEED ^ (id + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    (0..BLOCK * BLOCK)
        .map(|_| rng.sample(StandardNormal))
        .collect()
}

/// Column sums of one block.
#[fleet::remote]
fn block_column_sums(row: usize, col: usize) -> Vec<f64> {
    let values = block_values(row, col);
    let mut sums = vec![0.0; BLOCK];
    for r in values.chunks(BLOCK) {
        for (s, v) in sums.iter_mut().zip(r) {
            *s += v;
        }
    }
    sums
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn main() -> anyhow::Result<()> {
    let _cluster = fleet::init_with(fleet::Config {
        num_cpus: Some(2),
        ..Default::default()
    })?;

    // 1. Pool.map with sleeps.
    let start = Instant::now();
    let names = fleet::get_all(&mp_worker::map(DATA))?;
    let took = start.elapsed().as_secs_f64();
    println!("{names:?}");
    let expected: Vec<String> = DATA.iter().map(|(n, _)| format!("{n}{n}")).collect();
    ensure!(
        names == expected,
        "pool map: got {names:?}, expected {expected:?}"
    );
    let total: f64 = DATA
        .iter()
        .map(|(_, t)| t.parse::<f64>().unwrap_or(0.0))
        .sum();
    println!("map took {took:.2} s for {total:.1} s of sleep on 2 CPUs");
    ensure!(
        took >= total / 2.0 - 0.05,
        "more than 2 items slept at once ({took:.2} s)"
    );
    ensure!(
        took < total * 0.8,
        "the items did not sleep in parallel ({took:.2} s)"
    );

    // 2. Random arrays raised to powers.
    let means = fleet::get_all(&power_worker::map(POWERS))?;
    println!("{means:?}");
    let local: Vec<f64> = POWERS.iter().map(|&p| power_mean(p)).collect();
    ensure!(
        means == local,
        "powers: got {means:?}, computed locally {local:?}"
    );

    // 3. Dask: Y = normal(size=(1000, 1000), chunks=(100, 100)).
    let nb = SIDE / BLOCK;
    let blocks: Vec<Vec<_>> = (0..nb)
        .map(|r| (0..nb).map(|c| block_column_sums::remote(r, c)).collect())
        .collect();
    let mut col_sums = vec![0.0; SIDE];
    for row in &blocks {
        for (c, sums) in fleet::get_all(row)?.into_iter().enumerate() {
            for (s, v) in col_sums[c * BLOCK..(c + 1) * BLOCK].iter_mut().zip(sums) {
                *s += v;
            }
        }
    }
    let mu: Vec<f64> = col_sums.iter().map(|s| s / SIDE as f64).collect();
    let mean = col_sums.iter().sum::<f64>() / (SIDE * SIDE) as f64;
    println!("mu[0] = {}", mu[0]);
    println!("Y.mean() = {mean}");

    // The same matrix, whole, in this process.
    let mut matrix = vec![0.0; SIDE * SIDE];
    for r in 0..nb {
        for c in 0..nb {
            for (i, v) in block_values(r, c).into_iter().enumerate() {
                matrix[(r * BLOCK + i / BLOCK) * SIDE + c * BLOCK + i % BLOCK] = v;
            }
        }
    }
    let local_mu: Vec<f64> = (0..SIDE)
        .map(|c| (0..SIDE).map(|r| matrix[r * SIDE + c]).sum::<f64>() / SIDE as f64)
        .collect();
    let local_mean = matrix.iter().sum::<f64>() / matrix.len() as f64;
    ensure!(
        mu.iter().zip(&local_mu).all(|(a, b)| close(*a, *b)),
        "column means differ from the local computation"
    );
    ensure!(close(mean, local_mean), "mean {mean} != local {local_mean}");
    println!("OK: all results equal the single-process computation");
    Ok(())
}
