//! Typed references to objects that live in the cluster.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::client::Client;
use crate::codec;
use crate::error::{Error, Result};

/// Identity of an object: the result of one task or one `put`.
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub(crate) u64);

impl ObjectId {
    /// The raw id, as the head and dashboards show it.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({self})")
    }
}

/// One live handle; the process holds the object while any handle lives.
pub(crate) struct Handle {
    pub(crate) id: u64,
    pub(crate) client: Arc<Client>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.client.release_handle(self.id);
    }
}

/// A typed, counted reference to a value that is (or will be) in the
/// cluster. Cheap to clone; may be sent inside task arguments and results.
/// When the last handle anywhere is dropped, the object is freed.
pub struct ObjectRef<T> {
    pub(crate) handle: Arc<Handle>,
    _type: PhantomData<fn() -> T>,
}

impl<T> ObjectRef<T> {
    pub(crate) fn from_handle(handle: Arc<Handle>) -> Self {
        ObjectRef {
            handle,
            _type: PhantomData,
        }
    }

    /// The object's id.
    pub fn id(&self) -> ObjectId {
        ObjectId(self.handle.id)
    }
}

impl<T> Clone for ObjectRef<T> {
    fn clone(&self) -> Self {
        ObjectRef::from_handle(self.handle.clone())
    }
}

impl<T> fmt::Debug for ObjectRef<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ObjectRef<{}>({})",
            std::any::type_name::<T>(),
            self.id()
        )
    }
}

impl<T> PartialEq for ObjectRef<T> {
    fn eq(&self, other: &Self) -> bool {
        self.handle.id == other.handle.id
    }
}

impl<T> Eq for ObjectRef<T> {}

impl<T> std::hash::Hash for ObjectRef<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.handle.id.hash(state)
    }
}

impl<T> Serialize for ObjectRef<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        codec::note_nested(self.handle.id);
        s.serialize_u64(self.handle.id)
    }
}

impl<'de, T> Deserialize<'de> for ObjectRef<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let id = u64::deserialize(d)?;
        let client = crate::context::client().map_err(serde::de::Error::custom)?;
        Ok(ObjectRef::from_handle(client.adopt(id)))
    }
}

impl<T: DeserializeOwned + Send + 'static> IntoFuture for ObjectRef<T> {
    type Output = Result<T>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<T>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let client = self.handle.client.clone();
            client.ready_async(self.handle.id).await?;
            client.value(self.handle.id)
        })
    }
}

/// An argument of a remote call before it is sent: a value or a ref.
#[doc(hidden)]
pub struct ArgValue(pub(crate) ArgKind);

pub(crate) enum ArgKind {
    /// An encoded value, the refs nested in it, and handles that keep those
    /// alive until the task is submitted (the value itself is gone by then).
    Value(Vec<u8>, Vec<u64>, Vec<Arc<Handle>>),
    /// A ref whose value the task receives once it is ready.
    Ref(Arc<Handle>),
}

/// Anything that can stand for an argument of type `T` in a remote call:
/// a `T` itself, a `&T` (encoded at once, so the call does not borrow it),
/// `&str` for a `String` and `&[T]` for a `Vec<T>`, or an [`ObjectRef<T>`]
/// (owned or borrowed), whose value the task receives once it is ready.
///
/// ```no_run
/// #[fleet::remote]
/// fn add(a: i64, b: i64) -> i64 { a + b }
/// #[fleet::remote]
/// fn greet(name: String) -> String { format!("hello {name}") }
///
/// # fn main() {
/// let (a, b) = (vec![1i64, 2], vec![10i64, 20]);
/// let sums: Vec<_> = a.iter().zip(b.iter()).map(|(x, y)| add::remote(x, y)).collect();
/// let hi = greet::remote("Ada");                 // &str for String
/// let again = add::remote(&sums[0], 5);          // a ref: runs once sums[0] is ready
/// # }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot stand for an argument of type `{T}` of a remote function",
    label = "expected a `{T}`, a `&{T}`, an `ObjectRef<{T}>` or a `&ObjectRef<{T}>`",
    note = "an argument of type `{T}` may be passed as a value (`{T}` or `&{T}`; `&str` for \
            `String`, `&[T]` for `Vec<T>`), or as a ref (`ObjectRef<{T}>` or \
            `&ObjectRef<{T}>`) of a value in the cluster"
)]
pub trait IntoArg<T> {
    /// Turns `self` into the wire form.
    #[doc(hidden)]
    fn into_arg(self) -> Result<ArgValue>;
}

impl<T: Serialize> IntoArg<T> for T {
    fn into_arg(self) -> Result<ArgValue> {
        encode_arg(&self)
    }
}

/// Encodes an argument: inline if it fits in a task message, else streamed
/// straight into the object store as `put` does, so a large value is
/// copied once (into the store) instead of twice (into a buffer, then the
/// store).
fn encode_arg<T: Serialize + ?Sized>(value: &T) -> Result<ArgValue> {
    let mut small = Bounded::default();
    let nested = match codec::encode_into(value, &mut small) {
        Ok(nested) => nested,
        Err(_) if small.over => {
            // At most `INLINE_MAX` bytes were encoded in vain.
            let client = crate::context::client_or_init()?;
            return Ok(ArgValue(ArgKind::Ref(client.put_value(value)?)));
        }
        Err(e) => return Err(e.into()),
    };
    let keep = match nested.is_empty() {
        true => Vec::new(),
        false => {
            let client = crate::context::client()?;
            nested.iter().map(|id| client.adopt(*id)).collect()
        }
    };
    Ok(ArgValue(ArgKind::Value(small.bytes, nested, keep)))
}

/// A buffer that refuses to grow past [`codec::INLINE_MAX`]: an argument
/// larger than that goes to the store instead.
#[derive(Default)]
struct Bounded {
    bytes: Vec<u8>,
    /// A write was refused for going past the limit.
    over: bool,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > codec::INLINE_MAX {
            self.over = true;
            return Err(std::io::Error::other("larger than an inline argument"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A borrowed value is encoded at once; the call keeps no borrow.
impl<T: Serialize> IntoArg<T> for &T {
    fn into_arg(self) -> Result<ArgValue> {
        encode_arg(self)
    }
}

/// `&str` encodes exactly as `String` does.
impl IntoArg<String> for &str {
    fn into_arg(self) -> Result<ArgValue> {
        encode_arg(self)
    }
}

/// `&[T]` encodes exactly as `Vec<T>` does.
impl<T: Serialize> IntoArg<Vec<T>> for &[T] {
    fn into_arg(self) -> Result<ArgValue> {
        encode_arg(self)
    }
}

impl<T> IntoArg<T> for ObjectRef<T> {
    fn into_arg(self) -> Result<ArgValue> {
        Ok(ArgValue(ArgKind::Ref(self.handle)))
    }
}

impl<T> IntoArg<T> for &ObjectRef<T> {
    fn into_arg(self) -> Result<ArgValue> {
        Ok(ArgValue(ArgKind::Ref(self.handle.clone())))
    }
}

pub(crate) fn lost(id: u64, why: &str) -> Error {
    Error::ObjectLost {
        id: format!("{id:016x}"),
        message: why.to_string(),
    }
}
