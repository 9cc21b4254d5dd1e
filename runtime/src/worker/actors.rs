//! Actor instances hosted by this worker. Many actors share the process;
//! each has a mailbox drained on the runtime's blocking pool, by at most
//! `max_concurrency` threads at a time, so calls to one actor run in order
//! while different actors run side by side.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::runtime::Handle as Runtime;

use super::executor::{guarded, resolve_args, send_result, task_error};
use crate::client::Client;
use crate::proto::{self, ErrorKind};
use crate::registry::{self, ActorState};

struct Instance {
    state: ActorState,
    /// Destroyed: calls still in the mailbox are dropped unrun.
    dead: AtomicBool,
    max_concurrency: usize,
    mailbox: Mutex<Mailbox>,
    /// Its calls come soon after its mailbox runs empty.
    hot: AtomicBool,
}

struct Mailbox {
    calls: VecDeque<proto::TaskSpec>,
    draining: usize,
    /// When it last ran empty.
    idle_since: Option<Instant>,
}

pub(crate) struct ActorHost {
    client: Arc<Client>,
    runtime: Runtime,
    actors: Mutex<HashMap<u64, Arc<Instance>>>,
    /// Destroyed while their constructor still ran.
    destroyed: Mutex<HashSet<u64>>,
}

impl ActorHost {
    pub(crate) fn new(client: Arc<Client>, runtime: Runtime) -> Arc<Self> {
        Arc::new(ActorHost {
            client,
            runtime,
            actors: Mutex::new(HashMap::new()),
            destroyed: Mutex::new(HashSet::new()),
        })
    }

    /// A creation or a call from the head.
    pub(crate) fn execute(self: &Arc<Self>, spec: proto::TaskSpec) {
        if spec.create.is_some() {
            let host = self.clone();
            self.runtime.spawn_blocking(move || host.construct(spec));
            return;
        }
        let instance = self.actors.lock().get(&spec.actor_id).cloned();
        let Some(instance) = instance else {
            let e = task_error(
                &self.client,
                &spec,
                ErrorKind::ActorDied,
                "the actor is not on this worker any more".into(),
            );
            send_result(&self.client, &spec, Err(e), Instant::now());
            return;
        };
        let start = {
            let mut m = instance.mailbox.lock();
            let gap = m.idle_since.map(|t| t.elapsed());
            instance.hot.store(
                gap.is_some_and(|g| g < 2 * crate::spin::budget()),
                Ordering::Relaxed,
            );
            m.calls.push_back(spec);
            if m.draining < instance.max_concurrency {
                m.draining += 1;
                true
            } else {
                false
            }
        };
        if start {
            let host = self.clone();
            self.runtime.spawn_blocking(move || host.drain(&instance));
        }
    }

    fn construct(&self, spec: proto::TaskSpec) {
        let started = Instant::now();
        let client = &self.client;
        let opts = spec.create.clone().unwrap_or_default();
        let outcome = match registry::actor_class(&opts.class) {
            None => Err(task_error(
                client,
                &spec,
                ErrorKind::UnknownFunction,
                format!("actor type {} is not registered", opts.class),
            )),
            Some(class) => resolve_args(client, &spec)
                .and_then(|mut args| guarded(client, &spec, || (class.construct)(&mut args))),
        };
        let outcome = outcome.map(|state| {
            let id = spec.task_id;
            if !self.destroyed.lock().remove(&id) {
                let instance = Arc::new(Instance {
                    state,
                    dead: AtomicBool::new(false),
                    max_concurrency: opts.max_concurrency.max(1) as usize,
                    mailbox: Mutex::new(Mailbox {
                        calls: VecDeque::new(),
                        draining: 0,
                        idle_since: None,
                    }),
                    hot: AtomicBool::new(false),
                });
                self.actors.lock().insert(id, instance);
            }
            crate::registry::output(&()).expect("unit encodes")
        });
        send_result(client, &spec, outcome, started);
    }

    fn drain(&self, instance: &Instance) {
        loop {
            // A caller that waits on each result sends its next call about
            // one round trip after the last finished: a drainer of a hot
            // actor stays for it instead of leaving and being started
            // again. An actor called now and then (or once, as most of
            // ten thousand are) never spins.
            if instance.hot.load(Ordering::Relaxed) {
                crate::spin::until(|| !instance.mailbox.lock().calls.is_empty());
            }
            let call = {
                let mut m = instance.mailbox.lock();
                if instance.dead.load(Ordering::Acquire) {
                    m.calls.clear();
                }
                match m.calls.pop_front() {
                    Some(c) => c,
                    None => {
                        m.draining -= 1;
                        m.idle_since = Some(Instant::now());
                        return;
                    }
                }
            };
            let started = Instant::now();
            self.client
                .deferring_releases(|| self.call(instance, &call, started));
        }
    }

    fn call(&self, instance: &Instance, call: &proto::TaskSpec, started: Instant) {
        let client = &self.client;
        let _running = super::cancel::running(call.task_id);
        let _generator = call.generator.then(|| super::generator::active(call));
        super::executor::announce(&call.function, true);
        let outcome = match registry::actor_method(&call.function) {
            None => Err(task_error(
                client,
                call,
                ErrorKind::UnknownFunction,
                "no such actor method in this build".into(),
            )),
            Some(m) => resolve_args(client, call).and_then(|mut args| {
                guarded(client, call, || (m.invoke)(&instance.state, &mut args))
            }),
        };
        send_result(client, call, outcome, started);
    }

    /// A call was cancelled: dropped unrun if it waits in a mailbox, else
    /// (running) `fleet::is_cancelled()` turns true inside it.
    pub(crate) fn cancel(&self, id: u64) {
        if super::cancel::mark(id) {
            return;
        }
        let instances: Vec<Arc<Instance>> = self.actors.lock().values().cloned().collect();
        for instance in instances {
            let call = {
                let mut m = instance.mailbox.lock();
                let at = m.calls.iter().position(|c| c.task_id == id);
                at.and_then(|i| m.calls.remove(i))
            };
            if let Some(call) = call {
                let e = task_error(
                    &self.client,
                    &call,
                    ErrorKind::Cancelled,
                    "cancelled".into(),
                );
                send_result(&self.client, &call, Err(e), Instant::now());
                return;
            }
        }
    }

    /// Drops the instance; calls already running finish.
    pub(crate) fn destroy(&self, id: u64) {
        match self.actors.lock().remove(&id) {
            Some(instance) => {
                instance.dead.store(true, Ordering::Release);
                instance.mailbox.lock().calls.clear();
            }
            None => {
                self.destroyed.lock().insert(id);
            }
        }
    }
}
