//! Queue declare/bind/purge/delete (AMQP 0-9-1 spec 1.7, RabbitMQ "Queues": exclusive,
//! auto-delete, server-named, passive; "Quorum Queues" for x-queue-type).

use crate::common::*;
use futures::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};

#[tokio::test]
async fn server_named_queues_get_amq_gen_names() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert!(
        q.name().as_str().starts_with("amq.gen-"),
        "{}",
        q.name().as_str()
    );
    publish(&ch, "", q.name().as_str(), b"x").await;
    assert!(get_one(&ch, q.name().as_str(), true).await.is_some());
}

/// RabbitMQ: another connection may not use an exclusive queue: 405 RESOURCE_LOCKED.
#[tokio::test]
async fn exclusive_queues_are_locked_to_their_connection_and_go_with_it() {
    let broker = Broker::start();
    let (owner, ch) = broker.channel().await;
    ch.queue_declare(
        "excl".into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let (_c2, other) = broker.channel().await;
    let err = other
        .queue_declare(
            "excl".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .err()
        .expect("locked");
    assert_eq!(reply_code(&err), Some(405), "{err:?}");
    owner.close(200, "bye".into()).await.unwrap();
    let (_c3, third) = broker.channel().await;
    wait_until(
        TIMEOUT,
        "exclusive queue deleted with its connection",
        || {
            let third = third.clone();
            async move {
                let r = third
                    .queue_declare(
                        "excl".into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await;
                r.is_err()
            }
        },
    )
    .await;
}

#[tokio::test]
async fn passive_declare_of_a_missing_queue_is_not_found() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    let err = ch
        .queue_declare(
            "missing".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .err()
        .unwrap();
    assert_eq!(reply_code(&err), Some(404));
    assert!(
        conn.status().connected(),
        "a channel error leaves the connection open"
    );
}

#[tokio::test]
async fn redeclaring_with_other_properties_is_precondition_failed() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    ch.queue_declare(
        "d".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let err = ch
        .queue_declare(
            "d".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .err()
        .unwrap();
    assert_eq!(reply_code(&err), Some(406));
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            "d".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 0);
}

#[tokio::test]
async fn declare_ok_reports_message_and_consumer_counts_and_purge_empties() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    temp_queue(&ch, "cnt").await;
    for _ in 0..3 {
        publish(&ch, "", "cnt", b"x").await;
    }
    let (_c2, ch2) = broker.channel().await;
    let _consumer = ch2
        .basic_consume(
            "cnt".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (_c3, ch3) = broker.channel().await;
    temp_queue(&ch3, "cnt2").await;
    for _ in 0..4 {
        publish(&ch3, "", "cnt2", b"x").await;
    }
    let q = ch3
        .queue_declare(
            "cnt2".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 4);
    let q = ch3
        .queue_declare(
            "cnt".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.consumer_count(), 1);
    let purged = ch3
        .queue_purge("cnt2".into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    assert_eq!(purged, 4);
    assert_eq!(message_count(&ch3, "cnt2").await, 0);
}

#[tokio::test]
async fn delete_if_empty_and_if_unused_are_preconditions() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    temp_queue(&ch, "full").await;
    publish(&ch, "", "full", b"x").await;
    message_count(&ch, "full").await;
    let err = ch
        .queue_delete(
            "full".into(),
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        )
        .await
        .err()
        .unwrap();
    assert_eq!(reply_code(&err), Some(406));
    let ch = conn.create_channel().await.unwrap();
    let _consumer = ch
        .basic_consume(
            "full".into(),
            "c".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (_c2, other) = broker.channel().await;
    let err = other
        .queue_delete(
            "full".into(),
            QueueDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await
        .err()
        .unwrap();
    assert_eq!(reply_code(&err), Some(406));
    let (_c3, third) = broker.channel().await;
    third
        .queue_delete("full".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}

/// RabbitMQ: an auto-delete queue is deleted when its last consumer is cancelled.
#[tokio::test]
async fn auto_delete_queue_goes_with_its_last_consumer() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    ch.queue_declare(
        "ad".into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut consumer = ch
        .basic_consume(
            "ad".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch.basic_cancel("c".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    let _ = tokio::time::timeout(std::time::Duration::from_millis(100), consumer.next()).await;
    let (_c2, other) = broker.channel().await;
    let err = other
        .queue_declare(
            "ad".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .err();
    assert_eq!(err.as_ref().and_then(reply_code), Some(404));
}

#[tokio::test]
async fn quorum_queue_type_is_accepted() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(
        "qq".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    publish(&ch, "", "qq", b"x").await;
    assert!(get_one(&ch, "qq", true).await.is_some());
}

/// queue.unbind stops routing by that binding.
#[tokio::test]
async fn unbind_stops_routing() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    temp_queue(&ch, "ub").await;
    ch.queue_bind(
        "ub".into(),
        "amq.direct".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish(&ch, "amq.direct", "k", b"1").await;
    ch.queue_unbind(
        "ub".into(),
        "amq.direct".into(),
        "k".into(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish(&ch, "amq.direct", "k", b"2").await;
    assert_eq!(message_count(&ch, "ub").await, 1);
}
