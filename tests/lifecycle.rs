//! Cluster lifecycle: a second `init` joins the running cluster, dropping
//! the guard leaves no worker process behind, a new cluster can start after
//! that, and SIGKILL of the driver takes its workers down too.
//!
//! The driver-kill test re-runs this test binary as a separate driver
//! process (`--exact driver_process --nocapture` with
//! `FLEET_TEST_ROLE=driver`); that helper test does nothing otherwise.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{cluster, sigkill, wait_all_gone, wait_until, Proc, ProcState, GENEROUS};
use fleet::remote;

/// Selects the helper role of [`driver_process`].
const ROLE_VAR: &str = "FLEET_TEST_ROLE";
/// Prefix of the line on which the helper driver prints its worker pids.
const PIDS_LINE: &str = "FLEET_TEST_WORKER_PIDS";
/// The helper driver exits on its own after this long, whatever happens.
const HELPER_LIFETIME: Duration = Duration::from_secs(600);

#[remote]
fn square(x: u64) -> u64 {
    x * x
}

/// Runs a few tasks, then waits until the pool has `n` live workers and
/// returns their processes.
fn workers_up(c: &fleet::Cluster, n: usize) -> Vec<Proc> {
    let refs: Vec<_> = (0..20u64).map(square::remote).collect();
    fleet::get_all_timeout(&refs, Some(GENEROUS)).expect("get_all");
    wait_until(&format!("{n} live workers"), GENEROUS, || {
        let pids = c.worker_pids();
        let procs: Vec<Proc> = pids.iter().filter_map(|p| Proc::of(*p)).collect();
        (pids.len() == n && procs.len() == n).then_some(procs)
    })
}

#[test]
fn a_second_init_returns_the_same_cluster() {
    let a = cluster(2);
    let b = fleet::init().expect("second init");
    assert_eq!(a.address(), b.address());
    workers_up(&a, 2);
    let mut pa = a.worker_pids();
    let mut pb = b.worker_pids();
    pa.sort_unstable();
    pb.sort_unstable();
    assert_eq!(pa, pb);
    drop(a);
    // `b` still holds the cluster up.
    assert_eq!(
        fleet::get_timeout(&square::remote(9), Some(GENEROUS)).expect("get"),
        81
    );
}

#[test]
fn no_worker_is_left_after_the_guard_drops() {
    let c = cluster(2);
    let workers = workers_up(&c, 2);
    drop(c);
    // The supervisor is their parent and reaps them: they must leave the
    // process table, not linger as zombies.
    wait_all_gone(&workers, false, GENEROUS);
}

#[test]
fn a_new_cluster_starts_after_the_old_one_is_dropped() {
    let first = cluster(2);
    let old = workers_up(&first, 2);
    drop(first);
    wait_all_gone(&old, false, GENEROUS);

    let second = cluster(2);
    let new = workers_up(&second, 2);
    assert!(new.iter().all(|p| !old.contains(p)));
    assert_eq!(
        fleet::get_timeout(&square::remote(12), Some(GENEROUS)).expect("get"),
        144
    );
}

/// Reaps `pid` if it is a dead child of this process (a subreaper).
fn reap(pid: u32) {
    let mut status = 0;
    // SAFETY: waitpid on one pid with WNOHANG; `status` is a valid pointer.
    unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
}

/// Kills and reaps the child when dropped, so no helper process outlives
/// the test even when an assertion fails half way.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Not a test of its own: the driver process of
/// [`workers_die_when_the_driver_is_killed`]. Does nothing unless
/// `FLEET_TEST_ROLE=driver`.
#[test]
fn driver_process() {
    if std::env::var(ROLE_VAR).as_deref() != Ok("driver") {
        return;
    }
    let c = cluster(2);
    let workers = workers_up(&c, 2);
    let pids: Vec<String> = workers.iter().map(|p| p.pid.to_string()).collect();
    println!("{PIDS_LINE} {}", pids.join(" "));
    use std::io::Write;
    std::io::stdout().flush().expect("flushing stdout");
    // Wait to be killed; give up eventually so nothing can linger forever.
    std::thread::sleep(HELPER_LIFETIME);
    std::process::exit(1);
}

#[test]
fn workers_die_when_the_driver_is_killed() {
    // Become the subreaper of the driver's orphans, so the workers are
    // reparented to this process and can be reaped here, not left as
    // zombies under a container's init.
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    assert_eq!(
        rc,
        0,
        "PR_SET_CHILD_SUBREAPER: {}",
        std::io::Error::last_os_error()
    );
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", "driver_process", "--nocapture"])
        .env(ROLE_VAR, "driver")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    // SAFETY: prctl is async-signal-safe. If this test process dies, so
    // does the helper.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut driver = KillOnDrop(cmd.spawn().expect("starting the driver process"));
    let driver_pid = driver.0.id();
    let driver_proc = Proc::of(driver_pid).expect("the driver is running");

    // Read its stdout on a thread so the wait for the pid line is bounded.
    let stdout = driver.0.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix(PIDS_LINE) {
                let _ = tx.send(rest.to_string());
            }
        }
    });
    let line = rx
        .recv_timeout(GENEROUS)
        .expect("the driver process did not print its worker pids");
    let pids: Vec<u32> = line
        .split_whitespace()
        .map(|p| p.parse().expect("a pid"))
        .collect();
    assert_eq!(pids.len(), 2, "worker pids: {line}");
    let workers: Vec<Proc> = pids
        .iter()
        .map(|p| Proc::of(*p).unwrap_or_else(|| panic!("worker {p} is not running")))
        .collect();

    sigkill(driver_pid);
    let status = driver.0.wait().expect("reaping the driver");
    assert!(!status.success(), "driver status: {status}");
    assert!(driver_proc.is_dead());
    // The orphaned workers must die; reap them as they do.
    wait_until("every worker of the killed driver to die", GENEROUS, || {
        for p in &workers {
            reap(p.pid);
        }
        workers
            .iter()
            .all(|p| p.state() == ProcState::Gone)
            .then_some(())
    });
    drop(driver);
    wait_all_gone(&[driver_proc], false, GENEROUS);
}
