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
    let address = head.serving_address();
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
            // And /metrics: three requested, of which three running
            // (joined) and none pending.
            let metrics = common::http::get_ok(&dashboard, "/metrics");
            for (name, want) in [
                ("fleet_autoscaler_node_jobs_requested", 3.0),
                ("fleet_autoscaler_node_jobs{state=\"running\"}", 3.0),
                ("fleet_autoscaler_node_jobs{state=\"pending\"}", 0.0),
            ] {
                let value = metrics
                    .lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                    .and_then(|v| v.parse::<f64>().ok());
                assert_eq!(value, Some(want), "{name} in\n{metrics}");
            }
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
    let text =
        fleet_cli::cli::status(Some(&address), Some(dir.path().join("token"))).expect("status");
    assert!(
        text.contains("autoscaler (command, 0..3 nodes): 0 node jobs requested"),
        "{text}"
    );
    assert_eq!(snapshot(&dashboard)["autoscale"]["requested"], 0);
    drop(cluster);
}

/// `GET /api/snapshot` from the dashboard at `host`, as JSON.
fn snapshot(host: &str) -> serde_json::Value {
    let body = common::http::get_ok(host, "/api/snapshot");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("invalid JSON ({e}): {body:.500}"))
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

#[test]
fn min_nodes_are_kept_while_idle_and_a_stopping_head_gives_them_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().display().to_string();
    let started = Started {
        dir: dir.path().to_path_buf(),
    };
    let token = format!("autoscale-min-{}", std::process::id());
    let scale_up = format!(
        "ip=127.0.0.$((50 + {{job}})); \
         setsid \"$FLEET_BIN\" start --address {{address}} --node-ip $ip --num-cpus 1 --block \
         >{d}/node-{{job}}.log 2>&1 </dev/null & echo $! >{d}/$ip.pid"
    );
    let scale_down =
        format!("node={{node}}; echo $node >>{d}/stopped; kill $(cat {d}/${{node%:*}}.pid)");
    let mut head = Child::spawn(
        Command::new(fleet_bin())
            .args(["start", "--head", "--port", "0", "--dashboard-port", "0"])
            .args(["--block", "--num-cpus", "0", "--token-file"])
            .arg(dir.path().join("token"))
            .args([
                "--autoscale",
                "command",
                "--min-nodes",
                "2",
                "--max-nodes",
                "2",
            ])
            .args(["--idle-timeout", "1"])
            .args(["--scale-up", &scale_up, "--scale-down", &scale_down])
            .env("FLEET_TOKEN", &token)
            .env("FLEET_AUTOSCALE_INTERVAL_MS", "200"),
    );
    let dashboard = head
        .expect_line("fleet dashboard at")
        .rsplit(' ')
        .next()
        .expect("dashboard address")
        .to_string();
    let address = head.serving_address();
    let status = || {
        fleet::daemon::status(&address, &token)
            .expect("status")
            .autoscale
            .expect("the head has an autoscaler")
    };
    // Without any work: two nodes, kept though idle far past --idle-timeout.
    let deadline = Instant::now() + GENEROUS;
    loop {
        let a = status();
        assert!(a.requested <= 2, "{:?}", a.jobs);
        if a.jobs.len() == 2 && a.jobs.iter().all(|j| j.state == "idle" && j.age_secs > 4.0) {
            break;
        }
        assert!(Instant::now() < deadline, "{:?}", a.jobs);
        std::thread::sleep(Duration::from_millis(100));
    }
    // The dashboard's page, rendered by a real browser, shows them.
    match render(&format!("{dashboard}/?once=1")) {
        None => eprintln!("SKIPPED the page check: chromium is not installed"),
        Some(dom) => {
            let card = &dom[dom.find("id=\"autoscaler-card\"").expect("the card")..];
            let card = &card[..card.find("</section>").expect("its end")];
            assert!(!card.starts_with("id=\"autoscaler-card\" hidden"), "{card}");
            assert!(
                card.contains("<span data-jobs=\"requested\">2</span>"),
                "{card}"
            );
            assert!(
                card.contains("<span data-jobs=\"running\">2</span>"),
                "{card}"
            );
            assert_eq!(card.matches("data-state=\"idle\"").count(), 2, "{card}");
        }
    }
    let pids = started.pids();
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|p| alive(*p)));
    // A stopping head cancels its node jobs: the nodes are stopped.
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(head.child.id() as i32, libc::SIGTERM) };
    let _ = head.child.wait();
    let deadline = Instant::now() + GENEROUS;
    while pids.iter().any(|p| alive(*p)) {
        assert!(Instant::now() < deadline, "node agents outlived their head");
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopped = std::fs::read_to_string(dir.path().join("stopped")).unwrap_or_default();
    assert_eq!(
        stopped.lines().count(),
        2,
        "the head ran --scale-down for each node: {stopped:?}"
    );
    head.kill();
}

/// The page at `url` as headless Chromium renders it (`--dump-dom`), or
/// `None` without Chromium (CI installs it).
fn render(url: &str) -> Option<String> {
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("chromium"))
                    .find(|c| c.is_file())
            })
        })?;
    let profile = tempfile::tempdir().expect("a browser profile dir");
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .args([
            "--disable-background-networking",
            "--disable-component-update",
        ])
        .args([
            "--disable-dev-shm-usage",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut dom = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut dom);
        let _ = tx.send(dom);
    });
    let dom = rx.recv_timeout(GENEROUS);
    let _ = child.kill();
    let _ = child.wait();
    Some(dom.expect("chromium rendered the page in time"))
}
