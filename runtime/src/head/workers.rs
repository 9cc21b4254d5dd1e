//! Worker processes seen from the head: starting them on a node, noticing
//! that they exited, and the memory monitor that may stop one.

use super::*;

impl Head {
    /// Starts a worker for `job` on `node`: by the head's own supervisor,
    /// or by asking the node's agent.
    pub(super) fn spawn(&self, node: &str, job: u32) {
        let worker_id = self.next_worker.fetch_add(1, Ordering::Relaxed);
        let failures = self.start_failures.get(&job).map_or(0, |f| *f);
        if failures >= MAX_START_FAILURES {
            tracing::error!(
                job,
                "workers of this job keep failing to start; not starting more"
            );
            let out = {
                let mut st = self.state.lock();
                st.worker_started(node, job, false);
                st.detached_cannot_start(job);
                st.take_outbox()
            };
            self.flush(out);
            return;
        }
        self.worker_jobs.insert(worker_id, job);
        let (session, binary) = {
            let st = self.state.lock();
            let session = st.nodes.get(node).and_then(|n| n.session);
            let binary = st.jobs.get(&job).and_then(|j| j.binary.clone());
            (session, binary)
        };
        match session {
            Some(s) => {
                self.started
                    .lock()
                    .insert(worker_id, (node.to_string(), job));
                if let Some(tx) = self.senders.get(&s) {
                    let _ = tx.send(proto::HeadOp {
                        op: Some(head_op::Op::SpawnWorker(proto::SpawnWorker {
                            worker_id,
                            job,
                            binary_hash: binary.unwrap_or_default(),
                        })),
                    });
                }
            }
            None => {
                let program = match &binary {
                    Some(hash) => self.binary_path(hash),
                    None => std::env::current_exe().ok(),
                };
                match (self.supervisor.get(), program) {
                    (Some(s), Some(program)) => {
                        self.started
                            .lock()
                            .insert(worker_id, (node.to_string(), job));
                        s.spawn(worker_id, program, job);
                    }
                    _ => self.state.lock().worker_started(node, job, false),
                }
            }
        }
    }

    /// A worker process exited (seen by a supervisor).
    pub(crate) fn worker_exited(&self, worker_id: u64, status: String) {
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        let started = self.started.lock().remove(&worker_id);
        if self.connected_workers.remove(&worker_id).is_some() {
            // Its session's end does the bookkeeping; the status says how
            // it died to the task it ran.
            tracing::debug!(worker_id, "worker exited: {status}");
            let out = {
                let mut st = self.state.lock();
                st.worker_exit_status(worker_id, status);
                st.dispatch();
                st.take_outbox()
            };
            self.flush(out);
            return;
        }
        let job_ended = started
            .as_ref()
            .is_some_and(|(_, job)| !st_has_job(&self.state, *job));
        if job_ended {
            // It started as its job ended and was refused: nothing wrong.
            tracing::debug!(worker_id, "worker exited before connecting: {status}");
        } else {
            tracing::warn!(worker_id, "worker exited before connecting: {status}");
        }
        if let Some((_, job)) = &started {
            *self.start_failures.entry(*job).or_default() += 1;
        }
        let out = {
            let mut st = self.state.lock();
            if let Some((node, job)) = started {
                st.worker_started(&node, job, false);
                if status.starts_with("cannot run") {
                    if let Some(n) = st.nodes.get_mut(&node) {
                        n.excluded.insert(job);
                    }
                }
            }
            st.keep_pool();
            st.dispatch();
            st.take_outbox()
        };
        self.flush(out);
    }

    /// Applies `what` after `delay` (a dead worker's status that never
    /// came, a retry's backoff).
    pub(super) fn put_off(&self, delay: std::time::Duration, what: scheduler::Later) {
        let Some(me) = self.me.upgrade() else { return };
        let apply = move || {
            if me.stopping.load(Ordering::Acquire) {
                return;
            }
            let out = {
                let mut st = me.state.lock();
                st.later(what);
                st.dispatch();
                st.take_outbox()
            };
            me.flush(out);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    tokio::time::sleep(delay).await;
                    apply();
                });
            }
            // Called from a supervisor's thread: a thread of its own.
            Err(_) => {
                std::thread::spawn(move || {
                    std::thread::sleep(delay);
                    apply();
                });
            }
        }
    }

    /// Starts the memory monitor of the head's own node (after
    /// `attach_supervisor`); a bad `FLEET_MEMORY_THRESHOLD` is an error.
    pub(crate) fn start_memory_monitor(&self) -> crate::Result<()> {
        use crate::node::memory_monitor;
        let threshold = memory_monitor::Threshold::from_env().map_err(crate::Error::Startup)?;
        let Some(live) = self.supervisor.get().map(|s| s.live()) else {
            return Ok(());
        };
        let (me, me2) = (self.me.clone(), self.me.clone());
        let node = self.node.clone();
        memory_monitor::start(
            threshold,
            move || live.lock().iter().map(|(w, p)| (*w, *p)).collect(),
            move |report| {
                me.upgrade()
                    .is_some_and(|h| h.memory_pressure(&node, &report))
            },
            move || {
                me2.upgrade()
                    .is_none_or(|h| h.stopping.load(Ordering::Acquire))
            },
        );
        Ok(())
    }

    /// `node` is above its memory threshold: the scheduler picks a worker
    /// and it is killed, here or by the node's agent. True if one was.
    pub(super) fn memory_pressure(&self, node: &str, report: &proto::MemoryPressure) -> bool {
        let (victim, session) = {
            let mut st = self.state.lock();
            let victim = st.memory_pressure(node, report);
            (victim, st.nodes.get(node).and_then(|n| n.session))
        };
        let Some((worker_id, _)) = victim else {
            return false;
        };
        if node == self.node {
            let killed = self.supervisor.get().is_some_and(|s| s.kill(worker_id));
            if !killed {
                self.state.lock().memory_kill_failed(worker_id);
            }
            return killed;
        }
        match session.and_then(|s| self.senders.get(&s)) {
            Some(tx) => tx
                .send(proto::HeadOp {
                    op: Some(head_op::Op::KillWorker(worker_id)),
                })
                .is_ok(),
            None => {
                self.state.lock().memory_kill_failed(worker_id);
                false
            }
        }
    }
}
