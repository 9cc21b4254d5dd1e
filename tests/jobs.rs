//! Jobs (`fleet job …`), detached actors and local discovery, with real
//! processes: a head started with `fleet start --head` (and node agents),
//! each in a runtime folder of its own (`TMPDIR`), the `fleet` CLI run as a
//! separate process for every command, and this test executable submitted
//! as the job's driver (its `job_driver` test is the driver's body).

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::cli::{fleet_bin, Child};
use common::{wait_for_path, wait_until, GENEROUS};

use fleet::remote;

/// Selects what the driver does when this executable runs as a job.
const MODE: &str = "FLEET_TEST_JOB_MODE";
/// A file whose appearance lets a waiting driver finish.
const GATE: &str = "FLEET_TEST_JOB_GATE";

#[remote]
fn job_hello(x: u64) -> u64 {
    println!("hello from a worker of the job, x={x}");
    x * 2
}

/// Not a test on its own: the body of a job's driver.
#[test]
fn job_driver() {
    if std::env::var(fleet::ENV_JOB_ID).is_err() {
        return;
    }
    let mode = std::env::var(MODE).unwrap_or_default();
    let _c = fleet::init().expect("the job's driver joins its cluster");
    let job = std::env::var(fleet::ENV_JOB_ID).unwrap_or_default();
    println!("driver of {job} joined");
    let doubled = fleet::get(&job_hello::remote(21)).expect("a task of the job");
    println!("RESULT {doubled}");
    // The worker's line travels apart from the result (through the node's
    // supervisor and the head); the driver's output file is in its working
    // folder, so it waits to see the line there before it exits.
    wait_until("the worker's line in the job's output", GENEROUS, || {
        std::fs::read_to_string("output.log")
            .ok()?
            .contains("hello from a worker")
            .then_some(())
    });
    if mode == "stubborn" {
        // SAFETY: plain signal(2): this driver ignores SIGTERM, so only
        // the SIGKILL after the grace period ends it.
        unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    }
    match mode.as_str() {
        "gate" | "stubborn" => {
            println!("waiting at the gate");
            let gate = PathBuf::from(std::env::var(GATE).expect("gate path"));
            wait_for_path(&gate);
            println!("through the gate");
        }
        "fail" => {
            eprintln!("failing on purpose");
            std::process::exit(3);
        }
        _ => {}
    }
}

#[remote]
struct Tally {
    n: i64,
}

#[remote]
impl Tally {
    fn new(start: i64) -> Self {
        Tally { n: start }
    }

    fn add(&mut self, by: i64) -> i64 {
        self.n += by;
        self.n
    }
}

const ROLE: &str = "FLEET_TEST_DETACHED_ROLE";

/// Not a test on its own: the body of the driver processes of
/// `a_detached_actor_outlives_its_driver`.
#[test]
fn detached_role() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let _c = fleet::init().expect("join the cluster");
    match role.as_str() {
        "create" => {
            let t = Tally::options()
                .name("hits")
                .detached()
                .remote(0)
                .expect("create a detached actor");
            for _ in 0..2 {
                fleet::get(&t.add(1)).expect("call");
            }
            println!("CREATED {}", fleet::get(&t.add(1)).expect("call"));
        }
        "use" => {
            let t = fleet::get_actor::<Tally>("hits").expect("the detached actor is still there");
            let four = fleet::get(&t.add(1)).expect("call");
            let same = Tally::options()
                .name("hits")
                .get_if_exists(true)
                .remote(100)
                .expect("get_if_exists");
            let five = fleet::get(&same.add(1)).expect("call");
            let same_id = same.as_ref().id() == t.as_ref().id();
            fleet::kill(&t).expect("kill");
            let gone = wait_until("the killed actor's name to be free", GENEROUS, || {
                fleet::get_actor::<Tally>("hits").err()
            });
            println!("USED {four} {five} same={same_id} after-kill={gone}");
        }
        "race" => {
            // Several drivers at once: one creates it, all get that one.
            let t = Tally::options()
                .name("race")
                .detached()
                .get_if_exists(true)
                .remote(0)
                .expect("get or create");
            let n = fleet::get(&t.add(1)).expect("call");
            println!("RACED id={} n={n}", t.as_ref().id());
        }
        other => panic!("unknown role {other}"),
    }
}

/// A head in a runtime folder of its own (`TMPDIR`), so its record and job
/// files are this test's alone.
struct Head {
    address: String,
    dashboard: String,
    token: String,
    token_file: PathBuf,
    tmp: tempfile::TempDir,
    process: Child,
    nodes: Vec<Child>,
}

impl Head {
    fn start() -> Head {
        Head::start_with(&[])
    }

    /// A head whose process also gets `env`.
    fn start_with(env: &[(&str, &str)]) -> Head {
        Head::start_in(tempfile::tempdir().expect("temp dir"), 0, env)
    }

    /// A head on `port` (0: any) whose runtime folder is `tmp`.
    fn start_in(tmp: tempfile::TempDir, port: u16, env: &[(&str, &str)]) -> Head {
        let token = format!("jobs-test-{}", std::process::id());
        let token_file = tmp.path().join("token");
        let process = Child::spawn(
            clean(&mut Command::new(fleet_bin()))
                .args(["start", "--head", "--port", &port.to_string()])
                .args(["--dashboard-port", "0"])
                .args(["--num-cpus", "1", "--block", "--token-file"])
                .arg(&token_file)
                .env("TMPDIR", tmp.path())
                .env("FLEET_TOKEN", &token)
                .envs(env.iter().copied()),
        );
        let dashboard = process
            .expect_line("dashboard at")
            .rsplit(' ')
            .next()
            .expect("url")
            .to_string();
        let address = process.serving_address();
        Head {
            address,
            dashboard,
            token,
            token_file,
            tmp,
            process,
            nodes: Vec::new(),
        }
    }

    /// A node agent on `ip` with a runtime folder of its own; its name.
    fn add_node(&mut self, ip: &str, dir: &Path) -> String {
        let node = Child::spawn(
            clean(&mut Command::new(fleet_bin()))
                .args(["start", "--address", &self.address, "--node-ip", ip])
                .args(["--num-cpus", "1", "--block"])
                .env("TMPDIR", dir)
                .env("FLEET_TOKEN", &self.token),
        );
        let name = node.joined_node_name();
        self.nodes.push(node);
        name
    }

    /// `fleet ARGS` on the head's machine, told where the cluster is.
    fn fleet(&self, args: &[&str]) -> Output {
        clean(&mut Command::new(fleet_bin()))
            .args(args)
            .env("TMPDIR", self.tmp.path())
            .env("FLEET_ADDRESS", &self.address)
            .env("FLEET_TOKEN", &self.token)
            .output()
            .expect("run fleet")
    }

    /// `fleet ARGS` that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.fleet(args);
        assert!(
            out.status.success(),
            "fleet {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Submits this test executable as a job running `mode`; the job id.
    fn submit(&self, mode: &str, extra: &[&str]) -> String {
        let exe = std::env::current_exe().expect("test executable");
        let mut args = vec!["job", "submit", "--env"];
        let mode_env = format!("{MODE}={mode}");
        args.push(&mode_env);
        args.extend_from_slice(extra);
        args.push("--");
        let exe = exe.to_string_lossy().into_owned();
        args.extend_from_slice(&[exe.as_str(), "--exact", "job_driver", "--nocapture"]);
        let out = self.ok(&args);
        let id = out.trim().to_string();
        assert!(
            out.lines().count() == 1
                && id.starts_with("job-")
                && id[4..].chars().all(|c| c.is_ascii_hexdigit()),
            "submit printed the job id alone on stdout, got {out:?}"
        );
        id
    }

    /// `fleet job status ID` once it shows `state`; the whole status.
    fn wait_state(&self, id: &str, state: &str) -> String {
        wait_until(&format!("job {id} to be {state}"), GENEROUS, || {
            let s = self.ok(&["job", "status", id]);
            s.contains(&format!("state:      {state}\n")).then_some(s)
        })
    }
}

/// A command without the test run's own Fleet settings.
fn clean(cmd: &mut Command) -> &mut Command {
    for var in [
        "FLEET_ADDRESS",
        "FLEET_TOKEN",
        fleet::ENV_JOB_ID,
        MODE,
        GATE,
        ROLE,
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.trim().strip_prefix(name))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {name} in {status}"))
}

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
    assert!(text.starts_with("HTTP/1.1 200"), "response: {text:.200}");
    text.split_once("\r\n\r\n").expect("a body").1.to_string()
}

#[test]
fn a_submitted_job_runs_to_completion_after_the_submitter_exits() {
    let head = Head::start();
    // `submit` waits for the submitter to exit before it returns the id.
    let id = head.submit("ok", &[]);
    let status = head.wait_state(&id, "SUCCEEDED");
    assert_eq!(field(&status, "exit code:"), "0", "{status}");
    for f in ["submitted:", "started:", "ended:"] {
        assert!(field(&status, f).ends_with("UTC"), "{f} recorded: {status}");
    }
    assert!(field(&status, "node:").contains(&head.address), "{status}");
    let log_path = field(&status, "output:");
    assert!(
        Path::new(log_path).starts_with(head.tmp.path()),
        "the output file is kept on the head's machine: {log_path}"
    );

    let logs = head.ok(&["job", "logs", &id]);
    assert!(logs.contains(&format!("driver of {id} joined")), "{logs}");
    assert!(logs.contains("RESULT 42"), "{logs}");
    assert!(
        logs.contains("(job_hello pid=") && logs.contains("hello from a worker of the job, x=21"),
        "a worker's forwarded line is in the job's output: {logs}"
    );

    let list = head.ok(&["job", "list"]);
    let row = list.lines().find(|l| l.starts_with(&id)).expect("listed");
    assert!(row.contains("SUCCEEDED") && row.contains(" 0 "), "{list}");

    let scripted: serde_json::Value =
        serde_json::from_str(&head.ok(&["job", "status", &id, "--json"])).expect("status JSON");
    assert_eq!(scripted[0]["id"], id.as_str());
    assert_eq!(scripted[0]["exit_code"], 0);
    assert!(scripted[0]["end_millis"].as_u64() >= scripted[0]["start_millis"].as_u64());
    let jobs: serde_json::Value =
        serde_json::from_str(&http_get(&head.dashboard, "/api/jobs")).expect("jobs JSON");
    let listed = jobs
        .as_array()
        .expect("a list")
        .iter()
        .find(|j| j["id"] == id.as_str())
        .expect("the dashboard lists the job");
    assert_eq!(listed["state"], "SUCCEEDED");
    assert_eq!(listed["exit_code"], 0);
    let snapshot = http_get(&head.dashboard, "/api/snapshot");
    assert!(
        snapshot.contains(&id),
        "the page's snapshot carries the jobs"
    );

    // A failing driver: its exit code is kept.
    let failing = head.submit("fail", &[]);
    let status = head.wait_state(&failing, "FAILED");
    assert_eq!(field(&status, "exit code:"), "3", "{status}");
    let logs = head.ok(&["job", "logs", &failing]);
    assert!(
        logs.contains("failing on purpose"),
        "stderr is kept too: {logs}"
    );
}

#[test]
fn logs_follow_a_running_job_and_stop_kills_one() {
    let head = Head::start();
    let gate = head.tmp.path().join("gate");
    let gate_env = format!("{GATE}={}", gate.display());
    let id = head.submit("gate", &["--env", &gate_env]);
    let follow = Child::spawn(
        clean(&mut Command::new(fleet_bin()))
            .args(["job", "logs", &id, "--follow"])
            .env("TMPDIR", head.tmp.path())
            .env("FLEET_ADDRESS", &head.address)
            .env("FLEET_TOKEN", &head.token),
    );
    follow.expect_line("waiting at the gate");
    assert!(head.ok(&["job", "status", &id]).contains("RUNNING"));
    std::fs::write(&gate, b"open").expect("open the gate");
    follow.expect_line("through the gate");
    let mut follow = follow;
    let exited = wait_until(
        "`fleet job logs --follow` to end with the job",
        GENEROUS,
        || follow.child.try_wait().expect("wait"),
    );
    assert!(exited.success());
    head.wait_state(&id, "SUCCEEDED");

    // A job that would wait for good is stopped.
    let never = head.tmp.path().join("never");
    let never_env = format!("{GATE}={}", never.display());
    let stuck = head.submit("gate", &["--env", &never_env]);
    wait_until("the stuck job to wait at its gate", GENEROUS, || {
        head.ok(&["job", "logs", &stuck])
            .contains("waiting at the gate")
            .then_some(())
    });
    let pid: i32 = field(&head.ok(&["job", "status", &stuck]), "pid:")
        .parse()
        .expect("pid");
    let said = head.ok(&["job", "stop", &stuck]);
    assert!(said.contains("STOPPED"), "{said}");
    let status = head.ok(&["job", "status", &stuck]);
    assert!(status.contains("state:      STOPPED"), "{status}");
    assert!(field(&status, "ended:").ends_with("UTC"), "{status}");
    // SAFETY: signal 0 only asks whether the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    assert!(!alive, "the stopped driver (pid {pid}) is gone");
}

#[test]
fn a_driver_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let head = Head::start_with(&[("FLEET_JOB_STOP_GRACE_SECS", "1")]);
    let never = head.tmp.path().join("never");
    let never_env = format!("{GATE}={}", never.display());
    let id = head.submit("stubborn", &["--env", &never_env]);
    wait_until("the stubborn job to wait at its gate", GENEROUS, || {
        head.ok(&["job", "logs", &id])
            .contains("waiting at the gate")
            .then_some(())
    });
    let said = head.ok(&["job", "stop", &id]);
    assert!(
        said.contains("STOPPED") && said.contains("killed by signal 9"),
        "{said}"
    );
    let status = head.ok(&["job", "status", &id]);
    assert_eq!(
        field(&status, "exit code:"),
        "-",
        "killed, no exit code: {status}"
    );
}

#[test]
fn a_job_runs_on_the_node_it_names_and_its_output_comes_through_the_head() {
    let mut head = Head::start();
    let node_tmp = tempfile::tempdir().expect("temp dir");
    let node = head.add_node("127.0.0.2", node_tmp.path());
    let id = head.submit("ok", &["--node", &node]);
    let status = head.wait_state(&id, "SUCCEEDED");
    assert_eq!(field(&status, "node:"), node);
    assert_eq!(field(&status, "exit code:"), "0");
    let log_path = field(&status, "output:");
    assert!(
        Path::new(log_path).starts_with(node_tmp.path()),
        "the output file is kept on the node's machine: {log_path}"
    );
    let logs = head.ok(&["job", "logs", &id]);
    assert!(logs.contains("RESULT 42"), "{logs}");
    assert!(logs.contains("hello from a worker of the job"), "{logs}");

    let out = head.fleet(&["job", "submit", "--node", "10.9.9.9:1", "--", "/bin/true"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no live node named 10.9.9.9:1") && err.contains(&node),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "nothing but an id goes to stdout");
    for (args, want) in [
        (
            &["job", "submit", "--env", "NOEQ", "--", "/bin/true"][..],
            "give KEY=VALUE",
        ),
        (
            &["job", "submit", "--", "/no/such/program"][..],
            "no executable at /no/such/program",
        ),
        (
            &["job", "status", "job-00000000"][..],
            "no job job-00000000",
        ),
    ] {
        let out = head.fleet(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn a_detached_actor_outlives_its_driver() {
    let head = Head::start();
    let driver = |role: &str| {
        // On the head's machine a driver finds the cluster by itself.
        let out = clean(&mut Command::new(std::env::current_exe().unwrap()))
            .args(["--exact", "detached_role", "--nocapture"])
            .env(ROLE, role)
            .env("TMPDIR", head.tmp.path())
            .env("FLEET_ADDRESS", "auto")
            .output()
            .expect("run a driver");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{role} driver failed: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    assert!(driver("create").contains("CREATED 3"));
    // The creating driver has exited; the actor lives on.
    let used = driver("use");
    assert!(
        used.contains("USED 4 5 same=true after-kill="),
        "a later driver used it, get_if_exists gave the same actor, kill ended it: {used}"
    );
    wait_until("the killed actor's worker to exit", GENEROUS, || {
        let s = head.ok(&["status"]);
        (s.contains("actors: 0") && s.contains(")    0 workers")).then_some(())
    });
}

#[test]
fn drivers_racing_with_get_if_exists_share_one_actor() {
    let head = Head::start();
    // Children killed if the test fails half-way.
    let racers: Vec<Child> = (0..3)
        .map(|_| {
            Child::spawn(
                clean(&mut Command::new(std::env::current_exe().unwrap()))
                    .args(["--exact", "detached_role", "--nocapture"])
                    .env(ROLE, "race")
                    .env("TMPDIR", head.tmp.path())
                    .env("FLEET_ADDRESS", "auto"),
            )
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    let mut counts = Vec::new();
    for r in &racers {
        let line = r.expect_line("RACED");
        let mut parts = line.split_whitespace().skip(1);
        ids.insert(parts.next().expect("id").to_string());
        counts.push(parts.next().expect("n").to_string());
    }
    assert_eq!(ids.len(), 1, "every driver got the same actor: {ids:?}");
    counts.sort();
    assert_eq!(
        counts,
        ["n=1", "n=2", "n=3"],
        "one actor counted all three calls"
    );
}

#[test]
fn a_head_restarted_at_its_address_still_lists_earlier_jobs() {
    let port = common::cli::free_port();
    let head = Head::start_in(tempfile::tempdir().expect("temp dir"), port, &[]);
    let done = head.submit("ok", &[]);
    head.wait_state(&done, "SUCCEEDED");
    let never = head.tmp.path().join("never");
    let never_env = format!("{GATE}={}", never.display());
    let cut_short = head.submit("gate", &["--env", &never_env]);
    wait_until("the job to wait at its gate", GENEROUS, || {
        head.ok(&["job", "logs", &cut_short])
            .contains("waiting at the gate")
            .then_some(())
    });
    let pid: i32 = field(&head.ok(&["job", "status", &cut_short]), "pid:")
        .parse()
        .expect("pid");
    // The head goes away (SIGKILL: no goodbye) and a new one takes its place.
    let Head {
        mut process, tmp, ..
    } = head;
    process.kill();
    // A driver outlives a head killed this way (it would fail at its next
    // call); this one waits at a gate, so the test ends it.
    // SAFETY: plain kill(2) of the job's process group, started by the head.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let head = Head::start_in(tmp, port, &[]);
    let list = head.ok(&["job", "list"]);
    let row = |id: &str| {
        list.lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} listed after the restart: {list}"))
            .to_string()
    };
    assert!(row(&done).contains("SUCCEEDED"), "{list}");
    assert!(row(&cut_short).contains("FAILED"), "{list}");
    let status = head.ok(&["job", "status", &cut_short]);
    assert!(status.contains("the head stopped while it ran"), "{status}");
    // Its output is still on the head's machine.
    let logs = head.ok(&["job", "logs", &done]);
    assert!(logs.contains("RESULT 42"), "{logs}");
}

#[test]
fn a_detached_actor_needs_a_name() {
    let _c = common::cluster(1);
    let err = Tally::options()
        .detached()
        .remote(0)
        .map(|_| ())
        .unwrap_err();
    assert!(err.to_string().contains("needs a name"), "{err}");
}

#[test]
fn the_cli_and_drivers_find_a_head_on_their_machine() {
    let head = Head::start();
    let local = |args: &[&str], tmp: &Path| {
        clean(&mut Command::new(fleet_bin()))
            .args(args)
            .env("TMPDIR", tmp)
            .output()
            .expect("run fleet")
    };
    // No flags, no variables: the head's record is found.
    let out = local(&["status"], head.tmp.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{:?}", out);
    assert!(
        text.contains(&format!("cluster at {}", head.address)),
        "{text}"
    );
    let out = local(&["job", "list"], head.tmp.path());
    assert!(out.status.success(), "{:?}", out);

    // On a machine (runtime folder) without a head: the fix is named.
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let out = local(&["status"], elsewhere.path());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in ["--address", "FLEET_ADDRESS", "fleet start --head"] {
        assert!(err.contains(want), "the error names {want}: {err}");
    }
    assert!(
        err.contains(&elsewhere.path().display().to_string()),
        "{err}"
    );

    // An address but no token.
    let out = local(&["status", "--address", &head.address], elsewhere.path());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in ["FLEET_TOKEN", "--token-file", "token"] {
        assert!(err.contains(want), "the error names {want}: {err}");
    }

    // A wrong token: the head names its token file.
    let out = clean(&mut Command::new(fleet_bin()))
        .args(["status", "--address", &head.address])
        .env("TMPDIR", elsewhere.path())
        .env("FLEET_TOKEN", "not-the-token")
        .output()
        .expect("run fleet");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("FLEET_TOKEN")
            && err.contains("--token-file")
            && err.contains(&head.token_file.display().to_string()),
        "{err}"
    );

    // A driver with a wrong token hears the same.
    let e = fleet::init_with(fleet::Config {
        address: Some(head.address.clone()),
        token: Some("not-the-token".into()),
        ..Default::default()
    })
    .map(|_| ())
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("FLEET_TOKEN") && e.contains("--token-file"),
        "{e}"
    );

    // A head that was killed leaves a stale record: it is not used.
    let Head {
        mut process, tmp, ..
    } = head;
    process.kill();
    let out = local(&["status"], tmp.path());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("none is running"), "{err}");
}

/// Separate machines (network namespaces with their own `/tmp` and
/// `/dev/shm`): a job submitted from host 2 runs on the head's host 0, and
/// one on the node of host 1; the submitter's host then loses its link,
/// and both jobs go on and finish. Output of the node's job comes from
/// host 1 through the head.
#[test]
fn a_job_outlives_the_machine_it_was_submitted_from() {
    use common::hosts::Hosts;
    let Some(hosts) = Hosts::new(3) else {
        return;
    };
    let token = format!("jobs-hosts-{}", std::process::id());
    let ip0 = hosts.ip(0);
    let head = Child::spawn(
        clean(&mut hosts.command(0, &fleet_bin()))
            .args(["start", "--head", "--bind", &ip0, "--node-ip", &ip0])
            .args([
                "--port",
                "0",
                "--no-dashboard",
                "--block",
                "--num-cpus",
                "1",
            ])
            .env("FLEET_TOKEN", &token),
    );
    let address = head.serving_address();
    let ip1 = hosts.ip(1);
    let node = Child::spawn(
        clean(&mut hosts.command(1, &fleet_bin()))
            .args(["start", "--address", &address, "--node-ip", &ip1])
            .args(["--num-cpus", "1", "--block"])
            .env("FLEET_TOKEN", &token),
    );
    let node_name = node.joined_node_name();
    let exe = std::env::current_exe().expect("test executable");
    let exe = exe.to_string_lossy().into_owned();
    // From host 2, which runs nothing of the cluster.
    let submit = |extra: &[&str]| {
        let out = clean(&mut hosts.command(2, &fleet_bin()))
            .args(["job", "submit", "--address", &address])
            .args(extra)
            .args(["--", &exe, "--exact", "job_driver", "--nocapture"])
            .env("FLEET_TOKEN", &token)
            .output()
            .expect("run fleet job submit");
        assert!(
            out.status.success(),
            "submit failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let gate_env = format!("{GATE}=/tmp/job-gate");
    let mode_gate = format!("{MODE}=gate");
    let on_head = submit(&["--env", &mode_gate, "--env", &gate_env]);
    let on_node = submit(&[
        "--node", &node_name, "--env", &mode_gate, "--env", &gate_env,
    ]);
    // Asked from host 0's network (the CLI needs nothing of the host's files).
    let fleet = |args: &[&str]| {
        let out = clean(&mut hosts.net_command(0, &fleet_bin()))
            .args(args)
            .env("FLEET_ADDRESS", &address)
            .env("FLEET_TOKEN", &token)
            .output()
            .expect("run fleet");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for id in [&on_head, &on_node] {
        wait_until(&format!("job {id} to wait at its gate"), GENEROUS, || {
            fleet(&["job", "logs", id])
                .contains("waiting at the gate")
                .then_some(())
        });
    }
    // The submitter's machine goes away.
    hosts.cut(2);
    for id in [&on_head, &on_node] {
        assert!(fleet(&["job", "status", id]).contains("state:      RUNNING"));
    }
    // Open each gate in its machine's own /tmp.
    for pid in [head.child.id(), node.child.id()] {
        let status = Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-m", "--", "touch", "/tmp/job-gate"])
            .status()
            .expect("run nsenter");
        assert!(status.success(), "opening a gate");
    }
    for (id, machine) in [(&on_head, &address), (&on_node, &node_name)] {
        let status = wait_until(&format!("job {id} to succeed"), GENEROUS, || {
            let s = fleet(&["job", "status", id]);
            s.contains("state:      SUCCEEDED").then_some(s)
        });
        assert_eq!(field(&status, "node:"), machine.as_str(), "{status}");
        assert_eq!(field(&status, "exit code:"), "0", "{status}");
        let logs = fleet(&["job", "logs", id]);
        assert!(
            logs.contains("through the gate") && logs.contains("hello from a worker"),
            "{logs}"
        );
    }
    drop(node);
    drop(head);
}
