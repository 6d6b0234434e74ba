//! Decoding message bodies as slices of the buffer they are decoded from, instead of copies.
//!
//! A snapshot or a stored log entry holds thousands of message bodies. Decoded the ordinary way,
//! every body is copied into a fresh allocation: a restart with a million queued 1 KiB messages
//! spent most of its time having the kernel zero those new pages. Decoded inside
//! [`decode_from`], a `Bytes` field marked `#[serde(with = "crate::shared_bytes")]` becomes a
//! reference-counted slice of the source buffer (no copy, no allocation), which stays alive
//! while any message decoded from it does. Outside `decode_from`, or when the field's bytes do
//! not lie in the source buffer, the field is copied as before. The encoding is the one `Bytes`
//! has anyway (a byte string), so this changes no format.

use bytes::Bytes;
use serde::{Deserializer, Serializer};
use std::cell::RefCell;
use std::fmt;

thread_local! {
    /// The buffer the current `decode_from` call on this thread decodes from.
    static SOURCE: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Runs `decode` on `source`; the shared `Bytes` fields it decodes become slices of `source`.
/// Calls may nest: the outer source is restored when the inner call returns (or unwinds).
pub fn decode_from<T>(source: &Bytes, decode: impl FnOnce(&[u8]) -> T) -> T {
    struct Restore(Option<Bytes>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            SOURCE.with(|s| *s.borrow_mut() = previous);
        }
    }
    let _restore = Restore(SOURCE.with(|s| s.borrow_mut().replace(source.clone())));
    decode(source)
}

/// A slice of the current source when `bytes` lies inside it, else a copy.
fn share(bytes: &[u8]) -> Bytes {
    SOURCE.with(|s| match &*s.borrow() {
        Some(source) if contains(source, bytes) => source.slice_ref(bytes),
        _ => Bytes::copy_from_slice(bytes),
    })
}

fn contains(outer: &[u8], inner: &[u8]) -> bool {
    let start = outer.as_ptr() as usize;
    let at = inner.as_ptr() as usize;
    at >= start && at + inner.len() <= start + outer.len()
}

pub fn serialize<S: Serializer>(bytes: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    deserializer.deserialize_bytes(SharedBytesVisitor)
}

struct SharedBytesVisitor;

impl<'de> serde::de::Visitor<'de> for SharedBytesVisitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_borrowed_bytes<E>(self, bytes: &'de [u8]) -> Result<Bytes, E> {
        Ok(share(bytes))
    }

    fn visit_bytes<E>(self, bytes: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(bytes))
    }

    fn visit_byte_buf<E>(self, bytes: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from(bytes))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Message {
        #[serde(with = "crate::shared_bytes")]
        body: Bytes,
        plain: Bytes,
    }

    fn encoded() -> Bytes {
        let m = Message {
            body: Bytes::from_static(b"a body long enough to notice"),
            plain: Bytes::from_static(b"plain"),
        };
        Bytes::from(postcard::to_allocvec(&m).unwrap())
    }

    fn inside(outer: &Bytes, inner: &Bytes) -> bool {
        contains(outer, inner)
    }

    #[test]
    fn inside_decode_from_a_marked_field_is_a_slice_of_the_source() {
        let source = encoded();
        let m: Message = decode_from(&source, |b| postcard::from_bytes(b).unwrap());
        assert_eq!(&m.body[..], b"a body long enough to notice");
        assert!(inside(&source, &m.body), "the body points into the source");
        assert!(
            !inside(&source, &m.plain),
            "an unmarked field is still copied"
        );
        drop(source);
        assert_eq!(
            &m.body[..],
            b"a body long enough to notice",
            "the slice keeps it alive"
        );
    }

    #[test]
    fn outside_decode_from_and_for_other_buffers_the_field_is_copied() {
        let source = encoded();
        let m: Message = postcard::from_bytes(&source).unwrap();
        assert!(!inside(&source, &m.body));
        // A decode of another buffer inside decode_from: bytes outside the source are copied.
        let other = encoded();
        let m: Message = decode_from(&source, |_| postcard::from_bytes(&other).unwrap());
        assert!(!inside(&source, &m.body) && !inside(&other, &m.body));
        assert_eq!(&m.body[..], b"a body long enough to notice");
    }

    #[test]
    fn nested_calls_restore_the_outer_source() {
        let outer = encoded();
        let inner = encoded();
        let (a, b): (Message, Message) = decode_from(&outer, |o| {
            let a = decode_from(&inner, |i| postcard::from_bytes(i).unwrap());
            (a, postcard::from_bytes(o).unwrap())
        });
        assert!(inside(&inner, &a.body));
        assert!(inside(&outer, &b.body));
        SOURCE.with(|s| assert!(s.borrow().is_none(), "nothing left behind"));
    }
}
