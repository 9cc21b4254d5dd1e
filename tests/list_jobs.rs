//! `fleet list jobs` against a CLI cluster (`fleet start --head` and a
//! node agent): jobs submitted with `fleet job submit` (state, entrypoint,
//! node, times, exit code) listed with the drivers connected now, a
//! submitted job's driver shown once (with its workers), and the filters
//! of `fleet list`.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::cli::{fleet_bin, CliCluster};
use common::{wait_for_path, wait_until, GENEROUS};
use serde_json::Value;

use fleet::remote;

#[remote]
fn double(x: u64) -> u64 {
    x * 2
}

/// A file whose appearance lets the submitted driver finish.
const GATE: &str = "FLEET_TEST_LIST_JOBS_GATE";

/// Not a test on its own: the body of the submitted job's driver.
#[test]
fn list_jobs_driver() {
    let Ok(gate) = std::env::var(GATE) else {
        return;
    };
    let _c = fleet::init().expect("the job's driver joins");
    println!(
        "RESULT {}",
        fleet::get(&double::remote(21)).expect("a task")
    );
    // A task held by the gate keeps a worker of the job busy.
    let held = gated::remote(gate);
    assert_eq!(fleet::get(&held).expect("the gated task"), 1);
}

#[remote]
fn gated(gate: String) -> u64 {
    wait_for_path(&PathBuf::from(gate));
    1
}

fn fleet(c: &CliCluster, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(fleet_bin())
        .args(args)
        .env("FLEET_ADDRESS", &c.address)
        .env("FLEET_TOKEN", &c.token)
        .env_remove(fleet::ENV_JOB_ID)
        .env_remove(GATE)
        .output()
        .expect("run fleet");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(c: &CliCluster, args: &[&str]) -> String {
    let (ok, out, err) = fleet(c, args);
    assert!(ok, "fleet {args:?} failed: {err}");
    out
}

fn rows(c: &CliCluster, args: &[&str]) -> Vec<Value> {
    let mut a = vec!["list", "jobs", "--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&ok(c, &a)).expect("JSON rows")
}

fn row<'a>(rows: &'a [Value], id: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("{id} in {rows:?}"))
}

fn wait_job(c: &CliCluster, id: &str, state: &str) {
    wait_until(&format!("job {id} to be {state}"), GENEROUS, || {
        ok(c, &["job", "status", id])
            .contains(&format!("state:      {state}\n"))
            .then_some(())
    });
}

#[test]
fn fleet_list_jobs_shows_submitted_jobs_and_drivers() {
    let mut c = CliCluster::start(1, &[]);
    let node = c.add_node("127.0.0.2", 1);
    let gate = tempfile::tempdir().expect("temp dir");
    let gate_path = gate.path().join("open");

    // A job that fails at once, on the head's machine.
    let failing = ok(
        &c,
        &["job", "submit", "--", "/bin/sh", "-c", "echo bye; exit 3"],
    )
    .trim()
    .to_string();
    wait_job(&c, &failing, "FAILED");

    // A Fleet driver on the node, held at a gate.
    let exe = std::env::current_exe().expect("test executable");
    let gate_env = format!("{GATE}={}", gate_path.display());
    let held = ok(
        &c,
        &[
            "job",
            "submit",
            "--node",
            &node,
            "--env",
            &gate_env,
            "--",
            &exe.to_string_lossy(),
            "--exact",
            "list_jobs_driver",
            "--nocapture",
        ],
    )
    .trim()
    .to_string();
    wait_until("the held job's driver to run its task", GENEROUS, || {
        ok(&c, &["job", "logs", &held])
            .contains("RESULT 42")
            .then_some(())
    });
    // This test joins too: a driver that was not submitted.
    let _me = c.join();

    let all = wait_until("the held job's driver to be linked", GENEROUS, || {
        let all = rows(&c, &[]);
        let h = row(&all, &held);
        (h["driver_job"].is_u64() && h["unfinished_tasks"] == 1).then_some(all)
    });
    let f = row(&all, &failing);
    assert_eq!(f["type"], "submitted");
    assert_eq!(f["state"], "FAILED");
    assert_eq!(f["exit_code"], 3);
    assert_eq!(f["node"], c.address.as_str());
    assert!(
        f["entrypoint"]
            .as_str()
            .unwrap()
            .ends_with("sh -c echo bye; exit 3"),
        "{f}"
    );
    assert!(f["end_millis"].as_u64() >= f["start_millis"].as_u64());
    assert!(f["workers"].is_null(), "{f}");

    let h = row(&all, &held);
    assert_eq!(h["type"], "submitted");
    assert_eq!(h["state"], "RUNNING");
    assert_eq!(h["node"], node.as_str());
    assert!(h["exit_code"].is_null() && h["end_millis"].is_null(), "{h}");
    assert!(
        h["workers"].as_u64() >= Some(1),
        "its driver's workers: {h}"
    );
    // Its driver is that row, not another one.
    let driver_job = h["driver_job"].clone();
    let others: Vec<&Value> = all
        .iter()
        .filter(|r| r["driver_job"] == driver_job)
        .collect();
    assert_eq!(others.len(), 1, "{all:?}");
    let drivers: Vec<&Value> = all.iter().filter(|r| r["type"] == "driver").collect();
    assert_eq!(drivers.len(), 1, "this test's own driver: {all:?}");
    assert_eq!(drivers[0]["state"], "RUNNING");

    // The filters of `fleet list`.
    let failed = rows(&c, &["--state", "failed"]);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["id"], failing.as_str());
    let running = rows(&c, &["--state", "running"]);
    assert_eq!(
        running.len(),
        2,
        "the held job and this driver: {running:?}"
    );
    let on_node = rows(&c, &["--node", &node]);
    assert_eq!(on_node.len(), 1, "{on_node:?}");
    assert_eq!(on_node[0]["id"], held.as_str());
    let by_entrypoint = rows(&c, &["--function", "list_jobs_driver"]);
    assert_eq!(by_entrypoint.len(), 1, "{by_entrypoint:?}");
    assert_eq!(rows(&c, &["--limit", "1"]).len(), 1);

    // The table: times in UTC, one line per job.
    let table = ok(&c, &["list", "jobs"]);
    let header = table.lines().next().expect("a header");
    assert!(
        header.contains("STATE") && header.contains("ENTRYPOINT") && header.contains("START (UTC)"),
        "{table}"
    );
    let failed_line = table
        .lines()
        .find(|l| l.contains(&failing))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(failed_line.contains("FAILED"), "{failed_line}");
    assert!(
        failed_line.contains(" 20") && failed_line.contains(':'),
        "a date: {failed_line}"
    );
    assert!(table.contains("3 of 3 rows"), "{table}");

    // The held job ends: its record says how.
    std::fs::write(&gate_path, b"open").expect("open the gate");
    wait_job(&c, &held, "SUCCEEDED");
    let all = rows(&c, &[]);
    let h = row(&all, &held);
    assert_eq!(h["state"], "SUCCEEDED");
    assert_eq!(h["exit_code"], 0);
    assert!(h["end_millis"].as_u64() >= h["start_millis"].as_u64());
}
