//! `raftmq serve`: take the data directory, open the log (in a cluster: start the raft
//! transport and wait for a leader), announce this node's new life, then serve AMQP and HTTP
//! until SIGTERM/SIGINT; then close client connections with 320 CONNECTION_FORCED, let the log
//! drain and flush, and exit 0. When the cluster ends this node's life (it was cut off and
//! declared lost), its clients are disconnected and a new life begins.

use crate::args::LogFormat;
use crate::config::ServeConfig;
use crate::http::{self, Health, HealthSource};
use anyhow::{Context, Result};
use raftmq_broker::connection::auth::Users;
use raftmq_broker::dispatch::Dispatcher;
use raftmq_broker::log::proposal_channel;
use raftmq_broker::reply_code::{self, CONNECTION_FORCED};
use raftmq_broker::server::{serve, Broker, BrokerConfig};
use raftmq_raft::{LogConfig, LogNode, LogStatus, NodeInfo};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// Commands waiting to be ordered: enough for bursts from many connections, small enough
/// that a stalled log pushes back on clients quickly.
const PROPOSAL_QUEUE: usize = 16 * 1024;

fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

struct NodeHealth {
    node_id: u64,
    log: LogStatus,
    dispatcher: Arc<Dispatcher>,
}

impl HealthSource for NodeHealth {
    fn health(&self) -> Health {
        let metrics = self.log.metrics();
        let role = self.log.role();
        Health {
            node_id: self.node_id,
            role: role.to_string(),
            status: "ok",
            connections: self.dispatcher.connection_count(),
            last_applied: metrics.last_applied.map(|id| id.index),
            leader: if role == raftmq_raft::Role::Follower
                && metrics.current_leader == Some(self.node_id)
            {
                None
            } else {
                metrics.current_leader
            },
            term: metrics.current_term,
        }
    }
}

pub fn run(config: ServeConfig) -> Result<()> {
    init_logging(config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("raftmq")
        .build()?;
    runtime.block_on(run_async(config))
}

async fn run_async(config: ServeConfig) -> Result<()> {
    let span = tracing::info_span!("node", node = config.node_id);
    let _enter = span.enter();
    let dispatcher = Arc::new(Dispatcher::new());
    let mut log_config = LogConfig::new(
        config.node_id,
        config.data_dir.clone(),
        NodeInfo {
            raft_addr: String::new(),
            amqp_addr: config.amqp_listen.to_string(),
            zone: String::new(),
        },
    );
    log_config.tick_interval = Duration::from_millis(config.tick_ms);
    log_config.snapshot_every_entries = config.snapshot_every;
    log_config.logs_kept_after_snapshot = config.snapshot_every.min(1000);
    if let Some(cluster) = &config.cluster {
        log_config.node.raft_addr = match cluster.peers.get(&config.node_id) {
            Some(peer) => peer.raft_addr.clone(),
            None => cluster.raft_listen.to_string(),
        };
        log_config.node.zone = cluster.zone.clone();
        log_config.raft_listen = Some(cluster.raft_listen);
        log_config.join = cluster.join;
        log_config.cluster_secret = cluster.secret.clone().unwrap_or_default().into_bytes();
        log_config.inter_az_delay = Duration::from_millis(cluster.inter_az_delay_ms);
        // openraft gives an AppendEntries (which includes the follower's fsync) one heartbeat
        // interval to answer, and a vote request the minimum election timeout: both must
        // outlast a round trip between zones with room to spare.
        let round_trip = 2 * cluster.inter_az_delay_ms;
        log_config.heartbeat_interval = Duration::from_millis(100 + 2 * round_trip);
        log_config.election_timeout_min = log_config
            .election_timeout_min
            .max(3 * log_config.heartbeat_interval);
        log_config.election_timeout_max = 2 * log_config.election_timeout_min;
        log_config.node_down_after = Duration::from_millis(cluster.node_down_after_ms);
        log_config.peers = cluster
            .peers
            .iter()
            .map(|(id, peer)| {
                let amqp_addr = if *id == config.node_id {
                    config.amqp_listen.to_string()
                } else {
                    String::new()
                };
                let info = NodeInfo {
                    raft_addr: peer.raft_addr.clone(),
                    amqp_addr,
                    zone: peer.zone.clone(),
                };
                (*id, info)
            })
            .collect::<BTreeMap<_, _>>();
        if cluster.secret.is_none() {
            warn!("no --cluster-secret: any process that reaches {} can join this cluster or write to its log", cluster.raft_listen);
        }
        let zones = cluster.peers.iter().map(|(id, p)| (*id, p.zone.as_str()));
        if let Some(warning) = raftmq_raft::cluster::zone_warning(zones) {
            warn!("{warning}");
        }
        info!(zone = %cluster.zone, raft = %cluster.raft_listen, peers = cluster.peers.len(), join = cluster.join, "cluster mode");
    }
    // The data directory lock comes first: a second `serve` on the same directory must fail
    // at once, before it binds any port.
    let log = LogNode::open(log_config, dispatcher.clone())
        .await
        .context("cannot open the log")?;

    let amqp = tokio::net::TcpListener::bind(config.amqp_listen)
        .await
        .with_context(|| format!("cannot listen for AMQP on {}", config.amqp_listen))?;
    let http_listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.http_listen))?;

    // A new life for this node: the machine forgets the connections of the previous one and,
    // standalone, drops transient queues and messages as a RabbitMQ node restart does (in a
    // cluster they live on the other members).
    let standalone = config.cluster.is_none();
    let epoch = new_epoch()?;
    let (proposer, proposals) = proposal_channel(PROPOSAL_QUEUE);
    let proposer_task = log.spawn_proposer(proposals);
    log.start_life(epoch, standalone)
        .await
        .context("cannot record the node start in the log")?;

    let broker_config = BrokerConfig {
        users: Users::new(config.default_user.clone()),
        frame_max: config.frame_max,
        channel_max: config.channel_max,
        heartbeat_s: config.heartbeat,
        max_message_size: config.max_message_size,
        ..BrokerConfig::default()
    };
    let broker = Arc::new(Broker::new(
        config.node_id,
        epoch,
        proposer,
        dispatcher.clone(),
        broker_config,
    ));

    let health: Arc<dyn HealthSource> = Arc::new(NodeHealth {
        node_id: config.node_id,
        log: log.status(),
        dispatcher: dispatcher.clone(),
    });
    let admin = http::Admin {
        cluster: log.admin(),
        secret: config.cluster.as_ref().and_then(|c| c.secret.clone()),
    };
    let log = Arc::new(log);
    let lives = tokio::spawn(renew_lives(log.clone(), broker.clone()));
    let (http_stop_tx, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let http_task = tokio::spawn(async move {
        let _ = axum::serve(http_listener, http::router(health, admin))
            .with_graceful_shutdown(async move {
                let _ = http_stop_rx.await;
            })
            .await;
    });

    info!(amqp = %config.amqp_listen, http = %config.http_listen, data_dir = %config.data_dir.display(), "raftmq serving");
    serve(amqp, broker.clone(), shutdown_signal()).await;

    info!("draining the log");
    lives.abort();
    let _ = lives.await;
    drop(broker);
    let _ = tokio::time::timeout(Duration::from_secs(10), proposer_task).await;
    let _ = http_stop_tx.send(());
    let _ = http_task.await;
    match Arc::try_unwrap(log) {
        Ok(log) => log.shutdown().await,
        Err(_) => warn!("the log is still in use at shutdown; leaving it to the process exit"),
    }
    info!("stopped");
    Ok(())
}

fn new_epoch() -> Result<u64> {
    Ok(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64)
}

/// When the cluster ends this node's life (it was cut off long enough to be declared lost),
/// its clients are disconnected (they reconnect, here or elsewhere) and a new life begins.
async fn renew_lives(log: Arc<LogNode>, broker: Arc<Broker>) {
    let mut lost = log.life_lost();
    while lost.changed().await.is_ok() {
        let Ok(epoch) = new_epoch() else { return };
        warn!(epoch, "this node was declared lost by the cluster: disconnecting its clients and starting a new life");
        broker.new_life(
            epoch,
            CONNECTION_FORCED,
            &reply_code::text(
                CONNECTION_FORCED,
                "this node lost contact with the cluster; reconnect",
            ),
        );
        if let Err(e) = log.start_life(epoch, false).await {
            warn!(error = %e, "starting a new life failed");
            return;
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
}
