//! `retry_on_error`: an `Err` or a panic is retried up to `max_retries`
//! and `get` returns the last error; and `WorkerDied` says how the worker
//! died (exit code, or signal name with a hint for SIGKILL).

mod common;

use std::path::{Path, PathBuf};

use common::{cluster, sigkill, wait_until, GENEROUS};
use fleet::{remote, Error};

/// Fails (by `Err`) until it has run `succeed_on` times, counting runs in
/// `dir/runs`.
#[remote(retry_on_error = true, max_retries = 5)]
fn flaky(dir: String, succeed_on: u32) -> Result<u32, String> {
    let n = bump(Path::new(&dir));
    if n < succeed_on {
        return Err(format!("attempt {n} failed"));
    }
    Ok(n)
}

/// Panics every time, counting runs.
#[remote(retry_on_error = true, max_retries = 2)]
fn always_panics(dir: String) -> u32 {
    let n = bump(Path::new(&dir));
    panic!("attempt {n} panicked");
}

/// Like `flaky` but without `retry_on_error`.
#[remote]
fn fails_once(dir: String) -> Result<u32, String> {
    let n = bump(Path::new(&dir));
    if n < 2 {
        return Err(format!("attempt {n} failed"));
    }
    Ok(n)
}

fn bump(dir: &Path) -> u32 {
    let f = dir.join("runs");
    let n = std::fs::read_to_string(&f)
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(0)
        + 1;
    std::fs::write(&f, n.to_string()).expect("counting runs");
    n
}

fn runs(dir: &Path) -> u32 {
    std::fs::read_to_string(dir.join("runs"))
        .expect("runs")
        .parse()
        .expect("a number")
}

#[remote]
fn exits_with(code: i32) -> u64 {
    std::process::exit(code)
}

#[remote]
fn publish_pid_and_wait(dir: String) -> u64 {
    let dir = PathBuf::from(dir);
    std::fs::write(dir.join("pid.tmp"), std::process::id().to_string()).expect("pid");
    std::fs::rename(dir.join("pid.tmp"), dir.join("pid")).expect("pid");
    common::wait_for_path(&dir.join("never"));
    0
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[test]
fn an_err_is_retried_until_it_succeeds() {
    let _c = cluster(1);
    let dir = tmp();
    let r = flaky::remote(s(dir.path()), 3);
    assert_eq!(fleet::get_timeout(&r, Some(GENEROUS)).expect("flaky"), 3);
    assert_eq!(runs(dir.path()), 3);
}

#[test]
fn past_max_retries_get_returns_the_last_error() {
    let _c = cluster(1);
    let dir = tmp();
    let r = flaky::options().max_retries(1).remote(s(dir.path()), 10);
    match fleet::get_timeout(&r, Some(GENEROUS)) {
        Err(Error::Task { message, .. }) => assert_eq!(message, "attempt 2 failed"),
        other => panic!("expected the last error, got {other:?}"),
    }
    assert_eq!(runs(dir.path()), 2);
    let dir = tmp();
    let r = always_panics::remote(s(dir.path()));
    match fleet::get_timeout(&r, Some(GENEROUS)) {
        Err(Error::Task { message, .. }) => {
            assert!(message.contains("attempt 3 panicked"), "{message}")
        }
        other => panic!("expected the last panic, got {other:?}"),
    }
    assert_eq!(runs(dir.path()), 3);
}

#[test]
fn without_retry_on_error_an_err_is_final_unless_asked_per_call() {
    let _c = cluster(1);
    let dir = tmp();
    let r = fails_once::remote(s(dir.path()));
    assert!(matches!(fleet::get(&r), Err(Error::Task { .. })));
    assert_eq!(runs(dir.path()), 1);
    let dir = tmp();
    let r = fails_once::options()
        .retry_on_error(true)
        .remote(s(dir.path()));
    assert_eq!(fleet::get_timeout(&r, Some(GENEROUS)).expect("retried"), 2);
}

#[test]
fn worker_died_names_the_exit_code() {
    let _c = cluster(1);
    let r = exits_with::options().max_retries(0).remote(7);
    match fleet::get_timeout(&r, Some(GENEROUS)) {
        Err(Error::WorkerDied { message, .. }) => {
            assert!(message.contains("exited with code 7"), "{message}")
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
}

#[test]
fn worker_died_names_sigkill_with_a_hint() {
    let c = cluster(1);
    let dir = tmp();
    let r = publish_pid_and_wait::options()
        .max_retries(0)
        .remote(s(dir.path()));
    let pid: u32 = wait_until("the pid", GENEROUS, || {
        std::fs::read_to_string(dir.path().join("pid"))
            .ok()?
            .parse()
            .ok()
    });
    assert!(c.worker_pids().contains(&pid));
    sigkill(pid);
    match fleet::get_timeout(&r, Some(GENEROUS)) {
        Err(Error::WorkerDied { message, .. }) => {
            assert!(message.contains("signal 9 (SIGKILL)"), "{message}");
            assert!(message.contains("out-of-memory killer"), "{message}");
            assert!(message.contains(&pid.to_string()), "{message}");
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
}
