//! Control of running work from the user's side: cancelling tasks and
//! consuming results in the order they finish.

use std::collections::HashMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::client::{Client, Waiter};
use crate::error::Result;
use crate::object_ref::ObjectRef;
use crate::proto::{self, client_op::Op};

pub use crate::worker::cancel::is_cancelled;

fn send_cancel<T>(r: &ObjectRef<T>, force: bool) -> Result<()> {
    let c = proto::Cancel {
        task_id: r.handle.id,
        force,
        recursive: true,
    };
    // A direct task is cancelled by this driver or its leased worker.
    if !r.handle.client.cancel_direct(&c) {
        r.handle.client.send(Op::Cancel(c));
    }
    Ok(())
}

/// Cancels the task that makes `r`, and every task it submitted.
///
/// A task that has not started (queued, or waiting for its arguments)
/// never runs. A running task sees [`is_cancelled`] turn true and finishes
/// as [`crate::Error::Cancelled`] whatever it returns. Tasks that depend on
/// its result fail with `Cancelled` too. Cancelling a finished task (or a
/// `put` value) does nothing. An actor call still queued is dropped; a
/// running one stops only if it checks [`is_cancelled`].
pub fn cancel<T>(r: &ObjectRef<T>) -> Result<()> {
    send_cancel(r, false)
}

/// [`cancel`], and a running task's worker process is killed at once (its
/// other queued tasks go back to the queue without using a retry, and the
/// head starts another worker). For code that never checks
/// [`is_cancelled`]. Actor calls are cancelled as by [`cancel`]: killing
/// the process would take the actor's state with it.
pub fn force_cancel<T>(r: &ObjectRef<T>) -> Result<()> {
    send_cancel(r, true)
}

/// Results of `refs` in the order they finish, each with its index in
/// `refs`: `for (i, res) in fleet::as_completed(&refs) { .. }`.
///
/// It borrows `refs` and keeps only their ids and a queue of finished ones;
/// each value is decoded when its turn comes. Works with any number of
/// refs (100,000 is fine). A task waiting here lends its CPU to the cluster
/// like `get` does.
pub fn as_completed<T: DeserializeOwned>(refs: &[ObjectRef<T>]) -> AsCompleted<'_, T> {
    let mut positions: HashMap<u64, Vec<usize>> = HashMap::with_capacity(refs.len());
    for (i, r) in refs.iter().enumerate().rev() {
        positions.entry(r.handle.id).or_default().push(i);
    }
    let client = refs.first().map(|r| r.handle.client.clone());
    let waiter = client.as_ref().map(|c| {
        let ids: Vec<u64> = refs.iter().map(|r| r.handle.id).collect();
        c.completions(&ids)
    });
    AsCompleted {
        refs,
        positions,
        client,
        waiter,
        left: refs.len(),
    }
}

/// The iterator [`as_completed`] returns.
pub struct AsCompleted<'a, T> {
    refs: &'a [ObjectRef<T>],
    /// Positions in `refs` of each id, last first.
    positions: HashMap<u64, Vec<usize>>,
    client: Option<Arc<Client>>,
    waiter: Option<Arc<Waiter>>,
    left: usize,
}

impl<T: DeserializeOwned> Iterator for AsCompleted<'_, T> {
    type Item = (usize, Result<T>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        let (client, waiter) = (self.client.as_ref()?, self.waiter.as_ref()?);
        let id = if waiter.has_finished() {
            waiter.next_finished()
        } else {
            let _lent = crate::worker::executor::lend_cpu();
            waiter.next_finished()
        };
        let index = match id {
            Some(id) => self.positions.get_mut(&id).and_then(|p| p.pop()),
            // The session is gone: the rest fail in input order.
            None => self.positions.values_mut().find_map(|p| p.pop()),
        }?;
        self.left -= 1;
        Some((index, client.value(self.refs[index].handle.id)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}
