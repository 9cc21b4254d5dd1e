//! `fleet logs`: a worker's output file, found by pid, by a task it ran or
//! by an actor it hosts, and read from the node that ran it (the head's
//! own files, or the `JobHost` service of that node's agent), so the CLI
//! needs no access to any node but the head.

use tonic::Status;

use super::state::State;
use super::Head;
use crate::node::jobs::LogStream;
use crate::proto;

/// The worker whose output is asked for.
pub(crate) struct Found {
    pub(crate) pid: u32,
    pub(crate) node: String,
    /// The head knows the worker (it is or was one of the cluster's), so a
    /// missing file means it printed nothing rather than a wrong pid.
    pub(crate) known: bool,
}

fn parse_id(text: &str) -> Option<u64> {
    let t = text.trim();
    let t = t.strip_prefix("0x").unwrap_or(t);
    (!t.is_empty() && t.len() <= 16)
        .then(|| u64::from_str_radix(t, 16).ok())
        .flatten()
}

impl State {
    /// Which worker `r` names, or why none.
    fn find_worker(&self, r: &proto::WorkerLogsRequest) -> Result<Found, Status> {
        let given = [r.pid != 0, !r.task.is_empty(), !r.actor.is_empty()];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(Status::invalid_argument(
                "name exactly one worker: --pid PID, --task ID or --actor NAME",
            ));
        }
        let of_session = |session: u32| {
            self.workers.get(&session).map(|w| Found {
                pid: w.pid,
                node: w.node.clone(),
                known: true,
            })
        };
        if !r.task.is_empty() {
            let id = parse_id(&r.task).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "`{}` is not a task id; task ids are hex, as `fleet list tasks` shows them",
                    r.task
                ))
            })?;
            if let Some(t) = self.tasks.get(&id) {
                return t.worker.and_then(of_session).ok_or_else(|| {
                    Status::failed_precondition(format!(
                        "task {id:016x} ({}) has not started on a worker yet, so it has no \
                         output; see `fleet list tasks`",
                        t.function
                    ))
                });
            }
            if let Some(e) = self.events.iter().rev().find(|e| e.id == id) {
                if e.pid != 0 {
                    return Ok(Found {
                        pid: e.pid,
                        node: e.node.to_string(),
                        known: true,
                    });
                }
            }
            return Err(Status::not_found(format!(
                "no task {id:016x} among the running tasks and the {} most recently finished; \
                 see `fleet list tasks`",
                super::observe::EVENTS_KEPT
            )));
        }
        if !r.actor.is_empty() {
            let id = self
                .names
                .get(&r.actor)
                .copied()
                .or_else(|| parse_id(&r.actor).filter(|id| self.actors.contains_key(id)))
                .ok_or_else(|| {
                    let mut names: Vec<&String> = self.names.keys().collect();
                    names.sort();
                    names.truncate(20);
                    Status::not_found(format!(
                        "no actor named `{}` (nor with that id) on this cluster; named actors: \
                         {names:?}; see `fleet list actors`",
                        r.actor
                    ))
                })?;
            let actor = &self.actors[&id];
            return actor.worker.and_then(of_session).ok_or_else(|| {
                Status::failed_precondition(format!(
                    "actor `{}` has no worker now (it is not started yet, restarting, or dead); \
                     see `fleet list actors`",
                    r.actor
                ))
            });
        }
        let on_node = |node: &str| r.node.is_empty() || r.node == node;
        if let Some(w) = self
            .workers
            .values()
            .find(|w| w.pid == r.pid && on_node(&w.node))
        {
            return Ok(Found {
                pid: w.pid,
                node: w.node.clone(),
                known: true,
            });
        }
        if let Some(e) = self
            .events
            .iter()
            .rev()
            .find(|e| e.pid == r.pid && on_node(&e.node))
        {
            return Ok(Found {
                pid: e.pid,
                node: e.node.to_string(),
                known: true,
            });
        }
        if !r.node.is_empty() {
            if !self.nodes.contains_key(&r.node) {
                let mut names: Vec<&String> = self.nodes.keys().collect();
                names.sort();
                return Err(Status::not_found(format!(
                    "no node named {}; the cluster's nodes are {names:?} (see `fleet list nodes`)",
                    r.node
                )));
            }
            return Ok(Found {
                pid: r.pid,
                node: r.node.clone(),
                known: false,
            });
        }
        Err(Status::not_found(format!(
            "no worker with pid {} is running, nor ran a recent task; for an older worker \
             name its node too: --node NAME (see `fleet list nodes`)",
            r.pid
        )))
    }
}

impl Head {
    /// `fleet logs`: the worker `r` names, and its output.
    pub(crate) async fn worker_logs(
        &self,
        r: proto::WorkerLogsRequest,
    ) -> Result<(Found, LogStream), Status> {
        let found = self.state.lock().find_worker(&r)?;
        let stream = if found.node == self.node {
            let logs = self
                .supervisor
                .get()
                .map(|s| s.logs())
                .ok_or_else(|| Status::unavailable("the head runs no workers"))?;
            logs.stream(found.pid, r.tail_lines, r.follow)
        } else {
            self.remote_worker_logs(&found, &r).await
        };
        match stream {
            Ok(s) => Ok((found, s)),
            // A worker of the cluster that printed nothing has no file.
            Err(e) if e.code() == tonic::Code::NotFound && found.known => {
                Ok((found, Box::pin(futures::stream::empty())))
            }
            Err(e) => Err(e),
        }
    }

    async fn remote_worker_logs(
        &self,
        found: &Found,
        r: &proto::WorkerLogsRequest,
    ) -> Result<LogStream, Status> {
        let alive = self
            .state
            .lock()
            .nodes
            .get(&found.node)
            .is_some_and(|n| n.alive);
        if !alive {
            return Err(Status::unavailable(format!(
                "worker {} ran on node {}, which is gone; its output is in \
                 logs/node-*/worker-{}.log under that machine's fleet folder",
                found.pid, found.node, found.pid
            )));
        }
        let channel = crate::net::channel(&found.node)
            .await
            .map_err(|e| Status::unavailable(format!("reaching node {}: {e}", found.node)))?;
        let mut client = proto::job_host_client::JobHostClient::new(channel);
        let stream = client
            .worker_logs(proto::WorkerLogsRequest {
                token: self.token.clone(),
                pid: found.pid,
                follow: r.follow,
                tail_lines: r.tail_lines,
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok(Box::pin(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_id;

    #[test]
    fn task_ids_are_hex() {
        assert_eq!(parse_id("00000001000000ff"), Some(0x1_0000_00ff));
        assert_eq!(parse_id("0xff"), Some(255));
        assert_eq!(parse_id("zz"), None);
        assert_eq!(parse_id(""), None);
        assert_eq!(parse_id("11112222333344445"), None);
    }
}
