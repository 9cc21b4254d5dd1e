//! Fleet: Ray's model (remote functions, an object store, a cluster) for
//! Rust.
//!
//! ```no_run
//! use fleet::{remote, ObjectRef};
//!
//! #[remote]
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! fn main() -> fleet::Result<()> {
//!     let _cluster = fleet::init()?; // a local cluster, one worker per core
//!     let r: ObjectRef<u64> = square::remote(3); // returns at once
//!     assert_eq!(fleet::get(&r)?, 9);
//!     let refs: Vec<_> = (0..100u64).map(square::remote).collect();
//!     let all = fleet::get_all(&refs)?;
//!     assert_eq!(all[7], 49);
//!     Ok(())
//! }
//! ```
//!
//! Where to start:
//!
//! - [`remote`] marks a function (or a struct and its impl, an actor);
//!   `f::remote(args)` submits a call and returns an [`ObjectRef`] at once,
//!   `f::map(inputs)` one call per input. Arguments may be values,
//!   references to values or refs ([`IntoArg`]).
//! - [`get`], [`get_all`], [`get_timeout`], [`wait`] and [`as_completed`]
//!   wait for results; [`put`] stores a value; [`cancel`] stops work.
//! - [`init`] / [`init_with`] start a local cluster or join one
//!   ([`Config`], `FLEET_ADDRESS`); without them the first call does.
//! - Every failure is an [`Error`]: a task's own `Err` or panic, a dead
//!   worker, a lost object, no cluster.
//!
//! Inside, a call takes this path (files under `runtime/src/`):
//! `task.rs` encodes the arguments (`codec.rs`) and submits them over the
//! session (`client.rs`); the head (`head.rs`) waits for ref arguments,
//! picks a worker and pushes the task on that worker's stream; the worker
//! (`worker.rs`) runs it and sends the result back; the head hands it to
//! whoever waits in [`get`].

extern crate self as fleet;

/// The README's Rust blocks, compiled and run as doctests
/// (`cargo test --doc -p fleet`), so the README cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

mod actor;
mod api;
mod array;
mod blob;
mod client;
mod cluster;
mod codec;
mod context;
mod control;
pub mod daemon;
pub mod discovery;
mod error;
mod generator;
mod head;
mod latency;
mod logging;
pub mod net;
mod node;
mod object_ref;
mod pipelining;
#[doc(hidden)]
pub mod proto;
mod registry;
pub mod resources;
mod spin;
mod task;
mod worker;

pub use actor::{get_actor, kill, Actor, ActorHandle, ActorOptions, ActorPool};
pub use api::{
    current_node, get, get_all, get_all_timeout, get_all_with_progress, get_timeout, put, wait,
    ReadySplit,
};
pub use array::Array;
pub use blob::Blob;
pub use cluster::{init, init_with, Cluster, Config, ENV_ADDRESS, ENV_TOKEN};
pub use codec::INLINE_MAX;
pub use control::{as_completed, cancel, force_cancel, is_cancelled, AsCompleted};
pub use error::{Error, Result};
pub use fleet_macros::remote;
pub use generator::{AsyncObjectRefStream, ObjectRefStream};
pub use head::{Counts, PROTOCOL_VERSION};
pub use node::jobs::ENV_JOB_ID;
pub use object_ref::{IntoArg, ObjectId, ObjectRef};
pub use task::TaskOptions;

/// Items the `#[remote]` macro expands to; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::object_ref::ArgValue;
    pub use crate::registry::{
        output, outputs, ActorClass, ActorMethod, ActorState, Args, Failure, Output,
        RemoteFunction, ACTOR_CLASSES, ACTOR_METHODS, REMOTE_FUNCTIONS,
    };
    pub use crate::task::Returns;
    pub use crate::worker::generator::{generate, generate_results};
    pub use linkme;
    pub use serde;

    /// Runs an async remote function or method to completion on the
    /// worker's runtime (or a fresh one outside a worker).
    pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
        crate::worker::block_on(fut)
    }

    /// Marks a `#[remote] fn` that is an item of a module (see
    /// `macros/src/checks.rs`).
    pub struct AtModuleLevel;

    /// What the marker of a `#[remote] fn` inside a function body falls
    /// back to.
    pub struct InsideAFunctionBody;

    /// Implemented only by [`AtModuleLevel`]: the bound's message is the
    /// compile error of a remote function inside a function body.
    #[diagnostic::on_unimplemented(
        message = "remote functions must be items at module level",
        label = "this `#[remote] fn` is inside a function body",
        note = "move it out of the function body, next to `fn main`: workers find a remote \
                function by its path in the module tree, and items inside a function body \
                have none"
    )]
    pub trait ModuleLevel {}

    impl ModuleLevel for AtModuleLevel {}

    /// Compiles only for [`AtModuleLevel`].
    pub const fn at_module_level<M: ModuleLevel>() {}

    /// Converts one argument for submission.
    pub fn arg<T, A: crate::IntoArg<T>>(a: A) -> crate::Result<ArgValue> {
        a.into_arg()
    }
}
