//! The object store: large values by shared memory, `Blob`s, spilling to
//! disk past the capacity, and refusing a value larger than the store.

use std::time::{Duration, Instant};

use fleet::{remote, Blob, Config};

const MIB: usize = 1 << 20;

fn cluster(store: u64) -> fleet::Cluster {
    fleet::init_with(Config {
        num_cpus: Some(2),
        object_store_bytes: Some(store),
        ..Default::default()
    })
    .expect("start a local cluster")
}

fn value(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
}

#[remote]
fn checksum(v: Vec<u8>) -> u64 {
    v.iter().map(|b| u64::from(*b)).sum()
}

#[test]
fn puts_past_capacity_spill_and_read_back_equal() {
    let cluster = cluster(16 * MIB as u64);
    let refs: Vec<_> = (0..12)
        .map(|i| fleet::put(value(i, 4 * MIB)).expect("put"))
        .collect();
    // Spilling runs in the background: wait until usage is back under the
    // capacity (an event, with a generous deadline).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let c = cluster.counts().expect("local cluster");
        if c.store_used <= c.store_capacity {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "store never got under capacity: {c:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for (i, r) in refs.iter().enumerate() {
        assert_eq!(fleet::get(r).expect("get"), value(i, 4 * MIB), "object {i}");
    }
    // A task on a worker reads a spilled object too.
    let sum = fleet::get(&checksum::remote(&refs[0])).expect("task on a spilled arg");
    assert_eq!(
        sum,
        value(0, 4 * MIB).iter().map(|b| u64::from(*b)).sum::<u64>()
    );
}

#[test]
fn a_put_larger_than_the_store_is_refused_clearly() {
    let _cluster = cluster(8 * MIB as u64);
    let err = fleet::put(vec![1u8; 9 * MIB]).expect_err("larger than the store");
    let msg = err.to_string();
    assert!(msg.contains("larger than the whole object store"), "{msg}");
    // The cluster keeps serving.
    let ok = fleet::put(vec![2u8; MIB]).expect("a put that fits");
    assert_eq!(fleet::get(&ok).expect("get").len(), MIB);
}

#[remote]
fn blob_sum(b: Blob) -> u64 {
    b.iter().map(|x| u64::from(*x)).sum()
}

#[remote]
fn make_blob(len: usize) -> Blob {
    Blob::from(value(3, len))
}

#[test]
fn blobs_round_trip_through_the_store_and_tasks() {
    let _cluster = cluster(1 << 30);
    let data = value(5, 32 * MIB);
    let r = fleet::put(Blob::from(data.clone())).expect("put a blob");
    let back = fleet::get(&r).expect("get a blob");
    assert_eq!(&back[..], &data[..]);
    let sum = fleet::get(&blob_sum::remote(&r)).expect("a task reads the blob");
    assert_eq!(sum, data.iter().map(|x| u64::from(*x)).sum::<u64>());
    let made = fleet::get(&make_blob::remote(8 * MIB)).expect("a task returns a blob");
    assert_eq!(&made[..], &value(3, 8 * MIB)[..]);
    // Small blobs travel inline.
    let small = fleet::get(&make_blob::remote(10)).expect("small blob");
    assert_eq!(&small[..], &value(3, 10)[..]);
}
