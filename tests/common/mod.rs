//! Helpers shared by the integration tests: starting a cluster, waiting for
//! events with a deadline (never a fixed sleep), gates that hold a task until
//! the test opens them, and checks on processes through `/proc`.
//!
//! Each test binary uses a different subset, hence the `dead_code` allowance.
#![allow(dead_code)]

pub(crate) mod browser;
pub(crate) mod cli;
pub(crate) mod direct;
pub(crate) mod hosts;
pub(crate) mod http;
pub(crate) mod slurm;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long any single event may take on a loaded two-core machine before
/// a test gives up. Only ever a ceiling, never a delay.
pub(crate) const GENEROUS: Duration = Duration::from_secs(120);

/// How long a gated task waits for its gate before giving up on its own,
/// so a failing test never leaves a task running for good.
pub(crate) const GATE_LIMIT: Duration = Duration::from_secs(300);

/// Starts (or joins the running) local cluster with `cpus` CPUs.
pub(crate) fn cluster(cpus: usize) -> fleet::Cluster {
    fleet::init_with(fleet::Config {
        num_cpus: Some(cpus),
        ..Default::default()
    })
    .expect("starting a local cluster")
}

/// Polls `probe` until it yields a value; panics naming `what` once
/// `timeout` has passed.
pub(crate) fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `f` on its own thread and returns its result, or panics if it has
/// not returned within `timeout` (a hang becomes a failure, not a stuck run).
pub(crate) fn bounded<T: Send + 'static>(
    what: &str,
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(timeout) {
        Ok(v) => v,
        Err(e) => panic!("{what} did not return within {timeout:?} ({e})"),
    }
}

/// Blocks (inside a task) until `path` exists or [`GATE_LIMIT`] passes.
pub(crate) fn wait_for_path(path: &Path) {
    let deadline = Instant::now() + GATE_LIMIT;
    while !path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A file-based gate: tasks given [`Gate::path`] block until the test
/// calls [`Gate::open`].
pub(crate) struct Gate {
    dir: tempfile::TempDir,
}

impl Gate {
    pub(crate) fn new() -> Self {
        Gate {
            dir: tempfile::tempdir().expect("creating a temp dir"),
        }
    }

    /// The path to hand to gated tasks.
    pub(crate) fn path(&self) -> String {
        self.file().to_string_lossy().into_owned()
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("open")
    }

    pub(crate) fn open(&self) {
        std::fs::write(self.file(), b"open").expect("opening the gate");
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

/// One process, identified by pid and start time so that a recycled pid is
/// not mistaken for the original process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Proc {
    pub(crate) pid: u32,
    start: u64,
}

/// What `/proc` says about a [`Proc`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProcState {
    /// Running or sleeping (state letter from `/proc/<pid>/stat`).
    Alive(char),
    /// Dead but not yet reaped by its parent.
    Zombie,
    /// No such process (or the pid now belongs to another process).
    Gone,
}

/// `(state letter, start time)` from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid ..."; comm may hold spaces and parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // Field 22 of stat is the start time; `fields[0]` is field 3.
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

impl Proc {
    /// The live process with this pid, if there is one.
    pub(crate) fn of(pid: u32) -> Option<Proc> {
        stat(pid).map(|(_, start)| Proc { pid, start })
    }

    pub(crate) fn state(&self) -> ProcState {
        match stat(self.pid) {
            Some((_, start)) if start != self.start => ProcState::Gone,
            Some(('Z', _)) | Some(('X', _)) => ProcState::Zombie,
            Some((c, _)) => ProcState::Alive(c),
            None => ProcState::Gone,
        }
    }

    /// Not running any more (a zombie is dead, just not reaped).
    pub(crate) fn is_dead(&self) -> bool {
        !matches!(self.state(), ProcState::Alive(_))
    }
}

/// Waits until every process in `procs` has left the process table
/// (`allow_zombie`: or is at least dead); panics with their states if that
/// takes longer than `timeout`.
pub(crate) fn wait_all_gone(procs: &[Proc], allow_zombie: bool, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<(u32, ProcState)> = procs
            .iter()
            .map(|p| (p.pid, p.state()))
            .filter(|(_, s)| match s {
                ProcState::Gone => false,
                ProcState::Zombie => !allow_zombie,
                ProcState::Alive(_) => true,
            })
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after {timeout:?} these processes are still there: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends SIGKILL to `pid`.
pub(crate) fn sigkill(pid: u32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, SIGKILL): {}",
        std::io::Error::last_os_error()
    );
}

/// A deterministic pseudo-random byte pattern (xorshift64*), so misplaced
/// or repeated chunks of a large value are caught, not just wrong lengths.
pub(crate) fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut x = seed | 1;
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// FNV-1a over 8-byte words (and the tail), cheap enough for 256 MiB.
pub(crate) fn digest(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        h ^= u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    for b in chunks.remainder() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
