//! Leases: the head lends workers to drivers, which send them plain tasks
//! directly (`client/leases.rs`); the head is then on the path of a lease,
//! not of every task.
//!
//! A lease request waits like a task of its shape: it is placed on an idle
//! worker of the session's job on a node with the CPUs free (else a worker
//! is started there), and placing it sends `LeaseGrant` to the session
//! instead of `Execute` to the worker. The worker then counts as busy (its
//! queue holds [`LEASED`], its CPUs are reserved) until the driver gives it
//! back, the worker dies (`LeaseEnd` to the driver), or the session ends.
//!
//! Promises: an object a direct task made is unknown here until its driver
//! uses it through the head. If it is not finished yet, the driver sends
//! `promise(id)`: the object is pending, with a placeholder task so that
//! dependents wait and nothing frees it, until the same session's `Put`
//! completes it (or the session ends and it is lost).

mod promises;

use std::time::{Duration, Instant};

use crate::proto::{self, head_op::Op};

use super::super::state::{FastMap, State, Worker};
use super::EPS;

/// What stands in a leased worker's queue: no object (and so no task) has
/// id 0, and a queue that is not empty makes the worker busy everywhere
/// the scheduler, `fleet status` and the dashboard look.
pub(in crate::head) const LEASED: u64 = 0;
/// The function a leased worker shows in `fleet status`.
const LEASED_FUNCTION: &str = "(leased to a driver)";
/// At most one lease is revoked per this long (fairness, below).
const REVOKE_EVERY: Duration = Duration::from_millis(50);

/// The head's record of leases (one field of `Control`).
#[derive(Default)]
pub(in crate::head) struct Leases {
    requests: Vec<Request>,
    /// Leased workers, by their session.
    leased: FastMap<u32, Held>,
    /// Pending objects promised by a session (see the module's doc).
    promises: FastMap<u64, u32>,
    /// Leased workers whose session ended, by worker id, until their exit
    /// status says how they died: (lessee, pid, node).
    dying: FastMap<u64, (u32, u32, String)>,
    last_revoke: Option<Instant>,
    /// Leases revoked so far (`fleet_leases_revoked_total`).
    revoked: u64,
    /// A session that had no lease and got one revoked for it: the next
    /// free CPU goes to it, not back to the session that gave it up
    /// (which asks again at once, and was first in line).
    favored: Option<u32>,
    /// A dispatch pass is due to look at starved requests again (nothing
    /// else may wake the head while leased workers run direct tasks).
    check_armed: bool,
    /// Shapes refused to sessions because no node could run them: (session,
    /// CPUs). They hear when a node that can joins (`LeaseEnd.feasible`).
    refused: Vec<(u32, f64)>,
}

/// A session's wish for leased workers of one shape.
struct Request {
    session: u32,
    job: u32,
    cpus: f64,
    /// Leases wanted, counting those held.
    want: u32,
    held: u32,
    since: Instant,
    /// The session was told no more can be granted now (`LeaseFull`),
    /// since its want last grew or it was last granted one.
    told_full: bool,
}

/// A leased worker.
struct Held {
    session: u32,
    cpus: f64,
    revoked: bool,
}

impl State {
    /// `client` wants `r.want` workers of `r.num_cpus` leased in all.
    pub(in crate::head) fn lease_request(&mut self, client: u32, r: proto::LeaseRequest) {
        let cpus = if r.num_cpus.is_finite() {
            r.num_cpus.max(0.0)
        } else {
            return;
        };
        let job = self.job_of(client);
        let l = &mut self.control.leases;
        match l
            .requests
            .iter_mut()
            .find(|q| q.session == client && q.cpus.to_bits() == cpus.to_bits())
        {
            Some(q) => {
                if r.want > q.want.max(q.held) {
                    q.since = Instant::now();
                }
                if r.want > q.want {
                    q.told_full = false;
                }
                q.want = r.want;
            }
            None => l.requests.push(Request {
                session: client,
                job,
                cpus,
                want: r.want,
                held: 0,
                since: Instant::now(),
                told_full: false,
            }),
        }
        l.requests.retain(|q| q.want > 0 || q.held > 0);
    }

    /// `client` gives back its lease on the worker `worker_id`.
    pub(in crate::head) fn lease_return(&mut self, client: u32, worker_id: u64) {
        let found = self
            .control
            .leases
            .leased
            .iter()
            .find(|(wc, h)| {
                h.session == client
                    && self
                        .workers
                        .get(*wc)
                        .is_some_and(|w| w.worker_id == worker_id)
            })
            .map(|(wc, _)| *wc);
        if let Some(wc) = found {
            self.end_lease(wc);
        }
    }

    /// Forgets the lease on worker session `wc` and counts it off its
    /// request, dropping requests that neither want nor hold a lease.
    fn take_lease(&mut self, wc: u32) -> Option<Held> {
        let held = self.control.leases.leased.remove(&wc)?;
        let l = &mut self.control.leases;
        if let Some(q) = l
            .requests
            .iter_mut()
            .find(|q| q.session == held.session && q.cpus.to_bits() == held.cpus.to_bits())
        {
            q.held = q.held.saturating_sub(1);
            if q.held == 0 {
                // It waits with nothing from now (fairness, below).
                q.since = Instant::now();
            }
        }
        l.requests.retain(|q| q.want > 0 || q.held > 0);
        Some(held)
    }

    /// The lease on worker session `wc` is over: the worker is idle again.
    fn end_lease(&mut self, wc: u32) -> Option<Held> {
        let held = self.take_lease(wc)?;
        let no_function = self.no_function.clone();
        if let Some(w) = self.workers.get_mut(&wc) {
            w.queue.retain(|t| *t != LEASED);
            if w.queue.is_empty() {
                let (node, cpus, blocked) = (w.node_label.clone(), w.lease, w.blocked);
                w.lease = 0.0;
                w.function = no_function;
                w.function_id = 0;
                if !blocked {
                    self.give_cpus(&node, cpus);
                }
            }
        }
        Some(held)
    }

    /// A worker's session ended: its lease ends too, and its lessee hears
    /// why (the worker's CPUs are given back by `worker_lost`).
    pub(in crate::head) fn lease_worker_lost(&mut self, wc: u32, w: &Worker) {
        let Some(held) = self.take_lease(wc) else {
            return;
        };
        self.control
            .leases
            .dying
            .insert(w.worker_id, (held.session, w.pid, w.node.clone()));
        if let Some(info) = self.take_exit(w.worker_id) {
            self.lease_died(w.worker_id, Some(info));
        } else if self.nodes.get(&w.node).is_some_and(|n| !n.alive) {
            self.lease_died(w.worker_id, None);
        } else {
            // Its node reports the exit status in a moment (or never).
            self.out.later.push((
                super::deaths::STATUS_GRACE,
                super::Later::LeaseEnd(w.worker_id),
            ));
        }
    }

    /// Whether a leased worker's death waits for its exit status.
    pub(in crate::head) fn lease_dying(&self, worker_id: u64) -> bool {
        self.control.leases.dying.contains_key(&worker_id)
    }

    /// Tells a dead leased worker's driver how it died: `info` is its
    /// exit status and the memory monitor's reason (empty if not it).
    pub(in crate::head) fn lease_died(&mut self, worker_id: u64, info: Option<(String, String)>) {
        let Some((session, pid, node)) = self.control.leases.dying.remove(&worker_id) else {
            return;
        };
        let (status, oom) = info.unwrap_or_default();
        let reason = if !oom.is_empty() {
            format!("out of memory: the memory monitor killed worker pid {pid}: {oom}")
        } else {
            Self::death_text(pid, &node, &status)
        };
        self.out.push(
            session,
            Op::LeaseEnd(proto::LeaseEnd {
                worker_id,
                reason,
                ..Default::default()
            }),
        );
    }

    /// A session ended: its requests are withdrawn, its leases end, and
    /// objects it promised and never put are lost.
    pub(in crate::head) fn lease_session_closed(&mut self, client: u32) {
        let l = &mut self.control.leases;
        l.requests.retain(|q| q.session != client);
        l.refused.retain(|(s, _)| *s != client);
        let mine: Vec<u32> = l
            .leased
            .iter()
            .filter(|(_, h)| h.session == client)
            .map(|(wc, _)| *wc)
            .collect();
        for wc in mine {
            self.end_lease(wc);
        }
        let promised: Vec<u64> = self
            .control
            .leases
            .promises
            .iter()
            .filter(|(_, s)| **s == client)
            .map(|(id, _)| *id)
            .collect();
        for id in promised {
            self.control.leases.promises.remove(&id);
            let e = Self::lost(
                id,
                "the driver that made it left before its value was known",
            );
            self.complete(id, e, Vec::new());
        }
    }

    /// The cluster grew (a node joined): sessions refused a shape that a
    /// node can run now may ask for leases of it again. Without this, a
    /// driver that started before its first node (autoscaling from none)
    /// would send every task through the head for the rest of its session.
    pub(in crate::head) fn leases_feasible_again(&mut self) {
        if self.control.leases.refused.is_empty() {
            return;
        }
        let refused = std::mem::take(&mut self.control.leases.refused);
        for (session, cpus) in refused {
            if !self.feasible(cpus, "", &[]) {
                self.control.leases.refused.push((session, cpus));
                continue;
            }
            self.tell_shape(session, cpus, true);
        }
    }

    /// Grants what lease requests can get, starts workers for those that
    /// cannot, and revokes a lease when others wait (fairness). Called at
    /// the end of every dispatch pass; costs a look at the requests.
    pub(in crate::head) fn dispatch_leases(&mut self) {
        let l = &self.control.leases;
        if l.requests.iter().all(|q| q.held >= q.want) && l.leased.is_empty() {
            return;
        }
        let mut starved = None;
        // A session a lease was revoked for has the next free CPU: the
        // others wait until it holds one (or wants none).
        let favored = self.control.leases.favored.filter(|s| {
            self.control
                .leases
                .requests
                .iter()
                .any(|q| q.session == *s && q.held == 0 && q.want > 0)
        });
        self.control.leases.favored = favored;
        for qi in 0..self.control.leases.requests.len() {
            loop {
                let q = &self.control.leases.requests[qi];
                if q.held >= q.want || favored.is_some_and(|f| f != q.session) {
                    break;
                }
                let (session, job, cpus) = (q.session, q.job, q.cpus);
                if !self.feasible(cpus, "", &[]) {
                    // No node can run tasks of this shape now: they wait
                    // aside at the head (with a note in `fleet status`,
                    // and as autoscaler demand), so they go there.
                    let l = &mut self.control.leases;
                    l.requests[qi].want = 0;
                    if !l
                        .refused
                        .iter()
                        .any(|(s, c)| *s == session && c.to_bits() == cpus.to_bits())
                    {
                        l.refused.push((session, cpus));
                    }
                    self.tell_shape(session, cpus, false);
                    break;
                }
                match self.idle_leasable(job, cpus) {
                    Some(Ok(wc)) => self.grant(qi, wc),
                    Some(Err(())) => {
                        // The job's workers serve no direct stream (built
                        // without it, or it failed to start): the driver
                        // sends its tasks here instead.
                        self.control.leases.requests[qi].want = 0;
                        self.out.push(
                            session,
                            Op::LeaseEnd(proto::LeaseEnd {
                                worker_id: 0,
                                reason: "the job's workers serve no direct task stream".into(),
                                ..Default::default()
                            }),
                        );
                        break;
                    }
                    None => {
                        // Started only where CPUs are free beyond the
                        // workers already starting (as for a task).
                        match self.node_for_worker(job, cpus, "", &[]) {
                            Some(node) => self.request_worker(&node, job),
                            None => {
                                self.tell_full(qi);
                                let q = &self.control.leases.requests[qi];
                                // Another session waits with no lease at all.
                                let others = self
                                    .control
                                    .leases
                                    .leased
                                    .values()
                                    .any(|h| h.session != session);
                                if q.held == 0 && others {
                                    let waited = q.since.elapsed();
                                    if waited > REVOKE_EVERY {
                                        starved = starved.or(Some(session));
                                    } else {
                                        // Nothing else may wake the head
                                        // before it has waited long enough.
                                        self.check_leases_in(REVOKE_EVERY - waited);
                                    }
                                }
                            }
                        }
                        break;
                    }
                }
            }
        }
        self.control
            .leases
            .requests
            .retain(|q| q.want > 0 || q.held > 0);
        // Head-path tasks that found no place also wait on leased CPUs.
        let tasks_wait = !self.ready.is_empty();
        if starved.is_some() || tasks_wait {
            self.revoke_one(starved);
        }
    }

    /// Runs a dispatch pass after `after` (once, however often asked
    /// before it runs): a starved request or a rate-limited revocation
    /// needs one although no op may arrive meanwhile.
    fn check_leases_in(&mut self, after: Duration) {
        if !self.control.leases.check_armed {
            self.control.leases.check_armed = true;
            self.out
                .later
                .push((after + Duration::from_millis(1), super::Later::LeaseCheck));
        }
    }

    /// The pass asked for by [`State::check_leases_in`] is due (the
    /// dispatch pass itself follows).
    pub(in crate::head) fn lease_check_due(&mut self) {
        self.control.leases.check_armed = false;
    }

    /// An idle worker of `job` on a node with `cpus` free: `Ok` with a
    /// direct service, `Err` if only workers without one are idle.
    /// Workers without a direct service (`Worker::direct_address`, from
    /// their Hello) are never leased.
    fn idle_leasable(&self, job: u32, cpus: f64) -> Option<Result<u32, ()>> {
        self.workers
            .iter()
            .filter(|(_, w)| w.job == job && w.queue.is_empty() && !w.blocked)
            .filter(|(_, w)| {
                self.nodes
                    .get(&w.node)
                    .is_some_and(|n| n.alive && n.available_cpus + EPS >= cpus)
            })
            .min_by_key(|(c, w)| (w.direct_address.is_empty(), **c))
            .map(|(c, w)| match w.direct_address.is_empty() {
                false => Ok(*c),
                true => Err(()),
            })
    }

    fn grant(&mut self, qi: usize, wc: u32) {
        let q = &mut self.control.leases.requests[qi];
        q.held += 1;
        q.told_full = false;
        let (session, cpus) = (q.session, q.cpus);
        let Some(address) = self.workers.get(&wc).map(|w| w.direct_address.clone()) else {
            return;
        };
        let leased_fn = self.intern(LEASED_FUNCTION).1;
        self.control.busy_seq += 1;
        let seq = self.control.busy_seq;
        let Some(w) = self.workers.get_mut(&wc) else {
            return;
        };
        w.queue.push_back(LEASED);
        w.lease = cpus;
        w.function = leased_fn;
        w.function_id = 0;
        w.busy_since = seq;
        let (node, worker_id) = (w.node_label.clone(), w.worker_id);
        self.take_cpus(&node, cpus);
        self.control.leases.leased.insert(
            wc,
            Held {
                session,
                cpus,
                revoked: false,
            },
        );
        self.out.push(
            session,
            Op::LeaseGrant(proto::LeaseGrant {
                worker_id,
                address,
                num_cpus: cpus,
                node: node.to_string(),
            }),
        );
    }

    /// Tells `session` whether some node can run tasks of `cpus` CPUs now
    /// (`LeaseEnd` with `one_shape`): if not, its tasks of that shape go
    /// through the head; once one can, they take leases again.
    fn tell_shape(&mut self, session: u32, cpus: f64, feasible: bool) {
        let reason = match feasible {
            true => format!("a node with {cpus} CPUs joined"),
            false => format!("no node has {cpus} CPUs"),
        };
        self.out.push(
            session,
            Op::LeaseEnd(proto::LeaseEnd {
                worker_id: 0,
                reason,
                one_shape: true,
                num_cpus: cpus,
                feasible,
            }),
        );
    }

    /// Request `qi` wants more leases than the cluster has CPUs free for:
    /// its session hears it once (per growth of its want, or grant), and
    /// queues deeper on the leases it holds.
    fn tell_full(&mut self, qi: usize) {
        let q = &mut self.control.leases.requests[qi];
        if !q.told_full {
            q.told_full = true;
            let (session, num_cpus) = (q.session, q.cpus);
            self.out
                .push(session, Op::LeaseFull(proto::LeaseFull { num_cpus }));
        }
    }

    /// Fairness: when work waits and no CPU is free, the session holding
    /// the most leases gives one back (it finishes what it sent first), at
    /// most one per [`REVOKE_EVERY`]. `starved`: the session without a
    /// lease it is revoked for, which gets the next free CPU.
    fn revoke_one(&mut self, starved: Option<u32>) {
        let l = &self.control.leases;
        if l.leased.is_empty() {
            return;
        }
        if let Some(t) = l.last_revoke {
            let since = t.elapsed();
            if since < REVOKE_EVERY {
                self.check_leases_in(REVOKE_EVERY - since);
                return;
            }
        }
        if self
            .nodes
            .values()
            .any(|n| n.alive && n.available_cpus > EPS)
        {
            return;
        }
        let mut per: FastMap<u32, usize> = FastMap::default();
        for h in l.leased.values().filter(|h| !h.revoked) {
            *per.entry(h.session).or_default() += 1;
        }
        let Some((&session, _)) = per.iter().max_by_key(|(s, n)| (**n, **s)) else {
            return;
        };
        let Some((&wc, _)) = l
            .leased
            .iter()
            .filter(|(_, h)| h.session == session && !h.revoked)
            .max_by_key(|(wc, _)| **wc)
        else {
            return;
        };
        let Some(worker_id) = self.workers.get(&wc).map(|w| w.worker_id) else {
            return;
        };
        let l = &mut self.control.leases;
        l.last_revoke = Some(Instant::now());
        l.revoked += 1;
        if starved.is_some() {
            l.favored = starved;
        }
        if let Some(h) = l.leased.get_mut(&wc) {
            h.revoked = true;
        }
        self.out.push(
            session,
            Op::LeaseEnd(proto::LeaseEnd {
                worker_id,
                reason: "revoked".into(),
                ..Default::default()
            }),
        );
    }

    /// Leases held, by job (for `fleet status` and the dashboard).
    pub(in crate::head) fn leases_by_job(&self) -> Vec<(u32, usize)> {
        let mut per: FastMap<u32, usize> = FastMap::default();
        for wc in self.control.leases.leased.keys() {
            if let Some(w) = self.workers.get(wc) {
                *per.entry(w.job).or_default() += 1;
            }
        }
        let mut v: Vec<(u32, usize)> = per.into_iter().collect();
        v.sort_unstable();
        v
    }

    /// CPUs of leases asked for and not granted yet (autoscaler demand).
    pub(in crate::head) fn lease_demand_cpus(&self) -> f64 {
        self.control
            .leases
            .requests
            .iter()
            .map(|q| f64::from(q.want.saturating_sub(q.held)) * q.cpus)
            .sum()
    }

    /// Leases asked for and not granted yet, over all requests.
    pub(in crate::head) fn lease_requests_waiting(&self) -> u32 {
        self.control
            .leases
            .requests
            .iter()
            .map(|q| q.want.saturating_sub(q.held))
            .sum()
    }

    /// Leases the head has revoked since it started.
    pub(in crate::head) fn leases_revoked(&self) -> u64 {
        self.control.leases.revoked
    }

    /// Workers leased now.
    pub(in crate::head) fn leased_count(&self) -> usize {
        self.control.leases.leased.len()
    }

    /// Whether worker session `wc` is leased to a driver.
    pub(in crate::head) fn is_leased(&self, wc: u32) -> bool {
        self.control.leases.leased.contains_key(&wc)
    }
}

#[cfg(test)]
mod tests;
