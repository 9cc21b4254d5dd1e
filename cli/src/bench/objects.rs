//! The object store tests: small gets and puts, large puts, an object
//! holding 10k refs, and `wait` on 1k refs.

use super::timeit::Timer;
use super::{small_value, SMALL};
use fleet::{Blob, ObjectRef};

/// Ray's large array: `np.zeros(100 * 1024 * 1024, dtype=np.int64)`.
const LARGE_BYTES: usize = 100 * 1024 * 1024 * 8;
/// Ray's per-task array in "multi client put gigabytes": 10M int64s.
const MEDIUM_BYTES: usize = 10 * 1024 * 1024 * 8;

/// Ray's `do_put_small`: 100 small puts from inside a task.
#[fleet::remote]
fn do_put_small() {
    for _ in 0..100 {
        let _ = fleet::put(0i64);
    }
}

/// Ray's `do_put`: ten puts of a fresh 80 MB array from inside a task.
#[fleet::remote]
fn do_put() -> fleet::Result<()> {
    for _ in 0..10 {
        drop(fleet::put(Blob::from(vec![0u8; MEDIUM_BYTES]))?);
    }
    Ok(())
}

/// Ray's `create_object_containing_ref`: 10k puts, returned as a list.
#[fleet::remote]
fn create_object_containing_ref() -> fleet::Result<Vec<ObjectRef<i64>>> {
    (0..10_000).map(|_| fleet::put(1i64)).collect()
}

/// Runs the object store tests that `t` selects, in Ray's order, with
/// "single client tasks and get batch" (a task test) in its place among them.
pub(super) fn run(t: &mut Timer) -> anyhow::Result<()> {
    let value = fleet::put(0i64)?;
    t.timeit("single client get calls (Plasma Store)", 1.0, || {
        fleet::get(&value)?;
        Ok(())
    })?;
    t.timeit("single client put calls (Plasma Store)", 1.0, || {
        fleet::put(0i64)?;
        Ok(())
    })?;
    t.timeit("multi client put calls (Plasma Store)", 1000.0, || {
        let refs: Vec<ObjectRef<()>> = (0..10).map(|_| do_put_small::remote()).collect();
        fleet::get_all(&refs)?;
        Ok(())
    })?;
    if t.wants("single client put gigabytes") {
        let arr = Blob::from(vec![0u8; LARGE_BYTES]);
        t.timeit("single client put gigabytes", 8.0 * 0.1, || {
            fleet::put(arr.clone())?;
            Ok(())
        })?;
    }
    t.timeit("single client tasks and get batch", 1.0, || {
        let refs: Vec<ObjectRef<Vec<u8>>> = (0..1000).map(|_| small_value::remote()).collect();
        check_small(fleet::get_all(&refs)?)
    })?;
    t.timeit("multi client put gigabytes", 10.0 * 8.0 * 0.1, || {
        let refs: Vec<ObjectRef<()>> = (0..10).map(|_| do_put::remote()).collect();
        fleet::get_all(&refs)?;
        Ok(())
    })?;
    if t.wants("single client get object containing 10k refs") {
        let obj = create_object_containing_ref::remote();
        t.timeit("single client get object containing 10k refs", 1.0, || {
            let refs = fleet::get(&obj)?;
            anyhow::ensure!(refs.len() == 10_000, "got {} refs", refs.len());
            Ok(())
        })?;
    }
    t.timeit("single client wait 1k refs", 1.0, || {
        let mut not_ready: Vec<ObjectRef<Vec<u8>>> =
            (0..1000).map(|_| small_value::remote()).collect();
        for _ in 0..1000 {
            let (_ready, rest) = fleet::wait(&not_ready, 1, None)?;
            not_ready = rest;
        }
        anyhow::ensure!(not_ready.is_empty(), "{} refs never ready", not_ready.len());
        Ok(())
    })?;
    Ok(())
}

/// Checks that every result is Ray's `b"ok"`.
pub(super) fn check_small(values: Vec<Vec<u8>>) -> anyhow::Result<()> {
    anyhow::ensure!(
        values.iter().all(|v| v.as_slice() == SMALL),
        "a task returned something other than {SMALL:?}"
    );
    Ok(())
}
