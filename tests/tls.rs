//! TLS for every connection: a cluster started with certificates serves
//! drivers and nodes that present the cluster CA's certificates, and a
//! client without TLS gets nowhere; workers' `Worker.Direct` streams too.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::cli::{fleet_bin, Child as Proc};

use fleet::{remote, Config, ObjectRef};

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success(), "openssl {args:?}");
}

/// A CA and one certificate for the name `fleet`, signed by it.
fn certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=fleet test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "node.key",
            "-out",
            "node.csr",
            "-subj",
            "/CN=fleet",
        ],
    );
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:fleet\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "node.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "node.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

/// A head and a node agent on 127.0.0.2 with certificates; returns the
/// certificates' folder, the head's address, the token and the processes.
fn tls_cluster(name: &str) -> (std::path::PathBuf, String, &'static str, Proc, Proc) {
    let dir = std::env::temp_dir().join(format!("fleet-tls-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    certificates(&dir);
    let token = "tls-test-token";
    let tls_args = |cmd: &mut Command| {
        cmd.arg("--tls-cert")
            .arg(dir.join("node.pem"))
            .arg("--tls-key")
            .arg(dir.join("node.key"))
            .arg("--tls-ca")
            .arg(dir.join("ca.pem"))
            .env("FLEET_TOKEN", token);
    };
    let mut head_cmd = Command::new(fleet_bin());
    head_cmd
        .args([
            "start",
            "--head",
            "--port",
            "0",
            "--no-dashboard",
            "--num-cpus",
            "1",
            "--block",
        ])
        .arg("--token-file")
        .arg(dir.join("token"));
    tls_args(&mut head_cmd);
    let head = Proc::spawn(&mut head_cmd);
    let address = head
        .expect_line("serving at")
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    let mut node_cmd = Command::new(fleet_bin());
    node_cmd.args([
        "start",
        "--address",
        &address,
        "--node-ip",
        "127.0.0.2",
        "--num-cpus",
        "1",
        "--block",
    ]);
    tls_args(&mut node_cmd);
    let node = Proc::spawn(&mut node_cmd);
    node.expect_line("joined the cluster");

    (dir, address, token, head, node)
}

/// Makes this process a TLS client of the cluster (read once per process).
fn tls_client(dir: &Path) {
    std::env::set_var(fleet::net::ENV_TLS_CERT, dir.join("node.pem"));
    std::env::set_var(fleet::net::ENV_TLS_KEY, dir.join("node.key"));
    std::env::set_var(fleet::net::ENV_TLS_CA, dir.join("ca.pem"));
    assert!(fleet::net::tls_enabled());
}

#[remote]
fn triple(x: u64) -> u64 {
    x * 3
}

#[test]
fn a_tls_cluster_serves_tls_clients_only() {
    let (dir, address, token, _head, _node) = tls_cluster("clients");

    // A client without TLS cannot even open a session.
    let plain = std::process::Command::new(fleet_bin())
        .args(["status", "--address", &address])
        .env("FLEET_TOKEN", token)
        .output()
        .expect("fleet status runs");
    assert!(!plain.status.success(), "a plain client must be refused");

    tls_client(&dir);
    let _driver = fleet::init_with(Config {
        address: Some(address.clone()),
        token: Some(token.into()),
        ..Default::default()
    })
    .expect("a TLS driver joins");
    let refs: Vec<ObjectRef<u64>> = (0..200).map(triple::remote).collect();
    assert_eq!(
        fleet::get_all(&refs).expect("results over TLS"),
        (0..200).map(|x| x * 3).collect::<Vec<u64>>()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[remote]
fn worker_pid() -> u32 {
    std::process::id()
}

/// A worker's `Worker.Direct` service uses the cluster's TLS settings: a
/// TLS client runs a task on it, a plain one cannot open a stream.
#[test]
fn a_workers_direct_stream_is_tls_too() {
    use fleet::proto::{self, direct_op, worker_client::WorkerClient, DirectFrame, DirectOp};
    let (dir, address, token, _head, _node) = tls_cluster("direct");
    tls_client(&dir);
    let _driver = fleet::init_with(Config {
        address: Some(address.clone()),
        token: Some(token.into()),
        ..Default::default()
    })
    .expect("a TLS driver joins");
    let pid = fleet::get(&worker_pid::remote()).expect("a worker runs");
    let listed = Command::new(fleet_bin())
        .args(["list", "workers", "--json", "--address", &address])
        .env("FLEET_TOKEN", token)
        .output()
        .expect("fleet list workers");
    assert!(listed.status.success(), "{listed:?}");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).expect("JSON");
    let row = rows
        .iter()
        .find(|r| r["pid"].as_u64() == Some(u64::from(pid)))
        .unwrap_or_else(|| panic!("worker {pid} not in {rows:?}"));
    let direct = row["direct_address"]
        .as_str()
        .expect("an address")
        .to_string();
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(async {
        let frame = |ops: Vec<DirectOp>| DirectFrame {
            ops,
            token: token.to_string(),
        };
        let spec = proto::TaskSpec {
            task_id: 0xd1ec_7115_0000_0001,
            function: "tls::triple".into(),
            args: vec![proto::Arg {
                kind: Some(proto::arg::Kind::Value(
                    postcard::to_stdvec(&14u64).expect("encode").into(),
                )),
            }],
            num_cpus: 1.0,
            ..Default::default()
        };
        let execute = DirectOp {
            op: Some(direct_op::Op::Execute(spec)),
        };
        // Without TLS: no stream.
        let plain = tonic::transport::Endpoint::from_shared(format!("http://{direct}"))
            .expect("endpoint")
            .connect()
            .await;
        if let Ok(channel) = plain {
            let opened = WorkerClient::new(channel)
                .direct(futures::stream::iter(vec![frame(Vec::new())]))
                .await;
            assert!(
                opened.is_err(),
                "a plain client opened a Worker.Direct stream"
            );
        }
        // With the cluster's certificates: the task runs.
        let channel = fleet::daemon::channel(&direct).await.expect("TLS channel");
        let (tx, rx) = futures::channel::mpsc::unbounded();
        tx.unbounded_send(frame(vec![execute])).expect("send");
        let mut inbound = WorkerClient::new(channel)
            .direct(rx)
            .await
            .expect("a TLS stream opens")
            .into_inner();
        let got = inbound
            .message()
            .await
            .expect("a frame")
            .expect("not ended");
        let Some(direct_op::Op::Result(r)) = got.ops.into_iter().next().and_then(|o| o.op) else {
            panic!("no result")
        };
        let Some(proto::object_value::Payload::Inline(bytes)) = r.value.and_then(|v| v.payload)
        else {
            panic!("not an inline value")
        };
        assert_eq!(postcard::from_bytes::<u64>(&bytes).expect("a u64"), 42);
        drop(tx);
    });
    let _ = std::fs::remove_dir_all(&dir);
}
