//! The Kubernetes manifests, run without Kubernetes: the test renders
//! `deploy/kubernetes` with `kubectl kustomize`, takes the head's, the
//! nodes' and the example driver Job's containers from the rendered YAML,
//! fills in their environment as the kubelet would (`$(POD_IP)`, the
//! Secret's token, `resourceFieldRef` CPU limits, `$(VAR)` in args) and runs
//! those exact commands as local processes, each "pod" in its own mount
//! namespace (its own /tmp, and a /dev/shm the size of its memory
//! emptyDir), all in a network namespace of the test's own where the
//! Service's name resolves to the head. Then it does what the kubelet
//! would: the readiness probes must answer 200, and the driver Job must
//! finish with the right answer. A typo in the manifests' args or env
//! fails this test. `deploy/kubernetes/autoscale`'s head is started too:
//! its autoscaler flags must be accepted.
//!
//! Needs root (network and mount namespaces), `ip`, `unshare` and
//! `kubectl` (CI installs it). CI also validates every rendered object
//! with `kubernetes-validate --strict` (.ci/run).

mod common;

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::cli::{fleet_bin, Child};
use common::http::get;
use common::{wait_until, GENEROUS};
use serde::Deserialize;
use serde_yaml::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `kubectl kustomize DIR`: every object of the rendered stream.
fn render(dir: &str) -> Vec<Value> {
    let out = Command::new("kubectl")
        .args(["kustomize", &format!("{ROOT}/{dir}")])
        .output()
        .expect("run kubectl (Debian kubernetes-client; .ci/run installs it)");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 YAML");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"))
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v:?}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| s.iter().map(|x| str_of(x, "an arg").to_string()).collect())
        .unwrap_or_default()
}

/// The one container of a workload's pod template.
fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    workload["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// A CPU quantity ("2", "500m") in cores.
fn cpus(q: &Value) -> f64 {
    let s = match q {
        Value::Number(n) => n.to_string(),
        v => str_of(v, "a CPU quantity").to_string(),
    };
    match s.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().expect("millicores") / 1000.0,
        None => s.parse().expect("cores"),
    }
}

/// A memory quantity ("768Mi", "1Gi") in bytes.
fn bytes(q: &Value) -> u64 {
    let s = str_of(q, "a memory quantity");
    for (suffix, m) in [("Ki", 1u64 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30)] {
        if let Some(n) = s.strip_suffix(suffix) {
            return n.parse::<u64>().expect("a number") * m;
        }
    }
    s.parse().expect("bytes")
}

/// `$(NAME)` replaced as the kubelet does: defined names only; `$$` is `$`.
fn expand(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(r) = rest.strip_prefix("$$") {
            out.push('$');
            rest = r;
        } else if let Some((name, r)) = rest
            .strip_prefix("$(")
            .and_then(|r| r.split_once(')'))
            .filter(|(n, _)| env.contains_key(*n))
        {
            out.push_str(&env[name]);
            rest = r;
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out + rest
}

/// A container's environment as the kubelet fills it in for a pod at `ip`.
fn environment(c: &Value, ip: &str, objects: &[Value]) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for e in c["env"].as_sequence().into_iter().flatten() {
        let name = str_of(&e["name"], "an env name").to_string();
        let from = &e["valueFrom"];
        let value = if let Some(v) = e["value"].as_str() {
            expand(v, &env)
        } else if let Some(path) = from["fieldRef"]["fieldPath"].as_str() {
            assert_eq!(path, "status.podIP", "{name}: only the pod IP is filled in");
            ip.to_string()
        } else if from["secretKeyRef"].is_mapping() {
            let r = &from["secretKeyRef"];
            let secret = object(objects, "Secret", str_of(&r["name"], "secret name"));
            let key = str_of(&r["key"], "secret key");
            str_of(&secret["stringData"][key], "the secret's value").to_string()
        } else if from["resourceFieldRef"].is_mapping() {
            let r = &from["resourceFieldRef"];
            assert_eq!(
                r["containerName"], c["name"],
                "{name}: resourceFieldRef names another container"
            );
            let resource = str_of(&r["resource"], "resource");
            let field = resource
                .strip_prefix("limits.")
                .unwrap_or_else(|| panic!("{name}: {resource} is not a limit"));
            assert_eq!(field, "cpu", "{name}: only CPU limits are filled in");
            let limit = cpus(&c["resources"]["limits"]["cpu"]);
            let divisor = cpus(&r["divisor"]);
            format!("{}", (limit / divisor).ceil())
        } else {
            panic!("{name}: a kind of env var this test does not fill in: {e:?}")
        };
        env.insert(name, value);
    }
    env
}

/// The image's entrypoint (`deploy/docker/Dockerfile`).
fn entrypoint() -> String {
    let text = std::fs::read_to_string(format!("{ROOT}/deploy/docker/Dockerfile"))
        .expect("deploy/docker/Dockerfile");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .expect("an ENTRYPOINT");
    let list: Vec<String> = serde_json::from_str(line).expect("ENTRYPOINT [\"…\"]");
    list.into_iter().next().expect("an entrypoint")
}

/// The local executable for a path in the image.
fn local(image_path: &str) -> PathBuf {
    let name = Path::new(image_path)
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a file name");
    if name == "fleet" {
        return fleet_bin();
    }
    // Another executable in the image: an example, packed with
    // FLEET_EXTRA_BINS (deploy/kubernetes/base/driver-job.yaml).
    let bin = fleet_bin();
    let profile = bin.parent().expect("profile dir");
    let exe = profile.join("examples").join(name);
    if !exe.is_file() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args(["build", "--example", name, "--target-dir"])
            .arg(profile.parent().expect("target dir"))
            .arg("--manifest-path")
            .arg(format!("{ROOT}/Cargo.toml"));
        if profile.ends_with("release") {
            build.arg("--release");
        }
        assert!(
            build.status().expect("run cargo").success(),
            "building example {name} failed"
        );
    }
    exe
}

/// A network namespace of the test's own, where the head's Service name
/// resolves to the head pod; removed on drop with every pod in it.
struct Netns {
    name: String,
    pods: Vec<Child>,
}

impl Netns {
    fn new(service: &str, head_ip: &str) -> Netns {
        // SAFETY: geteuid cannot fail.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "namespaces need root (CI runs as root)"
        );
        let name = format!("fleetk8s{}", std::process::id());
        let ok = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("run ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ok(&["netns", "add", &name]);
        let ns = Netns {
            name,
            pods: Vec::new(),
        };
        ok(&["-n", &ns.name, "link", "set", "lo", "up"]);
        // `ip netns exec` mounts /etc/netns/NAME/hosts over /etc/hosts.
        let etc = ns.etc();
        std::fs::create_dir_all(&etc).expect("/etc/netns/NAME");
        std::fs::write(
            etc.join("hosts"),
            format!(
                "127.0.0.1 localhost\n{head_ip} {service} {service}.default.svc.cluster.local\n"
            ),
        )
        .expect("hosts");
        ns
    }

    fn etc(&self) -> PathBuf {
        Path::new("/etc/netns").join(&self.name)
    }

    /// Runs `exe args` as a pod: in this namespace, with its own /tmp and a
    /// /dev/shm of `shm` bytes, and only `env` (plus the image's ENV).
    fn command(
        &self,
        exe: &Path,
        args: &[String],
        env: &BTreeMap<String, String>,
        shm: u64,
    ) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, "unshare", "-m", "--", "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs -o size={shm} tmpfs /dev/shm && mount -t tmpfs tmpfs /tmp && exec \"$@\""
            ))
            .arg("pod")
            .arg(exe)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("TMPDIR", "/tmp")
            .envs(env);
        cmd
    }

    /// Runs `f` on a thread inside this network namespace.
    fn inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("the netns file");
            // SAFETY: setns on this thread only, with a valid fd.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("a thread in the netns")
    }

    /// Waits until `GET path` at `at` inside the namespace answers 200.
    fn probe(&self, at: &str, path: &str) -> String {
        self.probe_status(at, path, 200)
    }

    /// Waits until `GET path` at `at` inside the namespace answers `want`.
    fn probe_status(&self, at: &str, path: &str, want: u16) -> String {
        wait_until(
            &format!("GET http://{at}{path} to answer {want}"),
            GENEROUS,
            || {
                let (at, path) = (at.to_string(), path.to_string());
                match self.inside(move || get(&at, &path)) {
                    Ok((status, body)) if status == want => Some(body),
                    _ => None,
                }
            },
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.pods.clear();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(self.etc());
    }
}

/// A pod's container: what runs, with what, on which ports.
struct Pod {
    exe: PathBuf,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    shm: u64,
}

/// The command a workload's container runs at `ip` (the image's
/// entrypoint unless the manifest gives one).
fn pod(workload: &Value, container_name: &str, ip: &str, objects: &[Value]) -> Pod {
    let c = container(workload, container_name);
    let env = environment(c, ip, objects);
    let command = strings(&c["command"]);
    let exe = match command.first() {
        Some(path) => local(path),
        None => local(&entrypoint()),
    };
    let mut args: Vec<String> = command.iter().skip(1).cloned().collect();
    args.extend(strings(&c["args"]));
    let args = args.iter().map(|a| expand(a, &env)).collect();
    // /dev/shm: the memory emptyDir mounted there.
    let spec = &workload["spec"]["template"]["spec"];
    let shm_volume = c["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|m| m["mountPath"] == "/dev/shm")
        .map(|m| str_of(&m["name"], "volume name").to_string());
    let shm = shm_volume.map_or(64 << 20, |name| {
        let v = spec["volumes"]
            .as_sequence()
            .and_then(|vs| vs.iter().find(|v| v["name"] == name.as_str()))
            .expect("the /dev/shm volume");
        assert_eq!(v["emptyDir"]["medium"], "Memory", "/dev/shm must be memory");
        bytes(&v["emptyDir"]["sizeLimit"])
    });
    Pod {
        exe,
        args,
        env,
        shm,
    }
}

/// The value after `flag` in `args`.
fn flag<'a>(args: &'a [String], flag: &str) -> &'a str {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"))
}

/// The container port named `name` (probes name ports).
fn port(c: &Value, name: &Value) -> u64 {
    if let Some(n) = name.as_u64() {
        return n;
    }
    c["ports"]
        .as_sequence()
        .and_then(|ps| ps.iter().find(|p| p["name"] == *name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port {name:?}"))
}

/// Checks that a container's readiness and liveness probes are `/healthz`
/// on a port it listens on; returns that port.
fn health_port(c: &Value) -> u64 {
    let mut ports = Vec::new();
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], "/healthz", "{probe}");
        ports.push(port(c, &get["port"]));
    }
    assert_eq!(ports[0], ports[1], "both probes ask the same port");
    ports[0]
}

#[test]
fn the_manifests_commands_run_a_cluster_and_its_driver_job() {
    let objects = render("deploy/kubernetes");
    let head = object(&objects, "StatefulSet", "fleet-head");
    let service = object(&objects, "Service", "fleet-head");
    let nodes = object(&objects, "Deployment", "fleet-node");
    let job = object(&objects, "Job", "fleet-example-driver");
    let head_c = container(head, "fleet-head");
    let node_c = container(nodes, "fleet-node");
    let service_name = str_of(&service["metadata"]["name"], "service name");

    let head_ip = "127.0.0.1";
    let mut ns = Netns::new(service_name, head_ip);
    let head_pod = pod(head, "fleet-head", head_ip, &objects);
    // The Service's gRPC port reaches the head's gRPC port unchanged here
    // (no kube-proxy), so they must agree, as must the --port flag.
    let grpc = service["spec"]["ports"]
        .as_sequence()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "grpc"))
        .expect("the Service's grpc port");
    let grpc_port = grpc["port"].as_u64().expect("port");
    assert_eq!(port(head_c, &grpc["targetPort"]), grpc_port);
    assert_eq!(flag(&head_pod.args, "--port"), grpc_port.to_string());
    let head_health = health_port(head_c);
    assert_eq!(
        flag(&head_pod.args, "--dashboard-port"),
        head_health.to_string(),
        "the head's probes ask its dashboard port"
    );
    assert!(
        flag(&head_pod.args, "--object-store-bytes")
            .parse::<u64>()
            .expect("bytes")
            <= head_pod.shm,
        "the head's store fits its /dev/shm"
    );
    let dashboard = format!("{head_ip}:{head_health}");

    // The node pods first: they wait for the head, not ready (503) until
    // they have joined it.
    let replicas = nodes["spec"]["replicas"].as_u64().expect("replicas");
    assert!(replicas >= 1);
    let node_health = health_port(node_c);
    let limit = cpus(&node_c["resources"]["limits"]["cpu"]);
    let mut ips = Vec::new();
    let mut waiting = Vec::new();
    for k in 0..replicas {
        let ip = format!("127.0.0.{}", k + 2);
        let p = pod(nodes, "fleet-node", &ip, &objects);
        assert_eq!(flag(&p.args, "--health-port"), node_health.to_string());
        assert!(
            flag(&p.args, "--object-store-bytes")
                .parse::<u64>()
                .expect("bytes")
                <= p.shm,
            "the node's store fits its /dev/shm"
        );
        let child = Child::spawn(&mut ns.command(&p.exe, &p.args, &p.env, p.shm));
        let at = format!("{ip}:{node_health}");
        let body = ns.probe_status(&at, "/healthz", 503);
        assert!(body.contains("waiting for the head"), "{body}");
        waiting.push(child);
        ips.push(ip);
    }
    let head_child =
        Child::spawn(&mut ns.command(&head_pod.exe, &head_pod.args, &head_pod.env, head_pod.shm));
    head_child.expect_line("serving at");
    ns.pods.push(head_child);
    ns.probe(&dashboard, "/healthz");
    for (child, ip) in waiting.into_iter().zip(&ips) {
        child.expect_line("joined the cluster");
        ns.pods.push(child);
        ns.probe(&format!("{ip}:{node_health}"), "/healthz");
    }
    // Every node joined with the CPUs of its limit.
    let metrics = ns.probe(&dashboard, "/metrics");
    for ip in &ips {
        let want = format!("fleet_node_cpus{{node=\"{ip}:");
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&want))
            .unwrap_or_else(|| panic!("node {ip} is not in /metrics:\n{metrics}"));
        let got: f64 = line
            .rsplit(' ')
            .next()
            .expect("value")
            .parse()
            .expect("number");
        assert_eq!(got, limit.ceil(), "{line}");
    }

    // The example driver Job, as its own pod.
    let driver = pod(job, "driver", "127.0.0.9", &objects);
    let out_dir = tempfile::tempdir().expect("temp dir");
    let out_path = out_dir.path().join("driver.out");
    let out = std::fs::File::create(&out_path).expect("driver output");
    let mut cmd = ns.command(&driver.exe, &driver.args, &driver.env, driver.shm);
    let mut run = Reaped(
        cmd.stdout(out.try_clone().expect("out"))
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("run the driver"),
    );
    let status = wait_until("the driver Job to finish", GENEROUS, || {
        run.0.try_wait().expect("wait")
    });
    let said = std::fs::read_to_string(&out_path).unwrap_or_default();
    assert!(status.success(), "the driver failed ({status}):\n{said}");
    assert!(
        said.contains("OK: the parallel sum equals the sequential sum"),
        "{said}"
    );
    let metrics = ns.probe(&dashboard, "/metrics");
    assert!(
        metrics.contains("fleet_tasks_finished_total{function="),
        "the driver's tasks ran on the cluster:\n{metrics}"
    );

    // The autoscaling overlay's head accepts its flags and runs its
    // autoscaler (with no demand it asks for nothing).
    ns.pods.clear();
    let objects = render("deploy/kubernetes/autoscale");
    let head = object(&objects, "StatefulSet", "fleet-head");
    assert_eq!(
        object(&objects, "Deployment", "fleet-node")["spec"]["replicas"]
            .as_u64()
            .expect("replicas"),
        0
    );
    let p = pod(head, "fleet-head", head_ip, &objects);
    assert_eq!(flag(&p.args, "--autoscale"), "command");
    assert!(flag(&p.args, "--scale-down").contains("{node}"));
    assert!(flag(&p.args, "--scale-down").contains("$(echo {node}"));
    let child = Child::spawn(&mut ns.command(&p.exe, &p.args, &p.env, p.shm));
    child.expect_line("serving at");
    ns.pods.push(child);
    let snapshot = ns.probe(&dashboard, "/api/snapshot");
    let snapshot: serde_json::Value = serde_json::from_str(&snapshot).expect("JSON");
    assert_eq!(
        snapshot["autoscale"]["provider"], "command",
        "{:#}",
        snapshot["autoscale"]
    );
}

/// A child process killed and reaped when dropped, even on a panic.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
