//! HTTP endpoints of a node, and the client side of the admin subcommands.
//!
//! - `GET /health`: node id, role (standalone, leader, follower, active, standby, ...),
//!   status, leader, term; HTTP 503 when the node cannot serve (its storage failed).
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

/// What the endpoints read: the node's health and, while it has a log, its cluster admin.
/// Filled in by `serve`.
pub trait NodeSource: Send + Sync + 'static {
    fn health(&self) -> Health;
    /// None unless this is a cluster member with its log open.
    fn cluster(&self) -> Option<Arc<ClusterAdmin>>;
}

/// `status` when all is well; anything else makes /health answer 503.
pub const STATUS_OK: &str = "ok";

#[derive(Debug, Serialize)]
pub struct Health {
    pub node_id: u64,
    pub role: String,
    pub status: &'static str,
    /// Why the status is not "ok", or what a standby waits for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Active/standby: the fencing epoch the active took over with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fence_epoch: Option<u64>,
    pub connections: usize,
    pub last_applied: Option<u64>,
    /// The leader this node follows (itself when it leads), if one is known.
    pub leader: Option<u64>,
    pub term: u64,
}

#[derive(Clone)]
struct AppState {
    node: Arc<dyn NodeSource>,
    /// The cluster secret that guards changes.
    secret: Option<String>,
}

impl AppState {
    fn cluster(&self) -> Result<Arc<ClusterAdmin>, Reply> {
        self.node.cluster().ok_or_else(|| {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no cluster here: this node is standalone or part of an active/standby pair",
            )
        })
    }
}

const SECRET_HEADER: &str = "x-raftmq-secret";

type Reply = (StatusCode, Json<serde_json::Value>);

fn error(status: StatusCode, message: impl Into<String>) -> Reply {
    (status, Json(serde_json::json!({ "error": message.into() })))
}

fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), Reply> {
    let Some(secret) = &state.secret else {
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

async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let health = state.node.health();
    let code = if health.status == STATUS_OK {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(health))
}

/// A handler's answer: `Err` carries an error reply, so checks can use `?`.
type Answer = Result<Reply, Reply>;

fn json_ok(value: impl Serialize) -> Reply {
    (
        StatusCode::OK,
        Json(serde_json::to_value(value).unwrap_or_default()),
    )
}

async fn cluster_status(State(state): State<AppState>) -> Answer {
    Ok(json_ok(state.cluster()?.status().await))
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

/// The outcome of a membership change as a reply.
fn changed(outcome: Result<String, String>) -> Reply {
    match outcome {
        Ok(done) => json_ok(serde_json::json!({ "result": done })),
        Err(e) => error(StatusCode::CONFLICT, e),
    }
}

async fn add_member(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(req): Json<AddMember>,
) -> Answer {
    authorize(&state, &headers)?;
    if req.node_id == 0 || req.raft_addr.is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "node_id (at least 1) and raft_addr are required",
        ));
    }
    let info = NodeInfo {
        raft_addr: req.raft_addr,
        amqp_addr: req.amqp_addr,
        zone: req.zone,
    };
    Ok(changed(state.cluster()?.add_voter(req.node_id, info).await))
}

async fn remove_member(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Answer {
    authorize(&state, &headers)?;
    Ok(changed(state.cluster()?.remove(id).await))
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

async fn faults(State(state): State<AppState>) -> Answer {
    Ok(json_ok(state.cluster()?.faults()))
}

async fn add_fault(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(req): Json<Partition>,
) -> Answer {
    authorize(&state, &headers)?;
    let cluster = state.cluster()?;
    for peer in &req.peers {
        cluster.cut(*peer, req.direction);
    }
    Ok(json_ok(cluster.faults()))
}

async fn heal(State(state): State<AppState>, headers: HeaderMap) -> Answer {
    authorize(&state, &headers)?;
    let cluster = state.cluster()?;
    cluster.heal();
    Ok(json_ok(cluster.faults()))
}

pub fn router(node: Arc<dyn NodeSource>, secret: Option<String>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/cluster", get(cluster_status))
        .route("/cluster/members", axum::routing::post(add_member))
        .route("/cluster/members/{id}", delete(remove_member))
        .route("/admin/faults", get(faults).post(add_fault).delete(heal))
        .with_state(AppState { node, secret })
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
