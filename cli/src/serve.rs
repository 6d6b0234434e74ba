//! `raftmq serve`: take the data directory, open the log (in a cluster: start the raft
//! transport and wait for a leader), announce this node's new life, then serve AMQP and HTTP
//! until SIGTERM/SIGINT; then close client connections with 320 CONNECTION_FORCED, let the log
//! drain and flush, and exit 0. When the cluster ends this node's life (it was cut off and
//! declared lost), its clients are disconnected and a new life begins. Active/standby mode
//! (`--shared-dir`) wraps the same serving in a standby loop: see `standby.rs`.

use crate::args::LogFormat;
use crate::config::ServeConfig;
use crate::http;
use crate::node_view::{Deployment, NodeView};
use anyhow::{Context, Result};
use raftmq_broker::connection::auth::Users;
use raftmq_broker::dispatch::Dispatcher;
use raftmq_broker::log::proposal_channel;
use raftmq_broker::reply_code::{self, CONNECTION_FORCED};
use raftmq_broker::server::{serve, Broker, BrokerConfig};
use raftmq_raft::{LogConfig, LogNode, NodeInfo};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// Commands waiting to be ordered (per lane): enough for a full entry's worth of commands from
/// many connections while the previous entry is written, small enough that a log that cannot
/// keep up pushes back on publishers at once instead of holding their messages here. Measured
/// (benchmarks.md): 16 Ki queued made publish-to-consume p99 seconds long under a flood; 1 Ki
/// kept it near 100 ms with the same throughput.
const PROPOSAL_QUEUE: usize = 1024;

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

pub fn run(config: ServeConfig) -> Result<()> {
    init_logging(config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads)
        .enable_all()
        .thread_name("raftmq")
        .build()?;
    runtime.block_on(run_async(config))
}

async fn run_async(config: ServeConfig) -> Result<()> {
    let span = tracing::info_span!("node", node = config.node_id);
    let _enter = span.enter();
    let stop = Stop::on_signals();
    if let Some(dir) = config.shared_dir.clone() {
        return crate::standby::run(config, dir, stop).await;
    }
    let dispatcher = Arc::new(Dispatcher::new());
    let log_config = log_config(&config, config.node_id);
    // The data directory lock comes first: a second `serve` on the same directory must fail
    // at once, before it binds any port.
    let log = LogNode::open(log_config, dispatcher.clone())
        .await
        .context("cannot open the log")?;
    let amqp = match bind_amqp(&config).await {
        Ok(amqp) => amqp,
        Err(e) => {
            // Closed, not just dropped: its threads must let go of the database before exit.
            close_log(log).await;
            return Err(e);
        }
    };
    let view = NodeView::new(
        config.node_id,
        if config.cluster.is_some() {
            Deployment::Cluster
        } else {
            Deployment::Standalone
        },
    );
    view.set_serving(log.status(), dispatcher.clone(), log.admin(), None);
    let http = match HttpServer::start(&config, view.clone()).await {
        Ok(http) => http,
        Err(e) => {
            close_log(log).await;
            return Err(e);
        }
    };
    let result = serve_log(&config, log, dispatcher, amqp, &view, None, stop.wait()).await;
    http.stop().await;
    info!("stopped");
    result
}

/// The log's settings from the serve settings; `member_id` is this node's id in the group.
pub(crate) fn log_config(config: &ServeConfig, member_id: u64) -> LogConfig {
    let mut log_config = LogConfig::new(
        member_id,
        config.data_dir.clone(),
        NodeInfo {
            raft_addr: String::new(),
            amqp_addr: config.amqp_listen.to_string(),
            zone: String::new(),
        },
    );
    log_config.tick_interval = Duration::from_millis(config.tick_ms);
    log_config.snapshot_every_entries = config.snapshot_every;
    log_config.wal_prewrite_mib = config.wal_prewrite_mib;
    // A lone node (standalone, or the active one of a pair) has no follower to catch up from
    // its log, so a snapshot purges every entry it covers: its purges then delete most entries
    // before their memtable is flushed (`log_reclaim`). With 200 entries kept, b's entries of
    // about 240 KB kept 48 MB of log unpurged and nearly every memtable was flushed whole
    // (docs/benchmarks.md, session 19). A member added later catches up from the snapshot.
    log_config.logs_kept_after_snapshot = if config.cluster.is_some() {
        config
            .snapshot_every
            .min(raftmq_raft::node::LOGS_KEPT_AFTER_SNAPSHOT)
    } else {
        0
    };
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
        log_config.max_entries_in_flight = raftmq_raft::node::CLUSTER_ENTRIES_IN_FLIGHT;
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
    log_config
}

pub(crate) async fn bind_amqp(config: &ServeConfig) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(config.amqp_listen)
        .await
        .with_context(|| format!("cannot listen for AMQP on {}", config.amqp_listen))
}

/// The HTTP endpoints, up for the whole life of the process.
pub(crate) struct HttpServer {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    pub(crate) async fn start(config: &ServeConfig, view: Arc<NodeView>) -> Result<HttpServer> {
        let listener = tokio::net::TcpListener::bind(config.http_listen)
            .await
            .with_context(|| format!("cannot listen for HTTP on {}", config.http_listen))?;
        let secret = config.cluster.as_ref().and_then(|c| c.secret.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, http::router(view, secret))
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(HttpServer { stop, task })
    }

    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Serves AMQP clients from an open log until `stop` resolves: announces this process's life,
/// starts the proposer and the broker, then closes the clients, drains the log and closes it
/// (which releases the data directory). `fence_epoch`: active/standby's takeover epoch.
pub(crate) async fn serve_log(
    config: &ServeConfig,
    log: LogNode,
    dispatcher: Arc<Dispatcher>,
    amqp: tokio::net::TcpListener,
    view: &NodeView,
    fence_epoch: Option<u64>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<()> {
    // A new life for this node: the machine forgets the connections of the previous one and,
    // standalone, drops transient queues and messages as a RabbitMQ node restart does (in a
    // cluster they live on the other members).
    view.set_serving(log.status(), dispatcher.clone(), log.admin(), fence_epoch);
    let standalone = config.cluster.is_none();
    let epoch = new_epoch()?;
    let (proposer, proposals) = proposal_channel(PROPOSAL_QUEUE);
    let proposer_task = log.spawn_proposer(proposals);
    if let Err(e) = log.start_life(epoch, standalone).await {
        close_log(log).await;
        return Err(e).context("cannot record the node start in the log");
    }

    let broker_config = BrokerConfig {
        users: Users::new(config.default_user.clone()),
        frame_max: config.frame_max,
        channel_max: config.channel_max,
        heartbeat_s: config.heartbeat,
        max_message_size: config.max_message_size,
        ..BrokerConfig::default()
    };
    let broker = Arc::new(Broker::new(
        log.node_id(),
        epoch,
        proposer,
        dispatcher.clone(),
        broker_config,
    ));
    let log = Arc::new(log);
    let lives = tokio::spawn(renew_lives(log.clone(), broker.clone()));

    info!(amqp = %config.amqp_listen, http = %config.http_listen, data_dir = %config.data_dir.display(), "raftmq serving");
    serve(amqp, broker.clone(), stop).await;

    info!("draining the log");
    lives.abort();
    let _ = lives.await;
    drop(broker);
    let _ = tokio::time::timeout(Duration::from_secs(10), proposer_task).await;
    match Arc::try_unwrap(log) {
        Ok(log) => close_log(log).await,
        Err(_) => {
            // Its lock must not outlive this phase (a standby would never get it): exit.
            tracing::error!("the log is still in use at shutdown; exiting");
            std::process::exit(1);
        }
    }
    Ok(())
}

/// How long closing the log may take before the process gives up on it (hung storage) and
/// exits, which releases its locks.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Closes the log. If that hangs, or leaves the data directory locked (the database was still
/// in use), the process exits: only the exit releases the lock, and an active/standby pair
/// must not be left with a lock that nobody will ever let go of.
async fn close_log(log: LogNode) {
    match tokio::time::timeout(CLOSE_TIMEOUT, log.shutdown()).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::error!("the log closed but kept the data directory locked; exiting");
            std::process::exit(1);
        }
        Err(_) => {
            tracing::error!(timeout = ?CLOSE_TIMEOUT, "the log did not close (hung storage?); exiting");
            std::process::exit(1);
        }
    }
}

/// SIGTERM/SIGINT, seen by every phase of the process.
#[derive(Clone)]
pub(crate) struct Stop(watch::Receiver<bool>);

impl Stop {
    fn on_signals() -> Stop {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = tx.send(true);
        });
        Stop(rx)
    }

    pub(crate) fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once a stop signal arrived.
    pub(crate) async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

pub(crate) fn new_epoch() -> Result<u64> {
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
