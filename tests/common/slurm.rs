//! A real Slurm cluster on this machine, private to one test: `munged` on
//! its own socket and key, `slurmctld`, and three `slurmd -N nK` on their
//! own ports, all under a temp dir. Fleet's nodes in it are told apart by
//! loopback address: `FLEET_NODE_IP_CMD` maps Slurm node nK to 127.0.0.K.
//! Everything is stopped in `Drop`: jobs cancelled first, then the daemons.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::cli::Child;
use super::GENEROUS;

/// The command that prints a Slurm node's Fleet address on this cluster.
pub(crate) const NODE_IP_CMD: &str = "echo 127.0.0.${SLURMD_NODENAME#n}";

/// Where the Slurm daemons are, or `None` (the test then skips, saying so).
fn daemon(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One Slurm cluster of `NODES` nodes.
pub(crate) struct Slurm {
    /// slurm.conf; every Slurm command needs it in `SLURM_CONF`.
    pub(crate) conf: PathBuf,
    daemons: Vec<Child>,
    dir: tempfile::TempDir,
}

/// Nodes of the test cluster: n1..n3.
pub(crate) const NODES: usize = 3;
/// CPUs Slurm gives each node.
pub(crate) const NODE_CPUS: usize = 2;

impl Slurm {
    /// Starts one, or returns `None` with a message when Slurm or munge is
    /// not installed (CI installs them: see `.ci/run`).
    pub(crate) fn start() -> Option<Slurm> {
        let (Some(ctld), Some(slurmd), Some(munged)) =
            (daemon("slurmctld"), daemon("slurmd"), daemon("munged"))
        else {
            eprintln!(
                "SKIPPED: slurmctld, slurmd or munged is not installed (apt-get install slurm-wlm munge)"
            );
            return None;
        };
        // SAFETY: getuid cannot fail.
        if unsafe { libc::getuid() } != 0 {
            eprintln!("SKIPPED: the test Slurm cluster runs its daemons as root");
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        for sub in ["munge", "sock", "state", "log", "spool"] {
            std::fs::create_dir_all(d.join(sub)).expect("dirs");
        }
        // munged checks that its socket's folder is reachable by all.
        set_mode(&d.join("sock"), 0o755);
        let key: Vec<u8> = (0..1024).map(|_| rand::random::<u8>()).collect();
        std::fs::write(d.join("munge/key"), key).expect("munge key");
        set_mode(&d.join("munge/key"), 0o400);
        set_mode(&d.join("munge"), 0o700);
        let socket = d.join("sock/munge.socket");
        let mut daemons = vec![Child::spawn(
            Command::new(munged)
                .args(["-F", "-f"])
                .arg(format!("--socket={}", socket.display()))
                .arg(format!("--key-file={}", d.join("munge/key").display()))
                .arg(format!("--log-file={}", d.join("log/munged.log").display()))
                .arg(format!("--pid-file={}", d.join("munge/pid").display()))
                .arg(format!("--seed-file={}", d.join("munge/seed").display())),
        )];
        wait_for("munged's socket", || socket.exists());

        let host = hostname();
        let ctld_port = free_port();
        let mut conf = format!(
            "ClusterName=fleettest\n\
             SlurmctldHost={host}(127.0.0.1)\n\
             SlurmctldPort={ctld_port}\n\
             SlurmUser=root\n\
             SlurmdUser=root\n\
             AuthType=auth/munge\n\
             CredType=cred/munge\n\
             AuthInfo=socket={socket}\n\
             StateSaveLocation={d}/state\n\
             SlurmdSpoolDir={d}/spool/%n\n\
             SlurmctldPidFile={d}/slurmctld.pid\n\
             SlurmdPidFile={d}/slurmd-%n.pid\n\
             SlurmctldLogFile={d}/log/slurmctld.log\n\
             SlurmdLogFile={d}/log/slurmd-%n.log\n\
             ProctrackType=proctrack/linuxproc\n\
             TaskPlugin=task/none\n\
             SelectType=select/cons_tres\n\
             SelectTypeParameters=CR_CPU\n\
             SlurmdParameters=config_overrides\n\
             SchedulerType=sched/backfill\n\
             MpiDefault=none\n\
             ReturnToService=2\n\
             JobAcctGatherType=jobacct_gather/none\n\
             AccountingStorageType=accounting_storage/none\n\
             JobCompType=jobcomp/none\n\
             MailProg=/bin/true\n\
             SlurmctldTimeout=30\n\
             SlurmdTimeout=30\n\
             InactiveLimit=0\n\
             KillWait=5\n\
             MinJobAge=300\n",
            socket = socket.display(),
            d = d.display(),
        );
        for k in 1..=NODES {
            std::fs::create_dir_all(d.join(format!("spool/n{k}"))).expect("spool");
            conf += &format!(
                "NodeName=n{k} NodeHostname={host} NodeAddr=127.0.0.1 Port={} CPUs={NODE_CPUS} State=UNKNOWN\n",
                free_port()
            );
        }
        conf += &format!(
            "PartitionName=debug Nodes=n[1-{NODES}] Default=YES MaxTime=INFINITE State=UP\n"
        );
        let conf_path = d.join("slurm.conf");
        std::fs::write(&conf_path, conf).expect("slurm.conf");

        daemons.push(Child::spawn(
            Command::new(ctld)
                .args(["-D", "-i", "-f"])
                .arg(&conf_path)
                .env("SLURM_CONF", &conf_path),
        ));
        for k in 1..=NODES {
            daemons.push(Child::spawn(
                Command::new(&slurmd)
                    .args(["-D", "-N", &format!("n{k}"), "-f"])
                    .arg(&conf_path)
                    .env("SLURM_CONF", &conf_path),
            ));
        }
        let t0 = Instant::now();
        let slurm = Slurm {
            conf: conf_path,
            daemons,
            dir,
        };
        wait_for("all Slurm nodes idle", || {
            let out = slurm
                .command("sinfo")
                .args(["--noheader", "--format=%T %D"])
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            out == format!("idle {NODES}")
        });
        eprintln!("test Slurm cluster up in {:?}", t0.elapsed());
        Some(slurm)
    }

    /// A Slurm command (`sbatch`, `squeue`, …) for this cluster.
    pub(crate) fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    /// A folder for the test's own files (job output, scripts).
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Jobs in the queue, as `squeue` shows them ("id name state").
    pub(crate) fn queue(&self) -> Vec<String> {
        self.command("squeue")
            .args(["--noheader", "--format=%i %j %T"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits for job `id` to end; returns its state and exit code, as
    /// Slurm records them (`sbatch --wait` would return the same code, but
    /// notices the end only after up to half a minute of backoff).
    pub(crate) fn wait_job(&self, id: &str) -> (String, i32) {
        let deadline = Instant::now() + GENEROUS * 2;
        loop {
            let out = self
                .command("scontrol")
                .args(["show", "job", "--oneliner", id])
                .output()
                .expect("scontrol");
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let field = |name: &str| {
                text.split_whitespace()
                    .find_map(|f| f.strip_prefix(name))
                    .unwrap_or_default()
                    .to_string()
            };
            let state = field("JobState=");
            if !matches!(
                state.as_str(),
                "" | "PENDING" | "CONFIGURING" | "RUNNING" | "COMPLETING"
            ) {
                // "7:0": exit code, then the signal that ended it.
                let code = field("ExitCode=")
                    .split(':')
                    .next()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(-1);
                return (state, code);
            }
            assert!(
                Instant::now() < deadline,
                "job {id} did not end: {text}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The daemons' logs, for a failing test's message.
    pub(crate) fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.path().join("log")) {
            for e in entries.flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                out += &format!("--- {}\n", e.path().display());
                for l in tail.into_iter().rev() {
                    out += l;
                    out += "\n";
                }
            }
        }
        out
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        let t0 = Instant::now();
        // Jobs first, so no job step outlives its slurmd.
        let _ = self.command("scancel").args(["--user=root"]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.queue().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        // slurmds, slurmctld, then munged.
        for d in self.daemons.iter_mut().rev() {
            // SAFETY: plain kill(2) of our own child.
            unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = d.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            d.kill();
        }
        eprintln!("test Slurm cluster stopped in {:?}", t0.elapsed());
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn hostname() -> String {
    let out = Command::new("hostname").output().expect("hostname");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + GENEROUS;
    while !ok() {
        assert!(Instant::now() < deadline, "no {what} within {GENEROUS:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
