//! A task's spec as the head keeps it while the task waits or runs.
//!
//! The head holds one per unfinished task (a million at once in `fleet
//! microbenchmark --scale`), so it is the protobuf `TaskSpec` made small:
//! no function name (the task record shares an interned one), lists as
//! exact-size boxed slices, and what few tasks set (a pinned or preferred
//! node, custom resources, refs nested in argument values) behind one
//! pointer. A worker still receives a
//! whole `TaskSpec` ([`Spec::to_proto`]), built when the task is sent.

use crate::proto;

/// The head's copy of a task's spec (see the module's doc).
#[derive(Clone, Debug)]
pub(super) struct Spec {
    /// Also the id of the task's return object.
    pub(super) task_id: u64,
    pub(super) args: Box<[proto::Arg]>,
    pub(super) num_cpus: f64,
    /// A call of a method of this actor (0: a plain task).
    pub(super) actor_id: u64,
    /// The task whose code submitted this one (0: a driver).
    pub(super) parent_task: u64,
    pub(super) max_retries: u32,
    pub(super) num_returns: u32,
    pub(super) generator_backpressure: u32,
    pub(super) retry_on_error: bool,
    pub(super) generator: bool,
    pub(super) spread: bool,
    /// Set on the task that creates an actor.
    pub(super) create: Option<Box<proto::ActorSpec>>,
    /// Pins, resources and nested refs; `None` for the common task that
    /// has none.
    rare: Option<Box<Rare>>,
}

/// The fields of a spec few tasks set.
#[derive(Clone, Debug, Default)]
struct Rare {
    node: String,
    node_soft: String,
    resources: Vec<proto::Resource>,
    /// Refs nested inside argument values; pinned while the task lives.
    nested_refs: Box<[u64]>,
    /// Attempts that failed before the head had the task (a lost lease).
    retries_used: u32,
}

impl Spec {
    /// Keeps everything of `spec` but its function name.
    pub(super) fn from_proto(spec: proto::TaskSpec) -> Self {
        let rare = (!spec.node.is_empty()
            || !spec.node_soft.is_empty()
            || !spec.resources.is_empty()
            || !spec.nested_refs.is_empty()
            || spec.retries_used > 0)
            .then(|| {
                Box::new(Rare {
                    node: spec.node,
                    node_soft: spec.node_soft,
                    resources: spec.resources,
                    nested_refs: spec.nested_refs.into_boxed_slice(),
                    retries_used: spec.retries_used,
                })
            });
        Spec {
            task_id: spec.task_id,
            args: spec.args.into_boxed_slice(),
            num_cpus: spec.num_cpus,
            actor_id: spec.actor_id,
            parent_task: spec.parent_task,
            max_retries: spec.max_retries,
            num_returns: spec.num_returns,
            generator_backpressure: spec.generator_backpressure,
            retry_on_error: spec.retry_on_error,
            generator: spec.generator,
            spread: spec.spread,
            create: spec.create,
            rare,
        }
    }

    /// The whole protobuf spec again, named `function`.
    pub(super) fn to_proto(&self, function: &str) -> proto::TaskSpec {
        let rare = self.rare.as_deref();
        proto::TaskSpec {
            task_id: self.task_id,
            function: function.to_string(),
            args: self.args.to_vec(),
            nested_refs: self.nested_refs().to_vec(),
            num_cpus: self.num_cpus,
            max_retries: self.max_retries,
            actor_id: self.actor_id,
            create: self.create.clone(),
            node: rare.map(|r| r.node.clone()).unwrap_or_default(),
            retry_on_error: self.retry_on_error,
            parent_task: self.parent_task,
            num_returns: self.num_returns,
            generator: self.generator,
            generator_backpressure: self.generator_backpressure,
            resources: rare.map(|r| r.resources.clone()).unwrap_or_default(),
            spread: self.spread,
            node_soft: rare.map(|r| r.node_soft.clone()).unwrap_or_default(),
            retries_used: rare.map_or(0, |r| r.retries_used),
            // Applied at submit (`State::submit`), never kept.
            subscribe: false,
        }
    }

    /// The node it must run on (empty: any).
    pub(super) fn node(&self) -> &str {
        self.rare.as_deref().map_or("", |r| &r.node)
    }

    /// The node it prefers while that node has room (empty: none).
    pub(super) fn node_soft(&self) -> &str {
        self.rare.as_deref().map_or("", |r| &r.node_soft)
    }

    /// Its node, preferred node and resources, as `effective_node` takes
    /// them.
    pub(super) fn pins(&self) -> (&str, &str, &[proto::Resource]) {
        (self.node(), self.node_soft(), self.resources())
    }

    /// Refs nested inside its argument values (empty for most tasks).
    pub(super) fn nested_refs(&self) -> &[u64] {
        self.rare.as_deref().map_or(&[], |r| &r.nested_refs)
    }

    /// What it reserves besides CPUs (empty for most tasks).
    pub(super) fn resources(&self) -> &[proto::Resource] {
        self.rare.as_deref().map_or(&[], |r| &r.resources)
    }

    /// Attempts that failed before the head had the task: a driver's
    /// leased worker died running it (0 for most tasks).
    pub(super) fn retries_used(&self) -> u32 {
        self.rare.as_deref().map_or(0, |r| r.retries_used)
    }

    /// With `retries_left` of its own retries left, the attempt the head
    /// starts now (from 1) and the most there can be, both counting the
    /// attempts made before the head had the task, as a user counts them.
    pub(super) fn attempt_of(&self, retries_left: u32) -> (u32, u32) {
        // Saturating: a bad client may send any count.
        let before = self.retries_used();
        let own = self.max_retries.saturating_sub(retries_left);
        let at = |n: u32| before.saturating_add(n).saturating_add(1);
        (at(own), at(self.max_retries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field survives the trip into the head's form and back, and a
    /// task without pins or resources keeps no `Rare` box.
    #[test]
    fn spec_round_trips() {
        let full = proto::TaskSpec {
            task_id: 7,
            function: "m::f".into(),
            args: vec![proto::Arg {
                kind: Some(proto::arg::Kind::ObjectRef(3)),
            }],
            nested_refs: vec![4, 5],
            num_cpus: 0.5,
            max_retries: 2,
            actor_id: 9,
            create: Some(Box::new(proto::ActorSpec {
                class: "C".into(),
                ..Default::default()
            })),
            node: "a:1".into(),
            retry_on_error: true,
            parent_task: 11,
            num_returns: 3,
            generator: true,
            generator_backpressure: 4,
            resources: vec![proto::Resource {
                name: "gpu".into(),
                amount: 1.0,
            }],
            spread: true,
            node_soft: "b:2".into(),
            retries_used: 1,
            subscribe: false,
        };
        let spec = Spec::from_proto(full.clone());
        assert_eq!(spec.node(), "a:1");
        assert_eq!(spec.node_soft(), "b:2");
        assert_eq!(spec.resources().len(), 1);
        assert_eq!(spec.to_proto("m::f"), full);
        let plain = Spec::from_proto(proto::TaskSpec {
            task_id: 1,
            ..Default::default()
        });
        assert!(plain.rare.is_none());
        assert_eq!(plain.node(), "");
        assert!(plain.resources().is_empty());
        assert!(plain.nested_refs().is_empty());
        let nested = Spec::from_proto(proto::TaskSpec {
            task_id: 2,
            nested_refs: vec![8],
            ..Default::default()
        });
        assert_eq!(nested.nested_refs(), &[8]);
        assert_eq!(nested.node(), "");
    }

    /// A task a lost lease's worker ran once, given to the head with one
    /// retry less: the head's retry is the third attempt of three.
    #[test]
    fn attempts_count_the_ones_made_before_the_head_had_the_task() {
        let retried = Spec::from_proto(proto::TaskSpec {
            task_id: 3,
            max_retries: 1,
            retries_used: 1,
            ..Default::default()
        });
        assert!(retried.rare.is_some());
        assert_eq!(retried.attempt_of(1), (2, 3), "the head's first attempt");
        assert_eq!(retried.attempt_of(0), (3, 3), "its retry");
        let own = Spec::from_proto(proto::TaskSpec {
            task_id: 4,
            max_retries: 2,
            ..Default::default()
        });
        assert_eq!(own.attempt_of(1), (2, 3));
        let bad = Spec::from_proto(proto::TaskSpec {
            max_retries: u32::MAX,
            retries_used: u32::MAX,
            ..Default::default()
        });
        assert_eq!(bad.attempt_of(0), (u32::MAX, u32::MAX));
    }
}
