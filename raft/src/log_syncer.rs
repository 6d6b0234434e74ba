//! The thread that fsyncs a lone node's log.
//!
//! A lone node's small appends (a light load) are written and applied before they are fsync'ed
//! (`Durability::SyncedAfter`). When the log is otherwise idle, such an append is written on
//! openraft's own thread and reported at once, and this thread fsyncs it in the background: a
//! message published into a lightly loaded broker is delivered without waiting for the disk or
//! for another thread. While that fsync runs, appends go through the writer thread, which
//! makes its own fsyncs, so that a busier log still turns once per fsync. An fsync of RocksDB's write-ahead log makes every write made before it
//! started durable, so requests that arrive while one runs are covered by the next one. After
//! each fsync the thread tells the effect sink how far the log is durable, which releases the
//! promises held for those entries.

use rocksdb::DB;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use raftmq_broker::log::EffectSink;

#[derive(Default)]
struct Requests {
    /// The highest log index written and not yet covered by an fsync that has started.
    wanted: Option<u64>,
    /// An fsync is running.
    syncing: bool,
    /// The writer is gone: make the last fsync asked for, then end.
    closed: bool,
    /// An fsync failed; nothing is durable past it, ever.
    failed: Option<rocksdb::Error>,
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Requests>,
    /// Wakes the sync thread: a request, or the end.
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Requests> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The writer's handle on the sync thread. Dropping it makes the thread sync what was asked
/// and waits for it to end.
pub(crate) struct LogSyncer {
    shared: Arc<Shared>,
    handle: Option<JoinHandle<()>>,
}

impl LogSyncer {
    pub(crate) fn start(
        db: Arc<DB>,
        sink: Arc<dyn EffectSink>,
        syncs: Arc<AtomicU64>,
    ) -> std::io::Result<LogSyncer> {
        let shared = Arc::new(Shared::default());
        let theirs = shared.clone();
        let handle = std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || sync_loop(&db, sink.as_ref(), &syncs, &theirs))?;
        Ok(LogSyncer {
            shared,
            handle: Some(handle),
        })
    }

    /// Asks for an fsync covering every write made so far, which holds the log up to `index`.
    pub(crate) fn request(&self, index: u64) {
        let mut requests = self.shared.lock();
        requests.wanted = Some(requests.wanted.map_or(index, |w| w.max(index)));
        drop(requests);
        self.shared.wake.notify_one();
    }

    /// Whether an fsync runs or is asked for.
    pub(crate) fn busy(&self) -> bool {
        let requests = self.shared.lock();
        requests.syncing || requests.wanted.is_some()
    }

    /// The error of a failed fsync, if one failed.
    pub(crate) fn failed(&self) -> Option<rocksdb::Error> {
        self.shared.lock().failed.clone()
    }
}

impl Drop for LogSyncer {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(handle) = self.handle.take() {
            if handle.join().is_err() {
                tracing::error!("the raft log's sync thread panicked");
            }
        }
    }
}

fn sync_loop(db: &DB, sink: &dyn EffectSink, syncs: &AtomicU64, shared: &Shared) {
    loop {
        let index = {
            let mut requests = shared.lock();
            loop {
                if let Some(index) = requests.wanted.take() {
                    requests.syncing = true;
                    break index;
                }
                if requests.closed {
                    return;
                }
                requests = shared
                    .wake
                    .wait(requests)
                    .unwrap_or_else(|p| p.into_inner());
            }
        };
        // Every write the requests stand for was made before they were sent, so before this
        // fsync starts: it covers them.
        let result = db.flush_wal(true);
        {
            let mut requests = shared.lock();
            requests.syncing = false;
            if let Err(e) = &result {
                requests.failed = Some(e.clone());
            }
        }
        match result {
            Ok(()) => {
                syncs.fetch_add(1, Ordering::Relaxed);
                sink.durable(index);
            }
            Err(e) => {
                tracing::error!(error = %e, "syncing the raft log failed after its entries were applied; failing every later write");
                sink.durability_failed();
                return;
            }
        }
    }
}
