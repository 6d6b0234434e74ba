//! Routing: which queues a message published to an exchange reaches. Direct (one map lookup
//! by routing key), fanout, topic (`*` one word, `#` zero or more words, words split on '.'),
//! headers (x-match all / any / all-with-x / any-with-x), exchange-to-exchange bindings
//! (followed breadth-first, each exchange visited once, destination queues deduplicated) and
//! `alternate-exchange` (used by any exchange on the walk whose own bindings matched nothing),
//! as RabbitMQ's `rabbit_exchange:route/2` does. It does not enqueue anything.
//!
//! References: <https://www.rabbitmq.com/tutorials/amqp-concepts#exchanges>,
//! <https://www.rabbitmq.com/docs/e2e>, <https://www.rabbitmq.com/docs/ae>.

use super::exchange::{Destination, ExchangeKind};
use super::State;
use amq_protocol::protocol::basic::parse_properties;
use amq_protocol::types::{AMQPValue, FieldTable};
use std::collections::{BTreeSet, VecDeque};

/// RabbitMQ splits topic keys on '.'; an empty key has zero words ("a." has two: "a", "").
fn topic_words(key: &str) -> Vec<&str> {
    if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    }
}

/// Does the topic binding key `pattern` match `routing_key`? Dynamic programming over
/// (pattern words, key words), so patterns with many `#` stay polynomial.
pub fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    let p = topic_words(pattern);
    let k = topic_words(routing_key);
    // reach[j]: the first i pattern words can match the first j key words.
    let mut reach = vec![false; k.len() + 1];
    reach[0] = true;
    for word in &p {
        let mut next = vec![false; k.len() + 1];
        match *word {
            "#" => {
                // zero or more words: next[j] = any reach[i] with i <= j
                let mut any = false;
                for j in 0..=k.len() {
                    any |= reach[j];
                    next[j] = any;
                }
            }
            "*" => {
                next[1..].copy_from_slice(&reach[..k.len()]);
            }
            literal => {
                for j in 1..=k.len() {
                    next[j] = reach[j - 1] && k[j - 1] == literal;
                }
            }
        }
        reach = next;
        if !reach.iter().any(|r| *r) {
            return false;
        }
    }
    reach[k.len()]
}

/// A value reduced for header comparison: RabbitMQ compares with Erlang's `==`, so integers
/// of different widths are equal when their values are, and short and long strings too.
#[derive(PartialEq)]
enum Comparable<'a> {
    Int(i128),
    Float(f64),
    Bytes(&'a [u8]),
    Other(&'a AMQPValue),
}

fn comparable(v: &AMQPValue) -> Comparable<'_> {
    match v {
        AMQPValue::ShortShortInt(i) => Comparable::Int(*i as i128),
        AMQPValue::ShortShortUInt(i) => Comparable::Int(*i as i128),
        AMQPValue::ShortInt(i) => Comparable::Int(*i as i128),
        AMQPValue::ShortUInt(i) => Comparable::Int(*i as i128),
        AMQPValue::LongInt(i) => Comparable::Int(*i as i128),
        AMQPValue::LongUInt(i) => Comparable::Int(*i as i128),
        AMQPValue::LongLongInt(i) => Comparable::Int(*i as i128),
        AMQPValue::Timestamp(i) => Comparable::Int(*i as i128),
        AMQPValue::Float(f) => Comparable::Float(*f as f64),
        AMQPValue::Double(f) => Comparable::Float(*f),
        AMQPValue::ShortString(s) => Comparable::Bytes(s.as_str().as_bytes()),
        AMQPValue::LongString(s) => Comparable::Bytes(s.as_bytes()),
        other => Comparable::Other(other),
    }
}

/// Value equality as the headers exchange sees it.
pub fn values_equal(a: &AMQPValue, b: &AMQPValue) -> bool {
    match (comparable(a), comparable(b)) {
        (Comparable::Int(x), Comparable::Float(y)) | (Comparable::Float(y), Comparable::Int(x)) => {
            (x as f64) == y
        }
        (x, y) => x == y,
    }
}

/// The headers exchange's match of one binding's arguments against a message's headers.
/// `x-match` is "all" (default), "any", "all-with-x" or "any-with-x"; for all/any the binding
/// keys starting with "x-" are ignored; a binding value of void matches the key's presence.
/// With no keys to compare, "all" matches and "any" does not (RabbitMQ's fold).
pub fn headers_match(binding: &FieldTable, headers: Option<&FieldTable>) -> bool {
    let mode = match binding.inner().get("x-match") {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
        _ => "all".to_owned(),
    };
    let (any, with_x) = match mode.as_str() {
        "any" => (true, false),
        "any-with-x" => (true, true),
        "all-with-x" => (false, true),
        _ => (false, false),
    };
    let empty = FieldTable::default();
    let headers = headers.unwrap_or(&empty).inner();
    for (key, want) in binding.inner() {
        let key = key.as_str();
        if key == "x-match" || (!with_x && key.starts_with("x-")) {
            continue;
        }
        let hit = match (want, headers.get(key)) {
            (_, None) => false,
            (AMQPValue::Void, Some(_)) => true,
            (want, Some(have)) => values_equal(want, have),
        };
        if any && hit {
            return true;
        }
        if !any && !hit {
            return false;
        }
    }
    // "any" found no hit; "all" found no miss (an empty set of keys matches, as in RabbitMQ).
    !any
}

impl State {
    /// The ids of the queues that a message published to `exchange` with `routing_key` reaches.
    /// The properties are parsed only if a headers exchange is on the walk.
    pub(crate) fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        properties: &[u8],
    ) -> BTreeSet<u64> {
        let mut queues = BTreeSet::new();
        // Fast path: the default exchange routes to the queue named by the routing key.
        if exchange.is_empty() {
            if let Some(id) = self.queue_by_name.get(routing_key) {
                queues.insert(*id);
            }
            return queues;
        }
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut work: VecDeque<&str> = VecDeque::new();
        work.push_back(exchange);
        let mut headers: Option<Option<FieldTable>> = None;
        while let Some(name) = work.pop_front() {
            if !seen.insert(name) {
                continue;
            }
            let Some(x) = self.exchanges.get(name) else {
                continue;
            };
            let mut matched = false;
            if name.is_empty() {
                if let Some(id) = self.queue_by_name.get(routing_key) {
                    queues.insert(*id);
                    matched = true;
                }
            } else {
                match x.kind {
                    ExchangeKind::Direct => {
                        if let Some(by_dest) = x.bindings.get(routing_key) {
                            for dest in by_dest.keys() {
                                self.take(dest, &mut queues, &mut work, &mut matched);
                            }
                        }
                    }
                    ExchangeKind::Fanout => {
                        for by_dest in x.bindings.values() {
                            for dest in by_dest.keys() {
                                self.take(dest, &mut queues, &mut work, &mut matched);
                            }
                        }
                    }
                    ExchangeKind::Topic => {
                        for (pattern, by_dest) in &x.bindings {
                            if topic_matches(pattern, routing_key) {
                                for dest in by_dest.keys() {
                                    self.take(dest, &mut queues, &mut work, &mut matched);
                                }
                            }
                        }
                    }
                    ExchangeKind::Headers => {
                        let hdrs =
                            headers.get_or_insert_with(|| match parse_properties(properties) {
                                Ok((_, props)) => props.headers().clone(),
                                Err(_) => None,
                            });
                        for by_dest in x.bindings.values() {
                            for (dest, tables) in by_dest {
                                if tables.iter().any(|t| headers_match(t, hdrs.as_ref())) {
                                    self.take(dest, &mut queues, &mut work, &mut matched);
                                }
                            }
                        }
                    }
                }
            }
            if !matched {
                if let Some(ae) = &x.alternate_exchange {
                    work.push_back(ae.as_str());
                }
            }
        }
        queues
    }

    /// Whether a transient message published to `exchange` with `routing_key` could outlive a
    /// restart that drops the transient messages of classic queues: it would reach a quorum
    /// queue (which keeps them) or a queue that dead-letters (into one that might), or its
    /// exchange could send it elsewhere once its queues go (an alternate exchange, or a binding
    /// to another exchange). Conservative: `true` whenever it is not plainly `false`. It answers
    /// for this state; a caller acting on it ahead of `apply` must know that no command that
    /// adds routes ([`Entry::may_add_routes`](super::command::Entry::may_add_routes)) comes
    /// first.
    pub fn transient_may_outlive_restart(
        &self,
        exchange: &str,
        routing_key: &str,
        properties: &[u8],
    ) -> bool {
        if !exchange.is_empty() {
            let Some(x) = self.exchanges.get(exchange) else {
                // Publishing to a missing exchange is a channel error: nothing is routed.
                return false;
            };
            let to_exchange = x.bindings.values().any(|by_dest| {
                by_dest
                    .keys()
                    .any(|d| matches!(d, Destination::Exchange(_)))
            });
            if x.alternate_exchange.is_some() || to_exchange {
                return true;
            }
        }
        self.route(exchange, routing_key, properties)
            .iter()
            .any(|id| {
                self.queues
                    .get(id)
                    .is_none_or(|q| q.args.quorum || q.args.dead_letter_exchange.is_some())
            })
    }

    fn take<'s>(
        &'s self,
        dest: &'s Destination,
        queues: &mut BTreeSet<u64>,
        work: &mut VecDeque<&'s str>,
        matched: &mut bool,
    ) {
        *matched = true;
        match dest {
            Destination::Queue(q) => {
                if let Some(id) = self.queue_by_name.get(q) {
                    queues.insert(*id);
                }
            }
            Destination::Exchange(e) => work.push_back(e.as_str()),
        }
    }
}
