//! A fast path for plain numeric vectors (`Vec<u8>`, `Vec<i8>`,
//! `Vec<f32>`, `Vec<f64>`) as whole values.
//!
//! serde has no way to say "these are just bytes" for a `Vec<u8>`: it is a
//! sequence, and postcard writes and reads it one element at a time, through
//! the writer for every byte (issue 15 measured 1.1 s to put a 200 MiB
//! `Vec<u8>` against 41 ms for a [`Blob`](crate::Blob)). For these element
//! types postcard's format *is* a varint length followed by each element's
//! little-endian bytes, so when the whole value has one of these types the
//! codec writes and reads that block at once. The bytes are exactly what
//! postcard produces, so either side may use either path (a `Vec<f64>`
//! inside a struct still goes through serde).

use std::any::TypeId;
use std::mem::ManuallyDrop;

/// The element type of a plain vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Elem {
    U8,
    I8,
    F32,
    F64,
}

/// Whether `T` is one of the plain vectors; `typeid` gives a `TypeId` for
/// any `T`, without the `'static` bound the API's values do not carry.
fn elem_of<T: ?Sized>() -> Option<Elem> {
    let t = typeid::of::<T>();
    [
        (TypeId::of::<Vec<u8>>(), Elem::U8),
        (TypeId::of::<Vec<i8>>(), Elem::I8),
        (TypeId::of::<Vec<f32>>(), Elem::F32),
        (TypeId::of::<Vec<f64>>(), Elem::F64),
    ]
    .into_iter()
    .find(|(id, _)| *id == t)
    .map(|(_, e)| e)
}

/// postcard's varint (LEB128) of a length.
fn varint(mut n: u64, out: &mut [u8; 10]) -> &[u8] {
    let mut i = 0;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out[i] = byte;
            return &out[..=i];
        }
        out[i] = byte | 0x80;
        i += 1;
    }
}

/// Reads postcard's varint length; returns it and the bytes after it.
fn read_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut n = 0u64;
    for (i, b) in bytes.iter().enumerate().take(10) {
        n |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((n, &bytes[i + 1..]));
        }
    }
    None
}

/// The elements' bytes (little-endian on every target Fleet builds for).
fn element_bytes<E: bytemuck::Pod>(v: &[E]) -> &[u8] {
    bytemuck::cast_slice(v)
}

/// Writes `value` in one block if it is a plain vector; `None` if it is
/// not (the caller encodes it with serde).
pub(super) fn encode<T: ?Sized, W: std::io::Write>(
    value: &T,
    writer: &mut W,
) -> Option<std::io::Result<()>> {
    if cfg!(target_endian = "big") {
        return None;
    }
    let elem = elem_of::<T>()?;
    let ptr = value as *const T;
    // SAFETY: `elem_of` matched T's type id to exactly this Vec type, so
    // the pointer is to one.
    let (len, bytes) = unsafe {
        match elem {
            Elem::U8 => {
                let v = &*(ptr as *const Vec<u8>);
                (v.len(), element_bytes(v))
            }
            Elem::I8 => {
                let v = &*(ptr as *const Vec<i8>);
                (v.len(), element_bytes(v))
            }
            Elem::F32 => {
                let v = &*(ptr as *const Vec<f32>);
                (v.len(), element_bytes(v))
            }
            Elem::F64 => {
                let v = &*(ptr as *const Vec<f64>);
                (v.len(), element_bytes(v))
            }
        }
    };
    let mut head = [0u8; 10];
    Some(
        writer
            .write_all(varint(len as u64, &mut head))
            .and_then(|()| writer.write_all(bytes)),
    )
}

/// Vectors at least this large are copied out by several threads.
const PARALLEL_MIN: usize = 16 << 20;

/// Copies `bytes` into a new vector of `E`.
fn copy_out<E: bytemuck::Pod>(len: usize, bytes: &[u8]) -> Vec<E> {
    let mut v: Vec<E> = Vec::with_capacity(len);
    let n = len * std::mem::size_of::<E>();
    // SAFETY: the capacity holds `len` elements (`n` bytes), the source
    // has at least `n` bytes (checked by the caller), the two do not
    // overlap, and every bit pattern is a valid `E` (Pod).
    unsafe {
        copy_to(&bytes[..n], v.as_mut_ptr().cast::<u8>());
        v.set_len(len);
    }
    v
}

/// Copies `src` to `dst`. A large copy is split over up to 4 threads, and
/// each maps its pieces of both sides in one call first: a fresh vector's
/// pages and a mapped store file's pages otherwise cost one page fault
/// each, which is more than the copy itself (a `Blob` reads the mapping
/// without any of this, which is why a plain vector trailed it).
///
/// SAFETY: `dst` is valid for `src.len()` bytes of writes and does not
/// overlap `src`.
unsafe fn copy_to(src: &[u8], dst: *mut u8) {
    let threads = if src.len() >= PARALLEL_MIN {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
    } else {
        1
    };
    if threads == 1 {
        std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len());
        return;
    }
    let step = src.len().div_ceil(threads).div_ceil(PAGE) * PAGE;
    // A raw pointer is not `Send`; its address is.
    let base = dst as usize;
    let piece = move |(i, part): (usize, &[u8])| {
        let at = (base + i * step) as *mut u8;
        populate(part.as_ptr(), part.len(), libc::MADV_POPULATE_READ);
        populate(at, part.len(), libc::MADV_POPULATE_WRITE);
        // SAFETY: pieces are disjoint slices of the caller's ranges.
        unsafe { std::ptr::copy_nonoverlapping(part.as_ptr(), at, part.len()) };
    };
    std::thread::scope(|s| {
        let mut parts = src.chunks(step).enumerate();
        let mine = parts.next();
        for p in parts {
            s.spawn(move || piece(p));
        }
        if let Some(p) = mine {
            piece(p);
        }
    });
}

const PAGE: usize = 4096;

/// Maps the whole pages inside `[at, at + len)` in one call. Advice only:
/// an error (an old kernel) leaves the pages to be faulted in one by one.
fn populate(at: *const u8, len: usize, how: libc::c_int) {
    let start = (at as usize).div_ceil(PAGE) * PAGE;
    let end = (at as usize + len) / PAGE * PAGE;
    if end > start {
        // SAFETY: advice on whole pages inside a range the caller owns.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, how) };
    }
}

/// Reads a plain vector in one block. `None` if `T` is not one, or if the
/// bytes are short (serde then reports the error as usual).
pub(super) fn decode<T>(bytes: &[u8]) -> Option<T> {
    if cfg!(target_endian = "big") {
        return None;
    }
    let elem = elem_of::<T>()?;
    let (len, rest) = read_varint(bytes)?;
    let len = usize::try_from(len).ok()?;
    let size = match elem {
        Elem::U8 | Elem::I8 => 1,
        Elem::F32 => 4,
        Elem::F64 => 8,
    };
    if rest.len() < len.checked_mul(size)? {
        return None;
    }
    /// Moves a `Vec<E>` into a `T` that is that very type.
    ///
    /// SAFETY: callers pass `V` = `T` (checked through `elem_of`).
    unsafe fn cast<V, T>(v: V) -> T {
        let v = ManuallyDrop::new(v);
        std::mem::transmute_copy::<V, T>(&v)
    }
    // SAFETY: `elem_of` matched T's type id to exactly this Vec type.
    Some(unsafe {
        match elem {
            Elem::U8 => cast(copy_out::<u8>(len, rest)),
            Elem::I8 => cast(copy_out::<i8>(len, rest)),
            Elem::F32 => cast(copy_out::<f32>(len, rest)),
            Elem::F64 => cast(copy_out::<f64>(len, rest)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast<T: ?Sized>(v: &T) -> Vec<u8> {
        let mut out = Vec::new();
        encode(v, &mut out).expect("a plain vector").unwrap();
        out
    }

    #[test]
    fn the_bytes_are_postcards() {
        let u: Vec<u8> = (0..=255).cycle().take(70_000).collect();
        assert_eq!(fast(&u), postcard::to_allocvec(&u).unwrap());
        let i: Vec<i8> = vec![-1, 0, 1, i8::MIN, i8::MAX];
        assert_eq!(fast(&i), postcard::to_allocvec(&i).unwrap());
        let f: Vec<f32> = vec![0.5, -1.25, f32::MAX, f32::MIN_POSITIVE];
        assert_eq!(fast(&f), postcard::to_allocvec(&f).unwrap());
        let d: Vec<f64> = (0..1000).map(|x| x as f64 * 0.1 - 7.0).collect();
        assert_eq!(fast(&d), postcard::to_allocvec(&d).unwrap());
        let empty: Vec<f64> = Vec::new();
        assert_eq!(fast(&empty), postcard::to_allocvec(&empty).unwrap());
    }

    #[test]
    fn postcards_bytes_read_back() {
        let d: Vec<f64> = (0..300).map(|x| x as f64 / 3.0).collect();
        let bytes = postcard::to_allocvec(&d).unwrap();
        assert_eq!(decode::<Vec<f64>>(&bytes), Some(d));
        let u: Vec<u8> = vec![9; 200];
        assert_eq!(
            decode::<Vec<u8>>(&postcard::to_allocvec(&u).unwrap()),
            Some(u)
        );
    }

    #[test]
    fn a_large_vector_is_copied_whole_by_several_threads() {
        // Past `PARALLEL_MIN`, with a length that is not a multiple of the
        // piece size, so the last piece is short.
        let d: Vec<f64> = (0..(PARALLEL_MIN / 8 * 3 + 1001))
            .map(|x| x as f64 * 0.5)
            .collect();
        let bytes = postcard::to_allocvec(&d).unwrap();
        assert_eq!(decode::<Vec<f64>>(&bytes), Some(d));
        let u: Vec<u8> = (0..PARALLEL_MIN * 2 + 7).map(|x| (x % 251) as u8).collect();
        assert_eq!(decode::<Vec<u8>>(&fast(&u)), Some(u));
    }

    #[test]
    fn other_types_and_short_input_take_the_serde_path() {
        assert!(encode(&vec![1u32, 2], &mut Vec::new()).is_none());
        assert!(encode(&(1u8, 2u8), &mut Vec::new()).is_none());
        assert!(decode::<Vec<u64>>(&[1, 1]).is_none());
        // A length of 3 f64s with only 8 bytes behind it.
        assert!(decode::<Vec<f64>>(&[3, 0, 0, 0, 0, 0, 0, 0, 0]).is_none());
        assert!(decode::<Vec<u8>>(&[0x80]).is_none());
    }
}
