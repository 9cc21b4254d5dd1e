//! User values on the wire: serde encoded with postcard.
//!
//! Encoding also collects the ids of any [`ObjectRef`](crate::ObjectRef)
//! nested inside the value, so the head can keep those objects alive for as
//! long as the value that mentions them.

use std::cell::RefCell;

use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};

/// Values at most this large travel inline in task messages; larger ones go
/// to the node's object store.
pub const INLINE_MAX: usize = 100 * 1024;

thread_local! {
    static NESTED: RefCell<Option<Vec<u64>>> = const { RefCell::new(None) };
}

/// A value encoded for the wire, with the refs found inside it.
#[derive(Debug, Default)]
pub(crate) struct Encoded {
    pub(crate) bytes: Vec<u8>,
    pub(crate) nested: Vec<u64>,
}

pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Encoded> {
    let outer = NESTED.with(|n| n.borrow_mut().replace(Vec::new()));
    let bytes = postcard::to_allocvec(value);
    let nested = NESTED.with(|n| std::mem::replace(&mut *n.borrow_mut(), outer));
    Ok(Encoded {
        bytes: bytes?,
        nested: nested.unwrap_or_default(),
    })
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
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
