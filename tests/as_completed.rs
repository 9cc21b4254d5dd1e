//! `fleet::as_completed`: results in the order tasks finish, each with its
//! index, on a real local cluster; errors come through in place; 100,000
//! refs work.

mod common;

use std::path::Path;

use common::{cluster, Gate};
use fleet::{remote, Error, ObjectRef};

#[remote]
fn after(gate: String, x: u64) -> u64 {
    common::wait_for_path(Path::new(&gate));
    x
}

#[remote]
fn fails(x: u64) -> Result<u64, String> {
    Err(format!("no {x}"))
}

#[remote]
fn id(x: u64) -> u64 {
    x
}

#[test]
fn results_come_in_finishing_order_with_their_index() {
    let _c = cluster(3);
    let gates: Vec<Gate> = (0..3).map(|_| Gate::new()).collect();
    let refs: Vec<ObjectRef<u64>> = gates
        .iter()
        .enumerate()
        .map(|(i, g)| after::remote(g.path(), 10 + i as u64))
        .collect();
    let mut it = fleet::as_completed(&refs);
    // Open the gates in the order 2, 0, 1: that is the order of results.
    let mut seen = Vec::new();
    for g in [2usize, 0, 1] {
        gates[g].open();
        let (i, v) = it.next().expect("an item");
        seen.push((i, v.expect("value")));
    }
    assert_eq!(seen, vec![(2, 12), (0, 10), (1, 11)]);
    assert!(it.next().is_none());
}

#[test]
fn an_error_comes_in_its_place() {
    let _c = cluster(2);
    let gate = Gate::new();
    let refs = vec![after::remote(gate.path(), 1), fails::remote(2)];
    let mut it = fleet::as_completed(&refs);
    let (i, r) = it.next().expect("first");
    assert_eq!(i, 1);
    assert!(matches!(r, Err(Error::Task { .. })), "{r:?}");
    gate.open();
    let (i, r) = it.next().expect("second");
    assert_eq!((i, r.expect("value")), (0, 1));
    assert!(it.next().is_none());
}

#[test]
fn a_hundred_thousand_refs() {
    let _c = cluster(2);
    let n = 100_000u64;
    let refs: Vec<ObjectRef<u64>> = (0..n).map(id::remote).collect();
    let mut seen = vec![false; n as usize];
    let mut count = 0;
    for (i, v) in fleet::as_completed(&refs) {
        assert_eq!(v.expect("value"), i as u64);
        assert!(!seen[i], "index {i} twice");
        seen[i] = true;
        count += 1;
    }
    assert_eq!(count, n);
    // The same ref twice yields twice, once per position.
    let r = id::remote(5);
    let twice = vec![r.clone(), r];
    let mut idx: Vec<usize> = fleet::as_completed(&twice).map(|(i, _)| i).collect();
    idx.sort_unstable();
    assert_eq!(idx, vec![0, 1]);
}
