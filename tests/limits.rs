//! Limits that keep a job from taking the head down: too many unfinished
//! tasks get a clear error, and the job goes on once results are taken.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fleet::{remote, Config, ObjectRef};

#[remote]
fn wait_for_gate(gate: PathBuf, x: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !gate.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    x
}

#[test]
fn too_many_pending_tasks_fail_clearly_and_the_job_goes_on() {
    std::env::set_var("FLEET_MAX_PENDING_TASKS", "100");
    let _c = fleet::init_with(Config {
        num_cpus: Some(2),
        ..Default::default()
    })
    .expect("cluster");
    let gate = std::env::temp_dir().join(format!("fleet-gate-{}", std::process::id()));
    let _ = std::fs::remove_file(&gate);
    let refs: Vec<ObjectRef<u64>> = (0..150)
        .map(|x| wait_for_gate::remote(gate.clone(), x))
        .collect();
    // The 50 over the limit fail at once, before any task can finish.
    for r in &refs[100..] {
        let err = fleet::get(r).expect_err("over the limit");
        assert!(err.to_string().contains("FLEET_MAX_PENDING_TASKS"), "{err}");
    }
    std::fs::write(&gate, b"open").unwrap();
    let done = fleet::get_all(&refs[..100]).expect("the first 100 run");
    assert_eq!(done, (0..100).collect::<Vec<u64>>());
    let again: Vec<ObjectRef<u64>> = (0..100)
        .map(|x| wait_for_gate::remote(gate.clone(), x))
        .collect();
    assert_eq!(fleet::get_all(&again).expect("room again").len(), 100);
    let _ = std::fs::remove_file(&gate);
}

#[remote]
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn idle_workers_beyond_the_pool_exit_after_a_burst() {
    let c = fleet::init_with(Config {
        num_cpus: Some(2),
        ..Default::default()
    })
    .expect("cluster");
    // Zero-CPU tasks start extra workers while the CPUs are taken.
    let refs: Vec<ObjectRef<u64>> = (0..200)
        .map(|_| nap::options().num_cpus(0.0).remote(20))
        .collect();
    assert_eq!(fleet::get_all(&refs).expect("all ran").len(), 200);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let workers = c.counts().expect("local").workers;
        if workers <= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{workers} workers still alive");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The pool still serves.
    assert_eq!(
        fleet::get(&nap::remote(1)).expect("a task after the burst"),
        1
    );
}
