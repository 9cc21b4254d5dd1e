//! A driver's side of a worker's `Worker.Direct` stream, raw (built from
//! `fleet::proto` and tonic), for tests that talk to a worker without the
//! driver's lease machinery: open a stream with a token, send tasks and
//! cancels, read results.

use fleet::proto::{
    self, arg, direct_op, object_value::Payload, worker_client::WorkerClient, DirectFrame,
    DirectOp, ErrorKind, TaskSpec,
};

use super::GENEROUS;

/// The spec of a call of `function` (its stable name, `module::name`)
/// with arguments encoded as `#[remote]` encodes them.
pub(crate) fn spec(id: u64, function: &str, args: Vec<Vec<u8>>) -> TaskSpec {
    TaskSpec {
        task_id: id,
        function: function.to_string(),
        args: args
            .into_iter()
            .map(|a| proto::Arg {
                kind: Some(arg::Kind::Value(a.into())),
            })
            .collect(),
        num_cpus: 1.0,
        ..Default::default()
    }
}

pub(crate) fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("encoding")
}

pub(crate) fn execute(spec: TaskSpec) -> DirectOp {
    DirectOp {
        op: Some(direct_op::Op::Execute(spec)),
    }
}

pub(crate) fn cancel(id: u64, force: bool) -> DirectOp {
    DirectOp {
        op: Some(direct_op::Op::Cancel(proto::Cancel {
            task_id: id,
            force,
            ..Default::default()
        })),
    }
}

/// Ids of this test's direct tasks: far from any session's prefix.
pub(crate) fn id(n: u64) -> u64 {
    0xd1ec_7000_0000_0000 | n
}

/// One `Worker.Direct` stream, as a driver holds it.
pub(crate) struct Stream {
    tx: futures::channel::mpsc::UnboundedSender<DirectFrame>,
    rx: tonic::Streaming<DirectFrame>,
    /// Frames received so far.
    pub(crate) frames: usize,
}

pub(crate) async fn open(address: &str, token: &str) -> Result<Stream, tonic::Status> {
    let channel = fleet::daemon::channel(address)
        .await
        .expect("connecting to the worker");
    let mut client = WorkerClient::new(channel);
    let (tx, rx) = futures::channel::mpsc::unbounded();
    tx.unbounded_send(DirectFrame {
        ops: Vec::new(),
        token: token.to_string(),
    })
    .expect("first frame");
    let response = client.direct(rx).await?;
    Ok(Stream {
        tx,
        rx: response.into_inner(),
        frames: 0,
    })
}

impl Stream {
    pub(crate) fn send(&self, ops: Vec<DirectOp>) {
        self.tx
            .unbounded_send(DirectFrame {
                ops,
                token: String::new(),
            })
            .expect("the stream is open");
    }

    /// The next operation the worker sends (None: the stream ended).
    pub(crate) async fn next_ops(&mut self) -> Option<Vec<direct_op::Op>> {
        let frame = tokio::time::timeout(GENEROUS, self.rx.message())
            .await
            .expect("a frame within the time limit")
            .ok()??;
        self.frames += 1;
        Some(frame.ops.into_iter().filter_map(|o| o.op).collect())
    }

    /// Collects operations until `done` says enough.
    pub(crate) async fn until(
        &mut self,
        mut done: impl FnMut(&[direct_op::Op]) -> bool,
    ) -> Vec<direct_op::Op> {
        let mut got = Vec::new();
        while !done(&got) {
            match self.next_ops().await {
                Some(ops) => got.extend(ops),
                None => panic!("the stream ended after {got:?}"),
            }
        }
        got
    }
}

pub(crate) fn results(ops: &[direct_op::Op]) -> Vec<&proto::TaskResult> {
    ops.iter()
        .filter_map(|o| match o {
            direct_op::Op::Result(r) => Some(r),
            _ => None,
        })
        .collect()
}

pub(crate) fn result_of(ops: &[direct_op::Op], task: u64) -> Option<&proto::TaskResult> {
    results(ops)
        .into_iter()
        .find(|r| r.value.as_ref().map(|v| v.object_id) == Some(task))
}

pub(crate) fn payload(r: &proto::TaskResult) -> &Payload {
    r.value
        .as_ref()
        .and_then(|v| v.payload.as_ref())
        .expect("a payload")
}

pub(crate) fn value_u64(r: &proto::TaskResult) -> u64 {
    match payload(r) {
        Payload::Inline(b) => postcard::from_bytes(b).expect("a u64"),
        other => panic!("not an inline value: {other:?}"),
    }
}

pub(crate) fn error_kind(r: &proto::TaskResult) -> Option<ErrorKind> {
    match payload(r) {
        Payload::Error(e) => Some(e.kind()),
        _ => None,
    }
}
