//! basic.publish / consume / get / ack / nack / reject / recover / qos (AMQP 0-9-1 spec
//! 1.8, RabbitMQ "Consumer Acknowledgements and Publisher Confirms", "Consumer Prefetch").

use crate::common::*;
use futures::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use std::time::Duration;

fn rich_properties() -> BasicProperties {
    let mut inner = FieldTable::default();
    inner.insert("depth".into(), AMQPValue::LongLongInt(-7));
    inner.insert("flag".into(), AMQPValue::Boolean(true));
    let mut headers = FieldTable::default();
    headers.insert(
        "zeta".into(),
        AMQPValue::LongString(LongString::from("last")),
    );
    headers.insert("alpha".into(), AMQPValue::ShortShortInt(-3));
    headers.insert("nested".into(), AMQPValue::FieldTable(inner));
    headers.insert(
        "list".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::LongInt(1),
            AMQPValue::Double(2.5),
            AMQPValue::Void,
        ])),
    );
    headers.insert("when".into(), AMQPValue::Timestamp(1_700_000_000));
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("gzip".into())
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_priority(3)
        .with_correlation_id("corr-1".into())
        .with_reply_to("replies".into())
        .with_expiration("60000".into())
        .with_message_id("m-1".into())
        .with_timestamp(1_700_000_001)
        .with_type("kind".into())
        .with_user_id("guest".into())
        .with_app_id("tests".into())
        .with_cluster_id("c".into())
}

/// Every property and nested header table reaches the consumer as published.
#[tokio::test]
async fn every_property_and_nested_header_round_trips() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    temp_queue(&ch, "props").await;
    let props = rich_properties();
    ch.basic_publish(
        "".into(),
        "props".into(),
        BasicPublishOptions::default(),
        b"{}",
        props.clone(),
    )
    .await
    .unwrap();
    let msg = get_one(&ch, "props", true).await.expect("message");
    assert_eq!(msg.delivery.properties, props);
    assert_eq!(msg.delivery.data, b"{}");
}

/// Bodies of any size are split across frames by frame_max and joined again.
#[tokio::test]
async fn large_bodies_cross_many_frames_intact() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    temp_queue(&ch, "big").await;
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    publish(&ch, "", "big", &body).await;
    publish(&ch, "", "big", b"").await;
    let msg = get_one(&ch, "big", true).await.expect("big message");
    assert_eq!(msg.delivery.data.len(), body.len());
    assert!(msg.delivery.data == body);
    let empty = get_one(&ch, "big", true).await.expect("empty message");
    assert!(empty.delivery.data.is_empty());
}

#[tokio::test]
async fn consume_delivers_in_publish_order_and_ack_removes() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    temp_queue(&ch, "order").await;
    for i in 0..200u32 {
        publish(&ch, "", "order", &i.to_be_bytes()).await;
    }
    let mut consumer = ch
        .basic_consume(
            "order".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert!(
        consumer.tag().as_str().starts_with("amq.ctag-"),
        "server-named consumer tag"
    );
    for i in 0..200u32 {
        let d = next_delivery(&mut consumer).await;
        assert_eq!(d.data, i.to_be_bytes());
        assert!(!d.redelivered);
        ch.basic_ack(d.delivery_tag, BasicAckOptions::default())
            .await
            .unwrap();
    }
    let (_c2, ch2) = broker.channel().await;
    wait_until(TIMEOUT, "queue empty", || async {
        message_count(&ch2, "order").await == 0
    })
    .await;
}

/// basic.get on an empty queue answers get-empty; nack/reject with requeue put the message
/// back with the redelivered flag; without requeue it is gone.
#[tokio::test]
async fn get_empty_nack_requeue_and_reject_drop() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    temp_queue(&ch, "g").await;
    assert!(ch
        .basic_get("g".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .is_none());
    publish(&ch, "", "g", b"one").await;
    let m = get_one(&ch, "g", false).await.unwrap();
    assert!(!m.delivery.redelivered);
    assert_eq!(m.message_count, 0);
    ch.basic_nack(
        m.delivery.delivery_tag,
        BasicNackOptions {
            multiple: false,
            requeue: true,
        },
    )
    .await
    .unwrap();
    let m = get_one(&ch, "g", false).await.unwrap();
    assert!(
        m.delivery.redelivered,
        "a requeued message carries the redelivered flag"
    );
    ch.basic_reject(
        m.delivery.delivery_tag,
        BasicRejectOptions { requeue: false },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(ch
        .basic_get("g".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .is_none());
}

/// Acking an unknown delivery tag closes the channel with 406 PRECONDITION_FAILED.
#[tokio::test]
async fn an_unknown_delivery_tag_is_precondition_failed() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    ch.basic_ack(99, BasicAckOptions::default()).await.unwrap();
    wait_until(TIMEOUT, "channel closed", || async {
        !ch.status().connected()
    })
    .await;
    // The connection and other channels carry on.
    let ch2 = conn
        .create_channel()
        .await
        .expect("connection still usable");
    temp_queue(&ch2, "after").await;
}

/// Multiple ack settles every delivery up to the tag; basic.recover redelivers the rest.
#[tokio::test]
async fn multiple_ack_and_recover() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    temp_queue(&ch, "m").await;
    for i in 0..5u8 {
        publish(&ch, "", "m", &[i]).await;
    }
    let mut tags = Vec::new();
    for _ in 0..5 {
        tags.push(
            get_one(&ch, "m", false)
                .await
                .unwrap()
                .delivery
                .delivery_tag,
        );
    }
    assert_eq!(tags, vec![1, 2, 3, 4, 5]);
    ch.basic_ack(3, BasicAckOptions { multiple: true })
        .await
        .unwrap();
    ch.basic_recover(BasicRecoverOptions { requeue: true })
        .await
        .unwrap();
    let a = get_one(&ch, "m", false).await.unwrap();
    let b = get_one(&ch, "m", false).await.unwrap();
    assert_eq!(
        (a.delivery.data.clone(), b.delivery.data.clone()),
        (vec![3], vec![4])
    );
    assert!(a.delivery.redelivered && b.delivery.redelivered);
    assert!(ch
        .basic_get("m".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .is_none());
}

/// RabbitMQ "Consumer Prefetch": with prefetch 2 a consumer holds at most 2 unacked.
#[tokio::test]
async fn prefetch_limits_unacknowledged_deliveries() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    temp_queue(&ch, "pf").await;
    for i in 0..10u8 {
        publish(&ch, "", "pf", &[i]).await;
    }
    ch.basic_qos(2, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            "pf".into(),
            "c1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let d1 = next_delivery(&mut consumer).await;
    let _d2 = next_delivery(&mut consumer).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), consumer.next())
            .await
            .is_err(),
        "a third delivery beyond prefetch"
    );
    ch.basic_ack(d1.delivery_tag, BasicAckOptions::default())
        .await
        .unwrap();
    let d3 = next_delivery(&mut consumer).await;
    assert_eq!(d3.data, vec![2]);
}

/// Unacked messages of a closed channel go back to the queue, redelivered.
#[tokio::test]
async fn closing_a_channel_requeues_its_unacked_messages() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    temp_queue(&ch, "rq").await;
    publish(&ch, "", "rq", b"x").await;
    let _m = get_one(&ch, "rq", false).await.unwrap();
    ch.close(200, "bye".into()).await.unwrap();
    let ch2 = conn.create_channel().await.unwrap();
    let m = get_one(&ch2, "rq", false).await.expect("requeued");
    assert!(m.delivery.redelivered);
}

/// A mandatory publish that no queue takes comes back as basic.return (312 NO_ROUTE).
#[tokio::test]
async fn mandatory_unroutable_publish_is_returned() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = ch
        .basic_publish(
            "".into(),
            "nowhere".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"lost",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let returned = confirm.take_message().expect("basic.return");
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.data, b"lost");
}

/// consumer_cancel_notify: deleting a queue cancels its consumers with a basic.cancel.
#[tokio::test]
async fn deleting_a_queue_cancels_its_consumers() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    temp_queue(&ch, "gone").await;
    let mut consumer = ch
        .basic_consume(
            "gone".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (_c2, ch2) = broker.channel().await;
    ch2.queue_delete("gone".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let end = tokio::time::timeout(TIMEOUT, consumer.next())
        .await
        .expect("consumer stream ends");
    assert!(end.is_none(), "the consumer was cancelled by the server");
}

/// basic.cancel from the client stops deliveries.
#[tokio::test]
async fn cancel_stops_deliveries() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    temp_queue(&ch, "cx").await;
    let consumer = ch
        .basic_consume(
            "cx".into(),
            "tag".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch.basic_cancel("tag".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    drop(consumer);
    publish(&ch, "", "cx", b"x").await;
    wait_until(TIMEOUT, "message stays queued", || async {
        message_count(&ch, "cx").await == 1
    })
    .await;
    let _ = ShortString::from("unused");
}

/// channel.flow(active=false) stops deliveries to the channel; active=true resumes them.
#[tokio::test]
async fn channel_flow_pauses_and_resumes_deliveries() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    temp_queue(&ch, "flow").await;
    let mut consumer = ch
        .basic_consume(
            "flow".into(),
            "c".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let active = ch
        .channel_flow(ChannelFlowOptions { active: false })
        .await
        .unwrap();
    assert!(!active);
    let (_c2, producer) = broker.channel().await;
    publish(&producer, "", "flow", b"held").await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), consumer.next())
            .await
            .is_err(),
        "delivered while flow was off"
    );
    ch.channel_flow(ChannelFlowOptions { active: true })
        .await
        .unwrap();
    let d = tokio::time::timeout(TIMEOUT, consumer.next())
        .await
        .expect("delivery after flow on")
        .unwrap()
        .unwrap();
    assert_eq!(d.data, b"held");
}

/// RabbitMQ "Consumer Prefetch": global=true limits the channel as a whole, shared by its
/// consumers.
#[tokio::test]
async fn global_prefetch_is_shared_by_the_channels_consumers() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    temp_queue(&ch, "g1").await;
    temp_queue(&ch, "g2").await;
    for i in 0..5u8 {
        publish(&ch, "", "g1", &[i]).await;
        publish(&ch, "", "g2", &[i]).await;
    }
    ch.basic_qos(3, BasicQosOptions { global: true })
        .await
        .unwrap();
    let mut c1 = ch
        .basic_consume(
            "g1".into(),
            "c1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut c2 = ch
        .basic_consume(
            "g2".into(),
            "c2".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut got = 0;
    loop {
        tokio::select! {
            Some(Ok(_)) = c1.next() => got += 1,
            Some(Ok(_)) = c2.next() => got += 1,
            _ = tokio::time::sleep(Duration::from_millis(700)) => break,
        }
    }
    assert_eq!(
        got, 3,
        "the channel holds exactly its global prefetch of unacked deliveries"
    );
}
