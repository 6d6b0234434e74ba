//! How this node reaches the other members of its Raft group. For now a stub: a one-member
//! group never sends an RPC, and any client this factory makes answers `Unreachable`, which
//! openraft treats as a peer that is down (it backs off and retries). A TCP transport replaces
//! [`NoNetwork`] when clusters arrive; nothing else in the crate depends on which one is used.

use crate::types::{NodeInfo, TypeConfig};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::AnyError;
use raftmq_broker::ids::NodeId;

/// A network factory for a group with no reachable peers.
#[derive(Clone, Debug, Default)]
pub struct NoNetwork;

/// A client for one peer that is never reachable.
#[derive(Clone, Debug)]
pub struct UnreachablePeer {
    target: NodeId,
    node: NodeInfo,
}

impl UnreachablePeer {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<NodeId, NodeInfo, E> {
        let why = AnyError::error(format!(
            "node {} ({}) is unreachable: this build has no Raft transport between nodes",
            self.target, self.node
        ));
        RPCError::Unreachable(Unreachable::new(&why))
    }
}

impl RaftNetworkFactory<TypeConfig> for NoNetwork {
    type Network = UnreachablePeer;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Self::Network {
        UnreachablePeer {
            target,
            node: node.clone(),
        }
    }
}

impl RaftNetwork<TypeConfig> for UnreachablePeer {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        Err(self.unreachable())
    }
}
