//! `fleet microbenchmark`: the tests of Ray's `ray microbenchmark` that
//! Fleet supports, with Ray's names, workloads and output format.
//!
//! Each test is measured as Ray's `timeit` does (a warm-up, then rounds of
//! about two seconds; the mean and standard deviation of the per-second
//! rate). `TESTS_TO_RUN` and `TESTS_TO_SKIP` select tests by substring, as
//! in Ray. Tests Fleet has no counterpart for (async actors, placement
//! groups, out-of-scope callbacks, Ray Client) are left out.
//!
//! Every task and actor call returns `b"ok"`. Large puts put a
//! [`Blob`](fleet::Blob) of zeros, Fleet's counterpart of Ray's numpy
//! array of zeros (both are encoded as one block of bytes).

mod actors;
pub mod efficiency;
mod memcpy;
mod objects;
mod scale;
mod tasks;
mod timeit;

pub use efficiency::{run_efficiency, EfficiencyOptions};
pub use scale::{run_scale, ScaleOptions};
pub use timeit::{Measurement, Settings, Timer};

/// What every benchmark task and actor call returns: Ray's `b"ok"`.
const SMALL: &[u8] = b"ok";

/// Ray's `small_value` task.
#[fleet::remote]
fn small_value() -> Vec<u8> {
    SMALL.to_vec()
}

/// How `fleet microbenchmark` runs.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Rounds, round length and test filters.
    pub settings: Settings,
    /// CPUs of the local cluster; default: the cores of this machine.
    pub num_cpus: Option<usize>,
}

impl Options {
    /// Ray's defaults (4 rounds of 2 seconds), with the filters read from
    /// `TESTS_TO_RUN` and `TESTS_TO_SKIP`.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Options {
            settings: Settings {
                filter: var("TESTS_TO_RUN"),
                skip: var("TESTS_TO_SKIP"),
                ..Settings::default()
            },
            num_cpus: None,
        }
    }
}

/// Starts a local cluster, runs the selected tests in Ray's order and
/// prints one line per test as it finishes; returns the measurements. A
/// failing test is reported on stderr and the others still run; the
/// result is then an error naming every failed test.
pub fn run(options: &Options) -> anyhow::Result<Vec<Measurement>> {
    println!("Tip: set TESTS_TO_RUN='pattern' to run a subset of benchmarks");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpus = options.num_cpus.unwrap_or(cores).max(1);
    let mut t = Timer::new(options.settings.clone());
    memcpy::run(&mut t)?;
    let cluster = fleet::init_with(fleet::Config {
        num_cpus: Some(cpus),
        ..Default::default()
    })?;
    if cluster.counts().is_none() {
        anyhow::bail!("fleet microbenchmark needs a local cluster; unset FLEET_ADDRESS");
    }
    if let Err(e) = objects::run(&mut t) {
        t.fail("object store tests (setup)", &e);
    }
    if let Err(e) = tasks::run(&mut t) {
        t.fail("task tests (setup)", &e);
    }
    if let Err(e) = actors::run(&mut t, (cores / 2).max(1)) {
        t.fail("actor tests (setup)", &e);
    }
    drop(cluster);
    if !t.failures().is_empty() {
        let names: Vec<&str> = t.failures().iter().map(|(n, _)| n.as_str()).collect();
        anyhow::bail!("{} test(s) failed: {}", names.len(), names.join("; "));
    }
    Ok(t.into_results())
}
