//! The openraft type configuration of RaftMQ's log: what an entry carries (a batch of broker
//! commands), what a member is (its addresses and availability zone), and short aliases for the
//! openraft types that the rest of the crate names often. No behaviour.

use raftmq_broker::ids::NodeId;
use serde::{Deserialize, Serialize};
use std::fmt;

/// What the cluster knows about one member. It travels inside membership log entries, so it is
/// part of the persistent log format: fields are only ever added at the end.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Where peers reach this node's Raft transport (`host:port`).
    pub raft_addr: String,
    /// Where AMQP clients reach this node (`host:port`).
    pub amqp_addr: String,
    /// The availability zone label (empty when none was given).
    pub zone: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "raft={} amqp={} zone={}",
            self.raft_addr, self.amqp_addr, self.zone
        )
    }
}

openraft::declare_raft_types!(
    /// RaftMQ's openraft types: a log entry's application data is one group-committed batch of
    /// broker commands (`raftmq_broker::machine::command::Entry`), shared rather than copied
    /// when openraft clones an entry (for the in-memory log tail, for each follower, for
    /// applying); applying it answers nothing directly (its outcome leaves as effects), so the
    /// response is `()`.
    pub TypeConfig:
        D = std::sync::Arc<raftmq_broker::machine::command::Entry>,
        R = (),
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type LogEntry = openraft::Entry<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, NodeInfo>;
pub type Raft = openraft::Raft<TypeConfig>;
