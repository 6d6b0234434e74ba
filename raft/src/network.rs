//! openraft's view of the transport: a [`RaftNetworkFactory`] that makes one [`PeerClient`] per
//! target, and the mapping of transport failures to openraft's error kinds (a peer that cannot
//! be reached is `Unreachable`, so openraft backs off; a call that broke or timed out is a
//! `Network` error, retried at once).

use crate::transport::wire::{Request, Response};
use crate::transport::{CallError, PeerClient, Transport};
use crate::types::{NodeInfo, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use raftmq_broker::ids::NodeId;
use std::sync::Arc;
use std::time::Duration;

/// Makes clients for openraft's replication and election tasks.
#[derive(Clone)]
pub struct TcpNetwork {
    transport: Arc<Transport>,
}

impl TcpNetwork {
    pub fn new(transport: Arc<Transport>) -> TcpNetwork {
        TcpNetwork { transport }
    }
}

/// A connection to one peer, used by one openraft task.
pub struct TcpPeer {
    client: PeerClient,
}

impl RaftNetworkFactory<TypeConfig> for TcpNetwork {
    type Network = TcpPeer;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Self::Network {
        TcpPeer {
            client: PeerClient::new(self.transport.clone(), target, node),
        }
    }
}

fn transport_error<E: std::error::Error>(e: CallError) -> RPCError<NodeId, NodeInfo, E> {
    match e {
        CallError::Blocked(_) | CallError::Connect { .. } | CallError::Refused { .. } => {
            RPCError::Unreachable(Unreachable::new(&e))
        }
        CallError::Closed(_) | CallError::Timeout(_) => RPCError::Network(NetworkError::new(&e)),
    }
}

fn unexpected<E: std::error::Error>(
    target: NodeId,
    got: &Response,
) -> RPCError<NodeId, NodeInfo, E> {
    let e = std::io::Error::other(format!(
        "node {target} answered with the wrong kind of response: {}",
        match got {
            Response::AppendEntries(_) => "append-entries",
            Response::InstallSnapshot(_) => "install-snapshot",
            Response::Vote(_) => "vote",
            Response::Forward(_) => "forward",
            Response::Admin(_) => "admin",
        }
    ));
    RPCError::Network(NetworkError::new(&e))
}

impl TcpPeer {
    async fn call(&mut self, request: Request, ttl: Duration) -> Result<Response, CallError> {
        self.client.call(request, ttl).await
    }
}

impl RaftNetwork<TypeConfig> for TcpPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        let target = self.client.target();
        match self
            .call(Request::AppendEntries(rpc), option.hard_ttl())
            .await
            .map_err(transport_error)?
        {
            Response::AppendEntries(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(target, e)))
            }
            other => Err(unexpected(target, &other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let target = self.client.target();
        match self
            .call(Request::InstallSnapshot(rpc), option.hard_ttl())
            .await
            .map_err(transport_error)?
        {
            Response::InstallSnapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(target, e)))
            }
            other => Err(unexpected(target, &other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        let target = self.client.target();
        match self
            .call(Request::Vote(rpc), option.hard_ttl())
            .await
            .map_err(transport_error)?
        {
            Response::Vote(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(target, e))),
            other => Err(unexpected(target, &other)),
        }
    }

    /// A peer that is down is retried every 200 ms: quick enough that a restarted node is
    /// caught up soon after it listens again, slow enough not to spin.
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}
