//! The object directory: where each object's value is, who holds it, and
//! when it can be freed.

use crate::proto::{self, head_op::Op, object_value::Payload};

use super::state::{Obj, ObjState, State};

fn lost_error(id: u64, why: &str) -> proto::TaskError {
    let mut e = proto::TaskError {
        function: format!("{id:016x}"),
        message: why.to_string(),
        ..Default::default()
    };
    e.set_kind(proto::ErrorKind::ObjectLost);
    e
}

impl State {
    pub(super) fn new_object(&mut self, id: u64, state: ObjState, holder: u32) -> bool {
        if self.objects.contains_key(&id) {
            tracing::warn!(id, "session {holder} reused object id; ignored");
            return false;
        }
        self.objects.insert(
            id,
            Box::new(Obj {
                state,
                holders: 1,
                pins: 0,
                subscriber: 0,
                last_used: 0,
                spilled: false,
                more: None,
                job: 0,
                creator: 0,
            }),
        );
        let in_pages = self.objects.in_pages_of(id, holder);
        if let Some(s) = self.sessions.get_mut(&holder) {
            s.created += 1;
            if !in_pages {
                s.elsewhere.insert(id);
            }
            let job = s.job;
            if let Some(o) = self.objects.get_mut(&id) {
                o.job = job;
                o.creator = holder;
            }
        }
        true
    }

    /// Pins `ids` (refs nested in a value, or task arguments).
    pub(super) fn pin_all(&mut self, ids: &[u64]) {
        for id in ids {
            if let Some(o) = self.objects.get_mut(id) {
                o.pins += 1;
            }
        }
    }

    pub(super) fn unpin(&mut self, id: u64) {
        if let Some(o) = self.objects.get_mut(&id) {
            o.pins = o.pins.saturating_sub(1);
            self.maybe_free(id);
        }
    }

    pub(super) fn put(&mut self, client: u32, put: proto::Put) {
        let Some(value) = put.value else { return };
        let Some(payload) = value.payload else { return };
        let id = value.object_id;
        if self.new_object(id, ObjState::Done(kept(&payload)), client) {
            self.pin_all(&put.nested_refs);
            if let Some(o) = self.objects.get_mut(&id) {
                o.set_contains(put.nested_refs);
            }
            self.stored(id);
        }
    }

    pub(super) fn subscribe(&mut self, client: u32, id: u64) {
        self.touch(id);
        let payload = match self.objects.get_mut(&id) {
            None => Payload::Error(Box::new(lost_error(id, "it was freed or never existed"))),
            Some(o) => match &o.state {
                ObjState::Pending => {
                    // Once: its submitter may be subscribed already.
                    if !o.is_subscriber(client) {
                        o.add_subscriber(client);
                    }
                    return;
                }
                ObjState::Done(p) => p.clone(),
            },
        };
        self.out.push(
            client,
            Op::Ready(proto::ObjectValue {
                object_id: id,
                payload: Some(payload),
            }),
        );
    }

    pub(super) fn acquire(&mut self, client: u32, id: u64) {
        let Some(s) = self.sessions.get_mut(&client) else {
            return;
        };
        if let Some(o) = self.objects.get_mut(&id) {
            if o.creator != client && s.holds.insert(id) {
                o.holders += 1;
            }
        }
    }

    pub(super) fn release(&mut self, client: u32, id: u64) {
        let Some(s) = self.sessions.get_mut(&client) else {
            return;
        };
        let made = self.objects.get_mut(&id).filter(|o| o.creator == client);
        let held = match made {
            Some(o) => {
                // Its hold as the creator: no set to look in.
                o.creator = 0;
                // A submitter subscribed with its submit (`TaskSpec.subscribe`)
                // that let go of the result does not want it sent.
                if o.subscriber == client && matches!(o.state, ObjState::Pending) {
                    o.subscriber = 0;
                }
                s.created = s.created.saturating_sub(1);
                if !s.elsewhere.is_empty() {
                    s.elsewhere.remove(&id);
                }
                true
            }
            None => s.holds.remove(&id),
        };
        if held {
            if let Some(o) = self.objects.get_mut(&id) {
                o.holders = o.holders.saturating_sub(1);
            }
            self.maybe_free(id);
        }
    }

    /// Frees `id` once nothing holds or pins it and no task still makes it;
    /// freeing an object unpins what it contains, iteratively.
    pub(super) fn maybe_free(&mut self, id: u64) {
        // The first id aside: no allocation unless it contains refs.
        let mut work = Vec::new();
        let mut first = Some(id);
        while let Some(id) = first.take().or_else(|| work.pop()) {
            let Some(o) = self.objects.get(&id) else {
                continue;
            };
            if o.holders > 0 || o.pins > 0 || self.tasks.contains_key(&id) {
                continue;
            }
            let Some(o) = self.objects.remove(&id) else {
                continue;
            };
            if self.actors.contains_key(&id) {
                self.actor_freed(id);
            }
            if let ObjState::Done(Payload::Stored(loc)) = &o.state {
                self.unstored(&loc.node, loc.size, o.spilled);
                if loc.node == self.local_node {
                    self.out.delete.push(loc.path.clone());
                }
                self.free_everywhere(&loc.path);
            }
            let mut o = o;
            for c in o.take_contains() {
                if let Some(inner) = self.objects.get_mut(&c) {
                    inner.pins = inner.pins.saturating_sub(1);
                    work.push(c);
                }
            }
        }
    }

    /// Records a task's outcome: subscribers hear of it, dependents become
    /// ready (or fail with the same error).
    pub(super) fn complete(&mut self, id: u64, payload: Payload, nested: Vec<u64>) {
        // The first task aside: no allocation unless dependents fail too.
        let mut work = Vec::new();
        let mut first = Some((id, payload, nested));
        while let Some((id, payload, nested)) = first.take().or_else(|| work.pop()) {
            let Some(task) = self.tasks.remove(&id) else {
                continue;
            };
            if task.spec.num_returns > 1 {
                let failed = self.close_returns(&task.spec, &task.function, &payload);
                work.extend(failed.into_iter().map(|(d, p)| (d, p, Vec::new())));
            }
            if task.spec.generator {
                self.close_stream(id);
            }
            if let Some(n) = self.pending.get_mut(&task.job) {
                *n = n.saturating_sub(1);
            }
            self.pin_all(&nested);
            let failed = matches!(payload, Payload::Error(_));
            let (subscribers, dependents) = match self.objects.get_mut(&id) {
                Some(o) => {
                    o.state = ObjState::Done(kept(&payload));
                    o.set_contains(nested);
                    (o.take_subscribers(), o.take_dependents())
                }
                None => Default::default(),
            };
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
            for d in dependents {
                if failed {
                    work.push((d, payload.clone(), Vec::new()));
                } else if let Some(t) = self.tasks.get_mut(&d) {
                    t.missing = t.missing.saturating_sub(1);
                    if t.missing == 0 {
                        t.ready_at = super::state::clock();
                        if t.spec.actor_id != 0 {
                            // Straight to its actor's queue: behind a long
                            // ready queue a dispatch pass might not reach it.
                            self.dirty_actors.push(t.spec.actor_id);
                        } else {
                            self.ready.push_back(d);
                        }
                    }
                }
            }
            if task.spec.create.is_some() {
                self.creation_done(&task, &payload);
            } else {
                for a in task.spec.args.iter().filter_map(arg_ref) {
                    self.unpin(a);
                }
                for n in task.spec.nested_refs() {
                    self.unpin(*n);
                }
            }
            if task.spec.actor_id != 0 {
                self.call_done(task.spec.actor_id, id);
                self.unpin(task.spec.actor_id);
            }
            self.maybe_free(id);
        }
    }

    pub(super) fn lost(id: u64, why: &str) -> Payload {
        Payload::Error(Box::new(lost_error(id, why)))
    }
}

/// Inline values up to this size are copied out of the frame they came in.
const COPY_MAX: usize = 256;

/// `payload` as an object keeps it: a small inline value copied out of the
/// frame it arrived in. A decoded value is a slice of its whole frame's
/// buffer, so a million small results kept until the driver lets go of
/// them kept every result frame alive: ~40 MiB of the head's peak in
/// `fleet microbenchmark --scale`. The subscribers are sent the slice
/// itself, which goes with the frame sent.
pub(super) fn kept(payload: &Payload) -> Payload {
    match payload {
        Payload::Inline(b) if b.len() <= COPY_MAX => {
            Payload::Inline(bytes::Bytes::copy_from_slice(b))
        }
        other => other.clone(),
    }
}

pub(super) fn arg_ref(a: &proto::Arg) -> Option<u64> {
    match a.kind {
        Some(proto::arg::Kind::ObjectRef(id)) => Some(id),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
