//! Carries applied effects to the local connection tasks they name. Every node computes the
//! same effects; this node keeps those for connections it hosts in its current life and drops
//! the rest (other nodes' connections, connections of an earlier life, connections already
//! gone). Effects that promise something wait here for their entry's fsync when the log applies
//! before it syncs (`held_effects`).
//!
//! The per-connection mailboxes are unbounded on purpose: `dispatch` runs inside the log's
//! apply loop and must never wait for one slow client, which would stall every other one.
//! What bounds them is upstream: consumers' prefetch in the machine limits unacknowledged
//! deliveries, and the connection drains its mailbox before reading more from its socket.

use crate::held_effects::HeldEffects;
use crate::ids::ConnId;
use crate::log::EffectSink;
use crate::machine::effect::Effect;
use crate::reply_code::{self, CONNECTION_FORCED, INTERNAL_ERROR};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use tokio::sync::mpsc;

pub type Mailbox = mpsc::UnboundedReceiver<Vec<Effect>>;

#[derive(Default)]
struct Routes {
    mailboxes: HashMap<ConnId, mpsc::UnboundedSender<Vec<Effect>>>,
    held: HeldEffects,
}

impl Routes {
    fn send(&self, conn: ConnId, effects: Vec<Effect>) {
        if let Some(tx) = self.mailboxes.get(&conn) {
            // A closed mailbox means the connection is finishing; its effects no longer
            // matter (the machine requeues what it held when ConnectionClosed applies).
            let _ = tx.send(effects);
        }
    }
}

#[derive(Default)]
pub struct Dispatcher {
    routes: Mutex<Routes>,
}

impl Dispatcher {
    pub fn new() -> Dispatcher {
        Dispatcher::default()
    }

    fn routes(&self) -> MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a local connection and returns its mailbox.
    pub fn register(&self, conn: ConnId) -> Mailbox {
        let (tx, rx) = mpsc::unbounded_channel();
        self.routes().mailboxes.insert(conn, tx);
        rx
    }

    pub fn unregister(&self, conn: ConnId) {
        let mut routes = self.routes();
        routes.mailboxes.remove(&conn);
        routes.held.forget(conn);
    }

    /// Tells every local connection to close with a connection error (hard close), ahead of
    /// anything held for it.
    pub fn close_all(&self, reply_code: u16, reply_text: &str) {
        let mut routes = self.routes();
        routes.held.clear();
        for (conn, tx) in routes.mailboxes.iter() {
            let _ = tx.send(vec![Effect::ConnectionError {
                conn: *conn,
                reply_code,
                reply_text: reply_text.to_string(),
                class_id: 0,
                method_id: 0,
            }]);
        }
    }

    pub fn connection_count(&self) -> usize {
        self.routes().mailboxes.len()
    }
}

/// Splits an entry's effects by connection, keeping each connection's effects in apply order.
/// An entry usually concerns few connections, so a small vector beats a map. When all of them
/// are for one connection (a busy queue's deliveries to its one consumer), the entry's vector
/// goes to it whole; otherwise each connection's list is allocated at its final size. (Lists
/// grown one push at a time, thousands of deliveries long, cost the broker a few percent of its
/// CPU in copies and fresh pages: benchmarks.md, session 14.)
fn by_connection(effects: Vec<Effect>) -> Vec<(ConnId, Vec<Effect>)> {
    let mut counts: Vec<(ConnId, usize)> = Vec::new();
    for effect in &effects {
        let conn = effect.conn();
        match counts.iter_mut().find(|(c, _)| *c == conn) {
            Some((_, n)) => *n += 1,
            None => counts.push((conn, 1)),
        }
    }
    if let [(conn, _)] = counts[..] {
        return vec![(conn, effects)];
    }
    let mut groups: Vec<(ConnId, Vec<Effect>)> = counts
        .into_iter()
        .map(|(conn, n)| (conn, Vec::with_capacity(n)))
        .collect();
    for effect in effects {
        let conn = effect.conn();
        if let Some((_, list)) = groups.iter_mut().find(|(c, _)| *c == conn) {
            list.push(effect);
        }
    }
    groups
}

impl EffectSink for Dispatcher {
    fn reset(&self) {
        self.close_all(
            CONNECTION_FORCED,
            &reply_code::text(
                CONNECTION_FORCED,
                "this node installed a snapshot of the cluster state; reconnect",
            ),
        );
    }

    fn durability_failed(&self) {
        self.close_all(
            INTERNAL_ERROR,
            &reply_code::text(
                INTERNAL_ERROR,
                "the broker could not write its log to disk; nothing unconfirmed was kept",
            ),
        );
    }

    fn dispatch(&self, index: u64, effects: Vec<Effect>) {
        if effects.is_empty() {
            return;
        }
        let groups = by_connection(effects);
        let mut guard = self.routes();
        let routes = &mut *guard;
        for (conn, list) in groups {
            let Some(tx) = routes.mailboxes.get(&conn) else {
                continue;
            };
            if let Some(list) = routes.held.admit(conn, index, list) {
                // A closed mailbox: see `Routes::send`.
                let _ = tx.send(list);
            }
        }
    }

    fn durable(&self, index: u64) {
        let mut routes = self.routes();
        for (conn, list) in routes.held.durable(index) {
            routes.send(conn, list);
        }
    }

    fn abandon(&self, errors: Vec<Effect>) {
        let mut routes = self.routes();
        for (conn, list) in by_connection(errors) {
            routes.held.forget(conn);
            routes.send(conn, list);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ChannelRef;
    use crate::machine::tests::testkit::conn;

    /// A confirm of publish `seq` for connection `c`.
    fn confirm(c: u64, seq: u64) -> Effect {
        let ch = ChannelRef {
            conn: conn(c),
            number: 1,
            generation: 0,
        };
        Effect::Confirm { ch, seq, ack: true }
    }

    /// Each group as (connection, the seqs of its confirms in order).
    fn shape(groups: Vec<(ConnId, Vec<Effect>)>) -> Vec<(ConnId, Vec<u64>)> {
        groups
            .into_iter()
            .map(|(c, list)| {
                let seqs = list
                    .into_iter()
                    .map(|e| match e {
                        Effect::Confirm { ch, seq, .. } if ch.conn == c => seq,
                        other => panic!("{other:?} in the group of {c:?}"),
                    })
                    .collect();
                (c, seqs)
            })
            .collect()
    }

    #[test]
    fn effects_are_grouped_by_connection_in_apply_order() {
        let mixed = vec![
            confirm(1, 1),
            confirm(2, 1),
            confirm(1, 2),
            confirm(3, 1),
            confirm(2, 2),
        ];
        assert_eq!(
            shape(by_connection(mixed)),
            vec![
                (conn(1), vec![1, 2]),
                (conn(2), vec![1, 2]),
                (conn(3), vec![1])
            ]
        );
        let one = vec![confirm(4, 1), confirm(4, 2), confirm(4, 3)];
        assert_eq!(shape(by_connection(one)), vec![(conn(4), vec![1, 2, 3])]);
        assert!(by_connection(Vec::new()).is_empty());
    }
}
