//! Promises (see the parent module's doc): an object a direct task made,
//! used through the head before it is finished, is pending here with a
//! placeholder task until its driver's `Put`; a cancel of a direct task
//! reaches only the tasks it submitted through the head.

use crate::head::state::State;
use crate::proto;

impl State {
    /// `client` will put `id` (a direct task's object, not finished yet):
    /// it is pending here until then.
    pub(in crate::head) fn promise(&mut self, client: u32, id: u64) {
        if !self.new_object(id, crate::head::state::ObjState::Pending, client) {
            return;
        }
        let job = self.job_of(client);
        *self.pending.entry(job).or_default() += 1;
        let spec = proto::TaskSpec {
            task_id: id,
            function: "(direct task)".into(),
            ..Default::default()
        };
        let task = self.make_task(spec, 0, 0, job);
        self.tasks.insert(id, task);
        self.control.leases.promises.insert(id, client);
    }

    /// A `Put`: completes a promised object, else stores a new one.
    pub(in crate::head) fn put_or_fulfil(&mut self, client: u32, p: proto::Put) {
        let id = p.value.as_ref().map_or(0, |v| v.object_id);
        let l = &mut self.control.leases;
        if l.promises.is_empty() || l.promises.get(&id) != Some(&client) {
            return self.put(client, p);
        }
        l.promises.remove(&id);
        let Some(payload) = p.value.and_then(|v| v.payload) else {
            return;
        };
        self.complete(id, payload, p.nested_refs);
    }

    /// A cancel: the head's own tasks as before; for a direct task (the
    /// head does not have it), the tasks it submitted through the head.
    pub(in crate::head) fn cancel_any(&mut self, client: u32, c: proto::Cancel) {
        if self.tasks.contains_key(&c.task_id) || !c.recursive {
            return self.cancel(client, c);
        }
        let job = self.job_of(client);
        let kids: Vec<u64> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.spec.parent_task == c.task_id && t.job == job)
            .map(|(id, _)| id)
            .collect();
        for k in kids {
            self.cancel(client, proto::Cancel { task_id: k, ..c });
        }
    }
}
