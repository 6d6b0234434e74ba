//! The replicated input of the state machine: a log entry is a batch of `Command`s stamped
//! with the proposing leader's clock. This is a public, persistent format (it lives in the
//! Raft log on disk): variants are only ever added at the end, and `encode` prefixes a
//! version byte. Golden-byte tests in `machine::tests` pin it.

use crate::ids::{ChannelRef, ConnId, NodeId};
use amq_protocol::types::FieldTable;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Version byte in front of every encoded [`Entry`]. Version 1 (before clusters) had no
/// `origin`; it is still read.
pub const ENTRY_FORMAT_VERSION: u8 = 2;

/// One log entry: many commands from many channels share one entry and so one disk write
/// (group commit). `now_ms` is the proposer's wall clock (milliseconds since the Unix epoch);
/// it is the only source of time inside `apply`, which keeps its own clock monotonic with
/// `max(previous, now_ms)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub now_ms: u64,
    pub commands: Vec<Command>,
    /// Which node's proposer built this batch, in which life, and its place in that life's
    /// sequence. A proposer that cannot tell whether a batch was committed (the leader died, a
    /// forward was cut) proposes it again; `apply` takes each (node, epoch, seq) at most once and
    /// only right after its predecessor, so a batch is applied exactly once and in order.
    /// `None` for entries that may be applied any number of times (ticks, node starts).
    pub origin: Option<Origin>,
}

/// The proposer of a batch: node, life (epoch of its `NodeStarted`) and sequence number
/// (1, 2, 3, … within the life).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub node: NodeId,
    pub epoch: u64,
    pub seq: u64,
}

/// The version 1 layout, read for logs written before `origin` existed.
#[derive(Deserialize)]
struct EntryV1 {
    now_ms: u64,
    commands: Vec<Command>,
}

#[derive(Debug, Error)]
pub enum EntryDecodeError {
    #[error("empty log entry")]
    Empty,
    #[error(
        "log entry format version {0} is not supported (this build reads {ENTRY_FORMAT_VERSION})"
    )]
    Version(u8),
    #[error("corrupt log entry: {0}")]
    Corrupt(#[from] postcard::Error),
}

impl Entry {
    /// Whether every command of the entry is volatile ([`Command::is_volatile`]); an empty
    /// entry (a tick that only moves the clock) is.
    pub fn is_volatile(&self) -> bool {
        self.commands.iter().all(Command::is_volatile)
    }

    /// Whether any command may add a route for a message: declares a queue or an exchange,
    /// or binds one. (Deleting or unbinding only takes routes away; where that sends a message
    /// to an alternate exchange, `State::transient_may_outlive_restart` already says so.)
    pub fn may_add_routes(&self) -> bool {
        self.commands.iter().any(|c| {
            matches!(
                c,
                Command::QueueDeclare { .. }
                    | Command::QueueBind { .. }
                    | Command::ExchangeDeclare { .. }
                    | Command::ExchangeBind { .. }
            )
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        self.encode_into(Vec::new())
    }

    /// Appends the encoding to `out` (the version byte, then the entry), so that a caller with
    /// its own header writes everything into one buffer.
    pub fn encode_into(&self, mut out: Vec<u8>) -> Vec<u8> {
        out.push(ENTRY_FORMAT_VERSION);
        // Serializing plain data into a Vec cannot fail.
        postcard::to_extend(self, out).expect("entry serializes")
    }

    /// About how many bytes the entry holds (bodies and headers), for memory accounting.
    pub fn approx_size(&self) -> usize {
        self.commands
            .iter()
            .map(Command::approx_size)
            .sum::<usize>()
            + 32
    }

    pub fn decode(bytes: &[u8]) -> Result<Entry, EntryDecodeError> {
        match bytes.split_first() {
            None => Err(EntryDecodeError::Empty),
            Some((&ENTRY_FORMAT_VERSION, rest)) => Ok(postcard::from_bytes(rest)?),
            Some((&1, rest)) => {
                let v1: EntryV1 = postcard::from_bytes(rest)?;
                Ok(Entry {
                    now_ms: v1.now_ms,
                    commands: v1.commands,
                    origin: None,
                })
            }
            Some((&v, _)) => Err(EntryDecodeError::Version(v)),
        }
    }
}

/// A message as the publisher sent it. `properties` is the raw basic-properties blob of the
/// content header (flags word first), kept byte for byte so that every property and nested
/// header table reaches consumers exactly as published. The scalar fields are read from it by
/// the connection before proposing, so `apply` does not parse on the hot path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PublishedMessage {
    #[serde(with = "crate::shared_bytes")]
    pub properties: Bytes,
    #[serde(with = "crate::shared_bytes")]
    pub body: Bytes,
    /// delivery_mode == 2
    pub persistent: bool,
    /// The `priority` property, 0 when absent.
    pub priority: u8,
    /// The `expiration` property in milliseconds (already validated), if any.
    pub expiration_ms: Option<u64>,
}

/// One publish, as in `basic.publish` plus its content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Publish {
    pub exchange: String,
    pub routing_key: String,
    pub mandatory: bool,
    /// The publisher-confirm sequence number when the channel is in confirm mode.
    pub confirm_seq: Option<u64>,
    pub message: PublishedMessage,
}

/// An acknowledgement of deliveries on a channel (basic.ack / basic.nack / basic.reject).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Settle {
    Ack {
        delivery_tag: u64,
        multiple: bool,
    },
    /// basic.reject is `Nack { multiple: false }`.
    Nack {
        delivery_tag: u64,
        multiple: bool,
        requeue: bool,
    },
}

/// Everything that changes the broker's replicated state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// A node (re)started with a new epoch: every connection of an earlier epoch of that node
    /// is gone (as if `ConnectionClosed`). With `drop_transient` (a standalone restart, as a
    /// RabbitMQ node restart) non-durable exchanges and queues and transient messages go too.
    NodeStarted {
        node: NodeId,
        epoch: u64,
        drop_transient: bool,
    },
    /// The connection is gone (closed, failed, or its node died): cancel its consumers,
    /// requeue its unacknowledged deliveries, delete its exclusive queues.
    ConnectionClosed {
        conn: ConnId,
    },
    /// The channel is closed (by the client's channel.close, or by an error the connection
    /// found itself): same clean-up as for a connection, for one channel. Answered with
    /// `Reply::ChannelCloseOk` so the connection sends channel.close-ok only after every
    /// earlier effect for the channel.
    ChannelClosed {
        ch: ChannelRef,
    },

    ExchangeDeclare {
        ch: ChannelRef,
        exchange: String,
        kind: String,
        passive: bool,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        nowait: bool,
        arguments: FieldTable,
    },
    ExchangeDelete {
        ch: ChannelRef,
        exchange: String,
        if_unused: bool,
        nowait: bool,
    },
    ExchangeBind {
        ch: ChannelRef,
        destination: String,
        source: String,
        routing_key: String,
        nowait: bool,
        arguments: FieldTable,
    },
    ExchangeUnbind {
        ch: ChannelRef,
        destination: String,
        source: String,
        routing_key: String,
        nowait: bool,
        arguments: FieldTable,
    },

    /// `queue` is never empty: for a server-named queue the connection picks the
    /// `amq.gen-…` name (randomness stays outside `apply`) and sets `server_named`.
    QueueDeclare {
        ch: ChannelRef,
        queue: String,
        server_named: bool,
        passive: bool,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        nowait: bool,
        arguments: FieldTable,
    },
    QueueBind {
        ch: ChannelRef,
        queue: String,
        exchange: String,
        routing_key: String,
        nowait: bool,
        arguments: FieldTable,
    },
    QueueUnbind {
        ch: ChannelRef,
        queue: String,
        exchange: String,
        routing_key: String,
        arguments: FieldTable,
    },
    QueuePurge {
        ch: ChannelRef,
        queue: String,
        nowait: bool,
    },
    QueueDelete {
        ch: ChannelRef,
        queue: String,
        if_unused: bool,
        if_empty: bool,
        nowait: bool,
    },

    Qos {
        ch: ChannelRef,
        prefetch_size: u32,
        prefetch_count: u16,
        global: bool,
    },
    /// `consumer_tag` is never empty: the connection generates `amq.ctag-…` when the client
    /// leaves it empty.
    Consume {
        ch: ChannelRef,
        queue: String,
        consumer_tag: String,
        no_local: bool,
        no_ack: bool,
        exclusive: bool,
        nowait: bool,
        arguments: FieldTable,
    },
    Cancel {
        ch: ChannelRef,
        consumer_tag: String,
        nowait: bool,
    },
    Publish {
        ch: ChannelRef,
        publish: Publish,
    },
    Get {
        ch: ChannelRef,
        queue: String,
        no_ack: bool,
    },
    Settle {
        ch: ChannelRef,
        settle: Settle,
    },
    /// basic.recover (and recover-async): requeue every unacknowledged delivery of the channel.
    Recover {
        ch: ChannelRef,
        requeue: bool,
    },
    /// channel.flow from the client: stop (or resume) deliveries to this channel.
    Flow {
        ch: ChannelRef,
        active: bool,
    },
    /// tx.commit: the channel's buffered publishes and settlements, applied atomically and in
    /// order, answered by `Reply::TxCommitOk`.
    TxCommit {
        ch: ChannelRef,
        publishes: Vec<Publish>,
        settles: Vec<Settle>,
    },
    /// The leader lost contact with `node` for longer than the node-down timeout: that life of
    /// the node ends (if `epoch` is still its current life). Its connections are closed as if
    /// they had dropped (consumers cancelled, unacknowledged deliveries requeued), and anything
    /// it proposes later in that life is ignored; a node that was only cut off notices, closes
    /// its clients and starts a new life.
    NodeLost {
        node: NodeId,
        epoch: u64,
    },
}

impl Command {
    /// The channel a command came from, if it came from one.
    pub fn channel(&self) -> Option<ChannelRef> {
        match self {
            Command::NodeStarted { .. }
            | Command::NodeLost { .. }
            | Command::ConnectionClosed { .. } => None,
            Command::ChannelClosed { ch }
            | Command::ExchangeDeclare { ch, .. }
            | Command::ExchangeDelete { ch, .. }
            | Command::ExchangeBind { ch, .. }
            | Command::ExchangeUnbind { ch, .. }
            | Command::QueueDeclare { ch, .. }
            | Command::QueueBind { ch, .. }
            | Command::QueueUnbind { ch, .. }
            | Command::QueuePurge { ch, .. }
            | Command::QueueDelete { ch, .. }
            | Command::Qos { ch, .. }
            | Command::Consume { ch, .. }
            | Command::Cancel { ch, .. }
            | Command::Publish { ch, .. }
            | Command::Get { ch, .. }
            | Command::Settle { ch, .. }
            | Command::Recover { ch, .. }
            | Command::Flow { ch, .. }
            | Command::TxCommit { ch, .. } => Some(*ch),
        }
    }

    /// The connection a command came from, if it came from one.
    pub fn conn(&self) -> Option<ConnId> {
        match self {
            Command::ConnectionClosed { conn } => Some(*conn),
            other => other.channel().map(|ch| ch.conn),
        }
    }

    /// Whether losing this command in a power failure, after it was applied and its effects
    /// sent, breaks no promise made to a client. A lost suffix of the log is as if the node had
    /// stopped earlier, and what these commands changed is undone by a restart or allowed by
    /// AMQP's at-least-once delivery: a lost ack, get or recover makes a message ready again
    /// (delivered again, never lost); consumers, prefetch, channel flow and open channels and
    /// connections do not survive a restart anyway. A publish on a channel that is not in
    /// confirm mode promises nothing either (AMQP gives such a publisher no word that its
    /// message arrived; RabbitMQ too may lose it in a crash). Everything that answers with a
    /// promise (a confirmed publish, whose confirm says the message is safe; declarations,
    /// bindings, deletions, purges; tx.commit) or that changes the cluster (node starts and
    /// losses) is not.
    pub fn is_volatile(&self) -> bool {
        // Both lists are spelled out, with no catch-all, so that a new command cannot compile
        // until someone decides whether losing it breaks a promise.
        match self {
            Command::ConnectionClosed { .. }
            | Command::ChannelClosed { .. }
            | Command::Qos { .. }
            | Command::Consume { .. }
            | Command::Cancel { .. }
            | Command::Get { .. }
            | Command::Settle { .. }
            | Command::Recover { .. }
            | Command::Flow { .. } => true,
            Command::Publish { publish, .. } => publish.confirm_seq.is_none(),
            Command::NodeStarted { .. }
            | Command::NodeLost { .. }
            | Command::ExchangeDeclare { .. }
            | Command::ExchangeDelete { .. }
            | Command::ExchangeBind { .. }
            | Command::ExchangeUnbind { .. }
            | Command::QueueDeclare { .. }
            | Command::QueueBind { .. }
            | Command::QueueUnbind { .. }
            | Command::QueuePurge { .. }
            | Command::QueueDelete { .. }
            | Command::TxCommit { .. } => false,
        }
    }

    /// A rough size in bytes, for bounding a batch.
    pub fn approx_size(&self) -> usize {
        match self {
            Command::Publish { publish, .. } => {
                64 + publish.message.body.len() + publish.message.properties.len()
            }
            Command::TxCommit { publishes, .. } => {
                64 + publishes
                    .iter()
                    .map(|p| 64 + p.message.body.len() + p.message.properties.len())
                    .sum::<usize>()
            }
            _ => 64,
        }
    }
}
