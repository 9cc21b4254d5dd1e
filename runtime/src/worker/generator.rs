//! The worker's side of streaming generators: runs a generator task's
//! iterator, storing and sending each item as it comes, and waits while
//! the consumer is `generator_backpressure` items behind.

use std::cell::Cell;
use std::collections::HashMap;

use parking_lot::{Condvar, Mutex};
use serde::Serialize;

use crate::codec::{self, INLINE_MAX};
use crate::proto::{self, client_op::Op, object_value::Payload};
use crate::registry::{output, Failure, Output};

thread_local! {
    /// The generator task this thread runs: (task id, backpressure).
    static ACTIVE: Cell<Option<(u64, u32)>> = const { Cell::new(None) };
}

/// Items consumed so far, per generator task sent to this worker.
static CONSUMED: Mutex<Option<HashMap<u64, u64>>> = Mutex::new(None);
/// Signalled when `CONSUMED` grows or a task is cancelled.
static MOVED: Condvar = Condvar::new();

/// A generator task was sent here: acks for it are kept from now on.
pub(crate) fn expect(task: u64) {
    CONSUMED
        .lock()
        .get_or_insert_with(HashMap::new)
        .entry(task)
        .or_insert(0);
}

/// A generator task sent here went back unrun (cancelled while queued, or
/// returned to the head): its acks are no longer kept.
pub(crate) fn forget(task: u64) {
    if let Some(m) = CONSUMED.lock().as_mut() {
        m.remove(&task);
    }
}

/// Marks `spec`'s task as the generator this thread runs until the guard
/// drops.
pub(crate) fn active(spec: &proto::TaskSpec) -> Active {
    expect(spec.task_id);
    ACTIVE.set(Some((spec.task_id, spec.generator_backpressure)));
    Active(spec.task_id)
}

/// While alive, its thread runs that generator task.
pub(crate) struct Active(u64);

impl Drop for Active {
    fn drop(&mut self) {
        ACTIVE.set(None);
        forget(self.0);
    }
}

/// The consumer has taken `consumed` items of `task`'s stream.
pub(crate) fn on_ack(ack: &proto::GeneratorAck) {
    let mut m = CONSUMED.lock();
    if let Some(c) = m.as_mut().and_then(|m| m.get_mut(&ack.task_id)) {
        *c = (*c).max(ack.consumed);
        MOVED.notify_all();
    }
}

/// A task was cancelled: a generator waiting for its consumer looks again.
pub(crate) fn wake() {
    let _m = CONSUMED.lock();
    MOVED.notify_all();
}

/// A producer that has waited this long for its consumer lends its CPU
/// to the cluster until it may go on (as a task waiting in `get` does), so
/// generators waiting for a slow consumer cannot starve the work that
/// consumer waits for. Shorter waits keep it, so a fast stream does not
/// pay two messages per item.
const LEND_AFTER: std::time::Duration = std::time::Duration::from_millis(20);

/// Waits until item `index` is within the backpressure window; false if
/// the task was cancelled (its consumer dropped the stream).
fn room_for(task: u64, index: u64, backpressure: u32) -> bool {
    if backpressure == 0 {
        return !crate::worker::cancel::is_cancelled();
    }
    let mut m = CONSUMED.lock();
    let mut lent = None;
    loop {
        if crate::worker::cancel::is_cancelled() {
            return false;
        }
        let consumed = m.as_ref().and_then(|m| m.get(&task)).copied().unwrap_or(0);
        if index < consumed.saturating_add(u64::from(backpressure)) {
            drop(m);
            drop(lent);
            return true;
        }
        if lent.is_some() {
            MOVED.wait(&mut m);
        } else if MOVED.wait_for(&mut m, LEND_AFTER).timed_out() {
            lent = Some(parking_lot::MutexGuard::unlocked(&mut m, || {
                crate::worker::executor::lend_cpu()
            }));
        }
    }
}

/// Stores one item and sends it to the head.
fn send_item<T: Serialize>(task: u64, index: u64, item: &T) -> Result<(), Failure> {
    let client = crate::context::client().map_err(|e| Failure::Codec(e.to_string()))?;
    let enc = codec::encode(item).map_err(|e| Failure::Codec(format!("item {index}: {e}")))?;
    let id = client.next_id();
    let payload = if enc.bytes.len() > INLINE_MAX {
        let loc = client
            .store()
            .write(id, &enc.bytes)
            .map_err(|e| Failure::User(format!("storing item {index}: {e}")))?;
        Payload::Stored(Box::new(loc))
    } else {
        Payload::Inline(enc.bytes.into())
    };
    client.send(Op::GeneratorItem(proto::GeneratorItem {
        task_id: task,
        index,
        value: Some(proto::ObjectValue {
            object_id: id,
            payload: Some(payload),
        }),
        nested_refs: enc.nested,
    }));
    Ok(())
}

/// Runs a generator task's items: each `Ok` is sent as it comes; an `Err`
/// ends the stream with that error. The task's own result is the count.
fn run<T: Serialize, E: std::fmt::Display>(
    items: impl IntoIterator<Item = Result<T, E>>,
) -> Result<Output, Failure> {
    let Some((task, backpressure)) = ACTIVE.get() else {
        return Err(Failure::Codec(
            "a generator's items can only be sent from the task that yields them".into(),
        ));
    };
    let mut items = items.into_iter();
    let mut index = 0u64;
    // Waiting before asking for the next item keeps the task itself at
    // most `backpressure` items ahead of the consumer.
    while room_for(task, index, backpressure) {
        match items.next() {
            None => break,
            Some(Ok(item)) => send_item(task, index, &item)?,
            Some(Err(e)) => return Err(Failure::User(e.to_string())),
        }
        index += 1;
    }
    output(&index)
}

/// Runs the items of `-> impl Iterator<Item = T>`; used by the code
/// `#[remote]` generates.
#[doc(hidden)]
pub fn generate<T: Serialize>(items: impl IntoIterator<Item = T>) -> Result<Output, Failure> {
    run(items.into_iter().map(Ok::<T, std::convert::Infallible>))
}

/// Runs the items of `-> impl Iterator<Item = Result<T, E>>`: an `Err`
/// ends the stream with that error; used by the code `#[remote]` generates.
#[doc(hidden)]
pub fn generate_results<T: Serialize, E: std::fmt::Display>(
    items: impl IntoIterator<Item = Result<T, E>>,
) -> Result<Output, Failure> {
    run(items)
}
