//! HTTP endpoints of a node, and the client side of the admin subcommands.
//!
//! - `GET /health`: node id, role (standalone, leader, follower, ...), leader, term.
//! - `GET /cluster`: the cluster as the leader sees it (members, zones, indexes, lag).
//! - `POST /cluster/members` `{"node_id","raft_addr","amqp_addr","zone"}`: add a voter.
//! - `DELETE /cluster/members/{id}`: remove a member.
//! - `GET|POST|DELETE /admin/faults`: show, add (`{"peers":[2],"direction":"both"}`) or heal
//!   injected partitions on this node.
//!
//! Changes need the header `x-raftmq-secret` when the cluster has a secret.

use anyhow::{bail, Context, Result};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get};
use axum::{Json, Router};
use raftmq_raft::{ClusterAdmin, Direction, NodeInfo};
use serde::{Deserialize, Serialize};
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
    /// The leader this node follows (itself when it leads), if one is known.
    pub leader: Option<u64>,
    pub term: u64,
}

/// The admin side: cluster operations and the secret that guards them.
#[derive(Clone)]
pub struct Admin {
    pub cluster: Arc<ClusterAdmin>,
    pub secret: Option<String>,
}

#[derive(Clone)]
struct AppState {
    health: Arc<dyn HealthSource>,
    admin: Admin,
}

const SECRET_HEADER: &str = "x-raftmq-secret";

type Reply = (StatusCode, Json<serde_json::Value>);

fn error(status: StatusCode, message: impl Into<String>) -> Reply {
    (status, Json(serde_json::json!({ "error": message.into() })))
}

fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), Reply> {
    let Some(secret) = &state.admin.secret else {
        return Ok(());
    };
    let given = headers.get(SECRET_HEADER).and_then(|v| v.to_str().ok());
    if given == Some(secret.as_str()) {
        Ok(())
    } else {
        Err(error(
            StatusCode::UNAUTHORIZED,
            "this cluster has a secret: pass it with --cluster-secret (header x-raftmq-secret)",
        ))
    }
}

async fn health(State(state): State<AppState>) -> Json<Health> {
    Json(state.health.health())
}

async fn cluster_status(State(state): State<AppState>) -> Reply {
    let status = state.admin.cluster.status().await;
    (
        StatusCode::OK,
        Json(serde_json::to_value(status).unwrap_or_default()),
    )
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AddMember {
    pub node_id: u64,
    pub raft_addr: String,
    #[serde(default)]
    pub amqp_addr: String,
    #[serde(default)]
    pub zone: String,
}

async fn add_member(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(req): Json<AddMember>,
) -> Reply {
    if let Err(e) = authorize(&state, &headers) {
        return e;
    }
    if req.node_id == 0 || req.raft_addr.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "node_id (at least 1) and raft_addr are required",
        );
    }
    let info = NodeInfo {
        raft_addr: req.raft_addr,
        amqp_addr: req.amqp_addr,
        zone: req.zone,
    };
    match state.admin.cluster.add_voter(req.node_id, info).await {
        Ok(done) => (StatusCode::OK, Json(serde_json::json!({ "result": done }))),
        Err(e) => error(StatusCode::CONFLICT, e),
    }
}

async fn remove_member(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Reply {
    if let Err(e) = authorize(&state, &headers) {
        return e;
    }
    match state.admin.cluster.remove(id).await {
        Ok(done) => (StatusCode::OK, Json(serde_json::json!({ "result": done }))),
        Err(e) => error(StatusCode::CONFLICT, e),
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Partition {
    pub peers: Vec<u64>,
    #[serde(default = "both")]
    pub direction: Direction,
}

fn both() -> Direction {
    Direction::Both
}

async fn faults(State(state): State<AppState>) -> Reply {
    let faults = state.admin.cluster.faults();
    (
        StatusCode::OK,
        Json(serde_json::to_value(faults).unwrap_or_default()),
    )
}

async fn add_fault(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(req): Json<Partition>,
) -> Reply {
    if let Err(e) = authorize(&state, &headers) {
        return e;
    }
    for peer in &req.peers {
        state.admin.cluster.cut(*peer, req.direction);
    }
    faults(State(state)).await
}

async fn heal(State(state): State<AppState>, headers: HeaderMap) -> Reply {
    if let Err(e) = authorize(&state, &headers) {
        return e;
    }
    state.admin.cluster.heal();
    faults(State(state)).await
}

pub fn router(health_source: Arc<dyn HealthSource>, admin: Admin) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/cluster", get(cluster_status))
        .route("/cluster/members", axum::routing::post(add_member))
        .route("/cluster/members/{id}", delete(remove_member))
        .route("/admin/faults", get(faults).post(add_fault).delete(heal))
        .with_state(AppState {
            health: health_source,
            admin,
        })
}

/// A plain HTTP/1.0 request; returns the status code and the body.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<String>,
    secret: Option<&str>,
) -> Result<(u16, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut stream =
            tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
                .await
                .context("timed out connecting")?
                .with_context(|| format!("cannot connect to {addr}"))?;
        let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
        if let Some(secret) = secret {
            head.push_str(&format!("{SECRET_HEADER}: {secret}\r\n"));
        }
        let body = body.unwrap_or_default();
        if !body.is_empty() {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        let mut response = String::new();
        tokio::time::timeout(
            Duration::from_secs(180),
            stream.read_to_string(&mut response),
        )
        .await
        .context("timed out waiting for the answer")??;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .map(|(h, b)| (h.to_string(), b.to_string()))
            .unwrap_or((response.clone(), String::new()));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("not an HTTP response")?;
        anyhow::Ok((status, body))
    })
}

/// A request whose non-2xx answer becomes an error carrying the server's message.
pub fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<String>,
    secret: Option<&str>,
) -> Result<String> {
    let (status, body) = request(addr, method, path, body, secret)?;
    if !(200..300).contains(&status) {
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or(body);
        bail!("{message} (HTTP {status})");
    }
    Ok(body)
}

/// `raftmq health`.
pub fn print_health(addr: SocketAddr) -> Result<()> {
    println!("{}", call(addr, "GET", "/health", None, None)?);
    Ok(())
}
