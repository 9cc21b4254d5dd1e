//! Per-call options of a remote function, and submission.

use std::sync::Arc;

use crate::context;
use crate::generator::ObjectRefStream;
use crate::object_ref::{ArgValue, Handle, ObjectRef};
use crate::Result;

/// How one remote call is scheduled. `#[remote(num_cpus = .., max_retries = ..)]`
/// sets the defaults; `f::options()` changes them for one call.
#[derive(Clone, Debug)]
pub struct TaskOptions {
    pub(crate) function: &'static str,
    pub(crate) num_cpus: f64,
    pub(crate) max_retries: u32,
    pub(crate) node: Option<String>,
    pub(crate) retry_on_error: bool,
    /// generators: items a generator task may yield beyond those taken.
    pub(crate) generator_backpressure: u32,
}

impl TaskOptions {
    /// Defaults for the named function: one CPU, three retries if the worker dies.
    pub const fn new(function: &'static str) -> Self {
        TaskOptions {
            function,
            num_cpus: 1.0,
            max_retries: 3,
            node: None,
            retry_on_error: false,
            generator_backpressure: 16,
        }
    }

    /// For a generator (`-> impl Iterator<Item = T>`): how many items the
    /// task may yield beyond those the caller has taken from the stream
    /// before it waits (default 16; 0: no limit). Bounds the memory a fast
    /// producer holds in the store for a slow consumer.
    pub const fn generator_backpressure(mut self, n: u32) -> Self {
        self.generator_backpressure = n;
        self
    }

    /// Also retries the task when it returns `Err` or panics (not only when
    /// its worker dies), up to `max_retries`; `get` returns the last error.
    pub const fn retry_on_error(mut self, yes: bool) -> Self {
        self.retry_on_error = yes;
        self
    }

    /// CPUs the task reserves while it runs (may be fractional or zero).
    pub const fn num_cpus(mut self, n: f64) -> Self {
        self.num_cpus = n;
        self
    }

    /// How often the task is re-run when its worker process dies.
    pub const fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Runs the task only on the named node (see [`crate::current_node`]).
    pub fn node(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }

    /// The function's stable name.
    pub fn function(&self) -> &'static str {
        self.function
    }

    /// Submits a call of a function with `num_returns = n`; used by the
    /// code `#[remote]` generates.
    #[doc(hidden)]
    pub fn submit_returns(&self, n: u32, args: Vec<Result<ArgValue>>) -> Returns {
        match context::client_or_detached() {
            Ok(client) => Returns(client.submit_task_returns(self, n, args).into_iter()),
            Err((detached, e)) => Returns(
                (0..n.max(1))
                    .map(|_| detached.failed(&e))
                    .collect::<Vec<_>>()
                    .into_iter(),
            ),
        }
    }

    /// Submits a call of a generator function; used by the code
    /// `#[remote]` generates.
    #[doc(hidden)]
    pub fn submit_generator<T>(&self, args: Vec<Result<ArgValue>>) -> ObjectRefStream<T> {
        match context::client_or_detached() {
            Ok(client) => {
                let (handle, inbox) = client.submit_generator(self, args);
                ObjectRefStream::new(handle, Some(inbox))
            }
            Err((detached, e)) => ObjectRefStream::new(detached.failed(&e), None),
        }
    }

    /// Submits a call; used by the code `#[remote]` generates.
    #[doc(hidden)]
    pub fn submit<T>(&self, args: Vec<Result<ArgValue>>) -> ObjectRef<T> {
        match context::client_or_detached() {
            Ok(client) => ObjectRef::from_handle(client.submit_task(self, args)),
            Err((detached, e)) => ObjectRef::from_handle(detached.failed(&e)),
        }
    }
}

/// The refs of a call with `num_returns`, taken one by one in order.
#[doc(hidden)]
pub struct Returns(std::vec::IntoIter<Arc<Handle>>);

impl Returns {
    /// The next result's ref, typed.
    #[allow(clippy::should_implement_trait)]
    pub fn next<T>(&mut self) -> ObjectRef<T> {
        ObjectRef::from_handle(self.0.next().expect("one ref per declared result"))
    }
}
