//! Ray's `timeit`: a warm-up, then timed rounds; mean and standard
//! deviation of the per-second rate, printed as `ray microbenchmark` does.

use std::io::Write;
use std::time::Instant;

/// One finished test: its name, and the mean and population standard
/// deviation of the per-second rate over the rounds.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    /// The test's name, as in `ray microbenchmark`.
    pub name: String,
    /// Mean rate (operations, or gigabytes, per second).
    pub mean: f64,
    /// Standard deviation of the rate across rounds (numpy's `std`).
    pub sd: f64,
}

impl Measurement {
    /// The line `ray microbenchmark` prints:
    /// `<name> per second <mean> +- <sd>`, both rounded to 2 decimals.
    pub fn line(&self) -> String {
        format!(
            "{} per second {} +- {}",
            self.name,
            py_round2(self.mean),
            py_round2(self.sd)
        )
    }
}

/// Formats like Python's `print(round(x, 2))`: at most two decimals, at
/// least one (`12.0`, `12.5`, `12.34`).
fn py_round2(x: f64) -> String {
    let s = format!("{x:.2}");
    let trimmed = s.trim_end_matches('0');
    if trimmed.ends_with('.') {
        format!("{trimmed}0")
    } else {
        trimmed.to_string()
    }
}

/// Which tests run and how long each is measured.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Timed rounds per test (Ray: 4).
    pub rounds: usize,
    /// Length of one round in seconds (Ray: 2); the warm-up is half of it.
    pub seconds: f64,
    /// Runs only tests whose name contains this (Ray's `TESTS_TO_RUN`).
    pub filter: Option<String>,
    /// Skips tests whose name contains this (Ray's `TESTS_TO_SKIP`).
    pub skip: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            rounds: 4,
            seconds: 2.0,
            filter: None,
            skip: None,
        }
    }
}

/// Runs the tests that pass the filters and collects their results.
#[derive(Debug)]
pub struct Timer {
    settings: Settings,
    results: Vec<Measurement>,
    failures: Vec<(String, String)>,
}

impl Timer {
    /// A timer with these settings and no results yet.
    pub fn new(settings: Settings) -> Self {
        Timer {
            settings,
            results: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// Whether the test `name` is selected by `TESTS_TO_RUN`/`TESTS_TO_SKIP`.
    pub fn wants(&self, name: &str) -> bool {
        let selected = match &self.settings.filter {
            Some(f) if !f.is_empty() => name.contains(f.as_str()),
            _ => true,
        };
        let skipped = match &self.settings.skip {
            Some(s) if !s.is_empty() => name.contains(s.as_str()),
            _ => false,
        };
        selected && !skipped
    }

    /// Whether any of `names` is selected (to skip a shared setup).
    pub fn wants_any(&self, names: &[&str]) -> bool {
        names.iter().any(|n| self.wants(n))
    }

    /// Measures `f` as Ray's `timeit(name, f, multiplier)` does: calls it
    /// for a warm-up, then in each round calls it in steps of a tenth of
    /// the warm-up's count until the round's time is up. The rate of one
    /// round is `multiplier * calls / elapsed`. Prints the result line, or
    /// on an error prints `<name> FAILED: <error>` to stderr and records
    /// the failure, so that the remaining tests still run.
    pub fn timeit(
        &mut self,
        name: &str,
        multiplier: f64,
        f: impl FnMut() -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        if !self.wants(name) {
            return Ok(());
        }
        match self.measure(name, multiplier, f) {
            Ok(m) => {
                println!("{}", m.line());
                let _ = std::io::stdout().flush();
                self.results.push(m);
            }
            Err(e) => {
                eprintln!("{name} FAILED: {e:#}");
                self.failures.push((name.to_string(), format!("{e:#}")));
            }
        }
        Ok(())
    }

    /// The timing loop of [`Timer::timeit`].
    fn measure(
        &self,
        name: &str,
        multiplier: f64,
        mut f: impl FnMut() -> anyhow::Result<()>,
    ) -> anyhow::Result<Measurement> {
        let round = self.settings.seconds.max(0.0);
        let warmup = round / 2.0;
        let start = Instant::now();
        let mut count = 0usize;
        while count == 0 || start.elapsed().as_secs_f64() < warmup {
            f().map_err(|e| e.context(format!("{name}: warm-up")))?;
            count += 1;
        }
        let step = count / 10 + 1;
        let mut stats = Vec::with_capacity(self.settings.rounds);
        for _ in 0..self.settings.rounds.max(1) {
            let start = Instant::now();
            let mut count = 0usize;
            while count == 0 || start.elapsed().as_secs_f64() < round {
                for _ in 0..step {
                    f().map_err(|e| e.context(name.to_string()))?;
                }
                count += step;
            }
            stats.push(multiplier * count as f64 / start.elapsed().as_secs_f64());
        }
        let mean = stats.iter().sum::<f64>() / stats.len() as f64;
        let var = stats.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / stats.len() as f64;
        Ok(Measurement {
            name: name.to_string(),
            mean,
            sd: var.sqrt(),
        })
    }

    /// Records a failure outside a timed loop (a test's setup).
    pub fn fail(&mut self, name: &str, error: &anyhow::Error) {
        eprintln!("{name} FAILED: {error:#}");
        self.failures.push((name.to_string(), format!("{error:#}")));
    }

    /// Tests that failed so far: (name, error).
    pub fn failures(&self) -> &[(String, String)] {
        &self.failures
    }

    /// The results so far, in the order the tests ran.
    pub fn results(&self) -> &[Measurement] {
        &self.results
    }

    /// Consumes the timer, returning its results.
    pub fn into_results(self) -> Vec<Measurement> {
        self.results
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_like_python() {
        assert_eq!(py_round2(12345.678), "12345.68");
        assert_eq!(py_round2(12.5), "12.5");
        assert_eq!(py_round2(3.0), "3.0");
        assert_eq!(py_round2(0.004), "0.0");
    }

    #[test]
    fn filters_by_substring() {
        let t = Timer::new(Settings {
            filter: Some("tasks".into()),
            skip: Some("async".into()),
            ..Settings::default()
        });
        assert!(t.wants("single client tasks sync"));
        assert!(!t.wants("single client tasks async"));
        assert!(!t.wants("1:1 actor calls sync"));
    }

    #[test]
    fn measures_a_rate() {
        let mut t = Timer::new(Settings {
            rounds: 2,
            seconds: 0.05,
            ..Settings::default()
        });
        t.timeit("noop", 10.0, || Ok(())).unwrap();
        let r = &t.results()[0];
        assert_eq!(r.name, "noop");
        assert!(r.mean > 0.0 && r.sd >= 0.0);
        t.timeit("broken", 1.0, || anyhow::bail!("boom")).unwrap();
        assert_eq!(t.results().len(), 1);
        assert_eq!(t.failures()[0].0, "broken");
    }
}
