//! The container image, run by a real Docker: the test starts its own
//! `dockerd` (no bridge, no iptables, its own data root, exec root and
//! socket under a temp dir), builds `fleet:latest` with
//! `deploy/docker/build.sh`, runs two node containers and then a head
//! (the nodes wait for it) with host networking on distinct loopback
//! addresses, and is itself the driver:
//! the nodes fetch this test's executable into their containers and run
//! its tasks there. Everything (containers, image, dockerd and its
//! containerd, their mounts) is removed at the end, also on failure.
//!
//! Needs root and Debian's `docker.io`; CI installs it, so without it the
//! test fails rather than skips. The image packs `target/release/fleet`
//! when it exists (CI builds it before the tests), else the debug CLI.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::cli::fleet_bin;
use common::http::get;
use common::{wait_until, GENEROUS};
use fleet::remote;

/// Where a task ran: its node, whether it ran inside a container, and
/// its result.
#[remote]
fn where_am_i(x: u64) -> (String, bool, u64) {
    let node = fleet::current_node().unwrap_or_default();
    let in_container = Path::new("/.dockerenv").exists();
    (node, in_container, x * 3 + 1)
}

/// A `dockerd` of the test's own, stopped and cleaned up on drop.
struct Dockerd {
    dir: tempfile::TempDir,
    process: std::process::Child,
}

impl Dockerd {
    fn start() -> Dockerd {
        let dir = tempfile::Builder::new()
            .prefix("fleet-dockerd")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let p = dir.path();
        let log = std::fs::File::create(p.join("dockerd.log")).expect("dockerd log");
        let process = Command::new("dockerd")
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false"])
            .arg("--data-root")
            .arg(p.join("data"))
            .arg("--exec-root")
            .arg(p.join("exec"))
            .arg("--pidfile")
            .arg(p.join("dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", p.join("docker.sock").display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start dockerd (Debian package docker.io; .ci/run installs it)");
        let d = Dockerd { dir, process };
        wait_until("dockerd to answer", GENEROUS, || {
            d.docker(&["version"]).status.success().then_some(())
        });
        d
    }

    fn host(&self) -> String {
        format!("unix://{}", self.dir.path().join("docker.sock").display())
    }

    /// Runs the docker CLI against this daemon.
    fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .args(args)
            .env("DOCKER_HOST", self.host())
            .stdin(Stdio::null())
            .output()
            .expect("run the docker CLI")
    }

    /// Runs the docker CLI; panics with its output if it fails.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let ids = self.docker(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        let _ = self.docker(&["image", "rm", "-f", "fleet:latest"]);
        // SAFETY: plain kill(2) of our own child; it stops its containerd.
        unsafe { libc::kill(self.process.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.process.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.process.kill();
        let _ = self.process.wait();
        // What dockerd mounted under its roots (overlays, the netns file).
        let prefix = self.dir.path().to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        points.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in points {
            if let Ok(c) = std::ffi::CString::new(m) {
                // SAFETY: umount2 of a path we own, detached.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

/// A free TCP port on 127.0.0.1 (host networking: the containers bind it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The `fleet` binary to pack: the release build if there is one that
/// speaks this build's protocol (a stale one would be refused), else the
/// debug CLI.
fn image_binary() -> PathBuf {
    let release = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/fleet");
    let speaks = Command::new(&release)
        .arg("version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .is_some_and(|v| v.contains(&format!("(protocol {})", fleet::PROTOCOL_VERSION)));
    if speaks {
        release
    } else {
        println!("packing the debug CLI: no current target/release/fleet");
        fleet_bin()
    }
}

#[test]
fn a_head_and_two_nodes_in_containers_run_a_host_drivers_tasks() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "dockerd needs root (CI runs as root)"
    );
    let d = Dockerd::start();
    let binary = image_binary();
    let build = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/docker/build.sh"
    ))
    .env("DOCKER_HOST", d.host())
    .env("FLEET_BIN", &binary)
    .output()
    .expect("run deploy/docker/build.sh");
    let said = String::from_utf8_lossy(&build.stdout).to_string();
    assert!(
        build.status.success(),
        "build.sh failed: {said}{}\n--- dockerd ---\n{}",
        String::from_utf8_lossy(&build.stderr),
        d.log()
    );
    println!("{} (from {})", said.trim(), binary.display());

    let token = format!("docker-test-{}", std::process::id());
    let (port, dashboard) = (free_port(), free_port());
    let run = |name: &str, args: &[&str]| {
        let mut all = vec![
            "run",
            "-d",
            "--init",
            "--name",
            name,
            "--network",
            "host",
            "--shm-size",
            "256m",
            "-e",
        ];
        let env = format!("FLEET_TOKEN={token}");
        all.push(&env);
        all.push("fleet:latest");
        all.extend_from_slice(args);
        d.ok(&all)
    };
    let (port_s, dash_s) = (port.to_string(), dashboard.to_string());
    let head = format!("127.0.0.1:{port}");
    let dash = format!("127.0.0.1:{dashboard}");
    // The nodes first: they wait for their head (503 until they join).
    let mut health = Vec::new();
    for (name, ip) in [("fleet-node-2", "127.0.0.2"), ("fleet-node-3", "127.0.0.3")] {
        let h = free_port().to_string();
        run(
            name,
            &[
                "start",
                "--address",
                &head,
                "--node-ip",
                ip,
                "--num-cpus",
                "1",
                "--object-store-bytes",
                "134217728",
                "--health-port",
                &h,
                "--wait-for-head",
                "120",
                "--block",
            ],
        );
        let at = format!("{ip}:{h}");
        wait_until(
            "a waiting node container's /healthz (503)",
            GENEROUS,
            || matches!(get(&at, "/healthz"), Ok((503, _))).then_some(()),
        );
        health.push(at);
    }
    run(
        "fleet-head",
        &[
            "start",
            "--head",
            "--block",
            "--port",
            &port_s,
            "--dashboard-port",
            &dash_s,
            "--num-cpus",
            "0",
            "--object-store-bytes",
            "134217728",
        ],
    );
    wait_until("the head container's /healthz", GENEROUS, || {
        matches!(get(&dash, "/healthz"), Ok((200, _))).then_some(())
    });
    for h in &health {
        wait_until("a node container's /healthz", GENEROUS, || {
            matches!(get(h, "/healthz"), Ok((200, _))).then_some(())
        });
    }

    // This test process is the driver, on the host.
    let cluster = fleet::init_with(fleet::Config {
        address: Some(head.clone()),
        token: Some(token.clone()),
        ..Default::default()
    })
    .expect("join the cluster in the containers");
    // The nodes' names, as the head's /metrics lists them.
    let listed = common::http::get_ok(&dash, "/metrics");
    let names: Vec<String> = listed
        .lines()
        .filter_map(|l| l.strip_prefix("fleet_node_alive{node=\""))
        .filter_map(|l| l.split('"').next())
        .filter(|n| !n.starts_with("127.0.0.1:"))
        .map(str::to_string)
        .collect();
    assert_eq!(names.len(), 2, "{listed}");
    // Half pinned to each node, so both containers run tasks.
    let refs: Vec<_> = (0..40u64)
        .map(|i| {
            where_am_i::options()
                .node(names[i as usize % 2].clone())
                .remote(i)
        })
        .collect();
    let got = fleet::get_all(&refs).expect("results from the containers");
    let mut nodes = std::collections::BTreeSet::new();
    for (i, (node, in_container, v)) in got.into_iter().enumerate() {
        assert_eq!(v, i as u64 * 3 + 1);
        assert!(in_container, "task {i} ran outside a container on {node}");
        nodes.insert(node.split(':').next().unwrap_or_default().to_string());
    }
    println!("tasks ran in containers on {nodes:?}");
    assert_eq!(
        nodes.into_iter().collect::<Vec<_>>(),
        ["127.0.0.2", "127.0.0.3"]
    );
    let metrics = common::http::get_ok(&dash, "/metrics");
    assert!(
        metrics.contains("fleet_tasks_finished_total{function=\"where_am_i\"} 40"),
        "{metrics}"
    );
    drop(cluster);

    // `docker stop` sends SIGTERM: every process stops cleanly.
    for name in ["fleet-node-2", "fleet-node-3", "fleet-head"] {
        d.ok(&["stop", "-t", "30", name]);
        let code = d.ok(&["inspect", "-f", "{{.State.ExitCode}}", name]);
        let logs = d.docker(&["logs", name]);
        assert_eq!(
            code,
            "0",
            "{name} exited with {code}: {}{}",
            String::from_utf8_lossy(&logs.stdout),
            String::from_utf8_lossy(&logs.stderr)
        );
        d.ok(&["rm", name]);
    }
}
