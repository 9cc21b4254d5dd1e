//! A cluster of processes on this machine for the head-cost measurement:
//! a head with no CPUs of its own and node agents on 127.0.0.2, .3, …, all
//! started from this executable and stopped when dropped.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::super::scale::HeadProcess;

/// CPU time a process has used so far, in microseconds: the sum over its
/// threads of [`thread_nanos`]. 0 for a process that is gone.
pub(crate) fn cpu_micros(pid: u32) -> u64 {
    let hz = procfs::ticks_per_second().max(1);
    let Ok(tasks) = procfs::process::Process::new(pid as i32).and_then(|p| p.tasks()) else {
        return 0;
    };
    tasks.flatten().map(|t| thread_nanos(&t, hz)).sum::<u64>() / 1000
}

/// CPU time of one thread, in nanoseconds: `schedstat`, or `utime +
/// stime` (clock ticks, `hz` a second) where the kernel has no schedstat.
pub(crate) fn thread_nanos(task: &procfs::process::Task, hz: u64) -> u64 {
    match task.schedstat() {
        Ok(ss) => ss.sum_exec_runtime,
        Err(_) => task
            .stat()
            .map_or(0, |s| (s.utime + s.stime) * 1_000_000_000 / hz),
    }
}

/// A head process and node agents.
pub(crate) struct Cluster {
    head: HeadProcess,
    nodes: Vec<Child>,
}

impl Cluster {
    /// Starts a head (`--num-cpus 0`) and `n` node agents of `cpus` CPUs
    /// each, and waits until all have joined.
    pub(crate) fn start(n: usize, cpus: usize) -> anyhow::Result<Cluster> {
        anyhow::ensure!(
            (1..=250).contains(&n),
            "node agents are put on 127.0.0.2 to 127.0.0.251: ask for 1 to 250"
        );
        let head = HeadProcess::start(Some(0), 256 << 20)?;
        let mut cluster = Cluster {
            head,
            nodes: Vec::new(),
        };
        for i in 0..n {
            let mut cmd = Command::new(std::env::current_exe()?);
            cmd.args(["start", "--block", "--address", &cluster.head.address])
                .args(["--node-ip", &format!("127.0.0.{}", i + 2)])
                .args(["--num-cpus", &cpus.to_string()])
                .args(["--object-store-bytes", &(64u64 << 20).to_string()])
                .env(fleet::ENV_TOKEN, &cluster.head.token)
                .env_remove(fleet::ENV_ADDRESS)
                // Agents leaving at the end of a measurement is expected.
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into()),
                )
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            // SAFETY: only an async-signal-safe call between fork and exec;
            // the agent (and with it its workers) dies with this process.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            cluster.nodes.push(cmd.spawn()?);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = fleet::daemon::status(&cluster.head.address, &cluster.head.token)?;
            // The head's own node (no CPUs) is listed too.
            let joined = s
                .nodes
                .iter()
                .filter(|x| x.alive && x.num_cpus > 0.0)
                .count();
            if joined >= n {
                return Ok(cluster);
            }
            for c in &mut cluster.nodes {
                if let Some(status) = c.try_wait()? {
                    anyhow::bail!("a node agent exited before joining: {status}");
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {joined} of {n} node agents joined within 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn address(&self) -> &str {
        &self.head.address
    }

    pub(crate) fn token(&self) -> &str {
        &self.head.token
    }

    pub(crate) fn head_pid(&self) -> u32 {
        self.head.child.id()
    }

    /// Waits until the nodes run `n` workers between them.
    pub(crate) fn wait_workers(&self, n: usize, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let s = fleet::daemon::status(&self.head.address, &self.head.token)?;
            let workers: u32 = s.nodes.iter().map(|x| x.workers).sum();
            if workers as usize >= n {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {workers} of {n} workers started"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Cluster {
    /// Waits until the head tracks fewer than `n` objects (the driver's
    /// releases have been applied).
    pub(crate) fn wait_objects_below(&self, n: u64, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let s = fleet::daemon::status(&self.head.address, &self.head.token)?;
            if s.objects < n {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the head still tracks {} objects",
                s.objects
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the driver has given every lease back, then for the
    /// workers' last summaries of direct tasks (`DirectDone`, sent as a
    /// lease's stream ends): both are head work the tasks caused, so a
    /// measure of the head's CPU per task must end after them.
    pub(crate) fn wait_leases_returned(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let s = fleet::daemon::status(&self.head.address, &self.head.token)?;
            if s.leases.is_empty() {
                std::thread::sleep(Duration::from_millis(50));
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "workers are still leased: {}",
                s.leases.join(", ")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Agents first: a head told to stop waits for its open sessions
        // to end before it exits, so stopping it first would wait on the
        // agents. (Each agent tells the head it leaves: no warning.)
        for c in &mut self.nodes {
            // SAFETY: SIGTERM to our own child, which is not reaped yet.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        for c in &mut self.nodes {
            let _ = c.wait();
        }
    }
}
