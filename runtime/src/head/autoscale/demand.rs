//! What a decision needs from the head's state: the CPUs ready tasks wait
//! for beyond the free ones, and every node with whether it is idle. Read
//! under the head's lock, quickly; the decision itself runs without it.

use super::super::Head;
use super::AutoscaleOptions;

/// One node as the head sees it, for a decision.
pub(super) struct NodeView {
    pub(super) name: String,
    /// The head's own node.
    pub(super) local: bool,
    pub(super) node_job: String,
    pub(super) alive: bool,
    pub(super) idle: bool,
    pub(super) cpus: f64,
}

/// What a decision needs from the head's state, taken under its lock.
pub(super) struct Demand {
    /// CPUs of ready tasks beyond the free CPUs of all nodes.
    pub(super) unmet_cpus: f64,
    pub(super) nodes: Vec<NodeView>,
}

/// Reads demand and nodes from the head's state, under its lock.
pub(super) fn demand(head: &Head, opts: &AutoscaleOptions) -> Demand {
    let st = head.state.lock();
    let busy: std::collections::HashSet<&str> = st
        .workers
        .values()
        .filter(|w| !w.queue.is_empty() || w.actors > 0)
        .map(|w| w.node.as_str())
        .collect();
    let nodes: Vec<NodeView> = st
        .nodes
        .iter()
        .map(|(name, n)| NodeView {
            name: name.clone(),
            local: *name == st.local_node,
            node_job: n.info.node_job.clone(),
            alive: n.alive,
            idle: n.available_cpus + 1e-9 >= n.total_cpus
                && n.store_used == 0
                && !busy.contains(name.as_str()),
            cpus: n.total_cpus,
        })
        .collect();
    let free: f64 = st
        .nodes
        .values()
        .filter(|n| n.alive)
        .map(|n| n.available_cpus.max(0.0))
        .sum();
    // Enough to size any request: past this, more nodes than allowed.
    let enough = free + f64::from(opts.max_nodes) * opts.node_cpus.unwrap_or(64.0).max(64.0);
    let mut waiting = 0.0;
    for id in st.ready.iter().chain(st.infeasible.iter()) {
        let Some(t) = st.tasks.get(id) else { continue };
        if t.missing > 0 || t.worker.is_some() || t.spec.actor_id != 0 {
            continue;
        }
        // Tasks pinned to one node wait for that node, not for a new one.
        if !t.spec.node().is_empty() {
            continue;
        }
        // Nor tasks that need a custom resource: the autoscaler's nodes
        // bring CPUs and memory only, so asking for more would not help.
        if !t.spec.resources().is_empty()
            && t.spec
                .resources()
                .iter()
                .any(|r| r.name != crate::resources::MEMORY && r.amount > 0.0)
        {
            continue;
        }
        waiting += t.spec.num_cpus.max(0.0);
        if waiting > enough {
            break;
        }
    }
    // leases: drivers' requests wait like tasks of their shape.
    waiting += st.lease_demand_cpus();
    Demand {
        unmet_cpus: (waiting - free).max(0.0),
        nodes,
    }
}
