//! The node-to-node wire format: length-prefixed frames (4-byte big-endian length, then a
//! postcard body), the handshake messages, and the request/response enums that carry openraft's
//! RPCs, forwarded batches and admin calls. Requests carry an id so that one connection can have
//! many outstanding (forwarded batches are pipelined); responses name the id they answer.

use crate::types::{NodeInfo, TypeConfig};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use raftmq_broker::ids::NodeId;
use raftmq_broker::machine::command::Entry;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The first bytes on every connection, so that a stray client (an AMQP client on the wrong
/// port, say) is told apart at once.
pub const MAGIC: [u8; 8] = *b"RAFTMQ\x00\x01";

/// Largest frame accepted: a log entry holds at most one 128 MiB message beside small ones, and
/// an AppendEntries carries a bounded number of entries.
pub const MAX_FRAME: usize = 1 << 30;

/// Client → server, first message after the magic.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hello {
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's availability zone (for the inter-zone delay).
    pub zone: String,
}

/// Server → client: prove that you know the cluster secret.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Challenge {
    pub nonce: [u8; 32],
}

/// Client → server: HMAC-SHA256 over the handshake (see `auth`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Proof {
    pub mac: Vec<u8>,
}

/// Server → client: the end of the handshake.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Verdict {
    Welcome,
    Refused(String),
}

/// An admin call, answered by the leader (a follower passes it on).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AdminRequest {
    /// The leader's view of the cluster (replication progress of every member).
    Status,
    /// Add a node: as a learner first (it catches up), then as a voter.
    AddVoter { node_id: NodeId, node: NodeInfo },
    /// Remove a node from the voters and learners.
    Remove { node_id: NodeId },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    /// A batch proposed on a follower, for the leader to append.
    Forward(std::sync::Arc<Entry>),
    Admin(AdminRequest),
}

/// Why the leader did not take a forwarded batch.
#[derive(Clone, Debug, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    #[error("node {node} is not the leader (leader: {leader:?})")]
    NotLeader {
        node: NodeId,
        leader: Option<NodeId>,
    },
    #[error("the leader could not write the batch: {0}")]
    Failed(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// The log index at which the batch was committed.
    Forward(Result<u64, ForwardError>),
    /// JSON text of the answer, or an error message.
    Admin(Result<String, String>),
}

/// A request or response with the id that pairs them.
#[derive(Debug, Serialize, Deserialize)]
pub struct Tagged<T> {
    pub id: u64,
    pub body: T,
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let body = postcard::to_allocvec(value).expect("plain data serializes");
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    value: &T,
) -> io::Result<()> {
    w.write_all(&encode(value)).await?;
    w.flush().await
}

/// Where frames to send go, each with the instant it may leave (the simulated zone delay).
pub type Outbox = mpsc::UnboundedSender<(Instant, Vec<u8>)>;

/// Writes the frames queued on the returned [`Outbox`] to `writer`, each no earlier than its
/// instant, in order, flushing whenever the queue runs empty. Ends when the outbox is dropped
/// or a write fails.
pub fn spawn_writer<W: AsyncWrite + Unpin + Send + 'static>(writer: W) -> (Outbox, JoinHandle<()>) {
    let (out, mut frames) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let task = tokio::spawn(async move {
        let mut writer = BufWriter::new(writer);
        while let Some((send_at, frame)) = frames.recv().await {
            // Only a simulated zone delay waits: tokio's timer rounds a deadline up to its next
            // millisecond tick, so even a deadline already passed would cost up to 1 ms a frame.
            if send_at > Instant::now() {
                tokio::time::sleep_until(send_at).await;
            }
            if writer.write_all(&frame).await.is_err() {
                break;
            }
            if frames.is_empty() && writer.flush().await.is_err() {
                break;
            }
        }
    });
    (out, task)
}

pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(r: &mut R) -> io::Result<T> {
    let len = r.read_u32().await? as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is larger than the limit of {MAX_FRAME}"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    postcard::from_bytes(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LogId, Vote};

    #[tokio::test]
    async fn requests_round_trip_through_frames() {
        let vote = VoteRequest::new(
            Vote::new(3, 2),
            Some(LogId::new(CommittedLeaderId::new(2, 1), 7)),
        );
        let req = Tagged {
            id: 9,
            body: Request::Vote(vote.clone()),
        };
        let bytes = encode(&req);
        let mut cursor = std::io::Cursor::new(bytes);
        let back: Tagged<Request> = read_frame(&mut cursor).await.unwrap();
        assert_eq!(back.id, 9);
        match back.body {
            Request::Vote(v) => assert_eq!(v, vote),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn an_oversized_length_is_refused_before_allocating() {
        let mut cursor = std::io::Cursor::new(u32::MAX.to_be_bytes().to_vec());
        let err = read_frame::<_, Tagged<Request>>(&mut cursor)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
