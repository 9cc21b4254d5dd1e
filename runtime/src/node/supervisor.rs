//! Starts worker processes and watches them.
//!
//! Workers are this same executable re-run with `FLEET_WORKER_ID` set; the
//! hook in `worker::hook` turns them into workers before `main`. Each child
//! gets `PR_SET_PDEATHSIG = SIGKILL`, bound to the spawner thread, which
//! lives as long as the cluster: if the driver dies, even by SIGKILL, the
//! kernel kills its workers.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

use crate::worker::hook::{ENV_DIRECT_HOST, ENV_HEAD, ENV_JOB, ENV_NODE, ENV_TOKEN, ENV_WORKER_ID};

/// Called when a worker process exits: (worker id, description).
pub(crate) type OnExit = Arc<dyn Fn(u64, String) + Send + Sync>;

/// Called with lines a worker printed, prefixed: (worker id, stderr, lines).
pub(crate) type OnLog = Arc<dyn Fn(u64, bool, Vec<String>) + Send + Sync>;

/// A worker writes this, then a function name, on a line of its own when it
/// starts running another function, so its output can be labelled.
pub(crate) const TASK_MARKER: &str = "\u{1e}fleet-task:";

enum Command_ {
    Spawn(u64, PathBuf, u32),
    Shutdown,
}

/// The node agent's worker supervisor.
pub(crate) struct Supervisor {
    tx: Mutex<mpsc::Sender<Command_>>,
    live: Arc<Mutex<HashMap<u64, u32>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    logs: Arc<super::worker_logs::WorkerLogs>,
}

/// What a worker needs to find its head.
#[derive(Clone)]
pub(crate) struct WorkerEnv {
    pub(crate) head: String,
    pub(crate) token: String,
    /// The node's name, reported in the worker's hello.
    pub(crate) node: String,
    /// Where the workers' output goes.
    pub(crate) on_log: OnLog,
    /// Name the node in output prefixes (the head's own node does not).
    pub(crate) show_node: bool,
    /// Where each worker's output is also kept, a file per worker.
    pub(crate) logs: Arc<super::worker_logs::WorkerLogs>,
}

impl Supervisor {
    pub(crate) fn start(env: WorkerEnv, on_exit: OnExit) -> Self {
        let (tx, rx) = mpsc::channel();
        let live: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
        let live2 = live.clone();
        let logs = env.logs.clone();
        let thread = std::thread::Builder::new()
            .name("fleet-spawner".into())
            .spawn(move || spawner(env, rx, live2, on_exit))
            .expect("spawning the supervisor thread");
        Supervisor {
            tx: Mutex::new(tx),
            live,
            thread: Mutex::new(Some(thread)),
            logs,
        }
    }

    /// The files its workers' output is kept in.
    pub(crate) fn logs(&self) -> Arc<super::worker_logs::WorkerLogs> {
        self.logs.clone()
    }

    /// Starts `program` as a worker for `job`.
    pub(crate) fn spawn(&self, worker_id: u64, program: PathBuf, job: u32) {
        let _ = self
            .tx
            .lock()
            .send(Command_::Spawn(worker_id, program, job));
    }

    /// A handle to list the workers from another thread.
    pub(crate) fn live(&self) -> Arc<Mutex<HashMap<u64, u32>>> {
        self.live.clone()
    }

    /// Kills a worker at once (SIGKILL), e.g. for the memory monitor; its
    /// exit is reported as any other. False if it is not alive.
    pub(crate) fn kill(&self, worker_id: u64) -> bool {
        match self.live.lock().get(&worker_id) {
            Some(pid) => {
                // SAFETY: kill(2) of our own child.
                unsafe { libc::kill(*pid as i32, libc::SIGKILL) == 0 }
            }
            None => false,
        }
    }

    /// Process ids of the workers alive now.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.live.lock().values().copied().collect()
    }

    /// Kills every worker and waits for them to exit.
    pub(crate) fn shutdown(&self) {
        let _ = self.tx.lock().send(Command_::Shutdown);
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The host part of a node's name (`host:port`, `[v6]:port`): the node's
/// own address, where its workers serve drivers.
fn host_of(node: &str) -> &str {
    let host = node.rsplit_once(':').map_or(node, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn spawner(
    env: WorkerEnv,
    rx: mpsc::Receiver<Command_>,
    live: Arc<Mutex<HashMap<u64, u32>>>,
    on_exit: OnExit,
) {
    let parent = std::process::id() as i32;
    let mut waiters = Vec::new();
    while let Ok(cmd) = rx.recv() {
        let (worker_id, program, job) = match cmd {
            Command_::Spawn(id, program, job) => (id, program, job),
            Command_::Shutdown => break,
        };
        let mut cmd = Command::new(&program);
        // `ps` shows what the process is: `my_app [fleet worker 3, job 1]`.
        cmd.arg0(process_title(&program, worker_id, job))
            .env(ENV_WORKER_ID, worker_id.to_string())
            .env(ENV_HEAD, &env.head)
            .env(ENV_TOKEN, &env.token)
            .env(ENV_JOB, job.to_string())
            .env(ENV_NODE, &env.node)
            .env(ENV_DIRECT_HOST, host_of(&env.node))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(mut child) => {
                live.lock().insert(worker_id, child.id());
                let pid = child.id();
                let node = env.show_node.then(|| env.node.clone());
                let (out_file, err_file) = env.logs.sinks(pid);
                if let Some(out) = child.stdout.take() {
                    let on_log = env.on_log.clone();
                    forward(out, worker_id, pid, node.clone(), false, on_log, out_file);
                }
                if let Some(err) = child.stderr.take() {
                    forward(
                        err,
                        worker_id,
                        pid,
                        node,
                        true,
                        env.on_log.clone(),
                        err_file,
                    );
                }
                let live = live.clone();
                let on_exit = on_exit.clone();
                waiters.push(std::thread::spawn(move || {
                    let status = child.wait();
                    live.lock().remove(&worker_id);
                    let what = match status {
                        Ok(s) => crate::head::describe_exit(s),
                        Err(e) => e.to_string(),
                    };
                    on_exit(worker_id, what);
                }));
            }
            Err(e) => {
                tracing::error!("cannot start a worker from {}: {e}", program.display());
                on_exit(worker_id, format!("failed to start: {e}"));
            }
        }
    }
    for pid in live.lock().values() {
        // SAFETY: plain kill(2) of our own children.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    for w in waiters {
        let _ = w.join();
    }
}

/// The command line a worker shows in `ps` and `/proc/PID/cmdline`: the
/// program's name and what the process is, since workers run the user's
/// program without its arguments.
pub(crate) fn process_title(program: &std::path::Path, worker_id: u64, job: u32) -> String {
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "fleet".into());
    format!("{name} [fleet worker {worker_id}, job {job}]")
}

/// Reads one output stream of a worker to its end, keeping each line in
/// the worker's file and passing it on labelled with the function the
/// worker runs and its pid. Reading the pipe here, outside the worker,
/// means nothing it printed is lost when it dies.
fn forward(
    stream: impl std::io::Read + Send + 'static,
    worker_id: u64,
    pid: u32,
    node: Option<String>,
    stderr: bool,
    on_log: OnLog,
    file: super::worker_logs::Sink,
) {
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut function = String::new();
        let mut reader = std::io::BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let mut raw = &line[..];
            while let [rest @ .., b'\n' | b'\r'] = raw {
                raw = rest;
            }
            // Output need not be UTF-8: the file keeps the bytes, the
            // forwarded line replaces what is not.
            let text = String::from_utf8_lossy(raw);
            if let Some(f) = text.strip_prefix(TASK_MARKER) {
                function = f.to_string();
                continue;
            }
            file.line(raw);
            if !reader.buffer().contains(&b'\n') {
                file.flush();
            }
            let at = match &node {
                Some(n) => format!(" node={n}"),
                None => String::new(),
            };
            let label = if function.is_empty() {
                format!("(pid={pid}{at})")
            } else {
                format!("({function} pid={pid}{at})")
            };
            on_log(worker_id, stderr, vec![format!("{label} {text}")]);
        }
    });
}
