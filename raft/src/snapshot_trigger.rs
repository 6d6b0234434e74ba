//! Snapshots by size: openraft's own policy counts log entries, but an entry can hold one tick
//! or thousands of publishes. A restart loads the latest snapshot and replays the log after it,
//! and replaying a message costs several times what loading it from a snapshot does (it is read
//! back out of RocksDB and applied again). So a snapshot is also asked for once the log applied
//! since the last one is large: at least `min_bytes`, and at least a `fraction` of the last
//! snapshot's size. The second bound keeps the cost of writing snapshots in proportion: with a
//! half, a queue that grows steadily to N bytes has written about 3N bytes of snapshots, and a
//! restart replays at most half a snapshot's worth of log.

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
}

impl SnapshotBySize {
    /// Is a snapshot due with `since` log bytes applied after a snapshot of `last` bytes?
    pub fn due(&self, since: u64, last: u64) -> bool {
        since >= self.min_bytes && since as f64 >= last as f64 * self.fraction_of_last
    }
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
        if !policy.due(since, last) {
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
        };
        assert!(!p.due(99, 0), "below the minimum");
        assert!(p.due(100, 0), "no snapshot yet: the minimum alone");
        assert!(p.due(100, 200));
        assert!(!p.due(150, 1000), "less than half the last snapshot");
        assert!(p.due(500, 1000));
    }
}
