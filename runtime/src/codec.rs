//! User values on the wire: serde encoded with postcard.
//!
//! Encoding also collects the ids of any [`ObjectRef`](crate::ObjectRef)
//! nested inside the value, so the head can keep those objects alive for as
//! long as the value that mentions them.

mod plain;

use std::cell::RefCell;
use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};
use crate::node::object_store::{Bytes, Mapping};

/// Values at most this large travel inline in task messages; larger ones go
/// to the node's object store.
pub const INLINE_MAX: usize = 100 * 1024;

thread_local! {
    static NESTED: RefCell<Option<Vec<u64>>> = const { RefCell::new(None) };
    /// The mapped store file being decoded, so a `Blob` can point into it.
    static BACKING: RefCell<Option<Arc<Mapping>>> = const { RefCell::new(None) };
    /// The pulled buffer being decoded, so a `Blob` can share it.
    static PULLED: RefCell<Option<bytes::Bytes>> = const { RefCell::new(None) };
    /// Bytes written so far by the encoder on this thread, so an
    /// [`Array`](crate::Array) can pad its data to its alignment.
    static POSITION: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Where the encoder on this thread is, if it is Fleet's encoder.
pub(crate) fn position() -> Option<u64> {
    POSITION.with(|p| p.get())
}

/// A writer that keeps [`POSITION`] up to date.
struct Counting<W>(W);

impl<W: std::io::Write> std::io::Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(buf)?;
        POSITION.with(|p| p.set(p.get().map(|at| at + n as u64)));
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// The mapping under the value being decoded on this thread, if any.
pub(crate) fn backing() -> Option<Arc<Mapping>> {
    BACKING.with(|b| b.borrow().clone())
}

/// The pulled buffer under the value being decoded on this thread, if any.
pub(crate) fn pulled() -> Option<bytes::Bytes> {
    PULLED.with(|b| b.borrow().clone())
}

/// Decodes a value from a message or a mapped store file; `Blob`s inside
/// a mapped value share the mapping instead of copying.
pub(crate) fn decode_from<T: DeserializeOwned>(bytes: &Bytes) -> Result<T> {
    match bytes {
        Bytes::Inline(b) => decode(b),
        Bytes::Mapped(m) => {
            let outer = BACKING.with(|b| b.borrow_mut().replace(m.clone()));
            let out = decode(m);
            BACKING.with(|b| *b.borrow_mut() = outer);
            out
        }
        Bytes::Pulled(p) => {
            let outer = PULLED.with(|b| b.borrow_mut().replace(p.clone()));
            let out = decode(p);
            PULLED.with(|b| *b.borrow_mut() = outer);
            out
        }
    }
}

/// A value encoded for the wire, with the refs found inside it.
#[derive(Debug, Default)]
pub(crate) struct Encoded {
    pub(crate) bytes: Vec<u8>,
    pub(crate) nested: Vec<u64>,
}

pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Encoded> {
    let mut bytes = Vec::new();
    let nested = encode_into(value, &mut bytes)?;
    Ok(Encoded { bytes, nested })
}

/// Encodes `value` into `writer`; returns the refs nested inside it.
pub(crate) fn encode_into<T: Serialize + ?Sized, W: std::io::Write>(
    value: &T,
    writer: W,
) -> std::result::Result<Vec<u64>, postcard::Error> {
    let mut writer = writer;
    if let Some(done) = plain::encode(value, &mut writer) {
        // A plain numeric vector holds no refs.
        return done
            .map(|()| Vec::new())
            .map_err(|_| postcard::Error::SerializeBufferFull);
    }
    let outer = NESTED.with(|n| n.borrow_mut().replace(Vec::new()));
    let outer_at = POSITION.with(|p| p.replace(Some(0)));
    let done = postcard::to_io(value, Counting(writer));
    POSITION.with(|p| p.set(outer_at));
    let nested = NESTED.with(|n| std::mem::replace(&mut *n.borrow_mut(), outer));
    done.map(|_| nested.unwrap_or_default())
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    if let Some(v) = plain::decode(bytes) {
        return Ok(v);
    }
    postcard::from_bytes(bytes).map_err(|e| {
        Error::Codec(format!(
            "cannot decode a {} from {} bytes: {e}",
            std::any::type_name::<T>(),
            bytes.len()
        ))
    })
}

/// Called by `ObjectRef`'s `Serialize`: remembers a nested ref.
pub(crate) fn note_nested(id: u64) {
    NESTED.with(|n| {
        if let Some(v) = n.borrow_mut().as_mut() {
            v.push(id);
        }
    });
}
