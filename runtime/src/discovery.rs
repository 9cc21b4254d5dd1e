//! Local discovery. `fleet start --head` records the head's address and
//! token file in this user's runtime folder (`$TMPDIR/fleet-$UID/head`),
//! so that on the head's machine `fleet status`, `fleet job …`, `fleet
//! timeline` and drivers started with `FLEET_ADDRESS=auto` find the
//! cluster without flags, as `ray status` and `ray.init(address="auto")`
//! do. Every error about a missing address or token names the variable,
//! the flag and the path that fix it.

use std::path::{Path, PathBuf};

use crate::cluster::{ENV_ADDRESS, ENV_TOKEN};
use crate::daemon::runtime_dir;
use crate::error::{Error, Result};

/// The value of `FLEET_ADDRESS` (or `--address`) that asks for the head
/// recorded on this machine.
pub const AUTO: &str = "auto";

/// A head recorded on this machine by `fleet start --head`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalHead {
    /// Its gRPC address.
    pub address: String,
    /// The token file it wrote.
    pub token_file: PathBuf,
    /// Its process id.
    pub pid: u32,
}

/// Where the head's record lives.
pub fn record_path() -> PathBuf {
    runtime_dir().join("head")
}

/// The token file `fleet start --head` writes when not told otherwise.
pub fn default_token_file() -> PathBuf {
    runtime_dir().join("token")
}

/// The start time of a process (field 22 of /proc/PID/stat): with the pid
/// it names one process, so a record left by a dead head is never taken
/// for a live one whose pid was reused.
fn process_start(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19).map(str::to_string)
}

/// Records this process as the head serving at `address` (called by
/// `fleet start --head` once it serves). The file is this user's only.
pub fn record_head(address: &str, token_file: &Path) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = record_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let token_file = std::fs::canonicalize(token_file).unwrap_or_else(|_| token_file.into());
    let pid = std::process::id();
    let text = format!(
        "address={address}\ntoken_file={}\npid={pid}\nstart={}\n",
        token_file.display(),
        process_start(pid).unwrap_or_default()
    );
    let partial = path.with_extension(format!("partial{pid}"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)?;
    f.write_all(text.as_bytes())?;
    drop(f);
    std::fs::rename(&partial, &path)?;
    Ok(())
}

/// Removes the record if it is this process's (a head stopping).
pub fn clear_head_record() {
    if let Ok(Some(h)) = read_record() {
        if h.pid == std::process::id() {
            let _ = std::fs::remove_file(record_path());
        }
    }
}

/// The record as written, if any; `None` for a record whose process is
/// gone (a head that was killed).
fn read_record() -> Result<Option<LocalHead>> {
    let path = record_path();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Startup(format!(
                "reading the head's record {}: {e}",
                path.display()
            )))
        }
    };
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or_default()
            .to_string()
    };
    let Ok(pid) = field("pid").parse::<u32>() else {
        return Ok(None);
    };
    let start = field("start");
    if start.is_empty() || process_start(pid).as_deref() != Some(start.as_str()) {
        return Ok(None);
    }
    Ok(Some(LocalHead {
        address: field("address"),
        token_file: PathBuf::from(field("token_file")),
        pid,
    }))
}

/// The head running on this machine for this user, or an error that says
/// how to name one.
pub fn local_head() -> Result<LocalHead> {
    match read_record()? {
        Some(h) if !h.address.is_empty() => Ok(h),
        _ => Err(Error::NoCluster(format!(
            "no cluster address: pass --address HOST:PORT or set {ENV_ADDRESS}=HOST:PORT \
             (the address `fleet start --head` printed); {ENV_ADDRESS}={AUTO} and commands \
             without --address look for a head started on this machine by this user, and none \
             is running (its record would be {})",
            record_path().display()
        ))),
    }
}

/// The address to use: `given` (from `--address` or `FLEET_ADDRESS`)
/// unless it is empty or `auto`, else the head recorded on this machine.
pub fn resolve_address(given: Option<&str>) -> Result<String> {
    match given.map(str::trim) {
        Some(a) if !a.is_empty() && a != AUTO => Ok(a.to_string()),
        _ => local_head().map(|h| h.address),
    }
}

/// Reads a token file, with an error naming the ways to give the token.
pub fn read_token_file(path: &Path) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        Ok(_) => Err(Error::NoCluster(format!(
            "the token file {} is empty; pass --token-file with a copy of the file `fleet start \
             --head` wrote on the head's machine, or set {ENV_TOKEN}",
            path.display()
        ))),
        Err(e) => Err(Error::NoCluster(format!(
            "reading the token file {}: {e}; pass --token-file with a copy of the file `fleet \
             start --head` wrote on the head's machine (by default {}), or set {ENV_TOKEN} to \
             its contents",
            path.display(),
            default_token_file().display()
        ))),
    }
}

/// The token for the head at `address`: `--token-file`, else
/// `FLEET_TOKEN`, else the token file of the head recorded on this machine
/// when it is that head, else this user's default token file.
pub fn resolve_token(token_file: Option<&Path>, address: &str) -> Result<String> {
    if let Some(path) = token_file {
        return read_token_file(path);
    }
    if let Some(t) = std::env::var(ENV_TOKEN).ok().filter(|t| !t.is_empty()) {
        return Ok(t);
    }
    if let Ok(Some(h)) = read_record() {
        if h.address == address {
            return read_token_file(&h.token_file);
        }
    }
    let default = default_token_file();
    if default.is_file() {
        return read_token_file(&default);
    }
    Err(missing_token(address))
}

/// The error for a cluster token that was not given.
pub fn missing_token(address: &str) -> Error {
    Error::NoCluster(format!(
        "no cluster token for the head at {address}: set {ENV_TOKEN}=$(cat TOKEN_FILE) or pass \
         --token-file TOKEN_FILE, where TOKEN_FILE is a copy of the file `fleet start --head` \
         wrote on the head's machine (by default {}; its first lines of output name it)",
        default_token_file().display()
    ))
}

/// What the head answers a wrong or missing token with: the fix, named.
pub(crate) fn wrong_token(token_file: Option<&Path>) -> String {
    let file = match token_file {
        Some(p) => format!("{} on the head's machine", p.display()),
        None => "the token file `fleet start --head` wrote".to_string(),
    };
    format!(
        "wrong or missing cluster token: set {ENV_TOKEN} to the contents of {file}, or pass \
         --token-file with a copy of it (drivers on the head's machine may use \
         {ENV_ADDRESS}={AUTO})"
    )
}
