//! Bad input for every decoder that reads network bytes, from deterministic
//! pseudo-random generators (fixed seeds, bounded iteration counts):
//!
//! - prost decoding of the wire messages (`ClientFrame`, `HeadFrame`,
//!   `TaskSpec`, `BinaryChunk`, ...) from random bytes and from mutated
//!   valid encodings: never a panic, whatever decodes re-encodes stably,
//!   and no allocation much larger than the input;
//! - postcard decoding of user values, directly and through the public API
//!   (a value read as another type is `Error::Codec`, in the driver and in
//!   a worker), including length fields that claim a huge size;
//! - raw gRPC `Session` frames sent to a running head: mutated valid
//!   frames, before the hello (no token) and after a valid hello (with the
//!   token). After each batch the cluster still runs tasks.
//!
//! `fuzz/` holds cargo-fuzz targets for the same decoders, for longer runs.
//! The fuzzing of the head also found that tasks no node can run starve
//! the others; `tasks_no_node_can_run_do_not_starve_the_others` pins that
//! down deterministically.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};

use std::time::Duration;

use common::GENEROUS;
use fleet::proto::{
    self, arg, client_op, head_op, object_value, ActorSpec, Arg, BinaryChunk, Blocked, ClientFrame,
    ClientOp, FetchBinaryRequest, FetchObjectRequest, HeadFrame, HeadOp, Hello, LogLines, Lookup,
    NodeInfo, ObjectValue, Put, Reply, Role, SpawnWorker, StoreLocation, TaskError, TaskResult,
    TaskSpec, Welcome, WorkerExit,
};
use fleet::{remote, Blob, Error, ObjectRef};
use prost::bytes::{Buf, BufMut};
use prost::Message;
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------
// Tools: a seeded generator, a mutator, and an allocator that reports the
// largest single allocation made by a thread while it watches.

/// xorshift64*: deterministic, seedable, good enough to make noise.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, max_len: usize) -> Vec<u8> {
        let len = self.below(max_len + 1);
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// Protobuf/postcard varint of `v`.
fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

/// Applies one to four random edits to `seed`: bit flips, byte changes,
/// insertions, deletions, duplicated runs, truncation, boundary bytes,
/// huge varints, and splices from `others`.
fn mutate(rng: &mut Rng, seed: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(10) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next_u64() as u8;
            }
            2 => {
                let noise = rng.bytes(8);
                v.splice(at..at, noise);
            }
            3 if !v.is_empty() => {
                let end = (at + 1 + rng.below(8)).min(v.len());
                v.drain(at.min(end)..end);
            }
            4 if !v.is_empty() => {
                let start = rng.below(v.len());
                let end = (start + 1 + rng.below(16)).min(v.len());
                let run = v[start..end].to_vec();
                v.splice(at..at, run);
            }
            5 => v.truncate(at),
            6 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = [0x00, 0x01, 0x7f, 0x80, 0xff][rng.below(5)];
            }
            7 => {
                let huge = [u64::MAX, 1 << 62, 1 << 40, u32::MAX as u64, 64 << 20];
                v.splice(at..at, varint(huge[rng.below(huge.len())]));
            }
            8 if !others.is_empty() => {
                let other = &others[rng.below(others.len())];
                let start = rng.below(other.len() + 1);
                let end = (start + rng.below(32)).min(other.len());
                v.splice(at..at, other[start..end].iter().copied());
            }
            _ => {
                let i = rng.below(v.len() + 1);
                v.insert(i, rng.next_u64() as u8);
            }
        }
    }
    v
}

/// [`mutate`] applied to a random one of `seeds`.
fn mutate_any(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let i = rng.below(seeds.len());
    mutate(rng, &seeds[i], seeds)
}

struct Watching;

thread_local! {
    static WATCH: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = WATCH.try_with(|w| {
        if w.get() {
            let _ = LARGEST.try_with(|m| m.set(m.get().max(size)));
        }
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// bookkeeping touches only const-initialised thread-locals.
unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Watching = Watching;

/// Runs `f` and returns its result and the largest single allocation this
/// thread made meanwhile.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|m| m.set(0));
    WATCH.with(|w| w.set(true));
    let out = f();
    WATCH.with(|w| w.set(false));
    (out, LARGEST.with(|m| m.get()))
}

// ---------------------------------------------------------------------------
// prost: the wire messages.

fn op(op: client_op::Op) -> ClientOp {
    ClientOp { op: Some(op) }
}

fn hop(op: head_op::Op) -> HeadOp {
    HeadOp { op: Some(op) }
}

fn task_spec(id: u64) -> TaskSpec {
    TaskSpec {
        task_id: id,
        function: "fuzz_inputs::some_function".into(),
        args: vec![
            Arg {
                kind: Some(arg::Kind::Value(vec![1, 2, 3, 0xff].into())),
            },
            Arg {
                kind: Some(arg::Kind::ObjectRef(id + 1)),
            },
            Arg {
                kind: Some(arg::Kind::Stored(Box::new(StoreLocation {
                    path: "/dev/shm/fleet-1-00000000/0000000000000001".into(),
                    size: 1 << 20,
                    node: "127.0.0.1:6380".into(),
                }))),
            },
        ],
        nested_refs: vec![id + 2, id + 3, u64::MAX],
        num_cpus: 1.0,
        max_retries: 3,
        actor_id: 0,
        create: Some(Box::new(ActorSpec {
            class: "fuzz_inputs::Actor".into(),
            name: "named".into(),
            max_restarts: 2,
            max_task_retries: 1,
            max_concurrency: 4,
            detached: true,
        })),
        node: "127.0.0.2:1234".into(),
        retry_on_error: true,
        parent_task: id + 4,
        num_returns: 2,
        resources: vec![fleet::proto::Resource {
            name: "gpu".into(),
            amount: 1.0,
        }],
        spread: true,
        node_soft: "127.0.0.3:1234".into(),
        generator: true,
        generator_backpressure: 3,
        retries_used: 1,
        subscribe: true,
    }
}

fn hello(token: &str, role: Role) -> Hello {
    Hello {
        protocol_version: fleet::PROTOCOL_VERSION,
        registry_hash: "0123456789abcdef".into(),
        role: role.into(),
        pid: 4242,
        worker_id: 7,
        token: token.into(),
        job: 1,
        node: "127.0.0.1:6380".into(),
        binary_hash: "feedface-1234".into(),
        submission: "job-0badc0de".into(),
        direct_address: "127.0.0.1:6390".into(),
        node_info: Some(NodeInfo {
            address: "127.0.0.9:1".into(),
            num_cpus: 0.0,
            store_dir: "/dev/shm/x".into(),
            spill_dir: "/tmp/x".into(),
            store_capacity: 1 << 30,
            arch: "x86_64".into(),
            store_key: "5eed".into(),
            ..Default::default()
        }),
    }
}

fn inline(id: u64, bytes: &[u8]) -> ObjectValue {
    ObjectValue {
        object_id: id,
        payload: Some(object_value::Payload::Inline(bytes.to_vec().into())),
    }
}

/// Every kind of client op, each valid on its own.
fn client_ops() -> Vec<ClientOp> {
    let mut err = TaskError {
        message: "boom".into(),
        function: "f".into(),
        pid: 1,
        node: "n".into(),
        ..Default::default()
    };
    err.set_kind(proto::ErrorKind::Task);
    vec![
        op(client_op::Op::Hello(Box::new(hello(
            "not-the-token",
            Role::Driver,
        )))),
        op(client_op::Op::Submit(Box::new(task_spec(1 << 40 | 1)))),
        op(client_op::Op::Result(TaskResult {
            value: Some(inline(1 << 40 | 1, b"\x05")),
            nested_refs: vec![3],
            exec_micros: 10,
            start_micros: 1_700_000_000_000_000,
            more_returns: vec![fleet::proto::Return {
                value: Some(inline(1 << 40 | 2, b"\x06")),
                nested_refs: vec![],
            }],
        })),
        op(client_op::Op::Result(TaskResult {
            value: Some(ObjectValue {
                object_id: 9,
                payload: Some(object_value::Payload::Error(Box::new(err))),
            }),
            ..Default::default()
        })),
        op(client_op::Op::Put(Put {
            value: Some(inline(1 << 40 | 2, &[0u8; 40])),
            nested_refs: vec![1 << 40 | 1],
        })),
        op(client_op::Op::Subscribe(1 << 40 | 1)),
        op(client_op::Op::Acquire(5)),
        op(client_op::Op::Release(5)),
        op(client_op::Op::Blocked(Blocked {
            task_id: 3,
            returned: vec![4, 5, 6],
        })),
        op(client_op::Op::Unblocked(3)),
        op(client_op::Op::KillActor(77)),
        op(client_op::Op::NodeLeaving(true)),
        op(client_op::Op::MemoryPressure(
            fleet::proto::MemoryPressure {
                used: u64::MAX,
                total: 0,
                threshold: 1,
                workers: vec![fleet::proto::WorkerRss {
                    worker_id: 1,
                    rss: u64::MAX,
                }],
            },
        )),
        op(client_op::Op::Cancel(fleet::proto::Cancel {
            task_id: 1 << 40 | 1,
            force: true,
            recursive: true,
        })),
        op(client_op::Op::GeneratorItem(fleet::proto::GeneratorItem {
            task_id: 1 << 40 | 1,
            index: u64::MAX,
            value: Some(ObjectValue {
                object_id: 1 << 40 | 9,
                payload: Some(object_value::Payload::Stored(Box::new(StoreLocation {
                    path: "/etc/passwd".into(),
                    size: u64::MAX,
                    node: "127.0.0.1:1".into(),
                }))),
            }),
            nested_refs: vec![1 << 40 | 1, u64::MAX],
        })),
        op(client_op::Op::GeneratorItem(fleet::proto::GeneratorItem {
            task_id: 1 << 40 | 1,
            index: 0,
            value: Some(inline(1 << 40 | 10, b"\x07")),
            nested_refs: vec![],
        })),
        op(client_op::Op::GeneratorAck(fleet::proto::GeneratorAck {
            task_id: 1 << 40 | 1,
            consumed: u64::MAX,
        })),
        op(client_op::Op::Lookup(Lookup {
            request_id: 1,
            name: "hits".into(),
        })),
        op(client_op::Op::WorkerExit(WorkerExit {
            worker_id: 1_000_000,
            status: "signal: 9".into(),
            started: true,
        })),
        op(client_op::Op::Log(LogLines {
            worker_id: 1_000_000,
            stderr: true,
            lines: vec!["a line".into(), String::new()],
        })),
    ]
}

fn client_frames() -> Vec<ClientFrame> {
    let ops = client_ops();
    let mut frames: Vec<ClientFrame> = ops
        .iter()
        .map(|o| ClientFrame {
            ops: vec![o.clone()],
        })
        .collect();
    frames.push(ClientFrame { ops });
    frames.push(ClientFrame::default());
    frames
}

fn head_frames() -> Vec<HeadFrame> {
    let ops = vec![
        hop(head_op::Op::Welcome(Box::new(Welcome {
            client_id: 3,
            store_dir: "/dev/shm/fleet-1-2".into(),
            node: "127.0.0.1:6380".into(),
            spill_dir: "/tmp/fleet-1-3".into(),
            store_capacity: 1 << 30,
            stores: vec![NodeInfo {
                address: "127.0.0.1:6380".into(),
                store_dir: "/dev/shm/fleet-1-2".into(),
                store_key: "5eed".into(),
                ..Default::default()
            }],
            max_pending_tasks: 10_000_000,
            summary_every_ms: 160,
        }))),
        hop(head_op::Op::Refused(
            "wrong or missing cluster token".into(),
        )),
        hop(head_op::Op::Execute(Box::new(task_spec(42)))),
        hop(head_op::Op::RunJob(Box::new(fleet::proto::RunJob {
            id: "job-0000002a".into(),
            binary_hash: "0123456789abcdef-42".into(),
            args: vec!["--flag".into(), String::new()],
            env: vec!["K=V".into()],
        }))),
        hop(head_op::Op::StopJob("job-0000002a".into())),
        hop(head_op::Op::GeneratorItem(fleet::proto::GeneratorItem {
            task_id: 42,
            index: 3,
            value: Some(inline(44, b"\x03")),
            nested_refs: vec![45],
        })),
        hop(head_op::Op::GeneratorAck(fleet::proto::GeneratorAck {
            task_id: 42,
            consumed: u64::MAX,
        })),
        hop(head_op::Op::Ready(inline(42, b"\x01\x02"))),
        hop(head_op::Op::Ready(ObjectValue {
            object_id: 43,
            payload: Some(object_value::Payload::Stored(Box::new(StoreLocation {
                path: "/dev/shm/fleet-1-2/000000000000002b".into(),
                size: 12345,
                node: "127.0.0.1:6380".into(),
            }))),
        })),
        hop(head_op::Op::DestroyActor(44)),
        hop(head_op::Op::SummaryEveryMs(160)),
        hop(head_op::Op::Reply(Reply {
            request_id: 1,
            actor_id: 45,
            class: "C".into(),
        })),
        hop(head_op::Op::SpawnWorker(SpawnWorker {
            worker_id: 9,
            job: 2,
            binary_hash: "abc-123".into(),
        })),
        hop(head_op::Op::FreeFile("000000000000002b".into())),
        hop(head_op::Op::Log(LogLines {
            worker_id: 9,
            stderr: false,
            lines: vec!["(f pid=1) hi".into()],
        })),
    ];
    let mut frames: Vec<HeadFrame> = ops
        .iter()
        .map(|o| HeadFrame {
            ops: vec![o.clone()],
        })
        .collect();
    frames.push(HeadFrame { ops });
    frames
}

fn chunks() -> Vec<BinaryChunk> {
    vec![
        BinaryChunk {
            hash: "0123456789abcdef-4096".into(),
            token: "a-token".into(),
            data: vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0].into(),
        },
        BinaryChunk {
            data: vec![0xaa; 300].into(),
            ..Default::default()
        },
        BinaryChunk::default(),
    ]
}

/// Throws random and mutated bytes at `T::decode`; returns how many inputs
/// decoded. Anything that decodes must re-encode to bytes that decode to
/// the same encoding again, and no input may cause an allocation much
/// larger than itself.
fn fuzz_prost<T: Message + Default>(name: &str, seeds: &[T], seed: u64, rounds: usize) -> usize {
    let encoded: Vec<Vec<u8>> = seeds.iter().map(|m| m.encode_to_vec()).collect();
    let mut rng = Rng::new(seed);
    let mut decoded = 0;
    let mut largest = 0;
    for round in 0..rounds {
        let input = if round % 5 == 0 || encoded.is_empty() {
            rng.bytes(256)
        } else {
            let base = &encoded[rng.below(encoded.len())];
            mutate(&mut rng, base, &encoded)
        };
        let (result, biggest) = largest_allocation(|| T::decode(input.as_slice()));
        largest = largest.max(biggest);
        assert!(
            biggest <= 64 * 1024 + 16 * input.len(),
            "{name}: decoding {} bytes allocated {biggest} bytes at once; input {input:?}",
            input.len()
        );
        if let Ok(m) = result {
            decoded += 1;
            let again = m.encode_to_vec();
            let back = T::decode(again.as_slice())
                .unwrap_or_else(|e| panic!("{name}: re-encoded message does not decode: {e}"));
            assert_eq!(back.encode_to_vec(), again, "{name}: unstable round trip");
        }
    }
    println!("{name}: {rounds} inputs, {decoded} decoded, largest allocation {largest} bytes");
    decoded
}

#[test]
fn prost_decoders_survive_random_and_mutated_bytes() {
    fuzz_prost("ClientFrame", &client_frames(), 1, 20_000);
    fuzz_prost("ClientOp", &client_ops(), 2, 10_000);
    fuzz_prost("HeadFrame", &head_frames(), 3, 20_000);
    fuzz_prost("TaskSpec", &[task_spec(1), TaskSpec::default()], 4, 10_000);
    fuzz_prost("BinaryChunk", &chunks(), 5, 10_000);
    fuzz_prost(
        "Hello",
        &[hello("t", Role::Worker), hello("", Role::Node)],
        6,
        5_000,
    );
    fuzz_prost(
        "FetchObjectRequest",
        &[FetchObjectRequest {
            name: "000000000000002b".into(),
            token: "t".into(),
        }],
        7,
        2_000,
    );
    fuzz_prost(
        "FetchBinaryRequest",
        &[FetchBinaryRequest {
            hash: "abc-1".into(),
            token: "t".into(),
        }],
        8,
        2_000,
    );
}

#[test]
fn a_protobuf_length_claiming_a_huge_size_is_an_error_not_an_allocation() {
    for claimed in [
        u64::MAX,
        1 << 62,
        1 << 40,
        u32::MAX as u64,
        64 << 20,
        1 << 20,
    ] {
        // Field 3 (data, bytes) of BinaryChunk; field 1 (ops) of ClientFrame;
        // field 3 (args) of TaskSpec: a length and only a few bytes after it.
        for (name, tag) in [
            ("BinaryChunk", 0x1a),
            ("ClientFrame", 0x0a),
            ("TaskSpec", 0x1a),
        ] {
            let mut input = vec![tag];
            input.extend(varint(claimed));
            input.extend_from_slice(b"only a few bytes");
            let (failed, biggest) = largest_allocation(|| match name {
                "BinaryChunk" => BinaryChunk::decode(input.as_slice()).is_err(),
                "ClientFrame" => ClientFrame::decode(input.as_slice()).is_err(),
                _ => TaskSpec::decode(input.as_slice()).is_err(),
            });
            assert!(failed, "{name} with a length of {claimed} decoded");
            assert!(
                biggest < 4096,
                "{name} with a length of {claimed} allocated {biggest} bytes"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// postcard: user values.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Shape {
    Unit,
    Circle(f64),
    Poly {
        points: Vec<(i32, i32)>,
        label: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    id: u64,
    name: String,
    tags: Vec<String>,
    shape: Shape,
    scores: BTreeMap<String, i64>,
    flag: bool,
    c: char,
    big: u128,
    raw: Vec<u8>,
}

fn record(i: u64) -> Record {
    Record {
        id: i,
        name: format!("record {i}"),
        tags: vec!["a".into(), "ünï".into()],
        shape: Shape::Poly {
            points: vec![(1, -2), (i32::MAX, i32::MIN)],
            label: Some("p".into()),
        },
        scores: [("x".to_string(), -5), ("y".to_string(), i64::MAX)]
            .into_iter()
            .collect(),
        flag: true,
        c: '€',
        big: u128::MAX - i as u128,
        raw: vec![0, 1, 2, 255],
    }
}

/// Decodes `input` as each user type; returns how many decoded. Panics are
/// failures; errors are the expected outcome.
fn decode_all(input: &[u8]) -> usize {
    let mut ok = 0;
    ok += usize::from(postcard::from_bytes::<Record>(input).is_ok());
    ok += usize::from(postcard::from_bytes::<Shape>(input).is_ok());
    ok += usize::from(postcard::from_bytes::<Vec<u64>>(input).is_ok());
    ok += usize::from(postcard::from_bytes::<Vec<String>>(input).is_ok());
    ok += usize::from(postcard::from_bytes::<HashMap<u32, Vec<u8>>>(input).is_ok());
    ok += usize::from(postcard::from_bytes::<(String, Option<f32>, i16)>(input).is_ok());
    ok += usize::from(postcard::from_bytes::<Blob>(input).is_ok());
    ok += usize::from(postcard::from_bytes::<Vec<Vec<Vec<u8>>>>(input).is_ok());
    ok
}

#[test]
fn postcard_decoding_of_random_and_mutated_values_never_panics() {
    let seeds: Vec<Vec<u8>> = (0..8)
        .map(|i| postcard::to_allocvec(&record(i)).expect("encode"))
        .chain([
            postcard::to_allocvec(&vec![1u64, 2, u64::MAX]).expect("encode"),
            postcard::to_allocvec(&Shape::Circle(1.5)).expect("encode"),
            postcard::to_allocvec(&Blob::from(vec![9u8; 64])).expect("encode"),
        ])
        .collect();
    let mut rng = Rng::new(11);
    let mut decoded = 0;
    let mut largest = 0;
    const ROUNDS: usize = 20_000;
    for round in 0..ROUNDS {
        let input = if round % 4 == 0 {
            rng.bytes(200)
        } else {
            mutate_any(&mut rng, &seeds)
        };
        let (n, biggest) = largest_allocation(|| decode_all(&input));
        decoded += n;
        largest = largest.max(biggest);
        assert!(
            biggest <= LENGTH_ALONE_MAY_RESERVE + 64 * input.len(),
            "decoding {} bytes allocated {biggest} bytes at once: {input:?}",
            input.len()
        );
    }
    println!("postcard: {ROUNDS} inputs x 8 types, {decoded} decoded, largest allocation {largest} bytes");
}

/// What a length word alone may make a decoder reserve. serde caps a
/// collection's preallocation at 1 MiB of elements; postcard checks a
/// sequence's claimed length against the input left (so a short input
/// reserves nothing) but passes a map's claimed length on unchecked, and a
/// hash map's table holds about twice its entries: about 2.1 MiB.
const LENGTH_ALONE_MAY_RESERVE: usize = 4 << 20;

#[test]
fn a_postcard_length_claiming_a_huge_size_is_an_error_not_an_allocation() {
    for claimed in [
        u64::MAX,
        1 << 62,
        1 << 40,
        u32::MAX as u64,
        1 << 30,
        1 << 24,
    ] {
        let mut input = varint(claimed);
        input.extend_from_slice(&[7u8; 24]);
        let (errors, biggest) = largest_allocation(|| {
            [
                postcard::from_bytes::<Vec<u8>>(&input).is_err(),
                postcard::from_bytes::<Vec<u64>>(&input).is_err(),
                postcard::from_bytes::<String>(&input).is_err(),
                postcard::from_bytes::<Vec<String>>(&input).is_err(),
                postcard::from_bytes::<HashMap<u64, u64>>(&input).is_err(),
                postcard::from_bytes::<Blob>(&input).is_err(),
                postcard::from_bytes::<Vec<(u8, u8)>>(&input).is_err(),
            ]
        });
        assert!(
            errors.iter().all(|e| *e),
            "a length of {claimed} with 24 bytes after it decoded: {errors:?}"
        );
        assert!(
            biggest <= LENGTH_ALONE_MAY_RESERVE,
            "a length of {claimed} made an allocation of {biggest} bytes"
        );
        // A sequence's length is checked against the input left: nothing
        // is reserved for it.
        let (_, seq) = largest_allocation(|| postcard::from_bytes::<Vec<u64>>(&input).is_err());
        assert!(
            seq < 4096,
            "Vec<u64> claiming {claimed}: {seq} bytes reserved"
        );
        println!(
            "postcard length {claimed}: every type refused, largest allocation {biggest} bytes"
        );
    }
}

// ---------------------------------------------------------------------------
// Through the public API: values read as another type.

/// A value whose postcard encoding is exactly these bytes (a tuple of
/// `u8`s carries no length and each `u8` is one raw byte).
struct Raw(Vec<u8>);

impl Serialize for Raw {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(self.0.len())?;
        for b in &self.0 {
            t.serialize_element(b)?;
        }
        t.end()
    }
}

/// The same object under another type: refs travel as their ids only, so
/// encoding one and decoding it as another type is how any peer (or a bug)
/// would confuse them.
fn reinterpret<A, B>(r: &ObjectRef<A>) -> ObjectRef<B> {
    let bytes = postcard::to_allocvec(r).expect("encoding a ref");
    postcard::from_bytes(&bytes).expect("decoding a ref")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Point {
    x: u64,
    label: String,
    history: Vec<u32>,
}

#[remote]
fn make_bytes(len: usize, fill: u8) -> Vec<u8> {
    vec![fill; len]
}

#[remote]
fn x_of(p: Point) -> u64 {
    p.x
}

#[remote]
fn record_id(r: Record) -> u64 {
    r.id
}

#[remote]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

/// The cluster still runs tasks.
fn assert_serving() {
    let refs: Vec<ObjectRef<u64>> = (0..20u64).map(|x| add::remote(x, x)).collect();
    assert_eq!(
        fleet::get_all_timeout(&refs, Some(GENEROUS)).expect("the cluster still runs tasks"),
        (0..20u64).map(|x| 2 * x).collect::<Vec<_>>()
    );
}

fn expect_codec<T: std::fmt::Debug>(what: &str, r: fleet::Result<T>) {
    match r {
        Err(Error::Codec(m)) => assert!(!m.is_empty(), "{what}: empty message"),
        other => panic!("{what}: expected Error::Codec, got {other:?}"),
    }
}

#[test]
fn a_value_read_as_another_type_is_a_codec_error_not_a_panic() {
    let c = common::cluster(2);
    // 0xff bytes: every length and varint inside `Point` runs off the end.
    for len in [1usize, 5, 100, 4096, 200 * 1024] {
        let bytes = make_bytes::remote(len, 0xff);
        assert_eq!(fleet::get(&bytes).expect("the task").len(), len);
        let as_point: ObjectRef<Point> = reinterpret(&bytes);
        // In the driver (inline, or mapped from the store past 100 KiB).
        expect_codec(
            &format!("Vec<u8> of {len} read as Point"),
            fleet::get(&as_point),
        );
        // In a worker: the argument does not decode; the task fails.
        expect_codec(
            &format!("Vec<u8> of {len} passed as Point"),
            fleet::get_timeout(&x_of::remote(&as_point), Some(GENEROUS)),
        );
    }
    // An empty vector: one zero byte.
    let empty: ObjectRef<Record> = reinterpret(&make_bytes::remote(0, 0));
    expect_codec("an empty Vec<u8> read as Record", fleet::get(&empty));
    // A put read as another type, in the driver and in a task.
    let put = fleet::put(record(3)).expect("put");
    let as_shape: ObjectRef<Vec<Shape>> = reinterpret(&put);
    expect_codec("Record read as Vec<Shape>", fleet::get(&as_shape));
    assert_eq!(fleet::get(&record_id::remote(&put)).expect("right type"), 3);
    assert_serving();
    assert!(!c.worker_pids().is_empty());
}

#[test]
fn random_bytes_as_values_through_the_public_api() {
    let c = common::cluster(2);
    assert_serving();
    let pids_before = {
        let mut p = c.worker_pids();
        p.sort_unstable();
        p
    };
    let seeds: Vec<Vec<u8>> = (0..4)
        .map(|i| postcard::to_allocvec(&record(i)).expect("encode"))
        .collect();
    let mut rng = Rng::new(21);
    let (mut driver_ok, mut worker_ok, mut total) = (0, 0, 0);
    for batch in 0..5 {
        let mut refs: Vec<ObjectRef<Record>> = Vec::new();
        for i in 0..40 {
            let bytes = if i % 3 == 0 {
                rng.bytes(120)
            } else {
                mutate_any(&mut rng, &seeds)
            };
            // An object whose stored bytes are exactly `bytes`.
            let raw = fleet::put(Raw(bytes)).expect("put raw bytes");
            refs.push(reinterpret(&raw));
        }
        // Read in the driver: a value or a codec error, never a panic.
        for r in &refs {
            match fleet::get(r) {
                Ok(_) => driver_ok += 1,
                Err(Error::Codec(_)) => {}
                Err(e) => panic!("batch {batch}: expected a value or Error::Codec, got {e:?}"),
            }
        }
        // Read in workers, as task arguments.
        let ids: Vec<ObjectRef<u64>> = refs.iter().map(record_id::remote).collect();
        for r in &ids {
            match fleet::get_timeout(r, Some(GENEROUS)) {
                Ok(_) => worker_ok += 1,
                Err(Error::Codec(_)) => {}
                Err(e) => panic!("batch {batch}: expected a value or Error::Codec, got {e:?}"),
            }
        }
        total += refs.len();
        assert_serving();
    }
    assert_eq!(driver_ok, worker_ok, "driver and workers decode alike");
    // Workers start on demand, so the pool may have grown since; none of
    // those alive before may be gone.
    let pids_after = c.worker_pids();
    let gone: Vec<u32> = pids_before
        .iter()
        .copied()
        .filter(|p| !pids_after.contains(p))
        .collect();
    assert!(gone.is_empty(), "workers died of bad input: {gone:?}");
    println!(
        "public API: {total} random values, {driver_ok} decoded as Record, the rest Error::Codec"
    );
}

// ---------------------------------------------------------------------------
// Raw gRPC: mutated Session frames sent to the head.

/// A gRPC codec that passes message bytes through untouched, so any bytes
/// can be sent as a `ClientFrame`.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut v = vec![0; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

/// What the head answered on a raw session.
#[derive(Debug)]
enum Answer {
    Welcome,
    Refused(String),
    /// The stream ended or failed without an answer.
    Ended(String),
}

/// Sends `frames` (raw message bytes) on a new Session stream, then ends
/// the request stream; returns the head's first answer. Every frame the
/// head sends must decode as a `HeadFrame`.
async fn raw_session(channel: tonic::transport::Channel, frames: Vec<Vec<u8>>) -> Answer {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("the channel is ready");
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/fleet.v1.Head/Session");
    let request = tonic::Request::new(futures::stream::iter(frames));
    let response = match grpc.streaming(request, path, RawCodec).await {
        Ok(r) => r,
        Err(status) => return Answer::Ended(format!("status {status}")),
    };
    let mut inbound = response.into_inner();
    let mut answer = None;
    loop {
        match inbound.message().await {
            Ok(Some(bytes)) => {
                let frame = HeadFrame::decode(bytes.as_slice())
                    .unwrap_or_else(|e| panic!("the head sent bytes that are no HeadFrame: {e}"));
                if answer.is_none() {
                    answer = match frame.ops.first().and_then(|o| o.op.as_ref()) {
                        Some(head_op::Op::Welcome(_)) => Some(Answer::Welcome),
                        Some(head_op::Op::Refused(why)) => Some(Answer::Refused(why.clone())),
                        other => panic!("the head's first op was {other:?}"),
                    };
                }
            }
            Ok(None) => break,
            Err(status) => {
                if answer.is_none() {
                    answer = Some(Answer::Ended(format!("status {status}")));
                }
                break;
            }
        }
    }
    answer.unwrap_or_else(|| Answer::Ended("the stream ended".into()))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn channel(address: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connecting to the head")
}

/// Runs the sessions of one batch at once, each with a deadline.
fn run_batch(
    rt: &tokio::runtime::Runtime,
    address: &str,
    sessions: Vec<Vec<Vec<u8>>>,
) -> Vec<Answer> {
    rt.block_on(async {
        let ch = channel(address).await;
        let all = sessions.into_iter().map(|frames| {
            let ch = ch.clone();
            async move {
                tokio::time::timeout(GENEROUS, raw_session(ch, frames))
                    .await
                    .expect("the head neither answered nor ended a session")
            }
        });
        futures::future::join_all(all).await
    })
}

#[test]
fn mutated_session_frames_without_the_token_are_refused_or_dropped() {
    const BATCHES: usize = 20;
    const PER_BATCH: usize = 50;
    let c = common::cluster(2);
    let address = c.address().to_string();
    let rt = runtime();
    let seeds: Vec<Vec<u8>> = client_frames().iter().map(|f| f.encode_to_vec()).collect();
    let mut rng = Rng::new(31);
    let (mut refused, mut ended) = (0, 0);
    for batch in 0..BATCHES {
        let sessions: Vec<Vec<Vec<u8>>> = (0..PER_BATCH)
            .map(|_| {
                (0..1 + rng.below(3))
                    .map(|_| {
                        if rng.below(6) == 0 {
                            rng.bytes(300)
                        } else {
                            mutate_any(&mut rng, &seeds)
                        }
                    })
                    .collect()
            })
            .collect();
        for answer in run_batch(&rt, &address, sessions) {
            match answer {
                Answer::Welcome => {
                    panic!("batch {batch}: a session without the token was welcomed")
                }
                Answer::Refused(why) => {
                    assert!(!why.is_empty(), "a refusal without a reason");
                    refused += 1;
                }
                Answer::Ended(why) => {
                    if ended == 0 {
                        println!("e.g. a session ended with: {why}");
                    }
                    ended += 1;
                }
            }
        }
        assert_serving();
    }
    println!(
        "{} mutated sessions: {refused} refused with a message, {ended} ended by the head",
        BATCHES * PER_BATCH
    );
}

/// The token of this process's local cluster, as its workers hold it in
/// their environment (readable by the same user, as `/proc` allows).
fn local_token(c: &fleet::Cluster) -> String {
    let pid = common::wait_until("a worker process", GENEROUS, || {
        c.worker_pids().first().copied()
    });
    let env = std::fs::read(format!("/proc/{pid}/environ")).expect("reading a worker's environ");
    env.split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(b"FLEET_WORKER_TOKEN="))
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .expect("the worker's environment holds the token")
}

/// Uploads a (non-executable) file as a driver's executable, so that a raw
/// session may join as a driver over the network.
fn upload_fake_binary(rt: &tokio::runtime::Runtime, address: &str, token: &str, hash: &str) {
    rt.block_on(async {
        let mut client = proto::head_client::HeadClient::new(channel(address).await);
        client
            .upload_binary(futures::stream::iter([BinaryChunk {
                hash: hash.into(),
                token: token.into(),
                data: b"not an executable: fleet fuzz_inputs".to_vec().into(),
            }]))
            .await
            .expect("uploading with the right token");
    });
}

/// Ops that a mutated frame may carry after a valid hello. Nothing names a
/// store file: a `StoreLocation` is trusted by the head, which deletes the
/// file it names when the object is freed (see SECURITY.md).
fn ops_after_hello() -> Vec<ClientFrame> {
    let mut frames: Vec<ClientFrame> = client_ops()
        .into_iter()
        .filter(|o| !matches!(o.op, Some(client_op::Op::Hello(_))))
        .map(|o| ClientFrame { ops: vec![o] })
        .collect();
    let mut plain = task_spec(1 << 41 | 9);
    plain.create = None;
    plain.args.truncate(2);
    plain.node.clear();
    frames.push(ClientFrame {
        ops: vec![op(client_op::Op::Submit(Box::new(plain)))],
    });
    for f in &mut frames {
        for o in &mut f.ops {
            if let Some(client_op::Op::Submit(s)) = &mut o.op {
                s.args
                    .retain(|a| !matches!(a.kind, Some(arg::Kind::Stored(_))));
                s.node.clear();
            }
        }
    }
    frames
}

/// A random op, valid protobuf but with any values: ids from `ids` (or
/// anything), odd CPU counts, unknown functions and classes, bad values.
/// No `StoreLocation`s (see [`ops_after_hello`]), no reference of an
/// object to itself (a real client cannot make one; the head would keep it
/// forever), and no task that no node can ever run (more CPUs than any
/// node, or a node that does not exist): enough of those starve every
/// other task, see `tasks_no_node_can_run_do_not_starve_the_others`.
fn random_op(rng: &mut Rng, ids: &[u64]) -> ClientOp {
    let id = |rng: &mut Rng| {
        if rng.below(4) == 0 {
            rng.next_u64()
        } else {
            ids[rng.below(ids.len())]
        }
    };
    let name = |rng: &mut Rng| {
        let names = [
            "",
            "add",
            "fuzz_inputs::add",
            "x_of",
            "Counter",
            "hits",
            "\u{0}\u{ffff}",
        ];
        names[rng.below(names.len())].to_string()
    };
    let cpus = [0.0, 0.5, 1.0, 2.0, -1.0, -0.0, f64::NAN, f64::MIN_POSITIVE];
    match rng.below(12) {
        0..=3 => {
            let args = (0..rng.below(4))
                .map(|_| Arg {
                    kind: Some(if rng.below(2) == 0 {
                        arg::Kind::Value(rng.bytes(16).into())
                    } else {
                        arg::Kind::ObjectRef(id(rng))
                    }),
                })
                .collect();
            let create = (rng.below(4) == 0).then(|| {
                Box::new(ActorSpec {
                    class: name(rng),
                    name: name(rng),
                    max_restarts: rng.below(3) as u32,
                    max_task_retries: rng.below(3) as u32,
                    max_concurrency: rng.below(3) as u32,
                    detached: false,
                })
            });
            let mut spec = TaskSpec {
                task_id: id(rng),
                function: name(rng),
                args,
                nested_refs: (0..rng.below(3)).map(|_| id(rng)).collect(),
                num_cpus: cpus[rng.below(cpus.len())],
                max_retries: rng.below(4) as u32,
                actor_id: if rng.below(3) == 0 { id(rng) } else { 0 },
                create,
                node: String::new(),
                retry_on_error: rng.below(2) == 0,
                parent_task: if rng.below(3) == 0 { id(rng) } else { 0 },
                num_returns: [0, 1, 3, u32::MAX][rng.below(4)],
                // Amounts a node can give or the head must refuse: a task
                // no node could ever run would wait (as it should) in the
                // local cluster's job, which the fake sessions share.
                resources: (0..rng.below(3))
                    .map(|_| fleet::proto::Resource {
                        name: ["memory", ""][rng.below(2)].into(),
                        amount: [1.0, 0.0, -1.0, f64::NAN, f64::INFINITY][rng.below(5)],
                    })
                    .collect(),
                spread: rng.below(2) == 0,
                node_soft: if rng.below(2) == 0 {
                    name(rng)
                } else {
                    String::new()
                },
                generator: rng.below(3) == 0,
                generator_backpressure: [0, 1, 16, u32::MAX][rng.below(4)],
                retries_used: [0, 1, u32::MAX][rng.below(3)],
                subscribe: rng.below(2) == 0,
            };
            let me = spec.task_id;
            spec.args
                .retain(|a| !matches!(a.kind, Some(arg::Kind::ObjectRef(r)) if r == me));
            spec.nested_refs.retain(|r| *r != me);
            if spec.actor_id == me {
                spec.actor_id = 0;
            }
            op(client_op::Op::Submit(Box::new(spec)))
        }
        4 => {
            let me = id(rng);
            let nested: Vec<u64> = (0..rng.below(3))
                .map(|_| id(rng))
                .filter(|r| *r != me)
                .collect();
            op(client_op::Op::Put(Put {
                value: Some(inline(me, &rng.bytes(24))),
                nested_refs: nested,
            }))
        }
        5 => op(client_op::Op::Subscribe(id(rng))),
        6 => op(client_op::Op::Acquire(id(rng))),
        7 => op(client_op::Op::Release(id(rng))),
        8 => op(client_op::Op::Result(TaskResult {
            value: Some(inline(id(rng), &rng.bytes(8))),
            nested_refs: (0..rng.below(3)).map(|_| id(rng)).collect(),
            exec_micros: rng.next_u64(),
            start_micros: rng.next_u64(),
            more_returns: (0..rng.below(2))
                .map(|_| fleet::proto::Return {
                    value: Some(inline(id(rng), &rng.bytes(4))),
                    nested_refs: vec![],
                })
                .collect(),
        })),
        9 => op(client_op::Op::KillActor(id(rng))),
        10 => op(client_op::Op::Lookup(Lookup {
            request_id: rng.next_u64(),
            name: name(rng),
        })),
        _ => op(client_op::Op::Blocked(Blocked {
            task_id: id(rng),
            returned: (0..rng.below(3)).map(|_| id(rng)).collect(),
        })),
    }
}

#[test]
fn mutated_frames_after_a_valid_hello_leave_the_head_serving() {
    const BATCHES: usize = 20;
    const PER_BATCH: usize = 40;
    let c = common::cluster(2);
    // Relative paths in anything the head is fooled into deleting resolve
    // in a scratch folder, not in the source tree.
    let scratch = tempfile::tempdir().expect("temp dir");
    std::env::set_current_dir(scratch.path()).expect("chdir");
    let address = c.address().to_string();
    let token = local_token(&c);
    let rt = runtime();
    let binary = "fuzzinputs-0000";
    upload_fake_binary(&rt, &address, &token, binary);
    let seeds: Vec<Vec<u8>> = ops_after_hello()
        .iter()
        .map(|f| f.encode_to_vec())
        .collect();
    let mut rng = Rng::new(41);
    let mut welcomed = 0;
    for batch in 0..BATCHES {
        let sessions: Vec<Vec<Vec<u8>>> = (0..PER_BATCH)
            .map(|i| {
                let mut h = hello(&token, if i % 2 == 0 { Role::Driver } else { Role::Node });
                h.binary_hash = binary.into();
                if let Some(info) = &mut h.node_info {
                    info.address = format!("fuzz-node-{batch}-{i}:1");
                }
                let first = ClientFrame {
                    ops: vec![op(client_op::Op::Hello(Box::new(h)))],
                };
                // Ids of this session's own objects (client id << 40 | n),
                // of other sessions', and of the first few workers.
                let ids: Vec<u64> = (1..=4u64)
                    .flat_map(|n| (1..64u64).map(move |c| c << 40 | n))
                    .chain(1..8)
                    .collect();
                std::iter::once(first.encode_to_vec())
                    .chain((0..1 + rng.below(6)).map(|_| {
                        if rng.below(2) == 0 {
                            mutate_any(&mut rng, &seeds)
                        } else {
                            let ops = (0..1 + rng.below(8)).map(|_| random_op(&mut rng, &ids));
                            ClientFrame { ops: ops.collect() }.encode_to_vec()
                        }
                    }))
                    .collect()
            })
            .collect();
        for answer in run_batch(&rt, &address, sessions) {
            match answer {
                Answer::Welcome => welcomed += 1,
                other => panic!("batch {batch}: a valid hello was not welcomed: {other:?}"),
            }
        }
        assert_serving();
    }
    let counts = c.counts().expect("local cluster");
    println!("{welcomed} authenticated sessions sent mutated ops; the head serves on ({counts:?})");
    // Nothing the fake sessions submitted is left behind.
    common::wait_until(
        "the fake sessions' tasks and objects to be dropped",
        GENEROUS,
        || {
            let n = c.counts().expect("local cluster");
            (n.tasks == 0 && n.objects == 0).then_some(())
        },
    );
}

/// Not fuzzing but found by it: tasks that no node can run (more CPUs than
/// any node has, here) wait in the ready queue, which is expected; other
/// tasks, even of other jobs, must still run. The head's dispatch pass
/// (`head/scheduler.rs`, `State::dispatch`) gives up after `SCAN_LIMIT`
/// (64) tasks in a row that find no place, always starting from the front
/// of the queue, so 64 such tasks at the front starve everything behind
/// them for good.
#[test]
fn tasks_no_node_can_run_do_not_starve_the_others() {
    let c = common::cluster(2);
    assert_serving();
    for waiting in [10u64, 100] {
        let too_big: Vec<ObjectRef<u64>> = (0..waiting)
            .map(|x| add::options().num_cpus(64.0).remote(x, x))
            .collect();
        let small = add::remote(20, 22);
        let got = fleet::get_timeout(&small, Some(Duration::from_secs(60)));
        assert!(
            matches!(got, Ok(42)),
            "with {waiting} tasks asking for 64 CPUs (of 2) queued first, a 1-CPU task got \
             {got:?}; head counts {:?}",
            c.counts()
        );
        drop(too_big);
    }
}
