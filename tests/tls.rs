//! TLS for every connection: a cluster started with certificates serves
//! drivers and nodes that present the cluster CA's certificates, and a
//! client without TLS gets nowhere.

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

#[remote]
fn triple(x: u64) -> u64 {
    x * 3
}

#[test]
fn a_tls_cluster_serves_tls_clients_only() {
    let dir = std::env::temp_dir().join(format!("fleet-tls-{}", std::process::id()));
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

    // A client without TLS cannot even open a session.
    let plain = std::process::Command::new(fleet_bin())
        .args(["status", "--address", &address])
        .env("FLEET_TOKEN", token)
        .output()
        .expect("fleet status runs");
    assert!(!plain.status.success(), "a plain client must be refused");

    std::env::set_var(fleet::net::ENV_TLS_CERT, dir.join("node.pem"));
    std::env::set_var(fleet::net::ENV_TLS_KEY, dir.join("node.key"));
    std::env::set_var(fleet::net::ENV_TLS_CA, dir.join("ca.pem"));
    assert!(fleet::net::tls_enabled());
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
