//! `#[remote(num_returns = n)]`: a tuple result becomes one ref per
//! element, each stored and freed on its own; an error fails all of them.

mod common;

use common::{cluster, wait_until, GENEROUS};
use fleet::{remote, Error, ObjectRef};

#[remote(num_returns = 2)]
fn split(v: Vec<u64>) -> (Vec<u64>, Vec<u64>) {
    let (a, b) = v.split_at(v.len() / 2);
    (a.to_vec(), b.to_vec())
}

#[remote(num_returns = 3)]
fn three(x: u64) -> Result<(u64, String, Vec<u8>), String> {
    if x == 0 {
        return Err("zero has no parts".into());
    }
    Ok((x, x.to_string(), vec![x as u8; 2 << 20]))
}

#[remote]
fn total(v: Vec<u64>) -> u64 {
    v.iter().sum()
}

#[test]
fn one_ref_per_element_usable_as_arguments() {
    let _c = cluster(2);
    let (left, right): (ObjectRef<Vec<u64>>, ObjectRef<Vec<u64>>) =
        split::remote((1..=10).collect::<Vec<u64>>());
    assert_eq!(fleet::get(&left).expect("left"), vec![1, 2, 3, 4, 5]);
    assert_eq!(fleet::get(&right).expect("right"), vec![6, 7, 8, 9, 10]);
    // The second ref as an argument, before and after it is finished.
    let (l2, r2) = split::remote(vec![5u64; 8]);
    let s = total::remote(&r2);
    assert_eq!(fleet::get(&s).expect("sum of the right half"), 20);
    assert_eq!(fleet::get(&total::remote(&l2)).expect("left sum"), 20);
    let (n, text, bytes) = three::remote(7);
    assert_eq!(fleet::get(&n).expect("n"), 7);
    assert_eq!(fleet::get(&text).expect("text"), "7");
    assert_eq!(fleet::get(&bytes).expect("bytes").len(), 2 << 20);
}

#[test]
fn an_error_fails_every_result_and_their_dependents() {
    let _c = cluster(2);
    let (n, text, bytes) = three::remote(0);
    for e in [
        fleet::get(&n).map(|_| ()),
        fleet::get(&text).map(|_| ()),
        fleet::get(&bytes).map(|_| ()),
    ] {
        match e {
            Err(Error::Task { message, .. }) => assert_eq!(message, "zero has no parts"),
            other => panic!("expected the task's error, got {other:?}"),
        }
    }
    let (_, _, bytes) = three::remote(0);
    let dependent = split::remote(bytes_len_vec(&bytes));
    assert!(matches!(fleet::get(&dependent.1), Err(Error::Task { .. })));
}

#[remote]
fn lens(b: Vec<u8>) -> Vec<u64> {
    vec![b.len() as u64]
}

fn bytes_len_vec(b: &ObjectRef<Vec<u8>>) -> ObjectRef<Vec<u64>> {
    lens::remote(b)
}

#[test]
fn each_result_is_freed_on_its_own() {
    let c = cluster(2);
    let objects = || c.counts().expect("a local cluster").objects;
    let used = || c.counts().expect("a local cluster").store_used;
    let before = used();
    let (a, b, big) = three::remote(9);
    assert_eq!(fleet::get(&big).expect("big").len(), 2 << 20);
    assert_eq!(fleet::get(&a).expect("a"), 9);
    let stored = used();
    assert!(
        stored >= before + (2 << 20),
        "the large part is in the store"
    );
    let with_all = objects();
    drop(a);
    wait_until("the first result to be freed", GENEROUS, || {
        (objects() == with_all - 1).then_some(())
    });
    assert_eq!(used(), stored, "the large part is still stored");
    assert_eq!(fleet::get(&b).expect("b is still there"), "9");
    drop(big);
    wait_until("the large result to leave the store", GENEROUS, || {
        (used() == before).then_some(())
    });
    assert_eq!(fleet::get(&b).expect("b is still there"), "9");
    drop(b);
    wait_until("every result to be freed", GENEROUS, || {
        (objects() == with_all - 3).then_some(())
    });
}
