//! Publisher confirms and transactions (RabbitMQ "Publisher Confirms", AMQP tx class).

use crate::common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

#[tokio::test]
async fn every_confirmed_publish_is_in_the_queue() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    ch.queue_declare(
        "cf".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut pending = Vec::new();
    for i in 0..2000u32 {
        let c = ch
            .basic_publish(
                "".into(),
                "cf".into(),
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap();
        pending.push(c);
    }
    for c in pending {
        assert!(c.await.unwrap().is_ack());
    }
    assert_eq!(message_count(&ch, "cf").await, 2000);
}

/// A queue with x-overflow reject-publish nacks publishes beyond its limit.
#[tokio::test]
async fn reject_publish_overflow_nacks() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    ch.queue_declare("full".into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let first = ch
        .basic_publish(
            "".into(),
            "full".into(),
            BasicPublishOptions::default(),
            b"1",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let second = ch
        .basic_publish(
            "".into(),
            "full".into(),
            BasicPublishOptions::default(),
            b"2",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(first.is_ack());
    assert!(second.is_nack());
}

#[tokio::test]
async fn tx_commit_publishes_and_rollback_discards() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    temp_queue(&ch, "tx").await;
    ch.tx_select().await.unwrap();
    publish(&ch, "", "tx", b"a").await;
    publish(&ch, "", "tx", b"b").await;
    let (_c2, observer) = broker.channel().await;
    assert_eq!(
        message_count(&observer, "tx").await,
        0,
        "nothing visible before commit"
    );
    ch.tx_commit().await.unwrap();
    assert_eq!(message_count(&observer, "tx").await, 2);
    publish(&ch, "", "tx", b"c").await;
    ch.tx_rollback().await.unwrap();
    ch.tx_commit().await.unwrap();
    assert_eq!(
        message_count(&observer, "tx").await,
        2,
        "rolled back publish never lands"
    );
}

#[tokio::test]
async fn tx_acks_take_effect_at_commit() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    temp_queue(&ch, "txa").await;
    publish(&ch, "", "txa", b"a").await;
    ch.tx_select().await.unwrap();
    let m = get_one(&ch, "txa", false).await.unwrap();
    ch.basic_ack(m.delivery.delivery_tag, BasicAckOptions::default())
        .await
        .unwrap();
    ch.tx_rollback().await.unwrap();
    ch.basic_ack(m.delivery.delivery_tag, BasicAckOptions::default())
        .await
        .unwrap();
    ch.tx_commit().await.unwrap();
    ch.basic_recover(BasicRecoverOptions { requeue: true })
        .await
        .unwrap();
    assert!(ch
        .basic_get("txa".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .is_none());
}

/// Switching a confirm channel to tx mode is a 406 PRECONDITION_FAILED channel error.
#[tokio::test]
async fn confirm_and_tx_modes_exclude_each_other() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let err = ch
        .tx_select()
        .await
        .err()
        .expect("tx.select on a confirm channel fails");
    assert_eq!(reply_code(&err), Some(406), "{err:?}");
}

/// Publishes made before the client's channel.close are confirmed before close-ok: a client
/// that publishes and closes at once still learns that its messages are safe.
#[tokio::test]
async fn confirms_owed_at_channel_close_are_sent_before_close_ok() {
    let broker = Broker::start();
    let (conn, ch) = broker.channel().await;
    temp_queue(&ch, "owed").await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut confirms = Vec::new();
    for i in 0..200u32 {
        confirms.push(
            ch.basic_publish(
                "".into(),
                "owed".into(),
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap(),
        );
    }
    ch.close(200, "done".into()).await.unwrap();
    for c in confirms {
        let c = tokio::time::timeout(TIMEOUT, c)
            .await
            .expect("confirm arrives")
            .expect("confirm");
        assert!(c.is_ack());
    }
    let ch2 = conn.create_channel().await.unwrap();
    assert_eq!(message_count(&ch2, "owed").await, 200);
}
