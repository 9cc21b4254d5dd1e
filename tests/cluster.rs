//! Many machines on one: a head on 127.0.0.1 and node agents on other
//! loopback addresses, each a separate `fleet start` process; this test
//! process joins as a driver (its executable is shipped to the nodes).

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use common::cli::{Child as Proc, CliCluster};

use fleet::{remote, Blob, Config, ObjectRef};

const WAIT: Duration = Duration::from_secs(120);

type TestCluster = CliCluster;

#[remote]
fn where_am_i(pause_ms: u64) -> String {
    std::thread::sleep(Duration::from_millis(pause_ms));
    fleet::current_node().unwrap_or_default()
}

#[remote]
fn double(x: u64, pause_ms: u64) -> (u64, String) {
    std::thread::sleep(Duration::from_millis(pause_ms));
    (x * 2, fleet::current_node().unwrap_or_default())
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 20) as u8)
        .collect()
}

#[remote]
fn make_big(len: usize) -> (Blob, String) {
    (
        Blob::from(pattern(len)),
        fleet::current_node().unwrap_or_default(),
    )
}

#[remote]
fn digest(b: (Blob, String)) -> (u64, usize, String) {
    let sum = b.0.iter().enumerate().fold(0u64, |acc, (i, x)| {
        acc.wrapping_mul(31).wrapping_add(u64::from(*x) ^ i as u64)
    });
    (sum, b.0.len(), fleet::current_node().unwrap_or_default())
}

#[test]
fn tasks_spread_over_all_nodes() {
    let mut c = TestCluster::start(1, &[]);
    let b = c.add_node("127.0.0.2", 1);
    let d = c.add_node("127.0.0.3", 1);
    let _driver = c.join();
    let refs: Vec<ObjectRef<String>> = (0..30).map(|_| where_am_i::remote(150)).collect();
    let seen: HashSet<String> = fleet::get_all(&refs)
        .expect("results")
        .into_iter()
        .collect();
    let all: HashSet<String> = [c.address.clone(), b, d].into_iter().collect();
    assert_eq!(seen, all, "every node ran tasks");
}

#[test]
fn a_256_mib_object_made_on_one_node_is_read_on_another() {
    let mut c = TestCluster::start(0, &[]);
    let a = c.add_node("127.0.0.2", 1);
    let b = c.add_node("127.0.0.3", 1);
    let _driver = c.join();
    let len = 256 << 20;
    let big = make_big::options().node(a.clone()).remote(len);
    let (sum, n, reader) =
        fleet::get(&digest::options().node(b.clone()).remote(&big)).expect("digest");
    assert_eq!(reader, b);
    let expected = pattern(len);
    let want = expected.iter().enumerate().fold(0u64, |acc, (i, x)| {
        acc.wrapping_mul(31).wrapping_add(u64::from(*x) ^ i as u64)
    });
    assert_eq!((sum, n), (want, len), "the bytes arrived intact on {b}");
    // The driver (on the head's machine) reads it too.
    let (blob, made_on) = fleet::get(&big).expect("driver reads the object");
    assert_eq!(made_on, a);
    assert!(blob[..] == expected[..], "byte-equal at the driver");
}

#[test]
fn a_node_killed_mid_run_loses_no_task() {
    let mut c = TestCluster::start(1, &[]);
    c.add_node("127.0.0.2", 1);
    c.add_node("127.0.0.3", 1);
    let _driver = c.join();
    let refs: Vec<ObjectRef<(u64, String)>> = (0..2000u64).map(|x| double::remote(x, 2)).collect();
    // Once work is flowing on every node, kill one node agent outright.
    let (ready, _) = fleet::wait(&refs, 200, Some(WAIT)).expect("wait");
    assert_eq!(ready.len(), 200);
    c.nodes[0].1.kill();
    let results = fleet::get_all(&refs).expect("every task still finishes");
    for (x, (y, _)) in results.iter().enumerate() {
        assert_eq!(*y, 2 * x as u64);
    }
}

/// A node agent stopped with SIGTERM (as `fleet stop` and the autoscaler
/// stop one) says so first: `fleet list nodes` shows it dead, "left"; one
/// killed outright is "lost". Neither takes the cluster down.
#[test]
fn a_stopped_node_is_listed_as_left_and_a_killed_one_as_lost() {
    let mut c = TestCluster::start(1, &[]);
    let stopped = c.add_node("127.0.0.2", 1);
    let killed = c.add_node("127.0.0.3", 1);
    let death = |rows: &[serde_json::Value], name: &str| -> Option<String> {
        let row = rows.iter().find(|r| r["name"] == name)?;
        (row["state"] == "dead").then(|| row["death"].as_str().unwrap_or("?").to_string())
    };
    assert!(c
        .list_json("nodes")
        .iter()
        .all(|r| r["state"] == "alive" && r["death"].is_null()));
    // SAFETY: SIGTERM to our own child, which is not reaped yet.
    unsafe { libc::kill(c.nodes[0].1.child.id() as i32, libc::SIGTERM) };
    let status = c.nodes[0].1.child.wait().expect("the agent exits");
    assert!(status.success(), "a stopped agent exits cleanly: {status}");
    c.nodes[1].1.kill();
    let rows = common::wait_until("both nodes dead", WAIT, || {
        let rows = c.list_json("nodes");
        (death(&rows, &stopped).is_some() && death(&rows, &killed).is_some()).then_some(rows)
    });
    assert_eq!(death(&rows, &stopped).as_deref(), Some("left"), "{rows:?}");
    assert_eq!(death(&rows, &killed).as_deref(), Some("lost"), "{rows:?}");
    // The head serves on: a driver still runs tasks.
    let _driver = c.join();
    assert_eq!(fleet::get(&double::remote(21, 2)).expect("a task").0, 42);
}

#[test]
fn a_node_joining_mid_run_gets_work() {
    let mut c = TestCluster::start(1, &[]);
    let _driver = c.join();
    let refs: Vec<ObjectRef<String>> = (0..200).map(|_| where_am_i::remote(30)).collect();
    let (ready, _) = fleet::wait(&refs, 10, Some(WAIT)).expect("wait");
    assert_eq!(ready.len(), 10);
    let late = c.add_node("127.0.0.4", 1);
    let seen: HashSet<String> = fleet::get_all(&refs)
        .expect("results")
        .into_iter()
        .collect();
    assert!(
        seen.contains(&late),
        "the new node {late} ran tasks: {seen:?}"
    );
}

const DRIVER_ENV: &str = "FLEET_TEST_DRIVER_OF";

/// Not a test on its own: the body of a second driver process.
#[test]
fn driver_role() {
    let Ok(address) = std::env::var(DRIVER_ENV) else {
        return;
    };
    let _c = fleet::init_with(Config {
        address: Some(address),
        ..Default::default()
    })
    .expect("join");
    let refs: Vec<ObjectRef<(u64, String)>> = (0..300u64).map(|x| double::remote(x, 1)).collect();
    let sum: u64 = fleet::get_all(&refs)
        .expect("results")
        .iter()
        .map(|r| r.0)
        .sum();
    println!("RESULT {sum}");
}

#[test]
fn two_drivers_use_one_cluster_at_once() {
    let mut c = TestCluster::start(1, &[]);
    c.add_node("127.0.0.2", 1);
    let spawn = || {
        Proc::spawn(
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "driver_role", "--nocapture"])
                .env(DRIVER_ENV, &c.address)
                .env("FLEET_TOKEN", &c.token),
        )
    };
    let (one, two) = (spawn(), spawn());
    let want = (0..300u64).map(|x| 2 * x).sum::<u64>();
    for d in [&one, &two] {
        let line = d.expect_line("RESULT");
        assert_eq!(line, format!("RESULT {want}"));
    }
}

#[remote]
fn make_blob(i: usize, len: usize) -> Blob {
    Blob::from((0..len).map(|j| (i * 7 + j) as u8).collect::<Vec<u8>>())
}

#[test]
fn a_full_store_on_a_node_spills_and_reads_back() {
    let mut c = TestCluster::start(0, &[]);
    let small = c.add_node_with("127.0.0.2", 1, &["--object-store-bytes", "33554432"]);
    let _driver = c.join();
    let len = 4 << 20;
    let refs: Vec<ObjectRef<Blob>> = (0..16)
        .map(|i| make_blob::options().node(small.clone()).remote(i, len))
        .collect();
    fleet::wait(&refs, refs.len(), Some(WAIT)).expect("made");
    // The node agent spills in the background: wait for the event.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let s = fleet::daemon::status(&c.address, &c.token).expect("status");
        let n = s.nodes.iter().find(|n| n.name == small).expect("the node");
        if n.store_used <= n.store_capacity {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never spilled: {n:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    for (i, r) in refs.iter().enumerate() {
        let b = fleet::get(r).expect("read back");
        assert!(
            b.iter().enumerate().all(|(j, x)| *x == (i * 7 + j) as u8),
            "object {i}"
        );
    }
}
