//! Unit tests of the period of workers' summaries: it grows with the
//! number of workers, and workers hear of it only when it moves by half.

use super::{summary_every_ms, SUMMARY_EVERY_MS};
use crate::head::test_cluster;
use crate::proto::head_op::Op;

#[test]
fn the_period_grows_with_workers_within_its_bounds() {
    assert_eq!(summary_every_ms(0), SUMMARY_EVERY_MS.0);
    assert_eq!(summary_every_ms(2), SUMMARY_EVERY_MS.0);
    assert_eq!(summary_every_ms(16), 160);
    assert_eq!(summary_every_ms(100_000), SUMMARY_EVERY_MS.1);
}

/// Workers joining one by one: each worker is told of a new period only
/// when it has moved by half from the last one told; all are told then.
#[test]
fn workers_are_told_when_the_period_moves_by_half() {
    let mut st = test_cluster::one_node(64.0, None);
    let mut told = Vec::new();
    for w in 0..16u32 {
        test_cluster::connect_worker(&mut st, 10 + w, 100 + w as u64, "");
        let ops: Vec<_> = std::mem::take(&mut st.out.ops);
        let periods: Vec<(u32, u32)> = ops
            .into_iter()
            .filter_map(|(c, op)| match op.op {
                Some(Op::SummaryEveryMs(ms)) => Some((c, ms)),
                _ => None,
            })
            .collect();
        if let Some(&(_, ms)) = periods.first() {
            assert!(periods.iter().all(|&(_, m)| m == ms));
            assert_eq!(periods.len(), w as usize + 1, "every worker is told");
            told.push((w + 1, ms));
        }
    }
    // 20 ms up to 2 workers; told 30 at 3, 50 at 5, 80 at 8, 120 at 12.
    assert_eq!(told, vec![(3, 30), (5, 50), (8, 80), (12, 120)]);
    assert_eq!(st.summary_every_ms, 120);
}
