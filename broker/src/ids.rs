//! Identifiers shared by the state machine, the connections and the log: who a command came
//! from and whom an effect is for. Plain data, no behaviour beyond formatting.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A node's id in the cluster (`--node-id`).
pub type NodeId = u64;

/// One life of one node: a node that restarts gets a new incarnation, so effects that name a
/// connection of an earlier life are dropped instead of reaching a stranger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Incarnation {
    pub node: NodeId,
    pub epoch: u64,
}

/// A client connection, unique across nodes and restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConnId {
    pub node: NodeId,
    pub epoch: u64,
    pub seq: u64,
}

impl ConnId {
    pub fn incarnation(&self) -> Incarnation {
        Incarnation {
            node: self.node,
            epoch: self.epoch,
        }
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.node, self.epoch, self.seq)
    }
}

/// One opening of one channel of a connection. `generation` grows each time the client opens
/// the same channel number again, so that commands still in the log from an earlier opening
/// (pipelined before an error closed it) are told apart from the new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChannelRef {
    pub conn: ConnId,
    pub number: u16,
    pub generation: u32,
}

impl fmt::Display for ChannelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}#{}", self.conn, self.number, self.generation)
    }
}
