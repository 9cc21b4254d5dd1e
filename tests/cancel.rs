//! `fleet::cancel` and `fleet::force_cancel` on a real local cluster: a
//! queued or argument-waiting task never runs, a running task sees
//! `is_cancelled()` (or, forced, loses its worker, which is replaced),
//! dependents fail with `Cancelled`, a tree of tasks is cancelled from its
//! root, a finished task is left alone, and a queued actor call is dropped.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{cluster, wait_until, Gate, Proc, GENEROUS};
use fleet::{remote, Error, ObjectRef};

/// Writes `mark` (if not empty) when it runs, then waits for `gate`.
#[remote]
fn gated(gate: String, mark: String) -> u64 {
    if !mark.is_empty() {
        std::fs::write(&mark, b"ran").expect("writing the mark");
    }
    common::wait_for_path(Path::new(&gate));
    7
}

#[remote]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

/// `a + 1`, writing `mark` when it runs.
#[remote]
fn marked_inc(a: u64, mark: String) -> u64 {
    std::fs::write(&mark, b"ran").expect("writing the mark");
    a + 1
}

/// Runs until cancelled: publishes `dir/started`, then checks
/// `is_cancelled()`; on seeing it, writes `dir/saw-cancel` and returns.
#[remote]
fn cooperative(dir: String) -> u64 {
    let dir = PathBuf::from(dir);
    std::fs::write(dir.join("started"), std::process::id().to_string()).expect("started");
    let deadline = std::time::Instant::now() + common::GATE_LIMIT;
    while std::time::Instant::now() < deadline {
        if fleet::is_cancelled() {
            std::fs::write(dir.join("saw-cancel"), b"yes").expect("saw-cancel");
            return 1; // whatever it returns, the result is Cancelled
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    2
}

/// Never looks at `is_cancelled()`: publishes its pid and waits.
#[remote]
fn stubborn(dir: String) -> u64 {
    let dir = PathBuf::from(dir);
    std::fs::write(dir.join("pid.tmp"), std::process::id().to_string()).expect("pid");
    std::fs::rename(dir.join("pid.tmp"), dir.join("pid")).expect("pid");
    common::wait_for_path(&dir.join("never"));
    3
}

/// The root of a tree: two cooperative children in sub-folders `a` and
/// `b`, and a third that waits for an argument that never comes.
#[remote]
fn root(dir: String, gate: String) -> Result<u64, fleet::Error> {
    let d = PathBuf::from(&dir);
    let mut refs = Vec::new();
    for sub in ["a", "b"] {
        std::fs::create_dir_all(d.join(sub)).expect("mkdir");
        refs.push(cooperative::remote(
            d.join(sub).to_string_lossy().into_owned(),
        ));
    }
    let never = gated::remote(gate, String::new());
    let mark = d.join("c-ran").to_string_lossy().into_owned();
    refs.push(marked_inc::remote(&never, mark));
    std::fs::write(d.join("submitted"), b"yes").expect("submitted");
    let sum = fleet::get_all(&refs)?.iter().sum();
    Ok(sum)
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn expect_cancelled<T: std::fmt::Debug>(r: fleet::Result<T>, function: &str) -> String {
    match r {
        Err(Error::Cancelled {
            function: f,
            message,
        }) => {
            assert!(f.ends_with(function), "function {f}, expected {function}");
            message
        }
        other => panic!("expected Error::Cancelled, got {other:?}"),
    }
}

#[test]
fn a_queued_task_never_runs() {
    let _c = cluster(1);
    let dir = tmp();
    let gate = Gate::new();
    let busy = gated::remote(gate.path(), String::new());
    let mark = dir.path().join("ran");
    let queued = gated::remote(gate.path(), s(&mark));
    fleet::cancel(&queued).expect("cancel");
    let msg = expect_cancelled(fleet::get_timeout(&queued, Some(GENEROUS)), "gated");
    assert!(msg.contains("fleet::cancel"), "message: {msg}");
    gate.open();
    assert_eq!(fleet::get_timeout(&busy, Some(GENEROUS)).expect("busy"), 7);
    // The worker has run what came after; the cancelled task never ran.
    assert_eq!(fleet::get(&add::remote(1, 2)).expect("add"), 3);
    assert!(!mark.exists(), "the cancelled task ran");
}

#[test]
fn a_task_waiting_for_its_argument_never_runs_and_dependents_fail() {
    let _c = cluster(2);
    let gate = Gate::new();
    let first = gated::remote(gate.path(), String::new());
    let waiting = add::remote(&first, 1);
    let dependent = add::remote(&waiting, 1);
    fleet::cancel(&waiting).expect("cancel");
    expect_cancelled(fleet::get_timeout(&waiting, Some(GENEROUS)), "add");
    // A task that depends on a cancelled result fails with Cancelled.
    expect_cancelled(fleet::get_timeout(&dependent, Some(GENEROUS)), "add");
    gate.open();
    assert_eq!(
        fleet::get_timeout(&first, Some(GENEROUS)).expect("first"),
        7
    );
}

#[test]
fn a_running_task_sees_is_cancelled_and_finishes_as_cancelled() {
    let c = cluster(2);
    let dir = tmp();
    let r = cooperative::remote(s(dir.path()));
    let pid: u32 = wait_until("the task to start", GENEROUS, || {
        std::fs::read_to_string(dir.path().join("started"))
            .ok()?
            .parse()
            .ok()
    });
    assert!(!fleet::is_cancelled(), "the driver is not a cancelled task");
    fleet::cancel(&r).expect("cancel");
    expect_cancelled(fleet::get_timeout(&r, Some(GENEROUS)), "cooperative");
    assert!(dir.path().join("saw-cancel").exists());
    // Cooperative: the worker lives on and runs more work.
    assert!(c.worker_pids().contains(&pid), "the worker was killed");
    assert_eq!(fleet::get(&add::remote(2, 2)).expect("add"), 4);
}

#[test]
fn force_cancel_kills_the_worker_and_it_is_replaced() {
    let c = cluster(1);
    let dir = tmp();
    let r = stubborn::remote(s(dir.path()));
    let pid: u32 = wait_until("the task to publish its pid", GENEROUS, || {
        std::fs::read_to_string(dir.path().join("pid"))
            .ok()?
            .parse()
            .ok()
    });
    let proc_ = Proc::of(pid).expect("the worker runs");
    fleet::force_cancel(&r).expect("force_cancel");
    let msg = expect_cancelled(fleet::get_timeout(&r, Some(GENEROUS)), "stubborn");
    assert!(msg.contains("force_cancel"), "message: {msg}");
    wait_until("the worker to die", GENEROUS, || {
        proc_.is_dead().then_some(())
    });
    // A new worker takes its place; no retry was used on the cancelled task.
    assert_eq!(
        fleet::get_timeout(&add::options().max_retries(0).remote(5, 5), Some(GENEROUS))
            .expect("add after force_cancel"),
        10
    );
    wait_until("a replacement worker", GENEROUS, || {
        let pids = c.worker_pids();
        (!pids.is_empty() && !pids.contains(&pid)).then_some(())
    });
}

#[test]
fn cancelling_the_root_cancels_the_tree() {
    let _c = cluster(3);
    let dir = tmp();
    let gate = Gate::new();
    let r = root::remote(s(dir.path()), gate.path());
    for sub in ["a", "b"] {
        wait_until("a child to start", GENEROUS, || {
            dir.path().join(sub).join("started").exists().then_some(())
        });
    }
    wait_until("the root to submit", GENEROUS, || {
        dir.path().join("submitted").exists().then_some(())
    });
    fleet::cancel(&r).expect("cancel");
    expect_cancelled(fleet::get_timeout(&r, Some(GENEROUS)), "root");
    for sub in ["a", "b"] {
        wait_until("a child to see the cancel", GENEROUS, || {
            dir.path()
                .join(sub)
                .join("saw-cancel")
                .exists()
                .then_some(())
        });
    }
    // The gated grandchild-to-be was cancelled too: opening its gate now
    // runs nothing, and the cluster is free for new work.
    gate.open();
    let refs: Vec<ObjectRef<u64>> = (0..20).map(|i| add::remote(i, 1)).collect();
    assert_eq!(
        fleet::get_all_timeout(&refs, Some(GENEROUS)).expect("more work"),
        (1..21).collect::<Vec<u64>>()
    );
    assert!(
        !dir.path().join("c-ran").exists(),
        "a task that waited for an argument ran after its root was cancelled"
    );
}

#[test]
fn cancelling_a_finished_task_does_nothing() {
    let _c = cluster(1);
    let r = add::remote(20, 22);
    assert_eq!(fleet::get(&r).expect("add"), 42);
    fleet::cancel(&r).expect("cancel");
    fleet::force_cancel(&r).expect("force_cancel");
    assert_eq!(fleet::get(&r).expect("still there"), 42);
    assert_eq!(fleet::get(&add::remote(&r, 1)).expect("a dependent"), 43);
}

#[remote]
struct Recorder {
    seen: Vec<u64>,
}

#[remote]
impl Recorder {
    fn new() -> Self {
        Recorder { seen: Vec::new() }
    }
    fn hold(&mut self, gate: String) -> u64 {
        common::wait_for_path(Path::new(&gate));
        0
    }
    fn push(&mut self, x: u64) -> usize {
        self.seen.push(x);
        self.seen.len()
    }
    fn seen(&self) -> Vec<u64> {
        self.seen.clone()
    }
}

#[test]
fn a_queued_actor_call_is_dropped() {
    let _c = cluster(2);
    let a = Recorder::remote().expect("actor");
    let gate = Gate::new();
    let held = a.hold(gate.path());
    let first = a.push(1);
    let dropped = a.push(2);
    let last = a.push(3);
    fleet::cancel(&dropped).expect("cancel");
    expect_cancelled(fleet::get_timeout(&dropped, Some(GENEROUS)), "push");
    gate.open();
    assert_eq!(fleet::get_timeout(&held, Some(GENEROUS)).expect("hold"), 0);
    assert_eq!(fleet::get(&first).expect("first"), 1);
    assert_eq!(fleet::get(&last).expect("last"), 2);
    assert_eq!(fleet::get(&a.seen()).expect("seen"), vec![1, 3]);
}

/// `/api/snapshot` of the dashboard at `base` (`http://host:port`).
fn snapshot(base: &str) -> serde_json::Value {
    serde_json::from_str(&common::http::get_ok(base, "/api/snapshot")).expect("JSON")
}

#[test]
fn the_dashboard_counts_cancelled_tasks() {
    let c = cluster(1);
    let url = c.dashboard_url().expect("a dashboard").to_string();
    let before = snapshot(&url)["tasks"]["cancelled"]
        .as_u64()
        .expect("a count");
    let gate = Gate::new();
    let busy = gated::remote(gate.path(), String::new());
    let queued: Vec<ObjectRef<u64>> = (0..3).map(|i| add::remote(i, 1)).collect();
    for r in &queued {
        fleet::cancel(r).expect("cancel");
    }
    for r in &queued {
        expect_cancelled(fleet::get_timeout(r, Some(GENEROUS)), "add");
    }
    // Direct tasks cancelled in the driver's queue reach the head's count
    // as a summary on the driver's session stream, which may be applied
    // just after `get` returns: wait for the count, up to a deadline.
    let after = wait_until("the cancelled count", GENEROUS, || {
        let n = snapshot(&url)["tasks"]["cancelled"]
            .as_u64()
            .expect("a count");
        (n >= before + 3).then_some(n)
    });
    assert_eq!(after, before + 3);
    let page = {
        use std::io::{Read, Write};
        let host = url.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(host).expect("connecting");
        write!(
            s,
            "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .expect("GET /");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("the page");
        text
    };
    assert!(
        page.contains("data-state=\"cancelled\""),
        "no Cancelled tile on the page"
    );
    gate.open();
    assert_eq!(fleet::get_timeout(&busy, Some(GENEROUS)).expect("busy"), 7);
}
