//! [`LogNode`]: one node's replicated log, as the broker uses it. `open` locks the data
//! directory, opens RocksDB, starts openraft and the node-to-node transport, forms the group on
//! a fresh directory (one member standalone, the `--peer` list in a cluster) and waits until a
//! leader is known and this node has applied its whole log; `spawn_proposer` turns the broker's
//! proposal channel into group-committed batches; `start_life` announces this process's life;
//! `shutdown` drains and closes everything in order. Membership changes, status and node-loss
//! detection are in `cluster.rs`.

use crate::cluster::{self, ClusterAdmin};
use crate::lock::{DataDirLock, LockError};
use crate::network::TcpNetwork;
use crate::proposer::{BatchLimits, Batcher, Control, Router};
use crate::snapshot_trigger::SnapshotBySize;
use crate::state_machine::{open_stores, Applied, ApplyStats};
use crate::store::{StoreError, SyncPolicy};
use crate::transport::{server, Transport, TransportConfig};
use crate::types::{NodeInfo, Raft, RaftMetrics};
use openraft::error::{ClientWriteError, Fatal, InitializeError, RaftError};
use openraft::{Config, ServerState, SnapshotPolicy};
use raftmq_broker::ids::NodeId;
use raftmq_broker::log::{EffectSink, ProposalReceiver};
use raftmq_broker::machine::State;
use rocksdb::DB;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

/// Everything [`LogNode::open`] needs. Build it with [`LogConfig::new`] and adjust fields.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// This node's id in the Raft group (`--node-id`); stable across restarts.
    pub node_id: NodeId,
    /// The data directory; the database lives in `<data_dir>/db`.
    pub data_dir: PathBuf,
    /// This node's addresses and zone, recorded in the membership.
    pub node: NodeInfo,
    /// The members a fresh cluster forms with (this node among them). Empty: standalone, a
    /// one-member group.
    pub peers: BTreeMap<NodeId, NodeInfo>,
    /// Do not form a group on a fresh directory: wait to be added to a running cluster.
    pub join: bool,
    /// Where the node-to-node transport listens (none: standalone, no peers).
    pub raft_listen: Option<SocketAddr>,
    /// The shared cluster secret (empty: none).
    pub cluster_secret: Vec<u8>,
    /// Simulated latency added to each message between nodes of different zones.
    pub inter_az_delay: Duration,
    /// The leader declares a member lost (ends its connections, requeues their deliveries)
    /// after hearing nothing from it for this long.
    pub node_down_after: Duration,
    /// At most this many commands go into one log entry.
    pub max_commands_per_entry: usize,
    /// At most about this many bytes (by `Command::approx_size`) go into one log entry; a
    /// single larger command still gets an entry of its own.
    pub max_bytes_per_entry: usize,
    /// At most this many entries are proposed and not yet applied at a time. One is the
    /// default: while a batch is written, replicated and applied, the next one fills, so the
    /// batch size follows the load (group commit clocked by the log itself). Measured on two
    /// cores (docs/benchmarks.md): one in flight gave 1.8x the confirmed throughput of sixteen
    /// standalone and 2x in a three-node cluster, with fewer, larger entries and fsyncs. A
    /// cluster member runs with [`CLUSTER_ENTRIES_IN_FLIGHT`].
    pub max_entries_in_flight: usize,
    /// With no command for this long, an empty entry is proposed so the machine's clock moves.
    pub tick_interval: Duration,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_every_entries: u64,
    /// Also build one when the log since the last one is large (`snapshot_trigger`).
    pub snapshot_by_size: SnapshotBySize,
    /// Log entries kept after a snapshot (so a slightly lagging follower can catch up from the
    /// log instead of a snapshot).
    pub logs_kept_after_snapshot: u64,
    /// How often the leader sends heartbeats.
    pub heartbeat_interval: Duration,
    /// Election timeout range; a follower that hears no leader for this long campaigns.
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// How long `open` waits for the node to lead and apply its log (replay included).
    pub open_timeout: Duration,
    /// How long `shutdown` waits for proposers to write what they queued.
    pub shutdown_timeout: Duration,
    /// On a new database, write this many MiB into each of two write-ahead-log files before
    /// serving, so the first synced log writes reuse them (`wal_prewrite`); 0: off.
    pub wal_prewrite_mib: usize,
}

/// Entries in flight on a member of a cluster. With one, the next batch waited for the
/// previous one's whole turn: the leader's and a follower's fsync, and then the round trip
/// that only carries the new commit index to the followers (openraft sends it at once, and a
/// follower's replication stream has one call in flight). With two, the next batch is
/// appended meanwhile and rides along. g on a quiet 2-core machine, three clusters each,
/// alternately: 41-45k confirmed msg/s with one, 52-55k with two, p99 alike; three was
/// unsteady (55k, then 33-41k with a p99 of 9-17 ms). A lone node showed no difference (c
/// 154-165k either way, b 281-300k), so it keeps one (docs/benchmarks.md, session 21).
pub const CLUSTER_ENTRIES_IN_FLIGHT: usize = 2;

pub use crate::wal_prewrite::{
    DEFAULT_MIB_PER_FILE as DEFAULT_WAL_PREWRITE_MIB, MAX_MIB_PER_FILE as MAX_WAL_PREWRITE_MIB,
};

/// Log entries kept after a snapshot, for a follower slightly behind. Entries, not bytes
/// (openraft counts them): 200 of g's entries are about 11 MB, a third of a second of its log.
/// With 1,000 (55 MB) most of g's purged entries had been flushed to table files before their
/// purge, and its p99 confirm latency was 13-17 ms against 8-9 ms (docs/benchmarks.md, session
/// 19). A follower further behind is sent a snapshot.
pub const LOGS_KEPT_AFTER_SNAPSHOT: u64 = 200;

impl LogConfig {
    pub fn new(node_id: NodeId, data_dir: impl Into<PathBuf>, node: NodeInfo) -> LogConfig {
        LogConfig {
            node_id,
            data_dir: data_dir.into(),
            node,
            peers: BTreeMap::new(),
            join: false,
            raft_listen: None,
            cluster_secret: Vec::new(),
            inter_az_delay: Duration::ZERO,
            node_down_after: Duration::from_secs(5),
            max_commands_per_entry: 4096,
            max_bytes_per_entry: 8 * 1024 * 1024,
            max_entries_in_flight: 1,
            tick_interval: Duration::from_millis(100),
            snapshot_every_entries: 20_000,
            // Measured with a million 1 KiB messages queued (docs/benchmarks.md, h): loading a
            // message from a snapshot costs about a fifth of replaying it from the log. A
            // quarter of the last snapshot bounds a restart after a crash under load and keeps
            // the cost of writing snapshots in proportion; the idle rule makes one after a fill
            // nearly free of replay (32 MiB of log replays in about 50 ms). The minimum is for
            // a short queue under a steady load, whose snapshots are small: one every 32 MiB
            // of log lets its purges delete entries before their memtable is flushed
            // (`log_reclaim`); at 256 MiB every entry of g was flushed first (session 19).
            snapshot_by_size: SnapshotBySize {
                min_bytes: 32 * 1024 * 1024,
                fraction_of_last: 0.25,
                idle_min_bytes: 32 * 1024 * 1024,
            },
            logs_kept_after_snapshot: LOGS_KEPT_AFTER_SNAPSHOT,
            // openraft times an AppendEntries out after one heartbeat interval; it includes the
            // follower's fsync, so it must not be too short.
            heartbeat_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(300),
            election_timeout_max: Duration::from_millis(600),
            open_timeout: Duration::from_secs(120),
            shutdown_timeout: Duration::from_secs(10),
            wal_prewrite_mib: DEFAULT_WAL_PREWRITE_MIB,
        }
    }

    fn raft_config(&self) -> Result<Config, openraft::ConfigError> {
        Config {
            cluster_name: "raftmq".to_string(),
            heartbeat_interval: self.heartbeat_interval.as_millis() as u64,
            election_timeout_min: self.election_timeout_min.as_millis() as u64,
            election_timeout_max: self.election_timeout_max.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every_entries),
            max_in_snapshot_log_to_keep: self.logs_kept_after_snapshot,
            // An entry may be up to `max_bytes_per_entry` (8 MiB); openraft's default of 300
            // entries per AppendEntries could make one RPC gigabytes long.
            max_payload_entries: 64,
            // openraft purges only once at least this many entries can go. Each snapshot's
            // purge is one synced record through the log writer, so every snapshot purges:
            // with a quarter of the snapshot interval (5,000 entries, 275 MB of g's log) the
            // purges lagged so far behind that every entry was flushed before its purge
            // (docs/benchmarks.md, session 19).
            purge_batch_size: 1,
            ..Config::default()
        }
        .validate()
    }
}

/// Why [`LogNode::open`] failed.
#[derive(Debug, Error)]
pub enum LogOpenError {
    #[error("cannot create data directory {dir}: {source}")]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("cannot open the log in {dir}: {source}")]
    Store { dir: PathBuf, source: StoreError },
    #[error("invalid raft configuration: {0}")]
    Config(#[from] openraft::ConfigError),
    #[error("raft failed to start: {0}")]
    Raft(Fatal<NodeId>),
    #[error("cannot form the one-member raft group: {0}")]
    Initialize(String),
    #[error("data directory {dir} holds the log of a raft group without node {node_id} (its members: {members:?}); use that node's id or another directory")]
    ForeignNode {
        dir: PathBuf,
        node_id: NodeId,
        members: Vec<NodeId>,
    },
    #[error("cannot listen for the raft transport on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the log did not become ready within {timeout:?}: {detail}")]
    NotReady { timeout: Duration, detail: String },
}

/// Why a synchronous proposal ([`LogNode::start_node`]) failed.
#[derive(Debug, Error)]
pub enum ProposeError {
    #[error("this node is not the leader (leader: {})", leader.map(|l| l.to_string()).unwrap_or_else(|| "unknown".into()))]
    NotLeader { leader: Option<NodeId> },
    #[error("the log is stopped: {0}")]
    Stopped(Fatal<NodeId>),
    #[error("the log write failed: {0}")]
    Failed(String),
}

impl From<RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>> for ProposeError {
    fn from(e: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>) -> ProposeError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ProposeError::NotLeader {
                leader: f.leader_id,
            },
            RaftError::APIError(other) => ProposeError::Failed(other.to_string()),
            RaftError::Fatal(fatal) => ProposeError::Stopped(fatal),
        }
    }
}

/// A leader that no majority acknowledged for this long reports itself a follower.
pub const QUORUM_LOST_AFTER_MS: u64 = 1000;

/// How long a member of a new cluster waits for its lowest-numbered member to form the group
/// before forming it itself. One member campaigning first makes the first election a single
/// round with a known winner: when all of them campaigned at once, their votes split and the
/// group went through several terms, and its leader was whichever node won the race.
const FORMATION_GRACE: Duration = Duration::from_secs(3);

/// This node's part in the group, for `/health` and `cluster status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Leader of a group whose only voter is this node.
    Standalone,
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Standalone => "standalone",
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Shutdown => "shutdown",
        }
    }

    pub(crate) fn of(metrics: &RaftMetrics) -> Role {
        match metrics.state {
            ServerState::Leader => {
                let voters: BTreeSet<NodeId> =
                    metrics.membership_config.membership().voter_ids().collect();
                if voters.len() == 1 && voters.contains(&metrics.id) {
                    Role::Standalone
                } else if metrics
                    .millis_since_quorum_ack
                    .is_some_and(|ms| ms <= QUORUM_LOST_AFTER_MS)
                {
                    Role::Leader
                } else {
                    // openraft keeps the title until it hears a higher term, but a leader that
                    // no majority has acknowledged lately commits nothing: it has stepped down
                    // in all but name, and says so.
                    Role::Follower
                }
            }
            ServerState::Follower => Role::Follower,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::Shutdown,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A cheap, cloneable read-only view of a node's log, for status endpoints that live apart from
/// the owner of the [`LogNode`].
#[derive(Clone)]
pub struct LogStatus {
    raft: Raft,
    applied: Arc<RwLock<Applied>>,
    stats: Arc<ApplyStats>,
    syncs: Arc<AtomicU64>,
}

impl LogStatus {
    pub fn role(&self) -> Role {
        Role::of(&self.raft.metrics().borrow())
    }

    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    /// Runs `f` on the applied broker state under a read lock. Keep `f` short: applying waits
    /// for it.
    pub fn read_state<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        let applied = self.applied.read().unwrap_or_else(|p| p.into_inner());
        f(&applied.state)
    }

    /// (normal entries, commands) applied since this node was opened, replay included.
    pub fn applied_counts(&self) -> (u64, u64) {
        (
            self.stats.entries.load(Ordering::Relaxed),
            self.stats.commands.load(Ordering::Relaxed),
        )
    }

    /// How many times the log has been fsync'ed since this node was opened (one fsync covers
    /// a group of appends).
    pub fn log_syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }
}

/// One node's replicated log: openraft over RocksDB, applying into the broker's `State`.
pub struct LogNode {
    config: LogConfig,
    raft: Raft,
    db: Arc<DB>,
    status: LogStatus,
    sink: Arc<dyn EffectSink>,
    transport: Arc<Transport>,
    admin: Arc<ClusterAdmin>,
    control: mpsc::Sender<Control>,
    control_rx: std::sync::Mutex<Option<mpsc::Receiver<Control>>>,
    life_lost: watch::Sender<u64>,
    stop: watch::Sender<bool>,
    done_tx: mpsc::Sender<()>,
    done_rx: mpsc::Receiver<()>,
    tasks: Vec<JoinHandle<()>>,
    lock: DataDirLock,
    span: tracing::Span,
    /// The log left transient bodies out (`left_out_bodies`) and this process has not started
    /// the life that drops those messages yet.
    left_out_marked: Arc<AtomicBool>,
}

impl LogNode {
    /// Opens the node's log in `config.data_dir` (created if missing) and returns once a leader
    /// is known and this node has applied its whole log. Fails at once when another process
    /// holds the data directory.
    pub async fn open(
        config: LogConfig,
        sink: Arc<dyn EffectSink>,
    ) -> Result<LogNode, LogOpenError> {
        let span = tracing::info_span!("raft", node = config.node_id);
        Self::open_inner(config, sink, None, span.clone())
            .instrument(span)
            .await
    }

    /// As [`LogNode::open`], in a directory whose lock the caller already holds (the active
    /// of an active/standby pair took it when it took over).
    pub async fn open_locked(
        config: LogConfig,
        sink: Arc<dyn EffectSink>,
        lock: DataDirLock,
    ) -> Result<LogNode, LogOpenError> {
        let span = tracing::info_span!("raft", node = config.node_id);
        Self::open_inner(config, sink, Some(lock), span.clone())
            .instrument(span)
            .await
    }

    async fn open_inner(
        config: LogConfig,
        sink: Arc<dyn EffectSink>,
        lock: Option<DataDirLock>,
        span: tracing::Span,
    ) -> Result<LogNode, LogOpenError> {
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| LogOpenError::CreateDir {
            dir: dir.clone(),
            source,
        })?;
        // The lock comes first: nothing in the directory is touched before we own it.
        let lock = match lock {
            Some(lock) => lock,
            None => DataDirLock::acquire(&dir)?,
        };
        let raft_config = Arc::new(config.raft_config()?);
        let raft_listener = match config.raft_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| LogOpenError::Listen { addr, source })?,
            ),
            None => None,
        };

        let db_path = dir.join("db");
        let store_err = |source| LogOpenError::Store {
            dir: dir.clone(),
            source,
        };
        let opening = std::time::Instant::now();
        let prewrite_mib = config.wal_prewrite_mib;
        let db =
            tokio::task::spawn_blocking(move || crate::wal_prewrite::open(&db_path, prewrite_mib))
                .await
                .map_err(|e| store_err(StoreError::Join(e)))?
                .map_err(store_err)?;
        tracing::info!(ms = opening.elapsed().as_millis() as u64, "database open");
        let (log_store, sm) = open_stores(db.clone(), sink.clone()).map_err(store_err)?;
        let syncs = log_store.syncs();
        let sync_policy = log_store.sync_policy();
        let applied = sm.applied();
        let stats = sm.stats();

        let transport = Arc::new(Transport::new(TransportConfig {
            node_id: config.node_id,
            zone: config.node.zone.clone(),
            secret: config.cluster_secret.clone(),
            inter_az_delay: config.inter_az_delay,
            connect_timeout: Duration::from_secs(2),
        }));
        let raft = Raft::new(
            config.node_id,
            raft_config,
            TcpNetwork::new(transport.clone()),
            log_store,
            sm,
        )
        .await
        .map_err(LogOpenError::Raft)?;
        let status = LogStatus {
            raft: raft.clone(),
            applied,
            stats,
            syncs,
        };
        let marked = crate::left_out_bodies::marked(&db).map_err(|e| store_err(e.into()))?;
        let left_out_marked = Arc::new(AtomicBool::new(marked));
        let admin = Arc::new(ClusterAdmin::new(
            raft.clone(),
            transport.clone(),
            status.clone(),
            left_out_marked.clone(),
        ));
        let (stop, _) = watch::channel(false);
        let (done_tx, done_rx) = mpsc::channel(1);
        let (control, control_rx) = mpsc::channel(4);
        let (life_lost, _) = watch::channel(0);
        let mut tasks = vec![tokio::spawn(
            crate::snapshot_trigger::watch(
                raft.clone(),
                status.stats.clone(),
                config.snapshot_by_size,
                stop.subscribe(),
            )
            .instrument(span.clone()),
        )];
        if let Some(listener) = raft_listener {
            let handler: Arc<dyn server::AdminHandler> = admin.clone();
            tasks.push(tokio::spawn(
                server::run(
                    listener,
                    transport.clone(),
                    raft.clone(),
                    handler,
                    stop.subscribe(),
                )
                .instrument(span.clone()),
            ));
            tasks.push(tokio::spawn(
                crate::peer_gone::watch(
                    raft.clone(),
                    transport.clone(),
                    transport.disconnects(),
                    stop.subscribe(),
                )
                .instrument(span.clone()),
            ));
        }
        let node = LogNode {
            config,
            raft,
            db,
            status,
            sink,
            transport,
            admin,
            control,
            control_rx: std::sync::Mutex::new(Some(control_rx)),
            life_lost,
            stop,
            done_tx,
            done_rx,
            tasks,
            lock,
            span,
            left_out_marked,
        };
        match node.become_ready(&sync_policy).await {
            Ok(()) => Ok(node),
            Err(e) => {
                node.shutdown().await;
                Err(e)
            }
        }
    }

    /// Forms the group on a fresh log (unless joining): the lowest-numbered member at once, the
    /// others only if it has not done so within `FORMATION_GRACE`. On an existing one-member log,
    /// campaigns at once instead of waiting an election timeout. Then waits until a leader is
    /// known and this node has applied everything in its log. A cluster member waits as long
    /// as it takes for a majority to come up; a standalone node fails after `open_timeout`.
    async fn become_ready(&self, sync_policy: &SyncPolicy) -> Result<(), LogOpenError> {
        let id = self.config.node_id;
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(LogOpenError::Raft)?;
        if !initialized {
            if self.config.join {
                tracing::info!(node = %self.config.node, "fresh log: waiting to be added to a cluster (raftmq cluster add)");
            } else {
                let members = if self.config.peers.is_empty() {
                    BTreeMap::from([(id, self.config.node.clone())])
                } else {
                    self.config.peers.clone()
                };
                let first = members.keys().next().copied();
                if first != Some(id) && self.formed_by_peer(FORMATION_GRACE).await? {
                    tracing::info!("fresh log: a peer formed the raft group");
                } else {
                    self.form_group(members).await?;
                }
            }
        } else {
            let metrics = self.status.metrics();
            let membership = metrics.membership_config.membership();
            let members: Vec<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
            if members.is_empty() {
                // Only a vote is stored: a peer that formed the group first already asked for
                // this node's vote. Its leader will send the log.
                tracing::info!("the raft group was formed by a peer; waiting for its log");
            } else if !members.contains(&id) {
                // Waiting would only time out: nobody in that group will ever talk to us.
                return Err(LogOpenError::ForeignNode {
                    dir: self.config.data_dir.clone(),
                    node_id: id,
                    members,
                });
            }
            let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
            if voters.len() == 1 && voters.contains(&id) {
                if let Err(e) = self.raft.trigger().elect().await {
                    return Err(LogOpenError::Raft(e));
                }
            }
        }

        let clustered = self.config.raft_listen.is_some();
        let started = tokio::time::Instant::now();
        let sole_voter = |m: &RaftMetrics| {
            let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
            voters.len() == 1 && voters.contains(&m.id)
        };
        loop {
            let step = Duration::from_secs(10);
            let ready = self
                .raft
                .wait(Some(step))
                .metrics(
                    move |m| {
                        let caught_up = m.last_applied.map(|l| l.index) >= m.last_log_index;
                        // With peers, being caught up with any leader is enough; a one-member
                        // group must lead itself.
                        caught_up
                            && (m.state == ServerState::Leader
                                || (!sole_voter(m) && m.current_leader.is_some()))
                    },
                    "leader (or following one) with the whole log applied",
                )
                .await;
            match ready {
                Ok(m) => {
                    // Lone: no listener for peers, and the only member. Until a membership
                    // change adds a node, only this node's disk holds the log.
                    let lone = !clustered
                        && m.membership_config
                            .membership()
                            .nodes()
                            .map(|(n, _)| *n)
                            .eq([id]);
                    sync_policy.set_lone(lone);
                    tracing::info!(role = %Role::of(&m), term = m.current_term, leader = ?m.current_leader, last_applied = ?m.last_applied.map(|l| l.index), lone, "log ready");
                    return Ok(());
                }
                Err(e) => {
                    let timeout = self.config.open_timeout;
                    if !clustered && started.elapsed() >= timeout {
                        return Err(LogOpenError::NotReady {
                            timeout,
                            detail: e.to_string(),
                        });
                    }
                    let m = self.status.metrics();
                    tracing::info!(state = ?m.state, leader = ?m.current_leader, term = m.current_term, "waiting for a leader (a majority of the members must be up)");
                }
            }
        }
    }

    /// Forms the group with `members` and campaigns at once (openraft's `initialize`).
    async fn form_group(&self, members: BTreeMap<NodeId, NodeInfo>) -> Result<(), LogOpenError> {
        tracing::info!(members = members.len(), "fresh log: forming the raft group");
        // Every member that does this uses the same member list, so that is safe (the first
        // membership entry is identical everywhere).
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                tracing::info!(reason = %e, "raft group already formed");
                Ok(())
            }
            Err(e) => Err(LogOpenError::Initialize(e.to_string())),
        }
    }

    /// Waits up to `grace` for a peer to form the group: true once its vote request or its log
    /// has reached this node, false if none did in time.
    async fn formed_by_peer(&self, grace: Duration) -> Result<bool, LogOpenError> {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            if self
                .raft
                .is_initialized()
                .await
                .map_err(LogOpenError::Raft)?
            {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// Announces a life of this process (`NodeStarted { node, epoch, drop_transient }`) and
    /// returns once it is applied: every connection of this node's earlier lives is gone from
    /// the state, and batches of this life are taken. Needs the proposer running.
    ///
    /// A log that left transient bodies out (`left_out_bodies`, a lone node's) drops transient
    /// messages whatever `drop_transient` says: their bodies are not in it. A node that cannot
    /// be lone (it listens for peers) then forgets that mark, since it never leaves bodies out.
    /// Only the first life of the process looks at the mark: the later ones (after the cluster
    /// declared this node lost) come after that drop.
    pub async fn start_life(&self, epoch: u64, drop_transient: bool) -> Result<(), ProposeError> {
        let left_out = self.left_out_marked.load(Ordering::Acquire);
        self.new_life(epoch, drop_transient || left_out).await?;
        if left_out {
            if self.config.raft_listen.is_some() {
                crate::left_out_bodies::clear_mark(&self.db).map_err(|e| {
                    ProposeError::Failed(format!(
                        "cannot clear the mark of left-out transient bodies: {e}"
                    ))
                })?;
            }
            self.left_out_marked.store(false, Ordering::Release);
        }
        Ok(())
    }

    async fn new_life(&self, epoch: u64, drop_transient: bool) -> Result<(), ProposeError> {
        let (done, result) = oneshot::channel();
        self.control
            .send(Control::NewLife {
                epoch,
                drop_transient,
                done,
            })
            .await
            .map_err(|_| ProposeError::Failed("the proposer is not running".into()))?;
        result
            .await
            .map_err(|_| ProposeError::Failed("the proposer stopped".into()))?
            .map_err(ProposeError::Failed)
    }

    /// Changes (by one) each time the cluster ends this node's life (it was cut off and
    /// declared lost): the owner must close its clients and call `start_life` with a new epoch.
    pub fn life_lost(&self) -> watch::Receiver<u64> {
        self.life_lost.subscribe()
    }

    /// Starts the group-commit batcher that reads `proposals` until the channel closes (every
    /// `Proposer` dropped) or the node shuts down, and writes them to the log in order; and, in
    /// a cluster, the watch that declares silent members lost. Call once.
    pub fn spawn_proposer(&self, proposals: ProposalReceiver) -> JoinHandle<()> {
        let control = self
            .control_rx
            .lock()
            .expect("control lock")
            .take()
            .expect("spawn_proposer is called once");
        let batcher = Batcher {
            node_id: self.config.node_id,
            raft: self.raft.clone(),
            status: self.status.clone(),
            router: Router::new(
                self.raft.clone(),
                self.config.node_id,
                self.transport.clone(),
            ),
            sink: self.sink.clone(),
            limits: BatchLimits {
                max_commands_per_entry: self.config.max_commands_per_entry.max(1),
                max_bytes_per_entry: self.config.max_bytes_per_entry.max(1),
                max_entries_in_flight: self.config.max_entries_in_flight.max(1),
                tick_interval: self.config.tick_interval,
            },
            control,
            life_lost: self.life_lost.clone(),
            stop: self.stop.subscribe(),
            _done: self.done_tx.clone(),
        };
        if self.config.raft_listen.is_some() {
            tokio::spawn(
                cluster::watch_members(
                    self.config.node_id,
                    self.raft.clone(),
                    self.status.clone(),
                    self.transport.clone(),
                    self.config.node_down_after,
                    self.stop.subscribe(),
                )
                .instrument(self.span.clone()),
            );
        }
        let span = tracing::info_span!(parent: &self.span, "proposer");
        tokio::spawn(batcher.run(proposals).instrument(span))
    }

    pub fn role(&self) -> Role {
        self.status.role()
    }

    pub fn metrics(&self) -> RaftMetrics {
        self.status.metrics()
    }

    /// A cloneable read-only view (role, metrics, state) for other tasks.
    pub fn status(&self) -> LogStatus {
        self.status.clone()
    }

    /// Membership changes, cluster status and fault injection.
    pub fn admin(&self) -> Arc<ClusterAdmin> {
        self.admin.clone()
    }

    /// Runs `f` on the applied broker state under a read lock.
    pub fn read_state<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        self.status.read_state(f)
    }

    /// The openraft handle.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Stops the proposers after they wrote what was queued, stops the transport and raft,
    /// closes RocksDB, and releases the data directory's lock, in that order. False when the
    /// database was still in use and the lock is therefore kept until the process exits.
    pub async fn shutdown(self) -> bool {
        let span = self.span.clone();
        self.shutdown_inner().instrument(span).await
    }

    async fn shutdown_inner(self) -> bool {
        let LogNode {
            config,
            raft,
            db,
            status,
            sink,
            transport,
            admin,
            control,
            control_rx,
            life_lost,
            stop,
            done_tx,
            mut done_rx,
            tasks,
            lock,
            span: _,
            left_out_marked: _,
        } = self;
        let _ = stop.send(true);
        drop(done_tx);
        drop(control_rx);
        // Every batcher holds a clone of `done_tx`; recv returns None once all have finished.
        if tokio::time::timeout(config.shutdown_timeout, done_rx.recv())
            .await
            .is_err()
        {
            tracing::warn!(timeout = ?config.shutdown_timeout, "proposers did not drain in time; stopping raft anyway");
        }
        for task in tasks {
            task.abort();
        }
        if let Err(e) = raft.shutdown().await {
            tracing::warn!(error = %e, "raft core ended with an error");
        }
        drop(raft);
        drop(status);
        drop(sink);
        drop(admin);
        drop(transport);
        drop(control);
        drop(life_lost);
        // openraft's state-machine task and a snapshot build may still hold the database for a
        // moment after the core stopped; the lock must outlive the last handle, or a successor
        // could open the directory while we still write to it.
        let deadline = tokio::time::Instant::now() + config.shutdown_timeout;
        while Arc::strong_count(&db) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Err(e) = db.flush_wal(true) {
            tracing::warn!(error = %e, "flushing the write-ahead log at shutdown failed");
        }
        // Write the memtables out, so that the next open has no write-ahead log to replay:
        // after a large backlog that replay took most of a second of the restart.
        let flushing = std::time::Instant::now();
        for name in crate::store::COLUMN_FAMILIES {
            if let Err(e) = db.flush_cf(crate::store::cf(&db, name)) {
                tracing::warn!(error = %e, cf = name, "flushing a memtable at shutdown failed");
            }
        }
        tracing::info!(
            ms = flushing.elapsed().as_millis() as u64,
            "memtables flushed"
        );
        match Arc::try_unwrap(db) {
            Ok(db) => drop(db),
            Err(db) => {
                // Keep the lock: releasing it with the database still open would let another
                // process in. Leak both until the process exits.
                tracing::error!(
                    handles = Arc::strong_count(&db),
                    "database still in use at shutdown; keeping the lock until exit"
                );
                std::mem::forget(db);
                std::mem::forget(lock);
                return false;
            }
        }
        lock.release();
        tracing::info!("log closed");
        true
    }
}
