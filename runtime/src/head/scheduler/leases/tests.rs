//! Unit tests of lease placement: `LeaseFull` tells a driver once per
//! growth of its want that no more workers can be leased now.

use crate::head::state::State;
use crate::head::test_cluster;
use crate::proto::{self, head_op::Op};

const DRIVER: u32 = 1;

/// A head with one node of `cpus` CPUs, a job with a driver session, and
/// one idle worker per CPU serving direct streams.
fn cluster(cpus: u32) -> State {
    let mut st = test_cluster::one_node(cpus as f64, Some(DRIVER));
    for w in 0..cpus {
        let address = format!("127.0.0.1:{}", 5000 + w);
        test_cluster::connect_worker(&mut st, 10 + w, 100 + w as u64, &address);
    }
    st
}

/// The driver's ops sent since the last call: (grants, `LeaseFull`s).
fn drain(st: &mut State) -> (usize, usize) {
    let ops: Vec<_> = std::mem::take(&mut st.out.ops);
    let mine = ops.into_iter().filter(|(c, _)| *c == DRIVER);
    mine.fold((0, 0), |(g, f), (_, op)| match op.op {
        Some(Op::LeaseGrant(_)) => (g + 1, f),
        Some(Op::LeaseFull(l)) => {
            assert_eq!(l.num_cpus, 1.0);
            (g, f + 1)
        }
        _ => (g, f),
    })
}

fn want(st: &mut State, want: u32) {
    st.lease_request(
        DRIVER,
        proto::LeaseRequest {
            num_cpus: 1.0,
            want,
        },
    );
    st.dispatch_leases();
}

#[test]
fn a_request_the_cluster_cannot_meet_is_told_once_per_growth() {
    let mut st = cluster(2);
    want(&mut st, 1);
    assert_eq!(
        drain(&mut st),
        (1, 0),
        "one lease, more CPUs free: not full"
    );
    want(&mut st, 5);
    assert_eq!(drain(&mut st), (1, 1), "the second CPU, then full");
    // Another pass with nothing changed says nothing again.
    st.dispatch_leases();
    assert_eq!(drain(&mut st), (0, 0));
    // The want grows again: the driver, which cleared its note when it
    // asked, hears it again.
    want(&mut st, 9);
    assert_eq!(drain(&mut st), (0, 1));
}

#[test]
fn a_request_the_cluster_meets_is_never_told_full() {
    let mut st = cluster(2);
    want(&mut st, 2);
    assert_eq!(drain(&mut st), (2, 0));
    want(&mut st, 1);
    st.dispatch_leases();
    assert_eq!(drain(&mut st), (0, 0));
}
