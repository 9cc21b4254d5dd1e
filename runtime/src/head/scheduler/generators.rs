//! Streaming generators at the head (`-> impl Iterator<Item = T>`).
//!
//! A generator task's worker stores each item as an object of its own and
//! sends it as a `GeneratorItem`. The head makes that object, held by the
//! consumer (the session that submitted the task), and forwards the item
//! to it at once, value included, so the consumer needs no round trip. The
//! consumer acknowledges what it has taken; the head passes that on to the
//! worker running the task, which stays at most `generator_backpressure`
//! items ahead. The task's own object (its id) finishes when the stream
//! ends: with the item count, or with the error that ended it.
//!
//! A retried generator (its worker died) runs from the start again; items
//! the consumer already received are dropped here by their index, so the
//! consumer sees each index once (as Ray does, this assumes the generator
//! yields the same items when re-run).

use crate::proto::{self, head_op::Op, object_value::Payload};

use super::super::state::{FastMap, ObjState, State};

/// The open streams, by task id.
#[derive(Default)]
pub(in crate::head) struct Generators {
    streams: FastMap<u64, Stream>,
}

struct Stream {
    /// The session that submitted the task; it holds every item.
    consumer: u32,
    /// Items forwarded to the consumer (the next index expected).
    received: u64,
    /// Items the consumer has taken.
    consumed: u64,
}

impl State {
    /// A generator task was submitted by `client`.
    pub(in crate::head) fn open_stream(&mut self, client: u32, id: u64) {
        self.control.generators.streams.insert(
            id,
            Stream {
                consumer: client,
                received: 0,
                consumed: 0,
            },
        );
    }

    /// The generator task finished (or failed, or was cancelled): its
    /// items live on as the objects they are.
    pub(in crate::head) fn close_stream(&mut self, id: u64) {
        self.control.generators.streams.remove(&id);
    }

    /// A session ended: the streams it consumed have nobody to yield to,
    /// so their tasks are cancelled (else a generator waiting for its
    /// consumer would hold its worker for good).
    pub(in crate::head) fn consumer_gone(&mut self, client: u32) {
        if self.control.generators.streams.is_empty() {
            return;
        }
        let orphans: Vec<u64> = self
            .control
            .generators
            .streams
            .iter()
            .filter(|(_, s)| s.consumer == client)
            .map(|(id, _)| *id)
            .collect();
        for id in orphans {
            self.cancel_one(
                id,
                false,
                "was cancelled: the process consuming its stream ended",
            );
        }
    }

    /// A generator task was sent to `worker` (again, after a retry): it
    /// learns how far the consumer got, so its backpressure starts there.
    pub(in crate::head) fn stream_started(&mut self, worker: u32, id: u64) {
        if let Some(s) = self.control.generators.streams.get(&id) {
            if s.consumed > 0 {
                self.out.push(
                    worker,
                    Op::GeneratorAck(proto::GeneratorAck {
                        task_id: id,
                        consumed: s.consumed,
                    }),
                );
            }
        }
    }

    /// A worker yielded an item of the generator task it runs.
    pub(in crate::head) fn generator_item(&mut self, client: u32, item: proto::GeneratorItem) {
        let Some(payload) = item.value.as_ref().and_then(|v| v.payload.clone()) else {
            return;
        };
        let object_id = item.value.as_ref().map_or(0, |v| v.object_id);
        let running_here = self
            .tasks
            .get(&item.task_id)
            .is_some_and(|t| t.worker == Some(client) && t.spec.generator);
        let consumer = match self.control.generators.streams.get_mut(&item.task_id) {
            // Below `received`: a retry re-yielding what was delivered.
            Some(s) if running_here && item.index >= s.received => {
                s.received = item.index.saturating_add(1);
                Some(s.consumer)
            }
            _ => None,
        };
        let consumer = consumer.filter(|c| self.sessions.contains_key(c));
        let Some(consumer) = consumer else {
            self.discard_item(&payload);
            return;
        };
        if !self.new_object(object_id, ObjState::Done(payload), consumer) {
            return;
        }
        self.pin_all(&item.nested_refs);
        if let Some(o) = self.objects.get_mut(&object_id) {
            o.set_contains(item.nested_refs.clone());
        }
        self.stored(object_id);
        self.out.push(consumer, Op::GeneratorItem(item));
    }

    /// The consumer of a stream took `consumed` items: the worker may go on.
    pub(in crate::head) fn generator_ack(&mut self, client: u32, ack: proto::GeneratorAck) {
        let Some(s) = self.control.generators.streams.get_mut(&ack.task_id) else {
            return;
        };
        if s.consumer != client || ack.consumed <= s.consumed {
            return;
        }
        s.consumed = ack.consumed;
        if let Some(worker) = self.tasks.get(&ack.task_id).and_then(|t| t.worker) {
            self.out.push(worker, Op::GeneratorAck(ack));
        }
    }

    /// An item nobody will hold: its store file goes.
    fn discard_item(&mut self, payload: &Payload) {
        if let Payload::Stored(loc) = payload {
            if loc.node == self.local_node {
                self.out.delete.push(loc.path.clone());
            }
            self.free_everywhere(&loc.path);
        }
    }
}
