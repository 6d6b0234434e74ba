//! The command dispatcher: one handler per `Command`, each doing RabbitMQ's checks in
//! RabbitMQ's order (a client mistake becomes a `Fail`, turned into a channel or connection
//! error effect with the failing method's class and method ids) and then the change and its
//! reply. Handlers check everything before they change anything, so a failed command leaves
//! no trace except the closing of its channel (or connection).
//!
//! Reference: <https://www.rabbitmq.com/amqp-0-9-1-reference>,
//! <https://www.rabbitmq.com/docs/channels#error-handling>.

use super::channel::Consumer;
use super::command::{Command, Publish, Settle};
use super::delivery::{channel_range, Disposition};
use super::effect::{Effect, Reply};
use super::exchange::{Destination, Exchange, ExchangeKind};
use super::queue::{check_args_equivalent, Queue, QueueArgs, QueuedMessage, SettleBatch};
use super::{Ctx, Incoming, State};
use crate::ids::{ChannelRef, ConnId, NodeId};
use crate::reply_code::{self, *};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// A client mistake: the reply code, the full reply text, and (when it is not the command's
/// own method, as inside tx.commit) the class and method to blame.
#[derive(Debug)]
pub(crate) struct Fail {
    code: u16,
    text: String,
    blame: Option<(u16, u16)>,
}

fn fail(code: u16, detail: impl std::fmt::Display) -> Fail {
    Fail {
        code,
        text: reply_code::text(code, detail),
        blame: None,
    }
}

fn no_queue(name: &str) -> Fail {
    fail(NOT_FOUND, format!("no queue '{name}' in vhost '/'"))
}

fn no_exchange(name: &str) -> Fail {
    fail(NOT_FOUND, format!("no exchange '{name}' in vhost '/'"))
}

fn default_exchange() -> Fail {
    fail(
        ACCESS_REFUSED,
        "operation not permitted on the default exchange",
    )
}

fn locked(name: &str) -> Fail {
    fail(
        RESOURCE_LOCKED,
        format!(
            "cannot obtain exclusive access to locked queue '{name}' in vhost '/'. It could be originally declared on \
             another connection or the exclusive property value does not match that of the original declaration."
        ),
    )
}

const PUBLISH: (u16, u16) = (60, 40);

fn settle_method(s: &Settle) -> (u16, u16) {
    match s {
        Settle::Ack { .. } => (60, 80),
        Settle::Nack { .. } => (60, 120),
    }
}

/// The AMQP class and method ids of the method a command stands for.
pub fn class_method(cmd: &Command) -> (u16, u16) {
    match cmd {
        Command::NodeStarted { .. }
        | Command::NodeLost { .. }
        | Command::ConnectionClosed { .. } => (0, 0),
        Command::ChannelClosed { .. } => (20, 40),
        Command::ExchangeDeclare { .. } => (40, 10),
        Command::ExchangeDelete { .. } => (40, 20),
        Command::ExchangeBind { .. } => (40, 30),
        Command::ExchangeUnbind { .. } => (40, 40),
        Command::QueueDeclare { .. } => (50, 10),
        Command::QueueBind { .. } => (50, 20),
        Command::QueuePurge { .. } => (50, 30),
        Command::QueueDelete { .. } => (50, 40),
        Command::QueueUnbind { .. } => (50, 50),
        Command::Qos { .. } => (60, 10),
        Command::Consume { .. } => (60, 20),
        Command::Cancel { .. } => (60, 30),
        Command::Publish { .. } => PUBLISH,
        Command::Get { .. } => (60, 70),
        Command::Settle { settle, .. } => settle_method(settle),
        Command::Recover { .. } => (60, 110),
        Command::Flow { .. } => (20, 20),
        Command::TxCommit { .. } => (90, 20),
    }
}

fn reply(cx: &mut Ctx, ch: ChannelRef, nowait: bool, reply: Reply) {
    if !nowait {
        cx.fx.push(Effect::Reply { ch, reply });
    }
}

impl State {
    pub(crate) fn apply_command(&mut self, cmd: &Command, cx: &mut Ctx) {
        if let Some(conn) = cmd.conn() {
            if !self.conn_is_live(conn) {
                // A connection of an ended life (its node restarted or was declared lost):
                // nothing it sends counts. Tell its node to close it, in case it has not yet.
                if !matches!(cmd, Command::ConnectionClosed { .. }) {
                    cx.fx.push(lost_contact(conn));
                }
                return;
            }
            if self.errored_conns.contains(&conn) {
                // The connection is closing after a connection error: its pipelined commands
                // are ignored; its ConnectionClosed ends the quarantine.
                if let Command::ConnectionClosed { conn } = cmd {
                    self.errored_conns.remove(conn);
                    self.close_connection(*conn, cx);
                }
                return;
            }
        }
        match cmd {
            Command::NodeStarted {
                node,
                epoch,
                drop_transient,
            } => self.node_started(*node, *epoch, *drop_transient, cx),
            Command::NodeLost { node, epoch } => self.node_lost(*node, *epoch, cx),
            Command::ConnectionClosed { conn } => self.close_connection(*conn, cx),
            Command::ChannelClosed { ch } => {
                self.errored_channels.remove(ch);
                self.close_channel(*ch, cx);
                cx.fx.push(Effect::Reply {
                    ch: *ch,
                    reply: Reply::ChannelCloseOk,
                });
            }
            _ => {
                let ch = cmd.channel().expect("a channel command");
                if self.errored_channels.contains(&ch) {
                    return;
                }
                self.channels.entry(ch).or_default();
                if let Err(f) = self.dispatch(ch, cmd, cx) {
                    self.fail(ch, cmd, f, cx);
                }
            }
        }
    }

    /// Turns a client mistake into its effect, and forgets the channel (or connection).
    fn fail(&mut self, ch: ChannelRef, cmd: &Command, f: Fail, cx: &mut Ctx) {
        let (class_id, method_id) = f.blame.unwrap_or_else(|| class_method(cmd));
        if reply_code::is_hard(f.code) {
            cx.fx.push(Effect::ConnectionError {
                conn: ch.conn,
                reply_code: f.code,
                reply_text: f.text,
                class_id,
                method_id,
            });
            self.close_connection(ch.conn, cx);
            self.errored_conns.insert(ch.conn);
        } else {
            cx.fx.push(Effect::ChannelError {
                ch,
                reply_code: f.code,
                reply_text: f.text,
                class_id,
                method_id,
            });
            self.close_channel(ch, cx);
            self.errored_channels.insert(ch);
        }
    }

    fn dispatch(&mut self, ch: ChannelRef, cmd: &Command, cx: &mut Ctx) -> Result<(), Fail> {
        match cmd {
            Command::NodeStarted { .. }
            | Command::NodeLost { .. }
            | Command::ConnectionClosed { .. }
            | Command::ChannelClosed { .. } => Ok(()),
            Command::ExchangeDeclare {
                exchange,
                kind,
                passive,
                durable,
                auto_delete,
                internal,
                nowait,
                arguments,
                ..
            } => {
                if !*passive {
                    let Some(kind) = ExchangeKind::parse(kind) else {
                        return Err(fail(
                            COMMAND_INVALID,
                            format!("invalid exchange type '{kind}'"),
                        ));
                    };
                    if exchange.is_empty() {
                        return Err(default_exchange());
                    }
                    match self.exchanges.get(exchange) {
                        Some(x) => x
                            .check_equivalent(kind, *durable, *auto_delete, *internal, arguments)
                            .map_err(|d| fail(PRECONDITION_FAILED, d))?,
                        None => {
                            if exchange.starts_with("amq.") {
                                return Err(fail(ACCESS_REFUSED, format!("exchange name '{exchange}' contains reserved prefix 'amq.*'")));
                            }
                            let x = Exchange::new(
                                exchange,
                                kind,
                                *durable,
                                *auto_delete,
                                *internal,
                                arguments.clone(),
                            );
                            self.exchanges.insert(exchange.clone(), x);
                        }
                    }
                } else {
                    if exchange.is_empty() {
                        return Err(default_exchange());
                    }
                    if !self.exchanges.contains_key(exchange) {
                        return Err(no_exchange(exchange));
                    }
                }
                reply(cx, ch, *nowait, Reply::ExchangeDeclareOk);
                Ok(())
            }
            Command::ExchangeDelete {
                exchange,
                if_unused,
                nowait,
                ..
            } => {
                if exchange.is_empty() {
                    return Err(default_exchange());
                }
                if exchange.starts_with("amq.") {
                    return Err(fail(
                        ACCESS_REFUSED,
                        format!(
                            "deletion of system exchange '{exchange}' in vhost '/' not allowed"
                        ),
                    ));
                }
                if let Some(x) = self.exchanges.get(exchange) {
                    if *if_unused && x.binding_count > 0 {
                        return Err(fail(
                            PRECONDITION_FAILED,
                            format!("exchange '{exchange}' in vhost '/' in use"),
                        ));
                    }
                    self.delete_exchange(exchange);
                }
                reply(cx, ch, *nowait, Reply::ExchangeDeleteOk);
                Ok(())
            }
            Command::ExchangeBind {
                destination,
                source,
                routing_key,
                nowait,
                arguments,
                ..
            } => {
                self.check_exchange_binding(source, destination)?;
                self.check_binding_arguments(source, arguments)?;
                self.bind(
                    source,
                    routing_key,
                    Destination::Exchange(destination.clone()),
                    arguments,
                );
                reply(cx, ch, *nowait, Reply::ExchangeBindOk);
                Ok(())
            }
            Command::ExchangeUnbind {
                destination,
                source,
                routing_key,
                nowait,
                arguments,
                ..
            } => {
                self.check_exchange_binding(source, destination)?;
                self.unbind(
                    source,
                    routing_key,
                    Destination::Exchange(destination.clone()),
                    arguments,
                );
                reply(cx, ch, *nowait, Reply::ExchangeUnbindOk);
                Ok(())
            }
            Command::QueueDeclare {
                queue,
                server_named,
                passive,
                durable,
                exclusive,
                auto_delete,
                nowait,
                arguments,
                ..
            } => self.queue_declare(
                ch,
                queue,
                *server_named,
                *passive,
                *durable,
                *exclusive,
                *auto_delete,
                *nowait,
                arguments,
                cx,
            ),
            Command::QueueBind {
                queue,
                exchange,
                routing_key,
                nowait,
                arguments,
                ..
            } => {
                self.check_queue_binding(ch, exchange, queue)?;
                self.check_binding_arguments(exchange, arguments)?;
                self.bind(
                    exchange,
                    routing_key,
                    Destination::Queue(queue.clone()),
                    arguments,
                );
                reply(cx, ch, *nowait, Reply::QueueBindOk);
                Ok(())
            }
            Command::QueueUnbind {
                queue,
                exchange,
                routing_key,
                arguments,
                ..
            } => {
                self.check_queue_binding(ch, exchange, queue)?;
                self.unbind(
                    exchange,
                    routing_key,
                    Destination::Queue(queue.clone()),
                    arguments,
                );
                reply(cx, ch, false, Reply::QueueUnbindOk);
                Ok(())
            }
            Command::QueuePurge { queue, nowait, .. } => {
                let qid = self.usable_queue(ch, queue)?;
                let q = self.queues.get_mut(&qid).expect("checked");
                let message_count = q.ready.len() as u32;
                q.ready.clear();
                q.ready_bytes = 0;
                q.expiring_ready = 0;
                self.stats.removed += message_count as u64;
                reply(cx, ch, *nowait, Reply::QueuePurgeOk { message_count });
                Ok(())
            }
            Command::QueueDelete {
                queue,
                if_unused,
                if_empty,
                nowait,
                ..
            } => {
                let Some(&qid) = self.queue_by_name.get(queue) else {
                    // RabbitMQ 3.x: deleting a queue that does not exist succeeds.
                    reply(cx, ch, *nowait, Reply::QueueDeleteOk { message_count: 0 });
                    return Ok(());
                };
                self.usable_queue(ch, queue)?;
                let q = &self.queues[&qid];
                if *if_unused && !q.consumers.is_empty() {
                    return Err(fail(
                        PRECONDITION_FAILED,
                        format!("queue '{queue}' in vhost '/' in use"),
                    ));
                }
                if *if_empty && !q.ready.is_empty() {
                    return Err(fail(
                        PRECONDITION_FAILED,
                        format!("queue '{queue}' in vhost '/' is not empty"),
                    ));
                }
                let message_count = self.delete_queue(qid, cx);
                reply(cx, ch, *nowait, Reply::QueueDeleteOk { message_count });
                Ok(())
            }
            Command::Qos {
                prefetch_size,
                prefetch_count,
                global,
                ..
            } => {
                if *prefetch_size != 0 {
                    // RabbitMQ does not implement prefetch by size.
                    return Err(fail(
                        NOT_IMPLEMENTED,
                        format!("prefetch_size!=0 ({prefetch_size})"),
                    ));
                }
                let chan = self.channels.get_mut(&ch).expect("created");
                if *global {
                    chan.global_prefetch = *prefetch_count;
                    self.mark_channel_dirty(ch, cx);
                } else {
                    chan.consumer_prefetch = *prefetch_count;
                }
                reply(cx, ch, false, Reply::QosOk);
                Ok(())
            }
            Command::Consume {
                queue,
                consumer_tag,
                no_ack,
                exclusive,
                nowait,
                ..
            } => {
                // no_local is accepted and ignored, as RabbitMQ does.
                self.consume(ch, queue, consumer_tag, *no_ack, *exclusive, *nowait, cx)
            }
            Command::Cancel {
                consumer_tag,
                nowait,
                ..
            } => {
                // Cancelling an unknown tag is not an error (AMQP 0-9-1 basic.cancel).
                reply(
                    cx,
                    ch,
                    *nowait,
                    Reply::CancelOk {
                        consumer_tag: consumer_tag.clone(),
                    },
                );
                let chan = self.channels.get_mut(&ch).expect("created");
                if let Some(cid) = chan.consumers.remove(consumer_tag) {
                    self.remove_consumer(cid, cx);
                }
                Ok(())
            }
            Command::Publish { publish, .. } => {
                self.check_publish(publish)?;
                self.publish(ch, publish, cx);
                Ok(())
            }
            Command::Get { queue, no_ack, .. } => self.get(ch, queue, *no_ack, cx),
            Command::Settle { settle, .. } => {
                self.check_settles(ch, std::slice::from_ref(settle))?;
                self.settle(ch, settle, cx);
                Ok(())
            }
            Command::Recover { .. } => {
                // requeue=false: RabbitMQ redelivers too (it does not implement the other way).
                self.requeue_all(ch, cx);
                self.mark_channel_dirty(ch, cx);
                reply(cx, ch, false, Reply::RecoverOk);
                Ok(())
            }
            Command::Flow { active, .. } => {
                self.channels.get_mut(&ch).expect("created").flow_active = *active;
                reply(cx, ch, false, Reply::FlowOk { active: *active });
                if *active {
                    self.mark_channel_dirty(ch, cx);
                }
                Ok(())
            }
            Command::TxCommit {
                publishes, settles, ..
            } => {
                // Check all, then apply all: a failing transaction changes nothing.
                for p in publishes {
                    self.check_publish(p).map_err(|f| Fail {
                        blame: Some(PUBLISH),
                        ..f
                    })?;
                }
                self.check_settles(ch, settles)?;
                for p in publishes {
                    self.publish(ch, p, cx);
                }
                for s in settles {
                    self.settle(ch, s, cx);
                }
                reply(cx, ch, false, Reply::TxCommitOk);
                Ok(())
            }
        }
    }

    fn check_exchange_binding(&self, source: &str, destination: &str) -> Result<(), Fail> {
        if source.is_empty() || destination.is_empty() {
            return Err(default_exchange());
        }
        if !self.exchanges.contains_key(source) {
            return Err(no_exchange(source));
        }
        if !self.exchanges.contains_key(destination) {
            return Err(no_exchange(destination));
        }
        Ok(())
    }

    /// A headers exchange validates x-match when a binding is made (RabbitMQ's
    /// `rabbit_exchange_type_headers:validate_binding`).
    fn check_binding_arguments(
        &self,
        source: &str,
        arguments: &amq_protocol::types::FieldTable,
    ) -> Result<(), Fail> {
        if self.exchanges[source].kind != ExchangeKind::Headers {
            return Ok(());
        }
        let valid = match arguments.inner().get("x-match") {
            None => true,
            Some(v) => matches!(
                super::queue::str_value(v).as_deref(),
                Some("all" | "any" | "all-with-x" | "any-with-x")
            ),
        };
        if valid {
            Ok(())
        } else {
            Err(fail(
                PRECONDITION_FAILED,
                "Invalid x-match field value; expected all, any, all-with-x, or any-with-x",
            ))
        }
    }

    fn check_queue_binding(&self, ch: ChannelRef, exchange: &str, queue: &str) -> Result<(), Fail> {
        if exchange.is_empty() {
            return Err(default_exchange());
        }
        if !self.exchanges.contains_key(exchange) {
            return Err(no_exchange(exchange));
        }
        self.usable_queue(ch, queue)?;
        Ok(())
    }

    /// The queue's id if it exists and is not exclusive to another connection.
    fn usable_queue(&self, ch: ChannelRef, name: &str) -> Result<u64, Fail> {
        let qid = *self.queue_by_name.get(name).ok_or_else(|| no_queue(name))?;
        match self.queues[&qid].exclusive_owner {
            Some(owner) if owner != ch.conn => Err(locked(name)),
            _ => Ok(qid),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn queue_declare(
        &mut self,
        ch: ChannelRef,
        name: &str,
        server_named: bool,
        passive: bool,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        nowait: bool,
        arguments: &amq_protocol::types::FieldTable,
        cx: &mut Ctx,
    ) -> Result<(), Fail> {
        if !passive && !server_named && name.starts_with("amq.") {
            return Err(fail(
                ACCESS_REFUSED,
                format!("queue name '{name}' contains reserved prefix 'amq.*'"),
            ));
        }
        let now = self.now_ms;
        if self.queue_by_name.contains_key(name) {
            let qid = self.usable_queue(ch, name)?;
            let q = &self.queues[&qid];
            if !passive {
                QueueArgs::parse(name, arguments).map_err(|d| fail(PRECONDITION_FAILED, d))?;
                // RabbitMQ's strict exclusive check: the flag must match too (405).
                if exclusive != q.exclusive_owner.is_some() {
                    return Err(locked(name));
                }
                for (arg, received, current) in [
                    ("durable", durable, q.durable),
                    ("auto_delete", auto_delete, q.auto_delete),
                ] {
                    if received != current {
                        return Err(fail(
                            PRECONDITION_FAILED,
                            format!("inequivalent arg '{arg}' for queue '{name}' in vhost '/': received '{received}' but current is '{current}'"),
                        ));
                    }
                }
                check_args_equivalent(name, &q.arguments, arguments)
                    .map_err(|d| fail(PRECONDITION_FAILED, d))?;
            }
            let q = self.queues.get_mut(&qid).expect("exists");
            q.last_used_ms = now;
            let reply_ = Reply::QueueDeclareOk {
                queue: name.to_owned(),
                message_count: q.message_count(),
                consumer_count: q.consumer_count(),
            };
            reply(cx, ch, nowait, reply_);
            return Ok(());
        }
        if passive {
            return Err(no_queue(name));
        }
        let args = QueueArgs::parse(name, arguments).map_err(|d| fail(PRECONDITION_FAILED, d))?;
        if args.quorum {
            for (bad, property) in [
                (exclusive, "exclusive"),
                (!durable, "non-durable"),
                (auto_delete, "auto-delete"),
            ] {
                if bad {
                    return Err(fail(
                        PRECONDITION_FAILED,
                        format!("invalid property '{property}' for queue '{name}' in vhost '/'"),
                    ));
                }
            }
        }
        self.next_queue_id += 1;
        let id = self.next_queue_id;
        if args.expires_ms.is_some() {
            self.timed_queues.insert(id);
        }
        let exclusive_owner = exclusive.then_some(ch.conn);
        if exclusive {
            self.owned_queues.insert((ch.conn, id));
        }
        let q = Queue {
            id,
            name: name.to_owned(),
            durable,
            exclusive_owner,
            auto_delete,
            arguments: arguments.clone(),
            args,
            ready: BTreeMap::new(),
            ready_bytes: 0,
            expiring_ready: 0,
            next_seq: 0,
            unacked_count: 0,
            settle_batch: Default::default(),
            consumers: VecDeque::new(),
            exclusive_consumer: None,
            had_consumer: false,
            last_used_ms: now,
        };
        self.queues.insert(id, q);
        self.queue_by_name.insert(name.to_owned(), id);
        reply(
            cx,
            ch,
            nowait,
            Reply::QueueDeclareOk {
                queue: name.to_owned(),
                message_count: 0,
                consumer_count: 0,
            },
        );
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn consume(
        &mut self,
        ch: ChannelRef,
        queue: &str,
        tag: &str,
        no_ack: bool,
        exclusive: bool,
        nowait: bool,
        cx: &mut Ctx,
    ) -> Result<(), Fail> {
        if self.channels[&ch].consumers.contains_key(tag) {
            return Err(fail(
                NOT_ALLOWED,
                format!("attempt to reuse consumer tag '{tag}'"),
            ));
        }
        let qid = self.usable_queue(ch, queue)?;
        let q = &self.queues[&qid];
        if q.exclusive_consumer.is_some() || (exclusive && !q.consumers.is_empty()) {
            return Err(fail(
                ACCESS_REFUSED,
                format!("queue '{queue}' in vhost '/' in exclusive use"),
            ));
        }
        self.next_consumer_id += 1;
        let cid = self.next_consumer_id;
        let chan = self.channels.get_mut(&ch).expect("created");
        chan.consumers.insert(tag.to_owned(), cid);
        let prefetch = chan.consumer_prefetch;
        self.consumers.insert(
            cid,
            Consumer {
                ch,
                tag: tag.into(),
                queue_id: qid,
                no_ack,
                exclusive,
                prefetch,
                unacked: 0,
            },
        );
        let q = self.queues.get_mut(&qid).expect("exists");
        q.consumers.push_back(cid);
        q.had_consumer = true;
        q.last_used_ms = self.now_ms;
        if exclusive {
            q.exclusive_consumer = Some(cid);
        }
        // consume-ok goes out before the first delivery (drained after this command).
        reply(
            cx,
            ch,
            nowait,
            Reply::ConsumeOk {
                consumer_tag: tag.to_owned(),
            },
        );
        cx.dirty.insert(qid);
        Ok(())
    }

    fn check_publish(&self, p: &Publish) -> Result<(), Fail> {
        let x = self
            .exchanges
            .get(&p.exchange)
            .ok_or_else(|| no_exchange(&p.exchange))?;
        if x.internal {
            return Err(fail(
                ACCESS_REFUSED,
                format!(
                    "cannot publish to internal exchange '{}' in vhost '/'",
                    p.exchange
                ),
            ));
        }
        Ok(())
    }

    /// basic.publish after `check_publish`: route, enqueue a copy in each queue, return if
    /// mandatory and unroutable, then confirm (nack if a queue refused it).
    fn publish(&mut self, ch: ChannelRef, p: &Publish, cx: &mut Ctx) {
        let targets = self.route(&p.exchange, &p.routing_key, &p.message.properties);
        let m = &p.message;
        if targets.is_empty() && p.mandatory {
            let message = Arc::new(QueuedMessage {
                exchange: p.exchange.clone(),
                routing_key: p.routing_key.clone(),
                properties: m.properties.clone(),
                body: m.body.clone(),
                persistent: m.persistent,
                priority: m.priority,
                expires_at_ms: None,
                redelivered: false,
            });
            cx.fx.push(Effect::Return {
                ch,
                reply_code: NO_ROUTE,
                reply_text: reply_code::name(NO_ROUTE).to_owned(),
                message,
            });
        }
        let mut accepted = true;
        let mut backlogged = false;
        let confirming = p.confirm_seq.is_some();
        for qid in targets {
            let incoming = Incoming {
                exchange: &p.exchange,
                routing_key: &p.routing_key,
                properties: &m.properties,
                body: &m.body,
                persistent: m.persistent,
                priority: m.priority,
                expiration_ms: m.expiration_ms,
            };
            accepted &= self.enqueue(qid, incoming, cx);
            backlogged |= self
                .queues
                .get(&qid)
                .is_some_and(|q| super::consumers_behind(q, confirming));
        }
        if backlogged && cx.flow_told != Some(ch.conn) {
            cx.flow_told = Some(ch.conn);
            cx.fx.push(Effect::Flow { conn: ch.conn });
        }
        if let Some(seq) = p.confirm_seq {
            cx.fx.push(Effect::Confirm {
                ch,
                seq,
                ack: accepted,
            });
        }
    }

    fn get(&mut self, ch: ChannelRef, queue: &str, no_ack: bool, cx: &mut Ctx) -> Result<(), Fail> {
        let qid = self.usable_queue(ch, queue)?;
        self.queues.get_mut(&qid).expect("exists").last_used_ms = self.now_ms;
        self.expire_head(qid, cx);
        let q = self.queues.get_mut(&qid).expect("exists");
        let Some((key, msg)) = q.pop_head() else {
            cx.fx.push(Effect::Reply {
                ch,
                reply: Reply::GetEmpty,
            });
            return Ok(());
        };
        let message_count = q.ready.len() as u32;
        let chan = self.channels.get_mut(&ch).expect("created");
        let delivery_tag = chan.next_delivery_tag();
        let message = msg.clone();
        cx.fx.push(Effect::GetOk {
            ch,
            delivery_tag,
            redelivered: msg.redelivered,
            message_count,
            message,
        });
        if no_ack {
            self.stats.removed += 1;
        } else {
            q.unacked_count += 1;
            chan.unacked.insert(
                delivery_tag,
                super::channel::Unacked {
                    queue_id: qid,
                    key,
                    message: msg,
                    consumer: None,
                },
            );
        }
        Ok(())
    }

    /// Checks that settlements name delivery tags the channel holds, in order (as RabbitMQ:
    /// the exact tag must be outstanding; multiple with tag 0 means all).
    fn check_settles(&self, ch: ChannelRef, settles: &[Settle]) -> Result<(), Fail> {
        let chan = &self.channels[&ch];
        // Single settlements of outstanding tags are the common case: no copy needed.
        if let [s] = settles {
            let (tag, multiple) = s.tag();
            if (multiple && tag == 0) || chan.unacked.contains_key(&tag) {
                return Ok(());
            }
            return Err(Fail {
                blame: Some(settle_method(s)),
                ..fail(PRECONDITION_FAILED, format!("unknown delivery tag {tag}"))
            });
        }
        let mut outstanding: BTreeSet<u64> = chan.unacked.keys().copied().collect();
        for s in settles {
            let (tag, multiple) = s.tag();
            if multiple && tag == 0 {
                outstanding.clear();
                continue;
            }
            if !outstanding.contains(&tag) {
                return Err(Fail {
                    blame: Some(settle_method(s)),
                    ..fail(PRECONDITION_FAILED, format!("unknown delivery tag {tag}"))
                });
            }
            if multiple {
                outstanding = outstanding.split_off(&(tag + 1));
            } else {
                outstanding.remove(&tag);
            }
        }
        Ok(())
    }

    /// basic.ack / basic.nack / basic.reject after `check_settles`.
    fn settle(&mut self, ch: ChannelRef, s: &Settle, cx: &mut Ctx) {
        let (tag, multiple) = s.tag();
        let how = match s {
            Settle::Ack { .. } => Disposition::Ack,
            Settle::Nack { requeue: true, .. } => Disposition::Requeue,
            Settle::Nack { requeue: false, .. } => Disposition::Reject,
        };
        let chan = self.channels.get_mut(&ch).expect("created");
        let taken: Vec<_> = if multiple {
            let rest = if tag == 0 {
                BTreeMap::new()
            } else {
                chan.unacked.split_off(&(tag + 1))
            };
            std::mem::replace(&mut chan.unacked, rest)
                .into_values()
                .collect()
        } else {
            chan.unacked.remove(&tag).into_iter().collect()
        };
        // How many deliveries of each queue this settle covered (usually one queue).
        let mut per_queue: Vec<(u64, u32)> = Vec::new();
        for u in taken {
            match per_queue.iter_mut().find(|(qid, _)| *qid == u.queue_id) {
                Some((_, n)) => *n += 1,
                None => per_queue.push((u.queue_id, 1)),
            }
            self.finish_unacked(ch, u, how, cx);
        }
        for (qid, settled) in per_queue {
            if let Some(q) = self.queues.get_mut(&qid) {
                q.settle_batch = SettleBatch(settled);
            }
        }
        self.mark_channel_dirty(ch, cx);
    }

    /// A node (re)started: its connections of every other epoch are gone (not only older
    /// ones: the epoch comes from a wall clock, which may go backwards between lives); with
    /// `drop_transient`, non-durable queues and exchanges and the transient messages of classic
    /// queues go too (as after a RabbitMQ node restart).
    fn node_started(&mut self, node: NodeId, epoch: u64, drop_transient: bool, cx: &mut Ctx) {
        // Announcing the same life again (a proposer that could not tell whether its first
        // announcement was committed) keeps that life's batch count.
        let same_life = self
            .nodes
            .get(&node)
            .is_some_and(|l| l.epoch == epoch && !l.lost);
        if !same_life {
            self.nodes.insert(
                node,
                super::NodeLife {
                    epoch,
                    lost: false,
                    last_seq: 0,
                },
            );
        }
        self.close_connections_where(|c| c.node == node && c.epoch != epoch, cx);
        if !drop_transient {
            return;
        }
        let transient_queues: Vec<u64> = self
            .queues
            .values()
            .filter(|q| !q.durable)
            .map(|q| q.id)
            .collect();
        for qid in transient_queues {
            self.delete_queue(qid, cx);
        }
        let transient_exchanges: Vec<String> = self
            .exchanges
            .values()
            .filter(|x| !x.durable)
            .map(|x| x.name.clone())
            .collect();
        for name in transient_exchanges {
            self.delete_exchange(&name);
        }
        // A quorum queue keeps every message, whatever its delivery mode (as RabbitMQ's do).
        for q in self.queues.values_mut().filter(|q| !q.args.quorum) {
            self.stats.removed += q.retain_ready(|m| m.persistent);
        }
    }

    /// Ends `node`'s life `epoch` (if it is still the current one): its connections are closed
    /// here as if they had dropped, and told to close on the node, should it still be running.
    fn node_lost(&mut self, node: NodeId, epoch: u64, cx: &mut Ctx) {
        match self.nodes.get_mut(&node) {
            Some(life) if life.epoch == epoch && !life.lost => life.lost = true,
            _ => return,
        }
        for conn in self.close_connections_where(|c| c.node == node, cx) {
            cx.fx.push(lost_contact(conn));
        }
    }

    /// Closes every connection the state knows (by its channels, exclusive queues or pending
    /// errors) that `which` selects, as if it had dropped; returns them.
    fn close_connections_where(
        &mut self,
        which: impl Fn(&ConnId) -> bool,
        cx: &mut Ctx,
    ) -> BTreeSet<ConnId> {
        let mut conns = BTreeSet::new();
        conns.extend(self.channels.keys().map(|c| c.conn).filter(&which));
        conns.extend(self.errored_channels.iter().map(|c| c.conn).filter(&which));
        conns.extend(self.owned_queues.iter().map(|(c, _)| *c).filter(&which));
        conns.extend(self.errored_conns.iter().copied().filter(&which));
        for conn in &conns {
            self.errored_conns.remove(conn);
            self.close_connection(*conn, cx);
            debug_assert!(self.channels.range(channel_range(*conn)).next().is_none());
        }
        conns
    }
}

/// The close sent to a connection whose node's life ended in the replicated state.
fn lost_contact(conn: ConnId) -> Effect {
    Effect::ConnectionError {
        conn,
        reply_code: reply_code::CONNECTION_FORCED,
        reply_text: reply_code::text(
            reply_code::CONNECTION_FORCED,
            "this connection's node lost contact with the cluster; reconnect",
        ),
        class_id: 0,
        method_id: 0,
    }
}

impl Settle {
    /// (delivery_tag, multiple)
    pub fn tag(&self) -> (u64, bool) {
        match *self {
            Settle::Ack {
                delivery_tag,
                multiple,
            }
            | Settle::Nack {
                delivery_tag,
                multiple,
                ..
            } => (delivery_tag, multiple),
        }
    }
}
