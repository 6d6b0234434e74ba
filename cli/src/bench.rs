//! `raftmq bench`: a load generator for any AMQP 0-9-1 broker (RaftMQ, RabbitMQ, LavinMQ).
//!
//! Producers publish numbered messages. Each body starts with the send time and a
//! (producer, sequence) id: 16 bytes, the smallest message size accepted. Consumers measure
//! the end-to-end latency from those bytes and record every id they see. After the run,
//! producers stop, consumers drain the queues, and the report counts confirmed messages that
//! never arrived (lost) and ids that arrived twice (duplicated). With several `--uri`, a client
//! whose connection fails moves on to the next one, so a run across a failover doubles as a
//! checker.
//!
//! Producers and consumers speak AMQP through `bench_wire`, a lean client of our own, so that
//! the load generator costs the machine little and what it measures is the broker (with lapin
//! it was the slower side against either broker). Queues are declared with lapin.

use crate::args::{BenchArgs, BenchExchange, BenchQueueType};
use crate::bench_wire::{self as wire, Incoming, Publisher, Reader, Writer};
use crate::id_tally::IdTally;
use anyhow::{bail, Context, Result};
use bytes::{Buf, BytesMut};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use serde::Serialize;
use std::collections::VecDeque;
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

/// Opens a bench connection on the next `--uri` that answers, trying each in turn.
async fn connect(uris: &[String], next: &mut usize, shared: &Shared) -> Option<(Reader, Writer)> {
    for _ in 0..uris.len() * 50 {
        if shared.stop.load(Ordering::Relaxed) {
            return None;
        }
        let uri = &uris[*next % uris.len()];
        *next += 1;
        match wire::connect(uri).await {
            Ok(pair) => return Some(pair),
            Err(e) => {
                tracing::debug!(uri, error = %e, "bench connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await
            }
        }
    }
    None
}

/// Declares the queues (and the fanout exchange) on the first `--uri` that answers.
async fn setup(args: &BenchArgs) -> Result<()> {
    let mut failures = Vec::new();
    let mut connected = None;
    for uri in &args.uri {
        match Connection::connect(uri, ConnectionProperties::default()).await {
            Ok(conn) => {
                connected = Some(conn);
                break;
            }
            Err(e) => failures.push(format!("{uri}: {e}")),
        }
    }
    let Some(conn) = connected else {
        bail!("cannot connect to any --uri ({})", failures.join("; "));
    };
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

/// Bytes of publishes gathered before they are written, when nothing paces the producer.
const PUBLISH_BATCH: usize = 64 * 1024;
/// How often a producer or consumer waiting on the broker looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(200);

/// A timer that fires every `STOP_CHECK`, one per connection rather than one per wait.
fn stop_checker() -> tokio::time::Interval {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + STOP_CHECK, STOP_CHECK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker
}

/// The messages a producer has published and not yet seen confirmed: (publish sequence
/// number, message id, send time in µs), in sequence order.
#[derive(Default)]
struct InFlight {
    messages: VecDeque<(u64, u64, u64)>,
}

impl InFlight {
    /// Settles a confirm from the broker: (message id, send time µs, ack) for each message
    /// it covers goes to `confirms`. Deliveries are not expected on a producer's channel.
    fn take(&mut self, incoming: Incoming, confirms: &mut Vec<(u64, u64, bool)>) {
        if let Incoming::Confirm {
            ack,
            delivery_tag,
            multiple,
        } = incoming
        {
            self.settle(delivery_tag, multiple, |id, sent| {
                confirms.push((id, sent, ack))
            });
        }
    }

    /// Takes the messages a confirm covers.
    fn settle(&mut self, delivery_tag: u64, multiple: bool, mut each: impl FnMut(u64, u64)) {
        if multiple {
            while let Some(&(tag, id, sent)) = self.messages.front() {
                if tag > delivery_tag {
                    break;
                }
                self.messages.pop_front();
                each(id, sent);
            }
        } else if let Ok(at) = self
            .messages
            .binary_search_by_key(&delivery_tag, |(tag, ..)| *tag)
        {
            let (_, id, sent) = self.messages.remove(at).expect("found");
            each(id, sent);
        }
    }
}

/// The producer's next message: its id, and its publish sequence number on the channel.
struct NextMessage {
    producer: u16,
    seq: u64,
    publish_tag: u64,
    body: Vec<u8>,
    confirm: bool,
}

impl NextMessage {
    /// Appends a publish of the next message to `out`.
    fn put(
        &mut self,
        shared: &Shared,
        publisher: &Publisher,
        out: &mut BytesMut,
        in_flight: &mut InFlight,
    ) {
        self.seq += 1;
        self.publish_tag += 1;
        let id = id_of(self.producer, self.seq);
        let sent = shared.start.elapsed().as_micros() as u64;
        self.body[..8].copy_from_slice(&sent.to_be_bytes());
        self.body[8..16].copy_from_slice(&id.to_be_bytes());
        publisher.put(out, &self.body);
        shared.published.fetch_add(1, Ordering::Relaxed);
        if self.confirm {
            in_flight.messages.push_back((self.publish_tag, id, sent));
        }
    }
}

async fn producer(args: Arc<BenchArgs>, shared: Arc<Shared>, index: usize) {
    let mut next = index;
    let mut next_message = NextMessage {
        producer: index as u16,
        seq: 0,
        publish_tag: 0,
        body: vec![0u8; args.size.max(HEADER)],
        confirm: args.confirm > 0,
    };
    let (exchange, routing_key) = match args.exchange {
        BenchExchange::Direct => (
            String::new(),
            queue_name(&args.queue_prefix, index % args.queues),
        ),
        BenchExchange::Fanout => (args.queue_prefix.clone(), String::new()),
    };
    let pace = args
        .rate
        .filter(|r| *r > 0)
        .map(|r| Duration::from_secs_f64(1.0 / r as f64));
    let mut ticker = pace.map(tokio::time::interval);
    'session: while !shared.stop.load(Ordering::Relaxed) {
        let Some((mut rd, mut wr)) = connect(&args.uri, &mut next, &shared).await else {
            return;
        };
        if args.confirm > 0 && wire::confirm_select(&mut rd, &mut wr).await.is_err() {
            shared.reconnects.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let publisher = Publisher::new(&exchange, &routing_key, args.persistent, wr.frame_max);
        let mut in_flight = InFlight::default();
        next_message.publish_tag = 0;
        let mut out = BytesMut::with_capacity(PUBLISH_BATCH * 2);
        let mut confirms = Vec::new();
        let mut stop_check = stop_checker();
        loop {
            if shared.stop.load(Ordering::Relaxed) {
                break;
            }
            let done = args.messages.is_some_and(|n| next_message.seq >= n);
            if done && in_flight.messages.is_empty() && out.is_empty() {
                break;
            }
            let window_open = |f: &InFlight| args.confirm == 0 || f.messages.len() < args.confirm;
            if ticker.is_none() {
                while !args.messages.is_some_and(|n| next_message.seq >= n)
                    && out.len() < PUBLISH_BATCH
                    && window_open(&in_flight)
                {
                    next_message.put(&shared, &publisher, &mut out, &mut in_flight);
                }
            }
            let may_tick = ticker.is_some() && !done && window_open(&in_flight);
            let step = tokio::select! {
                read = rd.read_some(|incoming| in_flight.take(incoming, &mut confirms)) => read,
                written = wr.write_some(&out), if !out.is_empty() => written.map(|n| {
                    out.advance(n);
                }),
                _ = async { ticker.as_mut().expect("paced").tick().await }, if may_tick => {
                    next_message.put(&shared, &publisher, &mut out, &mut in_flight);
                    Ok(())
                }
                // A broker that stops answering must not keep the producer past the stop.
                _ = stop_check.tick() => Ok(()),
            };
            record_confirms(&shared, &mut confirms);
            if step.is_err() {
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
                continue 'session;
            }
        }
        // Stopping: send what is gathered, and collect the outstanding confirms for a moment.
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            if wr.write_all(&out).await.is_err() {
                return;
            }
            while !in_flight.messages.is_empty() {
                let read = rd
                    .read_some(|incoming| in_flight.take(incoming, &mut confirms))
                    .await;
                record_confirms(&shared, &mut confirms);
                if read.is_err() {
                    return;
                }
            }
        })
        .await;
        wire::close(&mut rd, &mut wr).await;
        break;
    }
}

/// Records the confirms a read brought: (message id, send time µs, ack).
fn record_confirms(shared: &Shared, confirms: &mut Vec<(u64, u64, bool)>) {
    if confirms.is_empty() {
        return;
    }
    let now = shared.start.elapsed().as_micros() as u64;
    let mut acked = 0;
    {
        let mut ids = shared.confirmed_ids.lock().expect("ids");
        let mut latencies = shared.confirm_latencies_us.lock().expect("lat");
        for &(id, sent, ack) in confirms.iter() {
            if ack {
                acked += 1;
                let (producer, seq) = split_id(id);
                ids.record(0, producer, seq);
                latencies.push(now.saturating_sub(sent));
            }
        }
    }
    let nacked = confirms.len() as u64 - acked;
    confirms.clear();
    shared.confirmed.fetch_add(acked, Ordering::Relaxed);
    shared.nacked.fetch_add(nacked, Ordering::Relaxed);
    if acked > 0 {
        let previous = shared.last_confirm_us.swap(now, Ordering::Relaxed);
        if previous > 0 && !shared.stop.load(Ordering::Relaxed) {
            shared
                .max_confirm_gap_us
                .fetch_max(now.saturating_sub(previous), Ordering::Relaxed);
        }
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
    let consumer_tag = format!("bench-{index}");
    let mut next = index;
    // After the stop, a consumer is done once nothing came for `quiet`, or, while confirmed
    // messages are still missing, for `patient`: a node that died holding deliveries gives
    // them back only once the cluster declares its connections gone (`--node-down-after-ms`,
    // 5 s by default), which can be later than a short quiet spell after the stop.
    let quiet = Duration::from_secs(2);
    let patient = Duration::from_secs(15);
    // What one read brought: latencies in µs, and (producer, sequence) ids.
    let mut latencies = Vec::new();
    let mut ids = Vec::new();
    while !drained.load(Ordering::Relaxed) {
        let Some((mut rd, mut wr)) = connect(&args.uri, &mut next, &shared).await else {
            return;
        };
        let subscribed = async {
            wire::qos(&mut rd, &mut wr, args.prefetch).await?;
            wire::consume(&mut rd, &mut wr, &queue, &consumer_tag).await
        };
        if subscribed.await.is_err() {
            shared.reconnects.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let mut unacked = 0u32;
        let mut last_tag = 0;
        let mut acks = BytesMut::new();
        let mut last_delivery = Instant::now();
        let mut stop_check = stop_checker();
        loop {
            let mut consumed = 0u64;
            let read = rd.read_some(|incoming| {
                let Incoming::Deliver { delivery_tag, body } = incoming else {
                    return;
                };
                if body.len() >= HEADER {
                    let now = shared.start.elapsed().as_micros() as u64;
                    let sent = u64::from_be_bytes(body[..8].try_into().expect("8 bytes"));
                    let id = u64::from_be_bytes(body[8..16].try_into().expect("8 bytes"));
                    latencies.push(now.saturating_sub(sent));
                    ids.push(split_id(id));
                }
                consumed += 1;
                unacked += 1;
                last_tag = delivery_tag;
                if unacked >= args.multi_ack.max(1) {
                    wire::put_ack(&mut acks, last_tag, true);
                    unacked = 0;
                }
            });
            let step = tokio::select! {
                read = read => Ok(read),
                _ = stop_check.tick() => Err(()),
            };
            match step {
                Ok(Ok(())) => {
                    if consumed > 0 {
                        last_delivery = Instant::now();
                    }
                    record_deliveries(&shared, &args, queue_index, &mut latencies, &mut ids);
                    shared.consumed.fetch_add(consumed, Ordering::Relaxed);
                    if !acks.is_empty() {
                        if wr.write_all(&acks).await.is_err() {
                            shared.reconnects.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        acks.clear();
                    }
                }
                Ok(Err(_)) => {
                    record_deliveries(&shared, &args, queue_index, &mut latencies, &mut ids);
                    shared.consumed.fetch_add(consumed, Ordering::Relaxed);
                    shared.reconnects.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(_)
                    if !shared.stop.load(Ordering::Relaxed)
                        || last_delivery.elapsed() < quiet
                        || (last_delivery.elapsed() < patient
                            && !nothing_missing(&args, &shared)) => {}
                Err(_) => {
                    // Quiet after the stop: drained.
                    if unacked > 0 {
                        wire::put_ack(&mut acks, last_tag, true);
                        let _ = wr.write_all(&acks).await;
                    }
                    drained.store(true, Ordering::Relaxed);
                    break;
                }
            }
        }
        wire::close(&mut rd, &mut wr).await;
    }
}

/// Records what one read delivered: latencies, and the ids seen.
fn record_deliveries(
    shared: &Shared,
    args: &BenchArgs,
    queue_index: usize,
    latencies: &mut Vec<u64>,
    ids: &mut Vec<(usize, u64)>,
) {
    if !latencies.is_empty() {
        shared
            .latencies_us
            .lock()
            .expect("lat")
            .extend_from_slice(latencies);
        latencies.clear();
    }
    if ids.is_empty() {
        return;
    }
    // A body that is not one of ours (left in the queue by someone else) would name any
    // sequence; the tally is dense, so keep to plausible ones.
    let published = shared.published.load(Ordering::Relaxed);
    let mut seen = shared.seen.lock().expect("seen");
    for &(producer, seq) in ids.iter() {
        if producer < args.producers && seq <= published + (1 << 20) {
            seen.record(queue_index, producer, seq);
        }
    }
    ids.clear();
}

/// Confirmed messages not yet consumed from every queue they were routed to (0 when the run
/// cannot tell: no confirms, or queues without a consumer).
fn count_lost(args: &BenchArgs, confirmed: &IdTally, seen: &IdTally) -> u64 {
    if args.consumers < args.queues || args.confirm == 0 {
        return 0;
    }
    let queues_per_message = match args.exchange {
        BenchExchange::Direct => 1,
        BenchExchange::Fanout => args.queues,
    };
    confirmed
        .iter()
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
}

/// Whether every confirmed message has been consumed so far.
fn nothing_missing(args: &BenchArgs, shared: &Shared) -> bool {
    let ids = shared.confirmed_ids.lock().expect("ids");
    let seen = shared.seen.lock().expect("seen");
    count_lost(args, &ids, &seen) == 0
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
    let lost = count_lost(&args, &ids, &seen);
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
