//! Failures: panics and `Err` returns come back as `Error::Task` naming the
//! function and the message, spread to dependent tasks, and leave the
//! cluster working; a worker killed with SIGKILL mid-task has its task
//! retried elsewhere, or reported as `Error::WorkerDied` with no retries.

mod common;

use std::path::{Path, PathBuf};

use common::{cluster, sigkill, wait_until, GENEROUS};
use fleet::{remote, Error, ObjectRef};

#[remote]
fn may_panic(x: u64) -> u64 {
    if x % 5 == 3 {
        panic!("deliberate panic for input {x}");
    }
    x + 1
}

#[remote]
fn checked_div(a: u64, b: u64) -> Result<u64, String> {
    if b == 0 {
        return Err(format!("cannot divide {a} by zero"));
    }
    Ok(a / b)
}

#[remote]
fn parse(s: String) -> Result<u64, std::num::ParseIntError> {
    s.parse()
}

#[remote]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

/// Waits on a child task that panics and passes its error on.
#[remote]
fn wraps_a_panic(x: u64) -> Result<u64, fleet::Error> {
    fleet::get(&may_panic::remote(x))
}

#[remote]
fn exits_the_process(code: i32) -> u64 {
    std::process::exit(code)
}

/// First attempt: claims `dir/claimed`, publishes its pid in `dir/pid` and
/// waits to be killed. Any later attempt (a retry) returns at once.
/// Returns `(x * 2, pid of the process that produced the result)`.
#[remote]
fn hang_on_first_attempt(dir: String, x: u64) -> (u64, u32) {
    let dir = PathBuf::from(dir);
    let first = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dir.join("claimed"))
        .is_ok();
    if first {
        let tmp = dir.join("pid.tmp");
        std::fs::write(&tmp, std::process::id().to_string()).expect("writing the pid");
        std::fs::rename(&tmp, dir.join("pid")).expect("publishing the pid");
        // Held here until killed (the gate is never opened).
        common::wait_for_path(&dir.join("never"));
    }
    (x * 2, std::process::id())
}

fn get<T: serde::de::DeserializeOwned>(r: &ObjectRef<T>) -> T {
    fleet::get_timeout(r, Some(GENEROUS)).expect("get")
}

fn task_error<T: std::fmt::Debug>(r: fleet::Result<T>) -> (String, String, u32, String, String) {
    match r {
        Err(e @ Error::Task { .. }) => {
            let shown = e.to_string();
            let Error::Task {
                function,
                message,
                pid,
                node,
            } = e
            else {
                unreachable!()
            };
            (function, message, pid, node, shown)
        }
        other => panic!("expected Error::Task, got {other:?}"),
    }
}

#[test]
fn a_panic_names_the_function_and_the_message() {
    let c = cluster(2);
    let refs: Vec<ObjectRef<u64>> = (0..20u64).map(may_panic::remote).collect();
    for (x, r) in (0..20u64).zip(&refs) {
        let got = fleet::get_timeout(r, Some(GENEROUS));
        if x % 5 == 3 {
            let (function, message, pid, node, shown) = task_error(got);
            assert!(function.ends_with("may_panic"), "function: {function}");
            assert!(
                message.contains(&format!("deliberate panic for input {x}")),
                "message: {message}"
            );
            assert!(shown.contains("may_panic"), "Display: {shown}");
            assert!(
                shown.contains(&format!("deliberate panic for input {x}")),
                "Display: {shown}"
            );
            assert!(pid != 0 && pid != std::process::id(), "pid: {pid}");
            assert!(!node.is_empty());
        } else {
            assert_eq!(got.expect("a task that did not panic"), x + 1);
        }
    }
    // The cluster keeps working, on the same workers (a panic is caught).
    let more: Vec<ObjectRef<u64>> = (100..150u64).map(|x| add::remote(x, 1)).collect();
    assert_eq!(
        fleet::get_all_timeout(&more, Some(GENEROUS)).expect("get_all"),
        (101..151u64).collect::<Vec<_>>()
    );
    assert!(!c.worker_pids().is_empty());
}

#[test]
fn an_err_return_is_a_task_error() {
    let _c = cluster(2);
    let (function, message, ..) = task_error(fleet::get_timeout(
        &checked_div::remote(7, 0),
        Some(GENEROUS),
    ));
    assert!(function.ends_with("checked_div"), "function: {function}");
    assert_eq!(message, "cannot divide 7 by zero");
    assert_eq!(get(&checked_div::remote(42, 6)), 7);

    // Any `Display` error type works.
    let (function, message, ..) = task_error(fleet::get_timeout(
        &parse::remote("12x".to_string()),
        Some(GENEROUS),
    ));
    assert!(function.ends_with("parse"), "function: {function}");
    assert_eq!(message, "invalid digit found in string");
    assert_eq!(get(&parse::remote("123".to_string())), 123);
}

#[test]
fn errors_reach_dependent_and_waiting_tasks() {
    let _c = cluster(2);
    // A task whose argument failed fails with the argument's error.
    let bad = may_panic::remote(8);
    let dependent = add::remote(&bad, 1);
    let (function, message, ..) = task_error(fleet::get_timeout(&dependent, Some(GENEROUS)));
    assert!(function.ends_with("may_panic"), "function: {function}");
    assert!(
        message.contains("deliberate panic for input 8"),
        "message: {message}"
    );
    // A chain further down too.
    let further = add::remote(dependent, 1);
    let (_, message, ..) = task_error(fleet::get_timeout(&further, Some(GENEROUS)));
    assert!(
        message.contains("deliberate panic for input 8"),
        "message: {message}"
    );

    // A task that waits on a failing child returns the child's error.
    let (function, message, ..) = task_error(fleet::get_timeout(
        &wraps_a_panic::remote(13),
        Some(GENEROUS),
    ));
    assert!(function.ends_with("wraps_a_panic"), "function: {function}");
    assert!(message.contains("may_panic"), "message: {message}");
    assert!(
        message.contains("deliberate panic for input 13"),
        "message: {message}"
    );
    assert_eq!(get(&wraps_a_panic::remote(4)), 5);
}

/// Waits for the pid the first attempt publishes in `dir`, checks it is one
/// of this cluster's workers, and kills it.
fn kill_first_attempt(c: &fleet::Cluster, dir: &Path) -> u32 {
    let pid: u32 = wait_until("the task to publish its pid", GENEROUS, || {
        std::fs::read_to_string(dir.join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    });
    assert!(
        c.worker_pids().contains(&pid),
        "pid {pid} is not one of the workers {:?}",
        c.worker_pids()
    );
    sigkill(pid);
    pid
}

#[test]
fn a_task_whose_worker_is_killed_is_retried_elsewhere() {
    let c = cluster(2);
    let dir = tempfile::tempdir().expect("temp dir");
    let r = hang_on_first_attempt::remote(dir.path().to_string_lossy().into_owned(), 21);
    let killed = kill_first_attempt(&c, dir.path());
    let (value, pid) = get(&r);
    assert_eq!(value, 42);
    assert_ne!(pid, killed, "the result came from the killed process");
    // And the cluster goes on.
    assert_eq!(get(&add::remote(2, 3)), 5);
}

#[test]
fn with_no_retries_a_killed_worker_is_worker_died() {
    let c = cluster(2);
    let dir = tempfile::tempdir().expect("temp dir");
    let r = hang_on_first_attempt::options()
        .max_retries(0)
        .remote(dir.path().to_string_lossy().into_owned(), 5);
    let killed = kill_first_attempt(&c, dir.path());
    match fleet::get_timeout(&r, Some(GENEROUS)) {
        Err(Error::WorkerDied { function, message }) => {
            assert!(
                function.ends_with("hang_on_first_attempt"),
                "function: {function}"
            );
            assert!(message.contains(&killed.to_string()), "message: {message}");
        }
        other => panic!("expected Error::WorkerDied, got {other:?}"),
    }
    // The cluster goes on, and the dead worker is replaced.
    let (a, b) = (add::remote(2, 2), add::remote(3, 3));
    assert_eq!((get(&a), get(&b)), (4, 6));
    wait_until("the killed worker to be replaced", GENEROUS, || {
        let pids = c.worker_pids();
        (!pids.contains(&killed) && !pids.is_empty()).then_some(())
    });
}

#[test]
fn a_task_that_kills_its_own_process_is_worker_died() {
    let c = cluster(2);
    let r = exits_the_process::options().max_retries(1).remote(3);
    match fleet::get_timeout(&r, Some(GENEROUS)) {
        Err(Error::WorkerDied { function, .. }) => {
            assert!(
                function.ends_with("exits_the_process"),
                "function: {function}"
            );
        }
        other => panic!("expected Error::WorkerDied, got {other:?}"),
    }
    let refs: Vec<ObjectRef<u64>> = (0..100u64).map(|x| add::remote(x, x)).collect();
    assert_eq!(
        fleet::get_all_timeout(&refs, Some(GENEROUS)).expect("get_all"),
        (0..100u64).map(|x| 2 * x).collect::<Vec<_>>()
    );
    assert!(!c.worker_pids().is_empty());
}
