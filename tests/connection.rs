//! Connection negotiation (AMQP 0-9-1 spec 2.2.4, RabbitMQ access control docs).

use crate::common::*;
use lapin::{Connection, ConnectionProperties};
use std::io::{Read, Write};

/// Spec 4.2.2: a client that sends a protocol header we do not speak gets ours back and the
/// socket closes.
#[test]
fn a_wrong_protocol_header_is_answered_with_ours_and_closed() {
    let broker = Broker::start();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", broker.amqp_port)).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(b"AMQP\x00\x00\x08\x00").unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    assert_eq!(buf, b"AMQP\x00\x00\x09\x01");
}

#[tokio::test]
async fn guest_connects_from_loopback_and_opens_many_channels() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let mut channels = Vec::new();
    for _ in 0..20 {
        channels.push(conn.create_channel().await.expect("channel.open"));
    }
    for ch in &channels {
        ch.close(200, "bye".into()).await.expect("channel.close");
    }
    conn.close(200, "bye".into())
        .await
        .expect("connection.close");
}

/// RabbitMQ access control: wrong credentials are refused with 403 ACCESS_REFUSED
/// (authentication_failure_close).
#[tokio::test]
async fn wrong_credentials_are_refused_with_access_refused() {
    let broker = Broker::start();
    let uri = format!("amqp://guest:wrong@127.0.0.1:{}/%2f", broker.amqp_port);
    let err = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .err()
        .expect("login must fail");
    assert_eq!(reply_code(&err), Some(403), "{err:?}");
}

#[tokio::test]
async fn a_configured_user_logs_in_and_others_do_not() {
    let broker = Broker::start_with(&["--default-user", "app", "--default-pass", "s3cret"]);
    let ok = format!("amqp://app:s3cret@127.0.0.1:{}/%2f", broker.amqp_port);
    let conn = Connection::connect(&ok, ConnectionProperties::default())
        .await
        .expect("app logs in");
    conn.close(200, "bye".into()).await.unwrap();
    let bad = format!("amqp://app:nope@127.0.0.1:{}/%2f", broker.amqp_port);
    assert!(Connection::connect(&bad, ConnectionProperties::default())
        .await
        .is_err());
}

/// Only the default vhost `/` exists: another is refused (530 NOT_ALLOWED, as RabbitMQ).
#[tokio::test]
async fn an_unknown_vhost_is_refused() {
    let broker = Broker::start();
    let uri = format!("amqp://guest:guest@127.0.0.1:{}/nope", broker.amqp_port);
    let err = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .err()
        .expect("vhost must be refused");
    assert_eq!(reply_code(&err), Some(530), "{err:?}");
}

/// RabbitMQ's server properties announce the capabilities clients look for.
#[test]
fn connection_start_announces_rabbitmq_capabilities() {
    let broker = Broker::start();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", broker.amqp_port)).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while got.len() < 7
        || got.len() < 8 + u32::from_be_bytes([got[3], got[4], got[5], got[6]]) as usize
    {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "socket closed before connection.start");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
        "PLAIN",
        "AMQPLAIN",
        "en_US",
    ] {
        assert!(text.contains(cap), "connection.start lacks {cap}");
    }
}

/// Heartbeats both ways (spec 4.2.7): with heartbeat=1 the broker sends heartbeat frames,
/// and a peer silent for two intervals is disconnected.
#[test]
fn heartbeats_flow_and_a_silent_peer_is_disconnected() {
    let broker = Broker::start();
    let mut raw = crate::common::raw::Raw::open_with_heartbeat(broker.amqp_port, 1);
    let started = std::time::Instant::now();
    let mut heartbeats = 0;
    loop {
        match raw.next_frame() {
            Some(amq_protocol::frame::AMQPFrame::Heartbeat) => heartbeats += 1,
            Some(_) => {}
            None => break,
        }
    }
    let elapsed = started.elapsed();
    assert!(heartbeats >= 1, "the broker sent no heartbeat");
    assert!(
        elapsed >= std::time::Duration::from_millis(1500),
        "disconnected too early: {elapsed:?}"
    );
    assert!(
        elapsed < std::time::Duration::from_secs(10),
        "a silent peer was kept for {elapsed:?}"
    );
}

/// A client that keeps sending heartbeats stays connected past the timeout.
#[test]
fn a_client_sending_heartbeats_stays_connected() {
    let broker = Broker::start();
    let mut raw = crate::common::raw::Raw::open_with_heartbeat(broker.amqp_port, 1);
    for _ in 0..8 {
        std::thread::sleep(std::time::Duration::from_millis(400));
        raw.send(amq_protocol::frame::AMQPFrame::Heartbeat);
    }
    raw.open_channel(1);
}

/// `--log-format json` writes one JSON object per line.
#[test]
fn json_log_format_writes_json_lines() {
    let broker = Broker::start_with(&["--log-format", "json"]);
    let log = broker.log();
    let first = log.lines().next().expect("a log line");
    let value: serde_json::Value =
        serde_json::from_str(first).unwrap_or_else(|e| panic!("not JSON ({e}): {first}"));
    assert!(value.get("level").is_some(), "{first}");
}

/// A client may stop reading until its own writes get through: RabbitMQ's Java client does,
/// when its consumer thread waits to write an ack and its reader waits for that thread. The
/// broker must go on reading such a client while its deliveries wait for the socket;
/// otherwise both sides wait for each other forever (seen with the Java client's PerfTest-like
/// load). Here one raw connection consumes from a queue with no prefetch limit and, without
/// reading anything, publishes 20 MB into that queue: far more than the socket buffers of
/// both sides hold. Every write must get through, and then every message must arrive.
#[test]
fn a_client_that_is_not_reading_is_still_read() {
    use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
    use amq_protocol::protocol::{basic, queue, AMQPClass};

    const MESSAGES: usize = 5_000;
    const BODY: usize = 4_000; // one body frame each at the raw client's frame_max of 4096
    let broker = Broker::start();
    let mut raw = crate::common::raw::Raw::open(broker.amqp_port);
    raw.open_channel(1);
    raw.send(AMQPFrame::Method(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "not-reading".into(),
            ..Default::default()
        })),
    ));
    raw.expect_method();
    raw.send(AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: "not-reading".into(),
            consumer_tag: "ctag".into(),
            ..Default::default()
        })),
    ));
    raw.expect_method();

    let mut one = crate::common::raw::encode(&AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "not-reading".into(),
            ..Default::default()
        })),
    ));
    one.extend(crate::common::raw::encode(&AMQPFrame::Header(
        1,
        AMQPContentHeader {
            class_id: 60,
            body_size: BODY as u64,
            properties: basic::AMQPProperties::default(),
        },
    )));
    one.extend(crate::common::raw::encode(&AMQPFrame::Body(
        1,
        vec![7u8; BODY],
    )));
    let hundred: Vec<u8> = one.iter().copied().cycle().take(one.len() * 100).collect();
    raw.s
        .set_write_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    for sent in (0..MESSAGES).step_by(100) {
        if let Err(e) = raw.s.write_all(&hundred) {
            panic!("the broker stopped reading after {sent} publishes: {e}");
        }
    }

    let mut delivered = 0;
    let mut bodies = 0;
    while bodies < MESSAGES {
        match raw.next_frame() {
            Some(AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Deliver(_)))) => {
                delivered += 1
            }
            Some(AMQPFrame::Body(_, body)) => {
                assert_eq!(body.len(), BODY);
                bodies += 1;
            }
            Some(_) => {}
            None => panic!("the connection ended after {delivered} deliveries"),
        }
    }
    assert_eq!(delivered, MESSAGES);
}
