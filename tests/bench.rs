//! `raftmq bench` against a real broker: it publishes with confirms, consumes, drains, and
//! reports what it counted; its lost/duplicated counts agree with the broker's queue.

use crate::common::{message_count, run_json, Broker, BIN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_rates_and_no_loss_against_a_real_broker() {
    let broker = Broker::start();
    let report = run_json(&[
        "bench",
        "--uri",
        &broker.uri(),
        "--duration",
        "2",
        "--confirm",
        "50",
        "--persistent",
        "--size",
        "16",
        "--json",
        "--queue-prefix",
        "benchq",
    ]);
    let confirmed = report["confirmed"].as_u64().unwrap();
    assert!(confirmed > 0, "{report}");
    assert_eq!(report["lost"], 0);
    assert_eq!(report["duplicated"], 0);
    assert!(report["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    // Everything published was consumed and acknowledged in the drain.
    let (_conn, ch) = broker.channel().await;
    assert_eq!(message_count(&ch, "benchq-0").await, 0);

    let bad = std::process::Command::new(BIN)
        .args(["bench", "--uri", &broker.uri(), "--size", "8"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--size must be at least 16"));
}
