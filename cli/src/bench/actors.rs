//! The actor call tests: 1:1 (sync, async, concurrent), 1:n, n:n and n:n
//! with a ref argument; then the same against actors whose methods are
//! `async fn` (Ray's `AsyncActor`).

use super::objects::check_small;
use super::timeit::Timer;
use super::SMALL;
use fleet::ObjectRef;

/// Ray's `Actor` (`num_cpus=0`): answers every call with `b"ok"`.
#[fleet::remote]
struct Server;

#[fleet::remote]
impl Server {
    /// An actor with no state.
    fn new() -> Self {
        Server
    }

    /// Returns `b"ok"`.
    fn small_value(&self) -> Vec<u8> {
        SMALL.to_vec()
    }

    /// Returns `b"ok"`, ignoring its argument.
    fn small_value_arg(&self, _x: i64) -> Vec<u8> {
        SMALL.to_vec()
    }
}

/// Ray's `AsyncActor`: the same answers from `async fn` methods.
#[fleet::remote]
struct AsyncServer;

#[fleet::remote]
impl AsyncServer {
    /// An actor with no state.
    fn new() -> Self {
        AsyncServer
    }

    /// Returns `b"ok"`.
    async fn small_value(&self) -> Vec<u8> {
        SMALL.to_vec()
    }

    /// Returns `b"ok"`, ignoring its argument.
    async fn small_value_with_arg(&self, _x: i64) -> Vec<u8> {
        SMALL.to_vec()
    }
}

/// The servers a [`Client`] or a [`work`] task calls: Ray passes either
/// kind of actor to the same code.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
enum Servers {
    Sync(Vec<ServerHandle>),
    Async(Vec<AsyncServerHandle>),
}

impl Servers {
    fn len(&self) -> usize {
        match self {
            Servers::Sync(s) => s.len(),
            Servers::Async(s) => s.len(),
        }
    }

    /// `small_value` on server `i`.
    fn call(&self, i: usize) -> ObjectRef<Vec<u8>> {
        match self {
            Servers::Sync(s) => s[i].small_value(),
            Servers::Async(s) => s[i].small_value(),
        }
    }

    /// `small_value` with a ref argument on server `i`.
    fn call_arg(&self, i: usize, x: &ObjectRef<i64>) -> ObjectRef<Vec<u8>> {
        match self {
            Servers::Sync(s) => s[i].small_value_arg(x),
            Servers::Async(s) => s[i].small_value_with_arg(x),
        }
    }
}

/// Ray's `Client` (`num_cpus=0`): calls its servers from inside an actor.
#[fleet::remote]
struct Client {
    /// The actors it calls.
    servers: Servers,
}

#[fleet::remote]
impl Client {
    /// A client of these servers.
    fn new(servers: Servers) -> Self {
        Client { servers }
    }

    /// Makes `n` calls on each server, then waits for all of them.
    fn small_value_batch(&self, n: u64) -> fleet::Result<()> {
        let refs: Vec<ObjectRef<Vec<u8>>> = (0..self.servers.len())
            .flat_map(|s| (0..n).map(move |_| self.servers.call(s)))
            .collect();
        fleet::get_all(&refs).map(drop)
    }

    /// Puts one small object, passes it by ref in `n` calls on each
    /// server, then waits for all of them.
    fn small_value_batch_arg(&self, n: u64) -> fleet::Result<()> {
        let x = fleet::put(0i64)?;
        let refs: Vec<ObjectRef<Vec<u8>>> = (0..self.servers.len())
            .flat_map(|s| {
                (0..n)
                    .map(|_| self.servers.call_arg(s, &x))
                    .collect::<Vec<_>>()
            })
            .collect();
        fleet::get_all(&refs).map(drop)
    }
}

/// Ray's `work(actors)` task: `n` calls spread round-robin over `actors`.
#[fleet::remote]
fn work(actors: Servers, n: u64) -> fleet::Result<()> {
    let refs: Vec<ObjectRef<Vec<u8>>> = (0..n as usize)
        .map(|i| actors.call(i % actors.len()))
        .collect();
    fleet::get_all(&refs).map(drop)
}

/// `n` calls of `small_value` on server 0 of `a`, then a get of all of them.
fn calls(a: &Servers, n: usize) -> anyhow::Result<()> {
    let refs: Vec<ObjectRef<Vec<u8>>> = (0..n).map(|_| a.call(0)).collect();
    check_small(fleet::get_all(&refs)?)
}

/// Ray's "1:1 {kind} calls sync" and "... async", each on a new server
/// from `make`.
fn one_to_one(
    t: &mut Timer,
    kind: &str,
    make: impl Fn() -> fleet::Result<Servers>,
) -> anyhow::Result<()> {
    let sync = format!("1:1 {kind} calls sync");
    if t.wants(&sync) {
        let a = make()?;
        t.timeit(&sync, 1.0, || {
            let v = fleet::get(&a.call(0))?;
            anyhow::ensure!(v == SMALL, "unexpected value {v:?}");
            Ok(())
        })?;
    }
    let batch = format!("1:1 {kind} calls async");
    if t.wants(&batch) {
        let a = make()?;
        t.timeit(&batch, 1000.0, || calls(&a, 1000))?;
    }
    Ok(())
}

/// `n` new servers.
fn servers(n: usize) -> fleet::Result<Vec<ServerHandle>> {
    (0..n).map(|_| Server::remote()).collect()
}

/// `n` new async servers.
fn async_servers(n: usize) -> fleet::Result<Servers> {
    (0..n)
        .map(|_| AsyncServer::remote())
        .collect::<fleet::Result<_>>()
        .map(Servers::Async)
}

/// Ray's 1:n and n:n tests against `make(n_cpu)` servers, named by `kind`
/// ("actor" or "async-actor").
fn fan_out(
    t: &mut Timer,
    kind: &str,
    n_cpu: usize,
    make: impl Fn(usize) -> fleet::Result<Servers>,
) -> anyhow::Result<()> {
    let (n, m) = (5000u64, 4u64);
    let one_to_n = format!("1:n {kind} calls async");
    if t.wants(&one_to_n) {
        let actors = make(n_cpu)?;
        let mult = (n * actors.len() as u64) as f64;
        let client = Client::remote(actors)?;
        t.timeit(&one_to_n, mult, || {
            fleet::get(&client.small_value_batch(n))?;
            Ok(())
        })?;
    }
    let n_to_n = format!("n:n {kind} calls async");
    if t.wants(&n_to_n) {
        let a = make(n_cpu)?;
        t.timeit(&n_to_n, (m * n) as f64, || {
            let refs: Vec<ObjectRef<()>> = (0..m).map(|_| work::remote(a.clone(), n)).collect();
            fleet::get_all(&refs)?;
            Ok(())
        })?;
    }
    Ok(())
}

/// Runs the actor tests that `t` selects, in Ray's order; `n_cpu` is
/// Ray's `multiprocessing.cpu_count() // 2` (at least 1).
pub(super) fn run(t: &mut Timer, n_cpu: usize) -> anyhow::Result<()> {
    one_to_one(t, "actor", || Ok(Servers::Sync(servers(1)?)))?;
    if t.wants("1:1 actor calls concurrent") {
        let a = Servers::Sync(vec![Server::options().max_concurrency(16).remote()?]);
        t.timeit("1:1 actor calls concurrent", 1000.0, || calls(&a, 1000))?;
    }
    fan_out(t, "actor", n_cpu, |n| servers(n).map(Servers::Sync))?;
    if t.wants("n:n actor calls with arg async") {
        let n = 1000u64;
        let clients = servers(n_cpu)?
            .into_iter()
            .map(|s| Client::remote(Servers::Sync(vec![s])))
            .collect::<fleet::Result<Vec<_>>>()?;
        let mult = (n * clients.len() as u64) as f64;
        t.timeit("n:n actor calls with arg async", mult, || {
            let refs: Vec<ObjectRef<()>> =
                clients.iter().map(|c| c.small_value_batch_arg(n)).collect();
            fleet::get_all(&refs)?;
            Ok(())
        })?;
    }
    async_actors(t, n_cpu)
}

/// Ray's async-actor tests, in Ray's order.
fn async_actors(t: &mut Timer, n_cpu: usize) -> anyhow::Result<()> {
    one_to_one(t, "async-actor", || async_servers(1))?;
    if t.wants("1:1 async-actor calls with args async") {
        let a = AsyncServer::remote()?;
        t.timeit("1:1 async-actor calls with args async", 1000.0, || {
            let refs: Vec<ObjectRef<Vec<u8>>> =
                (0..1000).map(|i| a.small_value_with_arg(i)).collect();
            check_small(fleet::get_all(&refs)?)
        })?;
    }
    fan_out(t, "async-actor", n_cpu, async_servers)
}
