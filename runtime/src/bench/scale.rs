//! `fleet microbenchmark --scale`: the single-node rows of Ray's scalability
//! envelope, each printed with the time it took and the peak resident
//! memory of the driver's process (which holds the head of a local
//! cluster) and of the workers.

use std::time::Instant;

use super::small_value;
use crate::{Blob, ObjectRef};

/// A stateless actor, called once.
#[crate::remote]
struct Probe;

#[crate::remote]
impl Probe {
    /// Nothing to build.
    fn new() -> Self {
        Probe
    }

    /// The smallest call.
    fn ping(&self) -> u8 {
        1
    }
}

/// Ray's "one task with many object ref arguments": here the refs travel
/// inside one argument and the task waits for all of them.
#[crate::remote]
fn consume(refs: Vec<ObjectRef<Vec<u8>>>) -> crate::Result<usize> {
    Ok(crate::get_all(&refs)?.len())
}

/// Ray's "one task returning many objects": the task puts `n` objects and
/// returns refs to them.
#[crate::remote]
fn produce(n: usize) -> crate::Result<Vec<ObjectRef<u64>>> {
    (0..n as u64).map(crate::put).collect()
}

/// Peak resident memory of a process, in MiB (VmHWM).
fn peak_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .unwrap_or(0)
        / 1024
}

fn report(cluster: &crate::Cluster, name: &str, started: Instant) {
    let workers: Vec<u64> = cluster.worker_pids().iter().map(|p| peak_mib(*p)).collect();
    println!(
        "{name}: {:.2} s; peak memory: driver+head {} MiB, workers max {} MiB ({} workers)",
        started.elapsed().as_secs_f64(),
        peak_mib(std::process::id()),
        workers.iter().max().copied().unwrap_or(0),
        workers.len()
    );
}

/// What `--scale` runs.
#[derive(Clone, Debug)]
pub struct ScaleOptions {
    /// Tasks queued at once (Ray: 1,000,000).
    pub tasks: usize,
    /// Size of the big object in GiB (Ray: 16); 0 skips it.
    pub big_object_gib: u64,
    /// CPUs of the local cluster; default: the cores of this machine.
    pub num_cpus: Option<usize>,
}

/// Runs the rows of the envelope; each checks its own result.
pub fn run_scale(o: &ScaleOptions) -> anyhow::Result<()> {
    let store = (o.big_object_gib + 1) << 30;
    let cluster = crate::init_with(crate::Config {
        num_cpus: o.num_cpus,
        object_store_bytes: Some(store.max(crate::node::object_store::default_capacity())),
        ..Default::default()
    })?;
    anyhow::ensure!(
        cluster.counts().is_some(),
        "--scale needs a local cluster; unset FLEET_ADDRESS"
    );
    crate::get(&small_value::remote())?;

    let t = Instant::now();
    let refs: Vec<ObjectRef<Vec<u8>>> = (0..o.tasks).map(|_| small_value::remote()).collect();
    let all = crate::get_all(&refs)?;
    anyhow::ensure!(all.len() == o.tasks && all.iter().all(|v| v == super::SMALL));
    drop((refs, all));
    report(&cluster, &format!("{} tasks queued at once", o.tasks), t);

    let t = Instant::now();
    let args: Vec<ObjectRef<Vec<u8>>> = (0..10_000).map(|_| small_value::remote()).collect();
    anyhow::ensure!(crate::get(&consume::remote(args))? == 10_000);
    report(&cluster, "one task with 10,000 object ref arguments", t);

    let t = Instant::now();
    let made = crate::get(&produce::remote(3_000))?;
    let values = crate::get_all(&made)?;
    anyhow::ensure!(values == (0..3_000u64).collect::<Vec<_>>());
    report(&cluster, "one task returning 3,000 objects", t);

    let t = Instant::now();
    let puts: Vec<ObjectRef<u64>> = (0..10_000u64)
        .map(crate::put)
        .collect::<crate::Result<_>>()?;
    anyhow::ensure!(crate::get_all(&puts)?.len() == 10_000);
    report(&cluster, "get of 10,000 objects", t);

    let t = Instant::now();
    let actors = (0..10_000)
        .map(|_| Probe::remote())
        .collect::<crate::Result<Vec<_>>>()?;
    let pings: Vec<ObjectRef<u8>> = actors.iter().map(|a| a.ping()).collect();
    anyhow::ensure!(crate::get_all(&pings)?.iter().all(|p| *p == 1));
    drop(actors);
    report(&cluster, "10,000 actors created and each called once", t);

    if o.big_object_gib > 0 {
        let t = Instant::now();
        let len = (o.big_object_gib << 30) as usize;
        // Zeroed by the allocator on demand, as numpy's zeros in Ray's test.
        let r = crate::put(Blob::from(vec![0u8; len]))?;
        let back = crate::get(&r)?;
        anyhow::ensure!(back.len() == len && back[len / 2] == 0 && back[len - 1] == 0);
        drop((back, r));
        report(
            &cluster,
            &format!("a {} GiB object through put and get", o.big_object_gib),
            t,
        );
    }
    Ok(())
}
