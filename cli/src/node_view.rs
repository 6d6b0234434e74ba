//! What the HTTP endpoints see of this process, which changes over its life: a standby with no
//! log, then an active node with a log, its connections and its cluster admin, and back.

use crate::http::{Health, NodeSource, STATUS_OK};
use raftmq_broker::dispatch::Dispatcher;
use raftmq_raft::{ClusterAdmin, LogStatus, Role};
use std::sync::{Arc, RwLock};

/// `status` of a node whose shared storage failed.
pub const STATUS_STORAGE_UNAVAILABLE: &str = "storage_unavailable";

enum Phase {
    /// No log open: waiting for the shared directory's lock. `problem`: why the last attempt
    /// to take over failed, if it did.
    Standby {
        problem: Option<String>,
        holder: Option<String>,
    },
    Serving {
        log: LogStatus,
        dispatcher: Arc<Dispatcher>,
        admin: Arc<ClusterAdmin>,
        fence_epoch: Option<u64>,
        problem: Option<String>,
    },
}

/// The deployment, which decides how a serving node names its role and whether the cluster
/// endpoints (status, membership, faults) are offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deployment {
    Standalone,
    Cluster,
    /// Active/standby: a serving node calls itself "active".
    Shared,
}

pub struct NodeView {
    node_id: u64,
    deployment: Deployment,
    phase: RwLock<Phase>,
}

impl NodeView {
    pub fn new(node_id: u64, deployment: Deployment) -> Arc<NodeView> {
        Arc::new(NodeView {
            node_id,
            deployment,
            phase: RwLock::new(Phase::Standby {
                problem: None,
                holder: None,
            }),
        })
    }

    fn set(&self, phase: Phase) {
        *self.phase.write().unwrap_or_else(|p| p.into_inner()) = phase;
    }

    pub fn set_standby(&self, problem: Option<String>, holder: Option<String>) {
        self.set(Phase::Standby { problem, holder });
    }

    pub fn set_serving(
        &self,
        log: LogStatus,
        dispatcher: Arc<Dispatcher>,
        admin: Arc<ClusterAdmin>,
        fence_epoch: Option<u64>,
    ) {
        self.set(Phase::Serving {
            log,
            dispatcher,
            admin,
            fence_epoch,
            problem: None,
        });
    }

    /// The serving node's storage failed: it stops confirming and says why until it is a
    /// standby again.
    pub fn set_problem(&self, text: String) {
        let mut phase = self.phase.write().unwrap_or_else(|p| p.into_inner());
        match &mut *phase {
            Phase::Serving { problem, .. } | Phase::Standby { problem, .. } => {
                *problem = Some(text)
            }
        }
    }
}

impl NodeSource for NodeView {
    fn health(&self) -> Health {
        let phase = self.phase.read().unwrap_or_else(|p| p.into_inner());
        match &*phase {
            Phase::Standby { problem, holder } => Health {
                node_id: self.node_id,
                role: "standby".to_string(),
                status: if problem.is_some() {
                    STATUS_STORAGE_UNAVAILABLE
                } else {
                    STATUS_OK
                },
                detail: problem
                    .clone()
                    .or_else(|| holder.as_ref().map(|h| format!("active: {h}"))),
                fence_epoch: None,
                connections: 0,
                last_applied: None,
                leader: None,
                term: 0,
            },
            Phase::Serving {
                log,
                dispatcher,
                fence_epoch,
                problem,
                ..
            } => {
                let metrics = log.metrics();
                let role = log.role();
                let role_name = if self.deployment == Deployment::Shared && role == Role::Standalone
                {
                    "active".to_string()
                } else {
                    role.to_string()
                };
                Health {
                    node_id: self.node_id,
                    role: role_name,
                    status: if problem.is_some() {
                        STATUS_STORAGE_UNAVAILABLE
                    } else {
                        STATUS_OK
                    },
                    detail: problem.clone(),
                    fence_epoch: *fence_epoch,
                    connections: dispatcher.connection_count(),
                    last_applied: metrics.last_applied.map(|id| id.index),
                    // An active/standby pair has no leader to name; a follower that thinks it
                    // leads names none either.
                    leader: if self.deployment == Deployment::Shared
                        || (role == Role::Follower && metrics.current_leader == Some(metrics.id))
                    {
                        None
                    } else {
                        metrics.current_leader
                    },
                    term: metrics.current_term,
                }
            }
        }
    }

    fn cluster(&self) -> Option<Arc<ClusterAdmin>> {
        if self.deployment != Deployment::Cluster {
            return None;
        }
        match &*self.phase.read().unwrap_or_else(|p| p.into_inner()) {
            Phase::Serving { admin, .. } => Some(admin.clone()),
            Phase::Standby { .. } => None,
        }
    }
}
