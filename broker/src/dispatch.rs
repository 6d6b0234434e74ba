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
/// An entry usually concerns few connections, so a small vector beats a map.
fn by_connection(effects: Vec<Effect>) -> Vec<(ConnId, Vec<Effect>)> {
    let mut groups: Vec<(ConnId, Vec<Effect>)> = Vec::new();
    for effect in effects {
        let conn = effect.conn();
        match groups.iter_mut().find(|(c, _)| *c == conn) {
            Some((_, list)) => list.push(effect),
            None => groups.push((conn, vec![effect])),
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
