//! `/metrics` on the head's dashboard port, in the Prometheus text format
//! (OpenMetrics), encoded by the `prometheus-client` crate.
//!
//! The head aggregates: it already hears every node's CPUs, workers and
//! store bytes over the node's session, so one scrape target covers the
//! cluster, only the head's port must be reachable from Prometheus, and a
//! node that joins or dies needs no change to the scrape configuration.
//!
//! A scrape takes a [`Sample`] of the state under the head's lock (plain
//! numbers and clones of the histograms, which share their counts), then
//! encodes it after the lock is released.
//!
//! To add a metric: push a [`Family`] in [`State::metrics_sample`] (a gauge
//! or a counter, with its labels); [`Sample::encode`] writes every family.
//! Names get the `fleet_` prefix; a counter's samples get `_total`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::actors::Life;
use super::state::{ObjState, State};
use crate::proto::object_value::Payload;

/// The content type of [`render`]'s text.
pub(crate) const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of [`classic`]'s text.
pub(crate) const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Buckets of task run time, seconds: 100 µs to about 100 s, ×4 apart.
pub(crate) fn run_time_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 4.0, 11))
}

/// Buckets of scheduling delay, seconds: 10 µs to about 10 s, ×4 apart.
pub(crate) fn delay_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00001, 4.0, 11))
}

/// Label pairs of one sample.
pub(crate) type Labels = Vec<(&'static str, String)>;

/// One gauge or counter with its samples.
#[derive(Debug)]
pub(crate) struct Family {
    pub(crate) name: &'static str,
    pub(crate) help: &'static str,
    pub(crate) unit: Option<Unit>,
    pub(crate) counter: bool,
    pub(crate) samples: Vec<(Labels, f64)>,
}

impl Family {
    /// A gauge: a value that goes up and down.
    pub(crate) fn gauge(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            unit: None,
            counter: false,
            samples: Vec::new(),
        }
    }

    /// A counter: a total that only grows while the head runs.
    pub(crate) fn counter(name: &'static str, help: &'static str) -> Family {
        Family {
            counter: true,
            ..Family::gauge(name, help)
        }
    }

    /// Its values are in `unit` (the name must end with it).
    pub(crate) fn unit(mut self, unit: Unit) -> Family {
        self.unit = Some(unit);
        self
    }

    /// Adds one sample.
    pub(crate) fn with(mut self, labels: Labels, value: f64) -> Family {
        self.samples.push((labels, value));
        self
    }
}

/// What one scrape shows, taken under the head's lock.
#[derive(Debug, Default)]
pub(crate) struct Sample {
    families: Vec<Family>,
    /// Run time per function.
    run_seconds: Vec<(String, Histogram)>,
    delay: Option<Histogram>,
}

impl Sample {
    /// Adds a family the head's state does not hold (the autoscaler's).
    pub(crate) fn push(&mut self, family: Family) {
        self.families.push(family);
    }
}

impl Collector for Sample {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.families {
            let kind = if f.counter {
                MetricType::Counter
            } else {
                MetricType::Gauge
            };
            let mut metric = encoder.encode_descriptor(f.name, f.help, f.unit.as_ref(), kind)?;
            match f.samples.as_slice() {
                [(labels, value)] if labels.is_empty() => put(f.counter, metric, *value)?,
                samples => {
                    for (labels, value) in samples {
                        put(f.counter, metric.encode_family(labels)?, *value)?;
                    }
                }
            }
        }
        if !self.run_seconds.is_empty() {
            let mut metric = encoder.encode_descriptor(
                "task_run",
                "Run time of finished tasks and actor calls, as their worker measured it",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for (function, h) in &self.run_seconds {
                h.encode(metric.encode_family(&vec![("function", function.clone())])?)?;
            }
        }
        if let Some(h) = &self.delay {
            let metric = encoder.encode_descriptor(
                "task_scheduling_delay",
                "Time from a task being ready (its arguments exist) to its being sent to a worker",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            h.encode(metric)?;
        }
        Ok(())
    }
}

fn put(counter: bool, sample: MetricEncoder<'_>, value: f64) -> Result<(), std::fmt::Error> {
    if counter {
        ConstCounter::new(value).encode(sample)
    } else {
        ConstGauge::new(value).encode(sample)
    }
}

/// The metrics text of one scrape.
pub(crate) fn render(sample: Sample) -> String {
    let mut registry = Registry::with_prefix("fleet");
    registry.register_collector(Box::new(sample));
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
        text.clear();
        let _ = writeln!(text, "# EOF");
    }
    text
}

/// Jobs of `fleet job submit` by state (the head keeps them outside its
/// state, in `head/jobs.rs`).
pub(crate) fn submitted_jobs(jobs: &[crate::proto::JobInfo]) -> Family {
    use crate::node::jobs::{FAILED, PENDING, RUNNING, STOPPED, SUCCEEDED};
    let mut f = Family::gauge(
        "submitted_jobs",
        "Jobs submitted with `fleet job submit`, by state",
    );
    for state in [PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED] {
        let n = jobs.iter().filter(|j| j.state == state).count();
        f.samples
            .push(one(vec![("state", state.to_lowercase())], n as f64));
    }
    f
}

/// The classic Prometheus text format (0.0.4) of OpenMetrics text, for
/// clients that do not ask for OpenMetrics (curl, `promtool check
/// metrics`): a counter's HELP and TYPE name its `_total` samples, and
/// there are no `# UNIT` and `# EOF` lines. Prometheus itself asks for
/// OpenMetrics and gets [`render`]'s text unchanged.
pub(crate) fn classic(open: &str) -> String {
    let counters: HashSet<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len() + 64);
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let (name, rest) = line.strip_prefix(p)?.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {rest}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

fn one(labels: Labels, value: f64) -> (Labels, f64) {
    (labels, value)
}

#[derive(Default)]
struct PerNode {
    objects: u64,
    spilled_objects: u64,
    spilled_bytes: u64,
}

impl State {
    /// The numbers `/metrics` shows, taken under the lock.
    pub(crate) fn metrics_sample(&self) -> Sample {
        let (mut waiting, mut ready, mut running) = (0u64, 0u64, 0u64);
        for t in self.tasks.values() {
            if t.worker.is_some() {
                running += 1;
            } else if t.missing > 0 {
                waiting += 1;
            } else {
                ready += 1;
            }
        }
        // leases: a leased worker runs its driver's direct tasks, which the
        // head hears of once done: one running each (as the dashboard).
        running += self.leased_count() as u64;
        let mut families = vec![Family::gauge(
            "tasks",
            "Unfinished tasks and actor calls by state: waiting for arguments, ready, running \
             (a worker leased to a driver counts as one running task)",
        )
        .with(vec![("state", "waiting".into())], waiting as f64)
        .with(vec![("state", "ready".into())], ready as f64)
        .with(vec![("state", "running".into())], running as f64)];

        let mut functions: Vec<_> = self.finished.iter().collect();
        functions.sort_by(|a, b| a.0.cmp(b.0));
        let mut finished = Family::counter(
            "tasks_finished",
            "Tasks and actor calls that returned a value, by function",
        );
        let mut failed = Family::counter(
            "tasks_failed",
            "Tasks and actor calls that ended in an error, by function",
        );
        for (name, c) in &functions {
            finished
                .samples
                .push(one(vec![("function", (*name).clone())], c.finished as f64));
            failed
                .samples
                .push(one(vec![("function", (*name).clone())], c.failed as f64));
        }
        families.push(finished);
        families.push(failed);

        let mut per_node: HashMap<&str, PerNode> = HashMap::new();
        for o in self.objects.values() {
            if let ObjState::Done(Payload::Stored(l)) = &o.state {
                let n = per_node.entry(l.node.as_str()).or_default();
                n.objects += 1;
                if o.spilled {
                    n.spilled_objects += 1;
                    n.spilled_bytes += l.size;
                }
            }
        }
        let mut nodes: Vec<_> = self.nodes.iter().collect();
        nodes.sort_by(|a, b| a.0.cmp(b.0));
        let node_families: [(&'static str, &'static str, Option<Unit>); 9] = [
            ("node_alive", "1 while the node's agent is connected", None),
            ("node_workers", "Connected worker processes", None),
            ("node_cpus", "CPUs the node offers", None),
            (
                "node_cpus_used",
                "CPUs held by running tasks and actors",
                None,
            ),
            (
                "node_store",
                "Bytes of objects in the node's shared-memory store (not spilled)",
                Some(Unit::Bytes),
            ),
            (
                "node_store_capacity",
                "Bytes the node's store holds before it spills",
                Some(Unit::Bytes),
            ),
            (
                "node_objects",
                "Objects stored on the node (in shared memory or spilled)",
                None,
            ),
            (
                "node_spilled",
                "Bytes of the node's objects spilled to disk",
                Some(Unit::Bytes),
            ),
            ("node_spilled_objects", "Objects spilled to disk", None),
        ];
        let mut by_node: Vec<Family> = node_families
            .into_iter()
            .map(|(name, help, unit)| {
                let f = Family::gauge(name, help);
                match unit {
                    Some(u) => f.unit(u),
                    None => f,
                }
            })
            .collect();
        for (name, n) in nodes {
            let extra = per_node.remove(name.as_str()).unwrap_or_default();
            let values = [
                if n.alive { 1.0 } else { 0.0 },
                n.workers as f64,
                n.total_cpus,
                (n.total_cpus - n.available_cpus).max(0.0),
                n.store_used as f64,
                n.info.store_capacity as f64,
                extra.objects as f64,
                extra.spilled_bytes as f64,
                extra.spilled_objects as f64,
            ];
            for (f, v) in by_node.iter_mut().zip(values) {
                f.samples.push(one(vec![("node", name.clone())], v));
            }
        }
        families.extend(by_node);

        let mut actors: BTreeMap<&'static str, u64> = ["pending", "creating", "alive", "dead"]
            .map(|s| (s, 0))
            .into();
        for a in self.actors.values() {
            let state = match a.life {
                Life::Pending => "pending",
                Life::Creating => "creating",
                Life::Alive => "alive",
                Life::Dead(_) => "dead",
            };
            *actors.entry(state).or_default() += 1;
        }
        let mut actor_family = Family::gauge(
            "actors",
            "Actors by state (dead ones stay while handles to them exist)",
        );
        for (state, n) in actors {
            actor_family
                .samples
                .push(one(vec![("state", state.into())], n as f64));
        }
        families.push(actor_family);
        families.push(
            Family::gauge("jobs", "Jobs whose driver is connected").with(
                Vec::new(),
                self.jobs.values().filter(|j| j.driver.is_some()).count() as f64,
            ),
        );
        // leases: workers lent to drivers for direct tasks, per job.
        let mut leases = Family::gauge(
            "leases",
            "Workers leased to drivers for direct tasks, by job (busy while leased)",
        );
        for (job, n) in self.leases_by_job() {
            leases
                .samples
                .push(one(vec![("job", job.to_string())], n as f64));
        }
        families.push(leases);
        families.push(
            Family::counter(
                "leases_revoked",
                "Leases the head took back because other work waited for their CPUs",
            )
            .with(Vec::new(), self.leases_revoked() as f64),
        );
        families.push(
            Family::gauge(
                "objects",
                "Objects the head tracks (pending, inline or stored)",
            )
            .with(Vec::new(), self.objects.len() as f64),
        );
        Sample {
            families,
            run_seconds: functions
                .into_iter()
                .map(|(name, c)| (name.clone(), c.run_seconds.clone()))
                .collect(),
            delay: Some(self.scheduling_delay.clone()),
        }
    }
}
