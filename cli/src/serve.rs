//! `raftmq serve`: take the data directory, open the log, announce this node's new life,
//! then serve AMQP and HTTP until SIGTERM/SIGINT; then close client connections with 320
//! CONNECTION_FORCED, let the log drain and flush, and exit 0.

use crate::args::LogFormat;
use crate::config::ServeConfig;
use crate::http::{self, Health, HealthSource};
use anyhow::{Context, Result};
use raftmq_broker::connection::auth::Users;
use raftmq_broker::dispatch::Dispatcher;
use raftmq_broker::log::proposal_channel;
use raftmq_broker::server::{serve, Broker, BrokerConfig};
use raftmq_raft::{LogConfig, LogNode, LogStatus, NodeInfo};
use std::sync::Arc;
use std::time::Duration;
use tracing::info;
use tracing_subscriber::EnvFilter;

/// Commands waiting to be ordered: enough for bursts from many connections, small enough
/// that a stalled log pushes back on clients quickly.
const PROPOSAL_QUEUE: usize = 16 * 1024;

fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
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
        Health {
            node_id: self.node_id,
            role: self.log.role().to_string(),
            status: "ok",
            connections: self.dispatcher.connection_count(),
            last_applied: self.log.metrics().last_applied.map(|id| id.index),
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
    // standalone, drops transient queues and messages as a RabbitMQ node restart does.
    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    log.start_node(epoch, true)
        .await
        .context("cannot record the node start in the log")?;
    let (proposer, proposals) = proposal_channel(PROPOSAL_QUEUE);
    let proposer_task = log.spawn_proposer(proposals);

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
    let (http_stop_tx, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let http_task = tokio::spawn(async move {
        let _ = axum::serve(http_listener, http::router(health))
            .with_graceful_shutdown(async move {
                let _ = http_stop_rx.await;
            })
            .await;
    });

    info!(amqp = %config.amqp_listen, http = %config.http_listen, data_dir = %config.data_dir.display(), "raftmq serving");
    serve(amqp, broker.clone(), shutdown_signal()).await;

    info!("draining the log");
    drop(broker);
    let _ = tokio::time::timeout(Duration::from_secs(10), proposer_task).await;
    let _ = http_stop_tx.send(());
    let _ = http_task.await;
    log.shutdown().await;
    info!("stopped");
    Ok(())
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
