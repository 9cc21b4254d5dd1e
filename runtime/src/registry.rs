//! The link-time registry of remote functions.
//!
//! `#[remote]` adds one entry per function to a `linkme` distributed slice.
//! The linker assembles the slice, so it is complete before any code runs,
//! including the worker hook that runs before `main`.

use std::any::Any;
use std::collections::HashMap;
use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{self, Encoded};
use crate::node::object_store::Bytes;

/// Every `#[remote]` function linked into this binary.
#[doc(hidden)]
#[linkme::distributed_slice]
pub static REMOTE_FUNCTIONS: [RemoteFunction];

/// One registered remote function.
#[doc(hidden)]
pub struct RemoteFunction {
    /// Stable name: `module_path::function`.
    pub name: &'static str,
    /// Argument and return types as written, for the build hash.
    pub signature: &'static str,
    /// Decodes the arguments, runs the function, encodes the result.
    pub invoke: fn(&mut Args) -> Result<Output, Failure>,
}

/// Every actor type (`#[remote] impl`) linked into this binary.
#[doc(hidden)]
#[linkme::distributed_slice]
pub static ACTOR_CLASSES: [ActorClass];

/// Every actor method linked into this binary.
#[doc(hidden)]
#[linkme::distributed_slice]
pub static ACTOR_METHODS: [ActorMethod];

/// One registered actor type and its constructor.
#[doc(hidden)]
pub struct ActorClass {
    /// Stable name: `module_path::Type`.
    pub name: &'static str,
    /// Argument types of `new`, for the build hash.
    pub signature: &'static str,
    /// Decodes the arguments and runs `new`.
    pub construct: fn(&mut Args) -> Result<ActorState, Failure>,
}

/// One registered actor method.
#[doc(hidden)]
pub struct ActorMethod {
    /// Stable name: `module_path::Type::method`.
    pub name: &'static str,
    /// Receiver, argument and return types, for the build hash.
    pub signature: &'static str,
    /// Decodes the arguments and calls the method on the instance.
    pub invoke: fn(&ActorState, &mut Args) -> Result<Output, Failure>,
}

/// The state of one actor instance. `&self` methods share a read lock and
/// may run at once (with `max_concurrency > 1`); `&mut self` methods take
/// the write lock. The lock does not poison: after a panic the actor keeps
/// whatever state the method left.
#[doc(hidden)]
pub struct ActorState(parking_lot::RwLock<Box<dyn Any + Send + Sync>>);

impl ActorState {
    /// Wraps a freshly constructed actor.
    pub fn new<A: Any + Send + Sync>(actor: A) -> Self {
        ActorState(parking_lot::RwLock::new(Box::new(actor)))
    }

    /// Runs `f` on the instance with shared access.
    pub fn with_ref<A: Any, R>(&self, f: impl FnOnce(&A) -> R) -> Result<R, Failure> {
        let guard = self.0.read();
        let a = guard
            .downcast_ref::<A>()
            .ok_or_else(|| Failure::Codec("actor instance has another type".into()))?;
        Ok(f(a))
    }

    /// Runs `f` on the instance with exclusive access.
    pub fn with_mut<A: Any, R>(&self, f: impl FnOnce(&mut A) -> R) -> Result<R, Failure> {
        let mut guard = self.0.write();
        let a = guard
            .downcast_mut::<A>()
            .ok_or_else(|| Failure::Codec("actor instance has another type".into()))?;
        Ok(f(a))
    }
}

/// Why an invocation produced no value.
#[doc(hidden)]
#[derive(Debug)]
pub enum Failure {
    /// The function returned `Err`; its `Display` text.
    User(String),
    /// An argument could not be decoded or the result not encoded.
    Codec(String),
}

/// The resolved arguments of one task, decoded one by one in order.
#[doc(hidden)]
pub struct Args {
    values: std::vec::IntoIter<Bytes>,
    position: usize,
}

impl Args {
    pub(crate) fn new(values: Vec<Bytes>) -> Self {
        Args {
            values: values.into_iter(),
            position: 0,
        }
    }

    /// Decodes the next argument.
    pub fn take<T: DeserializeOwned>(&mut self) -> Result<T, Failure> {
        self.position += 1;
        let bytes = self
            .values
            .next()
            .ok_or_else(|| Failure::Codec(format!("argument {} is missing", self.position)))?;
        codec::decode_from(&bytes)
            .map_err(|e| Failure::Codec(format!("argument {}: {e}", self.position)))
    }
}

/// An encoded result (and, with `num_returns`, the ones after it).
#[doc(hidden)]
pub struct Output(pub(crate) Encoded, pub(crate) Vec<Encoded>);

/// Encodes a function's result.
#[doc(hidden)]
pub fn output<T: Serialize>(value: &T) -> Result<Output, Failure> {
    codec::encode(value)
        .map(|e| Output(e, Vec::new()))
        .map_err(|e| Failure::Codec(format!("result: {e}")))
}

/// The results of a function with `num_returns`, one per tuple element.
#[doc(hidden)]
pub fn outputs(parts: Vec<Output>) -> Result<Output, Failure> {
    let mut parts = parts.into_iter().map(|o| o.0);
    let first = parts
        .next()
        .ok_or_else(|| Failure::Codec("no results".into()))?;
    Ok(Output(first, parts.collect()))
}

fn table() -> &'static HashMap<&'static str, &'static RemoteFunction> {
    static TABLE: OnceLock<HashMap<&'static str, &'static RemoteFunction>> = OnceLock::new();
    TABLE.get_or_init(|| REMOTE_FUNCTIONS.iter().map(|f| (f.name, f)).collect())
}

pub(crate) fn lookup(name: &str) -> Option<&'static RemoteFunction> {
    table().get(name).copied()
}

pub(crate) fn actor_class(name: &str) -> Option<&'static ActorClass> {
    static TABLE: OnceLock<HashMap<&'static str, &'static ActorClass>> = OnceLock::new();
    TABLE
        .get_or_init(|| ACTOR_CLASSES.iter().map(|c| (c.name, c)).collect())
        .get(name)
        .copied()
}

pub(crate) fn actor_method(name: &str) -> Option<&'static ActorMethod> {
    static TABLE: OnceLock<HashMap<&'static str, &'static ActorMethod>> = OnceLock::new();
    TABLE
        .get_or_init(|| ACTOR_METHODS.iter().map(|m| (m.name, m)).collect())
        .get(name)
        .copied()
}

/// A hash of every registered name and signature: two processes with equal
/// hashes agree on what each function name means.
pub(crate) fn registry_hash() -> String {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        let mut entries: Vec<String> = REMOTE_FUNCTIONS
            .iter()
            .map(|f| format!("{}{}", f.name, f.signature))
            .chain(
                ACTOR_CLASSES
                    .iter()
                    .map(|c| format!("{}{}", c.name, c.signature)),
            )
            .chain(
                ACTOR_METHODS
                    .iter()
                    .map(|m| format!("{}{}", m.name, m.signature)),
            )
            .collect();
        entries.sort();
        // FNV-1a: stable across builds and Rust versions, unlike std's hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in entries.join("\n").bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}-{}", entries.len())
    })
    .clone()
}
