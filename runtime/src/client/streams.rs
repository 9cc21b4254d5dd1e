//! The consumer's side of streaming generators: the items of each stream
//! this process consumes, as the head forwards them, until the stream's
//! task finishes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::{Condvar, Mutex};

use super::{Client, State};
use crate::error::Result;
use crate::object_ref::{ArgValue, Handle};
use crate::proto::{self, client_op::Op};
use crate::task::TaskOptions;

/// The streams this process consumes, by task id.
#[derive(Default)]
pub(crate) struct Streams {
    open: DashMap<u64, Arc<Inbox>>,
    /// How many are open: the path of every finished object looks here
    /// first, so plain tasks pay one atomic load for generators.
    count: AtomicUsize,
}

/// Items of one stream that arrived and were not taken yet.
pub(crate) struct Inbox {
    state: Mutex<InboxState>,
    cv: Condvar,
}

#[derive(Default)]
struct InboxState {
    items: VecDeque<proto::GeneratorItem>,
    /// The task finished (or the session ended): no item comes after
    /// those queued.
    ended: bool,
    /// An async consumer waiting for the next item.
    waker: Option<std::task::Waker>,
}

impl Inbox {
    fn end(&self) {
        let waker = {
            let mut s = self.state.lock();
            s.ended = true;
            s.waker.take()
        };
        self.cv.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn push(&self, item: proto::GeneratorItem) {
        let waker = {
            let mut s = self.state.lock();
            s.items.push_back(item);
            s.waker.take()
        };
        self.cv.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// [`Inbox::next_item`] for async code: `Pending` until an item
    /// arrives or the stream ends.
    pub(crate) fn poll_item(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<proto::GeneratorItem>> {
        let mut s = self.state.lock();
        if let Some(i) = s.items.pop_front() {
            return std::task::Poll::Ready(Some(i));
        }
        if s.ended {
            return std::task::Poll::Ready(None);
        }
        s.waker = Some(cx.waker().clone());
        std::task::Poll::Pending
    }

    /// The next item; `None` once the stream has ended and every item was
    /// taken. A task waiting here lends its CPU, as in `get`.
    pub(crate) fn next_item(&self) -> Option<proto::GeneratorItem> {
        let mut s = self.state.lock();
        if let Some(i) = s.items.pop_front() {
            return Some(i);
        }
        if s.ended {
            return None;
        }
        drop(s);
        let _lent = crate::worker::executor::lend_cpu();
        let mut s = self.state.lock();
        loop {
            if let Some(i) = s.items.pop_front() {
                return Some(i);
            }
            if s.ended {
                return None;
            }
            self.cv.wait(&mut s);
        }
    }

    /// Whether an item is waiting to be taken.
    pub(crate) fn has_item(&self) -> bool {
        !self.state.lock().items.is_empty()
    }
}

impl Streams {
    fn open(&self, id: u64) -> Arc<Inbox> {
        let inbox = Arc::new(Inbox {
            state: Mutex::new(InboxState::default()),
            cv: Condvar::new(),
        });
        self.open.insert(id, inbox.clone());
        self.count.fetch_add(1, Ordering::Release);
        inbox
    }

    fn close(&self, id: u64) -> Option<Arc<Inbox>> {
        let (_, inbox) = self.open.remove(&id)?;
        self.count.fetch_sub(1, Ordering::Release);
        Some(inbox)
    }

    /// The object `id` finished: if it is a stream's task, the stream ends
    /// after the items already queued (the head sends every item before
    /// the task's outcome).
    pub(crate) fn finished(&self, id: u64) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        if let Some(inbox) = self.open.get(&id) {
            inbox.end();
        }
    }

    /// The session ended: every stream ends.
    pub(crate) fn end_all(&self) {
        for inbox in self.open.iter() {
            inbox.end();
        }
    }
}

impl Client {
    /// Submits a generator task: its items will arrive in the returned
    /// inbox; the handle is the task's own object, whose outcome ends the
    /// stream.
    pub(crate) fn submit_generator(
        self: &Arc<Self>,
        opts: &TaskOptions,
        args: Vec<Result<ArgValue>>,
    ) -> (Arc<Handle>, Arc<Inbox>) {
        let spec = proto::TaskSpec {
            generator_backpressure: opts.generator_backpressure,
            ..opts.spec()
        };
        self.submit_stream(spec, args)
    }

    /// Submits `spec` (a task or an actor call) as a generator.
    pub(crate) fn submit_stream(
        self: &Arc<Self>,
        mut spec: proto::TaskSpec,
        args: Vec<Result<ArgValue>>,
    ) -> (Arc<Handle>, Arc<Inbox>) {
        let id = self.next_id();
        // Open before submitting: a failure to submit ends it at once.
        let inbox = self.streams.open(id);
        spec.task_id = id;
        spec.generator = true;
        let handle = self.submit(spec, args);
        // Hear of the task's end.
        let subscribe = self.slots.with(id, |s| {
            let first = matches!(s.state, State::Pending(_)) && !s.subscribed;
            s.subscribed = true;
            first
        });
        if subscribe == Some(true) {
            self.send(Op::Subscribe(id));
        }
        if self.is_ready(id) {
            inbox.end();
        }
        (handle, inbox)
    }

    /// An item of a stream arrived; the head made this session its holder.
    pub(crate) fn on_stream_item(&self, item: proto::GeneratorItem) {
        match self.streams.open.get(&item.task_id) {
            Some(inbox) => inbox.push(item),
            // The stream was dropped: nobody here will hold the item.
            None => {
                if let Some(v) = item.value {
                    self.send(Op::Release(v.object_id));
                }
            }
        }
    }

    /// A handle for an item taken from a stream (held here already), and
    /// tells the head how many were taken, so the task may go on.
    pub(crate) fn take_item(
        self: &Arc<Self>,
        item: proto::GeneratorItem,
        taken: u64,
    ) -> Option<Arc<Handle>> {
        let value = item.value?;
        let payload = value.payload?;
        let handle = self.new_handle(value.object_id, State::Ready(payload));
        self.send(Op::GeneratorAck(proto::GeneratorAck {
            task_id: item.task_id,
            consumed: taken,
        }));
        Some(handle)
    }

    /// The stream of task `id` is dropped: items that arrived and were not
    /// taken are let go.
    pub(crate) fn close_stream(&self, id: u64) {
        let Some(inbox) = self.streams.close(id) else {
            return;
        };
        let left = std::mem::take(&mut inbox.state.lock().items);
        for item in left {
            if let Some(v) = item.value {
                self.send(Op::Release(v.object_id));
            }
        }
    }
}
