//! Gives back the space of purged log entries: those still only in memory by a range delete
//! that the next memtable flush applies, those already in table files by dropping whole files,
//! one at a time.
//!
//! **Entries not yet flushed.** A log entry is written twice: into RocksDB's write-ahead log
//! (the write that confirms it) and, when its memtable fills, into a table file. Under a steady
//! load with a short queue (g: a 3-node cluster, about 20 MB of log a second on each node) most
//! entries are purged soon after they are written, yet every 64 MiB memtable was flushed whole,
//! and those flushes, on the disk the log's fsyncs wait on, were g's pauses (p99 62-93 ms with
//! them, 35-60 ms in runs too short to flush; benchmarks.md, session 18). So a purge's record
//! carries a range delete of the purged entries above every table file's keys: a flush drops
//! the entries that a range delete in its own memtable covers, so they are written once, to the
//! write-ahead log. With a snapshot every 32 MiB of log and 200 entries kept after it, g's
//! flushes wrote 12-32 MB instead of 64 MiB (session 19).
//!
//! The range delete never reaches below the highest key of any table file, and none is written
//! while a memtable waits to be flushed (its entries may land in a file after the delete is
//! written). A range delete that spanned flushed files would make every file flushed after it
//! overlap them, and RocksDB would merge them all in real compactions: when purges deleted
//! from index 0, a compaction read 250-320 MB on every node of a 3-node cluster at once and the
//! p99 confirm latency grew from 6 to 40 ms over three runs. Kept above the files, log keys and
//! range deletes only grow, each flushed file lies after the ones before it, and RocksDB moves
//! files down the levels without rewriting them.
//!
//! **Entries in table files.** Once a purge is durable, every table file that holds nothing but
//! purged entries is dropped (`DeleteFilesInRange`, which only sees files below level 0;
//! level-0 files move down within a few flushes and go at a later purge). Files go one at a
//! time, apart: freeing a file's blocks on a filesystem mounted with `discard` holds up the next
//! journal commit, and with it the log's fsync, for as long as the device takes to discard
//! them: 42 ms for 256 MB measured here, which dropping the files of one snapshot interval at
//! once would cost.

use crate::store::{cf, index_key, key_index, CF_LOGS};
use rocksdb::{LiveFile, WriteBatch, DB};
use std::time::{Duration, Instant};

/// Least time between two dropped files.
pub(crate) const DROP_SPACING: Duration = Duration::from_millis(50);

/// What is left to drop, and when the last file went.
#[derive(Debug, Default)]
pub(crate) struct Reclaim {
    /// Entries up to this index are purged, durably, and their files may go.
    purged_upto: Option<u64>,
    last_drop: Option<Instant>,
    /// The file the last drop was asked of (RocksDB skips a file that a compaction holds).
    last_tried: Option<String>,
    /// Entries up to this index are covered by a range delete already written.
    deleted_upto: Option<u64>,
}

impl Reclaim {
    /// A purge up to `index` is durable.
    pub(crate) fn purged(&mut self, index: u64) {
        self.purged_upto = Some(self.purged_upto.map_or(index, |p| p.max(index)));
    }

    /// Adds to `batch`, the record of a purge up to `upto`, a range delete of the purged
    /// entries that no table file holds and no memtable waiting to be flushed may hold, so that
    /// the flush of the memtable they are in drops them.
    pub(crate) fn delete_unflushed(&mut self, db: &DB, batch: &mut WriteBatch, upto: u64) {
        let logs = cf(db, CF_LOGS);
        match db.property_int_value_cf(logs, "rocksdb.num-immutable-mem-table") {
            Ok(Some(0)) => {}
            // A flush is waiting or running: its entries may be purged ones. The next purge
            // starts above the file it writes.
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the log's memtable count");
                return;
            }
        }
        let Some(files) = log_files(db) else {
            return;
        };
        // Above the highest key of any table file.
        let from = files
            .filter_map(|f| key_index(&f.end_key?).ok())
            .max()
            .map_or(0, |f| f.saturating_add(1))
            .max(self.deleted_upto.map_or(0, |d| d.saturating_add(1)));
        if from > upto {
            return;
        }
        batch.delete_range_cf(logs, index_key(from), index_key(upto.saturating_add(1)));
        self.deleted_upto = Some(upto);
    }

    /// Whether files may be waiting to be dropped.
    pub(crate) fn pending(&self) -> bool {
        self.purged_upto.is_some()
    }

    /// Drops at most one file that holds only purged entries, if the last drop was long enough
    /// ago. Once no such file is left, nothing is pending until the next purge.
    pub(crate) fn step(&mut self, db: &DB, now: Instant) {
        let Some(upto) = self.purged_upto else {
            return;
        };
        if self
            .last_drop
            .is_some_and(|t| now.duration_since(t) < DROP_SPACING)
        {
            return;
        }
        match droppable_file(db, upto) {
            Some((name, ..)) if self.last_tried.as_ref() == Some(&name) => {
                // Asked before and still there (a compaction holds it): leave it to a later
                // purge rather than ask again every step.
                tracing::debug!(file = %name, "a table file of purged log entries stays for now");
                self.purged_upto = None;
                self.last_tried = None;
            }
            Some((name, first, last)) => {
                self.last_tried = Some(name);
                let logs = cf(db, CF_LOGS);
                match db.delete_file_in_range_cf(logs, first, last) {
                    Ok(()) => tracing::debug!(upto, "dropped a table file of purged log entries"),
                    Err(e) => {
                        // Nothing is lost: the file stays, and the next purge tries again.
                        tracing::warn!(error = %e, "could not drop a table file of purged log entries");
                        self.purged_upto = None;
                    }
                }
                self.last_drop = Some(now);
            }
            None => {
                self.purged_upto = None;
                self.last_tried = None;
            }
        }
    }
}

/// The log's table files, or `None` (with a warning) when they cannot be listed.
fn log_files(db: &DB) -> Option<impl Iterator<Item = LiveFile>> {
    match db.live_files() {
        Ok(files) => Some(
            files
                .into_iter()
                .filter(|f| f.column_family_name == CF_LOGS),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "could not list the database's table files");
            None
        }
    }
}

/// The name and key range of the log's lowest table file below level 0 whose every key is at
/// most `upto`, if there is one.
fn droppable_file(db: &DB, upto: u64) -> Option<(String, Vec<u8>, Vec<u8>)> {
    log_files(db)?
        .filter(|f| f.level > 0)
        .filter_map(|f| {
            let (first, last) = (f.start_key?, f.end_key?);
            let last_index = key_index(&last).ok()?;
            (last_index <= upto).then_some((key_index(&first).ok()?, f.name, first, last))
        })
        .min_by_key(|(first_index, ..)| *first_index)
        .map(|(_, name, first, last)| (name, first, last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::open_db;

    /// Writes log keys `range` and flushes them into a table file of their own.
    fn write_file(db: &DB, range: std::ops::RangeInclusive<u64>) {
        let logs = cf(db, CF_LOGS);
        for i in range {
            db.put_cf(logs, index_key(i), [7u8; 100]).unwrap();
        }
        db.flush_cf(logs).unwrap();
    }

    fn log_files(db: &DB) -> Vec<(i32, u64, u64)> {
        let mut files: Vec<_> = db
            .live_files()
            .unwrap()
            .into_iter()
            .filter(|f| f.column_family_name == CF_LOGS)
            .map(|f| {
                let first = key_index(&f.start_key.unwrap()).unwrap();
                let last = key_index(&f.end_key.unwrap()).unwrap();
                (f.level, first, last)
            })
            .collect();
        files.sort_by_key(|f| f.1);
        files
    }

    /// Purges log keys up to `upto` as the writer does: the record's batch with whatever
    /// range delete `delete_unflushed` adds, written.
    fn purge(db: &DB, reclaim: &mut Reclaim, upto: u64) {
        let mut batch = WriteBatch::default();
        reclaim.delete_unflushed(db, &mut batch, upto);
        db.write(batch).unwrap();
    }

    /// Entries written (not deleted) in the log's table files holding keys above `after`: a
    /// file counts a range delete among its entries and its deletions.
    fn entries_flushed_after(db: &DB, after: u64) -> u64 {
        db.live_files()
            .unwrap()
            .into_iter()
            .filter(|f| f.column_family_name == CF_LOGS)
            .filter(|f| key_index(f.end_key.as_ref().unwrap()).unwrap() > after)
            .map(|f| f.num_entries - f.num_deletions)
            .sum()
    }

    #[test]
    fn purged_entries_still_in_the_memtable_are_not_flushed() {
        let tmp = tempfile::tempdir().unwrap();
        let db = open_db(&tmp.path().join("db")).unwrap();
        let logs = cf(&db, CF_LOGS);
        let mut reclaim = Reclaim::default();
        for i in 1..=20 {
            db.put_cf(logs, index_key(i), [7u8; 100]).unwrap();
        }
        purge(&db, &mut reclaim, 12);
        db.flush_cf(logs).unwrap();
        assert_eq!(
            entries_flushed_after(&db, 0),
            8,
            "only 13..=20 were written to a table file"
        );

        // 13..=20 are in a file now: a purge reaching into them deletes nothing there (the
        // file goes whole later), only what lies above it.
        for i in 21..=30 {
            db.put_cf(logs, index_key(i), [7u8; 100]).unwrap();
        }
        purge(&db, &mut reclaim, 18);
        purge(&db, &mut reclaim, 25);
        db.flush_cf(logs).unwrap();
        assert_eq!(entries_flushed_after(&db, 20), 5, "26..=30 flushed");
        for i in 13..=20 {
            assert!(db.get_cf(logs, index_key(i)).unwrap().is_some(), "{i}");
        }
        for i in (1..=12).chain(21..=25) {
            assert!(db.get_cf(logs, index_key(i)).unwrap().is_none(), "{i}");
        }
        for i in 26..=30 {
            assert!(db.get_cf(logs, index_key(i)).unwrap().is_some(), "{i}");
        }
        // A purge below what was deleted already adds nothing.
        let mut batch = WriteBatch::default();
        reclaim.delete_unflushed(&db, &mut batch, 22);
        assert!(batch.is_empty());
    }

    #[test]
    fn files_holding_only_purged_entries_are_dropped_one_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let db = open_db(&tmp.path().join("db")).unwrap();
        write_file(&db, 1..=10);
        write_file(&db, 11..=20);
        write_file(&db, 21..=30);
        // Files this small stay on level 0 until something moves them down.
        let mut reclaim = Reclaim::default();
        reclaim.purged(25);
        reclaim.step(&db, Instant::now());
        assert_eq!(log_files(&db).len(), 3, "level-0 files are left alone");
        assert!(!reclaim.pending(), "nothing to drop: nothing pending");

        db.compact_range_cf(cf(&db, CF_LOGS), None::<&[u8]>, None::<&[u8]>);
        assert!(
            log_files(&db).iter().all(|f| f.0 > 0),
            "{:?}",
            log_files(&db)
        );
        let files_before = log_files(&db);

        reclaim.purged(25);
        let t0 = Instant::now();
        reclaim.step(&db, t0);
        let after_one = log_files(&db);
        assert_eq!(after_one.len(), files_before.len() - 1, "one file per step");
        assert!(
            after_one.iter().all(|f| f.1 > 1),
            "the lowest file went first"
        );
        reclaim.step(&db, t0 + DROP_SPACING / 2);
        assert_eq!(log_files(&db), after_one, "not again so soon");
        reclaim.step(&db, t0 + DROP_SPACING);
        reclaim.step(&db, t0 + DROP_SPACING * 2);
        assert!(!reclaim.pending());
        // Every file that ended at or before 25 is gone; the one holding 26..=30 stays whole.
        let left = log_files(&db);
        assert!(left.iter().all(|f| f.2 > 25), "{left:?}");
        let logs = cf(&db, CF_LOGS);
        for i in 26..=30 {
            assert!(
                db.get_cf(logs, index_key(i)).unwrap().is_some(),
                "entry {i}"
            );
        }
    }
}
