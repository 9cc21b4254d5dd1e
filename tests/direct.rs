//! The worker's side of the direct task path, driven from a raw tonic
//! `Worker.Direct` stream (built from `fleet::proto`): a CLI cluster (a
//! head without CPUs and a node agent on 127.0.0.2), a worker started by
//! a task of this driver, its address found with `fleet list workers`.
//! Tasks sent on the stream run and answer on it in batches; the head
//! lists them from the worker's `DirectDone` summaries (`fleet list
//! tasks`, `/metrics`, `fleet logs --task`); cancel (queued, running,
//! force); a wrong token is refused and the worker keeps serving; a task
//! blocked in `get` gives its queued tasks back; refs inside a result are
//! kept until `adopted` or the stream's end; several streams at once.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::cli::{fleet_bin, CliCluster};
use common::direct::{
    cancel, enc, error_kind, execute, id, open, payload, result_of, results, spec, value_u64,
};
use common::{wait_until, Gate, Proc, GENEROUS};
use fleet::proto::{self, arg, direct_op, object_value::Payload, DirectOp, ErrorKind};
use fleet::{remote, ObjectRef};

#[remote]
fn warm() -> u32 {
    std::process::id()
}

#[remote]
fn square(x: u64) -> u64 {
    x * x
}

#[remote]
fn shout(word: String) -> u64 {
    println!("direct-shout {word}");
    1
}

#[remote]
fn gated(gate: String) -> u64 {
    common::wait_for_path(Path::new(&gate));
    2
}

/// Runs until cancelled (or the gate limit), then returns 7.
#[remote]
fn until_cancelled(marker: String) -> u64 {
    std::fs::write(&marker, b"running").expect("writing the marker");
    let deadline = std::time::Instant::now() + common::GATE_LIMIT;
    while !fleet::is_cancelled() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    7
}

/// Never looks at `is_cancelled()`: only a force cancel stops it.
#[remote]
fn stubborn(marker: String) -> u64 {
    std::fs::write(&marker, b"running").expect("writing the marker");
    std::thread::sleep(common::GATE_LIMIT);
    8
}

/// Computes for `micros` microseconds (a task of a given size).
#[remote]
fn busy(micros: u64) -> u64 {
    let until = std::time::Instant::now() + Duration::from_micros(micros);
    let mut n = 0u64;
    while std::time::Instant::now() < until {
        n = n.wrapping_add(1);
    }
    n
}

#[remote]
fn child(x: u64) -> u64 {
    x + 1
}

/// Blocks in `get` on a task it submits (through the head).
#[remote]
fn parent(x: u64) -> u64 {
    fleet::get(&child::remote(x)).expect("the child's result")
}

/// Returns a ref to a value it put: the result has a nested ref.
#[remote]
fn make_ref(x: u64) -> ObjectRef<u64> {
    fleet::put(x).expect("put")
}

/// A cluster whose only CPUs are on a node agent at 127.0.0.2, this test
/// as its driver, and the direct address of a worker started there.
struct Setup {
    c: CliCluster,
    _driver: fleet::Cluster,
    node: String,
    worker_pid: u32,
    direct: String,
    rt: tokio::runtime::Runtime,
}

fn setup() -> Setup {
    let mut c = CliCluster::start(0, &[]);
    let node = c.add_node("127.0.0.2", 2);
    let driver = c.join();
    let pid = fleet::get(&warm::remote()).expect("a worker ran warm");
    let row = wait_until("the worker in `fleet list workers`", GENEROUS, || {
        workers(&c)
            .into_iter()
            .find(|w| w["pid"].as_u64() == Some(u64::from(pid)))
    });
    assert_eq!(row["node"].as_str(), Some(node.as_str()), "{row}");
    let direct = row["direct_address"]
        .as_str()
        .expect("direct_address")
        .to_string();
    assert!(
        direct.starts_with("127.0.0.2:"),
        "the worker serves on its node's address: {row}"
    );
    Setup {
        c,
        _driver: driver,
        node,
        worker_pid: pid,
        direct,
        rt: tokio::runtime::Runtime::new().expect("a tokio runtime"),
    }
}

fn fleet_cmd(c: &CliCluster, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(fleet_bin())
        .args(args)
        .args(["--address", &c.address])
        .env("FLEET_TOKEN", &c.token)
        .output()
        .expect("running fleet");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn list(c: &CliCluster, args: &[&str]) -> Vec<serde_json::Value> {
    let mut a = vec!["list"];
    a.extend_from_slice(args);
    a.push("--json");
    let (ok, out, err) = fleet_cmd(c, &a);
    assert!(ok, "fleet list {args:?} failed: {err}");
    serde_json::from_str(&out).expect("JSON rows")
}

fn workers(c: &CliCluster) -> Vec<serde_json::Value> {
    list(c, &["workers"])
}

#[test]
fn tasks_on_a_direct_stream_run_and_the_head_lists_them() {
    let s = setup();
    let token = s.c.token.clone();
    let (frames, results) = s.rt.block_on(async {
        let mut stream = open(&s.direct, &token).await.expect("opening the stream");
        // 300 tasks in 3 frames, then one that prints.
        for chunk in 0..3u64 {
            stream.send(
                (0..100u64)
                    .map(|i| {
                        execute(spec(
                            id(chunk * 100 + i),
                            "direct::square",
                            vec![enc(&(chunk * 100 + i))],
                        ))
                    })
                    .collect(),
            );
        }
        stream.send(vec![execute(spec(
            id(1000),
            "direct::shout",
            vec![enc(&"hello".to_string())],
        ))]);
        let got = stream.until(|ops| results(ops).len() >= 301).await;
        (stream.frames, got)
    });
    for i in 0..300u64 {
        let r = result_of(&results, id(i)).unwrap_or_else(|| panic!("no result for task {i}"));
        assert_eq!(value_u64(r), i * i);
        assert!(r.start_micros > 0, "{r:?}");
    }
    assert_eq!(value_u64(result_of(&results, id(1000)).expect("shout")), 1);
    // Results are held and batched as for the head: far fewer frames than
    // results.
    assert!(frames < 150, "{frames} frames for 301 results");

    // The head lists them from the worker's summaries.
    let rows = wait_until("the direct tasks in `fleet list tasks`", GENEROUS, || {
        let rows = list(
            &s.c,
            &[
                "tasks",
                "--function",
                "square",
                "--state",
                "finished",
                "--limit",
                "1000",
            ],
        );
        (rows.len() >= 300).then_some(rows)
    });
    let ids: std::collections::HashSet<String> = rows
        .iter()
        .filter_map(|r| r["id"].as_str().map(String::from))
        .collect();
    for i in 0..300u64 {
        assert!(
            ids.contains(&format!("{:016x}", id(i))),
            "task {i} is not listed"
        );
    }
    let row = &rows[0];
    assert_eq!(row["node"].as_str(), Some(s.node.as_str()), "{row}");
    assert_eq!(row["pid"].as_u64(), Some(u64::from(s.worker_pid)), "{row}");

    // The driver's job counts them.
    wait_until("the job's count of direct tasks", GENEROUS, || {
        list(&s.c, &["jobs"])
            .iter()
            .any(|r| r["type"] == "driver" && r["direct_tasks"].as_u64() >= Some(301))
            .then_some(())
    });

    // /metrics counts them, and `fleet logs --task` finds the worker.
    let dashboard = s.c.dashboard.as_deref().expect("a dashboard");
    let metrics = common::http::get_ok(dashboard, "/metrics");
    let finished = metrics
        .lines()
        .find(|l| l.starts_with("fleet_tasks_finished_total{function=\"square\"}"))
        .unwrap_or_else(|| panic!("no square in /metrics:\n{metrics}"));
    let n: f64 = finished
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a count");
    assert!(n >= 300.0, "{finished}");
    let task = format!("{:016x}", id(1000));
    let (ok, out, err) = wait_until("the shout line in the worker's log", GENEROUS, || {
        let r = fleet_cmd(&s.c, &["logs", "--task", &task]);
        (!r.0 || r.1.contains("direct-shout hello")).then_some(r)
    });
    assert!(ok, "fleet logs --task failed: {err}");
    assert!(out.contains("direct-shout hello"), "{out}");
}

#[test]
fn cancel_on_a_direct_stream() {
    let s = setup();
    let token = s.c.token.clone();
    let gate = Gate::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let marker = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let (m1, m2) = (marker("until"), marker("stubborn"));
    let worker = Proc::of(s.worker_pid).expect("the worker is alive");
    s.rt.block_on(async {
        let mut stream = open(&s.direct, &token).await.expect("opening the stream");
        // A gated task runs; one waits behind it and is cancelled there.
        stream.send(vec![
            execute(spec(id(1), "direct::gated", vec![enc(&gate.path())])),
            execute(spec(id(2), "direct::square", vec![enc(&3u64)])),
        ]);
        stream.send(vec![cancel(id(2), false)]);
        let got = stream.until(|ops| result_of(ops, id(2)).is_some()).await;
        let r = result_of(&got, id(2)).expect("task 2");
        assert_eq!(error_kind(r), Some(ErrorKind::Cancelled), "{r:?}");
        assert!(
            result_of(&got, id(1)).is_none(),
            "the gated task still runs"
        );
        gate.open();
        let got = stream.until(|ops| result_of(ops, id(1)).is_some()).await;
        assert_eq!(value_u64(result_of(&got, id(1)).expect("task 1")), 2);

        // A running task sees is_cancelled(); whatever it returns, its
        // result is Cancelled.
        stream.send(vec![execute(spec(
            id(3),
            "direct::until_cancelled",
            vec![enc(&m1)],
        ))]);
        wait_until("until_cancelled to run", GENEROUS, || {
            Path::new(&m1).exists().then_some(())
        });
        stream.send(vec![cancel(id(3), false)]);
        let got = stream.until(|ops| result_of(ops, id(3)).is_some()).await;
        let r = result_of(&got, id(3)).expect("task 3");
        assert_eq!(error_kind(r), Some(ErrorKind::Cancelled), "{r:?}");
        match payload(r) {
            Payload::Error(e) => assert!(e.message.contains("fleet::cancel"), "{e:?}"),
            _ => unreachable!(),
        }

        // Force: the answer comes, then the worker exits.
        stream.send(vec![execute(spec(
            id(4),
            "direct::stubborn",
            vec![enc(&m2)],
        ))]);
        wait_until("stubborn to run", GENEROUS, || {
            Path::new(&m2).exists().then_some(())
        });
        stream.send(vec![cancel(id(4), true)]);
        let got = stream.until(|ops| result_of(ops, id(4)).is_some()).await;
        let r = result_of(&got, id(4)).expect("task 4");
        assert_eq!(error_kind(r), Some(ErrorKind::Cancelled), "{r:?}");
        match payload(r) {
            Payload::Error(e) => {
                assert!(e.message.contains("fleet::force_cancel"), "{e:?}");
                assert_eq!(e.function, "direct::stubborn");
            }
            _ => unreachable!(),
        }
        // Then the stream ends.
        let rest = stream.next_ops().await;
        assert!(
            rest.is_none(),
            "the stream goes on after a force cancel: {rest:?}"
        );
    });
    wait_until("the force-cancelled worker to exit", GENEROUS, || {
        worker.is_dead().then_some(())
    });
    // The head counts the three cancels.
    let dashboard = s.c.dashboard.as_deref().expect("a dashboard");
    wait_until("the cancels in the dashboard's counts", GENEROUS, || {
        let snap: serde_json::Value =
            serde_json::from_str(&common::http::get_ok(dashboard, "/api/snapshot")).ok()?;
        (snap["tasks"]["cancelled"].as_u64()? >= 3).then_some(())
    });
}

#[test]
fn a_wrong_token_is_refused_and_the_worker_keeps_serving() {
    let s = setup();
    let token = s.c.token.clone();
    s.rt.block_on(async {
        let refused = open(&s.direct, "not-the-token")
            .await
            .err()
            .expect("refused");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
        assert!(
            refused.message().contains("wrong cluster token"),
            "{refused:?}"
        );
        let refused = open(&s.direct, "").await.err().expect("refused");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
        assert!(
            refused.message().contains("no cluster token"),
            "{refused:?}"
        );

        let mut stream = open(&s.direct, &token).await.expect("the right token");
        // What the direct path does not take is answered with an error,
        // not run; an unknown function is the task's error as on the head.
        let mut by_ref = spec(id(1), "direct::square", vec![]);
        by_ref.args.push(proto::Arg {
            kind: Some(arg::Kind::ObjectRef(42)),
        });
        let mut actor_call = spec(id(2), "direct::square", vec![enc(&1u64)]);
        actor_call.actor_id = 99;
        stream.send(vec![
            execute(by_ref),
            execute(actor_call),
            execute(spec(id(3), "direct::no_such_function", vec![])),
            execute(spec(id(4), "direct::square", vec![enc(&12u64)])),
        ]);
        let got = stream.until(|ops| results(ops).len() >= 4).await;
        for task in [1, 2] {
            let r = result_of(&got, id(task)).expect("answered");
            let Payload::Error(e) = payload(r) else {
                panic!("task {task} ran: {r:?}")
            };
            assert!(e.message.contains("submit it through the head"), "{e:?}");
        }
        let r = result_of(&got, id(3)).expect("answered");
        assert_eq!(error_kind(r), Some(ErrorKind::UnknownFunction), "{r:?}");
        assert_eq!(value_u64(result_of(&got, id(4)).expect("task 4")), 144);
    });
}

#[test]
fn a_task_blocked_in_get_gives_its_queued_tasks_back() {
    let s = setup();
    let token = s.c.token.clone();
    s.rt.block_on(async {
        let mut stream = open(&s.direct, &token).await.expect("opening the stream");
        stream.send(vec![
            execute(spec(id(1), "direct::parent", vec![enc(&41u64)])),
            execute(spec(id(2), "direct::square", vec![enc(&2u64)])),
            execute(spec(id(3), "direct::square", vec![enc(&3u64)])),
        ]);
        let returned = |ops: &[direct_op::Op]| -> Vec<u64> {
            ops.iter()
                .filter_map(|o| match o {
                    direct_op::Op::Returned(id) => Some(*id),
                    _ => None,
                })
                .collect()
        };
        let got = stream
            .until(|ops| result_of(ops, id(1)).is_some() && returned(ops).len() >= 2)
            .await;
        assert_eq!(value_u64(result_of(&got, id(1)).expect("parent")), 42);
        let mut back = returned(&got);
        back.sort();
        assert_eq!(back, vec![id(2), id(3)], "{got:?}");
        assert!(result_of(&got, id(2)).is_none() && result_of(&got, id(3)).is_none());
    });
}

/// The object a `make_ref` result names, if the head still has it.
fn object_listed(c: &CliCluster, object: u64) -> bool {
    let want = format!("{object:016x}");
    list(c, &["objects", "--limit", "100000"])
        .iter()
        .any(|r| r["id"].as_str() == Some(want.as_str()))
}

#[test]
fn refs_inside_a_result_are_kept_until_adopted_or_the_stream_ends() {
    let s = setup();
    let token = s.c.token.clone();
    let nested = |ops: &[direct_op::Op], task: u64| -> u64 {
        let r = result_of(ops, task).expect("result");
        assert_eq!(r.nested_refs.len(), 1, "{r:?}");
        r.nested_refs[0]
    };
    s.rt.block_on(async {
        let mut stream = open(&s.direct, &token).await.expect("opening the stream");
        stream.send(vec![execute(spec(
            id(1),
            "direct::make_ref",
            vec![enc(&5u64)],
        ))]);
        let got = stream.until(|ops| result_of(ops, id(1)).is_some()).await;
        let inner = nested(&got, id(1));
        // Another task runs after it, so the worker has moved on; the
        // object is still there, held for the driver.
        stream.send(vec![execute(spec(
            id(2),
            "direct::square",
            vec![enc(&2u64)],
        ))]);
        stream.until(|ops| result_of(ops, id(2)).is_some()).await;
        assert!(
            object_listed(&s.c, inner),
            "the nested object was freed before adoption"
        );
        stream.send(vec![DirectOp {
            op: Some(direct_op::Op::Adopted(id(1))),
        }]);
        wait_until("the adopted object's release", GENEROUS, || {
            (!object_listed(&s.c, inner)).then_some(())
        });

        // The stream's end releases them too.
        stream.send(vec![execute(spec(
            id(3),
            "direct::make_ref",
            vec![enc(&6u64)],
        ))]);
        let got = stream.until(|ops| result_of(ops, id(3)).is_some()).await;
        let inner = nested(&got, id(3));
        assert!(object_listed(&s.c, inner));
        drop(stream);
        wait_until("the release at the stream's end", GENEROUS, || {
            (!object_listed(&s.c, inner)).then_some(())
        });
    });
}

#[test]
fn several_streams_at_once_and_one_after_another() {
    let s = setup();
    let token = s.c.token.clone();
    s.rt.block_on(async {
        let mut a = open(&s.direct, &token).await.expect("stream a");
        let mut b = open(&s.direct, &token).await.expect("stream b");
        a.send(
            (0..50)
                .map(|i| execute(spec(id(i), "direct::square", vec![enc(&i)])))
                .collect(),
        );
        b.send(
            (50..100)
                .map(|i| execute(spec(id(i), "direct::square", vec![enc(&i)])))
                .collect(),
        );
        let got_a = a.until(|ops| results(ops).len() >= 50).await;
        let got_b = b.until(|ops| results(ops).len() >= 50).await;
        for i in 0..50 {
            assert_eq!(
                value_u64(result_of(&got_a, id(i)).expect("a's result")),
                i * i
            );
            assert!(result_of(&got_b, id(i)).is_none(), "a's result on b");
        }
        for i in 50..100 {
            assert_eq!(
                value_u64(result_of(&got_b, id(i)).expect("b's result")),
                i * i
            );
        }
        // One ends; its queued tasks are dropped, the other goes on, and
        // a new driver connects. The end is seen at the head by the
        // release of a ref kept for a result of the stream (after its
        // queued tasks were dropped).
        a.send(vec![execute(spec(
            id(199),
            "direct::make_ref",
            vec![enc(&1u64)],
        ))]);
        let got = a.until(|ops| result_of(ops, id(199)).is_some()).await;
        let inner = result_of(&got, id(199)).expect("make_ref").nested_refs[0];
        let gate = Gate::new();
        a.send(vec![execute(spec(
            id(200),
            "direct::gated",
            vec![enc(&gate.path())],
        ))]);
        a.send(
            (201..210)
                .map(|i| execute(spec(id(i), "direct::square", vec![enc(&i)])))
                .collect(),
        );
        drop(a);
        wait_until("the end of stream a at the worker", GENEROUS, || {
            (!object_listed(&s.c, inner)).then_some(())
        });
        gate.open();
        b.send(vec![execute(spec(
            id(300),
            "direct::square",
            vec![enc(&3u64)],
        ))]);
        let got = b.until(|ops| result_of(ops, id(300)).is_some()).await;
        assert!(results(&got).len() == 1, "{got:?}");
        let mut c = open(&s.direct, &token).await.expect("stream c");
        c.send(vec![execute(spec(
            id(400),
            "direct::square",
            vec![enc(&4u64)],
        ))]);
        let got = c.until(|ops| result_of(ops, id(400)).is_some()).await;
        assert_eq!(value_u64(result_of(&got, id(400)).expect("c's result")), 16);
    });
    // The dropped stream's queued squares never ran: the head lists the
    // gated task (it ran) but none of 201..210.
    let rows = wait_until("the gated task in `fleet list tasks`", GENEROUS, || {
        let rows = list(&s.c, &["tasks", "--limit", "1000"]);
        rows.iter()
            .any(|r| r["id"].as_str() == Some(format!("{:016x}", id(400)).as_str()))
            .then_some(rows)
    });
    for i in 201..210 {
        let want = format!("{:016x}", id(i));
        assert!(
            !rows.iter().any(|r| r["id"].as_str() == Some(want.as_str())),
            "task {i} of a closed stream ran"
        );
    }
}

/// CPU time of a process so far, in microseconds: the sum over its
/// threads of `/proc/PID/task/TID/schedstat`.
fn cpu_micros(pid: u32) -> u64 {
    let mut ns = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        ns += std::fs::read_to_string(t.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
    }
    ns / 1000
}

/// `fleet_tasks_finished_total` of `function` on `/metrics`.
fn finished_on_metrics(dashboard: &str, function: &str) -> u64 {
    let want = format!("fleet_tasks_finished_total{{function=\"{function}\"}} ");
    common::http::get_ok(dashboard, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(want.as_str())?.parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

/// The figures for the notes: the head's CPU per direct task (what it
/// spends on the worker's `DirectDone` summaries), frames per task on the
/// stream, and the same head CPU for tasks this driver submits. Run with
/// `cargo nextest run --release --test direct --run-ignored only --no-capture figures`.
#[test]
#[ignore = "a measurement, run by hand in release"]
fn figures_head_cpu_per_direct_task() {
    let s = setup();
    for (function, micros, n) in [("square", 0, 20_000u64), ("busy", 100, 5_000)] {
        for round in 0..3u64 {
            figures_round(&s, function, micros, n, round);
        }
    }
}

/// One round of [`figures_head_cpu_per_direct_task`]: `n` tasks of
/// `short` (argument: the task's index, or `micros` if not 0) on a direct
/// stream, then as many through the driver.
fn figures_round(s: &Setup, short: &str, micros: u64, n: u64, round: u64) {
    let token = s.c.token.clone();
    let head = s.c.head.child.id();
    let dashboard = s.c.dashboard.clone().expect("a dashboard");
    let function = format!("direct::{short}");
    let arg = |i: u64| if micros > 0 { micros } else { i };
    let base = finished_on_metrics(&dashboard, short);
    let before = cpu_micros(head);
    let started = std::time::Instant::now();
    let frames = s.rt.block_on(async {
        let mut stream = open(&s.direct, &token).await.expect("opening the stream");
        for chunk in 0..n / 500 {
            stream.send(
                (0..500)
                    .map(|i| {
                        let k =
                            (round * n + chunk * 500 + i) | if micros > 0 { 1 << 40 } else { 0 };
                        execute(spec(id(k), &function, vec![enc(&arg(k))]))
                    })
                    .collect(),
            );
        }
        stream.until(|ops| results(ops).len() as u64 >= n).await;
        stream.frames
    });
    // The summaries go within 20 ms of the last result: read the head's
    // CPU after that, before asking it anything.
    std::thread::sleep(Duration::from_millis(200));
    let used = cpu_micros(head) - before;
    let wall = started.elapsed();
    let recorded = finished_on_metrics(&dashboard, short) - base;
    assert_eq!(recorded, n, "the head had not recorded them all");
    // What the head spends idle over as long (keepalives, load reports).
    let idle_from = cpu_micros(head);
    std::thread::sleep(wall);
    let idle = cpu_micros(head) - idle_from;
    println!(
        "RESULT direct {short}({micros} us) round {round}: {n} tasks, head CPU {:.2} us/task \
         ({:.2} us/task over idle), {frames} stream frames for the {n} results, wall {:.2} s",
        used as f64 / n as f64,
        used.saturating_sub(idle) as f64 / n as f64,
        wall.as_secs_f64()
    );

    let before = cpu_micros(head);
    let refs: Vec<ObjectRef<u64>> = match micros {
        0 => (0..n).map(square::remote).collect(),
        us => (0..n).map(|_| busy::remote(us)).collect(),
    };
    fleet::get_all(&refs).expect("results");
    let used = cpu_micros(head) - before;
    println!(
        "RESULT driver {short}({micros} us) round {round}: {n} tasks, head CPU {:.2} us/task",
        used as f64 / n as f64
    );
}
