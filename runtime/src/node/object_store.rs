//! The node's object store: one file per large object in a session folder
//! on `/dev/shm` (tmpfs, so the file *is* shared memory). The producer
//! writes it once; every reader on the node maps it read-only, so a value
//! crosses no socket. The head deletes the file when the object is freed;
//! readers that still map it keep their pages until they unmap.

use std::fs;
use std::io::Write;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::proto::StoreLocation;

/// Bytes of a value: inline from a message, or a mapped store file.
#[derive(Clone)]
pub(crate) enum Bytes {
    Inline(bytes::Bytes),
    Mapped(Arc<Mmap>),
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Inline(b) => b,
            Bytes::Mapped(m) => m,
        }
    }
}

/// Handle on one node's store folder.
#[derive(Clone, Debug)]
pub(crate) struct ObjectStore {
    dir: PathBuf,
    node: String,
}

const PREFIX: &str = "fleet-";

impl ObjectStore {
    /// Creates a fresh session folder, preferring tmpfs. Folders left by
    /// sessions whose process is gone (a driver killed with SIGKILL cannot
    /// clean up) are removed first.
    pub(crate) fn create(node: &str) -> Result<Self> {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        sweep_stale(&base);
        let dir = base.join(format!(
            "{PREFIX}{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        fs::create_dir_all(&dir)
            .map_err(|e| Error::Store(format!("creating {}: {e}", dir.display())))?;
        Ok(ObjectStore {
            dir,
            node: node.to_string(),
        })
    }

    /// Opens a folder another process created.
    pub(crate) fn open(dir: &str, node: &str) -> Self {
        ObjectStore {
            dir: PathBuf::from(dir),
            node: node.to_string(),
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes one object; a full or unwritable disk is an error, not a crash.
    pub(crate) fn write(&self, id: u64, bytes: &[u8]) -> Result<StoreLocation> {
        let path = self.dir.join(format!("{id:016x}"));
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&path)?;
            f.write_all(bytes)?;
            Ok(())
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&path);
            return Err(Error::Store(format!(
                "writing {} bytes to {}: {e}",
                bytes.len(),
                path.display()
            )));
        }
        Ok(StoreLocation {
            path: path.to_string_lossy().into_owned(),
            size: bytes.len() as u64,
            node: self.node.clone(),
        })
    }

    /// Maps a stored object read-only.
    pub(crate) fn read(&self, loc: &StoreLocation) -> Result<Bytes> {
        let file = fs::File::open(&loc.path)
            .map_err(|e| Error::Store(format!("opening {}: {e}", loc.path)))?;
        // SAFETY: store files are written once, before their location is
        // published, and never modified afterwards, only unlinked.
        let map = unsafe { Mmap::map(&file) }
            .map_err(|e| Error::Store(format!("mapping {}: {e}", loc.path)))?;
        if map.len() as u64 != loc.size {
            return Err(Error::Store(format!(
                "{} has {} bytes, expected {}",
                loc.path,
                map.len(),
                loc.size
            )));
        }
        Ok(Bytes::Mapped(Arc::new(map)))
    }

    pub(crate) fn delete(path: &str) {
        let _ = fs::remove_file(path);
    }

    pub(crate) fn remove_all(&self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn sweep_stale(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}
