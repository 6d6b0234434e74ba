//! A lone node's log leaves the bodies of transient messages out of what it writes to disk.
//!
//! RabbitMQ keeps a transient message of a classic queue in memory only, and a node restart
//! drops it. A lone node (standalone, or the active one of a pair) restarts the same way: its
//! `NodeStarted { drop_transient: true }` drops every transient message of a classic queue. So
//! the body of such a message is never read back from its log, and writing it there held back
//! a transient flood: the write batch, the write-ahead log, the memtable and the memtable's
//! flush each copy it, and the disk takes it all (scenario b, 1 KiB bodies: 260-305k consumed
//! msg/s with the bodies written, 333-372k without; docs/benchmarks.md, session 22).
//!
//! **What is left out.** In an append made while the node is lone, the body of every publish
//! (`Command::Publish`) of a transient message that can reach only classic queues that do not
//! dead-letter (`State::transient_may_outlive_restart`, asked of the state machine's latest
//! state). Such a message can never move into a queue that keeps it across a restart: a queue's
//! dead-letter settings are fixed when it is declared. The answer holds for the append only if
//! no command that may add a route (a declaration or a binding) comes between that state and
//! the append: an append holding one leaves nothing out, and neither does any later one until
//! the state machine has applied it.
//!
//! **What stays exact.** The stored entry keeps each left-out body's length, and reading it
//! back from disk gives a body of zeros of that length: the replay after a restart applies the
//! same commands to the same sizes (queue length limits in bytes decide alike) and then drops
//! those messages at the restart's `NodeStarted`. Within one run of the process nothing reads
//! a body of zeros: every entry written with bodies left out is kept whole in memory until
//! purged ([`LeftOutBodies::whole`]), and the log store's reads take it from there. An append
//! that makes the membership larger than one node writes those kept entries again whole, in
//! the same write batch, before it, so no other node can ever be sent a body of zeros from
//! this run. (A lone node has no listener for peers and refuses membership changes, so this
//! is a guard, not a path in use.) The kept entries hold their bodies until the purge after
//! the next snapshot: with a long queue, snapshots come after a quarter of the last one's
//! size in log, so up to that much of consumed bodies stays in memory a while longer.
//!
//! **The restart that drops them.** Every write with a body left out also sets a mark in the
//! meta column family ([`KEY_LEFT_OUT`]). A node whose log has it drops transient messages at
//! its next start even when it now starts as a cluster member (`drop_transient` is its own
//! choice otherwise), so a log that once left bodies out always has that `NodeStarted` after
//! them, on every node it is ever replicated to.

use crate::state_machine::Applied;
use crate::store::{cf, synced, CF_META};
use crate::types::LogEntry;
use openraft::EntryPayload;
use raftmq_broker::machine::command::{Command, Entry as CommandBatch, Publish};
use raftmq_broker::machine::State;
use rocksdb::DB;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// The meta key set by every write that leaves a body out.
pub(crate) const KEY_LEFT_OUT: &[u8] = b"transient_bodies_left_out";

/// Which commands of an entry had their body left out, and each body's length.
pub(crate) type LeftOut = Vec<(u32, u64)>;

/// What the log store knows about left-out bodies, and the state it asks.
#[derive(Debug)]
pub(crate) struct LeftOutBodies {
    applied: Arc<RwLock<Applied>>,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The last index of the latest append that may add a route or grows the membership (0:
    /// none in this run).
    fence: u64,
    /// Entries written in this run with bodies left out and not purged, whole.
    whole: BTreeMap<u64, LogEntry>,
}

/// How one append is to be written.
pub(crate) struct AppendPlan {
    /// Entries written earlier with bodies left out, to be written again whole first.
    pub(crate) rewrite: Vec<LogEntry>,
    /// For each appended entry, the bodies to leave out (empty: written whole).
    pub(crate) left_out: Vec<LeftOut>,
}

impl AppendPlan {
    /// Whether any body of the append is left out (the write then also sets the mark).
    pub(crate) fn leaves_out(&self) -> bool {
        self.left_out.iter().any(|l| !l.is_empty())
    }
}

impl LeftOutBodies {
    /// Asks `applied` (the state machine's) where messages go.
    pub(crate) fn new(applied: Arc<RwLock<Applied>>) -> LeftOutBodies {
        LeftOutBodies {
            applied,
            inner: Mutex::default(),
        }
    }

    /// Decides how an append of `entries` is written on a node that is (or is not) lone, and
    /// keeps the entries it leaves bodies out of. A node that is not lone writes everything
    /// whole and looks at nothing: it became lone only after its whole log was applied, and
    /// stops being lone only with an append that grows the membership, which this sees while
    /// still lone.
    pub(crate) fn plan(&self, entries: &[LogEntry], lone: bool) -> AppendPlan {
        let mut plan = AppendPlan {
            rewrite: Vec::new(),
            left_out: vec![Vec::new(); entries.len()],
        };
        if !lone {
            return plan;
        }
        let mut grows = false;
        let mut adds_routes = false;
        for entry in entries {
            match &entry.payload {
                EntryPayload::Normal(batch) => adds_routes |= batch.may_add_routes(),
                EntryPayload::Membership(m) => grows |= m.nodes().nth(1).is_some(),
                EntryPayload::Blank => {}
            }
        }
        if grows || adds_routes {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(last) = entries.last() {
                inner.fence = inner.fence.max(last.log_id.index);
            }
            if grows {
                // Only entries before this append (an append over a kept one replaces it).
                // They stay kept until purged: reads before this batch is written (a new
                // member's catching up) still take them from memory.
                let first = entries.first().map_or(u64::MAX, |e| e.log_id.index);
                inner.whole.retain(|&index, _| index < first);
                plan.rewrite = inner.whole.values().cloned().collect();
            }
            return plan;
        }
        if !entries.iter().any(has_transient_body) {
            return plan;
        }
        // Waits for an apply in progress (pure computation, never for this store): skipping
        // the state while it was busy kept the bodies of a third of b's appends (321k consumed
        // msg/s against 365k waiting). Taken before `inner`, so that reads of kept entries do
        // not wait for an apply too.
        let applied = self.applied.read().unwrap_or_else(|p| p.into_inner());
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if applied.last_applied.map_or(0, |l| l.index) < inner.fence {
            return plan;
        }
        for (entry, left_out) in entries.iter().zip(plan.left_out.iter_mut()) {
            if let EntryPayload::Normal(batch) = &entry.payload {
                *left_out = bodies_to_leave_out(&applied.state, batch);
                if !left_out.is_empty() {
                    inner.whole.insert(entry.log_id.index, entry.clone());
                }
            }
        }
        plan
    }

    /// The whole entry kept for `index`, if its bodies were left out in this run.
    pub(crate) fn whole(&self, index: u64) -> Option<LogEntry> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.whole.get(&index).cloned()
    }

    /// Whether any entry is kept whole (reads from disk need to look).
    pub(crate) fn any_kept(&self) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        !inner.whole.is_empty()
    }

    /// Entries up to `index` are purged: nobody reads them again.
    pub(crate) fn purged(&self, index: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.whole = inner.whole.split_off(&index.saturating_add(1));
    }

    /// Entries from `index` on are truncated.
    pub(crate) fn truncated(&self, index: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.whole.split_off(&index);
    }
}

/// Whether the log of `db` has left bodies out since the mark was last cleared.
pub(crate) fn marked(db: &DB) -> Result<bool, rocksdb::Error> {
    Ok(db.get_pinned_cf(cf(db, CF_META), KEY_LEFT_OUT)?.is_some())
}

/// Clears the mark, synced: for a node that never leaves bodies out, once its start has
/// dropped the messages whose bodies its log left out.
pub(crate) fn clear_mark(db: &DB) -> Result<(), rocksdb::Error> {
    db.delete_cf_opt(cf(db, CF_META), KEY_LEFT_OUT, &synced())
}

/// The publish of `command` if it is one of a transient message with a body: the only ones
/// whose body may be left out.
fn transient_with_body(command: &Command) -> Option<&Publish> {
    match command {
        Command::Publish { publish, .. }
            if !publish.message.persistent && !publish.message.body.is_empty() =>
        {
            Some(publish)
        }
        _ => None,
    }
}

/// Whether `entry` publishes a transient message with a body: only then is the state asked.
fn has_transient_body(entry: &LogEntry) -> bool {
    let EntryPayload::Normal(batch) = &entry.payload else {
        return false;
    };
    batch
        .commands
        .iter()
        .any(|c| transient_with_body(c).is_some())
}

/// The publishes of transient messages in `batch` whose bodies `state` says no restart needs,
/// and their body lengths.
fn bodies_to_leave_out(state: &State, batch: &CommandBatch) -> LeftOut {
    batch
        .commands
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let publish = transient_with_body(c)?;
            let outlives = state.transient_may_outlive_restart(
                &publish.exchange,
                &publish.routing_key,
                &publish.message.properties,
            );
            (!outlives).then_some((i as u32, publish.message.body.len() as u64))
        })
        .collect()
}

/// `batch` with the bodies in `left_out` emptied, for encoding.
pub(crate) fn without_bodies(batch: &CommandBatch, left_out: &LeftOut) -> CommandBatch {
    let mut copy = batch.clone();
    for &(i, _) in left_out {
        if let Some(Command::Publish { publish, .. }) = copy.commands.get_mut(i as usize) {
            publish.message.body = bytes::Bytes::new();
        }
    }
    copy
}

/// Gives the publishes in `left_out` bodies of zeros of their stored lengths, as read back
/// from disk. Fails when the entry does not match the list (a corrupt entry).
pub(crate) fn zero_bodies(batch: &mut CommandBatch, left_out: &LeftOut) -> Result<(), String> {
    for &(i, len) in left_out {
        match batch.commands.get_mut(i as usize) {
            Some(Command::Publish { publish, .. })
                if publish.message.body.is_empty() && !publish.message.persistent =>
            {
                let len = usize::try_from(len).map_err(|e| e.to_string())?;
                publish.message.body = bytes::Bytes::from(vec![0u8; len]);
            }
            _ => {
                return Err(format!(
                    "command {i} is not a transient publish without a body"
                ))
            }
        }
    }
    Ok(())
}
