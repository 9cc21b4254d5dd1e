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
        let Some((binary, registry)) = self
            .jobs
            .get(&job)
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
