//! Bad input on the head's port: raw TCP garbage, an HTTP/1.1 request, a
//! silent connection, and raw gRPC sessions (built from `fleet::proto`)
//! that open with something other than `Hello`, or a `Hello` with a wrong
//! token or protocol version. Each is refused with a clear message, and the
//! cluster keeps serving tasks afterwards.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;

use common::{cluster, GENEROUS};
use fleet::proto::{
    client_op, head_client::HeadClient, head_op, ClientFrame, ClientOp, Hello, Role,
};
use fleet::remote;
use futures::StreamExt;

#[remote]
fn square(x: u64) -> u64 {
    x * x
}

/// The cluster still runs tasks.
fn assert_serving() {
    let refs: Vec<_> = (0..50u64).map(square::remote).collect();
    assert_eq!(
        fleet::get_all_timeout(&refs, Some(GENEROUS)).expect("get_all"),
        (0..50u64).map(|x| x * x).collect::<Vec<_>>()
    );
}

/// Sends `bytes` on a fresh connection and reads until the head closes it.
/// Returns what the head sent back.
fn send_raw(address: &str, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(address).expect("connecting to the head");
    s.set_read_timeout(Some(GENEROUS)).expect("read timeout");
    s.write_all(bytes).expect("writing");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
                return got
            }
            Err(e) => panic!("the head kept a bad connection open ({e}); got {got:?}"),
        }
    }
}

#[test]
fn garbage_bytes_are_dropped_and_the_cluster_goes_on() {
    let c = cluster(2);
    let address = c.address().to_string();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    send_raw(&address, &noise);
    send_raw(&address, b"GET / HTTP/1.1\r\nHost: fleet\r\n\r\n");
    // A valid HTTP/2 preface followed by frames that make no sense.
    let mut bad_h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bad_h2.extend_from_slice(&noise[..512]);
    send_raw(&address, &bad_h2);
    // Many at once.
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let (address, noise) = (address.clone(), noise.clone());
            std::thread::spawn(move || send_raw(&address, &noise[i * 64..]))
        })
        .collect();
    for t in threads {
        t.join().expect("a garbage sender panicked");
    }
    assert_serving();
}

#[test]
fn a_silent_or_half_closed_connection_blocks_nothing() {
    let c = cluster(2);
    // Held open, never written to, while the cluster works.
    let silent = TcpStream::connect(c.address()).expect("connecting");
    // Closed half way through the HTTP/2 preface.
    let mut half = TcpStream::connect(c.address()).expect("connecting");
    half.write_all(b"PRI * HTTP/2.0\r\n").expect("writing");
    half.shutdown(std::net::Shutdown::Write).expect("shutdown");
    assert_serving();
    drop((silent, half));
    assert_serving();
}

/// What the head answered on a raw session that sent `first`.
enum Answer {
    Refused(String),
    Welcome,
    /// The stream ended (or failed) with no answer.
    Nothing(String),
}

/// Opens a raw gRPC session, sends one frame and keeps the request stream
/// open; returns the head's first answer, and checks the head ends the
/// session after a refusal.
fn raw_session(address: &str, first: ClientFrame) -> Answer {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let address = format!("http://{address}");
    rt.block_on(async move {
        let mut client = tokio::time::timeout(GENEROUS, HeadClient::connect(address))
            .await
            .expect("connecting timed out")
            .expect("connecting to the head");
        // One frame, then a request stream that stays open.
        let outbound = futures::stream::iter([first]).chain(futures::stream::pending());
        let response = tokio::time::timeout(GENEROUS, client.session(outbound))
            .await
            .expect("opening the session timed out");
        let mut inbound = match response {
            Ok(r) => r.into_inner(),
            Err(status) => return Answer::Nothing(format!("status: {status}")),
        };
        let frame = tokio::time::timeout(GENEROUS, inbound.message())
            .await
            .expect("no answer from the head");
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) => return Answer::Nothing("the stream ended".into()),
            Err(status) => return Answer::Nothing(format!("status: {status}")),
        };
        match frame.ops.into_iter().next().and_then(|o| o.op) {
            Some(head_op::Op::Refused(why)) => {
                // A refused session is over: the head ends the stream.
                let end = tokio::time::timeout(GENEROUS, inbound.message())
                    .await
                    .expect("the head kept a refused session open");
                assert!(
                    !matches!(end, Ok(Some(_))),
                    "the head sent more after refusing: {end:?}"
                );
                Answer::Refused(why)
            }
            Some(head_op::Op::Welcome(_)) => Answer::Welcome,
            other => Answer::Nothing(format!("unexpected first op: {other:?}")),
        }
    })
}

fn frame(op: client_op::Op) -> ClientFrame {
    ClientFrame {
        ops: vec![ClientOp { op: Some(op) }],
    }
}

fn hello(protocol_version: u32, token: &str) -> Hello {
    Hello {
        protocol_version,
        registry_hash: "not-a-real-build".into(),
        role: Role::Driver.into(),
        pid: std::process::id(),
        worker_id: 0,
        token: token.into(),
        ..Default::default()
    }
}

fn expect_refusal(answer: Answer, needle: &str) {
    match answer {
        Answer::Refused(why) => assert!(
            why.to_lowercase().contains(needle),
            "refusal {why:?} does not mention {needle:?}"
        ),
        Answer::Welcome => {
            panic!("the head welcomed a bad session (expected a refusal about {needle})")
        }
        Answer::Nothing(what) => panic!("no refusal (expected one about {needle}): {what}"),
    }
}

#[test]
fn a_session_must_open_with_hello() {
    let c = cluster(2);
    let address = c.address().to_string();
    expect_refusal(
        raw_session(&address, frame(client_op::Op::Subscribe(1))),
        "hello",
    );
    expect_refusal(
        raw_session(&address, frame(client_op::Op::Release(42))),
        "hello",
    );
    // An empty first frame is no hello either.
    expect_refusal(
        raw_session(&address, ClientFrame { ops: Vec::new() }),
        "hello",
    );
    assert_serving();
}

#[test]
fn a_wrong_token_is_refused() {
    let c = cluster(2);
    let address = c.address().to_string();
    let v = fleet::PROTOCOL_VERSION;
    expect_refusal(
        raw_session(
            &address,
            frame(client_op::Op::Hello(Box::new(hello(v, "not-the-token")))),
        ),
        "token",
    );
    expect_refusal(
        raw_session(
            &address,
            frame(client_op::Op::Hello(Box::new(hello(v, "")))),
        ),
        "token",
    );
    let mut worker = hello(v, "also-wrong");
    worker.role = Role::Worker.into();
    worker.worker_id = 1;
    expect_refusal(
        raw_session(&address, frame(client_op::Op::Hello(Box::new(worker)))),
        "token",
    );
    assert_serving();
}

#[test]
fn a_wrong_protocol_version_is_refused() {
    let c = cluster(2);
    let address = c.address().to_string();
    for v in [0, fleet::PROTOCOL_VERSION + 1, u32::MAX] {
        expect_refusal(
            raw_session(
                &address,
                frame(client_op::Op::Hello(Box::new(hello(v, "x")))),
            ),
            "protocol version",
        );
    }
    assert_serving();
}

#[test]
fn the_head_survives_a_burst_of_bad_sessions() {
    let c = cluster(2);
    let address = c.address().to_string();
    let threads: Vec<_> = (0..12u32)
        .map(|i| {
            let address = address.clone();
            std::thread::spawn(move || {
                let op = match i % 3 {
                    0 => client_op::Op::Hello(Box::new(hello(fleet::PROTOCOL_VERSION, "wrong"))),
                    1 => {
                        // Claims to be a worker, with this process's pid.
                        let mut h = hello(fleet::PROTOCOL_VERSION, "wrong");
                        h.role = Role::Worker.into();
                        h.worker_id = u64::from(i);
                        client_op::Op::Hello(Box::new(h))
                    }
                    _ => client_op::Op::Acquire(u64::from(i)),
                };
                matches!(raw_session(&address, frame(op)), Answer::Refused(_))
            })
        })
        .collect();
    for t in threads {
        assert!(
            t.join().expect("a session thread panicked"),
            "a bad session was not refused"
        );
    }
    assert_serving();
    // No refused "worker" made it into the head's worker table.
    let counts = c.counts().expect("local cluster");
    assert!(
        !counts.worker_pids.contains(&std::process::id()),
        "a refused session was registered as a worker: {counts:?}"
    );
}
