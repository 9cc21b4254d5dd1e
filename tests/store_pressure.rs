//! The object store under pressure and with disk trouble:
//!
//! - puts far past the store's capacity, made while tasks read stored
//!   objects, spill to disk and every value reads back equal (in the
//!   driver and in tasks); freeing them empties both folders;
//! - a spill folder that becomes unwritable (replaced by a regular file):
//!   puts past the capacity still succeed (the values stay in memory),
//!   nothing read back is wrong, the head keeps serving, and spilling
//!   resumes once the folder is back;
//! - a spill folder that cannot be created (under /proc): starting the
//!   cluster fails with an error naming it.
//!
//! `FLEET_SPILL_DIR` is set by each test for its own process (the test
//! runner starts one process per test).

mod common;

use std::path::{Path, PathBuf};

use common::{digest, pattern, wait_until, GENEROUS};
use fleet::{remote, Blob, Config, ObjectRef};

const MIB: usize = 1 << 20;

fn cluster(store: usize) -> fleet::Cluster {
    fleet::init_with(Config {
        num_cpus: Some(2),
        object_store_bytes: Some(store as u64),
        ..Default::default()
    })
    .expect("starting a local cluster")
}

/// Points the spill folder at `dir` for the cluster this process starts.
fn spill_into(dir: &Path) {
    // Set before the cluster starts, from the test's only thread that
    // touches the environment.
    std::env::set_var("FLEET_SPILL_DIR", dir);
}

/// The session folder this process's cluster made under `base`.
fn session_dir(base: &Path) -> PathBuf {
    let prefix = format!("fleet-{}-", std::process::id());
    let found: Vec<PathBuf> = std::fs::read_dir(base)
        .expect("reading the spill base")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one session folder under {}: {found:?}",
        base.display()
    );
    found.into_iter().next().expect("one")
}

/// Object files (not the `binaries` folder, nor the store's id
/// `.fleet-store-id`) in `dir`.
fn object_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| !name.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

fn value(i: usize) -> Blob {
    Blob::from(pattern(2 * MIB, 1000 + i as u64))
}

#[remote]
fn digest_of(b: Blob) -> u64 {
    digest(&b)
}

/// Reads a stored object several times over, as a task load would.
#[remote]
fn reread(b: Blob, times: u32) -> u64 {
    (0..times).map(|_| digest(&b)).fold(0, |a, d| a ^ d)
}

fn wait_under_capacity(c: &fleet::Cluster) {
    wait_until("the store to get under its capacity", GENEROUS, || {
        let n = c.counts().expect("local cluster");
        (n.store_used <= n.store_capacity).then_some(())
    });
}

/// Waits until files have been moved to `spill_dir` (the head counts
/// them out of the store when it decides to spill, before the spiller
/// thread has moved them); returns how many are there.
fn wait_spilled(spill_dir: &Path) -> usize {
    wait_until("objects to be spilled to disk", GENEROUS, || {
        let n = object_files(spill_dir).len();
        (n > 0).then_some(n)
    })
}

#[test]
fn puts_far_past_capacity_under_a_task_load_spill_and_read_back_equal() {
    const PUTS: usize = 40; // 80 MiB into a 16 MiB store
    let spill = tempfile::tempdir().expect("temp dir");
    spill_into(spill.path());
    let c = cluster(16 * MIB);
    let spill_dir = session_dir(spill.path());
    let mut refs: Vec<ObjectRef<Blob>> = Vec::new();
    let mut load: Vec<(usize, ObjectRef<u64>)> = Vec::new();
    for i in 0..PUTS {
        refs.push(fleet::put(value(i)).expect("a put past the capacity"));
        // Tasks keep reading earlier objects (some of them being spilled)
        // while later ones are put.
        let j = i / 2;
        load.push((j, reread::remote(&refs[j], 3)));
    }
    wait_under_capacity(&c);
    let spilled = wait_spilled(&spill_dir);
    for (j, r) in &load {
        let want = (0..3).fold(0, |a, _| a ^ digest(&value(*j)));
        assert_eq!(
            fleet::get(r).expect("a task under load"),
            want,
            "task on object {j}"
        );
    }
    for (i, r) in refs.iter().enumerate() {
        let back = fleet::get(r).expect("get");
        assert!(back[..] == value(i)[..], "object {i} read back different");
    }
    let digests: Vec<ObjectRef<u64>> = refs.iter().map(digest_of::remote).collect();
    for (i, d) in digests.iter().enumerate() {
        assert_eq!(
            fleet::get(d).expect("a task"),
            digest(&value(i)),
            "object {i} in a task"
        );
    }
    println!("{PUTS} puts of 2 MiB into a 16 MiB store: {spilled} spilled, all read back equal");
    drop((refs, load, digests));
    wait_until("both store folders to empty", GENEROUS, || {
        let n = c.counts().expect("local cluster");
        let left = object_files(&spill_dir).len();
        (n.objects == 0 && left == 0).then_some(())
    });
}

#[test]
fn an_unwritable_spill_folder_keeps_values_in_memory_and_the_cluster_serving() {
    const PUTS: usize = 16; // 32 MiB into an 8 MiB store
    let spill = tempfile::tempdir().expect("temp dir");
    spill_into(spill.path());
    let c = cluster(8 * MIB);
    let spill_dir = session_dir(spill.path());
    // The disk "breaks": the spill folder is now a regular file.
    std::fs::remove_dir_all(&spill_dir).expect("removing the spill folder");
    std::fs::write(&spill_dir, b"not a folder").expect("a file in its place");
    let mut refs: Vec<ObjectRef<Blob>> = Vec::new();
    for i in 0..PUTS {
        match fleet::put(value(i)) {
            Ok(r) => refs.push(r),
            Err(e) => {
                // A failure must say what failed.
                let msg = e.to_string();
                assert!(
                    msg.contains("spill") || msg.contains("store"),
                    "put {i} failed without a clear message: {msg}"
                );
                println!("put {i} refused: {msg}");
            }
        }
    }
    assert_eq!(
        refs.len(),
        PUTS,
        "puts past the capacity fail while memory is left"
    );
    for (i, r) in refs.iter().enumerate() {
        let back = fleet::get(r).expect("get with the spill folder broken");
        assert!(back[..] == value(i)[..], "object {i} read back different");
    }
    let digests: Vec<ObjectRef<u64>> = refs.iter().map(digest_of::remote).collect();
    for (i, d) in digests.iter().enumerate() {
        assert_eq!(
            fleet::get(d).expect("a task"),
            digest(&value(i)),
            "object {i} in a task"
        );
    }
    let stuck = c.counts().expect("the head is alive");
    println!(
        "spill folder unwritable: {PUTS} puts of 2 MiB into an 8 MiB store all kept in \
         memory ({} bytes used)",
        stuck.store_used
    );
    // The disk comes back: the next put past the capacity spills again.
    std::fs::remove_file(&spill_dir).expect("removing the file");
    std::fs::create_dir(&spill_dir).expect("the folder again");
    refs.push(fleet::put(value(PUTS)).expect("a put once the folder is back"));
    wait_under_capacity(&c);
    wait_spilled(&spill_dir);
    for (i, r) in refs.iter().enumerate() {
        let back = fleet::get(r).expect("get after spilling resumed");
        assert!(
            back[..] == value(i)[..],
            "object {i} read back different after spilling"
        );
    }
}

#[test]
fn a_spill_folder_that_cannot_be_made_is_a_clear_startup_error() {
    let base = Path::new("/proc/fleet-spill-test");
    spill_into(base);
    let err = match fleet::init_with(Config {
        num_cpus: Some(1),
        object_store_bytes: Some(8 * MIB as u64),
        ..Default::default()
    }) {
        Ok(_) => panic!("a cluster started with its spill folder under /proc"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("/proc/fleet-spill-test"),
        "the error does not name the folder: {err}"
    );
    println!("refused: {err}");
    // Nothing is left in /dev/shm by the failed start. (`ObjectStore::create`
    // in node/object_store.rs makes the store folder first and returns the
    // spill folder's error without removing it; a later start removes it
    // once this process is gone.)
    let prefix = format!("fleet-{}-", std::process::id());
    let left: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    for l in &left {
        let _ = std::fs::remove_dir_all(Path::new("/dev/shm").join(l));
    }
    assert!(left.is_empty(), "a failed start left {left:?} in /dev/shm");
}
