//! Exchanges and routing (AMQP 0-9-1 spec 3.1.3, RabbitMQ "Exchanges", "Exchange to
//! Exchange Bindings", "Alternate Exchanges").

use crate::common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};

async fn drain(ch: &lapin::Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        out.push(String::from_utf8(m.delivery.data.clone()).unwrap());
    }
    out
}

#[tokio::test]
async fn topic_exchange_matches_star_and_hash() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    for (q, key) in [
        ("star", "a.*.c"),
        ("hash", "a.#"),
        ("exact", "a.b.c"),
        ("all", "#"),
    ] {
        temp_queue(&ch, q).await;
        ch.queue_bind(
            q.into(),
            "amq.topic".into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    for key in ["a.b.c", "a", "a.b", "x.y"] {
        publish(&ch, "amq.topic", key, key.as_bytes()).await;
    }
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .ok();
    // A barrier: a passive declare is answered after the publishes were applied.
    message_count(&ch, "star").await;
    assert_eq!(drain(&ch, "star").await, vec!["a.b.c"]);
    assert_eq!(drain(&ch, "hash").await, vec!["a.b.c", "a", "a.b"]);
    assert_eq!(drain(&ch, "exact").await, vec!["a.b.c"]);
    assert_eq!(drain(&ch, "all").await, vec!["a.b.c", "a", "a.b", "x.y"]);
}

#[tokio::test]
async fn fanout_copies_to_every_bound_queue() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    ch.exchange_declare(
        "fan".into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    for q in ["f1", "f2", "f3"] {
        temp_queue(&ch, q).await;
        ch.queue_bind(
            q.into(),
            "fan".into(),
            "ignored".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    publish(&ch, "fan", "any", b"hello").await;
    for q in ["f1", "f2", "f3"] {
        wait_until(TIMEOUT, "copy in each queue", || async {
            message_count(&ch, q).await == 1
        })
        .await;
    }
}

#[tokio::test]
async fn headers_exchange_all_and_any() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    let bind = |mode: &str| {
        let mut t = FieldTable::default();
        t.insert("x-match".into(), AMQPValue::LongString(mode.into()));
        t.insert("color".into(), AMQPValue::LongString("red".into()));
        t.insert("size".into(), AMQPValue::LongString("big".into()));
        t
    };
    temp_queue(&ch, "h-all").await;
    temp_queue(&ch, "h-any").await;
    ch.queue_bind(
        "h-all".into(),
        "amq.headers".into(),
        "".into(),
        QueueBindOptions::default(),
        bind("all"),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "h-any".into(),
        "amq.headers".into(),
        "".into(),
        QueueBindOptions::default(),
        bind("any"),
    )
    .await
    .unwrap();
    let send = |color: &'static str, size: &'static str| {
        let ch = ch.clone();
        async move {
            let mut h = FieldTable::default();
            h.insert("color".into(), AMQPValue::LongString(color.into()));
            h.insert("size".into(), AMQPValue::LongString(size.into()));
            ch.basic_publish(
                "amq.headers".into(),
                "".into(),
                BasicPublishOptions::default(),
                format!("{color}-{size}").as_bytes(),
                BasicProperties::default().with_headers(h),
            )
            .await
            .unwrap();
        }
    };
    send("red", "big").await;
    send("red", "small").await;
    send("blue", "small").await;
    message_count(&ch, "h-all").await;
    assert_eq!(drain(&ch, "h-all").await, vec!["red-big"]);
    assert_eq!(drain(&ch, "h-any").await, vec!["red-big", "red-small"]);
}

#[tokio::test]
async fn exchange_to_exchange_binding_routes_through() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    ch.exchange_declare(
        "src".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_declare(
        "dst".into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_bind(
        "dst".into(),
        "src".into(),
        "k".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    temp_queue(&ch, "e2e").await;
    ch.queue_bind(
        "e2e".into(),
        "dst".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish(&ch, "src", "k", b"through").await;
    publish(&ch, "src", "other", b"not").await;
    message_count(&ch, "e2e").await;
    assert_eq!(drain(&ch, "e2e").await, vec!["through"]);
    ch.exchange_unbind(
        "dst".into(),
        "src".into(),
        "k".into(),
        ExchangeUnbindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish(&ch, "src", "k", b"after").await;
    message_count(&ch, "e2e").await;
    assert!(drain(&ch, "e2e").await.is_empty());
}

#[tokio::test]
async fn alternate_exchange_takes_unroutable_messages() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    ch.exchange_declare(
        "ae".into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    temp_queue(&ch, "unrouted").await;
    ch.queue_bind(
        "unrouted".into(),
        "ae".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "alternate-exchange".into(),
        AMQPValue::LongString("ae".into()),
    );
    ch.exchange_declare(
        "main".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        args,
    )
    .await
    .unwrap();
    publish(&ch, "main", "nobody", b"spare").await;
    wait_until(TIMEOUT, "alternate exchange routed it", || async {
        message_count(&ch, "unrouted").await == 1
    })
    .await;
}

/// Publishing to a missing exchange closes the channel with 404 NOT_FOUND.
#[tokio::test]
async fn publish_to_a_missing_exchange_is_not_found() {
    let broker = Broker::start();
    let (_c, ch) = broker.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let res = ch
        .basic_publish(
            "nope".into(),
            "k".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await;
    if let Ok(confirm) = res {
        let _ = confirm.await;
    }
    wait_until(TIMEOUT, "channel closed", || async {
        !ch.status().connected()
    })
    .await;
}

/// Redeclaring an exchange with another type is 406; declaring amq.* is 403.
#[tokio::test]
async fn exchange_declare_errors_use_rabbitmq_codes() {
    let broker = Broker::start();
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        "x".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let err = ch
        .exchange_declare(
            "x".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .err()
        .unwrap();
    assert_eq!(reply_code(&err), Some(406));
    let ch = conn.create_channel().await.unwrap();
    let err = ch
        .exchange_declare(
            "amq.mine".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .err()
        .unwrap();
    assert_eq!(reply_code(&err), Some(403));
    let ch = conn.create_channel().await.unwrap();
    let err = ch
        .exchange_declare(
            "missing".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .err()
        .unwrap();
    assert_eq!(reply_code(&err), Some(404));
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_delete("x".into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
}
