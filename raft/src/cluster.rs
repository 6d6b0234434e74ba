//! Running a cluster: the member list from `--peer`, the warning about zones, membership
//! changes and status (answered by the leader, whichever node is asked), fault injection, and
//! the leader's watch that declares a silent member lost.

use crate::node::Role;
use crate::transport::wire::{AdminRequest, Request, Response};
use crate::transport::{server::AdminHandler, Direction, Faults, PeerClient, Transport};
use crate::types::{NodeInfo, Raft, RaftMetrics};
use crate::LogStatus;
use futures::future::{BoxFuture, FutureExt};
use openraft::{ChangeMembers, ServerState};
use raftmq_broker::ids::NodeId;
use raftmq_broker::machine::command::{Command, Entry};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::watch;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PeerSpecError {
    #[error("peer '{0}' is not of the form ID=HOST:PORT[@ZONE], e.g. 2=10.0.0.2:7001@az-b")]
    Form(String),
    #[error("peer '{0}': the node id must be a positive integer")]
    Id(String),
    #[error("node {0} is listed twice among the peers")]
    Duplicate(NodeId),
}

/// One `--peer ID=HOST:PORT@ZONE`: a member's id, raft address and zone.
pub fn parse_peer(spec: &str) -> Result<(NodeId, String, String), PeerSpecError> {
    let (id, rest) = spec
        .split_once('=')
        .ok_or_else(|| PeerSpecError::Form(spec.into()))?;
    let id: NodeId = id
        .trim()
        .parse()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| PeerSpecError::Id(spec.into()))?;
    let (addr, zone) = match rest.split_once('@') {
        Some((addr, zone)) => (addr.trim(), zone.trim()),
        None => (rest.trim(), ""),
    };
    let valid_addr = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !valid_addr {
        return Err(PeerSpecError::Form(spec.into()));
    }
    Ok((id, addr.to_string(), zone.to_string()))
}

/// The member list of `--peer` flags, checked for duplicates.
pub fn parse_peers(specs: &[String]) -> Result<BTreeMap<NodeId, (String, String)>, PeerSpecError> {
    let mut peers = BTreeMap::new();
    for spec in specs {
        let (id, addr, zone) = parse_peer(spec)?;
        if peers.insert(id, (addr, zone)).is_some() {
            return Err(PeerSpecError::Duplicate(id));
        }
    }
    Ok(peers)
}

/// A warning when losing one zone would lose the majority of the voters (one zone holds half
/// of them or more), or when every voter is in one zone.
pub fn zone_warning<'a>(voters: impl IntoIterator<Item = (NodeId, &'a str)>) -> Option<String> {
    let mut by_zone: BTreeMap<&str, Vec<NodeId>> = BTreeMap::new();
    let mut total = 0;
    for (id, zone) in voters {
        by_zone.entry(zone).or_default().push(id);
        total += 1;
    }
    if total < 2 {
        return None;
    }
    let majority = total / 2 + 1;
    by_zone.iter().find_map(|(zone, ids)| {
        (total - ids.len() < majority).then(|| {
            let zone = if zone.is_empty() { "(no zone)" } else { zone };
            format!(
                "zone {zone} holds {} of the {total} voters (nodes {ids:?}): losing that zone loses the majority and the cluster stops; spread the voters so that no zone holds half of them",
                ids.len()
            )
        })
    })
}

/// One member as `cluster status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub raft_addr: String,
    pub amqp_addr: String,
    pub zone: String,
    /// "voter" or "learner".
    pub kind: String,
    pub is_leader: bool,
    /// The highest log index known to be on this member (the leader's view).
    pub matched_index: Option<u64>,
    /// How many entries this member is behind the leader's log.
    pub lag: Option<u64>,
    /// Milliseconds since the leader last heard from this member.
    pub last_contact_ms: Option<u64>,
}

/// The cluster as its leader sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node whose view this is (the leader, when one is known).
    pub reported_by: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    /// The reporting node's last log index.
    pub last_log_index: Option<u64>,
    /// The reporting node's last applied index (the leader applies what is committed).
    pub last_applied: Option<u64>,
    pub members: Vec<MemberStatus>,
    /// Set when the zone layout lets one zone's loss stop the cluster.
    pub zone_warning: Option<String>,
}

/// Admin operations; a follower passes them to the leader over the transport.
#[derive(Clone)]
pub struct ClusterAdmin {
    raft: Raft,
    transport: Arc<Transport>,
    status: LogStatus,
    /// Set while this node's log holds transient messages whose bodies it left out, until the
    /// node's start drops them (`LogNode::start_life`): no member may be added meanwhile.
    left_out_marked: Arc<AtomicBool>,
}

impl ClusterAdmin {
    pub(crate) fn new(
        raft: Raft,
        transport: Arc<Transport>,
        status: LogStatus,
        left_out_marked: Arc<AtomicBool>,
    ) -> ClusterAdmin {
        ClusterAdmin {
            raft,
            transport,
            status,
            left_out_marked,
        }
    }

    /// Cuts this node off from `peer` (fault injection for tests and demos).
    pub fn cut(&self, peer: NodeId, direction: Direction) {
        self.transport.cut(peer, direction);
    }

    /// Removes every injected fault.
    pub fn heal(&self) {
        self.transport.heal();
    }

    pub fn faults(&self) -> Faults {
        self.transport.faults()
    }

    /// The leader's view of the cluster (this node's own view when no leader is reachable).
    pub async fn status(&self) -> ClusterStatus {
        match self.run(AdminRequest::Status).await {
            Ok(json) => match serde_json::from_str(&json) {
                Ok(status) => status,
                Err(_) => self.local_status(),
            },
            Err(_) => self.local_status(),
        }
    }

    /// Adds a member: a learner first (it catches up, by snapshot if need be), then a voter.
    pub async fn add_voter(&self, node_id: NodeId, node: NodeInfo) -> Result<String, String> {
        self.run(AdminRequest::AddVoter { node_id, node }).await
    }

    /// Removes a member from the voters and learners.
    pub async fn remove(&self, node_id: NodeId) -> Result<String, String> {
        self.run(AdminRequest::Remove { node_id }).await
    }

    /// Runs `request` here when this node leads, else on the leader.
    async fn run(&self, request: AdminRequest) -> Result<String, String> {
        let m = self.status.metrics();
        if m.state == ServerState::Leader {
            return self.on_leader(request).await;
        }
        let leader = m
            .current_leader
            .ok_or_else(|| "no leader is known right now (an election is going on, or no majority is up); try again".to_string())?;
        let info = m
            .membership_config
            .membership()
            .get_node(&leader)
            .cloned()
            .ok_or_else(|| format!("the leader {leader} is not in this node's membership"))?;
        let mut client = PeerClient::new(self.transport.clone(), leader, &info);
        match client
            .call(Request::Admin(request), Duration::from_secs(120))
            .await
        {
            Ok(Response::Admin(result)) => result,
            Ok(_) => Err(format!(
                "leader {leader} answered with the wrong kind of response"
            )),
            Err(e) => Err(format!("cannot reach the leader {leader}: {e}")),
        }
    }

    async fn on_leader(&self, request: AdminRequest) -> Result<String, String> {
        match request {
            AdminRequest::Status => {
                serde_json::to_string(&self.local_status()).map_err(|e| e.to_string())
            }
            AdminRequest::AddVoter { node_id, node } => {
                if self.left_out_marked.load(Ordering::Acquire) {
                    return Err("this node is still starting (its log holds transient messages it is about to drop); try again in a moment".into());
                }
                tracing::info!(node_id, %node, "adding a member: as a learner first");
                self.raft
                    .add_learner(node_id, node, true)
                    .await
                    .map_err(|e| format!("adding node {node_id} as a learner failed: {e}"))?;
                tracing::info!(node_id, "learner caught up; making it a voter");
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node_id])), false)
                    .await
                    .map_err(|e| format!("making node {node_id} a voter failed: {e}"))?;
                Ok(format!("node {node_id} is a voter"))
            }
            AdminRequest::Remove { node_id } => {
                let membership = self.status.metrics().membership_config.membership().clone();
                if membership.get_node(&node_id).is_none() {
                    return Err(format!("node {node_id} is not a member"));
                }
                if membership.voter_ids().any(|v| v == node_id) {
                    self.raft
                        .change_membership(
                            ChangeMembers::RemoveVoters(BTreeSet::from([node_id])),
                            false,
                        )
                        .await
                        .map_err(|e| {
                            format!("removing node {node_id} from the voters failed: {e}")
                        })?;
                }
                self.raft
                    .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([node_id])), false)
                    .await
                    .map_err(|e| format!("removing node {node_id} failed: {e}"))?;
                Ok(format!("node {node_id} is no longer a member"))
            }
        }
    }

    fn local_status(&self) -> ClusterStatus {
        status_of(&self.status.metrics(), &self.transport)
    }
}

impl AdminHandler for ClusterAdmin {
    fn handle(&self, request: AdminRequest) -> BoxFuture<'static, Result<String, String>> {
        let admin = self.clone();
        async move { admin.run(request).await }.boxed()
    }
}

fn status_of(m: &RaftMetrics, transport: &Transport) -> ClusterStatus {
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let last = m.last_log_index.unwrap_or(0);
    let now = Instant::now();
    let replication = m.replication.as_ref();
    let members = membership
        .nodes()
        .map(|(id, info)| {
            let is_self = *id == m.id;
            let matched = if is_self {
                m.last_log_index
            } else {
                replication.and_then(|r| r.get(id).cloned().flatten().map(|l| l.index))
            };
            MemberStatus {
                id: *id,
                raft_addr: info.raft_addr.clone(),
                amqp_addr: info.amqp_addr.clone(),
                zone: info.zone.clone(),
                kind: if voters.contains(id) {
                    "voter"
                } else {
                    "learner"
                }
                .into(),
                is_leader: m.current_leader == Some(*id),
                matched_index: matched,
                lag: if is_self || replication.is_some() {
                    Some(last.saturating_sub(matched.unwrap_or(0)))
                } else {
                    None
                },
                last_contact_ms: if is_self {
                    None
                } else {
                    transport
                        .last_contact(*id)
                        .map(|t| now.duration_since(t).as_millis() as u64)
                },
            }
        })
        .collect();
    let zones = membership
        .nodes()
        .filter(|(id, _)| voters.contains(id))
        .map(|(id, info)| (*id, info.zone.as_str()));
    ClusterStatus {
        reported_by: m.id,
        leader: m.current_leader,
        term: m.current_term,
        last_log_index: m.last_log_index,
        last_applied: m.last_applied.map(|l| l.index),
        members,
        zone_warning: zone_warning(zones),
    }
}

/// How long a leader waits for a node loss it proposed to show in the state before it
/// proposes it again.
const REDECLARE_AFTER: Duration = Duration::from_secs(2);

/// The node lives (node, epoch) a leader proposed as lost, and when. The replicated state is
/// what counts: a proposal can fail (leadership moved on before it was committed), so a life
/// the state still holds is proposed again after [`REDECLARE_AFTER`], and a node that stops
/// leading forgets them all. Remembering them for good let a life whose loss was never
/// committed keep its connections, and their unacknowledged deliveries, for as long as the
/// cluster ran. Applying the same loss twice changes nothing.
#[derive(Default)]
struct LossProposals {
    at: HashMap<(NodeId, u64), Instant>,
}

impl LossProposals {
    /// Whether the life may be proposed lost now (never proposed, or long enough ago).
    fn due(&self, life: (NodeId, u64), now: Instant) -> bool {
        self.at
            .get(&life)
            .is_none_or(|at| now.duration_since(*at) >= REDECLARE_AFTER)
    }

    fn proposed(&mut self, life: (NodeId, u64), now: Instant) {
        self.at.insert(life, now);
    }

    fn forget_all(&mut self) {
        self.at.clear();
    }
}

/// On the leader: declares lost every node that has a live life in the broker state but has
/// not answered for `down_after`, whose process was found gone (`peer_gone`), or that is no
/// longer a member. Its connections are closed in the state, so its consumers' unacknowledged
/// messages go to other consumers; if it was only cut off, it finds out when it catches up and
/// starts a new life.
pub(crate) async fn watch_members(
    node_id: NodeId,
    raft: Raft,
    status: LogStatus,
    transport: Arc<Transport>,
    down_after: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut leading_since: Option<Instant> = None;
    let mut declared = LossProposals::default();
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = ticker.tick() => {}
        }
        let m = status.metrics();
        // A leader a majority acknowledged lately (a silent member cannot be told from a
        // partitioned leader otherwise).
        if Role::of(&m) != Role::Leader {
            leading_since = None;
            declared.forget_all();
            continue;
        }
        let since = *leading_since.get_or_insert_with(Instant::now);
        let members: BTreeSet<NodeId> = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect();
        let lives: Vec<(NodeId, u64)> = status.read_state(|s| {
            s.nodes
                .iter()
                .filter(|(_, life)| !life.lost)
                .map(|(id, life)| (*id, life.epoch))
                .collect()
        });
        let now = Instant::now();
        for (node, epoch) in lives {
            if node == node_id || !declared.due((node, epoch), now) {
                continue;
            }
            let heard = transport.last_contact(node).map_or(since, |t| t.max(since));
            let silent = now.duration_since(heard);
            let member = members.contains(&node);
            let gone = transport.is_gone(node);
            if member && silent < down_after && !gone {
                continue;
            }
            tracing::warn!(
                node,
                epoch,
                silent_ms = silent.as_millis() as u64,
                member,
                process_gone = gone,
                "declaring node lost: its connections end and their deliveries are requeued"
            );
            declared.proposed((node, epoch), now);
            let entry = Entry {
                now_ms: crate::proposer::now_ms(),
                commands: vec![Command::NodeLost { node, epoch }],
                origin: None,
            };
            let raft = raft.clone();
            tokio::spawn(async move {
                if let Err(e) = raft.client_write(Arc::new(entry)).await {
                    tracing::warn!(node, error = %e, "proposing the node loss failed");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loss proposed and not yet in the state is proposed again after a while (its
    /// proposal may have failed), and a leader that stepped down starts afresh; another
    /// life of the same node is its own.
    #[test]
    fn a_proposed_node_loss_is_proposed_again_until_the_state_shows_it() {
        let t0 = Instant::now();
        let mut proposals = LossProposals::default();
        assert!(proposals.due((3, 7), t0));
        proposals.proposed((3, 7), t0);
        assert!(!proposals.due((3, 7), t0 + Duration::from_millis(200)));
        assert!(proposals.due((3, 8), t0), "a later life of the node");
        assert!(proposals.due((3, 7), t0 + REDECLARE_AFTER));
        proposals.forget_all();
        assert!(proposals.due((3, 7), t0 + Duration::from_millis(200)));
    }

    #[test]
    fn peers_parse_with_and_without_zone() {
        assert_eq!(
            parse_peer("1=127.0.0.1:7001@az-a").unwrap(),
            (1, "127.0.0.1:7001".into(), "az-a".into())
        );
        assert_eq!(
            parse_peer("2=node2:7002").unwrap(),
            (2, "node2:7002".into(), "".into())
        );
        assert!(matches!(
            parse_peer("x=1.2.3.4:1"),
            Err(PeerSpecError::Id(_))
        ));
        assert!(matches!(
            parse_peer("0=1.2.3.4:1"),
            Err(PeerSpecError::Id(_))
        ));
        assert!(matches!(
            parse_peer("1.2.3.4:1"),
            Err(PeerSpecError::Form(_))
        ));
        assert!(matches!(
            parse_peer("1=nohostport"),
            Err(PeerSpecError::Form(_))
        ));
        let twice = vec!["1=a:1".to_string(), "1=b:2".to_string()];
        assert_eq!(
            parse_peers(&twice).unwrap_err(),
            PeerSpecError::Duplicate(1)
        );
    }

    #[test]
    fn a_zone_holding_half_the_voters_is_warned_about() {
        assert!(zone_warning([(1, "a"), (2, "b"), (3, "c")]).is_none());
        assert!(zone_warning([(1, "a"), (2, "a"), (3, "b")])
            .unwrap()
            .contains("zone a"));
        assert!(zone_warning([(1, "a"), (2, "b"), (3, "c"), (4, "c")])
            .unwrap()
            .contains("zone c"));
        assert!(zone_warning([(1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "c")]).is_none());
        assert!(zone_warning([(1, "a")]).is_none());
    }
}
