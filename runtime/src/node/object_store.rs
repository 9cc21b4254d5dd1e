//! The node's object store: one file per large object in a session folder
//! on `/dev/shm` (tmpfs, so the file *is* shared memory). The producer
//! writes it once; every reader on the node maps it read-only, so a value
//! crosses no socket. The head deletes the file when the object is freed;
//! readers that still map it keep their pages until they unmap.
//!
//! The store has a capacity. Past it, the head moves the least recently
//! used objects to a spill folder on disk; readers map them from there (the
//! page cache brings them back on demand). A value larger than the whole
//! store is refused with an error saying so.

use std::fs;
use std::io::{self, Write};
use std::ops::Deref;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

mod pool;

use crate::codec::INLINE_MAX;
use crate::error::{Error, Result};
use crate::proto::StoreLocation;

/// Bytes of a value: inline from a message, or a mapped store file.
#[derive(Clone)]
pub(crate) enum Bytes {
    Inline(bytes::Bytes),
    Mapped(Arc<Mapping>),
    /// A large value pulled over the network into one buffer (a driver on
    /// a machine without a node): `Blob`s decoded from it share the buffer.
    Pulled(bytes::Bytes),
}

/// A store file mapped read-only, with the shared lock that keeps it out
/// of the pool of reusable files while mapped.
pub(crate) struct Mapping {
    map: Mmap,
    _lease: fs::File,
}

impl Deref for Mapping {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map
    }
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Inline(b) | Bytes::Pulled(b) => b,
            Bytes::Mapped(m) => m,
        }
    }
}

/// Handle on one node's store folders.
#[derive(Clone, Debug)]
pub(crate) struct ObjectStore {
    dir: PathBuf,
    spill_dir: PathBuf,
    node: String,
    capacity: u64,
    /// Random id written into the store folder (empty when opened).
    key: String,
}

const PREFIX: &str = "fleet-";

/// The file in a store folder that holds the store's random id: a process
/// that can read it there shares the store (same machine, same `/dev/shm`).
pub(crate) const KEY_FILE: &str = ".fleet-store-id";

/// Default capacity: 30% of physical memory, as Ray's default.
pub(crate) fn default_capacity() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if pages > 0 && page > 0 {
        (pages as u64 * page as u64) * 3 / 10
    } else {
        4 << 30
    }
}

fn session_dir(base: &Path) -> PathBuf {
    base.join(format!(
        "{PREFIX}{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ))
}

impl ObjectStore {
    /// Creates fresh session folders, preferring tmpfs for the store and
    /// `FLEET_SPILL_DIR` (default: the temp dir) for spilling. Folders left
    /// by sessions whose process is gone (a driver killed with SIGKILL
    /// cannot clean up) are removed first.
    pub(crate) fn create(node: &str, capacity: u64) -> Result<Self> {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let spill_base = std::env::var_os("FLEET_SPILL_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        sweep_stale(&base);
        sweep_stale(&spill_base);
        let dir = session_dir(&base);
        let spill_dir = session_dir(&spill_base);
        for d in [&dir, &spill_dir] {
            if let Err(e) = fs::create_dir_all(d) {
                // Leave nothing behind from a failed start.
                let _ = fs::remove_dir(&dir);
                return Err(Error::Store(format!("creating {}: {e}", d.display())));
            }
        }
        let key = format!("{:032x}", rand::random::<u128>());
        if let Err(e) = fs::write(dir.join(KEY_FILE), &key) {
            let _ = fs::remove_dir_all(&dir);
            let _ = fs::remove_dir_all(&spill_dir);
            return Err(Error::Store(format!("writing {}: {e}", dir.display())));
        }
        Ok(ObjectStore {
            dir,
            spill_dir,
            node: node.to_string(),
            capacity,
            key,
        })
    }

    /// Opens folders another process created.
    pub(crate) fn open(dir: &str, spill_dir: &str, node: &str, capacity: u64) -> Self {
        ObjectStore {
            dir: PathBuf::from(dir),
            spill_dir: PathBuf::from(spill_dir),
            node: node.to_string(),
            capacity,
            key: String::new(),
        }
    }

    /// Whether this process shares the store described by `info`: it can
    /// read the store's id in the store folder (so it sees the same
    /// `/dev/shm`, which IP addresses cannot tell) and may write there.
    pub(crate) fn reachable(info: &crate::proto::NodeInfo) -> bool {
        let dir = Path::new(&info.store_dir);
        if info.store_key.is_empty() {
            return false;
        }
        let Ok(found) = fs::read_to_string(dir.join(KEY_FILE)) else {
            return false;
        };
        let Ok(c) = std::ffi::CString::new(info.store_dir.as_bytes()) else {
            return false;
        };
        // SAFETY: access(2) only reads the NUL-terminated path.
        let writable = unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0;
        found.trim() == info.store_key && writable
    }

    /// The store's random id (see [`KEY_FILE`]); empty for a store opened
    /// rather than created by this process.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn spill_dir(&self) -> &Path {
        &self.spill_dir
    }

    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    fn too_large(&self, size: u64) -> Error {
        Error::Store(format!(
            "a value of {size} bytes is larger than the whole object store ({} bytes); \
             give the cluster a larger store (Config::object_store_bytes)",
            self.capacity
        ))
    }

    /// Writes one object; a full or unwritable disk is an error, not a crash.
    pub(crate) fn write(&self, id: u64, bytes: &[u8]) -> Result<StoreLocation> {
        let mut w = self.writer(id);
        if let Err(e) = w.write_all(bytes) {
            return Err(w.error(e));
        }
        match w.finish()? {
            Written::Stored(loc) => Ok(loc),
            Written::Inline(_) => Err(Error::Store("the store file was not created".into())),
        }
    }

    /// A writer that keeps a small value in memory and streams a large one
    /// straight into a store file, so a large `put` is never held twice.
    pub(crate) fn writer(&self, id: u64) -> StoreWriter<'_> {
        StoreWriter {
            store: self,
            path: self.dir.join(format!("{id:016x}")),
            buffer: Vec::new(),
            file: None,
            at: 0,
            written: 0,
        }
    }

    /// Maps a stored object read-only, from wherever it is now.
    pub(crate) fn read(&self, loc: &StoreLocation) -> Result<Bytes> {
        let name = Path::new(&loc.path).file_name().unwrap_or_default();
        // A file spilled or freed between `open` and the lock has left its
        // path; look again (a spilled one is found in the spill folder).
        for _ in 0..3 {
            let (file, path) = match fs::File::open(&loc.path) {
                Ok(f) => (f, PathBuf::from(&loc.path)),
                // Spilled since the location was sent: same name, spill folder.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let spilled = self.spill_dir.join(name);
                    match fs::File::open(&spilled) {
                        Ok(f) => (f, spilled),
                        Err(_) => return Err(Error::Store(format!("opening {}: {e}", loc.path))),
                    }
                }
                Err(e) => return Err(Error::Store(format!("opening {}: {e}", loc.path))),
            };
            if !pool::lock(&file, libc::LOCK_SH) || !pool::still_named(&file, &path) {
                continue;
            }
            // SAFETY: store files are written once, before their location
            // is published, and not modified while a reader holds the lease.
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
            return Ok(Bytes::Mapped(Arc::new(Mapping { map, _lease: file })));
        }
        Err(Error::Store(format!(
            "{} was freed while being read",
            loc.path
        )))
    }

    /// Moves a stored object to the spill folder; returns its new path.
    /// The original is unlinked only once the copy is complete.
    pub(crate) fn spill(&self, path: &str) -> Result<String> {
        let name = Path::new(path).file_name().unwrap_or_default();
        let target = self.spill_dir.join(name);
        let partial = target.with_extension("partial");
        let copy = || -> io::Result<()> {
            fs::copy(path, &partial)?;
            fs::File::open(&partial)?.sync_all()?;
            fs::rename(&partial, &target)
        };
        if let Err(e) = copy() {
            let _ = fs::remove_file(&partial);
            return Err(Error::Store(format!(
                "spilling {path} to {}: {e}",
                self.spill_dir.display()
            )));
        }
        let _ = fs::remove_file(path);
        Ok(target.to_string_lossy().into_owned())
    }

    pub(crate) fn delete(path: &str) {
        let _ = fs::remove_file(path);
    }

    /// Disposes of a freed object's file: its pages are kept for the next
    /// large value (see `pool`) when nobody maps it, else it is deleted.
    pub(crate) fn discard(&self, path: &str) {
        pool::give_back(&self.dir, Path::new(path), self.capacity / 4);
    }

    /// Empties the store and its spill folder of objects (and the pool of
    /// freed files), keeping the folders, the store's id file and the
    /// executables cached under `binaries/` (named by content hash, so
    /// never stale). A node agent
    /// does this when it rejoins a head: the old session's objects mean
    /// nothing to the new one.
    pub(crate) fn clear(&self) {
        for dir in [&self.dir, &self.spill_dir] {
            let Ok(entries) = fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                let path = e.path();
                // The store's id file (and any other dotfile) names the
                // store, not an object: it stays.
                if e.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                if path.is_dir() {
                    if e.file_name() != "binaries" {
                        let _ = fs::remove_dir_all(&path);
                    }
                } else {
                    let _ = fs::remove_file(&path);
                }
            }
        }
    }

    pub(crate) fn remove_all(&self) {
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_dir_all(&self.spill_dir);
    }
}

/// What a [`StoreWriter`] produced.
pub(crate) enum Written {
    Inline(Vec<u8>),
    Stored(StoreLocation),
}

/// See [`ObjectStore::writer`].
pub(crate) struct StoreWriter<'a> {
    store: &'a ObjectStore,
    path: PathBuf,
    /// Small writes not yet in the file (all of an inline value).
    buffer: Vec<u8>,
    file: Option<fs::File>,
    /// Bytes already in the file.
    at: u64,
    written: u64,
}

/// Writes at least this large skip the buffer and go straight to the file.
const BULK: usize = 1 << 20;

impl StoreWriter<'_> {
    fn flush_buffer(&mut self) -> io::Result<()> {
        if let Some(f) = &self.file {
            f.write_all_at(&self.buffer, self.at)?;
            self.at += self.buffer.len() as u64;
            self.buffer.clear();
        }
        Ok(())
    }

    /// Turns an I/O error into the store's error, removing the partial file.
    pub(crate) fn error(&mut self, e: io::Error) -> Error {
        self.file = None;
        let _ = fs::remove_file(&self.path);
        if self.written > self.store.capacity {
            return self.store.too_large(self.written);
        }
        if e.raw_os_error() == Some(libc::ENOSPC) {
            return Error::Store(format!(
                "no room for {} bytes in {}: the file system under the object store is full; \
                 drop refs you no longer need, or give the cluster a store smaller than that \
                 file system (Config::object_store_bytes, --object-store-bytes) so it spills \
                 to disk first",
                self.written,
                self.store.dir.display()
            ));
        }
        Error::Store(format!(
            "writing {} bytes to {}: {e}",
            self.written,
            self.path.display()
        ))
    }

    pub(crate) fn finish(mut self) -> Result<Written> {
        if self.file.is_none() {
            return Ok(Written::Inline(std::mem::take(&mut self.buffer)));
        }
        let done = self.flush_buffer().and_then(|()| match &self.file {
            // A pooled file may have been longer than this value.
            Some(f) => f.set_len(self.at),
            None => Ok(()),
        });
        if let Err(e) = done {
            return Err(self.error(e));
        }
        Ok(Written::Stored(StoreLocation {
            path: self.path.to_string_lossy().into_owned(),
            size: self.written,
            node: self.store.node.clone(),
        }))
    }
}

impl Write for StoreWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written += buf.len() as u64;
        if self.written > self.store.capacity {
            return Err(io::Error::other("larger than the object store"));
        }
        if self.file.is_none() && self.buffer.len() + buf.len() > INLINE_MAX {
            // Too large to be inline: from here on, into a store file.
            let hint = (self.buffer.len() + buf.len()) as u64;
            self.file = Some(pool::take(&self.store.dir, &self.path, hint)?);
        }
        if self.file.is_some() && buf.len() >= BULK {
            self.flush_buffer()?;
            if let Some(f) = &self.file {
                pool::bulk_copy(f, self.at, buf)?;
            }
            self.at += buf.len() as u64;
            return Ok(buf.len());
        }
        self.buffer.extend_from_slice(buf);
        if self.file.is_some() && self.buffer.len() >= BULK {
            self.flush_buffer()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
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
        // Only session folders, `fleet-<pid>-<8 hex digits>`: other folders
        // named fleet-… (such as the CLI's `fleet-<uid>`) are not ours.
        let Some((pid, tag)) = rest.split_once('-') else {
            continue;
        };
        if tag.len() != 8 || !tag.chars().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        let Ok(pid) = pid.parse::<i32>() else {
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
