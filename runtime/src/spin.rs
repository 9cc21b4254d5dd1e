//! Short busy-waits before a thread parks.
//!
//! A round trip to a worker hands a call between about six threads. Each
//! hand-off to a parked thread costs a futex wake and, on a virtual
//! machine, an inter-processor interrupt to a halted vCPU: tens of
//! microseconds, more than the work itself. A thread that expects an
//! answer within a round trip checks for it a little while before it
//! parks. `FLEET_SPIN_MICROS` sets the while (0 turns spinning off).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The default wait, about one sync round trip on a loaded 2-core machine.
const DEFAULT_MICROS: u64 = 200;

/// How long a thread spins before it parks.
pub(crate) fn budget() -> Duration {
    static BUDGET: OnceLock<Duration> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        let micros = std::env::var("FLEET_SPIN_MICROS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MICROS);
        Duration::from_micros(micros)
    })
}

/// Polls `ready` until it is true or the budget is spent; true if ready.
pub(crate) fn until(mut ready: impl FnMut() -> bool) -> bool {
    let budget = budget();
    if budget.is_zero() {
        return ready();
    }
    let start = Instant::now();
    let mut round = 0u32;
    loop {
        if ready() {
            return true;
        }
        if start.elapsed() >= budget {
            return false;
        }
        round += 1;
        // Give the core to a runnable thread now and then: on a machine
        // with few cores, the thread we wait for may need this one.
        if round % 16 == 0 {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}
