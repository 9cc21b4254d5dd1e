//! The client side of a session with the head, shared by drivers and
//! workers: submits tasks and puts, and keeps this process's table of
//! object handles and finished values.

mod backlog;
mod leases;
mod remote;
mod replies;
mod slots;
mod streams;
mod submit;
pub(crate) mod transport;
mod waiter;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dashmap::DashMap;
use serde::de::DeserializeOwned;
use slots::Slots;
use tokio::sync::mpsc::UnboundedSender;

use crate::codec::{self, INLINE_MAX};
use crate::error::{Error, Result};
use crate::node::object_store::{Bytes, ObjectStore, Written};
use crate::object_ref::{lost, ArgKind, ArgValue, Handle};
use crate::proto::{self, arg, client_op::Op, object_value::Payload};
use crate::task::TaskOptions;

pub(crate) use backlog::Backlog;
pub(crate) use leases::enabled_by_env as leases_enabled;
pub(crate) use streams::Inbox;
pub(crate) use waiter::Waiter;

thread_local! {
    /// Releases held back while a task runs (see `deferring_releases`).
    static DEFERRED: std::cell::RefCell<Option<Vec<u64>>> = const { std::cell::RefCell::new(None) };
    /// Operations kept instead of sent (see `begin_capture`).
    static CAPTURED: std::cell::RefCell<Option<Vec<proto::ClientOp>>> = const { std::cell::RefCell::new(None) };
    /// Whether `CAPTURED` is on (a flag is cheaper to test than the list).
    static CAPTURING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// An emptied capture list, kept for the next task: a worker captures
    /// every task's result, and a fresh list cost a 1.4 KB allocation (an
    /// op is 344 bytes) and a free per task.
    static SPARE: std::cell::Cell<Vec<proto::ClientOp>> = const { std::cell::Cell::new(Vec::new()) };
}

/// What this process knows of one object it holds handles to.
struct Slot {
    handles: u32,
    subscribed: bool,
    /// A direct task's object the head has never heard of (see
    /// `client/leases/route.rs`): not released there.
    direct: bool,
    state: State,
}

/// Waiters are kept only while the object is pending, and the value only
/// once it is ready, so the two share their bytes.
enum State {
    /// Inline for one: a driver's `get_all` of a million refs registers
    /// one waiter on each, and an allocation per slot cost ~32 bytes each.
    Pending(smallvec::SmallVec<[Arc<Waiter>; 1]>),
    Ready(Payload),
}

impl State {
    fn pending() -> Self {
        State::Pending(Default::default())
    }
}

/// One process's session with the head.
pub(crate) struct Client {
    node: String,
    out: UnboundedSender<proto::ClientOp>,
    /// Also numbers this session's objects (see `next_id`).
    slots: Slots<Slot>,
    /// A driver's unsent operations, which its submits wait on.
    backlog: OnceLock<Arc<Backlog>>,
    store: ObjectStore,
    /// Set when this process shares no node's store (a driver on another
    /// machine): large values then travel as streams.
    remote: Option<remote::Remote>,
    token: String,
    closed: AtomicBool,
    /// Why the session ended, once it has: every later call fails with it.
    gone: OnceLock<String>,
    replies: DashMap<u64, std::sync::mpsc::Sender<proto::Reply>>,
    /// Results a worker holds back to send several in one frame.
    held: parking_lot::Mutex<Held>,
    /// Whether `held` has anything: every send first sends what is held,
    /// so nothing overtakes a held result.
    holding: AtomicBool,
    /// generators: the streams this process consumes.
    streams: streams::Streams,
    /// leases: a driver's leased workers and direct tasks.
    leases: OnceLock<leases::Leases>,
}

/// Operations held back by [`Client::hold`].
#[derive(Default)]
struct Held {
    ops: Vec<proto::ClientOp>,
    /// Results among them.
    results: usize,
    /// When the task of the first held result started.
    since: Option<std::time::Instant>,
}

impl Client {
    pub(crate) fn new(
        welcome: &proto::Welcome,
        out: UnboundedSender<proto::ClientOp>,
        token: &str,
    ) -> Arc<Self> {
        let (store, remote) = Self::choose_store(welcome, token);
        Arc::new(Client {
            node: store.node().to_string(),
            out,
            slots: Slots::new(welcome.client_id),
            backlog: OnceLock::new(),
            store,
            remote,
            token: token.to_string(),
            closed: AtomicBool::new(false),
            gone: OnceLock::new(),
            replies: DashMap::new(),
            held: parking_lot::Mutex::new(Held::default()),
            holding: AtomicBool::new(false),
            streams: Default::default(),
            leases: OnceLock::new(),
        })
    }

    /// The store this process uses. A worker uses its node's. A driver uses
    /// the store of a node on its own machine (the head's first): one whose
    /// folder it can see, holding that store's random id. With none, its
    /// large values travel as streams to and from the nodes.
    fn choose_store(
        welcome: &proto::Welcome,
        token: &str,
    ) -> (ObjectStore, Option<remote::Remote>) {
        let open = |i: &proto::NodeInfo| {
            ObjectStore::open(&i.store_dir, &i.spill_dir, &i.address, i.store_capacity)
        };
        let given = proto::NodeInfo {
            address: welcome.node.clone(),
            store_dir: welcome.store_dir.clone(),
            spill_dir: welcome.spill_dir.clone(),
            store_capacity: welcome.store_capacity,
            ..Default::default()
        };
        if welcome.stores.is_empty() {
            return (open(&given), None);
        }
        let head_first = welcome
            .stores
            .iter()
            .filter(|i| i.address == welcome.node)
            .chain(welcome.stores.iter().filter(|i| i.address != welcome.node));
        for info in head_first {
            if ObjectStore::reachable(info) {
                tracing::debug!(node = %info.address, "this driver shares the node's store");
                return (open(info), None);
            }
        }
        tracing::info!(
            head_node = %welcome.node,
            "no node's store is on this machine: large values travel as streams"
        );
        (
            open(&given),
            Some(remote::Remote::new(&welcome.node, token)),
        )
    }

    /// A client with no session: every op it sends is dropped. It holds
    /// the refs that [`Client::failed`] makes when no cluster is reachable.
    pub(crate) fn detached() -> Arc<Self> {
        let (out, _) = tokio::sync::mpsc::unbounded_channel();
        let client = Client::new(&proto::Welcome::default(), out, "");
        client.closed.store(true, Ordering::Release);
        client
    }

    /// A ref that is finished already, with `err` as its outcome.
    pub(crate) fn failed(self: &Arc<Self>, err: &Error) -> Arc<Handle> {
        let wire = match err {
            // Kept as a `Connection` error with its own text (the wire form
            // of other kinds would nest the prefix).
            Error::Connection(m) => proto::TaskError {
                message: m.clone(),
                ..Default::default()
            },
            other => other.to_wire(),
        };
        self.new_handle(self.next_id(), State::Ready(Payload::Error(Box::new(wire))))
    }

    /// Makes this driver's submits wait while `backlog` is long.
    pub(crate) fn set_backlog(&self, backlog: Arc<Backlog>) {
        let _ = self.backlog.set(backlog);
    }

    /// Waits while too many operations are unsent (a driver only; see
    /// `client/backlog.rs`). Call only where no lock is held.
    fn wait_for_room(&self) {
        if let Some(b) = self.backlog.get() {
            b.wait_for_room(|| self.closed.load(Ordering::Acquire));
        }
    }

    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    pub(crate) fn store(&self) -> &ObjectStore {
        &self.store
    }

    pub(crate) fn send(&self, op: Op) {
        // An op is 344 bytes, and every move of it a copy: checked by a
        // flag so that the common case moves it only into the channel.
        if CAPTURING.get() {
            CAPTURED.with(|c| {
                if let Some(kept) = c.borrow_mut().as_mut() {
                    kept.push(proto::ClientOp { op: Some(op) });
                }
            });
            return;
        }
        if self.holding.load(Ordering::Acquire) {
            self.flush_held();
        }
        if let Some(b) = self.backlog.get() {
            b.added(1);
        }
        // A closed session fails every pending object; nothing else to do.
        let _ = self.out.send(proto::ClientOp { op: Some(op) });
    }

    /// From now until [`Client::end_capture`], what this thread sends is
    /// kept instead of sent. A worker uses it to send several results in
    /// one frame.
    pub(crate) fn begin_capture(&self) {
        let list = SPARE.take();
        CAPTURED.with(|c| *c.borrow_mut() = Some(list));
        CAPTURING.set(true);
    }

    /// Stops keeping what this thread sends; returns what was kept, in
    /// order, for [`Client::send_ops`].
    pub(crate) fn end_capture(&self) -> Vec<proto::ClientOp> {
        CAPTURING.set(false);
        CAPTURED.with(|c| c.borrow_mut().take()).unwrap_or_default()
    }

    /// Holds back operations kept by [`Client::begin_capture`] (one
    /// task's result and what follows it), to go out with the next ones in
    /// one frame. Returns how many results are held and since when.
    pub(crate) fn hold(
        &self,
        mut ops: Vec<proto::ClientOp>,
        started: std::time::Instant,
    ) -> (usize, std::time::Instant) {
        let out = {
            let mut h = self.held.lock();
            h.ops.append(&mut ops);
            h.results += 1;
            let since = *h.since.get_or_insert(started);
            self.holding.store(true, Ordering::Release);
            (h.results, since)
        };
        // Emptied, with its capacity: the next capture's list.
        SPARE.set(ops);
        out
    }

    /// Since when the oldest result held back waits (`None`: none is).
    pub(crate) fn held_since(&self) -> Option<std::time::Instant> {
        self.held.lock().since
    }

    /// Sends what is held back, if anything.
    pub(crate) fn flush_held(&self) {
        if !self.holding.load(Ordering::Acquire) {
            return;
        }
        // Sent under the lock, so two flushers cannot reorder them.
        let mut h = self.held.lock();
        self.holding.store(false, Ordering::Release);
        if let Some(b) = self.backlog.get() {
            b.added(h.ops.len());
        }
        for op in h.ops.drain(..) {
            let _ = self.out.send(op);
        }
        h.results = 0;
        h.since = None;
    }

    /// Ids are unique cluster-wide: the head hands each session its own
    /// prefix, so no round trip is needed to name a new object.
    pub(crate) fn next_id(&self) -> u64 {
        self.slots.reserve(1)
    }

    fn new_handle(self: &Arc<Self>, id: u64, state: State) -> Arc<Handle> {
        self.new_handle_as(id, state, false)
    }

    /// A handle whose slot is marked subscribed already: the result of a
    /// task submitted with `TaskSpec.subscribe`.
    fn new_handle_as(self: &Arc<Self>, id: u64, state: State, subscribed: bool) -> Arc<Handle> {
        // Work submitted after the head went away fails at once, as the
        // work pending then did.
        let state = match (state, self.gone.get()) {
            (State::Pending(_), Some(why)) => State::Ready(Payload::Error(Box::new(
                Error::Connection(why.clone()).to_wire(),
            ))),
            (state, _) => state,
        };
        self.slots.insert(
            id,
            Slot {
                handles: 1,
                subscribed,
                direct: false,
                state,
            },
        );
        Arc::new(Handle {
            id,
            client: self.clone(),
        })
    }

    /// A handle for an id received inside a value.
    pub(crate) fn adopt(self: &Arc<Self>, id: u64) -> Arc<Handle> {
        let new = self.slots.upsert(
            id,
            || Slot {
                handles: 1,
                subscribed: false,
                direct: false,
                state: State::pending(),
            },
            |s| s.handles += 1,
        );
        if new {
            self.send(Op::Acquire(id));
        }
        Arc::new(Handle {
            id,
            client: self.clone(),
        })
    }

    /// Runs `f` (a task and the sending of its result) holding back the
    /// releases of handles dropped meanwhile until `f` is done: a result that
    /// contains refs must reach the head before their handles' releases, or
    /// the head frees them first.
    pub(crate) fn deferring_releases<T>(&self, f: impl FnOnce() -> T) -> T {
        let outer = DEFERRED.with(|d| d.borrow_mut().replace(Vec::new()));
        let out = f();
        let held = DEFERRED.with(|d| std::mem::replace(&mut *d.borrow_mut(), outer));
        for id in held.unwrap_or_default() {
            self.release_handle(id);
        }
        out
    }

    /// [`Client::deferring_releases`] that hands the deferred releases back
    /// instead of sending them: a worker keeps them while the driver of a
    /// direct task has not yet told the head about its result (which may
    /// contain those refs), then releases them with
    /// [`Client::release_handle`].
    pub(crate) fn deferring_releases_kept<T>(&self, f: impl FnOnce() -> T) -> (T, Vec<u64>) {
        let outer = DEFERRED.with(|d| d.borrow_mut().replace(Vec::new()));
        let out = f();
        let held = DEFERRED.with(|d| std::mem::replace(&mut *d.borrow_mut(), outer));
        (out, held.unwrap_or_default())
    }

    pub(crate) fn release_handle(&self, id: u64) {
        let deferred = DEFERRED.with(|d| match d.borrow_mut().as_mut() {
            Some(held) => {
                held.push(id);
                true
            }
            None => false,
        });
        if deferred {
            return;
        }
        let last = self
            .slots
            .with(id, |s| {
                s.handles -= 1;
                s.handles == 0
            })
            .unwrap_or(false);
        if last {
            // A direct task's object the head never heard of: nothing to
            // release there.
            if let Some(s) = self.slots.remove_if(id, |s| s.handles == 0) {
                if !s.direct {
                    self.send(Op::Release(id));
                }
            }
        }
    }

    fn fail_local(&self, id: u64, err: &Error) {
        self.on_ready(proto::ObjectValue {
            object_id: id,
            payload: Some(Payload::Error(Box::new(err.to_wire()))),
        });
    }

    /// A value arrived from the head (or failed locally).
    pub(crate) fn on_ready(&self, value: proto::ObjectValue) {
        let Some(payload) = value.payload else {
            return;
        };
        let waiters = match self.slots.with(value.object_id, |s| {
            std::mem::replace(&mut s.state, State::Ready(payload))
        }) {
            Some(State::Pending(waiters)) => waiters,
            Some(State::Ready(_)) => Default::default(),
            None => return,
        };
        for w in waiters {
            w.count_down(value.object_id);
        }
        self.streams.finished(value.object_id);
    }

    /// Why the session with the head ended, once it has.
    pub(crate) fn gone(&self) -> Option<String> {
        self.gone.get().cloned()
    }

    /// The session ended: everything still pending fails.
    pub(crate) fn on_disconnect(&self, why: &str) {
        let why = self
            .gone
            .get_or_init(|| {
                format!(
                    "the head went away ({why}); what this driver had in the \
                     cluster is gone with it: start it again once the head is back"
                )
            })
            .clone();
        self.closed.store(true, Ordering::Release);
        self.replies.clear();
        if let Some(l) = self.leases.get() {
            l.clear();
        }
        let err = Error::Connection(why).to_wire();
        let mut waiters = Vec::new();
        self.slots.for_each(|s| {
            if matches!(s.state, State::Pending(_)) {
                let was = std::mem::replace(
                    &mut s.state,
                    State::Ready(Payload::Error(Box::new(err.clone()))),
                );
                if let State::Pending(w) = was {
                    waiters.extend(w);
                }
            }
        });
        for w in waiters {
            w.wake();
        }
        self.streams.end_all();
    }

    /// Registers `waiter` on every id not yet finished and subscribes to
    /// them; returns how many were already finished.
    fn register(&self, ids: &[u64], waiter: &Arc<Waiter>) -> usize {
        let mut done = 0;
        let mut subscribe = Vec::new();
        for &id in ids {
            let pending = self.slots.with(id, |s| match &mut s.state {
                State::Ready(_) => false,
                State::Pending(waiters) => {
                    waiters.push(waiter.clone());
                    if !s.subscribed {
                        s.subscribed = true;
                        subscribe.push(id);
                    }
                    true
                }
            });
            if pending != Some(true) {
                done += 1;
                waiter.count_down(id);
            }
        }
        // Sent outside the table's locks, so a driver may wait for room
        // between them (a `get_all` of a million refs).
        for (i, id) in subscribe.into_iter().enumerate() {
            if i % 4096 == 0 {
                self.wait_for_room();
            }
            self.send(Op::Subscribe(id));
        }
        if self.closed.load(Ordering::Acquire) {
            waiter.wake();
        }
        done
    }

    pub(crate) fn is_ready(&self, id: u64) -> bool {
        self.slots
            .with(id, |s| matches!(s.state, State::Ready(_)))
            .unwrap_or(true)
    }

    /// Blocks until `needed` of `ids` are finished or the timeout passes.
    pub(crate) fn wait(&self, ids: &[u64], needed: usize, timeout: Option<Duration>) -> bool {
        let needed = needed.min(ids.len());
        let waiter = Waiter::new(needed);
        if self.register(ids, &waiter) >= needed {
            return true;
        }
        // A task that waits lends its CPU to others meanwhile.
        let _lent = crate::worker::executor::lend_cpu();
        waiter.wait(timeout)
    }

    /// Subscribes to `ids` and returns a waiter that yields them as they
    /// finish (`fleet::as_completed`).
    pub(crate) fn completions(&self, ids: &[u64]) -> Arc<Waiter> {
        let waiter = Waiter::ordered(ids.len());
        self.register(ids, &waiter);
        waiter
    }

    pub(crate) async fn ready_async(&self, id: u64) -> Result<()> {
        let waiter = Waiter::new(1);
        if self.register(&[id], &waiter) == 0 {
            waiter.fired().await;
        }
        Ok(())
    }

    /// The bytes of a finished object.
    pub(crate) fn bytes(&self, id: u64) -> Result<Bytes> {
        let payload = match self.slots.with(id, |s| match &s.state {
            State::Ready(p) => Some(p.clone()),
            State::Pending(_) => None,
        }) {
            Some(Some(p)) => p,
            Some(None) => {
                return Err(match self.gone.get() {
                    Some(why) => Error::Connection(why.clone()),
                    None => lost(id, "not finished"),
                })
            }
            None => return Err(lost(id, "no handle to it in this process")),
        };
        match payload {
            Payload::Inline(b) => Ok(Bytes::Inline(b)),
            Payload::Stored(loc) => self.read_stored(&loc),
            Payload::Error(e) => Err(Error::from_wire(&e)),
        }
    }

    /// Maps a stored value, pulling it from its node if that is another.
    pub(crate) fn read_stored(&self, loc: &proto::StoreLocation) -> Result<Bytes> {
        if let Some(remote) = &self.remote {
            return remote.read(loc);
        }
        crate::node::transfer::read(&self.store, loc, &self.token)
    }

    pub(crate) fn value<T: DeserializeOwned>(&self, id: u64) -> Result<T> {
        codec::decode_from(&self.bytes(id)?)
    }
}

#[cfg(test)]
mod tests {
    /// A driver keeps one slot per ref it holds (a million in `fleet
    /// microbenchmark --scale`): this bound keeps a field added without
    /// thought from costing every ref.
    #[test]
    fn a_slot_stays_small() {
        let size = std::mem::size_of::<Option<super::Slot>>();
        assert!(size <= 56, "Slot is {size} bytes");
    }
}
