//! Queues as the machine stores them: flags, the x-arguments RabbitMQ understands (parsed and
//! validated once at declare time), and the ready messages ordered by (priority, sequence).
//! A requeued message goes back under its original key, so it returns to its original
//! position. Delivery to consumers lives in `delivery.rs`; expiry and limits are applied by
//! the `State` methods there too, because they may dead-letter.
//!
//! References: <https://www.rabbitmq.com/docs/queues>, <https://www.rabbitmq.com/docs/ttl>,
//! <https://www.rabbitmq.com/docs/maxlength>, <https://www.rabbitmq.com/docs/priority>,
//! <https://www.rabbitmq.com/docs/dlx>.

use crate::ids::ConnId;
use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// Ordering key of a message in its queue: (255 - effective priority, sequence number).
/// The smallest key is the head: highest priority first, FIFO within a priority.
pub type MsgKey = (u8, u64);

/// A message in a queue (ready) or held by a channel (unacknowledged). Queues, channels and
/// deliveries hold it behind an `Arc`: a delivery going out, and a snapshot's copy of the state,
/// then share it instead of copying its fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueuedMessage {
    /// The exchange and routing key it was published (or dead-lettered) with.
    pub exchange: String,
    pub routing_key: String,
    #[serde(with = "crate::shared_bytes")]
    pub properties: Bytes,
    #[serde(with = "crate::shared_bytes")]
    pub body: Bytes,
    pub persistent: bool,
    /// The priority property (0 when absent), kept for dead-lettering.
    pub priority: u8,
    /// Absolute expiry on the machine clock (ms), from x-message-ttl and/or expiration.
    pub expires_at_ms: Option<u64>,
    /// Delivered before (and requeued).
    pub redelivered: bool,
}

/// What a queue does when a publish would exceed x-max-length / x-max-length-bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Overflow {
    DropHead,
    RejectPublish,
    RejectPublishDlx,
}

/// The x-arguments of a queue that change its behaviour.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueArgs {
    pub message_ttl_ms: Option<u64>,
    pub expires_ms: Option<u64>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    pub dead_letter_exchange: Option<String>,
    pub dead_letter_routing_key: Option<String>,
    pub max_priority: Option<u8>,
    pub quorum: bool,
}

/// The arguments compared when a queue is declared again (RabbitMQ's equivalence list).
pub const EQUIVALENCE_ARGS: [&str; 9] = [
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-overflow",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-priority",
    "x-queue-type",
];

/// An integer argument of any AMQP integer type.
pub fn int_value(v: &AMQPValue) -> Option<i128> {
    Some(match v {
        AMQPValue::ShortShortInt(i) => *i as i128,
        AMQPValue::ShortShortUInt(i) => *i as i128,
        AMQPValue::ShortInt(i) => *i as i128,
        AMQPValue::ShortUInt(i) => *i as i128,
        AMQPValue::LongInt(i) => *i as i128,
        AMQPValue::LongUInt(i) => *i as i128,
        AMQPValue::LongLongInt(i) => *i as i128,
        AMQPValue::Timestamp(i) => *i as i128,
        _ => return None,
    })
}

pub fn str_value(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// RabbitMQ's name for a field type, as it appears in its error texts.
pub fn type_name(v: &AMQPValue) -> &'static str {
    match v {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) => "byte",
        AMQPValue::ShortShortUInt(_) => "unsignedbyte",
        AMQPValue::ShortInt(_) => "short",
        AMQPValue::ShortUInt(_) => "unsignedshort",
        AMQPValue::LongInt(_) => "signedint",
        AMQPValue::LongUInt(_) => "unsignedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) => "shortstr",
        AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "bytearray",
        AMQPValue::Void => "void",
    }
}

fn show_value(v: &AMQPValue) -> String {
    match (int_value(v), str_value(v)) {
        (Some(i), _) => i.to_string(),
        (_, Some(s)) => s,
        _ => format!("{v:?}"),
    }
}

impl QueueArgs {
    /// Parses and validates the x-arguments of queue.declare. The error is the detail of a
    /// 406 PRECONDITION_FAILED reply ("invalid arg 'x-max-priority' for queue ...").
    pub fn parse(queue: &str, arguments: &FieldTable) -> Result<QueueArgs, String> {
        let mut args = QueueArgs {
            message_ttl_ms: None,
            expires_ms: None,
            max_length: None,
            max_length_bytes: None,
            overflow: Overflow::DropHead,
            dead_letter_exchange: None,
            dead_letter_routing_key: None,
            max_priority: None,
            quorum: false,
        };
        let t = arguments.inner();
        let invalid = |key: &str, why: String| {
            format!("invalid arg '{key}' for queue '{queue}' in vhost '/': {why}")
        };
        // A non-negative integer argument (x-expires must also be positive).
        let non_neg = |key: &str, positive: bool| -> Result<Option<u64>, String> {
            let Some(v) = t.get(key) else { return Ok(None) };
            let Some(i) = int_value(v) else {
                return Err(invalid(
                    key,
                    format!("{{unacceptable_type,{}}}", type_name(v)),
                ));
            };
            if i < 0 {
                return Err(invalid(key, format!("{{value_negative,{i}}}")));
            }
            if positive && i == 0 {
                return Err(invalid(key, format!("{{value_zero,{i}}}")));
            }
            Ok(Some(i.min(u64::MAX as i128) as u64))
        };
        args.message_ttl_ms = non_neg("x-message-ttl", false)?;
        args.expires_ms = non_neg("x-expires", true)?;
        args.max_length = non_neg("x-max-length", false)?;
        args.max_length_bytes = non_neg("x-max-length-bytes", false)?;
        if let Some(p) = non_neg("x-max-priority", false)? {
            if p > 255 {
                return Err(invalid(
                    "x-max-priority",
                    format!("{{max_value_exceeded,{p}}}"),
                ));
            }
            args.max_priority = Some(p as u8);
        }
        if let Some(v) = t.get("x-overflow") {
            args.overflow = match str_value(v).as_deref() {
                Some("drop-head") => Overflow::DropHead,
                Some("reject-publish") => Overflow::RejectPublish,
                Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
                _ => {
                    return Err(invalid(
                        "x-overflow",
                        format!("{{unknown_overflow_type,{}}}", show_value(v)),
                    ))
                }
            };
        }
        if let Some(v) = t.get("x-dead-letter-exchange") {
            match str_value(v) {
                Some(s) => args.dead_letter_exchange = Some(s),
                None => {
                    return Err(invalid(
                        "x-dead-letter-exchange",
                        format!("{{unacceptable_type,{}}}", type_name(v)),
                    ))
                }
            }
        }
        if let Some(v) = t.get("x-dead-letter-routing-key") {
            match str_value(v) {
                Some(s) => args.dead_letter_routing_key = Some(s),
                None => {
                    return Err(invalid(
                        "x-dead-letter-routing-key",
                        format!("{{unacceptable_type,{}}}", type_name(v)),
                    ))
                }
            }
            if args.dead_letter_exchange.is_none() {
                return Err(invalid("x-dead-letter-routing-key", "no_dlx".to_owned()));
            }
        }
        if let Some(v) = t.get("x-queue-type") {
            match str_value(v).as_deref() {
                Some("classic") => {}
                Some("quorum") => args.quorum = true,
                _ => {
                    return Err(invalid(
                        "x-queue-type",
                        format!("{{unsupported_queue_type,{}}}", show_value(v)),
                    ))
                }
            }
        }
        Ok(args)
    }
}

/// RabbitMQ's argument equivalence for queue.declare of an existing queue: each argument in
/// [`EQUIVALENCE_ARGS`] must be equal (integers by value). A redeclare that leaves out
/// x-queue-type is accepted (clients that predate quorum queues do that).
pub fn check_args_equivalent(
    queue: &str,
    current: &FieldTable,
    received: &FieldTable,
) -> Result<(), String> {
    for key in EQUIVALENCE_ARGS {
        let (r, c) = (received.inner().get(key), current.inner().get(key));
        if key == "x-queue-type" && r.is_none() {
            continue;
        }
        let same = match (r, c) {
            (None, None) => true,
            (Some(a), Some(b)) => match (int_value(a), int_value(b)) {
                (Some(x), Some(y)) => x == y,
                _ => match (str_value(a), str_value(b)) {
                    (Some(x), Some(y)) => x == y,
                    _ => a == b,
                },
            },
            _ => false,
        };
        if !same {
            let show = |v: Option<&AMQPValue>| match v {
                None => "none".to_owned(),
                Some(v) => format!("the value '{}' of type '{}'", show_value(v), type_name(v)),
            };
            return Err(format!("inequivalent arg '{key}' for queue '{queue}' in vhost '/': received {} but current is {}", show(r), show(c)));
        }
    }
    Ok(())
}

/// A hint for publisher flow control (`FLOW_UNACKED`), not replicated state: it is left out of
/// snapshots (a node restored from one starts at 0 and learns it again at the next settle) and
/// out of comparisons. It decides only when this node slows a publisher down, never what any
/// queue holds.
#[derive(Clone, Copy, Debug, Default)]
pub struct SettleBatch(pub u32);

impl PartialEq for SettleBatch {
    fn eq(&self, _: &SettleBatch) -> bool {
        true
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Queue {
    /// Unique for the life of the state: a queue deleted and declared again gets a new id,
    /// so deliveries of the old one are never requeued into the new one.
    pub id: u64,
    pub name: String,
    pub durable: bool,
    pub exclusive_owner: Option<ConnId>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    pub args: QueueArgs,
    pub ready: BTreeMap<MsgKey, Arc<QueuedMessage>>,
    /// Sum of the body sizes of the ready messages (x-max-length-bytes).
    pub ready_bytes: u64,
    /// Ready messages that carry an expiry (the tick has work here while > 0).
    pub expiring_ready: u64,
    pub next_seq: u64,
    /// Deliveries of this queue that channels hold unacknowledged.
    pub unacked_count: u64,
    /// How many deliveries the latest settle (ack/nack) of this queue's deliveries covered.
    #[serde(skip)]
    pub settle_batch: SettleBatch,
    /// Consumer ids in round-robin order: the next delivery goes to the first that has room.
    pub consumers: VecDeque<u64>,
    pub exclusive_consumer: Option<u64>,
    /// An auto-delete queue is deleted when its last consumer goes, once it had one.
    pub had_consumer: bool,
    /// Last declare, basic.get or consumer change (x-expires counts from here).
    pub last_used_ms: u64,
}

impl Queue {
    /// The key for the next message with the given priority property.
    pub fn next_key(&mut self, priority: u8) -> MsgKey {
        let effective = match self.args.max_priority {
            Some(max) => priority.min(max),
            None => 0,
        };
        self.next_seq += 1;
        (255 - effective, self.next_seq)
    }

    pub fn push_ready(&mut self, key: MsgKey, msg: Arc<QueuedMessage>) {
        self.ready_bytes += msg.body.len() as u64;
        if msg.expires_at_ms.is_some() {
            self.expiring_ready += 1;
        }
        self.ready.insert(key, msg);
    }

    pub fn pop_head(&mut self) -> Option<(MsgKey, Arc<QueuedMessage>)> {
        let (key, msg) = self.ready.pop_first()?;
        self.account_removed(&msg);
        Some((key, msg))
    }

    pub fn account_removed(&mut self, msg: &QueuedMessage) {
        self.ready_bytes -= msg.body.len() as u64;
        if msg.expires_at_ms.is_some() {
            self.expiring_ready -= 1;
        }
    }

    /// Is the head expired at `now_ms`?
    pub fn head_expired(&self, now_ms: u64) -> bool {
        matches!(self.ready.first_key_value(), Some((_, m)) if m.expires_at_ms.is_some_and(|t| t <= now_ms))
    }

    /// Does the queue hold more than x-max-length / x-max-length-bytes allow?
    pub fn over_limit(&self) -> bool {
        self.args
            .max_length
            .is_some_and(|max| self.ready.len() as u64 > max)
            || self
                .args
                .max_length_bytes
                .is_some_and(|max| self.ready_bytes > max)
    }

    /// Would one more message of `size` bytes exceed a limit (reject-publish)?
    pub fn would_overflow(&self, size: u64) -> bool {
        self.args
            .max_length
            .is_some_and(|max| self.ready.len() as u64 + 1 > max)
            || self
                .args
                .max_length_bytes
                .is_some_and(|max| self.ready_bytes + size > max)
    }

    /// Expiry for a message enqueued now: the smaller of x-message-ttl and its expiration.
    pub fn expiry_for(&self, now_ms: u64, expiration_ms: Option<u64>) -> Option<u64> {
        let ttl = match (self.args.message_ttl_ms, expiration_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }?;
        Some(now_ms.saturating_add(ttl))
    }

    /// Keeps only the ready messages for which `keep` holds; returns how many went.
    pub fn retain_ready(&mut self, keep: impl Fn(&QueuedMessage) -> bool) -> u64 {
        // One pass: a queue can hold millions of messages, and a restart replays this.
        let (mut removed, mut bytes, mut expiring) = (0u64, 0u64, 0u64);
        self.ready.retain(|_, m| {
            let kept = keep(m);
            if !kept {
                removed += 1;
                bytes += m.body.len() as u64;
                expiring += u64::from(m.expires_at_ms.is_some());
            }
            kept
        });
        self.ready_bytes -= bytes;
        self.expiring_ready -= expiring;
        removed
    }

    pub fn consumer_count(&self) -> u32 {
        self.consumers.len() as u32
    }

    pub fn message_count(&self) -> u32 {
        self.ready.len() as u32
    }
}
