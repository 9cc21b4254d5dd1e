//! Processes that start in any order and heads that restart (as under
//! Slurm or Kubernetes): a node agent started before its head, a head
//! SIGKILLed and restarted under running node agents, a driver whose head
//! dies, and dead nodes that leave the node list. Every process is a real
//! `fleet` process; every wait is for an event, with a generous deadline.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::cli::{fleet_bin, free_port, fresh_token, spawn_node, CliCluster};
use common::{wait_all_gone, wait_until, Proc, GENEROUS};

use fleet::{remote, Blob, ObjectRef};

#[remote]
fn where_am_i(pause_ms: u64) -> String {
    std::thread::sleep(Duration::from_millis(pause_ms));
    fleet::current_node().unwrap_or_default()
}

/// A task's worker pid, node and a value large enough to live in the
/// node's store.
#[remote]
fn stored_on_node(len: usize, pause_ms: u64) -> (u32, String, Blob) {
    std::thread::sleep(Duration::from_millis(pause_ms));
    (
        std::process::id(),
        fleet::current_node().unwrap_or_default(),
        Blob::from(vec![7u8; len]),
    )
}

/// Writes its worker's pid to `pid_file`, then blocks until `gate` exists
/// (it never does in the test: the head dies first).
#[remote]
fn hold(pid_file: String, gate: String) -> u32 {
    std::fs::write(&pid_file, std::process::id().to_string()).expect("write the pid file");
    common::wait_for_path(std::path::Path::new(&gate));
    1
}

fn status(c: &CliCluster) -> Option<fleet::proto::StatusReply> {
    fleet::daemon::status(&c.address, &c.token).ok()
}

/// The store folder on /dev/shm of the node agent with this pid.
fn store_dir_of(agent_pid: u32) -> PathBuf {
    let prefix = format!("fleet-{agent_pid}-");
    std::fs::read_dir("/dev/shm")
        .expect("read /dev/shm")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .unwrap_or_else(|| panic!("no store folder of node agent {agent_pid} in /dev/shm"))
}

/// Regular files under `dir`, recursively, but for dotfiles (the store's
/// id file names the store, not an object).
fn files_under(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                files_under(&p)
            } else {
                1
            }
        })
        .sum()
}

#[test]
fn a_node_started_before_its_head_joins_when_the_head_starts() {
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let token = fresh_token();
    let node = spawn_node(
        &address,
        &token,
        "127.0.0.2",
        2,
        &["--wait-for-head", "120"],
    );
    let waiting = node.expect_line("waiting for the head");
    assert!(waiting.contains(&address), "{waiting}");
    assert!(waiting.contains("--wait-for-head"), "{waiting}");
    // The head has no CPUs of its own: every task must run on the node.
    let c = CliCluster::start_on(port, &token, 0, &[]);
    let name = node.joined_node_name();
    let _driver = c.join();
    let refs: Vec<ObjectRef<String>> = (0..8).map(|_| where_am_i::remote(20)).collect();
    let seen = fleet::get_all(&refs).expect("tasks run on the node");
    assert!(
        seen.iter().all(|n| *n == name),
        "{seen:?} not all on {name}"
    );
}

#[test]
fn a_node_agent_gives_up_after_wait_for_head_naming_the_address_and_flag() {
    let address = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(fleet_bin());
    cmd.args(["start", "--address", &address, "--node-ip", "127.0.0.2"])
        .args(["--block", "--num-cpus", "1", "--wait-for-head", "1"])
        .env("FLEET_TOKEN", fresh_token());
    let out = common::bounded("a node agent with no head", GENEROUS, move || {
        cmd.output().expect("run fleet start")
    });
    assert!(!out.status.success(), "it must fail: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&address), "{err}");
    assert!(err.contains("--wait-for-head"), "{err}");
}

#[test]
fn a_head_restarted_under_running_nodes_gets_them_back_with_a_clean_slate() {
    let mut c = CliCluster::start(0, &[]);
    let a = c.add_node("127.0.0.2", 1);
    let b = c.add_node("127.0.0.3", 1);
    let agent_pids: Vec<u32> = c.nodes.iter().map(|(_, p)| p.child.id()).collect();
    let driver = c.join();
    // Work on both nodes (pinned, so a loaded machine cannot put it all
    // on one), with results kept in their stores.
    let refs: Vec<_> = [&a, &b]
        .into_iter()
        .flat_map(|n| {
            (0..4).map(move |_| {
                stored_on_node::options()
                    .node(n.clone())
                    .remote(1 << 20, 50)
            })
        })
        .collect();
    let results = fleet::get_all(&refs).expect("tasks on both nodes");
    let nodes: HashSet<&str> = results.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(nodes, HashSet::from([a.as_str(), b.as_str()]));
    let workers: Vec<Proc> = results
        .iter()
        .map(|r| r.0)
        .collect::<HashSet<u32>>()
        .into_iter()
        .filter_map(Proc::of)
        .collect();
    assert!(!workers.is_empty());
    for pid in &agent_pids {
        assert!(
            files_under(&store_dir_of(*pid)) > 0,
            "node {pid} stores the results"
        );
    }

    c.restart_head(0, &[]);
    let serving = std::time::Instant::now();
    for (name, node) in &c.nodes {
        node.expect_line("lost the head");
        assert_eq!(
            node.joined_node_name(),
            *name,
            "it rejoins under its own name"
        );
    }
    eprintln!(
        "FIGURE both node agents rejoined {:.2} s after the restarted head served",
        serving.elapsed().as_secs_f64()
    );
    // The old driver's session ended with the old head.
    let err = fleet::get(&where_am_i::remote(0)).expect_err("the old head is gone");
    assert!(matches!(err, fleet::Error::Connection(_)), "{err}");
    drop(refs);
    drop(results);
    drop(driver);
    // Clean slate: the old workers are gone, the stores are empty.
    wait_all_gone(&workers, true, GENEROUS);
    for pid in &agent_pids {
        let dir = store_dir_of(*pid);
        assert_eq!(
            files_under(&dir),
            0,
            "{} still holds objects",
            dir.display()
        );
        assert!(
            dir.join(".fleet-store-id").is_file(),
            "{} keeps its id, so drivers there still share it",
            dir.display()
        );
    }
    // Each node counted once, with its own CPUs.
    let s = wait_until("both nodes in the new head's status", GENEROUS, || {
        status(&c).filter(|s| s.nodes.iter().filter(|n| n.alive).count() == 3)
    });
    assert_eq!(s.nodes.len(), 3, "{:?}", s.nodes);
    for name in [&a, &b] {
        let n: Vec<_> = s.nodes.iter().filter(|n| n.name == *name).collect();
        assert_eq!(n.len(), 1, "{name} once: {:?}", s.nodes);
        assert_eq!(n[0].num_cpus, 1.0);
    }
    // A new driver runs tasks on both.
    let _driver = c.join();
    for n in [&a, &b] {
        let refs: Vec<ObjectRef<String>> = (0..4)
            .map(|_| where_am_i::options().node(n.clone()).remote(20))
            .collect();
        let seen = fleet::get_all(&refs).expect("tasks on the rejoined nodes");
        assert!(seen.iter().all(|s| s == n), "{seen:?} not all on {n}");
    }
}

#[test]
fn a_driver_whose_head_is_killed_gets_a_connection_error_not_a_hang() {
    let mut c = CliCluster::start(1, &[]);
    let dir = tempfile::tempdir().expect("temp dir");
    let pid_file = dir.path().join("pid");
    let gate = dir.path().join("never");
    let driver = c.join();
    let pending = hold::remote(
        pid_file.to_string_lossy().into_owned(),
        gate.to_string_lossy().into_owned(),
    );
    let worker = wait_until("the task to start", GENEROUS, || {
        let pid = std::fs::read_to_string(&pid_file).ok()?.parse().ok()?;
        Proc::of(pid)
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = pending.clone();
    std::thread::spawn(move || {
        let _ = tx.send(fleet::get(&waiter));
    });
    let also_waiting = pending.clone();
    let waited = std::thread::spawn(move || fleet::wait(&[also_waiting], 1, None));
    let killed = std::time::Instant::now();
    c.head.kill();
    let got = rx
        .recv_timeout(GENEROUS)
        .expect("the pending get returns once the head is gone");
    eprintln!(
        "FIGURE a pending get failed {:.3} s after its head was SIGKILLed",
        killed.elapsed().as_secs_f64()
    );
    match got {
        Err(fleet::Error::Connection(why)) => {
            assert!(why.contains("head went away"), "{why}")
        }
        other => panic!("expected a connection error, got {other:?}"),
    }
    let waited = common::bounded("a pending wait", GENEROUS, move || waited.join());
    assert!(
        matches!(waited, Ok(Err(fleet::Error::Connection(_)))),
        "{waited:?}"
    );
    // Later calls fail the same way, at once.
    let later = fleet::get(&where_am_i::remote(0));
    assert!(
        matches!(later, Err(fleet::Error::Connection(_))),
        "{later:?}"
    );
    // The worker's head is gone; so is the worker.
    wait_all_gone(&[worker], true, GENEROUS);
    drop(driver);
}

#[test]
fn a_dead_node_is_replaced_by_its_return_and_leaves_status_after_the_ttl() {
    // Long enough that the dead node is surely still listed when the test
    // looks right after seeing it die; short enough to wait for.
    let mut c = CliCluster::start(0, &["--dead-node-ttl", "10"]);
    let port = std::net::TcpListener::bind("127.0.0.2:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.2")
        .port()
        .to_string();
    let name = c.add_node_with("127.0.0.2", 1, &["--port", &port]);
    let of = |s: &fleet::proto::StatusReply| -> Vec<fleet::proto::NodeStatus> {
        s.nodes.iter().filter(|n| n.name == name).cloned().collect()
    };
    c.nodes[0].1.kill();
    wait_until("the node to be dead", GENEROUS, || {
        status(&c).filter(|s| of(s).iter().any(|n| !n.alive))
    });
    // The same address comes back (a new agent, twice the CPUs): it
    // replaces the dead entry, never counted twice.
    let again = c.add_node_with("127.0.0.2", 2, &["--port", &port]);
    assert_eq!(again, name);
    let s = wait_until("the node back", GENEROUS, || {
        status(&c).filter(|s| of(s).iter().any(|n| n.alive))
    });
    let entries = of(&s);
    assert_eq!(entries.len(), 1, "{:?}", s.nodes);
    assert_eq!(entries[0].num_cpus, 2.0);
    assert_eq!(entries[0].available_cpus, 2.0);
    // Dead again: listed as dead, then gone after the TTL.
    c.nodes[1].1.kill();
    wait_until("the node dead again", GENEROUS, || {
        status(&c).filter(|s| of(s).iter().any(|n| !n.alive))
    });
    let dashboard = c.dashboard.clone().expect("the head's dashboard");
    let listed = |alive: bool| {
        let body = common::http::get_ok(&dashboard, "/api/snapshot");
        let snap: serde_json::Value = serde_json::from_str(&body).expect("snapshot JSON");
        snap["nodes"]
            .as_array()
            .expect("a node list")
            .iter()
            .any(|n| n["name"] == name.as_str() && n["alive"] == alive)
    };
    assert!(listed(false), "the dashboard lists the dead node");
    wait_until("the dead node to leave status", GENEROUS, || {
        status(&c).filter(|s| of(s).is_empty())
    });
    assert!(!listed(false) && !listed(true), "nor the dashboard");
}
