//! Observability: worker output reaches the driver labelled `(function
//! pid=N)`, in order and complete (also what a worker prints right before
//! it exits or panics), and `FLEET_LOG_TO_DRIVER=0` silences it; the JSON
//! API (`/api/snapshot`, `/api/timeline`) and `Cluster::timeline()` report
//! what ran; `fleet timeline` writes a Chrome trace of a CLI-started head;
//! `get_all_with_progress` returns what `get_all` does.
//!
//! Tests that must see a driver's own stdout/stderr (or start their own
//! cluster apart from this process's) re-run this test binary as a helper
//! process (`--exact helper_… --nocapture` with `FLEET_TEST_ROLE`); the
//! helper tests do nothing otherwise.

mod common;

use common::cli::fleet_bin;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{cluster, wait_until, GENEROUS};
use fleet::{remote, Config, ObjectRef};
use serde_json::Value;

/// Selects the role of a helper process.
const ROLE_VAR: &str = "FLEET_TEST_ROLE";
/// Tags of the lines the log tasks print.
const OUT_TAG: &str = "OBSERVE-OUT";
const ERR_TAG: &str = "OBSERVE-ERR";
/// The log driver prints this once its tasks are done.
const DONE: &str = "OBSERVE-DRIVER-DONE";
/// Chatty tasks and the lines each prints to each stream.
const CHATTY_TASKS: u32 = 8;
const CHATTY_LINES: u32 = 25;
/// Task numbers (and line counts) of the task that exits its process and
/// of the one that panics, after printing.
const EXIT_TASK: u32 = 100;
const PANIC_TASK: u32 = 200;
const LAST_WORDS: u32 = 40;

// ---------------------------------------------------------------- tasks

#[remote]
fn chatty(task: u32, lines: u32) -> u32 {
    for line in 0..lines {
        println!("{OUT_TAG} task={task} line={line}");
        eprintln!("{ERR_TAG} task={task} line={line}");
    }
    task
}

#[remote]
fn prints_then_exits(lines: u32) -> u32 {
    for line in 0..lines {
        println!("{OUT_TAG} task={EXIT_TASK} line={line}");
        eprintln!("{ERR_TAG} task={EXIT_TASK} line={line}");
    }
    std::process::exit(7)
}

#[remote]
fn prints_then_panics(lines: u32) -> u32 {
    for line in 0..lines {
        println!("{OUT_TAG} task={PANIC_TASK} line={line}");
        eprintln!("{ERR_TAG} task={PANIC_TASK} line={line}");
    }
    panic!("deliberate panic after printing {lines} lines")
}

#[remote]
fn square(x: u64) -> u64 {
    x * x
}

#[remote]
fn cube(x: u64) -> u64 {
    x * x * x
}

#[remote]
fn refuses(x: u64) -> Result<u64, String> {
    Err(format!("refusing {x}"))
}

#[remote]
fn triple(x: u64) -> u64 {
    3 * x
}

#[remote]
fn triple_or_fail(x: u64) -> Result<u64, String> {
    if x == 13 {
        return Err("13 is unlucky".into());
    }
    Ok(3 * x)
}

#[remote]
fn cli_square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(2));
    x * x
}

// ------------------------------------------------------ helper processes

fn role() -> Option<String> {
    std::env::var(ROLE_VAR).ok()
}

/// A helper process: this test binary running only `test`, in `role`.
/// Killed (and reaped) on drop.
struct Helper {
    child: Child,
    lines: mpsc::Receiver<(Stream, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Stream {
    Out,
    Err,
}

impl Helper {
    fn spawn(test: &str, role: &str, env: &[(&str, &str)]) -> Helper {
        let exe = std::env::current_exe().expect("current_exe");
        let mut cmd = Command::new(exe);
        cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(ROLE_VAR, role)
            .env_remove("FLEET_LOG_TO_DRIVER")
            .env_remove(fleet::ENV_ADDRESS)
            .env_remove(fleet::ENV_TOKEN)
            .env_remove("FLEET_DASHBOARD")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe. If this test process dies, so
        // does the helper.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("starting a helper process");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        for (stream, pipe) in [
            (Stream::Out, Box::new(out) as Box<dyn Read + Send>),
            (Stream::Err, Box::new(err)),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send((stream, line)).is_err() {
                        break;
                    }
                }
            });
        }
        Helper { child, lines }
    }

    /// Closes the helper's stdin: a helper waiting on it goes on.
    fn release(&mut self) {
        drop(self.child.stdin.take());
    }

    /// Waits for the helper to exit; returns whether it succeeded and all
    /// the lines it printed (appended to `seen`).
    fn finish(mut self, seen: &mut Vec<(Stream, String)>) -> bool {
        self.release();
        let deadline = Instant::now() + GENEROUS;
        // The reader threads end at end of file; the channel then closes.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => seen.push(l),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("the helper did not finish within {GENEROUS:?}: {seen:#?}")
                }
            }
        }
        let status = self.child.wait().expect("waiting for the helper");
        if !status.success() {
            eprintln!("the helper exited: {status}");
        }
        status.success()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the helper's stdin closes (or [`GENEROUS`] twice passes).
fn wait_for_release() {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(GENEROUS * 2);
}

/// Not a test of its own: the driver of the log-forwarding tests. Runs
/// tasks that print to stdout and stderr, one that exits its process and
/// one that panics after printing; prints [`DONE`]; waits to be released.
#[test]
fn helper_log_driver() {
    if role().as_deref() != Some("log-driver") {
        return;
    }
    let _c = cluster(2);
    let refs: Vec<ObjectRef<u32>> = (0..CHATTY_TASKS)
        .map(|t| chatty::remote(t, CHATTY_LINES))
        .collect();
    assert_eq!(
        fleet::get_all_timeout(&refs, Some(GENEROUS)).expect("chatty"),
        (0..CHATTY_TASKS).collect::<Vec<_>>()
    );
    let r = prints_then_panics::options()
        .max_retries(0)
        .remote(LAST_WORDS);
    assert!(fleet::get_timeout(&r, Some(GENEROUS)).is_err());
    let r = prints_then_exits::options()
        .max_retries(0)
        .remote(LAST_WORDS);
    match fleet::get_timeout(&r, Some(GENEROUS)) {
        Err(fleet::Error::WorkerDied { .. }) => {}
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    println!("{DONE}");
    std::io::stdout().flush().expect("flushing stdout");
    wait_for_release();
}

/// One forwarded line: `(function pid=N) TAG task=T line=L`.
#[derive(Debug)]
struct Forwarded {
    stream: Stream,
    function: String,
    pid: u32,
    task: u32,
    line: u32,
}

fn parse_forwarded(stream: Stream, text: &str) -> Option<Forwarded> {
    let tag_at = text.find(OUT_TAG).or_else(|| text.find(ERR_TAG))?;
    let (label, rest) = text.split_at(tag_at);
    // The first line may follow the test harness's unterminated
    // "test helper_log_driver ... ".
    let label = label
        .rfind('(')
        .filter(|&at| at == 0 || (label.starts_with("test ") && label[..at].ends_with(" ... ")))
        .map(|at| &label[at..])
        .and_then(|l| l.strip_prefix('('))
        .and_then(|l| l.strip_suffix(") "))
        .unwrap_or_else(|| panic!("line without a `(function pid=N) ` prefix: {text:?}"));
    let mut parts = label.split(' ');
    let function = parts.next().expect("function").to_string();
    let pid = parts
        .next()
        .and_then(|p| p.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {text:?}"));
    assert_eq!(parts.next(), None, "label {label:?}");
    let tag_ok = match stream {
        Stream::Out => rest.starts_with(OUT_TAG),
        Stream::Err => rest.starts_with(ERR_TAG),
    };
    assert!(tag_ok, "a line on the wrong stream ({stream:?}): {text:?}");
    let field = |name: &str| -> u32 {
        rest.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text:?}"))
    };
    Some(Forwarded {
        stream,
        function,
        pid,
        task: field("task="),
        line: field("line="),
    })
}

fn expected_lines() -> BTreeMap<u32, (&'static str, u32)> {
    let mut tasks: BTreeMap<u32, (&str, u32)> = (0..CHATTY_TASKS)
        .map(|t| (t, ("chatty", CHATTY_LINES)))
        .collect();
    tasks.insert(EXIT_TASK, ("prints_then_exits", LAST_WORDS));
    tasks.insert(PANIC_TASK, ("prints_then_panics", LAST_WORDS));
    tasks
}

#[test]
fn worker_output_reaches_the_driver_labelled_in_order_and_complete() {
    let expected = expected_lines();
    let total: u32 = expected.values().map(|(_, n)| 2 * n).sum();
    let mut driver = Helper::spawn("helper_log_driver", "log-driver", &[]);
    // Read until the driver is done and every expected line is in.
    let mut seen = Vec::new();
    let mut tagged = 0;
    let mut done = false;
    let deadline = Instant::now() + GENEROUS;
    while !(done && tagged == total) {
        let left = deadline.saturating_duration_since(Instant::now());
        match driver.lines.recv_timeout(left) {
            Ok((stream, line)) => {
                done |= line.ends_with(DONE);
                if line.contains(OUT_TAG) || line.contains(ERR_TAG) {
                    tagged += 1;
                }
                seen.push((stream, line));
            }
            Err(e) => panic!(
                "after {GENEROUS:?} ({e}): done {done}, {tagged} of {total} lines: {seen:#?}"
            ),
        }
    }
    driver.release();
    assert!(driver.finish(&mut seen), "the driver failed: {seen:#?}");

    let forwarded: Vec<Forwarded> = seen
        .iter()
        .filter_map(|(s, l)| parse_forwarded(*s, l))
        .collect();
    // Nothing lost, nothing twice, each labelled with its function.
    let mut count: HashMap<(Stream, u32, u32), usize> = HashMap::new();
    for f in &forwarded {
        let (function, lines) = expected
            .get(&f.task)
            .unwrap_or_else(|| panic!("unexpected task in {f:?}"));
        assert_eq!(f.function, *function, "{f:?}");
        assert!(f.line < *lines, "{f:?}");
        *count.entry((f.stream, f.task, f.line)).or_default() += 1;
    }
    for (task, (_, lines)) in &expected {
        for stream in [Stream::Out, Stream::Err] {
            for line in 0..*lines {
                let n = count.get(&(stream, *task, line)).copied().unwrap_or(0);
                assert_eq!(n, 1, "{stream:?} task {task} line {line} arrived {n} times");
            }
        }
    }
    // Per worker and stream: each task's lines in order, in one block (a
    // worker runs one task at a time), and all from one process.
    let mut by_worker: BTreeMap<(Stream, u32), Vec<(u32, u32)>> = BTreeMap::new();
    let mut pid_of: HashMap<u32, HashSet<u32>> = HashMap::new();
    for f in &forwarded {
        by_worker
            .entry((f.stream, f.pid))
            .or_default()
            .push((f.task, f.line));
        pid_of.entry(f.task).or_default().insert(f.pid);
    }
    for (task, pids) in &pid_of {
        assert_eq!(
            pids.len(),
            1,
            "task {task} printed from several pids {pids:?}"
        );
    }
    for ((stream, pid), seq) in &by_worker {
        let mut finished_tasks = HashSet::new();
        let mut current: Option<(u32, u32)> = None;
        for &(task, line) in seq {
            match current {
                Some((t, l)) if t == task => {
                    assert_eq!(line, l + 1, "{stream:?} pid {pid}: order {seq:?}");
                }
                _ => {
                    if let Some((t, _)) = current {
                        finished_tasks.insert(t);
                    }
                    assert!(
                        !finished_tasks.contains(&task),
                        "{stream:?} pid {pid}: task {task} interleaved: {seq:?}"
                    );
                    assert_eq!(line, 0, "{stream:?} pid {pid}: order {seq:?}");
                }
            }
            current = Some((task, line));
        }
    }
    // The panic message came along too, labelled.
    assert!(
        seen.iter().any(|(s, l)| *s == Stream::Err
            && l.starts_with("(prints_then_panics pid=")
            && l.contains("deliberate panic after printing")),
        "no labelled panic message: {seen:#?}"
    );
}

#[test]
fn fleet_log_to_driver_0_silences_worker_output() {
    let driver = Helper::spawn(
        "helper_log_driver",
        "log-driver",
        &[("FLEET_LOG_TO_DRIVER", "0")],
    );
    let mut seen = Vec::new();
    loop {
        match driver.lines.recv_timeout(GENEROUS) {
            Ok(l) => {
                let done = l.1.ends_with(DONE);
                seen.push(l);
                if done {
                    break;
                }
            }
            Err(e) => panic!("the driver did not finish its tasks ({e}): {seen:#?}"),
        }
    }
    // Showing that nothing comes needs some wait: the same lines reach a
    // driver within milliseconds when forwarding is on (the test above).
    let quiet_until = Instant::now() + Duration::from_secs(3);
    while let Some(left) = quiet_until.checked_duration_since(Instant::now()) {
        if let Ok(l) = driver.lines.recv_timeout(left) {
            seen.push(l);
        }
    }
    assert!(driver.finish(&mut seen), "the driver failed: {seen:#?}");
    let leaked: Vec<_> = seen
        .iter()
        .filter(|(_, l)| {
            l.contains(OUT_TAG)
                || l.contains(ERR_TAG)
                || l.contains(" pid=")
                || l.contains("deliberate panic")
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "worker output reached the driver: {leaked:#?}"
    );
}

// ------------------------------------------------------------ JSON API

/// `GET path` from the dashboard at `base` (`http://host:port`); the body.
fn http_get(base: &str, path: &str) -> String {
    let host = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).expect("connecting to the dashboard");
    s.set_read_timeout(Some(GENEROUS)).expect("read timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("sending the request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("reading the response");
    assert!(text.starts_with("HTTP/1.1 200"), "GET {path}: {text:.300}");
    text.split_once("\r\n\r\n").expect("a body").1.to_string()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("invalid JSON ({e}): {text:.500}"))
}

fn function<'a>(snapshot: &'a Value, name: &str) -> Option<&'a Value> {
    snapshot["functions"]
        .as_array()
        .expect("functions")
        .iter()
        .find(|f| f["name"] == name)
}

fn counts_of(snapshot: &Value, name: &str) -> (u64, u64) {
    function(snapshot, name).map_or((0, 0), |f| {
        (
            f["finished"].as_u64().expect("finished"),
            f["failed"].as_u64().expect("failed"),
        )
    })
}

/// Checks a Chrome trace: every task event complete (ph X, ts, dur, pid,
/// tid); returns how many there are of each function, and their tids.
fn trace_tasks(trace: &Value) -> (HashMap<String, usize>, HashSet<u64>) {
    let events = trace["traceEvents"].as_array().expect("traceEvents");
    let mut counts = HashMap::new();
    let mut tids = HashSet::new();
    let mut named_processes = HashSet::new();
    for e in events {
        match e["ph"].as_str().expect("ph") {
            "M" => {
                named_processes.insert(e["pid"].as_u64().expect("pid"));
            }
            "X" => {
                for k in ["ts", "dur", "pid", "tid"] {
                    assert!(e[k].is_u64(), "{k} of {e}");
                }
                assert!(e["dur"].as_u64() >= Some(1), "{e}");
                *counts
                    .entry(e["name"].as_str().expect("name").to_string())
                    .or_default() += 1;
                tids.insert(e["tid"].as_u64().expect("tid"));
                assert!(
                    named_processes.contains(&e["pid"].as_u64().expect("pid")),
                    "no process_name for {e}"
                );
            }
            other => panic!("unexpected ph {other:?} in {e}"),
        }
    }
    (counts, tids)
}

#[test]
fn the_json_api_reports_what_ran() {
    let c = cluster(2);
    let base = c.dashboard_url().expect("a dashboard").to_string();
    let squares: Vec<ObjectRef<u64>> = (0..40u64).map(square::remote).collect();
    let cubes: Vec<ObjectRef<u64>> = (0..10u64).map(cube::remote).collect();
    let refusals: Vec<ObjectRef<u64>> = (0..5u64)
        .map(|x| refuses::options().max_retries(0).remote(x))
        .collect();
    assert_eq!(
        fleet::get_all_timeout(&squares, Some(GENEROUS)).expect("square"),
        (0..40u64).map(|x| x * x).collect::<Vec<_>>()
    );
    assert_eq!(
        fleet::get_all_timeout(&cubes, Some(GENEROUS)).expect("cube"),
        (0..10u64).map(|x| x * x * x).collect::<Vec<_>>()
    );
    for r in &refusals {
        assert!(fleet::get_timeout(r, Some(GENEROUS)).is_err());
    }

    // The page itself is served.
    assert!(http_get(&base, "/").contains("id=\"stream\""));

    let snap = wait_until("the snapshot to count every task", GENEROUS, || {
        let s = json(&http_get(&base, "/api/snapshot"));
        (counts_of(&s, "square") == (40, 0)
            && counts_of(&s, "cube") == (10, 0)
            && counts_of(&s, "refuses") == (0, 5))
            .then_some(s)
    });
    // Nodes: this local cluster's one node.
    let nodes = snap["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(nodes[0]["name"], c.address());
    assert_eq!(nodes[0]["alive"], true);
    assert_eq!(nodes[0]["num_cpus"].as_f64(), Some(2.0));
    assert!(nodes[0]["store_capacity"].as_u64() > Some(0));
    assert!(nodes[0]["mem_total_bytes"].as_u64() > Some(0));
    // Workers: live processes of this node.
    let workers = snap["workers"].as_array().expect("workers");
    assert!(!workers.is_empty());
    for w in workers {
        assert_eq!(w["node"], c.address(), "{w}");
        assert!(w["pid"].as_u64() > Some(0), "{w}");
    }
    // Totals and the stream (since 0: every event kept).
    let tasks = &snap["tasks"];
    assert!(tasks["finished"].as_u64() >= Some(50), "{tasks}");
    assert!(tasks["failed"].as_u64() >= Some(5), "{tasks}");
    let stream = snap["stream"].as_array().expect("stream");
    let of = |name: &str| stream.iter().filter(|e| e["function"] == name).count();
    assert_eq!((of("square"), of("cube"), of("refuses")), (40, 10, 5));
    let mut stream_pids = HashSet::new();
    for e in stream {
        assert!(e["pid"].as_u64() > Some(0), "{e}");
        assert!(e["start_us"].as_u64() > Some(0), "{e}");
        assert_eq!(e["node"], c.address(), "{e}");
        assert_eq!(e["ok"], e["function"] != "refuses", "{e}");
        stream_pids.insert(e["pid"].as_u64().expect("pid"));
    }
    let seqs: Vec<u64> = stream
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seq order {seqs:?}");
    let latest = snap["latest"].as_array().expect("latest");
    assert!(!latest.is_empty() && latest.len() <= 50);
    // `?since=` gives only later events.
    let last = snap["last_seq"].as_u64().expect("last_seq");
    let later = json(&http_get(&base, &format!("/api/snapshot?since={last}")));
    for e in later["stream"].as_array().expect("stream") {
        assert!(e["seq"].as_u64() > Some(last), "{e}");
    }

    // The Chrome trace, from the API and from the cluster.
    for (what, text) in [
        ("/api/timeline", http_get(&base, "/api/timeline")),
        (
            "Cluster::timeline",
            c.timeline().expect("a local cluster's timeline"),
        ),
    ] {
        let (counts, tids) = trace_tasks(&json(&text));
        for (name, n) in [("square", 40), ("cube", 10), ("refuses", 5)] {
            assert_eq!(
                counts.get(name).copied(),
                Some(n),
                "{what}: {name}: {counts:?}"
            );
        }
        // One thread per worker: the pids the tasks ran in.
        assert_eq!(tids, stream_pids, "{what}: tids against worker pids");
    }
}

// ------------------------------------------------------- fleet timeline

/// Not a test of its own: a driver joining the head named by
/// `FLEET_ADDRESS`; runs 30 `cli_square` tasks.
#[test]
fn helper_cli_driver() {
    if role().as_deref() != Some("cli-driver") {
        return;
    }
    let _c = fleet::init_with(Config::default()).expect("joining the cluster");
    let refs: Vec<ObjectRef<u64>> = (0..30u64).map(cli_square::remote).collect();
    assert_eq!(
        fleet::get_all_timeout(&refs, Some(GENEROUS)).expect("cli_square"),
        (0..30u64).map(|x| x * x).collect::<Vec<_>>()
    );
}

#[test]
fn fleet_timeline_writes_a_chrome_trace() {
    let dir = tempfile::tempdir().expect("temp dir");
    let token = format!("observe-token-{}", std::process::id());
    let token_file = dir.path().join("token");
    let mut cmd = Command::new(fleet_bin());
    cmd.args(["start", "--head", "--port", "0", "--dashboard-port", "0"])
        .args(["--num-cpus", "2", "--block", "--token-file"])
        .arg(&token_file)
        .env("FLEET_TOKEN", &token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut head = Kill(cmd.spawn().expect("starting fleet start --head"));
    let out = head.0.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (mut address, mut dashboard) = (None, None);
    while address.is_none() {
        let line = rx
            .recv_timeout(GENEROUS)
            .expect("the head did not say where it serves");
        if let Some(d) = line.strip_prefix("fleet dashboard at ") {
            dashboard = Some(d.trim().to_string());
        }
        if line.contains("serving at") {
            address = line.rsplit(' ').next().map(str::to_string);
        }
    }
    let address = address.expect("address");
    let dashboard = dashboard.expect("the head printed no dashboard URL");

    let mut seen = Vec::new();
    let driver = Helper::spawn(
        "helper_cli_driver",
        "cli-driver",
        &[(fleet::ENV_ADDRESS, &address), (fleet::ENV_TOKEN, &token)],
    );
    assert!(driver.finish(&mut seen), "the driver failed: {seen:#?}");
    wait_until("the head to count the driver's tasks", GENEROUS, || {
        let s = json(&http_get(&dashboard, "/api/snapshot"));
        (counts_of(&s, "cli_square") == (30, 0)).then_some(())
    });

    let trace = dir.path().join("trace.json");
    let out = Command::new(fleet_bin())
        .args(["timeline", "--address", &address, "-o"])
        .arg(&trace)
        .arg("--token-file")
        .arg(&token_file)
        .env_remove("FLEET_TOKEN")
        .output()
        .expect("running fleet timeline");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fleet timeline: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("wrote 30 tasks"), "{stdout}");
    let text = std::fs::read_to_string(&trace).expect("the trace file");
    let (counts, _) = trace_tasks(&json(&text));
    assert_eq!(counts.get("cli_square").copied(), Some(30), "{counts:?}");
    drop(head);
}

// ------------------------------------------------ get_all_with_progress

/// Not a test of its own: compares `get_all_with_progress` with `get_all`
/// with stderr not a terminal (the parent pipes it).
#[test]
fn helper_progress() {
    if role().as_deref() != Some("progress") {
        return;
    }
    use std::io::IsTerminal;
    assert!(!std::io::stderr().is_terminal());
    let _c = cluster(2);
    let refs: Vec<ObjectRef<u64>> = (0..300u64).map(triple::remote).collect();
    let with = fleet::get_all_with_progress(&refs).expect("get_all_with_progress");
    let without = fleet::get_all(&refs).expect("get_all");
    assert_eq!(with, without);
    assert_eq!(with, (0..300u64).map(|x| 3 * x).collect::<Vec<_>>());
    let none: Vec<ObjectRef<u64>> = Vec::new();
    assert_eq!(
        fleet::get_all_with_progress(&none).expect("empty"),
        Vec::<u64>::new()
    );
    let mixed: Vec<ObjectRef<u64>> = (0..20u64)
        .map(|x| triple_or_fail::options().max_retries(0).remote(x))
        .collect();
    let with = fleet::get_all_with_progress(&mixed).map_err(|e| e.to_string());
    let without = fleet::get_all(&mixed).map_err(|e| e.to_string());
    assert!(with.is_err(), "{with:?}");
    assert_eq!(with, without);
    println!("PROGRESS-OK");
}

#[test]
fn get_all_with_progress_returns_what_get_all_does() {
    let driver = Helper::spawn("helper_progress", "progress", &[]);
    let mut seen = Vec::new();
    let ok = driver.finish(&mut seen);
    assert!(ok, "the helper failed: {seen:#?}");
    assert!(
        seen.iter()
            .any(|(s, l)| *s == Stream::Out && l.ends_with("PROGRESS-OK")),
        "{seen:#?}"
    );
    // No progress bar on a stderr that is not a terminal.
    let bar: Vec<_> = seen
        .iter()
        .filter(|(s, l)| *s == Stream::Err && (l.contains('\r') || l.contains(" eta ")))
        .collect();
    assert!(bar.is_empty(), "progress output on a pipe: {bar:#?}");
}
