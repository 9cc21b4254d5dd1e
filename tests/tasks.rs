//! Remote functions end to end on a real local cluster: many tasks,
//! `ObjectRef` arguments and chains, refs nested inside arguments and
//! results, and tasks that submit tasks and wait for them (recursion deeper
//! than the number of CPUs must not deadlock).

mod common;

use common::{cluster, GENEROUS};
use fleet::{remote, ObjectRef};

#[remote]
fn square(x: u64) -> u64 {
    x * x
}

#[remote]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

/// Sums values it only receives as refs nested inside its argument.
#[remote]
fn sum_refs(refs: Vec<ObjectRef<u64>>) -> Result<u64, fleet::Error> {
    Ok(fleet::get_all(&refs)?.iter().sum())
}

/// Returns refs to tasks it submitted itself and never waited for.
#[remote]
fn make_squares(n: u64) -> Vec<ObjectRef<u64>> {
    (0..n).map(square::remote).collect()
}

/// Returns a ref to a value it put into the store.
#[remote]
fn put_inside(v: u64) -> Result<ObjectRef<u64>, fleet::Error> {
    fleet::put(v)
}

#[remote]
fn fib(n: u64) -> Result<u64, fleet::Error> {
    if n < 2 {
        return Ok(n);
    }
    let a = fib::remote(n - 1);
    let b = fib::remote(n - 2);
    Ok(fleet::get(&a)? + fleet::get(&b)?)
}

/// A chain of nested waits: `n + (n-1) + ... + 0`, one blocked task per level.
#[remote]
fn countdown(n: u64) -> Result<u64, fleet::Error> {
    if n == 0 {
        return Ok(0);
    }
    Ok(n + fleet::get(&countdown::remote(n - 1))?)
}

/// Sum of `lo..hi`, split in halves down to small leaves.
#[remote]
fn tree_sum(lo: u64, hi: u64) -> Result<u64, fleet::Error> {
    if hi - lo <= 8 {
        return Ok((lo..hi).sum());
    }
    let mid = lo + (hi - lo) / 2;
    let parts = [tree_sum::remote(lo, mid), tree_sum::remote(mid, hi)];
    Ok(fleet::get_all(&parts)?.iter().sum())
}

fn get<T: serde::de::DeserializeOwned>(r: &ObjectRef<T>) -> T {
    fleet::get_timeout(r, Some(GENEROUS)).expect("get")
}

#[test]
fn ten_thousand_tasks_give_correct_results() {
    let _c = cluster(2);
    let refs: Vec<ObjectRef<u64>> = (0..10_000u64).map(square::remote).collect();
    let values = fleet::get_all_timeout(&refs, Some(GENEROUS)).expect("get_all");
    assert_eq!(values.len(), 10_000);
    for (i, v) in values.iter().enumerate() {
        assert_eq!(*v, (i as u64) * (i as u64), "result of task {i}");
    }
    // Each ref still reads its own value afterwards.
    assert_eq!(get(&refs[9_999]), 9_999 * 9_999);
    assert_eq!(get(&refs[0]), 0);
}

#[test]
fn object_ref_arguments_and_chains() {
    let _c = cluster(2);
    let a = square::remote(3);
    let b = square::remote(&a); // a ref to an earlier task's value
    let c = add::remote(&a, &b);
    let d = add::remote(&a, &a); // the same ref twice
    let e = add::remote(a.clone(), 1); // an owned ref mixed with a value
    assert_eq!(get(&c), 9 + 81);
    assert_eq!(get(&b), 81);
    assert_eq!(get(&d), 18);
    assert_eq!(get(&e), 10);

    // A chain of 200 tasks, each submitted before its input exists.
    let start: ObjectRef<u64> = fleet::put(1000u64).expect("put");
    let mut r = add::remote(&start, 0);
    for _ in 0..200 {
        r = add::remote(r, 1);
    }
    assert_eq!(get(&r), 1200);

    // Ref arguments that are puts.
    let p = fleet::put(12u64).expect("put");
    assert_eq!(get(&square::remote(&p)), 144);
}

#[test]
fn refs_nested_inside_an_argument() {
    let _c = cluster(2);
    let refs: Vec<ObjectRef<u64>> = (1..=20u64).map(square::remote).collect();
    let total = sum_refs::remote(refs.clone());
    assert_eq!(get(&total), (1..=20u64).map(|x| x * x).sum::<u64>());

    // The driver drops its own handles right after submitting: the refs
    // inside the argument alone must keep the objects alive.
    let refs: Vec<ObjectRef<u64>> = (1..=30u64).map(square::remote).collect();
    let total = sum_refs::remote(refs);
    assert_eq!(get(&total), (1..=30u64).map(|x| x * x).sum::<u64>());
}

#[test]
fn task_returns_refs_it_created() {
    let _c = cluster(2);
    let outer: ObjectRef<Vec<ObjectRef<u64>>> = make_squares::remote(25);
    let inner = get(&outer);
    drop(outer);
    assert_eq!(inner.len(), 25);
    let values = fleet::get_all_timeout(&inner, Some(GENEROUS)).expect("get_all");
    assert_eq!(values, (0..25u64).map(|x| x * x).collect::<Vec<_>>());

    // Refs received from a task can be passed on to another task.
    let total = sum_refs::remote(inner.clone());
    assert_eq!(get(&total), (0..25u64).map(|x| x * x).sum::<u64>());
    let sq = square::remote(&inner[7]);
    assert_eq!(get(&sq), 49 * 49);
}

#[test]
fn task_returns_a_ref_to_its_own_put() {
    let _c = cluster(2);
    // The task's own handle is dropped when it returns; the ref inside the
    // result must keep the object alive.
    let r: ObjectRef<ObjectRef<u64>> = put_inside::remote(4242);
    let inner = get(&r);
    drop(r);
    assert_eq!(get(&inner), 4242);
}

#[test]
fn recursive_tasks_deeper_than_the_cpus_do_not_deadlock() {
    let _c = cluster(2);
    // 16 levels of tasks each blocked in `get` on the next, on 2 CPUs.
    assert_eq!(get(&countdown::remote(16)), (0..=16u64).sum::<u64>());
    // A branching recursion, both children in flight at once: depth 7,
    // 33 tasks blocked at the widest point.
    assert_eq!(get(&fib::remote(8)), 21);
    // A balanced tree of nested waits.
    assert_eq!(get(&tree_sum::remote(0, 128)), (0..128u64).sum::<u64>());
}

#[test]
fn options_change_one_call() {
    let _c = cluster(2);
    // Fractional, zero and whole-CPU reservations all run.
    let a = square::options().num_cpus(0.5).remote(5);
    let b = square::options().num_cpus(0.0).remote(6);
    let c = square::options().num_cpus(2.0).max_retries(0).remote(7);
    assert_eq!(get(&a), 25);
    assert_eq!(get(&b), 36);
    assert_eq!(get(&c), 49);
}

#[test]
fn finished_refs_moved_into_an_argument_stay_alive() {
    let _c = common::cluster(2);
    // Finished before they are passed: the only handles are the ones moved
    // into the argument, dropped as soon as it is encoded.
    let refs: Vec<ObjectRef<u64>> = (0..200).map(square::remote).collect();
    fleet::wait(&refs, refs.len(), Some(common::GENEROUS)).expect("finished");
    let total = get(&sum_refs::remote(refs));
    assert_eq!(total, (0..200u64).map(|x| x * x).sum::<u64>());
}
