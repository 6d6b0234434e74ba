//! The two methods that arrive once per message, basic.publish and basic.ack, read field by
//! field. amq-protocol's generated parser goes through nom combinators and builds a named flag
//! set (a `String` per flag name) for every call; under a flood of small messages that was
//! about a tenth of the broker's CPU. These readers accept exactly what that parser accepts
//! and build the same values (the tests compare the two on every input they try); anything
//! they do not accept goes to the generated parser, which then names the error.

use amq_protocol::protocol::{basic, AMQPClass};
use amq_protocol::types::ShortString;

const CLASS_BASIC: [u8; 2] = [0, 60];
const METHOD_PUBLISH: [u8; 2] = [0, 40];
const METHOD_ACK: [u8; 2] = [0, 80];

/// The method, when `payload` is a well-formed basic.publish or basic.ack; `None` for every
/// other payload, well-formed or not.
pub(crate) fn decode(payload: &[u8]) -> Option<AMQPClass> {
    let (ids, fields) = payload.split_first_chunk::<4>()?;
    if ids[..2] != CLASS_BASIC {
        return None;
    }
    let method = match [ids[2], ids[3]] {
        METHOD_PUBLISH => basic::AMQPMethod::Publish(publish(fields)?),
        METHOD_ACK => basic::AMQPMethod::Ack(ack(fields)?),
        _ => return None,
    };
    Some(AMQPClass::Basic(method))
}

/// reserved-1 (short), exchange (shortstr), routing-key (shortstr), then one octet of bits:
/// mandatory, immediate. Bytes after the fields are ignored, as by the generated parser.
fn publish(fields: &[u8]) -> Option<basic::Publish> {
    let (_reserved, rest) = fields.split_first_chunk::<2>()?;
    let (exchange, rest) = short_string(rest)?;
    let (routing_key, rest) = short_string(rest)?;
    let bits = *rest.first()?;
    Some(basic::Publish {
        exchange,
        routing_key,
        mandatory: bits & 1 != 0,
        immediate: bits & 2 != 0,
    })
}

/// delivery-tag (longlong), then one octet of bits: multiple.
fn ack(fields: &[u8]) -> Option<basic::Ack> {
    let (tag, rest) = fields.split_first_chunk::<8>()?;
    let bits = *rest.first()?;
    Some(basic::Ack {
        delivery_tag: u64::from_be_bytes(*tag),
        multiple: bits & 1 != 0,
    })
}

/// A length octet and that many bytes of UTF-8 (as the generated parser requires).
fn short_string(input: &[u8]) -> Option<(ShortString, &[u8])> {
    let (&len, rest) = input.split_first()?;
    let (text, rest) = rest.split_at_checked(usize::from(len))?;
    let text = std::str::from_utf8(text).ok()?;
    Some((ShortString::from(text), rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::parse_class;
    use proptest::prelude::*;

    fn generated(payload: &[u8]) -> Option<AMQPClass> {
        parse_class(payload).ok().map(|(_rest, class)| class)
    }

    fn publish_payload(exchange: &[u8], routing_key: &[u8], bits: u8) -> Vec<u8> {
        let mut p = vec![0, 60, 0, 40, 0, 0];
        p.push(exchange.len() as u8);
        p.extend_from_slice(exchange);
        p.push(routing_key.len() as u8);
        p.extend_from_slice(routing_key);
        p.push(bits);
        p
    }

    #[test]
    fn a_publish_reads_as_the_generated_parser_reads_it() {
        for bits in 0..4 {
            let p = publish_payload(b"amq.direct", b"orders.eu", bits);
            let fast = decode(&p).expect("a well-formed publish");
            assert_eq!(Some(fast), generated(&p));
        }
        let p = publish_payload(b"", b"", 0);
        assert_eq!(decode(&p), generated(&p));
        assert!(decode(&p).is_some());
    }

    #[test]
    fn an_ack_reads_as_the_generated_parser_reads_it() {
        for (tag, bits) in [(1u64, 0u8), (u64::MAX, 1), (42, 3)] {
            let mut p = vec![0, 60, 0, 80];
            p.extend_from_slice(&tag.to_be_bytes());
            p.push(bits);
            let fast = decode(&p).expect("a well-formed ack");
            assert_eq!(Some(fast), generated(&p));
        }
    }

    #[test]
    fn what_it_cannot_read_is_left_to_the_generated_parser() {
        // Cut short at every length, a name that is not UTF-8, and other methods.
        let p = publish_payload(b"ex", b"key", 1);
        for end in 0..p.len() {
            assert_eq!(decode(&p[..end]), None, "cut at {end}");
        }
        assert_eq!(decode(&publish_payload(b"\xff\xfe", b"k", 0)), None);
        assert_eq!(decode(&[0, 60, 0, 90, 0, 0, 0, 0, 0, 0, 0, 1, 0]), None); // basic.reject
        assert_eq!(decode(&[0, 50, 0, 40, 0, 0, 0, 0, 0]), None);
    }

    proptest! {
        /// On any bytes after a publish's or an ack's ids, the reader either agrees with the
        /// generated parser or leaves the payload to it.
        #[test]
        fn agrees_with_the_generated_parser(
            method in prop_oneof![Just(40u8), Just(80u8)],
            fields in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut p = vec![0, 60, 0, method];
            p.extend_from_slice(&fields);
            if let Some(fast) = decode(&p) {
                prop_assert_eq!(Some(fast), generated(&p));
            } else {
                prop_assert!(generated(&p).is_none(), "the generated parser read {:?}", p);
            }
        }

        /// Publishes with printable names of any length up to the limit.
        #[test]
        fn publishes_with_any_names(
            exchange in "[a-zA-Z0-9.\\-_é]{0,60}",
            routing_key in "[a-zA-Z0-9.#*]{0,120}",
            bits in any::<u8>(),
        ) {
            let p = publish_payload(exchange.as_bytes(), routing_key.as_bytes(), bits);
            let fast = decode(&p);
            prop_assert!(fast.is_some());
            prop_assert_eq!(fast, generated(&p));
        }
    }
}
