//! Chaos: work goes on while worker processes are killed with SIGKILL.
//!
//! A helper thread kills a random worker of the local cluster (from
//! `Cluster::worker_pids()`) every 200 ms until the work is done. Every
//! result must be correct, none missing and none duplicated. Actor calls
//! run on actors that may restart any number of times; their methods are
//! pure (`f(x)`), since an actor's state resets when it is rebuilt.
//!
//! A node agent (a `fleet start` process, see tests/cluster.rs) killed and
//! started again during a run loses no task either, and a job whose
//! workers cannot start must not keep the cluster from replacing the
//! workers of other jobs.
//!
//! Every wait is an event with a generous deadline; nothing asserts timing.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::cli::CliCluster;
use common::{bounded, cluster, GENEROUS};
use fleet::{remote, ObjectRef};

/// Ceiling for a whole test: a hang fails the test instead of the run.
const WHOLE_TEST: Duration = Duration::from_secs(300);

/// Retries enough that no task runs out of them however often its worker
/// is killed while the run lasts.
const MANY: u32 = 1_000_000;

fn f(x: u64) -> u64 {
    x.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17) ^ 0x5555
}

/// `f(x)`, after a short pause so that the run spans many kills.
#[remote]
fn scramble(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(3));
    f(x)
}

/// An actor with a pure method: a rebuilt instance answers the same.
#[remote]
struct Scrambler {
    calls: u64,
}

#[remote]
impl Scrambler {
    fn new() -> Self {
        Scrambler { calls: 0 }
    }

    /// `f(x)`; also counts calls (state that a restart resets, unchecked).
    fn apply(&mut self, x: u64) -> u64 {
        self.calls += 1;
        std::thread::sleep(Duration::from_millis(20));
        f(x)
    }
}

/// Kills a random worker of `c` every 200 ms until `stop` is set; returns
/// how many it killed.
fn start_killer(c: fleet::Cluster, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut kills = 0;
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        while !stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(200));
            if stop.load(Ordering::Acquire) {
                break;
            }
            let pids = c.worker_pids();
            if pids.is_empty() {
                continue;
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let pid = pids[(x % pids.len() as u64) as usize];
            // SAFETY: kill(2) has no memory-safety preconditions. The pid
            // is a live child of this process's supervisor (not yet reaped),
            // so it cannot have been reused.
            if unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) } == 0 {
                kills += 1;
            }
        }
        kills
    })
}

/// Checks `results[i] == f(i)`, and that no value appears twice.
fn check(results: &[u64]) {
    for (i, y) in results.iter().enumerate() {
        assert_eq!(*y, f(i as u64), "result {i}");
    }
    let distinct: HashSet<u64> = results.iter().copied().collect();
    assert_eq!(distinct.len(), results.len(), "duplicated results");
}

/// Waits until the head tracks no object and no task (all refs dropped).
fn wait_empty(c: &fleet::Cluster) {
    common::wait_until("the head to forget every task and object", GENEROUS, || {
        let n = c.counts().expect("local cluster");
        (n.objects == 0 && n.tasks == 0).then_some(())
    });
}

#[test]
fn ten_thousand_tasks_survive_a_worker_killed_every_200ms() {
    const N: u64 = 10_000;
    let c = cluster(4);
    let stop = Arc::new(AtomicBool::new(false));
    let killer = start_killer(c.clone(), stop.clone());
    let results = bounded("10,000 tasks under SIGKILL", WHOLE_TEST, move || {
        let refs: Vec<ObjectRef<u64>> = (0..N)
            .map(|x| scramble::options().max_retries(MANY).remote(x))
            .collect();
        fleet::get_all_timeout(&refs, Some(WHOLE_TEST))
    });
    stop.store(true, Ordering::Release);
    let kills = killer.join().expect("the killer thread");
    let results = results.expect("every task finishes despite the kills");
    assert_eq!(results.len(), N as usize, "missing results");
    check(&results);
    println!("{N} tasks correct after surviving {kills} worker kills (SIGKILL)");
    // The cluster is whole again and forgets everything once refs drop.
    let more: Vec<ObjectRef<u64>> = (0..100).map(scramble::remote).collect();
    check(&fleet::get_all_timeout(&more, Some(GENEROUS)).expect("after the chaos"));
    drop(more);
    wait_empty(&c);
}

#[test]
fn a_thousand_actor_calls_survive_a_worker_killed_every_200ms() {
    const N: u64 = 1_000;
    const ACTORS: usize = 4;
    let c = cluster(4);
    let actors: Vec<ScramblerHandle> = (0..ACTORS)
        .map(|_| {
            Scrambler::options()
                .max_restarts(MANY)
                .max_task_retries(MANY)
                .remote()
                .expect("creating an actor")
        })
        .collect();
    for a in &actors {
        a.as_ref().ready().expect("the actor starts");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let killer = start_killer(c.clone(), stop.clone());
    let results = bounded("1,000 actor calls under SIGKILL", WHOLE_TEST, move || {
        let refs: Vec<ObjectRef<u64>> = (0..N)
            .map(|x| actors[x as usize % ACTORS].apply(x))
            .collect();
        fleet::get_all_timeout(&refs, Some(WHOLE_TEST))
    });
    stop.store(true, Ordering::Release);
    let kills = killer.join().expect("the killer thread");
    let results = results.expect("every call finishes despite the kills");
    assert_eq!(results.len(), N as usize, "missing results");
    check(&results);
    println!(
        "{N} actor calls on {ACTORS} actors correct after surviving {kills} worker kills \
         (SIGKILL)"
    );
    // The actors were dropped with the closure: the head forgets them.
    common::wait_until("the actors to be destroyed", GENEROUS, || {
        (c.counts().expect("local cluster").actors == 0).then_some(())
    });
    wait_empty(&c);
}

// ---------------------------------------------------------------------------
// A node agent killed and restarted while a job runs (multi-process cluster).

#[remote]
fn scramble_slowly(x: u64) -> (u64, String) {
    std::thread::sleep(Duration::from_millis(3));
    (f(x), fleet::current_node().unwrap_or_default())
}

#[test]
fn a_node_agent_killed_and_restarted_mid_run_loses_no_task() {
    const N: u64 = 1_500;
    let mut cluster = CliCluster::start(1, &[]);
    let first = cluster.add_node("127.0.0.2", 1);
    let _driver = cluster.join();
    let (results, seen) = bounded("a job across a node restart", WHOLE_TEST, move || {
        let refs: Vec<ObjectRef<(u64, String)>> = (0..N)
            .map(|x| scramble_slowly::options().max_retries(MANY).remote(x))
            .collect();
        // Once the node has run some of the job, kill its agent outright
        // (its workers die with it), then start it again on the same IP.
        let mut seen = HashSet::new();
        let mut pending = refs.clone();
        while !seen.contains(&first) {
            assert!(!pending.is_empty(), "the node {first} never ran a task");
            let (ready, rest) = fleet::wait(&pending, 1, Some(GENEROUS)).expect("wait");
            assert!(!ready.is_empty(), "no task finished in time");
            for r in &ready {
                seen.insert(fleet::get(r).expect("an early result").1);
            }
            pending = rest;
        }
        cluster.nodes[0].1.kill();
        let second = cluster.add_node("127.0.0.2", 1);
        let results = fleet::get_all_timeout(&refs, Some(WHOLE_TEST));
        drop(cluster);
        (results, (first, second))
    });
    let results = results.expect("every task finishes across the node's restart");
    let values: Vec<u64> = results.iter().map(|r| r.0).collect();
    assert_eq!(values.len(), N as usize, "missing results");
    check(&values);
    let (first, second) = seen;
    let ran_after = results.iter().filter(|r| r.1 == second).count();
    println!(
        "{N} tasks correct; node {first} killed after running tasks, restarted as {second} \
         which ran {ran_after}"
    );
}

// ---------------------------------------------------------------------------
// A job whose workers cannot start must not stop the cluster from replacing
// the workers of other jobs.

/// The token of this process's local cluster, from a worker's environment.
fn local_token(c: &fleet::Cluster) -> String {
    let pid = common::wait_until("a worker process", GENEROUS, || {
        c.worker_pids().first().copied()
    });
    let env = std::fs::read(format!("/proc/{pid}/environ")).expect("reading a worker's environ");
    env.split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(b"FLEET_WORKER_TOKEN="))
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .expect("the worker's environment holds the token")
}

#[remote]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

/// Another driver joins with an executable that exits at once (as one
/// built for another libc or with a missing library would): its workers
/// never start. Meanwhile every worker of this test's own job is killed;
/// they must be replaced and this job's tasks must run.
///
/// The head counts start failures in one counter for all jobs
/// (`Head::start_failures`, `MAX_START_FAILURES` = 10 in `head.rs`) and,
/// past it, starts no worker at all until one connects, which no worker
/// can do once none is started.
#[test]
fn a_job_whose_workers_cannot_start_does_not_lock_out_the_others() {
    use fleet::proto::{
        client_op, head_client::HeadClient, BinaryChunk, ClientFrame, ClientOp, Hello, Role,
        TaskSpec,
    };

    let c = cluster(2);
    let first: Vec<ObjectRef<u64>> = (0..10).map(|x| add::remote(x, 1)).collect();
    fleet::get_all_timeout(&first, Some(GENEROUS)).expect("the cluster runs tasks");
    let token = local_token(&c);
    let dir = tempfile::tempdir().expect("temp dir");
    let starts = dir.path().join("starts");
    let script = format!(
        "#!/bin/sh\necho started >> '{}'\nexit 3\n",
        starts.display()
    );
    let hash = format!("broken-{}", std::process::id());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let address = format!("http://{}", c.address());
    // The other driver: uploads its executable and submits one task.
    let (tx, rx) = futures::channel::mpsc::unbounded::<ClientFrame>();
    let session = rt.block_on(async {
        let mut client = HeadClient::connect(address).await.expect("connect");
        client
            .upload_binary(futures::stream::iter([BinaryChunk {
                hash: hash.clone(),
                token: token.clone(),
                data: script.into_bytes().into(),
            }]))
            .await
            .expect("upload");
        let hello = Hello {
            protocol_version: fleet::PROTOCOL_VERSION,
            registry_hash: "the-broken-build".into(),
            role: Role::Driver.into(),
            pid: std::process::id(),
            token: token.clone(),
            binary_hash: hash.clone(),
            ..Default::default()
        };
        let frame = |op| ClientFrame {
            ops: vec![ClientOp { op: Some(op) }],
        };
        tx.unbounded_send(frame(client_op::Op::Hello(Box::new(hello))))
            .expect("send");
        tx.unbounded_send(frame(client_op::Op::Submit(Box::new(TaskSpec {
            task_id: (1 << 60) | 1,
            function: "chaos::add".into(),
            num_cpus: 1.0,
            ..Default::default()
        }))))
        .expect("send");
        let mut inbound = client.session(rx).await.expect("session").into_inner();
        inbound
            .message()
            .await
            .expect("an answer")
            .expect("welcome");
        inbound
    });
    // Its workers are started and fail, again and again, until the head
    // stops trying (after 10 in a row).
    common::wait_until("the other job's workers to fail 10 times", GENEROUS, || {
        let n = std::fs::read_to_string(&starts)
            .unwrap_or_default()
            .lines()
            .count();
        (n >= 10).then_some(n)
    });
    // Now this job loses every worker.
    let victims = c.worker_pids();
    for pid in &victims {
        common::sigkill(*pid);
    }
    let result = bounded("a task after the workers were killed", WHOLE_TEST, || {
        fleet::get_timeout(&add::remote(40, 2), Some(Duration::from_secs(60)))
    });
    let failed_starts = std::fs::read_to_string(&starts)
        .unwrap_or_default()
        .lines()
        .count();
    drop((tx, session));
    assert!(
        matches!(result, Ok(42)),
        "after the other job's workers failed to start {failed_starts} times, this job's \
         killed workers {victims:?} were not replaced: {result:?}; head counts {:?}",
        c.counts()
    );
    println!("killed workers {victims:?} replaced; the other job failed {failed_starts} starts");
}
