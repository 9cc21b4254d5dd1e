//! Headless Chromium for the tests that check what a page really shows
//! (the dashboard). Needs Debian's `chromium` (or `$CHROMIUM`); CI installs
//! it, so without it such a test fails rather than skips.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::GENEROUS;

/// The Chromium executable: `$CHROMIUM`, or `chromium` on the PATH.
pub(crate) fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "CHROMIUM={} is not a file", p.display());
        return p;
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("chromium"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "chromium is not installed (this test needs a headless browser): \
                 run `apt-get install -y chromium` or set CHROMIUM=/path/to/chromium"
            )
        })
}

/// Runs headless Chromium with `args` on `url` in a fresh profile; returns
/// its stdout. Fails if it does not finish within [`GENEROUS`].
pub(crate) fn run_chromium(args: &[String], url: &str) -> String {
    let profile = tempfile::tempdir().expect("a temp dir for the browser profile");
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("starting chromium");
    let pid = child.id();
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        let _ = tx.send(s);
    });
    let Ok(stdout) = rx.recv_timeout(GENEROUS) else {
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        let _ = child.wait();
        panic!("chromium did not finish within {GENEROUS:?} on {url}");
    };
    let status = child.wait().expect("waiting for chromium");
    let stderr = stderr.join().unwrap_or_default();
    assert!(
        status.success(),
        "chromium failed ({status}) on {url}:\n{stderr}"
    );
    stdout
}
