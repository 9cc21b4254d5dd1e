//! The memory monitor (Ray's): every 250 ms it reads the machine's memory
//! use, and above `FLEET_MEMORY_THRESHOLD` reports the node's usage and
//! each worker's RSS to the head, which picks a worker to kill (the one
//! running the most recently started retriable task) before the kernel's
//! OOM killer picks one at random. One kill at a time: after a report the
//! next waits until the usage has been read again past a pause.

use std::collections::HashMap;
use std::time::Duration;

use crate::proto;

/// Environment variable: a fraction of RAM (`0.95`, the default) or a byte
/// count (`8000000000`, or with a unit: `8GiB`, `500MiB`).
pub(crate) const ENV_THRESHOLD: &str = "FLEET_MEMORY_THRESHOLD";
/// How often memory is checked.
pub(crate) const PERIOD: Duration = Duration::from_millis(250);
/// After a report that led to a kill, the monitor waits this long for the
/// memory to come back before it reports again.
const AFTER_KILL: Duration = Duration::from_millis(1000);

/// Where the monitor's threshold lies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Threshold {
    /// A fraction of the machine's RAM.
    Fraction(f64),
    /// Bytes in use.
    Bytes(u64),
}

impl Threshold {
    /// From `FLEET_MEMORY_THRESHOLD`; a bad value is an error naming the fix.
    pub(crate) fn from_env() -> Result<Self, String> {
        match std::env::var(ENV_THRESHOLD) {
            Ok(v) if !v.trim().is_empty() => Self::parse(v.trim()),
            _ => Ok(Threshold::Fraction(0.95)),
        }
    }

    pub(crate) fn parse(v: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{ENV_THRESHOLD}={v:?} is not a fraction of RAM (like 0.9) or a byte count \
                 (like 8000000000 or 8GiB); set it to one of those, or unset it for 0.95"
            )
        };
        if let Ok(f) = v.parse::<f64>() {
            if f > 0.0 && f <= 1.0 {
                return Ok(Threshold::Fraction(f));
            }
            if f > 1.0 && f.fract() == 0.0 {
                return Ok(Threshold::Bytes(f as u64));
            }
            return Err(bad());
        }
        let units = [
            ("KiB", 1u64 << 10),
            ("MiB", 1 << 20),
            ("GiB", 1 << 30),
            ("TiB", 1 << 40),
        ];
        for (suffix, scale) in units {
            if let Some(n) = v.strip_suffix(suffix) {
                let n: f64 = n.trim().parse().map_err(|_| bad())?;
                if n > 0.0 {
                    return Ok(Threshold::Bytes((n * scale as f64) as u64));
                }
            }
        }
        Err(bad())
    }

    /// The threshold in bytes for a machine with `total` bytes of RAM.
    pub(crate) fn bytes(self, total: u64) -> u64 {
        match self {
            Threshold::Fraction(f) => (total as f64 * f) as u64,
            Threshold::Bytes(b) => b,
        }
    }
}

/// The machine's memory: (used, total) in bytes, used = total - available.
pub(crate) fn machine_memory() -> Option<(u64, u64)> {
    use procfs::Current;
    let m = procfs::Meminfo::current().ok()?;
    let available = m.mem_available.unwrap_or(m.mem_free + m.cached);
    Some((m.mem_total.saturating_sub(available), m.mem_total))
}

/// The resident set of a process, in bytes.
pub(crate) fn rss(pid: u32) -> Option<u64> {
    let p = procfs::process::Process::new(pid as i32).ok()?;
    let status = p.status().ok()?;
    status.vmrss.map(|kib| kib * 1024)
}

/// Watches this machine's memory on a thread of its own. `report` gets a
/// report when usage is above the threshold and returns whether it killed
/// a worker. `workers` lists the node's workers (id, pid). Stops once
/// `stopped` says so.
pub(crate) fn start(
    threshold: Threshold,
    workers: impl Fn() -> Vec<(u64, u32)> + Send + 'static,
    report: impl Fn(proto::MemoryPressure) -> bool + Send + 'static,
    stopped: impl Fn() -> bool + Send + 'static,
) {
    let spawned = std::thread::Builder::new()
        .name("fleet-memory-monitor".into())
        .spawn(move || {
            while !stopped() {
                std::thread::sleep(PERIOD);
                let Some((used, total)) = machine_memory() else {
                    continue;
                };
                let limit = threshold.bytes(total);
                if used <= limit {
                    continue;
                }
                let rss: HashMap<u64, u64> = workers()
                    .into_iter()
                    .filter_map(|(id, pid)| Some((id, rss(pid)?)))
                    .collect();
                let killed = report(proto::MemoryPressure {
                    used,
                    total,
                    threshold: limit,
                    workers: rss
                        .into_iter()
                        .map(|(worker_id, rss)| proto::WorkerRss { worker_id, rss })
                        .collect(),
                });
                if killed {
                    std::thread::sleep(AFTER_KILL);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the memory monitor: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::Threshold;

    #[test]
    fn thresholds_parse() {
        assert_eq!(Threshold::parse("0.9"), Ok(Threshold::Fraction(0.9)));
        assert_eq!(Threshold::parse("1"), Ok(Threshold::Fraction(1.0)));
        assert_eq!(
            Threshold::parse("5000000000"),
            Ok(Threshold::Bytes(5_000_000_000))
        );
        assert_eq!(Threshold::parse("2GiB"), Ok(Threshold::Bytes(2 << 30)));
        assert_eq!(Threshold::parse("512 MiB"), Ok(Threshold::Bytes(512 << 20)));
        for bad in ["0", "-1", "1.5", "lots", "GiB"] {
            let e = Threshold::parse(bad).expect_err(bad);
            assert!(e.contains("FLEET_MEMORY_THRESHOLD"), "{e}");
        }
    }
}
