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

/// The bench's own client on the other options: a first `--uri` that refuses connections (it
/// moves on to the next), a fanout exchange to two queues, two producers held to a rate, and
/// consumers that ack in batches with a prefetch. Every confirmed message reaches both queues
/// once, and the drain leaves the queues empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_moves_past_a_dead_uri_and_paces_fanout_publishers() {
    let broker = Broker::start();
    // A port that was free a moment ago: nothing listens there.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
    };
    let report = run_json(&[
        "bench",
        "--uri",
        &dead,
        "--uri",
        &broker.uri(),
        "--duration",
        "2",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--queues",
        "2",
        "--exchange",
        "fanout",
        "--rate",
        "300",
        "--confirm",
        "10",
        "--prefetch",
        "20",
        "--multi-ack",
        "7",
        "--size",
        "100",
        "--json",
        "--queue-prefix",
        "fanq",
    ]);
    let published = report["published"].as_u64().unwrap();
    let confirmed = report["confirmed"].as_u64().unwrap();
    // Two producers at 300 a second for 2 s: about 1200, never the thousands an unpaced
    // producer sends in that time.
    assert!((300..=1500).contains(&published), "{report}");
    assert!(confirmed > 0 && confirmed <= published, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["duplicated"], 0, "{report}");
    let (_conn, ch) = broker.channel().await;
    assert_eq!(message_count(&ch, "fanq-0").await, 0);
    assert_eq!(message_count(&ch, "fanq-1").await, 0);
}
