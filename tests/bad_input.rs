//! Bad input costs only the offending connection or channel, with the reply code RabbitMQ
//! sends (AMQP 0-9-1 spec 4.2.3 and 2.3.7; RabbitMQ's command assembler), and the broker
//! keeps serving everyone else (DESIGN.md invariant 6).

use crate::common::raw::Raw;
use crate::common::*;
use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{basic, queue, AMQPClass};
use amq_protocol::types::FieldTable;

/// After every bad client, a well-behaved one still works.
async fn still_serving(broker: &Broker) {
    let (_c, ch) = broker.channel().await;
    temp_queue(&ch, "alive").await;
}

#[tokio::test]
async fn garbage_after_the_header_is_a_frame_error() {
    let broker = Broker::start();
    let mut raw = Raw::open(broker.amqp_port);
    raw.send_bytes(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(raw.expect_connection_close(), 501);
    still_serving(&broker).await;
}

#[tokio::test]
async fn a_frame_larger_than_frame_max_is_a_frame_error() {
    let broker = Broker::start();
    let mut raw = Raw::open(broker.amqp_port);
    raw.open_channel(1);
    // frame_max was negotiated at 4096.
    let mut frame = vec![3u8, 0, 1];
    frame.extend_from_slice(&10_000u32.to_be_bytes());
    frame.extend(std::iter::repeat_n(0u8, 10_000));
    frame.push(0xCE);
    raw.send_bytes(&frame);
    assert_eq!(raw.expect_connection_close(), 501);
    still_serving(&broker).await;
}

#[tokio::test]
async fn a_bad_frame_end_octet_is_a_frame_error() {
    let broker = Broker::start();
    let mut raw = Raw::open(broker.amqp_port);
    let mut bytes = crate::common::raw::encode(&AMQPFrame::Heartbeat);
    *bytes.last_mut().unwrap() = 0x00;
    raw.send_bytes(&bytes);
    assert_eq!(raw.expect_connection_close(), 501);
    still_serving(&broker).await;
}

#[tokio::test]
async fn an_unknown_method_is_not_implemented() {
    let broker = Broker::start();
    let mut raw = Raw::open(broker.amqp_port);
    raw.open_channel(1);
    // class 60, method 999: no such method.
    let payload = [0u8, 60, 0x03, 0xE7];
    let mut frame = vec![1u8, 0, 1];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame.push(0xCE);
    raw.send_bytes(&frame);
    assert_eq!(raw.expect_connection_close(), 540);
    still_serving(&broker).await;
}

#[tokio::test]
async fn a_method_on_a_channel_that_is_not_open_is_a_channel_error() {
    let broker = Broker::start();
    let mut raw = Raw::open(broker.amqp_port);
    raw.send(AMQPFrame::Method(
        5,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "q".into(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    ));
    assert_eq!(raw.expect_connection_close(), 504);
    still_serving(&broker).await;
}

#[tokio::test]
async fn content_frames_out_of_order_are_unexpected_frame() {
    let broker = Broker::start();
    let mut raw = Raw::open(broker.amqp_port);
    raw.open_channel(1);
    // A body frame with no publish and no header before it.
    let mut frame = vec![3u8, 0, 1, 0, 0, 0, 2, b'h', b'i'];
    frame.push(0xCE);
    raw.send_bytes(&frame);
    assert_eq!(raw.expect_connection_close(), 505);

    // A method where the content header should come.
    let mut raw = Raw::open(broker.amqp_port);
    raw.open_channel(1);
    let publish = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
        exchange: "".into(),
        routing_key: "q".into(),
        mandatory: false,
        immediate: false,
    }));
    raw.send(AMQPFrame::Method(1, publish.clone()));
    raw.send(AMQPFrame::Method(1, publish));
    assert_eq!(raw.expect_connection_close(), 505);
    still_serving(&broker).await;
}

/// A message larger than the configured maximum is refused on its channel (406).
#[tokio::test]
async fn a_message_above_max_message_size_is_refused() {
    let broker = Broker::start_with(&["--max-message-size", "1000"]);
    let mut raw = Raw::open(broker.amqp_port);
    raw.open_channel(1);
    raw.send(AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "q".into(),
            mandatory: false,
            immediate: false,
        })),
    ));
    let mut header = vec![0u8, 60, 0, 0];
    header.extend_from_slice(&5000u64.to_be_bytes());
    header.extend_from_slice(&[0, 0]);
    let mut frame = vec![2u8, 0, 1];
    frame.extend_from_slice(&(header.len() as u32).to_be_bytes());
    frame.extend_from_slice(&header);
    frame.push(0xCE);
    raw.send_bytes(&frame);
    assert_eq!(raw.expect_channel_close(1), 406);
    still_serving(&broker).await;
}

/// A client that connects and never speaks is disconnected after the handshake timeout
/// (10 s, as RabbitMQ's handshake_timeout), and does not hold up anyone else.
#[tokio::test]
async fn a_silent_client_is_disconnected() {
    let broker = Broker::start();
    let mut raw = Raw::connect(broker.amqp_port);
    still_serving(&broker).await;
    let started = std::time::Instant::now();
    assert!(raw.next_frame().is_none(), "the silent socket is closed");
    assert!(started.elapsed() < std::time::Duration::from_secs(19));
}
