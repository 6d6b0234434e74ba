//! Telling a dead peer process from a silent one, and acting on it at once.
//!
//! openraft alone notices a dead leader by silence: a follower that still holds a committed
//! vote waits out the leader lease (`election_timeout_max`) and then its election timeout,
//! about a second with our defaults, before it campaigns; and the leader declares a silent
//! node lost only after `node_down_after`. When a peer's *process* dies but its host lives
//! (SIGKILL, a crash, a clean stop), the kernel says so at once: every connection with it
//! ends, and its raft port refuses new ones. On both signs this node
//!
//! - notes the peer gone, so that (as leader, or once it leads) it declares the peer's life
//!   lost at once and the peer's consumers' unacknowledged messages go back to their queues
//!   (`cluster::watch_members`);
//! - campaigns straight away if the peer was its leader. Every surviving voter sees the same
//!   signs at about the same moment, so they all campaign; that makes each one's vote
//!   uncommitted, which lifts the lease that would otherwise make them refuse each other. If
//!   that first round splits, each retries on a period staggered by its rank until some live
//!   node leads (openraft keeps the votes safe; this only decides when to ask).
//!
//! A peer cut off by a partition is not "gone": its port still answers (or nothing answers at
//! all), so partitions keep the ordinary timeouts.

use crate::transport::Transport;
use crate::types::{Raft, RaftMetrics};
use openraft::ServerState;
use raftmq_broker::ids::NodeId;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

/// How long a probe of a peer's raft port may take: to connect, then to be reset.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// After this, the ordinary election timeouts are left to finish the job.
const CAMPAIGN_FOR: Duration = Duration::from_secs(3);
/// At most this many campaigns per lost leader. A survivor whose log is behind the other's
/// cannot win, and while it keeps campaigning it keeps its term ahead of the survivor that
/// can, which then loses on the term: seen as a 3.7 s election. A few rounds settle a split
/// vote; after them the election timeouts (which let the better log win) take over.
const MAX_CAMPAIGNS: u32 = 3;

/// Watches for connections with peers ending (`disconnects`, from the transport). When a
/// peer's process is gone, notes it (the leader then declares its life lost at once, so its
/// consumers' unacknowledged messages go back to their queues) and, if it was this node's
/// leader, campaigns.
pub(crate) async fn watch(
    raft: Raft,
    transport: Arc<Transport>,
    mut disconnects: broadcast::Receiver<NodeId>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let peer = tokio::select! {
            _ = stop.changed() => return,
            got = disconnects.recv() => match got {
                Ok(peer) => peer,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        // A dead process's several connections all end: one probe is enough.
        if transport.is_gone(peer) {
            continue;
        }
        let m = raft.metrics().borrow().clone();
        let Some(addr) = m
            .membership_config
            .membership()
            .get_node(&peer)
            .map(|n| n.raft_addr.clone())
        else {
            continue;
        };
        if !process_gone(&addr).await {
            continue;
        }
        transport.note_gone(peer);
        let m = raft.metrics().borrow().clone();
        if !may_replace(&m, peer) {
            tracing::info!(node = peer, "a peer's process is gone");
            continue;
        }
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

/// Is `peer` the leader this node follows, and may this node vote?
fn may_replace(m: &RaftMetrics, peer: NodeId) -> bool {
    m.state == ServerState::Follower
        && m.current_leader == Some(peer)
        && m.membership_config
            .membership()
            .voter_ids()
            .any(|id| id == m.id)
}

/// True when a connection to `addr` is refused: nothing listens there, the process is gone.
/// Anything else (it answers, it is silent, no route) is not taken as proof.
///
/// A dying process closes its connections before its listener, so a probe can land in
/// between: the kernel completes the connection for the listener, and resets it a moment
/// later when the listener closes. A live node keeps a silent connection open (it waits for
/// the greeting), so a probe that connects also waits briefly for that reset.
async fn process_gone(addr: &str) -> bool {
    match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        Ok(Ok(mut stream)) => {
            let mut byte = [0u8; 1];
            matches!(
                tokio::time::timeout(PROBE_TIMEOUT, stream.read(&mut byte)).await,
                Ok(Ok(0) | Err(_))
            )
        }
        Err(_) => false,
    }
}

/// Campaigns until a node other than `dead` leads, at most `MAX_CAMPAIGNS` times and for at
/// most `CAMPAIGN_FOR`.
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
    for _ in 0..MAX_CAMPAIGNS {
        // Another survivor is already campaigning (this node voted for it in a term newer than
        // the dead leader's) or leading: campaigning against it would only depose it, and two
        // survivors that keep deposing each other elect nobody. Its win or openraft's election
        // timeout finishes the job.
        let vote = metrics.borrow().vote;
        if vote.leader_id.node_id != at_loss.id && vote.leader_id.term > at_loss.vote.leader_id.term
        {
            tracing::info!(
                candidate = vote.leader_id.node_id,
                term = vote.leader_id.term,
                "another member is campaigning; not competing"
            );
            return;
        }
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
            break;
        }
    }
    tracing::info!("no leader yet; leaving it to the election timeouts");
}
