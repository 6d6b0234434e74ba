//! Unit tests of the machine, one per rule, each named after the rule and citing the
//! RabbitMQ documentation it follows. `testkit` (below) builds commands and reads effects.

use super::command::{Command, Entry, Origin, Publish, PublishedMessage, Settle};
use super::effect::{Effect, Reply};
use super::routing::{headers_match, topic_matches};
use super::State;
use crate::ids::{ChannelRef, ConnId};
use amq_protocol::types::{AMQPValue, FieldTable};
use testkit::*;

pub(crate) mod testkit {
    use super::super::command::{Command, Entry, Publish, PublishedMessage, Settle};
    use super::super::effect::{Effect, Reply};
    use super::super::State;
    use crate::ids::{ChannelRef, ConnId};
    use amq_protocol::frame::WriteContext;
    use amq_protocol::protocol::basic::{gen_properties, parse_properties, AMQPProperties};
    use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
    use bytes::Bytes;

    pub fn conn(seq: u64) -> ConnId {
        ConnId {
            node: 1,
            epoch: 1,
            seq,
        }
    }

    pub fn chan(seq: u64, number: u16) -> ChannelRef {
        ChannelRef {
            conn: conn(seq),
            number,
            generation: 0,
        }
    }

    pub fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert(ShortString::from(*k), v.clone());
        }
        t
    }

    pub fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()))
    }

    pub fn i(v: i64) -> AMQPValue {
        AMQPValue::LongLongInt(v)
    }

    pub fn encode_props(p: &AMQPProperties) -> Bytes {
        Bytes::from(
            gen_properties(p)(WriteContext::from(Vec::new()))
                .expect("encodes")
                .write,
        )
    }

    pub fn props_headers(raw: &[u8]) -> FieldTable {
        parse_properties(raw)
            .expect("parses")
            .1
            .headers()
            .clone()
            .unwrap_or_default()
    }

    pub fn props_of(raw: &[u8]) -> AMQPProperties {
        parse_properties(raw).expect("parses").1
    }

    pub fn message(body: &str) -> PublishedMessage {
        PublishedMessage {
            properties: encode_props(&AMQPProperties::default()),
            body: Bytes::from(body.to_owned()),
            persistent: false,
            priority: 0,
            expiration_ms: None,
        }
    }

    /// A test broker: applies entries with increasing indexes at a settable clock.
    pub struct Broker {
        pub state: State,
        pub index: u64,
        pub now_ms: u64,
    }

    impl Broker {
        pub fn new() -> Broker {
            Broker {
                state: State::new(),
                index: 0,
                now_ms: 1_000_000,
            }
        }

        pub fn run(&mut self, commands: Vec<Command>) -> Vec<Effect> {
            self.index += 1;
            self.state.apply(
                self.index,
                &Entry {
                    now_ms: self.now_ms,
                    commands,
                    origin: None,
                },
            )
        }

        pub fn one(&mut self, command: Command) -> Vec<Effect> {
            self.run(vec![command])
        }

        pub fn tick(&mut self, advance_ms: u64) -> Vec<Effect> {
            self.now_ms += advance_ms;
            self.run(vec![])
        }

        pub fn queue(&mut self, ch: ChannelRef, name: &str) -> Vec<Effect> {
            self.one(declare_queue(ch, name, FieldTable::default()))
        }

        pub fn ready(&self, name: &str) -> usize {
            self.state.queue(name).map_or(0, |q| q.ready.len())
        }
    }

    pub fn declare_queue(ch: ChannelRef, queue: &str, arguments: FieldTable) -> Command {
        Command::QueueDeclare {
            ch,
            queue: queue.into(),
            server_named: false,
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments,
        }
    }

    pub fn declare_exchange(ch: ChannelRef, exchange: &str, kind: &str) -> Command {
        declare_exchange_args(ch, exchange, kind, FieldTable::default())
    }

    pub fn declare_exchange_args(
        ch: ChannelRef,
        exchange: &str,
        kind: &str,
        arguments: FieldTable,
    ) -> Command {
        Command::ExchangeDeclare {
            ch,
            exchange: exchange.into(),
            kind: kind.into(),
            passive: false,
            durable: false,
            auto_delete: false,
            internal: false,
            nowait: false,
            arguments,
        }
    }

    pub fn bind(ch: ChannelRef, queue: &str, exchange: &str, routing_key: &str) -> Command {
        bind_args(ch, queue, exchange, routing_key, FieldTable::default())
    }

    pub fn bind_args(
        ch: ChannelRef,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Command {
        Command::QueueBind {
            ch,
            queue: queue.into(),
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            nowait: false,
            arguments,
        }
    }

    pub fn publish_msg(
        ch: ChannelRef,
        exchange: &str,
        routing_key: &str,
        message: PublishedMessage,
        confirm_seq: Option<u64>,
        mandatory: bool,
    ) -> Command {
        Command::Publish {
            ch,
            publish: Publish {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
                mandatory,
                confirm_seq,
                message,
            },
        }
    }

    pub fn publish(ch: ChannelRef, exchange: &str, routing_key: &str, body: &str) -> Command {
        publish_msg(ch, exchange, routing_key, message(body), None, false)
    }

    pub fn consume(ch: ChannelRef, queue: &str, tag: &str, no_ack: bool) -> Command {
        Command::Consume {
            ch,
            queue: queue.into(),
            consumer_tag: tag.into(),
            no_local: false,
            no_ack,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        }
    }

    pub fn ack(ch: ChannelRef, delivery_tag: u64, multiple: bool) -> Command {
        Command::Settle {
            ch,
            settle: Settle::Ack {
                delivery_tag,
                multiple,
            },
        }
    }

    pub fn nack(ch: ChannelRef, delivery_tag: u64, multiple: bool, requeue: bool) -> Command {
        Command::Settle {
            ch,
            settle: Settle::Nack {
                delivery_tag,
                multiple,
                requeue,
            },
        }
    }

    pub fn get(ch: ChannelRef, queue: &str, no_ack: bool) -> Command {
        Command::Get {
            ch,
            queue: queue.into(),
            no_ack,
        }
    }

    pub fn qos(ch: ChannelRef, prefetch_count: u16, global: bool) -> Command {
        Command::Qos {
            ch,
            prefetch_size: 0,
            prefetch_count,
            global,
        }
    }

    /// (channel, consumer tag, delivery tag, redelivered, body) of every basic.deliver.
    pub fn deliveries(fx: &[Effect]) -> Vec<(ChannelRef, String, u64, bool, String)> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Deliver {
                    ch,
                    consumer_tag,
                    delivery_tag,
                    redelivered,
                    message,
                } => Some((
                    *ch,
                    consumer_tag.to_string(),
                    *delivery_tag,
                    *redelivered,
                    String::from_utf8_lossy(&message.body).into_owned(),
                )),
                _ => None,
            })
            .collect()
    }

    pub fn bodies(fx: &[Effect]) -> Vec<String> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Deliver { message, .. } | Effect::GetOk { message, .. } => {
                    Some(String::from_utf8_lossy(&message.body).into_owned())
                }
                _ => None,
            })
            .collect()
    }

    pub fn replies(fx: &[Effect]) -> Vec<Reply> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Reply { reply, .. } => Some(reply.clone()),
                _ => None,
            })
            .collect()
    }

    /// The (code, text, class, method) of the first channel error.
    pub fn channel_error(fx: &[Effect]) -> Option<(u16, String, u16, u16)> {
        fx.iter().find_map(|e| match e {
            Effect::ChannelError {
                reply_code,
                reply_text,
                class_id,
                method_id,
                ..
            } => Some((*reply_code, reply_text.clone(), *class_id, *method_id)),
            _ => None,
        })
    }

    pub fn connection_error(fx: &[Effect]) -> Option<(u16, String, u16, u16)> {
        fx.iter().find_map(|e| match e {
            Effect::ConnectionError {
                reply_code,
                reply_text,
                class_id,
                method_id,
                ..
            } => Some((*reply_code, reply_text.clone(), *class_id, *method_id)),
            _ => None,
        })
    }

    pub fn confirms(fx: &[Effect]) -> Vec<(u64, bool)> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Confirm { seq, ack, .. } => Some((*seq, *ack)),
                _ => None,
            })
            .collect()
    }

    pub fn with_headers(body: &str, headers: FieldTable) -> PublishedMessage {
        let mut m = message(body);
        m.properties = encode_props(&AMQPProperties::default().with_headers(headers));
        m
    }

    pub fn with_expiration(body: &str, ms: u64) -> PublishedMessage {
        let mut m = message(body);
        m.properties =
            encode_props(&AMQPProperties::default().with_expiration(ms.to_string().into()));
        m.expiration_ms = Some(ms);
        m
    }

    pub fn with_priority(body: &str, priority: u8) -> PublishedMessage {
        let mut m = message(body);
        m.properties = encode_props(&AMQPProperties::default().with_priority(priority));
        m.priority = priority;
        m
    }
}

const C: ChannelRef = ChannelRef {
    conn: ConnId {
        node: 1,
        epoch: 1,
        seq: 1,
    },
    number: 1,
    generation: 0,
};

fn err_code(fx: &[Effect]) -> u16 {
    channel_error(fx).map(|e| e.0).unwrap_or(0)
}

// ---------------------------------------------------------------- routing

/// https://www.rabbitmq.com/tutorials/amqp-concepts#exchange-default
#[test]
fn default_exchange_routes_to_the_queue_named_by_the_routing_key() {
    let mut b = Broker::new();
    b.queue(C, "q");
    b.one(publish(C, "", "q", "a"));
    b.one(publish(C, "", "other", "b"));
    assert_eq!(b.ready("q"), 1);
}

/// https://www.rabbitmq.com/tutorials/amqp-concepts#exchange-direct
#[test]
fn direct_exchange_routes_on_exact_binding_key() {
    let mut b = Broker::new();
    b.queue(C, "q1");
    b.queue(C, "q2");
    b.one(bind(C, "q1", "amq.direct", "k1"));
    b.one(bind(C, "q2", "amq.direct", "k2"));
    b.one(publish(C, "amq.direct", "k1", "a"));
    assert_eq!((b.ready("q1"), b.ready("q2")), (1, 0));
}

/// https://www.rabbitmq.com/tutorials/amqp-concepts#exchange-fanout
#[test]
fn fanout_exchange_copies_to_every_bound_queue_once() {
    let mut b = Broker::new();
    b.queue(C, "q1");
    b.queue(C, "q2");
    b.one(bind(C, "q1", "amq.fanout", "x"));
    b.one(bind(C, "q1", "amq.fanout", "y"));
    b.one(bind(C, "q2", "amq.fanout", ""));
    b.one(publish(C, "amq.fanout", "whatever", "a"));
    assert_eq!((b.ready("q1"), b.ready("q2")), (1, 1));
}

/// https://www.rabbitmq.com/tutorials/tutorial-five-python ("* exactly one word, # zero or more")
#[test]
fn topic_star_matches_one_word_and_hash_zero_or_more() {
    let cases = [
        ("a.*.c", "a.b.c", true),
        ("a.*.c", "a.c", false),
        ("a.#.c", "a.c", true),
        ("a.#.c", "a.b.b.c", true),
        ("#", "", true),
        ("#", "a.b", true),
        ("*", "", false),
        ("*", "a", true),
        ("*", "a.b", false),
        ("a.#", "a", true),
        ("#.a", "b.a", true),
        ("#.#", "x", true),
        ("a.b", "a.b", true),
        ("a.b", "a.bc", false),
        ("*.b.#", "a.b", true),
        ("", "", true),
        ("", "a", false),
        ("a.*", "a.", true),
        ("#.*.#", "", false),
    ];
    for (pattern, key, want) in cases {
        assert_eq!(topic_matches(pattern, key), want, "{pattern} vs {key}");
    }
    let mut b = Broker::new();
    b.queue(C, "q");
    b.one(bind(C, "q", "amq.topic", "stock.#"));
    b.one(publish(C, "amq.topic", "stock.usd.nyse", "a"));
    b.one(publish(C, "amq.topic", "bond.usd", "b"));
    assert_eq!(b.ready("q"), 1);
}

/// https://www.rabbitmq.com/tutorials/amqp-concepts#exchange-headers
#[test]
fn headers_exchange_matches_all_any_ignores_x_keys_and_void_means_present() {
    let msg = table(&[("a", s("1")), ("b", i(2)), ("x-y", s("z"))]);
    assert!(headers_match(
        &table(&[("a", s("1")), ("b", AMQPValue::LongInt(2))]),
        Some(&msg)
    ));
    assert!(!headers_match(
        &table(&[("a", s("1")), ("c", s("3"))]),
        Some(&msg)
    ));
    assert!(headers_match(
        &table(&[("x-match", s("any")), ("a", s("1")), ("c", s("3"))]),
        Some(&msg)
    ));
    assert!(!headers_match(
        &table(&[("x-match", s("any")), ("c", s("3"))]),
        Some(&msg)
    ));
    // x- keys are ignored by all/any, compared by all-with-x / any-with-x.
    assert!(headers_match(
        &table(&[("a", s("1")), ("x-y", s("nope"))]),
        Some(&msg)
    ));
    assert!(!headers_match(
        &table(&[
            ("x-match", s("all-with-x")),
            ("a", s("1")),
            ("x-y", s("nope"))
        ]),
        Some(&msg)
    ));
    assert!(headers_match(
        &table(&[("x-match", s("any-with-x")), ("x-y", s("z"))]),
        Some(&msg)
    ));
    assert!(!headers_match(
        &table(&[("x-match", s("any")), ("x-y", s("z"))]),
        Some(&msg)
    ));
    // Void binding value: presence.
    assert!(headers_match(&table(&[("b", AMQPValue::Void)]), Some(&msg)));
    assert!(!headers_match(
        &table(&[("c", AMQPValue::Void)]),
        Some(&msg)
    ));
    // all with nothing to compare matches; any does not.
    assert!(headers_match(&table(&[]), None));
    assert!(!headers_match(&table(&[("x-match", s("any"))]), None));

    let mut b = Broker::new();
    b.queue(C, "q");
    b.one(bind_args(
        C,
        "q",
        "amq.headers",
        "",
        table(&[("format", s("pdf"))]),
    ));
    b.one(publish_msg(
        C,
        "amq.headers",
        "",
        with_headers("a", table(&[("format", s("pdf"))])),
        None,
        false,
    ));
    b.one(publish_msg(
        C,
        "amq.headers",
        "",
        with_headers("b", table(&[("format", s("zip"))])),
        None,
        false,
    ));
    assert_eq!(b.ready("q"), 1);
    // x-match must be one of the four modes
    let fx = b.one(bind_args(
        C,
        "q",
        "amq.match",
        "",
        table(&[("x-match", s("some"))]),
    ));
    assert_eq!(
        channel_error(&fx).map(|e| (e.0, e.2, e.3)),
        Some((406, 50, 20))
    );
}

/// https://www.rabbitmq.com/docs/e2e
#[test]
fn exchange_to_exchange_bindings_are_followed_and_queues_get_one_copy() {
    let mut b = Broker::new();
    b.one(declare_exchange(C, "x1", "fanout"));
    b.one(declare_exchange(C, "x2", "fanout"));
    b.queue(C, "q");
    let fx = b.one(Command::ExchangeBind {
        ch: C,
        destination: "x2".into(),
        source: "x1".into(),
        routing_key: "".into(),
        nowait: false,
        arguments: FieldTable::default(),
    });
    assert_eq!(replies(&fx), vec![Reply::ExchangeBindOk]);
    // a cycle x2 -> x1 must not loop
    b.one(Command::ExchangeBind {
        ch: C,
        destination: "x1".into(),
        source: "x2".into(),
        routing_key: "".into(),
        nowait: false,
        arguments: FieldTable::default(),
    });
    b.one(bind(C, "q", "x1", ""));
    b.one(bind(C, "q", "x2", ""));
    b.one(publish(C, "x1", "k", "a"));
    assert_eq!(b.ready("q"), 1);
}

/// https://www.rabbitmq.com/docs/ae
#[test]
fn alternate_exchange_receives_what_the_exchange_cannot_route() {
    let mut b = Broker::new();
    b.one(declare_exchange(C, "ae", "fanout"));
    b.one(declare_exchange_args(
        C,
        "main",
        "direct",
        table(&[("alternate-exchange", s("ae"))]),
    ));
    b.queue(C, "unrouted");
    b.queue(C, "routed");
    b.one(bind(C, "unrouted", "ae", ""));
    b.one(bind(C, "routed", "main", "k"));
    let fx = b.one(publish_msg(C, "main", "nope", message("a"), Some(1), true));
    assert!(!fx.iter().any(|e| matches!(e, Effect::Return { .. })));
    b.one(publish(C, "main", "k", "b"));
    assert_eq!((b.ready("unrouted"), b.ready("routed")), (1, 1));
}

/// https://www.rabbitmq.com/docs/exchanges ("internal exchanges cannot be published to directly")
#[test]
fn internal_exchange_refuses_publish_but_routes_through() {
    let mut b = Broker::new();
    b.one(Command::ExchangeDeclare {
        ch: C,
        exchange: "int".into(),
        kind: "fanout".into(),
        passive: false,
        durable: false,
        auto_delete: false,
        internal: true,
        nowait: false,
        arguments: FieldTable::default(),
    });
    b.one(declare_exchange(C, "front", "fanout"));
    b.queue(C, "q");
    b.one(bind(C, "q", "int", ""));
    b.one(Command::ExchangeBind {
        ch: C,
        destination: "int".into(),
        source: "front".into(),
        routing_key: "".into(),
        nowait: false,
        arguments: FieldTable::default(),
    });
    b.one(publish(C, "front", "", "a"));
    assert_eq!(b.ready("q"), 1);
    let fx = b.one(publish(C, "int", "", "b"));
    assert_eq!(
        channel_error(&fx).map(|e| (e.0, e.2, e.3)),
        Some((403, 60, 40))
    );
}

// ---------------------------------------------------------------- exchanges

/// https://www.rabbitmq.com/docs/exchanges (amq.* names are reserved)
#[test]
fn exchange_names_starting_with_amq_are_reserved_but_built_ins_redeclare() {
    let mut b = Broker::new();
    let fx = b.one(declare_exchange(C, "amq.mine", "direct"));
    assert_eq!(channel_error(&fx).unwrap().0, 403);
    let c2 = chan(1, 2);
    let mut d = declare_exchange(c2, "amq.direct", "direct");
    if let Command::ExchangeDeclare { durable, .. } = &mut d {
        *durable = true;
    }
    assert_eq!(replies(&b.one(d)), vec![Reply::ExchangeDeclareOk]);
    let c3 = chan(1, 3);
    assert_eq!(
        err_code(&b.one(declare_exchange(c3, "amq.direct", "fanout"))),
        406
    );
    assert_eq!(
        err_code(&b.one(Command::ExchangeDelete {
            ch: chan(1, 4),
            exchange: "amq.fanout".into(),
            if_unused: false,
            nowait: false
        })),
        403
    );
    assert_eq!(
        err_code(&b.one(Command::ExchangeDelete {
            ch: chan(1, 5),
            exchange: "".into(),
            if_unused: false,
            nowait: false
        })),
        403
    );
}

/// https://www.rabbitmq.com/amqp-0-9-1-reference#exchange.declare.type (503 command-invalid)
#[test]
fn exchange_declare_of_unknown_type_is_a_connection_error_503() {
    let mut b = Broker::new();
    let fx = b.one(declare_exchange(C, "x", "foo"));
    let (code, text, class, method) = connection_error(&fx).expect("connection error");
    assert_eq!((code, class, method), (503, 40, 10));
    assert_eq!(text, "COMMAND_INVALID - invalid exchange type 'foo'");
    // The connection is quarantined until ConnectionClosed.
    assert!(b.queue(chan(1, 2), "q").is_empty());
    b.one(Command::ConnectionClosed { conn: conn(1) });
    assert!(!b.queue(chan(1, 2), "q").is_empty());
}

/// https://www.rabbitmq.com/amqp-0-9-1-reference#exchange.declare (406 on inequivalent redeclare)
#[test]
fn exchange_redeclare_with_other_type_or_flags_is_precondition_failed() {
    let mut b = Broker::new();
    b.one(declare_exchange(C, "x", "direct"));
    let fx = b.one(declare_exchange(chan(1, 2), "x", "fanout"));
    let (code, text, _, _) = channel_error(&fx).unwrap();
    assert_eq!(code, 406);
    assert_eq!(text, "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'x' in vhost '/': received 'fanout' but current is 'direct'");
    assert_eq!(
        replies(&b.one(declare_exchange(chan(1, 3), "x", "direct"))),
        vec![Reply::ExchangeDeclareOk]
    );
}

/// https://www.rabbitmq.com/amqp-0-9-1-reference#exchange.declare.passive
#[test]
fn passive_exchange_declare_of_missing_exchange_is_not_found() {
    let mut b = Broker::new();
    let fx = b.one(Command::ExchangeDeclare {
        ch: C,
        exchange: "nope".into(),
        kind: "".into(),
        passive: true,
        durable: false,
        auto_delete: false,
        internal: false,
        nowait: false,
        arguments: FieldTable::default(),
    });
    assert_eq!(
        channel_error(&fx).unwrap().1,
        "NOT_FOUND - no exchange 'nope' in vhost '/'"
    );
}

/// https://www.rabbitmq.com/amqp-0-9-1-reference#exchange.delete (RabbitMQ 3.x: idempotent)
#[test]
fn exchange_delete_is_idempotent_and_if_unused_refuses_bound_exchange() {
    let mut b = Broker::new();
    assert_eq!(
        replies(&b.one(Command::ExchangeDelete {
            ch: C,
            exchange: "nope".into(),
            if_unused: false,
            nowait: false
        })),
        vec![Reply::ExchangeDeleteOk]
    );
    b.one(declare_exchange(C, "x", "direct"));
    b.queue(C, "q");
    b.one(bind(C, "q", "x", "k"));
    assert_eq!(
        err_code(&b.one(Command::ExchangeDelete {
            ch: C,
            exchange: "x".into(),
            if_unused: true,
            nowait: false
        })),
        406
    );
    let c2 = chan(1, 2);
    b.one(Command::ExchangeDelete {
        ch: c2,
        exchange: "x".into(),
        if_unused: false,
        nowait: false,
    });
    assert!(!b.state.exchanges.contains_key("x"));
    assert!(b.state.bindings_by_dest.is_empty());
}

/// https://www.rabbitmq.com/docs/exchanges#auto-deletion
#[test]
fn auto_delete_exchange_is_deleted_with_its_last_binding() {
    let mut b = Broker::new();
    let mut d = declare_exchange(C, "ad", "direct");
    if let Command::ExchangeDeclare { auto_delete, .. } = &mut d {
        *auto_delete = true;
    }
    b.one(d);
    b.queue(C, "q");
    b.one(bind(C, "q", "ad", "k1"));
    b.one(bind(C, "q", "ad", "k2"));
    b.one(Command::QueueUnbind {
        ch: C,
        queue: "q".into(),
        exchange: "ad".into(),
        routing_key: "k1".into(),
        arguments: FieldTable::default(),
    });
    assert!(b.state.exchanges.contains_key("ad"));
    // Deleting the bound queue removes the last binding.
    b.one(Command::QueueDelete {
        ch: C,
        queue: "q".into(),
        if_unused: false,
        if_empty: false,
        nowait: false,
    });
    assert!(!b.state.exchanges.contains_key("ad"));
}

// ---------------------------------------------------------------- queues

/// https://www.rabbitmq.com/docs/queues#declaration ("passive declare of a missing queue: 404")
#[test]
fn queue_declare_passive_missing_is_not_found_and_ok_carries_counts() {
    let mut b = Broker::new();
    let passive = |ch, name: &str| Command::QueueDeclare {
        ch,
        queue: name.into(),
        server_named: false,
        passive: true,
        durable: false,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::default(),
    };
    assert_eq!(
        channel_error(&b.one(passive(C, "q"))).unwrap().1,
        "NOT_FOUND - no queue 'q' in vhost '/'"
    );
    let c2 = chan(1, 2);
    b.queue(c2, "q");
    b.one(publish(c2, "", "q", "a"));
    b.one(publish(c2, "", "q", "b"));
    b.one(qos(chan(1, 3), 1, false));
    b.one(consume(chan(1, 3), "q", "t", false));
    let fx = b.one(passive(c2, "q"));
    assert_eq!(
        replies(&fx),
        vec![Reply::QueueDeclareOk {
            queue: "q".into(),
            message_count: 1,
            consumer_count: 1
        }]
    );
}

/// https://www.rabbitmq.com/docs/queues#property-equivalence
#[test]
fn queue_redeclare_with_other_properties_or_arguments_is_precondition_failed() {
    let mut b = Broker::new();
    b.queue(C, "q");
    let mut d = declare_queue(C, "q", FieldTable::default());
    if let Command::QueueDeclare { durable, .. } = &mut d {
        *durable = true;
    }
    let (code, text, class, method) = channel_error(&b.one(d)).unwrap();
    assert_eq!((code, class, method), (406, 50, 10));
    assert_eq!(text, "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/': received 'true' but current is 'false'");
    let fx = b.one(declare_queue(
        chan(1, 2),
        "q",
        table(&[("x-message-ttl", i(5))]),
    ));
    assert_eq!(err_code(&fx), 406);
    // the same arguments with another integer width are equivalent
    b.one(declare_queue(
        chan(1, 3),
        "t",
        table(&[("x-message-ttl", AMQPValue::LongInt(5))]),
    ));
    assert_eq!(
        err_code(&b.one(declare_queue(
            chan(1, 3),
            "t",
            table(&[("x-message-ttl", i(5))])
        ))),
        0
    );
}

/// https://www.rabbitmq.com/docs/queues#optional-arguments (invalid values are refused with 406)
#[test]
fn queue_declare_with_invalid_arguments_is_precondition_failed() {
    let bad = [
        ("x-max-priority", i(300)),
        ("x-max-priority", s("high")),
        ("x-message-ttl", i(-1)),
        ("x-expires", i(0)),
        ("x-overflow", s("explode")),
        ("x-queue-type", s("stream")),
        ("x-dead-letter-routing-key", s("k")),
    ];
    for (n, (key, value)) in bad.into_iter().enumerate() {
        let mut b = Broker::new();
        let fx = b.one(declare_queue(
            chan(1, n as u16 + 1),
            "q",
            table(&[(key, value)]),
        ));
        let (code, text, _, _) = channel_error(&fx).expect(key);
        assert_eq!(code, 406, "{key}");
        assert!(
            text.contains(&format!("invalid arg '{key}' for queue 'q' in vhost '/'")),
            "{text}"
        );
    }
    let mut b = Broker::new();
    assert_eq!(
        err_code(&b.one(declare_queue(C, "q", table(&[("x-max-priority", i(255))])))),
        0
    );
    // quorum queues must be durable (and not exclusive, not auto-delete)
    assert_eq!(
        err_code(&b.one(declare_queue(
            chan(1, 2),
            "qq",
            table(&[("x-queue-type", s("quorum"))])
        ))),
        406
    );
    let mut d = declare_queue(chan(1, 3), "qq", table(&[("x-queue-type", s("quorum"))]));
    if let Command::QueueDeclare { durable, .. } = &mut d {
        *durable = true;
    }
    assert_eq!(err_code(&b.one(d)), 0);
}

/// https://www.rabbitmq.com/docs/queues#names ("amq." is reserved for the broker)
#[test]
fn queue_names_starting_with_amq_are_reserved_unless_server_named() {
    let mut b = Broker::new();
    assert_eq!(err_code(&b.queue(C, "amq.mine")), 403);
    let fx = b.one(Command::QueueDeclare {
        ch: chan(1, 2),
        queue: "amq.gen-abc".into(),
        server_named: true,
        passive: false,
        durable: false,
        exclusive: true,
        auto_delete: true,
        nowait: false,
        arguments: FieldTable::default(),
    });
    assert_eq!(
        replies(&fx),
        vec![Reply::QueueDeclareOk {
            queue: "amq.gen-abc".into(),
            message_count: 0,
            consumer_count: 0
        }]
    );
}

fn exclusive_queue(ch: ChannelRef, name: &str) -> Command {
    Command::QueueDeclare {
        ch,
        queue: name.into(),
        server_named: false,
        passive: false,
        durable: false,
        exclusive: true,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::default(),
    }
}

/// https://www.rabbitmq.com/docs/queues#exclusive-queues
#[test]
fn exclusive_queue_is_locked_to_its_connection_and_deleted_with_it() {
    let mut b = Broker::new();
    b.one(exclusive_queue(C, "ex"));
    let other = chan(2, 1);
    let fx = b.one(exclusive_queue(other, "ex"));
    let (code, text, _, _) = channel_error(&fx).unwrap();
    assert_eq!(code, 405);
    assert!(
        text.starts_with(
            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'ex' in vhost '/'"
        ),
        "{text}"
    );
    for (n, cmd) in [
        consume(chan(2, 2), "ex", "t", false),
        get(chan(2, 3), "ex", false),
        bind(chan(2, 4), "ex", "amq.direct", "k"),
        Command::QueuePurge {
            ch: chan(2, 5),
            queue: "ex".into(),
            nowait: false,
        },
        Command::QueueDelete {
            ch: chan(2, 6),
            queue: "ex".into(),
            if_unused: false,
            if_empty: false,
            nowait: false,
        },
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(err_code(&b.one(cmd)), 405, "case {n}");
    }
    assert!(b.state.queue("ex").is_some());
    b.one(Command::ConnectionClosed { conn: conn(1) });
    assert!(b.state.queue("ex").is_none());
    assert!(b.state.owned_queues.is_empty());
}

/// https://www.rabbitmq.com/docs/queues#temporary-queues (auto-delete after the last consumer)
#[test]
fn auto_delete_queue_goes_when_its_last_consumer_is_cancelled() {
    let mut b = Broker::new();
    let mut d = declare_queue(C, "ad", FieldTable::default());
    if let Command::QueueDeclare { auto_delete, .. } = &mut d {
        *auto_delete = true;
    }
    b.one(d);
    b.one(publish(C, "", "ad", "a"));
    assert!(b.state.queue("ad").is_some(), "never had a consumer");
    b.one(consume(C, "ad", "t1", false));
    b.one(consume(C, "ad", "t2", false));
    b.one(Command::Cancel {
        ch: C,
        consumer_tag: "t1".into(),
        nowait: false,
    });
    assert!(b.state.queue("ad").is_some());
    let fx = b.one(Command::Cancel {
        ch: C,
        consumer_tag: "t2".into(),
        nowait: false,
    });
    assert_eq!(
        replies(&fx),
        vec![Reply::CancelOk {
            consumer_tag: "t2".into()
        }]
    );
    assert!(b.state.queue("ad").is_none());
}

/// https://www.rabbitmq.com/amqp-0-9-1-reference#queue.bind
#[test]
fn binding_needs_existing_queue_and_exchange_and_not_the_default_exchange() {
    let mut b = Broker::new();
    b.queue(C, "q");
    assert_eq!(
        channel_error(&b.one(bind(C, "q", "nope", "k"))).unwrap().1,
        "NOT_FOUND - no exchange 'nope' in vhost '/'"
    );
    assert_eq!(
        channel_error(&b.one(bind(chan(1, 2), "nope", "amq.direct", "k")))
            .unwrap()
            .1,
        "NOT_FOUND - no queue 'nope' in vhost '/'"
    );
    assert_eq!(err_code(&b.one(bind(chan(1, 3), "q", "", "k"))), 403);
    let fx = b.one(Command::QueueUnbind {
        ch: chan(1, 4),
        queue: "q".into(),
        exchange: "amq.direct".into(),
        routing_key: "never".into(),
        arguments: FieldTable::default(),
    });
    assert_eq!(replies(&fx), vec![Reply::QueueUnbindOk]);
    // bindings are idempotent
    b.one(bind(chan(1, 4), "q", "amq.direct", "k"));
    b.one(bind(chan(1, 4), "q", "amq.direct", "k"));
    assert_eq!(b.state.exchanges["amq.direct"].binding_count, 1);
}

/// https://www.rabbitmq.com/amqp-0-9-1-reference#queue.delete
#[test]
fn queue_delete_checks_if_unused_and_if_empty_and_cancels_consumers() {
    let mut b = Broker::new();
    let fx = b.one(Command::QueueDelete {
        ch: C,
        queue: "nope".into(),
        if_unused: false,
        if_empty: false,
        nowait: false,
    });
    assert_eq!(
        replies(&fx),
        vec![Reply::QueueDeleteOk { message_count: 0 }]
    );
    b.queue(C, "q");
    b.one(publish(C, "", "q", "a"));
    let c2 = chan(1, 2);
    assert_eq!(
        err_code(&b.one(Command::QueueDelete {
            ch: c2,
            queue: "q".into(),
            if_unused: false,
            if_empty: true,
            nowait: false
        })),
        406
    );
    let c3 = chan(1, 3);
    b.one(consume(c3, "q", "t", false));
    b.one(publish(C, "", "q", "b"));
    let c4 = chan(1, 4);
    assert_eq!(
        err_code(&b.one(Command::QueueDelete {
            ch: c4,
            queue: "q".into(),
            if_unused: true,
            if_empty: false,
            nowait: false
        })),
        406
    );
    let fx = b.one(Command::QueueDelete {
        ch: C,
        queue: "q".into(),
        if_unused: false,
        if_empty: false,
        nowait: false,
    });
    assert!(fx.contains(&Effect::CancelConsumer {
        ch: c3,
        consumer_tag: "t".into()
    }));
    assert_eq!(
        replies(&fx),
        vec![Reply::QueueDeleteOk { message_count: 0 }]
    );
    assert!(b.state.consumers.is_empty());
    // the unacked deliveries of the deleted queue are discarded; acking them is harmless
    assert_eq!(err_code(&b.one(ack(c3, 2, false))), 0);
    assert_eq!(b.state.stats.enqueued, b.state.stats.removed);
}

/// https://www.rabbitmq.com/amqp-0-9-1-reference#queue.purge (ready messages only)
#[test]
fn purge_removes_ready_messages_only() {
    let mut b = Broker::new();
    b.queue(C, "q");
    for n in 0..3 {
        b.one(publish(C, "", "q", &n.to_string()));
    }
    b.one(get(C, "q", false));
    let fx = b.one(Command::QueuePurge {
        ch: C,
        queue: "q".into(),
        nowait: false,
    });
    assert_eq!(replies(&fx), vec![Reply::QueuePurgeOk { message_count: 2 }]);
    assert_eq!(b.state.queue("q").unwrap().unacked_count, 1);
}

// ---------------------------------------------------------------- publish

/// https://www.rabbitmq.com/docs/channels#error-handling (404 closes the channel; the rest of
/// the pipeline on that channel is ignored until it is closed)
#[test]
fn publish_to_missing_exchange_closes_channel_and_later_commands_are_ignored() {
    let mut b = Broker::new();
    let fx = b.run(vec![
        publish_msg(C, "nope", "k", message("a"), Some(1), false),
        declare_queue(C, "q", FieldTable::default()),
    ]);
    assert_eq!(fx.len(), 1, "{fx:?}");
    let (code, text, class, method) = channel_error(&fx).unwrap();
    assert_eq!((code, class, method), (404, 60, 40));
    assert_eq!(text, "NOT_FOUND - no exchange 'nope' in vhost '/'");
    assert!(b.state.errored_channels.contains(&C));
    assert_eq!(
        replies(&b.one(Command::ChannelClosed { ch: C })),
        vec![Reply::ChannelCloseOk]
    );
    assert!(b.state.errored_channels.is_empty());
    // A new opening of the channel number is a new ChannelRef.
    let reopened = ChannelRef { generation: 1, ..C };
    assert!(!b.queue(reopened, "q").is_empty());
}

/// https://www.rabbitmq.com/docs/publishers#unroutable (basic.return before basic.ack)
#[test]
fn mandatory_unroutable_publish_is_returned_before_its_confirm() {
    let mut b = Broker::new();
    let fx = b.one(publish_msg(
        C,
        "amq.direct",
        "nowhere",
        message("a"),
        Some(7),
        true,
    ));
    assert!(
        matches!(&fx[0], Effect::Return { reply_code: 312, reply_text, .. } if reply_text == "NO_ROUTE")
    );
    assert_eq!(
        fx[1],
        Effect::Confirm {
            ch: C,
            seq: 7,
            ack: true
        }
    );
    assert_eq!(fx.len(), 2);
    let fx = b.one(publish_msg(
        C,
        "amq.direct",
        "nowhere",
        message("a"),
        Some(8),
        false,
    ));
    assert_eq!(
        fx,
        vec![Effect::Confirm {
            ch: C,
            seq: 8,
            ack: true
        }]
    );
}

/// https://www.rabbitmq.com/docs/maxlength#overflow-behaviour (reject-publish nacks)
#[test]
fn reject_publish_overflow_nacks_the_publish() {
    let mut b = Broker::new();
    b.one(declare_queue(
        C,
        "q",
        table(&[("x-max-length", i(1)), ("x-overflow", s("reject-publish"))]),
    ));
    assert_eq!(
        confirms(&b.one(publish_msg(C, "", "q", message("a"), Some(1), false))),
        vec![(1, true)]
    );
    assert_eq!(
        confirms(&b.one(publish_msg(C, "", "q", message("b"), Some(2), false))),
        vec![(2, false)]
    );
    assert_eq!(b.ready("q"), 1);
}

/// https://www.rabbitmq.com/docs/maxlength (drop-head by count and by bytes, dead-lettered "maxlen")
#[test]
fn max_length_drops_from_the_head_and_dead_letters_maxlen() {
    let mut b = Broker::new();
    b.one(declare_exchange(C, "dlx", "fanout"));
    b.queue(C, "dead");
    b.one(bind(C, "dead", "dlx", ""));
    b.one(declare_queue(
        C,
        "q",
        table(&[("x-max-length", i(2)), ("x-dead-letter-exchange", s("dlx"))]),
    ));
    for n in 1..=3 {
        b.one(publish(C, "", "q", &n.to_string()));
    }
    assert_eq!(b.ready("q"), 2);
    assert_eq!(bodies(&b.one(get(C, "q", true))), vec!["2"]);
    let fx = b.one(get(C, "dead", true));
    assert_eq!(bodies(&fx), vec!["1"]);
    let Effect::GetOk { message: got, .. } = &fx[0] else {
        panic!()
    };
    let h = props_headers(&got.properties);
    assert_eq!(h.inner().get("x-first-death-reason"), Some(&s("maxlen")));

    b.one(declare_queue(
        C,
        "bytes",
        table(&[("x-max-length-bytes", i(5))]),
    ));
    b.one(publish(C, "", "bytes", "abc"));
    b.one(publish(C, "", "bytes", "def"));
    assert_eq!(b.ready("bytes"), 1);
    // reject-publish-dlx refuses and dead-letters the new message
    b.one(declare_queue(
        C,
        "rp",
        table(&[
            ("x-max-length", i(1)),
            ("x-overflow", s("reject-publish-dlx")),
            ("x-dead-letter-exchange", s("dlx")),
        ]),
    ));
    b.one(publish(C, "", "rp", "keep"));
    assert_eq!(
        confirms(&b.one(publish_msg(C, "", "rp", message("refused"), Some(1), false))),
        vec![(1, false)]
    );
    assert_eq!(bodies(&b.one(get(C, "dead", true))), vec!["refused"]);
}

// ---------------------------------------------------------------- TTL, expiry, dead letters

/// https://www.rabbitmq.com/docs/ttl#per-queue-message-ttl
#[test]
fn queue_message_ttl_expires_messages_on_tick_and_dead_letters_them_with_x_death() {
    let mut b = Broker::new();
    b.one(declare_exchange(C, "dlx", "direct"));
    b.queue(C, "dead");
    b.one(bind(C, "dead", "dlx", "k"));
    b.one(declare_queue(
        C,
        "q",
        table(&[
            ("x-message-ttl", i(1000)),
            ("x-dead-letter-exchange", s("dlx")),
        ]),
    ));
    b.one(publish(C, "", "k", "ignored"));
    b.one(publish(C, "", "q", "a"));
    b.tick(999);
    assert_eq!(b.ready("q"), 1);
    b.one(Command::QueueBind {
        ch: C,
        queue: "dead".into(),
        exchange: "dlx".into(),
        routing_key: "q".into(),
        nowait: false,
        arguments: FieldTable::default(),
    });
    b.tick(1);
    assert_eq!((b.ready("q"), b.ready("dead")), (0, 1));
    let fx = b.one(get(C, "dead", true));
    let Effect::GetOk { message, .. } = &fx[0] else {
        panic!("{fx:?}")
    };
    assert_eq!(message.exchange, "dlx");
    assert_eq!(message.routing_key, "q");
    let h = props_headers(&message.properties);
    let Some(AMQPValue::FieldArray(deaths)) = h.inner().get("x-death") else {
        panic!("{h:?}")
    };
    let AMQPValue::FieldTable(d) = &deaths.as_slice()[0] else {
        panic!()
    };
    assert_eq!(d.inner().get("reason"), Some(&s("expired")));
    assert_eq!(d.inner().get("queue"), Some(&s("q")));
    assert_eq!(d.inner().get("exchange"), Some(&s("")));
    assert_eq!(d.inner().get("count"), Some(&i(1)));
    assert_eq!(d.inner().get("time"), Some(&AMQPValue::Timestamp(1001)));
    let AMQPValue::FieldArray(keys) = d.inner().get("routing-keys").unwrap() else {
        panic!()
    };
    assert_eq!(keys.as_slice(), &[s("q")]);
}

/// https://www.rabbitmq.com/docs/ttl#per-message-ttl-in-publishers (min of both; expiration removed when dead-lettered)
#[test]
fn per_message_expiration_and_queue_ttl_take_the_smaller_and_expiration_is_removed_on_dead_lettering(
) {
    let mut b = Broker::new();
    b.one(declare_exchange(C, "dlx", "fanout"));
    b.queue(C, "dead");
    b.one(bind(C, "dead", "dlx", ""));
    b.one(declare_queue(
        C,
        "q",
        table(&[
            ("x-message-ttl", i(5000)),
            ("x-dead-letter-exchange", s("dlx")),
        ]),
    ));
    b.one(publish_msg(
        C,
        "",
        "q",
        with_expiration("short", 100),
        None,
        false,
    ));
    b.one(publish_msg(
        C,
        "",
        "q",
        with_expiration("long", 60_000),
        None,
        false,
    ));
    b.tick(100);
    assert_eq!(b.ready("q"), 1);
    let fx = b.one(get(C, "dead", true));
    let Effect::GetOk { message, .. } = &fx[0] else {
        panic!()
    };
    assert!(props_of(&message.properties).expiration().is_none());
    b.tick(4900);
    assert_eq!(b.ready("q"), 0);
}

/// https://www.rabbitmq.com/docs/ttl ("TTL of 0 ... expire unless delivered to a consumer immediately")
#[test]
fn ttl_zero_messages_reach_a_waiting_consumer_or_expire_at_once() {
    let mut b = Broker::new();
    b.one(declare_queue(C, "q", table(&[("x-message-ttl", i(0))])));
    b.one(publish(C, "", "q", "lost"));
    assert_eq!(b.ready("q"), 0);
    b.one(consume(C, "q", "t", false));
    let fx = b.one(publish(C, "", "q", "kept"));
    assert_eq!(bodies(&fx), vec!["kept"]);
}

/// https://www.rabbitmq.com/docs/ttl#queue-ttl
#[test]
fn x_expires_deletes_an_unused_queue_but_not_one_with_consumers() {
    let mut b = Broker::new();
    b.one(declare_queue(C, "q", table(&[("x-expires", i(1000))])));
    b.one(declare_queue(C, "busy", table(&[("x-expires", i(1000))])));
    b.one(consume(C, "busy", "t", false));
    b.tick(500);
    b.one(get(C, "q", true)); // basic.get counts as use
    b.tick(999);
    assert!(b.state.queue("q").is_some());
    b.tick(1);
    assert!(b.state.queue("q").is_none());
    assert!(b.state.queue("busy").is_some());
    b.one(Command::Cancel {
        ch: C,
        consumer_tag: "t".into(),
        nowait: false,
    });
    b.tick(1000);
    assert!(b.state.queue("busy").is_none());
}

/// https://www.rabbitmq.com/docs/dlx#routing (x-dead-letter-routing-key; rejected with requeue=false)
#[test]
fn rejected_messages_are_dead_lettered_with_the_dead_letter_routing_key() {
    let mut b = Broker::new();
    b.one(declare_exchange(C, "dlx", "direct"));
    b.queue(C, "dead");
    b.one(bind(C, "dead", "dlx", "dk"));
    b.one(declare_queue(
        C,
        "q",
        table(&[
            ("x-dead-letter-exchange", s("dlx")),
            ("x-dead-letter-routing-key", s("dk")),
        ]),
    ));
    b.one(publish(C, "", "q", "a"));
    b.one(get(C, "q", false));
    b.one(nack(C, 1, false, false));
    let fx = b.one(get(C, "dead", true));
    let Effect::GetOk { message, .. } = &fx[0] else {
        panic!("{fx:?}")
    };
    assert_eq!(message.routing_key, "dk");
    assert_eq!(
        props_headers(&message.properties)
            .inner()
            .get("x-first-death-reason"),
        Some(&s("rejected"))
    );
    // A missing dead-letter exchange drops the message.
    b.one(declare_queue(
        C,
        "q2",
        table(&[("x-dead-letter-exchange", s("missing"))]),
    ));
    b.one(publish(C, "", "q2", "b"));
    b.one(get(C, "q2", false));
    b.one(nack(C, 3, false, false));
    assert_eq!(b.state.stats.enqueued, b.state.stats.removed);
}

/// https://www.rabbitmq.com/docs/dlx ("dead-lettering cycles ... dropped if there was no rejection")
#[test]
fn dead_letter_cycle_of_expired_messages_is_dropped() {
    let mut b = Broker::new();
    // q dead-letters to itself via the default exchange.
    b.one(declare_queue(
        C,
        "q",
        table(&[("x-message-ttl", i(10)), ("x-dead-letter-exchange", s(""))]),
    ));
    b.one(publish(C, "", "q", "a"));
    b.tick(10);
    assert_eq!(b.ready("q"), 0);
    // a rejected message may come back to its own queue, with count 1 then 2
    b.one(declare_queue(
        C,
        "r",
        table(&[("x-dead-letter-exchange", s(""))]),
    ));
    b.one(publish(C, "", "r", "b"));
    b.one(get(C, "r", false));
    b.one(nack(C, 1, false, false));
    assert_eq!(b.ready("r"), 1);
    b.one(get(C, "r", false));
    b.one(nack(C, 2, false, false));
    let fx = b.one(get(C, "r", false));
    let Effect::GetOk { message, .. } = &fx[0] else {
        panic!()
    };
    let h = props_headers(&message.properties);
    let Some(AMQPValue::FieldArray(deaths)) = h.inner().get("x-death") else {
        panic!()
    };
    assert_eq!(deaths.as_slice().len(), 1);
    let AMQPValue::FieldTable(d) = &deaths.as_slice()[0] else {
        panic!()
    };
    assert_eq!(d.inner().get("count"), Some(&i(2)));
}

/// https://www.rabbitmq.com/docs/priority
#[test]
fn priority_queue_delivers_higher_priority_first_and_fifo_within_a_priority() {
    let mut b = Broker::new();
    b.one(declare_queue(C, "p", table(&[("x-max-priority", i(5))])));
    for (body, prio) in [("l1", 1), ("h1", 9), ("m1", 3), ("h2", 5), ("l2", 1)] {
        b.one(publish_msg(
            C,
            "",
            "p",
            with_priority(body, prio),
            None,
            false,
        ));
    }
    let got: Vec<String> = (0..5)
        .flat_map(|_| bodies(&b.one(get(C, "p", true))))
        .collect();
    assert_eq!(got, vec!["h1", "h2", "m1", "l1", "l2"]);
    // without x-max-priority, priority is ignored
    b.queue(C, "fifo");
    b.one(publish_msg(
        C,
        "",
        "fifo",
        with_priority("a", 1),
        None,
        false,
    ));
    b.one(publish_msg(
        C,
        "",
        "fifo",
        with_priority("b", 9),
        None,
        false,
    ));
    assert_eq!(bodies(&b.one(get(C, "fifo", true))), vec!["a"]);
}

// ---------------------------------------------------------------- publisher flow control

fn flows(fx: &[Effect]) -> usize {
    fx.iter()
        .filter(|e| matches!(e, Effect::Flow { conn } if *conn == C.conn))
        .count()
}

/// A queue whose consumers hold their whole prefetch and leave FLOW_BACKLOG ready messages
/// slows its publishers: one `Flow` per entry for the publishing connection, none while the
/// backlog is smaller, and none for a queue without consumers (filling a queue to be read
/// later is not throttled).
#[test]
fn a_backlog_in_a_queue_with_consumers_slows_its_publishers_once_per_entry() {
    let mut b = Broker::new();
    b.queue(C, "slow");
    b.queue(C, "store");
    b.one(qos(C, 1, false));
    b.one(consume(C, "slow", "c1", false));
    // The consumer takes one; the rest wait.
    let below: Vec<Command> = (0..=super::FLOW_BACKLOG)
        .map(|n| publish(C, "", "slow", &n.to_string()))
        .collect();
    let fx = b.run(below);
    assert_eq!(b.ready("slow"), super::FLOW_BACKLOG);
    // The entry's last publish made the backlog reach the mark: one Flow.
    assert_eq!(flows(&fx), 1);
    let fx = b.run(vec![
        publish(C, "", "slow", "x"),
        publish(C, "", "slow", "y"),
        publish(C, "", "slow", "z"),
    ]);
    assert_eq!(flows(&fx), 1, "one per entry, not one per publish");
    // Without consumers, a backlog is just a queue being filled.
    let fill: Vec<Command> = (0..super::FLOW_BACKLOG + 10)
        .map(|n| publish(C, "", "store", &n.to_string()))
        .collect();
    assert_eq!(flows(&b.run(fill)), 0);
    // Once the consumer is gone from "slow", its backlog no longer slows anyone.
    b.one(Command::Cancel {
        ch: C,
        consumer_tag: "c1".into(),
        nowait: false,
    });
    assert_eq!(flows(&b.one(publish(C, "", "slow", "w"))), 0);
}

/// Deliveries a consumer holds count as falling behind too, before any message is left ready:
/// FLOW_UNACKED of them slow the publisher, and a consumer that acknowledges in large batches
/// is allowed three of its batches before it counts as behind.
#[test]
fn deliveries_held_unacknowledged_slow_publishers_by_the_consumers_ack_batch() {
    let mut b = Broker::new();
    b.queue(C, "q");
    b.one(consume(C, "q", "c1", false));
    let unacked = super::FLOW_UNACKED as usize;
    let upto = |from: usize, to: usize| -> Vec<Command> {
        (from..to)
            .map(|n| publish(C, "", "q", &n.to_string()))
            .collect()
    };
    assert_eq!(flows(&b.run(upto(0, unacked - 1))), 0, "below the mark");
    assert_eq!(b.ready("q"), 0, "everything was delivered");
    assert_eq!(flows(&b.one(publish(C, "", "q", "at the mark"))), 1);
    // One ack covering five sixths of them: from now on three times that is the mark.
    let batch = unacked * 5 / 6;
    b.one(ack(C, batch as u64, true));
    let held = unacked - batch;
    assert_eq!(
        flows(&b.run(upto(0, 3 * batch - held - 1))),
        0,
        "below three batches"
    );
    assert_eq!(flows(&b.one(publish(C, "", "q", "three batches"))), 1);
}

/// A publisher that waits on confirms is slowed at FLOW_UNACKED_CONFIRMING deliveries held,
/// one that does not only at FLOW_UNACKED: the first is paced by the log, not by its
/// consumers, and would otherwise let them fall far behind.
#[test]
fn confirming_publishers_are_slowed_at_a_lower_unacked_mark() {
    let mut b = Broker::new();
    b.queue(C, "q");
    b.one(consume(C, "q", "c1", false));
    let mark = super::FLOW_UNACKED_CONFIRMING;
    let confirmed = |n: u64| publish_msg(C, "", "q", message(&n.to_string()), Some(n), false);
    assert_eq!(
        flows(&b.run((1..mark).map(confirmed).collect())),
        0,
        "below the mark"
    );
    assert_eq!(flows(&b.one(confirmed(mark))), 1, "at the mark");
    // The same queue, the same deliveries held: a publisher without confirms goes on.
    assert_eq!(flows(&b.one(publish(C, "", "q", "no confirm"))), 0);
}

// ---------------------------------------------------------------- consumers and acks

/// https://www.rabbitmq.com/docs/confirms#automatic-requeueing (back in place, redelivered)
#[test]
fn requeued_messages_return_to_their_original_position_marked_redelivered() {
    let mut b = Broker::new();
    b.queue(C, "q");
    for n in 1..=3 {
        b.one(publish(C, "", "q", &n.to_string()));
    }
    b.one(get(C, "q", false));
    b.one(get(C, "q", false));
    b.one(nack(C, 1, false, true));
    let fx = b.one(get(C, "q", true));
    assert!(
        matches!(
            &fx[0],
            Effect::GetOk {
                redelivered: true,
                message_count: 1,
                ..
            }
        ),
        "{fx:?}"
    );
    assert_eq!(bodies(&fx), vec!["1"]);
    // closing the channel requeues tag 2 to its place before "3"
    b.one(Command::ChannelClosed { ch: C });
    let c2 = chan(1, 2);
    assert_eq!(bodies(&b.one(get(c2, "q", true))), vec!["2"]);
}

/// https://www.rabbitmq.com/amqp-0-9-1-reference#basic.consume (530 on tag reuse; 403 exclusive)
#[test]
fn consumer_tag_reuse_is_not_allowed_and_exclusive_consumers_are_alone() {
    let mut b = Broker::new();
    b.queue(C, "q");
    b.one(consume(C, "q", "t", false));
    let fx = b.one(consume(C, "q", "t", false));
    let (code, text, class, method) = connection_error(&fx).unwrap();
    assert_eq!((code, class, method), (530, 60, 20));
    assert_eq!(text, "NOT_ALLOWED - attempt to reuse consumer tag 't'");
    assert!(
        b.state.consumers.is_empty(),
        "the connection's consumers are gone"
    );

    let c = chan(2, 1);
    b.one(consume(c, "q", "a", false));
    let mut ex = consume(chan(2, 2), "q", "b", false);
    if let Command::Consume { exclusive, .. } = &mut ex {
        *exclusive = true;
    }
    let (code, text, _, _) = channel_error(&b.one(ex.clone())).unwrap();
    assert_eq!(
        (code, text.as_str()),
        (
            403,
            "ACCESS_REFUSED - queue 'q' in vhost '/' in exclusive use"
        )
    );
    b.one(Command::Cancel {
        ch: c,
        consumer_tag: "a".into(),
        nowait: false,
    });
    if let Command::Consume { ch, .. } = &mut ex {
        *ch = chan(2, 3);
    }
    b.one(ex);
    assert_eq!(err_code(&b.one(consume(chan(2, 4), "q", "c", false))), 403);
    assert_eq!(
        err_code(&b.one(consume(chan(2, 5), "missing", "c", false))),
        404
    );
}

/// https://www.rabbitmq.com/amqp-0-9-1-reference#basic.consume-ok (before any delivery)
#[test]
fn consume_ok_comes_before_the_first_delivery_and_consumers_get_round_robin() {
    let mut b = Broker::new();
    b.queue(C, "q");
    b.one(publish(C, "", "q", "1"));
    let fx = b.one(consume(C, "q", "a", false));
    assert_eq!(
        fx[0],
        Effect::Reply {
            ch: C,
            reply: Reply::ConsumeOk {
                consumer_tag: "a".into()
            }
        }
    );
    assert_eq!(deliveries(&fx[1..]).len(), 1);
    b.one(consume(C, "q", "b", false));
    let fx = b.run(
        (2..=5)
            .map(|n| publish(C, "", "q", &n.to_string()))
            .collect(),
    );
    let tags: Vec<String> = deliveries(&fx).into_iter().map(|d| d.1).collect();
    assert_eq!(tags, vec!["a", "b", "a", "b"]);
    // delivery tags count per channel from 1
    let dtags: Vec<u64> = deliveries(&fx).into_iter().map(|d| d.2).collect();
    assert_eq!(dtags, vec![2, 3, 4, 5]);
}

/// https://www.rabbitmq.com/docs/consumer-prefetch (global=false per new consumer; global=true shared)
#[test]
fn prefetch_limits_unacked_deliveries_per_consumer_and_per_channel() {
    let mut b = Broker::new();
    b.queue(C, "q");
    b.one(qos(C, 2, false));
    b.one(consume(C, "q", "a", false));
    let fx = b.run(
        (0..5)
            .map(|n| publish(C, "", "q", &n.to_string()))
            .collect(),
    );
    assert_eq!(deliveries(&fx).len(), 2);
    let fx = b.one(ack(C, 1, false));
    assert_eq!(bodies(&fx), vec!["2"]);
    let fx = b.one(ack(C, 3, true));
    assert_eq!(bodies(&fx), vec!["3", "4"]);

    // global: two consumers share one limit of 1
    let c2 = chan(1, 2);
    b.queue(c2, "g");
    b.one(qos(c2, 1, true));
    b.one(consume(c2, "g", "x", false));
    b.one(consume(c2, "g", "y", false));
    let fx = b.run(
        (0..3)
            .map(|n| publish(c2, "", "g", &n.to_string()))
            .collect(),
    );
    assert_eq!(deliveries(&fx).len(), 1);
    // no_ack consumers are not limited
    let c3 = chan(1, 3);
    b.queue(c3, "n");
    b.one(qos(c3, 1, false));
    b.one(consume(c3, "n", "z", true));
    let fx = b.run(
        (0..3)
            .map(|n| publish(c3, "", "n", &n.to_string()))
            .collect(),
    );
    assert_eq!(deliveries(&fx).len(), 3);
    assert!(b.state.channels[&c3].unacked.is_empty());
}

/// https://www.rabbitmq.com/amqp-0-9-1-reference#basic.qos.prefetch-size (RabbitMQ: 540)
#[test]
fn prefetch_size_is_not_implemented() {
    let mut b = Broker::new();
    let fx = b.one(Command::Qos {
        ch: C,
        prefetch_size: 10,
        prefetch_count: 0,
        global: false,
    });
    assert_eq!(connection_error(&fx).map(|e| e.0), Some(540));
}

/// https://www.rabbitmq.com/amqp-0-9-1-reference#channel.flow
#[test]
fn channel_flow_stops_and_resumes_deliveries() {
    let mut b = Broker::new();
    b.queue(C, "q");
    b.one(consume(C, "q", "a", true));
    assert_eq!(
        replies(&b.one(Command::Flow {
            ch: C,
            active: false
        })),
        vec![Reply::FlowOk { active: false }]
    );
    assert!(deliveries(&b.one(publish(C, "", "q", "1"))).is_empty());
    let fx = b.one(Command::Flow {
        ch: C,
        active: true,
    });
    assert_eq!(
        fx[0],
        Effect::Reply {
            ch: C,
            reply: Reply::FlowOk { active: true }
        }
    );
    assert_eq!(bodies(&fx), vec!["1"]);
}

/// https://www.rabbitmq.com/docs/confirms#consumer-acks-multiple-parameter ("unknown delivery tag")
#[test]
fn settling_an_unknown_or_settled_tag_is_precondition_failed() {
    let mut b = Broker::new();
    b.queue(C, "q");
    b.one(publish(C, "", "q", "a"));
    b.one(get(C, "q", false));
    b.one(ack(C, 1, false));
    let (code, text, class, method) = channel_error(&b.one(ack(C, 1, false))).unwrap();
    assert_eq!(
        (code, text.as_str(), class, method),
        (406, "PRECONDITION_FAILED - unknown delivery tag 1", 60, 80)
    );
    let c2 = chan(1, 2);
    assert_eq!(
        channel_error(&b.one(nack(c2, 5, false, true))).map(|e| (e.0, e.3)),
        Some((406, 120))
    );
    // multiple with tag 0 settles everything (and nothing is not an error)
    let c3 = chan(1, 3);
    assert_eq!(err_code(&b.one(ack(c3, 0, true))), 0);
    for n in 0..3 {
        b.one(publish(c3, "", "q", &n.to_string()));
        b.one(get(c3, "q", false));
    }
    b.one(ack(c3, 0, true));
    assert!(b.state.channels[&c3].unacked.is_empty());
    assert_eq!(b.state.stats.enqueued, b.state.stats.removed);
}

/// https://www.rabbitmq.com/amqp-0-9-1-reference#basic.get
#[test]
fn basic_get_returns_get_empty_or_get_ok_with_the_remaining_count() {
    let mut b = Broker::new();
    assert_eq!(err_code(&b.one(get(C, "q", false))), 404);
    let c = chan(1, 2);
    b.queue(c, "q");
    assert_eq!(replies(&b.one(get(c, "q", false))), vec![Reply::GetEmpty]);
    b.one(publish(c, "", "q", "a"));
    b.one(publish(c, "", "q", "b"));
    let fx = b.one(get(c, "q", false));
    assert!(
        matches!(
            &fx[0],
            Effect::GetOk {
                delivery_tag: 1,
                message_count: 1,
                redelivered: false,
                ..
            }
        ),
        "{fx:?}"
    );
    assert_eq!(b.state.channels[&c].unacked.len(), 1);
}

/// https://www.rabbitmq.com/amqp-0-9-1-reference#basic.recover
#[test]
fn recover_redelivers_every_unacked_delivery_of_the_channel() {
    let mut b = Broker::new();
    b.queue(C, "q");
    b.one(consume(C, "q", "a", false));
    b.one(publish(C, "", "q", "1"));
    b.one(publish(C, "", "q", "2"));
    let fx = b.one(Command::Recover {
        ch: C,
        requeue: true,
    });
    assert_eq!(
        fx[0],
        Effect::Reply {
            ch: C,
            reply: Reply::RecoverOk
        }
    );
    let d = deliveries(&fx);
    assert_eq!(
        d.iter()
            .map(|d| (d.2, d.3, d.4.as_str()))
            .collect::<Vec<_>>(),
        vec![(3, true, "1"), (4, true, "2")]
    );
}

/// https://www.rabbitmq.com/docs/semantics#tx
#[test]
fn tx_commit_applies_publishes_and_settlements_or_nothing() {
    let mut b = Broker::new();
    b.queue(C, "q");
    b.one(publish(C, "", "q", "a"));
    b.one(get(C, "q", false));
    let p = |body: &str| Publish {
        exchange: "".into(),
        routing_key: "q".into(),
        mandatory: false,
        confirm_seq: None,
        message: message(body),
    };
    let fx = b.one(Command::TxCommit {
        ch: C,
        publishes: vec![p("b")],
        settles: vec![Settle::Ack {
            delivery_tag: 1,
            multiple: false,
        }],
    });
    assert_eq!(replies(&fx), vec![Reply::TxCommitOk]);
    assert_eq!(b.ready("q"), 1);
    assert!(b.state.channels[&C].unacked.is_empty());
    let fx = b.one(Command::TxCommit {
        ch: C,
        publishes: vec![p("c")],
        settles: vec![Settle::Ack {
            delivery_tag: 9,
            multiple: false,
        }],
    });
    assert_eq!(channel_error(&fx).map(|e| e.0), Some(406));
    assert!(replies(&fx).is_empty());
    assert_eq!(b.ready("q"), 1, "nothing of the failed transaction applied");
}

/// https://www.rabbitmq.com/docs/channels#closing (deliveries requeued, consumers gone)
#[test]
fn channel_close_requeues_deliveries_and_forgets_consumers() {
    let mut b = Broker::new();
    b.queue(C, "q");
    b.one(consume(C, "q", "a", false));
    b.one(publish(C, "", "q", "1"));
    let other = chan(2, 1);
    b.one(consume(other, "q", "b", false));
    let fx = b.one(Command::ChannelClosed { ch: C });
    let d = deliveries(&fx);
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].0, d[0].3), (other, true));
    assert_eq!(replies(&fx), vec![Reply::ChannelCloseOk]);
    assert!(!b.state.channels.contains_key(&C));
    // ChannelClosed of an unknown channel is still answered.
    assert_eq!(
        replies(&b.one(Command::ChannelClosed { ch: chan(9, 9) })),
        vec![Reply::ChannelCloseOk]
    );
}

/// A channel error forgets the channel: its deliveries are requeued and its consumers gone.
#[test]
fn channel_error_requeues_and_cancels_like_a_close() {
    let mut b = Broker::new();
    b.queue(C, "q");
    b.one(consume(C, "q", "a", false));
    b.one(publish(C, "", "q", "1"));
    let fx = b.one(ack(C, 42, false));
    assert_eq!(err_code(&fx), 406);
    assert_eq!(b.ready("q"), 1);
    assert!(b.state.consumers.is_empty());
    assert!(
        b.one(consume(C, "q", "again", false)).is_empty(),
        "ignored until ChannelClosed"
    );
}

/// Node restart (RabbitMQ: connections die with the node; transient entities and messages
/// do not survive a restart, https://www.rabbitmq.com/docs/queues#durability).
#[test]
fn node_started_closes_old_connections_and_drops_transient_state() {
    let mut b = Broker::new();
    let mut dq = declare_queue(C, "durable", FieldTable::default());
    if let Command::QueueDeclare { durable, .. } = &mut dq {
        *durable = true;
    }
    b.one(dq);
    let mut qq = declare_queue(C, "quorum", table(&[("x-queue-type", s("quorum"))]));
    if let Command::QueueDeclare { durable, .. } = &mut qq {
        *durable = true;
    }
    b.one(qq);
    b.queue(C, "transient");
    b.one(declare_exchange(C, "tx", "fanout"));
    let mut persistent = message("p");
    persistent.persistent = true;
    b.one(publish_msg(C, "", "durable", persistent, None, false));
    b.one(publish(C, "", "durable", "t"));
    b.one(publish(C, "", "quorum", "t"));
    b.one(get(C, "durable", false));
    let other_node = ChannelRef {
        conn: ConnId {
            node: 2,
            epoch: 1,
            seq: 1,
        },
        number: 1,
        generation: 0,
    };
    b.one(consume(other_node, "transient", "keep", false));
    b.one(Command::NodeStarted {
        node: 1,
        epoch: 2,
        drop_transient: true,
    });
    assert!(!b.state.channels.contains_key(&C));
    assert!(b.state.queue("transient").is_none());
    assert!(!b.state.exchanges.contains_key("tx"));
    assert!(b.state.exchanges.contains_key("amq.direct"));
    let q = b.state.queue("durable").unwrap();
    assert_eq!(q.ready.len(), 1);
    assert!(q.ready.values().all(|m| m.persistent && m.redelivered));
    let quorum = b.state.queue("quorum").unwrap();
    assert_eq!(
        quorum.ready.len(),
        1,
        "a quorum queue keeps transient messages"
    );
    assert_eq!(b.state.stats.enqueued, b.state.stats.removed + 2);
}

/// The epoch is a wall-clock reading, which can go backwards between two lives of a node
/// (a VM restore, a clock fixed at boot): a new life must still end every connection of the
/// previous one, or its consumers would hold their deliveries for ever.
#[test]
fn node_started_with_an_older_epoch_still_closes_the_previous_lives_connections() {
    let mut b = Broker::new();
    b.queue(C, "q");
    b.one(publish(C, "", "q", "m"));
    b.one(get(C, "q", false));
    assert_eq!(b.state.queue("q").unwrap().ready.len(), 0);
    b.one(Command::NodeStarted {
        node: 1,
        epoch: 0,
        drop_transient: false,
    });
    assert!(!b.state.channels.contains_key(&C));
    let q = b.state.queue("q").unwrap();
    assert_eq!(
        q.ready.len(),
        1,
        "the unacked delivery went back to the queue"
    );
}

// ---------------------------------------------------------------- node lives and origins

fn started(node: u64, epoch: u64) -> Command {
    Command::NodeStarted {
        node,
        epoch,
        drop_transient: false,
    }
}

fn from_origin(
    b: &mut Broker,
    node: u64,
    epoch: u64,
    seq: u64,
    commands: Vec<Command>,
) -> Vec<Effect> {
    b.index += 1;
    b.state.apply(
        b.index,
        &Entry {
            now_ms: b.now_ms,
            commands,
            origin: Some(Origin { node, epoch, seq }),
        },
    )
}

/// A batch proposed again after an uncertain outcome, or ahead of a missing predecessor, is
/// skipped; each batch takes effect exactly once and in sequence.
#[test]
fn batches_from_an_origin_apply_once_and_in_sequence() {
    let mut b = Broker::new();
    b.one(started(1, 1));
    b.queue(C, "q");
    let count = |b: &Broker| b.state.queue("q").unwrap().ready.len();
    from_origin(&mut b, 1, 1, 1, vec![publish(C, "", "q", "a")]);
    assert_eq!(count(&b), 1);
    // The same batch again (the proposer could not tell it was committed): skipped.
    assert!(from_origin(&mut b, 1, 1, 1, vec![publish(C, "", "q", "a")]).is_empty());
    assert_eq!(count(&b), 1);
    // Batch 3 before batch 2: skipped, so that order holds; both come again in order.
    from_origin(&mut b, 1, 1, 3, vec![publish(C, "", "q", "c")]);
    assert_eq!(count(&b), 1);
    from_origin(&mut b, 1, 1, 2, vec![publish(C, "", "q", "b")]);
    from_origin(&mut b, 1, 1, 3, vec![publish(C, "", "q", "c")]);
    let bodies: Vec<_> = b
        .state
        .queue("q")
        .unwrap()
        .ready
        .values()
        .map(|m| m.body.clone())
        .collect();
    assert_eq!(bodies, vec!["a", "b", "c"]);
    assert_eq!(b.state.node_life(1).unwrap().last_seq, 3);
    // Announcing the same life again keeps its count; a batch of an unknown node is skipped.
    b.one(started(1, 1));
    assert_eq!(b.state.node_life(1).unwrap().last_seq, 3);
    from_origin(&mut b, 7, 1, 1, vec![publish(C, "", "q", "x")]);
    assert_eq!(count(&b), 3);
}

/// A lost node's connections go (their unacked deliveries back to the queue, each told to
/// close), and everything from that life is ignored afterwards, until it starts a new one.
#[test]
fn a_lost_node_life_ends_and_its_later_commands_are_ignored() {
    let mut b = Broker::new();
    b.one(started(1, 1));
    b.one(started(2, 5));
    let remote = ChannelRef {
        conn: ConnId {
            node: 2,
            epoch: 5,
            seq: 1,
        },
        number: 1,
        generation: 0,
    };
    b.queue(C, "q");
    b.one(publish(C, "", "q", "m"));
    b.one(consume(remote, "q", "ctag", false));
    assert_eq!(b.state.queue("q").unwrap().ready.len(), 0);
    // A NodeLost for an older life changes nothing.
    b.one(Command::NodeLost { node: 2, epoch: 4 });
    assert!(b.state.conn_is_live(remote.conn));
    let fx = b.one(Command::NodeLost { node: 2, epoch: 5 });
    assert!(fx.iter().any(|e| matches!(e, Effect::ConnectionError { conn, reply_code: 320, .. } if *conn == remote.conn)));
    assert!(!b.state.conn_is_live(remote.conn));
    let q = b.state.queue("q").unwrap();
    assert_eq!(q.ready.len(), 1);
    assert!(q.ready.values().all(|m| m.redelivered));
    // Later commands of that life are ignored and answered with a close.
    let fx = b.one(consume(remote, "q", "again", false));
    assert!(matches!(
        fx.as_slice(),
        [Effect::ConnectionError {
            reply_code: 320,
            ..
        }]
    ));
    assert!(b.state.consumers.is_empty());
    assert!(from_origin(&mut b, 2, 5, 1, vec![publish(C, "", "q", "late")]).is_empty());
    assert_eq!(b.state.queue("q").unwrap().ready.len(), 1);
    // A new life is accepted from its first batch.
    b.one(started(2, 6));
    from_origin(&mut b, 2, 6, 1, vec![publish(C, "", "q", "new")]);
    assert_eq!(b.state.queue("q").unwrap().ready.len(), 2);
}

// ---------------------------------------------------------------- formats

/// The log entry format is public: this pins `Entry::encode` byte for byte.
#[test]
fn entry_encoding_is_pinned_by_golden_bytes() {
    let entry = Entry {
        now_ms: 1_700_000_000_000,
        commands: vec![Command::Publish {
            ch: ChannelRef {
                conn: ConnId {
                    node: 1,
                    epoch: 2,
                    seq: 3,
                },
                number: 4,
                generation: 5,
            },
            publish: Publish {
                exchange: "x".into(),
                routing_key: "k".into(),
                mandatory: true,
                confirm_seq: Some(6),
                message: PublishedMessage {
                    properties: bytes::Bytes::from_static(&[0x10, 0x00, 0x02]),
                    body: bytes::Bytes::from_static(b"hi"),
                    persistent: true,
                    priority: 7,
                    expiration_ms: Some(8),
                },
            },
        }],
        origin: None,
    };
    // Logs written before clusters (format 1, no origin) still read.
    assert_eq!(Entry::decode(&GOLDEN_PUBLISH_ENTRY_V1).unwrap(), entry);
    let entry = Entry {
        origin: Some(Origin {
            node: 9,
            epoch: 10,
            seq: 11,
        }),
        ..entry
    };
    let golden: &[u8] = &GOLDEN_PUBLISH_ENTRY;
    assert_eq!(entry.encode(), golden, "{:?}", entry.encode());
    assert_eq!(Entry::decode(golden).unwrap(), entry);
}

const GOLDEN_PUBLISH_ENTRY: [u8; 36] = [
    2, 128, 208, 149, 255, 188, 49, 1, 15, 1, 2, 3, 4, 5, 1, 120, 1, 107, 1, 1, 6, 3, 16, 0, 2, 2,
    104, 105, 1, 7, 1, 8, 1, 9, 10, 11,
];

const GOLDEN_PUBLISH_ENTRY_V1: [u8; 32] = [
    1, 128, 208, 149, 255, 188, 49, 1, 15, 1, 2, 3, 4, 5, 1, 120, 1, 107, 1, 1, 6, 3, 16, 0, 2, 2,
    104, 105, 1, 7, 1, 8,
];

/// Arguments tables go into the log through amq-protocol's serde layout: pin it too, with
/// several value types, so that a dependency upgrade that changes it fails here and not on a
/// node replaying an old log.
#[test]
fn entry_encoding_of_argument_tables_is_pinned_by_golden_bytes() {
    let entry = Entry {
        now_ms: 1,
        commands: vec![Command::QueueDeclare {
            ch: ChannelRef {
                conn: ConnId {
                    node: 1,
                    epoch: 2,
                    seq: 3,
                },
                number: 4,
                generation: 5,
            },
            queue: "q".into(),
            server_named: false,
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: table(&[
                ("x-message-ttl", i(1000)),
                ("x-dead-letter-exchange", s("dlx")),
                ("x-max-priority", AMQPValue::ShortShortUInt(3)),
                ("f", AMQPValue::Boolean(true)),
                ("v", AMQPValue::Void),
            ]),
        }],
        origin: None,
    };
    let encoded = entry.encode();
    assert_eq!(encoded, GOLDEN_DECLARE_ENTRY, "{encoded:?}");
    assert_eq!(Entry::decode(&GOLDEN_DECLARE_ENTRY).unwrap(), entry);
}

const GOLDEN_DECLARE_ENTRY: [u8; 88] = [
    2, 1, 1, 7, 1, 2, 3, 4, 5, 1, 113, 0, 0, 1, 0, 0, 0, 5, 1, 102, 0, 1, 1, 118, 17, 22, 120, 45,
    100, 101, 97, 100, 45, 108, 101, 116, 116, 101, 114, 45, 101, 120, 99, 104, 97, 110, 103, 101,
    12, 3, 100, 108, 120, 14, 120, 45, 109, 97, 120, 45, 112, 114, 105, 111, 114, 105, 116, 121, 2,
    3, 13, 120, 45, 109, 101, 115, 115, 97, 103, 101, 45, 116, 116, 108, 7, 208, 15, 0,
];

/// Snapshots round-trip the whole state.
#[test]
fn snapshot_round_trips_the_state() {
    let mut b = Broker::new();
    b.one(declare_queue(
        C,
        "q",
        table(&[
            ("x-message-ttl", i(1000)),
            ("x-max-priority", AMQPValue::ShortShortUInt(3)),
        ]),
    ));
    b.one(bind_args(
        C,
        "q",
        "amq.headers",
        "",
        table(&[("a", AMQPValue::Double(1.5)), ("b", AMQPValue::Void)]),
    ));
    b.one(publish_msg(
        C,
        "",
        "q",
        with_headers("a", table(&[("h", s("v"))])),
        None,
        false,
    ));
    b.one(consume(C, "q", "t", false));
    let bytes = b.state.encode_snapshot();
    assert_eq!(State::decode_snapshot(&bytes).unwrap(), b.state);
    assert!(State::decode_snapshot(&[9]).is_err());
}

/// A log entry may skip its fsync on a lone node only when losing it breaks no promise:
/// settlements, gets, consumers and prefetch may be lost (the message comes back), and so may a
/// publish outside confirm mode (nobody was told it arrived); a confirmed publish or a
/// declaration may not.
#[test]
fn only_entries_without_promises_are_volatile() {
    let ch = chan(1, 1);
    let persistent = |body| PublishedMessage {
        persistent: true,
        ..message(body)
    };
    let entry = |commands: Vec<Command>| Entry {
        now_ms: 0,
        commands,
        origin: None,
    };
    assert!(entry(vec![]).is_volatile(), "a tick");
    assert!(entry(vec![
        ack(ch, 1, false),
        nack(ch, 2, false, true),
        get(ch, "q", false),
        qos(ch, 10, false),
        consume(ch, "q", "t", false),
        Command::ChannelClosed { ch },
        Command::ConnectionClosed { conn: ch.conn },
        publish(ch, "", "q", "x"),
        publish_msg(ch, "", "q", persistent("y"), None, true),
    ])
    .is_volatile());
    for promise in [
        publish_msg(ch, "", "q", message("x"), Some(1), false),
        publish_msg(ch, "", "q", persistent("y"), Some(2), false),
        declare_queue(ch, "q", FieldTable::default()),
        declare_exchange(ch, "e", "direct"),
        bind(ch, "q", "e", "k"),
        Command::QueuePurge {
            ch,
            queue: "q".into(),
            nowait: false,
        },
    ] {
        assert!(
            !entry(vec![ack(ch, 1, false), promise.clone()]).is_volatile(),
            "{promise:?}"
        );
    }
}

/// What a lone node's log may leave out (raft `left_out_bodies`): the body of a transient
/// message that can reach only classic queues that do not dead-letter. A quorum queue, a queue
/// with a dead-letter exchange, an alternate exchange or a binding to another exchange on the
/// way means the message could outlive a restart.
#[test]
fn transient_messages_outlive_a_restart_only_through_quorum_queues_or_detours() {
    let mut b = Broker::new();
    b.queue(C, "plain");
    b.one(declare_queue(
        chan(1, 2),
        "dead-letters",
        table(&[("x-dead-letter-exchange", s(""))]),
    ));
    let mut quorum = declare_queue(chan(1, 3), "qq", table(&[("x-queue-type", s("quorum"))]));
    if let Command::QueueDeclare { durable, .. } = &mut quorum {
        *durable = true;
    }
    assert_eq!(err_code(&b.one(quorum)), 0);
    b.one(declare_exchange(C, "fan", "fanout"));
    b.one(bind(C, "plain", "fan", ""));
    b.one(declare_exchange_args(
        C,
        "with-ae",
        "direct",
        table(&[("alternate-exchange", s("fan"))]),
    ));
    b.one(declare_exchange(C, "to-exchange", "direct"));
    b.one(Command::ExchangeBind {
        ch: C,
        destination: "fan".into(),
        source: "to-exchange".into(),
        routing_key: "k".into(),
        nowait: false,
        arguments: FieldTable::default(),
    });
    let outlives = |b: &Broker, exchange: &str, key: &str| {
        b.state
            .transient_may_outlive_restart(exchange, key, &[0, 0])
    };
    assert!(!outlives(&b, "", "plain"));
    assert!(!outlives(&b, "", "missing"), "dropped, unroutable");
    assert!(!outlives(&b, "fan", ""));
    assert!(
        !outlives(&b, "no-such-exchange", ""),
        "a channel error, not routed"
    );
    assert!(outlives(&b, "", "dead-letters"));
    assert!(outlives(&b, "", "qq"));
    assert!(outlives(&b, "with-ae", "x"));
    assert!(outlives(&b, "to-exchange", "k"));
    b.one(bind(C, "qq", "fan", ""));
    assert!(outlives(&b, "fan", ""), "bound to a quorum queue now");

    let declares = Entry {
        now_ms: 0,
        commands: vec![declare_queue(C, "new", FieldTable::default())],
        origin: None,
    };
    assert!(declares.may_add_routes());
    let publishes = Entry {
        now_ms: 0,
        commands: vec![publish_msg(C, "", "plain", message("m"), None, false)],
        origin: None,
    };
    assert!(!publishes.may_add_routes());
}
