//! HTTP endpoints of a node: `GET /health` answers a JSON object with the node id and its
//! role (standalone, leader, follower, ...), and whether it is serving. And the client side
//! of `raftmq health`.

use anyhow::{Context, Result};
use axum::{extract::State, routing::get, Json, Router};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What /health reports; filled in by `serve`.
pub trait HealthSource: Send + Sync + 'static {
    fn health(&self) -> Health;
}

#[derive(Debug, Serialize)]
pub struct Health {
    pub node_id: u64,
    pub role: String,
    pub status: &'static str,
    pub connections: usize,
    pub last_applied: Option<u64>,
}

async fn health(State(source): State<Arc<dyn HealthSource>>) -> Json<Health> {
    Json(source.health())
}

pub fn router(source: Arc<dyn HealthSource>) -> Router {
    Router::new()
        .route("/health", get(health))
        .with_state(source)
}

/// `raftmq health`: a plain HTTP/1.0 GET, printed as it comes.
pub fn print_health(addr: SocketAddr) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let body = rt.block_on(async {
        let mut stream =
            tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
                .await
                .context("timed out connecting")?
                .with_context(|| format!("cannot connect to {addr}"))?;
        stream
            .write_all(format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or(response);
        anyhow::Ok(body)
    })?;
    println!("{body}");
    Ok(())
}
