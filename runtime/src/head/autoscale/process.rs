//! Running a provider's programs (`sbatch`, `squeue`, `scancel`, the
//! `--scale-up`/`--scale-down` commands) with a time limit, so a hung
//! program never stalls the autoscaler for good.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The longest a provider's program may run before it is killed.
pub(crate) const PROGRAM_TIMEOUT: Duration = Duration::from_secs(120);

/// How a program's output is treated.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    /// stdout returned, stderr quoted on failure.
    Capture,
    /// stdout dropped, stderr to the head's log: for commands that start
    /// a node in the background, which may keep both open.
    Log,
}

/// Runs `cmd` to its end (with `input` on stdin); its stdout, or why not.
pub(crate) fn run(
    cmd: &mut Command,
    input: Option<String>,
    output: Output,
    what: &str,
) -> Result<String, String> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    match output {
        Output::Capture => cmd.stdout(Stdio::piped()).stderr(Stdio::piped()),
        Output::Log => cmd.stdout(Stdio::null()).stderr(Stdio::inherit()),
    };
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {what}: {e}"))?;
    let pid = child.id() as i32;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("writing to {what}: {e}"))?;
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(PROGRAM_TIMEOUT) {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(format!("waiting for {what}: {e}")),
        Err(_) => {
            // SAFETY: plain kill(2) of the child this function started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return Err(format!(
                "{what} did not finish within {PROGRAM_TIMEOUT:?}; killed it"
            ));
        }
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr = stderr.trim();
        return Err(if stderr.is_empty() {
            format!("{what} failed ({})", out.status)
        } else {
            format!("{what} failed ({}): {stderr}", out.status)
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Replaces `{key}` placeholders in a command.
pub(crate) fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (k, v) in values {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}
