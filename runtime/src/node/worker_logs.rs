//! Every worker's output (stdout and stderr, as it printed them) kept in a
//! file per worker on its node: `$TMPDIR/fleet-$UID/logs/node-NAME/
//! worker-PID.log`, the same lines the driver sees (without their prefix).
//! A file is rotated at `FLEET_WORKER_LOG_MAX_BYTES` (default 64 MiB) into
//! `worker-PID.log.1` … `.N` (`FLEET_WORKER_LOG_BACKUPS`, default 3), so a
//! chatty worker cannot fill the disk. Files are made on the first line,
//! so silent workers leave nothing behind. `fleet logs` reads them through
//! the head, which asks the node that ran the worker.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use tonic::Status;

use super::jobs::{tail_file, LogStream};

/// Environment variable: the size at which a worker's log file is rotated.
pub(crate) const ENV_MAX_BYTES: &str = "FLEET_WORKER_LOG_MAX_BYTES";
/// Environment variable: how many rotated files are kept per worker.
pub(crate) const ENV_BACKUPS: &str = "FLEET_WORKER_LOG_BACKUPS";
const DEFAULT_MAX_BYTES: u64 = 64 << 20;
const DEFAULT_BACKUPS: u32 = 3;

/// How worker log files are rotated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Rotation {
    pub(crate) max_bytes: u64,
    pub(crate) backups: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_bytes: DEFAULT_MAX_BYTES,
            backups: DEFAULT_BACKUPS,
        }
    }
}

impl Rotation {
    /// From the environment; a bad value is an error naming the variable
    /// and what it takes.
    pub(crate) fn from_env() -> Result<Self, String> {
        let max_bytes = match std::env::var(ENV_MAX_BYTES) {
            Ok(v) if !v.trim().is_empty() => parse_bytes(v.trim()).ok_or_else(|| {
                format!(
                    "{ENV_MAX_BYTES}={v:?} is not a size in bytes (like 67108864, 64MiB or \
                     512KiB, at least 1024); set it to one, or unset it for 64MiB"
                )
            })?,
            _ => Rotation::default().max_bytes,
        };
        let backups = match std::env::var(ENV_BACKUPS) {
            Ok(v) if !v.trim().is_empty() => v
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n <= 1000)
                .ok_or_else(|| {
                    format!(
                        "{ENV_BACKUPS}={v:?} is not a count of rotated files to keep (0 to \
                         1000); set it to one, or unset it for {DEFAULT_BACKUPS}"
                    )
                })?,
            _ => Rotation::default().backups,
        };
        Ok(Rotation { max_bytes, backups })
    }
}

/// `4096`, `512KiB`, `64MiB`, `1GiB`; at least 1 KiB.
fn parse_bytes(v: &str) -> Option<u64> {
    let units = [("KiB", 1u64 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30)];
    let n = match units
        .iter()
        .find_map(|(s, k)| v.strip_suffix(s).map(|n| (n, k)))
    {
        Some((n, k)) => n.trim().parse::<u64>().ok()?.checked_mul(*k)?,
        None => v.parse::<u64>().ok()?,
    };
    (n >= 1024).then_some(n)
}

/// One worker's log file, shared by the readers of its stdout and stderr.
struct LogFile {
    path: PathBuf,
    file: Option<std::io::BufWriter<std::fs::File>>,
    written: u64,
    rotation: Rotation,
    /// Writing failed once (said in the node's log); no more tries.
    broken: bool,
}

impl LogFile {
    fn write_line(&mut self, line: &[u8]) {
        if self.broken {
            return;
        }
        if let Err(e) = self.try_write(line) {
            tracing::warn!(
                "cannot keep a worker's output in {}: {e}; its output is still forwarded",
                self.path.display()
            );
            self.broken = true;
            self.file = None;
        }
    }

    fn try_write(&mut self, line: &[u8]) -> std::io::Result<()> {
        let len = line.len() as u64 + 1;
        if self.written > 0 && self.written + len > self.rotation.max_bytes {
            self.rotate()?;
        }
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.written = f.metadata()?.len();
            self.file = Some(std::io::BufWriter::with_capacity(16 << 10, f));
        }
        if let Some(f) = self.file.as_mut() {
            f.write_all(line)?;
            f.write_all(b"\n")?;
        }
        self.written += len;
        Ok(())
    }

    /// `worker-PID.log` becomes `.1`, `.1` becomes `.2`, …; the oldest
    /// beyond the number kept is removed.
    fn rotate(&mut self) -> std::io::Result<()> {
        if let Some(mut f) = self.file.take() {
            f.flush()?;
        }
        let numbered = |i: u32| PathBuf::from(format!("{}.{i}", self.path.display()));
        if self.rotation.backups == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(numbered(self.rotation.backups));
            for i in (1..self.rotation.backups).rev() {
                let from = numbered(i);
                if from.exists() {
                    std::fs::rename(&from, numbered(i + 1))?;
                }
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        self.written = 0;
        Ok(())
    }

    fn flush(&mut self) {
        if let Some(f) = self.file.as_mut() {
            if let Err(e) = f.flush() {
                tracing::warn!("cannot write {}: {e}", self.path.display());
            }
        }
    }
}

/// The output files of this node's workers.
pub(crate) struct WorkerLogs {
    dir: PathBuf,
    rotation: Rotation,
    /// Workers whose output is still being read: pid to open streams.
    open: Mutex<HashMap<u32, usize>>,
}

/// What a reader of one of a worker's streams writes to.
pub(crate) struct Sink {
    logs: Arc<WorkerLogs>,
    pid: u32,
    file: Arc<Mutex<LogFile>>,
}

impl Sink {
    /// Keeps one line (without its newline).
    pub(crate) fn line(&self, text: &[u8]) {
        self.file.lock().write_line(text);
    }

    /// Makes what was kept visible to readers (the stream has nothing
    /// more buffered just now).
    pub(crate) fn flush(&self) {
        self.file.lock().flush();
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.file.lock().flush();
        let mut open = self.logs.open.lock();
        if let Some(n) = open.get_mut(&self.pid) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.pid);
            }
        }
    }
}

/// `name` with only characters safe in a file name.
fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl WorkerLogs {
    /// The files of node `node` on this machine, rotated per `rotation`.
    pub(crate) fn new(node: &str, rotation: Rotation) -> Arc<Self> {
        let dir = crate::daemon::runtime_dir()
            .join("logs")
            .join(format!("node-{}", file_safe(node)));
        Arc::new(WorkerLogs {
            dir,
            rotation,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// The file of the worker with process id `pid`.
    pub(crate) fn path(&self, pid: u32) -> PathBuf {
        self.dir.join(format!("worker-{pid}.log"))
    }

    /// Sinks for the stdout and stderr of a worker just started.
    pub(crate) fn sinks(self: &Arc<Self>, pid: u32) -> (Sink, Sink) {
        let file = Arc::new(Mutex::new(LogFile {
            path: self.path(pid),
            file: None,
            written: 0,
            rotation: self.rotation,
            broken: false,
        }));
        self.open.lock().insert(pid, 2);
        let sink = || Sink {
            logs: self.clone(),
            pid,
            file: file.clone(),
        };
        (sink(), sink())
    }

    /// Whether the output of worker `pid` is still being written.
    pub(crate) fn is_open(&self, pid: u32) -> bool {
        self.open.lock().contains_key(&pid)
    }

    /// The output of worker `pid`: the last `tail_lines` lines (0: all),
    /// then, with `follow`, what it prints until it exits.
    pub(crate) fn stream(
        self: &Arc<Self>,
        pid: u32,
        tail_lines: u32,
        follow: bool,
    ) -> Result<LogStream, Status> {
        let path = self.path(pid);
        let live = self.is_open(pid);
        if !live && !path.exists() {
            return Err(Status::not_found(format!(
                "no output of a worker with pid {pid} is kept on this node (in {}): it \
                 printed nothing, or ran elsewhere",
                self.dir.display()
            )));
        }
        let offset = if tail_lines == 0 {
            0
        } else {
            start_of_last_lines(&path, tail_lines).unwrap_or(0)
        };
        let logs = self.clone();
        Ok(tail_file(
            path,
            offset,
            follow,
            Arc::new(move || logs.is_open(pid)),
        ))
    }
}

/// The offset in `path` where its last `n` lines begin.
fn start_of_last_lines(path: &Path, n: u32) -> std::io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut end = len;
    // A final newline ends the last line; it does not start another.
    let mut newlines = 0u32;
    let mut skip_last = true;
    let mut buf = vec![0u8; 64 << 10];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(chunk)?;
        for (i, b) in chunk.iter().enumerate().rev() {
            if *b != b'\n' {
                skip_last = false;
                continue;
            }
            if skip_last {
                skip_last = false;
                continue;
            }
            newlines += 1;
            if newlines == n {
                return Ok(start + i as u64 + 1);
            }
        }
        end = start;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder of its own, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "fleet-worker-logs-test-{}-{name}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn sizes_parse_and_bad_ones_name_the_variable() {
        assert_eq!(parse_bytes("4096"), Some(4096));
        assert_eq!(parse_bytes("64MiB"), Some(64 << 20));
        assert_eq!(parse_bytes("2 KiB"), Some(2048));
        assert_eq!(parse_bytes("12"), None);
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("-5"), None);
    }

    #[test]
    fn files_rotate_at_the_limit_and_keep_the_backups_asked_for() {
        let dir = Scratch::new("rotate");
        let path = dir.path().join("w").join("worker-1.log");
        let mut f = LogFile {
            path: path.clone(),
            file: None,
            written: 0,
            rotation: Rotation {
                max_bytes: 1024,
                backups: 2,
            },
            broken: false,
        };
        let line = [b'x'; 99];
        for _ in 0..50 {
            f.write_line(&line);
        }
        f.flush();
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(size(&path) <= 1024 && size(&path) > 0);
        let one = PathBuf::from(format!("{}.1", path.display()));
        let two = PathBuf::from(format!("{}.2", path.display()));
        let three = PathBuf::from(format!("{}.3", path.display()));
        assert_eq!(size(&one), 1000);
        assert_eq!(size(&two), 1000);
        assert!(!three.exists());
        assert!(!f.broken);
    }

    #[test]
    fn the_last_lines_are_found_from_the_end() {
        let dir = Scratch::new("tail");
        let path = dir.path().join("f");
        std::fs::write(&path, "a\nbb\nccc\n").unwrap();
        assert_eq!(start_of_last_lines(&path, 1).unwrap(), 5);
        assert_eq!(start_of_last_lines(&path, 2).unwrap(), 2);
        assert_eq!(start_of_last_lines(&path, 3).unwrap(), 0);
        assert_eq!(start_of_last_lines(&path, 9).unwrap(), 0);
        std::fs::write(&path, "a\nbb").unwrap();
        assert_eq!(start_of_last_lines(&path, 1).unwrap(), 2);
    }
}
