//! Streaming generators (`-> impl Iterator<Item = T>`) on a real local
//! cluster: items arrive as refs while the task runs, in order; the task
//! stays at most `generator_backpressure` items ahead of the consumer; an
//! error mid-stream ends the stream after the items before it; dropping
//! the stream cancels the task; items are refs like any other.

mod common;

use std::path::{Path, PathBuf};

use common::cli::CliCluster;
use common::{cluster, wait_until, GENEROUS};
use fleet::{remote, Error, ObjectRef, ObjectRefStream};

/// `n` numbers, `i * i`.
#[remote]
fn squares(n: u64) -> impl Iterator<Item = u64> {
    (0..n).map(|i| i * i)
}

/// `n` items; writes how many it has produced so far to `progress` before
/// each, and checks `is_cancelled` in between (a file side channel the test
/// reads).
#[remote]
fn counted(n: u64, progress: String) -> impl Iterator<Item = Vec<u8>> {
    (0..n).map(move |i| {
        write_atomic(Path::new(&progress), &(i + 1).to_string());
        vec![i as u8; 1000]
    })
}

/// Items `0..n` as `Ok`, then an `Err` at `fail_at`.
#[remote]
fn fails_at(n: u64, fail_at: u64) -> impl Iterator<Item = Result<u64, String>> {
    (0..n).map(move |i| {
        if i == fail_at {
            Err(format!("item {i} is bad"))
        } else {
            Ok(i)
        }
    })
}

/// Panics in `next()` at `panic_at`.
#[remote]
fn panics_at(n: u64, panic_at: u64) -> impl Iterator<Item = u64> {
    (0..n).inspect(move |&i| assert!(i != panic_at, "no item {i}"))
}

/// Refuses to start at all when `n == 0`.
#[remote]
fn checked(n: u64) -> Result<impl Iterator<Item = String>, String> {
    if n == 0 {
        return Err("nothing to stream".into());
    }
    Ok((0..n).map(|i| format!("line {i}")))
}

/// Big items (through the store), `mib` MiB each.
#[remote]
fn big_parts(n: u64, mib: usize) -> impl Iterator<Item = Vec<u8>> {
    (0..n).map(move |i| vec![i as u8; mib << 20])
}

/// Writes `dir/stopped` when dropped: whether the task was cancelled by then.
struct OnStop(PathBuf);

impl Drop for OnStop {
    fn drop(&mut self) {
        let how = match fleet::is_cancelled() {
            true => "cancelled",
            false => "not cancelled",
        };
        write_atomic(&self.0.join("stopped"), how);
    }
}

/// Never ends by itself; records in `dir` how far it got, and (when the
/// iterator is dropped) whether the task was cancelled.
#[remote(generator_backpressure = 4)]
fn endless(dir: String) -> impl Iterator<Item = u64> {
    let stop = OnStop(PathBuf::from(dir));
    (0..).inspect(move |i| write_atomic(&stop.0.join("progress"), &(i + 1).to_string()))
}

#[remote]
fn total(v: Vec<u8>) -> u64 {
    v.iter().map(|b| u64::from(*b)).sum()
}

#[remote]
fn double(x: u64) -> u64 {
    2 * x
}

fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("writing the side channel");
    std::fs::rename(&tmp, path).expect("renaming the side channel");
}

fn read_count(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_thousand_items_arrive_in_order() {
    let _c = cluster(2);
    let stream: ObjectRefStream<u64> = squares::remote(1000);
    let mut n = 0u64;
    for item in stream {
        let r: ObjectRef<u64> = item.expect("an item");
        assert_eq!(fleet::get(&r).expect("its value"), n * n);
        n += 1;
    }
    assert_eq!(n, 1000);
    // Empty streams end at once.
    assert_eq!(squares::remote(0).count(), 0);
}

#[test]
fn the_task_stays_at_most_backpressure_items_ahead() {
    let _c = cluster(2);
    let dir = tempfile::tempdir().expect("tempdir");
    let progress = dir.path().join("progress");
    let mut stream = counted::remote(1000, progress.to_str().expect("utf-8"));
    // Take 10, then stop: the task gets exactly 16 ahead and waits there.
    for _ in 0..10 {
        stream.next().expect("an item").expect("ok");
    }
    wait_until(
        "the task to produce 10 + 16 items and wait",
        GENEROUS,
        || (read_count(&progress) == 26).then_some(()),
    );
    // Every step after that: produced <= taken + 16.
    let mut taken = 10u64;
    for item in stream.by_ref() {
        let r = item.expect("an item");
        taken += 1;
        let produced = read_count(&progress);
        assert!(
            produced <= taken + 16,
            "{produced} produced with {taken} taken"
        );
        if taken.is_multiple_of(100) {
            assert_eq!(fleet::get(&r).expect("value").len(), 1000);
        }
    }
    assert_eq!(taken, 1000);
    assert_eq!(read_count(&progress), 1000);
}

#[test]
fn an_error_mid_stream_ends_it_after_the_items_before() {
    let _c = cluster(2);
    let mut got = Vec::new();
    let mut error = None;
    for item in fails_at::remote(100, 37) {
        match item {
            Ok(r) => got.push(fleet::get(&r).expect("value")),
            Err(e) => error = Some(e),
        }
    }
    assert_eq!(got, (0..37).collect::<Vec<u64>>());
    match error {
        Some(Error::Task { message, .. }) => assert_eq!(message, "item 37 is bad"),
        other => panic!("expected the item's error, got {other:?}"),
    }
    let mut stream = panics_at::remote(10, 3);
    for i in 0..3 {
        let r = stream.next().expect("an item").expect("ok");
        assert_eq!(fleet::get(&r).expect("value"), i);
    }
    match stream.next() {
        Some(Err(Error::Task { message, .. })) => {
            assert!(message.contains("no item 3"), "{message}")
        }
        other => panic!("expected the panic, got {other:?}"),
    }
    assert!(stream.next().is_none(), "nothing after the error");
    // An `Err` before the first item.
    let mut stream = checked::remote(0);
    assert!(matches!(stream.next(), Some(Err(Error::Task { .. }))));
    assert!(stream.next().is_none());
    let lines: Vec<String> = checked::remote(2)
        .map(|r| fleet::get(&r.expect("item")).expect("value"))
        .collect();
    assert_eq!(lines, ["line 0", "line 1"]);
}

#[test]
fn dropping_the_stream_cancels_the_task() {
    let _c = cluster(2);
    let dir = tempfile::tempdir().expect("tempdir");
    let progress = dir.path().join("progress");
    let mut stream = endless::remote(dir.path().to_str().expect("utf-8"));
    let first = stream.next().expect("an item").expect("ok");
    let kept = stream.next().expect("an item").expect("ok");
    wait_until("the task to get 4 ahead", GENEROUS, || {
        (read_count(&progress) >= 6).then_some(())
    });
    drop(stream);
    let stopped = wait_until("the task to stop", GENEROUS, || {
        std::fs::read_to_string(dir.path().join("stopped")).ok()
    });
    assert_eq!(stopped, "cancelled");
    // At most backpressure (4) past the 2 taken: it was waiting, then stopped.
    assert!(read_count(&progress) <= 6, "{}", read_count(&progress));
    // Items taken before the drop are still there.
    assert_eq!(fleet::get(&first).expect("first"), 0);
    assert_eq!(fleet::get(&double::remote(&kept)).expect("kept"), 2);
}

#[test]
fn items_are_refs_passed_to_tasks_and_freed_on_their_own() {
    let c = cluster(2);
    let objects = || c.counts().expect("a local cluster").objects;
    let used = || c.counts().expect("a local cluster").store_used;
    let baseline = objects();
    let parts: Vec<ObjectRef<Vec<u8>>> =
        big_parts::remote(4, 1).map(|r| r.expect("item")).collect();
    assert_eq!(parts.len(), 4);
    assert!(used() >= 4 << 20, "items are in the store: {}", used());
    let sums: Vec<u64> = parts
        .iter()
        .map(|p| fleet::get(&total::remote(p)).expect("sum"))
        .collect();
    assert_eq!(sums, (0..4u64).map(|i| i * (1 << 20)).collect::<Vec<_>>());
    // Dropping one frees it alone.
    let mut parts = parts;
    let one = parts.pop().expect("one");
    drop(one);
    wait_until("one item freed", GENEROUS, || {
        (used() < 4 << 20 && used() >= 3 << 20).then_some(())
    });
    assert_eq!(fleet::get(&parts[0]).expect("still there").len(), 1 << 20);
    drop(parts);
    wait_until("every item freed", GENEROUS, || (used() == 0).then_some(()));
    wait_until("the objects gone", GENEROUS, || {
        (objects() <= baseline).then_some(())
    });
}

/// An actor whose method streams its state.
#[remote]
struct Journal {
    lines: Vec<String>,
}

#[remote]
impl Journal {
    fn new() -> Self {
        Journal { lines: Vec::new() }
    }

    fn add(&mut self, line: String) -> usize {
        self.lines.push(line);
        self.lines.len()
    }

    /// The lines from `from` on, as a stream (holding the actor meanwhile).
    fn replay(&self, from: usize) -> impl Iterator<Item = String> + '_ {
        self.lines.iter().skip(from).cloned()
    }

    /// Fails at line `at`.
    fn checked(&self, at: usize) -> impl Iterator<Item = Result<usize, String>> + '_ {
        self.lines
            .iter()
            .enumerate()
            .map(move |(i, l)| match i == at {
                true => Err(format!("line {i} refused")),
                false => Ok(l.len()),
            })
    }
}

#[test]
fn actor_methods_stream_too() {
    let _c = cluster(2);
    let journal = Journal::remote().expect("an actor");
    for i in 0..100 {
        journal.add(format!("entry {i}"));
    }
    let lines: Vec<String> = journal
        .replay(90)
        .map(|r| fleet::get(&r.expect("item")).expect("value"))
        .collect();
    let want: Vec<String> = (90..100).map(|i| format!("entry {i}")).collect();
    assert_eq!(lines, want);
    let mut stream = journal.checked(2);
    assert_eq!(
        fleet::get(&stream.next().expect("0").expect("ok")).expect("v"),
        7
    );
    assert_eq!(
        fleet::get(&stream.next().expect("1").expect("ok")).expect("v"),
        7
    );
    assert!(matches!(stream.next(), Some(Err(Error::Task { .. }))));
    assert!(stream.next().is_none());
    // The actor goes on serving.
    assert_eq!(fleet::get(&journal.add("last")).expect("add"), 101);
}

/// `0..n`; on its first run its worker dies at item `die_at`, once the
/// test has taken the items before it (`dir/gate`).
#[remote]
fn dies_once(n: u64, die_at: u64, dir: String) -> impl Iterator<Item = u64> {
    let dir = PathBuf::from(dir);
    let first_run = !dir.join("died").exists();
    (0..n).inspect(move |&i| {
        if first_run && i == die_at {
            common::wait_for_path(&dir.join("gate"));
            write_atomic(&dir.join("died"), "yes");
            std::process::exit(3);
        }
    })
}

#[test]
fn a_retried_generator_delivers_each_item_once() {
    let _c = cluster(2);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut stream = dies_once::remote(50, 5, dir.path().to_str().expect("utf-8"));
    let mut got = Vec::new();
    for _ in 0..5 {
        let r = stream.next().expect("an item").expect("ok");
        got.push(fleet::get(&r).expect("value"));
    }
    std::fs::write(dir.path().join("gate"), b"go").expect("gate");
    for item in stream {
        got.push(fleet::get(&item.expect("an item after the retry")).expect("value"));
    }
    assert!(dir.path().join("died").exists(), "the first run died");
    assert_eq!(got, (0..50).collect::<Vec<u64>>());
}

/// Sums the items of a stream it consumes itself: a task as the consumer.
#[remote]
fn sum_of_squares(n: u64) -> u64 {
    squares::remote(n)
        .map(|r| fleet::get(&r.expect("an item")).expect("its value"))
        .sum()
}

#[test]
fn a_task_consumes_a_stream() {
    let _c = cluster(2);
    let want: u64 = (0..300u64).map(|i| i * i).sum();
    assert_eq!(fleet::get(&sum_of_squares::remote(300)).expect("sum"), want);
    // More consumers than CPUs: waiting consumers lend theirs.
    let sums = sum_of_squares::map([10u64, 20, 30, 40]);
    let want: Vec<u64> = [10u64, 20, 30, 40]
        .iter()
        .map(|n| (0..*n).map(|i| i * i).sum())
        .collect();
    assert_eq!(fleet::get_all(&sums).expect("sums"), want);
}

#[test]
fn a_stream_across_processes_of_a_cli_cluster() {
    let mut cluster = CliCluster::start(0, &["--no-dashboard"]);
    cluster.add_node("127.0.0.2", 2);
    let _driver = cluster.join();
    // 300 KiB items: each in the node's store, read by this driver.
    let mut n = 0u64;
    let mut refs = Vec::new();
    for item in big_items::remote(60, 300 << 10) {
        let r = item.expect("an item");
        assert_eq!(fleet::get(&r).expect("its value")[0], n as u8);
        refs.push(r);
        n += 1;
    }
    assert_eq!(n, 60);
    let sums: Vec<u64> =
        fleet::get_all(&refs.iter().map(total::remote).collect::<Vec<_>>()).expect("sums");
    let want: Vec<u64> = (0..60u64).map(|i| (i % 256) * (300 << 10)).collect();
    assert_eq!(sums, want);
    let mut err = fails_at::remote(10, 4);
    assert_eq!(err.by_ref().take_while(Result::is_ok).count(), 4);
}

/// `n` items of `bytes` bytes each, item `i` filled with `i`.
#[remote]
fn big_items(n: u64, bytes: usize) -> impl Iterator<Item = Vec<u8>> {
    (0..n).map(move |i| vec![i as u8; bytes])
}

#[test]
fn async_code_awaits_the_items() {
    use futures::StreamExt;
    let _c = cluster(2);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let got: Vec<u64> = rt.block_on(async {
        let mut out = Vec::new();
        let mut stream = squares::remote(50).into_async();
        while let Some(item) = stream.next().await {
            out.push(item.expect("an item").await.expect("its value"));
        }
        let mut failing = fails_at::remote(5, 2).into_async();
        assert!(failing.next().await.expect("0").is_ok());
        assert!(failing.next().await.expect("1").is_ok());
        assert!(matches!(
            failing.next().await,
            Some(Err(Error::Task { .. }))
        ));
        assert!(failing.next().await.is_none());
        out
    });
    assert_eq!(got, (0..50u64).map(|i| i * i).collect::<Vec<_>>());
}

/// Takes one item of an endless stream, then its process exits.
#[remote(max_retries = 0)]
fn consumer_that_dies(dir: String) -> u64 {
    let mut stream = endless::remote(dir);
    stream.next().expect("an item").expect("ok");
    std::process::exit(4);
}

#[test]
fn a_stream_whose_consumer_dies_is_cancelled() {
    let _c = cluster(3);
    let dir = tempfile::tempdir().expect("tempdir");
    let r = consumer_that_dies::remote(dir.path().to_str().expect("utf-8"));
    assert!(matches!(fleet::get(&r), Err(Error::WorkerDied { .. })));
    let stopped = wait_until("the orphaned generator to stop", GENEROUS, || {
        std::fs::read_to_string(dir.path().join("stopped")).ok()
    });
    assert_eq!(stopped, "cancelled");
}

/// Rates of streams, printed (no timing is asserted). Run with
/// `cargo nextest run --release --test generators --run-ignored all -E
/// 'test(figures)' --no-capture`.
#[test]
#[ignore = "a measurement: run by hand"]
fn figures() {
    let _c = cluster(2);
    let time = |what: &str, n: u64, unit: &str, f: &mut dyn FnMut()| {
        let t = std::time::Instant::now();
        f();
        let s = t.elapsed().as_secs_f64();
        println!("{what}: {:.0} {unit}/s ({s:.3} s)", n as f64 / s);
    };
    let n = 20_000u64;
    // Warm the workers up.
    assert_eq!(squares::remote(100).count(), 100);
    for bp in [16u32, 256, 0] {
        time(
            &format!("{n} u64 items, backpressure {bp}"),
            n,
            "items",
            &mut || {
                let c = squares::options()
                    .generator_backpressure(bp)
                    .remote(n)
                    .filter(|r| r.is_ok())
                    .count();
                assert_eq!(c as u64, n);
            },
        );
    }
    time(
        &format!("{n} plain tasks (for comparison)"),
        n,
        "tasks",
        &mut || {
            let refs = double::map(0..n);
            fleet::wait(&refs, refs.len(), None).expect("wait");
        },
    );
    let (parts, mib) = (64u64, 4usize);
    time(
        &format!("{parts} items of {mib} MiB"),
        parts * mib as u64,
        "MiB",
        &mut || {
            for r in big_parts::remote(parts, mib) {
                let v = fleet::get(&r.expect("item")).expect("value");
                assert_eq!(v.len(), mib << 20);
            }
        },
    );
}

#[test]
fn a_cancelled_stream_ends_with_cancelled() {
    let _c = cluster(2);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut stream = endless::remote(dir.path().to_str().expect("utf-8"));
    let first = stream.next().expect("an item").expect("ok");
    stream.cancel().expect("cancel");
    // What arrived before the task stopped, then the error, then the end.
    let rest: Vec<_> = stream.by_ref().collect();
    assert!(rest.len() <= 5, "at most backpressure more: {}", rest.len());
    let (last, items) = rest.split_last().expect("the error at least");
    assert!(items.iter().all(Result::is_ok));
    assert!(
        matches!(last, Err(Error::Cancelled { .. })),
        "expected Cancelled, got {last:?}"
    );
    assert!(stream.next().is_none());
    assert_eq!(fleet::get(&first).expect("first"), 0);
}

#[test]
fn a_producer_waiting_for_its_consumer_lends_its_cpu() {
    // One CPU: held by a generator that waits for its consumer, the task
    // below could never run.
    let _c = cluster(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let progress = dir.path().join("progress");
    let stream = endless::remote(dir.path().to_str().expect("utf-8"));
    wait_until("the generator to fill its window", GENEROUS, || {
        (read_count(&progress) >= 4).then_some(())
    });
    let r = double::remote(21);
    assert_eq!(
        fleet::get_timeout(&r, GENEROUS).expect("the task runs meanwhile"),
        42
    );
    drop(stream);
}
