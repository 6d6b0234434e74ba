//! An active/standby pair of real `raftmq` processes on one temporary shared directory
//! (`serve --shared-dir`), with the means to hurt them: SIGKILL, SIGSTOP/SIGCONT, restart.
//! Every process is killed when the pair is dropped.

use super::{free_port, http_request, serve_command, tails, START_TIMEOUT};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

pub struct PairNode {
    pub id: u64,
    pub amqp_port: u16,
    pub http_port: u16,
    pub log_path: PathBuf,
    child: Option<Child>,
}

pub struct Pair {
    pub nodes: Vec<PairNode>,
    pub shared: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Pair {
    /// Two nodes (ids 1 and 2) on a new shared directory; none started.
    pub fn new() -> Pair {
        let tmp = tempfile::tempdir().expect("tempdir");
        let nodes = (1..=2u64)
            .map(|id| PairNode {
                id,
                amqp_port: free_port(),
                http_port: free_port(),
                log_path: tmp.path().join(format!("node{id}.log")),
                child: None,
            })
            .collect();
        Pair {
            nodes,
            shared: tmp.path().join("shared"),
            _tmp: tmp,
        }
    }

    /// Node 1 started and active, then node 2 started and standby.
    pub fn start() -> Pair {
        let mut pair = Pair::new();
        pair.spawn(0);
        pair.wait_role(0, "active", START_TIMEOUT);
        pair.spawn(1);
        pair.wait_role(1, "standby", START_TIMEOUT);
        pair
    }

    pub fn spawn(&mut self, i: usize) {
        let shared = self.shared.clone();
        let node = &mut self.nodes[i];
        assert!(node.child.is_none(), "node {} is running", node.id);
        let child = serve_command(&node.log_path, node.amqp_port, node.http_port)
            .args(["--node-id", &node.id.to_string()])
            .arg("--shared-dir")
            .arg(&shared)
            .spawn()
            .expect("spawn raftmq");
        node.child = Some(child);
    }

    pub fn shared_dir(&self) -> &Path {
        &self.shared
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log_path).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        let logs = self.nodes.iter().map(|n| (n.id, n.log_path.as_path()));
        tails(logs, 40)
    }

    /// Node `i`'s /health as JSON and its HTTP status (200, or 503 when it cannot serve).
    pub fn health(&self, i: usize) -> Option<(u16, serde_json::Value)> {
        let (status, body) = http_request(self.nodes[i].http_port, "GET", "/health", None, None)?;
        Some((status, serde_json::from_str(&body).ok()?))
    }

    pub fn role(&self, i: usize) -> Option<String> {
        let (_, health) = self.health(i)?;
        health.get("role")?.as_str().map(str::to_string)
    }

    pub fn status(&self, i: usize) -> Option<String> {
        let (_, health) = self.health(i)?;
        health.get("status")?.as_str().map(str::to_string)
    }

    /// Does node `i` accept a TCP connection on its AMQP port?
    pub fn amqp_open(&self, i: usize) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", self.nodes[i].amqp_port)).is_ok()
    }

    /// Waits until node `i` reports `role` and, if active, accepts AMQP connections.
    pub fn wait_role(&mut self, i: usize, role: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.nodes[i].child.as_mut() {
                if let Some(status) = child.try_wait().expect("try_wait") {
                    panic!(
                        "node {} exited ({status}):\n{}",
                        self.nodes[i].id,
                        self.logs()
                    );
                }
            }
            let is_role = self.role(i).as_deref() == Some(role);
            if is_role && (role != "active" || self.amqp_open(i)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {} is not {role} after {timeout:?} (health {:?}):\n{}",
                self.nodes[i].id,
                self.health(i),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The fencing epoch in the shared directory.
    pub fn fence_epoch(&self) -> u64 {
        std::fs::read_to_string(self.shared.join("fence"))
            .expect("fence file")
            .trim()
            .parse()
            .expect("an epoch")
    }

    pub fn pid(&self, i: usize) -> i32 {
        self.nodes[i].child.as_ref().expect("running").id() as i32
    }

    /// The exit status of node `i`, if it has exited.
    pub fn exited(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        self.nodes[i]
            .child
            .as_mut()
            .and_then(|c| c.try_wait().expect("try_wait"))
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
        }
    }

    pub fn freeze(&self, i: usize) {
        unsafe { libc::kill(self.pid(i), libc::SIGSTOP) };
    }

    pub fn thaw(&self, i: usize) {
        unsafe { libc::kill(self.pid(i), libc::SIGCONT) };
    }

    pub fn uri(&self, i: usize) -> String {
        format!(
            "amqp://guest:guest@127.0.0.1:{}/%2f",
            self.nodes[i].amqp_port
        )
    }

    /// Both endpoints, as a client of the pair is given them (`first` first).
    pub fn uris(&self, first: usize) -> Vec<String> {
        vec![self.uri(first), self.uri(1 - first)]
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failed assertion that did not print the nodes' logs: print them now.
            eprintln!("nodes' logs at the failure:\n{}", self.logs());
        }
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
