//! Actors on real clusters (real worker processes, real gRPC): call order,
//! handles passed through tasks and other actors, named lookup from a task
//! and from a second driver process, restarts after SIGKILL, `ActorDied`
//! past `max_restarts`, `max_task_retries`, `kill`, panics in methods,
//! destruction once no handle is left, `max_concurrency`, 10,000 actors,
//! and `ActorPool`.
//!
//! Every test starts its own cluster. Tests wait for events (files that
//! actors write, results, head counts) with generous deadlines; nothing is
//! synchronised with a fixed sleep and no timing is asserted.

mod common;

use common::cli::{fleet_bin, Child};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{cluster, sigkill, wait_for_path, wait_until, Gate, GENEROUS};
use fleet::{remote, ActorPool, Error, ObjectRef};
use serde::de::DeserializeOwned;

/// A counter living in a worker process.
#[remote]
struct Counter {
    n: i64,
}

#[remote]
impl Counter {
    fn new(start: i64) -> Self {
        Counter { n: start }
    }

    /// Adds `by`; returns the running value.
    fn incr(&mut self, by: i64) -> i64 {
        self.n += by;
        self.n
    }

    fn value(&self) -> i64 {
        self.n
    }

    /// The process hosting the actor.
    fn pid(&self) -> u32 {
        std::process::id()
    }

    /// Panics before touching the state.
    fn explode(&mut self, by: i64) -> i64 {
        if by >= 0 {
            panic!("deliberate panic in explode({by})");
        }
        self.n
    }

    /// Changes the state, then panics.
    fn add_then_explode(&mut self, by: i64) -> i64 {
        self.n += by;
        panic!("deliberate panic after adding {by}");
    }

    /// Panics in a shared-access method.
    fn explode_ref(&self) -> i64 {
        panic!("deliberate panic in explode_ref")
    }

    /// Writes `started`, then blocks until `gate` exists; returns the value.
    fn block(&self, started: String, gate: String) -> i64 {
        std::fs::write(&started, b"started").expect("writing the started marker");
        wait_for_path(Path::new(&gate));
        self.n
    }

    /// First attempt: claims `dir/claimed`, publishes its pid in `dir/pid`
    /// and waits to be killed. Any later attempt (a retry) returns at once.
    /// Returns `(value, pid of the process that ran this attempt)`.
    fn hold_on_first_attempt(&self, dir: String) -> (i64, u32) {
        let dir = PathBuf::from(dir);
        let first = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir.join("claimed"))
            .is_ok();
        if first {
            publish_pid(&dir);
            // Held here until killed (this gate is never opened).
            wait_for_path(&dir.join("never"));
        }
        (self.n, std::process::id())
    }

    /// Counts the call and returns `v * v` after `pause_ms`, so that calls
    /// on different actors finish in another order than they were made.
    fn square(&mut self, v: i64, pause_ms: u64) -> i64 {
        self.n += 1;
        std::thread::sleep(Duration::from_millis(pause_ms));
        v * v
    }
}

/// Writes this process's id to `dir/pid` atomically.
fn publish_pid(dir: &Path) {
    let tmp = dir.join("pid.tmp");
    std::fs::write(&tmp, std::process::id().to_string()).expect("writing the pid");
    std::fs::rename(&tmp, dir.join("pid")).expect("publishing the pid");
}

/// An actor holding a handle on another actor.
#[remote]
struct Relay {
    target: CounterHandle,
}

#[remote]
impl Relay {
    fn new(target: CounterHandle) -> Self {
        Relay { target }
    }

    /// Bumps the counter given at construction.
    fn bump_target(&self, by: i64) -> fleet::Result<i64> {
        fleet::get(&self.target.incr(by))
    }

    /// Bumps a counter passed with the call.
    fn bump(&self, counter: CounterHandle, by: i64) -> fleet::Result<i64> {
        fleet::get(&counter.incr(by))
    }
}

/// Counts the calls running at once (`&self` methods only).
#[remote]
struct Gauge {
    running: AtomicUsize,
    peak: AtomicUsize,
    seq: AtomicUsize,
}

#[remote]
impl Gauge {
    fn new() -> Self {
        Gauge {
            running: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            seq: AtomicUsize::new(0),
        }
    }

    /// Enters, marks its start with a file in `started_dir`, blocks until
    /// `gate` exists, leaves. Returns the callers running when it entered.
    fn enter(&self, started_dir: String, gate: String) -> usize {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        std::fs::write(Path::new(&started_dir).join(n.to_string()), b"in")
            .expect("writing the started marker");
        wait_for_path(Path::new(&gate));
        self.running.fetch_sub(1, Ordering::SeqCst);
        now
    }

    /// The most callers ever inside `enter` at once.
    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

/// A task that receives handles as an argument and calls them.
#[remote]
fn bump_all(counters: Vec<CounterHandle>) -> fleet::Result<i64> {
    let refs: Vec<ObjectRef<i64>> = counters.iter().map(|c| c.incr(1)).collect();
    Ok(fleet::get_all(&refs)?.into_iter().sum())
}

/// A task that finds a named counter and bumps it.
#[remote]
fn bump_named(name: String, by: i64) -> fleet::Result<i64> {
    let c = fleet::get_actor::<Counter>(&name)?;
    fleet::get(&c.incr(by))
}

/// A task that creates an actor and returns its handle.
#[remote]
fn make_counter(start: i64) -> fleet::Result<CounterHandle> {
    let c = Counter::remote(start)?;
    fleet::get(&c.incr(1))?;
    Ok(c)
}

/// `get` with a generous deadline; panics on any error.
fn get<T: DeserializeOwned>(r: &ObjectRef<T>) -> T {
    fleet::get_timeout(r, Some(GENEROUS)).expect("get")
}

/// `get` with a generous deadline, keeping the error.
fn try_get<T: DeserializeOwned>(r: &ObjectRef<T>) -> fleet::Result<T> {
    fleet::get_timeout(r, Some(GENEROUS))
}

/// Panics unless `r` is `Error::ActorDied`.
fn assert_actor_died<T: std::fmt::Debug>(what: &str, r: fleet::Result<T>) {
    match r {
        Err(Error::ActorDied { .. }) => {}
        other => panic!("{what}: expected Error::ActorDied, got {other:?}"),
    }
}

/// Calls `call` until it succeeds (an actor being rebuilt answers
/// `ActorDied` meanwhile); any other error fails the test.
fn call_until_alive<T: DeserializeOwned>(what: &str, call: impl Fn() -> ObjectRef<T>) -> T {
    wait_until(what, GENEROUS, || match try_get(&call()) {
        Ok(v) => Some(v),
        Err(Error::ActorDied { .. }) => None,
        Err(e) => panic!("{what}: unexpected error {e}"),
    })
}

/// Checks that `pid` is one of the local cluster's workers before it is
/// killed, so the test never signals anything else.
fn kill_worker(c: &fleet::Cluster, pid: u32) {
    assert!(
        c.worker_pids().contains(&pid),
        "pid {pid} is not a worker of this cluster: {:?}",
        c.worker_pids()
    );
    sigkill(pid);
}

#[test]
fn ten_thousand_calls_from_one_caller_run_in_order() {
    let _c = cluster(2);
    let counter = Counter::remote(0).expect("create");
    let refs: Vec<ObjectRef<i64>> = (0..10_000).map(|_| counter.incr(1)).collect();
    let got = fleet::get_all_timeout(&refs, Some(GENEROUS)).expect("results");
    let want: Vec<i64> = (1..=10_000).collect();
    if got != want {
        let first_bad = got.iter().zip(&want).position(|(a, b)| a != b);
        panic!(
            "calls ran out of order: first mismatch at index {first_bad:?} ({} results)",
            got.len()
        );
    }
    assert_eq!(get(&counter.value()), 10_000);
}

#[test]
fn handles_pass_through_tasks_and_actors() {
    let _c = cluster(2);
    let a = Counter::remote(0).expect("create a");
    let b = Counter::remote(100).expect("create b");

    // A task receives Vec<CounterHandle> and calls both actors.
    let total = get(&bump_all::remote(vec![a.clone(), b.clone()]));
    assert_eq!(total, 1 + 101, "the task reached both actors");
    assert_eq!(get(&a.value()), 1, "the task's call landed on `a` itself");
    assert_eq!(get(&b.value()), 101, "the task's call landed on `b` itself");

    // A handle given to another actor's constructor and to its method.
    let relay = Relay::remote(a.clone()).expect("create relay");
    assert_eq!(get(&relay.bump_target(10)), 11);
    assert_eq!(get(&relay.bump(b.clone(), 5)), 106);
    assert_eq!(get(&a.value()), 11);
    assert_eq!(get(&b.value()), 106);

    // A handle made inside a task and returned from it.
    let made = get(&make_counter::remote(40));
    assert_eq!(get(&made.incr(1)), 42, "the returned handle works");
}

#[test]
fn a_named_actor_is_found_from_a_task() {
    let _c = cluster(2);
    let named = Counter::options()
        .name("hits")
        .remote(10)
        .expect("create `hits`");
    assert_eq!(get(&bump_named::remote("hits".to_string(), 5)), 15);
    let found = fleet::get_actor::<Counter>("hits").expect("get_actor from the driver");
    assert_eq!(found, named, "get_actor returns the same actor");
    assert_eq!(get(&found.value()), 15);

    assert_actor_died(
        "an unknown name",
        fleet::get_actor::<Counter>("no-such-actor"),
    );
    assert_actor_died(
        "the name under another type",
        fleet::get_actor::<Gauge>("hits"),
    );
    assert_actor_died(
        "a second actor with a taken name",
        Counter::options().name("hits").remote(0),
    );
    assert_eq!(get(&named.value()), 15, "the first `hits` is untouched");
}

#[test]
fn restart_after_sigkill_rebuilds_the_actor_from_its_constructor() {
    let c = cluster(2);
    let h = Counter::options()
        .max_restarts(2)
        .remote(10)
        .expect("create");
    assert_eq!(get(&h.incr(5)), 15);
    let pid = get(&h.pid());
    kill_worker(&c, pid);

    let after = call_until_alive("the actor to be rebuilt", || h.value());
    assert_eq!(after, 10, "a rebuilt actor has its constructor's state");
    let new_pid = get(&h.pid());
    assert_ne!(new_pid, pid, "rebuilt in another process");
    assert_eq!(get(&h.incr(1)), 11, "the rebuilt actor keeps serving");
}

#[test]
fn with_max_restarts_0_a_kill_leaves_the_actor_dead() {
    let c = cluster(2);
    let h = Counter::remote(3).expect("create");
    assert_eq!(get(&h.incr(1)), 4);
    kill_worker(&c, get(&h.pid()));
    assert_actor_died("the first call after the kill", try_get(&h.value()));
    for i in 0..3 {
        assert_actor_died(&format!("call {i} after the death"), try_get(&h.incr(1)));
    }
}

#[test]
fn with_max_restarts_1_a_second_kill_leaves_the_actor_dead() {
    let c = cluster(2);
    let h = Counter::options()
        .max_restarts(1)
        .remote(7)
        .expect("create");
    assert_eq!(get(&h.incr(1)), 8);
    let first = get(&h.pid());
    kill_worker(&c, first);

    assert_eq!(call_until_alive("the first restart", || h.value()), 7);
    let second = get(&h.pid());
    assert_ne!(second, first, "rebuilt in another process");
    kill_worker(&c, second);

    assert_actor_died("the first call after the second kill", try_get(&h.value()));
    for i in 0..3 {
        assert_actor_died(&format!("call {i} after the death"), try_get(&h.incr(1)));
    }
}

#[test]
fn a_call_in_flight_when_the_process_dies_is_retried_after_the_restart() {
    let c = cluster(2);
    let dir = tempfile::tempdir().expect("temp dir");
    let h = Counter::options()
        .max_restarts(1)
        .max_task_retries(1)
        .remote(10)
        .expect("create");
    let held = h.hold_on_first_attempt(dir.path().to_string_lossy().into_owned());
    // Queued behind the held call (already sent to the worker's mailbox).
    let behind = h.incr(1);
    let pid_file = dir.path().join("pid");
    let pid: u32 = wait_until("the held call to publish its pid", GENEROUS, || {
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.parse().ok())
    });
    kill_worker(&c, pid);

    let (value, ran_in) = try_get(&held).expect("the in-flight call is retried");
    assert_ne!(ran_in, pid, "the retry ran in the rebuilt process");
    assert_eq!(value, 10, "the retry ran on the rebuilt actor");
    assert_eq!(
        try_get(&behind).expect("the call queued behind it runs too"),
        11,
        "the queued call ran after the retried one, on the rebuilt actor"
    );
}

#[test]
fn without_max_task_retries_a_call_in_flight_fails_and_the_actor_restarts() {
    let c = cluster(2);
    let dir = tempfile::tempdir().expect("temp dir");
    let h = Counter::options()
        .max_restarts(1)
        .remote(10)
        .expect("create");
    let held = h.hold_on_first_attempt(dir.path().to_string_lossy().into_owned());
    let pid_file = dir.path().join("pid");
    let pid: u32 = wait_until("the held call to publish its pid", GENEROUS, || {
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.parse().ok())
    });
    kill_worker(&c, pid);
    assert_actor_died("the call in flight", try_get(&held));
    assert_eq!(call_until_alive("the restart", || h.value()), 10);
}

#[test]
fn kill_fails_queued_and_later_calls_and_frees_the_name() {
    let _c = cluster(2);
    let dir = tempfile::tempdir().expect("temp dir");
    let gate = Gate::new();
    let started = dir.path().join("started");
    let h = Counter::options()
        .name("victim")
        .remote(1)
        .expect("create `victim`");
    let running = h.block(started.to_string_lossy().into_owned(), gate.path());
    wait_until("the blocking call to start", GENEROUS, || {
        started.exists().then_some(())
    });
    let queued: Vec<ObjectRef<i64>> = (0..5).map(|_| h.incr(1)).collect();
    // A round trip to the head on the same ordered stream: once it answers,
    // the calls above have reached the head and wait behind the running
    // one (so the kill below cannot land in the same batch as them).
    fleet::get_actor::<Counter>("victim").expect("`victim` is alive");

    fleet::kill(&h).expect("kill");
    // The head handles the kill before this lookup (one ordered stream).
    wait_until("the name to be freed", GENEROUS, || {
        fleet::get_actor::<Counter>("victim").is_err().then_some(())
    });
    // Let the running call end: calls queued behind it must not run now.
    gate.open();
    for (i, r) in queued.iter().enumerate() {
        assert_actor_died(&format!("queued call {i}"), try_get(r));
    }
    assert_actor_died("a call made after the kill", try_get(&h.incr(1)));
    match try_get(&running) {
        Ok(_) | Err(Error::ActorDied { .. }) => {}
        Err(e) => panic!("the call running at the kill: {e}"),
    }

    let again = Counter::options()
        .name("victim")
        .remote(50)
        .expect("the freed name can be taken again");
    let found = fleet::get_actor::<Counter>("victim").expect("lookup of the new `victim`");
    assert_eq!(found, again);
    assert_eq!(get(&found.value()), 50);
}

#[test]
fn a_panic_fails_only_that_call_and_the_actor_keeps_serving() {
    let _c = cluster(2);
    let h = Counter::remote(0).expect("create");
    assert_eq!(get(&h.incr(5)), 5);
    let pid = get(&h.pid());

    // Submitted together: the calls behind the panic still run.
    let before = h.incr(1);
    let boom = h.explode(3);
    let after = h.incr(1);
    let boom_ref = h.explode_ref();
    let last = h.incr(1);
    assert_eq!(get(&before), 6);
    match try_get(&boom) {
        Err(Error::Task {
            function, message, ..
        }) => {
            assert!(function.contains("explode"), "function: {function}");
            assert!(
                message.contains("deliberate panic in explode(3)"),
                "message: {message}"
            );
        }
        other => panic!("expected Error::Task from the panic, got {other:?}"),
    }
    assert_eq!(get(&after), 7, "the state is kept after a panic");
    match try_get(&boom_ref) {
        Err(Error::Task { message, .. }) => {
            assert!(message.contains("explode_ref"), "message: {message}");
        }
        other => panic!("expected Error::Task from the panic, got {other:?}"),
    }
    assert_eq!(get(&last), 8);

    // No poisoning: a panic after a change leaves the change in place.
    assert!(matches!(
        try_get(&h.add_then_explode(10)),
        Err(Error::Task { .. })
    ));
    assert_eq!(get(&h.incr(1)), 19, "the state is what the method left");
    assert_eq!(get(&h.pid()), pid, "the process survived the panics");
}

#[test]
fn an_actor_with_no_handles_left_is_destroyed() {
    let c = cluster(2);
    let actors = || c.counts().expect("local cluster counts").actors;
    let a = Counter::remote(0).expect("create a");
    let b = Counter::remote(0).expect("create b");
    let named = Counter::options()
        .name("kept")
        .remote(5)
        .expect("create `kept`");
    assert_eq!(get(&bump_all::remote(vec![a.clone(), b.clone()])), 2);
    assert_eq!(get(&named.incr(1)), 6);
    assert_eq!(actors(), 3);

    drop((a, b, named));
    // The unnamed ones go; the named one lives until killed.
    wait_until("the unnamed actors to be destroyed", GENEROUS, || {
        (actors() == 1).then_some(())
    });
    let kept = fleet::get_actor::<Counter>("kept").expect("the named actor lives on");
    assert_eq!(get(&kept.value()), 6);

    fleet::kill(&kept).expect("kill");
    drop(kept);
    wait_until("the killed actor to be forgotten", GENEROUS, || {
        (actors() == 0).then_some(())
    });
}

#[test]
fn max_concurrency_4_runs_4_shared_calls_at_once() {
    let _c = cluster(2);
    let dir = tempfile::tempdir().expect("temp dir");
    let gate = Gate::new();
    let started = dir.path().to_string_lossy().into_owned();
    let g = Gauge::options()
        .max_concurrency(4)
        .remote()
        .expect("create");
    let calls: Vec<ObjectRef<usize>> = (0..8)
        .map(|_| g.enter(started.clone(), gate.path()))
        .collect();
    let count = || std::fs::read_dir(dir.path()).map_or(0, |d| d.count());
    // Only calls running at the same time can all have started: none
    // leaves before the gate opens.
    wait_until("4 calls to be inside the actor at once", GENEROUS, || {
        (count() >= 4).then_some(())
    });
    gate.open();
    let entered = fleet::get_all_timeout(&calls, Some(GENEROUS)).expect("results");
    assert_eq!(entered.len(), 8);
    assert_eq!(
        get(&g.peak()),
        4,
        "4 calls ran at once, never more (entered with {entered:?})"
    );
}

#[test]
fn ten_thousand_actors_share_a_few_worker_processes() {
    let c = cluster(2);
    let n = 10_000i64;
    let started = Instant::now();
    let actors: Vec<CounterHandle> = (0..n)
        .map(|i| Counter::remote(i).expect("create"))
        .collect();
    let refs: Vec<ObjectRef<i64>> = actors.iter().map(|a| a.value()).collect();
    let values =
        fleet::get_all_timeout(&refs, Some(Duration::from_secs(900))).expect("every actor answers");
    let took = started.elapsed();
    eprintln!("10,000 actors created and called once in {took:?}");
    assert_eq!(values, (0..n).collect::<Vec<_>>());

    let counts = c.counts().expect("counts");
    assert_eq!(counts.actors, n as usize);
    assert!(
        counts.workers + counts.starting <= 64,
        "{} workers and {} starting for 10,000 actors",
        counts.workers,
        counts.starting
    );
    assert!(c.worker_pids().len() <= 64, "{:?}", c.worker_pids());
}

#[test]
fn actor_pool_map_returns_results_in_input_order() {
    let _c = cluster(2);
    let handles: Vec<CounterHandle> = (0..4)
        .map(|_| Counter::remote(0).expect("create"))
        .collect();
    let pool = ActorPool::new(handles);
    // Uneven pauses make calls finish in another order than made.
    let pause = |v: i64| ((v * 7) % 5) as u64 * 4;
    let got = pool
        .map(0..40i64, |a, v| a.square(v, pause(v)))
        .expect("map");
    assert_eq!(got, (0..40i64).map(|v| v * v).collect::<Vec<_>>());

    let per_actor: Vec<i64> = pool.actors().iter().map(|a| get(&a.value())).collect();
    assert_eq!(per_actor.iter().sum::<i64>(), 40, "{per_actor:?}");
    assert!(
        per_actor.iter().all(|n| *n > 0),
        "every actor got work: {per_actor:?}"
    );

    let mut unordered = pool
        .map_unordered(0..20i64, |a, v| a.square(v, pause(v)))
        .expect("map_unordered");
    unordered.sort_unstable();
    assert_eq!(
        unordered,
        (0..20i64).map(|v| (v as usize, v * v)).collect::<Vec<_>>()
    );
}

// ---- A second driver on a cluster started with the `fleet` CLI ----

/// Set (to the head's address) in the second driver's environment.
const SECOND_DRIVER_ENV: &str = "FLEET_TEST_ACTORS_SECOND_DRIVER";

/// Not a test on its own: the body of the second driver process. Joins the
/// cluster, finds the named counter, calls it directly and from a task.
#[test]
fn second_driver_role() {
    let Ok(address) = std::env::var(SECOND_DRIVER_ENV) else {
        return;
    };
    let _c = fleet::init_with(fleet::Config {
        address: Some(address),
        ..Default::default()
    })
    .expect("the second driver joins");
    let shared = fleet::get_actor::<Counter>("shared").expect("get_actor by name");
    let direct = get(&shared.incr(5));
    let from_task = get(&bump_named::remote("shared".to_string(), 100));
    println!("RESULT {direct} {from_task}");
}

#[test]
fn a_named_actor_is_found_from_a_second_driver() {
    let dir = tempfile::tempdir().expect("temp dir");
    let token = format!("actors-test-token-{}", std::process::id());
    let head = Child::spawn(
        Command::new(fleet_bin())
            .args(["start", "--head", "--port", "0", "--block"])
            .args(["--num-cpus", "2"])
            .arg("--token-file")
            .arg(dir.path().join("token"))
            .env("FLEET_TOKEN", &token),
    );
    let line = head.expect_line("serving at");
    let address = line.rsplit(' ').next().expect("address").to_string();
    let _driver = fleet::init_with(fleet::Config {
        address: Some(address.clone()),
        token: Some(token.clone()),
        ..Default::default()
    })
    .expect("join the cluster");

    let shared = Counter::options()
        .name("shared")
        .remote(10)
        .expect("create `shared`");
    assert_eq!(get(&shared.incr(1)), 11);

    let second = Child::spawn(
        Command::new(std::env::current_exe().expect("test executable"))
            .args(["--exact", "second_driver_role", "--nocapture"])
            .env(SECOND_DRIVER_ENV, &address)
            .env("FLEET_TOKEN", &token),
    );
    let result = second.expect_line("RESULT");
    assert_eq!(result, "RESULT 16 116", "the second driver's calls");
    assert_eq!(get(&shared.value()), 116, "one actor served both drivers");
}
