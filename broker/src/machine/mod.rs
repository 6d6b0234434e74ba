//! The pure, deterministic broker state machine: `State::apply(index, entry) -> effects`.
//! No I/O, no clock (time is `Entry::now_ms`), no randomness, no hash-order iteration.
//! Everything durable the broker knows lives in `State`: exchanges, bindings, queues and their
//! messages, consumers, channels' unacknowledged deliveries.
//!
//! Module map:
//! - [`command`], [`effect`]: the contract with the connection layer and the log.
//! - [`exchange`]: exchange kinds, bindings, declare equivalence.
//! - [`routing`]: direct / fanout / topic / headers routing, exchange-to-exchange bindings,
//!   alternate exchanges.
//! - [`queue`]: queue arguments, ready messages in (priority, sequence) order, limits.
//! - [`channel`]: channels (delivery tags, unacked deliveries, prefetch, flow) and consumers.
//! - `delivery`: enqueue, deliver, settle, requeue, expiry, and clean-up on delete/close.
//! - `dead_letter`: x-death and republishing to dead-letter exchanges.
//! - `apply`: the command dispatcher and the AMQP-level checks and replies.

pub mod channel;
pub mod command;
pub mod dead_letter;
pub mod effect;
pub mod exchange;
pub mod queue;
pub mod routing;

mod apply;
mod delivery;

#[cfg(test)]
mod proptests;
#[cfg(test)]
pub(crate) mod tests;

use crate::ids::{ChannelRef, ConnId};
use bytes::Bytes;
use channel::{Channel, Consumer};
use command::{Command, Entry};
use dead_letter::DeadLetter;
use effect::Effect;
use exchange::{Destination, Exchange, BUILT_IN};
use queue::{Queue, QueuedMessage};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// Counters of message copies entering and leaving queues. Every copy that entered a queue
/// (`enqueued`) is ready, unacknowledged, or has left (`removed`: acked, auto-acked, dropped,
/// expired, dead-lettered, purged, deleted with its queue). The property tests check this.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub enqueued: u64,
    pub removed: u64,
}

/// The whole replicated broker state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Highest log index applied (0 before the first).
    pub last_index: u64,
    /// The machine's clock: max of all `Entry::now_ms` seen.
    pub now_ms: u64,
    pub exchanges: BTreeMap<String, Exchange>,
    /// Reverse index of bindings: destination -> (source exchange, routing key).
    pub bindings_by_dest: BTreeMap<Destination, BTreeSet<(String, String)>>,
    pub queues: BTreeMap<u64, Queue>,
    pub queue_by_name: BTreeMap<String, u64>,
    /// Exclusive queues by owning connection.
    pub owned_queues: BTreeSet<(ConnId, u64)>,
    /// Queues with expiring messages or x-expires (visited by the timers on every entry).
    pub timed_queues: BTreeSet<u64>,
    pub channels: BTreeMap<ChannelRef, Channel>,
    pub consumers: BTreeMap<u64, Consumer>,
    /// Channels closed by a channel error whose `ChannelClosed` has not come yet: their
    /// later (pipelined) commands are ignored.
    pub errored_channels: BTreeSet<ChannelRef>,
    /// Connections closed by a connection error, until their `ConnectionClosed`.
    pub errored_conns: BTreeSet<ConnId>,
    pub next_queue_id: u64,
    pub next_consumer_id: u64,
    pub stats: Stats,
    /// The current life of every node that announced one with `NodeStarted`.
    pub nodes: BTreeMap<crate::ids::NodeId, NodeLife>,
}

/// One node's current life as the replicated state knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLife {
    /// The epoch of its latest `NodeStarted`.
    pub epoch: u64,
    /// Declared lost by the leader (`NodeLost`): the life is over; the node must start anew.
    pub lost: bool,
    /// The sequence number of the last batch applied from this life (see `command::Origin`).
    pub last_seq: u64,
}

impl Default for State {
    fn default() -> State {
        State::new()
    }
}

/// Work in progress while one entry is applied: the effects so far, queues that may be able
/// to deliver, and dead letters waiting to be republished.
#[derive(Default)]
pub(crate) struct Ctx {
    pub fx: Vec<Effect>,
    pub dirty: BTreeSet<u64>,
    pub dead: VecDeque<DeadLetter>,
    /// The connection most recently told to slow down in this entry (`Effect::Flow`), so that
    /// a run of its publishes brings one `Flow`, not one each.
    pub flow_told: Option<ConnId>,
}

/// A queue with consumers and at least this many ready messages slows its publishers down
/// (`Effect::Flow`): its consumers hold all the deliveries their prefetch allows and still
/// messages pile up, so a publisher that runs on only grows the queue. This is a guard on
/// memory and on starving consumers, not a latency tool. Each `Flow` stops the publisher's
/// socket for `FLOW_PAUSE`, after which it reads one buffer (about 60 publishes of 1 KiB), so
/// the pauses cap a publisher near 30k such messages a second. With a mark of 100 (sessions
/// 5-16) that cap held back every flood as soon as a fast client's consumer was a few
/// milliseconds behind: a load generator that costs the machine little measured 55k msg/s in
/// scenario b with 100 and 130-165k with 10-100 thousand, with a lower p99 (benchmarks.md,
/// session 17).
pub const FLOW_BACKLOG: usize = 50_000;

/// A queue whose consumers hold at least this many unacknowledged deliveries, and three times
/// as many as their latest ack covered, slows its publishers down too. A consumer that falls
/// behind does not leave messages ready until its whole prefetch is taken (with no prefetch
/// limit, never), and the deliveries it holds wait in its socket, client and our output
/// buffer just the same. The multiple of the ack keeps a consumer that acknowledges in large
/// batches from being taken for a slow one. The mark bounds how far behind such a consumer
/// runs, so it sets the flood's latency: with RabbitMQ's Java client (no prefetch limit, an ack
/// per delivery, the way PerfTest runs) 150,000 gave b a p99 of 511-768 ms against RabbitMQ's
/// 403-804, and 10,000 gave 127-137 ms with more throughput (137-142k against 93-131k msg/s;
/// a 389 against 897 ms, e 408 against 947; benchmarks.md, session 19).
pub const FLOW_UNACKED: u64 = 10_000;

/// The same mark for a publisher that waits on confirms. Its pace is set by the confirms,
/// which come once the message is in the log, not once it is consumed, so a consumer slower
/// than the log (RabbitMQ's Java client while its JIT warms up, an ack per delivery) falls
/// behind by up to the whole mark, and every message then waits behind that backlog: with
/// that client at 65-73k confirmed msg/s, a 10 s run's end-to-end p99 was 8-82 ms with 10,000
/// deliveries held, 7-11 ms with 1,000 and 6-8 ms with 500 or 300, at the same throughput;
/// `raftmq bench` with no prefetch limit and an ack per delivery did 143k, 161k and 164k
/// (docs/benchmarks.md, session 20). Such a publisher asked to be told when its messages are
/// safe, not to flood; holding it to the consumer's pace keeps each message's wait short.
pub const FLOW_UNACKED_CONFIRMING: u64 = 500;

/// Whether a queue's consumers are falling behind (see `FLOW_BACKLOG`, `FLOW_UNACKED`), for a
/// publisher that waits on confirms (`confirming`) or not.
pub(crate) fn consumers_behind(q: &queue::Queue, confirming: bool) -> bool {
    let unacked_mark = if confirming {
        FLOW_UNACKED_CONFIRMING
    } else {
        FLOW_UNACKED
    };
    !q.consumers.is_empty()
        && (q.ready.len() >= FLOW_BACKLOG
            || q.unacked_count >= unacked_mark.max(3 * q.settle_batch.0 as u64))
}

/// One copy of a message on its way into a queue (from a publish or a dead-lettering).
#[derive(Clone, Copy)]
pub(crate) struct Incoming<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub properties: &'a Bytes,
    pub body: &'a Bytes,
    pub persistent: bool,
    pub priority: u8,
    pub expiration_ms: Option<u64>,
}

impl Incoming<'_> {
    fn to_queued(self, expires_at_ms: Option<u64>) -> Arc<QueuedMessage> {
        Arc::new(QueuedMessage {
            exchange: self.exchange.to_owned(),
            routing_key: self.routing_key.to_owned(),
            properties: self.properties.clone(),
            body: self.body.clone(),
            persistent: self.persistent,
            priority: self.priority,
            expires_at_ms,
            redelivered: false,
        })
    }
}

/// Version byte in front of an encoded snapshot. Version 2 added `nodes`; a version 1
/// snapshot (single-node releases before clusters) is not read: replaying the log rebuilds it.
pub const SNAPSHOT_FORMAT_VERSION: u8 = 2;

impl State {
    /// A fresh broker: the vhost "/" with its pre-declared exchanges.
    pub fn new() -> State {
        let mut exchanges = BTreeMap::new();
        for (name, kind) in BUILT_IN {
            exchanges.insert(
                name.to_owned(),
                Exchange::new(name, kind, true, false, false, Default::default()),
            );
        }
        State {
            last_index: 0,
            now_ms: 0,
            exchanges,
            bindings_by_dest: BTreeMap::new(),
            queues: BTreeMap::new(),
            queue_by_name: BTreeMap::new(),
            owned_queues: BTreeSet::new(),
            timed_queues: BTreeSet::new(),
            channels: BTreeMap::new(),
            consumers: BTreeMap::new(),
            errored_channels: BTreeSet::new(),
            errored_conns: BTreeSet::new(),
            next_queue_id: 0,
            next_consumer_id: 0,
            stats: Stats::default(),
            nodes: BTreeMap::new(),
        }
    }

    /// Applies one committed log entry and returns what should happen outside.
    pub fn apply(&mut self, index: u64, entry: &Entry) -> Vec<Effect> {
        self.last_index = index;
        self.now_ms = self.now_ms.max(entry.now_ms);
        let mut cx = Ctx::default();
        // Most effects of a busy entry are its publishes' deliveries and confirms, and a few
        // flow signals: room for them at once, so that the vector is not grown and copied step
        // by step (a vector one effect too small is copied whole into one twice its size).
        let publishes = entry
            .commands
            .iter()
            .filter(|c| matches!(c, Command::Publish { .. }))
            .count();
        cx.fx.reserve(2 * publishes + 8);
        self.run_timers(&mut cx);
        self.run_pending(&mut cx);
        if let Some(origin) = &entry.origin {
            if !self.take_origin(origin) {
                // A batch proposed again (already applied), out of order (its predecessor is
                // missing: the proposer sends both again), or from an ended life: skipped whole.
                return cx.fx;
            }
        }
        for command in &entry.commands {
            self.apply_command(command, &mut cx);
            self.run_pending(&mut cx);
        }
        cx.fx
    }

    /// Whether a batch from `origin` is the next one expected from that node's current life;
    /// if so, records it as applied.
    fn take_origin(&mut self, origin: &command::Origin) -> bool {
        match self.nodes.get_mut(&origin.node) {
            Some(life)
                if life.epoch == origin.epoch && !life.lost && origin.seq == life.last_seq + 1 =>
            {
                life.last_seq = origin.seq;
                true
            }
            _ => false,
        }
    }

    /// Whether commands of `conn` still count: its node never announced a life (tests, tools),
    /// or `conn` belongs to the node's current life and that life was not declared lost.
    pub fn conn_is_live(&self, conn: ConnId) -> bool {
        match self.nodes.get(&conn.node) {
            None => true,
            Some(life) => life.epoch == conn.epoch && !life.lost,
        }
    }

    /// The current life of `node`, if it announced one.
    pub fn node_life(&self, node: crate::ids::NodeId) -> Option<NodeLife> {
        self.nodes.get(&node).copied()
    }

    /// The queue with this name, if any.
    pub fn queue(&self, name: &str) -> Option<&Queue> {
        self.queues.get(self.queue_by_name.get(name)?)
    }

    /// Encodes the state for a snapshot (version byte first).
    pub fn encode_snapshot(&self) -> Vec<u8> {
        // Straight into one buffer: a snapshot can be gigabytes.
        postcard::to_extend(self, vec![SNAPSHOT_FORMAT_VERSION]).expect("state serializes")
    }

    /// `encode_snapshot` written to `out` as it is produced, without a buffer of the whole.
    pub fn encode_snapshot_to(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        out.write_all(&[SNAPSHOT_FORMAT_VERSION])?;
        postcard::to_io(self, out)
            .map(|_| ())
            .map_err(std::io::Error::other)
    }

    pub fn decode_snapshot(bytes: &[u8]) -> Result<State, command::EntryDecodeError> {
        match bytes.split_first() {
            None => Err(command::EntryDecodeError::Empty),
            Some((&SNAPSHOT_FORMAT_VERSION, rest)) => Ok(postcard::from_bytes(rest)?),
            Some((v, _)) => Err(command::EntryDecodeError::Version(*v)),
        }
    }
}
