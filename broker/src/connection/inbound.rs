//! Frames from the client: connection methods on channel 0, channel lifecycle, content
//! assembly (method, header, body frames in that order, spec 4.2.6), and the mapping of each
//! method to the `Command` that the log orders and the machine decides. Checks that need no
//! replicated state (frame order, channel numbers, modes, property syntax) are made here;
//! everything else is the machine's.

use super::channel::{
    BadProperties, KnownProperties, Mode, PendingHeader, PendingPublish, Phase, Slot,
};
use super::{method_ids, Conn, HardError, Stop};
use crate::ids::ChannelRef;
use crate::machine::command::{Command, Publish, PublishedMessage, Settle};
use crate::protocol::content::ContentHeader;
use crate::protocol::frame::{RawFrame, FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD};
use crate::protocol::method::{decode_method, put_method};
use crate::reply_code::{
    self, CHANNEL_ERROR, COMMAND_INVALID, FRAME_ERROR, NOT_ALLOWED, NOT_FOUND, NOT_IMPLEMENTED,
    PRECONDITION_FAILED, UNEXPECTED_FRAME,
};
use amq_protocol::protocol::{
    access, basic, channel, confirm, connection, exchange, queue, tx, AMQPClass,
};

fn hard(code: u16, detail: impl std::fmt::Display, class_id: u16, method_id: u16) -> Stop {
    Stop::Hard(HardError::new(
        code,
        reply_code::text(code, detail),
        class_id,
        method_id,
    ))
}

impl Conn {
    pub(crate) async fn handle_frame(&mut self, frame: RawFrame) -> Result<(), Stop> {
        if self.closing_deadline.is_some() {
            return self.handle_frame_while_closing(frame);
        }
        match frame.kind {
            FRAME_HEARTBEAT => {
                if frame.channel != 0 {
                    return Err(hard(
                        FRAME_ERROR,
                        "heartbeat frame on a non-zero channel",
                        0,
                        0,
                    ));
                }
                Ok(())
            }
            FRAME_METHOD => {
                let method = match decode_method(&frame.payload) {
                    Ok(m) => m,
                    Err(e) => {
                        let (c, m) = e.ids();
                        return Err(hard(e.reply_code(), &e, c, m));
                    }
                };
                if frame.channel == 0 {
                    self.connection_method(method)
                } else {
                    self.channel_method(frame.channel, method).await
                }
            }
            FRAME_HEADER => self.content_header(frame).await,
            FRAME_BODY => self.content_body(frame).await,
            _ => Err(hard(FRAME_ERROR, "unknown frame type", 0, 0)),
        }
    }

    /// After we sent connection.close only close-ok (or a crossing close) matters.
    fn handle_frame_while_closing(&mut self, frame: RawFrame) -> Result<(), Stop> {
        if frame.kind == FRAME_METHOD && frame.channel == 0 {
            match decode_method(&frame.payload) {
                Ok(AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => {
                    return Err(Stop::Done)
                }
                Ok(AMQPClass::Connection(connection::AMQPMethod::Close(_))) => {
                    put_method(
                        &mut self.out,
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                            connection::CloseOk {},
                        )),
                    );
                    return Err(Stop::Done);
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn connection_method(&mut self, method: AMQPClass) -> Result<(), Stop> {
        match method {
            AMQPClass::Connection(connection::AMQPMethod::Close(close)) => {
                tracing::info!(code = close.reply_code, text = %close.reply_text.as_str(), "client closed the connection");
                put_method(
                    &mut self.out,
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                );
                Err(Stop::Done)
            }
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => Err(Stop::Done),
            AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(_)) => {
                put_method(
                    &mut self.out,
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(
                        connection::UpdateSecretOk {},
                    )),
                );
                Ok(())
            }
            // A client may tell us it is blocked/unblocked; nothing to do.
            AMQPClass::Connection(connection::AMQPMethod::Blocked(_))
            | AMQPClass::Connection(connection::AMQPMethod::Unblocked(_)) => Ok(()),
            other => {
                let (c, m) = method_ids(&other);
                Err(hard(
                    COMMAND_INVALID,
                    "unexpected method on channel 0 of an open connection",
                    c,
                    m,
                ))
            }
        }
    }

    /// Closes one channel with a soft error found here (not by the machine): channel.close to
    /// the client, and the machine is told to release what the channel held.
    pub(crate) async fn channel_error(
        &mut self,
        number: u16,
        code: u16,
        detail: impl std::fmt::Display,
        class_id: u16,
        method_id: u16,
    ) -> Result<(), Stop> {
        let Some(slot) = self.channels.get_mut(&number) else {
            return Ok(());
        };
        slot.phase = Phase::ServerClosing;
        slot.content = None;
        slot.tx_publishes.clear();
        slot.tx_settles.clear();
        let chref = slot.chref;
        put_channel_close(
            &mut self.out,
            number,
            code,
            &reply_code::text(code, detail),
            class_id,
            method_id,
        );
        self.submit(Command::ChannelClosed { ch: chref }).await
    }

    async fn channel_method(&mut self, number: u16, method: AMQPClass) -> Result<(), Stop> {
        let (class_id, method_id) = method_ids(&method);
        let phase = self
            .channels
            .get(&number)
            .map(|s| (s.phase, s.content.is_some()));
        match (phase, &method) {
            (None, AMQPClass::Channel(channel::AMQPMethod::Open(_))) => {
                if number > self.channel_max {
                    return Err(hard(
                        NOT_ALLOWED,
                        format!(
                            "channel number {number} is above the negotiated channel_max {}",
                            self.channel_max
                        ),
                        class_id,
                        method_id,
                    ));
                }
                let generation = self.generations.entry(number).or_insert(0);
                *generation += 1;
                let chref = ChannelRef {
                    conn: self.id,
                    number,
                    generation: *generation,
                };
                self.channels.insert(number, Slot::new(chref));
                put_method(
                    &mut self.out,
                    number,
                    AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
                );
                Ok(())
            }
            // A close-ok for a channel we already forgot, or a stray one: nothing to do.
            (None, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))) => Ok(()),
            (None, _) => Err(hard(
                CHANNEL_ERROR,
                format!("expected 'channel.open' on channel {number}"),
                class_id,
                method_id,
            )),
            (Some((Phase::Open, _)), AMQPClass::Channel(channel::AMQPMethod::Open(_))) => {
                Err(hard(
                    CHANNEL_ERROR,
                    format!("second 'channel.open' seen on channel {number}"),
                    class_id,
                    method_id,
                ))
            }
            (Some((Phase::ServerClosing, _)), _) => {
                // RabbitMQ drops everything but close/close-ok on a channel it is closing.
                match method {
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))
                    | AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                        if matches!(method, AMQPClass::Channel(channel::AMQPMethod::Close(_))) {
                            put_method(
                                &mut self.out,
                                number,
                                AMQPClass::Channel(channel::AMQPMethod::CloseOk(
                                    channel::CloseOk {},
                                )),
                            );
                        }
                        let slot = self.channels.remove(&number).expect("slot exists");
                        // Lets the machine forget the errored channel.
                        self.submit(Command::ChannelClosed { ch: slot.chref }).await
                    }
                    _ => Ok(()),
                }
            }
            (Some((Phase::ClientClosing, _)), _) => Ok(()),
            (Some((Phase::Open, true)), _) => Err(hard(
                UNEXPECTED_FRAME,
                "expected content header for class 60, got non content header frame instead",
                class_id,
                method_id,
            )),
            (Some((Phase::Open, false)), _) => {
                self.open_channel_method(number, method, class_id, method_id)
                    .await
            }
        }
    }

    fn slot(&mut self, number: u16) -> &mut Slot {
        self.channels
            .get_mut(&number)
            .expect("caller checked the channel is open")
    }

    /// An empty queue name means the queue last declared on the channel.
    fn queue_name(&mut self, number: u16, name: &str) -> Option<String> {
        if name.is_empty() {
            self.slot(number).last_queue.clone()
        } else {
            Some(name.to_string())
        }
    }

    async fn open_channel_method(
        &mut self,
        number: u16,
        method: AMQPClass,
        class_id: u16,
        method_id: u16,
    ) -> Result<(), Stop> {
        let ch = self.slot(number).chref;
        let command = match method {
            AMQPClass::Channel(channel::AMQPMethod::Close(close)) => {
                tracing::debug!(
                    channel = number,
                    code = close.reply_code,
                    "client closed the channel"
                );
                let slot = self.slot(number);
                slot.phase = Phase::ClientClosing;
                slot.content = None;
                Command::ChannelClosed { ch }
            }
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => return Ok(()),
            AMQPClass::Channel(channel::AMQPMethod::Flow(flow)) => Command::Flow {
                ch,
                active: flow.active,
            },
            // We never send channel.flow, so a flow-ok answers nothing.
            AMQPClass::Channel(channel::AMQPMethod::FlowOk(_)) => return Ok(()),
            AMQPClass::Access(access::AMQPMethod::Request(_)) => {
                put_method(
                    &mut self.out,
                    number,
                    AMQPClass::Access(access::AMQPMethod::RequestOk(access::RequestOk {})),
                );
                return Ok(());
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(d)) => Command::ExchangeDeclare {
                ch,
                exchange: d.exchange.as_str().to_string(),
                kind: d.kind.as_str().to_string(),
                passive: d.passive,
                durable: d.durable,
                auto_delete: d.auto_delete,
                internal: d.internal,
                nowait: d.nowait,
                arguments: d.arguments,
            },
            AMQPClass::Exchange(exchange::AMQPMethod::Delete(d)) => Command::ExchangeDelete {
                ch,
                exchange: d.exchange.as_str().to_string(),
                if_unused: d.if_unused,
                nowait: d.nowait,
            },
            AMQPClass::Exchange(exchange::AMQPMethod::Bind(b)) => Command::ExchangeBind {
                ch,
                destination: b.destination.as_str().to_string(),
                source: b.source.as_str().to_string(),
                routing_key: b.routing_key.as_str().to_string(),
                nowait: b.nowait,
                arguments: b.arguments,
            },
            AMQPClass::Exchange(exchange::AMQPMethod::Unbind(b)) => Command::ExchangeUnbind {
                ch,
                destination: b.destination.as_str().to_string(),
                source: b.source.as_str().to_string(),
                routing_key: b.routing_key.as_str().to_string(),
                nowait: b.nowait,
                arguments: b.arguments,
            },
            AMQPClass::Queue(queue::AMQPMethod::Declare(d)) => {
                let (queue, server_named) = if d.queue.as_str().is_empty() && !d.passive {
                    (self.generated_name("amq.gen-"), true)
                } else if d.queue.as_str().is_empty() {
                    match self.queue_name(number, "") {
                        Some(q) => (q, false),
                        None => {
                            return self
                                .channel_error(
                                    number,
                                    NOT_FOUND,
                                    "no previously declared queue",
                                    class_id,
                                    method_id,
                                )
                                .await
                        }
                    }
                } else {
                    (d.queue.as_str().to_string(), false)
                };
                self.slot(number).last_queue = Some(queue.clone());
                Command::QueueDeclare {
                    ch,
                    queue,
                    server_named,
                    passive: d.passive,
                    durable: d.durable,
                    exclusive: d.exclusive,
                    auto_delete: d.auto_delete,
                    nowait: d.nowait,
                    arguments: d.arguments,
                }
            }
            AMQPClass::Queue(queue::AMQPMethod::Bind(b)) => {
                let Some(queue) = self.queue_name(number, b.queue.as_str()) else {
                    return self
                        .channel_error(
                            number,
                            NOT_FOUND,
                            "no previously declared queue",
                            class_id,
                            method_id,
                        )
                        .await;
                };
                // Spec: with an empty queue name and routing key, the key is the queue name.
                let routing_key =
                    if b.queue.as_str().is_empty() && b.routing_key.as_str().is_empty() {
                        queue.clone()
                    } else {
                        b.routing_key.as_str().to_string()
                    };
                Command::QueueBind {
                    ch,
                    queue,
                    exchange: b.exchange.as_str().to_string(),
                    routing_key,
                    nowait: b.nowait,
                    arguments: b.arguments,
                }
            }
            AMQPClass::Queue(queue::AMQPMethod::Unbind(b)) => {
                let Some(queue) = self.queue_name(number, b.queue.as_str()) else {
                    return self
                        .channel_error(
                            number,
                            NOT_FOUND,
                            "no previously declared queue",
                            class_id,
                            method_id,
                        )
                        .await;
                };
                Command::QueueUnbind {
                    ch,
                    queue,
                    exchange: b.exchange.as_str().to_string(),
                    routing_key: b.routing_key.as_str().to_string(),
                    arguments: b.arguments,
                }
            }
            AMQPClass::Queue(queue::AMQPMethod::Purge(p)) => {
                let Some(queue) = self.queue_name(number, p.queue.as_str()) else {
                    return self
                        .channel_error(
                            number,
                            NOT_FOUND,
                            "no previously declared queue",
                            class_id,
                            method_id,
                        )
                        .await;
                };
                Command::QueuePurge {
                    ch,
                    queue,
                    nowait: p.nowait,
                }
            }
            AMQPClass::Queue(queue::AMQPMethod::Delete(d)) => {
                let Some(queue) = self.queue_name(number, d.queue.as_str()) else {
                    return self
                        .channel_error(
                            number,
                            NOT_FOUND,
                            "no previously declared queue",
                            class_id,
                            method_id,
                        )
                        .await;
                };
                Command::QueueDelete {
                    ch,
                    queue,
                    if_unused: d.if_unused,
                    if_empty: d.if_empty,
                    nowait: d.nowait,
                }
            }
            AMQPClass::Basic(basic::AMQPMethod::Qos(q)) => {
                // amq-protocol reads prefetch_size as reserved (RabbitMQ does not implement it).
                Command::Qos {
                    ch,
                    prefetch_size: 0,
                    prefetch_count: q.prefetch_count,
                    global: q.global,
                }
            }
            AMQPClass::Basic(basic::AMQPMethod::Consume(c)) => {
                let Some(queue) = self.queue_name(number, c.queue.as_str()) else {
                    return self
                        .channel_error(
                            number,
                            NOT_FOUND,
                            "no previously declared queue",
                            class_id,
                            method_id,
                        )
                        .await;
                };
                let consumer_tag = if c.consumer_tag.as_str().is_empty() {
                    self.generated_name("amq.ctag-")
                } else {
                    c.consumer_tag.as_str().to_string()
                };
                Command::Consume {
                    ch,
                    queue,
                    consumer_tag,
                    no_local: c.no_local,
                    no_ack: c.no_ack,
                    exclusive: c.exclusive,
                    nowait: c.nowait,
                    arguments: c.arguments,
                }
            }
            AMQPClass::Basic(basic::AMQPMethod::Cancel(c)) => Command::Cancel {
                ch,
                consumer_tag: c.consumer_tag.as_str().to_string(),
                nowait: c.nowait,
            },
            AMQPClass::Basic(basic::AMQPMethod::Publish(p)) => {
                if p.immediate {
                    return Err(hard(NOT_IMPLEMENTED, "immediate=true", class_id, method_id));
                }
                self.slot(number).content = Some(PendingPublish {
                    exchange: p.exchange.as_str().to_string(),
                    routing_key: p.routing_key.as_str().to_string(),
                    mandatory: p.mandatory,
                    header: None,
                    chunks: Vec::new(),
                    received: 0,
                });
                return Ok(());
            }
            AMQPClass::Basic(basic::AMQPMethod::Get(g)) => {
                let Some(queue) = self.queue_name(number, g.queue.as_str()) else {
                    return self
                        .channel_error(
                            number,
                            NOT_FOUND,
                            "no previously declared queue",
                            class_id,
                            method_id,
                        )
                        .await;
                };
                Command::Get {
                    ch,
                    queue,
                    no_ack: g.no_ack,
                }
            }
            AMQPClass::Basic(basic::AMQPMethod::Ack(a)) => {
                return self
                    .settle(
                        number,
                        Settle::Ack {
                            delivery_tag: a.delivery_tag,
                            multiple: a.multiple,
                        },
                    )
                    .await;
            }
            AMQPClass::Basic(basic::AMQPMethod::Nack(n)) => {
                return self
                    .settle(
                        number,
                        Settle::Nack {
                            delivery_tag: n.delivery_tag,
                            multiple: n.multiple,
                            requeue: n.requeue,
                        },
                    )
                    .await;
            }
            AMQPClass::Basic(basic::AMQPMethod::Reject(r)) => {
                return self
                    .settle(
                        number,
                        Settle::Nack {
                            delivery_tag: r.delivery_tag,
                            multiple: false,
                            requeue: r.requeue,
                        },
                    )
                    .await;
            }
            AMQPClass::Basic(basic::AMQPMethod::Recover(r)) => Command::Recover {
                ch,
                requeue: r.requeue,
            },
            AMQPClass::Basic(basic::AMQPMethod::RecoverAsync(r)) => {
                self.slot(number).silent_recovers += 1;
                Command::Recover {
                    ch,
                    requeue: r.requeue,
                }
            }
            AMQPClass::Confirm(confirm::AMQPMethod::Select(s)) => {
                let slot = self.slot(number);
                if slot.mode == Mode::Tx {
                    return self
                        .channel_error(
                            number,
                            PRECONDITION_FAILED,
                            "cannot switch from tx to confirm mode",
                            class_id,
                            method_id,
                        )
                        .await;
                }
                slot.mode = Mode::Confirm;
                if !s.nowait {
                    put_method(
                        &mut self.out,
                        number,
                        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                    );
                }
                return Ok(());
            }
            AMQPClass::Tx(tx::AMQPMethod::Select(_)) => {
                let slot = self.slot(number);
                if slot.mode == Mode::Confirm {
                    return self
                        .channel_error(
                            number,
                            PRECONDITION_FAILED,
                            "cannot switch from confirm to tx mode",
                            class_id,
                            method_id,
                        )
                        .await;
                }
                slot.mode = Mode::Tx;
                put_method(
                    &mut self.out,
                    number,
                    AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})),
                );
                return Ok(());
            }
            AMQPClass::Tx(tx::AMQPMethod::Commit(_)) => {
                let slot = self.slot(number);
                if slot.mode != Mode::Tx {
                    return self
                        .channel_error(
                            number,
                            PRECONDITION_FAILED,
                            "channel is not transactional",
                            class_id,
                            method_id,
                        )
                        .await;
                }
                Command::TxCommit {
                    ch,
                    publishes: std::mem::take(&mut slot.tx_publishes),
                    settles: std::mem::take(&mut slot.tx_settles),
                }
            }
            AMQPClass::Tx(tx::AMQPMethod::Rollback(_)) => {
                let slot = self.slot(number);
                if slot.mode != Mode::Tx {
                    return self
                        .channel_error(
                            number,
                            PRECONDITION_FAILED,
                            "channel is not transactional",
                            class_id,
                            method_id,
                        )
                        .await;
                }
                slot.tx_publishes.clear();
                slot.tx_settles.clear();
                put_method(
                    &mut self.out,
                    number,
                    AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
                );
                return Ok(());
            }
            AMQPClass::Connection(_) => {
                return Err(hard(
                    COMMAND_INVALID,
                    "connection method on a non-zero channel",
                    class_id,
                    method_id,
                ));
            }
            // Methods only a server sends (deliver, get-ok, declare-ok, ...).
            _ => {
                return Err(hard(
                    NOT_IMPLEMENTED,
                    "method not expected from a client",
                    class_id,
                    method_id,
                ))
            }
        };
        self.submit(command).await
    }

    async fn settle(&mut self, number: u16, settle: Settle) -> Result<(), Stop> {
        let slot = self.slot(number);
        if slot.mode == Mode::Tx {
            slot.tx_settles.push(settle);
            return Ok(());
        }
        let ch = slot.chref;
        self.submit(Command::Settle { ch, settle }).await
    }

    async fn content_header(&mut self, frame: RawFrame) -> Result<(), Stop> {
        let number = frame.channel;
        let expecting = match self.channels.get(&number) {
            Some(slot)
                if slot.phase == Phase::ServerClosing || slot.phase == Phase::ClientClosing =>
            {
                return Ok(())
            }
            Some(slot) => matches!(&slot.content, Some(p) if p.header.is_none()),
            None => false,
        };
        if !expecting {
            return Err(hard(
                UNEXPECTED_FRAME,
                "expected method frame, got non method frame instead",
                0,
                0,
            ));
        }
        let header = match ContentHeader::parse(&frame.payload) {
            Ok(h) => h,
            Err(e) => return Err(hard(FRAME_ERROR, e, 60, 40)),
        };
        if header.class_id != 60 {
            return Err(hard(
                UNEXPECTED_FRAME,
                format!(
                    "expected content header for class 60, got one for class {} instead",
                    header.class_id
                ),
                60,
                40,
            ));
        }
        let max = self.broker.config.max_message_size;
        if header.body_size > max {
            return self
                .channel_error(
                    number,
                    PRECONDITION_FAILED,
                    format!(
                        "message size {} is larger than configured max size {}",
                        header.body_size, max
                    ),
                    60,
                    40,
                )
                .await;
        }
        let known = match self
            .slot(number)
            .last_properties
            .matching(&header.properties)
        {
            Some(known) => known,
            None => match KnownProperties::check(&header.properties, &self.user) {
                Ok(known) => {
                    self.slot(number).last_properties.remember(&known);
                    known
                }
                Err(BadProperties::Malformed(e)) => return Err(hard(FRAME_ERROR, e, 60, 40)),
                Err(BadProperties::Refused(detail)) => {
                    return self
                        .channel_error(number, PRECONDITION_FAILED, detail, 60, 40)
                        .await
                }
            },
        };
        let pending = PendingHeader {
            body_size: header.body_size,
            properties: known,
        };
        let slot = self.slot(number);
        let content = slot.content.as_mut().expect("checked above");
        content.header = Some(pending);
        if header.body_size == 0 {
            return self.complete_publish(number).await;
        }
        Ok(())
    }

    async fn content_body(&mut self, frame: RawFrame) -> Result<(), Stop> {
        let number = frame.channel;
        let slot = match self.channels.get_mut(&number) {
            Some(slot) if slot.phase != Phase::Open => return Ok(()),
            Some(slot) => slot,
            None => {
                return Err(hard(
                    UNEXPECTED_FRAME,
                    "expected method frame, got non method frame instead",
                    0,
                    0,
                ))
            }
        };
        let Some(content) = slot.content.as_mut().filter(|c| c.header.is_some()) else {
            return Err(hard(
                UNEXPECTED_FRAME,
                "expected method frame, got non method frame instead",
                0,
                0,
            ));
        };
        let body_size = content.header.as_ref().expect("filtered").body_size;
        let len = frame.payload.len() as u64;
        if content.received + len > body_size {
            return Err(hard(
                FRAME_ERROR,
                "content body frame exceeds remaining content size",
                60,
                40,
            ));
        }
        content.received += len;
        if len > 0 {
            content.chunks.push(frame.payload);
        }
        if content.received == body_size {
            return self.complete_publish(number).await;
        }
        Ok(())
    }

    async fn complete_publish(&mut self, number: u16) -> Result<(), Stop> {
        let slot = self.slot(number);
        let mut content = slot.content.take().expect("a publish in progress");
        let header = content.header.take().expect("header arrived");
        let body = content.take_body();
        let known = header.properties;
        let confirm_seq = if slot.mode == Mode::Confirm {
            slot.publish_seq += 1;
            Some(slot.publish_seq)
        } else {
            None
        };
        let publish = Publish {
            exchange: content.exchange,
            routing_key: content.routing_key,
            mandatory: content.mandatory,
            confirm_seq,
            message: PublishedMessage {
                properties: known.raw,
                body,
                persistent: known.persistent,
                priority: known.priority,
                expiration_ms: known.expiration_ms,
            },
        };
        if slot.mode == Mode::Tx {
            slot.tx_publishes.push(publish);
            return Ok(());
        }
        let ch = slot.chref;
        self.submit(Command::Publish { ch, publish }).await
    }
}

pub(crate) fn put_channel_close(
    out: &mut bytes::BytesMut,
    number: u16,
    code: u16,
    text: &str,
    class_id: u16,
    method_id: u16,
) {
    put_method(
        out,
        number,
        AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
            reply_code: code,
            reply_text: super::truncate_short(text).into(),
            class_id,
            method_id,
        })),
    );
}
