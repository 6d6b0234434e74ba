//! The `raftmq` binary: `serve` runs a broker node; the other subcommands talk to a running
//! node over HTTP. Errors end the process with a message and exit code 1.
//!
//! - `args`: the clap definitions (every flag has help text and a RAFTMQ_* variable)
//! - `config`: flags > environment > TOML file > defaults
//! - `serve`: wires the log, the broker and the HTTP endpoints together
//! - `standby`: active/standby on a shared directory (`serve --shared-dir`)
//! - `node_view`: what /health and the admin endpoints see of the node as it changes role
//! - `http`: the HTTP endpoints (/health, /cluster, /admin/faults) and their client
//! - `cluster_cmd`: `raftmq cluster ...`
//! - `bench`: `raftmq bench`, the load generator

mod args;
mod bench;
mod bench_wire;
mod cluster_cmd;
mod config;
mod http;
mod id_tally;
mod node_view;
mod serve;
mod standby;

use anyhow::Result;
use clap::Parser;

// mimalloc instead of glibc's malloc: in the 1 KiB and 16-byte transient scenarios the broker
// spent 17-19% of its CPU in malloc, free and their helpers; with mimalloc 7-8%, and 5-17%
// more messages per second on the same two cores (two alternating runs each of a and b,
// docs/benchmarks.md, session 8). Memory with a million queued messages: 1.68 GiB against 1.64.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = args::Cli::parse();
    let result: Result<()> = match cli.command {
        args::Command::Serve(a) => config::ServeConfig::resolve(a).and_then(serve::run),
        args::Command::Health(a) => http::print_health(a.http),
        args::Command::Cluster(c) => cluster_cmd::run(c),
        args::Command::Bench(a) => bench::run(a),
    };
    if let Err(e) = result {
        eprintln!("raftmq: error: {e:#}");
        std::process::exit(1);
    }
}
