//! The state-machine store: the broker's pure `State` in memory, fed by openraft with committed
//! entries, and its snapshots in the `sm` column family.
//!
//! `apply` decodes nothing itself (the log store already did): a normal entry goes to
//! `State::apply(index, batch)` and its effects go, per entry and in log order, to the
//! broker's `EffectSink`; blank and membership entries only move the applied log id and the
//! membership. A snapshot is `State::encode_snapshot()` in a file (`snapshot_files`) plus
//! openraft's meta in the `sm` column family. On open the latest snapshot is loaded, and
//! openraft replays the committed log after it, so a restart rebuilds exactly the state the
//! node had. This file does no networking and knows no membership rules.

use crate::left_out_bodies::LeftOutBodies;
use crate::snapshot_files::SnapshotFiles;
use crate::store::{cf, decode_meta, encode_meta, synced, StoreError, CF_SM};
use crate::types::{
    LogEntry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, StorageIOError};
use raftmq_broker::log::EffectSink;
use raftmq_broker::machine::State;
use raftmq_broker::shared_bytes;
use rocksdb::{WriteBatch, DB};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) const KEY_SNAPSHOT_META: &[u8] = b"snapshot_meta";
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
    /// Bytes of log (by `Entry::approx_size`) applied since the state of the last snapshot.
    pub bytes_since_snapshot: AtomicU64,
    /// Size of the last snapshot built, installed or loaded.
    pub last_snapshot_bytes: AtomicU64,
    /// Snapshot builds started since open.
    pub snapshots_started: AtomicU64,
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
    files: Arc<SnapshotFiles>,
    /// The temporary file of the snapshot being received from the leader.
    receiving: Option<PathBuf>,
}

impl StateMachineStore {
    /// Opens the state machine on `db`, loading the latest persisted snapshot if there is one.
    pub(crate) fn open(
        db: Arc<DB>,
        sink: Arc<dyn EffectSink>,
    ) -> Result<StateMachineStore, StoreError> {
        let mut applied = Applied::default();
        let stats = Arc::new(ApplyStats::default());
        let files =
            SnapshotFiles::beside(db.path()).map_err(StoreError::snapshot_file(db.path()))?;
        let loading = std::time::Instant::now();
        if let Some(meta) = read_snapshot_meta(&db)? {
            migrate_snapshot_value(&db, &files, &meta)?;
            let path = files.path(&meta);
            let data = SnapshotFiles::map(&path).map_err(StoreError::snapshot_file(&path))?;
            applied.state = shared_bytes::decode_from(&data, State::decode_snapshot)
                .map_err(|e| StoreError::corrupt("snapshot", e))?;
            applied.last_applied = meta.last_log_id;
            applied.last_membership = meta.last_membership.clone();
            stats
                .last_snapshot_bytes
                .store(data.len() as u64, Ordering::Relaxed);
            tracing::info!(snapshot = %meta.snapshot_id, last_index = applied.state.last_index, bytes = data.len(), ms = loading.elapsed().as_millis() as u64, "loaded snapshot");
            files.remove_all_but(Some(&meta));
        } else {
            files.remove_all_but(None);
        }
        Ok(StateMachineStore {
            db,
            applied: Arc::new(RwLock::new(applied)),
            stats,
            sink,
            snapshot_write: Arc::new(tokio::sync::Mutex::new(())),
            files: Arc::new(files),
            receiving: None,
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

/// The last log index that the stored snapshot covers (None without one, or if its meta
/// cannot be read).
pub(crate) fn stored_snapshot_index(db: &DB) -> Option<u64> {
    read_snapshot_meta(db)
        .ok()
        .flatten()
        .and_then(|m| m.last_log_id)
        .map(|id| id.index)
}

fn read_snapshot_meta(db: &DB) -> Result<Option<SnapshotMeta>, StoreError> {
    match db.get_pinned_cf(cf(db, CF_SM), KEY_SNAPSHOT_META)? {
        Some(meta) => Ok(Some(decode_meta("snapshot meta", &meta)?)),
        None => Ok(None),
    }
}

/// Databases written before snapshots moved to files hold the data as a value: write it to its
/// file once and drop the value.
fn migrate_snapshot_value(
    db: &DB,
    files: &SnapshotFiles,
    meta: &SnapshotMeta,
) -> Result<(), StoreError> {
    let sm = cf(db, CF_SM);
    let Some(data) = db.get_pinned_cf(sm, KEY_SNAPSHOT_DATA)? else {
        return Ok(());
    };
    files
        .write(meta, &data)
        .map_err(StoreError::snapshot_file(&files.path(meta)))?;
    drop(data);
    let mut batch = WriteBatch::default();
    batch.delete_cf(sm, KEY_SNAPSHOT_DATA);
    db.write_opt(batch, &synced())?;
    tracing::info!(snapshot = %meta.snapshot_id, "moved the snapshot out of the database into its file");
    Ok(())
}

/// Makes the snapshot of `meta` the stored one unless a newer one is stored. `put_file` puts
/// its data file in place (written or moved there, synced); then the meta, synced, names it.
/// Durability: synced, because openraft purges the log entries a snapshot covers right after
/// it is built or installed; if the snapshot could be lost in a crash while the purge survived
/// (a later synced append persists the purge), the state up to it would be gone.
async fn persist_snapshot(
    db: &Arc<DB>,
    files: &Arc<SnapshotFiles>,
    lock: &tokio::sync::Mutex<()>,
    meta: &SnapshotMeta,
    put_file: impl FnOnce(&SnapshotFiles) -> std::io::Result<()> + Send + 'static,
) -> Result<bool, StorageError> {
    let _guard = lock.lock().await;
    let db = db.clone();
    let files = files.clone();
    let meta = meta.clone();
    let signature = meta.signature();
    let write = move || -> Result<bool, StoreError> {
        if let Some(current) = read_snapshot_meta(&db)? {
            if current.last_log_id > meta.last_log_id {
                tracing::debug!(current = %current, ours = %meta, "a newer snapshot is stored; keeping it");
                return Ok(false);
            }
        }
        put_file(&files).map_err(StoreError::snapshot_file(&files.path(&meta)))?;
        let meta_bytes = encode_meta(&meta).map_err(|e| StoreError::corrupt("snapshot meta", e))?;
        let mut batch = WriteBatch::default();
        let sm = cf(&db, CF_SM);
        batch.put_cf(sm, KEY_SNAPSHOT_META, meta_bytes);
        batch.delete_cf(sm, KEY_SNAPSHOT_DATA);
        db.write_opt(batch, &synced())?;
        files.remove_all_but(Some(&meta));
        Ok(true)
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

/// The stored snapshot's file, opened for openraft to read.
async fn open_snapshot(
    files: &SnapshotFiles,
    meta: SnapshotMeta,
) -> Result<Snapshot, StorageError> {
    let path = files.path(&meta);
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
        io_err(
            ErrorSubject::Snapshot(Some(meta.signature())),
            ErrorVerb::Read,
            e,
        )
    })?;
    Ok(Snapshot {
        meta,
        snapshot: Box::new(file),
    })
}

/// Builds a snapshot from a copy of the state taken on the state-machine task, so applying
/// goes on while the copy is encoded and written.
pub struct SnapshotBuilder {
    db: Arc<DB>,
    files: Arc<SnapshotFiles>,
    snapshot_write: Arc<tokio::sync::Mutex<()>>,
    stats: Arc<ApplyStats>,
    state: State,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let state = std::mem::take(&mut self.state);
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
        let file_meta = meta.clone();
        // Encoded straight into the file, on the blocking pool; applying carries on meanwhile.
        let stored = persist_snapshot(
            &self.db,
            &self.files,
            &self.snapshot_write,
            &meta,
            move |files| files.write_with(&file_meta, |out| state.encode_snapshot_to(out)),
        )
        .await?;
        if !stored {
            // A newer one was installed meanwhile: that is the current snapshot.
            let current = read_snapshot_meta(&self.db)
                .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?
                .ok_or_else(|| {
                    io_err(
                        ErrorSubject::Snapshot(None),
                        ErrorVerb::Read,
                        StoreError::corrupt("snapshot", "meta vanished"),
                    )
                })?;
            return open_snapshot(&self.files, current).await;
        }
        let bytes = std::fs::metadata(self.files.path(&meta)).map_or(0, |m| m.len());
        self.stats
            .last_snapshot_bytes
            .store(bytes, Ordering::Relaxed);
        tracing::info!(snapshot = %meta, bytes, "built snapshot");
        open_snapshot(&self.files, meta).await
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
        let (mut entry_count, mut command_count, mut bytes) = (0u64, 0u64, 0u64);
        {
            let mut applied = self.applied.write().unwrap_or_else(|p| p.into_inner());
            for entry in entries {
                match &entry.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Normal(batch) => {
                        let index = entry.log_id.index;
                        let effects = applied.state.apply(index, batch);
                        entry_count += 1;
                        command_count += batch.commands.len() as u64;
                        bytes += batch.approx_size() as u64;
                        if !effects.is_empty() {
                            effects_per_entry.push((index, effects));
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
        self.stats
            .bytes_since_snapshot
            .fetch_add(bytes, Ordering::Relaxed);
        // Effects leave after the lock is released (the sink must not block, but a reader of the
        // state should not wait for dispatch either), one call per entry, in log order.
        for (index, effects) in effects_per_entry {
            self.sink.dispatch(index, effects);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Runs on the state-machine task between applies, so this copy is a consistent cut.
        let applied = self.read_applied();
        // The cut: what is applied from here on is log after this snapshot.
        self.stats.bytes_since_snapshot.store(0, Ordering::Relaxed);
        self.stats.snapshots_started.fetch_add(1, Ordering::Relaxed);
        SnapshotBuilder {
            db: self.db.clone(),
            files: self.files.clone(),
            snapshot_write: self.snapshot_write.clone(),
            stats: self.stats.clone(),
            state: applied.state.clone(),
            last_applied: applied.last_applied,
            last_membership: applied.last_membership.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self.files.temp_path();
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        if let Some(stale) = self.receiving.replace(path) {
            let _ = std::fs::remove_file(stale);
        }
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let failed = |verb, e: std::io::Error| {
            io_err(ErrorSubject::Snapshot(Some(meta.signature())), verb, e)
        };
        snapshot
            .sync_all()
            .await
            .map_err(|e| failed(ErrorVerb::Write, e))?;
        let file = snapshot.into_std().await;
        // Complete and synced, so no longer written: the messages may share the mapping.
        let data = SnapshotFiles::map_file(&file).map_err(|e| failed(ErrorVerb::Read, e))?;
        let snapshot_bytes = data.len() as u64;
        let state = shared_bytes::decode_from(&data, State::decode_snapshot).map_err(|e| {
            io_err(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Read,
                e,
            )
        })?;
        // The file received from the leader becomes the stored snapshot as it is. A snapshot
        // handed over otherwise (openraft's storage tests do) is written out as a new file.
        let received = self.receiving.take().filter(|path| same_file(path, &file));
        drop(file);
        // Persist first, then switch the in-memory state: a crash in between restarts from
        // the installed snapshot, which is what the leader asked for.
        let file_meta = meta.clone();
        persist_snapshot(
            &self.db,
            &self.files,
            &self.snapshot_write,
            meta,
            move |files| match received {
                Some(temp) => files.adopt(&temp, &file_meta),
                None => files.write(&file_meta, &data),
            },
        )
        .await?;
        let mut applied = self.applied.write().unwrap_or_else(|p| p.into_inner());
        self.stats.bytes_since_snapshot.store(0, Ordering::Relaxed);
        self.stats
            .last_snapshot_bytes
            .store(snapshot_bytes, Ordering::Relaxed);
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
        // Opens the file only: openraft asks at every start just to learn the meta.
        let meta = read_snapshot_meta(&self.db)
            .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        match meta {
            Some(meta) => open_snapshot(&self.files, meta).await.map(Some),
            None => Ok(None),
        }
    }
}

/// Whether `path` names the open `file`.
fn same_file(path: &std::path::Path, file: &std::fs::File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), file.metadata()) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Opens the log store and the state-machine store on one database.
pub(crate) fn open_stores(
    db: Arc<DB>,
    sink: Arc<dyn EffectSink>,
) -> Result<(crate::store::LogStore, StateMachineStore), StoreError> {
    let sm = StateMachineStore::open(db.clone(), sink.clone())?;
    let left_out = Arc::new(LeftOutBodies::new(sm.applied()));
    Ok((crate::store::LogStore::new(db, sink, left_out)?, sm))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::open_db;
    use raftmq_broker::log::DiscardEffects;

    #[test]
    fn a_snapshot_stored_as_a_value_by_an_older_version_moves_to_its_file() {
        let tmp = tempfile::tempdir().unwrap();
        let db = open_db(&tmp.path().join("db")).unwrap();
        let mut state = State::default();
        state.last_index = 42;
        let meta = SnapshotMeta {
            last_log_id: None,
            last_membership: StoredMembership::default(),
            snapshot_id: "T1-N1-42-7".to_string(),
        };
        let mut batch = WriteBatch::default();
        let sm = cf(&db, CF_SM);
        batch.put_cf(sm, KEY_SNAPSHOT_META, encode_meta(&meta).unwrap());
        batch.put_cf(sm, KEY_SNAPSHOT_DATA, state.encode_snapshot());
        db.write_opt(batch, &synced()).unwrap();

        let store = StateMachineStore::open(db.clone(), Arc::new(DiscardEffects)).unwrap();
        assert_eq!(store.read_applied().state.last_index, 42);
        assert!(tmp.path().join("snapshots/T1-N1-42-7.snap").exists());
        assert!(db
            .get_cf(cf(&db, CF_SM), KEY_SNAPSHOT_DATA)
            .unwrap()
            .is_none());
        drop(store);
        // And the next open reads the file.
        let store = StateMachineStore::open(db, Arc::new(DiscardEffects)).unwrap();
        assert_eq!(store.read_applied().state.last_index, 42);
    }
}
