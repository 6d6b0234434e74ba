//! Content headers (spec 4.2.6.1): `class_id weight body_size properties`. The properties
//! blob is kept as the client sent it, so that it reaches consumers byte for byte (header
//! tables included, whose key order a re-encoding through amq-protocol's sorted map would
//! change); only the few properties the broker acts on are read out of it.

use amq_protocol::protocol::basic::{parse_properties, AMQPProperties};
use bytes::Bytes;
use thiserror::Error;

#[derive(Clone, Debug, PartialEq)]
pub struct ContentHeader {
    pub class_id: u16,
    pub weight: u16,
    pub body_size: u64,
    /// The raw properties: the flags word and the present fields.
    pub properties: Bytes,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ContentError {
    #[error("content header too short")]
    TooShort,
    #[error("malformed content properties")]
    BadProperties,
}

impl ContentHeader {
    pub fn parse(payload: &Bytes) -> Result<ContentHeader, ContentError> {
        if payload.len() < 14 {
            return Err(ContentError::TooShort);
        }
        let class_id = u16::from_be_bytes([payload[0], payload[1]]);
        let weight = u16::from_be_bytes([payload[2], payload[3]]);
        let body_size = u64::from_be_bytes(payload[4..12].try_into().expect("8 bytes"));
        Ok(ContentHeader {
            class_id,
            weight,
            body_size,
            properties: payload.slice(12..),
        })
    }
}

/// Decodes the properties blob (for the fields the broker acts on).
pub fn decode_properties(blob: &[u8]) -> Result<AMQPProperties, ContentError> {
    match parse_properties(blob) {
        Ok((_, props)) => Ok(props),
        Err(_) => Err(ContentError::BadProperties),
    }
}

/// Parses an `expiration` property the way RabbitMQ does: a non-negative integer number of
/// milliseconds written in decimal, anything else is refused.
pub fn parse_expiration(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiration_must_be_a_decimal_number_of_milliseconds() {
        assert_eq!(parse_expiration("1500"), Some(1500));
        assert_eq!(parse_expiration("0"), Some(0));
        assert_eq!(parse_expiration("-1"), None);
        assert_eq!(parse_expiration("1.5"), None);
        assert_eq!(parse_expiration(""), None);
    }

    #[test]
    fn the_properties_blob_is_kept_verbatim() {
        // A content header of class basic, weight 0, body size 5.
        let mut payload = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
        payload.extend_from_slice(&[0x10, 0x00, 2]);
        let header = ContentHeader::parse(&Bytes::from(payload)).unwrap();
        assert_eq!(header.body_size, 5);
        assert_eq!(&header.properties[..], &[0x10, 0x00, 2]);
        let props = decode_properties(&header.properties).unwrap();
        assert_eq!(props.delivery_mode(), &Some(2));
    }
}
