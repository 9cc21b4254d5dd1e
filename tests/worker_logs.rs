//! Every worker's output kept in a file on its node, and `fleet logs
//! --pid|--task|--actor` reading it through the head: against CLI
//! clusters (`fleet start --head` and a separate node agent process), on
//! separate hosts (network namespaces, each with its own `/tmp`) where
//! the worker runs on another machine than the one asking, and with
//! rotation at a small size limit.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::cli::{fleet_bin, fresh_token, spawn_head, Child};
use common::{wait_for_path, wait_until, GENEROUS};

use fleet::remote;

#[remote]
fn chatty(lines: u64) -> u64 {
    for i in 0..lines {
        println!("chatty line {i}");
    }
    eprintln!("chatty says this on stderr");
    lines
}

#[remote]
fn flood(lines: u64) -> u64 {
    for i in 0..lines {
        println!("flood {i:04} {}", "x".repeat(90));
    }
    lines
}

#[remote]
struct Talker {
    said: u64,
}

#[remote]
impl Talker {
    fn new() -> Self {
        Talker { said: 0 }
    }

    fn say(&mut self, what: String) -> u64 {
        println!("talker says {what}");
        self.said += 1;
        self.said
    }
}

/// Selects this executable's role as a driver process on another host.
const ROLE: &str = "FLEET_TEST_WORKER_LOGS_ROLE";
/// Folder (in the driver's own `/tmp`) where its gates appear.
const GATES: &str = "FLEET_TEST_WORKER_LOGS_GATES";

/// Not a test on its own: the body of the driver of
/// `fleet_logs_reads_a_worker_on_another_host_through_the_head`.
#[test]
fn worker_logs_driver() {
    if std::env::var(ROLE).is_err() {
        return;
    }
    let gates = PathBuf::from(std::env::var(GATES).expect("gates folder"));
    let _c = fleet::init().expect("the driver joins its cluster");
    let r = chatty::remote(20);
    assert_eq!(fleet::get(&r).expect("chatty"), 20);
    println!("TASK {:016x}", r.id().as_u64());
    let t = Talker::options()
        .name("talker")
        .remote()
        .expect("create the actor");
    fleet::get(&t.say("first")).expect("say first");
    println!("ACTOR ready");
    wait_for_path(&gates.join("second"));
    fleet::get(&t.say("second")).expect("say second");
    println!("SAID second");
    wait_for_path(&gates.join("exit"));
}

/// `fleet logs ARGS` run by `cmd`; (success, stdout, stderr).
fn run(cmd: &mut Command) -> (bool, String, String) {
    let out: Output = cmd.output().expect("run fleet logs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `sh -c script` in the mount namespace of process `pid` (another
/// host's own `/tmp`).
fn on_host_of(pid: u32, script: &str) -> String {
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "--", "sh", "-c", script])
        .output()
        .expect("run nsenter");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Separate machines: the head on host 0 offers no CPUs, so the work runs
/// on the node agent of host 1; the driver runs on host 0 and `fleet logs`
/// on host 2, which shares no file with host 1.
#[test]
fn fleet_logs_reads_a_worker_on_another_host_through_the_head() {
    use common::hosts::Hosts;
    let Some(hosts) = Hosts::new(3) else {
        return;
    };
    let token = fresh_token();
    let ip0 = hosts.ip(0);
    let head = Child::spawn(
        hosts
            .command(0, &fleet_bin())
            .args(["start", "--head", "--bind", &ip0, "--node-ip", &ip0])
            .args(["--port", "0", "--no-dashboard", "--block"])
            .args(["--num-cpus", "0"])
            .env("FLEET_TOKEN", &token),
    );
    let address = head.serving_address();
    let ip1 = hosts.ip(1);
    let node = Child::spawn(
        hosts
            .command(1, &fleet_bin())
            .args(["start", "--address", &address, "--node-ip", &ip1])
            .args(["--num-cpus", "2", "--block"])
            .env("FLEET_TOKEN", &token),
    );
    let node_name = node.joined_node_name();
    let exe = std::env::current_exe().expect("test executable");
    let driver = Child::spawn(
        hosts
            .command(0, &exe)
            .args(["--exact", "worker_logs_driver", "--nocapture"])
            .env(ROLE, "driver")
            .env(GATES, "/tmp")
            .env("FLEET_ADDRESS", &address)
            .env("FLEET_TOKEN", &token),
    );
    let task = driver
        .expect_line("TASK ")
        .split_whitespace()
        .nth(1)
        .expect("task id")
        .to_string();
    driver.expect_line("ACTOR ready");

    let logs = |args: &[&str]| {
        run(hosts
            .net_command(2, &fleet_bin())
            .arg("logs")
            .args(args)
            .args(["--address", &address])
            .env("FLEET_TOKEN", &token))
    };

    // By task: the worker's stdout and stderr, from host 1 (the lines
    // travel apart from the result, so they may come a little later).
    let (ok, out, err) = wait_until("the task's lines in its file", GENEROUS, || {
        let r = logs(&["--task", &task]);
        (!r.0 || r.1.contains("chatty says this on stderr") && r.1.contains("chatty line 19"))
            .then_some(r)
    });
    assert!(ok, "fleet logs --task failed: {err}");
    for i in 0..20 {
        assert!(out.contains(&format!("chatty line {i}\n")), "{out}");
    }
    assert!(out.contains("chatty says this on stderr"), "{out}");
    assert!(err.contains(&node_name), "it says which node ran it: {err}");
    let pid: String = err
        .split("pid ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("it says the worker's pid")
        .to_string();

    // The file is on host 1, named by the worker's pid.
    let files = on_host_of(node.child.id(), "ls /tmp/fleet-*/logs/node-*/");
    assert!(
        files.contains(&format!("worker-{pid}.log")),
        "the node keeps the worker's file: {files}"
    );
    let kept = on_host_of(
        node.child.id(),
        &format!("cat /tmp/fleet-*/logs/node-*/worker-{pid}.log"),
    );
    assert!(kept.contains("chatty line 19"), "{kept}");

    // The last lines only, and by pid.
    let full = out;
    let (ok, out, err) = logs(&["--task", &task, "--tail", "2"]);
    assert!(ok, "{err}");
    let last_two: Vec<&str> = full.lines().rev().take(2).collect();
    let tail: Vec<&str> = out.lines().rev().collect();
    assert_eq!(tail, last_two, "--tail 2 of {full}");
    let (ok, out, err) = logs(&["--pid", &pid]);
    assert!(ok, "{err}");
    assert!(out.contains("chatty line 0"), "{out}");
    let (ok, out, err) = logs(&["--pid", &pid, "--node", &node_name]);
    assert!(ok, "{err}");
    assert!(out.contains("chatty line 0"), "{out}");

    // By actor name, following: a line printed later arrives.
    wait_until("the actor's line in its file", GENEROUS, || {
        let (ok, out, err) = logs(&["--actor", "talker"]);
        assert!(ok, "{err}");
        out.contains("talker says first").then_some(())
    });
    let follow = Child::spawn(
        hosts
            .net_command(2, &fleet_bin())
            .args(["logs", "--actor", "talker", "--follow"])
            .args(["--address", &address])
            .env("FLEET_TOKEN", &token),
    );
    follow.expect_line("talker says first");
    on_host_of(driver.child.id(), "touch /tmp/second");
    follow.expect_line("talker says second");
    driver.expect_line("SAID second");

    // Names that match nothing get a clear error.
    let (ok, _, err) = logs(&["--task", "00000000deadbeef"]);
    assert!(!ok);
    assert!(
        err.contains("no task 00000000deadbeef") && err.contains("fleet list tasks"),
        "{err}"
    );
    let (ok, _, err) = logs(&["--task", "not-hex"]);
    assert!(!ok);
    assert!(err.contains("not a task id"), "{err}");
    let (ok, _, err) = logs(&["--actor", "nobody"]);
    assert!(!ok);
    assert!(
        err.contains("no actor named `nobody`") && err.contains("talker"),
        "{err}"
    );
    let (ok, _, err) = logs(&["--pid", "1"]);
    assert!(!ok);
    assert!(err.contains("--node"), "{err}");
    let (ok, _, err) = logs(&[]);
    assert!(!ok);
    assert!(err.contains("--pid") && err.contains("--task"), "{err}");

    // The driver exits, its actor's worker with it: the follow ends.
    on_host_of(driver.child.id(), "touch /tmp/exit");
    let mut follow = follow;
    let status = wait_until("`fleet logs --follow` to end", GENEROUS, || {
        follow.child.try_wait().expect("wait")
    });
    assert!(status.success());
    drop(driver);
    drop(node);
    drop(head);
}

/// A node agent with a runtime folder of its own and `env`.
fn node_with(address: &str, token: &str, ip: &str, tmp: &Path, env: &[(&str, &str)]) -> Child {
    Child::spawn(
        Command::new(fleet_bin())
            .args(["start", "--address", address, "--node-ip", ip])
            .args(["--num-cpus", "1", "--block"])
            .env("TMPDIR", tmp)
            .env("FLEET_TOKEN", token)
            .envs(env.iter().copied()),
    )
}

/// A separate node agent process rotates its workers' files at
/// `FLEET_WORKER_LOG_MAX_BYTES`, keeping `FLEET_WORKER_LOG_BACKUPS`.
#[test]
fn worker_files_rotate_at_the_size_limit() {
    let token = fresh_token();
    let dir = tempfile::tempdir().expect("temp dir");
    let (_head, address, _) = spawn_head(0, &token, &dir.path().join("token"), 0, &[]);
    let node_tmp = tempfile::tempdir().expect("node's folder");
    let node = node_with(
        &address,
        &token,
        "127.0.0.2",
        node_tmp.path(),
        &[
            ("FLEET_WORKER_LOG_MAX_BYTES", "4KiB"),
            ("FLEET_WORKER_LOG_BACKUPS", "2"),
        ],
    );
    let node_name = node.joined_node_name();
    let _c = fleet::init_with(fleet::Config {
        address: Some(address.clone()),
        token: Some(token.clone()),
        ..Default::default()
    })
    .expect("join");
    // 200 lines of 100 bytes: 20 KB through a 4 KiB limit.
    let r = flood::remote(200);
    assert_eq!(fleet::get(&r).expect("flood"), 200);
    let task = format!("{:016x}", r.id().as_u64());

    let logs = |args: &[&str]| {
        run(Command::new(fleet_bin())
            .arg("logs")
            .args(args)
            .args(["--address", &address])
            .env("FLEET_TOKEN", &token))
    };
    // The last lines come from the newest file.
    let (ok, out, err) = wait_until("the last line in the file", GENEROUS, || {
        let r = logs(&["--task", &task, "--tail", "3"]);
        r.1.contains("flood 0199").then_some(r)
    });
    assert!(ok, "{err}");
    assert!(err.contains(&node_name), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("flood 0197"), "{out}");

    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let folder = node_tmp.path().join(format!("fleet-{uid}")).join("logs");
    let node_dir = std::fs::read_dir(&folder)
        .expect("logs folder")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("node-"))
        .expect("the node's folder")
        .path();
    let pid = err
        .split("pid ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("pid")
        .to_string();
    let file = |suffix: &str| node_dir.join(format!("worker-{pid}.log{suffix}"));
    for suffix in ["", ".1", ".2"] {
        let len = std::fs::metadata(file(suffix))
            .unwrap_or_else(|e| panic!("{}: {e}", file(suffix).display()))
            .len();
        assert!(len > 0 && len <= 4096, "{suffix}: {len} bytes");
    }
    assert!(!file(".3").exists(), "only two backups are kept");
    let newest = std::fs::read_to_string(file("")).expect("newest");
    assert!(newest.ends_with(&format!("flood 0199 {}\n", "x".repeat(90))));
    // The whole output through the head is the newest file.
    let (ok, out, _) = logs(&["--pid", &pid, "--node", &node_name]);
    assert!(ok);
    assert_eq!(out, newest);
}

/// A bad size is refused where the node agent starts, naming the variable.
#[test]
fn a_bad_rotation_setting_is_refused_naming_it() {
    let token = fresh_token();
    let dir = tempfile::tempdir().expect("temp dir");
    let (_head, address, _) = spawn_head(0, &token, &dir.path().join("token"), 0, &[]);
    for (var, value) in [
        ("FLEET_WORKER_LOG_MAX_BYTES", "lots"),
        ("FLEET_WORKER_LOG_MAX_BYTES", "12"),
        ("FLEET_WORKER_LOG_BACKUPS", "-1"),
    ] {
        let out = Command::new(fleet_bin())
            .args(["start", "--address", &address, "--node-ip", "127.0.0.3"])
            .args(["--num-cpus", "1", "--block"])
            .env("TMPDIR", dir.path())
            .env("FLEET_TOKEN", &token)
            .env(var, value)
            .output()
            .expect("run fleet start");
        assert!(!out.status.success(), "{var}={value} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(var) && err.contains(value) && !err.contains("panicked"),
            "{var}={value}: {err}"
        );
    }
    // And where a head starts.
    let out = Command::new(fleet_bin())
        .args([
            "start",
            "--head",
            "--port",
            "0",
            "--no-dashboard",
            "--block",
        ])
        .env("TMPDIR", dir.path())
        .env("FLEET_TOKEN", &token)
        .env("FLEET_WORKER_LOG_MAX_BYTES", "lots")
        .output()
        .expect("run fleet start --head");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("FLEET_WORKER_LOG_MAX_BYTES"), "{err}");
}
