//! Property tests of the machine (in the style of rabbit_fifo's property suite): random logs
//! of commands from a few connections, channels and queues are applied entry by entry, and
//! after every entry the invariants below must hold. The same log applied to a fresh state
//! must give the same state and effects, and a snapshot taken half-way and restored must
//! end in the same state.
//!
//! Ops that name a delivery tag or consumer tag pick one that exists at that moment (or a
//! bad one, on purpose, now and then), so a log is generated while it is applied; the
//! recorded entries are then replayed for the determinism checks.

use super::command::{Command, Entry, Publish, Settle};
use super::effect::Effect;
use super::tests::testkit::{declare_queue, i, message, s, table};
use super::State;
use crate::ids::{ChannelRef, ConnId};
use amq_protocol::types::FieldTable;
use proptest::prelude::*;
use std::collections::BTreeMap;

/// q0 plain; q1 x-max-length 3 (drop-head); q2 x-message-ttl 50 dead-lettering to "dlx"
/// (fanout to "dead"); dead: x-max-length 4 with reject-publish.
const QUEUES: [&str; 4] = ["q0", "q1", "q2", "dead"];

#[derive(Clone, Debug)]
enum Op {
    Publish {
        ch: (u8, u8),
        queue: u8,
        fanout: bool,
        confirm: bool,
        mandatory: bool,
    },
    Consume {
        ch: (u8, u8),
        queue: u8,
        no_ack: bool,
        exclusive: bool,
    },
    ReuseTag {
        ch: (u8, u8),
        queue: u8,
    },
    Cancel {
        ch: (u8, u8),
        nth: u8,
    },
    Qos {
        ch: (u8, u8),
        count: u8,
        global: bool,
    },
    Get {
        ch: (u8, u8),
        queue: u8,
        no_ack: bool,
    },
    Ack {
        ch: (u8, u8),
        nth: u8,
        multiple: bool,
        bogus: bool,
    },
    Nack {
        ch: (u8, u8),
        nth: u8,
        multiple: bool,
        requeue: bool,
    },
    Recover {
        ch: (u8, u8),
    },
    Flow {
        ch: (u8, u8),
        active: bool,
    },
    Tx {
        ch: (u8, u8),
        queue: u8,
        ack_nth: Option<u8>,
    },
    ChannelClosed {
        ch: (u8, u8),
    },
    ConnectionClosed {
        conn: u8,
    },
    Purge {
        ch: (u8, u8),
        queue: u8,
    },
    DeleteAndRedeclare {
        ch: (u8, u8),
        queue: u8,
    },
    Tick {
        ms: u16,
    },
}

fn ch_strategy() -> impl Strategy<Value = (u8, u8)> {
    (1u8..=2, 1u8..=2)
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let q = 0u8..4;
    prop_oneof![
        8 => (ch_strategy(), q.clone(), any::<bool>(), any::<bool>(), prop::bool::weighted(0.2))
            .prop_map(|(ch, queue, fanout, confirm, mandatory)| Op::Publish { ch, queue, fanout, confirm, mandatory }),
        3 => (ch_strategy(), 0u8..4, prop::bool::weighted(0.3), prop::bool::weighted(0.1))
            .prop_map(|(ch, queue, no_ack, exclusive)| Op::Consume { ch, queue, no_ack, exclusive }),
        1 => (ch_strategy(), q.clone()).prop_map(|(ch, queue)| Op::ReuseTag { ch, queue }),
        1 => (ch_strategy(), any::<u8>()).prop_map(|(ch, nth)| Op::Cancel { ch, nth }),
        2 => (ch_strategy(), 0u8..4, any::<bool>()).prop_map(|(ch, count, global)| Op::Qos { ch, count, global }),
        3 => (ch_strategy(), 0u8..4, any::<bool>()).prop_map(|(ch, queue, no_ack)| Op::Get { ch, queue, no_ack }),
        6 => (ch_strategy(), any::<u8>(), any::<bool>(), prop::bool::weighted(0.05))
            .prop_map(|(ch, nth, multiple, bogus)| Op::Ack { ch, nth, multiple, bogus }),
        3 => (ch_strategy(), any::<u8>(), any::<bool>(), any::<bool>())
            .prop_map(|(ch, nth, multiple, requeue)| Op::Nack { ch, nth, multiple, requeue }),
        1 => ch_strategy().prop_map(|ch| Op::Recover { ch }),
        1 => (ch_strategy(), prop::bool::weighted(0.7)).prop_map(|(ch, active)| Op::Flow { ch, active }),
        1 => (ch_strategy(), q.clone(), prop::option::of(any::<u8>())).prop_map(|(ch, queue, ack_nth)| Op::Tx { ch, queue, ack_nth }),
        1 => ch_strategy().prop_map(|ch| Op::ChannelClosed { ch }),
        1 => (1u8..=2).prop_map(|conn| Op::ConnectionClosed { conn }),
        1 => (ch_strategy(), 0u8..4).prop_map(|(ch, queue)| Op::Purge { ch, queue }),
        1 => (ch_strategy(), 0u8..3).prop_map(|(ch, queue)| Op::DeleteAndRedeclare { ch, queue }),
        3 => (0u16..120).prop_map(|ms| Op::Tick { ms }),
    ]
}

fn chan_ref(g: &Gen, (conn, number): (u8, u8)) -> ChannelRef {
    let generation = g.generations.get(&(conn, number)).copied().unwrap_or(0);
    ChannelRef {
        conn: ConnId {
            node: 1,
            epoch: 1,
            seq: conn as u64 + g.conn_bump.get(&conn).copied().unwrap_or(0),
        },
        number: number as u16,
        generation,
    }
}

/// Turns ops into commands against the current state.
struct Gen {
    next_body: u64,
    next_tag: u64,
    next_confirm: u64,
    /// A channel number reopened after a close gets a new generation.
    generations: BTreeMap<(u8, u8), u32>,
    /// A closed connection's number is reused as a new connection.
    conn_bump: BTreeMap<u8, u64>,
    /// Cancelled consumer tags are never reused (the order check keys on the tag).
    cancelled: std::collections::BTreeSet<String>,
}

fn queue_declare_for(ch: ChannelRef, queue: u8) -> Command {
    let name = QUEUES[queue as usize];
    let args = match name {
        "q1" => table(&[("x-max-length", i(3))]),
        "q2" => table(&[
            ("x-message-ttl", i(50)),
            ("x-dead-letter-exchange", s("dlx")),
        ]),
        "dead" => table(&[("x-max-length", i(4)), ("x-overflow", s("reject-publish"))]),
        _ => FieldTable::default(),
    };
    let mut d = declare_queue(ch, name, args);
    if let Command::QueueDeclare { durable, .. } = &mut d {
        *durable = true;
    }
    d
}

fn nth_tag(state: &State, ch: ChannelRef, nth: u8) -> Option<u64> {
    let chan = state.channels.get(&ch)?;
    if chan.unacked.is_empty() {
        return None;
    }
    chan.unacked
        .keys()
        .nth(nth as usize % chan.unacked.len())
        .copied()
}

impl Gen {
    fn publish(
        &mut self,
        ch: ChannelRef,
        queue: u8,
        fanout: bool,
        confirm: bool,
        mandatory: bool,
    ) -> Publish {
        self.next_body += 1;
        let confirm_seq = confirm.then(|| {
            self.next_confirm += 1;
            self.next_confirm
        });
        let (exchange, routing_key) = if fanout {
            ("amq.fanout", "")
        } else {
            ("", QUEUES[queue as usize])
        };
        let _ = ch;
        Publish {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            mandatory,
            confirm_seq,
            message: message(&self.next_body.to_string()),
        }
    }

    fn command(&mut self, state: &State, op: &Op) -> Option<Command> {
        Some(match *op {
            Op::Publish {
                ch,
                queue,
                fanout,
                confirm,
                mandatory,
            } => {
                let c = chan_ref(self, ch);
                Command::Publish {
                    ch: c,
                    publish: self.publish(c, queue, fanout, confirm, mandatory),
                }
            }
            Op::Consume {
                ch,
                queue,
                no_ack,
                exclusive,
            } => {
                self.next_tag += 1;
                Command::Consume {
                    ch: chan_ref(self, ch),
                    queue: QUEUES[queue as usize].into(),
                    consumer_tag: format!("c{}", self.next_tag),
                    no_local: false,
                    no_ack,
                    exclusive,
                    nowait: false,
                    arguments: FieldTable::default(),
                }
            }
            Op::ReuseTag { ch, queue } => {
                let c = chan_ref(self, ch);
                let tag = state
                    .channels
                    .get(&c)?
                    .consumers
                    .keys()
                    .find(|t| !self.cancelled.contains(*t))?
                    .clone();
                Command::Consume {
                    ch: c,
                    queue: QUEUES[queue as usize].into(),
                    consumer_tag: tag,
                    no_local: false,
                    no_ack: false,
                    exclusive: false,
                    nowait: false,
                    arguments: FieldTable::default(),
                }
            }
            Op::Cancel { ch, nth } => {
                let c = chan_ref(self, ch);
                let tags = &state.channels.get(&c)?.consumers;
                let tag = tags
                    .keys()
                    .nth(nth as usize % tags.len().max(1))
                    .cloned()
                    .unwrap_or_else(|| "unknown".into());
                self.cancelled.insert(tag.clone());
                Command::Cancel {
                    ch: c,
                    consumer_tag: tag,
                    nowait: false,
                }
            }
            Op::Qos { ch, count, global } => Command::Qos {
                ch: chan_ref(self, ch),
                prefetch_size: 0,
                prefetch_count: count as u16,
                global,
            },
            Op::Get { ch, queue, no_ack } => Command::Get {
                ch: chan_ref(self, ch),
                queue: QUEUES[queue as usize].into(),
                no_ack,
            },
            Op::Ack {
                ch,
                nth,
                multiple,
                bogus,
            } => {
                let c = chan_ref(self, ch);
                let tag = if bogus {
                    10_000
                } else {
                    nth_tag(state, c, nth)?
                };
                Command::Settle {
                    ch: c,
                    settle: Settle::Ack {
                        delivery_tag: tag,
                        multiple,
                    },
                }
            }
            Op::Nack {
                ch,
                nth,
                multiple,
                requeue,
            } => {
                let c = chan_ref(self, ch);
                let tag = nth_tag(state, c, nth)?;
                Command::Settle {
                    ch: c,
                    settle: Settle::Nack {
                        delivery_tag: tag,
                        multiple,
                        requeue,
                    },
                }
            }
            Op::Recover { ch } => Command::Recover {
                ch: chan_ref(self, ch),
                requeue: true,
            },
            Op::Flow { ch, active } => Command::Flow {
                ch: chan_ref(self, ch),
                active,
            },
            Op::Tx { ch, queue, ack_nth } => {
                let c = chan_ref(self, ch);
                let settles = match ack_nth {
                    Some(n) => nth_tag(state, c, n)
                        .map(|t| Settle::Ack {
                            delivery_tag: t,
                            multiple: false,
                        })
                        .into_iter()
                        .collect(),
                    None => Vec::new(),
                };
                Command::TxCommit {
                    ch: c,
                    publishes: vec![self.publish(c, queue, false, false, false)],
                    settles,
                }
            }
            Op::ChannelClosed { ch } => {
                let c = chan_ref(self, ch);
                *self.generations.entry(ch).or_default() += 1;
                Command::ChannelClosed { ch: c }
            }
            Op::ConnectionClosed { conn } => {
                let c = chan_ref(self, (conn, 1)).conn;
                *self.conn_bump.entry(conn).or_default() += 10;
                Command::ConnectionClosed { conn: c }
            }
            Op::Purge { ch, queue } => Command::QueuePurge {
                ch: chan_ref(self, ch),
                queue: QUEUES[queue as usize].into(),
                nowait: false,
            },
            Op::DeleteAndRedeclare { ch, queue } => {
                let c = chan_ref(self, ch);
                if state.queue(QUEUES[queue as usize]).is_some() {
                    Command::QueueDelete {
                        ch: c,
                        queue: QUEUES[queue as usize].into(),
                        if_unused: false,
                        if_empty: false,
                        nowait: false,
                    }
                } else {
                    queue_declare_for(c, queue)
                }
            }
            Op::Tick { .. } => return None,
        })
    }
}

/// Checks the invariants of a state; `delivered` are this entry's deliveries.
fn check_invariants(state: &State) -> Result<(), String> {
    // Conservation: every copy that entered a queue is ready, unacked, or removed.
    let ready: u64 = state.queues.values().map(|q| q.ready.len() as u64).sum();
    let mut unacked_by_queue: BTreeMap<u64, u64> = BTreeMap::new();
    let mut by_consumer: BTreeMap<u64, u32> = BTreeMap::new();
    for (ch, chan) in &state.channels {
        let mut consumer_unacked = 0;
        for (tag, u) in &chan.unacked {
            if *tag > chan.last_delivery_tag || *tag == 0 {
                return Err(format!("tag {tag} on {ch} was never handed out"));
            }
            if state.queues.contains_key(&u.queue_id) {
                *unacked_by_queue.entry(u.queue_id).or_default() += 1;
            }
            if let Some(cid) = u.consumer {
                consumer_unacked += 1;
                *by_consumer.entry(cid).or_default() += 1;
            }
        }
        if consumer_unacked != chan.consumer_unacked {
            return Err(format!(
                "{ch}: consumer_unacked {} but {consumer_unacked} held",
                chan.consumer_unacked
            ));
        }
        for (tag, cid) in &chan.consumers {
            let c = state
                .consumers
                .get(cid)
                .ok_or(format!("{ch}: consumer {tag} missing"))?;
            if c.ch != *ch || *c.tag != **tag {
                return Err(format!(
                    "consumer {cid} is filed under the wrong channel or tag"
                ));
            }
        }
    }
    let unacked: u64 = unacked_by_queue.values().sum();
    if state.stats.enqueued - state.stats.removed != ready + unacked {
        return Err(format!(
            "conservation: enqueued {} removed {} ready {ready} unacked {unacked}",
            state.stats.enqueued, state.stats.removed
        ));
    }
    for q in state.queues.values() {
        if q.unacked_count != unacked_by_queue.get(&q.id).copied().unwrap_or(0) {
            return Err(format!(
                "queue {}: unacked_count {} is wrong",
                q.name, q.unacked_count
            ));
        }
        if q.ready_bytes != q.ready.values().map(|m| m.body.len() as u64).sum::<u64>() {
            return Err(format!("queue {}: ready_bytes is wrong", q.name));
        }
        if q.expiring_ready
            != q.ready
                .values()
                .filter(|m| m.expires_at_ms.is_some())
                .count() as u64
        {
            return Err(format!("queue {}: expiring_ready is wrong", q.name));
        }
        if q.args.overflow == super::queue::Overflow::DropHead && q.over_limit() {
            return Err(format!("queue {} is over its length limit", q.name));
        }
        // Draining is complete: messages wait only when no consumer has room.
        if !q.ready.is_empty() {
            if let Some(cid) = q
                .consumers
                .iter()
                .find(|cid| state.consumer_has_room(**cid))
            {
                return Err(format!(
                    "queue {} holds ready messages while consumer {cid} has room",
                    q.name
                ));
            }
        }
        for cid in &q.consumers {
            let c = state
                .consumers
                .get(cid)
                .ok_or(format!("queue {} lists a gone consumer", q.name))?;
            if c.queue_id != q.id {
                return Err("consumer listed on the wrong queue".into());
            }
        }
    }
    for (cid, c) in &state.consumers {
        let held = by_consumer.get(cid).copied().unwrap_or(0);
        if held != c.unacked {
            return Err(format!(
                "consumer {}: unacked {} but {held} held",
                c.tag, c.unacked
            ));
        }
        // Per-consumer prefetch is fixed at creation, so it can never be exceeded.
        if !c.no_ack && c.prefetch > 0 && c.unacked > c.prefetch as u32 {
            return Err(format!("consumer {} exceeds its prefetch", c.tag));
        }
    }
    Ok(())
}

fn setup(now_ms: u64) -> Entry {
    let ch = ChannelRef {
        conn: ConnId {
            node: 1,
            epoch: 1,
            seq: 99,
        },
        number: 1,
        generation: 0,
    };
    let mut commands: Vec<Command> = (0..4).map(|q| queue_declare_for(ch, q)).collect();
    commands.push(Command::ExchangeDeclare {
        ch,
        exchange: "dlx".into(),
        kind: "fanout".into(),
        passive: false,
        durable: true,
        auto_delete: false,
        internal: false,
        nowait: false,
        arguments: FieldTable::default(),
    });
    for (q, x) in [("q0", "amq.fanout"), ("q1", "amq.fanout"), ("dead", "dlx")] {
        commands.push(Command::QueueBind {
            ch,
            queue: q.into(),
            exchange: x.into(),
            routing_key: "".into(),
            nowait: false,
            arguments: FieldTable::default(),
        });
    }
    Entry {
        now_ms,
        commands,
        origin: None,
    }
}

/// A log being applied, with what the checks remember between entries.
struct Run {
    state: State,
    entries: Vec<Entry>,
    effects: Vec<Vec<Effect>>,
    /// Per channel: last delivery tag seen in effects (tags must strictly increase).
    last_tag: BTreeMap<ChannelRef, u64>,
    /// Per (channel, consumer tag): last first-time delivery's publish number.
    last_body: BTreeMap<(ChannelRef, String), u64>,
}

impl Run {
    fn apply(&mut self, entry: Entry) -> Result<(), TestCaseError> {
        let fx = self.state.apply(self.entries.len() as u64 + 1, &entry);
        check_invariants(&self.state).map_err(|e| {
            TestCaseError::fail(format!(
                "after entry {}: {e}\n{entry:?}",
                self.entries.len() + 1
            ))
        })?;
        if entry.is_volatile() {
            // A lone node does not fsync a volatile entry, so a promise in it would wait for
            // some later write's fsync: only a channel closed by the entry itself may get one.
            let closed = |e: &Effect| {
                let conn = e.conn();
                entry.commands.iter().any(|c| match c {
                    Command::ConnectionClosed { conn: gone } => *gone == conn,
                    Command::ChannelClosed { ch } => e.channel() == Some(*ch),
                    _ => false,
                })
            };
            for e in fx.iter().filter(|e| e.is_promise()) {
                prop_assert!(closed(e), "volatile entry {:?} promised {:?}", entry, e);
            }
        }
        for e in &fx {
            let (ch, tag, redelivered, message, consumer) = match e {
                Effect::Deliver {
                    ch,
                    delivery_tag,
                    redelivered,
                    message,
                    consumer_tag,
                } => (ch, delivery_tag, redelivered, message, Some(consumer_tag)),
                Effect::GetOk {
                    ch,
                    delivery_tag,
                    redelivered,
                    message,
                    ..
                } => (ch, delivery_tag, redelivered, message, None),
                _ => continue,
            };
            let last = self.last_tag.entry(*ch).or_default();
            prop_assert!(
                *tag > *last,
                "delivery tag {} after {} on {}",
                tag,
                last,
                ch
            );
            *last = *tag;
            // Order: first-time deliveries of directly published messages follow publish order.
            if let (Some(consumer), false, false) =
                (consumer, *redelivered, message.exchange == "dlx")
            {
                let number: u64 = String::from_utf8_lossy(&message.body).parse().unwrap();
                let prev = self
                    .last_body
                    .entry((*ch, consumer.to_string()))
                    .or_default();
                prop_assert!(number > *prev, "{} got {} after {}", consumer, number, prev);
                *prev = number;
            }
        }
        self.entries.push(entry);
        self.effects.push(fx);
        Ok(())
    }
}

/// Generates and applies a log, checking invariants; returns the entries and all effects.
type Generated = (Vec<Entry>, Vec<Vec<Effect>>, State);

fn run_generated(ops: &[(Op, bool)]) -> Result<Generated, TestCaseError> {
    let mut state = State::new();
    let mut now_ms = 1_000;
    let entries = vec![setup(now_ms)];
    let effects = vec![state.apply(1, &entries[0])];
    let mut g = Gen {
        next_body: 0,
        next_tag: 0,
        next_confirm: 0,
        generations: BTreeMap::new(),
        conn_bump: BTreeMap::new(),
        cancelled: Default::default(),
    };
    let mut pending: Vec<Command> = Vec::new();
    let mut run = Run {
        state,
        entries,
        effects,
        last_tag: BTreeMap::new(),
        last_body: BTreeMap::new(),
    };
    for (n, (op, flush)) in ops.iter().enumerate() {
        if let Op::Tick { ms } = op {
            now_ms += *ms as u64;
        } else if let Op::ReuseTag { .. } = op {
            // Alone in an entry, against the current state: a certain 530 (a tag cancelled
            // earlier in the same entry would make it a legitimate new consumer).
            if !pending.is_empty() {
                run.apply(Entry {
                    now_ms,
                    commands: std::mem::take(&mut pending),
                    origin: None,
                })?;
            }
            if let Some(cmd) = g.command(&run.state, op) {
                run.apply(Entry {
                    now_ms,
                    commands: vec![cmd],
                    origin: None,
                })?;
            }
            continue;
        } else if let Some(cmd) = g.command(&run.state, op) {
            pending.push(cmd);
        }
        if !*flush && n + 1 != ops.len() {
            continue;
        }
        run.apply(Entry {
            now_ms,
            commands: std::mem::take(&mut pending),
            origin: None,
        })?;
    }
    let Run {
        state,
        entries,
        effects,
        ..
    } = run;
    Ok((entries, effects, state))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    /// Invariants after every entry, and determinism: the same log gives the same state and
    /// effects, and snapshot + the rest of the log gives the same state as the whole log.
    #[test]
    fn random_logs_keep_the_invariants_and_replay_deterministically(
        ops in prop::collection::vec((op_strategy(), prop::bool::weighted(0.4)), 1..120),
        cut in 0usize..1000,
    ) {
        let (entries, effects, state) = run_generated(&ops)?;

        let mut replay = State::new();
        for (n, entry) in entries.iter().enumerate() {
            let fx = replay.apply(n as u64 + 1, entry);
            prop_assert_eq!(&fx, &effects[n]);
        }
        prop_assert_eq!(&replay, &state);

        let cut = cut % entries.len();
        let mut first = State::new();
        for (n, entry) in entries[..cut].iter().enumerate() {
            first.apply(n as u64 + 1, entry);
        }
        // Streamed as a node writes it, decoded as a restart maps it (bodies shared).
        let mut streamed = Vec::new();
        first.encode_snapshot_to(&mut streamed).expect("snapshot encodes");
        prop_assert_eq!(&streamed, &first.encode_snapshot());
        let streamed = bytes::Bytes::from(streamed);
        let mut restored = crate::shared_bytes::decode_from(&streamed, State::decode_snapshot)
            .expect("snapshot decodes");
        prop_assert_eq!(&restored, &first);
        for (n, entry) in entries.iter().enumerate().skip(cut) {
            let fx = restored.apply(n as u64 + 1, entry);
            prop_assert_eq!(&fx, &effects[n]);
        }
        prop_assert_eq!(&restored, &state);
    }
}
