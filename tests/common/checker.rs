//! Load and bookkeeping for failover tests: publishers that send uniquely numbered messages with
//! confirms (up to a window in flight), reconnecting to the next node when their connection
//! fails; and a checker that compares what was confirmed and what was attempted with what is
//! finally consumed: ok / lost / duplicated / unexpected.

use futures::stream::{FuturesUnordered, StreamExt};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::Confirmation;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;

/// What one publisher did.
#[derive(Default, Debug)]
pub struct Ledger {
    /// Every message id handed to the client library.
    pub attempted: BTreeSet<String>,
    /// Ids the broker confirmed (ack).
    pub confirmed: BTreeSet<String>,
    /// Ids the broker nacked.
    pub nacked: BTreeSet<String>,
    /// Connection or channel failures seen (each followed by a reconnect).
    pub failures: Vec<String>,
}

/// Shared between the test and its publishers.
pub struct Load {
    pub stop: AtomicBool,
    pub confirmed: AtomicU64,
    pub ledgers: Mutex<Vec<Arc<Mutex<Ledger>>>>,
}

impl Load {
    pub fn new() -> Arc<Load> {
        Arc::new(Load {
            stop: AtomicBool::new(false),
            confirmed: AtomicU64::new(0),
            ledgers: Mutex::new(Vec::new()),
        })
    }

    pub fn confirmed(&self) -> u64 {
        self.confirmed.load(Ordering::Relaxed)
    }

    /// Everything all publishers did, merged.
    pub fn merged(&self) -> Ledger {
        let mut all = Ledger::default();
        for l in self.ledgers.lock().unwrap().iter() {
            let l = l.lock().unwrap();
            all.attempted.extend(l.attempted.iter().cloned());
            all.confirmed.extend(l.confirmed.iter().cloned());
            all.nacked.extend(l.nacked.iter().cloned());
            all.failures.extend(l.failures.iter().cloned());
        }
        all
    }
}

/// Publishes persistent messages `"{name}-{n}"` to `queue` with confirms, `window` in flight,
/// on the node at `uris[first]`; on a failure, moves on to the next uri and goes on, until
/// `load.stop`.
pub async fn publisher(
    load: Arc<Load>,
    name: String,
    uris: Vec<String>,
    first: usize,
    queue: String,
    window: usize,
) {
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    load.ledgers.lock().unwrap().push(ledger.clone());
    let mut n = 0u64;
    let mut target = first;
    while !load.stop.load(Ordering::Relaxed) {
        let uri = &uris[target % uris.len()];
        target += 1;
        let conn = match tokio::time::timeout(
            Duration::from_secs(5),
            Connection::connect(uri, ConnectionProperties::default()),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                ledger
                    .lock()
                    .unwrap()
                    .failures
                    .push(format!("connect {uri}: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(_) => {
                ledger
                    .lock()
                    .unwrap()
                    .failures
                    .push(format!("connect {uri}: timeout"));
                continue;
            }
        };
        let ch = match conn.create_channel().await {
            Ok(ch) => ch,
            Err(e) => {
                ledger
                    .lock()
                    .unwrap()
                    .failures
                    .push(format!("channel: {e}"));
                continue;
            }
        };
        if let Err(e) = ch.confirm_select(ConfirmSelectOptions::default()).await {
            ledger
                .lock()
                .unwrap()
                .failures
                .push(format!("confirm.select: {e}"));
            continue;
        }
        let mut in_flight = FuturesUnordered::new();
        let mut failed = None;
        while !load.stop.load(Ordering::Relaxed) && failed.is_none() {
            while in_flight.len() < window {
                n += 1;
                let id = format!("{name}-{n}");
                ledger.lock().unwrap().attempted.insert(id.clone());
                let props = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(id.clone().into());
                match ch
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        id.as_bytes(),
                        props,
                    )
                    .await
                {
                    Ok(confirm) => in_flight.push(async move {
                        (
                            id,
                            tokio::time::timeout(Duration::from_secs(30), confirm).await,
                        )
                    }),
                    Err(e) => {
                        failed = Some(format!("publish: {e}"));
                        break;
                    }
                }
            }
            if failed.is_some() {
                break;
            }
            match in_flight.next().await {
                Some((id, Ok(Ok(Confirmation::Ack(_))))) => {
                    ledger.lock().unwrap().confirmed.insert(id);
                    load.confirmed.fetch_add(1, Ordering::Relaxed);
                }
                Some((id, Ok(Ok(Confirmation::Nack(_))))) => {
                    ledger.lock().unwrap().nacked.insert(id);
                }
                Some((_, Ok(Ok(Confirmation::NotRequested)))) => {}
                Some((_, Ok(Err(e)))) => failed = Some(format!("confirm: {e}")),
                Some((_, Err(_))) => failed = Some("confirm: no answer within 30 s".into()),
                None => {}
            }
        }
        // Settle what is still in flight without waiting long: whatever is left is unknown.
        let drain = async {
            while let Some((id, r)) = in_flight.next().await {
                if let Ok(Ok(Confirmation::Ack(_))) = r {
                    ledger.lock().unwrap().confirmed.insert(id);
                    load.confirmed.fetch_add(1, Ordering::Relaxed);
                }
            }
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(if failed.is_some() { 1 } else { 30 }),
            drain,
        )
        .await;
        if let Some(f) = failed {
            ledger.lock().unwrap().failures.push(f);
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "bye".into())).await;
    }
}

/// What was finally consumed: message id -> (deliveries, deliveries flagged redelivered).
#[derive(Default, Debug)]
pub struct Drained {
    pub seen: BTreeMap<String, (u32, u32)>,
}

/// Consumes `queue` on `uri` with acks until it has been quiet for `quiet`.
pub async fn drain(uri: &str, queue: &str, quiet: Duration) -> Drained {
    let conn = Connection::connect(uri, ConnectionProperties::default())
        .await
        .expect("connect for draining");
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_qos(500, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "drain".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("basic.consume");
    let mut drained = Drained::default();
    loop {
        match tokio::time::timeout(quiet, consumer.next()).await {
            Ok(Some(Ok(delivery))) => {
                let id = String::from_utf8_lossy(&delivery.data).to_string();
                let entry = drained.seen.entry(id).or_default();
                entry.0 += 1;
                if delivery.redelivered {
                    entry.1 += 1;
                }
                delivery.ack(BasicAckOptions::default()).await.expect("ack");
            }
            Ok(Some(Err(e))) => panic!("consumer failed while draining: {e}"),
            Ok(None) | Err(_) => break,
        }
    }
    let _ = conn.close(200, "done".into()).await;
    drained
}

/// The verdict of one run.
#[derive(Debug)]
pub struct Verdict {
    pub confirmed: usize,
    pub ok: usize,
    pub lost: Vec<String>,
    pub duplicated: usize,
    pub unexpected: Vec<String>,
}

pub fn check(ledger: &Ledger, drained: &Drained) -> Verdict {
    let lost: Vec<String> = ledger
        .confirmed
        .iter()
        .filter(|id| !drained.seen.contains_key(*id))
        .cloned()
        .collect();
    let unexpected: Vec<String> = drained
        .seen
        .keys()
        .filter(|id| !ledger.attempted.contains(*id))
        .cloned()
        .collect();
    let duplicated = drained.seen.values().filter(|(n, _)| *n > 1).count();
    Verdict {
        confirmed: ledger.confirmed.len(),
        ok: ledger.confirmed.len() - lost.len(),
        lost,
        duplicated,
        unexpected,
    }
}

/// Publishes `body` to `queue` through the default exchange and waits for its confirm.
pub async fn publish_confirmed(
    ch: &lapin::Channel,
    queue: &str,
    body: &[u8],
    props: BasicProperties,
) -> lapin::Confirmation {
    ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .unwrap()
    .await
    .unwrap()
}

/// Stops the publishers, drains `queue` on `drain_uri` and fails on any confirmed message lost,
/// any message never published, or any message delivered twice.
pub async fn stop_and_check(
    load: &Load,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    drain_uri: &str,
    queue: &str,
) -> Verdict {
    load.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("publisher stops")
            .unwrap();
    }
    let ledger = load.merged();
    let drained = drain(drain_uri, queue, Duration::from_secs(3)).await;
    let verdict = check(&ledger, &drained);
    assert!(
        verdict.lost.is_empty(),
        "lost confirmed messages: {:?} (of {})",
        &verdict.lost[..verdict.lost.len().min(20)],
        verdict.confirmed
    );
    assert!(
        verdict.unexpected.is_empty(),
        "messages never published: {:?}",
        verdict.unexpected
    );
    assert_eq!(verdict.duplicated, 0, "messages applied twice");
    verdict
}

/// Waits until `load` has `more` confirms beyond its current count.
pub async fn wait_confirms(load: &Load, more: u64, timeout: Duration, logs: impl Fn() -> String) {
    let target = load.confirmed() + more;
    let deadline = Instant::now() + timeout;
    while load.confirmed() < target {
        assert!(
            Instant::now() < deadline,
            "only {} of {target} confirms within {timeout:?}; failures: {:?}\n{}",
            load.confirmed(),
            load.merged().failures.iter().take(10).collect::<Vec<_>>(),
            logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
