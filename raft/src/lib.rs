//! RaftMQ's replicated log: openraft with its log and state machine on RocksDB, applying
//! committed entries to the broker's pure state machine.
//!
//! - [`types`]: the openraft type config (`TypeConfig`, an entry is a batch of broker commands)
//!   and [`NodeInfo`], what the membership records about a member.
//! - [`store`]: the RocksDB database (column families `logs`, `meta`, `sm`) and the log store.
//! - `recent_log`: the log's newest entries in memory (appended and not yet durable, and the
//!   stretch openraft reads back for applying and replicating).
//! - `log_writer`: the one thread that writes the log store's batches in order, one fsync per
//!   group of appends.
//! - `log_reclaim`: drops the table files of purged log entries, one at a time.
//! - [`state_machine`]: the state-machine store: broker `State` in memory, effects to the
//!   broker's `EffectSink`, snapshots.
//! - `snapshot_files`: snapshot data in files beside the database.
//! - [`transport`]: the node-to-node TCP transport (secret handshake, zone delay, faults).
//! - [`network`]: openraft's view of the transport.
//! - [`cluster`]: member lists, zones, membership changes, status, node-loss detection.
//! - `peer_gone`: a dead peer process noticed at once: node loss declared, prompt election.
//! - [`lock`]: the data directory's exclusive lock file.
//! - [`shared`]: active/standby on a shared directory: takeover, fencing epoch, checks.
//! - `proposer`: the group-commit batcher: batches, forwards to the leader, retries, dedups.
//! - [`node`]: [`LogNode`], which ties it together: open, propose, status, shutdown.
//! - `store_suite` (tests only): openraft's storage test suite against these stores.
//!
//! The broker knows none of this: it sees a `Proposer` and an `EffectSink`.

pub mod cluster;
mod left_out_bodies;
pub mod lock;
mod log_reclaim;
mod log_writer;
pub mod network;
pub mod node;
mod peer_gone;
mod proposer;
mod recent_log;
pub mod shared;
mod snapshot_files;
mod snapshot_trigger;
pub mod state_machine;
pub mod store;
pub mod transport;
pub mod types;
mod wal_prewrite;

pub use cluster::{ClusterAdmin, ClusterStatus, MemberStatus};
pub use lock::{DataDirLock, LockError};
pub use log_writer::SYNC_WINDOW;
pub use node::{LogConfig, LogNode, LogOpenError, LogStatus, ProposeError, Role};
pub use shared::{ActiveLease, LeaseInfo, SharedDir, SharedError};
pub use snapshot_trigger::SnapshotBySize;
pub use transport::Direction;
pub use types::{NodeInfo, TypeConfig};

pub use openraft;
pub use rocksdb;

#[cfg(test)]
mod store_suite;
