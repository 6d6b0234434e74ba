//! The node-to-node transport over TCP: openraft's RPCs, batches forwarded from followers to
//! the leader, and admin calls, on persistent connections authenticated with the cluster
//! secret. It also simulates what a test or a demo needs of a real network: a delay between
//! nodes of different availability zones, and partitions made on purpose (fault injection).
//!
//! - [`wire`]: frames and messages.
//! - [`auth`]: the secret handshake.
//! - [`client`]: one node's connection to a peer ([`PeerClient`]).
//! - [`server`]: accepting peers and answering their requests.

pub mod auth;
pub mod client;
pub mod server;
pub mod wire;

pub use client::{CallError, PeerClient};

use raftmq_broker::ids::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

/// How this node's transport behaves.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    pub node_id: NodeId,
    /// This node's availability zone.
    pub zone: String,
    /// The shared cluster secret (empty: no secret was configured; every member must then use
    /// none).
    pub secret: Vec<u8>,
    /// Added to every message between nodes of different zones (each way).
    pub inter_az_delay: Duration,
    /// How long connecting and the handshake may take.
    pub connect_timeout: Duration,
}

/// Which traffic a partition cuts, as seen from this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Neither side's requests reach the other.
    Both,
    /// This node sends nothing to the peer (its own requests fail).
    Outgoing,
    /// This node refuses the peer's requests (and drops its connections).
    Incoming,
}

/// The partitions in force on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Faults {
    pub no_send_to: BTreeSet<NodeId>,
    pub no_receive_from: BTreeSet<NodeId>,
}

/// What the client and server halves share: configuration, faults, and when each peer last
/// answered (the leader uses that to declare a silent node lost).
pub struct Transport {
    config: TransportConfig,
    faults: RwLock<Faults>,
    contact: Mutex<HashMap<NodeId, Instant>>,
    /// A connection with a peer ended (it broke or was closed, not cut by a fault).
    disconnects: tokio::sync::broadcast::Sender<NodeId>,
    /// When a peer's process was last found gone (its port refused after its connections
    /// ended).
    gone: Mutex<HashMap<NodeId, Instant>>,
}

impl Transport {
    pub fn new(config: TransportConfig) -> Transport {
        Transport {
            config,
            faults: RwLock::new(Faults::default()),
            contact: Mutex::new(HashMap::new()),
            disconnects: tokio::sync::broadcast::channel(16).0,
            gone: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &TransportConfig {
        &self.config
    }

    /// Cuts this node off from `peer` in `direction` until [`heal`](Self::heal).
    pub fn cut(&self, peer: NodeId, direction: Direction) {
        let mut f = self.faults.write().expect("faults lock");
        if matches!(direction, Direction::Both | Direction::Outgoing) {
            f.no_send_to.insert(peer);
        }
        if matches!(direction, Direction::Both | Direction::Incoming) {
            f.no_receive_from.insert(peer);
        }
        tracing::warn!(peer, ?direction, "fault injected: partition");
    }

    /// Removes every partition.
    pub fn heal(&self) {
        *self.faults.write().expect("faults lock") = Faults::default();
        tracing::warn!("faults healed");
    }

    pub fn faults(&self) -> Faults {
        self.faults.read().expect("faults lock").clone()
    }

    pub(crate) fn may_send(&self, peer: NodeId) -> bool {
        !self
            .faults
            .read()
            .expect("faults lock")
            .no_send_to
            .contains(&peer)
    }

    pub(crate) fn may_receive(&self, peer: NodeId) -> bool {
        !self
            .faults
            .read()
            .expect("faults lock")
            .no_receive_from
            .contains(&peer)
    }

    /// The simulated latency of one message to or from a node in `zone`.
    pub(crate) fn delay_for(&self, zone: &str) -> Duration {
        if zone == self.config.zone {
            Duration::ZERO
        } else {
            self.config.inter_az_delay
        }
    }

    pub(crate) fn note_contact(&self, peer: NodeId) {
        self.contact
            .lock()
            .expect("contact lock")
            .insert(peer, Instant::now());
    }

    pub(crate) fn note_disconnect(&self, peer: NodeId) {
        let _ = self.disconnects.send(peer);
    }

    /// Tells of every connection with a peer that ends.
    pub(crate) fn disconnects(&self) -> tokio::sync::broadcast::Receiver<NodeId> {
        self.disconnects.subscribe()
    }

    pub(crate) fn note_gone(&self, peer: NodeId) {
        self.gone
            .lock()
            .expect("gone lock")
            .insert(peer, Instant::now());
    }

    /// True if `peer`'s process was found gone and it has not answered since.
    pub(crate) fn is_gone(&self, peer: NodeId) -> bool {
        let gone = self.gone.lock().expect("gone lock").get(&peer).copied();
        gone.is_some_and(|at| self.last_contact(peer).is_none_or(|heard| heard < at))
    }

    /// When `peer` last answered one of this node's requests, or last connected to this node.
    pub fn last_contact(&self, peer: NodeId) -> Option<Instant> {
        self.contact
            .lock()
            .expect("contact lock")
            .get(&peer)
            .copied()
    }
}
