//! The state API behind `fleet list`: rows of tasks (unfinished, then the
//! recently finished), actors, objects, nodes, jobs (submitted with
//! `fleet job submit`, and the drivers connected now) and workers,
//! filtered by state, function, node, and cut at a limit, as JSON.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::actors::Life;
use super::state::{ObjState, State};
use crate::proto::{self, object_value::Payload};

/// The kinds `fleet list` knows.
pub(crate) const KINDS: &[&str] = &["tasks", "actors", "objects", "nodes", "jobs", "workers"];

fn hex(id: u64) -> String {
    format!("{id:016x}")
}

impl State {
    /// The rows `req` asks for and how many matched; an error names the
    /// kinds there are. `submitted` are the head's `fleet job` records, and
    /// `drivers` says which driver (by job number) runs which of them.
    pub(crate) fn list(
        &self,
        req: &proto::ListRequest,
        submitted: &[proto::JobInfo],
        drivers: &HashMap<u32, String>,
    ) -> Result<(Vec<Value>, usize), String> {
        let rows: Vec<Value> = match req.kind.as_str() {
            "tasks" => self.task_rows(),
            "actors" => self.actor_rows(),
            "objects" => self.object_rows(),
            "nodes" => self.node_rows(),
            "jobs" => self.job_rows(submitted, drivers),
            "workers" => self.worker_rows(),
            other => {
                return Err(format!(
                    "cannot list `{other}`; choose one of: {}",
                    KINDS.join(", ")
                ))
            }
        };
        let field = |r: &Value, k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let matched: Vec<Value> = rows
            .into_iter()
            .filter(|r| req.state.is_empty() || field(r, "state").eq_ignore_ascii_case(&req.state))
            .filter(|r| {
                req.function.is_empty()
                    || field(r, "function").contains(&req.function)
                    || field(r, "class").contains(&req.function)
                    || field(r, "entrypoint").contains(&req.function)
            })
            .filter(|r| {
                req.node.is_empty() || field(r, "node") == req.node || field(r, "name") == req.node
            })
            .collect();
        let total = matched.len();
        let limit = if req.limit == 0 {
            100
        } else {
            req.limit as usize
        };
        Ok((matched.into_iter().take(limit).collect(), total))
    }

    fn task_rows(&self) -> Vec<Value> {
        let mut rows: Vec<Value> = self
            .tasks
            .iter()
            .map(|(id, t)| {
                let worker = t.worker.and_then(|c| self.workers.get(&c));
                let state = if t.worker.is_some() {
                    "running"
                } else if t.missing > 0 {
                    "waiting"
                } else {
                    "ready"
                };
                json!({
                    "id": hex(id),
                    "function": &*t.function,
                    "state": state,
                    "node": worker.map(|w| w.node.clone()).unwrap_or_default(),
                    "pid": worker.map(|w| w.pid),
                    "job": t.job,
                    "retries_left": t.retries_left,
                })
            })
            .collect();
        // leases: direct tasks their workers reported running.
        rows.extend(self.workers.values().filter_map(|w| {
            let r = w.direct_running.as_ref()?;
            Some(json!({
                "id": hex(r.task_id),
                "function": &*r.function,
                "state": "running",
                "node": w.node.clone(),
                "pid": w.pid,
                "job": w.job,
                "retries_left": null,
            }))
        }));
        rows.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        rows.extend(self.events.iter().rev().map(|e| {
            json!({
                "id": hex(e.id),
                "function": &*e.function,
                "state": if e.ok { "finished" } else { "failed" },
                "node": &*e.node,
                "pid": e.pid,
                "duration_us": e.dur_us,
            })
        }));
        rows
    }

    /// Connected workers: where they run, for which job, what they do, and
    /// where drivers reach their `Worker.Direct` service.
    fn worker_rows(&self) -> Vec<Value> {
        let mut rows: Vec<(u64, Value)> = self
            .workers
            .values()
            .map(|w| {
                let state = if w.blocked {
                    "blocked"
                } else if !w.queue.is_empty() {
                    "busy"
                } else if w.actors > 0 {
                    "actor"
                } else {
                    "idle"
                };
                let row = json!({
                    "id": w.worker_id.to_string(),
                    "pid": w.pid,
                    "node": w.node,
                    "job": w.job,
                    "state": state,
                    "function": &*w.function,
                    "queued": w.queue.len(),
                    "direct_address": w.direct_address,
                });
                (w.worker_id, row)
            })
            .collect();
        rows.sort_by_key(|(id, _)| *id);
        rows.into_iter().map(|(_, r)| r).collect()
    }

    fn actor_rows(&self) -> Vec<Value> {
        self.actors
            .iter()
            .map(|(id, a)| {
                let state = match a.life {
                    Life::Pending => "pending",
                    Life::Creating => "creating",
                    Life::Alive => "alive",
                    Life::Dead(_) => "dead",
                };
                let worker = a.worker.and_then(|c| self.workers.get(&c));
                let opts = a.create.create.clone().unwrap_or_default();
                json!({
                    "id": hex(*id),
                    "class": a.create.function,
                    "name": opts.name,
                    "state": state,
                    "node": worker.map(|w| w.node.clone()).unwrap_or_default(),
                    "pid": worker.map(|w| w.pid),
                    "queued_calls": a.queue.len(),
                    "running_calls": a.inflight.len(),
                })
            })
            .collect()
    }

    fn object_rows(&self) -> Vec<Value> {
        self.objects
            .iter()
            .map(|(id, o)| {
                let (state, size, node) = match &o.state {
                    ObjState::Pending => ("pending", 0, String::new()),
                    ObjState::Done(Payload::Inline(b)) => ("inline", b.len() as u64, String::new()),
                    ObjState::Done(Payload::Stored(l)) => (
                        if o.spilled { "spilled" } else { "stored" },
                        l.size,
                        l.node.clone(),
                    ),
                    ObjState::Done(Payload::Error(_)) => ("error", 0, String::new()),
                };
                json!({
                    "id": hex(id),
                    "state": state,
                    "size": size,
                    "node": node,
                    "holders": o.holders,
                    "pins": o.pins,
                    "job": o.job,
                })
            })
            .collect()
    }

    fn node_rows(&self) -> Vec<Value> {
        self.nodes
            .iter()
            .map(|(name, n)| {
                json!({
                    "name": name,
                    "node": name,
                    "state": if n.alive { "alive" } else { "dead" },
                    // How a dead node ended: "left" (its agent stopped on
                    // purpose) or "lost"; null while it is alive.
                    "death": match (n.alive, n.leaving) {
                        (true, _) => Value::Null,
                        (false, true) => json!("left"),
                        (false, false) => json!("lost"),
                    },
                    "num_cpus": n.total_cpus,
                    "available_cpus": n.available_cpus,
                    "workers": n.workers,
                    "store_used": n.store_used,
                    "store_capacity": n.info.store_capacity,
                    // Used/total of memory and custom resources.
                    "resources": n.resources.summary(),
                })
            })
            .collect()
    }

    /// Jobs submitted with `fleet job submit` (oldest first), then the
    /// drivers and detached actors' jobs not among them. A submitted job's
    /// row carries its driver's workers, unfinished tasks (direct ones once
    /// reported running) and direct tasks done (which the head only
    /// counts) while it runs.
    /// Every row has the same columns; `--function` matches the
    /// entrypoint.
    fn job_rows(&self, submitted: &[proto::JobInfo], drivers: &HashMap<u32, String>) -> Vec<Value> {
        let by_submission: HashMap<&str, u32> = drivers
            .iter()
            .map(|(job, id)| (id.as_str(), *job))
            .collect();
        let counts = |job: Option<u32>| match job.and_then(|j| Some((j, self.jobs.get(&j)?))) {
            Some((j, info)) => (
                Some(self.workers.values().filter(|w| w.job == j).count()),
                // Direct tasks count once their worker said they run.
                Some(
                    self.pending.get(&j).copied().unwrap_or(0)
                        + self
                            .workers
                            .values()
                            .filter(|w| w.job == j && w.direct_running.is_some())
                            .count(),
                ),
                Some(info.direct_tasks),
            ),
            None => (None, None, None),
        };
        let mut rows: Vec<Value> = submitted
            .iter()
            .map(|j| {
                let driver = by_submission.get(j.id.as_str()).copied();
                let (workers, unfinished, direct) = counts(driver);
                let entrypoint = std::iter::once(j.program.as_str())
                    .chain(j.args.iter().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join(" ");
                json!({
                    "id": j.id,
                    "type": "submitted",
                    "state": j.state,
                    "entrypoint": entrypoint,
                    "node": j.node,
                    "driver_job": driver,
                    "start_millis": (j.start_millis != 0).then_some(j.start_millis),
                    "end_millis": (j.end_millis != 0).then_some(j.end_millis),
                    "exit_code": j.exit_code,
                    "workers": workers,
                    "unfinished_tasks": unfinished,
                "direct_tasks": direct,
                })
            })
            .collect();
        let mut own: Vec<(&u32, &super::nodes::Job)> = self
            .jobs
            .iter()
            .filter(|(id, _)| !drivers.contains_key(id))
            .collect();
        own.sort_by_key(|(id, _)| **id);
        rows.extend(own.into_iter().map(|(id, j)| {
            let (workers, unfinished, direct) = counts(Some(*id));
            let (kind, state) = if *id == super::EMBEDDED_JOB || j.driver.is_some() {
                ("driver", "RUNNING")
            } else {
                ("detached", "DETACHED")
            };
            json!({
                "id": id.to_string(),
                "type": kind,
                "state": state,
                "entrypoint": null,
                "node": null,
                "driver_job": id,
                "start_millis": null,
                "end_millis": null,
                "exit_code": null,
                "workers": workers,
                "unfinished_tasks": unfinished,
                "direct_tasks": direct,
            })
        }));
        rows
    }
}
