//! The settings of `raftmq serve`, resolved in order: flag, environment variable (both via
//! clap), TOML file (`--config`), built-in default.

use crate::args::{LogFormat, ServeArgs};
use anyhow::{Context, Result};
use serde::Deserialize;
use std::net::SocketAddr;
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
        };
        if config.node_id == 0 {
            anyhow::bail!("--node-id must be at least 1");
        }
        if config.frame_max < 4096 {
            anyhow::bail!("--frame-max must be at least 4096 (AMQP 0-9-1 frame-min-size)");
        }
        if config.tick_ms == 0 {
            anyhow::bail!("--tick-ms must be at least 1");
        }
        Ok(config)
    }
}
