//! Snapshots by size: openraft's own policy counts log entries, but an entry can hold one tick
//! or thousands of publishes. A restart loads the latest snapshot and replays the log after it,
//! and replaying a message costs several times what loading it from a snapshot does (it is read
//! back out of RocksDB and applied again). So a snapshot is also asked for once the log applied
//! since the last one is large: at least `min_bytes`, and at least a `fraction` of the last
//! snapshot's size. The second bound keeps the cost of writing snapshots in proportion: with a
//! quarter, a queue that grows steadily to N bytes has written about 5N bytes of snapshots, and
//! a restart replays at most a quarter of a snapshot's worth of log (plus what came in while the
//! last one was written).
//!
//! Once no command has been applied for [`IDLE_AFTER`], a smaller log is enough: at least
//! `idle_min_bytes` and a sixteenth of the last snapshot. A broker that was filled and then
//! left alone (the usual state before a planned restart) then restarts from a snapshot with
//! almost no log to replay, and the snapshot is written while nothing else wants the disk.

use crate::state_machine::ApplyStats;
use crate::types::Raft;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// When to ask for a snapshot by the size of the log since the last one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SnapshotBySize {
    /// Never for less log than this (bytes, by `Entry::approx_size`).
    pub min_bytes: u64,
    /// Nor for less than this fraction of the last snapshot's size.
    pub fraction_of_last: f64,
    /// With the log idle, at least this much (and [`IDLE_FRACTION_OF_LAST`] of the last).
    pub idle_min_bytes: u64,
}

/// A log with no command applied for this long is idle.
pub const IDLE_AFTER: Duration = Duration::from_secs(1);
/// The share of the last snapshot's size an idle log must reach: it bounds what a broker that
/// is busy only now and then spends on writing snapshots.
pub const IDLE_FRACTION_OF_LAST: f64 = 1.0 / 16.0;

impl SnapshotBySize {
    /// Is a snapshot due with `since` log bytes applied after a snapshot of `last` bytes?
    pub fn due(&self, since: u64, last: u64) -> bool {
        reaches(since, last, self.min_bytes, self.fraction_of_last)
    }

    /// Is a snapshot due with `since` log bytes after a snapshot of `last` bytes, the log idle?
    pub fn due_when_idle(&self, since: u64, last: u64) -> bool {
        self.due(since, last) || reaches(since, last, self.idle_min_bytes, IDLE_FRACTION_OF_LAST)
    }
}

/// Whether `since` bytes of log are at least `min` and at least `fraction` of `last`.
fn reaches(since: u64, last: u64, min: u64, fraction: f64) -> bool {
    since >= min && since as f64 >= last as f64 * fraction
}

/// How often the counters are looked at.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// A request that started no snapshot (openraft was busy with one) is repeated after this.
const ASK_AGAIN_AFTER: Duration = Duration::from_secs(5);

/// Asks openraft for a snapshot whenever `policy` says one is due, until `stop`.
pub(crate) async fn watch(
    raft: Raft,
    stats: Arc<ApplyStats>,
    policy: SnapshotBySize,
    mut stop: watch::Receiver<bool>,
) {
    let mut asked: Option<(u64, tokio::time::Instant)> = None;
    // The command count last seen and since when it has stood still.
    let mut commands = stats.commands.load(Ordering::Relaxed);
    let mut quiet_since = tokio::time::Instant::now();
    let mut interval = tokio::time::interval(CHECK_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        let since = stats.bytes_since_snapshot.load(Ordering::Relaxed);
        let last = stats.last_snapshot_bytes.load(Ordering::Relaxed);
        let started = stats.snapshots_started.load(Ordering::Relaxed);
        let now_commands = stats.commands.load(Ordering::Relaxed);
        if now_commands != commands {
            commands = now_commands;
            quiet_since = tokio::time::Instant::now();
        }
        let idle = quiet_since.elapsed() >= IDLE_AFTER;
        let due = if idle {
            policy.due_when_idle(since, last)
        } else {
            policy.due(since, last)
        };
        if !due {
            continue;
        }
        // Asked already, and no snapshot has started since: give openraft time.
        if let Some((at_started, when)) = asked {
            if at_started == started && when.elapsed() < ASK_AGAIN_AFTER {
                continue;
            }
        }
        tracing::info!(
            log_bytes = since,
            last_snapshot_bytes = last,
            idle,
            "asking for a snapshot: the log since the last one is large"
        );
        if let Err(e) = raft.trigger().snapshot().await {
            tracing::debug!(error = %e, "snapshot request refused; the node is shutting down");
            return;
        }
        asked = Some((started, tokio::time::Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_needs_both_the_minimum_and_the_fraction_of_the_last_snapshot() {
        let p = SnapshotBySize {
            min_bytes: 100,
            fraction_of_last: 0.5,
            idle_min_bytes: 10,
        };
        assert!(!p.due(99, 0), "below the minimum");
        assert!(p.due(100, 0), "no snapshot yet: the minimum alone");
        assert!(p.due(100, 200));
        assert!(!p.due(150, 1000), "less than half the last snapshot");
        assert!(p.due(500, 1000));
    }

    #[test]
    fn an_idle_log_needs_less_but_still_a_sixteenth_of_the_last_snapshot() {
        let p = SnapshotBySize {
            min_bytes: 1000,
            fraction_of_last: 0.5,
            idle_min_bytes: 10,
        };
        assert!(!p.due(10, 0), "busy: the minimum of a busy log");
        assert!(p.due_when_idle(10, 0));
        assert!(!p.due_when_idle(9, 0), "below the idle minimum");
        assert!(
            !p.due_when_idle(60, 1600),
            "below a sixteenth of the last snapshot"
        );
        assert!(p.due_when_idle(100, 1600));
        assert!(
            p.due_when_idle(1000, 0),
            "what is due when busy is due when idle"
        );
    }
}
