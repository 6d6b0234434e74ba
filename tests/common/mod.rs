//! The test harness: start the built `raftmq` binary on free ports in a temporary data
//! directory, wait until it serves, kill it (SIGKILL) or stop it (SIGTERM), restart it on the
//! same directory; connect lapin clients; wait for conditions with a deadline instead of
//! sleeping.

#![allow(dead_code)]

pub mod checker;
pub mod cluster;
pub mod pair;
pub mod raw;

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_raftmq");

/// Generous bounds: these are correctness tests on a loaded 2-core machine, not benchmarks.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// A free port below Linux's ephemeral range (32768-60999 by default), so that no outgoing
/// connection of a client or of another node can take it between the moment it is picked and
/// the moment a node binds it, nor while a killed node is down before its restart.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Spread test processes apart by pid; walk upwards from there.
    let base = 20_000 + (std::process::id() % 100) * 120;
    loop {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % 12_000;
        let port = (base + offset) as u16;
        let port = if port >= 32_000 { port - 12_000 } else { port };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A running broker process. Killed (SIGKILL) when dropped, so no test leaves one behind.
pub struct Broker {
    child: Option<Child>,
    pub amqp_port: u16,
    pub http_port: u16,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    extra: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

impl Broker {
    /// A fresh broker in a new temporary directory.
    pub fn start() -> Broker {
        Broker::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Broker {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let mut b = Broker::spawn(
            data_dir,
            tmp.path().join("raftmq.log"),
            extra.iter().map(|s| s.to_string()).collect(),
        );
        b._tmp = Some(tmp);
        b.wait_ready();
        b
    }

    fn spawn(data_dir: PathBuf, log_path: PathBuf, extra: Vec<String>) -> Broker {
        let amqp_port = free_port();
        let http_port = free_port();
        let child = spawn_process(&data_dir, &log_path, amqp_port, http_port, &extra);
        Broker {
            child: Some(child),
            amqp_port,
            http_port,
            data_dir,
            log_path,
            extra,
            _tmp: None,
        }
    }

    /// Starts the same data directory again (after `kill` or `terminate`), on new ports.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running broker");
        self.amqp_port = free_port();
        self.http_port = free_port();
        self.child = Some(spawn_process(
            &self.data_dir,
            &self.log_path,
            self.amqp_port,
            self.http_port,
            &self.extra,
        ));
        self.wait_ready();
    }

    /// Starts the same data directory again with other extra arguments from now on.
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
        self.restart();
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the AMQP port accepts connections; fails with the broker's log if the
    /// process exits first.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .expect("running")
                .try_wait()
                .expect("try_wait")
            {
                panic!("raftmq exited during start-up ({status}):\n{}", self.log());
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.amqp_port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "raftmq did not start listening within {START_TIMEOUT:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no clean-up of any kind, as a crash or power loss of the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "raftmq did not exit within {TIMEOUT:?} of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn connect(&self) -> Connection {
        Connection::connect(&self.uri(), ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("connect: {e}\n{}", self.log()))
    }

    pub async fn channel(&self) -> (Connection, Channel) {
        let conn = self.connect().await;
        let ch = conn.create_channel().await.expect("channel.open");
        (conn, ch)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_process(
    data_dir: &Path,
    log_path: &Path,
    amqp_port: u16,
    http_port: u16,
    extra: &[String],
) -> Child {
    serve_command(log_path, amqp_port, http_port)
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .spawn()
        .expect("spawn raftmq")
}

/// `raftmq serve` on loopback ports, its output appended to `log_path`; callers add the rest.
pub fn serve_command(log_path: &Path, amqp_port: u16, http_port: u16) -> Command {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .expect("log file");
    let mut command = Command::new(BIN);
    command
        .arg("serve")
        .args(["--amqp-listen", &format!("127.0.0.1:{amqp_port}")])
        .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
        .env("RUST_LOG", "info,openraft=warn")
        // Prewriting a new node's write-ahead log costs 140 MiB of writes; the suite starts
        // a hundred nodes or so. `durability` turns it on where it is the subject.
        .env("RAFTMQ_WAL_PREWRITE_MIB", "0")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    command
}

/// Runs the built `raftmq` with `args` to completion and fails the test (with its stderr) if
/// it did not succeed.
pub fn run_ok(args: &[&str]) -> std::process::Output {
    let out = Command::new(BIN).args(args).output().expect("run raftmq");
    assert!(
        out.status.success(),
        "raftmq {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `run_ok`, with the standard output parsed as JSON.
pub fn run_json(args: &[&str]) -> serde_json::Value {
    serde_json::from_slice(&run_ok(args).stdout).expect("JSON on standard output")
}

/// A plain HTTP/1.0 request to a node's HTTP port; (status, body). None if it does not answer.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    secret: Option<&str>,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let body = body.unwrap_or("");
    let secret = secret
        .map(|s| format!("x-raftmq-secret: {s}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: x\r\n{secret}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// The tails of several nodes' logs, each under a heading with the node's id.
pub fn tails<'a>(logs: impl Iterator<Item = (u64, &'a Path)>, lines: usize) -> String {
    logs.map(|(id, path)| {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        format!("---- node {id} ----\n{}", tail(&text, lines))
    })
    .collect::<Vec<_>>()
    .join("\n")
}

/// Declares a durable classic queue on the broker at `uri`.
pub async fn declare_durable(uri: &str, queue: &str) {
    let conn = Connection::connect(uri, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("connect {uri}: {e}"));
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("queue.declare");
    conn.close(200, "ok".into()).await.unwrap();
}

/// The last `lines` lines of a log.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls `condition` until it holds or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The AMQP reply code of a lapin error, if it carries one.
pub fn reply_code(err: &lapin::Error) -> Option<u16> {
    match err.kind() {
        lapin::ErrorKind::ProtocolError(e) => Some(e.get_id()),
        _ => None,
    }
}

/// Declares a plain non-durable queue with a unique name.
pub async fn temp_queue(ch: &Channel, name: &str) -> String {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.declare");
    name.to_string()
}

pub async fn publish(ch: &Channel, exchange: &str, routing_key: &str, body: &[u8]) {
    ch.basic_publish(
        exchange.into(),
        routing_key.into(),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default(),
    )
    .await
    .expect("basic.publish");
}

/// The consumer's next delivery, failing the test if none comes within `TIMEOUT`.
pub async fn next_delivery(consumer: &mut lapin::Consumer) -> lapin::message::Delivery {
    use futures::StreamExt;
    tokio::time::timeout(TIMEOUT, consumer.next())
        .await
        .expect("a delivery in time")
        .expect("the consumer stream is open")
        .expect("a delivery, not an error")
}

/// basic.get until a message arrives or the timeout passes.
pub async fn get_one(
    ch: &Channel,
    queue: &str,
    no_ack: bool,
) -> Option<lapin::message::BasicGetMessage> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(m) = ch
            .basic_get(queue.into(), BasicGetOptions { no_ack })
            .await
            .expect("basic.get")
        {
            return Some(m);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The number of ready messages, from a passive declare.
pub async fn message_count(ch: &Channel, queue: &str) -> u32 {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("passive queue.declare")
    .message_count()
}
