//! What the cluster promises about access (see SECURITY.md), checked on
//! real `fleet start` processes:
//!
//! - every RPC without the right token is refused with `Unauthenticated`
//!   (`Status`, `Timeline`, `FetchBinary`, `UploadBinary`, and
//!   `Node.FetchObject` on the head and on a node agent), nothing is stored
//!   by a refused upload, and the head keeps serving;
//! - the token file `fleet start --head --token-file F` writes is mode 0600
//!   and holds a fresh random token;
//! - `Node.FetchObject` and the executable RPCs refuse names that could
//!   reach outside their folders (`../../etc/passwd`);
//! - a worker of another build, or a peer of another protocol version, is
//!   refused with a message naming both builds or both versions;
//! - the head, a local cluster and the dashboard listen on loopback only by
//!   default, and the dashboard answers nothing but reads.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::cli::{fleet_bin, Child as Proc};
use common::GENEROUS;
use fleet::proto::{
    client_op, head_client::HeadClient, head_op, node_client::NodeClient, BinaryChunk, ClientFrame,
    ClientOp, FetchBinaryRequest, FetchObjectRequest, Hello, Role, StatusRequest,
};
use fleet::{remote, ObjectRef};
use futures::StreamExt;
use tonic::Code;

// ---------------------------------------------------------------------------
// `fleet start` processes.

/// A head started with `fleet start --head`.
struct Head {
    address: String,
    token: String,
    token_file: PathBuf,
    /// The dashboard's address, when asked for one.
    dashboard: Option<String>,
    proc: Proc,
    _dir: tempfile::TempDir,
}

impl Head {
    /// `token`: given through `FLEET_TOKEN`; `None`: the head makes one.
    fn start(token: Option<&str>, dashboard: bool) -> Head {
        let dir = tempfile::tempdir().expect("temp dir");
        let token_file = dir.path().join("secrets").join("token");
        let mut cmd = Command::new(fleet_bin());
        cmd.args([
            "start",
            "--head",
            "--port",
            "0",
            "--block",
            "--num-cpus",
            "1",
        ])
        .arg("--token-file")
        .arg(&token_file);
        if dashboard {
            cmd.args(["--dashboard-port", "0"]);
        } else {
            cmd.arg("--no-dashboard");
        }
        match token {
            Some(t) => cmd.env("FLEET_TOKEN", t),
            None => cmd.env_remove("FLEET_TOKEN"),
        };
        let proc = Proc::spawn(&mut cmd);
        let dashboard = dashboard.then(|| {
            let line = proc.expect_line("dashboard at");
            let url = line.rsplit(' ').next().expect("dashboard url");
            url.trim_start_matches("http://").to_string()
        });
        let line = proc.expect_line("serving at");
        let address = line.rsplit(' ').next().expect("address").to_string();
        let token = std::fs::read_to_string(&token_file)
            .expect("the head wrote its token file")
            .trim()
            .to_string();
        Head {
            address,
            token,
            token_file,
            dashboard,
            proc,
            _dir: dir,
        }
    }

    /// Joins this head as a driver (one cluster per test process).
    fn join(&self) -> fleet::Cluster {
        fleet::init_with(fleet::Config {
            address: Some(self.address.clone()),
            token: Some(self.token.clone()),
            ..Default::default()
        })
        .expect("joining the cluster with the right token")
    }

    /// Starts a node agent on `ip`; returns its name (its address).
    fn add_node(&self, ip: &str) -> (String, Proc) {
        let node = Proc::spawn(
            Command::new(fleet_bin())
                .args(["start", "--address", &self.address, "--node-ip", ip])
                .args(["--block", "--num-cpus", "1"])
                .env("FLEET_TOKEN", &self.token),
        );
        (node.joined_node_name(), node)
    }
}

// ---------------------------------------------------------------------------
// gRPC helpers.

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn url(address: &str) -> String {
    format!("http://{address}")
}

/// Collects a chunk stream, or the status that ended it first.
async fn drain(mut s: tonic::Streaming<BinaryChunk>) -> Result<Vec<u8>, tonic::Status> {
    let mut out = Vec::new();
    while let Some(c) = s.message().await? {
        out.extend_from_slice(&c.data);
    }
    Ok(out)
}

/// The outcome of each RPC made with `token`, as (rpc, status code).
fn every_rpc(address: &str, node: &str, token: &str, object: &str) -> Vec<(&'static str, Code)> {
    let code = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
    rt().block_on(async {
        let mut head = HeadClient::connect(url(address))
            .await
            .expect("connecting to the head");
        let req = || StatusRequest {
            token: token.into(),
        };
        let status = code(head.status(req()).await.map(drop));
        let timeline = code(head.timeline(req()).await.map(drop));
        let fetch_binary = code(
            match head
                .fetch_binary(FetchBinaryRequest {
                    hash: "0123456789abcdef-42".into(),
                    token: token.into(),
                })
                .await
            {
                Ok(s) => drain(s.into_inner()).await.map(drop),
                Err(s) => Err(s),
            },
        );
        let upload = code(
            head.upload_binary(futures::stream::iter([
                BinaryChunk {
                    hash: "security-test-upload".into(),
                    token: token.into(),
                    data: b"#!/bin/sh\necho pwned\n".to_vec().into(),
                },
                BinaryChunk {
                    data: b"more".to_vec().into(),
                    ..Default::default()
                },
            ]))
            .await
            .map(drop),
        );
        let fetch_object = |at: String| {
            let (token, object) = (token.to_string(), object.to_string());
            async move {
                let mut n = NodeClient::connect(url(&at))
                    .await
                    .expect("connecting to a Node service");
                code(
                    match n
                        .fetch_object(FetchObjectRequest {
                            name: object,
                            token,
                        })
                        .await
                    {
                        Ok(s) => drain(s.into_inner()).await.map(drop),
                        Err(s) => Err(s),
                    },
                )
            }
        };
        let on_head = fetch_object(address.to_string()).await;
        let on_node = fetch_object(node.to_string()).await;
        vec![
            ("Head.Status", status),
            ("Head.Timeline", timeline),
            ("Head.FetchBinary", fetch_binary),
            ("Head.UploadBinary", upload),
            ("Node.FetchObject on the head", on_head),
            ("Node.FetchObject on a node agent", on_node),
        ]
    })
}

#[remote]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

fn assert_serving() {
    let refs: Vec<ObjectRef<u64>> = (0..20u64).map(|x| add::remote(x, 1)).collect();
    assert_eq!(
        fleet::get_all_timeout(&refs, Some(GENEROUS)).expect("the cluster still runs tasks"),
        (1..21u64).collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------
// The tests.

#[test]
fn every_rpc_without_the_right_token_is_unauthenticated() {
    let token = format!(
        "security-{}-{:x}",
        std::process::id(),
        rand::random::<u64>()
    );
    let head = Head::start(Some(&token), false);
    let (node, _agent) = head.add_node("127.0.0.2");
    let _driver = head.join();
    assert_serving();
    // A real object in the head's store, so that a refused fetch is refused
    // for the token and not because there is nothing to fetch.
    let big = fleet::put(vec![7u8; 512 * 1024]).expect("a stored put");
    let object = big.id().to_string();
    let near_misses = [
        String::new(),
        "wrong".to_string(),
        token[..token.len() - 1].to_string(),
        format!("{token}x"),
        format!(" {token}"),
        token.to_uppercase(),
    ];
    for wrong in &near_misses {
        for (rpc, code) in every_rpc(&head.address, &node, wrong, &object) {
            assert_eq!(
                code,
                Code::Unauthenticated,
                "{rpc} with token {wrong:?} was not refused as unauthenticated"
            );
        }
    }
    // The refused upload stored nothing: with the right token the hash is
    // unknown (the stream ends with NotFound).
    let after_refused_upload = rt().block_on(async {
        let mut head_client = HeadClient::connect(url(&head.address))
            .await
            .expect("connect");
        match head_client
            .fetch_binary(FetchBinaryRequest {
                hash: "security-test-upload".into(),
                token: token.clone(),
            })
            .await
        {
            Ok(s) => drain(s.into_inner()).await.map(|b| b.len()),
            Err(s) => Err(s),
        }
    });
    assert_eq!(
        after_refused_upload.map_err(|s| s.code()),
        Err(Code::NotFound),
        "a refused upload left a file behind"
    );
    // With the right token the same calls work, and the object's bytes come
    // back from the head's store; the head keeps serving.
    let rights = every_rpc(&head.address, &node, &token, &object);
    for (rpc, code) in &rights {
        match *rpc {
            "Head.FetchBinary" | "Node.FetchObject on a node agent" => {
                assert_eq!(*code, Code::NotFound, "{rpc} with the right token")
            }
            _ => assert_eq!(*code, Code::Ok, "{rpc} with the right token"),
        }
    }
    assert_eq!(fleet::get(&big).expect("get").len(), 512 * 1024);
    assert_serving();
    println!(
        "{} wrong tokens x {} RPCs refused as Unauthenticated; the head serves on",
        near_misses.len(),
        rights.len()
    );
}

#[test]
fn the_token_file_is_private_and_holds_a_fresh_random_token() {
    let one = Head::start(None, false);
    let two = Head::start(None, false);
    for head in [&one, &two] {
        let meta = std::fs::metadata(&head.token_file).expect("token file");
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "{} is not private",
            head.token_file.display()
        );
        assert!(
            head.token.len() >= 32 && head.token.chars().all(|c| c.is_ascii_hexdigit()),
            "a weak token: {:?}",
            head.token
        );
    }
    assert_ne!(one.token, two.token, "two heads made the same token");
    // The file's token is the cluster's: Status works with it, and not
    // with the other head's.
    rt().block_on(async {
        let mut c = HeadClient::connect(url(&one.address))
            .await
            .expect("connect");
        c.status(StatusRequest {
            token: one.token.clone(),
        })
        .await
        .expect("status with the token from the file");
        let other = c
            .status(StatusRequest {
                token: two.token.clone(),
            })
            .await
            .expect_err("status with another cluster's token");
        assert_eq!(other.code(), Code::Unauthenticated);
    });
    // A token given through FLEET_TOKEN lands in a private file too.
    let given = Head::start(Some("given-token-0123456789"), false);
    assert_eq!(given.token, "given-token-0123456789");
    let mode = std::fs::metadata(&given.token_file)
        .expect("token file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn names_that_leave_the_store_are_refused() {
    let token = format!("security-{}", std::process::id());
    let head = Head::start(Some(&token), false);
    let (node, _agent) = head.add_node("127.0.0.2");
    let bad_names = [
        "../../etc/passwd",
        "/etc/passwd",
        "..",
        ".",
        "",
        "a/b",
        "..%2f..%2fetc%2fpasswd",
        "binaries/../../x",
        "0000000000000001\0",
        "\u{2215}etc\u{2215}passwd",
    ];
    let outcomes = rt().block_on(async {
        let mut out = Vec::new();
        for at in [head.address.clone(), node.clone()] {
            let mut n = NodeClient::connect(url(&at)).await.expect("connect");
            for name in bad_names {
                let r = match n
                    .fetch_object(FetchObjectRequest {
                        name: name.to_string(),
                        token: token.clone(),
                    })
                    .await
                {
                    Ok(s) => drain(s.into_inner()).await.map(|b| b.len()),
                    Err(s) => Err(s),
                };
                out.push((format!("Node.FetchObject {name:?} on {at}"), r));
            }
        }
        let mut h = HeadClient::connect(url(&head.address))
            .await
            .expect("connect");
        for name in bad_names {
            let r = match h
                .fetch_binary(FetchBinaryRequest {
                    hash: name.to_string(),
                    token: token.clone(),
                })
                .await
            {
                Ok(s) => drain(s.into_inner()).await.map(|b| b.len()),
                Err(s) => Err(s),
            };
            out.push((format!("Head.FetchBinary {name:?}"), r));
            let r = h
                .upload_binary(futures::stream::iter([BinaryChunk {
                    hash: name.to_string(),
                    token: token.clone(),
                    data: b"#!/bin/sh\necho pwned\n".to_vec().into(),
                }]))
                .await
                .map(|_| 0);
            out.push((format!("Head.UploadBinary {name:?}"), r));
        }
        out
    });
    for (what, r) in &outcomes {
        match r {
            Err(s) if s.code() == Code::InvalidArgument => {}
            // A name the check lets through must at least find nothing.
            Err(s) if s.code() == Code::NotFound => {
                panic!("{what} passed the name check (then found nothing): {s}")
            }
            other => panic!("{what} was not refused: {other:?}"),
        }
    }
    assert!(
        !Path::new("/etc/passwd.partial").exists() && !Path::new("/x").exists(),
        "an upload escaped its folder"
    );
    println!(
        "{} requests with names outside the store refused",
        outcomes.len()
    );
}

/// Opens a raw session with `hello`; returns the refusal, or `None` if the
/// head welcomed it (the session is then closed at once).
fn hello_answer(address: &str, hello: Hello) -> Option<String> {
    rt().block_on(async {
        let mut client = HeadClient::connect(url(address)).await.expect("connect");
        let first = ClientFrame {
            ops: vec![ClientOp {
                op: Some(client_op::Op::Hello(Box::new(hello))),
            }],
        };
        let outbound = futures::stream::iter([first]).chain(futures::stream::pending());
        let mut inbound = client
            .session(outbound)
            .await
            .expect("session")
            .into_inner();
        let frame = tokio::time::timeout(GENEROUS, inbound.message())
            .await
            .expect("an answer to hello")
            .expect("a frame")
            .expect("a frame, not the end");
        match frame.ops.into_iter().next().and_then(|o| o.op) {
            Some(head_op::Op::Refused(why)) => Some(why),
            Some(head_op::Op::Welcome(_)) => None,
            other => panic!("unexpected answer to hello: {other:?}"),
        }
    })
}

/// The job and node of the worker that runs it.
#[remote]
fn whose_worker() -> (u32, String) {
    let job = std::env::var("FLEET_WORKER_JOB").expect("FLEET_WORKER_JOB");
    let node = std::env::var("FLEET_WORKER_NODE").expect("FLEET_WORKER_NODE");
    (job.parse().expect("a job number"), node)
}

#[test]
fn a_worker_of_another_build_or_protocol_is_refused_naming_both() {
    let token = format!("security-{}", std::process::id());
    let head = Head::start(Some(&token), false);
    let _driver = head.join();
    let (job, node) = fleet::get(&whose_worker::remote()).expect("a task");
    let worker = |registry: &str, protocol: u32| Hello {
        protocol_version: protocol,
        registry_hash: registry.into(),
        role: Role::Worker.into(),
        pid: std::process::id(),
        worker_id: 999_999,
        token: token.clone(),
        job,
        node: node.clone(),
        ..Default::default()
    };
    let why = hello_answer(
        &head.address,
        worker("another-build-0badc0de", fleet::PROTOCOL_VERSION),
    )
    .expect("a worker of another build was welcomed");
    println!("refused: {why}");
    assert!(
        why.contains("another-build-0badc0de"),
        "names the worker's build: {why}"
    );
    // ... and the driver's: the build the refusal names is the one that
    // the head then accepts.
    let theirs = why
        .rsplit("driver's build ")
        .next()
        .filter(|b| !b.is_empty() && *b != why)
        .unwrap_or_else(|| panic!("the refusal does not name the driver's build: {why}"))
        .trim()
        .to_string();
    assert_ne!(theirs, "another-build-0badc0de");
    assert_eq!(
        hello_answer(&head.address, worker(&theirs, fleet::PROTOCOL_VERSION)),
        None,
        "the build named in the refusal is not the driver's"
    );
    // Another protocol version: both versions named.
    let other = fleet::PROTOCOL_VERSION + 4242;
    let why = hello_answer(&head.address, worker(&theirs, other))
        .expect("a worker of another protocol version was welcomed");
    println!("refused: {why}");
    assert!(
        why.contains(&other.to_string()) && why.contains(&fleet::PROTOCOL_VERSION.to_string()),
        "the refusal names both protocol versions: {why}"
    );
    assert_serving();
}

/// Local addresses of the TCP sockets `pid` listens on, from /proc.
fn listening(pid: u32) -> Vec<std::net::SocketAddr> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("reading the process's descriptors")
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .map(str::to_string)
        })
        .collect();
    let mut out = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address, st (0A = LISTEN), inode.
            if f.len() < 10 || f[3] != "0A" || !inodes.iter().any(|i| i == f[9]) {
                continue;
            }
            let (ip, port) = f[1].split_once(':').expect("address:port");
            let port = u16::from_str_radix(port, 16).expect("port");
            let ip: std::net::IpAddr = if ip.len() == 8 {
                let v = u32::from_str_radix(ip, 16).expect("ipv4");
                std::net::Ipv4Addr::from(v.swap_bytes()).into()
            } else {
                let mut b = [0u8; 16];
                for (i, chunk) in b.chunks_mut(4).enumerate() {
                    let w = u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).expect("ipv6");
                    chunk.copy_from_slice(&w.to_le_bytes());
                }
                std::net::Ipv6Addr::from(b).into()
            };
            out.push(std::net::SocketAddr::new(ip, port));
        }
    }
    out
}

/// Sends one HTTP/1.0 request; returns the status code.
fn http(address: &str, method: &str, path: &str) -> u16 {
    let mut s = std::net::TcpStream::connect(address).expect("connecting to the dashboard");
    s.set_read_timeout(Some(GENEROUS)).expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {address}\r\nContent-Length: 2\r\n\r\n{{}}"
    )
    .expect("writing");
    let mut head = [0u8; 12];
    s.read_exact(&mut head).expect("a status line");
    std::str::from_utf8(&head[9..12])
        .expect("status")
        .parse()
        .expect("a status code")
}

#[test]
fn everything_listens_on_loopback_and_the_dashboard_only_reads() {
    let head = Head::start(Some("loopback-test-token"), true);
    let sockets = listening(head.proc.child.id());
    assert!(
        sockets.len() >= 2,
        "the head listens (gRPC, dashboard): {sockets:?}"
    );
    for s in &sockets {
        assert!(
            s.ip().is_loopback(),
            "the head listens on {s} (not loopback)"
        );
    }
    let dashboard = head.dashboard.clone().expect("a dashboard");
    assert!(
        dashboard.starts_with("127.0.0.1:"),
        "dashboard at {dashboard}"
    );
    assert_eq!(http(&dashboard, "GET", "/api/snapshot"), 200);
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        for path in ["/", "/api/snapshot", "/api/timeline", "/api/events"] {
            let code = http(&dashboard, method, path);
            assert!(
                code == 405 || code == 404,
                "{method} {path} on the dashboard answered {code}"
            );
        }
    }
    for path in ["/api/kill", "/api/stop", "/api/submit", "/../../etc/passwd"] {
        let code = http(&dashboard, "GET", path);
        assert!(code == 404 || code == 400, "GET {path} answered {code}");
    }
    // A local cluster (fleet::init) too: its head and dashboard.
    let c = common::cluster(1);
    assert!(c.address().starts_with("127.0.0.1:"), "{}", c.address());
    if let Some(u) = c.dashboard_url() {
        assert!(u.starts_with("http://127.0.0.1:"), "{u}");
    }
    let mine = listening(std::process::id());
    assert!(!mine.is_empty(), "the local cluster listens");
    for s in &mine {
        assert!(s.ip().is_loopback(), "the local cluster listens on {s}");
    }
    println!("head sockets {sockets:?}; local cluster sockets {mine:?}");
}

/// The default token file (`$TMPDIR/fleet-$UID/token`) stays where the
/// head wrote it. Run as an ordinary user: as root this test starts the
/// head as `nobody` (uid 65534); otherwise as the current user.
///
/// `ObjectStore::create` (`runtime/src/node/object_store.rs`) sweeps
/// folders named `fleet-<pid>-...` of dead processes from the spill base,
/// which defaults to the temp dir, and takes `fleet-<uid>` (the runtime
/// folder holding the token, pid files and logs) for one: it parses the
/// uid as a pid and removes the folder unless a process with that pid
/// lives (for root, `kill(0, 0)` always succeeds, so root never sees it).
#[test]
fn the_default_token_file_survives_the_head_starting() {
    // SAFETY: getuid cannot fail.
    let me = unsafe { libc::getuid() };
    let root = me == 0;
    let uid: u32 = if root { 65534 } else { me };
    let tmp = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    // `nobody` may not enter the checkout (a home folder, a `mktemp -d`):
    // it runs a copy of the CLI in the temp folder instead.
    let bin = if root {
        let copy = tmp.path().join("fleet");
        std::fs::copy(fleet_bin(), &copy).expect("copy the fleet CLI");
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        if let Some(why) = not_reachable_by_others(&copy) {
            eprintln!("SKIPPED: user nobody cannot run {}: {why}", copy.display());
            return;
        }
        copy
    } else {
        fleet_bin()
    };
    let mut cmd = Command::new(&bin);
    cmd.args([
        "start",
        "--head",
        "--port",
        "0",
        "--block",
        "--no-dashboard",
    ])
    .args(["--num-cpus", "0"])
    .env("TMPDIR", tmp.path())
    .env_remove("FLEET_TOKEN")
    .env_remove("FLEET_SPILL_DIR");
    if root {
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(65534) != 0
                    || libc::setuid(65534) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let head = Proc::spawn(&mut cmd);
    let line = head.expect_line("serving at");
    let token_file = tmp.path().join(format!("fleet-{uid}")).join("token");
    let pid_alive = Path::new(&format!("/proc/{uid}")).exists();
    assert!(
        token_file.is_file(),
        "after `{line}`, the head's token file {} is gone (user {uid}; a process with pid \
         {uid} {})",
        token_file.display(),
        if pid_alive {
            "exists"
        } else {
            "does not exist"
        },
    );
    let mode = std::fs::metadata(&token_file)
        .expect("token file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// Why a user other than the owner cannot run `file`: a folder on its path
/// that others may not enter, or a file they may not read and run.
fn not_reachable_by_others(file: &Path) -> Option<String> {
    for dir in file.ancestors().skip(1) {
        let mode = std::fs::metadata(dir).ok()?.permissions().mode();
        if mode & 0o001 == 0 {
            return Some(format!("others may not enter {}", dir.display()));
        }
    }
    let mode = std::fs::metadata(file).ok()?.permissions().mode();
    (mode & 0o005 != 0o005).then(|| format!("others may not read and run it (mode {mode:o})"))
}
