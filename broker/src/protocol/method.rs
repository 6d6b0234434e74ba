//! Method frame payloads: decoded into and encoded from `amq-protocol`'s generated types.
//! A payload that names no known class/method, or whose fields are cut short, is an error
//! with the reply code RabbitMQ uses for it.

use amq_protocol::frame::{gen_frame, AMQPFrame, WriteContext};
use amq_protocol::protocol::{parse_class, AMQPClass};
use bytes::BytesMut;
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MethodError {
    #[error("unknown class {class_id} method {method_id}")]
    Unknown { class_id: u16, method_id: u16 },
    #[error("malformed arguments of class {class_id} method {method_id}")]
    Malformed { class_id: u16, method_id: u16 },
}

impl MethodError {
    pub fn reply_code(&self) -> u16 {
        match self {
            MethodError::Unknown { .. } => crate::reply_code::NOT_IMPLEMENTED,
            MethodError::Malformed { .. } => crate::reply_code::FRAME_ERROR,
        }
    }
    pub fn ids(&self) -> (u16, u16) {
        match self {
            MethodError::Unknown {
                class_id,
                method_id,
            }
            | MethodError::Malformed {
                class_id,
                method_id,
            } => (*class_id, *method_id),
        }
    }
}

fn ids_of(payload: &[u8]) -> (u16, u16) {
    let class_id = if payload.len() >= 2 {
        u16::from_be_bytes([payload[0], payload[1]])
    } else {
        0
    };
    let method_id = if payload.len() >= 4 {
        u16::from_be_bytes([payload[2], payload[3]])
    } else {
        0
    };
    (class_id, method_id)
}

/// Whether amq-protocol knows this class/method pair (it parses the id pair then the fields;
/// we tell "unknown" from "malformed" by whether the pair exists at all).
fn is_known(class_id: u16, method_id: u16) -> bool {
    match class_id {
        10 => matches!(
            method_id,
            10 | 11 | 20 | 21 | 30 | 31 | 40 | 41 | 50 | 51 | 60 | 61 | 70 | 71
        ),
        20 => matches!(method_id, 10 | 11 | 20 | 21 | 40 | 41),
        30 => matches!(method_id, 10 | 11),
        40 => matches!(method_id, 10 | 11 | 20 | 21 | 30 | 31 | 40 | 51),
        50 => matches!(method_id, 10 | 11 | 20 | 21 | 30 | 31 | 40 | 41 | 50 | 51),
        60 => matches!(
            method_id,
            10 | 11
                | 20
                | 21
                | 30
                | 31
                | 40
                | 50
                | 60
                | 70
                | 71
                | 72
                | 80
                | 90
                | 100
                | 110
                | 111
                | 120
        ),
        85 => matches!(method_id, 10 | 11),
        90 => matches!(method_id, 10 | 11 | 20 | 21 | 30 | 31),
        _ => false,
    }
}

pub fn decode_method(payload: &[u8]) -> Result<AMQPClass, MethodError> {
    if let Some(method) = super::hot_methods::decode(payload) {
        return Ok(method);
    }
    let (class_id, method_id) = ids_of(payload);
    if !is_known(class_id, method_id) {
        return Err(MethodError::Unknown {
            class_id,
            method_id,
        });
    }
    match parse_class(payload) {
        // Trailing bytes after the fields are tolerated, as RabbitMQ does.
        Ok((_rest, class)) => Ok(class),
        Err(_) => Err(MethodError::Malformed {
            class_id,
            method_id,
        }),
    }
}

/// Appends a method frame to `out`.
pub fn put_method(out: &mut BytesMut, channel: u16, method: AMQPClass) {
    let frame = AMQPFrame::Method(channel, method);
    // Writing into a Vec cannot fail for well-formed generated types.
    let written = gen_frame(&frame)(WriteContext::from(Vec::with_capacity(128)));
    if let Ok(ctx) = written {
        out.extend_from_slice(&ctx.write);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_method_is_not_implemented() {
        let err = decode_method(&[0, 60, 0, 99]).unwrap_err();
        assert_eq!(err.reply_code(), crate::reply_code::NOT_IMPLEMENTED);
        assert_eq!(
            decode_method(&[0, 7, 0, 10]).unwrap_err().reply_code(),
            crate::reply_code::NOT_IMPLEMENTED
        );
    }

    #[test]
    fn cut_short_arguments_are_a_frame_error() {
        // queue.declare with only the reserved short.
        let err = decode_method(&[0, 50, 0, 10, 0]).unwrap_err();
        assert_eq!(err.reply_code(), crate::reply_code::FRAME_ERROR);
    }
}
