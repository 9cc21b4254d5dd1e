//! Freed store files kept for reuse, and the bulk copy into them.
//!
//! The kernel allocates and zeroes every fresh tmpfs page, which costs
//! more than the copy itself; a large put into pages that a freed object
//! already had pays for the copy only (Ray's plasma keeps one arena for the
//! same reason). A reader holds a shared `flock` on a store file for as
//! long as it maps it, so a file goes back to the pool only when nobody can
//! still see its bytes; otherwise it is unlinked as before.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use memmap2::MmapOptions;

/// The pool's folder, inside the store folder.
const FREE_DIR: &str = "free";
/// At most this many files wait in the pool.
const MAX_FILES: usize = 32;
/// Copies at least this large are split across threads.
const PARALLEL_MIN: usize = 16 << 20;

/// Takes the smallest pooled file that holds `hint` bytes (else the
/// largest) and renames it to `path`; a new empty file when the pool is
/// empty. Other processes on the node take from the same pool, so a file
/// that vanishes under us is simply skipped.
pub(super) fn take(dir: &Path, path: &Path, hint: u64) -> io::Result<File> {
    if let Ok(entries) = fs::read_dir(dir.join(FREE_DIR)) {
        let mut files: Vec<(u64, std::path::PathBuf)> = entries
            .flatten()
            .filter_map(|e| Some((e.metadata().ok()?.len(), e.path())))
            .collect();
        files.sort_by_key(|(len, _)| {
            if *len >= hint {
                (0, *len)
            } else {
                (1, u64::MAX - *len)
            }
        });
        for (_, p) in files {
            if fs::rename(&p, path).is_ok() {
                return OpenOptions::new().read(true).write(true).open(path);
            }
        }
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

/// Gives a freed object's file back: into the pool when it is one of this
/// store's files, no reader maps it and the pool has room; else unlinked.
pub(super) fn give_back(dir: &Path, path: &Path, max_bytes: u64) {
    if path.parent() == Some(dir) && pool(dir, path, max_bytes).unwrap_or(false) {
        return;
    }
    let _ = fs::remove_file(path);
}

fn pool(dir: &Path, path: &Path, max_bytes: u64) -> io::Result<bool> {
    let file = File::open(path)?;
    // Held until `file` closes, after the rename: a reader that opened the
    // file meanwhile sees that its path is gone and looks again.
    if !lock(&file, libc::LOCK_EX | libc::LOCK_NB) {
        return Ok(false);
    }
    let len = file.metadata()?.len();
    let free = dir.join(FREE_DIR);
    let (count, bytes) = fs::read_dir(&free)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .fold((0, 0), |(n, b), m| (n + 1, b + m.len()))
        })
        .unwrap_or((0, 0));
    if count >= MAX_FILES || bytes + len > max_bytes {
        return Ok(false);
    }
    fs::create_dir_all(&free)?;
    let name = path.file_name().unwrap_or_default();
    fs::rename(path, free.join(name))?;
    Ok(true)
}

/// `flock(op)` on `file`; false when it would block or fails.
pub(super) fn lock(file: &File, op: i32) -> bool {
    // SAFETY: flock on a descriptor `file` owns; released when it closes.
    unsafe { libc::flock(file.as_raw_fd(), op) == 0 }
}

/// Whether `path` still names the file `file` has open (a pooled or
/// spilled file has left its path).
pub(super) fn still_named(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

/// Copies `src` to `offset` in `file` through shared mappings, split over
/// a few threads. The range is reserved with `fallocate` first: a full
/// tmpfs is an error here instead of a SIGBUS in the middle of the copy.
pub(super) fn bulk_copy(file: &File, offset: u64, src: &[u8]) -> io::Result<()> {
    let len = src.len() as u64;
    // SAFETY: fallocate on a descriptor `file` owns.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, offset as i64, len as i64) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
            // Not tmpfs (a store in the temp folder): plain writes.
            return std::os::unix::fs::FileExt::write_all_at(file, src, offset);
        }
        return Err(e);
    }
    let threads = if src.len() >= PARALLEL_MIN {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
    } else {
        1
    };
    let page = 4096u64;
    // Piece boundaries fall on pages of the file, as mappings need.
    let step = (len / threads as u64).div_ceil(page) * page;
    let pieces: Vec<(u64, &[u8])> = (0..threads as u64)
        .map(|i| i * step)
        .take_while(|start| *start < len || *start == 0)
        .map(|start| {
            let end = (start + step).min(len);
            (offset + start, &src[start as usize..end as usize])
        })
        .collect();
    let copy = |(at, piece): (u64, &[u8])| -> io::Result<()> {
        let aligned = at / page * page;
        let lead = (at - aligned) as usize;
        // SAFETY: the file is ours alone until its location is published,
        // and its length covers the range (fallocate above).
        let mut map = unsafe {
            MmapOptions::new()
                .offset(aligned)
                .len(lead + piece.len())
                .populate()
                .map_mut(file)?
        };
        populate_read(piece);
        map[lead..].copy_from_slice(piece);
        Ok(())
    };
    if pieces.len() == 1 {
        return copy(pieces[0]);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = pieces
            .into_iter()
            .map(|p| s.spawn(move || copy(p)))
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(io::Error::other("copy thread panicked")))
        })
    })
}

/// Maps the pages of `src` in one call instead of one fault per page: a
/// freshly allocated source (untouched zero pages) otherwise costs more in
/// page faults than in copying.
/// Skipped when sampled pages are already mapped: walking the whole range
/// again would cost a quarter of the copy.
fn populate_read(src: &[u8]) {
    let page = 4096;
    let start = src.as_ptr() as usize / page * page;
    let end = src.as_ptr() as usize + src.len();
    let pages = (end - start) / page;
    let resident = (0..8).all(|i| {
        let mut v = 0u8;
        let at = start + pages * i / 8 * page;
        // SAFETY: mincore on one page of a live borrowed slice, into `v`.
        unsafe { libc::mincore(at as *mut libc::c_void, page, &mut v) == 0 && v & 1 == 1 }
    });
    if resident {
        return;
    }
    // SAFETY: advice only, on pages of a live borrowed slice; an error
    // (an old kernel without MADV_POPULATE_READ) changes nothing.
    unsafe {
        libc::madvise(
            start as *mut libc::c_void,
            end - start,
            libc::MADV_POPULATE_READ,
        );
    }
}
