//! The newest stretch of the raft log, kept in memory.
//!
//! openraft reads every entry back soon after appending it: the state machine applies entries
//! it reads from the log store, and the leader's replication streams read them to send them to
//! each follower. Reading them from RocksDB meant a copy and a decode per read (three per entry
//! on a leader of three). The log store keeps the newest entries here instead, as cheap clones
//! (an entry's batch is shared, not copied), and serves reads of that stretch from memory.
//!
//! It also holds what is appended but not yet durable: openraft wants appended entries readable
//! before the fsync completes. Only durable entries are ever dropped from the front, so whatever
//! is not here is in RocksDB.

use crate::types::{LogEntry, LogId};
use openraft::EntryPayload;
use std::collections::VecDeque;
use std::ops::Bound;

/// How much of the log's tail to keep once it is durable.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecentLimits {
    pub max_entries: usize,
    pub max_bytes: usize,
}

impl Default for RecentLimits {
    fn default() -> RecentLimits {
        RecentLimits {
            max_entries: 4096,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

struct Slot {
    entry: LogEntry,
    size: usize,
    durable: bool,
}

/// A contiguous run of the log's newest entries (indexes `first_index()..=last`).
pub(crate) struct RecentLog {
    slots: VecDeque<Slot>,
    bytes: usize,
    limits: RecentLimits,
}

fn entry_size(entry: &LogEntry) -> usize {
    match &entry.payload {
        EntryPayload::Normal(batch) => batch.approx_size(),
        _ => 64,
    }
}

impl RecentLog {
    pub(crate) fn new(limits: RecentLimits) -> RecentLog {
        RecentLog {
            slots: VecDeque::new(),
            bytes: 0,
            limits,
        }
    }

    pub(crate) fn first_index(&self) -> Option<u64> {
        self.slots.front().map(|s| s.entry.log_id.index)
    }

    pub(crate) fn last_log_id(&self) -> Option<LogId> {
        self.slots.back().map(|s| s.entry.log_id)
    }

    /// Adds an appended (not yet durable) entry at the end. openraft truncates before it
    /// appends over a conflict and never leaves a hole; should an entry arrive at or below the
    /// current end anyway, the stale tail from its index on is dropped first, and one that does
    /// not follow the end starts a new run.
    pub(crate) fn push(&mut self, entry: LogEntry) {
        let index = entry.log_id.index;
        self.truncate_from(index);
        if self
            .last_log_id()
            .is_some_and(|last| last.index + 1 != index)
        {
            tracing::warn!(
                index,
                "a log append left a hole; restarting the in-memory tail"
            );
            self.slots.clear();
            self.bytes = 0;
        }
        let size = entry_size(&entry);
        self.bytes += size;
        self.slots.push_back(Slot {
            entry,
            size,
            durable: false,
        });
    }

    /// Removes the entries at `index` and after (a conflicting tail).
    pub(crate) fn truncate_from(&mut self, index: u64) {
        while self
            .slots
            .back()
            .is_some_and(|s| s.entry.log_id.index >= index)
        {
            let slot = self.slots.pop_back().expect("checked");
            self.bytes -= slot.size;
        }
    }

    /// Removes the entries up to and including `index` (covered by a snapshot).
    pub(crate) fn purge_upto(&mut self, index: u64) {
        while self
            .slots
            .front()
            .is_some_and(|s| s.entry.log_id.index <= index)
        {
            let slot = self.slots.pop_front().expect("checked");
            self.bytes -= slot.size;
        }
    }

    /// Marks entries durable once their write has completed, then drops durable entries from
    /// the front while over the limits. An id that no longer matches (the entry was truncated
    /// and replaced meanwhile) is left alone.
    pub(crate) fn mark_durable(&mut self, ids: &[LogId]) {
        if let Some(first) = self.first_index() {
            for id in ids {
                // An id before the run's start was dropped already.
                let slot = id
                    .index
                    .checked_sub(first)
                    .and_then(|at| self.slots.get_mut(at as usize));
                if let Some(slot) = slot.filter(|s| s.entry.log_id == *id) {
                    slot.durable = true;
                }
            }
        }
        self.evict();
    }

    fn evict(&mut self) {
        while (self.slots.len() > self.limits.max_entries || self.bytes > self.limits.max_bytes)
            && self.slots.front().is_some_and(|s| s.durable)
        {
            let slot = self.slots.pop_front().expect("checked");
            self.bytes -= slot.size;
        }
    }

    /// Clones of the entries held in `start..end` (those below `first_index()` are not here).
    pub(crate) fn read(&self, start: u64, end: Bound<u64>) -> Vec<LogEntry> {
        let Some(first) = self.first_index() else {
            return Vec::new();
        };
        let from = start.saturating_sub(first) as usize;
        self.slots
            .iter()
            .skip(from)
            .take_while(|s| match end {
                Bound::Included(e) => s.entry.log_id.index <= e,
                Bound::Excluded(e) => s.entry.log_id.index < e,
                Bound::Unbounded => true,
            })
            .map(|s| s.entry.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn blank(term: u64, index: u64) -> LogEntry {
        LogEntry {
            log_id: id(term, index),
            payload: EntryPayload::Blank,
        }
    }

    fn indexes(entries: &[LogEntry]) -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index).collect()
    }

    #[test]
    fn only_durable_entries_leave_the_front() {
        let mut log = RecentLog::new(RecentLimits {
            max_entries: 2,
            max_bytes: usize::MAX,
        });
        for i in 1..=5 {
            log.push(blank(1, i));
        }
        // Over the limit, but nothing is durable yet: everything stays readable.
        assert_eq!(indexes(&log.read(1, Bound::Unbounded)), vec![1, 2, 3, 4, 5]);
        log.mark_durable(&[id(1, 1), id(1, 2)]);
        assert_eq!(log.first_index(), Some(3));
        log.mark_durable(&[id(1, 3), id(1, 4), id(1, 5)]);
        assert_eq!(indexes(&log.read(0, Bound::Unbounded)), vec![4, 5]);
        assert_eq!(indexes(&log.read(5, Bound::Excluded(6))), vec![5]);
        assert_eq!(indexes(&log.read(4, Bound::Included(4))), vec![4]);
    }

    #[test]
    fn a_replaced_entry_is_not_marked_durable_by_its_predecessors_write() {
        let mut log = RecentLog::new(RecentLimits {
            max_entries: 0,
            max_bytes: usize::MAX,
        });
        log.push(blank(1, 1));
        log.push(blank(1, 2));
        log.truncate_from(2);
        log.push(blank(2, 2));
        // The write of (1, 1) and (1, 2) completes: (2, 2) is not durable and stays.
        log.mark_durable(&[id(1, 1), id(1, 2)]);
        assert_eq!(log.last_log_id(), Some(id(2, 2)));
        assert_eq!(indexes(&log.read(0, Bound::Unbounded)), vec![2]);
        log.mark_durable(&[id(2, 2)]);
        assert_eq!(log.first_index(), None);
    }

    #[test]
    fn purge_drops_the_front_and_a_snapshot_install_starts_a_new_run() {
        let mut log = RecentLog::new(RecentLimits::default());
        for i in 1..=4 {
            log.push(blank(1, i));
        }
        log.purge_upto(2);
        assert_eq!(log.first_index(), Some(3));
        // A snapshot install purges past the end; the next append starts a new run.
        log.purge_upto(9);
        assert_eq!(log.first_index(), None);
        log.push(blank(1, 10));
        assert_eq!(log.first_index(), Some(10));
        assert_eq!(indexes(&log.read(0, Bound::Unbounded)), vec![10]);
    }
}
