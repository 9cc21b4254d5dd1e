//! `fleet microbenchmark --scale`: the single-node rows of Ray's scalability
//! envelope, each printed with the time it took and the peak resident
//! memory of the head, the driver and the workers. The head runs in its own
//! process (`fleet start --head`, this executable) so that its memory is
//! measured apart from the driver's, which holds a million refs and
//! results of its own.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use super::small_value;
use fleet::{Blob, ObjectRef};

/// A stateless actor, called once.
#[fleet::remote]
struct Probe;

#[fleet::remote]
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
#[fleet::remote]
fn consume(refs: Vec<ObjectRef<Vec<u8>>>) -> fleet::Result<usize> {
    Ok(fleet::get_all(&refs)?.len())
}

/// Ray's "one task returning many objects": the task puts `n` objects and
/// returns refs to them.
#[fleet::remote]
fn produce(n: usize) -> fleet::Result<Vec<ObjectRef<u64>>> {
    (0..n as u64).map(fleet::put).collect()
}

/// Peak resident memory of a process, in MiB (VmHWM).
pub(super) fn peak_mib(pid: u32) -> u64 {
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

/// A head started from this executable, stopped when dropped.
pub(super) struct HeadProcess {
    pub(super) child: std::process::Child,
    pub(super) address: String,
    pub(super) token: String,
    dir: PathBuf,
}

impl HeadProcess {
    pub(super) fn start(cpus: Option<usize>, store: u64) -> anyhow::Result<HeadProcess> {
        let dir = std::env::temp_dir().join(format!(
            "fleet-scale-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)?;
        let token = format!("{:032x}", rand::random::<u128>());
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args([
            "start",
            "--head",
            "--block",
            "--port",
            "0",
            "--no-dashboard",
        ])
        .args(["--object-store-bytes", &store.to_string()])
        .arg("--token-file")
        .arg(dir.join("token"))
        .env("FLEET_TOKEN", &token)
        .env("FLEET_DASHBOARD", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
        if let Some(n) = cpus {
            cmd.args(["--num-cpus", &n.to_string()]);
        }
        // SAFETY: only an async-signal-safe call between fork and exec; the
        // head dies with this process.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let out = child.stdout.take().expect("piped stdout");
        let mut head = HeadProcess {
            child,
            address: String::new(),
            token,
            dir,
        };
        let mut lines = BufReader::new(out).lines();
        while let Some(line) = lines.next() {
            let line = line?;
            if let Some(at) = line.strip_prefix("fleet head serving at ") {
                head.address = at.trim().to_string();
                // Keep reading what it prints: a closed pipe would fail
                // the head's next line.
                std::thread::spawn(move || lines.for_each(drop));
                return Ok(head);
            }
        }
        anyhow::bail!("the head process exited before serving")
    }

    /// Its worker processes: the head's children (any of its threads may
    /// have started one).
    fn workers(&self) -> Vec<u32> {
        let tasks = format!("/proc/{}/task", self.child.id());
        std::fs::read_dir(tasks)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
            .flat_map(|c| {
                c.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect()
    }

    fn report(&self, name: &str, started: Instant) {
        let workers: Vec<u64> = self.workers().into_iter().map(peak_mib).collect();
        println!(
            "{name}: {:.2} s; peak memory: head {} MiB, driver {} MiB, workers max {} MiB ({} workers)",
            started.elapsed().as_secs_f64(),
            peak_mib(self.child.id()),
            peak_mib(std::process::id()),
            workers.iter().max().copied().unwrap_or(0),
            workers.len()
        );
    }
}

impl HeadProcess {
    /// Stops the head (SIGTERM, then waits for it): a head told to stop
    /// ends its sessions without reporting their nodes or workers lost.
    /// Does nothing the second time.
    pub(super) fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: SIGTERM to our own child, which is not reaped yet
            // (try_wait just saw it running).
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}

impl Drop for HeadProcess {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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
    let store = ((o.big_object_gib + 1) << 30).max(fleet::daemon::default_store_capacity());
    let head = HeadProcess::start(o.num_cpus, store)?;
    let _cluster = fleet::init_with(fleet::Config {
        address: Some(head.address.clone()),
        token: Some(head.token.clone()),
        ..Default::default()
    })?;
    fleet::get(&small_value::remote())?;

    let t = Instant::now();
    let refs: Vec<ObjectRef<Vec<u8>>> = (0..o.tasks).map(|_| small_value::remote()).collect();
    let all = fleet::get_all(&refs)?;
    anyhow::ensure!(all.len() == o.tasks && all.iter().all(|v| v == super::SMALL));
    drop((refs, all));
    head.report(&format!("{} tasks queued at once", o.tasks), t);

    let t = Instant::now();
    let args: Vec<ObjectRef<Vec<u8>>> = (0..10_000).map(|_| small_value::remote()).collect();
    anyhow::ensure!(fleet::get(&consume::remote(args))? == 10_000);
    head.report("one task with 10,000 object ref arguments", t);

    let t = Instant::now();
    let made = fleet::get(&produce::remote(3_000))?;
    let values = fleet::get_all(&made)?;
    anyhow::ensure!(values == (0..3_000u64).collect::<Vec<_>>());
    head.report("one task returning 3,000 objects", t);

    let t = Instant::now();
    let puts: Vec<ObjectRef<u64>> = (0..10_000u64)
        .map(fleet::put)
        .collect::<fleet::Result<_>>()?;
    anyhow::ensure!(fleet::get_all(&puts)?.len() == 10_000);
    head.report("get of 10,000 objects", t);

    let t = Instant::now();
    let actors = (0..10_000)
        .map(|_| Probe::remote())
        .collect::<fleet::Result<Vec<_>>>()?;
    let pings: Vec<ObjectRef<u8>> = actors.iter().map(|a| a.ping()).collect();
    anyhow::ensure!(fleet::get_all(&pings)?.iter().all(|p| *p == 1));
    drop(actors);
    head.report("10,000 actors created and each called once", t);

    if o.big_object_gib > 0 {
        let t = Instant::now();
        let len = (o.big_object_gib << 30) as usize;
        // Zeroed by the allocator on demand, as numpy's zeros in Ray's test.
        let r = fleet::put(Blob::from(vec![0u8; len]))?;
        let back = fleet::get(&r)?;
        anyhow::ensure!(back.len() == len && back[len / 2] == 0 && back[len - 1] == 0);
        drop((back, r));
        head.report(
            &format!("a {} GiB object through put and get", o.big_object_gib),
            t,
        );
    }
    Ok(())
}
