//! The drivers of jobs (`fleet job submit`) on this machine. A job's
//! executable runs in a session and process group of its own, so it
//! outlives the terminal and the machine it was submitted from; its stdout
//! and stderr (with its workers' lines, which the head forwards to it) go
//! to one file here, which `fleet job logs` reads through the head. Used by
//! the head for its own machine and by node agents for theirs.

use std::collections::{HashMap, HashSet};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use parking_lot::Mutex;
use tonic::{Request, Response, Status};

use crate::proto;

/// Set in a job's driver: the id of the job it runs as.
pub const ENV_JOB_ID: &str = "FLEET_JOB_ID";

/// Job states as `JobInfo::state` carries them.
pub(crate) const PENDING: &str = "PENDING";
pub(crate) const RUNNING: &str = "RUNNING";
pub(crate) const SUCCEEDED: &str = "SUCCEEDED";
pub(crate) const FAILED: &str = "FAILED";
pub(crate) const STOPPED: &str = "STOPPED";

/// How long `fleet job stop` waits after SIGTERM before SIGKILL.
fn stop_grace() -> Duration {
    std::env::var("FLEET_JOB_STOP_GRACE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(5))
}

/// Called with what changed about a job (id, state, times, exit code).
pub(crate) type OnUpdate = Arc<dyn Fn(proto::JobInfo) + Send + Sync>;

/// A stream of a job's output.
pub(crate) type LogStream = Pin<Box<dyn Stream<Item = Result<proto::LogChunk, Status>> + Send>>;

/// Milliseconds since the Unix epoch.
pub(crate) fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// A job's record as JSON (the dashboard, `fleet job list --json`).
pub(crate) fn to_json(j: &proto::JobInfo) -> serde_json::Value {
    serde_json::json!({
        "id": j.id,
        "program": j.program,
        "args": j.args,
        "node": j.node,
        "state": j.state,
        "exit_code": j.exit_code,
        "submit_millis": j.submit_millis,
        "start_millis": j.start_millis,
        "end_millis": j.end_millis,
        "message": j.message,
        "pid": j.pid,
        "log_path": j.log_path,
    })
}

/// A job id a peer may name: `job-` and hex digits, so no request reaches
/// outside the jobs folder.
pub(crate) fn valid_id(id: &str) -> bool {
    id.strip_prefix("job-")
        .is_some_and(|h| !h.is_empty() && h.len() <= 32 && h.chars().all(|c| c.is_ascii_hexdigit()))
}

/// What a job's driver needs to run.
pub(crate) struct Launch {
    pub(crate) id: String,
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<String>,
    /// `KEY=VALUE` pairs.
    pub(crate) env: Vec<String>,
    /// The head's address and token, for the driver to join.
    pub(crate) head: String,
    pub(crate) token: String,
}

#[derive(Default)]
struct Table {
    /// Running drivers: id to process (group) id.
    running: HashMap<String, i32>,
    /// Jobs `stop` was asked for: a later start does not run, an exit
    /// counts as STOPPED.
    stopped: HashSet<String>,
}

/// Runs jobs' drivers on this machine.
pub(crate) struct JobRunner {
    dir: PathBuf,
    table: Arc<Mutex<Table>>,
    on_update: OnUpdate,
}

impl JobRunner {
    /// Keeps each job's output under `dir/ID/`.
    pub(crate) fn new(dir: PathBuf, on_update: OnUpdate) -> Self {
        JobRunner {
            dir,
            table: Arc::default(),
            on_update,
        }
    }

    /// The output file of job `id` on this machine.
    pub(crate) fn log_path(&self, id: &str) -> Option<PathBuf> {
        valid_id(id).then(|| self.dir.join(id).join("output.log"))
    }

    /// Whether the driver of `id` still runs here.
    pub(crate) fn is_running(&self, id: &str) -> bool {
        self.table.lock().running.contains_key(id)
    }

    /// Starts a job's driver; returns its state (RUNNING, or FAILED with
    /// why). Its end is reported through `on_update`.
    pub(crate) fn start(&self, l: Launch) -> proto::JobInfo {
        let mut info = proto::JobInfo {
            id: l.id.clone(),
            start_millis: now_millis(),
            ..Default::default()
        };
        let fail = |mut info: proto::JobInfo, why: String| {
            tracing::warn!(job = %info.id, "job did not start: {why}");
            info.state = FAILED.into();
            info.message = why;
            info.end_millis = now_millis();
            info
        };
        let Some(log) = self.log_path(&l.id) else {
            return fail(info, format!("`{}` is not a job id", l.id));
        };
        info.log_path = log.to_string_lossy().into_owned();
        if self.table.lock().stopped.contains(&l.id) {
            info.state = STOPPED.into();
            info.message = "stopped before it started".into();
            info.end_millis = info.start_millis;
            return info;
        }
        let folder = self.dir.join(&l.id);
        let out = std::fs::create_dir_all(&folder).and_then(|_| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
        });
        let out = match out {
            Ok(f) => f,
            Err(e) => return fail(info, format!("creating {}: {e}", log.display())),
        };
        let err = match out.try_clone() {
            Ok(f) => f,
            Err(e) => return fail(info, format!("opening {}: {e}", log.display())),
        };
        let mut cmd = std::process::Command::new(&l.program);
        cmd.args(&l.args)
            .current_dir(&folder)
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err);
        // What this process was started with must not leak into the driver.
        {
            use crate::worker::hook::{
                ENV_DIRECT_HOST, ENV_HEAD, ENV_JOB, ENV_NODE, ENV_TOKEN, ENV_WORKER_ID,
            };
            let vars = [
                ENV_WORKER_ID,
                ENV_HEAD,
                ENV_TOKEN,
                ENV_JOB,
                ENV_NODE,
                ENV_DIRECT_HOST,
            ];
            for var in vars {
                cmd.env_remove(var);
            }
        }
        for kv in &l.env {
            if let Some((k, v)) = kv.split_once('=') {
                cmd.env(k, v);
            }
        }
        cmd.env(crate::ENV_ADDRESS, &l.head)
            .env(crate::ENV_TOKEN, &l.token)
            .env(ENV_JOB_ID, &l.id);
        // SAFETY: setsid is async-signal-safe. The driver leads a session
        // and process group of its own: no terminal's hangup reaches it,
        // and `stop` signals the whole group.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return fail(info, format!("starting {}: {e}", l.program.display())),
        };
        let pid = child.id();
        self.table.lock().running.insert(l.id.clone(), pid as i32);
        tracing::info!(job = %l.id, pid, "job started");
        info.state = RUNNING.into();
        info.pid = pid;
        let (table, on_update, id) = (self.table.clone(), self.on_update.clone(), l.id);
        let started = info.start_millis;
        std::thread::Builder::new()
            .name("fleet-job".into())
            .spawn(move || {
                let status = child.wait();
                let mut end = proto::JobInfo {
                    id: id.clone(),
                    pid,
                    start_millis: started,
                    end_millis: now_millis(),
                    ..Default::default()
                };
                let stopped = {
                    let mut t = table.lock();
                    t.running.remove(&id);
                    t.stopped.contains(&id)
                };
                use std::os::unix::process::ExitStatusExt;
                match status {
                    Ok(s) => {
                        end.exit_code = s.code();
                        end.state = match (stopped, s.code()) {
                            (true, _) => STOPPED,
                            (false, Some(0)) => SUCCEEDED,
                            _ => FAILED,
                        }
                        .into();
                        end.message = match (s.code(), s.signal()) {
                            (Some(c), _) => format!("exited with code {c}"),
                            (None, Some(sig)) => format!("killed by signal {sig}"),
                            _ => s.to_string(),
                        };
                        if stopped {
                            end.message = format!("stopped with `fleet job stop`; {}", end.message);
                        }
                    }
                    Err(e) => {
                        end.state = FAILED.into();
                        end.message = format!("waiting for the driver: {e}");
                    }
                }
                tracing::info!(job = %id, state = %end.state, "job ended: {}", end.message);
                on_update(end);
            })
            .map_err(|e| tracing::error!("cannot watch a job: {e}"))
            .ok();
        info
    }

    /// Stops job `id`: SIGTERM to its process group, SIGKILL after a grace
    /// period. A job not started yet will not start. False if it has ended.
    pub(crate) fn stop(&self, id: &str) -> bool {
        let pid = {
            let mut t = self.table.lock();
            t.stopped.insert(id.to_string());
            t.running.get(id).copied()
        };
        let Some(pid) = pid else {
            return false;
        };
        // SAFETY: plain kill(2) of the job's process group.
        unsafe { libc::kill(-pid, libc::SIGTERM) };
        let (table, id) = (self.table.clone(), id.to_string());
        std::thread::spawn(move || {
            let deadline = Instant::now() + stop_grace();
            while Instant::now() < deadline {
                if !table.lock().running.contains_key(&id) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if table.lock().running.get(&id) == Some(&pid) {
                // SAFETY: plain kill(2); the group's leader is not yet reaped,
                // so the group id is still the job's.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
        });
        true
    }

    /// Kills every running job (the head or node agent is stopping).
    pub(crate) fn shutdown(&self) {
        let mut t = self.table.lock();
        let ids: Vec<(String, i32)> = t.running.iter().map(|(k, v)| (k.clone(), *v)).collect();
        for (id, pid) in ids {
            t.stopped.insert(id);
            // SAFETY: plain kill(2) of a job's process group.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
    }

    /// The output of job `id` from `offset`; with `follow`, streams on until
    /// the driver has exited and everything it wrote was sent.
    pub(crate) fn tail(self: &Arc<Self>, id: &str, offset: u64, follow: bool) -> LogStream {
        let Some(path) = self.log_path(id) else {
            return Box::pin(futures::stream::once(async {
                Err(Status::invalid_argument("not a job id"))
            }));
        };
        let runner = self.clone();
        let id = id.to_string();
        tail_file(
            path,
            offset,
            follow,
            Arc::new(move || runner.is_running(&id)),
        )
    }
}

/// Streams a growing file from `offset` while `live` says its writer runs
/// (polling its size: a log file has no change event that reaches here
/// from every writer).
pub(crate) fn tail_file(
    path: PathBuf,
    offset: u64,
    follow: bool,
    live: Arc<dyn Fn() -> bool + Send + Sync>,
) -> LogStream {
    struct Tail {
        path: PathBuf,
        offset: u64,
        follow: bool,
        live: Arc<dyn Fn() -> bool + Send + Sync>,
        done: bool,
    }
    let start = Tail {
        path,
        offset,
        follow,
        live,
        done: false,
    };
    Box::pin(futures::stream::unfold(start, |mut t| async move {
        if t.done {
            return None;
        }
        loop {
            // Asked before reading: whatever was written before the exit
            // is read before the stream ends.
            let live = (t.live)();
            let read = tokio::task::spawn_blocking({
                let (path, offset) = (t.path.clone(), t.offset);
                move || read_at(&path, offset)
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            match read {
                Ok((from, data)) if !data.is_empty() => {
                    t.offset = from + data.len() as u64;
                    return Some((Ok(proto::LogChunk { data: data.into() }), t));
                }
                Ok(_) if !t.follow || !live => return None,
                Err(e) if e.kind() != std::io::ErrorKind::NotFound || !t.follow || !live => {
                    t.done = true;
                    let why = format!("reading {}: {e}", t.path.display());
                    return Some((Err(Status::not_found(why)), t));
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }))
}

/// Up to 64 KiB of `path` from `offset`, and the offset they start at: 0
/// when the file is shorter than `offset` (it was rotated, and a new one
/// begun), as `tail -F` does.
fn read_at(path: &std::path::Path, offset: u64) -> std::io::Result<(u64, Vec<u8>)> {
    use std::io::{Read, Seek};
    let mut f = std::fs::File::open(path)?;
    let offset = if f.metadata()?.len() < offset {
        0
    } else {
        offset
    };
    f.seek(std::io::SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(64 << 10);
    f.take(64 << 10).read_to_end(&mut buf)?;
    Ok((offset, buf))
}

/// The `JobHost` service of a node agent: the output of jobs run there.
pub(crate) struct JobHostService {
    pub(crate) runner: Arc<JobRunner>,
    /// The cluster token (it changes when the agent rejoins a head
    /// restarted with a new one; empty before the first join).
    pub(crate) token: crate::node::transfer::SharedToken,
    /// The output files of the workers run here.
    pub(crate) workers: Arc<crate::node::worker_logs::WorkerLogs>,
}

#[tonic::async_trait]
impl proto::job_host_server::JobHost for JobHostService {
    type LogsStream = LogStream;

    async fn logs(
        &self,
        request: Request<proto::JobLogsRequest>,
    ) -> Result<Response<LogStream>, Status> {
        let r = request.into_inner();
        let token = self.token.read().clone();
        if token.is_empty() || r.token != token {
            return Err(Status::unauthenticated("wrong or missing cluster token"));
        }
        Ok(Response::new(self.runner.tail(&r.id, r.offset, r.follow)))
    }

    type WorkerLogsStream = LogStream;

    async fn worker_logs(
        &self,
        request: Request<proto::WorkerLogsRequest>,
    ) -> Result<Response<LogStream>, Status> {
        let r = request.into_inner();
        let token = self.token.read().clone();
        if token.is_empty() || r.token != token {
            return Err(Status::unauthenticated("wrong or missing cluster token"));
        }
        self.workers
            .stream(r.pid, r.tail_lines, r.follow)
            .map(Response::new)
    }
}
