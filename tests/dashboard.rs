//! The dashboard in a real browser: a local cluster runs a job that keeps
//! going while headless Chromium loads the page; the rendered DOM must show
//! the node, the task counts, the functions and the task stream of that job,
//! both from a one-off snapshot (`?once=1`) and live over server-sent events.
//! A screenshot is written to `$CARGO_TARGET_TMPDIR/dashboard.png` (and
//! copied to `$FLEET_DASHBOARD_SCREENSHOT` if that is set).
//!
//! Needs Debian's `chromium` (or `$CHROMIUM`); CI installs it, so without it
//! the test fails rather than skips.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::browser::{chromium, run_chromium};
use common::{bounded, cluster, wait_until, GENEROUS};
use fleet::{remote, ObjectRef};

fn spin(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

#[remote]
fn load_chunk(i: u64) -> u64 {
    spin(2 + i % 5);
    i
}

#[remote]
fn transform(i: u64) -> u64 {
    spin(4 + i % 9);
    i * 2
}

#[remote]
fn validate(i: u64) -> Result<u64, String> {
    spin(3);
    if i % 23 == 7 {
        return Err(format!("row {i} is invalid"));
    }
    Ok(i)
}

#[remote]
fn summarize(i: u64) -> u64 {
    spin(15 + i % 20);
    i
}

/// Keeps a running total of the job's batches.
#[remote]
struct Tally {
    total: u64,
}

#[remote]
impl Tally {
    fn new() -> Self {
        Tally { total: 0 }
    }

    fn add(&mut self, n: u64) -> u64 {
        self.total += n;
        self.total
    }
}

/// The job: batches of mixed tasks, with the next batch submitted before
/// the previous one is collected, so there is always work queued until
/// `stop` is set. Returns how many batches ran, each checked.
fn job(stop: Arc<AtomicBool>) -> u64 {
    const BATCH: u64 = 60;
    type Batch = (
        Vec<ObjectRef<u64>>,
        Vec<ObjectRef<u64>>,
        Vec<ObjectRef<u64>>,
        Vec<ObjectRef<u64>>,
    );
    let submit = |b: u64| -> Batch {
        let base = b * BATCH;
        (
            (base..base + BATCH).map(load_chunk::remote).collect(),
            (base..base + BATCH / 2).map(transform::remote).collect(),
            (base..base + BATCH / 3)
                .map(|i| validate::options().max_retries(0).remote(i))
                .collect(),
            (base..base + 2).map(summarize::remote).collect(),
        )
    };
    let check = |b: u64, (loads, transforms, validates, sums): Batch| {
        let base = b * BATCH;
        let got = fleet::get_all_timeout(&loads, Some(GENEROUS)).expect("load_chunk");
        assert_eq!(got, (base..base + BATCH).collect::<Vec<_>>());
        let got = fleet::get_all_timeout(&transforms, Some(GENEROUS)).expect("transform");
        assert_eq!(
            got,
            (base..base + BATCH / 2).map(|i| i * 2).collect::<Vec<_>>()
        );
        for (i, r) in (base..).zip(&validates) {
            let got = fleet::get_timeout(r, Some(GENEROUS));
            if i % 23 == 7 {
                assert!(got.is_err(), "validate({i}) should fail: {got:?}");
            } else {
                assert_eq!(got.expect("validate"), i);
            }
        }
        let got = fleet::get_all_timeout(&sums, Some(GENEROUS)).expect("summarize");
        assert_eq!(got, (base..base + 2).collect::<Vec<_>>());
    };
    let tally = Tally::options()
        .name("tally")
        .max_restarts(2)
        .num_cpus(0.0)
        .remote()
        .expect("creating the Tally actor");
    let mut total = 0;
    let mut b = 0;
    let mut in_flight = submit(b);
    while !stop.load(Ordering::SeqCst) {
        let next = submit(b + 1);
        check(b, std::mem::replace(&mut in_flight, next));
        total += BATCH;
        let got = fleet::get_timeout(&tally.add(BATCH), Some(GENEROUS)).expect("Tally::add");
        assert_eq!(got, total);
        b += 1;
    }
    check(b, in_flight);
    b + 1
}

/// The value of attribute `attr` of the first element at or after the first
/// occurrence of `anchor` in `dom`.
fn attr_after(dom: &str, anchor: &str, attr: &str) -> Option<String> {
    let at = dom.find(anchor)?;
    let rest = &dom[at..];
    let key = format!("{attr}=\"");
    let start = rest.find(&key)? + key.len();
    let end = rest[start..].find('"')?;
    Some(rest[start..start + end].to_string())
}

fn count_after(dom: &str, state: &str) -> u64 {
    attr_after(
        dom,
        &format!("data-state=\"{state}\" data-count="),
        "data-count",
    )
    .and_then(|v| v.parse().ok())
    .unwrap_or_else(|| panic!("no task count for {state:?} in the page"))
}

/// The part of `dom` inside the element with id `id` (up to its closing tag
/// name `tag`).
fn section<'a>(dom: &'a str, id: &str, tag: &str) -> &'a str {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the page"));
    let end = dom[start..]
        .find(&format!("</{tag}>"))
        .map_or(dom.len(), |e| start + e);
    &dom[start..end]
}

/// `/api/snapshot` of the dashboard at `base` (`http://host:port`).
fn snapshot(base: &str) -> String {
    common::http::get_ok(base, "/api/snapshot")
}

fn finished_of(snapshot: &str, function: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(snapshot).expect("snapshot JSON");
    v["functions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["name"] == function)
        .and_then(|f| f["finished"].as_u64())
        .unwrap_or(0)
}

/// Checks a rendered page (`mode`: what it was loaded with) against the job.
fn check_page(dom: &str, mode: &str, node: &str) {
    let ctx = format!("the {mode} page");
    assert!(
        dom.contains("data-ready=\"1\""),
        "{ctx} did not render (no body[data-ready=1]):\n{dom:.3000}"
    );
    // The node, with its CPUs.
    let nodes = section(dom, "nodes", "table");
    assert!(
        nodes.contains(&format!("data-node=\"{node}\"")),
        "{ctx}: node {node} is not in #nodes: {nodes}"
    );
    assert!(nodes.contains("/ 2</span>"), "{ctx}: 2 CPUs: {nodes}");
    // Task counts: the job has finished tasks and more to do.
    let finished = count_after(dom, "finished");
    assert!(finished >= 100, "{ctx}: finished count {finished}");
    let unfinished = ["waiting", "ready", "running"]
        .iter()
        .map(|s| count_after(dom, s))
        .sum::<u64>();
    assert!(unfinished >= 1, "{ctx}: the job shows no unfinished task");
    assert!(count_after(dom, "failed") >= 1, "{ctx}: no failed task");
    // Functions table.
    let functions = section(dom, "functions", "table");
    for f in ["load_chunk", "transform", "validate", "summarize"] {
        assert!(
            functions.contains(&format!("data-function=\"{f}\"")),
            "{ctx}: {f} missing from #functions: {functions}"
        );
    }
    let load_finished: u64 = attr_after(functions, "data-function=\"load_chunk\"", "data-finished")
        .and_then(|v| v.parse().ok())
        .expect("data-finished of load_chunk");
    assert!(
        load_finished >= 60,
        "{ctx}: load_chunk finished {load_finished}"
    );
    // Workers.
    let workers = section(dom, "workers", "table");
    assert!(
        workers.matches("data-pid=\"").count() >= 1,
        "{ctx}: no worker rows: {workers}"
    );
    // The task stream: one rect per task, coloured by function, with the
    // failed ones marked, and a legend.
    let stream = section(dom, "stream", "svg");
    let rects = stream.matches("<rect class=\"task").count();
    assert!(rects >= 50, "{ctx}: {rects} tasks drawn in #stream");
    for f in ["load_chunk", "transform", "summarize"] {
        assert!(
            stream.contains(&format!("data-function=\"{f}\"")),
            "{ctx}: no {f} bar in #stream"
        );
    }
    assert!(
        stream.contains("<rect class=\"task failed\""),
        "{ctx}: no failed task marked in #stream"
    );
    let legend = section(dom, "stream-legend", "div");
    assert!(
        legend.contains("data-function=\"load_chunk\""),
        "{ctx}: legend: {legend}"
    );
    // The actor.
    let actors = section(dom, "actors", "table");
    assert!(
        actors.contains("data-state=\"alive\" data-restarts=\"0\""),
        "{ctx}: the Tally actor is not alive in #actors: {actors}"
    );
    assert!(actors.contains(">tally<"), "{ctx}: actor name: {actors}");
    // The latest tasks.
    let latest = section(dom, "latest", "table");
    assert!(latest.contains("data-task=\""), "{ctx}: latest: {latest}");
}

fn artifact_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

fn is_png(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.len() > 1000 && b.starts_with(b"\x89PNG\r\n\x1a\n"))
}

#[test]
fn the_dashboard_shows_a_running_job() {
    // Fail at once, not after the job, when there is no browser.
    chromium();
    let c = cluster(2);
    let base = c
        .dashboard_url()
        .expect("a local cluster serves a dashboard")
        .to_string();
    let node = c.address().to_string();

    let stop = Arc::new(AtomicBool::new(false));
    let job = {
        let stop = stop.clone();
        std::thread::spawn(move || job(stop))
    };
    // Wait until the job has put enough into the task stream.
    wait_until("the job to finish 300 load_chunk tasks", GENEROUS, || {
        (finished_of(&snapshot(&base), "load_chunk") >= 300).then_some(())
    });

    // One snapshot, rendered (a long stream window, so a slow browser start
    // cannot push the job's tasks out of view).
    let dom = run_chromium(
        &["--virtual-time-budget=10000".into(), "--dump-dom".into()],
        &format!("{base}/?once=1&window=300"),
    );
    check_page(&dom, "?once=1", &node);

    // Live: the page follows /api/events.
    // `?updates=3` closes the event stream after three updates, so that
    // the browser can finish the page.
    let dom = run_chromium(
        &["--virtual-time-budget=10000".into(), "--dump-dom".into()],
        &format!("{base}/?updates=3&window=300"),
    );
    check_page(&dom, "live", &node);
    let updates: u64 = attr_after(&dom, "<body", "data-updates")
        .and_then(|v| v.parse().ok())
        .expect("body[data-updates]");
    assert_eq!(updates, 3, "updates of the live page");

    // A screenshot, as a test artifact. For the docs' picture only, first
    // let the job fill the stream's 20 s window (looks, not correctness).
    if std::env::var_os("FLEET_DASHBOARD_SCREENSHOT").is_some() {
        std::thread::sleep(Duration::from_secs(20));
    }
    let shot = artifact_dir().join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(
        &[
            "--virtual-time-budget=10000".into(),
            "--window-size=1400,1000".into(),
            format!("--screenshot={}", shot.display()),
        ],
        &format!("{base}/?updates=4&window=20"),
    );
    assert!(is_png(&shot), "no screenshot at {}", shot.display());
    eprintln!("dashboard screenshot: {}", shot.display());
    if let Some(copy) = std::env::var_os("FLEET_DASHBOARD_SCREENSHOT") {
        std::fs::copy(&shot, &copy).expect("copying the screenshot");
    }

    // Let the job finish, and check every result.
    stop.store(true, Ordering::SeqCst);
    let batches = bounded("the job to finish", GENEROUS, move || {
        job.join().expect("the job panicked")
    });
    assert!(batches >= 1);
    let s = snapshot(&base);
    assert!(finished_of(&s, "load_chunk") >= 60 * batches);
}

/// The pid of the worker that runs it.
#[remote]
fn worker_pid() -> u32 {
    spin(20);
    std::process::id()
}

/// `(y, text)` of each lane label of the task stream in `dom`.
fn lane_labels(dom: &str) -> Vec<(f64, String)> {
    let stream = section(dom, "stream", "svg");
    stream
        .split("<text class=\"lane-label\"")
        .skip(1)
        .map(|t| {
            let y = attr_after(t, "", "y")
                .and_then(|v| v.parse().ok())
                .expect("a label's y");
            let text = t
                .split_once('>')
                .and_then(|(_, r)| r.split_once("</text>"))
                .map(|(s, _)| s.to_string())
                .expect("a label's text");
            (y, text)
        })
        .collect()
}

#[test]
fn the_dashboard_shows_every_node_of_a_cluster_of_three() {
    chromium();
    let mut cluster = common::cli::CliCluster::start(1, &[]);
    let base = cluster.dashboard.clone().expect("the head's dashboard URL");
    let nodes = [
        cluster.add_node("127.0.0.2", 1),
        cluster.add_node("127.0.0.3", 1),
    ];
    let _driver = cluster.join();
    // A task on every node, so each has a lane with a task in view.
    let mut pins: Vec<ObjectRef<u32>> = vec![worker_pid::remote()];
    for n in &nodes {
        pins.push(worker_pid::options().node(n.clone()).remote());
    }
    let pids = fleet::get_all_timeout(&pins, GENEROUS).expect("a task on each node");
    // Every node reports its machine's load and memory.
    let names: Vec<String> = wait_until("every node to report load and memory", GENEROUS, || {
        let v: serde_json::Value = serde_json::from_str(&snapshot(&base)).expect("JSON");
        let all = v["nodes"].as_array()?;
        (all.len() == 3
            && all
                .iter()
                .all(|n| n["load"].is_number() && n["mem_total_bytes"].as_u64() > Some(0)))
        .then(|| {
            all.iter()
                .filter_map(|n| n["name"].as_str().map(str::to_string))
                .collect()
        })
    });

    let dom = run_chromium(
        &["--virtual-time-budget=10000".into(), "--dump-dom".into()],
        &format!("{base}/?once=1&window=300"),
    );
    // Load and memory for the nodes other than the head's too.
    for n in &nodes {
        let row = format!("data-node=\"{n}\"");
        let load = attr_after(&dom, &row, "data-load").expect("the node's row");
        let mem = attr_after(&dom, &row, "data-mem-total").expect("the node's row");
        assert!(
            load.parse::<f64>().is_ok() && mem.parse::<u64>().is_ok_and(|m| m > 0),
            "node {n}: load {load:?}, memory {mem:?}"
        );
    }
    // The memory card adds up all three nodes.
    let counted = attr_after(&dom, "data-total=\"memory\"", "data-nodes").expect("memory card");
    assert_eq!(counted, "3", "nodes in the memory card");

    // One label per lane, on one line (no second text element), naming the
    // node and the pid, far enough apart not to overlap (11px font).
    assert!(!dom.contains("lane-node"), "a second line of lane labels");
    let labels = lane_labels(&dom);
    for pid in &pids {
        assert!(
            labels
                .iter()
                .any(|(_, t)| names.iter().any(|n| *t == format!("{n} pid {pid}"))),
            "no lane label `NODE pid {pid}` in {labels:?}"
        );
    }
    for n in &nodes {
        assert!(
            labels
                .iter()
                .any(|(_, t)| t.starts_with(&format!("{n} pid "))),
            "no lane of node {n} in {labels:?}"
        );
    }
    let mut ys: Vec<f64> = labels.iter().map(|(y, _)| *y).collect();
    ys.sort_by(f64::total_cmp);
    assert!(
        ys.windows(2).all(|w| w[1] - w[0] >= 11.0),
        "lane labels overlap: {labels:?}"
    );
}
