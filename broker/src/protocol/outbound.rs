//! Frames the broker sends: methods with content (deliver, get-ok, return) split into a
//! method frame, a content header carrying the original properties blob, and body frames no
//! larger than the negotiated frame_max; heartbeats. basic.deliver, the frame sent most, is
//! written field by field straight into the output buffer (`put_deliver`); the others go
//! through amq-protocol's generated types.

use super::frame::{
    put_frame, put_frame_with, FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD,
    FRAME_OVERHEAD,
};
use super::method::put_method;
use amq_protocol::protocol::AMQPClass;
use bytes::{BufMut, BytesMut};

/// The class id of basic, whose methods carry content.
const CLASS_BASIC: u16 = 60;

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
    put_content(out, channel, properties, body, frame_max);
}

/// The fields of a basic.deliver.
pub struct Deliver<'a> {
    pub consumer_tag: &'a str,
    pub delivery_tag: u64,
    pub redelivered: bool,
    pub exchange: &'a str,
    pub routing_key: &'a str,
}

/// Appends a basic.deliver with its content: the same bytes as [`put_content_method`] with
/// amq-protocol's `basic::Deliver` (tested), without building that value. Building it cost three
/// string copies and two buffers per delivery. Every string here was a short string when it
/// reached the broker (a consumer tag, an exchange name, a routing key), so it fits in one.
pub fn put_deliver(
    out: &mut BytesMut,
    channel: u16,
    deliver: &Deliver<'_>,
    properties: &[u8],
    body: &[u8],
    frame_max: u32,
) {
    const METHOD_DELIVER: u16 = 60;
    let tag = short(deliver.consumer_tag);
    let exchange = short(deliver.exchange);
    let routing_key = short(deliver.routing_key);
    let size = 4 + 1 + tag.len() + 8 + 1 + 1 + exchange.len() + 1 + routing_key.len();
    put_frame_with(out, FRAME_METHOD, channel, size, |out| {
        out.put_u16(CLASS_BASIC);
        out.put_u16(METHOD_DELIVER);
        out.put_u8(tag.len() as u8);
        out.put_slice(tag);
        out.put_u64(deliver.delivery_tag);
        out.put_u8(u8::from(deliver.redelivered));
        out.put_u8(exchange.len() as u8);
        out.put_slice(exchange);
        out.put_u8(routing_key.len() as u8);
        out.put_slice(routing_key);
    });
    put_content(out, channel, properties, body, frame_max);
}

/// A short string's bytes: at most 255 (longer input is cut; none reaches here).
fn short(s: &str) -> &[u8] {
    &s.as_bytes()[..s.len().min(255)]
}

/// Appends the content header (class basic, weight 0, the properties blob) and body frames no
/// larger than `frame_max`.
pub fn put_content(
    out: &mut BytesMut,
    channel: u16,
    properties: &[u8],
    body: &[u8],
    frame_max: u32,
) {
    let header_size = 2 + 2 + 8 + properties.len();
    put_frame_with(out, FRAME_HEADER, channel, header_size, |out| {
        out.put_u16(CLASS_BASIC);
        out.put_u16(0); // weight
        out.put_u64(body.len() as u64);
        out.put_slice(properties);
    });
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

    #[test]
    fn put_deliver_writes_what_amq_protocol_writes() {
        let long = "r".repeat(255);
        let cases = [
            ("amq.ctag-1", 1, false, "", "q", &b""[..], &[0u8, 0][..]),
            (
                "c",
                u64::MAX,
                true,
                "amq.topic",
                &long,
                &[9u8; 5000][..],
                &[0x10, 0, 2][..],
            ),
            ("", 77, false, "x", "", &[1u8][..], &[0u8, 0][..]),
        ];
        for (tag, delivery_tag, redelivered, exchange, routing_key, body, properties) in cases {
            let mut expected = BytesMut::new();
            let method = AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: tag.into(),
                delivery_tag,
                redelivered,
                exchange: exchange.into(),
                routing_key: routing_key.into(),
            }));
            put_content_method(&mut expected, 3, method, properties, body, 4096);
            let mut written = BytesMut::new();
            let deliver = Deliver {
                consumer_tag: tag,
                delivery_tag,
                redelivered,
                exchange,
                routing_key,
            };
            put_deliver(&mut written, 3, &deliver, properties, body, 4096);
            assert_eq!(written, expected, "tag {tag:?} exchange {exchange:?}");
        }
    }
}
