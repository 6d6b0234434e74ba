//! Effects from the log, turned into frames for this connection's client. An effect for a
//! channel that has since closed or been reopened (another generation) is dropped: the
//! machine already took back whatever it concerned.

use super::channel::{fold_confirms, Phase};
use super::inbound::put_channel_close;
use super::{Conn, HardError, Stop, FLOW_PAUSE};
use crate::machine::effect::{Effect, Reply};
use crate::protocol::method::put_method;
use crate::protocol::outbound::{put_content_method, put_deliver, Deliver};
use amq_protocol::protocol::{basic, channel, exchange, queue, tx, AMQPClass};
use std::time::Instant;

fn reply_method(reply: Reply) -> Option<AMQPClass> {
    Some(match reply {
        Reply::ExchangeDeclareOk => {
            AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {}))
        }
        Reply::ExchangeDeleteOk => {
            AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {}))
        }
        Reply::ExchangeBindOk => {
            AMQPClass::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {}))
        }
        Reply::ExchangeUnbindOk => {
            AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {}))
        }
        Reply::QueueDeclareOk {
            queue,
            message_count,
            consumer_count,
        } => AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
            queue: queue.into(),
            message_count,
            consumer_count,
        })),
        Reply::QueueBindOk => AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
        Reply::QueueUnbindOk => AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
        Reply::QueuePurgeOk { message_count } => {
            AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk { message_count }))
        }
        Reply::QueueDeleteOk { message_count } => {
            AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                message_count,
            }))
        }
        Reply::QosOk => AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
        Reply::ConsumeOk { consumer_tag } => {
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                consumer_tag: consumer_tag.into(),
            }))
        }
        Reply::CancelOk { consumer_tag } => {
            AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                consumer_tag: consumer_tag.into(),
            }))
        }
        Reply::GetEmpty => AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
        Reply::RecoverOk => AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
        Reply::FlowOk { active } => {
            AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk { active }))
        }
        Reply::TxCommitOk => AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
        Reply::ChannelCloseOk => return None,
    })
}

impl Conn {
    pub(crate) fn apply_effects(&mut self, batch: Vec<Effect>) -> Result<(), Stop> {
        if self.closing_deadline.is_some() {
            return Ok(());
        }
        for effect in batch {
            if let Effect::ConnectionError {
                reply_code,
                reply_text,
                class_id,
                method_id,
                ..
            } = effect
            {
                return Err(Stop::Hard(HardError::new(
                    reply_code, reply_text, class_id, method_id,
                )));
            }
            if let Effect::Flow { .. } = effect {
                tracing::debug!(
                    "publishing paused: consumers of a queue it publishes to are behind"
                );
                self.read_paused_until = Some(Instant::now() + FLOW_PAUSE);
                continue;
            }
            let Some(ch) = effect.channel() else { continue };
            let number = ch.number;
            let Some(slot) = self.channels.get_mut(&number) else {
                continue;
            };
            if slot.chref != ch {
                continue;
            }
            match effect {
                Effect::Reply {
                    reply: Reply::ChannelCloseOk,
                    ..
                } => {
                    if slot.phase == Phase::ClientClosing {
                        // Confirms for publishes made before the client's channel.close are
                        // owed to it, and must precede close-ok.
                        let confirms = std::mem::take(&mut slot.pending_confirms);
                        self.channels.remove(&number);
                        put_confirms(&mut self.out, number, &confirms);
                        put_method(
                            &mut self.out,
                            number,
                            AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                        );
                    }
                }
                Effect::Confirm { seq, ack, .. } if slot.phase == Phase::ClientClosing => {
                    slot.pending_confirms.push((seq, ack))
                }
                _ if slot.phase != Phase::Open => {}
                Effect::Reply {
                    reply: Reply::RecoverOk,
                    ..
                } if slot.silent_recovers > 0 => {
                    slot.silent_recovers -= 1;
                }
                Effect::Reply { reply, .. } => {
                    if let Some(method) = reply_method(reply) {
                        put_method(&mut self.out, number, method);
                    }
                }
                Effect::Deliver {
                    consumer_tag,
                    delivery_tag,
                    redelivered,
                    message,
                    ..
                } => {
                    let deliver = Deliver {
                        consumer_tag: &consumer_tag,
                        delivery_tag,
                        redelivered,
                        exchange: &message.exchange,
                        routing_key: &message.routing_key,
                    };
                    put_deliver(
                        &mut self.out,
                        number,
                        &deliver,
                        &message.properties,
                        &message.body,
                        self.frame_max,
                    );
                }
                Effect::GetOk {
                    delivery_tag,
                    redelivered,
                    message_count,
                    message,
                    ..
                } => {
                    let method = AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                        delivery_tag,
                        redelivered,
                        exchange: message.exchange.as_str().into(),
                        routing_key: message.routing_key.as_str().into(),
                        message_count,
                    }));
                    put_content_method(
                        &mut self.out,
                        number,
                        method,
                        &message.properties,
                        &message.body,
                        self.frame_max,
                    );
                }
                Effect::Return {
                    reply_code,
                    reply_text,
                    message,
                    ..
                } => {
                    let method = AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                        reply_code,
                        reply_text: super::truncate_short(&reply_text).into(),
                        exchange: message.exchange.as_str().into(),
                        routing_key: message.routing_key.as_str().into(),
                    }));
                    put_content_method(
                        &mut self.out,
                        number,
                        method,
                        &message.properties,
                        &message.body,
                        self.frame_max,
                    );
                }
                Effect::Confirm { seq, ack, .. } => slot.pending_confirms.push((seq, ack)),
                Effect::CancelConsumer { consumer_tag, .. } => {
                    if self.cancel_notify {
                        put_method(
                            &mut self.out,
                            number,
                            AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                                consumer_tag: consumer_tag.into(),
                                nowait: true,
                            })),
                        );
                    }
                }
                Effect::ChannelError {
                    reply_code,
                    reply_text,
                    class_id,
                    method_id,
                    ..
                } => {
                    // Confirms that came before the error still count.
                    let confirms = std::mem::take(&mut slot.pending_confirms);
                    slot.phase = Phase::ServerClosing;
                    slot.content = None;
                    put_confirms(&mut self.out, number, &confirms);
                    put_channel_close(
                        &mut self.out,
                        number,
                        reply_code,
                        &reply_text,
                        class_id,
                        method_id,
                    );
                }
                Effect::ConnectionError { .. } | Effect::Flow { .. } => {
                    unreachable!("handled above")
                }
            }
        }
        Ok(())
    }

    /// Sends the confirms gathered from the effects handled this turn, folded.
    pub(crate) fn flush_confirms(&mut self) {
        for (number, slot) in self.channels.iter_mut() {
            if !slot.pending_confirms.is_empty() {
                let confirms = std::mem::take(&mut slot.pending_confirms);
                put_confirms(&mut self.out, *number, &confirms);
            }
        }
    }
}

fn put_confirms(out: &mut bytes::BytesMut, number: u16, confirms: &[(u64, bool)]) {
    for frame in fold_confirms(confirms) {
        let method = if frame.ack {
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: frame.delivery_tag,
                multiple: frame.multiple,
            }))
        } else {
            AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag: frame.delivery_tag,
                multiple: frame.multiple,
                requeue: false,
            }))
        };
        put_method(out, number, method);
    }
}
