//! The task tests: one driver submitting tasks (sync and in batches of
//! 1000), and several actors each submitting 10,000 tasks.

use super::objects::check_small;
use super::timeit::Timer;
use super::{small_value, SMALL};
use fleet::ObjectRef;

/// Ray's `Actor` (`num_cpus=0`), as far as the task tests use it.
#[fleet::remote]
struct TaskSubmitter;

#[fleet::remote]
impl TaskSubmitter {
    /// An actor with no state.
    fn new() -> Self {
        TaskSubmitter
    }

    /// Submits `n` small tasks from inside the actor and waits for all.
    fn small_value_batch(&self, n: u64) -> fleet::Result<()> {
        let refs: Vec<ObjectRef<Vec<u8>>> = (0..n).map(|_| small_value::remote()).collect();
        fleet::get_all(&refs).map(drop)
    }
}

/// Runs the task tests that `t` selects, in Ray's order.
pub(super) fn run(t: &mut Timer) -> anyhow::Result<()> {
    t.timeit("single client tasks sync", 1.0, || {
        let v = fleet::get(&small_value::remote())?;
        anyhow::ensure!(v == SMALL, "unexpected value {v:?}");
        Ok(())
    })?;
    t.timeit("single client tasks async", 1000.0, || {
        let refs: Vec<ObjectRef<Vec<u8>>> = (0..1000).map(|_| small_value::remote()).collect();
        check_small(fleet::get_all(&refs)?)
    })?;
    if t.wants("multi client tasks async") {
        let (n, m) = (10_000u64, 4);
        let actors = (0..m)
            .map(|_| TaskSubmitter::remote())
            .collect::<fleet::Result<Vec<_>>>()?;
        t.timeit("multi client tasks async", (n * m as u64) as f64, || {
            let refs: Vec<ObjectRef<()>> = actors.iter().map(|a| a.small_value_batch(n)).collect();
            fleet::get_all(&refs)?;
            Ok(())
        })?;
    }
    Ok(())
}
