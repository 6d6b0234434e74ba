//! Moving messages: enqueue (with RabbitMQ's deliver-or-enqueue: a message that finds an
//! empty queue with a consumer that has room goes straight to it), draining ready messages
//! to consumers round-robin within prefetch limits, expiry at the head, length limits,
//! settlement (ack / nack / reject / requeue), consumer removal, and the clean-up when a
//! queue, exchange, channel or connection goes away. Every step is O(log n) in the queue
//! length; nothing here scans a whole queue.
//!
//! References: <https://www.rabbitmq.com/docs/consumers>, <https://www.rabbitmq.com/docs/confirms>,
//! <https://www.rabbitmq.com/docs/consumer-prefetch>, <https://www.rabbitmq.com/docs/ttl>,
//! <https://www.rabbitmq.com/docs/maxlength>.

use super::channel::Unacked;
use super::dead_letter::{dead_letter_from, Reason};
use super::effect::Effect;
use super::exchange::Destination;
use super::queue::{MsgKey, Overflow, QueuedMessage};
use super::{Ctx, Incoming, State};
use crate::ids::{ChannelRef, ConnId};
use std::sync::Arc;

/// What happens to a settled delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Disposition {
    Ack,
    Requeue,
    /// Rejected without requeue: dead-lettered ("rejected") or dropped.
    Reject,
}

pub(crate) fn channel_range(conn: ConnId) -> std::ops::RangeInclusive<ChannelRef> {
    ChannelRef {
        conn,
        number: 0,
        generation: 0,
    }..=ChannelRef {
        conn,
        number: u16::MAX,
        generation: u32::MAX,
    }
}

impl State {
    /// Enqueues one copy of a message into queue `qid`. False when the queue refused it
    /// (x-overflow reject-publish / reject-publish-dlx), which nacks a confirmed publish.
    pub(crate) fn enqueue(&mut self, qid: u64, m: Incoming<'_>, cx: &mut Ctx) -> bool {
        let now = self.now_ms;
        let Some(q) = self.queues.get_mut(&qid) else {
            return true;
        };
        if q.args.overflow != Overflow::DropHead && q.would_overflow(m.body.len() as u64) {
            if q.args.overflow == Overflow::RejectPublishDlx {
                let msg = m.to_queued(None);
                dead_letter_from(q, msg, Reason::Maxlen, &mut cx.dead);
            }
            return false;
        }
        let key = q.next_key(m.priority);
        let expires = q.expiry_for(now, m.expiration_ms);
        let msg = m.to_queued(expires);
        self.stats.enqueued += 1;
        // RabbitMQ's deliver-or-enqueue: an empty queue hands the message to a consumer with
        // room at once; only then can a message with TTL 0 survive (ttl docs, "TTL of 0").
        if q.ready.is_empty() && !q.consumers.is_empty() {
            if let Some(cid) = self.pick_consumer(qid) {
                self.deliver(qid, cid, key, msg, cx);
                return true;
            }
        }
        let q = self.queues.get_mut(&qid).expect("queue exists");
        if expires.is_some_and(|t| t <= now) {
            self.stats.removed += 1;
            dead_letter_from(q, msg, Reason::Expired, &mut cx.dead);
            return true;
        }
        if expires.is_some() {
            self.timed_queues.insert(qid);
        }
        q.push_ready(key, msg);
        self.drop_head_over_limit(qid, cx);
        true
    }

    /// x-overflow drop-head: drops (dead-letters, "maxlen") from the head until the queue is
    /// within x-max-length / x-max-length-bytes.
    fn drop_head_over_limit(&mut self, qid: u64, cx: &mut Ctx) {
        let Some(q) = self.queues.get_mut(&qid) else {
            return;
        };
        if q.args.overflow != Overflow::DropHead {
            return;
        }
        while q.over_limit() {
            let (_, dropped) = q.pop_head().expect("over the limit, so not empty");
            self.stats.removed += 1;
            dead_letter_from(q, dropped, Reason::Maxlen, &mut cx.dead);
        }
    }

    /// Can this consumer take a delivery now (flow, its own prefetch, the channel's)?
    pub(crate) fn consumer_has_room(&self, cid: u64) -> bool {
        let Some(c) = self.consumers.get(&cid) else {
            return false;
        };
        let Some(ch) = self.channels.get(&c.ch) else {
            return false;
        };
        ch.flow_active && (c.no_ack || (c.own_room() && ch.global_room()))
    }

    /// The next consumer of the queue, round-robin, that has room; it moves to the back.
    fn pick_consumer(&mut self, qid: u64) -> Option<u64> {
        let q = self.queues.get(&qid)?;
        let pos = q
            .consumers
            .iter()
            .position(|cid| self.consumer_has_room(*cid))?;
        let q = self.queues.get_mut(&qid)?;
        let cid = q.consumers.remove(pos)?;
        q.consumers.push_back(cid);
        Some(cid)
    }

    /// basic.deliver of one message to consumer `cid`.
    fn deliver(&mut self, qid: u64, cid: u64, key: MsgKey, msg: Arc<QueuedMessage>, cx: &mut Ctx) {
        let State {
            queues,
            consumers,
            channels,
            stats,
            ..
        } = self;
        let c = consumers.get_mut(&cid).expect("picked consumer exists");
        let ch = channels.get_mut(&c.ch).expect("consumer's channel exists");
        let delivery_tag = ch.next_delivery_tag();
        let redelivered = msg.redelivered;
        if c.no_ack {
            stats.removed += 1;
            cx.fx.push(Effect::Deliver {
                ch: c.ch,
                consumer_tag: c.tag.clone(),
                delivery_tag,
                redelivered,
                message: msg,
            });
        } else {
            cx.fx.push(Effect::Deliver {
                ch: c.ch,
                consumer_tag: c.tag.clone(),
                delivery_tag,
                redelivered,
                message: msg.clone(),
            });
            c.unacked += 1;
            ch.consumer_unacked += 1;
            if let Some(q) = queues.get_mut(&qid) {
                q.unacked_count += 1;
            }
            ch.unacked.insert(
                delivery_tag,
                Unacked {
                    queue_id: qid,
                    key,
                    message: msg,
                    consumer: Some(cid),
                },
            );
        }
    }

    /// Removes expired messages from the head of the queue (dead-lettering them).
    pub(crate) fn expire_head(&mut self, qid: u64, cx: &mut Ctx) {
        let now = self.now_ms;
        let Some(q) = self.queues.get_mut(&qid) else {
            return;
        };
        while q.head_expired(now) {
            let (_, msg) = q.pop_head().expect("head exists");
            self.stats.removed += 1;
            dead_letter_from(q, msg, Reason::Expired, &mut cx.dead);
        }
    }

    /// Delivers ready messages to consumers with room until one of the two runs out.
    pub(crate) fn drain(&mut self, qid: u64, cx: &mut Ctx) {
        loop {
            match self.queues.get(&qid) {
                Some(q) if !q.ready.is_empty() && !q.consumers.is_empty() => {}
                _ => return,
            }
            self.expire_head(qid, cx);
            if self.queues.get(&qid).is_none_or(|q| q.ready.is_empty()) {
                return;
            }
            let Some(cid) = self.pick_consumer(qid) else {
                return;
            };
            let (key, msg) = self
                .queues
                .get_mut(&qid)
                .and_then(|q| q.pop_head())
                .expect("not empty");
            self.deliver(qid, cid, key, msg, cx);
        }
    }

    /// Marks every queue that a consumer of this channel reads as worth draining (the
    /// channel's prefetch room or flow changed).
    pub(crate) fn mark_channel_dirty(&self, ch: ChannelRef, cx: &mut Ctx) {
        if let Some(chan) = self.channels.get(&ch) {
            for cid in chan.consumers.values() {
                if let Some(c) = self.consumers.get(cid) {
                    cx.dirty.insert(c.queue_id);
                }
            }
        }
    }

    /// Settles one delivery that was taken out of the channel's unacked map.
    pub(crate) fn finish_unacked(
        &mut self,
        ch: ChannelRef,
        u: Unacked,
        how: Disposition,
        cx: &mut Ctx,
    ) {
        if let Some(cid) = u.consumer {
            if let Some(c) = self.consumers.get_mut(&cid) {
                c.unacked -= 1;
            }
            if let Some(chan) = self.channels.get_mut(&ch) {
                chan.consumer_unacked -= 1;
            }
        }
        // A delivery of a deleted queue was already counted as removed when it was deleted.
        let Some(q) = self.queues.get_mut(&u.queue_id) else {
            return;
        };
        q.unacked_count -= 1;
        cx.dirty.insert(u.queue_id);
        match how {
            Disposition::Ack => self.stats.removed += 1,
            Disposition::Requeue => {
                let mut msg = u.message;
                // Copied only while another holder shares it (a snapshot being written, a
                // delivery not yet sent).
                Arc::make_mut(&mut msg).redelivered = true;
                if msg.expires_at_ms.is_some() {
                    self.timed_queues.insert(u.queue_id);
                }
                q.push_ready(u.key, msg);
                // As RabbitMQ's requeue_and_run: a drop-head queue drops back to its limit.
                self.drop_head_over_limit(u.queue_id, cx);
            }
            Disposition::Reject => {
                self.stats.removed += 1;
                dead_letter_from(q, u.message, Reason::Rejected, &mut cx.dead);
            }
        }
    }

    /// Requeues every unacknowledged delivery of the channel (basic.recover, close).
    pub(crate) fn requeue_all(&mut self, ch: ChannelRef, cx: &mut Ctx) {
        let Some(chan) = self.channels.get_mut(&ch) else {
            return;
        };
        let unacked = std::mem::take(&mut chan.unacked);
        for (_, u) in unacked {
            self.finish_unacked(ch, u, Disposition::Requeue, cx);
        }
    }

    /// Forgets one consumer (cancel, close, error). An auto-delete queue whose last consumer
    /// this was is deleted. The caller removes the tag from the channel.
    pub(crate) fn remove_consumer(&mut self, cid: u64, cx: &mut Ctx) {
        let Some(c) = self.consumers.remove(&cid) else {
            return;
        };
        let now = self.now_ms;
        let Some(q) = self.queues.get_mut(&c.queue_id) else {
            return;
        };
        q.consumers.retain(|x| *x != cid);
        if q.exclusive_consumer == Some(cid) {
            q.exclusive_consumer = None;
        }
        if q.consumers.is_empty() {
            q.last_used_ms = now;
            if q.auto_delete && q.had_consumer {
                self.delete_queue(c.queue_id, cx);
            }
        }
    }

    /// Deletes a queue: its ready messages and the unacked deliveries of it are dropped (not
    /// dead-lettered), its consumers are cancelled (basic.cancel to each), its bindings go
    /// (and auto-delete exchanges left without bindings with them). Returns the number of
    /// ready messages it had.
    pub(crate) fn delete_queue(&mut self, qid: u64, cx: &mut Ctx) -> u32 {
        let Some(q) = self.queues.remove(&qid) else {
            return 0;
        };
        self.queue_by_name.remove(&q.name);
        if let Some(owner) = q.exclusive_owner {
            self.owned_queues.remove(&(owner, qid));
        }
        self.timed_queues.remove(&qid);
        self.stats.removed += q.ready.len() as u64 + q.unacked_count;
        for cid in &q.consumers {
            if let Some(c) = self.consumers.remove(cid) {
                if let Some(chan) = self.channels.get_mut(&c.ch) {
                    chan.consumers.remove(&*c.tag);
                }
                cx.fx.push(Effect::CancelConsumer {
                    ch: c.ch,
                    consumer_tag: c.tag.to_string(),
                });
            }
        }
        self.remove_bindings_to(Destination::Queue(q.name.clone()));
        q.ready.len() as u32
    }

    /// Removes an exchange from the map and its bindings as source from the reverse index.
    fn drop_exchange(&mut self, name: &str) -> bool {
        let Some(x) = self.exchanges.remove(name) else {
            return false;
        };
        for (rk, by_dest) in x.bindings {
            for dest in by_dest.into_keys() {
                if let Some(set) = self.bindings_by_dest.get_mut(&dest) {
                    set.remove(&(name.to_owned(), rk.clone()));
                    if set.is_empty() {
                        self.bindings_by_dest.remove(&dest);
                    }
                }
            }
        }
        true
    }

    /// Deletes an exchange with all bindings from and to it.
    pub(crate) fn delete_exchange(&mut self, name: &str) {
        if self.drop_exchange(name) {
            self.remove_bindings_to(Destination::Exchange(name.to_owned()));
        }
    }

    /// Removes every binding to `dest`; an auto-delete source exchange left without
    /// bindings is deleted too, and so on.
    pub(crate) fn remove_bindings_to(&mut self, dest: Destination) {
        let mut work = vec![dest];
        while let Some(d) = work.pop() {
            let Some(sources) = self.bindings_by_dest.remove(&d) else {
                continue;
            };
            for (src, rk) in sources {
                let Some(x) = self.exchanges.get_mut(&src) else {
                    continue;
                };
                x.remove_destination(&rk, &d);
                if x.auto_delete && x.binding_count == 0 && self.drop_exchange(&src) {
                    work.push(Destination::Exchange(src));
                }
            }
        }
    }

    /// Removes one binding (unbind); deletes an auto-delete source left without bindings.
    pub(crate) fn unbind(
        &mut self,
        source: &str,
        routing_key: &str,
        dest: Destination,
        arguments: &amq_protocol::types::FieldTable,
    ) {
        let Some(x) = self.exchanges.get_mut(source) else {
            return;
        };
        let (removed, none_left) = x.remove_binding(routing_key, &dest, arguments);
        if !removed {
            return;
        }
        let delete_source = x.auto_delete && x.binding_count == 0;
        if none_left {
            if let Some(set) = self.bindings_by_dest.get_mut(&dest) {
                set.remove(&(source.to_owned(), routing_key.to_owned()));
                if set.is_empty() {
                    self.bindings_by_dest.remove(&dest);
                }
            }
        }
        if delete_source {
            self.delete_exchange(source);
        }
    }

    /// Adds a binding (idempotent).
    pub(crate) fn bind(
        &mut self,
        source: &str,
        routing_key: &str,
        dest: Destination,
        arguments: &amq_protocol::types::FieldTable,
    ) {
        let Some(x) = self.exchanges.get_mut(source) else {
            return;
        };
        if x.add_binding(routing_key, dest.clone(), arguments) {
            self.bindings_by_dest
                .entry(dest)
                .or_default()
                .insert((source.to_owned(), routing_key.to_owned()));
        }
    }

    /// The channel is gone: requeue its deliveries, forget its consumers (RabbitMQ requeues
    /// first, then cancels, so an auto-delete queue takes the requeued messages with it).
    pub(crate) fn close_channel(&mut self, ch: ChannelRef, cx: &mut Ctx) {
        self.requeue_all(ch, cx);
        let Some(chan) = self.channels.remove(&ch) else {
            return;
        };
        for cid in chan.consumers.into_values() {
            self.remove_consumer(cid, cx);
        }
    }

    /// The connection is gone: close all its channels, delete its exclusive queues.
    pub(crate) fn close_connection(&mut self, conn: ConnId, cx: &mut Ctx) {
        let chans: Vec<ChannelRef> = self
            .channels
            .range(channel_range(conn))
            .map(|(k, _)| *k)
            .collect();
        for ch in chans {
            self.close_channel(ch, cx);
        }
        let errored: Vec<ChannelRef> = self
            .errored_channels
            .range(channel_range(conn))
            .copied()
            .collect();
        for ch in errored {
            self.errored_channels.remove(&ch);
        }
        let owned: Vec<u64> = self
            .owned_queues
            .range((conn, 0)..=(conn, u64::MAX))
            .map(|(_, q)| *q)
            .collect();
        for qid in owned {
            self.delete_queue(qid, cx);
        }
    }

    /// Time-based work, run at the start of every entry: expire messages at the heads of
    /// queues and delete queues whose x-expires has elapsed. Only queues that have expiring
    /// messages or x-expires are visited.
    pub(crate) fn run_timers(&mut self, cx: &mut Ctx) {
        let now = self.now_ms;
        let timed: Vec<u64> = self.timed_queues.iter().copied().collect();
        for qid in timed {
            let Some(q) = self.queues.get(&qid) else {
                self.timed_queues.remove(&qid);
                continue;
            };
            if let Some(expires) = q.args.expires_ms {
                if q.consumers.is_empty() && now >= q.last_used_ms.saturating_add(expires) {
                    self.delete_queue(qid, cx);
                    continue;
                }
            }
            self.expire_head(qid, cx);
            let q = &self.queues[&qid];
            if q.expiring_ready == 0 && q.args.expires_ms.is_none() {
                self.timed_queues.remove(&qid);
            }
        }
    }

    /// Runs dead-lettering and draining until nothing is left to do.
    pub(crate) fn run_pending(&mut self, cx: &mut Ctx) {
        loop {
            if let Some(dl) = cx.dead.pop_front() {
                self.publish_dead_letter(dl, cx);
            } else if let Some(qid) = cx.dirty.pop_first() {
                self.drain(qid, cx);
            } else {
                return;
            }
        }
    }
}
