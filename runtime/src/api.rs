//! `get`, `put` and `wait`: the blocking half of the user API.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::context;
use crate::error::{Error, Result};
use crate::object_ref::ObjectRef;

/// Waits for the object and returns its value. A failed task's error (or a
/// panic's message) comes back as [`Error::Task`].
pub fn get<T: DeserializeOwned>(r: &ObjectRef<T>) -> Result<T> {
    get_timeout(r, None)
}

/// [`get`] that gives up with [`Error::Timeout`] after `timeout`: a
/// [`Duration`], or an `Option<Duration>` where `None` waits for ever.
///
/// ```no_run
/// # #[fleet::remote] fn slow() -> u32 { 7 }
/// # fn main() -> fleet::Result<()> {
/// use std::time::Duration;
/// let r = slow::remote();
/// match fleet::get_timeout(&r, Duration::from_millis(500)) {
///     Ok(v) => println!("{v}"),
///     Err(fleet::Error::Timeout(_)) => println!("not yet"),
///     Err(e) => return Err(e),
/// }
/// # Ok(()) }
/// ```
pub fn get_timeout<T: DeserializeOwned>(
    r: &ObjectRef<T>,
    timeout: impl Into<Option<Duration>>,
) -> Result<T> {
    let timeout = timeout.into();
    let client = &r.handle.client;
    if !client.wait(&[r.handle.id], 1, timeout) {
        return Err(Error::Timeout(timeout.unwrap_or_default()));
    }
    client.value(r.handle.id)
}

/// Values of all `refs`, in order; the first error wins.
pub fn get_all<T: DeserializeOwned>(refs: &[ObjectRef<T>]) -> Result<Vec<T>> {
    get_all_timeout(refs, None)
}

/// [`get_all`] with a timeout for the whole batch: a [`Duration`], or an
/// `Option<Duration>` where `None` waits for ever.
pub fn get_all_timeout<T: DeserializeOwned>(
    refs: &[ObjectRef<T>],
    timeout: impl Into<Option<Duration>>,
) -> Result<Vec<T>> {
    let timeout = timeout.into();
    let Some(first) = refs.first() else {
        return Ok(Vec::new());
    };
    let client = &first.handle.client;
    let ids: Vec<u64> = refs.iter().map(|r| r.handle.id).collect();
    if !client.wait(&ids, ids.len(), timeout) {
        return Err(Error::Timeout(timeout.unwrap_or_default()));
    }
    ids.iter().map(|id| client.value(*id)).collect()
}

/// [`get_all`] with a progress bar (done/total, rate, time left) on the
/// terminal; no bar when stderr is not a terminal.
pub fn get_all_with_progress<T: DeserializeOwned>(refs: &[ObjectRef<T>]) -> Result<Vec<T>> {
    let Some(first) = refs.first() else {
        return Ok(Vec::new());
    };
    let client = &first.handle.client;
    let ids: Vec<u64> = refs.iter().map(|r| r.handle.id).collect();
    let bar = indicatif::ProgressBar::new(ids.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut done = 0;
    while done < ids.len() {
        // Wake on every few percent finished, or at least twice a second.
        let step = (ids.len() / 50).max(1);
        client.wait(
            &ids,
            (done + step).min(ids.len()),
            Some(Duration::from_millis(500)),
        );
        done = ids.iter().filter(|id| client.is_ready(**id)).count();
        bar.set_position(done as u64);
    }
    bar.finish_and_clear();
    ids.iter().map(|id| client.value(*id)).collect()
}

/// Stores `value` in the cluster and returns a ref to it. Large values go
/// to the node's shared-memory store; tasks on this node map them.
pub fn put<T: Serialize>(value: T) -> Result<ObjectRef<T>> {
    let client = context::client_or_init()?;
    Ok(ObjectRef::from_handle(client.put_value(&value)?))
}

/// `(ready, pending)` refs, as [`wait`] returns them.
pub type ReadySplit<T> = (Vec<ObjectRef<T>>, Vec<ObjectRef<T>>);

/// Waits until `num_returns` of `refs` are finished or `timeout` passes.
/// Returns `(ready, pending)`, each in input order; `ready` has at most
/// `num_returns` refs.
/// `timeout` is a [`Duration`], or an `Option<Duration>` where `None`
/// waits for ever.
pub fn wait<T>(
    refs: &[ObjectRef<T>],
    num_returns: usize,
    timeout: impl Into<Option<Duration>>,
) -> Result<ReadySplit<T>> {
    let timeout = timeout.into();
    let Some(first) = refs.first() else {
        return Ok((Vec::new(), Vec::new()));
    };
    let client = &first.handle.client;
    let ids: Vec<u64> = refs.iter().map(|r| r.handle.id).collect();
    client.wait(&ids, num_returns, timeout);
    // Without its head a driver cannot tell what is finished: say so.
    if let Some(why) = client.gone() {
        return Err(Error::Connection(why));
    }
    let mut ready = Vec::new();
    let mut pending = Vec::new();
    for r in refs {
        if ready.len() < num_returns && client.is_ready(r.handle.id) {
            ready.push(r.clone());
        } else {
            pending.push(r.clone());
        }
    }
    Ok((ready, pending))
}

/// Name of the node this process runs on: a worker's node inside a task,
/// the driver's node outside. `None` before `init`.
pub fn current_node() -> Option<String> {
    context::client().ok().map(|c| c.node().to_string())
}
