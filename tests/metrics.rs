//! `/metrics` and `/healthz` of a cluster of real processes (`fleet start`
//! head and node agent, this test as the driver): a scrape taken while a
//! job runs passes Debian's `promtool check metrics`, and its numbers agree
//! with the work done; the Grafana dashboard in `deploy/grafana/fleet.json`
//! asks only for metrics a live scrape has.
//!
//! Needs `promtool` (Debian's `prometheus`); CI installs it, so without it
//! the test fails rather than skips.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};

use common::cli::{fleet_bin, free_port, fresh_token, spawn_node, Child, CliCluster};
use common::http::{get, get_ok, get_with};
use common::{wait_for_path, wait_until, Gate, GENEROUS};
use fleet::remote;

#[remote]
fn square(x: u64) -> u64 {
    std::thread::sleep(std::time::Duration::from_millis(2));
    x * x
}

#[remote]
fn reject(x: u64) -> Result<u64, String> {
    Err(format!("{x} is not accepted"))
}

#[remote]
fn hold(gate: String) -> u64 {
    wait_for_path(std::path::Path::new(&gate));
    1
}

#[remote]
struct Counter {
    n: u64,
}

#[remote]
impl Counter {
    fn new() -> Self {
        Counter { n: 0 }
    }

    fn add(&mut self, k: u64) -> u64 {
        self.n += k;
        self.n
    }
}

/// Samples of a scrape: `name{labels}` (as written) → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Metric names a scrape has samples of.
fn names(text: &str) -> BTreeSet<String> {
    samples(text)
        .keys()
        .map(|k| k.split('{').next().unwrap_or(k).to_string())
        .collect()
}

fn value(s: &BTreeMap<String, f64>, key: &str) -> f64 {
    *s.get(key)
        .unwrap_or_else(|| panic!("no sample {key} in {:#?}", s.keys().collect::<Vec<_>>()))
}

/// Runs `promtool check metrics` on `text`; panics with its complaints.
fn promtool_check(text: &str) {
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (Debian package prometheus; .ci/run installs it)");
    p.stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = p.wait_with_output().expect("promtool output");
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- scrape ---\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The PromQL expressions of a Grafana dashboard (every `expr`, nested).
fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// The `fleet_…` metric names an expression reads.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("fleet_") {
        let start = i + at;
        let boundary = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_' || c == b'"')
        };
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .map_or(expr.len(), |e| start + e);
        if boundary {
            names.push(expr[start..end].to_string());
        }
        i = end;
    }
    names
}

#[test]
fn a_live_scrape_passes_promtool_and_counts_the_work_done() {
    let mut c = CliCluster::start(1, &[]);
    let node = c.add_node("127.0.0.2", 2);
    let dashboard = c.dashboard.clone().expect("a dashboard");
    let cluster = c.join();

    const N: u64 = 300;
    const FAILED: u64 = 7;
    let gate = Gate::new();
    let held = hold::remote(gate.path());
    let squares: Vec<_> = (0..N).map(square::remote).collect();
    let rejected: Vec<_> = (0..FAILED).map(reject::remote).collect();
    let counter = Counter::remote().expect("create an actor");
    let calls: Vec<_> = (1..=10).map(|k| counter.add(k)).collect();
    let big = fleet::put(vec![7u8; 1 << 20]).expect("put a stored value");

    // While the job runs (the gated task holds a CPU until the gate opens).
    let live = wait_until("a scrape with a running task", GENEROUS, || {
        let text = get_ok(&dashboard, "/metrics");
        let s = samples(&text);
        (s.get("fleet_tasks{state=\"running\"}")
            .copied()
            .unwrap_or(0.0)
            >= 1.0)
            .then_some(text)
    });
    promtool_check(&live);
    let s = samples(&live);
    assert_eq!(value(&s, "fleet_jobs"), 1.0, "one driver is connected");
    assert_eq!(
        value(&s, &format!("fleet_node_cpus{{node=\"{node}\"}}")),
        2.0
    );
    assert_eq!(
        value(&s, &format!("fleet_node_alive{{node=\"{node}\"}}")),
        1.0
    );

    let got = fleet::get_all(&squares).expect("squares");
    assert_eq!(got, (0..N).map(|x| x * x).collect::<Vec<_>>());
    for r in &rejected {
        assert!(fleet::get(r).is_err(), "reject fails");
    }
    assert_eq!(fleet::get(calls.last().expect("calls")).expect("calls"), 55);
    gate.open();
    assert_eq!(fleet::get(&held).expect("held"), 1);

    // Direct tasks reach the head's counts in their workers' summaries,
    // batched per worker: wait until every worker's last batch is in.
    let done = wait_until("the last results counted", GENEROUS, || {
        let text = get_ok(&dashboard, "/metrics");
        let s = samples(&text);
        let is = |k: &str, v: f64| s.get(k) == Some(&v);
        (is("fleet_tasks_finished_total{function=\"hold\"}", 1.0)
            && is("fleet_tasks_finished_total{function=\"square\"}", N as f64)
            && is(
                "fleet_tasks_failed_total{function=\"reject\"}",
                FAILED as f64,
            ))
        .then_some(text)
    });
    promtool_check(&done);
    let s = samples(&done);
    let n = N as f64;
    assert_eq!(
        value(&s, "fleet_tasks_finished_total{function=\"square\"}"),
        n
    );
    assert_eq!(
        value(&s, "fleet_tasks_failed_total{function=\"square\"}"),
        0.0
    );
    assert_eq!(
        value(&s, "fleet_tasks_failed_total{function=\"reject\"}"),
        FAILED as f64
    );
    assert_eq!(
        value(&s, "fleet_tasks_finished_total{function=\"Counter::add\"}"),
        10.0
    );
    assert_eq!(
        value(&s, "fleet_task_run_seconds_count{function=\"square\"}"),
        n
    );
    // Every square slept 2 ms.
    assert!(value(&s, "fleet_task_run_seconds_sum{function=\"square\"}") >= n * 0.002);
    // Observed for the tasks the head places; with leases (the default;
    // FLEET_LEASES=0 turns them off, as CI does for this file once) plain
    // tasks from a driver go to its leased workers instead.
    let placed_by_head = if !std::env::var("FLEET_LEASES").is_ok_and(|v| v.trim() == "0") {
        0.0
    } else {
        n + FAILED as f64
    };
    assert!(value(&s, "fleet_task_scheduling_delay_seconds_count") >= placed_by_head);
    for state in ["waiting", "ready", "running"] {
        assert_eq!(value(&s, &format!("fleet_tasks{{state=\"{state}\"}}")), 0.0);
    }
    assert_eq!(value(&s, "fleet_actors{state=\"alive\"}"), 1.0);
    let cpus: f64 = s
        .iter()
        .filter(|(k, _)| k.starts_with("fleet_node_cpus{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(cpus, 3.0, "the head's 1 CPU and the node's 2");
    // The 1 MiB value is in the head node's store (the driver's put).
    let stored: f64 = s
        .iter()
        .filter(|(k, _)| k.starts_with("fleet_node_store_bytes{"))
        .map(|(_, v)| v)
        .sum();
    assert!(stored >= (1 << 20) as f64, "store bytes {stored}");
    let objects: f64 = s
        .iter()
        .filter(|(k, _)| k.starts_with("fleet_node_objects{"))
        .map(|(_, v)| v)
        .sum();
    assert!(objects >= 1.0);
    drop(big);

    // Prometheus asks for OpenMetrics, and gets it: counters' families
    // without `_total`, units, and the closing `# EOF`.
    let (status, open) = get_with(
        &dashboard,
        "/metrics",
        &[(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )],
    )
    .expect("an OpenMetrics scrape");
    assert_eq!(status, 200);
    assert!(
        open.contains("# TYPE fleet_tasks_finished counter\n"),
        "{open}"
    );
    assert!(
        open.contains("# UNIT fleet_task_run_seconds seconds\n"),
        "{open}"
    );
    assert!(open.trim_end().ends_with("# EOF"), "{open}");
    assert_eq!(
        samples(&open).get("fleet_tasks_finished_total{function=\"square\"}"),
        Some(&n)
    );

    // The Grafana dashboard reads only metrics the head exposes.
    let exposed = names(&done);
    let board: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/grafana/fleet.json"
        ))
        .expect("deploy/grafana/fleet.json"),
    )
    .expect("deploy/grafana/fleet.json is JSON");
    let mut all = Vec::new();
    exprs(&board, &mut all);
    assert!(all.len() >= 8, "the dashboard has its panels: {all:?}");
    for e in &all {
        let used = metric_names(e);
        assert!(!used.is_empty(), "{e:?} reads no fleet metric");
        for m in used {
            assert!(
                exposed.contains(&m),
                "the dashboard's {e:?} reads {m}, which /metrics does not have: {exposed:#?}"
            );
        }
    }
    drop(cluster);
}

/// A child process killed and reaped when dropped, even on a panic.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn healthz_answers_on_the_head_and_on_a_node_agent() {
    let c = CliCluster::start(1, &[]);
    let dashboard = c.dashboard.clone().expect("a dashboard");
    let (status, body) = get(&dashboard, "/healthz").expect("head /healthz");
    assert_eq!((status, body.trim()), (200, "ok"));

    let node = Child::spawn(
        Command::new(fleet_bin())
            .args(["start", "--address", &c.address])
            .args(["--node-ip", "127.0.0.3", "--num-cpus", "1"])
            .args(["--health-port", "0", "--block"])
            .env("FLEET_TOKEN", &c.token),
    );
    let health = node
        .expect_line("fleet node health at ")
        .rsplit(' ')
        .next()
        .expect("URL")
        .trim_end_matches("/healthz")
        .to_string();
    node.expect_line("joined the cluster");
    let (status, body) = get(&health, "/healthz").expect("node /healthz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&c.address), "{body}");

    // A job of `fleet job submit` is counted by state.
    let submit = Command::new(fleet_bin())
        .args(["job", "submit", "--address", &c.address, "--", "/bin/true"])
        .env("FLEET_TOKEN", &c.token)
        .output()
        .expect("run fleet job submit");
    assert!(
        submit.status.success(),
        "{}",
        String::from_utf8_lossy(&submit.stderr)
    );
    wait_until("the submitted job counted as succeeded", GENEROUS, || {
        let text = get_ok(&dashboard, "/metrics");
        text.contains("fleet_submitted_jobs{state=\"succeeded\"} 1")
            .then_some(())
    });
    promtool_check(&get_ok(&dashboard, "/metrics"));

    // A node may only serve /healthz: the flag is refused on a head.
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut refused = Reaped(
        Command::new(fleet_bin())
            .args([
                "start",
                "--head",
                "--health-port",
                "0",
                "--block",
                "--port",
                "0",
            ])
            .args(["--dashboard-port", "0", "--token-file"])
            .arg(tmp.path().join("token"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run fleet"),
    );
    let status = wait_until("fleet start --head --health-port to exit", GENEROUS, || {
        refused.0.try_wait().expect("wait")
    });
    let mut err = String::new();
    std::io::Read::read_to_string(&mut refused.0.stderr.take().expect("stderr"), &mut err)
        .expect("stderr");
    assert!(!status.success(), "{err}");
    assert!(err.contains("--dashboard-port"), "{err}");
}

#[test]
fn a_node_agents_healthz_is_503_until_it_joins_and_after_it_loses_its_head() {
    let port = free_port();
    let token = fresh_token();
    // The agent starts first, as pods and batch jobs may.
    let node = spawn_node(
        &format!("127.0.0.1:{port}"),
        &token,
        "127.0.0.5",
        1,
        &["--health-port", "0", "--wait-for-head", "120"],
    );
    let health = node
        .expect_line("fleet node health at ")
        .rsplit(' ')
        .next()
        .expect("URL")
        .trim_end_matches("/healthz")
        .to_string();
    let status = |want: u16| {
        wait_until(
            &format!("the node's /healthz to say {want}"),
            GENEROUS,
            || {
                get(&health, "/healthz")
                    .ok()
                    .filter(|(s, _)| *s == want)
                    .map(|(_, body)| body)
            },
        )
    };
    let body = status(503);
    assert!(body.contains("waiting for the head"), "{body}");

    let mut c = CliCluster::start_on(port, &token, 1, &[]);
    node.expect_line("joined the cluster");
    let body = status(200);
    assert!(body.contains(&c.address), "{body}");

    // The head dies: the agent waits for another one, and says so.
    c.head.kill();
    let body = status(503);
    assert!(body.contains("waiting for the head"), "{body}");
    c.restart_head(1, &[]);
    status(200);
}
