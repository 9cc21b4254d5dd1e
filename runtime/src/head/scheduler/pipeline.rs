//! How many tasks of one function a worker may hold at once: the one it
//! runs and the ones queued behind it. The rule itself is shared with a
//! driver's leased workers (`crate::pipelining`); its tests live here.
//!
//! A worker that finishes its task with nothing queued waits a round trip
//! (its result to the head, the next task back) before it computes again;
//! on a busy machine that round trip costs tens to hundreds of
//! microseconds. So every task short enough that a queued one is unlikely
//! to be stranded gets at least one queued behind it, and short tasks get
//! about `PIPELINE_MICROS` of queued work (a worker sends their results
//! once half of that is done, see `worker/hold.rs`, so the other half
//! covers the round trip). Only long tasks go one per
//! worker: for them a round trip is noise, while a task queued behind a
//! long one could wait that long although another worker became free.

pub(super) use crate::pipelining::depth;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipelining::{LONG_MICROS, MAX_PIPELINE};

    #[test]
    fn an_unknown_function_goes_one_per_worker() {
        assert_eq!(depth(None), 1);
    }

    #[test]
    fn a_task_of_about_a_millisecond_has_one_queued_behind_it() {
        // It used to be 2000/m rounded down: a 1,001 µs average gave 1,
        // and the worker waited a round trip after every task.
        assert!(depth(Some(1_001.0)) >= 2);
        assert_eq!(depth(Some(1_000.0)), 4);
        assert_eq!(depth(Some(10_500.0)), 2);
        assert_eq!(depth(Some(LONG_MICROS)), 2);
    }

    #[test]
    fn long_tasks_go_one_per_worker() {
        assert_eq!(depth(Some(LONG_MICROS + 1.0)), 1);
        assert_eq!(depth(Some(5e6)), 1);
    }

    /// One node of 1 CPU with one worker, a driver that submits 500 tasks
    /// of a function known to run 100 µs: dispatch fills the worker's
    /// pipeline to its depth and no further, leaving the rest queued.
    #[test]
    fn dispatch_fills_a_pipeline_and_keeps_the_rest_in_order() {
        use crate::proto;
        let mut st = crate::head::test_cluster::one_node(1.0, Some(1));
        crate::head::test_cluster::connect_worker(&mut st, 2, 1, "");
        let (f, _) = st.intern("m::f");
        st.run_micros.insert(f, 100.0);
        let ids: Vec<u64> = (1..=500u64).map(|i| (1u64 << 40) | i).collect();
        for id in &ids {
            st.submit(
                1,
                proto::TaskSpec {
                    task_id: *id,
                    function: "m::f".into(),
                    num_cpus: 1.0,
                    ..Default::default()
                },
            );
        }
        st.dispatch();
        let want = depth(Some(100.0));
        let sent: Vec<u64> = st.workers[&2].queue.iter().copied().collect();
        assert_eq!(sent, ids[..want]);
        let mut queued: Vec<u64> = st.ready.iter().copied().collect();
        queued.sort_unstable();
        assert_eq!(queued, ids[want..], "the rest stays queued");
        // Another pass with every worker full changes nothing.
        st.dispatch();
        assert_eq!(st.workers[&2].queue.len(), want);
        assert_eq!(st.ready.len(), ids.len() - want);
    }

    #[test]
    fn a_deep_pipeline_holds_about_24_milliseconds_of_short_tasks() {
        use crate::pipelining::{deep_depth, MAX_DEEP_PIPELINE};
        assert_eq!(deep_depth(None), 1);
        assert_eq!(deep_depth(Some(1_000.0)), 25);
        assert_eq!(deep_depth(Some(100.0)), 241);
        assert_eq!(deep_depth(Some(1.0)), MAX_DEEP_PIPELINE);
        // Never shallower than the head's, and long tasks still go alone.
        assert_eq!(deep_depth(Some(LONG_MICROS)), 3);
        assert!(deep_depth(Some(LONG_MICROS)) >= depth(Some(LONG_MICROS)));
        assert_eq!(deep_depth(Some(LONG_MICROS + 1.0)), 1);
    }

    #[test]
    fn short_tasks_hold_about_three_milliseconds_of_work() {
        assert_eq!(depth(Some(100.0)), 31);
        assert_eq!(depth(Some(10.0)), MAX_PIPELINE);
        assert_eq!(depth(Some(0.0)), MAX_PIPELINE);
    }
}
