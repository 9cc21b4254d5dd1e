//! Resources beyond CPUs, on real clusters: a custom resource limits how
//! many tasks run at once (shown by the times the tasks record, never by a
//! timing assert), `memory` too; a task no node can ever satisfy waits
//! aside with `fleet status` naming the missing resource, and runs once a
//! node with it joins (the dashboard shows it in use, in JSON and in a real
//! browser); `spread()` lands tasks on every node of a CLI cluster;
//! `node_soft` prefers a node and falls back; an actor holds its resource
//! for its life; bad values are refused with a message naming the fix.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use common::browser::run_chromium;
use common::cli::{fleet_bin, Child, CliCluster};
use common::{wait_until, Gate, GENEROUS};
use fleet::{remote, ObjectRef};

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

/// Records when it ran: (start, end) in microseconds since the epoch.
fn timed(ms: u64) -> (u64, u64) {
    let start = now_micros();
    std::thread::sleep(std::time::Duration::from_millis(ms));
    (start, now_micros())
}

#[remote(resources(license = 1.0))]
fn licensed(ms: u64) -> (u64, u64) {
    timed(ms)
}

#[remote]
fn plain(ms: u64) -> (u64, u64) {
    timed(ms)
}

#[remote(memory = "2GiB")]
fn big(ms: u64) -> (u64, u64) {
    timed(ms)
}

/// The node it ran on, once `gate` (if any) is open; `started` (if any) is
/// created when it begins.
#[remote]
fn where_am_i(gate: String, started: String) -> String {
    if !started.is_empty() {
        std::fs::write(&started, b"1").expect("marker");
    }
    if !gate.is_empty() {
        common::wait_for_path(Path::new(&gate));
    }
    fleet::current_node().expect("a task knows its node")
}

/// [`where_am_i`] under another name: a task of another function is never
/// queued behind it on its worker (short functions are pipelined).
#[remote]
fn hold(gate: String, started: String) -> String {
    where_am_i(gate, started)
}

/// Publishes its pid in `dir/pid`, then waits for `gate`.
#[remote(resources(license = 1.0), max_retries = 0)]
fn licensed_until(dir: String, gate: String) -> u32 {
    std::fs::write(Path::new(&dir).join("pid"), std::process::id().to_string()).expect("pid");
    common::wait_for_path(Path::new(&gate));
    std::process::id()
}

#[remote(resources(gpu = 1.0))]
fn train(gate: String) -> String {
    common::wait_for_path(Path::new(&gate));
    fleet::current_node().expect("a task knows its node")
}

#[remote]
struct Free;

#[remote]
impl Free {
    fn new() -> Self {
        Free
    }
    fn get(&self) -> u64 {
        8
    }
}

#[remote]
struct Placed;

#[remote]
impl Placed {
    fn new() -> Self {
        Placed
    }
    fn node(&self) -> String {
        fleet::current_node().expect("an actor knows its node")
    }
}

#[remote]
struct Holder {
    n: u64,
}

#[remote(resources(license = 1.0))]
impl Holder {
    fn new() -> Self {
        Holder { n: 7 }
    }
    fn get(&self) -> u64 {
        self.n
    }
    fn pid(&self) -> u32 {
        std::process::id()
    }
}

/// Asserts that no two (start, end) intervals overlap.
fn assert_one_at_a_time(mut runs: Vec<(u64, u64)>, what: &str) {
    runs.sort_unstable();
    for w in runs.windows(2) {
        assert!(
            w[0].1 <= w[1].0,
            "{what}: two ran at once: {:?} and {:?} (all: {runs:?})",
            w[0],
            w[1]
        );
    }
}

fn local(cpus: usize, resources: &[(&str, f64)]) -> fleet::Cluster {
    fleet::init_with(fleet::Config {
        num_cpus: Some(cpus),
        resources: resources.iter().map(|(n, a)| (n.to_string(), *a)).collect(),
        ..Default::default()
    })
    .expect("starting a local cluster")
}

/// The nodes of the dashboard's `/api/snapshot`.
fn nodes_json(base: &str) -> Vec<serde_json::Value> {
    let body = common::http::get_ok(base, "/api/snapshot");
    let v: serde_json::Value = serde_json::from_str(&body).expect("snapshot JSON");
    v["nodes"].as_array().cloned().unwrap_or_default()
}

/// (used, total) of resource `name` on the node called `node` (any node if
/// empty), from the dashboard's JSON.
fn usage(base: &str, node: &str, name: &str) -> Option<(f64, f64)> {
    nodes_json(base)
        .iter()
        .filter(|n| node.is_empty() || n["name"] == node)
        .flat_map(|n| n["resources"].as_array().cloned().unwrap_or_default())
        .find(|r| r["name"] == name)
        .map(|r| {
            (
                r["used"].as_f64().unwrap_or(-1.0),
                r["total"].as_f64().unwrap_or(-1.0),
            )
        })
}

fn status(c: &CliCluster) -> String {
    let out = Command::new(fleet_bin())
        .args(["status", "--address", &c.address])
        .env("FLEET_TOKEN", &c.token)
        .output()
        .expect("running fleet status");
    assert!(
        out.status.success(),
        "fleet status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` to its end; kills it (and fails) if it has not ended within
/// [`GENEROUS`], so a command that wrongly keeps running fails the test
/// instead of hanging it.
fn run_bounded(cmd: &mut Command) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // SAFETY: only an async-signal-safe call between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd.spawn().expect("starting fleet");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(GENEROUS) {
        Ok(out) => out.expect("waiting for fleet"),
        Err(_) => {
            common::sigkill(pid);
            panic!(
                "fleet {:?} did not exit within {GENEROUS:?}",
                cmd.get_args()
            );
        }
    }
}

#[test]
fn a_license_of_one_never_lets_two_tasks_overlap() {
    let cluster = local(4, &[("license", 1.0)]);
    let base = cluster.dashboard_url().expect("dashboard").to_string();
    assert_eq!(usage(&base, "", "license"), Some((0.0, 1.0)));
    // Declared in the macro, and at the call site on a function without it.
    let mut refs: Vec<ObjectRef<(u64, u64)>> = (0..3).map(|_| licensed::remote(60)).collect();
    refs.extend((0..3).map(|_| plain::options().resource("license", 1.0).remote(60)));
    let runs = fleet::get_all_timeout(&refs, GENEROUS).expect("licensed tasks");
    assert_one_at_a_time(runs, "tasks holding license=1");
    // Released when they ended.
    assert_eq!(usage(&base, "", "license"), Some((0.0, 1.0)));
    // A task without the resource is not held back by it.
    let free = plain::remote(0);
    fleet::get_timeout(&free, GENEROUS).expect("a task that declares nothing");
}

#[test]
fn memory_is_a_resource_tasks_reserve() {
    let cluster = local(4, &[("memory", 3.0 * (1u64 << 30) as f64)]);
    let base = cluster.dashboard_url().expect("dashboard").to_string();
    assert_eq!(
        usage(&base, "", "memory"),
        Some((0.0, (3u64 << 30) as f64)),
        "Config::resources sets the node's memory"
    );
    // 2 GiB each on a node of 3 GiB: one at a time, by the macro's
    // `memory = "2GiB"` and by `.memory(..)` at the call site.
    let mut refs: Vec<ObjectRef<(u64, u64)>> = (0..3).map(|_| big::remote(60)).collect();
    refs.extend((0..2).map(|_| plain::options().memory(2 << 30).remote(60)));
    let runs = fleet::get_all_timeout(&refs, GENEROUS).expect("memory tasks");
    assert_one_at_a_time(runs, "tasks of 2 GiB on a node of 3 GiB");
    // 1 GiB tasks fit beside a 2 GiB one: the amount counts, not the name.
    let gate = Gate::new();
    let mut pair = vec![plain::options().memory(1 << 30).remote(0)];
    let held = where_am_i::options()
        .memory(2 << 30)
        .remote(gate.path(), String::new());
    pair.push(plain::options().memory(1 << 30).remote(0));
    fleet::get_all_timeout(&pair, GENEROUS).expect("1 GiB beside 2 GiB");
    wait_until("2 GiB in use", GENEROUS, || {
        (usage(&base, "", "memory") == Some(((2u64 << 30) as f64, (3u64 << 30) as f64)))
            .then_some(())
    });
    gate.open();
    fleet::get_timeout(&held, GENEROUS).expect("the held task");
}

#[test]
fn a_task_no_node_can_satisfy_waits_until_a_node_with_it_joins() {
    let mut c = CliCluster::start(1, &[]);
    let base = c.dashboard.clone().expect("the head's dashboard");
    let _driver = c.join();
    let ram = wait_until("the head's node to report its memory", GENEROUS, || {
        usage(&base, "", "memory").map(|(_, total)| total as u64)
    });
    // The default capacity of `memory` is the machine's RAM.
    let meminfo = std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("MemTotal");
    assert_eq!(ram, kib * 1024, "a node's memory is its RAM by default");

    let gate = Gate::new();
    let gpu = train::remote(gate.path());
    let huge = plain::options().memory(1 << 40).remote(0);
    let text = wait_until(
        "fleet status to name the missing resources",
        GENEROUS,
        || {
            let s = status(&c);
            (s.contains("1 tasks need resource `gpu` = 1, which no node has")
                && s.contains(&format!(
                    "1 tasks need memory = {} bytes; the most any node has is {ram} bytes",
                    1u64 << 40
                )))
            .then_some(s)
        },
    );
    assert!(text.contains("fleet start --resources gpu=N"), "{text}");
    // Tasks that can run are not held up by them.
    fleet::get_timeout(&plain::remote(0), GENEROUS).expect("a plain task");

    let node = c.add_node_with("127.0.0.2", 1, &["--resources", "gpu=2,memory=2TiB"]);
    assert!(
        status(&c).contains("gpu 2 ("),
        "fleet status lists the node's resources"
    );
    let (used, total) = wait_until("the gpu task to hold its gpu", GENEROUS, || {
        usage(&base, &node, "gpu").filter(|(used, _)| *used == 1.0)
    });
    assert_eq!((used, total), (1.0, 2.0));
    // `fleet list nodes` says so too.
    let rows = c.list_json("nodes");
    let row = rows
        .iter()
        .find(|r| r["name"] == node.as_str())
        .expect("the gpu node's row");
    assert!(
        row["resources"]
            .as_str()
            .is_some_and(|r| r.contains("gpu 1/2")),
        "{row}"
    );
    // The dashboard page shows it too, in a real browser.
    let dom = run_chromium(
        &["--virtual-time-budget=10000".into(), "--dump-dom".into()],
        &format!("{base}/?once=1"),
    );
    let table = &dom[dom.find("id=\"nodes\"").expect("the nodes table")..];
    let row_at = table
        .find(&format!("data-node=\"{node}\""))
        .expect("the node's row in the page");
    let row = &table[row_at..];
    let row = &row[..row.find("</tr>").unwrap_or(row.len())];
    assert!(
        row.contains("data-resource=\"gpu\" data-used=\"1\" data-total=\"2\""),
        "the node's row shows gpu 1 of 2 in use: {row}"
    );
    gate.open();
    assert_eq!(
        fleet::get_timeout(&gpu, GENEROUS).expect("the gpu task"),
        node
    );
    fleet::get_timeout(&huge, GENEROUS).expect("the 1 TiB task on the 2 TiB node");
    wait_until("the gpu to be free again", GENEROUS, || {
        (usage(&base, &node, "gpu") == Some((0.0, 2.0))).then_some(())
    });
    assert!(!status(&c).contains("tasks need"), "nothing waits any more");
}

#[test]
fn spread_lands_tasks_on_every_node_of_a_cli_cluster() {
    let mut c = CliCluster::start(0, &[]);
    let nodes = [
        c.add_node("127.0.0.2", 1),
        c.add_node("127.0.0.3", 1),
        c.add_node("127.0.0.4", 1),
    ];
    let _driver = c.join();
    let refs: Vec<ObjectRef<String>> = (0..9)
        .map(|_| {
            where_am_i::options()
                .spread()
                .remote(String::new(), String::new())
        })
        .collect();
    let ran = fleet::get_all_timeout(&refs, GENEROUS).expect("spread tasks");
    for n in &nodes {
        assert!(
            ran.contains(n),
            "no spread task ran on node {n}: {ran:?} (nodes {nodes:?})"
        );
    }
    // Actors too: three spread actors (no CPUs held) land on three nodes.
    let actors: Vec<PlacedHandle> = (0..3)
        .map(|_| Placed::options().spread().remote().expect("actor"))
        .collect();
    let calls: Vec<ObjectRef<String>> = actors.iter().map(|a| a.node()).collect();
    let mut at = fleet::get_all_timeout(&calls, GENEROUS).expect("actor calls");
    at.sort();
    let mut want = nodes.to_vec();
    want.sort();
    assert_eq!(at, want, "one spread actor per node");
}

#[test]
fn node_soft_prefers_a_node_and_falls_back() {
    let mut c = CliCluster::start(0, &[]);
    let a = c.add_node("127.0.0.2", 1);
    let b = c.add_node("127.0.0.3", 1);
    let _driver = c.join();
    let none = String::new;
    // A node that does not exist: it runs anyway (a hard pin would wait).
    let r = where_am_i::options()
        .node_soft("10.255.255.1:1")
        .remote(none(), none());
    let ran = fleet::get_timeout(&r, GENEROUS).expect("soft pin to a missing node");
    assert!(ran == a || ran == b, "{ran}");
    // A free node is preferred, every time.
    for _ in 0..3 {
        let r = where_am_i::options()
            .node_soft(a.clone())
            .remote(none(), none());
        assert_eq!(fleet::get_timeout(&r, GENEROUS).expect("soft pin"), a);
    }
    // A full node is not waited for: the task goes elsewhere.
    let gate = Gate::new();
    let marker = tempfile::tempdir().expect("temp dir");
    let started = marker.path().join("started");
    let busy = hold::options()
        .node(a.clone())
        .remote(gate.path(), started.to_string_lossy().into_owned());
    wait_until("the task holding node A to start", GENEROUS, || {
        started.exists().then_some(())
    });
    let r = where_am_i::options()
        .node_soft(a.clone())
        .remote(none(), none());
    assert_eq!(
        fleet::get_timeout(&r, GENEROUS).expect("soft pin to a full node"),
        b
    );
    gate.open();
    assert_eq!(fleet::get_timeout(&busy, GENEROUS).expect("hard pin"), a);
}

#[test]
fn an_actor_holds_its_resource_for_its_life() {
    let cluster = local(3, &[("license", 1.0)]);
    let base = cluster.dashboard_url().expect("dashboard").to_string();
    let holder = Holder::remote().expect("actor");
    assert_eq!(
        fleet::get_timeout(&holder.get(), GENEROUS).expect("call"),
        7
    );
    assert_eq!(usage(&base, "", "license"), Some((1.0, 1.0)));
    // Between calls too: the reservation is the actor's, not its calls'.
    let waiting = licensed::remote(0);
    let other = plain::remote(0);
    fleet::get_timeout(&other, GENEROUS).expect("a task without the license runs");
    assert_eq!(
        fleet::get_timeout(&holder.get(), GENEROUS).expect("call"),
        7
    );
    let (ready, _) =
        fleet::wait(std::slice::from_ref(&waiting), 1, std::time::Duration::ZERO).expect("wait");
    assert!(
        ready.is_empty(),
        "a licensed task ran while the actor held the license"
    );
    assert_eq!(usage(&base, "", "license"), Some((1.0, 1.0)));
    let killed_at = now_micros();
    fleet::kill(&holder).expect("kill");
    let (start, _) = fleet::get_timeout(&waiting, GENEROUS).expect("runs once the actor is gone");
    assert!(
        start >= killed_at,
        "the licensed task started at {start}, before the actor died at {killed_at}"
    );
    wait_until("the license to be free", GENEROUS, || {
        (usage(&base, "", "license") == Some((0.0, 1.0))).then_some(())
    });
    // Call-site options on an actor: a second one with a license it cannot
    // get while another holds it waits, and is placed once that one ends.
    let first = Free::options()
        .resource("license", 1.0)
        .remote()
        .expect("actor");
    assert_eq!(fleet::get_timeout(&first.get(), GENEROUS).expect("call"), 8);
    let second = Holder::remote().expect("actor");
    let call = second.get();
    let (ready, _) =
        fleet::wait(std::slice::from_ref(&call), 1, std::time::Duration::ZERO).expect("wait");
    assert!(ready.is_empty(), "two actors held license=1 at once");
    fleet::kill(&first).expect("kill");
    assert_eq!(
        fleet::get_timeout(&call, GENEROUS).expect("second actor"),
        7
    );
}

#[test]
fn a_dead_worker_gives_its_resources_back() {
    let cluster = local(2, &[("license", 1.0)]);
    let base = cluster.dashboard_url().expect("dashboard").to_string();
    // A task's worker is killed: its license is free again.
    let dir = tempfile::tempdir().expect("temp dir");
    let gate = Gate::new();
    let r = licensed_until::remote(dir.path().to_string_lossy().into_owned(), gate.path());
    let pid_file = dir.path().join("pid");
    let pid: u32 = wait_until("the licensed task to start", GENEROUS, || {
        std::fs::read_to_string(&pid_file).ok()?.parse().ok()
    });
    assert_eq!(usage(&base, "", "license"), Some((1.0, 1.0)));
    common::sigkill(pid);
    let e = fleet::get_timeout(&r, GENEROUS).expect_err("its worker was killed");
    assert!(matches!(e, fleet::Error::WorkerDied { .. }), "{e}");
    wait_until("the task's license to be free", GENEROUS, || {
        (usage(&base, "", "license") == Some((0.0, 1.0))).then_some(())
    });
    // An actor's worker is killed (no restarts): its license is free again.
    let holder = Holder::remote().expect("actor");
    let pid = fleet::get_timeout(&holder.pid(), GENEROUS).expect("pid");
    assert_eq!(usage(&base, "", "license"), Some((1.0, 1.0)));
    common::sigkill(pid);
    wait_until("the actor's license to be free", GENEROUS, || {
        (usage(&base, "", "license") == Some((0.0, 1.0))).then_some(())
    });
    assert_eq!(
        fleet::get_timeout(&licensed::remote(0), GENEROUS)
            .map(|_| ())
            .ok(),
        Some(()),
        "a licensed task runs again"
    );
}

#[test]
fn the_autoscaler_does_not_ask_nodes_for_a_custom_resource() {
    let dir = tempfile::tempdir().expect("temp dir");
    let token = common::cli::fresh_token();
    // Scale-up only records that it was asked; no node joins.
    let ups = dir.path().join("ups");
    let scale_up = format!("echo {{job}} >> {}", ups.display());
    let head = Child::spawn(
        Command::new(fleet_bin())
            .args(["start", "--head", "--port", "0", "--no-dashboard"])
            .args(["--block", "--num-cpus", "0", "--token-file"])
            .arg(dir.path().join("token"))
            .args(["--autoscale", "command", "--max-nodes", "3"])
            .args(["--upscale-after", "1", "--node-cpus", "1"])
            .args(["--scale-up", &scale_up, "--scale-down", "true"])
            .env("FLEET_TOKEN", &token)
            .env("FLEET_AUTOSCALE_INTERVAL_MS", "100"),
    );
    let address = head.serving_address();
    let _driver = fleet::init_with(fleet::Config {
        address: Some(address.clone()),
        token: Some(token.clone()),
        ..Default::default()
    })
    .expect("join");
    // Both wait for a CPU; only the plain one is demand for a new node.
    let gpu = train::remote(String::new());
    let cpu = plain::remote(0);
    let events = wait_until("the autoscaler to ask for a node", GENEROUS, || {
        let a = fleet::daemon::status(&address, &token)
            .expect("status")
            .autoscale
            .expect("the head has an autoscaler");
        (a.requested > 0).then_some(a.events)
    });
    let asked = events
        .iter()
        .find(|e| e.contains("CPUs of ready tasks waited"))
        .unwrap_or_else(|| panic!("no scale-up event in {events:?}"));
    assert!(
        asked.contains(" 1 CPUs of ready tasks") && asked.ends_with("asking for 1"),
        "the gpu task was counted as demand: {asked:?}"
    );
    drop((gpu, cpu));
}

#[test]
fn bad_resource_values_are_refused_with_the_fix() {
    for bad in ["gpu=abc", "=1", "gpu=-1", "gpu", "memory=2XB"] {
        let out = run_bounded(
            Command::new(fleet_bin())
                .args([
                    "start",
                    "--head",
                    "--block",
                    "--port",
                    "0",
                    "--no-dashboard",
                ])
                .args(["--resources", bad]),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--resources {bad} was accepted");
        assert!(
            err.contains("--resources") && err.contains("NAME=AMOUNT"),
            "--resources {bad}: {err}"
        );
        assert!(!err.contains("panicked"), "--resources {bad}: {err}");
    }
    let e = fleet::init_with(fleet::Config {
        num_cpus: Some(1),
        resources: vec![("gpu".into(), -2.0)],
        ..Default::default()
    })
    .err()
    .expect("a negative amount is refused");
    assert!(e.to_string().contains("Config::resources"), "{e}");
    let _cluster = local(1, &[]);
    let r = plain::options().resource("gpu", f64::NAN).remote(0);
    let e = fleet::get_timeout(&r, GENEROUS).expect_err("NaN is refused");
    assert!(e.to_string().contains("resource(..)"), "{e}");
}
