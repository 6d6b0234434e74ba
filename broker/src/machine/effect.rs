//! The output of the state machine: what should happen outside it. Every node computes the
//! same effects from the same entry; only the node hosting the named connection carries them
//! out (the dispatcher drops the rest). Effects are data, never callbacks.

use super::queue::QueuedMessage;
use crate::ids::{ChannelRef, ConnId};
use std::sync::Arc;

/// A message as it goes out to a client: the exchange and routing key it was published with,
/// and its properties blob (flags word first) and body. The queued message itself, shared: a
/// delivery copies nothing in `apply`.
pub type OutgoingMessage = Arc<QueuedMessage>;

/// The answer to a synchronous method.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    ExchangeDeclareOk,
    ExchangeDeleteOk,
    ExchangeBindOk,
    ExchangeUnbindOk,
    QueueDeclareOk {
        queue: String,
        message_count: u32,
        consumer_count: u32,
    },
    QueueBindOk,
    QueueUnbindOk,
    QueuePurgeOk {
        message_count: u32,
    },
    QueueDeleteOk {
        message_count: u32,
    },
    QosOk,
    ConsumeOk {
        consumer_tag: String,
    },
    CancelOk {
        consumer_tag: String,
    },
    GetEmpty,
    RecoverOk,
    FlowOk {
        active: bool,
    },
    TxCommitOk,
    ChannelCloseOk,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    Reply {
        ch: ChannelRef,
        reply: Reply,
    },
    /// basic.deliver to a consumer. The tag is shared with the consumer: a delivery copies
    /// no string.
    Deliver {
        ch: ChannelRef,
        consumer_tag: Arc<str>,
        delivery_tag: u64,
        redelivered: bool,
        message: OutgoingMessage,
    },
    /// basic.get-ok.
    GetOk {
        ch: ChannelRef,
        delivery_tag: u64,
        redelivered: bool,
        message_count: u32,
        message: OutgoingMessage,
    },
    /// basic.return of a mandatory publish that reached no queue (312 NO_ROUTE).
    Return {
        ch: ChannelRef,
        reply_code: u16,
        reply_text: String,
        message: OutgoingMessage,
    },
    /// A publisher confirm (ack) or negative confirm (nack) for one publish sequence number.
    /// Confirms for one channel come in sequence order; the connection folds runs of acks
    /// into one `multiple=true` ack.
    Confirm {
        ch: ChannelRef,
        seq: u64,
        ack: bool,
    },
    /// A server-initiated basic.cancel (the queue was deleted, ...): consumer_cancel_notify.
    CancelConsumer {
        ch: ChannelRef,
        consumer_tag: String,
    },
    /// Close the channel with an error (a soft error: 403, 404, 405, 406, ...). The machine has
    /// already forgotten the channel's consumers and requeued its deliveries.
    ChannelError {
        ch: ChannelRef,
        reply_code: u16,
        reply_text: String,
        class_id: u16,
        method_id: u16,
    },
    /// Publisher flow control: this connection published into a queue whose consumers are
    /// falling behind ([`FLOW_BACKLOG`](super::FLOW_BACKLOG) ready messages, or
    /// [`FLOW_UNACKED`](super::FLOW_UNACKED) deliveries they hold). The connection pauses reading its socket for a moment, so a publisher cannot run
    /// ever further ahead of the queue's consumers (RabbitMQ's "flow" state). Not repeated for
    /// a connection's consecutive publishes within one log entry.
    Flow {
        conn: ConnId,
    },
    /// Close the whole connection with an error (a hard error: 503, 530, 541, ...).
    ConnectionError {
        conn: ConnId,
        reply_code: u16,
        reply_text: String,
        class_id: u16,
        method_id: u16,
    },
}

impl Effect {
    /// The channel this effect is for; `None` for a whole-connection effect.
    pub fn channel(&self) -> Option<ChannelRef> {
        match self {
            Effect::Reply { ch, .. }
            | Effect::Deliver { ch, .. }
            | Effect::GetOk { ch, .. }
            | Effect::Return { ch, .. }
            | Effect::Confirm { ch, .. }
            | Effect::CancelConsumer { ch, .. }
            | Effect::ChannelError { ch, .. } => Some(*ch),
            Effect::ConnectionError { .. } | Effect::Flow { .. } => None,
        }
    }

    /// Whether carrying this effect out tells the client that something is stored for good: a
    /// publish confirmed, a transaction committed, an exchange, queue or binding declared or
    /// deleted, a queue purged, a consumer cancelled because its queue was deleted. A node that applies entries before their fsync (a lone node,
    /// `EffectSink::dispatch`) holds such an effect until its entry is durable; everything else,
    /// deliveries above all, may reach the client at once. Listed in full, with no catch-all,
    /// so that a new effect or reply cannot compile until someone decides which it is.
    pub fn is_promise(&self) -> bool {
        match self {
            Effect::Confirm { .. } | Effect::CancelConsumer { .. } => true,
            Effect::Reply { reply, .. } => match reply {
                Reply::ExchangeDeclareOk
                | Reply::ExchangeDeleteOk
                | Reply::ExchangeBindOk
                | Reply::ExchangeUnbindOk
                | Reply::QueueDeclareOk { .. }
                | Reply::QueueBindOk
                | Reply::QueueUnbindOk
                | Reply::QueuePurgeOk { .. }
                | Reply::QueueDeleteOk { .. }
                | Reply::TxCommitOk => true,
                Reply::QosOk
                | Reply::ConsumeOk { .. }
                | Reply::CancelOk { .. }
                | Reply::GetEmpty
                | Reply::RecoverOk
                | Reply::FlowOk { .. }
                | Reply::ChannelCloseOk => false,
            },
            Effect::Deliver { .. }
            | Effect::GetOk { .. }
            | Effect::Return { .. }
            | Effect::ChannelError { .. }
            | Effect::Flow { .. }
            | Effect::ConnectionError { .. } => false,
        }
    }

    /// The connection that carries this effect out.
    pub fn conn(&self) -> ConnId {
        match self {
            Effect::ConnectionError { conn, .. } | Effect::Flow { conn } => *conn,
            other => {
                other
                    .channel()
                    .expect("every other effect names a channel")
                    .conn
            }
        }
    }
}
