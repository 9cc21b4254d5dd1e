//! The direct task path with leases, end to end on real clusters: plain
//! tasks from a driver go to workers the head leased to it, on
//! `Worker.Direct` streams, and their results come back there
//! (`runtime/src/client/leases.rs`, `runtime/src/head/scheduler/leases.rs`).
//!
//! Covered: results across many tasks and in a sync loop, the head keeping
//! no record of them; `FLEET_LEASES=0` keeping the head's path; a direct
//! result used through the head (ready, still running, still queued,
//! nested in a value, inside a `put`); cancel of queued, running and
//! force-cancelled direct tasks; a leased worker killed mid-task (retried
//! through the head, or `WorkerDied`); the memory monitor killing a leased
//! worker (`OutOfMemory` after the retries, and naming the node without
//! them); two drivers sharing a CLI cluster; a lease revoked for a task on
//! the head's path and for a driver left without one (every task sent on
//! it completes exactly once); a cluster across network namespaces.
//!
//! Leases are on by default (`FLEET_LEASES=0` turns them off): each test
//! still turns them on first (`on()`), so that a run with the variable set
//! to 0 (CI runs some files so) tests them all the same, and the drivers
//! it starts inherit that. Covered too: a shape no node can run goes
//! through the head, and back to leases once a node that can joins.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{wait_until, Gate, Proc, GATE_LIMIT, GENEROUS};
use fleet::{remote, Error, ObjectRef};

/// Turns leases on for this process (and the drivers it starts), whatever
/// the environment the tests run in says.
fn on() {
    std::env::set_var("FLEET_LEASES", "1");
}

/// What the second driver of `two_drivers_share_a_cluster` runs.
const SECOND_DRIVER: &str = "FLEET_LEASES_SECOND_DRIVER";

#[remote]
fn square(x: u64) -> u64 {
    x * x
}

#[remote]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[remote]
fn sum_refs(refs: Vec<ObjectRef<u64>>) -> Result<u64, fleet::Error> {
    Ok(fleet::get_all(&refs)?.iter().sum())
}

/// Returns `x` once `gate` exists (or after `GATE_LIMIT`).
#[remote]
fn gated(gate: String, x: u64) -> u64 {
    let deadline = std::time::Instant::now() + GATE_LIMIT;
    while !Path::new(&gate).exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    x
}

/// Writes `dir/started-N` (N: the attempt) holding its pid, then waits
/// for `gate`; returns the attempt.
#[remote]
fn attempt_then_wait(dir: String, gate: String) -> u32 {
    let dir = PathBuf::from(dir);
    let attempt = (1..)
        .find(|n| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(dir.join(format!("started-{n}")))
                .is_ok()
        })
        .expect("an attempt number");
    std::fs::write(
        dir.join(format!("pid-{attempt}")),
        std::process::id().to_string(),
    )
    .expect("pid");
    let deadline = std::time::Instant::now() + GATE_LIMIT;
    while !Path::new(&gate).exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    attempt
}

/// Runs until cancelled, then notes that it saw it.
#[remote]
fn cooperative(dir: String) -> u64 {
    let dir = PathBuf::from(dir);
    std::fs::write(dir.join("pid-1"), std::process::id().to_string()).expect("pid");
    let deadline = std::time::Instant::now() + GATE_LIMIT;
    while !fleet::is_cancelled() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::write(dir.join("saw-cancel"), b"yes").expect("mark");
    1
}

/// Allocates 128 MiB at a time (touched) until killed, after noting its
/// attempt and pid as `attempt_then_wait` does.
#[remote]
fn hog(dir: String) -> u32 {
    let dir = PathBuf::from(dir);
    let attempt = (1..)
        .find(|n| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(dir.join(format!("started-{n}")))
                .is_ok()
        })
        .expect("an attempt number");
    let mut held: Vec<Vec<u8>> = Vec::new();
    let deadline = std::time::Instant::now() + GATE_LIMIT;
    while std::time::Instant::now() < deadline {
        if held.len() < 48 {
            held.push(vec![attempt as u8; 128 << 20]);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    held.len() as u32
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn pid(dir: &Path, attempt: u32) -> u32 {
    wait_until("a task to publish its pid", GENEROUS, || {
        std::fs::read_to_string(dir.join(format!("pid-{attempt}")))
            .ok()?
            .parse()
            .ok()
    })
}

/// Waits until the head has leased a worker to this driver: the tasks
/// that follow a test's first go the direct way, not the head's.
fn leased(c: &fleet::Cluster) {
    wait_until("a worker leased to this driver", GENEROUS, || {
        (c.counts().expect("a local cluster").leased > 0).then_some(())
    });
}

fn expect_cancelled<T: std::fmt::Debug>(r: fleet::Result<T>, function: &str) -> String {
    match r {
        Err(Error::Cancelled {
            function: f,
            message,
        }) => {
            assert!(f.ends_with(function), "function {f:?}, expected {function}");
            message
        }
        other => panic!("expected Error::Cancelled, got {other:?}"),
    }
}

#[test]
fn direct_tasks_give_correct_results_and_the_head_keeps_no_record_of_them() {
    on();
    let c = common::cluster(2);
    let refs: Vec<ObjectRef<u64>> = (0..5_000u64).map(square::remote).collect();
    let got = fleet::get_all_timeout(&refs, Some(GENEROUS)).expect("5,000 squares");
    assert!(got.iter().enumerate().all(|(i, v)| *v == (i * i) as u64));
    // A sync loop: each call waits for the one before.
    let mut x = 0;
    for _ in 0..300 {
        x = fleet::get_timeout(&add::remote(x, 1), Some(GENEROUS)).expect("add");
    }
    assert_eq!(x, 300);
    // The head never heard of those tasks or their 5,000 results, which
    // this driver still holds.
    let counts = c.counts().expect("a local cluster");
    assert!(
        counts.objects < 100 && counts.tasks == 0,
        "the head tracks {} objects and {} tasks",
        counts.objects,
        counts.tasks
    );
}

#[test]
fn with_leases_off_tasks_go_through_the_head() {
    std::env::set_var("FLEET_LEASES", "0");
    let c = common::cluster(2);
    let refs: Vec<ObjectRef<u64>> = (0..2_000u64).map(square::remote).collect();
    let got = fleet::get_all_timeout(&refs, Some(GENEROUS)).expect("2,000 squares");
    assert!(got.iter().enumerate().all(|(i, v)| *v == (i * i) as u64));
    let counts = c.counts().expect("a local cluster");
    assert!(
        counts.objects >= 2_000,
        "the head tracks only {} objects: the tasks did not go through it",
        counts.objects
    );
}

#[test]
fn a_direct_result_is_usable_through_the_head() {
    on();
    let c = common::cluster(2);
    // Finished: the driver puts its value at the head.
    let nine = square::remote(3);
    assert_eq!(fleet::get(&nine).expect("square"), 9);
    let ten = add::remote(&nine, 1);
    assert_eq!(fleet::get_timeout(&ten, Some(GENEROUS)).expect("ten"), 10);
    // Still running: promised, then put when it comes back.
    let gate = Gate::new();
    let five = gated::remote(gate.path(), 5);
    leased(&c);
    let six = add::remote(&five, 1);
    // Nested in a value, with a finished one beside it.
    let both = sum_refs::remote(vec![five.clone(), nine.clone()]);
    // Inside a `put`.
    let boxed = fleet::put(vec![five.clone()]).expect("put");
    let from_put = sum_refs::remote(&boxed);
    gate.open();
    assert_eq!(fleet::get_timeout(&six, Some(GENEROUS)).expect("six"), 6);
    assert_eq!(fleet::get_timeout(&both, Some(GENEROUS)).expect("both"), 14);
    assert_eq!(
        fleet::get_timeout(&from_put, Some(GENEROUS)).expect("from put"),
        5
    );
    assert_eq!(fleet::get(&five).expect("five"), 5);
}

#[test]
fn a_queued_direct_task_used_through_the_head_runs_there() {
    on();
    let c = common::cluster(1);
    let gate = Gate::new();
    // Holds the only CPU, so the next one waits in the driver's queue.
    let busy = gated::remote(gate.path(), 1);
    leased(&c);
    let queued = square::remote(4);
    let next = add::remote(&queued, 1);
    gate.open();
    assert_eq!(fleet::get_timeout(&next, Some(GENEROUS)).expect("next"), 17);
    assert_eq!(fleet::get(&queued).expect("queued"), 16);
    assert_eq!(fleet::get(&busy).expect("busy"), 1);
}

#[test]
fn cancel_reaches_queued_running_and_forced_direct_tasks() {
    on();
    let c = common::cluster(1);
    let gate = Gate::new();
    let dir = tempfile::tempdir().expect("temp dir");
    // Queued in the driver behind a task holding the only CPU.
    let busy = gated::remote(gate.path(), 7);
    leased(&c);
    let queued = gated::remote(gate.path(), 8);
    fleet::cancel(&queued).expect("cancel");
    let msg = expect_cancelled(fleet::get_timeout(&queued, Some(GENEROUS)), "gated");
    assert!(msg.contains("fleet::cancel"), "{msg}");
    gate.open();
    assert_eq!(fleet::get_timeout(&busy, Some(GENEROUS)).expect("busy"), 7);

    // Running: it sees `is_cancelled` and its worker lives on.
    let running = cooperative::remote(s(dir.path()));
    let worker = pid(dir.path(), 1);
    fleet::cancel(&running).expect("cancel");
    expect_cancelled(fleet::get_timeout(&running, Some(GENEROUS)), "cooperative");
    assert!(dir.path().join("saw-cancel").exists());
    assert!(c.worker_pids().contains(&worker), "the worker was killed");

    // Forced: its worker is killed, and the cluster goes on.
    let never = Gate::new();
    let forced_dir = tempfile::tempdir().expect("temp dir");
    let forced = attempt_then_wait::remote(s(forced_dir.path()), never.path());
    let victim = Proc::of(pid(forced_dir.path(), 1)).expect("the task runs");
    fleet::force_cancel(&forced).expect("force cancel");
    expect_cancelled(
        fleet::get_timeout(&forced, Some(GENEROUS)),
        "attempt_then_wait",
    );
    wait_until("the forced worker to die", GENEROUS, || {
        victim.is_dead().then_some(())
    });
    assert!(
        !forced_dir.path().join("started-2").exists(),
        "a force-cancelled task is not retried"
    );
    assert_eq!(
        fleet::get_timeout(&add::remote(2, 2), Some(GENEROUS)).expect("add"),
        4
    );
}

#[test]
fn a_killed_leased_worker_s_task_is_retried_or_reported() {
    on();
    let c = common::cluster(1);
    let gate = Gate::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let r = attempt_then_wait::remote(s(dir.path()), gate.path());
    let first = pid(dir.path(), 1);
    leased(&c);
    common::sigkill(first);
    // Retried (through the head), and this time it is let finish.
    pid(dir.path(), 2);
    gate.open();
    assert_eq!(fleet::get_timeout(&r, Some(GENEROUS)).expect("retried"), 2);

    let gate = Gate::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let r = attempt_then_wait::options()
        .max_retries(0)
        .remote(s(dir.path()), gate.path());
    let first = pid(dir.path(), 1);
    leased(&c);
    common::sigkill(first);
    match fleet::get_timeout(&r, Some(GENEROUS)) {
        Err(Error::WorkerDied { function, .. }) => {
            assert!(function.ends_with("attempt_then_wait"), "{function}")
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    assert!(!dir.path().join("started-2").exists(), "no retry was left");
    // Tasks go on with a new worker.
    assert_eq!(
        fleet::get_timeout(&square::remote(5), Some(GENEROUS)).expect("square"),
        25
    );
}

#[test]
fn the_memory_monitor_kills_a_leased_worker_and_the_task_ends_out_of_memory() {
    on();
    let text = std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
    let field = |name: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .expect("a meminfo field")
            * 1024
    };
    let used = field("MemTotal:") - field("MemAvailable:");
    std::env::set_var("FLEET_MEMORY_THRESHOLD", (used + (768 << 20)).to_string());
    let _c = common::cluster(2);
    let dir = tempfile::tempdir().expect("temp dir");
    let r = hog::options().max_retries(1).remote(s(dir.path()));
    match fleet::get_timeout(&r, Some(GENEROUS)) {
        Err(Error::OutOfMemory {
            function, message, ..
        }) => {
            assert!(function.ends_with("hog"), "{function}");
            assert!(message.contains("FLEET_MEMORY_THRESHOLD"), "{message}");
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    assert!(dir.path().join("started-2").exists(), "retried once");
    assert!(!dir.path().join("started-3").exists());

    // No retry: the direct attempt's own error names the node its leased
    // worker ran on (here the local cluster's one node).
    let dir = tempfile::tempdir().expect("temp dir");
    let r = hog::options().max_retries(0).remote(s(dir.path()));
    match fleet::get_timeout(&r, Some(GENEROUS)) {
        Err(Error::OutOfMemory {
            function,
            node,
            message,
        }) => {
            assert!(function.ends_with("hog"), "{function}");
            assert_eq!(node, fleet::current_node().expect("a node"));
            assert!(message.contains("FLEET_MEMORY_THRESHOLD"), "{message}");
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    assert!(!dir.path().join("started-2").exists(), "no retry was left");
}

/// Notes its run in `dir` (`ran-N`; a second run of the same N leaves
/// `again-N`), then waits for `gate`; returns `n`.
#[remote]
fn noted(dir: String, gate: String, n: u64) -> u64 {
    let dir = PathBuf::from(dir);
    let first = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dir.join(format!("ran-{n}")))
        .is_ok();
    if !first {
        std::fs::write(dir.join(format!("again-{n}")), b"again").expect("mark");
    }
    let deadline = std::time::Instant::now() + GATE_LIMIT;
    while !Path::new(&gate).exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    n
}

/// Files in `dir` whose name starts with `prefix`.
fn count_files(dir: &Path, prefix: &str) -> usize {
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with(prefix))
        })
        .count()
}

/// The head takes a lease back when a task on its own path waits for the
/// CPUs the lease holds: the driver finishes every task it had sent on
/// that lease (each runs exactly once, on the worker it was sent to),
/// sends it nothing more, and gives it back; the waiting task then runs on
/// that worker, and the tasks the driver queued meanwhile on a new lease.
/// `fleet_leases_revoked_total` counts it, and the lease gauge drops.
#[test]
fn a_revoked_lease_finishes_what_it_was_sent_and_ends() {
    on();
    let c = common::cluster(1);
    let dir = tempfile::tempdir().expect("temp dir");
    let d = s(dir.path());
    // Its first run teaches the driver how long it takes, so the next
    // ones are pipelined: several in flight on the one lease.
    let open = Gate::new();
    open.open();
    let warm = noted::remote(d.clone(), open.path(), 0);
    assert_eq!(fleet::get_timeout(&warm, Some(GENEROUS)).expect("warm"), 0);
    let gate = Gate::new();
    let sent: Vec<ObjectRef<u64>> = (1..=6)
        .map(|n| noted::remote(d.clone(), gate.path(), n))
        .collect();
    wait_until("the first task to run", GENEROUS, || {
        dir.path().join("ran-1").exists().then_some(())
    });
    leased(&c);
    let worker = c.worker_pids();
    assert_eq!(c.counts().expect("counts").leases_revoked, 0);
    // A task the head places (its argument is an object the head holds)
    // finds the only CPU leased: the head revokes the lease.
    let forty_one = fleet::put(41u64).expect("put");
    let via_head = add::remote(&forty_one, 1);
    wait_until("the head to revoke the lease", GENEROUS, || {
        (c.counts().expect("counts").leases_revoked >= 1).then_some(())
    });
    // Queued in the driver now: the revoked lease takes nothing more.
    let later: Vec<ObjectRef<u64>> = (7..=9)
        .map(|n| noted::remote(d.clone(), gate.path(), n))
        .collect();
    gate.open();
    let got = fleet::get_all_timeout(&sent, Some(GENEROUS)).expect("the revoked lease's tasks");
    assert_eq!(got, (1..=6).collect::<Vec<u64>>());
    assert_eq!(
        fleet::get_timeout(&via_head, Some(GENEROUS)).expect("the head's task"),
        42
    );
    let got = fleet::get_all_timeout(&later, Some(GENEROUS)).expect("the later tasks");
    assert_eq!(got, vec![7, 8, 9]);
    assert_eq!(count_files(dir.path(), "ran-"), 10, "every task ran");
    assert_eq!(count_files(dir.path(), "again-"), 0, "a task ran twice");
    // The same one worker did it all: the lease ended, it did not die.
    assert_eq!(c.worker_pids(), worker);
    let counts = c.counts().expect("counts");
    assert!(
        counts.tasks == 0,
        "the head still has {} tasks",
        counts.tasks
    );
    // Given back once idle; /metrics says what happened.
    wait_until("the leases to be given back", GENEROUS, || {
        (c.counts().expect("counts").leased == 0).then_some(())
    });
    let url = c.dashboard_url().expect("a dashboard").to_string();
    let text = common::http::get_ok(&url, "/metrics");
    let revoked = text
        .lines()
        .find(|l| l.starts_with("fleet_leases_revoked_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .expect("fleet_leases_revoked_total in /metrics");
    assert!(revoked >= 1.0, "{text}");
    assert!(
        !text.lines().any(|l| l.starts_with("fleet_leases{")),
        "a lease is still shown: {text}"
    );
}

/// Both drivers submit many short tasks at once to a cluster of 2 CPUs;
/// each must finish (the head shares the workers between their leases).
#[test]
fn two_drivers_share_a_cluster_and_both_finish() {
    on();
    let mut cluster = common::cli::CliCluster::start(0, &[]);
    cluster.add_node("127.0.0.2", 2);
    let exe = std::env::current_exe().expect("test executable");
    let mut second = common::cli::Child::spawn(
        std::process::Command::new(exe)
            .args(["second_driver", "--exact", "--ignored", "--nocapture"])
            .env("FLEET_ADDRESS", &cluster.address)
            .env("FLEET_TOKEN", &cluster.token)
            .env(SECOND_DRIVER, "1"),
    );
    let _driver = cluster.join();
    let refs: Vec<ObjectRef<u64>> = (0..3_000u64).map(square::remote).collect();
    let got = fleet::get_all_timeout(&refs, Some(GENEROUS)).expect("this driver's squares");
    assert!(got.iter().enumerate().all(|(i, v)| *v == (i * i) as u64));
    let status = common::hosts::wait_exit(&mut second, GENEROUS);
    assert!(status.success(), "the second driver failed ({status})");
}

/// Until `gate` exists, sleeps `pause_ms`; notes its run in `dir` as
/// `noted` does; returns `n`.
#[remote]
fn busy_until(dir: String, gate: String, pause_ms: u64, n: u64) -> u64 {
    let dir = PathBuf::from(dir);
    let first = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dir.join(format!("ran-{n}")))
        .is_ok();
    if !first {
        std::fs::write(dir.join(format!("again-{n}")), b"again").expect("mark");
    }
    if !Path::new(&gate).exists() {
        std::thread::sleep(Duration::from_millis(pause_ms));
    }
    n
}

/// A driver that holds the cluster's only CPU with a long stream of
/// direct tasks (minutes of work) does not starve another driver: the
/// head revokes its lease, it finishes what it had sent and gives the
/// worker back, the other driver's job gets the CPU and finishes, and the
/// first driver's tasks all complete exactly once afterwards.
#[test]
fn a_waiting_driver_gets_a_lease_revoked_from_a_busy_one() {
    on();
    let mut cluster = common::cli::CliCluster::start(0, &[]);
    cluster.add_node("127.0.0.2", 1);
    let _driver = cluster.join();
    let dir = tempfile::tempdir().expect("temp dir");
    let d = s(dir.path());
    let gate = Gate::new();
    // 20 ms each: 3,000 of them are a minute of work for the one CPU.
    let mine: Vec<ObjectRef<u64>> = (0..3_000u64)
        .map(|n| busy_until::remote(d.clone(), gate.path(), 20, n))
        .collect();
    wait_until("this driver's tasks to run", GENEROUS, || {
        dir.path().join("ran-0").exists().then_some(())
    });
    let exe = std::env::current_exe().expect("test executable");
    let mut second = common::cli::Child::spawn(
        std::process::Command::new(exe)
            .args(["second_driver", "--exact", "--ignored", "--nocapture"])
            .env("FLEET_ADDRESS", &cluster.address)
            .env("FLEET_TOKEN", &cluster.token)
            .env(SECOND_DRIVER, "few"),
    );
    let status = common::hosts::wait_exit(&mut second, GENEROUS);
    assert!(status.success(), "the second driver failed ({status})");
    let (done, _) = fleet::wait(&mine, mine.len(), Duration::ZERO).expect("wait");
    assert!(
        done.len() < mine.len(),
        "this driver's tasks all finished before the second driver did"
    );
    let dashboard = cluster.dashboard.clone().expect("a dashboard");
    let text = common::http::get_ok(&dashboard, "/metrics");
    assert!(
        text.lines().any(|l| l
            .strip_prefix("fleet_leases_revoked_total ")
            .and_then(|v| v.trim().parse::<f64>().ok())
            .is_some_and(|v| v >= 1.0)),
        "no lease was revoked: {text}"
    );
    gate.open();
    let got = fleet::get_all_timeout(&mine, Some(GENEROUS)).expect("this driver's tasks");
    assert!(got.iter().enumerate().all(|(i, v)| *v == i as u64));
    assert_eq!(
        count_files(dir.path(), "ran-"),
        mine.len(),
        "every task ran"
    );
    assert_eq!(count_files(dir.path(), "again-"), 0, "a task ran twice");
}

/// The other driver of `two_drivers_share_a_cluster_and_both_finish`,
/// and the driver on its own host of
/// `a_cluster_across_network_namespaces_runs_direct_tasks` (`slow`).
#[test]
#[ignore = "run by other tests of this file as a driver process"]
fn second_driver() {
    let Ok(scenario) = std::env::var(SECOND_DRIVER) else {
        return;
    };
    let _c = fleet::init().expect("joining the cluster named by FLEET_ADDRESS");
    if scenario == "slow" {
        // About 3 s of 10 ms tasks on 2 CPUs, while the test watches.
        let refs: Vec<_> = (0..600u64).map(|x| slow_add::remote(x, 10)).collect();
        let got = fleet::get_all_timeout(&refs, Some(GENEROUS)).expect("slow adds");
        assert!(got.iter().enumerate().all(|(i, v)| *v == i as u64 + 1));
    } else if scenario == "few" {
        let refs: Vec<ObjectRef<u64>> = (0..20u64).map(|x| add::remote(x, 1)).collect();
        let got = fleet::get_all_timeout(&refs, Some(GENEROUS)).expect("the second driver's adds");
        assert!(got.iter().enumerate().all(|(i, v)| *v == i as u64 + 1));
    } else {
        let refs: Vec<ObjectRef<u64>> = (0..3_000u64).map(|x| add::remote(x, 1)).collect();
        let got = fleet::get_all_timeout(&refs, Some(GENEROUS)).expect("the second driver's adds");
        assert!(got.iter().enumerate().all(|(i, v)| *v == i as u64 + 1));
    }
    println!("DONE");
}

#[remote]
fn slow_add(x: u64, pause_ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(pause_ms));
    x + 1
}

/// Head, node and driver each on a host of its own (network namespaces
/// with their own `/dev/shm` and `/tmp`): the driver's tasks go to a
/// worker leased across the network, which `fleet status` shows while
/// they run, and their results come back correct.
#[test]
fn a_cluster_across_network_namespaces_runs_direct_tasks() {
    on();
    use common::cli::{fleet_bin, Child};
    let Some(hosts) = common::hosts::Hosts::new(3) else {
        return;
    };
    let token = format!("leases-token-{}", std::process::id());
    let ip0 = hosts.ip(0);
    let head = Child::spawn(
        hosts
            .command(0, &fleet_bin())
            .args(["start", "--head", "--bind", &ip0, "--node-ip", &ip0])
            .args([
                "--port",
                "0",
                "--no-dashboard",
                "--block",
                "--num-cpus",
                "0",
            ])
            .args(["--token-file", "/tmp/fleet-token"])
            .env("FLEET_TOKEN", &token),
    );
    let address = head
        .expect_line("serving at")
        .rsplit(' ')
        .next()
        .expect("the head's address")
        .to_string();
    let ip1 = hosts.ip(1);
    let node = Child::spawn(
        hosts
            .command(1, &fleet_bin())
            .args(["start", "--address", &address, "--node-ip", &ip1])
            .args(["--num-cpus", "2", "--block"])
            .env("FLEET_TOKEN", &token),
    );
    node.joined_node_name();
    let exe = std::env::current_exe().expect("the test executable");
    let mut driver = Child::spawn(
        hosts
            .command(2, &exe)
            .args(["second_driver", "--exact", "--ignored", "--nocapture"])
            .env("FLEET_ADDRESS", &address)
            .env("FLEET_TOKEN", &token)
            .env(SECOND_DRIVER, "slow"),
    );
    let status = || {
        let out = hosts
            .net_command(0, &fleet_bin())
            .args(["status", "--address", &address])
            .env("FLEET_TOKEN", &token)
            .output()
            .expect("run fleet status");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut seen = None;
    let exit = loop {
        if let Some(st) = driver.child.try_wait().expect("waiting for the driver") {
            break st;
        }
        if seen.is_none() {
            let text = status();
            if let Some(line) = text.lines().find(|l| l.contains("leased to drivers")) {
                seen = Some(line.to_string());
            }
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert!(exit.success(), "the driver failed ({exit})");
    let line = seen.expect("`fleet status` showed a worker leased to the driver");
    assert!(line.contains("workers"), "{line}");
    drop((driver, node, head));
}

/// Returns `len` bytes of 7 once `gate` exists.
#[remote]
fn bytes_after(gate: String, len: usize) -> Vec<u8> {
    common::wait_for_path(Path::new(&gate));
    vec![7u8; len]
}

/// The local cluster's store file of object `id`, if it is there (the
/// store is `/dev/shm/fleet-<this pid>-<key>/`, a file per object).
fn store_file(id: fleet::ObjectId) -> Option<PathBuf> {
    let prefix = format!("fleet-{}-", std::process::id());
    let name = format!("{:016x}", id.as_u64());
    std::fs::read_dir("/dev/shm")
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path().join(&name))
        .find(|p| p.exists())
}

/// A large direct result lives in the node's store; once the driver drops
/// its last ref the file goes, while the lease's stream is still open
/// (a task still runs on it), not only when the stream ends.
#[test]
fn a_dropped_stored_direct_result_frees_its_file_while_the_stream_is_open() {
    on();
    let c = common::cluster(1);
    let open = Gate::new();
    open.open();
    // Teaches the driver the function's run time: the next two go to the
    // one lease together.
    let warm = bytes_after::remote(open.path(), 8);
    assert_eq!(
        fleet::get_timeout(&warm, Some(GENEROUS))
            .expect("warm")
            .len(),
        8
    );
    let closed = Gate::new();
    let big = bytes_after::remote(open.path(), 4 << 20);
    let holds = bytes_after::remote(closed.path(), 8);
    let value = fleet::get_timeout(&big, Some(GENEROUS)).expect("the large result");
    assert!(value.len() == 4 << 20 && value.iter().all(|b| *b == 7));
    drop(value);
    let id = big.id();
    store_file(id).expect("the large result is a file in the node's store");
    leased(&c);
    drop(big);
    wait_until("the dropped result's file to go", GENEROUS, || {
        store_file(id).is_none().then_some(())
    });
    // The lease's stream was open all along: its last task still runs.
    let (ready, _) = fleet::wait(std::slice::from_ref(&holds), 1, Duration::ZERO).expect("wait");
    assert!(
        ready.is_empty(),
        "the task holding the lease finished early"
    );
    assert_eq!(c.counts().expect("counts").leased, 1);
    closed.open();
    assert_eq!(
        fleet::get_timeout(&holds, Some(GENEROUS))
            .expect("holds")
            .len(),
        8
    );
}

/// A driver that starts before any node can run its tasks (autoscaling
/// from none) is refused leases of their shape, and its tasks wait at the
/// head; once a node joins, the head says so and the driver's tasks of
/// that shape take leases again (it would use the head for the rest of
/// its session before).
#[test]
fn an_infeasible_shape_goes_back_to_leases_when_a_node_joins() {
    on();
    let mut cluster = common::cli::CliCluster::start(0, &[]);
    let _driver = cluster.join();
    let first = square::remote(3);
    // Refused: the task went to the head, which holds it (no node).
    wait_until(
        "the head to hold the task no node can run",
        GENEROUS,
        || {
            cluster
                .list_json("tasks")
                .iter()
                .any(|r| {
                    r["function"]
                        .as_str()
                        .is_some_and(|f| f.ends_with("square"))
                })
                .then_some(())
        },
    );
    cluster.add_node("127.0.0.2", 2);
    assert_eq!(
        fleet::get_timeout(&first, Some(GENEROUS)).expect("first"),
        9
    );
    let refs: Vec<ObjectRef<u64>> = (0..200u64).map(square::remote).collect();
    let got = fleet::get_all_timeout(&refs, Some(GENEROUS)).expect("200 squares");
    assert!(got.iter().enumerate().all(|(i, v)| *v == (i * i) as u64));
    // Their leased workers' summaries count them as this driver's direct
    // tasks.
    wait_until(
        "the head to count the driver's direct tasks",
        GENEROUS,
        || {
            cluster
                .list_json("jobs")
                .iter()
                .any(|r| r["type"] == "driver" && r["direct_tasks"].as_u64() >= Some(200))
                .then_some(())
        },
    );
}
