//! [`Array`]: a typed numeric buffer that moves as one block and is read
//! without a copy.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;

use bytemuck::Pod;
use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codec;

/// A vector of plain numbers (`f64`, `i32`, `u8`, … any [`bytemuck::Pod`]
/// type) for large numeric values. Like [`Blob`](crate::Blob) it is
/// encoded as one block, and when read from the node's shared-memory store
/// it is not copied: it points into the mapped store file. The encoder
/// pads the data to the element's alignment within the store file, so the
/// mapping can be viewed as `&[T]` directly; a value that arrives inline
/// (under 100 KiB) at an unaligned address is copied once.
///
/// It dereferences to `&[T]`, so `ndarray::ArrayView1::from(&array[..])`
/// or any slice API reads it in place.
pub struct Array<T: Pod> {
    /// Invariant: aligned for `T`, and a whole number of `T`s long.
    bytes: bytes::Bytes,
    _t: PhantomData<T>,
}

/// A `Vec<T>` seen as bytes, owned by a `bytes::Bytes`.
struct Owned<T: Pod>(Vec<T>);

impl<T: Pod> AsRef<[u8]> for Owned<T> {
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice(&self.0)
    }
}

impl<T: Pod + Send + Sync> Array<T> {
    fn from_bytes_checked(bytes: bytes::Bytes) -> Option<Self> {
        let aligned = (bytes.as_ptr() as usize) % std::mem::align_of::<T>() == 0;
        let whole = bytes.len() % std::mem::size_of::<T>().max(1) == 0;
        (aligned && whole).then_some(Array {
            bytes,
            _t: PhantomData,
        })
    }

    /// Copies unaligned bytes into a fresh, aligned buffer.
    fn copied(raw: &[u8]) -> Option<Self> {
        let size = std::mem::size_of::<T>().max(1);
        if raw.len() % size != 0 {
            return None;
        }
        let mut v = vec![T::zeroed(); raw.len() / size];
        bytemuck::cast_slice_mut::<T, u8>(&mut v).copy_from_slice(raw);
        Some(Array::from(v))
    }

    /// The raw bytes (shared, not copied), for example for an Arrow buffer.
    pub fn as_bytes(&self) -> &bytes::Bytes {
        &self.bytes
    }
}

impl<T: Pod + Send + Sync> From<Vec<T>> for Array<T> {
    fn from(v: Vec<T>) -> Self {
        Array {
            bytes: bytes::Bytes::from_owner(Owned(v)),
            _t: PhantomData,
        }
    }
}

impl<T: Pod> Deref for Array<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // The invariant makes this cast infallible.
        bytemuck::cast_slice(&self.bytes)
    }
}

impl<T: Pod> Clone for Array<T> {
    fn clone(&self) -> Self {
        Array {
            bytes: self.bytes.clone(),
            _t: PhantomData,
        }
    }
}

impl<T: Pod + PartialEq> PartialEq for Array<T> {
    fn eq(&self, other: &Self) -> bool {
        self[..] == other[..]
    }
}

impl<T: Pod> fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Array<{}>({} elements)",
            std::any::type_name::<T>(),
            self.len()
        )
    }
}

/// Bytes encoded as one block.
struct Raw<'a>(&'a [u8]);

impl Serialize for Raw<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// Length of a postcard varint.
fn varint_len(mut n: u64) -> u64 {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

/// Encoded as (padding, data): the padding puts the data at an offset
/// aligned for `T` from the start of the encoding, which is where a store
/// file (page-aligned when mapped) begins.
impl<T: Pod> Serialize for Array<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        const ZEROS: [u8; 64] = [0; 64];
        let align = std::mem::align_of::<T>().clamp(1, 64) as u64;
        let data: &[u8] = &self.bytes;
        let pad = match codec::position() {
            // The padding's own length takes one byte (it is under 128).
            Some(at) => (align - (at + 1 + varint_len(data.len() as u64)) % align) % align,
            None => 0,
        };
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&Raw(&ZEROS[..pad as usize]))?;
        t.serialize_element(&Raw(data))?;
        t.end()
    }
}

/// Skips the padding.
struct Padding;

impl<'de> Deserialize<'de> for Padding {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Padding;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("padding bytes")
            }
            fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Padding, E> {
                Ok(Padding)
            }
        }
        d.deserialize_bytes(V)
    }
}

/// The data block, shared with the mapped store file when aligned.
struct Data<T: Pod>(Array<T>);

impl<'de, T: Pod + Send + Sync> Deserialize<'de> for Data<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Pod + Send + Sync> Visitor<'de> for V<T> {
            type Value = Data<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the bytes of an array")
            }
            fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Data<T>, E> {
                let shared = crate::blob::shared(v).and_then(Array::from_bytes_checked);
                shared
                    .or_else(|| Array::copied(v))
                    .map(Data)
                    .ok_or_else(|| E::custom("array bytes are not a whole number of elements"))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Data<T>, E> {
                Array::copied(v)
                    .map(Data)
                    .ok_or_else(|| E::custom("array bytes are not a whole number of elements"))
            }
        }
        d.deserialize_bytes(V(PhantomData))
    }
}

impl<'de, T: Pod + Send + Sync> Deserialize<'de> for Array<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Pod + Send + Sync> Visitor<'de> for V<T> {
            type Value = Array<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array: padding, then data")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Array<T>, A::Error> {
                seq.next_element::<Padding>()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let Data(a) = seq
                    .next_element::<Data<T>>()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                Ok(a)
            }
        }
        d.deserialize_tuple(2, V(PhantomData))
    }
}
