//! openraft's storage test suite (`openraft::testing::Suite`) run against our RocksDB log store
//! and state-machine store, each test on a fresh database in a temporary directory.

use crate::state_machine::{open_stores, StateMachineStore};
use crate::store::{open_db, LogStore};
use crate::types::{StorageError, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};
use raftmq_broker::log::DiscardEffects;
use std::sync::Arc;

/// Builds stores on `<tempdir>/db`; the guard is the temporary directory.
struct TempStoreBuilder;

fn store_error(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(ErrorSubject::Store, ErrorVerb::Read, AnyError::new(&e)).into()
}

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for TempStoreBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().map_err(store_error)?;
        let db = open_db(&dir.path().join("db")).map_err(store_error)?;
        let (log, sm) = open_stores(db, Arc::new(DiscardEffects)).map_err(store_error)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn rocksdb_stores_pass_openraft_storage_suite() -> Result<(), StorageError> {
    Suite::test_all(TempStoreBuilder)?;
    Ok(())
}
