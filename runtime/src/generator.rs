//! Streaming generators from the caller's side: [`ObjectRefStream`].

use std::marker::PhantomData;
use std::sync::Arc;

use crate::client::Inbox;
use crate::error::{Error, Result};
use crate::object_ref::{Handle, ObjectId, ObjectRef};
use crate::proto::{self, client_op::Op};

/// The items of a generator task, as refs, in the order it yields them:
/// what `f::remote(..)` returns for
/// `#[fleet::remote] fn f(..) -> impl Iterator<Item = T>`.
///
/// Each item is an object of its own, stored as soon as the task yields it
/// and delivered here at once, not when the task ends. Items are plain
/// refs: pass them to other tasks, `get` them, drop them; each is freed on
/// its own once no ref to it is left, and refs taken from a stream outlive
/// the stream.
///
/// The task runs at most `generator_backpressure` items (default 16) ahead
/// of what was taken from the stream, then waits. An error (an `Err` item,
/// an `Err` before the first item, or a panic) ends the stream: the items
/// before it come first, then the error, then `None`. Dropping the stream
/// before its end cancels the task, as [`crate::cancel`] does (the task
/// sees [`crate::is_cancelled`] and stops being asked for items).
pub struct ObjectRefStream<T> {
    /// The task's own object: its outcome (the item count, or the error
    /// that ended the stream) comes after every item.
    handle: Arc<Handle>,
    /// Absent when the call failed before it was sent.
    inbox: Option<Arc<Inbox>>,
    taken: u64,
    done: bool,
    _type: PhantomData<fn() -> T>,
}

impl<T> ObjectRefStream<T> {
    pub(crate) fn new(handle: Arc<Handle>, inbox: Option<Arc<Inbox>>) -> Self {
        ObjectRefStream {
            handle,
            inbox,
            taken: 0,
            done: false,
            _type: PhantomData,
        }
    }

    /// The id of the generator task (and of its own result object).
    pub fn id(&self) -> ObjectId {
        ObjectId(self.handle.id)
    }

    /// How many items were taken from the stream so far.
    pub fn taken(&self) -> u64 {
        self.taken
    }

    /// Whether the next call to `next` returns without waiting: an item
    /// has arrived, or the stream has ended.
    pub fn is_ready(&self) -> bool {
        self.done
            || self.inbox.as_ref().is_none_or(|i| i.has_item())
            || self.handle.client.is_ready(self.handle.id)
    }

    /// Cancels the generator task (and what it submitted) as
    /// [`crate::cancel`] does, keeping the stream: the items that arrived
    /// before it stopped are still yielded, then `Error::Cancelled`.
    /// Dropping the stream cancels it too.
    pub fn cancel(&self) -> Result<()> {
        self.handle.client.send(Op::Cancel(proto::Cancel {
            task_id: self.handle.id,
            force: false,
            recursive: true,
        }));
        Ok(())
    }

    /// How the stream ended, once its task finished: `None` after every
    /// item, or the error that ended it.
    fn outcome(&self) -> Option<Error> {
        self.handle.client.value::<u64>(self.handle.id).err()
    }
}

impl<T> Iterator for ObjectRefStream<T> {
    type Item = Result<ObjectRef<T>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let client = self.handle.client.clone();
        if let Some(inbox) = &self.inbox {
            while let Some(item) = inbox.next_item() {
                if let Some(h) = client.take_item(item, self.taken + 1) {
                    self.taken += 1;
                    return Some(Ok(ObjectRef::from_handle(h)));
                }
            }
        }
        self.done = true;
        self.outcome().map(Err)
    }
}

/// An [`ObjectRefStream`] for async code, from
/// [`ObjectRefStream::into_async`]: a `futures::Stream` of the same items,
/// so `while let Some(item) = stream.next().await` (with
/// `futures::StreamExt`) waits without blocking a thread. A type of its
/// own, so that `next` and the other adapters are not ambiguous between
/// `Iterator` and `StreamExt`.
#[derive(Debug)]
pub struct AsyncObjectRefStream<T>(ObjectRefStream<T>);

impl<T> ObjectRefStream<T> {
    /// The same stream as a `futures::Stream`, for async code.
    pub fn into_async(self) -> AsyncObjectRefStream<T> {
        AsyncObjectRefStream(self)
    }
}

impl<T> futures::Stream for AsyncObjectRefStream<T> {
    type Item = Result<ObjectRef<T>>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut self.get_mut().0;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(inbox) = &this.inbox {
            match inbox.poll_item(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(item)) => {
                    if let Some(h) = this.handle.client.take_item(item, this.taken + 1) {
                        this.taken += 1;
                        return Poll::Ready(Some(Ok(ObjectRef::from_handle(h))));
                    }
                    // An item without a value (never sent so): look again.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(None) => {}
            }
        }
        this.done = true;
        Poll::Ready(this.outcome().map(Err))
    }
}

impl<T> Drop for ObjectRefStream<T> {
    fn drop(&mut self) {
        let client = &self.handle.client;
        if !self.done && !client.is_ready(self.handle.id) {
            // The consumer is gone: so is the reason to produce.
            client.send(Op::Cancel(proto::Cancel {
                task_id: self.handle.id,
                force: false,
                recursive: true,
            }));
        }
        if self.inbox.is_some() {
            client.close_stream(self.handle.id);
        }
    }
}

impl<T> std::fmt::Debug for ObjectRefStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ObjectRefStream<{}>({}, {} taken)",
            std::any::type_name::<T>(),
            self.id(),
            self.taken
        )
    }
}
