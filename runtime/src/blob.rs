//! [`Blob`]: bytes that move as one block and are read without a copy.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codec;

/// A byte buffer for large binary values. It is encoded as one block (a
/// `Vec<u8>` goes through serde byte by byte), and when it is read from the
/// node's shared-memory store it is not copied at all: the `Blob` points
/// into the mapped store file, shared with every other reader on the node.
/// Works anywhere inside a value: a struct with `Blob` fields decodes its
/// blobs without copying too.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Blob(bytes::Bytes);

impl Blob {
    /// Wraps bytes.
    pub fn new(bytes: impl Into<bytes::Bytes>) -> Self {
        Blob(bytes.into())
    }

    /// The bytes, cheaply cloneable.
    pub fn into_bytes(self) -> bytes::Bytes {
        self.0
    }
}

impl Deref for Blob {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Blob {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Blob {
    fn from(v: Vec<u8>) -> Self {
        Blob(v.into())
    }
}

impl From<bytes::Bytes> for Blob {
    fn from(b: bytes::Bytes) -> Self {
        Blob(b)
    }
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blob({} bytes)", self.0.len())
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

/// A window into a mapped store file; keeps the mapping alive.
struct MapSlice {
    map: Arc<crate::node::object_store::Mapping>,
    start: usize,
    len: usize,
}

impl AsRef<[u8]> for MapSlice {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.start..self.start + self.len]
    }
}

/// `v` as a share of the mapped store file being decoded, if it lies in
/// one: no copy.
pub(crate) fn shared(v: &[u8]) -> Option<bytes::Bytes> {
    if let Some(buf) = codec::pulled() {
        let base = buf.as_ptr() as usize;
        let at = v.as_ptr() as usize;
        return (at >= base && at + v.len() <= base + buf.len()).then(|| buf.slice_ref(v));
    }
    let map = codec::backing()?;
    let base = map.as_ptr() as usize;
    let at = v.as_ptr() as usize;
    (at >= base && at + v.len() <= base + map.len()).then(|| {
        bytes::Bytes::from_owner(MapSlice {
            map,
            start: at - base,
            len: v.len(),
        })
    })
}

struct BlobVisitor;

impl<'de> Visitor<'de> for BlobVisitor {
    type Value = Blob;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes")
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Blob, E> {
        Ok(Blob(
            shared(v).unwrap_or_else(|| bytes::Bytes::copy_from_slice(v)),
        ))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Blob, E> {
        Ok(Blob(bytes::Bytes::copy_from_slice(v)))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Blob, E> {
        Ok(Blob(v.into()))
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_bytes(BlobVisitor)
    }
}
