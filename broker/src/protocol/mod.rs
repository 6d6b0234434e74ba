//! Bytes on the wire. `frame` splits the byte stream into frames (our own framing, so that
//! content bodies stay `Bytes` slices of the read buffer and frame errors get RabbitMQ's
//! codes); `method` decodes and encodes method payloads with `amq-protocol`, except for the
//! two that come with every message, which `hot_methods` reads by hand; `content` reads
//! the basic-properties blob of a content header without re-encoding it; `outbound` builds
//! the frames the broker sends. Nothing here knows about channels or state.

pub mod content;
pub mod frame;
mod hot_methods;
pub mod method;
pub mod outbound;
