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
    /// Load-test an AMQP 0-9-1 broker (RaftMQ, RabbitMQ, ...): rates, latency, lost and
    /// duplicated messages.
    Bench(BenchArgs),
    /// Inspect and change a running cluster (any member answers; changes go to the leader).
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Show every member, its zone, the leader, the term, log and applied indexes, and each
    /// follower's lag behind the leader.
    Status(ClusterStatusArgs),
    /// Add a node (started with --join) as a voter: it becomes a learner, catches up, then
    /// votes (a joint-consensus membership change).
    Add(ClusterAddArgs),
    /// Remove a member from the cluster (a joint-consensus membership change).
    Remove(ClusterRemoveArgs),
    /// Fault injection: cut the node at --http off from a peer (for tests and demos).
    Partition(ClusterPartitionArgs),
    /// Fault injection: remove every partition made on the node at --http.
    Heal(ClusterNodeArgs),
}

#[derive(Args, Debug)]
pub struct ClusterNodeArgs {
    /// HTTP address of any member.
    #[arg(long, env = "RAFTMQ_HTTP", default_value = "127.0.0.1:15672")]
    pub http: SocketAddr,
    /// The cluster secret, when the cluster has one (admin calls must present it).
    #[arg(long, env = "RAFTMQ_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
}

#[derive(Args, Debug)]
pub struct ClusterStatusArgs {
    #[command(flatten)]
    pub node: ClusterNodeArgs,
    /// Print the status as JSON instead of a table.
    #[arg(long, env = "RAFTMQ_JSON")]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ClusterAddArgs {
    #[command(flatten)]
    pub node: ClusterNodeArgs,
    /// Id of the node to add.
    #[arg(long = "id", env = "RAFTMQ_ADD_NODE_ID")]
    pub node_id: u64,
    /// Its raft transport address (its --raft-listen, as the others reach it).
    #[arg(long, env = "RAFTMQ_ADD_RAFT_ADDR")]
    pub raft_addr: String,
    /// Its AMQP address, as clients reach it.
    #[arg(long, env = "RAFTMQ_ADD_AMQP_ADDR", default_value = "")]
    pub amqp_addr: String,
    /// Its availability zone.
    #[arg(long, env = "RAFTMQ_ADD_AZ", default_value = "")]
    pub az: String,
}

#[derive(Args, Debug)]
pub struct ClusterRemoveArgs {
    #[command(flatten)]
    pub node: ClusterNodeArgs,
    /// Id of the member to remove.
    #[arg(long = "id", env = "RAFTMQ_REMOVE_NODE_ID")]
    pub node_id: u64,
}

#[derive(Args, Debug)]
pub struct ClusterPartitionArgs {
    #[command(flatten)]
    pub node: ClusterNodeArgs,
    /// The peer to cut this node off from (repeat for several).
    #[arg(
        long = "from",
        env = "RAFTMQ_PARTITION_FROM",
        value_delimiter = ',',
        required = true
    )]
    pub peers: Vec<u64>,
    /// both: no requests either way; outgoing: this node sends nothing to the peer;
    /// incoming: this node refuses the peer's requests.
    #[arg(
        long,
        env = "RAFTMQ_PARTITION_DIRECTION",
        value_enum,
        default_value = "both"
    )]
    pub direction: PartitionDirection,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PartitionDirection {
    Both,
    Outgoing,
    Incoming,
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

    /// This node's availability zone label (cluster mode), e.g. az-a.
    #[arg(long, env = "RAFTMQ_AZ")]
    pub az: Option<String>,

    /// Address for the node-to-node raft transport; setting it (or --peer) turns on cluster
    /// mode [default: this node's address in --peer].
    #[arg(long, env = "RAFTMQ_RAFT_LISTEN")]
    pub raft_listen: Option<SocketAddr>,

    /// A cluster member as ID=HOST:PORT@ZONE (its raft address); repeat for every member,
    /// this node included. The same list on every node forms the cluster once a majority is
    /// up. In the environment: comma-separated.
    #[arg(long = "peer", env = "RAFTMQ_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,

    /// Start with an empty data directory and wait to be added to a running cluster with
    /// `raftmq cluster add`, instead of forming a new cluster from --peer.
    #[arg(long, env = "RAFTMQ_JOIN")]
    pub join: bool,

    /// Shared secret of the cluster's members: a node that does not know it cannot join or
    /// send entries. Without it any process that reaches the raft port can.
    #[arg(long, env = "RAFTMQ_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,

    /// Delay added to each message between nodes of different zones, milliseconds, to
    /// imitate the latency between real availability zones [default: 0].
    #[arg(long, env = "RAFTMQ_INTER_AZ_DELAY_MS")]
    pub inter_az_delay_ms: Option<u64>,

    /// The leader declares a member lost after hearing nothing from it for this long,
    /// milliseconds: its client connections end and their unacknowledged messages go back to
    /// their queues [default: 5000].
    #[arg(long, env = "RAFTMQ_NODE_DOWN_AFTER_MS")]
    pub node_down_after_ms: Option<u64>,

    /// Take a snapshot of the state after this many log entries [default: 20000].
    #[arg(long, env = "RAFTMQ_SNAPSHOT_EVERY")]
    pub snapshot_every: Option<u64>,

    /// On a new data directory, write this many MiB into each of two write-ahead-log files
    /// before serving, so the first confirmed writes reuse them instead of growing new files
    /// (about 0.3 s once; a fresh cluster's first seconds ran 20-30% slower without it). 0
    /// turns it off; at most 120 [default: 70].
    #[arg(long, env = "RAFTMQ_WAL_PREWRITE_MIB")]
    pub wal_prewrite_mib: Option<usize>,

    /// Threads that run the connections, the log and the state machine [default: half the
    /// CPUs, at least 1]. Disk writes run on a separate pool. Fewer threads mean fewer
    /// wake-ups between them: on 2 cores, 1 thread delivered 4x more under 4 publishers and 4
    /// consumers (docs/benchmarks.md).
    #[arg(long, env = "RAFTMQ_WORKER_THREADS")]
    pub worker_threads: Option<usize>,

    /// Active/standby mode: the log lives in this shared directory (an EFS/NFS mount, or one
    /// volume of two containers) instead of --data-dir. Start two nodes on it: the one that
    /// takes the directory's lock serves, the other waits as standby (AMQP port closed,
    /// /health role "standby") and takes over when the active dies. Not combinable with the
    /// cluster flags. Mount the share first: the directory is created if missing at start,
    /// and an empty one is a fresh start.
    #[arg(long, env = "RAFTMQ_SHARED_DIR", conflicts_with_all = ["data_dir", "peers", "join", "raft_listen"])]
    pub shared_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// HTTP address of the node.
    #[arg(long, env = "RAFTMQ_HTTP", default_value = "127.0.0.1:15672")]
    pub http: SocketAddr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchQueueType {
    Classic,
    Quorum,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchExchange {
    /// Each producer publishes to one queue (through the default exchange).
    Direct,
    /// Producers publish to a fanout exchange bound to every queue.
    Fanout,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Broker to use; repeat for several (a client whose connection fails moves to the next).
    #[arg(
        long,
        env = "RAFTMQ_BENCH_URI",
        value_delimiter = ',',
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub uri: Vec<String>,
    /// Publishing connections.
    #[arg(long, env = "RAFTMQ_BENCH_PRODUCERS", default_value_t = 1)]
    pub producers: usize,
    /// Consuming connections (consumer i reads queue i mod --queues).
    #[arg(long, env = "RAFTMQ_BENCH_CONSUMERS", default_value_t = 1)]
    pub consumers: usize,
    /// Queues (producer i publishes to queue i mod --queues).
    #[arg(long, env = "RAFTMQ_BENCH_QUEUES", default_value_t = 1)]
    pub queues: usize,
    /// Name prefix of the queues (and of the fanout exchange).
    #[arg(
        long,
        env = "RAFTMQ_BENCH_QUEUE_PREFIX",
        default_value = "raftmq-bench"
    )]
    pub queue_prefix: String,
    /// Message body size in bytes (at least 16).
    #[arg(long, env = "RAFTMQ_BENCH_SIZE", default_value_t = 1024)]
    pub size: usize,
    /// How long to publish, seconds.
    #[arg(long, env = "RAFTMQ_BENCH_DURATION", default_value_t = 10.0)]
    pub duration: f64,
    /// Publisher confirms with this many in flight per producer (0: no confirms).
    #[arg(long, env = "RAFTMQ_BENCH_CONFIRM", default_value_t = 0)]
    pub confirm: usize,
    /// Persistent messages (delivery_mode 2) in durable queues.
    #[arg(long, env = "RAFTMQ_BENCH_PERSISTENT")]
    pub persistent: bool,
    /// Queue type (x-queue-type).
    #[arg(
        long,
        env = "RAFTMQ_BENCH_QUEUE_TYPE",
        value_enum,
        default_value = "classic"
    )]
    pub queue_type: BenchQueueType,
    /// Consumer prefetch (basic.qos).
    #[arg(long, env = "RAFTMQ_BENCH_PREFETCH", default_value_t = 1000)]
    pub prefetch: u16,
    /// Acknowledge every N deliveries with multiple=true.
    #[arg(long, env = "RAFTMQ_BENCH_MULTI_ACK", default_value_t = 100)]
    pub multi_ack: u32,
    /// Exchange type.
    #[arg(
        long,
        env = "RAFTMQ_BENCH_EXCHANGE",
        value_enum,
        default_value = "direct"
    )]
    pub exchange: BenchExchange,
    /// Rate limit per producer, messages per second (0: none).
    #[arg(long, env = "RAFTMQ_BENCH_RATE")]
    pub rate: Option<u32>,
    /// Each producer stops after this many messages; the run then ends early once every
    /// producer is done (to fill a queue: --consumers 0 --messages N).
    #[arg(long, env = "RAFTMQ_BENCH_MESSAGES")]
    pub messages: Option<u64>,
    /// Print the summary as JSON (no progress lines).
    #[arg(long, env = "RAFTMQ_BENCH_JSON")]
    pub json: bool,
}
