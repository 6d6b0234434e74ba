//! Accepting peers: check the magic and the secret, then answer requests until the connection
//! ends. openraft's RPCs run concurrently; forwarded batches are appended in the order they
//! arrive on a connection (the follower's proposal order) and answered when committed.

use super::auth;
use super::wire::{
    self, AdminRequest, Challenge, ForwardError, Hello, Proof, Request, Response, Tagged, Verdict,
    MAGIC,
};
use super::Transport;
use crate::types::Raft;
use futures::future::BoxFuture;
use openraft::ServerState;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

/// Answers admin requests (implemented by the node, which knows membership rules).
pub trait AdminHandler: Send + Sync + 'static {
    fn handle(&self, request: AdminRequest) -> BoxFuture<'static, Result<String, String>>;
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts peers on `listener` until `stop` turns true.
pub async fn run(
    listener: TcpListener,
    transport: Arc<Transport>,
    raft: Raft,
    admin: Arc<dyn AdminHandler>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let span = tracing::debug_span!("peer_conn", remote = %peer);
                    let (t, r, a, s) = (transport.clone(), raft.clone(), admin.clone(), stop.clone());
                    tokio::spawn(serve_peer(stream, t, r, a, s).instrument(span));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "raft transport: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Authenticates a peer. `Ok(None)`: the connection closed before a byte was sent (another
/// node checking that this one is alive).
async fn handshake(stream: &mut TcpStream, transport: &Transport) -> Result<Option<Hello>, String> {
    let mut magic = [0u8; MAGIC.len()];
    let first = stream
        .read(&mut magic[..1])
        .await
        .map_err(|e| format!("reading the greeting: {e}"))?;
    if first == 0 {
        return Ok(None);
    }
    stream
        .read_exact(&mut magic[1..])
        .await
        .map_err(|e| format!("reading the greeting: {e}"))?;
    if magic != MAGIC {
        return Err("not a raftmq node (wrong greeting)".into());
    }
    let io = |e: std::io::Error| format!("handshake: {e}");
    let hello: Hello = wire::read_frame(stream).await.map_err(io)?;
    let nonce = auth::nonce();
    wire::write_frame(stream, &Challenge { nonce })
        .await
        .map_err(io)?;
    let proof: Proof = wire::read_frame(stream).await.map_err(io)?;
    let me = transport.config().node_id;
    let refusal = if !auth::verify(&transport.config().secret, &hello, &nonce, &proof.mac) {
        Some("the cluster secret does not match".to_string())
    } else if hello.to != me {
        Some(format!("this is node {me}, not node {}", hello.to))
    } else if !transport.may_receive(hello.from) {
        Some(format!(
            "node {me} is cut off from node {} (fault injection)",
            hello.from
        ))
    } else {
        None
    };
    match refusal {
        Some(reason) => {
            let _ = wire::write_frame(stream, &Verdict::Refused(reason.clone())).await;
            Err(reason)
        }
        None => {
            wire::write_frame(stream, &Verdict::Welcome)
                .await
                .map_err(io)?;
            Ok(Some(hello))
        }
    }
}

async fn serve_peer(
    mut stream: TcpStream,
    transport: Arc<Transport>,
    raft: Raft,
    admin: Arc<dyn AdminHandler>,
    mut stop: watch::Receiver<bool>,
) {
    let hello =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut stream, &transport)).await {
            Ok(Ok(Some(hello))) => hello,
            Ok(Ok(None)) => return,
            Ok(Err(reason)) => {
                tracing::warn!(%reason, "refused a raft transport connection");
                return;
            }
            Err(_) => {
                tracing::warn!("raft transport handshake timed out");
                return;
            }
        };
    let peer = hello.from;
    // A peer that connects is alive (it may have been found gone before a restart).
    transport.note_contact(peer);
    let delay = transport.delay_for(&hello.zone);
    let (mut reader, writer) = stream.into_split();
    let (out, writer_task) = wire::spawn_writer(writer);
    let respond = move |out: &wire::Outbox, id: u64, body: Response| {
        let _ = out.send((Instant::now() + delay, wire::encode(&Tagged { id, body })));
    };

    loop {
        let request = tokio::select! {
            _ = stop.changed() => break,
            r = wire::read_frame::<_, Tagged<Request>>(&mut reader) => r,
        };
        let Tagged { id, body } = match request {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(peer, error = %e, "peer connection ended");
                transport.note_disconnect(peer);
                break;
            }
        };
        if !transport.may_receive(peer) {
            tracing::debug!(peer, "dropping the connection of a cut-off peer");
            break;
        }
        let out = out.clone();
        match body {
            Request::AppendEntries(rpc) => {
                let raft = raft.clone();
                tokio::spawn(async move {
                    respond(
                        &out,
                        id,
                        Response::AppendEntries(raft.append_entries(rpc).await),
                    );
                });
            }
            Request::Vote(rpc) => {
                let raft = raft.clone();
                tokio::spawn(async move {
                    respond(&out, id, Response::Vote(raft.vote(rpc).await));
                });
            }
            Request::InstallSnapshot(rpc) => {
                let raft = raft.clone();
                tokio::spawn(async move {
                    respond(
                        &out,
                        id,
                        Response::InstallSnapshot(raft.install_snapshot(rpc).await),
                    );
                });
            }
            Request::Forward(entry) => {
                // Appended here, before the next request is read: batches keep their order.
                let (state, leader, me) = {
                    let m = raft.metrics();
                    let m = m.borrow();
                    (m.state, m.current_leader, m.id)
                };
                if state != ServerState::Leader {
                    respond(
                        &out,
                        id,
                        Response::Forward(Err(ForwardError::NotLeader { node: me, leader })),
                    );
                    continue;
                }
                match raft.client_write_ff(entry).await {
                    Ok(responder) => {
                        tokio::spawn(async move {
                            let result = match responder.await {
                                Ok(Ok(written)) => Ok(written.log_id.index),
                                Ok(Err(openraft::error::ClientWriteError::ForwardToLeader(f))) => {
                                    Err(ForwardError::NotLeader {
                                        node: me,
                                        leader: f.leader_id,
                                    })
                                }
                                Ok(Err(e)) => Err(ForwardError::Failed(e.to_string())),
                                Err(_) => {
                                    Err(ForwardError::Failed("the leader is shutting down".into()))
                                }
                            };
                            respond(&out, id, Response::Forward(result));
                        });
                    }
                    Err(fatal) => {
                        respond(
                            &out,
                            id,
                            Response::Forward(Err(ForwardError::Failed(fatal.to_string()))),
                        );
                    }
                }
            }
            Request::Admin(request) => {
                let admin = admin.clone();
                tokio::spawn(async move {
                    respond(&out, id, Response::Admin(admin.handle(request).await));
                });
            }
        }
    }
    drop(out);
    writer_task.abort();
}
