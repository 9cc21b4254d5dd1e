//! Memory: a long run of small tasks (500,000, see `TASKS`) whose refs are
//! dropped as they complete, and 10,000 puts of 1 MiB, leave the head (in
//! this process, for a local cluster) and the workers at about the memory
//! they started with, the head's tables empty, and the store folder
//! without files.
//!
//! Resident memory comes from `/proc/<pid>/status` (`VmRSS`). The bound is
//! generous (start + 100 MiB) since allocators keep freed pages; a leak of
//! 250 bytes per task would still cross it.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{wait_until, GENEROUS};
use fleet::{remote, Blob, ObjectRef};

const MIB: u64 = 1 << 20;

/// Allowed growth of resident memory from the start to the end of a run.
const SLACK: u64 = 100 * MIB;

/// Ceiling for a whole test: a hang fails the test instead of the run.
const WHOLE_TEST: Duration = Duration::from_secs(600);

/// Small tasks in the long run. Scaled down from 1,000,000: in a debug
/// build on two busy cores the full count took 69 s to 122 s depending on
/// the load (8,000 to 15,000 tasks/s), around the 90 s this test may take,
/// so it runs half of it (35 s to 61 s). The head grows by the same
/// ~20 MiB after 200,000 tasks as after 1,000,000: it levels off.
/// `FLEET_MEMORY_TASKS=1000000` runs the full count.
const TASKS: u64 = 500_000;
/// Tasks in flight at once: submitted, waited for, and dropped together.
const WAVE: u64 = 10_000;

/// 1 MiB puts in the long run of puts (`FLEET_MEMORY_PUTS` overrides).
const PUTS: u64 = 10_000;
/// Puts alive at once.
const PUT_WAVE: u64 = 100;

fn count_from_env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident memory of `pid` in bytes (`VmRSS`), and its anonymous, file
/// and shared-memory parts, from `/proc/<pid>/status`.
fn rss(pid: u32) -> Rss {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    let total = field("VmRSS:");
    assert!(total > 0, "no VmRSS in /proc/{pid}/status");
    Rss {
        total,
        anon: field("RssAnon:"),
        file: field("RssFile:"),
        shmem: field("RssShmem:"),
    }
}

#[derive(Clone, Copy, Debug)]
struct Rss {
    total: u64,
    anon: u64,
    file: u64,
    shmem: u64,
}

impl std::fmt::Display for Rss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (anon {}, file {}, shmem {})",
            mib(self.total),
            mib(self.anon),
            mib(self.file),
            mib(self.shmem)
        )
    }
}

type Snapshot = (Rss, Vec<(u32, Rss)>);

/// Resident memory of this process and of each worker, by pid. This
/// process first hands the allocator's free pages back to the system, so
/// that pages kept for reuse do not pass for a leak (the workers' cannot).
fn snapshot(c: &fleet::Cluster) -> Snapshot {
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe { libc::malloc_trim(0) };
    let mut workers: Vec<(u32, Rss)> = c.worker_pids().into_iter().map(|p| (p, rss(p))).collect();
    workers.sort_unstable_by_key(|w| w.0);
    (rss(std::process::id()), workers)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// Waits until the head tracks no object and no task.
fn wait_forgotten(c: &fleet::Cluster) -> fleet::Counts {
    wait_until("the head to forget every task and object", GENEROUS, || {
        let n = c.counts().expect("local cluster");
        (n.objects == 0 && n.tasks == 0).then_some(n)
    })
}

/// Checks the end snapshot against the start one, worker by worker (the
/// same processes: nothing kills them here).
fn assert_bounded(what: &str, start: &Snapshot, end: &Snapshot) {
    println!("{what}: head+driver process {} -> {}", start.0, end.0);
    for (pid, before) in &start.1 {
        match end.1.iter().find(|(p, _)| p == pid) {
            Some((_, after)) => println!("{what}: worker {pid} {before} -> {after}"),
            None => println!("{what}: worker {pid} {before} -> gone"),
        }
    }
    assert!(
        end.0.total < start.0.total + SLACK,
        "{what}: this process grew from {} to {}",
        start.0,
        end.0
    );
    for (pid, before) in &start.1 {
        let (_, after) = end
            .1
            .iter()
            .find(|(p, _)| p == pid)
            .unwrap_or_else(|| panic!("{what}: worker {pid} is gone: {end:?}"));
        assert!(
            after.total < before.total + SLACK,
            "{what}: worker {pid} grew from {before} to {after}"
        );
    }
}

/// Runs `f` on its own thread; fails if it panics (with its message) or
/// has not returned within `timeout`.
fn bounded<T: Send + 'static>(
    what: &str,
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(timeout) {
        Ok(v) => v,
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("{what} returned nothing"),
        },
        Err(e) => panic!("{what} did not return within {timeout:?} ({e})"),
    }
}

#[remote]
fn inc(x: u64) -> u64 {
    x + 1
}

/// Runs `WAVE` tasks, checks their results and drops their refs.
fn wave(base: u64) {
    let refs: Vec<ObjectRef<u64>> = (base..base + WAVE).map(inc::remote).collect();
    let out = fleet::get_all_timeout(&refs, Some(GENEROUS)).expect("a wave of tasks");
    for (i, y) in out.iter().enumerate() {
        assert_eq!(*y, base + i as u64 + 1, "task {}", base + i as u64);
    }
}

#[test]
fn half_a_million_small_tasks_leave_memory_where_it_was() {
    let total = count_from_env("FLEET_MEMORY_TASKS", TASKS);
    let c = common::cluster(2);
    let c2 = c.clone();
    bounded("the long run of tasks", WHOLE_TEST, move || {
        let c = c2;
        // Warm-up: workers started, code paged in, tables at working size.
        wave(0);
        wait_forgotten(&c);
        let start = snapshot(&c);
        let began = Instant::now();
        let mut done = WAVE;
        while done < total {
            wave(done);
            done += WAVE;
        }
        let took = began.elapsed();
        let counts = wait_forgotten(&c);
        let end = snapshot(&c);
        println!(
            "{done} tasks in waves of {WAVE} (after a warm-up wave) in {took:.1?}; \
             at the end the head holds {} objects and {} tasks",
            counts.objects, counts.tasks
        );
        assert_bounded("tasks", &start, &end);
    });
}

/// The folder of this process's local cluster store on /dev/shm.
fn store_dir() -> PathBuf {
    let prefix = format!("fleet-{}-", std::process::id());
    let dirs: Vec<PathBuf> = std::fs::read_dir("/dev/shm")
        .expect("reading /dev/shm")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    assert_eq!(dirs.len(), 1, "one store folder of this process: {dirs:?}");
    dirs.into_iter().next().expect("one folder")
}

/// Object files in the store folder; the pool of freed files kept for
/// reuse (`free/`, bounded) and the store's id (`.fleet-store-id`) are
/// not objects.
fn files_in(dir: &PathBuf) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name != "free" && !name.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

/// A 1 MiB value whose bytes depend on `i`: a fixed pseudo-random
/// pattern with `i` and the page number written at the start of every
/// 4 KiB page (cheap to make, even in a debug build).
fn value(i: u64) -> Blob {
    static PATTERN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let mut v = PATTERN
        .get_or_init(|| common::pattern(MIB as usize, 0x5eed))
        .clone();
    for (page, chunk) in v.chunks_mut(4096).enumerate() {
        chunk[..8].copy_from_slice(&i.to_le_bytes());
        chunk[8..16].copy_from_slice(&(page as u64).to_le_bytes());
    }
    Blob::from(v)
}

#[remote]
fn first_word(b: Blob) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

#[test]
fn ten_thousand_1mib_puts_leave_memory_and_the_store_empty() {
    if !std::path::Path::new("/dev/shm").is_dir() {
        eprintln!("no /dev/shm here: skipped");
        return;
    }
    let total = count_from_env("FLEET_MEMORY_PUTS", PUTS);
    let c = common::cluster(2);
    let dir = store_dir();
    let c2 = c.clone();
    bounded("the long run of puts", WHOLE_TEST, move || {
        let c = c2;
        let wave = |base: u64| {
            let values: Vec<Blob> = (base..base + PUT_WAVE).map(value).collect();
            let refs: Vec<ObjectRef<Blob>> = values
                .iter()
                .map(|v| fleet::put(v.clone()).expect("a 1 MiB put"))
                .collect();
            // Read back by this process (mapped) and by tasks (workers).
            for (k, (r, v)) in refs.iter().zip(&values).enumerate() {
                let back = fleet::get(r).expect("get");
                assert!(
                    back[..] == v[..],
                    "put {} read back different",
                    base + k as u64
                );
            }
            let words: Vec<ObjectRef<u64>> =
                refs.iter().step_by(10).map(first_word::remote).collect();
            let words = fleet::get_all_timeout(&words, Some(GENEROUS)).expect("tasks read puts");
            for (k, w) in words.into_iter().enumerate() {
                let i = base + 10 * k as u64;
                assert_eq!(w, i, "first word of put {i}, read by a task");
            }
        };
        wave(0);
        wait_forgotten(&c);
        let start = snapshot(&c);
        let began = Instant::now();
        let mut done = PUT_WAVE;
        while done < total {
            wave(done);
            done += PUT_WAVE;
        }
        let took = began.elapsed();
        let counts = wait_forgotten(&c);
        let left = wait_until("the store folder to empty", GENEROUS, || {
            let f = files_in(&dir);
            f.is_empty().then_some(f)
        });
        let pooled = files_in(&dir.join("free")).len();
        assert!(pooled <= 32, "{pooled} freed files kept for reuse");
        let end = snapshot(&c);
        println!(
            "{pooled} freed files kept for reuse; {done} puts of 1 MiB in waves of {PUT_WAVE} (after a warm-up wave) in {took:.1?}; \
             at the end the head holds {} objects, {} tasks, store used {} bytes, \
             {} files in {}",
            counts.objects,
            counts.tasks,
            counts.store_used,
            left.len(),
            dir.display()
        );
        assert_eq!(counts.store_used, 0, "store accounting back at zero");
        assert_bounded("puts", &start, &end);
    });
}
