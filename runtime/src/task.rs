//! Per-call options of a remote function, and submission.

use std::sync::Arc;

use crate::context;
use crate::generator::ObjectRefStream;
use crate::object_ref::{ArgValue, Handle, ObjectRef};
use crate::{proto, Error, Result};

/// How one remote call is scheduled. `#[remote(num_cpus = .., max_retries = ..)]`
/// sets the defaults; `f::options()` changes them for one call.
#[derive(Clone, Debug)]
pub struct TaskOptions {
    pub(crate) function: &'static str,
    pub(crate) num_cpus: f64,
    pub(crate) max_retries: u32,
    pub(crate) node: Option<String>,
    pub(crate) retry_on_error: bool,
    /// Resources besides CPUs (`memory` in bytes), reserved while it runs.
    pub(crate) resources: Vec<proto::Resource>,
    pub(crate) spread: bool,
    pub(crate) node_soft: Option<String>,
    /// A bad option given at the call site: the call fails with it.
    pub(crate) invalid: Option<String>,
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
            resources: Vec::new(),
            spread: false,
            node_soft: None,
            invalid: None,
            generator_backpressure: 16,
        }
    }

    /// Reserves `amount` of the custom resource `name` while the task runs:
    /// it runs only on a node that declared enough of it (`fleet start
    /// --resources name=N`, [`Config::resources`](crate::Config::resources)),
    /// and no more such tasks run there at once than the node has. A
    /// task no node can ever satisfy waits until such a node joins, and
    /// `fleet status` names the missing resource.
    pub fn resource(mut self, name: &str, amount: f64) -> Self {
        match crate::resources::check("resource(..)", name, amount) {
            Ok(()) => crate::resources::set(&mut self.resources, name, amount),
            Err(e) => self.invalid = Some(e.to_string()),
        }
        self
    }

    /// Reserves `bytes` of the node's `memory` resource (by default the
    /// node's RAM) while the task runs, so that tasks which need much
    /// memory do not run side by side on a node too small for them all.
    /// Nothing limits what the task really uses.
    pub fn memory(mut self, bytes: u64) -> Self {
        crate::resources::set(&mut self.resources, crate::resources::MEMORY, bytes as f64);
        self
    }

    /// Places the calls made with these options round-robin over the
    /// nodes that can run them (Ray's `SPREAD`): each call prefers the next
    /// node, and runs elsewhere when that one has no room for it.
    pub fn spread(mut self) -> Self {
        self.spread = true;
        self
    }

    /// Prefers the named node while it is alive and has room for the task;
    /// otherwise runs it anywhere (unlike [`node`](Self::node), a hard pin).
    pub fn node_soft(mut self, node: impl Into<String>) -> Self {
        self.node_soft = Some(node.into());
        self
    }

    /// Fills in what these options say about placement.
    fn place(&self, spec: &mut proto::TaskSpec) {
        if self.resources.is_empty() && !self.spread && self.node_soft.is_none() {
            return;
        }
        spec.resources.clone_from(&self.resources);
        spec.spread = self.spread;
        spec.node_soft = self.node_soft.clone().unwrap_or_default();
    }

    /// The spec of a call made with these options: the function, its
    /// placement and retries, and the task that submits it (for recursive
    /// cancel). Ids and generator settings are the caller's to fill in.
    pub(crate) fn spec(&self) -> proto::TaskSpec {
        let mut spec = proto::TaskSpec {
            function: self.function.to_string(),
            num_cpus: self.num_cpus,
            max_retries: self.max_retries,
            node: self.node.clone().unwrap_or_default(),
            retry_on_error: self.retry_on_error,
            parent_task: crate::worker::cancel::current(),
            ..Default::default()
        };
        self.place(&mut spec);
        spec
    }

    /// The arguments, with the error of a bad option first if there is one
    /// (the call then fails at once with it).
    fn checked(&self, mut args: Vec<Result<ArgValue>>) -> Vec<Result<ArgValue>> {
        if let Some(e) = &self.invalid {
            args.insert(0, Err(Error::Usage(e.clone())));
        }
        args
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
        let args = self.checked(args);
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
        let args = self.checked(args);
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
        let args = self.checked(args);
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
