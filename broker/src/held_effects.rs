//! Effects that wait for their entry's fsync. A lone node applies an entry as soon as it is
//! written and fsyncs it while the next batch fills (`EffectSink`), so an effect that promises
//! something ([`Effect::is_promise`]) must not reach its client before the fsync: a power cut
//! could still take the entry back. Deliveries and other effects that promise nothing go at
//! once, unless something of the same connection is held: each connection's effects keep the
//! order in which they were applied (a confirm before the channel's close-ok, a consume-ok
//! before that consumer's deliveries).

use crate::ids::ConnId;
use crate::machine::effect::Effect;
use std::collections::{HashMap, VecDeque};

/// One connection's effects of one entry, held.
struct Held {
    index: u64,
    promise: bool,
    effects: Vec<Effect>,
}

impl Held {
    fn may_go(&self, durable: u64) -> bool {
        !self.promise || self.index <= durable
    }
}

#[derive(Default)]
pub(crate) struct HeldEffects {
    /// Every entry up to here is durable.
    durable: u64,
    /// Per connection, what waits, oldest first; no empty queues.
    queues: HashMap<ConnId, VecDeque<Held>>,
}

impl HeldEffects {
    /// One connection's effects of the entry at `index`: returned when they may go now, kept
    /// otherwise.
    pub(crate) fn admit(
        &mut self,
        conn: ConnId,
        index: u64,
        effects: Vec<Effect>,
    ) -> Option<Vec<Effect>> {
        let queue = self.queues.get_mut(&conn);
        if queue.is_none() && index <= self.durable {
            // The common case, and the only one on a cluster node: nothing to look at.
            return Some(effects);
        }
        let held = Held {
            index,
            promise: effects.iter().any(Effect::is_promise),
            effects,
        };
        match queue {
            Some(queue) => queue.push_back(held),
            None if !held.promise => return Some(held.effects),
            None => {
                self.queues.insert(conn, VecDeque::from([held]));
            }
        }
        None
    }

    /// Every entry up to `index` is durable: what may go now, per connection, in order.
    pub(crate) fn durable(&mut self, index: u64) -> Vec<(ConnId, Vec<Effect>)> {
        self.durable = self.durable.max(index);
        if self.queues.is_empty() {
            return Vec::new();
        }
        let durable = self.durable;
        let mut released = Vec::new();
        self.queues.retain(|conn, queue| {
            let mut out: Vec<Effect> = Vec::new();
            while let Some(front) = queue.front() {
                if !front.may_go(durable) {
                    break;
                }
                let held = queue.pop_front().expect("front exists");
                out.extend(held.effects);
            }
            if !out.is_empty() {
                released.push((*conn, out));
            }
            !queue.is_empty()
        });
        released
    }

    /// Drops what is held for `conn`: it closed, or is being closed ahead of it.
    pub(crate) fn forget(&mut self, conn: ConnId) {
        self.queues.remove(&conn);
    }

    /// Drops everything held.
    pub(crate) fn clear(&mut self) {
        self.queues.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ChannelRef;
    use crate::machine::queue::QueuedMessage;
    use crate::machine::tests::testkit::conn;
    use bytes::Bytes;

    fn ch(c: ConnId) -> ChannelRef {
        ChannelRef {
            conn: c,
            number: 1,
            generation: 0,
        }
    }

    fn confirm(c: ConnId, seq: u64) -> Effect {
        Effect::Confirm {
            ch: ch(c),
            seq,
            ack: true,
        }
    }

    fn deliver(c: ConnId, tag: u64) -> Effect {
        Effect::Deliver {
            ch: ch(c),
            consumer_tag: "ctag".into(),
            delivery_tag: tag,
            redelivered: false,
            message: std::sync::Arc::new(QueuedMessage {
                exchange: String::new(),
                routing_key: "q".into(),
                properties: Bytes::new(),
                body: Bytes::from_static(b"m"),
                persistent: false,
                priority: 0,
                expires_at_ms: None,
                redelivered: false,
            }),
        }
    }

    #[test]
    fn a_promise_waits_for_its_entry_and_deliveries_do_not() {
        let mut held = HeldEffects::default();
        let (publisher, consumer) = (conn(1), conn(2));
        assert_eq!(held.admit(publisher, 5, vec![confirm(publisher, 1)]), None);
        assert_eq!(
            held.admit(consumer, 5, vec![deliver(consumer, 1)]),
            Some(vec![deliver(consumer, 1)]),
            "a delivery goes before its entry is durable"
        );
        assert!(held.durable(4).is_empty(), "entry 5 is not durable yet");
        assert_eq!(
            held.durable(5),
            vec![(publisher, vec![confirm(publisher, 1)])]
        );
        assert_eq!(
            held.admit(publisher, 5, vec![confirm(publisher, 2)]),
            Some(vec![confirm(publisher, 2)]),
            "an entry already durable holds nothing"
        );
    }

    #[test]
    fn a_connections_effects_keep_their_order_behind_a_held_promise() {
        let mut held = HeldEffects::default();
        let c = conn(1);
        assert_eq!(held.admit(c, 7, vec![confirm(c, 1)]), None);
        assert_eq!(
            held.admit(c, 8, vec![deliver(c, 1)]),
            None,
            "a delivery queues behind the same connection's held confirm"
        );
        assert_eq!(held.admit(c, 9, vec![confirm(c, 2)]), None);
        assert_eq!(
            held.durable(8),
            vec![(c, vec![confirm(c, 1), deliver(c, 1)])],
            "entry 9's confirm still waits"
        );
        assert_eq!(held.durable(9), vec![(c, vec![confirm(c, 2)])]);
        assert!(held.durable(10).is_empty());
    }

    #[test]
    fn a_forgotten_connection_releases_nothing() {
        let mut held = HeldEffects::default();
        let c = conn(1);
        assert_eq!(held.admit(c, 3, vec![confirm(c, 1)]), None);
        held.forget(c);
        assert!(held.durable(3).is_empty());
        assert_eq!(
            held.admit(c, 4, vec![deliver(c, 1)]),
            Some(vec![deliver(c, 1)])
        );
    }
}
