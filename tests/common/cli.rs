//! Clusters of separate processes started with the `fleet` CLI: a head on
//! 127.0.0.1 and node agents on other loopback addresses, each a child of
//! the test that dies with it.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use super::GENEROUS;

/// A child process killed (and reaped) when dropped; its stdout lines
/// arrive on a channel.
pub(crate) struct Child {
    pub(crate) child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Child {
    pub(crate) fn spawn(cmd: &mut Command) -> Child {
        cmd.stdout(Stdio::piped()).stdin(Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("start a process");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Child { child, lines }
    }

    /// Waits for a line containing `marker`; returns it.
    pub(crate) fn expect_line(&self, marker: &str) -> String {
        let deadline = Instant::now() + GENEROUS;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(marker) => return line,
                Ok(_) => {}
                Err(e) => panic!("no line with {marker:?} within {GENEROUS:?} ({e})"),
            }
        }
    }

    /// Waits for a head's "serving at ADDRESS" line; returns the address.
    pub(crate) fn serving_address(&self) -> String {
        self.expect_line("serving at")
            .rsplit(' ')
            .next()
            .expect("address")
            .to_string()
    }

    /// Waits for a node agent's "joined the cluster" line; returns the
    /// node's name from it.
    pub(crate) fn joined_node_name(&self) -> String {
        self.expect_line("joined the cluster")
            .split_whitespace()
            .nth(2)
            .expect("node name")
            .to_string()
    }

    /// Kills the process now (SIGKILL) and reaps it.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The newest modification time of the files the `fleet` binary is built
/// from (the CLI's and the library's sources, the proto).
fn newest_source() -> Option<std::time::SystemTime> {
    fn walk(path: &std::path::Path, newest: &mut Option<std::time::SystemTime>) {
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        if meta.is_dir() {
            for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
                walk(&entry.path(), newest);
            }
        } else if let Ok(t) = meta.modified() {
            *newest = (*newest).max(Some(t));
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut newest = None;
    for part in [
        "cli/src",
        "cli/Cargo.toml",
        "runtime/src",
        "runtime/Cargo.toml",
        "runtime/build.rs",
        "macros/src",
        "proto",
    ] {
        walk(&root.join(part), &mut newest);
    }
    newest
}

/// The `fleet` CLI next to the test binary's `deps/` folder, built first
/// if it is missing or older than its sources: the tests live in another
/// package than the CLI (`fleet-cli`, in `cli/`), so `cargo nextest run`
/// does not build it by itself, and a stale one would test old code.
pub(crate) fn fleet_bin() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let exe = std::env::current_exe().expect("test executable");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .to_path_buf();
    let bin = profile_dir.join("fleet");
    BUILT.call_once(|| {
        let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
        if built.is_some() && built >= newest_source() {
            return;
        }
        let target_dir = profile_dir.parent().expect("target dir");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args(["build", "-p", "fleet-cli", "--bin", "fleet", "--target-dir"])
            .arg(target_dir)
            .arg("--manifest-path")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo to build the fleet CLI");
        assert!(status.success(), "building the fleet CLI failed");
    });
    assert!(
        bin.is_file(),
        "build the CLI first: cargo build -p fleet-cli ({})",
        bin.display()
    );
    bin
}

/// A head started with `fleet start --head`, and the nodes added to it.
pub(crate) struct CliCluster {
    pub(crate) address: String,
    /// The dashboard's `http://host:port` (also `/metrics`, `/healthz`),
    /// unless `--no-dashboard` was given.
    pub(crate) dashboard: Option<String>,
    pub(crate) token: String,
    pub(crate) nodes: Vec<(String, Child)>,
    pub(crate) head: Child,
    _dir: tempfile::TempDir,
}

impl CliCluster {
    /// A head whose own node offers `head_cpus`; `extra` goes to `fleet start`.
    pub(crate) fn start(head_cpus: u32, extra: &[&str]) -> CliCluster {
        Self::start_on(0, &fresh_token(), head_cpus, extra)
    }

    /// [`start`](Self::start) on a given port (0: any free one) with a
    /// given token.
    pub(crate) fn start_on(port: u16, token: &str, head_cpus: u32, extra: &[&str]) -> CliCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let token = token.to_string();
        let (head, address, dashboard) =
            spawn_head(port, &token, &dir.path().join("token"), head_cpus, extra);
        CliCluster {
            address,
            dashboard,
            token,
            nodes: Vec::new(),
            head,
            _dir: dir,
        }
    }

    /// `fleet list <kind> --json` against this cluster: its rows.
    pub(crate) fn list_json(&self, kind: &str) -> Vec<serde_json::Value> {
        let out = Command::new(fleet_bin())
            .args(["list", kind, "--json", "--address", &self.address])
            .env("FLEET_TOKEN", &self.token)
            .output()
            .expect("running fleet list");
        assert!(
            out.status.success(),
            "fleet list {kind}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON rows")
    }

    /// Kills the head (SIGKILL) and starts a new head process on the same
    /// port with the same token; the node agents are left running.
    pub(crate) fn restart_head(&mut self, head_cpus: u32, extra: &[&str]) {
        self.head.kill();
        let port: u16 = self
            .address
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the head's port");
        let token_file = self._dir.path().join("token");
        let (head, address, dashboard) =
            spawn_head(port, &self.token, &token_file, head_cpus, extra);
        assert_eq!(
            address, self.address,
            "the new head serves at the old address"
        );
        self.head = head;
        self.dashboard = dashboard;
    }

    /// Starts a node agent on `ip`; returns its name.
    pub(crate) fn add_node(&mut self, ip: &str, cpus: u32) -> String {
        self.add_node_with(ip, cpus, &[])
    }

    /// [`add_node`](Self::add_node) with more `fleet start` arguments.
    pub(crate) fn add_node_with(&mut self, ip: &str, cpus: u32, extra: &[&str]) -> String {
        let node = Child::spawn(
            Command::new(fleet_bin())
                .args([
                    "start",
                    "--address",
                    &self.address,
                    "--node-ip",
                    ip,
                    "--block",
                ])
                .args(["--num-cpus", &cpus.to_string()])
                .args(extra)
                .env("FLEET_TOKEN", &self.token),
        );
        let name = node.joined_node_name();
        self.nodes.push((name.clone(), node));
        name
    }

    /// This test process joins as a driver.
    pub(crate) fn join(&self) -> fleet::Cluster {
        fleet::init_with(fleet::Config {
            address: Some(self.address.clone()),
            token: Some(self.token.clone()),
            ..Default::default()
        })
        .expect("join the cluster")
    }
}

/// Starts `fleet start --head` on `port` (0: any free one); returns it,
/// the address it serves at and its dashboard's URL (unless
/// `--no-dashboard` is in `extra`).
pub(crate) fn spawn_head(
    port: u16,
    token: &str,
    token_file: &std::path::Path,
    head_cpus: u32,
    extra: &[&str],
) -> (Child, String, Option<String>) {
    let head = Child::spawn(
        Command::new(fleet_bin())
            .args(["start", "--head", "--dashboard-port", "0", "--block"])
            .args(["--port", &port.to_string()])
            .args(["--num-cpus", &head_cpus.to_string()])
            .arg("--token-file")
            .arg(token_file)
            .args(extra)
            .env("FLEET_TOKEN", token),
    );
    let dashboard = (!extra.contains(&"--no-dashboard")).then(|| {
        let line = head.expect_line("fleet dashboard at ");
        line.rsplit(' ').next().expect("dashboard URL").to_string()
    });
    let address = head.serving_address();
    (head, address, dashboard)
}

/// Starts a node agent for the head at `address` without waiting for it
/// to join (the head may not be up yet).
pub(crate) fn spawn_node(address: &str, token: &str, ip: &str, cpus: u32, extra: &[&str]) -> Child {
    Child::spawn(
        Command::new(fleet_bin())
            .args(["start", "--address", address, "--node-ip", ip, "--block"])
            .args(["--num-cpus", &cpus.to_string()])
            .args(extra)
            .env("FLEET_TOKEN", token),
    )
}

/// A port free on 127.0.0.1 now (the kernel's pick; released at once, for
/// a process that must know its port before it starts).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A token no other test cluster uses.
pub(crate) fn fresh_token() -> String {
    format!("test-token-{}-{}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or_default()
}
