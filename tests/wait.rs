//! `wait`, `get_timeout` and `get_all_timeout`: the ready/pending split,
//! `num_returns`, input order, timeouts on tasks held back by a gate (a
//! file the test creates), and return as soon as enough refs are ready.

mod common;

use std::time::Duration;

use common::{bounded, cluster, Gate, GENEROUS};
use fleet::{remote, Error, ObjectRef};

/// Returns `x` once the gate file exists.
#[remote]
fn gated(gate: String, x: u64) -> u64 {
    common::wait_for_path(std::path::Path::new(&gate));
    x
}

#[remote]
fn square(x: u64) -> u64 {
    x * x
}

#[remote]
fn fail(x: u64) -> Result<u64, String> {
    Err(format!("no result for {x}"))
}

/// A short timeout that only bounds waits which must time out.
const SHORT: Duration = Duration::from_millis(300);

fn get<T: serde::de::DeserializeOwned>(r: &ObjectRef<T>) -> T {
    fleet::get_timeout(r, Some(GENEROUS)).expect("get")
}

#[test]
fn wait_splits_ready_and_pending_in_input_order() {
    let _c = cluster(4);
    let gate = Gate::new();
    let refs: Vec<ObjectRef<u64>> = vec![
        gated::remote(gate.path(), 0),
        square::remote(1),
        gated::remote(gate.path(), 2),
        square::remote(3),
        square::remote(4),
    ];
    for i in [1, 3, 4] {
        get(&refs[i]);
    }
    // Asks for all five; two are held by the gate, so it times out.
    let (ready, pending) = fleet::wait(&refs, 5, Some(SHORT)).expect("wait");
    assert_eq!(
        ready,
        vec![refs[1].clone(), refs[3].clone(), refs[4].clone()]
    );
    assert_eq!(pending, vec![refs[0].clone(), refs[2].clone()]);

    gate.open();
    let (ready, pending) = fleet::wait(&refs, 5, Some(GENEROUS)).expect("wait");
    assert_eq!(ready, refs);
    assert!(pending.is_empty(), "pending: {pending:?}");
    assert_eq!(
        fleet::get_all(&refs).expect("get_all"),
        vec![0, 1, 2, 9, 16]
    );
}

#[test]
fn wait_honours_num_returns() {
    let _c = cluster(2);
    let refs: Vec<ObjectRef<u64>> = (0..6u64).map(square::remote).collect();
    fleet::get_all_timeout(&refs, Some(GENEROUS)).expect("get_all");

    // All six are ready: `ready` holds the first two, in input order.
    let (ready, pending) = fleet::wait(&refs, 2, None).expect("wait");
    assert_eq!(ready, refs[..2].to_vec());
    assert_eq!(pending, refs[2..].to_vec());

    let (ready, pending) = fleet::wait(&refs, 0, None).expect("wait");
    assert!(ready.is_empty());
    assert_eq!(pending, refs);

    // More than there are: every ref is ready, none pending.
    let (ready, pending) = fleet::wait(&refs, 10, Some(GENEROUS)).expect("wait");
    assert_eq!(ready, refs);
    assert!(pending.is_empty());

    let empty: Vec<ObjectRef<u64>> = Vec::new();
    let (ready, pending) = fleet::wait(&empty, 1, None).expect("wait");
    assert!(ready.is_empty() && pending.is_empty());
}

#[test]
fn wait_returns_once_enough_are_ready_without_a_timeout() {
    let _c = cluster(4);
    let gate = Gate::new();
    let refs: Vec<ObjectRef<u64>> = vec![
        gated::remote(gate.path(), 10),
        square::remote(5),
        gated::remote(gate.path(), 11),
    ];
    // No timeout: it must come back once `square` is done, gate still shut.
    let r = refs.clone();
    let (ready, pending) = bounded("wait(num_returns = 1, no timeout)", GENEROUS, move || {
        fleet::wait(&r, 1, None)
    })
    .expect("wait");
    assert_eq!(ready, vec![refs[1].clone()]);
    assert_eq!(pending, vec![refs[0].clone(), refs[2].clone()]);
    gate.open();
    let r = refs.clone();
    let (ready, _) = bounded("wait(num_returns = 3, no timeout)", GENEROUS, move || {
        fleet::wait(&r, 3, None)
    })
    .expect("wait");
    assert_eq!(ready, refs);
}

#[test]
fn wait_times_out_on_a_slow_task() {
    let _c = cluster(2);
    let gate = Gate::new();
    let slow = gated::remote(gate.path(), 1);
    let (ready, pending) = fleet::wait(std::slice::from_ref(&slow), 1, Some(SHORT)).expect("wait");
    assert!(ready.is_empty(), "ready: {ready:?}");
    assert_eq!(pending, vec![slow.clone()]);
    gate.open();
    assert_eq!(get(&slow), 1);
}

#[test]
fn failed_tasks_count_as_ready() {
    let _c = cluster(2);
    let gate = Gate::new();
    let refs = vec![gated::remote(gate.path(), 1), fail::remote(2)];
    let (ready, pending) = fleet::wait(&refs, 1, Some(GENEROUS)).expect("wait");
    assert_eq!(ready, vec![refs[1].clone()]);
    assert_eq!(pending, vec![refs[0].clone()]);
    match fleet::get(&refs[1]) {
        Err(Error::Task { message, .. }) => assert_eq!(message, "no result for 2"),
        other => panic!("expected a task error, got {other:?}"),
    }
    gate.open();
}

#[test]
fn get_timeout_returns_timeout_on_a_sleeping_task() {
    let _c = cluster(2);
    let gate = Gate::new();
    let slow = gated::remote(gate.path(), 77);
    match fleet::get_timeout(&slow, Some(SHORT)) {
        Err(Error::Timeout(d)) => assert_eq!(d, SHORT),
        other => panic!("expected Error::Timeout, got {other:?}"),
    }
    let both = vec![square::remote(3), slow.clone()];
    match fleet::get_all_timeout(&both, Some(SHORT)) {
        Err(Error::Timeout(_)) => {}
        other => panic!("expected Error::Timeout from get_all_timeout, got {other:?}"),
    }
    // The task was not disturbed by the timeouts: it finishes once released.
    gate.open();
    assert_eq!(get(&slow), 77);
    assert_eq!(
        fleet::get_all_timeout(&both, Some(GENEROUS)).expect("get_all"),
        vec![9, 77]
    );
}
