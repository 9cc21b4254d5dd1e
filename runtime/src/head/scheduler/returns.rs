//! Tasks with several results (`#[remote(num_returns = n)]`): the k-th
//! result is an object of its own, id `task_id + k`, stored and freed on
//! its own. They are created with the task, pinned while it runs, and
//! finished with it; if the task fails, all of them fail with its error.

use std::collections::HashMap;

use crate::proto::{self, head_op::Op, object_value::Payload};

use super::super::directory::arg_ref;
use super::super::state::{ObjState, State};

/// Results after the first that arrived with a task's outcome, until the
/// task completes.
#[derive(Default)]
pub(in crate::head) struct MoreReturns {
    sent: HashMap<u64, Vec<proto::Return>>,
    /// Tasks whose other results were created (so they are theirs to finish).
    opened: std::collections::HashSet<u64>,
}

/// The most results one task may have.
const MAX_RETURNS: u32 = 100_000;

impl State {
    /// A task with several results was submitted: its other results exist
    /// from now on, pending (and pinned until it finishes). An error if the
    /// ids are taken or there are too many.
    pub(in crate::head) fn open_returns(
        &mut self,
        client: u32,
        spec: &proto::TaskSpec,
    ) -> Result<(), Payload> {
        let n = u64::from(spec.num_returns);
        let taken = (1..n.min(u64::from(MAX_RETURNS) + 1))
            .any(|k| self.objects.contains_key(&spec.task_id.wrapping_add(k)));
        // A task cannot wait for (or hold) its own results.
        let own = |r: &u64| *r > spec.task_id && *r - spec.task_id < n;
        let circular = spec.args.iter().filter_map(arg_ref).any(|r| own(&r))
            || spec.nested_refs.iter().any(own);
        if spec.num_returns > MAX_RETURNS
            || taken
            || circular
            || spec.task_id.checked_add(n).is_none()
        {
            let mut e = proto::TaskError {
                function: spec.function.clone(),
                message: format!(
                    "num_returns {} is refused: at most {MAX_RETURNS}, on ids of your own session",
                    spec.num_returns
                ),
                ..Default::default()
            };
            e.set_kind(proto::ErrorKind::Task);
            return Err(Payload::Error(Box::new(e)));
        }
        for k in 1..n {
            let id = spec.task_id + k;
            if self.new_object(id, ObjState::Pending, client) {
                self.pin_all(&[id]);
            }
        }
        self.control.returns.opened.insert(spec.task_id);
        Ok(())
    }

    /// Keeps the other results a worker sent until the task completes.
    pub(in crate::head) fn stash_returns(&mut self, id: u64, more: Vec<proto::Return>) {
        if !more.is_empty() {
            self.control.returns.sent.insert(id, more);
        }
    }

    /// The task `spec` completed with `payload`: finishes its other results
    /// (with the values sent, or the task's error). Returns the tasks that
    /// now fail, with their error, for `complete` to finish.
    pub(in crate::head) fn close_returns(
        &mut self,
        spec: &crate::head::spec::Spec,
        function: &str,
        payload: &Payload,
    ) -> Vec<(u64, Payload)> {
        let sent = self.control.returns.sent.remove(&spec.task_id);
        if !self.control.returns.opened.remove(&spec.task_id) {
            for r in sent.unwrap_or_default() {
                if let Some(Payload::Stored(loc)) = r.value.and_then(|v| v.payload) {
                    self.out.delete.push(loc.path);
                }
            }
            return Vec::new();
        }
        let mut sent: HashMap<u64, proto::Return> = sent
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| Some((r.value.as_ref()?.object_id, r)))
            .collect();
        let mut failed = Vec::new();
        for k in 1..u64::from(spec.num_returns) {
            let id = spec.task_id + k;
            let (value, nested) = match payload {
                Payload::Error(_) => (payload.clone(), Vec::new()),
                _ => match sent
                    .remove(&id)
                    .and_then(|r| Some((r.value?.payload?, r.nested_refs)))
                {
                    Some(v) => v,
                    None => {
                        let mut e = proto::TaskError {
                            function: function.to_string(),
                            message: format!(
                                "the task sent fewer results than its num_returns ({})",
                                spec.num_returns
                            ),
                            ..Default::default()
                        };
                        e.set_kind(proto::ErrorKind::Codec);
                        (Payload::Error(Box::new(e)), Vec::new())
                    }
                },
            };
            failed.extend(self.finish_object(id, value, nested));
            self.unpin(id);
        }
        // Values sent under ids that are not this task's: drop their files.
        for (_, r) in sent {
            if let Some(Payload::Stored(loc)) = r.value.and_then(|v| v.payload) {
                self.out.delete.push(loc.path);
            }
        }
        failed
    }

    /// Finishes an object that no task of its own makes: subscribers hear
    /// of it, dependents become ready (or are returned to fail).
    fn finish_object(
        &mut self,
        id: u64,
        payload: Payload,
        nested: Vec<u64>,
    ) -> Vec<(u64, Payload)> {
        let failed = matches!(payload, Payload::Error(_));
        let Some(o) = self.objects.get_mut(&id) else {
            return Vec::new();
        };
        if !matches!(o.state, ObjState::Pending) {
            return Vec::new();
        }
        for n in &nested {
            if let Some(inner) = self.objects.get_mut(n) {
                inner.pins += 1;
            }
        }
        let Some(o) = self.objects.get_mut(&id) else {
            return Vec::new();
        };
        o.state = ObjState::Done(super::super::directory::kept(&payload));
        o.set_contains(nested);
        let subscribers = o.take_subscribers();
        let dependents = o.take_dependents();
        for c in subscribers {
            self.out.push(
                c,
                Op::Ready(proto::ObjectValue {
                    object_id: id,
                    payload: Some(payload.clone()),
                }),
            );
        }
        self.stored(id);
        let mut out = Vec::new();
        for d in dependents {
            if failed {
                out.push((d, payload.clone()));
            } else if let Some(t) = self.tasks.get_mut(&d) {
                t.missing = t.missing.saturating_sub(1);
                if t.missing == 0 {
                    self.ready.push_back(d);
                }
            }
        }
        out
    }
}
