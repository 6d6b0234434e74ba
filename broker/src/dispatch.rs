//! Carries applied effects to the local connection tasks they name. Every node computes the
//! same effects; this node keeps those for connections it hosts in its current life and drops
//! the rest (other nodes' connections, connections of an earlier life, connections already
//! gone).
//!
//! The per-connection mailboxes are unbounded on purpose: `dispatch` runs inside the log's
//! apply loop and must never wait for one slow client, which would stall every other one.
//! What bounds them is upstream: consumers' prefetch in the machine limits unacknowledged
//! deliveries, and the connection drains its mailbox before reading more from its socket.

use crate::ids::ConnId;
use crate::log::EffectSink;
use crate::machine::effect::Effect;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::mpsc;

pub type Mailbox = mpsc::UnboundedReceiver<Vec<Effect>>;

#[derive(Default)]
pub struct Dispatcher {
    conns: Mutex<HashMap<ConnId, mpsc::UnboundedSender<Vec<Effect>>>>,
}

impl Dispatcher {
    pub fn new() -> Dispatcher {
        Dispatcher::default()
    }

    /// Registers a local connection and returns its mailbox.
    pub fn register(&self, conn: ConnId) -> Mailbox {
        let (tx, rx) = mpsc::unbounded_channel();
        self.conns.lock().expect("dispatcher lock").insert(conn, tx);
        rx
    }

    pub fn unregister(&self, conn: ConnId) {
        self.conns.lock().expect("dispatcher lock").remove(&conn);
    }

    /// Tells every local connection to close with a connection error (hard close).
    pub fn close_all(&self, reply_code: u16, reply_text: &str) {
        let conns = self.conns.lock().expect("dispatcher lock");
        for (conn, tx) in conns.iter() {
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
        self.conns.lock().expect("dispatcher lock").len()
    }
}

impl EffectSink for Dispatcher {
    fn reset(&self) {
        self.close_all(
            crate::reply_code::CONNECTION_FORCED,
            &crate::reply_code::text(
                crate::reply_code::CONNECTION_FORCED,
                "this node installed a snapshot of the cluster state; reconnect",
            ),
        );
    }

    fn dispatch(&self, effects: Vec<Effect>) {
        if effects.is_empty() {
            return;
        }
        // Group by connection, keeping each connection's effects in apply order. An entry
        // usually concerns few connections, so a small vector beats a map.
        let mut groups: Vec<(ConnId, Vec<Effect>)> = Vec::new();
        for effect in effects {
            let conn = effect.conn();
            match groups.iter_mut().find(|(c, _)| *c == conn) {
                Some((_, list)) => list.push(effect),
                None => groups.push((conn, vec![effect])),
            }
        }
        let conns = self.conns.lock().expect("dispatcher lock");
        for (conn, list) in groups {
            if let Some(tx) = conns.get(&conn) {
                // A closed mailbox means the connection is finishing; its effects no longer
                // matter (the machine requeues what it held when ConnectionClosed applies).
                let _ = tx.send(list);
            }
        }
    }
}
