//! The actor call tests: 1:1 (sync, async, concurrent), 1:n, n:n and n:n
//! with a ref argument.

use super::objects::check_small;
use super::timeit::Timer;
use super::SMALL;
use crate::ObjectRef;

/// Ray's `Actor` (`num_cpus=0`): answers every call with `b"ok"`.
#[crate::remote]
struct Server;

#[crate::remote]
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

/// Ray's `Client` (`num_cpus=0`): calls its servers from inside an actor.
#[crate::remote]
struct Client {
    /// The actors it calls.
    servers: Vec<ServerHandle>,
}

#[crate::remote]
impl Client {
    /// A client of these servers.
    fn new(servers: Vec<ServerHandle>) -> Self {
        Client { servers }
    }

    /// Makes `n` calls on each server, then waits for all of them.
    fn small_value_batch(&self, n: u64) -> crate::Result<()> {
        let refs: Vec<ObjectRef<Vec<u8>>> = self
            .servers
            .iter()
            .flat_map(|s| (0..n).map(move |_| s.small_value()))
            .collect();
        crate::get_all(&refs).map(drop)
    }

    /// Puts one small object, passes it by ref in `n` calls on each
    /// server, then waits for all of them.
    fn small_value_batch_arg(&self, n: u64) -> crate::Result<()> {
        let x = crate::put(0i64)?;
        let refs: Vec<ObjectRef<Vec<u8>>> = self
            .servers
            .iter()
            .flat_map(|s| (0..n).map(|_| s.small_value_arg(&x)).collect::<Vec<_>>())
            .collect();
        crate::get_all(&refs).map(drop)
    }
}

/// Ray's `work(actors)` task: `n` calls spread round-robin over `actors`.
#[crate::remote]
fn work(actors: Vec<ServerHandle>, n: u64) -> crate::Result<()> {
    let refs: Vec<ObjectRef<Vec<u8>>> = (0..n as usize)
        .map(|i| actors[i % actors.len()].small_value())
        .collect();
    crate::get_all(&refs).map(drop)
}

/// `n` calls of `small_value` on `a`, then a get of all of them.
fn calls(a: &ServerHandle, n: usize) -> anyhow::Result<()> {
    let refs: Vec<ObjectRef<Vec<u8>>> = (0..n).map(|_| a.small_value()).collect();
    check_small(crate::get_all(&refs)?)
}

/// `n` new servers.
fn servers(n: usize) -> crate::Result<Vec<ServerHandle>> {
    (0..n).map(|_| Server::remote()).collect()
}

/// Runs the actor tests that `t` selects, in Ray's order; `n_cpu` is
/// Ray's `multiprocessing.cpu_count() // 2` (at least 1).
pub(super) fn run(t: &mut Timer, n_cpu: usize) -> anyhow::Result<()> {
    if t.wants("1:1 actor calls sync") {
        let a = Server::remote()?;
        t.timeit("1:1 actor calls sync", 1.0, || {
            let v = crate::get(&a.small_value())?;
            anyhow::ensure!(v == SMALL, "unexpected value {v:?}");
            Ok(())
        })?;
    }
    if t.wants("1:1 actor calls async") {
        let a = Server::remote()?;
        t.timeit("1:1 actor calls async", 1000.0, || calls(&a, 1000))?;
    }
    if t.wants("1:1 actor calls concurrent") {
        let a = Server::options().max_concurrency(16).remote()?;
        t.timeit("1:1 actor calls concurrent", 1000.0, || calls(&a, 1000))?;
    }
    let (n, m) = (5000u64, 4u64);
    if t.wants("1:n actor calls async") {
        let actors = servers(n_cpu)?;
        let client = Client::remote(actors.clone())?;
        let mult = (n * actors.len() as u64) as f64;
        t.timeit("1:n actor calls async", mult, || {
            crate::get(&client.small_value_batch(n))?;
            Ok(())
        })?;
    }
    if t.wants("n:n actor calls async") {
        let a = servers(n_cpu)?;
        t.timeit("n:n actor calls async", (m * n) as f64, || {
            let refs: Vec<ObjectRef<()>> = (0..m).map(|_| work::remote(a.clone(), n)).collect();
            crate::get_all(&refs)?;
            Ok(())
        })?;
    }
    if t.wants("n:n actor calls with arg async") {
        let n = 1000u64;
        let clients = servers(n_cpu)?
            .into_iter()
            .map(|s| Client::remote(vec![s]))
            .collect::<crate::Result<Vec<_>>>()?;
        let mult = (n * clients.len() as u64) as f64;
        t.timeit("n:n actor calls with arg async", mult, || {
            let refs: Vec<ObjectRef<()>> =
                clients.iter().map(|c| c.small_value_batch_arg(n)).collect();
            crate::get_all(&refs)?;
            Ok(())
        })?;
    }
    Ok(())
}
