//! Frames the broker sends: methods with content (deliver, get-ok, return) split into a
//! method frame, a content header carrying the original properties blob, and body frames no
//! larger than the negotiated frame_max; heartbeats.

use super::content::header_payload;
use super::frame::{put_frame, FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_OVERHEAD};
use super::method::put_method;
use amq_protocol::protocol::AMQPClass;
use bytes::BytesMut;

/// Appends a method carrying content, then its header and body frames.
pub fn put_content_method(
    out: &mut BytesMut,
    channel: u16,
    method: AMQPClass,
    properties: &[u8],
    body: &[u8],
    frame_max: u32,
) {
    put_method(out, channel, method);
    put_frame(
        out,
        FRAME_HEADER,
        channel,
        &header_payload(body.len() as u64, properties),
    );
    let chunk = (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1);
    for piece in body.chunks(chunk) {
        put_frame(out, FRAME_BODY, channel, piece);
    }
}

pub fn put_heartbeat(out: &mut BytesMut) {
    put_frame(out, FRAME_HEARTBEAT, 0, &[]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::split_frame;
    use amq_protocol::protocol::basic;

    #[test]
    fn a_body_larger_than_frame_max_is_split_into_body_frames() {
        let mut out = BytesMut::new();
        let deliver = AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
            consumer_tag: "c".into(),
            delivery_tag: 1,
            redelivered: false,
            exchange: "".into(),
            routing_key: "q".into(),
        }));
        let body = vec![7u8; 10_000];
        put_content_method(&mut out, 1, deliver, &[0, 0], &body, 4096);
        let mut kinds = Vec::new();
        let mut total = 0;
        while let Some(f) = split_frame(&mut out, 4096).unwrap() {
            if f.kind == FRAME_BODY {
                total += f.payload.len();
            }
            kinds.push(f.kind);
        }
        assert_eq!(kinds, vec![1, 2, 3, 3, 3]);
        assert_eq!(total, 10_000);
    }
}
