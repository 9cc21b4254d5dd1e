//! Actors at the head: placement, per-actor call queues, restarts, names.
//!
//! Calls to one actor wait in one queue in arrival order and go to the
//! actor's worker strictly from the front, so calls from one caller run in
//! the order they were made even when some wait for ref arguments.

use std::collections::VecDeque;

use crate::proto::{self, head_op::Op, object_value::Payload};

use super::state::{ObjState, State, Task};

pub(super) enum Life {
    /// Waiting for arguments, CPUs or a worker.
    Pending,
    /// Its constructor runs on `worker`.
    Creating,
    Alive,
    Dead(proto::TaskError),
}

pub(super) struct ActorEntry {
    pub(super) create: proto::TaskSpec,
    pub(super) life: Life,
    pub(super) worker: Option<u32>,
    pub(super) restarts_left: u32,
    /// Calls not yet sent, in arrival order.
    pub(super) queue: VecDeque<u64>,
    /// Calls sent to the worker and not finished.
    pub(super) inflight: Vec<u64>,
    /// The node whose CPUs it holds.
    pub(super) holds_cpus: Option<String>,
}

impl ActorEntry {
    fn opts(&self) -> &proto::ActorSpec {
        self.create
            .create
            .as_ref()
            .expect("an actor's creation spec has its options")
    }
}

fn died(actor: &proto::TaskSpec, message: String) -> proto::TaskError {
    let mut e = proto::TaskError {
        function: format!("{} {:016x}", actor.function, actor.task_id),
        message,
        ..Default::default()
    };
    e.set_kind(proto::ErrorKind::ActorDied);
    e
}

impl State {
    /// A creation was submitted: registers the actor; `Err` if its name is
    /// taken.
    pub(super) fn register_actor(&mut self, spec: &proto::TaskSpec) -> Result<(), Payload> {
        let opts = spec.create.as_ref().expect("checked by the caller");
        if !opts.name.is_empty() {
            if self.names.contains_key(&opts.name) {
                return Err(Payload::Error(Box::new(died(
                    spec,
                    format!("an actor named `{}` already exists", opts.name),
                ))));
            }
            self.names.insert(opts.name.clone(), spec.task_id);
            // The name holds the actor alive until it is killed.
            self.pin_all(&[spec.task_id]);
        }
        self.actors.insert(
            spec.task_id,
            ActorEntry {
                create: spec.clone(),
                life: Life::Pending,
                worker: None,
                restarts_left: opts.max_restarts,
                queue: VecDeque::new(),
                inflight: Vec::new(),
                holds_cpus: None,
            },
        );
        Ok(())
    }

    /// A method call was submitted (already counted as a task).
    pub(super) fn enqueue_call(&mut self, id: u64, actor: u64) -> Option<Payload> {
        let max_task_retries = match self.actors.get_mut(&actor) {
            None => return Some(Self::lost(actor, "the actor is gone")),
            Some(a) => match &a.life {
                Life::Dead(e) => return Some(Payload::Error(Box::new(e.clone()))),
                _ => {
                    a.queue.push_back(id);
                    a.opts().max_task_retries
                }
            },
        };
        if let Some(t) = self.tasks.get_mut(&id) {
            t.retries_left = max_task_retries;
        }
        self.dirty_actors.push(actor);
        None
    }

    /// Places an actor whose creation is ready: on the worker hosting the
    /// fewest actors, with its CPUs reserved for life. False if it must wait.
    pub(super) fn place_actor(&mut self, id: u64) -> bool {
        let Some(a) = self.actors.get(&id) else {
            return true;
        };
        if let Life::Dead(e) = &a.life {
            let e = Payload::Error(Box::new(e.clone()));
            self.complete(id, e, Vec::new());
            return true;
        }
        let need = a.create.num_cpus.max(0.0);
        let res = &a.create.resources;
        let job = self.tasks.get(&id).map(|t| t.job).unwrap_or_default();
        let c = &a.create;
        let only = self.effective_node(job, need, (&c.node, &c.node_soft, &c.resources));
        let Some(w) = self
            .workers
            .iter()
            .filter(|(_, w)| w.job == job && !w.blocked)
            .filter(|(_, w)| only.is_empty() || w.node == only)
            .filter(|(_, w)| {
                self.nodes.get(&w.node).is_some_and(|n| {
                    n.alive
                        && n.available_cpus + 1e-9 >= need
                        && (res.is_empty() || n.resources.fits_now(res))
                })
            })
            .min_by_key(|(_, w)| w.actors)
            .map(|(c, _)| *c)
        else {
            return false;
        };
        let node = self.workers[&w].node.clone();
        let res = res.clone();
        self.take_cpus(&node, need);
        // An actor holds its resources for its life.
        self.take_resources(&node, &res);
        if let Some(worker) = self.workers.get_mut(&w) {
            worker.actors += 1;
        }
        let spec = self.resolve_args(self.actors[&id].create.clone());
        if let Some(a) = self.actors.get_mut(&id) {
            a.life = Life::Creating;
            a.worker = Some(w);
            a.holds_cpus = Some(node);
        }
        if let Some(t) = self.tasks.get_mut(&id) {
            t.worker = Some(w);
        }
        self.out.push(w, Op::Execute(Box::new(spec)));
        true
    }

    /// The constructor finished (or the creation failed before it ran).
    /// The creation's arguments stay pinned while the actor may need
    /// rebuilding; `actor_dead` unpins them.
    pub(super) fn creation_done(&mut self, task: &Task, payload: &Payload) {
        let id = task.spec.task_id;
        let Some(a) = self.actors.get_mut(&id) else {
            for r in a_args(&task.spec.args, task.spec.nested_refs()) {
                self.unpin(r);
            }
            return;
        };
        match (payload, &a.life) {
            (_, Life::Dead(_)) => {}
            (Payload::Error(e), _) => {
                let e = died(&a.create, format!("its constructor failed: {}", e.message));
                self.actor_dead(id, e);
            }
            _ => {
                a.life = Life::Alive;
                self.dirty_actors.push(id);
            }
        }
    }

    pub(super) fn call_done(&mut self, actor: u64, id: u64) {
        if let Some(a) = self.actors.get_mut(&actor) {
            a.inflight.retain(|c| *c != id);
            a.queue.retain(|c| *c != id);
        }
    }

    /// Sends the ready calls at the front of each touched actor's queue.
    pub(super) fn pump_actors(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty_actors);
        dirty.sort_unstable();
        dirty.dedup();
        for actor in dirty {
            while let Some(a) = self.actors.get(&actor) {
                let (Life::Alive, Some(w)) = (&a.life, a.worker) else {
                    break;
                };
                let Some(&front) = a.queue.front() else { break };
                let Some(task) = self.tasks.get(&front) else {
                    self.actors.get_mut(&actor).map(|a| a.queue.pop_front());
                    continue;
                };
                if task.missing > 0 {
                    break;
                }
                let spec = self.resolved(task);
                if let Some(t) = self.tasks.get_mut(&front) {
                    t.worker = Some(w);
                }
                if let Some(a) = self.actors.get_mut(&actor) {
                    a.queue.pop_front();
                    a.inflight.push(front);
                }
                self.out.push(w, Op::Execute(Box::new(spec)));
            }
        }
    }

    /// The worker hosting some actors is gone: restart them or declare them
    /// dead; calls that were running are retried per `max_task_retries`.
    pub(super) fn actors_lost_with(&mut self, worker: u32) {
        let hosted: Vec<u64> = self
            .actors
            .iter()
            .filter(|(_, a)| a.worker == Some(worker))
            .map(|(id, _)| *id)
            .collect();
        for id in hosted {
            let Some(a) = self.actors.get_mut(&id) else {
                continue;
            };
            a.worker = None;
            let held = a
                .holds_cpus
                .take()
                .map(|node| (node, a.create.num_cpus.max(0.0)));
            let res = held.as_ref().map(|_| a.create.resources.clone());
            let inflight = std::mem::take(&mut a.inflight);
            if let Some((node, n)) = held {
                self.give_cpus(&node, n);
                self.give_resources(&node, &res.unwrap_or_default());
            }
            let mut retry = Vec::new();
            let mut fail = Vec::new();
            for c in inflight {
                match self.tasks.get_mut(&c) {
                    Some(t) if t.retries_left > 0 => {
                        t.retries_left -= 1;
                        t.worker = None;
                        retry.push(c);
                    }
                    Some(_) => fail.push(c),
                    None => {}
                }
            }
            let a = self.actors.get_mut(&id).expect("still there");
            for c in retry.into_iter().rev() {
                a.queue.push_front(c);
            }
            let err = died(&a.create, "its worker process died".into());
            for c in fail {
                self.complete(c, Payload::Error(Box::new(err.clone())), Vec::new());
            }
            let a = self.actors.get_mut(&id).expect("still there");
            if matches!(a.life, Life::Dead(_)) {
                continue;
            }
            if a.restarts_left > 0 {
                a.restarts_left -= 1;
                a.life = Life::Pending;
                tracing::warn!(actor = id, "restarting an actor after its worker died");
                let spec = a.create.clone();
                // Rebuild: run the creation again; its arguments are pinned.
                let job = self.objects.get(&id).map(|o| o.job).unwrap_or_default();
                let task = self.make_task(spec, 0, 0, job);
                self.tasks.insert(id, task);
                if let Some(o) = self.objects.get_mut(&id) {
                    o.state = ObjState::Pending;
                }
                self.ready.push_back(id);
            } else {
                let e = died(
                    &a.create,
                    format!(
                        "its worker process died and max_restarts ({}) is used up",
                        a.opts().max_restarts
                    ),
                );
                self.actor_dead(id, e.clone());
                if self.tasks.contains_key(&id) {
                    // It died while its constructor ran.
                    self.complete(id, Payload::Error(Box::new(e)), Vec::new());
                }
            }
        }
    }

    /// Marks an actor dead: queued calls fail, its CPUs and name are freed.
    pub(super) fn actor_dead(&mut self, id: u64, err: proto::TaskError) {
        let Some(a) = self.actors.get_mut(&id) else {
            return;
        };
        if matches!(a.life, Life::Dead(_)) {
            return;
        }
        a.life = Life::Dead(err.clone());
        let held = a
            .holds_cpus
            .take()
            .map(|node| (node, a.create.num_cpus.max(0.0)));
        let res = held.as_ref().map(|_| a.create.resources.clone());
        let worker = a.worker.take();
        // Calls already sent die with it too: the worker drops them.
        let mut queued: Vec<u64> = a.inflight.drain(..).collect();
        queued.extend(a.queue.drain(..));
        let name = a.opts().name.clone();
        let args = a_args(&a.create.args, &a.create.nested_refs);
        if let Some((node, n)) = held {
            self.give_cpus(&node, n);
            self.give_resources(&node, &res.unwrap_or_default());
        }
        if let Some(w) = worker {
            if let Some(worker) = self.workers.get_mut(&w) {
                worker.actors = worker.actors.saturating_sub(1);
            }
            self.out.push(w, Op::DestroyActor(id));
        }
        for c in queued {
            self.complete(c, Payload::Error(Box::new(err.clone())), Vec::new());
        }
        for r in args {
            self.unpin(r);
        }
        if !name.is_empty() && self.names.get(&name) == Some(&id) {
            self.names.remove(&name);
            self.unpin(id);
        }
        self.detached_dead(id);
    }

    pub(super) fn kill_actor(&mut self, id: u64) {
        let Some(a) = self.actors.get(&id) else {
            return;
        };
        let e = died(&a.create, "it was killed with fleet::kill".into());
        self.actor_dead(id, e);
    }

    /// The actor's object was freed: no handle is left anywhere.
    pub(super) fn actor_freed(&mut self, id: u64) {
        if let Some(a) = self.actors.get(&id) {
            let e = died(&a.create, "no handle to it is left".into());
            self.actor_dead(id, e);
            self.actors.remove(&id);
        }
    }

    pub(super) fn lookup(&mut self, client: u32, l: proto::Lookup) {
        let (actor_id, class) = match self.names.get(&l.name).and_then(|id| self.actors.get(id)) {
            Some(a) if !matches!(a.life, Life::Dead(_)) => {
                (a.create.task_id, a.opts().class.clone())
            }
            _ => (0, String::new()),
        };
        self.out.push(
            client,
            Op::Reply(proto::Reply {
                request_id: l.request_id,
                actor_id,
                class,
            }),
        );
    }
}

fn a_args(args: &[proto::Arg], nested_refs: &[u64]) -> Vec<u64> {
    args.iter()
        .filter_map(super::directory::arg_ref)
        .chain(nested_refs.iter().copied())
        .collect()
}
