//! Dead-lettering: a message rejected without requeue, expired, or pushed out by a length
//! limit is republished to its queue's `x-dead-letter-exchange`, with routing key
//! `x-dead-letter-routing-key` if set (else its own), with an `x-death` header recording why
//! (RabbitMQ 3.x shape: one entry per {queue, reason}, most recent first, with a count) and
//! `x-first-death-*` headers; its `expiration` property is removed. A dead letter that would
//! return to a queue already in its `x-death` for a reason other than "rejected" is dropped
//! (cycle protection). A missing dead-letter exchange drops the message.
//!
//! Only this module parses and re-encodes properties; the publish hot path never does.
//!
//! Reference: <https://www.rabbitmq.com/docs/dlx>.

use super::queue::{Queue, QueuedMessage};
use super::{Ctx, Incoming, State};
use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::basic::{gen_properties, parse_properties, AMQPProperties};
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    Rejected,
    Expired,
    Maxlen,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::Maxlen => "maxlen",
        }
    }
}

/// A message on its way from a queue to its dead-letter exchange. The queue's settings are
/// captured when the message leaves it (the queue may be gone by the time it is republished).
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    pub queue: String,
    pub dlx: String,
    pub dlrk: Option<String>,
    pub reason: Reason,
    pub msg: Arc<QueuedMessage>,
}

/// Hands a message that left queue `q` for `reason` to dead-lettering, or drops it when the
/// queue has no dead-letter exchange.
pub(crate) fn dead_letter_from(
    q: &Queue,
    msg: Arc<QueuedMessage>,
    reason: Reason,
    dead: &mut VecDeque<DeadLetter>,
) {
    if let Some(dlx) = &q.args.dead_letter_exchange {
        dead.push_back(DeadLetter {
            queue: q.name.clone(),
            dlx: dlx.clone(),
            dlrk: q.args.dead_letter_routing_key.clone(),
            reason,
            msg,
        });
    }
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn as_text(v: Option<&AMQPValue>) -> Option<String> {
    match v? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// The properties of the dead-lettered copy and the queues named in its x-death.
pub fn dead_letter_properties(
    raw: &[u8],
    dl: &DeadLetter,
    now_ms: u64,
) -> (Bytes, BTreeSet<String>) {
    let props = match parse_properties(raw) {
        Ok((_, p)) => p,
        Err(_) => AMQPProperties::default(),
    };
    let mut headers: BTreeMap<ShortString, AMQPValue> = props
        .headers()
        .as_ref()
        .map(|h| h.inner().clone())
        .unwrap_or_default();
    let reason = dl.reason.as_str();

    let mut deaths: Vec<AMQPValue> = match headers.get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
        _ => Vec::new(),
    };
    let same = deaths.iter().position(|d| match d {
        AMQPValue::FieldTable(t) => {
            as_text(t.inner().get("queue")).as_deref() == Some(dl.queue.as_str())
                && as_text(t.inner().get("reason")).as_deref() == Some(reason)
        }
        _ => false,
    });
    let entry = match same {
        Some(pos) => {
            // Same queue and reason again: count + 1, and the entry moves to the front.
            let AMQPValue::FieldTable(t) = deaths.remove(pos) else {
                unreachable!("matched a table")
            };
            let mut t = t.inner().clone();
            let count = t
                .get("count")
                .and_then(super::queue::int_value)
                .unwrap_or(0) as i64;
            t.insert("count".into(), AMQPValue::LongLongInt(count + 1));
            t.insert("time".into(), AMQPValue::Timestamp(now_ms / 1000));
            FieldTable::from(t)
        }
        None => {
            let mut t = FieldTable::default();
            t.insert("count".into(), AMQPValue::LongLongInt(1));
            t.insert("reason".into(), long(reason));
            t.insert("queue".into(), long(&dl.queue));
            t.insert("time".into(), AMQPValue::Timestamp(now_ms / 1000));
            t.insert("exchange".into(), long(&dl.msg.exchange));
            t.insert(
                "routing-keys".into(),
                AMQPValue::FieldArray(FieldArray::from(vec![long(&dl.msg.routing_key)])),
            );
            if let Some(exp) = props.expiration() {
                t.insert("original-expiration".into(), long(exp.as_str()));
            }
            t
        }
    };
    deaths.insert(0, AMQPValue::FieldTable(entry));
    let queues = deaths
        .iter()
        .filter_map(|d| match d {
            AMQPValue::FieldTable(t) => as_text(t.inner().get("queue")),
            _ => None,
        })
        .collect();
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(deaths)),
    );
    if !headers.contains_key("x-first-death-reason") {
        headers.insert("x-first-death-reason".into(), long(reason));
        headers.insert("x-first-death-queue".into(), long(&dl.queue));
        headers.insert("x-first-death-exchange".into(), long(&dl.msg.exchange));
    }

    // Rebuild without `expiration` (there is no setter for None).
    let mut out = AMQPProperties::default();
    if let Some(v) = props.content_type() {
        out = out.with_content_type(v.clone());
    }
    if let Some(v) = props.content_encoding() {
        out = out.with_content_encoding(v.clone());
    }
    out = out.with_headers(FieldTable::from(headers));
    if let Some(v) = props.delivery_mode() {
        out = out.with_delivery_mode(*v);
    }
    if let Some(v) = props.priority() {
        out = out.with_priority(*v);
    }
    if let Some(v) = props.correlation_id() {
        out = out.with_correlation_id(v.clone());
    }
    if let Some(v) = props.reply_to() {
        out = out.with_reply_to(v.clone());
    }
    if let Some(v) = props.message_id() {
        out = out.with_message_id(v.clone());
    }
    if let Some(v) = props.timestamp() {
        out = out.with_timestamp(*v);
    }
    if let Some(v) = props.kind() {
        out = out.with_type(v.clone());
    }
    if let Some(v) = props.user_id() {
        out = out.with_user_id(v.clone());
    }
    if let Some(v) = props.app_id() {
        out = out.with_app_id(v.clone());
    }
    if let Some(v) = props.cluster_id() {
        out = out.with_cluster_id(v.clone());
    }
    let bytes = match gen_properties(&out)(WriteContext::from(Vec::with_capacity(raw.len() + 128)))
    {
        Ok(ctx) => ctx.write,
        // Writing into a Vec cannot run out of room; keep the original rather than panic.
        Err(_) => raw.to_vec(),
    };
    (Bytes::from(bytes), queues)
}

impl State {
    /// Republishes one dead letter to its dead-letter exchange (no confirm, not mandatory).
    pub(crate) fn publish_dead_letter(&mut self, dl: DeadLetter, cx: &mut Ctx) {
        if !self.exchanges.contains_key(&dl.dlx) {
            return;
        }
        let (properties, death_queues) =
            dead_letter_properties(&dl.msg.properties, &dl, self.now_ms);
        let routing_key = dl
            .dlrk
            .clone()
            .unwrap_or_else(|| dl.msg.routing_key.clone());
        let targets = self.route(&dl.dlx, &routing_key, &properties);
        for qid in targets {
            let Some(q) = self.queues.get(&qid) else {
                continue;
            };
            if dl.reason != Reason::Rejected && death_queues.contains(&q.name) {
                continue;
            }
            let incoming = Incoming {
                exchange: &dl.dlx,
                routing_key: &routing_key,
                properties: &properties,
                body: &dl.msg.body,
                persistent: dl.msg.persistent,
                priority: dl.msg.priority,
                expiration_ms: None,
            };
            self.enqueue(qid, incoming, cx);
        }
    }
}
