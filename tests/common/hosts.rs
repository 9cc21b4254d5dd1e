//! Separate machines on one box: each "host" is a network namespace with
//! one veth into a bridge of its own, and every process on it runs under
//! `unshare -m` with fresh tmpfs mounts on `/dev/shm` and `/tmp`, so no
//! store file, token file or executable cache is shared between hosts.
//! Addresses are private ones on that bridge only; the box's own
//! namespace gets none, so no packet leaves the bridge. Cutting a host's
//! link is `ip link set <its veth> down`, as a pulled cable: no socket is
//! closed, packets just stop.
//!
//! Everything is removed in `Drop` (also when a test panics): the bridge,
//! the veths and the namespaces. Processes started with [`Hosts::command`]
//! are the caller's [`Child`]ren and die with them.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::cli::Child;

/// A set of hosts joined by one bridge.
pub(crate) struct Hosts {
    bridge: String,
    namespaces: Vec<String>,
    veths: Vec<String>,
    subnet: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Hosts {
    /// `n` hosts, or `None` (after printing why) where network namespaces
    /// cannot be made: not root, no `ip`, or no permission in a container.
    pub(crate) fn new(n: usize) -> Option<Hosts> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        // Interface names have at most 15 characters.
        let tag = format!("fh{pid}{k}");
        // Only inside this bridge, which no other namespace is on.
        let seq = (pid.wrapping_mul(7) + k) % 60_000;
        let subnet = format!("10.{}.{}", 1 + seq / 250, seq % 250);
        let mut hosts = Hosts {
            bridge: format!("{tag}b"),
            namespaces: Vec::new(),
            veths: Vec::new(),
            subnet,
        };
        match hosts.build(&tag, n) {
            Ok(()) => Some(hosts),
            Err(e) => {
                eprintln!(
                    "SKIPPED: separate hosts need network namespaces (root, iproute2, \
                     util-linux unshare), and making them failed: {e}"
                );
                None
            }
        }
    }

    fn build(&mut self, tag: &str, n: usize) -> Result<(), String> {
        ip(&["link", "add", &self.bridge, "type", "bridge"])?;
        ip(&["link", "set", &self.bridge, "up"])?;
        for i in 0..n {
            let ns = format!("{tag}-h{i}");
            ip(&["netns", "add", &ns])?;
            self.namespaces.push(ns.clone());
            let veth = format!("{tag}v{i}");
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            self.veths.push(veth.clone());
            ip(&["link", "set", &veth, "master", &self.bridge])?;
            ip(&["link", "set", &veth, "up"])?;
            let addr = format!("{}/24", self.ip(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Host `i`'s address.
    pub(crate) fn ip(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, i + 1)
    }

    /// `program args…` to run on host `i`: in its namespace, with its own
    /// empty `/dev/shm` and `/tmp`.
    pub(crate) fn command(&self, i: usize, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.namespaces[i],
            "unshare",
            "-m",
            "sh",
            "-c",
        ])
        .arg("mount -t tmpfs tmpfs /dev/shm && mount -t tmpfs tmpfs /tmp && exec \"$@\"")
        .arg("sh")
        .arg(program);
        cmd
    }

    /// `program args…` in host `i`'s network namespace only (a short
    /// command such as `fleet status`, which needs no files of the host).
    pub(crate) fn net_command(&self, i: usize, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.namespaces[i]])
            .arg(program);
        cmd
    }

    /// Pulls host `i`'s cable: its veth goes down, nothing is closed.
    pub(crate) fn cut(&self, i: usize) {
        ip(&["link", "set", &self.veths[i], "down"]).expect("cutting a link");
    }

    /// Plugs host `i`'s cable back in.
    pub(crate) fn restore(&self, i: usize) {
        ip(&["link", "set", &self.veths[i], "up"]).expect("restoring a link");
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for veth in &self.veths {
            let _ = ip(&["link", "del", veth]);
        }
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// Waits for `child` to exit; panics if it has not within `timeout`.
pub(crate) fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.child.try_wait().expect("waiting for a process") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the process did not exit within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
