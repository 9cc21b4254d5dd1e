//! A countdown that a blocking thread or an async task waits on.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// Fires once `needed` of the objects it was registered on are finished.
pub(crate) struct Waiter {
    remaining: AtomicUsize,
    /// `inner.done`, readable without the lock (for spinning).
    fired: AtomicBool,
    inner: Mutex<Inner>,
    cv: Condvar,
    /// `as_completed`: the ids that finished, in finishing order.
    finished: Option<Mutex<std::collections::VecDeque<u64>>>,
}

struct Inner {
    done: bool,
    waker: Option<Waker>,
}

impl Waiter {
    pub(crate) fn new(needed: usize) -> Arc<Self> {
        Arc::new(Waiter {
            remaining: AtomicUsize::new(needed),
            fired: AtomicBool::new(needed == 0),
            inner: Mutex::new(Inner {
                done: needed == 0,
                waker: None,
            }),
            cv: Condvar::new(),
            finished: None,
        })
    }

    /// A waiter that also records which objects finished, in order.
    pub(crate) fn ordered(needed: usize) -> Arc<Self> {
        let mut w = Waiter::new(needed);
        if let Some(w) = Arc::get_mut(&mut w) {
            w.finished = Some(Mutex::new(std::collections::VecDeque::new()));
        }
        w
    }

    /// Whether an object finished that was not taken yet.
    pub(crate) fn has_finished(&self) -> bool {
        self.finished.as_ref().is_some_and(|q| !q.lock().is_empty())
    }

    /// Blocks until an object has finished that was not taken yet, and
    /// takes it; `None` once the session is gone and none is left.
    pub(crate) fn next_finished(&self) -> Option<u64> {
        let q = self.finished.as_ref()?;
        loop {
            if let Some(id) = q.lock().pop_front() {
                return Some(id);
            }
            let mut inner = self.inner.lock();
            if let Some(id) = q.lock().pop_front() {
                return Some(id);
            }
            if inner.done {
                return None;
            }
            self.cv.wait(&mut inner);
        }
    }

    /// One more object finished: `id`.
    pub(crate) fn count_down(&self, id: u64) {
        if let Some(q) = &self.finished {
            q.lock().push_back(id);
            let _inner = self.inner.lock();
            self.cv.notify_all();
        }
        let prev = self
            .remaining
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| r.checked_sub(1));
        if prev == Ok(1) {
            self.wake();
        }
    }

    /// Wakes it regardless of the count: the connection is gone.
    pub(crate) fn wake(&self) {
        let mut inner = self.inner.lock();
        inner.done = true;
        self.fired.store(true, Ordering::Release);
        self.cv.notify_all();
        if let Some(w) = inner.waker.take() {
            w.wake();
        }
    }

    /// Blocks until fired; false on timeout.
    pub(crate) fn wait(&self, timeout: Option<Duration>) -> bool {
        // A zero timeout asks whether it fired, without waiting at all.
        let may_spin = timeout.is_none_or(|t| !t.is_zero());
        if may_spin && crate::spin::until(|| self.fired.load(Ordering::Acquire)) {
            return true;
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut inner = self.inner.lock();
        while !inner.done {
            match deadline {
                Some(d) => {
                    if self.cv.wait_until(&mut inner, d).timed_out() {
                        return inner.done;
                    }
                }
                None => self.cv.wait(&mut inner),
            }
        }
        true
    }

    pub(crate) fn fired(self: Arc<Self>) -> Fired {
        Fired(self)
    }
}

/// Future form of [`Waiter::wait`].
pub(crate) struct Fired(Arc<Waiter>);

impl Future for Fired {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.0.inner.lock();
        if inner.done {
            Poll::Ready(())
        } else {
            inner.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}
