//! RaftMQ's replicated log: openraft with its log and state machine on RocksDB, applying
//! committed entries to the broker's pure state machine.
//!
//! - [`types`]: the openraft type config (`TypeConfig`, an entry is a batch of broker commands)
//!   and [`NodeInfo`], what the membership records about a member.
//! - [`store`]: the RocksDB database (column families `logs`, `meta`, `sm`) and the log store.
//! - [`state_machine`]: the state-machine store: broker `State` in memory, effects to the
//!   broker's `EffectSink`, snapshots.
//! - [`network`]: how nodes reach each other (a stub until the TCP transport arrives).
//! - [`lock`]: the data directory's exclusive lock file.
//! - `proposer`: the group-commit batcher from the broker's proposal channel to openraft.
//! - [`node`]: [`LogNode`], which ties it together: open, propose, status, shutdown.
//! - `store_suite` (tests only): openraft's storage test suite against these stores.
//!
//! The broker knows none of this: it sees a `Proposer` and an `EffectSink`.

pub mod lock;
pub mod network;
pub mod node;
mod proposer;
pub mod state_machine;
pub mod store;
pub mod types;

pub use lock::{DataDirLock, LockError};
pub use node::{LogConfig, LogNode, LogOpenError, LogStatus, ProposeError, Role};
pub use types::{NodeInfo, TypeConfig};

pub use openraft;
pub use rocksdb;

#[cfg(test)]
mod store_suite;
