//! Actors: stateful remote objects. `#[remote] struct T` plus
//! `#[remote] impl T` generate a `THandle` whose methods return
//! [`ObjectRef`]s; calls from one caller run in the order they were made.

mod pool;

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::context;
use crate::error::{Error, Result};
use crate::object_ref::{ArgValue, ObjectId, ObjectRef};
use crate::proto;

pub use pool::ActorPool;

/// Implemented by `#[remote] impl` for the actor type.
pub trait Actor: 'static {
    /// The generated handle type (`CounterHandle` for `Counter`).
    type Handle: From<ActorHandle> + AsRef<ActorHandle>;
    /// Stable name of the type in the registry.
    const CLASS: &'static str;
}

/// An untyped, counted handle on a live actor; generated handles wrap it.
/// Cloning is cheap; handles may be sent inside task arguments and results.
/// An unnamed actor is destroyed once no handle is left anywhere.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ActorHandle {
    object: ObjectRef<()>,
}

impl ActorHandle {
    /// The actor's id.
    pub fn id(&self) -> ObjectId {
        self.object.id()
    }

    /// Waits until the constructor has run; its error if it failed.
    pub fn ready(&self) -> Result<()> {
        crate::get(&self.object)
    }

    /// Calls a method by registry name; used by generated handles.
    #[doc(hidden)]
    pub fn call<R>(&self, method: &'static str, args: Vec<Result<ArgValue>>) -> ObjectRef<R> {
        let client = &self.object.handle.client;
        let spec = proto::TaskSpec {
            function: method.to_string(),
            actor_id: self.object.handle.id,
            ..Default::default()
        };
        ObjectRef::from_handle(client.submit(spec, args))
    }

    /// Calls a generator method (`-> impl Iterator<Item = R>`) by registry
    /// name; used by generated handles. Backpressure is the default, 16.
    #[doc(hidden)]
    pub fn call_generator<R>(
        &self,
        method: &'static str,
        args: Vec<Result<ArgValue>>,
    ) -> crate::ObjectRefStream<R> {
        let client = &self.object.handle.client;
        let spec = proto::TaskSpec {
            function: method.to_string(),
            actor_id: self.object.handle.id,
            generator_backpressure: crate::TaskOptions::new("").generator_backpressure,
            ..Default::default()
        };
        let (handle, inbox) = client.submit_stream(spec, args);
        crate::ObjectRefStream::new(handle, Some(inbox))
    }
}

impl AsRef<ActorHandle> for ActorHandle {
    fn as_ref(&self) -> &ActorHandle {
        self
    }
}

impl fmt::Debug for ActorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ActorHandle({})", self.id())
    }
}

impl Serialize for ActorHandle {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.object.serialize(s)
    }
}

impl<'de> Deserialize<'de> for ActorHandle {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(ActorHandle {
            object: ObjectRef::deserialize(d)?,
        })
    }
}

/// How an actor is created: `Counter::options().name("hits").remote(0)`.
#[derive(Clone, Debug)]
pub struct ActorOptions {
    class: &'static str,
    name: Option<String>,
    max_restarts: u32,
    max_task_retries: u32,
    max_concurrency: u32,
    num_cpus: f64,
    detached: bool,
    get_if_exists: bool,
    /// Resources besides CPUs, held for the actor's life.
    resources: Vec<proto::Resource>,
    spread: bool,
    node_soft: Option<String>,
    invalid: Option<String>,
}

impl ActorOptions {
    /// Defaults: unnamed, no restarts, no call retries, one call at a time,
    /// no CPUs reserved (an actor at rest uses none, as in Ray).
    pub const fn new(class: &'static str) -> Self {
        ActorOptions {
            class,
            name: None,
            max_restarts: 0,
            max_task_retries: 0,
            max_concurrency: 1,
            num_cpus: 0.0,
            detached: false,
            get_if_exists: false,
            resources: Vec::new(),
            spread: false,
            node_soft: None,
            invalid: None,
        }
    }

    /// Holds `amount` of the custom resource `name` for the actor's whole
    /// life (see [`TaskOptions::resource`](crate::TaskOptions::resource)).
    pub fn resource(mut self, name: &str, amount: f64) -> Self {
        match crate::resources::check("resource(..)", name, amount) {
            Ok(()) => crate::resources::set(&mut self.resources, name, amount),
            Err(e) => self.invalid = Some(e.to_string()),
        }
        self
    }

    /// Holds `bytes` of its node's `memory` resource for the actor's life.
    pub fn memory(mut self, bytes: u64) -> Self {
        crate::resources::set(&mut self.resources, crate::resources::MEMORY, bytes as f64);
        self
    }

    /// Places actors created with these options round-robin over the
    /// nodes (see [`TaskOptions::spread`](crate::TaskOptions::spread)).
    pub fn spread(mut self) -> Self {
        self.spread = true;
        self
    }

    /// Prefers the named node while it is alive and has room; otherwise
    /// places the actor anywhere.
    pub fn node_soft(mut self, node: impl Into<String>) -> Self {
        self.node_soft = Some(node.into());
        self
    }

    /// Lets the actor outlive the driver that creates it (Ray's
    /// `lifetime="detached"`): it runs until [`kill`]ed, and later drivers
    /// reach it with [`get_actor`]. Needs a [`name`](Self::name). Its
    /// worker runs the creating driver's executable, kept by the head.
    pub fn detached(mut self) -> Self {
        self.detached = true;
        self
    }

    /// With a name: return the live actor of that name if there is one
    /// (the constructor's arguments are then unused) instead of failing,
    /// and create it otherwise (Ray's `get_if_exists`).
    pub fn get_if_exists(mut self, yes: bool) -> Self {
        self.get_if_exists = yes;
        self
    }

    /// A cluster-wide name: [`get_actor`] finds it, and it lives until
    /// [`kill`]ed even with no handles left.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How often the actor is rebuilt (its constructor run again with the
    /// same arguments) when its process dies.
    pub fn max_restarts(mut self, n: u32) -> Self {
        self.max_restarts = n;
        self
    }

    /// How often a call that was running when the process died is retried.
    pub fn max_task_retries(mut self, n: u32) -> Self {
        self.max_task_retries = n;
        self
    }

    /// Calls that may run at once; above 1, `&self` methods run in parallel
    /// (they share a read lock) and `&mut self` methods still run alone.
    pub fn max_concurrency(mut self, n: u32) -> Self {
        self.max_concurrency = n.max(1);
        self
    }

    /// CPUs reserved for the actor's whole life.
    pub fn num_cpus(mut self, n: f64) -> Self {
        self.num_cpus = n;
        self
    }

    /// Creates the actor; used by generated code.
    #[doc(hidden)]
    pub fn create(&self, args: Vec<Result<ArgValue>>) -> Result<ActorHandle> {
        let client = context::client_or_init()?;
        if let Some(e) = &self.invalid {
            return Err(Error::Usage(e.clone()));
        }
        if self.detached && self.name.is_none() {
            return Err(Error::ActorDied {
                actor: self.class.to_string(),
                message: "a detached actor needs a name: add .name(\"...\") so that later \
                          drivers can find it with fleet::get_actor and stop it with fleet::kill"
                    .into(),
            });
        }
        if let (true, Some(name)) = (self.get_if_exists, &self.name) {
            if let Some(handle) = self.existing(&client, name)? {
                return Ok(handle);
            }
        }
        let spec = proto::TaskSpec {
            function: self.class.to_string(),
            num_cpus: self.num_cpus,
            resources: self.resources.clone(),
            spread: self.spread,
            node_soft: self.node_soft.clone().unwrap_or_default(),
            create: Some(Box::new(proto::ActorSpec {
                class: self.class.to_string(),
                name: self.name.clone().unwrap_or_default(),
                max_restarts: self.max_restarts,
                max_task_retries: self.max_task_retries,
                max_concurrency: self.max_concurrency,
                detached: self.detached,
            })),
            ..Default::default()
        };
        let handle = ActorHandle {
            object: ObjectRef::from_handle(client.submit(spec, args)),
        };
        if let Some(name) = &self.name {
            // The head binds names in arrival order; asking after the
            // submit tells whether this actor got it.
            match client.lookup_actor(name)? {
                Some((id, _)) if id == handle.object.handle.id => {}
                // Another caller created it first: theirs is the one.
                _ if self.get_if_exists => {
                    if let Some(theirs) = self.existing(&client, name)? {
                        return Ok(theirs);
                    }
                    return Err(Error::ActorDied {
                        actor: format!("{} `{name}`", self.class),
                        message: "the actor of that name died while this one was created".into(),
                    });
                }
                _ => {
                    return Err(Error::ActorDied {
                        actor: format!("{} `{name}`", self.class),
                        message: "an actor with that name already exists".into(),
                    })
                }
            }
        }
        Ok(handle)
    }
}

impl ActorOptions {
    /// The live actor named `name`, if any, checked to be of this class.
    fn existing(
        &self,
        client: &std::sync::Arc<crate::client::Client>,
        name: &str,
    ) -> Result<Option<ActorHandle>> {
        match client.lookup_actor(name)? {
            None => Ok(None),
            Some((_, class)) if class != self.class => Err(Error::ActorDied {
                actor: format!("`{name}`"),
                message: format!("it is a {class}, not a {}", self.class),
            }),
            Some((id, _)) => Ok(Some(ActorHandle {
                object: ObjectRef::from_handle(client.adopt(id)),
            })),
        }
    }
}

/// Finds the actor named `name`, from any driver or task of the cluster.
pub fn get_actor<A: Actor>(name: &str) -> Result<A::Handle> {
    let client = context::client_or_init()?;
    match client.lookup_actor(name)? {
        None => Err(Error::ActorDied {
            actor: format!("`{name}`"),
            message: "no live actor has that name".into(),
        }),
        Some((_, class)) if class != A::CLASS => Err(Error::ActorDied {
            actor: format!("`{name}`"),
            message: format!("it is a {class}, not a {}", A::CLASS),
        }),
        Some((id, _)) => Ok(A::Handle::from(ActorHandle {
            object: ObjectRef::from_handle(client.adopt(id)),
        })),
    }
}

/// Stops an actor now: its queued calls fail with [`Error::ActorDied`], it
/// is not restarted, and its name is freed.
pub fn kill(actor: &impl AsRef<ActorHandle>) -> Result<()> {
    let handle = actor.as_ref();
    handle
        .object
        .handle
        .client
        .send(proto::client_op::Op::KillActor(handle.object.handle.id));
    Ok(())
}
