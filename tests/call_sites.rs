//! Call sites as a newcomer writes them: references stand for values
//! (`&i64` for `i64`, `&str` for `String`, `&[T]` for `Vec<T>`), `f::map`
//! submits one call per input in input order (as `Pool.map` and
//! `executor.map`), and timeouts take a plain `Duration`.

// Borrowed arguments are what these tests are about.
#![allow(clippy::needless_borrows_for_generic_args)]

mod common;

use std::time::Duration;

use common::{cluster, Gate, GENEROUS};
use fleet::{remote, Error, ObjectRef};

#[remote]
fn add(x: i64, y: i64) -> i64 {
    x + y
}

#[remote]
fn shout(s: String) -> String {
    s.to_uppercase()
}

#[remote]
fn total(v: Vec<u64>) -> u64 {
    v.iter().sum()
}

#[remote]
fn square(x: u64) -> u64 {
    x * x
}

#[remote]
fn concat(a: String, b: String, times: usize) -> String {
    format!("{a}{b}").repeat(times)
}

/// Returns `x` once the gate file exists.
#[remote]
fn gated(gate: String, x: u64) -> u64 {
    common::wait_for_path(std::path::Path::new(&gate));
    x
}

fn get<T: serde::de::DeserializeOwned>(r: &ObjectRef<T>) -> T {
    fleet::get_timeout(r, GENEROUS).expect("get")
}

fn get_all<T: serde::de::DeserializeOwned>(r: &[ObjectRef<T>]) -> Vec<T> {
    fleet::get_all_timeout(r, GENEROUS).expect("get_all")
}

#[test]
fn references_stand_for_the_values_they_point_to() {
    let _c = cluster(2);
    let a = [1i64, 2, 3];
    let b = [10i64, 20, 30];
    // As written in the issue: the zip yields `(&i64, &i64)`.
    let refs: Vec<_> = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| add::remote(x, y))
        .collect();
    assert_eq!(get_all(&refs), vec![11, 22, 33]);

    let name = String::from("ada");
    assert_eq!(get(&shout::remote(&name)), "ADA");
    assert_eq!(get(&shout::remote("bob")), "BOB");
    assert_eq!(get(&shout::remote(name)), "ADA");

    let v = vec![1u64, 2, 3, 4];
    assert_eq!(get(&total::remote(&v)), 10);
    assert_eq!(get(&total::remote(&v[1..])), 9);

    // A borrowed value, a ref and a plain value in one call.
    let x = 5i64;
    let r = add::remote(&x, 1);
    assert_eq!(get(&add::remote(&r, &x)), 11);
}

#[test]
fn map_submits_one_call_per_input_in_input_order() {
    let _c = cluster(2);
    let squares = square::map(0..50u64);
    assert_eq!(squares.len(), 50);
    assert_eq!(
        get_all(&squares),
        (0..50u64).map(|x| x * x).collect::<Vec<_>>()
    );

    // Several parameters: an input is a tuple, as `executor.map(f, a, b)`.
    let a = [1i64, 2, 3, 4, 5];
    let b = [6i64, 7, 8, 9, 10];
    assert_eq!(get_all(&add::map(a.iter().zip(&b))), vec![7, 9, 11, 13, 15]);
    let words = [("a", "b", 1usize), ("c", "d", 2)];
    assert_eq!(get_all(&concat::map(words)), vec!["ab", "cdcd"]);

    // Inputs may be refs: each call waits for its own.
    let firsts = square::map([2u64, 3]);
    let seconds = square::map(&firsts);
    assert_eq!(get_all(&seconds), vec![16, 81]);

    // With options, and with nothing to do.
    let opts = square::options().num_cpus(0.5).max_retries(0);
    assert_eq!(get_all(&opts.map(vec![7u64, 8])), vec![49, 64]);
    assert!(square::map(Vec::<u64>::new()).is_empty());
}

#[test]
fn timeouts_take_a_plain_duration() {
    let _c = cluster(2);
    let gate = Gate::new();
    let r = gated::remote(gate.path(), 3);
    let short = Duration::from_millis(200);
    assert!(matches!(
        fleet::get_timeout(&r, short),
        Err(Error::Timeout(d)) if d == short
    ));
    assert!(matches!(
        fleet::get_all_timeout(std::slice::from_ref(&r), short),
        Err(Error::Timeout(_))
    ));
    let (ready, pending) = fleet::wait(std::slice::from_ref(&r), 1, short).expect("wait");
    assert!(ready.is_empty());
    assert_eq!(pending, vec![r.clone()]);
    gate.open();
    assert_eq!(fleet::get_timeout(&r, GENEROUS).expect("get"), 3);
    // The `Option` forms still compile and mean the same.
    assert_eq!(fleet::get_timeout(&r, Some(GENEROUS)).expect("get"), 3);
    assert_eq!(fleet::get_timeout(&r, None).expect("get"), 3);
}
