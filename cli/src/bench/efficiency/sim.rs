//! How large a cluster one head can keep busy, from measured costs.
//!
//! A discrete-event model of the path every task takes today: the head is
//! one server that spends half of its per-task CPU dispatching a task and
//! half taking its result; `cores` workers run tasks of fixed length back
//! to back from a queue the head keeps `depth` deep per core; the driver
//! has queued every task at the start. The cluster is efficient while the
//! head keeps up, and falls behind once `cores / task_us` tasks per
//! microsecond exceed what the head can handle (`1 / head_us`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// The outcome of one simulated run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SimResult {
    /// Time until the last result was taken, in microseconds.
    pub makespan_us: f64,
    /// The ideal time (`tasks × task_us / cores`) over the makespan.
    pub efficiency: f64,
    /// Share of the makespan the head was busy.
    pub head_busy: f64,
}

/// Simulates `tasks` tasks of `task_us` on `cores` cores with a head that
/// spends `head_us` per task and keeps up to `depth` tasks per core.
pub fn simulate(cores: usize, task_us: f64, head_us: f64, tasks: usize, depth: usize) -> SimResult {
    let cores = cores.max(1);
    let depth = depth.max(1);
    let half = head_us / 2.0;
    // Per core: when its last queued task ends, and tasks held.
    let mut end = vec![0.0f64; cores];
    let mut held = vec![0usize; cores];
    // Cores with a free slot, fewest held first: (held, core).
    let mut open: BinaryHeap<Reverse<(usize, usize)>> =
        (0..cores).map(|c| Reverse((0, c))).collect();
    // Results not yet taken: (finish time as integer ns, core).
    let mut done: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let (mut t, mut busy) = (0.0f64, 0.0f64);
    let (mut sent, mut taken) = (0usize, 0usize);
    while taken < tasks {
        let next_result = done.peek().map(|Reverse((at, _))| *at as f64 / 1e3);
        if let Some(at) = next_result.filter(|at| *at <= t) {
            let _ = at;
            let Some(Reverse((_, c))) = done.pop() else {
                break;
            };
            t += half;
            busy += half;
            taken += 1;
            held[c] -= 1;
            if held[c] + 1 == depth {
                open.push(Reverse((held[c], c)));
            }
            continue;
        }
        if sent < tasks {
            if let Some(Reverse((_, c))) = open.pop() {
                t += half;
                busy += half;
                let start = end[c].max(t);
                end[c] = start + task_us;
                done.push(Reverse(((end[c] * 1e3) as u64, c)));
                held[c] += 1;
                sent += 1;
                if held[c] < depth {
                    open.push(Reverse((held[c], c)));
                }
                continue;
            }
        }
        match next_result {
            Some(at) => t = t.max(at),
            None => break,
        }
    }
    let ideal = tasks as f64 * task_us / cores as f64;
    SimResult {
        makespan_us: t,
        efficiency: if t > 0.0 { (ideal / t).min(1.0) } else { 1.0 },
        head_busy: if t > 0.0 { busy / t } else { 0.0 },
    }
}

/// The number of cores at which one head, spending `head_us` per task,
/// stops keeping tasks of `task_us` fed: the smallest core count whose
/// simulated efficiency falls below 90%. Bounded by 1,048,576 cores.
pub fn saturation_cores(head_us: f64, task_us: f64) -> f64 {
    if head_us <= 0.0 {
        return f64::INFINITY;
    }
    let efficient = |cores: usize| {
        // Enough tasks that every core runs many of them.
        let tasks = (cores * 40).max(10_000);
        simulate(cores, task_us, head_us, tasks, 2).efficiency >= 0.9
    };
    let (mut lo, mut hi) = (1usize, 2usize);
    while efficient(hi) {
        lo = hi;
        hi *= 2;
        if hi > 1 << 20 {
            return hi as f64;
        }
    }
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if efficient(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fast_head_keeps_every_core_busy() {
        let r = simulate(8, 1_000.0, 1.0, 8_000, 2);
        assert!(r.efficiency > 0.97, "{r:?}");
    }

    #[test]
    fn a_slow_head_is_the_limit() {
        // 100 cores of 1 ms tasks need 100k tasks/s; a head at 20 µs a
        // task gives 50k/s, so the run takes about twice the ideal.
        let r = simulate(100, 1_000.0, 20.0, 20_000, 2);
        assert!((0.4..0.6).contains(&r.efficiency), "{r:?}");
        assert!(r.head_busy > 0.95, "{r:?}");
    }

    #[test]
    fn saturation_is_near_task_time_over_head_time() {
        // The head is busy all the time at task_us / head_us = 100 cores;
        // past that, cores idle in proportion, so efficiency crosses 90%
        // near 100 / 0.9 = 111 cores.
        let c = saturation_cores(10.0, 1_000.0);
        assert!((95.0..=120.0).contains(&c), "{c}");
    }
}
