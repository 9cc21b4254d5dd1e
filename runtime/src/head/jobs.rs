//! Jobs at the head (`fleet job …`, Ray's `ray job submit`): an uploaded
//! executable runs as a driver on the head's machine or on a node agent's,
//! detached from whoever submitted it. The head keeps every job's record
//! (state, exit code, times), runs the ones for its own machine, asks node
//! agents to run theirs, and serves any job's output: from its own files,
//! or streamed from the node agent that ran it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tonic::Status;

use super::Head;
use crate::node::jobs::{
    now_millis, valid_id, JobRunner, Launch, LogStream, FAILED, PENDING, RUNNING,
};
use crate::proto::{self, head_op};

/// The head's table of jobs and the runner for its own machine.
pub(super) struct Jobs {
    head: Weak<Head>,
    table: Mutex<BTreeMap<String, proto::JobInfo>>,
    runner: OnceLock<Arc<JobRunner>>,
    /// Woken whenever a job changes state.
    changed: Notify,
    /// Records of an earlier head at the same address were read.
    restored: std::sync::Once,
    /// Drivers that run a submitted job: their job number to its id.
    drivers: Mutex<std::collections::HashMap<u32, String>>,
}

/// Whether a job has ended.
fn ended(state: &str) -> bool {
    state != PENDING && state != RUNNING
}

impl Jobs {
    pub(super) fn new(head: Weak<Head>) -> Self {
        Jobs {
            head,
            table: Mutex::new(BTreeMap::new()),
            runner: OnceLock::new(),
            changed: Notify::new(),
            restored: std::sync::Once::new(),
            drivers: Mutex::default(),
        }
    }

    /// A driver joined saying it runs submitted job `submission`
    /// (`FLEET_JOB_ID`), as the session of job number `job`.
    pub(super) fn driver_joined(&self, job: u32, submission: &str) {
        if valid_id(submission) {
            self.drivers.lock().insert(job, submission.to_string());
        }
    }

    /// Which driver (by job number) runs which submitted job.
    pub(super) fn drivers(&self) -> std::collections::HashMap<u32, String> {
        self.drivers.lock().clone()
    }

    /// The table, with the records a previous head at this address left
    /// (read once).
    fn table(&self) -> parking_lot::MutexGuard<'_, BTreeMap<String, proto::JobInfo>> {
        self.restored.call_once(|| {
            let restored = self.restore();
            self.table.lock().extend(restored);
        });
        self.table.lock()
    }

    /// Where job records are kept: per head address, under this user's
    /// runtime folder, so a head restarted at the same address (Slurm,
    /// Kubernetes) still lists the jobs it ran before.
    fn records_dir(&self) -> Option<PathBuf> {
        let head = self.head.upgrade()?;
        let name: String = head
            .node
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Some(crate::daemon::runtime_dir().join("job-records").join(name))
    }

    /// Writes a job's record (best effort: a job runs without it).
    fn save(&self, info: &proto::JobInfo) {
        use prost::Message;
        let Some(dir) = self.records_dir() else {
            return;
        };
        let path = dir.join(format!("{}.pb", info.id));
        let partial = dir.join(format!("{}.partial", info.id));
        let written = std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::write(&partial, info.encode_to_vec()))
            .and_then(|_| std::fs::rename(&partial, &path));
        if let Err(e) = written {
            tracing::warn!(job = %info.id, "cannot keep the job's record in {}: {e}", dir.display());
        }
    }

    /// The records a previous head at this address left. Jobs that were
    /// still running then ended with it (its machine's drivers were
    /// killed when it stopped; nodes stop theirs when they lose the head).
    fn restore(&self) -> Vec<(String, proto::JobInfo)> {
        use prost::Message;
        let Some(dir) = self.records_dir() else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "pb") {
                continue;
            }
            let Ok(mut info) = std::fs::read(&path)
                .map_err(|_| ())
                .and_then(|b| proto::JobInfo::decode(&b[..]).map_err(|_| ()))
            else {
                continue;
            };
            if !valid_id(&info.id) {
                continue;
            }
            if !ended(&info.state) {
                info.state = FAILED.into();
                info.message = "the head stopped while it ran".into();
                if info.end_millis == 0 {
                    info.end_millis = now_millis();
                }
                self.save(&info);
            }
            out.push((info.id.clone(), info));
        }
        out
    }

    /// The runner for the head's machine; its jobs' files are under this
    /// user's runtime folder, so they outlive the head.
    fn runner(&self) -> Arc<JobRunner> {
        self.runner
            .get_or_init(|| {
                let head = self.head.clone();
                Arc::new(JobRunner::new(
                    crate::daemon::runtime_dir().join("jobs"),
                    Arc::new(move |info| {
                        if let Some(h) = head.upgrade() {
                            h.jobs.update(info);
                        }
                    }),
                ))
            })
            .clone()
    }

    /// A job's start or end, reported by the runner here or a node agent.
    pub(super) fn update(&self, u: proto::JobInfo) {
        let mut table = self.table();
        let Some(job) = table.get_mut(&u.id) else {
            return;
        };
        if ended(&job.state) {
            return;
        }
        job.state = u.state;
        job.message = u.message;
        if u.pid != 0 {
            job.pid = u.pid;
        }
        if u.start_millis != 0 {
            job.start_millis = u.start_millis;
        }
        if u.end_millis != 0 {
            job.end_millis = u.end_millis;
        }
        if u.exit_code.is_some() {
            job.exit_code = u.exit_code;
        }
        if !u.log_path.is_empty() {
            job.log_path = u.log_path;
        }
        let saved = job.clone();
        drop(table);
        self.save(&saved);
        self.changed.notify_waiters();
    }

    /// `fleet job submit`: records the job and starts it (here, or by
    /// asking the node agent of `node`).
    pub(super) fn submit(&self, r: proto::SubmitJobRequest) -> Result<proto::JobInfo, Status> {
        let head = self
            .head
            .upgrade()
            .ok_or_else(|| Status::unavailable("stopping"))?;
        let program = head
            .binary_path(&r.binary_hash)
            .filter(|p| p.is_file())
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "executable {} was not uploaded (upload it with UploadBinary first)",
                    r.binary_hash
                ))
            })?;
        if let Some(bad) = r.env.iter().find(|kv| !kv.contains('=')) {
            return Err(Status::invalid_argument(format!(
                "environment entry `{bad}` is not KEY=VALUE"
            )));
        }
        let local = r.node.is_empty() || r.node == head.node;
        let session = if local {
            None
        } else {
            let st = head.state.lock();
            match st.nodes.get(&r.node) {
                Some(n) if n.alive && n.session.is_some() => n.session,
                Some(n) if n.alive => None,
                _ => {
                    let mut alive: Vec<&String> = st
                        .nodes
                        .iter()
                        .filter(|(_, n)| n.alive)
                        .map(|(k, _)| k)
                        .collect();
                    alive.sort();
                    return Err(Status::not_found(format!(
                        "no live node named {}; the cluster's nodes are {alive:?} (see `fleet status`)",
                        r.node
                    )));
                }
            }
        };
        let id = format!("job-{:08x}", rand::random::<u32>());
        let info = proto::JobInfo {
            id: id.clone(),
            program: r.program.clone(),
            args: r.args.clone(),
            node: if local {
                head.node.clone()
            } else {
                r.node.clone()
            },
            state: PENDING.into(),
            submit_millis: now_millis(),
            ..Default::default()
        };
        self.save(&info);
        self.table().insert(id.clone(), info);
        tracing::info!(job = %id, node = %r.node, program = %r.program, "job submitted");
        match session {
            None => {
                let started = self.runner().start(Launch {
                    id: id.clone(),
                    program,
                    args: r.args,
                    env: r.env,
                    head: head.node.clone(),
                    token: head.token.clone(),
                });
                self.update(started);
            }
            Some(s) => {
                let op = head_op::Op::RunJob(Box::new(proto::RunJob {
                    id: id.clone(),
                    binary_hash: r.binary_hash,
                    args: r.args,
                    env: r.env,
                }));
                if let Some(tx) = head.senders.get(&s) {
                    let _ = tx.send(proto::HeadOp { op: Some(op) });
                }
            }
        }
        self.get(&id)
    }

    pub(super) fn get(&self, id: &str) -> Result<proto::JobInfo, Status> {
        self.table().get(id).cloned().ok_or_else(|| {
            Status::not_found(format!(
                "no job {id} on this cluster (see `fleet job list`)"
            ))
        })
    }

    /// Every job, oldest first.
    pub(super) fn list(&self) -> Vec<proto::JobInfo> {
        let mut jobs: Vec<proto::JobInfo> = self.table().values().cloned().collect();
        jobs.sort_by(|a, b| (a.submit_millis, &a.id).cmp(&(b.submit_millis, &b.id)));
        jobs
    }

    /// `fleet job stop`: a running driver's process group gets SIGTERM
    /// (SIGKILL after a grace period); a pending one does not start.
    pub(super) fn stop(&self, id: &str) -> Result<proto::JobInfo, Status> {
        let job = self.get(id)?;
        if ended(&job.state) {
            return Ok(job);
        }
        let head = self
            .head
            .upgrade()
            .ok_or_else(|| Status::unavailable("stopping"))?;
        if job.node == head.node {
            self.runner().stop(id);
        } else {
            let session = head
                .state
                .lock()
                .nodes
                .get(&job.node)
                .and_then(|n| n.session);
            match session.and_then(|s| head.senders.get(&s).map(|tx| tx.clone())) {
                Some(tx) => {
                    let _ = tx.send(proto::HeadOp {
                        op: Some(head_op::Op::StopJob(id.to_string())),
                    });
                }
                None => {
                    return Err(Status::unavailable(format!(
                        "job {id} runs on node {}, which is not connected",
                        job.node
                    )))
                }
            }
        }
        self.get(id)
    }

    /// A node agent's session ended: its jobs are lost with it.
    pub(super) fn node_lost(&self, node: &str) {
        let lost: Vec<String> = self
            .table
            .lock()
            .values()
            .filter(|j| j.node == node && !ended(&j.state))
            .map(|j| j.id.clone())
            .collect();
        for id in lost {
            self.update(proto::JobInfo {
                id,
                state: FAILED.into(),
                message: format!("its node {node} was lost"),
                end_millis: now_millis(),
                ..Default::default()
            });
        }
    }

    /// Kills the jobs running on the head's machine (the head stops).
    pub(super) fn shutdown(&self) {
        if let Some(r) = self.runner.get() {
            r.shutdown();
        }
    }

    /// Waits until job `id` has left PENDING (or `limit` passes).
    async fn started(&self, id: &str, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            match self.table().get(id) {
                Some(j) if j.state == PENDING => {}
                _ => return,
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// `fleet job logs`: the driver's output from `offset`, from the file
    /// here or from the node agent that ran it.
    pub(super) async fn logs(&self, r: proto::JobLogsRequest) -> Result<LogStream, Status> {
        if !valid_id(&r.id) {
            return Err(Status::invalid_argument(format!(
                "`{}` is not a job id",
                r.id
            )));
        }
        let head = self
            .head
            .upgrade()
            .ok_or_else(|| Status::unavailable("stopping"))?;
        if r.follow {
            self.started(&r.id, Duration::from_secs(3600)).await;
        }
        let job = self.get(&r.id)?;
        if job.state == PENDING {
            return Ok(Box::pin(futures::stream::empty()));
        }
        if job.node == head.node {
            return Ok(self.runner().tail(&r.id, r.offset, r.follow));
        }
        let alive = head
            .state
            .lock()
            .nodes
            .get(&job.node)
            .is_some_and(|n| n.alive);
        if !alive {
            return Err(Status::unavailable(format!(
                "job {} ran on node {}, which is gone; its output is in {} on that machine",
                r.id, job.node, job.log_path
            )));
        }
        let channel = crate::net::channel(&job.node)
            .await
            .map_err(|e| Status::unavailable(format!("reaching node {}: {e}", job.node)))?;
        let mut client = proto::job_host_client::JobHostClient::new(channel);
        let stream = client
            .logs(proto::JobLogsRequest {
                token: head.token.clone(),
                ..r
            })
            .await?
            .into_inner();
        Ok(Box::pin(stream))
    }

    /// The jobs as JSON for the dashboard.
    pub(super) fn json(&self) -> serde_json::Value {
        self.list().iter().map(crate::node::jobs::to_json).collect()
    }
}
