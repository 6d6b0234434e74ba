//! `raftmq bench`: a load generator for any AMQP 0-9-1 broker (RaftMQ, RabbitMQ, LavinMQ).
//!
//! Producers publish numbered messages. Each body starts with the send time and a
//! (producer, sequence) id: 16 bytes, the smallest message size accepted. Consumers measure
//! the end-to-end latency from those bytes and record every id they see. After the run,
//! producers stop, consumers drain the queues, and the report counts confirmed messages that
//! never arrived (lost) and ids that arrived twice (duplicated). With several `--uri`, a client
//! whose connection fails moves on to the next one, so a run across a failover doubles as a
//! checker.

use crate::args::{BenchArgs, BenchExchange, BenchQueueType};
use crate::id_tally::IdTally;
use anyhow::{bail, Context, Result};
use futures::stream::{FuturesUnordered, StreamExt};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const HEADER: usize = 16;

/// Counters and records shared by all clients of a run.
struct Shared {
    start: Instant,
    stop: AtomicBool,
    published: AtomicU64,
    confirmed: AtomicU64,
    nacked: AtomicU64,
    consumed: AtomicU64,
    reconnects: AtomicU64,
    /// When the last confirm arrived, and the longest pause between two confirms (µs since
    /// start): across a failover, the stall clients saw.
    last_confirm_us: AtomicU64,
    max_confirm_gap_us: AtomicU64,
    /// Confirmed ids (slot 0).
    confirmed_ids: Mutex<IdTally>,
    /// Deliveries per (queue index, producer, sequence).
    seen: Mutex<IdTally>,
    latencies_us: Mutex<Vec<u64>>,
    confirm_latencies_us: Mutex<Vec<u64>>,
}

fn id_of(producer: u16, seq: u64) -> u64 {
    ((producer as u64) << 48) | (seq & ((1 << 48) - 1))
}

/// (producer, sequence) of an id.
fn split_id(id: u64) -> (usize, u64) {
    ((id >> 48) as usize, id & ((1 << 48) - 1))
}

fn queue_name(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i}")
}

async fn connect(
    uris: &[String],
    next: &mut usize,
    shared: &Shared,
) -> Option<(Connection, Channel)> {
    for _ in 0..uris.len() * 50 {
        if shared.stop.load(Ordering::Relaxed) {
            return None;
        }
        let uri = &uris[*next % uris.len()];
        *next += 1;
        let attempt = async {
            let conn = Connection::connect(uri, ConnectionProperties::default()).await?;
            let ch = conn.create_channel().await?;
            lapin::Result::Ok((conn, ch))
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(pair)) => return Some(pair),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    None
}

async fn setup(args: &BenchArgs) -> Result<()> {
    let conn = Connection::connect(&args.uri[0], ConnectionProperties::default())
        .await
        .with_context(|| format!("cannot connect to {}", args.uri[0]))?;
    let ch = conn.create_channel().await?;
    let mut arguments = FieldTable::default();
    let durable = args.persistent || args.queue_type == BenchQueueType::Quorum;
    if args.queue_type == BenchQueueType::Quorum {
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
    }
    if args.exchange == BenchExchange::Fanout {
        ch.exchange_declare(
            args.queue_prefix.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .context("exchange.declare")?;
    }
    for i in 0..args.queues {
        let name = queue_name(&args.queue_prefix, i);
        ch.queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                durable,
                ..Default::default()
            },
            arguments.clone(),
        )
        .await
        .with_context(|| format!("queue.declare {name}"))?;
        ch.queue_purge(name.as_str().into(), QueuePurgeOptions::default())
            .await?;
        if args.exchange == BenchExchange::Fanout {
            ch.queue_bind(
                name.as_str().into(),
                args.queue_prefix.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
    }
    let _ = conn.close(200, "setup done".into()).await;
    Ok(())
}

async fn producer(args: Arc<BenchArgs>, shared: Arc<Shared>, index: usize) {
    let producer_id = index as u16;
    let mut next = index;
    let mut seq = 0u64;
    let (exchange, routing_key) = match args.exchange {
        BenchExchange::Direct => (
            String::new(),
            queue_name(&args.queue_prefix, index % args.queues),
        ),
        BenchExchange::Fanout => (args.queue_prefix.clone(), String::new()),
    };
    let mut props = BasicProperties::default();
    if args.persistent {
        props = props.with_delivery_mode(2);
    }
    let pace = args
        .rate
        .filter(|r| *r > 0)
        .map(|r| Duration::from_secs_f64(1.0 / r as f64));
    let mut ticker = pace.map(tokio::time::interval);
    'session: while !shared.stop.load(Ordering::Relaxed) {
        let Some((conn, ch)) = connect(&args.uri, &mut next, &shared).await else {
            return;
        };
        if args.confirm > 0
            && ch
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .is_err()
        {
            shared.reconnects.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let mut in_flight = FuturesUnordered::new();
        let mut body = vec![0u8; args.size.max(HEADER)];
        loop {
            if shared.stop.load(Ordering::Relaxed) {
                break;
            }
            let done = args.messages.is_some_and(|n| seq >= n);
            if done && in_flight.is_empty() {
                break;
            }
            if !done && (args.confirm == 0 || in_flight.len() < args.confirm) {
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                seq += 1;
                let id = id_of(producer_id, seq);
                let sent = shared.start.elapsed().as_micros() as u64;
                body[..8].copy_from_slice(&sent.to_be_bytes());
                body[8..16].copy_from_slice(&id.to_be_bytes());
                let publish = ch
                    .basic_publish(
                        exchange.as_str().into(),
                        routing_key.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        props.clone(),
                    )
                    .await;
                match publish {
                    Ok(confirm) => {
                        shared.published.fetch_add(1, Ordering::Relaxed);
                        if args.confirm > 0 {
                            in_flight.push(async move { (id, sent, confirm.await) });
                        }
                    }
                    Err(_) => {
                        shared.reconnects.fetch_add(1, Ordering::Relaxed);
                        continue 'session;
                    }
                }
                if args.confirm == 0 {
                    continue;
                }
                // Take whatever confirms are already in, without waiting.
                while let Some(Some(done)) = futures::FutureExt::now_or_never(in_flight.next()) {
                    if !record_confirm(&shared, done) {
                        continue 'session;
                    }
                }
            } else if let Some(done) = in_flight.next().await {
                if !record_confirm(&shared, done) {
                    shared.reconnects.fetch_add(1, Ordering::Relaxed);
                    continue 'session;
                }
            }
        }
        // Stopping: collect the outstanding confirms for a moment.
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(done) = in_flight.next().await {
                record_confirm(&shared, done);
            }
        })
        .await;
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "bench done".into()))
            .await;
        break;
    }
}

/// Records one confirm; false when the channel failed.
fn record_confirm(
    shared: &Shared,
    (id, sent, result): (u64, u64, lapin::Result<Confirmation>),
) -> bool {
    match result {
        Ok(Confirmation::Ack(_)) => {
            shared.confirmed.fetch_add(1, Ordering::Relaxed);
            let (producer, seq) = split_id(id);
            shared
                .confirmed_ids
                .lock()
                .expect("ids")
                .record(0, producer, seq);
            let now = shared.start.elapsed().as_micros() as u64;
            shared
                .confirm_latencies_us
                .lock()
                .expect("lat")
                .push(now.saturating_sub(sent));
            let previous = shared.last_confirm_us.swap(now, Ordering::Relaxed);
            if previous > 0 && !shared.stop.load(Ordering::Relaxed) {
                shared
                    .max_confirm_gap_us
                    .fetch_max(now.saturating_sub(previous), Ordering::Relaxed);
            }
            true
        }
        Ok(Confirmation::Nack(_)) => {
            shared.nacked.fetch_add(1, Ordering::Relaxed);
            true
        }
        Ok(Confirmation::NotRequested) => true,
        Err(_) => false,
    }
}

async fn consumer(
    args: Arc<BenchArgs>,
    shared: Arc<Shared>,
    index: usize,
    drained: Arc<AtomicBool>,
) {
    let queue_index = index % args.queues;
    let queue = queue_name(&args.queue_prefix, queue_index);
    let mut next = index;
    let quiet = Duration::from_secs(2);
    while !drained.load(Ordering::Relaxed) {
        let Some((conn, ch)) = connect(&args.uri, &mut next, &shared).await else {
            return;
        };
        if ch
            .basic_qos(args.prefetch, BasicQosOptions::default())
            .await
            .is_err()
        {
            continue;
        }
        let Ok(mut deliveries) = ch
            .basic_consume(
                queue.as_str().into(),
                format!("bench-{index}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
        else {
            continue;
        };
        let mut unacked = 0u32;
        let mut last_tag = 0;
        loop {
            let wait = if shared.stop.load(Ordering::Relaxed) {
                quiet
            } else {
                Duration::from_secs(3600)
            };
            match tokio::time::timeout(wait, deliveries.next()).await {
                Ok(Some(Ok(d))) => {
                    let now = shared.start.elapsed().as_micros() as u64;
                    if d.data.len() >= HEADER {
                        let sent = u64::from_be_bytes(d.data[..8].try_into().expect("8 bytes"));
                        let id = u64::from_be_bytes(d.data[8..16].try_into().expect("8 bytes"));
                        shared
                            .latencies_us
                            .lock()
                            .expect("lat")
                            .push(now.saturating_sub(sent));
                        let (producer, seq) = split_id(id);
                        // A body that is not one of ours (left in the queue by someone else)
                        // would name any sequence; the tally is dense, so keep to plausible ones.
                        let published = shared.published.load(Ordering::Relaxed);
                        if producer < args.producers && seq <= published + (1 << 20) {
                            shared
                                .seen
                                .lock()
                                .expect("seen")
                                .record(queue_index, producer, seq);
                        }
                    }
                    shared.consumed.fetch_add(1, Ordering::Relaxed);
                    unacked += 1;
                    last_tag = d.delivery_tag;
                    if unacked >= args.multi_ack.max(1) {
                        if ch
                            .basic_ack(last_tag, BasicAckOptions { multiple: true })
                            .await
                            .is_err()
                        {
                            break;
                        }
                        unacked = 0;
                    }
                }
                Ok(Some(Err(_))) | Ok(None) => {
                    shared.reconnects.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(_) => {
                    // Quiet after the stop: drained.
                    if unacked > 0 {
                        let _ = ch
                            .basic_ack(last_tag, BasicAckOptions { multiple: true })
                            .await;
                    }
                    drained.store(true, Ordering::Relaxed);
                    break;
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "bench done".into()))
            .await;
    }
}

/// The summary of one run.
#[derive(Debug, Serialize)]
pub struct Report {
    pub seconds: f64,
    pub published: u64,
    pub confirmed: u64,
    pub nacked: u64,
    pub consumed: u64,
    pub publish_rate: f64,
    pub confirm_rate: f64,
    pub consume_rate: f64,
    pub latency_ms: Percentiles,
    pub confirm_latency_ms: Percentiles,
    pub lost: u64,
    pub duplicated: u64,
    pub reconnects: u64,
    /// The longest time between two confirms during the run, milliseconds.
    pub max_confirm_gap_ms: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

fn percentiles(mut us: Vec<u64>) -> Percentiles {
    if us.is_empty() {
        return Percentiles::default();
    }
    us.sort_unstable();
    let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    Percentiles {
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
        max: at(1.0),
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.uri.is_empty() {
        bail!("give at least one --uri");
    }
    if args.queues == 0 || args.producers + args.consumers == 0 {
        bail!("--queues must be at least 1, and there must be a producer or a consumer");
    }
    if args.size < HEADER {
        bail!("--size must be at least {HEADER} bytes (send time and message id)");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run_async(Arc::new(args.clone())))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    if report.lost > 0 {
        bail!("{} confirmed messages were never consumed", report.lost);
    }
    Ok(())
}

async fn run_async(args: Arc<BenchArgs>) -> Result<Report> {
    setup(&args).await?;
    let shared = Arc::new(Shared {
        start: Instant::now(),
        stop: AtomicBool::new(false),
        published: AtomicU64::new(0),
        confirmed: AtomicU64::new(0),
        nacked: AtomicU64::new(0),
        consumed: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        last_confirm_us: AtomicU64::new(0),
        max_confirm_gap_us: AtomicU64::new(0),
        confirmed_ids: Mutex::new(IdTally::default()),
        seen: Mutex::new(IdTally::default()),
        latencies_us: Mutex::new(Vec::new()),
        confirm_latencies_us: Mutex::new(Vec::new()),
    });
    let drained: Vec<Arc<AtomicBool>> = (0..args.consumers)
        .map(|_| Arc::new(AtomicBool::new(false)))
        .collect();
    let consumers: Vec<_> = (0..args.consumers)
        .map(|i| {
            tokio::spawn(consumer(
                args.clone(),
                shared.clone(),
                i,
                drained[i].clone(),
            ))
        })
        .collect();
    let producers: Vec<_> = (0..args.producers)
        .map(|i| tokio::spawn(producer(args.clone(), shared.clone(), i)))
        .collect();
    let duration = Duration::from_secs_f64(args.duration);
    let began = Instant::now();
    let mut last = (0u64, 0u64, 0u64);
    let producers_done = |p: &[tokio::task::JoinHandle<()>]| {
        !p.is_empty() && args.messages.is_some() && p.iter().all(|p| p.is_finished())
    };
    while began.elapsed() < duration && !producers_done(&producers) {
        tokio::time::sleep(Duration::from_secs(1).min(duration.saturating_sub(began.elapsed())))
            .await;
        let now = (
            shared.published.load(Ordering::Relaxed),
            shared.confirmed.load(Ordering::Relaxed),
            shared.consumed.load(Ordering::Relaxed),
        );
        if !args.json {
            eprintln!(
                "{:>5.1}s  published {:>8}/s  confirmed {:>8}/s  consumed {:>8}/s",
                began.elapsed().as_secs_f64(),
                now.0 - last.0,
                now.1 - last.1,
                now.2 - last.2
            );
        }
        last = now;
    }
    let seconds = began.elapsed().as_secs_f64();
    let (published, confirmed, consumed) = (
        shared.published.load(Ordering::Relaxed),
        shared.confirmed.load(Ordering::Relaxed),
        shared.consumed.load(Ordering::Relaxed),
    );
    // A pause that lasts to the end of the run counts too (no confirm closed it): a failover
    // that never finished must not read as no pause at all.
    let last_confirm = shared.last_confirm_us.load(Ordering::Relaxed);
    if args.confirm > 0 && last_confirm > 0 {
        let now = shared.start.elapsed().as_micros() as u64;
        shared
            .max_confirm_gap_us
            .fetch_max(now.saturating_sub(last_confirm), Ordering::Relaxed);
    }
    shared.stop.store(true, Ordering::Relaxed);
    for p in producers {
        let _ = p.await;
    }
    for c in consumers {
        let _ = tokio::time::timeout(Duration::from_secs(120), c).await;
    }
    let seen = shared.seen.lock().expect("seen");
    let ids = shared.confirmed_ids.lock().expect("ids");
    let queues_per_message = match args.exchange {
        BenchExchange::Direct => 1,
        BenchExchange::Fanout => args.queues,
    };
    let lost = if args.consumers >= args.queues && args.confirm > 0 {
        ids.iter()
            .map(|(_, producer, seq, _)| {
                (0..queues_per_message)
                    .map(|q| {
                        if queues_per_message == 1 {
                            producer % args.queues
                        } else {
                            q
                        }
                    })
                    .filter(|q| seen.count(*q, producer, seq) == 0)
                    .count() as u64
            })
            .sum()
    } else {
        0
    };
    let duplicated = seen.iter().filter(|(.., n)| *n > 1).count() as u64;
    drop(seen);
    drop(ids);
    let latencies = std::mem::take(&mut *shared.latencies_us.lock().expect("lat"));
    let confirm_latencies = std::mem::take(&mut *shared.confirm_latencies_us.lock().expect("lat"));
    Ok(Report {
        seconds,
        published,
        confirmed,
        nacked: shared.nacked.load(Ordering::Relaxed),
        consumed,
        publish_rate: published as f64 / seconds,
        confirm_rate: confirmed as f64 / seconds,
        consume_rate: consumed as f64 / seconds,
        latency_ms: percentiles(latencies),
        confirm_latency_ms: percentiles(confirm_latencies),
        lost,
        duplicated,
        reconnects: shared.reconnects.load(Ordering::Relaxed),
        max_confirm_gap_ms: shared.max_confirm_gap_us.load(Ordering::Relaxed) as f64 / 1000.0,
    })
}

fn print_report(r: &Report) {
    println!("duration        {:>10.1} s", r.seconds);
    println!(
        "published       {:>10} ({:.0} msg/s)",
        r.published, r.publish_rate
    );
    println!(
        "confirmed       {:>10} ({:.0} msg/s), nacked {}",
        r.confirmed, r.confirm_rate, r.nacked
    );
    println!(
        "consumed        {:>10} ({:.0} msg/s, during the run)",
        r.consumed, r.consume_rate
    );
    let l = &r.latency_ms;
    println!(
        "latency ms      p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}",
        l.p50, l.p95, l.p99, l.max
    );
    let c = &r.confirm_latency_ms;
    println!(
        "confirm ms      p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}",
        c.p50, c.p95, c.p99, c.max
    );
    println!(
        "lost {}   duplicated {}   reconnects {}   longest pause between confirms {:.0} ms",
        r.lost, r.duplicated, r.reconnects, r.max_confirm_gap_ms
    );
}
