//! Fleet on a real Slurm cluster (Debian's slurm-wlm and munge, started by
//! `common::slurm` on this machine, three nodes n1..n3 on 127.0.0.1..3):
//! the sbatch recipe `deploy/slurm/fleet.sbatch` running a driver, and the
//! head's autoscaler growing the cluster from zero Slurm node jobs to three
//! and back. Skipped, saying so, where Slurm is not installed.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::cli::{fleet_bin, Child};
use common::slurm::{Slurm, NODES, NODE_CPUS, NODE_IP_CMD};
use common::GENEROUS;

use fleet::{remote, Config};

/// The square of `x`, after `pause_ms`, and the node that computed it.
#[remote]
fn square_on(x: u64, pause_ms: u64) -> (u64, String) {
    std::thread::sleep(Duration::from_millis(pause_ms));
    (x * x, fleet::current_node().unwrap_or_default())
}

/// The address part of a node name ("127.0.0.2:4567" → "127.0.0.2").
fn ip(node: &str) -> String {
    node.rsplit_once(':').map_or(node, |(ip, _)| ip).to_string()
}

/// Tasks of the autoscaler's burst.
const TASKS: u64 = 10;

const DRIVER_ENV: &str = "FLEET_SLURM_TEST_DRIVER_EXIT";
const DRIVER_TASKS: u64 = 36;

/// Not a test on its own: the driver the sbatch recipe runs. It joins the
/// cluster in FLEET_ADDRESS, squares numbers on it, prints the sum and the
/// nodes that worked, and exits with the code in its environment.
#[test]
fn driver_role() {
    let Ok(code) = std::env::var(DRIVER_ENV) else {
        return;
    };
    let _c = fleet::init().expect("join the cluster at FLEET_ADDRESS");
    let refs: Vec<_> = (0..DRIVER_TASKS)
        .map(|x| square_on::remote(x, 200))
        .collect();
    let results = fleet::get_all(&refs).expect("results");
    let sum: u64 = results.iter().map(|r| r.0).sum();
    let mut nodes: Vec<String> = results
        .iter()
        .map(|r| ip(&r.1))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    nodes.sort();
    let address = std::env::var("FLEET_ADDRESS").expect("FLEET_ADDRESS");
    let token = std::env::var("FLEET_TOKEN").expect("FLEET_TOKEN");
    let status = fleet::daemon::status(&address, &token).expect("status");
    let cpus: f64 = status.nodes.iter().map(|n| n.num_cpus).sum();
    println!("RESULT sum={sum} nodes={} cpus={cpus}", nodes.join(","));
    drop(_c);
    std::process::exit(code.parse().expect("an exit code"));
}

#[test]
fn sbatch_recipe_runs_a_driver_on_three_slurm_nodes() {
    let Some(slurm) = Slurm::start() else { return };
    let out = slurm.dir().join("job.out");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut sbatch = slurm.command("sbatch");
    sbatch
        .args(["--parsable", &format!("--nodes={NODES}")])
        // Each node's agent offers the CPUs Slurm gave the job there.
        .arg(format!("--cpus-per-task={NODE_CPUS}"))
        .arg("--output")
        .arg(&out)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/slurm/fleet.sbatch"
        ))
        .arg(std::env::current_exe().expect("test executable"))
        .args(["--exact", "driver_role", "--nocapture"])
        .current_dir(slurm.dir())
        .env("FLEET_BIN", fleet_bin())
        .env("FLEET_NODE_IP_CMD", NODE_IP_CMD)
        .env("FLEET_PORT", port.to_string())
        .env("FLEET_DASHBOARD_PORT", "0")
        // The driver's exit code, which must become the job's.
        .env(DRIVER_ENV, "7")
        .env_remove("FLEET_ADDRESS")
        .env_remove("FLEET_TOKEN");
    let submitted = sbatch.output().expect("run sbatch");
    assert!(submitted.status.success(), "sbatch: {submitted:?}");
    let job = String::from_utf8_lossy(&submitted.stdout)
        .trim()
        .to_string();
    let (state, code) = slurm.wait_job(&job);
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    println!("--- job output\n{text}");
    assert_eq!(
        (state.as_str(), code),
        ("FAILED", 7),
        "the job ends with the driver's exit code\n{text}\n{}",
        slurm.logs()
    );
    let want: u64 = (0..DRIVER_TASKS).map(|x| x * x).sum();
    assert!(
        text.contains(&format!(
            "RESULT sum={want} nodes=127.0.0.1,127.0.0.2,127.0.0.3 cpus={}",
            NODES * NODE_CPUS
        )),
        "the driver's tasks ran on all three Slurm nodes:\n{text}"
    );
    assert!(
        text.contains("stopping the cluster"),
        "the recipe stops the cluster:\n{text}"
    );
    // Everything stopped: the job left the queue and nothing serves on
    // the head's port any more.
    assert!(
        slurm.queue().iter().all(|j| !j.contains("RUNNING")),
        "{:?}",
        slurm.queue()
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the head stopped"
    );
}

#[test]
fn autoscaler_grows_from_zero_to_three_slurm_nodes_and_back_counting_pending_jobs_as_coming() {
    let Some(slurm) = Slurm::start() else { return };
    let token = format!("slurm-test-{}", std::process::id());
    let dir = slurm.dir().to_path_buf();
    let head = Child::spawn(
        Command::new(fleet_bin())
            .args(["start", "--head", "--port", "0", "--dashboard-port", "0"])
            .args(["--block", "--num-cpus", "0", "--token-file"])
            .arg(dir.join("token"))
            .args([
                "--autoscale",
                "slurm",
                "--min-nodes",
                "0",
                "--max-nodes",
                "8",
            ])
            .args(["--upscale-after", "1", "--idle-timeout", "3"])
            .args(["--node-cpus", &NODE_CPUS.to_string(), "--slurm-args"])
            .arg(format!(
                "--cpus-per-task {NODE_CPUS} --time 10 --output {}/node-%j.out",
                dir.display()
            ))
            .current_dir(&dir)
            .env("SLURM_CONF", &slurm.conf)
            .env("FLEET_TOKEN", &token)
            .env("FLEET_NODE_IP_CMD", NODE_IP_CMD)
            .env("FLEET_AUTOSCALE_INTERVAL_MS", "250"),
    );
    let address = head.serving_address();
    let status = || {
        fleet::daemon::status(&address, &token)
            .expect("status")
            .autoscale
            .expect("the head has an autoscaler")
    };
    assert_eq!(status().requested, 0, "no work, no node jobs");

    let cluster = fleet::init_with(Config {
        address: Some(address.clone()),
        token: Some(token.clone()),
        ..Default::default()
    })
    .expect("join");
    // Ten two-second tasks: 10 CPUs of demand, five two-CPU node jobs.
    // Slurm has room for three; the other two stay pending and count as
    // coming, so while the burst runs nothing more is asked for.
    let refs: Vec<_> = (0..TASKS).map(|x| square_on::remote(x, 2000)).collect();
    let mut most = 0;
    let mut most_running = 0;
    let mut three_ran_two_queued = false;
    let watch_until = Instant::now() + GENEROUS;
    let mut pending = refs.clone();
    while !pending.is_empty() {
        let a = status();
        most = most.max(a.requested);
        most_running = most_running.max(a.running);
        let queued = slurm
            .queue()
            .iter()
            .filter(|j| j.contains("fleet-node") && j.contains("PENDING"))
            .count();
        three_ran_two_queued |= a.running == 3 && a.pending == 2 && queued == 2;
        let (_, rest) =
            fleet::wait(&pending, pending.len(), Some(Duration::from_millis(200))).expect("wait");
        pending = rest;
        assert!(Instant::now() < watch_until, "the burst did not finish");
    }
    let results = fleet::get_all(&refs).expect("results");
    assert_eq!(
        results.iter().map(|r| r.0).sum::<u64>(),
        (0..TASKS).map(|x| x * x).sum::<u64>()
    );
    let nodes: HashSet<String> = results.iter().map(|r| ip(&r.1)).collect();
    assert_eq!(most, 5, "as many node jobs as the demand needs");
    assert_eq!(most_running, 3, "as many ran as Slurm had room for");
    assert!(
        three_ran_two_queued,
        "while three ran, two waited in Slurm's queue"
    );
    assert_eq!(
        nodes,
        ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
            .map(String::from)
            .into(),
        "tasks ran on the three Slurm nodes"
    );

    // Idle for --idle-timeout: every node job is cancelled, at Slurm too.
    let deadline = Instant::now() + GENEROUS;
    loop {
        let a = status();
        let queue = slurm.queue();
        if a.requested == 0 && queue.iter().all(|j| !j.contains("fleet-node")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node jobs left: {:?} / {queue:?}",
            a.jobs
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let a = status();
    println!("autoscaler timeline (slurm):");
    for e in &a.events {
        println!("  {e}");
    }
    let count = |what: &str| a.events.iter().filter(|e| e.contains(what)).count();
    // Pending jobs counted as coming: never asked for again.
    assert_eq!(count("submitted node job"), 5, "{:#?}", a.events);
    assert_eq!(count("joined as node"), 3, "{:#?}", a.events);
    assert_eq!(count("has not started: cancelled"), 2, "{:#?}", a.events);
    assert_eq!(count("cancelled node job"), 5, "{:#?}", a.events);
    drop(cluster);
}
