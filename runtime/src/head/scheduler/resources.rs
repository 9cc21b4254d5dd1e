//! Resources beyond CPUs at the head: each node's custom resources and
//! memory (total and free), what tasks and actors reserve of them, `spread`
//! placement and `node_soft` preferences, and why a task no node can run
//! waits (for `fleet status`).
//!
//! A task that declares nothing has an empty request, and every check here
//! starts with `is_empty()`: the common path pays one branch.

use std::collections::BTreeMap;

use crate::proto;
use crate::resources::MEMORY;

use super::super::state::State;
use super::EPS;

/// One resource of a node.
struct Slot {
    name: String,
    total: f64,
    available: f64,
}

/// A node's resources besides CPUs.
#[derive(Default)]
pub(in crate::head) struct NodeResources {
    slots: Vec<Slot>,
}

impl NodeResources {
    /// What a joining node offers: its declared resources, and `memory`
    /// (its declared amount, else the machine's RAM it reported).
    pub(in crate::head) fn from_info(info: &proto::NodeInfo) -> Self {
        let mut slots: Vec<Slot> = info
            .resources
            .iter()
            .filter(|r| r.amount.is_finite() && r.amount >= 0.0)
            .map(|r| Slot {
                name: r.name.clone(),
                total: r.amount,
                available: r.amount,
            })
            .collect();
        if !slots.iter().any(|s| s.name == MEMORY) {
            let ram = info.memory_bytes as f64;
            slots.push(Slot {
                name: MEMORY.into(),
                total: ram,
                available: ram,
            });
        }
        NodeResources { slots }
    }

    fn slot(&self, name: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.name == name)
    }

    /// Whether every resource of `req` is free now.
    pub(in crate::head) fn fits_now(&self, req: &[proto::Resource]) -> bool {
        req.iter().all(|r| {
            r.amount <= 0.0
                || self
                    .slot(&r.name)
                    .is_some_and(|s| s.available + EPS >= r.amount)
        })
    }

    /// Whether the node has every resource of `req` at all.
    pub(in crate::head) fn fits_total(&self, req: &[proto::Resource]) -> bool {
        req.iter().all(|r| {
            r.amount <= 0.0
                || self
                    .slot(&r.name)
                    .is_some_and(|s| s.total + EPS >= r.amount)
        })
    }

    fn add(&mut self, req: &[proto::Resource], sign: f64) {
        for r in req {
            if let Some(s) = self.slots.iter_mut().find(|s| s.name == r.name) {
                s.available += sign * r.amount;
                // Never above the total (a release after a node rejoined
                // with a clean slate must not create capacity).
                s.available = s.available.min(s.total);
            }
        }
    }

    /// Used/total per resource for `fleet list nodes`: `gpu 1/2, memory
    /// 0.0/15.6GiB`.
    pub(in crate::head) fn summary(&self) -> String {
        let gib = |b: f64| b / f64::from(1u32 << 30);
        self.slots
            .iter()
            .map(|s| {
                let used = (s.total - s.available).max(0.0);
                if s.name == MEMORY {
                    format!("memory {:.1}/{:.1}GiB", gib(used), gib(s.total))
                } else {
                    format!("{} {used}/{}", s.name, s.total)
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// For `fleet status` and the dashboard.
    pub(in crate::head) fn usage(&self) -> Vec<proto::ResourceUse> {
        self.slots
            .iter()
            .map(|s| proto::ResourceUse {
                name: s.name.clone(),
                total: s.total,
                available: s.available,
            })
            .collect()
    }
}

/// The scheduler's placement state for resources (one field of `State`).
#[derive(Default)]
pub(in crate::head) struct Placement {
    /// The next place in the round-robin of `spread` tasks.
    spread_next: usize,
}

/// Why a task's request cannot be met by any amount of capacity (a
/// negative or not-a-number amount, an empty name), as the task's error;
/// the client checks this too, so it comes only from a broken client.
pub(in crate::head) fn bad_request(spec: &proto::TaskSpec) -> Option<proto::TaskError> {
    let bad = spec
        .resources
        .iter()
        .find(|r| r.name.is_empty() || !r.amount.is_finite() || r.amount < 0.0)?;
    let mut e = proto::TaskError {
        function: spec.function.clone(),
        message: format!(
            "resource `{}` = {} is not a non-negative number with a name; \
             give e.g. .resource(\"gpu\", 1.0)",
            bad.name, bad.amount
        ),
        ..Default::default()
    };
    e.set_kind(proto::ErrorKind::Task);
    Some(e)
}

impl State {
    /// Reserves `req` on `node` (a task starts, an actor is placed).
    pub(in crate::head) fn take_resources(&mut self, node: &str, req: &[proto::Resource]) {
        if req.is_empty() {
            return;
        }
        if let Some(n) = self.nodes.get_mut(node) {
            n.resources.add(req, -1.0);
        }
    }

    /// Gives back what [`take_resources`](Self::take_resources) reserved.
    pub(in crate::head) fn give_resources(&mut self, node: &str, req: &[proto::Resource]) {
        if req.is_empty() {
            return;
        }
        if let Some(n) = self.nodes.get_mut(node) {
            n.resources.add(req, 1.0);
        }
    }

    /// A `spread` task gets the next node of the round-robin as its soft
    /// preference: the alive nodes, by name, that could ever run it.
    pub(in crate::head) fn spread_task(&mut self, job: u32, spec: &mut proto::TaskSpec) {
        if !spec.spread || !spec.node.is_empty() {
            return;
        }
        let need = spec.num_cpus.max(0.0);
        let mut names: Vec<&String> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.alive && !n.excluded.contains(&job))
            .filter(|(_, n)| n.total_cpus + EPS >= need)
            .filter(|(_, n)| n.resources.fits_total(&spec.resources))
            .map(|(name, _)| name)
            .collect();
        if names.is_empty() {
            return;
        }
        names.sort_unstable();
        let at = self.placement.spread_next % names.len();
        spec.node_soft = names[at].clone();
        self.placement.spread_next = self.placement.spread_next.wrapping_add(1);
    }

    /// The node a task must go to in this pass: its pin, else its soft
    /// preference while that node is alive and has room for it now, else
    /// none (empty).
    pub(in crate::head) fn effective_node<'a>(
        &self,
        job: u32,
        need: f64,
        (node, node_soft, resources): (&'a str, &'a str, &[proto::Resource]),
    ) -> &'a str {
        if !node.is_empty() || node_soft.is_empty() {
            return node;
        }
        let room = self.nodes.get(node_soft).is_some_and(|n| {
            n.alive
                && !n.excluded.contains(&job)
                && n.available_cpus + EPS >= need
                && n.resources.fits_now(resources)
        });
        if room {
            node_soft
        } else {
            ""
        }
    }

    /// Why tasks aside wait, by resource: "N tasks need `gpu` = 1 …", for
    /// `fleet status`. Tasks whose CPUs or pin are the reason are counted
    /// by the caller.
    pub(in crate::head) fn missing_resources(&self) -> (usize, Vec<String>) {
        let alive: Vec<&super::super::state::Node> =
            self.nodes.values().filter(|n| n.alive).collect();
        // name -> (tasks, most asked, most any node has)
        let mut missing: BTreeMap<&str, (usize, f64, f64)> = BTreeMap::new();
        let mut counted = 0;
        for t in self.infeasible.iter().filter_map(|id| self.tasks.get(id)) {
            let mut any = false;
            for r in t.spec.resources().iter().filter(|r| r.amount > 0.0) {
                let most = alive
                    .iter()
                    .filter_map(|n| n.resources.slot(&r.name).map(|s| s.total))
                    .fold(0.0, f64::max);
                if most + EPS < r.amount {
                    let e = missing.entry(r.name.as_str()).or_insert((0, 0.0, most));
                    if !any {
                        e.0 += 1;
                    }
                    e.1 = e.1.max(r.amount);
                    any = true;
                }
            }
            if any {
                counted += 1;
            }
        }
        let lines = missing
            .into_iter()
            .map(|(name, (tasks, asked, most))| {
                let how = if name == MEMORY {
                    format!(
                        "memory = {} bytes; the most any node has is {} bytes",
                        asked as u64, most as u64
                    )
                } else if most > 0.0 {
                    format!("resource `{name}` = {asked}; the most any node has is {most}")
                } else {
                    format!("resource `{name}` = {asked}, which no node has")
                };
                format!(
                    "{tasks} tasks need {how}; they wait for a node with it \
                     (fleet start --resources {name}=N)"
                )
            })
            .collect();
        (counted, lines)
    }
}
