//! The RocksDB database under `<data_dir>/db` and the Raft log store on top of it.
//!
//! One database holds three column families:
//! - `logs`: key = log index as big-endian u64 (so RocksDB's byte order is log order), value =
//!   one encoded log entry (see [`encode_log_entry`]);
//! - `meta`: the vote, the last purged log id, the committed log id, and the mark of
//!   transient bodies left out (`left_out_bodies`);
//! - `sm`: the latest state-machine snapshot (written by `state_machine.rs`).
//!
//! This file holds the database and [`LogStore`] (openraft's `RaftLogStorage` and
//! `RaftLogReader`); the state machine lives in `state_machine.rs`. Nothing here knows about
//! membership or the network, so the same store serves a one-member group and a cluster.

use crate::left_out_bodies::{self, LeftOut, LeftOutBodies, KEY_LEFT_OUT};
use crate::log_writer::{Done, LogWriter, NotWritten};
use crate::recent_log::{RecentLimits, RecentLog};
use crate::types::{LogEntry, LogId, NodeInfo, StorageError, TypeConfig, Vote};
use bytes::Bytes;
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, Membership, OptionalSend, StorageIOError,
};
use raftmq_broker::ids::NodeId;
use raftmq_broker::log::EffectSink;
use raftmq_broker::machine::command::Entry as CommandBatch;
use raftmq_broker::shared_bytes;
use rocksdb::{
    ColumnFamilyDescriptor, DBCompressionType, Direction, IteratorMode, Options, WriteBatch,
    WriteOptions, DB,
};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use thiserror::Error;

pub(crate) const CF_LOGS: &str = "logs";
pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_SM: &str = "sm";
pub(crate) const COLUMN_FAMILIES: [&str; 3] = [CF_LOGS, CF_META, CF_SM];

const KEY_VOTE: &[u8] = b"vote";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
pub(crate) const KEY_COMMITTED: &[u8] = b"committed";

/// Version byte in front of every stored log entry and meta value.
const LOG_FORMAT_VERSION: u8 = 1;
const KIND_BLANK: u8 = 0;
const KIND_NORMAL: u8 = 1;
const KIND_MEMBERSHIP: u8 = 2;
/// A normal entry with the bodies of some transient publishes left out (`left_out_bodies`):
/// the list of (command, body length), then the batch.
const KIND_NORMAL_BODIES_LEFT_OUT: u8 = 3;

/// Why the stores could not be opened.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot open the RocksDB database at {path}: {source}")]
    Open {
        path: String,
        source: rocksdb::Error,
    },
    #[error("cannot look into the database directory {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("RocksDB error: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("corrupt {what} in the database: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("a blocking storage task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("cannot start the raft log's writer thread: {0}")]
    Thread(std::io::Error),
    #[error("the raft log's writer thread has stopped")]
    WriterGone,
    #[error("snapshot file {path}: {source}")]
    SnapshotFile {
        path: String,
        source: std::io::Error,
    },
}

impl StoreError {
    /// Maps an I/O error on the snapshot file (or directory) at `path`.
    pub(crate) fn snapshot_file(
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.display().to_string();
        move |source| StoreError::SnapshotFile { path, source }
    }

    pub(crate) fn corrupt(what: &'static str, detail: impl ToString) -> StoreError {
        StoreError::Corrupt {
            what,
            detail: detail.to_string(),
        }
    }
}

/// Opens (creating if missing) the database with its column families. The caller holds the
/// data directory's lock, so no other process has it open.
pub(crate) fn open_db(path: &Path) -> Result<Arc<DB>, StoreError> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Table files are read through a memory map: reading the log back (a restart's replay, a
    // lagging follower) then copies each value once, instead of copying blocks out of the
    // page cache first. It spent a fifth of a restart in pread.
    opts.set_allow_mmap_reads(true);
    // Write-ahead log files are reused rather than created: a synced write into a file that
    // already has its blocks does not also update the inode. Measured on the c scenario:
    // confirm p50 1.8 -> 1.45 ms. Recovery stays point-in-time (RocksDB's default mode, the
    // one recycling is made for).
    opts.set_recycle_log_file_num(4);
    // ...but a log file is free for reuse only once every column family that wrote into it
    // has flushed, and the meta and state families write a little into every log file. With
    // RocksDB's default limit (four times all memtables, 1.5 GiB here) no log file was ever
    // released in a run: each synced write went to a new, growing file and also wrote its
    // inode, and the files piled up on disk. Past 256 MiB of log files RocksDB now flushes
    // the small families holding the oldest file, which frees it for reuse.
    opts.set_max_total_wal_size(256 << 20);
    // The families are flushed together, so the log family's flush (or its memtable's
    // drop, when a purge covered it) frees the write-ahead-log file at once instead of after
    // 256 MiB. A new database writes only fresh, growing log files until the first one is
    // freed, and every synced write into such a file also writes its inode: the first seconds
    // on a fresh node were the slow ones (g's first 10 s on a fresh cluster 31-36k confirmed
    // msg/s against 43-45k once warm; standalone b and c 4-6% faster over a fresh node's
    // first 10 s with this; docs/benchmarks.md, session 20). `wal_prewrite` goes further on a
    // new database and has its first two files written before it serves.
    opts.set_atomic_flush(true);
    // Table files written by flushes and compactions are handed to the disk a megabyte at a
    // time as they are written. Without this a flush wrote its 64 MiB file into the page cache
    // and synced it at the end, and the log's own fsync (the one that confirms publishes)
    // waited behind that whole write: 27-31 ms every few seconds under a steady load.
    opts.set_bytes_per_sync(1 << 20);
    // The write-ahead log is what makes a synced write durable; keep RocksDB's defaults for it
    // (enabled, flushed on every write) and never disable it for any column family.
    let cfs = COLUMN_FAMILIES.map(|name| {
        let mut cf_opts = Options::default();
        if name == CF_LOGS {
            // Log entries are mostly message bodies, which rarely compress: compressing them
            // cost CPU at every flush and compaction and at every read-back (a restart spent a
            // quarter of its time in LZ4) for little space.
            cf_opts.set_compression_type(DBCompressionType::None);
        }
        ColumnFamilyDescriptor::new(name, cf_opts)
    });
    let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|source| StoreError::Open {
        path: path.display().to_string(),
        source,
    })?;
    Ok(Arc::new(db))
}

pub(crate) fn cf<'a>(db: &'a DB, name: &'static str) -> &'a rocksdb::ColumnFamily {
    // The three families are created by `open_db` and never dropped.
    db.cf_handle(name).expect("column family created at open")
}

/// Write options for writes that must survive a power loss before we report them done.
pub(crate) fn synced() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    opts
}

pub(crate) fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub(crate) fn key_index(key: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| StoreError::corrupt("log key", format!("{} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

/// Encodes a log entry: version byte, postcard of the log id, a kind byte, then the payload.
/// A normal entry's payload is the broker's own versioned encoding of the command batch
/// (`Entry::encode`, pinned by golden-byte tests in the broker), so the bytes on disk are the
/// broker's public format rather than whatever serde shape openraft's wrapper has.
#[cfg(test)]
pub(crate) fn encode_log_entry(entry: &LogEntry) -> Result<Vec<u8>, postcard::Error> {
    let mut out = Vec::new();
    encode_log_entry_into(entry, &Vec::new(), &mut out)?;
    Ok(out)
}

/// [`encode_log_entry`] into `out`, which is cleared first and keeps its capacity: the log
/// store encodes every append into one buffer instead of growing a fresh one per entry. The
/// bodies listed in `left_out` are left out (`left_out_bodies`).
pub(crate) fn encode_log_entry_into(
    entry: &LogEntry,
    left_out: &LeftOut,
    out: &mut Vec<u8>,
) -> Result<(), postcard::Error> {
    let mut buf = std::mem::take(out);
    buf.clear();
    buf.push(LOG_FORMAT_VERSION);
    buf = postcard::to_extend(&entry.log_id, buf)?;
    match &entry.payload {
        EntryPayload::Blank => buf.push(KIND_BLANK),
        EntryPayload::Normal(batch) if left_out.is_empty() => {
            buf.push(KIND_NORMAL);
            buf = batch.encode_into(buf);
        }
        EntryPayload::Normal(batch) => {
            buf.push(KIND_NORMAL_BODIES_LEFT_OUT);
            buf = postcard::to_extend(left_out, buf)?;
            buf = left_out_bodies::without_bodies(batch, left_out).encode_into(buf);
        }
        EntryPayload::Membership(membership) => {
            buf.push(KIND_MEMBERSHIP);
            buf = postcard::to_extend(membership, buf)?;
        }
    }
    *out = buf;
    Ok(())
}

pub(crate) fn decode_log_entry(bytes: &[u8]) -> Result<LogEntry, StoreError> {
    let rest = match bytes.split_first() {
        Some((&LOG_FORMAT_VERSION, rest)) => rest,
        Some((v, _)) => {
            return Err(StoreError::corrupt(
                "log entry",
                format!("unknown format version {v}"),
            ))
        }
        None => return Err(StoreError::corrupt("log entry", "empty value")),
    };
    let (log_id, rest): (LogId, &[u8]) =
        postcard::take_from_bytes(rest).map_err(|e| StoreError::corrupt("log entry id", e))?;
    let payload = match rest.split_first() {
        Some((&KIND_BLANK, _)) => EntryPayload::Blank,
        Some((&KIND_NORMAL, batch)) => EntryPayload::Normal(Arc::new(
            CommandBatch::decode(batch).map_err(|e| StoreError::corrupt("command batch", e))?,
        )),
        Some((&KIND_NORMAL_BODIES_LEFT_OUT, rest)) => {
            let (left_out, batch): (LeftOut, &[u8]) = postcard::take_from_bytes(rest)
                .map_err(|e| StoreError::corrupt("list of left-out bodies", e))?;
            let mut batch =
                CommandBatch::decode(batch).map_err(|e| StoreError::corrupt("command batch", e))?;
            left_out_bodies::zero_bodies(&mut batch, &left_out)
                .map_err(|e| StoreError::corrupt("list of left-out bodies", e))?;
            EntryPayload::Normal(Arc::new(batch))
        }
        Some((&KIND_MEMBERSHIP, m)) => {
            let membership: Membership<NodeId, NodeInfo> =
                postcard::from_bytes(m).map_err(|e| StoreError::corrupt("membership entry", e))?;
            EntryPayload::Membership(membership)
        }
        Some((k, _)) => {
            return Err(StoreError::corrupt(
                "log entry",
                format!("unknown kind {k}"),
            ))
        }
        None => return Err(StoreError::corrupt("log entry", "missing kind")),
    };
    Ok(LogEntry { log_id, payload })
}

/// Meta values: a version byte, then postcard.
pub(crate) fn encode_meta<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_extend(value, vec![LOG_FORMAT_VERSION])
}

pub(crate) fn decode_meta<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&LOG_FORMAT_VERSION, rest)) => {
            postcard::from_bytes(rest).map_err(|e| StoreError::corrupt(what, e))
        }
        Some((v, _)) => Err(StoreError::corrupt(
            what,
            format!("unknown format version {v}"),
        )),
        None => Err(StoreError::corrupt(what, "empty value")),
    }
}

/// A value of the `meta` column family.
fn read_meta<T: serde::de::DeserializeOwned>(
    db: &DB,
    key: &[u8],
    what: &'static str,
) -> Result<Option<T>, StoreError> {
    match db.get_cf(cf(db, CF_META), key)? {
        None => Ok(None),
        Some(bytes) => decode_meta(what, &bytes).map(Some),
    }
}

fn io_err(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

/// How an append reaches the disk, and when openraft hears it is flushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Durability {
    /// Written and fsync'ed, then reported flushed: a cluster node, whose flush counts toward
    /// a commit that another node may act on.
    SyncedFirst,
    /// Written, reported flushed, then fsync'ed: a lone node applies the entry (and delivers
    /// its messages) while the disk syncs; the effect sink holds the entry's promises
    /// (confirms, declare-oks) until the fsync is done.
    SyncedAfter,
    /// Written and reported flushed, with no fsync of its own: a lone node's append of volatile
    /// entries alone, which the next synced write covers (within `SYNC_WINDOW`).
    Unsynced,
}

/// Which appends to the log are fsync'ed, and whether openraft hears of an append before its
/// fsync. On a cluster node every append is fsync'ed first. A node is lone when no peer can
/// reach it and its membership is itself alone (standalone, or the active node of an
/// active/standby pair): its disk is the only copy of the log, and what it applies depends on
/// no other node's flush. A lone node reports an append flushed as soon as it is written
/// (readable), so openraft commits and applies it at once, and fsyncs it afterwards
/// ([`Durability::SyncedAfter`]); the broker holds every effect that promises something until
/// that fsync. The writer makes that fsync before it takes its next group, so under load the
/// next batch still fills up while the fsync runs. An append of
/// volatile entries alone ([`CommandBatch::is_volatile`]: settlements, gets, consumers, ticks,
/// publishes outside confirm mode) is not fsync'ed with it: the next synced write (a confirmed
/// publish, a declaration, a snapshot's record) covers it, since RocksDB has one write-ahead
/// log, or else the writer's own fsync at most `SYNC_WINDOW` later. A power loss can then take
/// back an unsynced tail together with the memory that applied it: a restart a little earlier
/// than it happened, which breaks no promise made to a client, since none was made for that
/// tail. A process crash loses nothing (the write is in the page cache).
#[derive(Debug, Default)]
pub(crate) struct SyncPolicy {
    lone: AtomicBool,
}

impl SyncPolicy {
    /// Set by the node once it is ready, when it finds itself lone.
    pub(crate) fn set_lone(&self, lone: bool) {
        self.lone.store(lone, Ordering::Relaxed);
    }

    /// Whether the node is lone now (its log may then leave transient bodies out).
    pub(crate) fn is_lone(&self) -> bool {
        self.lone.load(Ordering::Relaxed)
    }

    /// How an append of `entries` is written. A membership of more than one node ends the
    /// lone mode for good (this open), before its own entry is written.
    pub(crate) fn durability(&self, entries: &[LogEntry]) -> Durability {
        let mut volatile = true;
        for entry in entries {
            match &entry.payload {
                EntryPayload::Normal(batch) => volatile &= batch.is_volatile(),
                EntryPayload::Membership(m) if m.nodes().nth(1).is_some() => {
                    self.set_lone(false);
                    return Durability::SyncedFirst;
                }
                EntryPayload::Blank | EntryPayload::Membership(_) => volatile = false,
            }
        }
        if !self.lone.load(Ordering::Relaxed) {
            Durability::SyncedFirst
        } else if volatile {
            Durability::Unsynced
        } else {
            Durability::SyncedAfter
        }
    }
}

/// The Raft log and vote on RocksDB, with the log's newest entries also in memory
/// ([`RecentLog`]) and every write made by one writer thread ([`LogWriter`]). Cheap to clone:
/// clones share all three, which is how openraft's log readers (used by replication) read while
/// the core appends.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    recent: Arc<Mutex<RecentLog>>,
    writer: LogWriter,
    /// The last purged id. A purge deletes only unflushed entries in RocksDB (flushed ones go
    /// with their files later, `log_reclaim`), so reads start after it; and its record reaches RocksDB only once
    /// the stored snapshot covers it (`LogWriter::purge`), so this is the log's state meanwhile.
    purged: Arc<Mutex<Option<LogId>>>,
    sync: Arc<SyncPolicy>,
    encoded: EncodeBuffer,
    left_out: Arc<LeftOutBodies>,
}

/// The buffer that `append` encodes entries into before RocksDB copies them into its write
/// batch. Reused because a fresh buffer per entry, grown by doubling up to the entry's size
/// (up to `max_bytes_per_entry`, about 8 MiB), cost a broker under a 16-byte transient load
/// 5-8% of its CPU in copies and in faulting fresh pages (benchmarks.md, session 14). It keeps the capacity of the largest entry so far. A clone (a log reader, which never
/// encodes) starts empty.
#[derive(Default)]
struct EncodeBuffer(Vec<u8>);

impl Clone for EncodeBuffer {
    fn clone(&self) -> EncodeBuffer {
        EncodeBuffer::default()
    }
}

impl LogStore {
    /// The log store on `db`; `sink` hears which entries are durable (`EffectSink::durable`).
    pub(crate) fn new(
        db: Arc<DB>,
        sink: Arc<dyn EffectSink>,
        left_out: Arc<LeftOutBodies>,
    ) -> Result<LogStore, StoreError> {
        let recent = Arc::new(Mutex::new(RecentLog::new(RecentLimits::default())));
        let writer = LogWriter::start(db.clone(), recent.clone(), sink)?;
        let purged: Option<LogId> = read_meta(&db, KEY_LAST_PURGED, "last purged log id")?;
        Ok(LogStore {
            db,
            recent,
            writer,
            purged: Arc::new(Mutex::new(purged)),
            sync: Arc::default(),
            encoded: EncodeBuffer::default(),
            left_out,
        })
    }

    /// How many write groups have been fsync'ed since the store opened.
    pub(crate) fn syncs(&self) -> Arc<AtomicU64> {
        self.writer.syncs()
    }

    /// The write batch of an append again, from the in-memory tail (which keeps every entry
    /// until it is durable), for an append whose first batch RocksDB refused to write at once.
    fn rebuild_batch(&mut self, ids: &[LogId]) -> Result<WriteBatch, StorageError> {
        let (Some(first), Some(last)) = (ids.first(), ids.last()) else {
            return Ok(WriteBatch::default());
        };
        let entries = self.recent().read(first.index, Bound::Included(last.index));
        if entries.len() != ids.len() {
            return Err(io_err(
                ErrorSubject::Logs,
                ErrorVerb::Write,
                StoreError::corrupt(
                    "log append",
                    "its entries left memory before they were written",
                ),
            ));
        }
        self.encode_batch(&entries)
    }

    /// One write batch holding these entries in the log column family.
    fn encode_batch(&mut self, entries: &[LogEntry]) -> Result<WriteBatch, StorageError> {
        let mut batch = WriteBatch::default();
        let logs = cf(&self.db, CF_LOGS);
        let plan = self.left_out.plan(entries, self.sync.is_lone());
        let value = &mut self.encoded.0;
        let nothing_left_out = LeftOut::new();
        for entry in &plan.rewrite {
            encode_log_entry_into(entry, &nothing_left_out, value)
                .map_err(|e| io_err(ErrorSubject::Log(entry.log_id), ErrorVerb::Write, e))?;
            batch.put_cf(logs, index_key(entry.log_id.index), &value[..]);
        }
        if plan.leaves_out() {
            batch.put_cf(cf(&self.db, CF_META), KEY_LEFT_OUT, [1u8]);
        }
        for (entry, left_out) in entries.iter().zip(&plan.left_out) {
            encode_log_entry_into(entry, left_out, value)
                .map_err(|e| io_err(ErrorSubject::Log(entry.log_id), ErrorVerb::Write, e))?;
            batch.put_cf(logs, index_key(entry.log_id.index), &value[..]);
        }
        Ok(batch)
    }

    /// Which appends are fsync'ed; every one until the node says it is lone.
    pub(crate) fn sync_policy(&self) -> Arc<SyncPolicy> {
        self.sync.clone()
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, RecentLog> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        what: &'static str,
    ) -> Result<Option<T>, StoreError> {
        read_meta(&self.db, key, what)
    }

    fn last_purged(&self) -> Option<LogId> {
        *self.purged.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn last_log_id(&self) -> Result<Option<LogId>, StorageError> {
        let mut iter = self
            .db
            .iterator_cf(cf(&self.db, CF_LOGS), IteratorMode::End);
        match iter.next() {
            None => Ok(None),
            Some(Err(e)) => Err(io_err(ErrorSubject::Logs, ErrorVerb::Read, e)),
            Some(Ok((_, value))) => {
                let entry = decode_log_entry(&value)
                    .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
                Ok(Some(entry.log_id))
            }
        }
    }

    fn read_range(&self, start: u64, end: Bound<u64>) -> Result<Vec<LogEntry>, StoreError> {
        let mut entries = Vec::new();
        // Entries whose bodies this run left out are read whole from memory.
        let kept = self.left_out.any_kept();
        let from = index_key(start);
        for item in self.db.iterator_cf(
            cf(&self.db, CF_LOGS),
            IteratorMode::From(&from, Direction::Forward),
        ) {
            let (key, value) = item?;
            let index = key_index(&key)?;
            let in_range = match end {
                Bound::Included(e) => index <= e,
                Bound::Excluded(e) => index < e,
                Bound::Unbounded => true,
            };
            if !in_range {
                break;
            }
            // The value becomes the buffer its bodies are slices of (`shared_bytes`).
            if let Some(whole) = kept.then(|| self.left_out.whole(index)).flatten() {
                entries.push(whole);
                continue;
            }
            let value = Bytes::from(value);
            entries.push(shared_bytes::decode_from(&value, decode_log_entry)?);
        }
        Ok(entries)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<LogEntry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => match s.checked_add(1) {
                Some(s) => s,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        let start = start.max(self.last_purged().map_or(0, |p| p.index.saturating_add(1)));
        let end = range.end_bound().cloned();
        // The newest entries come from memory; whatever lies before them is durable and read
        // from RocksDB (entries leave memory only once durable, so nothing falls in between).
        let (newest, first_in_memory) = {
            let recent = self.recent();
            (recent.read(start, end), recent.first_index())
        };
        match first_in_memory {
            Some(first) if start >= first => Ok(newest),
            _ => {
                let db_end = match (first_in_memory, end) {
                    (Some(first), Bound::Included(e)) if e >= first => Bound::Excluded(first),
                    (Some(first), Bound::Excluded(e)) if e > first => Bound::Excluded(first),
                    (Some(first), Bound::Unbounded) => Bound::Excluded(first),
                    (_, end) => end,
                };
                let mut entries = self
                    .read_range(start, db_end)
                    .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
                entries.extend(newest);
                Ok(entries)
            }
        }
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.last_purged();
        // With every entry purged the log is empty, and its last id is the last purged one
        // (purged entries may still be in RocksDB: a purge deletes only those not yet flushed).
        let newest = self.recent().last_log_id();
        let last_log_id = match newest {
            Some(id) => Some(id),
            None => match (self.last_log_id()?, last_purged_log_id) {
                (Some(stored), Some(purged)) if stored.index <= purged.index => Some(purged),
                (stored, purged) => stored.or(purged),
            },
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        // Durability: a vote must be on disk before this node answers the vote request or acts
        // as leader of that term; forgetting it after a crash could let the node vote twice in
        // one term and elect two leaders. So it is a synced write.
        let value =
            encode_meta(vote).map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&self.db, CF_META), KEY_VOTE, value);
        self.writer
            .write(batch, true)
            .await
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(KEY_VOTE, "vote")
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Durability: not synced, and not even written at once. The committed id is a hint that
        // lets a restarted node re-apply its committed entries before it hears from a leader;
        // the entries themselves are made durable by `append`, and losing the latest value only
        // means the node re-learns it from the next commit. It goes into the next write to the
        // store (`LogWriter::save_committed`), so it lands in RocksDB's sequential write-ahead
        // log after the entries it names, and a later synced write makes it durable.
        let value = encode_meta(&committed)
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        self.writer.save_committed(value);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed: Option<Option<LogId>> = self
            .get_meta(KEY_COMMITTED, "committed log id")
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))?;
        Ok(committed.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = LogEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<LogEntry> = entries.into_iter().collect();
        self.writer.append_made();
        // Encoded before the in-memory tail is locked: readers (apply, replication) need not
        // wait for the bodies to be copied.
        let batch = self.encode_batch(&entries)?;
        let ids: Vec<LogId> = entries.iter().map(|e| e.log_id).collect();
        let durability = self.sync.durability(&entries);

        {
            let mut recent = self.recent();
            for entry in entries {
                recent.push(entry);
            }
        }
        // The entries are readable now (in memory); the writer thread writes them and only then
        // tells openraft, through `callback`, that they are flushed. A lone node's append that
        // needs no fsync is written here when the writer thread is idle (`write_now`).
        //
        // Durability: every entry of this call goes into ONE write batch (atomic in RocksDB's
        // write-ahead log). On a cluster node it is fsync'ed before the callback is called: the
        // leader counts its own copy toward the commit quorum on that signal, and a commit is
        // what lets any node release publisher confirms, so an earlier callback could confirm
        // a publish that a power loss then erases. A lone node's callback comes before the
        // fsync (`SyncPolicy`); only its own effect sink releases promises, and only once the
        // writer reports the fsync (`EffectSink::durable`).
        let (batch, ids, callback) = match durability {
            Durability::Unsynced => match self.writer.write_now(batch, ids, callback) {
                Ok(()) => return Ok(()),
                Err(NotWritten {
                    batch,
                    ids,
                    callback,
                }) => {
                    let batch = match batch {
                        Some(batch) => batch,
                        None => self.rebuild_batch(&ids)?,
                    };
                    (batch, ids, callback)
                }
            },
            _ => (batch, ids, callback),
        };
        self.writer
            .submit(batch, durability, Done::Appended { ids, callback })
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Deletes [log_id.index, end): conflicting entries a follower got from an old leader.
        // Durability: synced, so that a crash cannot resurrect entries that the new leader
        // replaced. (A later synced append would also persist it; syncing here keeps the
        // reasoning local and truncation is rare.)
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            cf(&self.db, CF_LOGS),
            index_key(log_id.index),
            index_key(u64::MAX),
        );
        batch.delete_cf(cf(&self.db, CF_LOGS), index_key(u64::MAX));
        self.recent().truncate_from(log_id.index);
        self.left_out.truncated(log_id.index);
        self.writer
            .write(batch, true)
            .await
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Records log_id as the last purged id: from now on reads start after it. The record
        // is written, synced, once the stored snapshot covers log_id (`LogWriter::purge`: on a
        // follower openraft purges before a received snapshot is stored), with a range delete
        // of the purged entries that are not yet in table files; only after that does the
        // writer drop the table files that hold only purged entries (`log_reclaim`). Until the
        // record is durable a crash brings the purged entries back, which is harmless: they
        // are purged again.
        let value =
            encode_meta(&log_id).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&self.db, CF_META), KEY_LAST_PURGED, value);
        {
            let mut purged = self.purged.lock().unwrap_or_else(|p| p.into_inner());
            if purged.is_none_or(|p| p.index < log_id.index) {
                *purged = Some(log_id);
            }
        }
        self.recent().purge_upto(log_id.index);
        self.left_out.purged(log_id.index);
        self.writer
            .purge(batch, log_id.index)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;
    use raftmq_broker::log::DiscardEffects;
    use raftmq_broker::machine::command::Command;
    use std::collections::{BTreeMap, BTreeSet};

    fn log_id(term: u64, index: u64) -> LogId {
        LogId {
            leader_id: CommittedLeaderId::new(term, 7),
            index,
        }
    }

    #[test]
    fn log_entry_encoding_round_trips_every_payload_kind() {
        let batch = CommandBatch {
            now_ms: 1_700_000_000_000,
            commands: vec![Command::NodeStarted {
                node: 1,
                epoch: 3,
                drop_transient: true,
            }],
            origin: Some(raftmq_broker::machine::command::Origin {
                node: 1,
                epoch: 3,
                seq: 4,
            }),
        };
        let mut nodes = BTreeMap::new();
        nodes.insert(
            1,
            NodeInfo {
                raft_addr: "a:1".into(),
                amqp_addr: "a:2".into(),
                zone: "z1".into(),
            },
        );
        let membership = Membership::new(vec![BTreeSet::from([1])], nodes);
        for payload in [
            EntryPayload::Blank,
            EntryPayload::Normal(Arc::new(batch)),
            EntryPayload::Membership(membership),
        ] {
            let entry = LogEntry {
                log_id: log_id(2, 9),
                payload,
            };
            let bytes = encode_log_entry(&entry).expect("encodes");
            assert_eq!(bytes[0], LOG_FORMAT_VERSION);
            assert_eq!(decode_log_entry(&bytes).expect("decodes"), entry);
        }
    }

    #[test]
    fn a_lone_node_applies_before_the_fsync_and_a_cluster_node_after() {
        let batch = |commands: Vec<Command>| LogEntry {
            log_id: log_id(1, 1),
            payload: EntryPayload::Normal(Arc::new(CommandBatch {
                now_ms: 0,
                commands,
                origin: None,
            })),
        };
        let start = || Command::NodeStarted {
            node: 1,
            epoch: 1,
            drop_transient: false,
        };
        let close = |n| Command::ConnectionClosed {
            conn: raftmq_broker::ids::ConnId {
                node: 1,
                epoch: 1,
                seq: n,
            },
        };
        let volatile = batch((0..100).map(close).collect());
        // A large append that promises something (in its middle).
        let large = batch(
            (0..50)
                .map(close)
                .chain([start()])
                .chain((50..100).map(close))
                .collect(),
        );

        let policy = SyncPolicy::default();
        assert_eq!(
            policy.durability(&[volatile.clone()]),
            Durability::SyncedFirst
        );
        assert_eq!(policy.durability(&[large.clone()]), Durability::SyncedFirst);
        policy.set_lone(true);
        assert_eq!(policy.durability(&[volatile.clone()]), Durability::Unsynced);
        assert_eq!(
            policy.durability(&[volatile.clone(), large.clone()]),
            Durability::SyncedAfter,
            "whatever its size"
        );
        let blank = LogEntry {
            log_id: log_id(1, 2),
            payload: EntryPayload::Blank,
        };
        assert_eq!(policy.durability(&[blank]), Durability::SyncedAfter);
        // A membership of two ends the lone mode for good.
        let mut nodes = BTreeMap::new();
        for id in [1, 2] {
            nodes.insert(id, NodeInfo::default());
        }
        let two = LogEntry {
            log_id: log_id(1, 3),
            payload: EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1, 2])], nodes)),
        };
        assert_eq!(policy.durability(&[two]), Durability::SyncedFirst);
        assert_eq!(policy.durability(&[volatile]), Durability::SyncedFirst);
    }

    /// Stores a snapshot meta covering the log up to `index`, as `state_machine.rs` does.
    fn store_snapshot_meta(db: &DB, index: u64) {
        let meta = crate::types::SnapshotMeta {
            last_log_id: Some(log_id(1, index)),
            last_membership: Default::default(),
            snapshot_id: format!("test-{index}"),
        };
        let key = crate::state_machine::KEY_SNAPSHOT_META;
        db.put_cf(cf(db, CF_SM), key, encode_meta(&meta).unwrap())
            .unwrap();
    }

    /// Polls for the durable purge record, for up to two seconds.
    async fn stored_purge(store: &LogStore, want: LogId) -> bool {
        for _ in 0..40 {
            let stored: Option<LogId> = store
                .get_meta(KEY_LAST_PURGED, "last purged log id")
                .unwrap();
            if stored == Some(want) {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        false
    }

    /// An append whose batch RocksDB refused to write at once (`write_now` with `no_slowdown`)
    /// is queued with a batch made again from the in-memory tail: the same bytes.
    #[test]
    fn a_rebuilt_batch_holds_the_same_bytes_as_the_first() {
        let tmp = tempfile::tempdir().unwrap();
        let db = open_db(&tmp.path().join("db")).unwrap();
        let mut store = LogStore::new(db, Arc::new(DiscardEffects), no_state()).unwrap();
        let entries: Vec<LogEntry> = (5..8)
            .map(|index| LogEntry {
                log_id: log_id(2, index),
                payload: EntryPayload::Normal(Arc::new(CommandBatch {
                    now_ms: index,
                    commands: vec![Command::NodeStarted {
                        node: 1,
                        epoch: index,
                        drop_transient: false,
                    }],
                    origin: None,
                })),
            })
            .collect();
        let first = store.encode_batch(&entries).unwrap();
        for entry in &entries {
            store.recent().push(entry.clone());
        }
        let ids: Vec<LogId> = entries.iter().map(|e| e.log_id).collect();
        let again = store.rebuild_batch(&ids).unwrap();
        assert_eq!(again.len(), 3);
        assert_eq!(again.data(), first.data());
        assert!(
            store.rebuild_batch(&[log_id(2, 9)]).is_err(),
            "an entry that is not in memory cannot be written again"
        );
    }

    fn test_channel() -> raftmq_broker::ids::ChannelRef {
        raftmq_broker::ids::ChannelRef {
            conn: raftmq_broker::ids::ConnId {
                node: 1,
                epoch: 1,
                seq: 1,
            },
            number: 1,
            generation: 0,
        }
    }

    fn declare(queue: &str, argument: Option<(&str, &str)>) -> Command {
        let mut arguments = amq_protocol::types::FieldTable::default();
        if let Some((key, value)) = argument {
            arguments.insert(
                key.into(),
                amq_protocol::types::AMQPValue::LongString(value.into()),
            );
        }
        Command::QueueDeclare {
            ch: test_channel(),
            queue: queue.into(),
            server_named: false,
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments,
        }
    }

    fn publish(queue: &str, body: &'static [u8], persistent: bool) -> Command {
        use raftmq_broker::machine::command::{Publish, PublishedMessage};
        Command::Publish {
            ch: test_channel(),
            publish: Publish {
                exchange: String::new(),
                routing_key: queue.into(),
                mandatory: false,
                confirm_seq: None,
                message: PublishedMessage {
                    properties: Bytes::from_static(&[0, 0]),
                    body: Bytes::from_static(body),
                    persistent,
                    priority: 0,
                    expiration_ms: None,
                },
            },
        }
    }

    fn normal(index: u64, commands: Vec<Command>) -> LogEntry {
        LogEntry {
            log_id: log_id(1, index),
            payload: EntryPayload::Normal(Arc::new(CommandBatch {
                now_ms: 1,
                commands,
                origin: None,
            })),
        }
    }

    fn bodies_of(entry: &LogEntry) -> Vec<Vec<u8>> {
        let EntryPayload::Normal(batch) = &entry.payload else {
            panic!("not a normal entry: {entry:?}");
        };
        batch
            .commands
            .iter()
            .map(|c| match c {
                Command::Publish { publish, .. } => publish.message.body.to_vec(),
                other => panic!("not a publish: {other:?}"),
            })
            .collect()
    }

    fn no_state() -> Arc<LeftOutBodies> {
        Arc::new(LeftOutBodies::new(Arc::default()))
    }

    /// A lone node writes only the length of a transient body that no restart needs (the
    /// message can reach only classic queues that do not dead-letter): reads in the same run
    /// get the whole entry from memory, a new run reads zeros of that length, and the mark
    /// that makes the next start drop transient messages is set. Not while a declaration it
    /// has not applied yet may add a route.
    #[tokio::test]
    async fn a_lone_node_leaves_out_the_transient_bodies_no_restart_needs() {
        let tmp = tempfile::tempdir().unwrap();
        let db = open_db(&tmp.path().join("db")).unwrap();
        let applied: Arc<std::sync::RwLock<crate::state_machine::Applied>> = Arc::default();
        let left_out = Arc::new(LeftOutBodies::new(applied.clone()));
        let mut store = LogStore::new(db.clone(), Arc::new(DiscardEffects), left_out).unwrap();
        let write = |store: &mut LogStore, entry: &LogEntry| {
            let batch = store.encode_batch(std::slice::from_ref(entry)).unwrap();
            db.write(batch).unwrap();
        };
        let apply = |entry: &LogEntry| {
            let mut applied = applied.write().unwrap();
            if let EntryPayload::Normal(batch) = &entry.payload {
                applied.state.apply(entry.log_id.index, batch);
            }
            applied.last_applied = Some(entry.log_id);
        };
        let stored = |index: u64| {
            let value = db
                .get_cf(cf(&db, CF_LOGS), index_key(index))
                .unwrap()
                .unwrap();
            bodies_of(&decode_log_entry(&value).unwrap())
        };
        let marked = || db.get_cf(cf(&db, CF_META), KEY_LEFT_OUT).unwrap().is_some();

        let setup = normal(
            1,
            vec![
                declare("plain", None),
                declare("dead-letters", Some(("x-dead-letter-exchange", ""))),
                declare("quorum", Some(("x-queue-type", "quorum"))),
            ],
        );
        write(&mut store, &setup);
        apply(&setup);

        // Not lone: whole.
        write(
            &mut store,
            &normal(2, vec![publish("plain", b"two", false)]),
        );
        assert_eq!(stored(2), [b"two"]);
        assert!(!marked());

        store.sync.set_lone(true);
        let three = normal(
            3,
            vec![
                publish("plain", b"three", false),
                publish("plain", b"kept", true),
                publish("dead-letters", b"dl", false),
                publish("quorum", b"qq", false),
            ],
        );
        write(&mut store, &three);
        assert_eq!(
            stored(3),
            [&[0u8; 5][..], b"kept", b"dl", b"qq"],
            "only the transient body bound for a plain classic queue is left out, as zeros"
        );
        assert!(marked());
        let read = store.try_get_log_entries(3..4).await.unwrap();
        assert_eq!(read, [three], "whole from memory in this run");

        // A declaration not yet applied may add a route: nothing is left out until it is.
        let four = normal(4, vec![declare("later", None)]);
        write(&mut store, &four);
        write(
            &mut store,
            &normal(5, vec![publish("plain", b"five", false)]),
        );
        assert_eq!(stored(5), [b"five"]);
        apply(&four);
        write(
            &mut store,
            &normal(6, vec![publish("plain", b"six", false)]),
        );
        assert_eq!(stored(6), [[0u8; 3]]);
        drop(store);

        // A new run reads the zeros.
        let mut store = LogStore::new(db.clone(), Arc::new(DiscardEffects), no_state()).unwrap();
        let read = store.try_get_log_entries(6..7).await.unwrap();
        assert_eq!(bodies_of(&read[0]), [[0u8; 3]]);
    }

    /// Reads and the log state start after a purge, also after the store is opened again. Its record is written only once the stored
    /// snapshot covers it.
    #[tokio::test]
    async fn purged_entries_stay_unread_across_a_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let db = open_db(&tmp.path().join("db")).unwrap();
        for index in 1..=10 {
            let entry = LogEntry {
                log_id: log_id(1, index),
                payload: EntryPayload::Blank,
            };
            let bytes = encode_log_entry(&entry).unwrap();
            db.put_cf(cf(&db, CF_LOGS), index_key(index), bytes)
                .unwrap();
        }
        let indexes = |entries: Vec<LogEntry>| -> Vec<u64> {
            entries.iter().map(|e| e.log_id.index).collect()
        };

        let mut store = LogStore::new(db.clone(), Arc::new(DiscardEffects), no_state()).unwrap();
        store_snapshot_meta(&db, 4);
        store.purge(log_id(1, 6)).await.unwrap();
        assert_eq!(
            indexes(store.try_get_log_entries(0..).await.unwrap()),
            [7, 8, 9, 10]
        );
        assert!(
            !stored_purge(&store, log_id(1, 6)).await,
            "recorded before a snapshot covers it"
        );
        store_snapshot_meta(&db, 6);
        assert!(
            stored_purge(&store, log_id(1, 6)).await,
            "recorded once covered"
        );
        drop(store);

        let mut store = LogStore::new(db.clone(), Arc::new(DiscardEffects), no_state()).unwrap();
        assert_eq!(
            indexes(store.try_get_log_entries(3..9).await.unwrap()),
            [7, 8]
        );
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 6)));
        assert_eq!(state.last_log_id, Some(log_id(1, 10)));
        store_snapshot_meta(&db, 10);
        store.purge(log_id(1, 10)).await.unwrap();
        assert!(stored_purge(&store, log_id(1, 10)).await);
        drop(store);

        // Everything purged, the entries still stored: the log is empty, and its last id is
        // the last purged one.
        let mut store = LogStore::new(db, Arc::new(DiscardEffects), no_state()).unwrap();
        assert!(store.try_get_log_entries(0..).await.unwrap().is_empty());
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(1, 10)));
    }

    /// The committed id is no job of its own: it is written with the next write to the store,
    /// or by the writer on its own at the latest when the store closes, but never before the
    /// appends made before it was saved (they hold the entries it names).
    #[tokio::test]
    async fn the_committed_id_rides_with_a_later_write_never_before_its_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let db = open_db(&tmp.path().join("db")).unwrap();
        let committed = |db: &DB| -> Option<Option<LogId>> {
            read_meta(db, KEY_COMMITTED, "committed log id").unwrap()
        };
        let mut store = LogStore::new(db.clone(), Arc::new(DiscardEffects), no_state()).unwrap();
        store.save_committed(Some(log_id(1, 3))).await.unwrap();
        drop(store);
        assert_eq!(committed(&db), Some(Some(log_id(1, 3))), "written at close");

        let mut store = LogStore::new(db.clone(), Arc::new(DiscardEffects), no_state()).unwrap();
        assert_eq!(store.read_committed().await.unwrap(), Some(log_id(1, 3)));
        store.save_committed(Some(log_id(1, 4))).await.unwrap();
        store.save_vote(&Vote::new(1, 1)).await.unwrap();
        assert_eq!(
            committed(&db),
            Some(Some(log_id(1, 4))),
            "written with the vote"
        );

        // An append that is made but not written yet (a follower's, still queued): the id
        // saved after it waits, through later writes and the close.
        store.writer.append_made();
        store.save_committed(Some(log_id(1, 5))).await.unwrap();
        store.save_vote(&Vote::new(1, 2)).await.unwrap();
        drop(store);
        assert_eq!(
            committed(&db),
            Some(Some(log_id(1, 4))),
            "not before its entries"
        );
    }

    #[test]
    fn log_keys_sort_in_log_order() {
        assert!(index_key(255) < index_key(256));
        assert!(index_key(1) < index_key(u64::MAX));
        assert_eq!(key_index(&index_key(12345)).expect("8 bytes"), 12345);
    }
}
