//! The head's autoscaler through `--autoscale command`: its scale-up
//! command starts a real node agent (`fleet start --address …` on its own
//! loopback address, in the background), its scale-down command stops the
//! node it is given. A burst of work grows the cluster from no node to
//! three, and idleness shrinks it back to none.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::cli::{fleet_bin, Child};
use common::GENEROUS;

use fleet::{remote, Config};

#[remote]
fn cube_on(x: u64, pause_ms: u64) -> (u64, String) {
    std::thread::sleep(Duration::from_millis(pause_ms));
    (x * x * x, fleet::current_node().unwrap_or_default())
}

/// Node agents the scale-up command started (pid files in `dir`), killed
/// if the test ends before the autoscaler stopped them.
struct Started {
    dir: PathBuf,
}

impl Started {
    fn pids(&self) -> Vec<i32> {
        std::fs::read_dir(&self.dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".pid"))
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .filter_map(|p| p.trim().parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        for pid in self.pids() {
            // SAFETY: plain kill(2) of a node agent this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn alive(pid: i32) -> bool {
    // A zombie still answers kill(0); look at its state instead.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

#[test]
fn command_autoscaler_starts_node_agents_and_stops_idle_ones() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().display().to_string();
    let started = Started {
        dir: dir.path().to_path_buf(),
    };
    let token = format!("autoscale-test-{}", std::process::id());
    // Node job K runs on 127.0.0.(40+K); the agent's pid file is named by
    // its address, which is how scale-down finds it from {node}.
    let scale_up = format!(
        "ip=127.0.0.$((40 + {{job}})); \
         setsid \"$FLEET_BIN\" start --address {{address}} --node-ip $ip --num-cpus 1 --block \
         >{d}/node-{{job}}.log 2>&1 </dev/null & echo $! >{d}/$ip.pid"
    );
    let scale_down = format!("node={{node}}; kill $(cat {d}/${{node%:*}}.pid)");
    let head = Child::spawn(
        Command::new(fleet_bin())
            .args(["start", "--head", "--port", "0", "--dashboard-port", "0"])
            .args(["--block", "--num-cpus", "0", "--token-file"])
            .arg(dir.path().join("token"))
            .args(["--autoscale", "command", "--max-nodes", "3"])
            .args([
                "--upscale-after",
                "1",
                "--idle-timeout",
                "2",
                "--node-cpus",
                "1",
            ])
            .args(["--scale-up", &scale_up, "--scale-down", &scale_down])
            .env("FLEET_TOKEN", &token)
            .env("FLEET_AUTOSCALE_INTERVAL_MS", "250"),
    );
    let dashboard = head
        .expect_line("fleet dashboard at")
        .rsplit(' ')
        .next()
        .expect("dashboard address")
        .trim_start_matches("http://")
        .to_string();
    let address = head
        .expect_line("serving at")
        .rsplit(' ')
        .next()
        .expect("address")
        .to_string();
    let status = || {
        fleet::daemon::status(&address, &token)
            .expect("status")
            .autoscale
            .expect("the head has an autoscaler")
    };
    assert_eq!(status().requested, 0);

    let cluster = fleet::init_with(Config {
        address: Some(address.clone()),
        token: Some(token.clone()),
        ..Default::default()
    })
    .expect("join");
    let refs: Vec<_> = (0..12u64).map(|x| cube_on::remote(x, 700)).collect();
    let mut most = 0;
    let mut seen_on_dashboard = false;
    let mut pending = refs.clone();
    let until = Instant::now() + GENEROUS;
    while !pending.is_empty() {
        let a = status();
        most = most.max(a.requested);
        if a.running == 3 && !seen_on_dashboard {
            // The dashboard's JSON shows the same node jobs.
            let snap = snapshot(&dashboard);
            let auto = &snap["autoscale"];
            assert_eq!(auto["provider"], "command", "{auto}");
            assert_eq!(auto["max_nodes"], 3, "{auto}");
            assert!(auto["requested"].as_u64() >= Some(3), "{auto}");
            assert_eq!(auto["jobs"].as_array().map(Vec::len), Some(3), "{auto}");
            seen_on_dashboard = true;
        }
        pending = fleet::wait(&pending, pending.len(), Some(Duration::from_millis(200)))
            .expect("wait")
            .1;
        assert!(Instant::now() < until, "the burst did not finish");
    }
    let results = fleet::get_all(&refs).expect("results");
    assert_eq!(
        results.iter().map(|r| r.0).sum::<u64>(),
        (0..12u64).map(|x| x * x * x).sum::<u64>()
    );
    let nodes: HashSet<String> = results
        .iter()
        .map(|r| {
            r.1.rsplit_once(':')
                .map_or(r.1.clone(), |(ip, _)| ip.into())
        })
        .collect();
    assert_eq!(most, 3, "never more than --max-nodes, and all of them");
    assert!(
        seen_on_dashboard,
        "the dashboard showed the three node jobs"
    );
    assert_eq!(
        nodes,
        ["127.0.0.41", "127.0.0.42", "127.0.0.43"]
            .map(String::from)
            .into(),
        "the three started nodes ran the tasks"
    );
    assert_eq!(started.pids().len(), 3);

    // Idle: each node is stopped through the scale-down command.
    let deadline = Instant::now() + GENEROUS;
    while status().requested > 0 || started.pids().into_iter().any(alive) {
        assert!(Instant::now() < deadline, "nodes left: {:?}", status().jobs);
        std::thread::sleep(Duration::from_millis(100));
    }
    let a = status();
    println!("autoscaler timeline (command):");
    for e in &a.events {
        println!("  {e}");
    }
    let count = |what: &str| a.events.iter().filter(|e| e.contains(what)).count();
    assert_eq!(count("asked for node job"), 3, "{:#?}", a.events);
    assert_eq!(count("joined as node"), 3, "{:#?}", a.events);
    assert_eq!(count("cancelled node job"), 3, "{:#?}", a.events);
    let text = fleet::cli::status(Some(&address), Some(dir.path().join("token"))).expect("status");
    assert!(
        text.contains("autoscaler (command, 0..3 nodes): 0 node jobs requested"),
        "{text}"
    );
    assert_eq!(snapshot(&dashboard)["autoscale"]["requested"], 0);
    drop(cluster);
}

/// `GET /api/snapshot` from the dashboard at `host`, as JSON.
fn snapshot(host: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(host).expect("connecting to the dashboard");
    s.set_read_timeout(Some(GENEROUS)).expect("read timeout");
    write!(
        s,
        "GET /api/snapshot HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("sending the request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("reading the response");
    assert!(text.starts_with("HTTP/1.1 200"), "{text:.300}");
    let body = text.split_once("\r\n\r\n").expect("a body").1;
    serde_json::from_str(body).unwrap_or_else(|e| panic!("invalid JSON ({e}): {body:.500}"))
}

/// `fleet start` with these arguments fails at once, naming the fix.
fn refused(args: &[&str], says: &str) {
    let out = Command::new(fleet_bin())
        .args([
            "start",
            "--head",
            "--block",
            "--port",
            "0",
            "--no-dashboard",
        ])
        .args(args)
        .env("PATH", "/nonexistent")
        .env("FLEET_TOKEN", "unused")
        .output()
        .expect("run fleet");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} was accepted");
    assert!(err.contains(says), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_autoscaler_settings_are_refused_with_the_fix() {
    refused(
        &["--autoscale", "command", "--scale-up", "true"],
        "--autoscale command needs --scale-up 'CMD' and --scale-down 'CMD {node}'",
    );
    refused(
        &[
            "--autoscale",
            "slurm",
            "--min-nodes",
            "4",
            "--max-nodes",
            "2",
        ],
        "--max-nodes 2 is below --min-nodes 4: raise --max-nodes",
    );
    refused(
        &["--autoscale", "slurm", "--slurm-args", "-p 'debug"],
        "unbalanced quotes",
    );
    refused(
        &["--slurm-args", "-p debug"],
        "need --autoscale slurm|command",
    );
    // No sbatch on PATH (it is empty here): said before anything starts.
    refused(
        &["--autoscale", "slurm"],
        "--autoscale slurm needs `sbatch` on PATH",
    );
    refused(&["--autoscale", "kubernetes"], "invalid value 'kubernetes'");
}
