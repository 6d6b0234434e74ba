//! The state-machine store: the broker's pure `State` in memory, fed by openraft with committed
//! entries, and its snapshots in the `sm` column family.
//!
//! `apply` decodes nothing itself (the log store already did): a normal entry goes to
//! `State::apply(index, batch)` and its effects go, per entry and in log order, to the
//! broker's `EffectSink`; blank and membership entries only move the applied log id and the
//! membership. A snapshot is `State::encode_snapshot()` plus openraft's meta. On open the latest
//! snapshot is loaded, and openraft replays the committed log after it, so a restart rebuilds
//! exactly the state the node had. This file does no networking and knows no membership rules.

use crate::store::{cf, decode_meta, encode_meta, synced, StoreError, CF_SM};
use crate::types::{
    LogEntry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, StorageIOError};
use raftmq_broker::log::EffectSink;
use raftmq_broker::machine::State;
use rocksdb::{WriteBatch, DB};
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

const KEY_SNAPSHOT_META: &[u8] = b"snapshot_meta";
const KEY_SNAPSHOT_DATA: &[u8] = b"snapshot_data";

/// What the state machine has applied, shared between openraft's state-machine task (which
/// writes it) and readers such as tests or a management API (which take the read lock briefly).
#[derive(Debug, Default)]
pub(crate) struct Applied {
    pub(crate) state: State,
    pub(crate) last_applied: Option<LogId>,
    pub(crate) last_membership: StoredMembership,
}

/// Counters of what was applied since open, for metrics.
#[derive(Debug, Default)]
pub struct ApplyStats {
    /// Normal (command-carrying) log entries applied, including empty tick entries.
    pub entries: AtomicU64,
    /// Commands applied.
    pub commands: AtomicU64,
}

fn io_err(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

/// openraft's `RaftStateMachine` over the broker's `State`.
pub struct StateMachineStore {
    db: Arc<DB>,
    applied: Arc<RwLock<Applied>>,
    stats: Arc<ApplyStats>,
    sink: Arc<dyn EffectSink>,
    /// Serializes snapshot writes: a slow build that finishes after a newer install must not
    /// overwrite it.
    snapshot_write: Arc<tokio::sync::Mutex<()>>,
}

impl StateMachineStore {
    /// Opens the state machine on `db`, loading the latest persisted snapshot if there is one.
    pub(crate) fn open(
        db: Arc<DB>,
        sink: Arc<dyn EffectSink>,
    ) -> Result<StateMachineStore, StoreError> {
        let mut applied = Applied::default();
        let loaded = with_snapshot(&db, |meta, data| {
            let state =
                State::decode_snapshot(data).map_err(|e| StoreError::corrupt("snapshot", e))?;
            Ok((meta, state))
        })?;
        if let Some((meta, state)) = loaded {
            applied.state = state;
            applied.last_applied = meta.last_log_id;
            applied.last_membership = meta.last_membership;
            tracing::info!(snapshot = %meta.snapshot_id, last_index = applied.state.last_index, "loaded snapshot");
        }
        Ok(StateMachineStore {
            db,
            applied: Arc::new(RwLock::new(applied)),
            stats: Arc::new(ApplyStats::default()),
            sink,
            snapshot_write: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    pub(crate) fn applied(&self) -> Arc<RwLock<Applied>> {
        self.applied.clone()
    }

    pub(crate) fn stats(&self) -> Arc<ApplyStats> {
        self.stats.clone()
    }

    fn read_applied(&self) -> std::sync::RwLockReadGuard<'_, Applied> {
        // A poisoned lock means a panic inside `State::apply`, which already stopped openraft;
        // the data is still the last consistent state, so readers may go on reading it.
        self.applied.read().unwrap_or_else(|p| p.into_inner())
    }
}

fn read_snapshot_meta(db: &DB) -> Result<Option<SnapshotMeta>, StoreError> {
    match db.get_pinned_cf(cf(db, CF_SM), KEY_SNAPSHOT_META)? {
        Some(meta) => Ok(Some(decode_meta("snapshot meta", &meta)?)),
        None => Ok(None),
    }
}

/// The stored snapshot, its data handed to `read` where RocksDB holds it (a snapshot can be
/// gigabytes: no copy is made).
fn with_snapshot<T>(
    db: &DB,
    read: impl FnOnce(SnapshotMeta, &[u8]) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    let Some(meta) = read_snapshot_meta(db)? else {
        return Ok(None);
    };
    let data = db
        .get_pinned_cf(cf(db, CF_SM), KEY_SNAPSHOT_DATA)?
        .ok_or_else(|| StoreError::corrupt("snapshot", "meta without data"))?;
    read(meta, &data).map(Some)
}

/// Persists a snapshot unless a newer one is already stored. Durability: synced, because
/// openraft purges the log entries a snapshot covers right after it is built or installed; if the
/// snapshot could be lost in a crash while the purge survived (a later synced append persists
/// the purge), the state up to it would be gone.
async fn persist_snapshot(
    db: &Arc<DB>,
    lock: &tokio::sync::Mutex<()>,
    meta: &SnapshotMeta,
    data: Vec<u8>,
) -> Result<(), StorageError> {
    let _guard = lock.lock().await;
    let db = db.clone();
    let meta = meta.clone();
    let signature = meta.signature();
    let write = move || -> Result<(), StoreError> {
        if let Some(current) = read_snapshot_meta(&db)? {
            if current.last_log_id > meta.last_log_id {
                tracing::debug!(current = %current, ours = %meta, "a newer snapshot is stored; keeping it");
                return Ok(());
            }
        }
        let meta_bytes = encode_meta(&meta).map_err(|e| StoreError::corrupt("snapshot meta", e))?;
        let mut batch = WriteBatch::default();
        let sm = cf(&db, CF_SM);
        batch.put_cf(sm, KEY_SNAPSHOT_META, meta_bytes);
        batch.put_cf(sm, KEY_SNAPSHOT_DATA, data);
        db.write_opt(batch, &synced())?;
        Ok(())
    };
    tokio::task::spawn_blocking(write)
        .await
        .map_err(|e| {
            io_err(
                ErrorSubject::Snapshot(Some(signature.clone())),
                ErrorVerb::Write,
                e,
            )
        })?
        .map_err(|e| io_err(ErrorSubject::Snapshot(Some(signature)), ErrorVerb::Write, e))
}

/// Builds a snapshot from a copy of the state taken on the state-machine task, so applying
/// goes on while the copy is encoded and written.
pub struct SnapshotBuilder {
    db: Arc<DB>,
    snapshot_write: Arc<tokio::sync::Mutex<()>>,
    state: State,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let state = std::mem::take(&mut self.state);
        let data = tokio::task::spawn_blocking(move || state.encode_snapshot())
            .await
            .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let snapshot_id = match &self.last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id, id.index, nanos),
            None => format!("none-{nanos}"),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshot_id,
        };
        persist_snapshot(&self.db, &self.snapshot_write, &meta, data.clone()).await?;
        tracing::info!(snapshot = %meta, bytes = data.len(), "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self.read_applied();
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, StorageError>
    where
        I: IntoIterator<Item = LogEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let mut effects_per_entry = Vec::new();
        let (mut entry_count, mut command_count) = (0u64, 0u64);
        {
            let mut applied = self.applied.write().unwrap_or_else(|p| p.into_inner());
            for entry in entries {
                match &entry.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Normal(batch) => {
                        let effects = applied.state.apply(entry.log_id.index, batch);
                        entry_count += 1;
                        command_count += batch.commands.len() as u64;
                        if !effects.is_empty() {
                            effects_per_entry.push(effects);
                        }
                    }
                    EntryPayload::Membership(membership) => {
                        applied.last_membership =
                            StoredMembership::new(Some(entry.log_id), membership.clone());
                    }
                }
                applied.last_applied = Some(entry.log_id);
                responses.push(());
            }
        }
        self.stats.entries.fetch_add(entry_count, Ordering::Relaxed);
        self.stats
            .commands
            .fetch_add(command_count, Ordering::Relaxed);
        // Effects leave after the lock is released (the sink must not block, but a reader of the
        // state should not wait for dispatch either), one call per entry, in log order.
        for effects in effects_per_entry {
            self.sink.dispatch(effects);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Runs on the state-machine task between applies, so this copy is a consistent cut.
        let applied = self.read_applied();
        SnapshotBuilder {
            db: self.db.clone(),
            snapshot_write: self.snapshot_write.clone(),
            state: applied.state.clone(),
            last_applied: applied.last_applied,
            last_membership: applied.last_membership.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let state = State::decode_snapshot(&data).map_err(|e| {
            io_err(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Read,
                e,
            )
        })?;
        // Persist first, then switch the in-memory state: a crash in between restarts from the
        // installed snapshot, which is what the leader asked for.
        persist_snapshot(&self.db, &self.snapshot_write, meta, data).await?;
        let mut applied = self.applied.write().unwrap_or_else(|p| p.into_inner());
        applied.state = state;
        applied.last_applied = meta.last_log_id;
        applied.last_membership = meta.last_membership.clone();
        drop(applied);
        // Entries the snapshot covers were never applied here: any client of this node may
        // have missed their effects. Only a node that fell far behind while serving gets here
        // (a starting node installs before it accepts clients).
        self.sink.reset();
        tracing::info!(snapshot = %meta, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let db = self.db.clone();
        let stored = tokio::task::spawn_blocking(move || {
            with_snapshot(&db, |meta, data| Ok((meta, data.to_vec())))
        })
        .await
        .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?
        .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        Ok(stored.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

/// Opens the log store and the state-machine store on one database.
pub(crate) fn open_stores(
    db: Arc<DB>,
    sink: Arc<dyn EffectSink>,
) -> Result<(crate::store::LogStore, StateMachineStore), StoreError> {
    let sm = StateMachineStore::open(db.clone(), sink)?;
    Ok((crate::store::LogStore::new(db), sm))
}
