//! One node's connection to one peer. Connects lazily, authenticates, then multiplexes
//! requests: `start` queues a request in call order and returns a receiver for its response, so
//! batches forwarded to the leader stay in order while many are outstanding. A broken
//! connection fails every outstanding request and is re-made on the next call.

use super::auth;
use super::wire::{self, Challenge, Hello, Proof, Request, Response, Tagged, Verdict, MAGIC};
use super::Transport;
use crate::types::NodeInfo;
use raftmq_broker::ids::NodeId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

#[derive(Debug, Error)]
pub enum CallError {
    #[error("node {0} is cut off from this node (fault injection)")]
    Blocked(NodeId),
    #[error("cannot connect to node {node} at {addr}: {detail}")]
    Connect {
        node: NodeId,
        addr: String,
        detail: String,
    },
    #[error("node {node} refused this node: {reason}")]
    Refused { node: NodeId, reason: String },
    #[error("the connection to node {0} broke")]
    Closed(NodeId),
    #[error("node {0} did not answer in time")]
    Timeout(NodeId),
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Response>>>>;

/// An established, authenticated connection.
struct Conn {
    /// Dropping it (with the connection) ends the writer.
    out: wire::Outbox,
    pending: Pending,
    next_id: AtomicU64,
    closed: Arc<AtomicBool>,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Conn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub struct PeerClient {
    transport: Arc<Transport>,
    target: NodeId,
    addr: String,
    zone: String,
    conn: Option<Conn>,
}

impl PeerClient {
    pub fn new(transport: Arc<Transport>, target: NodeId, node: &NodeInfo) -> PeerClient {
        PeerClient {
            transport,
            target,
            addr: node.raft_addr.clone(),
            zone: node.zone.clone(),
            conn: None,
        }
    }

    pub fn target(&self) -> NodeId {
        self.target
    }

    /// Queues `request` (in call order) and returns where its response will arrive.
    pub async fn start(
        &mut self,
        request: Request,
    ) -> Result<oneshot::Receiver<Response>, CallError> {
        if !self.transport.may_send(self.target) {
            self.conn = None;
            return Err(CallError::Blocked(self.target));
        }
        if self
            .conn
            .as_ref()
            .is_none_or(|c| c.closed.load(Ordering::Acquire))
        {
            self.conn = None;
            let timeout = self.transport.config().connect_timeout;
            let conn = tokio::time::timeout(timeout, self.connect())
                .await
                .map_err(|_| CallError::Connect {
                    node: self.target,
                    addr: self.addr.clone(),
                    detail: format!("no answer within {timeout:?}"),
                })??;
            self.conn = Some(conn);
        }
        let conn = self.conn.as_ref().expect("connected above");
        let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        conn.pending.lock().expect("pending lock").insert(id, tx);
        let send_at = Instant::now() + self.transport.delay_for(&self.zone);
        let frame = wire::encode(&Tagged { id, body: request });
        if conn.out.send((send_at, frame)).is_err() {
            self.conn = None;
            return Err(CallError::Closed(self.target));
        }
        Ok(rx)
    }

    /// Sends `request` and waits up to `timeout` for its response.
    pub async fn call(
        &mut self,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        let started = tokio::time::Instant::now();
        let rx = tokio::time::timeout(timeout, self.start(request))
            .await
            .map_err(|_| CallError::Timeout(self.target))??;
        let left = timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, rx).await {
            Ok(Ok(response)) => {
                self.transport.note_contact(self.target);
                Ok(response)
            }
            Ok(Err(_)) => {
                self.conn = None;
                Err(CallError::Closed(self.target))
            }
            Err(_) => Err(CallError::Timeout(self.target)),
        }
    }

    async fn connect(&self) -> Result<Conn, CallError> {
        let connect_err = |detail: String| CallError::Connect {
            node: self.target,
            addr: self.addr.clone(),
            detail,
        };
        let mut stream = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let hello = Hello {
            from: self.transport.config().node_id,
            to: self.target,
            zone: self.transport.config().zone.clone(),
        };
        let io_err = |e: std::io::Error| connect_err(format!("handshake: {e}"));
        stream.write_all(&MAGIC).await.map_err(io_err)?;
        wire::write_frame(&mut stream, &hello)
            .await
            .map_err(io_err)?;
        let challenge: Challenge = wire::read_frame(&mut stream).await.map_err(io_err)?;
        let proof = Proof {
            mac: auth::prove(&self.transport.config().secret, &hello, &challenge.nonce),
        };
        wire::write_frame(&mut stream, &proof)
            .await
            .map_err(io_err)?;
        match wire::read_frame(&mut stream).await.map_err(io_err)? {
            Verdict::Welcome => {}
            Verdict::Refused(reason) => {
                return Err(CallError::Refused {
                    node: self.target,
                    reason,
                })
            }
        }

        let (mut reader, writer) = stream.into_split();
        let pending: Pending = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let (out, frames) = wire::spawn_writer(writer);
        // When the writer ends, so does this connection: the next call makes a new one, and
        // requests that were waiting fail now instead of at their timeout.
        let writer_closed = closed.clone();
        let writer_pending = pending.clone();
        let write_task = tokio::spawn(async move {
            let _ = frames.await;
            writer_closed.store(true, Ordering::Release);
            writer_pending.lock().expect("pending lock").clear();
        });
        let reader_pending = pending.clone();
        let reader_closed = closed.clone();
        let target = self.target;
        let transport = self.transport.clone();
        let read_task = tokio::spawn(async move {
            loop {
                match wire::read_frame::<_, Tagged<Response>>(&mut reader).await {
                    Ok(Tagged { id, body }) => {
                        let waiter = reader_pending.lock().expect("pending lock").remove(&id);
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(body);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(peer = target, error = %e, "peer connection closed");
                        transport.note_disconnect(target);
                        break;
                    }
                }
            }
            reader_closed.store(true, Ordering::Release);
            // Dropping the senders fails every outstanding request.
            reader_pending.lock().expect("pending lock").clear();
        });
        Ok(Conn {
            out,
            pending,
            next_id: AtomicU64::new(1),
            closed,
            tasks: [write_task, read_task],
        })
    }
}
