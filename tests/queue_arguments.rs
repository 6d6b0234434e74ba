//! Queue arguments (RabbitMQ "Time-To-Live and Expiration", "Dead Letter Exchanges",
//! "Queue Length Limit", "Priority Queues"). Time reaches the state machine only through the
//! leader's ticks, so these tests wait with deadlines.

use crate::common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use std::time::Duration;

fn args(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

#[tokio::test]
async fn message_ttl_expires_into_the_dead_letter_exchange_with_x_death() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    temp_queue(&ch, "dlq").await;
    ch.queue_bind(
        "dlq".into(),
        "amq.fanout".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let a = args(&[
        ("x-message-ttl", AMQPValue::LongInt(200)),
        (
            "x-dead-letter-exchange",
            AMQPValue::LongString("amq.fanout".into()),
        ),
    ]);
    ch.queue_declare("ttl".into(), QueueDeclareOptions::default(), a)
        .await
        .unwrap();
    publish(&ch, "", "ttl", b"old").await;
    let m = get_one(&ch, "dlq", true)
        .await
        .expect("dead-lettered after the TTL");
    assert_eq!(m.delivery.data, b"old");
    let headers = m.delivery.properties.headers().clone().expect("headers");
    let death = match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
        other => panic!("no x-death: {other:?}"),
    };
    let AMQPValue::FieldTable(entry) = &death[0] else {
        panic!("x-death entry")
    };
    assert_eq!(
        entry.inner().get("reason"),
        Some(&AMQPValue::LongString("expired".into()))
    );
    assert_eq!(
        entry.inner().get("queue"),
        Some(&AMQPValue::LongString("ttl".into()))
    );
    assert_eq!(message_count(&ch, "ttl").await, 0);
}

#[tokio::test]
async fn per_message_expiration_is_honoured() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    temp_queue(&ch, "exp").await;
    ch.basic_publish(
        "".into(),
        "exp".into(),
        BasicPublishOptions::default(),
        b"short",
        BasicProperties::default().with_expiration("100".into()),
    )
    .await
    .unwrap();
    ch.basic_publish(
        "".into(),
        "exp".into(),
        BasicPublishOptions::default(),
        b"long",
        BasicProperties::default().with_expiration("600000".into()),
    )
    .await
    .unwrap();
    wait_until(TIMEOUT, "the short one expires", || async {
        message_count(&ch, "exp").await == 1
    })
    .await;
    assert_eq!(
        get_one(&ch, "exp", true).await.unwrap().delivery.data,
        b"long"
    );
}

#[tokio::test]
async fn rejected_messages_are_dead_lettered_with_the_routing_key_override() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    temp_queue(&ch, "parking").await;
    ch.queue_bind(
        "parking".into(),
        "amq.direct".into(),
        "parked".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let a = args(&[
        (
            "x-dead-letter-exchange",
            AMQPValue::LongString("amq.direct".into()),
        ),
        (
            "x-dead-letter-routing-key",
            AMQPValue::LongString("parked".into()),
        ),
    ]);
    ch.queue_declare("work".into(), QueueDeclareOptions::default(), a)
        .await
        .unwrap();
    publish(&ch, "", "work", b"bad").await;
    let m = get_one(&ch, "work", false).await.unwrap();
    ch.basic_reject(
        m.delivery.delivery_tag,
        BasicRejectOptions { requeue: false },
    )
    .await
    .unwrap();
    let parked = get_one(&ch, "parking", true).await.expect("dead-lettered");
    assert_eq!(parked.delivery.data, b"bad");
}

#[tokio::test]
async fn max_length_drops_from_the_head() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    ch.queue_declare(
        "ml".into(),
        QueueDeclareOptions::default(),
        args(&[("x-max-length", AMQPValue::LongInt(2))]),
    )
    .await
    .unwrap();
    for b in [b"1", b"2", b"3"] {
        publish(&ch, "", "ml", b).await;
    }
    assert_eq!(message_count(&ch, "ml").await, 2);
    assert_eq!(get_one(&ch, "ml", true).await.unwrap().delivery.data, b"2");
}

#[tokio::test]
async fn max_length_bytes_limits_the_body_total() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    ch.queue_declare(
        "mlb".into(),
        QueueDeclareOptions::default(),
        args(&[("x-max-length-bytes", AMQPValue::LongInt(10))]),
    )
    .await
    .unwrap();
    for _ in 0..5 {
        publish(&ch, "", "mlb", b"abcd").await;
    }
    assert_eq!(message_count(&ch, "mlb").await, 2);
}

#[tokio::test]
async fn priority_queue_delivers_higher_priority_first() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    ch.queue_declare(
        "prio".into(),
        QueueDeclareOptions::default(),
        args(&[("x-max-priority", AMQPValue::LongInt(10))]),
    )
    .await
    .unwrap();
    for (body, p) in [(b"low", 1u8), (b"top", 9), (b"mid", 5)] {
        ch.basic_publish(
            "".into(),
            "prio".into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_priority(p),
        )
        .await
        .unwrap();
    }
    message_count(&ch, "prio").await;
    let order: Vec<Vec<u8>> = [0, 1, 2].iter().map(|_| Vec::new()).collect();
    let mut got = order;
    for slot in got.iter_mut() {
        *slot = get_one(&ch, "prio", true)
            .await
            .unwrap()
            .delivery
            .data
            .clone();
    }
    assert_eq!(got, vec![b"top".to_vec(), b"mid".to_vec(), b"low".to_vec()]);
}

#[tokio::test]
async fn x_expires_deletes_an_unused_queue() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    ch.queue_declare(
        "exq".into(),
        QueueDeclareOptions::default(),
        args(&[("x-expires", AMQPValue::LongInt(300))]),
    )
    .await
    .unwrap();
    let (_c2, probe) = broker.channel().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    wait_until(TIMEOUT, "queue expired", || {
        let probe = probe.clone();
        async move {
            let conn_ok = probe.status().connected();
            conn_ok
                && probe
                    .queue_declare(
                        "exq".into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .is_err()
        }
    })
    .await;
}

/// Invalid argument values are refused with 406 PRECONDITION_FAILED.
#[tokio::test]
async fn invalid_queue_arguments_are_precondition_failed() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    let err = ch
        .queue_declare(
            "bad".into(),
            QueueDeclareOptions::default(),
            args(&[("x-overflow", AMQPValue::LongString("explode".into()))]),
        )
        .await
        .err()
        .unwrap();
    assert_eq!(reply_code(&err), Some(406));
}
