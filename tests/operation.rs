//! Running the broker: /health, SIGTERM, one process per data directory.

use crate::common::*;
use std::io::{Read, Write};
use std::time::Duration;

fn http_get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn health_reports_node_id_and_standalone_role() {
    let broker = Broker::start_with(&["--node-id", "7"]);
    let response = http_get(broker.http_port, "/health");
    let body = response.split_once("\r\n\r\n").unwrap().1;
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["node_id"], 7);
    assert_eq!(json["role"], "standalone");
}

/// SIGTERM: clients are closed with 320 CONNECTION_FORCED and the process exits 0.
#[tokio::test]
async fn sigterm_closes_clients_with_connection_forced_and_exits_zero() {
    let mut broker = Broker::start();
    let mut raw = crate::common::raw::Raw::open(broker.amqp_port);
    let pid = broker.pid();
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(raw.expect_connection_close(), 320);
    raw.send(amq_protocol::frame::AMQPFrame::Method(
        0,
        amq_protocol::protocol::AMQPClass::Connection(
            amq_protocol::protocol::connection::AMQPMethod::CloseOk(
                amq_protocol::protocol::connection::CloseOk {},
            ),
        ),
    ));
    let status = broker.terminate();
    assert!(status.success(), "exit status {status}");
}

/// A second `serve` on a data directory in use fails at once with a clear message.
#[test]
fn a_second_serve_on_the_same_data_directory_fails_at_once() {
    let broker = Broker::start();
    let started = std::time::Instant::now();
    let out = std::process::Command::new(BIN)
        .args([
            "serve",
            "--amqp-listen",
            &format!("127.0.0.1:{}", free_port()),
            "--http-listen",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .arg("--data-dir")
        .arg(&broker.data_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in use"), "unclear message: {stderr}");
}

#[test]
fn every_serve_flag_has_help_and_an_environment_variable() {
    let out = std::process::Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--amqp-listen",
        "--http-listen",
        "--data-dir",
        "--node-id",
        "--default-user",
        "--default-pass",
        "--log-format",
        "--wal-prewrite-mib",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    for var in [
        "RAFTMQ_AMQP_LISTEN",
        "RAFTMQ_HTTP_LISTEN",
        "RAFTMQ_DATA_DIR",
        "RAFTMQ_NODE_ID",
        "RAFTMQ_DEFAULT_USER",
        "RAFTMQ_LOG_FORMAT",
        "RAFTMQ_WAL_PREWRITE_MIB",
    ] {
        assert!(help.contains(var), "{var} missing from --help");
    }
}

#[test]
fn a_wal_prewrite_past_what_a_log_file_holds_is_refused_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--wal-prewrite-mib", "500", "--data-dir"])
        .arg(tmp.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--wal-prewrite-mib must be at most 120"),
        "unclear message: {stderr}"
    );
    assert!(
        !tmp.path().join("data").exists(),
        "nothing is created for a refused setting"
    );
}
