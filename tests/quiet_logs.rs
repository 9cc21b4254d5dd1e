//! What the terminal and the logs say: nothing at WARN when nothing is
//! wrong (a job's end, an intentional shutdown), a worker that really died
//! named with its exit code and what became of its task, no colour codes
//! outside a terminal, and workers that `ps` names as such.
//!
//! The driver tests re-run this test binary as a separate driver process
//! (`--exact quiet_driver --nocapture` with `FLEET_TEST_ROLE=<role>`), so
//! its stderr can be read; that helper test does nothing otherwise.

mod common;

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};

use common::cli::{fleet_bin, Child};
use common::{bounded, cluster, wait_until, GENEROUS};
use fleet::remote;

/// Selects the helper role of [`quiet_driver`].
const ROLE_VAR: &str = "FLEET_TEST_ROLE";
/// Where a `dies_once` task leaves its mark.
const MARK_VAR: &str = "FLEET_TEST_MARK";
/// The line the helper driver prints when it is done.
const DONE_LINE: &str = "FLEET_TEST_DRIVER_DONE";
/// The line on which a joining driver prints its workers' pids.
const PIDS_LINE: &str = "FLEET_TEST_PIDS";

#[remote]
fn square(x: u64) -> u64 {
    x * x
}

/// The worker's process id.
#[remote]
fn pid() -> u32 {
    std::process::id()
}

/// Kills its own worker process (exit code 3) the first time, then returns.
#[remote]
fn dies_once(mark: String) -> u32 {
    if std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&mark)
        .is_ok()
    {
        std::process::exit(3);
    }
    7
}

/// The helper driver; what it does depends on `FLEET_TEST_ROLE`.
#[test]
fn quiet_driver() {
    let Ok(role) = std::env::var(ROLE_VAR) else {
        return;
    };
    match role.as_str() {
        // A local cluster, a task whose worker dies once, a normal end.
        "dies" => {
            let c = cluster(2);
            let squares = fleet::get_all_timeout(&square::map(0..20u64), GENEROUS).expect("get");
            assert_eq!(squares[19], 361);
            let mark = std::env::var(MARK_VAR).expect("mark path");
            let r = dies_once::remote(mark);
            assert_eq!(fleet::get_timeout(&r, GENEROUS).expect("retried"), 7);
            drop(c);
        }
        // Local clusters shut down while their workers are still starting.
        "shutdown" => {
            // Many CPUs: many workers start at once, and the last are
            // still starting when the cluster stops.
            for _ in 0..10 {
                let c = cluster(16);
                let _refs = square::map(0..32u64);
                drop(c);
            }
        }
        // Joins the cluster in FLEET_ADDRESS, runs tasks, leaves.
        "job" => {
            let c = fleet::init().expect("join");
            let pids = fleet::get_all_timeout(
                &(0..8).map(|_| pid::remote()).collect::<Vec<_>>(),
                GENEROUS,
            )
            .expect("pids");
            let mut pids: Vec<String> = pids.iter().map(u32::to_string).collect();
            pids.sort();
            pids.dedup();
            println!("{PIDS_LINE} {}", pids.join(" "));
            drop(c);
        }
        other => panic!("unknown role {other}"),
    }
    println!("{DONE_LINE}");
    let _ = std::io::stdout().flush();
}

/// Runs [`quiet_driver`] in `role` with `env`; returns its output.
fn run_driver(role: &str, env: &[(&str, &str)]) -> Output {
    let exe = std::env::current_exe().expect("test executable");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", "quiet_driver", "--nocapture"])
        .env(ROLE_VAR, role)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .env("FLEET_DASHBOARD", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    // SAFETY: prctl is async-signal-safe. If this test dies, so does the driver.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let out = bounded("the helper driver", GENEROUS, move || {
        cmd.output().expect("run the helper driver")
    });
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(DONE_LINE),
        "the {role} driver failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn a_dead_worker_is_named_once_with_its_exit_code_and_its_task_retry() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mark = dir.path().join("died");
    let out = run_driver("dies", &[(MARK_VAR, mark.to_str().expect("utf-8 path"))]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in redirected stderr:\n{stderr:?}"
    );
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "exactly one warning:\n{stderr}");
    let w = warnings[0];
    for part in [
        "exited with code 3",
        "dies_once",
        "task retried, attempt 2 of 4",
    ] {
        assert!(w.contains(part), "the warning names {part:?}: {w}");
    }
    assert!(!stderr.contains("worker died"), "{stderr}");
}

#[test]
fn an_intentional_shutdown_prints_nothing() {
    let out = run_driver("shutdown", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let unexpected: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("fleet: local cluster with "))
        .collect();
    assert!(
        unexpected.is_empty(),
        "a shutdown printed:\n{}",
        unexpected.join("\n")
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("fleet worker"),
        "a shutdown printed:\n{stdout}"
    );
}

#[test]
fn a_job_that_ends_normally_leaves_no_warning_in_the_heads_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("head.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let token = format!("quiet-logs-{}", std::process::id());
    let head = Child::spawn(
        Command::new(fleet_bin())
            .args(["start", "--head", "--port", "0", "--dashboard-port", "0"])
            .args(["--num-cpus", "2", "--block", "--token-file"])
            .arg(dir.path().join("token"))
            .env("FLEET_TOKEN", &token)
            .env("RUST_LOG", "fleet=debug")
            .env_remove("NO_COLOR")
            .stderr(log),
    );
    let line = head.expect_line("serving at");
    let address = line.rsplit(' ').next().expect("address").to_string();

    let out = run_driver(
        "job",
        &[
            (fleet::ENV_ADDRESS, address.as_str()),
            (fleet::ENV_TOKEN, token.as_str()),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pids: Vec<String> = stdout
        .lines()
        .find_map(|l| l.strip_prefix(PIDS_LINE))
        .expect("the driver printed its workers' pids")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert!(!pids.is_empty());
    // The head says (at debug) that each worker left because its job ended.
    let read = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_until("every worker of the job to leave", GENEROUS, || {
        let text = read();
        pids.iter()
            .all(|p| {
                text.lines()
                    .any(|l| l.contains("worker left: job") && l.contains(&format!("pid={p}")))
            })
            .then_some(())
    });
    let text = read();
    assert!(!text.contains('\u{1b}'), "colour codes in a log file");
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert!(
        warnings.is_empty(),
        "warnings on a normal job end:\n{}",
        warnings.join("\n")
    );
    drop(head);
}

#[test]
fn ps_names_workers_as_fleet_workers_of_a_job() {
    let _c = cluster(1);
    let pid = fleet::get_timeout(&pid::remote(), GENEROUS).expect("pid");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    let cmdline = String::from_utf8_lossy(&cmdline);
    let program = std::env::current_exe().expect("test executable");
    let name = program
        .file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned();
    let title = cmdline.trim_end_matches('\0');
    assert!(
        title.starts_with(&name) && title.contains("[fleet worker ") && title.contains(", job "),
        "worker {pid} shows as {title:?}"
    );
    assert_ne!(title, program.to_string_lossy(), "{title}");
}
