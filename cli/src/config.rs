//! The settings of `raftmq serve`, resolved in order: flag, environment variable (both via
//! clap), TOML file (`--config`), built-in default.

use crate::args::{LogFormat, ServeArgs};
use anyhow::{Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<u64>,
    amqp_listen: Option<SocketAddr>,
    http_listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    default_user: Option<String>,
    default_pass: Option<String>,
    log_format: Option<LogFormat>,
    frame_max: Option<u32>,
    channel_max: Option<u16>,
    heartbeat: Option<u16>,
    max_message_size: Option<u64>,
    tick_ms: Option<u64>,
    az: Option<String>,
    raft_listen: Option<SocketAddr>,
    peers: Option<Vec<String>>,
    join: Option<bool>,
    cluster_secret: Option<String>,
    inter_az_delay_ms: Option<u64>,
    node_down_after_ms: Option<u64>,
    snapshot_every: Option<u64>,
    wal_prewrite_mib: Option<usize>,
    shared_dir: Option<PathBuf>,
    worker_threads: Option<usize>,
}

/// One member of the cluster, from `--peer`.
#[derive(Debug, Clone)]
pub struct Peer {
    pub raft_addr: String,
    pub zone: String,
}

/// The cluster settings; absent for a standalone node.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub zone: String,
    pub raft_listen: SocketAddr,
    /// Every member, this node included (empty with --join).
    pub peers: BTreeMap<u64, Peer>,
    pub join: bool,
    pub secret: Option<String>,
    pub inter_az_delay_ms: u64,
    pub node_down_after_ms: u64,
}

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub node_id: u64,
    pub amqp_listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub default_user: Option<(String, String)>,
    pub log_format: LogFormat,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat: u16,
    pub max_message_size: u64,
    pub tick_ms: u64,
    pub snapshot_every: u64,
    /// MiB written in advance into each of a new database's first two write-ahead-log files.
    pub wal_prewrite_mib: usize,
    pub cluster: Option<ClusterConfig>,
    /// Active/standby: the shared directory (then `data_dir` is the same directory).
    pub shared_dir: Option<PathBuf>,
    /// Async runtime worker threads.
    pub worker_threads: usize,
}

impl ServeConfig {
    pub fn resolve(args: ServeArgs) -> Result<ServeConfig> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let data_dir_given = args.data_dir.is_some() || file.data_dir.is_some();
        let user = args.default_user.or(file.default_user);
        let pass = args.default_pass.or(file.default_pass);
        let default_user = match (user, pass) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            _ => anyhow::bail!("--default-user and --default-pass must be given together"),
        };
        let config = ServeConfig {
            node_id: args.node_id.or(file.node_id).unwrap_or(1),
            amqp_listen: args
                .amqp_listen
                .or(file.amqp_listen)
                .unwrap_or_else(|| "0.0.0.0:5672".parse().expect("valid")),
            http_listen: args
                .http_listen
                .or(file.http_listen)
                .unwrap_or_else(|| "127.0.0.1:15672".parse().expect("valid")),
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("./raftmq-data")),
            default_user,
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            frame_max: args.frame_max.or(file.frame_max).unwrap_or(131_072),
            channel_max: args.channel_max.or(file.channel_max).unwrap_or(2047),
            heartbeat: args.heartbeat.or(file.heartbeat).unwrap_or(60),
            max_message_size: args
                .max_message_size
                .or(file.max_message_size)
                .unwrap_or(128 * 1024 * 1024),
            tick_ms: args.tick_ms.or(file.tick_ms).unwrap_or(100),
            snapshot_every: args
                .snapshot_every
                .or(file.snapshot_every)
                .unwrap_or(20_000),
            wal_prewrite_mib: args
                .wal_prewrite_mib
                .or(file.wal_prewrite_mib)
                .unwrap_or(raftmq_raft::node::DEFAULT_WAL_PREWRITE_MIB),
            cluster: None,
            shared_dir: None,
            worker_threads: args
                .worker_threads
                .or(file.worker_threads)
                .unwrap_or_else(default_worker_threads),
        };
        let peer_specs = if args.peers.is_empty() {
            file.peers.unwrap_or_default()
        } else {
            args.peers
        };
        let raft_listen = args.raft_listen.or(file.raft_listen);
        let join = args.join || file.join.unwrap_or(false);
        let zone = args.az.or(file.az);
        let cluster = if peer_specs.is_empty() && raft_listen.is_none() && !join {
            None
        } else {
            let parsed = raftmq_raft::cluster::parse_peers(&peer_specs)?;
            let node_id = config.node_id;
            let mine = parsed.get(&node_id);
            if !parsed.is_empty() && mine.is_none() && !join {
                anyhow::bail!(
                    "--peer lists nodes {:?} but not this node ({node_id}); list every member, this one included, or start with --join to be added later",
                    parsed.keys().collect::<Vec<_>>()
                );
            }
            let raft_listen = match (raft_listen, mine) {
                (Some(addr), _) => addr,
                (None, Some((addr, _))) => addr
                    .to_socket_addrs()
                    .with_context(|| format!("cannot resolve this node's raft address {addr}"))?
                    .next()
                    .with_context(|| {
                        format!("this node's raft address {addr} resolves to nothing")
                    })?,
                (None, None) => {
                    anyhow::bail!("cluster mode needs --raft-listen (or this node in --peer)")
                }
            };
            let zone = zone
                .or_else(|| mine.map(|(_, z)| z.clone()))
                .unwrap_or_default();
            if let Some((_, peer_zone)) = mine {
                if !peer_zone.is_empty() && *peer_zone != zone {
                    anyhow::bail!(
                        "--az {zone} differs from this node's zone in --peer ({peer_zone})"
                    );
                }
            }
            Some(ClusterConfig {
                zone,
                raft_listen,
                peers: parsed
                    .into_iter()
                    .map(|(id, (raft_addr, zone))| (id, Peer { raft_addr, zone }))
                    .collect(),
                join,
                secret: args.cluster_secret.or(file.cluster_secret),
                inter_az_delay_ms: args
                    .inter_az_delay_ms
                    .or(file.inter_az_delay_ms)
                    .unwrap_or(0),
                node_down_after_ms: args
                    .node_down_after_ms
                    .or(file.node_down_after_ms)
                    .unwrap_or(5000),
            })
        };
        let shared_dir = args.shared_dir.or(file.shared_dir);
        if let Some(dir) = &shared_dir {
            if cluster.is_some() {
                anyhow::bail!("--shared-dir (active/standby) cannot be combined with the cluster settings (--peer, --join, --raft-listen)");
            }
            if data_dir_given {
                anyhow::bail!("--shared-dir and --data-dir are exclusive: in active/standby mode the data lives in {}", dir.display());
            }
        }
        let data_dir = shared_dir.clone().unwrap_or(config.data_dir);
        let config = ServeConfig {
            cluster,
            shared_dir,
            data_dir,
            ..config
        };
        if config.node_id == 0 {
            anyhow::bail!("--node-id must be at least 1");
        }
        if config.frame_max < 4096 {
            anyhow::bail!("--frame-max must be at least 4096 (AMQP 0-9-1 frame-min-size)");
        }
        if config.snapshot_every == 0 {
            anyhow::bail!("--snapshot-every must be at least 1");
        }
        if config.worker_threads == 0 {
            anyhow::bail!("--worker-threads must be at least 1");
        }
        if config.wal_prewrite_mib > raftmq_raft::node::MAX_WAL_PREWRITE_MIB {
            anyhow::bail!(
                "--wal-prewrite-mib must be at most {} (a write-ahead-log file holds about 64 MiB)",
                raftmq_raft::node::MAX_WAL_PREWRITE_MIB
            );
        }
        if config.tick_ms == 0 {
            anyhow::bail!("--tick-ms must be at least 1");
        }
        Ok(config)
    }
}

/// Half the CPUs, at least one: the other half is left to the disk-write pool, the kernel's
/// network stack and, on small machines, the clients.
fn default_worker_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| (n.get() / 2).max(1))
        .unwrap_or(1)
}
