//! Accepting AMQP sockets: `serve(listener, broker, shutdown)` runs one connection task per
//! socket until `shutdown` fires, then asks every connection to close with 320
//! CONNECTION_FORCED and waits (bounded) for them to finish. The listener is bound by the
//! caller, so tests can use port 0.

use crate::connection::{self, auth::Users};
use crate::dispatch::Dispatcher;
use crate::ids::{ConnId, NodeId};
use crate::log::Proposer;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn, Instrument};

/// Limits and settings of the AMQP side.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub users: Users,
    /// frame_max offered in Connection.Tune (bytes, including frame overhead).
    pub frame_max: u32,
    /// channel_max offered in Connection.Tune.
    pub channel_max: u16,
    /// Heartbeat interval offered in Connection.Tune (seconds, 0 = off).
    pub heartbeat_s: u16,
    /// Largest message body accepted (RabbitMQ's default: 128 MiB).
    pub max_message_size: u64,
    /// A client must finish the handshake within this time.
    pub handshake_timeout: Duration,
    /// How long to wait for connections to close at shutdown.
    pub shutdown_grace: Duration,
    pub cluster_name: String,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            users: Users::new(None),
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat_s: 60,
            max_message_size: 128 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            cluster_name: "raftmq".into(),
        }
    }
}

/// What every connection task shares.
pub struct Broker {
    pub node: NodeId,
    /// This node life's epoch (see `Command::NodeStarted`); a node that was cut off from its
    /// cluster and declared lost starts a new life with a new epoch.
    epoch: AtomicU64,
    pub proposer: Proposer,
    pub dispatcher: Arc<Dispatcher>,
    pub config: BrokerConfig,
    next_conn: AtomicU64,
}

impl Broker {
    pub fn new(
        node: NodeId,
        epoch: u64,
        proposer: Proposer,
        dispatcher: Arc<Dispatcher>,
        config: BrokerConfig,
    ) -> Broker {
        Broker {
            node,
            epoch: AtomicU64::new(epoch),
            proposer,
            dispatcher,
            config,
            next_conn: AtomicU64::new(1),
        }
    }

    /// The current life's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Begins a new life: every connection of the old one is told to close with `reply_code`
    /// (clients reconnect), and new connections get ids of the new epoch. The caller announces
    /// the new life to the log.
    pub fn new_life(&self, epoch: u64, reply_code: u16, reply_text: &str) {
        self.epoch.store(epoch, Ordering::SeqCst);
        self.dispatcher.close_all(reply_code, reply_text);
    }

    fn next_conn_id(&self) -> ConnId {
        ConnId {
            node: self.node,
            epoch: self.epoch(),
            seq: self.next_conn.fetch_add(1, Ordering::Relaxed),
        }
    }
}

/// Serves AMQP on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, broker: Arc<Broker>, shutdown: impl Future<Output = ()>) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let _ = socket.set_nodelay(true);
                    let id = broker.next_conn_id();
                    let span = tracing::info_span!("conn", node = broker.node, conn = %id, peer = %peer);
                    tasks.spawn(connection::run(socket, peer, id, broker.clone(), stop_rx.clone()).instrument(span));
                }
                Err(e) => {
                    // Running out of file descriptors and the like: back off, keep serving.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    info!(
        connections = tasks.len(),
        "shutting down: closing client connections"
    );
    let _ = stop_tx.send(true);
    let grace = broker.config.shutdown_grace;
    if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        warn!("connections did not close in time; aborting them");
        tasks.abort_all();
    }
}
