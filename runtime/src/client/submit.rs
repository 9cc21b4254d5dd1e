//! Submitting tasks and putting values: building the ops the head is sent
//! and the handles that stand for their results.

use super::*;

impl Client {
    /// Submits a task with `n` results: one handle per result.
    pub(crate) fn submit_task_returns(
        self: &Arc<Self>,
        opts: &TaskOptions,
        n: u32,
        args: Vec<Result<ArgValue>>,
    ) -> Vec<Arc<Handle>> {
        let n = n.max(1);
        let base = self.slots.reserve(u64::from(n));
        let more: Vec<Arc<Handle>> = (1..u64::from(n))
            .map(|k| self.new_handle(base + k, State::pending()))
            .collect();
        let spec = proto::TaskSpec {
            task_id: base,
            num_returns: n,
            ..opts.spec()
        };
        let first = self.submit(spec, args);
        if let Some(Ok(err)) = self.slots.with(first.id, |s| match &s.state {
            State::Ready(Payload::Error(e)) => Ok(e.clone()),
            _ => Err(()),
        }) {
            // Failed before it was sent: so do the others.
            for h in &more {
                self.fail_local(h.id, &Error::from_wire(&err));
            }
        }
        std::iter::once(first).chain(more).collect()
    }

    pub(crate) fn submit_task(
        self: &Arc<Self>,
        opts: &TaskOptions,
        args: Vec<Result<ArgValue>>,
    ) -> Arc<Handle> {
        self.submit(opts.spec(), args)
    }

    /// Submits `spec` (a task, an actor's creation or a method call) with
    /// these arguments; fills in its id.
    pub(crate) fn submit(
        self: &Arc<Self>,
        mut spec: proto::TaskSpec,
        args: Vec<Result<ArgValue>>,
    ) -> Arc<Handle> {
        self.wait_for_room();
        self.wait_for_direct_room();
        // A task with several results comes with its ids reserved.
        let id = if spec.task_id != 0 {
            spec.task_id
        } else {
            self.next_id()
        };
        // Subscribed with the submit itself: the head sends the result
        // without a `Subscribe` op per task.
        let handle = self.new_handle_as(id, State::pending(), true);
        spec.task_id = id;
        spec.subscribe = true;
        spec.args = Vec::with_capacity(args.len());
        // Handles of ref arguments stay alive until the submit is queued, so
        // the head sees the task's pin before any release.
        let mut keep = Vec::new();
        for a in args {
            let kind = match a {
                Err(e) => {
                    self.fail_local(id, &e);
                    return handle;
                }
                Ok(ArgValue(ArgKind::Value(bytes, nested, held))) if bytes.len() > INLINE_MAX => {
                    keep.extend(held);
                    match self.put_encoded(bytes, nested) {
                        Ok(h) => {
                            let k = arg::Kind::ObjectRef(h.id);
                            keep.push(h);
                            k
                        }
                        Err(e) => {
                            self.fail_local(id, &e);
                            return handle;
                        }
                    }
                }
                Ok(ArgValue(ArgKind::Value(bytes, nested, held))) => {
                    keep.extend(held);
                    spec.nested_refs.extend(nested);
                    arg::Kind::Value(bytes.into())
                }
                Ok(ArgValue(ArgKind::Ref(h))) => {
                    let k = arg::Kind::ObjectRef(h.id);
                    keep.push(h);
                    k
                }
            };
            spec.args.push(proto::Arg { kind: Some(kind) });
        }
        // leases: a plain task goes to a leased worker, not the head.
        let Some(spec) = self.try_direct(spec) else {
            return handle;
        };
        // The head must know every object it is given to use.
        for a in &spec.args {
            if let Some(arg::Kind::ObjectRef(r)) = a.kind {
                self.make_known(r);
            }
        }
        for n in &spec.nested_refs {
            self.make_known(*n);
        }
        self.send(Op::Submit(Box::new(spec)));
        drop(keep);
        handle
    }

    /// Stores a value: encoded inline if small, else streamed straight into
    /// the node's store.
    pub(crate) fn put_value<T: serde::Serialize + ?Sized>(
        self: &Arc<Self>,
        value: &T,
    ) -> Result<Arc<Handle>> {
        let id = self.next_id();
        if let Some(remote) = &self.remote {
            let mut writer = remote.writer(id);
            let nested = match codec::encode_into(value, &mut writer) {
                Ok(n) => n,
                Err(e) => return Err(writer.error(std::io::Error::other(e))),
            };
            let payload = match writer.finish()? {
                Written::Inline(b) => Payload::Inline(b.into()),
                Written::Stored(loc) => Payload::Stored(Box::new(loc)),
            };
            return Ok(self.publish(id, payload, nested));
        }
        let mut writer = self.store.writer(id);
        let nested = match codec::encode_into(value, &mut writer) {
            Ok(n) => n,
            Err(e) => {
                return Err(writer.error(std::io::Error::other(e)));
            }
        };
        let payload = match writer.finish()? {
            Written::Inline(b) => Payload::Inline(b.into()),
            Written::Stored(loc) => Payload::Stored(Box::new(loc)),
        };
        Ok(self.publish(id, payload, nested))
    }

    fn publish(self: &Arc<Self>, id: u64, payload: Payload, nested: Vec<u64>) -> Arc<Handle> {
        for n in &nested {
            self.make_known(*n);
        }
        let handle = self.new_handle(id, State::Ready(payload.clone()));
        self.send(Op::Put(proto::Put {
            value: Some(proto::ObjectValue {
                object_id: id,
                payload: Some(payload),
            }),
            nested_refs: nested,
        }));
        handle
    }

    /// Stores an encoded value: inline if small, else in the node's store.
    pub(crate) fn put_encoded(
        self: &Arc<Self>,
        bytes: Vec<u8>,
        nested: Vec<u64>,
    ) -> Result<Arc<Handle>> {
        let id = self.next_id();
        let payload = if bytes.len() > INLINE_MAX {
            match &self.remote {
                Some(remote) => Payload::Stored(Box::new(remote.write(id, bytes)?)),
                None => Payload::Stored(Box::new(self.store.write(id, &bytes)?)),
            }
        } else {
            Payload::Inline(bytes.into())
        };
        Ok(self.publish(id, payload, nested))
    }
}
