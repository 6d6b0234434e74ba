//! A prompt election when the leader's process is gone.
//!
//! openraft alone notices a dead leader by silence: a follower that still holds a committed
//! vote waits out the leader lease (`election_timeout_max`) and then its election timeout, about
//! a second with our defaults, before it campaigns. When the leader's *process* dies but its
//! host lives (SIGKILL, a crash, a clean stop), the kernel says so at once: every connection
//! from it ends, and its raft port refuses new ones. A follower that sees both campaigns
//! straight away instead of waiting.
//!
//! Every surviving voter sees the same two signs at about the same moment, so they all
//! campaign; that makes each one's vote uncommitted, which lifts the lease that would otherwise
//! make them refuse each other. If that first round splits, each retries on a period
//! staggered by its rank until some live node leads (openraft keeps the votes safe; this only
//! decides when to ask). A leader cut off by a partition is not "gone": its port still
//! answers, so partitions keep the ordinary timeouts.

use crate::transport::Transport;
use crate::types::{Raft, RaftMetrics};
use openraft::ServerState;
use raftmq_broker::ids::NodeId;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

/// How long a connect to the old leader's port may take to be refused.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// After this, the ordinary election timeouts are left to finish the job.
const CAMPAIGN_FOR: Duration = Duration::from_secs(3);

/// Watches for the current leader's connections ending (`disconnects`, from the transport's
/// server) and campaigns when its process is gone.
pub(crate) async fn watch(
    raft: Raft,
    transport: Arc<Transport>,
    mut disconnects: broadcast::Receiver<NodeId>,
    mut stop: watch::Receiver<bool>,
) {
    // The (leader, term) already acted on: a dead leader's several connections all end.
    let mut handled: Option<(NodeId, u64)> = None;
    loop {
        let peer = tokio::select! {
            _ = stop.changed() => return,
            got = disconnects.recv() => match got {
                Ok(peer) => peer,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        let m = raft.metrics().borrow().clone();
        let Some(addr) = leader_to_replace(&m, peer) else {
            continue;
        };
        if handled == Some((peer, m.current_term)) {
            continue;
        }
        if !process_gone(&addr).await {
            continue;
        }
        handled = Some((peer, m.current_term));
        tracing::warn!(
            leader = peer,
            term = m.current_term,
            "the leader's process is gone (its connections ended and its raft port refuses): campaigning now"
        );
        tokio::select! {
            _ = stop.changed() => return,
            _ = campaign(&raft, &m, peer, transport.config().inter_az_delay) => {}
        }
    }
}

/// The raft address of `peer` if it is the leader this node follows and this node may vote.
fn leader_to_replace(m: &RaftMetrics, peer: NodeId) -> Option<String> {
    if m.state != ServerState::Follower || m.current_leader != Some(peer) {
        return None;
    }
    let membership = m.membership_config.membership();
    if !membership.voter_ids().any(|id| id == m.id) {
        return None;
    }
    membership.get_node(&peer).map(|n| n.raft_addr.clone())
}

/// True when a connection to `addr` is refused: nothing listens there, the process is gone.
/// Anything else (it answers, it is silent, no route) is not taken as proof.
async fn process_gone(addr: &str) -> bool {
    match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        _ => false,
    }
}

/// Campaigns until a node other than `dead` leads, or `CAMPAIGN_FOR` has passed.
async fn campaign(raft: &Raft, at_loss: &RaftMetrics, dead: NodeId, inter_az_delay: Duration) {
    let survivors: Vec<NodeId> = at_loss
        .membership_config
        .membership()
        .voter_ids()
        .filter(|id| *id != dead)
        .collect();
    let rank = survivors
        .iter()
        .position(|id| *id == at_loss.id)
        .unwrap_or(0) as u32;
    // Long enough for a vote round trip between zones; staggered so the retries of two
    // survivors do not keep colliding.
    let period = (Duration::from_millis(20) + inter_az_delay * 4) * (rank + 1);
    let until = Instant::now() + CAMPAIGN_FOR;
    let mut metrics = raft.metrics();
    loop {
        if let Err(e) = raft.trigger().elect().await {
            tracing::warn!(error = %e, "could not start an election");
            return;
        }
        let deadline = (Instant::now() + period).min(until);
        loop {
            let led = {
                let m = metrics.borrow_and_update();
                m.current_leader.is_some_and(|l| l != dead)
            };
            if led {
                return;
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => break,
            }
        }
        if Instant::now() >= until {
            tracing::info!("no leader yet; leaving it to the election timeouts");
            return;
        }
    }
}
