//! Command-line arguments. Every flag has help text and a `RAFTMQ_*` environment variable;
//! values left unset fall back to the TOML file given with `--config`, then to the defaults
//! named in the help (see `config.rs`).

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "raftmq",
    version,
    about = "RaftMQ: an AMQP 0-9-1 message broker replicated with Raft"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a broker node (standalone by default: a one-member log in --data-dir).
    Serve(ServeArgs),
    /// Ask a running node for its health (GET /health) and print it.
    Health(HealthArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys as the long flag names with
    /// underscores, e.g. amqp_listen); flags and environment variables take precedence.
    #[arg(long, env = "RAFTMQ_CONFIG")]
    pub config: Option<PathBuf>,

    /// This node's id in the cluster [default: 1].
    #[arg(long, env = "RAFTMQ_NODE_ID")]
    pub node_id: Option<u64>,

    /// Address for AMQP 0-9-1 clients [default: 0.0.0.0:5672].
    #[arg(long, env = "RAFTMQ_AMQP_LISTEN")]
    pub amqp_listen: Option<SocketAddr>,

    /// Address for the HTTP endpoints (/health) [default: 127.0.0.1:15672].
    #[arg(long, env = "RAFTMQ_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,

    /// Directory holding the log and state (RocksDB); created if missing; one process at a
    /// time [default: ./raftmq-data].
    #[arg(long, env = "RAFTMQ_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// A user allowed to log in from anywhere, besides guest (guest/guest may log in from
    /// loopback only, as in RabbitMQ).
    #[arg(long, env = "RAFTMQ_DEFAULT_USER")]
    pub default_user: Option<String>,

    /// Password of --default-user.
    #[arg(long, env = "RAFTMQ_DEFAULT_PASS", hide_env_values = true)]
    pub default_pass: Option<String>,

    /// Log output format [default: text]; filter with RUST_LOG (e.g. RUST_LOG=raftmq=debug).
    #[arg(long, env = "RAFTMQ_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Largest frame offered to clients in connection.tune, bytes [default: 131072].
    #[arg(long, env = "RAFTMQ_FRAME_MAX")]
    pub frame_max: Option<u32>,

    /// Most channels per connection offered in connection.tune [default: 2047].
    #[arg(long, env = "RAFTMQ_CHANNEL_MAX")]
    pub channel_max: Option<u16>,

    /// Heartbeat interval offered in connection.tune, seconds; 0 disables [default: 60].
    #[arg(long, env = "RAFTMQ_HEARTBEAT")]
    pub heartbeat: Option<u16>,

    /// Largest message body accepted, bytes [default: 134217728 (128 MiB), as RabbitMQ].
    #[arg(long, env = "RAFTMQ_MAX_MESSAGE_SIZE")]
    pub max_message_size: Option<u64>,

    /// How often the leader proposes a clock tick for TTL and expiry, milliseconds
    /// [default: 100].
    #[arg(long, env = "RAFTMQ_TICK_MS")]
    pub tick_ms: Option<u64>,
}

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// HTTP address of the node.
    #[arg(long, env = "RAFTMQ_HTTP", default_value = "127.0.0.1:15672")]
    pub http: SocketAddr,
}
