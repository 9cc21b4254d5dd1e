//! Separate machines on one box (`tests/common/hosts.rs`): network
//! namespaces on a bridge, each process with its own `/dev/shm` and `/tmp`.
//! A head on host 0 (no CPUs unless said), node agents on the next hosts,
//! and the driver, this test executable run again on a host of its own
//! with `FLEET_ADDRESS` set, so its values must cross the network.
//!
//! The driver's side of each test is `driver_process`, run in that host by
//! the test (ignored when the suite runs). It panics on a wrong result and
//! prints `RESULT` lines with what it measured.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::cli::{fleet_bin, Child};
use common::hosts::{wait_exit, Hosts};
use common::{digest, pattern, GENEROUS};

use fleet::{remote, Blob, ObjectRef};

/// Which driver scenario `driver_process` runs.
const SCENARIO: &str = "FLEET_HOSTS_SCENARIO";
/// Node names the driver pins tasks to, comma-separated.
const NODES: &str = "FLEET_HOSTS_NODES";

#[remote]
fn digest_of(b: Blob) -> (u64, usize, String) {
    (
        digest(&b),
        b.len(),
        fleet::current_node().unwrap_or_default(),
    )
}

#[remote]
fn make(len: usize, seed: u64) -> Blob {
    Blob::from(pattern(len, seed))
}

#[remote]
fn slow_double(x: u64, pause_ms: u64) -> (u64, String) {
    std::thread::sleep(Duration::from_millis(pause_ms));
    (x * 2, fleet::current_node().unwrap_or_default())
}

/// A cluster whose processes are on separate hosts. Fields drop in order:
/// processes first, then the namespaces.
struct HostCluster {
    drivers: Vec<Child>,
    nodes: Vec<(String, Child)>,
    head: Child,
    address: String,
    token: String,
    hosts: Hosts,
}

impl HostCluster {
    /// `hosts` hosts; the head on host 0 offering `head_cpus`, node agents
    /// on hosts 1..=`node_cpus.len()`. `env` goes to every process.
    fn start(
        hosts: usize,
        head_cpus: u32,
        node_cpus: &[u32],
        head_extra: &[&str],
        env: &[(&str, &str)],
    ) -> Option<HostCluster> {
        let hosts = Hosts::new(hosts)?;
        let token = format!("hosts-token-{}", std::process::id());
        let ip0 = hosts.ip(0);
        let head = Child::spawn(
            hosts
                .command(0, &fleet_bin())
                .args(["start", "--head", "--bind", &ip0, "--node-ip", &ip0])
                .args(["--port", "0", "--no-dashboard", "--block"])
                .args(["--num-cpus", &head_cpus.to_string()])
                .args(["--token-file", "/tmp/fleet-token"])
                .args(head_extra)
                .env("FLEET_TOKEN", &token)
                .envs(env.iter().copied()),
        );
        let address = head
            .expect_line("serving at")
            .rsplit(' ')
            .next()
            .expect("the head's address")
            .to_string();
        let mut cluster = HostCluster {
            drivers: Vec::new(),
            nodes: Vec::new(),
            head,
            address,
            token,
            hosts,
        };
        for (i, cpus) in node_cpus.iter().enumerate() {
            let host = i + 1;
            let ip = cluster.hosts.ip(host);
            let node = Child::spawn(
                cluster
                    .hosts
                    .command(host, &fleet_bin())
                    .args(["start", "--address", &cluster.address, "--node-ip", &ip])
                    .args(["--num-cpus", &cpus.to_string(), "--block"])
                    .env("FLEET_TOKEN", &cluster.token)
                    .envs(env.iter().copied()),
            );
            let name = node.joined_node_name();
            cluster.nodes.push((name, node));
        }
        Some(cluster)
    }

    fn node_names(&self) -> String {
        self.nodes
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts this test executable on `host` as a driver running
    /// `scenario`; returns its index in `drivers`.
    fn driver(&mut self, host: usize, scenario: &str, env: &[(&str, &str)]) -> usize {
        let exe = std::env::current_exe().expect("the test executable");
        let mut cmd = self.hosts.command(host, &exe);
        self.spawn_driver(&mut cmd, scenario, env)
    }

    /// Like [`driver`](Self::driver), but inside the mount and network
    /// namespaces of a running process (the same "machine" as it).
    fn driver_beside(&mut self, pid: u32, scenario: &str, env: &[(&str, &str)]) -> usize {
        let exe = std::env::current_exe().expect("the test executable");
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &pid.to_string(), "-m", "-n", "--"])
            .arg(exe);
        self.spawn_driver(&mut cmd, scenario, env)
    }

    fn spawn_driver(&mut self, cmd: &mut Command, scenario: &str, env: &[(&str, &str)]) -> usize {
        cmd.args(["driver_process", "--exact", "--ignored", "--nocapture"])
            .env("FLEET_ADDRESS", &self.address)
            .env("FLEET_TOKEN", &self.token)
            .env(SCENARIO, scenario)
            .env(NODES, self.node_names())
            .envs(env.iter().copied());
        self.drivers.push(Child::spawn(cmd));
        self.drivers.len() - 1
    }

    /// Waits for driver `i` to finish and checks it succeeded.
    fn driver_succeeds(&mut self, i: usize) {
        let status = wait_exit(&mut self.drivers[i], GENEROUS * 3);
        assert!(
            status.success(),
            "the driver failed ({status}); see its output above"
        );
    }

    /// `fleet status`, asked from host 0.
    fn status(&self) -> String {
        let out = self
            .hosts
            .net_command(0, &fleet_bin())
            .args(["status", "--address", &self.address])
            .env("FLEET_TOKEN", &self.token)
            .output()
            .expect("run fleet status");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The `fleet status` line of node `name`, if listed.
    fn status_lines(&self, name: &str) -> Vec<String> {
        self.status()
            .lines()
            .filter(|l| l.trim_start().starts_with("node ") && l.contains(name))
            .map(str::to_string)
            .collect()
    }
}

/// The driver's side of the tests, run by them on a host of its own.
#[test]
#[ignore = "run by the other tests of this file as a driver on a separate host"]
fn driver_process() {
    let scenario = std::env::var(SCENARIO).unwrap_or_default();
    let nodes: Vec<String> = std::env::var(NODES)
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let _cluster = fleet::init().expect("joining the cluster named by FLEET_ADDRESS");
    match scenario.as_str() {
        "large_values" => large_values(&nodes),
        "beside_a_node" => beside_a_node(&nodes),
        "too_large" => too_large(),
        "doubles" => doubles(),
        "put_figures" => put_figures(),
        "pinned" => pinned(&nodes),
        other => panic!("unknown scenario {other:?}"),
    }
    println!("DONE");
}

/// Store files in this host's `/dev/shm`.
fn local_store_files() -> Vec<(String, u64)> {
    let mut found = Vec::new();
    for dir in std::fs::read_dir("/dev/shm")
        .into_iter()
        .flatten()
        .flatten()
    {
        if !dir.file_name().to_string_lossy().starts_with("fleet-") {
            continue;
        }
        for f in std::fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            found.push((f.path().to_string_lossy().into_owned(), len));
        }
    }
    found
}

fn large_values(nodes: &[String]) {
    assert_eq!(nodes.len(), 2, "two nodes: {nodes:?}");
    let len = 256 << 20;
    let value = Blob::from(pattern(len, 11));
    let want = digest(&value);
    let started = Instant::now();
    let big: ObjectRef<Blob> = fleet::put(value).expect("a 256 MiB put from an off-node driver");
    let secs = started.elapsed().as_secs_f64();
    println!(
        "RESULT put 256 MiB from a driver on another host: {secs:.3} s, {:.0} MiB/s",
        256.0 / secs
    );
    // Read on both other hosts; each checks the digest.
    let reads: Vec<_> = nodes
        .iter()
        .map(|n| digest_of::options().node(n.clone()).remote(&big))
        .collect();
    for (r, n) in reads.iter().zip(nodes) {
        let (sum, got_len, ran_on) = fleet::get(r).expect("a digest on a node");
        assert_eq!(&ran_on, n, "the task ran where it was pinned");
        assert_eq!((sum, got_len), (want, len), "node {n} read the put intact");
    }
    // A large value passed by value as an argument goes the same way.
    let arg = Blob::from(pattern(8 << 20, 12));
    let (sum, _, _) = fleet::get(
        &digest_of::options()
            .node(nodes[1].clone())
            .remote(arg.clone()),
    )
    .expect("an 8 MiB argument");
    assert_eq!(sum, digest(&arg), "an 8 MiB argument arrived intact");
    // 16 MiB results back from both nodes, byte-equal.
    let made: Vec<_> = (0..4u64)
        .map(|i| {
            make::options()
                .node(nodes[i as usize % 2].clone())
                .remote(16 << 20, 100 + i)
        })
        .collect();
    for (i, r) in made.iter().enumerate() {
        let got = fleet::get(r).expect("a 16 MiB result");
        assert!(
            got.as_ref() == pattern(16 << 20, 100 + i as u64).as_slice(),
            "16 MiB result {i} is byte-equal"
        );
    }
    // The large value read back here, too.
    let back = fleet::get(&big).expect("the 256 MiB value read back");
    assert_eq!(digest(&back), want);
    let files = local_store_files();
    assert!(
        files.is_empty(),
        "nothing was written to this host's /dev/shm: {files:?}"
    );
}

fn beside_a_node(nodes: &[String]) {
    // This driver shares node 0's machine: its puts land in that store.
    let before: u64 = local_store_files().iter().map(|f| f.1).sum();
    let len = 64 << 20;
    let value = Blob::from(pattern(len, 21));
    let want = digest(&value);
    let big: ObjectRef<Blob> = fleet::put(value).expect("a put beside a node");
    let after = local_store_files();
    let total: u64 = after.iter().map(|f| f.1).sum();
    assert!(
        total >= before + len as u64,
        "the 64 MiB value is a file in this machine's store: {after:?}"
    );
    let (sum, _, ran_on) =
        fleet::get(&digest_of::options().node(nodes[0].clone()).remote(&big)).expect("a digest");
    assert_eq!((sum, &ran_on), (want, &nodes[0]));
    let back = fleet::get(&big).expect("read back");
    assert_eq!(digest(&back), want);
    println!("RESULT store files beside the node: {}", after.len());
}

fn too_large() {
    let value = Blob::from(pattern(24 << 20, 31));
    let err = fleet::put(value).expect_err("a put larger than the head node's store");
    let text = err.to_string();
    println!("RESULT error: {text}");
    for part in [
        "larger than the whole object store",
        "--object-store-bytes",
        "node agent",
    ] {
        assert!(text.contains(part), "the error says {part:?}: {text}");
    }
    // Nothing was left behind: a value that fits still goes in.
    let fits = Blob::from(pattern(4 << 20, 32));
    let want = digest(&fits);
    let r = fleet::put(fits).expect("a put that fits");
    assert_eq!(digest(&fleet::get(&r).expect("read back")), want);
}

/// Times three 256 MiB puts (each freed before the next).
fn put_figures() {
    let len = 256 << 20;
    let value = Blob::from(pattern(len, 41));
    for round in 0..3 {
        let v = value.clone();
        let started = Instant::now();
        let r: ObjectRef<Blob> = fleet::put(v).expect("a 256 MiB put");
        let secs = started.elapsed().as_secs_f64();
        println!(
            "RESULT put round {round}: {secs:.3} s, {:.0} MiB/s",
            256.0 / secs
        );
        drop(r);
    }
}

/// Tasks pinned to the first node run there and come back right.
fn pinned(nodes: &[String]) {
    let refs: Vec<ObjectRef<(u64, String)>> = (0..6u64)
        .map(|x| slow_double::options().node(nodes[0].clone()).remote(x, 10))
        .collect();
    for (x, r) in refs.iter().enumerate() {
        let (doubled, node) = fleet::get(r).expect("a task on the node that came back");
        assert_eq!((doubled, &node), (2 * x as u64, &nodes[0]));
    }
    println!("RESULT pinned tasks ran on {}", nodes[0]);
}

fn doubles() {
    let refs: Vec<ObjectRef<(u64, String)>> =
        (0..40u64).map(|x| slow_double::remote(x, 500)).collect();
    println!("SUBMITTED");
    let results = fleet::get_all(&refs).expect("every result, despite the cut link");
    let mut by_node = std::collections::BTreeMap::<String, usize>::new();
    for (x, (doubled, node)) in results.into_iter().enumerate() {
        assert_eq!(doubled, 2 * x as u64, "task {x}");
        *by_node.entry(node).or_default() += 1;
    }
    println!("RESULT tasks by node: {by_node:?}");
}

#[test]
fn a_driver_on_a_host_without_a_node_puts_and_gets_large_values() {
    let Some(mut c) = HostCluster::start(4, 0, &[1, 1], &[], &[]) else {
        return;
    };
    let d = c.driver(3, "large_values", &[]);
    println!("{}", c.drivers[d].expect_line("RESULT put 256 MiB"));
    c.driver_succeeds(d);
}

#[test]
fn a_driver_beside_a_node_uses_that_nodes_store() {
    let Some(mut c) = HostCluster::start(2, 0, &[1], &[], &[]) else {
        return;
    };
    let pid = c.nodes[0].1.child.id();
    let d = c.driver_beside(pid, "beside_a_node", &[]);
    c.driver_succeeds(d);
}

#[test]
fn a_value_too_large_for_the_store_is_refused_with_what_to_do() {
    let store = (16u64 << 20).to_string();
    let Some(mut c) = HostCluster::start(3, 1, &[], &["--object-store-bytes", &store], &[]) else {
        return;
    };
    let d = c.driver(2, "too_large", &[]);
    println!("{}", c.drivers[d].expect_line("RESULT error"));
    c.driver_succeeds(d);
}

/// Seconds the head may take to notice a silent node, in the cut-link test.
const HEARTBEAT: &str = "2";

#[test]
fn a_cut_link_loses_the_node_and_its_tasks_rerun_elsewhere() {
    let env = [("FLEET_HEARTBEAT_TIMEOUT_SECS", HEARTBEAT)];
    let Some(mut c) = HostCluster::start(4, 1, &[1, 1], &[], &env) else {
        return;
    };
    let victim = c.nodes[1].0.clone();
    let d = c.driver(3, "doubles", &[]);
    c.drivers[d].expect_line("SUBMITTED");
    // Cut the link while the node runs a task: its CPU is taken.
    common::wait_until("the node to be busy", GENEROUS, || {
        c.status_lines(&victim)
            .first()
            .filter(|l| l.contains("(    0 free)"))
            .map(|_| ())
    });
    let cut = Instant::now();
    c.hosts.cut(2);
    common::wait_until("the head to declare the node lost", GENEROUS, || {
        c.status_lines(&victim)
            .first()
            .filter(|l| l.contains("DEAD"))
            .map(|_| ())
    });
    let detected = cut.elapsed();
    println!(
        "FIGURE link cut to node declared lost: {:.2} s (FLEET_HEARTBEAT_TIMEOUT_SECS={HEARTBEAT})",
        detected.as_secs_f64()
    );
    // The keepalive fires after the timeout; allow for a loaded machine.
    let bound = Duration::from_secs(HEARTBEAT.parse::<u64>().expect("secs") * 3 + 10);
    assert!(
        detected < bound,
        "lost after {detected:?}, more than {bound:?}"
    );
    c.driver_succeeds(d);
    let line = c.drivers[d].expect_line("RESULT tasks by node");
    println!("{line}");
}

/// The figures for the notes: a 256 MiB put from a driver on another host
/// than the head's node, against one beside it. Run with
/// `cargo nextest run --release --test hosts --run-ignored only --no-capture figures`.
#[test]
#[ignore = "a measurement, run by hand in release"]
fn figures_put_256_mib_off_host_and_on_host() {
    let Some(mut c) = HostCluster::start(2, 1, &[], &[], &[]) else {
        return;
    };
    let off = c.driver(1, "put_figures", &[]);
    for _ in 0..3 {
        println!(
            "off the head's host: {}",
            c.drivers[off].expect_line("RESULT put round")
        );
    }
    c.driver_succeeds(off);
    let pid = c.head.child.id();
    let on = c.driver_beside(pid, "put_figures", &[]);
    for _ in 0..3 {
        println!(
            "beside the head's node: {}",
            c.drivers[on].expect_line("RESULT put round")
        );
    }
    c.driver_succeeds(on);
}

#[test]
fn a_node_whose_link_comes_back_rejoins_and_is_counted_once() {
    let env = [("FLEET_HEARTBEAT_TIMEOUT_SECS", HEARTBEAT)];
    let Some(mut c) = HostCluster::start(3, 1, &[1], &[], &env) else {
        return;
    };
    let name = c.nodes[0].0.clone();
    c.hosts.cut(1);
    common::wait_until("the head to declare the node lost", GENEROUS, || {
        c.status_lines(&name)
            .first()
            .filter(|l| l.contains("DEAD"))
            .map(|_| ())
    });
    c.hosts.restore(1);
    // The agent finds its session gone once packets flow again, and joins
    // anew under the same name.
    c.nodes[0].1.joined_node_name();
    let lines = common::wait_until("the node to be alive again", GENEROUS, || {
        let lines = c.status_lines(&name);
        lines.iter().all(|l| !l.contains("DEAD")).then_some(lines)
    });
    assert_eq!(lines.len(), 1, "the node is listed once: {lines:?}");
    let nodes_listed = c
        .status()
        .lines()
        .filter(|l| l.trim_start().starts_with("node "))
        .count();
    assert_eq!(
        nodes_listed, 2,
        "the head's node and the one that came back"
    );
    let d = c.driver(2, "pinned", &[]);
    c.driver_succeeds(d);
}
