//! The one thread that writes the log store's RocksDB batches, in the order they were queued.
//!
//! openraft's core must not wait for an fsync: `append` returns once the entries are readable
//! (they are in [`RecentLog`]) and reports durability later through openraft's callback. Every
//! write of the log store (appends, truncations, purges, the vote, the committed id) goes
//! through this queue, so writes reach the database in the order the core made them. The thread
//! takes whatever is queued and writes it with one fsync at the end: a synced RocksDB write
//! makes its write-ahead log durable up to and including every earlier write, so this is group
//! commit across appends. Only after that fsync are the appends' callbacks called, in order,
//! and the effect sink told which entries are durable.
//!
//! A lone node's appends ([`Durability::SyncedAfter`], [`Durability::Unsynced`]) are reported
//! as soon as they are written, before the fsync: openraft applies them while the disk syncs,
//! and the effect sink holds their promises until it hears `durable`. Unsynced writes get an
//! fsync of their own at the latest [`SYNC_WINDOW`] after the first of them, if no synced
//! write covered them sooner. A failed fsync after such a report can no longer be told to
//! openraft through those callbacks, so the writer fails every later write (openraft then
//! stops) and tells the sink to close its connections.
//!
//! A lone node's append that needs no fsync ([`Durability::Unsynced`]) is written on the
//! caller's thread instead ([`LogWriter::write_now`]) when nothing is queued for the thread or
//! being written by it, so order is kept: it skips the two hand-offs between threads, which in
//! a log that turns for one or two commands at a time were a fifth of the broker's CPU
//! (benchmarks.md, session 14). The thread still makes the fsync that covers it.
//!
//! Between groups it also drops table files that durable purges left behind (`log_reclaim`).

use crate::log_reclaim::{Reclaim, DROP_SPACING};
use crate::recent_log::RecentLog;
use crate::state_machine::stored_snapshot_index;
use crate::store::{cf, synced, Durability, StoreError, CF_META, KEY_COMMITTED};
use crate::types::{LogId, TypeConfig};
use openraft::storage::LogFlushed;
use raftmq_broker::log::EffectSink;
use rocksdb::{WriteBatch, WriteOptions, DB};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Who learns that a write is done, and how.
pub(crate) enum Done {
    /// Nobody waits (the record of a purge).
    Nothing,
    /// An append of these entries: mark them durable in the recent log, then tell openraft.
    Appended {
        ids: Vec<LogId>,
        callback: LogFlushed<TypeConfig>,
    },
    /// A caller awaits the outcome.
    Reply(oneshot::Sender<Result<(), StoreError>>),
}

struct Job {
    batch: WriteBatch,
    durability: Durability,
    done: Done,
    /// A purge of the log up to this index: once it is durable, its table files may go.
    purged: Option<u64>,
}

/// The queue to the writer thread. Clones share it; dropping the last one closes the queue
/// and waits for the thread to write what is queued and end, so the thread never outlives the
/// stores that feed it (a thread still holding the database while the process exits makes
/// RocksDB abort).
#[derive(Clone)]
pub(crate) struct LogWriter {
    thread: Arc<WriterThread>,
    /// Groups written with an fsync since the writer started.
    syncs: Arc<AtomicU64>,
    shared: Arc<Shared>,
    db: Arc<DB>,
    recent: Arc<Mutex<RecentLog>>,
}

/// What the writer thread and [`LogWriter::write_now`] share.
#[derive(Default)]
struct Shared {
    /// Jobs sent to the thread and not yet taken off the queue and written by it. Raised before
    /// a send, lowered by the thread under `state`'s lock once it has handled them.
    queued: AtomicUsize,
    /// Held by whoever writes: the thread for a whole group, `write_now` for its write.
    state: Mutex<WriteState>,
    /// The newest committed log id (encoded) not yet written: a hint that rides along with the
    /// next write ([`LogWriter::save_committed`]). Its own lock, held only to swap the value, so
    /// that openraft's core never waits for a write in progress.
    committed: Mutex<Option<PendingCommitted>>,
    /// Appends made to the store since it opened ([`LogWriter::append_made`]).
    appends_made: AtomicU64,
    /// Of those, how many are written to RocksDB (by the thread or by `write_now`).
    appends_written: AtomicU64,
}

/// A committed id waiting to be written, and the appends that must be written first: those
/// made before it was saved, which hold the entries it names.
struct PendingCommitted {
    after_appends: u64,
    value: Vec<u8>,
}

#[derive(Default)]
struct WriteState {
    /// Set when an fsync failed after some of its writes were already reported: every later
    /// job fails with it.
    failed: Option<rocksdb::Error>,
    /// The last index of the newest append written, synced or not: what an fsync makes durable.
    written: Option<u64>,
    /// When the oldest write not yet covered by an fsync was made.
    unsynced_since: Option<Instant>,
    /// When the thread last wrote a group that asked for an fsync.
    synced_group_at: Option<Instant>,
}

/// After a group with an fsync, `write_now` leaves appends to the thread for this long. While
/// publishers wait for confirms, every turn of the log waits for an fsync anyway, and appends
/// written directly between them only made the log turn more often for fewer commands (scenario
/// c with the Go client: 5-20% fewer confirms a second, benchmarks.md, session 14).
const DIRECT_AFTER_SYNC: Duration = SYNC_WINDOW;

impl Shared {
    fn state(&self) -> MutexGuard<'_, WriteState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn committed(&self) -> MutexGuard<'_, Option<PendingCommitted>> {
        self.committed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the pending committed id to `batch`, which is written after every append made
    /// before it, with `appends_in_batch` more appends before or in it. Returns what it took,
    /// so that it can be given back if the batch is not written. An id whose entries are not
    /// written yet (a follower commits what its leader committed, which may still wait in this
    /// queue) stays for a later write: it must never reach the disk before them.
    fn take_committed(
        &self,
        db: &DB,
        batch: &mut WriteBatch,
        appends_in_batch: u64,
    ) -> Option<PendingCommitted> {
        let written = self.appends_written.load(Ordering::SeqCst) + appends_in_batch;
        let mut slot = self.committed();
        if slot.as_ref()?.after_appends > written {
            return None;
        }
        let pending = slot.take()?;
        batch.put_cf(cf(db, CF_META), KEY_COMMITTED, &pending.value);
        Some(pending)
    }

    /// Gives back a committed id that was taken into a batch that was not written, unless a
    /// newer one came since.
    fn untake_committed(&self, pending: Option<PendingCommitted>) {
        if let Some(pending) = pending {
            self.committed().get_or_insert(pending);
        }
    }
}

struct WriterThread {
    jobs: Option<mpsc::Sender<Job>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(handle) = self.handle.take() {
            if handle.join().is_err() {
                tracing::error!("the raft log's writer thread panicked");
            }
        }
    }
}

/// Most jobs one fsync covers; a bound on how long the first of them waits for its callback.
const MAX_JOBS_PER_SYNC: usize = 256;

/// Longest that a write made without an fsync (a lone node's volatile append, a committed id)
/// stays unsynced: a power cut takes back at most this much of what was never promised.
pub const SYNC_WINDOW: Duration = Duration::from_millis(200);

impl LogWriter {
    pub(crate) fn start(
        db: Arc<DB>,
        recent: Arc<Mutex<RecentLog>>,
        sink: Arc<dyn EffectSink>,
    ) -> Result<LogWriter, StoreError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let syncs = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(Shared::default());
        let (counted, thread_db, thread_recent, thread_shared) =
            (syncs.clone(), db.clone(), recent.clone(), shared.clone());
        let handle = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || {
                let writer = Writer {
                    db: &thread_db,
                    recent: &thread_recent,
                    sink: sink.as_ref(),
                    syncs: &counted,
                    shared: &thread_shared,
                };
                writer.run(&queue)
            })
            .map_err(StoreError::Thread)?;
        Ok(LogWriter {
            thread: Arc::new(WriterThread {
                jobs: Some(jobs),
                handle: Some(handle),
            }),
            syncs,
            shared,
            db,
            recent,
        })
    }

    /// How many groups have been written with an fsync: shared, and counting on.
    pub(crate) fn syncs(&self) -> Arc<AtomicU64> {
        self.syncs.clone()
    }

    /// Queues a write; `done` hears of it as `durability` says.
    pub(crate) fn submit(
        &self,
        batch: WriteBatch,
        durability: Durability,
        done: Done,
    ) -> Result<(), StoreError> {
        self.send(Job {
            batch,
            durability,
            done,
            purged: None,
        })
    }

    /// Queues the record of a purge of the log up to `index`. The writer holds it until the
    /// stored snapshot covers `index`, writes it synced, and then drops the table files that
    /// hold only purged entries. openraft purges right after handing a received snapshot to
    /// the state machine, before that snapshot is stored: a purge made durable first would
    /// leave, after a crash, an older snapshot and a log that starts after the entries needed
    /// to reach the purge point. A newer purge replaces a held one.
    pub(crate) fn purge(&self, batch: WriteBatch, index: u64) -> Result<(), StoreError> {
        self.send(Job {
            batch,
            durability: Durability::SyncedFirst,
            done: Done::Nothing,
            purged: Some(index),
        })
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        let jobs = self.thread.jobs.as_ref().ok_or(StoreError::WriterGone)?;
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        jobs.send(job).map_err(|_| {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            StoreError::WriterGone
        })
    }

    /// Writes an append of a lone node that needs no fsync of its own
    /// ([`Durability::Unsynced`]) here and now, and reports it to openraft, if the thread has
    /// nothing queued and is not writing: then nothing written earlier can be overtaken.
    /// Otherwise hands the callback back, with the batch if it still has it, to be queued with
    /// [`LogWriter::submit`]. It never waits: not for the thread, which may be in an fsync, and
    /// not for RocksDB, which would stall a write while its memtables wait to be flushed (the
    /// write is made with `no_slowdown`, and one that would stall comes back without its batch,
    /// which the caller makes again).
    ///
    /// Durability: as for the thread's unsynced writes. The write is in RocksDB's write-ahead
    /// log (the page cache) when openraft hears of it; the thread's next synced write, or its
    /// own fsync at most [`SYNC_WINDOW`] later, makes it durable and tells the sink.
    pub(crate) fn write_now(
        &self,
        batch: WriteBatch,
        ids: Vec<LogId>,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), NotWritten> {
        let mut state = match self.shared.state.try_lock() {
            Ok(state) => state,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                return Err(NotWritten {
                    batch: Some(batch),
                    ids,
                    callback,
                })
            }
        };
        let recently_synced = state
            .synced_group_at
            .is_some_and(|at| at.elapsed() < DIRECT_AFTER_SYNC);
        if recently_synced || self.shared.queued.load(Ordering::SeqCst) != 0 {
            return Err(NotWritten {
                batch: Some(batch),
                ids,
                callback,
            });
        }
        let mut batch = batch;
        let committed = self.shared.take_committed(&self.db, &mut batch, 1);
        let result = match &state.failed {
            Some(e) => Err(e.clone()),
            None => {
                let mut opts = WriteOptions::default();
                opts.set_no_slowdown(true);
                self.db.write_opt(batch, &opts)
            }
        };
        if result.is_err() {
            self.shared.untake_committed(committed);
        }
        if result
            .as_ref()
            .is_err_and(|e| e.kind() == rocksdb::ErrorKind::Incomplete)
        {
            // It would have waited for a flush: nothing was written.
            return Err(NotWritten {
                batch: None,
                ids,
                callback,
            });
        }
        if result.is_ok() {
            self.shared.appends_written.fetch_add(1, Ordering::SeqCst);
            if let Some(last) = ids.last() {
                state.written = Some(last.index);
            }
            // The thread looks at this at least every SYNC_WINDOW (`Writer::run`).
            state.unsynced_since.get_or_insert_with(Instant::now);
        }
        finish(&self.recent, vec![Done::Appended { ids, callback }], result);
        Ok(())
    }

    /// Records the committed log id (encoded), to be written with the next write to the store,
    /// or by the thread within [`SYNC_WINDOW`] if none comes. It is a hint (`save_committed`
    /// says why losing it is harmless). It names entries of appends made before it, and it is
    /// written only with or after the last of those appends (`Shared::take_committed`), so it
    /// stays behind its entries in the write-ahead log. Queuing it as a job of its own woke
    /// the thread and made a second RocksDB write for every turn of the log, and while that job
    /// was queued the next append could not be written directly: a log turning for a command
    /// or two at a time spent much of the broker's CPU on those hand-offs (session 16).
    pub(crate) fn save_committed(&self, value: Vec<u8>) {
        let after_appends = self.shared.appends_made.load(Ordering::SeqCst);
        *self.shared.committed() = Some(PendingCommitted {
            after_appends,
            value,
        });
    }

    /// Counts an append of the store, before it is handed to `write_now` or `submit` (once,
    /// whichever writes it).
    pub(crate) fn append_made(&self) {
        self.shared.appends_made.fetch_add(1, Ordering::SeqCst);
    }

    /// Queues a write and waits for it (and for its fsync, if `sync`).
    pub(crate) async fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        let durability = if sync {
            Durability::SyncedFirst
        } else {
            Durability::Unsynced
        };
        self.submit(batch, durability, Done::Reply(tx))?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }
}

/// An append that [`LogWriter::write_now`] did not write, handed back to be queued; without
/// its batch when RocksDB took it and refused to write it at once.
pub(crate) struct NotWritten {
    pub batch: Option<WriteBatch>,
    pub ids: Vec<LogId>,
    pub callback: LogFlushed<TypeConfig>,
}

struct Writer<'a> {
    db: &'a DB,
    recent: &'a Mutex<RecentLog>,
    sink: &'a dyn EffectSink,
    syncs: &'a AtomicU64,
    shared: &'a Shared,
}

impl Writer<'_> {
    fn run(&self, queue: &mpsc::Receiver<Job>) {
        let db = self.db;
        let mut group = Vec::new();
        // A purge waiting for the stored snapshot to cover it (`LogWriter::purge`).
        let mut held: Option<Job> = None;
        let mut reclaim = Reclaim::default();
        loop {
            // Wake up for whichever comes first: the unsynced writes' fsync, or the next step of
            // a held purge or of reclaiming files. With nothing unsynced, still every
            // SYNC_WINDOW: `LogWriter::write_now` makes unsynced writes without waking it.
            let sync_due = match self.shared.state().unsynced_since {
                Some(since) => SYNC_WINDOW.saturating_sub(since.elapsed()),
                None => SYNC_WINDOW,
            };
            let drop_due = (held.is_some() || reclaim.pending()).then_some(DROP_SPACING);
            let timeout = drop_due.map_or(sync_due, |d| d.min(sync_due));
            let first = match queue.recv_timeout(timeout) {
                Ok(job) => Some(job),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    self.write_committed(&mut self.shared.state());
                    return;
                }
            };
            if let Some(first) = first {
                group.push(first);
                while group.len() < MAX_JOBS_PER_SYNC {
                    match queue.try_recv() {
                        Ok(job) => group.push(job),
                        Err(_) => break,
                    }
                }
            }
            let taken = group.len();
            let mut state = self.shared.state();
            hold_purges(db, &mut group, &mut held, &mut reclaim);
            if !group.is_empty() {
                self.write_group(&mut state, &mut group, &mut reclaim);
            } else {
                self.write_committed(&mut state);
            }
            // Handled (a held purge is written later on purpose, so it blocks nothing).
            self.shared.queued.fetch_sub(taken, Ordering::SeqCst);
            if state
                .unsynced_since
                .is_some_and(|since| since.elapsed() >= SYNC_WINDOW)
            {
                // Between groups, so no callback waits on it.
                let _ = self.sync_wal(&mut state);
            }
            drop(state);
            reclaim.step(db, Instant::now());
        }
    }

    /// Writes a group with one fsync at the end if any job asked for one, and reports to each
    /// job: a leading run of lone appends before the fsync, the rest after it.
    fn write_group(&self, state: &mut WriteState, group: &mut Vec<Job>, reclaim: &mut Reclaim) {
        if let Some(e) = &state.failed {
            let dones = group.drain(..).map(|job| job.done).collect();
            finish(self.recent, dones, Err(e.clone()));
            return;
        }
        let sync = group.iter().any(|j| j.durability != Durability::Unsynced);
        if sync {
            state.synced_group_at = Some(Instant::now());
        }
        // Jobs reported as soon as they are written: the leading run that does not wait for
        // the fsync. Reports stay in queue order.
        let early = group
            .iter()
            .take_while(|j| j.durability != Durability::SyncedFirst)
            .count();
        let appended = group
            .iter()
            .filter_map(|j| match &j.done {
                Done::Appended { ids, .. } => ids.last().map(|id| id.index),
                _ => None,
            })
            .max();
        let last = group.len() - 1;
        // The committed id rides with the group's last write (whatever that write's fate, the
        // writer fails every later one if it fails).
        let appends = group
            .iter()
            .filter(|j| matches!(j.done, Done::Appended { .. }))
            .count() as u64;
        self.shared
            .take_committed(self.db, &mut group[last].batch, appends);
        let mut result = Ok(());
        let mut dones = Vec::with_capacity(group.len());
        let mut purged = None;
        for (i, job) in group.drain(..).enumerate() {
            purged = job.purged.or(purged);
            if result.is_ok() {
                // Durability: when nothing is reported early, the group's last write is synced
                // if any of the group asked for it, which makes every earlier write of the
                // group durable too (one WAL). Otherwise the fsync follows the early reports.
                let opts = if i == last && sync && early == 0 {
                    synced()
                } else {
                    WriteOptions::default()
                };
                result = self.db.write_opt(job.batch, &opts);
            }
            dones.push(job.done);
        }
        self.shared
            .appends_written
            .fetch_add(appends, Ordering::SeqCst);
        if result.is_ok() {
            if appended.is_some() {
                state.written = appended;
            }
            if !sync {
                state.unsynced_since.get_or_insert_with(Instant::now);
            }
        }
        if early > 0 {
            let rest = dones.split_off(early);
            finish(self.recent, dones, result.clone());
            dones = rest;
            if sync && result.is_ok() {
                result = self.sync_wal(state);
            }
        } else if sync && result.is_ok() {
            // The group's last write was synced.
            self.synced(state);
        }
        if let (Some(index), Ok(())) = (purged, &result) {
            // Durable: the group ends with a synced write, since a purge asks for one.
            reclaim.purged(index);
        }
        finish(self.recent, dones, result);
    }

    /// Writes the pending committed id on its own, when no other write came to carry it. Not
    /// synced: a later synced write covers it, and losing it is harmless.
    fn write_committed(&self, state: &mut WriteState) {
        if state.failed.is_some() {
            return;
        }
        let mut batch = WriteBatch::default();
        let Some(pending) = self.shared.take_committed(self.db, &mut batch, 0) else {
            return;
        };
        if let Err(e) = self.db.write(batch) {
            tracing::warn!(error = %e, "writing the committed log id failed");
            self.shared.untake_committed(Some(pending));
        }
    }

    /// Makes every write so far durable with one fsync of RocksDB's write-ahead log. A failure
    /// here comes after those writes were reported, so it fails every later write.
    fn sync_wal(&self, state: &mut WriteState) -> Result<(), rocksdb::Error> {
        match self.db.flush_wal(true) {
            Ok(()) => {
                self.synced(state);
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "syncing the raft log failed after its entries were applied; failing every later write");
                state.unsynced_since = None;
                state.failed = Some(e.clone());
                self.sink.durability_failed();
                Err(e)
            }
        }
    }

    /// Every write so far is durable: tells the sink (before any callback of the group, so
    /// that a cluster node never holds an effect).
    fn synced(&self, state: &mut WriteState) {
        state.unsynced_since = None;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        if let Some(index) = state.written {
            self.sink.durable(index);
        }
    }
}

/// Moves the group's purges into `held` (the newest wins) and puts the held one back at the
/// end of the group once the stored snapshot covers it, with a range delete of its unflushed
/// entries (`Reclaim::delete_unflushed`).
fn hold_purges(db: &DB, group: &mut Vec<Job>, held: &mut Option<Job>, reclaim: &mut Reclaim) {
    let mut i = 0;
    while i < group.len() {
        if group[i].purged.is_some() {
            let job = group.remove(i);
            if held.as_ref().is_none_or(|h| h.purged <= job.purged) {
                *held = Some(job);
            }
        } else {
            i += 1;
        }
    }
    let covered = match held.as_ref().and_then(|h| h.purged) {
        Some(index) => stored_snapshot_index(db).is_some_and(|s| s >= index),
        None => false,
    };
    if let Some(mut job) = covered.then(|| held.take()).flatten() {
        if let Some(index) = job.purged {
            reclaim.delete_unflushed(db, &mut job.batch, index);
        }
        group.push(job);
    }
}

/// Reports a group's outcome to each of its jobs, in queue order.
fn finish(recent: &Mutex<RecentLog>, dones: Vec<Done>, result: Result<(), rocksdb::Error>) {
    if let Err(e) = &result {
        tracing::error!(error = %e, "writing to the raft log failed");
    }
    for done in dones {
        match done {
            Done::Nothing => {}
            Done::Appended { ids, callback } => match &result {
                Ok(()) => {
                    recent
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .mark_durable(&ids);
                    callback.log_io_completed(Ok(()));
                }
                Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
            },
            Done::Reply(tx) => {
                let _ = tx.send(result.clone().map_err(StoreError::Rocks));
            }
        }
    }
}
