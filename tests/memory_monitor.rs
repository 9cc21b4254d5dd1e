//! The memory monitor on a real local cluster: with `FLEET_MEMORY_THRESHOLD`
//! set to a byte count a little above what the machine uses now, a task
//! that keeps allocating is killed by the monitor (not the kernel), retried
//! after a backoff, and when its retries are spent `get` returns
//! `Error::OutOfMemory` naming the function, node, RSS, usage and threshold.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{wait_until, Proc, GENEROUS};
use fleet::{remote, Error};

/// Allocates (and touches) 128 MiB at a time up to 6 GiB, unless an
/// earlier attempt ran (`dir/first` exists) and `always` is false; then it
/// returns the number of attempts. Publishes its pid in `dir/pid-N`.
#[remote]
fn hog(dir: String, always: bool) -> u32 {
    let dir = PathBuf::from(dir);
    let attempt = (1..)
        .find(|n| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(dir.join(format!("attempt-{n}")))
                .is_ok()
        })
        .expect("an attempt number");
    std::fs::write(
        dir.join(format!("pid-{attempt}")),
        std::process::id().to_string(),
    )
    .expect("pid");
    if attempt > 1 && !always {
        return attempt;
    }
    let mut held: Vec<Vec<u8>> = Vec::new();
    let deadline = std::time::Instant::now() + common::GATE_LIMIT;
    while std::time::Instant::now() < deadline {
        if held.len() < 48 {
            held.push(vec![attempt as u8; 128 << 20]);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    held.len() as u32
}

/// Sets the threshold 768 MiB above the memory in use now.
fn set_threshold_near() -> u64 {
    let (used, _) = meminfo();
    let threshold = used + (768 << 20);
    std::env::set_var("FLEET_MEMORY_THRESHOLD", threshold.to_string());
    threshold
}

fn meminfo() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
    let field = |name: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .expect("a meminfo field")
            * 1024
    };
    let total = field("MemTotal:");
    (total - field("MemAvailable:"), total)
}

fn pid(dir: &Path, attempt: u32) -> u32 {
    wait_until("an attempt to publish its pid", GENEROUS, || {
        std::fs::read_to_string(dir.join(format!("pid-{attempt}")))
            .ok()?
            .parse()
            .ok()
    })
}

#[test]
fn a_task_over_the_threshold_is_killed_and_retried() {
    set_threshold_near();
    let c = common::cluster(2);
    let dir = tempfile::tempdir().expect("temp dir");
    let r = hog::remote(dir.path().to_string_lossy().into_owned(), false);
    let first = Proc::of(pid(dir.path(), 1)).expect("the first attempt runs");
    let attempts = fleet::get_timeout(&r, Some(GENEROUS)).expect("the retry succeeds");
    assert_eq!(attempts, 2, "killed once, then retried");
    assert!(first.is_dead(), "the first attempt's worker was killed");
    // The cluster goes on with a new worker.
    assert!(!c.worker_pids().contains(&first.pid));
}

#[test]
fn past_its_retries_the_task_fails_with_out_of_memory() {
    let threshold = set_threshold_near();
    let _c = common::cluster(2);
    let (function, node, message) = hog_until_out_of_memory();
    assert!(function.ends_with("hog"), "{function}");
    assert_eq!(node, fleet::current_node().expect("a node"));
    for part in [
        "resident",
        "FLEET_MEMORY_THRESHOLD",
        "Run fewer tasks at once",
        &format!("{:.0} MiB", threshold as f64 / (1u64 << 20) as f64),
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
}

/// Runs a task that always goes over the threshold, with one retry, and
/// returns the `OutOfMemory` error's function, node and message, after
/// checking that exactly two attempts ran (each killed).
fn hog_until_out_of_memory() -> (String, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let r = hog::options()
        .max_retries(1)
        .remote(dir.path().to_string_lossy().into_owned(), true);
    let error = match fleet::get_timeout(&r, Some(GENEROUS)) {
        Err(Error::OutOfMemory {
            function,
            node,
            message,
        }) => (function, node, message),
        other => panic!("expected Error::OutOfMemory, got {other:?}"),
    };
    assert!(dir.path().join("attempt-2").exists(), "retried once");
    assert!(!dir.path().join("attempt-3").exists());
    error
}

#[test]
fn a_bad_threshold_is_refused_with_the_fix() {
    std::env::set_var("FLEET_MEMORY_THRESHOLD", "lots");
    let err = fleet::init_with(fleet::Config {
        num_cpus: Some(1),
        ..Default::default()
    })
    .err()
    .expect("refused");
    let text = err.to_string();
    assert!(
        text.contains("FLEET_MEMORY_THRESHOLD") && text.contains("0.9"),
        "{text}"
    );
}

/// The same on a node agent of a CLI cluster (`fleet start --address`): the
/// agent's own monitor kills the worker, and the head, which runs no
/// workers itself, turns that into `OutOfMemory` naming the agent's node.
#[test]
fn a_node_agent_kills_a_task_over_the_threshold() {
    // The agent inherits the threshold from this process's environment.
    set_threshold_near();
    let mut c = common::cli::CliCluster::start(0, &[]);
    let node = c.add_node("127.0.0.2", 1);
    let _driver = c.join();
    let (function, on, message) = hog_until_out_of_memory();
    assert!(function.ends_with("hog"), "{function}");
    assert_eq!(on, node, "the node agent's name");
    assert!(message.contains("FLEET_MEMORY_THRESHOLD"), "{message}");
}
