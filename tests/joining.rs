//! Joining a cluster from a driver: no library call panics when no cluster
//! can be reached (the error arrives at `get`, as `Error::Connection`), and
//! local-cluster settings that a joining driver ignores are named, once.
//!
//! The warning test re-runs this test binary as a separate driver process
//! (`--exact joining_driver --nocapture` with `FLEET_TEST_ROLE=joining`);
//! that helper test does nothing otherwise. Every test runs in its own
//! process under nextest, so setting `FLEET_ADDRESS` here touches no other.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use common::cli::CliCluster;
use common::{bounded, GENEROUS};
use fleet::{remote, Error};

/// Selects the helper role of [`joining_driver`].
const ROLE_VAR: &str = "FLEET_TEST_ROLE";
/// The line the helper driver prints when its tasks ran.
const DONE_LINE: &str = "FLEET_TEST_JOINED_AND_RAN";

#[remote]
fn square(x: u64) -> u64 {
    x * x
}

/// An address on loopback where nothing listens.
fn closed_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    drop(listener);
    format!("127.0.0.1:{port}")
}

#[test]
fn remote_without_a_reachable_cluster_fails_at_get_not_with_a_panic() {
    let address = closed_address();
    std::env::set_var(fleet::ENV_ADDRESS, &address);
    let r = square::remote(3);
    match fleet::get(&r) {
        Err(Error::Connection(m)) => {
            assert!(m.contains(&address), "the error names the address: {m}");
            assert!(m.contains("FLEET_ADDRESS"), "the error names the fix: {m}");
        }
        other => panic!("expected Error::Connection, got {other:?}"),
    }
    // Every other entry point says the same, none panics.
    for r in square::map([1u64, 2]) {
        assert!(matches!(fleet::get(&r), Err(Error::Connection(_))));
    }
    assert!(matches!(
        fleet::get_timeout(&square::remote(4), GENEROUS),
        Err(Error::Connection(_))
    ));
    assert!(matches!(fleet::put(5u64), Err(Error::Connection(_))));
    assert!(matches!(fleet::init(), Err(Error::Connection(_))));
}

/// Helper driver: joins the cluster named by `FLEET_ADDRESS` with
/// local-cluster settings (ignored there), twice, and runs a task each time.
#[test]
fn joining_driver() {
    if std::env::var(ROLE_VAR).as_deref() != Ok("joining") {
        return;
    }
    for _ in 0..2 {
        let cluster = fleet::init_with(fleet::Config {
            num_cpus: Some(2),
            object_store_bytes: Some(64 << 20),
            ..Default::default()
        })
        .expect("join the cluster");
        assert_eq!(
            fleet::get_timeout(&square::remote(7), GENEROUS).expect("get"),
            49
        );
        drop(cluster);
    }
    println!("{DONE_LINE}");
}

#[test]
fn settings_a_joining_driver_ignores_are_named_once() {
    let cluster = CliCluster::start(1, &[]);
    let exe = std::env::current_exe().expect("test executable");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", "joining_driver", "--nocapture"])
        .env(ROLE_VAR, "joining")
        .env(fleet::ENV_ADDRESS, &cluster.address)
        .env(fleet::ENV_TOKEN, &cluster.token)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: prctl is async-signal-safe. If this test dies, so does the driver.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let out = bounded("the joining driver", GENEROUS, move || {
        cmd.output().expect("run the joining driver")
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(DONE_LINE),
        "the driver failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("Config::num_cpus"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning, got:\n{stderr}");
    let w = warnings[0];
    assert!(w.contains("WARN"), "{w}");
    assert!(w.contains("Config::object_store_bytes"), "{w}");
    assert!(w.contains("FLEET_ADDRESS"), "{w}");
    assert!(w.contains(&cluster.address), "{w}");
}
