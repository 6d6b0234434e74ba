//! Exchanges as the machine stores them: their kind, flags and arguments, the bindings for
//! which they are the source, and the equivalence check RabbitMQ applies when an existing
//! exchange is declared again. Routing (which bindings match a message) lives in
//! `routing.rs`; creating and deleting exchanges as commands lives in `apply.rs`.

use amq_protocol::types::{AMQPValue, FieldTable};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The exchange types RabbitMQ ships with (AMQP 0-9-1 section 3.1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    pub fn parse(name: &str) -> Option<ExchangeKind> {
        match name {
            "direct" => Some(ExchangeKind::Direct),
            "fanout" => Some(ExchangeKind::Fanout),
            "topic" => Some(ExchangeKind::Topic),
            "headers" => Some(ExchangeKind::Headers),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// Where a binding leads: a queue (queue.bind) or another exchange (exchange.bind).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Destination {
    Queue(String),
    Exchange(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Exchange {
    pub name: String,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
    /// The `alternate-exchange` argument: where a message goes when this exchange itself
    /// routes it nowhere.
    pub alternate_exchange: Option<String>,
    /// Bindings with this exchange as source: routing key (binding key) -> destination ->
    /// the distinct argument tables bound with that key (a binding's identity includes its
    /// arguments, as in RabbitMQ). Keyed by routing key so that direct routing is one lookup.
    pub bindings: BTreeMap<String, BTreeMap<Destination, Vec<FieldTable>>>,
    /// Number of bindings (all keys, destinations and argument tables).
    pub binding_count: usize,
}

/// The exchanges every vhost starts with (all durable). "" is the default exchange.
pub const BUILT_IN: [(&str, ExchangeKind); 6] = [
    ("", ExchangeKind::Direct),
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
];

/// A string-valued argument (longstr or shortstr), as RabbitMQ reads `alternate-exchange`.
pub fn string_arg(arguments: &FieldTable, key: &str) -> Option<String> {
    match arguments.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

impl Exchange {
    pub fn new(
        name: &str,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Exchange {
        let alternate_exchange = string_arg(&arguments, "alternate-exchange");
        Exchange {
            name: name.to_owned(),
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            alternate_exchange,
            bindings: BTreeMap::new(),
            binding_count: 0,
        }
    }

    /// Adds a binding; false when exactly this binding already existed (binding is idempotent).
    pub fn add_binding(
        &mut self,
        routing_key: &str,
        destination: Destination,
        arguments: &FieldTable,
    ) -> bool {
        let tables = self
            .bindings
            .entry(routing_key.to_owned())
            .or_default()
            .entry(destination)
            .or_default();
        if tables.iter().any(|t| t == arguments) {
            return false;
        }
        tables.push(arguments.clone());
        self.binding_count += 1;
        true
    }

    /// Removes one binding; false when it did not exist (unbinding is idempotent). The second
    /// value tells whether no binding with this key and destination remains.
    pub fn remove_binding(
        &mut self,
        routing_key: &str,
        destination: &Destination,
        arguments: &FieldTable,
    ) -> (bool, bool) {
        let Some(by_dest) = self.bindings.get_mut(routing_key) else {
            return (false, true);
        };
        let Some(tables) = by_dest.get_mut(destination) else {
            return (false, true);
        };
        let Some(pos) = tables.iter().position(|t| t == arguments) else {
            return (false, false);
        };
        tables.remove(pos);
        self.binding_count -= 1;
        let none_left = tables.is_empty();
        if none_left {
            by_dest.remove(destination);
            if by_dest.is_empty() {
                self.bindings.remove(routing_key);
            }
        }
        (true, none_left)
    }

    /// Removes every binding with this key to this destination (the destination is going away).
    pub fn remove_destination(&mut self, routing_key: &str, destination: &Destination) {
        if let Some(by_dest) = self.bindings.get_mut(routing_key) {
            if let Some(tables) = by_dest.remove(destination) {
                self.binding_count -= tables.len();
            }
            if by_dest.is_empty() {
                self.bindings.remove(routing_key);
            }
        }
    }

    /// RabbitMQ's `assert_equivalence` for exchange.declare of an existing exchange: type,
    /// durable, auto_delete, internal and the `alternate-exchange` argument must match.
    /// Returns the detail of the 406 reply text.
    pub fn check_equivalent(
        &self,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: &FieldTable,
    ) -> Result<(), String> {
        let what = format!("for exchange '{}' in vhost '/'", self.name);
        if kind != self.kind {
            return Err(format!(
                "inequivalent arg 'type' {what}: received '{}' but current is '{}'",
                kind.as_str(),
                self.kind.as_str()
            ));
        }
        for (arg, received, current) in [
            ("durable", durable, self.durable),
            ("auto_delete", auto_delete, self.auto_delete),
            ("internal", internal, self.internal),
        ] {
            if received != current {
                return Err(format!("inequivalent arg '{arg}' {what}: received '{received}' but current is '{current}'"));
            }
        }
        let received = string_arg(arguments, "alternate-exchange");
        if received != self.alternate_exchange {
            let show = |v: &Option<String>| match v {
                Some(s) => format!("the value '{s}' of type 'longstr'"),
                None => "none".to_owned(),
            };
            return Err(format!(
                "inequivalent arg 'alternate-exchange' {what}: received {} but current is {}",
                show(&received),
                show(&self.alternate_exchange)
            ));
        }
        Ok(())
    }
}
