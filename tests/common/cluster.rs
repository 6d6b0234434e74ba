//! A cluster of real `raftmq` processes on free loopback ports, one per simulated zone, with
//! the harness's means to hurt it: SIGKILL, SIGSTOP/SIGCONT, restart on the same data
//! directory, and partitions through the nodes' fault-injection endpoint. Every process is
//! killed when the cluster is dropped.

use super::{free_port, http_request, serve_command, tails, START_TIMEOUT};
use lapin::{Connection, ConnectionProperties};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

pub const SECRET: &str = "test-cluster-secret";

pub struct Node {
    pub id: u64,
    pub zone: String,
    pub amqp_port: u16,
    pub http_port: u16,
    pub raft_port: u16,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    extra: Vec<String>,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    /// `n` nodes in zones az-1 … az-n, all started, and a leader elected.
    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        // A port picked free can be taken by someone else's outgoing connection before the node
        // binds it; then the whole cluster starts again on new ports.
        for _ in 0..3 {
            let mut cluster = Cluster::fresh(n, extra);
            for i in 0..n {
                cluster.spawn(i);
            }
            if (0..n).all(|i| cluster.try_wait_serving(i)) {
                return cluster;
            }
            eprintln!("a port was taken while the cluster started; starting again on new ports");
        }
        panic!("could not start a cluster on free ports three times");
    }

    fn fresh(n: usize, extra: &[&str]) -> Cluster {
        let tmp = tempfile::tempdir().expect("tempdir");
        let nodes = (1..=n as u64)
            .map(|id| Node {
                id,
                zone: format!("az-{id}"),
                amqp_port: free_port(),
                http_port: free_port(),
                raft_port: free_port(),
                data_dir: tmp.path().join(format!("node{id}")),
                log_path: tmp.path().join(format!("node{id}.log")),
                child: None,
            })
            .collect();
        Cluster {
            nodes,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            _tmp: tmp,
        }
    }

    /// The `--peer` list of the cluster as started.
    pub fn peer_args(&self) -> Vec<String> {
        self.nodes
            .iter()
            .flat_map(|n| {
                [
                    "--peer".to_string(),
                    format!("{}=127.0.0.1:{}@{}", n.id, n.raft_port, n.zone),
                ]
            })
            .collect()
    }

    fn spawn(&mut self, i: usize) {
        let peers = self.peer_args();
        let node = &mut self.nodes[i];
        assert!(node.child.is_none(), "node {} is running", node.id);
        let child = serve_command(&node.log_path, node.amqp_port, node.http_port)
            .args(["--node-id", &node.id.to_string()])
            .args(["--az", &node.zone])
            .args(["--raft-listen", &format!("127.0.0.1:{}", node.raft_port)])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--cluster-secret", SECRET])
            .args(["--node-down-after-ms", "3000"])
            .args(&peers)
            .args(&self.extra)
            .spawn()
            .expect("spawn raftmq");
        node.child = Some(child);
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log_path).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        let logs = self.nodes.iter().map(|n| (n.id, n.log_path.as_path()));
        tails(logs, 60)
    }

    /// Waits until node `i` accepts AMQP connections.
    pub fn wait_serving(&mut self, i: usize) {
        assert!(
            self.try_wait_serving(i),
            "node {} could not bind its ports:\n{}",
            self.nodes[i].id,
            self.log(i)
        );
    }

    /// Like `wait_serving`, but false when the node exited because a port was in use.
    fn try_wait_serving(&mut self, i: usize) -> bool {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let exited = self.nodes[i]
                .child
                .as_mut()
                .expect("running")
                .try_wait()
                .expect("try_wait");
            if let Some(status) = exited {
                self.nodes[i].child = None;
                let log = self.log(i);
                if log.contains("in use") {
                    return false;
                }
                panic!(
                    "node {} exited during start-up ({status}):\n{log}",
                    self.nodes[i].id
                );
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.nodes[i].amqp_port)).is_ok() {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not serve within {START_TIMEOUT:?}:\n{}",
                self.nodes[i].id,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// SIGKILL node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
        }
    }

    /// SIGSTOP / SIGCONT node `i`.
    pub fn freeze(&self, i: usize) {
        let pid = self.nodes[i].child.as_ref().expect("running").id() as i32;
        unsafe { libc::kill(pid, libc::SIGSTOP) };
    }

    pub fn thaw(&self, i: usize) {
        let pid = self.nodes[i].child.as_ref().expect("running").id() as i32;
        unsafe { libc::kill(pid, libc::SIGCONT) };
    }

    /// Starts node `i` again on its data directory and ports, and waits until it serves.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_serving(i);
    }

    /// A plain HTTP/1.0 request to node `i`; (status, body).
    pub fn http(
        &self,
        i: usize,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Option<(u16, String)> {
        http_request(self.nodes[i].http_port, method, path, body, Some(SECRET))
    }

    /// Node `i`'s /health as JSON.
    pub fn health(&self, i: usize) -> Option<serde_json::Value> {
        let (status, body) = self.http(i, "GET", "/health", None)?;
        (status == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    pub fn role(&self, i: usize) -> Option<String> {
        self.health(i)?.get("role")?.as_str().map(str::to_string)
    }

    /// Waits until exactly one running node (of `among`) reports `leader`; its index.
    pub async fn leader_among(&self, among: &[usize], timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let leaders: Vec<usize> = among
                .iter()
                .copied()
                .filter(|&i| self.is_running(i) && self.role(i).as_deref() == Some("leader"))
                .collect();
            if leaders.len() == 1 {
                return leaders[0];
            }
            assert!(
                Instant::now() < deadline,
                "no single leader among {among:?} within {timeout:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn leader(&self) -> usize {
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        self.leader_among(&all, Duration::from_secs(30)).await
    }

    /// Cuts node `i` off from `peers` (both ways on node `i`).
    pub fn partition(&self, i: usize, peers: &[u64]) {
        self.cut(i, peers, "both");
    }

    /// Cuts node `i` off from `peers` in one `direction` (both, outgoing, incoming).
    pub fn cut(&self, i: usize, peers: &[u64], direction: &str) {
        let body = format!("{{\"peers\":{peers:?},\"direction\":\"{direction}\"}}");
        let (status, answer) = self
            .http(i, "POST", "/admin/faults", Some(&body))
            .expect("faults endpoint");
        assert_eq!(status, 200, "{answer}");
    }

    pub fn heal(&self, i: usize) {
        let (status, answer) = self
            .http(i, "DELETE", "/admin/faults", None)
            .expect("faults endpoint");
        assert_eq!(status, 200, "{answer}");
    }

    pub fn uri(&self, i: usize) -> String {
        format!(
            "amqp://guest:guest@127.0.0.1:{}/%2f",
            self.nodes[i].amqp_port
        )
    }

    pub async fn connect(&self, i: usize) -> Connection {
        Connection::connect(&self.uri(i), ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| {
                panic!("connect to node {}: {e}\n{}", self.nodes[i].id, self.logs())
            })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failed assertion that did not print the nodes' logs: print them now.
            eprintln!("nodes' logs at the failure:\n{}", self.logs());
        }
        for i in 0..self.nodes.len() {
            if let Some(child) = &self.nodes[i].child {
                // A frozen process must be thawed to die promptly on some kernels.
                unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
            }
            self.kill(i);
        }
    }
}
