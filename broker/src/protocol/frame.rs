//! AMQP 0-9-1 framing (spec 2.3.5 and 4.2.3): `type:u8 channel:u16 size:u32 payload 0xCE`.
//! Two-phase: first prove a whole frame is buffered, then split it off; the payload is a
//! zero-copy `Bytes` of the read buffer.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;
/// type + channel + size, before the payload.
pub const FRAME_HEADER_SIZE: usize = 7;
/// Header plus the frame-end octet: what frame_max counts beyond the payload.
pub const FRAME_OVERHEAD: usize = 8;
/// The smallest frame_max a peer may negotiate (spec 4.2.3).
pub const FRAME_MIN_SIZE: u32 = 4096;

/// The protocol header a 0-9-1 client sends first.
pub const PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x00\x00\x09\x01";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawFrame {
    pub kind: u8,
    pub channel: u16,
    pub payload: Bytes,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame size {size} exceeds negotiated frame_max {frame_max}")]
    TooLarge { size: u64, frame_max: u32 },
    #[error("bad frame end octet {0:#04x}")]
    BadFrameEnd(u8),
    #[error("unknown frame type {0}")]
    UnknownType(u8),
}

/// Splits one whole frame off the front of `buf`, or returns `Ok(None)` when more bytes are
/// needed. `frame_max` is the negotiated maximum including the 8 bytes of overhead.
pub fn split_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<RawFrame>, FrameError> {
    if buf.len() < FRAME_HEADER_SIZE {
        return Ok(None);
    }
    let kind = buf[0];
    if !matches!(
        kind,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return Err(FrameError::UnknownType(kind));
    }
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    // Judge the size before buffering the payload, so that a peer cannot make us hold more
    // than one frame_max of unparsed input.
    if size as u64 + FRAME_OVERHEAD as u64 > frame_max as u64 {
        return Err(FrameError::TooLarge {
            size: size as u64 + FRAME_OVERHEAD as u64,
            frame_max,
        });
    }
    if buf.len() < FRAME_HEADER_SIZE + size + 1 {
        buf.reserve(FRAME_HEADER_SIZE + size + 1 - buf.len());
        return Ok(None);
    }
    let end = buf[FRAME_HEADER_SIZE + size];
    if end != FRAME_END {
        return Err(FrameError::BadFrameEnd(end));
    }
    buf.advance(FRAME_HEADER_SIZE);
    let payload = buf.split_to(size).freeze();
    buf.advance(1);
    Ok(Some(RawFrame {
        kind,
        channel,
        payload,
    }))
}

/// Appends a frame with the given payload to `out`.
pub fn put_frame(out: &mut BytesMut, kind: u8, channel: u16, payload: &[u8]) {
    put_frame_with(out, kind, channel, payload.len(), |out| {
        out.put_slice(payload)
    });
}

/// Appends a frame whose `size`-byte payload `write` puts straight into `out`, so that a
/// caller that assembles a payload from parts needs no buffer of its own for it.
pub fn put_frame_with(
    out: &mut BytesMut,
    kind: u8,
    channel: u16,
    size: usize,
    write: impl FnOnce(&mut BytesMut),
) {
    out.reserve(size + FRAME_OVERHEAD);
    out.put_u8(kind);
    out.put_u16(channel);
    out.put_u32(size as u32);
    let start = out.len();
    write(out);
    debug_assert_eq!(
        out.len() - start,
        size,
        "frame payload of the size announced"
    );
    out.put_u8(FRAME_END);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame_bytes(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_frame(&mut out, kind, channel, payload);
        out.to_vec()
    }

    #[test]
    fn a_whole_frame_is_split_off_and_the_rest_kept() {
        let mut buf = BytesMut::from(&frame_bytes(FRAME_BODY, 3, b"hello")[..]);
        buf.extend_from_slice(&[FRAME_HEARTBEAT, 0]);
        let frame = split_frame(&mut buf, 4096).unwrap().unwrap();
        assert_eq!(
            frame,
            RawFrame {
                kind: FRAME_BODY,
                channel: 3,
                payload: Bytes::from_static(b"hello")
            }
        );
        assert_eq!(&buf[..], &[FRAME_HEARTBEAT, 0]);
        assert_eq!(split_frame(&mut buf, 4096).unwrap(), None);
    }

    /// Spec 4.2.3: a frame larger than frame_max is a 501 FRAME_ERROR, judged from the size
    /// field alone.
    #[test]
    fn a_frame_larger_than_frame_max_is_refused_before_its_payload_arrives() {
        let mut buf = BytesMut::from(&[FRAME_METHOD, 0, 1, 0, 0, 0x10, 0][..]);
        assert!(matches!(
            split_frame(&mut buf, 4096),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_bad_frame_end_octet_is_refused() {
        let mut bytes = frame_bytes(FRAME_METHOD, 1, b"abc");
        *bytes.last_mut().unwrap() = 0;
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(split_frame(&mut buf, 4096), Err(FrameError::BadFrameEnd(0)));
    }

    #[test]
    fn an_unknown_frame_type_is_refused() {
        let mut buf = BytesMut::from(&frame_bytes(9, 1, b"abc")[..]);
        assert_eq!(split_frame(&mut buf, 4096), Err(FrameError::UnknownType(9)));
    }

    proptest! {
        /// The decoder survives any input split at any byte: fed in two pieces, it yields the
        /// same frames as fed whole, and it never panics on garbage.
        #[test]
        fn frames_split_at_any_byte_decode_the_same(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut wire = Vec::new();
            for (i, p) in payloads.iter().enumerate() {
                wire.extend(frame_bytes(FRAME_BODY, i as u16, p));
            }
            let cut = cut.index(wire.len() + 1);
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            while let Some(f) = split_frame(&mut buf, 4096).unwrap() { got.push(f); }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(f) = split_frame(&mut buf, 4096).unwrap() { got.push(f); }
            prop_assert_eq!(got.len(), payloads.len());
            for (f, p) in got.iter().zip(&payloads) {
                prop_assert_eq!(&f.payload[..], &p[..]);
            }
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn garbage_never_panics_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(frame)) = split_frame(&mut buf, 4096) {
                let _ = crate::protocol::method::decode_method(&frame.payload);
                let _ = crate::protocol::content::ContentHeader::parse(&frame.payload);
            }
        }
    }
}
