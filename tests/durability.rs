//! Durability across restarts and crashes (DESIGN.md invariant 1; RabbitMQ "Reliability
//! Guide"): confirmed persistent messages on durable queues survive SIGKILL; transient
//! messages and non-durable queues do not survive a restart, as in RabbitMQ.

use crate::common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn durable_entities_and_persistent_messages_survive_a_restart_transient_ones_do_not() {
    let mut broker = Broker::start();
    {
        let (_c, ch) = broker.channel().await;
        ch.exchange_declare(
            "dx".into(),
            lapin::ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_declare(
            "dq".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_declare(
            "tq".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_bind(
            "dq".into(),
            "dx".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        for (body, mode) in [(b"persistent", 2u8), (b"transient!", 1)] {
            ch.basic_publish(
                "dx".into(),
                "k".into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(mode),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
    }
    assert!(broker.terminate().success());
    broker.restart();
    let (_c, ch) = broker.channel().await;
    assert_eq!(
        message_count(&ch, "dq").await,
        1,
        "only the persistent message survives"
    );
    assert_eq!(
        get_one(&ch, "dq", true).await.unwrap().delivery.data,
        b"persistent"
    );
    // The binding survived too.
    publish(&ch, "dx", "k", b"again").await;
    assert_eq!(message_count(&ch, "dq").await, 1);
    let err = ch
        .queue_declare(
            "tq".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .err();
    assert_eq!(
        err.as_ref().and_then(reply_code),
        Some(404),
        "a non-durable queue is gone after a restart"
    );
}

const PREWRITTEN: &str = "write-ahead-log files prewritten";

/// The write-ahead-log files of the database in `data_dir` of at least `min` bytes.
fn full_wal_files(data_dir: &std::path::Path, min: u64) -> usize {
    std::fs::read_dir(data_dir.join("db"))
        .expect("database directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .filter(|p| p.metadata().is_ok_and(|m| m.len() >= min))
        .count()
}

/// The crash test: publishers with confirms run while the broker is SIGKILLed; after a
/// restart on the same data directory every confirmed message is there (at least once) and
/// nothing that was never published appears. The node runs with the default prewritten
/// write-ahead log (70 MiB a file; the suite turns it off elsewhere), so the confirmed writes
/// land in reused files that still hold the prewrite's bytes after them, and recovery must
/// stop at the last real record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_confirmed_publishing_loses_nothing_confirmed() {
    let mut broker = Broker::start_with(&["--wal-prewrite-mib", "70"]);
    assert_eq!(broker.log().matches(PREWRITTEN).count(), 1);
    assert_eq!(
        full_wal_files(&broker.data_dir, 70 << 20),
        2,
        "two write-ahead-log files of 70 MiB"
    );
    {
        let (_c, ch) = broker.channel().await;
        ch.queue_declare(
            "crash".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    let confirmed = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let sent = Arc::new(AtomicU64::new(0));
    let mut publishers = Vec::new();
    for p in 0..3u64 {
        let uri = broker.uri();
        let confirmed = confirmed.clone();
        let sent = sent.clone();
        publishers.push(tokio::spawn(async move {
            let Ok(conn) =
                lapin::Connection::connect(&uri, lapin::ConnectionProperties::default()).await
            else {
                return;
            };
            let Ok(ch) = conn.create_channel().await else {
                return;
            };
            if ch
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .is_err()
            {
                return;
            }
            let mut in_flight = std::collections::VecDeque::new();
            for i in 0..1_000_000u64 {
                let id = p * 1_000_000_000 + i;
                let Ok(confirm) = ch
                    .basic_publish(
                        "".into(),
                        "crash".into(),
                        BasicPublishOptions::default(),
                        &id.to_be_bytes(),
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                else {
                    break;
                };
                sent.fetch_add(1, Ordering::Relaxed);
                in_flight.push_back((id, confirm));
                if in_flight.len() >= 100 {
                    let (id, c) = in_flight.pop_front().unwrap();
                    match c.await {
                        Ok(conf) if conf.is_ack() => {
                            confirmed.lock().unwrap().insert(id);
                        }
                        _ => break,
                    }
                }
            }
        }));
    }
    wait_until(Duration::from_secs(60), "some confirmed publishes", || {
        let n = confirmed.lock().unwrap().len();
        async move { n >= 3000 }
    })
    .await;
    broker.kill();
    for p in publishers {
        let _ = tokio::time::timeout(TIMEOUT, p).await;
    }
    let confirmed = confirmed.lock().unwrap().clone();
    let published_max = sent.load(Ordering::Relaxed);
    broker.restart();
    assert_eq!(
        broker.log().matches(PREWRITTEN).count(),
        1,
        "a restart does not prewrite again"
    );
    let (_c, ch) = broker.channel().await;
    let mut found = BTreeSet::new();
    let mut unexpected = 0u64;
    while let Some(m) = ch
        .basic_get("crash".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let id = u64::from_be_bytes(m.delivery.data[..8].try_into().unwrap());
        if id % 1_000_000_000 >= 1_000_000 {
            unexpected += 1;
        }
        found.insert(id);
    }
    let lost: Vec<_> = confirmed.difference(&found).take(10).collect();
    assert!(
        lost.is_empty(),
        "lost {} confirmed messages, e.g. {lost:?}",
        confirmed.difference(&found).count()
    );
    assert_eq!(unexpected, 0);
    assert!(
        found.len() as u64 <= published_max,
        "more messages than were ever published"
    );
}

/// On a standalone node a publish outside confirm mode is written to the log without an fsync
/// of its own (the writer syncs within 200 ms; docs/architecture.md). A process crash must
/// still keep it: once the broker has delivered such persistent messages, their log entries
/// are written, and SIGKILL does not take back what the kernel already holds.
#[tokio::test]
async fn unconfirmed_persistent_messages_once_delivered_survive_sigkill() {
    let mut broker = Broker::start();
    declare_durable(&broker.uri(), "unconfirmed").await;
    {
        let (_c, ch) = broker.channel().await;
        for i in 0..100u32 {
            ch.basic_publish(
                "".into(),
                "unconfirmed".into(),
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("basic.publish");
        }
        let (_c2, ch2) = broker.channel().await;
        let mut consumer = ch2
            .basic_consume(
                "unconfirmed".into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        for i in 0..100u32 {
            let d = next_delivery(&mut consumer).await;
            assert_eq!(d.data, i.to_be_bytes());
        }
        // At once, well inside the writer's sync window.
        broker.kill();
    }
    broker.restart();
    let (_c, ch) = broker.channel().await;
    assert_eq!(message_count(&ch, "unconfirmed").await, 100);
    for i in 0..100u32 {
        let m = get_one(&ch, "unconfirmed", true).await.expect("a message");
        assert_eq!(m.delivery.data, i.to_be_bytes());
        assert!(m.delivery.redelivered, "delivered before the crash");
    }
}

/// A standalone node leaves the bodies of transient messages out of its log where its restart
/// drops them anyway (raft/src/left_out_bodies.rs), but not those of a queue that dead-letters:
/// dead-lettered into a quorum queue declared after they were published, they are kept by it
/// across a SIGKILL and come back whole. The ones left in a plain classic queue are dropped,
/// not delivered with a body the log does not have.
#[tokio::test]
async fn transient_messages_dead_lettered_into_a_later_quorum_queue_survive_sigkill_whole() {
    use lapin::types::AMQPValue;
    let mut broker = Broker::start();
    let body = |i: u32| {
        let mut b = format!("transient {i} ").into_bytes();
        b.resize(2000, b'a' + (i % 26) as u8);
        b
    };
    {
        let (_c, ch) = broker.channel().await;
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let mut dead_letter = FieldTable::default();
        dead_letter.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        dead_letter.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString("qq".into()),
        );
        ch.queue_declare("cq".into(), durable, dead_letter)
            .await
            .unwrap();
        ch.queue_declare("stays".into(), durable, FieldTable::default())
            .await
            .unwrap();
        for i in 0..50u32 {
            for queue in ["cq", "stays"] {
                ch.basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    &body(i),
                    BasicProperties::default(),
                )
                .await
                .unwrap();
            }
        }
        let mut quorum = FieldTable::default();
        quorum.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        ch.queue_declare("qq".into(), durable, quorum)
            .await
            .unwrap();
        for i in 0..50u32 {
            let m = get_one(&ch, "cq", false).await.expect("a message in cq");
            assert_eq!(m.delivery.data, body(i));
            ch.basic_reject(
                m.delivery.delivery_tag,
                BasicRejectOptions { requeue: false },
            )
            .await
            .unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while message_count(&ch, "qq").await < 50 {
            assert!(
                std::time::Instant::now() < deadline,
                "dead-lettered into qq"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(message_count(&ch, "stays").await, 50);
    }
    broker.kill();
    broker.restart();
    let (_c, ch) = broker.channel().await;
    assert_eq!(
        message_count(&ch, "stays").await,
        0,
        "dropped by the restart"
    );
    assert_eq!(message_count(&ch, "cq").await, 0);
    assert_eq!(message_count(&ch, "qq").await, 50);
    for i in 0..50u32 {
        let m = get_one(&ch, "qq", true).await.expect("a message in qq");
        assert_eq!(
            m.delivery.data,
            body(i),
            "message {i} whole after the restart"
        );
    }
}

/// A standalone node's data directory, whose log left transient bodies out, started with
/// cluster settings: that first start drops the transient messages as a standalone restart
/// would (their bodies are not in the log), and the next one keeps transient messages as a
/// cluster node's restart does, so the mark went with that first start.
#[tokio::test]
async fn a_standalone_log_started_as_a_cluster_node_drops_its_transient_messages_once() {
    let mut broker = Broker::start();
    declare_durable(&broker.uri(), "q").await;
    let publish_all = |ch: lapin::Channel, bodies: Vec<(Vec<u8>, u8)>| async move {
        for (body, mode) in bodies {
            ch.basic_publish(
                "".into(),
                "q".into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(mode),
            )
            .await
            .unwrap();
        }
    };
    let wait_count = |ch: lapin::Channel, want: u32| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let n = message_count(&ch, "q").await;
            if n == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{n} messages, want {want}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    {
        let (_c, ch) = broker.channel().await;
        let mut bodies: Vec<(Vec<u8>, u8)> =
            (0..20).map(|i| (vec![b'0' + i as u8; 1500], 1)).collect();
        bodies.push((b"persistent".to_vec(), 2));
        publish_all(ch.clone(), bodies).await;
        wait_count(ch, 21).await;
    }
    broker.kill();
    let raft = free_port();
    broker.restart_with(&["--raft-listen", &format!("127.0.0.1:{raft}")]);
    {
        let (_c, ch) = broker.channel().await;
        assert_eq!(
            message_count(&ch, "q").await,
            1,
            "the transient ones dropped"
        );
        let m = get_one(&ch, "q", true).await.expect("the persistent one");
        assert_eq!(m.delivery.data, b"persistent");
        publish_all(ch.clone(), vec![(b"again".to_vec(), 1); 5]).await;
        wait_count(ch, 5).await;
    }
    broker.kill();
    broker.restart();
    let (_c, ch) = broker.channel().await;
    assert_eq!(
        message_count(&ch, "q").await,
        5,
        "a cluster node's restart keeps transient messages"
    );
    for _ in 0..5 {
        let m = get_one(&ch, "q", true).await.expect("a message");
        assert_eq!(m.delivery.data, b"again");
    }
}
