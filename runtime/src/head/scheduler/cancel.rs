//! `fleet::cancel` and `fleet::force_cancel` at the head.
//!
//! A task the head still holds (queued, waiting for arguments, waiting
//! aside, in an actor's queue, or between attempts) finishes at once as
//! `Cancelled` and never runs. A task a worker has is marked: the worker
//! drops it if it has not started it, lets `fleet::is_cancelled()` turn true
//! if it runs it, or (force, plain tasks only) exits, and the head replaces
//! it. Whatever a marked task returns, it finishes as `Cancelled`. Tasks
//! that depend on a cancelled result fail with the same error, and a
//! recursive cancel reaches every task the cancelled ones submitted.

use std::collections::HashMap;

use crate::proto::{self, head_op::Op, object_value::Payload};

use super::super::state::State;

impl State {
    /// `client` asks to cancel `c.task_id`; only tasks of its own job.
    pub(in crate::head) fn cancel(&mut self, client: u32, c: proto::Cancel) {
        let job = self.job_of(client);
        if self.tasks.get(&c.task_id).is_none_or(|t| t.job != job) {
            return;
        }
        // Who submitted what is found now, from the unfinished tasks' specs,
        // rather than kept per task on the way in: cancels are rare, and
        // the submit path stays free of it.
        let mut children = if c.recursive {
            self.children_of_unfinished()
        } else {
            HashMap::new()
        };
        let mut work = vec![(c.task_id, true)];
        while let Some((id, root)) = work.pop() {
            if let Some(kids) = children.remove(&id) {
                work.extend(kids.into_iter().map(|k| (k, false)));
            }
            let how = match (root, c.force) {
                (true, false) => "was cancelled (fleet::cancel)",
                (true, true) => "was cancelled (fleet::force_cancel)",
                (false, _) => "was cancelled with the task that submitted it",
            };
            self.cancel_one(id, c.force, how);
        }
    }

    /// Unfinished tasks by the unfinished task that submitted them.
    fn children_of_unfinished(&self) -> HashMap<u64, Vec<u64>> {
        let mut children: HashMap<u64, Vec<u64>> = HashMap::new();
        for (id, t) in self.tasks.iter() {
            let parent = t.spec.parent_task;
            if parent != 0 && self.tasks.contains_key(&parent) {
                children.entry(parent).or_default().push(id);
            }
        }
        children
    }

    pub(super) fn cancel_one(&mut self, id: u64, force: bool, how: &'static str) {
        let Some(t) = self.tasks.get(&id) else {
            return; // finished (or never existed): nothing to do
        };
        if t.spec.create.is_some() {
            return; // an actor's creation: `fleet::kill` stops actors
        }
        match t.worker {
            None => {
                let e = self.cancelled_error(id, how);
                self.complete(id, Payload::Error(Box::new(e)), Vec::new());
            }
            Some(worker) => {
                // Actor calls stop only cooperatively: killing the process
                // would take the actor's state with it.
                let force = force && t.spec.actor_id == 0;
                self.control.cancelled.insert(id, how);
                self.out.push(
                    worker,
                    Op::Cancel(proto::Cancel {
                        task_id: id,
                        force,
                        recursive: false,
                    }),
                );
            }
        }
    }
}
