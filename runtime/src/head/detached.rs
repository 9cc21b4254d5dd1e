//! Detached actors (`options().name(..).detached()`, Ray's
//! `lifetime="detached"`): an actor that outlives the driver that made it.
//!
//! A task runs only on a worker of its own job, and a job's workers are
//! told to exit when its driver leaves. So a detached actor gets a job of
//! its own, with no driver: the creating job's executable (kept by the head
//! by content hash) and registry. Its worker belongs to that job alone and
//! stays until the actor is killed; then the job ends and the worker exits.

use super::state::State;
use crate::proto;

/// Ids of detached actors' jobs start here, far above session ids (the ids
/// of drivers' jobs).
const FIRST_DETACHED_JOB: u32 = 0x8000_0000;

impl State {
    /// The job a submitted task belongs to: the submitting session's, or
    /// for the creation of a detached actor, a new job of its own.
    pub(super) fn job_for(&mut self, client: u32, spec: &proto::TaskSpec) -> u32 {
        let job = self.job_of(client);
        let Some(opts) = spec.create.as_ref().filter(|o| o.detached) else {
            return job;
        };
        // Unnamed, or a name already taken: the creation fails in
        // `register_actor`; no job is made for it.
        if opts.name.is_empty() || self.names.contains_key(&opts.name) {
            return job;
        }
        // Only a job's driver or one of its workers (a task) creates one;
        // a node agent's session has no executable to lend it.
        let Some((binary, registry)) = self
            .jobs
            .get(&job)
            .filter(|j| j.driver == Some(client) || self.workers.contains_key(&client))
            .map(|j| (j.binary.clone(), j.registry.clone()))
        else {
            return job;
        };
        self.next_detached_job = self.next_detached_job.max(FIRST_DETACHED_JOB);
        let own = self.next_detached_job;
        self.next_detached_job = own.wrapping_add(1);
        self.add_job(own, None, binary, registry, 0);
        self.detached.insert(spec.task_id, own);
        if let Some(o) = self.objects.get_mut(&spec.task_id) {
            o.job = own;
        }
        tracing::info!(actor = %opts.name, job = own, "a detached actor gets a job of its own");
        own
    }

    /// The workers of `job` keep failing to start: if it is a detached
    /// actor's, the actor fails (no driver is left to end the job, so it
    /// would otherwise wait for good).
    pub(super) fn detached_cannot_start(&mut self, job: u32) {
        let Some(actor) = self
            .detached
            .iter()
            .find(|(_, j)| **j == job)
            .map(|(a, _)| *a)
        else {
            return;
        };
        let mut e = proto::TaskError {
            function: format!("{actor:016x}"),
            message: "its worker process could not be started (see the head's log)".into(),
            ..Default::default()
        };
        e.set_kind(proto::ErrorKind::ActorDied);
        if self.tasks.contains_key(&actor) {
            // Its creation fails, which marks it dead and ends its job.
            self.complete(
                actor,
                proto::object_value::Payload::Error(Box::new(e)),
                Vec::new(),
            );
        } else {
            self.actor_dead(actor, e);
        }
    }

    /// A detached actor died for good (killed, or out of restarts): its job
    /// ends and its worker is told to exit.
    pub(super) fn detached_dead(&mut self, actor: u64) {
        let Some(job) = self.detached.remove(&actor) else {
            return;
        };
        for w in self.job_ended(job) {
            self.out.reap.push(w);
        }
    }
}
